//! The meta file system (`alces-mount -m`), as MooseFS shows it:
//!
//! ```text
//! trash/                 deleted files waiting for their trash time: "INODE|path|to|name"
//! trash/undel/           move an entry here to restore it to its old path
//! reserved/              files deleted while still open somewhere
//! ```
//! Removing an entry from `trash/` deletes the file for good.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, UNIX_EPOCH};

use alces_proto::link::client_master::{ClientReply, ClientRequest, TrashEntry};
use alces_proto::types::{Creds, Inode};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags,
    ReplyAttr, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use tokio::runtime::Handle;

use crate::master_link::MasterClient;

const ROOT: u64 = 1;
const TRASH: u64 = 2;
const UNDEL: u64 = 3;
const RESERVED: u64 = 4;
const TRASH_BASE: u64 = 1 << 62;
const RESERVED_BASE: u64 = 1 << 61;
const TTL: Duration = Duration::from_secs(1);

pub struct MetaFs {
    rt: Handle,
    master: MasterClient,
}

/// `0000002A|dir|file` for inode 42 deleted from `dir/file`.
pub fn entry_name(e: &TrashEntry) -> Vec<u8> {
    let mut n = format!("{:08X}|", e.inode.0).into_bytes();
    n.extend(e.path.iter().map(|&b| if b == b'/' { b'|' } else { b }));
    n
}

/// The inode an entry name starts with.
pub fn parse_entry_name(n: &[u8]) -> Option<Inode> {
    let hex = n.split(|&b| b == b'|').next()?;
    Some(Inode(u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?))
}

fn dir_attr(ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::Directory,
        perm: if ino == UNDEL { 0o200 } else { 0o700 },
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn entry_attr(base: u64, e: &TrashEntry) -> FileAttr {
    let t = |ts: alces_proto::types::Timestamp| UNIX_EPOCH + Duration::new(ts.secs.max(0) as u64, ts.nanos);
    FileAttr {
        ino: INodeNo(base | e.inode.0),
        size: e.attr.size,
        blocks: e.attr.size.div_ceil(512),
        atime: t(e.attr.atime),
        mtime: t(e.attr.mtime),
        ctime: t(e.deleted_at),
        crtime: t(e.attr.ctime),
        kind: FileType::RegularFile,
        perm: e.attr.mode & 0o7777,
        nlink: 1,
        uid: e.attr.uid,
        gid: e.attr.gid,
        rdev: 0,
        blksize: 65536,
        flags: 0,
    }
}

impl MetaFs {
    pub fn new(rt: Handle, master: MasterClient) -> MetaFs {
        MetaFs { rt, master }
    }

    async fn list(master: &MasterClient, reserved: bool) -> Result<Vec<TrashEntry>, Errno> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let req = if reserved {
                ClientRequest::ListReserved { after, limit: 4096 }
            } else {
                ClientRequest::ListTrash { after, limit: 4096 }
            };
            match master.call(&Creds::root(), req).await {
                Ok(ClientReply::Trash(list)) => {
                    let Some(last) = list.last() else { return Ok(out) };
                    after = Some(last.inode);
                    out.extend(list);
                }
                Ok(_) => return Err(Errno::EIO),
                Err(e) => return Err(Errno::from_i32(e.errno())),
            }
        }
    }

    async fn find(master: &MasterClient, reserved: bool, inode: Inode) -> Result<TrashEntry, Errno> {
        let req = if reserved {
            ClientRequest::ListReserved { after: Some(Inode(inode.0.saturating_sub(1))), limit: 1 }
        } else {
            ClientRequest::ListTrash { after: Some(Inode(inode.0.saturating_sub(1))), limit: 1 }
        };
        match master.call(&Creds::root(), req).await {
            Ok(ClientReply::Trash(list)) => list.into_iter().find(|e| e.inode == inode).ok_or(Errno::ENOENT),
            Ok(_) => Err(Errno::EIO),
            Err(e) => Err(Errno::from_i32(e.errno())),
        }
    }
}

fn root_only(req: &Request) -> Result<(), Errno> {
    if req.uid() == 0 {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

impl Filesystem for MetaFs {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Err(e) = root_only(req) {
            return reply.error(e);
        }
        let n = name.as_bytes().to_vec();
        let fixed = match (parent.0, n.as_slice()) {
            (ROOT, b"trash") => Some(TRASH),
            (ROOT, b"reserved") => Some(RESERVED),
            (TRASH, b"undel") => Some(UNDEL),
            _ => None,
        };
        if let Some(ino) = fixed {
            return reply.entry(&TTL, &dir_attr(ino), Generation(0));
        }
        let (reserved, base) = match parent.0 {
            TRASH => (false, TRASH_BASE),
            RESERVED => (true, RESERVED_BASE),
            _ => return reply.error(Errno::ENOENT),
        };
        let Some(inode) = parse_entry_name(&n) else { return reply.error(Errno::ENOENT) };
        let master = self.master.clone();
        self.rt.spawn(async move {
            match MetaFs::find(&master, reserved, inode).await {
                Ok(e) if entry_name(&e) == n => reply.entry(&TTL, &entry_attr(base, &e), Generation(0)),
                Ok(_) => reply.error(Errno::ENOENT),
                Err(e) => reply.error(e),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            ROOT | TRASH | UNDEL | RESERVED => return reply.attr(&TTL, &dir_attr(ino.0)),
            _ => {}
        }
        let (reserved, base) = if ino.0 & TRASH_BASE != 0 { (false, TRASH_BASE) } else { (true, RESERVED_BASE) };
        let master = self.master.clone();
        self.rt.spawn(async move {
            match MetaFs::find(&master, reserved, Inode(ino.0 & !base)).await {
                Ok(e) => reply.attr(&TTL, &entry_attr(base, &e)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn opendir(&self, req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match root_only(req) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let fixed: Vec<(u64, FileType, Vec<u8>)> = match ino.0 {
            ROOT => vec![
                (TRASH, FileType::Directory, b"trash".to_vec()),
                (RESERVED, FileType::Directory, b"reserved".to_vec()),
            ],
            TRASH => vec![(UNDEL, FileType::Directory, b"undel".to_vec())],
            UNDEL => vec![],
            RESERVED => vec![],
            _ => return reply.error(Errno::ENOTDIR),
        };
        let master = self.master.clone();
        self.rt.spawn(async move {
            let mut all: Vec<(u64, FileType, Vec<u8>)> =
                vec![(ino.0, FileType::Directory, b".".to_vec()), (ROOT, FileType::Directory, b"..".to_vec())];
            all.extend(fixed);
            if ino.0 == TRASH || ino.0 == RESERVED {
                let reserved = ino.0 == RESERVED;
                let base = if reserved { RESERVED_BASE } else { TRASH_BASE };
                match MetaFs::list(&master, reserved).await {
                    Ok(list) => {
                        all.extend(list.iter().map(|e| (base | e.inode.0, FileType::RegularFile, entry_name(e))))
                    }
                    Err(e) => return reply.error(e),
                }
            }
            for (i, (ino, kind, name)) in all.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*ino), i as u64 + 1, *kind, OsStr::from_bytes(name)) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = root_only(req) {
            return reply.error(e);
        }
        if parent.0 != TRASH || newparent.0 != UNDEL {
            return reply.error(Errno::EPERM);
        }
        let Some(inode) = parse_entry_name(name.as_bytes()) else { return reply.error(Errno::ENOENT) };
        let master = self.master.clone();
        self.rt.spawn(async move {
            match master.call(&Creds::root(), ClientRequest::Undelete { inode }).await {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(Errno::from_i32(e.errno())),
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = root_only(req) {
            return reply.error(e);
        }
        if parent.0 != TRASH {
            return reply.error(Errno::EPERM);
        }
        let Some(inode) = parse_entry_name(name.as_bytes()) else { return reply.error(Errno::ENOENT) };
        let master = self.master.clone();
        self.rt.spawn(async move {
            match master.call(&Creds::root(), ClientRequest::Purge { inode }).await {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(Errno::from_i32(e.errno())),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alces_proto::types::{Attr, FileKind, Goal, Timestamp, TrashTime};

    #[test]
    fn entry_names_round_trip() {
        let attr = Attr {
            inode: Inode(42),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            size: 0,
            nlink: 0,
            rdev: 0,
            goal: Goal(1),
            trash_time: TrashTime(0),
        };
        let e = TrashEntry { inode: Inode(42), path: b"dir/sub/file".to_vec(), deleted_at: Timestamp::default(), attr };
        assert_eq!(entry_name(&e), b"0000002A|dir|sub|file");
        assert_eq!(parse_entry_name(&entry_name(&e)), Some(Inode(42)));
        assert_eq!(parse_entry_name(b"zz|x"), None);
    }
}
