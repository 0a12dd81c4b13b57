//! Key layout of the namespace column families. Integers are big-endian so that RocksDB's
//! byte order is numeric order (a directory's entries, a file's chunks, the trash by expiry).

use alces_proto::types::{ChunkId, Inode, SessionId};

pub const CF_INODES: &str = "inodes";
pub const CF_DENTRIES: &str = "dentries";
pub const CF_CHUNKS: &str = "chunks";
pub const CF_XATTRS: &str = "xattrs";
pub const CF_TRASH: &str = "trash";
pub const CF_SESSIONS: &str = "sessions";

pub const COLUMN_FAMILIES: &[&str] = &[CF_INODES, CF_DENTRIES, CF_CHUNKS, CF_XATTRS, CF_TRASH, CF_SESSIONS];

/// Counters live in the inodes family under keys that are not 8 bytes long.
pub const NEXT_INODE: &[u8] = b"#next_inode";
pub const NEXT_CHUNK: &[u8] = b"#next_chunk";
pub const NEXT_SESSION: &[u8] = b"#next_session";
pub const COUNT_INODES: &[u8] = b"#inodes";
pub const COUNT_CHUNKS: &[u8] = b"#chunks";

pub fn inode(ino: Inode) -> [u8; 8] {
    ino.0.to_be_bytes()
}

pub fn decode_inode(key: &[u8]) -> Option<Inode> {
    Some(Inode(u64::from_be_bytes(key.try_into().ok()?)))
}

/// `parent ++ name`.
pub fn dentry(parent: Inode, name: &[u8]) -> Vec<u8> {
    [&parent.0.to_be_bytes()[..], name].concat()
}

pub fn dentry_prefix(parent: Inode) -> [u8; 8] {
    parent.0.to_be_bytes()
}

/// `c ++ chunk id`: the chunk record.
pub fn chunk(id: ChunkId) -> [u8; 9] {
    let mut k = [b'c'; 9];
    k[1..].copy_from_slice(&id.0.to_be_bytes());
    k
}

/// `f ++ inode ++ index`: which chunk holds a file's `index`-th 64 MiB.
pub fn file_chunk(ino: Inode, index: u32) -> [u8; 13] {
    let mut k = [b'f'; 13];
    k[1..9].copy_from_slice(&ino.0.to_be_bytes());
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

pub fn file_chunk_prefix(ino: Inode) -> [u8; 9] {
    let mut k = [b'f'; 9];
    k[1..].copy_from_slice(&ino.0.to_be_bytes());
    k
}

pub fn decode_file_chunk_index(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(key.get(9..13)?.try_into().ok()?))
}

/// `inode ++ name`.
pub fn xattr(ino: Inode, name: &[u8]) -> Vec<u8> {
    [&ino.0.to_be_bytes()[..], name].concat()
}

/// `t ++ inode`: a trashed file.
pub fn trash(ino: Inode) -> [u8; 9] {
    tagged(b't', ino.0)
}

/// `x ++ expiry secs ++ inode`: the trash ordered by expiry.
pub fn trash_expiry(expires: i64, ino: Inode) -> [u8; 17] {
    let mut k = [b'x'; 17];
    k[1..9].copy_from_slice(&(expires.max(0) as u64).to_be_bytes());
    k[9..].copy_from_slice(&ino.0.to_be_bytes());
    k
}

/// `r ++ inode`: a file deleted while still open.
pub fn reserved(ino: Inode) -> [u8; 9] {
    tagged(b'r', ino.0)
}

/// `s ++ session`: a session record.
pub fn session(id: SessionId) -> [u8; 9] {
    tagged(b's', id.0)
}

/// `o ++ session ++ inode`: an open file, by session.
pub fn open_by_session(s: SessionId, ino: Inode) -> [u8; 17] {
    pair(b'o', s.0, ino.0)
}

/// `O ++ inode ++ session`: an open file, by inode.
pub fn open_by_inode(ino: Inode, s: SessionId) -> [u8; 17] {
    pair(b'O', ino.0, s.0)
}

/// `q ++ session`: the recorded replies of a session's recent requests.
pub fn session_replies(s: SessionId) -> [u8; 9] {
    tagged(b'q', s.0)
}

pub fn tagged(tag: u8, n: u64) -> [u8; 9] {
    let mut k = [tag; 9];
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

fn pair(tag: u8, a: u64, b: u64) -> [u8; 17] {
    let mut k = [tag; 17];
    k[1..9].copy_from_slice(&a.to_be_bytes());
    k[9..].copy_from_slice(&b.to_be_bytes());
    k
}

/// The second number of a `pair` key.
pub fn pair_second(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(9..17)?.try_into().ok()?))
}
