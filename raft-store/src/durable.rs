//! What of this node's Raft log is on disk for sure, and the leader's early report of its own
//! entries.
//!
//! openraft 0.9 finishes the leader's log append, fsync included, before it sends the new
//! entries to the followers, so every change waited for two fsyncs in a row: the leader's,
//! then a follower's. Here the leader reports its own new entries as soon as they are in the
//! database (their write-ahead log records wait in RocksDB's buffer, see [`crate::db`], so a
//! killed process loses them as a machine losing power would) and a blocking task writes and
//! syncs them meanwhile, one fsync for everything written before it starts; the followers
//! receive the entries at once and sync them while the leader does.
//!
//! openraft then counts the leader's copy towards a commit before it is synced. What makes
//! that safe is that nothing is done with an entry until the leader's copy is synced too:
//!
//! * the leader applies an entry (and so answers a client) only once it is durable here
//!   ([`Durability::wait_durable`], called by the state machine), so an acknowledged entry is
//!   on the disks of a majority: the leader's and those of the followers that acknowledged it,
//!   which sync before they answer;
//! * the commit index sent to the followers is no higher than the leader's durable log
//!   ([`Durability::clamp_commit`]), so no node applies an entry that a leader losing its power
//!   supply could lose (the leader then restarts without it, and a node without it may be
//!   elected).
//!
//! Appends from another leader (this node is a follower) are synced before they are reported,
//! as before: a follower's answer to the leader is its promise that the entries are on disk.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::db::Db;
use crate::log_store::LogStats;
use crate::types::{LogId, NodeId, Vote};

/// The log's last entry as written, and as synced.
#[derive(Debug, Default)]
struct Tail {
    written: Option<LogId>,
    durable: Option<LogId>,
    /// Moves when the log is cut back: a sync started before does not speak for it.
    epoch: u64,
    /// Written entries wait for a sync that has not started yet.
    pending: bool,
    /// A blocking task is syncing (it looks at `pending` again before it stops).
    syncing: bool,
}

pub(crate) struct Durability {
    me: NodeId,
    db: Arc<Db>,
    tail: Mutex<Tail>,
    /// The vote this node last saved: its own committed vote while it leads.
    vote: Mutex<Option<Vote>>,
    /// The index of `tail.durable` (0: none), for the state machine to wait on.
    durable_index: watch::Sender<u64>,
    stats: Arc<LogStats>,
}

impl Durability {
    /// `last`: the last entry of the log as found on disk, made durable here (a killed
    /// process may have left entries written but not synced).
    pub(crate) fn open(
        me: NodeId,
        db: Arc<Db>,
        last: Option<LogId>,
        vote: Option<Vote>,
        stats: Arc<LogStats>,
    ) -> crate::Result<Arc<Self>> {
        db.sync_wal()?;
        let tail = Tail { written: last, durable: last, ..Tail::default() };
        let (durable_index, _) = watch::channel(last.map_or(0, |l| l.index));
        let (tail, vote) = (Mutex::new(tail), Mutex::new(vote));
        Ok(Arc::new(Durability { me, db, tail, vote, durable_index, stats }))
    }

    pub(crate) fn vote_saved(&self, vote: Vote) {
        *self.vote.lock().expect("vote lock") = Some(vote);
    }

    /// Whether entries of `leader` are this node's own, appended while it leads.
    pub(crate) fn is_own(&self, leader: &openraft::CommittedLeaderId<NodeId>) -> bool {
        let vote = self.vote.lock().expect("vote lock");
        vote.as_ref()
            .is_some_and(|v| v.is_committed() && v.leader_id().voted_for() == Some(self.me) && v.leader_id() == leader)
    }

    /// A synced write (an append, or a cut back or purged log) left the log ending at `last`:
    /// everything written before it is durable too. A sync that started before does not
    /// speak for the log any more (it may have been cut back below that sync's target).
    pub(crate) fn synced(&self, last: Option<LogId>) {
        let mut t = self.tail.lock().expect("tail lock");
        t.epoch += 1;
        t.written = last;
        t.durable = last;
        t.pending = false;
        self.durable_index.send_replace(last.map_or(0, |l| l.index));
    }

    /// Entries up to `last` were written without a sync: one is started unless one is about to.
    pub(crate) fn written(self: &Arc<Self>, last: LogId) {
        let mut t = self.tail.lock().expect("tail lock");
        t.written = Some(last);
        t.pending = true;
        if !t.syncing {
            t.syncing = true;
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.sync_loop());
        }
    }

    fn sync_loop(&self) {
        while let Some((epoch, target)) = self.begin_sync() {
            if let Err(e) = self.db.sync_wal() {
                // Entries this leader counted towards commits may be lost: it must not go on
                // (a new leader takes over with the followers' copies).
                tracing::error!(error = %e, "syncing the Raft log failed; stopping");
                std::process::abort();
            }
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.end_sync(epoch, target);
        }
    }

    /// What the sync about to start covers, or `None` (and no task syncing) if nothing waits.
    fn begin_sync(&self) -> Option<(u64, Option<LogId>)> {
        let mut t = self.tail.lock().expect("tail lock");
        if !t.pending {
            t.syncing = false;
            return None;
        }
        t.pending = false;
        Some((t.epoch, t.written))
    }

    fn end_sync(&self, epoch: u64, target: Option<LogId>) {
        let mut t = self.tail.lock().expect("tail lock");
        let newer = target.map(|l| l.index) > t.durable.map(|l| l.index);
        if t.epoch == epoch && newer {
            t.durable = target;
            self.durable_index.send_replace(target.map_or(0, |l| l.index));
        }
    }

    /// Waits until the log is durable up to `index`.
    pub(crate) async fn wait_durable(&self, index: u64) {
        let mut rx = self.durable_index.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|d| *d >= index).await;
    }

    /// The commit index to tell followers: `commit`, or less, as far as the log is durable.
    pub(crate) fn clamp_commit(&self, commit: Option<LogId>) -> Option<LogId> {
        let durable = self.tail.lock().expect("tail lock").durable;
        match (commit, durable) {
            (Some(c), Some(d)) if d.index < c.index => Some(d),
            (Some(_), None) => None,
            (c, _) => c,
        }
    }

    /// A durability of an empty log in a database of its own, in `dir`.
    #[cfg(test)]
    pub(crate) fn open_in(dir: &std::path::Path) -> Arc<Self> {
        let db = Db::open_with(&dir.join("db"), &[], false).expect("open a database");
        Durability::open(1, db, None, None, Arc::default()).expect("open durability")
    }

    #[cfg(test)]
    fn durable(&self) -> Option<LogId> {
        self.tail.lock().expect("tail lock").durable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(term: u64, node: NodeId, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn open(dir: &tempfile::TempDir) -> Arc<Durability> {
        let db = Db::open_with(&dir.path().join("db"), &[], false).unwrap();
        Durability::open(1, db, Some(log_id(1, 2, 5)), None, Arc::default()).unwrap()
    }

    #[test]
    fn own_entries_are_those_of_this_nodes_committed_vote() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(&dir);
        assert!(!d.is_own(&CommittedLeaderId::new(3, 1)), "no vote yet");
        let mut v = Vote::new(3, 1);
        d.vote_saved(v);
        assert!(!d.is_own(&CommittedLeaderId::new(3, 1)), "a candidate's vote is not leadership");
        v.commit();
        d.vote_saved(v);
        assert!(d.is_own(&CommittedLeaderId::new(3, 1)));
        assert!(!d.is_own(&CommittedLeaderId::new(2, 1)), "its entries of an earlier term came from a leader");
        d.vote_saved(Vote::new_committed(4, 2));
        assert!(!d.is_own(&CommittedLeaderId::new(4, 2)), "another node's leadership");
    }

    #[tokio::test]
    async fn the_commit_told_to_followers_stops_at_the_durable_log() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(&dir);
        assert_eq!(d.clamp_commit(Some(log_id(1, 2, 4))), Some(log_id(1, 2, 4)));
        assert_eq!(d.clamp_commit(Some(log_id(3, 1, 9))), Some(log_id(1, 2, 5)));
        assert_eq!(d.clamp_commit(None), None);
        d.written(log_id(3, 1, 9));
        tokio::time::timeout(std::time::Duration::from_secs(10), d.wait_durable(9)).await.expect("synced");
        assert_eq!(d.durable(), Some(log_id(3, 1, 9)));
        assert_eq!(d.clamp_commit(Some(log_id(3, 1, 9))), Some(log_id(3, 1, 9)));
    }

    #[tokio::test]
    async fn nothing_waiting_for_an_entry_written_unsynced_goes_on_before_its_sync() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(&dir);
        // As if a sync task were already running: `written` leaves the sync to it.
        d.tail.lock().unwrap().syncing = true;
        d.written(log_id(3, 1, 6));
        let short = std::time::Duration::from_millis(200);
        assert!(tokio::time::timeout(short, d.wait_durable(6)).await.is_err(), "applied before its sync");
        assert_eq!(d.clamp_commit(Some(log_id(3, 1, 6))), Some(log_id(1, 2, 5)), "told to followers before its sync");
        let (epoch, target) = d.begin_sync().expect("a sync to do");
        assert_eq!(target, Some(log_id(3, 1, 6)));
        d.end_sync(epoch, target);
        tokio::time::timeout(short, d.wait_durable(6)).await.expect("durable after the sync");
        assert_eq!(d.clamp_commit(Some(log_id(3, 1, 6))), Some(log_id(3, 1, 6)));
    }

    #[tokio::test]
    async fn a_cut_back_log_is_not_made_longer_by_an_older_sync() {
        let dir = tempfile::tempdir().unwrap();
        let d = open(&dir);
        // A sync of entries up to 9 starts; the log is cut back to 3 before it ends.
        {
            let mut t = d.tail.lock().unwrap();
            (t.written, t.pending, t.syncing) = (Some(log_id(3, 1, 9)), true, true);
        }
        let (epoch, target) = d.begin_sync().expect("a sync to do");
        d.synced(Some(log_id(1, 2, 3)));
        d.end_sync(epoch, target);
        assert_eq!(d.durable(), Some(log_id(1, 2, 3)));
        assert_eq!(d.clamp_commit(Some(log_id(1, 2, 5))), Some(log_id(1, 2, 3)));
        assert!(d.begin_sync().is_none(), "nothing left to sync");
        // Without the cut, the same sync would have counted.
        d.written(log_id(4, 1, 7));
        tokio::time::timeout(std::time::Duration::from_secs(10), d.wait_durable(7)).await.expect("synced");
        assert_eq!(d.durable(), Some(log_id(4, 1, 7)));
    }
}
