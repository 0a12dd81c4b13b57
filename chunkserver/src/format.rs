//! Chunk files, byte-compatible with MooseFS's "MFSC 1.1" format, so a MooseFS chunkserver's
//! disks can be adopted in place.
//!
//! ```text
//! XX/chunk_<ID: 16 hex>_<VERSION: 8 hex>.mfs      XX = last byte of the id, in hex
//! [0, 4096)        header: "MFSC 1.1", chunk id (u64 BE), version (u32 BE), zeros
//! [4096, 8192)     1024 CRC-32 values (u32 BE), one per 64 KiB block
//! [8192, ...)      data, in whole 64 KiB blocks
//! ```
//! The CRC is the reflected 0xEDB88320 CRC-32 of the whole 64 KiB block; a block past the end
//! of the data reads as zeros and its table entry holds the CRC of a zero block. Data is
//! stored in whole blocks (a partial last block is padded with zeros), so the file length is
//! always `8192 + 65536 * blocks`.
//!
//! Every read checks the CRC of every block it touches and fails on a mismatch: bad bytes are
//! never returned. Writes update a block's CRC together with its data (read-modify-write of
//! partial blocks, after checking the old block).
//!
//! Runs of whole data blocks are written, and reads of 1 MiB or more read, with `O_DIRECT`
//! where the file system allows it (blocks are 64 KiB at 4 KiB-aligned offsets): the bytes go
//! between aligned buffers and the disk without a copy in the page cache, so a chunkserver
//! spends far less CPU per byte and a later `fsync` has no dirty data left to write back. A
//! large read's buffer is also what the data service sends from, and it goes back to a pool
//! when sent. Small reads, writes that patch part of a block and the header go through the page
//! cache, where neighbouring small requests find their blocks; the kernel keeps the two views
//! coherent (a direct write drops the cached pages it covers, a direct read writes back dirty
//! ones first). A file system that refuses `O_DIRECT` gets the page cache for everything.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

use alces_proto::types::{ChunkId, ChunkVersion, BLOCKS_PER_CHUNK, BLOCK_SIZE, CHUNK_SIZE};

/// Written by Alces and by newer MooseFS 3 chunkservers: the CRC table holds the CRC of a zero
/// block for every block the file does not have.
pub const SIGNATURE: &[u8; 8] = b"MFSC 1.1";
/// Written by older MooseFS chunkservers (Debian's 3.0.117 among them): the same layout, but the
/// CRC entries of absent blocks are not to be trusted.
pub const SIGNATURE_1_0: &[u8; 8] = b"MFSC 1.0";
pub const HEADER_SIZE: u64 = 4096;
pub const CRC_TABLE_SIZE: u64 = 4096;
pub const DATA_OFFSET: u64 = HEADER_SIZE + CRC_TABLE_SIZE;
const BLOCK: usize = BLOCK_SIZE as usize;
/// Memory and file alignment that satisfies `O_DIRECT` on every Linux block device.
const DIRECT_ALIGN: usize = 4096;

/// Blocks written with one system call at most (1 MiB).
const RUN_BLOCKS: u32 = 16;

/// Memory aligned for `O_DIRECT` (the vector is never reallocated, so its start stays where it
/// was aligned).
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        AlignedBuf { raw, start, len }
    }

    fn get_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + len.min(self.len)]
    }

    fn is_aligned(&self) -> bool {
        (self.raw[self.start..].as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
    }
}

thread_local! {
    /// Where a run of blocks is assembled before it is written: one per (blocking) thread.
    static RUN: std::cell::RefCell<AlignedBuf> = std::cell::RefCell::new(AlignedBuf::new(RUN_BLOCKS as usize * BLOCK));
}

/// Buffers of large reads given back (see [`PooledRead`]), at most [`READ_POOL_MAX`].
static READ_POOL: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());
const READ_POOL_MAX: usize = 16;

/// The bytes of a large read, in the aligned buffer the disk filled: what [`ChunkFile::read`]
/// returns (as `Bytes`) and a server sends from, without a copy. The buffer goes back to the
/// pool when the last `Bytes` of it is dropped, so that the next read neither allocates nor
/// clears one.
struct PooledRead {
    buf: AlignedBuf,
    used: usize,
}

impl PooledRead {
    /// A buffer of at least `len` bytes (its contents are whatever the last read left).
    fn take(len: usize) -> PooledRead {
        let reused = {
            let mut pool = READ_POOL.lock().unwrap_or_else(|e| e.into_inner());
            pool.iter().position(|b| b.len >= len).map(|i| pool.swap_remove(i))
        };
        PooledRead { buf: reused.unwrap_or_else(|| AlignedBuf::new(len)), used: len }
    }
}

impl AsRef<[u8]> for PooledRead {
    fn as_ref(&self) -> &[u8] {
        &self.buf.raw[self.buf.start..self.buf.start + self.used]
    }
}

impl Drop for PooledRead {
    fn drop(&mut self) {
        let buf = std::mem::replace(&mut self.buf, AlignedBuf { raw: Vec::new(), start: 0, len: 0 });
        let mut pool = READ_POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READ_POOL_MAX {
            pool.push(buf);
        }
    }
}

/// Reads of at least this many bytes bypass the page cache (a sequential reader's windows);
/// smaller ones go through it, where neighbouring small reads find their blocks.
const DIRECT_READ_MIN: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("CRC mismatch in block {block}")]
    Crc { block: u32 },
    #[error("damaged chunk file: {0}")]
    Damaged(String),
    #[error("chunk file exists already: {0}")]
    Exists(PathBuf),
    #[error("offset {offset} + {len} is outside the chunk")]
    Range { offset: u64, len: u64 },
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

pub type Result<T, E = ChunkError> = std::result::Result<T, E>;

/// The CRC of a 64 KiB block of zeros (what MooseFS stores for absent blocks).
pub fn zero_block_crc() -> u32 {
    static CRC: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CRC.get_or_init(|| crc32fast::hash(&[0u8; BLOCK]))
}

/// The sub-folder (`00` to `FF`) where a new replica of `id` goes: the id's last byte.
pub fn default_subfolder(id: ChunkId) -> u8 {
    (id.0 & 0xff) as u8
}

/// `XX/chunk_<ID>_<VERSION>.mfs`, relative to a data folder. New replicas go to
/// [`default_subfolder`]; a replica found elsewhere by the scan (MooseFS 3 picks sub-folders
/// by other rules) is used where it is.
pub fn relative_path(sub: u8, id: ChunkId, version: ChunkVersion) -> PathBuf {
    PathBuf::from(format!("{sub:02X}")).join(format!("chunk_{}_{:08X}.mfs", id.hex(), version.0))
}

/// Parses a chunk file name back into (id, version).
pub fn parse_name(name: &str) -> Option<(ChunkId, ChunkVersion)> {
    let rest = name.strip_prefix("chunk_")?.strip_suffix(".mfs")?;
    let (id, version) = rest.split_once('_')?;
    if id.len() != 16 || version.len() != 8 {
        return None;
    }
    Some((ChunkId(u64::from_str_radix(id, 16).ok()?), ChunkVersion(u32::from_str_radix(version, 16).ok()?)))
}

/// An open chunk file.
#[derive(Debug)]
pub struct ChunkFile {
    file: File,
    path: PathBuf,
    id: ChunkId,
    version: ChunkVersion,
    /// Data blocks present in the file.
    blocks: u32,
    crcs: Vec<u32>,
    /// The file opened with `O_DIRECT`, once a read or write asked for it (`None` where the
    /// file system refuses the flag).
    direct: OnceLock<Option<File>>,
    /// Set when the file system refused a direct read or write: the page cache from then on.
    direct_refused: AtomicBool,
    /// False for a file created by this process until a sync has made its name durable too
    /// (the first sync also syncs the folder).
    name_synced: AtomicBool,
}

fn header(id: ChunkId, version: ChunkVersion) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_SIZE as usize];
    h[..8].copy_from_slice(SIGNATURE);
    h[8..16].copy_from_slice(&id.0.to_be_bytes());
    h[16..20].copy_from_slice(&version.0.to_be_bytes());
    h
}

fn encode_crcs(crcs: &[u32]) -> Vec<u8> {
    crcs.iter().flat_map(|c| c.to_be_bytes()).collect()
}

impl ChunkFile {
    fn new(file: File, path: &Path, id: ChunkId, version: ChunkVersion, blocks: u32, crcs: Vec<u32>) -> ChunkFile {
        let path = path.to_path_buf();
        ChunkFile {
            file,
            path,
            id,
            version,
            blocks,
            crcs,
            direct: OnceLock::new(),
            direct_refused: AtomicBool::new(false),
            name_synced: AtomicBool::new(true),
        }
    }

    /// Creates an empty chunk file (no data blocks); fails if the file exists.
    pub fn create(path: &Path, id: ChunkId, version: ChunkVersion) -> Result<ChunkFile> {
        let file = match OpenOptions::new().read(true).write(true).create_new(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(ChunkError::Exists(path.to_path_buf())),
            Err(e) => return Err(e.into()),
        };
        let crcs = vec![zero_block_crc(); BLOCKS_PER_CHUNK as usize];
        file.write_all_at(&header(id, version), 0)?;
        file.write_all_at(&encode_crcs(&crcs), HEADER_SIZE)?;
        let f = ChunkFile::new(file, path, id, version, 0, crcs);
        f.name_synced.store(false, Ordering::Relaxed);
        Ok(f)
    }

    /// Opens a chunk file and checks its header against its name.
    pub fn open(path: &Path) -> Result<ChunkFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        let damaged = |why: String| ChunkError::Damaged(format!("{}: {why}", path.display()));
        if len < DATA_OFFSET {
            return Err(damaged(format!("{len} bytes, shorter than the header")));
        }
        let mut head = [0u8; 20];
        file.read_exact_at(&mut head, 0)?;
        if &head[..8] != SIGNATURE && &head[..8] != SIGNATURE_1_0 {
            return Err(damaged(format!("signature {:?}", String::from_utf8_lossy(&head[..8]))));
        }
        let id = ChunkId(u64::from_be_bytes(head[8..16].try_into().expect("8 bytes")));
        let version = ChunkVersion(u32::from_be_bytes(head[16..20].try_into().expect("4 bytes")));
        if let Some((nid, nver)) = path.file_name().and_then(|n| n.to_str()).and_then(parse_name) {
            if (nid, nver) != (id, version) {
                return Err(damaged(format!("header says {}/{}, the name {}/{}", id.hex(), version, nid.hex(), nver)));
            }
        }
        let data = len - DATA_OFFSET;
        if !data.is_multiple_of(BLOCK_SIZE) || data > CHUNK_SIZE {
            return Err(damaged(format!("{data} data bytes is not a whole number of blocks within a chunk")));
        }
        let mut table = vec![0u8; CRC_TABLE_SIZE as usize];
        file.read_exact_at(&mut table, HEADER_SIZE)?;
        let blocks = (data / BLOCK_SIZE) as u32;
        let mut crcs: Vec<u32> =
            table.chunks_exact(4).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes"))).collect();
        // Blocks past the end read as zeros, whatever the table says (MFSC 1.0 leaves them unset).
        crcs[blocks as usize..].fill(zero_block_crc());
        Ok(ChunkFile::new(file, path, id, version, blocks, crcs))
    }

    pub fn id(&self) -> ChunkId {
        self.id
    }

    pub fn version(&self) -> ChunkVersion {
        self.version
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Data bytes stored (whole blocks).
    pub fn len(&self) -> u64 {
        self.blocks as u64 * BLOCK_SIZE
    }

    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    fn check_range(offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > CHUNK_SIZE) {
            return Err(ChunkError::Range { offset, len });
        }
        Ok(())
    }

    /// Reads block `b` and checks its CRC (zeros for a block past the end).
    pub fn read_block(&self, b: u32) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; BLOCK];
        if b >= self.blocks {
            return Ok(buf);
        }
        self.file.read_exact_at(&mut buf, DATA_OFFSET + b as u64 * BLOCK_SIZE)?;
        if crc32fast::hash(&buf) != self.crcs[b as usize] {
            return Err(ChunkError::Crc { block: b });
        }
        Ok(buf)
    }

    /// Reads `len` bytes at `offset`; holes and bytes past the end read as zeros. The blocks
    /// are read with one positioned read and their CRCs checked in place; the bytes returned
    /// are a slice of the buffer they were read into.
    pub fn read(&self, offset: u64, len: u32) -> Result<Bytes> {
        Self::check_range(offset, len as u64)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset + len as u64;
        let (first, last) = ((offset / BLOCK_SIZE) as u32, ((end - 1) / BLOCK_SIZE) as u32);
        let span = (last - first + 1) as usize * BLOCK;
        let stored = self.blocks.min(last + 1).saturating_sub(first) as usize * BLOCK;
        let at = DATA_OFFSET + first as u64 * BLOCK_SIZE;
        let buf = if span >= DIRECT_READ_MIN {
            let mut pooled = PooledRead::take(span);
            let aligned = pooled.buf.is_aligned();
            let buf = pooled.buf.get_mut(span);
            self.read_large(&mut buf[..stored], at, aligned)?;
            buf[stored..].fill(0);
            Bytes::from_owner(pooled)
        } else {
            let mut buf = vec![0u8; span];
            self.file.read_exact_at(&mut buf[..stored], at)?;
            Bytes::from(buf)
        };
        for (i, block) in buf[..stored].chunks_exact(BLOCK).enumerate() {
            let b = first + i as u32;
            if crc32fast::hash(block) != self.crcs[b as usize] {
                return Err(ChunkError::Crc { block: b });
            }
        }
        let skip = (offset - first as u64 * BLOCK_SIZE) as usize;
        Ok(buf.slice(skip..skip + len as usize))
    }

    /// Grows the file with zero blocks so that block `b` exists.
    fn extend_to(&mut self, b: u32) -> Result<()> {
        if b < self.blocks {
            return Ok(());
        }
        let first = self.blocks;
        self.crcs[first as usize..=b as usize].fill(zero_block_crc());
        // The table on disk may not hold the zero CRC for absent blocks (MFSC 1.0 files).
        self.write_crcs(first, b)?;
        self.blocks = b + 1;
        self.file.set_len(DATA_OFFSET + self.blocks as u64 * BLOCK_SIZE)?;
        Ok(())
    }

    /// Writes `data` at `offset`, updating the CRCs (written to the table before returning).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        Self::check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let (first, last) = ((offset / BLOCK_SIZE) as u32, ((end - 1) / BLOCK_SIZE) as u32);
        let mut b = first;
        while b <= last {
            let n = (last - b + 1).min(RUN_BLOCKS);
            RUN.with(|run| self.write_run(&mut run.borrow_mut(), b, n, offset, data))?;
            b += n;
        }
        self.write_crcs(first, last)
    }

    /// Writes blocks `first..first + n` with the part of `data` (which starts at chunk offset
    /// `offset`) that falls in them, in one system call: whole blocks are taken as they are,
    /// a partially covered one is read (and checked) and patched.
    fn write_run(&mut self, run: &mut AlignedBuf, first: u32, n: u32, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        let buf = run.get_mut(n as usize * BLOCK);
        let mut crcs = [0u32; RUN_BLOCKS as usize];
        let mut patched = false;
        for i in 0..n {
            let b = first + i;
            let start = b as u64 * BLOCK_SIZE;
            let (lo, hi) = (offset.max(start), end.min(start + BLOCK_SIZE));
            let src = &data[(lo - offset) as usize..(hi - offset) as usize];
            let dst = &mut buf[i as usize * BLOCK..(i as usize + 1) * BLOCK];
            if src.len() == BLOCK {
                dst.copy_from_slice(src);
            } else {
                dst.copy_from_slice(&self.read_block(b)?);
                dst[(lo - start) as usize..(hi - start) as usize].copy_from_slice(src);
                patched = true;
            }
            crcs[i as usize] = crc32fast::hash(dst);
        }
        self.extend_to(first + n - 1)?;
        // A run with a patched block goes through the page cache, where the next small write
        // to the same block finds it (small random writes would otherwise read it from the
        // disk every time). Only its bytes that `data` covers are written: the rest of its
        // blocks is on the disk already (or a hole past the old end, which reads as zeros),
        // so a 4 KiB write stays a 4 KiB write instead of a 64 KiB one.
        let aligned = run.is_aligned() && !patched;
        let run_start = first as u64 * BLOCK_SIZE;
        let (lo, hi) = (offset.max(run_start), end.min(run_start + n as u64 * BLOCK_SIZE));
        let buf = &run.get_mut(n as usize * BLOCK)[(lo - run_start) as usize..(hi - run_start) as usize];
        let at = DATA_OFFSET + lo;
        match self.direct_file(aligned).map(|f| f.write_all_at(buf, at)) {
            None => self.file.write_all_at(buf, at)?,
            Some(r) => self.or_buffered(r, || self.file.write_all_at(buf, at))?,
        }
        self.crcs[first as usize..(first + n) as usize].copy_from_slice(&crcs[..n as usize]);
        Ok(())
    }

    /// Fills `out` from file offset `at`, directly from the disk where the file system allows
    /// it (`aligned` says whether `out` is aligned for that), otherwise through the page cache.
    fn read_large(&self, out: &mut [u8], at: u64, aligned: bool) -> Result<()> {
        if let Some(file) = self.direct_file(aligned) {
            if self.or_buffered(file.read_exact_at(out, at).map(|_| true), || Ok(false))? {
                return Ok(());
            }
        }
        self.file.read_exact_at(out, at)?;
        Ok(())
    }

    /// The `O_DIRECT` descriptor, opened at the first use, if direct I/O is possible with a
    /// buffer that `aligned` says is aligned.
    fn direct_file(&self, aligned: bool) -> Option<&File> {
        use std::os::unix::fs::OpenOptionsExt;
        if !aligned || self.direct_refused.load(Ordering::Relaxed) {
            return None;
        }
        let open = || {
            let flags = nix::fcntl::OFlag::O_DIRECT.bits();
            match OpenOptions::new().read(true).write(true).custom_flags(flags).open(&self.path) {
                Ok(file) => Some(file),
                Err(e) => {
                    tracing::debug!(file = %self.path.display(), error = %e, "no direct I/O, using the page cache");
                    None
                }
            }
        };
        self.direct.get_or_init(open).as_ref()
    }

    /// The outcome of a direct read or write; if the file system refused it (some take the
    /// open flag and refuse the I/O), `buffered` does it through the page cache instead, as
    /// will every later one.
    fn or_buffered<T>(&self, r: io::Result<T>, buffered: impl FnOnce() -> io::Result<T>) -> Result<T> {
        match r {
            Ok(v) => Ok(v),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32) => {
                tracing::debug!(file = %self.path.display(), "direct I/O refused, using the page cache");
                self.direct_refused.store(true, Ordering::Relaxed);
                Ok(buffered()?)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn write_crcs(&self, first: u32, last: u32) -> Result<()> {
        let bytes = encode_crcs(&self.crcs[first as usize..=last as usize]);
        self.file.write_all_at(&bytes, HEADER_SIZE + first as u64 * 4)?;
        Ok(())
    }

    /// Cuts the data to `len` bytes: later reads of the rest give zeros.
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        Self::check_range(0, len)?;
        let keep = len.div_ceil(BLOCK_SIZE) as u32;
        if keep < self.blocks {
            for i in keep..self.blocks {
                self.crcs[i as usize] = zero_block_crc();
            }
            self.blocks = keep;
            self.file.set_len(DATA_OFFSET + keep as u64 * BLOCK_SIZE)?;
            self.write_crcs(0, BLOCKS_PER_CHUNK - 1)?;
        }
        let partial = len % BLOCK_SIZE;
        if partial != 0 && keep > 0 && keep <= self.blocks {
            // Zero the rest of the last block kept.
            self.write(len, &vec![0u8; (BLOCK_SIZE - partial) as usize])?;
        }
        Ok(())
    }

    /// Makes the file durable, and its name in the folder if it was created by this process
    /// and never synced.
    /// Whether the file's name is durable in its folder (see [`ChunkFile::sync`]).
    pub fn name_synced(&self) -> bool {
        self.name_synced.load(Ordering::Acquire)
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync_all()?;
        if !self.name_synced.load(Ordering::Acquire) {
            sync_parent(&self.path)?;
            self.name_synced.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Moves the chunk to a new version: rewrites the header, syncs, renames to `new_path`.
    pub fn set_version(&mut self, version: ChunkVersion, new_path: &Path) -> Result<()> {
        self.file.write_all_at(&header(self.id, version), 0)?;
        self.file.sync_all()?;
        if new_path != self.path {
            std::fs::rename(&self.path, new_path)?;
            sync_parent(new_path)?;
            self.name_synced.store(true, Ordering::Release);
        }
        self.version = version;
        self.path = new_path.to_path_buf();
        Ok(())
    }

    /// Copies the data (checking every CRC) into a new chunk file `id`/`version` at `path`.
    pub fn copy_to(&self, path: &Path, id: ChunkId, version: ChunkVersion) -> Result<ChunkFile> {
        let mut out = ChunkFile::create(path, id, version)?;
        let res = (|| {
            for b in 0..self.blocks {
                let block = self.read_block(b)?;
                out.write(b as u64 * BLOCK_SIZE, &block)?;
            }
            out.sync()
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(out)
    }

    /// Checks the CRC of every block; the scrubber calls [`ChunkFile::read_block`] itself to
    /// pace its reads.
    pub fn verify(&self) -> Result<()> {
        for b in 0..self.blocks {
            self.read_block(b)?;
        }
        Ok(())
    }

    pub fn blocks(&self) -> u32 {
        self.blocks
    }

    /// Whether data goes to and from the disk with `O_DIRECT` (known after the first write).
    pub fn writes_directly(&self) -> bool {
        !self.direct_refused.load(Ordering::Relaxed) && self.direct.get().is_some_and(|f| f.is_some())
    }
}

/// Makes a create or rename in `path`'s folder durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(d) => File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use alces_testkit::pseudo_random_bytes as pattern;

    fn new_chunk(dir: &Path) -> ChunkFile {
        let id = ChunkId(0x1234_5678_9ABC_DEF0);
        let p = dir.join(relative_path(default_subfolder(id), id, ChunkVersion(1)).file_name().unwrap());
        ChunkFile::create(&p, id, ChunkVersion(1)).unwrap()
    }

    #[test]
    fn names() {
        let id = ChunkId(0xABCD_EF01_2345_6789);
        assert_eq!(
            relative_path(default_subfolder(id), id, ChunkVersion(0x1A)),
            PathBuf::from("89/chunk_ABCDEF0123456789_0000001A.mfs")
        );
        assert_eq!(parse_name("chunk_ABCDEF0123456789_0000001A.mfs"), Some((id, ChunkVersion(0x1A))));
        assert_eq!(parse_name("chunk_ABCDEF0123456789_1A.mfs"), None);
        assert_eq!(parse_name("chunk_XYZ_0000001A.mfs"), None);
    }

    #[test]
    fn layout_is_what_moosefs_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = new_chunk(dir.path());
        c.write(10, b"hello").unwrap();
        c.sync().unwrap();
        let bytes = std::fs::read(c.path()).unwrap();
        assert_eq!(bytes.len() as u64, DATA_OFFSET + BLOCK_SIZE, "whole blocks");
        assert_eq!(&bytes[..8], b"MFSC 1.1");
        assert_eq!(&bytes[8..16], &0x1234_5678_9ABC_DEF0u64.to_be_bytes());
        assert_eq!(&bytes[16..20], &1u32.to_be_bytes());
        assert!(bytes[20..4096].iter().all(|&b| b == 0));
        let mut block = vec![0u8; BLOCK];
        block[10..15].copy_from_slice(b"hello");
        assert_eq!(&bytes[4096..4100], &crc32fast::hash(&block).to_be_bytes());
        assert_eq!(&bytes[4100..4104], &zero_block_crc().to_be_bytes());
        assert_eq!(&bytes[8192 + 10..8192 + 15], b"hello");
    }

    /// The same writes, reads and overwrites whether blocks go to the disk directly or through
    /// the page cache (a file system that refuses `O_DIRECT`).
    fn direct_and_buffered_writes_read_back(buffered: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = new_chunk(dir.path());
        if buffered {
            c.direct_refused.store(true, Ordering::Relaxed);
        }
        let data = pattern(3, 200_000);
        c.write(1000, &data).unwrap();
        assert!(!c.writes_directly(), "blocks patched in part go through the page cache");
        // A read through the page cache after direct writes, then a partial overwrite.
        assert_eq!(c.read(1000, 200_000).unwrap(), data);
        c.write(70_000, b"overwritten").unwrap();
        let mut want = data.clone();
        want[69_000..69_011].copy_from_slice(b"overwritten");
        assert_eq!(c.read(1000, 200_000).unwrap(), want);
        c.truncate(100_000).unwrap();
        assert_eq!(c.read(1000, 99_000).unwrap(), want[..99_000]);
        assert_eq!(c.read(100_000, 31_072).unwrap(), vec![0u8; 31_072]);
        // Large reads (a sequential reader's windows) take the direct path where there is one.
        let big = pattern(4, 3 << 20);
        c.write((5 << 20) + 123, &big).unwrap();
        // Linux file systems with block devices (and tmpfs since 6.6) take direct writes.
        assert_eq!(c.writes_directly(), !buffered, "runs of whole blocks go to the disk directly");
        assert_eq!(c.read((5 << 20) + 1000, 2_900_000).unwrap(), big[877..877 + 2_900_000]);
        c.sync().unwrap();
        let path = c.path().to_path_buf();
        drop(c);
        let c = ChunkFile::open(&path).unwrap();
        c.verify().unwrap();
        assert_eq!(c.read(1000, 99_000).unwrap(), want[..99_000]);
        // A bit flipped on the disk is caught by a large read as well.
        let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let at = DATA_OFFSET + (6 << 20) + 7;
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
        f.sync_all().unwrap();
        let c = ChunkFile::open(&path).unwrap();
        if buffered {
            c.direct_refused.store(true, Ordering::Relaxed);
        }
        assert!(matches!(c.read(5 << 20, 2 << 20), Err(ChunkError::Crc { block: 96 })));
    }

    #[test]
    fn a_large_read_past_the_data_reads_zeros_in_a_reused_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = new_chunk(dir.path());
        let data = pattern(5, 2 << 20);
        c.write(0, &data).unwrap();
        // Large reads leave their bytes in pooled buffers, given back as they are dropped.
        for _ in 0..READ_POOL_MAX + 1 {
            assert_eq!(c.read(0, 1 << 20).unwrap(), data[..1 << 20]);
        }
        let held: Vec<Bytes> = (0..4).map(|_| c.read(1 << 20, 1 << 20).unwrap()).collect();
        c.truncate(3 * BLOCK as u64).unwrap();
        // A reused buffer still holds old bytes where this read finds no blocks.
        let got = c.read(1000, 1 << 20).unwrap();
        assert_eq!(got.len(), 1 << 20);
        assert_eq!(got[..3 * BLOCK - 1000], data[1000..3 * BLOCK]);
        assert!(got[3 * BLOCK - 1000..].iter().all(|&b| b == 0), "past the data: zeros");
        // Bytes still held are not overwritten by later reads.
        for h in held {
            assert_eq!(h, data[1 << 20..]);
        }
    }

    #[test]
    fn a_new_file_and_its_name_are_synced_by_its_first_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = new_chunk(dir.path());
        assert!(!c.name_synced.load(Ordering::Relaxed), "created: nothing synced yet");
        c.write(0, &pattern(1, 5000)).unwrap();
        c.sync().unwrap();
        assert!(c.name_synced.load(Ordering::Relaxed));
        let again = ChunkFile::open(&c.path).unwrap();
        assert!(again.name_synced.load(Ordering::Relaxed), "a file found on disk was synced before");
        assert_eq!(again.read(0, 5000).unwrap(), pattern(1, 5000));
    }

    #[test]
    fn blocks_are_written_directly_to_the_disk() {
        direct_and_buffered_writes_read_back(false);
    }

    #[test]
    fn blocks_go_through_the_page_cache_where_direct_writes_are_refused() {
        direct_and_buffered_writes_read_back(true);
    }

    #[test]
    fn write_and_read_across_blocks_and_to_the_chunk_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = new_chunk(dir.path());
        let data = pattern(1, 300_000);
        c.write(65_000, &data).unwrap();
        assert_eq!(c.read(65_000, 300_000).unwrap(), data);
        assert_eq!(c.read(0, 65_000).unwrap(), vec![0u8; 65_000], "hole before the data");
        let tail = pattern(2, 1000);
        c.write(CHUNK_SIZE - 1000, &tail).unwrap();
        assert_eq!(c.read(CHUNK_SIZE - 1000, 1000).unwrap(), tail);
        assert_eq!(c.len(), CHUNK_SIZE);
        assert!(c.write(CHUNK_SIZE - 1, b"xx").is_err(), "past the chunk end");
        assert_eq!(c.read(5 << 20, 10).unwrap(), vec![0u8; 10], "hole in the middle");
        // Reopening sees the same.
        let path = c.path().to_path_buf();
        drop(c);
        let c = ChunkFile::open(&path).unwrap();
        assert_eq!(c.read(65_000, 300_000).unwrap(), data);
        c.verify().unwrap();
    }

    /// A write into part of a block writes only its own bytes: the rest of the block is a
    /// hole reading as zeros (new blocks) or what the disk held (patched ones).
    #[test]
    fn a_small_write_writes_only_its_bytes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut c = new_chunk(dir.path());
        c.write(0, &pattern(6, 4096)).unwrap();
        c.write(3 * BLOCK_SIZE + 8192, &pattern(7, 4096)).unwrap();
        c.sync().unwrap();
        let path = c.path().to_path_buf();
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), DATA_OFFSET + 4 * BLOCK_SIZE);
        assert!(allocated < DATA_OFFSET + BLOCK_SIZE, "{allocated} bytes on the disk for two 4 KiB writes");
        // Patch the first block in the middle: its first 4 KiB stay as written.
        c.write(10_000, b"patched").unwrap();
        drop(c);
        let c = ChunkFile::open(&path).unwrap();
        c.verify().unwrap();
        let mut want = vec![0u8; 4 * BLOCK];
        want[..4096].copy_from_slice(&pattern(6, 4096));
        want[10_000..10_007].copy_from_slice(b"patched");
        want[3 * BLOCK + 8192..3 * BLOCK + 12_288].copy_from_slice(&pattern(7, 4096));
        assert_eq!(c.read(0, 4 * BLOCK as u32).unwrap(), want);
    }

    #[test]
    fn a_flipped_bit_is_caught_by_read_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = new_chunk(dir.path());
        c.write(0, &pattern(3, 200_000)).unwrap();
        let path = c.path().to_path_buf();
        drop(c);
        let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let at = DATA_OFFSET + BLOCK_SIZE + 777;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
        let c = ChunkFile::open(&path).unwrap();
        assert!(matches!(c.read(BLOCK_SIZE, 10), Err(ChunkError::Crc { block: 1 })));
        assert!(c.read(0, 100).is_ok(), "other blocks are fine");
        assert!(matches!(c.verify(), Err(ChunkError::Crc { block: 1 })));
        assert!(matches!(c.read(BLOCK_SIZE - 5, 10), Err(ChunkError::Crc { block: 1 })), "a read touching it");
    }

    #[test]
    fn truncate_then_extend_reads_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = new_chunk(dir.path());
        let data = pattern(4, 200_000);
        c.write(0, &data).unwrap();
        c.truncate(70_000).unwrap();
        assert_eq!(c.len(), 2 * BLOCK_SIZE);
        assert_eq!(c.read(0, 70_000).unwrap(), &data[..70_000]);
        assert_eq!(c.read(70_000, 130_000).unwrap(), vec![0u8; 130_000]);
        c.write(150_000, b"x").unwrap();
        assert_eq!(c.read(70_000, 1000).unwrap(), vec![0u8; 1000]);
        c.verify().unwrap();
        c.truncate(0).unwrap();
        assert!(c.is_empty());
        assert_eq!(c.read(0, 10).unwrap(), vec![0u8; 10]);
    }

    #[test]
    fn set_version_renames_and_copy_to_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = new_chunk(dir.path());
        c.write(100, b"data").unwrap();
        let new = dir.path().join(relative_path(0, c.id(), ChunkVersion(2)).file_name().unwrap());
        let old = c.path().to_path_buf();
        c.set_version(ChunkVersion(2), &new).unwrap();
        assert!(!old.exists() && new.exists());
        let reopened = ChunkFile::open(&new).unwrap();
        assert_eq!(reopened.version(), ChunkVersion(2));
        let copy_path = dir.path().join("chunk_0000000000000099_00000001.mfs");
        let copy = reopened.copy_to(&copy_path, ChunkId(0x99), ChunkVersion(1)).unwrap();
        assert_eq!(copy.read(100, 4).unwrap(), &b"data"[..]);
        assert_eq!(ChunkFile::open(&copy_path).unwrap().id(), ChunkId(0x99));
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("chunk_0000000000000001_00000001.mfs");
        for content in [vec![], b"MFSC 1.1".to_vec(), vec![0u8; 9000], pattern(5, 8192)] {
            std::fs::write(&p, &content).unwrap();
            assert!(matches!(ChunkFile::open(&p), Err(ChunkError::Damaged(_))), "{} bytes", content.len());
        }
        // A header that disagrees with the name.
        let mut h = header(ChunkId(2), ChunkVersion(1));
        h.extend(vec![0u8; 4096]);
        std::fs::write(&p, &h).unwrap();
        assert!(matches!(ChunkFile::open(&p), Err(ChunkError::Damaged(_))));
    }
}
