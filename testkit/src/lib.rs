//! Helpers shared by the integration tests and benchmarks of every crate: real processes,
//! free loopback addresses, polling with deadlines, a file workload. Nothing here fakes a
//! component.
#![deny(unsafe_code)]

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use tempfile::TempDir;

/// A loopback address with a port that was free a moment ago, outside the range the
/// kernel hands to outgoing connections (see [`alces_ops::launcher::free_addr`]).
pub fn free_addr() -> SocketAddr {
    alces_ops::launcher::free_addr().expect("binding a free loopback port")
}

/// A temporary folder, removed when dropped (kept if `ALCES_KEEP_TEST_DIRS` is set).
pub fn temp_dir(prefix: &str) -> TempDir {
    let keep = std::env::var_os("ALCES_KEEP_TEST_DIRS").is_some();
    let dir = tempfile::Builder::new().prefix(prefix).disable_cleanup(keep).tempdir().expect("creating a temp dir");
    if keep {
        eprintln!("test dir kept: {}", dir.path().display());
    }
    dir
}

/// A child process that is killed when dropped; its stdout and stderr go to a log file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    cmd_line: (PathBuf, Vec<String>),
}

impl Proc {
    /// Starts `program args...`, appending its output to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Proc> {
        let mut p = Proc {
            name: name.into(),
            child: None,
            log: log.to_path_buf(),
            cmd_line: (program.to_path_buf(), args.to_vec()),
        };
        p.start()?;
        Ok(p)
    }

    /// Starts the process again with the same command line (after a kill or stop).
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("{} is already running", self.name);
        }
        let out = File::options().create(true).append(true).open(&self.log).context("opening the log file")?;
        let child = Command::new(&self.cmd_line.0)
            .args(&self.cmd_line.1)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", self.cmd_line.0.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// Polls `f` every 50 ms until it returns `Some`, failing after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The folder of the crate whose tests are running, as cargo gives it when it runs them.
/// Unlike `env!("CARGO_MANIFEST_DIR")` this follows the sources when a build directory that
/// compiled them elsewhere is reused.
pub fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).expect("CARGO_MANIFEST_DIR is set by cargo test")
}

/// Deterministic pseudo-random bytes (xorshift), for garbage frames and file contents.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// Writers that keep creating, writing, fsyncing, reading back and renaming files (one
/// thread per folder) until stopped; every step must succeed. Used to show that a mount keeps
/// working, with no error reaching the application, while the cluster changes under it.
pub struct FileWorkload {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    writers: Vec<(PathBuf, u64, Option<Writer>)>,
}

/// A writer's thread (taken when it is joined early); it returns how many files it completed.
type Writer = JoinHandle<Result<u64>>;

/// The content of file `i` of writer `seed`: 1.5 to 2.1 MB, different for every file.
fn workload_file(seed: u64, i: u64) -> Vec<u8> {
    pseudo_random_bytes(seed * 1_000_000 + i, 1_500_000 + (i as usize % 7) * 100_000)
}

impl FileWorkload {
    /// One writer in each of `dirs` (created here).
    pub fn start(dirs: &[PathBuf]) -> Result<FileWorkload> {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for (seed, dir) in dirs.iter().enumerate() {
            std::fs::create_dir(dir).with_context(|| format!("mkdir {}", dir.display()))?;
            let (d, stop, done, seed) = (dir.clone(), stop.clone(), done.clone(), seed as u64);
            let t = std::thread::spawn(move || -> Result<u64> {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let data = workload_file(seed, i);
                    let p = d.join(format!("f{i}"));
                    let mut f = File::create(&p).with_context(|| format!("create {}", p.display()))?;
                    f.write_all(&data).with_context(|| format!("write {}", p.display()))?;
                    f.sync_all().with_context(|| format!("fsync {}", p.display()))?;
                    drop(f);
                    let back = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
                    ensure!(back == data, "{} reads back differently", p.display());
                    std::fs::rename(&p, d.join(format!("done{i}")))
                        .with_context(|| format!("rename {}", p.display()))?;
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(i)
            });
            writers.push((dir.clone(), seed, Some(t)));
        }
        Ok(FileWorkload { stop, done, writers })
    }

    /// Files completed so far by all writers.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `n` more files are complete; fails with a writer's error as soon as one
    /// stops.
    pub fn progress(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let target = self.done() + n;
        let deadline = Instant::now() + timeout;
        while self.done() < target {
            for (dir, _, t) in &mut self.writers {
                if t.as_ref().is_some_and(|t| t.is_finished()) {
                    let result = t.take().expect("checked").join();
                    let result = result.map_err(|_| anyhow!("the writer in {} panicked", dir.display()))?;
                    result.with_context(|| format!("the writer in {}", dir.display()))?;
                    bail!("the writer in {} stopped", dir.display());
                }
            }
            if Instant::now() > deadline {
                bail!("the workload completed {} of {n} more files in {timeout:?}", n + self.done() - target);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the writers, returns the first error one met, else reads every completed file
    /// back and returns how many there are.
    pub fn stop_and_verify(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for (dir, seed, t) in self.writers {
            let t = t.ok_or_else(|| anyhow!("the writer in {} was stopped by an error", dir.display()))?;
            let n = t.join().map_err(|_| anyhow!("the writer in {} panicked", dir.display()))?;
            let n = n.with_context(|| format!("the writer in {}", dir.display()))?;
            for i in 0..n {
                let p = dir.join(format!("done{i}"));
                let data = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
                ensure!(data == workload_file(seed, i), "{} differs from what was written", p.display());
            }
            total += n;
        }
        Ok(total)
    }
}
