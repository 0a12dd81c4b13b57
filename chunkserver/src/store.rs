//! The chunkserver's replicas: an index of the chunks on its folders and every operation on
//! them (read, write, sync, and the leader's orders), one at a time per chunk. File I/O runs
//! on blocking threads. Changes are announced to the master links as [`StoreEvent`]s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alces_proto::link::client_cs::DataError;
use alces_proto::link::cs_master::{ChunkState, CsLoad, FolderLoad};
use alces_proto::types::{ChunkId, ChunkVersion, CHUNK_SIZE};
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::folders::{Folders, Scan};
use crate::format::{default_subfolder, sync_parent, ChunkError, ChunkFile};

/// A change the masters must hear about.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    Added(ChunkState),
    Removed(ChunkId, ChunkVersion),
    Damaged(ChunkId, ChunkVersion),
}

struct SlotState {
    version: ChunkVersion,
    folder: usize,
    /// The sub-folder (`XX/`) of the file.
    sub: u8,
    /// Kept open between operations; closed when idle.
    file: Option<ChunkFile>,
    length: u64,
    last_used: Instant,
    /// Removed from the index while an operation waited for the lock.
    gone: bool,
}

type Slot = Arc<tokio::sync::Mutex<SlotState>>;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FolderUsage {
    chunks: u64,
    bytes: u64,
}

pub struct Store {
    folders: Folders,
    index: Mutex<HashMap<ChunkId, Slot>>,
    /// Chunks and bytes (file sizes) per folder, kept in step with the index: a replica
    /// counts from its install until it is marked gone, so choosing a folder for a new one
    /// does not walk every replica.
    usage: Mutex<Vec<FolderUsage>>,
    events: broadcast::Sender<StoreEvent>,
    pub crc_errors: AtomicU64,
    pub busy: AtomicU64,
}

fn io_error(e: ChunkError) -> DataError {
    match e {
        ChunkError::Crc { block } => DataError::Crc { block },
        ChunkError::Range { .. } => DataError::Range,
        ChunkError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => DataError::NoSpace,
        other => DataError::Io(other.to_string()),
    }
}

fn join_error(e: tokio::task::JoinError) -> DataError {
    DataError::Io(format!("i/o task failed: {e}"))
}

impl Store {
    /// Builds the index from a scan of the folders (damaged files are logged and left alone).
    pub fn new(folders: Folders, scan: Scan) -> Arc<Store> {
        for (path, why) in &scan.damaged {
            tracing::warn!(file = %path.display(), reason = %why, "unusable chunk file");
        }
        let now = Instant::now();
        let mut usage = vec![FolderUsage::default(); folders.folders.len()];
        for c in &scan.chunks {
            usage[c.folder].chunks += 1;
            usage[c.folder].bytes += c.length + crate::format::DATA_OFFSET;
        }
        let index = scan
            .chunks
            .into_iter()
            .map(|c| {
                let st = SlotState {
                    version: c.version,
                    folder: c.folder,
                    sub: c.sub,
                    file: None,
                    length: c.length,
                    last_used: now,
                    gone: false,
                };
                (c.id, Arc::new(tokio::sync::Mutex::new(st)))
            })
            .collect();
        let (events, _) = broadcast::channel(65_536);
        Arc::new(Store {
            folders,
            index: Mutex::new(index),
            usage: Mutex::new(usage),
            events,
            crc_errors: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    fn slot(&self, id: ChunkId) -> Option<Slot> {
        self.index.lock().expect("index lock").get(&id).cloned()
    }

    fn leaving(&self, folder: usize) -> bool {
        self.folders.folders[folder].spec.leaving
    }

    fn state_of(&self, id: ChunkId, st: &SlotState) -> ChunkState {
        ChunkState { chunk: id, version: st.version, length: st.length as u32, leaving: self.leaving(st.folder) }
    }

    /// Every replica, for a full report.
    pub async fn list(&self) -> Vec<ChunkState> {
        let slots: Vec<(ChunkId, Slot)> =
            self.index.lock().expect("index lock").iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut out = Vec::with_capacity(slots.len());
        for (id, slot) in slots {
            let st = slot.lock().await;
            if !st.gone {
                out.push(self.state_of(id, &st));
            }
        }
        out
    }

    pub fn chunk_count(&self) -> usize {
        self.index.lock().expect("index lock").len()
    }

    /// Chunks and bytes per folder.
    fn usage(&self) -> Vec<(u64, u64)> {
        self.usage.lock().expect("usage lock").iter().map(|u| (u.chunks, u.bytes)).collect()
    }

    /// Moves a replica's share of its folder's usage: `before` is the data length it was
    /// counted with (none for a new replica), `after` the one it counts with now (none once
    /// it is gone).
    fn account(&self, folder: usize, before: Option<u64>, after: Option<u64>) {
        let mut usage = self.usage.lock().expect("usage lock");
        let Some(u) = usage.get_mut(folder) else { return };
        if let Some(len) = before {
            u.chunks = u.chunks.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(len + crate::format::DATA_OFFSET);
        }
        if let Some(len) = after {
            u.chunks += 1;
            u.bytes += len + crate::format::DATA_OFFSET;
        }
    }

    /// Sets a replica's data length, moving its share of the folder's usage.
    fn set_length(&self, st: &mut SlotState, length: u64) {
        if st.length != length && !st.gone {
            self.account(st.folder, Some(st.length), Some(length));
        }
        st.length = length;
    }

    /// Marks the replica in `slot` gone (its file closed), takes it out of the index (unless
    /// a newer replica of `id` took its place there) and out of its folder's usage.
    fn forget(&self, id: ChunkId, slot: &Slot, st: &mut SlotState) {
        if st.gone {
            return;
        }
        st.file = None;
        st.gone = true;
        self.account(st.folder, Some(st.length), None);
        let mut index = self.index.lock().expect("index lock");
        if index.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            index.remove(&id);
        }
    }

    /// Space and load for heartbeats.
    pub async fn load(&self) -> CsLoad {
        let per_folder = self.usage();
        let used: Vec<u64> = per_folder.iter().map(|(_, bytes)| *bytes).collect();
        let space = self.folders.space(&used);
        let folders: Vec<FolderLoad> = space
            .iter()
            .zip(&per_folder)
            .map(|(s, (chunks, used))| FolderLoad {
                path: s.path.display().to_string(),
                total_bytes: s.total,
                used_bytes: *used,
                avail_bytes: if s.leaving { 0 } else { s.avail },
                chunks: *chunks,
                leaving: s.leaving,
            })
            .collect();
        CsLoad {
            total_bytes: folders.iter().map(|f| f.total_bytes).sum(),
            used_bytes: folders.iter().map(|f| f.used_bytes).sum(),
            avail_bytes: folders.iter().map(|f| f.avail_bytes).sum(),
            chunks: folders.iter().map(|f| f.chunks).sum(),
            busy: self.busy.load(Ordering::Relaxed) as u32,
            crc_errors: self.crc_errors.load(Ordering::Relaxed),
            folders,
        }
    }

    /// Runs `f` on the open chunk file of `id` at `version`, on a blocking thread.
    async fn with_file<T: Send + 'static>(
        &self,
        id: ChunkId,
        version: ChunkVersion,
        f: impl FnOnce(&mut ChunkFile) -> Result<T, ChunkError> + Send + 'static,
    ) -> Result<T, DataError> {
        let slot = self.slot(id).ok_or(DataError::NoChunk)?;
        let mut st = slot.lock().await;
        if st.gone {
            return Err(DataError::NoChunk);
        }
        if st.version != version {
            return Err(DataError::WrongVersion { have: st.version });
        }
        self.busy.fetch_add(1, Ordering::Relaxed);
        let file = st.file.take();
        let path = self.folders.path(st.folder, st.sub, id, st.version);
        let res = tokio::task::spawn_blocking(move || {
            let mut file = match file {
                Some(f) => f,
                None => ChunkFile::open(&path)?,
            };
            let r = f(&mut file);
            Ok::<_, ChunkError>((file, r))
        })
        .await;
        self.busy.fetch_sub(1, Ordering::Relaxed);
        let (file, r) = res.map_err(join_error)?.map_err(io_error)?;
        self.set_length(&mut st, file.len());
        st.last_used = Instant::now();
        st.file = Some(file);
        match r {
            Ok(v) => Ok(v),
            Err(ChunkError::Crc { block }) => {
                drop(st);
                self.damaged(id, version, block).await;
                Err(DataError::Crc { block })
            }
            Err(e) => Err(io_error(e)),
        }
    }

    /// A replica failed its CRC check: it is moved aside, forgotten and reported.
    async fn damaged(&self, id: ChunkId, version: ChunkVersion, block: u32) {
        self.crc_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(chunk = %id.hex(), version = %version, block, "CRC error: replica dropped");
        let Some(slot) = self.slot(id) else { return };
        let mut st = slot.lock().await;
        if st.gone || st.version != version {
            return;
        }
        self.forget(id, &slot, &mut st);
        let path = self.folders.path(st.folder, st.sub, id, st.version);
        let aside =
            path.with_file_name(format!("damaged_{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("chunk")));
        if let Err(e) = std::fs::rename(&path, &aside) {
            tracing::warn!(error = %e, file = %path.display(), "cannot move a damaged chunk aside");
        }
        let _ = self.events.send(StoreEvent::Damaged(id, version));
    }

    pub async fn read(&self, id: ChunkId, version: ChunkVersion, offset: u32, len: u32) -> Result<Bytes, DataError> {
        if offset as u64 + len as u64 > CHUNK_SIZE {
            return Err(DataError::Range);
        }
        self.with_file(id, version, move |f| f.read(offset as u64, len)).await
    }

    pub async fn write(&self, id: ChunkId, version: ChunkVersion, offset: u32, data: Vec<u8>) -> Result<(), DataError> {
        if offset as u64 + data.len() as u64 > CHUNK_SIZE {
            return Err(DataError::Range);
        }
        self.with_file(id, version, move |f| f.write(offset as u64, &data)).await?;
        Ok(())
    }

    /// Writes `pieces` in order, then syncs if `sync`, in one blocking call. Returns how many
    /// pieces were written and how the batch ended: an error belongs to piece `done`, or to
    /// the sync when every piece was written.
    pub async fn write_batch(
        &self,
        id: ChunkId,
        version: ChunkVersion,
        pieces: Vec<(u32, Bytes)>,
        sync: bool,
    ) -> (usize, Result<(), DataError>) {
        if let Some(bad) = pieces.iter().position(|(o, d)| *o as u64 + d.len() as u64 > CHUNK_SIZE) {
            return (bad, Err(DataError::Range));
        }
        let done = Arc::new(AtomicUsize::new(0));
        let count = done.clone();
        let r = self
            .with_file(id, version, move |f| {
                for (offset, data) in &pieces {
                    f.write(*offset as u64, data)?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                if sync {
                    f.sync()?;
                }
                Ok(())
            })
            .await;
        (done.load(Ordering::Relaxed), r)
    }

    pub async fn sync(&self, id: ChunkId, version: ChunkVersion) -> Result<(), DataError> {
        self.with_file(id, version, |f| f.sync()).await
    }

    /// The data length of a replica (for replication).
    pub async fn length(&self, id: ChunkId, version: ChunkVersion) -> Result<u64, DataError> {
        self.with_file(id, version, |f| Ok(f.len())).await
    }

    /// Verifies one block of a replica (the scrubber's unit of work); false when the
    /// replica is gone or has no such block.
    pub async fn verify_block(&self, id: ChunkId, version: ChunkVersion, block: u32) -> Result<bool, DataError> {
        self.with_file(id, version, move |f| {
            if block >= f.blocks() {
                return Ok(false);
            }
            f.read_block(block).map(|_| true)
        })
        .await
    }

    /// Replicas as (id, version), for the scrubber.
    pub fn ids(&self) -> Vec<ChunkId> {
        self.index.lock().expect("index lock").keys().copied().collect()
    }

    pub async fn version_of(&self, id: ChunkId) -> Option<ChunkVersion> {
        let slot = self.slot(id)?;
        let st = slot.lock().await;
        (!st.gone).then_some(st.version)
    }

    /// Whether there is a replica of `id` at `version` (false: none at all); a replica at
    /// another version is `WrongVersion`.
    pub async fn holds(&self, id: ChunkId, version: ChunkVersion) -> Result<bool, DataError> {
        match self.version_of(id).await {
            Some(v) if v == version => Ok(true),
            Some(have) => Err(DataError::WrongVersion { have }),
            None => Ok(false),
        }
    }

    fn announce_added(&self, id: ChunkId, st: &SlotState) {
        let _ = self.events.send(StoreEvent::Added(self.state_of(id, st)));
    }

    /// Removes any replica of `id` (used before a create or an incoming copy replaces it).
    async fn drop_existing(&self, id: ChunkId) {
        let Some(slot) = self.slot(id) else { return };
        let mut st = slot.lock().await;
        if st.gone {
            return;
        }
        self.forget(id, &slot, &mut st);
        let path = self.folders.path(st.folder, st.sub, id, st.version);
        let _ = std::fs::remove_file(&path);
        let _ = self.events.send(StoreEvent::Removed(id, st.version));
    }

    /// Installs a new replica file written at `tmp` under its final name.
    /// Adds a replica to the index; `keep_open`: the slot keeps `file` (which must be at its
    /// final path), else it is closed.
    fn install(
        &self,
        id: ChunkId,
        version: ChunkVersion,
        folder: usize,
        file: ChunkFile,
        keep_open: bool,
    ) -> Result<(), DataError> {
        let st = SlotState {
            version,
            folder,
            sub: default_subfolder(id),
            length: file.len(),
            file: keep_open.then_some(file),
            last_used: Instant::now(),
            gone: false,
        };
        self.announce_added(id, &st);
        self.account(folder, None, Some(st.length));
        let slot = Arc::new(tokio::sync::Mutex::new(st));
        let replaced = self.index.lock().expect("index lock").insert(id, slot);
        // Only when another replica of `id` was installed meanwhile (the callers drop the
        // one there was first): it leaves the index and the usage now.
        if let Some(old) = replaced {
            match old.try_lock() {
                Ok(mut st) => self.forget(id, &old, &mut st),
                Err(_) => tracing::warn!(chunk = %id.hex(), "a replaced replica was busy; folder usage may be off"),
            }
        }
        Ok(())
    }

    /// The folder for a new replica ([`crate::folders::Folders::choose`]).
    fn choose_folder(&self) -> Result<usize, DataError> {
        let usage = self.usage();
        self.folders.choose(&usage).ok_or(DataError::NoSpace)
    }

    /// Order: create an empty replica. It is not synced: it holds nothing anybody was told
    /// is stored, and the sync of the first data written to it makes the file and its name
    /// durable (a replica lost before that is one the master sees missing and copies again).
    /// The file stays open until then: one opened again from the disk would count its name
    /// as synced.
    pub async fn create(&self, id: ChunkId, version: ChunkVersion) -> Result<(), DataError> {
        self.drop_existing(id).await;
        self.create_empty(id, version).await?.map_err(io_error)
    }

    /// The start of a write to a new chunk: creates an empty replica at `version` (as
    /// [`Store::create`] does) unless one is there at that version already, from an earlier
    /// write under the same lease. A replica at another version is left alone: the write
    /// fails with `WrongVersion`.
    pub async fn create_for_write(&self, id: ChunkId, version: ChunkVersion) -> Result<(), DataError> {
        if self.holds(id, version).await? {
            return Ok(());
        }
        match self.create_empty(id, version).await? {
            Ok(()) => Ok(()),
            // Made by a write that started at the same time.
            Err(ChunkError::Exists(path)) => match self.holds(id, version).await? {
                true => Ok(()),
                false => Err(DataError::Io(format!("{} exists but holds no replica", path.display()))),
            },
            Err(e) => Err(io_error(e)),
        }
    }

    /// Creates an empty replica file in the folder with the most room and adds it to the index.
    async fn create_empty(&self, id: ChunkId, version: ChunkVersion) -> Result<Result<(), ChunkError>, DataError> {
        let folder = self.choose_folder()?;
        let path = self.folders.path(folder, default_subfolder(id), id, version);
        let file =
            tokio::task::spawn_blocking(move || ChunkFile::create(&path, id, version)).await.map_err(join_error)?;
        Ok(match file {
            Ok(file) => self.install(id, version, folder, file, true).map(Ok)?,
            Err(e) => Err(e),
        })
    }

    /// Order: move a replica to a new version (optionally cutting it to `length`).
    pub async fn set_version(
        &self,
        id: ChunkId,
        from: ChunkVersion,
        to: ChunkVersion,
        length: Option<u64>,
    ) -> Result<(), DataError> {
        let slot = self.slot(id).ok_or(DataError::NoChunk)?;
        let mut st = slot.lock().await;
        if st.gone {
            return Err(DataError::NoChunk);
        }
        if st.version == to && length.is_none() {
            return Ok(()); // already done (a repeated order)
        }
        if st.version != from {
            return Err(DataError::WrongVersion { have: st.version });
        }
        let old_path = self.folders.path(st.folder, st.sub, id, from);
        let new_path = self.folders.path(st.folder, st.sub, id, to);
        let file = st.file.take();
        let (file, res) = tokio::task::spawn_blocking(move || {
            let mut f = match file {
                Some(f) => f,
                None => ChunkFile::open(&old_path)?,
            };
            let r = (|| {
                if let Some(len) = length {
                    f.truncate(len)?;
                    f.sync()?;
                }
                f.set_version(to, &new_path)
            })();
            Ok::<_, ChunkError>((f, r))
        })
        .await
        .map_err(join_error)?
        .map_err(io_error)?;
        res.map_err(io_error)?;
        st.version = to;
        self.set_length(&mut st, file.len());
        st.file = Some(file);
        let _ = self.events.send(StoreEvent::Removed(id, from));
        self.announce_added(id, &st);
        Ok(())
    }

    /// Order: copy replica `from` into a new chunk `to` (copy-on-write), cut to `length`.
    pub async fn duplicate(
        &self,
        from: (ChunkId, ChunkVersion),
        to: (ChunkId, ChunkVersion),
        length: Option<u64>,
    ) -> Result<(), DataError> {
        let slot = self.slot(from.0).ok_or(DataError::NoChunk)?;
        let st = slot.lock().await;
        if st.gone {
            return Err(DataError::NoChunk);
        }
        if st.version != from.1 {
            return Err(DataError::WrongVersion { have: st.version });
        }
        let src = self.folders.path(st.folder, st.sub, from.0, from.1);
        let folder = st.folder;
        drop(st);
        self.drop_existing(to.0).await;
        let dst = self.folders.path(folder, default_subfolder(to.0), to.0, to.1);
        let file = tokio::task::spawn_blocking(move || {
            let s = ChunkFile::open(&src)?;
            let mut d = s.copy_to(&dst, to.0, to.1)?;
            if let Some(len) = length {
                d.truncate(len)?;
                d.sync()?;
            }
            Ok::<_, ChunkError>(d)
        })
        .await
        .map_err(join_error)?
        .map_err(io_error)?;
        self.install(to.0, to.1, folder, file, false)
    }

    /// Order: delete a replica (only the version named, so a newer one is never lost).
    pub async fn delete(&self, id: ChunkId, version: ChunkVersion) -> Result<(), DataError> {
        let Some(slot) = self.slot(id) else { return Ok(()) };
        let mut st = slot.lock().await;
        if st.gone {
            return Ok(());
        }
        if st.version != version {
            return Err(DataError::WrongVersion { have: st.version });
        }
        self.forget(id, &slot, &mut st);
        let path = self.folders.path(st.folder, st.sub, id, version);
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(&path)).await.map_err(join_error)?;
        let _ = self.events.send(StoreEvent::Removed(id, version));
        removed.map_err(|e| DataError::Io(e.to_string()))
    }

    /// Order: receive a whole replica from a peer; `fetch(offset, len)` reads a piece of the
    /// source and `length` is its data length.
    pub async fn receive<F, Fut>(
        &self,
        id: ChunkId,
        version: ChunkVersion,
        length: u64,
        mut fetch: F,
    ) -> Result<(), DataError>
    where
        F: FnMut(u32, u32) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, DataError>>,
    {
        let folder = self.choose_folder()?;
        let final_path = self.folders.path(folder, default_subfolder(id), id, version);
        let tmp: PathBuf = final_path.with_extension("mfs.tmp");
        let _ = std::fs::remove_file(&tmp);
        let t = tmp.clone();
        let mut file = tokio::task::spawn_blocking(move || ChunkFile::create(&t, id, version))
            .await
            .map_err(join_error)?
            .map_err(io_error)?;
        const PIECE: u64 = 1 << 20;
        let mut offset = 0u64;
        while offset < length {
            let len = PIECE.min(length - offset) as u32;
            let data = match fetch(offset as u32, len).await {
                Ok(d) if d.len() == len as usize => d,
                Ok(d) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(DataError::Protocol(format!("source sent {} bytes, asked {len}", d.len())));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            let off = offset;
            file = tokio::task::spawn_blocking(move || {
                file.write(off, &data)?;
                Ok::<_, ChunkError>(file)
            })
            .await
            .map_err(join_error)?
            .map_err(io_error)?;
            offset += len as u64;
        }
        self.drop_existing(id).await;
        let fp = final_path.clone();
        let file = tokio::task::spawn_blocking(move || {
            file.sync()?;
            std::fs::rename(&tmp, &fp)?;
            sync_parent(&fp)?;
            Ok::<_, ChunkError>(file)
        })
        .await
        .map_err(join_error)?
        .map_err(io_error)?;
        self.install(id, version, folder, file, false)
    }

    /// Closes chunk files nobody used for `idle`, but for new ones whose name is not synced
    /// yet (see [`Store::create`]).
    pub async fn close_idle(&self, idle: Duration) {
        let slots: Vec<Slot> = self.index.lock().expect("index lock").values().cloned().collect();
        for slot in slots {
            if let Ok(mut st) = slot.try_lock() {
                if st.file.as_ref().is_some_and(ChunkFile::name_synced) && st.last_used.elapsed() > idle {
                    st.file = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folders::FolderSpec;
    use alces_proto::types::BLOCK_SIZE;

    fn state(store: &Store, id: ChunkId) -> (bool, Option<bool>) {
        let slot = store.slot(id).expect("the chunk is indexed");
        let st = slot.try_lock().expect("nobody holds the slot");
        (st.gone, st.file.as_ref().map(ChunkFile::name_synced))
    }

    /// The folder usage walked the slow way, from every replica in the index.
    async fn walked_usage(store: &Store) -> Vec<(u64, u64)> {
        let mut per_folder = vec![(0, 0); store.folders.folders.len()];
        let slots: Vec<Slot> = store.index.lock().unwrap().values().cloned().collect();
        for slot in slots {
            let st = slot.lock().await;
            if !st.gone {
                per_folder[st.folder].0 += 1;
                per_folder[st.folder].1 += st.length + crate::format::DATA_OFFSET;
            }
        }
        per_folder
    }

    /// The usage kept in step with every operation equals the one walked from the index,
    /// and the folder with fewer chunks takes the next one.
    #[tokio::test]
    async fn folder_usage_follows_every_change() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let open = || Folders::open(vec![FolderSpec::new(a.path(), false), FolderSpec::new(b.path(), false)]).unwrap();
        let folders = open();
        let scan = folders.scan();
        let store = Store::new(folders, scan);
        let v = ChunkVersion(1);
        let check = |what: &'static str| {
            let store = &store;
            async move {
                let walked = walked_usage(store).await;
                assert_eq!(store.usage(), walked, "after {what}");
                walked
            }
        };
        for i in 1..=4 {
            store.create(ChunkId(i), v).await.unwrap();
        }
        assert_eq!(check("creates").await.iter().map(|u| u.0).collect::<Vec<_>>(), vec![2, 2], "spread by count");
        store.write(ChunkId(1), v, 0, vec![1u8; 200_000]).await.unwrap();
        store.write(ChunkId(2), v, 70_000, vec![2u8; 10]).await.unwrap();
        check("writes").await;
        store.set_version(ChunkId(1), v, ChunkVersion(2), Some(1000)).await.unwrap();
        check("a cut").await;
        store.duplicate((ChunkId(1), ChunkVersion(2)), (ChunkId(9), v), None).await.unwrap();
        check("a duplicate").await;
        store.delete(ChunkId(2), v).await.unwrap();
        check("a delete").await;
        store.create(ChunkId(3), v).await.unwrap();
        check("a create over a replica").await;
        let data = vec![5u8; 70_000];
        let d = data.clone();
        store
            .receive(ChunkId(4), ChunkVersion(3), 70_000, |o, l| {
                let piece = d[o as usize..(o + l) as usize].to_vec();
                async move { Ok(piece) }
            })
            .await
            .unwrap();
        check("a replica received over one").await;
        // A flipped bit: the replica is dropped on read.
        let slot = store.slot(ChunkId(1)).unwrap();
        let path = {
            let mut st = slot.lock().await;
            st.file = None;
            store.folders.path(st.folder, st.sub, ChunkId(1), ChunkVersion(2))
        };
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"X", crate::format::DATA_OFFSET + 5).unwrap();
        assert!(store.read(ChunkId(1), ChunkVersion(2), 0, 10).await.is_err());
        let walked = check("a damaged replica").await;
        // A restart counts the same from the scan.
        drop(store);
        let folders = open();
        let scan = folders.scan();
        assert_eq!(Store::new(folders, scan).usage(), walked, "after a rescan");
    }

    /// A created replica stays open, its name not synced, through idle closing, until the
    /// first write's sync syncs the name too. (Opened again from the disk, it would count as
    /// synced and the sync would leave the name out.)
    #[tokio::test]
    async fn a_new_replicas_name_is_synced_by_its_first_sync() {
        let dir = tempfile::tempdir().unwrap();
        let folders = Folders::open(vec![FolderSpec::new(dir.path(), false)]).unwrap();
        let scan = folders.scan();
        let store = Store::new(folders, scan);
        let (id, v) = (ChunkId(0x51), ChunkVersion(1));
        store.create(id, v).await.unwrap();
        assert_eq!(state(&store, id), (false, Some(false)), "open, name not synced");
        store.close_idle(Duration::ZERO).await;
        assert_eq!(state(&store, id), (false, Some(false)), "an unsynced name keeps the file open");
        store.write(id, v, 0, vec![7u8; BLOCK_SIZE as usize]).await.unwrap();
        store.sync(id, v).await.unwrap();
        assert_eq!(state(&store, id), (false, Some(true)), "the first sync synced the name");
        store.close_idle(Duration::ZERO).await;
        assert_eq!(state(&store, id), (false, None), "closed once idle");
        assert_eq!(store.read(id, v, 0, 4).await.unwrap(), vec![7u8; 4]);
    }
}
