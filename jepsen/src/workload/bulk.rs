//! bulk: large files of known content (it follows from the file's name), written and fsynced
//! whole, read back now and then, and all read at the end. Every acknowledged file must be
//! there with exactly its content; no read may ever return other bytes. A client that has
//! written [`MAX_FILES`] files only reads them from then on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use rand::Rng;
use serde_json::{json, Value};

use super::{errno, fnv64, pseudo_random, Client, Outcome, Workload};
use crate::checker::{self, Verdict};
use crate::history::Op;

const DIR: &str = "bulk";
/// Files one client writes at most; after that it only reads them back. Without a bound a
/// run fills the disk: 4 clients wrote 1534 files of 8 MiB (25 GB with goal 2) in 60 s here,
/// and 150 s left no room for the history.
const MAX_FILES: usize = 100;

pub struct Bulk {
    pub bytes: usize,
}

/// The content of file `name`: its length and seed follow from the name.
pub fn content(name: &str, bytes: usize) -> Vec<u8> {
    pseudo_random(fnv64(name.as_bytes()), bytes)
}

struct BulkClient {
    p: usize,
    dir: PathBuf,
    bytes: usize,
    n: u64,
    written: Vec<String>,
}

/// Reads `name` and says whether it holds its content.
pub fn verify(dir: &Path, name: &str, bytes: usize) -> std::io::Result<(bool, u64, usize)> {
    let data = std::fs::read(dir.join(name))?;
    Ok((data == content(name, bytes), fnv64(&data), data.len()))
}

impl Client for BulkClient {
    fn next_op(&mut self) -> (String, Value) {
        let mut rng = rand::thread_rng();
        if !self.written.is_empty() && (self.written.len() >= MAX_FILES || rng.gen_bool(0.4)) {
            let name = &self.written[rng.gen_range(0..self.written.len())];
            return ("read".into(), json!({ "file": name }));
        }
        self.n += 1;
        ("write".into(), json!({ "file": format!("p{}-{}", self.p, self.n) }))
    }

    fn invoke(&mut self, f: &str, v: &Value) -> Outcome {
        let name = v["file"].as_str().unwrap_or_default().to_string();
        if f == "read" {
            return match verify(&self.dir, &name, self.bytes) {
                Ok((intact, hash, len)) => {
                    Outcome::Ok(json!({ "file": name, "intact": intact, "hash": hash, "len": len }))
                }
                Err(e) => Outcome::Fail(errno(&e)),
            };
        }
        let data = content(&name, self.bytes);
        let res = std::fs::File::create(self.dir.join(&name)).and_then(|mut f| {
            f.write_all(&data)?;
            f.sync_all()
        });
        match res {
            Ok(()) => {
                self.written.push(name.clone());
                Outcome::Ok(json!({ "file": name, "hash": fnv64(&data), "len": data.len() }))
            }
            Err(e) => Outcome::Info(errno(&e)),
        }
    }
}

impl Workload for Bulk {
    fn name(&self) -> &'static str {
        "bulk"
    }

    fn setup(&self, mnt: &Path) -> Result<()> {
        std::fs::create_dir_all(mnt.join(DIR))?;
        Ok(())
    }

    fn think(&self) -> Duration {
        Duration::from_millis(50)
    }

    fn client(&self, p: usize, mnt: &Path) -> Box<dyn Client> {
        Box::new(BulkClient { p, dir: mnt.join(DIR), bytes: self.bytes, n: 0, written: Vec::new() })
    }

    fn final_read(&self, mnt: &Path) -> Outcome {
        let dir = mnt.join(DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => return Outcome::Fail(errno(&e)),
        };
        let mut files = serde_json::Map::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = match verify(&dir, &name, self.bytes) {
                Ok((intact, hash, len)) => json!({ "intact": intact, "hash": hash, "len": len }),
                Err(err) => json!({ "error": errno(&err) }),
            };
            files.insert(name, r);
        }
        Outcome::Ok(json!({ "files": files }))
    }

    fn check(&self, ops: &[Op]) -> Verdict {
        checker::bulk::check(ops)
    }
}
