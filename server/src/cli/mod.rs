//! Client commands of the `tidelog` binary: `topic`, `publish`, `consume`, `extract`. They talk to a
//! server with the native client library. Exit codes: 0 success, 1 failure (connection,
//! server error), 2 usage error.

pub mod consume;
pub mod extract;
pub mod publish;
pub mod topic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use tidelog_client::{Client, ConnectOptions};

pub const DEFAULT_SERVER: &str = "127.0.0.1:7979";

#[derive(Debug, Clone, Args)]
pub struct ServerArg {
    /// Server address; a comma-separated list is tried in order (failover).
    #[arg(long, env = "TIDELOG_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

impl ServerArg {
    pub fn connect(&self) -> Result<Client, String> {
        let addrs: Vec<&str> = self
            .server
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        Client::connect_any(&addrs, ConnectOptions::default())
            .map_err(|e| format!("cannot connect to {}: {e}", self.server))
    }
}

/// A flag raised by SIGINT/SIGTERM, so following commands stop cleanly (flushing what
/// they printed, exit code 0) instead of dying mid-line.
pub fn stop_flag() -> Result<Arc<AtomicBool>, String> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, flag.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    Ok(flag)
}

pub fn stopped(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}

/// Bytes as text for output: UTF-8 as is, anything else lossily.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
