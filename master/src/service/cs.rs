//! The chunkserver service (port 9420): registration with the cluster secret, chunk reports
//! and heartbeats into the topology, and the leader's orders out.

use std::net::SocketAddr;
use std::sync::Arc;

use alces_proto::link::cs_master::{CsToMaster, MasterToCs};
use alces_proto::{Connection, Handshake, LinkKind};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::master::Master;

pub async fn serve(m: Arc<Master>, listener: TcpListener) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = m.stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
        };
        let m = m.clone();
        tokio::spawn(async move {
            let stop = m.stop.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(m, stream, peer) => {}
            }
        });
    }
}

async fn connection(m: Arc<Master>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let mut conn = match Connection::new(stream, alces_proto::DEFAULT_MAX_FRAME) {
        Ok(c) => c,
        Err(e) => return tracing::warn!(chunkserver = %peer, error = %e, "connection unusable"),
    };
    let hs =
        Handshake::new(LinkKind::ChunkserverMaster, format!("master {}", m.config.id), Some(m.config.secret.clone()));
    if let Err(e) = hs.accept(&mut conn).await {
        return tracing::warn!(chunkserver = %peer, error = %e, "refused a chunkserver connection");
    }
    let reg = match conn.recv::<CsToMaster>().await {
        Ok(Some(CsToMaster::Register(r))) => r,
        Ok(_) => return tracing::warn!(chunkserver = %peer, "chunkserver did not register first"),
        Err(e) => return tracing::warn!(chunkserver = %peer, error = %e, "bad registration"),
    };
    let (tx, rx) = mpsc::unbounded_channel::<MasterToCs>();
    let generation = m.topology.register(&reg, tx.clone());
    let id = reg.id;
    tracing::info!(chunkserver = %id, addr = %reg.data_addr, from = %peer, "chunkserver registered");
    let _ = tx.send(MasterToCs::Welcome {
        master: alces_proto::types::NodeId(m.config.id),
        leader: m.is_leader(),
        term: m.term(),
    });
    let _ = tx.send(MasterToCs::Masters { cs_addrs: member_cs_addrs(&m) });
    let (mut reader, writer) = conn.split();
    let write_task = tokio::spawn(writer.pump(rx));
    loop {
        let msg: CsToMaster = match reader.recv().await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(e) if e.is_disconnect() => break,
            Err(e) => {
                tracing::warn!(chunkserver = %id, error = %e, "closing chunkserver connection after a bad frame");
                break;
            }
        };
        match msg {
            CsToMaster::Register(_) => {
                tracing::warn!(chunkserver = %id, "second registration on one connection");
                break;
            }
            CsToMaster::ChunkReport { chunks, last } => m.topology.report(id, &chunks, last),
            CsToMaster::ChunksChanged { added, removed } => m.topology.changed(id, &added, &removed),
            CsToMaster::Damaged { chunk, version } => {
                tracing::warn!(chunkserver = %id, chunk = %chunk.hex(), version = %version, "damaged replica dropped");
                m.topology.changed(id, &[], &[(chunk, version)]);
            }
            CsToMaster::Heartbeat(load) => m.topology.heartbeat(id, load),
            CsToMaster::OrderDone { order, result } => m.topology.order_done(order, result),
        }
    }
    m.topology.disconnect(id, generation);
    write_task.abort();
    tracing::info!(chunkserver = %id, "chunkserver disconnected");
}

/// The chunkserver addresses of every member of the Raft group.
fn member_cs_addrs(m: &Master) -> Vec<String> {
    let metrics = m.node.raft().metrics().borrow().clone();
    let mut addrs: Vec<String> = metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(_, member)| member.cs_addr.clone())
        .filter(|a| !a.is_empty())
        .collect();
    addrs.sort();
    addrs
}

/// Tells every connected chunkserver when this master gains or loses leadership, and when
/// the group's members change.
pub async fn announce_leadership(m: Arc<Master>) {
    let mut rx = m.node.raft().metrics();
    let mut last = (false, 0u64);
    let mut last_members = member_cs_addrs(&m);
    loop {
        let now = {
            let metrics = rx.borrow();
            (metrics.current_leader == Some(m.config.id), metrics.current_term)
        };
        if now != last {
            last = now;
            m.topology.broadcast(MasterToCs::Leadership { leader: now.0, term: now.1 });
        }
        let members = member_cs_addrs(&m);
        if members != last_members {
            last_members = members.clone();
            m.topology.broadcast(MasterToCs::Masters { cs_addrs: members });
        }
        tokio::select! {
            _ = m.stop.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}
