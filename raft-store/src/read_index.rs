//! Linearizable reads, batched: every read that arrives while a leadership confirmation is in
//! flight waits for the next one, and all of them share it.
//!
//! A confirmation (openraft's `ensure_linearizable`) takes a read index, proves with a quorum
//! round that this node is still the leader, and waits until the state machine has applied up
//! to that index. A read that arrived before the round started may use it; one that arrived
//! during the round may not (a newer write could already be committed), so it joins the next
//! round. One task runs the rounds back to back.

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::types::{Member, NodeId, Raft};

type Waiter = oneshot::Sender<Result<(), Error>>;

#[derive(Clone)]
pub(crate) struct ReadIndex {
    tx: mpsc::UnboundedSender<Waiter>,
}

fn convert(e: &RaftError<NodeId, CheckIsLeaderError<NodeId, Member>>) -> Error {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => {
            Error::NotLeader { leader_id: f.leader_id, leader: f.leader_node.clone() }
        }
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => Error::Unavailable(q.to_string()),
        RaftError::Fatal(f) => Error::Stopped(f.to_string()),
    }
}

impl ReadIndex {
    pub(crate) fn start(raft: Raft) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let res = raft.ensure_linearizable().await;
                for w in waiters {
                    let _ = w.send(res.as_ref().map(|_| ()).map_err(convert));
                }
            }
        });
        ReadIndex { tx }
    }

    /// Returns once a read of the local state machine is linearizable.
    pub(crate) async fn barrier(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| Error::Stopped("read index task ended".into()))?;
        rx.await.map_err(|_| Error::Stopped("read index task ended".into()))?
    }
}
