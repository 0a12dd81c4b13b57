//! The checkers can fail: an append run under full-cluster restarts (every master and
//! chunkserver SIGKILLed, then started again) with the test-only switch
//! `TEST_UNSAFE_DISABLE_WAL = 1`, which makes the masters acknowledge changes that are only in
//! memory (RocksDB without its write-ahead log, flushed every few seconds). The run must be
//! reported invalid with acknowledged appends lost.
//!
//! The same run as shipped is not part of CI yet: it is valid in most runs but lost one
//! acknowledged append in one (see the open bug in the README's "Fault injection").

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, Context, Result};

fn jepsen_bin() -> Result<PathBuf> {
    let dir = alces_ops::launcher::bin_dir()?;
    let bin = dir.join("alces-jepsen");
    bin.exists().then_some(bin).ok_or_else(|| anyhow!("alces-jepsen not built in {}", dir.display()))
}

/// One append run with one full restart; its verdict.
fn run(dir: &Path, master_options: &[&str]) -> Result<serde_json::Value> {
    let mut cmd = Command::new(jepsen_bin()?);
    cmd.args(["run", "--workload", "append", "--nemesis", "restart", "--time", "25", "--quiet", "8"])
        .args(["--fault", "4", "--nodes", "3", "--chunkservers", "3", "--dir"])
        .arg(dir);
    for o in master_options {
        cmd.args(["--master-option", o]);
    }
    let status = cmd.status().context("running alces-jepsen")?;
    let text = std::fs::read_to_string(dir.join("verdict.json")).context("reading verdict.json")?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    // 0: valid, 1: invalid; 2 means the run itself failed.
    assert!(status.code() == Some(0) || status.code() == Some(1), "alces-jepsen failed ({status}): {text}");
    let history = std::fs::read_to_string(dir.join("history.jsonl"))?;
    let restarts = history.lines().filter(|l| l.contains("\"process\":-1") && l.contains("\"f\":\"start\"")).count();
    assert!(restarts >= 1, "no restart was injected: {text}");
    Ok(v)
}

#[test]
fn acknowledged_but_not_durable_appends_are_reported_lost() -> Result<()> {
    let tmp = alces_testkit::temp_dir("alces-jepsen-sabotage");
    let broken = run(&tmp.path().join("no-wal"), &["TEST_UNSAFE_DISABLE_WAL = 1"])?;
    assert_eq!(broken["valid"], false, "without the write-ahead log: {broken}");
    let lost = broken["lost"].as_array().map(Vec::len).unwrap_or(0);
    assert!(lost > 0, "the run is invalid but reports no lost append: {broken}");
    assert!(broken["ops"]["ok"].as_u64().unwrap_or(0) > 300, "too few appends to mean anything: {broken}");
    eprintln!("without the write-ahead log: {lost} acknowledged appends lost, as the checker reports");
    Ok(())
}
