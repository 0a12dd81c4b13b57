//! The append checker: every acknowledged record present, per writer in the order written,
//! no record present that was never attempted, none twice.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::{final_read, Verdict};
use crate::history::{pairs, Kind, Op};

pub fn check(ops: &[Op]) -> Verdict {
    let mut v = Verdict::new("append", ops);
    // (process, seq) -> (invoke index, outcome)
    let mut attempts: BTreeMap<(usize, u64), (u64, Kind)> = BTreeMap::new();
    for p in pairs(ops).iter().filter(|p| p.invoke.f == "append") {
        let seq = p.invoke.value["seq"].as_u64().unwrap_or(0);
        attempts.insert((p.invoke.process as usize, seq), (p.invoke.index, p.kind()));
    }
    let Some(read) = final_read(ops) else {
        v.anomaly("final-read-failed", "the state could not be read after healing".into(), vec![]);
        return v.finish();
    };
    let mut present: BTreeSet<(usize, u64)> = BTreeSet::new();
    let mut garbage = 0;
    for (file, content) in read.value["files"].as_object().into_iter().flatten() {
        garbage += content["garbage"].as_u64().unwrap_or(0);
        let recs: Vec<(usize, u64)> = serde_json::from_value(content["records"].clone()).unwrap_or_default();
        let mut last: BTreeMap<usize, u64> = BTreeMap::new();
        for (p, seq) in recs {
            if !present.insert((p, seq)) {
                v.anomaly("duplicate", format!("record {p}:{seq} appears twice ({file})"), op_of(&attempts, p, seq));
            }
            if let Some(prev) = last.insert(p, seq).filter(|prev| *prev > seq) {
                let mut involved = op_of(&attempts, p, prev);
                involved.extend(op_of(&attempts, p, seq));
                v.anomaly("reordered", format!("in {file}, record {p}:{seq} comes after {p}:{prev}"), involved);
            }
            match attempts.get(&(p, seq)) {
                None => v.unexpected.push(json!({ "process": p, "seq": seq, "file": file })),
                Some((i, Kind::Fail)) => v.unexpected.push(json!({ "process": p, "seq": seq, "failed_op": i })),
                _ => {}
            }
        }
    }
    for ((p, seq), (i, kind)) in &attempts {
        if *kind == Kind::Ok && !present.contains(&(*p, *seq)) {
            v.lost.push(json!({ "process": p, "seq": seq, "op": i }));
        }
    }
    if garbage > 0 {
        v.notes.push(format!("{garbage} fragments that are not records (left by writes that failed)"));
    }
    let acked = attempts.values().filter(|(_, k)| *k == Kind::Ok).count();
    v.notes.push(format!("{acked} acknowledged records, {} present at the end", present.len()));
    v.finish()
}

fn op_of(attempts: &BTreeMap<(usize, u64), (u64, Kind)>, p: usize, seq: u64) -> Vec<u64> {
    attempts.get(&(p, seq)).map(|(i, _)| vec![*i]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    /// Two appends acknowledged, one lost: the checker says so.
    #[test]
    fn a_lost_record_makes_the_run_invalid() {
        let dir = std::env::temp_dir().join(format!("alces-jepsen-append-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let h = History::create(&dir.join("h.jsonl")).unwrap();
        for seq in 1..=2 {
            h.record(0, Kind::Invoke, "append", json!({ "seq": seq }), None);
            h.record(0, Kind::Ok, "append", json!({ "seq": seq }), None);
        }
        let files = json!({ "files": { "p0.log": { "records": [[0, 1]], "garbage": 0 } } });
        h.record(9, Kind::Invoke, "final-read", json!(null), None);
        h.record(9, Kind::Ok, "final-read", files, None);
        let v = check(&h.ops());
        assert!(!v.valid);
        assert_eq!(v.lost.len(), 1);
        assert_eq!(v.ops.ok, 2);

        let h = History::create(&dir.join("h2.jsonl")).unwrap();
        h.record(0, Kind::Invoke, "append", json!({ "seq": 1 }), None);
        h.record(0, Kind::Ok, "append", json!({ "seq": 1 }), None);
        let files = json!({ "files": { "p0.log": { "records": [[0, 1], [0, 5]], "garbage": 0 } } });
        h.record(9, Kind::Invoke, "final-read", json!(null), None);
        h.record(9, Kind::Ok, "final-read", files, None);
        let v = check(&h.ops());
        assert!(!v.valid, "a record never written was read");
        assert_eq!(v.unexpected.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
