//! `tidelog-bench`: the load generator that measures tidelog and checks, while it
//! measures, that every record published is consumed exactly once and in order.
//!
//! ```text
//! tidelog-bench [--server ADDR | --spawn-server] [--json] SCENARIO [options]
//!   publish   P producers publish --count records; then all are read back and verified
//!             (--tenant T [--keys K]: every record of tenant T, with a key drawn at
//!             random from K, so the tenant index works as it would in production;
//!             --prefill N: N records first, untimed, for the steady state of a topic
//!             with history and a long-lived tenant)
//!   consume   the topic is filled (untimed), then C consumers fetch it from earliest
//!   e2e       subscribers first, then producers (flat out, or --rate records/s);
//!             latency = publish call → delivery, from timestamps in the payload
//!   group     a stream group of C members consumes a filled topic (verified exactly once
//!             across the handovers), then a member joins and leaves --rebalances times:
//!             time until every member's new assignment is active
//!   queue     a queue group of C members drains a filled topic, acking every record
//!             (settlements batched with the next poll); verified exactly once
//!   index-cost  the tenant index's cost on publish: bursts of --burst records to a
//!             topic whose records carry --tenant and a key drawn from --keys, and to one
//!             without (values longer by the key's bytes), in turn on one server, --count
//!             records each; keyed records/s over plain (`keyed_vs_plain`), CPU per record
//!             of each; every burst verified
//!   extract   a tenant with --keys live keys, writers updating it throughout: snapshot
//!             rate and time to first record, the live catch-up, and a plain fetch of
//!             the same partition for comparison; verified against a full replay;
//!             latency = the writers' publish → ack while the extraction runs
//!   history   a partition of --count records in tenant-uniform batches, one batch in
//!             --tenants the measured tenant's: a history extraction of that tenant
//!             (--header K=V criteria), against a plain fetch of the whole partition;
//!             verified against the tenant's matching records in that fetch
//! ```
//!
//! Output: a table, or with `--json` one object per scenario (`scenario`, `records`,
//! `bytes`, `seconds`, `records_per_sec`, `mb_per_sec`, `latency_us` {p50, p90, p99,
//! p999, max}, `verified`, and the fault counts when verification fails; `publish` adds
//! `cpu_seconds` {client, server}: the CPU spent over the measured run, the server's only
//! with `--spawn-server`, and then `server_thread_ns_per_record` by server thread). Exit
//! code 1
//! when verification fails. Every run is bounded: `--count` records, optionally
//! `--duration-secs`, and `--timeout-secs`.

mod cpu;
mod group;
mod history;
mod index_cost;
mod payload;
mod queue;
mod report;
mod scenarios;
mod verify;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tidelog_client::{parse_ack, Ack, Client, ConnectOptions};

#[derive(Debug, Parser)]
#[command(
    name = "tidelog-bench",
    version,
    about = "Measure tidelog and verify every record while doing it"
)]
struct Cli {
    /// Server to measure.
    #[arg(
        long,
        env = "TIDELOG_SERVER",
        default_value = "127.0.0.1:7979",
        global = true
    )]
    server: String,
    /// Start a server on a temporary data directory for the run (the `tidelog` binary
    /// next to this one, or --tidelog-bin).
    #[arg(long, global = true)]
    spawn_server: bool,
    #[arg(long, global = true)]
    tidelog_bin: Option<PathBuf>,
    /// One JSON object per scenario on stdout instead of the table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, clap::Args)]
struct Options {
    /// Records in total.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Records per batch (one publish request each).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Publish requests pipelined per producer.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    #[arg(long, default_value = "written", value_parser = ["none", "written", "durable"])]
    ack: String,
    #[arg(long, default_value_t = 1)]
    producers: u32,
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Topic to use [default: a fresh bench-<pid>-<scenario>].
    #[arg(long)]
    topic: Option<String>,
    /// Stop producing after this long (the run is then bounded by time and by --count,
    /// whichever comes first).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Give up after this long.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Producers publish; the result is read back and verified.
    Publish {
        #[command(flatten)]
        options: Options,
        /// Tenant of every record (all producers then publish to its partition, and the
        /// tenant index follows it) [default: records without a tenant].
        #[arg(long)]
        tenant: Option<String>,
        /// With --tenant: every record gets a key drawn at random from this many
        /// (`key-0000000042`), so the index updates one key per record [default: none].
        #[arg(long, default_value_t = 0, requires = "tenant")]
        keys: u64,
        /// Records published before the clock starts, with the same settings (not timed,
        /// not read back): a topic with history, and with --keys a long-lived tenant whose
        /// keys the index already holds, so the run measures the steady state.
        #[arg(long, default_value_t = 0)]
        prefill: u64,
    },
    /// Consumers fetch data already in the log from earliest.
    Consume {
        #[command(flatten)]
        options: Options,
        /// Read what --topic already holds (from earliest to its end as the run starts)
        /// instead of publishing --count records first: e.g. a log a `publish` run left,
        /// whose pages are no longer in the page cache. Verified against the sequence
        /// numbers in the records (give --producers as that run had them).
        #[arg(long, requires = "topic")]
        existing: bool,
    },
    /// The tenant index's cost on publish: keyed and plain bursts in turn on one server.
    IndexCost {
        #[command(flatten)]
        options: Options,
        /// Tenant of the keyed side's records.
        #[arg(long, default_value = "tenant-0042")]
        tenant: String,
        /// Keys the keyed side's records' keys are drawn from, at random.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Records published to each topic before the first burst (untimed).
        #[arg(long, default_value_t = 2_000_000)]
        prefill: u64,
        /// Records per burst (--count records per side in all).
        #[arg(long, default_value_t = 500_000)]
        burst: u64,
    },
    /// A tenant's state extraction under concurrent writers, then the live catch-up.
    Extract {
        #[command(flatten)]
        options: Options,
        /// Live keys of the tenant.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Records in the log before the extraction (untimed): after one record per key,
        /// updates of the tenant's keys and other tenants' records, half and half, so the
        /// live records are spread over the whole log [default: just the keys].
        #[arg(long, default_value_t = 0)]
        log_records: u64,
    },
    /// A tenant's history extraction out of a partition shared with other tenants,
    /// against a fetch of the whole partition.
    History {
        #[command(flatten)]
        options: Options,
        /// Tenants whose batches take turns in the partition: the measured tenant has one
        /// batch in this many.
        #[arg(long, default_value_t = 64)]
        tenants: u64,
        /// Criteria: a header the events must carry, `NAME=VALUE` (repeatable; every
        /// record has `type=share` (one in four) or `type=upload`).
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// A stream group consumes a filled topic; then rebalance times (a member joins/leaves).
    Group {
        #[command(flatten)]
        options: Options,
        /// Times a member joins and then leaves after the consumption.
        #[arg(long, default_value_t = 5)]
        rebalances: u32,
    },
    /// A queue group drains a filled topic, acking every record.
    Queue {
        #[command(flatten)]
        options: Options,
        /// Records asked for per poll.
        #[arg(long, default_value_t = 1000)]
        poll_records: u32,
    },
    /// Producers and subscribers at once: throughput and delivery latency.
    E2e {
        #[command(flatten)]
        options: Options,
        /// Offered load in records/s across producers [default: flat out].
        #[arg(long)]
        rate: Option<f64>,
    },
}

/// Settings every scenario shares.
#[derive(Debug, Clone)]
pub struct Common {
    pub topic: String,
    pub count: u64,
    pub record_size: usize,
    pub batch: usize,
    pub in_flight: usize,
    pub ack: Ack,
    pub producers: u32,
    pub consumers: u32,
    pub partitions: u32,
    pub duration: Option<Duration>,
    pub timeout: Duration,
    /// Tenant of the published records (publish only).
    pub tenant: Option<Vec<u8>>,
    /// Keys the published records' keys are drawn from, 0 for no key (publish only).
    pub keys: u64,
    /// Records published untimed before the measured run (publish only).
    pub prefill: u64,
}

impl Common {
    fn from(o: &Options, scenario: &str) -> Common {
        Common {
            topic: o
                .topic
                .clone()
                .unwrap_or_else(|| format!("bench-{}-{scenario}", std::process::id())),
            count: o.count,
            record_size: o.record_size.max(payload::HEADER_BYTES),
            batch: o.batch.max(1),
            in_flight: o.in_flight.max(1),
            ack: parse_ack(&o.ack).unwrap_or(Ack::Written),
            producers: o.producers.max(1),
            consumers: o.consumers.max(1),
            partitions: o.partitions.max(1),
            duration: o.duration_secs.map(Duration::from_secs_f64),
            timeout: Duration::from_secs(o.timeout_secs),
            tenant: None,
            keys: 0,
            prefill: 0,
        }
    }

    pub fn settings(&self) -> serde_json::Value {
        let mut settings = serde_json::json!({
            "record_size": self.record_size,
            "batch": self.batch,
            "in_flight": self.in_flight,
            "ack": format!("{:?}", self.ack).to_lowercase(),
            "producers": self.producers,
            "consumers": self.consumers,
            "partitions": self.partitions,
        });
        if let Some(tenant) = &self.tenant {
            settings["tenant"] = String::from_utf8_lossy(tenant).into();
            settings["keys"] = self.keys.into();
        }
        if self.prefill > 0 {
            settings["prefill"] = self.prefill.into();
        }
        settings
    }
}

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    /// The server's process id when this bench started it (its CPU time is then read).
    pub server_pid: Option<u32>,
}

impl Target {
    pub fn connect(&self) -> Result<Client, String> {
        Client::connect(self.addr.as_str(), ConnectOptions::default())
            .map_err(|e| format!("connect {}: {e}", self.addr))
    }
}

/// A server started for the run, stopped (SIGTERM) at the end.
struct Spawned {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn spawn_server(
    bin: Option<PathBuf>,
    env: &[(&str, &str)],
) -> Result<(Spawned, SocketAddr), String> {
    let bin = match bin {
        Some(b) => b,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("tidelog"),
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut child = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TIDELOG_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("tidelog listening on ")
        .ok_or_else(|| format!("unexpected server output {line:?}"))?
        .parse()
        .map_err(|e| format!("{e}"))?;
    Ok((Spawned { child, _dir: dir }, addr))
}

/// A progress bar on stderr that only appears once a run has lasted a second.
fn progress_bar(
    total: u64,
    counter: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} records ({per_sec})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let started = std::time::Instant::now();
        while !done.load(Ordering::Relaxed) {
            if started.elapsed() > Duration::from_secs(1) && bar.is_hidden() {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
            bar.set_position(counter.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (spawned, addr) = if cli.spawn_server {
        // index-cost publishes more than this machine's page cache comfortably holds: its
        // topics keep 512 MiB each, so retention must run often (see index_cost.rs).
        let env: &[(&str, &str)] = match cli.scenario {
            Scenario::IndexCost { .. } => &[("TIDELOG_CLEANUP_INTERVAL_MS", "1000")],
            _ => &[],
        };
        match spawn_server(cli.tidelog_bin.clone(), env) {
            Ok((s, a)) => (Some(s), a.to_string()),
            Err(e) => {
                eprintln!("tidelog-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        (None, cli.server.clone())
    };
    let target = Target {
        addr,
        server_pid: spawned.as_ref().map(|s| s.child.id()),
    };
    let counter = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (name, options) = match &cli.scenario {
        Scenario::Publish { options, .. } => ("publish", options),
        Scenario::Consume { options, .. } => ("consume", options),
        Scenario::IndexCost { options, .. } => ("index-cost", options),
        Scenario::E2e { options, .. } => ("e2e", options),
        Scenario::Extract { options, .. } => ("extract", options),
        Scenario::History { options, .. } => ("history", options),
        Scenario::Group { options, .. } => ("group", options),
        Scenario::Queue { options, .. } => ("queue", options),
    };
    let mut common = Common::from(options, name);
    if let Scenario::Publish {
        tenant,
        keys,
        prefill,
        ..
    } = &cli.scenario
    {
        common.tenant = tenant.as_ref().map(|t| t.as_bytes().to_vec());
        common.keys = *keys;
        common.prefill = *prefill;
    }
    let mut bar_total = common.count;
    if let Scenario::IndexCost {
        tenant,
        keys,
        prefill,
        ..
    } = &cli.scenario
    {
        common.tenant = Some(tenant.as_bytes().to_vec());
        common.keys = *keys;
        common.prefill = *prefill;
        bar_total = common.count * 2; // both sides
    }
    let bar = progress_bar(bar_total, counter.clone(), done.clone());
    let result = match &cli.scenario {
        Scenario::Publish { .. } => scenarios::publish(&target, &common, &counter),
        Scenario::Consume { existing, .. } => {
            scenarios::consume(&target, &common, *existing, &counter)
        }
        Scenario::IndexCost { burst, .. } => {
            index_cost::index_cost(&target, &common, *burst, &counter)
        }
        Scenario::E2e { rate, .. } => scenarios::e2e(&target, &common, *rate, &counter),
        Scenario::Extract {
            keys, log_records, ..
        } => scenarios::extract(&target, &common, *keys, *log_records, &counter),
        Scenario::History {
            tenants, headers, ..
        } => history::history(&target, &common, *tenants, headers, &counter),
        Scenario::Group { rebalances, .. } => group::group(&target, &common, *rebalances, &counter),
        Scenario::Queue { poll_records, .. } => {
            queue::queue(&target, &common, *poll_records, &counter)
        }
    };
    done.store(true, Ordering::Relaxed);
    let _ = bar.join();
    match result {
        Ok(report) => {
            if cli.json {
                println!("{}", report.json());
            } else {
                println!("{}", report.table());
            }
            if report.verdict.as_ref().is_some_and(|v| !v.passed()) {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tidelog-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `NAME=VALUE` of `--header`.
fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    Ok((name.to_string(), value.to_string()))
}
