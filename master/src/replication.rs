//! The leader's replication manager: brings every chunk to its goal. Under-goal chunks are
//! copied to new servers (chunks with a single valid copy first), over-goal copies and copies
//! of stale versions are deleted, copies on folders marked for removal are replaced and then
//! dropped. Copies on a server silent for longer than `CHUNKSERVER_TIMEOUT` do not count, so a
//! lost server's chunks are re-replicated; when it returns, its extra copies are trimmed.
//! Replicas of chunks the namespace no longer has (freed files, expired trash) are deleted.
//! When there is nothing else to do and the fullest server's usage (the share of its space
//! its chunks take) is more than `ACCEPTABLE_PERCENTAGE_DIFFERENCE` points above the emptiest
//! one's, a few chunks are copied from the first to the second; the next pass trims the copy
//! on the fuller server (over-goal copies go from the fullest servers first).
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
/// Chunks a pass moves to even out disk usage, at most.
const REBALANCE_PER_PASS: usize = 2;

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
    /// Copies made to even out disk usage.
    pub rebalanced: AtomicU64,
}

/// Usage in millionths of the space: chunks' bytes over the server's space.
/// Which of a chunk's valid copies (server, disk usage, label) go when it has more than
/// `goal`: one at a time, a copy whose label holds the most copies, then on the fullest
/// server, so that the copies kept stay spread over labels.
fn to_trim(copies: &[(ChunkserverId, u64, &str)], goal: usize) -> Vec<ChunkserverId> {
    let mut left: Vec<&(ChunkserverId, u64, &str)> = copies.iter().collect();
    let mut out = Vec::new();
    while left.len() > goal {
        let sharing = |label: &str| if label.is_empty() { 1 } else { left.iter().filter(|c| c.2 == label).count() };
        let (pos, _) = left
            .iter()
            .enumerate()
            .max_by_key(|(_, (id, usage, label))| (sharing(label), *usage, std::cmp::Reverse(*id)))
            .expect("more copies than the goal");
        out.push(left.remove(pos).0);
    }
    out
}

fn usage_ppm(s: &ServerView) -> u64 {
    if s.load.total_bytes == 0 {
        return 0;
    }
    (s.load.used_bytes as u128 * 1_000_000 / s.load.total_bytes as u128) as u64
}

/// A move that evens out usage: copies go from the fullest server to the emptiest.
struct Rebalance {
    from: ChunkserverId,
    to: ChunkLocation,
    to_label: String,
    /// Bytes on each and their space, updated as chunks are picked.
    from_used: u64,
    from_total: u64,
    to_used: u64,
    to_total: u64,
    /// The estimated size of one chunk (the average on `from`).
    chunk_bytes: u64,
    picked: Vec<Work>,
}

impl Rebalance {
    /// The move worth making now, if any: the usage gap is above `acceptable_ppm`.
    fn plan(servers: &HashMap<ChunkserverId, ServerView>, acceptable_ppm: u64) -> Option<Rebalance> {
        let live: Vec<&ServerView> =
            servers.values().filter(|s| s.connected && s.reported && s.load.total_bytes > 0).collect();
        let from = live.iter().filter(|s| s.load.chunks > 0).max_by_key(|s| (usage_ppm(s), s.id))?;
        let to = live.iter().filter(|s| s.load.avail_bytes > 0).min_by_key(|s| (usage_ppm(s), s.id))?;
        if from.id == to.id || usage_ppm(from) <= usage_ppm(to) + acceptable_ppm {
            return None;
        }
        Some(Rebalance {
            from: from.id,
            to: ChunkLocation { id: to.id, addr: to.addr.clone() },
            to_label: to.label.clone(),
            from_used: from.load.used_bytes,
            from_total: from.load.total_bytes,
            to_used: to.load.used_bytes,
            to_total: to.load.total_bytes,
            chunk_bytes: (from.load.used_bytes / from.load.chunks).max(1),
            picked: Vec::new(),
        })
    }

    /// Whether moving one more chunk keeps the source at least as full as the target (so
    /// that moves never overshoot and then come back).
    fn worth_one_more(&self) -> bool {
        let c = self.chunk_bytes as u128;
        let from_after = (self.from_used as u128).saturating_sub(c) * self.to_total as u128;
        let to_after = (self.to_used as u128 + c) * self.from_total as u128;
        self.picked.len() < REBALANCE_PER_PASS && from_after >= to_after
    }

    /// Considers a chunk at its goal with `valid` copies (server, label).
    fn consider(
        &mut self,
        chunk: ChunkId,
        version: ChunkVersion,
        replicas: &[ChunkserverId],
        valid: &[(ChunkLocation, String)],
    ) {
        if !self.worth_one_more() || replicas.contains(&self.to.id) || !valid.iter().any(|(l, _)| l.id == self.from) {
            return;
        }
        // Keep copies spread over labels: the target's label must not hold another copy.
        let others_label =
            valid.iter().any(|(l, label)| l.id != self.from && !label.is_empty() && *label == self.to_label);
        if others_label {
            return;
        }
        let sources = valid.iter().filter(|(l, _)| l.id == self.from).map(|(l, _)| l.clone()).collect();
        self.picked.push(Work::Replicate { chunk, version, to: self.to.clone(), sources });
        self.from_used = self.from_used.saturating_sub(self.chunk_bytes);
        self.to_used += self.chunk_bytes;
    }
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
    // Listed before the read barrier, so that a chunk allocated (record first, replicas after)
    // too recently for the view is not listed. A new chunk's replicas are created before its
    // record, under a bump marker that stays until the record is applied here: a listed
    // chunk the view lacks is an orphan only if it is not being created now and is still
    // not in the namespace (see `drop_orphan`).
    let mut known = m.topology.chunk_ids().into_iter().peekable();
    let mut rebalance = Rebalance::plan(&servers, m.config.acceptable_difference_ppm);
    let Ok(view) = m.read().await else { return 0 };
    let (mut under, mut over, mut missing, mut stale, mut leaving) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut orphans = 0u64;
    // (valid copies, work): the fewest copies first.
    let mut todo: Vec<(usize, Work)> = Vec::new();
    let mut drop_orphan = |chunk: ChunkId, todo: &mut Vec<(usize, Work)>| {
        // In this order: a creation that ends between the two checks has its record applied.
        if m.leases.is_leased(chunk) || !matches!(m.local_view().chunk(chunk), Ok(None)) {
            return;
        }
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
        // A master may run on one thread: a pass over millions of chunks lets the rest run.
        tokio::task::yield_now().await;
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
            let mut labels = Vec::new();
            let mut on_leaving = Vec::new();
            // With no replica at the committed version, replicas ahead of it are the ones a
            // dying leader moved without committing: adopted, not deleted.
            let adopt =
                !replicas.iter().any(|r| r.version == rec.version) && replicas.iter().any(|r| r.version > rec.version);
            if adopt {
                todo.push((0, Work::Adopt { chunk, version: rec.version }));
                continue;
            }
            let mut stale_here = Vec::new();
            for r in &replicas {
                let Some(s) = servers.get(&r.server) else { continue };
                if r.version != rec.version {
                    if s.connected {
                        stale_here.push(Work::Delete { chunk, version: r.version, on: r.server });
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
                    labels.push((loc.clone(), s.label.clone()));
                    valid.push((loc, usage_ppm(s)));
                }
            }
            // Stale copies go once a current one counts. Until then they may be all that is
            // left of the chunk (its current copies on servers that are gone): `alces
            // filerepair` can still make the file readable from them.
            stale += stale_here.len() as u64;
            if !valid.is_empty() || !on_leaving.is_empty() {
                todo.extend(stale_here.into_iter().map(|w| (usize::MAX, w)));
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
                    let copies: Vec<(ChunkserverId, u64, &str)> = valid
                        .iter()
                        .zip(&labels)
                        .map(|((l, usage), (_, label))| (l.id, *usage, label.as_str()))
                        .collect();
                    for on in to_trim(&copies, goal) {
                        todo.push((valid.len(), Work::Delete { chunk, version: rec.version, on }));
                    }
                }
                // Enough copies elsewhere: the ones on leaving folders can go.
                for l in &on_leaving {
                    leaving += 1;
                    todo.push((valid.len(), Work::Delete { chunk, version: rec.version, on: l.id }));
                }
                if valid.len() == goal && on_leaving.is_empty() {
                    if let Some(r) = rebalance.as_mut() {
                        let holders: Vec<ChunkserverId> = replicas.iter().map(|r| r.server).collect();
                        r.consider(chunk, rec.version, &holders, &labels);
                    }
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
    // Evening out usage waits until nothing else is left to do.
    let mut rebalancing = false;
    if todo.is_empty() {
        if let Some(r) = rebalance.filter(|r| !r.picked.is_empty()) {
            tracing::info!(from = %r.from, to = %r.to.id, chunks = r.picked.len(), "moving chunks to even out disk usage");
            todo.extend(r.picked.into_iter().map(|w| (0, w)));
            rebalancing = true;
        }
    }
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
                    if rebalancing {
                        st.rebalanced.fetch_add(1, Ordering::Relaxed);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: Vec<ChunkserverId>) -> Vec<u64> {
        v.into_iter().map(|c| c.0).collect()
    }

    /// Over-goal copies go from the fullest servers, but a label holding two copies loses
    /// one before a label holding one.
    #[test]
    fn trimming_keeps_copies_spread_over_labels_then_on_the_emptiest_servers() {
        let c = |id, usage, label| (ChunkserverId(id), usage, label);
        assert_eq!(ids(to_trim(&[c(1, 10, ""), c(2, 90, ""), c(3, 50, "")], 2)), vec![2]);
        assert_eq!(ids(to_trim(&[c(1, 10, ""), c(2, 90, ""), c(3, 50, "")], 1)), vec![2, 3]);
        assert_eq!(ids(to_trim(&[c(1, 10, "a"), c(2, 90, "b"), c(3, 50, "a")], 2)), vec![3], "a held two");
        assert_eq!(ids(to_trim(&[c(1, 10, "a"), c(2, 90, "b"), c(3, 50, "a"), c(4, 5, "a")], 2)), vec![3, 1]);
        assert_eq!(ids(to_trim(&[c(1, 10, "a"), c(2, 90, "b")], 2)), Vec::<u64>::new());
        assert_eq!(ids(to_trim(&[c(5, 50, ""), c(4, 50, "")], 1)), vec![4], "ties: the lower id");
    }
}
