//! `tidelog consume TOPIC`: print records from a position, optionally following new ones.
//!
//! `--from earliest|latest|OFFSET|@UNIX_MS`. Without `--follow` it reads up to each
//! partition's high watermark as of the start and exits; with `--follow` it subscribes
//! and prints new records until Ctrl-C/SIGTERM (exit 0, output flushed). json lines carry
//! partition, offset, timestamp, tenant, key, value (null = tombstone) and headers.

use std::io::{BufWriter, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tidelog_client::{Client, StartAt, Subscription, WINDOW_BYTES_DEFAULT};

use super::{print_record, stop_flag, stopped, OutputFormat, ServerArg};

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Only this partition [default: all].
    #[arg(long)]
    pub partition: Option<u32>,
    /// earliest, latest, an offset, or @UNIX_MS (a time in ms since the epoch).
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Only this tenant's records.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Keep printing new records until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    #[command(flatten)]
    pub server: ServerArg,
}

pub fn parse_start(s: &str) -> Result<StartAt, String> {
    match s {
        "earliest" => Ok(StartAt::Earliest),
        "latest" => Ok(StartAt::Latest),
        _ if s.starts_with('@') => s[1..]
            .parse()
            .map(StartAt::Timestamp)
            .map_err(|_| format!("bad time {s:?}")),
        _ => s
            .parse()
            .map(StartAt::Offset)
            .map_err(|_| format!("--from {s:?}: use earliest, latest, OFFSET or @UNIX_MS")),
    }
}

pub fn run(args: ConsumeArgs) -> Result<(), String> {
    let stop = stop_flag()?;
    let start = parse_start(&args.from)?;
    let client = args.server.connect()?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => (0..client
            .describe_topic(&args.topic)
            .map_err(|e| e.to_string())?
            .partitions
            .len() as u32)
            .collect(),
    };
    let tenant = args.tenant.as_ref().map(|t| t.as_bytes().to_vec());
    let mut run = Run {
        client,
        args: &args,
        partitions,
        start,
        tenant,
        printed: 0,
        limit: args.max.unwrap_or(u64::MAX),
        stop,
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let result = if args.follow {
        run.follow(&mut out)
    } else {
        run.drain(&mut out)
    };
    out.flush().map_err(|e| e.to_string())?;
    result
}

/// One `consume` invocation: what to read and how much has been printed.
struct Run<'a> {
    client: Client,
    args: &'a ConsumeArgs,
    partitions: Vec<u32>,
    start: StartAt,
    tenant: Option<Vec<u8>>,
    printed: u64,
    limit: u64,
    stop: Arc<AtomicBool>,
}

impl Run<'_> {
    fn done(&self) -> bool {
        self.printed >= self.limit || stopped(&self.stop)
    }

    /// Reads every partition up to its high watermark at the start.
    fn drain(&mut self, out: &mut impl Write) -> Result<(), String> {
        let topic = &self.args.topic;
        let offsets = self.client.offsets(topic).map_err(|e| e.to_string())?;
        for &partition in &self.partitions {
            let Some(o) = offsets.iter().find(|o| o.partition == partition) else {
                return Err(format!("topic {topic} has no partition {partition}"));
            };
            let end = o.next;
            let mut position = match self.start {
                StartAt::Earliest => StartAt::Offset(o.earliest),
                StartAt::Latest => StartAt::Offset(end),
                other => other,
            };
            while !self.done() {
                if matches!(position, StartAt::Offset(p) if p >= end) {
                    break;
                }
                let f = self
                    .client
                    .fetch(
                        topic,
                        partition,
                        position,
                        1 << 20,
                        Duration::ZERO,
                        self.tenant.as_deref(),
                    )
                    .map_err(|e| e.to_string())?;
                for r in f
                    .records
                    .iter()
                    .filter(|r| r.offset < end)
                    .take((self.limit - self.printed) as usize)
                {
                    print_record(out, None, r, self.args.format)?;
                    self.printed += 1;
                }
                if position == StartAt::Offset(f.next_offset) {
                    break; // no progress: nothing more to read
                }
                position = StartAt::Offset(f.next_offset);
            }
        }
        Ok(())
    }

    /// Subscribes to every partition and prints records as they arrive.
    fn follow(&mut self, out: &mut impl Write) -> Result<(), String> {
        let mut subs: Vec<Subscription> = self
            .partitions
            .iter()
            .map(|&p| {
                self.client.subscribe(
                    &self.args.topic,
                    p,
                    self.start,
                    self.tenant.as_deref(),
                    WINDOW_BYTES_DEFAULT,
                )
            })
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let wait = Duration::from_millis(if subs.len() > 1 { 10 } else { 100 });
        while !self.done() {
            let mut idle = true;
            for sub in &mut subs {
                if let Some(r) = sub.next_timeout(wait).map_err(|e| e.to_string())? {
                    idle = false;
                    print_record(out, None, &r, self.args.format)?;
                    self.printed += 1;
                    if self.done() {
                        break;
                    }
                }
            }
            if idle {
                out.flush().map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}
