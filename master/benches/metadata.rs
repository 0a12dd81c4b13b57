//! Metadata throughput without FUSE, and the master's footprint after a million files.
//!
//! `cargo bench -p alces-master --bench metadata` starts 3 masters (fsync on, as always) with
//! the local cluster launcher and drives them through the client protocol:
//! creates/s, lookups/s and getattrs/s with 1 and 64 concurrent sessions, then fills the
//! namespace to `ALCES_BENCH_FILES` files (default 1,000,000) and prints each master's RSS
//! and on-disk size, and the RSS per file.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use alces_client::master_link::{MasterClient, Options};
use alces_ops::launcher::{Cluster, Layout};
use alces_proto::link::client_master::{ClientReply, ClientRequest};
use alces_proto::types::{Creds, FileKind, Inode, Name};
use anyhow::{bail, Result};

fn name(s: &str) -> Name {
    Name::new(s.as_bytes().to_vec()).unwrap()
}

async fn create(c: &MasterClient, parent: Inode, n: &str, kind: FileKind) -> Result<Inode> {
    let req = ClientRequest::Create { parent, name: name(n), kind, mode: 0o644, umask: 0o022, rdev: 0, open: false };
    match c.call(&Creds::root(), req).await? {
        ClientReply::Changed { attr: Some(a), .. } => Ok(a.inode),
        other => bail!("unexpected {other:?}"),
    }
}

/// Runs `per_session` operations in each of `sessions` sessions; returns operations/s.
async fn phase<F, Fut>(clients: &[MasterClient], per_session: usize, op: F) -> Result<f64>
where
    F: Fn(MasterClient, usize, usize) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (s, c) in clients.iter().enumerate() {
        let (c, op) = (c.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_session {
                op(c.clone(), s, i).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((clients.len() * per_session) as f64 / start.elapsed().as_secs_f64())
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += if m.is_dir() { du(&e.path()) } else { m.len() };
        }
    }
    total
}

async fn connect_many(opts: &Options, n: usize) -> Result<Vec<MasterClient>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(MasterClient::connect(opts.clone()).await?);
    }
    Ok(v)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let total_files: usize = std::env::var("ALCES_BENCH_FILES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = alces_testkit::temp_dir("alces-bench-meta-");
    let layout = Layout::new(dir.path(), 3, 0)?;
    let cluster = tokio::task::spawn_blocking(move || Cluster::up(&layout)).await??;
    let opts = Options::new(cluster.client_addrs());
    println!("3 masters on loopback, fsync on a majority for every change");
    println!("{:>9} {:>12} {:>12} {:>12}", "sessions", "creates/s", "lookups/s", "getattrs/s");
    let mut created = 0usize;
    for sessions in [1usize, 64] {
        let clients = connect_many(&opts, sessions).await?;
        let per = if sessions == 1 { 5000 } else { 500 };
        let mut dirs = Vec::new();
        for (s, client) in clients.iter().enumerate() {
            dirs.push(create(client, Inode::ROOT, &format!("bench{sessions}-{s}"), FileKind::Dir).await?);
        }
        let dirs = Arc::new(dirs);
        let d = dirs.clone();
        let creates = phase(&clients, per, move |c, s, i| {
            let d = d.clone();
            async move { create(&c, d[s], &format!("f{i}"), FileKind::File).await.map(|_| ()) }
        })
        .await?;
        let d = dirs.clone();
        let lookups = phase(&clients, per, move |c, s, i| {
            let d = d.clone();
            async move {
                c.call(&Creds::root(), ClientRequest::Lookup { parent: d[s], name: name(&format!("f{i}")) }).await?;
                Ok(())
            }
        })
        .await?;
        let d = dirs.clone();
        let getattrs = phase(&clients, per, move |c, s, _| {
            let d = d.clone();
            async move {
                c.call(&Creds::root(), ClientRequest::GetAttr { inode: d[s] }).await?;
                Ok(())
            }
        })
        .await?;
        created += sessions * (per + 1);
        println!("{sessions:>9} {creates:>12.0} {lookups:>12.0} {getattrs:>12.0}");
    }
    // Fill up to the target with 64 sessions, 1000 files per directory.
    let clients = connect_many(&opts, 64).await?;
    let remaining = total_files.saturating_sub(created);
    let per_session = remaining / 64;
    let start = Instant::now();
    let rate = phase(&clients, per_session, |c, s, i| async move {
        if i % 1000 == 0 {
            create(&c, Inode::ROOT, &format!("fill-{s}-{}", i / 1000), FileKind::Dir).await?;
        }
        // Each directory holds 1000 files; look it up by name through the root each time a
        // new one starts would cost a round trip, so remember it per (session, block).
        let parent = match c
            .call(
                &Creds::root(),
                ClientRequest::Lookup { parent: Inode::ROOT, name: name(&format!("fill-{s}-{}", i / 1000)) },
            )
            .await?
        {
            ClientReply::Attr(a) => a.inode,
            other => bail!("unexpected {other:?}"),
        };
        create(&c, parent, &format!("f{i}"), FileKind::File).await.map(|_| ())
    })
    .await?;
    let files = created + per_session * 64;
    println!("filled to {files} files in {:.0}s ({rate:.0} lookup+create pairs/s)", start.elapsed().as_secs_f64());
    let view = cluster.view().expect("cluster view");
    println!("namespace: {} inodes", view.inodes);
    println!("{:>7} {:>10} {:>12} {:>14} {:>14}", "master", "role", "RSS MiB", "RSS bytes/file", "disk MiB");
    for m in &cluster.file.masters {
        let rss = rss_bytes(m.pid);
        let disk = du(&m.data_dir);
        let role = view.members.iter().find(|x| x.id == m.id).map(|x| x.role.clone()).unwrap_or_default();
        println!(
            "{:>7} {:>10} {:>12.1} {:>14.1} {:>14.1}",
            m.id,
            role,
            rss as f64 / 1048576.0,
            rss as f64 / view.inodes as f64,
            disk as f64 / 1048576.0
        );
    }
    Ok(())
}
