//! `alces`: the user tools, working on paths inside a mounted Alces file system.
//!
//! ```text
//! alces fileinfo PATH...            chunks of a file and where their copies are
//! alces checkfile PATH...           how many chunks have how many valid copies
//! alces dirinfo [-H] PATH...        what a tree holds
//! alces getgoal [-r] PATH...        alces setgoal [-r] GOAL PATH...
//! alces gettrashtime [-r] PATH...   alces settrashtime [-r] SECONDS PATH...
//! alces makesnapshot SRC DST        alces filerepair PATH...   alces appendchunks DST SRC...
//! alces admin status|add|remove|transfer-leader|snapshot   the metadata cluster (admin API)
//! ```
//! Every command takes `--json`. The file tools find the cluster through the `.masterinfo`
//! file at the root of the mount (as MooseFS's tools do) and open a session of their own that
//! works with the mount's rules; `alces admin` talks to the masters' admin API
//! (`alces_client::admin`).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use alces_client::admin::AdminArgs;
use alces_client::fs::MASTERINFO_NAME;
use alces_client::human;
use alces_client::master_link::{MasterClient, Options};
use alces_proto::link::client_master::{ChunkReport, ClientReply, ClientRequest, DirSummary, SettingCounts};
use alces_proto::types::{Creds, Goal, Inode, Name, SessionId, TrashTime};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "alces", about = "Alces tools for files and directories inside a mount, and for the cluster", version)]
struct Cli {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the chunks of files and the servers holding their copies.
    Fileinfo { paths: Vec<PathBuf> },
    /// Count the chunks of files by number of valid copies.
    Checkfile { paths: Vec<PathBuf> },
    /// Summarize trees: inodes, files, chunks, length, size.
    Dirinfo {
        /// Sizes in human units (KiB, MiB ...).
        #[arg(short = 'H')]
        human: bool,
        paths: Vec<PathBuf>,
    },
    /// Show the goal (number of copies) of files and directories.
    Getgoal {
        #[arg(short = 'r')]
        recursive: bool,
        paths: Vec<PathBuf>,
    },
    /// Set the goal (1 to 9); `-r` for every file and directory below.
    Setgoal {
        #[arg(short = 'r')]
        recursive: bool,
        goal: u8,
        paths: Vec<PathBuf>,
    },
    /// Show how long deleted files stay in the trash (seconds).
    Gettrashtime {
        #[arg(short = 'r')]
        recursive: bool,
        paths: Vec<PathBuf>,
    },
    /// Set how long deleted files stay in the trash (seconds).
    Settrashtime {
        #[arg(short = 'r')]
        recursive: bool,
        seconds: u32,
        paths: Vec<PathBuf>,
    },
    /// Copy a file or tree cheaply: the copy shares chunks until either side is written.
    Makesnapshot { src: PathBuf, dst: PathBuf },
    /// Make damaged files readable: chunks with no valid copy on a connected chunkserver take
    /// the newest copy a connected server has, or become holes.
    Filerepair { paths: Vec<PathBuf> },
    /// Append the chunks of SRC files to DST (shared, like a snapshot).
    Appendchunks { dst: PathBuf, srcs: Vec<PathBuf> },
    /// The metadata cluster: status, add/remove a master, move leadership, snapshot.
    Admin(AdminArgs),
}

/// What `.masterinfo` says.
#[derive(serde::Deserialize)]
struct MasterInfo {
    masters: Vec<String>,
    path: String,
    session: Option<u64>,
}

/// The mount a path is in: its root folder and what `.masterinfo` says.
fn find_mount(path: &Path) -> Result<(PathBuf, MasterInfo)> {
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    for dir in abs.ancestors() {
        let info = dir.join(MASTERINFO_NAME);
        let Ok(text) = std::fs::read_to_string(&info) else { continue };
        if let Ok(mi) = serde_json::from_str::<MasterInfo>(&text) {
            return Ok((dir.to_path_buf(), mi));
        }
    }
    bail!("{} is not inside an Alces mount (no {MASTERINFO_NAME} above it)", path.display())
}

struct Tool {
    client: MasterClient,
    creds: Creds,
    mount: PathBuf,
}

impl Tool {
    async fn connect(any_path: &Path) -> Result<Tool> {
        let (mount, mi) = find_mount(any_path)?;
        let mut opts = Options::new(mi.masters);
        opts.path = mi.path;
        opts.tool_of = mi.session.map(SessionId);
        opts.client_name = format!("alces tool in {}", mount.display());
        opts.retry_for = std::time::Duration::from_secs(30);
        let client = MasterClient::connect(opts).await.context("connecting to the masters")?;
        let creds = Creds {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            groups: nix::unistd::getgroups().map(|g| g.iter().map(|g| g.as_raw()).collect()).unwrap_or_default(),
        };
        Ok(Tool { client, creds, mount })
    }

    /// The inode of a path inside the mount (its inode number is the cluster's).
    fn inode(&self, path: &Path) -> Result<Inode> {
        let md = std::fs::symlink_metadata(path).with_context(|| format!("{}", path.display()))?;
        let abs = std::path::absolute(path)?;
        if !abs.starts_with(&self.mount) {
            bail!("{} is not in the mount at {}", path.display(), self.mount.display());
        }
        Ok(Inode(md.ino()))
    }

    async fn call(&self, req: ClientRequest) -> Result<ClientReply> {
        self.client.call(&self.creds, req).await.map_err(|e| anyhow!("{e}"))
    }
}

fn fileinfo_text(path: &Path, chunks: &[ChunkReport]) -> String {
    let mut s = format!("{}:\n", path.display());
    if chunks.is_empty() {
        s.push_str("\tno chunks - empty file\n");
    }
    for c in chunks {
        s.push_str(&format!(
            "\tchunk {}: {}_{:08X} / (id:{} ver:{})\n",
            c.index,
            c.chunk.hex(),
            c.version.0,
            c.chunk.0,
            c.version.0
        ));
        if c.copies.is_empty() {
            s.push_str("\t\tno valid copies !!!\n");
        }
        for (i, (loc, valid)) in c.copies.iter().enumerate() {
            let status = if *valid { "VALID" } else { "INVALID" };
            s.push_str(&format!("\t\tcopy {}: {} (id:{} status:{status})\n", i + 1, loc.addr, loc.id));
        }
    }
    s
}

fn chunk_json(c: &ChunkReport) -> serde_json::Value {
    json!({
        "index": c.index,
        "chunk": c.chunk.0,
        "version": c.version.0,
        "goal": c.goal.0,
        "valid_copies": c.copies.iter().filter(|(_, v)| *v).count(),
        "copies": c.copies.iter().map(|(l, v)| json!({"server": l.id.0, "addr": l.addr, "valid": v})).collect::<Vec<_>>(),
    })
}

/// Chunks by number of valid copies: (copies, chunks).
fn copy_counts(chunks: &[ChunkReport]) -> Vec<(usize, u64)> {
    let mut m = std::collections::BTreeMap::new();
    for c in chunks {
        *m.entry(c.copies.iter().filter(|(_, v)| *v).count()).or_insert(0u64) += 1;
    }
    m.into_iter().collect()
}

fn dirinfo_text(path: &Path, d: &DirSummary, h: bool) -> String {
    let size = |n: u64| if h { human(n) } else { n.to_string() };
    format!(
        "{}:\n inodes:       {:>12}\n  directories: {:>12}\n  files:       {:>12}\n chunks:       {:>12}\n length:       {:>12}\n size:         {:>12}\n realsize:     {:>12}\n",
        path.display(),
        d.inodes,
        d.directories,
        d.files,
        d.chunks,
        size(d.length),
        size(d.size),
        size(d.realsize)
    )
}

fn settings_text(path: &Path, what: &str, counts: &SettingCounts, recursive: bool) -> String {
    if !recursive {
        if let Some((v, _, _)) = counts.first() {
            return format!("{}: {v}\n", path.display());
        }
    }
    let mut s = format!("{}:\n", path.display());
    for (v, files, dirs) in counts {
        s.push_str(&format!(" files with {what} {v:>10} : {files:>10}\n"));
        s.push_str(&format!(" directories with {what} {v:>4} : {dirs:>10}\n"));
    }
    s
}

fn settings_json(counts: &SettingCounts) -> serde_json::Value {
    counts.iter().map(|(v, f, d)| json!({"value": v, "files": f, "directories": d})).collect()
}

fn change_text(path: &Path, reply: &ClientReply) -> String {
    match reply {
        ClientReply::Counts { changed, unchanged, denied } => format!(
            "{}:\n inodes with changed setting:     {changed:>10}\n inodes with unchanged setting:   {unchanged:>10}\n inodes with permission denied:   {denied:>10}\n",
            path.display()
        ),
        _ => format!("{}: done\n", path.display()),
    }
}

fn change_json(path: &Path, reply: &ClientReply) -> serde_json::Value {
    match reply {
        ClientReply::Counts { changed, unchanged, denied } => {
            json!({"path": path, "changed": changed, "unchanged": unchanged, "denied": denied})
        }
        _ => json!({"path": path, "changed": 1, "unchanged": 0, "denied": 0}),
    }
}

fn parent_and_name(path: &Path) -> Result<(PathBuf, Name)> {
    let abs = std::path::absolute(path)?;
    let name = abs.file_name().ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let parent = abs.parent().ok_or_else(|| anyhow!("{} has no parent", path.display()))?.to_path_buf();
    Ok((parent, Name::new(name.as_bytes().to_vec()).map_err(|e| anyhow!("{}: {e}", path.display()))?))
}

/// Runs one command; returns the text (or JSON values) to print and whether all went well.
async fn run(cli: &Cli) -> Result<bool> {
    let first = match &cli.cmd {
        Cmd::Fileinfo { paths }
        | Cmd::Checkfile { paths }
        | Cmd::Dirinfo { paths, .. }
        | Cmd::Getgoal { paths, .. }
        | Cmd::Setgoal { paths, .. }
        | Cmd::Gettrashtime { paths, .. }
        | Cmd::Settrashtime { paths, .. }
        | Cmd::Filerepair { paths } => paths.first().cloned(),
        Cmd::Makesnapshot { src, .. } => Some(src.clone()),
        Cmd::Appendchunks { dst, .. } => Some(dst.clone()),
        Cmd::Admin(_) => bail!("alces admin runs without a mount"),
    };
    let Some(first) = first else { bail!("no path given") };
    let tool = Tool::connect(&first).await?;
    let mut ok = true;
    let mut out_json = Vec::new();
    let mut emit = |text: String, value: serde_json::Value| {
        if cli.json {
            out_json.push(value);
        } else {
            print!("{text}");
        }
    };
    let mut fail = |path: &Path, e: anyhow::Error| {
        eprintln!("{}: {e:#}", path.display());
        ok = false;
    };
    match &cli.cmd {
        Cmd::Fileinfo { paths } | Cmd::Checkfile { paths } => {
            let check = matches!(cli.cmd, Cmd::Checkfile { .. });
            for p in paths {
                let r = async { tool.call(ClientRequest::FileInfo { inode: tool.inode(p)? }).await }.await;
                match r {
                    Ok(ClientReply::FileInfo(chunks)) if check => {
                        let counts = copy_counts(&chunks);
                        let mut text = format!("{}:\n", p.display());
                        for (copies, n) in &counts {
                            text.push_str(&format!(
                                " chunks with {copies} cop{}: {n:>10}\n",
                                if *copies == 1 { "y" } else { "ies" }
                            ));
                        }
                        let j: Vec<_> = counts.iter().map(|(c, n)| json!({"copies": c, "chunks": n})).collect();
                        emit(text, json!({"path": p, "chunks_by_copies": j}));
                    }
                    Ok(ClientReply::FileInfo(chunks)) => emit(
                        fileinfo_text(p, &chunks),
                        json!({"path": p, "chunks": chunks.iter().map(chunk_json).collect::<Vec<_>>()}),
                    ),
                    Ok(other) => fail(p, anyhow!("unexpected answer {other:?}")),
                    Err(e) => fail(p, e),
                }
            }
        }
        Cmd::Dirinfo { human, paths } => {
            for p in paths {
                match async { tool.call(ClientRequest::DirInfo { inode: tool.inode(p)? }).await }.await {
                    Ok(ClientReply::DirInfo(d)) => emit(
                        dirinfo_text(p, &d, *human),
                        json!({"path": p, "inodes": d.inodes, "directories": d.directories, "files": d.files,
                               "chunks": d.chunks, "length": d.length, "size": d.size, "realsize": d.realsize}),
                    ),
                    Ok(other) => fail(p, anyhow!("unexpected answer {other:?}")),
                    Err(e) => fail(p, e),
                }
            }
        }
        Cmd::Getgoal { recursive, paths } | Cmd::Gettrashtime { recursive, paths } => {
            let goal = matches!(cli.cmd, Cmd::Getgoal { .. });
            for p in paths {
                let r = async {
                    let inode = tool.inode(p)?;
                    let req = if goal {
                        ClientRequest::GetGoal { inode, recursive: *recursive }
                    } else {
                        ClientRequest::GetTrashTime { inode, recursive: *recursive }
                    };
                    tool.call(req).await
                }
                .await;
                match r {
                    Ok(ClientReply::Goals(c)) | Ok(ClientReply::TrashTimes(c)) => emit(
                        settings_text(p, if goal { "goal" } else { "trashtime" }, &c, *recursive),
                        json!({"path": p, if goal { "goals" } else { "trashtimes" }: settings_json(&c)}),
                    ),
                    Ok(other) => fail(p, anyhow!("unexpected answer {other:?}")),
                    Err(e) => fail(p, e),
                }
            }
        }
        Cmd::Setgoal { recursive, goal, paths } => {
            let g = Goal::new(*goal).map_err(|e| anyhow!("goal {goal}: {e}"))?;
            for p in paths {
                let r = async {
                    tool.call(ClientRequest::SetGoal { inode: tool.inode(p)?, goal: g, recursive: *recursive }).await
                }
                .await;
                match r {
                    Ok(reply) => emit(change_text(p, &reply), change_json(p, &reply)),
                    Err(e) => fail(p, e),
                }
            }
        }
        Cmd::Settrashtime { recursive, seconds, paths } => {
            for p in paths {
                let r = async {
                    let req = ClientRequest::SetTrashTime {
                        inode: tool.inode(p)?,
                        trash_time: TrashTime(*seconds),
                        recursive: *recursive,
                    };
                    tool.call(req).await
                }
                .await;
                match r {
                    Ok(reply) => emit(change_text(p, &reply), change_json(p, &reply)),
                    Err(e) => fail(p, e),
                }
            }
        }
        Cmd::Makesnapshot { src, dst } => {
            let r = async {
                // Into an existing directory: keep the source's name there.
                let (parent, name) = if dst.is_dir() {
                    let n = src.file_name().ok_or_else(|| anyhow!("{} has no name", src.display()))?;
                    (dst.clone(), Name::new(n.as_bytes().to_vec()).map_err(|e| anyhow!("{e}"))?)
                } else {
                    parent_and_name(dst)?
                };
                let req = ClientRequest::MakeSnapshot { src: tool.inode(src)?, parent: tool.inode(&parent)?, name };
                tool.call(req).await
            }
            .await;
            match r {
                Ok(_) => emit(
                    format!("{} -> {}: snapshot made\n", src.display(), dst.display()),
                    json!({"src": src, "dst": dst, "done": true}),
                ),
                Err(e) => fail(src, e),
            }
        }
        Cmd::Filerepair { paths } => {
            for p in paths {
                match async { tool.call(ClientRequest::FileRepair { inode: tool.inode(p)? }).await }.await {
                    Ok(ClientReply::Repaired { ok: good, erased, repaired }) => emit(
                        format!(
                            "{}:\n chunks not changed:      {good:>10}\n chunks erased:           {erased:>10}\n chunks repaired:         {repaired:>10}\n",
                            p.display()
                        ),
                        json!({"path": p, "not_changed": good, "erased": erased, "repaired": repaired}),
                    ),
                    Ok(other) => fail(p, anyhow!("unexpected answer {other:?}")),
                    Err(e) => fail(p, e),
                }
            }
        }
        Cmd::Appendchunks { dst, srcs } => {
            for s in srcs {
                let r = async {
                    tool.call(ClientRequest::AppendChunks { dst: tool.inode(dst)?, src: tool.inode(s)? }).await
                }
                .await;
                match r {
                    Ok(_) => emit(
                        format!("{}: chunks of {} appended\n", dst.display(), s.display()),
                        json!({"dst": dst, "src": s, "done": true}),
                    ),
                    Err(e) => fail(s, e),
                }
            }
        }
        Cmd::Admin(_) => {}
    }
    tool.client.close().await;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&out_json)?);
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Admin(args) = &cli.cmd {
        return match alces_client::admin::run(args, cli.json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("alces admin: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("alces: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("alces: {e:#}");
            ExitCode::FAILURE
        }
    }
}
