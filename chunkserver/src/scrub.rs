//! Background scrubbing: reads every block of every replica at a limited rate and checks its
//! CRC. A corrupt replica is dropped and reported by the store like a bad read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alces_proto::types::BLOCK_SIZE;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Blocks verified since start, and replicas found corrupt by the scrubber.
#[derive(Default)]
pub struct ScrubStats {
    pub blocks: AtomicU64,
    pub corrupt: AtomicU64,
    pub rounds: AtomicU64,
}

/// Scrubs forever at `bytes_per_sec` (0: never).
pub async fn run(store: Arc<Store>, bytes_per_sec: u64, stats: Arc<ScrubStats>, stop: CancellationToken) {
    if bytes_per_sec == 0 {
        return;
    }
    let pause = Duration::from_secs_f64(BLOCK_SIZE as f64 / bytes_per_sec as f64);
    loop {
        let ids = store.ids();
        for id in ids {
            let Some(version) = store.version_of(id).await else { continue };
            let mut block = 0;
            loop {
                match store.verify_block(id, version, block).await {
                    Ok(true) => {
                        stats.blocks.fetch_add(1, Ordering::Relaxed);
                        block += 1;
                    }
                    Ok(false) => break,
                    Err(alces_proto::link::client_cs::DataError::Crc { block }) => {
                        stats.corrupt.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(chunk = %id.hex(), block, "scrubbing found a corrupt replica");
                        break;
                    }
                    Err(_) => break, // gone or changed meanwhile
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        stats.rounds.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
