//! The chunkserver's data folders: `hdd.cfg`, a lock per folder, space accounting, where new
//! chunks go, and the scan at start that rebuilds the chunk list.
//!
//! `hdd.cfg` lists one folder a line; `#` starts a comment; a `*` prefix marks a folder for
//! removal: its chunks are read and reported (so they can be copied elsewhere) but it never
//! receives a new chunk.

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
}

/// Parses hdd.cfg.
pub fn parse_hdd_cfg(path: &Path, text: &str) -> Result<Vec<FolderSpec>, FolderError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (leaving, p) = match line.strip_prefix('*') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        if !p.starts_with('/') {
            return Err(FolderError::Config {
                path: path.to_path_buf(),
                line: i + 1,
                reason: format!("{p:?} is not an absolute path"),
            });
        }
        if out.iter().any(|f: &FolderSpec| f.path == Path::new(p)) {
            return Err(FolderError::Config {
                path: path.to_path_buf(),
                line: i + 1,
                reason: format!("{p} is listed twice"),
            });
        }
        out.push(FolderSpec { path: PathBuf::from(p), leaving });
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

    pub fn space(&self) -> Vec<FolderSpace> {
        self.folders
            .iter()
            .map(|f| {
                let (total, avail) = match nix::sys::statvfs::statvfs(&f.spec.path) {
                    Ok(s) => (s.blocks() * s.fragment_size(), s.blocks_available() * s.fragment_size()),
                    Err(_) => (0, 0),
                };
                FolderSpace { path: f.spec.path.clone(), total, avail, leaving: f.spec.leaving }
            })
            .collect()
    }

    /// The folder for a new chunk: the most free space among those not leaving.
    pub fn choose(&self) -> Option<usize> {
        self.space()
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.leaving && s.avail > 0)
            .max_by_key(|(_, s)| s.avail)
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
        assert_eq!(
            f,
            vec![
                FolderSpec { path: "/data/a".into(), leaving: false },
                FolderSpec { path: "/data/b".into(), leaving: true },
            ]
        );
        let e = parse_hdd_cfg(Path::new("hdd.cfg"), "/a\nrelative\n").unwrap_err().to_string();
        assert_eq!(e, "hdd.cfg:2: \"relative\" is not an absolute path");
        assert!(parse_hdd_cfg(Path::new("hdd.cfg"), "/a\n/a\n").unwrap_err().to_string().contains("twice"));
        assert!(matches!(parse_hdd_cfg(Path::new("hdd.cfg"), "# none\n"), Err(FolderError::Empty { .. })));
    }

    #[test]
    fn a_folder_is_locked_against_a_second_chunkserver() {
        let dir = tempfile::tempdir().unwrap();
        let spec = vec![FolderSpec { path: dir.path().join("a"), leaving: false }];
        let first = Folders::open(spec.clone()).unwrap();
        assert!(matches!(Folders::open(spec.clone()), Err(FolderError::Locked { .. })));
        drop(first);
        Folders::open(spec).unwrap();
    }

    #[test]
    fn scan_rebuilds_the_list_and_reports_damage() {
        let dir = tempfile::tempdir().unwrap();
        let specs = vec![
            FolderSpec { path: dir.path().join("a"), leaving: false },
            FolderSpec { path: dir.path().join("b"), leaving: true },
        ];
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
        assert_eq!(folders.choose(), Some(0), "the folder marked for removal is never chosen");
    }
}
