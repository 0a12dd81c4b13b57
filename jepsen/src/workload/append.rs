//! append: every client appends numbered records to its own file and fsyncs each one. Every
//! acknowledged record must be there at the end, in the order it was written; nothing may
//! appear that was never written.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{json, Value};

use super::{errno, Client, Outcome, Workload};
use crate::checker::{self, Verdict};
use crate::history::Op;

pub struct Append;

const DIR: &str = "append";

/// A record as written: fixed width, so a torn write cannot parse as another record.
pub fn record(p: usize, seq: u64) -> String {
    format!("{p:04}:{seq:08}\n")
}

/// The records of one file, in file order; bytes that are not records are counted (a write
/// that failed may leave a hole or part of a record behind, which POSIX allows).
pub fn parse(text: &str) -> (Vec<(usize, u64)>, usize) {
    let mut recs = Vec::new();
    let mut garbage = 0;
    for line in text.split('\n') {
        let line = line.trim_matches('\0');
        if line.is_empty() {
            continue;
        }
        match line.split_once(':').and_then(|(p, s)| Some((p.parse().ok()?, s.parse().ok()?))) {
            Some(r) if line.len() == 13 => recs.push(r),
            _ => garbage += 1,
        }
    }
    (recs, garbage)
}

struct AppendClient {
    p: usize,
    path: PathBuf,
    seq: u64,
}

impl Client for AppendClient {
    fn next_op(&mut self) -> (String, Value) {
        self.seq += 1;
        ("append".into(), json!({ "seq": self.seq }))
    }

    /// Opens the file, appends one record, fsyncs and closes: each append starts from the
    /// size the cluster gives at open, so a size the cluster forgot shows (a descriptor kept
    /// open would go on appending at the end the kernel remembers).
    fn invoke(&mut self, _f: &str, value: &Value) -> Outcome {
        let seq = value["seq"].as_u64().unwrap_or(0);
        let mut f = match OpenOptions::new().append(true).create(true).open(&self.path) {
            Ok(f) => f,
            Err(e) => return Outcome::Fail(format!("open: {}", errno(&e))),
        };
        match f.write_all(record(self.p, seq).as_bytes()).and_then(|_| f.sync_all()) {
            Ok(()) => Outcome::Ok(value.clone()),
            Err(e) => Outcome::Info(errno(&e)),
        }
    }
}

impl Workload for Append {
    fn name(&self) -> &'static str {
        "append"
    }

    fn setup(&self, mnt: &Path) -> Result<()> {
        std::fs::create_dir_all(mnt.join(DIR))?;
        Ok(())
    }

    fn client(&self, p: usize, mnt: &Path) -> Box<dyn Client> {
        Box::new(AppendClient { p, path: mnt.join(DIR).join(format!("p{p}.log")), seq: 0 })
    }

    fn final_read(&self, mnt: &Path) -> Outcome {
        let dir = mnt.join(DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => return Outcome::Fail(format!("readdir: {}", errno(&e))),
        };
        let mut files = BTreeMap::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match std::fs::read(e.path()) {
                Ok(bytes) => {
                    let (recs, garbage) = parse(&String::from_utf8_lossy(&bytes));
                    files.insert(name, json!({ "records": recs, "garbage": garbage }));
                }
                Err(e) => return Outcome::Fail(format!("read {name}: {}", errno(&e))),
            }
        }
        Outcome::Ok(json!({ "files": files }))
    }

    fn check(&self, ops: &[Op]) -> Verdict {
        checker::append::check(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_garbage_is_counted() {
        let text = format!("{}{}\0\0\0{}12:3\n", record(1, 1), record(1, 2), record(2, 7));
        let (recs, garbage) = parse(&text);
        assert_eq!(recs, vec![(1, 1), (1, 2), (2, 7)]);
        assert_eq!(garbage, 1);
    }
}
