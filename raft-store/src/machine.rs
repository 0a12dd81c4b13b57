//! What an application plugs into the replicated store: a deterministic state machine over its
//! own column families.
//!
//! `apply` must be a pure function of the stored state and the operation: no clock, no random
//! numbers, no I/O besides the database. Everything non-deterministic is chosen by the leader
//! before it proposes the operation. One log entry carries a batch of operations; the store
//! applies them in order, each seeing the writes of the ones before it, and writes the whole
//! entry's changes together with the applied log id in one atomic RocksDB batch.

use std::collections::BTreeMap;

use rocksdb::WriteBatch;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::{decode_value, encode_value, Db};
use crate::error::{Error, Result};

/// A replicated application.
pub trait StateMachine: Send + Sync + 'static {
    /// One mutation, as proposed by the leader.
    type Op: Serialize + DeserializeOwned + Send + 'static;
    /// What the proposer gets back once the operation is applied.
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// The column families this machine owns; a snapshot holds exactly these.
    fn column_families(&self) -> &'static [&'static str];

    /// Applies one operation: reads and writes through `ctx`, returns the reply. Domain
    /// failures (a missing file, say) belong in the reply; an `Err` means storage failed and
    /// stops the node.
    fn apply(&self, ctx: &mut ApplyCtx<'_>, op: Self::Op) -> Result<Self::Reply>;

    /// Called at start and after a snapshot replaced the state, to rebuild in-memory caches.
    fn restored(&self, _db: &Db) -> Result<()> {
        Ok(())
    }

    /// A readable line for one stored record, for offline dumps of snapshot files.
    fn describe(&self, cf: &str, key: &[u8], value: &[u8]) -> String {
        format!("{cf} {} = {} bytes", hex(key), value.len())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes of the entry being applied that are not in the database yet.
pub(crate) type Overlay = BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>;

/// The view `apply` has of the store: the committed state plus the writes of the earlier
/// operations of the same entry.
pub struct ApplyCtx<'a> {
    db: &'a Db,
    overlay: &'a mut Overlay,
    index: u64,
}

impl<'a> ApplyCtx<'a> {
    pub(crate) fn new(db: &'a Db, overlay: &'a mut Overlay, index: u64) -> Self {
        ApplyCtx { db, overlay, index }
    }

    /// The log index of the entry being applied; operations batched into one entry share it.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The database (committed state only: prefer [`ApplyCtx::get`] and [`ApplyCtx::scan`]).
    pub fn db(&self) -> &Db {
        self.db
    }

    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(&(cf.to_string(), key.to_vec())) {
            return Ok(v.clone());
        }
        self.db.get(cf, key)
    }

    pub fn get_value<T: DeserializeOwned>(&self, cf: &str, key: &[u8]) -> Result<Option<T>> {
        match self.get(cf, key)? {
            Some(b) => decode_value(&b).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` keys of `cf` that start with `prefix`, in order.
    pub fn scan(&self, cf: &str, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut it = self.db.raw().raw_iterator_cf(self.db.cf(cf)?);
        it.seek(prefix);
        let mut pending = self
            .overlay
            .range((cf.to_string(), prefix.to_vec())..)
            .take_while(|((c, k), _)| c == cf && k.starts_with(prefix))
            .peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let db_key = it.key().filter(|k| k.starts_with(prefix));
            let next_pending = pending.peek().map(|((_, k), _)| k.as_slice());
            let take_db = match (db_key, next_pending) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(d), Some(p)) => {
                    if d == p {
                        it.next(); // shadowed by this entry's own write
                        false
                    } else {
                        d < p
                    }
                }
            };
            if take_db {
                let (k, v) = it.item().expect("iterator is valid");
                out.push((k.to_vec(), v.to_vec()));
                it.next();
            } else if let Some(((_, k), Some(v))) = pending.next() {
                out.push((k.clone(), v.clone()));
            }
        }
        it.status()?;
        Ok(out)
    }

    pub fn put(&mut self, cf: &str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.db.cf(cf)?;
        self.overlay.insert((cf.to_string(), key.as_ref().to_vec()), Some(value.as_ref().to_vec()));
        Ok(())
    }

    pub fn put_value<T: Serialize + ?Sized>(&mut self, cf: &str, key: impl AsRef<[u8]>, value: &T) -> Result<()> {
        self.put(cf, key, encode_value(value))
    }

    pub fn delete(&mut self, cf: &str, key: impl AsRef<[u8]>) -> Result<()> {
        self.db.cf(cf)?;
        self.overlay.insert((cf.to_string(), key.as_ref().to_vec()), None);
        Ok(())
    }
}

/// Moves an entry's writes into a RocksDB batch.
pub(crate) fn overlay_into_batch(db: &Db, overlay: Overlay, batch: &mut WriteBatch) -> Result<()> {
    for ((cf, key), value) in overlay {
        let handle = db.cf(&cf)?;
        match value {
            Some(v) => batch.put_cf(handle, key, v),
            None => batch.delete_cf(handle, key),
        }
    }
    Ok(())
}

/// The object-safe face of a [`StateMachine`], used inside the store.
pub(crate) trait ErasedMachine: Send + Sync + 'static {
    fn apply_bytes(&self, ctx: &mut ApplyCtx<'_>, op: &[u8]) -> Result<Vec<u8>>;
    fn restored(&self, db: &Db) -> Result<()>;
}

impl<M: StateMachine> ErasedMachine for M {
    fn apply_bytes(&self, ctx: &mut ApplyCtx<'_>, op: &[u8]) -> Result<Vec<u8>> {
        // Every node decodes the same bytes, so an undecodable entry would fail everywhere; it
        // means mixed incompatible binaries, and the node must stop rather than diverge.
        let op: M::Op = alces_proto::decode(op)
            .map_err(|e| Error::Storage(format!("log entry {} does not decode as an operation: {e}", ctx.index())))?;
        Ok(encode_value(&self.apply(ctx, op)?))
    }

    fn restored(&self, db: &Db) -> Result<()> {
        StateMachine::restored(self, db)
    }
}

/// Applies one operation to `db` directly, outside Raft, as entry `index` would be: for unit
/// tests of state machines and for offline tools that build a state from scratch.
pub fn apply_local<M: StateMachine>(db: &Db, machine: &M, index: u64, op: M::Op) -> Result<M::Reply> {
    let mut overlay = Overlay::new();
    let reply = machine.apply(&mut ApplyCtx::new(db, &mut overlay, index), op)?;
    let mut batch = WriteBatch::default();
    overlay_into_batch(db, overlay, &mut batch)?;
    db.write(batch, false)?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_merge_the_entry_writes_with_the_database_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &["t"]).unwrap();
        let mut batch = WriteBatch::default();
        for k in ["a1", "a3", "a5", "b1"] {
            batch.put_cf(db.cf("t").unwrap(), k, "db");
        }
        db.write(batch, false).unwrap();
        let mut overlay = Overlay::new();
        let mut ctx = ApplyCtx::new(&db, &mut overlay, 7);
        ctx.put("t", "a2", "new").unwrap();
        ctx.put("t", "a3", "changed").unwrap();
        ctx.delete("t", "a5").unwrap();
        ctx.put("t", "a9", "new").unwrap();
        let all = ctx.scan("t", b"a", usize::MAX).unwrap();
        let got: Vec<(String, String)> =
            all.into_iter().map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())).collect();
        let want = [("a1", "db"), ("a2", "new"), ("a3", "changed"), ("a9", "new")];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(ctx.scan("t", b"a", 2).unwrap().len(), 2);
        assert_eq!(ctx.get("t", b"a5").unwrap(), None);
        assert_eq!(ctx.get("t", b"b1").unwrap().as_deref(), Some(&b"db"[..]));
        assert!(ctx.put("missing_cf", "k", "v").is_err());
    }
}
