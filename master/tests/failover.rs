//! Three masters as real processes; client sessions build a tree concurrently while the
//! leader is killed with SIGKILL. The sessions find the new leader by themselves and every
//! acknowledged operation is visible afterwards.

use std::sync::Arc;
use std::time::Duration;

use alces_client::master_link::{MasterClient, Options};
use alces_ops::admin_client::AdminClient;
use alces_ops::launcher::{Cluster, Layout};
use alces_proto::link::client_master::{ClientError, ClientReply, ClientRequest, Reply, Request};
use alces_proto::types::{Creds, FileKind, Inode, Name};
use alces_proto::{Connection, Handshake, LinkKind, DEFAULT_MAX_FRAME};
use anyhow::{bail, ensure, Result};
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

    // A follower answers a request with NotLeader, naming the leader and its client address.
    let new_leader = cluster.wait_leader(Duration::from_secs(30))?;
    let leader_entry = cluster.master(new_leader)?.clone();
    let follower = cluster.file.masters.iter().find(|m| m.id != new_leader).expect("a follower").clone();
    let mut conn = Connection::connect(&follower.client_addr, DEFAULT_MAX_FRAME, Duration::from_secs(3)).await?;
    Handshake::new(LinkKind::ClientMaster, "failover test", None).dial(&mut conn).await?;
    let req =
        Request { id: 1, low_water: 0, creds: Creds::root(), body: ClientRequest::GetAttr { inode: Inode::ROOT } };
    match conn.call::<_, Reply>(&req, Duration::from_secs(10)).await?.body {
        Err(ClientError::NotLeader { leader_id: Some(id), leader_addr: Some(addr) })
            if id == new_leader && addr == leader_entry.client_addr => {}
        other => bail!("a follower answered {other:?}, not NotLeader naming master {new_leader}"),
    }

    // A snapshot of the namespace, printed by `alces-master dump-metadata`: every acknowledged
    // name is in it, and every checksum verified.
    let token = cluster.file.admin_token()?;
    let admin = AdminClient::new(vec![leader_entry.admin_addr.clone()], token);
    let at = leader_entry.admin_addr.clone();
    tokio::task::spawn_blocking(move || admin.snapshot_at(&at, Duration::from_secs(30))).await??;
    let snapshots = leader_entry.data_dir.join("snapshots");
    let file = std::fs::read_dir(&snapshots)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "alces"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .ok_or_else(|| anyhow::anyhow!("no snapshot file in {}", snapshots.display()))?;
    let out =
        std::process::Command::new(cluster.bin_dir.join("alces-master")).arg("dump-metadata").arg(&file).output()?;
    ensure!(out.status.success(), "dump-metadata: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    ensure!(text.lines().last().is_some_and(|l| l.ends_with("records, all checksums verified")), "{text}");
    let files = text.lines().filter(|l| l.starts_with("inode ") && l.contains(" File ")).count();
    ensure!(files == SESSIONS * DIRS * FILES, "{files} files in the dump, {} acknowledged", SESSIONS * DIRS * FILES);
    for s in 0..SESSIONS {
        ensure!(text.contains(&format!("name \"s{s}\"")), "session {s}'s folder is not in the dump");
    }
    Ok(())
}
