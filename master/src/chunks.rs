//! The leader's side of the data path: where a chunk can be read, write leases (version bump
//! on the replicas first, then through Raft), truncation of a partial chunk, and the chunk
//! locks that keep two clients from writing one chunk at once.
//!
//! Order of a version bump: the replicas move from `v` to a new version, and only then is it
//! committed. If the leader dies in between, the replicas are ahead of the metadata but hold
//! the same data (no client got the lease, so nothing was written): the next leader moves
//! them on when no replica is at `v`. A replica that missed the bump stays at `v` and is
//! stale forever. A new version is above every version any server reported, so a version
//! handed out by a leader that died before committing it is never handed out again for
//! other data.
//!
//! A new chunk is not committed when its lease is given: its replicas are created under the
//! lease, and its record goes into the file with the first write end, in the commit that
//! records the file's new length. Until then the lease keeps the orphan collection away from
//! the replicas; an end that finds no such lease of this leader's term (it lapsed, or the
//! leader changed) is refused with `Stale`, the writer writes again under a new lease, and
//! the replicas it left are collected as orphans. Nothing was acknowledged under them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alces_proto::link::client_master::{ClientError, ClientReply};
use alces_proto::link::cs_master::ChunkOrder;
use alces_proto::types::{ChunkId, ChunkLocation, ChunkVersion, FileKind, Inode, SessionId, CHUNK_SIZE};
use alces_proto::Status;
use futures::future::join_all;

use crate::master::Master;
use crate::namespace::ops::{MetaReply, OpBody};
use crate::namespace::read::View;

/// A slot's chunk and version (`None`: a hole) and the servers with a valid copy of it.
pub type SlotPlace = (Option<(ChunkId, ChunkVersion)>, Vec<ChunkLocation>);

/// A lease not renewed (by another write lease or its end) for this long lapses.
const LEASE_TIME: Duration = Duration::from_secs(60);
/// A lease nobody writes under is kept this long, so that the same client's next write-out
/// to the chunk (a sequential writer's next buffer) needs no version change; another client
/// takes it over at once.
const IDLE_LEASE: Duration = Duration::from_secs(5);
/// Leases kept, lapsed ones included, before the lapsed ones are dropped.
const LEASES_KEPT: usize = 10_000;
/// Chunk ids the leader sets aside at a time for new chunks (one commit per this many).
const RESERVED_IDS: u32 = 1024;
/// For this long after a master starts, or after a chunkserver registers with it, a copy the
/// master does not know of may only not be reported yet (a running chunkserver tries a
/// master again at least every 5 s): a version change of a chunk below its goal waits,
/// because the copy it would leave behind would be stale for good.
const REPORT_GRACE: Duration = Duration::from_secs(6);

struct Lease {
    session: SessionId,
    version: ChunkVersion,
    chain: Vec<ChunkLocation>,
    holders: u32,
    expires: Instant,
    /// A new chunk whose record is not committed yet: the file slot it is for, and the term
    /// of the leader that created its replicas. Its record goes in with the first write end
    /// ([`OpBody::AddChunkEnd`]), so a new chunk costs one commit, not two.
    unrecorded: Option<((Inode, u32), u64)>,
}

type SlotLock = Arc<tokio::sync::Mutex<()>>;

/// A chunk, its version, and the chunk it replaced (for copy-on-write).
type Allocated = (ChunkId, ChunkVersion, Option<(ChunkId, ChunkVersion)>);

/// Write leases and per-slot locks (leader soft state; a new leader starts empty and
/// clients simply ask again).
#[derive(Default)]
pub struct Leases {
    leases: Mutex<HashMap<ChunkId, Lease>>,
    /// The new chunk of each file slot whose lease has no committed record yet.
    unrecorded: Mutex<HashMap<(Inode, u32), ChunkId>>,
    slots: Mutex<HashMap<(Inode, u32), SlotLock>>,
    /// Chunks whose replicas are being moved to a new version (or created) right now.
    bumping: Mutex<HashSet<ChunkId>>,
    /// Chunk ids set aside through Raft and not given out yet. Unique for good, so they
    /// stay usable if this node leads again later.
    ids: tokio::sync::Mutex<std::ops::Range<u64>>,
}

/// Marks a chunk as being bumped until dropped.
struct Bumping<'a> {
    leases: &'a Leases,
    chunk: ChunkId,
}

impl Drop for Bumping<'_> {
    fn drop(&mut self) {
        self.leases.bumping.lock().expect("bump lock").remove(&self.chunk);
    }
}

impl Leases {
    fn slot(&self, inode: Inode, index: u32) -> SlotLock {
        let mut slots = self.slots.lock().expect("slot lock");
        if slots.len() > 10_000 {
            slots.retain(|_, m| Arc::strong_count(m) > 1);
        }
        slots.entry((inode, index)).or_default().clone()
    }

    /// Records a lease, and the slot of one on a new chunk not recorded yet. Lapsed leases
    /// are dropped once there are [`LEASES_KEPT`]: they grant nothing (every use checks the
    /// time), and each file written once would otherwise leave its lease behind for good.
    fn insert(&self, chunk: ChunkId, lease: Lease) {
        let mut unrecorded = self.unrecorded.lock().expect("lease lock");
        let mut leases = self.leases.lock().expect("lease lock");
        if leases.len() >= LEASES_KEPT {
            let now = Instant::now();
            leases.retain(|_, l| l.expires > now);
            unrecorded.retain(|_, c| leases.contains_key(c));
        }
        if let Some((slot, _)) = lease.unrecorded {
            unrecorded.insert(slot, chunk);
        }
        leases.insert(chunk, lease);
    }

    /// Whether a write lease on `chunk` is in force or its version is being moved (the
    /// replication manager waits).
    pub fn is_leased(&self, chunk: ChunkId) -> bool {
        self.bumping.lock().expect("bump lock").contains(&chunk)
            || self.leases.lock().expect("lease lock").get(&chunk).is_some_and(|l| l.expires > Instant::now())
    }

    fn start_bump(&self, chunk: ChunkId) -> Option<Bumping<'_>> {
        self.bumping.lock().expect("bump lock").insert(chunk).then_some(Bumping { leases: self, chunk })
    }

    /// Number of leases a write is going on under (for the monitor; idle ones kept for reuse
    /// do not count).
    pub fn active(&self) -> usize {
        let now = Instant::now();
        self.leases.lock().expect("lease lock").values().filter(|l| l.holders > 0 && l.expires > now).count()
    }
}

fn chunk_reply(reply: MetaReply) -> Result<Allocated, ClientError> {
    match reply {
        MetaReply::Chunk { chunk, version, copy_from } => Ok((chunk, version, copy_from)),
        other => Err(unexpected(other)),
    }
}

fn unexpected(reply: MetaReply) -> ClientError {
    tracing::error!(?reply, "unexpected reply from the namespace");
    ClientError::Status(Status::Io)
}

impl Master {
    /// Where slot `index` of a file can be read.
    pub async fn read_chunk(&self, inode: Inode, index: u32) -> Result<ClientReply, ClientError> {
        let view = self.read().await?;
        let file = view.open_inode(inode)?;
        if file.kind != FileKind::File {
            return Err(Status::Invalid.into());
        }
        let (chunk, locations) = self.slot_place(&view, inode, index)?;
        Ok(ClientReply::ChunkLocations { file_size: file.size, chunk, locations })
    }

    /// Slot `index` of a file and the servers with a valid copy of it.
    pub fn slot_place(&self, view: &View<'_>, inode: Inode, index: u32) -> Result<SlotPlace, ClientError> {
        Ok(match view.file_chunk(inode, index)?.filter(|(_, rec)| rec.version.0 > 0) {
            None => (None, Vec::new()),
            Some((id, rec)) => (Some((id, rec.version)), self.topology.valid_locations(id, rec.version)),
        })
    }

    /// Moves the replicas of a chunk to a new version with the `targets` orders, keeps those
    /// that confirmed it, and commits the version they all hold; returns them and that version.
    ///
    /// A server that did not confirm may still have carried the order out (its answer was
    /// lost): it would then hold the new version without the writes made under it, and count
    /// as a valid copy once it is back. So when any server fails, the ones that confirmed are
    /// moved on once more, past any version the silent one can hold, before the commit.
    ///
    /// For a chunk being created (`commit` false) nothing is committed: its record goes in
    /// with the first write end, under the lease; replicas left by a leader that died before
    /// are deleted as chunks nobody uses.
    ///
    /// With `grow` (the goal, and the version the replicas are at), a chunk below its goal
    /// first gets copies on new servers, which then move on with the others (see
    /// [`Master::add_copies`]).
    async fn bump(
        &self,
        chunk: ChunkId,
        new_version: ChunkVersion,
        targets: Vec<(ChunkLocation, ChunkOrder)>,
        commit: bool,
        grow: Option<(usize, ChunkVersion)>,
    ) -> Result<(Vec<ChunkLocation>, ChunkVersion), ClientError> {
        if targets.is_empty() {
            return Err(ClientError::Unavailable(format!("no chunkserver can take chunk {}", chunk.hex())));
        }
        let Some(_bumping) = self.leases.start_bump(chunk) else {
            return Err(ClientError::Unavailable(format!("chunk {} is being changed", chunk.hex())));
        };
        let term = self.term();
        let (mut version, mut targets) = (new_version, targets);
        if let Some((goal, from)) = grow {
            for to in self.add_copies(chunk, from, goal, term).await {
                targets.push((to, ChunkOrder::SetVersion { chunk, from, to: version }));
            }
        }
        loop {
            let results = join_all(targets.into_iter().map(|(loc, op)| async move {
                let res = self.topology.order(loc.id, term, op).await;
                (loc, res)
            }))
            .await;
            let mut chain = Vec::new();
            let mut failed = false;
            for (loc, res) in results {
                match res {
                    Ok(()) => {
                        self.topology.set_replica_version(chunk, loc.id, version);
                        chain.push(loc);
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!(chunk = %chunk.hex(), server = %loc.id, error = %e, "chunk order failed");
                    }
                }
            }
            if chain.is_empty() {
                return Err(ClientError::Unavailable(format!(
                    "no replica of chunk {} took version {version}",
                    chunk.hex()
                )));
            }
            if !failed {
                if commit {
                    self.propose(OpBody::SetChunkVersion { chunk, version }).await?;
                }
                return Ok((chain, version));
            }
            let next = ChunkVersion(self.next_version(chunk, version).0.max(version.0 + 1));
            tracing::info!(chunk = %chunk.hex(), from = %version, to = %next, "moving the confirmed replicas past a version a silent server may hold");
            targets =
                chain.into_iter().map(|l| (l, ChunkOrder::SetVersion { chunk, from: version, to: next })).collect();
            version = next;
        }
    }

    /// An id for a new chunk, from the range set aside (a new range when it is used up).
    async fn new_chunk_id(&self) -> Result<ChunkId, ClientError> {
        let mut ids = self.leases.ids.lock().await;
        if ids.is_empty() {
            match self.propose(OpBody::ReserveChunkIds { count: RESERVED_IDS }).await? {
                MetaReply::ChunkIds { first, count } => *ids = first.0..first.0 + count as u64,
                other => return Err(unexpected(other)),
            }
        }
        let id = ids.next().ok_or(ClientError::Status(Status::Io))?;
        Ok(ChunkId(id))
    }

    /// A version for `chunk` above `current` and above every version a server reported.
    fn next_version(&self, chunk: ChunkId, current: ChunkVersion) -> ChunkVersion {
        let top = self.topology.max_version(chunk).map_or(current, |v| v.max(current));
        ChunkVersion(top.0 + 1)
    }

    /// Moves a chunk none of whose replicas is at its committed version, but some of which
    /// are ahead of it, to a new version (see the module comment). Returns whether it did.
    pub async fn adopt_ahead(&self, chunk: ChunkId, version: ChunkVersion) -> Result<bool, ClientError> {
        let copies = self.topology.current_copies(chunk, version);
        if copies.iter().all(|(_, v)| *v == version) {
            return Ok(false);
        }
        let to = self.next_version(chunk, version);
        let targets = copies.into_iter().map(|(l, from)| (l, ChunkOrder::SetVersion { chunk, from, to })).collect();
        let (_, to) = self.bump(chunk, to, targets, true, None).await?;
        tracing::info!(chunk = %chunk.hex(), from = %version, to = %to, "replicas ahead of the metadata adopted");
        Ok(true)
    }

    /// Gives the session a write lease on slot `index` of a file. After a failed write
    /// (`after_failure`) the session's lease is not reused: the version moves on.
    pub async fn write_lease(
        &self,
        session: SessionId,
        inode: Inode,
        index: u32,
        after_failure: bool,
    ) -> Result<ClientReply, ClientError> {
        if u64::from(index) >= u64::MAX / CHUNK_SIZE {
            return Err(Status::FileTooBig.into());
        }
        let slot = self.leases.slot(inode, index);
        let _guard = slot.lock().await;
        let view = self.read().await?;
        let file = view.open_inode(inode)?;
        if file.kind != FileKind::File {
            return Err(Status::Invalid.into());
        }
        let existing = view.file_chunk(inode, index)?;
        let goal = file.goal.0 as usize;
        if let Some((id, rec)) = existing {
            let mut leases = self.leases.leases.lock().expect("lease lock");
            if let Some(l) = leases.get_mut(&id) {
                let now = Instant::now();
                let live = l.expires > now && l.version == rec.version && rec.refs == 1;
                if live && l.session != session && l.holders > 0 {
                    return Err(ClientError::Unavailable(format!(
                        "chunk {} is being written by another client",
                        id.hex()
                    )));
                }
                // After a failed write the version moves on (the chain may have lost a replica).
                // So it does when the chunk is below its goal and nobody writes under the lease
                // right now: new copies join the chain first (see below).
                let grows = || l.holders == 0 && self.can_add_copies(id, rec.version, goal);
                if live && l.session == session && !after_failure && !grows() {
                    l.holders += 1;
                    l.expires = now + LEASE_TIME;
                    return Ok(ClientReply::WriteLease {
                        file_size: file.size,
                        chunk: id,
                        version: l.version,
                        chain: l.chain.clone(),
                        new_chunk: false,
                    });
                }
                leases.remove(&id);
            }
        }
        let Some((id, rec)) = existing else {
            if let Some(reply) = self.reuse_unrecorded(session, file.size, inode, index, after_failure)? {
                return Ok(reply);
            }
            // A new chunk: its record and version come with the first write end. The lease
            // is taken before any replica exists, so that the orphan collection leaves them
            // alone from the start.
            let chunk = self.new_chunk_id().await?;
            let version = self.next_version(chunk, ChunkVersion(0));
            let unrecorded = Some(((inode, index), self.term()));
            let places = self.topology.place(goal, &[]);
            if places.is_empty() {
                return Err(match self.topology.all_full() {
                    true => Status::NoSpace.into(),
                    false => ClientError::Unavailable(format!("no chunkserver can take chunk {}", chunk.hex())),
                });
            }
            if !after_failure {
                // The chain makes the replicas as it writes (the client's start says so):
                // no orders to wait for.
                return Ok(self.grant(session, file.size, chunk, version, places, unrecorded));
            }
            // After a failed write the replicas are made by orders first, and the chain is
            // the servers that made theirs: a server that is full or gone drops out of it
            // rather than failing the write again.
            let targets = Self::create_orders(places, chunk, version);
            self.grant(session, file.size, chunk, version, Vec::new(), unrecorded);
            let created = self.bump(chunk, version, targets, false, None).await;
            let mut unrecorded = self.leases.unrecorded.lock().expect("lease lock");
            let mut leases = self.leases.leases.lock().expect("lease lock");
            return match (created, leases.get_mut(&chunk)) {
                (Ok((chain, version)), Some(l)) => {
                    (l.version, l.chain) = (version, chain.clone());
                    Ok(ClientReply::WriteLease { file_size: file.size, chunk, version, chain, new_chunk: true })
                }
                (created, _) => {
                    leases.remove(&chunk);
                    unrecorded.remove(&(inode, index));
                    created.and(Err(ClientError::Unavailable(format!("lease of chunk {} lapsed", chunk.hex()))))
                }
            };
        };
        if rec.refs == 1 && rec.version.0 > 0 {
            self.known_copies_complete(id, rec.version, goal)?;
        }
        let (chunk, version, copy_from) = if rec.refs > 1 {
            chunk_reply(self.propose(OpBody::AllocChunk { inode, index, replace: Some(id) }).await?)?
        } else {
            (id, rec.version, None)
        };
        let new_version = self.next_version(chunk, version);
        let targets: Vec<(ChunkLocation, ChunkOrder)> = match copy_from {
            Some((old, old_v)) => self
                .topology
                .valid_locations(old, old_v)
                .into_iter()
                .map(|l| (l, ChunkOrder::Duplicate { from: (old, old_v), to: (chunk, new_version), length: None }))
                .collect(),
            // Version 0: a record allocated before any replica existed, by a leader that died.
            None if version.0 == 0 => Self::create_orders(self.topology.place(goal, &[]), chunk, new_version),
            None => self
                .topology
                .current_copies(chunk, version)
                .into_iter()
                .map(|(l, from)| (l, ChunkOrder::SetVersion { chunk, from, to: new_version }))
                .collect(),
        };
        // A chunk below its goal gets its missing copies now: the replication manager leaves
        // leased chunks alone, so one written without pause would otherwise stay below it.
        let grow = (copy_from.is_none() && version.0 > 0).then_some((goal, version));
        let (chain, new_version) = self.bump(chunk, new_version, targets, true, grow).await?;
        Ok(self.grant(session, file.size, chunk, new_version, chain, None))
    }

    /// Refuses, for a retry, to move `chunk` to a new version while a copy of it may be on a
    /// chunkserver that has not reported it yet: after a restart of the masters, a copy on a
    /// server that had not connected again would have been left at the old version, stale,
    /// and the chunk one copy short with nothing lost yet to show for it. Only a chunk with
    /// fewer known copies than its goal waits, and only for [`REPORT_GRACE`].
    fn known_copies_complete(&self, chunk: ChunkId, version: ChunkVersion, goal: usize) -> Result<(), ClientError> {
        if self.topology.connected_copies(chunk, version).len() >= goal {
            return Ok(());
        }
        if self.started.elapsed() < REPORT_GRACE || self.topology.reports_pending(REPORT_GRACE) {
            return Err(ClientError::Unavailable(format!(
                "chunk {} is below its goal while chunkservers are still reporting their chunks",
                chunk.hex()
            )));
        }
        Ok(())
    }

    /// The lease of a new chunk not recorded yet in slot `index` of a file: taken again by
    /// the session that holds it (a second write-out before the first ended), refused to
    /// any other while it lasts. `None` when there is none to reuse (none at all, lapsed, or
    /// the session's last write under it failed: its replicas are then left to the orphan
    /// collection and a new chunk is made).
    fn reuse_unrecorded(
        &self,
        session: SessionId,
        file_size: u64,
        inode: Inode,
        index: u32,
        after_failure: bool,
    ) -> Result<Option<ClientReply>, ClientError> {
        let mut unrecorded = self.leases.unrecorded.lock().expect("lease lock");
        let Some(&chunk) = unrecorded.get(&(inode, index)) else { return Ok(None) };
        let mut leases = self.leases.leases.lock().expect("lease lock");
        let now = Instant::now();
        match leases.get_mut(&chunk) {
            Some(l) if l.expires > now && l.unrecorded.is_some_and(|(_, term)| term == self.term()) => {
                if l.session != session && l.holders > 0 {
                    return Err(ClientError::Unavailable(format!(
                        "chunk {} is being written by another client",
                        chunk.hex()
                    )));
                }
                if l.session == session && !after_failure {
                    l.holders += 1;
                    l.expires = now + LEASE_TIME;
                    return Ok(Some(ClientReply::WriteLease {
                        file_size,
                        chunk,
                        version: l.version,
                        chain: l.chain.clone(),
                        new_chunk: true,
                    }));
                }
            }
            _ => {}
        }
        leases.remove(&chunk);
        unrecorded.remove(&(inode, index));
        Ok(None)
    }

    /// The servers with a copy of `chunk` at `version` that count (connected), and the
    /// servers new copies could go to, as many as the goal lacks. A server holding only a
    /// stale copy (an older version) can take one: the fetched copy replaces it. Left out,
    /// the stale copies of a chunk written without pause (the replication manager, which
    /// deletes them, leaves leased chunks alone) took every spare server in turn, and the
    /// chunk stayed at one copy.
    fn copies_and_places(
        &self,
        chunk: ChunkId,
        version: ChunkVersion,
        goal: usize,
    ) -> (Vec<ChunkLocation>, Vec<ChunkLocation>) {
        let copies = self.topology.connected_copies(chunk, version);
        if copies.is_empty() || copies.len() >= goal {
            return (copies, Vec::new());
        }
        let holding: Vec<_> =
            self.topology.replicas(chunk).iter().filter(|r| r.version >= version).map(|r| r.server).collect();
        let places = self.topology.place(goal - copies.len(), &holding);
        (copies, places)
    }

    /// Whether `chunk` at `version` is below its goal and a server could take another copy.
    fn can_add_copies(&self, chunk: ChunkId, version: ChunkVersion, goal: usize) -> bool {
        !self.copies_and_places(chunk, version, goal).1.is_empty()
    }

    /// Copies of `chunk` at `version` fetched by new servers from the ones that have it, up to
    /// `goal`; returns the servers that took theirs. Called under the bump marker, by a lease
    /// with nobody writing, so the replicas do not change meanwhile. The replication manager
    /// leaves leased chunks alone: without this a chunk written without pause stays below
    /// its goal for as long as the writes go on.
    async fn add_copies(&self, chunk: ChunkId, version: ChunkVersion, goal: usize, term: u64) -> Vec<ChunkLocation> {
        let (sources, places) = self.copies_and_places(chunk, version, goal);
        let results = join_all(places.into_iter().map(|to| {
            let order = ChunkOrder::Replicate { chunk, version, sources: sources.clone() };
            async move { (self.topology.order(to.id, term, order).await, to) }
        }))
        .await;
        let mut added = Vec::new();
        for (res, to) in results {
            match res {
                Ok(()) => {
                    tracing::info!(chunk = %chunk.hex(), server = %to.id, "a copy added to a chunk below its goal before its new lease");
                    self.topology.set_replica_version(chunk, to.id, version);
                    added.push(to);
                }
                Err(e) => {
                    tracing::warn!(chunk = %chunk.hex(), server = %to.id, error = %e, "no copy added to a chunk below its goal")
                }
            }
        }
        added
    }

    /// Orders creating empty replicas of `chunk` at `version` on `places`.
    fn create_orders(
        places: Vec<ChunkLocation>,
        chunk: ChunkId,
        version: ChunkVersion,
    ) -> Vec<(ChunkLocation, ChunkOrder)> {
        places.into_iter().map(|l| (l, ChunkOrder::Create { chunk, version })).collect()
    }

    /// Records a write lease of `session` on a chunk whose replicas are at `version`.
    fn grant(
        &self,
        session: SessionId,
        file_size: u64,
        chunk: ChunkId,
        version: ChunkVersion,
        chain: Vec<ChunkLocation>,
        unrecorded: Option<((Inode, u32), u64)>,
    ) -> ClientReply {
        let expires = Instant::now() + LEASE_TIME;
        let lease = Lease { session, version, chain: chain.clone(), holders: 1, expires, unrecorded };
        self.leases.insert(chunk, lease);
        ClientReply::WriteLease { file_size, chunk, version, chain, new_chunk: unrecorded.is_some() }
    }

    /// A writer is done: record the length and release its hold on the lease. With `added`
    /// (the lease was for a new chunk at that version), the chunk's record goes into slot
    /// `index` in the same commit, if this leader still holds the lease it created the
    /// replicas under, or was recorded already (a retry of an end that was committed).
    /// Otherwise the replicas may be gone as orphans: `Stale`, and the writer writes again
    /// under a new lease.
    pub async fn write_end(
        &self,
        inode: Inode,
        index: u32,
        chunk: ChunkId,
        size: u64,
        added: Option<ChunkVersion>,
    ) -> Result<ClientReply, ClientError> {
        let op = match added {
            None => OpBody::WriteEnd { inode, size },
            Some(version) => {
                let slot = self.leases.slot(inode, index);
                let _guard = slot.lock().await;
                if self.hold_unrecorded(inode, index, chunk, version) {
                    let reply = self.propose(OpBody::AddChunkEnd { inode, index, chunk, version, size }).await;
                    let mut unrecorded = self.leases.unrecorded.lock().expect("lease lock");
                    let mut leases = self.leases.leases.lock().expect("lease lock");
                    let mut written = Vec::new();
                    match reply {
                        Ok(_) => {
                            // Recorded: from now on an ordinary lease on an existing chunk.
                            unrecorded.remove(&(inode, index));
                            if let Some(l) = leases.get_mut(&chunk) {
                                l.unrecorded = None;
                                written = l.chain.clone();
                            }
                        }
                        Err(ClientError::Status(Status::Exists)) => {
                            // Only after a change of leader can the slot have been filled.
                            unrecorded.remove(&(inode, index));
                            leases.remove(&chunk);
                            return Err(Status::Stale.into());
                        }
                        Err(_) => {}
                    }
                    drop((unrecorded, leases));
                    // Every server of the chain that wrote the chunk has a replica (its own
                    // report of it may still be on the way).
                    for server in written {
                        self.topology.set_replica_version(chunk, server.id, version);
                    }
                    return self.end_reply(chunk, reply?);
                }
                if self.read().await?.file_chunk(inode, index)?.map(|(id, _)| id) != Some(chunk) {
                    return Err(Status::Stale.into());
                }
                OpBody::WriteEnd { inode, size }
            }
        };
        let reply = self.propose(op).await?;
        self.end_reply(chunk, reply)
    }

    /// Whether this leader holds an unrecorded lease on `chunk` at `version` for the slot,
    /// created in its current term and not lapsed; if so the lease is renewed, so that the
    /// orphan collection keeps away from the replicas while their record is committed.
    fn hold_unrecorded(&self, inode: Inode, index: u32, chunk: ChunkId, version: ChunkVersion) -> bool {
        let mut leases = self.leases.leases.lock().expect("lease lock");
        let now = Instant::now();
        match leases.get_mut(&chunk) {
            Some(l)
                if l.expires > now && l.version == version && l.unrecorded == Some(((inode, index), self.term())) =>
            {
                l.expires = now + LEASE_TIME;
                true
            }
            _ => false,
        }
    }

    /// Releases a writer's hold on the lease of `chunk` after its end was committed.
    fn end_reply(&self, chunk: ChunkId, reply: MetaReply) -> Result<ClientReply, ClientError> {
        let mut leases = self.leases.leases.lock().expect("lease lock");
        if let Some(l) = leases.get_mut(&chunk) {
            l.holders = l.holders.saturating_sub(1);
            if l.holders == 0 {
                l.expires = Instant::now() + IDLE_LEASE;
            }
        }
        match reply {
            MetaReply::Attr(a) => Ok(ClientReply::Attr(a)),
            other => Err(unexpected(other)),
        }
    }

    /// Before a file shrinks to `size`: cut the chunk that will hold its last byte, so that
    /// the bytes beyond the new end read as zeros if the file grows again.
    pub async fn cut_last_chunk(&self, inode: Inode, size: u64) -> Result<(), ClientError> {
        let (index, offset) = ((size / CHUNK_SIZE) as u32, size % CHUNK_SIZE);
        if offset == 0 {
            return Ok(()); // whole chunks only: the namespace drops them
        }
        let slot = self.leases.slot(inode, index);
        let _guard = slot.lock().await;
        let view = self.read().await?;
        let file = view.open_inode(inode)?;
        if size >= file.size {
            return Ok(());
        }
        let Some((id, rec)) = view.file_chunk(inode, index)? else { return Ok(()) };
        if rec.version.0 == 0 {
            return Ok(());
        }
        let (chunk, new_version, targets) = if rec.refs > 1 {
            let (new, v, _) = chunk_reply(self.propose(OpBody::AllocChunk { inode, index, replace: Some(id) }).await?)?;
            let nv = self.next_version(new, v);
            let targets = self
                .topology
                .valid_locations(id, rec.version)
                .into_iter()
                .map(|l| (l, ChunkOrder::Duplicate { from: (id, rec.version), to: (new, nv), length: Some(offset) }))
                .collect();
            (new, nv, targets)
        } else {
            let nv = self.next_version(id, rec.version);
            let targets = self
                .topology
                .current_copies(id, rec.version)
                .into_iter()
                .map(|(l, from)| (l, ChunkOrder::Truncate { chunk: id, from, to: nv, length: offset }))
                .collect();
            (id, nv, targets)
        };
        self.leases.leases.lock().expect("lease lock").remove(&id);
        self.bump(chunk, new_version, targets, true, None).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(expires: Instant, unrecorded: Option<((Inode, u32), u64)>) -> Lease {
        Lease { session: SessionId(1), version: ChunkVersion(1), chain: Vec::new(), holders: 0, expires, unrecorded }
    }

    #[test]
    fn lapsed_leases_are_dropped_once_there_are_many() {
        let leases = Leases::default();
        let past = Instant::now() - Duration::from_secs(1);
        let later = Instant::now() + LEASE_TIME;
        leases.insert(ChunkId(1), lease(past, Some(((Inode(7), 0), 1))));
        leases.insert(ChunkId(2), lease(later, Some(((Inode(8), 0), 1))));
        for id in 3..LEASES_KEPT as u64 + 1 {
            leases.insert(ChunkId(id), lease(past, None));
        }
        assert_eq!(leases.leases.lock().unwrap().len(), LEASES_KEPT, "nothing dropped below the bound");
        leases.insert(ChunkId(0), lease(later, None));
        let kept: HashSet<ChunkId> = leases.leases.lock().unwrap().keys().copied().collect();
        assert_eq!(kept, HashSet::from([ChunkId(0), ChunkId(2)]), "the lapsed ones went, the live ones stayed");
        let slots = leases.unrecorded.lock().unwrap().clone();
        assert_eq!(slots, HashMap::from([((Inode(8), 0), ChunkId(2))]), "with the slot of the lapsed new chunk");
    }
}
