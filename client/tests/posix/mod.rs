//! A POSIX conformance suite for a mounted file system.
//!
//! `run_all` runs each check in its own fresh sub-folder of the given root and reports, per check,
//! either success or a message naming what was expected and what happened. The checks cover data
//! paths (create/write/read, O_APPEND, O_TRUNC, truncate, sparse and large offsets, fsync),
//! metadata (modes, umask, ownership, timestamps), the namespace (rename, link, unlink, symlinks,
//! readdir, name limits, special files, error codes), extended attributes and statvfs.
//!
//! The suite expects to run as root. Checks that need an unprivileged user run small commands
//! (cat, ls, sh, rm, chmod, chown, touch) as nobody (65534:65534) through util-linux `setpriv`,
//! with the working directory set to the check's folder so that the permissions of the folders
//! above it do not matter. A FUSE mount must therefore allow other users (`allow_other`).

use std::collections::HashMap;
use std::fmt::{Debug, Display};
use std::fs::{self, DirBuilder, File, FileTimes, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::stat::{makedev, mknod, umask, Mode, SFlag};

type CheckFn = fn(&Path) -> Result<(), String>;

const CHECKS: &[(&str, CheckFn)] = &[
    ("create_write_read", create_write_read),
    ("o_append", o_append),
    ("o_trunc", o_trunc),
    ("truncate_shrink_extend", truncate_shrink_extend),
    ("large_offsets", large_offsets),
    ("sparse_read_past_eof", sparse_read_past_eof),
    ("permissions_mode", permissions_mode),
    ("ownership", ownership),
    ("times", times),
    ("rename_cases", rename_cases),
    ("link_unlink", link_unlink),
    ("unlink_open_file", unlink_open_file),
    ("symlinks", symlinks),
    ("readdir", readdir),
    ("name_limits", name_limits),
    ("special_files", special_files),
    ("fsync_and_close", fsync_and_close),
    ("mkdir_exists", mkdir_exists),
    ("statfs_sane", statfs_sane),
    ("xattrs", xattrs),
];

/// The unprivileged user and group the permission checks run as.
const NOBODY: u32 = 65534;

/// Long enough for a timestamp taken after it to be later than one taken before it, even on a
/// file system that keeps whole seconds.
const TICK: Duration = Duration::from_millis(1100);

/// Runs every check in a fresh sub-folder of `root`; returns (check name, Ok or Err(reason)).
pub fn run_all(root: &Path) -> Vec<(&'static str, Result<(), String>)> {
    CHECKS
        .iter()
        .map(|&(name, check)| {
            let dir = root.join(name);
            let result = fresh_dir(&dir).and_then(|()| {
                panic::catch_unwind(AssertUnwindSafe(|| check(&dir)))
                    .unwrap_or_else(|p| Err(format!("the check panicked: {}", panic_text(p.as_ref()))))
            });
            (name, result)
        })
        .collect()
}

fn fresh_dir(dir: &Path) -> Result<(), String> {
    if fs::symlink_metadata(dir).is_ok() {
        fs::remove_dir_all(dir).ctx(format!("removing the old {}", dir.display()))?;
    }
    fs::create_dir(dir).ctx(format!("mkdir {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).ctx("chmod 0755 on the check's folder")
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Returns `Err(message)` from the enclosing check unless the condition holds.
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Turns any error into a message that says which step failed.
trait Ctx<T> {
    fn ctx(self, what: impl Display) -> Result<T, String>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// Expects `expected == actual`.
fn eq<T: PartialEq + Debug>(what: impl Display, expected: T, actual: T) -> Result<(), String> {
    if expected == actual {
        Ok(())
    } else {
        Err(format!("{what}: expected {expected:?}, got {actual:?}"))
    }
}

/// Expects the operation to fail with one of the `allowed` error numbers.
fn expect_errno<T: Debug>(what: impl Display, result: io::Result<T>, allowed: &[Errno]) -> Result<(), String> {
    let names = allowed.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(" or ");
    match result {
        Err(e) if e.raw_os_error().is_some_and(|code| allowed.iter().any(|&a| a as i32 == code)) => Ok(()),
        Err(e) => {
            let got = e.raw_os_error().map_or("an error without errno".into(), |c| format!("{:?}", Errno::from_raw(c)));
            Err(format!("{what}: expected {names}, got {got} ({e})"))
        }
        Ok(v) => Err(format!("{what}: expected {names}, but it succeeded ({v:?})")),
    }
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// Checks that change owners, use another user or make device nodes need root.
fn need_root() -> Result<(), String> {
    let uid = nix::unistd::geteuid();
    check!(uid.is_root(), "this check must run as root (uid 0), it runs as uid {uid}");
    Ok(())
}

fn meta(path: &Path) -> Result<Metadata, String> {
    fs::metadata(path).ctx(format!("stat {}", path.display()))
}

fn lmeta(path: &Path) -> Result<Metadata, String> {
    fs::symlink_metadata(path).ctx(format!("lstat {}", path.display()))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).ctx(format!("reading {}", path.display()))
}

fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    fs::write(path, data).ctx(format!("writing {}", path.display()))
}

fn chmod(path: &Path, mode: u32) -> Result<(), String> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).ctx(format!("chmod {mode:o} {}", path.display()))
}

fn mkdir_mode(path: &Path, mode: u32) -> Result<(), String> {
    fs::create_dir(path).ctx(format!("mkdir {}", path.display()))?;
    chmod(path, mode)
}

/// The permission bits, including set-user-ID, set-group-ID and sticky.
fn perm_bits(m: &Metadata) -> u32 {
    m.mode() & 0o7777
}

fn mtime(m: &Metadata) -> (i64, i64) {
    (m.mtime(), m.mtime_nsec())
}

fn ctime(m: &Metadata) -> (i64, i64) {
    (m.ctime(), m.ctime_nsec())
}

fn at(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Sets the modification time (and leaves the access time alone) of a file or folder.
fn set_mtime(path: &Path, t: SystemTime) -> Result<(), String> {
    let f = File::open(path).ctx(format!("opening {}", path.display()))?;
    f.set_times(FileTimes::new().set_modified(t)).ctx(format!("setting the mtime of {}", path.display()))
}

/// Names in a folder, without `.` and `..`.
fn list(dir: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).ctx(format!("opendir {}", dir.display()))? {
        let entry = entry.ctx(format!("readdir {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// A deterministic byte stream (xorshift64*), so that misplaced data shows as a mismatch.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// 64-bit FNV-1a, fed incrementally.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// What an unprivileged command did.
struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

const DENIED: &str = "Permission denied"; // EACCES
const NOT_PERMITTED: &str = "Operation not permitted"; // EPERM

/// Runs `argv` as nobody (65534:65534, no supplementary groups) with `dir` as the working
/// directory; the working directory is entered before the privileges are dropped.
fn as_nobody(dir: &Path, argv: &[&str]) -> Result<Outcome, String> {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(argv)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => "setpriv missing (util-linux is needed to run commands as nobody)".to_string(),
            _ => format!("running setpriv {argv:?}: {e}"),
        })?;
    Ok(Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Expects `argv` to succeed as nobody; returns its standard output.
fn nobody_can(dir: &Path, argv: &[&str]) -> Result<String, String> {
    let out = as_nobody(dir, argv)?;
    check!(out.ok, "as nobody, {argv:?}: expected success, it failed: {}", out.stderr);
    Ok(out.stdout)
}

/// Expects `argv` to fail as nobody with one of the `reasons` (strerror texts) on standard error.
fn nobody_cannot(dir: &Path, argv: &[&str], reasons: &[&str]) -> Result<(), String> {
    let out = as_nobody(dir, argv)?;
    check!(!out.ok, "as nobody, {argv:?}: expected a refusal ({}), but it succeeded", reasons.join(" or "));
    check!(
        reasons.iter().any(|r| out.stderr.contains(r)),
        "as nobody, {argv:?}: expected a refusal ({}), it failed with: {}",
        reasons.join(" or "),
        out.stderr
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Data paths
// ---------------------------------------------------------------------------------------------

/// A new file holds what was written, has the written size, one link, and the caller as owner;
/// data written through a handle can be read back through the same handle before close, and an
/// overwrite in the middle changes only those bytes.
fn create_write_read(dir: &Path) -> Result<(), String> {
    let p = dir.join("file");
    let data = pattern(1, 100_000);
    let mut f = File::create_new(&p).ctx("create")?;
    f.write_all(&data).ctx("write")?;
    drop(f);
    let m = meta(&p)?;
    check!(m.is_file(), "a created file is not a regular file: {:?}", m.file_type());
    eq("size after writing 100000 bytes", data.len() as u64, m.len())?;
    eq("link count of a new file", 1, m.nlink())?;
    eq("owner of a file created by root", nix::unistd::geteuid().as_raw(), m.uid())?;
    check!(read(&p)? == data, "the data read back differs from the data written");

    let f = OpenOptions::new().read(true).write(true).open(&p).ctx("open read-write")?;
    f.write_all_at(b"MIDDLE", 50_000).ctx("overwrite at 50000")?;
    let mut back = vec![0; 10];
    f.read_exact_at(&mut back, 49_998).ctx("read at 49998 through the same handle")?;
    let mut want = data[49_998..50_008].to_vec();
    want[2..8].copy_from_slice(b"MIDDLE");
    eq("bytes around an overwrite, read through the writing handle", want, back)?;
    drop(f);
    let mut expected = data.clone();
    expected[50_000..50_006].copy_from_slice(b"MIDDLE");
    check!(read(&p)? == expected, "after an overwrite in the middle, the file differs from what was expected");
    eq("size after an overwrite in the middle", data.len() as u64, meta(&p)?.len())
}

/// Every write through an O_APPEND handle lands at the current end of file, whichever handle wrote
/// last and wherever the handle's offset was; nothing already there is overwritten.
fn o_append(dir: &Path) -> Result<(), String> {
    let p = dir.join("log");
    write(&p, b"start\n")?;
    let open = || OpenOptions::new().append(true).open(&p).ctx("open O_APPEND");
    let (mut a, mut b) = (open()?, open()?);
    let mut expected = b"start\n".to_vec();
    for i in 0..10 {
        let line = format!("{} line {i}\n", if i % 2 == 0 { "a" } else { "b" });
        let h = if i % 2 == 0 { &mut a } else { &mut b };
        h.write_all(line.as_bytes()).ctx(format!("append line {i}"))?;
        expected.extend_from_slice(line.as_bytes());
    }
    a.seek(SeekFrom::Start(0)).ctx("seek an O_APPEND handle to 0")?;
    a.write_all(b"end\n").ctx("append after seeking to 0")?;
    expected.extend_from_slice(b"end\n");
    drop((a, b));
    let got = read(&p)?;
    check!(
        got == expected,
        "O_APPEND writes from two handles: expected {:?}, got {:?}",
        String::from_utf8_lossy(&expected),
        String::from_utf8_lossy(&got)
    );
    Ok(())
}

/// Opening an existing file with O_TRUNC for writing empties it and updates its mtime and ctime.
fn o_trunc(dir: &Path) -> Result<(), String> {
    let p = dir.join("file");
    write(&p, &pattern(2, 5000))?;
    let old = at(946_684_800, 0); // 2000-01-01
    set_mtime(&p, old)?;
    let before = meta(&p)?;
    std::thread::sleep(TICK);
    let f = OpenOptions::new().write(true).truncate(true).open(&p).ctx("open O_TRUNC")?;
    let fm = f.metadata().ctx("fstat after O_TRUNC")?;
    drop(f);
    eq("size through the handle after O_TRUNC", 0, fm.len())?;
    let after = meta(&p)?;
    eq("size after O_TRUNC", 0, after.len())?;
    check!(
        mtime(&after) > mtime(&before),
        "O_TRUNC did not update mtime: before {:?}, after {:?}",
        mtime(&before),
        mtime(&after)
    );
    check!(
        ctime(&after) > ctime(&before),
        "O_TRUNC did not update ctime: before {:?}, after {:?}",
        ctime(&before),
        ctime(&after)
    );
    check!(read(&p)?.is_empty(), "reading a file truncated by O_TRUNC returned data");
    Ok(())
}

/// Shrinking keeps the data before the new end; extending reads as zeros, including where the
/// cut-off data used to be; both ftruncate and truncate by path work.
fn truncate_shrink_extend(dir: &Path) -> Result<(), String> {
    let p = dir.join("file");
    let data = pattern(3, 100_000);
    write(&p, &data)?;
    let f = OpenOptions::new().read(true).write(true).open(&p).ctx("open")?;
    f.set_len(40_000).ctx("ftruncate to 40000")?;
    eq("size after shrinking", 40_000, meta(&p)?.len())?;
    check!(read(&p)? == data[..40_000], "shrinking changed the data before the new end");
    f.set_len(100_000).ctx("ftruncate to 100000")?;
    let got = read(&p)?;
    eq("size after extending", 100_000, got.len())?;
    check!(got[..40_000] == data[..40_000], "extending changed the data before the old end");
    if let Some(i) = got[40_000..].iter().position(|&b| b != 0) {
        return Err(format!("extended region: expected zeros, byte {} is {:#x}", 40_000 + i, got[40_000 + i]));
    }
    drop(f);

    nix::unistd::truncate(&p, 10).map_err(io_err).ctx("truncate by path to 10")?;
    eq("data after truncate(2) to 10 bytes", data[..10].to_vec(), read(&p)?)?;
    nix::unistd::truncate(&p, 3_000_000).map_err(io_err).ctx("truncate by path to 3000000")?;
    let got = read(&p)?;
    eq("size after truncate(2) to 3000000", 3_000_000, got.len())?;
    check!(got[..10] == data[..10], "truncate(2) extension changed the first 10 bytes");
    check!(got[10..].iter().all(|&b| b == 0), "truncate(2) extension: expected zeros after byte 10");

    // A write past the end after a shrink leaves zeros in the gap.
    let f = OpenOptions::new().write(true).open(&p).ctx("open for writing")?;
    f.set_len(5).ctx("ftruncate to 5")?;
    f.write_all_at(b"XY", 20).ctx("write at 20")?;
    drop(f);
    let mut want = data[..5].to_vec();
    want.extend_from_slice(&[0; 15]);
    want.extend_from_slice(b"XY");
    eq("shrink to 5 then write at 20", want, read(&p)?)
}

/// Bytes written around a 64 MiB boundary and at 5 GiB read back where they were written, the
/// size is one past the last, and the holes read as zeros.
fn large_offsets(dir: &Path) -> Result<(), String> {
    const MIB64: u64 = 64 << 20;
    const GIB5: u64 = 5 << 30;
    let p = dir.join("big");
    let f = OpenOptions::new().read(true).write(true).create_new(true).open(&p).ctx("create")?;
    for (off, byte) in [(MIB64 - 1, 0xAA), (MIB64, 0xBB), (GIB5, 0xCC)] {
        f.write_all_at(&[byte], off).ctx(format!("write 1 byte at {off}"))?;
    }
    eq("size through the handle", GIB5 + 1, f.metadata().ctx("fstat")?.len())?;
    drop(f);
    eq("size after writing at 5 GiB", GIB5 + 1, meta(&p)?.len())?;

    let f = File::open(&p).ctx("reopen")?;
    let read_at = |off: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0x55; len];
        f.read_exact_at(&mut buf, off).ctx(format!("read {len} bytes at {off}"))?;
        Ok(buf)
    };
    eq("bytes around 64 MiB", vec![0, 0xAA, 0xBB, 0], read_at(MIB64 - 2, 4)?)?;
    eq("bytes at 5 GiB - 2 .. 5 GiB + 1", vec![0, 0, 0xCC], read_at(GIB5 - 2, 3)?)?;
    for off in [0, 1 << 30, (3 << 30) + 12345, GIB5 - 65536] {
        let hole = read_at(off, 65536)?;
        check!(hole.iter().all(|&b| b == 0), "a hole at {off}: expected 65536 zero bytes, found data");
    }
    let mut buf = [0x55; 16];
    let n = f.read_at(&mut buf, GIB5).ctx("read at 5 GiB")?;
    eq("bytes read at 5 GiB with 16 asked", (1, 0xCC), (n, buf[0]))?;
    drop(f);
    fs::remove_file(&p).ctx("removing the 5 GiB file")
}

/// Reads at or past the end of file return 0 bytes; a read that straddles the end returns only
/// the bytes before it.
fn sparse_read_past_eof(dir: &Path) -> Result<(), String> {
    let p = dir.join("file");
    write(&p, b"0123456789")?;
    let mut f = File::open(&p).ctx("open")?;
    let mut buf = [0u8; 100];
    for off in [10, 11, 4096, 1 << 20, 1 << 33] {
        eq(format!("bytes read at offset {off} of a 10-byte file"), 0, f.read_at(&mut buf, off).ctx("pread")?)?;
    }
    let n = f.read_at(&mut buf, 5).ctx("pread at 5")?;
    eq("a read straddling the end", b"56789".to_vec(), buf[..n].to_vec())?;
    f.seek(SeekFrom::End(100)).ctx("seek 100 past the end")?;
    eq("read after seeking past the end", 0, f.read(&mut buf).ctx("read")?)?;
    let mut all = Vec::new();
    f.seek(SeekFrom::Start(0)).ctx("seek 0")?;
    f.read_to_end(&mut all).ctx("read to end")?;
    eq("whole file", b"0123456789".to_vec(), all)?;

    // A file extended without writing is all hole; reads stop at its end.
    let q = dir.join("hole");
    let g = File::create_new(&q).ctx("create")?;
    g.set_len(200_000).ctx("ftruncate to 200000")?;
    let mut big = vec![0x55; 300_000];
    let mut total = 0;
    loop {
        let n = g.read_at(&mut big[total..], total as u64).ctx("pread")?;
        if n == 0 {
            break;
        }
        total += n;
    }
    eq("bytes read from a 200000-byte hole", 200_000, total)?;
    check!(big[..200_000].iter().all(|&b| b == 0), "a hole read as non-zero data");
    Ok(())
}

/// fsync'd data survives close and reopen; a 10 MiB file written in 1 MiB pieces reads back with
/// the same size and checksum, read in pieces of another size.
fn fsync_and_close(dir: &Path) -> Result<(), String> {
    let p = dir.join("small");
    let data = pattern(4, 4096 + 17);
    let mut f = File::create_new(&p).ctx("create")?;
    f.write_all(&data).ctx("write")?;
    f.sync_all().ctx("fsync")?;
    f.write_all(b"tail").ctx("write after fsync")?;
    f.sync_data().ctx("fdatasync")?;
    drop(f);
    let mut expected = data;
    expected.extend_from_slice(b"tail");
    check!(read(&p)? == expected, "after fsync, close and reopen the data differs");

    let p = dir.join("ten-mib");
    let mut f = File::create_new(&p).ctx("create")?;
    let mut sum = Fnv::new();
    for i in 0..10 {
        let piece = pattern(100 + i, 1 << 20);
        sum.update(&piece);
        f.write_all(&piece).ctx(format!("write piece {i}"))?;
    }
    f.sync_all().ctx("fsync the 10 MiB file")?;
    drop(f);
    eq("size of the 10 MiB file", 10 << 20, meta(&p)?.len())?;
    let mut f = File::open(&p).ctx("reopen")?;
    let mut back = Fnv::new();
    let mut buf = vec![0; 100_000];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).ctx("read")?;
        if n == 0 {
            break;
        }
        back.update(&buf[..n]);
        total += n as u64;
    }
    eq("bytes read back", 10 << 20, total)?;
    eq("FNV-1a of the 10 MiB file", format!("{:016x}", sum.0), format!("{:016x}", back.0))
}

// ---------------------------------------------------------------------------------------------
// Modes, ownership, times
// ---------------------------------------------------------------------------------------------

/// chmod sets exactly the bits asked for; mkdir and create apply the umask; and the permission
/// bits are enforced against another user: read, write, search, list, and the sticky bit.
fn permissions_mode(dir: &Path) -> Result<(), String> {
    need_root()?;
    let p = dir.join("file");
    write(&p, b"x")?;
    for mode in [0o640, 0o751, 0o4755, 0o2711, 0o000, 0o644] {
        chmod(&p, mode)?;
        let m = lmeta(&p)?;
        eq(format!("mode after chmod {mode:o}"), format!("{mode:o}"), format!("{:o}", perm_bits(&m)))?;
        check!(m.is_file(), "chmod {mode:o} changed the file type: {:?}", m.file_type());
    }

    // The umask is process-wide: set it, create, and restore it before looking at the result.
    let old = umask(Mode::from_bits_truncate(0o027));
    let made = DirBuilder::new()
        .mode(0o777)
        .create(dir.join("masked-dir"))
        .and_then(|()| OpenOptions::new().write(true).create_new(true).mode(0o666).open(dir.join("masked-file")));
    umask(old);
    made.ctx("mkdir 0777 / create 0666 under umask 027")?;
    eq(
        "mode of mkdir 0777 under umask 027",
        "750".to_string(),
        format!("{:o}", perm_bits(&meta(&dir.join("masked-dir"))?)),
    )?;
    eq(
        "mode of create 0666 under umask 027",
        "640".to_string(),
        format!("{:o}", perm_bits(&meta(&dir.join("masked-file"))?)),
    )?;

    // Another user must at least be able to list a 0755 folder, or nothing below means anything.
    nobody_can(dir, &["ls", "."]).map_err(|e| format!("{e} (is the mount without allow_other?)"))?;

    write(&dir.join("secret"), b"secret\n")?;
    chmod(&dir.join("secret"), 0o600)?;
    nobody_cannot(dir, &["cat", "secret"], &[DENIED])?;
    write(&dir.join("public"), b"public\n")?;
    chmod(&dir.join("public"), 0o644)?;
    eq("what nobody reads from a 0644 file", "public\n".to_string(), nobody_can(dir, &["cat", "public"])?)?;

    // 0700: neither searchable nor listable by others. 0711: searchable, not listable.
    for (name, mode) in [("private", 0o700), ("search-only", 0o711)] {
        mkdir_mode(&dir.join(name), mode)?;
        write(&dir.join(name).join("f"), b"inner\n")?;
        chmod(&dir.join(name).join("f"), 0o644)?;
        nobody_cannot(dir, &["ls", name], &[DENIED])?;
    }
    nobody_cannot(dir, &["cat", "private/f"], &[DENIED])?;
    eq("nobody reading through a 0711 folder", "inner\n".to_string(), nobody_can(dir, &["cat", "search-only/f"])?)?;

    // Write permission: 0444 refuses, 0666 allows.
    const APPEND: &str = "echo more >> \"$1\"";
    write(&dir.join("readonly"), b"ro\n")?;
    chmod(&dir.join("readonly"), 0o444)?;
    nobody_cannot(dir, &["sh", "-c", APPEND, "sh", "readonly"], &[DENIED])?;
    eq("a 0444 file after nobody tried to write it", b"ro\n".to_vec(), read(&dir.join("readonly"))?)?;
    write(&dir.join("shared"), b"rw\n")?;
    chmod(&dir.join("shared"), 0o666)?;
    nobody_can(dir, &["sh", "-c", APPEND, "sh", "shared"])?;
    eq("a 0666 file after nobody appended to it", b"rw\nmore\n".to_vec(), read(&dir.join("shared"))?)?;

    // Sticky folder: others may create and remove their own entries, not root's. Without the
    // sticky bit the same removal is allowed, which shows that the sticky bit made the difference.
    mkdir_mode(&dir.join("sticky"), 0o1777)?;
    eq("mode of a sticky folder", "1777".to_string(), format!("{:o}", perm_bits(&meta(&dir.join("sticky"))?)))?;
    write(&dir.join("sticky/roots"), b"r")?;
    chmod(&dir.join("sticky/roots"), 0o666)?;
    nobody_cannot(dir, &["rm", "-f", "sticky/roots"], &[NOT_PERMITTED, DENIED])?;
    check!(lmeta(&dir.join("sticky/roots")).is_ok(), "root's file vanished from the sticky folder");
    nobody_cannot(dir, &["mv", "sticky/roots", "sticky/moved"], &[NOT_PERMITTED, DENIED])?;
    nobody_can(dir, &["touch", "sticky/mine"])?;
    nobody_can(dir, &["rm", "sticky/mine"])?;
    mkdir_mode(&dir.join("open"), 0o777)?;
    write(&dir.join("open/roots"), b"r")?;
    nobody_can(dir, &["rm", "-f", "open/roots"])?;
    check!(lmeta(&dir.join("open/roots")).is_err(), "nobody's rm in a 0777 folder left the file");
    Ok(())
}

/// chown by root is reflected in stat (uid alone keeps the gid; lchown changes the link, not its
/// target); new files belong to their creator; only the owner may chmod, and a non-root owner
/// may not give a file away.
fn ownership(dir: &Path) -> Result<(), String> {
    need_root()?;
    use std::os::unix::fs::{chown, lchown};
    let p = dir.join("file");
    write(&p, b"data\n")?;
    chmod(&p, 0o600)?;
    let m = meta(&p)?;
    eq("owner of a file root created", (0, nix::unistd::getegid().as_raw()), (m.uid(), m.gid()))?;
    chown(&p, Some(NOBODY), Some(NOBODY)).ctx("chown 65534:65534")?;
    let m = meta(&p)?;
    eq("owner after chown 65534:65534", (NOBODY, NOBODY), (m.uid(), m.gid()))?;
    eq("what the new owner reads from its 0600 file", "data\n".to_string(), nobody_can(dir, &["cat", "file"])?)?;
    nobody_can(dir, &["chmod", "640", "file"])?;
    eq("mode after the owner's chmod 640", "640".to_string(), format!("{:o}", perm_bits(&meta(&p)?)))?;
    nobody_cannot(dir, &["chown", "0:0", "file"], &[NOT_PERMITTED])?;
    eq("owner after nobody tried to give the file to root", NOBODY, meta(&p)?.uid())?;
    chown(&p, Some(0), None).ctx("chown 0 keeping the group")?;
    let m = meta(&p)?;
    eq("owner after chown of the uid alone", (0, NOBODY), (m.uid(), m.gid()))?;

    let r = dir.join("roots");
    write(&r, b"r")?;
    chmod(&r, 0o644)?;
    nobody_cannot(dir, &["chmod", "777", "roots"], &[NOT_PERMITTED])?;
    eq("mode after nobody's chmod of root's file", "644".to_string(), format!("{:o}", perm_bits(&meta(&r)?)))?;
    nobody_cannot(dir, &["chown", "65534", "roots"], &[NOT_PERMITTED])?;
    eq("owner after nobody's chown of root's file", 0, meta(&r)?.uid())?;

    mkdir_mode(&dir.join("open"), 0o777)?;
    nobody_can(dir, &["touch", "open/made-by-nobody"])?;
    nobody_can(dir, &["mkdir", "open/dir-by-nobody"])?;
    for name in ["made-by-nobody", "dir-by-nobody"] {
        let m = meta(&dir.join("open").join(name))?;
        eq(format!("owner of {name}"), (NOBODY, NOBODY), (m.uid(), m.gid()))?;
    }

    std::os::unix::fs::symlink("roots", dir.join("link")).ctx("symlink")?;
    lchown(dir.join("link"), Some(NOBODY), Some(NOBODY)).ctx("lchown the link")?;
    let (l, t) = (lmeta(&dir.join("link"))?, meta(&r)?);
    eq("owner of the link after lchown", (NOBODY, NOBODY), (l.uid(), l.gid()))?;
    eq("owner of the link's target after lchown", (0, 0), (t.uid(), t.gid()))?;
    chown(dir.join("link"), Some(NOBODY), None).ctx("chown through the link")?;
    eq("owner of the link's target after chown through it", NOBODY, meta(&r)?.uid())
}

/// Times set explicitly read back (whole seconds must match; lost nanoseconds are reported as a
/// note); setting only mtime leaves atime alone; a write updates mtime and ctime; chmod updates
/// ctime only; a read updates neither; creating and removing an entry update the folder's mtime
/// and ctime.
fn times(dir: &Path) -> Result<(), String> {
    let p = dir.join("file");
    write(&p, b"data")?;
    let f = OpenOptions::new().read(true).write(true).open(&p).ctx("open")?;
    let (atime_set, mtime_set) = ((1_000_000_000, 123_456_789), (1_100_000_000, 987_654_321));
    f.set_times(FileTimes::new().set_accessed(at(atime_set.0, atime_set.1)).set_modified(at(mtime_set.0, mtime_set.1)))
        .ctx("futimens")?;
    let m = meta(&p)?;
    eq("atime seconds after futimens", atime_set.0 as i64, m.atime())?;
    eq("mtime seconds after futimens", mtime_set.0 as i64, m.mtime())?;
    let got_ns = (m.atime_nsec(), m.mtime_nsec());
    if got_ns != (atime_set.1 as i64, mtime_set.1 as i64) {
        eprintln!(
            "posix times note: nanoseconds set ({}, {}) read back as ({}, {})",
            atime_set.1, mtime_set.1, got_ns.0, got_ns.1
        );
    }

    f.set_times(FileTimes::new().set_modified(at(1_200_000_000, 0))).ctx("futimens of mtime alone")?;
    let m2 = meta(&p)?;
    eq("atime after setting mtime alone", (m.atime(), m.atime_nsec()), (m2.atime(), m2.atime_nsec()))?;
    eq("mtime after setting it alone", (1_200_000_000, 0), (m2.mtime(), m2.mtime_nsec()))?;

    // Write: mtime and ctime move forward.
    std::thread::sleep(TICK);
    f.write_all_at(b"more", 4).ctx("write")?;
    drop(f);
    let m3 = meta(&p)?;
    check!(
        m3.mtime() >= m2.ctime(),
        "a write did not update mtime: {:?}, expected at least {}",
        mtime(&m3),
        m2.ctime()
    );
    check!(ctime(&m3) > ctime(&m2), "a write did not update ctime: before {:?}, after {:?}", ctime(&m2), ctime(&m3));

    // Read: neither mtime nor ctime change.
    std::thread::sleep(TICK);
    read(&p)?;
    let m4 = meta(&p)?;
    eq("mtime and ctime after a read", (mtime(&m3), ctime(&m3)), (mtime(&m4), ctime(&m4)))?;

    // chmod: ctime moves, mtime stays.
    chmod(&p, 0o600)?;
    let m5 = meta(&p)?;
    eq("mtime after chmod", mtime(&m4), mtime(&m5))?;
    check!(ctime(&m5) > ctime(&m4), "chmod did not update ctime: before {:?}, after {:?}", ctime(&m4), ctime(&m5));

    // A folder's mtime and ctime change when an entry is created in it, and when one is removed.
    let d = dir.join("sub");
    fs::create_dir(&d).ctx("mkdir sub")?;
    folder_times_follow(&d, "creating a file", || write(&d.join("new"), b""))?;
    folder_times_follow(&d, "removing a file", || fs::remove_file(d.join("new")).ctx("unlink"))?;
    folder_times_follow(&d, "creating a folder", || fs::create_dir(d.join("subsub")).ctx("mkdir"))
}

/// Expects `op`, which changes an entry of folder `d`, to move the folder's mtime and ctime forward.
fn folder_times_follow(d: &Path, what: &str, op: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    set_mtime(d, at(946_684_800, 0))?;
    let before = meta(d)?;
    std::thread::sleep(TICK);
    op()?;
    let after = meta(d)?;
    check!(mtime(&after) > mtime(&before), "{what} in a folder did not update its mtime: {:?}", mtime(&after));
    check!(
        ctime(&after) > ctime(&before),
        "{what} in a folder did not update its ctime: before {:?}, after {:?}",
        ctime(&before),
        ctime(&after)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Namespace
// ---------------------------------------------------------------------------------------------

/// rename(2) corner cases, with the error numbers POSIX gives.
fn rename_cases(dir: &Path) -> Result<(), String> {
    let j = |n: &str| dir.join(n);

    // File over file: the target name now has the source's inode and data; the replaced inode
    // has no links left (seen through a handle kept open on it).
    write(&j("a"), b"from a")?;
    write(&j("b"), b"from b")?;
    let ino_a = meta(&j("a"))?.ino();
    let held = File::open(j("b")).ctx("open b")?;
    fs::rename(j("a"), j("b")).ctx("rename a over b")?;
    check!(lmeta(&j("a")).is_err(), "after rename a -> b, a still exists");
    eq("inode of b after rename a -> b", ino_a, meta(&j("b"))?.ino())?;
    eq("data of b after rename a -> b", b"from a".to_vec(), read(&j("b"))?)?;
    eq("links of the replaced inode", 0, held.metadata().ctx("fstat the replaced file")?.nlink())?;
    drop(held);

    // Folder over an empty folder.
    fs::create_dir(j("d1")).ctx("mkdir d1")?;
    write(&j("d1/inside"), b"i")?;
    fs::create_dir(j("empty")).ctx("mkdir empty")?;
    let ino_d1 = meta(&j("d1"))?.ino();
    fs::rename(j("d1"), j("empty")).ctx("rename d1 over an empty folder")?;
    check!(lmeta(&j("d1")).is_err(), "after rename d1 -> empty, d1 still exists");
    eq("inode of the renamed folder", ino_d1, meta(&j("empty"))?.ino())?;
    eq("contents of the renamed folder", strings(&["inside"]), list(&j("empty"))?)?;

    // Folder over a non-empty folder.
    fs::create_dir(j("d2")).ctx("mkdir d2")?;
    expect_errno(
        "rename a folder over a non-empty folder",
        fs::rename(j("d2"), j("empty")),
        &[Errno::ENOTEMPTY, Errno::EEXIST],
    )?;
    check!(lmeta(&j("d2")).is_ok() && lmeta(&j("empty/inside")).is_ok(), "a failed rename changed the folders");

    // Folder into its own subfolder.
    fs::create_dir_all(j("d2/child")).ctx("mkdir d2/child")?;
    expect_errno("rename a folder into its own subfolder", fs::rename(j("d2"), j("d2/child/x")), &[Errno::EINVAL])?;

    // File over folder, folder over file.
    write(&j("f"), b"f")?;
    expect_errno("rename a file over a folder", fs::rename(j("f"), j("d2")), &[Errno::EISDIR])?;
    expect_errno("rename a folder over a file", fs::rename(j("d2"), j("f")), &[Errno::ENOTDIR])?;

    // Onto itself: success, nothing changes.
    let ino_f = meta(&j("f"))?.ino();
    fs::rename(j("f"), j("f")).ctx("rename f to itself")?;
    eq("inode of f after renaming it to itself", ino_f, meta(&j("f"))?.ino())?;
    fs::rename(j("d2"), j("d2")).ctx("rename a folder to itself")?;

    // Across folders: same inode and data under the new name.
    fs::rename(j("f"), j("d2/child/moved")).ctx("rename f into d2/child")?;
    check!(lmeta(&j("f")).is_err(), "after moving f to another folder, f still exists");
    eq("inode after a move across folders", ino_f, meta(&j("d2/child/moved"))?.ino())?;
    eq("data after a move across folders", b"f".to_vec(), read(&j("d2/child/moved"))?)?;

    // Onto another name of the same inode: success, and both names remain.
    write(&j("h1"), b"h")?;
    fs::hard_link(j("h1"), j("h2")).ctx("link h1 h2")?;
    fs::rename(j("h1"), j("h2")).ctx("rename onto another hard link of the same file")?;
    check!(lmeta(&j("h1")).is_ok() && lmeta(&j("h2")).is_ok(), "rename onto a hard link of itself removed a name");
    eq("links after rename onto a hard link of itself", 2, meta(&j("h1"))?.nlink())?;

    // Missing source.
    expect_errno("rename a missing name", fs::rename(j("missing"), j("x")), &[Errno::ENOENT])
}

/// Hard links share the inode and count links; unlinking one name keeps the data; the errors for
/// links to folders, unlinking folders, rmdir of non-empty folders and of files, missing names and
/// O_EXCL on existing names.
fn link_unlink(dir: &Path) -> Result<(), String> {
    let j = |n: &str| dir.join(n);
    write(&j("a"), b"shared data")?;
    fs::hard_link(j("a"), j("b")).ctx("link a b")?;
    let (ma, mb) = (meta(&j("a"))?, meta(&j("b"))?);
    eq("inode of both names", ma.ino(), mb.ino())?;
    eq("link count after link", (2, 2), (ma.nlink(), mb.nlink()))?;
    expect_errno("link onto an existing name", fs::hard_link(j("a"), j("b")), &[Errno::EEXIST])?;
    fs::remove_file(j("a")).ctx("unlink a")?;
    eq("link count after unlinking one name", 1, meta(&j("b"))?.nlink())?;
    eq("data through the remaining name", b"shared data".to_vec(), read(&j("b"))?)?;

    fs::create_dir(j("d")).ctx("mkdir d")?;
    write(&j("d/f"), b"")?;
    expect_errno("link to a folder", fs::hard_link(j("d"), j("dlink")), &[Errno::EPERM])?;
    expect_errno("unlink a folder", fs::remove_file(j("d")), &[Errno::EISDIR, Errno::EPERM])?;
    expect_errno("rmdir a non-empty folder", fs::remove_dir(j("d")), &[Errno::ENOTEMPTY, Errno::EEXIST])?;
    expect_errno("rmdir a file", fs::remove_dir(j("b")), &[Errno::ENOTDIR])?;
    expect_errno("unlink a missing name", fs::remove_file(j("missing")), &[Errno::ENOENT])?;
    expect_errno("rmdir a missing name", fs::remove_dir(j("missing")), &[Errno::ENOENT])?;
    expect_errno("link from a missing name", fs::hard_link(j("missing"), j("x")), &[Errno::ENOENT])?;
    expect_errno("O_CREAT|O_EXCL on an existing file", File::create_new(j("b")), &[Errno::EEXIST])?;
    expect_errno("O_CREAT|O_EXCL on an existing folder", File::create_new(j("d")), &[Errno::EEXIST])?;
    fs::remove_file(j("d/f")).ctx("unlink d/f")?;
    fs::remove_dir(j("d")).ctx("rmdir the emptied folder")?;
    check!(lmeta(&j("d")).is_err(), "rmdir left the folder");
    eq("what is left", strings(&["b"]), list(dir)?)
}

/// An unlinked file stays readable and writable through a handle opened before, has no links, and
/// leaves no entry (not even a hidden one) in its folder.
fn unlink_open_file(dir: &Path) -> Result<(), String> {
    let sub = dir.join("sub");
    fs::create_dir(&sub).ctx("mkdir")?;
    let p = sub.join("file");
    write(&p, b"before unlink\n")?;
    let mut f = OpenOptions::new().read(true).write(true).open(&p).ctx("open")?;
    fs::remove_file(&p).ctx("unlink")?;
    expect_errno("stat of the unlinked name", fs::metadata(&p), &[Errno::ENOENT])?;
    eq("folder listing after unlinking an open file", Vec::<String>::new(), list(&sub)?)?;
    let mut got = String::new();
    f.read_to_string(&mut got).ctx("read through the handle")?;
    eq("data through the handle after unlink", "before unlink\n", got.as_str())?;
    f.write_all(b"after unlink\n").ctx("write through the handle")?;
    f.sync_all().ctx("fsync through the handle")?;
    let mut got = String::new();
    f.seek(SeekFrom::Start(0)).ctx("seek 0")?;
    f.read_to_string(&mut got).ctx("read back")?;
    eq("data written after unlink", "before unlink\nafter unlink\n", got.as_str())?;
    let m = f.metadata().ctx("fstat")?;
    eq("link count of an unlinked open file", 0, m.nlink())?;
    eq("size of an unlinked open file", 27, m.len())?;
    drop(f);
    eq("folder listing after close", Vec::<String>::new(), list(&sub)?)?;
    fs::remove_dir(&sub).ctx("rmdir the folder the unlinked file was in")
}

/// Symlinks keep their target text, stat follows them and lstat does not, dangling links exist
/// but do not resolve, relative targets resolve from the link's folder, O_NOFOLLOW refuses them.
fn symlinks(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::symlink;
    let j = |n: &str| dir.join(n);
    write(&j("target"), b"target data")?;
    symlink("target", j("link")).ctx("symlink")?;
    eq("readlink", Path::new("target"), fs::read_link(j("link")).ctx("readlink")?.as_path())?;
    let (m, l) = (meta(&j("link"))?, lmeta(&j("link"))?);
    check!(m.is_file() && m.len() == 11, "stat of a link to an 11-byte file: {:?}, {} bytes", m.file_type(), m.len());
    eq("stat through a link gives the target's inode", meta(&j("target"))?.ino(), m.ino())?;
    check!(l.file_type().is_symlink(), "lstat of a link: expected a symlink, got {:?}", l.file_type());
    eq("lstat size of a link (its target's length)", 6, l.len())?;
    eq("data through a link", b"target data".to_vec(), read(&j("link"))?)?;
    expect_errno("symlink onto an existing name", symlink("x", j("link")), &[Errno::EEXIST])?;
    expect_errno(
        "open a symlink with O_NOFOLLOW",
        OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(j("link")),
        &[Errno::ELOOP],
    )?;
    expect_errno("readlink of a regular file", fs::read_link(j("target")), &[Errno::EINVAL])?;

    symlink("missing", j("dangling")).ctx("symlink to a missing name")?;
    check!(lmeta(&j("dangling"))?.file_type().is_symlink(), "lstat of a dangling link is not a symlink");
    expect_errno("stat through a dangling link", fs::metadata(j("dangling")), &[Errno::ENOENT])?;
    eq("readlink of a dangling link", Path::new("missing"), fs::read_link(j("dangling")).ctx("readlink")?.as_path())?;
    eq("listing with a dangling link", strings(&["dangling", "link", "target"]), list(dir)?)?;

    // Relative targets resolve from the folder that holds the link.
    fs::create_dir_all(j("sub/deeper")).ctx("mkdir sub/deeper")?;
    write(&j("sub/deeper/file"), b"deep")?;
    symlink("sub/deeper/file", j("down")).ctx("symlink into a subfolder")?;
    eq("data through a link into a subfolder", b"deep".to_vec(), read(&j("down"))?)?;
    symlink("../target", j("sub/up")).ctx("symlink to the parent folder")?;
    eq("data through a link to ../target", b"target data".to_vec(), read(&j("sub/up"))?)?;
    symlink("sub", j("subdir-link")).ctx("symlink to a folder")?;
    eq("data through a folder link", b"deep".to_vec(), read(&j("subdir-link/deeper/file"))?)?;
    check!(meta(&j("subdir-link"))?.is_dir(), "stat through a link to a folder is not a folder");

    // Removing a link leaves its target; a loop is reported as ELOOP.
    fs::remove_file(j("link")).ctx("unlink the link")?;
    eq("target after removing its link", b"target data".to_vec(), read(&j("target"))?)?;
    symlink("loop2", j("loop1")).ctx("symlink loop1")?;
    symlink("loop1", j("loop2")).ctx("symlink loop2")?;
    expect_errno("stat through a symlink loop", fs::metadata(j("loop1")), &[Errno::ELOOP])
}

/// A folder with 1000 entries lists each exactly once and nothing else; after removing every
/// other entry, exactly the rest are listed.
fn readdir(dir: &Path) -> Result<(), String> {
    let d = dir.join("many");
    fs::create_dir(&d).ctx("mkdir")?;
    let names: Vec<String> = (0..1000).map(|i| format!("entry-{i:04}")).collect();
    for n in &names {
        File::create_new(d.join(n)).ctx(format!("create {n}"))?;
    }
    compare_listing(&d, &names)?;
    for n in names.iter().step_by(2) {
        fs::remove_file(d.join(n)).ctx(format!("unlink {n}"))?;
    }
    let rest: Vec<String> = names.iter().skip(1).step_by(2).cloned().collect();
    compare_listing(&d, &rest)?;
    for entry in fs::read_dir(&d).ctx("opendir")? {
        let entry = entry.ctx("readdir")?;
        let t = entry.file_type().ctx("d_type")?;
        check!(t.is_file(), "readdir reports {:?} for the regular file {:?}", t, entry.file_name());
    }
    Ok(())
}

fn compare_listing(d: &Path, expected: &[String]) -> Result<(), String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for n in list(d)? {
        *seen.entry(n).or_default() += 1;
    }
    let missing: Vec<&String> = expected.iter().filter(|n| !seen.contains_key(*n)).collect();
    let extra: Vec<&String> = seen.keys().filter(|n| !expected.contains(n)).collect();
    let twice: Vec<&String> = seen.iter().filter(|(_, &c)| c > 1).map(|(n, _)| n).collect();
    check!(
        missing.is_empty() && extra.is_empty() && twice.is_empty(),
        "listing of {} entries: {} missing {:?}, {} extra {:?}, {} listed more than once {:?}",
        expected.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>(),
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    Ok(())
}

/// A 255-byte name works for files and folders (ASCII and multi-byte UTF-8); 256 bytes is
/// ENAMETOOLONG for create, mkdir and lookup.
fn name_limits(dir: &Path) -> Result<(), String> {
    let ascii = "n".repeat(255);
    let utf8 = format!("{}x", "é".repeat(127));
    for name in [&ascii, &utf8] {
        eq("length of the test name in bytes", 255, name.len())?;
        let p = dir.join(name);
        write(&p, b"long")?;
        eq("data under a 255-byte name", b"long".to_vec(), read(&p)?)?;
        check!(list(dir)?.contains(name), "a 255-byte name is missing from the listing");
        fs::remove_file(&p).ctx("unlink a 255-byte name")?;
        fs::create_dir(&p).ctx("mkdir a 255-byte name")?;
        fs::remove_dir(&p).ctx("rmdir a 255-byte name")?;
    }
    let long = dir.join("n".repeat(256));
    expect_errno("create a 256-byte name", File::create(&long), &[Errno::ENAMETOOLONG])?;
    expect_errno("mkdir a 256-byte name", fs::create_dir(&long), &[Errno::ENAMETOOLONG])?;
    expect_errno("stat a 256-byte name", fs::metadata(&long), &[Errno::ENAMETOOLONG])?;
    eq("listing after the refused names", Vec::<String>::new(), list(dir)?)
}

/// FIFOs, character and block devices and sockets made with mkfifo/mknod have the right type,
/// mode and device number.
fn special_files(dir: &Path) -> Result<(), String> {
    need_root()?;
    let j = |n: &str| dir.join(n);
    let mode = Mode::from_bits_truncate(0o644);
    nix::unistd::mkfifo(&j("fifo"), mode).map_err(io_err).ctx("mkfifo")?;
    let m = lmeta(&j("fifo"))?;
    check!(m.file_type().is_fifo(), "mkfifo made {:?}", m.file_type());

    for (name, kind, dev) in [("null", SFlag::S_IFCHR, makedev(1, 3)), ("loop", SFlag::S_IFBLK, makedev(7, 0))] {
        mknod(&j(name), kind, mode, dev).map_err(io_err).ctx(format!("mknod {name}"))?;
        let m = lmeta(&j(name))?;
        let t = m.file_type();
        let right = if kind == SFlag::S_IFCHR { t.is_char_device() } else { t.is_block_device() };
        check!(right, "mknod {kind:?} made {t:?}");
        eq(format!("rdev of {name}"), dev, m.rdev())?;
    }
    mknod(&j("sock"), SFlag::S_IFSOCK, mode, 0).map_err(io_err).ctx("mknod a socket")?;
    check!(lmeta(&j("sock"))?.file_type().is_socket(), "mknod S_IFSOCK did not make a socket");

    for name in ["fifo", "null", "loop", "sock"] {
        chmod(&j(name), 0o600)?;
        eq(
            format!("mode of {name} after chmod 600"),
            "600".to_string(),
            format!("{:o}", perm_bits(&lmeta(&j(name))?)),
        )?;
    }
    eq("listing", strings(&["fifo", "loop", "null", "sock"]), list(dir)?)?;
    for name in ["fifo", "null", "loop", "sock"] {
        fs::remove_file(j(name)).ctx(format!("unlink {name}"))?;
    }
    Ok(())
}

/// mkdir of an existing name is EEXIST, in a missing parent ENOENT; using a file as a folder in a
/// path is ENOTDIR; the empty path is ENOENT.
fn mkdir_exists(dir: &Path) -> Result<(), String> {
    let j = |n: &str| dir.join(n);
    fs::create_dir(j("d")).ctx("mkdir d")?;
    write(&j("file"), b"f")?;
    expect_errno("mkdir an existing folder", fs::create_dir(j("d")), &[Errno::EEXIST])?;
    expect_errno("mkdir over an existing file", fs::create_dir(j("file")), &[Errno::EEXIST])?;
    expect_errno("mkdir in a missing parent", fs::create_dir(j("missing/d")), &[Errno::ENOENT])?;
    expect_errno("open file/x", File::open(j("file/x")), &[Errno::ENOTDIR])?;
    expect_errno("create file/x", File::create(j("file/x")), &[Errno::ENOTDIR])?;
    expect_errno("mkdir file/x", fs::create_dir(j("file/x")), &[Errno::ENOTDIR])?;
    expect_errno("stat file/", fs::metadata(dir.join("file/")), &[Errno::ENOTDIR])?;
    expect_errno("open an empty path", File::open(""), &[Errno::ENOENT])?;
    check!(meta(&j("d"))?.is_dir(), "the folder is gone after the failed calls");
    Ok(())
}

/// statvfs reports a non-empty file system whose free and available counts do not exceed its
/// size, positive block sizes, and a name limit of at least 255.
fn statfs_sane(dir: &Path) -> Result<(), String> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(io_err).ctx("statvfs")?;
    let (blocks, free, avail) = (s.blocks() as u64, s.blocks_free() as u64, s.blocks_available() as u64);
    check!(blocks > 0, "statvfs: expected blocks > 0, got {blocks}");
    check!(avail <= free && free <= blocks, "statvfs: expected available {avail} <= free {free} <= blocks {blocks}");
    check!(
        s.block_size() > 0 && s.fragment_size() > 0,
        "statvfs: block size {}, fragment size {}",
        s.block_size(),
        s.fragment_size()
    );
    let (files, ffree) = (s.files() as u64, s.files_free() as u64);
    check!(files == 0 || ffree <= files, "statvfs: expected free inodes {ffree} <= inodes {files}");
    check!(s.name_max() >= 255, "statvfs: expected a name limit of at least 255, got {}", s.name_max());
    Ok(())
}

/// Extended attributes: a missing one, set, replaced, listed, removed, with writes between
/// (the kernel asks for `security.capability` before each write).
fn xattrs(dir: &Path) -> Result<(), String> {
    let f = dir.join("f");
    write(&f, b"x")?;
    let no_attr = |what: &str, r: io::Result<Option<Vec<u8>>>| match r {
        Ok(None) => Ok(()),
        other => Err(format!("{what}: expected no attribute, got {other:?}")),
    };
    no_attr("a new file's user.a", xattr::get(&f, "user.a"))?;
    xattr::set(&f, "user.a", b"one").ctx("setting user.a")?;
    eq("user.a after set", Some(b"one".to_vec()), xattr::get(&f, "user.a").ctx("getting user.a")?)?;
    fs::OpenOptions::new().append(true).open(&f).and_then(|mut h| h.write_all(b"y")).ctx("appending")?;
    xattr::set(&f, "user.a", b"two").ctx("replacing user.a")?;
    eq("user.a after replace", Some(b"two".to_vec()), xattr::get(&f, "user.a").ctx("getting user.a")?)?;
    let names: Vec<String> = xattr::list(&f)
        .ctx("listing")?
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.starts_with("user."))
        .collect();
    eq("names", vec!["user.a".to_string()], names)?;
    xattr::remove(&f, "user.a").ctx("removing user.a")?;
    no_attr("user.a after remove", xattr::get(&f, "user.a"))?;
    expect_errno("removing it again", xattr::remove(&f, "user.a"), &[Errno::ENODATA])?;
    xattr::set(&f, "user.a", b"three").ctx("setting user.a again")?;
    eq("user.a set again", Some(b"three".to_vec()), xattr::get(&f, "user.a").ctx("getting user.a")?)?;
    eq("content", b"xy".to_vec(), read(&f)?)
}
