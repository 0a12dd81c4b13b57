//! Random, truncated and oversized frames sent to every listener of a real cluster (the
//! master's Raft, client, chunkserver and admin ports, the chunkserver's data port): each
//! bad connection is closed with a logged error and the cluster keeps serving.

use std::time::Duration;

use alces_client::data::DataPath;
use alces_client::master_link::{MasterClient, Options};
use alces_ops::launcher::{fetch_cluster, Cluster, Layout};
use alces_proto::link::client_master::{ClientReply, ClientRequest};
use alces_proto::types::{Creds, FileKind, Inode, Name};
use alces_proto::{Connection, Handshake, LinkKind, Secret, DEFAULT_MAX_FRAME};
use alces_testkit::{pseudo_random_bytes, wait_for};
use anyhow::{bail, ensure, Context, Result};
use tokio::io::AsyncWriteExt;

/// Random bytes, a length far beyond the frame limit, a frame cut short, and garbage of a
/// plausible length.
fn bad_streams(seed: u64) -> Vec<Vec<u8>> {
    vec![
        pseudo_random_bytes(seed, 4096),
        u32::MAX.to_be_bytes().to_vec(),
        [&(1000u32).to_be_bytes()[..], &[1, 2, 3]].concat(),
        [&(16u32).to_be_bytes()[..], &pseudo_random_bytes(seed + 1, 16)].concat(),
        [&(64u32).to_be_bytes()[..], &[0xff; 64][..]].concat(),
    ]
}

async fn send_garbage(addr: &str, seed: u64) -> Result<()> {
    for bytes in bad_streams(seed) {
        let mut s = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        // The server closes its side; read until it does so the error is surely logged.
        let mut sink = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink)).await;
    }
    Ok(())
}

/// Completes a valid handshake, then sends a frame that is no request; the server must close.
async fn garbage_after_handshake(addr: &str, link: LinkKind, secret: Option<Secret>) -> Result<()> {
    let mut conn = Connection::connect(addr, DEFAULT_MAX_FRAME, Duration::from_secs(3)).await?;
    Handshake::new(link, "garbage tester", secret).dial(&mut conn).await.context("handshake")?;
    conn.writer.send_raw(pseudo_random_bytes(5, 64).into()).await?;
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.recv::<u8>()).await;
    ensure!(matches!(closed, Ok(Ok(None)) | Ok(Err(_))), "{addr}: connection still open after a garbage frame");
    Ok(())
}

async fn log_shows(path: &std::path::Path, lines: &[&str]) -> Result<()> {
    let what = format!("{} in {}", lines.join(", "), path.display());
    wait_for(&what, Duration::from_secs(10), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all = lines.iter().all(|l| text.contains(l));
        async move { all.then_some(()) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_on_every_listener_is_refused_and_the_cluster_keeps_serving() -> Result<()> {
    let dir = alces_testkit::temp_dir("alces-garbage-");
    let mut layout = Layout::new(dir.path(), 3, 1)?;
    layout.goal = 1;
    let cluster = tokio::task::spawn_blocking(move || Cluster::up(&layout)).await??;
    let c2 =
        tokio::task::spawn_blocking(move || cluster.wait_chunkservers(1, Duration::from_secs(30)).map(|_| cluster));
    let cluster = c2.await??;
    let leader = cluster.wait_leader(Duration::from_secs(30))?;
    let m = cluster.file.masters.iter().find(|m| m.id == leader).context("leader entry")?.clone();
    let cs = cluster.file.chunkservers[0].clone();
    let secret = Secret::new(std::fs::read_to_string(&cluster.file.secret_file)?.trim());

    for (i, addr) in [&m.raft_addr, &m.client_addr, &m.cs_addr, &m.admin_addr, &cs.addr].into_iter().enumerate() {
        send_garbage(addr, 11 + i as u64).await?;
    }
    garbage_after_handshake(&m.raft_addr, LinkKind::Peer, Some(secret.clone())).await?;
    garbage_after_handshake(&m.client_addr, LinkKind::ClientMaster, None).await?;
    garbage_after_handshake(&cs.addr, LinkKind::ClientChunkserver, None).await?;
    garbage_after_handshake(&m.cs_addr, LinkKind::ChunkserverMaster, Some(secret.clone())).await?;
    garbage_after_handshake(&cs.addr, LinkKind::ChunkserverChunkserver, Some(secret.clone())).await?;
    // Links between the cluster's own processes need its secret.
    for (addr, link) in [
        (&m.raft_addr, LinkKind::Peer),
        (&m.cs_addr, LinkKind::ChunkserverMaster),
        (&cs.addr, LinkKind::ChunkserverChunkserver),
    ] {
        let mut conn = Connection::connect(addr, DEFAULT_MAX_FRAME, Duration::from_secs(3)).await?;
        let r = Handshake::new(link, "impostor", Some(Secret::new("not the secret"))).dial(&mut conn).await;
        ensure!(r.is_err(), "{addr}: a {link:?} link with the wrong secret was accepted");
    }

    log_shows(
        &m.log,
        &[
            "refused a peer connection",
            "closing peer connection after a bad frame",
            "refused a client connection",
            "closing client connection after a bad frame",
            "refused a chunkserver connection",
        ],
    )
    .await?;
    log_shows(&cs.log, &["refused a data connection", "closing data connection after a bad frame"]).await?;
    for p in [&m.log, &cs.log] {
        ensure!(!std::fs::read_to_string(p)?.contains("panicked"), "{} shows a panic", p.display());
    }

    // Still the same leader, and the whole cluster still serves metadata, data and the API.
    ensure!(cluster.wait_leader(Duration::from_secs(10))? == leader, "leadership moved");
    let admin = m.admin_addr.clone();
    let view = tokio::task::spawn_blocking(move || fetch_cluster(&admin)).await??;
    ensure!(view.leader == Some(leader), "admin API answers with the leader: {:?}", view.leader);
    let master = MasterClient::connect(Options::new(cluster.client_addrs())).await?;
    let create = ClientRequest::Create {
        parent: Inode::ROOT,
        name: Name::new(b"after-garbage".to_vec())?,
        kind: FileKind::File,
        mode: 0o644,
        umask: 0o022,
        rdev: 0,
        open: true,
    };
    let inode = match master.call(&Creds::root(), create).await? {
        ClientReply::Changed { attr: Some(a), .. } => a.inode,
        other => bail!("unexpected {other:?}"),
    };
    let data = pseudo_random_bytes(42, 300_000);
    let path = DataPath::new(master.clone());
    path.write_chunk(inode, 0, &[(0, &data)], data.len() as u64).await.map_err(|s| anyhow::anyhow!("write: {s:?}"))?;
    let back = path.read(inode, 0, data.len() as u32).await.map_err(|s| anyhow::anyhow!("read: {s:?}"))?.to_bytes();
    ensure!(back == data, "data written after the garbage reads back differently");
    Ok(())
}
