//! client -> master (port 9421): sessions, the namespace, chunk locations and write leases,
//! the tools and the meta (trash) file system.
//!
//! A connection carries many requests at once: each [`Request`] has an id chosen by the
//! client and the master answers with a [`Reply`] of the same id, in any order. A
//! connection starts with the handshake (no secret), then `Challenge` (when the export has a
//! password) and `Register`; every later request runs in that session, with the export's
//! rules (read-only, uid mapping, root directory) applied by the master.

use serde::{Deserialize, Serialize};

use crate::status::Status;
use crate::types::{
    Attr, ChunkId, ChunkLocation, ChunkVersion, ChunkserverId, Creds, FileKind, Goal, Inode, Name, SessionId, SetAttr,
    Timestamp, TrashTime,
};

/// One request of a client, tagged with an id the reply repeats.
///
/// Ids are unique within a session (across reconnects): a request retried after a lost reply
/// keeps its id, and the master answers a change it already made with the recorded reply
/// instead of making it twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    /// Every request of this session with a smaller id has been answered: the master may
    /// forget their recorded replies.
    pub low_water: u64,
    /// The calling process's identity (before the export's mapping).
    pub creds: Creds,
    pub body: ClientRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub body: Result<ClientReply, ClientError>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClientError {
    /// A file system error for the caller.
    #[error("{0}")]
    Status(Status),
    /// This master does not lead; retry at the leader.
    #[error("not the leader (leader {leader_id:?} at {leader_addr:?})")]
    NotLeader { leader_id: Option<u64>, leader_addr: Option<String> },
    /// The request needs a registered session on this connection.
    #[error("no session: register first")]
    NoSession,
    /// The session is unknown (expired or closed): register a new one.
    #[error("session {0} is unknown")]
    UnknownSession(SessionId),
    /// Registration refused: no export matches, or the password is wrong.
    #[error("access refused: {0}")]
    Refused(String),
    /// The cluster cannot serve now (no quorum, election, no chunkservers); retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        ClientError::Status(s)
    }
}

/// What to open a session for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Register {
    /// Reattach to this session after a reconnect or a leader change.
    pub session: Option<SessionId>,
    /// The exported path to mount (`/`, `/sub/dir`), ignored for the meta file system.
    pub path: String,
    /// Mount the meta file system (trash, reserved).
    pub meta: bool,
    /// `HMAC-SHA256(key = MD5(password), nonce from Challenge)`, when a password is known.
    pub password_proof: Option<[u8; 32]>,
    /// Host name and mount point, for the monitor.
    pub client_name: String,
    /// A tool (`alces fileinfo` ...) working inside a mount: the mount's session, read from
    /// the mount's `.masterinfo`. The tool gets a session of its own with the rules of the
    /// mount's (no password asked, as the mount already gave it).
    pub tool_of: Option<SessionId>,
    /// Reattaching: every handle the mount holds open on a regular file (its handle number
    /// and the inode), as it told the leader of each at [`ClientRequest::Open`]. The leader
    /// keeps these in memory only, so a new leader learns them here; it frees no deleted
    /// file before the sessions it knows have told it theirs (or a while has passed).
    pub handles: Vec<(u64, Inode)>,
}

/// The session a client got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub session: SessionId,
    /// The inode the mount shows as its root.
    pub root: Inode,
    pub read_only: bool,
    pub meta: bool,
}

/// Entries of one `ReadDir` answer, at most.
pub const READDIR_MAX: u32 = 4096;

/// The name of each request (`lookup`, `write_chunk`, ...) labels the master's operation
/// counters and latency histograms.
#[derive(Debug, Clone, Serialize, Deserialize, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ClientRequest {
    /// A fresh nonce for the password proof of the next `Register` on this connection.
    Challenge,
    Register(Register),
    /// Ends the session (unmount): files it had open are released.
    CloseSession,
    /// Who leads and where everybody is (what `.masterinfo` shows).
    MasterInfo,

    Lookup {
        parent: Inode,
        name: Name,
    },
    GetAttr {
        inode: Inode,
    },
    /// `handle`: the file is open for writing by the caller (ftruncate).
    SetAttr {
        inode: Inode,
        set: SetAttr,
        handle: bool,
    },
    Access {
        inode: Inode,
        mask: u16,
    },
    /// mknod, mkdir and create (`open`: the new file is opened by the session too).
    Create {
        parent: Inode,
        name: Name,
        kind: FileKind,
        mode: u16,
        umask: u16,
        rdev: u32,
        open: bool,
    },
    Symlink {
        parent: Inode,
        name: Name,
        target: Vec<u8>,
    },
    ReadLink {
        inode: Inode,
    },
    Link {
        inode: Inode,
        parent: Inode,
        name: Name,
    },
    Unlink {
        parent: Inode,
        name: Name,
    },
    Rmdir {
        parent: Inode,
        name: Name,
    },
    Rename {
        parent: Inode,
        name: Name,
        new_parent: Inode,
        new_name: Name,
        flags: u32,
    },
    OpenDir {
        inode: Inode,
    },
    /// Entries after `after` in name order, `min(limit, READDIR_MAX)` of them unless fewer
    /// are left (a shorter answer is the end of the folder); with `plus`, attributes too.
    ReadDir {
        inode: Inode,
        after: Option<Name>,
        limit: u32,
        plus: bool,
    },
    /// `flags` are the open(2) flags (access mode, O_TRUNC...). `handle` is the number the
    /// mount gives the new handle, unique within the session. An open of a regular file is
    /// held in the leader's memory under that number (a retried open is no second handle)
    /// and closed with [`ClientRequest::ReleaseHandles`]; an open of anything else is
    /// recorded through Raft and closed with [`ClientRequest::ReleaseMany`].
    Open {
        inode: Inode,
        flags: u32,
        handle: u64,
    },
    Release {
        inode: Inode,
    },
    GetXattr {
        inode: Inode,
        name: Vec<u8>,
    },
    ListXattr {
        inode: Inode,
    },
    SetXattr {
        inode: Inode,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    RemoveXattr {
        inode: Inode,
        name: Vec<u8>,
    },
    StatFs,

    /// Where slot `index` of a file is stored.
    ReadChunk {
        inode: Inode,
        index: u32,
    },
    /// A write lease for slot `index`: the chunk's new version and the replica chain.
    WriteChunk {
        inode: Inode,
        index: u32,
        /// The last write under this session's lease failed: do not reuse the lease's chain,
        /// move the replicas to a new version instead (a replica that missed part of the
        /// write must not keep the version of the ones that have it).
        after_failure: bool,
    },
    /// The writer is done with the lease; the file is at least `size` bytes long. `added`:
    /// the lease was for a new chunk (`new_chunk`), at this version, whose record goes into
    /// the slot now; `Stale` if that can no longer be done, and the writer writes again
    /// under a new lease.
    WriteEnd {
        inode: Inode,
        index: u32,
        chunk: ChunkId,
        size: u64,
        added: Option<ChunkVersion>,
    },
    /// A replica failed a CRC check or could not be reached.
    ReportBadReplica {
        chunk: ChunkId,
        version: ChunkVersion,
        server: ChunkserverId,
    },

    GetGoal {
        inode: Inode,
        recursive: bool,
    },
    SetGoal {
        inode: Inode,
        goal: Goal,
        recursive: bool,
    },
    GetTrashTime {
        inode: Inode,
        recursive: bool,
    },
    SetTrashTime {
        inode: Inode,
        trash_time: TrashTime,
        recursive: bool,
    },
    MakeSnapshot {
        src: Inode,
        parent: Inode,
        name: Name,
    },
    FileInfo {
        inode: Inode,
    },
    DirInfo {
        inode: Inode,
    },
    FileRepair {
        inode: Inode,
    },
    /// Appends the chunks of `src` to `dst` (shared, like a snapshot of the data).
    AppendChunks {
        dst: Inode,
        src: Inode,
    },

    /// The trash (meta file system): entries after `after`, at most `limit`.
    ListTrash {
        after: Option<Inode>,
        limit: u32,
    },
    ListReserved {
        after: Option<Inode>,
        limit: u32,
    },
    Undelete {
        inode: Inode,
    },
    Purge {
        inode: Inode,
    },
    /// One `Release` per inode, in one request: a mount sends the handles closed since its
    /// last such request (at most [`MAX_RELEASES`]).
    ReleaseMany {
        inodes: Vec<Inode>,
    },
    /// Handles on regular files closed (see [`ClientRequest::Open`]), at most
    /// [`MAX_RELEASES`]; closing one twice, or one the leader does not know, does nothing.
    ReleaseHandles {
        handles: Vec<u64>,
    },
}

/// Inodes in one [`ClientRequest::ReleaseMany`], at most.
pub const MAX_RELEASES: usize = 1024;

/// A chunk of a file as the tools show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkReport {
    pub index: u32,
    pub chunk: ChunkId,
    pub version: ChunkVersion,
    pub goal: Goal,
    /// Every known replica with whether it is valid: of the current version, on a server not
    /// lost (silent for less than the master's `CHUNKSERVER_TIMEOUT`).
    pub copies: Vec<(ChunkLocation, bool)>,
}

/// A trashed or reserved file as the meta file system lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrashEntry {
    pub inode: Inode,
    pub path: Vec<u8>,
    pub deleted_at: Timestamp,
    pub attr: Attr,
}

/// `alces dirinfo`: what a tree holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirSummary {
    pub inodes: u64,
    pub directories: u64,
    pub files: u64,
    pub chunks: u64,
    /// Sum of file lengths.
    pub length: u64,
    /// Bytes of chunk data (each chunk counted once, sizes rounded to 64 KiB blocks).
    pub size: u64,
    /// `size` times the number of valid copies.
    pub realsize: u64,
}

/// Goals or trash times found under a tree: (value, files, directories).
pub type SettingCounts = Vec<(u32, u64, u64)>;

/// A master as `.masterinfo` and the tools see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterView {
    pub id: u64,
    pub client_addr: String,
    pub admin_addr: String,
    pub leader: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientReply {
    Done,
    Challenge([u8; 32]),
    Registered(SessionView),
    Masters {
        leader: Option<u64>,
        masters: Vec<MasterView>,
    },
    Attr(Attr),
    ReadLink(Vec<u8>),
    /// Names, inodes, kinds, and attributes when asked for.
    Entries(Vec<(Name, Inode, FileKind, Option<Attr>)>),
    Xattr(Vec<u8>),
    XattrNames(Vec<Vec<u8>>),
    StatFs {
        total_bytes: u64,
        avail_bytes: u64,
        trash_bytes: u64,
        reserved_bytes: u64,
        inodes: u64,
    },
    /// Slot `index` of a file: `None` is a hole (reads as zeros).
    ChunkLocations {
        file_size: u64,
        chunk: Option<(ChunkId, ChunkVersion)>,
        locations: Vec<ChunkLocation>,
    },
    /// A change in one or two folders (create, link, unlink, rmdir, rename): the new entry's
    /// attributes, if it makes one, and the folders' attributes right after the change (the
    /// kernel asks for them before the next change in the folder; the mount answers from
    /// these instead of asking again).
    Changed {
        attr: Option<Attr>,
        dirs: Vec<Attr>,
    },
    /// An open of a regular file for reading, with where slot 0 is (what its first read
    /// would ask for next): `chunk` `None` is a hole, or an empty file.
    Opened {
        attr: Attr,
        chunk: Option<(ChunkId, ChunkVersion)>,
        locations: Vec<ChunkLocation>,
    },
    /// A write lease: write blocks to `chain[0]`, which forwards along the chain.
    /// `new_chunk`: the chunk is not recorded in the file yet; its write end says so, and the
    /// write's start asks the chain to create the replicas it lacks.
    WriteLease {
        file_size: u64,
        chunk: ChunkId,
        version: ChunkVersion,
        chain: Vec<ChunkLocation>,
        new_chunk: bool,
    },
    Counts {
        changed: u64,
        unchanged: u64,
        denied: u64,
    },
    Goals(SettingCounts),
    TrashTimes(SettingCounts),
    FileInfo(Vec<ChunkReport>),
    DirInfo(DirSummary),
    Repaired {
        ok: u64,
        erased: u64,
        repaired: u64,
    },
    Trash(Vec<TrashEntry>),
}
