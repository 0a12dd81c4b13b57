//! The openraft type configuration shared by every Alces master.
//!
//! Log payloads and state-machine replies are opaque bytes here: the application (the namespace
//! in `master`, the test key-value machine in [`crate::kv`]) encodes its own typed operations, so
//! this crate stays free of files and chunks and compiles once for every application.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Raft member id.
pub type NodeId = u64;

/// What the group knows about a member: where to reach it. Stored in the membership config, so
/// every node knows the addresses of every other, and a follower can tell a client where the
/// leader is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Member {
    /// Raft peer address (port 9419).
    pub raft_addr: String,
    /// Address clients use (port 9421); the test machine's API for the key-value machine.
    pub client_addr: String,
    /// Address chunkservers use (port 9420); empty when the application has none.
    pub cs_addr: String,
    /// Admin HTTP API (port 9425); empty when the application has none.
    pub admin_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} client={}", self.raft_addr, self.client_addr)
    }
}

/// An encoded application operation or reply.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Payload(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What one log entry carries: the operations of every proposal that arrived while the
/// previous entry was being written (group commit), applied in order and atomically. As a
/// reply, the operations' replies in the same order.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Batch(pub Vec<Payload>);

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Batch({} ops, {} bytes)", self.0.len(), self.0.iter().map(|p| p.0.len()).sum::<usize>())
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

openraft::declare_raft_types!(
    /// The Alces Raft types: batches of opaque operations, [`Member`] nodes, snapshots as files.
    pub TypeConfig:
        D = Batch,
        R = Batch,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Member>;
