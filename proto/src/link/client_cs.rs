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
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    WriteReady,
    WriteDone { id: u64 },
    WriteFinished { id: u64 },
    WriteFailed { id: u64, error: DataError },
    Error(DataError),
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
