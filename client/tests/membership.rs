//! Membership changes under load: two mounts keep writing and reading back files while a
//! running 3-master group grows to 5, loses one of its first members (the leader) and hands
//! leadership to a master that joined later. No error may reach the applications, every file
//! must read back as written, and the chunkservers must follow the group.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use alces_ops::api::ClusterView;
use alces_ops::launcher::{fetch_cluster, Cluster, Layout};
use alces_testkit::{temp_dir, FileWorkload};
use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;

const TOKEN: &str = "membership-token";

/// `alces admin --cluster DIR --token TOKEN ARGS...`; its stdout.
fn admin(c: &Cluster, args: &[&str]) -> Result<String> {
    let out = Command::new(c.bin_dir.join("alces"))
        .args(["admin", "--cluster", &c.dir.display().to_string(), "--token", TOKEN])
        .args(args)
        .output()
        .context("running alces")?;
    ensure!(
        out.status.success(),
        "alces admin {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn status(c: &Cluster) -> Result<ClusterView> {
    Ok(serde_json::from_str(&admin(c, &["status", "--json"])?)?)
}

fn voters(v: &ClusterView) -> Vec<u64> {
    v.members.iter().filter(|m| m.role != "learner").map(|m| m.id).collect()
}

/// Starts a new master and adds it to the group as a voter through `alces admin add`.
fn grow(c: &mut Cluster) -> Result<u64> {
    let m = c.add_master()?;
    let id = m.id.to_string();
    let out = admin(
        c,
        &["add", &id, "--raft", &m.raft_addr, "--client", &m.client_addr, "--cs", &m.cs_addr, "--admin", &m.admin_addr],
    )?;
    ensure!(out.contains(&format!("master {id} is a voter")), "{out}");
    Ok(m.id)
}

/// Waits until the leader sees every chunkserver alive and `master` (by its own admin API)
/// has every chunkserver registered too.
fn chunkservers_follow(c: &Cluster, master: u64, n: usize) -> Result<()> {
    let addr = c.master(master)?.admin_addr.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = fetch_cluster(&addr).map(|v| v.chunkservers.iter().filter(|s| s.alive).count()).unwrap_or(0);
        if seen >= n {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "master {master} sees {seen} of {n} chunkservers");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn mount_dirs(mnt: &Path, mnt2: &Path) -> Vec<std::path::PathBuf> {
    vec![mnt.join("a0"), mnt.join("a1"), mnt2.join("b0")]
}

#[test]
fn the_group_grows_to_five_loses_its_leader_and_moves_leadership_under_load() -> Result<()> {
    let tmp = temp_dir("alces-membership-");
    let (mnt, mnt2) = (tmp.path().join("mnt"), tmp.path().join("mnt2"));
    let mut layout = Layout::new(tmp.path().join("cluster"), 3, 3)?;
    layout.admin_token = TOKEN.into();
    layout.mount = Some(mnt.clone());
    let mut c = Cluster::up(&layout)?;
    c.mount(&mnt2, false, &[])?;
    let first_leader = c.wait_leader(Duration::from_secs(30))?;

    let mut work = FileWorkload::start(&mount_dirs(&mnt, &mnt2))?;
    work.progress(5, Duration::from_secs(60))?;

    // 3 -> 4 -> 5 voters, the workload going on.
    let m4 = grow(&mut c)?;
    work.progress(5, Duration::from_secs(60)).context("after adding master 4")?;
    let m5 = grow(&mut c)?;
    work.progress(5, Duration::from_secs(60)).context("after adding master 5")?;
    let v = status(&c)?;
    ensure!(voters(&v) == [1, 2, 3, 4, 5], "members {:?}", v.members);
    chunkservers_follow(&c, m4, 3)?;
    chunkservers_follow(&c, m5, 3)?;

    // The leader, one of the first three, leaves the group and stops.
    let out = admin(&c, &["remove", &first_leader.to_string()])?;
    ensure!(out.contains(&format!("master {first_leader} removed")), "{out}");
    c.kill_master(first_leader, Signal::SIGTERM)?;
    work.progress(5, Duration::from_secs(60)).context("after removing the leader")?;
    let v = status(&c)?;
    ensure!(voters(&v).len() == 4 && !voters(&v).contains(&first_leader), "members {:?}", v.members);

    // Leadership to a master that was not in anybody's configuration at the start (the one
    // of the two new masters that does not lead already).
    let leader = status(&c)?.leader.context("no leader")?;
    let to = if leader == m5 { m4 } else { m5 };
    let out = admin(&c, &["transfer-leader", &to.to_string()])?;
    ensure!(out.contains(&format!("master {to} leads now")), "{out}");
    work.progress(5, Duration::from_secs(60)).context("after the leadership transfer")?;
    ensure!(status(&c)?.leader == Some(to), "master {to} does not lead");
    chunkservers_follow(&c, to, 3)?;

    let files = work.stop_and_verify()?;
    eprintln!("{files} files written and verified while the group changed");
    // The sessions live on: both mounts are still registered with the new leader.
    let v = fetch_cluster(&c.master(to)?.admin_addr)?;
    ensure!(v.sessions.len() == 2, "sessions {:?}", v.sessions);
    Ok(())
}
