//! Compaction of a topic whose cleanup policy is `compact`: a closed, sealed segment is
//! rewritten keeping, for each (tenant, key), only the record the tenant index names as
//! that key's latest; offsets are preserved (the rewritten segment has gaps).
//!
//! What is kept, per record of the segment:
//! - a record without a key or without a tenant: always (there is nothing to compact it
//!   against — compaction is by (tenant, key));
//! - a live record: only if the index's offset for its (tenant, key) is this record's;
//! - a tombstone: only if its key is still deleted in the index and the tombstone is
//!   younger than the topic's `tombstone_retention_ms` (by its timestamp) — or if an
//!   older version of its key survives as some segment's last record (below);
//! - the segment's last record, always: it fixes where the segment ends, so the next
//!   segment still continues it (recovery checks that). A superseded record kept there is
//!   an older version of a key, which a consumer replaying the log in order overwrites —
//!   with the key's later record, or with the key's tombstone, which is why a tombstone
//!   is kept past its retention while such a record of its key exists (at most one per
//!   segment).
//!
//! The index is the one of an instant before the rewrite; appends that happen during it
//! only make more records obsolete, never fewer, so nothing the rewrite drops is needed.
//! Readers keep the old mapping (an extraction's snapshot pins its segments), so nothing is
//! pulled from under them.
//!
//! Crash safety (like Kafka's `.cleaned`/`.swap`): the new segment is written in
//! `.compact-<base>/` beside the partition's files, sealed (synced) and checked; then a
//! `COMMIT` file is written and synced — the commit point; then its files are renamed over
//! the old ones and the directory is removed. On open, a `.compact-*` directory with
//! `COMMIT` is finished (its remaining files renamed into place); one without it is
//! deleted. A crash at any point leaves either the old segment or the new one, whole.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use tidelog_protocol::batch::{mark_offset_gap, view_stored};
use tidelog_protocol::record::RecordView;

use crate::error::{EngineError, Result};
use crate::extract::push_batch;
use crate::fsio::{self, SyncPolicy};
use crate::key_map::key_hash;
use crate::segment::{self, Segment};
use crate::tenant_index::TenantIndex;

const COMMIT_FILE: &str = "COMMIT";
const SCRATCH_PREFIX: &str = ".compact-";
/// A segment is rewritten only if at least this fraction of its bytes can go.
pub const MIN_GAIN: f64 = 0.1;

/// What one compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionStats {
    pub segments_rewritten: usize,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

fn scratch_dir(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{SCRATCH_PREFIX}{base:020}"))
}

/// Finishes or abandons compactions a crash interrupted (called before a partition's
/// segments are listed).
pub fn recover(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(EngineError::io("list", dir, e)),
    };
    let mut changed = false;
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(SCRATCH_PREFIX) {
            continue;
        }
        let scratch = entry.path();
        if scratch.join(COMMIT_FILE).exists() {
            tracing::warn!(dir = %dir.display(), scratch = name, "finishing an interrupted compaction");
            move_into_place(&scratch, dir)?;
        } else {
            tracing::warn!(dir = %dir.display(), scratch = name, "discarding an unfinished compaction");
        }
        fs::remove_dir_all(&scratch).map_err(|e| EngineError::io("remove", &scratch, e))?;
        changed = true;
    }
    if changed {
        fsio::sync_dir(dir)?;
    }
    Ok(())
}

/// Renames every segment file of `scratch` over its namesake in `dir`.
fn move_into_place(scratch: &Path, dir: &Path) -> Result<()> {
    for entry in fs::read_dir(scratch).map_err(|e| EngineError::io("list", scratch, e))? {
        let entry = entry.map_err(|e| EngineError::io("list", scratch, e))?;
        let name = entry.file_name();
        if name == COMMIT_FILE {
            continue;
        }
        let to = dir.join(&name);
        fs::rename(entry.path(), &to).map_err(|e| EngineError::io("rename", &to, e))?;
    }
    fsio::sync_dir(dir)
}

/// (tenant, key hash) of superseded records that survive as segments' last records: their
/// tombstones must stay.
pub type Pinned = HashSet<(Vec<u8>, u128)>;

/// What compaction decides with: the index of an instant, the pinned keys, the time.
#[derive(Debug)]
pub struct Rules<'a> {
    pub index: &'a TenantIndex,
    pub pinned: &'a Pinned,
    pub now_ms: i64,
    pub tombstone_retention_ms: u64,
}

impl Rules<'_> {
    /// Whether `r` is the latest record of its (tenant, key), or has neither.
    fn is_latest(&self, r: &RecordView<'_>) -> bool {
        let (Some(key), Some(tenant)) = (r.key, r.tenant) else {
            return true;
        };
        match self.index.tenant(tenant).map(|t| t.keys.get(key_hash(key))) {
            None => true, // a tenant the index does not know: nothing to compact against
            Some(Some(latest)) => latest == r.offset,
            Some(None) => r.value.is_none(), // deleted: only a tombstone can be latest
        }
    }

    /// Whether `r` survives compaction (see the module documentation).
    fn keeps(&self, r: &RecordView<'_>) -> bool {
        if !self.is_latest(r) {
            return false;
        }
        let (Some(key), Some(tenant), None) = (r.key, r.tenant, r.value) else {
            return true;
        };
        let age = self.now_ms.saturating_sub(r.timestamp_ms);
        age < 0
            || (age as u64) < self.tombstone_retention_ms
            || self.pinned.contains(&(tenant.to_vec(), key_hash(key)))
    }
}

/// The key of `seg`'s last record if that record is superseded (it survives compaction
/// as the segment's last record, so its key's tombstone must stay).
pub fn pinned_key(seg: &Segment, index: &TenantIndex) -> Option<(Vec<u8>, u128)> {
    let last = seg.next_offset().checked_sub(1)?;
    let pos = seg.find_position(last)?;
    let view = view_stored(seg.bytes(pos, seg.len())?).ok()?;
    let r = view.records().filter_map(|r| r.ok()).last()?;
    let rules = Rules {
        index,
        pinned: &Pinned::new(),
        now_ms: 0,
        tombstone_retention_ms: 0,
    };
    if rules.is_latest(&r) {
        return None;
    }
    Some((r.tenant?.to_vec(), key_hash(r.key?)))
}

/// A segment's kept batches (base offset, bytes) and how many records go.
pub type Plan = (Vec<(u64, Vec<u8>)>, u64);

/// The records of `seg` compaction keeps, as whole batches ready to append (offsets
/// preserved; a batch after a gap carries `FLAG_OFFSET_GAP`), with their base offsets.
/// `None` when less than [`MIN_GAIN`] of the segment would go.
pub fn plan(seg: &Segment, rules: &Rules<'_>) -> Result<Option<Plan>> {
    let len = seg.len();
    let bytes = seg.bytes(0, len).unwrap_or(&[]);
    let last_offset = seg.next_offset().saturating_sub(1);
    let (mut out, mut removed, mut kept_bytes) = (Vec::new(), 0u64, 0usize);
    let mut expected = seg.base_offset();
    let mut scratch = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let view = view_stored(&bytes[pos..])
            .map_err(|e| EngineError::corrupt(seg.path(), pos as u64, e.to_string()))?;
        pos += view.bytes().len();
        let mut kept: Vec<RecordView<'_>> = Vec::new();
        let mut total = 0u32;
        for r in view.records() {
            let r = r.map_err(|e| EngineError::corrupt(seg.path(), pos as u64, e))?;
            total += 1;
            if r.offset == last_offset || rules.keeps(&r) {
                kept.push(r);
            }
        }
        removed += u64::from(total) - kept.len() as u64;
        let Some(first) = kept.first() else {
            continue;
        };
        let base = first.offset;
        let gap = base != expected;
        // The stored batch when all of it stays, else its kept records re-encoded (with
        // their offsets; records of a tenant-uniform batch carry its tenant when decoded,
        // so the result is tenant-uniform again).
        let mut batch_bytes = Vec::new();
        push_batch(&mut batch_bytes, &mut scratch, &view, &kept);
        if gap {
            mark_offset_gap(&mut batch_bytes);
        }
        expected = kept.last().map_or(expected, |r| r.offset + 1);
        kept_bytes += batch_bytes.len();
        out.push((base, batch_bytes));
    }
    let gain = 1.0 - kept_bytes as f64 / (len.max(1) as f64);
    if removed == 0 || gain < MIN_GAIN {
        return Ok(None);
    }
    Ok(Some((out, removed)))
}

/// Writes `batches` as the new version of segment `base` and swaps it in on disk,
/// crash-safely (see the module documentation). Returns the new segment, opened.
pub fn rewrite(
    dir: &Path,
    base: u64,
    batches: &[(u64, Vec<u8>)],
    index_interval_bytes: u32,
    sync: &SyncPolicy,
) -> Result<Segment> {
    let scratch = scratch_dir(dir, base);
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(|e| EngineError::io("remove", &scratch, e))?;
    }
    fs::create_dir(&scratch).map_err(|e| EngineError::io("create", &scratch, e))?;
    let total: usize = batches.iter().map(|(_, b)| b.len()).sum();
    let capacity =
        u32::try_from(total).map_err(|_| EngineError::InvalidConfig("segment too large".into()))?;
    {
        let seg = Segment::create(&scratch, base, capacity.max(1), index_interval_bytes)?;
        for (offset, bytes) in batches {
            let view = view_stored(bytes).map_err(|e| EngineError::InvalidBatch(e.to_string()))?;
            seg.append(bytes, &view.header, *offset)?;
        }
        seg.seal(0, sync)?;
        // Its tenant map goes into place with it.
        seg.store_tenant_map();
        // Check what was written before committing to it.
        drop(seg);
        let check = Segment::open_closed(&scratch, base, index_interval_bytes)?;
        check
            .check_tail(base)
            .map_err(|why| EngineError::corrupt(segment::log_path(&scratch, base), 0, why))?;
    }
    fsio::sync_dir(&scratch)?;
    fsio::write_atomic(&scratch.join(COMMIT_FILE), b"commit", true)?;
    fsio::sync_dir(&scratch)?;
    move_into_place(&scratch, dir)?;
    fs::remove_dir_all(&scratch).map_err(|e| EngineError::io("remove", &scratch, e))?;
    fsio::sync_dir(dir)?;
    let seg = Segment::open_closed(dir, base, index_interval_bytes)?;
    seg.check_tail(base)
        .map_err(|why| EngineError::corrupt(segment::log_path(dir, base), 0, why))?;
    Ok(seg)
}
