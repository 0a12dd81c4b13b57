//! A whole cluster on this machine: masters, chunkservers and mounts as real processes on
//! loopback, their configuration files, logs and data folders under one directory, and
//! `cluster.json` describing every process. Used by `alces-cluster` and by the tests.
//!
//! Processes run in their own process groups so they outlive `alces-cluster up`; a
//! [`Cluster`] held by a test kills what it started when dropped (unless detached).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::admin_client::AdminClient;
use crate::api::ClusterView;

/// What to start.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub masters: usize,
    pub chunkservers: usize,
    /// Mount a client here once the cluster is up.
    pub mount: Option<PathBuf>,
    /// Folder holding `alces-master`, `alces-chunkserver`, `alces-mount`.
    pub bin_dir: PathBuf,
    /// Goal of the root directory.
    pub goal: u8,
    /// Extra `KEY = VALUE` lines for every master.cfg and chunkserver.cfg.
    pub master_extra: Vec<String>,
    pub chunkserver_extra: Vec<String>,
    /// Exports file content (default: everything read-write, root stays root).
    pub exports: String,
    /// A size limit written after every data folder in hdd.cfg (`16MiB`, `-10GiB`).
    pub hdd_size: Option<String>,
    /// Every master's ADMIN_TOKEN (default: a random one), kept in `DIR/admin-token`.
    pub admin_token: String,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>, masters: usize, chunkservers: usize) -> Result<Layout> {
        Ok(Layout {
            dir: dir.into(),
            masters,
            chunkservers,
            mount: None,
            bin_dir: bin_dir()?,
            goal: 2,
            master_extra: Vec::new(),
            chunkserver_extra: Vec::new(),
            admin_token: format!("{:032x}", rand::random::<u128>()),
            exports: "*\t/\trw,alldirs,maproot=0\n*\t.\trw\n".into(),
            hdd_size: None,
        })
    }
}

/// The folder of the running executable (or its parent: tests run from `deps/`), where the
/// workspace's binaries are.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| anyhow!("no folder for {}", exe.display()))?;
    for d in [dir, dir.parent().unwrap_or(dir)] {
        if d.join("alces-master").exists() {
            return Ok(d.to_path_buf());
        }
    }
    bail!("alces-master not found next to {} (build the workspace: cargo build --release)", exe.display())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterEntry {
    pub id: u64,
    pub pid: u32,
    pub raft_addr: String,
    pub client_addr: String,
    pub cs_addr: String,
    pub admin_addr: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkserverEntry {
    pub id: u64,
    pub pid: u32,
    pub addr: String,
    pub folders: Vec<PathBuf>,
    pub config: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    pub path: PathBuf,
    pub pid: u32,
    pub meta: bool,
    pub log: PathBuf,
    pub args: Vec<String>,
}

/// `DIR/cluster.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    pub masters: Vec<MasterEntry>,
    pub chunkservers: Vec<ChunkserverEntry>,
    pub mounts: Vec<MountEntry>,
    pub secret_file: PathBuf,
    pub exports_file: PathBuf,
    /// Holds the masters' ADMIN_TOKEN (`alces admin --cluster DIR` uses it).
    #[serde(default)]
    pub admin_token_file: PathBuf,
    /// Goal of the root directory, and extra `master.cfg` lines: masters added later get the same.
    #[serde(default = "default_goal")]
    pub goal: u8,
    #[serde(default)]
    pub master_extra: Vec<String>,
}

fn default_goal() -> u8 {
    2
}

impl ClusterFile {
    /// `DIR/cluster.json`.
    pub fn read(dir: &Path) -> Result<ClusterFile> {
        let path = dir.join("cluster.json");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The masters' ADMIN_TOKEN; `None` for a cluster started before the launcher made one.
    pub fn admin_token(&self) -> Result<Option<String>> {
        if self.admin_token_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let path = &self.admin_token_file;
        let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(text.trim().to_string()))
    }
}

/// The listening addresses of one master.
struct MasterAddrs {
    raft: SocketAddr,
    client: SocketAddr,
    cs: SocketAddr,
    admin: SocketAddr,
}

impl MasterAddrs {
    fn free() -> Result<MasterAddrs> {
        Ok(MasterAddrs { raft: free_addr()?, client: free_addr()?, cs: free_addr()?, admin: free_addr()? })
    }
}

/// A running local cluster.
pub struct Cluster {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub file: ClusterFile,
    children: BTreeMap<String, Child>,
    /// Kill everything started when dropped.
    owned: bool,
}

/// Ports [`free_addr`] handed out in this process. A port is free until the daemon it was
/// chosen for binds it, seconds later: two clusters started at once (tests run on parallel
/// threads) could otherwise be given the same one, and the daemon that binds it second
/// exits.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback address whose port is free now, not handed out before by this process, and
/// outside the kernel's range of ephemeral ports: a port taken from that range (`bind(":0")`)
/// and released can be handed to some outgoing connection before the process meant to
/// listen on it binds it.
pub fn free_addr() -> Result<SocketAddr> {
    let (low, high) = ephemeral_ports();
    // Below the ephemeral range if there is room, else above it.
    let (from, to) = if low > 12_000 { (10_000, low) } else { (high.saturating_add(1).max(10_000), 65_535) };
    let mut rng = rand::thread_rng();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        let port = rng.gen_range(from..to);
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            handed_out.insert(port);
            return Ok(l.local_addr()?);
        }
    }
    let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    handed_out.insert(addr.port());
    Ok(addr)
}

/// `/proc/sys/net/ipv4/ip_local_port_range` (Linux's default if unreadable).
fn ephemeral_ports() -> (u16, u16) {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|w| w.parse::<u16>().ok());
    match (it.next(), it.next()) {
        (Some(l), Some(h)) if l <= h => (l, h),
        _ => (32_768, 60_999),
    }
}

/// The last `n` lines of a log file, indented.
fn log_tail(log: &Path, n: usize) -> String {
    let body = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = body.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}\n")).collect()
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out =
        File::options().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Writes a `KEY = VALUE` file: `text` followed by the `extra` lines.
/// Writes a file only its owner can read (the cluster secret, the admin token).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn write_config(path: &Path, mut text: String, extra: &[String]) -> Result<()> {
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Whether a process runs: it exists and is not a zombie (a child that exited and was not
/// reaped yet still answers signal 0).
fn alive(pid: u32) -> bool {
    if pid == 0 || kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    // The state follows the parenthesised command name in /proc/PID/stat.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: Signal) {
    if pid != 0 {
        let _ = kill(Pid::from_raw(pid as i32), sig);
    }
}

/// `GET http://addr/api/v1/cluster`.
pub fn fetch_cluster(admin_addr: &str) -> Result<ClusterView> {
    Ok(AdminClient::new(vec![], None).with_read_timeout(Duration::from_secs(2)).cluster_at(admin_addr)?)
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// Writes the configuration of every process, starts them in order, and waits until the
    /// cluster is healthy: a leader with a file system, every chunkserver registered, the
    /// mount (if asked) mounted.
    pub fn up(layout: &Layout) -> Result<Cluster> {
        fs::create_dir_all(&layout.dir)?;
        let dir = layout.dir.canonicalize()?;
        if dir.join("cluster.json").exists() {
            bail!(
                "{} already holds a cluster (cluster.json exists); run `alces-cluster down --dir {}` first",
                dir.display(),
                dir.display()
            );
        }
        let secret_file = dir.join("secret");
        write_private(&secret_file, &format!("{:032x}\n", rand::random::<u128>()))?;
        let admin_token_file = dir.join("admin-token");
        write_private(&admin_token_file, &format!("{}\n", layout.admin_token))?;
        let exports_file = dir.join("exports.cfg");
        fs::write(&exports_file, &layout.exports)?;
        let mut c = Cluster {
            dir: dir.clone(),
            bin_dir: layout.bin_dir.clone(),
            file: ClusterFile {
                secret_file: secret_file.clone(),
                exports_file: exports_file.clone(),
                admin_token_file,
                goal: layout.goal,
                master_extra: layout.master_extra.clone(),
                ..Default::default()
            },
            children: BTreeMap::new(),
            owned: true,
        };
        // Every master's addresses are known before any starts: they form PEERS.
        let mut masters = Vec::new();
        for id in 1..=layout.masters as u64 {
            masters.push((id, MasterAddrs::free()?));
        }
        let peers = masters
            .iter()
            .map(|(id, a)| {
                format!("{id}@127.0.0.1:{}:{}:{}:{}", a.raft.port(), a.client.port(), a.cs.port(), a.admin.port())
            })
            .collect::<Vec<_>>()
            .join(",");
        for (id, addrs) in masters {
            c.configure_master(id, &addrs, Some(&peers))?;
        }
        for i in 0..c.file.masters.len() {
            c.start_master(c.file.masters[i].id)?;
        }
        c.wait_leader(Duration::from_secs(60)).map_err(|e| c.explain(e))?;
        // A leader needs a majority only: a master that could not start must not go unseen.
        if let Some(m) = c.file.masters.iter().find(|m| !alive(m.pid)) {
            return Err(c.explain(anyhow!("master {} exited while the cluster started", m.id)));
        }
        let master_cs = c.file.masters.iter().map(|m| m.cs_addr.clone()).collect::<Vec<_>>().join(",");
        for id in 1..=layout.chunkservers as u64 {
            let cdir = dir.join(format!("cs{id}"));
            let folders = vec![cdir.join("hdd1"), cdir.join("hdd2")];
            for f in &folders {
                fs::create_dir_all(f)?;
            }
            let hdd = cdir.join("hdd.cfg");
            let size = layout.hdd_size.as_ref().map(|s| format!(" {s}")).unwrap_or_default();
            fs::write(&hdd, folders.iter().map(|f| format!("{}{size}\n", f.display())).collect::<String>())?;
            let addr = free_addr()?;
            let config = cdir.join("chunkserver.cfg");
            let text = format!(
                "ID = {id}\nDATA_PATH = {}\nHDD_CONF_FILENAME = {}\nMASTERS = {master_cs}\nCSSERV_LISTEN_HOST = 127.0.0.1\n\
                 CSSERV_LISTEN_PORT = {}\nCLUSTER_SECRET_FILE = {}\n",
                cdir.display(),
                hdd.display(),
                addr.port(),
                secret_file.display(),
            );
            write_config(&config, text, &layout.chunkserver_extra)?;
            c.file.chunkservers.push(ChunkserverEntry {
                id,
                pid: 0,
                addr: addr.to_string(),
                folders,
                config,
                log: cdir.join("chunkserver.log"),
            });
        }
        for i in 0..c.file.chunkservers.len() {
            c.start_chunkserver(c.file.chunkservers[i].id)?;
        }
        if layout.chunkservers > 0 {
            c.wait_chunkservers(layout.chunkservers, Duration::from_secs(60)).map_err(|e| c.explain(e))?;
        }
        if let Some(mnt) = &layout.mount {
            c.mount(mnt, false, &[])?;
        }
        c.save()?;
        Ok(c)
    }

    /// A cluster started earlier, from its `cluster.json`.
    pub fn load(dir: &Path) -> Result<Cluster> {
        let file = ClusterFile::read(dir)?;
        Ok(Cluster { dir: dir.to_path_buf(), bin_dir: bin_dir()?, file, children: BTreeMap::new(), owned: false })
    }

    pub fn save(&self) -> Result<()> {
        let tmp = self.dir.join("cluster.json.tmp");
        fs::write(&tmp, serde_json::to_string_pretty(&self.file)?)?;
        fs::rename(&tmp, self.dir.join("cluster.json"))?;
        Ok(())
    }

    /// Leaves the processes running when this value is dropped.
    pub fn detach(&mut self) {
        self.owned = false;
    }

    pub fn master(&self, id: u64) -> Result<&MasterEntry> {
        self.file.masters.iter().find(|m| m.id == id).ok_or_else(|| anyhow!("no master {id}"))
    }

    /// Writes `master.cfg` for master `id` and records it (not started). `peers` is the
    /// initial voters' list; a master without it waits until the leader adds it.
    fn configure_master(&mut self, id: u64, a: &MasterAddrs, peers: Option<&str>) -> Result<()> {
        let mdir = self.dir.join(format!("master{id}"));
        fs::create_dir_all(&mdir)?;
        let config = mdir.join("master.cfg");
        let mut text = format!(
            "ID = {id}\nDATA_PATH = {}\nADVERTISE_HOST = 127.0.0.1\nRAFT_LISTEN_HOST = 127.0.0.1\nRAFT_LISTEN_PORT = {}\n\
             MATOCL_LISTEN_HOST = 127.0.0.1\nMATOCL_LISTEN_PORT = {}\nMATOCS_LISTEN_HOST = 127.0.0.1\nMATOCS_LISTEN_PORT = {}\n\
             ADMIN_LISTEN_HOST = 127.0.0.1\nADMIN_LISTEN_PORT = {}\nCLUSTER_SECRET_FILE = {}\n\
             EXPORTS_FILENAME = {}\nDEFAULT_GOAL = {}\n",
            mdir.join("data").display(),
            a.raft.port(),
            a.client.port(),
            a.cs.port(),
            a.admin.port(),
            self.file.secret_file.display(),
            self.file.exports_file.display(),
            self.file.goal,
        );
        if let Some(peers) = peers {
            text.push_str(&format!("PEERS = {peers}\n"));
        }
        if let Some(token) = self.file.admin_token()? {
            text.push_str(&format!("ADMIN_TOKEN = {token}\n"));
        }
        write_config(&config, text, &self.file.master_extra)?;
        self.file.masters.push(MasterEntry {
            id,
            pid: 0,
            raft_addr: a.raft.to_string(),
            client_addr: a.client.to_string(),
            cs_addr: a.cs.to_string(),
            admin_addr: a.admin.to_string(),
            data_dir: mdir.join("data"),
            config,
            log: mdir.join("master.log"),
        });
        Ok(())
    }

    /// Starts a new, empty master (the next free id) that is not in the Raft group: it serves
    /// its admin API and waits until the leader adds it (`alces admin add`). Returns its entry,
    /// whose addresses are what the add needs.
    pub fn add_master(&mut self) -> Result<MasterEntry> {
        let id = self.file.masters.iter().map(|m| m.id).max().unwrap_or(0) + 1;
        self.configure_master(id, &MasterAddrs::free()?, None)?;
        self.start_master(id)?;
        self.save()?;
        let m = self.master(id)?.clone();
        wait_until(&format!("the admin API of the new master {id}"), Duration::from_secs(30), || {
            fetch_cluster(&m.admin_addr).ok()
        })
        .with_context(|| format!("see {}", m.log.display()))?;
        Ok(m)
    }

    pub fn start_master(&mut self, id: u64) -> Result<()> {
        let m = self.master(id)?.clone();
        if alive(m.pid) {
            bail!("master {id} is already running (pid {})", m.pid);
        }
        let child = spawn(&self.bin_dir.join("alces-master"), &["-c".into(), m.config.display().to_string()], &m.log)?;
        let pid = child.id();
        self.children.insert(format!("master{id}"), child);
        self.file.masters.iter_mut().find(|x| x.id == id).expect("exists").pid = pid;
        Ok(())
    }

    pub fn start_chunkserver(&mut self, id: u64) -> Result<()> {
        let cs =
            self.file.chunkservers.iter().find(|c| c.id == id).ok_or_else(|| anyhow!("no chunkserver {id}"))?.clone();
        if alive(cs.pid) {
            bail!("chunkserver {id} is already running (pid {})", cs.pid);
        }
        let child =
            spawn(&self.bin_dir.join("alces-chunkserver"), &["-c".into(), cs.config.display().to_string()], &cs.log)?;
        let pid = child.id();
        self.children.insert(format!("cs{id}"), child);
        self.file.chunkservers.iter_mut().find(|x| x.id == id).expect("exists").pid = pid;
        Ok(())
    }

    /// Sends `sig` to a process and, for SIGKILL/SIGTERM, waits for it to exit.
    fn stop_process(&mut self, key: &str, pid: u32, sig: Signal, wait: Duration) {
        signal(pid, sig);
        if let Some(mut child) = self.children.remove(key) {
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        } else {
            let deadline = Instant::now() + wait;
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                signal(pid, Signal::SIGKILL);
            }
        }
    }

    /// Kills a master with `sig` (SIGKILL: as in a crash).
    pub fn kill_master(&mut self, id: u64, sig: Signal) -> Result<()> {
        let pid = self.master(id)?.pid;
        self.stop_process(&format!("master{id}"), pid, sig, Duration::from_secs(10));
        Ok(())
    }

    pub fn kill_chunkserver(&mut self, id: u64, sig: Signal) -> Result<()> {
        let pid = self.file.chunkservers.iter().find(|c| c.id == id).ok_or_else(|| anyhow!("no chunkserver {id}"))?.pid;
        self.stop_process(&format!("cs{id}"), pid, sig, Duration::from_secs(10));
        Ok(())
    }

    /// Says on stderr which of the processes started here exited without being stopped, how,
    /// and how their logs end (a test that fails because a daemon died shows why).
    fn report_unexpected_exits(&mut self) {
        for (key, name, _, log) in self.daemons() {
            let Some(child) = self.children.get_mut(&key) else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                let (pid, tail) = (child.id(), log_tail(&log, 30));
                eprintln!("{name} (pid {pid}) exited without being stopped: {status}; {} ends:\n{tail}", log.display());
            }
        }
    }

    /// Every process of the cluster file: its key among the children started here, its name
    /// for people, its pid and its log.
    fn daemons(&self) -> Vec<(String, String, u32, PathBuf)> {
        let f = &self.file;
        let masters = f.masters.iter().map(|m| (format!("master{}", m.id), format!("master {}", m.id), m.pid, &m.log));
        let servers =
            f.chunkservers.iter().map(|c| (format!("cs{}", c.id), format!("chunkserver {}", c.id), c.pid, &c.log));
        let mounts = f.mounts.iter().map(|m| {
            let path = m.path.display();
            (format!("mount:{path}"), format!("mount {path}"), m.pid, &m.log)
        });
        masters.chain(servers).chain(mounts).map(|(k, n, pid, log)| (k, n, pid, log.clone())).collect()
    }

    /// `e` with what every master and chunkserver is doing: running or exited, and the end of
    /// its log (a daemon that could not start says why there).
    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        e.context(format!("the cluster did not come up:{}", self.log_tails(6)))
    }

    /// What every process started here is doing, running or exited, and the last `lines`
    /// lines of its log: for the message of a test that failed.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut text = String::new();
        for (_, name, pid, log) in self.daemons() {
            let state = if alive(pid) { "running" } else { "exited" };
            text.push_str(&format!("\n{name} (pid {pid}) {state}; {}:\n", log.display()));
            text.push_str(&log_tail(&log, lines));
        }
        text
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.file.masters.iter().map(|m| m.client_addr.clone()).collect()
    }

    /// The cluster as the first master that answers sees it.
    pub fn view(&self) -> Option<ClusterView> {
        self.file.masters.iter().filter(|m| alive(m.pid)).find_map(|m| fetch_cluster(&m.admin_addr).ok())
    }

    /// The leader, once every running master in the group agrees on it (a master waiting to
    /// be added does not count).
    pub fn leader(&self) -> Option<u64> {
        let mut leader = None;
        for m in self.file.masters.iter().filter(|m| alive(m.pid)) {
            let v = fetch_cluster(&m.admin_addr).ok()?;
            if !v.members.iter().any(|x| x.id == m.id) {
                continue;
            }
            let l = v.leader?;
            if leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        leader
    }

    pub fn wait_leader(&self, timeout: Duration) -> Result<u64> {
        wait_until("a leader all running masters agree on", timeout, || {
            let l = self.leader()?;
            // The leader creates the root directory right after its election.
            let v = fetch_cluster(&self.master(l).ok()?.admin_addr).ok()?;
            (v.inodes > 0).then_some(l)
        })
    }

    pub fn wait_chunkservers(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_until(&format!("{n} chunkservers registered with the leader"), timeout, || {
            let l = self.leader()?;
            let v = fetch_cluster(&self.master(l).ok()?.admin_addr).ok()?;
            (v.chunkservers.iter().filter(|s| s.alive).count() >= n).then_some(())
        })
    }

    /// Mounts a client at `path` (the meta file system with `meta`).
    pub fn mount(&mut self, path: &Path, meta: bool, extra: &[String]) -> Result<()> {
        fs::create_dir_all(path)?;
        let path = path.canonicalize()?;
        let log = self.dir.join(format!("mount-{}.log", self.file.mounts.len() + 1));
        let mut args = vec![path.display().to_string(), "-f".into(), "-H".into(), self.client_addrs().join(",")];
        if meta {
            args.push("-m".into());
        }
        args.extend(extra.iter().cloned());
        let child = spawn(&self.bin_dir.join("alces-mount"), &args, &log)?;
        let pid = child.id();
        let key = format!("mount:{}", path.display());
        self.children.insert(key, child);
        wait_until(&format!("the mount at {}", path.display()), Duration::from_secs(30), || {
            is_mounted(&path).then_some(())
        })
        .with_context(|| format!("see {}", log.display()))?;
        self.file.mounts.push(MountEntry { path, pid, meta, log, args });
        self.save()?;
        Ok(())
    }

    /// Unmounts every mount, then stops chunkservers and masters (SIGTERM, then SIGKILL).
    pub fn down(&mut self) -> Result<()> {
        self.report_unexpected_exits();
        for m in std::mem::take(&mut self.file.mounts) {
            unmount(&m.path);
            self.stop_process(&format!("mount:{}", m.path.display()), m.pid, Signal::SIGTERM, Duration::from_secs(10));
        }
        for cs in self.file.chunkservers.clone() {
            self.stop_process(&format!("cs{}", cs.id), cs.pid, Signal::SIGTERM, Duration::from_secs(10));
        }
        for m in self.file.masters.clone() {
            self.stop_process(&format!("master{}", m.id), m.pid, Signal::SIGTERM, Duration::from_secs(10));
        }
        let _ = fs::remove_file(self.dir.join("cluster.json"));
        Ok(())
    }

    /// (role, id, pid, running) of every process.
    pub fn processes(&self) -> Vec<(String, String, u32, bool)> {
        let mut out = Vec::new();
        for m in &self.file.masters {
            out.push(("master".into(), m.id.to_string(), m.pid, alive(m.pid)));
        }
        for c in &self.file.chunkservers {
            out.push(("chunkserver".into(), c.id.to_string(), c.pid, alive(c.pid)));
        }
        for m in &self.file.mounts {
            out.push((
                if m.meta { "meta mount" } else { "mount" }.into(),
                m.path.display().to_string(),
                m.pid,
                alive(m.pid),
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            let _ = self.down();
        }
    }
}

/// Whether a FUSE file system is mounted at `path` (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.display().to_string();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(4) == Some(&want.as_str()) && l.contains(" - fuse")
    })
}

/// Unmounts a FUSE mount (lazily if busy).
pub fn unmount(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    for args in [vec!["-u"], vec!["-uz"]] {
        let ok = Command::new("fusermount3").args(&args).arg(path).status().map(|s| s.success()).unwrap_or(false);
        if ok && !is_mounted(path) {
            return;
        }
    }
    let _ = Command::new("umount").arg("-l").arg(path).status();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 500 random picks from the ports below the ephemeral range would almost surely repeat
    /// one (about 22000 to choose from); handed out ports are never handed out again.
    #[test]
    fn free_addr_never_hands_out_a_port_twice() {
        let picks: Vec<u16> = (0..500).map(|_| free_addr().expect("a free port").port()).collect();
        let distinct: BTreeSet<u16> = picks.iter().copied().collect();
        assert_eq!(distinct.len(), picks.len(), "a port was handed out twice");
    }
}
