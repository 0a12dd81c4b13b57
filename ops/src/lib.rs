//! alces-ops
