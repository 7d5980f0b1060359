//! Sparse per-segment indexes: offset → position and timestamp → offset.
//!
//! ```text
//! offset index entry (8 bytes):  | 0..4 relative_offset u32 LE | 4..8 position u32 LE |
//! time index entry  (12 bytes):  | 0..8 max_timestamp_ms i64 LE | 8..12 relative_offset u32 LE |
//! ```
//!
//! An entry is added for the first batch of a segment and then for the first batch that
//! starts at least `index_interval_bytes` after the previous entry, in both files at once.
//! `relative_offset` is the batch's base offset minus the segment's base offset;
//! `position` is the batch's byte position in the segment file. `max_timestamp_ms` is the
//! largest timestamp of any record from the segment start up to and including that batch
//! (a running maximum), so time entries are non-decreasing even when producers' clocks are
//! not, and a binary search is valid.
//!
//! Invariants: entries are strictly increasing in relative offset and position; every
//! entry points at the start of a batch of its segment.

use std::path::Path;

use crate::entry_file::EntryFile;
use crate::error::Result;
use crate::fsio::SyncPolicy;

pub const OFFSET_ENTRY_LEN: usize = 8;
pub const TIME_ENTRY_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub max_timestamp_ms: i64,
    pub relative_offset: u32,
}

impl OffsetEntry {
    fn encode(self) -> [u8; OFFSET_ENTRY_LEN] {
        let mut b = [0u8; OFFSET_ENTRY_LEN];
        b[..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        b[4..].copy_from_slice(&self.position.to_le_bytes());
        b
    }
    fn decode(b: [u8; OFFSET_ENTRY_LEN]) -> Self {
        let [r0, r1, r2, r3, p0, p1, p2, p3] = b;
        OffsetEntry {
            relative_offset: u32::from_le_bytes([r0, r1, r2, r3]),
            position: u32::from_le_bytes([p0, p1, p2, p3]),
        }
    }
}

impl TimeEntry {
    fn encode(self) -> [u8; TIME_ENTRY_LEN] {
        let mut b = [0u8; TIME_ENTRY_LEN];
        b[..8].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        b[8..].copy_from_slice(&self.relative_offset.to_le_bytes());
        b
    }
    fn decode(b: [u8; TIME_ENTRY_LEN]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[..8]);
        let mut rel = [0u8; 4];
        rel.copy_from_slice(&b[8..]);
        TimeEntry {
            max_timestamp_ms: i64::from_le_bytes(ts),
            relative_offset: u32::from_le_bytes(rel),
        }
    }
}

/// The pair of index files of one segment.
#[derive(Debug)]
pub struct SegmentIndex {
    offsets: EntryFile<OFFSET_ENTRY_LEN>,
    times: EntryFile<TIME_ENTRY_LEN>,
}

impl SegmentIndex {
    pub fn open_writable(
        offset_path: &Path,
        time_path: &Path,
        capacity: usize,
        offsets_len: usize,
        times_len: usize,
    ) -> Result<Self> {
        Ok(SegmentIndex {
            offsets: EntryFile::open_writable(offset_path, capacity, offsets_len)?,
            times: EntryFile::open_writable(time_path, capacity, times_len)?,
        })
    }

    pub fn open_readonly(offset_path: &Path, time_path: &Path) -> Result<Self> {
        Ok(SegmentIndex {
            offsets: EntryFile::open_readonly(offset_path)?,
            times: EntryFile::open_readonly(time_path)?,
        })
    }

    pub fn offset_entries(&self) -> usize {
        self.offsets.len()
    }

    pub fn time_entries(&self) -> usize {
        self.times.len()
    }

    pub fn offset_entry(&self, i: usize) -> Option<OffsetEntry> {
        self.offsets.get(i).map(OffsetEntry::decode)
    }

    pub fn time_entry(&self, i: usize) -> Option<TimeEntry> {
        self.times.get(i).map(TimeEntry::decode)
    }

    pub fn last_offset_entry(&self) -> Option<OffsetEntry> {
        self.offsets
            .len()
            .checked_sub(1)
            .and_then(|i| self.offset_entry(i))
    }

    pub fn last_time_entry(&self) -> Option<TimeEntry> {
        self.times
            .len()
            .checked_sub(1)
            .and_then(|i| self.time_entry(i))
    }

    /// Adds an entry for a batch. Returns false if the index is full (the caller then
    /// simply stops indexing this segment densely; lookups stay correct, only longer).
    pub fn push(&self, entry: OffsetEntry, max_timestamp_ms: i64) -> bool {
        if self.offsets.is_full() || self.times.is_full() {
            return false;
        }
        self.offsets.push(entry.encode());
        self.times.push(
            TimeEntry {
                max_timestamp_ms,
                relative_offset: entry.relative_offset,
            }
            .encode(),
        );
        true
    }

    /// The last entry whose relative offset is <= `relative_offset`: where a scan for that
    /// offset starts.
    pub fn lookup_offset(&self, relative_offset: u32) -> Option<OffsetEntry> {
        self.last_entry_where(|e| e.relative_offset <= relative_offset)
    }

    /// The last entry whose position is <= `position`: the furthest indexed batch start
    /// that a run of batches from an earlier start can skip to.
    pub fn lookup_position(&self, position: u32) -> Option<OffsetEntry> {
        self.last_entry_where(|e| e.position <= position)
    }

    /// The last entry of the run of entries, from the first, that satisfy `below` (both
    /// fields increase with the index, so either bound splits the entries in two).
    fn last_entry_where(&self, below: impl Fn(OffsetEntry) -> bool) -> Option<OffsetEntry> {
        let (mut lo, mut hi) = (0usize, self.offsets.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.offset_entry(mid) {
                Some(e) if below(e) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo.checked_sub(1).and_then(|i| self.offset_entry(i))
    }

    /// Where a scan for the first batch with a timestamp >= `timestamp_ms` can start:
    /// the relative offset of the last entry whose running maximum is below the target
    /// (every batch up to it is too old), or `None` to start at the segment's beginning.
    pub fn lookup_time(&self, timestamp_ms: i64) -> Option<u32> {
        let n = self.times.len();
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.time_entry(mid) {
                Some(e) if e.max_timestamp_ms < timestamp_ms => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo.checked_sub(1)
            .and_then(|i| self.time_entry(i))
            .map(|e| e.relative_offset)
    }

    /// Drops entries at or after `position` (recovery only).
    pub fn truncate_from_position(&self, position: u32) {
        let n = self.offsets.len();
        let mut keep = n;
        while keep > 0 {
            match self.offset_entry(keep - 1) {
                Some(e) if e.position >= position => keep -= 1,
                _ => break,
            }
        }
        self.offsets.truncate(keep);
        self.times.truncate(keep.min(self.times.len()));
    }

    /// Keeps only the first `offsets`/`times` entries (recovery only).
    pub fn truncate_entries(&self, offsets: usize, times: usize) {
        self.offsets.truncate(offsets);
        self.times.truncate(times);
    }

    pub fn sync_range(
        &self,
        offsets_from: usize,
        times_from: usize,
        policy: &SyncPolicy,
    ) -> Result<()> {
        self.offsets
            .sync_range(offsets_from, self.offsets.len(), policy)?;
        self.times.sync_range(times_from, self.times.len(), policy)
    }

    pub fn trim(&self, policy: &SyncPolicy) -> Result<()> {
        self.offsets.trim(policy)?;
        self.times.trim(policy)
    }

    /// Checks the structural invariants (strictly increasing entries, positions inside
    /// `segment_len`). A failure means the index must be rebuilt from the segment.
    pub fn is_consistent(&self, segment_len: u32) -> bool {
        let n = self.offsets.len();
        if self.times.len() != n {
            return false;
        }
        let mut prev: Option<(OffsetEntry, i64)> = None;
        for i in 0..n {
            let (Some(e), Some(t)) = (self.offset_entry(i), self.time_entry(i)) else {
                return false;
            };
            if e.position >= segment_len || t.relative_offset != e.relative_offset {
                return false;
            }
            if let Some((p, pts)) = prev {
                if e.relative_offset <= p.relative_offset
                    || e.position <= p.position
                    || t.max_timestamp_ms < pts
                {
                    return false;
                }
            } else if e.relative_offset != 0 || e.position != 0 {
                return false;
            }
            prev = Some((e, t.max_timestamp_ms));
        }
        true
    }
}
