//! The link to every master: registration with the cluster secret, the full chunk list then
//! every change, heartbeats, and the leader's orders.
//!
//! One task per master keeps its connection up (reconnecting with backoff): the configured
//! ones, and those the masters name as members of the group (a master added later). A
//! learned master the leader no longer names is let go. Orders
//! are obeyed only from a master that says it leads, with a term at least as high as any
//! term seen from any master, so a deposed leader cannot give orders after a new one did.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alces_proto::link::client_cs::DataError;
use alces_proto::link::cs_cs::{PeerDataReply, PeerDataRequest};
use alces_proto::link::cs_master::{ChunkOrder, ChunkState, CsRegister, CsToMaster, MasterToCs, REPORT_BATCH};
use alces_proto::types::{ChunkId, ChunkLocation, ChunkVersion, ChunkserverId};
use alces_proto::{Connection, Handshake, LinkKind, Secret};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreEvent};

const HEARTBEAT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct LinkConfig {
    pub id: ChunkserverId,
    /// Where clients reach this chunkserver's data service.
    pub data_addr: String,
    pub label: String,
    pub secret: Secret,
}

/// The highest Raft term any master announced.
#[derive(Default)]
pub struct Terms {
    highest: AtomicU64,
}

impl Terms {
    fn see(&self, term: u64) -> u64 {
        self.highest.fetch_max(term, Ordering::AcqRel).max(term)
    }
}

/// The links to every master.
pub struct Links {
    store: Arc<Store>,
    cfg: LinkConfig,
    terms: Terms,
    stop: CancellationToken,
    configured: Vec<String>,
    /// Running links by address, each with its own stop token.
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl Links {
    /// Starts a link to every configured master.
    pub fn start(store: Arc<Store>, cfg: LinkConfig, masters: Vec<String>, stop: CancellationToken) -> Arc<Links> {
        let links = Arc::new(Links {
            store,
            cfg,
            terms: Terms::default(),
            stop,
            configured: masters.clone(),
            running: Mutex::default(),
        });
        for m in masters {
            links.spawn(m);
        }
        links
    }

    fn spawn(self: &Arc<Self>, addr: String) {
        let token = self.stop.child_token();
        self.running.lock().expect("links lock").insert(addr.clone(), token.clone());
        tokio::spawn(run(self.clone(), addr, token));
    }

    /// The members a master named: link to new ones; when the leader named them, let go of
    /// learned ones it no longer names.
    async fn learn(self: &Arc<Self>, members: &[String], from_leader: bool) {
        let known: Vec<String> = self.running.lock().expect("links lock").keys().cloned().collect();
        let mut known_socks: HashSet<SocketAddr> = HashSet::new();
        for k in &known {
            known_socks.extend(resolve(k).await);
        }
        for m in members {
            if known.contains(m) {
                continue;
            }
            let socks = resolve(m).await;
            // The same master under another name (a host name in the config, an address in
            // the membership) gets no second link.
            if socks.is_empty() || socks.iter().any(|s| known_socks.contains(s)) {
                continue;
            }
            tracing::info!(master = %m, "linking to a master named by the group");
            known_socks.extend(socks);
            self.spawn(m.clone());
        }
        if from_leader {
            let mut running = self.running.lock().expect("links lock");
            let gone: Vec<String> =
                running.keys().filter(|a| !members.contains(a) && !self.configured.contains(a)).cloned().collect();
            for a in gone {
                tracing::info!(master = %a, "no longer a member; link closed");
                if let Some(t) = running.remove(&a) {
                    t.cancel();
                }
            }
        }
    }
}

async fn resolve(addr: &str) -> Vec<SocketAddr> {
    tokio::net::lookup_host(addr).await.map(|a| a.collect()).unwrap_or_default()
}

/// Keeps a connection to the master at `addr` until `stop`.
async fn run(links: Arc<Links>, addr: String, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        // Subscribe before listing, so no change between the list and the stream is missed.
        let events = links.store.subscribe();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = session(&links, &addr, events) => r,
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => tracing::warn!(master = %addr, error = %e, "master link down"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(links: &Arc<Links>, addr: &str, mut events: broadcast::Receiver<StoreEvent>) -> anyhow::Result<()> {
    let (store, cfg, terms) = (&links.store, &links.cfg, &links.terms);
    let mut conn = Connection::connect(addr, alces_proto::DEFAULT_MAX_FRAME, Duration::from_secs(3)).await?;
    Handshake::new(LinkKind::ChunkserverMaster, format!("chunkserver {}", cfg.id), Some(cfg.secret.clone()))
        .dial(&mut conn)
        .await?;
    let reg =
        CsRegister { id: cfg.id, data_addr: cfg.data_addr.clone(), label: cfg.label.clone(), load: store.load().await };
    conn.send(&CsToMaster::Register(reg)).await?;
    let (mut reader, mut writer) = conn.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<CsToMaster>();
    let write_task = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if writer.send(&msg).await.is_err() {
                return;
            }
        }
    });
    send_full_report(store, &out_tx).await;
    tracing::info!(master = %addr, chunks = store.chunk_count(), "registered with master");
    let mut leader = false;
    let mut my_term = 0u64;
    let mut beat = tokio::time::interval(HEARTBEAT);
    let res = loop {
        tokio::select! {
            msg = reader.recv::<MasterToCs>() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e.into()),
                };
                match msg {
                    MasterToCs::Welcome { leader: l, term, .. } | MasterToCs::Leadership { leader: l, term } => {
                        leader = l;
                        my_term = term;
                        terms.see(term);
                    }
                    MasterToCs::Masters { cs_addrs } => links.learn(&cs_addrs, leader).await,
                    MasterToCs::Order { order, term, op } => {
                        let highest = terms.see(term);
                        if !leader || term < highest || term < my_term {
                            let _ = out_tx.send(CsToMaster::OrderDone { order, result: Err(format!("not from the current leader (term {term}, highest seen {highest})")) });
                            continue;
                        }
                        let (store, out, cfg) = (store.clone(), out_tx.clone(), cfg.clone());
                        tokio::spawn(async move {
                            let result = execute(&store, &cfg, op).await.map_err(|e| e.to_string());
                            let _ = out.send(CsToMaster::OrderDone { order, result });
                        });
                    }
                }
            }
            ev = events.recv() => match ev {
                Ok(StoreEvent::Added(st)) => { let _ = out_tx.send(CsToMaster::ChunksChanged { added: vec![st], removed: vec![] }); }
                Ok(StoreEvent::Removed(id, v)) => { let _ = out_tx.send(CsToMaster::ChunksChanged { added: vec![], removed: vec![(id, v)] }); }
                Ok(StoreEvent::Damaged(id, v)) => { let _ = out_tx.send(CsToMaster::Damaged { chunk: id, version: v }); }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(master = %addr, missed = n, "change stream lagged; sending the full list again");
                    send_full_report(store, &out_tx).await;
                }
                Err(broadcast::error::RecvError::Closed) => break Ok(()),
            },
            _ = beat.tick() => {
                let _ = out_tx.send(CsToMaster::Heartbeat(store.load().await));
            }
        }
        if write_task.is_finished() {
            break Err(anyhow::anyhow!("connection to master closed"));
        }
    };
    write_task.abort();
    res
}

async fn send_full_report(store: &Store, out: &mpsc::UnboundedSender<CsToMaster>) {
    let all: Vec<ChunkState> = store.list().await;
    if all.is_empty() {
        let _ = out.send(CsToMaster::ChunkReport { chunks: vec![], last: true });
        return;
    }
    let n = all.chunks(REPORT_BATCH).count();
    for (i, part) in all.chunks(REPORT_BATCH).enumerate() {
        let _ = out.send(CsToMaster::ChunkReport { chunks: part.to_vec(), last: i + 1 == n });
    }
}

async fn execute(store: &Store, cfg: &LinkConfig, op: ChunkOrder) -> Result<(), DataError> {
    tracing::debug!(?op, "order");
    match op {
        ChunkOrder::Create { chunk, version } => store.create(chunk, version).await,
        ChunkOrder::SetVersion { chunk, from, to } => store.set_version(chunk, from, to, None).await,
        ChunkOrder::Truncate { chunk, from, to, length } => store.set_version(chunk, from, to, Some(length)).await,
        ChunkOrder::Duplicate { from, to, length } => store.duplicate(from, to, length).await,
        ChunkOrder::Delete { chunk, version } => store.delete(chunk, version).await,
        ChunkOrder::Replicate { chunk, version, sources } => replicate(store, cfg, chunk, version, &sources).await,
    }
}

/// Copies a replica from the first source that has it.
async fn replicate(
    store: &Store,
    cfg: &LinkConfig,
    chunk: ChunkId,
    version: ChunkVersion,
    sources: &[ChunkLocation],
) -> Result<(), DataError> {
    // Even when this server has the version already: the master ordered the copy because it
    // does not count this one (a client reported it bad), so it is replaced from a good
    // source and announced again.
    let mut last = DataError::NoChunk;
    for src in sources {
        match copy_from(store, cfg, chunk, version, src).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(chunk = %chunk.hex(), source = %src.addr, error = %e, "replication source failed");
                last = e;
            }
        }
    }
    Err(last)
}

async fn copy_from(
    store: &Store,
    cfg: &LinkConfig,
    chunk: ChunkId,
    version: ChunkVersion,
    src: &ChunkLocation,
) -> Result<(), DataError> {
    let broken = |reason: String| DataError::Chain { server: src.id, reason };
    let mut conn = crate::data_service::dial_peer(cfg.id, &cfg.secret, src).await?;
    let timeout = Duration::from_secs(30);
    let length =
        match conn.call(&PeerDataRequest::Stat { chunk, version }, timeout).await.map_err(|e| broken(e.to_string()))? {
            PeerDataReply::Stat { length } => length as u64,
            PeerDataReply::Error(e) => return Err(e),
            other => return Err(broken(format!("unexpected {other:?}"))),
        };
    let conn = tokio::sync::Mutex::new(conn);
    store
        .receive(chunk, version, length, |offset, len| {
            let conn = &conn;
            async move {
                let mut c = conn.lock().await;
                match c.call(&PeerDataRequest::Fetch { chunk, version, offset, len }, timeout).await {
                    Ok(PeerDataReply::Data(d)) => Ok(d),
                    Ok(PeerDataReply::Error(e)) => Err(e),
                    Ok(other) => Err(DataError::Protocol(format!("unexpected {other:?}"))),
                    Err(e) => Err(DataError::Io(e.to_string())),
                }
            }
        })
        .await
}
