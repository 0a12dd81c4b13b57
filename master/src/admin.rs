//! The master's side of the admin API (`alces_ops::api`): the cluster view every master
//! answers, membership changes, leadership transfer, snapshots and Prometheus metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_ops::api::{
    AddMember, AdminBackend, AdminError, ChunkserverView, ClusterView, CopiesCount, DiskView, MemberView,
    OperationCount, ReplicationView, Sample, SessionSummary, HISTORY_EVERY_SECS, HISTORY_LEN,
};
use alces_proto::types::ChunkId;
use alces_raft_store::{Member, Role};
use prometheus::core::Collector;
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::master::Master;
use crate::namespace::keys::{COUNT_CHUNKS, COUNT_INODES};

/// How long a computed chunk-copies table is reused (it scans every chunk).
const COPIES_TTL: Duration = Duration::from_secs(5);

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Learner => "learner",
        Role::Candidate => "candidate",
    }
}

/// Gauges exported at `/metrics`, refreshed on every scrape.
pub struct Metrics {
    registry: Registry,
    term: IntGauge,
    leader: IntGauge,
    applied: IntGauge,
    last_log: IntGauge,
    apply_lag: IntGauge,
    log_fsyncs: IntGauge,
    log_entries: IntGauge,
    commits: IntGauge,
    lease_reads: IntGauge,
    read_rounds: IntGauge,
    inodes: IntGauge,
    chunks: IntGauge,
    chunk_copies: IntGaugeVec,
    chunkservers: IntGaugeVec,
    cs_bytes: IntGaugeVec,
    cs_errors: IntGaugeVec,
    sessions: IntGauge,
    leases: IntGauge,
    open_handles: IntGauge,
    replication_chunks: IntGaugeVec,
    replication_orders: IntGaugeVec,
    requests: IntCounterVec,
    latency: HistogramVec,
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        Metrics {
            term: gauge(&r, "alces_master_raft_term", "Current Raft term"),
            leader: gauge(&r, "alces_master_raft_is_leader", "1 when this master leads"),
            applied: gauge(&r, "alces_master_raft_applied_index", "Last log index applied to the namespace"),
            last_log: gauge(&r, "alces_master_raft_last_log_index", "Last log index stored"),
            apply_lag: gauge(&r, "alces_master_raft_apply_lag_entries", "Stored but not yet applied log entries"),
            log_fsyncs: gauge(&r, "alces_master_raft_log_fsyncs_total", "Syncs of the Raft log since start"),
            log_entries: gauge(&r, "alces_master_raft_log_entries_total", "Log entries written since start"),
            commits: gauge(
                &r,
                "alces_master_raft_commits_total",
                "Committed log entries applied to the namespace since start",
            ),
            lease_reads: gauge(
                &r,
                "alces_master_raft_lease_reads_total",
                "Linearizable reads served under the leader lease since start",
            ),
            read_rounds: gauge(&r, "alces_master_raft_read_rounds_total", "Quorum rounds taken for reads since start"),
            inodes: gauge(&r, "alces_master_namespace_inodes", "Inodes in the namespace"),
            chunks: gauge(&r, "alces_master_namespace_chunks", "Chunks in the namespace"),
            chunk_copies: gauge_vec(
                &r,
                "alces_master_chunks_by_copies",
                "Chunks by goal and valid copies",
                &["goal", "valid"],
            ),
            chunkservers: gauge_vec(&r, "alces_master_chunkservers", "Chunkservers by state", &["state"]),
            cs_bytes: gauge_vec(&r, "alces_master_chunkserver_bytes", "Chunkserver space", &["chunkserver", "kind"]),
            cs_errors: gauge_vec(
                &r,
                "alces_master_chunkserver_crc_errors",
                "CRC errors a chunkserver found",
                &["chunkserver"],
            ),
            sessions: gauge(&r, "alces_master_sessions", "Client sessions"),
            leases: gauge(&r, "alces_master_write_leases", "Active chunk write leases"),
            open_handles: gauge(&r, "alces_master_open_handles", "Handles open on regular files, kept by the leader"),
            replication_chunks: gauge_vec(
                &r,
                "alces_master_replication_chunks",
                "Chunks the leader's last replication pass found needing work, by state",
                &["state"],
            ),
            replication_orders: gauge_vec(
                &r,
                "alces_master_replication_orders_total",
                "Replication orders since start, by outcome",
                &["outcome"],
            ),
            requests: {
                let opts = Opts::new("alces_master_requests_total", "Client requests served, by operation and outcome");
                let c = IntCounterVec::new(opts, &["op", "outcome"]).expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            latency: {
                // 50 µs to about 26 s.
                let buckets = exponential_buckets(50e-6, 2.0, 20).expect("valid buckets");
                let opts = HistogramOpts::new("alces_master_request_seconds", "Client request latency, by operation")
                    .buckets(buckets);
                let h = HistogramVec::new(opts, &["op"]).expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            registry: r,
        }
    }
}

impl Metrics {
    /// Counts one client request of kind `op` that took `took`.
    pub fn request(&self, op: &str, ok: bool, took: Duration) {
        self.requests.with_label_values(&[op, if ok { "ok" } else { "error" }]).inc();
        self.latency.with_label_values(&[op]).observe(took.as_secs_f64());
    }

    /// Requests served so far, by operation, busiest first.
    fn operations(&self) -> Vec<OperationCount> {
        let mut by_op: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for family in self.requests.collect() {
            for metric in family.get_metric() {
                let label =
                    |name: &str| metric.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_string());
                let (Some(op), Some(outcome)) = (label("op"), label("outcome")) else { continue };
                let n = metric.get_counter().get_value() as u64;
                let e = by_op.entry(op).or_default();
                e.0 += n;
                if outcome == "error" {
                    e.1 += n;
                }
            }
        }
        let mut out: Vec<OperationCount> =
            by_op.into_iter().map(|(op, (count, errors))| OperationCount { op, count, errors }).collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.op.cmp(&b.op)));
        out
    }
}

/// What a count of chunks by copies was computed from.
#[derive(PartialEq, Eq)]
pub(crate) struct CopiesKey {
    applied: Option<u64>,
    replica_changes: u64,
    servers: Vec<u64>,
    chunks: u64,
}

pub(crate) struct CopiesCache {
    key: CopiesKey,
    at: Instant,
    counts: Vec<CopiesCount>,
}

impl CopiesCache {
    /// Whether this count, `age` old, may answer for the state described by `key`.
    fn serves(&self, key: &CopiesKey, age: Duration) -> bool {
        let same_total = self.key.chunks == key.chunks && self.key.servers == key.servers;
        self.key == *key || (same_total && age < COPIES_TTL)
    }
}

impl Master {
    /// Chunks by (goal, valid copies). A count is reused while nothing it depends on changed
    /// (applied index, replica map, the servers that count), and for up to [`COPIES_TTL`]
    /// while the chunk total it covers is still the current one, so that a busy cluster does
    /// not rescan every chunk for each page refresh, yet the table never disagrees with the
    /// chunk total shown beside it.
    fn chunk_copies(&self) -> Vec<CopiesCount> {
        let view = self.local_view();
        // Copies on lost servers are not counted: they hide chunks under their goal.
        let counting = self.topology.counting(self.config.chunkserver_timeout);
        let mut servers: Vec<u64> = counting.iter().map(|s| s.0).collect();
        servers.sort_unstable();
        let key = CopiesKey {
            applied: self.node.status().applied,
            replica_changes: self.topology.replica_changes(),
            servers,
            chunks: view.counter(COUNT_CHUNKS).unwrap_or(0),
        };
        let mut cache = self.copies_cache.lock().expect("copies cache lock");
        if let Some(c) = cache.as_ref().filter(|c| c.serves(&key, c.at.elapsed())) {
            return c.counts.clone();
        }
        let mut counts: BTreeMap<(u8, u32), u64> = BTreeMap::new();
        let mut after: Option<ChunkId> = None;
        while let Ok(page) = view.chunks(after, 10_000) {
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            for (id, rec) in &page {
                if rec.version.0 == 0 {
                    continue;
                }
                let valid = self
                    .topology
                    .replicas(*id)
                    .iter()
                    .filter(|r| r.version == rec.version && counting.contains(&r.server))
                    .count() as u32;
                *counts.entry((rec.goal.0, valid)).or_default() += 1;
            }
        }
        let v: Vec<CopiesCount> =
            counts.into_iter().map(|((goal, valid), chunks)| CopiesCount { goal, valid, chunks }).collect();
        *cache = Some(CopiesCache { key, at: Instant::now(), counts: v.clone() });
        v
    }

    /// The replication manager's counters (`None` on a follower, whose manager is idle).
    fn replication_view(&self) -> Option<ReplicationView> {
        if !self.is_leader() {
            return None;
        }
        let st = &self.replication;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Some(ReplicationView {
            passes: get(&st.passes),
            under_goal: get(&st.under_goal),
            over_goal: get(&st.over_goal),
            missing: get(&st.missing),
            stale: get(&st.stale),
            leaving: get(&st.leaving),
            orphans: get(&st.orphans),
            replicated: get(&st.replicated),
            deleted: get(&st.deleted),
            failed: get(&st.failed),
            rebalanced: get(&st.rebalanced),
        })
    }

    fn cluster_view(&self) -> ClusterView {
        let status = self.node.status();
        let members = status
            .members
            .iter()
            .map(|m| MemberView {
                id: m.id,
                role: role_name(m.role).into(),
                applied: if m.id == status.id { status.applied } else { m.matched },
                raft_addr: m.member.raft_addr.clone(),
                client_addr: m.member.client_addr.clone(),
                admin_addr: m.member.admin_addr.clone(),
            })
            .collect();
        let timeout = self.config.chunkserver_timeout;
        let chunkservers = self
            .topology
            .servers()
            .into_iter()
            .map(|s| ChunkserverView {
                id: s.id.0,
                addr: s.addr,
                label: s.label,
                alive: s.connected && s.silent_for < timeout,
                total_bytes: s.load.total_bytes,
                used_bytes: s.load.used_bytes,
                chunks: s.load.chunks,
                crc_errors: s.load.crc_errors,
                disks: s
                    .load
                    .folders
                    .iter()
                    .map(|f| DiskView {
                        path: f.path.clone(),
                        total_bytes: f.total_bytes,
                        used_bytes: f.used_bytes,
                        chunks: f.chunks,
                        leaving: f.leaving,
                    })
                    .collect(),
            })
            .collect();
        let view = self.local_view();
        let sessions = view
            .sessions()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, s)| SessionSummary {
                id: id.0,
                peer: s.info.peer,
                client_name: s.info.client_name,
                path: s.info.path,
                read_only: s.info.read_only,
                meta: s.info.meta,
            })
            .collect();
        ClusterView {
            id: status.id,
            leader: status.leader,
            term: status.term,
            members,
            chunkservers,
            inodes: view.counter(COUNT_INODES).unwrap_or(0),
            chunks: view.counter(COUNT_CHUNKS).unwrap_or(0),
            chunk_copies: self.chunk_copies(),
            sessions,
            exports: self.exports().rules.iter().map(|r| r.text.clone()).collect(),
            replication: self.replication_view(),
            operations: self.metrics.operations(),
        }
    }

    fn admin_error(&self, e: alces_raft_store::Error) -> AdminError {
        let status = match &e {
            alces_raft_store::Error::NotLeader { .. } => 409,
            alces_raft_store::Error::Membership(_) => 400,
            alces_raft_store::Error::Unavailable(_) => 503,
            _ => 500,
        };
        let mut err = AdminError::new(status, e.to_string());
        if let alces_raft_store::Error::NotLeader { leader: Some(l), .. } = &e {
            err.leader_admin_addr = Some(l.admin_addr.clone());
        }
        err
    }
}

impl AdminBackend for Master {
    async fn cluster(&self) -> ClusterView {
        self.cluster_view()
    }

    async fn add_member(&self, req: AddMember) -> Result<(), AdminError> {
        if !self.is_leader() {
            return Err(self.admin_error(self.node.not_leader()));
        }
        let known = self.node.status().members.iter().any(|m| m.id == req.id);
        if !known {
            if req.raft_addr.is_empty() {
                return Err(AdminError::new(
                    400,
                    format!("member {} is new: give its raft_addr (and client/cs/admin addresses)", req.id),
                ));
            }
            let member = Member {
                raft_addr: req.raft_addr,
                client_addr: req.client_addr,
                cs_addr: req.cs_addr,
                admin_addr: req.admin_addr,
            };
            self.node.add_learner(req.id, member).await.map_err(|e| self.admin_error(e))?;
        }
        if req.voter {
            self.node.promote(req.id).await.map_err(|e| self.admin_error(e))?;
        }
        Ok(())
    }

    async fn remove_member(&self, id: u64) -> Result<(), AdminError> {
        self.node.remove(id).await.map_err(|e| self.admin_error(e))
    }

    async fn transfer_leader(&self, to: Option<u64>) -> Result<u64, AdminError> {
        let status = self.node.status();
        let to = match to {
            Some(t) => t,
            None => status
                .members
                .iter()
                .filter(|m| m.id != status.id && m.role == Role::Follower)
                .max_by_key(|m| m.matched)
                .map(|m| m.id)
                .ok_or_else(|| AdminError::new(400, "no other voter to transfer leadership to"))?,
        };
        self.node.transfer_leader(to).await.map_err(|e| self.admin_error(e))?;
        Ok(self.node.status().leader.unwrap_or(to))
    }

    async fn snapshot(&self) -> Result<u64, AdminError> {
        self.node.snapshot().await.map_err(|e| self.admin_error(e))
    }

    fn metrics(&self) -> String {
        let m = &self.metrics;
        let st = self.node.status();
        m.term.set(st.term as i64);
        m.leader.set((st.leader == Some(st.id)) as i64);
        m.applied.set(st.applied.unwrap_or(0) as i64);
        m.last_log.set(st.last_log_index.unwrap_or(0) as i64);
        m.apply_lag.set(st.last_log_index.unwrap_or(0).saturating_sub(st.applied.unwrap_or(0)) as i64);
        m.log_fsyncs.set(st.log_fsyncs as i64);
        m.log_entries.set(st.log_entries as i64);
        m.commits.set(st.applied_since_start as i64);
        m.lease_reads.set(st.lease_reads as i64);
        m.read_rounds.set(st.read_rounds as i64);
        let view = self.local_view();
        m.inodes.set(view.counter(COUNT_INODES).unwrap_or(0) as i64);
        m.chunks.set(view.counter(COUNT_CHUNKS).unwrap_or(0) as i64);
        m.sessions.set(view.sessions().map(|s| s.len()).unwrap_or(0) as i64);
        m.leases.set(self.leases.active() as i64);
        m.open_handles.set(self.handles.count() as i64);
        m.chunk_copies.reset();
        for c in self.chunk_copies() {
            m.chunk_copies.with_label_values(&[&c.goal.to_string(), &c.valid.to_string()]).set(c.chunks as i64);
        }
        let r = self.replication_view().unwrap_or_default();
        for (state, n) in [
            ("under_goal", r.under_goal),
            ("over_goal", r.over_goal),
            ("missing", r.missing),
            ("stale", r.stale),
            ("leaving", r.leaving),
            ("orphan", r.orphans),
        ] {
            m.replication_chunks.with_label_values(&[state]).set(n as i64);
        }
        for (outcome, n) in
            [("replicated", r.replicated), ("deleted", r.deleted), ("failed", r.failed), ("rebalanced", r.rebalanced)]
        {
            m.replication_orders.with_label_values(&[outcome]).set(n as i64);
        }
        let servers = self.topology.servers();
        let up = servers.iter().filter(|s| s.connected).count();
        m.chunkservers.with_label_values(&["up"]).set(up as i64);
        m.chunkservers.with_label_values(&["down"]).set((servers.len() - up) as i64);
        for s in &servers {
            let id = s.id.to_string();
            m.cs_bytes.with_label_values(&[&id, "total"]).set(s.load.total_bytes as i64);
            m.cs_bytes.with_label_values(&[&id, "used"]).set(s.load.used_bytes as i64);
            m.cs_errors.with_label_values(&[&id]).set(s.load.crc_errors as i64);
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    fn admin_token(&self) -> Option<String> {
        self.config.admin_token.clone()
    }

    fn history(&self) -> Vec<Sample> {
        self.history.lock().expect("history lock").iter().cloned().collect()
    }
}

/// Samples this master's state for the monitor's charts every [`HISTORY_EVERY_SECS`],
/// keeping the last [`HISTORY_LEN`] (a day). Runs on every master: each page shows the
/// history of the master that serves it.
pub async fn sample(m: Arc<Master>) {
    let mut tick = tokio::time::interval(Duration::from_secs(HISTORY_EVERY_SECS));
    loop {
        tokio::select! {
            _ = m.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let view = m.local_view();
        let servers = m.topology.servers();
        let s = Sample {
            time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            inodes: view.counter(COUNT_INODES).unwrap_or(0),
            chunks: view.counter(COUNT_CHUNKS).unwrap_or(0),
            requests: m.metrics.operations().iter().map(|o| o.count).sum(),
            used_bytes: servers.iter().filter(|s| s.connected).map(|s| s.load.used_bytes).sum(),
            total_bytes: servers.iter().filter(|s| s.connected).map(|s| s.load.total_bytes).sum(),
        };
        let mut h = m.history.lock().expect("history lock");
        if h.len() == HISTORY_LEN {
            h.pop_front();
        }
        h.push_back(s);
    }
}

/// Serves the admin API of a master on a thread of its own: a monitor page's count of every
/// chunk's copies is a scan of the whole chunk table, which must not hold up the master's
/// own thread (its heartbeats and requests) on a large file system.
pub async fn serve(m: Arc<Master>) -> std::io::Result<std::net::SocketAddr> {
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("admin-api".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = bound_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let stop = m.stop.clone();
            let bound = alces_ops::api::serve(m.config.admin_listen, m.clone(), stop.clone()).await;
            let serving = bound.is_ok();
            let _ = bound_tx.send(bound);
            if serving {
                stop.cancelled().await;
            }
        });
    })?;
    bound_rx.await.map_err(|_| std::io::Error::other("the admin API thread ended before it listened"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(applied: u64, replica_changes: u64, servers: &[u64], chunks: u64) -> CopiesKey {
        CopiesKey { applied: Some(applied), replica_changes, servers: servers.to_vec(), chunks }
    }

    #[test]
    fn a_count_of_copies_is_reused_only_while_it_covers_the_chunk_total() {
        let cached = CopiesCache { key: key(10, 5, &[1, 2], 0), at: Instant::now(), counts: vec![] };
        let young = Duration::from_millis(100);
        let old = COPIES_TTL + Duration::from_secs(1);
        // Nothing changed: reused at any age.
        assert!(cached.serves(&key(10, 5, &[1, 2], 0), old));
        // Writes moved the log and the replicas but not the chunk total: reused while young.
        assert!(cached.serves(&key(12, 9, &[1, 2], 0), young));
        assert!(!cached.serves(&key(12, 9, &[1, 2], 0), old));
        // New chunks, or a server lost: recounted at once.
        assert!(!cached.serves(&key(12, 9, &[1, 2], 6), young));
        assert!(!cached.serves(&key(10, 5, &[1], 0), young));
    }
}
