//! chunkserver -> master (port 9420): registration, chunk reports, heartbeats, and the
//! leader's orders.
//!
//! A chunkserver keeps one connection to every master (proving the cluster secret), registers,
//! sends its full chunk list, then changes as they happen and a heartbeat with its space and
//! load. So every master always knows where every chunk is, and a new leader can act at once.
//! Only a master that says it leads sends orders; the chunkserver answers each with
//! `OrderDone` on the same connection.

use serde::{Deserialize, Serialize};

use crate::types::{ChunkId, ChunkLocation, ChunkVersion, ChunkserverId, NodeId};

/// Chunks per `ChunkReport` frame (a full report is sent in parts).
pub const REPORT_BATCH: usize = 50_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CsToMaster {
    Register(CsRegister),
    /// Part of the full chunk list; `last` on the final part.
    ChunkReport {
        chunks: Vec<ChunkState>,
        last: bool,
    },
    /// Changes since the last report.
    ChunksChanged {
        added: Vec<ChunkState>,
        removed: Vec<(ChunkId, ChunkVersion)>,
    },
    /// A replica failed its CRC check (read or scrub) and was dropped.
    Damaged {
        chunk: ChunkId,
        version: ChunkVersion,
    },
    Heartbeat(CsLoad),
    OrderDone {
        order: u64,
        result: Result<(), String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsRegister {
    pub id: ChunkserverId,
    /// Where clients and other chunkservers reach the data service (port 9422).
    pub data_addr: String,
    /// Topology label (rack, room) for spreading copies; empty when not configured.
    pub label: String,
    pub load: CsLoad,
}

/// One replica held by a chunkserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkState {
    pub chunk: ChunkId,
    pub version: ChunkVersion,
    /// Data bytes in the chunk file.
    pub length: u32,
    /// On a folder marked for removal: to be copied elsewhere, never chosen for writes.
    pub leaving: bool,
}

/// Space and load, sent at registration and in every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsLoad {
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Free bytes on folders that may receive new chunks.
    pub avail_bytes: u64,
    pub chunks: u64,
    /// Requests being served now.
    pub busy: u32,
    /// CRC errors found since start (reads and scrubbing).
    pub crc_errors: u64,
    pub folders: Vec<FolderLoad>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderLoad {
    pub path: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub avail_bytes: u64,
    pub chunks: u64,
    pub leaving: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MasterToCs {
    /// Registration accepted; whether this master leads now, and its term.
    Welcome {
        master: NodeId,
        leader: bool,
        term: u64,
    },
    /// Leadership of this master changed.
    Leadership {
        leader: bool,
        term: u64,
    },
    Order {
        order: u64,
        term: u64,
        op: ChunkOrder,
    },
    /// Where every master of the Raft group (voters and learners) takes chunkservers, so a
    /// chunkserver also links to masters added after it started.
    Masters {
        cs_addrs: Vec<String>,
    },
}

/// What the leader tells a chunkserver to do with its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkOrder {
    /// Create an empty replica.
    Create {
        chunk: ChunkId,
        version: ChunkVersion,
    },
    /// Move a replica from version `from` to `to` (a new write lease).
    SetVersion {
        chunk: ChunkId,
        from: ChunkVersion,
        to: ChunkVersion,
    },
    /// Cut a replica to `length` bytes and move it to version `to`.
    Truncate {
        chunk: ChunkId,
        from: ChunkVersion,
        to: ChunkVersion,
        length: u64,
    },
    /// Copy a replica into a new chunk (copy-on-write after a snapshot), cut to `length`.
    Duplicate {
        from: (ChunkId, ChunkVersion),
        to: (ChunkId, ChunkVersion),
        length: Option<u64>,
    },
    Delete {
        chunk: ChunkId,
        version: ChunkVersion,
    },
    /// Fetch a copy from one of `sources`.
    Replicate {
        chunk: ChunkId,
        version: ChunkVersion,
        sources: Vec<ChunkLocation>,
    },
}
