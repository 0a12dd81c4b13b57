//! Real FUSE mounts against a local cluster of real processes (3 masters, 3 chunkservers):
//! file operations, a 200 MiB file across chunks, concurrent writers, the tools, the meta
//! mount's trash, snapshots, the POSIX suite, exports with a password and read-only, a
//! workload that keeps running while the leader is killed, and reads and writes that go
//! around a chunkserver that stops answering.

mod posix;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use alces_ops::launcher::{Cluster, Layout};
use alces_testkit::{pseudo_random_bytes, FileWorkload};
use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;

fn checksum(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

fn alces(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let out = Command::new(cluster.bin_dir.join("alces")).args(args).output()?;
    ensure!(out.status.success(), "alces {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// Valid copies of every chunk of a file, from `alces fileinfo --json`.
fn valid_copies(cluster: &Cluster, path: &Path) -> Result<Vec<u64>> {
    let text = alces(cluster, &["fileinfo", "--json", &path.display().to_string()])?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let chunks = v[0]["chunks"].as_array().context("chunks")?;
    Ok(chunks.iter().map(|c| c["valid_copies"].as_u64().unwrap_or(0)).collect())
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) if Instant::now() < deadline => {}
            Ok(false) => bail!("timed out waiting for {what}"),
            Err(e) if Instant::now() < deadline => note_retry(&e),
            Err(e) => return Err(e.context(format!("waiting for {what}"))),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn note_retry(e: &anyhow::Error) {
    eprintln!("still waiting: {e:#}");
}

/// A local cluster; a new leader waits `delay_init` seconds before it repairs or trims
/// replicas (REPLICATIONS_DELAY_INIT).
fn start(dir: &Path, mount: Option<PathBuf>, exports: Option<&str>, delay_init: u64) -> Result<Cluster> {
    // Other users (the permission checks run commands as nobody) must reach the mount.
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut layout = Layout::new(dir, 3, 3)?;
    layout.mount = mount;
    layout.master_extra.push("CHUNKSERVER_TIMEOUT = 5".into());
    layout.master_extra.push(format!("REPLICATIONS_DELAY_INIT = {delay_init}"));
    if let Some(e) = exports {
        layout.exports = e.into();
    }
    Cluster::up(&layout)
}

/// `df` on the mount reports the space of the live chunkservers (as the admin API lists it).
fn df_shows_the_cluster_space(cluster: &Cluster, mnt: &Path) -> Result<()> {
    cluster.wait_chunkservers(3, Duration::from_secs(30))?;
    let view = cluster.view().context("no master answers the admin API")?;
    let total: u64 = view.chunkservers.iter().filter(|s| s.alive).map(|s| s.total_bytes).sum();
    let s = nix::sys::statvfs::statvfs(mnt)?;
    let df_total = s.blocks() as u64 * s.fragment_size() as u64;
    let block = s.fragment_size() as u64;
    ensure!(total > 0, "the chunkservers report no space");
    ensure!(total.abs_diff(df_total) < block, "df says {df_total} bytes, the chunkservers have {total}");
    let df_avail = s.blocks_available() as u64 * block;
    ensure!(df_avail > 0 && df_avail <= df_total, "df says {df_avail} of {df_total} bytes available");
    Ok(())
}

/// The mount raised the kernel's read-ahead of its files from the 128 KiB a FUSE mount starts
/// with (these tests run as root, who may set it).
fn kernel_read_ahead_is_raised(mnt: &Path) -> Result<()> {
    let dev = nix::sys::stat::stat(mnt)?.st_dev;
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let kib = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    ensure!(kib.trim() == "2048", "{path} says {}", kib.trim());
    Ok(())
}

fn basic_file_operations(mnt: &Path) -> Result<()> {
    let d = mnt.join("basic");
    fs::create_dir(&d)?;
    fs::write(d.join("a"), b"hello alces")?;
    ensure!(fs::read(d.join("a"))? == b"hello alces");
    fs::rename(d.join("a"), d.join("b"))?;
    ensure!(!d.join("a").exists() && fs::read(d.join("b"))? == b"hello alces");
    fs::hard_link(d.join("b"), d.join("c"))?;
    ensure!(fs::metadata(d.join("b"))?.nlink() == 2);
    ensure!(fs::metadata(d.join("b"))?.ino() == fs::metadata(d.join("c"))?.ino());
    std::os::unix::fs::symlink("b", d.join("s"))?;
    ensure!(fs::read_link(d.join("s"))? == Path::new("b"));
    ensure!(fs::read(d.join("s"))? == b"hello alces");
    fs::remove_file(d.join("b"))?;
    ensure!(fs::read(d.join("c"))? == b"hello alces", "the other link lost its data");
    ensure!(fs::metadata(d.join("c"))?.nlink() == 1);
    fs::remove_file(d.join("c"))?;
    fs::remove_file(d.join("s"))?;
    ensure!(fs::read_dir(&d)?.count() == 0);
    fs::remove_dir(&d)?;
    Ok(())
}

/// 200 MiB written in 1 MiB pieces (crossing four chunk boundaries), read back whole and
/// around each boundary.
/// Requests of kind `op` that all masters answered so far (from their `/metrics`).
fn requests_answered(cluster: &Cluster, op: &str) -> Result<u64> {
    let key = format!("alces_master_request_seconds_count{{op=\"{op}\"}} ");
    let mut total = 0;
    for m in &cluster.file.masters {
        let mut s = std::net::TcpStream::connect(&m.admin_addr)?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", m.admin_addr)?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        ensure!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"), "metrics: {text:.200}");
        total += text.lines().find_map(|l| l.strip_prefix(&key)).map_or(Ok(0), |v| v.trim().parse::<u64>())?;
    }
    Ok(total)
}

/// Round trips the mount saves: a change in a folder returns the folder's new attributes,
/// which answer the kernel's question about the folder before the next change; an open for
/// reading returns where the file's first chunk is, which its first read needs.
fn round_trips_saved(cluster: &Cluster, mnt: &Path) -> Result<()> {
    let d = mnt.join("round-trips");
    fs::create_dir(&d)?;
    let before = requests_answered(cluster, "get_attr")?;
    for i in 0..50 {
        fs::File::create(d.join(format!("e{i}")))?;
    }
    for i in 0..50 {
        fs::remove_file(d.join(format!("e{i}")))?;
    }
    let asked = requests_answered(cluster, "get_attr")? - before;
    ensure!(asked < 20, "{asked} attribute requests for 100 changes in one folder");

    // A small folder is listed in one request, so in one state of the folder.
    for i in 0..30 {
        fs::File::create(d.join(format!("l{i}")))?;
    }
    let before = requests_answered(cluster, "read_dir")?;
    for _ in 0..10 {
        ensure!(fs::read_dir(&d)?.count() == 30, "30 names listed");
    }
    let asked = requests_answered(cluster, "read_dir")? - before;
    ensure!(asked == 10, "{asked} folder reads for 10 listings of a folder of 30 names");
    for i in 0..30 {
        fs::remove_file(d.join(format!("l{i}")))?;
    }

    for i in 0..20 {
        fs::write(d.join(format!("s{i}")), format!("small file {i}"))?;
    }
    // Reads come to the mount, not from the kernel's cache.
    fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the kernel's caches")?;
    let before = requests_answered(cluster, "read_chunk")?;
    for i in 0..20 {
        ensure!(fs::read_to_string(d.join(format!("s{i}")))? == format!("small file {i}"), "content of s{i}");
    }
    let asked = requests_answered(cluster, "read_chunk")? - before;
    ensure!(asked == 0, "{asked} chunk lookups for reading 20 files just opened");
    Ok(())
}

fn big_file(mnt: &Path) -> Result<()> {
    let path = mnt.join("big");
    let piece = |i: u64| pseudo_random_bytes(i + 1, 1 << 20);
    let mut f = fs::File::create(&path)?;
    let mut sums = Vec::new();
    for i in 0..200 {
        let p = piece(i);
        sums.push(checksum(&p));
        f.write_all(&p)?;
    }
    f.sync_all()?;
    drop(f);
    ensure!(fs::metadata(&path)?.len() == 200 << 20);
    let mut f = fs::File::open(&path)?;
    let mut buf = vec![0u8; 1 << 20];
    for (i, want) in sums.iter().enumerate() {
        f.read_exact(&mut buf)?;
        ensure!(checksum(&buf) == *want, "MiB {i} reads back differently");
    }
    for boundary in [64u64 << 20, 128 << 20, 192 << 20] {
        let mut b = vec![0u8; 8192];
        f.seek(SeekFrom::Start(boundary - 4096))?;
        f.read_exact(&mut b)?;
        let i = boundary / (1 << 20);
        ensure!(b[..4096] == piece(i - 1)[(1 << 20) - 4096..], "before the boundary at {boundary}");
        ensure!(b[4096..] == piece(i)[..4096], "after the boundary at {boundary}");
    }
    Ok(())
}

/// Writers on their own files and on disjoint ranges of one shared file, at the same time.
fn concurrent_writers(mnt: &Path) -> Result<()> {
    let d = mnt.join("concurrent");
    fs::create_dir(&d)?;
    let shared = d.join("shared");
    fs::File::create(&shared)?.set_len(8 << 20)?;
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let (d, shared) = (d.clone(), shared.clone());
            std::thread::spawn(move || -> Result<()> {
                let own = pseudo_random_bytes(100 + t, 6 << 20);
                fs::write(d.join(format!("own{t}")), &own)?;
                let part = pseudo_random_bytes(200 + t, 1 << 20);
                let mut f = fs::OpenOptions::new().write(true).open(&shared)?;
                f.seek(SeekFrom::Start(t << 20))?;
                f.write_all(&part)?;
                f.sync_all()?;
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    let all = fs::read(&shared)?;
    for t in 0..6u64 {
        ensure!(fs::read(d.join(format!("own{t}")))? == pseudo_random_bytes(100 + t, 6 << 20), "own file {t}");
        let r = (t as usize) << 20..((t as usize) + 1) << 20;
        ensure!(all[r] == pseudo_random_bytes(200 + t, 1 << 20)[..], "range {t} of the shared file");
    }
    ensure!(all[6 << 20..].iter().all(|&b| b == 0));
    Ok(())
}

fn goal_three(cluster: &Cluster, mnt: &Path) -> Result<()> {
    let d = mnt.join("goal");
    fs::create_dir(&d)?;
    fs::write(d.join("f"), pseudo_random_bytes(5, (64 << 20) + 1000))?;
    let out = alces(cluster, &["setgoal", "-r", "3", &d.display().to_string()])?;
    ensure!(out.contains("changed setting"), "{out}");
    let goal = alces(cluster, &["getgoal", &d.join("f").display().to_string()])?;
    ensure!(goal.trim().ends_with(": 3"), "{goal}");
    wait_for("3 valid copies of every chunk", Duration::from_secs(60), || {
        Ok(valid_copies(cluster, &d.join("f"))? == vec![3, 3])
    })?;
    let text = alces(cluster, &["fileinfo", &d.join("f").display().to_string()])?;
    ensure!(text.matches("status:VALID").count() == 6, "{text}");
    ensure!(fs::read(d.join("f"))? == pseudo_random_bytes(5, (64 << 20) + 1000));
    Ok(())
}

/// `alces ARGS... --json`, parsed.
fn alces_json(cluster: &Cluster, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.push("--json");
    Ok(serde_json::from_str(&alces(cluster, &all)?)?)
}

/// The tools `goal_three` did not run, on its folder (one file of two chunks, 3 copies each):
/// checkfile, dirinfo (-H), getgoal -r, gettrashtime and settrashtime (-r), appendchunks,
/// filerepair.
fn the_other_tools(cluster: &Cluster, mnt: &Path) -> Result<()> {
    let d = mnt.join("goal");
    let (ds, fs_) = (d.display().to_string(), d.join("f").display().to_string());
    let v = alces_json(cluster, &["checkfile", &fs_])?;
    ensure!(v[0]["chunks_by_copies"] == serde_json::json!([{"copies": 3, "chunks": 2}]), "checkfile: {v}");
    let text = alces(cluster, &["checkfile", &fs_])?;
    ensure!(text.lines().any(|l| l.starts_with(" chunks with 3 copies:") && l.ends_with(" 2")), "{text}");

    // 64 MiB + 1000 bytes: 64 MiB and one 64 KiB block of chunk data, each held 3 times.
    let v = alces_json(cluster, &["dirinfo", &ds])?;
    let size = (64 << 20) + 65536u64;
    let want = serde_json::json!({"path": ds, "inodes": 2, "directories": 1, "files": 1, "chunks": 2,
        "length": (64u64 << 20) + 1000, "size": size, "realsize": 3 * size});
    ensure!(v[0] == want, "dirinfo: {v}");
    let text = alces(cluster, &["dirinfo", "-H", &ds])?;
    ensure!(text.contains("64.1 MiB") && text.contains("192.2 MiB"), "dirinfo -H:\n{text}");

    let v = alces_json(cluster, &["getgoal", "-r", &ds])?;
    ensure!(v[0]["goals"] == serde_json::json!([{"value": 3, "files": 1, "directories": 1}]), "getgoal -r: {v}");
    let v = alces_json(cluster, &["settrashtime", "-r", "3600", &ds])?;
    ensure!((v[0]["changed"].as_u64(), v[0]["denied"].as_u64()) == (Some(2), Some(0)), "settrashtime -r: {v}");
    let v = alces_json(cluster, &["gettrashtime", "-r", &ds])?;
    ensure!(v[0]["trashtimes"] == serde_json::json!([{"value": 3600, "files": 1, "directories": 1}]), "{v}");
    let text = alces(cluster, &["gettrashtime", &fs_])?;
    ensure!(text.trim().ends_with(": 3600"), "gettrashtime: {text}");

    // appendchunks: b's chunk follows a's, shared, at the next chunk boundary.
    let (a, b) = (d.join("a"), d.join("b"));
    fs::write(&a, pseudo_random_bytes(31, 1000))?;
    fs::write(&b, pseudo_random_bytes(32, 5000))?;
    alces(cluster, &["appendchunks", &a.display().to_string(), &b.display().to_string()])?;
    // The tool changes the file at the master: the kernel sees it once its cached
    // attributes expire (1 s).
    wait_for("the appended length", Duration::from_secs(5), || Ok(fs::metadata(&a)?.len() == (64 << 20) + 5000))?;
    let got = fs::read(&a)?;
    ensure!(got.len() == (64 << 20) + 5000, "appended file of {} bytes", got.len());
    ensure!(got[..1000] == pseudo_random_bytes(31, 1000)[..] && got[1000..64 << 20].iter().all(|&x| x == 0));
    ensure!(got[64 << 20..] == pseudo_random_bytes(32, 5000)[..], "b's bytes after the boundary");
    let chunk_ids = |p: &Path| -> Result<Vec<u64>> {
        let v = alces_json(cluster, &["fileinfo", &p.display().to_string()])?;
        Ok(v[0]["chunks"].as_array().context("chunks")?.iter().filter_map(|c| c["chunk"].as_u64()).collect())
    };
    let (ca, cb) = (chunk_ids(&a)?, chunk_ids(&b)?);
    ensure!(ca.len() == 2 && cb.len() == 1 && ca[1] == cb[0], "a's chunks {ca:?}, b's {cb:?}");

    // filerepair on a healthy file changes nothing.
    let v = alces_json(cluster, &["filerepair", &fs_])?;
    ensure!(
        (v[0]["not_changed"].as_u64(), v[0]["erased"].as_u64(), v[0]["repaired"].as_u64())
            == (Some(2), Some(0), Some(0)),
        "{v}"
    );
    ensure!(fs::read(d.join("f"))? == pseudo_random_bytes(5, (64 << 20) + 1000));
    fs::remove_file(&a)?;
    fs::remove_file(&b)?;
    Ok(())
}

/// A deleted file restored through the meta mount's trash/undel/, then one deleted while open
/// seen in reserved/.
fn trash_restore(cluster: &mut Cluster, mnt: &Path, meta: &Path) -> Result<()> {
    let d = mnt.join("trashy");
    fs::create_dir(&d)?;
    let data = pseudo_random_bytes(77, 300_000);
    fs::write(d.join("doc"), &data)?;
    fs::remove_file(d.join("doc"))?;
    ensure!(!d.join("doc").exists());
    cluster.mount(meta, true, &[])?;
    let trash = meta.join("trash");
    let entry = fs::read_dir(&trash)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with("trashy|doc"))
        .with_context(|| format!("no trash entry for trashy/doc in {:?}", fs::read_dir(&trash).map(|r| r.count())))?;
    fs::rename(trash.join(&entry), trash.join("undel").join(&entry))?;
    wait_for("the restored file", Duration::from_secs(10), || Ok(d.join("doc").exists()))?;
    ensure!(fs::read(d.join("doc"))? == data, "the restored file differs");

    // With no trash time, a file deleted while open is listed in reserved/ until closed.
    let r = mnt.join("reserving");
    fs::create_dir(&r)?;
    alces(cluster, &["settrashtime", "0", &r.display().to_string()])?;
    fs::write(r.join("held"), b"still here")?;
    let mut held = fs::File::open(r.join("held"))?;
    fs::remove_file(r.join("held"))?;
    let reserved = |meta: &Path| -> Result<bool> {
        Ok(fs::read_dir(meta.join("reserved"))?.filter_map(|e| e.ok()).any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with("reserving|held") && n.split('|').next().is_some_and(|i| u64::from_str_radix(i, 16).is_ok())
        }))
    };
    wait_for("a reserved/ entry for the file deleted while open", Duration::from_secs(5), || reserved(meta))?;
    let mut back = Vec::new();
    held.read_to_end(&mut back)?;
    ensure!(back == b"still here", "the open handle reads {back:?}");
    drop(held);
    wait_for("the reserved entry to go once the file is closed", Duration::from_secs(10), || Ok(!reserved(meta)?))?;
    Ok(())
}

fn snapshot_is_unchanged_by_later_writes(cluster: &Cluster, mnt: &Path) -> Result<()> {
    let d = mnt.join("snap");
    fs::create_dir(&d)?;
    let data = pseudo_random_bytes(9, 3 << 20);
    fs::write(d.join("src"), &data)?;
    alces(cluster, &["makesnapshot", &d.join("src").display().to_string(), &d.join("copy").display().to_string()])?;
    ensure!(fs::read(d.join("copy"))? == data);
    let mut f = fs::OpenOptions::new().write(true).open(d.join("src"))?;
    f.seek(SeekFrom::Start(1 << 20))?;
    f.write_all(&[0xEE; 70_000])?;
    f.sync_all()?;
    drop(f);
    ensure!(fs::read(d.join("copy"))? == data, "the snapshot changed with its source");
    let src = fs::read(d.join("src"))?;
    ensure!(src[(1 << 20)..(1 << 20) + 70_000].iter().all(|&b| b == 0xEE) && src[..1 << 20] == data[..1 << 20]);
    Ok(())
}

#[test]
fn a_mount_does_files_tools_trash_snapshots_and_posix() -> Result<()> {
    let dir = alces_testkit::temp_dir("alces-mount-");
    let mnt = dir.path().join("mnt");
    let mut cluster = start(dir.path(), Some(mnt.clone()), None, 1)?;
    df_shows_the_cluster_space(&cluster, &mnt).context("df")?;
    kernel_read_ahead_is_raised(&mnt).context("kernel read-ahead")?;
    basic_file_operations(&mnt).context("basic file operations")?;
    round_trips_saved(&cluster, &mnt).context("round trips saved")?;
    big_file(&mnt).context("a 200 MiB file")?;
    concurrent_writers(&mnt).context("concurrent writers")?;
    goal_three(&cluster, &mnt).context("setgoal -r 3")?;
    the_other_tools(&cluster, &mnt).context("the other tools")?;
    trash_restore(&mut cluster, &mnt, &dir.path().join("meta")).context("trash restore")?;
    snapshot_is_unchanged_by_later_writes(&cluster, &mnt).context("snapshot")?;
    let suite = mnt.join("posix");
    fs::create_dir(&suite)?;
    let results = posix::run_all(&suite);
    let failed: Vec<String> =
        results.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}"))).collect();
    eprintln!("POSIX suite: {} checks, {} failed", results.len(), failed.len());
    ensure!(failed.is_empty(), "POSIX checks failed:\n{}", failed.join("\n"));
    Ok(())
}

#[test]
fn exports_refuse_a_wrong_password_and_a_read_only_export_gives_erofs() -> Result<()> {
    let dir = alces_testkit::temp_dir("alces-exports-");
    let exports = "*\t/pub\tro,maproot=0\n*\t/\trw,alldirs,maproot=0,password=sesame\n*\t.\trw\n";
    let mut cluster = start(dir.path(), None, Some(exports), 1)?;
    let masters = cluster.client_addrs().join(",");
    let mount_bin = cluster.bin_dir.join("alces-mount");

    let wrong = dir.path().join("wrong");
    fs::create_dir_all(&wrong)?;
    let out = Command::new(&mount_bin)
        .args([wrong.to_str().unwrap(), "-f", "-H", &masters, "-o", "password=open-up"])
        .output()?;
    ensure!(!out.status.success(), "a wrong password was accepted");
    ensure!(!alces_ops::launcher::is_mounted(&wrong));
    let text = String::from_utf8_lossy(&out.stderr);
    ensure!(text.to_lowercase().contains("password") || text.contains("refused"), "unclear refusal: {text}");

    // `-p` without `-f`: the password typed once reaches the mount that goes to the background.
    let asked = dir.path().join("asked");
    fs::create_dir_all(&asked)?;
    let mut child = Command::new(&mount_bin)
        .args([asked.to_str().unwrap(), "-p", "-H", &masters])
        .env("ALCES_MOUNT_LOG", dir.path().join("asked.log"))
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("stdin").write_all(b"sesame\n")?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "mount -p: {}", String::from_utf8_lossy(&out.stderr));
    let answered = alces_ops::launcher::is_mounted(&asked);
    alces_ops::launcher::unmount(&asked);
    ensure!(answered, "mount -p returned without mounting");

    // The fstab form: mount(8) runs /sbin/mount.fuse.alces (alces-mount) with the line's options.
    let helper = Path::new("/sbin/mount.fuse.alces");
    if fs::symlink_metadata(helper).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(helper)?;
    }
    std::os::unix::fs::symlink(&mount_bin, helper)?;
    let _helper = RemoveOnDrop(helper.to_path_buf());
    let fstab = dir.path().join("fstab");
    fs::create_dir_all(&fstab)?;
    let out = Command::new("mount")
        .args(["-t", "fuse.alces", &masters, fstab.to_str().unwrap()])
        .args(["-o", "password=sesame,noatime,nofail,_netdev,x-systemd.automount"])
        .env("ALCES_MOUNT_LOG", dir.path().join("fstab.log"))
        .output()?;
    let answered = alces_ops::launcher::is_mounted(&fstab);
    alces_ops::launcher::unmount(&fstab);
    ensure!(out.status.success() && answered, "mount -t fuse.alces: {}", String::from_utf8_lossy(&out.stderr));

    let rw = dir.path().join("rw");
    cluster.mount(&rw, false, &["-o".into(), "password=sesame".into()])?;
    fs::create_dir(rw.join("pub"))?;
    fs::write(rw.join("pub/readme"), b"read me")?;

    let ro = dir.path().join("ro");
    cluster.mount(&ro, false, &["-S".into(), "/pub".into()])?;
    ensure!(fs::read(ro.join("readme"))? == b"read me");
    for (what, r) in [
        ("create", fs::write(ro.join("new"), b"x").map(|_| ())),
        ("write", fs::OpenOptions::new().write(true).open(ro.join("readme")).map(|_| ())),
        ("mkdir", fs::create_dir(ro.join("dir"))),
        ("unlink", fs::remove_file(ro.join("readme"))),
    ] {
        match r {
            Err(e) if e.raw_os_error() == Some(nix::libc::EROFS) => {}
            other => bail!("{what} on a ro export: expected EROFS, got {other:?}"),
        }
    }
    ensure!(fs::read(rw.join("pub/readme"))? == b"read me");
    Ok(())
}

#[test]
fn a_workload_keeps_running_while_the_leader_is_killed() -> Result<()> {
    let dir = alces_testkit::temp_dir("alces-mount-failover-");
    let mnt = dir.path().join("mnt");
    // The default delay: repairs must not touch chunks written under the old leader's leases.
    let mut cluster = start(dir.path(), Some(mnt.clone()), None, 30)?;
    let mut work = FileWorkload::start(&[mnt.join("w0"), mnt.join("w1")])?;
    for kill in 0..2 {
        work.progress(3, Duration::from_secs(60))?;
        let leader = cluster.wait_leader(Duration::from_secs(30))?;
        eprintln!("kill {kill}: SIGKILL to master {leader}");
        cluster.kill_master(leader, Signal::SIGKILL)?;
        let killed_at = Instant::now();
        work.progress(1, Duration::from_secs(60)).context("a file done after the kill")?;
        eprintln!("kill {kill}: next file done {:?} after the kill", killed_at.elapsed());
        work.progress(3, Duration::from_secs(60)).context("progress after the kill")?;
        cluster.start_master(leader)?;
    }
    let files = work.stop_and_verify()?;
    eprintln!("{files} files written and verified across 2 leader kills");
    Ok(())
}

/// A file that one mount reads while another deletes it (no trash time) stays readable
/// through the open descriptor, also when the leader that saw the open is killed before the
/// delete (leaders keep such handles in memory; the mount tells the new one), and is freed
/// once the descriptor is closed.
#[test]
fn a_file_deleted_while_open_elsewhere_stays_readable_across_a_leader_kill() -> Result<()> {
    let dir = alces_testkit::temp_dir("alces-mount-held-");
    let (reader, deleter) = (dir.path().join("reader"), dir.path().join("deleter"));
    let mut cluster = start(dir.path(), None, None, 30)?;
    cluster.mount(&reader, false, &[])?;
    cluster.mount(&deleter, false, &[])?;
    fs::create_dir(reader.join("held"))?;
    alces(&cluster, &["settrashtime", "0", &reader.join("held").display().to_string()])?;
    // Two chunks: the second one's servers are asked for only after the delete.
    let data = pseudo_random_bytes(5, 66 << 20);
    let second = 64 << 20;
    for failover in [false, true] {
        let name = format!("held/f{failover}");
        fs::write(reader.join(&name), &data)?;
        let mut f = fs::File::open(reader.join(&name))?;
        let mut head = vec![0u8; 1 << 20];
        f.read_exact(&mut head)?;
        ensure!(head == data[..1 << 20], "the head of {name} differs");
        let killed = if failover {
            let leader = cluster.wait_leader(Duration::from_secs(30))?;
            cluster.kill_master(leader, Signal::SIGKILL)?;
            Some(leader)
        } else {
            None
        };
        fs::remove_file(deleter.join(&name)).context("unlink through the other mount")?;
        // The leader looks for files to free every second, and at once after an unlink.
        std::thread::sleep(Duration::from_secs(4));
        let inodes = cluster.view().context("no master answers")?.inodes;
        f.seek(SeekFrom::Start(second))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).with_context(|| format!("reading the deleted {name} (failover: {failover})"))?;
        ensure!(tail == data[second as usize..], "the tail of the deleted {name} differs");
        drop(f);
        wait_for("the closed file to be freed", Duration::from_secs(30), || {
            Ok(cluster.view().is_some_and(|v| v.leader.is_some() && v.inodes < inodes))
        })?;
        if let Some(id) = killed {
            cluster.start_master(id)?;
        }
    }
    Ok(())
}

/// A write-out that fails (every chunkserver down) keeps its data. The failure reaches the
/// call that asked for the write-out (here the close of a second descriptor, as the close in
/// a forked child would be), and a later `fsync` of the first descriptor, once the
/// chunkservers are back, writes the data: it must not succeed with nothing to do. The same
/// for a write-out in the background: a later write fails, and what was accepted is written
/// by the `fsync` once the chunkservers are back.
#[test]
fn a_failed_write_out_keeps_its_data_for_the_next_fsync() -> Result<()> {
    let dir = alces_testkit::temp_dir("alces-mount-keep-");
    let mnt = dir.path().join("mnt");
    let mut cluster = start(dir.path(), None, None, 30)?;
    cluster.mount(&mnt, false, &["-o".into(), "retrytime=3".into()])?;
    let path = mnt.join("kept");
    let mut f = fs::File::create(&path)?;
    f.write_all(b"first;")?;
    f.sync_all()?;
    // The chunkservers go first: a test running alongside that forks gives its child a copy
    // of this descriptor, and the child's close at exec flushes the file too; with the
    // chunkservers up, that could write the bytes out before the close below asks.
    for id in 1..=3 {
        cluster.kill_chunkserver(id, Signal::SIGKILL)?;
    }
    f.write_all(b"second;")?;
    let dup = nix::unistd::dup(&f)?;
    let closed = nix::unistd::close(dup);
    ensure!(
        closed == Err(nix::errno::Errno::EIO),
        "the close whose write-out failed returned {closed:?}; the processes:{}",
        cluster.log_tails(40)
    );
    // A big file: its first full buffer goes to a write-out in the background, which fails;
    // the write that finds the next buffer full tries it again, fails, and is refused.
    let buffer_mib = alces_client::fs::Options::default().flush_at >> 20;
    let big_path = mnt.join("big");
    let mut big = fs::File::create(&big_path)?;
    let piece = |i: usize| pseudo_random_bytes(i as u64, 1 << 20);
    let mut accepted = 0;
    for i in 0..4 * buffer_mib {
        if big.write_all(&piece(i)).is_err() {
            break;
        }
        accepted += 1;
    }
    ensure!(
        (buffer_mib + 1..4 * buffer_mib).contains(&accepted),
        "{accepted} MiB accepted with every chunkserver down (buffers of {buffer_mib} MiB)"
    );
    for id in 1..=3 {
        cluster.start_chunkserver(id)?;
    }
    cluster.wait_chunkservers(3, Duration::from_secs(60))?;
    f.write_all(b"third;")?;
    f.sync_all().context("fsync once the chunkservers are back")?;
    drop(f);
    let got = fs::read(&path)?;
    ensure!(got == b"first;second;third;", "read back {:?}", String::from_utf8_lossy(&got));
    big.sync_all().context("fsync of the big file once the chunkservers are back")?;
    drop(big);
    let got = fs::read(&big_path)?;
    ensure!(got.len() >= accepted << 20, "{} bytes read back, {accepted} MiB accepted", got.len());
    for i in 0..accepted {
        ensure!(got[i << 20..(i + 1) << 20] == piece(i)[..], "MiB {i} of the big file differs");
    }
    eprintln!("{accepted} MiB accepted while the chunkservers were down, all read back");
    Ok(())
}

/// tmpfs file systems mounted by a test, unmounted when it ends (after the cluster that
/// uses them is down: declare this first).
struct Tmpfs(Vec<PathBuf>);

impl Tmpfs {
    fn mount(&mut self, at: &Path, size: &str) -> Result<()> {
        let ok =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status()?;
        ensure!(ok.success(), "mounting a tmpfs at {}: {ok}", at.display());
        self.0.push(at.to_path_buf());
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for at in &self.0 {
            let _ = Command::new("umount").arg("-l").arg(at).status();
        }
    }
}

/// Removes a file when dropped (a helper the test put in place).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The errno of a failed write-out: from the write that found its buffer full, or from the
/// `fsync`. `None` when both succeeded.
fn write_out_errno(f: &mut fs::File, data: &[u8]) -> Option<i32> {
    f.write_all(data).and_then(|()| f.sync_all()).err().map(|e| e.raw_os_error().unwrap_or(0))
}

/// When every chunkserver's disks are full, a write-out fails with ENOSPC (as on MooseFS),
/// for a new chunk and for one that exists, after a try or two rather than after every
/// retry (it was EIO after 8 tries); and what was written before stays readable.
#[test]
fn a_full_cluster_answers_enospc_and_keeps_what_it_has() -> Result<()> {
    let dir = alces_testkit::temp_dir("alces-mount-full-");
    let mut disks = Tmpfs(Vec::new());
    let mnt = dir.path().join("mnt");
    let mut cluster = start(dir.path(), None, None, 30)?;
    // Every data folder on a small file system of its own: 3 servers x 2 x 100 MiB (a folder
    // takes a new chunk only while it has room for a whole one).
    for cs in cluster.file.chunkservers.clone() {
        cluster.kill_chunkserver(cs.id, Signal::SIGTERM)?;
        for folder in &cs.folders {
            fs::remove_dir_all(folder)?;
            fs::create_dir(folder)?;
            disks.mount(folder, "100m")?;
        }
        cluster.start_chunkserver(cs.id)?;
    }
    cluster.wait_chunkservers(3, Duration::from_secs(60))?;
    cluster.mount(&mnt, false, &[])?;
    let before = pseudo_random_bytes(11, 20 << 20);
    fs::write(mnt.join("before"), &before)?;

    let mut big = fs::File::create(mnt.join("big"))?;
    let started = Instant::now();
    let mut errno = None;
    for i in 0..600 {
        errno = write_out_errno(&mut big, &pseudo_random_bytes(i, 1 << 20));
        if errno.is_some() {
            break;
        }
    }
    ensure!(errno == Some(libc::ENOSPC), "filling the cluster ended with errno {errno:?}, not ENOSPC");
    eprintln!("ENOSPC for a new chunk {:?} after the first write", started.elapsed());
    drop(big);

    // What room the folders have left (below a whole chunk's) taken by other files: the
    // chunk of `before` cannot grow.
    for folder in cluster.file.chunkservers.iter().flat_map(|c| c.folders.iter()) {
        let mut filler = fs::File::create(folder.join("filler"))?;
        for size in [1 << 20, 4096] {
            while filler.write_all(&vec![0xa5; size]).is_ok() {}
        }
    }
    let mut grow = fs::OpenOptions::new().append(true).open(mnt.join("before"))?;
    let errno = write_out_errno(&mut grow, &pseudo_random_bytes(12, 40 << 20));
    ensure!(
        errno == Some(libc::ENOSPC),
        "growing a file in a full cluster ended with errno {errno:?}; the processes:{}",
        cluster.log_tails(20)
    );
    drop(grow);
    // Until the release of that descriptor (which the kernel sends after the close returns)
    // drops the bytes that could not be written, a read tries to write them first and fails.
    let mut got = Vec::new();
    wait_for("the file written before to read back", Duration::from_secs(30), || {
        got = fs::read(mnt.join("before"))?;
        Ok(true)
    })?;
    ensure!(got.len() == before.len(), "{} bytes read back, {} written", got.len(), before.len());
    ensure!(checksum(&got) == checksum(&before), "the file written before differs");
    drop(cluster);
    Ok(())
}

/// A chunkserver that stops answering (SIGSTOP: its sockets stay open, nothing comes back)
/// delays a read by the hedge delay, not by the 30 s a call may wait: the mount asks the next
/// replica once the first is slow, and asks the slow server last for a while after. Each of
/// the two servers holding the file is stopped in turn, so at least one round stops the
/// server a read asks first. A write through a chain with a stopped server gives the chain up
/// after 5 s without an answer (it waited 20 s) and goes on without that server.
#[test]
fn reads_and_writes_go_around_a_chunkserver_that_stops_answering() -> Result<()> {
    let dir = alces_testkit::temp_dir("alces-mount-hung-");
    let mnt = dir.path().join("mnt");
    let cluster = start(dir.path(), Some(mnt.clone()), None, 30)?;
    let data = pseudo_random_bytes(9, 8 << 20);
    let path = mnt.join("hedged");
    fs::write(&path, &data)?;
    let text = alces(&cluster, &["fileinfo", "--json", &path.display().to_string()])?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let holders: Vec<String> = v[0]["chunks"][0]["copies"]
        .as_array()
        .context("copies")?
        .iter()
        .filter_map(|c| c["addr"].as_str().map(str::to_string))
        .collect();
    ensure!(holders.len() == 2, "the chunk has copies on {holders:?}, not on 2 servers");
    for addr in &holders {
        fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the kernel's caches")?;
        let (id, took, read) = while_stopped(&cluster, addr, || fs::read(&path))?;
        let read = read.with_context(|| format!("reading with chunkserver {id} stopped"))?;
        eprintln!("chunkserver {id} ({addr}) stopped: 8 MiB read in {took:?}");
        ensure!(read == data, "the file reads back differently with chunkserver {id} stopped");
        ensure!(took < Duration::from_secs(10), "the read waited {took:?} for the stopped chunkserver {id}");
        wait_for("both copies valid again", Duration::from_secs(30), || Ok(valid_copies(&cluster, &path)? == [2]))?;
    }
    let patch = pseudo_random_bytes(10, 4096);
    let (id, took, written) = while_stopped(&cluster, &holders[0], || -> Result<()> {
        let mut f = fs::OpenOptions::new().write(true).open(&path)?;
        f.seek(SeekFrom::Start(1 << 20))?;
        f.write_all(&patch)?;
        f.sync_all()?;
        Ok(())
    })?;
    written.with_context(|| format!("writing with chunkserver {id} stopped"))?;
    eprintln!("chunkserver {id} stopped: 4 KiB written and synced in {took:?}");
    ensure!(took < Duration::from_secs(12), "the write waited {took:?} for the stopped chunkserver {id}");
    fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the kernel's caches")?;
    let mut want = data;
    want[1 << 20..(1 << 20) + 4096].copy_from_slice(&patch);
    ensure!(fs::read(&path)? == want, "the file reads back differently after the write");
    Ok(())
}

/// Runs `action` while the chunkserver at `addr` is stopped (SIGSTOP, SIGCONT after): the
/// server's id, how long the action took, and what it returned.
fn while_stopped<T>(cluster: &Cluster, addr: &str, action: impl FnOnce() -> T) -> Result<(u64, Duration, T)> {
    use nix::unistd::Pid;
    let cs = cluster.file.chunkservers.iter().find(|c| c.addr == addr).context("a holder")?;
    let pid = Pid::from_raw(cs.pid as i32);
    nix::sys::signal::kill(pid, Signal::SIGSTOP)?;
    let started = Instant::now();
    let out = action();
    let took = started.elapsed();
    nix::sys::signal::kill(pid, Signal::SIGCONT)?;
    Ok((cs.id, took, out))
}
