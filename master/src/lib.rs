//! The Alces master: the namespace state machine replicated by Raft, the services clients and
//! chunkservers talk to, chunk placement and exports. Binary: `alces-master`.
#![deny(unsafe_code)]

pub mod namespace;
