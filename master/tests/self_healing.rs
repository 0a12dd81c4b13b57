//! Self-healing with real processes (one master, several chunkservers on loopback): a killed
//! chunkserver's chunks are copied back to their goal, returning servers' extra and stale copies
//! are trimmed, corrupt copies (found by a read or by the scrubber) are replaced, a folder marked
//! for removal empties, an expired trash entry's chunk files disappear, and chunks move from a
//! full chunkserver to an empty one.
//!
//! Every check looks at both sides: what the master reports (`FileInfo`, as `alces fileinfo`)
//! and the chunk files on the chunkservers' disks. Data is read back through the client's data
//! path, and replica by replica straight from each chunkserver.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use alces_chunkserver::format::{parse_name, DATA_OFFSET};
use alces_client::data::DataPath;
use alces_client::master_link::{MasterClient, Options};
use alces_ops::api::{ClusterView, CopiesCount, ReplicationView};
use alces_ops::launcher::{fetch_cluster, Cluster, Layout};
use alces_proto::link::client_cs::{DataError, DataReply, DataRequest, MAX_READ};
use alces_proto::link::client_master::{ChunkReport, ClientReply, ClientRequest};
use alces_proto::types::{
    ChunkId, ChunkLocation, ChunkVersion, Creds, FileKind, Inode, Name, TrashTime, BLOCK_SIZE, CHUNK_SIZE,
};
use alces_proto::{Connection, Handshake, LinkKind, DEFAULT_MAX_FRAME};
use alces_testkit::{pseudo_random_bytes, TempDir};
use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;

const MIB: usize = 1 << 20;
const BLOCK: u32 = BLOCK_SIZE as u32;
/// How long the master waits before a silent chunkserver's copies stop counting (seconds).
const CHUNKSERVER_TIMEOUT: u64 = 2;
/// Deadline for the cluster to repair itself after a fault (passes run every 2 s; the machine
/// may be busy with other builds and tests).
const HEAL: Duration = Duration::from_secs(45);

/// A cluster of one master and `chunkservers` chunkservers, and a client session.
struct Env {
    cluster: Cluster,
    master: MasterClient,
    _dir: TempDir,
}

async fn start(chunkservers: usize, goal: u8, chunkserver_extra: &[&str]) -> Result<Env> {
    start_sized(chunkservers, goal, chunkserver_extra, None).await
}

/// [`start`], every data folder limited to `hdd_size` (in hdd.cfg).
async fn start_sized(chunkservers: usize, goal: u8, chunkserver_extra: &[&str], hdd_size: Option<&str>) -> Result<Env> {
    // A single master has no previous leader whose writes could still be under way.
    start_delayed(chunkservers, goal, chunkserver_extra, hdd_size, 0).await
}

/// [`start_sized`] with a master that repairs nothing for `delay` seconds after it starts.
async fn start_delayed(
    chunkservers: usize,
    goal: u8,
    chunkserver_extra: &[&str],
    hdd_size: Option<&str>,
    delay: u64,
) -> Result<Env> {
    start_group(1, chunkservers, goal, chunkserver_extra, hdd_size, delay).await
}

/// [`start_delayed`] with `masters` masters.
async fn start_group(
    masters: usize,
    chunkservers: usize,
    goal: u8,
    chunkserver_extra: &[&str],
    hdd_size: Option<&str>,
    delay: u64,
) -> Result<Env> {
    let dir = alces_testkit::temp_dir("alces-self-healing-");
    let mut layout = Layout::new(dir.path(), masters, chunkservers)?;
    layout.hdd_size = hdd_size.map(str::to_string);
    layout.goal = goal;
    layout.master_extra.push(format!("CHUNKSERVER_TIMEOUT = {CHUNKSERVER_TIMEOUT}"));
    layout.master_extra.push(format!("REPLICATIONS_DELAY_INIT = {delay}"));
    layout.chunkserver_extra.extend(chunkserver_extra.iter().map(|s| s.to_string()));
    let cluster = tokio::task::block_in_place(|| Cluster::up(&layout))?;
    let master = MasterClient::connect(Options::new(cluster.client_addrs())).await?;
    Ok(Env { cluster, master, _dir: dir })
}

fn name(s: &str) -> Name {
    Name::new(s.as_bytes().to_vec()).expect("a valid name")
}

/// A file written by a test: its pieces (file offset, bytes), each inside one chunk.
struct TestFile {
    name: String,
    inode: Inode,
    pieces: Vec<(u64, Vec<u8>)>,
}

impl TestFile {
    fn chunk_indexes(&self) -> BTreeSet<u32> {
        self.pieces.iter().map(|(off, _)| (off / CHUNK_SIZE) as u32).collect()
    }
}

impl Env {
    async fn call(&self, req: ClientRequest) -> Result<ClientReply> {
        Ok(self.master.call(&Creds::root(), req).await?)
    }

    /// Creates `/name` and writes `pieces` (offset, length) of pseudo-random bytes.
    async fn write_file(&self, name_: &str, seed: u64, pieces: &[(u64, usize)]) -> Result<TestFile> {
        let create = ClientRequest::Create {
            parent: Inode::ROOT,
            name: name(name_),
            kind: FileKind::File,
            mode: 0o644,
            umask: 0o022,
            rdev: 0,
            open: true,
        };
        let inode = match self.call(create).await? {
            ClientReply::Changed { attr: Some(a), .. } => a.inode,
            other => bail!("create {name_}: unexpected {other:?}"),
        };
        let mut file = TestFile { name: name_.into(), inode, pieces: Vec::new() };
        for (i, &(offset, len)) in pieces.iter().enumerate() {
            let data = pseudo_random_bytes(seed * 1000 + i as u64, len);
            self.write_piece(&mut file, offset, data).await?;
        }
        self.call(ClientRequest::Release { inode }).await?;
        Ok(file)
    }

    /// Writes `data` at `offset` (inside one chunk) and records it in `file`.
    async fn write_piece(&self, file: &mut TestFile, offset: u64, data: Vec<u8>) -> Result<()> {
        let index = (offset / CHUNK_SIZE) as u32;
        let in_chunk = offset % CHUNK_SIZE;
        ensure!(in_chunk + data.len() as u64 <= CHUNK_SIZE, "a piece must fit in one chunk");
        let size = file.pieces.iter().map(|(o, d)| o + d.len() as u64).chain([offset + data.len() as u64]).max();
        DataPath::new(self.master.clone())
            .write_chunk(file.inode, index, &[(in_chunk as u32, &data)], size.unwrap_or(0))
            .await
            .map_err(|s| anyhow::anyhow!("writing {} at {offset}: {s:?}", file.name))?;
        // A rewrite inside an earlier piece replaces those bytes; anything else is new.
        let end = offset + data.len() as u64;
        match file.pieces.iter_mut().find(|(o, d)| *o <= offset && end <= *o + d.len() as u64) {
            Some((o, d)) => {
                let at = (offset - *o) as usize;
                d[at..at + data.len()].copy_from_slice(&data);
            }
            None => {
                ensure!(file.pieces.iter().all(|(o, d)| end <= *o || o + d.len() as u64 <= offset), "overlap");
                file.pieces.push((offset, data));
            }
        }
        Ok(())
    }

    /// Reads every piece back through the client's data path (a fresh one: no cached
    /// locations) and compares checksums; the gap after the first piece reads as zeros.
    async fn check_contents(&self, files: &[&TestFile]) -> Result<()> {
        let data = DataPath::new(self.master.clone());
        for f in files {
            for (offset, want) in &f.pieces {
                let got = data
                    .read(f.inode, *offset, want.len() as u32)
                    .await
                    .map_err(|s| anyhow::anyhow!("reading {} at {offset}: {s:?}", f.name))?
                    .to_bytes();
                let (g, w) = (crc32fast::hash(&got), crc32fast::hash(want));
                ensure!(got.len() == want.len() && g == w, "{} at {offset}: checksum {g:08x}, written {w:08x}", f.name);
            }
            if f.pieces.len() > 1 {
                let (o, d) = &f.pieces[0];
                let gap = data
                    .read(f.inode, o + d.len() as u64, 4096)
                    .await
                    .map_err(|s| anyhow::anyhow!("{s:?}"))?
                    .to_bytes();
                ensure!(gap == vec![0u8; 4096], "{}: the hole after the first piece is not zeros", f.name);
            }
        }
        Ok(())
    }

    /// The master's view of a file's chunks (what `alces fileinfo` shows).
    async fn file_info(&self, f: &TestFile) -> Result<Vec<ChunkReport>> {
        match self.call(ClientRequest::FileInfo { inode: f.inode }).await? {
            ClientReply::FileInfo(chunks) => Ok(chunks),
            other => bail!("fileinfo {}: unexpected {other:?}", f.name),
        }
    }

    /// The master's view of a file's first chunk.
    async fn first_chunk(&self, f: &TestFile) -> Result<ChunkReport> {
        self.file_info(f).await?.first().cloned().context("the file's chunk")
    }

    /// The leader's view (only the leader runs the replication manager), or any master's.
    fn view(&self) -> Result<ClusterView> {
        tokio::task::block_in_place(|| {
            let leader = self.cluster.leader().and_then(|l| self.cluster.master(l).ok());
            leader.and_then(|m| fetch_cluster(&m.admin_addr).ok()).or_else(|| self.cluster.view())
        })
        .context("no master answers the admin API")
    }

    fn replication(&self) -> Result<ReplicationView> {
        self.view()?.replication.context("the master answering is not the leader")
    }

    /// Waits for a replication pass that starts after now and finds nothing to do.
    async fn wait_idle(&self) -> Result<ReplicationView> {
        let first = self.replication()?.passes;
        settle("an idle replication pass", HEAL, move || async move {
            let r = self.replication()?;
            // `first + 1` may have begun before this call; `first + 2` began after it.
            Ok((r.passes < first + 2 || !r.idle()).then(|| format!("{r:?}")))
        })
        .await?;
        self.replication()
    }

    fn chunkserver_ids(&self) -> Vec<u64> {
        self.cluster.file.chunkservers.iter().map(|c| c.id).collect()
    }

    fn kill(&mut self, cs: u64, sig: Signal) -> Result<()> {
        tokio::task::block_in_place(|| self.cluster.kill_chunkserver(cs, sig))
    }

    /// Starts chunkservers again and waits until every chunkserver is registered.
    fn restart(&mut self, servers: &[u64]) -> Result<()> {
        tokio::task::block_in_place(|| {
            for &cs in servers {
                self.cluster.start_chunkserver(cs)?;
            }
            let n = self.cluster.file.chunkservers.len();
            self.cluster.wait_chunkservers(n, Duration::from_secs(30))
        })
    }

    fn cs_entry(&self, cs: u64) -> &alces_ops::launcher::ChunkserverEntry {
        self.cluster.file.chunkservers.iter().find(|c| c.id == cs).expect("a known chunkserver")
    }
}

/// Polls `check` (which says what is still wrong, or `None`) every 250 ms until it passes.
async fn settle<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(None) => return Ok(()),
            Ok(Some(problem)) => problem,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A chunk file found on a chunkserver's disk.
#[derive(Debug, Clone)]
struct DiskCopy {
    cs: u64,
    folder: usize,
    version: ChunkVersion,
    path: PathBuf,
}

/// Every chunk file (`XX/chunk_*.mfs`) on the data folders of `servers`, by chunk.
fn disk_copies(env: &Env, servers: &[u64]) -> Result<BTreeMap<ChunkId, Vec<DiskCopy>>> {
    let mut out: BTreeMap<ChunkId, Vec<DiskCopy>> = BTreeMap::new();
    for cs in &env.cluster.file.chunkservers {
        if !servers.contains(&cs.id) {
            continue;
        }
        for (folder, root) in cs.folders.iter().enumerate() {
            for sub in std::fs::read_dir(root)? {
                let sub = sub?.path();
                if !sub.is_dir() {
                    continue;
                }
                for entry in std::fs::read_dir(&sub)? {
                    let path = entry?.path();
                    let Some((id, version)) = path.file_name().and_then(|n| n.to_str()).and_then(parse_name) else {
                        continue; // damaged_*, *.tmp, .lock
                    };
                    out.entry(id).or_default().push(DiskCopy { cs: cs.id, folder, version, path });
                }
            }
        }
    }
    Ok(out)
}

/// Files whose names start with `damaged_` (replicas a chunkserver moved aside) on a server.
fn damaged_files(env: &Env, cs: u64) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for root in &env.cs_entry(cs).folders {
        for sub in std::fs::read_dir(root)? {
            let sub = sub?.path();
            if sub.is_dir() {
                for entry in std::fs::read_dir(&sub)? {
                    let p = entry?.path();
                    if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("damaged_")) {
                        out.push(p);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// What is wrong with the placement of every chunk of `files` (which must be every file with
/// data): each chunk must have exactly `goal` valid copies, all on servers in `live`, by the
/// master's account (`FileInfo` and the monitor's copies table) and on disk alike, and no
/// other copy on those servers (no stale version, no chunk of no file). Copies on servers not
/// in `live` (killed ones) may still be listed but must not count as valid.
async fn placement_problems(env: &Env, files: &[&TestFile], goal: usize, live: &[u64]) -> Result<Option<String>> {
    let mut problems = Vec::new();
    let mut disk = disk_copies(env, live)?;
    let mut chunk_count = 0;
    for f in files {
        let chunks = env.file_info(f).await?;
        chunk_count += chunks.len() as u64;
        let indexes: BTreeSet<u32> = chunks.iter().map(|c| c.index).collect();
        if indexes != f.chunk_indexes() {
            problems.push(format!("{}: chunks {indexes:?}, written {:?}", f.name, f.chunk_indexes()));
        }
        for c in &chunks {
            let what = format!("{} chunk {} v{}", f.name, c.chunk.hex(), c.version);
            let valid: BTreeSet<u64> = c.copies.iter().filter(|(_, v)| *v).map(|(l, _)| l.id.0).collect();
            let here = c.copies.iter().filter(|(l, _)| live.contains(&l.id.0)).count();
            if valid.len() != goal || here != goal || !valid.iter().all(|s| live.contains(s)) {
                let copies: Vec<String> = c.copies.iter().map(|(l, v)| format!("cs{}:{}", l.id, v)).collect();
                problems.push(format!("{what}: the master lists {copies:?}, goal {goal}, live servers {live:?}"));
            }
            let files = disk.remove(&c.chunk).unwrap_or_default();
            let current: BTreeSet<u64> = files.iter().filter(|d| d.version == c.version).map(|d| d.cs).collect();
            if files.len() != goal || current != valid {
                let found: Vec<String> =
                    files.iter().map(|d| format!("cs{}/hdd{} v{}", d.cs, d.folder + 1, d.version)).collect();
                problems.push(format!("{what}: files on disk {found:?}, the master's valid copies on {valid:?}"));
            }
        }
    }
    for (chunk, copies) in disk {
        let found: Vec<String> = copies.iter().map(|d| format!("cs{} v{}", d.cs, d.version)).collect();
        problems.push(format!("chunk {} belongs to no file but is on disk: {found:?}", chunk.hex()));
    }
    let table = env.view()?.chunk_copies;
    let want = vec![CopiesCount { goal: goal as u8, valid: goal as u32, chunks: chunk_count }];
    if table != want {
        problems.push(format!("the monitor's copies table says {table:?}"));
    }
    Ok((!problems.is_empty()).then(|| problems.join("\n  ")))
}

/// Waits until [`placement_problems`] finds nothing, then for an idle replication pass, and
/// checks once more that nothing moved meanwhile.
async fn wait_placement(env: &Env, files: &[&TestFile], goal: usize, live: &[u64], what: &str) -> Result<()> {
    settle(what, HEAL, move || placement_problems(env, files, goal, live)).await?;
    env.wait_idle().await?;
    if let Some(p) = placement_problems(env, files, goal, live).await? {
        bail!("after the replication manager went idle ({what}):\n  {p}");
    }
    Ok(())
}

/// A client's connection to a chunkserver's data port.
async fn data_conn(addr: &str) -> Result<Connection> {
    let mut conn = Connection::connect(addr, DEFAULT_MAX_FRAME, Duration::from_secs(3)).await?;
    Handshake::new(LinkKind::ClientChunkserver, "self-healing test", None).dial(&mut conn).await?;
    Ok(conn)
}

/// Reads `len` bytes at `offset` of one replica straight from its chunkserver (which checks
/// the CRCs).
async fn read_replica(addr: &str, chunk: ChunkId, version: ChunkVersion, offset: u32, len: u32) -> Result<Vec<u8>> {
    let mut conn = data_conn(addr).await?;
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u32) < len {
        let piece = (len - out.len() as u32).min(MAX_READ);
        let req = DataRequest::Read { chunk, version, offset: offset + out.len() as u32, len: piece };
        match conn.call::<_, DataReply>(&req, Duration::from_secs(30)).await? {
            DataReply::Data(d) if d.len() == piece as usize => out.extend_from_slice(&d),
            other => bail!("{addr}: reading chunk {} v{version}: {other:?}", chunk.hex()),
        }
    }
    Ok(out)
}

/// Every copy the master lists on `servers` is of the current version and serves, straight
/// from its chunkserver, the bytes that were written.
async fn check_replicas(env: &Env, files: &[&TestFile], servers: &[u64]) -> Result<()> {
    for f in files {
        for c in env.file_info(f).await? {
            for (loc, valid) in c.copies.iter().filter(|(l, _)| servers.contains(&l.id.0)) {
                let what = || format!("{} chunk {} on cs{}", f.name, c.chunk.hex(), loc.id);
                ensure!(*valid, "{}: not the current version", what());
                for (offset, want) in f.pieces.iter().filter(|(o, _)| (o / CHUNK_SIZE) as u32 == c.index) {
                    let at = (offset % CHUNK_SIZE) as u32;
                    let got =
                        read_replica(&loc.addr, c.chunk, c.version, at, want.len() as u32).await.with_context(what)?;
                    ensure!(&got == want, "{}: other bytes than written at {offset}", what());
                }
            }
        }
    }
    Ok(())
}

/// Six files of up to a few MiB, one of them with two chunks (a hole between): 7 chunks.
async fn write_files(env: &Env, prefix: &str) -> Result<Vec<TestFile>> {
    let shapes: [&[(u64, usize)]; 6] = [
        &[(0, 3 * MIB)],
        &[(0, 2 * MIB + 12_345)],
        &[(0, 700_000)],
        &[(0, MIB), (CHUNK_SIZE + 4096, MIB + 77)],
        &[(0, 100)],
        &[(0, 1500 * 1024)],
    ];
    let mut files = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        files.push(env.write_file(&format!("{prefix}{i}"), i as u64 + 1, shape).await?);
    }
    Ok(files)
}

fn refs(files: &[TestFile]) -> Vec<&TestFile> {
    files.iter().collect()
}

/// Chunks each server holds (from the disk), to choose servers whose loss matters.
fn chunks_per_server(env: &Env) -> Result<BTreeMap<u64, usize>> {
    let mut per: BTreeMap<u64, usize> = env.chunkserver_ids().into_iter().map(|id| (id, 0)).collect();
    for copies in disk_copies(env, &env.chunkserver_ids())?.values() {
        for c in copies {
            *per.entry(c.cs).or_default() += 1;
        }
    }
    Ok(per)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_chunkservers_chunks_get_back_to_their_goal() -> Result<()> {
    let mut env = start(3, 2, &[]).await?;
    let files = write_files(&env, "f").await?;
    let all = env.chunkserver_ids();
    wait_placement(&env, &refs(&files), 2, &all, "2 copies of every chunk").await?;

    let per = chunks_per_server(&env)?;
    let (&victim, &held) = per.iter().max_by_key(|(_, n)| **n).expect("servers");
    ensure!(held > 0, "the chunkserver to kill holds no chunk: {per:?}");
    let before = env.replication()?.replicated;
    env.kill(victim, Signal::SIGKILL)?;
    let survivors: Vec<u64> = all.iter().copied().filter(|&c| c != victim).collect();
    let killed = Instant::now();
    wait_placement(&env, &refs(&files), 2, &survivors, "2 copies of every chunk on the survivors").await?;
    eprintln!("2 copies of {held} chunks back {:?} after the kill", killed.elapsed());
    let r = env.replication()?;
    ensure!(r.replicated >= before + held as u64, "only {} copies made for {held} lost ones", r.replicated - before);
    env.check_contents(&refs(&files)).await?;
    check_replicas(&env, &refs(&files), &survivors).await
}

/// The replication manager runs on whichever master leads: after the leader is killed, the
/// new one repairs what the loss of a chunkserver left under its goal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repairs_resume_under_a_new_leader() -> Result<()> {
    let mut env = start_group(3, 3, 2, &[], None, 0).await?;
    let files = write_files(&env, "g").await?;
    let all = env.chunkserver_ids();
    wait_placement(&env, &refs(&files), 2, &all, "2 copies of every chunk").await?;
    let old = tokio::task::block_in_place(|| env.cluster.wait_leader(Duration::from_secs(30)))?;
    tokio::task::block_in_place(|| env.cluster.kill_master(old, Signal::SIGKILL))?;
    let new = tokio::task::block_in_place(|| env.cluster.wait_leader(Duration::from_secs(30)))?;
    ensure!(new != old, "master {old} was killed but still leads");

    let per = chunks_per_server(&env)?;
    let (&victim, &held) = per.iter().max_by_key(|(_, n)| **n).expect("servers");
    ensure!(held > 0, "the chunkserver to kill holds no chunk: {per:?}");
    env.kill(victim, Signal::SIGKILL)?;
    let survivors: Vec<u64> = all.iter().copied().filter(|&c| c != victim).collect();
    wait_placement(&env, &refs(&files), 2, &survivors, "2 copies on the survivors, by the new leader").await?;
    let r = env.replication()?;
    ensure!(r.replicated >= held as u64, "the new leader made {} copies for {held} lost ones", r.replicated);
    env.check_contents(&refs(&files)).await?;
    check_replicas(&env, &refs(&files), &survivors).await
}

/// `filerepair` when the current copies are on a server that is gone: a chunk whose only
/// other copy missed a version change goes back to that version and reads its older bytes; a
/// chunk with no copy left becomes a hole. Until then the replication manager keeps that
/// stale copy (before, it deleted it as stale although no current copy could be read).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filerepair_takes_the_newest_copy_left_or_makes_a_hole() -> Result<()> {
    let mut env = start(2, 2, &[]).await?;
    let mut f = env.write_file("f", 40, &[(0, 100_000)]).await?;
    let all = env.chunkserver_ids();
    wait_placement(&env, &[&f], 2, &all, "2 copies of f's chunk").await?;
    let (a, b) = (all[0], all[1]);
    let old = env.first_chunk(&f).await?.version;
    // b misses a version change of f's chunk; g's chunk is made on a alone.
    env.kill(b, Signal::SIGKILL)?;
    env.write_piece(&mut f, 200_000, pseudo_random_bytes(41, 4096)).await?;
    let g = env.write_file("g", 42, &[(0, 50_000)]).await?;
    let current = env.first_chunk(&f).await?.version;
    ensure!(current > old, "the write while b was down kept version {old}");
    env.kill(a, Signal::SIGKILL)?;
    // A restart of the master ends the write leases it kept (60 s): the replication manager
    // leaves leased chunks alone, and must look at this one.
    tokio::task::block_in_place(|| -> Result<()> {
        env.cluster.kill_master(1, Signal::SIGTERM)?;
        env.cluster.start_master(1)?;
        env.cluster.wait_leader(Duration::from_secs(30))?;
        env.cluster.start_chunkserver(b)
    })?;
    settle("b's copy of f's chunk to be reported", HEAL, || async {
        let c = env.first_chunk(&f).await?;
        Ok((!c.copies.iter().any(|(l, _)| l.id.0 == b)).then(|| format!("{:?}", c.copies)))
    })
    .await?;
    // Passes of the replication manager go by: b's stale copy stays, the only one left.
    let passes = env.replication()?.passes;
    settle("two replication passes", HEAL, || async {
        let r = env.replication()?;
        Ok((r.passes < passes + 2).then(|| format!("{r:?}")))
    })
    .await?;
    let on_b = disk_copies(&env, &[b])?.remove(&env.first_chunk(&f).await?.chunk).unwrap_or_default();
    ensure!(on_b.len() == 1 && on_b[0].version == old, "b's copies of f's chunk: {on_b:?}");

    let repair = |file: &TestFile| ClientRequest::FileRepair { inode: file.inode };
    match env.call(repair(&f)).await? {
        ClientReply::Repaired { ok: 0, erased: 0, repaired: 1 } => {}
        other => bail!("filerepair f: {other:?}"),
    }
    match env.call(repair(&g)).await? {
        ClientReply::Repaired { ok: 0, erased: 1, repaired: 0 } => {}
        other => bail!("filerepair g: {other:?}"),
    }
    ensure!(env.first_chunk(&f).await?.version == old, "f's chunk is not back at version {old}");
    let data = DataPath::new(env.master.clone());
    let read = |inode, offset, len| {
        let data = &data;
        async move { data.read(inode, offset, len).await.map(|b| b.to_bytes()).map_err(|s| anyhow::anyhow!("{s:?}")) }
    };
    ensure!(read(f.inode, 0, 100_000).await? == f.pieces[0].1, "f's first piece after the repair");
    ensure!(read(f.inode, 200_000, 4096).await? == vec![0; 4096], "b never had the piece written while it was down");
    ensure!(read(g.inode, 0, 50_000).await? == vec![0; 50_000], "g's lost chunk is not a hole");
    // Nothing left to repair.
    match env.call(repair(&f)).await? {
        ClientReply::Repaired { ok: 1, erased: 0, repaired: 0 } => Ok(()),
        other => bail!("filerepair f again: {other:?}"),
    }
}

/// A chunk written without pause gets back to its goal after losing a copy. Its write lease
/// never lapses, and the replication manager leaves leased chunks alone: the writer's next
/// lease has to add the missing copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_written_without_pause_gets_back_to_its_goal() -> Result<()> {
    let mut env = start(3, 2, &[]).await?;
    let mut file = env.write_file("busy", 7, &[(0, 100_000)]).await?;
    let all = env.chunkserver_ids();
    wait_placement(&env, &[&file], 2, &all, "2 copies of the chunk").await?;
    let first = env.first_chunk(&file).await?;
    let victim = first.copies.iter().find(|(_, valid)| *valid).map(|(l, _)| l.id.0).context("a valid copy")?;
    env.kill(victim, Signal::SIGKILL)?;
    let survivors: Vec<u64> = all.iter().copied().filter(|&c| c != victim).collect();
    // Past a hole after the first piece (`check_contents` reads it as zeros).
    write_until_two_copies(&env, &mut file, 200_000, &survivors).await?;
    env.check_contents(&[&file]).await?;
    check_replicas(&env, &[&file], &survivors).await
}

/// Writes 4 KiB pieces from `offset` on, without pause, until the file's first chunk has 2
/// valid copies on `live` servers; fails after [`HEAL`] or at the end of the chunk.
async fn write_until_two_copies(env: &Env, file: &mut TestFile, mut offset: u64, live: &[u64]) -> Result<()> {
    let deadline = Instant::now() + HEAL;
    let mut writes = 0;
    loop {
        env.write_piece(file, offset, pseudo_random_bytes(offset, 4096)).await?;
        (offset, writes) = (offset + 4096, writes + 1);
        let c = env.first_chunk(file).await?;
        let valid: Vec<u64> =
            c.copies.iter().filter(|(l, v)| *v && live.contains(&l.id.0)).map(|(l, _)| l.id.0).collect();
        if valid.len() == 2 {
            eprintln!("2 valid copies again after {writes} writes without pause");
            return Ok(());
        }
        let more = Instant::now() < deadline && offset + 4096 <= CHUNK_SIZE;
        ensure!(more, "{writes} writes without pause, still valid copies on {valid:?} only: {:?}", c.copies);
    }
}

/// Sends `pieces` (offset in the chunk, one block each) down `chain` at `version`; after
/// `kill_after` acknowledged pieces calls `kill` once. Returns how many were acknowledged and
/// the error that ended the write, if one did.
async fn chained_write(
    chain: &[ChunkLocation],
    chunk: ChunkId,
    version: ChunkVersion,
    pieces: &[(u32, Vec<u8>)],
    kill_after: usize,
    mut kill: impl FnMut() -> Result<()>,
) -> Result<(usize, Option<DataError>)> {
    let mut c = data_conn(&chain[0].addr).await?;
    let start = DataRequest::WriteStart { chunk, version, chain: chain[1..].to_vec(), create: false };
    match c.call::<_, DataReply>(&start, Duration::from_secs(10)).await? {
        DataReply::WriteReady => {}
        other => bail!("write start: {other:?}"),
    }
    for (id, (offset, data)) in pieces.iter().enumerate() {
        if id == kill_after {
            kill()?;
        }
        let req = DataRequest::WriteData { id: id as u64, offset: *offset, data: data.clone() };
        match c.call::<_, DataReply>(&req, Duration::from_secs(30)).await? {
            DataReply::WriteDone { id: done } if done == id as u64 => {}
            DataReply::WriteFailed { error, .. } | DataReply::Error(error) => return Ok((id, Some(error))),
            other => bail!("piece {id}: {other:?}"),
        }
    }
    match c.call::<_, DataReply>(&DataRequest::WriteFinish { id: pieces.len() as u64 }, Duration::from_secs(30)).await?
    {
        DataReply::WriteFinished { .. } => Ok((pieces.len(), None)),
        DataReply::WriteFailed { error, .. } | DataReply::Error(error) => Ok((pieces.len(), Some(error))),
        other => bail!("finish: {other:?}"),
    }
}

/// A chain of three loses its middle server to SIGKILL in the middle of a write. The writer
/// gets an error naming the broken link (so it asks for a new lease and writes again); the
/// new lease moves the two survivors, which hold every acknowledged piece, to a new version;
/// the killed server comes back with a copy that missed pieces under the old version, which
/// is never counted as valid: it is deleted and a whole copy made in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_that_loses_its_middle_server_leaves_no_valid_copy_missing_a_piece() -> Result<()> {
    let mut env = start(3, 3, &[]).await?;
    let mut file = env.write_file("chain", 30, &[(0, 4096)]).await?;
    let all = env.chunkserver_ids();
    wait_placement(&env, &[&file], 3, &all, "3 copies of the chunk").await?;
    let lease = |after_failure| ClientRequest::WriteChunk { inode: file.inode, index: 0, after_failure };
    let ClientReply::WriteLease { chunk, version, chain, .. } = env.call(lease(false)).await? else {
        bail!("no write lease");
    };
    ensure!(chain.len() == 3, "a chain of {} for goal 3: {chain:?}", chain.len());
    let middle = chain[1].id.0;
    let pieces: Vec<(u32, Vec<u8>)> =
        (1..400u32).map(|i| (i * BLOCK, pseudo_random_bytes(3000 + i as u64, BLOCK as usize))).collect();
    let (acked, failure) =
        chained_write(&chain, chunk, version, &pieces, 20, || env.kill(middle, Signal::SIGKILL)).await?;
    match &failure {
        Some(DataError::Chain { server, .. }) if server.0 == middle => {}
        other => bail!("after {acked} pieces the write ended with {other:?}, not a chain error naming cs{middle}"),
    }
    ensure!(acked >= 20, "only {acked} pieces acknowledged");

    // The writer's retry: a lease after the failure moves the survivors to a new version.
    let ClientReply::WriteLease { chunk: again, version: moved, chain: survivors, .. } = env.call(lease(true)).await?
    else {
        bail!("no write lease after the failure");
    };
    let live: Vec<u64> = survivors.iter().map(|l| l.id.0).collect();
    ensure!(again == chunk && moved > version, "after the failure: chunk {again:?} v{moved}, was v{version}");
    ensure!(live.len() == 2 && !live.contains(&middle), "the new chain {live:?} (cs{middle} was killed)");
    for l in &survivors {
        for (offset, data) in &pieces[..acked] {
            let got = read_replica(&l.addr, chunk, moved, *offset, BLOCK).await?;
            ensure!(&got == data, "cs{} at v{moved} lacks the acknowledged piece at {offset}", l.id);
        }
    }
    let (done, failure) = chained_write(&survivors, chunk, moved, &pieces, usize::MAX, || Ok(())).await?;
    ensure!(done == pieces.len() && failure.is_none(), "the write again: {done} pieces, {failure:?}");
    let size = u64::from(pieces.last().map(|(o, d)| o + d.len() as u32).unwrap_or(0));
    env.call(ClientRequest::WriteEnd { inode: file.inode, index: 0, chunk, size, added: None }).await?;
    file.pieces.extend(pieces.iter().map(|(o, d)| (u64::from(*o), d.clone())));

    // Back with what it had: its copy is of the old version, never counted as valid.
    let on_disk = |env: &Env| -> Result<Vec<ChunkVersion>> {
        Ok(disk_copies(env, &[middle])?.remove(&chunk).unwrap_or_default().iter().map(|d| d.version).collect())
    };
    ensure!(on_disk(&env)? == vec![version], "cs{middle} holds {:?} on disk", on_disk(&env)?);
    env.restart(&[middle])?;
    let (env_, file_) = (&env, &file);
    settle("the returned server's copy to be fresh", HEAL, move || async move {
        let (env, file) = (env_, file_);
        let c = env.first_chunk(file).await?;
        let listed = c.copies.iter().find(|(l, _)| l.id.0 == middle);
        let versions = on_disk(env)?;
        if let Some((_, true)) = listed {
            ensure!(
                versions == vec![c.version],
                "cs{middle} counted valid with {versions:?} on disk (chunk v{})",
                c.version
            );
        }
        Ok((versions != vec![c.version]).then(|| format!("cs{middle}: {listed:?}, on disk {versions:?}")))
    })
    .await?;
    wait_placement(&env, &[&file], 3, &all, "3 valid copies again").await?;
    env.check_contents(&[&file]).await?;
    check_replicas(&env, &[&file], &all).await
}

/// A server holding only a stale copy of a chunk written without pause can take a fresh
/// one. Found by a one-hour fault-injection run: the stale copies (left by servers that were
/// down at a version change) are deleted by the replication manager, which leaves leased
/// chunks alone, so they took every spare server in turn and the chunk stayed at one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_copy_does_not_keep_its_server_from_a_fresh_one() -> Result<()> {
    let mut env = start(3, 2, &[]).await?;
    let mut file = env.write_file("stale", 10, &[(0, 100_000)]).await?;
    let all = env.chunkserver_ids();
    wait_placement(&env, &[&file], 2, &all, "2 copies of the chunk").await?;
    let first = env.first_chunk(&file).await?;
    let holders: Vec<u64> = first.copies.iter().filter(|(_, valid)| *valid).map(|(l, _)| l.id.0).collect();
    ensure!(holders.len() == 2, "a new chunk: {:?}", first.copies);
    let (old, keeper) = (holders[0], holders[1]);
    let spare = *all.iter().find(|c| !holders.contains(c)).context("a server without a copy")?;
    // `old` misses a version change: its copy comes back stale, and the spare took one.
    env.kill(old, Signal::SIGKILL)?;
    let mut offset = 200_000u64;
    env.write_piece(&mut file, offset, pseudo_random_bytes(offset, 4096)).await?;
    offset += 4096;
    env.restart(&[old])?;
    let mut writes = 0;
    loop {
        env.write_piece(&mut file, offset, pseudo_random_bytes(offset, 4096)).await?;
        (offset, writes) = (offset + 4096, writes + 1);
        let c = env.first_chunk(&file).await?;
        if c.copies.iter().any(|(l, valid)| l.id.0 == old && !*valid) {
            break;
        }
        ensure!(writes < 1000, "the restarted server's stale copy never showed: {:?}", c.copies);
    }
    // Now the copy on `keeper` goes too: the one server left for a second copy is `old`.
    env.kill(keeper, Signal::SIGKILL)?;
    write_until_two_copies(&env, &mut file, offset, &[old, spare]).await?;
    env.check_contents(&[&file]).await?;
    check_replicas(&env, &[&file], &[old, spare]).await
}

/// A lease that cannot add the missing copy (the server chosen for it stops answering) still
/// gives the writer its lease on the copies there are, and the copy comes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_whose_new_copy_fails_still_lets_the_writer_write() -> Result<()> {
    let mut env = start(3, 2, &[]).await?;
    let mut file = env.write_file("hurt", 9, &[(0, 100_000)]).await?;
    let all = env.chunkserver_ids();
    let first = env.first_chunk(&file).await?;
    let holders: Vec<u64> = first.copies.iter().filter(|(_, valid)| *valid).map(|(l, _)| l.id.0).collect();
    ensure!(holders.len() == 2, "a new chunk: {:?}", first.copies);
    let spare = *all.iter().find(|c| !holders.contains(c)).context("a server without a copy")?;
    env.kill(holders[0], Signal::SIGKILL)?;
    // Paused, the spare still looks connected (it was heard from less than 5 s ago), so the
    // next lease orders it to copy the chunk; the order goes unanswered.
    let spare_pid = nix::unistd::Pid::from_raw(env.cs_entry(spare).pid as i32);
    nix::sys::signal::kill(spare_pid, Signal::SIGSTOP)?;
    let written = env.write_piece(&mut file, 200_000, pseudo_random_bytes(200_000, 4096)).await;
    nix::sys::signal::kill(spare_pid, Signal::SIGCONT)?;
    written?;
    let c = env.first_chunk(&file).await?;
    let valid: Vec<u64> = c.copies.iter().filter(|(_, v)| *v).map(|(l, _)| l.id.0).collect();
    ensure!(valid == [holders[1]], "after the write, valid copies on {valid:?}: {:?}", c.copies);
    env.check_contents(&[&file]).await?;
    let live = [holders[1], spare];
    wait_placement(&env, &[&file], 2, &live, "the second copy on the spare server").await?;
    check_replicas(&env, &[&file], &live).await
}

/// A write right after the master restarted waits for the copy of a chunkserver that has not
/// connected again yet, instead of moving the other copy to a new version alone and leaving
/// that one stale (the chunk would be one copy short with nothing to show for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_right_after_a_master_restart_keeps_copies_not_reported_yet() -> Result<()> {
    // No repairs meanwhile: a copy made elsewhere would bring the chunk to its goal anyway.
    let mut env = start_delayed(3, 2, &[], None, 300).await?;
    let mut file = env.write_file("early", 8, &[(0, 100_000)]).await?;
    let all = env.chunkserver_ids();
    let first = env.first_chunk(&file).await?;
    ensure!(first.copies.iter().filter(|(_, valid)| *valid).count() == 2, "a new chunk: {:?}", first.copies);
    let late = first.copies.iter().find(|(_, valid)| *valid).map(|(l, _)| l.id.0).context("a valid copy")?;
    // The late server is paused, so it cannot connect to the new master process until resumed.
    let late_pid = nix::unistd::Pid::from_raw(env.cs_entry(late).pid as i32);
    nix::sys::signal::kill(late_pid, Signal::SIGSTOP)?;
    tokio::task::block_in_place(|| -> Result<()> {
        env.cluster.kill_master(1, Signal::SIGKILL)?;
        env.cluster.start_master(1)?;
        env.cluster.wait_leader(Duration::from_secs(30))?;
        Ok(())
    })?;
    let resume = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        nix::sys::signal::kill(late_pid, Signal::SIGCONT)
    });
    env.write_piece(&mut file, 200_000, pseudo_random_bytes(200_000, 4096)).await?;
    resume.await??;
    settle("the late chunkserver's copy in the master's view", HEAL, || async {
        let c = env.first_chunk(&file).await?;
        match c.copies.iter().find(|(l, _)| l.id.0 == late) {
            Some((_, true)) => Ok(None),
            Some((_, false)) => bail!("the late chunkserver's copy was left stale: {:?}", c.copies),
            None => Ok(Some(format!("not reported yet: {:?}", c.copies))),
        }
    })
    .await
    .with_context(|| env.cluster.log_tails(40))?;
    env.check_contents(&[&file]).await?;
    check_replicas(&env, &[&file], &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn returning_chunkservers_extra_and_stale_copies_are_trimmed() -> Result<()> {
    let mut env = start(5, 3, &[]).await?;
    let mut files = write_files(&env, "g").await?;
    let all = env.chunkserver_ids();
    wait_placement(&env, &refs(&files), 3, &all, "3 copies of every chunk").await?;

    // Kill the two servers holding the most chunks.
    let per = chunks_per_server(&env)?;
    let mut by_load: Vec<(u64, usize)> = per.into_iter().collect();
    by_load.sort_by_key(|(id, n)| (std::cmp::Reverse(*n), *id));
    let victims: Vec<u64> = by_load.iter().take(2).map(|(id, _)| *id).collect();
    ensure!(by_load[0].1 > 0, "nothing to lose: {by_load:?}");
    for &v in &victims {
        env.kill(v, Signal::SIGKILL)?;
    }
    let survivors: Vec<u64> = all.iter().copied().filter(|c| !victims.contains(c)).collect();

    // A write while they are away, to a chunk one of them has: that copy becomes stale.
    let victims_disk = disk_copies(&env, &victims)?;
    let mut target = None;
    for (i, f) in files.iter().enumerate() {
        if victims_disk.contains_key(&env.file_info(f).await?[0].chunk) {
            target = Some(i);
            break;
        }
    }
    let target = target.context("the victims hold no first chunk of any file")?;
    env.write_piece(&mut files[target], 5000, pseudo_random_bytes(4242, 100_000)).await?;
    let rewritten = env.file_info(&files[target]).await?[0].clone();
    let stale = victims_disk[&rewritten.chunk].iter().filter(|d| d.version < rewritten.version).count();
    ensure!(stale > 0, "no stale copy on the victims: {:?}", victims_disk[&rewritten.chunk]);

    wait_placement(&env, &refs(&files), 3, &survivors, "3 copies of every chunk on the 3 survivors").await?;
    env.check_contents(&refs(&files)).await?;

    // Every chunk is on every survivor now; the victims' copies are all extra or stale.
    let on_disk: usize = disk_copies(&env, &all)?.values().map(Vec::len).sum();
    let chunks: usize = files.iter().map(|f| f.chunk_indexes().len()).sum();
    let extra = on_disk - 3 * chunks;
    eprintln!("{on_disk} chunk files for {chunks} chunks before the restart: {extra} to delete ({stale} stale)");
    let deleted_before = env.replication()?.deleted;
    env.restart(&victims)?;
    wait_placement(&env, &refs(&files), 3, &all, "exactly 3 copies of every chunk once all 5 are back").await?;
    let deleted = env.replication()?.deleted - deleted_before;
    ensure!(deleted >= extra as u64, "{deleted} copies deleted, {extra} were extra");
    check_replicas(&env, &refs(&files), &all).await?;
    env.check_contents(&refs(&files)).await
}

/// Flips one byte of the data of a chunk file (in its first block).
fn flip_byte(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let at = DATA_OFFSET + 1234;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at)?;
    b[0] ^= 0xff;
    f.write_all_at(&b, at)?;
    f.sync_all()?;
    Ok(())
}

/// Where a chunk's copy is on a server's disk.
fn disk_path(env: &Env, cs: u64, chunk: ChunkId) -> Result<PathBuf> {
    let copies = disk_copies(env, &[cs])?;
    let c = copies.get(&chunk).and_then(|v| v.first()).with_context(|| format!("chunk {} on cs{cs}", chunk.hex()))?;
    Ok(c.path.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_copy_found_by_a_read_is_replaced() -> Result<()> {
    // No scrubbing: only the client's read can find the damage.
    let env = start(3, 2, &["SCRUB_RATE = 0"]).await?;
    let a = env.write_file("a", 1, &[(0, 2 * MIB)]).await?;
    let b = env.write_file("b", 2, &[(0, MIB)]).await?;
    let all = env.chunkserver_ids();
    wait_placement(&env, &[&a, &b], 2, &all, "2 copies of every chunk").await?;

    // The client reads the first location the master gives: damage that copy.
    let (chunk, bad_cs) = match env.call(ClientRequest::ReadChunk { inode: a.inode, index: 0 }).await? {
        ClientReply::ChunkLocations { chunk: Some((chunk, _)), locations, .. } => (chunk, locations[0].id.0),
        other => bail!("unexpected {other:?}"),
    };
    let path = disk_path(&env, bad_cs, chunk)?;
    flip_byte(&path)?;
    ensure!(damaged_files(&env, bad_cs)?.is_empty());

    env.check_contents(&[&a]).await.context("reading past the corrupt copy")?;
    ensure!(!path.exists(), "the corrupt copy is still in place after a read hit it");
    ensure!(damaged_files(&env, bad_cs)?.len() == 1, "the corrupt copy was not moved aside");
    wait_placement(&env, &[&a, &b], 2, &all, "2 good copies again").await?;
    check_replicas(&env, &[&a, &b], &all).await?;
    let crc_errors: u64 = env.view()?.chunkservers.iter().map(|c| c.crc_errors).sum();
    ensure!(crc_errors == 1, "CRC errors reported: {crc_errors}");
    env.check_contents(&[&a, &b]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_copy_found_by_the_scrubber_is_replaced() -> Result<()> {
    let env = start(3, 2, &["SCRUB_RATE = 64MiB"]).await?;
    let a = env.write_file("a", 3, &[(0, 2 * MIB)]).await?;
    let b = env.write_file("b", 4, &[(0, MIB)]).await?;
    let all = env.chunkserver_ids();
    wait_placement(&env, &[&a, &b], 2, &all, "2 copies of every chunk").await?;

    let info = env.file_info(&b).await?;
    let (chunk, bad_cs) = (info[0].chunk, info[0].copies[0].0.id.0);
    let path = disk_path(&env, bad_cs, chunk)?;
    flip_byte(&path)?;
    // Nobody reads the file: the scrubber finds the damage by itself.
    let (envr, path_) = (&env, &path);
    settle("the scrubber to move the corrupt copy aside", HEAL, move || async move {
        let (env, path) = (envr, path_);
        let n = damaged_files(env, bad_cs)?.len();
        Ok((n != 1 || path.exists()).then(|| format!("{n} damaged files, corrupt file present: {}", path.exists())))
    })
    .await?;
    wait_placement(&env, &[&a, &b], 2, &all, "2 good copies again").await?;
    check_replicas(&env, &[&a, &b], &all).await?;
    env.check_contents(&[&a, &b]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_folder_marked_for_removal_empties_while_files_stay_readable() -> Result<()> {
    let mut env = start(3, 2, &[]).await?;
    let files = write_files(&env, "h").await?;
    let all = env.chunkserver_ids();
    wait_placement(&env, &refs(&files), 2, &all, "2 copies of every chunk").await?;

    // The fullest folder of any server is marked for removal.
    let mut per_folder: BTreeMap<(u64, usize), usize> = BTreeMap::new();
    for copies in disk_copies(&env, &all)?.values() {
        for c in copies {
            *per_folder.entry((c.cs, c.folder)).or_default() += 1;
        }
    }
    let (&(cs, folder), &held) = per_folder.iter().max_by_key(|(_, n)| **n).expect("chunks on disk");
    ensure!(held > 0);
    let entry = env.cs_entry(cs).clone();
    let hdd_cfg = entry.config.parent().expect("cs folder").join("hdd.cfg");
    let text: String = entry
        .folders
        .iter()
        .enumerate()
        .map(|(i, f)| format!("{}{}\n", if i == folder { "*" } else { "" }, f.display()))
        .collect();
    env.kill(cs, Signal::SIGTERM)?;
    std::fs::write(&hdd_cfg, text)?;
    env.restart(&[cs])?;
    let marked = entry.folders[folder].clone();
    eprintln!("{} marked for removal with {held} chunks", marked.display());

    // Every file reads back, whole, all the while the folder drains.
    let deadline = Instant::now() + HEAL;
    let mut reads = 0;
    loop {
        env.check_contents(&refs(&files)).await.context("a read while the marked folder drains")?;
        reads += 1;
        let left = disk_copies(&env, &[cs])?.values().flatten().filter(|c| c.folder == folder).count();
        if left == 0 {
            break;
        }
        ensure!(Instant::now() < deadline, "{left} chunk files left in {} after {HEAL:?}", marked.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the marked folder emptied; every file read back {reads} times meanwhile");
    wait_placement(&env, &refs(&files), 2, &all, "2 copies of every chunk, none on the marked folder").await?;
    let left = disk_copies(&env, &[cs])?.values().flatten().filter(|c| c.folder == folder).count();
    ensure!(left == 0, "{left} chunk files came back to the marked folder");
    let disk = env.view()?.chunkservers.into_iter().find(|c| c.id == cs).context("the server")?;
    ensure!(disk.disks.iter().any(|d| d.leaving && d.chunks == 0), "the master sees no empty leaving folder: {disk:?}");
    env.check_contents(&refs(&files)).await?;
    check_replicas(&env, &refs(&files), &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_trash_entry_frees_its_chunks_on_the_chunkservers() -> Result<()> {
    let env = start(3, 2, &[]).await?;
    let expiring = env.write_file("expiring", 1, &[(0, 2 * MIB), (CHUNK_SIZE, 300_000)]).await?;
    let trashed = env.write_file("trashed", 2, &[(0, MIB)]).await?;
    let live = env.write_file("live", 3, &[(0, MIB)]).await?;
    let all = env.chunkserver_ids();
    let everything = [&expiring, &trashed, &live];
    wait_placement(&env, &everything, 2, &all, "2 copies of every chunk").await?;

    let set = ClientRequest::SetTrashTime { inode: expiring.inode, trash_time: TrashTime(1), recursive: false };
    match env.call(set).await? {
        ClientReply::Counts { changed: 1, .. } => {}
        other => bail!("settrashtime: unexpected {other:?}"),
    }
    let gone: Vec<ChunkId> = env.file_info(&expiring).await?.iter().map(|c| c.chunk).collect();
    ensure!(gone.len() == 2);
    let chunks_before = env.view()?.chunks;
    for f in [&expiring, &trashed] {
        env.call(ClientRequest::Unlink { parent: Inode::ROOT, name: name(&f.name) }).await?;
    }
    let unlinked = Instant::now();
    let (envr, gone_, all_) = (&env, &gone, &all);
    settle("the expired file's chunk files to disappear", HEAL, move || async move {
        let (env, gone, all) = (envr, gone_, all_);
        let disk = disk_copies(env, all)?;
        let left: Vec<String> = gone
            .iter()
            .flat_map(|c| disk.get(c).into_iter().flatten().map(move |d| format!("{} on cs{}", c.hex(), d.cs)))
            .collect();
        Ok((!left.is_empty()).then(|| format!("still on disk: {left:?}")))
    })
    .await?;
    eprintln!("chunk files of the expired file gone {:?} after the unlink", unlinked.elapsed());
    ensure!(env.view()?.chunks == chunks_before - 2, "the namespace still counts the expired file's chunks");
    // The file in the trash (default trash time) keeps its copies; the live one too.
    wait_placement(&env, &[&trashed, &live], 2, &all, "the other files' copies untouched").await?;
    env.check_contents(&[&trashed, &live]).await
}

/// Each data folder may hold 16 MiB (hdd.cfg), so the test files (about 10 MiB) make a usage
/// gap of about 30 points between a server holding them all and an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_move_from_a_full_chunkserver_to_an_empty_one() -> Result<()> {
    let mut env = start_sized(2, 1, &[], Some("16MiB")).await?;
    // Everything is written while the second server is away.
    env.kill(2, Signal::SIGTERM)?;
    settle("the master to see chunkserver 2 leave", HEAL, || async {
        let v = env.view()?;
        Ok((v.chunkservers.iter().filter(|s| s.alive).count() != 1).then(|| format!("{:?}", v.chunkservers)))
    })
    .await?;
    let files = write_files(&env, "r").await?;
    let per = chunks_per_server(&env)?;
    ensure!(per[&2] == 0 && per[&1] > 0, "chunks per server before the return: {per:?}");
    let used = |v: &ClusterView, id: u64| v.chunkservers.iter().find(|s| s.id == id).map(|s| s.used_bytes);

    env.restart(&[2])?;
    wait_placement(&env, &refs(&files), 1, &[1, 2], "one copy of every chunk").await?;
    // Moves go on until the usage is even; then they stop: three idle passes without a move.
    let mut calm_since: Option<(u64, u64)> = None;
    settle("the moves to stop", HEAL, || {
        let verdict = env.replication().map(|r| match calm_since {
            Some((moved, pass)) if moved == r.rebalanced && r.idle() => {
                (r.passes < pass + 3).then(|| format!("calm since pass {pass}: {r:?}"))
            }
            _ => {
                calm_since = Some((r.rebalanced, r.passes));
                Some(format!("still moving: {r:?}"))
            }
        });
        async move { verdict }
    })
    .await?;
    let per = chunks_per_server(&env)?;
    let v = env.view()?;
    let (u1, u2) = (used(&v, 1).unwrap_or(0), used(&v, 2).unwrap_or(0));
    eprintln!("after rebalancing: chunks {per:?}, bytes {u1} and {u2}, {:?}", v.replication);
    ensure!(v.replication.as_ref().is_some_and(|r| r.rebalanced > 0), "nothing moved: {:?}", v.replication);
    ensure!(per[&1] > 0 && per[&2] > 0, "chunks per server: {per:?}");
    // Even to within about one chunk (the largest test chunk holds about 3 MiB).
    ensure!(u1.abs_diff(u2) < 4 * MIB as u64, "usage still uneven: {u1} and {u2} bytes");
    check_replicas(&env, &refs(&files), &[1, 2]).await?;
    env.check_contents(&refs(&files)).await
}
