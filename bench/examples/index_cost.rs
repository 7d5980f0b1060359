//! What the tenant/key index costs on append, in one run:
//! `cargo run --release -p tidelog-bench --example index_cost -- [records] [value_len] [keys] [batch] [rounds]`.
//!
//! The same records (a `type` header, `value_len`-byte values, 100 per batch by default)
//! are appended twice to fresh partitions: once with a tenant and a key drawn at random
//! from `keys` (the index updates a key per record; with 1 M keys most updates miss the
//! CPU caches, as in production), once without tenant or key (the index does nothing).
//! Both runs append the same number of bytes ± the key and tenant fields; the ratio of
//! records/s is the index's cost (the keyed records' extra bytes included). The keyed
//! run's clock stops when the index has caught up with the last append.

use std::time::{Duration, Instant};

use tidelog_engine::{build_batch, Engine, EngineConfig, ProducerStamp, Record};

fn batches(records: usize, value_len: usize, keys: u64, batch: usize, keyed: bool) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::new();
    let mut made = 0;
    while made < records {
        let n = batch.min(records - made);
        let rs: Vec<Record> = (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Record {
                    timestamp_ms: 1_700_000_000_000 + (made + i) as i64,
                    tenant: keyed.then(|| b"tenant-0042".to_vec()),
                    key: keyed.then(|| format!("file-{:08}", x % keys).into_bytes()),
                    value: Some(vec![(i % 251) as u8; value_len]),
                    headers: vec![(b"type".to_vec(), b"share".to_vec())],
                }
            })
            .collect();
        out.push(build_batch(&rs, ProducerStamp::default()));
        made += n;
    }
    out
}

fn run(batches: &[Vec<u8>]) -> (f64, f64) {
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
    let start = Instant::now();
    let mut bytes = 0;
    for b in batches {
        p.append(b).expect("append");
        bytes += b.len();
    }
    // The index follows the log a little behind (off the append path); the clock stops
    // once it is current, so no index work escapes the measurement.
    let _ = p.tenant_info(b"tenant-0042");
    let secs = start.elapsed().as_secs_f64();
    (secs, bytes as f64)
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
    let keyed = batches(records, value_len, keys, batch, true);
    let plain = batches(records, value_len, keys, batch, false);
    let rounds = args.get(4).copied().unwrap_or(7) as usize;
    // Pairs of runs, the order alternating, so that neither kind always follows the other
    // (the previous run's write-back and freed page cache weigh on the next). Each pair
    // gives a ratio; the median ratio is the figure (this machine's noise swings single
    // runs by ±20 %).
    let mut costs = Vec::new();
    let (mut t_keyed, mut t_plain, mut b_keyed, mut b_plain) = (0.0, 0.0, 0.0, 0.0);
    for round in 0..rounds {
        let ((tp, bp), (tk, bk)) = if round % 2 == 0 {
            let p = run(&plain);
            (p, run(&keyed))
        } else {
            let k = run(&keyed);
            (run(&plain), k)
        };
        (t_plain, b_plain, t_keyed, b_keyed) = (t_plain + tp, bp, t_keyed + tk, bk);
        costs.push((1.0 - tp / tk) * 100.0);
    }
    costs.sort_by(f64::total_cmp);
    let n = rounds as f64;
    let rate = |t: f64| n * records as f64 / t / 1e6;
    println!(
        "records {records}, value {value_len} B, keys {keys}, batch {batch}, {rounds} rounds\n\
         without tenant/key: {:.2} M records/s ({:.0} MB/s)\n\
         with tenant + key:  {:.2} M records/s ({:.0} MB/s)\n\
         index cost per round: {}\n\
         index cost: {:.1} % of records/s (median of the rounds)",
        rate(t_plain),
        n * b_plain / t_plain / 1e6,
        rate(t_keyed),
        n * b_keyed / t_keyed / 1e6,
        costs
            .iter()
            .map(|c| format!("{c:.0} %"))
            .collect::<Vec<_>>()
            .join(", "),
        costs[costs.len() / 2]
    );
}
