//! `tidelog publish TOPIC`: records from stdin, one per line.
//!
//! `--format text`: the line is the value (with `--tenant` / `--key` applied to every
//! record). `--format json`: each line is `{"tenant":..,"key":..,"value":..|null,
//! "headers":{..}}`; a null (or missing) value is a tombstone; bytes given in base64 say
//! so with `<field>_encoding: "base64"`, as `consume --format json` prints them
//! (`json_bytes.rs`). Prints how many records were written and their offset range per
//! partition.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tidelog_client::{parse_ack, Ack, Producer, ProducerConfig, Receipt, Record};

use super::ServerArg;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    pub topic: String,
    /// Tenant of every record (text format; a json line's own tenant wins).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Key of every record (text format; a json line's own key wins).
    #[arg(long)]
    pub key: Option<String>,
    /// Acknowledgement level: none, written or durable.
    #[arg(long, default_value = "written", value_parser = ["none", "written", "durable"])]
    pub ack: String,
    #[arg(long, value_enum, default_value_t = InputFormat::Text)]
    pub format: InputFormat,
    #[command(flatten)]
    pub server: ServerArg,
}

pub fn run(args: PublishArgs) -> Result<(), String> {
    let ack = parse_ack(&args.ack).unwrap_or(Ack::Written);
    let client = args.server.connect()?;
    let producer = Producer::new(
        &client,
        &args.topic,
        ProducerConfig {
            ack,
            ..ProducerConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let stdin = std::io::stdin().lock();
    let mut receipts: Vec<Receipt> = Vec::new();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let progress = std::io::stderr().is_terminal();
    for (n, line) in stdin.lines().enumerate() {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        let record = match args.format {
            InputFormat::Text => Record {
                timestamp_ms: now_ms(),
                tenant: args.tenant.as_ref().map(|t| t.as_bytes().to_vec()),
                key: args.key.as_ref().map(|k| k.as_bytes().to_vec()),
                value: Some(line.into_bytes()),
                headers: Vec::new(),
            },
            InputFormat::Json => {
                if line.trim().is_empty() {
                    continue;
                }
                json_record(&line, &args).map_err(|e| format!("line {}: {e}", n + 1))?
            }
        };
        receipts.push(producer.send(record).map_err(|e| e.to_string())?);
        if progress && last_progress.elapsed() > Duration::from_secs(1) {
            eprint!("\r{} records sent", receipts.len());
            last_progress = Instant::now();
        }
    }
    producer.flush().map_err(|e| e.to_string())?;
    if progress && started.elapsed() > Duration::from_secs(1) {
        eprintln!();
    }
    summarize(&args.topic, &receipts, ack)
}

fn summarize(topic: &str, receipts: &[Receipt], ack: Ack) -> Result<(), String> {
    let mut ranges: BTreeMap<u32, (u64, u64, usize)> = BTreeMap::new();
    for r in receipts {
        let offset = r.wait().map_err(|e| e.to_string())?;
        let entry = ranges.entry(r.partition).or_insert((u64::MAX, 0, 0));
        if let Some(o) = offset {
            entry.0 = entry.0.min(o);
            entry.1 = entry.1.max(o);
        }
        entry.2 += 1;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "published {} to {topic}", records(receipts.len()));
    for (partition, (first, last, count)) in ranges {
        if ack == Ack::None {
            let _ = writeln!(
                out,
                "  partition {partition}: {} (ack none: offsets unknown)",
                records(count)
            );
        } else {
            let _ = writeln!(
                out,
                "  partition {partition}: {}, offsets {first}..={last}",
                records(count)
            );
        }
    }
    out.flush().map_err(|e| e.to_string())
}

/// "1 record", "2 records".
fn records(n: usize) -> String {
    if n == 1 {
        "1 record".into()
    } else {
        format!("{n} records")
    }
}

fn json_record(line: &str, args: &PublishArgs) -> Result<Record, String> {
    let line = super::json_bytes::JsonLine::parse(line)?;
    Ok(Record {
        timestamp_ms: line.timestamp_ms().unwrap_or_else(now_ms),
        tenant: line
            .tenant()?
            .or_else(|| args.tenant.as_ref().map(|t| t.as_bytes().to_vec())),
        key: line
            .key()?
            .or_else(|| args.key.as_ref().map(|k| k.as_bytes().to_vec())),
        value: line.value()?,
        headers: line.headers()?,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
