//! The clients run in a process of their own (`alces-jepsen clients`, started by the run),
//! never in the suite's process.
//!
//! Every command the suite runs (iptables, tc, a daemon restarted at heal) is forked from the
//! suite, and at exec the child closes its copies of the suite's descriptors. Closing a
//! descriptor of a file on a FUSE mount sends the file system a flush, which waits for that
//! file's write-out in progress: with the cluster cut off, up to the mount's retry time. Faults
//! and heals were delayed by as much (a minute and more), so the suite holds no file of a
//! mount open: its clients' files live in this process.
//!
//! The protocol: the worker writes one JSON [`Msg`] per line on its standard output (every
//! record of an operation as it happens, which the suite enters in the history in that
//! order); it reads commands on its standard input, `stop SECONDS` and `final-read PROCESS`,
//! and exits when its input closes (the suite ended or died).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::checker::FINAL_READ;
use crate::history::{History, Kind, Recorder};
use crate::workload::{self, Outcome, Workload};

/// How long the final read may take before it is recorded as failed.
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Msg {
    Record {
        process: i64,
        kind: Kind,
        f: String,
        value: Value,
        error: Option<String>,
    },
    /// The clients were told to stop; this many were still blocked after the grace time.
    Stopped {
        stuck: usize,
    },
    FinalReadDone,
}

/// The worker's side: records go out as lines on standard output, one write each.
struct Forward {
    out: Mutex<std::io::Stdout>,
}

impl Forward {
    fn send(&self, msg: &Msg) {
        if let Ok(line) = serde_json::to_string(msg) {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

impl Recorder for Forward {
    fn record(&self, process: i64, kind: Kind, f: &str, value: Value, error: Option<String>) {
        self.send(&Msg::Record { process, kind, f: f.to_string(), value, error });
    }
}

/// What the worker runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub workload: String,
    pub bulk_mib: usize,
    pub clients: usize,
    pub mounts: Vec<PathBuf>,
}

/// `alces-jepsen clients`: the body of the worker process. Returns when its input closes.
pub fn serve(plan: &Plan) -> Result<()> {
    let w = workload::by_name(&plan.workload, plan.bulk_mib)?;
    let first = plan.mounts.first().ok_or_else(|| anyhow!("no mount given"))?;
    let forward = Arc::new(Forward { out: Mutex::new(std::io::stdout()) });
    let recorder: Arc<dyn Recorder> = forward.clone();
    let mut running = Some(workload::start(&w, &plan.mounts, plan.clients, &recorder)?);
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["stop", secs] => {
                let grace = Duration::from_secs(secs.parse().context("stop: seconds")?);
                let stuck = running.take().map(|c| c.stop(grace)).unwrap_or(0);
                forward.send(&Msg::Stopped { stuck });
            }
            ["final-read", process] => {
                final_read(&w, first, process.parse().context("final-read: process")?, forward.as_ref());
                forward.send(&Msg::FinalReadDone);
            }
            _ => bail!("unknown command {line:?}"),
        }
    }
    Ok(())
}

/// Reads the whole state through `mnt` on a thread of its own, so that a cluster that never
/// recovered makes the read fail after a while instead of hanging the run.
fn final_read(w: &Arc<dyn Workload>, mnt: &Path, process: i64, history: &dyn Recorder) {
    history.record(process, Kind::Invoke, FINAL_READ, json!(null), None);
    let (tx, rx) = mpsc::channel();
    let (w2, mnt2) = (w.clone(), mnt.to_path_buf());
    let _ = std::thread::Builder::new().name("final-read".into()).spawn(move || {
        let _ = tx.send(w2.final_read(&mnt2));
    });
    match rx.recv_timeout(FINAL_READ_TIMEOUT) {
        Ok(Outcome::Ok(v)) => history.record(process, Kind::Ok, FINAL_READ, v, None),
        Ok(Outcome::Fail(e)) | Ok(Outcome::Info(e)) => {
            history.record(process, Kind::Fail, FINAL_READ, json!(null), Some(e))
        }
        Err(_) => history.record(process, Kind::Fail, FINAL_READ, json!(null), Some("timed out".into())),
    };
}

/// The suite's side: the worker process, and what it reported.
pub struct Worker {
    child: Child,
    input: ChildStdin,
    replies: mpsc::Receiver<Msg>,
}

impl Worker {
    /// Starts the clients of `plan` in a new process (this program, `clients`); their records
    /// go into `history` as they arrive.
    pub fn start(plan: &Plan, history: Arc<History>) -> Result<Worker> {
        let exe = std::env::current_exe().context("finding this program")?;
        let mut cmd = Command::new(exe);
        cmd.arg("clients")
            .args(["--workload", &plan.workload])
            .args(["--bulk-mib", &plan.bulk_mib.to_string()])
            .args(["--clients", &plan.clients.to_string()]);
        for m in &plan.mounts {
            cmd.arg("--mount").arg(m);
        }
        // A process group of its own: a Ctrl-C at the terminal reaches the suite, which stops
        // the worker itself.
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .context("starting the clients' process")?;
        let input = child.stdin.take().context("the clients' input")?;
        let output = child.stdout.take().context("the clients' output")?;
        let (tx, replies) = mpsc::channel();
        std::thread::Builder::new().name("clients-output".into()).spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Msg>(&line) {
                    Ok(Msg::Record { process, kind, f, value, error }) => {
                        history.record(process, kind, &f, value, error);
                    }
                    Ok(other) => {
                        let _ = tx.send(other);
                    }
                    Err(e) => tracing::warn!(error = %e, %line, "unreadable line from the clients' process"),
                }
            }
        })?;
        Ok(Worker { child, input, replies })
    }

    fn command(&mut self, line: &str, wait: Duration) -> Result<Msg> {
        writeln!(self.input, "{line}").and_then(|_| self.input.flush()).context("writing to the clients' process")?;
        self.replies
            .recv_timeout(wait)
            .map_err(|_| anyhow!("the clients' process did not answer {line:?} within {wait:?}"))
    }

    /// Tells the clients to stop and waits up to `grace` for operations in flight; returns
    /// how many clients were still blocked (their operations stay `info`).
    pub fn stop(&mut self, grace: Duration) -> Result<usize> {
        match self.command(&format!("stop {}", grace.as_secs()), grace + Duration::from_secs(30))? {
            Msg::Stopped { stuck } => Ok(stuck),
            other => bail!("unexpected answer to stop: {other:?}"),
        }
    }

    /// The final read, recorded in the history as process `process`.
    pub fn final_read(&mut self, process: i64) -> Result<()> {
        match self.command(&format!("final-read {process}"), FINAL_READ_TIMEOUT + Duration::from_secs(30))? {
            Msg::FinalReadDone => Ok(()),
            other => bail!("unexpected answer to final-read: {other:?}"),
        }
    }
}

impl Drop for Worker {
    /// Clients still blocked in a mount are not waited for: the worker is killed (a process
    /// blocked in FUSE dies on SIGKILL).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
