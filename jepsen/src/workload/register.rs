//! register: a few small files used as registers. A write replaces a file whole (write a
//! private temporary file, fsync, rename it over the register), a read reads it; a missing
//! file is the initial empty register.
//!
//! All clients share one mount: the kernel caches attributes and entries of a FUSE mount for
//! the mount's TTL, so two mounts can disagree for that long by design, and a linearizable
//! register across mounts needs those caches off (see the README).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use rand::Rng;
use serde_json::{json, Value};

use super::{errno, Client, Outcome, Workload};
use crate::checker::{self, Verdict};
use crate::history::Op;

const DIR: &str = "reg";

pub struct Register {
    pub keys: u64,
    /// Spread the clients over every mount (`register-mounts`): shows what the mounts' kernel
    /// caches do to linearizability, and that the checker sees it.
    pub across_mounts: bool,
}

impl Default for Register {
    fn default() -> Self {
        Register { keys: 4, across_mounts: false }
    }
}

struct RegClient {
    p: usize,
    dir: PathBuf,
    keys: u64,
    next_value: u64,
}

impl RegClient {
    fn write(&self, key: u64, value: u64) -> Outcome {
        let tmp = self.dir.join(format!(".k{key}.p{}", self.p));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(format!("{value}\n").as_bytes())?;
            f.sync_all()
        });
        if let Err(e) = written {
            // The register itself was not touched.
            return Outcome::Fail(format!("temporary file: {}", errno(&e)));
        }
        match std::fs::rename(&tmp, self.dir.join(format!("k{key}"))) {
            Ok(()) => Outcome::Ok(json!({ "key": key, "value": value })),
            Err(e) => Outcome::Info(format!("rename: {}", errno(&e))),
        }
    }

    fn read(&self, key: u64) -> Outcome {
        match std::fs::read_to_string(self.dir.join(format!("k{key}"))) {
            Ok(s) => match s.trim().parse::<u64>() {
                Ok(v) => Outcome::Ok(json!({ "key": key, "value": v })),
                // A torn register is a value no one wrote: the checker will refuse it.
                Err(_) => Outcome::Ok(json!({ "key": key, "value": u64::MAX, "raw": s })),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Ok(json!({ "key": key, "value": null })),
            Err(e) => Outcome::Fail(errno(&e)),
        }
    }
}

impl Client for RegClient {
    fn next_op(&mut self) -> (String, Value) {
        let mut rng = rand::thread_rng();
        let key = rng.gen_range(0..self.keys);
        if rng.gen_bool(0.5) {
            self.next_value += 1;
            ("write".into(), json!({ "key": key, "value": self.p as u64 * 1_000_000 + self.next_value }))
        } else {
            ("read".into(), json!({ "key": key }))
        }
    }

    fn invoke(&mut self, f: &str, value: &Value) -> Outcome {
        let key = value["key"].as_u64().unwrap_or(0);
        match f {
            "write" => self.write(key, value["value"].as_u64().unwrap_or(0)),
            _ => self.read(key),
        }
    }
}

impl Workload for Register {
    fn name(&self) -> &'static str {
        "register"
    }

    fn setup(&self, mnt: &Path) -> Result<()> {
        std::fs::create_dir_all(mnt.join(DIR))?;
        Ok(())
    }

    fn mount_for(&self, p: usize, mounts: usize) -> usize {
        if self.across_mounts {
            p % mounts.max(1)
        } else {
            0
        }
    }

    fn think(&self) -> Duration {
        Duration::from_millis(20)
    }

    fn client(&self, p: usize, mnt: &Path) -> Box<dyn Client> {
        Box::new(RegClient { p, dir: mnt.join(DIR), keys: self.keys, next_value: 0 })
    }

    fn final_read(&self, mnt: &Path) -> Outcome {
        let c = RegClient { p: 0, dir: mnt.join(DIR), keys: self.keys, next_value: 0 };
        let values: Vec<Value> = (0..self.keys)
            .map(|k| match c.read(k) {
                Outcome::Ok(v) => v,
                other => json!({ "key": k, "error": format!("{other:?}") }),
            })
            .collect();
        Outcome::Ok(json!({ "registers": values }))
    }

    fn check(&self, ops: &[Op]) -> Verdict {
        checker::register::check(ops)
    }
}
