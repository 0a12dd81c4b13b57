//! The report of a run: `verdict.json` and `report.html`, a page with the verdict and an
//! inline SVG timeline of every operation's latency (log scale), with the fault windows shaded.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::checker::Verdict;
use crate::history::{pairs, Kind, Op, NEMESIS};

const W: f64 = 1100.0;
const H: f64 = 360.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 30.0;
/// Latency axis: 1 ms to 100 s.
const MIN_LAT: f64 = 1e-3;
const MAX_LAT: f64 = 100.0;

pub fn write_verdict(dir: &Path, v: &Verdict) -> Result<()> {
    let path = dir.join("verdict.json");
    std::fs::write(&path, serde_json::to_string_pretty(v)?).with_context(|| format!("writing {}", path.display()))
}

/// Fault windows: (start, end, label) in seconds.
fn windows(ops: &[Op], end: f64) -> Vec<(f64, f64, String)> {
    let mut out = Vec::new();
    let mut open: Option<(f64, String)> = None;
    for o in ops.iter().filter(|o| o.process == NEMESIS) {
        match o.f.as_str() {
            "start" => open = Some((o.time, o.value["fault"].as_str().unwrap_or("?").to_string())),
            "stop" => {
                if let Some((t, l)) = open.take() {
                    out.push((t, o.time, l));
                }
            }
            _ => {}
        }
    }
    if let Some((t, l)) = open {
        out.push((t, end, l));
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn svg(ops: &[Op]) -> String {
    let end = ops.last().map(|o| o.time).unwrap_or(1.0).max(1.0);
    let x = |t: f64| LEFT + t / end * (W - LEFT - 10.0);
    let y = |lat: f64| {
        let l = lat.clamp(MIN_LAT, MAX_LAT);
        (H - BOTTOM) - (l / MIN_LAT).log10() / (MAX_LAT / MIN_LAT).log10() * (H - BOTTOM - 10.0)
    };
    let mut s = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-size="11">"#);
    for (a, b, label) in windows(ops, end) {
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="0" width="{:.1}" height="{:.1}" fill="#f4a6a6" opacity="0.35"><title>{}</title></rect><text x="{:.1}" y="10" fill="#a33">{}</text>"##,
            x(a),
            (x(b) - x(a)).max(1.0),
            H - BOTTOM,
            escape(&label),
            x(a) + 2.0,
            escape(&label)
        );
    }
    for lat in [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0] {
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{W}" y1="{0:.1}" y2="{0:.1}" stroke="#ddd"/><text x="4" y="{1:.1}">{2}</text>"##,
            y(lat),
            y(lat) + 4.0,
            if lat < 1.0 { format!("{} ms", lat * 1000.0) } else { format!("{lat} s") }
        );
    }
    for p in pairs(ops) {
        let Some(c) = &p.complete else { continue };
        let color = match c.kind {
            Kind::Ok => "#2a7",
            Kind::Fail => "#d33",
            _ => "#e90",
        };
        let _ = write!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{color}"><title>{} {} {}</title></circle>"#,
            x(p.invoke.time),
            y(c.time - p.invoke.time),
            p.invoke.index,
            escape(&p.invoke.f),
            escape(&c.value.to_string().chars().take(80).collect::<String>())
        );
    }
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="{}">0 s</text><text x="{}" y="{}">{end:.0} s</text></svg>"#,
        H - 8.0,
        W - 50.0,
        H - 8.0
    );
    s
}

pub fn write_html(dir: &Path, ops: &[Op], v: &Verdict, title: &str) -> Result<()> {
    let status = if v.valid { "<b style='color:#2a7'>valid</b>" } else { "<b style='color:#d33'>INVALID</b>" };
    let html = format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style>\
         </head><body><h1>{t}</h1><p>{status}: {ok} ok, {fail} failed, {info} unknown; {lost} lost, {unexp} unexpected, \
         {anom} anomalies.</p><p>Latency of every operation by start time (green ok, red failed, orange unknown); \
         shaded: fault windows.</p>{svg}<h2>Verdict</h2><pre>{verdict}</pre></body></html>",
        t = escape(title),
        ok = v.ops.ok,
        fail = v.ops.fail,
        info = v.ops.info,
        lost = v.lost.len(),
        unexp = v.unexpected.len(),
        anom = v.anomalies.len(),
        svg = svg(ops),
        verdict = escape(&serde_json::to_string_pretty(v)?),
    );
    let path = dir.join("report.html");
    std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))
}
