//! A group of `alces-raft-kv` processes on loopback, and a client that follows the leader.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use alces_proto::Connection;
use alces_raft_store::kv::{api_handshake, KvReply, KvRequest, KvResponse};
use alces_raft_store::{Member, NodeId, NodeStatus, Role};
use alces_testkit::{free_addr, temp_dir, wait_for, Proc, TempDir};
use anyhow::{anyhow, bail, Result};

pub const SECRET: &str = "test-cluster-secret";
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Node {
    pub id: NodeId,
    pub raft: SocketAddr,
    pub api: SocketAddr,
    pub proc: Proc,
}

impl Node {
    pub fn member(&self) -> Member {
        Member { raft_addr: self.raft.to_string(), client_addr: self.api.to_string(), ..Default::default() }
    }
}

pub struct Options {
    pub snapshot_every: u64,
    pub keep_logs: u64,
    pub secret: String,
    pub lease_reads: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { snapshot_every: 100_000, keep_logs: 10_000, secret: SECRET.into(), lease_reads: true }
    }
}

pub struct Cluster {
    pub dir: TempDir,
    pub nodes: Vec<Node>,
    pub opts: Options,
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_alces-raft-kv"))
}

impl Cluster {
    /// Starts `n` voters that bootstrap a group together, and waits for a leader.
    pub async fn start(n: usize, opts: Options) -> Result<Cluster> {
        let dir = temp_dir("alces-raft-");
        let mut c = Cluster { dir, nodes: Vec::new(), opts };
        let addrs: Vec<(NodeId, SocketAddr, SocketAddr)> =
            (1..=n as u64).map(|id| (id, free_addr(), free_addr())).collect();
        let bootstrap = addrs.iter().map(|(id, r, a)| format!("{id}={r}={a}")).collect::<Vec<_>>().join(",");
        for &(id, raft, api) in &addrs {
            c.spawn(id, raft, api, Some(&bootstrap), None)?;
        }
        c.wait_leader().await?;
        Ok(c)
    }

    /// Starts one more process (not a member until it is added).
    pub fn spawn(
        &mut self,
        id: NodeId,
        raft: SocketAddr,
        api: SocketAddr,
        bootstrap: Option<&str>,
        secret: Option<&str>,
    ) -> Result<()> {
        let data = self.dir.path().join(format!("node{id}"));
        let mut args = vec![
            "--id".into(),
            id.to_string(),
            "--data".into(),
            data.display().to_string(),
            "--raft-listen".into(),
            raft.to_string(),
            "--api-listen".into(),
            api.to_string(),
            "--secret".into(),
            secret.unwrap_or(&self.opts.secret).to_string(),
            "--snapshot-every".into(),
            self.opts.snapshot_every.to_string(),
            "--keep-logs".into(),
            self.opts.keep_logs.to_string(),
        ];
        if let Some(b) = bootstrap {
            args.extend(["--bootstrap".into(), b.to_string()]);
        }
        if !self.opts.lease_reads {
            args.push("--no-lease-reads".into());
        }
        let log = self.dir.path().join(format!("node{id}.log"));
        let proc = Proc::spawn(&format!("node{id}"), &bin(), &args, &log)?;
        self.nodes.push(Node { id, raft, api, proc });
        Ok(())
    }

    pub fn node(&mut self, id: NodeId) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("no such node")
    }

    pub fn api(&self, id: NodeId) -> SocketAddr {
        self.nodes.iter().find(|n| n.id == id).expect("no such node").api
    }

    pub fn running_ids(&mut self) -> Vec<NodeId> {
        self.nodes.iter_mut().filter_map(|n| n.proc.is_running().then_some(n.id)).collect()
    }

    pub async fn status(&self, id: NodeId) -> Result<NodeStatus> {
        match call(self.api(id), KvRequest::Status).await? {
            KvResponse::Status(s) => Ok(*s),
            other => bail!("unexpected {other:?}"),
        }
    }

    /// Waits until node `id` answers on its API.
    pub async fn wait_ready(&self, id: NodeId) -> Result<()> {
        let this = self;
        wait_for(&format!("node {id} to answer"), Duration::from_secs(30), || async move {
            this.status(id).await.ok().map(|_| ())
        })
        .await
    }

    /// Waits until every running node agrees on one leader; returns it.
    pub async fn wait_leader(&mut self) -> Result<NodeId> {
        let ids = self.running_ids();
        let this = &*self;
        wait_for("a leader all running nodes agree on", Duration::from_secs(30), || {
            let ids = ids.clone();
            async move {
                let mut leader = None;
                for id in ids {
                    let s = this.status(id).await.ok()?;
                    let l = s.leader?;
                    if leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                let l = leader?;
                (this.status(l).await.ok()?.role == Role::Leader).then_some(l)
            }
        })
        .await
    }

    /// Sends a request to the leader, following redirects and retrying on other nodes.
    pub async fn leader_call(&mut self, req_fn: impl Fn() -> KvRequest) -> Result<KvResponse> {
        let ids = self.running_ids();
        leader_call(&ids.iter().map(|&i| self.api(i)).collect::<Vec<_>>(), req_fn).await
    }

    pub async fn order(&self, id: NodeId) -> Result<Vec<(u32, u64)>> {
        let mut out = Vec::new();
        loop {
            match call(self.api(id), KvRequest::Order { from: out.len() as u64, limit: 5000 }).await? {
                KvResponse::Order(v) if v.is_empty() => return Ok(out),
                KvResponse::Order(v) => out.extend(v),
                other => bail!("unexpected {other:?}"),
            }
        }
    }

    /// Waits until node `id` has applied at least `count` records.
    pub async fn wait_records(&self, id: NodeId, count: usize) -> Result<Vec<(u32, u64)>> {
        let this = self;
        wait_for(&format!("node {id} to apply {count} records"), Duration::from_secs(60), || async move {
            let o = this.order(id).await.ok()?;
            (o.len() >= count).then_some(o)
        })
        .await
    }
}

/// One request on a fresh connection.
pub async fn call(addr: SocketAddr, req: KvRequest) -> Result<KvResponse> {
    let mut conn = Connection::connect(addr, alces_proto::DEFAULT_MAX_FRAME, Duration::from_secs(2)).await?;
    api_handshake("test").dial(&mut conn).await?;
    Ok(conn.call(&req, CALL_TIMEOUT).await?)
}

/// A persistent connection to one node.
pub struct Client {
    conn: Connection,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Client> {
        let mut conn = Connection::connect(addr, alces_proto::DEFAULT_MAX_FRAME, Duration::from_secs(2)).await?;
        api_handshake("test").dial(&mut conn).await?;
        Ok(Client { conn })
    }

    pub async fn call(&mut self, req: &KvRequest) -> Result<KvResponse> {
        Ok(self.conn.call(req, CALL_TIMEOUT).await?)
    }
}

/// Tries the nodes in turn (starting with a redirect's target) until one accepts the request
/// as leader, for up to 30 seconds. Returns the reply, or the last error.
pub async fn leader_call(apis: &[SocketAddr], req_fn: impl Fn() -> KvRequest) -> Result<KvResponse> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut next: Option<SocketAddr> = None;
    let mut i = 0;
    let mut last = anyhow!("no node answered");
    while tokio::time::Instant::now() < deadline {
        let addr = next.take().unwrap_or_else(|| {
            i += 1;
            apis[i % apis.len()]
        });
        match call(addr, req_fn()).await {
            Ok(KvResponse::Failed { retryable: true, leader, message }) => {
                next = leader.and_then(|m| m.client_addr.parse().ok());
                last = anyhow!("{message}");
                if next.is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Ok(KvResponse::Failed { message, .. }) => bail!("request failed: {message}"),
            Ok(resp) => return Ok(resp),
            Err(e) => {
                last = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Err(last)
}

pub fn expect_recorded(resp: KvResponse) -> Result<u64> {
    match resp {
        KvResponse::Reply(KvReply::Recorded { position }) => Ok(position),
        other => bail!("unexpected {other:?}"),
    }
}
