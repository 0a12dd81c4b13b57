//! The checkers can fail. Runs under a full-cluster restart (every master and chunkserver
//! SIGKILLed, then started again): `append` and `register` as shipped must be valid; `register`
//! with the test-only switch `TEST_UNSAFE_DISABLE_WAL = 1`, which makes the masters acknowledge
//! changes that are only in memory (RocksDB without its write-ahead log, flushed every few
//! seconds), must be reported invalid, with the reads that saw a register go back in time.
//!
//! (`append` does not show that sabotage: the appends whose new size the masters forgot are
//! on the chunkservers, and the mount, which remembers how long it made each file, states the
//! size again with its next append.)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, Context, Result};

fn jepsen_bin() -> Result<PathBuf> {
    let dir = alces_ops::launcher::bin_dir()?;
    let bin = dir.join("alces-jepsen");
    bin.exists().then_some(bin).ok_or_else(|| anyhow!("alces-jepsen not built in {}", dir.display()))
}

/// One run of `workload` with full restarts; its verdict.
fn run(dir: &Path, workload: &str, master_options: &[&str]) -> Result<serde_json::Value> {
    let mut cmd = Command::new(jepsen_bin()?);
    cmd.args(["run", "--workload", workload, "--nemesis", "restart", "--time", "25", "--quiet", "8"])
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
fn acknowledged_but_not_durable_changes_are_reported() -> Result<()> {
    let tmp = alces_testkit::temp_dir("alces-jepsen-sabotage");
    let appends = run(&tmp.path().join("append"), "append", &[])?;
    assert_eq!(appends["valid"], true, "append as shipped: {appends}");
    assert!(appends["ops"]["ok"].as_u64().unwrap_or(0) > 300, "too few appends to mean anything: {appends}");

    let sound = run(&tmp.path().join("register"), "register", &[])?;
    assert_eq!(sound["valid"], true, "register as shipped: {sound}");
    assert!(sound["ops"]["ok"].as_u64().unwrap_or(0) > 300, "too few operations to mean anything: {sound}");

    let broken = run(&tmp.path().join("register-no-wal"), "register", &["TEST_UNSAFE_DISABLE_WAL = 1"])?;
    assert_eq!(broken["valid"], false, "register without the write-ahead log: {broken}");
    // Found, not guessed: an order no history explains, with the operations involved (a
    // search that gave up is an anomaly too, but proves nothing).
    let found = broken["anomalies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["kind"] == "not-linearizable" && a["ops"].as_array().is_some_and(|o| !o.is_empty()))
        .count();
    assert!(found > 0, "the run is invalid but shows no non-linearizable operations: {broken}");
    let anomalies = broken["anomalies"].as_array().map(Vec::len).unwrap_or(0);
    eprintln!("without the write-ahead log: {anomalies} anomalies reported");
    Ok(())
}
