//! Tenant snapshots: the state extraction's consistent cut.
//!
//! [`Partition::tenant_snapshot`](crate::Partition::tenant_snapshot) takes, under the
//! writer lock, the watermark W (the partition's last offset) and the tenant's key map as
//! of W (an O(1) clone of a persistent map). Every offset in it is ≤ W and names the
//! latest record of a live key as of W; those records are immutable. The snapshot also
//! holds the segment list of that instant, so retention cannot pull a segment it still
//! needs (a deleted file's mapping lives as long as the snapshot).
//!
//! Snapshot ∪ (the tenant's records after W) = the tenant's state at any later point: the
//! handoff has no gap and no overlap, because W is read in the same critical section as
//! the map is frozen.

use std::sync::Arc;

use tidelog_protocol::batch::{self, view_stored};
use tidelog_protocol::builder::{encode_batch, ProducerStamp};

use crate::error::{EngineError, Result};
use crate::segment::Segment;

/// A frozen view of one tenant's live keys at a watermark.
#[derive(Debug, Clone)]
pub struct TenantSnapshot {
    pub tenant: Vec<u8>,
    /// The last offset the snapshot reflects; `None` when the partition was empty.
    pub watermark: Option<u64>,
    /// Offsets of the latest record of every live key, ascending (read-friendly order).
    offsets: Arc<Vec<u64>>,
    /// The partition's segments when the snapshot was taken (pinned).
    segments: Arc<Vec<Arc<Segment>>>,
}

impl TenantSnapshot {
    pub(crate) fn new(
        tenant: Vec<u8>,
        watermark: Option<u64>,
        mut offsets: Vec<u64>,
        segments: Arc<Vec<Arc<Segment>>>,
    ) -> Self {
        offsets.sort_unstable();
        TenantSnapshot {
            tenant,
            watermark,
            offsets: Arc::new(offsets),
            segments,
        }
    }

    /// Where the live stream continues: W + 1 (0 for an empty partition).
    pub fn next_offset(&self) -> u64 {
        self.watermark.map_or(0, |w| w + 1)
    }

    /// Live keys in the snapshot.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Re-encoded batches holding the snapshot's records from position `cursor` (an index
    /// into the ascending offsets), up to about `max_bytes` (at least one batch). Each
    /// record keeps its offset. Returns the bytes and the cursor to continue from; the
    /// snapshot is complete when the cursor reaches [`TenantSnapshot::len`]. A cursor is
    /// all a client needs to resume an interrupted extraction.
    pub fn read(&self, cursor: usize, max_bytes: usize) -> Result<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut i = cursor;
        let mut batch_buf = Vec::new();
        while i < self.offsets.len() && (out.is_empty() || out.len() < max_bytes) {
            let offset = self.offsets[i];
            let idx = self.segments.partition_point(|s| s.base_offset() <= offset);
            let Some(seg) = idx.checked_sub(1).and_then(|k| self.segments.get(k)) else {
                // Below the log's start when the snapshot was taken: cannot happen for a
                // live key unless retention removed it first; skip it.
                i += 1;
                continue;
            };
            let position = seg.find_position(offset).ok_or_else(|| {
                EngineError::corrupt(
                    seg.path(),
                    0,
                    format!("snapshot offset {offset} not in its segment"),
                )
            })?;
            let bytes = seg.bytes(position, seg.len()).unwrap_or(&[]);
            let view = view_stored(bytes).map_err(|e| {
                EngineError::corrupt(seg.path(), u64::from(position), e.to_string())
            })?;
            let last = view.header.last_offset();
            let mut kept = Vec::new();
            for record in view.records() {
                let record =
                    record.map_err(|e| EngineError::corrupt(seg.path(), u64::from(position), e))?;
                while i < self.offsets.len() && self.offsets[i] < record.offset {
                    i += 1; // an offset the batch does not hold (cannot happen for a valid index)
                }
                if i < self.offsets.len() && self.offsets[i] == record.offset {
                    kept.push(record);
                    i += 1;
                }
            }
            while i < self.offsets.len() && self.offsets[i] <= last {
                i += 1;
            }
            if let Some(first) = kept.first() {
                let base = first.offset;
                encode_batch(
                    &mut batch_buf,
                    &kept,
                    |k| (kept[k].offset - base) as u32,
                    ProducerStamp::default(),
                );
                batch::stamp_base_offset(&mut batch_buf, base);
                out.extend_from_slice(&batch_buf);
            }
        }
        Ok((out, i))
    }
}
