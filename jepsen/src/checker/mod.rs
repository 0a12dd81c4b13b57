//! Checkers: from a history, a verdict. Each says whether what the clients saw is allowed by
//! the model of the workload, and when it is not, which operations show it.

pub mod append;
pub mod bulk;
pub mod namespace;
pub mod register;
pub mod wgl;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{pairs, Kind, Op};

/// One thing the model does not allow, with the operations (history indices) involved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: String,
    pub detail: String,
    pub ops: Vec<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

/// `verdict.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verdict {
    pub valid: bool,
    pub workload: String,
    /// Client operations by outcome.
    pub ops: Counts,
    /// Acknowledged writes missing at the end.
    pub lost: Vec<Value>,
    /// Things read that no one wrote.
    pub unexpected: Vec<Value>,
    pub anomalies: Vec<Anomaly>,
    /// Facts worth knowing that do not make the run invalid.
    pub notes: Vec<String>,
}

impl Verdict {
    /// An empty verdict for `workload` with the operation counts of `ops`.
    pub fn new(workload: &str, ops: &[Op]) -> Verdict {
        let mut c = Counts::default();
        for p in pairs(ops).iter().filter(|p| p.invoke.f != FINAL_READ) {
            match p.kind() {
                Kind::Ok => c.ok += 1,
                Kind::Fail => c.fail += 1,
                _ => c.info += 1,
            }
        }
        Verdict { workload: workload.into(), ops: c, ..Default::default() }
    }

    pub fn anomaly(&mut self, kind: &str, detail: String, ops: Vec<u64>) {
        self.anomalies.push(Anomaly { kind: kind.into(), detail, ops });
    }

    /// Valid when nothing was lost, unexpected or anomalous.
    pub fn finish(mut self) -> Verdict {
        self.valid = self.lost.is_empty() && self.unexpected.is_empty() && self.anomalies.is_empty();
        self
    }
}

/// The function name of the read of the whole state after healing.
pub const FINAL_READ: &str = "final-read";

/// The final read's completion, if it succeeded.
pub fn final_read(ops: &[Op]) -> Option<&Op> {
    ops.iter().rev().find(|o| o.f == FINAL_READ && o.kind == Kind::Ok)
}
