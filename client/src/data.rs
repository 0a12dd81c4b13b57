//! The data path: reading replicas and writing through chains of chunkservers.
//!
//! Reads ask the master where a chunk is (cached briefly), read from one replica, and on a
//! CRC error or an unreachable server try the next replica (reporting a bad one). A replica
//! that has not answered within [`HEDGE_AFTER`] gets company: the next replica is asked too
//! and the first answer wins, so a server that hangs (stopped, cut off, a dying disk) delays
//! a read by that much instead of the call's timeout, and is asked last for a while after. A
//! long read is split into 1 MiB pieces read concurrently from different replicas. Writes get
//! a lease from the master, stream pieces of at most 1 MiB to the first server of the chain
//! with several pieces in flight, finish with a sync on every replica, and then commit the
//! new length. A failed chain is retried with a fresh lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alces_proto::link::client_cs::{
    DataError, DataReply, DataReplyFrame, DataRequest, DataRequestRef, MAX_READ, MAX_WRITE,
};
use alces_proto::link::client_master::{ClientReply, ClientRequest};
use alces_proto::types::{ChunkId, ChunkLocation, ChunkVersion, Creds, Inode, CHUNK_SIZE};
use alces_proto::{Connection, FrameReader, Handshake, LinkKind, Status};
use bytes::{Bytes, BytesMut};

use crate::master_link::{CallError, MasterClient};

/// How long a chunk's locations are trusted without asking the master again.
const LOCATION_TTL: Duration = Duration::from_secs(3);
/// Reads longer than this are split into pieces of this size, read concurrently and spread
/// over the replicas (a sequential reader's window comes from every replica at once).
const READ_PIECE: u64 = 1 << 20;
/// Pieces of one read in flight at most.
const READ_PARALLEL: usize = 4;
/// How long a replica may take to answer a read before the next one is asked as well. A
/// healthy replica answers a 1 MiB read in a few milliseconds here, a busy spinning disk in
/// tens; a hung server never does.
const HEDGE_AFTER: Duration = Duration::from_millis(300);
/// How long a server that lost such a race is asked after the others.
const SLOW_FOR: Duration = Duration::from_secs(10);
/// Pieces of a write in flight to the first chunkserver, at most (8 MiB).
const WRITE_WINDOW: usize = 8;
/// How long the chain may take to get ready for a write or to acknowledge its next piece
/// (written on every replica, not synced) before it is given up: a server that hangs costs a
/// write this much, then the retry's new version leaves it out (the leader gives up an order
/// to a server silent for 5 s).
const CHAIN_STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the chain may take to finish a write, its sync on every replica included.
const CHAIN_FINISH_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts (each with fresh locations or a fresh lease) before an I/O error is returned.
const ATTEMPTS: usize = 8;
/// Writes of one chunk that found a server of the chain out of space before the write fails
/// with ENOSPC.
const NO_SPACE_TRIES: usize = 2;

#[derive(Debug, Clone)]
pub(crate) struct Located {
    file_size: u64,
    chunk: Option<(ChunkId, ChunkVersion)>,
    locations: Vec<ChunkLocation>,
    at: Instant,
}

/// Bytes read from replicas, in the pieces they arrived in (slices of the received frames):
/// most reads are answered with a slice of one piece, without a copy.
#[derive(Debug, Default)]
pub struct Fetched {
    parts: Vec<Bytes>,
}

impl From<Bytes> for Fetched {
    fn from(b: Bytes) -> Fetched {
        let mut f = Fetched::default();
        f.push(b);
        f
    }
}

impl Fetched {
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.parts.push(b);
        }
    }

    fn append(&mut self, other: Fetched) {
        for b in other.parts {
            self.push(b);
        }
    }

    fn truncate(&mut self, len: usize) {
        let mut left = len;
        self.parts.retain_mut(|b| {
            b.truncate(left);
            left -= b.len();
            !b.is_empty()
        });
    }

    /// All the bytes, in one piece (a copy if they arrived in several).
    pub fn to_bytes(&self) -> Bytes {
        self.slice(0, self.len())
    }

    /// Up to `len` bytes from `at` (fewer past the end): a slice of one piece when they lie
    /// in one, otherwise a copy of the pieces they span.
    pub fn slice(&self, at: usize, len: usize) -> Bytes {
        let end = (at + len).min(self.len());
        let mut start = 0;
        let mut spanned = Vec::new();
        for b in &self.parts {
            let (from, to) = (at.max(start), end.min(start + b.len()));
            if from < to {
                spanned.push(b.slice(from - start..to - start));
            }
            start += b.len();
        }
        match spanned.len() {
            0 => Bytes::new(),
            1 => spanned.pop().expect("one piece"),
            _ => {
                let mut out = BytesMut::with_capacity(end - at);
                spanned.iter().for_each(|b| out.extend_from_slice(b));
                out.freeze()
            }
        }
    }
}

/// Connections to chunkservers and what is known about chunk locations.
pub struct DataPath {
    master: MasterClient,
    idle: Mutex<HashMap<String, Vec<Connection>>>,
    located: Mutex<HashMap<(Inode, u32), Located>>,
    /// Servers that let a read wait past [`HEDGE_AFTER`] while another replica answered, and
    /// until when they are asked last.
    slow: Mutex<HashMap<String, Instant>>,
    /// Counts invalidations: locations asked for before one are not kept after it.
    invalidations: AtomicU64,
}

fn status(e: CallError) -> Status {
    match e {
        CallError::Status(s) => s,
        CallError::Refused(_) => Status::Access,
        CallError::Unavailable(_) => Status::Io,
    }
}

impl DataPath {
    pub fn new(master: MasterClient) -> Self {
        DataPath {
            master,
            idle: Mutex::default(),
            located: Mutex::default(),
            slow: Mutex::default(),
            invalidations: AtomicU64::new(0),
        }
    }

    async fn connect(&self, addr: &str) -> Result<Connection, String> {
        if let Some(c) = self.idle.lock().expect("pool lock").get_mut(addr).and_then(Vec::pop) {
            return Ok(c);
        }
        let mut c = Connection::connect(addr, alces_proto::DEFAULT_MAX_FRAME, Duration::from_secs(3))
            .await
            .map_err(|e| e.to_string())?;
        Handshake::new(LinkKind::ClientChunkserver, "client", None).dial(&mut c).await.map_err(|e| e.to_string())?;
        Ok(c)
    }

    fn give_back(&self, addr: &str, c: Connection) {
        let mut idle = self.idle.lock().expect("pool lock");
        let v = idle.entry(addr.to_string()).or_default();
        if v.len() < 8 {
            v.push(c);
        }
    }

    /// Forgets what is cached about a file (after a write, a truncate, an error).
    pub fn invalidate(&self, inode: Inode) {
        let mut located = self.located.lock().expect("location lock");
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        located.retain(|(i, _), _| *i != inode);
    }

    /// To pass to [`DataPath::located`] with what the master answers to a request sent after.
    pub fn asked(&self) -> u64 {
        self.invalidations.load(Ordering::Relaxed)
    }

    /// Keeps where slot `index` of a file is, as the master answered to a request sent at
    /// `asked` ([`DataPath::asked`]), unless something was invalidated since.
    pub(crate) fn located(
        &self,
        asked: u64,
        inode: Inode,
        index: u32,
        file_size: u64,
        chunk: Option<(ChunkId, ChunkVersion)>,
        locations: Vec<ChunkLocation>,
    ) -> Located {
        let l = Located { file_size, chunk, locations, at: Instant::now() };
        let mut located = self.located.lock().expect("location lock");
        if self.invalidations.load(Ordering::Relaxed) == asked {
            located.insert((inode, index), l.clone());
        }
        l
    }

    async fn locate(&self, inode: Inode, index: u32, fresh: bool) -> Result<Located, Status> {
        if !fresh {
            if let Some(l) = self.located.lock().expect("location lock").get(&(inode, index)) {
                if l.at.elapsed() < LOCATION_TTL {
                    return Ok(l.clone());
                }
            }
        }
        let asked = self.asked();
        let reply =
            self.master.call(&Creds::root(), ClientRequest::ReadChunk { inode, index }).await.map_err(status)?;
        let ClientReply::ChunkLocations { file_size, chunk, locations } = reply else { return Err(Status::Io) };
        Ok(self.located(asked, inode, index, file_size, chunk, locations))
    }

    /// Reads up to `len` bytes at `offset` as stored (not beyond the file size the master
    /// knows); returns fewer bytes at the end of the file.
    pub async fn read(&self, inode: Inode, offset: u64, len: u32) -> Result<Fetched, Status> {
        use futures::StreamExt;
        let end = offset + len as u64;
        let mut pieces = Vec::new();
        let mut pos = offset;
        while pos < end {
            let stop = ((pos / READ_PIECE + 1) * READ_PIECE).min(end);
            pieces.push((pos, (stop - pos) as u32));
            pos = stop;
        }
        if let [(pos, want)] = pieces[..] {
            return Ok(self.read_piece(inode, pos, want, 0).await?.0);
        }
        let mut parts = futures::stream::iter(pieces.into_iter().enumerate())
            .map(|(i, (pos, want))| self.read_piece(inode, pos, want, i))
            .buffered(READ_PARALLEL);
        let mut out = Fetched::default();
        while let Some(part) = parts.next().await {
            let (data, whole) = part?;
            out.append(data);
            if !whole {
                break;
            }
        }
        Ok(out)
    }

    /// Reads a piece that lies within one chunk, starting with replica `prefer` (modulo their
    /// number); returns the bytes (fewer at the end of the file) and whether it got them all.
    async fn read_piece(&self, inode: Inode, pos: u64, want: u32, prefer: usize) -> Result<(Fetched, bool), Status> {
        let index = (pos / CHUNK_SIZE) as u32;
        let (mut data, file_size) = self.read_in_chunk(inode, index, (pos % CHUNK_SIZE) as u32, want, prefer).await?;
        data.truncate(file_size.saturating_sub(pos).min(want as u64) as usize);
        let whole = data.len() == want as usize;
        Ok((data, whole))
    }

    /// Reads within one chunk; returns the bytes (zeros for holes) and the file size.
    async fn read_in_chunk(
        &self,
        inode: Inode,
        index: u32,
        offset: u32,
        len: u32,
        prefer: usize,
    ) -> Result<(Fetched, u64), Status> {
        let mut last = Status::Io;
        for attempt in 0..ATTEMPTS {
            let l = self.locate(inode, index, attempt > 0).await?;
            let wanted = (l.file_size.saturating_sub(index as u64 * CHUNK_SIZE + offset as u64)).min(len as u64) as u32;
            let Some((chunk, version)) = l.chunk else {
                return Ok((Fetched::from(Bytes::from(vec![0u8; wanted as usize])), l.file_size));
            };
            if wanted == 0 {
                return Ok((Fetched::default(), l.file_size));
            }
            match self.read_racing(&l.locations, prefer, chunk, version, offset, wanted).await {
                Ok(data) => return Ok((data, l.file_size)),
                Err(status) => last = status,
            }
            tokio::time::sleep(Duration::from_millis(100 * (attempt as u64 + 1))).await;
        }
        Err(last)
    }

    /// The replicas in the order to ask them: from `prefer` on (modulo their number), the
    /// servers marked slow last, the one marked last at the very end.
    fn read_order<'a>(&self, locations: &'a [ChunkLocation], prefer: usize) -> Vec<&'a ChunkLocation> {
        let n = locations.len();
        let mut order: Vec<&ChunkLocation> = (0..n).map(|k| &locations[(prefer + k) % n]).collect();
        let mut slow = self.slow.lock().expect("slow servers lock");
        let now = Instant::now();
        slow.retain(|_, until| *until > now);
        if !slow.is_empty() {
            order.sort_by_key(|loc| slow.get(&loc.addr).copied());
        }
        order
    }

    /// Reads from the replicas in turn, asking the next one as well whenever [`HEDGE_AFTER`]
    /// passes without an answer; the first good answer wins and the reads still waiting are
    /// dropped with their connections. Bad replicas are reported.
    async fn read_racing<'a>(
        &self,
        locations: &'a [ChunkLocation],
        prefer: usize,
        chunk: ChunkId,
        version: ChunkVersion,
        offset: u32,
        len: u32,
    ) -> Result<Fetched, Status> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut waiting = self.read_order(locations, prefer).into_iter().peekable();
        let ask =
            |loc: &'a ChunkLocation| async move { (loc, self.read_replica(loc, chunk, version, offset, len).await) };
        // In the order asked: the replicas before the one that answers were waited for in vain.
        let mut asked: Vec<&ChunkLocation> = Vec::new();
        let mut running = FuturesUnordered::new();
        let mut last = Status::Io;
        loop {
            if running.is_empty() {
                let Some(loc) = waiting.next() else { return Err(last) };
                asked.push(loc);
                running.push(ask(loc));
            }
            let hedge = tokio::time::sleep(HEDGE_AFTER);
            tokio::select! {
                Some((loc, result)) = running.next() => match result {
                    Ok(data) => {
                        let pos = asked.iter().position(|l| l.addr == loc.addr).unwrap_or(asked.len());
                        self.mark_slow(&asked[..pos], loc);
                        return Ok(data);
                    }
                    Err(ReadFailure::Bad(e)) => {
                        tracing::warn!(chunk = %chunk.hex(), server = %loc.addr, error = %e, "bad replica");
                        let report = ClientRequest::ReportBadReplica { chunk, version, server: loc.id };
                        let _ = self.master.call(&Creds::root(), report).await;
                        last = Status::Io;
                    }
                    Err(ReadFailure::Stale(e)) | Err(ReadFailure::Unreachable(e)) => {
                        tracing::debug!(chunk = %chunk.hex(), server = %loc.addr, error = %e, "replica unusable");
                        last = Status::Io;
                    }
                },
                _ = hedge, if waiting.peek().is_some() => {
                    let loc = waiting.next().expect("peeked");
                    tracing::debug!(chunk = %chunk.hex(), server = %loc.addr, "a replica is slow, asking another");
                    asked.push(loc);
                    running.push(ask(loc));
                }
            }
        }
    }

    /// Marks servers that a read waited for in vain, and clears the mark of the one that
    /// answered.
    fn mark_slow(&self, servers: &[&ChunkLocation], answered: &ChunkLocation) {
        let mut slow = self.slow.lock().expect("slow servers lock");
        slow.remove(&answered.addr);
        for loc in servers {
            tracing::info!(server = %loc.addr, "a read waited for this chunkserver in vain; asking it last for a while");
            slow.insert(loc.addr.clone(), Instant::now() + SLOW_FOR);
        }
    }

    async fn read_replica(
        &self,
        loc: &ChunkLocation,
        chunk: ChunkId,
        version: ChunkVersion,
        offset: u32,
        len: u32,
    ) -> Result<Fetched, ReadFailure> {
        let mut conn = self.connect(&loc.addr).await.map_err(ReadFailure::Unreachable)?;
        let mut out = Fetched::default();
        let mut pos = offset;
        while pos < offset + len {
            let piece = (offset + len - pos).min(MAX_READ);
            let req = DataRequest::Read { chunk, version, offset: pos, len: piece };
            let reply = conn.call_frame(&req, Duration::from_secs(30)).await;
            // The bytes stay in the received frame.
            match reply.map(|frame| DataReplyFrame::decode(&frame)) {
                Ok(Ok(DataReplyFrame::Data(d))) if d.len() == piece as usize => out.push(d),
                Ok(Ok(DataReplyFrame::Other(DataReply::Error(DataError::Crc { block })))) => {
                    return Err(ReadFailure::Bad(format!("CRC error in block {block}")))
                }
                Ok(Ok(DataReplyFrame::Other(DataReply::Error(e)))) => return Err(ReadFailure::Stale(e.to_string())),
                Ok(Ok(other)) => return Err(ReadFailure::Unreachable(format!("unexpected {other:?}"))),
                Ok(Err(e)) => return Err(ReadFailure::Unreachable(format!("undecodable reply: {e}"))),
                Err(e) => return Err(ReadFailure::Unreachable(e.to_string())),
            }
            pos += piece;
        }
        self.give_back(&loc.addr, conn);
        Ok(out)
    }

    /// Writes `pieces` (offset within the chunk, bytes) to slot `index` of a file, durably on
    /// every replica, then records that the file is at least `size` bytes long.
    pub async fn write_chunk(
        &self,
        inode: Inode,
        index: u32,
        pieces: &[(u32, &[u8])],
        size: u64,
    ) -> Result<(), Status> {
        let mut last = String::new();
        let mut no_space = 0;
        for attempt in 0..ATTEMPTS {
            let lease = self
                .master
                .call(&Creds::root(), ClientRequest::WriteChunk { inode, index, after_failure: attempt > 0 })
                .await
                .map_err(status)?;
            let ClientReply::WriteLease { chunk, version, chain, new_chunk, .. } = lease else {
                return Err(Status::Io);
            };
            match self.write_chain((chunk, version, new_chunk), &chain, pieces).await {
                Ok(()) => {
                    let end =
                        ClientRequest::WriteEnd { inode, index, chunk, size, added: new_chunk.then_some(version) };
                    match self.master.call(&Creds::root(), end).await.map_err(status) {
                        Ok(_) => {
                            self.invalidate(inode);
                            return Ok(());
                        }
                        // A new chunk that can no longer be recorded (its lease lapsed, or
                        // the leader changed before the end): write it again.
                        Err(Status::Stale) if new_chunk => {
                            tracing::warn!(chunk = %chunk.hex(), attempt, "new chunk not recorded; writing again");
                            last = "the new chunk could not be recorded".into();
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => {
                    // A full disk stays full: a new chunk's next lease may place it on other
                    // servers, an existing chunk's keeps its servers. One more try, then ENOSPC.
                    if let ChainFailure::NoSpace = e {
                        no_space += 1;
                        if no_space == NO_SPACE_TRIES {
                            tracing::error!(inode = %inode, index, error = %e, "write failed");
                            return Err(Status::NoSpace);
                        }
                    }
                    tracing::warn!(chunk = %chunk.hex(), attempt, error = %e, "chained write failed; retrying with a new lease");
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(100 * (attempt as u64 + 1))).await;
                }
            }
        }
        tracing::error!(inode = %inode, index, error = %last, "write failed");
        Err(Status::Io)
    }

    /// Writes `pieces` through `chain` to `chunk` at `version`, a new chunk (whose replicas
    /// the chain creates) if `create`.
    async fn write_chain(
        &self,
        (chunk, version, create): (ChunkId, ChunkVersion, bool),
        chain: &[ChunkLocation],
        pieces: &[(u32, &[u8])],
    ) -> Result<(), ChainFailure> {
        let head = chain.first().ok_or("empty chain")?;
        let conn = self.connect(&head.addr).await?;
        let (mut reader, mut writer) = conn.split();
        // The start, the pieces and the finish go out without waiting for the chain to be
        // ready or for the pieces before the finish to be acknowledged: the head reads them
        // in order once the chain is up, and answers ready, each piece, then the finish (or
        // a failure, after which it closes the connection).
        let start = DataRequest::WriteStart { chunk, version, chain: chain[1..].to_vec(), create };
        if let Err(e) = writer.feed(&start).await {
            return Err(send_failure(e, &mut reader).await);
        }
        // Split at MAX_WRITE boundaries (so pieces after the first are whole, aligned blocks);
        // keep up to WRITE_WINDOW pieces unacknowledged.
        let mut split: Vec<(u32, &[u8])> = Vec::new();
        for &(off, data) in pieces {
            let mut pos = 0usize;
            while pos < data.len() {
                let at = off as u64 + pos as u64;
                let room = (MAX_WRITE as u64 - at % MAX_WRITE as u64) as usize;
                let take = room.min(data.len() - pos);
                split.push((at as u32, &data[pos..pos + take]));
                pos += take;
            }
        }
        let total = split.len() as u64;
        let (mut sent, mut acked) = (0u64, 0u64);
        let (mut ready, mut finish_sent) = (false, false);
        loop {
            while sent < total && sent - acked < WRITE_WINDOW as u64 {
                let (offset, data) = split[sent as usize];
                if let Err(e) = writer.feed(&DataRequestRef::WriteData { id: sent, offset, data }).await {
                    return Err(send_failure(e, &mut reader).await);
                }
                sent += 1;
            }
            if sent == total && !finish_sent {
                if let Err(e) = writer.feed(&DataRequest::WriteFinish { id: total }).await {
                    return Err(send_failure(e, &mut reader).await);
                }
                finish_sent = true;
            }
            if let Err(e) = writer.flush().await {
                return Err(send_failure(e, &mut reader).await);
            }
            let wait = if ready && acked == total { CHAIN_FINISH_TIMEOUT } else { CHAIN_STEP_TIMEOUT };
            let reply = chain_reply(&mut reader, wait).await?;
            if let Some(failure) = reported_failure(&reply) {
                return Err(failure);
            }
            match reply {
                DataReply::WriteReady if !ready => ready = true,
                other if !ready => return Err(format!("chain refused the write: {other:?}").into()),
                DataReply::WriteDone { id } if id == acked && acked < total => acked += 1,
                DataReply::WriteFinished { id } if id == total && acked == total => break,
                other if acked < total => return Err(format!("piece {acked}: {other:?}").into()),
                other => return Err(format!("finish: {other:?}").into()),
            }
        }
        if let Some(c) = Connection::rejoin(reader, writer) {
            self.give_back(&head.addr, c);
        }
        Ok(())
    }
}

/// Why a send to the chain's head failed. The head closes the connection after it answers a
/// failure, so a send can fail first: the reason is then in its last answers.
async fn send_failure(e: alces_proto::FrameError, reader: &mut FrameReader) -> ChainFailure {
    failure_in_replies(reader).await.unwrap_or(ChainFailure::Other(e.to_string()))
}

/// A failure the chain's head answered before it closed the connection, if any: read from
/// what is left of its answers (for a short while only: it answers before it closes).
async fn failure_in_replies(reader: &mut FrameReader) -> Option<ChainFailure> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let reply = tokio::time::timeout_at(deadline, reader.expect::<DataReply>()).await.ok()?.ok()?;
        if let Some(failure) = reported_failure(&reply) {
            return Some(failure);
        }
    }
}

/// The failure an answer of the chain's head reports, if it reports one.
fn reported_failure(reply: &DataReply) -> Option<ChainFailure> {
    match reply {
        DataReply::WriteFailed { error: DataError::NoSpace, .. } | DataReply::Error(DataError::NoSpace) => {
            Some(ChainFailure::NoSpace)
        }
        DataReply::WriteFailed { id, error } => Some(format!("piece {id}: {error}").into()),
        DataReply::Error(error) => Some(format!("chain refused the write: {error}").into()),
        _ => None,
    }
}

/// The chain's next answer, or an error when it does not come within `wait`.
async fn chain_reply(reader: &mut FrameReader, wait: Duration) -> Result<DataReply, String> {
    match tokio::time::timeout(wait, reader.expect::<DataReply>()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from the chain within {wait:?}")),
    }
}

/// Why a chained write failed.
#[derive(Debug, thiserror::Error)]
enum ChainFailure {
    /// A server of the chain has no room left for the write.
    #[error("no space left on a server of the chain")]
    NoSpace,
    #[error("{0}")]
    Other(String),
}

impl From<String> for ChainFailure {
    fn from(why: String) -> Self {
        ChainFailure::Other(why)
    }
}

impl From<&str> for ChainFailure {
    fn from(why: &str) -> Self {
        ChainFailure::Other(why.to_string())
    }
}

enum ReadFailure {
    /// The replica is corrupt (CRC): report it.
    Bad(String),
    /// The replica has another version or is gone: ask the master again.
    Stale(String),
    /// The server could not be reached.
    Unreachable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(parts: &[&[u8]]) -> Fetched {
        let mut f = Fetched::default();
        for p in parts {
            f.append(Fetched::from(Bytes::copy_from_slice(p)));
        }
        f
    }

    #[test]
    fn fetched_bytes_are_sliced_without_a_copy_within_a_piece() {
        let f = fetched(&[b"abcd", b"", b"efgh", b"ij"]);
        assert_eq!((f.len(), f.parts.len()), (10, 3), "empty pieces are not kept");
        let within = f.slice(5, 2);
        assert_eq!(&within[..], b"fg");
        assert!(f.parts[1].as_ptr_range().contains(&within.as_ptr()), "a slice of the piece");
        assert_eq!(&f.slice(2, 7)[..], b"cdefghi");
        assert_eq!(&f.slice(8, 100)[..], b"ij", "fewer past the end");
        assert!(f.slice(10, 5).is_empty() && f.slice(30, 5).is_empty());
        assert_eq!(&f.to_bytes()[..], b"abcdefghij");
    }

    #[test]
    fn fetched_bytes_are_cut_at_a_length() {
        let mut f = fetched(&[b"abcd", b"efgh", b"ij"]);
        f.truncate(6);
        assert_eq!((f.len(), &f.to_bytes()[..]), (6, &b"abcdef"[..]));
        assert_eq!(f.parts.len(), 2);
        f.truncate(100);
        assert_eq!(f.len(), 6);
        f.truncate(0);
        assert!(f.is_empty() && f.parts.is_empty());
    }
}
