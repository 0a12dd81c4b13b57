//! chunkserver -> chunkserver (port 9422, with the cluster secret): the next hop of a write
//! chain, and copying replicas.
//!
//! A chain hop carries the same conversation as a client's write ([`DataRequest`]). For
//! replication, `Fetch` reads a replica in pieces (CRC-checked at the source) and `Stat` tells
//! its length.

use serde::{Deserialize, Serialize};

use super::client_cs::{DataError, DataReply, DataRequest, DataRequestRef};
use crate::types::{ChunkId, ChunkVersion};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerDataRequest {
    Chain(DataRequest),
    Stat { chunk: ChunkId, version: ChunkVersion },
    Fetch { chunk: ChunkId, version: ChunkVersion, offset: u32, len: u32 },
}

/// [`PeerDataRequest::Chain`] of a [`DataRequestRef`]: a write forwarded along the chain
/// without copying its bytes into a request (encodes exactly as the owned form).
#[derive(Debug, Serialize)]
pub enum PeerDataRequestRef<'a> {
    Chain(DataRequestRef<'a>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerDataReply {
    Chain(DataReply),
    Stat { length: u32 },
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Error(DataError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn borrowed_writes_encode_as_the_owned_ones() {
        let data: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let (id, offset) = (u64::MAX - 3, 65_536 * 5);
        let owned = DataRequest::WriteData { id, offset, data: data.clone() };
        let borrowed = DataRequestRef::WriteData { id, offset, data: &data };
        assert_eq!(codec::encode(&borrowed), codec::encode(&owned));
        assert_eq!(codec::encode(&PeerDataRequestRef::Chain(borrowed)), codec::encode(&PeerDataRequest::Chain(owned)));
    }
}
