//! namespace: concurrent exclusive creates, unlinks, renames and listings of a few names in
//! one shared folder, checked against a model of the folder (a set of names). All clients
//! share one mount, for the same reason as the register workload.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use rand::Rng;
use serde_json::{json, Value};

use super::{errno, Client, Outcome, Workload};
use crate::checker::{self, Verdict};
use crate::history::Op;

const DIR: &str = "ns";

pub struct Namespace {
    pub names: u8,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace { names: 5 }
    }
}

struct NsClient {
    dir: PathBuf,
    names: u8,
}

fn file(dir: &Path, x: u64) -> PathBuf {
    dir.join(format!("f{x}"))
}

/// `done` when the call succeeded, `not done` for the one error the model explains (`expected`),
/// unknown for anything else.
fn outcome(r: std::io::Result<()>, expected: ErrorKind) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok(json!({ "done": true })),
        Err(e) if e.kind() == expected => Outcome::Ok(json!({ "done": false })),
        Err(e) => Outcome::Info(errno(&e)),
    }
}

/// The names present in `dir`, as a bit set.
fn list(dir: &Path) -> std::io::Result<u64> {
    let mut bits = 0u64;
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(x) = name.strip_prefix('f').and_then(|n| n.parse::<u32>().ok()).filter(|x| *x < 32) {
            bits |= 1 << x;
        }
    }
    Ok(bits)
}

impl Client for NsClient {
    fn next_op(&mut self) -> (String, Value) {
        let mut rng = rand::thread_rng();
        let (a, b) = (rng.gen_range(0..self.names), rng.gen_range(0..self.names));
        match rng.gen_range(0..8) {
            0..=2 => ("create".into(), json!({ "name": a })),
            3..=4 => ("unlink".into(), json!({ "name": a })),
            5..=6 => ("rename".into(), json!({ "from": a, "to": b })),
            _ => ("list".into(), json!({})),
        }
    }

    fn invoke(&mut self, f: &str, v: &Value) -> Outcome {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        match f {
            "create" => outcome(
                OpenOptions::new().write(true).create_new(true).open(file(&self.dir, n("name"))).map(drop),
                ErrorKind::AlreadyExists,
            ),
            "unlink" => outcome(std::fs::remove_file(file(&self.dir, n("name"))), ErrorKind::NotFound),
            "rename" => {
                outcome(std::fs::rename(file(&self.dir, n("from")), file(&self.dir, n("to"))), ErrorKind::NotFound)
            }
            _ => match list(&self.dir) {
                Ok(bits) => Outcome::Ok(json!({ "names": bits })),
                Err(e) => Outcome::Fail(errno(&e)),
            },
        }
    }
}

impl Workload for Namespace {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn setup(&self, mnt: &Path) -> Result<()> {
        std::fs::create_dir_all(mnt.join(DIR))?;
        Ok(())
    }

    fn mount_for(&self, _p: usize, _mounts: usize) -> usize {
        0
    }

    fn think(&self) -> Duration {
        Duration::from_millis(20)
    }

    fn client(&self, _p: usize, mnt: &Path) -> Box<dyn Client> {
        Box::new(NsClient { dir: mnt.join(DIR), names: self.names })
    }

    fn final_read(&self, mnt: &Path) -> Outcome {
        match list(&mnt.join(DIR)) {
            Ok(bits) => Outcome::Ok(json!({ "names": bits })),
            Err(e) => Outcome::Fail(errno(&e)),
        }
    }

    fn check(&self, ops: &[Op]) -> Verdict {
        checker::namespace::check(ops)
    }
}
