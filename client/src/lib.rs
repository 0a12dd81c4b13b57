//! The Alces client: the session with the metadata cluster, the data path to chunkservers,
//! the FUSE file system, the meta (trash) file system and the user tools.
#![deny(unsafe_code)]

pub mod data;
pub mod fs;
pub mod master_link;
pub mod meta_fs;
