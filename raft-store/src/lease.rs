//! The leader lease: reads served without a quorum round while a quorum has recently
//! acknowledged this node as leader.
//!
//! openraft's followers refuse to vote for anyone for `election_timeout_max` after they last
//! heard from their leader (its "leader lease"). So when a majority of every voter set of the
//! membership answered an `AppendEntries` (heartbeat or not) that this leader sent at time `t`,
//! no other leader can be elected before `t + election_timeout_max` by the followers' clocks.
//! The leader counts a shorter lease, [`Acks::new`]'s `lease`, from the *send* time of those
//! requests on its own monotonic clock, and answers a linearizable read from its state machine
//! while the lease holds, once it has applied everything up to the commit index as it stood at
//! the check (every acknowledged write, its own first entry of the term included). Entries
//! appended but not yet committed are not waited for: no client has been told of them.
//!
//! A node that has just started remembers no leader, so it would vote at once; that would let a
//! new leader appear while the old one's lease still holds. Every node therefore refuses to
//! vote for `election_timeout_max` after it starts (see [`crate::network`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::types::{NodeId, RaftMetrics};

/// When each peer last acknowledged this node's leadership, per term: the send time of the
/// latest request it answered without a higher vote.
#[derive(Debug)]
pub(crate) struct Acks {
    lease: Duration,
    by_peer: Mutex<HashMap<NodeId, (u64, Instant)>>,
}

impl Acks {
    pub(crate) fn new(lease: Duration) -> Self {
        Acks { lease, by_peer: Mutex::default() }
    }

    /// `peer` answered a request of term `term` sent at `sent`, accepting the sender as leader.
    pub(crate) fn record(&self, peer: NodeId, term: u64, sent: Instant) {
        let mut by_peer = self.by_peer.lock().expect("acks lock");
        let e = by_peer.entry(peer).or_insert((term, sent));
        if (term, sent) > *e {
            *e = (term, sent);
        }
    }

    /// Whether `me` is the leader of `m`, has applied an entry of its term, and holds the
    /// lease now; if not, a read needs a quorum round.
    pub(crate) fn holds(&self, me: NodeId, m: &RaftMetrics) -> bool {
        self.check(me, m).is_some()
    }

    fn check(&self, me: NodeId, m: &RaftMetrics) -> Option<()> {
        if m.current_leader != Some(me) || m.state != openraft::ServerState::Leader {
            return None;
        }
        // Until an entry of this term is applied, entries of older terms may be committed but
        // not yet known as such here.
        if m.last_applied.as_ref()?.leader_id.term != m.current_term {
            return None;
        }
        let now = Instant::now();
        let by_peer = self.by_peer.lock().expect("acks lock");
        let acked_at = |id: &NodeId| match by_peer.get(id) {
            _ if *id == me => Some(now),
            Some(&(term, at)) if term == m.current_term => Some(at),
            _ => None,
        };
        for voters in m.membership_config.membership().get_joint_config() {
            let mut times: Vec<Option<Instant>> = voters.iter().map(acked_at).collect();
            // The time a majority of this voter set has acknowledged: the majority-th latest.
            times.sort_unstable_by(|a, b| b.cmp(a));
            let quorum_at = times.get(voters.len() / 2).copied().flatten()?;
            if now.saturating_duration_since(quorum_at) >= self.lease {
                return None;
            }
        }
        Some(())
    }
}
