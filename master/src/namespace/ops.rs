//! The operations of the namespace log and their replies.
//!
//! A [`MetaOp`] is one deterministic mutation: the leader fills in everything that would
//! otherwise differ between nodes (the time, the caller's mapped credentials) before proposing
//! it. New inode, chunk and session ids come from counters in the state itself, so every
//! node allocates the same ones.

use alces_proto::types::{
    Attr, ChunkId, ChunkVersion, Creds, FileKind, Goal, Inode, Name, SessionId, SetAttr, Timestamp, TrashTime,
};
use alces_proto::Status;
use serde::{Deserialize, Serialize};

use super::records::SessionInfo;

/// `renameat2` flags understood by [`OpBody::Rename`].
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// `setxattr` flags.
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaOp {
    /// The leader's clock when it proposed the operation.
    pub now: Timestamp,
    /// The client request this operation carries out, for exactly-once retries.
    pub origin: Option<Origin>,
    pub body: OpBody,
}

/// Which session request an operation comes from. The reply is recorded under
/// `(session, request)`; the same request applied again returns the recorded reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub session: SessionId,
    pub request: u64,
    /// Replies of this session's requests below this id may be dropped.
    pub low_water: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OpBody {
    /// Creates the root directory of an empty file system.
    Format {
        goal: Goal,
        trash_time: TrashTime,
    },
    /// mknod, mkdir, symlink, create (with `open` the new file is also opened by the session).
    Create {
        parent: Inode,
        name: Name,
        kind: FileKind,
        mode: u16,
        umask: u16,
        rdev: u32,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        creds: Creds,
        open: Option<SessionId>,
    },
    Link {
        inode: Inode,
        parent: Inode,
        name: Name,
        creds: Creds,
    },
    /// unlink (`dir` false) or rmdir (`dir` true).
    Remove {
        parent: Inode,
        name: Name,
        dir: bool,
        creds: Creds,
    },
    Rename {
        parent: Inode,
        name: Name,
        new_parent: Inode,
        new_name: Name,
        flags: u32,
        creds: Creds,
    },
    /// `handle`: the caller holds the file open for writing (ftruncate), so a size change needs
    /// no write permission now.
    SetAttr {
        inode: Inode,
        set: SetAttr,
        creds: Creds,
        handle: bool,
    },
    SetXattr {
        inode: Inode,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: u32,
        creds: Creds,
    },
    RemoveXattr {
        inode: Inode,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        creds: Creds,
    },
    SetGoal {
        inode: Inode,
        goal: Goal,
        recursive: bool,
        creds: Creds,
    },
    SetTrashTime {
        inode: Inode,
        trash_time: TrashTime,
        recursive: bool,
        creds: Creds,
    },
    /// Copies `src` (a file or a whole tree) to `parent/name`, sharing chunks.
    Snapshot {
        src: Inode,
        parent: Inode,
        name: Name,
        creds: Creds,
    },
    /// Restores a trashed file to its old path.
    Undelete {
        inode: Inode,
    },
    /// Drops a trashed file now.
    Purge {
        inode: Inode,
    },
    /// Drops trashed files whose time is up (at most `limit`).
    ExpireTrash {
        limit: u32,
    },
    OpenSession {
        info: SessionInfo,
    },
    CloseSession {
        session: SessionId,
    },
    Open {
        session: SessionId,
        inode: Inode,
    },
    Release {
        session: SessionId,
        inode: Inode,
    },
    /// Gives slot `index` of a file a new chunk (version 0: no replica yet), replacing
    /// `replace` if it is still there (copy-on-write of a shared chunk).
    AllocChunk {
        inode: Inode,
        index: u32,
        replace: Option<ChunkId>,
    },
    /// Records a chunk's new version after its replicas moved to it.
    SetChunkVersion {
        chunk: ChunkId,
        version: ChunkVersion,
    },
    /// A writer finished: the file is at least `size` long and was modified now.
    WriteEnd {
        inode: Inode,
        size: u64,
    },
    /// Takes a chunk with no usable copy out of a file (its range reads as zeros).
    DropChunk {
        inode: Inode,
        index: u32,
        chunk: ChunkId,
    },
    /// Appends the chunks of `src` to `dst`, sharing them (`alces appendchunks`).
    AppendChunks {
        dst: Inode,
        src: Inode,
        creds: Creds,
    },
    /// [`OpBody::Release`] of each inode in turn (a mount's closes, sent in batches).
    ReleaseMany {
        session: SessionId,
        inodes: Vec<Inode>,
    },
    /// Sets `count` chunk ids aside for the leader, which gives them to new chunks before
    /// their records exist ([`OpBody::AddChunk`]); replies [`MetaReply::ChunkIds`].
    ReserveChunkIds {
        count: u32,
    },
    /// Puts a new chunk whose replicas already hold `version` into the empty slot `index`
    /// of a file; `Exists` if the slot is no longer empty.
    AddChunk {
        inode: Inode,
        index: u32,
        chunk: ChunkId,
        version: ChunkVersion,
    },
    /// The first write end of a new chunk: [`OpBody::AddChunk`] (nothing to add if the slot
    /// holds that chunk already: a retried end) and [`OpBody::WriteEnd`] in one commit.
    AddChunkEnd {
        inode: Inode,
        index: u32,
        chunk: ChunkId,
        version: ChunkVersion,
        size: u64,
    },
    /// Frees files that are reserved and that no session holds open any more. Files whose
    /// last name goes, that leave the trash, or whose last recorded handle closes become
    /// reserved; only this op frees them, proposed by the leader once it knows that no
    /// handle it keeps in memory (see `handles.rs`) is open on them either.
    Free {
        inodes: Vec<Inode>,
    },
}

/// The outcome of a [`MetaOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaReply {
    Done,
    Attr(Attr),
    /// setgoal / settrashtime: objects changed, already right, not permitted.
    Counts {
        changed: u64,
        unchanged: u64,
        denied: u64,
    },
    Session(SessionId),
    /// The chunk now in the slot, and the one it replaced (to copy from) if any.
    Chunk {
        chunk: ChunkId,
        version: ChunkVersion,
        copy_from: Option<(ChunkId, ChunkVersion)>,
    },
    Freed(u64),
    Err(Status),
    /// Chunk ids `first..first + count`, set aside.
    ChunkIds {
        first: ChunkId,
        count: u32,
    },
}
