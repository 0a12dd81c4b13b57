//! A Raft-replicated store on RocksDB: the metadata cluster's engine.
//!
//! openraft runs the protocol; this crate gives it durable storage (one RocksDB instance per
//! node for the log, the vote and the state machine), a TCP network that only talks to peers
//! knowing the cluster secret, and snapshot files. An application implements
//! [`StateMachine`] and drives a [`RaftNode`]: it proposes operations, reads after a batched
//! read barrier, and changes membership. It knows nothing of files, chunks or POSIX.
#![deny(unsafe_code)]

pub mod db;
mod durable;
pub mod error;
pub mod kv;
mod lease;
pub mod log_store;
pub mod machine;
pub mod network;
pub mod node;
mod propose;
mod read_index;
pub mod sm_store;
pub mod snapshot;
pub mod types;

pub use db::Db;
pub use error::{Error, Result};
pub use machine::{apply_local, ApplyCtx, StateMachine};
pub use node::{MemberStatus, NodeConfig, NodeStatus, RaftNode, Role};
pub use types::{Member, NodeId};
