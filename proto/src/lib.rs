//! Wire types and framing shared by every Alces link.
//!
//! A link is one TCP connection between two roles (client -> master, chunkserver -> master,
//! client -> chunkserver, chunkserver -> chunkserver, master -> master). Every link carries
//! length-prefixed frames ([`frame`]) whose payloads are bincode-encoded messages; each link
//! has its own message enum in [`link`]. A connection opens with a version handshake that can
//! also prove a shared secret ([`handshake`]). Failures that reach a file system caller are
//! [`Status`] codes, which map to errno values.
//!
//! This crate knows nothing about sockets beyond the codec, nor about storage. Decoding never
//! panics whatever the bytes: every decoder returns an error, and frames above a limit are
//! refused before their payload is read.
#![deny(unsafe_code)]

pub mod codec;
pub mod frame;
pub mod handshake;
pub mod link;
pub mod pool;
pub mod status;
pub mod types;

pub use codec::{decode, encode, DecodeError};
pub use frame::{Connection, FrameError, FrameReader, FrameWriter, OutFrame, DEFAULT_MAX_FRAME};
pub use handshake::{password_key, password_proof, Handshake, HandshakeError, LinkKind, Secret, PROTOCOL_VERSION};
pub use pool::IdlePool;
pub use status::Status;

/// Decodes `payload` as every message type of every link and drops the results: the fuzz
/// target's entry point, and a quick way for tests to prove that no decoder panics.
#[doc(hidden)]
pub fn decode_every_message(payload: &[u8]) {
    handshake::decode_every_message(payload);
    link::decode_every_message(payload);
}
