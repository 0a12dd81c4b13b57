//! `alces-mount`: mounts an Alces file system with FUSE.
//!
//! ```text
//! alces-mount MNT -H host:port[,host:port...] [-S subdir] [-m] [-o opt,...] [-p] [-f]
//! alces-mount host:port[,...] MNT [-o opt,...]         (the form `mount -t fuse.alces` uses)
//! ```
//! Options: `-o password=PASS`, `-o subfolder=DIR` (as -S), `-o meta`, `-o ro`,
//! `-o mfswritecachesize=MiB` (buffered writes of all files, default 256),
//! `-o mfsreadaheadsize=MiB` (read-ahead of all open files, default 256),
//! `-o mfsattrcacheto=SEC`, `-o mfsentrycacheto=SEC`, `-o mfscachemode=AUTO|DIRECT|NO|YES`,
//! `-o retrytime=SEC` (how long an operation keeps being retried through failovers and
//! outages before it fails with EIO, default 60), and the standard mount options (`rw`, `nodev`, `nosuid`, `defaults`, `_netdev` ...) which are
//! accepted. Without `-f` the mount runs in the background once it is mounted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use alces_client::fs::{AlcesFs, Options as FsOptions};
use alces_client::master_link::{MasterClient, Options};
use alces_client::meta_fs::MetaFs;
use anyhow::{bail, Context, Result};
use clap::Parser;
use fuser::{Config, FopenFlags, MountOption, SessionACL};

#[derive(Parser, Debug, Clone)]
#[command(about = "Mount an Alces file system", version)]
struct Args {
    /// Mount point (or, in the `mount -t fuse.alces SOURCE MNT` form, the masters).
    first: String,
    /// Mount point when the masters are given first.
    second: Option<String>,
    /// Masters: host:port of every master's client port, comma separated.
    #[arg(short = 'H', long = "masters", env = "ALCES_MASTERS")]
    masters: Option<String>,
    /// Mount this subdirectory of the export.
    #[arg(short = 'S', long = "subfolder", default_value = "/")]
    subfolder: String,
    /// Mount the meta file system (trash, reserved).
    #[arg(short = 'm', long = "meta")]
    meta: bool,
    /// Ask for the export password on the terminal.
    #[arg(short = 'p')]
    prompt: bool,
    /// Mount options, comma separated.
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Ignore mount options this mount does not know (what mount(8)'s `-s` asks of a helper).
    #[arg(short = 's')]
    sloppy: bool,
    /// From mount(8), when it runs this as `mount.fuse.alces`: the type (`-t fuse.alces`),
    /// no /etc/mtab (`-n`), verbose (`-v`). Accepted and ignored.
    #[arg(short = 't', hide = true)]
    _fs_type: Option<String>,
    #[arg(short = 'n', hide = true)]
    _no_mtab: bool,
    #[arg(short = 'v', hide = true)]
    _verbose: bool,
}

/// Generic mount options, from an fstab line or mount(8), that mean nothing to this mount:
/// access times are the master's, the rest are for mount(8) and systemd.
const IGNORED_OPTIONS: &[&str] = &[
    "rw",
    "defaults",
    "nodev",
    "nosuid",
    "dev",
    "suid",
    "exec",
    "noexec",
    "auto",
    "noauto",
    "_netdev",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nofail",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "async",
    "silent",
    "loud",
];

struct Parsed {
    masters: Vec<String>,
    mountpoint: PathBuf,
    subfolder: String,
    meta: bool,
    password: Option<String>,
    read_only: bool,
    fs: FsOptions,
    retry_for: Duration,
}

/// A size in MiB given as a mount option.
fn mib(opt: &str, v: &str) -> Result<usize> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 && n <= 1 << 20 => Ok(n << 20),
        _ => bail!("mount option {opt}: {v:?} is not a size in MiB (1 to 1048576)"),
    }
}

/// A cache timeout in seconds (`0.5`, `0` for none) given as a mount option.
fn seconds(opt: &str, v: &str) -> Result<Duration> {
    match v.parse::<f64>() {
        Ok(s) if (0.0..=3600.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => bail!("mount option {opt}: {v:?} is not a number of seconds (0 to 3600)"),
    }
}

/// `mfscachemode`, as MooseFS names its modes: AUTO (the page cache is dropped when a file is
/// opened), DIRECT or NO (no page cache: direct I/O), YES (the page cache is kept).
fn cache_mode(v: &str) -> Result<FopenFlags> {
    match v.to_ascii_uppercase().as_str() {
        "AUTO" => Ok(FopenFlags::empty()),
        "DIRECT" | "NO" | "NONE" | "NEVER" => Ok(FopenFlags::FOPEN_DIRECT_IO),
        "YES" | "ALWAYS" => Ok(FopenFlags::FOPEN_KEEP_CACHE),
        _ => bail!("mount option mfscachemode: {v:?} is not one of AUTO, DIRECT, NO, YES"),
    }
}

fn parse(a: &Args) -> Result<Parsed> {
    let (masters, mnt) = match (&a.second, &a.masters) {
        (Some(mnt), _) => (a.first.clone(), mnt.clone()),
        (None, Some(m)) => (m.clone(), a.first.clone()),
        (None, None) => bail!("no masters given: use -H host:port[,host:port...]"),
    };
    let mut p = Parsed {
        masters: masters.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        mountpoint: PathBuf::from(mnt),
        subfolder: a.subfolder.clone(),
        meta: a.meta,
        password: std::env::var("ALCES_PASSWORD").ok(),
        read_only: false,
        fs: FsOptions::default(),
        retry_for: Duration::from_secs(60),
    };
    let mut ttl_given = false;
    for opt in a.options.iter().flat_map(|o| o.split(',')).map(str::trim).filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("password", v)) => p.password = Some(v.to_string()),
            Some(("subfolder" | "mfssubfolder", v)) => p.subfolder = v.to_string(),
            Some(("mfswritecachesize", v)) => p.fs.write_budget = mib("mfswritecachesize", v)?,
            Some(("mfsreadaheadsize", v)) => p.fs.read_budget = mib("mfsreadaheadsize", v)?,
            Some((key @ ("mfsattrcacheto" | "mfsentrycacheto"), v)) => {
                // One TTL covers entries and attributes: the shorter one given applies.
                let ttl = seconds(key, v)?;
                p.fs.attr_ttl = if ttl_given { p.fs.attr_ttl.min(ttl) } else { ttl };
                ttl_given = true;
            }
            Some(("mfscachemode", v)) => p.fs.open_flags = cache_mode(v)?,
            Some(("retrytime", v)) => {
                p.retry_for = seconds("retrytime", v)?;
                if p.retry_for < Duration::from_secs(1) {
                    bail!("mount option retrytime: {v:?} is below 1 second");
                }
            }
            None if opt == "meta" || opt == "mfsmeta" => p.meta = true,
            None if opt == "ro" => p.read_only = true,
            None if IGNORED_OPTIONS.contains(&opt) => {}
            // x-systemd.automount, x-mount.mkdir and the like, and fstab comments.
            _ if opt.starts_with("x-") || opt.starts_with("comment=") => {}
            _ if a.sloppy => eprintln!("alces-mount: ignoring unknown mount option {opt:?}"),
            _ => bail!("unknown mount option {opt:?} (-s ignores unknown options)"),
        }
    }
    if a.prompt {
        // A mount going to the background asks once, then hands the answer to its child.
        p.password = Some(match std::env::var(PROMPTED_PASSWORD) {
            Ok(pw) => pw,
            Err(_) => read_password()?,
        });
    }
    if p.masters.is_empty() {
        bail!("no masters given");
    }
    Ok(p)
}

/// Where a mount that asked for the password (`-p`) passes it to the foreground child that
/// it starts, whose standard input is closed.
const PROMPTED_PASSWORD: &str = "ALCES_MOUNT_PROMPTED_PASSWORD";

/// Asks for the export password on the terminal without echoing it (or reads a line of
/// standard input when it is not a terminal).
fn read_password() -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    eprint!("Alces password: ");
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turning off the terminal's echo")?;
    }
    let mut pw = String::new();
    let read = stdin.read_line(&mut pw);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
        eprintln!();
    }
    read.context("reading the password")?;
    Ok(pw.trim_end_matches(['\n', '\r']).to_string())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let p = parse(&args)?;
    if !args.foreground {
        return background(&p, args.prompt);
    }
    alces_config::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let mut opts = Options::new(p.masters.clone());
    opts.path = p.subfolder.clone();
    opts.meta = p.meta;
    opts.password = p.password.clone();
    opts.client_name = format!("{host}:{}", p.mountpoint.display());
    opts.retry_for = p.retry_for;
    let master = rt.block_on(MasterClient::connect(opts)).context("registering with the masters")?;
    let mut mount_opts = vec![
        MountOption::FSName(format!("alces:{}", p.masters.join(","))),
        MountOption::Subtype("alces".into()),
        MountOption::DefaultPermissions,
    ];
    if p.read_only {
        mount_opts.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = mount_opts;
    config.acl = SessionACL::All;
    let session = if p.meta {
        fuser::spawn_mount(MetaFs::new(rt.handle().clone(), master.clone()), &p.mountpoint, &config)
    } else {
        let session = rt.block_on(master.session()).map(|v| v.session.0);
        let info = serde_json::json!({
            "masters": p.masters,
            "path": p.subfolder,
            "mountpoint": p.mountpoint,
            "session": session,
        })
        .to_string()
            + "\n";
        let fs_opts = FsOptions { masterinfo: info, ..p.fs.clone() };
        fuser::spawn_mount(AlcesFs::new(rt.handle().clone(), master.clone(), fs_opts), &p.mountpoint, &config)
    }
    .with_context(|| format!("mounting at {}", p.mountpoint.display()))?;
    tracing::info!(mountpoint = %p.mountpoint.display(), "mounted");
    let mnt = p.mountpoint.canonicalize().unwrap_or_else(|_| p.mountpoint.clone());
    if !p.meta {
        set_kernel_read_ahead(&mnt, KERNEL_READ_AHEAD_KIB);
    }
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = wait_unmounted(&mnt) => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!("unmounting");
    drop(session);
    rt.block_on(master.close());
    Ok(())
}

/// How far the kernel reads ahead of a sequential reader of the mount. A new FUSE mount gets
/// 128 KiB, which the kernel asks for in requests of 128 to 256 KiB, two at a time; with 2 MiB
/// a 2 GiB sequential read went from 526 to 674 MB/s to 726 to 774 (alternated runs), random
/// 4 KiB reads unchanged.
const KERNEL_READ_AHEAD_KIB: u32 = 2048;

/// The device number (`major:minor`) of what is mounted at `mnt` (a canonical path), from
/// `/proc/self/mountinfo`.
fn mounted_device(mnt: &Path) -> Option<String> {
    let want = mnt.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&want.as_str()))?
        .get(2)
        .map(|d| d.to_string())
}

/// Sets the kernel's read-ahead for the mount (through its backing device in sysfs, which
/// needs root); a mount that cannot set it works with the default.
fn set_kernel_read_ahead(mnt: &Path, kib: u32) {
    let Some(dev) = mounted_device(mnt) else {
        tracing::warn!(mountpoint = %mnt.display(), "mount not found in /proc/self/mountinfo; kernel read-ahead left as it is");
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, format!("{kib}\n")) {
        Ok(()) => tracing::debug!(path, kib, "kernel read-ahead set"),
        Err(e) => tracing::info!(path, error = %e, "kernel read-ahead left at its default"),
    }
}

/// Returns when `mnt` (a canonical path) is no longer mounted (someone ran umount).
async fn wait_unmounted(mnt: &Path) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if mounted_device(mnt).is_none() {
            return;
        }
    }
}

/// Starts the mount in the foreground as a child, waits until it is mounted, and leaves it
/// running in the background.
fn background(p: &Parsed, prompted: bool) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("-f".into());
    let log = std::env::var("ALCES_MOUNT_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("alces-mount.log"));
    let out = std::fs::File::options().create(true).append(true).open(&log)?;
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(exe);
    if let (true, Some(pw)) = (prompted, &p.password) {
        cmd.env(PROMPTED_PASSWORD, pw);
    }
    let mut child = cmd
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()?;
    let mnt = p.mountpoint.canonicalize().unwrap_or_else(|_| p.mountpoint.clone());
    for _ in 0..600 {
        if let Some(status) = child.try_wait()? {
            bail!("alces-mount exited with {status} before mounting; see {}", log.display());
        }
        if mounted_device(&mnt).is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("not mounted after 60 s; see {}", log.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(argv: &[&str]) -> Result<Parsed> {
        parse(&Args::try_parse_from(std::iter::once("alces-mount").chain(argv.iter().copied()))?)
    }

    #[test]
    fn mount_options_set_the_budgets_and_bad_ones_are_named() {
        let p =
            parsed(&["/mnt", "-H", "a:1", "-o", "mfsattrcacheto=0.5,mfsentrycacheto=0,mfscachemode=direct"]).unwrap();
        assert_eq!((p.fs.attr_ttl, p.fs.open_flags), (Duration::ZERO, FopenFlags::FOPEN_DIRECT_IO));
        let e = parsed(&["/mnt", "-H", "a:1", "-o", "mfscachemode=sometimes"]).err().unwrap().to_string();
        assert!(e.contains("mfscachemode") && e.contains("sometimes"), "{e}");
        let p = parsed(&["/mnt", "-H", "a:1,b:2", "-o", "mfswritecachesize=64,mfsreadaheadsize=32,ro"]).unwrap();
        assert_eq!(p.masters, ["a:1", "b:2"]);
        assert_eq!((p.fs.write_budget, p.fs.read_budget, p.read_only), (64 << 20, 32 << 20, true));
        let p = parsed(&["a:1", "/mnt", "-o", "password=x,_netdev"]).unwrap();
        assert_eq!((p.mountpoint, p.password.as_deref()), (PathBuf::from("/mnt"), Some("x")));
        let e = parsed(&["/mnt", "-H", "a:1", "-o", "mfswritecachesize=lots"]).err().unwrap().to_string();
        assert!(e.contains("mfswritecachesize") && e.contains("lots"), "{e}");
        let p = parsed(&["/mnt", "-H", "a:1", "-o", "retrytime=5"]).unwrap();
        assert_eq!(p.retry_for, Duration::from_secs(5));
        let e = parsed(&["/mnt", "-H", "a:1", "-o", "retrytime=0"]).err().unwrap().to_string();
        assert!(e.contains("retrytime"), "{e}");
        let e = parsed(&["/mnt", "-H", "a:1", "-o", "bogus"]).err().unwrap().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    /// What mount(8) passes a `mount.fuse.alces` helper for an fstab line.
    #[test]
    fn the_helper_form_of_mount_8_and_fstab_options_are_taken() {
        let line = "rw,noatime,nofail,_netdev,x-systemd.automount,x-systemd.mount-timeout=30,password=pw";
        let p = parsed(&["a:1,b:2", "/mnt/alces", "-n", "-v", "-t", "fuse.alces", "-o", line]).unwrap();
        assert_eq!((p.masters.len(), p.password.as_deref(), p.read_only), (2, Some("pw"), false));
        assert_eq!(p.mountpoint, PathBuf::from("/mnt/alces"));
        let e = parsed(&["a:1", "/mnt", "-o", "noatime,frobnicate"]).err().unwrap().to_string();
        assert!(e.contains("frobnicate") && e.contains("-s"), "{e}");
        let p = parsed(&["a:1", "/mnt", "-s", "-o", "frobnicate,ro"]).unwrap();
        assert!(p.read_only, "-s ignores only the unknown options");
    }
}
