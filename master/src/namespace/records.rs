//! What the namespace stores: one record type per kind of key.

use alces_proto::types::{Attr, ChunkVersion, FileKind, Goal, Inode, Name, Timestamp, TrashTime};
use serde::{Deserialize, Serialize};

/// Whether an inode is reachable, in the trash, or kept only because it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeState {
    Live,
    Trash,
    Reserved,
}

/// One file system object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRec {
    pub kind: FileKind,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Files: length in bytes. Symlinks: target length. Directories: number of entries.
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
    pub goal: Goal,
    pub trash_time: TrashTime,
    /// The directory holding the (last created or renamed) name of this object, and that
    /// name: `..` of directories, paths in the trash and in tool output.
    pub parent: Inode,
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub symlink: Vec<u8>,
    pub state: InodeState,
}

impl InodeRec {
    pub fn attr(&self, inode: Inode) -> Attr {
        Attr {
            inode,
            kind: self.kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            size: self.size,
            nlink: self.nlink,
            rdev: self.rdev,
            goal: self.goal,
            trash_time: self.trash_time,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }

    pub fn name(&self) -> Option<Name> {
        Name::new(self.name.clone()).ok()
    }
}

/// A directory entry's value: the child and its kind (for `readdir` without attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DentryRec {
    pub inode: Inode,
    pub kind: FileKind,
}

/// A chunk: its committed version, how many file slots refer to it (snapshots share chunks),
/// and the copies it should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRec {
    /// 0 until the first replica was created.
    pub version: ChunkVersion,
    pub refs: u32,
    pub goal: Goal,
}

/// A trashed or reserved file: where it was, and when the trash may drop it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrashRec {
    /// Path from the root at deletion, without the leading `/`.
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    pub deleted_at: Timestamp,
    pub expires: i64,
}

/// A client session and what its export allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRec {
    pub info: SessionInfo,
    pub created: Timestamp,
}

/// The export rules resolved when a session registered; every later request of the session
/// is checked against these, on whichever master leads then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The client's address at registration.
    pub peer: String,
    /// What the client calls itself (host and mount point).
    pub client_name: String,
    /// The inode the mount sees as its root (the export's path, or a subdirectory).
    pub root: Inode,
    /// The path that was mounted, for display.
    pub path: String,
    pub meta: bool,
    pub read_only: bool,
    /// uid:gid that root is mapped to (`maproot`), unless `None`.
    pub map_root: Option<(u32, u32)>,
    /// uid:gid that everybody is mapped to (`mapall`).
    pub map_all: Option<(u32, u32)>,
    pub min_goal: u8,
    pub max_goal: u8,
    pub min_trash: u32,
    pub max_trash: u32,
}

/// Replies of a session's recent requests, by request id, so that a request retried after a
/// lost reply gets the same answer instead of being applied twice. One record per session:
/// entries below the client's low-water mark are dropped as new ones arrive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReplies {
    pub entries: Vec<(u64, super::ops::MetaReply)>,
}
