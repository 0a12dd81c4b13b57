//! The master's network services: clients (port 9421) and chunkservers (port 9420).

pub mod client;
pub mod cs;
