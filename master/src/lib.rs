//! The Alces master: the namespace state machine replicated by Raft, the services clients and
//! chunkservers talk to, chunk placement and write leases, exports. Binary: `alces-master`.
#![deny(unsafe_code)]

pub mod admin;
pub mod chunks;
pub mod config;
pub mod exports;
pub mod handles;
pub mod master;
pub mod namespace;
pub mod replication;
pub mod service;
pub mod topology;
