//! The quick fault-injection run of CI: the append workload for about 90 seconds under
//! leader kills, an isolated leader, partitions into halves, pauses, a chunkserver kill and a
//! paused chunkserver, on 3 masters and 3 chunkservers in network namespaces. It needs root, /dev/fuse, `ip` and
//! `iptables`. Then a run interrupted with SIGINT, which must leave nothing behind.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, Context, Result};

/// `alces-jepsen` and the daemons are in the target folder above this test's `deps/`.
fn jepsen_bin() -> Result<PathBuf> {
    let dir = alces_ops::launcher::bin_dir()?;
    let bin = dir.join("alces-jepsen");
    bin.exists().then_some(bin).ok_or_else(|| anyhow!("alces-jepsen not built in {}", dir.display()))
}

/// The runs share the bridge, the addresses and the state file: one at a time.
static ONE_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn append_survives_kills_partitions_and_pauses() -> Result<()> {
    let _one = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
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

/// What a run may leave on the machine that is still there: namespaces and links of the
/// suite, its bridge, FUSE mounts or processes under `dir`, the state file.
fn leftovers(dir: &std::path::Path) -> Result<Vec<String>> {
    use alces_jepsen::net;
    let mut left: Vec<String> = net::our_namespaces().into_iter().chain(net::our_links()).collect();
    if std::path::Path::new("/sys/class/net").join(net::BRIDGE).exists() {
        left.push(format!("bridge {}", net::BRIDGE));
    }
    let here = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    left.extend(mounts.lines().filter(|l| l.contains(&here)).map(|l| format!("mount {l}")));
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&here) {
            left.push(format!("process {}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    if std::path::Path::new(alces_jepsen::cluster::STATE_FILE).exists() {
        left.push(alces_jepsen::cluster::STATE_FILE.into());
    }
    Ok(left)
}

/// SIGINT in the middle of a run (clients writing, a fault on): the suite stops, and takes
/// down every namespace, mount and process it made.
#[test]
fn an_interrupted_run_leaves_nothing_behind() -> Result<()> {
    let _one = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = alces_testkit::temp_dir("alces-jepsen-interrupted");
    let out = dir.path().join("run");
    let mut child = Command::new(jepsen_bin()?)
        .args(["run", "--workload", "append", "--time", "300", "--nodes", "3", "--chunkservers", "3"])
        .args(["--nemesis", "pause,partition-halves", "--quiet", "3", "--fault", "60", "--dir"])
        .arg(&out)
        .spawn()
        .context("running alces-jepsen")?;
    // Under way: appends acknowledged and a fault injected.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let history = std::fs::read_to_string(out.join("history.jsonl")).unwrap_or_default();
        let faulted = history.lines().any(|l| l.contains("\"process\":-1") && l.contains("\"f\":\"start\""));
        if faulted && history.contains("\"type\":\"ok\"") {
            break;
        }
        if std::time::Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            return Err(anyhow!("the run did not get under way; see {}", out.display()));
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err(anyhow!("alces-jepsen still running 120 s after SIGINT"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let left = leftovers(dir.path())?;
    assert!(left.is_empty(), "after SIGINT ({status}) the run left:\n{}", left.join("\n"));
    Ok(())
}
