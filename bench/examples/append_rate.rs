//! Sustained append rate of one partition, outside criterion, for profiling:
//! `cargo run --release -p tidelog-bench --example append_rate -- [GiB] [flush_ms] [records] [value_len]`.
//! Prints GB/s of batch bytes appended.

use std::time::{Duration, Instant};

use tidelog_bench::{big_segment_topic, event_batch};
use tidelog_engine::{Engine, EngineConfig};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let gib = args.first().copied().unwrap_or(2);
    let flush_ms = args.get(1).copied().unwrap_or(500);
    let records = args.get(2).copied().unwrap_or(100) as usize;
    let value_len = args.get(3).copied().unwrap_or(1024) as usize;
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    let config = EngineConfig {
        flush_interval: Duration::from_millis(flush_ms),
        ..EngineConfig::default()
    };
    let engine = Engine::open(dir.path(), config).expect("open");
    engine
        .create_topic("t", big_segment_topic(1 << 30))
        .expect("create");
    let p = engine.partition("t", 0).expect("partition");
    let batch = event_batch(records, value_len);
    let total = gib << 30;
    let start = Instant::now();
    let mut written = 0u64;
    while written < total {
        p.append(&batch).expect("append");
        written += batch.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "appended {:.2} GB in {secs:.3}s: {:.2} GB/s, {:.2} M records/s",
        written as f64 / 1e9,
        written as f64 / secs / 1e9,
        (written / batch.len() as u64 * records as u64) as f64 / secs / 1e6
    );
}
