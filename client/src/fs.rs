//! The FUSE file system of `alces-mount`.
//!
//! Every callback hands its work to the tokio runtime and answers the kernel from there, so
//! slow operations (a failover, a chained write) never block other requests. Writes are
//! buffered per file within a memory budget and written out in whole chunks at `flush`,
//! `fsync`, `close`, or when a file's buffer is full; reads see buffered data (a file's buffer
//! is written out before it is read). Sequential reads are served from a read-ahead window.
//! Attributes and entries are cached by the kernel for [`Options::attr_ttl`], and the mount
//! remembers for as long that a file lacks an extended attribute.
//!
//! A write-out that fails keeps its data buffered: the error goes to the call that asked for
//! it, and the next `flush` or `fsync` of the file (from any descriptor) tries again, so an
//! `fsync` never succeeds while bytes written before it are on no chunkserver. (A `close` in
//! a forked child, for one, sends a flush of its own; if that one failed and dropped the
//! data, the parent's `fsync` would find nothing to do and succeed.) The buffer goes when
//! the last descriptor of the file is released.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alces_proto::link::client_master::{ClientReply, ClientRequest, MAX_RELEASES, READDIR_MAX};
use alces_proto::types::{Attr, Creds, FileKind, Inode, Name, SetAttr, TimeSet, Timestamp, CHUNK_SIZE};
use alces_proto::Status;
use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::data::{DataPath, Fetched};
use crate::groups::GroupsCache;
use crate::master_link::{CallError, MasterClient};
use crate::spare::Spare;

/// The control file at the mount root that the `alces` tools read to find the cluster.
pub const MASTERINFO_NAME: &str = ".masterinfo";
pub const MASTERINFO_INODE: u64 = u64::MAX - 16;

#[derive(Debug, Clone)]
pub struct Options {
    /// How long the kernel keeps attributes and directory entries.
    pub attr_ttl: Duration,
    /// Flags of every open file: none (the page cache is dropped at open), direct I/O (no
    /// page cache) or keep cache.
    pub open_flags: FopenFlags,
    /// A file's buffered writes are written out when they reach this many bytes.
    pub flush_at: usize,
    /// Buffered bytes of all files together, at most.
    pub write_budget: usize,
    /// Bytes fetched ahead for sequential reads.
    pub read_ahead: usize,
    /// Read-ahead bytes of all handles together, at most (beyond it reads fetch only what
    /// was asked).
    pub read_budget: usize,
    /// What `.masterinfo` says (the cluster and the mounted path).
    pub masterinfo: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            attr_ttl: Duration::from_secs(1),
            open_flags: FopenFlags::empty(),
            flush_at: 64 << 20,
            write_budget: 256 << 20,
            read_ahead: 8 << 20,
            read_budget: 256 << 20,
            masterinfo: String::new(),
        }
    }
}

/// A file's buffered writes, and the end of the furthest byte written through this mount,
/// readable without waiting for a write-out in progress (which holds the buffer's lock): an
/// attribute reply must never tell the kernel a size below bytes it has accepted, or its next
/// `O_APPEND` write would land on them.
///
/// A full buffer is written out in the background while the next one fills; `out` is held by
/// that write-out (one per file at a time) and keeps what it failed to write, which the next
/// caller that takes `out` puts back under the newer bytes. Everything that needs the data
/// on the chunkservers (`flush`, `fsync`, a read, a truncate) takes `out` first.
#[derive(Default)]
struct DirtyFile {
    buf: tokio::sync::Mutex<Dirty>,
    end: AtomicU64,
    out: Arc<tokio::sync::Mutex<Option<Dirty>>>,
}

/// Buffered writes of one file.
#[derive(Default)]
struct Dirty {
    /// Non-overlapping extents by offset.
    extents: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    max_end: u64,
}

impl Dirty {
    /// Buffers `data` at `offset`, merged with every extent it overlaps or touches. The
    /// first of those (when it starts at or before `offset`) grows in place, so sequential
    /// writes append to one buffer instead of copying it again each time.
    /// A new extent starts in the buffer `fresh` gives.
    fn add(&mut self, offset: u64, data: &[u8], fresh: impl FnOnce() -> Vec<u8>) {
        let end = offset + data.len() as u64;
        let touching: Vec<u64> =
            self.extents.range(..=end).filter(|(o, d)| **o + d.len() as u64 >= offset).map(|(o, _)| *o).collect();
        let base = touching.first().copied().filter(|o| *o <= offset);
        let (start, mut merged) = match base {
            Some(o) => {
                let d = self.extents.remove(&o).expect("present");
                self.bytes -= d.len();
                (o, d)
            }
            None => (offset, fresh()),
        };
        for o in touching.into_iter().filter(|o| Some(*o) != base) {
            let Some(d) = self.extents.remove(&o) else { continue };
            self.bytes -= d.len();
            let at = (o - start) as usize;
            if merged.len() < at + d.len() {
                merged.resize(at + d.len(), 0);
            }
            merged[at..at + d.len()].copy_from_slice(&d);
        }
        let at = (offset - start) as usize;
        if merged.len() < at {
            merged.resize(at, 0);
        }
        let inside = (merged.len() - at).min(data.len());
        merged[at..at + inside].copy_from_slice(&data[..inside]);
        merged.extend_from_slice(&data[inside..]);
        self.bytes += merged.len();
        self.max_end = self.max_end.max(end);
        self.extents.insert(start, merged);
    }

    /// Drops buffered bytes at or beyond `size` (a truncate).
    fn cut(&mut self, size: u64) {
        let offsets: Vec<u64> = self.extents.range(..).map(|(o, _)| *o).collect();
        for o in offsets {
            let d = self.extents.get_mut(&o).expect("present");
            if o >= size {
                self.bytes -= d.len();
                self.extents.remove(&o);
            } else if o + d.len() as u64 > size {
                let keep = (size - o) as usize;
                self.bytes -= d.len() - keep;
                d.truncate(keep);
            }
        }
        self.max_end = self.max_end.min(size);
    }
}

enum Handle_ {
    File {
        inode: Inode,
        read_ahead: Mutex<Option<Ahead>>,
        prefetch: Mutex<Option<Prefetch>>,
        last_end: AtomicU64,
        /// Taken by a read that missed the window while it fills one (see [`Inner::read`]).
        fill: tokio::sync::Mutex<()>,
        /// Kept by the leader in memory (an open), not recorded through Raft (a create).
        held: bool,
    },
    Dir {
        entries: Vec<(Vec<u8>, u64, FileType)>,
    },
}

/// The next read-ahead window of a handle, being fetched while the reader consumes the
/// current one (aborted when dropped).
struct Prefetch {
    start: u64,
    len: u64,
    task: tokio::task::JoinHandle<Result<Fetched, Status>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bytes a handle fetched ahead of the reader, counted against the mount's read budget while
/// they are held.
struct Ahead {
    start: u64,
    buf: Fetched,
    held: Arc<AtomicUsize>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.held.fetch_sub(self.buf.len(), Ordering::Relaxed);
    }
}

struct Inner {
    rt: Handle,
    master: MasterClient,
    data: DataPath,
    opts: Options,
    dirty: Mutex<HashMap<Inode, Arc<DirtyFile>>>,
    dirty_bytes: AtomicUsize,
    ahead_bytes: Arc<AtomicUsize>,
    handles: Mutex<HashMap<u64, Arc<Handle_>>>,
    next_fh: AtomicU64,
    /// Closed handles on their way to the master (see [`send_releases`]).
    releases: mpsc::UnboundedSender<Closed>,
    /// Extended attributes the master said a file lacks, until when that answer is reused
    /// (see [`Inner::missing_xattr`]).
    no_xattr: Mutex<HashMap<(Inode, Vec<u8>), Instant>>,
    /// Emptied write buffers for the next writes (see [`crate::spare`]).
    spare: Arc<Spare>,
    /// Folders' attributes returned by changes in them (see [`Inner::fresh_dir`]).
    fresh_dirs: Mutex<HashMap<Inode, (Attr, Instant)>>,
}

/// The attribute the kernel asks for before every write to a file.
const CAPABILITY_XATTR: &[u8] = b"security.capability";
/// Entries of the missing-xattr cache above which expired ones are dropped.
const NO_XATTR_ENTRIES: usize = 1 << 16;
/// Folders with attributes kept from changes above which expired ones are dropped.
const FRESH_DIRS: usize = 1 << 12;

impl Inner {
    /// Whether the master said, less than `attr_ttl` ago, that the file has no attribute
    /// `name`. The kernel asks for `security.capability` before every write to a file; with
    /// this, a stream of writes costs one question per attribute lifetime, not one each.
    fn missing_xattr(&self, inode: Inode, name: &[u8]) -> bool {
        let map = self.no_xattr.lock().expect("xattr cache lock");
        map.get(&(inode, name.to_vec())).is_some_and(|until| Instant::now() < *until)
    }

    fn note_xattr(&self, inode: Inode, name: Vec<u8>, missing: bool) {
        let mut map = self.no_xattr.lock().expect("xattr cache lock");
        if !missing {
            map.remove(&(inode, name));
            return;
        }
        let now = Instant::now();
        if map.len() >= NO_XATTR_ENTRIES {
            map.retain(|_, until| *until > now);
            if map.len() >= NO_XATTR_ENTRIES {
                map.clear();
            }
        }
        map.insert((inode, name), now + self.opts.attr_ttl);
    }
}

/// How long a closed handle waits for others to be reported to the master with it. A file
/// deleted while open is freed that much later; a program closing files one after another
/// costs the master one commit per batch instead of one per file.
const RELEASE_LINGER: Duration = Duration::from_millis(20);
/// Emptied write buffers kept for reuse (one being filled, one going out, one to spare), and
/// how long one is kept unused.
const SPARE_BUFFERS: usize = 3;
const SPARE_IDLE: Duration = Duration::from_secs(5);

/// A closed handle, as the master knows it.
enum Closed {
    /// Recorded through Raft (a handle from a create): released by inode.
    Recorded(Inode),
    /// Kept by the leader under its number (a handle from an open).
    Held(u64),
}

/// Reports closed handles to the master in batches, until the file system is dropped.
async fn send_releases(master: MasterClient, mut rx: mpsc::UnboundedReceiver<Closed>) {
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(RELEASE_LINGER).await;
        let (mut inodes, mut handles) = (Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some(c) = next {
            match c {
                Closed::Recorded(inode) => inodes.push(inode),
                Closed::Held(fh) => handles.push(fh),
            }
            next = if inodes.len() < MAX_RELEASES && handles.len() < MAX_RELEASES { rx.try_recv().ok() } else { None };
        }
        if !handles.is_empty() {
            let n = handles.len();
            if let Err(e) = master.call(&Creds::root(), ClientRequest::ReleaseHandles { handles }).await {
                tracing::warn!(handles = n, error = %e, "closed handles not reported");
            }
        }
        if !inodes.is_empty() {
            let n = inodes.len();
            if let Err(e) = master.call(&Creds::root(), ClientRequest::ReleaseMany { inodes }).await {
                tracing::warn!(handles = n, error = %e, "releases not recorded");
            }
        }
    }
}

/// How often a mount holding handles on files checks that it still talks to the leader.
const HELD_CHECK: Duration = Duration::from_secs(1);

/// While the leader keeps handles of this mount, asks the leader something every
/// [`HELD_CHECK`], so that after a failover an idle mount registers with the new leader, and
/// tells it which files it holds open, within a second or two (the new leader frees no
/// deleted file until then).
async fn keep_held(master: MasterClient) {
    loop {
        tokio::time::sleep(HELD_CHECK).await;
        if master.held_handles().lock().expect("held handles lock").is_empty() {
            continue;
        }
        let _ = master.call(&Creds::root(), ClientRequest::ReleaseHandles { handles: Vec::new() }).await;
    }
}

/// The mounted file system.
pub struct AlcesFs {
    inner: Arc<Inner>,
    groups: GroupsCache,
}

fn errno(s: Status) -> Errno {
    Errno::from_i32(s.errno())
}

fn call_errno(e: CallError) -> Errno {
    Errno::from_i32(e.errno())
}

/// The error for a request naming an inode the kernel found by a lookup: if the inode is gone
/// (a rename or unlink freed it after the lookup), ESTALE makes the kernel look the path up
/// again and retry, so that `open` or `stat` of a path that always exists (replaced by an
/// atomic rename) never fails with ENOENT.
fn stale(e: Errno) -> Errno {
    if e == Errno::ENOENT {
        Errno::ESTALE
    } else {
        e
    }
}

fn time(t: Timestamp) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::CharDev => FileType::CharDevice,
    }
}

fn fuse_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.inode.0),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: file_type(a.kind),
        perm: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 65536,
        flags: 0,
    }
}

fn masterinfo_attr(len: usize) -> FileAttr {
    FileAttr {
        ino: INodeNo(MASTERINFO_INODE),
        size: len as u64,
        blocks: 1,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0o444,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn name(n: &OsStr) -> Result<Name, Errno> {
    Name::new(n.as_bytes().to_vec()).map_err(errno)
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(st) => {
            let d = st.duration_since(UNIX_EPOCH).unwrap_or_default();
            TimeSet::At(Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() })
        }
    }
}

impl Inner {
    async fn call(&self, creds: &Creds, req: ClientRequest) -> Result<ClientReply, Errno> {
        match self.master.call(creds, req).await.map_err(call_errno)? {
            ClientReply::Changed { attr, dirs } => {
                self.changed_dirs(dirs);
                Ok(attr.map_or(ClientReply::Done, ClientReply::Attr))
            }
            other => Ok(other),
        }
    }

    /// Keeps the attributes of folders a change returned, for the kernel's next question.
    /// Of two answers about one folder the later change's is kept (replies of concurrent
    /// changes may arrive in any order).
    fn changed_dirs(&self, dirs: Vec<Attr>) {
        let now = Instant::now();
        let mut fresh = self.fresh_dirs.lock().expect("fresh dirs lock");
        if fresh.len() > FRESH_DIRS {
            fresh.retain(|_, (_, at)| now.duration_since(*at) < self.opts.attr_ttl);
        }
        for a in dirs {
            let newer = fresh.get(&a.inode).is_none_or(|(old, _)| (a.ctime, a.mtime) >= (old.ctime, old.mtime));
            if newer {
                fresh.insert(a.inode, (a, now));
            }
        }
    }

    /// A folder's attributes as a change in it returned them less than `attr_ttl` ago, once:
    /// the kernel dropped its copy because of that change and asks again before the next one.
    fn fresh_dir(&self, inode: Inode) -> Option<Attr> {
        let (a, at) = self.fresh_dirs.lock().expect("fresh dirs lock").remove(&inode)?;
        (at.elapsed() < self.opts.attr_ttl).then_some(a)
    }

    async fn attr_call(&self, creds: &Creds, req: ClientRequest) -> Result<Attr, Errno> {
        match self.call(creds, req).await? {
            ClientReply::Attr(a) => Ok(self.with_dirty_size(a)),
            _ => Err(Errno::EIO),
        }
    }

    /// The size a file has once its buffered writes are out.
    fn with_dirty_size(&self, mut a: Attr) -> Attr {
        if let Some(d) = self.dirty.lock().expect("dirty lock").get(&a.inode) {
            a.size = a.size.max(d.end.load(Ordering::Acquire));
        }
        a
    }

    /// Drops a file's buffered bytes at or beyond `size`.
    async fn cut(&self, inode: Inode, size: u64) {
        let d = self.dirty.lock().expect("dirty lock").get(&inode).cloned();
        if let Some(d) = d {
            let mut buf = d.buf.lock().await;
            let _out = self.settle(&d, &mut buf).await;
            let before = buf.bytes;
            buf.cut(size);
            d.end.store(buf.max_end, Ordering::Release);
            self.dirty_bytes.fetch_sub(before - buf.bytes, Ordering::Relaxed);
        }
    }

    fn dirty_of(&self, inode: Inode) -> Arc<DirtyFile> {
        self.dirty.lock().expect("dirty lock").entry(inode).or_default().clone()
    }

    /// Waits for the file's write-out in progress and takes its place; bytes a background
    /// write-out failed to write go back into `buf`, under the newer ones. Returns the guard
    /// and whether such bytes came back.
    async fn settle(&self, d: &DirtyFile, buf: &mut Dirty) -> (tokio::sync::OwnedMutexGuard<Option<Dirty>>, bool) {
        let mut out = d.out.clone().lock_owned().await;
        let Some(older) = out.take() else { return (out, false) };
        let newer = std::mem::replace(buf, older);
        let before = buf.bytes + newer.bytes;
        for (offset, data) in &newer.extents {
            buf.add(*offset, data, Vec::new);
        }
        buf.max_end = buf.max_end.max(newer.max_end);
        self.dirty_bytes.fetch_sub(before - buf.bytes, Ordering::Relaxed);
        (out, true)
    }

    /// Whether the mount holds a write buffer for `inode` (maybe empty).
    fn buffers(&self, inode: Inode) -> bool {
        self.dirty.lock().expect("dirty lock").contains_key(&inode)
    }

    /// Handle `fh` of `inode` (`h`) is closed: the master hears of it with the next batch.
    /// The master counts a session's handles on a file (a release and another handle's open
    /// commute), so nobody needs to wait for this one.
    fn closed(&self, h: &Option<Arc<Handle_>>, fh: u64, inode: Inode) {
        let closed = match h.as_deref() {
            Some(Handle_::File { held: true, .. }) => {
                self.master.held_handles().lock().expect("held handles lock").remove(&fh);
                Closed::Held(fh)
            }
            _ => Closed::Recorded(inode),
        };
        let _ = self.releases.send(closed);
    }

    /// Writes out a file's buffered data (after any write-out in progress).
    async fn flush(&self, inode: Inode) -> Result<(), Errno> {
        let d = self.dirty.lock().expect("dirty lock").get(&inode).cloned();
        let Some(d) = d else { return Ok(()) };
        let mut buf = d.buf.lock().await;
        let _out = self.settle(&d, &mut buf).await;
        self.write_out(inode, &mut buf).await
    }

    /// Writes out `buf` chunk by chunk, the chunks in parallel. On success the buffer is
    /// empty; on failure it is left as it was (chunks already written are written again next
    /// time, which is harmless) and the error returned.
    async fn write_out(&self, inode: Inode, buf: &mut Dirty) -> Result<(), Errno> {
        if buf.extents.is_empty() {
            return Ok(());
        }
        let size = buf.max_end;
        let mut by_chunk: BTreeMap<u32, Vec<(u32, &[u8])>> = BTreeMap::new();
        for (off, data) in &buf.extents {
            let mut pos = 0usize;
            while pos < data.len() {
                let at = off + pos as u64;
                let index = (at / CHUNK_SIZE) as u32;
                let take = ((CHUNK_SIZE - at % CHUNK_SIZE) as usize).min(data.len() - pos);
                by_chunk.entry(index).or_default().push(((at % CHUNK_SIZE) as u32, &data[pos..pos + take]));
                pos += take;
            }
        }
        let results = futures::future::join_all(
            by_chunk.iter().map(|(index, pieces)| self.data.write_chunk(inode, *index, pieces, size)),
        )
        .await;
        if let Some(e) = results.into_iter().find_map(|r| r.err()) {
            tracing::warn!(inode = %inode, bytes = buf.bytes, error = %e, "write-out failed; the data stays buffered");
            return Err(errno(e));
        }
        for (_, data) in std::mem::take(&mut buf.extents) {
            self.spare.give(data);
        }
        self.dirty_bytes.fetch_sub(std::mem::take(&mut buf.bytes), Ordering::Relaxed);
        Ok(())
    }

    /// Buffers a write. A full buffer is handed to a write-out in the background (after the
    /// previous one of the file is done). If the previous one failed, its bytes are written
    /// out now, and if that fails too this write fails and nothing of it is kept, so memory
    /// stays within the budget.
    async fn write(self: &Arc<Self>, inode: Inode, offset: u64, data: Vec<u8>) -> Result<u32, Errno> {
        let len = data.len() as u32;
        let d = self.dirty_of(inode);
        let mut buf = d.buf.lock().await;
        if !self.has_room(&buf, data.len()) {
            let (mut out, failed) = self.settle(&d, &mut buf).await;
            if failed {
                self.write_out(inode, &mut buf).await?;
            } else if !buf.extents.is_empty() {
                let mut batch = std::mem::take(&mut *buf);
                let fs = self.clone();
                tokio::spawn(async move {
                    if fs.write_out(inode, &mut batch).await.is_err() {
                        *out = Some(batch);
                    }
                });
            }
        }
        self.buffer(&d, &mut buf, offset, &data);
        Ok(len)
    }

    /// Buffers a write at once when the file's buffer is free and has room, as it has for
    /// most writes of a sequential writer: no task, no copy of the request's bytes but the
    /// one into the buffer. False when the write has to take the long way ([`Inner::write`]).
    fn write_now(&self, inode: Inode, offset: u64, data: &[u8]) -> bool {
        let d = self.dirty_of(inode);
        let Ok(mut buf) = d.buf.try_lock() else { return false };
        if !self.has_room(&buf, data.len()) {
            return false;
        }
        self.buffer(&d, &mut buf, offset, data);
        true
    }

    /// Whether `len` more bytes fit in a file's buffer without a write-out first: at most half
    /// the budget per write-out, so that a file can fill one buffer while the other goes out
    /// even with a small budget, and the budget for all files together.
    fn has_room(&self, buf: &Dirty, len: usize) -> bool {
        let flush_at = self.opts.flush_at.min(self.opts.write_budget / 2).max(1);
        buf.bytes + len <= flush_at && self.dirty_bytes.load(Ordering::Relaxed) + len <= self.opts.write_budget
    }

    /// Adds a write to a file's buffer and counts it against the budget.
    fn buffer(&self, d: &DirtyFile, buf: &mut Dirty, offset: u64, data: &[u8]) {
        let before = buf.bytes;
        buf.add(offset, data, || self.spare.take());
        if buf.bytes >= before {
            self.dirty_bytes.fetch_add(buf.bytes - before, Ordering::Relaxed);
        } else {
            self.dirty_bytes.fetch_sub(before - buf.bytes, Ordering::Relaxed);
        }
        d.end.fetch_max(buf.max_end, Ordering::AcqRel);
    }

    /// Reads through the handle's read-ahead. A sequential reader gets a window of
    /// [`Options::read_ahead`] bytes at a time, and once it is half way through one, the next
    /// window is fetched in the background, so the reader rarely waits for the chunkservers.
    async fn read(self: &Arc<Self>, h: &Handle_, offset: u64, size: u32) -> Result<Bytes, Errno> {
        let Handle_::File { inode, read_ahead, prefetch, last_end, fill, .. } = h else { return Err(Errno::EISDIR) };
        let inode = *inode;
        self.flush(inode).await?;
        let end = offset + size as u64;
        if let Some(out) = self.from_window(read_ahead, prefetch, inode, offset, size) {
            last_end.store(end, Ordering::Relaxed);
            return Ok(out);
        }
        // A miss. The kernel sends a sequential reader's read-ahead as several requests at
        // once; they take turns from here, so that one just behind another finds the window
        // that one installs instead of fetching its bytes again.
        let filling = fill.lock().await;
        if let Some(out) = self.from_window(read_ahead, prefetch, inode, offset, size) {
            last_end.store(end, Ordering::Relaxed);
            return Ok(out);
        }
        // The window fetched in the background, if this read falls in it.
        let next = prefetch.lock().expect("prefetch lock").take_if(|p| p.start <= offset && end <= p.start + p.len);
        if let Some(mut p) = next {
            if let Ok(Ok(buf)) = (&mut p.task).await {
                self.install(read_ahead, p.start, buf);
                if let Some(out) = self.from_window(read_ahead, prefetch, inode, offset, size) {
                    last_end.store(end, Ordering::Relaxed);
                    return Ok(out);
                }
            }
        }
        // Drop this handle's old read-ahead before deciding whether the budget has room.
        *read_ahead.lock().expect("read-ahead lock") = None;
        let sequential = last_end.load(Ordering::Relaxed) == offset;
        let room = self.ahead_bytes.load(Ordering::Relaxed) + self.opts.read_ahead <= self.opts.read_budget;
        let fetch = if sequential && room { (size as usize).max(self.opts.read_ahead) as u32 } else { size };
        if fetch == size {
            // Nothing for the others to wait for.
            drop(filling);
        }
        let data = self.data.read(inode, offset, fetch).await.map_err(errno)?;
        last_end.store(end, Ordering::Relaxed);
        let out = data.slice(0, size as usize);
        if data.len() > size as usize {
            self.install(read_ahead, offset, data);
        }
        Ok(out)
    }

    fn install(&self, read_ahead: &Mutex<Option<Ahead>>, start: u64, buf: Fetched) {
        self.ahead_bytes.fetch_add(buf.len(), Ordering::Relaxed);
        *read_ahead.lock().expect("read-ahead lock") = Some(Ahead { start, buf, held: self.ahead_bytes.clone() });
    }

    /// The bytes of a read that the current window holds; past half of a full window, starts
    /// fetching the next one.
    fn from_window(
        self: &Arc<Self>,
        read_ahead: &Mutex<Option<Ahead>>,
        prefetch: &Mutex<Option<Prefetch>>,
        inode: Inode,
        offset: u64,
        size: u32,
    ) -> Option<Bytes> {
        let (out, next) = {
            let guard = read_ahead.lock().expect("read-ahead lock");
            let a = guard.as_ref()?;
            let (a_end, end) = (a.start + a.buf.len() as u64, offset + size as u64);
            if offset < a.start || end > a_end {
                return None;
            }
            let at = (offset - a.start) as usize;
            let full = a.buf.len() >= self.opts.read_ahead;
            let past_half = (end - a.start) * 2 >= a.buf.len() as u64;
            (a.buf.slice(at, size as usize), (full && past_half).then_some(a_end))
        };
        if let Some(start) = next {
            let mut p = prefetch.lock().expect("prefetch lock");
            let room = self.ahead_bytes.load(Ordering::Relaxed) + 2 * self.opts.read_ahead <= self.opts.read_budget;
            if p.is_none() && room {
                let (fs, len) = (self.clone(), self.opts.read_ahead as u32);
                let task = tokio::spawn(async move { fs.data.read(inode, start, len).await });
                *p = Some(Prefetch { start, len: len as u64, task });
            }
        }
        Some(out)
    }

    fn forget_read_ahead(&self, inode: Inode) {
        for h in self.handles.lock().expect("handle lock").values() {
            if let Handle_::File { inode: i, read_ahead, prefetch, .. } = &**h {
                if *i == inode {
                    *read_ahead.lock().expect("read-ahead lock") = None;
                    *prefetch.lock().expect("prefetch lock") = None;
                }
            }
        }
    }

    fn new_handle(&self, h: Handle_) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().expect("handle lock").insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Handle_>> {
        self.handles.lock().expect("handle lock").get(&fh.0).cloned()
    }

    fn file_handle(inode: Inode, held: bool) -> Handle_ {
        Handle_::File {
            inode,
            read_ahead: Mutex::new(None),
            prefetch: Mutex::new(None),
            last_end: AtomicU64::new(u64::MAX),
            fill: tokio::sync::Mutex::new(()),
            held,
        }
    }
}

impl AlcesFs {
    /// The caller's credentials, with its supplementary groups (see [`crate::groups`]).
    fn creds(&self, req: &Request) -> Creds {
        Creds { uid: req.uid(), gid: req.gid(), groups: self.groups.get(req.pid(), req.uid(), req.gid()) }
    }

    pub fn new(rt: Handle, master: MasterClient, opts: Options) -> AlcesFs {
        let data = DataPath::new(master.clone());
        let (releases, rx) = mpsc::unbounded_channel();
        rt.spawn(send_releases(master.clone(), rx));
        rt.spawn(keep_held(master.clone()));
        let spare = Arc::new(Spare::new(SPARE_BUFFERS));
        let trimmed = spare.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(SPARE_IDLE).await;
                trimmed.trim(SPARE_IDLE);
            }
        });
        AlcesFs {
            inner: Arc::new(Inner {
                rt,
                master,
                data,
                opts,
                dirty: Mutex::default(),
                dirty_bytes: AtomicUsize::new(0),
                ahead_bytes: Arc::default(),
                handles: Mutex::default(),
                next_fh: AtomicU64::new(1),
                releases,
                no_xattr: Mutex::default(),
                fresh_dirs: Mutex::default(),
                spare,
            }),
            groups: GroupsCache::default(),
        }
    }

    /// Runs `f` on the runtime; `f` answers the kernel itself.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let inner = self.inner.clone();
        self.inner.rt.spawn(f(inner));
    }
}

fn reply_entry(reply: ReplyEntry, ttl: Duration, r: Result<Attr, Errno>) {
    match r {
        Ok(a) => reply.entry(&ttl, &fuse_attr(&a), Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for AlcesFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let ttl = self.inner.opts.attr_ttl;
        if parent.0 == 1 && n.as_bytes() == MASTERINFO_NAME.as_bytes() {
            return reply.entry(&ttl, &masterinfo_attr(self.inner.opts.masterinfo.len()), Generation(0));
        }
        let creds = self.creds(req);
        let n = match name(n) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            let r = fs.attr_call(&creds, ClientRequest::Lookup { parent: Inode(parent.0), name: n }).await;
            reply_entry(reply, ttl, r);
        });
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttl = self.inner.opts.attr_ttl;
        if ino.0 == MASTERINFO_INODE {
            return reply.attr(&ttl, &masterinfo_attr(self.inner.opts.masterinfo.len()));
        }
        if let Some(a) = self.inner.fresh_dir(Inode(ino.0)) {
            return reply.attr(&ttl, &fuse_attr(&a));
        }
        let creds = self.creds(req);
        self.spawn(move |fs| async move {
            match fs.attr_call(&creds, ClientRequest::GetAttr { inode: Inode(ino.0) }).await {
                Ok(a) => reply.attr(&ttl, &fuse_attr(&a)),
                Err(e) => reply.error(stale(e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ttl = self.inner.opts.attr_ttl;
        let creds = self.creds(req);
        let set = SetAttr {
            mode: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        self.spawn(move |fs| async move {
            let inode = Inode(ino.0);
            if let Some(size) = size {
                // Buffered data beyond the new end must not come back.
                fs.cut(inode, size).await;
                if let Err(e) = fs.flush(inode).await {
                    return reply.error(e);
                }
                fs.forget_read_ahead(inode);
                fs.data.invalidate(inode);
            }
            let r = fs.attr_call(&creds, ClientRequest::SetAttr { inode, set, handle: fh.is_some() }).await;
            match r {
                Ok(a) => reply.attr(&ttl, &fuse_attr(&a)),
                Err(e) => reply.error(stale(e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let creds = self.creds(req);
        self.spawn(move |fs| async move {
            match fs.call(&creds, ClientRequest::ReadLink { inode: Inode(ino.0) }).await {
                Ok(ClientReply::ReadLink(t)) => reply.data(&t),
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(stale(e)),
            }
        });
    }

    fn mknod(&self, req: &Request, parent: INodeNo, n: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let Some(kind) = FileKind::from_mode(mode) else { return reply.error(Errno::EINVAL) };
        self.create_node(req, parent, n, kind, mode, umask, rdev, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, n: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.create_node(req, parent, n, FileKind::Dir, mode, umask, 0, reply);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        self.remove(req, parent, n, false, reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        self.remove(req, parent, n, true, reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let ttl = self.inner.opts.attr_ttl;
        let creds = self.creds(req);
        let n = match name(link) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn(move |fs| async move {
            let r = fs.attr_call(&creds, ClientRequest::Symlink { parent: Inode(parent.0), name: n, target }).await;
            reply_entry(reply, ttl, r);
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let creds = self.creds(req);
        let (n, nn) = match (name(n), name(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            let body = ClientRequest::Rename {
                parent: Inode(parent.0),
                name: n,
                new_parent: Inode(newparent.0),
                new_name: nn,
                flags: flags.bits(),
            };
            reply_empty(reply, fs.call(&creds, body).await.map(|_| ()));
        });
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let ttl = self.inner.opts.attr_ttl;
        let creds = self.creds(req);
        let n = match name(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            let r = fs
                .attr_call(&creds, ClientRequest::Link { inode: Inode(ino.0), parent: Inode(newparent.0), name: n })
                .await;
            reply_entry(reply, ttl, r);
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == MASTERINFO_INODE {
            let fh = self.inner.new_handle(Inner::file_handle(Inode(MASTERINFO_INODE), false));
            return reply.opened(FileHandle(fh), FopenFlags::empty());
        }
        let creds = self.creds(req);
        self.spawn(move |fs| async move {
            let inode = Inode(ino.0);
            if flags.0 & libc::O_TRUNC != 0 {
                fs.cut(inode, 0).await;
                fs.data.invalidate(inode);
            }
            // Listed before the leader may open it (see `HeldHandles`).
            let fh = fs.next_fh.fetch_add(1, Ordering::Relaxed);
            let held = fs.master.held_handles().clone();
            held.lock().expect("held handles lock").insert(fh, inode);
            let asked = fs.data.asked();
            let opened = match fs.call(&creds, ClientRequest::Open { inode, flags: flags.0 as u32, handle: fh }).await {
                Ok(ClientReply::Attr(a)) => Ok(a),
                Ok(ClientReply::Opened { attr, chunk, locations }) => {
                    fs.data.located(asked, inode, 0, attr.size, chunk, locations);
                    Ok(attr)
                }
                Ok(_) => Err(Errno::EIO),
                Err(e) => Err(e),
            };
            match opened {
                Ok(a) => {
                    // The leader keeps opens of regular files; it recorded any other.
                    let kept = a.kind == FileKind::File;
                    if !kept {
                        held.lock().expect("held handles lock").remove(&fh);
                    }
                    fs.forget_read_ahead(inode);
                    fs.handles.lock().expect("handle lock").insert(fh, Arc::new(Inner::file_handle(inode, kept)));
                    reply.opened(FileHandle(fh), fs.opts.open_flags);
                }
                Err(e) => {
                    // A leader registered with meanwhile was told of it: tell it it is closed.
                    if held.lock().expect("held handles lock").remove(&fh).is_some() {
                        let _ = fs.releases.send(Closed::Held(fh));
                    }
                    reply.error(stale(e))
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 == MASTERINFO_INODE {
            let info = self.inner.opts.masterinfo.as_bytes();
            let start = (offset as usize).min(info.len());
            let end = (start + size as usize).min(info.len());
            return reply.data(&info[start..end]);
        }
        let Some(h) = self.inner.handle(fh) else { return reply.error(Errno::EBADF) };
        self.spawn(move |fs| async move {
            match fs.read(&h, offset, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wflags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        if offset.checked_add(data.len() as u64).is_none_or(|e| e > i64::MAX as u64) {
            return reply.error(Errno::EFBIG);
        }
        let inode = Inode(ino.0);
        self.inner.forget_read_ahead(inode);
        if self.inner.write_now(inode, offset, data) {
            return reply.written(data.len() as u32);
        }
        let data = data.to_vec();
        self.spawn(move |fs| async move {
            match fs.write(inode, offset, data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock: fuser::LockOwner, reply: ReplyEmpty) {
        // Nothing buffered: answered here, without a trip to the runtime's threads.
        if ino.0 == MASTERINFO_INODE || !self.inner.buffers(Inode(ino.0)) {
            return reply.ok();
        }
        self.spawn(move |fs| async move { reply_empty(reply, fs.flush(Inode(ino.0)).await) });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let h = self.inner.handles.lock().expect("handle lock").remove(&fh.0);
        if ino.0 == MASTERINFO_INODE || h.is_none() {
            return reply.ok();
        }
        let inode = Inode(ino.0);
        // Nothing buffered (a file only read, say): answered here, without a trip to the
        // runtime's threads.
        if !self.inner.buffers(inode) {
            self.inner.closed(&h, fh.0, inode);
            return reply.ok();
        }
        self.spawn(move |fs| async move {
            let r = fs.flush(inode).await;
            fs.closed(&h, fh.0, inode);
            let still_open = fs
                .handles
                .lock()
                .expect("handle lock")
                .values()
                .any(|h| matches!(&**h, Handle_::File { inode: i, .. } if *i == inode));
            if !still_open {
                // Bytes a failed write-out kept go with the last descriptor (its close was
                // told of the failure).
                let gone = fs.dirty.lock().expect("dirty lock").remove(&inode);
                if let Some(d) = gone {
                    let left = d.buf.lock().await.bytes;
                    if left > 0 {
                        tracing::warn!(inode = %inode, bytes = left, "buffered data dropped at release after a failed write-out");
                        fs.dirty_bytes.fetch_sub(left, Ordering::Relaxed);
                    }
                }
            }
            reply_empty(reply, r);
        });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(move |fs| async move { reply_empty(reply, fs.flush(Inode(ino.0)).await) });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let creds = self.creds(req);
        self.spawn(move |fs| async move {
            let inode = Inode(ino.0);
            if let Err(e) = fs.call(&creds, ClientRequest::OpenDir { inode }).await {
                return reply.error(stale(e));
            }
            // The kernel resolves `..` itself; the inode number given for it is informational.
            let mut entries: Vec<(Vec<u8>, u64, FileType)> =
                vec![(b".".to_vec(), ino.0, FileType::Directory), (b"..".to_vec(), ino.0, FileType::Directory)];
            if ino.0 == 1 {
                entries.push((MASTERINFO_NAME.as_bytes().to_vec(), MASTERINFO_INODE, FileType::RegularFile));
            }
            // A folder of fewer than READDIR_MAX entries is read in one request, so in one
            // state: asking again only to hear that nothing follows let a rename between the
            // two requests show both names (the fault injection suite's `namespace` found it).
            // A larger folder is read in pages, and a name that moves meanwhile may show twice
            // or not at all, as POSIX allows for entries added or removed during a listing.
            let mut after: Option<Name> = None;
            loop {
                let req = ClientRequest::ReadDir { inode, after: after.clone(), limit: READDIR_MAX, plus: false };
                match fs.call(&creds, req).await {
                    Ok(ClientReply::Entries(list)) => {
                        let Some(last) = list.last() else { break };
                        after = Some(last.0.clone());
                        let whole = list.len() < READDIR_MAX as usize;
                        entries.extend(list.into_iter().map(|(n, i, k, _)| (n.as_bytes().to_vec(), i.0, file_type(k))));
                        if whole {
                            break;
                        }
                    }
                    Ok(_) => return reply.error(Errno::EIO),
                    Err(e) => return reply.error(e),
                }
            }
            let fh = fs.new_handle(Handle_::Dir { entries });
            reply.opened(FileHandle(fh), FopenFlags::empty());
        });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(h) = self.inner.handle(fh) else { return reply.error(Errno::EBADF) };
        let Handle_::Dir { entries } = &*h else { return reply.error(Errno::ENOTDIR) };
        for (i, (n, ino, kind)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, OsStr::from_bytes(n)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.inner.handles.lock().expect("handle lock").remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let creds = self.creds(req);
        self.spawn(move |fs| async move {
            match fs.call(&creds, ClientRequest::StatFs).await {
                Ok(ClientReply::StatFs { total_bytes, avail_bytes, inodes, .. }) => {
                    let bs = 65536u64;
                    reply.statfs(
                        total_bytes / bs,
                        avail_bytes / bs,
                        avail_bytes / bs,
                        inodes + 1_000_000,
                        1_000_000,
                        bs as u32,
                        255,
                        bs as u32,
                    )
                }
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setxattr(&self, req: &Request, ino: INodeNo, n: &OsStr, value: &[u8], flags: i32, _pos: u32, reply: ReplyEmpty) {
        let creds = self.creds(req);
        let (n, value) = (n.as_bytes().to_vec(), value.to_vec());
        self.spawn(move |fs| async move {
            let inode = Inode(ino.0);
            // Forgotten before and after: a "missing" answer that crossed this call is dropped.
            fs.note_xattr(inode, n.clone(), false);
            let body = ClientRequest::SetXattr { inode, name: n.clone(), value, flags: flags as u32 };
            let r = fs.call(&creds, body).await.map(|_| ());
            fs.note_xattr(inode, n, false);
            reply_empty(reply, r);
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        if ino.0 == MASTERINFO_INODE {
            return reply.error(Errno::ENODATA);
        }
        let creds = self.creds(req);
        let (inode, n) = (Inode(ino.0), n.as_bytes().to_vec());
        if self.inner.missing_xattr(inode, &n) {
            return reply.error(Errno::ENODATA);
        }
        self.spawn(move |fs| async move {
            match fs.call(&creds, ClientRequest::GetXattr { inode, name: n.clone() }).await {
                Ok(ClientReply::Xattr(v)) => xattr_reply(reply, size, &v),
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => {
                    if e == Errno::ENODATA {
                        fs.note_xattr(inode, n, true);
                    }
                    reply.error(e)
                }
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if ino.0 == MASTERINFO_INODE {
            return xattr_reply(reply, size, &[]);
        }
        let creds = self.creds(req);
        self.spawn(move |fs| async move {
            match fs.call(&creds, ClientRequest::ListXattr { inode: Inode(ino.0) }).await {
                Ok(ClientReply::XattrNames(names)) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    xattr_reply(reply, size, &buf)
                }
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(e),
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let creds = self.creds(req);
        let n = n.as_bytes().to_vec();
        self.spawn(move |fs| async move {
            let inode = Inode(ino.0);
            let r = fs.call(&creds, ClientRequest::RemoveXattr { inode, name: n.clone() }).await.map(|_| ());
            fs.note_xattr(inode, n, r.is_ok());
            reply_empty(reply, r);
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if ino.0 == MASTERINFO_INODE {
            return reply.ok();
        }
        let creds = self.creds(req);
        let mask = (mask.bits() & 7) as u16;
        self.spawn(move |fs| async move {
            let r = fs.call(&creds, ClientRequest::Access { inode: Inode(ino.0), mask }).await;
            reply_empty(reply, r.map(|_| ()).map_err(stale));
        });
    }

    /// No ioctl is supported: ENOTTY, as a local file answers the terminal ioctls that
    /// programs send to learn whether a file is a terminal (Python's `open`, every time).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let ttl = self.inner.opts.attr_ttl;
        let creds = self.creds(req);
        let body = match create_request(parent, n, FileKind::File, mode, umask, 0, true) {
            Ok(b) => b,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            match fs.attr_call(&creds, body).await {
                Ok(a) => {
                    // A new file has no extended attributes: its first write need not ask.
                    fs.note_xattr(a.inode, CAPABILITY_XATTR.to_vec(), true);
                    let fh = fs.new_handle(Inner::file_handle(a.inode, false));
                    reply.created(&ttl, &fuse_attr(&a), Generation(0), FileHandle(fh), fs.opts.open_flags);
                }
                Err(e) => reply.error(e),
            }
        });
    }
}

/// The master request that creates `n` in `parent` (mode and umask cut to their permission bits).
fn create_request(
    parent: INodeNo,
    n: &OsStr,
    kind: FileKind,
    mode: u32,
    umask: u32,
    rdev: u32,
    open: bool,
) -> Result<ClientRequest, Errno> {
    Ok(ClientRequest::Create {
        parent: Inode(parent.0),
        name: name(n)?,
        kind,
        mode: (mode & 0o7777) as u16,
        umask: (umask & 0o7777) as u16,
        rdev,
        open,
    })
}

fn xattr_reply(reply: ReplyXattr, size: u32, v: &[u8]) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if (size as usize) < v.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}

impl AlcesFs {
    #[allow(clippy::too_many_arguments)]
    fn create_node(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        kind: FileKind,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let ttl = self.inner.opts.attr_ttl;
        let creds = self.creds(req);
        let body = match create_request(parent, n, kind, mode, umask, rdev, false) {
            Ok(b) => b,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            reply_entry(reply, ttl, fs.attr_call(&creds, body).await);
        });
    }

    fn remove(&self, req: &Request, parent: INodeNo, n: &OsStr, dir: bool, reply: ReplyEmpty) {
        let creds = self.creds(req);
        let n = match name(n) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            let body = if dir {
                ClientRequest::Rmdir { parent: Inode(parent.0), name: n }
            } else {
                ClientRequest::Unlink { parent: Inode(parent.0), name: n }
            };
            reply_empty(reply, fs.call(&creds, body).await.map(|_| ()));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer's extents as (offset, bytes), in order.
    fn extents(d: &Dirty) -> Vec<(u64, Vec<u8>)> {
        d.extents.iter().map(|(o, v)| (*o, v.clone())).collect()
    }

    #[test]
    fn dirty_extents_merge_and_cut() {
        let mut d = Dirty::default();
        d.add(100, b"abcd", Vec::new);
        d.add(104, b"ef", Vec::new);
        d.add(0, b"xy", Vec::new);
        d.add(102, b"ZZZZZZ", Vec::new);
        assert_eq!(extents(&d), vec![(0, b"xy".to_vec()), (100, b"abZZZZZZ".to_vec())]);
        assert_eq!(d.bytes, 10);
        assert_eq!(d.max_end, 108);
        d.cut(103);
        assert_eq!(extents(&d), vec![(0, b"xy".to_vec()), (100, b"abZ".to_vec())]);
        assert_eq!((d.bytes, d.max_end), (5, 103));
        d.cut(1);
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.bytes, 1);
    }

    #[test]
    fn sequential_writes_grow_one_extent_and_overlaps_keep_the_newest_bytes() {
        let mut d = Dirty::default();
        for i in 0..64u64 {
            d.add(i * 4, &[i as u8; 4], Vec::new);
        }
        assert_eq!(d.extents.len(), 1);
        assert_eq!((d.bytes, d.max_end), (256, 256));
        assert_eq!(&d.extents[&0][252..], &[63u8; 4]);
        // A write that starts before every extent and covers two of them.
        let mut d = Dirty::default();
        d.add(10, b"bbbb", Vec::new);
        d.add(20, b"cccc", Vec::new);
        d.add(8, b"AAAAAAAAAAAAAA", Vec::new);
        assert_eq!(extents(&d), vec![(8, b"AAAAAAAAAAAAAAcc".to_vec())]);
        assert_eq!(d.bytes, 16);
        // A write inside an extent; one that touches the next extent only; one bridging two.
        d.add(9, b"x", Vec::new);
        d.add(30, b"zz", Vec::new);
        d.add(26, b"yyyy", Vec::new);
        assert_eq!(extents(&d), vec![(8, b"AxAAAAAAAAAAAAcc".to_vec()), (26, b"yyyyzz".to_vec())]);
        assert_eq!(d.bytes, 22);
        d.add(24, b"##", Vec::new);
        assert_eq!(extents(&d), vec![(8, b"AxAAAAAAAAAAAAcc##yyyyzz".to_vec())]);
        assert_eq!((d.bytes, d.max_end), (24, 32));
    }
}
