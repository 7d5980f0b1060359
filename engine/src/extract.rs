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
use crate::tenant_map::{tenant_bits, TenantMap};

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
/// In a sealed segment only the runs of batches its tenant map names for the tenant are
/// read ([`tenant_run`]); elsewhere whole batches of other tenants are skipped from their
/// header, without decoding.
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
    // Where the last run ended, as (offset, segment, position): the next run's start
    // without a lookup of the offset (whose header walk would touch, and read around,
    // pages before it).
    let mut ended: Option<Place> = None;
    while at <= upto && scanned < max_bytes as usize && out.len() < max_bytes as usize {
        let known = ended.take().filter(|p| p.offset == at);
        let fetched;
        let (bytes, run_end): (&[u8], Option<Place>) = match tenant_run(segments, tenant, at, known)
        {
            Some(TenantRun::Past(next)) => {
                at = next;
                continue;
            }
            Some(TenantRun::Batches(bytes, end)) => (bytes, Some(end)),
            None => {
                fetched = partition.read_pinned(segments, at, max_bytes)?;
                if fetched.is_empty() {
                    break;
                }
                (&fetched, None)
            }
        };
        scanned += bytes.len();
        let taken = take_batches(
            bytes,
            tenant,
            criteria,
            at,
            upto,
            &mut out,
            &mut scratch,
            max_bytes,
        )?;
        if let (Taken::All(next), Some(end)) = (&taken, run_end) {
            ended = Some(Place {
                offset: *next,
                ..end
            });
        }
        match taken {
            Taken::All(next) if next > at => at = next,
            // (Cannot happen: a run holds at least the batch of `at` or a later one.)
            Taken::All(_) => break,
            Taken::Full(resume) => return Ok((out, resume)),
        }
    }
    Ok((out, at))
}

/// How far [`take_batches`] got.
enum Taken {
    /// Through the last batch: the offset after it.
    All(u64),
    /// `out` is full: the offset to resume from (a batch left for the next step).
    Full(u64),
}

/// Appends to `out` what `select` keeps of every batch in `bytes` (whole batches).
#[allow(clippy::too_many_arguments)]
fn take_batches(
    bytes: &[u8],
    tenant: &[u8],
    criteria: &Criteria,
    at: u64,
    upto: u64,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    max_bytes: u32,
) -> Result<Taken> {
    let mut pos = 0;
    let mut next = at;
    while pos < bytes.len() {
        let view =
            view_stored(&bytes[pos..]).map_err(|e| EngineError::InvalidBatch(e.to_string()))?;
        let kept = select(&view, tenant, criteria, at, upto);
        let before = out.len();
        push_batch(out, scratch, &view, &kept);
        if before > 0 && out.len() > max_bytes as usize {
            // Never past `max_bytes` (a reader's credit) unless one batch alone is: this
            // batch starts the next step.
            out.truncate(before);
            return Ok(Taken::Full(view.header.base_offset.max(at)));
        }
        next = view.header.next_offset();
        pos += view.bytes().len();
    }
    Ok(Taken::All(next))
}

/// A place in the log: an offset, and where its batch starts in which segment.
#[derive(Debug, Clone, Copy)]
struct Place {
    offset: u64,
    segment: u64,
    position: u32,
}

/// What a sealed segment's tenant map says a history scan standing at `at` reads next.
enum TenantRun<'a> {
    /// These whole batches (the ones that start in one chunk the map names for the
    /// tenant: from `at`'s batch when its chunk is named, else the next named chunk's),
    /// and the place right after them (its offset left for the caller to fill in).
    Batches(&'a [u8], Place),
    /// Nothing before this offset (the segment's end: no chunk left is named).
    Past(u64),
}

/// The next run a history scan of `tenant` at `at` reads, from the tenant map of `at`'s
/// segment (`tenant_map.rs`); `None` where there is no map to go by (the active segment,
/// one that could not be mapped, every tenant's history): the scan then reads on from
/// `at`. The run's pages are asked of the disk in one go before they are touched, so that
/// the faults of reading them find them coming and do not read around them (which would
/// read the other tenants' batches beside them, the very thing the map saves).
fn tenant_run<'a>(
    segments: &'a [Arc<Segment>],
    tenant: &[u8],
    at: u64,
    known: Option<Place>,
) -> Option<TenantRun<'a>> {
    if tenant.is_empty() {
        return None;
    }
    let idx = segments.partition_point(|s| s.base_offset() <= at);
    let seg = segments.get(idx.checked_sub(1)?)?;
    let map = seg.tenant_map()?;
    let pos = match known.filter(|p| p.segment == seg.base_offset() && p.position < seg.len()) {
        Some(place) => place.position,
        None => seg.find_position(at)?,
    };
    let bits = tenant_bits(tenant);
    let chunk = TenantMap::chunk_of(pos);
    let (from, chunk) = if map.next_chunk(bits, chunk) == Some(chunk) {
        (pos, chunk) // `pos` starts a batch of this chunk: from it
    } else {
        match map.next_chunk(bits, chunk + 1) {
            Some(next) => (map.first_batch(next)?, next),
            // (A segment that does not know its end is read as it comes.)
            None => return (seg.next_offset() > at).then(|| TenantRun::Past(seg.next_offset())),
        }
    };
    let end = map.run_end(chunk, seg.len());
    seg.will_need(from, end);
    let after = Place {
        offset: 0,
        segment: seg.base_offset(),
        position: end,
    };
    seg.bytes(from, end)
        .map(|bytes| TenantRun::Batches(bytes, after))
}
