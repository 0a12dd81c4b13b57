//! `alces-jepsen`: run a fault-injection test against a real Alces cluster built in network
//! namespaces, re-check a recorded history, or clean up after a crashed run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use alces_jepsen::{clean, history, nemesis, report, run, signals, worker, workload};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Fault-injection tests of an Alces cluster in network namespaces (needs root)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a cluster, run a workload under faults, heal, check and write a report.
    Run(RunArgs),
    /// Check a recorded history again (DIR/history.jsonl) and rewrite its verdict and report.
    Check {
        #[arg(long)]
        workload: String,
        dir: PathBuf,
    },
    /// Remove processes, mounts, namespaces, bridge and firewall chain left by a crashed run.
    Clean,
    /// The clients of a run, in a process of their own (started by `run`).
    #[command(hide = true)]
    Clients {
        #[arg(long)]
        workload: String,
        #[arg(long)]
        bulk_mib: usize,
        #[arg(long)]
        clients: usize,
        #[arg(long = "mount", required = true)]
        mounts: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// append, register, namespace or bulk.
    #[arg(long, short)]
    workload: String,
    /// Faults, comma separated (kill-leader, kill-random, kill-majority, pause,
    /// partition-halves, partition-leader, partition-bridge, partition-ring, netem,
    /// kill-chunkserver, pause-chunkserver, corrupt, membership, restart), `mix` for all, or
    /// `none`.
    #[arg(long, short, default_value = "none")]
    nemesis: String,
    /// Seconds of workload under faults (recovery and checking come after).
    #[arg(long, short, default_value_t = 60)]
    time: u64,
    /// Masters (the Raft group).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 4)]
    chunkservers: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// FUSE mounts the clients share.
    #[arg(long, default_value_t = 2)]
    mounts: usize,
    /// Folder for the history, verdict, report, configs and logs (default: jepsen-runs/W-TIME).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Folder holding alces-master, alces-chunkserver and alces-mount (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Size of each file of the bulk workload, MiB.
    #[arg(long, default_value_t = 8)]
    bulk_mib: usize,
    /// Seconds of calm before each fault.
    #[arg(long, default_value_t = 8)]
    quiet: u64,
    /// Seconds each fault lasts.
    #[arg(long, default_value_t = 10)]
    fault: u64,
    /// Extra KEY = VALUE line for every master.cfg (repeatable).
    #[arg(long = "master-option")]
    master_option: Vec<String>,
}

fn run_cmd(a: RunArgs) -> Result<bool> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let dir = a.dir.unwrap_or_else(|| PathBuf::from("jepsen-runs").join(format!("{}-{stamp}", a.workload)));
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => alces_ops::launcher::bin_dir()?,
    };
    let o = run::Options {
        workload: a.workload,
        nemeses: nemesis::parse(&a.nemesis)?,
        time: Duration::from_secs(a.time),
        masters: a.nodes.clamp(1, 9),
        chunkservers: a.chunkservers.clamp(1, 99),
        clients: a.clients.max(1),
        mounts: a.mounts.max(1),
        dir: dir.clone(),
        bin_dir,
        bulk_mib: a.bulk_mib.max(1),
        schedule: nemesis::Schedule { quiet: Duration::from_secs(a.quiet), fault: Duration::from_secs(a.fault) },
        master_extra: a.master_option,
    };
    let v = run::run(&o)?;
    println!(
        "{}: {} ok, {} failed, {} unknown; {} lost, {} unexpected, {} anomalies; report: {}",
        if v.valid { "VALID" } else { "INVALID" },
        v.ops.ok,
        v.ops.fail,
        v.ops.info,
        v.lost.len(),
        v.unexpected.len(),
        v.anomalies.len(),
        dir.join("report.html").display()
    );
    Ok(v.valid)
}

fn check_cmd(workload: &str, dir: &Path) -> Result<bool> {
    let w = workload::by_name(workload, 8)?;
    let ops = history::load(&dir.join("history.jsonl"))?;
    let v = w.check(&ops);
    report::write_verdict(dir, &v)?;
    report::write_html(dir, &ops, &v, &format!("alces-jepsen: {workload} (re-checked)"))?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(v.valid)
}

fn main() -> ExitCode {
    alces_config::init_logging();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Clean => {
            for line in clean::clean() {
                println!("{line}");
            }
            Ok(true)
        }
        Cmd::Check { workload, dir } => check_cmd(&workload, &dir),
        Cmd::Clients { workload, bulk_mib, clients, mounts } => {
            worker::serve(&worker::Plan { workload, bulk_mib, clients, mounts }).map(|_| true)
        }
        Cmd::Run(a) => signals::install().context("installing signal handlers").and_then(|_| run_cmd(a)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("alces-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}
