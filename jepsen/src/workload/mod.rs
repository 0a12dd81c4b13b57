//! Workloads: what the clients do through the mounts while the nemesis breaks things, and the
//! read done at the end (after healing) that the checker compares with what was acknowledged.
//!
//! Every client is a thread doing one blocking file-system call sequence at a time through a
//! FUSE mount, exactly as an application would; an operation stuck in a failover stays in
//! flight until the cluster answers (it is `info` if the run ends first).

pub mod append;
pub mod bulk;
pub mod namespace;
pub mod register;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::checker::Verdict;
use crate::history::{Kind, Op, Recorder};

/// How an operation ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok(Value),
    /// Certainly had no effect.
    Fail(String),
    /// May or may not have had an effect.
    Info(String),
}

/// One client: a source of operations and the code that performs them.
pub trait Client: Send {
    /// The next operation: its function name and argument.
    fn next_op(&mut self) -> (String, Value);
    /// Performs it (blocking) through the mount.
    fn invoke(&mut self, f: &str, value: &Value) -> Outcome;
}

pub trait Workload: Send + Sync {
    fn name(&self) -> &'static str;
    /// Creates what the clients need (folders) through mount `mnt`.
    fn setup(&self, mnt: &Path) -> Result<()>;
    /// Which of `mounts` client `p` uses.
    fn mount_for(&self, p: usize, mounts: usize) -> usize {
        p % mounts.max(1)
    }
    /// Pause between two operations of a client.
    fn think(&self) -> Duration {
        Duration::from_millis(5)
    }
    fn client(&self, p: usize, mnt: &Path) -> Box<dyn Client>;
    /// The read of the whole state after healing (`final-read` in the history).
    fn final_read(&self, mnt: &Path) -> Outcome;
    fn check(&self, ops: &[Op]) -> Verdict;
}

pub const NAMES: &[&str] = &["append", "register", "register-mounts", "namespace", "bulk"];

pub fn by_name(name: &str, bulk_mib: usize) -> Result<Arc<dyn Workload>> {
    Ok(match name {
        "append" => Arc::new(append::Append),
        "register" => Arc::new(register::Register::default()),
        "register-mounts" => Arc::new(register::Register { across_mounts: true, ..Default::default() }),
        "namespace" => Arc::new(namespace::Namespace::default()),
        "bulk" => Arc::new(bulk::Bulk { bytes: bulk_mib << 20 }),
        other => bail!("unknown workload {other:?} (one of {})", NAMES.join(", ")),
    })
}

/// A short name for an I/O error (`ENOENT`), for the history and for deciding outcomes.
pub fn errno(e: &std::io::Error) -> String {
    match e.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(n) => format!("{n:?}"),
        None => e.to_string(),
    }
}

/// Performs one operation and records its invocation and completion.
pub fn step(history: &dyn Recorder, p: i64, client: &mut dyn Client) {
    let (f, value) = client.next_op();
    history.record(p, Kind::Invoke, &f, value.clone(), None);
    let (kind, v, err) = match client.invoke(&f, &value) {
        Outcome::Ok(v) => (Kind::Ok, v, None),
        Outcome::Fail(e) => (Kind::Fail, value, Some(e)),
        Outcome::Info(e) => (Kind::Info, value, Some(e)),
    };
    history.record(p, kind, &f, v, err);
}

/// The running clients.
pub struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts `n` clients of `w`, spread over `mounts`.
pub fn start(w: &Arc<dyn Workload>, mounts: &[PathBuf], n: usize, history: &Arc<dyn Recorder>) -> Result<Clients> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for p in 0..n {
        let mnt = mounts[w.mount_for(p, mounts.len())].clone();
        let (w, stop, history) = (w.clone(), stop.clone(), history.clone());
        threads.push(std::thread::Builder::new().name(format!("client-{p}")).spawn(move || {
            let mut c = w.client(p, &mnt);
            while !stop.load(Ordering::SeqCst) {
                step(history.as_ref(), p as i64, c.as_mut());
                std::thread::sleep(w.think());
            }
        })?);
    }
    Ok(Clients { stop, threads })
}

impl Clients {
    /// Asks every client to stop and waits up to `grace` for operations in flight; clients
    /// still blocked after that are left behind (their operations stay `info`).
    pub fn stop(self, grace: Duration) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let stuck = self.threads.iter().filter(|t| !t.is_finished()).count();
        for t in self.threads.into_iter().filter(|t| t.is_finished()) {
            let _ = t.join();
        }
        stuck
    }
}

/// A small deterministic generator (xorshift64*), so that a file's content follows from its name.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a, 64 bits: a checksum for comparing file contents.
pub fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
