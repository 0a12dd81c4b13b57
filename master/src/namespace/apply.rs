//! The namespace's apply function: given the stored state and one [`MetaOp`], produce the
//! writes and the reply. Pure: no clock (the op carries the time), no randomness, no I/O but
//! the database. A failed operation writes nothing.

use alces_proto::types::{
    Attr, ChunkId, ChunkVersion, Creds, FileKind, Goal, Inode, Name, SessionId, SetAttr, TimeSet, Timestamp, TrashTime,
    CHUNK_SIZE,
};
use alces_proto::Status;

use super::keys::*;
use super::ops::*;
use super::perm::{self, R, S_ISGID, S_ISUID, W, X};
use super::records::*;
use super::txn::{Res, Txn};

/// Deepest directory nesting followed when walking up (guards against a corrupt loop).
const MAX_DEPTH: usize = 65_536;
const XATTR_NAME_MAX: usize = 255;
const XATTR_VALUE_MAX: usize = 65_536;
const SYMLINK_MAX: usize = 4095;
const LINK_MAX: u32 = 65_000;

pub fn apply_op(t: &mut Txn<'_, '_>, op: MetaOp) -> Res<MetaReply> {
    let now = op.now;
    match op.body {
        OpBody::Format { goal, trash_time } => format(t, now, goal, trash_time),
        OpBody::Create { parent, name, kind, mode, umask, rdev, target, creds, open } => {
            create(t, now, parent, &name, kind, mode, umask, rdev, target, &creds, open)
        }
        OpBody::Link { inode, parent, name, creds } => link(t, now, inode, parent, &name, &creds),
        OpBody::Remove { parent, name, dir, creds } => remove(t, now, parent, &name, dir, &creds),
        OpBody::Rename { parent, name, new_parent, new_name, flags, creds } => {
            rename(t, now, parent, &name, new_parent, &new_name, flags, &creds)
        }
        OpBody::SetAttr { inode, set, creds, handle } => set_attr(t, now, inode, &set, &creds, handle),
        OpBody::SetXattr { inode, name, value, flags, creds } => {
            set_xattr(t, now, inode, &name, Some(value), flags, &creds)
        }
        OpBody::RemoveXattr { inode, name, creds } => set_xattr(t, now, inode, &name, None, 0, &creds),
        OpBody::SetGoal { inode, goal, recursive, creds } => set_goal(t, inode, goal, recursive, &creds),
        OpBody::SetTrashTime { inode, trash_time, recursive, creds } => {
            set_trash_time(t, inode, trash_time, recursive, &creds)
        }
        OpBody::Snapshot { src, parent, name, creds } => snapshot(t, now, src, parent, &name, &creds),
        OpBody::Undelete { inode } => undelete(t, now, inode),
        OpBody::Purge { inode } => {
            match t.inode(inode)? {
                Some(r) if r.state == InodeState::Trash => leave_trash(t, inode, r)?,
                _ => return Err(Status::NotFound.into()),
            }
            Ok(MetaReply::Freed(1))
        }
        OpBody::ExpireTrash { limit } => expire_trash(t, now, limit),
        OpBody::OpenSession { info } => {
            let id = SessionId(t.next_id(NEXT_SESSION, 1)?);
            t.put(CF_SESSIONS, &session(id), &SessionRec { info, created: now });
            Ok(MetaReply::Session(id))
        }
        OpBody::CloseSession { session: s } => close_session(t, s),
        OpBody::Open { session: s, inode } => {
            if t.get_raw(CF_SESSIONS, &session(s))?.is_none() {
                return Err(Status::Stale.into());
            }
            // Any existing inode: a handle on a file deleted meanwhile (trash or reserved)
            // keeps working, as POSIX asks.
            if t.inode(inode)?.is_none() {
                return Err(Status::NotFound.into());
            }
            mark_open(t, s, inode)?;
            Ok(MetaReply::Done)
        }
        OpBody::Release { session: s, inode } => {
            release_handle(t, s, inode)?;
            Ok(MetaReply::Done)
        }
        OpBody::ReleaseMany { session: s, inodes } => {
            for inode in inodes {
                release_handle(t, s, inode)?;
            }
            Ok(MetaReply::Done)
        }
        OpBody::AllocChunk { inode, index, replace } => alloc_chunk(t, inode, index, replace),
        OpBody::ReserveChunkIds { count } => {
            let first = ChunkId(t.next_ids(NEXT_CHUNK, 1, count as u64)?);
            Ok(MetaReply::ChunkIds { first, count })
        }
        OpBody::AddChunk { inode, index, chunk: id, version } => {
            add_chunk(t, inode, index, id, version)?;
            Ok(MetaReply::Done)
        }
        OpBody::AddChunkEnd { inode, index, chunk: id, version, size } => {
            if t.file_chunk(inode, index)? != Some(id) {
                add_chunk(t, inode, index, id, version)?;
            }
            write_end(t, now, inode, size)
        }
        OpBody::SetChunkVersion { chunk: id, version } => {
            let mut rec = t.chunk(id)?.ok_or(Status::NotFound)?;
            rec.version = version;
            t.put(CF_CHUNKS, &chunk(id), &rec);
            Ok(MetaReply::Done)
        }
        OpBody::DropChunk { inode, index, chunk: id } => {
            if t.file_chunk(inode, index)? != Some(id) {
                return Err(Status::NotFound.into());
            }
            t.delete(CF_CHUNKS, &file_chunk(inode, index));
            t.unref_chunk(id)?;
            Ok(MetaReply::Done)
        }
        OpBody::AppendChunks { dst, src, creds } => append_chunks(t, now, dst, src, &creds),
        OpBody::WriteEnd { inode, size } => write_end(t, now, inode, size),
        OpBody::Free { inodes } => {
            let mut freed = 0;
            for ino in inodes {
                if t.inode(ino)?.is_some_and(|r| r.state == InodeState::Reserved) && !is_open(t, ino)? {
                    free_inode(t, ino)?;
                    freed += 1;
                }
            }
            Ok(MetaReply::Freed(freed))
        }
    }
}

/// Puts a new chunk whose replicas already hold `version` into the empty slot `index`.
fn add_chunk(t: &mut Txn<'_, '_>, inode: Inode, index: u32, id: ChunkId, version: ChunkVersion) -> Res<()> {
    let r = writable_file(t, inode)?;
    if t.file_chunk(inode, index)?.is_some() {
        return Err(Status::Exists.into());
    }
    if id.0 == 0 || id.0 >= t.counter(NEXT_CHUNK)? || t.chunk(id)?.is_some() {
        // Only ids set aside and never used may be given.
        return Err(Status::Invalid.into());
    }
    t.put(CF_CHUNKS, &chunk(id), &ChunkRec { version, refs: 1, goal: r.goal });
    t.put_file_chunk(inode, index, id);
    t.add_counter(COUNT_CHUNKS, 1)?;
    Ok(())
}

/// A writer finished: the file is at least `size` long and was modified `now`.
fn write_end(t: &mut Txn<'_, '_>, now: Timestamp, inode: Inode, size: u64) -> Res<MetaReply> {
    let mut r = writable_file(t, inode)?;
    r.size = r.size.max(size);
    r.mtime = now;
    r.ctime = now;
    t.put_inode(inode, &r);
    Ok(MetaReply::Attr(r.attr(inode)))
}

fn format(t: &mut Txn<'_, '_>, now: Timestamp, goal: Goal, trash_time: TrashTime) -> Res<MetaReply> {
    if t.inode(Inode::ROOT)?.is_some() {
        return Err(Status::Exists.into());
    }
    let root = InodeRec {
        kind: FileKind::Dir,
        mode: 0o777,
        uid: 0,
        gid: 0,
        atime: now,
        mtime: now,
        ctime: now,
        size: 0,
        nlink: 2,
        rdev: 0,
        goal,
        trash_time,
        parent: Inode::ROOT,
        name: Vec::new(),
        symlink: Vec::new(),
        state: InodeState::Live,
    };
    t.put_inode(Inode::ROOT, &root);
    t.put(CF_INODES, NEXT_INODE, &2u64);
    t.add_counter(COUNT_INODES, 1)?;
    Ok(MetaReply::Attr(root.attr(Inode::ROOT)))
}

#[allow(clippy::too_many_arguments)]
fn create(
    t: &mut Txn<'_, '_>,
    now: Timestamp,
    parent: Inode,
    name: &Name,
    kind: FileKind,
    mode: u16,
    umask: u16,
    rdev: u32,
    target: Vec<u8>,
    creds: &Creds,
    open: Option<SessionId>,
) -> Res<MetaReply> {
    name.validate()?;
    let mut p = t.dir(parent)?;
    perm::check(&p, creds, W | X)?;
    if t.dentry(parent, name.as_bytes())?.is_some() {
        return Err(Status::Exists.into());
    }
    if kind == FileKind::Symlink {
        if target.is_empty() {
            return Err(Status::NotFound.into());
        }
        if target.len() > SYMLINK_MAX {
            return Err(Status::NameTooLong.into());
        }
    } else if !target.is_empty() {
        return Err(Status::Invalid.into());
    }
    if let Some(s) = open {
        if t.get_raw(CF_SESSIONS, &session(s))?.is_none() {
            return Err(Status::Stale.into());
        }
    }
    let ino = Inode(t.next_id(NEXT_INODE, 2)?);
    let mut mode = if kind == FileKind::Symlink { 0o777 } else { mode & 0o7777 & !umask };
    let gid = if p.mode & S_ISGID != 0 {
        if kind == FileKind::Dir {
            mode |= S_ISGID;
        }
        p.gid
    } else {
        creds.gid
    };
    if kind != FileKind::Dir && creds.uid != 0 && !creds.in_group(gid) {
        mode &= !S_ISGID;
    }
    let is_dir = kind == FileKind::Dir;
    let rec = InodeRec {
        kind,
        mode,
        uid: creds.uid,
        gid,
        atime: now,
        mtime: now,
        ctime: now,
        size: target.len() as u64,
        nlink: if is_dir { 2 } else { 1 },
        rdev: if matches!(kind, FileKind::BlockDev | FileKind::CharDev) { rdev } else { 0 },
        goal: p.goal,
        trash_time: p.trash_time,
        parent,
        name: name.as_bytes().to_vec(),
        symlink: target,
        state: InodeState::Live,
    };
    t.put_inode(ino, &rec);
    t.put_dentry(parent, name.as_bytes(), DentryRec { inode: ino, kind });
    p.size += 1;
    if is_dir {
        p.nlink += 1;
    }
    p.mtime = now;
    p.ctime = now;
    t.put_inode(parent, &p);
    t.add_counter(COUNT_INODES, 1)?;
    if let Some(s) = open {
        mark_open(t, s, ino)?;
    }
    Ok(MetaReply::Attr(rec.attr(ino)))
}

fn link(
    t: &mut Txn<'_, '_>,
    now: Timestamp,
    inode: Inode,
    parent: Inode,
    name: &Name,
    creds: &Creds,
) -> Res<MetaReply> {
    name.validate()?;
    let mut r = t.live(inode)?;
    if r.is_dir() {
        return Err(Status::Perm.into());
    }
    let mut p = t.dir(parent)?;
    perm::check(&p, creds, W | X)?;
    if t.dentry(parent, name.as_bytes())?.is_some() {
        return Err(Status::Exists.into());
    }
    if r.nlink >= LINK_MAX {
        return Err(Status::TooManyLinks.into());
    }
    r.nlink += 1;
    r.ctime = now;
    t.put_inode(inode, &r);
    t.put_dentry(parent, name.as_bytes(), DentryRec { inode, kind: r.kind });
    p.size += 1;
    p.mtime = now;
    p.ctime = now;
    t.put_inode(parent, &p);
    Ok(MetaReply::Attr(r.attr(inode)))
}

/// The path of `parent/name` from the root, without the leading `/`.
fn path_of(t: &Txn<'_, '_>, parent: Inode, name: &[u8]) -> Res<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = vec![name.to_vec()];
    let mut cur = parent;
    for _ in 0..MAX_DEPTH {
        if cur == Inode::ROOT {
            break;
        }
        let Some(r) = t.inode(cur)? else { break };
        parts.push(r.name.clone());
        cur = r.parent;
    }
    parts.reverse();
    Ok(parts.join(&b'/'))
}

fn is_open(t: &Txn<'_, '_>, ino: Inode) -> Res<bool> {
    Ok(!t.scan(CF_SESSIONS, &tagged(b'O', ino.0))?.is_empty())
}

/// How many handles session `s` holds open on `ino`: every `Open` adds one and every
/// `Release` takes one away, so a mount may release in the background (a release and another
/// handle's open commute). A record without a count (older stores) is one handle.
fn open_count(t: &Txn<'_, '_>, s: SessionId, ino: Inode) -> Res<u32> {
    Ok(match t.get_raw(CF_SESSIONS, &open_by_session(s, ino))? {
        None => 0,
        Some(v) => v.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes).unwrap_or(1),
    })
}

/// One handle of session `s` on `ino` is closed; the last one frees the file if it is reserved.
fn release_handle(t: &mut Txn<'_, '_>, s: SessionId, ino: Inode) -> Res<()> {
    let n = open_count(t, s, ino)?;
    if n > 1 {
        t.put_raw(CF_SESSIONS, &open_by_session(s, ino), (n - 1).to_le_bytes().to_vec());
    } else {
        t.delete(CF_SESSIONS, &open_by_session(s, ino));
        t.delete(CF_SESSIONS, &open_by_inode(ino, s));
        maybe_free_reserved(t, ino)?;
    }
    Ok(())
}

fn mark_open(t: &mut Txn<'_, '_>, s: SessionId, ino: Inode) -> Res<()> {
    let n = open_count(t, s, ino)?.saturating_add(1);
    t.put_raw(CF_SESSIONS, &open_by_session(s, ino), n.to_le_bytes().to_vec());
    t.put_raw(CF_SESSIONS, &open_by_inode(ino, s), Vec::new());
    Ok(())
}

/// An inode's last name is gone: a file goes to the trash, or is reserved until the leader
/// frees it ([`OpBody::Free`]: a handle the leader keeps in memory may be open on it); anything
/// else is kept while a recorded handle is open, or freed.
fn release(t: &mut Txn<'_, '_>, now: Timestamp, ino: Inode, mut rec: InodeRec, path: Vec<u8>) -> Res<()> {
    if rec.kind == FileKind::File && rec.trash_time.0 > 0 {
        let expires = now.secs.saturating_add(rec.trash_time.0 as i64);
        rec.state = InodeState::Trash;
        t.put_inode(ino, &rec);
        t.put(CF_TRASH, &trash(ino), &TrashRec { path, deleted_at: now, expires });
        t.put_raw(CF_TRASH, &trash_expiry(expires, ino), Vec::new());
    } else if rec.kind == FileKind::File || is_open(t, ino)? {
        rec.state = InodeState::Reserved;
        t.put_inode(ino, &rec);
        t.put(CF_TRASH, &reserved(ino), &TrashRec { path, deleted_at: now, expires: 0 });
    } else {
        free_inode(t, ino)?;
    }
    Ok(())
}

/// Deletes an inode with its attributes, chunk references and trash entries.
fn free_inode(t: &mut Txn<'_, '_>, ino: Inode) -> Res<()> {
    if let Some(tr) = t.get::<TrashRec>(CF_TRASH, &trash(ino))? {
        t.delete(CF_TRASH, &trash(ino));
        t.delete(CF_TRASH, &trash_expiry(tr.expires, ino));
    }
    t.delete(CF_TRASH, &reserved(ino));
    for (k, _) in t.scan(CF_XATTRS, &inode(ino))? {
        t.delete(CF_XATTRS, &k);
    }
    for (index, id) in t.file_chunks(ino)? {
        t.delete(CF_CHUNKS, &file_chunk(ino, index));
        t.unref_chunk(id)?;
    }
    t.delete(CF_INODES, &inode(ino));
    t.add_counter(COUNT_INODES, -1)?;
    Ok(())
}

/// The last recorded handle on a reserved inode closed: anything but a file is freed now; a
/// file waits for [`OpBody::Free`].
fn maybe_free_reserved(t: &mut Txn<'_, '_>, ino: Inode) -> Res<()> {
    if let Some(r) = t.inode(ino)? {
        if r.state == InodeState::Reserved && r.kind != FileKind::File && !is_open(t, ino)? {
            free_inode(t, ino)?;
        }
    }
    Ok(())
}

fn remove(t: &mut Txn<'_, '_>, now: Timestamp, parent: Inode, name: &Name, dir: bool, creds: &Creds) -> Res<MetaReply> {
    let mut p = t.dir(parent)?;
    perm::check(&p, creds, W | X)?;
    let d = t.dentry(parent, name.as_bytes())?.ok_or(Status::NotFound)?;
    let mut r = t.live(d.inode)?;
    if dir {
        if !r.is_dir() {
            return Err(Status::NotDir.into());
        }
        if r.size > 0 {
            return Err(Status::NotEmpty.into());
        }
    } else if r.is_dir() {
        return Err(Status::IsDir.into());
    }
    perm::sticky_allows(&p, &r, creds)?;
    t.delete_dentry(parent, name.as_bytes());
    p.size -= 1;
    p.mtime = now;
    p.ctime = now;
    if dir {
        p.nlink -= 1;
        t.put_inode(parent, &p);
        free_inode(t, d.inode)?;
    } else {
        t.put_inode(parent, &p);
        r.nlink -= 1;
        r.ctime = now;
        if r.nlink == 0 {
            let path = path_of(t, parent, name.as_bytes())?;
            release(t, now, d.inode, r, path)?;
        } else {
            t.put_inode(d.inode, &r);
        }
    }
    Ok(MetaReply::Done)
}

/// Fails with `EINVAL` if `dir` is `start` or one of its ancestors.
fn check_not_ancestor(t: &Txn<'_, '_>, dir: Inode, start: Inode) -> Res<()> {
    let mut cur = start;
    for _ in 0..MAX_DEPTH {
        if cur == dir {
            return Err(Status::Invalid.into());
        }
        if cur == Inode::ROOT {
            return Ok(());
        }
        cur = t.inode(cur)?.ok_or(Status::NotFound)?.parent;
    }
    Err(Status::Loop.into())
}

#[allow(clippy::too_many_arguments)]
fn rename(
    t: &mut Txn<'_, '_>,
    now: Timestamp,
    parent: Inode,
    name: &Name,
    new_parent: Inode,
    new_name: &Name,
    flags: u32,
    creds: &Creds,
) -> Res<MetaReply> {
    new_name.validate()?;
    if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 || flags == RENAME_NOREPLACE | RENAME_EXCHANGE {
        return Err(Status::Invalid.into());
    }
    let same_dir = parent == new_parent;
    let mut sp = t.dir(parent)?;
    perm::check(&sp, creds, W | X)?;
    let mut dp = if same_dir { None } else { Some(t.dir(new_parent)?) };
    if let Some(dp) = &dp {
        perm::check(dp, creds, W | X)?;
    }
    let src = t.dentry(parent, name.as_bytes())?.ok_or(Status::NotFound)?;
    let mut s = t.live(src.inode)?;
    perm::sticky_allows(&sp, &s, creds)?;
    let dst = t.dentry(new_parent, new_name.as_bytes())?;
    if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
        return Err(Status::Exists.into());
    }
    if flags & RENAME_EXCHANGE != 0 && dst.is_none() {
        return Err(Status::NotFound.into());
    }
    if same_dir && name == new_name {
        return Ok(MetaReply::Done);
    }
    if s.is_dir() && !same_dir {
        check_not_ancestor(t, src.inode, new_parent)?;
        perm::check(&s, creds, W)?;
    }
    if let Some(d) = dst {
        if d.inode == src.inode {
            return Ok(MetaReply::Done);
        }
        let mut dr = t.live(d.inode)?;
        perm::sticky_allows(dp.as_ref().unwrap_or(&sp), &dr, creds)?;
        if flags & RENAME_EXCHANGE != 0 {
            if dr.is_dir() && !same_dir {
                check_not_ancestor(t, d.inode, parent)?;
                perm::check(&dr, creds, W)?;
            }
            t.put_dentry(parent, name.as_bytes(), d);
            t.put_dentry(new_parent, new_name.as_bytes(), src);
            if let Some(dp) = dp.as_mut() {
                if s.is_dir() {
                    sp.nlink -= 1;
                    dp.nlink += 1;
                }
                if dr.is_dir() {
                    dp.nlink -= 1;
                    sp.nlink += 1;
                }
            }
            (s.parent, s.name, s.ctime) = (new_parent, new_name.as_bytes().to_vec(), now);
            (dr.parent, dr.name, dr.ctime) = (parent, name.as_bytes().to_vec(), now);
            t.put_inode(src.inode, &s);
            t.put_inode(d.inode, &dr);
            finish_parents(t, now, parent, sp, new_parent, dp);
            return Ok(MetaReply::Done);
        }
        if s.is_dir() {
            if !dr.is_dir() {
                return Err(Status::NotDir.into());
            }
            if dr.size > 0 {
                return Err(Status::NotEmpty.into());
            }
        } else if dr.is_dir() {
            return Err(Status::IsDir.into());
        }
        {
            let target_parent = dp.as_mut().unwrap_or(&mut sp);
            target_parent.size -= 1;
            if dr.is_dir() {
                target_parent.nlink -= 1;
            }
        }
        if dr.is_dir() {
            free_inode(t, d.inode)?;
        } else {
            dr.nlink -= 1;
            dr.ctime = now;
            if dr.nlink == 0 {
                let path = path_of(t, new_parent, new_name.as_bytes())?;
                release(t, now, d.inode, dr, path)?;
            } else {
                t.put_inode(d.inode, &dr);
            }
        }
    }
    t.delete_dentry(parent, name.as_bytes());
    t.put_dentry(new_parent, new_name.as_bytes(), src);
    sp.size -= 1;
    {
        let target_parent = dp.as_mut().unwrap_or(&mut sp);
        target_parent.size += 1;
    }
    if s.is_dir() {
        if let Some(dp) = dp.as_mut() {
            sp.nlink -= 1;
            dp.nlink += 1;
        }
    }
    (s.parent, s.name, s.ctime) = (new_parent, new_name.as_bytes().to_vec(), now);
    t.put_inode(src.inode, &s);
    finish_parents(t, now, parent, sp, new_parent, dp);
    Ok(MetaReply::Done)
}

fn finish_parents(
    t: &mut Txn<'_, '_>,
    now: Timestamp,
    parent: Inode,
    mut sp: InodeRec,
    new_parent: Inode,
    dp: Option<InodeRec>,
) {
    sp.mtime = now;
    sp.ctime = now;
    t.put_inode(parent, &sp);
    if let Some(mut dp) = dp {
        dp.mtime = now;
        dp.ctime = now;
        t.put_inode(new_parent, &dp);
    }
}

fn set_attr(
    t: &mut Txn<'_, '_>,
    now: Timestamp,
    ino: Inode,
    set: &SetAttr,
    creds: &Creds,
    handle: bool,
) -> Res<MetaReply> {
    let mut r = t.inode(ino)?.ok_or(Status::NotFound)?;
    if let Some(mode) = set.mode {
        perm::owner(&r, creds)?;
        let mut m = mode & 0o7777;
        if creds.uid != 0 && !creds.in_group(r.gid) {
            m &= !S_ISGID;
        }
        r.mode = m;
    }
    if set.uid.is_some() || set.gid.is_some() {
        let (nu, ng) = (set.uid.unwrap_or(r.uid), set.gid.unwrap_or(r.gid));
        if creds.uid != 0 && (nu != r.uid || creds.uid != r.uid || (ng != r.gid && !creds.in_group(ng))) {
            return Err(Status::Perm.into());
        }
        // Like Linux: a chown clears setuid, and setgid of group-executable files.
        if !r.is_dir() {
            r.mode &= !S_ISUID;
            if r.mode & 0o010 != 0 {
                r.mode &= !S_ISGID;
            }
        }
        r.uid = nu;
        r.gid = ng;
    }
    if let Some(size) = set.size {
        match r.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(Status::IsDir.into()),
            _ => return Err(Status::Invalid.into()),
        }
        if !handle {
            perm::check(&r, creds, W)?;
        }
        let keep = size.div_ceil(CHUNK_SIZE);
        for (index, id) in t.file_chunks(ino)? {
            if index as u64 >= keep {
                t.delete(CF_CHUNKS, &file_chunk(ino, index));
                t.unref_chunk(id)?;
            }
        }
        r.size = size;
        r.mtime = now;
    }
    for (ts, is_atime) in [(set.atime, true), (set.mtime, false)] {
        let Some(ts) = ts else { continue };
        let value = match ts {
            TimeSet::At(v) => {
                perm::owner(&r, creds)?;
                v
            }
            TimeSet::Now => {
                if perm::owner(&r, creds).is_err() {
                    perm::check(&r, creds, W)?;
                }
                now
            }
        };
        if is_atime {
            r.atime = value;
        } else {
            r.mtime = value;
        }
    }
    r.ctime = now;
    t.put_inode(ino, &r);
    Ok(MetaReply::Attr(r.attr(ino)))
}

fn set_xattr(
    t: &mut Txn<'_, '_>,
    now: Timestamp,
    ino: Inode,
    name: &[u8],
    value: Option<Vec<u8>>,
    flags: u32,
    creds: &Creds,
) -> Res<MetaReply> {
    let mut r = t.live(ino)?;
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(Status::Range.into());
    }
    if value.as_ref().is_some_and(|v| v.len() > XATTR_VALUE_MAX) {
        return Err(Status::Range.into());
    }
    if name.starts_with(b"trusted.") || name.starts_with(b"security.") {
        if creds.uid != 0 {
            return Err(Status::Perm.into());
        }
    } else if perm::owner(&r, creds).is_err() {
        perm::check(&r, creds, W)?;
    }
    let key = xattr(ino, name);
    let exists = t.get_raw(CF_XATTRS, &key)?.is_some();
    match value {
        Some(v) => {
            if flags & XATTR_CREATE != 0 && exists {
                return Err(Status::Exists.into());
            }
            if flags & XATTR_REPLACE != 0 && !exists {
                return Err(Status::NoData.into());
            }
            t.put_raw(CF_XATTRS, &key, v);
        }
        None => {
            if !exists {
                return Err(Status::NoData.into());
            }
            t.delete(CF_XATTRS, &key);
        }
    }
    r.ctime = now;
    t.put_inode(ino, &r);
    Ok(MetaReply::Done)
}

/// `root` and, if `recursive`, everything below it (live objects only).
fn subtree(t: &Txn<'_, '_>, root: Inode, recursive: bool) -> Res<Vec<Inode>> {
    let rec = t.live(root)?;
    let mut out = vec![root];
    if !(recursive && rec.is_dir()) {
        return Ok(out);
    }
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for (_, v) in t.scan(CF_DENTRIES, &dentry_prefix(dir))? {
            let d: DentryRec = alces_raft_store::db::decode_value(&v)?;
            out.push(d.inode);
            if d.kind == FileKind::Dir {
                stack.push(d.inode);
            }
        }
    }
    Ok(out)
}

/// Applies `change` to every object of a (sub)tree the caller owns; counts the outcomes.
fn change_tree(
    t: &mut Txn<'_, '_>,
    root: Inode,
    recursive: bool,
    creds: &Creds,
    mut change: impl FnMut(&mut Txn<'_, '_>, Inode, &mut InodeRec) -> Res<bool>,
) -> Res<MetaReply> {
    let (mut changed, mut unchanged, mut denied) = (0, 0, 0);
    for ino in subtree(t, root, recursive)? {
        let mut r = t.live(ino)?;
        if perm::owner(&r, creds).is_err() {
            denied += 1;
        } else if change(t, ino, &mut r)? {
            t.put_inode(ino, &r);
            changed += 1;
        } else {
            unchanged += 1;
        }
    }
    if !recursive && denied > 0 {
        return Err(Status::Perm.into());
    }
    Ok(MetaReply::Counts { changed, unchanged, denied })
}

fn set_goal(t: &mut Txn<'_, '_>, root: Inode, goal: Goal, recursive: bool, creds: &Creds) -> Res<MetaReply> {
    change_tree(t, root, recursive, creds, |t, ino, r| {
        if r.goal == goal {
            return Ok(false);
        }
        r.goal = goal;
        if r.kind == FileKind::File {
            for (_, id) in t.file_chunks(ino)? {
                if let Some(mut c) = t.chunk(id)? {
                    // A chunk shared with a snapshot keeps the larger goal of its files.
                    c.goal = if c.refs > 1 { c.goal.max(goal) } else { goal };
                    t.put(CF_CHUNKS, &chunk(id), &c);
                }
            }
        }
        Ok(true)
    })
}

fn set_trash_time(
    t: &mut Txn<'_, '_>,
    root: Inode,
    trash_time: TrashTime,
    recursive: bool,
    creds: &Creds,
) -> Res<MetaReply> {
    change_tree(t, root, recursive, creds, |_, _, r| {
        if r.trash_time == trash_time {
            return Ok(false);
        }
        r.trash_time = trash_time;
        Ok(true)
    })
}

fn snapshot(
    t: &mut Txn<'_, '_>,
    now: Timestamp,
    src: Inode,
    parent: Inode,
    name: &Name,
    creds: &Creds,
) -> Res<MetaReply> {
    name.validate()?;
    let s = t.live(src)?;
    perm::check(&s, creds, if s.is_dir() { R | X } else { R })?;
    let mut p = t.dir(parent)?;
    perm::check(&p, creds, W | X)?;
    if t.dentry(parent, name.as_bytes())?.is_some() {
        return Err(Status::Exists.into());
    }
    if s.is_dir() {
        check_not_ancestor(t, src, parent)?;
    }
    // (source, new parent, name) still to copy; directories are created before their entries.
    let mut todo: Vec<(Inode, Inode, Vec<u8>)> = vec![(src, parent, name.as_bytes().to_vec())];
    let mut root_attr: Option<Attr> = None;
    let mut copied = 0i64;
    while let Some((from, to_parent, to_name)) = todo.pop() {
        let mut rec = t.live(from)?;
        let ino = Inode(t.next_id(NEXT_INODE, 2)?);
        rec.parent = to_parent;
        rec.name = to_name.clone();
        rec.ctime = now;
        if rec.is_dir() {
            let entries = t.scan(CF_DENTRIES, &dentry_prefix(from))?;
            rec.size = entries.len() as u64;
            rec.nlink = 2;
            for (k, v) in entries {
                let d: DentryRec = alces_raft_store::db::decode_value(&v)?;
                if d.kind == FileKind::Dir {
                    rec.nlink += 1;
                }
                todo.push((d.inode, ino, k[8..].to_vec()));
            }
        } else {
            rec.nlink = 1;
            for (index, id) in t.file_chunks(from)? {
                if let Some(mut c) = t.chunk(id)? {
                    c.refs += 1;
                    t.put(CF_CHUNKS, &chunk(id), &c);
                    t.put_file_chunk(ino, index, id);
                }
            }
        }
        for (k, v) in t.scan(CF_XATTRS, &inode(from))? {
            t.put_raw(CF_XATTRS, &xattr(ino, &k[8..]), v);
        }
        t.put_dentry(to_parent, &to_name, DentryRec { inode: ino, kind: rec.kind });
        t.put_inode(ino, &rec);
        copied += 1;
        if root_attr.is_none() {
            root_attr = Some(rec.attr(ino));
        }
    }
    p.size += 1;
    if s.is_dir() {
        p.nlink += 1;
    }
    p.mtime = now;
    p.ctime = now;
    t.put_inode(parent, &p);
    t.add_counter(COUNT_INODES, copied)?;
    Ok(MetaReply::Attr(root_attr.expect("at least the root was copied")))
}

fn undelete(t: &mut Txn<'_, '_>, now: Timestamp, ino: Inode) -> Res<MetaReply> {
    let mut r = match t.inode(ino)? {
        Some(r) if r.state == InodeState::Trash => r,
        _ => return Err(Status::NotFound.into()),
    };
    let tr: TrashRec = t.get(CF_TRASH, &trash(ino))?.ok_or(Status::NotFound)?;
    let parts: Vec<&[u8]> = tr.path.split(|&b| b == b'/').filter(|p| !p.is_empty()).collect();
    let (file_name, dirs) = parts.split_last().ok_or(Status::Invalid)?;
    // Walk the old path, recreating directories that are gone.
    let mut parent = Inode::ROOT;
    for part in dirs {
        let mut p = t.dir(parent)?;
        match t.dentry(parent, part)? {
            Some(d) if d.kind == FileKind::Dir => parent = d.inode,
            Some(_) => return Err(Status::NotDir.into()),
            None => {
                let dir = Inode(t.next_id(NEXT_INODE, 2)?);
                let rec = InodeRec {
                    kind: FileKind::Dir,
                    mode: 0o755,
                    uid: r.uid,
                    gid: r.gid,
                    atime: now,
                    mtime: now,
                    ctime: now,
                    size: 0,
                    nlink: 2,
                    rdev: 0,
                    goal: p.goal,
                    trash_time: p.trash_time,
                    parent,
                    name: part.to_vec(),
                    symlink: Vec::new(),
                    state: InodeState::Live,
                };
                t.put_inode(dir, &rec);
                t.put_dentry(parent, part, DentryRec { inode: dir, kind: FileKind::Dir });
                p.size += 1;
                p.nlink += 1;
                p.mtime = now;
                p.ctime = now;
                t.put_inode(parent, &p);
                t.add_counter(COUNT_INODES, 1)?;
                parent = dir;
            }
        }
    }
    if t.dentry(parent, file_name)?.is_some() {
        return Err(Status::Exists.into());
    }
    let mut p = t.dir(parent)?;
    p.size += 1;
    p.mtime = now;
    p.ctime = now;
    t.put_inode(parent, &p);
    t.put_dentry(parent, file_name, DentryRec { inode: ino, kind: r.kind });
    r.state = InodeState::Live;
    r.nlink = 1;
    r.parent = parent;
    r.name = file_name.to_vec();
    r.ctime = now;
    t.put_inode(ino, &r);
    t.delete(CF_TRASH, &trash(ino));
    t.delete(CF_TRASH, &trash_expiry(tr.expires, ino));
    Ok(MetaReply::Attr(r.attr(ino)))
}

fn expire_trash(t: &mut Txn<'_, '_>, now: Timestamp, limit: u32) -> Res<MetaReply> {
    let mut due = Vec::new();
    for (k, _) in t.scan_limit(CF_TRASH, b"x", limit as usize)? {
        let expires = u64::from_be_bytes(k[1..9].try_into().map_err(|_| Status::Io)?) as i64;
        if expires > now.secs {
            break;
        }
        due.push(Inode(pair_second(&k).ok_or(Status::Io)?));
    }
    for &ino in &due {
        let rec = t.inode(ino)?.ok_or(Status::Io)?;
        leave_trash(t, ino, rec)?;
    }
    Ok(MetaReply::Freed(due.len() as u64))
}

/// A trash entry expires or is purged: reserved, and freed by [`OpBody::Free`] once no
/// session holds it open (as in MooseFS, a file open while it leaves the trash is kept).
fn leave_trash(t: &mut Txn<'_, '_>, ino: Inode, mut rec: InodeRec) -> Res<()> {
    let tr = t.get::<TrashRec>(CF_TRASH, &trash(ino))?.ok_or(Status::Io)?;
    t.delete(CF_TRASH, &trash(ino));
    t.delete(CF_TRASH, &trash_expiry(tr.expires, ino));
    rec.state = InodeState::Reserved;
    t.put_inode(ino, &rec);
    t.put(CF_TRASH, &reserved(ino), &TrashRec { expires: 0, ..tr });
    Ok(())
}

fn close_session(t: &mut Txn<'_, '_>, s: SessionId) -> Res<MetaReply> {
    t.delete(CF_SESSIONS, &session(s));
    t.delete(CF_SESSIONS, &session_replies(s));
    for (k, _) in t.scan(CF_SESSIONS, &tagged(b'o', s.0))? {
        let ino = Inode(pair_second(&k).ok_or(Status::Io)?);
        t.delete(CF_SESSIONS, &k);
        t.delete(CF_SESSIONS, &open_by_inode(ino, s));
        maybe_free_reserved(t, ino)?;
    }
    Ok(MetaReply::Done)
}

/// A file that may take writes: live, or deleted while a handle was open (reserved, or in
/// the trash).
fn writable_file(t: &Txn<'_, '_>, ino: Inode) -> Res<InodeRec> {
    match t.inode(ino)? {
        Some(r) if r.kind == FileKind::File => Ok(r),
        Some(_) => Err(Status::Invalid.into()),
        None => Err(Status::NotFound.into()),
    }
}

fn alloc_chunk(t: &mut Txn<'_, '_>, ino: Inode, index: u32, replace: Option<ChunkId>) -> Res<MetaReply> {
    let r = writable_file(t, ino)?;
    let current = t.file_chunk(ino, index)?;
    if let Some(cur) = current {
        if replace != Some(cur) {
            // Somebody allocated or replaced it first: use theirs.
            let rec = t.chunk(cur)?.ok_or(Status::Io)?;
            return Ok(MetaReply::Chunk { chunk: cur, version: rec.version, copy_from: None });
        }
    }
    let id = ChunkId(t.next_id(NEXT_CHUNK, 1)?);
    t.put(CF_CHUNKS, &chunk(id), &ChunkRec { version: ChunkVersion(0), refs: 1, goal: r.goal });
    t.put_file_chunk(ino, index, id);
    t.add_counter(COUNT_CHUNKS, 1)?;
    let copy_from = match current {
        Some(old) => {
            let v = t.chunk(old)?.map(|c| c.version).unwrap_or_default();
            t.unref_chunk(old)?;
            Some((old, v))
        }
        None => None,
    };
    Ok(MetaReply::Chunk { chunk: id, version: ChunkVersion(0), copy_from })
}

fn append_chunks(t: &mut Txn<'_, '_>, now: Timestamp, dst: Inode, src: Inode, creds: &Creds) -> Res<MetaReply> {
    let mut d = t.live(dst)?;
    let s = t.live(src)?;
    if d.kind != FileKind::File || s.kind != FileKind::File {
        return Err(Status::Invalid.into());
    }
    perm::check(&d, creds, W)?;
    perm::check(&s, creds, R)?;
    let first = d.size.div_ceil(CHUNK_SIZE);
    if first + s.size.div_ceil(CHUNK_SIZE) > u32::MAX as u64 {
        return Err(Status::FileTooBig.into());
    }
    for (index, id) in t.file_chunks(src)? {
        if let Some(mut c) = t.chunk(id)? {
            c.refs += 1;
            t.put(CF_CHUNKS, &chunk(id), &c);
            t.put_file_chunk(dst, first as u32 + index, id);
        }
    }
    d.size = first * CHUNK_SIZE + s.size;
    d.mtime = now;
    d.ctime = now;
    t.put_inode(dst, &d);
    Ok(MetaReply::Attr(d.attr(dst)))
}
