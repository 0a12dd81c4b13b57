//! The history of a run: one record per invocation and one per completion, for every client
//! operation and every fault, in the order they happened. It is written as JSONL while the run
//! goes (a crash leaves what happened so far) and kept in memory for the checkers.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The process number of the nemesis in the history (clients are 0, 1, ...).
pub const NEMESIS: i64 = -1;

/// What a record says about an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    /// Completed and took effect.
    Ok,
    /// Completed and certainly did not take effect.
    Fail,
    /// Unknown: it may or may not have taken effect (an error after the request was sent, a
    /// timeout, a fault event of the nemesis).
    Info,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub index: u64,
    /// Seconds since the start of the run.
    pub time: f64,
    pub process: i64,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub f: String,
    pub value: Value,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// A completed client operation: its invocation and completion records.
#[derive(Debug, Clone)]
pub struct Pair {
    pub invoke: Op,
    /// None when the run ended before the operation completed (treated as `info`).
    pub complete: Option<Op>,
}

impl Pair {
    pub fn kind(&self) -> Kind {
        self.complete.as_ref().map(|c| c.kind).unwrap_or(Kind::Info)
    }
}

/// Where the records of client operations go: the run's [`History`], or (in the clients'
/// process) the pipe to the suite, which records them in the history as they arrive.
pub trait Recorder: Send + Sync {
    fn record(&self, process: i64, kind: Kind, f: &str, value: Value, error: Option<String>);
}

impl Recorder for History {
    fn record(&self, process: i64, kind: Kind, f: &str, value: Value, error: Option<String>) {
        History::record(self, process, kind, f, value, error);
    }
}

pub struct History {
    start: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    ops: Vec<Op>,
    out: BufWriter<File>,
}

impl History {
    pub fn create(path: &Path) -> Result<History> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(History { start: Instant::now(), inner: Mutex::new(Inner { ops: Vec::new(), out: BufWriter::new(f) }) })
    }

    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Appends one record and returns its index.
    pub fn record(&self, process: i64, kind: Kind, f: &str, value: Value, error: Option<String>) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let op = Op { index: g.ops.len() as u64, time: self.elapsed(), process, kind, f: f.into(), value, error };
        if let Ok(line) = serde_json::to_string(&op) {
            let _ = writeln!(g.out, "{line}");
        }
        g.ops.push(op);
        g.ops.len() as u64 - 1
    }

    pub fn flush(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = g.out.flush();
    }

    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).ops.clone()
    }
}

/// Matches every client invocation with its completion (the next record of the same process).
pub fn pairs(ops: &[Op]) -> Vec<Pair> {
    let mut open: std::collections::HashMap<i64, usize> = Default::default();
    let mut out: Vec<Pair> = Vec::new();
    for op in ops.iter().filter(|o| o.process != NEMESIS) {
        if op.kind == Kind::Invoke {
            open.insert(op.process, out.len());
            out.push(Pair { invoke: op.clone(), complete: None });
        } else if let Some(i) = open.remove(&op.process) {
            out[i].complete = Some(op.clone());
        }
    }
    out
}

/// Reads a history file back (for re-checking a finished run).
pub fn load(path: &Path) -> Result<Vec<Op>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1)))
        .collect()
}
