//! The floor under one replicated change on this machine, without Raft.
//!
//! `cargo bench -p alces-raft-store --bench sync_floor` measures, one change at a time, what
//! any system that syncs every change on a majority of three nodes must pay here: a leader
//! sends a 200-byte record to two followers over loopback TCP and syncs it to its own file
//! meanwhile; each follower writes and syncs it, then answers; the change counts when the
//! leader's sync and one follower's answer are in. Each node writes into a file written full
//! and synced beforehand, so a sync overwrites blocks (as the recycled write-ahead logs of
//! the masters do). Rows: the sync alone, the round trip alone (no sync), and the two
//! together. Compare the last with `--bench commit` (one proposer) for what Raft adds, and
//! with a MooseFS mount's time per change (its master does not sync) for what the target asks.
//!
//! The files go to `ALCES_BENCH_DIR` (default: the system's temporary folder), which should
//! be on the disk the masters use.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

const RECORD: usize = 200;
const FILE_BYTES: u64 = 16 << 20;
const RUN: Duration = Duration::from_secs(5);

/// A file written full and synced, overwritten from its start, record after record.
struct Log {
    file: File,
    at: u64,
}

impl Log {
    fn create(path: &Path) -> Result<Log> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let block = vec![0u8; 1 << 20];
        for _ in 0..FILE_BYTES / block.len() as u64 {
            file.write_all(&block)?;
        }
        file.sync_all()?;
        Ok(Log { file, at: 0 })
    }

    fn append(&mut self, record: &[u8], sync: bool) -> Result<()> {
        if self.at + record.len() as u64 > FILE_BYTES {
            self.at = 0;
        }
        self.file.write_all_at(record, self.at)?;
        self.at += record.len() as u64;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// A follower: reads records, writes (and syncs) each, answers with the record's number.
fn follower(listener: TcpListener, mut log: Log, sync: bool) -> Result<()> {
    let (mut conn, _) = listener.accept()?;
    conn.set_nodelay(true)?;
    let mut record = [0u8; RECORD];
    loop {
        // The leader closes the connection at the end of a row (the slower follower may
        // still be answering then).
        if conn.read_exact(&mut record).is_err() {
            return Ok(());
        }
        log.append(&record, sync)?;
        if conn.write_all(&record[..8]).is_err() {
            return Ok(());
        }
    }
}

/// One change at a time for [`RUN`]; returns the latency histogram in microseconds.
fn run(dir: &Path, replicate: bool, sync: bool) -> Result<Histogram<u64>> {
    let mut leader = Log::create(&dir.join("leader.log"))?;
    let mut peers = Vec::new();
    let mut threads = Vec::new();
    // Answers of both followers, as record numbers; a slower follower's late answers are
    // passed over, as a Raft leader passes over acknowledgements of committed entries.
    let (acks_tx, acks) = mpsc::channel::<u64>();
    if replicate {
        for i in 0..2 {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let log = Log::create(&dir.join(format!("follower{i}.log")))?;
            threads.push(thread::spawn(move || follower(listener, log, sync)));
            let conn = TcpStream::connect(addr)?;
            conn.set_nodelay(true)?;
            let mut answers = conn.try_clone()?;
            let tx = acks_tx.clone();
            threads.push(thread::spawn(move || {
                let mut n = [0u8; 8];
                while answers.read_exact(&mut n).is_ok() {
                    let _ = tx.send(u64::from_le_bytes(n));
                }
                Ok(())
            }));
            peers.push(conn);
        }
    }
    // With both answer readers gone (the followers failed), waiting for an answer fails.
    drop(acks_tx);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let mut record = [0x5au8; RECORD];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        record[..8].copy_from_slice(&n.to_le_bytes());
        let t = Instant::now();
        for p in &mut peers {
            p.write_all(&record)?;
        }
        leader.append(&record, sync)?;
        // A majority of three: the leader and the first follower to answer.
        while replicate && acks.recv()? != n {}
        hist.record(t.elapsed().as_micros() as u64)?;
        n += 1;
    }
    for p in &peers {
        p.shutdown(std::net::Shutdown::Both)?;
    }
    for f in threads {
        f.join().map_err(|_| anyhow::anyhow!("a follower thread panicked"))??;
    }
    Ok(hist)
}

fn main() -> Result<()> {
    let base: PathBuf = std::env::var_os("ALCES_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("alces-sync-floor").tempdir_in(&base)?;
    println!("one change ({RECORD} bytes) at a time, {}s per row, files in {}", RUN.as_secs(), base.display());
    println!("{:<44} {:>10} {:>9} {:>9}", "", "changes/s", "p50 us", "p99 us");
    let rows = [
        ("sync of the leader's file alone", false, true),
        ("loopback round trip to 2 followers, no sync", true, false),
        ("synced on a majority of 3 (the floor)", true, true),
    ];
    for (name, replicate, sync) in rows {
        let h = run(dir.path(), replicate, sync)?;
        let rate = h.len() as f64 / RUN.as_secs_f64();
        println!("{name:<44} {rate:>10.0} {:>9} {:>9}", h.value_at_quantile(0.5), h.value_at_quantile(0.99));
    }
    Ok(())
}
