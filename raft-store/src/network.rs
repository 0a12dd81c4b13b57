//! The Raft peer network: TCP connections between masters carrying [`PeerRequest`] frames.
//!
//! Dialing side: one small pool of authenticated connections per target; a call takes an idle
//! connection (or dials and proves the cluster secret), sends one request, waits for its
//! answer, and returns the connection to the pool. Listening side: every accepted connection
//! must prove the cluster secret before any request is read; a bad frame closes that
//! connection with a logged error and nothing else.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alces_proto::link::peer::{PeerRequest, PeerResponse};
use alces_proto::{Connection, FrameError, Handshake, IdlePool};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::ServerState;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::durable::Durability;
use crate::lease::Acks;
use crate::types::{LogId, Member, NodeId, Raft, TypeConfig, Vote};

/// Peer frames carry up to `max_payload_entries` log entries or one snapshot chunk.
pub const PEER_MAX_FRAME: usize = 64 << 20;
const IDLE_PER_TARGET: usize = 4;
const MAX_PEER_CONNECTIONS: usize = 256;

pub(crate) type Request =
    PeerRequest<AppendEntriesRequest<TypeConfig>, VoteRequest<NodeId>, InstallSnapshotRequest<TypeConfig>>;
pub(crate) type Response = PeerResponse<
    Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>,
    Result<VoteResponse<NodeId>, RaftError<NodeId>>,
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
>;

/// Creates a [`PeerClient`] per target; shared by every replication stream of a node.
#[derive(Clone)]
pub struct PeerNetwork {
    handshake: Handshake,
    /// Idle authenticated connections, per target address.
    pool: Arc<IdlePool>,
    acks: Arc<Acks>,
    /// This node's log on disk: a leader tells no commit beyond it.
    durability: Arc<Durability>,
}

impl PeerNetwork {
    pub(crate) fn new(handshake: Handshake, acks: Arc<Acks>, durability: Arc<Durability>) -> Self {
        PeerNetwork { handshake, pool: Arc::new(IdlePool::new(IDLE_PER_TARGET)), acks, durability }
    }

    /// Sends one request to `addr` and returns the answer.
    ///
    /// An idle connection the peer closed meanwhile (it restarted) fails at once: the request
    /// goes again on a new connection, and the other idle ones to `addr`, as old, are
    /// dropped. Without that, a vote sent to a member that was restarted since it last
    /// talked to this node failed, and the candidate waited a whole election timeout for the
    /// next round. Raft requests may be delivered twice.
    pub(crate) async fn call(&self, addr: &str, req: &Request, timeout: Duration) -> Result<Response, CallError> {
        if let Some(mut conn) = self.pool.take(addr) {
            match conn.call(req, timeout).await {
                Ok(resp) => {
                    self.pool.give_back(addr, conn);
                    return Ok(resp);
                }
                Err(e) if e.is_disconnect() || matches!(e, FrameError::Truncated) => {
                    tracing::debug!(peer = addr, error = %e, "idle connection closed by the peer; dialing again");
                    self.pool.forget(addr);
                }
                Err(e) => return Err(CallError::Io(e)),
            }
        }
        let mut conn = Connection::connect(addr, PEER_MAX_FRAME, timeout).await.map_err(CallError::Connect)?;
        self.handshake.dial(&mut conn).await.map_err(|e| CallError::Handshake(e.to_string()))?;
        let resp: Response = conn.call(req, timeout).await.map_err(CallError::Io)?;
        self.pool.give_back(addr, conn);
        Ok(resp)
    }

    /// Asks the member at `addr` to start an election now (leadership transfer).
    pub async fn trigger_election(&self, addr: &str) -> Result<(), CallError> {
        match self.call(addr, &PeerRequest::TriggerElection, Duration::from_secs(5)).await? {
            PeerResponse::ElectionTriggered => Ok(()),
            PeerResponse::Failed(why) => Err(CallError::Remote(why)),
            _ => Err(CallError::Remote("unexpected answer".into())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect: {0}")]
    Connect(FrameError),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("{0}")]
    Io(FrameError),
    #[error("peer failed: {0}")]
    Remote(String),
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient { net: self.clone(), target, node: node.clone() }
    }
}

/// The dialing side towards one member.
pub struct PeerClient {
    net: PeerNetwork,
    target: NodeId,
    node: Member,
}

impl PeerClient {
    async fn rpc<E: std::error::Error>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, Member, E>> {
        self.net.call(&self.node.raft_addr, &req, option.hard_ttl()).await.map_err(|e| match e {
            CallError::Io(FrameError::Io(_) | FrameError::Closed | FrameError::Truncated) => {
                RPCError::Network(NetworkError::new(&e))
            }
            _ => RPCError::Unreachable(Unreachable::new(&e)),
        })
    }

    fn unexpected<E: std::error::Error>(&self, resp: Response) -> RPCError<NodeId, Member, E> {
        let why = match resp {
            PeerResponse::Failed(why) => why,
            _ => "answer does not match the request".to_string(),
        };
        RPCError::Network(NetworkError::new(&CallError::Remote(why)))
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, Member, E> {
        RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let (term, sent) = (rpc.vote.leader_id.term, Instant::now());
        // Followers apply nothing this leader has not synced (see `durable`).
        rpc.leader_commit = self.net.durability.clamp_commit(rpc.leader_commit);
        let resp = match self.rpc(PeerRequest::AppendEntries(rpc), &option).await? {
            PeerResponse::AppendEntries(r) => r.map_err(|e| self.remote(e))?,
            other => return Err(self.unexpected(other)),
        };
        // Anything but a higher vote means the peer took this node as its leader (and will not
        // vote for another one for a while): the leader lease counts from `sent`.
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.net.acks.record(self.target, term, sent);
        }
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.rpc(PeerRequest::InstallSnapshot(rpc), &option).await? {
            PeerResponse::InstallSnapshot(r) => r.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.rpc(PeerRequest::Vote(rpc), &option).await? {
            PeerResponse::Vote(r) => r.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(other)),
        }
    }
}

/// What the listening side knows about elections: when this node may vote at all, and when
/// it last heard from a leader.
pub(crate) struct Voting {
    /// Vote requests are refused until then (see [`crate::lease`]: a node that just started
    /// must not vote while a leader's lease may still hold).
    votes_from: Instant,
    /// How long without a leader's append before this node takes the leader for gone: the
    /// followers' vote-refusal window, so no leader lease can still count on this node.
    silence: Duration,
    last_append: Mutex<Instant>,
}

impl Voting {
    pub(crate) fn new(election_timeout_max: Duration) -> Arc<Voting> {
        let now = Instant::now();
        Arc::new(Voting {
            votes_from: now + election_timeout_max,
            silence: election_timeout_max,
            last_append: Mutex::new(now),
        })
    }

    fn heard_leader(&self) {
        *self.last_append.lock().expect("voting lock") = Instant::now();
    }

    fn leader_silent(&self) -> bool {
        let now = Instant::now();
        now >= self.votes_from && now.duration_since(*self.last_append.lock().expect("voting lock")) > self.silence
    }
}

/// After refusing a candidate whose log is behind this follower's while no leader has been
/// heard from for a whole vote-refusal window: that candidate cannot win, and waiting for this
/// node's own election timeout would add one more timeout to the failover, so it stands now,
/// at a term that outranks the candidate's (see [`elections_to_outrank`]).
fn stand_after_refusing(raft: &Raft, voting: &Voting, candidate: (&Vote, Option<LogId>), resp: &VoteResponse<NodeId>) {
    let (state, me) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.state, m.id)
    };
    if !should_stand(resp, candidate.1, voting.leader_silent(), state) {
        return;
    }
    let (mine, theirs) = (resp.vote.leader_id(), candidate.0.leader_id());
    let rounds = elections_to_outrank((mine.term, me), (theirs.term, theirs.voted_for().unwrap_or_default()));
    let raft = raft.clone();
    tokio::spawn(async move {
        tracing::info!(
            rounds,
            "refused a candidate with a shorter log while no leader is heard from: standing for election"
        );
        for _ in 0..rounds {
            if let Err(e) = raft.trigger().elect().await {
                return tracing::debug!(error = %e, "could not stand for election");
            }
        }
    });
}

/// How many elections in a row a node at term `mine.0` (with id `mine.1`) starts so that its
/// candidacy outranks a candidate's (term, id): each election takes the next term, and votes
/// order by term, then by id. Standing only at the candidate's own term with a smaller id
/// would be refused by that candidate (it voted for itself), while the candidate is refused
/// by this node for its shorter log: neither gets a majority of three until a timeout.
fn elections_to_outrank(mine: (u64, NodeId), candidate: (u64, NodeId)) -> u64 {
    let needed = if mine.1 > candidate.1 { candidate.0 } else { candidate.0 + 1 };
    needed.saturating_sub(mine.0).clamp(1, 3)
}

/// Whether a node that answered a candidate (whose last log id is `candidate_last`) with
/// `resp` should stand itself: only a follower or a candidate that refused a candidate behind
/// its own log, with no leader heard from (`leader_silent`). A candidate too: two that stood
/// at once, the one with the longer log refusing the other's log and the other refusing its
/// lower rank in their common term, would otherwise wait out a timeout each round, and as
/// each node's timeout is drawn once, when it starts, they can meet again the next round. A
/// leader never does: it would depose itself.
fn should_stand(
    resp: &VoteResponse<NodeId>,
    candidate_last: Option<LogId>,
    leader_silent: bool,
    state: ServerState,
) -> bool {
    !resp.vote_granted
        && resp.last_log_id > candidate_last
        && leader_silent
        && matches!(state, ServerState::Follower | ServerState::Candidate)
}

/// Accepts peer connections until `stop` is cancelled (see [`Voting`] for votes).
pub(crate) async fn serve(
    listener: TcpListener,
    raft: Raft,
    handshake: Handshake,
    voting: Arc<Voting>,
    stop: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_PEER_CONNECTIONS));
    loop {
        let (stream, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(peer = %addr, "too many peer connections; refusing one");
            continue;
        };
        let (raft, handshake, stop, voting) = (raft.clone(), handshake.clone(), stop.clone(), voting.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve_connection(stream, addr, raft, handshake, &voting) => {}
            }
            drop(permit);
        });
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    raft: Raft,
    handshake: Handshake,
    voting: &Voting,
) {
    let mut conn = match Connection::new(stream, PEER_MAX_FRAME) {
        Ok(c) => c,
        Err(e) => return tracing::warn!(peer = %addr, error = %e, "peer connection unusable"),
    };
    let name = match handshake.accept(&mut conn).await {
        Ok(name) => name,
        Err(e) => return tracing::warn!(peer = %addr, error = %e, "refused a peer connection"),
    };
    tracing::debug!(peer = %addr, name, "peer connected");
    loop {
        let req: Request = match conn.recv().await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) if e.is_disconnect() => return,
            Err(e) => return tracing::warn!(peer = %addr, error = %e, "closing peer connection after a bad frame"),
        };
        let resp: Response = match req {
            PeerRequest::AppendEntries(r) => {
                voting.heard_leader();
                PeerResponse::AppendEntries(raft.append_entries(r).await)
            }
            PeerRequest::Vote(_) if Instant::now() < voting.votes_from => {
                PeerResponse::Failed("started moments ago: not voting until a leader's lease has lapsed".into())
            }
            PeerRequest::Vote(r) => {
                let candidate = (r.vote, r.last_log_id);
                let resp = raft.vote(r).await;
                if let Ok(v) = &resp {
                    stand_after_refusing(&raft, voting, (&candidate.0, candidate.1), v);
                }
                PeerResponse::Vote(resp)
            }
            PeerRequest::InstallSnapshot(r) => PeerResponse::InstallSnapshot(raft.install_snapshot(r).await),
            PeerRequest::TriggerElection => match raft.trigger().elect().await {
                Ok(()) => PeerResponse::ElectionTriggered,
                Err(e) => PeerResponse::Failed(e.to_string()),
            },
        };
        if let Err(e) = conn.send(&resp).await {
            if !e.is_disconnect() {
                tracing::warn!(peer = %addr, error = %e, "cannot answer a peer");
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use alces_proto::{LinkKind, Secret};
    use openraft::CommittedLeaderId;

    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn answer(granted: bool, last: Option<LogId>) -> VoteResponse<NodeId> {
        VoteResponse { vote: Vote::new(3, 2), vote_granted: granted, last_log_id: last }
    }

    #[test]
    fn only_a_voter_that_refused_a_candidate_behind_it_with_no_leader_heard_stands() {
        let (behind, ahead) = (log(2, 10), log(2, 12));
        assert!(should_stand(&answer(false, ahead), behind, true, ServerState::Follower));
        assert!(should_stand(&answer(false, ahead), behind, true, ServerState::Candidate));
        // A leader still heard from, a granted vote, a candidate as far as this node or
        // further, or a leader or learner: no election.
        assert!(!should_stand(&answer(false, ahead), behind, false, ServerState::Follower));
        assert!(!should_stand(&answer(true, ahead), behind, true, ServerState::Follower));
        assert!(!should_stand(&answer(false, ahead), ahead, true, ServerState::Follower));
        assert!(!should_stand(&answer(false, behind), ahead, true, ServerState::Follower));
        for state in [ServerState::Leader, ServerState::Learner] {
            assert!(!should_stand(&answer(false, ahead), behind, true, state), "{state:?}");
        }
    }

    /// A peer that answers every request with `Failed(tag)`, on `addr` (a free port if None).
    async fn fake_peer(
        addr: Option<SocketAddr>,
        tag: &'static str,
        secret: &Secret,
    ) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let hs = Handshake::new(LinkKind::Peer, "fake", Some(secret.clone()));
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                let (hs, stopped) = (hs.clone(), stopped.clone());
                tokio::spawn(async move {
                    let mut conn = Connection::new(stream, PEER_MAX_FRAME).unwrap();
                    hs.accept(&mut conn).await.unwrap();
                    loop {
                        tokio::select! {
                            _ = stopped.cancelled() => return,
                            r = conn.recv::<Request>() => match r {
                                Ok(Some(_)) => conn.send(&(PeerResponse::Failed(tag.into()) as Response)).await.unwrap(),
                                _ => return,
                            },
                        }
                    }
                });
            }
        });
        (addr, stop)
    }

    #[tokio::test]
    async fn a_call_after_the_peer_restarted_goes_on_a_new_connection() {
        let secret = Secret::new("s");
        let dir = tempfile::tempdir().unwrap();
        let net = PeerNetwork::new(
            Handshake::new(LinkKind::Peer, "test", Some(secret.clone())),
            Arc::new(Acks::new(Duration::from_secs(1))),
            Durability::open_in(dir.path()),
        );
        let answer = |r: Result<Response, CallError>| match r {
            Ok(PeerResponse::Failed(tag)) => tag,
            other => panic!("{other:?}"),
        };
        let (addr, first) = fake_peer(None, "first", &secret).await;
        let a = addr.to_string();
        let t = Duration::from_secs(2);
        assert_eq!(answer(net.call(&a, &PeerRequest::TriggerElection, t).await), "first");
        assert_eq!(answer(net.call(&a, &PeerRequest::TriggerElection, t).await), "first", "the idle connection");
        // The peer goes away (closing its connections) and comes back on the same address.
        first.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, _second) = fake_peer(Some(addr), "second", &secret).await;
        assert_eq!(answer(net.call(&a, &PeerRequest::TriggerElection, t).await), "second");
    }

    #[test]
    fn a_node_that_stands_outranks_the_candidate_it_refused() {
        // Leader term 5; candidate 3 stood at 6. Node 1 must reach term 7; node 4 wins at 6.
        assert_eq!(elections_to_outrank((5, 1), (6, 3)), 2);
        assert_eq!(elections_to_outrank((5, 4), (6, 3)), 1);
        // Already at the candidate's term (it voted for itself there): one more.
        assert_eq!(elections_to_outrank((6, 1), (6, 3)), 1);
        // Never fewer than one, never a runaway.
        assert_eq!(elections_to_outrank((9, 1), (6, 3)), 1);
        assert_eq!(elections_to_outrank((1, 1), (50, 3)), 3);
    }

    #[test]
    fn a_node_is_silent_only_after_the_window_with_no_append() {
        let voting = Voting::new(Duration::from_millis(300));
        assert!(!voting.leader_silent(), "just started");
        std::thread::sleep(Duration::from_millis(400));
        assert!(voting.leader_silent());
        voting.heard_leader();
        assert!(!voting.leader_silent(), "an append just arrived");
    }
}
