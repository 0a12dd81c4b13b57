//! alces-chunkserver
