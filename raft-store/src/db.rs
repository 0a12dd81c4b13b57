//! The one RocksDB instance of a master: the Raft log and vote, and the state machine.
//!
//! Column families: `raft_log` (index -> entry), `raft_state` (vote, committed, purged),
//! `sm_meta` (last applied log id, membership, snapshot install marker) and the application's
//! own. Everything shares one write-ahead log, so a write to the state machine that was not
//! synced is still durable once a later log append is synced: recovery replays a prefix of
//! the WAL, never a subset.

use std::path::Path;
use std::sync::Arc;

pub use rocksdb::IteratorMode;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options, WriteBatch,
    WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

pub const CF_LOG: &str = "raft_log";
pub const CF_RAFT_STATE: &str = "raft_state";
pub const CF_SM_META: &str = "sm_meta";

/// Memory given to RocksDB's block cache, shared by every column family.
const BLOCK_CACHE_BYTES: usize = 32 << 20;
/// Memory all memtables may use together before the largest is flushed: the state lives on
/// disk and RAM stays bounded whatever the number of files.
const WRITE_BUFFERS_BYTES: usize = 64 << 20;
/// Write-ahead log files kept for reuse once their contents are flushed. Writing into a
/// reused file overwrites blocks that are already allocated and written, so `fdatasync` has
/// no file size or extent change to commit to the file system's journal: on an ext4 virtual
/// disk a 512-byte append and `fdatasync` took 196 us on average, the same overwriting
/// written blocks 119 us (PostgreSQL recycles and zero-fills its WAL segments for the same
/// reason).
const WAL_RECYCLE_FILES: usize = 4;
/// Bytes written once into the first write-ahead log of a new database so that, recycled, it
/// gives the first changes written blocks to overwrite (see [`Db::prime_wal`]).
const WAL_PRIME_BYTES: usize = 8 << 20;
/// How often memtables reach the disk when the write-ahead log is off (tests only).
const UNSAFE_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// A RocksDB handle with the column families of this node.
pub struct Db {
    inner: DB,
    app_cfs: Vec<String>,
    /// Test-only sabotage: writes skip the write-ahead log and "syncs" do nothing, so an
    /// acknowledged entry lives only in memory until the memtables are flushed (every
    /// [`UNSAFE_FLUSH_EVERY`], all column families at once, so a crash goes back to a
    /// consistent but older state). It exists to show that the fault-injection suite
    /// catches lost acknowledged writes.
    unsafe_no_wal: bool,
}

impl Db {
    /// Opens (or creates) the database with the Raft column families and `app_cfs`.
    pub fn open(path: &Path, app_cfs: &[&str]) -> Result<Arc<Db>> {
        Db::open_with(path, app_cfs, false)
    }

    /// [`Db::open`]; with `unsafe_no_wal`, nothing is durable (see [`Db`]; tests only).
    pub fn open_with(path: &Path, app_cfs: &[&str], unsafe_no_wal: bool) -> Result<Arc<Db>> {
        if unsafe_no_wal {
            tracing::warn!("TEST ONLY: the write-ahead log is off; acknowledged changes are lost on a crash");
        }
        for name in app_cfs {
            if [CF_LOG, CF_RAFT_STATE, CF_SM_META].contains(name) {
                return Err(Error::Config(format!("column family name {name:?} is reserved")));
            }
        }
        let fresh = !path.join("CURRENT").exists();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // Point-in-time recovery stops at the first record of a reused file's previous life;
        // RocksDB turns recycling off under the stricter modes.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        opts.set_recycle_log_file_num(if unsafe_no_wal { 0 } else { WAL_RECYCLE_FILES });
        // Write-ahead log records stay in RocksDB's buffer until a synced write or a sync
        // writes them out, instead of a write system call each. Nothing unsynced is relied
        // on: a synced write (a follower's append, a vote, a purge) and the leader's log sync
        // write out everything before them first, in order, and an unsynced write (the
        // state machine's applies, the commit index) is redone from the log if it is lost.
        // A change made about three database writes on every master; 8 threads creating
        // files in folders of their own went from 3799-4023 to 4489-4779 creates/s.
        opts.set_manual_wal_flush(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_max_total_wal_size(256 << 20);
        opts.set_keep_log_file_num(3);
        opts.set_max_log_file_size(8 << 20);
        opts.set_db_write_buffer_size(WRITE_BUFFERS_BYTES);
        opts.set_atomic_flush(unsafe_no_wal);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cf_opts = |write_buffer: usize, compress: bool| {
            let mut o = Options::default();
            let mut block = BlockBasedOptions::default();
            block.set_block_cache(&cache);
            o.set_block_based_table_factory(&block);
            o.set_write_buffer_size(write_buffer);
            o.set_compression_type(if compress { DBCompressionType::Lz4 } else { DBCompressionType::None });
            o
        };
        let mut cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, cf_opts(32 << 20, false)),
            ColumnFamilyDescriptor::new(CF_RAFT_STATE, cf_opts(1 << 20, false)),
            ColumnFamilyDescriptor::new(CF_SM_META, cf_opts(1 << 20, false)),
        ];
        cfs.extend(app_cfs.iter().map(|n| ColumnFamilyDescriptor::new(*n, cf_opts(16 << 20, true))));
        let inner = DB::open_cf_descriptors(&opts, path, cfs)?;
        let db = Arc::new(Db { inner, app_cfs: app_cfs.iter().map(|s| s.to_string()).collect(), unsafe_no_wal });
        if fresh && !unsafe_no_wal {
            db.prime_wal()?;
        }
        if unsafe_no_wal {
            let weak = Arc::downgrade(&db);
            std::thread::spawn(move || loop {
                std::thread::sleep(UNSAFE_FLUSH_EVERY);
                let Some(db) = weak.upgrade() else { return };
                if let Err(e) = db.flush_all() {
                    tracing::warn!(error = %e, "flushing memtables failed");
                }
            });
        }
        Ok(db)
    }

    /// Gives a new database written log files to reuse. Twice: a key of [`WAL_PRIME_BYTES`]
    /// is written and deleted again, then the memtables are flushed, which starts a new log
    /// and leaves the filled one to the recycle list. The second round's new log is the
    /// first one reused, and the second filled one waits in the list. Without this the first
    /// changes, until memtables are flushed for the first time, would all be appends.
    fn prime_wal(&self) -> Result<()> {
        const KEY: &[u8] = b"wal-prime";
        let cf = self.cf(CF_SM_META)?;
        let fill = vec![0u8; WAL_PRIME_BYTES];
        for _ in 0..2 {
            let mut batch = WriteBatch::default();
            batch.put_cf(cf, KEY, &fill);
            self.write(batch, false)?;
            let mut batch = WriteBatch::default();
            batch.delete_cf(cf, KEY);
            self.write(batch, true)?;
            self.flush_all()?;
        }
        Ok(())
    }

    /// Writes every column family's memtable to disk, atomically across them.
    fn flush_all(&self) -> Result<()> {
        let names = [CF_LOG, CF_RAFT_STATE, CF_SM_META].into_iter().chain(self.app_cfs.iter().map(String::as_str));
        let cfs = names.map(|n| self.cf(n)).collect::<Result<Vec<_>>>()?;
        Ok(self.inner.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?)
    }

    /// The application's column families, in the order they were declared.
    pub fn app_cfs(&self) -> &[String] {
        &self.app_cfs
    }

    pub fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.inner.cf_handle(name).ok_or_else(|| Error::Storage(format!("no column family {name:?}")))
    }

    pub fn raw(&self) -> &DB {
        &self.inner
    }

    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.get_cf(self.cf(cf)?, key)?)
    }

    /// Reads and decodes a value stored with [`Db::encode_value`].
    pub fn get_value<T: DeserializeOwned>(&self, cf: &str, key: &[u8]) -> Result<Option<T>> {
        match self.get(cf, key)? {
            None => Ok(None),
            Some(bytes) => decode_value(&bytes).map(Some),
        }
    }

    /// Writes a batch; `sync` makes it durable before returning.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync && !self.unsafe_no_wal);
        wo.disable_wal(self.unsafe_no_wal);
        Ok(self.inner.write_opt(batch, &wo)?)
    }

    /// Makes every write so far durable (syncs the write-ahead log).
    pub fn sync_wal(&self) -> Result<()> {
        if self.unsafe_no_wal {
            return Ok(());
        }
        Ok(self.inner.flush_wal(true)?)
    }

    /// Deletes every key of a column family (used before a snapshot is loaded).
    pub fn clear_cf(&self, batch: &mut WriteBatch, name: &str) -> Result<()> {
        let cf = self.cf(name)?;
        let mut it = self.inner.raw_iterator_cf(cf);
        it.seek_to_first();
        let Some(first) = it.key().map(|k| k.to_vec()) else {
            return Ok(it.status()?);
        };
        it.seek_to_last();
        let last = it.key().map(|k| k.to_vec()).unwrap_or_else(|| first.clone());
        it.status()?;
        batch.delete_range_cf(cf, &first, &last);
        batch.delete_cf(cf, &last);
        Ok(())
    }
}

/// Encodes a value for storage (the same bincode as the wire).
pub fn encode_value<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    alces_proto::encode(v)
}

/// Decodes a stored value; a value that does not decode is a storage error, never a panic.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    alces_proto::decode(bytes).map_err(|e| Error::Storage(format!("corrupt stored value: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The write-ahead log files of a database folder, oldest first, with their sizes.
    fn wal_files(dir: &Path) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn a_new_database_writes_into_a_reused_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &["app"]).unwrap();
        let mut batch = WriteBatch::default();
        batch.put_cf(db.cf("app").unwrap(), b"k", b"v");
        db.write(batch, true).unwrap();
        // The newest log is the one being written: a recycled file keeps its old length, so
        // the small write above lands in blocks written before.
        let files = wal_files(dir.path());
        let (name, len) = files.last().unwrap();
        assert!(*len >= WAL_PRIME_BYTES as u64, "current log {name} is {len} bytes: {files:?}");
        assert_eq!(db.get("app", b"k").unwrap().as_deref(), Some(&b"v"[..]));
        drop(db);
        // Reopened, the write is there and nothing is primed again.
        let db = Db::open(dir.path(), &["app"]).unwrap();
        assert_eq!(db.get("app", b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
