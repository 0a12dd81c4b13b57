//! Operations: the admin HTTP API and web monitor every master serves, Prometheus metrics
//! helpers, and the local cluster launcher behind `alces-cluster`. It knows nothing of the
//! namespace: masters plug in through [`api::AdminBackend`].
#![deny(unsafe_code)]

pub mod admin_client;
pub mod api;
pub mod launcher;
