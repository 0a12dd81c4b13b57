//! The leader's replication manager: brings every chunk to its goal. Under-goal chunks are
//! copied to new servers (chunks with a single valid copy first), over-goal copies and copies
//! of stale versions are deleted, copies on folders marked for removal are replaced and then
//! dropped. Copies on a server silent for longer than `CHUNKSERVER_TIMEOUT` do not count, so a
//! lost server's chunks are re-replicated; when it returns, its extra copies are trimmed.
//! Replicas of chunks the namespace no longer has (freed files, expired trash) are deleted.
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
    /// Chunks with replicas but no record in the namespace (their files were freed).
    pub orphans: AtomicU64,
    pub replicated: AtomicU64,
    pub deleted: AtomicU64,
    pub failed: AtomicU64,
    pub passes: AtomicU64,
}

enum Work {
    Replicate {
        chunk: ChunkId,
        version: ChunkVersion,
        to: ChunkLocation,
        sources: Vec<ChunkLocation>,
    },
    Delete {
        chunk: ChunkId,
        version: ChunkVersion,
        on: ChunkserverId,
    },
    /// Move replicas ahead of the committed version to a new one ([`Master::adopt_ahead`]).
    Adopt {
        chunk: ChunkId,
        version: ChunkVersion,
    },
}

/// One pass over every chunk; returns the number of orders sent.
pub async fn pass(m: &Arc<Master>) -> usize {
    let servers: HashMap<ChunkserverId, ServerView> = m.topology.servers().into_iter().map(|s| (s.id, s)).collect();
    // Until every connected server has sent its full list, copies may look missing.
    if servers.values().any(|s| s.connected && !s.reported) {
        return 0;
    }
    let timeout = m.config.chunkserver_timeout;
    let counts = |s: &ServerView| s.counts(timeout);
    // Listed before the read barrier: a chunk's record is committed before any replica of it
    // is created, so a listed chunk the namespace does not have after the barrier was freed,
    // not allocated too recently to be seen.
    let mut known = m.topology.chunk_ids().into_iter().peekable();
    let Ok(view) = m.read().await else { return 0 };
    let (mut under, mut over, mut missing, mut stale, mut leaving) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut orphans = 0u64;
    // (valid copies, work): the fewest copies first.
    let mut todo: Vec<(usize, Work)> = Vec::new();
    let mut drop_orphan = |chunk: ChunkId, todo: &mut Vec<(usize, Work)>| {
        orphans += 1;
        for r in m.topology.replicas(chunk) {
            if servers.get(&r.server).is_some_and(|s| s.connected) {
                todo.push((usize::MAX, Work::Delete { chunk, version: r.version, on: r.server }));
            }
        }
    };
    let mut after = None;
    loop {
        let Ok(batch) = view.chunks(after, SCAN_BATCH) else { return 0 };
        let Some(last) = batch.last() else { break };
        after = Some(last.0);
        for (chunk, rec) in batch {
            // Both lists are in id order: replicated chunks before this record have none.
            while let Some(k) = known.next_if(|k| *k <= chunk) {
                if k < chunk {
                    drop_orphan(k, &mut todo);
                }
            }
            if rec.version.0 == 0 || m.leases.is_leased(chunk) {
                continue;
            }
            let goal = rec.goal.0 as usize;
            let replicas = m.topology.replicas(chunk);
            let mut valid = Vec::new();
            let mut on_leaving = Vec::new();
            // With no replica at the committed version, replicas ahead of it are the ones a
            // dying leader moved without committing: adopted, not deleted.
            let adopt =
                !replicas.iter().any(|r| r.version == rec.version) && replicas.iter().any(|r| r.version > rec.version);
            if adopt {
                todo.push((0, Work::Adopt { chunk, version: rec.version }));
                continue;
            }
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
    for k in known {
        drop_orphan(k, &mut todo);
    }
    let st = &m.replication;
    st.under_goal.store(under, Ordering::Relaxed);
    st.over_goal.store(over, Ordering::Relaxed);
    st.missing.store(missing, Ordering::Relaxed);
    st.stale.store(stale, Ordering::Relaxed);
    st.leaving.store(leaving, Ordering::Relaxed);
    st.orphans.store(orphans, Ordering::Relaxed);
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
                Work::Adopt { chunk, version } => {
                    if let Err(e) = m.adopt_ahead(chunk, version).await {
                        st.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(chunk = %chunk.hex(), error = %e, "adopting replicas ahead of the metadata failed");
                    }
                    return;
                }
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
    tracing::info!(orders = sent, under_goal = under, over_goal = over, missing, stale, orphans, "replication pass");
    sent
}
