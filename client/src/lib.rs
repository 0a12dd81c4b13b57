//! alces-client
