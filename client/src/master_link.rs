//! The session with the metadata cluster: the peer list, finding the leader, registering,
//! many requests in flight on one connection, and transparent retry across failovers.
//!
//! A request that fails because the master went away, is not the leader, or cannot serve
//! right now is sent again (to the leader, once found) with the same request id, for up to
//! [`Options::retry_for`]; the master answers a change it already made with the recorded
//! reply, so retries never apply an operation twice. File system errors (`ENOENT`...) are
//! returned at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use alces_proto::link::client_master::{
    ClientError, ClientReply, ClientRequest, Register, Reply, Request, SessionView,
};
use alces_proto::types::{Creds, Inode, SessionId};
use alces_proto::{Connection, Handshake, LinkKind, Status};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::Instant;

/// How to reach and register with the cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host:port` of every master (the client port, 9421).
    pub masters: Vec<String>,
    /// Exported path to mount.
    pub path: String,
    pub meta: bool,
    pub password: Option<String>,
    /// Host and mount point, shown by the monitor.
    pub client_name: String,
    /// Register as a tool inside the mount that holds this session (see [`Register::tool_of`]).
    pub tool_of: Option<SessionId>,
    /// How long a request keeps being retried through failovers before it fails.
    pub retry_for: Duration,
    pub connect_timeout: Duration,
}

impl Options {
    pub fn new(masters: Vec<String>) -> Self {
        Options {
            masters,
            path: "/".into(),
            meta: false,
            password: None,
            client_name: String::new(),
            tool_of: None,
            retry_for: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a call failed for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Status(Status),
    #[error("access refused: {0}")]
    Refused(String),
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
}

impl CallError {
    pub fn errno(&self) -> i32 {
        match self {
            CallError::Status(s) => s.errno(),
            CallError::Refused(_) => libc::EACCES,
            CallError::Unavailable(_) => libc::EIO,
        }
    }
}

/// Calls waiting for their reply on one link; `None` once the link's reader has stopped, so
/// that no call can be left waiting on a connection nobody reads any more.
type Pending = Arc<StdMutex<Option<HashMap<u64, oneshot::Sender<Result<ClientReply, ClientError>>>>>>;

/// How long a call waits for its reply before the link is given up and the call retried on a
/// new one (sessions make the retry safe). Guards against a master that stopped answering
/// without closing the connection, e.g. a leader cut off from its peers.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// While calls wait, a link that has been silent this long is sent a `MasterInfo` (answered
/// at once by any master that runs)...
const PING_AFTER: Duration = Duration::from_secs(1);
/// ...and one silent this long is given up: its calls are retried elsewhere. A leader that
/// was paused or cut off is replaced by the others within a couple of seconds; without this
/// its clients would wait for [`REPLY_TIMEOUT`].
const SILENT_LIMIT: Duration = Duration::from_secs(4);

/// One live connection to a master.
struct Link {
    tx: mpsc::UnboundedSender<Request>,
    pending: Pending,
    addr: String,
    /// Bumped when the link is replaced, so a failure seen on an old link is not blamed on
    /// the new one.
    generation: u64,
}

struct State {
    link: Option<Arc<Link>>,
    /// Where the last `NotLeader` said the leader is.
    leader_hint: Option<String>,
    session: Option<SessionView>,
    generation: u64,
    /// The masters to try: the group's members as the leader last named them, then the
    /// addresses given at start that it did not name (so a mount follows membership changes).
    peers: Vec<String>,
    next_peer: usize,
    /// A master that just stopped answering: the next connection tries the others first.
    avoid: Option<String>,
}

/// A registered session; cheap to clone.
#[derive(Clone)]
pub struct MasterClient {
    opts: Arc<Options>,
    state: Arc<Mutex<State>>,
    next_id: Arc<AtomicU64>,
    in_flight: Arc<StdMutex<BTreeSet<u64>>>,
    held: HeldHandles,
}

/// Handles the leader keeps in memory for this session (see [`ClientRequest::Open`]), by
/// handle number. Whoever opens one puts it here before asking, and takes it out before
/// reporting it closed, so that every registration with a new leader names every handle an
/// earlier leader may have opened and not yet seen closed.
pub type HeldHandles = Arc<StdMutex<HashMap<u64, Inode>>>;

/// Holds a request id in the session's in-flight set for as long as its call runs, including
/// a call dropped half way (an aborted read-ahead): an id left behind would hold the
/// session's low-water mark back for good, and the master would go on keeping (and rewriting
/// with every change) up to thousands of replies of this session.
struct InFlight<'a> {
    set: &'a StdMutex<BTreeSet<u64>>,
    id: u64,
}

impl<'a> InFlight<'a> {
    fn new(set: &'a StdMutex<BTreeSet<u64>>, id: u64) -> Self {
        set.lock().expect("in-flight lock").insert(id);
        InFlight { set, id }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("in-flight lock").remove(&self.id);
    }
}

/// A transient failure: try again (maybe elsewhere).
enum Retry {
    /// The link broke or the master is not the leader: replace the link.
    Reconnect(Option<String>),
    /// The master cannot serve now: wait a little.
    Later(String),
    /// The session is gone on the master: register a new one.
    NewSession,
    /// Registration refused (no export matches, wrong password): not transient.
    Refused(String),
}

impl MasterClient {
    /// Connects to the leader and registers a session.
    pub async fn connect(opts: Options) -> Result<MasterClient, CallError> {
        if opts.masters.is_empty() {
            return Err(CallError::Unavailable("no master address given".into()));
        }
        let c = MasterClient::unconnected(opts);
        let deadline = Instant::now() + c.opts.retry_for;
        loop {
            match c.link().await {
                Ok(_) => return Ok(c),
                Err(CallError::Unavailable(why)) if Instant::now() < deadline => {
                    tracing::debug!(%why, "no session yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The session as registered.
    pub async fn session(&self) -> Option<SessionView> {
        self.state.lock().await.session.clone()
    }

    /// The handles of this session the leader keeps in memory.
    pub fn held_handles(&self) -> &HeldHandles {
        &self.held
    }

    /// The address of the master currently used.
    pub async fn current_master(&self) -> Option<String> {
        self.state.lock().await.link.as_ref().map(|l| l.addr.clone())
    }

    /// A client with no link yet (the first call makes one).
    fn unconnected(opts: Options) -> MasterClient {
        let peers = opts.masters.clone();
        MasterClient {
            opts: Arc::new(opts),
            state: Arc::new(Mutex::new(State {
                link: None,
                leader_hint: None,
                session: None,
                generation: 0,
                peers,
                next_peer: 0,
                avoid: None,
            })),
            next_id: Arc::new(AtomicU64::new(1)),
            in_flight: Arc::default(),
            held: Arc::default(),
        }
    }

    /// Sends a request and returns its reply, retrying through failovers.
    pub async fn call(&self, creds: &Creds, body: ClientRequest) -> Result<ClientReply, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight::new(&self.in_flight, id);
        self.call_with_id(id, creds, body).await
    }

    fn low_water(&self, id: u64) -> u64 {
        self.in_flight.lock().expect("in-flight lock").iter().next().copied().unwrap_or(id)
    }

    async fn call_with_id(&self, id: u64, creds: &Creds, body: ClientRequest) -> Result<ClientReply, CallError> {
        let deadline = Instant::now() + self.opts.retry_for;
        let mut last = String::new();
        loop {
            if Instant::now() >= deadline {
                return Err(CallError::Unavailable(format!("gave up after {:?}: {last}", self.opts.retry_for)));
            }
            let link = match self.link().await {
                Ok(l) => l,
                Err(CallError::Unavailable(why)) => {
                    last = why;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let req = Request { id, low_water: self.low_water(id), creds: creds.clone(), body: body.clone() };
            let retry = match self.send(&link, req).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => match e {
                    ClientError::Status(s) => return Err(CallError::Status(s)),
                    ClientError::Refused(why) => return Err(CallError::Refused(why)),
                    ClientError::NotLeader { leader_addr, .. } => Retry::Reconnect(leader_addr),
                    ClientError::Unavailable(why) => Retry::Later(why),
                    ClientError::NoSession => Retry::Reconnect(None),
                    ClientError::UnknownSession(_) => Retry::NewSession,
                },
                Err(why) => {
                    last = why;
                    Retry::Reconnect(None)
                }
            };
            match retry {
                Retry::Reconnect(hint) => {
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    self.drop_link(link.generation, hint).await;
                }
                Retry::Later(why) => {
                    last = why;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Retry::NewSession => {
                    tracing::warn!("the master no longer knows this session; registering a new one");
                    let mut st = self.state.lock().await;
                    st.session = None;
                    st.link = None;
                }
                Retry::Refused(why) => return Err(CallError::Refused(why)),
            }
        }
    }

    async fn send(&self, link: &Link, req: Request) -> Result<Result<ClientReply, ClientError>, String> {
        let (tx, rx) = oneshot::channel();
        let id = req.id;
        let forget = || {
            if let Some(p) = link.pending.lock().expect("pending lock").as_mut() {
                p.remove(&id);
            }
        };
        match link.pending.lock().expect("pending lock").as_mut() {
            Some(p) => p.insert(id, tx),
            None => return Err(format!("connection to {} closed", link.addr)),
        };
        if link.tx.send(req).is_err() {
            forget();
            return Err(format!("connection to {} closed", link.addr));
        }
        match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
            Ok(reply) => reply.map_err(|_| format!("connection to {} lost", link.addr)),
            Err(_) => {
                forget();
                Err(format!("no reply from {} within {REPLY_TIMEOUT:?}", link.addr))
            }
        }
    }

    async fn drop_link(&self, generation: u64, hint: Option<String>) {
        let mut st = self.state.lock().await;
        if st.link.as_ref().is_some_and(|l| l.generation == generation) {
            st.link = None;
        }
        if hint.is_some() {
            st.leader_hint = hint;
        }
    }

    /// The current link, connecting and registering if there is none.
    async fn link(&self) -> Result<Arc<Link>, CallError> {
        let mut st = self.state.lock().await;
        if let Some(l) = &st.link {
            if !l.tx.is_closed() && l.pending.lock().expect("pending lock").is_some() {
                return Ok(l.clone());
            }
        }
        let addr = match st.leader_hint.take() {
            Some(a) => a,
            None => {
                let avoid = st.avoid.take();
                let mut a = st.peers[st.next_peer % st.peers.len()].clone();
                st.next_peer += 1;
                if st.peers.len() > 1 && avoid.as_ref() == Some(&a) {
                    a = st.peers[st.next_peer % st.peers.len()].clone();
                    st.next_peer += 1;
                }
                a
            }
        };
        st.generation += 1;
        let generation = st.generation;
        let link = Arc::new(self.open(&addr, generation).await.map_err(CallError::Unavailable)?);
        match self.register(&link, st.session.as_ref().map(|s| s.session)).await {
            Ok(view) => {
                if st.session.as_ref().is_some_and(|s| s.session != view.session) {
                    tracing::warn!(old = %st.session.as_ref().unwrap().session, new = %view.session, "session replaced");
                }
                tracing::info!(master = %addr, session = %view.session, "registered with the leader");
                if let Some(members) = self.members(&link).await {
                    st.peers = merge_peers(members, &self.opts.masters);
                }
                st.session = Some(view);
                st.link = Some(link.clone());
                Ok(link)
            }
            Err(Retry::Reconnect(hint)) => {
                st.leader_hint = hint;
                Err(CallError::Unavailable(format!("{addr} is not the leader")))
            }
            Err(Retry::Later(why)) => Err(CallError::Unavailable(why)),
            Err(Retry::NewSession) => {
                st.session = None;
                Err(CallError::Unavailable("session expired; registering again".into()))
            }
            Err(Retry::Refused(why)) => Err(CallError::Refused(why)),
        }
    }

    /// Connects and starts the reader and writer tasks.
    async fn open(&self, addr: &str, generation: u64) -> Result<Link, String> {
        let mut conn = Connection::connect(addr, alces_proto::DEFAULT_MAX_FRAME, self.opts.connect_timeout)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut hs = Handshake::new(LinkKind::ClientMaster, &self.opts.client_name, None);
        // A stopped master accepts connections (the kernel does) but never answers.
        hs.timeout = self.opts.connect_timeout;
        hs.dial(&mut conn).await.map_err(|e| format!("{addr}: {e}"))?;
        let (mut reader, writer) = conn.split();
        let (tx, rx) = mpsc::unbounded_channel::<Request>();
        let pending: Pending = Arc::new(StdMutex::new(Some(HashMap::new())));
        tokio::spawn(writer.pump(rx));
        let p = pending.clone();
        let master = addr.to_string();
        let heard = Arc::new(StdMutex::new(Instant::now()));
        let heard_by_reader = heard.clone();
        let reading = tokio::spawn(async move {
            loop {
                let frame = reader.recv::<Reply>().await;
                *heard_by_reader.lock().expect("heard lock") = Instant::now();
                match frame {
                    Ok(Some(reply)) => {
                        let waiting = p.lock().expect("pending lock").as_mut().and_then(|p| p.remove(&reply.id));
                        if let Some(tx) = waiting {
                            let _ = tx.send(reply.body);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if !e.is_disconnect() {
                            tracing::warn!(%master, error = %e, "bad frame from master");
                        }
                        break;
                    }
                }
            }
            // Dropping the senders fails every waiting call, which then retries; later calls
            // see the link closed.
            p.lock().expect("pending lock").take();
        });
        tokio::spawn(self.clone().watch(addr.to_string(), tx.downgrade(), pending.clone(), heard, reading));
        Ok(Link { tx, pending, addr: addr.to_string(), generation })
    }

    /// Keeps an eye on a link while calls wait on it: pings it when it is silent, and gives it
    /// up (failing its calls, which are then retried elsewhere) when it stays silent.
    async fn watch(
        self,
        addr: String,
        tx: mpsc::WeakUnboundedSender<Request>,
        pending: Pending,
        heard: Arc<StdMutex<Instant>>,
        reading: tokio::task::JoinHandle<()>,
    ) {
        loop {
            tokio::time::sleep(PING_AFTER / 2).await;
            // The link was replaced (its sender is gone) or closed: nothing to watch.
            let Some(tx) = tx.upgrade() else { return };
            let waiting = match pending.lock().expect("pending lock").as_ref() {
                None => return,
                Some(p) => !p.is_empty(),
            };
            let silent = heard.lock().expect("heard lock").elapsed();
            if !waiting || silent < PING_AFTER {
                continue;
            }
            if silent >= SILENT_LIMIT {
                tracing::warn!(master = %addr, ?silent, "the master stopped answering; trying the others");
                reading.abort();
                pending.lock().expect("pending lock").take();
                // After failing the calls: a registration waiting on this link holds the state.
                self.state.lock().await.avoid = Some(addr);
                return;
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let ping =
                Request { id, low_water: self.low_water(id), creds: Creds::root(), body: ClientRequest::MasterInfo };
            if tx.send(ping).is_err() {
                return;
            }
        }
    }

    async fn register(&self, link: &Link, session: Option<SessionId>) -> Result<SessionView, Retry> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let root = Creds::root();
        let classify = |e: ClientError| match e {
            ClientError::NotLeader { leader_addr, .. } => Retry::Reconnect(leader_addr),
            ClientError::UnknownSession(_) => Retry::NewSession,
            other => Retry::Later(other.to_string()),
        };
        let password_proof = match &self.opts.password {
            Some(pw) => {
                let req = Request { id, low_water: id, creds: root.clone(), body: ClientRequest::Challenge };
                match self.send(link, req).await.map_err(|e| Retry::Reconnect(None).with(e))? {
                    Ok(ClientReply::Challenge(nonce)) => {
                        Some(alces_proto::password_proof(&alces_proto::password_key(pw), &nonce))
                    }
                    Ok(_) => return Err(Retry::Later("unexpected answer to Challenge".into())),
                    Err(e) => return Err(classify(e)),
                }
            }
            None => None,
        };
        let reg = Register {
            session,
            path: self.opts.path.clone(),
            meta: self.opts.meta,
            password_proof,
            client_name: self.opts.client_name.clone(),
            tool_of: self.opts.tool_of,
            // Taken under the state lock, which calls wait for while the link is replaced.
            handles: self.held.lock().expect("held handles lock").iter().map(|(h, i)| (*h, *i)).collect(),
        };
        let req = Request { id, low_water: id, creds: root, body: ClientRequest::Register(reg) };
        match self.send(link, req).await {
            Ok(Ok(ClientReply::Registered(view))) => Ok(view),
            Ok(Ok(_)) => Err(Retry::Later("unexpected answer to Register".into())),
            Ok(Err(ClientError::Refused(why))) => Err(Retry::Refused(why)),
            Ok(Err(e)) => Err(classify(e)),
            Err(e) => Err(Retry::Reconnect(None).with(e)),
        }
    }

    /// The client addresses of the group's members, as the master at the end of `link` knows
    /// them (None if it cannot tell).
    async fn members(&self, link: &Link) -> Option<Vec<String>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = Request { id, low_water: id, creds: Creds::root(), body: ClientRequest::MasterInfo };
        match self.send(link, req).await {
            Ok(Ok(ClientReply::Masters { masters, .. })) => {
                let addrs: Vec<String> = masters.into_iter().map(|m| m.client_addr).filter(|a| !a.is_empty()).collect();
                (!addrs.is_empty()).then_some(addrs)
            }
            _ => None,
        }
    }

    /// Ends the session (files it holds open are released).
    pub async fn close(&self) {
        let _ = self.call(&Creds::root(), ClientRequest::CloseSession).await;
    }
}

/// `members` followed by the `given` addresses it lacks, without duplicates.
fn merge_peers(members: Vec<String>, given: &[String]) -> Vec<String> {
    let mut peers: Vec<String> = Vec::new();
    for a in members.into_iter().chain(given.iter().cloned()) {
        if !peers.contains(&a) {
            peers.push(a);
        }
    }
    peers
}

impl Retry {
    fn with(self, why: String) -> Retry {
        tracing::debug!(%why, "master link failed");
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_dropped_half_way_does_not_hold_the_low_water_mark_back() {
        // No master answers at this address: the call keeps retrying until it is dropped.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let opts = Options {
            masters: vec![addr],
            path: "/".into(),
            meta: false,
            password: None,
            client_name: "test".into(),
            tool_of: None,
            retry_for: Duration::from_secs(60),
            connect_timeout: Duration::from_millis(100),
        };
        let c = MasterClient::unconnected(opts);
        let root = Creds::root();
        let call = c.call(&root, ClientRequest::MasterInfo);
        assert!(tokio::time::timeout(Duration::from_millis(300), call).await.is_err(), "no master, no answer");
        assert!(c.in_flight.lock().unwrap().is_empty(), "the dropped call's id is still in flight");
        assert_eq!(c.low_water(7), 7);
    }

    #[test]
    fn the_members_come_first_then_the_given_addresses_they_lack() {
        let given = vec!["a:1".to_string(), "b:1".to_string(), "c:1".to_string()];
        let members = vec!["d:1".to_string(), "b:1".to_string(), "d:1".to_string()];
        assert_eq!(merge_peers(members, &given), ["d:1", "b:1", "a:1", "c:1"]);
    }
}
