//! Nemeses: the faults injected into the cluster while the clients work, and how each is
//! healed. Every fault and heal is recorded in the history (process -1, `start` / `stop`) so
//! the report can shade its window.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;

use crate::cluster::Cluster;
use crate::history::{History, Kind, NEMESIS};
use crate::net::{self, NetNode};

/// The faults, by their command-line names.
pub const FAULTS: &[&str] = &[
    "kill-leader",
    "kill-random",
    "kill-majority",
    "pause",
    "partition-halves",
    "partition-leader",
    "partition-bridge",
    "partition-ring",
    "netem",
    "kill-chunkserver",
    "pause-chunkserver",
    "corrupt",
    "membership",
    "restart",
];

/// `--nemesis`: a comma separated list of [`FAULTS`], or `mix` for all of them, or `none`.
pub fn parse(list: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "mix" => out.extend(FAULTS.iter().map(|s| s.to_string())),
            "none" => {}
            n if FAULTS.contains(&n) => out.push(n.to_string()),
            other => bail!("unknown nemesis {other:?} (one of {}, mix, none)", FAULTS.join(", ")),
        }
    }
    Ok(out)
}

/// What undoes a fault.
#[derive(Debug)]
pub enum Heal {
    StartMasters(Vec<u64>),
    Resume(Vec<u64>),
    ResumeChunkservers(Vec<u64>),
    Network,
    StartChunkservers(Vec<u64>),
    AddMaster(u64),
    StartAll,
    Nothing,
}

fn leader(c: &Cluster) -> Result<u64> {
    c.leader().ok_or_else(|| anyhow!("no leader to aim at"))
}

fn random_master(c: &Cluster) -> u64 {
    c.masters.choose(&mut rand::thread_rng()).map(|m| m.id).unwrap_or(1)
}

/// Kills masters `ids` with SIGKILL.
fn kill_masters(c: &mut Cluster, ids: Vec<u64>) -> Result<(String, Heal)> {
    for id in &ids {
        c.master_mut(*id)?.kill9();
    }
    Ok((format!("SIGKILL masters {ids:?}"), Heal::StartMasters(ids)))
}

/// Each node of `a` drops what comes from `b` and the reverse.
fn split(a: &[NetNode], b: &[NetNode]) -> Result<()> {
    let addrs = |s: &[NetNode]| s.iter().map(|n| n.addr.clone()).collect::<BTreeSet<_>>();
    let (aa, ba) = (addrs(a), addrs(b));
    let plan: Vec<(&NetNode, &BTreeSet<String>)> =
        a.iter().map(|n| (n, &ba)).chain(b.iter().map(|n| (n, &aa))).collect();
    net::on_each(&plan, |(n, from)| net::block(n, from))
}

fn ids(nodes: &[NetNode]) -> Vec<&str> {
    nodes.iter().map(|n| n.ns.as_str()).collect()
}

fn masters_net(c: &Cluster) -> Vec<NetNode> {
    c.masters.iter().map(|m| m.net.clone()).collect()
}

fn partition(c: &Cluster, kind: &str) -> Result<(String, Heal)> {
    let mut rng = rand::thread_rng();
    let mut masters = masters_net(c);
    masters.shuffle(&mut rng);
    let mut css: Vec<NetNode> = c.chunkservers.iter().map(|d| d.net.clone()).collect();
    css.shuffle(&mut rng);
    let desc = match kind {
        "partition-halves" => {
            let (mut a, mut b) = (masters[..masters.len() / 2].to_vec(), masters[masters.len() / 2..].to_vec());
            a.extend_from_slice(&css[..css.len() / 2]);
            b.extend_from_slice(&css[css.len() / 2..]);
            split(&a, &b)?;
            format!("halves {:?} | {:?}", ids(&a), ids(&b))
        }
        "partition-leader" => {
            let l = leader(c)?;
            let a: Vec<NetNode> = c.masters.iter().filter(|m| m.id == l).map(|m| m.net.clone()).collect();
            let mut b: Vec<NetNode> = c.masters.iter().filter(|m| m.id != l).map(|m| m.net.clone()).collect();
            b.extend(css);
            split(&a, &b)?;
            format!("leader {l} isolated")
        }
        "partition-bridge" => {
            // One master sees both sides; the sides do not see each other.
            let bridge = masters.remove(0);
            let (a, b) = masters.split_at(masters.len() / 2);
            split(a, b)?;
            format!("bridge {} between {:?} and {:?}", bridge.ns, ids(a), ids(b))
        }
        _ => {
            // Ring: each master hears only its two neighbours.
            let n = masters.len();
            let plan: Vec<(&NetNode, BTreeSet<String>)> = masters
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let far = (0..n)
                        .filter(|j| *j != i && *j != (i + 1) % n && *j != (i + n - 1) % n)
                        .map(|j| masters[j].addr.clone())
                        .collect();
                    (m, far)
                })
                .collect();
            net::on_each(&plan, |(m, far)| net::block(m, far))?;
            format!("ring {:?}", ids(&masters))
        }
    };
    Ok((desc, Heal::Network))
}

/// Chunk files (`XX/chunk_*.mfs`) under the data folders `folders`.
fn chunk_files(folders: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in folders {
        for sub in std::fs::read_dir(f).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("chunk_") && name.ends_with(".mfs") {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

/// The chunk data starts after the 4 KiB header and the 4 KiB CRC table.
const CHUNK_DATA_OFFSET: u64 = 8192;

/// Flips a few bytes in the data of up to `n` chunk files of one chunkserver.
fn corrupt(c: &Cluster, n: usize) -> Result<(String, Heal)> {
    let mut rng = rand::thread_rng();
    let cs = c.chunkservers.choose(&mut rng).ok_or_else(|| anyhow!("no chunkserver"))?;
    let mut files: Vec<PathBuf> = chunk_files(&cs.data)
        .into_iter()
        .filter(|p| std::fs::metadata(p).map(|m| m.len() > CHUNK_DATA_OFFSET).unwrap_or(false))
        .collect();
    files.shuffle(&mut rng);
    let mut done = Vec::new();
    for path in files.into_iter().take(n) {
        flip_bytes(&path, &mut rng).with_context(|| format!("corrupting {}", path.display()))?;
        done.push(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    }
    Ok((format!("chunkserver {}: flipped bytes in {done:?}", cs.id), Heal::Nothing))
}

fn flip_bytes(path: &Path, rng: &mut impl Rng) -> Result<()> {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    for _ in 0..8 {
        let at = rng.gen_range(CHUNK_DATA_OFFSET..len);
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at)?;
        b[0] ^= 0xFF;
        f.write_all_at(&b, at)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Injects fault `name`; returns a description and what heals it.
pub fn start(c: &mut Cluster, name: &str) -> Result<(String, Heal)> {
    let mut rng = rand::thread_rng();
    match name {
        "kill-leader" => kill_masters(c, vec![leader(c)?]),
        "kill-random" => kill_masters(c, vec![random_master(c)]),
        "kill-majority" => {
            let mut all: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
            all.shuffle(&mut rng);
            all.truncate(c.masters.len() / 2 + 1);
            kill_masters(c, all)
        }
        "pause" => {
            let id = if rng.gen_bool(0.5) { leader(c)? } else { random_master(c) };
            c.master_mut(id)?.signal(Signal::SIGSTOP);
            Ok((format!("SIGSTOP master {id}"), Heal::Resume(vec![id])))
        }
        "partition-halves" | "partition-leader" | "partition-bridge" | "partition-ring" => partition(c, name),
        "netem" => {
            let nodes = all_nets(c);
            let what = std::sync::Mutex::new(String::new());
            net::on_each(&nodes, |n| {
                *what.lock().unwrap_or_else(|e| e.into_inner()) = net::degrade(n, 10, 50)?;
                Ok(())
            })?;
            Ok((format!("every node: {}", what.into_inner().unwrap_or_default()), Heal::Network))
        }
        "kill-chunkserver" => {
            let id = c.chunkservers.choose(&mut rng).map(|d| d.id).ok_or_else(|| anyhow!("no chunkserver"))?;
            c.chunkserver_mut(id)?.kill9();
            Ok((format!("SIGKILL chunkserver {id}"), Heal::StartChunkservers(vec![id])))
        }
        // A server that hangs with its connections open (a stuck disk, a frozen machine):
        // readers and writers must go around it rather than wait.
        "pause-chunkserver" => {
            let id = c.chunkservers.choose(&mut rng).map(|d| d.id).ok_or_else(|| anyhow!("no chunkserver"))?;
            c.chunkserver_mut(id)?.signal(Signal::SIGSTOP);
            Ok((format!("SIGSTOP chunkserver {id}"), Heal::ResumeChunkservers(vec![id])))
        }
        "corrupt" => corrupt(c, 3),
        "membership" => {
            let l = leader(c)?;
            let id = c.masters.iter().map(|m| m.id).find(|id| *id != l).ok_or_else(|| anyhow!("one master only"))?;
            c.remove_and_wipe_master(id)?;
            Ok((format!("master {id} removed from the group, wiped and restarted empty"), Heal::AddMaster(id)))
        }
        "restart" => {
            for d in c.masters.iter_mut().chain(c.chunkservers.iter_mut()) {
                d.kill9();
            }
            Ok(("SIGKILL every master and chunkserver".into(), Heal::StartAll))
        }
        other => bail!("unknown nemesis {other}"),
    }
}

pub fn heal(c: &mut Cluster, h: &Heal) -> Result<()> {
    match h {
        Heal::StartMasters(ids) => ids.iter().try_for_each(|id| c.start_master(*id)),
        Heal::Resume(ids) => {
            for id in ids {
                c.master_mut(*id)?.signal(Signal::SIGCONT);
            }
            Ok(())
        }
        Heal::ResumeChunkservers(ids) => {
            for id in ids {
                c.chunkserver_mut(*id)?.signal(Signal::SIGCONT);
            }
            Ok(())
        }
        Heal::Network => heal_network(c),
        Heal::StartChunkservers(ids) => ids.iter().try_for_each(|id| c.start_chunkserver(*id)),
        Heal::AddMaster(id) => c.add_master(*id),
        Heal::StartAll => {
            let (m, s): (Vec<u64>, Vec<u64>) =
                (c.masters.iter().map(|d| d.id).collect(), c.chunkservers.iter().map(|d| d.id).collect());
            m.iter().try_for_each(|id| c.start_master(*id))?;
            s.iter().try_for_each(|id| c.start_chunkserver(*id))
        }
        Heal::Nothing => Ok(()),
    }
}

fn all_nets(c: &Cluster) -> Vec<NetNode> {
    c.masters.iter().map(|m| m.net.clone()).chain(c.chunkservers.iter().map(|d| d.net.clone())).collect()
}

fn heal_network(c: &Cluster) -> Result<()> {
    net::on_each(&all_nets(c), net::heal)
}

/// Makes sure nothing is left broken: every process running, none paused, the network whole.
pub fn heal_all(c: &mut Cluster) {
    let _ = heal_network(c);
    for d in c.masters.iter().chain(&c.chunkservers) {
        d.signal(Signal::SIGCONT);
    }
    let _ = heal(c, &Heal::StartAll);
}

/// Timing of the nemesis schedule.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub quiet: Duration,
    pub fault: Duration,
}

/// Injects the faults of `faults` in turn (shuffled rounds) for `total`, each for
/// `schedule.fault` after `schedule.quiet` of calm, and heals each one.
pub fn run(c: &mut Cluster, history: &History, faults: &[String], total: Duration, schedule: Schedule) {
    let end = std::time::Instant::now() + total;
    if faults.is_empty() {
        crate::signals::sleep(total);
        return;
    }
    let mut queue: Vec<String> = Vec::new();
    while std::time::Instant::now() + schedule.quiet + schedule.fault <= end {
        if !crate::signals::sleep(schedule.quiet) {
            return;
        }
        if queue.is_empty() {
            queue = faults.to_vec();
            queue.shuffle(&mut rand::thread_rng());
        }
        let name = queue.pop().expect("refilled");
        one_fault(c, history, &name, schedule.fault);
        if crate::signals::interrupted() {
            return;
        }
    }
    crate::signals::sleep(end.saturating_duration_since(std::time::Instant::now()));
}

fn one_fault(c: &mut Cluster, history: &History, name: &str, hold: Duration) {
    let began = std::time::Instant::now();
    match start(c, name) {
        Ok((desc, heal_with)) => {
            tracing::info!(fault = name, took = ?began.elapsed(), "{desc}");
            history.record(NEMESIS, Kind::Info, "start", json!({ "fault": name, "detail": desc }), None);
            crate::signals::sleep(hold);
            let healing = std::time::Instant::now();
            let r = heal(c, &heal_with);
            tracing::info!(fault = name, took = ?healing.elapsed(), "healed");
            if let Err(e) = &r {
                tracing::warn!(fault = name, "healing failed: {e:#}");
            }
            history.record(NEMESIS, Kind::Info, "stop", json!({ "fault": name }), r.err().map(|e| format!("{e:#}")));
        }
        Err(e) => {
            tracing::warn!(fault = name, "could not inject: {e:#}");
            history.record(NEMESIS, Kind::Info, "start", json!({ "fault": name }), Some(format!("{e:#}")));
            history.record(NEMESIS, Kind::Info, "stop", json!({ "fault": name }), None);
        }
    }
}
