//! Configuration of the engine and of each topic. Every limit is explicit, with its unit
//! last in the name.

use std::time::Duration;

use crate::error::{EngineError, Result};
use crate::fsio::SyncPolicy;

/// What recovery may do when it finds damage (after raft-engine's recovery modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryPolicy {
    /// Any damage, even a torn tail, refuses to open the partition.
    AbsoluteConsistency,
    /// Cut a torn or corrupt tail of the active segment (what a crash leaves); damage in a
    /// sealed segment refuses to open the partition.
    #[default]
    TolerateTornTail,
    /// Cut the log at the first damage wherever it is, dropping everything after it.
    TolerateAnyCorruption,
}

/// What happens to old records besides retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CleanupPolicy {
    /// Only retention removes records (whole segments).
    #[default]
    Delete,
    /// Also compaction: closed segments are rewritten keeping the latest record of each
    /// (tenant, key); tombstones go after `tombstone_retention_ms`.
    Compact,
}

/// Per-topic settings, persisted in the topic's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicConfig {
    pub partitions: u32,
    /// A segment rolls when the next batch would not fit in this many bytes.
    pub segment_bytes: u32,
    /// A non-empty segment rolls once it has been open this long (0 = never by age).
    pub segment_ms: u64,
    /// An index entry every this many bytes of batches.
    pub index_interval_bytes: u32,
    /// Delete oldest sealed segments while the partition holds more (u64::MAX = no limit).
    pub retention_bytes: u64,
    /// Delete sealed segments whose newest record is older than this (u64::MAX = forever).
    pub retention_ms: u64,
    /// Largest batch accepted.
    pub batch_bytes_max: u32,
    pub cleanup: CleanupPolicy,
    /// Compaction keeps a tombstone at least this long after its timestamp, so a
    /// consumer that is behind still sees the deletion.
    pub tombstone_retention_ms: u64,
}

pub const SEGMENT_BYTES_MIN: u32 = 64 << 10;
/// Positions inside a segment are u32.
pub const SEGMENT_BYTES_MAX: u32 = 2 << 30;
pub const PARTITIONS_MAX: u32 = 4096;

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            segment_bytes: 256 << 20,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_bytes: u64::MAX,
            retention_ms: u64::MAX,
            batch_bytes_max: 16 << 20,
            cleanup: CleanupPolicy::Delete,
            tombstone_retention_ms: TOMBSTONE_RETENTION_MS_DEFAULT,
        }
    }
}

/// One day, as Kafka's `delete.retention.ms`.
pub const TOMBSTONE_RETENTION_MS_DEFAULT: u64 = 24 * 3600 * 1000;

impl TopicConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(EngineError::InvalidConfig(why));
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return bad(format!("partitions must be in 1..={PARTITIONS_MAX}"));
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return bad(format!(
                "segment_bytes must be in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}"
            ));
        }
        if self.index_interval_bytes == 0 || self.index_interval_bytes > self.segment_bytes {
            return bad("index_interval_bytes must be in 1..=segment_bytes".into());
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max > self.segment_bytes {
            return bad("batch_bytes_max must be in 1..=segment_bytes".into());
        }
        Ok(())
    }
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Data written but not requested durable is synced at least this often.
    pub flush_interval: Duration,
    /// How often the background thread applies retention and compaction.
    pub retention_check_interval: Duration,
    pub recovery_policy: RecoveryPolicy,
    /// The I/O seam for fault injection (tests).
    pub sync: SyncPolicy,
    /// Defaults for topics created without explicit settings.
    pub topic_defaults: TopicConfig,
    /// How far a partition's tenant index may trail its log (see `indexer.rs`).
    pub index_lag: IndexLag,
    /// At most this many bytes of the log stay in the page cache, all partitions
    /// together (`page_cache.rs`); `u64::MAX` (the default): no budget, the kernel
    /// alone decides.
    pub page_cache_bytes: u64,
}

/// Bounds on the tenant index's lag behind the log, in queued updates (16 bytes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLag {
    /// Past this an appender applies the queue itself, unless the indexer thread is at it
    /// (a round can be long: a table of millions of keys doubling).
    pub soft: usize,
    /// Past this an appender waits for the index whatever it is doing: the bound on the
    /// queue's memory and on the lag.
    pub hard: usize,
}

impl Default for IndexLag {
    fn default() -> Self {
        // 4 MiB and 32 MiB of queued updates; a doubling of a million-key table takes
        // ~50 ms, about 350 000 appended records at full speed.
        IndexLag {
            soft: 1 << 18,
            hard: 1 << 21,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            flush_interval: Duration::from_millis(500),
            retention_check_interval: Duration::from_secs(10),
            recovery_policy: RecoveryPolicy::default(),
            sync: SyncPolicy::default(),
            topic_defaults: TopicConfig::default(),
            index_lag: IndexLag::default(),
            page_cache_bytes: u64::MAX,
        }
    }
}
