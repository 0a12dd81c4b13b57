//! One run: cluster up, clients and nemesis, heal, recovery, final read, check, report, and
//! the cluster torn down whatever happened.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::checker::Verdict;
use crate::cluster::{Cluster, Spec};
use crate::history::{History, Kind};
use crate::nemesis::{self, Schedule};
use crate::worker::{Plan, Worker};
use crate::workload;
use crate::{report, signals};

#[derive(Debug, Clone)]
pub struct Options {
    pub workload: String,
    pub nemeses: Vec<String>,
    pub time: Duration,
    pub masters: usize,
    pub chunkservers: usize,
    pub clients: usize,
    pub mounts: usize,
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub bulk_mib: usize,
    pub schedule: Schedule,
    pub master_extra: Vec<String>,
}

/// How long the cluster may take to be whole again after the last heal.
const RECOVERY: Duration = Duration::from_secs(90);
/// How long clients work on the healed cluster before they stop.
const AFTER_HEAL: Duration = Duration::from_secs(5);
/// How long operations in flight may take to finish once the clients are told to stop.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// Runs, checks and reports; the verdict is also in `DIR/verdict.json`.
pub fn run(o: &Options) -> Result<Verdict> {
    let w = workload::by_name(&o.workload, o.bulk_mib)?;
    std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let history = Arc::new(History::create(&o.dir.join("history.jsonl"))?);
    let spec = Spec {
        dir: o.dir.clone(),
        bin_dir: o.bin_dir.clone(),
        masters: o.masters,
        chunkservers: o.chunkservers,
        mounts: o.mounts,
        goal: 2,
        master_extra: o.master_extra.clone(),
    };
    tracing::info!(dir = %o.dir.display(), "starting {} masters, {} chunkservers", o.masters, o.chunkservers);
    let mut cluster = Cluster::up(spec)?;
    let mounts: Vec<PathBuf> = cluster.mounts.iter().map(|m| m.path.clone()).collect();
    w.setup(&mounts[0]).context("preparing the workload's folders")?;
    tracing::info!(workload = w.name(), clients = o.clients, "clients start; nemesis: {:?}", o.nemeses);
    let plan = Plan { workload: o.workload.clone(), bulk_mib: o.bulk_mib, clients: o.clients, mounts: mounts.clone() };
    let mut clients = Worker::start(&plan, history.clone())?;
    nemesis::run(&mut cluster, &history, &o.nemeses, o.time, o.schedule);
    nemesis::heal_all(&mut cluster);
    signals::check()?;
    tracing::info!("healed; waiting for the cluster to recover");
    if let Err(e) = cluster.wait_healthy(RECOVERY) {
        tracing::warn!("{e:#}");
        history.record(
            crate::history::NEMESIS,
            Kind::Info,
            "recovery",
            json!({ "recovered": false }),
            Some(format!("{e:#}")),
        );
    }
    signals::sleep(AFTER_HEAL);
    let stuck = clients.stop(STOP_GRACE)?;
    if stuck > 0 {
        tracing::warn!("{stuck} clients still blocked in the file system");
    }
    signals::check()?;
    // Past every cache TTL of the mount that reads.
    signals::sleep(Duration::from_secs(2));
    clients.final_read(o.clients as i64)?;
    drop(clients);
    history.flush();
    let ops = history.ops();
    let mut verdict = w.check(&ops);
    if stuck > 0 {
        verdict.notes.push(format!("{stuck} clients were still blocked when the run ended"));
    }
    report::write_verdict(&o.dir, &verdict)?;
    let title = format!(
        "alces-jepsen: {} under {}",
        w.name(),
        if o.nemeses.is_empty() { "no faults".into() } else { o.nemeses.join(", ") }
    );
    report::write_html(&o.dir, &ops, &verdict, &title)?;
    drop(cluster);
    Ok(verdict)
}
