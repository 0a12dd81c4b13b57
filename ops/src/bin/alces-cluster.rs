//! `alces-cluster`: a whole Alces cluster on this machine, on loopback.
//!
//! ```text
//! alces-cluster up --dir DIR [--masters 3] [--chunkservers 3] [--mount MNT]
//! alces-cluster status --dir DIR [--json]
//! alces-cluster down --dir DIR
//! ```

use std::path::PathBuf;

use alces_ops::launcher::{fetch_cluster, Cluster, Layout};
use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Start, inspect and stop a local Alces cluster (masters, chunkservers, mounts on loopback)", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a cluster in the background and wait until it is healthy.
    Up {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        masters: usize,
        #[arg(long, default_value_t = 3)]
        chunkservers: usize,
        /// Also mount a client here.
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Goal of the root directory.
        #[arg(long, default_value_t = 2)]
        goal: u8,
    },
    /// Show every process and the cluster as the masters see it.
    Status {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Unmount, stop chunkservers and masters.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Up { dir, masters, chunkservers, mount, goal } => {
            let mut layout = Layout::new(dir, masters, chunkservers)?;
            layout.mount = mount;
            layout.goal = goal;
            let mut c = Cluster::up(&layout)?;
            c.detach();
            print_summary(&c);
            println!("cluster.json: {}", c.dir.join("cluster.json").display());
        }
        Cmd::Status { dir, json } => {
            let c = Cluster::load(&dir)?;
            if json {
                let view = c.view();
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "cluster": c.file, "view": view }))?);
            } else {
                print_summary(&c);
            }
        }
        Cmd::Down { dir } => {
            let mut c = Cluster::load(&dir)?;
            c.down()?;
            println!("cluster in {} stopped", dir.display());
        }
    }
    Ok(())
}

fn print_summary(c: &Cluster) {
    println!("{:<12} {:<28} {:>8}  state", "role", "id", "pid");
    for (role, id, pid, running) in c.processes() {
        println!("{role:<12} {id:<28} {pid:>8}  {}", if running { "running" } else { "stopped" });
    }
    match c.leader().and_then(|l| c.file.masters.iter().find(|m| m.id == l)) {
        Some(m) => {
            println!("leader: master {} (clients: {})", m.id, m.client_addr);
            if let Ok(v) = fetch_cluster(&m.admin_addr) {
                let up = v.chunkservers.iter().filter(|s| s.alive).count();
                println!(
                    "term {}, {} inodes, {} chunks, {up}/{} chunkservers up",
                    v.term,
                    v.inodes,
                    v.chunks,
                    v.chunkservers.len()
                );
            }
            println!("monitor: http://{}/", m.admin_addr);
        }
        None => println!("no leader right now"),
    }
    println!("mount with: alces-mount MNT -H {}", c.client_addrs().join(","));
    if !c.file.admin_token_file.as_os_str().is_empty() {
        println!(
            "admin token: {} (alces admin --cluster {} uses it)",
            c.file.admin_token_file.display(),
            c.dir.display()
        );
    }
}
