//! The recovery checkpoint of a partition: how far its active segment is known durable.
//!
//! The flusher rewrites it in place after every successful sync of the active segment.
//! It is *not* fsynced itself: a stale checkpoint (older than the real durable point)
//! only makes recovery scan more, and it is never newer than the data, because it is
//! written after the sync that makes it true. Recovery trusts the segment bytes and
//! index entries below it and scans (CRC-checks) everything after.
//!
//! ```text
//! recovery.checkpoint (48 bytes):
//! | 0..4   magic "TLCK"
//! | 4..8   crc32 u32 LE of bytes 8..48
//! | 8..16  segment_base u64 LE     base offset of the segment it describes
//! | 16..20 position u32 LE         bytes of that segment known durable (a batch boundary)
//! | 20..24 offset_entries u32 LE   offset-index entries known durable
//! | 24..28 time_entries u32 LE     time-index entries known durable
//! | 28..32 reserved, 0
//! | 32..40 next_offset u64 LE      offset after the last durable batch
//! | 40..48 max_timestamp_ms i64 LE running maximum timestamp at `position`
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

pub const CHECKPOINT_FILE: &str = "recovery.checkpoint";
pub const CHECKPOINT_LEN: usize = 48;
const MAGIC: &[u8; 4] = b"TLCK";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub segment_base: u64,
    pub position: u32,
    pub offset_entries: u32,
    pub time_entries: u32,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
}

impl Checkpoint {
    pub fn encode(&self) -> [u8; CHECKPOINT_LEN] {
        let mut b = [0u8; CHECKPOINT_LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.segment_base.to_le_bytes());
        b[16..20].copy_from_slice(&self.position.to_le_bytes());
        b[20..24].copy_from_slice(&self.offset_entries.to_le_bytes());
        b[24..28].copy_from_slice(&self.time_entries.to_le_bytes());
        b[32..40].copy_from_slice(&self.next_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Checkpoint> {
        let b: &[u8; CHECKPOINT_LEN] = b.get(..CHECKPOINT_LEN)?.try_into().ok()?;
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        if &b[0..4] != MAGIC || crc32fast::hash(&b[8..]) != u32_at(4) {
            return None;
        }
        Some(Checkpoint {
            segment_base: u64_at(8),
            position: u32_at(16),
            offset_entries: u32_at(20),
            time_entries: u32_at(24),
            next_offset: u64_at(32),
            max_timestamp_ms: u64_at(40) as i64,
        })
    }
}

/// The open checkpoint file of one partition.
#[derive(Debug)]
pub struct CheckpointFile {
    path: PathBuf,
    file: File,
}

impl CheckpointFile {
    pub fn open(dir: &Path) -> Result<CheckpointFile> {
        let path = dir.join(CHECKPOINT_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| EngineError::io("open checkpoint", &path, e))?;
        Ok(CheckpointFile { path, file })
    }

    pub fn read(&self) -> Option<Checkpoint> {
        let mut b = [0u8; CHECKPOINT_LEN];
        self.file.read_exact_at(&mut b, 0).ok()?;
        Checkpoint::decode(&b)
    }

    pub fn write(&self, cp: &Checkpoint) -> Result<()> {
        self.file
            .write_all_at(&cp.encode(), 0)
            .map_err(|e| EngineError::io("write checkpoint", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let cp = Checkpoint {
            segment_base: 5,
            position: 4096,
            offset_entries: 2,
            time_entries: 2,
            next_offset: 77,
            max_timestamp_ms: -3,
        };
        let bytes = cp.encode();
        assert_eq!(Checkpoint::decode(&bytes), Some(cp));
        for i in 0..CHECKPOINT_LEN {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert_eq!(Checkpoint::decode(&bad), None, "byte {i}");
        }
    }
}
