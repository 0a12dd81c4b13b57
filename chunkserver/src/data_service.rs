//! The data service (port 9422): reads for clients, chained writes for clients and for the
//! previous chunkserver of a chain, and replica copies for other chunkservers.
//!
//! A chained write is pipelined: each `WriteData` is forwarded to the next server at once,
//! written locally by a writer task in order, and acknowledged upstream by an acker task only
//! when both the local write and the next server's acknowledgement of that piece are in.
//! So a piece is acknowledged only when every replica of the chain has it.
//!
//! The connection to the next server outlives the write: after a write that ended well it
//! waits in a small pool for the next one. Without it every write-out opened a connection
//! per hop (300 small files, 303 connections), which also leaves a socket in TIME_WAIT for a
//! minute each: at a few hundred small files a second, enough to run out of local ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use alces_proto::link::client_cs::{DataError, DataReply, DataRequest, WritePiece, MAX_READ};
use alces_proto::link::cs_cs::{forward_parts, write_piece, PeerDataReply, PeerDataRequest};
use alces_proto::types::{ChunkId, ChunkLocation, ChunkVersion, ChunkserverId};
use alces_proto::{codec, Connection, FrameError, Handshake, IdlePool, LinkKind, OutFrame, Secret};
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::store::Store;

/// Pieces of one write in flight through a server, at most.
const WINDOW: usize = 256;

/// A reply on whichever link the request came in.
#[derive(Debug)]
/// A reply in the message type of the connection's link (written without a tag of its own).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Out {
    Client(DataReply),
    Peer(PeerDataReply),
    /// A client's read: sent from the buffer it was read into (see [`Out::frame`]).
    #[serde(skip)]
    ClientData(Bytes),
}

impl Out {
    fn frame(self) -> OutFrame<Out> {
        match self {
            Out::ClientData(data) => OutFrame::Parts(vec![DataReply::data_header(data.len()).into(), data]),
            other => OutFrame::Message(other),
        }
    }
}

fn wrap(peer: bool, r: DataReply) -> Out {
    if peer {
        Out::Peer(PeerDataReply::Chain(r))
    } else {
        Out::Client(r)
    }
}

/// Settings the service needs, and its idle connections to the next servers of chains.
#[derive(Clone)]
pub struct DataConfig {
    pub id: ChunkserverId,
    pub secret: Secret,
    peers: Arc<IdlePool>,
}

/// Idle connections kept per next server: a chained write takes one instead of connecting
/// and shaking hands again, which is a good part of a small write-out's time.
const IDLE_PEER_CONNECTIONS: usize = 4;

impl DataConfig {
    pub fn new(id: ChunkserverId, secret: Secret) -> DataConfig {
        DataConfig { id, secret, peers: Arc::new(IdlePool::new(IDLE_PEER_CONNECTIONS)) }
    }
}

pub async fn serve(store: Arc<Store>, cfg: DataConfig, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
        };
        let (store, cfg, stop) = (store.clone(), cfg.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(store, cfg, stream, peer) => {}
            }
        });
    }
}

async fn connection(store: Arc<Store>, cfg: DataConfig, stream: tokio::net::TcpStream, addr: SocketAddr) {
    let mut conn = match Connection::new(stream, alces_proto::DEFAULT_MAX_FRAME) {
        Ok(c) => c,
        Err(e) => return tracing::warn!(peer = %addr, error = %e, "connection unusable"),
    };
    let hs = Handshake::new(LinkKind::ClientChunkserver, format!("chunkserver {}", cfg.id), Some(cfg.secret.clone()));
    let peer = match hs.accept_any(&mut conn, &[LinkKind::ChunkserverChunkserver]).await {
        Ok((_, kind)) => kind == LinkKind::ChunkserverChunkserver,
        Err(e) => return tracing::warn!(peer = %addr, error = %e, "refused a data connection"),
    };
    let (mut reader, writer) = conn.split();
    let (tx, rx) = mpsc::unbounded_channel::<Out>();
    let write_task = tokio::spawn(writer.pump_frames(rx, Out::frame));
    let mut incoming = Incoming { reader: &mut reader, peer, addr };
    loop {
        let req = match incoming.next().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) if e.is_disconnect() => break,
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "closing data connection after a bad frame");
                break;
            }
        };
        let keep_going = match req {
            PeerDataRequest::Chain(DataRequest::Read { chunk, version, offset, len }) => {
                let reply = if len > MAX_READ {
                    wrap(peer, DataReply::Error(DataError::Range))
                } else {
                    match store.read(chunk, version, offset, len).await {
                        Ok(data) if !peer => Out::ClientData(data),
                        Ok(data) => wrap(peer, DataReply::Data(data.into())),
                        Err(e) => wrap(peer, DataReply::Error(e)),
                    }
                };
                tx.send(reply).is_ok()
            }
            PeerDataRequest::Chain(DataRequest::WriteStart { chunk, version, chain, create }) => {
                write_session(&store, &cfg, &mut incoming, &tx, (chunk, version, create), chain).await
            }
            PeerDataRequest::Chain(other) => {
                let _ =
                    tx.send(wrap(peer, DataReply::Error(DataError::Protocol(format!("unexpected {}", kind(&other))))));
                false
            }
            PeerDataRequest::Stat { chunk, version } if peer => {
                let reply = match store.length(chunk, version).await {
                    Ok(length) => PeerDataReply::Stat { length: length as u32 },
                    Err(e) => PeerDataReply::Error(e),
                };
                tx.send(Out::Peer(reply)).is_ok()
            }
            PeerDataRequest::Fetch { chunk, version, offset, len } if peer && len <= MAX_READ => {
                let reply = match store.read(chunk, version, offset, len).await {
                    Ok(data) => PeerDataReply::Data(data.into()),
                    Err(e) => PeerDataReply::Error(e),
                };
                tx.send(Out::Peer(reply)).is_ok()
            }
            PeerDataRequest::Stat { .. } | PeerDataRequest::Fetch { .. } => {
                let _ = tx.send(wrap(peer, DataReply::Error(DataError::Protocol("not allowed on this link".into()))));
                false
            }
        };
        if !keep_going {
            break;
        }
    }
    drop(tx);
    let _ = write_task.await;
}

fn kind(r: &DataRequest) -> &'static str {
    match r {
        DataRequest::Read { .. } => "Read",
        DataRequest::WriteStart { .. } => "WriteStart",
        DataRequest::WriteData { .. } => "WriteData",
        DataRequest::WriteFinish { .. } => "WriteFinish",
    }
}

/// Requests of a connection, as peer requests whatever the link.
struct Incoming<'a> {
    reader: &'a mut alces_proto::frame::FrameReader,
    peer: bool,
    addr: SocketAddr,
}

impl Incoming<'_> {
    async fn next(&mut self) -> Result<Option<PeerDataRequest>, FrameError> {
        match self.reader.recv_frame().await? {
            None => Ok(None),
            Some(frame) => self.decode(&frame).map(Some),
        }
    }

    fn decode(&self, frame: &[u8]) -> Result<PeerDataRequest, FrameError> {
        Ok(if self.peer { codec::decode(frame)? } else { PeerDataRequest::Chain(codec::decode(frame)?) })
    }

    /// The next request of a write session: a piece, its data left in the frame it came in
    /// (which is also what goes on to the next server), or anything else decoded.
    async fn next_in_write(&mut self) -> Result<Option<InWrite>, FrameError> {
        let Some(frame) = self.reader.recv_frame().await? else { return Ok(None) };
        match write_piece(&frame, self.peer) {
            Some(piece) => Ok(Some(InWrite::Piece(piece, frame))),
            None => self.decode(&frame).map(|r| Some(InWrite::Other(r))),
        }
    }
}

enum InWrite {
    Piece(WritePiece, Bytes),
    Other(PeerDataRequest),
}

/// One step of a write: a piece, or the final sync.
enum Job {
    Write { id: u64, offset: u32, data: Bytes },
    Finish { id: u64 },
}

/// The next server of a chain: its connection's write half and a channel of its replies.
struct Downstream {
    writer: alces_proto::frame::FrameWriter,
    server: ChunkserverId,
    addr: String,
    /// The task passing the next server's replies on; it hands the reader back after the
    /// reply that ends a write, so that the connection can serve the next one.
    replies: tokio::task::JoinHandle<Option<alces_proto::frame::FrameReader>>,
}

impl Downstream {
    /// After a write that ended well: the connection goes back to the pool.
    async fn give_back(self, cfg: &DataConfig) {
        let Ok(Some(reader)) = self.replies.await else { return };
        if let Some(conn) = Connection::rejoin(reader, self.writer) {
            cfg.peers.give_back(&self.addr, conn);
        }
    }

    /// Sends one request to the next server. A failure is only logged: the acker reports it
    /// when that server's replies stop.
    async fn forward<T: serde::Serialize>(&mut self, msg: &T) {
        let r = self.writer.send(msg).await;
        self.forwarded(r);
    }

    /// Sends an encoded request (in parts) to the next server, as [`Downstream::forward`].
    async fn forward_frame(&mut self, parts: Vec<Bytes>) {
        let r = self.writer.send_parts(parts).await;
        self.forwarded(r);
    }

    fn forwarded(&self, r: Result<(), FrameError>) {
        if let Err(e) = r {
            tracing::warn!(next = %self.server, error = %e, "forwarding along the chain failed");
        }
    }
}

/// Connects to another chunkserver's data port as a peer (chain forwarding, replication).
pub async fn dial_peer(me: ChunkserverId, secret: &Secret, peer: &ChunkLocation) -> Result<Connection, DataError> {
    let broken = |reason: String| DataError::Chain { server: peer.id, reason };
    // Peers are on the same network: a connection not made within a second is cut off, and
    // the writer is better told at once (it gets a new chain) than after the TCP retries.
    let mut conn = Connection::connect(&peer.addr, alces_proto::DEFAULT_MAX_FRAME, Duration::from_secs(1))
        .await
        .map_err(|e| broken(e.to_string()))?;
    let mut hs = Handshake::new(LinkKind::ChunkserverChunkserver, format!("chunkserver {me}"), Some(secret.clone()));
    hs.timeout = Duration::from_secs(2);
    hs.dial(&mut conn).await.map_err(|e| broken(e.to_string()))?;
    Ok(conn)
}

async fn open_downstream(
    cfg: &DataConfig,
    (chunk, version, create): (ChunkId, ChunkVersion, bool),
    chain: &[ChunkLocation],
) -> Result<(Downstream, mpsc::UnboundedReceiver<Result<DataReply, DataError>>), DataError> {
    let next = &chain[0];
    let broken = |reason: String| DataError::Chain { server: next.id, reason };
    let start = PeerDataRequest::Chain(DataRequest::WriteStart { chunk, version, chain: chain[1..].to_vec(), create });
    // An idle connection first; one the next server closed meanwhile (it restarted) fails at
    // once, and a new one is made.
    let mut answer = None;
    if let Some(mut conn) = cfg.peers.take(&next.addr) {
        if let Ok(reply) = conn.call::<_, PeerDataReply>(&start, Duration::from_secs(5)).await {
            answer = Some((conn, Ok(reply)));
        }
    }
    let (conn, answer) = match answer {
        Some(a) => a,
        None => {
            let mut conn = dial_peer(cfg.id, &cfg.secret, next).await?;
            let reply = conn.call::<_, PeerDataReply>(&start, Duration::from_secs(5)).await;
            (conn, reply)
        }
    };
    match answer {
        Ok(PeerDataReply::Chain(DataReply::WriteReady)) => {}
        Ok(PeerDataReply::Chain(DataReply::WriteFailed { error, .. }))
        | Ok(PeerDataReply::Chain(DataReply::Error(error))) => {
            return Err(match error {
                DataError::Chain { .. } | DataError::NoSpace => error,
                other => broken(other.to_string()),
            })
        }
        Ok(other) => return Err(broken(format!("unexpected answer {other:?}"))),
        Err(e) => return Err(broken(e.to_string())),
    }
    let (mut reader, writer) = conn.split();
    let (tx, rx) = mpsc::unbounded_channel();
    let server = next.id;
    let replies = tokio::spawn(async move {
        loop {
            let msg = match reader.recv::<PeerDataReply>().await {
                Ok(Some(PeerDataReply::Chain(r))) => Ok(r),
                Ok(Some(other)) => Err(DataError::Chain { server, reason: format!("unexpected {other:?}") }),
                Ok(None) => Err(DataError::Chain { server, reason: "connection closed".into() }),
                Err(e) => Err(DataError::Chain { server, reason: e.to_string() }),
            };
            let last = matches!(msg, Ok(DataReply::WriteFinished { .. }));
            let stop = msg.is_err();
            if tx.send(msg).is_err() || stop {
                return None;
            }
            if last {
                return Some(reader);
            }
        }
    });
    Ok((Downstream { writer, server, addr: next.addr.clone(), replies }, rx))
}

/// Serves one chained write after `WriteStart` (of `chunk` at `version`, a new chunk if
/// `create`); returns whether the connection may go on.
async fn write_session(
    store: &Arc<Store>,
    cfg: &DataConfig,
    incoming: &mut Incoming<'_>,
    tx: &mpsc::UnboundedSender<Out>,
    (chunk, version, create): (ChunkId, ChunkVersion, bool),
    chain: Vec<ChunkLocation>,
) -> bool {
    let peer = incoming.peer;
    let fail = |id: u64, error: DataError| {
        let _ = tx.send(wrap(peer, DataReply::WriteFailed { id, error }));
        false
    };
    let here = async {
        match create {
            true => store.create_for_write(chunk, version).await,
            false => match store.holds(chunk, version).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(DataError::NoChunk),
                Err(e) => Err(e),
            },
        }
    };
    let next = async {
        match chain.is_empty() {
            true => Ok(None),
            false => open_downstream(cfg, (chunk, version, create), &chain).await.map(Some),
        }
    };
    // A new chunk's replica is made here while the next server makes its own (a file's
    // creation can wait for the disk's journal); an existing chunk's version is checked
    // before the next server is asked.
    let (here, next) = match create {
        true => tokio::join!(here, next),
        false => match here.await {
            Ok(()) => (Ok(()), next.await),
            Err(e) => (Err(e), Ok(None)),
        },
    };
    if let Err(e) = here {
        return fail(0, e);
    }
    let (mut downstream, mut remote_rx) = match next {
        Ok(Some((d, rx))) => (Some(d), Some(rx)),
        Ok(None) => (None, None),
        Err(e) => return fail(0, e),
    };
    if tx.send(wrap(peer, DataReply::WriteReady)).is_err() {
        return false;
    }
    // Local writes, in order, on their own task.
    let (job_tx, mut job_rx) = mpsc::channel::<Job>(WINDOW);
    let (local_tx, mut local_rx) = mpsc::unbounded_channel::<(u64, bool, Result<(), DataError>)>();
    let st = store.clone();
    tokio::spawn(async move {
        // Whatever has queued up while the last batch was on the disk goes down in one
        // blocking call: one hand-over to a blocking thread per batch, not per block.
        let mut jobs = Vec::new();
        while job_rx.recv_many(&mut jobs, WINDOW).await > 0 {
            let mut pieces = Vec::with_capacity(jobs.len());
            let mut ids = Vec::with_capacity(jobs.len());
            let mut finish = None;
            for job in jobs.drain(..) {
                match job {
                    Job::Write { id, offset, data } => {
                        ids.push(id);
                        pieces.push((offset, data));
                    }
                    Job::Finish { id } => finish = Some(id),
                }
            }
            let (done, r) = st.write_batch(chunk, version, pieces, finish.is_some()).await;
            let failed = r.is_err();
            let results: Vec<(u64, bool, Result<(), DataError>)> = match r {
                Ok(()) => {
                    ids.iter().map(|&id| (id, false, Ok(()))).chain(finish.map(|id| (id, true, Ok(())))).collect()
                }
                Err(e) => {
                    // The error belongs to piece `done`, or to the sync; without a sync, to the
                    // last piece at the latest.
                    let ok = if finish.is_some() { done.min(ids.len()) } else { done.min(ids.len().saturating_sub(1)) };
                    let failed = match ids.get(ok) {
                        Some(&id) => (id, false, Err(e)),
                        None => (finish.unwrap_or_default(), true, Err(e)),
                    };
                    ids[..ok].iter().map(|&id| (id, false, Ok(()))).chain([failed]).collect()
                }
            };
            for res in results {
                if local_tx.send(res).is_err() {
                    return;
                }
            }
            if failed {
                return;
            }
        }
    });
    // The acker pairs local results with the next server's, in order. It dies with this session:
    // were it left running when the session is dropped, it would keep the upstream socket open
    // and blame the next server for a chain that this server broke.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<bool>();
    let upstream = tx.clone();
    let acker = AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            let Some((id, finish, local)) = local_rx.recv().await else { return };
            let remote = match remote_rx.as_mut() {
                None => Ok(None),
                Some(rx) => match rx.recv().await {
                    Some(Ok(r)) => Ok(Some(r)),
                    Some(Err(e)) => Err(e),
                    None => Err(DataError::Protocol("downstream ended".into())),
                },
            };
            let outcome = match (local, remote) {
                (Err(e), _) | (Ok(()), Err(e)) => Err(e),
                (Ok(()), Ok(None)) => Ok(()),
                (Ok(()), Ok(Some(DataReply::WriteDone { id: rid }))) if rid == id && !finish => Ok(()),
                (Ok(()), Ok(Some(DataReply::WriteFinished { id: rid }))) if rid == id && finish => Ok(()),
                (Ok(()), Ok(Some(DataReply::WriteFailed { error, .. }))) => Err(error),
                (Ok(()), Ok(Some(other))) => {
                    Err(DataError::Protocol(format!("downstream answered {other:?} for piece {id}")))
                }
            };
            let reply = match outcome {
                Ok(()) if finish => DataReply::WriteFinished { id },
                Ok(()) => DataReply::WriteDone { id },
                Err(error) => DataReply::WriteFailed { id, error },
            };
            let failed = matches!(reply, DataReply::WriteFailed { .. });
            let _ = upstream.send(wrap(peer, reply));
            if failed || finish {
                let _ = done_tx.send(!failed);
                return;
            }
        }
    }));
    let ok = loop {
        let req = tokio::select! {
            r = incoming.next_in_write() => r,
            finished = done_rx.recv() => break finished.unwrap_or(false),
        };
        let id = match req {
            Ok(Some(InWrite::Piece(piece, frame))) => {
                if let Some(d) = downstream.as_mut() {
                    d.forward_frame(forward_parts(frame, incoming.peer)).await;
                }
                if job_tx.send(Job::Write { id: piece.id, offset: piece.offset, data: piece.data }).await.is_err() {
                    break false;
                }
                continue;
            }
            Ok(Some(InWrite::Other(PeerDataRequest::Chain(DataRequest::WriteFinish { id })))) => id,
            Ok(Some(InWrite::Other(PeerDataRequest::Chain(other)))) => {
                tracing::warn!(peer = %incoming.addr, request = kind(&other), "unexpected request inside a write");
                break false;
            }
            Ok(Some(InWrite::Other(_))) | Ok(None) | Err(_) => break false,
        };
        if let Some(d) = downstream.as_mut() {
            d.forward(&PeerDataRequest::Chain(DataRequest::WriteFinish { id })).await;
        }
        if job_tx.send(Job::Finish { id }).await.is_err() {
            break false;
        }
        // Nothing more belongs to this write: wait for its outcome before reading on.
        break done_rx.recv().await.unwrap_or(false);
    };
    drop(job_tx);
    // On failure the acker is aborted as it is dropped here.
    if ok {
        let _ = acker.await;
        if let Some(d) = downstream {
            d.give_back(cfg).await;
        }
    }
    ok
}
