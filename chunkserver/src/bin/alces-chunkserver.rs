//! `alces-chunkserver`: stores chunk replicas on local folders and serves them.
//!
//! ```text
//! alces-chunkserver [-c chunkserver.cfg] [--masters HOST:PORT,... --hdd-conf-filename FILE ...]
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alces_chunkserver::config::{chunkserver_id, CsConfig, DEFAULT_FILE, KEYS};
use alces_chunkserver::data_service::{self, DataConfig};
use alces_chunkserver::folders::{parse_hdd_cfg, Folders};
use alces_chunkserver::master_link::{self, LinkConfig};
use alces_chunkserver::scrub::{self, ScrubStats};
use alces_chunkserver::store::Store;
use alces_config::Settings;
use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

fn main() -> Result<()> {
    let cmd = Settings::flags(
        clap::Command::new("alces-chunkserver")
            .about("Alces chunkserver: keeps chunk replicas on local folders and serves them")
            .version(env!("CARGO_PKG_VERSION")),
        KEYS,
        "configuration file (KEY = VALUE lines)",
    );
    let matches = cmd.get_matches();
    alces_config::init_logging();
    let settings = Settings::from_matches(KEYS, &matches, Some(Path::new(DEFAULT_FILE)))?;
    let cfg = CsConfig::from_settings(&settings)?;
    // One network thread by default, as MooseFS's chunkserver: a chained write or a read is a
    // chain of short steps between sockets and the disk threads, and handing each step to
    // another thread cost more than the step.
    let rt = match cfg.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
    };
    rt.block_on(run(cfg))
}

async fn run(cfg: CsConfig) -> Result<()> {
    let id = chunkserver_id(&cfg).context("choosing the chunkserver id")?;
    let hdd_text =
        std::fs::read_to_string(&cfg.hdd_cfg).with_context(|| format!("reading {}", cfg.hdd_cfg.display()))?;
    let specs = parse_hdd_cfg(&cfg.hdd_cfg, &hdd_text)?;
    let folders = Folders::open(specs)?;
    let started = std::time::Instant::now();
    let scan = tokio::task::spawn_blocking(move || {
        let s = folders.scan();
        (folders, s)
    })
    .await?;
    let (folders, scan) = scan;
    tracing::info!(chunks = scan.chunks.len(), damaged = scan.damaged.len(), took = ?started.elapsed(), "data folders scanned");
    let store = Store::new(folders, scan);
    let stop = CancellationToken::new();
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let data_cfg = DataConfig::new(id, cfg.secret.clone());
    tokio::spawn(data_service::serve(store.clone(), data_cfg, listener, stop.clone()));
    let link_cfg =
        LinkConfig { id, data_addr: cfg.data_addr.clone(), label: cfg.label.clone(), secret: cfg.secret.clone() };
    let _links = master_link::Links::start(store.clone(), link_cfg, cfg.masters.clone(), stop.clone());
    tokio::spawn(scrub::run(store.clone(), cfg.scrub_rate, Arc::new(ScrubStats::default()), stop.clone()));
    let idle = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            idle.close_idle(Duration::from_secs(30)).await;
        }
    });
    tracing::info!(id = %id, data = %cfg.data_addr, masters = ?cfg.masters, "chunkserver started");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    stop.cancel();
    Ok(())
}
