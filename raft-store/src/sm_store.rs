//! The state-machine side of the store: applying entries, building and installing snapshots.
//!
//! Each entry is applied as one RocksDB write batch that also records the entry's log id as
//! `last_applied` (and the membership, for membership entries), so state and applied index
//! always move together. These writes are not synced: they share the WAL with the Raft log,
//! whose synced appends make everything before them durable, and an entry lost in a crash is
//! simply applied again from the log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{ReadOptions, WriteBatch};

use crate::db::{decode_value, encode_value, Db, CF_SM_META};
use crate::durable::Durability;
use crate::error::{Error, Result};
use crate::log_store::storage_error;
use crate::machine::{overlay_into_batch, ApplyCtx, ErasedMachine, Overlay};
use crate::snapshot::{SnapshotDir, SnapshotReader, SnapshotWriter};
use crate::types::{Batch, Entry, LogId, Payload, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const KEY_APPLIED: &[u8] = b"last_applied";
/// Entries applied between two chances for the node's other tasks to run.
const APPLY_YIELD_EVERY: usize = 64;
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Present while a snapshot is being loaded: its file, so that a crash mid-load is finished at
/// the next start instead of leaving a half-replaced state.
const KEY_INSTALLING: &[u8] = b"installing";

/// Counters of the state machine, for metrics and tests.
#[derive(Debug, Default)]
pub struct SmStats {
    /// Entries applied since this process started (replays included).
    pub applied_since_start: AtomicU64,
    pub snapshots_built: AtomicU64,
    /// The last log index of the snapshot built last (set before `snapshots_built` moves).
    pub last_built_index: AtomicU64,
    pub snapshots_installed: AtomicU64,
}

/// State shared by the state machine and its snapshot builders.
pub(crate) struct Shared {
    db: Arc<Db>,
    machine: Arc<dyn ErasedMachine>,
    dir: SnapshotDir,
    /// The newest snapshot file on disk and its meta.
    current: Mutex<Option<(SnapshotMeta, PathBuf)>>,
    pub(crate) stats: Arc<SmStats>,
}

pub struct SmStore {
    shared: Arc<Shared>,
    /// This node's log on disk: nothing is applied before it is durable here.
    durability: Arc<Durability>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The file a snapshot stream is being written to.
    receiving: Option<PathBuf>,
}

fn snap_err(e: Error) -> StorageError {
    storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
}

fn read_applied_state(db: &Db) -> Result<(Option<LogId>, StoredMembership)> {
    let applied = db.get_value::<Option<LogId>>(CF_SM_META, KEY_APPLIED)?.flatten();
    let membership = db.get_value::<StoredMembership>(CF_SM_META, KEY_MEMBERSHIP)?.unwrap_or_default();
    Ok((applied, membership))
}

/// Replaces the application's column families with the content of a verified snapshot file.
fn load_snapshot(db: &Db, path: &Path) -> Result<SnapshotMeta> {
    let mut reader = SnapshotReader::open(path)?;
    if reader.column_families != db.app_cfs() {
        return Err(Error::Storage(format!(
            "snapshot {} holds column families {:?}, this node has {:?}",
            path.display(),
            reader.column_families,
            db.app_cfs()
        )));
    }
    let meta_cf = db.cf(CF_SM_META)?;
    let mut batch = WriteBatch::default();
    batch.put_cf(meta_cf, KEY_INSTALLING, path.to_string_lossy().as_bytes());
    db.write(batch, true)?;

    let mut batch = WriteBatch::default();
    for name in db.app_cfs() {
        db.clear_cf(&mut batch, name)?;
    }
    db.write(batch, false)?;
    let cfs = db.app_cfs().iter().map(|n| db.cf(n)).collect::<Result<Vec<_>>>()?;
    while let Some(records) = reader.next_batch()? {
        let mut batch = WriteBatch::default();
        for r in records {
            batch.put_cf(cfs[r.cf as usize], r.key, r.value);
        }
        db.write(batch, false)?;
    }
    let meta = reader.meta;
    let mut batch = WriteBatch::default();
    batch.put_cf(meta_cf, KEY_APPLIED, encode_value(&meta.last_log_id));
    batch.put_cf(meta_cf, KEY_MEMBERSHIP, encode_value(&meta.last_membership));
    batch.delete_cf(meta_cf, KEY_INSTALLING);
    db.write(batch, true)?;
    Ok(meta)
}

impl SmStore {
    /// Opens the state machine over `db`, finishing a snapshot load that a crash interrupted.
    pub(crate) fn open(
        db: Arc<Db>,
        machine: Arc<dyn ErasedMachine>,
        dir: SnapshotDir,
        durability: Arc<Durability>,
    ) -> Result<Self> {
        if let Some(path) = db.get(CF_SM_META, KEY_INSTALLING)? {
            let path = PathBuf::from(String::from_utf8_lossy(&path).into_owned());
            tracing::warn!(file = %path.display(), "finishing a snapshot load interrupted by a restart");
            load_snapshot(&db, &path)?;
        }
        let (last_applied, membership) = read_applied_state(&db)?;
        let current = dir.latest()?;
        machine.restored(&db)?;
        tracing::info!(last_applied = ?last_applied, snapshot = ?current.as_ref().map(|c| &c.1), "state machine opened");
        let shared = Arc::new(Shared { db, machine, dir, current: Mutex::new(current), stats: Arc::default() });
        Ok(SmStore { shared, durability, last_applied, membership, receiving: None })
    }

    pub(crate) fn stats(&self) -> Arc<SmStats> {
        self.shared.stats.clone()
    }

    fn apply_one(&mut self, entry: Entry) -> Result<Batch> {
        let db = &self.shared.db;
        let log_id = entry.log_id;
        let mut batch = WriteBatch::default();
        let reply = match entry.payload {
            EntryPayload::Blank => Batch::default(),
            EntryPayload::Normal(ops) => {
                let mut overlay = Overlay::new();
                let mut replies = Vec::with_capacity(ops.0.len());
                for op in &ops.0 {
                    let mut ctx = ApplyCtx::new(db, &mut overlay, log_id.index);
                    replies.push(Payload(self.shared.machine.apply_bytes(&mut ctx, &op.0)?));
                }
                overlay_into_batch(db, overlay, &mut batch)?;
                Batch(replies)
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m);
                batch.put_cf(db.cf(CF_SM_META)?, KEY_MEMBERSHIP, encode_value(&stored));
                self.membership = stored;
                Batch::default()
            }
        };
        batch.put_cf(db.cf(CF_SM_META)?, KEY_APPLIED, encode_value(&Some(log_id)));
        db.write(batch, false)?;
        self.last_applied = Some(log_id);
        self.shared.stats.applied_since_start.fetch_add(1, Ordering::Relaxed);
        Ok(reply)
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Batch>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let Some(last) = entries.last() {
            // A leader's own entries may be committed before its copy is synced (see
            // `durable`): applying one is answering a client, so it waits for that sync.
            self.durability.wait_durable(last.log_id.index).await;
        }
        let mut replies = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            // A node may run on one thread: a long batch (a follower catching up) lets its
            // heartbeats and requests through.
            if i > 0 && i % APPLY_YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            let log_id = entry.log_id;
            let reply =
                self.apply_one(entry).map_err(|e| storage_error(ErrorSubject::Apply(log_id), ErrorVerb::Write, e))?;
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { shared: self.shared.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        if let Some(old) = self.receiving.take() {
            let _ = tokio::fs::remove_file(old).await;
        }
        let path = self.shared.dir.temp_file("incoming");
        let file = tokio::fs::File::create(&path).await.map_err(|e| snap_err(e.into()))?;
        self.receiving = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        snapshot.sync_all().await.map_err(|e| snap_err(e.into()))?;
        drop(snapshot);
        let incoming = self
            .receiving
            .take()
            .ok_or_else(|| snap_err(Error::Storage("install without a received snapshot file".into())))?;
        let shared = self.shared.clone();
        let expected = meta.clone();
        let installed = tokio::task::spawn_blocking(move || -> Result<(SnapshotMeta, PathBuf)> {
            let (file_meta, records) = SnapshotReader::verify(&incoming)?;
            if file_meta.last_log_id != expected.last_log_id || file_meta.last_membership != expected.last_membership {
                return Err(Error::Storage(format!(
                    "received snapshot file is for {:?}, the leader announced {:?}",
                    file_meta.last_log_id, expected.last_log_id
                )));
            }
            let dest = shared.dir.file_for(&file_meta);
            std::fs::rename(&incoming, &dest)?;
            crate::snapshot::sync_dir(&dest)?;
            let meta = load_snapshot(&shared.db, &dest)?;
            shared.machine.restored(&shared.db)?;
            shared.dir.remove_others(&dest)?;
            tracing::info!(last_log_id = ?meta.last_log_id, records, "installed a snapshot from the leader");
            Ok((meta, dest))
        })
        .await
        .map_err(|e| snap_err(Error::Storage(format!("snapshot install task failed: {e}"))))?
        .map_err(snap_err)?;
        self.last_applied = installed.0.last_log_id;
        self.membership = installed.0.last_membership.clone();
        *self.shared.current.lock().expect("snapshot lock") = Some(installed);
        self.shared.stats.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.shared.current.lock().expect("snapshot lock").clone();
        let Some((meta, path)) = current else { return Ok(None) };
        let file = tokio::fs::File::open(&path).await.map_err(|e| snap_err(e.into()))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}

/// Builds a snapshot file from a RocksDB snapshot, off the apply path.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl SnapshotBuilder {
    /// Writes every record of the application's column families as of one RocksDB snapshot.
    /// The applied log id and membership are read from that same RocksDB snapshot, so the
    /// file's meta matches its content even though applying goes on meanwhile.
    fn build_blocking(shared: &Shared) -> Result<(SnapshotMeta, PathBuf, u64)> {
        let db = &shared.db;
        let snap = db.raw().snapshot();
        let meta_cf = db.cf(CF_SM_META)?;
        let last_log_id = match snap.get_cf(meta_cf, KEY_APPLIED)? {
            Some(v) => decode_value::<Option<LogId>>(&v)?,
            None => None,
        };
        let last_membership = match snap.get_cf(meta_cf, KEY_MEMBERSHIP)? {
            Some(v) => decode_value::<StoredMembership>(&v)?,
            None => StoredMembership::default(),
        };
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{:08x}", l.leader_id.term, l.index, rand::random::<u32>()),
            None => format!("0-0-{:08x}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let mut writer = SnapshotWriter::create(shared.dir.temp_file("build"), &meta, db.app_cfs())?;
        for (i, name) in db.app_cfs().iter().enumerate() {
            let mut ro = ReadOptions::default();
            ro.fill_cache(false);
            let mut it = snap.raw_iterator_cf_opt(db.cf(name)?, ro);
            it.seek_to_first();
            while let Some((k, v)) = it.item() {
                writer.add(i as u8, k, v)?;
                it.next();
            }
            it.status()?;
        }
        let dest = shared.dir.file_for(&meta);
        let records = writer.finish(&dest)?;
        Ok((meta, dest, records))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let (meta, path, records) = tokio::task::spawn_blocking(move || SnapshotBuilder::build_blocking(&shared))
            .await
            .map_err(|e| snap_err(Error::Storage(format!("snapshot build task failed: {e}"))))?
            .map_err(snap_err)?;
        tracing::info!(last_log_id = ?meta.last_log_id, records, file = %path.display(), "built a snapshot");
        {
            let mut current = self.shared.current.lock().expect("snapshot lock");
            let newer = match &*current {
                Some((m, _)) => m.last_log_id <= meta.last_log_id,
                None => true,
            };
            if newer {
                *current = Some((meta.clone(), path.clone()));
                // Files being sent to followers stay readable through their open handles.
                self.shared.dir.remove_others(&path).map_err(snap_err)?;
            }
        }
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.shared.stats.last_built_index.store(index, Ordering::SeqCst);
        self.shared.stats.snapshots_built.fetch_add(1, Ordering::SeqCst);
        let file = tokio::fs::File::open(&path).await.map_err(|e| snap_err(e.into()))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}
