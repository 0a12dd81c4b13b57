//! The bulk checker: every acknowledged file intact at the end, and no read, ever, returning
//! bytes other than the file's content.

use serde_json::json;

use super::{final_read, Verdict};
use crate::history::{pairs, Kind, Op};

pub fn check(ops: &[Op]) -> Verdict {
    let mut v = Verdict::new("bulk", ops);
    let all = pairs(ops);
    for p in all.iter().filter(|p| p.invoke.f == "read" && p.kind() == Kind::Ok) {
        let c = p.complete.as_ref().expect("ok has a completion");
        if c.value["intact"] != json!(true) {
            v.anomaly(
                "corrupt-read",
                format!("read of {} returned other bytes: {}", p.invoke.value["file"], c.value),
                vec![p.invoke.index],
            );
        }
    }
    let Some(read) = final_read(ops) else {
        v.anomaly("final-read-failed", "the files could not be listed after healing".into(), vec![]);
        return v.finish();
    };
    let files = &read.value["files"];
    let mut acked = 0;
    for p in all.iter().filter(|p| p.invoke.f == "write" && p.kind() == Kind::Ok) {
        acked += 1;
        let name = p.invoke.value["file"].as_str().unwrap_or_default();
        let f = &files[name];
        if f.is_null() {
            v.lost.push(json!({ "file": name, "op": p.invoke.index }));
        } else if f["intact"] != json!(true) {
            v.lost.push(json!({ "file": name, "op": p.invoke.index, "found": f }));
        }
    }
    let attempted: std::collections::HashSet<&str> =
        all.iter().filter(|p| p.invoke.f == "write").filter_map(|p| p.invoke.value["file"].as_str()).collect();
    for (name, _) in files.as_object().into_iter().flatten() {
        if !attempted.contains(name.as_str()) {
            v.unexpected.push(json!({ "file": name }));
        }
    }
    v.notes.push(format!("{acked} files acknowledged"));
    v.finish()
}
