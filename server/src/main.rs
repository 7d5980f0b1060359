//! The `tidelog` binary.
//!
//! # Layout (the data path)
//! - `main.rs` — the command line (clap) and logging set-up; `cli/` — the client
//!   commands (`topic`, `publish`, `consume`) over the client library.
//! - `serve.rs` — `tidelog serve`: settings, listener, engine, signals, clean shutdown.
//! - `event_loop.rs` — the mio loop: accept, read, one group commit per tick, notices,
//!   write; `connection.rs` — a socket's input buffer and framing; `outbox.rs` — its
//!   queue of owned and zero-copy bytes.
//! - `dispatch.rs` — one request → engine → response; `deliver.rs` — batches from the log
//!   to the wire (fetch, long poll, subscription pump, tenant filter);
//!   `subscription.rs` — a push cursor under credit.
//! - `notices.rs` — the engine's change notifications → the loop's waker;
//!   `state.rs` — what handlers share, limits, error mapping.

mod cli;
mod cold;
mod connection;
mod deliver;
mod dispatch;
mod event_loop;
mod extraction;
mod groups;
mod notices;
mod outbox;
mod serve;
mod state;
mod subscription;
mod worker;

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
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(cli::topic::TopicCommand),
    /// Publish records read from stdin, one per line.
    Publish(cli::publish::PublishArgs),
    /// Print records of a topic, optionally following new ones.
    Consume(cli::consume::ConsumeArgs),
    /// A tenant's state (or history) at a watermark, then the live records after it.
    Extract(cli::extract::ExtractArgs),
    /// List and describe consumer groups (members, partitions, committed offsets, lag).
    #[command(subcommand)]
    Group(cli::group::GroupCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Topic(command) => cli::topic::run(command),
        Command::Publish(args) => cli::publish::run(args),
        Command::Consume(args) => cli::consume::run(args),
        Command::Extract(args) => cli::extract::run(args),
        Command::Group(command) => cli::group::run(command),
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
