//! The Raft log on RocksDB.
//!
//! An append from another leader (this node follows) writes the entries and syncs the
//! write-ahead log before it reports them persisted, so before this node acknowledges them to
//! the leader. The leader's own entries are reported as soon as they are written and synced by
//! a blocking task meanwhile, which lets openraft send them to the followers without waiting
//! for the leader's fsync; [`crate::durable`] explains what keeps that safe. Concurrent
//! proposals share syncs, because the proposer packs them into one entry (see `propose`).

// openraft's StorageError is large; it is what the trait methods must return anyway.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::WriteBatch;

use crate::db::{decode_value, encode_value, Db, CF_LOG, CF_RAFT_STATE};
use crate::durable::Durability;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

pub(crate) fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// Counters of the log's disk work, for metrics and the benchmark, and the commit index.
#[derive(Debug, Default)]
pub struct LogStats {
    pub appends: AtomicU64,
    pub entries: AtomicU64,
    pub fsyncs: AtomicU64,
    /// One more than the highest index known committed (0: none), set before the entries up
    /// to it are applied: a read that waits for it sees every acknowledged write.
    pub committed: AtomicU64,
}

/// The Raft log storage of one node. Cheap to clone (the log reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    stats: Arc<LogStats>,
    durability: Arc<Durability>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The id of the log's last entry, or of the last one purged when none is left.
fn log_end(db: &Db) -> crate::Result<Option<LogId>> {
    let mut it = db.raw().raw_iterator_cf(db.cf(CF_LOG)?);
    it.seek_to_last();
    match it.value() {
        Some(v) => Ok(Some(decode_value::<Entry>(v)?.log_id)),
        None => {
            it.status()?;
            db.get_value::<LogId>(CF_RAFT_STATE, KEY_PURGED)
        }
    }
}

impl LogStore {
    /// The log of node `me`; everything already written to it is synced first.
    pub fn open(me: NodeId, db: Arc<Db>) -> crate::Result<Self> {
        let vote = db.get_value::<Vote>(CF_RAFT_STATE, KEY_VOTE)?;
        let last = log_end(&db)?;
        let stats = Arc::new(LogStats::default());
        let durability = Durability::open(me, db.clone(), last, vote, stats.clone())?;
        Ok(LogStore { db, stats, durability })
    }

    pub fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    pub(crate) fn durability(&self) -> Arc<Durability> {
        self.durability.clone()
    }

    fn get_state<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        self.db.get_value(CF_RAFT_STATE, key).map_err(|e| storage_error(subject, ErrorVerb::Read, e))
    }

    fn put_state<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        sync: bool,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let cf = self.db.cf(CF_RAFT_STATE).map_err(|e| storage_error(subject.clone(), ErrorVerb::Write, e))?;
        batch.put_cf(cf, key, encode_value(value));
        self.db.write(batch, sync).map_err(|e| storage_error(subject, ErrorVerb::Write, e))
    }

    fn log_end(&self) -> Result<Option<LogId>, StorageError> {
        log_end(&self.db).map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    /// Deletes log entries with index in `[from, to)` (a range delete, then a synced WAL).
    fn delete_range(&self, from: u64, to: u64, extra: Option<(&[u8], Vec<u8>)>) -> Result<(), StorageError> {
        let write_err = |e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.db.cf(CF_LOG).map_err(write_err)?, index_key(from), index_key(to));
        if let Some((k, v)) = extra {
            batch.put_cf(self.db.cf(CF_RAFT_STATE).map_err(write_err)?, k, v);
        }
        self.db.write(batch, true).map_err(write_err)?;
        // Synced: everything written is durable; the log may have lost its tail.
        self.durability.synced(self.log_end()?);
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let read_err = |e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.db.cf(CF_LOG).map_err(read_err)?;
        let mut it = self.db.raw().raw_iterator_cf(cf);
        it.seek(index_key(start));
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let index = u64::from_be_bytes(
                k.try_into().map_err(|_| read_err(crate::Error::Storage(format!("log key of {} bytes", k.len()))))?,
            );
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = decode_value(v).map_err(read_err)?;
            if entry.log_id.index != index {
                return Err(read_err(crate::Error::Storage(format!(
                    "log entry stored at {index} says {}",
                    entry.log_id.index
                ))));
            }
            out.push(entry);
            it.next();
        }
        it.status().map_err(|e| read_err(e.into()))?;
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_state(KEY_PURGED, ErrorSubject::Logs)?;
        let last_log_id = self.log_end()?;
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // A vote must be on disk before this node acts on it (grants it, or campaigns).
        self.put_state(KEY_VOTE, vote, true, ErrorSubject::Vote)?;
        self.durability.vote_saved(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_state(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = &committed {
            self.stats.committed.fetch_max(c.index + 1, Ordering::Release);
        }
        // Not synced: a stale value only means applying a little less at the next start.
        self.put_state(KEY_COMMITTED, &committed, false, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_state::<Option<LogId>>(KEY_COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write_err = |e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, e);
        let cf = self.db.cf(CF_LOG).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        let mut n = 0;
        let mut last: Option<LogId> = None;
        let mut own = true;
        for entry in entries {
            batch.put_cf(cf, index_key(entry.log_id.index), encode_value(&entry));
            own &= self.durability.is_own(&entry.log_id.leader_id);
            last = Some(entry.log_id);
            n += 1;
        }
        let Some(last) = last else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        self.stats.entries.fetch_add(n, Ordering::Relaxed);
        if own {
            // This leader's own entries: reported written, synced meanwhile (see `durable`).
            self.db.write(batch, false).map_err(write_err)?;
            self.durability.written(last);
        } else {
            // A synced write: the entries are durable when it returns. It blocks this task for
            // an fsync, which openraft's core would wait for anyway.
            self.db.write(batch, true).map_err(write_err)?;
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.durability.synced(Some(last));
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(from = log_id.index, "truncating the Raft log");
        self.delete_range(log_id.index, u64::MAX, None)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(upto = log_id.index, "purging the Raft log");
        self.delete_range(0, log_id.index + 1, Some((KEY_PURGED, encode_value(&log_id))))
    }
}
