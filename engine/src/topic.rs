//! Topics: a name, a configuration persisted in `topic.meta`, and partitions.
//!
//! ```text
//! topic.meta (60 bytes), written atomically (temp file, fsync, rename, fsync dir):
//! | 0..4   magic "TLTM"
//! | 4..8   crc32 u32 LE of bytes 8..60
//! | 8..10  version u16 LE = 1
//! | 10..12 reserved, 0
//! | 12..16 partitions u32 LE
//! | 16..20 segment_bytes u32 LE
//! | 20..28 segment_ms u64 LE
//! | 28..32 index_interval_bytes u32 LE
//! | 32..36 batch_bytes_max u32 LE
//! | 36..44 retention_bytes u64 LE   (u64::MAX = unlimited)
//! | 44..52 retention_ms u64 LE      (u64::MAX = forever)
//! | 52..60 created_ms i64 LE
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::config::CleanupPolicy;
use crate::config::TopicConfig;
use crate::error::{EngineError, Result};
use crate::fsio;
use crate::partition::Partition;

pub const TOPIC_META_FILE: &str = "topic.meta";
/// Version 2 (72 bytes) adds the cleanup policy; version 1 (60 bytes) is still read.
const META_LEN: usize = 72;
const META_V1_LEN: usize = 60;
const MAGIC: &[u8; 4] = b"TLTM";
pub const TOPIC_NAME_LEN_MAX: usize = 249;

/// Topic names: 1..=249 of `[A-Za-z0-9._-]`, not `.` or `..`, not starting with `.`
/// (reserved for the engine's own directories).
pub fn validate_name(name: &str) -> Result<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(EngineError::InvalidConfig(format!(
            "topic name {name:?}: use 1 to {TOPIC_NAME_LEN_MAX} of A-Z a-z 0-9 . _ -, not starting with '.'"
        )))
    }
}

/// The rule of [`validate_name`], also used for consumer-group names.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOPIC_NAME_LEN_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMeta {
    pub config: TopicConfig,
    pub created_ms: i64,
}

impl TopicMeta {
    pub fn encode(&self) -> [u8; META_LEN] {
        let c = &self.config;
        let mut b = [0u8; META_LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&2u16.to_le_bytes());
        b[12..16].copy_from_slice(&c.partitions.to_le_bytes());
        b[16..20].copy_from_slice(&c.segment_bytes.to_le_bytes());
        b[20..28].copy_from_slice(&c.segment_ms.to_le_bytes());
        b[28..32].copy_from_slice(&c.index_interval_bytes.to_le_bytes());
        b[32..36].copy_from_slice(&c.batch_bytes_max.to_le_bytes());
        b[36..44].copy_from_slice(&c.retention_bytes.to_le_bytes());
        b[44..52].copy_from_slice(&c.retention_ms.to_le_bytes());
        b[52..60].copy_from_slice(&self.created_ms.to_le_bytes());
        b[60] = match c.cleanup {
            CleanupPolicy::Delete => 0,
            CleanupPolicy::Compact => 1,
        };
        b[64..72].copy_from_slice(&c.tombstone_retention_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8], path: &Path) -> Result<TopicMeta> {
        let bad = |why: &str| EngineError::corrupt(path, 0, why);
        if bytes.len() != META_LEN && bytes.len() != META_V1_LEN {
            return Err(bad("topic.meta has the wrong length"));
        }
        let b = bytes;
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        if &b[0..4] != MAGIC {
            return Err(bad("bad magic"));
        }
        if crc32fast::hash(&b[8..]) != u32_at(4) {
            return Err(bad("crc mismatch"));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        let expected_len = match version {
            1 => META_V1_LEN,
            2 => META_LEN,
            _ => return Err(bad("unsupported topic.meta version")),
        };
        if b.len() != expected_len {
            return Err(bad("topic.meta length does not match its version"));
        }
        let (cleanup, tombstone_retention_ms) = if version == 1 {
            (
                CleanupPolicy::Delete,
                crate::config::TOMBSTONE_RETENTION_MS_DEFAULT,
            )
        } else {
            let cleanup = match b[60] {
                0 => CleanupPolicy::Delete,
                1 => CleanupPolicy::Compact,
                _ => return Err(bad("unknown cleanup policy")),
            };
            (cleanup, u64_at(64))
        };
        let config = TopicConfig {
            partitions: u32_at(12),
            segment_bytes: u32_at(16),
            segment_ms: u64_at(20),
            index_interval_bytes: u32_at(28),
            batch_bytes_max: u32_at(32),
            retention_bytes: u64_at(36),
            retention_ms: u64_at(44),
            cleanup,
            tombstone_retention_ms,
        };
        config.validate().map_err(|e| bad(&e.to_string()))?;
        Ok(TopicMeta {
            config,
            created_ms: u64_at(52) as i64,
        })
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        fsio::write_atomic(&dir.join(TOPIC_META_FILE), &self.encode(), true)
    }

    pub fn read(dir: &Path) -> Result<TopicMeta> {
        let path = dir.join(TOPIC_META_FILE);
        let bytes = std::fs::read(&path).map_err(|e| EngineError::io("read", &path, e))?;
        TopicMeta::decode(&bytes, &path)
    }
}

/// A topic and its open partitions.
#[derive(Debug)]
pub struct Topic {
    name: Arc<str>,
    dir: PathBuf,
    meta: RwLock<TopicMeta>,
    partitions: RwLock<Arc<Vec<Arc<Partition>>>>,
}

impl Topic {
    pub(crate) fn new(
        name: Arc<str>,
        dir: PathBuf,
        meta: TopicMeta,
        partitions: Vec<Arc<Partition>>,
    ) -> Topic {
        Topic {
            name,
            dir,
            meta: RwLock::new(meta),
            partitions: RwLock::new(Arc::new(partitions)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn meta(&self) -> TopicMeta {
        *self.meta.read().unwrap_or_else(|p| p.into_inner())
    }
    pub fn partitions(&self) -> Arc<Vec<Arc<Partition>>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn partition(&self, id: u32) -> Result<Arc<Partition>> {
        self.partitions()
            .get(id as usize)
            .cloned()
            .ok_or_else(|| EngineError::UnknownPartition {
                topic: self.name.to_string(),
                partition: id,
            })
    }

    pub(crate) fn set_partitions(&self, meta: TopicMeta, partitions: Vec<Arc<Partition>>) {
        *self.meta.write().unwrap_or_else(|p| p.into_inner()) = meta;
        *self.partitions.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(partitions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_rejects_damage() {
        let meta = TopicMeta {
            config: TopicConfig {
                partitions: 12,
                ..TopicConfig::default()
            },
            created_ms: 1_700_000_000_000,
        };
        let bytes = meta.encode();
        let p = Path::new("t");
        assert_eq!(TopicMeta::decode(&bytes, p).expect("decodes"), meta);
        let mut bad = bytes;
        bad[13] ^= 1;
        assert!(TopicMeta::decode(&bad, p).is_err());
        assert!(TopicMeta::decode(&bytes[..59], p).is_err());
        let compact = TopicMeta {
            config: TopicConfig {
                cleanup: CleanupPolicy::Compact,
                tombstone_retention_ms: 5,
                ..TopicConfig::default()
            },
            created_ms: 1,
        };
        assert_eq!(
            TopicMeta::decode(&compact.encode(), p).expect("v2"),
            compact
        );
        // A version-1 file (before cleanup policies) still opens, as `delete`.
        let mut v1 = meta.encode()[..META_V1_LEN].to_vec();
        v1[8] = 1;
        let crc = crc32fast::hash(&v1[8..]);
        v1[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(TopicMeta::decode(&v1, p).expect("v1"), meta);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("files.events-v1_2").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "sp ace", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
