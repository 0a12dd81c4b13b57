//! Unit tests of the namespace apply function over a real RocksDB folder, one operation at a
//! time, including the errno of every failure.

use std::sync::Arc;

use alces_proto::types::*;
use alces_proto::Status;
use alces_raft_store::{apply_local, Db};

use super::keys::*;
use super::ops::*;
use super::read::View;
use super::records::InodeState;
use super::Namespace;

struct Fs {
    _dir: tempfile::TempDir,
    db: Arc<Db>,
    index: u64,
    now: i64,
}

fn root() -> Creds {
    Creds::root()
}

fn user(uid: u32) -> Creds {
    Creds { uid, gid: uid, groups: vec![] }
}

fn n(s: &str) -> Name {
    Name::new(s.as_bytes()).unwrap()
}

impl Fs {
    fn new() -> Fs {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db"), COLUMN_FAMILIES).unwrap();
        let mut fs = Fs { _dir: dir, db, index: 0, now: 1_000_000 };
        fs.ok(OpBody::Format { goal: Goal(2), trash_time: TrashTime(86_400) });
        fs
    }

    fn apply(&mut self, body: OpBody) -> MetaReply {
        self.index += 1;
        self.now += 1;
        apply_local(
            &self.db,
            &Namespace,
            self.index,
            MetaOp { now: Timestamp::from_secs(self.now), origin: None, body },
        )
        .unwrap()
    }

    fn ok(&mut self, body: OpBody) -> MetaReply {
        let r = self.apply(body.clone());
        assert!(!matches!(r, MetaReply::Err(_)), "{body:?} failed: {r:?}");
        r
    }

    fn err(&mut self, body: OpBody) -> Status {
        match self.apply(body.clone()) {
            MetaReply::Err(s) => s,
            other => panic!("{body:?} should fail, got {other:?}"),
        }
    }

    fn view(&self) -> View<'_> {
        View::new(&self.db)
    }

    fn attr(&self, ino: Inode) -> Attr {
        self.view().getattr(ino).unwrap()
    }

    fn make(&mut self, parent: Inode, name: &str, kind: FileKind, mode: u16, creds: &Creds) -> Inode {
        match self.ok(create_op(parent, name, kind, mode, creds)) {
            MetaReply::Attr(a) => a.inode,
            other => panic!("{other:?}"),
        }
    }

    fn mkdir(&mut self, parent: Inode, name: &str) -> Inode {
        self.make(parent, name, FileKind::Dir, 0o755, &root())
    }

    fn session(&mut self) -> SessionId {
        match self.ok(OpBody::OpenSession { info: super::tests_support::session_info() }) {
            MetaReply::Session(s) => s,
            other => panic!("OpenSession replied {other:?}"),
        }
    }

    /// Applies [`OpBody::Free`]; how many were freed.
    fn free(&mut self, inodes: &[Inode]) -> u64 {
        match self.ok(OpBody::Free { inodes: inodes.to_vec() }) {
            MetaReply::Freed(n) => n,
            other => panic!("{other:?}"),
        }
    }

    fn state(&self, ino: Inode) -> Option<InodeState> {
        self.view().inode(ino).unwrap().map(|r| r.state)
    }

    fn file(&mut self, parent: Inode, name: &str) -> Inode {
        self.make(parent, name, FileKind::File, 0o644, &root())
    }

    fn lookup(&self, parent: Inode, name: &str) -> Result<Attr, Status> {
        self.view().lookup(parent, &n(name), &root())
    }

    fn names(&self, dir: Inode) -> Vec<String> {
        self.view().readdir(dir, None, 1000).unwrap().into_iter().map(|(n, _, _)| n.to_string()).collect()
    }
}

fn create_op(parent: Inode, name: &str, kind: FileKind, mode: u16, creds: &Creds) -> OpBody {
    OpBody::Create {
        parent,
        name: n(name),
        kind,
        mode,
        umask: 0,
        rdev: 0,
        target: if kind == FileKind::Symlink { b"target".to_vec() } else { vec![] },
        creds: creds.clone(),
        open: None,
    }
}

fn rename_op(parent: Inode, name: &str, new_parent: Inode, new_name: &str) -> OpBody {
    OpBody::Rename { parent, name: n(name), new_parent, new_name: n(new_name), flags: 0, creds: root() }
}

fn remove_op(parent: Inode, name: &str, dir: bool) -> OpBody {
    OpBody::Remove { parent, name: n(name), dir, creds: root() }
}

const ROOT: Inode = Inode::ROOT;

#[test]
fn format_creates_the_root_once() {
    let mut fs = Fs::new();
    let a = fs.attr(ROOT);
    assert_eq!((a.kind, a.mode, a.nlink, a.goal), (FileKind::Dir, 0o777, 2, Goal(2)));
    assert_eq!(fs.err(OpBody::Format { goal: Goal(1), trash_time: TrashTime(0) }), Status::Exists);
}

#[test]
fn create_every_kind_of_object() {
    let mut fs = Fs::new();
    for (name, kind) in [
        ("f", FileKind::File),
        ("d", FileKind::Dir),
        ("l", FileKind::Symlink),
        ("p", FileKind::Fifo),
        ("s", FileKind::Socket),
        ("b", FileKind::BlockDev),
        ("c", FileKind::CharDev),
    ] {
        let ino = fs.make(ROOT, name, kind, 0o640, &user(7));
        let a = fs.attr(ino);
        assert_eq!(a.kind, kind);
        assert_eq!((a.uid, a.gid), (7, 7));
        assert_eq!(a.nlink, if kind == FileKind::Dir { 2 } else { 1 });
        assert_eq!(a.goal, Goal(2), "goal inherited");
        assert_eq!(fs.lookup(ROOT, name).unwrap().inode, ino);
    }
    assert_eq!(fs.view().readlink(fs.lookup(ROOT, "l").unwrap().inode).unwrap(), b"target");
    let r = fs.attr(ROOT);
    assert_eq!(r.nlink, 3, "one subdirectory");
    assert_eq!(r.size, 7, "seven entries");
    assert_eq!(fs.names(ROOT), ["b", "c", "d", "f", "l", "p", "s"]);
    assert_eq!(fs.view().counter(COUNT_INODES).unwrap(), 8);
}

#[test]
fn create_errors() {
    let mut fs = Fs::new();
    let f = fs.file(ROOT, "f");
    assert_eq!(fs.err(create_op(ROOT, "f", FileKind::File, 0o644, &root())), Status::Exists);
    assert_eq!(fs.err(create_op(Inode(999), "x", FileKind::File, 0o644, &root())), Status::NotFound);
    assert_eq!(fs.err(create_op(f, "x", FileKind::File, 0o644, &root())), Status::NotDir);
    let d = fs.make(ROOT, "private", FileKind::Dir, 0o700, &user(5));
    assert_eq!(fs.err(create_op(d, "x", FileKind::File, 0o644, &user(6))), Status::Access);
    let long = "x".repeat(256);
    assert_eq!(Name::new(long.as_bytes()).unwrap_err(), Status::NameTooLong);
    assert_eq!(Name::new(b"a/b".to_vec()).unwrap_err(), Status::Invalid);
    assert_eq!(Name::new(b"..".to_vec()).unwrap_err(), Status::Invalid);
    let long_target = OpBody::Create {
        parent: ROOT,
        name: n("l"),
        kind: FileKind::Symlink,
        mode: 0,
        umask: 0,
        rdev: 0,
        target: vec![b'a'; 5000],
        creds: root(),
        open: None,
    };
    assert_eq!(fs.err(long_target), Status::NameTooLong);
}

#[test]
fn umask_and_setgid_directories() {
    let mut fs = Fs::new();
    let d = fs.make(ROOT, "g", FileKind::Dir, 0o2775, &Creds { uid: 1, gid: 50, groups: vec![] });
    assert_eq!(fs.attr(d).mode, 0o2775);
    let body = OpBody::Create {
        parent: d,
        name: n("f"),
        kind: FileKind::File,
        mode: 0o666,
        umask: 0o022,
        rdev: 0,
        target: vec![],
        creds: Creds { uid: 2, gid: 60, groups: vec![50] },
        open: None,
    };
    let MetaReply::Attr(a) = fs.ok(body) else { panic!() };
    assert_eq!((a.mode, a.gid), (0o644, 50), "umask applied, group inherited from the setgid dir");
    let sub = fs.make(d, "sub", FileKind::Dir, 0o755, &Creds { uid: 1, gid: 50, groups: vec![] });
    assert_eq!(fs.attr(sub).mode & 0o2000, 0o2000, "subdirectories inherit setgid");
}

#[test]
fn hard_links() {
    let mut fs = Fs::new();
    let f = fs.file(ROOT, "f");
    let d = fs.mkdir(ROOT, "d");
    fs.ok(OpBody::Link { inode: f, parent: d, name: n("g"), creds: root() });
    assert_eq!(fs.attr(f).nlink, 2);
    assert_eq!(fs.lookup(d, "g").unwrap().inode, f);
    assert_eq!(fs.err(OpBody::Link { inode: f, parent: d, name: n("g"), creds: root() }), Status::Exists);
    assert_eq!(fs.err(OpBody::Link { inode: d, parent: ROOT, name: n("d2"), creds: root() }), Status::Perm);
    assert_eq!(fs.err(OpBody::Link { inode: Inode(999), parent: ROOT, name: n("x"), creds: root() }), Status::NotFound);
    // Unlinking one name keeps the file.
    fs.ok(remove_op(ROOT, "f", false));
    assert_eq!(fs.attr(f).nlink, 1);
    assert_eq!(fs.lookup(d, "g").unwrap().inode, f);
}

#[test]
fn unlink_and_rmdir_errors() {
    let mut fs = Fs::new();
    let d = fs.mkdir(ROOT, "d");
    fs.file(d, "f");
    assert_eq!(fs.err(remove_op(ROOT, "nope", false)), Status::NotFound);
    assert_eq!(fs.err(remove_op(ROOT, "d", false)), Status::IsDir);
    assert_eq!(fs.err(remove_op(d, "f", true)), Status::NotDir);
    assert_eq!(fs.err(remove_op(ROOT, "d", true)), Status::NotEmpty);
    fs.ok(remove_op(d, "f", false));
    fs.ok(remove_op(ROOT, "d", true));
    assert_eq!(fs.lookup(ROOT, "d").unwrap_err(), Status::NotFound);
    assert_eq!(fs.attr(ROOT).nlink, 2);
    assert_eq!(fs.attr(ROOT).size, 0);
}

#[test]
fn sticky_directories_protect_other_users_files() {
    let mut fs = Fs::new();
    let tmp = fs.make(ROOT, "tmp", FileKind::Dir, 0o1777, &root());
    fs.make(tmp, "mine", FileKind::File, 0o666, &user(1));
    let body = OpBody::Remove { parent: tmp, name: n("mine"), dir: false, creds: user(2) };
    assert_eq!(fs.err(body), Status::Perm);
    let body =
        OpBody::Rename { parent: tmp, name: n("mine"), new_parent: tmp, new_name: n("x"), flags: 0, creds: user(2) };
    assert_eq!(fs.err(body), Status::Perm);
    fs.ok(OpBody::Remove { parent: tmp, name: n("mine"), dir: false, creds: user(1) });
}

#[test]
fn permission_denied_without_write_on_the_parent() {
    let mut fs = Fs::new();
    let d = fs.make(ROOT, "ro", FileKind::Dir, 0o555, &user(1));
    fs.make(d, "f", FileKind::File, 0o644, &root());
    assert_eq!(fs.err(OpBody::Remove { parent: d, name: n("f"), dir: false, creds: user(1) }), Status::Access);
    assert_eq!(fs.view().lookup(d, &n("f"), &user(1)).unwrap().kind, FileKind::File);
    let nox = fs.make(ROOT, "nox", FileKind::Dir, 0o600, &user(1));
    assert_eq!(fs.view().lookup(nox, &n("f"), &user(1)).unwrap_err(), Status::Access);
}

#[test]
fn rename_moves_replaces_and_refuses() {
    let mut fs = Fs::new();
    let a = fs.mkdir(ROOT, "a");
    let b = fs.mkdir(ROOT, "b");
    let f = fs.file(a, "f");
    fs.ok(rename_op(a, "f", b, "g"));
    assert_eq!(fs.lookup(b, "g").unwrap().inode, f);
    assert_eq!(fs.lookup(a, "f").unwrap_err(), Status::NotFound);
    assert_eq!((fs.attr(a).size, fs.attr(b).size), (0, 1));

    // Over an existing file: the old target goes away (to the trash, trash time is 1 day).
    let h = fs.file(b, "h");
    fs.ok(rename_op(b, "g", b, "h"));
    assert_eq!(fs.lookup(b, "h").unwrap().inode, f);
    assert_eq!(fs.view().inode(h).unwrap().unwrap().state, InodeState::Trash);
    assert_eq!(fs.attr(b).size, 1);

    // A directory moves with its `..` and link counts.
    let sub = fs.mkdir(a, "sub");
    fs.ok(rename_op(a, "sub", b, "sub"));
    assert_eq!((fs.attr(a).nlink, fs.attr(b).nlink), (2, 3));
    assert_eq!(fs.view().inode(sub).unwrap().unwrap().parent, b);

    // Into its own subtree: EINVAL. Onto itself: nothing happens.
    let deep = fs.mkdir(sub, "deep");
    assert_eq!(fs.err(rename_op(b, "sub", deep, "x")), Status::Invalid);
    assert_eq!(fs.err(rename_op(b, "sub", sub, "x")), Status::Invalid);
    fs.ok(rename_op(b, "sub", b, "sub"));

    // Type mismatches and non-empty targets.
    fs.file(a, "file");
    let e = fs.mkdir(a, "empty");
    assert_eq!(fs.err(rename_op(a, "file", a, "empty")), Status::IsDir);
    assert_eq!(fs.err(rename_op(a, "empty", b, "h")), Status::NotDir);
    assert_eq!(fs.err(rename_op(a, "empty", ROOT, "b")), Status::NotEmpty);
    assert_eq!(fs.err(rename_op(a, "missing", b, "x")), Status::NotFound);
    // A directory replaces an empty one.
    fs.ok(rename_op(b, "sub", a, "empty"));
    assert_eq!(fs.lookup(a, "empty").unwrap().inode, sub);
    assert!(fs.view().inode(e).unwrap().is_none());
    assert_eq!((fs.attr(a).nlink, fs.attr(b).nlink), (3, 2));
}

#[test]
fn rename_flags() {
    let mut fs = Fs::new();
    let x = fs.file(ROOT, "x");
    let d = fs.mkdir(ROOT, "d");
    let no_replace = OpBody::Rename {
        parent: ROOT,
        name: n("x"),
        new_parent: ROOT,
        new_name: n("d"),
        flags: RENAME_NOREPLACE,
        creds: root(),
    };
    assert_eq!(fs.err(no_replace), Status::Exists);
    let exchange = OpBody::Rename {
        parent: ROOT,
        name: n("x"),
        new_parent: ROOT,
        new_name: n("d"),
        flags: RENAME_EXCHANGE,
        creds: root(),
    };
    fs.ok(exchange);
    assert_eq!(fs.lookup(ROOT, "d").unwrap().inode, x);
    assert_eq!(fs.lookup(ROOT, "x").unwrap().inode, d);
    let missing = OpBody::Rename {
        parent: ROOT,
        name: n("x"),
        new_parent: ROOT,
        new_name: n("zz"),
        flags: RENAME_EXCHANGE,
        creds: root(),
    };
    assert_eq!(fs.err(missing), Status::NotFound);
    let both =
        OpBody::Rename { parent: ROOT, name: n("x"), new_parent: ROOT, new_name: n("d"), flags: 3, creds: root() };
    assert_eq!(fs.err(both), Status::Invalid);
}

#[test]
fn setattr_permissions_and_times() {
    let mut fs = Fs::new();
    let f = fs.make(ROOT, "f", FileKind::File, 0o4755, &user(1));
    let chmod = |mode, creds| OpBody::SetAttr {
        inode: f,
        set: SetAttr { mode: Some(mode), ..Default::default() },
        creds,
        handle: false,
    };
    assert_eq!(fs.err(chmod(0o600, user(2))), Status::Perm);
    fs.ok(chmod(0o4750, user(1)));
    assert_eq!(fs.attr(f).mode, 0o4750);
    // chown: only root gives files away; it clears setuid.
    let chown = |uid, creds| OpBody::SetAttr {
        inode: f,
        set: SetAttr { uid: Some(uid), ..Default::default() },
        creds,
        handle: false,
    };
    assert_eq!(fs.err(chown(2, user(1))), Status::Perm);
    fs.ok(chown(2, root()));
    assert_eq!((fs.attr(f).uid, fs.attr(f).mode & 0o4000), (2, 0));
    // chgrp to a group the owner is not in: EPERM.
    let chgrp = OpBody::SetAttr {
        inode: f,
        set: SetAttr { gid: Some(99), ..Default::default() },
        creds: user(2),
        handle: false,
    };
    assert_eq!(fs.err(chgrp), Status::Perm);
    // utimes with explicit times: owner only; "now" needs write permission.
    let at = |creds| OpBody::SetAttr {
        inode: f,
        set: SetAttr { mtime: Some(TimeSet::At(Timestamp::from_secs(5))), ..Default::default() },
        creds,
        handle: false,
    };
    assert_eq!(fs.err(at(user(3))), Status::Perm);
    fs.ok(at(user(2)));
    assert_eq!(fs.attr(f).mtime.secs, 5);
    let now = OpBody::SetAttr {
        inode: f,
        set: SetAttr { atime: Some(TimeSet::Now), ..Default::default() },
        creds: user(3),
        handle: false,
    };
    assert_eq!(fs.err(now), Status::Access);
    assert!(fs.attr(f).ctime.secs > 1_000_000);
}

#[test]
fn truncate_drops_whole_chunks_beyond_the_end() {
    let mut fs = Fs::new();
    let f = fs.file(ROOT, "f");
    for i in 0..3 {
        fs.ok(OpBody::AllocChunk { inode: f, index: i, replace: None });
    }
    fs.ok(OpBody::WriteEnd { inode: f, size: 3 * CHUNK_SIZE });
    assert_eq!(fs.attr(f).size, 3 * CHUNK_SIZE);
    let trunc = |size, creds, handle| OpBody::SetAttr {
        inode: f,
        set: SetAttr { size: Some(size), ..Default::default() },
        creds,
        handle,
    };
    fs.ok(trunc(CHUNK_SIZE + 1, root(), false));
    assert_eq!(fs.view().file_chunks(f).unwrap().len(), 2);
    assert_eq!(fs.view().counter(COUNT_CHUNKS).unwrap(), 2);
    fs.ok(trunc(10 * CHUNK_SIZE, root(), false));
    assert_eq!(fs.attr(f).size, 10 * CHUNK_SIZE);
    let d = fs.mkdir(ROOT, "d");
    assert_eq!(
        fs.err(OpBody::SetAttr {
            inode: d,
            set: SetAttr { size: Some(0), ..Default::default() },
            creds: root(),
            handle: false
        }),
        Status::IsDir
    );
    let g = fs.make(ROOT, "g", FileKind::File, 0o444, &user(4));
    let t = |handle| OpBody::SetAttr {
        inode: g,
        set: SetAttr { size: Some(0), ..Default::default() },
        creds: user(4),
        handle,
    };
    assert_eq!(fs.err(t(false)), Status::Access);
    fs.ok(t(true));
}

#[test]
fn xattrs() {
    let mut fs = Fs::new();
    let f = fs.file(ROOT, "f");
    let set = |name: &str, v: &[u8], flags| OpBody::SetXattr {
        inode: f,
        name: name.into(),
        value: v.to_vec(),
        flags,
        creds: root(),
    };
    fs.ok(set("user.a", b"1", 0));
    assert_eq!(fs.err(set("user.a", b"2", XATTR_CREATE)), Status::Exists);
    assert_eq!(fs.err(set("user.b", b"2", XATTR_REPLACE)), Status::NoData);
    fs.ok(set("user.a", b"3", XATTR_REPLACE));
    assert_eq!(fs.view().getxattr(f, b"user.a").unwrap(), b"3");
    assert_eq!(fs.view().listxattr(f).unwrap(), vec![b"user.a".to_vec()]);
    let tr = OpBody::SetXattr { inode: f, name: b"trusted.x".to_vec(), value: vec![], flags: 0, creds: user(1) };
    assert_eq!(fs.err(tr), Status::Perm);
    fs.ok(OpBody::RemoveXattr { inode: f, name: b"user.a".to_vec(), creds: root() });
    assert_eq!(fs.err(OpBody::RemoveXattr { inode: f, name: b"user.a".to_vec(), creds: root() }), Status::NoData);
    assert_eq!(fs.view().getxattr(f, b"user.a").unwrap_err(), Status::NoData);
}

#[test]
fn goal_and_trash_time_are_inherited_and_set_recursively() {
    let mut fs = Fs::new();
    let d = fs.mkdir(ROOT, "d");
    let sub = fs.make(d, "sub", FileKind::Dir, 0o777, &root());
    let f = fs.file(sub, "f");
    fs.ok(OpBody::AllocChunk { inode: f, index: 0, replace: None });
    let other = fs.make(sub, "other", FileKind::File, 0o644, &user(9));
    let r = fs.ok(OpBody::SetGoal { inode: d, goal: Goal(3), recursive: true, creds: root() });
    assert_eq!(r, MetaReply::Counts { changed: 4, unchanged: 0, denied: 0 });
    assert_eq!(fs.attr(f).goal, Goal(3));
    let (_, c) = fs.view().file_chunks(f).unwrap()[0];
    assert_eq!(fs.view().chunk(c).unwrap().unwrap().goal, Goal(3));
    let new = fs.file(sub, "new");
    assert_eq!(fs.attr(new).goal, Goal(3), "inherited from the parent");
    let r = fs.ok(OpBody::SetGoal { inode: d, goal: Goal(1), recursive: true, creds: user(9) });
    assert_eq!(r, MetaReply::Counts { changed: 1, unchanged: 0, denied: 4 });
    assert_eq!(fs.attr(other).goal, Goal(1));
    assert_eq!(fs.err(OpBody::SetGoal { inode: f, goal: Goal(1), recursive: false, creds: user(9) }), Status::Perm);
    let r = fs.ok(OpBody::SetTrashTime { inode: d, trash_time: TrashTime(0), recursive: true, creds: root() });
    assert_eq!(r, MetaReply::Counts { changed: 5, unchanged: 0, denied: 0 });
    let t = fs.file(d, "t");
    assert_eq!(fs.attr(t).trash_time, TrashTime(0));
}

#[test]
fn trash_undelete_purge_and_expiry() {
    let mut fs = Fs::new();
    let d = fs.mkdir(ROOT, "dir");
    let f = fs.file(d, "f");
    fs.ok(OpBody::AllocChunk { inode: f, index: 0, replace: None });
    fs.ok(remove_op(d, "f", false));
    let trash = fs.view().trash(b't', None, 10).unwrap();
    assert_eq!(trash.len(), 1);
    assert_eq!((trash[0].0, trash[0].1.path.as_slice()), (f, &b"dir/f"[..]));
    // Gone from its directory; a handle still open on it keeps working.
    assert_eq!(fs.lookup(d, "f").unwrap_err(), Status::NotFound);
    assert!(fs.view().getattr(f).is_ok());
    // Undelete recreates missing parents.
    fs.ok(remove_op(ROOT, "dir", true));
    fs.ok(OpBody::Undelete { inode: f });
    let restored = fs.lookup(fs.lookup(ROOT, "dir").unwrap().inode, "f").unwrap();
    assert_eq!(restored.inode, f);
    assert_eq!(fs.view().file_chunks(f).unwrap().len(), 1, "data kept");
    assert_eq!(fs.err(OpBody::Undelete { inode: f }), Status::NotFound);
    // Purge takes it out at once, expiry when the time is up; both leave it reserved for the
    // leader to free (a handle only the leader knows of may be open on it).
    let d = fs.lookup(ROOT, "dir").unwrap().inode;
    fs.ok(remove_op(d, "f", false));
    fs.ok(OpBody::Purge { inode: f });
    assert_eq!(fs.state(f), Some(InodeState::Reserved));
    assert_eq!(fs.free(&[f]), 1);
    assert!(fs.view().inode(f).unwrap().is_none());
    assert_eq!(fs.view().counter(COUNT_CHUNKS).unwrap(), 0);
    let g = fs.file(d, "g");
    fs.ok(remove_op(d, "g", false));
    assert_eq!(fs.ok(OpBody::ExpireTrash { limit: 100 }), MetaReply::Freed(0));
    assert_eq!(fs.free(&[g]), 0, "in the trash: not reserved");
    fs.now += 86_400 + 10;
    assert_eq!(fs.ok(OpBody::ExpireTrash { limit: 100 }), MetaReply::Freed(1));
    assert_eq!(fs.free(&[g]), 1);
    assert!(fs.view().inode(g).unwrap().is_none());
    assert!(fs.view().trash(b't', None, 10).unwrap().is_empty());
    assert!(fs.view().trash(b'r', None, 10).unwrap().is_empty());
}

#[test]
fn files_deleted_while_open_are_reserved_until_released() {
    let mut fs = Fs::new();
    fs.ok(OpBody::SetTrashTime { inode: ROOT, trash_time: TrashTime(0), recursive: false, creds: root() });
    let s = fs.session();
    let f = fs.file(ROOT, "f");
    fs.ok(OpBody::Open { session: s, inode: f });
    fs.ok(remove_op(ROOT, "f", false));
    assert_eq!(fs.view().inode(f).unwrap().unwrap().state, InodeState::Reserved);
    assert_eq!(fs.view().trash(b'r', None, 10).unwrap().len(), 1);
    assert_eq!(fs.free(&[f]), 0, "open");
    // Still writable through the open handle.
    fs.ok(OpBody::WriteEnd { inode: f, size: 10 });
    fs.ok(OpBody::Release { session: s, inode: f });
    assert_eq!(fs.state(f), Some(InodeState::Reserved), "freed by the leader only");
    assert_eq!(fs.free(&[f]), 1);
    assert!(fs.view().inode(f).unwrap().is_none());
    // Handles are counted: two opens by one session need two releases.
    let two = fs.file(ROOT, "two");
    fs.ok(OpBody::Open { session: s, inode: two });
    fs.ok(OpBody::Open { session: s, inode: two });
    fs.ok(remove_op(ROOT, "two", false));
    fs.ok(OpBody::Release { session: s, inode: two });
    assert_eq!(fs.view().inode(two).unwrap().unwrap().state, InodeState::Reserved, "one handle still open");
    assert_eq!(fs.free(&[two]), 0, "one handle still open");
    fs.ok(OpBody::Release { session: s, inode: two });
    assert_eq!(fs.free(&[two]), 1);
    assert!(fs.view().inode(two).unwrap().is_none());
    // Closing a session releases what it still had open.
    let g = fs.file(ROOT, "g");
    fs.ok(OpBody::Open { session: s, inode: g });
    fs.ok(remove_op(ROOT, "g", false));
    fs.ok(OpBody::CloseSession { session: s });
    assert_eq!(fs.free(&[g]), 1);
    assert!(fs.view().inode(g).unwrap().is_none());
    assert_eq!(fs.err(OpBody::Open { session: s, inode: ROOT }), Status::Stale);
    // In the trash and open: expiry and purge keep it, reserved, until the handle goes.
    fs.ok(OpBody::SetTrashTime { inode: ROOT, trash_time: TrashTime(60), recursive: false, creds: root() });
    let s = fs.session();
    for purge in [false, true] {
        let k = fs.file(ROOT, "k");
        fs.ok(OpBody::Open { session: s, inode: k });
        fs.ok(remove_op(ROOT, "k", false));
        if purge {
            fs.ok(OpBody::Purge { inode: k });
        } else {
            fs.now += 61;
            assert_eq!(fs.ok(OpBody::ExpireTrash { limit: 100 }), MetaReply::Freed(1));
        }
        assert_eq!(fs.view().inode(k).unwrap().unwrap().state, InodeState::Reserved, "purge: {purge}");
        assert!(fs.view().trash(b't', None, 10).unwrap().is_empty(), "purge: {purge}");
        assert_eq!(fs.view().trash(b'r', None, 10).unwrap().len(), 1, "purge: {purge}");
        fs.ok(OpBody::WriteEnd { inode: k, size: 10 });
        fs.ok(OpBody::Release { session: s, inode: k });
        assert_eq!(fs.free(&[k]), 1, "purge: {purge}");
        assert!(fs.view().inode(k).unwrap().is_none(), "purge: {purge}");
    }
    fs.ok(OpBody::SetTrashTime { inode: ROOT, trash_time: TrashTime(0), recursive: false, creds: root() });
    // Without trash and not open: reserved until the leader frees it. Free leaves live files,
    // and anything already gone, alone.
    let h = fs.file(ROOT, "h");
    let live = fs.file(ROOT, "live");
    fs.ok(remove_op(ROOT, "h", false));
    assert_eq!(fs.state(h), Some(InodeState::Reserved));
    assert_eq!(fs.free(&[live, h, h, Inode(999_999)]), 1);
    assert!(fs.view().inode(h).unwrap().is_none());
    assert_eq!(fs.state(live), Some(InodeState::Live));
    // Other kinds are freed at once when not open.
    let sock = fs.ok(create_op(ROOT, "sock", FileKind::Socket, 0o644, &root()));
    let MetaReply::Attr(sock) = sock else { panic!("{sock:?}") };
    fs.ok(remove_op(ROOT, "sock", false));
    assert!(fs.view().inode(sock.inode).unwrap().is_none());
}

#[test]
fn chunks_created_before_their_record_take_ids_set_aside() {
    let mut fs = Fs::new();
    let f = fs.file(ROOT, "f");
    let MetaReply::ChunkIds { first, count: 8 } = fs.ok(OpBody::ReserveChunkIds { count: 8 }) else { panic!() };
    let MetaReply::Chunk { chunk: allocated, .. } = fs.ok(OpBody::AllocChunk { inode: f, index: 0, replace: None })
    else {
        panic!()
    };
    assert!(allocated.0 >= first.0 + 8, "an allocation after a reservation takes an id outside it");
    let MetaReply::ChunkIds { first: next, .. } = fs.ok(OpBody::ReserveChunkIds { count: 8 }) else { panic!() };
    assert!(next.0 > allocated.0, "ranges and allocations never overlap");
    let (id, version) = (ChunkId(first.0 + 3), ChunkVersion(1));
    fs.ok(OpBody::AddChunk { inode: f, index: 1, chunk: id, version });
    let (got, rec) = fs.view().file_chunk(f, 1).unwrap().unwrap();
    assert_eq!((got, rec.version, rec.refs), (id, version, 1));
    // A filled slot, an id in use, an id never set aside: refused, nothing changed.
    assert_eq!(fs.err(OpBody::AddChunk { inode: f, index: 1, chunk: ChunkId(first.0 + 4), version }), Status::Exists);
    assert_eq!(fs.err(OpBody::AddChunk { inode: f, index: 2, chunk: id, version }), Status::Invalid);
    assert_eq!(fs.err(OpBody::AddChunk { inode: f, index: 2, chunk: ChunkId(next.0 + 100), version }), Status::Invalid);
    assert!(fs.view().file_chunk(f, 2).unwrap().is_none());
    assert!(fs.view().chunk(ChunkId(first.0 + 4)).unwrap().is_none());
}

#[test]
fn the_first_write_end_of_a_new_chunk_records_it_once() {
    let mut fs = Fs::new();
    let f = fs.file(ROOT, "f");
    let MetaReply::ChunkIds { first, .. } = fs.ok(OpBody::ReserveChunkIds { count: 8 }) else { panic!() };
    let (id, version) = (ChunkId(first.0), ChunkVersion(1));
    let end = |size| OpBody::AddChunkEnd { inode: f, index: 0, chunk: id, version, size };
    let MetaReply::Attr(a) = fs.ok(end(4096)) else { panic!() };
    assert_eq!(a.size, 4096);
    let (got, rec) = fs.view().file_chunk(f, 0).unwrap().unwrap();
    assert_eq!((got, rec.version, rec.refs), (id, version, 1));
    // The same end again (a retry after a lost answer): the record stays as it is.
    let MetaReply::Attr(a) = fs.ok(end(8192)) else { panic!() };
    assert_eq!(a.size, 8192);
    assert_eq!(fs.view().file_chunk(f, 0).unwrap().unwrap().1.refs, 1);
    // Another new chunk for the filled slot: refused, and the size is left alone.
    let other = OpBody::AddChunkEnd { inode: f, index: 0, chunk: ChunkId(first.0 + 1), version, size: 1 << 20 };
    assert_eq!(fs.err(other), Status::Exists);
    assert_eq!(fs.view().inode(f).unwrap().unwrap().size, 8192);
    assert!(fs.view().chunk(ChunkId(first.0 + 1)).unwrap().is_none());
    // No such file: no chunk.
    let gone = OpBody::AddChunkEnd { inode: Inode(1 << 40), index: 1, chunk: ChunkId(first.0 + 2), version, size: 1 };
    assert_eq!(fs.err(gone), Status::NotFound);
    assert!(fs.view().chunk(ChunkId(first.0 + 2)).unwrap().is_none());
}

#[test]
fn a_batch_of_releases_counts_each_handle() {
    let mut fs = Fs::new();
    fs.ok(OpBody::SetTrashTime { inode: ROOT, trash_time: TrashTime(0), recursive: false, creds: root() });
    let s = fs.session();
    let (a, b, c) = (fs.file(ROOT, "a"), fs.file(ROOT, "b"), fs.file(ROOT, "c"));
    for inode in [a, a, a, b, c] {
        fs.ok(OpBody::Open { session: s, inode });
    }
    for n in ["a", "b", "c"] {
        fs.ok(remove_op(ROOT, n, false));
    }
    // Two of a's three handles, and b's only one.
    fs.ok(OpBody::ReleaseMany { session: s, inodes: vec![a, b, a] });
    assert_eq!(fs.free(&[a, b, c]), 1, "only b has no handle left");
    assert_eq!(fs.view().inode(a).unwrap().unwrap().state, InodeState::Reserved, "a handle of a is open");
    assert!(fs.view().inode(b).unwrap().is_none());
    assert_eq!(fs.view().inode(c).unwrap().unwrap().state, InodeState::Reserved);
    fs.ok(OpBody::ReleaseMany { session: s, inodes: vec![c, a] });
    assert_eq!(fs.free(&[a, c]), 2);
    assert!(fs.view().inode(a).unwrap().is_none());
    assert!(fs.view().inode(c).unwrap().is_none());
    assert!(fs.view().trash(b'r', None, 10).unwrap().is_empty());
}

#[test]
fn snapshots_copy_trees_and_share_chunks() {
    let mut fs = Fs::new();
    let src = fs.mkdir(ROOT, "src");
    let sub = fs.mkdir(src, "sub");
    let f = fs.file(sub, "f");
    fs.make(src, "link", FileKind::Symlink, 0, &root());
    fs.ok(OpBody::AllocChunk { inode: f, index: 0, replace: None });
    fs.ok(OpBody::SetXattr { inode: f, name: b"user.k".to_vec(), value: b"v".to_vec(), flags: 0, creds: root() });
    let MetaReply::Attr(snap) = fs.ok(OpBody::Snapshot { src, parent: ROOT, name: n("snap"), creds: root() }) else {
        panic!()
    };
    assert_eq!(fs.names(snap.inode), ["link", "sub"]);
    assert_eq!(fs.attr(snap.inode).nlink, 3);
    let sub2 = fs.lookup(snap.inode, "sub").unwrap().inode;
    let f2 = fs.lookup(sub2, "f").unwrap().inode;
    assert_ne!(f2, f);
    let (c1, c2) = (fs.view().file_chunks(f).unwrap(), fs.view().file_chunks(f2).unwrap());
    assert_eq!(c1, c2, "chunks are shared");
    assert_eq!(fs.view().chunk(c1[0].1).unwrap().unwrap().refs, 2);
    assert_eq!(fs.view().getxattr(f2, b"user.k").unwrap(), b"v");
    // Copy-on-write: replacing the shared chunk in the source leaves the snapshot's alone.
    let MetaReply::Chunk { chunk, copy_from, .. } =
        fs.ok(OpBody::AllocChunk { inode: f, index: 0, replace: Some(c1[0].1) })
    else {
        panic!()
    };
    assert_ne!(chunk, c1[0].1);
    assert_eq!(copy_from.unwrap().0, c1[0].1);
    assert_eq!(fs.view().chunk(c1[0].1).unwrap().unwrap().refs, 1);
    assert_eq!(fs.view().file_chunks(f2).unwrap(), c2);
    // Errors: existing target, snapshot into itself.
    assert_eq!(fs.err(OpBody::Snapshot { src, parent: ROOT, name: n("snap"), creds: root() }), Status::Exists);
    assert_eq!(fs.err(OpBody::Snapshot { src, parent: sub, name: n("x"), creds: root() }), Status::Invalid);
}

#[test]
fn chunk_allocation_is_idempotent_per_slot() {
    let mut fs = Fs::new();
    let f = fs.file(ROOT, "f");
    let MetaReply::Chunk { chunk: a, version, .. } = fs.ok(OpBody::AllocChunk { inode: f, index: 0, replace: None })
    else {
        panic!()
    };
    assert_eq!(version, ChunkVersion(0));
    let MetaReply::Chunk { chunk: b, .. } = fs.ok(OpBody::AllocChunk { inode: f, index: 0, replace: None }) else {
        panic!()
    };
    assert_eq!(a, b, "a second allocation of the same slot returns the first chunk");
    fs.ok(OpBody::SetChunkVersion { chunk: a, version: ChunkVersion(1) });
    assert_eq!(fs.view().file_chunk(f, 0).unwrap().unwrap().1.version, ChunkVersion(1));
    assert_eq!(fs.err(OpBody::SetChunkVersion { chunk: ChunkId(999), version: ChunkVersion(1) }), Status::NotFound);
    let d = fs.mkdir(ROOT, "d");
    assert_eq!(fs.err(OpBody::AllocChunk { inode: d, index: 0, replace: None }), Status::Invalid);
}

#[test]
fn failed_operations_write_nothing() {
    let mut fs = Fs::new();
    let d = fs.mkdir(ROOT, "d");
    fs.file(d, "x");
    let before = fs.view().counter(COUNT_INODES).unwrap();
    let next = fs.view().counter(NEXT_INODE).unwrap();
    // Fails after allocating nothing; the rename fails after reading several records.
    assert_eq!(fs.err(create_op(d, "x", FileKind::File, 0o644, &root())), Status::Exists);
    assert_eq!(fs.err(rename_op(ROOT, "d", d, "inside")), Status::Invalid);
    assert_eq!(fs.view().counter(COUNT_INODES).unwrap(), before);
    assert_eq!(fs.view().counter(NEXT_INODE).unwrap(), next);
    assert_eq!(fs.names(d), ["x"]);
}

#[test]
fn a_retried_request_returns_the_recorded_reply_once_applied() {
    let mut fs = Fs::new();
    let s = fs.session();
    let send = |fs: &mut Fs, request: u64, low_water: u64, body: OpBody| {
        fs.index += 1;
        let origin = Some(Origin { session: s, request, low_water });
        apply_local(&fs.db, &Namespace, fs.index, MetaOp { now: Timestamp::from_secs(fs.now), origin, body }).unwrap()
    };
    let create = create_op(ROOT, "once", FileKind::File, 0o644, &root());
    let first = send(&mut fs, 5, 0, create.clone());
    let MetaReply::Attr(a) = &first else { panic!("{first:?}") };
    // The same request again (its reply was lost): same reply, not EEXIST, nothing created twice.
    assert_eq!(send(&mut fs, 5, 0, create.clone()), first);
    assert_eq!(fs.names(ROOT), ["once"]);
    // A new request with the same content is a new operation.
    assert_eq!(send(&mut fs, 6, 0, create), MetaReply::Err(Status::Exists));
    // Records below the low-water mark are dropped; closing the session drops the rest.
    send(&mut fs, 7, 7, OpBody::Remove { parent: ROOT, name: n("once"), dir: false, creds: root() });
    let rec: super::records::SessionReplies = fs.db.get_value(CF_SESSIONS, &session_replies(s)).unwrap().unwrap();
    assert_eq!(rec.entries.iter().map(|e| e.0).collect::<Vec<_>>(), [7], "only request 7 is still recorded");
    fs.ok(OpBody::CloseSession { session: s });
    let keys: Vec<_> =
        fs.db.raw().iterator_cf(fs.db.cf(CF_SESSIONS).unwrap(), rocksdb_mode()).map(|kv| kv.unwrap().0[0]).collect();
    assert!(keys.is_empty(), "{keys:?}");
    assert_eq!(fs.view().inode(a.inode).unwrap().map(|r| r.state), Some(InodeState::Trash));
}

fn rocksdb_mode() -> alces_raft_store::db::IteratorMode<'static> {
    alces_raft_store::db::IteratorMode::Start
}

#[test]
fn append_chunks_and_drop_chunk() {
    let mut fs = Fs::new();
    let a = fs.file(ROOT, "a");
    let b = fs.file(ROOT, "b");
    fs.ok(OpBody::AllocChunk { inode: a, index: 0, replace: None });
    fs.ok(OpBody::WriteEnd { inode: a, size: 100 });
    for i in 0..2 {
        fs.ok(OpBody::AllocChunk { inode: b, index: i, replace: None });
    }
    fs.ok(OpBody::WriteEnd { inode: b, size: CHUNK_SIZE + 10 });
    let MetaReply::Attr(attr) = fs.ok(OpBody::AppendChunks { dst: a, src: b, creds: root() }) else { panic!() };
    assert_eq!(attr.size, 2 * CHUNK_SIZE + 10, "appended after a whole first chunk");
    let chunks = fs.view().file_chunks(a).unwrap();
    assert_eq!(chunks.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(chunks[1].1, fs.view().file_chunks(b).unwrap()[0].1, "shared with the source");
    assert_eq!(fs.view().chunk(chunks[1].1).unwrap().unwrap().refs, 2);
    let d = fs.mkdir(ROOT, "d");
    assert_eq!(fs.err(OpBody::AppendChunks { dst: d, src: b, creds: root() }), Status::Invalid);
    // Dropping a chunk leaves a hole and releases the reference.
    fs.ok(OpBody::DropChunk { inode: a, index: 1, chunk: chunks[1].1 });
    assert_eq!(fs.view().chunk(chunks[1].1).unwrap().unwrap().refs, 1);
    assert_eq!(fs.err(OpBody::DropChunk { inode: a, index: 1, chunk: chunks[1].1 }), Status::NotFound);
}

/// A name as it may arrive from the wire, without [`Name::new`]'s checks.
fn wire_name(bytes: &[u8]) -> Name {
    alces_proto::codec::decode(&alces_proto::codec::encode(&bytes.to_vec())).unwrap()
}

/// The failures not shown with their operation above: over-long names from the wire in every
/// operation that takes one, the link limit, xattr sizes, truncating what is not a file,
/// reads of the wrong kind of inode, an undelete or purge that cannot be.
#[test]
fn errors_of_names_links_xattrs_truncates_reads_and_the_trash() {
    let mut fs = Fs::new();
    let d = fs.mkdir(ROOT, "d");
    let f = fs.file(ROOT, "f");
    let long = wire_name(&[b'x'; 256]);
    let mut create = create_op(ROOT, "x", FileKind::File, 0o644, &root());
    if let OpBody::Create { name, .. } = &mut create {
        *name = long.clone();
    }
    assert_eq!(fs.err(create), Status::NameTooLong);
    assert_eq!(fs.err(OpBody::Link { inode: f, parent: ROOT, name: long.clone(), creds: root() }), Status::NameTooLong);
    let rename =
        OpBody::Rename { parent: ROOT, name: n("f"), new_parent: d, new_name: long.clone(), flags: 0, creds: root() };
    assert_eq!(fs.err(rename), Status::NameTooLong);
    let snap = OpBody::Snapshot { src: f, parent: d, name: long, creds: root() };
    assert_eq!(fs.err(snap), Status::NameTooLong);
    let mut create = create_op(ROOT, "x", FileKind::File, 0o644, &root());
    if let OpBody::Create { name, .. } = &mut create {
        *name = wire_name(b"a/b");
    }
    assert_eq!(fs.err(create), Status::Invalid);
    assert!(fs.lookup(d, "f").is_err() && fs.lookup(ROOT, "f").is_ok(), "a refused rename moved the file");

    // EMLINK: a file has at most 65,000 names.
    let many = fs.mkdir(ROOT, "many");
    for i in 1..65_000 {
        fs.ok(OpBody::Link { inode: f, parent: many, name: n(&i.to_string()), creds: root() });
    }
    assert_eq!(fs.attr(f).nlink, 65_000);
    assert_eq!(
        fs.err(OpBody::Link { inode: f, parent: many, name: n("one-more"), creds: root() }),
        Status::TooManyLinks
    );

    // ERANGE: an empty or over-long xattr name, an over-long value.
    let set = |name: Vec<u8>, value: Vec<u8>| OpBody::SetXattr { inode: f, name, value, flags: 0, creds: root() };
    assert_eq!(fs.err(set(vec![], b"v".to_vec())), Status::Range);
    assert_eq!(fs.err(set(vec![b'n'; 256], b"v".to_vec())), Status::Range);
    assert_eq!(fs.err(set(b"user.big".to_vec(), vec![0; 65_537])), Status::Range);
    assert!(fs.view().listxattr(f).unwrap().is_empty());

    // Truncating a directory is EISDIR, anything else that is not a file EINVAL.
    let l = fs.make(ROOT, "l", FileKind::Symlink, 0o777, &root());
    let truncate = |inode| OpBody::SetAttr {
        inode,
        set: SetAttr { size: Some(0), ..Default::default() },
        creds: root(),
        handle: false,
    };
    assert_eq!(fs.err(truncate(d)), Status::IsDir);
    assert_eq!(fs.err(truncate(l)), Status::Invalid);

    // Reads: a missing inode, a readlink of a file, a readdir of a file.
    assert_eq!(fs.view().getattr(Inode(999_999)).unwrap_err(), Status::NotFound);
    assert_eq!(fs.view().readlink(f).unwrap_err(), Status::Invalid);
    assert_eq!(fs.view().readdir(f, None, 10).unwrap_err(), Status::NotDir);
    assert_eq!(fs.view().opendir_check(f, &root()).unwrap_err(), Status::NotDir);

    // The trash: an undelete whose name was taken meanwhile, whose old folder is now a file;
    // a purge of a file that is not in the trash.
    let g = fs.file(d, "g");
    fs.ok(remove_op(d, "g", false));
    fs.file(d, "g");
    assert_eq!(fs.err(OpBody::Undelete { inode: g }), Status::Exists);
    let h = fs.file(d, "h");
    fs.ok(remove_op(d, "h", false));
    fs.ok(remove_op(d, "g", false));
    fs.ok(OpBody::Purge { inode: g });
    fs.ok(remove_op(ROOT, "d", true));
    fs.file(ROOT, "d");
    assert_eq!(fs.err(OpBody::Undelete { inode: h }), Status::NotDir);
    assert_eq!(fs.err(OpBody::Purge { inode: f }), Status::NotFound);
    assert!(fs.view().trash(b't', None, 10).unwrap().iter().any(|(i, _)| *i == h), "h left the trash");
}
