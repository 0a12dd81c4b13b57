//! `alces admin` against real masters (started by the launcher, with an ADMIN_TOKEN): status
//! as a table and as JSON, changes refused without the token or with a wrong one, leadership
//! moved and moved back, snapshots, an unreachable master, a fourth master started empty,
//! added (learner, catch-up, voter) and removed again, and the leader removed.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use alces_ops::api::ClusterView;
use alces_ops::launcher::{Cluster, Layout};
use alces_testkit::{free_addr, temp_dir};
use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;

const TOKEN: &str = "moose-admin-token";

fn start(dir: &Path, chunkservers: usize) -> Result<Cluster> {
    let mut layout = Layout::new(dir, 3, chunkservers)?;
    layout.admin_token = TOKEN.into();
    Cluster::up(&layout)
}

/// Runs `alces admin ARGS...` with no admin settings from the environment.
fn admin(c: &Cluster, args: &[&str]) -> Result<Output> {
    let out = Command::new(c.bin_dir.join("alces"))
        .arg("admin")
        .args(args)
        .env_remove("ALCES_ADMIN_TOKEN")
        .env_remove("ALCES_ADMIN_HOSTS")
        .output()
        .context("running alces")?;
    Ok(out)
}

/// `alces admin ARGS...` that must succeed; its stdout.
fn admin_ok(c: &Cluster, args: &[&str]) -> Result<String> {
    let out = admin(c, args)?;
    ensure!(
        out.status.success(),
        "alces admin {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `alces admin ARGS...` that must fail; its stderr.
fn admin_fails(c: &Cluster, args: &[&str]) -> Result<String> {
    let out = admin(c, args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ensure!(!out.status.success(), "alces admin {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    ensure!(!stderr.contains("panicked"), "alces admin {args:?} panicked: {stderr}");
    Ok(stderr)
}

fn dir_arg(c: &Cluster) -> String {
    c.dir.display().to_string()
}

/// `alces admin --cluster DIR status --json`.
fn status(c: &Cluster) -> Result<ClusterView> {
    let text = admin_ok(c, &["--cluster", &dir_arg(c), "status", "--json"])?;
    serde_json::from_str(&text).with_context(|| format!("status --json printed {text}"))
}

/// The status as one master (`-H its admin address`) reports it.
fn status_at(admin_addr: &str, c: &Cluster) -> Result<ClusterView> {
    let text = admin_ok(c, &["-H", admin_addr, "status", "--json"])?;
    Ok(serde_json::from_str(&text)?)
}

fn voters(v: &ClusterView) -> Vec<u64> {
    v.members.iter().filter(|m| m.role != "learner").map(|m| m.id).collect()
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) if Instant::now() < deadline => {}
            Ok(None) => bail!("timed out waiting for {what}"),
            Err(e) if Instant::now() < deadline => eprintln!("still waiting for {what}: {e:#}"),
            Err(e) => return Err(e.context(format!("waiting for {what}"))),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every running master of the group names `leader`.
fn all_agree_on(c: &Cluster, members: &[u64], leader: u64) -> Result<Option<()>> {
    for m in c.file.masters.iter().filter(|m| members.contains(&m.id)) {
        if status_at(&m.admin_addr, c)?.leader != Some(leader) {
            return Ok(None);
        }
    }
    Ok(Some(()))
}

#[test]
fn status_token_checks_leader_transfer_and_snapshots() -> Result<()> {
    let tmp = temp_dir("alces-admin-");
    let c = start(tmp.path(), 1)?;
    let dir = dir_arg(&c);

    // status --json: three voters, exactly one leader, the one the view names.
    let v = status(&c)?;
    ensure!(v.members.len() == 3 && voters(&v).len() == 3, "members {:?}", v.members);
    let leaders: Vec<u64> = v.members.iter().filter(|m| m.role == "leader").map(|m| m.id).collect();
    let leader = v.leader.context("no leader")?;
    ensure!(leaders == [leader] && v.id == leader, "leader {leader}, leaders {leaders:?}, answered by {}", v.id);
    ensure!(v.chunkservers.len() == 1, "chunkservers {:?}", v.chunkservers);
    // Asked through any one master, status reports the leader's view.
    for m in &c.file.masters {
        let v = status_at(&m.admin_addr, &c)?;
        ensure!(v.id == leader && v.leader == Some(leader), "through master {}: {v:?}", m.id);
    }

    // The table.
    let text = admin_ok(&c, &["--cluster", &dir, "status"])?;
    ensure!(text.contains(&format!("3 voters, 0 learners; leader: master {leader}")), "{text}");
    for head in ["ROLE", "TERM", "APPLIED", "LAG", "Chunkservers: 1 (1 alive)", "Namespace:"] {
        ensure!(text.contains(head), "no {head:?} in\n{text}");
    }
    let rows = text
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 9 && ["1", "2", "3"].contains(&f[0]) && ["leader", "follower"].contains(&f[1]) && f[8] == "up"
        })
        .count();
    ensure!(rows == 3, "member rows missing:\n{text}");

    // Changes without the token, or with a wrong one, are refused and say which.
    let follower = c.file.masters.iter().find(|m| m.id != leader).context("a follower")?;
    let err = admin_fails(&c, &["-H", &follower.admin_addr, "remove", &follower.id.to_string()])?;
    ensure!(err.contains("needs the admin token and none was given") && err.contains("--token"), "{err}");
    let err = admin_fails(&c, &["--cluster", &dir, "--token", "wrong", "transfer-leader"])?;
    ensure!(err.contains("refused the admin token") && !err.contains("none was given"), "{err}");
    let err = admin_fails(&c, &["-H", &follower.admin_addr, "snapshot"])?;
    ensure!(err.contains("needs the admin token"), "{err}");
    let v = status(&c)?;
    ensure!(voters(&v).len() == 3 && v.leader == Some(leader), "a refused change changed the group: {v:?}");

    // transfer-leader, asked through a follower only: another voter leads.
    let out = admin_ok(&c, &["-H", &follower.admin_addr, "--token", TOKEN, "transfer-leader"])?;
    let v = status(&c)?;
    let new = v.leader.context("no leader after the transfer")?;
    ensure!(new != leader && out.contains(&format!("master {new} leads now")), "leader {new} (was {leader}): {out}");
    wait_for("every master to name the new leader", Duration::from_secs(20), || all_agree_on(&c, &[1, 2, 3], new))?;
    // ... and back to the first one, by id, with the token from the environment.
    let out = Command::new(c.bin_dir.join("alces"))
        .args(["admin", "--cluster", &dir, "transfer-leader", &leader.to_string(), "--json"])
        .env("ALCES_ADMIN_TOKEN", TOKEN)
        .output()?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(j["leader"] == leader && j["from"] == new, "{j}");
    ensure!(status(&c)?.leader == Some(leader), "leadership did not come back to {leader}");
    let err = admin_fails(&c, &["--cluster", &dir, "--token", TOKEN, "transfer-leader", "9"])?;
    ensure!(err.contains("master 9 is not a member"), "{err}");

    // Snapshots on the leader and on a follower; `--cluster DIR` alone brings the local
    // cluster's token.
    let j: serde_json::Value = serde_json::from_str(&admin_ok(&c, &["--cluster", &dir, "snapshot", "--json"])?)?;
    ensure!(j["master"] == leader && j["snapshot_index"].as_u64().is_some_and(|i| i > 0), "{j}");
    let f = follower.id.to_string();
    let out = admin_ok(&c, &["--cluster", &dir, "--token", TOKEN, "snapshot", "--on", &f])?;
    ensure!(out.contains(&format!("master {f} built a snapshot up to log index")), "{out}");

    // Adding an unknown master needs its addresses.
    let err = admin_fails(&c, &["--cluster", &dir, "--token", TOKEN, "add", "7"])?;
    ensure!(err.contains("master 7 is not a member yet") && err.contains("--raft"), "{err}");

    // A master that does not answer.
    let nobody = free_addr().to_string();
    let err = admin_fails(&c, &["-H", &nobody, "status"])?;
    ensure!(err.contains(&format!("cannot reach the admin API at {nobody}")) && err.contains("hint"), "{err}");
    Ok(())
}

#[test]
fn a_fourth_master_is_added_as_a_voter_and_removed() -> Result<()> {
    let tmp = temp_dir("alces-admin-add-");
    let mut c = start(tmp.path(), 1)?;
    let dir = dir_arg(&c);
    let leader = c.wait_leader(Duration::from_secs(30))?;
    // Some history for the new master to catch up with, part of it behind a snapshot.
    admin_ok(&c, &["--cluster", &dir, "--token", TOKEN, "snapshot"])?;

    let m4 = c.add_master()?;
    // Not in PEERS: it waits, in no group and with no leader.
    let own = status_at(&m4.admin_addr, &c)?;
    ensure!(own.id == 4 && own.members.is_empty() && own.leader.is_none(), "{own:?}");
    ensure!(c.leader() == Some(leader), "a master waiting to be added disturbed the leader");

    let out = admin_ok(
        &c,
        &[
            "--cluster",
            &dir,
            "--token",
            TOKEN,
            "add",
            "4",
            "--raft",
            &m4.raft_addr,
            "--client",
            &m4.client_addr,
            "--cs",
            &m4.cs_addr,
            "--admin",
            &m4.admin_addr,
        ],
    )?;
    for step in ["as a learner", "has caught up", "promoting master 4", "master 4 is a voter; voters: 1, 2, 3, 4"] {
        ensure!(out.contains(step), "no {step:?} in\n{out}");
    }
    let v = status(&c)?;
    ensure!(v.members.len() == 4 && voters(&v) == [1, 2, 3, 4], "members {:?}", v.members);
    ensure!(v.members.iter().filter(|m| m.role == "leader").count() == 1, "{:?}", v.members);
    let m = v.members.iter().find(|m| m.id == 4).context("member 4")?;
    ensure!(m.client_addr == m4.client_addr && m.admin_addr == m4.admin_addr, "{m:?}");
    wait_for("the new master to know the leader", Duration::from_secs(20), || all_agree_on(&c, &[1, 2, 3, 4], leader))
        .map_err(|e| e.context(format!("the processes:{}", c.log_tails(40))))?;
    let text = admin_ok(&c, &["--cluster", &dir, "status"])?;
    ensure!(text.contains("4 voters, 0 learners"), "{text}");
    // The chunkserver, configured with masters 1-3 only, learns of master 4 and registers.
    wait_for("the chunkserver to register with master 4", Duration::from_secs(20), || {
        // Master 4's own view (`status` would follow to the leader's).
        let view = alces_ops::launcher::fetch_cluster(&m4.admin_addr).ok();
        Ok(view.is_some_and(|v| v.chunkservers.iter().any(|s| s.alive)).then_some(()))
    })?;
    // Adding it again changes nothing.
    let again = admin_ok(&c, &["--cluster", &dir, "--token", TOKEN, "add", "4"])?;
    ensure!(again.contains("already a voter"), "{again}");

    let out = admin_ok(&c, &["--cluster", &dir, "--token", TOKEN, "remove", "4"])?;
    ensure!(out.contains("master 4 removed; voters: 1, 2, 3"), "{out}");
    let v = status(&c)?;
    ensure!(v.members.len() == 3 && voters(&v) == [1, 2, 3], "members {:?}", v.members);
    c.kill_master(4, Signal::SIGTERM)?;
    let err = admin_fails(&c, &["--cluster", &dir, "--token", TOKEN, "remove", "4"])?;
    ensure!(err.contains("master 4 is not a member"), "{err}");
    ensure!(status(&c)?.leader == Some(leader), "leadership moved");

    // Removing the leader: the other two elect one of them.
    let out = admin_ok(&c, &["--cluster", &dir, "--token", TOKEN, "remove", &leader.to_string()])?;
    let v = status(&c)?;
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let new = v.leader.context("no leader after removing the leader")?;
    ensure!(voters(&v) == rest && rest.contains(&new), "{:?}, leader {new}", v.members);
    ensure!(out.contains(&format!("master {new} leads now")), "{out}");
    // The removed master may still think it leads: asked alone, status finds the real leader.
    let old = c.file.masters.iter().find(|m| m.id == leader).context("old leader")?.admin_addr.clone();
    ensure!(status_at(&old, &c)?.leader == Some(new), "status through the removed leader");
    c.kill_master(leader, Signal::SIGTERM)?;
    // The group of two still takes changes.
    let other = rest.iter().find(|&&i| i != new).context("the other voter")?.to_string();
    let out = admin_ok(&c, &["--cluster", &dir, "--token", TOKEN, "transfer-leader", &other])?;
    ensure!(out.contains(&format!("master {other} leads now")), "{out}");
    admin_ok(&c, &["--cluster", &dir, "--token", TOKEN, "snapshot"])?;
    Ok(())
}
