//! `alces-cluster` run as a person runs it, each command its own process: `up` leaves a
//! cluster with a mount running in the background, `status` (text and `--json`) shows it,
//! `alces admin --cluster DIR` changes it with the token `up` made, `down` unmounts and stops
//! every process.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use alces_ops::launcher::{bin_dir, is_mounted, ClusterFile};
use alces_testkit::temp_dir;
use anyhow::{ensure, Context, Result};

/// Runs a binary of the workspace; its stdout, or an error with its stderr.
fn run(bin: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(bin_dir()?.join(bin)).args(args).env_remove("ALCES_ADMIN_TOKEN").output()?;
    ensure!(
        out.status.success(),
        "{bin} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Stops the cluster if the test fails half-way.
struct Down<'a>(&'a str);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = run("alces-cluster", &["down", "--dir", self.0]);
    }
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
        || fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X'])))
}

#[test]
fn up_status_admin_and_down_from_separate_processes() -> Result<()> {
    let tmp = temp_dir("alces-cluster-cli-");
    let (dir, mnt) = (tmp.path().join("cluster"), tmp.path().join("mnt"));
    let (d, m) = (dir.to_str().context("path")?, mnt.to_str().context("path")?);
    let up = run("alces-cluster", &["up", "--dir", d, "--masters", "3", "--chunkservers", "2", "--mount", m])?;
    let _down = Down(d);
    ensure!(up.contains("leader: master") && up.contains("monitor: http://"), "up printed:\n{up}");
    ensure!(up.contains("admin token: "), "up printed:\n{up}");
    ensure!(is_mounted(&mnt), "no mount at {m} after up");
    fs::write(mnt.join("hello"), b"moose")?;
    ensure!(fs::read(mnt.join("hello"))? == b"moose");

    let status = run("alces-cluster", &["status", "--dir", d])?;
    let running = status.lines().filter(|l| l.trim_end().ends_with("running")).count();
    ensure!(running == 6, "3 masters, 2 chunkservers and a mount should run:\n{status}");
    let j: serde_json::Value = serde_json::from_str(&run("alces-cluster", &["status", "--dir", d, "--json"])?)?;
    ensure!(j["cluster"]["masters"].as_array().map(Vec::len) == Some(3), "{j}");
    ensure!(j["view"]["chunkservers"].as_array().map(Vec::len) == Some(2), "{j}");
    ensure!(j["view"]["leader"].as_u64().is_some(), "{j}");

    // The token `up` made is the masters': a change with `--cluster DIR` alone goes through.
    let file = ClusterFile::read(&dir)?;
    let token = file.admin_token()?.context("no admin token recorded")?;
    ensure!(token.len() >= 32, "a short token: {token:?}");
    let mode = fs::metadata(&file.admin_token_file)?.permissions();
    ensure!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077 == 0, "the token file is readable by others");
    let out = run("alces", &["admin", "--cluster", d, "snapshot"])?;
    ensure!(out.contains("built a snapshot"), "{out}");

    let pids: Vec<u32> = file
        .masters
        .iter()
        .map(|m| m.pid)
        .chain(file.chunkservers.iter().map(|c| c.pid))
        .chain(file.mounts.iter().map(|m| m.pid))
        .collect();
    ensure!(pids.len() == 6 && pids.iter().all(|&p| p > 0), "{pids:?}");
    let down = run("alces-cluster", &["down", "--dir", d])?;
    ensure!(down.contains("stopped"), "down printed:\n{down}");
    ensure!(!is_mounted(&mnt), "still mounted after down");
    ensure!(!dir.join("cluster.json").exists(), "cluster.json left after down");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids.iter().all(|&p| gone(p)) {
        ensure!(Instant::now() < deadline, "processes left after down: {:?}", pids.iter().filter(|&&p| !gone(p)));
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
