//! Commit throughput and latency of a 3-node group on loopback with fsync on.
//!
//! `cargo bench -p alces-raft-store --bench commit` starts three `alces-raft-kv` processes,
//! then for 1, 16 and 256 concurrent proposers (each with its own connection to the leader)
//! proposes small puts for a fixed time and prints commits/s, p50/p99 latency as seen by the
//! proposer, and how many operations shared one fsync of the leader's log.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use alces_raft_store::kv::{KvRequest, KvResponse};
use anyhow::{bail, Result};
use common::{Client, Cluster, Options};
use hdrhistogram::Histogram;

const RUN: Duration = Duration::from_secs(8);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut c = Cluster::start(3, Options::default()).await?;
    let leader = c.wait_leader().await?;
    let api = c.api(leader);
    println!("3 nodes on loopback, fsync on, {}s per row, leader {leader}", RUN.as_secs());
    println!("{:>10} {:>12} {:>10} {:>10} {:>14}", "proposers", "commits/s", "p50 ms", "p99 ms", "ops/fsync");
    for proposers in [1usize, 16, 256] {
        let before = c.status(leader).await?;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..proposers {
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut client = Client::connect(api).await?;
                let value = vec![0x5a; 100];
                let mut i = 0u64;
                while start.elapsed() < RUN {
                    let t = Instant::now();
                    let req = KvRequest::Put { key: format!("p{p}-{i}"), value: value.clone() };
                    match client.call(&req).await? {
                        KvResponse::Reply(_) => {}
                        other => bail!("put failed: {other:?}"),
                    }
                    hist.record(t.elapsed().as_micros() as u64)?;
                    i += 1;
                }
                anyhow::Ok(hist)
            }));
        }
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for t in tasks {
            hist.add(t.await??)?;
        }
        let secs = start.elapsed().as_secs_f64();
        let after = c.status(leader).await?;
        let fsyncs = (after.log_fsyncs - before.log_fsyncs).max(1);
        println!(
            "{:>10} {:>12.0} {:>10.2} {:>10.2} {:>14.1}",
            proposers,
            hist.len() as f64 / secs,
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            hist.len() as f64 / fsyncs as f64
        );
    }
    Ok(())
}
