//! The leader's replication manager: brings every chunk to its goal. Under-goal chunks are
//! copied to new servers (chunks with a single valid copy first), over-goal copies and copies
//! of stale versions are deleted, copies on folders marked for removal are replaced and then
//! dropped. Copies on a server silent for longer than `CHUNKSERVER_TIMEOUT` do not count, so a
//! lost server's chunks are re-replicated; when it returns, its extra copies are trimmed.
//!
//! A pass scans every chunk record and sends at most `ORDERS_PER_PASS` orders; chunks under
//! a write lease are left alone until the write ends. It runs only on the leader and keeps no
//! state between passes, so it resumes by itself after a failover.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use alces_proto::link::cs_master::ChunkOrder;
use alces_proto::types::{ChunkId, ChunkLocation, ChunkVersion, ChunkserverId};
use futures::stream::{self, StreamExt};

use crate::master::Master;
use crate::topology::ServerView;

/// Orders sent by one pass, at most (the rate limit).
pub const ORDERS_PER_PASS: usize = 64;
/// Orders carried out at the same time.
const PARALLEL_ORDERS: usize = 8;
/// Chunk records read at a time.
const SCAN_BATCH: usize = 10_000;

/// What the last pass found and what the manager has done since start.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    pub under_goal: AtomicU64,
    pub over_goal: AtomicU64,
    pub missing: AtomicU64,
    pub stale: AtomicU64,
    pub leaving: AtomicU64,
    pub replicated: AtomicU64,
    pub deleted: AtomicU64,
    pub failed: AtomicU64,
    pub passes: AtomicU64,
}

enum Work {
    Replicate { chunk: ChunkId, version: ChunkVersion, to: ChunkLocation, sources: Vec<ChunkLocation> },
    Delete { chunk: ChunkId, version: ChunkVersion, on: ChunkserverId },
}

/// One pass over every chunk; returns the number of orders sent.
pub async fn pass(m: &Arc<Master>) -> usize {
    let servers: HashMap<ChunkserverId, ServerView> = m.topology.servers().into_iter().map(|s| (s.id, s)).collect();
    // Until every connected server has sent its full list, copies may look missing.
    if servers.values().any(|s| s.connected && !s.reported) {
        return 0;
    }
    let timeout = m.config.chunkserver_timeout;
    let counts = |s: &ServerView| s.connected || s.silent_for < timeout;
    let Ok(view) = m.read().await else { return 0 };
    let (mut under, mut over, mut missing, mut stale, mut leaving) = (0u64, 0u64, 0u64, 0u64, 0u64);
    // (valid copies, work): the fewest copies first.
    let mut todo: Vec<(usize, Work)> = Vec::new();
    let mut after = None;
    loop {
        let Ok(batch) = view.chunks(after, SCAN_BATCH) else { return 0 };
        let Some(last) = batch.last() else { break };
        after = Some(last.0);
        for (chunk, rec) in batch {
            if rec.version.0 == 0 || m.leases.is_leased(chunk) {
                continue;
            }
            let goal = rec.goal.0 as usize;
            let replicas = m.topology.replicas(chunk);
            let mut valid = Vec::new();
            let mut on_leaving = Vec::new();
            for r in &replicas {
                let Some(s) = servers.get(&r.server) else { continue };
                if r.version != rec.version {
                    if s.connected {
                        stale += 1;
                        todo.push((usize::MAX, Work::Delete { chunk, version: r.version, on: r.server }));
                    }
                    continue;
                }
                if !counts(s) {
                    continue;
                }
                let loc = ChunkLocation { id: r.server, addr: s.addr.clone() };
                if r.leaving {
                    on_leaving.push(loc);
                } else {
                    valid.push((loc, s.load.used_bytes));
                }
            }
            let sources: Vec<ChunkLocation> = valid.iter().map(|(l, _)| l.clone()).chain(on_leaving.clone()).collect();
            if sources.is_empty() {
                missing += 1;
                continue;
            }
            if valid.len() < goal {
                under += 1;
                let exclude: Vec<ChunkserverId> = replicas.iter().map(|r| r.server).collect();
                for to in m.topology.place(goal - valid.len(), &exclude) {
                    todo.push((
                        valid.len(),
                        Work::Replicate { chunk, version: rec.version, to, sources: sources.clone() },
                    ));
                }
            } else {
                if valid.len() > goal {
                    over += 1;
                    // Trim the copies on the fullest servers.
                    valid.sort_by_key(|(l, used)| (std::cmp::Reverse(*used), l.id));
                    for (l, _) in &valid[..valid.len() - goal] {
                        todo.push((valid.len(), Work::Delete { chunk, version: rec.version, on: l.id }));
                    }
                }
                // Enough copies elsewhere: the ones on leaving folders can go.
                for l in &on_leaving {
                    leaving += 1;
                    todo.push((valid.len(), Work::Delete { chunk, version: rec.version, on: l.id }));
                }
            }
        }
    }
    let st = &m.replication;
    st.under_goal.store(under, Ordering::Relaxed);
    st.over_goal.store(over, Ordering::Relaxed);
    st.missing.store(missing, Ordering::Relaxed);
    st.stale.store(stale, Ordering::Relaxed);
    st.leaving.store(leaving, Ordering::Relaxed);
    st.passes.fetch_add(1, Ordering::Relaxed);
    if todo.is_empty() {
        return 0;
    }
    todo.sort_by_key(|(copies, _)| *copies);
    todo.truncate(ORDERS_PER_PASS);
    let sent = todo.len();
    let term = m.term();
    stream::iter(todo)
        .for_each_concurrent(PARALLEL_ORDERS, |(_, work)| async move {
            let (server, order, replicate) = match work {
                Work::Replicate { chunk, version, to, sources } => {
                    (to.id, ChunkOrder::Replicate { chunk, version, sources }, true)
                }
                Work::Delete { chunk, version, on } => (on, ChunkOrder::Delete { chunk, version }, false),
            };
            let what = format!("{order:?}");
            match m.topology.order(server, term, order).await {
                Ok(()) if replicate => {
                    st.replicated.fetch_add(1, Ordering::Relaxed);
                }
                Ok(()) => {
                    st.deleted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    st.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(server = %server, order = %what, error = %e, "replication order failed");
                }
            }
        })
        .await;
    tracing::info!(orders = sent, under_goal = under, over_goal = over, missing, stale, "replication pass");
    sent
}
