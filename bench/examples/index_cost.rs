//! What the tenant/key index costs on append, in one run:
//! `cargo run --release -p tidelog-bench --example index_cost -- [records] [value_len] [keys] [batch] [rounds] [warm]`.
//!
//! The same number of records (a `type` header, values of about `value_len` bytes, 100 per
//! batch by default) is appended to fresh partitions twice: once with a tenant and a key
//! drawn at random from `keys` (the index updates a key per record; with 1 M keys most
//! updates miss the CPU caches, as in production), once without tenant or key (the index
//! does nothing). The records without a key carry that many more value bytes, so both runs
//! append the same bytes (to within a byte per batch, asserted under 0.5 %): the
//! difference in records/s is the index's, not that of longer records. The keyed run's clock stops when the index has caught up with
//! the last append.
//!
//! `warm` = 1 measures a long-lived tenant: before the clock starts, each partition gets
//! one record per key (every key then exists; the plain partition gets as many plain
//! records), so the timed appends update existing keys and the key table no longer grows.
//! With 0 (the default) the tenant is new: its table grows from nothing during the run.

use std::time::{Duration, Instant};

use tidelog_engine::{build_batch, Engine, EngineConfig, Partition, ProducerStamp, Record};

const TENANT: &[u8] = b"tenant-0042";

/// Batches of `records` records; `key(i)` picks each record's key (None: no tenant or key,
/// and `pad` more value bytes).
fn batches(
    records: usize,
    value_len: usize,
    batch: usize,
    pad: usize,
    mut key: impl FnMut() -> Option<u64>,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut made = 0;
    while made < records {
        let n = batch.min(records - made);
        let rs: Vec<Record> = (0..n)
            .map(|i| {
                let key = key();
                let len = if key.is_some() {
                    value_len
                } else {
                    value_len + pad
                };
                Record {
                    timestamp_ms: 1_700_000_000_000 + (made + i) as i64,
                    tenant: key.map(|_| TENANT.to_vec()),
                    key: key.map(|k| format!("file-{k:08}").into_bytes()),
                    value: Some(vec![(i % 251) as u8; len]),
                    headers: vec![(b"type".to_vec(), b"share".to_vec())],
                }
            })
            .collect();
        out.push(build_batch(&rs, ProducerStamp::default()));
        made += n;
    }
    out
}

/// Random keys from `keys`, the same sequence every run.
fn random_keys(keys: u64) -> impl FnMut() -> Option<u64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Some(x % keys)
    }
}

/// Value bytes that make records without tenant and key as long as those with (to within
/// a byte per batch: a tenant-uniform batch names its tenant once, in its header).
fn padding(value_len: usize, batch: usize) -> usize {
    let keyed = batches(batch, value_len, batch, 0, || Some(0))[0].len();
    (0..64)
        .min_by_key(|&pad| {
            batches(batch, value_len, batch, pad, || None)[0]
                .len()
                .abs_diff(keyed)
        })
        .expect("a padding")
}

fn run(prefill: &[Vec<u8>], batches: &[Vec<u8>]) -> (f64, f64) {
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    let config = EngineConfig {
        flush_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    let engine = Engine::open(dir.path(), config).expect("open");
    engine
        .create_topic("t", tidelog_bench::big_segment_topic(1 << 30))
        .expect("create");
    let p = engine.partition("t", 0).expect("partition");
    append_all(&p, prefill);
    // Each timed run starts from the same state: no write-back of earlier data in flight.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let start = Instant::now();
    let cpu = thread_cpu();
    let bytes = append_all(&p, batches);
    let secs = start.elapsed().as_secs_f64();
    if std::env::var_os("INDEX_COST_CPU").is_some() {
        eprintln!(
            "appender CPU {:.0} ns/record, wall {:.0} ns/record",
            (thread_cpu() - cpu) * 1e9 / batches.len() as f64 / 100.0,
            secs * 1e9 / batches.len() as f64 / 100.0
        );
    }
    (secs, bytes as f64)
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the calling thread's CPU clock into `ts`, which outlives the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Appends the batches; returns their bytes once the index has caught up with them (the
/// index follows the log a little behind, off the append path: no index work escapes the
/// measurement).
fn append_all(p: &Partition, batches: &[Vec<u8>]) -> usize {
    let mut bytes = 0;
    for b in batches {
        p.append(b).expect("append");
        bytes += b.len();
    }
    let _ = p.tenant_info(TENANT);
    bytes
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let records = args.first().copied().unwrap_or(2_000_000) as usize;
    let value_len = args.get(1).copied().unwrap_or(200) as usize;
    let keys = args.get(2).copied().unwrap_or(1_000_000);
    let batch = args.get(3).copied().unwrap_or(100) as usize;
    let rounds = args.get(4).copied().unwrap_or(7) as usize;
    let warm = args.get(5).copied().unwrap_or(0) == 1;
    let pad = padding(value_len, batch);
    let keyed = batches(records, value_len, batch, pad, random_keys(keys));
    let plain = batches(records, value_len, batch, pad, || None);
    let size = |b: &[Vec<u8>]| b.iter().map(Vec::len).sum::<usize>() as f64;
    assert!(
        (size(&keyed) / size(&plain) - 1.0).abs() < 0.005,
        "both kinds append the same bytes (to within 0.5 %)"
    );
    let (keyed_fill, plain_fill) = if warm {
        let mut every = 0..keys;
        let fill = batches(keys as usize, value_len, batch, pad, || every.next());
        (fill, batches(keys as usize, value_len, batch, pad, || None))
    } else {
        (Vec::new(), Vec::new())
    };
    // For profiling one kind alone: INDEX_COST_ONLY=keyed|plain appends that kind
    // `rounds` times and prints its rate.
    if let Ok(only) = std::env::var("INDEX_COST_ONLY") {
        let (fill, which) = if only == "keyed" {
            (&keyed_fill, &keyed)
        } else {
            (&plain_fill, &plain)
        };
        let t: f64 = (0..rounds).map(|_| run(fill, which).0).sum();
        println!(
            "{only}: {:.2} M records/s",
            (rounds * records) as f64 / t / 1e6
        );
        return;
    }
    // Pairs of runs, the order alternating, so that neither kind always follows the other
    // (the previous run's write-back and freed page cache weigh on the next). Each pair
    // gives a ratio; the median ratio is the figure (this machine's noise swings single
    // runs by ±20 %).
    let mut costs = Vec::new();
    let (mut t_keyed, mut t_plain, mut bytes) = (0.0, 0.0, 0.0);
    for round in 0..rounds {
        let ((tp, b), (tk, _)) = if round % 2 == 0 {
            let p = run(&plain_fill, &plain);
            (p, run(&keyed_fill, &keyed))
        } else {
            let k = run(&keyed_fill, &keyed);
            (run(&plain_fill, &plain), k)
        };
        (t_plain, t_keyed, bytes) = (t_plain + tp, t_keyed + tk, b);
        costs.push((1.0 - tp / tk) * 100.0);
    }
    costs.sort_by(f64::total_cmp);
    let n = rounds as f64;
    let rate = |t: f64| n * records as f64 / t / 1e6;
    println!(
        "records {records} of {} B, value {value_len} B, keys {keys} ({}), batch {batch}, {rounds} rounds\n\
         without tenant/key: {:.2} M records/s ({:.0} MB/s)\n\
         with tenant + key:  {:.2} M records/s ({:.0} MB/s)\n\
         index cost per round: {}\n\
         index cost: {:.1} % of records/s (median of the rounds)",
        bytes as usize / records,
        if warm { "every key present before" } else { "new tenant" },
        rate(t_plain),
        n * bytes / t_plain / 1e6,
        rate(t_keyed),
        n * bytes / t_keyed / 1e6,
        costs
            .iter()
            .map(|c| format!("{c:.0} %"))
            .collect::<Vec<_>>()
            .join(", "),
        costs[costs.len() / 2]
    );
}
