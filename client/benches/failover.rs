//! How long an application on a mount stalls when the leader dies: 3 masters, 3 chunkservers,
//! one mount; one thread keeps doing small file operations (create and write 4 KiB, close,
//! stat, and every tenth file an unlink) and records when each began and ended. The leader is
//! killed with SIGKILL `ALCES_BENCH_KILLS` times (default 10), each time after the group has
//! settled again with the killed master back. The stall of one kill is the longest wait of any
//! operation for an answer after the kill (an operation begun before the kill counts from
//! the kill). Prints p50, p99 and the maximum over the kills, and the operation latency
//! without kills for comparison.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alces_ops::launcher::{Cluster, Layout};
use alces_testkit::temp_dir;
use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;

/// (began, ended) of every operation.
type Log = Arc<Mutex<Vec<(Instant, Instant)>>>;

fn workload(dir: PathBuf, stop: Arc<AtomicBool>, log: Log) -> Result<u64> {
    fs::create_dir_all(&dir)?;
    let data = vec![0x5au8; 4096];
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let p = dir.join(format!("f{i}"));
        let t = Instant::now();
        let mut f = fs::File::create(&p).with_context(|| format!("create {}", p.display()))?;
        f.write_all(&data).with_context(|| format!("write {}", p.display()))?;
        drop(f);
        let meta = fs::metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        ensure!(meta.len() == 4096, "{} has {} bytes", p.display(), meta.len());
        if i % 10 == 9 {
            fs::remove_file(&p).with_context(|| format!("unlink {}", p.display()))?;
        }
        log.lock().expect("log lock").push((t, Instant::now()));
        i += 1;
    }
    Ok(i)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    let kills: usize = std::env::var("ALCES_BENCH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let tmp = temp_dir("alces-bench-failover-");
    let mnt = tmp.path().join("mnt");
    let mut layout = Layout::new(tmp.path().join("cluster"), 3, 3)?;
    layout.mount = Some(mnt.clone());
    let mut c = Cluster::up(&layout)?;

    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::default();
    let worker = {
        let (stop, log, dir) = (stop.clone(), log.clone(), mnt.join("failover"));
        std::thread::spawn(move || workload(dir, stop, log))
    };
    // A quiet stretch first: the latency without faults.
    std::thread::sleep(Duration::from_secs(5));
    let quiet: Vec<Duration> = {
        let l = log.lock().expect("log lock");
        let mut v: Vec<Duration> = l.iter().map(|(b, e)| *e - *b).collect();
        v.sort();
        v
    };
    ensure!(!quiet.is_empty(), "no operation completed in 5 s");

    let mut stalls = Vec::new();
    for k in 0..kills {
        let leader = c.wait_leader(Duration::from_secs(60))?;
        let killed = Instant::now();
        c.kill_master(leader, Signal::SIGKILL)?;
        // Settle: operations flow again for 3 s after the kill's effects, then the master returns.
        std::thread::sleep(Duration::from_secs(5));
        let resumed = {
            let l = log.lock().expect("log lock");
            l.iter().filter(|(b, _)| *b > killed + Duration::from_secs(3)).count()
        };
        ensure!(resumed > 0, "no operation began and ended from 3 to 5 s after kill {k}");
        let stall = {
            let l = log.lock().expect("log lock");
            l.iter().filter(|(_, e)| *e > killed).map(|(b, e)| *e - (*b).max(killed)).max().unwrap_or_default()
        };
        eprintln!("kill {k}: master {leader}; the longest wait after it was {stall:?}");
        stalls.push(stall);
        c.start_master(leader)?;
        c.wait_leader(Duration::from_secs(60))?;
        std::thread::sleep(Duration::from_secs(3));
    }
    stop.store(true, Ordering::Relaxed);
    let ops = worker.join().map_err(|_| anyhow::anyhow!("the workload panicked"))??;
    stalls.sort();
    println!(
        "failover: {kills} leader kills (SIGKILL), 3 masters, 3 chunkservers, one mount, {ops} operations, no error"
    );
    println!(
        "  stall after a kill: p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        percentile(&stalls, 0.5).as_secs_f64(),
        percentile(&stalls, 0.99).as_secs_f64(),
        stalls.last().expect("kills > 0").as_secs_f64()
    );
    println!(
        "  an operation without faults: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&quiet, 0.5).as_secs_f64() * 1e3,
        percentile(&quiet, 0.99).as_secs_f64() * 1e3
    );
    Ok(())
}
