//! A running master: the Raft node with the namespace, the client and chunkserver services,
//! and the leader's background duties (creating the root, expiring the trash and sessions).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use alces_proto::link::client_master::ClientError;
use alces_proto::types::{SessionId, Timestamp};
use alces_proto::Status;
use alces_raft_store::{NodeConfig, RaftNode};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::chunks::Leases;
use crate::config::MasterConfig;
use crate::exports::Exports;
use crate::namespace::ops::{MetaOp, MetaReply, OpBody, Origin};
use crate::namespace::read::View;
use crate::namespace::Namespace;
use crate::topology::Topology;

/// Trash entries dropped per expiry round, at most.
const EXPIRE_BATCH: u32 = 1000;

pub struct Master {
    pub config: MasterConfig,
    pub node: Arc<RaftNode<Namespace>>,
    pub topology: Arc<Topology>,
    pub leases: Leases,
    /// Leader only: handles open on regular files (see `handles.rs`).
    pub handles: crate::handles::Handles,
    /// Wakes the leader's freeing of deleted files (a file may have become free).
    reap_wake: tokio::sync::Notify,
    pub replication: crate::replication::ReplicationStats,
    exports: RwLock<Arc<Exports>>,
    /// Leader only: when each session was last active, for expiry.
    sessions_seen: Mutex<HashMap<SessionId, Instant>>,
    pub stop: CancellationToken,
    pub(crate) metrics: crate::admin::Metrics,
    pub(crate) copies_cache: Mutex<Option<crate::admin::CopiesCache>>,
    /// Samples for the monitor's charts (see `admin::sample`).
    pub(crate) history: Mutex<std::collections::VecDeque<alces_ops::api::Sample>>,
    /// The addresses the listeners actually bound (useful with port 0 in tests).
    pub client_addr: SocketAddr,
    pub cs_addr: SocketAddr,
    /// When this master started (its chunkservers connect over the first seconds).
    pub started: Instant,
}

/// Maps a store error to what a client sees.
pub fn client_error(e: alces_raft_store::Error) -> ClientError {
    match e {
        alces_raft_store::Error::NotLeader { leader_id, leader } => {
            ClientError::NotLeader { leader_id, leader_addr: leader.map(|m| m.client_addr) }
        }
        alces_raft_store::Error::Unavailable(s) => ClientError::Unavailable(s),
        alces_raft_store::Error::Stopped(s) => ClientError::Unavailable(s),
        other => {
            tracing::error!(error = %other, "store failure");
            ClientError::Status(Status::Io)
        }
    }
}

impl Master {
    /// Opens the store, joins or creates the group, and starts the services.
    pub async fn start(config: MasterConfig) -> anyhow::Result<Arc<Master>> {
        let exports = Exports::load(&config.exports_file).context("loading the exports file")?;
        let mut nc = NodeConfig::new(
            config.id,
            config.data_path.clone(),
            config.raft_listen,
            config.member.clone(),
            config.secret.clone(),
        );
        nc.snapshot_every = config.snapshot_every;
        nc.keep_logs = config.keep_logs;
        nc.unsafe_no_wal = config.unsafe_no_wal;
        nc.heartbeat_ms = config.heartbeat_ms;
        nc.election_timeout_min_ms = config.election_timeout_ms;
        nc.election_timeout_max_ms = config.election_timeout_ms * 2;
        let node = RaftNode::start(nc, Arc::new(Namespace)).await.context("starting the Raft node")?;
        if let Some(peers) = &config.peers {
            node.bootstrap(peers.clone()).await.context("creating the cluster from PEERS")?;
        }
        let client_listener = TcpListener::bind(config.client_listen)
            .await
            .with_context(|| format!("binding {}", config.client_listen))?;
        let cs_listener =
            TcpListener::bind(config.cs_listen).await.with_context(|| format!("binding {}", config.cs_listen))?;
        let master = Arc::new(Master {
            client_addr: client_listener.local_addr()?,
            cs_addr: cs_listener.local_addr()?,
            config,
            node,
            topology: Arc::default(),
            leases: Leases::default(),
            handles: Default::default(),
            reap_wake: tokio::sync::Notify::new(),
            replication: Default::default(),
            exports: RwLock::new(Arc::new(exports)),
            sessions_seen: Mutex::default(),
            stop: CancellationToken::new(),
            metrics: Default::default(),
            history: Default::default(),
            copies_cache: Mutex::new(None),
            started: Instant::now(),
        });
        tokio::spawn(crate::service::client::serve(master.clone(), client_listener));
        tokio::spawn(crate::service::cs::serve(master.clone(), cs_listener));
        tokio::spawn(crate::service::cs::announce_leadership(master.clone()));
        tokio::spawn(duties(master.clone()));
        tokio::spawn(reaper(master.clone()));
        tokio::spawn(crate::admin::sample(master.clone()));
        crate::admin::serve(master.clone()).await.with_context(|| format!("binding {}", master.config.admin_listen))?;
        tracing::info!(id = master.config.id, client = %master.client_addr, cs = %master.cs_addr, "master started");
        Ok(master)
    }

    pub fn exports(&self) -> Arc<Exports> {
        self.exports.read().expect("exports lock").clone()
    }

    /// Re-reads the exports file (SIGHUP); a broken file leaves the old rules in place.
    pub fn reload_exports(&self) -> anyhow::Result<()> {
        let e = Exports::load(&self.config.exports_file)?;
        *self.exports.write().expect("exports lock") = Arc::new(e);
        Ok(())
    }

    pub fn is_leader(&self) -> bool {
        self.node.is_leader()
    }

    pub fn not_leader(&self) -> ClientError {
        client_error(self.node.not_leader())
    }

    /// Whether this master leads and has heard from a quorum of the group within twice the
    /// longest election timeout (by then the others have elected a new leader). A leader that
    /// has not stops serving clients, so they look for the new one instead of waiting for
    /// commits that cannot happen.
    pub fn serving(&self) -> bool {
        self.node.leads_with_quorum(Duration::from_millis(4 * self.config.election_timeout_ms))
    }

    /// Resolves once this master no longer serves (see [`Master::serving`]).
    pub async fn stopped_serving(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !self.serving() {
                return;
            }
        }
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.node.metrics().current_term
    }

    /// Proposes a namespace operation stamped with the leader's clock.
    pub async fn propose(&self, body: OpBody) -> Result<MetaReply, ClientError> {
        self.propose_from(None, body).await
    }

    /// Proposes an operation on behalf of a client request (recorded for exactly-once retries).
    pub async fn propose_from(&self, origin: Option<Origin>, body: OpBody) -> Result<MetaReply, ClientError> {
        let op = MetaOp { now: Timestamp::now(), origin, body };
        match self.node.write(&op).await.map_err(client_error)? {
            MetaReply::Err(s) => Err(ClientError::Status(s)),
            other => Ok(other),
        }
    }

    /// Waits until reads of the local state are linearizable, then gives a view of it.
    pub async fn read(&self) -> Result<View<'_>, ClientError> {
        self.node.read_barrier().await.map_err(client_error)?;
        Ok(View::new(self.node.db()))
    }

    /// A view without the read barrier (for data this node already knows is current).
    pub fn local_view(&self) -> View<'_> {
        View::new(self.node.db())
    }

    pub fn session_seen(&self, id: SessionId) {
        self.sessions_seen.lock().expect("sessions lock").insert(id, Instant::now());
    }

    pub fn session_gone(&self, id: SessionId) {
        self.sessions_seen.lock().expect("sessions lock").remove(&id);
        self.handles.forget_session(id);
        self.reap_soon();
    }

    /// A deleted file may have lost its last handle: have the leader look soon.
    pub fn reap_soon(&self) {
        self.reap_wake.notify_one();
    }

    /// Stops the services and the Raft node.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.node.shutdown().await;
    }
}

/// The leader's periodic work. Runs on every master and acts only while it leads, so it
/// resumes by itself after a failover.
async fn duties(m: Arc<Master>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut round: u64 = 0;
    // When this master last became the leader.
    let mut leading_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = m.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        round += 1;
        if !m.is_leader() {
            m.sessions_seen.lock().expect("sessions lock").clear();
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        let Ok(view) = m.read().await else { continue };
        match view.is_formatted() {
            Ok(false) => {
                let body = OpBody::Format { goal: m.config.default_goal, trash_time: m.config.default_trash_time };
                match m.propose(body).await {
                    Ok(_) => tracing::info!("created the root directory of a new file system"),
                    Err(e) => tracing::warn!(error = %e, "formatting the file system failed"),
                }
                continue;
            }
            Ok(true) => {}
            Err(_) => continue,
        }
        // A write under a lease of the previous leader (which this one does not know) may
        // still be under way: copying or trimming its chunk now could keep a partial copy.
        if round.is_multiple_of(2) && since.elapsed() >= m.config.replications_delay_init {
            crate::replication::pass(&m).await;
        }
        if round.is_multiple_of(10) {
            match m.propose(OpBody::ExpireTrash { limit: EXPIRE_BATCH }).await {
                Ok(MetaReply::Freed(n)) if n > 0 => tracing::info!(files = n, "trash expired"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "trash expiry round failed"),
            }
            expire_sessions(&m).await;
        }
    }
}

/// Frees deleted files once nobody holds them open: every second, and soon after anything
/// that may have let one go. Runs on every master and acts only while it leads.
async fn reaper(m: Arc<Master>) {
    let mut leading: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = m.stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = m.reap_wake.notified() => {}
        }
        if !m.is_leader() {
            leading = None;
            continue;
        }
        let term = m.term();
        let since = match leading {
            Some((t, since)) if t == term => since,
            _ => leading.insert((term, Instant::now())).1,
        };
        crate::handles::reap(&m, since).await;
    }
}

/// Closes sessions nobody used for `SESSION_SUSTAIN_TIME`. A session this leader has not
/// seen yet (it just took over) gets the full sustain time from now.
async fn expire_sessions(m: &Arc<Master>) {
    let Ok(sessions) = m.local_view().sessions() else { return };
    let expired: Vec<SessionId> = {
        let mut seen = m.sessions_seen.lock().expect("sessions lock");
        let now = Instant::now();
        sessions
            .iter()
            .filter_map(|(id, _)| {
                let t = *seen.entry(*id).or_insert(now);
                (now.duration_since(t) > m.config.session_sustain).then_some(*id)
            })
            .collect()
    };
    for id in expired {
        if m.propose(OpBody::CloseSession { session: id }).await.is_ok() {
            tracing::info!(session = %id, "closed an expired session");
            m.session_gone(id);
        }
    }
}
