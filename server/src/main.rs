//! The `tidelog` binary.
//!
//! # Layout
//! - `main.rs` — the command line (clap) and logging set-up.
//! - `serve.rs` — `tidelog serve`: open the data directory (recovery), run until
//!   SIGINT/SIGTERM, shut down cleanly (sync everything, write the clean-shutdown marker).
//!
//! The wire protocol and its mio event loop come next (see docs/ARCHITECTURE.md).

mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tidelog",
    version,
    about = "tidelog: a durable event-log server"
)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `tidelog_engine=debug`.
    #[arg(long, env = "TIDELOG_LOG", default_value = "info", global = true)]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server on a data directory (created if missing; recovered after a crash).
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidelog: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The default data directory: `./tidelog-data`.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("tidelog-data")
}
