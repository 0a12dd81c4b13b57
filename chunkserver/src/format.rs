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

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
        Ok(ChunkFile { file, path: path.to_path_buf(), id, version, blocks: 0, crcs })
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
        Ok(ChunkFile { file, path: path.to_path_buf(), id, version, blocks, crcs })
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
    /// are read with one positioned read and their CRCs checked in place.
    pub fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        Self::check_range(offset, len as u64)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let end = offset + len as u64;
        let (first, last) = ((offset / BLOCK_SIZE) as u32, ((end - 1) / BLOCK_SIZE) as u32);
        let mut buf = vec![0u8; (last - first + 1) as usize * BLOCK];
        let stored = self.blocks.min(last + 1).saturating_sub(first);
        if stored > 0 {
            let bytes = stored as usize * BLOCK;
            self.file.read_exact_at(&mut buf[..bytes], DATA_OFFSET + first as u64 * BLOCK_SIZE)?;
            for (i, block) in buf[..bytes].chunks_exact(BLOCK).enumerate() {
                let b = first + i as u32;
                if crc32fast::hash(block) != self.crcs[b as usize] {
                    return Err(ChunkError::Crc { block: b });
                }
            }
        }
        let skip = (offset - first as u64 * BLOCK_SIZE) as usize;
        if skip > 0 {
            buf.drain(..skip);
        }
        buf.truncate(len as usize);
        Ok(buf)
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
        let end = offset + data.len() as u64;
        let mut pos = offset;
        let mut first_dirty = u32::MAX;
        let mut last_dirty = 0;
        while pos < end {
            let b = (pos / BLOCK_SIZE) as u32;
            let in_block = (pos % BLOCK_SIZE) as usize;
            let take = ((end - pos) as usize).min(BLOCK - in_block);
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + take];
            let block = if take == BLOCK {
                src.to_vec()
            } else {
                let mut old = self.read_block(b)?;
                old[in_block..in_block + take].copy_from_slice(src);
                old
            };
            self.extend_to(b)?;
            self.file.write_all_at(&block, DATA_OFFSET + b as u64 * BLOCK_SIZE)?;
            self.crcs[b as usize] = crc32fast::hash(&block);
            first_dirty = first_dirty.min(b);
            last_dirty = b;
            pos += take as u64;
        }
        if first_dirty <= last_dirty {
            self.write_crcs(first_dirty, last_dirty)?;
        }
        Ok(())
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
        let partial = (len % BLOCK_SIZE) as usize;
        if partial != 0 && keep > 0 && keep <= self.blocks {
            let b = keep - 1;
            let mut block = self.read_block(b)?;
            block[partial..].fill(0);
            self.file.write_all_at(&block, DATA_OFFSET + b as u64 * BLOCK_SIZE)?;
            self.crcs[b as usize] = crc32fast::hash(&block);
            self.write_crcs(b, b)?;
        }
        Ok(())
    }

    pub fn sync(&self) -> Result<()> {
        Ok(self.file.sync_all()?)
    }

    /// Moves the chunk to a new version: rewrites the header, syncs, renames to `new_path`.
    pub fn set_version(&mut self, version: ChunkVersion, new_path: &Path) -> Result<()> {
        self.file.write_all_at(&header(self.id, version), 0)?;
        self.file.sync_all()?;
        if new_path != self.path {
            std::fs::rename(&self.path, new_path)?;
            sync_parent(new_path)?;
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
        assert_eq!(copy.read(100, 4).unwrap(), b"data");
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
