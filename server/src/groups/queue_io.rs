//! Where queue groups meet the engine: filling a partition's window from the log,
//! reading the leased records, writing dead letters, and the persisted state in the
//! internal topic `__tidelog_queues`.
//!
//! `__tidelog_queues` (1 partition) holds, per group (the record's tenant): under key
//! `\0config` the group's topic and settings, and under key `topic \0 partition (u32 BE)`
//! the latest snapshot of that partition's window ([`SharePartition::encode`]). The
//! tenant/key index keeps exactly the latest record of each, so loading on start reads
//! one record per partition, never the log.

use std::collections::BTreeMap;
use std::sync::Arc;

use tidelog_engine::extract::{push_batch, Criteria};
use tidelog_engine::{Engine, EngineError, Partition, Record, TopicConfig};
use tidelog_protocol::batch::{check_frame, view_stored};
use tidelog_protocol::builder::{build_batch, ProducerStamp};
use tidelog_protocol::codec::{Reader, Writer};
use tidelog_protocol::group::QueueSettings;
use tidelog_protocol::partitioner::fnv1a64;
use tidelog_protocol::record::RecordView;

use super::offsets_log;
use super::queue::{QueueConfig, QueueGroup, SharePartition};

pub const QUEUES_TOPIC: &str = "__tidelog_queues";
const CONFIG_KEY: &[u8] = b"\0config";
/// Bytes read from the log per step when filling or delivering.
pub const READ_STEP_BYTES: u32 = 1 << 20;
/// Dead letters are appended in batches of at most this many bytes.
const DEAD_LETTER_BATCH_BYTES: usize = 4 << 20;

/// Opens (creating it the first time) the queue-state topic's partition.
pub fn open(engine: &Engine) -> Result<Arc<Partition>, EngineError> {
    offsets_log::open_internal(engine, QUEUES_TOPIC)
}

fn record(group: &str, key: Vec<u8>, value: Vec<u8>, now_ms: i64) -> Record {
    Record {
        timestamp_ms: now_ms,
        tenant: Some(group.as_bytes().to_vec()),
        key: Some(key),
        value: Some(value),
        headers: Vec::new(),
    }
}

/// The record naming a group's topic and settings.
pub fn config_record(group: &str, g: &QueueGroup, now_ms: i64) -> Record {
    let mut value = vec![1u8];
    value.put_str(&g.topic);
    g.config.settings().put(&mut value);
    record(group, CONFIG_KEY.to_vec(), value, now_ms)
}

/// The snapshot record of one partition's window.
pub fn snapshot_record(
    group: &str,
    topic: &str,
    partition: u32,
    sp: &SharePartition,
    now_ms: i64,
) -> Record {
    record(
        group,
        offsets_log::key(topic, partition),
        sp.encode(),
        now_ms,
    )
}

/// Appends records to the queue-state log in one batch; the last offset written.
pub fn persist(log: &Partition, records: &[Record]) -> Result<u64, EngineError> {
    let appended = log.append(&build_batch(records, ProducerStamp::default()))?;
    Ok(appended.last_offset)
}

/// Every queue group, from the queue-state log's tenant/key index.
pub fn load(log: &Partition) -> Result<BTreeMap<String, QueueGroup>, EngineError> {
    let mut groups = BTreeMap::new();
    for tenant in log.tenant_names() {
        let Ok(name) = String::from_utf8(tenant.clone()) else {
            continue;
        };
        let snapshot = log.tenant_snapshot(&tenant);
        let mut config: Option<(String, QueueConfig)> = None;
        let mut windows: BTreeMap<(String, u32), SharePartition> = BTreeMap::new();
        let mut cursor = 0;
        while cursor < snapshot.len() {
            let (bytes, next) =
                snapshot.read(cursor, READ_STEP_BYTES as usize, &Criteria::default())?;
            let mut pos = 0;
            while pos < bytes.len() {
                let view = check_frame(&bytes[pos..])
                    .map_err(|e| EngineError::corrupt(log.dir(), 0, format!("queue state: {e}")))?;
                for r in view.records() {
                    let r = r.map_err(|e| EngineError::corrupt(log.dir(), 0, e))?;
                    let (Some(key), Some(value)) = (r.key, r.value) else {
                        continue;
                    };
                    if key == CONFIG_KEY {
                        config = decode_config(value);
                        if config.is_none() {
                            tracing::warn!(group = name, "unreadable queue-group settings");
                        }
                    } else if let (Some(k), Some(sp)) =
                        (offsets_log::parse_key(key), SharePartition::decode(value))
                    {
                        windows.insert(k, sp);
                    } else {
                        tracing::warn!(group = name, offset = r.offset, "unreadable queue state");
                    }
                }
                pos += view.bytes().len();
            }
            cursor = next;
        }
        let Some((topic, config)) = config else {
            continue;
        };
        let mut g = QueueGroup::new(&topic, config);
        g.config_saved = true;
        for ((t, p), sp) in windows {
            if t != topic {
                continue;
            }
            let p = p as usize;
            while g.partitions.len() < p {
                g.partitions.push(SharePartition::new(0));
            }
            if g.partitions.len() == p {
                g.partitions.push(sp);
            }
        }
        groups.insert(name, g);
    }
    Ok(groups)
}

fn decode_config(value: &[u8]) -> Option<(String, QueueConfig)> {
    let mut r = Reader::new(value.get(1..).filter(|_| value.first() == Some(&1))?);
    let topic = r.str("topic").ok()?.to_string();
    let settings = QueueSettings::get(&mut r).ok()?;
    r.finish("settings").ok()?;
    let config = QueueConfig::from_settings(&topic, &settings).ok()?;
    Some((topic, config))
}

fn key_hash(r: &RecordView<'_>) -> Option<u64> {
    r.key.map(fnv1a64)
}

/// Brings records of `partition` into the window, up to its room.
pub fn fill(
    sp: &mut SharePartition,
    partition: &Partition,
    config: &QueueConfig,
) -> Result<(), EngineError> {
    let per_key = config.per_key_ordering;
    if per_key && !sp.keys_known {
        // After a restart: learn the keys of the records already in the window.
        let (start, end) = (sp.start, sp.next());
        let mut at = start;
        while at < end {
            let fetched = partition.read(at, READ_STEP_BYTES)?;
            if fetched.is_empty() {
                break;
            }
            each_record(&fetched, |r| {
                if r.offset >= start && r.offset < end {
                    if let Some(slot) = sp.slots.get_mut((r.offset - start) as usize) {
                        slot.key = key_hash(r);
                    }
                }
            })?;
            at = fetched.next_offset;
        }
        sp.keys_known = true;
    }
    while sp.room(config.max_in_flight) > 0 && sp.next() < partition.next_offset() {
        let fetched = partition.read(sp.next(), READ_STEP_BYTES)?;
        if fetched.is_empty() {
            break;
        }
        let bytes: &[u8] = &fetched;
        let mut pos = 0;
        while pos < bytes.len() && sp.room(config.max_in_flight) > 0 {
            let view =
                view_stored(&bytes[pos..]).map_err(|e| EngineError::InvalidBatch(e.to_string()))?;
            let (base, last) = (view.header.base_offset, view.header.last_offset());
            let dense = u64::from(view.header.record_count) == last - base + 1;
            if dense && !per_key {
                // Offsets alone, from the header: no record is decoded.
                let mut o = base.max(sp.next());
                while o <= last && sp.room(config.max_in_flight) > 0 {
                    sp.admit(None);
                    o += 1;
                }
            } else {
                for r in view.records() {
                    let r = r.map_err(EngineError::InvalidBatch)?;
                    if r.offset < sp.next() {
                        continue;
                    }
                    if sp.room(config.max_in_flight) == 0 {
                        break;
                    }
                    // A gap in the batch's offsets: nothing to deliver there, settled.
                    while sp.next() < r.offset {
                        sp.admit(None);
                        let o = sp.next() - 1;
                        sp.mark_absent(o);
                    }
                    sp.admit(key_hash(&r));
                }
            }
            pos += view.bytes().len();
        }
        if fetched.next_offset <= sp.next() && sp.room(config.max_in_flight) > 0 {
            break;
        }
    }
    Ok(())
}

fn each_record(bytes: &[u8], mut f: impl FnMut(&RecordView<'_>)) -> Result<(), EngineError> {
    let mut pos = 0;
    while pos < bytes.len() {
        let view =
            view_stored(&bytes[pos..]).map_err(|e| EngineError::InvalidBatch(e.to_string()))?;
        for r in view.records() {
            f(&r.map_err(EngineError::InvalidBatch)?);
        }
        pos += view.bytes().len();
    }
    Ok(())
}

/// The records at `offsets` (ascending) as whole batches (offsets preserved), up to
/// about `max_bytes` (at least one batch). Returns the bytes and the offsets included.
pub fn read_selected(
    partition: &Partition,
    offsets: &[u64],
    max_bytes: usize,
) -> Result<(Vec<u8>, Vec<u64>), EngineError> {
    let (mut out, mut scratch, mut included) = (Vec::new(), Vec::new(), Vec::new());
    let mut i = 0;
    'read: while i < offsets.len() {
        let fetched = partition.read(offsets[i], READ_STEP_BYTES)?;
        if fetched.is_empty() {
            break;
        }
        let bytes: &[u8] = &fetched;
        let mut pos = 0;
        while pos < bytes.len() && i < offsets.len() {
            let view =
                view_stored(&bytes[pos..]).map_err(|e| EngineError::InvalidBatch(e.to_string()))?;
            pos += view.bytes().len();
            let last = view.header.last_offset();
            let mut kept = Vec::new();
            for r in view.records() {
                let r = r.map_err(EngineError::InvalidBatch)?;
                while i < offsets.len() && offsets[i] < r.offset {
                    i += 1; // not in the log (cannot happen for a window slot)
                }
                if i < offsets.len() && offsets[i] == r.offset {
                    kept.push(r);
                    i += 1;
                }
            }
            while i < offsets.len() && offsets[i] <= last {
                i += 1;
            }
            if kept.is_empty() {
                continue;
            }
            if !out.is_empty() && out.len() + view.bytes().len() > max_bytes {
                break 'read;
            }
            included.extend(kept.iter().map(|r| r.offset));
            push_batch(&mut out, &mut scratch, &view, &kept);
        }
    }
    Ok((out, included))
}

/// Writes the records at `offsets` of `partition` to the group's dead-letter topic, with
/// headers naming their origin, delivery count and reason. Returns the offsets written.
#[allow(clippy::too_many_arguments)]
pub fn dead_letter(
    engine: &Engine,
    topic: &str,
    partition: &Partition,
    sp: &SharePartition,
    offsets: &[u64],
    dead_letter_topic: &str,
    now_ms: i64,
) -> Result<Vec<u64>, EngineError> {
    let dlq = match engine.topic(dead_letter_topic) {
        Ok(t) => t,
        Err(EngineError::UnknownTopic(_)) => {
            match engine.create_topic(dead_letter_topic, TopicConfig::default()) {
                Ok(t) => t,
                Err(EngineError::TopicExists(_)) => engine.topic(dead_letter_topic)?,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let dlq_partitions = dlq.partitions();
    let (bytes, included) = read_selected(partition, offsets, usize::MAX)?;
    let mut records = Vec::new();
    each_record(&bytes, |r| {
        let slot = sp.slot(r.offset);
        let reason = sp.reasons.get(&r.offset).map_or("", String::as_str);
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> =
            r.headers().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        for (k, v) in [
            ("tidelog.origin.topic", topic.to_string()),
            ("tidelog.origin.partition", partition.id().to_string()),
            ("tidelog.origin.offset", r.offset.to_string()),
            ("tidelog.origin.timestamp", r.timestamp_ms.to_string()),
            (
                "tidelog.deliveries",
                slot.map_or(0, |s| s.deliveries).to_string(),
            ),
            ("tidelog.reason", reason.to_string()),
        ] {
            headers.push((k.as_bytes().to_vec(), v.into_bytes()));
        }
        records.push(Record {
            timestamp_ms: now_ms,
            tenant: r.tenant.map(<[u8]>::to_vec),
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.map(<[u8]>::to_vec),
            headers,
        });
    })?;
    // Records of one tenant (or key) stay together in the dead-letter topic too.
    let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
    for r in records {
        let p = tidelog_protocol::partitioner::partition_for(
            r.tenant.as_deref(),
            r.key.as_deref(),
            dlq_partitions.len() as u32,
        )
        .unwrap_or(0);
        by_partition.entry(p).or_default().push(r);
    }
    for (p, records) in by_partition {
        let target = &dlq_partitions[p as usize];
        let mut chunk: Vec<Record> = Vec::new();
        let mut size = 0;
        for r in records {
            size += r.value.as_ref().map_or(0, Vec::len) + r.key.as_ref().map_or(0, Vec::len) + 256;
            chunk.push(r);
            if size >= DEAD_LETTER_BATCH_BYTES {
                target.append(&build_batch(&chunk, ProducerStamp::default()))?;
                chunk.clear();
                size = 0;
            }
        }
        if !chunk.is_empty() {
            target.append(&build_batch(&chunk, ProducerStamp::default()))?;
        }
    }
    Ok(included)
}
