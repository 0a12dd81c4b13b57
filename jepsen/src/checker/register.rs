//! The register checker: each key is a register (a small file replaced whole); the reads and
//! writes of every key must be linearizable.

use std::collections::BTreeMap;

use serde_json::json;

use super::wgl::{self, Entry, Model};
use super::Verdict;
use crate::history::{pairs, Kind, Op};

/// A register holding a value, or nothing (the file does not exist yet).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Register(pub Option<u64>);

#[derive(Debug, Clone)]
pub enum RegOp {
    Write(u64),
    /// A write whose outcome is unknown: it took effect, or never will.
    MaybeWrite(u64),
    Read(Option<u64>),
}

impl Model for Register {
    type Op = RegOp;
    fn step(&self, op: &RegOp) -> Vec<Register> {
        match op {
            RegOp::Write(v) => vec![Register(Some(*v))],
            RegOp::MaybeWrite(v) => vec![self.clone(), Register(Some(*v))],
            RegOp::Read(r) if *r == self.0 => vec![self.clone()],
            RegOp::Read(_) => vec![],
        }
    }
}

/// Search steps per key before giving up.
const BUDGET: u64 = 20_000_000;

pub fn check(ops: &[Op]) -> Verdict {
    let mut v = Verdict::new("register", ops);
    let mut by_key: BTreeMap<u64, Vec<Entry<RegOp>>> = BTreeMap::new();
    for p in pairs(ops) {
        let key = p.invoke.value["key"].as_u64().unwrap_or(0);
        let ret = p.complete.as_ref().map(|c| c.index);
        let op = match (p.invoke.f.as_str(), p.kind()) {
            ("write", Kind::Ok) => RegOp::Write(p.invoke.value["value"].as_u64().unwrap_or(0)),
            ("write", Kind::Info) => RegOp::MaybeWrite(p.invoke.value["value"].as_u64().unwrap_or(0)),
            ("read", Kind::Ok) => RegOp::Read(p.complete.as_ref().and_then(|c| c.value["value"].as_u64())),
            // Failed writes had no effect; reads that did not answer say nothing.
            _ => continue,
        };
        let ret = if p.kind() == Kind::Ok { ret } else { None };
        by_key.entry(key).or_default().push(Entry { op, call: p.invoke.index, ret, id: p.invoke.index });
    }
    for (key, entries) in &by_key {
        match wgl::check(Register(None), entries, BUDGET) {
            wgl::Outcome::Linearizable => {}
            wgl::Outcome::NotLinearizable { stuck, concurrent } => {
                let mut involved = vec![stuck];
                involved.extend(concurrent);
                v.unexpected.push(json!({ "key": key, "op": stuck }));
                v.anomaly("not-linearizable", format!("key {key}: no order explains operation {stuck}"), involved);
            }
            wgl::Outcome::Unknown => {
                v.anomaly("unknown", format!("key {key}: the search gave up ({} operations)", entries.len()), vec![])
            }
        }
    }
    v.notes.push(format!("{} keys, {} operations checked", by_key.len(), by_key.values().map(Vec::len).sum::<usize>()));
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(op: RegOp, call: u64, ret: Option<u64>) -> Entry<RegOp> {
        Entry { op, call, ret, id: call }
    }

    #[test]
    fn concurrent_reads_of_either_value_are_linearizable() {
        // w1 |----|          r->2 overlaps w2, r->1 overlaps w2 too but starts first.
        //          w2 |--------|
        //     r1 |-----|  r2 |---|
        let h = vec![
            e(RegOp::Write(1), 0, Some(1)),
            e(RegOp::Write(2), 2, Some(7)),
            e(RegOp::Read(Some(1)), 3, Some(4)),
            e(RegOp::Read(Some(2)), 5, Some(6)),
        ];
        assert_eq!(wgl::check(Register(None), &h, 1_000_000), wgl::Outcome::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not() {
        // write 1, write 2 (both done), then a read returns 1.
        let h =
            vec![e(RegOp::Write(1), 0, Some(1)), e(RegOp::Write(2), 2, Some(3)), e(RegOp::Read(Some(1)), 4, Some(5))];
        match wgl::check(Register(None), &h, 1_000_000) {
            wgl::Outcome::NotLinearizable { stuck, .. } => assert_eq!(stuck, 4),
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn reads_that_go_back_in_time_are_not() {
        // w3 is concurrent with two sequential reads: 3 then nothing-yet is impossible.
        let h = vec![
            e(RegOp::Write(3), 0, Some(10)),
            e(RegOp::Read(Some(3)), 1, Some(2)),
            e(RegOp::Read(None), 3, Some(4)),
        ];
        assert!(matches!(wgl::check(Register(None), &h, 1_000_000), wgl::Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn an_unknown_write_may_or_may_not_happen() {
        let seen = vec![e(RegOp::MaybeWrite(5), 0, None), e(RegOp::Read(Some(5)), 3, Some(4))];
        assert_eq!(wgl::check(Register(None), &seen, 1_000), wgl::Outcome::Linearizable);
        let unseen = vec![e(RegOp::MaybeWrite(5), 0, None), e(RegOp::Read(None), 3, Some(4))];
        assert_eq!(wgl::check(Register(None), &unseen, 1_000), wgl::Outcome::Linearizable);
        // But once seen, it cannot be unseen.
        let flicker = vec![
            e(RegOp::MaybeWrite(5), 0, None),
            e(RegOp::Read(Some(5)), 3, Some(4)),
            e(RegOp::Read(None), 5, Some(6)),
        ];
        assert!(matches!(wgl::check(Register(None), &flicker, 1_000), wgl::Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn many_concurrent_writers_stay_tractable() {
        let mut h = Vec::new();
        let mut t = 0;
        for round in 0..200u64 {
            for w in 0..4u64 {
                h.push(e(RegOp::Write(round * 10 + w), t + w, Some(t + 10 + w)));
            }
            h.push(e(RegOp::Read(Some(round * 10 + 3)), t + 20, Some(t + 21)));
            t += 30;
        }
        assert_eq!(wgl::check(Register(None), &h, 10_000_000), wgl::Outcome::Linearizable);
    }
}
