//! Committed offsets as records of the internal topic `__tidelog_offsets` (one partition),
//! so they are stored, synced, recovered and (later) replicated like any data.
//!
//! One record per commit of one partition: tenant = the group name, key = the consumed
//! topic's name, a 0 byte, the partition (u32 big-endian), value = `version u8 (1),
//! offset u64 LE, generation u32 LE, metadata (UTF-8, the rest)`; the record's timestamp
//! is the commit time. The latest record of a (group, key) is the committed offset, which
//! is exactly what the partition's tenant/key index keeps: loading on start reads only the
//! live keys (O(committed partitions)), never the whole log. A tombstone forgets an
//! offset. docs/FORMAT.md describes the same layout.

use std::collections::BTreeMap;
use std::sync::Arc;

use tidelog_engine::extract::Criteria;
use tidelog_engine::{Engine, EngineError, Partition, Record, TopicConfig};
use tidelog_protocol::batch::check_frame;
use tidelog_protocol::builder::{build_batch, ProducerStamp};

use super::stream::CommittedOffset;

pub const OFFSETS_TOPIC: &str = "__tidelog_offsets";
const VALUE_VERSION: u8 = 1;

/// Committed offsets by group, then (topic, partition).
pub type Loaded = BTreeMap<String, BTreeMap<(String, u32), CommittedOffset>>;

/// Opens (creating it the first time) the offsets topic's partition.
pub fn open(engine: &Engine) -> Result<Arc<Partition>, EngineError> {
    open_internal(engine, OFFSETS_TOPIC)
}

/// The single partition of one of the server's own topics, created on first use (64 MiB
/// segments, batches up to 16 MiB, compacted: only the latest record of each key stays).
pub fn open_internal(engine: &Engine, topic: &str) -> Result<Arc<Partition>, EngineError> {
    match engine.partition(topic, 0) {
        Ok(p) => Ok(p),
        Err(EngineError::UnknownTopic(_)) => {
            let config = TopicConfig {
                partitions: 1,
                segment_bytes: 64 << 20,
                batch_bytes_max: 16 << 20,
                cleanup: tidelog_engine::CleanupPolicy::Compact,
                ..TopicConfig::default()
            };
            engine.create_topic(topic, config)?;
            engine.partition(topic, 0)
        }
        Err(e) => Err(e),
    }
}

pub fn key(topic: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 5);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

pub fn parse_key(key: &[u8]) -> Option<(String, u32)> {
    let split = key.len().checked_sub(5)?;
    let (topic, rest) = key.split_at(split);
    if rest[0] != 0 {
        return None;
    }
    let partition = u32::from_be_bytes(rest[1..5].try_into().ok()?);
    Some((std::str::from_utf8(topic).ok()?.to_string(), partition))
}

pub fn encode_value(offset: u64, generation: u32, metadata: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(13 + metadata.len());
    v.push(VALUE_VERSION);
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(&generation.to_le_bytes());
    v.extend_from_slice(metadata.as_bytes());
    v
}

pub fn decode_value(value: &[u8], timestamp_ms: i64) -> Option<CommittedOffset> {
    if value.len() < 13 || value[0] != VALUE_VERSION {
        return None;
    }
    Some(CommittedOffset {
        offset: u64::from_le_bytes(value[1..9].try_into().ok()?),
        generation: u32::from_le_bytes(value[9..13].try_into().ok()?),
        timestamp_ms,
        metadata: std::str::from_utf8(&value[13..]).ok()?.to_string(),
    })
}

/// One batch holding a group's commits of `(partition, offset, metadata)` on `topic`.
pub fn commit_batch(
    group: &str,
    topic: &str,
    generation: u32,
    timestamp_ms: i64,
    entries: &[(u32, u64, &str)],
) -> Vec<u8> {
    let records: Vec<Record> = entries
        .iter()
        .map(|&(partition, offset, metadata)| Record {
            timestamp_ms,
            tenant: Some(group.as_bytes().to_vec()),
            key: Some(key(topic, partition)),
            value: Some(encode_value(offset, generation, metadata)),
            headers: Vec::new(),
        })
        .collect();
    build_batch(&records, ProducerStamp::default())
}

/// Every group's committed offsets, from the tenant/key index of the offsets partition.
pub fn load(partition: &Partition) -> Result<Loaded, EngineError> {
    let mut groups = Loaded::new();
    let criteria = Criteria::default();
    for tenant in partition.tenant_names() {
        let Ok(group) = String::from_utf8(tenant.clone()) else {
            continue;
        };
        let snapshot = partition.tenant_snapshot(&tenant);
        let offsets = groups.entry(group.clone()).or_default();
        let mut cursor = 0;
        while cursor < snapshot.len() {
            let (bytes, next) = snapshot.read(cursor, 1 << 20, &criteria)?;
            let mut pos = 0;
            while pos < bytes.len() {
                let view = check_frame(&bytes[pos..]).map_err(|e| {
                    EngineError::corrupt(partition.dir(), 0, format!("offsets snapshot: {e}"))
                })?;
                for record in view.records() {
                    let r = record.map_err(|e| EngineError::corrupt(partition.dir(), 0, e))?;
                    let parsed = r
                        .key
                        .and_then(parse_key)
                        .zip(r.value.and_then(|v| decode_value(v, r.timestamp_ms)));
                    match parsed {
                        Some((k, committed)) => {
                            offsets.insert(k, committed);
                        }
                        None => tracing::warn!(
                            group,
                            offset = r.offset,
                            "skipping an unreadable committed-offset record"
                        ),
                    }
                }
                pos += view.bytes().len();
            }
            cursor = next;
        }
        if offsets.is_empty() {
            groups.remove(&group);
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        assert_eq!(
            parse_key(&key("files.v2", 4_000_000)),
            Some(("files.v2".to_string(), 4_000_000))
        );
        assert_eq!(parse_key(b"abc"), None);
        let v = decode_value(&encode_value(42, 7, "host-a"), 99).unwrap();
        assert_eq!(
            v,
            CommittedOffset {
                offset: 42,
                generation: 7,
                timestamp_ms: 99,
                metadata: "host-a".into()
            }
        );
        assert_eq!(decode_value(&[2; 13], 0), None);
    }

    #[test]
    fn latest_commit_of_each_partition_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = Engine::open(dir.path(), Default::default()).unwrap();
            let p = open(&engine).unwrap();
            p.append(&commit_batch("g1", "t", 1, 10, &[(0, 5, ""), (1, 9, "m")]))
                .unwrap();
            p.append(&commit_batch("g1", "t", 2, 20, &[(0, 7, "")]))
                .unwrap();
            p.append(&commit_batch("g2", "u", 1, 30, &[(3, 1, "")]))
                .unwrap();
            engine.close().unwrap();
        }
        let engine = Engine::open(dir.path(), Default::default()).unwrap();
        let loaded = load(&open(&engine).unwrap()).unwrap();
        let g1 = &loaded["g1"];
        assert_eq!(g1[&("t".to_string(), 0)].offset, 7);
        assert_eq!(g1[&("t".to_string(), 0)].generation, 2);
        assert_eq!(g1[&("t".to_string(), 1)].metadata, "m");
        assert_eq!(loaded["g2"][&("u".to_string(), 3)].timestamp_ms, 30);
    }
}
