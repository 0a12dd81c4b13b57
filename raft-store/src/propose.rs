//! Group commit: concurrent proposals share log entries, and so fsyncs.
//!
//! openraft writes and syncs one log append at a time, so a proposal per entry would cost an
//! fsync (and a Raft round) per operation. Instead every `write` goes through one proposer
//! task: it takes all proposals waiting, puts them into one entry, and starts the next entry
//! while earlier ones replicate, with at most [`IN_FLIGHT`] entries outstanding. Under load the
//! proposals that arrive while one entry is being written all land in the next.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::Error;
use crate::types::{Batch, Member, NodeId, Payload, Raft};

/// Entries proposed but not yet committed, at most.
const IN_FLIGHT: usize = 4;
/// Operations and bytes in one entry, at most.
const MAX_OPS: usize = 4096;
const MAX_BYTES: usize = 4 << 20;

type Reply = oneshot::Sender<Result<Payload, Error>>;

#[derive(Clone)]
pub(crate) struct Proposer {
    tx: mpsc::UnboundedSender<(Payload, Reply)>,
}

pub(crate) fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Error::NotLeader { leader_id: f.leader_id, leader: f.leader_node }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => Error::Membership(c.to_string()),
        RaftError::Fatal(f) => Error::Stopped(f.to_string()),
    }
}

/// The same failure, for each of the proposals that shared an entry.
fn copy_error(e: &Error) -> Error {
    match e {
        Error::NotLeader { leader_id, leader } => Error::NotLeader { leader_id: *leader_id, leader: leader.clone() },
        Error::Unavailable(s) => Error::Unavailable(s.clone()),
        Error::Membership(s) => Error::Membership(s.clone()),
        Error::Stopped(s) => Error::Stopped(s.clone()),
        other => Error::Storage(other.to_string()),
    }
}

impl Proposer {
    pub(crate) fn start(raft: Raft) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Payload, Reply)>();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(IN_FLIGHT));
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else { return };
                let Some(first) = rx.recv().await else { return };
                let mut bytes = first.0 .0.len();
                let mut batch = vec![first];
                while batch.len() < MAX_OPS && bytes < MAX_BYTES {
                    match rx.try_recv() {
                        Ok(p) => {
                            bytes += p.0 .0.len();
                            batch.push(p);
                        }
                        Err(_) => break,
                    }
                }
                let raft = raft.clone();
                tokio::spawn(async move {
                    let (ops, waiters): (Vec<Payload>, Vec<Reply>) = batch.into_iter().unzip();
                    let n = ops.len();
                    match raft.client_write(Batch(ops)).await.map_err(write_error) {
                        Ok(resp) if resp.data.0.len() == n => {
                            for (w, r) in waiters.into_iter().zip(resp.data.0) {
                                let _ = w.send(Ok(r));
                            }
                        }
                        Ok(resp) => {
                            let e =
                                Error::Storage(format!("{n} operations applied with {} replies", resp.data.0.len()));
                            for w in waiters {
                                let _ = w.send(Err(copy_error(&e)));
                            }
                        }
                        Err(e) => {
                            for w in waiters {
                                let _ = w.send(Err(copy_error(&e)));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Proposer { tx }
    }

    /// Proposes one encoded operation; returns its encoded reply once applied.
    pub(crate) async fn propose(&self, op: Payload) -> Result<Payload, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((op, tx)).map_err(|_| Error::Stopped("proposer task ended".into()))?;
        rx.await.map_err(|_| Error::Stopped("proposer task ended".into()))?
    }
}
