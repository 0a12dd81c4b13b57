//! The quick fault-injection run of CI: the append workload for about 90 seconds under
//! leader kills, an isolated leader, partitions into halves, pauses, a chunkserver kill and a
//! paused chunkserver, on 3 masters and 3 chunkservers in network namespaces. It needs root, /dev/fuse, `ip` and
//! `iptables`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, Context, Result};

/// `alces-jepsen` and the daemons are in the target folder above this test's `deps/`.
fn jepsen_bin() -> Result<PathBuf> {
    let dir = alces_ops::launcher::bin_dir()?;
    let bin = dir.join("alces-jepsen");
    bin.exists().then_some(bin).ok_or_else(|| anyhow!("alces-jepsen not built in {}", dir.display()))
}

#[test]
fn append_survives_kills_partitions_and_pauses() -> Result<()> {
    let dir = alces_testkit::temp_dir("alces-jepsen-quick");
    let out = dir.path().join("run");
    let status = Command::new(jepsen_bin()?)
        .args(["run", "--workload", "append", "--time", "90", "--nodes", "3", "--chunkservers", "3"])
        .args(["--nemesis", "kill-leader,partition-leader,pause,partition-halves,kill-chunkserver,pause-chunkserver"])
        .args(["--quiet", "6", "--fault", "8", "--dir"])
        .arg(&out)
        .status()
        .context("running alces-jepsen")?;
    let text = std::fs::read_to_string(out.join("verdict.json")).context("reading verdict.json")?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    assert!(status.success(), "alces-jepsen failed ({status}); verdict: {text}");
    assert_eq!(v["valid"], true, "{text}");
    let ok = v["ops"]["ok"].as_u64().unwrap_or(0);
    assert!(ok > 500, "only {ok} acknowledged appends: the run proves little\n{text}");
    let history = std::fs::read_to_string(out.join("history.jsonl"))?;
    // Faults that were injected: the nemesis's starts without an error.
    let mut faults = Vec::new();
    for line in history.lines() {
        let op: serde_json::Value = serde_json::from_str(line).context("a history line")?;
        if op["process"] == -1 && op["f"] == "start" && op.get("error").is_none() {
            faults.push(op["value"]["fault"].as_str().unwrap_or_default().to_string());
        }
    }
    // 90 s of 6 s calm and 8 s faults: 6 of them (each kind once), unless injecting or
    // healing is slow.
    let kinds: std::collections::BTreeSet<&String> = faults.iter().collect();
    assert!(faults.len() >= 5 && kinds.len() >= 5, "only these faults were injected: {faults:?}");
    assert!(out.join("report.html").exists());
    Ok(())
}
