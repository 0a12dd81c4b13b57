//! A linearizability checker in the style of Wing & Gong, with Lowe's memoization: search for
//! an order of the operations that respects real time (an operation that returned before
//! another was invoked comes first) and that the sequential model accepts.
//!
//! The pending operations are a doubly linked list of call and return events in time order. The
//! search linearizes a call whose operation the model accepts (removing both of its events),
//! and backtracks when it meets a return event: that operation should already have taken
//! effect. A set of (linearized operations, model state) pairs already explored cuts repeated
//! work. Operations whose outcome is unknown never return (their return event is at the end)
//! and their model step offers "no effect" as one of its outcomes.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model: Clone + Eq + Hash + Debug {
    type Op: Debug;
    /// The states the model can be in after `op` from this state; empty when `op`, with the
    /// result it had, is impossible here.
    fn step(&self, op: &Self::Op) -> Vec<Self>;
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Entry<O> {
    pub op: O,
    /// Position of the invocation in the history.
    pub call: u64,
    /// Position of the completion; None when unknown (it may take effect any time after the call).
    pub ret: Option<u64>,
    /// History index reported in anomalies.
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    /// No order exists. `stuck` is the operation the deepest attempt could not get past,
    /// `concurrent` the operations overlapping it (history ids).
    NotLinearizable {
        stuck: u64,
        concurrent: Vec<u64>,
    },
    /// The search gave up after its budget of steps.
    Unknown,
}

const NIL: usize = usize::MAX;

struct Search<M: Model> {
    /// Per list node (0 = head): the entry it belongs to and whether it is the call.
    node_op: Vec<(usize, bool)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    call_node: Vec<usize>,
    ret_node: Vec<usize>,
    bits: Vec<u64>,
    cache: HashSet<(Vec<u64>, M)>,
    state: M,
    stack: Vec<(usize, M, Vec<M>)>,
}

impl<M: Model> Search<M> {
    fn new<O>(init: M, entries: &[Entry<O>]) -> Search<M> {
        let mut events: Vec<(u64, bool, usize)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            events.push((e.call, true, i));
            events.push((e.ret.unwrap_or(u64::MAX), false, i));
        }
        events.sort_by_key(|(t, is_call, i)| (*t, !*is_call, *i));
        let n = events.len();
        let mut s = Search {
            node_op: vec![(0, false); n + 1],
            next: vec![NIL; n + 1],
            prev: vec![NIL; n + 1],
            call_node: vec![0; entries.len()],
            ret_node: vec![0; entries.len()],
            bits: vec![0; entries.len().div_ceil(64)],
            cache: HashSet::new(),
            state: init,
            stack: Vec::new(),
        };
        for (k, (_, is_call, i)) in events.into_iter().enumerate() {
            let node = k + 1;
            s.node_op[node] = (i, is_call);
            s.prev[node] = k;
            s.next[k] = node;
            if is_call {
                s.call_node[i] = node;
            } else {
                s.ret_node[i] = node;
            }
        }
        s
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        if n != NIL {
            self.prev[n] = x;
        }
    }

    fn flip(&mut self, i: usize) {
        self.bits[i / 64] ^= 1 << (i % 64);
    }

    /// Linearizes entry `i` into the first of `alts` not explored yet.
    fn try_push(&mut self, i: usize, mut alts: Vec<M>) -> bool {
        self.flip(i);
        while let Some(s) = alts.pop() {
            if self.cache.insert((self.bits.clone(), s.clone())) {
                let prev = std::mem::replace(&mut self.state, s);
                self.stack.push((i, prev, alts));
                self.unlink(self.call_node[i]);
                self.unlink(self.ret_node[i]);
                return true;
            }
        }
        self.flip(i);
        false
    }
}

/// Checks `entries` against `init`, giving up after `budget` search steps.
pub fn check<M: Model>(init: M, entries: &[Entry<M::Op>], budget: u64) -> Outcome {
    let mut s = Search::new(init, entries);
    let mut cur = s.next[0];
    let mut steps = 0u64;
    let mut deepest: (usize, usize) = (0, 0);
    loop {
        if s.next[0] == NIL {
            return Outcome::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return Outcome::Unknown;
        }
        let (i, is_call) = if cur == NIL { (0, false) } else { s.node_op[cur] };
        if cur != NIL && is_call {
            let alts = s.state.step(&entries[i].op);
            if !alts.is_empty() && s.try_push(i, alts) {
                cur = s.next[0];
            } else {
                cur = s.next[cur];
            }
            continue;
        }
        if s.stack.len() >= deepest.0 {
            deepest = (s.stack.len(), i);
        }
        // Backtrack: undo the last choice and try its other outcomes, then the next call.
        let Some((j, prev, alts)) = s.stack.pop() else {
            return not_linearizable(entries, deepest.1);
        };
        s.state = prev;
        s.flip(j);
        s.relink(s.ret_node[j]);
        s.relink(s.call_node[j]);
        cur = if s.try_push(j, alts) { s.next[0] } else { s.next[s.call_node[j]] };
    }
}

fn not_linearizable<O>(entries: &[Entry<O>], stuck: usize) -> Outcome {
    let e = &entries[stuck];
    let end = e.ret.unwrap_or(u64::MAX);
    let concurrent = entries
        .iter()
        .filter(|o| o.id != e.id && o.call < end && o.ret.is_none_or(|r| r > e.call))
        .map(|o| o.id)
        .take(20)
        .collect();
    Outcome::NotLinearizable { stuck: e.id, concurrent }
}
