//! `alces-master`: one member of the metadata cluster.
//!
//! ```text
//! alces-master [-c master.cfg] [--id N --data-path DIR ...]   run
//! alces-master dump-metadata FILE                           print a snapshot file as text
//! ```

use std::path::{Path, PathBuf};

use alces_config::Settings;
use alces_master::config::{MasterConfig, DEFAULT_FILE, KEYS};
use alces_master::master::Master;
use alces_master::namespace::Namespace;
use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

fn command() -> clap::Command {
    let run = Settings::flags(
        clap::Command::new("alces-master")
            .about("Alces metadata server: one member of the Raft group that keeps the namespace")
            .version(env!("CARGO_PKG_VERSION")),
        KEYS,
        "configuration file (KEY = VALUE lines)",
    );
    run.subcommand(
        clap::Command::new("dump-metadata")
            .about("print a metadata snapshot file (metadata-<term>-<index>.alces) as text")
            .arg(clap::Arg::new("file").required(true).value_parser(clap::value_parser!(PathBuf))),
    )
}

fn main() -> Result<()> {
    let matches = command().get_matches();
    if let Some(("dump-metadata", sub)) = matches.subcommand() {
        let file: &PathBuf = sub.get_one("file").expect("required");
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        alces_raft_store::snapshot::dump(file, &Namespace, &mut out)
            .with_context(|| format!("reading {}", file.display()))?;
        return Ok(());
    }
    alces_config::init_logging();
    let settings = Settings::from_matches(KEYS, &matches, Some(Path::new(DEFAULT_FILE)))?;
    let config = MasterConfig::from_settings(&settings)?;
    // One thread by default: the work of a change is a chain of short steps (client, Raft
    // core, log, replication, apply), and handing each to another thread cost more CPU than
    // the steps themselves.
    let rt = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
    };
    rt.block_on(run(config))
}

async fn run(config: MasterConfig) -> Result<()> {
    let master = Master::start(config).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match master.reload_exports() {
                Ok(()) => tracing::info!("exports reloaded"),
                Err(e) => tracing::error!(error = %e, "exports not reloaded"),
            },
        }
    }
    tracing::info!("shutting down");
    master.shutdown().await;
    Ok(())
}
