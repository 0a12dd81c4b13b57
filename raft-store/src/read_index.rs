//! Linearizable reads, batched: every read that arrives while a leadership confirmation is in
//! flight waits for the next one, and all of them share it.
//!
//! A confirmation (openraft's `ensure_linearizable`) takes a read index, proves with a quorum
//! round that this node is still the leader, and waits until the state machine has applied up
//! to that index. A read that arrived before the round started may use it; one that arrived
//! during the round may not (a newer write could already be committed), so it joins the next
//! round. One task runs the rounds back to back.
//!
//! While the leader lease holds (see [`crate::lease`]) a read needs no round at all: it waits
//! only until the state machine has applied the commit index as it stood at the check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::lease::Acks;
use crate::log_store::LogStats;
use crate::types::{Member, NodeId, Raft};

type Waiter = oneshot::Sender<Result<(), Error>>;

#[derive(Clone)]
pub(crate) struct ReadIndex {
    tx: mpsc::UnboundedSender<Waiter>,
    raft: Raft,
    me: NodeId,
    acks: Arc<Acks>,
    log: Arc<LogStats>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    lease_reads: AtomicU64,
    rounds: AtomicU64,
}

fn convert(e: &RaftError<NodeId, CheckIsLeaderError<NodeId, Member>>) -> Error {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => {
            Error::NotLeader { leader_id: f.leader_id, leader: f.leader_node.clone() }
        }
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => Error::Unavailable(q.to_string()),
        RaftError::Fatal(f) => Error::Stopped(f.to_string()),
    }
}

impl ReadIndex {
    pub(crate) fn start(raft: Raft, me: NodeId, acks: Arc<Acks>, log: Arc<LogStats>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        let (r, counts) = (raft.clone(), Arc::new(Counts::default()));
        let c = counts.clone();
        tokio::spawn(async move {
            let (raft, counts) = (r, c);
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                counts.rounds.fetch_add(1, Ordering::Relaxed);
                let res = raft.ensure_linearizable().await;
                for w in waiters {
                    let _ = w.send(res.as_ref().map(|_| ()).map_err(convert));
                }
            }
        });
        ReadIndex { tx, raft, me, acks, log, counts }
    }

    /// Returns once a read of the local state machine is linearizable.
    pub(crate) async fn barrier(&self) -> Result<(), Error> {
        if self.lease_read().await {
            self.counts.lease_reads.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| Error::Stopped("read index task ended".into()))?;
        rx.await.map_err(|_| Error::Stopped("read index task ended".into()))?
    }

    pub(crate) fn lease_reads(&self) -> u64 {
        self.counts.lease_reads.load(Ordering::Relaxed)
    }

    pub(crate) fn rounds(&self) -> u64 {
        self.counts.rounds.load(Ordering::Relaxed)
    }

    /// Whether the lease made a read linearizable (after waiting, if need be, for the state
    /// machine to apply what was committed when the lease was checked).
    async fn lease_read(&self) -> bool {
        let (index, applied) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            if !self.acks.holds(self.me, &m) {
                return false;
            }
            // Read after the check: a commit index from before it could miss a write that was
            // acknowledged in between.
            let committed = self.log.committed.load(Ordering::Acquire);
            let Some(index) = committed.checked_sub(1) else { return false };
            (index, m.last_applied.map(|l| l.index))
        };
        if applied >= Some(index) {
            return true;
        }
        let wait = self.raft.wait(Some(LEASE_APPLY_WAIT));
        wait.applied_index_at_least(Some(index), "lease read").await.is_ok()
    }
}

/// How long a lease read waits for entries to be applied before it takes a quorum round.
const LEASE_APPLY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
