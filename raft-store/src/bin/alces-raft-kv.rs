//! `alces-raft-kv`: one member of a replicated key-value group built on `alces-raft-store`.
//! The store's integration tests and commit benchmark start several of these as real
//! processes on loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use alces_proto::Secret;
use alces_raft_store::kv::{serve_api, KvMachine};
use alces_raft_store::{Member, NodeConfig, NodeId, RaftNode};
use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "One member of a replicated key-value group (test and benchmark tool of alces-raft-store)")]
struct Args {
    /// This member's id.
    #[arg(long)]
    id: NodeId,
    /// Data folder (RocksDB and snapshot files).
    #[arg(long)]
    data: PathBuf,
    /// Raft peer address to listen on.
    #[arg(long)]
    raft_listen: SocketAddr,
    /// Key-value API address to listen on.
    #[arg(long)]
    api_listen: SocketAddr,
    /// The cluster secret peers must prove.
    #[arg(long, env = "ALCES_SECRET")]
    secret: String,
    /// Initial voters, `ID=RAFT_ADDR=API_ADDR` separated by commas; the group is created if
    /// this node has no membership yet.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Build a snapshot every N applied entries.
    #[arg(long, default_value_t = 100_000)]
    snapshot_every: u64,
    /// Log entries kept behind a snapshot.
    #[arg(long, default_value_t = 10_000)]
    keep_logs: u64,
    /// Take a quorum round for every batch of reads, even while the leader lease holds.
    #[arg(long)]
    no_lease_reads: bool,
}

fn parse_members(s: &str) -> Result<BTreeMap<NodeId, Member>> {
    let mut out = BTreeMap::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let parts: Vec<&str> = item.split('=').collect();
        let [id, raft, api] = parts[..] else { bail!("bad member {item:?}: expected ID=RAFT_ADDR=API_ADDR") };
        let id: NodeId = id.parse().with_context(|| format!("bad member id in {item:?}"))?;
        out.insert(id, Member { raft_addr: raft.into(), client_addr: api.into(), ..Default::default() });
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let member = Member {
        raft_addr: args.raft_listen.to_string(),
        client_addr: args.api_listen.to_string(),
        ..Default::default()
    };
    let mut cfg = NodeConfig::new(args.id, args.data.clone(), args.raft_listen, member, Secret::new(&args.secret));
    cfg.snapshot_every = args.snapshot_every;
    cfg.keep_logs = args.keep_logs;
    cfg.lease_reads = !args.no_lease_reads;
    let node = RaftNode::start(cfg, Arc::new(KvMachine)).await.context("starting the raft node")?;
    let api =
        tokio::net::TcpListener::bind(args.api_listen).await.with_context(|| format!("binding {}", args.api_listen))?;
    if let Some(b) = &args.bootstrap {
        node.bootstrap(parse_members(b)?).await.context("bootstrapping the group")?;
    }
    let stop = CancellationToken::new();
    tokio::spawn(serve_api(api, node.clone(), stop.clone()));
    tracing::info!(id = args.id, "ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    stop.cancel();
    node.shutdown().await;
    Ok(())
}
