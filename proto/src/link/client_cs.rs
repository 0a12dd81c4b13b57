//! client -> chunkserver (port 9422): reading replicas and chained writes.
//!
//! Reads: `Read` is answered by one `Data` (CRC-checked on the server; a bad block is an
//! error, never bad bytes).
//!
//! Writes: `WriteStart` names the chunk, the version of the client's lease, and the servers
//! after this one in the chain; the server opens the chain (each server forwards to the next)
//! and answers `WriteReady`. Each `WriteData` is acknowledged with `WriteDone` only when
//! every server of the chain has written it. `WriteFinish` makes everything durable on every
//! server (fsync) before `WriteFinished`. Any failure ends the write session with
//! `WriteFailed`; the client asks the master for a new lease and writes again.
//!
//! A write to a new chunk (`create`) makes the chunk's replicas: each server of the chain
//! creates an empty replica at `version` unless it holds one at that version already, so a
//! new chunk costs the master no orders to the chunkservers before its lease.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::types::{ChunkId, ChunkLocation, ChunkVersion, ChunkserverId};

/// Bytes one `Read` may ask for.
pub const MAX_READ: u32 = 4 << 20;
/// Bytes a client puts in one `WriteData` (a chunkserver takes any piece within the chunk
/// and the frame limit).
pub const MAX_WRITE: u32 = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DataRequest {
    Read {
        chunk: ChunkId,
        version: ChunkVersion,
        offset: u32,
        len: u32,
    },
    WriteStart {
        chunk: ChunkId,
        version: ChunkVersion,
        chain: Vec<ChunkLocation>,
        /// A new chunk: a server without a replica creates an empty one at `version`.
        create: bool,
    },
    /// `offset` within the chunk. Pieces of whole, aligned 64 KiB blocks are written without a
    /// read-modify-write.
    WriteData {
        id: u64,
        offset: u32,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    WriteFinish {
        id: u64,
    },
}

/// [`DataRequest::WriteData`] over borrowed bytes: a sender encodes it to exactly the payload
/// of that variant without copying the data into a request first, and a receiver decodes a
/// `WriteData` payload into it without copying the data out. The variants before it only
/// hold their places (a variant is encoded as its index); decoding anything but a
/// `WriteData` into it fails.
#[derive(Debug, Serialize, Deserialize)]
pub enum DataRequestRef<'a> {
    #[allow(dead_code)]
    Read,
    #[allow(dead_code)]
    WriteStart,
    WriteData {
        id: u64,
        offset: u32,
        #[serde(with = "serde_bytes", borrow)]
        data: &'a [u8],
    },
}

/// A `WriteData` piece decoded from a received frame: its data is a slice of that frame.
#[derive(Debug, Clone)]
pub struct WritePiece {
    pub id: u64,
    pub offset: u32,
    pub data: Bytes,
}

impl WritePiece {
    /// The piece, if `payload` (a slice of `frame`) is a `WriteData` request; `None` for any
    /// other request or bytes that do not decode (the caller decodes those the usual way).
    pub fn from_payload(frame: &Bytes, payload: &[u8]) -> Option<WritePiece> {
        match codec::decode_borrowed::<DataRequestRef<'_>>(payload) {
            Ok(DataRequestRef::WriteData { id, offset, data }) => {
                Some(WritePiece { id, offset, data: frame.slice_ref(data) })
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DataReply {
    /// A `Read`'s bytes. Senders and receivers of many of them use [`DataReply::data_header`]
    /// and [`DataReplyFrame`], which leave the bytes where they are.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    WriteReady,
    WriteDone {
        id: u64,
    },
    WriteFinished {
        id: u64,
    },
    WriteFailed {
        id: u64,
        error: DataError,
    },
    Error(DataError),
}

/// What [`DataReply::Data`] is encoded as before its bytes: the variant's index, then the
/// length of the bytes (as serde encodes a byte slice).
#[derive(Serialize)]
enum DataHead {
    Data(u64),
}

/// [`DataReply::Data`] over borrowed bytes, for decoding without a copy; decoding any other
/// reply into it fails.
#[derive(Deserialize)]
enum DataReplyRef<'a> {
    Data(#[serde(with = "serde_bytes", borrow)] &'a [u8]),
}

impl DataReply {
    /// The start of the payload of a `Data` reply carrying `len` bytes: this followed by the
    /// bytes is exactly the payload of `DataReply::Data(bytes)`, so a server can send the
    /// bytes from where they were read (see [`crate::FrameWriter::feed_parts`]).
    pub fn data_header(len: usize) -> Vec<u8> {
        codec::encode(&DataHead::Data(len as u64))
    }
}

/// A reply decoded from a received frame, with a `Read`'s bytes left in that frame.
#[derive(Debug)]
pub enum DataReplyFrame {
    Data(Bytes),
    Other(DataReply),
}

impl DataReplyFrame {
    pub fn decode(frame: &Bytes) -> Result<DataReplyFrame, codec::DecodeError> {
        if let Ok(DataReplyRef::Data(data)) = codec::decode_borrowed::<DataReplyRef<'_>>(frame) {
            return Ok(DataReplyFrame::Data(frame.slice_ref(data)));
        }
        codec::decode(frame).map(DataReplyFrame::Other)
    }
}

/// Why a data request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DataError {
    #[error("no such chunk")]
    NoChunk,
    #[error("chunk has version {have}, not the one asked for")]
    WrongVersion { have: ChunkVersion },
    #[error("CRC error in block {block}")]
    Crc { block: u32 },
    #[error("request out of range")]
    Range,
    #[error("i/o error: {0}")]
    Io(String),
    #[error("chain broken at chunkserver {server}: {reason}")]
    Chain { server: ChunkserverId, reason: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server's disks have no room for the write (ENOSPC).
    #[error("no space left on the chunkserver")]
    NoSpace,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_header_and_its_bytes_encode_as_the_reply() {
        // Lengths around the varint's size steps, a full piece and the largest read.
        for len in [0usize, 1, 250, 251, 252, 65_535, 65_536, 1 << 20, MAX_READ as usize] {
            let data: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            let whole = codec::encode(&DataReply::Data(data.clone()));
            assert_eq!([DataReply::data_header(len), data].concat(), whole, "length {len}");
        }
    }

    #[test]
    fn a_data_reply_is_decoded_with_its_bytes_left_in_the_frame() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let frame = Bytes::from(codec::encode(&DataReply::Data(data.clone())));
        match DataReplyFrame::decode(&frame).expect("decodes") {
            DataReplyFrame::Data(d) => {
                assert_eq!(d[..], data[..]);
                assert!(frame.as_ptr_range().contains(&d.as_ptr()), "the data stays in the frame");
            }
            other => panic!("decoded as {other:?}"),
        }
        let empty = Bytes::from(codec::encode(&DataReply::Data(Vec::new())));
        assert!(matches!(DataReplyFrame::decode(&empty), Ok(DataReplyFrame::Data(d)) if d.is_empty()));
        // Every other reply goes through the usual decoder.
        let crc = Bytes::from(codec::encode(&DataReply::Error(DataError::Crc { block: 5 })));
        assert!(matches!(
            DataReplyFrame::decode(&crc),
            Ok(DataReplyFrame::Other(DataReply::Error(DataError::Crc { block: 5 })))
        ));
        let done = Bytes::from(codec::encode(&DataReply::WriteDone { id: 4 }));
        assert!(matches!(DataReplyFrame::decode(&done), Ok(DataReplyFrame::Other(DataReply::WriteDone { id: 4 }))));
        // A data reply claiming more bytes than it has, trailing bytes, garbage: errors.
        let mut short = codec::encode(&DataReply::Data(vec![1; 100]));
        short.truncate(50);
        assert!(DataReplyFrame::decode(&Bytes::from(short)).is_err());
        let mut long = codec::encode(&DataReply::Data(vec![1; 100]));
        long.push(0);
        assert!(DataReplyFrame::decode(&Bytes::from(long)).is_err());
        assert!(DataReplyFrame::decode(&Bytes::from_static(&[0xff, 0xff, 0xff])).is_err());
        assert!(DataReplyFrame::decode(&Bytes::new()).is_err());
    }
}
