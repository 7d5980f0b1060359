//! Opening a partition directory: find the segments, decide what can be trusted, cut a
//! torn tail, rebuild indexes, restore producer state. See `docs/FORMAT.md`, "Recovery".
//!
//! Trust rules:
//! - After a clean shutdown (engine-wide marker), nothing is scanned: each segment's
//!   length is its file length and only the last batches after the last index entry are
//!   walked to learn the next offset. Milliseconds whatever the log size.
//! - Sealed segments (all but the last) were trimmed and fsynced when they rolled: a cheap
//!   check (walk from the last index entry, CRC of the tail batches, end == file length)
//!   suffices. If it fails, the segment is rescanned and its indexes rebuilt; damage in
//!   its data is corruption, handled per [`RecoveryPolicy`].
//! - The active segment is trusted up to the recovery checkpoint (what the flusher last
//!   synced) and CRC-scanned from there: the work is proportional to the unflushed tail.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::config::{RecoveryPolicy, TopicConfig};
use crate::error::{EngineError, Result};
use crate::fsio::SyncPolicy;
use crate::index::{OFFSET_ENTRY_LEN, TIME_ENTRY_LEN};
use crate::partition::{Recovered, PRODUCER_SNAPSHOT_FILE, TENANT_INDEX_FILE};
use crate::producer::{BatchRecord, ProducerState};
use crate::segment::{self, ScanOutcome, Segment};
use crate::tenant_index::TenantIndex;

/// One cut made by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub segment: PathBuf,
    /// Position the segment now ends at.
    pub position: u64,
    pub reason: String,
}

/// What recovery did to one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub clean: bool,
    pub segments: usize,
    /// Bytes whose batches were CRC-checked.
    pub scanned_bytes: u64,
    pub truncations: Vec<Truncation>,
    pub indexes_rebuilt: usize,
    /// Whole segments removed because they followed a cut.
    pub segments_dropped: usize,
    /// Bytes of batches replayed into the tenant index after its checkpoint.
    pub index_replayed_bytes: u64,
    pub next_offset: u64,
}

pub(crate) struct Opened {
    pub recovered: Recovered,
    pub report: RecoveryReport,
}

/// How much of a segment recovery may trust without reading it.
#[derive(Debug, Clone, Copy)]
enum Trust {
    /// Clean shutdown: everything.
    Clean,
    /// Sealed before the checkpoint's segment: synced and trimmed; a cheap check suffices.
    Sealed,
    /// The checkpoint's segment: synced up to the checkpoint, scanned after it.
    Checkpoint(Checkpoint),
    /// After the checkpoint (or no checkpoint): nothing is known synced; scan it all.
    Unsynced,
}

pub(crate) fn open_partition(
    dir: &Path,
    config: &TopicConfig,
    policy: RecoveryPolicy,
    clean: bool,
    sync: &SyncPolicy,
) -> Result<Opened> {
    fs::create_dir_all(dir).map_err(|e| EngineError::io("create partition dir", dir, e))?;
    // A compaction a crash interrupted: finished if it committed, else discarded.
    crate::compaction::recover(dir)?;
    let bases = list_segments(dir)?;
    let mut report = RecoveryReport {
        clean,
        ..RecoveryReport::default()
    };
    if bases.is_empty() {
        let seg = Segment::create(dir, 0, config.segment_bytes, config.index_interval_bytes)?;
        crate::fsio::sync_dir(dir)?;
        report.segments = 1;
        return Ok(Opened {
            recovered: Recovered {
                segments: vec![Arc::new(seg)],
                producers: ProducerState::default(),
                tenants: TenantIndex::default(),
                durable_offset: 0,
            },
            report,
        });
    }
    let checkpoint = if clean {
        None
    } else {
        CheckpointFile::open(dir)?.read()
    };
    let trust_of = |base: u64| match checkpoint {
        _ if clean => Trust::Clean,
        Some(cp) if base < cp.segment_base => Trust::Sealed,
        Some(cp) if base == cp.segment_base => Trust::Checkpoint(cp),
        _ => Trust::Unsynced,
    };

    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
    let mut expected: Option<u64> = None;
    // Whether the previous segment lies in the unsynced tail, where a crash can leave it
    // shorter than its successor's base: a torn tail, not corruption.
    let mut previous_unsynced = false;
    let mut active: Option<(Segment, u64)> = None;
    let last_index = bases.len() - 1;
    for (i, &base) in bases.iter().enumerate() {
        if let Some(exp) = expected.filter(|&exp| exp != base) {
            let reason = format!("segment {base} does not continue at offset {exp}");
            let path = segment::log_path(dir, base);
            if previous_unsynced {
                if policy == RecoveryPolicy::AbsoluteConsistency {
                    return Err(EngineError::corrupt(&path, 0, reason));
                }
                report.truncations.push(Truncation {
                    segment: path,
                    position: 0,
                    reason,
                });
            } else {
                corruption(policy, &path, 0, &reason)?;
            }
            drop_segments(dir, &bases[i..], &mut report)?;
            break;
        }
        let trust = trust_of(base);
        previous_unsynced = matches!(trust, Trust::Checkpoint(_) | Trust::Unsynced);
        if i == last_index {
            active = Some(open_active(dir, base, config, policy, trust, &mut report)?);
            break;
        }
        let (seg, damage) = if previous_unsynced {
            seal_unsynced(dir, base, config, trust, sync, &mut report)?
        } else {
            open_sealed(dir, base, config, sync, &mut report)?
        };
        expected = Some(seg.next_offset());
        if seg.is_empty() && damage.is_none() {
            // An empty segment carries nothing; offsets stay continuous without it.
            seg.delete_files(dir)?;
            continue;
        }
        segments.push(Arc::new(seg));
        if let Some(t) = damage {
            // Past the checkpoint a bad batch is a torn tail (what a crash leaves); before
            // it, the bytes were synced, so it is corruption.
            if previous_unsynced {
                if policy == RecoveryPolicy::AbsoluteConsistency {
                    return Err(EngineError::corrupt(&t.segment, t.position, t.reason));
                }
            } else {
                corruption(policy, &t.segment, t.position, &t.reason)?;
            }
            report.truncations.push(t);
            drop_segments(dir, &bases[i + 1..], &mut report)?;
            break;
        }
    }

    let (seg, durable_offset) = match active {
        Some(a) => a,
        None => {
            // A cut (or a gap) ended the list early: the last kept segment is active again.
            let start = expected.unwrap_or(0);
            match segments.pop() {
                Some(last) => {
                    let (base, next) = (last.base_offset(), last.next_offset());
                    drop(last);
                    (reopen_sealed_as_active(dir, base, next, config)?, next)
                }
                None => (
                    Segment::create(
                        dir,
                        start,
                        config.segment_bytes,
                        config.index_interval_bytes,
                    )?,
                    start,
                ),
            }
        }
    };
    segments.push(Arc::new(seg));
    crate::fsio::sync_dir(dir)?;

    let next_offset = segments.last().map_or(0, |s| s.next_offset());
    let producers = restore_producers(dir, &segments, next_offset);
    let tenants = restore_tenants(dir, &segments, next_offset, &mut report);
    report.segments = segments.len();
    report.next_offset = next_offset;
    if !report.truncations.is_empty() || report.indexes_rebuilt > 0 || report.segments_dropped > 0 {
        tracing::warn!(dir = %dir.display(), ?report, "recovery repaired the partition");
    }
    Ok(Opened {
        recovered: Recovered {
            segments,
            producers,
            tenants,
            durable_offset: durable_offset.min(next_offset),
        },
        report,
    })
}

fn drop_segments(dir: &Path, bases: &[u64], report: &mut RecoveryReport) -> Result<()> {
    for &base in bases {
        delete_segment_files(dir, base)?;
        report.segments_dropped += 1;
    }
    Ok(())
}

/// A segment whose content is not (or not wholly) known good — rolled away from before a
/// crash but not synced, or failing its check: scan it from where `trust` vouches for,
/// rebuild its index from there, cut at the first bad batch, seal it.
fn seal_unsynced(
    dir: &Path,
    base: u64,
    config: &TopicConfig,
    trust: Trust,
    sync: &SyncPolicy,
    report: &mut RecoveryReport,
) -> Result<(Segment, Option<Truncation>)> {
    let log = segment::log_path(dir, base);
    let file_len = file_len(&log)?;
    let (seg, out) = {
        let (seg, out) = scan_writable(dir, base, file_len, config, trust, report)?;
        seg.seal(0, sync)?;
        (seg, out)
    };
    drop(seg);
    let seg = Segment::open_closed(dir, base, config.index_interval_bytes)?;
    if !seg.is_empty() {
        seg.check_tail(base).map_err(|why| {
            EngineError::corrupt(
                &log,
                0,
                format!("resealed segment still fails its check: {why}"),
            )
        })?;
    }
    let damage = out.stopped.map(|reason| Truncation {
        segment: log,
        position: u64::from(out.end),
        reason,
    });
    Ok((seg, damage))
}

/// Opens a segment writable at `capacity` and CRC-scans it from where `trust` allows,
/// rebuilding the index from there and cutting at the first bad batch.
fn scan_writable(
    dir: &Path,
    base: u64,
    capacity: u32,
    config: &TopicConfig,
    trust: Trust,
    report: &mut RecoveryReport,
) -> Result<(Segment, ScanOutcome)> {
    let index_lens = (
        entries(&segment::offset_index_path(dir, base), OFFSET_ENTRY_LEN),
        entries(&segment::time_index_path(dir, base), TIME_ENTRY_LEN),
    );
    let (start, keep) = match trust {
        Trust::Checkpoint(cp) if cp.position <= capacity && cp.next_offset >= base => (
            (cp.position, cp.next_offset, cp.max_timestamp_ms),
            (
                (cp.offset_entries as usize).min(index_lens.0),
                (cp.time_entries as usize).min(index_lens.1),
            ),
        ),
        _ => ((0, base, i64::MIN), (0, 0)),
    };
    let interval = config.index_interval_bytes;
    let mut seg = Segment::open_active(dir, base, capacity, interval, 0, base, i64::MIN, keep)?;
    let mut start = start;
    if keep.0 != keep.1 || !seg.index().is_consistent(start.0.max(1)) {
        drop(seg);
        seg = Segment::open_active(dir, base, capacity, interval, 0, base, i64::MIN, (0, 0))?;
        start = (0, base, i64::MIN);
        report.indexes_rebuilt += 1;
    }
    let out = seg.recover_from(start.0, start.1, start.2)?;
    report.scanned_bytes += out.scanned_bytes();
    Ok((seg, out))
}

fn file_len(log: &Path) -> Result<u32> {
    let len = fs::metadata(log)
        .map_err(|e| EngineError::io("stat", log, e))?
        .len();
    u32::try_from(len).map_err(|_| EngineError::corrupt(log, 0, "segment exceeds 4 GiB"))
}

fn corruption(policy: RecoveryPolicy, path: &Path, position: u64, reason: &str) -> Result<()> {
    if policy == RecoveryPolicy::TolerateAnyCorruption {
        tracing::warn!(segment = %path.display(), position, reason, "cutting the log at corruption");
        Ok(())
    } else {
        Err(EngineError::corrupt(path, position, reason))
    }
}

/// Segment base offsets present in `dir`, sorted. Removes leftovers of interrupted
/// operations (temp files, index files without a log).
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut logs = BTreeSet::new();
    let mut others = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| EngineError::io("list", dir, e))? {
        let entry = entry.map_err(|e| EngineError::io("list", dir, e))?;
        let path = entry.path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        if ext == "tmp" {
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(base) = (stem.len() == 20)
            .then(|| stem.parse::<u64>().ok())
            .flatten()
        else {
            continue;
        };
        match ext {
            "log" => {
                logs.insert(base);
            }
            "index" | "timeindex" | "tenantmap" => others.push((base, path)),
            _ => {}
        }
    }
    for (base, path) in others {
        if !logs.contains(&base) {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(logs.into_iter().collect())
}

fn delete_segment_files(dir: &Path, base: u64) -> Result<()> {
    for p in [
        segment::log_path(dir, base),
        segment::offset_index_path(dir, base),
        segment::time_index_path(dir, base),
        segment::tenant_map_path(dir, base),
    ] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io("delete segment", &p, e)),
        }
    }
    Ok(())
}

/// Opens a sealed segment with the cheap check; rescans it and rebuilds its indexes if
/// that fails. Returns the damage found in its data, if any (the segment is then cut).
fn open_sealed(
    dir: &Path,
    base: u64,
    config: &TopicConfig,
    sync: &SyncPolicy,
    report: &mut RecoveryReport,
) -> Result<(Segment, Option<Truncation>)> {
    let why = match Segment::open_closed(dir, base, config.index_interval_bytes) {
        Ok(seg) => match seg.check_tail(base) {
            Ok(out) => {
                report.scanned_bytes += out.scanned_bytes();
                return Ok((seg, None));
            }
            Err(why) => why,
        },
        Err(e) => e.to_string(),
    };
    tracing::warn!(segment = base, reason = %why, "sealed segment failed its check; rescanning");
    // Rebuild: indexes from scratch, data CRC-checked end to end, then sealed again.
    for p in [
        segment::offset_index_path(dir, base),
        segment::time_index_path(dir, base),
    ] {
        let _ = fs::remove_file(p);
    }
    report.indexes_rebuilt += 1;
    seal_unsynced(dir, base, config, Trust::Unsynced, sync, report)
}

/// Reopens a sealed segment for appending (after a cut made it the last one).
fn reopen_sealed_as_active(
    dir: &Path,
    base: u64,
    next: u64,
    config: &TopicConfig,
) -> Result<Segment> {
    let log = segment::log_path(dir, base);
    let len = fs::metadata(&log).map(|m| m.len() as u32).unwrap_or(0);
    let seg = Segment::open_active(
        dir,
        base,
        config.segment_bytes.max(len),
        config.index_interval_bytes,
        len,
        next,
        i64::MIN,
        (
            entries(&segment::offset_index_path(dir, base), OFFSET_ENTRY_LEN),
            entries(&segment::time_index_path(dir, base), TIME_ENTRY_LEN),
        ),
    )?;
    let running = seg
        .index()
        .last_time_entry()
        .map_or(i64::MIN, |t| t.max_timestamp_ms);
    let from = seg.index().last_offset_entry().map_or(0, |e| e.position);
    let from_offset = seg
        .index()
        .last_offset_entry()
        .map_or(base, |e| base + u64::from(e.relative_offset));
    seg.recover_from(from, from_offset, running)?;
    Ok(seg)
}

fn entries(path: &Path, entry_len: usize) -> usize {
    fs::metadata(path).map_or(0, |m| m.len() as usize / entry_len)
}

/// Opens the last segment for appending. Returns it and the offset known durable.
fn open_active(
    dir: &Path,
    base: u64,
    config: &TopicConfig,
    policy: RecoveryPolicy,
    trust: Trust,
    report: &mut RecoveryReport,
) -> Result<(Segment, u64)> {
    let log = segment::log_path(dir, base);
    let file_len = file_len(&log)?;
    let capacity = config.segment_bytes.max(file_len);
    if let Trust::Clean = trust {
        // The file was trimmed to its data at shutdown: trust it, walk only the tail
        // after the last index entry to learn the next offset.
        let index_lens = (
            entries(&segment::offset_index_path(dir, base), OFFSET_ENTRY_LEN),
            entries(&segment::time_index_path(dir, base), TIME_ENTRY_LEN),
        );
        let seg = Segment::open_active(
            dir,
            base,
            capacity,
            config.index_interval_bytes,
            file_len,
            base,
            i64::MIN,
            index_lens,
        )?;
        if let Some(out) = verify_clean_tail(&seg, base, file_len) {
            report.scanned_bytes += out.scanned_bytes();
            seg.set_recovered(file_len, out.next_offset, out.max_timestamp_ms);
            return Ok((seg, out.next_offset));
        }
        tracing::warn!(segment = %log.display(), "clean-shutdown segment failed its check; recovering");
    }
    let (seg, out) = scan_writable(dir, base, capacity, config, trust, report)?;
    if let Some(reason) = out.stopped {
        if policy == RecoveryPolicy::AbsoluteConsistency {
            return Err(EngineError::corrupt(&log, u64::from(out.end), reason));
        }
        report.truncations.push(Truncation {
            segment: log,
            position: u64::from(out.end),
            reason,
        });
    }
    let durable = match trust {
        Trust::Checkpoint(cp) => cp.next_offset,
        _ => base,
    };
    Ok((seg, durable))
}

/// Walks the tail of a cleanly closed segment; `None` if it does not end exactly at the
/// file length.
fn verify_clean_tail(seg: &Segment, base: u64, len: u32) -> Option<ScanOutcome> {
    let (from, from_offset, running) = match (
        seg.index().last_offset_entry(),
        seg.index().last_time_entry(),
    ) {
        (Some(e), Some(t))
            if e.position < len && seg.index().offset_entries() == seg.index().time_entries() =>
        {
            (
                e.position,
                base + u64::from(e.relative_offset),
                t.max_timestamp_ms,
            )
        }
        (None, None) if len == 0 => {
            return Some(ScanOutcome {
                from: 0,
                end: 0,
                next_offset: base,
                max_timestamp_ms: i64::MIN,
                stopped: None,
            })
        }
        _ => return None,
    };
    seg.set_recovered(0, base, running);
    let out = seg.scan(from, from_offset, len, false);
    (out.stopped.is_none() && out.end == len).then_some(out)
}

/// Producer state: the snapshot if it is usable, plus a replay of the batch headers after
/// it (only headers: no record is decoded).
fn restore_producers(dir: &Path, segments: &[Arc<Segment>], next_offset: u64) -> ProducerState {
    let earliest = segments.first().map_or(0, |s| s.base_offset());
    let (mut state, from) = match fs::read(dir.join(PRODUCER_SNAPSHOT_FILE))
        .ok()
        .map(|b| ProducerState::decode(&b))
    {
        Some(Ok((state, at))) if at <= next_offset && at >= earliest => (state, at),
        Some(Err(why)) => {
            tracing::warn!(dir = %dir.display(), why, "producer snapshot unusable; replaying the log");
            (ProducerState::default(), earliest)
        }
        _ => (ProducerState::default(), earliest),
    };
    for seg in segments.iter().filter(|s| s.next_offset() > from) {
        let mut pos = seg.find_position(from.max(seg.base_offset())).unwrap_or(0);
        let len = seg.len();
        while let Some(h) = seg
            .bytes(pos, len)
            .and_then(crate::batch::BatchHeader::parse)
        {
            if h.producer_id != 0 && h.base_offset >= from {
                state.record(
                    h.producer_id,
                    BatchRecord {
                        sequence: h.producer_seq,
                        base_offset: h.base_offset,
                        last_offset: h.last_offset(),
                    },
                );
            }
            if h.batch_len == 0 {
                break;
            }
            pos += h.batch_len;
        }
    }
    state.truncate_from(next_offset);
    state
}

/// The tenant index: its checkpoint if usable, plus a replay of the records after it. The
/// checkpoint is written at segment boundaries (those that owe one: `CheckpointDebt` in
/// `partition.rs`) and at clean shutdown, so the replay is bounded; without a usable
/// checkpoint the whole log is replayed (logged, and counted in the report).
fn restore_tenants(
    dir: &Path,
    segments: &[Arc<Segment>],
    next_offset: u64,
    report: &mut RecoveryReport,
) -> TenantIndex {
    let earliest = segments.first().map_or(0, |s| s.base_offset());
    let mut index = match fs::read(dir.join(TENANT_INDEX_FILE))
        .ok()
        .map(|b| TenantIndex::decode(&b))
    {
        Some(Ok(index))
            if index.next_offset() <= next_offset && index.next_offset() >= earliest =>
        {
            index
        }
        Some(Ok(_)) => {
            tracing::warn!(dir = %dir.display(), "tenant index checkpoint is outside the log; replaying the log");
            TenantIndex::default()
        }
        Some(Err(why)) => {
            tracing::warn!(dir = %dir.display(), why, "tenant index checkpoint unusable; replaying the log");
            TenantIndex::default()
        }
        None => TenantIndex::default(),
    };
    let from = index.next_offset().max(earliest);
    for seg in segments.iter().filter(|s| s.next_offset() > from) {
        let mut pos = seg.find_position(from.max(seg.base_offset())).unwrap_or(0);
        let len = seg.len();
        while let Some(view) = seg
            .bytes(pos, len)
            .and_then(|b| crate::batch::view_stored(b).ok())
        {
            if view.header.next_offset() > from {
                index.apply(&view);
                report.index_replayed_bytes += view.bytes().len() as u64;
            }
            pos += view.header.batch_len;
        }
    }
    index.advance_to(next_offset);
    index
}
