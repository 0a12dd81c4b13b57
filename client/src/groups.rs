//! The supplementary groups of the processes calling into the mount, read from
//! `/proc/PID/status` and kept for a short while.
//!
//! Every request of the kernel names the caller's process (its thread, in fact), user and
//! group, but not its supplementary groups, which the master needs for its permission checks.
//! Reading them took a dozen system calls on the thread that takes the kernel's requests in
//! turn, for every lookup, stat and create. They are kept for [`GROUPS_TTL`] per process, user
//! and group: a process that changes its supplementary groups and nothing else is seen with
//! the new ones within that time. The kernel checks permissions itself first (the mount uses
//! `default_permissions`), with the caller's current credentials.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the groups read for a process stay in use.
pub const GROUPS_TTL: Duration = Duration::from_secs(1);
/// Entries kept at most; expired ones go first, then all of them.
const MAX_ENTRIES: usize = 4096;

/// (pid, uid, gid)
type Key = (u32, u32, u32);

pub struct GroupsCache {
    ttl: Duration,
    entries: Mutex<HashMap<Key, (Instant, Vec<u32>)>>,
}

impl Default for GroupsCache {
    fn default() -> Self {
        GroupsCache::new(GROUPS_TTL)
    }
}

impl GroupsCache {
    pub fn new(ttl: Duration) -> GroupsCache {
        GroupsCache { ttl, entries: Mutex::default() }
    }

    /// The supplementary groups of process `pid` running as `uid`/`gid`.
    pub fn get(&self, pid: u32, uid: u32, gid: u32) -> Vec<u32> {
        self.get_with((pid, uid, gid), || read_groups(pid))
    }

    /// The groups kept for `key`, or those `read` gives (then kept).
    fn get_with(&self, key: Key, read: impl FnOnce() -> Vec<u32>) -> Vec<u32> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, groups)) = entries.get(&key) {
            if now.duration_since(*at) < self.ttl {
                return groups.clone();
            }
        }
        let groups = read();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (now, groups.clone()));
        groups
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

/// The `Groups:` line of `/proc/PID/status` (none if the process is gone).
pub fn read_groups(pid: u32) -> Vec<u32> {
    let mut buf = Vec::with_capacity(4096);
    // One open and a read or two: `read_to_string` asks for the size first and then reads in
    // small steps, as the file claims to be empty.
    let read = std::fs::File::open(format!("/proc/{pid}/status")).and_then(|mut f| {
        let mut chunk = [0u8; 4096];
        loop {
            match f.read(&mut chunk)? {
                0 => return Ok(()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    if read.is_err() {
        return Vec::new();
    }
    parse_groups(&String::from_utf8_lossy(&buf))
}

fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn this_process_groups_are_read() {
        let mut want: Vec<u32> = nix::unistd::getgroups().unwrap().into_iter().map(|g| g.as_raw()).collect();
        let mut got = read_groups(std::process::id());
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
        assert!(read_groups(u32::MAX).is_empty(), "no such process");
        assert_eq!(parse_groups("Name:\tx\nGroups:\t4 24 27 \nNgid:\t0\n"), vec![4, 24, 27]);
        assert!(parse_groups("Name:\tx\nGroups:\t\n").is_empty());
    }

    #[test]
    fn groups_are_read_again_after_the_ttl_or_for_another_user() {
        let cache = GroupsCache::new(Duration::from_millis(200));
        let reads = Cell::new(0);
        let read = |g: u32| {
            reads.set(reads.get() + 1);
            vec![g]
        };
        assert_eq!(cache.get_with((10, 1000, 1000), || read(1)), vec![1]);
        assert_eq!(cache.get_with((10, 1000, 1000), || read(2)), vec![1], "kept");
        assert_eq!(reads.get(), 1);
        assert_eq!(cache.get_with((10, 0, 0), || read(3)), vec![3], "another user: read");
        assert_eq!(cache.get_with((11, 1000, 1000), || read(4)), vec![4], "another process: read");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cache.get_with((10, 1000, 1000), || read(5)), vec![5], "expired: read again");
        assert_eq!(reads.get(), 4);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = GroupsCache::new(Duration::from_secs(60));
        for pid in 0..(MAX_ENTRIES as u32 + 10) {
            cache.get_with((pid, 0, 0), Vec::new);
        }
        assert!(cache.len() <= MAX_ENTRIES, "{} entries", cache.len());
    }
}
