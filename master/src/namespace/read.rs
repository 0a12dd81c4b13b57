//! Reads of the namespace outside apply: what lookup, getattr, readdir and the tools see.
//! Callers make them linearizable by passing the read barrier first.

use alces_proto::types::{Attr, ChunkId, Creds, FileKind, Inode, Name};
use alces_proto::Status;
use alces_raft_store::db::decode_value;
use alces_raft_store::Db;
use serde::de::DeserializeOwned;

use super::keys::*;
use super::perm::{self, R, X};
use super::records::*;
use super::txn::decode_chunk_id;

/// A failure of a read: a file system error, or storage trouble (reported as `EIO`).
fn store(e: alces_raft_store::Error) -> Status {
    tracing::error!(error = %e, "namespace read failed");
    Status::Io
}

type KeyValue = (Vec<u8>, Vec<u8>);

pub struct View<'a> {
    db: &'a Db,
}

impl<'a> View<'a> {
    pub fn new(db: &'a Db) -> Self {
        View { db }
    }

    fn get<T: DeserializeOwned>(&self, cf: &str, key: &[u8]) -> Result<Option<T>, Status> {
        self.db.get_value(cf, key).map_err(store)
    }

    fn scan(&self, cf: &str, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, Status> {
        let mut it = self.db.raw().raw_iterator_cf(self.db.cf(cf).map_err(store)?);
        match after {
            Some(a) => {
                it.seek(a);
                if it.key() == Some(a) {
                    it.next();
                }
            }
            None => it.seek(prefix),
        }
        let mut out = Vec::new();
        while let Some((k, v)) = it.item() {
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status().map_err(|e| store(e.into()))?;
        Ok(out)
    }

    pub fn counter(&self, key: &[u8]) -> Result<u64, Status> {
        Ok(self.get::<u64>(CF_INODES, key)?.unwrap_or(0))
    }

    pub fn is_formatted(&self) -> Result<bool, Status> {
        Ok(self.inode(Inode::ROOT)?.is_some())
    }

    pub fn inode(&self, ino: Inode) -> Result<Option<InodeRec>, Status> {
        self.get(CF_INODES, &inode(ino))
    }

    /// An inode that is live or held open after deletion.
    /// An inode a client may still use through a handle: live, reserved, or in the trash
    /// (unlinked while open keeps working, as POSIX asks).
    pub fn open_inode(&self, ino: Inode) -> Result<InodeRec, Status> {
        self.inode(ino)?.ok_or(Status::NotFound)
    }

    pub fn live(&self, ino: Inode) -> Result<InodeRec, Status> {
        match self.inode(ino)? {
            Some(r) if r.state == InodeState::Live => Ok(r),
            _ => Err(Status::NotFound),
        }
    }

    pub fn getattr(&self, ino: Inode) -> Result<Attr, Status> {
        Ok(self.open_inode(ino)?.attr(ino))
    }

    pub fn lookup(&self, parent: Inode, name: &Name, creds: &Creds) -> Result<Attr, Status> {
        let p = self.live(parent)?;
        if !p.is_dir() {
            return Err(Status::NotDir);
        }
        perm::check(&p, creds, X)?;
        let d: DentryRec = self.get(CF_DENTRIES, &dentry(parent, name.as_bytes()))?.ok_or(Status::NotFound)?;
        Ok(self.live(d.inode)?.attr(d.inode))
    }

    /// Whether `creds` may access `ino` with `mask`.
    pub fn access(&self, ino: Inode, creds: &Creds, mask: u16) -> Result<(), Status> {
        perm::check(&self.open_inode(ino)?, creds, mask)
    }

    /// Entries of a directory after `after` (by name order), at most `limit`.
    pub fn readdir(
        &self,
        dir: Inode,
        after: Option<&Name>,
        limit: usize,
    ) -> Result<Vec<(Name, Inode, FileKind)>, Status> {
        let d = self.live(dir)?;
        if !d.is_dir() {
            return Err(Status::NotDir);
        }
        let prefix = dentry_prefix(dir);
        let after_key = after.map(|n| dentry(dir, n.as_bytes()));
        self.scan(CF_DENTRIES, &prefix, after_key.as_deref(), limit)?
            .into_iter()
            .map(|(k, v)| {
                let rec: DentryRec = decode_value(&v).map_err(store)?;
                let name = Name::new(k[8..].to_vec()).map_err(|_| Status::Io)?;
                Ok((name, rec.inode, rec.kind))
            })
            .collect()
    }

    pub fn opendir_check(&self, dir: Inode, creds: &Creds) -> Result<(), Status> {
        let d = self.live(dir)?;
        if !d.is_dir() {
            return Err(Status::NotDir);
        }
        perm::check(&d, creds, R)
    }

    pub fn readlink(&self, ino: Inode) -> Result<Vec<u8>, Status> {
        let r = self.live(ino)?;
        if r.kind != FileKind::Symlink {
            return Err(Status::Invalid);
        }
        Ok(r.symlink)
    }

    pub fn getxattr(&self, ino: Inode, name: &[u8]) -> Result<Vec<u8>, Status> {
        self.open_inode(ino)?;
        self.db.get(CF_XATTRS, &xattr(ino, name)).map_err(store)?.ok_or(Status::NoData)
    }

    pub fn listxattr(&self, ino: Inode) -> Result<Vec<Vec<u8>>, Status> {
        self.open_inode(ino)?;
        Ok(self.scan(CF_XATTRS, &inode(ino), None, usize::MAX)?.into_iter().map(|(k, _)| k[8..].to_vec()).collect())
    }

    /// The chunk in slot `index` of a file.
    pub fn file_chunk(&self, ino: Inode, index: u32) -> Result<Option<(ChunkId, ChunkRec)>, Status> {
        let Some(id) =
            self.db.get(CF_CHUNKS, &file_chunk(ino, index)).map_err(store)?.and_then(|b| decode_chunk_id(&b))
        else {
            return Ok(None);
        };
        Ok(self.chunk(id)?.map(|c| (id, c)))
    }

    pub fn file_chunks(&self, ino: Inode) -> Result<Vec<(u32, ChunkId)>, Status> {
        Ok(self
            .scan(CF_CHUNKS, &file_chunk_prefix(ino), None, usize::MAX)?
            .into_iter()
            .filter_map(|(k, v)| Some((decode_file_chunk_index(&k)?, decode_chunk_id(&v)?)))
            .collect())
    }

    pub fn chunk(&self, id: ChunkId) -> Result<Option<ChunkRec>, Status> {
        self.get(CF_CHUNKS, &chunk(id))
    }

    /// Every chunk record, in id order, starting after `after`, at most `limit`.
    pub fn chunks(&self, after: Option<ChunkId>, limit: usize) -> Result<Vec<(ChunkId, ChunkRec)>, Status> {
        let after_key = after.map(chunk);
        self.scan(CF_CHUNKS, b"c", after_key.as_ref().map(|k| &k[..]), limit)?
            .into_iter()
            .map(|(k, v)| Ok((decode_chunk_id(&k[1..]).ok_or(Status::Io)?, decode_value(&v).map_err(store)?)))
            .collect()
    }

    pub fn session(&self, id: alces_proto::types::SessionId) -> Result<Option<SessionRec>, Status> {
        self.get(CF_SESSIONS, &session(id))
    }

    /// Sessions in id order.
    pub fn sessions(&self) -> Result<Vec<(alces_proto::types::SessionId, SessionRec)>, Status> {
        self.scan(CF_SESSIONS, b"s", None, usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let id = u64::from_be_bytes(k[1..9].try_into().map_err(|_| Status::Io)?);
                Ok((alces_proto::types::SessionId(id), decode_value(&v).map_err(store)?))
            })
            .collect()
    }

    /// Whether a handle recorded through Raft (`OpBody::Open`, or a create that opened) is
    /// open on `ino`.
    pub fn has_recorded_handles(&self, ino: Inode) -> Result<bool, Status> {
        Ok(!self.scan(CF_SESSIONS, &tagged(b'O', ino.0), None, 1)?.is_empty())
    }

    /// Trashed (`tag` b't') or reserved (`tag` b'r') files.
    pub fn trash(&self, tag: u8, after: Option<Inode>, limit: usize) -> Result<Vec<(Inode, TrashRec)>, Status> {
        let after_key = after.map(|i| tagged(tag, i.0));
        self.scan(CF_TRASH, &[tag], after_key.as_ref().map(|k| &k[..]), limit)?
            .into_iter()
            .map(|(k, v)| {
                let ino = u64::from_be_bytes(k[1..9].try_into().map_err(|_| Status::Io)?);
                Ok((Inode(ino), decode_value(&v).map_err(store)?))
            })
            .collect()
    }

    /// The path of a live inode from the root (`/` for the root).
    pub fn path(&self, ino: Inode) -> Result<String, Status> {
        let mut parts = Vec::new();
        let mut cur = ino;
        for _ in 0..65_536 {
            if cur == Inode::ROOT {
                break;
            }
            let r = self.inode(cur)?.ok_or(Status::NotFound)?;
            parts.push(String::from_utf8_lossy(&r.name).into_owned());
            cur = r.parent;
        }
        parts.reverse();
        Ok(format!("/{}", parts.join("/")))
    }
}
