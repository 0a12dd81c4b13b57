//! Chunkserver throughput next to the raw disk under it.
//!
//! ```sh
//! cargo build --release -p alces-master -p alces-chunkserver --bins   # the processes it starts
//! cargo bench -p alces-chunkserver --bench throughput [-- --json]
//! ```
//!
//! One run measures the same volume (`ALCES_BENCH_MIB`, default 1024 MiB) three ways, all on
//! the file system of one temporary folder (`TMPDIR`):
//!
//! 1. **raw disk**: a plain file written sequentially (64 MiB `write` calls) with one fsync at
//!    the end, then read back in 4 MiB reads.
//! 2. **1 chunkserver**: a goal-1 file written through the data protocol, 64 MiB chunk by chunk,
//!    the way `client/src/data.rs` does it: a write lease from the master (`WriteChunk`), then
//!    `WriteStart`, 64 KiB `WriteData` pieces with 64 unacknowledged, `WriteFinish` (fsync on
//!    every replica), then `WriteEnd` to the master. Read back chunk by chunk: `ReadChunk` from
//!    the master, then 4 MiB (`MAX_READ`) `Read`s one after the other from one replica.
//! 3. **chain of 3**: the same with a goal-3 file (client -> cs -> cs -> cs); reads come from
//!    the first replica the master lists.
//!
//! The cluster is real processes started by the local launcher (`alces_ops::launcher`): one
//! master (fsync on) and three chunkservers, each with two data folders, with the scrubber off
//! (`ALCES_BENCH_SCRUB_RATE`, default 0) so that it neither competes for the disk nor warms the
//! page cache. All three chunkservers share this machine's disk: a chain of three writes
//! every byte to it three times.
//!
//! Write times include the master round trips (lease and length commit, per chunk); they are
//! also shown apart. "Cold" reads come after the data's pages were dropped from the page cache
//! (`posix_fadvise(DONTNEED)` on the file or chunk files just after they were synced);
//! "cached" reads repeat the read at once, from the page cache. Every byte read is compared
//! with what was written (outside the timed part). MB = 10^6 bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alces_client::master_link::{MasterClient, Options};
use alces_ops::launcher::{Cluster, Layout};
use alces_proto::link::client_cs::{DataReply, DataRequest, MAX_READ};
use alces_proto::link::client_master::{ClientReply, ClientRequest};
use alces_proto::types::{ChunkId, ChunkLocation, ChunkVersion, Creds, FileKind, Goal, Inode, Name, BLOCK_SIZE};
use alces_proto::{Connection, Handshake, LinkKind};
use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

const MIB: usize = 1 << 20;
const CHUNK: usize = alces_proto::types::CHUNK_SIZE as usize;
/// Pieces in flight to the head of the chain, as in the client (`client/src/data.rs`).
const WRITE_WINDOW: u64 = 64;
/// How long one step of the protocol may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// One way of moving the volume, and how long each part took.
struct Row {
    name: &'static str,
    /// Copies of every byte written to the disk.
    replicas: usize,
    bytes: u64,
    write: Duration,
    /// Part of `write` spent asking the master (leases and length commits).
    write_master: Duration,
    read_cold: Duration,
    read_cached: Duration,
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// The bytes of chunk `i` (each chunk differs from the next by where it starts in `data`).
fn chunk_data(data: &[u8], i: usize, len: usize) -> &[u8] {
    let start = (i % 16) * 4096;
    &data[start..start + len]
}

/// Lengths of the chunks making up `total` bytes.
fn chunk_lengths(total: usize) -> Vec<usize> {
    (0..total.div_ceil(CHUNK)).map(|i| (total - i * CHUNK).min(CHUNK)).collect()
}

/// Drops the (clean) pages of a file from the page cache.
fn drop_cache(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .with_context(|| format!("fadvise on {}", path.display()))?;
    Ok(())
}

/// Every chunk file below `dir`.
fn chunk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            chunk_files(&p, out);
        } else if e.file_name().to_string_lossy().starts_with("chunk_") {
            out.push(p);
        }
    }
}

fn raw_disk(dir: &Path, data: &[u8], lengths: &[usize]) -> Result<Row> {
    let path = dir.join("raw-disk.bin");
    let bytes: usize = lengths.iter().sum();
    let start = Instant::now();
    let mut f = File::create(&path)?;
    for (i, &len) in lengths.iter().enumerate() {
        f.write_all(chunk_data(data, i, len))?;
    }
    f.sync_all()?;
    let write = start.elapsed();
    drop(f);
    let mut buf = vec![0u8; CHUNK];
    let mut read_pass = || -> Result<Duration> {
        let mut f = File::open(&path)?;
        let mut spent = Duration::ZERO;
        for (i, &len) in lengths.iter().enumerate() {
            let t = Instant::now();
            for piece in buf[..len].chunks_mut(MAX_READ as usize) {
                f.read_exact(piece)?;
            }
            spent += t.elapsed();
            if buf[..len] != *chunk_data(data, i, len) {
                bail!("raw disk: chunk {i} reads back differently");
            }
        }
        Ok(spent)
    };
    drop_cache(&path)?;
    let read_cold = read_pass()?;
    let read_cached = read_pass()?;
    std::fs::remove_file(&path)?;
    Ok(Row {
        name: "raw disk (file)",
        replicas: 1,
        bytes: bytes as u64,
        write,
        write_master: Duration::ZERO,
        read_cold,
        read_cached,
    })
}

fn name(s: &str) -> Name {
    Name::new(s.as_bytes().to_vec()).expect("a valid name")
}

/// Data connections to chunkservers, kept between chunks as the client keeps them.
#[derive(Default)]
struct Pool(HashMap<String, Connection>);

impl Pool {
    async fn get(&mut self, addr: &str) -> Result<&mut Connection> {
        if !self.0.contains_key(addr) {
            let mut c = Connection::connect(addr, alces_proto::DEFAULT_MAX_FRAME, Duration::from_secs(3))
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            Handshake::new(LinkKind::ClientChunkserver, "throughput bench", None)
                .dial(&mut c)
                .await
                .with_context(|| format!("handshake with {addr}"))?;
            self.0.insert(addr.to_string(), c);
        }
        Ok(self.0.get_mut(addr).expect("just inserted"))
    }
}

async fn reply(conn: &mut Connection) -> Result<DataReply> {
    tokio::time::timeout(STEP_TIMEOUT, conn.reader.expect::<DataReply>())
        .await
        .map_err(|_| anyhow!("no answer within {STEP_TIMEOUT:?}"))?
        .map_err(|e| anyhow!("{e}"))
}

/// One chunk through the chain, as `write_chain` in `client/src/data.rs`: pieces split at
/// 64 KiB block boundaries, [`WRITE_WINDOW`] of them unacknowledged, then a finish that
/// syncs every replica. A new chunk's replicas are created by the chain (`create`).
async fn write_chain(
    pool: &mut Pool,
    (chunk, version, create): (ChunkId, ChunkVersion, bool),
    chain: &[ChunkLocation],
    data: &[u8],
) -> Result<()> {
    let head = chain.first().ok_or_else(|| anyhow!("empty chain"))?;
    let conn = pool.get(&head.addr).await?;
    conn.writer.send(&DataRequest::WriteStart { chunk, version, chain: chain[1..].to_vec(), create }).await?;
    match reply(conn).await? {
        DataReply::WriteReady => {}
        other => bail!("chain refused the write: {other:?}"),
    }
    let pieces: Vec<&[u8]> = data.chunks(BLOCK_SIZE as usize).collect();
    let total = pieces.len() as u64;
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < total {
        while sent < total && sent - acked < WRITE_WINDOW {
            let offset = (sent * BLOCK_SIZE) as u32;
            let req = DataRequest::WriteData { id: sent, offset, data: pieces[sent as usize].to_vec() };
            conn.writer.feed(&req).await?;
            sent += 1;
        }
        conn.writer.flush().await?;
        match reply(conn).await? {
            DataReply::WriteDone { id } if id == acked => acked += 1,
            other => bail!("piece {acked}: {other:?}"),
        }
    }
    conn.writer.send(&DataRequest::WriteFinish { id: total }).await?;
    match reply(conn).await? {
        DataReply::WriteFinished { id } if id == total => Ok(()),
        other => bail!("finish: {other:?}"),
    }
}

async fn create_file(master: &MasterClient, file: &str, goal: u8) -> Result<Inode> {
    let req = ClientRequest::Create {
        parent: Inode::ROOT,
        name: name(file),
        kind: FileKind::File,
        mode: 0o644,
        umask: 0o022,
        rdev: 0,
        open: true,
    };
    let inode = match master.call(&Creds::root(), req).await? {
        ClientReply::Changed { attr: Some(a), .. } => a.inode,
        other => bail!("create: unexpected {other:?}"),
    };
    let goal = Goal::new(goal).map_err(|s| anyhow!("goal: {s:?}"))?;
    master.call(&Creds::root(), ClientRequest::SetGoal { inode, goal, recursive: false }).await?;
    Ok(inode)
}

/// Reads the file back chunk by chunk from the first replica listed; returns the time spent
/// asking and reading (not comparing).
#[allow(clippy::too_many_arguments)]
async fn read_pass(
    master: &MasterClient,
    pool: &mut Pool,
    buf: &mut [u8],
    inode: Inode,
    goal: u8,
    size: u64,
    data: &[u8],
    lengths: &[usize],
) -> Result<Duration> {
    let mut spent = Duration::ZERO;
    for (i, &len) in lengths.iter().enumerate() {
        let t = Instant::now();
        let located = master.call(&Creds::root(), ClientRequest::ReadChunk { inode, index: i as u32 }).await?;
        let ClientReply::ChunkLocations { file_size, chunk: Some((chunk, version)), locations } = located else {
            bail!("read chunk {i}: unexpected {located:?}");
        };
        if file_size != size || locations.len() != goal as usize {
            bail!("chunk {i}: file size {file_size} (wrote {size}), {} locations", locations.len());
        }
        let conn = pool.get(&locations[0].addr).await?;
        for (p, piece) in buf[..len].chunks_mut(MAX_READ as usize).enumerate() {
            let req = DataRequest::Read { chunk, version, offset: p as u32 * MAX_READ, len: piece.len() as u32 };
            match conn.call::<_, DataReply>(&req, STEP_TIMEOUT).await? {
                DataReply::Data(d) if d.len() == piece.len() => piece.copy_from_slice(&d),
                other => bail!("read chunk {i} piece {p}: {other:?}"),
            }
        }
        spent += t.elapsed();
        if buf[..len] != *chunk_data(data, i, len) {
            bail!("chunk {i} reads back differently");
        }
    }
    Ok(spent)
}

/// Writes the volume into a new file with `goal` copies, then reads it back twice.
async fn through_chunkservers(
    cluster: &Cluster,
    master: &MasterClient,
    row: &'static str,
    goal: u8,
    data: &[u8],
    lengths: &[usize],
) -> Result<Row> {
    let inode = create_file(master, &format!("goal{goal}"), goal).await?;
    let mut pool = Pool::default();
    let mut write_master = Duration::ZERO;
    let mut size = 0u64;
    let start = Instant::now();
    for (i, &len) in lengths.iter().enumerate() {
        let t = Instant::now();
        let lease = master
            .call(&Creds::root(), ClientRequest::WriteChunk { inode, index: i as u32, after_failure: false })
            .await?;
        write_master += t.elapsed();
        let ClientReply::WriteLease { chunk, version, chain, new_chunk, .. } = lease else {
            bail!("lease: unexpected {lease:?}")
        };
        if chain.len() != goal as usize {
            bail!("asked for {goal} copies, the master chained {} chunkservers", chain.len());
        }
        write_chain(&mut pool, (chunk, version, new_chunk), &chain, chunk_data(data, i, len))
            .await
            .with_context(|| format!("writing chunk {i} through {chain:?}"))?;
        size += len as u64;
        let t = Instant::now();
        master
            .call(
                &Creds::root(),
                ClientRequest::WriteEnd { inode, index: i as u32, chunk, size, added: new_chunk.then_some(version) },
            )
            .await?;
        write_master += t.elapsed();
    }
    let write = start.elapsed();

    let mut files = Vec::new();
    chunk_files(&cluster.dir, &mut files);
    for f in &files {
        drop_cache(f)?;
    }
    let mut buf = vec![0u8; CHUNK];
    let read_cold = read_pass(master, &mut pool, &mut buf, inode, goal, size, data, lengths).await?;
    let read_cached = read_pass(master, &mut pool, &mut buf, inode, goal, size, data, lengths).await?;
    Ok(Row { name: row, replicas: goal as usize, bytes: size, write, write_master, read_cold, read_cached })
}

/// A line of /proc/cpuinfo or /proc/meminfo.
fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// (mount point, file system type, device) of the mount holding `path`.
fn filesystem_of(path: &Path) -> Option<(String, String, String)> {
    let path = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let (fstype, source) = (r.next()?, r.next()?);
            path.starts_with(mount).then(|| (mount.to_string(), fstype.to_string(), source.to_string()))
        })
        .max_by_key(|(m, _, _)| m.len())
}

struct Machine {
    cpus: usize,
    cpu_model: String,
    mem_total_kib: u64,
    fs: String,
}

fn machine(dir: &Path) -> Machine {
    let mem_total_kib =
        proc_field("/proc/meminfo", "MemTotal").and_then(|v| v.trim_end_matches("kB").trim().parse().ok()).unwrap_or(0);
    let (mount, fstype, source) = filesystem_of(dir).unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into()),
        mem_total_kib,
        fs: format!("{fstype} on {source} (mounted at {mount})"),
    }
}

fn report(m: &Machine, dir: &Path, mib: usize, scrub_rate: &str, rows: &[Row]) -> String {
    let raw = &rows[0];
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "machine: {} CPUs ({}), {:.1} GiB RAM",
        m.cpus,
        m.cpu_model,
        m.mem_total_kib as f64 / (1 << 20) as f64
    ));
    line(format!("disk: {} — temp folder {}", m.fs, dir.display()));
    line(format!(
        "volume: {mib} MiB per row ({} chunks of at most 64 MiB), MB = 10^6 bytes; chunkservers: real processes, \
         1 master, scrubber at {scrub_rate}",
        mib.div_ceil(64)
    ));
    line(String::new());
    line(format!(
        "{:<26} {:>10} {:>6} {:>9} {:>10} {:>6} {:>10} {:>6}",
        "", "write MB/s", "x raw", "master s", "cold read", "x raw", "cached rd", "x raw"
    ));
    for r in rows {
        let w = mbps(r.bytes, r.write);
        let rc = mbps(r.bytes, r.read_cold);
        let rw = mbps(r.bytes, r.read_cached);
        let master = if r.write_master.is_zero() { "-".into() } else { format!("{:.2}", r.write_master.as_secs_f64()) };
        line(format!(
            "{:<26} {:>10.1} {:>6.2} {:>9} {:>10.1} {:>6.2} {:>10.1} {:>6.2}",
            r.name,
            w,
            w / mbps(raw.bytes, raw.write),
            master,
            rc,
            rc / mbps(raw.bytes, raw.read_cold),
            rw,
            rw / mbps(raw.bytes, raw.read_cached),
        ));
    }
    line(String::new());
    for r in rows.iter().filter(|r| r.replicas > 1) {
        let w = mbps(r.bytes, r.write);
        line(format!(
            "{}: {} copies on one disk, so the disk took {:.1} MB/s of writes ({:.2} x raw)",
            r.name,
            r.replicas,
            w * r.replicas as f64,
            w * r.replicas as f64 / mbps(raw.bytes, raw.write)
        ));
    }
    for r in rows.iter().filter(|r| !r.write_master.is_zero()) {
        line(format!(
            "{}: without the master round trips (lease + WriteEnd per chunk), writes run at {:.1} MB/s",
            r.name,
            mbps(r.bytes, r.write - r.write_master)
        ));
    }
    out
}

fn json(m: &Machine, mib: usize, scrub_rate: &str, rows: &[Row]) -> serde_json::Value {
    let raw = &rows[0];
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "replicas": r.replicas,
                "bytes": r.bytes,
                "write_secs": r.write.as_secs_f64(),
                "write_master_secs": r.write_master.as_secs_f64(),
                "read_cold_secs": r.read_cold.as_secs_f64(),
                "read_cached_secs": r.read_cached.as_secs_f64(),
                "write_mb_s": mbps(r.bytes, r.write),
                "read_cold_mb_s": mbps(r.bytes, r.read_cold),
                "read_cached_mb_s": mbps(r.bytes, r.read_cached),
                "write_vs_raw": mbps(r.bytes, r.write) / mbps(raw.bytes, raw.write),
                "read_cold_vs_raw": mbps(r.bytes, r.read_cold) / mbps(raw.bytes, raw.read_cold),
                "read_cached_vs_raw": mbps(r.bytes, r.read_cached) / mbps(raw.bytes, raw.read_cached),
            })
        })
        .collect();
    serde_json::json!({
        "bench": "chunkserver-throughput",
        "machine": {
            "cpus": m.cpus,
            "cpu_model": m.cpu_model,
            "mem_total_bytes": m.mem_total_kib * 1024,
            "filesystem": m.fs,
        },
        "volume_mib": mib,
        "scrub_rate": scrub_rate,
        "rows": rows,
    })
}

fn main() -> Result<()> {
    let as_json = std::env::args().any(|a| a == "--json")
        || std::env::var("ALCES_BENCH_JSON").is_ok_and(|v| !v.is_empty() && v != "0");
    let mib: usize = match std::env::var("ALCES_BENCH_MIB") {
        Ok(v) => v.parse().context("ALCES_BENCH_MIB must be a number of MiB")?,
        Err(_) => 1024,
    };
    if mib == 0 {
        bail!("ALCES_BENCH_MIB must be at least 1");
    }
    let scrub_rate = std::env::var("ALCES_BENCH_SCRUB_RATE").unwrap_or_else(|_| "0".into());
    let lengths = chunk_lengths(mib * MIB);
    // Enough random bytes for any chunk's window (see `chunk_data`).
    let data = alces_testkit::pseudo_random_bytes(0x5eed, CHUNK + 16 * 4096);

    let dir = alces_testkit::temp_dir("alces-bench-cs-");
    let m = machine(dir.path());
    eprintln!("raw disk: writing and reading {mib} MiB in {}", dir.path().display());
    let mut rows = vec![raw_disk(dir.path(), &data, &lengths)?];

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let mut layout = Layout::new(dir.path().join("cluster"), 1, 3)?;
        layout.goal = 1;
        layout.chunkserver_extra.push(format!("SCRUB_RATE = {scrub_rate}"));
        eprintln!("starting 1 master and 3 chunkservers (binaries in {})", layout.bin_dir.display());
        let cluster = tokio::task::spawn_blocking(move || Cluster::up(&layout)).await??;
        let master = MasterClient::connect(Options::new(cluster.client_addrs())).await?;
        for (row, goal) in [("1 chunkserver (goal 1)", 1u8), ("chain of 3 (goal 3)", 3)] {
            eprintln!("{row}: writing and reading {mib} MiB");
            rows.push(through_chunkservers(&cluster, &master, row, goal, &data, &lengths).await?);
        }
        master.close().await;
        tokio::task::spawn_blocking(move || drop(cluster)).await?;
        anyhow::Ok(())
    })?;

    let table = report(&m, dir.path(), mib, &scrub_rate, &rows);
    if as_json {
        eprint!("{table}");
        println!("{}", json(&m, mib, &scrub_rate, &rows));
    } else {
        print!("{table}");
    }
    Ok(())
}
