//! A running member of a metadata group: RocksDB, the Raft core, the peer listener, and the
//! calls an application makes (propose, linearizable read barrier, membership changes).

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alces_proto::{Handshake, LinkKind, Secret};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::lease::Acks;
use crate::log_store::{LogStats, LogStore};
use crate::machine::StateMachine;
use crate::network::{self, PeerNetwork};
use crate::propose::{write_error, Proposer};
use crate::read_index::ReadIndex;
use crate::sm_store::{SmStats, SmStore};
use crate::snapshot::SnapshotDir;
use crate::types::{Member, NodeId, Payload, Raft, RaftMetrics};

/// How long adding a learner waits for it to receive the log.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(20);

/// Settings of one member.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// RocksDB lives in `data_dir/db`, snapshot files in `data_dir/snapshots`.
    pub data_dir: PathBuf,
    /// Where the peer listener binds.
    pub listen: SocketAddr,
    /// How the other members reach this one (stored in the membership).
    pub member: Member,
    pub secret: Secret,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so that slightly lagging followers need no snapshot.
    pub keep_logs: u64,
    /// Test-only sabotage: no write-ahead log, so acknowledged entries are lost on a crash
    /// (proves the fault-injection suite detects it). Never set in production.
    pub unsafe_no_wal: bool,
    /// Serve linearizable reads under the leader lease when it holds (off: every read waits
    /// for a quorum round, shared by the reads that arrive together).
    pub lease_reads: bool,
}

impl NodeConfig {
    pub fn new(id: NodeId, data_dir: PathBuf, listen: SocketAddr, member: Member, secret: Secret) -> Self {
        NodeConfig {
            id,
            data_dir,
            listen,
            member,
            secret,
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every: 100_000,
            keep_logs: 10_000,
            unsafe_no_wal: false,
            lease_reads: true,
        }
    }

    fn raft_config(&self) -> Result<Config> {
        let cfg = Config {
            cluster_name: "alces".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: 60_000,
            max_payload_entries: 1000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            snapshot_max_chunk_size: 4 << 20,
            ..Default::default()
        };
        cfg.validate().map_err(|e| Error::Config(e.to_string()))
    }
}

/// The role of a member as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Learner,
    Candidate,
}

/// One member in [`NodeStatus`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub role: Role,
    /// The last log index known to be on that member (only the leader knows it for others).
    pub matched: Option<u64>,
    pub member: Member,
}

/// What one node knows about the group.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub applied: Option<u64>,
    pub snapshot: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub applied_since_start: u64,
    pub snapshots_built: u64,
    pub snapshots_installed: u64,
    pub log_appends: u64,
    pub log_entries: u64,
    pub log_fsyncs: u64,
    /// Linearizable reads served under the leader lease, and quorum rounds taken for reads.
    #[serde(default)]
    pub lease_reads: u64,
    #[serde(default)]
    pub read_rounds: u64,
}

/// A running member, generic over the application state machine.
pub struct RaftNode<M: StateMachine> {
    id: NodeId,
    raft: Raft,
    db: Arc<Db>,
    machine: Arc<M>,
    network: PeerNetwork,
    reads: ReadIndex,
    proposer: Proposer,
    stop: CancellationToken,
    transferring: AtomicBool,
    log_stats: Arc<LogStats>,
    sm_stats: Arc<SmStats>,
    config: NodeConfig,
    _m: PhantomData<M>,
}

impl<M: StateMachine> RaftNode<M> {
    /// Opens the node's storage, starts Raft and the peer listener.
    pub async fn start(config: NodeConfig, machine: Arc<M>) -> Result<Arc<Self>> {
        let raft_config = Arc::new(config.raft_config()?);
        std::fs::create_dir_all(&config.data_dir)?;
        let db = Db::open_with(&config.data_dir.join("db"), machine.column_families(), config.unsafe_no_wal)?;
        let log = LogStore::open(config.id, db.clone())?;
        let durability = log.durability();
        let dir = SnapshotDir::open(config.data_dir.join("snapshots"))?;
        let erased: Arc<dyn crate::machine::ErasedMachine> = machine.clone();
        let sm = SmStore::open(db.clone(), erased, dir, durability.clone())?;
        let (log_stats, sm_stats) = (log.stats(), sm.stats());
        let name = format!("master {}", config.id);
        let handshake = Handshake::new(LinkKind::Peer, name, Some(config.secret.clone()));
        // The leader counts half the followers' vote-refusal window (election_timeout_max) as
        // its lease; the other half absorbs scheduling delays and clock rate differences.
        // A lease of zero never holds.
        let lease =
            if config.lease_reads { Duration::from_millis(config.election_timeout_max_ms / 2) } else { Duration::ZERO };
        let acks = Arc::new(Acks::new(lease));
        let network = PeerNetwork::new(handshake.clone(), acks.clone(), durability);
        let voting = network::Voting::new(Duration::from_millis(config.election_timeout_max_ms));
        let listener = TcpListener::bind(config.listen).await?;
        let raft = Raft::new(config.id, raft_config, network.clone(), log, sm)
            .await
            .map_err(|e| Error::Stopped(e.to_string()))?;
        let stop = CancellationToken::new();
        tokio::spawn(network::serve(listener, raft.clone(), handshake, voting, stop.clone()));
        let reads = ReadIndex::start(raft.clone(), config.id, acks, log_stats.clone());
        let proposer = Proposer::start(raft.clone());
        tracing::info!(id = config.id, listen = %config.listen, "raft node started");
        Ok(Arc::new(RaftNode {
            id: config.id,
            raft,
            db,
            machine,
            network,
            reads,
            proposer,
            stop,
            transferring: AtomicBool::new(false),
            log_stats,
            sm_stats,
            config,
            _m: PhantomData,
        }))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The local database, for reads (after [`RaftNode::read_barrier`] when they must be
    /// linearizable).
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    pub fn machine(&self) -> &Arc<M> {
        &self.machine
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Makes this node part of a new group with `members` as voters. Every initial member may
    /// call it with the same set; a node that already has a membership ignores it.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, Member>) -> Result<()> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(e)) => Err(Error::Config(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(Error::Stopped(f.to_string())),
        }
    }

    /// Proposes an operation and returns its reply once it is committed and applied here.
    pub async fn write(&self, op: &M::Op) -> Result<M::Reply> {
        if self.transferring.load(Ordering::Acquire) {
            return Err(Error::Unavailable("leadership transfer in progress".into()));
        }
        let reply = self.proposer.propose(Payload(alces_proto::encode(op))).await?;
        crate::db::decode_value(&reply.0)
    }

    /// Returns once the local state reflects every write committed before the call.
    pub async fn read_barrier(&self) -> Result<()> {
        self.reads.barrier().await
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The current leader and its addresses, as far as this node knows.
    pub fn leader(&self) -> Option<(NodeId, Option<Member>)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        Some((id, m.membership_config.membership().get_node(&id).cloned()))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Whether this node leads and a quorum of the group acknowledged something it sent
    /// within the last `within`. A leader cut off from its peers goes on believing it leads
    /// until it hears of a newer term; this tells it that it can no longer commit.
    pub fn leads_with_quorum(&self, within: Duration) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(self.id)
            && m.millis_since_quorum_ack.is_none_or(|ms| u128::from(ms) <= within.as_millis())
    }

    /// A [`Error::NotLeader`] pointing at the current leader.
    pub fn not_leader(&self) -> Error {
        let leader = self.leader();
        Error::NotLeader { leader_id: leader.as_ref().map(|l| l.0), leader: leader.and_then(|l| l.1) }
    }

    pub fn status(&self) -> NodeStatus {
        let m = self.metrics();
        let role_of = |state: ServerState| match state {
            ServerState::Leader => Role::Leader,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            _ => Role::Follower,
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = |id: NodeId| m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index);
        let members = membership
            .nodes()
            .map(|(&id, member)| MemberStatus {
                id,
                role: if Some(id) == m.current_leader {
                    Role::Leader
                } else if id == self.id {
                    role_of(m.state)
                } else if voters.contains(&id) {
                    Role::Follower
                } else {
                    Role::Learner
                },
                matched: if id == self.id { m.last_log_index } else { matched(id) },
                member: member.clone(),
            })
            .collect();
        NodeStatus {
            id: self.id,
            role: role_of(m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            members,
            applied_since_start: self.sm_stats.applied_since_start.load(Ordering::Relaxed),
            snapshots_built: self.sm_stats.snapshots_built.load(Ordering::Relaxed),
            snapshots_installed: self.sm_stats.snapshots_installed.load(Ordering::Relaxed),
            log_appends: self.log_stats.appends.load(Ordering::Relaxed),
            log_entries: self.log_stats.entries.load(Ordering::Relaxed),
            log_fsyncs: self.log_stats.fsyncs.load(Ordering::Relaxed),
            lease_reads: self.reads.lease_reads(),
            read_rounds: self.reads.rounds(),
        }
    }

    /// Adds a non-voting member and waits (up to `LEARNER_CATCH_UP`) until it holds every
    /// entry up to its own membership entry. On timeout it stays a learner and the error says so.
    pub async fn add_learner(&self, id: NodeId, member: Member) -> Result<()> {
        let resp = self.membership_call(self.raft.add_learner(id, member, false)).await?;
        let target = resp.log_id.index;
        let mut rx = self.raft.metrics();
        let caught_up = async {
            loop {
                let m = rx.borrow().clone();
                if m.current_leader != Some(self.id) {
                    return Err(self.not_leader());
                }
                let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index);
                if matched.is_some_and(|i| i >= target) {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Stopped("raft stopped".into()));
                }
            }
        };
        tokio::time::timeout(LEARNER_CATCH_UP, caught_up).await.map_err(|_| {
            Error::Membership(format!(
                "node {id} was added as a learner but has not caught up within {LEARNER_CATCH_UP:?}"
            ))
        })?
    }

    /// Turns a learner into a voter.
    pub async fn promote(&self, id: NodeId) -> Result<()> {
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        self.membership_call(self.raft.change_membership(change, false)).await?;
        Ok(())
    }

    /// Removes a member (voter or learner) from the group.
    pub async fn remove(&self, id: NodeId) -> Result<()> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(Error::Membership(format!("node {id} is not a member")));
        };
        self.membership_call(self.raft.change_membership(change, false)).await?;
        Ok(())
    }

    /// Runs a membership change on the leader. openraft checks a change against the local
    /// membership before it checks leadership, so a follower that has not yet learned that the
    /// last change committed would answer "a change is in progress" instead of redirecting:
    /// only the leader's answer counts, anyone else's refusal is a redirect.
    async fn membership_call<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<T, RaftError<NodeId, ClientWriteError<NodeId, Member>>>>,
    ) -> Result<T> {
        if self.metrics().current_leader != Some(self.id) {
            return Err(self.not_leader());
        }
        match call.await.map_err(write_error) {
            Err(Error::Membership(_)) if self.metrics().current_leader != Some(self.id) => Err(self.not_leader()),
            other => other,
        }
    }

    /// Hands leadership to voter `to`: stops taking writes, waits until `to` has every entry,
    /// lets the leader lease lapse without heartbeats, and asks `to` to campaign.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<()> {
        let m = self.metrics();
        if m.current_leader != Some(self.id) {
            return Err(self.not_leader());
        }
        if to == self.id {
            return Ok(());
        }
        let membership = m.membership_config.membership().clone();
        if !membership.voter_ids().any(|v| v == to) {
            return Err(Error::Membership(format!("node {to} is not a voter")));
        }
        let addr = membership.get_node(&to).map(|n| n.raft_addr.clone()).unwrap_or_default();
        if self.transferring.swap(true, Ordering::AcqRel) {
            return Err(Error::Unavailable("a leadership transfer is already running".into()));
        }
        let res = self.transfer_inner(to, &addr).await;
        self.raft.runtime_config().heartbeat(true);
        self.raft.runtime_config().elect(true);
        self.transferring.store(false, Ordering::Release);
        res
    }

    async fn transfer_inner(&self, to: NodeId, addr: &str) -> Result<()> {
        let caught_up = async {
            loop {
                let m = self.metrics();
                let target = m.replication.as_ref().and_then(|r| r.get(&to).cloned().flatten()).map(|l| l.index);
                if target.is_some() && target >= m.last_log_index {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), caught_up)
            .await
            .map_err(|_| Error::Unavailable(format!("node {to} did not catch up with the log")))?;
        self.raft.runtime_config().heartbeat(false);
        self.raft.runtime_config().elect(false);
        tokio::time::sleep(Duration::from_millis(self.config.election_timeout_max_ms + 50)).await;
        self.network.trigger_election(addr).await.map_err(|e| Error::Unavailable(e.to_string()))?;
        let mut rx = self.raft.metrics();
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let leader = rx.borrow().current_leader;
                if leader.is_some() && leader != Some(self.id) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .map_err(|_| Error::Unavailable(format!("node {to} did not take over")))?;
        Ok(())
    }

    /// Builds a snapshot now and waits until Raft took it in; returns its last log index.
    pub async fn snapshot(&self) -> Result<u64> {
        let before = self.sm_stats.snapshots_built.load(Ordering::SeqCst);
        self.raft.trigger().snapshot().await.map_err(|e| Error::Stopped(e.to_string()))?;
        let mut rx = self.raft.metrics();
        // The builder counts a snapshot before Raft's metrics show it: wait for both.
        let taken_in = |rx: &tokio::sync::watch::Receiver<RaftMetrics>| {
            let built = self.sm_stats.snapshots_built.load(Ordering::SeqCst) != before;
            let index = self.sm_stats.last_built_index.load(Ordering::SeqCst);
            built && rx.borrow().snapshot.is_some_and(|l| l.index >= index)
        };
        tokio::time::timeout(Duration::from_secs(600), async {
            while !taken_in(&rx) {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .map_err(|_| Error::Unavailable("snapshot did not finish".into()))?;
        Ok(self.sm_stats.last_built_index.load(Ordering::SeqCst))
    }

    /// Stops Raft and the peer listener.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
