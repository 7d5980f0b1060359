//! `tidelog consume TOPIC`: print records from a position, optionally following new ones.
//!
//! `--from earliest|latest|OFFSET|@UNIX_MS`. Without `--follow` it reads up to each
//! partition's high watermark as of the start and exits; with `--follow` it subscribes
//! and prints new records until Ctrl-C/SIGTERM (exit 0, output flushed). json lines carry
//! partition, offset, timestamp, tenant, key, value (null = tombstone) and headers.
//!
//! `--group G` consumes as a member of stream group G: the server shares the topic's
//! partitions among the group's members, each starts at the group's committed offset
//! (`--from earliest|latest` where there is none), and the command commits what it has
//! printed (after flushing it) as it goes, and when it stops. Without `--follow` it stops
//! once nothing has arrived for `--idle-ms`.
//!
//! `--queue G` consumes as a member of queue group G: records are leased to this member
//! one by one; each printed record is acked (`--ack`, the default) or nacked with
//! `--nack-delay MS` (it comes back after that delay, e.g. to inspect a queue without
//! draining it). Settlements go out after the output is flushed; on Ctrl-C/SIGTERM the
//! command settles what it printed and leaves (its other leases are released).

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tidelog_client::{
    Client, ClientError, GroupConfig, GroupConsumer, QueueConfig, QueueConsumer, StartAt,
    Subscription, WINDOW_BYTES_DEFAULT,
};

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
    /// Consume as a member of this stream group (committing as it goes).
    #[arg(long, conflicts_with_all = ["partition", "tenant", "queue"])]
    pub group: Option<String>,
    /// Consume as a member of this queue group (records leased one by one).
    #[arg(long, conflicts_with_all = ["partition", "tenant"])]
    pub queue: Option<String>,
    /// With --queue: ack every printed record (the default).
    #[arg(long, requires = "queue", conflicts_with = "nack_delay")]
    pub ack: bool,
    /// With --queue: nack every printed record; it is delivered again after this many ms.
    #[arg(long, requires = "queue")]
    pub nack_delay: Option<u64>,
    /// With --group: the member's session timeout.
    #[arg(long, default_value_t = 10_000, requires = "group")]
    pub session_timeout_ms: u64,
    /// With --group or --queue, without --follow: stop after this long without a record.
    #[arg(long, default_value_t = 2_000)]
    pub idle_ms: u64,
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
    if let Some(group) = &args.group {
        return consume_group(&args, group, client, start, &stop);
    }
    if let Some(queue) = &args.queue {
        return consume_queue(&args, queue, &client, &stop);
    }
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

/// `consume --group`: poll, print, flush, commit what was printed; on stop, commit and
/// leave.
fn consume_group(
    args: &ConsumeArgs,
    group: &str,
    client: Client,
    start: StartAt,
    stop: &AtomicBool,
) -> Result<(), String> {
    if !matches!(start, StartAt::Earliest | StartAt::Latest) {
        return Err(
            "with --group, --from is earliest or latest (where the group has no committed offset)"
                .into(),
        );
    }
    let config = GroupConfig {
        session_timeout: Duration::from_millis(args.session_timeout_ms),
        start,
        ..GroupConfig::default()
    };
    let mut consumer =
        GroupConsumer::join(&client, group, &args.topic, config).map_err(|e| e.to_string())?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let (limit, mut printed) = (args.max.unwrap_or(u64::MAX), 0u64);
    let mut last_record = Instant::now();
    let result = (|| {
        while printed < limit && !stopped(stop) {
            let records = consumer
                .poll(Duration::from_millis(100))
                .map_err(|e| e.to_string())?;
            if records.is_empty() {
                if !args.follow && last_record.elapsed() >= Duration::from_millis(args.idle_ms) {
                    break;
                }
                continue;
            }
            last_record = Instant::now();
            let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
            for r in records.iter().take((limit - printed) as usize) {
                print_record(&mut out, None, r, args.format)?;
                positions.insert(r.partition, r.offset + 1);
                printed += 1;
            }
            // Committed only once it is out: a crash never commits what was not printed.
            out.flush().map_err(|e| format!("writing output: {e}"))?;
            let positions: Vec<(u32, u64)> = positions.into_iter().collect();
            match consumer.commit_positions(&positions) {
                Ok(()) => {}
                // A partition taken away meanwhile: its new owner continues from the last
                // accepted commit (these records may be printed again there).
                Err(ClientError::Server(e)) => tracing::warn!(error = %e, "commit refused"),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    })();
    out.flush().map_err(|e| format!("writing output: {e}"))?;
    consumer.close().map_err(|e| e.to_string())?;
    result
}

/// `consume --queue`: poll leased records, print, flush, settle (ack or nack) what was
/// printed; on stop, settle and leave.
fn consume_queue(
    args: &ConsumeArgs,
    queue: &str,
    client: &Client,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut consumer = QueueConsumer::join(client, queue, &args.topic, &QueueConfig::default())
        .map_err(|e| e.to_string())?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let (limit, mut printed) = (args.max.unwrap_or(u64::MAX), 0u64);
    let mut last_record = Instant::now();
    let result = (|| {
        while printed < limit && !stopped(stop) {
            let want = u32::try_from((limit - printed).min(500)).unwrap_or(500);
            let records = match consumer.poll(want, Duration::from_millis(100)) {
                Ok(r) => r,
                // The server went away (a restart): join again and carry on.
                Err(ClientError::Disconnected | ClientError::Io(_)) => {
                    consumer.reconnect().map_err(|e| e.to_string())?;
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            if records.is_empty() {
                if !args.follow && last_record.elapsed() >= Duration::from_millis(args.idle_ms) {
                    break;
                }
                continue;
            }
            last_record = Instant::now();
            for r in &records {
                print_record(&mut out, None, &r.record, args.format)?;
                printed += 1;
            }
            // Settled only once it is out: a crash never acks what was not printed.
            out.flush().map_err(|e| format!("writing output: {e}"))?;
            for r in &records {
                match args.nack_delay {
                    Some(ms) => consumer.nack(
                        r,
                        Some(Duration::from_millis(ms)),
                        "tidelog consume --nack-delay",
                    ),
                    None => consumer.ack(r),
                }
            }
        }
        Ok(())
    })();
    out.flush().map_err(|e| format!("writing output: {e}"))?;
    consumer.close().map_err(|e| e.to_string())?;
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
