//! The namespace checker: create, unlink, rename and list in one shared folder, with a few
//! names, must be linearizable against a model of the folder as a set of names.

use serde_json::{json, Value};

use super::wgl::{self, Entry, Model};
use super::Verdict;
use crate::history::{pairs, Kind, Op};

/// The names present, as a bit set over the workload's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Folder(pub u32);

/// An operation with the result it had (None: unknown, it may or may not have happened).
#[derive(Debug, Clone)]
pub enum NsOp {
    /// Exclusive create: Some(true) created, Some(false) already existed.
    Create(u8, Option<bool>),
    /// Some(false): it did not exist.
    Unlink(u8, Option<bool>),
    /// Rename a to b (replacing b); Some(false): a did not exist.
    Rename(u8, u8, Option<bool>),
    List(u32),
}

impl Folder {
    fn has(self, x: u8) -> bool {
        self.0 & (1 << x) != 0
    }
    fn with(self, x: u8) -> Folder {
        Folder(self.0 | (1 << x))
    }
    fn without(self, x: u8) -> Folder {
        Folder(self.0 & !(1 << x))
    }
}

impl Model for Folder {
    type Op = NsOp;
    fn step(&self, op: &NsOp) -> Vec<Folder> {
        let s = *self;
        let effect = |done: bool, next: Folder, res: Option<bool>| -> Vec<Folder> {
            match res {
                Some(r) if r == done => vec![if done { next } else { s }],
                Some(_) => vec![],
                // Unknown: it did what it could, or nothing.
                None => vec![s, next],
            }
        };
        match *op {
            NsOp::Create(x, res) => effect(!s.has(x), s.with(x), res),
            NsOp::Unlink(x, res) => effect(s.has(x), s.without(x), res),
            NsOp::Rename(a, b, res) if a != b => effect(s.has(a), s.without(a).with(b), res),
            NsOp::Rename(a, _, res) => effect(s.has(a), s, res),
            NsOp::List(names) if names == s.0 => vec![s],
            NsOp::List(_) => vec![],
        }
    }
}

/// Result of an operation from its completion value (`{"done": bool}`).
fn result(p: &crate::history::Pair) -> Option<bool> {
    match p.kind() {
        Kind::Ok => p.complete.as_ref().and_then(|c| c.value["done"].as_bool()),
        _ => None,
    }
}

fn name(v: &Value, k: &str) -> u8 {
    v[k].as_u64().unwrap_or(0) as u8
}

pub fn check(ops: &[Op]) -> Verdict {
    let mut v = Verdict::new("namespace", ops);
    let mut entries = Vec::new();
    for p in pairs(ops) {
        let a = &p.invoke.value;
        let op = match (p.invoke.f.as_str(), p.kind()) {
            (_, Kind::Fail) => continue,
            ("list", Kind::Ok) => {
                NsOp::List(p.complete.as_ref().and_then(|c| c.value["names"].as_u64()).unwrap_or(0) as u32)
            }
            ("list", _) => continue,
            ("create", _) => NsOp::Create(name(a, "name"), result(&p)),
            ("unlink", _) => NsOp::Unlink(name(a, "name"), result(&p)),
            ("rename", _) => NsOp::Rename(name(a, "from"), name(a, "to"), result(&p)),
            _ => continue,
        };
        let ret = if p.kind() == Kind::Ok { p.complete.as_ref().map(|c| c.index) } else { None };
        entries.push(Entry { op, call: p.invoke.index, ret, id: p.invoke.index });
    }
    match wgl::check(Folder(0), &entries, 50_000_000) {
        wgl::Outcome::Linearizable => {}
        wgl::Outcome::NotLinearizable { stuck, concurrent } => {
            let mut involved = vec![stuck];
            involved.extend(concurrent);
            v.unexpected.push(json!({ "op": stuck }));
            v.anomaly(
                "not-linearizable",
                format!("no order of the folder's operations explains operation {stuck}"),
                involved,
            );
        }
        wgl::Outcome::Unknown => {
            v.anomaly("unknown", format!("the search gave up ({} operations)", entries.len()), vec![])
        }
    }
    v.notes.push(format!("{} operations checked", entries.len()));
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(op: NsOp, call: u64, ret: Option<u64>) -> Entry<NsOp> {
        Entry { op, call, ret, id: call }
    }

    #[test]
    fn a_rename_moves_a_name() {
        let h = vec![
            e(NsOp::Create(0, Some(true)), 0, Some(1)),
            e(NsOp::Rename(0, 1, Some(true)), 2, Some(3)),
            e(NsOp::List(0b10), 4, Some(5)),
            e(NsOp::Unlink(0, Some(false)), 6, Some(7)),
        ];
        assert_eq!(wgl::check(Folder(0), &h, 1000), wgl::Outcome::Linearizable);
    }

    #[test]
    fn two_exclusive_creates_cannot_both_win() {
        let h = vec![e(NsOp::Create(2, Some(true)), 0, Some(3)), e(NsOp::Create(2, Some(true)), 1, Some(2))];
        assert!(matches!(wgl::check(Folder(0), &h, 1000), wgl::Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn an_unlinked_name_does_not_come_back() {
        let h = vec![
            e(NsOp::Create(1, Some(true)), 0, Some(1)),
            e(NsOp::Unlink(1, Some(true)), 2, Some(3)),
            e(NsOp::List(0b10), 4, Some(5)),
        ];
        assert!(matches!(wgl::check(Folder(0), &h, 1000), wgl::Outcome::NotLinearizable { .. }));
    }
}
