//! One operation's view of the namespace: reads see the operation's own earlier writes, and
//! nothing reaches the write batch unless the operation succeeds.

use std::collections::BTreeMap;

use alces_proto::types::{ChunkId, Inode};
use alces_proto::Status;
use alces_raft_store::db::{decode_value, encode_value};
use alces_raft_store::ApplyCtx;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::keys::*;
use super::records::{ChunkRec, DentryRec, InodeRec, InodeState};

/// Why an operation did not complete: a file system error for the caller, or a storage
/// failure that stops the node.
#[derive(Debug)]
pub enum Fail {
    Status(Status),
    Store(alces_raft_store::Error),
}

impl From<Status> for Fail {
    fn from(s: Status) -> Self {
        Fail::Status(s)
    }
}

impl From<alces_raft_store::Error> for Fail {
    fn from(e: alces_raft_store::Error) -> Self {
        Fail::Store(e)
    }
}

pub type Res<T> = Result<T, Fail>;

pub struct Txn<'c, 'd> {
    ctx: &'c mut ApplyCtx<'d>,
    writes: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
}

impl<'c, 'd> Txn<'c, 'd> {
    pub fn new(ctx: &'c mut ApplyCtx<'d>) -> Self {
        Txn { ctx, writes: BTreeMap::new() }
    }

    pub fn get_raw(&self, cf: &'static str, key: &[u8]) -> Res<Option<Vec<u8>>> {
        if let Some(v) = self.writes.get(&(cf, key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.ctx.get(cf, key)?)
    }

    pub fn get<T: DeserializeOwned>(&self, cf: &'static str, key: &[u8]) -> Res<Option<T>> {
        match self.get_raw(cf, key)? {
            Some(b) => Ok(Some(decode_value(&b)?)),
            None => Ok(None),
        }
    }

    pub fn put<T: Serialize + ?Sized>(&mut self, cf: &'static str, key: &[u8], value: &T) {
        self.writes.insert((cf, key.to_vec()), Some(encode_value(value)));
    }

    pub fn put_raw(&mut self, cf: &'static str, key: &[u8], value: Vec<u8>) {
        self.writes.insert((cf, key.to_vec()), Some(value));
    }

    pub fn delete(&mut self, cf: &'static str, key: &[u8]) {
        self.writes.insert((cf, key.to_vec()), None);
    }

    /// Moves the writes into the entry's batch.
    pub fn commit(self) -> Res<()> {
        for ((cf, key), value) in self.writes {
            match value {
                Some(v) => self.ctx.put(cf, &key, v)?,
                None => self.ctx.delete(cf, &key)?,
            }
        }
        Ok(())
    }

    /// Keys of `cf` starting with `prefix` as this operation sees them, in order.
    pub fn scan(&self, cf: &'static str, prefix: &[u8]) -> Res<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_limit(cf, prefix, usize::MAX)
    }

    /// Like [`Txn::scan`], at most `limit` keys.
    pub fn scan_limit(&self, cf: &'static str, prefix: &[u8], limit: usize) -> Res<Vec<(Vec<u8>, Vec<u8>)>> {
        let mine: Vec<_> = self
            .writes
            .range((cf, prefix.to_vec())..)
            .take_while(|((c, k), _)| *c == cf && k.starts_with(prefix))
            .collect();
        // Each of this operation's deletions can hide one stored key: read that many more.
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> =
            self.ctx.scan(cf, prefix, limit.saturating_add(mine.len()))?.into_iter().collect();
        for ((_, k), v) in mine {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out.into_iter().take(limit).collect())
    }

    // Counters.

    pub fn counter(&self, key: &[u8]) -> Res<u64> {
        Ok(self.get::<u64>(CF_INODES, key)?.unwrap_or(0))
    }

    pub fn add_counter(&mut self, key: &[u8], delta: i64) -> Res<()> {
        let v = self.counter(key)?.saturating_add_signed(delta);
        self.put(CF_INODES, key, &v);
        Ok(())
    }

    /// The next id from a counter that starts at `first`.
    pub fn next_id(&mut self, key: &[u8], first: u64) -> Res<u64> {
        self.next_ids(key, first, 1)
    }

    /// The first of `count` consecutive ids, none handed out before (the lowest is `first`).
    pub fn next_ids(&mut self, key: &[u8], first: u64, count: u64) -> Res<u64> {
        let id = self.counter(key)?.max(first);
        let end = id.checked_add(count).ok_or(Status::NoSpace)?;
        self.put(CF_INODES, key, &end);
        Ok(id)
    }

    // Inodes.

    pub fn inode(&self, ino: Inode) -> Res<Option<InodeRec>> {
        self.get(CF_INODES, &inode(ino))
    }

    /// A reachable inode, or `ENOENT`.
    pub fn live(&self, ino: Inode) -> Res<InodeRec> {
        match self.inode(ino)? {
            Some(r) if r.state == InodeState::Live => Ok(r),
            _ => Err(Status::NotFound.into()),
        }
    }

    /// A reachable directory, or `ENOENT` / `ENOTDIR`.
    pub fn dir(&self, ino: Inode) -> Res<InodeRec> {
        let r = self.live(ino)?;
        if !r.is_dir() {
            return Err(Status::NotDir.into());
        }
        Ok(r)
    }

    pub fn put_inode(&mut self, ino: Inode, rec: &InodeRec) {
        self.put(CF_INODES, &inode(ino), rec);
    }

    pub fn dentry(&self, parent: Inode, name: &[u8]) -> Res<Option<DentryRec>> {
        self.get(CF_DENTRIES, &dentry(parent, name))
    }

    pub fn put_dentry(&mut self, parent: Inode, name: &[u8], rec: DentryRec) {
        self.put(CF_DENTRIES, &dentry(parent, name), &rec);
    }

    pub fn delete_dentry(&mut self, parent: Inode, name: &[u8]) {
        self.delete(CF_DENTRIES, &dentry(parent, name));
    }

    // Chunks.

    pub fn chunk(&self, id: ChunkId) -> Res<Option<ChunkRec>> {
        self.get(CF_CHUNKS, &chunk(id))
    }

    pub fn file_chunk(&self, ino: Inode, index: u32) -> Res<Option<ChunkId>> {
        Ok(self.get_raw(CF_CHUNKS, &file_chunk(ino, index))?.and_then(|b| decode_chunk_id(&b)))
    }

    pub fn put_file_chunk(&mut self, ino: Inode, index: u32, id: ChunkId) {
        self.put_raw(CF_CHUNKS, &file_chunk(ino, index), id.0.to_be_bytes().to_vec());
    }

    /// A file's chunks as (index, chunk id), in order.
    pub fn file_chunks(&self, ino: Inode) -> Res<Vec<(u32, ChunkId)>> {
        Ok(self
            .scan(CF_CHUNKS, &file_chunk_prefix(ino))?
            .into_iter()
            .filter_map(|(k, v)| Some((decode_file_chunk_index(&k)?, decode_chunk_id(&v)?)))
            .collect())
    }

    /// Drops one reference to a chunk; the record goes when nobody refers to it any more
    /// (the chunkservers' copies are then unknown to the namespace and get deleted).
    pub fn unref_chunk(&mut self, id: ChunkId) -> Res<()> {
        if let Some(mut rec) = self.chunk(id)? {
            rec.refs = rec.refs.saturating_sub(1);
            if rec.refs == 0 {
                self.delete(CF_CHUNKS, &chunk(id));
                self.add_counter(COUNT_CHUNKS, -1)?;
            } else {
                self.put(CF_CHUNKS, &chunk(id), &rec);
            }
        }
        Ok(())
    }
}

pub fn decode_chunk_id(bytes: &[u8]) -> Option<ChunkId> {
    Some(ChunkId(u64::from_be_bytes(bytes.try_into().ok()?)))
}
