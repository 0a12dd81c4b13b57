//! The chunkserver's data folders: `hdd.cfg`, a lock per folder, space accounting, where new
//! chunks go, and the scan at start that rebuilds the chunk list.
//!
//! `hdd.cfg` lists one folder a line; `#` starts a comment; a `*` prefix marks a folder for
//! removal: its chunks are read and reported (so they can be copied elsewhere) but it never
//! receives a new chunk. As in MooseFS, a size may follow the path: `/data/a 500GiB` uses at
//! most that much, `/data/a -10GiB` leaves that much of the file system free.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use alces_proto::types::{ChunkId, ChunkVersion};
use nix::fcntl::{Flock, FlockArg};

use crate::format::{parse_name, ChunkFile};

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("{path}:{line}: {reason}")]
    Config { path: PathBuf, line: usize, reason: String },
    #[error("{path}: no data folder listed")]
    Empty { path: PathBuf },
    #[error("data folder {path} is in use by another chunkserver (lock held on {path}/.lock)")]
    Locked { path: PathBuf },
    #[error("data folder {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
}

/// One line of hdd.cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderSpec {
    pub path: PathBuf,
    pub leaving: bool,
    pub limit: Option<SpaceLimit>,
}

impl FolderSpec {
    /// A folder with no size limit.
    pub fn new(path: impl Into<PathBuf>, leaving: bool) -> FolderSpec {
        FolderSpec { path: path.into(), leaving, limit: None }
    }
}

/// The size given after a folder in hdd.cfg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceLimit {
    /// Use at most this many bytes for chunks.
    Max(u64),
    /// Leave this many bytes of the file system free.
    Keep(u64),
}

/// `500GiB`, `1.5TB`, `-10GiB`, `1048576`: units with `i` are powers of 1024, without of
/// 1000; a trailing `B` is optional.
fn parse_size(text: &str) -> Option<SpaceLimit> {
    let (keep, t) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let unit = unit.strip_suffix(['B', 'b']).unwrap_or(unit);
    let (letter, binary) = match unit.strip_suffix('i') {
        Some(l) => (l, true),
        None => (unit, false),
    };
    let power = match letter.to_ascii_uppercase().as_str() {
        "" if !binary => 0,
        "K" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        "P" => 5,
        _ => return None,
    };
    let bytes = num * (if binary { 1024f64 } else { 1000f64 }).powi(power);
    if bytes >= u64::MAX as f64 {
        return None;
    }
    let bytes = bytes as u64;
    Some(if keep { SpaceLimit::Keep(bytes) } else { SpaceLimit::Max(bytes) })
}

/// Parses hdd.cfg.
pub fn parse_hdd_cfg(path: &Path, text: &str) -> Result<Vec<FolderSpec>, FolderError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (leaving, rest) = match line.strip_prefix('*') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        let bad = |reason: String| FolderError::Config { path: path.to_path_buf(), line: i + 1, reason };
        let mut words = rest.split_whitespace();
        let p = words.next().unwrap_or("");
        let limit = match words.next() {
            Some(size) => Some(parse_size(size).ok_or_else(|| {
                bad(format!("{size:?} is not a size (e.g. 500GiB to use at most that, -10GiB to leave that free)"))
            })?),
            None => None,
        };
        if let Some(extra) = words.next() {
            return Err(bad(format!("unexpected {extra:?} after the folder and its size")));
        }
        if !p.starts_with('/') {
            return Err(bad(format!("{p:?} is not an absolute path")));
        }
        if out.iter().any(|f: &FolderSpec| f.path == Path::new(p)) {
            return Err(bad(format!("{p} is listed twice")));
        }
        out.push(FolderSpec { path: PathBuf::from(p), leaving, limit });
    }
    if out.is_empty() {
        return Err(FolderError::Empty { path: path.to_path_buf() });
    }
    Ok(out)
}

/// A replica found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundChunk {
    pub id: ChunkId,
    pub version: ChunkVersion,
    pub folder: usize,
    /// The sub-folder it was found in.
    pub sub: u8,
    pub path: PathBuf,
    pub length: u64,
}

/// What the scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub chunks: Vec<FoundChunk>,
    /// Files that look like chunks but cannot be used, and why.
    pub damaged: Vec<(PathBuf, String)>,
}

/// Space of one folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderSpace {
    pub path: PathBuf,
    pub total: u64,
    pub avail: u64,
    pub leaving: bool,
}

pub struct Folder {
    pub spec: FolderSpec,
    _lock: Flock<File>,
}

/// The locked data folders of this chunkserver.
pub struct Folders {
    pub folders: Vec<Folder>,
}

impl Folders {
    /// Locks every folder and creates its 256 sub-folders.
    pub fn open(specs: Vec<FolderSpec>) -> Result<Folders, FolderError> {
        let mut folders = Vec::new();
        for spec in specs {
            let io = |error| FolderError::Io { path: spec.path.clone(), error };
            fs::create_dir_all(&spec.path).map_err(io)?;
            let lock_file =
                File::options().create(true).truncate(false).write(true).open(spec.path.join(".lock")).map_err(io)?;
            let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
                .map_err(|_| FolderError::Locked { path: spec.path.clone() })?;
            for i in 0..256 {
                fs::create_dir_all(spec.path.join(format!("{i:02X}"))).map_err(io)?;
            }
            folders.push(Folder { spec, _lock: lock });
        }
        Ok(Folders { folders })
    }

    pub fn path(&self, folder: usize, sub: u8, id: ChunkId, version: ChunkVersion) -> PathBuf {
        self.folders[folder].spec.path.join(crate::format::relative_path(sub, id, version))
    }

    /// The space of every folder, given the bytes its chunks take (`used`, by folder): the
    /// file system's, within the folder's limit.
    pub fn space(&self, used: &[u64]) -> Vec<FolderSpace> {
        self.folders
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let (fs_total, fs_avail) = match nix::sys::statvfs::statvfs(&f.spec.path) {
                    Ok(s) => (s.blocks() * s.fragment_size(), s.blocks_available() * s.fragment_size()),
                    Err(_) => (0, 0),
                };
                let used = used.get(i).copied().unwrap_or(0);
                let (total, avail) = match f.spec.limit {
                    None => (fs_total, fs_avail),
                    Some(SpaceLimit::Max(max)) => (max.min(fs_total), max.saturating_sub(used).min(fs_avail)),
                    Some(SpaceLimit::Keep(keep)) => (fs_total.saturating_sub(keep), fs_avail.saturating_sub(keep)),
                };
                FolderSpace { path: f.spec.path.clone(), total, avail, leaving: f.spec.leaving }
            })
            .collect()
    }

    /// The folder for a new chunk, given each folder's (chunks, bytes): the most free space
    /// (to the GiB) among those not leaving, then the fewest chunks.
    pub fn choose(&self, usage: &[(u64, u64)]) -> Option<usize> {
        let used: Vec<u64> = usage.iter().map(|(_, bytes)| *bytes).collect();
        let chunks = |i: usize| usage.get(i).map_or(0, |(n, _)| *n);
        self.space(&used)
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.leaving && s.avail > 0)
            .max_by_key(|(i, s)| (s.avail >> 30, std::cmp::Reverse(chunks(*i))))
            .map(|(i, _)| i)
    }

    /// Walks every folder and lists the chunks; a chunk found twice keeps its newest version.
    pub fn scan(&self) -> Scan {
        let mut scan = Scan::default();
        let mut by_id: HashMap<ChunkId, usize> = HashMap::new();
        for (fi, f) in self.folders.iter().enumerate() {
            for i in 0..256 {
                let sub = f.spec.path.join(format!("{i:02X}"));
                let Ok(rd) = fs::read_dir(&sub) else { continue };
                for entry in rd.flatten() {
                    let path = entry.path();
                    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
                    if !name.starts_with("chunk_") {
                        continue;
                    }
                    if name.ends_with(".tmp") {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    if parse_name(name).is_none() {
                        scan.damaged.push((path, "not a chunk file name".into()));
                        continue;
                    }
                    match ChunkFile::open(&path) {
                        Ok(c) => {
                            let found = FoundChunk {
                                id: c.id(),
                                version: c.version(),
                                folder: fi,
                                sub: i as u8,
                                path: path.clone(),
                                length: c.len(),
                            };
                            match by_id.get(&c.id()) {
                                Some(&j) if scan.chunks[j].version >= found.version => {
                                    scan.damaged.push((path, format!("older copy of chunk {}", c.id().hex())));
                                }
                                Some(&j) => {
                                    let old = std::mem::replace(&mut scan.chunks[j], found);
                                    scan.damaged.push((old.path, format!("older copy of chunk {}", c.id().hex())));
                                }
                                None => {
                                    by_id.insert(c.id(), scan.chunks.len());
                                    scan.chunks.push(found);
                                }
                            }
                        }
                        Err(e) => scan.damaged.push((path, e.to_string())),
                    }
                }
            }
        }
        scan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::relative_path;

    #[test]
    fn hdd_cfg_parsing() {
        let f = parse_hdd_cfg(Path::new("hdd.cfg"), "# disks\n/data/a\n\n*/data/b  # draining\n").unwrap();
        assert_eq!(f, vec![FolderSpec::new("/data/a", false), FolderSpec::new("/data/b", true),]);
        let f = parse_hdd_cfg(Path::new("hdd.cfg"), "/a 500GiB\n*/b -1.5GB\n/c 4096\n").unwrap();
        let limits: Vec<_> = f.iter().map(|f| f.limit).collect();
        assert_eq!(
            limits,
            [Some(SpaceLimit::Max(500 << 30)), Some(SpaceLimit::Keep(1_500_000_000)), Some(SpaceLimit::Max(4096))]
        );
        let e = parse_hdd_cfg(Path::new("hdd.cfg"), "/a\n/b 12parsecs\n").unwrap_err().to_string();
        assert!(e.starts_with("hdd.cfg:2: \"12parsecs\" is not a size"), "{e}");
        let e = parse_hdd_cfg(Path::new("hdd.cfg"), "/a 1GiB extra\n").unwrap_err().to_string();
        assert!(e.contains("unexpected \"extra\""), "{e}");
        let e = parse_hdd_cfg(Path::new("hdd.cfg"), "/a\nrelative\n").unwrap_err().to_string();
        assert_eq!(e, "hdd.cfg:2: \"relative\" is not an absolute path");
        assert!(parse_hdd_cfg(Path::new("hdd.cfg"), "/a\n/a\n").unwrap_err().to_string().contains("twice"));
        assert!(matches!(parse_hdd_cfg(Path::new("hdd.cfg"), "# none\n"), Err(FolderError::Empty { .. })));
    }

    #[test]
    fn a_folder_is_locked_against_a_second_chunkserver() {
        let dir = tempfile::tempdir().unwrap();
        let spec = vec![FolderSpec::new(dir.path().join("a"), false)];
        let first = Folders::open(spec.clone()).unwrap();
        assert!(matches!(Folders::open(spec.clone()), Err(FolderError::Locked { .. })));
        drop(first);
        Folders::open(spec).unwrap();
    }

    #[test]
    fn scan_rebuilds_the_list_and_reports_damage() {
        let dir = tempfile::tempdir().unwrap();
        let specs = vec![FolderSpec::new(dir.path().join("a"), false), FolderSpec::new(dir.path().join("b"), true)];
        let folders = Folders::open(specs).unwrap();
        let mut c =
            ChunkFile::create(&folders.path(0, 1, ChunkId(1), ChunkVersion(3)), ChunkId(1), ChunkVersion(3)).unwrap();
        c.write(0, b"abc").unwrap();
        ChunkFile::create(&folders.path(1, 2, ChunkId(2), ChunkVersion(1)), ChunkId(2), ChunkVersion(1)).unwrap();
        // An older copy of chunk 1 on the other folder, and a damaged file.
        ChunkFile::create(&folders.path(1, 1, ChunkId(1), ChunkVersion(2)), ChunkId(1), ChunkVersion(2)).unwrap();
        let bad = dir.path().join("a").join(relative_path(7, ChunkId(7), ChunkVersion(1)));
        std::fs::write(&bad, b"garbage").unwrap();
        let scan = folders.scan();
        let mut found: Vec<_> = scan.chunks.iter().map(|c| (c.id.0, c.version.0, c.folder)).collect();
        found.sort();
        assert_eq!(found, vec![(1, 3, 0), (2, 1, 1)]);
        assert_eq!(scan.damaged.len(), 2, "{:?}", scan.damaged);
        assert!(scan.damaged.iter().any(|(p, _)| p == &bad));
        assert_eq!(folders.choose(&[(0, 0), (0, 0)]), Some(0), "the folder marked for removal is never chosen");
    }

    #[test]
    fn a_size_limit_bounds_the_space_of_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FolderSpec::new(dir.path().join("a"), false);
        a.limit = Some(SpaceLimit::Max(100 << 20));
        let mut b = FolderSpec::new(dir.path().join("b"), false);
        b.limit = Some(SpaceLimit::Keep(u64::MAX / 2));
        let folders = Folders::open(vec![a, b]).unwrap();
        let space = folders.space(&[30 << 20, 0]);
        assert_eq!((space[0].total, space[0].avail), (100 << 20, 70 << 20));
        // Keeping more free than the disk has leaves nothing.
        assert_eq!((space[1].total, space[1].avail), (0, 0));
        assert_eq!(folders.choose(&[(1, 30 << 20), (0, 0)]), Some(0));
        assert_eq!(folders.choose(&[(3, 100 << 20), (0, 0)]), None, "a full folder and one with nothing to give");
    }
}
