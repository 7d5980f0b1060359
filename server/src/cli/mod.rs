//! Client commands of the `tidelog` binary: `topic`, `publish`, `consume`, `extract`,
//! `group`. They talk to a
//! server with the native client library. Exit codes: 0 success, 1 failure (connection,
//! server error), 2 usage error.

pub mod consume;
pub mod extract;
pub mod group;
mod json_bytes;
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

/// Output format of the commands that print records.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputFormat {
    /// The value, one per line (tombstones shown as such).
    Text,
    /// One json object per line: partition, offset, timestamp, tenant, key, value
    /// (null = tombstone), headers, and `phase` when given. Bytes that are not UTF-8 are
    /// base64, flagged by `<field>_encoding: "base64"` (`json_bytes.rs`).
    Json,
}

/// Prints one record in `format`, tagged with `phase` in json (extract's phases).
pub fn print_record(
    out: &mut impl std::io::Write,
    phase: Option<&str>,
    r: &tidelog_client::ConsumedRecord,
    format: OutputFormat,
) -> Result<(), String> {
    let written = match format {
        OutputFormat::Text => match &r.value {
            Some(v) => out.write_all(v).and_then(|()| out.write_all(b"\n")),
            None => writeln!(
                out,
                "(tombstone {})",
                r.key.as_deref().map(text).unwrap_or_default()
            ),
        },
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, &json_bytes::JsonRecord::new(r, phase))
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
        }
    };
    written.map_err(|e| format!("writing output: {e}"))
}
