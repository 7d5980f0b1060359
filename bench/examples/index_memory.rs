//! Memory of the tenant/key index per live key: appends `KEYS` distinct keys of one
//! tenant (key length 16) and reports the growth of anonymous memory (RssAnon) per key.
//! `cargo run --release -p tidelog-bench --example index_memory -- [KEYS]`

use tidelog_engine::{build_batch, Engine, EngineConfig, ProducerStamp, Record, TopicConfig};

fn rss_anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let keys: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(".").expect("tempdir");
    let engine = Engine::open(dir.path(), EngineConfig::default()).expect("open");
    engine
        .create_topic(
            "t",
            TopicConfig {
                segment_bytes: 1 << 30,
                ..TopicConfig::default()
            },
        )
        .expect("create");
    let p = engine.partition("t", 0).expect("partition");
    let before = rss_anon_kib();
    let mut n = 0;
    while n < keys {
        let records: Vec<Record> = (n..(n + 1000).min(keys))
            .map(|i| Record {
                tenant: Some(b"acme".to_vec()),
                key: Some(format!("key-{i:012}").into_bytes()),
                value: Some(vec![1; 8]),
                ..Record::default()
            })
            .collect();
        n += records.len() as u64;
        p.append(&build_batch(&records, ProducerStamp::default()))
            .expect("append");
    }
    let after = rss_anon_kib();
    let info = p.tenant_info(b"acme").expect("tenant");
    println!(
        "{} live keys (16-byte keys): index grew anonymous memory by {} KiB = {:.0} bytes per key",
        info.live_keys,
        after - before,
        (after - before) as f64 * 1024.0 / info.live_keys as f64
    );
}
