//! alces-jepsen
