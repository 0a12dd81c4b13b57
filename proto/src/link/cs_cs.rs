//! chunkserver -> chunkserver (port 9422, with the cluster secret): the next hop of a write
//! chain, and copying replicas.
//!
//! A chain hop carries the same conversation as a client's write ([`DataRequest`]). For
//! replication, `Fetch` reads a replica in pieces (CRC-checked at the source) and `Stat` tells
//! its length.

use serde::{Deserialize, Serialize};

use bytes::Bytes;

use super::client_cs::{DataError, DataReply, DataRequest, WritePiece};
use crate::types::{ChunkId, ChunkVersion};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerDataRequest {
    Chain(DataRequest),
    Stat { chunk: ChunkId, version: ChunkVersion },
    Fetch { chunk: ChunkId, version: ChunkVersion, offset: u32, len: u32 },
}

/// The encoding of [`PeerDataRequest::Chain`]'s variant index, which precedes the payload of
/// the [`DataRequest`] it carries.
const CHAIN_TAG: [u8; 1] = [0];

/// A `WriteData` received in `frame`, from a client (a [`DataRequest`]) or from the previous
/// server of a chain (a [`PeerDataRequest::Chain`]), with its data left in the frame.
pub fn write_piece(frame: &Bytes, from_peer: bool) -> Option<WritePiece> {
    let payload = if from_peer { frame.strip_prefix(&CHAIN_TAG[..])? } else { &frame[..] };
    WritePiece::from_payload(frame, payload)
}

/// The payload, in parts, that forwards the `WriteData` received in `frame` to the next
/// server: the frame itself when it came from a peer, else the chain tag and the frame.
pub fn forward_parts(frame: Bytes, from_peer: bool) -> Vec<Bytes> {
    if from_peer {
        vec![frame]
    } else {
        vec![Bytes::from_static(&CHAIN_TAG), frame]
    }
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
    use crate::link::client_cs::DataRequestRef;

    #[test]
    fn borrowed_writes_encode_as_the_owned_ones() {
        let data: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let (id, offset) = (u64::MAX - 3, 65_536 * 5);
        let owned = DataRequest::WriteData { id, offset, data: data.clone() };
        let borrowed = DataRequestRef::WriteData { id, offset, data: &data };
        assert_eq!(codec::encode(&borrowed), codec::encode(&owned));
    }

    #[test]
    fn a_received_write_is_decoded_and_forwarded_without_its_bytes_copied() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let owned = DataRequest::WriteData { id: 9, offset: 1 << 20, data: data.clone() };
        let peer_owned = PeerDataRequest::Chain(owned.clone());
        for (frame, from_peer) in
            [(Bytes::from(codec::encode(&owned)), false), (Bytes::from(codec::encode(&peer_owned)), true)]
        {
            let piece = write_piece(&frame, from_peer).expect("a write piece");
            assert_eq!((piece.id, piece.offset, &piece.data[..]), (9, 1 << 20, &data[..]));
            assert!(frame.as_ptr_range().contains(&piece.data.as_ptr()), "the data stays in the frame");
            let forwarded: Vec<u8> = forward_parts(frame, from_peer).concat();
            assert_eq!(forwarded, codec::encode(&peer_owned));
        }
        // Anything else is left to the usual decoder.
        let finish = Bytes::from(codec::encode(&DataRequest::WriteFinish { id: 3 }));
        assert!(write_piece(&finish, false).is_none());
        let read = DataRequest::Read { chunk: ChunkId(1), version: ChunkVersion(1), offset: 0, len: 10 };
        assert!(write_piece(&Bytes::from(codec::encode(&read)), false).is_none());
        let stat = PeerDataRequest::Stat { chunk: ChunkId(1), version: ChunkVersion(1) };
        assert!(write_piece(&Bytes::from(codec::encode(&stat)), true).is_none());
        assert!(write_piece(&Bytes::from_static(&[0, 2, 1]), true).is_none());
        assert!(write_piece(&Bytes::new(), true).is_none());
    }
}
