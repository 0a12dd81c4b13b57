//! Types shared by several links: identifiers, file attributes, names, chunk locations.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::status::Status;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_type!(
    /// A Raft member (master) id.
    NodeId(u64)
);
id_type!(
    /// A file system object. Inode numbers are never reused.
    Inode(u64)
);
id_type!(
    /// A 64 MiB piece of a file's data, stored as one file per replica.
    ChunkId(u64)
);
id_type!(
    /// A chunk's version: bumped whenever a writer gets a lease; a replica with an older
    /// version is stale.
    ChunkVersion(u32)
);
id_type!(
    /// A client mount's session, recorded through Raft so it survives failover.
    SessionId(u64)
);
id_type!(
    /// A chunkserver, identified by a number it keeps in its data folder.
    ChunkserverId(u64)
);

impl Inode {
    pub const ROOT: Inode = Inode(1);
}

impl ChunkId {
    /// Formats as MooseFS names chunk files: 16 upper-case hex digits.
    pub fn hex(self) -> String {
        format!("{:016X}", self.0)
    }
}

/// Bytes of data in one chunk.
pub const CHUNK_SIZE: u64 = 64 << 20;
/// Bytes covered by one CRC in a chunk file, and the unit of chained writes.
pub const BLOCK_SIZE: u64 = 64 << 10;
/// Blocks in one chunk.
pub const BLOCKS_PER_CHUNK: u32 = (CHUNK_SIZE / BLOCK_SIZE) as u32;

/// How many copies of each chunk the cluster keeps (1..=9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Goal(pub u8);

impl Goal {
    pub const MIN: u8 = 1;
    pub const MAX: u8 = 9;

    pub fn new(n: u8) -> Result<Goal, Status> {
        if (Goal::MIN..=Goal::MAX).contains(&n) {
            Ok(Goal(n))
        } else {
            Err(Status::Invalid)
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Seconds an unlinked file stays in the trash (0: deleted at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TrashTime(pub u32);

impl TrashTime {
    pub const DEFAULT: TrashTime = TrashTime(86_400);
}

/// The kind of a file system object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    BlockDev,
    CharDev,
}

impl FileKind {
    /// The `S_IFMT` bits of `st_mode`.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::BlockDev => libc::S_IFBLK,
            FileKind::CharDev => libc::S_IFCHR,
        }
    }

    /// The kind named by the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFBLK => FileKind::BlockDev,
            libc::S_IFCHR => FileKind::CharDev,
            _ => return None,
        })
    }
}

/// A point in time: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }
    }

    pub fn from_secs(secs: i64) -> Timestamp {
        Timestamp { secs, nanos: 0 }
    }
}

/// The attributes of an object, as `stat` shows them, plus the MooseFS settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub inode: Inode,
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
    pub goal: Goal,
    pub trash_time: TrashTime,
}

/// One path component: any bytes but `/` and NUL, 1 to 255 of them, not `.` or `..`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Name(#[serde(with = "serde_bytes")] Vec<u8>);

pub const NAME_MAX: usize = 255;

impl Name {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Name, Status> {
        let bytes = bytes.into();
        if bytes.len() > NAME_MAX {
            return Err(Status::NameTooLong);
        }
        if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.iter().any(|&b| b == b'/' || b == 0) {
            return Err(Status::Invalid);
        }
        Ok(Name(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Checks a name decoded from the wire (the constructor's rules again).
    pub fn validate(&self) -> Result<(), Status> {
        Name::new(self.0.clone()).map(|_| ())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// Who performs an operation, after the export's uid/gid mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Creds {
    pub fn root() -> Creds {
        Creds { uid: 0, gid: 0, groups: Vec::new() }
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// A time to set: the server's current time, or a given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// The attributes a `setattr` changes (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

/// A chunkserver holding a replica, as clients reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLocation {
    pub id: ChunkserverId,
    /// Data address (port 9422).
    pub addr: String,
}
