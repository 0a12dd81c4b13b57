//! Running the system tools the suite needs (`ip`, `iptables`, `tc`, `fusermount3`, `umount`)
//! with their output captured, so that a failure says which command failed and why.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs `program args...` and returns its standard output; a non-zero exit is an error that
/// carries the command line and its standard error.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    tracing::debug!(cmd = %format!("{program} {}", args.join(" ")), "running");
    let out = Command::new(program).args(args).output().with_context(|| format!("starting {program}"))?;
    succeeded(program, args, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An error naming the command line and its standard error, if it exited non-zero.
fn succeeded(program: &str, args: &[&str], out: &std::process::Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Like [`run`], for clean-up paths where a failure (the thing is already gone) is expected:
/// the error is logged at debug level and otherwise ignored.
pub fn run_quiet(program: &str, args: &[&str]) -> bool {
    match run(program, args) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!("{e:#}");
            false
        }
    }
}

/// Runs a command inside the network namespace `ns`. `nsenter --net` enters the network
/// namespace only: `ip netns exec` also builds a mount namespace, which is slow on a machine
/// busy with FUSE mounts and would delay every fault.
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let netns = format!("--net=/run/netns/{ns}");
    let mut all = vec![netns.as_str(), program];
    all.extend_from_slice(args);
    run("nsenter", &all)
}

/// Runs `program args...` with `input` on its standard input.
pub fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    succeeded(program, args, &out)
}
