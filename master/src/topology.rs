//! What a master knows about chunkservers and replicas: soft state, rebuilt from registrations
//! and chunk reports, never replicated through Raft (as in MooseFS). Every master keeps it for
//! every chunkserver, so a new leader knows where every chunk is at once.
//!
//! Also the channel for orders: the leader sends a [`ChunkOrder`] to a connected chunkserver
//! and awaits its `OrderDone`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alces_proto::link::cs_master::{ChunkOrder, ChunkState, CsLoad, CsRegister, MasterToCs};
use alces_proto::types::{ChunkId, ChunkLocation, ChunkVersion, ChunkserverId};
use rand::seq::SliceRandom;
use tokio::sync::{mpsc, oneshot};

/// How long the leader waits for a chunkserver to carry out an order.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(15);
/// An order is given up sooner when its server has sent nothing (chunkservers send a
/// heartbeat every 2 s) for this long: it is cut off or stopped, and a write lease waiting on
/// it would stall every writer of the chunk.
pub const ORDER_SILENCE: Duration = Duration::from_secs(5);

/// One replica as reported by its chunkserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    pub server: ChunkserverId,
    pub version: ChunkVersion,
    pub leaving: bool,
}

/// A chunkserver as this master sees it.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub id: ChunkserverId,
    pub addr: String,
    pub label: String,
    pub load: CsLoad,
    pub connected: bool,
    /// Seconds since its last message.
    pub silent_for: Duration,
    /// Whether its full chunk list has arrived since it (re)connected.
    pub reported: bool,
}

impl ServerView {
    /// Whether its copies count toward goals: while connected, and for `timeout` after it
    /// went silent (a short absence does not set off re-replication).
    pub fn counts(&self, timeout: Duration) -> bool {
        self.connected || self.silent_for < timeout
    }
}

struct Server {
    addr: String,
    label: String,
    load: CsLoad,
    last_seen: Instant,
    /// Present while connected: where to send orders.
    tx: Option<mpsc::UnboundedSender<MasterToCs>>,
    /// Connection generation, so a stale connection's cleanup does not drop a newer one.
    generation: u64,
    reported: bool,
    /// When its current connection registered.
    registered: Instant,
}

#[derive(Default)]
struct Inner {
    servers: BTreeMap<ChunkserverId, Server>,
    chunks: HashMap<ChunkId, Vec<Replica>>,
    orders: HashMap<u64, oneshot::Sender<Result<(), String>>>,
    next_order: u64,
    next_generation: u64,
    /// Bumped by every change to `chunks`: equal counts mean an unchanged replica map.
    replica_changes: u64,
}

#[derive(Default)]
pub struct Topology {
    inner: Mutex<Inner>,
}

fn set_replica(list: &mut Vec<Replica>, r: Replica) {
    match list.iter_mut().find(|x| x.server == r.server) {
        Some(x) => *x = r,
        None => list.push(r),
    }
}

impl Inner {
    fn drop_server_replicas(&mut self, id: ChunkserverId) {
        self.replica_changes += 1;
        self.chunks.retain(|_, list| {
            list.retain(|r| r.server != id);
            !list.is_empty()
        });
    }
}

impl Topology {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("topology lock")
    }

    /// A chunkserver connected and registered; returns its connection generation. Its old
    /// replica list is dropped: the full report that follows replaces it.
    pub fn register(&self, reg: &CsRegister, tx: mpsc::UnboundedSender<MasterToCs>) -> u64 {
        let mut g = self.lock();
        g.next_generation += 1;
        let generation = g.next_generation;
        g.drop_server_replicas(reg.id);
        g.servers.insert(
            reg.id,
            Server {
                addr: reg.data_addr.clone(),
                label: reg.label.clone(),
                load: reg.load.clone(),
                last_seen: Instant::now(),
                tx: Some(tx),
                generation,
                reported: false,
                registered: Instant::now(),
            },
        );
        generation
    }

    /// The connection of generation `generation` ended. Replicas stay known (the server may
    /// only have lost this master); they are dropped when the server is declared lost.
    pub fn disconnect(&self, id: ChunkserverId, generation: u64) {
        let mut g = self.lock();
        if let Some(s) = g.servers.get_mut(&id) {
            if s.generation == generation {
                s.tx = None;
            }
        }
    }

    /// Forgets a server and its replicas (lost for good, or removed by an operator).
    pub fn forget(&self, id: ChunkserverId) {
        let mut g = self.lock();
        g.servers.remove(&id);
        g.drop_server_replicas(id);
    }

    fn touch(g: &mut Inner, id: ChunkserverId) {
        g.replica_changes += 1;
        if let Some(s) = g.servers.get_mut(&id) {
            s.last_seen = Instant::now();
        }
    }

    pub fn report(&self, id: ChunkserverId, chunks: &[ChunkState], last: bool) {
        let mut g = self.lock();
        Self::touch(&mut g, id);
        for c in chunks {
            let list = g.chunks.entry(c.chunk).or_default();
            set_replica(list, Replica { server: id, version: c.version, leaving: c.leaving });
        }
        if last {
            if let Some(s) = g.servers.get_mut(&id) {
                s.reported = true;
            }
        }
    }

    /// Whether a server that registered less than `within` ago is connected and has not sent
    /// its whole chunk list yet: until it has, its copies look missing.
    pub fn reports_pending(&self, within: Duration) -> bool {
        let g = self.lock();
        g.servers.values().any(|s| s.tx.is_some() && !s.reported && s.registered.elapsed() < within)
    }

    pub fn changed(&self, id: ChunkserverId, added: &[ChunkState], removed: &[(ChunkId, ChunkVersion)]) {
        let mut g = self.lock();
        Self::touch(&mut g, id);
        for &(chunk, version) in removed {
            if let Some(list) = g.chunks.get_mut(&chunk) {
                list.retain(|r| !(r.server == id && r.version == version));
                if list.is_empty() {
                    g.chunks.remove(&chunk);
                }
            }
        }
        for c in added {
            set_replica(
                g.chunks.entry(c.chunk).or_default(),
                Replica { server: id, version: c.version, leaving: c.leaving },
            );
        }
    }

    pub fn heartbeat(&self, id: ChunkserverId, load: CsLoad) {
        let mut g = self.lock();
        if let Some(s) = g.servers.get_mut(&id) {
            s.last_seen = Instant::now();
            s.load = load;
        }
    }

    /// Records a replica's new version once its server carried out an order.
    pub fn set_replica_version(&self, chunk: ChunkId, server: ChunkserverId, version: ChunkVersion) {
        let mut g = self.lock();
        g.replica_changes += 1;
        let leaving =
            g.chunks.get(&chunk).and_then(|l| l.iter().find(|r| r.server == server)).is_some_and(|r| r.leaving);
        set_replica(g.chunks.entry(chunk).or_default(), Replica { server, version, leaving });
    }

    pub fn remove_replica(&self, chunk: ChunkId, server: ChunkserverId) {
        let mut g = self.lock();
        g.replica_changes += 1;
        if let Some(list) = g.chunks.get_mut(&chunk) {
            list.retain(|r| r.server != server);
            if list.is_empty() {
                g.chunks.remove(&chunk);
            }
        }
    }

    /// How many times the replica map has changed: a cache of anything computed from it is
    /// current while this count is.
    pub fn replica_changes(&self) -> u64 {
        self.lock().replica_changes
    }

    /// Every chunk some server holds a replica of, in id order.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        let mut ids: Vec<ChunkId> = self.lock().chunks.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn replicas(&self, chunk: ChunkId) -> Vec<Replica> {
        self.lock().chunks.get(&chunk).cloned().unwrap_or_default()
    }

    /// The highest version any server reported for a chunk.
    pub fn max_version(&self, chunk: ChunkId) -> Option<ChunkVersion> {
        self.lock().chunks.get(&chunk).and_then(|l| l.iter().map(|r| r.version).max())
    }

    /// The replicas a version bump should move, with their versions: those at `version`, or,
    /// when there are none, those at the highest version above it (a leader died between
    /// moving them and committing: they hold the data of `version`, nothing was written).
    pub fn current_copies(&self, chunk: ChunkId, version: ChunkVersion) -> Vec<(ChunkLocation, ChunkVersion)> {
        let at = |v: ChunkVersion| self.valid_locations(chunk, v).into_iter().map(move |l| (l, v)).collect::<Vec<_>>();
        let current = at(version);
        match self.max_version(chunk) {
            Some(ahead) if current.is_empty() && ahead > version => at(ahead),
            _ => current,
        }
    }

    /// Where a chunk's current version can be read, connected servers first.
    pub fn valid_locations(&self, chunk: ChunkId, version: ChunkVersion) -> Vec<ChunkLocation> {
        let mut out = self.copies_at(chunk, version);
        out.sort_by_key(|(connected, _)| !*connected);
        out.into_iter().map(|(_, l)| l).collect()
    }

    /// The connected servers with a copy of a chunk's `version`.
    pub fn connected_copies(&self, chunk: ChunkId, version: ChunkVersion) -> Vec<ChunkLocation> {
        self.copies_at(chunk, version).into_iter().filter_map(|(connected, l)| connected.then_some(l)).collect()
    }

    /// The servers with a copy of a chunk's `version`, and whether each is connected.
    fn copies_at(&self, chunk: ChunkId, version: ChunkVersion) -> Vec<(bool, ChunkLocation)> {
        let g = self.lock();
        g.chunks
            .get(&chunk)
            .into_iter()
            .flatten()
            .filter(|r| r.version == version)
            .filter_map(|r| {
                let s = g.servers.get(&r.server)?;
                Some((s.tx.is_some(), ChunkLocation { id: r.server, addr: s.addr.clone() }))
            })
            .collect()
    }

    /// The highest version of a chunk that a connected server holds.
    pub fn max_connected_version(&self, chunk: ChunkId) -> Option<ChunkVersion> {
        let g = self.lock();
        let connected = |r: &&Replica| g.servers.get(&r.server).is_some_and(|s| s.tx.is_some());
        g.chunks.get(&chunk)?.iter().filter(connected).map(|r| r.version).max()
    }

    pub fn location(&self, id: ChunkserverId) -> Option<ChunkLocation> {
        self.lock().servers.get(&id).map(|s| ChunkLocation { id, addr: s.addr.clone() })
    }

    pub fn servers(&self) -> Vec<ServerView> {
        let g = self.lock();
        g.servers
            .iter()
            .map(|(&id, s)| ServerView {
                id,
                addr: s.addr.clone(),
                label: s.label.clone(),
                load: s.load.clone(),
                connected: s.tx.is_some(),
                silent_for: s.last_seen.elapsed(),
                reported: s.reported,
            })
            .collect()
    }

    /// The servers whose copies count toward goals (see [`ServerView::counts`]).
    pub fn counting(&self, timeout: Duration) -> HashSet<ChunkserverId> {
        self.servers().into_iter().filter(|s| s.counts(timeout)).map(|s| s.id).collect()
    }

    /// Replica counts per chunk (chunk count, and the total of replicas known).
    pub fn chunk_count(&self) -> (usize, usize) {
        let g = self.lock();
        (g.chunks.len(), g.chunks.values().map(Vec::len).sum())
    }

    /// Whether chunkservers are connected, have all sent their chunk lists, and none has
    /// space left: a new chunk fails with ENOSPC rather than waiting for a server that is
    /// merely not connected yet (after a failover, or at start).
    pub fn all_full(&self) -> bool {
        let g = self.lock();
        let mut connected = g.servers.values().filter(|s| s.tx.is_some()).peekable();
        connected.peek().is_some() && connected.all(|s| s.reported && s.load.avail_bytes == 0)
    }

    /// Chooses `n` connected servers for new replicas, never one in `exclude` (the servers
    /// holding the chunk already): most free space first, spreading over labels when servers
    /// have them, the labels of the servers in `exclude` counting as taken.
    pub fn place(&self, n: usize, exclude: &[ChunkserverId]) -> Vec<ChunkLocation> {
        let g = self.lock();
        let mut candidates: Vec<(&ChunkserverId, &Server)> = g
            .servers
            .iter()
            .filter(|(id, s)| s.tx.is_some() && !exclude.contains(id) && s.load.avail_bytes > 0)
            .collect();
        candidates.sort_by(|a, b| b.1.load.avail_bytes.cmp(&a.1.load.avail_bytes).then(a.0.cmp(b.0)));
        // Servers within 10% of each other's free space count as equal and are taken in a
        // random order, so that servers sharing a disk (or equally empty ones) share the load.
        let mut start = 0;
        while start < candidates.len() {
            let top = candidates[start].1.load.avail_bytes;
            let end =
                start + candidates[start..].iter().take_while(|(_, s)| s.load.avail_bytes >= top - top / 10).count();
            candidates[start..end].shuffle(&mut rand::thread_rng());
            start = end;
        }
        let mut chosen: Vec<(ChunkserverId, &Server)> = Vec::new();
        let mut taken: HashSet<&str> =
            exclude.iter().filter_map(|id| g.servers.get(id)).map(|s| s.label.as_str()).collect();
        // First pass: at most one per label; second pass fills up.
        for spread in [true, false] {
            for (id, s) in &candidates {
                if chosen.len() >= n {
                    break;
                }
                if chosen.iter().any(|(c, _)| c == *id) {
                    continue;
                }
                if spread && !s.label.is_empty() && taken.contains(s.label.as_str()) {
                    continue;
                }
                taken.insert(&s.label);
                chosen.push((**id, s));
            }
        }
        chosen.into_iter().map(|(id, s)| ChunkLocation { id, addr: s.addr.clone() }).collect()
    }

    /// Sends an order and waits for its outcome.
    pub async fn order(&self, server: ChunkserverId, term: u64, op: ChunkOrder) -> Result<(), String> {
        let rx = {
            let mut g = self.lock();
            let Some(tx) = g.servers.get(&server).and_then(|s| s.tx.clone()) else {
                return Err(format!("chunkserver {server} is not connected"));
            };
            g.next_order += 1;
            let order = g.next_order;
            let (done_tx, done_rx) = oneshot::channel();
            g.orders.insert(order, done_tx);
            if tx.send(MasterToCs::Order { order, term, op }).is_err() {
                g.orders.remove(&order);
                return Err(format!("chunkserver {server} disconnected"));
            }
            (order, done_rx)
        };
        let (order, done_rx) = rx;
        let silent = async {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let quiet = self.lock().servers.get(&server).map_or(ORDER_SILENCE, |s| s.last_seen.elapsed());
                if quiet >= ORDER_SILENCE {
                    return quiet;
                }
            }
        };
        let failed = tokio::select! {
            r = tokio::time::timeout(ORDER_TIMEOUT, done_rx) => match r {
                Ok(Ok(res)) => return res,
                Ok(Err(_)) => return Err(format!("chunkserver {server} disconnected")),
                Err(_) => format!("chunkserver {server} did not answer within {ORDER_TIMEOUT:?}"),
            },
            quiet = silent => format!("chunkserver {server} has been silent for {quiet:.1?}"),
        };
        self.lock().orders.remove(&order);
        Err(failed)
    }

    pub fn order_done(&self, order: u64, result: Result<(), String>) {
        if let Some(tx) = self.lock().orders.remove(&order) {
            let _ = tx.send(result);
        }
    }

    /// Sends a message to every connected chunkserver (leadership changes).
    pub fn broadcast(&self, msg: MasterToCs) {
        for s in self.lock().servers.values() {
            if let Some(tx) = &s.tx {
                let _ = tx.send(msg.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: u64, avail: u64, label: &str) -> CsRegister {
        CsRegister {
            id: ChunkserverId(id),
            data_addr: format!("127.0.0.1:{}", 9000 + id),
            label: label.into(),
            load: CsLoad { avail_bytes: avail, ..Default::default() },
        }
    }

    #[test]
    fn placement_prefers_free_space_and_spreads_labels() {
        let t = Topology::default();
        let mut keep = Vec::new();
        for (id, avail, label) in [(1, 100, "a"), (2, 300, "a"), (3, 200, "b"), (4, 50, "c"), (5, 0, "d")] {
            let (tx, rx) = mpsc::unbounded_channel();
            keep.push(rx);
            t.register(&reg(id, avail, label), tx);
        }
        let ids = |v: Vec<ChunkLocation>| v.into_iter().map(|l| l.id.0).collect::<Vec<_>>();
        assert_eq!(ids(t.place(2, &[])), vec![2, 3], "most free space, different labels");
        assert_eq!(ids(t.place(3, &[])), vec![2, 3, 4], "a third label before a second copy on label a");
        assert_eq!(ids(t.place(4, &[])), vec![2, 3, 4, 1]);
        assert_eq!(ids(t.place(9, &[ChunkserverId(2)])), vec![3, 4, 1], "never a full server, never an excluded one");
        // A chunk held on 2 (label a): its next copies go to other labels first.
        assert_eq!(ids(t.place(2, &[ChunkserverId(2)])), vec![3, 4], "label a holds a copy already");
        assert_eq!(ids(t.place(1, &[ChunkserverId(2), ChunkserverId(3)])), vec![4]);
        assert_eq!(ids(t.place(1, &[ChunkserverId(3), ChunkserverId(4)])), vec![2], "label a is free again");
    }

    #[test]
    fn the_cluster_is_full_only_when_every_connected_server_reported_no_space() {
        let t = Topology::default();
        assert!(!t.all_full(), "no server at all: wait for one, not ENOSPC");
        let (tx1, _rx1) = mpsc::unbounded_channel();
        let (tx2, _rx2) = mpsc::unbounded_channel();
        t.register(&reg(1, 0, ""), tx1);
        let g2 = t.register(&reg(2, 0, ""), tx2);
        assert!(!t.all_full(), "chunk lists not in yet");
        t.report(ChunkserverId(1), &[], true);
        t.report(ChunkserverId(2), &[], true);
        assert!(t.all_full());
        t.heartbeat(ChunkserverId(2), CsLoad { avail_bytes: 1 << 30, ..Default::default() });
        assert!(!t.all_full(), "one server has room");
        t.disconnect(ChunkserverId(2), g2);
        assert!(t.all_full(), "a server that is gone does not count");
    }

    #[test]
    fn servers_with_about_the_same_free_space_share_new_chunks() {
        let t = Topology::default();
        let mut keep = Vec::new();
        for (id, avail) in [(1, 1000), (2, 990), (3, 950), (4, 500)] {
            let (tx, rx) = mpsc::unbounded_channel();
            keep.push(rx);
            t.register(&reg(id, avail, ""), tx);
        }
        let mut firsts = BTreeMap::new();
        for _ in 0..300 {
            let placed = t.place(1, &[]);
            *firsts.entry(placed[0].id.0).or_insert(0) += 1;
        }
        assert!(!firsts.contains_key(&4), "a much fuller server is not among the first: {firsts:?}");
        assert!(firsts.len() == 3 && firsts.values().all(|&n| n > 50), "ties shared: {firsts:?}");
    }

    #[test]
    fn replicas_follow_reports_and_changes() {
        let t = Topology::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        let g = t.register(&reg(1, 10, ""), tx);
        let st = |c, v| ChunkState { chunk: ChunkId(c), version: ChunkVersion(v), length: 0, leaving: false };
        t.report(ChunkserverId(1), &[st(8, 2), st(7, 1)], true);
        assert_eq!(t.chunk_ids(), vec![ChunkId(7), ChunkId(8)], "in id order");
        assert_eq!(t.valid_locations(ChunkId(7), ChunkVersion(1)).len(), 1);
        assert!(t.valid_locations(ChunkId(7), ChunkVersion(2)).is_empty(), "stale version is not valid");
        t.changed(ChunkserverId(1), &[st(7, 2)], &[(ChunkId(8), ChunkVersion(2))]);
        assert_eq!(t.replicas(ChunkId(7))[0].version, ChunkVersion(2));
        assert!(t.replicas(ChunkId(8)).is_empty());
        t.disconnect(ChunkserverId(1), g);
        assert!(!t.servers()[0].connected);
        assert!(t.counting(Duration::from_secs(60)).contains(&ChunkserverId(1)), "copies count for a while");
        assert!(t.counting(Duration::ZERO).is_empty(), "a lost server's copies do not count");
        assert_eq!(t.chunk_count(), (1, 1), "replicas stay known while disconnected");
        t.forget(ChunkserverId(1));
        assert_eq!(t.chunk_count(), (0, 0));
    }

    #[test]
    fn replicas_ahead_of_the_metadata_are_current_only_when_none_is_at_its_version() {
        let t = Topology::default();
        let mut keep = Vec::new();
        for id in 1..=3 {
            let (tx, rx) = mpsc::unbounded_channel();
            keep.push(rx);
            t.register(&reg(id, 10, ""), tx);
        }
        let st = |v| ChunkState { chunk: ChunkId(5), version: ChunkVersion(v), length: 0, leaving: false };
        t.report(ChunkserverId(1), &[st(3)], true);
        t.report(ChunkserverId(2), &[st(4)], true);
        t.report(ChunkserverId(3), &[st(4)], true);
        let servers = |v: Vec<(ChunkLocation, ChunkVersion)>| {
            let mut v: Vec<_> = v.into_iter().map(|(l, v)| (l.id.0, v.0)).collect();
            v.sort();
            v
        };
        assert_eq!(t.max_version(ChunkId(5)), Some(ChunkVersion(4)));
        assert_eq!(servers(t.current_copies(ChunkId(5), ChunkVersion(3))), vec![(1, 3)], "the committed version wins");
        assert_eq!(servers(t.current_copies(ChunkId(5), ChunkVersion(2))), vec![(2, 4), (3, 4)], "else the highest");
        assert!(t.current_copies(ChunkId(5), ChunkVersion(5)).is_empty(), "never an older version");
        assert_eq!(t.max_version(ChunkId(6)), None);
    }

    #[tokio::test]
    async fn orders_complete_through_order_done() {
        let t = std::sync::Arc::new(Topology::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        t.register(&reg(1, 10, ""), tx);
        let t2 = t.clone();
        let answer = tokio::spawn(async move {
            if let Some(MasterToCs::Order { order, .. }) = rx.recv().await {
                t2.order_done(order, Err("disk full".into()));
            }
        });
        let res =
            t.order(ChunkserverId(1), 3, ChunkOrder::Delete { chunk: ChunkId(1), version: ChunkVersion(1) }).await;
        assert_eq!(res, Err("disk full".into()));
        answer.await.unwrap();
        let res =
            t.order(ChunkserverId(9), 3, ChunkOrder::Delete { chunk: ChunkId(1), version: ChunkVersion(1) }).await;
        assert!(res.unwrap_err().contains("not connected"));
    }
}
