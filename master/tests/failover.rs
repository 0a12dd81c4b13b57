//! Three masters as real processes; client sessions build a tree concurrently while the
//! leader is killed with SIGKILL. The sessions find the new leader by themselves and every
//! acknowledged operation is visible afterwards.

use std::sync::Arc;
use std::time::Duration;

use alces_client::master_link::{MasterClient, Options};
use alces_ops::launcher::{Cluster, Layout};
use alces_proto::link::client_master::{ClientReply, ClientRequest};
use alces_proto::types::{Creds, FileKind, Inode, Name};
use anyhow::{bail, Result};
use nix::sys::signal::Signal;

fn name(s: &str) -> Name {
    Name::new(s.as_bytes().to_vec()).unwrap()
}

async fn create(c: &MasterClient, parent: Inode, n: &str, kind: FileKind) -> Result<Inode> {
    let req = ClientRequest::Create { parent, name: name(n), kind, mode: 0o755, umask: 0o022, rdev: 0, open: false };
    match c.call(&Creds::root(), req).await? {
        ClientReply::Changed { attr: Some(a), .. } => Ok(a.inode),
        other => bail!("unexpected {other:?}"),
    }
}

async fn lookup(c: &MasterClient, parent: Inode, n: &str) -> Result<Inode> {
    match c.call(&Creds::root(), ClientRequest::Lookup { parent, name: name(n) }).await? {
        ClientReply::Attr(a) => Ok(a.inode),
        other => bail!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_survive_a_leader_kill_and_lose_no_acknowledged_operation() -> Result<()> {
    let dir = alces_testkit::temp_dir("alces-master-failover-");
    let layout = Layout::new(dir.path(), 3, 0)?;
    let mut cluster = tokio::task::spawn_blocking(move || Cluster::up(&layout)).await??;
    let opts = Options::new(cluster.client_addrs());
    const SESSIONS: usize = 6;
    const DIRS: usize = 5;
    const FILES: usize = 20;
    let mut tasks = Vec::new();
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for s in 0..SESSIONS {
        let (opts, progress) = (opts.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let c = MasterClient::connect(opts).await?;
            let top = create(&c, Inode::ROOT, &format!("s{s}"), FileKind::Dir).await?;
            let mut acked = vec![format!("s{s}")];
            for d in 0..DIRS {
                let dir = create(&c, top, &format!("d{d}"), FileKind::Dir).await?;
                acked.push(format!("s{s}/d{d}"));
                for f in 0..FILES {
                    create(&c, dir, &format!("f{f}"), FileKind::File).await?;
                    acked.push(format!("s{s}/d{d}/f{f}"));
                    progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            anyhow::Ok(acked)
        }));
    }
    // Kill the leader once a third of the files exist.
    let total = SESSIONS * DIRS * FILES;
    while progress.load(std::sync::atomic::Ordering::Relaxed) < total / 3 {
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = cluster.leader().expect("a leader");
    cluster.kill_master(leader, Signal::SIGKILL)?;
    let before = progress.load(std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await??);
    }
    assert_eq!(acked.len(), SESSIONS * (1 + DIRS * (1 + FILES)), "every operation was acknowledged");
    assert!(before < total, "the leader died mid-workload");
    let new_leader = cluster.wait_leader(Duration::from_secs(30))?;
    assert_ne!(new_leader, leader);
    // Every acknowledged object is there, seen through a new session.
    let c = MasterClient::connect(opts.clone()).await?;
    for path in &acked {
        let mut cur = Inode::ROOT;
        for part in path.split('/') {
            cur = lookup(&c, cur, part).await.map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        }
    }
    // The killed master comes back and catches up.
    cluster.start_master(leader)?;
    let last = acked.last().unwrap().clone();
    alces_testkit::wait_for("the restarted master to catch up", Duration::from_secs(30), || {
        let admin = cluster.file.masters.iter().find(|m| m.id == leader).unwrap().admin_addr.clone();
        let want = cluster.view().map(|v| v.inodes);
        async move {
            let v = alces_ops::launcher::fetch_cluster(&admin).ok()?;
            (Some(v.inodes) == want).then_some(())
        }
    })
    .await?;
    let _ = last;
    Ok(())
}
