//! `alces admin`: the metadata cluster as its operator sees it, through the admin HTTP API of
//! the masters (`alces_ops::api`): status, adding a master (learner, catch-up, voter),
//! removing one, moving leadership and building a snapshot.
//!
//! ```text
//! alces admin [-H ADMIN_ADDR,...|--cluster DIR] [--token TOKEN] status [--json]
//! alces admin add ID --raft ADDR --client ADDR --cs ADDR --admin ADDR [--learner]
//! alces admin remove ID
//! alces admin transfer-leader [ID]
//! alces admin snapshot [--on ID]
//! ```
//! Any master will do as a starting point: changes go to the leader, found through the
//! cluster view every master serves.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use alces_ops::admin_client::{AdminClient, CallError};
use alces_ops::api::{AddMember, ClusterView, MemberView};
use alces_ops::launcher::ClusterFile;
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::human;

/// The admin API's port when an address has none (ADMIN_LISTEN_PORT's default).
const DEFAULT_ADMIN_PORT: u16 = 9425;
/// How long a change may wait for a leader, or for the cluster to show its effect.
const SETTLE: Duration = Duration::from_secs(15);
/// How long a membership call may take (the leader answers an add once the learner has
/// caught up, or after its own limit of 20 s).
const MEMBERSHIP_CALL: Duration = Duration::from_secs(60);
/// How long a leadership transfer may take (the target catches up, the old lease lapses).
const TRANSFER_CALL: Duration = Duration::from_secs(60);
/// How long building a snapshot may take.
const SNAPSHOT_CALL: Duration = Duration::from_secs(600);

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Admin API addresses of any masters (host:port, comma separated; port 9425 when omitted).
    #[arg(short = 'H', long = "hosts", global = true, value_delimiter = ',', env = "ALCES_ADMIN_HOSTS")]
    hosts: Vec<String>,
    /// A local cluster's folder: the masters listed in DIR/cluster.json (`alces-cluster up`);
    /// takes the place of -H.
    #[arg(long, global = true, value_name = "DIR")]
    cluster: Option<PathBuf>,
    /// The masters' ADMIN_TOKEN, needed by every change (with --cluster: the local cluster's,
    /// when not given).
    #[arg(long, global = true, env = "ALCES_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// The Raft group (role, term, applied index, lag, addresses), chunkservers, replication.
    Status,
    /// Add a master: as a learner, wait until it has the log, then make it a voter.
    Add {
        /// Member id of the new master (its ID in master.cfg).
        id: u64,
        /// Its Raft address (host:port, RAFT_LISTEN_PORT).
        #[arg(long)]
        raft: Option<String>,
        /// Its client address (MATOCL_LISTEN_PORT).
        #[arg(long)]
        client: Option<String>,
        /// Its chunkserver address (MATOCS_LISTEN_PORT).
        #[arg(long)]
        cs: Option<String>,
        /// Its admin API address (ADMIN_LISTEN_PORT).
        #[arg(long)]
        admin: Option<String>,
        /// Leave it a learner (a non-voting copy of the metadata) instead of promoting it.
        #[arg(long)]
        learner: bool,
        /// Seconds to wait for the new master to catch up with the log.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Remove a master (voter or learner) from the group.
    Remove { id: u64 },
    /// Hand leadership to master ID (default: the most up-to-date other voter).
    TransferLeader { id: Option<u64> },
    /// Build a metadata snapshot now, on the leader or on master ID.
    Snapshot {
        #[arg(long, value_name = "ID")]
        on: Option<u64>,
    },
}

impl AdminArgs {
    /// A client of the admin addresses to start from: a local cluster's masters and token
    /// (`--cluster DIR`; `--token` wins), else `-H` and `--token`.
    fn client(&self) -> Result<AdminClient> {
        let Some(dir) = &self.cluster else { return Ok(AdminClient::new(self.hosts(), self.token.clone())) };
        let file = ClusterFile::read(dir)?;
        let addrs: Vec<String> = file.masters.iter().map(|m| m.admin_addr.clone()).filter(|a| !a.is_empty()).collect();
        if addrs.is_empty() {
            bail!("{} lists no masters", dir.join("cluster.json").display());
        }
        let token = match &self.token {
            Some(t) => Some(t.clone()),
            None => file.admin_token()?,
        };
        Ok(AdminClient::new(addrs, token))
    }

    /// The `-H` addresses, with the default port where none is given.
    fn hosts(&self) -> Vec<String> {
        let addrs: Vec<String> = self
            .hosts
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .map(|h| if h.contains(':') { h.to_string() } else { format!("{h}:{DEFAULT_ADMIN_PORT}") })
            .collect();
        if addrs.is_empty() {
            vec![format!("127.0.0.1:{DEFAULT_ADMIN_PORT}")]
        } else {
            addrs
        }
    }
}

/// A call's failure, with what the user can do about it.
fn explain(e: CallError) -> anyhow::Error {
    let hint = match &e {
        CallError::TokenMissing { .. } => "give the masters' ADMIN_TOKEN with --token TOKEN or ALCES_ADMIN_TOKEN",
        CallError::TokenRefused { .. } => "check --token / ALCES_ADMIN_TOKEN against ADMIN_TOKEN in master.cfg",
        CallError::NoneReachable(_) | CallError::Unreachable { .. } => {
            "give the masters' admin addresses with -H host:port,... (ADMIN_LISTEN_HOST/PORT) or --cluster DIR"
        }
        _ => return anyhow!("{e}"),
    };
    anyhow!("{e}\n  hint: {hint}")
}

/// Runs one admin command; `json` prints JSON instead of text.
pub fn run(args: &AdminArgs, json: bool) -> Result<()> {
    let c = args.client()?;
    let out = Out { json };
    match &args.cmd {
        AdminCmd::Status => status(&c, out),
        AdminCmd::Add { id, raft, client, cs, admin, learner, timeout } => {
            let addrs = [("--raft", raft), ("--client", client), ("--cs", cs), ("--admin", admin)];
            add(&c, out, *id, &addrs, *learner, Duration::from_secs(*timeout))
        }
        AdminCmd::Remove { id } => remove(&c, out, *id),
        AdminCmd::TransferLeader { id } => transfer(&c, out, *id),
        AdminCmd::Snapshot { on } => snapshot(&c, out, *on),
    }
}

/// Text for people on stdout, or one JSON value at the end.
#[derive(Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    fn say(&self, text: impl AsRef<str>) {
        if !self.json {
            println!("{}", text.as_ref());
        }
    }

    fn done(&self, text: impl AsRef<str>, value: serde_json::Value) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            println!("{}", text.as_ref());
        }
        Ok(())
    }
}

fn member(view: &ClusterView, id: u64) -> Option<&MemberView> {
    view.members.iter().find(|m| m.id == id)
}

fn is_voter(m: &MemberView) -> bool {
    m.role != "learner"
}

fn ids(members: &[MemberView], voters: bool) -> String {
    let v: Vec<String> = members.iter().filter(|m| is_voter(m) == voters).map(|m| m.id.to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Polls the leader's view until `done` says yes (or `wait` passes); the last view seen.
fn wait_view(
    c: &AdminClient,
    wait: Duration,
    mut done: impl FnMut(&ClusterView) -> bool,
) -> (bool, Option<ClusterView>) {
    let deadline = Instant::now() + wait;
    let mut last = None;
    loop {
        if let Ok((_, v)) = c.leader() {
            let ok = done(&v);
            last = Some(v);
            if ok {
                return (true, last);
            }
        }
        if Instant::now() > deadline {
            return (false, last);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// status

fn status(c: &AdminClient, out: Out) -> Result<()> {
    let (view, warning) = match c.leader() {
        Ok((_, v)) => (v, None),
        Err(CallError::NoLeader(why)) => (c.any_cluster().map_err(explain)?.1, Some(format!("no leader: {why}"))),
        Err(e) => return Err(explain(e)),
    };
    if out.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    // Each member's own view: its term, role and applied index as it sees them.
    let own: Vec<Option<ClusterView>> = std::thread::scope(|s| {
        let handles: Vec<_> = view
            .members
            .iter()
            .map(|m| {
                let view = &view;
                s.spawn(move || match m.id == view.id {
                    true => Some(view.clone()),
                    false if m.admin_addr.is_empty() => None,
                    false => c.cluster_at(&m.admin_addr).ok().filter(|v| v.id == m.id),
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok().flatten()).collect()
    });
    if let Some(w) = warning {
        println!("WARNING: {w}\n");
    }
    print!("{}", status_text(&view, &own));
    Ok(())
}

/// Left-aligned text columns, right-aligned numbers.
fn table(head: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate().take(width.len()) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate().take(width.len()) {
            let pad = width[i].saturating_sub(cell.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut s = line(head.to_vec());
    for r in rows {
        s.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    s
}

fn or_dash(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The status report: `view` is the leader's (or any master's) view, `own[i]` the view of
/// `view.members[i]` itself when it answered.
pub fn status_text(view: &ClusterView, own: &[Option<ClusterView>]) -> String {
    let mut s = String::new();
    let voters = view.members.iter().filter(|m| is_voter(m)).count();
    s.push_str(&format!(
        "Raft group: {} voter{}, {} learner{}; leader: {}; term {} (as master {} sees it)\n",
        voters,
        if voters == 1 { "" } else { "s" },
        view.members.len() - voters,
        if view.members.len() - voters == 1 { "" } else { "s" },
        view.leader.map(|l| format!("master {l}")).unwrap_or_else(|| "none".into()),
        view.term,
        view.id,
    ));
    let leader_applied = view.leader.and_then(|l| member(view, l)).and_then(|m| m.applied);
    let rows: Vec<Vec<String>> = view
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let own = own.get(i).and_then(|o| o.as_ref());
            let own_self = own.and_then(|o| member(o, m.id));
            let role = own_self.map(|x| x.role.clone()).unwrap_or_else(|| m.role.clone());
            let applied = own_self.and_then(|x| x.applied).or(m.applied);
            let lag = match (leader_applied, applied) {
                (Some(l), Some(a)) => Some(l.saturating_sub(a)),
                _ => None,
            };
            vec![
                m.id.to_string(),
                role,
                own.map(|o| o.term.to_string()).unwrap_or_else(|| "-".into()),
                or_dash(applied),
                or_dash(lag),
                m.raft_addr.clone(),
                m.client_addr.clone(),
                m.admin_addr.clone(),
                match (own.is_some(), m.admin_addr.is_empty()) {
                    (true, _) => "up".into(),
                    (false, true) => "-".into(),
                    (false, false) => "down".into(),
                },
            ]
        })
        .collect();
    s.push_str(&table(
        &["ID", "ROLE", "TERM", "APPLIED", "LAG", "RAFT", "CLIENT", "ADMIN", "API"],
        &[true, false, true, true, true, false, false, false, false],
        &rows,
    ));

    let alive = view.chunkservers.iter().filter(|c| c.alive).count();
    s.push_str(&format!("\nChunkservers: {} ({alive} alive)\n", view.chunkservers.len()));
    if !view.chunkservers.is_empty() {
        let rows: Vec<Vec<String>> = view
            .chunkservers
            .iter()
            .map(|c| {
                let pct = if c.total_bytes > 0 {
                    format!("{:.1}%", c.used_bytes as f64 * 100.0 / c.total_bytes as f64)
                } else {
                    "-".into()
                };
                let leaving = c.disks.iter().filter(|d| d.leaving).count();
                vec![
                    c.id.to_string(),
                    c.addr.clone(),
                    if c.label.is_empty() { "-".into() } else { c.label.clone() },
                    if c.alive { "yes".into() } else { "no".into() },
                    human(c.used_bytes),
                    human(c.total_bytes),
                    pct,
                    c.chunks.to_string(),
                    c.crc_errors.to_string(),
                    format!(
                        "{}{}",
                        c.disks.len(),
                        if leaving > 0 { format!(" ({leaving} leaving)") } else { "".into() }
                    ),
                ]
            })
            .collect();
        s.push_str(&table(
            &["ID", "ADDR", "LABEL", "ALIVE", "USED", "TOTAL", "USE", "CHUNKS", "CRC ERRORS", "DISKS"],
            &[true, false, false, false, true, true, true, true, true, false],
            &rows,
        ));
    }

    let under: u64 = view.chunk_copies.iter().filter(|c| c.valid < c.goal as u32).map(|c| c.chunks).sum();
    let missing: u64 = view.chunk_copies.iter().filter(|c| c.valid == 0).map(|c| c.chunks).sum();
    let over: u64 = view.chunk_copies.iter().filter(|c| c.valid > c.goal as u32).map(|c| c.chunks).sum();
    s.push_str(&format!(
        "\nNamespace: {} inodes, {} chunks ({under} under goal, {missing} without a valid copy, {over} over goal), {} sessions\n",
        view.inodes,
        view.chunks,
        view.sessions.len()
    ));
    if let Some(r) = &view.replication {
        s.push_str(&format!(
            "Replication: {} passes, the last found {} under goal, {} over goal, {} missing, {} stale, {} on leaving disks, \
             {} orphans; orders since start: {} replicated, {} deleted, {} failed\n",
            r.passes,
            r.under_goal,
            r.over_goal,
            r.missing,
            r.stale,
            r.leaving,
            r.orphans,
            r.replicated,
            r.deleted,
            r.failed
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// add

/// Catch-up progress of a learner on stderr: one updating line on a terminal, a line per
/// second otherwise.
struct Progress {
    id: u64,
    tty: bool,
    shown: Option<(Option<u64>, Instant)>,
}

impl Progress {
    fn new(id: u64) -> Progress {
        Progress { id, tty: std::io::stderr().is_terminal(), shown: None }
    }

    fn show(&mut self, has: Option<u64>, of: Option<u64>) {
        if let Some((last, at)) = self.shown {
            if last == has || (!self.tty && at.elapsed() < Duration::from_secs(1)) {
                return;
            }
        }
        self.shown = Some((has, Instant::now()));
        let line = match (has, of) {
            (Some(h), Some(o)) => {
                format!("  master {}: log index {h} of {o} (lag {})", self.id, o.saturating_sub(h))
            }
            (None, Some(o)) => format!("  master {}: no entry yet of {o} (receiving the log or a snapshot)", self.id),
            _ => format!("  master {}: waiting for the leader's replication", self.id),
        };
        let mut e = std::io::stderr().lock();
        let _ = if self.tty { write!(e, "\r{line}\x1b[K") } else { writeln!(e, "{line}") };
    }

    fn finish(&mut self) {
        if self.tty && self.shown.is_some() {
            eprintln!();
        }
        self.shown = None;
    }
}

/// Shows a member's catch-up progress from the leader's view.
fn show_progress(p: &mut Progress, v: &ClusterView, id: u64) {
    let of = v.leader.and_then(|l| member(v, l)).and_then(|m| m.applied);
    p.show(member(v, id).and_then(|m| m.applied), of);
}

fn add(
    c: &AdminClient,
    out: Out,
    id: u64,
    addrs: &[(&str, &Option<String>); 4],
    learner_only: bool,
    timeout: Duration,
) -> Result<()> {
    let (laddr, view) = c.wait_leader(SETTLE).map_err(explain)?;
    let leader = view.id;
    let mut progress = Progress::new(id);
    match member(&view, id) {
        Some(m) if is_voter(m) => {
            return out.done(
                format!("master {id} is already a voter ({}); nothing to do", m.role),
                json!({"id": id, "voter": true, "changed": false}),
            );
        }
        Some(_) => out.say(format!("master {id} is already a learner; waiting until it has caught up")),
        None => {
            let missing: Vec<&str> = addrs.iter().filter(|(_, v)| v.is_none()).map(|(flag, _)| *flag).collect();
            if !missing.is_empty() {
                bail!(
                    "master {id} is not a member yet: give its addresses ({} missing; the RAFT, MATOCL, MATOCS and ADMIN ports of its master.cfg)",
                    missing.join(", ")
                );
            }
            let addr = |i: usize| addrs[i].1.clone().unwrap_or_default();
            let req = AddMember {
                id,
                raft_addr: addr(0),
                client_addr: addr(1),
                cs_addr: addr(2),
                admin_addr: addr(3),
                voter: false,
            };
            out.say(format!(
                "adding master {id} (raft {}) as a learner through leader {leader} at {laddr}",
                req.raft_addr
            ));
            // The leader answers once the learner holds the log up to the change: show its
            // progress meanwhile.
            let added = std::thread::scope(|s| {
                let call = s.spawn(|| c.add_member(&req, MEMBERSHIP_CALL));
                while !call.is_finished() {
                    std::thread::sleep(Duration::from_millis(250));
                    if let Ok((_, v)) = c.leader() {
                        show_progress(&mut progress, &v, id);
                    }
                }
                call.join().unwrap_or_else(|_| Err(CallError::NoLeader("the add call failed".into())))
            });
            if let Err(e) = added {
                // A learner that has not caught up within the leader's limit stays a learner
                // and keeps receiving the log: keep waiting here. Anything else is an error.
                let still_learner = !matches!(e, CallError::TokenMissing { .. } | CallError::TokenRefused { .. })
                    && c.leader().is_ok_and(|(_, v)| member(&v, id).is_some_and(|m| !is_voter(m)));
                if !still_learner {
                    progress.finish();
                    return Err(explain(e));
                }
                progress.finish();
                out.say(format!("master {id} is a learner; the leader said: {e}; still waiting"));
            }
        }
    }
    // Caught up: it holds every entry the leader had applied when the wait started.
    let mut target: Option<u64> = None;
    let (caught_up, last) = wait_view(c, timeout, |v| {
        if target.is_none() {
            target = v.leader.and_then(|l| member(v, l)).and_then(|m| m.applied);
        }
        show_progress(&mut progress, v, id);
        let has = member(v, id).and_then(|m| m.applied);
        target.is_some_and(|t| has.is_some_and(|h| h >= t))
    });
    progress.finish();
    if !caught_up {
        let has = last.as_ref().and_then(|v| member(v, id)).and_then(|m| m.applied);
        bail!(
            "master {id} is a learner but has not caught up within {timeout:?} (log index {}); it keeps receiving the log: \
             run `alces admin add {id}` again later to promote it",
            or_dash(has)
        );
    }
    let has = last.as_ref().and_then(|v| member(v, id)).and_then(|m| m.applied);
    out.say(format!("master {id} has caught up (log index {})", or_dash(has)));
    if learner_only {
        return out.done(
            format!("master {id} is a learner (not promoted: --learner)"),
            json!({"id": id, "voter": false, "changed": true}),
        );
    }
    out.say(format!("promoting master {id} to voter"));
    let promote = AddMember {
        id,
        raft_addr: String::new(),
        client_addr: String::new(),
        cs_addr: String::new(),
        admin_addr: String::new(),
        voter: true,
    };
    c.add_member(&promote, MEMBERSHIP_CALL).map_err(explain)?;
    let (voter, last) = wait_view(c, SETTLE, |v| member(v, id).is_some_and(is_voter));
    let Some(v) = last.filter(|_| voter) else {
        bail!("the leader accepted the promotion of master {id}, but it is not shown as a voter yet");
    };
    out.done(
        format!("master {id} is a voter; voters: {}; learners: {}", ids(&v.members, true), ids(&v.members, false)),
        json!({"id": id, "voter": true, "changed": true, "members": v.members}),
    )
}

// ---------------------------------------------------------------------------------------------
// remove, transfer-leader, snapshot

fn remove(c: &AdminClient, out: Out, id: u64) -> Result<()> {
    let (_, view) = c.wait_leader(SETTLE).map_err(explain)?;
    if member(&view, id).is_none() {
        bail!(
            "master {id} is not a member (voters: {}; learners: {})",
            ids(&view.members, true),
            ids(&view.members, false)
        );
    }
    c.remove_member(id, MEMBERSHIP_CALL).map_err(explain)?;
    // Removing the leader takes an election before the group answers again.
    let (gone, last) = wait_view(c, SETTLE, |v| member(v, id).is_none());
    let Some(v) = last.filter(|_| gone) else {
        bail!("the leader accepted the removal of master {id}, but the group has not shown it within {SETTLE:?}");
    };
    let mut text =
        format!("master {id} removed; voters: {}; learners: {}", ids(&v.members, true), ids(&v.members, false));
    if view.id == id {
        text.push_str(&format!("; master {} leads now (term {})", v.id, v.term));
    }
    text.push_str("\nstop its process: it no longer receives the log");
    out.done(text, json!({"removed": id, "leader": v.id, "members": v.members}))
}

fn transfer(c: &AdminClient, out: Out, to: Option<u64>) -> Result<()> {
    let (_, view) = c.wait_leader(SETTLE).map_err(explain)?;
    let from = view.id;
    if let Some(t) = to {
        match member(&view, t) {
            None => bail!("master {t} is not a member (voters: {})", ids(&view.members, true)),
            Some(m) if !is_voter(m) => bail!("master {t} is a learner; only a voter can lead"),
            _ if t == from => {
                return out.done(
                    format!("master {t} already leads (term {})", view.term),
                    json!({"from": from, "leader": t, "term": view.term, "changed": false}),
                )
            }
            _ => {}
        }
    }
    out.say(format!(
        "moving leadership from master {from} to {}",
        to.map(|t| format!("master {t}")).unwrap_or_else(|| "the most up-to-date other voter".into())
    ));
    c.transfer_leader(to, TRANSFER_CALL).map_err(explain)?;
    let (moved, last) = wait_view(c, SETTLE, |v| v.id != from && to.is_none_or(|t| v.id == t));
    match last.filter(|_| moved) {
        Some(v) => out.done(
            format!("master {} leads now (term {}; was master {from})", v.id, v.term),
            json!({"from": from, "leader": v.id, "term": v.term, "changed": true}),
        ),
        None => bail!("the transfer was accepted but leadership has not moved from master {from} within {SETTLE:?}"),
    }
}

fn snapshot(c: &AdminClient, out: Out, on: Option<u64>) -> Result<()> {
    let (addr, id) = match on {
        None => {
            let (addr, v) = c.wait_leader(SETTLE).map_err(explain)?;
            (addr, v.id)
        }
        Some(id) => {
            let (addr, v) = c.any_cluster().map_err(explain)?;
            if v.id == id {
                (addr, id)
            } else {
                let m = member(&v, id).ok_or_else(|| anyhow!("master {id} is not a member"))?;
                if m.admin_addr.is_empty() {
                    bail!("master {id} has no admin address in the membership");
                }
                (m.admin_addr.clone(), id)
            }
        }
    };
    out.say(format!("building a metadata snapshot on master {id} ({addr})"));
    let index = c.snapshot_at(&addr, SNAPSHOT_CALL).map_err(explain)?;
    out.done(
        format!("master {id} built a snapshot up to log index {index}"),
        json!({"master": id, "snapshot_index": index}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use alces_ops::api::{ChunkserverView, CopiesCount, ReplicationView};

    fn m(id: u64, role: &str, applied: Option<u64>) -> MemberView {
        MemberView {
            id,
            role: role.into(),
            applied,
            raft_addr: format!("10.0.0.{id}:9419"),
            client_addr: format!("10.0.0.{id}:9421"),
            admin_addr: format!("10.0.0.{id}:9425"),
        }
    }

    fn view(id: u64, leader: Option<u64>, members: Vec<MemberView>) -> ClusterView {
        ClusterView {
            id,
            leader,
            term: 4,
            members,
            chunkservers: vec![],
            inodes: 10,
            chunks: 3,
            chunk_copies: vec![],
            sessions: vec![],
            exports: vec![],
            replication: None,
            operations: vec![],
        }
    }

    #[test]
    fn status_shows_roles_lag_and_unreachable_members() {
        let mut v =
            view(1, Some(1), vec![m(1, "leader", Some(100)), m(2, "follower", Some(90)), m(3, "learner", None)]);
        v.chunkservers.push(ChunkserverView {
            id: 7,
            addr: "10.0.1.7:9422".into(),
            label: String::new(),
            alive: true,
            total_bytes: 4 << 30,
            used_bytes: 1 << 30,
            chunks: 12,
            crc_errors: 0,
            disks: vec![],
        });
        v.chunk_copies =
            vec![CopiesCount { goal: 2, valid: 1, chunks: 2 }, CopiesCount { goal: 2, valid: 0, chunks: 1 }];
        v.replication = Some(ReplicationView { passes: 3, under_goal: 3, ..Default::default() });
        let own2 = view(2, Some(1), vec![m(1, "leader", Some(95)), m(2, "follower", Some(97))]);
        let text = status_text(&v, &[Some(v.clone()), Some(own2), None]);
        assert!(text.contains("2 voters, 1 learner; leader: master 1; term 4"), "{text}");
        let row = |id: &str| text.lines().find(|l| l.trim_start().starts_with(id)).unwrap().to_string();
        let r2: Vec<String> = row("2 ").split_whitespace().map(String::from).collect();
        assert_eq!(&r2[..5], ["2", "follower", "4", "97", "3"], "{text}");
        assert!(row("3 ").contains("learner") && row("3 ").ends_with("down"), "{text}");
        assert!(text.contains("1.0 GiB") && text.contains("25.0%"), "{text}");
        assert!(text.contains("3 under goal, 1 without a valid copy"), "{text}");
        assert!(text.contains("Replication: 3 passes, the last found 3 under goal"), "{text}");
    }

    #[test]
    fn status_of_an_odd_view_does_not_panic() {
        let v = view(9, Some(5), vec![]);
        let text = status_text(&v, &[]);
        assert!(text.contains("0 voters, 0 learners; leader: master 5"), "{text}");
        let v = view(1, None, vec![m(1, "candidate", None), m(2, "", Some(u64::MAX))]);
        let text = status_text(&v, &[None, None, None]);
        assert!(text.contains("leader: none"), "{text}");
    }

    #[test]
    fn addresses_get_the_default_port() {
        let a = AdminArgs {
            hosts: vec!["m1".into(), " m2:19425 ".into(), "".into()],
            cluster: None,
            token: None,
            cmd: AdminCmd::Status,
        };
        assert_eq!(a.hosts(), ["m1:9425", "m2:19425"]);
        let a = AdminArgs { hosts: vec![], cluster: None, token: None, cmd: AdminCmd::Status };
        assert_eq!(a.hosts(), ["127.0.0.1:9425"]);
    }
}
