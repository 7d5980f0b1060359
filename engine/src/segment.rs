//! One segment: a log file of batches, written with `pwritev` and read through a shared,
//! read-only memory mapping of the same file, plus its offset and time indexes.
//!
//! Files: `{base_offset:020}.log`, `.index`, `.timeindex`, and once sealed `.tenantmap`
//! (see `docs/FORMAT.md`).
//!
//! Concurrency: one writer (the partition's append lock holder) writes a batch *past* the
//! published length (stamped with its offset on the way: `pwritev` of the batch with the
//! 8 stamped bytes in the middle, in calls of at most 1 MiB), indexes it, and only then publishes the new length
//! with release ordering. The page cache is one for `write` and `mmap`, so readers see the
//! bytes through their mapping. Readers build slices only below the
//! published length, which is immutable from then on, so a reader never observes a
//! partial batch and never needs a lock. Readers hold an `Arc<Segment>`, which keeps the
//! mapping alive even after retention unlinks the files.
//!
//! Why `pwritev` and not a copy into a writable mapping (as before 2026-11-22): every
//! page written through a mapping must first be faulted in (page-cache allocation and
//! zeroing of the fresh extent — a prefaulter thread did it ahead of the writer), and
//! every periodic sync then write-protects the written pages again, with a TLB
//! shoot-down across cores. A `pwritev` of whole pages skips both; measured on the
//! project machine, publishing 1 KiB records went from 1.0–1.6 to 1.9–2.0 GB/s.
//!
//! The active file is preallocated (fallocate) to `capacity` so a write never lands in a
//! hole; when the segment closes the file is trimmed to its real length (the mapping
//! stays; nobody touches the cut pages, as they lie past `len`).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::{MmapOptions, MmapRaw};

use crate::batch::{self, BatchError, BatchHeader};
use crate::error::{EngineError, Result};
use crate::fsio::{self, SyncPolicy};
use crate::index::{OffsetEntry, SegmentIndex};
use crate::tenant_map::{FileIdentity, TenantMap};

/// Zeros written per call when a file system cannot zero a range in place.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

pub fn log_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}
pub fn offset_index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}
pub fn time_index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.timeindex"))
}
pub fn tenant_map_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.tenantmap"))
}

#[derive(Debug)]
pub struct Segment {
    base_offset: u64,
    path: PathBuf,
    file: File,
    /// Read-only. `None` only for an empty closed file (zero-length mappings are not
    /// allowed).
    map: Option<MmapRaw>,
    /// Whether the segment takes appends (the active one).
    writable: bool,
    /// Bytes the mapping covers.
    capacity: u32,
    /// Bytes published to readers: every batch below this is complete and immutable.
    len: AtomicU32,
    /// Offset after the last batch (== base_offset when empty).
    next_offset: AtomicU64,
    /// Largest record timestamp in the segment (i64::MIN when empty).
    max_timestamp_ms: AtomicI64,
    /// Position of the last index entry, to space entries `index_interval` apart. Writer only.
    last_indexed_position: AtomicU32,
    index: SegmentIndex,
    index_interval_bytes: u32,
    /// Wall-clock time the segment was opened for writing, for age-based rolling.
    opened_ms: i64,
    /// Its place in the page cache budget's order ([`CACHE_ORDER`]): when this process
    /// sealed it, or last read it back in after its pages were dropped (0: sealed before
    /// the engine opened, or not sealed). The lowest go first (`page_cache.rs`).
    cache_seq: AtomicU64,
    /// Every page of it came from this process's own writes: it was empty when opened.
    /// Until it is sealed, such a segment is the tail readers follow, which they read
    /// from the page cache (see [`Segment::may_be_cold`]).
    fresh: bool,
    /// Its pages were handed back to the kernel ([`Segment::drop_cache`]).
    cache_dropped: AtomicBool,
    /// Sealed by this process ([`Segment::seal`]): immutable from then on.
    sealed: AtomicBool,
    /// Its tenant map once a history scan asked for it ([`Segment::tenant_map`];
    /// `Some(None)`: the segment could not be mapped), ~0.02 % of the segment's size;
    /// forgotten with the segment's pages ([`Segment::drop_cache`]), so that with a page
    /// cache budget the maps held are bounded too.
    tenant_map: Mutex<Option<Option<Arc<TenantMap>>>>,
}

/// Segments sealed (or read back in) by this process so far: orders them by age across
/// partitions for the page cache budget.
static CACHE_ORDER: AtomicU64 = AtomicU64::new(0);

/// How far past a warmed range [`Segment::warm`] asks the kernel to read ahead: a
/// consumer fetching 1 MiB at a time in order then finds most of its next fetches in the
/// page cache, instead of each waiting for its own round of disk reads.
pub const WARM_AHEAD_BYTES: u32 = 8 << 20;

fn next_cache_seq() -> u64 {
    CACHE_ORDER.fetch_add(1, Ordering::Relaxed) + 1
}

/// What a scan over a run of batches found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Position the scan started at.
    pub from: u32,
    /// Position after the last valid batch.
    pub end: u32,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
    /// Why the scan stopped before the end of the bytes, if it did (zeros are a clean end).
    pub stopped: Option<String>,
}

impl ScanOutcome {
    pub fn scanned_bytes(&self) -> u64 {
        u64::from(self.end - self.from)
    }
}

impl Segment {
    /// Creates a fresh, empty active segment.
    pub fn create(
        dir: &Path,
        base_offset: u64,
        capacity: u32,
        index_interval_bytes: u32,
    ) -> Result<Segment> {
        let path = log_path(dir, base_offset);
        for p in [
            &path,
            &offset_index_path(dir, base_offset),
            &time_index_path(dir, base_offset),
            &tenant_map_path(dir, base_offset),
        ] {
            if p.exists() {
                std::fs::remove_file(p).map_err(|e| EngineError::io("remove stale", p, e))?;
            }
        }
        Self::open_active(
            dir,
            base_offset,
            capacity,
            index_interval_bytes,
            0,
            base_offset,
            i64::MIN,
            (0, 0),
        )
    }

    /// Opens a segment for appending, with `len` valid bytes already in it (established by
    /// recovery or a clean shutdown) and `index_len` valid index entries.
    #[allow(clippy::too_many_arguments)]
    pub fn open_active(
        dir: &Path,
        base_offset: u64,
        capacity: u32,
        index_interval_bytes: u32,
        len: u32,
        next_offset: u64,
        max_timestamp_ms: i64,
        index_len: (usize, usize),
    ) -> Result<Segment> {
        let path = log_path(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| EngineError::io("open segment", &path, e))?;
        let current = file
            .metadata()
            .map_err(|e| EngineError::io("stat", &path, e))?
            .len();
        let capacity = capacity.max(len).max(batch::HEADER_LEN as u32 + 1);
        if current < u64::from(capacity) {
            fsio::preallocate(&file, &path, u64::from(capacity))?;
        }
        let map = MmapOptions::new()
            .len(capacity as usize)
            .map_raw_read_only(&file)
            .map_err(|e| EngineError::io("mmap segment", &path, e))?;
        let index_capacity = (capacity / index_interval_bytes.max(1)) as usize + 2;
        let index = SegmentIndex::open_writable(
            &offset_index_path(dir, base_offset),
            &time_index_path(dir, base_offset),
            index_capacity,
            index_len.0,
            index_len.1,
        )?;
        let last_indexed = index.last_offset_entry().map(|e| e.position).unwrap_or(0);
        let seg = Segment {
            base_offset,
            path,
            file,
            map: Some(map),
            writable: true,
            capacity,
            len: AtomicU32::new(len),
            next_offset: AtomicU64::new(next_offset),
            max_timestamp_ms: AtomicI64::new(max_timestamp_ms),
            last_indexed_position: AtomicU32::new(last_indexed),
            index,
            index_interval_bytes,
            opened_ms: fsio::now_ms(),
            cache_seq: AtomicU64::new(0),
            fresh: len == 0,
            cache_dropped: AtomicBool::new(false),
            sealed: AtomicBool::new(false),
            tenant_map: Mutex::new(None),
        };
        Ok(seg)
    }

    /// Opens a closed segment (file trimmed to its data) read-only. Its indexes are used
    /// as they are; `check_tail` / recovery decide whether they can be trusted.
    pub fn open_closed(dir: &Path, base_offset: u64, index_interval_bytes: u32) -> Result<Segment> {
        let path = log_path(dir, base_offset);
        let file = File::open(&path).map_err(|e| EngineError::io("open segment", &path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| EngineError::io("stat", &path, e))?
            .len();
        let len = u32::try_from(file_len).map_err(|_| {
            EngineError::corrupt(
                &path,
                0,
                format!("segment of {file_len} bytes exceeds 4 GiB"),
            )
        })?;
        let map = if len == 0 {
            None
        } else {
            Some(
                MmapOptions::new()
                    .len(len as usize)
                    .map_raw_read_only(&file)
                    .map_err(|e| EngineError::io("mmap segment", &path, e))?,
            )
        };
        let index = SegmentIndex::open_readonly(
            &offset_index_path(dir, base_offset),
            &time_index_path(dir, base_offset),
        )?;
        Ok(Segment {
            base_offset,
            path,
            file,
            map,
            writable: false,
            capacity: len,
            len: AtomicU32::new(len),
            next_offset: AtomicU64::new(base_offset),
            max_timestamp_ms: AtomicI64::new(i64::MIN),
            last_indexed_position: AtomicU32::new(0),
            index,
            index_interval_bytes,
            opened_ms: fsio::now_ms(),
            cache_seq: AtomicU64::new(0),
            fresh: false,
            cache_dropped: AtomicBool::new(false),
            sealed: AtomicBool::new(false),
            tenant_map: Mutex::new(None),
        })
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn len(&self) -> u32 {
        self.len.load(Ordering::Acquire)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }
    pub fn max_timestamp_ms(&self) -> i64 {
        self.max_timestamp_ms.load(Ordering::Acquire)
    }
    pub fn opened_ms(&self) -> i64 {
        self.opened_ms
    }
    pub fn index(&self) -> &SegmentIndex {
        &self.index
    }
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Published bytes `[from, to)`; `None` if the range is not fully published.
    pub fn bytes(&self, from: u32, to: u32) -> Option<&[u8]> {
        if from > to || to > self.len() {
            return None;
        }
        if from == to {
            return Some(&[]);
        }
        let map = self.map.as_ref()?;
        // SAFETY: [from, to) lies below the published length: inside the mapping, fully
        // written, and never written again while the segment is shared.
        Some(unsafe {
            std::slice::from_raw_parts(map.as_ptr().add(from as usize), (to - from) as usize)
        })
    }

    /// Every byte the mapping covers up to `limit` (recovery only: includes unpublished
    /// bytes, which must be treated as untrusted).
    fn raw_bytes(&self, limit: u32) -> &[u8] {
        match self.map.as_ref() {
            // SAFETY: limit is clamped to the mapping length; during recovery no writer
            // runs, so the bytes do not change under us.
            Some(map) => unsafe {
                std::slice::from_raw_parts(map.as_ptr(), limit.min(self.capacity) as usize)
            },
            None => &[],
        }
    }

    /// Room left for a batch of `len` bytes?
    pub fn has_room(&self, len: usize) -> bool {
        self.writable && (self.len() as usize).saturating_add(len) <= self.capacity as usize
    }

    /// Appends a validated batch at the end, stamped with `base_offset`, indexes it and
    /// publishes it; returns its position. Single writer only; the caller checked
    /// `has_room`. On a write error nothing is published (the bytes past the length are
    /// overwritten by the next append, or cut by recovery).
    pub fn append(
        &self,
        batch_bytes: &[u8],
        header: &BatchHeader,
        base_offset: u64,
    ) -> Result<u32> {
        self.append_all(&[(batch_bytes, header, base_offset)])
    }

    /// [`Segment::append`] for consecutive batches (each with its base offset): one write
    /// for all of them, then they are indexed and published together. Returns the first
    /// one's position.
    ///
    /// One write rather than one per batch because the page cache sizes the folios it
    /// allocates by the length of the write that first touches them: writes of ~100 KiB
    /// get folios of ~20 KiB on average, writes of 1 MiB folios of up to 1 MiB, and the
    /// cost of a buffered write is mostly per folio (docs/BENCHMARKS.md, "Group append").
    pub fn append_all(&self, batches: &[(&[u8], &BatchHeader, u64)]) -> Result<u32> {
        let position = self.len.load(Ordering::Relaxed);
        let total: usize = batches.iter().map(|(b, _, _)| b.len()).sum();
        let end = position as usize + total;
        assert!(
            self.writable && end <= self.capacity as usize,
            "append past segment capacity"
        );
        let at = batch::BASE_OFFSET_AT;
        let stamps: Vec<[u8; 8]> = batches.iter().map(|(_, _, o)| o.to_le_bytes()).collect();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(3 * batches.len());
        for ((bytes, _, _), stamp) in batches.iter().zip(&stamps) {
            let (head, rest) = bytes.split_at(at.min(bytes.len()));
            parts.extend([head, &stamp[..], rest.get(8..).unwrap_or(&[])]);
        }
        fsio::pwrite_all(&self.file, &parts, u64::from(position))
            .map_err(|e| EngineError::io("write segment", &self.path, e))?;
        let mut max_ts = self.max_timestamp_ms.load(Ordering::Relaxed);
        let mut at_position = position;
        let mut next_offset = self.next_offset.load(Ordering::Relaxed);
        for (bytes, header, base_offset) in batches {
            max_ts = max_ts.max(header.max_timestamp_ms);
            self.maybe_index(at_position, *base_offset, max_ts);
            at_position += bytes.len() as u32;
            next_offset = base_offset + u64::from(header.last_offset_delta) + 1;
        }
        self.max_timestamp_ms.store(max_ts, Ordering::Release);
        self.next_offset.store(next_offset, Ordering::Release);
        self.len.store(end as u32, Ordering::Release);
        Ok(position)
    }

    fn maybe_index(&self, position: u32, base_offset: u64, running_max_ts: i64) {
        let last = self.last_indexed_position.load(Ordering::Relaxed);
        let first = self.index.offset_entries() == 0;
        if first || position - last >= self.index_interval_bytes {
            let entry = OffsetEntry {
                relative_offset: (base_offset - self.base_offset) as u32,
                position,
            };
            if self.index.push(entry, running_max_ts) {
                self.last_indexed_position
                    .store(position, Ordering::Relaxed);
            }
        }
    }

    /// Zeroes everything past the published length: bytes there may hold a torn batch or
    /// batches of a previous incarnation, which must never be mistaken for data after a
    /// later crash. A metadata operation (FALLOC_FL_ZERO_RANGE), so its cost does not
    /// grow with the segment.
    fn zero_tail(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let len = self.len();
        if fsio::zero_range(&self.file, u64::from(len), u64::from(self.capacity - len)) {
            return Ok(());
        }
        let zeros = vec![0u8; ZERO_CHUNK_BYTES];
        let mut at = len as usize;
        while at < self.capacity as usize {
            let n = ZERO_CHUNK_BYTES.min(self.capacity as usize - at);
            fsio::pwrite_all(&self.file, &[&zeros[..n]], at as u64)
                .map_err(|e| EngineError::io("zero segment tail", &self.path, e))?;
            at += n;
        }
        Ok(())
    }

    /// Position of the batch containing `offset`, walking from the nearest index entry.
    /// `None` if the offset is not in this segment's published batches.
    pub fn find_position(&self, offset: u64) -> Option<u32> {
        if offset < self.base_offset || offset >= self.next_offset() {
            return None;
        }
        let rel = u32::try_from(offset - self.base_offset).ok()?;
        let mut position = self.index.lookup_offset(rel).map_or(0, |e| e.position);
        let len = self.len();
        while position < len {
            let header = BatchHeader::parse(self.bytes(position, len)?)?;
            if header.last_offset() >= offset {
                return Some(position);
            }
            position = position.checked_add(header.batch_len)?;
        }
        None
    }

    /// Position and base offset of the first batch holding a record with timestamp >=
    /// `timestamp_ms` (by batch max timestamp).
    pub fn find_time(&self, timestamp_ms: i64) -> Option<(u32, u64)> {
        if self.max_timestamp_ms() < timestamp_ms {
            return None;
        }
        let mut position = match self.index.lookup_time(timestamp_ms) {
            Some(rel) => self.index.lookup_offset(rel).map_or(0, |e| e.position),
            None => 0,
        };
        let len = self.len();
        while position < len {
            let header = BatchHeader::parse(self.bytes(position, len)?)?;
            if header.max_timestamp_ms >= timestamp_ms {
                return Some((position, header.base_offset));
            }
            position = position.checked_add(header.batch_len)?;
        }
        None
    }

    /// The run of whole batches starting at `from` whose total stays within `max_bytes`,
    /// but always at least one batch so a consumer makes progress. Returns the end
    /// position and the offset after the last batch of the run.
    pub fn batch_run(&self, from: u32, max_bytes: u32) -> (u32, Option<u64>) {
        let len = self.len();
        let mut end = from;
        let mut next_offset = None;
        // Every batch before an indexed batch start within the budget fits: skip to the
        // last such start and read headers only from there. (A header read from the
        // mapping faults its page in; a 4 MiB fetch of 100 KiB batches walked ~40 pages
        // that `sendfile` otherwise never touches.) An entry may name the batch being
        // appended, pushed before it is published: bounded by `len`, the jump stays within
        // published bytes, and an entry at `len` names exactly the next offset.
        if let Some(e) = self
            .index
            .lookup_position(from.saturating_add(max_bytes).min(len))
        {
            if e.position > from {
                end = e.position;
                next_offset = Some(self.base_offset + u64::from(e.relative_offset));
            }
        }
        while end < len {
            let Some(header) = self.bytes(end, len).and_then(BatchHeader::parse) else {
                break;
            };
            let next = end.saturating_add(header.batch_len).min(len);
            if header.batch_len == 0 || (next - from > max_bytes && end > from) {
                break;
            }
            end = next;
            next_offset = Some(header.next_offset());
        }
        (end, next_offset)
    }

    /// Walks the batches from `from`, checking each frame's CRC and that base offsets
    /// continue from `expected_offset`; stops at the first torn or corrupt batch or at
    /// zeros. With `reindex`, adds index entries for the batches it passes.
    pub fn scan(&self, from: u32, expected_offset: u64, limit: u32, reindex: bool) -> ScanOutcome {
        let bytes = self.raw_bytes(limit);
        let mut out = ScanOutcome {
            from,
            end: from,
            next_offset: expected_offset,
            max_timestamp_ms: self.max_timestamp_ms.load(Ordering::Relaxed),
            stopped: None,
        };
        if reindex {
            self.last_indexed_position.store(
                self.index.last_offset_entry().map_or(0, |e| e.position),
                Ordering::Relaxed,
            );
        }
        loop {
            let rest = bytes.get(out.end as usize..).unwrap_or(&[]);
            if rest.is_empty() {
                break;
            }
            if rest.len() < batch::HEADER_LEN && rest.iter().all(|&b| b == 0) {
                break;
            }
            if batch::peek_len(rest) == Some(0)
                && rest.iter().take(batch::HEADER_LEN).all(|&b| b == 0)
            {
                break;
            }
            let view = match batch::check_frame(rest) {
                Ok(v) => v,
                Err(BatchError::Incomplete { needed, have }) => {
                    out.stopped = Some(format!("torn batch: needs {needed} bytes, {have} present"));
                    break;
                }
                Err(BatchError::Invalid(why)) => {
                    out.stopped = Some(why);
                    break;
                }
            };
            let h = view.header;
            // Compaction leaves gaps, marked (under the CRC) on the batch after each one;
            // anywhere else the offsets must continue exactly.
            let gap_allowed =
                h.flags & batch::FLAG_OFFSET_GAP != 0 && h.base_offset > out.next_offset;
            if h.base_offset != out.next_offset && !gap_allowed {
                out.stopped = Some(format!(
                    "base offset {} where {} was expected",
                    h.base_offset, out.next_offset
                ));
                break;
            }
            out.max_timestamp_ms = out.max_timestamp_ms.max(h.max_timestamp_ms);
            if reindex {
                self.maybe_index(out.end, h.base_offset, out.max_timestamp_ms);
            }
            out.end += h.batch_len;
            out.next_offset = h.next_offset();
        }
        out
    }

    /// Sets the published state after recovery established it.
    pub fn set_recovered(&self, len: u32, next_offset: u64, max_timestamp_ms: i64) {
        self.len.store(len, Ordering::Release);
        self.next_offset.store(next_offset, Ordering::Release);
        self.max_timestamp_ms
            .store(max_timestamp_ms, Ordering::Release);
    }

    /// Recovery of a closed segment, the cheap way: walk from the last index entry to the
    /// end of the file; the segment is sound if every batch there checks out and the last
    /// one ends exactly at the file's end.
    pub fn check_tail(&self, expected_base: u64) -> std::result::Result<ScanOutcome, String> {
        let len = self.len();
        let Some(entry) = self.index.last_offset_entry() else {
            return Err("index is empty".into());
        };
        if entry.position >= len || self.index.time_entries() != self.index.offset_entries() {
            return Err("index points past the end of the segment".into());
        }
        let start_offset = self.base_offset + u64::from(entry.relative_offset);
        let running_max = self
            .index
            .last_time_entry()
            .map_or(i64::MIN, |t| t.max_timestamp_ms);
        self.max_timestamp_ms.store(running_max, Ordering::Relaxed);
        if entry.position == 0 && expected_base != self.base_offset {
            return Err("segment base does not continue the previous segment".into());
        }
        let out = self.scan(entry.position, start_offset, len, false);
        match &out.stopped {
            Some(why) => Err(why.clone()),
            None if out.end != len => Err(format!(
                "batches end at {} but the file is {len} bytes",
                out.end
            )),
            None => {
                self.set_recovered(len, out.next_offset, out.max_timestamp_ms);
                Ok(out)
            }
        }
    }

    /// Recovery of a segment with untrusted content: everything before `position` is
    /// trusted (it was synced, per the checkpoint, or it is the start); from there every
    /// batch is CRC-checked, its index entries are rebuilt, and the segment is cut at the
    /// first torn or corrupt batch, with the bytes after it zeroed.
    pub fn recover_from(
        &self,
        position: u32,
        next_offset: u64,
        running_max_ts: i64,
    ) -> Result<ScanOutcome> {
        self.index.truncate_from_position(position);
        self.max_timestamp_ms
            .store(running_max_ts, Ordering::Relaxed);
        let out = self.scan(position, next_offset, self.capacity, true);
        self.set_recovered(out.end, out.next_offset, out.max_timestamp_ms);
        self.zero_tail()?;
        Ok(out)
    }

    /// Makes published bytes `[from, to)` of the log file durable. Written with
    /// `pwritev`, they are dirty page cache of the file, so this is an `fdatasync` of the
    /// file (whatever else of it is dirty lies in the same unsynced tail); an empty range
    /// costs nothing.
    pub fn sync_range(&self, from: u32, to: u32, policy: &SyncPolicy) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        policy
            .check(&self.path)
            .map_err(|e| EngineError::io("fdatasync", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| EngineError::io("fdatasync", &self.path, e))
    }

    /// Hints the kernel to start writing back `[from, to)` now.
    pub fn start_writeback(&self, from: u32, to: u32) {
        fsio::start_writeback(
            &self.file,
            u64::from(from),
            u64::from(to.saturating_sub(from)),
        );
    }

    /// Seals the segment: bytes from `synced_to` on are synced, the file is trimmed to
    /// its data, the indexes are trimmed, all fsynced. After this the segment is
    /// immutable and durable, and recovery trusts it after a cheap check.
    pub fn seal(&self, synced_to: u32, policy: &SyncPolicy) -> Result<()> {
        let len = self.len();
        self.sync_range(synced_to.min(len), len, policy)?;
        if self.writable {
            self.file
                .set_len(u64::from(len))
                .map_err(|e| EngineError::io("trim segment", &self.path, e))?;
        }
        policy
            .check(&self.path)
            .map_err(|e| EngineError::io("fsync", &self.path, e))?;
        self.file
            .sync_all()
            .map_err(|e| EngineError::io("fsync", &self.path, e))?;
        self.index.trim(policy)?;
        self.cache_seq.store(next_cache_seq(), Ordering::Release);
        self.sealed.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes and stores the sealed segment's tenant map now, while its pages are in the
    /// page cache (a walk over its batch headers: a few ms for 256 MiB of 20 KiB batches,
    /// tens of ms of single 100-byte records), rather than at the first history that reads it, from
    /// the disk. Not kept in memory (see [`Segment::tenant_map`]). The flusher calls it
    /// after the flush that sealed the segment has made its data durable, so that no
    /// durable acknowledgement waits for it.
    pub fn store_tenant_map(&self) {
        if self.sealed.load(Ordering::Acquire) || !self.writable {
            // Under the cache's lock, as `tenant_map`: a history reading the segment
            // meanwhile neither builds it a second time nor writes the same file at once.
            let cached = self.tenant_map.lock().unwrap_or_else(|p| p.into_inner());
            if cached.is_none() {
                drop(self.load_or_build_tenant_map());
            }
        }
    }

    /// The segment's tenant map (`tenant_map.rs`): the one cached, else the one on disk if
    /// it is this file's, else one built from the segment's batch headers and stored.
    /// `None` while the segment takes appends (its end moves) or when it cannot be mapped.
    pub fn tenant_map(&self) -> Option<Arc<TenantMap>> {
        if self.writable && !self.sealed.load(Ordering::Acquire) {
            return None;
        }
        let mut cached = self.tenant_map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = cached.as_ref() {
            return map.clone();
        }
        let map = self.load_or_build_tenant_map().map(Arc::new);
        *cached = Some(map.clone());
        map
    }

    /// The segment's tenant map from its file if that is this file's, else built from the
    /// batch headers and stored. Not cached: see [`Segment::tenant_map`].
    fn load_or_build_tenant_map(&self) -> Option<TenantMap> {
        let len = self.len();
        let identity = FileIdentity::of(&self.file, len);
        let path = self.path.with_extension("tenantmap");
        if let Some(map) = identity.and_then(|id| TenantMap::load(&path, &id)) {
            return Some(map);
        }
        let built = TenantMap::build(self.bytes(0, len)?);
        // The walk mapped the page of every batch header: unmapped again, so that a
        // sealed segment's mapping holds no more pages than its readers touch (the
        // process's resident size does not grow with the log).
        let _ = self.unmap_pages();
        let built = built?;
        if let Some(id) = identity {
            if let Err(e) = built.store(&path, &id) {
                tracing::warn!(path = %path.display(), error = %e, "could not write a tenant map");
            }
        }
        Some(built)
    }

    /// Its place among sealed segments by age, for the page cache budget: 0 for one
    /// sealed before this process opened the log (the oldest), then in the order this
    /// process sealed them or read them back in after a drop ([`Segment::warm`]).
    pub fn cache_seq(&self) -> u64 {
        self.cache_seq.load(Ordering::Acquire)
    }

    /// Whether a read of it may find pages out of the page cache: anything but a segment
    /// this process created and has not sealed yet (the active one and those awaiting
    /// their seal, whose pages it has just written). Readers check the others
    /// ([`Segment::resident`]) before reading them on a thread that must not wait for a
    /// disk.
    pub fn may_be_cold(&self) -> bool {
        !self.fresh || self.cache_seq() > 0 || self.cache_dropped()
    }

    /// Whether every page of the published bytes `[from, to)` is in the page cache and
    /// read (`mincore`): about 0.5 µs for a few pages, 7–10 µs for a MiB of pages this
    /// mapping has not touched (`sendfile` reads them without mapping them).
    pub fn resident(&self, from: u32, to: u32) -> bool {
        let to = to.min(self.len());
        match self.bytes(from.min(to), to) {
            Some(bytes) => fsio::resident(bytes),
            None => true,
        }
    }

    /// Whether every page of the published bytes `[from, to)` is in the page cache,
    /// perhaps still being read in (`cachestat`; [`Segment::resident`] where the kernel
    /// lacks it): a fraction of a µs for a MiB.
    pub fn cached(&self, from: u32, to: u32) -> bool {
        let to = to.min(self.len());
        let from = from.min(to);
        fsio::all_cached(&self.file, u64::from(from), u64::from(to - from))
            .unwrap_or_else(|| self.resident(from, to))
    }

    /// Reads the published bytes `[from, to)` into the page cache and this mapping,
    /// returning once they are there: a disk read for every page that was not. For a
    /// thread that may wait (the server's reader), so that the one that must not (the
    /// event loop) then finds them in memory. The next [`WARM_AHEAD_BYTES`] of the
    /// segment are asked for too, without waiting: a reader going on in order finds them
    /// there, or in flight (the disk kept busy while it sends what it has). Once a segment
    /// whose pages the budget dropped is read back in, the budget counts it again, as its
    /// youngest.
    pub fn warm(&self, from: u32, to: u32) {
        let to = to.min(self.len());
        let Some(bytes) = self.bytes(from.min(to), to) else {
            return;
        };
        // The whole range's reads go to the disk at once, the read-ahead's behind them;
        // then we wait for the range's.
        fsio::will_need(&self.file, u64::from(from), bytes.len() as u64);
        let ahead = WARM_AHEAD_BYTES.min(self.len().saturating_sub(to));
        fsio::will_need(&self.file, u64::from(to), u64::from(ahead));
        fsio::populate(bytes);
        if self.cache_dropped.swap(false, Ordering::AcqRel) {
            self.cache_seq.store(next_cache_seq(), Ordering::Release);
        }
    }

    /// Asks the kernel to read the published bytes `[from, to)` in, without waiting: a
    /// reader about to touch exactly these pages through the mapping then finds them in
    /// flight, and its faults read nothing around them.
    pub fn will_need(&self, from: u32, to: u32) {
        let to = to.min(self.len());
        if from < to {
            fsio::will_need(&self.file, u64::from(from), u64::from(to - from));
        }
    }

    /// Whether [`Segment::drop_cache`] has run on it.
    pub fn cache_dropped(&self) -> bool {
        self.cache_dropped.load(Ordering::Acquire)
    }

    /// Hands the segment's pages back to the kernel: removes them from this process's
    /// mapping (a later read faults them in again, from the page cache or the file) and
    /// asks the kernel to drop them from the page cache. Only for a *sealed* segment:
    /// its pages are clean (synced), so nothing has to be written back and nothing can be
    /// lost; pages someone else still holds (a `sendfile` in flight, another process's
    /// mapping) simply stay. Once per segment; true when this call did it.
    pub fn drop_cache(&self) -> Result<bool> {
        if self.cache_dropped.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        *self.tenant_map.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.unmap_pages()?;
        fsio::drop_cached(&self.file, &self.path)?;
        Ok(true)
    }

    /// Removes the segment's pages from this process's mapping; they stay in the page
    /// cache, and the next read maps them again.
    fn unmap_pages(&self) -> Result<()> {
        if let Some(map) = &self.map {
            // SAFETY: a shared, read-only file mapping: MADV_DONTNEED only unmaps its
            // pages, and the next access reads the same bytes back from the file (unlike
            // a private mapping, nothing is zeroed). Readers never write through it.
            unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) }
                .map_err(|e| EngineError::io("madvise segment", &self.path, e))?;
        }
        Ok(())
    }

    /// Removes the segment's files. Readers holding the segment keep their mapping.
    pub fn delete_files(&self, dir: &Path) -> Result<()> {
        for p in [
            self.path.clone(),
            offset_index_path(dir, self.base_offset),
            time_index_path(dir, self.base_offset),
            tenant_map_path(dir, self.base_offset),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(EngineError::io("delete segment", &p, e)),
            }
        }
        Ok(())
    }
}
