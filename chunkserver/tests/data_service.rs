//! The chunkserver's store and data service over real TCP on loopback with real chunk files:
//! a chunk file written by MooseFS 3 read in place, writes and reads across blocks, holes,
//! flipped bits caught by reads and by the scrubber, a chain of three losing its middle
//! server mid-write, chained writes after the next server restarted, a restart rebuilding
//! the chunk list, a folder marked for removal.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_chunkserver::data_service::{self, DataConfig};
use alces_chunkserver::folders::{FolderSpec, Folders};
use alces_chunkserver::format::DATA_OFFSET;
use alces_chunkserver::scrub::{self, ScrubStats};
use alces_chunkserver::store::{Store, StoreEvent};
use alces_proto::link::client_cs::{DataError, DataReply, DataRequest};
use alces_proto::types::{ChunkId, ChunkLocation, ChunkVersion, ChunkserverId, BLOCK_SIZE};
use alces_proto::{Connection, Handshake, LinkKind, Secret};
use alces_testkit::pseudo_random_bytes;
use tokio_util::sync::CancellationToken;

const BLOCK: usize = BLOCK_SIZE as usize;
const V1: ChunkVersion = ChunkVersion(1);

/// One chunkserver's store and data service, running in this process.
struct Node {
    id: ChunkserverId,
    store: Arc<Store>,
    addr: String,
    stop: CancellationToken,
}

impl Node {
    async fn start(id: u64, folders: &[(PathBuf, bool)]) -> Node {
        Node::start_on(id, folders, "127.0.0.1:0").await
    }

    async fn start_on(id: u64, folders: &[(PathBuf, bool)], bind: &str) -> Node {
        let specs = folders.iter().map(|(p, leaving)| FolderSpec::new(p.clone(), *leaving)).collect();
        let folders = Folders::open(specs).expect("opening the data folders");
        let scan = folders.scan();
        assert!(scan.damaged.is_empty(), "damaged files: {:?}", scan.damaged);
        let store = Store::new(folders, scan);
        let listener = tokio::net::TcpListener::bind(bind).await.expect("binding");
        let addr = listener.local_addr().expect("address").to_string();
        let stop = CancellationToken::new();
        let cfg = DataConfig::new(ChunkserverId(id), Secret::new("test secret"));
        tokio::spawn(data_service::serve(store.clone(), cfg, listener, stop.clone()));
        Node { id: ChunkserverId(id), store, addr, stop }
    }

    fn location(&self) -> ChunkLocation {
        ChunkLocation { id: self.id, addr: self.addr.clone() }
    }

    /// Stops serving and waits until the store (and its folder locks) is released.
    async fn shut_down(self) {
        self.stop.cancel();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.store) > 1 {
            assert!(Instant::now() < deadline, "the data service kept the store");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn client(addr: &str) -> Connection {
    let mut c =
        Connection::connect(addr, alces_proto::DEFAULT_MAX_FRAME, Duration::from_secs(3)).await.expect("connect");
    Handshake::new(LinkKind::ClientChunkserver, "test client", None).dial(&mut c).await.expect("handshake");
    c
}

async fn read(addr: &str, chunk: ChunkId, version: ChunkVersion, offset: u32, len: u32) -> Result<Vec<u8>, DataError> {
    let mut c = client(addr).await;
    match c.call::<_, DataReply>(&DataRequest::Read { chunk, version, offset, len }, Duration::from_secs(10)).await {
        Ok(DataReply::Data(d)) => Ok(d),
        Ok(DataReply::Error(e)) => Err(e),
        other => panic!("unexpected answer to a read: {other:?}"),
    }
}

/// Writes `pieces` through the chain `head, rest...` and syncs; splits at block boundaries.
async fn write(chain: &[ChunkLocation], chunk: ChunkId, pieces: &[(u32, Vec<u8>)]) -> Result<(), String> {
    write_new(chain, chunk, false, pieces).await
}

/// [`write`], to a new chunk (whose replicas the chain creates) if `create`.
async fn write_new(
    chain: &[ChunkLocation],
    chunk: ChunkId,
    create: bool,
    pieces: &[(u32, Vec<u8>)],
) -> Result<(), String> {
    let mut c = client(&chain[0].addr).await;
    let start = DataRequest::WriteStart { chunk, version: V1, chain: chain[1..].to_vec(), create };
    match c.call::<_, DataReply>(&start, Duration::from_secs(10)).await {
        Ok(DataReply::WriteReady) => {}
        other => return Err(format!("write start: {other:?}")),
    }
    let mut id = 0;
    for (offset, data) in pieces {
        let mut pos = 0;
        while pos < data.len() {
            let at = *offset as usize + pos;
            let take = (BLOCK - at % BLOCK).min(data.len() - pos);
            let req = DataRequest::WriteData { id, offset: at as u32, data: data[pos..pos + take].to_vec() };
            match c.call::<_, DataReply>(&req, Duration::from_secs(10)).await {
                Ok(DataReply::WriteDone { id: done }) if done == id => {}
                other => return Err(format!("piece {id}: {other:?}")),
            }
            id += 1;
            pos += take;
        }
    }
    match c.call::<_, DataReply>(&DataRequest::WriteFinish { id }, Duration::from_secs(10)).await {
        Ok(DataReply::WriteFinished { .. }) => Ok(()),
        other => Err(format!("finish: {other:?}")),
    }
}

fn folder(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

/// The file MooseFS wrote: 150,000 patterned bytes, a gap, 1,000 bytes of 0xAB at 300,000.
fn moosefs_fixture_content() -> Vec<u8> {
    let mut v: Vec<u8> = (0..150_000u32).map(|i| ((i * 7) % 251) as u8).collect();
    v.resize(300_000, 0);
    v.extend(std::iter::repeat_n(0xAB, 1000));
    v
}

/// A write to a new chunk (`create`) makes its replica on every server of the chain; a second
/// write under the same lease finds them there and keeps what the first wrote; a replica at
/// another version is neither replaced nor written.
#[tokio::test]
async fn a_write_to_a_new_chunk_creates_its_replicas_along_the_chain() {
    let tmp = alces_testkit::temp_dir("alces-cs-new-");
    let nodes = [
        Node::start(1, &[(folder(tmp.path(), "a"), false)]).await,
        Node::start(2, &[(folder(tmp.path(), "b"), false)]).await,
    ];
    let chain: Vec<ChunkLocation> = nodes.iter().map(Node::location).collect();
    let chunk = ChunkId(7);
    let first = pseudo_random_bytes(1, 3 * BLOCK + 100);
    let refused = write(&chain, chunk, &[(0, first.clone())]).await.expect_err("a write to a chunk nobody has");
    assert!(refused.contains("NoChunk"), "{refused}");
    write_new(&chain, chunk, true, &[(0, first.clone())]).await.expect("the first write to a new chunk");
    let second = pseudo_random_bytes(2, 1000);
    write_new(&chain, chunk, true, &[(first.len() as u32, second.clone())])
        .await
        .expect("a second write under the lease");
    let mut want = first;
    want.extend(&second);
    for n in &nodes {
        assert_eq!(n.store.version_of(chunk).await, Some(V1));
        let got = read(&n.addr, chunk, V1, 0, want.len() as u32).await.expect("reading the new chunk");
        assert!(got == want, "server {} holds other bytes", n.id);
    }

    let other = ChunkId(8);
    nodes[1].store.create(other, ChunkVersion(2)).await.expect("a replica at version 2");
    let refused = write_new(&chain, other, true, &[(0, vec![1; 10])]).await.expect_err("a new chunk at version 1");
    assert!(refused.contains("WrongVersion") || refused.contains("version 2"), "{refused}");
    assert_eq!(nodes[1].store.version_of(other).await, Some(ChunkVersion(2)));
    assert_eq!(nodes[1].store.length(other, ChunkVersion(2)).await, Ok(0));
    for n in nodes {
        n.shut_down().await;
    }
}

#[tokio::test]
async fn a_chunk_file_written_by_moosefs_3_is_read_in_place_and_can_be_extended() {
    let tmp = alces_testkit::temp_dir("alces-cs-mfs-");
    let hdd = folder(tmp.path(), "hdd");
    let name = "chunk_0000000000000001_00000001.mfs";
    std::fs::create_dir_all(hdd.join("00")).unwrap();
    let fixture = alces_testkit::crate_dir().join("tests/data/00").join(name);
    std::fs::copy(&fixture, hdd.join("00").join(name)).unwrap();
    let chunk = ChunkId(1);

    let node = Node::start(1, &[(hdd.clone(), false)]).await;
    let list = node.store.list().await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!((list[0].chunk, list[0].version, list[0].length), (chunk, V1, 5 * BLOCK_SIZE as u32));
    let want = moosefs_fixture_content();
    let got = read(&node.addr, chunk, V1, 0, want.len() as u32).await.expect("reading the MooseFS chunk");
    assert!(got == want, "the MooseFS chunk reads differently");
    // Past the blocks MooseFS wrote: zeros.
    let tail = read(&node.addr, chunk, V1, 5 * BLOCK as u32, 2 * BLOCK as u32).await.unwrap();
    assert!(tail.iter().all(|&b| b == 0));

    // Extend it past a gap (blocks 5 and 6 stay holes), then restart and read everything.
    let extra = pseudo_random_bytes(7, 5000);
    write(&[node.location()], chunk, &[(7 * BLOCK as u32 + 10, extra.clone())]).await.unwrap();
    node.shut_down().await;
    let node = Node::start(1, &[(hdd, false)]).await;
    let all = read(&node.addr, chunk, V1, 0, 8 * BLOCK as u32).await.expect("reading after the restart");
    assert!(all[..want.len()] == want[..]);
    assert!(all[want.len()..7 * BLOCK + 10].iter().all(|&b| b == 0), "the gap is not zeros");
    assert!(all[7 * BLOCK + 10..7 * BLOCK + 10 + extra.len()] == extra[..]);
    node.shut_down().await;
}

#[tokio::test]
async fn writes_and_reads_cross_block_boundaries_and_holes_read_as_zeros() {
    let tmp = alces_testkit::temp_dir("alces-cs-rw-");
    let node = Node::start(1, &[(folder(tmp.path(), "a"), false), (folder(tmp.path(), "b"), false)]).await;
    let chunk = ChunkId(0x42);
    node.store.create(chunk, V1).await.unwrap();
    // A piece straddling blocks 0-2, one inside block 5 (3 and 4 stay holes), one ending at
    // the very end of the chunk.
    let a = pseudo_random_bytes(1, 2 * BLOCK + 777);
    let b = pseudo_random_bytes(2, 1234);
    let c = pseudo_random_bytes(3, 3 * BLOCK + 5);
    let c_at = (64 << 20) - c.len() as u32;
    let pieces = vec![(100, a.clone()), (5 * BLOCK as u32 + 99, b.clone()), (c_at, c.clone())];
    write(&[node.location()], chunk, &pieces).await.unwrap();

    let head = read(&node.addr, chunk, V1, 0, 6 * BLOCK as u32).await.unwrap();
    assert!(head[..100].iter().all(|&x| x == 0));
    assert!(head[100..100 + a.len()] == a[..]);
    assert!(head[100 + a.len()..5 * BLOCK + 99].iter().all(|&x| x == 0), "the hole is not zeros");
    assert!(head[5 * BLOCK + 99..5 * BLOCK + 99 + b.len()] == b[..]);
    let end = read(&node.addr, chunk, V1, c_at, c.len() as u32).await.unwrap();
    assert!(end == c);
    // Reading past the chunk is refused, not truncated silently.
    assert_eq!(read(&node.addr, chunk, V1, c_at, c.len() as u32 + 1).await, Err(DataError::Range));
    // The wrong version is refused.
    assert!(matches!(read(&node.addr, chunk, ChunkVersion(2), 0, 10).await, Err(DataError::WrongVersion { .. })));
    node.shut_down().await;
}

/// Flips one bit of a replica's data on disk.
fn flip_bit(dirs: &[PathBuf], chunk: ChunkId, offset: u64) {
    let name = format!("chunk_{}_{:08X}.mfs", chunk.hex(), V1.0);
    let path = dirs
        .iter()
        .map(|d| d.join(format!("{:02X}", chunk.0 & 0xff)).join(&name))
        .find(|p| p.exists())
        .expect("replica file");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(DATA_OFFSET + offset) as usize] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test]
async fn a_flipped_bit_is_caught_on_read_and_by_the_scrubber() {
    let tmp = alces_testkit::temp_dir("alces-cs-crc-");
    let dirs = vec![folder(tmp.path(), "a"), folder(tmp.path(), "b")];
    let node = Node::start(1, &[(dirs[0].clone(), false), (dirs[1].clone(), false)]).await;
    let (read_victim, scrub_victim, healthy) = (ChunkId(10), ChunkId(11), ChunkId(12));
    let data = pseudo_random_bytes(9, 4 * BLOCK);
    for id in [read_victim, scrub_victim, healthy] {
        node.store.create(id, V1).await.unwrap();
        write(&[node.location()], id, &[(0, data.clone())]).await.unwrap();
    }
    node.shut_down().await; // close the open files before touching them
    flip_bit(&dirs, read_victim, BLOCK as u64 + 12345);
    flip_bit(&dirs, scrub_victim, 3 * BLOCK as u64 + 1);
    let node = Node::start(1, &[(dirs[0].clone(), false), (dirs[1].clone(), false)]).await;
    let mut events = node.store.subscribe();

    // A read of the bad block is an error naming the block, never the bad bytes; the block
    // before it still reads.
    assert_eq!(read(&node.addr, read_victim, V1, BLOCK as u32 + 1, 10).await, Err(DataError::Crc { block: 1 }));
    match events.recv().await.unwrap() {
        StoreEvent::Damaged(id, v) => assert_eq!((id, v), (read_victim, V1)),
        other => panic!("expected a damage report, got {other:?}"),
    }

    let stats = Arc::new(ScrubStats::default());
    let stop = CancellationToken::new();
    tokio::spawn(scrub::run(node.store.clone(), 512 << 20, stats.clone(), stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.corrupt.load(Ordering::Relaxed) == 0 || stats.rounds.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the scrubber found nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    assert_eq!(stats.corrupt.load(Ordering::Relaxed), 1);
    match events.recv().await.unwrap() {
        StoreEvent::Damaged(id, _) => assert_eq!(id, scrub_victim),
        other => panic!("expected a damage report, got {other:?}"),
    }
    // Both corrupt replicas are dropped (no longer served or reported); the healthy one stays.
    let left: Vec<ChunkId> = node.store.list().await.iter().map(|c| c.chunk).collect();
    assert_eq!(left, vec![healthy]);
    assert_eq!(read(&node.addr, healthy, V1, 0, data.len() as u32).await.unwrap(), data);
    node.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_that_loses_its_middle_server_fails_the_write_and_every_acknowledged_piece_is_on_every_live_replica() {
    let tmp = alces_testkit::temp_dir("alces-cs-chain-");
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Node::start(i + 1, &[(folder(tmp.path(), &format!("cs{i}")), false)]).await);
    }
    let chunk = ChunkId(0x77);
    for n in &nodes {
        n.store.create(chunk, V1).await.unwrap();
    }
    let chain: Vec<ChunkLocation> = nodes.iter().map(Node::location).collect();
    let mut c = client(&chain[0].addr).await;
    let start = DataRequest::WriteStart { chunk, version: V1, chain: chain[1..].to_vec(), create: false };
    assert!(matches!(c.call::<_, DataReply>(&start, Duration::from_secs(10)).await, Ok(DataReply::WriteReady)));

    // Write block after block; stop the middle server after 100 acknowledged pieces.
    let piece = |i: u64| pseudo_random_bytes(1000 + i, BLOCK);
    let mut acked = 0u64;
    let mut middle = Some(nodes.remove(1));
    let failure = loop {
        if acked == 100 {
            if let Some(m) = middle.take() {
                m.stop.cancel();
            }
        }
        if acked == 1000 {
            panic!("the write kept succeeding without its middle server");
        }
        let req =
            DataRequest::WriteData { id: acked, offset: ((acked % 1024) * BLOCK_SIZE) as u32, data: piece(acked) };
        match c.call::<_, DataReply>(&req, Duration::from_secs(20)).await {
            Ok(DataReply::WriteDone { id }) if id == acked => acked += 1,
            Ok(DataReply::WriteFailed { error, .. }) | Ok(DataReply::Error(error)) => break error,
            other => panic!("piece {acked}: unexpected {other:?}"),
        }
    };
    // The error names the broken link, so the client knows to ask for a new lease and retry.
    match &failure {
        DataError::Chain { server, .. } => assert_eq!(*server, ChunkserverId(2), "{failure}"),
        other => panic!("expected a chain error, got {other}"),
    }
    assert!(acked >= 100, "only {acked} pieces acknowledged");
    // Every acknowledged piece is on both live replicas.
    for n in &nodes {
        for i in 0..acked.min(1024) {
            let got = read(&n.addr, chunk, V1, (i * BLOCK_SIZE) as u32, BLOCK as u32).await.unwrap();
            assert!(got == piece(i), "server {} lacks acknowledged piece {i}", n.id);
        }
    }
    for n in nodes {
        n.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_writes_go_on_after_the_next_server_restarts() {
    let tmp = alces_testkit::temp_dir("alces-cs-reuse-");
    let head = Node::start(1, &[(folder(tmp.path(), "a"), false)]).await;
    let mut next = Node::start(2, &[(folder(tmp.path(), "b"), false)]).await;
    let data = |id: u64| pseudo_random_bytes(id, 5000 + id as usize);
    let mut written = Vec::new();
    for round in 0..3u64 {
        // Several writes one after the other: the head keeps its connection to the next
        // server between them.
        for k in 0..4u64 {
            let chunk = ChunkId(round * 10 + k);
            head.store.create(chunk, V1).await.unwrap();
            next.store.create(chunk, V1).await.unwrap();
            write(&[head.location(), next.location()], chunk, &[(0, data(chunk.0))]).await.unwrap();
            written.push(chunk);
        }
        // The next server goes away and comes back on the same address: the head's idle
        // connection to it is dead, and the following write still goes through.
        let addr = next.addr.clone();
        next.shut_down().await;
        next = Node::start_on(2, &[(folder(tmp.path(), "b"), false)], &addr).await;
    }
    for chunk in written {
        let want = data(chunk.0);
        for node in [&head, &next] {
            assert_eq!(read(&node.addr, chunk, V1, 0, want.len() as u32).await.unwrap(), want, "{chunk:?}");
        }
    }
    head.shut_down().await;
    next.shut_down().await;
}

#[tokio::test]
async fn a_restart_rebuilds_the_chunk_list_and_a_folder_marked_for_removal_receives_nothing() {
    let tmp = alces_testkit::temp_dir("alces-cs-scan-");
    let (keep, leave) = (folder(tmp.path(), "keep"), folder(tmp.path(), "leave"));
    // First both folders are in use, so some chunks land in each.
    let node = Node::start(1, &[(keep.clone(), false), (leave.clone(), false)]).await;
    for id in 0..20u64 {
        node.store.create(ChunkId(id), V1).await.unwrap();
        write(&[node.location()], ChunkId(id), &[(0, pseudo_random_bytes(id, 1000 + id as usize))]).await.unwrap();
    }
    let mut before = node.store.list().await;
    before.sort_by_key(|c| c.chunk);
    node.shut_down().await;
    let count = |dir: &Path| -> usize {
        (0..256).map(|i| std::fs::read_dir(dir.join(format!("{i:02X}"))).map(|r| r.count()).unwrap_or(0)).sum()
    };
    let in_leave = count(&leave);
    assert!(in_leave > 0, "the folders were not both used");

    // Restart with the second folder marked for removal: the list is rebuilt from disk (the
    // replicas there now marked leaving), and new chunks only go to the first folder.
    let node = Node::start(1, &[(keep.clone(), false), (leave.clone(), true)]).await;
    let mut after = node.store.list().await;
    after.sort_by_key(|c| c.chunk);
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((b.chunk, b.version, b.length), (a.chunk, a.version, a.length));
    }
    assert_eq!(after.iter().filter(|c| c.leaving).count(), in_leave);
    for id in 0..20u64 {
        let want = pseudo_random_bytes(id, 1000 + id as usize);
        assert_eq!(read(&node.addr, ChunkId(id), V1, 0, want.len() as u32).await.unwrap(), want);
    }
    for id in 100..140u64 {
        node.store.create(ChunkId(id), V1).await.unwrap();
        write(&[node.location()], ChunkId(id), &[(0, vec![1; 100])]).await.unwrap();
    }
    assert_eq!(count(&leave), in_leave, "a folder marked for removal received a chunk");
    node.shut_down().await;
}
