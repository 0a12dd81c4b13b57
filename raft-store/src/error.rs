//! Errors of the replicated store, as its callers see them.

use crate::types::{Member, NodeId};

/// Why a write, read or membership change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node is not the leader; the caller should retry at `leader` (if known).
    #[error("not the leader (leader: {})", leader_id.map(|id| id.to_string()).unwrap_or_else(|| "unknown".into()))]
    NotLeader { leader_id: Option<NodeId>, leader: Option<Member> },
    /// The group cannot make progress now (no quorum, election in progress); retry later.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The node is shutting down or its Raft core stopped.
    #[error("raft node stopped: {0}")]
    Stopped(String),
    /// Local storage failed; the node cannot continue safely.
    #[error("storage error: {0}")]
    Storage(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether the same request may succeed if retried (here or at another node).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::NotLeader { .. } | Error::Unavailable(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
