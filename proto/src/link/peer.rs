//! master -> master: the Raft RPCs.
//!
//! The payload types are openraft's, which this crate does not know: `raft-store` instantiates
//! the enums with them. One connection carries one request at a time; a dialer that wants
//! concurrency opens several connections.

use serde::{Deserialize, Serialize};

/// A request from one master to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest<Append, Vote, Snapshot> {
    AppendEntries(Append),
    Vote(Vote),
    InstallSnapshot(Snapshot),
    /// Asks the receiver to start an election now (leadership transfer); sent by the leader
    /// after it has stopped accepting writes and the receiver has caught up.
    TriggerElection,
}

/// The answer to a [`PeerRequest`], variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse<Append, Vote, Snapshot> {
    AppendEntries(Append),
    Vote(Vote),
    InstallSnapshot(Snapshot),
    ElectionTriggered,
    /// The receiver could not handle the request at all (shutting down, undecodable request).
    Failed(String),
}
