//! Shared fixtures for tidelog's benchmarks: realistic batches and pre-filled logs, so
//! every benchmark measures the same bytes.
//!
//! # Layout
//! - `benches/engine.rs` — append, read and durable-append throughput of the engine,
//!   with memcpy as the yardstick.
//! - `benches/recovery.rs` — open time after a crash (full scan of the active segment)
//!   and after a clean shutdown.

use tidelog_engine::{build_batch, ProducerStamp, Record, TopicConfig};

/// A batch of `count` records of `value_len` bytes each, keyed and tenanted like the
/// collaboration events tidelog is built for.
pub fn event_batch(count: usize, value_len: usize) -> Vec<u8> {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            timestamp_ms: 1_700_000_000_000 + i as i64,
            tenant: Some(b"tenant-0042".to_vec()),
            key: Some(format!("file-{i:08}").into_bytes()),
            value: Some(vec![(i % 251) as u8; value_len]),
            headers: vec![(b"type".to_vec(), b"upload".to_vec())],
        })
        .collect();
    build_batch(&records, ProducerStamp::default())
}

/// A one-partition topic with big segments, as a throughput-oriented deployment would use.
pub fn big_segment_topic(segment_bytes: u32) -> TopicConfig {
    TopicConfig {
        partitions: 1,
        segment_bytes,
        batch_bytes_max: 16 << 20,
        ..TopicConfig::default()
    }
}

/// Queued tenant-index updates, as appends leave them for the indexer: one live record of
/// `tenant` per key number, the key being `file-{n:08}`, at consecutive offsets from
/// `first_offset`, in batches of [`INDEX_BATCH`] records.
pub fn index_updates(
    tenant: &[u8],
    keys: impl IntoIterator<Item = u64>,
    first_offset: u64,
) -> tidelog_engine::tenant_index::PendingUpdates {
    use tidelog_engine::key_map::key_hash;
    use tidelog_engine::tenant_index::{Note, PendingUpdates};
    let mut pending = PendingUpdates::default();
    let id = pending.intern(tenant);
    let keys: Vec<u64> = keys.into_iter().collect();
    for (b, batch) in keys.chunks(INDEX_BATCH).enumerate() {
        let notes: Vec<Note> = batch
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let key = key_hash(format!("file-{k:08}").as_bytes());
                Note::new(key, i as u32, Note::HAS_KEY | Note::LIVE)
            })
            .collect();
        pending.push(id, first_offset + (b * INDEX_BATCH) as u64, &notes);
    }
    pending
}

/// Records per batch in [`index_updates`] (as `tidelog-bench publish --batch 100`).
pub const INDEX_BATCH: usize = 100;

/// `n` key numbers drawn uniformly from `keys` by xorshift64 from `seed` (which it
/// advances): the same sequence every run.
pub fn random_keys(seed: &mut u64, keys: u64, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed % keys
        })
        .collect()
}
