//! The client service (port 9421): sessions under the export rules, and every namespace,
//! data-path and tool request.
//!
//! Each connection has a reader task that decodes requests and runs each in its own task (at
//! most [`PER_CONNECTION`] at once), and a writer task that sends replies as they complete,
//! in any order. Followers answer everything but `Challenge` and `MasterInfo` with
//! `NotLeader`, naming the leader.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use alces_proto::link::client_master::{
    ClientError, ClientReply, ClientRequest, DirSummary, MasterView, Register, Reply, Request, SessionView, TrashEntry,
    MAX_RELEASES,
};
use alces_proto::types::{Attr, Creds, FileKind, Inode, Name, SessionId, CHUNK_SIZE};
use alces_proto::{Connection, Handshake, LinkKind, Status};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use crate::exports::{normalize, MountRequest};
use crate::master::Master;
use crate::namespace::keys::COUNT_INODES;
use crate::namespace::ops::{MetaReply, OpBody, Origin};
use crate::namespace::read::View;
use crate::namespace::records::SessionInfo;

/// Requests of one connection served at the same time, at most.
const PER_CONNECTION: usize = 256;
/// Client connections, at most.
const MAX_CONNECTIONS: usize = 4096;
/// Entries in one readdir reply, at most.
const READDIR_MAX: usize = alces_proto::link::client_master::READDIR_MAX as usize;

type Res = Result<ClientReply, ClientError>;

/// What one connection knows: its peer, the password nonce, its session.
struct Conn {
    peer: SocketAddr,
    nonce: Mutex<Option<[u8; 32]>>,
    session: Mutex<Option<(SessionId, SessionInfo)>>,
}

pub async fn serve(m: Arc<Master>, listener: TcpListener) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = m.stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, "too many client connections; refusing one");
            continue;
        };
        let m = m.clone();
        tokio::spawn(async move {
            let stop = m.stop.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(m, stream, peer) => {}
            }
            drop(permit);
        });
    }
}

async fn connection(m: Arc<Master>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let mut conn = match Connection::new(stream, alces_proto::DEFAULT_MAX_FRAME) {
        Ok(c) => c,
        Err(e) => return tracing::warn!(client = %peer, error = %e, "connection unusable"),
    };
    let hs = Handshake::new(LinkKind::ClientMaster, format!("master {}", m.config.id), None);
    if let Err(e) = hs.accept(&mut conn).await {
        return tracing::warn!(client = %peer, error = %e, "refused a client connection");
    }
    let (mut reader, writer) = conn.split();
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let write_task = tokio::spawn(writer.pump(rx));
    let state = Arc::new(Conn { peer, nonce: Mutex::new(None), session: Mutex::new(None) });
    let slots = Arc::new(Semaphore::new(PER_CONNECTION));
    loop {
        let req: Request = match reader.recv().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) if e.is_disconnect() => break,
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "closing client connection after a bad frame");
                break;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else { break };
        let (m, state, tx) = (m.clone(), state.clone(), tx.clone());
        tokio::spawn(async move {
            let op: &'static str = (&req.body).into();
            let start = Instant::now();
            // A request waiting on a leader that lost its quorum is answered `NotLeader` (with
            // no leader named): the client sends it again, with the same id, elsewhere, and
            // the new leader applies it at most once.
            let body = tokio::select! {
                biased;
                b = handle(&m, &state, req.id, req.low_water, req.creds, req.body) => b,
                _ = m.stopped_serving() => Err(ClientError::NotLeader { leader_id: None, leader_addr: None }),
            };
            m.metrics.request(op, body.is_ok(), start.elapsed());
            let _ = tx.send(Reply { id: req.id, body });
            drop(permit);
        });
    }
    drop(tx);
    let _ = write_task.await;
}

fn peer_ipv4(addr: &SocketAddr) -> Ipv4Addr {
    match addr.ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

/// The identity a request runs as after the export's `mapall`/`maproot`.
fn map_creds(info: &SessionInfo, creds: Creds) -> Creds {
    if let Some((uid, gid)) = info.map_all {
        return Creds { uid, gid, groups: Vec::new() };
    }
    if creds.uid == 0 {
        if let Some((uid, gid)) = info.map_root {
            if uid != 0 {
                return Creds { uid, gid, groups: Vec::new() };
            }
        }
    }
    creds
}

/// The session sees its export's directory as inode 1.
fn inward(info: &SessionInfo, ino: Inode) -> Inode {
    if ino == Inode::ROOT {
        info.root
    } else {
        ino
    }
}

fn outward(info: &SessionInfo, mut attr: Attr) -> Attr {
    if attr.inode == info.root {
        attr.inode = Inode::ROOT;
    }
    attr
}

/// The reply to a change in the folders `dirs`, with their attributes as this leader has them
/// now (it applied the change).
fn changed_reply(m: &Master, info: &SessionInfo, r: MetaReply, dirs: &[Inode]) -> Res {
    let attr = match attr_reply(info, r)? {
        ClientReply::Attr(a) => Some(a),
        ClientReply::Done => None,
        other => return Ok(other),
    };
    let view = m.local_view();
    let mut out: Vec<Attr> = Vec::with_capacity(dirs.len());
    for &d in dirs {
        // A folder removed meanwhile has nothing to tell.
        if let Ok(a) = view.getattr(d) {
            if !out.iter().any(|o| o.inode == a.inode) {
                out.push(outward(info, a));
            }
        }
    }
    Ok(ClientReply::Changed { attr, dirs: out })
}

fn attr_reply(info: &SessionInfo, r: MetaReply) -> Res {
    match r {
        MetaReply::Attr(a) => Ok(ClientReply::Attr(outward(info, a))),
        MetaReply::Done => Ok(ClientReply::Done),
        MetaReply::Counts { changed, unchanged, denied } => Ok(ClientReply::Counts { changed, unchanged, denied }),
        MetaReply::Freed(_) => Ok(ClientReply::Done),
        other => {
            tracing::error!(?other, "unexpected namespace reply");
            Err(Status::Io.into())
        }
    }
}

async fn handle(m: &Arc<Master>, conn: &Conn, id: u64, low_water: u64, creds: Creds, req: ClientRequest) -> Res {
    match req {
        ClientRequest::Challenge => {
            let nonce: [u8; 32] = rand::random();
            *conn.nonce.lock().expect("nonce lock") = Some(nonce);
            return Ok(ClientReply::Challenge(nonce));
        }
        ClientRequest::MasterInfo => return Ok(master_info(m)),
        _ => {}
    }
    if !m.is_leader() {
        return Err(m.not_leader());
    }
    if !m.serving() {
        return Err(ClientError::NotLeader { leader_id: None, leader_addr: None });
    }
    if let ClientRequest::Register(r) = req {
        return register(m, conn, r).await;
    }
    let Some((session, info)) = conn.session.lock().expect("session lock").clone() else {
        return Err(ClientError::NoSession);
    };
    m.session_seen(session);
    if let ClientRequest::CloseSession = req {
        let r = m.propose(OpBody::CloseSession { session }).await;
        m.session_gone(session);
        *conn.session.lock().expect("session lock") = None;
        return r.map(|_| ClientReply::Done);
    }
    read_only_check(&info, &req)?;
    if info.meta {
        return meta_request(m, req).await;
    }
    let creds = map_creds(&info, creds);
    let origin = Some(Origin { session, request: id, low_water });
    request(m, origin, session, &info, creds, req).await
}

fn master_info(m: &Master) -> ClientReply {
    let status = m.node.status();
    let masters = status
        .members
        .iter()
        .map(|s| MasterView {
            id: s.id,
            client_addr: s.member.client_addr.clone(),
            admin_addr: s.member.admin_addr.clone(),
            leader: status.leader == Some(s.id),
        })
        .collect();
    ClientReply::Masters { leader: status.leader, masters }
}

/// A session of a read-only export (`ro`) may not change anything: EROFS.
fn read_only_check(info: &SessionInfo, req: &ClientRequest) -> Result<(), ClientError> {
    if info.read_only && mutates(req) {
        return Err(Status::ReadOnly.into());
    }
    Ok(())
}

/// Whether a request changes the file system (every request is named, so that a new one
/// must be sorted here).
fn mutates(req: &ClientRequest) -> bool {
    use ClientRequest::*;
    match req {
        SetAttr { .. }
        | Create { .. }
        | Symlink { .. }
        | Link { .. }
        | Unlink { .. }
        | Rmdir { .. }
        | Rename { .. } => true,
        SetXattr { .. } | RemoveXattr { .. } | WriteChunk { .. } | WriteEnd { .. } => true,
        SetGoal { .. } | SetTrashTime { .. } | MakeSnapshot { .. } | FileRepair { .. } | AppendChunks { .. } => true,
        Undelete { .. } | Purge { .. } => true,
        Open { flags, .. } => {
            (*flags as i32 & libc::O_ACCMODE) != libc::O_RDONLY || (*flags as i32 & libc::O_TRUNC) != 0
        }
        // Sessions and handles belong to the mount, reports to the cluster's health.
        Challenge
        | Register(_)
        | CloseSession
        | MasterInfo
        | Release { .. }
        | ReleaseMany { .. }
        | ReleaseHandles { .. }
        | ReportBadReplica { .. } => false,
        Lookup { .. } | GetAttr { .. } | Access { .. } | ReadLink { .. } | OpenDir { .. } | ReadDir { .. } => false,
        GetXattr { .. } | ListXattr { .. } | StatFs | ReadChunk { .. } | GetGoal { .. } | GetTrashTime { .. } => false,
        FileInfo { .. } | DirInfo { .. } | ListTrash { .. } | ListReserved { .. } => false,
    }
}

/// Resolves a mount path to a directory inode, from the root.
fn resolve(view: &View<'_>, path: &str) -> Result<Inode, ClientError> {
    let mut cur = Inode::ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let name = Name::new(part.as_bytes().to_vec())?;
        let a = view.lookup(cur, &name, &Creds::root())?;
        if a.kind != FileKind::Dir {
            return Err(Status::NotDir.into());
        }
        cur = a.inode;
    }
    Ok(cur)
}

async fn register(m: &Arc<Master>, conn: &Conn, r: Register) -> Res {
    let view = m.read().await?;
    if !view.is_formatted()? {
        return Err(ClientError::Unavailable("the file system is being created".into()));
    }
    let info = match r.tool_of {
        // A tool inside a mount works with the mount's rules; the mount passed the checks.
        Some(parent) => {
            let Some(p) = view.session(parent)? else {
                return Err(ClientError::Refused(format!("the mount's session {parent} is gone")));
            };
            SessionInfo { peer: conn.peer.to_string(), client_name: r.client_name.clone(), ..p.info }
        }
        None => session_rules(&view, conn, &r, m)?,
    };
    let session = match r.session {
        Some(id) => {
            // Reattaching after a reconnect: the session must still exist; the rules are
            // those of the export now.
            if view.session(id)?.is_none() {
                return Err(ClientError::UnknownSession(id));
            }
            id
        }
        None => match m.propose(OpBody::OpenSession { info: info.clone() }).await? {
            MetaReply::Session(id) => id,
            other => {
                tracing::error!(?other, "unexpected reply to OpenSession");
                return Err(Status::Io.into());
            }
        },
    };
    m.session_seen(session);
    m.handles.announce(session, r.handles.into_iter().map(|(h, i)| (h, inward(&info, i))).collect(), m.term());
    tracing::info!(session = %session, client = %conn.peer, path = %info.path, read_only = info.read_only, "session registered");
    let reply = SessionView { session, root: Inode::ROOT, read_only: info.read_only, meta: info.meta };
    *conn.session.lock().expect("session lock") = Some((session, info));
    Ok(ClientReply::Registered(reply))
}

/// The rules a new session gets: the first export that admits the client (checking the
/// password proof against the nonce of this connection).
fn session_rules(view: &View<'_>, conn: &Conn, r: &Register, m: &Master) -> Result<SessionInfo, ClientError> {
    let path = normalize(&r.path).ok_or_else(|| ClientError::Refused(format!("bad path {:?}", r.path)))?;
    let nonce = *conn.nonce.lock().expect("nonce lock");
    let exports = m.exports();
    let ask = MountRequest { addr: peer_ipv4(&conn.peer), path: &path, meta: r.meta };
    let rule = exports
        .find(&ask, |key| match (nonce, r.password_proof) {
            (Some(n), Some(proof)) => alces_proto::password_proof(key, &n) == proof,
            _ => false,
        })
        .map_err(|e| ClientError::Refused(e.to_string()))?;
    let root = if r.meta {
        Inode::ROOT
    } else {
        resolve(view, &path).map_err(|e| ClientError::Refused(format!("{path}: {e}")))?
    };
    let o = &rule.options;
    Ok(SessionInfo {
        peer: conn.peer.to_string(),
        client_name: r.client_name.clone(),
        root,
        path: if r.meta { ".".into() } else { path },
        meta: r.meta,
        read_only: o.read_only,
        map_root: Some(o.map_root),
        map_all: o.map_all,
        min_goal: o.min_goal,
        max_goal: o.max_goal,
        min_trash: o.min_trash,
        max_trash: o.max_trash,
    })
}

/// The meta file system: only the trash and reserved files.
async fn meta_request(m: &Arc<Master>, req: ClientRequest) -> Res {
    match req {
        ClientRequest::ListTrash { after, limit } | ClientRequest::ListReserved { after, limit } => {
            let tag = if matches!(req, ClientRequest::ListTrash { .. }) { b't' } else { b'r' };
            let view = m.read().await?;
            let entries = view
                .trash(tag, after, (limit as usize).min(READDIR_MAX))?
                .into_iter()
                .filter_map(|(inode, t)| {
                    let rec = view.inode(inode).ok().flatten()?;
                    Some(TrashEntry { inode, path: t.path, deleted_at: t.deleted_at, attr: rec.attr(inode) })
                })
                .collect();
            Ok(ClientReply::Trash(entries))
        }
        ClientRequest::Undelete { inode } => m.propose(OpBody::Undelete { inode }).await.map(|_| ClientReply::Done),
        ClientRequest::Purge { inode } => {
            let r = m.propose(OpBody::Purge { inode }).await;
            m.reap_soon();
            r.map(|_| ClientReply::Done)
        }
        ClientRequest::StatFs => statfs(m).await,
        _ => Err(Status::NotSupported.into()),
    }
}

async fn statfs(m: &Arc<Master>) -> Res {
    let view = m.read().await?;
    let inodes = view.counter(COUNT_INODES)?;
    let (total, avail) = m
        .topology
        .servers()
        .iter()
        .filter(|s| s.connected)
        .fold((0, 0), |(t, a), s| (t + s.load.total_bytes, a + s.load.avail_bytes));
    Ok(ClientReply::StatFs { total_bytes: total, avail_bytes: avail, trash_bytes: 0, reserved_bytes: 0, inodes })
}

/// Settings found under a tree: (value, files, directories) sorted by value.
fn tally(
    view: &View<'_>,
    root: Inode,
    recursive: bool,
    get: impl Fn(&Attr) -> u32,
) -> Result<Vec<(u32, u64, u64)>, ClientError> {
    let mut counts: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
    walk(view, root, recursive, &mut |a| {
        let e = counts.entry(get(a)).or_default();
        if a.kind == FileKind::Dir {
            e.1 += 1;
        } else if a.kind == FileKind::File {
            e.0 += 1;
        }
    })?;
    Ok(counts.into_iter().map(|(v, (f, d))| (v, f, d)).collect())
}

/// Visits `root` and, if `recursive`, everything under it.
fn walk(view: &View<'_>, root: Inode, recursive: bool, visit: &mut dyn FnMut(&Attr)) -> Result<(), ClientError> {
    let top = view.getattr(root)?;
    visit(&top);
    if !recursive || top.kind != FileKind::Dir {
        return Ok(());
    }
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let mut after: Option<Name> = None;
        loop {
            let entries = view.readdir(dir, after.as_ref(), READDIR_MAX)?;
            let Some(last) = entries.last() else { break };
            after = Some(last.0.clone());
            for (_, ino, kind) in &entries {
                if let Ok(a) = view.getattr(*ino) {
                    visit(&a);
                }
                if *kind == FileKind::Dir {
                    stack.push(*ino);
                }
            }
        }
    }
    Ok(())
}

async fn request(
    m: &Arc<Master>,
    origin: Option<Origin>,
    session: SessionId,
    info: &SessionInfo,
    creds: Creds,
    req: ClientRequest,
) -> Res {
    use ClientRequest as R;
    let ino = |i: Inode| inward(info, i);
    match req {
        R::Lookup { parent, name } => {
            let view = m.read().await?;
            Ok(ClientReply::Attr(outward(info, view.lookup(ino(parent), &name, &creds)?)))
        }
        R::GetAttr { inode } => {
            let view = m.read().await?;
            Ok(ClientReply::Attr(outward(info, view.getattr(ino(inode))?)))
        }
        R::SetAttr { inode, set, handle } => {
            let inode = ino(inode);
            if let Some(size) = set.size {
                m.cut_last_chunk(inode, size).await?;
            }
            attr_reply(info, m.propose_from(origin, OpBody::SetAttr { inode, set, creds, handle }).await?)
        }
        R::Access { inode, mask } => {
            let view = m.read().await?;
            view.access(ino(inode), &creds, mask)?;
            Ok(ClientReply::Done)
        }
        R::Create { parent, name, kind, mode, umask, rdev, open } => {
            let body = OpBody::Create {
                parent: ino(parent),
                name,
                kind,
                mode,
                umask,
                rdev,
                target: Vec::new(),
                creds,
                open: open.then_some(session),
            };
            changed_reply(m, info, m.propose_from(origin, body).await?, &[ino(parent)])
        }
        R::Symlink { parent, name, target } => {
            let body = OpBody::Create {
                parent: ino(parent),
                name,
                kind: FileKind::Symlink,
                mode: 0o777,
                umask: 0,
                rdev: 0,
                target,
                creds,
                open: None,
            };
            changed_reply(m, info, m.propose_from(origin, body).await?, &[ino(parent)])
        }
        R::ReadLink { inode } => Ok(ClientReply::ReadLink(m.read().await?.readlink(ino(inode))?)),
        R::Link { inode, parent, name } => {
            let body = OpBody::Link { inode: ino(inode), parent: ino(parent), name, creds };
            changed_reply(m, info, m.propose_from(origin, body).await?, &[ino(parent)])
        }
        R::Unlink { parent, name } => {
            let r = m.propose_from(origin, OpBody::Remove { parent: ino(parent), name, dir: false, creds }).await?;
            m.reap_soon();
            changed_reply(m, info, r, &[ino(parent)])
        }
        R::Rmdir { parent, name } => {
            let r = m.propose_from(origin, OpBody::Remove { parent: ino(parent), name, dir: true, creds }).await?;
            changed_reply(m, info, r, &[ino(parent)])
        }
        R::Rename { parent, name, new_parent, new_name, flags } => {
            let (parent, new_parent) = (ino(parent), ino(new_parent));
            let body = OpBody::Rename { parent, name, new_parent, new_name, flags, creds };
            let r = m.propose_from(origin, body).await?;
            m.reap_soon();
            changed_reply(m, info, r, &[parent, new_parent])
        }
        R::OpenDir { inode } => {
            m.read().await?.opendir_check(ino(inode), &creds)?;
            Ok(ClientReply::Done)
        }
        R::ReadDir { inode, after, limit, plus } => {
            let view = m.read().await?;
            let entries = view.readdir(ino(inode), after.as_ref(), (limit as usize).clamp(1, READDIR_MAX))?;
            let out = entries
                .into_iter()
                .map(|(name, i, kind)| {
                    let attr = if plus { view.getattr(i).ok().map(|a| outward(info, a)) } else { None };
                    (name, i, kind, attr)
                })
                .collect();
            Ok(ClientReply::Entries(out))
        }
        R::Open { inode, flags, handle } => {
            let inode = ino(inode);
            let view = m.read().await?;
            let rec = view.open_inode(inode)?;
            let mode = match flags as i32 & libc::O_ACCMODE {
                libc::O_RDONLY => 4,
                libc::O_WRONLY => 2,
                _ => 6,
            };
            if rec.kind == FileKind::Dir && mode != 4 {
                return Err(Status::IsDir.into());
            }
            view.access(inode, &creds, mode)?;
            if flags as i32 & libc::O_TRUNC != 0 && rec.kind == FileKind::File && rec.size > 0 {
                let set = alces_proto::types::SetAttr { size: Some(0), ..Default::default() };
                m.propose(OpBody::SetAttr { inode, set, creds: creds.clone(), handle: true }).await?;
            }
            if rec.kind == FileKind::File {
                // Kept by the leader, under the mount's number (a retry is no second handle).
                m.handles.open(session, handle, inode, || Ok(m.local_view().inode(inode)?.is_some()))?;
            } else {
                // Recorded for retries: an open counted twice would keep a deleted file forever.
                m.propose_from(origin, OpBody::Open { session, inode }).await?;
            }
            // This leader applied everything it committed above.
            let attr = outward(info, m.local_view().getattr(inode)?);
            if rec.kind == FileKind::File && mode == 4 {
                // Where the first read goes next, saving the reader a round trip.
                let (chunk, locations) = m.slot_place(&view, inode, 0)?;
                return Ok(ClientReply::Opened { attr, chunk, locations });
            }
            Ok(ClientReply::Attr(attr))
        }
        R::Release { inode } => {
            let r = m.propose_from(origin, OpBody::Release { session, inode: ino(inode) }).await;
            m.reap_soon();
            r.map(|_| ClientReply::Done)
        }
        R::ReleaseMany { inodes } => {
            if inodes.len() > MAX_RELEASES {
                return Err(Status::Invalid.into());
            }
            let inodes = inodes.into_iter().map(ino).collect();
            let r = m.propose_from(origin, OpBody::ReleaseMany { session, inodes }).await;
            m.reap_soon();
            r.map(|_| ClientReply::Done)
        }
        R::ReleaseHandles { handles } => {
            if handles.len() > MAX_RELEASES {
                return Err(Status::Invalid.into());
            }
            m.handles.release(session, &handles);
            m.reap_soon();
            Ok(ClientReply::Done)
        }
        R::GetXattr { inode, name } => Ok(ClientReply::Xattr(m.read().await?.getxattr(ino(inode), &name)?)),
        R::ListXattr { inode } => Ok(ClientReply::XattrNames(m.read().await?.listxattr(ino(inode))?)),
        R::SetXattr { inode, name, value, flags } => attr_reply(
            info,
            m.propose_from(origin, OpBody::SetXattr { inode: ino(inode), name, value, flags, creds }).await?,
        ),
        R::RemoveXattr { inode, name } => {
            attr_reply(info, m.propose_from(origin, OpBody::RemoveXattr { inode: ino(inode), name, creds }).await?)
        }
        R::StatFs => statfs(m).await,
        R::ReadChunk { inode, index } => m.read_chunk(ino(inode), index).await,
        R::WriteChunk { inode, index, after_failure } => m.write_lease(session, ino(inode), index, after_failure).await,
        R::WriteEnd { inode, index, chunk, size, added } => {
            let reply = m.write_end(ino(inode), index, chunk, size, added).await?;
            match reply {
                ClientReply::Attr(a) => Ok(ClientReply::Attr(outward(info, a))),
                other => Ok(other),
            }
        }
        R::ReportBadReplica { chunk, version, server } => {
            tracing::warn!(chunk = %chunk.hex(), version = %version, server = %server, "client reports a bad replica");
            m.topology.remove_replica(chunk, server);
            Ok(ClientReply::Done)
        }
        R::GetGoal { inode, recursive } => {
            let view = m.read().await?;
            Ok(ClientReply::Goals(tally(&view, ino(inode), recursive, |a| a.goal.0 as u32)?))
        }
        R::SetGoal { inode, goal, recursive } => {
            if goal.0 < info.min_goal || goal.0 > info.max_goal {
                return Err(Status::Perm.into());
            }
            attr_reply(
                info,
                m.propose_from(origin, OpBody::SetGoal { inode: ino(inode), goal, recursive, creds }).await?,
            )
        }
        R::GetTrashTime { inode, recursive } => {
            let view = m.read().await?;
            Ok(ClientReply::TrashTimes(tally(&view, ino(inode), recursive, |a| a.trash_time.0)?))
        }
        R::SetTrashTime { inode, trash_time, recursive } => {
            if trash_time.0 < info.min_trash || trash_time.0 > info.max_trash {
                return Err(Status::Perm.into());
            }
            let body = OpBody::SetTrashTime { inode: ino(inode), trash_time, recursive, creds };
            attr_reply(info, m.propose_from(origin, body).await?)
        }
        R::MakeSnapshot { src, parent, name } => attr_reply(
            info,
            m.propose_from(origin, OpBody::Snapshot { src: ino(src), parent: ino(parent), name, creds }).await?,
        ),
        R::FileInfo { inode } => file_info(m, ino(inode)).await,
        R::DirInfo { inode } => dir_info(m, ino(inode)).await,
        R::FileRepair { inode } => file_repair(m, ino(inode)).await,
        R::AppendChunks { dst, src } => attr_reply(
            info,
            m.propose_from(origin, OpBody::AppendChunks { dst: ino(dst), src: ino(src), creds }).await?,
        ),
        R::ListTrash { .. } | R::ListReserved { .. } | R::Undelete { .. } | R::Purge { .. } => {
            Err(Status::NotSupported.into())
        }
        R::Challenge | R::Register(_) | R::CloseSession | R::MasterInfo => Err(Status::Invalid.into()),
    }
}

/// `alces filerepair`: a chunk with no copy of its current version takes the newest version
/// some chunkserver still has; a chunk with no copy at all is dropped (reads as zeros).
async fn file_repair(m: &Arc<Master>, inode: Inode) -> Res {
    let chunks = {
        let view = m.read().await?;
        if view.open_inode(inode)?.kind != FileKind::File {
            return Err(Status::Invalid.into());
        }
        let mut v = Vec::new();
        for (index, chunk) in view.file_chunks(inode)? {
            if let Some(rec) = view.chunk(chunk)? {
                v.push((index, chunk, rec.version));
            }
        }
        v
    };
    // What can be read now counts: copies on servers that are not connected do not (as in
    // MooseFS, whose master forgets a chunkserver's copies when it disconnects).
    let (mut ok, mut erased, mut repaired) = (0, 0, 0);
    for (index, chunk, version) in chunks {
        if version.0 == 0 || !m.topology.connected_copies(chunk, version).is_empty() {
            ok += 1;
            continue;
        }
        match m.topology.max_connected_version(chunk) {
            Some(best) => {
                tracing::warn!(chunk = %chunk.hex(), from = %version, to = %best, "filerepair: using the newest surviving copy");
                m.propose(OpBody::SetChunkVersion { chunk, version: best }).await?;
                repaired += 1;
            }
            None => {
                tracing::warn!(chunk = %chunk.hex(), "filerepair: no copy left, the chunk reads as zeros now");
                m.propose(OpBody::DropChunk { inode, index, chunk }).await?;
                erased += 1;
            }
        }
    }
    Ok(ClientReply::Repaired { ok, erased, repaired })
}

async fn file_info(m: &Arc<Master>, inode: Inode) -> Res {
    let view = m.read().await?;
    let rec = view.open_inode(inode)?;
    if rec.kind != FileKind::File {
        return Err(Status::Invalid.into());
    }
    let mut out = Vec::new();
    // A copy on a lost server is not valid: it does not count toward the goal either.
    let counting = m.topology.counting(m.config.chunkserver_timeout);
    for (index, chunk) in view.file_chunks(inode)? {
        let Some(c) = view.chunk(chunk)? else { continue };
        let copies = m
            .topology
            .replicas(chunk)
            .into_iter()
            .filter_map(|r| {
                Some((m.topology.location(r.server)?, r.version == c.version && counting.contains(&r.server)))
            })
            .collect();
        out.push(alces_proto::link::client_master::ChunkReport {
            index,
            chunk,
            version: c.version,
            goal: c.goal,
            copies,
        });
    }
    Ok(ClientReply::FileInfo(out))
}

async fn dir_info(m: &Arc<Master>, inode: Inode) -> Res {
    let view = m.read().await?;
    let mut s = DirSummary::default();
    let mut files = Vec::new();
    walk(&view, inode, true, &mut |a| {
        s.inodes += 1;
        match a.kind {
            FileKind::Dir => s.directories += 1,
            FileKind::File => {
                s.files += 1;
                s.length += a.size;
                files.push((a.inode, a.size));
            }
            _ => {}
        }
    })?;
    let mut seen = std::collections::HashSet::new();
    for (ino, size) in files {
        for (index, chunk) in view.file_chunks(ino)? {
            if !seen.insert(chunk) {
                continue;
            }
            s.chunks += 1;
            let start = index as u64 * CHUNK_SIZE;
            let bytes = size.saturating_sub(start).min(CHUNK_SIZE).div_ceil(65536) * 65536;
            s.size += bytes;
            let version = view.chunk(chunk)?.map(|c| c.version).unwrap_or_default();
            s.realsize += bytes * m.topology.valid_locations(chunk, version).len() as u64;
        }
    }
    Ok(ClientReply::DirInfo(s))
}

#[cfg(test)]
mod tests {
    use alces_proto::types::SetAttr;

    use super::*;
    use crate::namespace::tests_support::session_info;

    /// A `ro` export answers every change with EROFS, the meta mount's undelete and purge
    /// included, and lets reads, read-only opens and handle releases through.
    #[test]
    fn a_read_only_export_refuses_every_change_with_erofs() {
        let ro = SessionInfo { read_only: true, ..session_info() };
        let meta_ro = SessionInfo { meta: true, ..ro.clone() };
        let (ino, name) = (Inode(5), Name::new(b"n".to_vec()).unwrap());
        let open = |flags: i32| ClientRequest::Open { inode: ino, flags: flags as u32, handle: 1 };
        let changes = [
            ClientRequest::SetAttr { inode: ino, set: SetAttr::default(), handle: false },
            ClientRequest::Unlink { parent: ino, name: name.clone() },
            ClientRequest::Rmdir { parent: ino, name: name.clone() },
            ClientRequest::SetXattr { inode: ino, name: b"user.a".to_vec(), value: vec![], flags: 0 },
            ClientRequest::RemoveXattr { inode: ino, name: b"user.a".to_vec() },
            ClientRequest::WriteChunk { inode: ino, index: 0, after_failure: false },
            open(libc::O_WRONLY),
            open(libc::O_RDWR),
            open(libc::O_RDONLY | libc::O_TRUNC),
        ];
        for req in &changes {
            match read_only_check(&ro, req) {
                Err(ClientError::Status(s)) => assert_eq!((s, s.errno()), (Status::ReadOnly, libc::EROFS), "{req:?}"),
                other => panic!("{req:?} on a ro export: {other:?}"),
            }
            assert!(read_only_check(&session_info(), req).is_ok(), "{req:?} refused on a rw export");
        }
        for req in [ClientRequest::Undelete { inode: ino }, ClientRequest::Purge { inode: ino }] {
            assert!(matches!(read_only_check(&meta_ro, &req), Err(ClientError::Status(Status::ReadOnly))), "{req:?}");
        }
        let reads = [
            ClientRequest::Lookup { parent: ino, name },
            ClientRequest::GetAttr { inode: ino },
            ClientRequest::ReadChunk { inode: ino, index: 0 },
            ClientRequest::StatFs,
            ClientRequest::Release { inode: ino },
            open(libc::O_RDONLY),
        ];
        for req in &reads {
            assert!(read_only_check(&ro, req).is_ok(), "{req:?} refused on a ro export");
        }
    }

    /// `mapall` maps everybody, `maproot` only root (and `maproot=0` keeps root as it is).
    #[test]
    fn mapall_maps_everybody_and_maproot_only_root() {
        let user = Creds { uid: 1000, gid: 100, groups: vec![4, 27] };
        let root = Creds::root();
        let all = SessionInfo { map_all: Some((65534, 65534)), ..session_info() };
        let nobody = Creds { uid: 65534, gid: 65534, groups: vec![] };
        assert_eq!(map_creds(&all, user.clone()), nobody);
        assert_eq!(map_creds(&all, root.clone()), nobody);
        let squash = SessionInfo { map_root: Some((99, 98)), ..session_info() };
        assert_eq!(map_creds(&squash, root.clone()), Creds { uid: 99, gid: 98, groups: vec![] });
        assert_eq!(map_creds(&squash, user.clone()), user);
        let keep = SessionInfo { map_root: Some((0, 0)), ..session_info() };
        assert_eq!(map_creds(&keep, root.clone()), root);
        assert_eq!(map_creds(&session_info(), user.clone()), user);
    }
}
