//! The Alces client: the session with the metadata cluster, the data path to chunkservers,
//! the FUSE file system, the meta (trash) file system and the user tools (`admin`: the
//! cluster tools over the masters' admin API).
#![deny(unsafe_code)]

pub mod admin;
pub mod data;
pub mod fs;
pub mod groups;
pub mod master_link;
pub mod meta_fs;
mod spare;

/// A size in binary units (`1.5 GiB`), as the tools print it.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
