//! Tenant snapshots: the state extraction's consistent cut.
//!
//! [`Partition::tenant_snapshot`](crate::Partition::tenant_snapshot) takes, under the
//! partition's index lock and once every update queued by appends is applied, the
//! watermark W (the last offset the index covers, at or past the log's end when asked)
//! and a copy of the tenant's live offsets as of W. Every offset in it is ≤ W and names the
//! latest record of a live key as of W; those records are immutable. The snapshot also
//! holds the segment list of that instant, so retention cannot pull a segment it still
//! needs (a deleted file's mapping lives as long as the snapshot).
//!
//! Snapshot ∪ (the tenant's records after W) = the tenant's state at any later point: the
//! handoff has no gap and no overlap, because only the holder of the index lock changes
//! the index, so W is read in the same critical section as the offsets are copied.

use std::sync::Arc;

use tidelog_protocol::batch::{self, view_stored, BatchView};
use tidelog_protocol::builder::{encode_batch, ProducerStamp};
use tidelog_protocol::record::RecordView;

use crate::error::{EngineError, Result};
use crate::segment::Segment;

/// What a history extraction (and, optionally, a state extraction) keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Criteria {
    /// Records at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Records at or before this time.
    pub until_ms: Option<i64>,
    pub key_prefix: Option<Vec<u8>>,
    /// Every one of these (name, value) pairs must be among the record's headers.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Criteria {
    pub fn is_empty(&self) -> bool {
        *self == Criteria::default()
    }

    pub fn matches(&self, r: &RecordView<'_>) -> bool {
        self.since_ms.is_none_or(|t| r.timestamp_ms >= t)
            && self.until_ms.is_none_or(|t| r.timestamp_ms <= t)
            && self
                .key_prefix
                .as_deref()
                .is_none_or(|p| r.key.is_some_and(|k| k.starts_with(p)))
            && self.headers.iter().all(|(n, v)| {
                r.headers()
                    .any(|(hn, hv)| hn == n.as_slice() && hv == v.as_slice())
            })
    }
}

/// Appends the `kept` records of `source` to `out`: the stored batch as it is when every
/// record of it is kept (no re-encoding, its CRC still valid), else a re-encoded batch of
/// just those records (offsets preserved).
pub fn push_batch(
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    source: &BatchView<'_>,
    kept: &[RecordView<'_>],
) {
    if !kept.is_empty() && kept.len() == source.header.record_count as usize {
        out.extend_from_slice(source.bytes());
        return;
    }
    if let Some(first) = kept.first() {
        let base = first.offset;
        encode_batch(
            scratch,
            kept,
            |k| (kept[k].offset - base) as u32,
            ProducerStamp::default(),
        );
        batch::stamp_base_offset(scratch, base);
        out.extend_from_slice(scratch);
    }
}

/// The records of `tenant` (empty: every record, of any tenant or none) matching
/// `criteria` in one stored batch with offsets in `[from, upto]`. A tenant-uniform batch
/// of another tenant is skipped from its header.
pub(crate) fn select<'a>(
    view: &BatchView<'a>,
    tenant: &[u8],
    criteria: &Criteria,
    from: u64,
    upto: u64,
) -> Vec<RecordView<'a>> {
    let any = tenant.is_empty();
    if !any && view.uniform_tenant().is_some_and(|t| t != tenant) {
        return Vec::new();
    }
    view.records()
        .filter_map(Result::ok)
        .filter(|r| {
            r.offset >= from
                && r.offset <= upto
                && (any || r.tenant == Some(tenant))
                && criteria.matches(r)
        })
        .collect()
}

/// A frozen view of one tenant's live keys at a watermark (or, for an empty `tenant`,
/// every tenant's: a topic-wide extraction).
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
        crate::offset_sort::sort(&mut offsets);
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
    pub fn read(
        &self,
        cursor: usize,
        max_bytes: usize,
        criteria: &Criteria,
    ) -> Result<(Vec<u8>, usize)> {
        let mut out = Vec::with_capacity(max_bytes + (64 << 10));
        let mut i = cursor;
        let mut batch_buf = Vec::new();
        while i < self.offsets.len() && (out.is_empty() || out.len() < max_bytes) {
            let batch_start = i;
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
                    if criteria.matches(&record) {
                        kept.push(record);
                    }
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
                if !out.is_empty() && out.len() + batch_buf.len() > max_bytes {
                    // Never past `max_bytes` (a reader's credit) unless one batch alone is:
                    // this batch is the next chunk's first.
                    i = batch_start;
                    break;
                }
                out.extend_from_slice(&batch_buf);
            }
        }
        Ok((out, i))
    }
}

/// One step of a history extraction: the tenant's records matching `criteria` with
/// offsets in `[from, upto]`, re-encoded (offsets preserved), scanning about `max_bytes`
/// of log. Returns the bytes and the offset to continue from (past `upto` when done).
/// Whole batches of other tenants are skipped from their header, without decoding.
pub fn history_step(
    partition: &crate::Partition,
    segments: &[Arc<Segment>],
    tenant: &[u8],
    criteria: &Criteria,
    from: u64,
    upto: u64,
    max_bytes: u32,
) -> Result<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    let mut at = from.max(partition.earliest_offset());
    let mut scanned = 0usize;
    while at <= upto && scanned < max_bytes as usize && out.len() < max_bytes as usize {
        let fetched = partition.read_pinned(segments, at, max_bytes)?;
        if fetched.is_empty() {
            break;
        }
        let bytes: &[u8] = &fetched;
        let mut pos = 0;
        while pos < bytes.len() {
            let view =
                view_stored(&bytes[pos..]).map_err(|e| EngineError::InvalidBatch(e.to_string()))?;
            let kept = select(&view, tenant, criteria, at, upto);
            let before = out.len();
            push_batch(&mut out, &mut scratch, &view, &kept);
            if before > 0 && out.len() > max_bytes as usize {
                // Never past `max_bytes` (a reader's credit) unless one batch alone is:
                // this batch starts the next step.
                out.truncate(before);
                return Ok((out, view.header.base_offset.max(at)));
            }
            pos += view.bytes().len();
        }
        scanned += bytes.len();
        at = fetched.next_offset;
    }
    Ok((out, at))
}
