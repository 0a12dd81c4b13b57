//! The cluster under test: masters and chunkservers as real processes, each started with
//! `ip netns exec` in its own namespace, and FUSE mounts on the host's side of the bridge.
//!
//! A [`Cluster`] owns everything it made: dropping it (on success, error or interrupt) kills
//! the processes, unmounts the mounts and deletes the namespaces and the bridge. What it has
//! started is also written to [`STATE_FILE`] so that `alces-jepsen clean` can finish the job
//! after a crash of the suite itself.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alces_ops::admin_client::AdminClient;
use alces_ops::api::{AddMember, ClusterView};
use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::net::{self, NetNode};

/// Where a running suite lists its processes and mounts for `alces-jepsen clean`.
pub const STATE_FILE: &str = "/run/alces-jepsen/state.json";
pub const ADMIN_PORT: u16 = 9425;
pub const CLIENT_PORT: u16 = 9421;
pub const CS_PORT: u16 = 9420;
pub const RAFT_PORT: u16 = 9419;

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub masters: usize,
    pub chunkservers: usize,
    pub mounts: usize,
    pub goal: u8,
    /// Extra `KEY = VALUE` lines for every master.cfg (test-only switches, tuning).
    pub master_extra: Vec<String>,
}

/// A daemon: its namespace, files and process.
#[derive(Debug)]
pub struct Daemon {
    pub id: u64,
    pub net: NetNode,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Data folders (chunkservers) or the RocksDB folder (masters).
    pub data: Vec<PathBuf>,
    child: Option<Child>,
}

impl Daemon {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGKILL (after SIGCONT, so a paused process dies too) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = Pid::from_raw(c.id() as i32);
            let _ = kill(pid, Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A FUSE mount on the host.
#[derive(Debug)]
pub struct Mount {
    pub path: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// Written to [`STATE_FILE`].
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub pids: Vec<u32>,
    pub mounts: Vec<PathBuf>,
}

pub struct Cluster {
    pub spec: Spec,
    pub masters: Vec<Daemon>,
    pub chunkservers: Vec<Daemon>,
    pub mounts: Vec<Mount>,
    pub token: String,
    secret_file: PathBuf,
    exports_file: PathBuf,
}

fn master_addr(id: u64) -> String {
    format!("10.77.0.{}", 10 + id)
}

fn chunkserver_addr(id: u64) -> String {
    format!("10.77.0.{}", 50 + id)
}

/// A value no other run shares (the cluster secret and admin token).
fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Starts `program args...` inside namespace `ns` (the host's when None) in a process group
/// of its own, so a Ctrl-C at the terminal reaches the suite and not the daemons directly.
fn spawn(ns: Option<&str>, program: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out =
        File::options().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = match ns {
        // `nsenter --net` execs the program after entering the network namespace: the child's
        // pid is the daemon's, so signals reach it directly. (`ip netns exec` also builds a
        // mount namespace, which can stall for minutes while FUSE mounts are blocked.)
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
    cmd.spawn().with_context(|| format!("starting {}", program.display()))
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        crate::signals::check()?;
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Cluster {
    /// Builds the network, writes every config, starts the masters, waits for a leader,
    /// starts the chunkservers, waits until they are registered, and mounts the clients.
    /// On error everything made so far is removed (the partly built value is dropped).
    pub fn up(spec: Spec) -> Result<Cluster> {
        if !net::our_namespaces().is_empty()
            || !net::our_links().is_empty()
            || Path::new(&format!("/sys/class/net/{}", net::BRIDGE)).exists()
        {
            bail!("a run is in progress or left things behind: run `alces-jepsen clean` first");
        }
        fs::create_dir_all(&spec.dir)?;
        let dir = spec.dir.canonicalize()?;
        let secret_file = dir.join("secret");
        fs::write(&secret_file, random_hex() + "\n")?;
        let exports_file = dir.join("exports.cfg");
        fs::write(&exports_file, "*\t/\trw,alldirs,maproot=0\n*\t.\trw\n")?;
        let mut c = Cluster {
            spec: Spec { dir, ..spec },
            masters: Vec::new(),
            chunkservers: Vec::new(),
            mounts: Vec::new(),
            token: random_hex(),
            secret_file,
            exports_file,
        };
        net::create_bridge()?;
        for id in 1..=c.spec.masters as u64 {
            let d = c.configure_master(id, true)?;
            c.masters.push(d);
            net::create_node(&c.masters[c.masters.len() - 1].net)?;
        }
        for id in 1..=c.spec.chunkservers as u64 {
            let d = c.configure_chunkserver(id)?;
            c.chunkservers.push(d);
            net::create_node(&c.chunkservers[c.chunkservers.len() - 1].net)?;
        }
        for id in 1..=c.spec.masters as u64 {
            c.start_master(id)?;
        }
        c.wait_leader(Duration::from_secs(60))?;
        for id in 1..=c.spec.chunkservers as u64 {
            c.start_chunkserver(id)?;
        }
        c.wait_healthy(Duration::from_secs(60))?;
        for i in 0..c.spec.mounts {
            c.mount(i)?;
        }
        Ok(c)
    }

    /// Writes `master.cfg` for master `id`; `initial` masters get PEERS (a master re-added by
    /// a membership change starts empty and waits to be added).
    fn configure_master(&self, id: u64, initial: bool) -> Result<Daemon> {
        let dir = self.spec.dir.join(format!("master{id}"));
        fs::create_dir_all(&dir)?;
        let addr = master_addr(id);
        let peers = (1..=self.spec.masters as u64).map(|i| format!("{i}@{}", master_addr(i))).collect::<Vec<_>>();
        let mut text = format!(
            "ID = {id}\nDATA_PATH = {}\nADVERTISE_HOST = {addr}\nADMIN_LISTEN_HOST = {addr}\n\
             ADMIN_TOKEN = {}\nCLUSTER_SECRET_FILE = {}\nEXPORTS_FILENAME = {}\nDEFAULT_GOAL = {}\n\
             DEFAULT_TRASHTIME = 0\nCHUNKSERVER_TIMEOUT = 10\nREPLICATIONS_DELAY_INIT = 10\n",
            dir.join("data").display(),
            self.token,
            self.secret_file.display(),
            self.exports_file.display(),
            self.spec.goal,
        );
        if initial {
            text.push_str(&format!("PEERS = {}\n", peers.join(",")));
        }
        for line in &self.spec.master_extra {
            text.push_str(line);
            text.push('\n');
        }
        let config = dir.join("master.cfg");
        fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        Ok(Daemon {
            id,
            net: NetNode { ns: format!("{}n{id}", net::NS_PREFIX), addr },
            data: vec![dir.join("data")],
            log: dir.join("master.log"),
            config,
            dir,
            child: None,
        })
    }

    fn configure_chunkserver(&self, id: u64) -> Result<Daemon> {
        let dir = self.spec.dir.join(format!("cs{id}"));
        let folders = vec![dir.join("hdd1"), dir.join("hdd2")];
        for f in &folders {
            fs::create_dir_all(f)?;
        }
        let hdd = dir.join("hdd.cfg");
        fs::write(&hdd, folders.iter().map(|f| format!("{}\n", f.display())).collect::<String>())?;
        let addr = chunkserver_addr(id);
        let masters =
            (1..=self.spec.masters as u64).map(|i| format!("{}:{CS_PORT}", master_addr(i))).collect::<Vec<_>>();
        let text = format!(
            "ID = {id}\nDATA_PATH = {}\nHDD_CONF_FILENAME = {}\nMASTERS = {}\nCSSERV_LISTEN_HOST = {addr}\n\
             ADVERTISE_HOST = {addr}\nCLUSTER_SECRET_FILE = {}\n",
            dir.display(),
            hdd.display(),
            masters.join(","),
            self.secret_file.display(),
        );
        let config = dir.join("chunkserver.cfg");
        fs::write(&config, text)?;
        Ok(Daemon {
            id,
            net: NetNode { ns: format!("{}c{id}", net::NS_PREFIX), addr },
            data: folders,
            log: dir.join("chunkserver.log"),
            config,
            dir,
            child: None,
        })
    }

    pub fn master_mut(&mut self, id: u64) -> Result<&mut Daemon> {
        self.masters.iter_mut().find(|m| m.id == id).ok_or_else(|| anyhow!("no master {id}"))
    }

    pub fn chunkserver_mut(&mut self, id: u64) -> Result<&mut Daemon> {
        self.chunkservers.iter_mut().find(|m| m.id == id).ok_or_else(|| anyhow!("no chunkserver {id}"))
    }

    fn start(&mut self, master: bool, id: u64) -> Result<()> {
        let bin = self.spec.bin_dir.join(if master { "alces-master" } else { "alces-chunkserver" });
        let d = if master { self.master_mut(id)? } else { self.chunkserver_mut(id)? };
        if d.running() {
            return Ok(());
        }
        let child = spawn(Some(&d.net.ns), &bin, &["-c".into(), d.config.display().to_string()], &d.log)?;
        d.child = Some(child);
        self.save_state();
        Ok(())
    }

    pub fn start_master(&mut self, id: u64) -> Result<()> {
        self.start(true, id)
    }

    pub fn start_chunkserver(&mut self, id: u64) -> Result<()> {
        self.start(false, id)
    }

    /// Every master's admin address.
    pub fn admin_addrs(&self) -> Vec<String> {
        self.masters.iter().map(|m| format!("{}:{ADMIN_PORT}", m.net.addr)).collect()
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.masters.iter().map(|m| format!("{}:{CLIENT_PORT}", m.net.addr)).collect()
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::new(self.admin_addrs(), Some(self.token.clone())).with_read_timeout(Duration::from_secs(2))
    }

    /// The leader's view, if a leader can be found now.
    pub fn leader_view(&self) -> Option<ClusterView> {
        self.admin().leader().ok().map(|(_, v)| v)
    }

    pub fn leader(&self) -> Option<u64> {
        self.leader_view().map(|v| v.id)
    }

    pub fn wait_leader(&self, timeout: Duration) -> Result<u64> {
        wait_until("a leader with a file system", timeout, || self.leader_view().filter(|v| v.inodes > 0).map(|v| v.id))
    }

    /// A leader that sees every chunkserver alive.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<u64> {
        let n = self.chunkservers.len();
        wait_until(&format!("a leader seeing {n} chunkservers"), timeout, || {
            let v = self.leader_view().filter(|v| v.inodes > 0)?;
            (v.chunkservers.iter().filter(|s| s.alive).count() >= n).then_some(v.id)
        })
    }

    /// Mounts client `i` at `DIR/mnt/cI`.
    fn mount(&mut self, i: usize) -> Result<()> {
        let path = self.spec.dir.join("mnt").join(format!("c{i}"));
        fs::create_dir_all(&path)?;
        let log = self.spec.dir.join(format!("mount-{i}.log"));
        let args = vec![path.display().to_string(), "-f".into(), "-H".into(), self.client_addrs().join(",")];
        let child = spawn(None, &self.spec.bin_dir.join("alces-mount"), &args, &log)?;
        self.mounts.push(Mount { path: path.clone(), log: log.clone(), child: Some(child) });
        self.save_state();
        wait_until(&format!("the mount at {}", path.display()), Duration::from_secs(30), || {
            alces_ops::launcher::is_mounted(&path).then_some(())
        })
        .with_context(|| format!("see {}", log.display()))
    }

    /// Removes a master from the Raft group (admin API), then starts it again empty and
    /// without PEERS, so that it waits to be added back.
    pub fn remove_and_wipe_master(&mut self, id: u64) -> Result<()> {
        self.admin().remove_member(id, Duration::from_secs(20)).with_context(|| format!("removing master {id}"))?;
        self.master_mut(id)?.kill9();
        let data = self.master_mut(id)?.data[0].clone();
        let _ = fs::remove_dir_all(&data);
        let fresh = self.configure_master(id, false)?;
        let m = self.master_mut(id)?;
        m.config = fresh.config;
        self.start_master(id)
    }

    /// Adds master `id` back as a voter (it catches up as a learner first).
    pub fn add_master(&mut self, id: u64) -> Result<()> {
        let addr = master_addr(id);
        let req = AddMember {
            id,
            raft_addr: format!("{addr}:{RAFT_PORT}"),
            client_addr: format!("{addr}:{CLIENT_PORT}"),
            cs_addr: format!("{addr}:{CS_PORT}"),
            admin_addr: format!("{addr}:{ADMIN_PORT}"),
            voter: true,
        };
        self.admin().add_member(&req, Duration::from_secs(60)).with_context(|| format!("adding master {id}"))?;
        Ok(())
    }

    /// Members of the Raft group, as the leader sees them.
    pub fn members(&self) -> BTreeMap<u64, String> {
        self.leader_view().map(|v| v.members.into_iter().map(|m| (m.id, m.role)).collect()).unwrap_or_default()
    }

    fn save_state(&self) {
        let state = State {
            pids: self
                .masters
                .iter()
                .chain(&self.chunkservers)
                .filter_map(Daemon::pid)
                .chain(self.mounts.iter().filter_map(|m| m.child.as_ref().map(Child::id)))
                .collect(),
            mounts: self.mounts.iter().map(|m| m.path.clone()).collect(),
        };
        let path = Path::new(STATE_FILE);
        let write = || -> Result<()> {
            fs::create_dir_all(path.parent().expect("has a parent"))?;
            fs::write(path, serde_json::to_string(&state)?)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!("cannot record the run's processes in {STATE_FILE}: {e:#}");
        }
    }

    /// Unmounts and stops the mounts, kills every daemon, deletes the namespaces and bridge.
    pub fn teardown(&mut self) {
        for m in &mut self.mounts {
            alces_ops::launcher::unmount(&m.path);
            if let Some(mut c) = m.child.take() {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            alces_ops::launcher::unmount(&m.path);
        }
        for d in self.masters.iter_mut().chain(self.chunkservers.iter_mut()) {
            d.kill9();
        }
        for d in self.masters.iter().chain(&self.chunkservers) {
            net::delete_node(&d.net.ns);
        }
        net::delete_bridge();
        let _ = fs::remove_file(STATE_FILE);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}
