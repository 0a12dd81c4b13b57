//! alces-jepsen: the black-box fault-injection suite of Alces.
//!
//! It starts real masters and chunkservers, each in a network namespace of its own on a private
//! bridge, mounts clients, runs concurrent workloads through the mounts, injects faults
//! (nemeses), heals, and checks the history of what the clients saw against a model. It knows
//! the system only as a user does: processes, config files, mounts and the admin API.
#![deny(unsafe_code)]

pub mod checker;
pub mod clean;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod run;
pub mod sh;
pub mod signals;
pub mod worker;
pub mod workload;
