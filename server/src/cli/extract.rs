//! `tidelog extract TOPIC --tenant T`: a tenant's state (or history) as of a watermark,
//! then, with `--follow`, every matching record after it. Without `--tenant`: every
//! tenant of the topic, partition by partition, one watermark per partition.
//!
//! json lines: `{"phase":"snapshot",...record}`, then `{"phase":"watermark","partition":P,
//! "offset":W}`, then `{"phase":"live",...record}` while following. Progress (records and
//! bytes so far, rate) on stderr when it is a terminal. Ctrl-C/SIGTERM stops cleanly with
//! everything printed flushed and exit code 0.

use std::io::{BufWriter, IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tidelog_client::{
    ExtractCriteria, ExtractEvent, ExtractMode, ExtractThenFollow, TopicExtraction,
    WINDOW_BYTES_DEFAULT,
};

/// A tenant's extraction, or every tenant's.
enum Stream {
    Tenant(Box<ExtractThenFollow>),
    Topic(TopicExtraction),
}

impl Stream {
    fn next_timeout(&mut self, t: Duration) -> tidelog_client::Result<Option<ExtractEvent>> {
        match self {
            Stream::Tenant(s) => s.next_timeout(t),
            Stream::Topic(s) => s.next_timeout(t),
        }
    }
}

use super::{print_record, stop_flag, stopped, OutputFormat, ServerArg};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    State,
    History,
}

#[derive(Debug, Args)]
pub struct ExtractArgs {
    pub topic: String,
    /// The tenant [default: every tenant of the topic, one watermark per partition].
    #[arg(long)]
    pub tenant: Option<String>,
    /// state: the latest record of every live key; history: every matching event.
    #[arg(long, value_enum, default_value_t = Mode::State)]
    pub mode: Mode,
    /// Only records at or after @UNIX_MS.
    #[arg(long)]
    pub since: Option<String>,
    /// Only records at or before @UNIX_MS.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// NAME=VALUE; repeat for several (all must match).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// After the extraction, print live records until interrupted.
    #[arg(long)]
    pub follow: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    #[command(flatten)]
    pub server: ServerArg,
}

fn time(arg: &Option<String>, name: &str) -> Result<Option<i64>, String> {
    arg.as_deref()
        .map(|s| {
            s.strip_prefix('@')
                .unwrap_or(s)
                .parse()
                .map_err(|_| format!("--{name} {s:?}: use @UNIX_MS"))
        })
        .transpose()
}

pub fn run(args: ExtractArgs) -> Result<(), String> {
    let stop = stop_flag()?;
    let mut headers = Vec::new();
    for h in &args.headers {
        let (n, v) = h
            .split_once('=')
            .ok_or_else(|| format!("--header {h:?}: use NAME=VALUE"))?;
        headers.push((n.to_string(), v.to_string()));
    }
    let criteria = ExtractCriteria {
        since_ms: time(&args.since, "since")?,
        until_ms: time(&args.until, "until")?,
        key_prefix: args.key_prefix.clone(),
        headers,
    };
    let mode = match args.mode {
        Mode::State => ExtractMode::State,
        Mode::History => ExtractMode::History,
    };
    let client = args.server.connect()?;
    let mut stream = match &args.tenant {
        Some(tenant) => Stream::Tenant(Box::new(
            client
                .extract_then_follow(&args.topic, tenant.as_bytes(), mode, criteria)
                .map_err(|e| e.to_string())?,
        )),
        None => Stream::Topic(
            client
                .extract_topic_then_follow(&args.topic, mode, criteria, WINDOW_BYTES_DEFAULT)
                .map_err(|e| e.to_string())?,
        ),
    };
    // One watermark per partition before the extraction is complete.
    let mut watermarks_left = match &stream {
        Stream::Tenant(_) => 1,
        Stream::Topic(_) => client
            .describe_topic(&args.topic)
            .map_err(|e| e.to_string())?
            .partitions
            .len(),
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut extracted = false;
    while !stopped(&stop) {
        let Some(event) = stream
            .next_timeout(Duration::from_millis(100))
            .map_err(|e| e.to_string())?
        else {
            out.flush().map_err(|e| e.to_string())?;
            continue;
        };
        match event {
            ExtractEvent::Snapshot(r) => {
                records += 1;
                bytes += r.value.as_ref().map_or(0, Vec::len) as u64;
                print_record(&mut out, Some("snapshot"), &r, args.format)?;
                if progress && last_progress.elapsed() > Duration::from_secs(1) {
                    let secs = started.elapsed().as_secs_f64();
                    eprint!(
                        "\r{records} records, {:.1} MB, {:.0} records/s",
                        bytes as f64 / 1e6,
                        records as f64 / secs
                    );
                    last_progress = Instant::now();
                }
            }
            ExtractEvent::Watermark {
                partition,
                offset,
                records: count,
            } => {
                if progress && started.elapsed() > Duration::from_secs(1) {
                    eprintln!();
                }
                let line = match args.format {
                    OutputFormat::Json => serde_json::json!({"phase": "watermark", "partition": partition, "offset": offset, "records": count}).to_string(),
                    OutputFormat::Text => format!("-- watermark: partition {partition} offset {} ({count} records)", offset.map_or("none".into(), |o| o.to_string())),
                };
                writeln!(out, "{line}").map_err(|e| e.to_string())?;
                watermarks_left = watermarks_left.saturating_sub(1);
                extracted = watermarks_left == 0;
                if extracted && !args.follow {
                    break;
                }
            }
            ExtractEvent::Live(r) => print_record(&mut out, Some("live"), &r, args.format)?,
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    if !extracted && !args.follow && !stopped(&stop) {
        return Err("the extraction ended before its watermark".into());
    }
    Ok(())
}
