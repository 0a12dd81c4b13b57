//! Time to restore the goal of N GiB after losing one chunkserver (issue 6).
//!
//! ```sh
//! cargo build --release --workspace --bins      # the processes it starts
//! ALCES_BENCH_GIB=1 cargo bench -p alces-master --bench repair [-- --json]
//! ```
//!
//! Starts 1 master and 4 chunkservers with the local launcher (real processes on loopback,
//! each chunkserver with two data folders in one temporary folder, `TMPDIR`), the master with
//! `CHUNKSERVER_TIMEOUT = 2` and `REPLICATIONS_DELAY_INIT = 0`, the scrubber off. It writes
//! `ALCES_BENCH_GIB` GiB (default 1; fractions are rounded up to whole 64 MiB chunks) of
//! pseudo-random bytes as goal-2 files of four full chunks through the client's data path,
//! and waits until every chunk has 2 valid copies and a replication pass found nothing to do.
//! Then it drops the chunk files from the page cache (the copies are read from the disk, as
//! on servers that have been up a while) and SIGKILLs the chunkserver holding the most chunks.
//!
//! From the kill it polls every 200 ms, as the self-healing tests check: `FileInfo` of every
//! file (what `alces fileinfo` shows) and `GET /api/v1/cluster` (the leader's `replication`
//! stats). It reports when the killed server's copies stopped counting (`FileInfo` marks them
//! invalid), when a pass first found under-goal chunks (detection), and when `FileInfo` showed
//! every chunk with 2 valid copies, all on the survivors (repair), with the passes seen in
//! between. The admin API's copies table is checked too, but after the timed part: the master
//! recomputes it only every few seconds, which would add that delay to the time measured.
//! After the timed part, the bench also waits for an idle replication pass, reads every new
//! copy straight from its chunkserver and a few files through the client, and compares their
//! checksums with what was written. MB = 10^6 bytes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use alces_client::data::DataPath;
use alces_client::master_link::{MasterClient, Options};
use alces_master::replication::ORDERS_PER_PASS;
use alces_ops::api::{ClusterView, CopiesCount, ReplicationView};
use alces_ops::launcher::{Cluster, Layout};
use alces_proto::link::client_cs::{DataReply, DataRequest, MAX_READ};
use alces_proto::link::client_master::{ClientReply, ClientRequest};
use alces_proto::types::{ChunkId, ChunkLocation, ChunkVersion, Creds, FileKind, Inode, Name, CHUNK_SIZE};
use alces_proto::{Connection, Handshake, LinkKind, DEFAULT_MAX_FRAME};
use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use serde_json::json;

const CHUNK: usize = CHUNK_SIZE as usize;
const GIB: f64 = (1u64 << 30) as f64;
const CHUNKSERVERS: usize = 4;
const GOAL: usize = 2;
const CHUNKS_PER_FILE: usize = 4;
/// Seconds a silent chunkserver's copies keep counting (the master's `CHUNKSERVER_TIMEOUT`).
const CHUNKSERVER_TIMEOUT: u64 = 2;
const POLL: Duration = Duration::from_millis(200);
/// Files read back through the client after the repair (those with re-made copies first).
const VERIFY_FILES: usize = 3;

/// A file of the bench: chunks `first..first + chunks` of the volume, in order.
struct BenchFile {
    name: String,
    inode: Inode,
    first: usize,
    chunks: usize,
}

/// The bytes of chunk `n` of the volume (each chunk its own pseudo-random stream).
fn chunk_bytes(n: usize) -> Vec<u8> {
    alces_testkit::pseudo_random_bytes(0x7e9a_1000 + n as u64, CHUNK)
}

/// One chunk as `FileInfo` shows it.
struct ChunkState {
    /// Position in the volume.
    n: usize,
    chunk: ChunkId,
    version: ChunkVersion,
    copies: Vec<(ChunkLocation, bool)>,
}

impl ChunkState {
    fn valid_on(&self) -> Vec<u64> {
        self.copies.iter().filter(|(_, v)| *v).map(|(l, _)| l.id.0).collect()
    }
}

/// What the master says about every chunk of the volume, and its admin view.
struct Snapshot {
    chunks: Vec<ChunkState>,
    view: ClusterView,
}

impl Snapshot {
    fn replication(&self) -> Result<&ReplicationView> {
        self.view.replication.as_ref().context("the master answering is not the leader")
    }

    /// Chunks that `FileInfo` does not show at their goal on `live` servers only.
    fn fileinfo_shortfall(&self, live: &[u64]) -> Vec<String> {
        self.chunks
            .iter()
            .filter_map(|c| {
                let valid = c.valid_on();
                let ok = valid.len() == GOAL && valid.iter().all(|s| live.contains(s));
                (!ok).then(|| format!("chunk {} valid on {valid:?}", c.chunk.hex()))
            })
            .collect()
    }

    /// Why the volume is not at its goal on `live` servers only, by `FileInfo` and by the
    /// admin API's copies table (which the master recomputes only every few seconds), or `None`.
    fn shortfall(&self, live: &[u64]) -> Option<String> {
        let mut wrong = self.fileinfo_shortfall(live);
        let want = vec![CopiesCount { goal: GOAL as u8, valid: GOAL as u32, chunks: self.chunks.len() as u64 }];
        if self.view.chunk_copies != want {
            wrong.push(format!("copies table {:?}", self.view.chunk_copies));
        }
        let n = wrong.len();
        wrong.truncate(4);
        (n > 0).then(|| format!("{n} problems: {}", wrong.join("; ")))
    }
}

struct Bench {
    cluster: Cluster,
    master: MasterClient,
    /// How long any wait may take.
    timeout: Duration,
    files: Vec<BenchFile>,
    /// CRC-32 of every chunk written.
    crcs: Vec<u32>,
}

impl Bench {
    async fn call(&self, req: ClientRequest) -> Result<ClientReply> {
        Ok(self.master.call(&Creds::root(), req).await?)
    }

    fn view(&self) -> Result<ClusterView> {
        tokio::task::block_in_place(|| self.cluster.view()).context("no master answers the admin API")
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let mut chunks = Vec::with_capacity(self.crcs.len());
        for f in &self.files {
            let ClientReply::FileInfo(reports) = self.call(ClientRequest::FileInfo { inode: f.inode }).await? else {
                bail!("fileinfo {}: unexpected reply", f.name);
            };
            let indexes: Vec<u32> = reports.iter().map(|r| r.index).collect();
            ensure!(indexes == (0..f.chunks as u32).collect::<Vec<_>>(), "{}: chunks {indexes:?}", f.name);
            chunks.extend(reports.into_iter().map(|r| ChunkState {
                n: f.first + r.index as usize,
                chunk: r.chunk,
                version: r.version,
                copies: r.copies,
            }));
        }
        Ok(Snapshot { chunks, view: self.view()? })
    }

    /// Writes `count` chunks as files of [`CHUNKS_PER_FILE`]; returns the time spent writing.
    async fn write(&mut self, count: usize) -> Result<Duration> {
        let data = DataPath::new(self.master.clone());
        let mut spent = Duration::ZERO;
        for first in (0..count).step_by(CHUNKS_PER_FILE) {
            let name = format!("f{:04}", first / CHUNKS_PER_FILE);
            let create = ClientRequest::Create {
                parent: Inode::ROOT,
                name: Name::new(name.as_bytes().to_vec()).map_err(|s| anyhow!("{s:?}"))?,
                kind: FileKind::File,
                mode: 0o644,
                umask: 0o022,
                rdev: 0,
                open: true,
            };
            let ClientReply::Changed { attr: Some(attr), .. } = self.call(create).await? else {
                bail!("create {name}: unexpected reply")
            };
            let chunks = CHUNKS_PER_FILE.min(count - first);
            for index in 0..chunks {
                let bytes = tokio::task::block_in_place(|| chunk_bytes(first + index));
                self.crcs.push(crc32fast::hash(&bytes));
                let t = Instant::now();
                let size = (index as u64 + 1) * CHUNK_SIZE;
                data.write_chunk(attr.inode, index as u32, &[(0, &bytes)], size)
                    .await
                    .map_err(|s| anyhow!("writing {name} chunk {index}: {s:?}"))?;
                spent += t.elapsed();
            }
            self.call(ClientRequest::Release { inode: attr.inode }).await?;
            self.files.push(BenchFile { name, inode: attr.inode, first, chunks });
        }
        Ok(spent)
    }

    /// Polls until `check` finds nothing wrong (`None`), for at most the bench's timeout.
    async fn wait<F>(&self, what: &str, mut check: F) -> Result<Snapshot>
    where
        F: FnMut(&Snapshot) -> Result<Option<String>>,
    {
        let start = Instant::now();
        loop {
            let snap = self.snapshot().await?;
            let Some(wrong) = check(&snap)? else { return Ok(snap) };
            ensure!(start.elapsed() < self.timeout, "no {what} after {:?}: {wrong}", self.timeout);
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the volume is at its goal on `live` servers and pass `after + passes` or a
    /// later one found nothing to do (with `passes` >= 2, a pass that began after this call:
    /// pass `after + 1` may have begun before). Also returns the time between the passes seen
    /// beginning meanwhile (seconds), if two were.
    async fn wait_idle(&self, live: &[u64], after: u64, passes: u64) -> Result<(Snapshot, Option<f64>)> {
        let mut seen: Vec<(Instant, u64)> = Vec::new();
        let snap = self
            .wait("an idle replication pass", |s| {
                let r = s.replication()?;
                if seen.last().is_none_or(|(_, p)| *p != r.passes) {
                    seen.push((Instant::now(), r.passes));
                }
                let busy = r.passes < after + passes || !r.idle();
                Ok(s.shortfall(live).or(busy.then(|| format!("{r:?}"))))
            })
            .await?;
        // The first entry is where polling began, the others are passes beginning.
        let interval = match seen.get(1..) {
            Some([first, .., last]) => Some((last.0 - first.0).as_secs_f64() / (last.1 - first.1) as f64),
            _ => None,
        };
        Ok((snap, interval))
    }

    /// Drops the chunk files' pages from the page cache (they were synced when written).
    fn drop_page_cache(&self) -> Result<usize> {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        let mut stack: Vec<_> = self.cluster.file.chunkservers.iter().flat_map(|c| c.folders.clone()).collect();
        let mut dropped = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)?.flatten() {
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    stack.push(path);
                } else if entry.file_name().to_string_lossy().ends_with(".mfs") {
                    let f = std::fs::File::open(&path)?;
                    posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
                        .with_context(|| format!("fadvise {}", path.display()))?;
                    dropped += 1;
                }
            }
        }
        Ok(dropped)
    }
}

/// A replication pass seen while polling: when it was first seen and what it had found.
struct PassSeen {
    pass: u64,
    at: Duration,
    under_goal: u64,
    /// Copies made since the kill, when it was seen.
    copies: u64,
}

/// Everything one run measured.
struct Run {
    chunks: usize,
    files: usize,
    write: Duration,
    victim: u64,
    lost: usize,
    /// The killed server's copies stopped counting (`FileInfo`).
    invalidated: Option<Duration>,
    /// First pass that found under-goal chunks.
    detected: Option<Duration>,
    repaired: Duration,
    polls: usize,
    passes: Vec<PassSeen>,
    /// Pass interval seen while waiting for an idle pass before the kill (seconds).
    idle_pass_interval: Option<f64>,
    /// CPU time from the kill to the repair.
    cpu: CpuTicks,
    copies_made: u64,
    orders_failed: u64,
    /// Servers holding the copy that survived, and servers given a new copy: chunks each.
    sources: BTreeMap<u64, usize>,
    targets: BTreeMap<u64, usize>,
    verified_files: usize,
}

async fn measure(b: &mut Bench, count: usize) -> Result<Run> {
    eprintln!("writing {count} chunks of 64 MiB (goal {GOAL})");
    let write = b.write(count).await?;
    let all: Vec<u64> = b.cluster.file.chunkservers.iter().map(|c| c.id).collect();

    // Every chunk at its goal, and a pass that started after that found nothing to do.
    eprintln!("waiting for {GOAL} copies of every chunk and an idle replication manager");
    let placed = b.wait("placement of every chunk", |s| Ok(s.shortfall(&all))).await?;
    let (idle, idle_pass_interval) = b.wait_idle(&all, placed.replication()?.passes, 3).await?;

    let mut per_server: BTreeMap<u64, usize> = all.iter().map(|&id| (id, 0)).collect();
    for c in &idle.chunks {
        for s in c.valid_on() {
            *per_server.entry(s).or_default() += 1;
        }
    }
    let (&victim, &lost) = per_server.iter().max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id))).context("servers")?;
    ensure!(lost > 0, "no chunkserver holds a chunk: {per_server:?}");
    let survivors: Vec<u64> = all.iter().copied().filter(|&s| s != victim).collect();
    let before: BTreeMap<ChunkId, Vec<u64>> = idle.chunks.iter().map(|c| (c.chunk, c.valid_on())).collect();
    let dropped = tokio::task::block_in_place(|| b.drop_page_cache())?;
    let start_stats = idle.replication()?.clone();
    eprintln!("dropped {dropped} chunk files from the page cache; killing cs{victim} ({lost} of {count} chunks)");

    // The timed part.
    tokio::task::block_in_place(|| b.cluster.kill_chunkserver(victim, Signal::SIGKILL))?;
    let killed = Instant::now();
    let cpu_start = CpuTicks::read(&b.cluster);
    let (mut invalidated, mut detected, mut passes, mut polls) = (None, None, Vec::new(), 0);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (repaired, after, cpu) = loop {
        tick.tick().await;
        let snap = b.snapshot().await?;
        let at = killed.elapsed();
        polls += 1;
        let r = snap.replication()?;
        let victim_valid = snap.chunks.iter().any(|c| c.valid_on().contains(&victim));
        if invalidated.is_none() && !victim_valid {
            invalidated = Some(at);
        }
        if detected.is_none() && r.passes > start_stats.passes && r.under_goal > 0 {
            detected = Some(at);
        }
        if r.passes > passes.last().map_or(start_stats.passes, |p: &PassSeen| p.pass) {
            let copies = r.replicated - start_stats.replicated;
            passes.push(PassSeen { pass: r.passes, at, under_goal: r.under_goal, copies });
        }
        let wrong = snap.fileinfo_shortfall(&survivors);
        if wrong.is_empty() {
            break (at, snap, CpuTicks::read(&b.cluster).since(&cpu_start));
        }
        ensure!(at < b.timeout, "not repaired {at:?} after the kill: {} chunks, {}", wrong.len(), wrong[0]);
    };
    eprintln!("repaired after {:.2} s; checking the copies", repaired.as_secs_f64());

    // Outside the timed part: nothing moves any more, and the bytes are right.
    let last_pass = after.replication()?.passes;
    let (settled, _) = b.wait_idle(&survivors, last_pass, 2).await?;
    let end_stats = settled.replication()?;
    let targets = verify_new_copies(b, &after, &before).await?;
    let mut sources = BTreeMap::new();
    for s in before.values().filter(|on| on.contains(&victim)).flat_map(|on| on.iter().filter(|&&s| s != victim)) {
        *sources.entry(*s).or_default() += 1;
    }
    let verified_files = verify_files(b, &after, &before).await?;
    Ok(Run {
        chunks: count,
        files: b.files.len(),
        write,
        victim,
        lost,
        invalidated,
        detected,
        repaired,
        polls,
        passes,
        idle_pass_interval,
        cpu,
        copies_made: end_stats.replicated - start_stats.replicated,
        orders_failed: end_stats.failed - start_stats.failed,
        sources,
        targets,
        verified_files,
    })
}

/// CRC-32 of a whole chunk read straight from one chunkserver (which checks its own CRCs).
async fn replica_crc(loc: &ChunkLocation, chunk: ChunkId, version: ChunkVersion) -> Result<u32> {
    let mut conn = Connection::connect(&loc.addr, DEFAULT_MAX_FRAME, Duration::from_secs(3)).await?;
    Handshake::new(LinkKind::ClientChunkserver, "repair bench", None).dial(&mut conn).await?;
    let mut crc = crc32fast::Hasher::new();
    for offset in (0..CHUNK as u32).step_by(MAX_READ as usize) {
        let req = DataRequest::Read { chunk, version, offset, len: MAX_READ };
        match conn.call::<_, DataReply>(&req, Duration::from_secs(30)).await? {
            DataReply::Data(d) if d.len() == MAX_READ as usize => crc.update(&d),
            other => bail!("cs{} chunk {} at {offset}: {other:?}", loc.id, chunk.hex()),
        }
    }
    Ok(crc.finalize())
}

/// Reads every copy made by the repair from its server; returns how many each server got.
async fn verify_new_copies(
    b: &Bench,
    after: &Snapshot,
    before: &BTreeMap<ChunkId, Vec<u64>>,
) -> Result<BTreeMap<u64, usize>> {
    let mut checked = BTreeMap::new();
    for c in &after.chunks {
        for (loc, _) in c.copies.iter().filter(|(l, v)| *v && !before[&c.chunk].contains(&l.id.0)) {
            let crc = replica_crc(loc, c.chunk, c.version).await?;
            ensure!(crc == b.crcs[c.n], "new copy of chunk {} on cs{}: checksum {crc:08x}", c.chunk.hex(), loc.id);
            *checked.entry(loc.id.0).or_default() += 1;
        }
    }
    Ok(checked)
}

/// Reads up to [`VERIFY_FILES`] whole files through the client (files whose chunks got new
/// copies first); returns how many.
async fn verify_files(b: &Bench, after: &Snapshot, before: &BTreeMap<ChunkId, Vec<u64>>) -> Result<usize> {
    let repaired =
        |f: &BenchFile| after.chunks[f.first..f.first + f.chunks].iter().any(|c| c.valid_on() != before[&c.chunk]);
    let mut files: Vec<&BenchFile> = b.files.iter().collect();
    files.sort_by_key(|f| !repaired(f));
    let data = DataPath::new(b.master.clone());
    for f in files.iter().take(VERIFY_FILES) {
        for i in 0..f.chunks {
            let got = data
                .read(f.inode, i as u64 * CHUNK_SIZE, CHUNK as u32)
                .await
                .map_err(|s| anyhow!("reading {} chunk {i}: {s:?}", f.name))?
                .to_bytes();
            let crc = crc32fast::hash(&got);
            ensure!(got.len() == CHUNK && crc == b.crcs[f.first + i], "{} chunk {i}: checksum {crc:08x}", f.name);
        }
    }
    Ok(files.len().min(VERIFY_FILES))
}

/// The machine and the temporary folder's file system.
struct Machine {
    cpus: usize,
    cpu_model: String,
    mem_bytes: u64,
    tmp: String,
    tmp_free_bytes: u64,
}

fn machine(tmp: &Path) -> Machine {
    let proc = |file: &str, key: &str| -> Option<String> {
        let text = std::fs::read_to_string(file).ok()?;
        text.lines().filter_map(|l| l.split_once(':')).find(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().into())
    };
    let mem_kib: u64 =
        proc("/proc/meminfo", "MemTotal").and_then(|v| v.trim_end_matches(" kB").parse().ok()).unwrap_or(0);
    let free = nix::sys::statvfs::statvfs(tmp).map(|s| s.blocks_available() * s.fragment_size());
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: proc("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into()),
        mem_bytes: mem_kib * 1024,
        tmp: tmp.display().to_string(),
        tmp_free_bytes: free.unwrap_or(0),
    }
}

/// CPU time in clock ticks: the machine's (over all CPUs, from `/proc/stat`) and the
/// cluster's processes' (`/proc/PID/stat`; a process that is gone counts 0).
struct CpuTicks {
    total: u64,
    busy: u64,
    iowait: u64,
    master: u64,
    chunkservers: u64,
}

impl CpuTicks {
    fn read(cluster: &Cluster) -> CpuTicks {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<u64> =
            stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let total: u64 = cpu.iter().take(8).sum();
        let (idle, iowait) = (cpu.get(3).copied().unwrap_or(0), cpu.get(4).copied().unwrap_or(0));
        let process = |pid: u32| -> u64 {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the command name: state is field 3, utime and stime are fields 14 and 15.
            let fields: Vec<&str> = text.rsplit_once(')').map_or("", |(_, f)| f).split_whitespace().collect();
            fields.get(11..13).map_or(0, |t| t.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        };
        CpuTicks {
            total,
            busy: total - idle - iowait,
            iowait,
            master: cluster.file.masters.iter().map(|m| process(m.pid)).sum(),
            chunkservers: cluster.file.chunkservers.iter().map(|c| process(c.pid)).sum(),
        }
    }

    fn since(&self, start: &CpuTicks) -> CpuTicks {
        CpuTicks {
            total: self.total - start.total,
            busy: self.busy - start.busy,
            iowait: self.iowait - start.iowait,
            master: self.master - start.master,
            chunkservers: self.chunkservers - start.chunkservers,
        }
    }

    /// Shares of the machine's CPU time: (busy, iowait, master, chunkservers).
    fn shares(&self) -> [f64; 4] {
        let total = self.total.max(1) as f64;
        [self.busy, self.iowait, self.master, self.chunkservers].map(|t| t as f64 / total)
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("not seen".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn report(m: &Machine, r: &Run) -> String {
    let lost_bytes = r.lost as f64 * CHUNK as f64;
    let written = r.chunks as f64 * CHUNK as f64;
    let rate = |d: Duration| (lost_bytes / 1e6 / d.as_secs_f64(), r.lost as f64 / d.as_secs_f64());
    let (mbs, cps) = rate(r.repaired);
    let mut out = vec![
        format!("machine: {} CPUs ({}), {:.1} GiB RAM", m.cpus, m.cpu_model, m.mem_bytes as f64 / GIB),
        format!("temp folder: {} ({:.1} GiB free at the start)", m.tmp, m.tmp_free_bytes as f64 / GIB),
        format!(
            "cluster: 1 master, {CHUNKSERVERS} chunkservers (real processes, 2 data folders each, one disk), goal \
             {GOAL}, CHUNKSERVER_TIMEOUT = {CHUNKSERVER_TIMEOUT} s, REPLICATIONS_DELAY_INIT = 0, scrubber off; \
             replication passes {} apart when idle, at most {ORDERS_PER_PASS} orders a pass",
            r.idle_pass_interval.map_or("?".into(), |s| format!("{s:.2} s")),
        ),
        format!(
            "volume: {:.2} GiB = {} chunks of 64 MiB in {} files, written in {:.1} s ({:.1} MB/s, chains of {GOAL})",
            written / GIB,
            r.chunks,
            r.files,
            r.write.as_secs_f64(),
            written / 1e6 / r.write.as_secs_f64()
        ),
        format!(
            "killed cs{} (SIGKILL) holding {} of {} chunks: {} chunks ({:.0} MB) lost a copy; page cache dropped before",
            r.victim,
            r.lost,
            r.chunks,
            r.lost,
            lost_bytes / 1e6
        ),
        String::new(),
        format!("  {:<52} {:>10}", format!("after the kill (polled every {} ms)", POLL.as_millis()), "time"),
        format!("  {:<52} {:>10}", "the killed server's copies stop counting (FileInfo)", secs(r.invalidated)),
        format!("  {:<52} {:>10}", "detected: first pass with under_goal > 0", secs(r.detected)),
        format!("  {:<52} {:>10}", "repaired: FileInfo shows 2 valid copies of each chunk", secs(Some(r.repaired))),
        String::new(),
        format!("repair rate, kill -> repaired:     {mbs:>7.1} MB/s {cps:>6.2} chunks/s"),
    ];
    if let Some(d) = r.detected.filter(|d| *d < r.repaired) {
        let (mbs, cps) = rate(r.repaired - d);
        out.push(format!("repair rate, detected -> repaired: {mbs:>7.1} MB/s {cps:>6.2} chunks/s"));
    }
    out.push(format!(
        "copies made by the replication manager: {} (failed orders: {}); {} polls",
        r.copies_made, r.orders_failed, r.polls
    ));
    let per = |m: &BTreeMap<u64, usize>| m.iter().map(|(cs, n)| format!("cs{cs} {n}")).collect::<Vec<_>>().join(", ");
    out.push(format!("lost chunks' surviving copies on: {}; new copies on: {}", per(&r.sources), per(&r.targets)));
    let [busy, iowait, master, chunkservers] = r.cpu.shares().map(|x| x * 100.0);
    out.push(format!(
        "CPU from the kill to the repair, in % of all {} CPUs: {busy:.0}% busy, {iowait:.0}% waiting for I/O; the master took \
         {master:.0}%, the surviving chunkservers {chunkservers:.0}% (the rest of busy: this bench and other work)",
        m.cpus
    ));
    out.push(format!("passes seen from the kill to the repair ({}):", r.passes.len()));
    out.push(format!("  {:>6} {:>9} {:>11} {:>12}", "pass", "seen at", "under_goal", "copies made"));
    for p in &r.passes {
        out.push(format!("  {:>6} {:>8.2}s {:>11} {:>12}", p.pass, p.at.as_secs_f64(), p.under_goal, p.copies));
    }
    out.push(format!(
        "after the repair: an idle pass, the copies table agrees; {} new copies read straight from their servers and \
         {} files read through the client: checksums match",
        r.targets.values().sum::<usize>(),
        r.verified_files
    ));
    out.join("\n") + "\n"
}

fn to_json(m: &Machine, r: &Run) -> serde_json::Value {
    let lost_bytes = r.lost as u64 * CHUNK_SIZE;
    let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let after_detection = r.detected.filter(|d| *d < r.repaired).map(|d| r.repaired - d);
    json!({
        "bench": "repair",
        "machine": {
            "cpus": m.cpus,
            "cpu_model": m.cpu_model,
            "mem_total_bytes": m.mem_bytes,
            "tmp": m.tmp,
            "tmp_free_bytes": m.tmp_free_bytes,
        },
        "chunkservers": CHUNKSERVERS,
        "goal": GOAL,
        "chunkserver_timeout_secs": CHUNKSERVER_TIMEOUT,
        "orders_per_pass": ORDERS_PER_PASS,
        "idle_pass_interval_secs": r.idle_pass_interval,
        "gib": r.chunks as f64 * CHUNK as f64 / GIB,
        "chunks": r.chunks,
        "files": r.files,
        "write_secs": r.write.as_secs_f64(),
        "victim": r.victim,
        "lost_chunks": r.lost,
        "lost_bytes": lost_bytes,
        "invalidated_secs": s(r.invalidated),
        "detected_secs": s(r.detected),
        "repaired_secs": r.repaired.as_secs_f64(),
        "repair_mb_s": lost_bytes as f64 / 1e6 / r.repaired.as_secs_f64(),
        "repair_chunks_s": r.lost as f64 / r.repaired.as_secs_f64(),
        "repair_after_detection_mb_s": after_detection.map(|d| lost_bytes as f64 / 1e6 / d.as_secs_f64()),
        "repair_after_detection_chunks_s": after_detection.map(|d| r.lost as f64 / d.as_secs_f64()),
        "copies_made": r.copies_made,
        "orders_failed": r.orders_failed,
        "polls": r.polls,
        "passes": r.passes.iter().map(|p| json!({
            "pass": p.pass, "seen_secs": p.at.as_secs_f64(), "under_goal": p.under_goal, "copies_made": p.copies,
        })).collect::<Vec<_>>(),
        "surviving_copies_on": r.sources,
        "new_copies_on": r.targets,
        "verified_copies": r.targets.values().sum::<usize>(),
        "verified_files": r.verified_files,
        "cpu_shares_kill_to_repair": {
            "busy": r.cpu.shares()[0],
            "iowait": r.cpu.shares()[1],
            "master": r.cpu.shares()[2],
            "chunkservers": r.cpu.shares()[3],
        },
    })
}

fn main() -> Result<()> {
    let as_json = std::env::args().any(|a| a == "--json")
        || std::env::var("ALCES_BENCH_JSON").is_ok_and(|v| !v.is_empty() && v != "0");
    let gib: f64 = match std::env::var("ALCES_BENCH_GIB") {
        Ok(v) => v.parse().context("ALCES_BENCH_GIB must be a number of GiB")?,
        Err(_) => 1.0,
    };
    ensure!(gib.is_finite() && gib > 0.0, "ALCES_BENCH_GIB must be more than 0");
    let count = (gib * GIB / CHUNK as f64).ceil() as usize;
    // Enough time for slow disks: a minute, and two more per GiB.
    let timeout = Duration::from_secs_f64(60.0 + 120.0 * gib);

    let dir = alces_testkit::temp_dir("alces-bench-repair-");
    let m = machine(dir.path());
    // Every chunk twice, the copies re-made while the killed server's stay on disk, and room.
    let need = (count * CHUNK) as u64 * (GOAL as u64 + 1) + (1 << 30);
    ensure!(
        m.tmp_free_bytes >= need,
        "{} has {:.1} GiB free, the bench needs {:.1} GiB (set TMPDIR elsewhere or lower ALCES_BENCH_GIB)",
        m.tmp,
        m.tmp_free_bytes as f64 / GIB,
        need as f64 / GIB
    );

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let run = rt.block_on(async {
        let mut layout = Layout::new(dir.path().join("cluster"), 1, CHUNKSERVERS)?;
        layout.goal = GOAL as u8;
        layout.master_extra.push(format!("CHUNKSERVER_TIMEOUT = {CHUNKSERVER_TIMEOUT}"));
        layout.master_extra.push("REPLICATIONS_DELAY_INIT = 0".into());
        layout.chunkserver_extra.push("SCRUB_RATE = 0".into());
        eprintln!("starting 1 master and {CHUNKSERVERS} chunkservers (binaries in {})", layout.bin_dir.display());
        let cluster = tokio::task::spawn_blocking(move || Cluster::up(&layout)).await??;
        let master = MasterClient::connect(Options::new(cluster.client_addrs())).await?;
        let mut bench = Bench { cluster, master, timeout, files: Vec::new(), crcs: Vec::new() };
        let run = measure(&mut bench, count).await;
        bench.master.close().await;
        let Bench { cluster, .. } = bench;
        tokio::task::spawn_blocking(move || drop(cluster)).await?;
        run
    })?;
    drop(rt);
    drop(dir);

    let table = report(&m, &run);
    if as_json {
        eprint!("{table}");
        println!("{}", to_json(&m, &run));
    } else {
        print!("{table}");
    }
    Ok(())
}
