//! chunkserver -> chunkserver (port 9422, with the cluster secret): the next hop of a write
//! chain, and copying replicas.
//!
//! A chain hop carries the same conversation as a client's write ([`DataRequest`]). For
//! replication, `Fetch` reads a replica in pieces (CRC-checked at the source) and `Stat` tells
//! its length.

use serde::{Deserialize, Serialize};

use super::client_cs::{DataError, DataReply, DataRequest};
use crate::types::{ChunkId, ChunkVersion};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerDataRequest {
    Chain(DataRequest),
    Stat { chunk: ChunkId, version: ChunkVersion },
    Fetch { chunk: ChunkId, version: ChunkVersion, offset: u32, len: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerDataReply {
    Chain(DataReply),
    Stat { length: u32 },
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Error(DataError),
}
