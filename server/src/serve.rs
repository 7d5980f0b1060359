//! `tidelog serve`: run the engine on a data directory until asked to stop.
//!
//! Shutdown on SIGINT/SIGTERM is clean: every partition is synced and sealed and the
//! clean-shutdown marker is written, so the next start does no recovery scan.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tidelog_engine::{Engine, EngineConfig, EngineError};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory.
    #[arg(long, env = "TIDELOG_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,

    /// Sync data not requested durable at least this often (milliseconds).
    #[arg(long, env = "TIDELOG_FLUSH_INTERVAL_MS", default_value_t = 500)]
    pub flush_interval_ms: u64,
}

pub fn run(args: ServeArgs) -> Result<(), EngineError> {
    // Installed before the engine opens, so a signal during recovery still shuts down
    // cleanly instead of killing the process mid-way.
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| EngineError::io("install signal handler", "", e))?;
    let started = Instant::now();
    let config = EngineConfig {
        flush_interval: Duration::from_millis(args.flush_interval_ms.max(1)),
        ..EngineConfig::default()
    };
    let engine = Engine::open(&args.data_dir, config)?;
    let cut: usize = engine
        .recovery_reports()
        .iter()
        .map(|r| r.2.truncations.len())
        .sum();
    tracing::info!(
        data_dir = %args.data_dir.display(),
        topics = engine.topic_names().len(),
        partitions = engine.recovery_reports().len(),
        recovery_cuts = cut,
        startup_ms = started.elapsed().as_millis() as u64,
        "tidelog is serving the data directory (network protocol: not yet)"
    );
    let signal = signals.forever().next();
    tracing::info!(?signal, "shutting down");
    engine.close()
}
