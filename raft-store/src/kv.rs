//! A small replicated key-value machine and its TCP API: the reference application of this
//! crate. The integration tests and the commit benchmark run it as real processes
//! (`alces-raft-kv`), so the store is exercised exactly as the master uses it.
//!
//! Besides plain puts it keeps an ordered record list (`Record`): every applied record gets
//! the next position, so comparing the lists of two nodes shows whether they applied the same
//! operations in the same order.

use std::collections::BTreeMap;
use std::sync::Arc;

use alces_proto::{Connection, Handshake, LinkKind};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::machine::{ApplyCtx, StateMachine};
use crate::node::{NodeStatus, RaftNode};
use crate::types::{Member, NodeId};

const CF: &str = "kv";
const KEY_COUNT: &[u8] = b"count";

fn data_key(key: &str) -> Vec<u8> {
    [b"k/".as_slice(), key.as_bytes()].concat()
}

fn order_key(position: u64) -> Vec<u8> {
    [b"o/".as_slice(), &position.to_be_bytes()].concat()
}

/// The key-value state machine (one column family, `kv`).
#[derive(Debug, Default)]
pub struct KvMachine;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvOp {
    Put { key: String, value: Vec<u8> },
    Record { writer: u32, seq: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvReply {
    /// The log index at which the put was applied.
    Put { index: u64 },
    /// The record's position in the ordered list.
    Recorded { position: u64 },
}

impl StateMachine for KvMachine {
    type Op = KvOp;
    type Reply = KvReply;

    fn column_families(&self) -> &'static [&'static str] {
        &[CF]
    }

    fn apply(&self, ctx: &mut ApplyCtx<'_>, op: KvOp) -> Result<KvReply> {
        match op {
            KvOp::Put { key, value } => {
                ctx.put(CF, data_key(&key), value)?;
                Ok(KvReply::Put { index: ctx.index() })
            }
            KvOp::Record { writer, seq } => {
                let position: u64 = ctx.get_value(CF, KEY_COUNT)?.unwrap_or(0);
                ctx.put_value(CF, order_key(position), &(writer, seq))?;
                ctx.put_value(CF, KEY_COUNT, &(position + 1))?;
                Ok(KvReply::Recorded { position })
            }
        }
    }

    fn describe(&self, cf: &str, key: &[u8], value: &[u8]) -> String {
        format!("{cf} {} = {} bytes", String::from_utf8_lossy(key), value.len())
    }
}

impl KvMachine {
    pub fn get(db: &Db, key: &str) -> Result<Option<Vec<u8>>> {
        db.get(CF, &data_key(key))
    }

    /// Records at positions `from..from+limit`, in order.
    pub fn order(db: &Db, from: u64, limit: u32) -> Result<Vec<(u32, u64)>> {
        (from..from + limit as u64).map_while(|p| db.get_value::<(u32, u64)>(CF, &order_key(p)).transpose()).collect()
    }
}

/// Requests of the key-value API.
#[derive(Debug, Serialize, Deserialize)]
pub enum KvRequest {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Record {
        writer: u32,
        seq: u64,
    },
    /// Linearizable read of a key.
    Get {
        key: String,
    },
    /// The local ordered record list (no read barrier: it shows what this node applied).
    Order {
        from: u64,
        limit: u32,
    },
    Status,
    Bootstrap {
        members: BTreeMap<NodeId, Member>,
    },
    AddLearner {
        id: NodeId,
        member: Member,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
    TransferLeader {
        to: NodeId,
    },
    Snapshot,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum KvResponse {
    Reply(KvReply),
    Value(Option<Vec<u8>>),
    Order(Vec<(u32, u64)>),
    Status(Box<NodeStatus>),
    Done,
    Failed { message: String, retryable: bool, leader: Option<Member> },
}

impl From<Error> for KvResponse {
    fn from(e: Error) -> Self {
        let retryable = e.is_retryable();
        let leader = match &e {
            Error::NotLeader { leader, .. } => leader.clone(),
            _ => None,
        };
        KvResponse::Failed { message: e.to_string(), retryable, leader }
    }
}

fn done(r: Result<()>) -> KvResponse {
    r.map(|_| KvResponse::Done).unwrap_or_else(KvResponse::from)
}

async fn handle(node: &RaftNode<KvMachine>, req: KvRequest) -> KvResponse {
    let db = node.db();
    match req {
        KvRequest::Put { key, value } => {
            node.write(&KvOp::Put { key, value }).await.map(KvResponse::Reply).unwrap_or_else(Into::into)
        }
        KvRequest::Record { writer, seq } => {
            node.write(&KvOp::Record { writer, seq }).await.map(KvResponse::Reply).unwrap_or_else(Into::into)
        }
        KvRequest::Get { key } => match node.read_barrier().await {
            Ok(()) => KvMachine::get(db, &key).map(KvResponse::Value).unwrap_or_else(Into::into),
            Err(e) => e.into(),
        },
        KvRequest::Order { from, limit } => {
            KvMachine::order(db, from, limit.min(10_000)).map(KvResponse::Order).unwrap_or_else(Into::into)
        }
        KvRequest::Status => KvResponse::Status(Box::new(node.status())),
        KvRequest::Bootstrap { members } => done(node.bootstrap(members).await),
        KvRequest::AddLearner { id, member } => done(node.add_learner(id, member).await),
        KvRequest::Promote { id } => done(node.promote(id).await),
        KvRequest::Remove { id } => done(node.remove(id).await),
        KvRequest::TransferLeader { to } => done(node.transfer_leader(to).await),
        KvRequest::Snapshot => done(node.snapshot().await.map(|_| ())),
    }
}

/// The handshake of the key-value API (a client link, no secret).
pub fn api_handshake(name: &str) -> Handshake {
    Handshake::new(LinkKind::ClientMaster, name, None)
}

/// Serves the key-value API until `stop` is cancelled; one task per connection.
pub async fn serve_api(listener: TcpListener, node: Arc<RaftNode<KvMachine>>, stop: CancellationToken) {
    let handshake = api_handshake(&format!("kv node {}", node.id()));
    loop {
        let (stream, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
        };
        let (node, handshake) = (node.clone(), handshake.clone());
        tokio::spawn(async move {
            let mut conn = match Connection::new(stream, alces_proto::DEFAULT_MAX_FRAME) {
                Ok(c) => c,
                Err(e) => return tracing::warn!(client = %addr, error = %e, "connection unusable"),
            };
            if let Err(e) = handshake.accept(&mut conn).await {
                return tracing::warn!(client = %addr, error = %e, "refused an API connection");
            }
            loop {
                let req: KvRequest = match conn.recv().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(e) if e.is_disconnect() => return,
                    Err(e) => {
                        return tracing::warn!(client = %addr, error = %e, "closing API connection after a bad frame")
                    }
                };
                let resp = handle(&node, req).await;
                if conn.send(&resp).await.is_err() {
                    return;
                }
            }
        });
    }
}
