//! The Alces chunkserver: chunk files on several data folders (byte-compatible with MooseFS),
//! CRC-checked reads, chained writes, orders from the leader, replication between
//! chunkservers, scrubbing, and a link to every master. Binary: `alces-chunkserver`.
#![deny(unsafe_code)]

pub mod config;
pub mod data_service;
pub mod folders;
pub mod format;
pub mod master_link;
pub mod scrub;
pub mod store;
