//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use tidelog_engine::batch::check_frame;
use tidelog_engine::extract::{history_step, Criteria};
use tidelog_engine::{
    build_batch, Engine, EngineConfig, Partition, ProducerStamp, Record, TopicConfig,
};

/// A record whose value names its position in a test sequence, so tests can check
/// exactly which records came back.
pub fn numbered(n: u64, value_len: usize) -> Record {
    let mut value = n.to_le_bytes().to_vec();
    value.resize(value_len.max(8), (n % 251) as u8);
    Record {
        timestamp_ms: 1_700_000_000_000 + n as i64,
        key: Some(format!("k{}", n % 97).into_bytes()),
        value: Some(value),
        ..Record::default()
    }
}

pub fn batch_of(first: u64, count: u64, value_len: usize) -> Vec<u8> {
    let records: Vec<Record> = (first..first + count)
        .map(|n| numbered(n, value_len))
        .collect();
    build_batch(&records, ProducerStamp::default())
}

/// Every record of the partition as (offset, number carried in the value), reading with a
/// small byte limit so reads cross many batch and segment boundaries.
pub fn read_all(p: &Partition) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut offset = p.earliest_offset();
    loop {
        let fetched = p.read(offset, 3000).expect("read");
        if fetched.is_empty() {
            assert_eq!(offset, fetched.high_watermark);
            break;
        }
        let mut pos = 0usize;
        while pos < fetched.len() {
            let view = check_frame(&fetched[pos..]).expect("served batches pass their CRC");
            for r in view.records() {
                let r = r.expect("record decodes");
                if r.offset >= offset {
                    let v = r.value.expect("value");
                    out.push((
                        r.offset,
                        u64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
                    ));
                }
            }
            pos += view.bytes().len();
        }
        assert!(fetched.next_offset > offset, "reads make progress");
        offset = fetched.next_offset;
    }
    out
}

pub fn small_topic(segment_bytes: u32) -> TopicConfig {
    TopicConfig {
        partitions: 1,
        segment_bytes,
        index_interval_bytes: 512,
        batch_bytes_max: segment_bytes,
        ..TopicConfig::default()
    }
}

pub fn quick_config() -> EngineConfig {
    EngineConfig {
        flush_interval: std::time::Duration::from_millis(50),
        ..EngineConfig::default()
    }
}

pub fn open(dir: &std::path::Path) -> Engine {
    Engine::open(dir, quick_config()).expect("engine opens")
}

pub fn partition0(engine: &Engine, topic: &str) -> Arc<Partition> {
    engine.partition(topic, 0).expect("partition 0")
}

/// A tenant's state: key → (offset, value) of its latest live record.
pub type State = std::collections::BTreeMap<Vec<u8>, (u64, Vec<u8>)>;

/// Applies the records of `tenant` with offsets in `[from, upto]` from whole batches (in
/// offset order) to a state: a value sets the key, a tombstone removes it; records
/// without a key are not part of a state.
pub fn apply(state: &mut State, bytes: &[u8], tenant: &[u8], from: u64, upto: u64) {
    let mut pos = 0;
    while pos < bytes.len() {
        let v = check_frame(&bytes[pos..]).expect("valid batch");
        for r in v.records() {
            let r = r.expect("record");
            if r.tenant != Some(tenant) || r.offset < from || r.offset > upto {
                continue;
            }
            let Some(key) = r.key else { continue };
            match r.value {
                Some(value) => {
                    state.insert(key.to_vec(), (r.offset, value.to_vec()));
                }
                None => {
                    state.remove(key);
                }
            }
        }
        pos += v.bytes().len();
    }
}

/// The offsets a history extraction of `tenant` returns from `from` to the log's end, in
/// steps of at most `max_bytes` of log each (every step must move on), and the steps.
pub fn history_offsets(
    p: &Partition,
    tenant: &[u8],
    criteria: &Criteria,
    from: u64,
    max_bytes: u32,
) -> (Vec<u64>, usize) {
    let upto = p.next_offset() - 1;
    let (mut got, mut steps, mut at) = (Vec::new(), 0, from);
    while at <= upto {
        let (bytes, next) =
            history_step(p, &p.segments(), tenant, criteria, at, upto, max_bytes).expect("history");
        assert!(next > at, "a step moves on");
        let mut pos = 0;
        while pos < bytes.len() {
            let v = check_frame(&bytes[pos..]).expect("valid");
            got.extend(v.records().map(|r| r.expect("record").offset));
            pos += v.bytes().len();
        }
        at = next;
        steps += 1;
    }
    (got, steps)
}
