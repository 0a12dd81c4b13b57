//! The web monitor in a real browser: a live cluster (3 masters, 3 chunkservers, a mount with
//! some files), headless Chromium loads `/` from a follower's admin port, runs the page's
//! script, and the rendered page must name the leader, list every chunkserver and show the
//! chunk counts the API reports. A screenshot is kept as a test artifact.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use alces_ops::api::{ClusterView, Sample};
use alces_ops::launcher::{fetch_cluster, Cluster, Layout};
use alces_testkit::temp_dir;
use anyhow::{bail, ensure, Context, Result};

/// Where test artifacts go: `ALCES_ARTIFACTS`, else `alces-artifacts` in the target folder.
fn artifacts_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("ALCES_ARTIFACTS") {
        Some(d) => PathBuf::from(d),
        None => {
            // The test binary lives in TARGET/release/deps.
            let exe = std::env::current_exe()?;
            let target = exe.ancestors().nth(3).context("the target folder")?;
            target.join("alces-artifacts")
        }
    };
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn chromium() -> Result<PathBuf> {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    bail!("no Chromium found: ops/scripts/install-deps.sh installs Debian's chromium package")
}

/// Loads `url` in headless Chromium, lets its script run, and returns the rendered DOM.
fn render(browser: &Path, url: &str, screenshot: Option<&Path>, profile: &Path) -> Result<String> {
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,2000",
        // Virtual time: the page's first refresh (a fetch of the API) completes before the
        // DOM is dumped; the budget pauses while network requests are pending.
        "--virtual-time-budget=5000",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().context("running chromium")?;
    ensure!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The text of the element with `id` (`<b id="leader">2</b>` gives `2`).
fn element_text<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[start..];
    let open_end = rest.find('>')? + 1;
    let close = rest[open_end..].find('<')?;
    Some(rest[open_end..open_end + close].trim())
}

/// The rows (`<tr>...</tr>`) of the table with `id`, each as the text of its cells.
fn table_rows(dom: &str, id: &str) -> Vec<Vec<String>> {
    let Some(start) = dom.find(&format!("<table id=\"{id}\"")) else { return vec![] };
    let Some(len) = dom[start..].find("</table>") else { return vec![] };
    let table = &dom[start..start + len];
    table
        .split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td>")
                .skip(1)
                .map(|cell| strip_tags(cell.split("</td>").next().unwrap_or("")))
                .collect::<Vec<String>>()
        })
        .filter(|cells| !cells.is_empty())
        .collect()
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for ch in html.chars() {
        match ch {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

/// Writes a few files through the mount: some small, one spanning two 64 MiB chunks.
fn write_files(mnt: &Path) -> Result<()> {
    for i in 0..4 {
        fs::write(mnt.join(format!("small-{i}")), vec![i as u8; 100_000])?;
    }
    let mut f = fs::File::create(mnt.join("big"))?;
    let block = vec![7u8; 1 << 20];
    for _ in 0..70 {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Waits until a master sees every chunk with its goal of valid copies, and the chunkservers'
/// own counts (from their heartbeats) add up to those copies; returns that view.
fn settled(admin: &str) -> Result<ClusterView> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = fetch_cluster(admin)?;
        let all_at_goal = v.chunk_copies.iter().all(|k| k.valid as u64 == k.goal as u64);
        let counted: u64 = v.chunk_copies.iter().map(|k| k.chunks).sum();
        let copies: u64 = v.chunk_copies.iter().map(|k| k.valid as u64 * k.chunks).sum();
        let held: u64 = v.chunkservers.iter().map(|s| s.chunks).sum();
        if v.chunks >= 6 && counted == v.chunks && all_at_goal && held == copies {
            return Ok(v);
        }
        ensure!(Instant::now() < deadline, "chunks never settled at their goal: {:?}", v.chunk_copies);
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_monitor_shows_the_leader_the_chunkservers_and_the_chunk_counts() -> Result<()> {
    let browser = chromium()?;
    let tmp = temp_dir("alces-monitor-");
    let mnt = tmp.path().join("mnt");
    let mut layout = Layout::new(tmp.path().join("cluster"), 3, 3)?;
    layout.mount = Some(mnt.clone());
    let c = Cluster::up(&layout)?;
    let leader = c.wait_leader(Duration::from_secs(30))?;
    let leader_admin = c.master(leader)?.admin_addr.clone();
    let follower = c.file.masters.iter().find(|m| m.id != leader).context("a follower")?;
    // A count of copies taken while there were no chunks must not outlive them: the table
    // always covers the chunk total shown beside it.
    ensure!(fetch_cluster(&follower.admin_addr)?.chunk_copies.is_empty(), "copies before any file");
    write_files(&mnt)?;
    settled(&leader_admin)?;
    let first = fetch_cluster(&follower.admin_addr)?;
    let counted: u64 = first.chunk_copies.iter().map(|k| k.chunks).sum();
    ensure!(counted == first.chunks, "copies table covers {counted} of {} chunks", first.chunks);

    // Served by a follower: the page shows what that master knows, which names the leader.
    let v = settled(&follower.admin_addr)?;
    let url = format!("http://{}/", follower.admin_addr);
    let profile = tmp.path().join("chromium-profile");
    let dom = render(&browser, &url, None, &profile)?;

    // The leader, in the totals and as the one leader row of the Raft group.
    ensure!(element_text(&dom, "leader") == Some(leader.to_string().as_str()), "leader not shown:\n{dom}");
    let members = table_rows(&dom, "members");
    ensure!(members.len() == 3, "members table: {members:?}");
    let leaders: Vec<&Vec<String>> = members.iter().filter(|r| r[1] == "leader").collect();
    ensure!(leaders.len() == 1 && leaders[0][0] == leader.to_string(), "members table: {members:?}");

    // Every chunkserver, up, with its chunk count.
    let servers = table_rows(&dom, "servers");
    ensure!(servers.len() == 3, "chunkservers table: {servers:?}");
    for cs in &v.chunkservers {
        let row =
            servers.iter().find(|r| r[1] == cs.addr).with_context(|| format!("{} not shown: {servers:?}", cs.addr))?;
        ensure!(row[3] == "up", "chunkserver {} shown as {:?}", cs.addr, row[3]);
        ensure!(row[4].parse::<u64>()? > 0, "chunkserver {} shows no chunks: {row:?}", cs.addr);
    }
    let shown_copies: u64 = servers.iter().map(|r| r[4].parse::<u64>().unwrap_or(0)).sum();
    let api_copies: u64 = v.chunkservers.iter().map(|s| s.chunks).sum();
    ensure!(shown_copies == api_copies, "copies shown {shown_copies}, the API counts {api_copies}");

    // The chunk total and the table of chunks by goal and valid copies.
    ensure!(element_text(&dom, "chunk-total") == Some(v.chunks.to_string().as_str()), "chunk total:\n{dom}");
    let copies = table_rows(&dom, "copies");
    let expected: Vec<Vec<String>> = v
        .chunk_copies
        .iter()
        .map(|k| vec![k.goal.to_string(), k.valid.to_string(), k.chunks.to_string(), "ok".into()])
        .collect();
    ensure!(copies == expected, "copies table {copies:?}, expected {expected:?}");
    // The mount's session and the operation counters.
    ensure!(table_rows(&dom, "sessions").len() == 1, "sessions: {:?}", table_rows(&dom, "sessions"));

    let shot = artifacts_dir()?.join("monitor.png");
    let _ = fs::remove_file(&shot);
    render(&browser, &format!("http://{leader_admin}/"), Some(&shot), &profile)?;
    let png = fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    ensure!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "screenshot of {} bytes", png.len());
    eprintln!("monitor screenshot: {}", shot.display());

    // The leader serves the client requests: its page counts them.
    let dom = render(&browser, &format!("http://{leader_admin}/"), None, &profile)?;
    let ops = table_rows(&dom, "operations");
    let count = |op: &str| ops.iter().find(|r| r[0] == op).and_then(|r| r[1].parse::<u64>().ok()).unwrap_or(0);
    ensure!(count("create") >= 5 && count("write_chunk") >= 2, "operations table: {ops:?}");

    // `/metrics` says the same as the API: Raft, namespace, chunkservers, request latencies.
    let v = settled(&leader_admin)?;
    let m = metrics(&leader_admin)?;
    let get = |name: &str| m.get(name).copied().with_context(|| format!("{name} missing from /metrics"));
    ensure!(get("alces_master_raft_term")? == v.term as f64 && v.term > 0, "term");
    ensure!(get("alces_master_raft_is_leader")? == 1.0, "the leader says it is not");
    ensure!(get("alces_master_raft_commits_total")? > 0.0 && get("alces_master_raft_applied_index")? > 0.0);
    ensure!(get("alces_master_raft_apply_lag_entries")? >= 0.0);
    ensure!(get("alces_master_namespace_inodes")? == v.inodes as f64, "inodes: {} in the API", v.inodes);
    ensure!(get("alces_master_namespace_chunks")? == v.chunks as f64, "chunks: {} in the API", v.chunks);
    for k in &v.chunk_copies {
        let name = format!("alces_master_chunks_by_copies{{goal=\"{}\",valid=\"{}\"}}", k.goal, k.valid);
        ensure!(get(&name)? == k.chunks as f64, "{name}: the API counts {}", k.chunks);
    }
    ensure!(get("alces_master_chunkservers{state=\"up\"}")? == 3.0);
    for cs in &v.chunkservers {
        let name = format!("alces_master_chunkserver_bytes{{chunkserver=\"{}\",kind=\"total\"}}", cs.id);
        ensure!(get(&name)? == cs.total_bytes as f64 && cs.total_bytes > 0, "{name}");
        ensure!(get(&format!("alces_master_chunkserver_crc_errors{{chunkserver=\"{}\"}}", cs.id))? == 0.0);
    }
    ensure!(get("alces_master_request_seconds_count{op=\"create\"}")? >= 5.0, "create latencies");
    let m = metrics(&follower.admin_addr)?;
    ensure!(m.get("alces_master_raft_is_leader") == Some(&0.0), "a follower says it leads");

    // The charts' samples, kept by each master: they catch up with the files written.
    for canvas in ["chart-ops", "chart-space", "chart-ns"] {
        ensure!(dom.contains(&format!("id=\"{canvas}\"")), "no chart {canvas} on the page");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let url = format!("http://{leader_admin}/api/v1/history");
        let h: Vec<Sample> = serde_json::from_str(&ureq::get(&url).call()?.into_body().read_to_string()?)?;
        let last = h.last().cloned().unwrap_or_default();
        let ordered = h.windows(2).all(|w| w[0].time < w[1].time && w[0].requests <= w[1].requests);
        ensure!(ordered, "samples out of order: {h:?}");
        if last.inodes == v.inodes && last.chunks == v.chunks && last.total_bytes > 0 && last.requests > 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the last sample {last:?} never showed {} inodes and {} chunks",
            v.inodes,
            v.chunks
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// `GET /metrics` of a master, as `name{labels}` -> value; checks every sample line parses.
fn metrics(admin: &str) -> Result<std::collections::HashMap<String, f64>> {
    let text = ureq::get(&format!("http://{admin}/metrics")).call()?.into_body().read_to_string()?;
    let mut out = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (name, value) = line.rsplit_once(' ').with_context(|| format!("metrics line {line:?}"))?;
        out.insert(name.to_string(), value.parse::<f64>().with_context(|| format!("metrics line {line:?}"))?);
    }
    ensure!(out.len() > 20, "only {} samples in /metrics", out.len());
    Ok(out)
}
