//! A partition: an ordered list of segments, the last one active, with dense offsets.
//!
//! Who owns what:
//! - `writer` (a mutex) is held by whoever appends: it owns the active segment's write
//!   position, producer state and rolling. Appends to one partition are serialised;
//!   appends to different partitions run in parallel.
//! - `segments` is an immutable list swapped on roll and retention; readers clone the
//!   `Arc` and read lock-free from the mappings.
//! - `flush` is held by the flusher thread while it syncs; it records how far the active
//!   segment is durable and writes the recovery checkpoint.
//! - `index` holds the tenant/key index, which follows the log a little behind: appenders
//!   queue their batches' updates in `pending` and drain it into the index every
//!   [`INDEX_APPLY_AT`] updates, after releasing the writer lock, if this lock is free
//!   (see `indexer.rs` for what they leave to the indexer thread); the index reflects
//!   exactly the offsets below its own `next_offset`, and whoever needs it current drains
//!   `pending` into it under this lock ([`Partition::index_up_to`]).
//!
//! Lock order: `flush` → `writer` → `segments`; `writer` → `pending`; `index` → `pending`
//! and `index` → `segments`; `compaction` (held by retention and compaction) → `writer`
//! and `compaction` → `index`. The index lock is never taken with the writer lock held, nor
//! the other way round.
//!
//! Invariants: offsets are dense and increasing across segments (segment N+1's base is
//! segment N's next offset); `durable_offset <= next_offset`; every segment but the last is
//! sealed (trimmed and fsynced); after a failed sync the partition is poisoned and
//! refuses appends until reopened.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::Instant;

use crate::batch::{self, BatchError};
use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::config::TopicConfig;
use crate::error::{EngineError, Result};
use crate::extract::TenantSnapshot;
use crate::fsio::{self, SyncPolicy};
use crate::indexer::IndexerHandle;
use crate::key_map::key_hash;
use crate::notify::{Change, WaitPoint, Watcher};
use crate::producer::{BatchRecord, ProducerState, SequenceCheck};
use crate::segment::{Segment, WARM_AHEAD_BYTES};
use crate::tenant_index::{Note, PendingUpdates, TenantIndex};

pub const PRODUCER_SNAPSHOT_FILE: &str = "producers.snapshot";
pub const TENANT_INDEX_FILE: &str = "tenants.snapshot";

/// Updates queued before the appending thread applies them to the index itself, in one
/// round (under the index lock, if free, and unless a large key table would have to
/// double: then the indexer thread is woken for it). Fewer stay queued until someone needs
/// the index (who then applies them), a roll, or a flush.
///
/// Rounds on the appending thread, rather than waking the indexer thread for each, cost
/// less in all (eleventh session, docs/BENCHMARKS.md; most likely because no thread is
/// woken to share the two cores): 1 M-key publishes ran 1.12× faster (median of 10
/// alternating pairs) on 8 % less CPU per record. A round of 8 192 updates costs the
/// appending thread ~0.1–0.3 ms.
pub const INDEX_APPLY_AT: usize = 8_192;

/// Per-tenant figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantInfo {
    /// Offset of the tenant's most recent event in this partition.
    pub latest_offset: Option<u64>,
    /// Keys whose latest record is not a tombstone.
    pub live_keys: u64,
    /// Records of the tenant in the log (since the index began).
    pub events: u64,
}

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekFrom {
    Earliest,
    /// The next offset to be written: only new records.
    Latest,
    Offset(u64),
    /// The first batch holding a record at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
    /// The batch was a producer retry already in the log; nothing was written.
    pub duplicate: bool,
}

/// Whole batches read from one segment: a borrowed view of the mapping, zero-copy.
/// Holding it keeps the segment's mapping alive (retention cannot pull it away).
#[derive(Debug, Clone)]
pub struct Fetched {
    segment: Option<Arc<Segment>>,
    start: u32,
    end: u32,
    /// Offset after the last batch returned (where the next read starts).
    pub next_offset: u64,
    /// The partition's next offset to be written, when the read was made.
    pub high_watermark: u64,
    /// The partition's earliest offset, when the read was made.
    pub earliest_offset: u64,
}

impl Fetched {
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
    /// The sub-range `[from, to)` of these bytes (positions relative to the start), still
    /// zero-copy. Callers cut on batch boundaries.
    pub fn slice(&self, from: usize, to: usize) -> Fetched {
        let len = (self.end - self.start) as usize;
        let (from, to) = (from.min(len) as u32, to.min(len) as u32);
        Fetched {
            segment: self.segment.clone(),
            start: self.start + from,
            end: self.start + to.max(from),
            ..self.clone()
        }
    }

    /// The segment the bytes come from and their position, for `sendfile`.
    pub fn file_range(&self) -> Option<(&Segment, u32, u32)> {
        self.segment.as_deref().map(|s| (s, self.start, self.end))
    }
}

/// Bytes of one segment that a read is about to touch and that are not all in the page
/// cache ([`Partition::cold_span`]). Holding it keeps the segment mapped.
#[derive(Debug, Clone)]
pub struct ColdSpan {
    segment: Arc<Segment>,
    start: u32,
    end: u32,
    must_wait: bool,
}

impl ColdSpan {
    /// Reads the span into the page cache, returning once it is there (a disk read per
    /// page that was not), and asks for the read-ahead past it: for a thread that may
    /// wait.
    pub fn warm(&self) {
        self.segment.warm(self.start, self.end);
    }

    /// Whether some page of the span is out of the page cache: the read must wait for
    /// [`ColdSpan::warm`]. Otherwise only the read-ahead past it is due, and the read can
    /// be made now.
    pub fn must_wait(&self) -> bool {
        self.must_wait
    }

    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

impl Deref for Fetched {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.segment
            .as_ref()
            .and_then(|s| s.bytes(self.start, self.end))
            .unwrap_or(&[])
    }
}

/// A batch [`Partition::check`] validated, ready for [`Partition::append_checked`].
#[derive(Debug)]
pub struct CheckedBatch<'a> {
    view: batch::BatchView<'a>,
    /// Its tenant records' notes in the caller's [`IndexNotes`].
    notes: std::ops::Range<u32>,
    /// The marks of its streaks of one tenant in the caller's [`IndexNotes`].
    tenants: std::ops::Range<u32>,
}

/// What [`Partition::check`] notes of batches' tenant records for the tenant index (key
/// hashed while the bytes are in the cache, offset relative to its batch, where its
/// tenant lies), for [`Partition::append_checked`] to queue once the batches have their
/// offsets. One buffer for a whole group of batches, kept by the caller and reused: a
/// buffer per batch (3 KiB for 100 keyed records) was an allocation and a free per batch
/// on the event loop (~12 of the server's ~560 user instructions per keyed record).
///
/// The notes carry no tenant: `tenants` marks where, within a batch's notes, a streak of
/// one tenant begins (one mark for a tenant-uniform batch), so the tenant is compared
/// once per record in the walk and looked up once per streak when queued.
#[derive(Debug, Default)]
pub struct IndexNotes {
    notes: Vec<Note>,
    tenants: Vec<TenantMark>,
}

/// The start of a streak of one tenant's notes in a batch.
#[derive(Debug, Clone, Copy)]
struct TenantMark {
    /// The streak's first note (an index into [`IndexNotes`]' notes).
    first_note: u32,
    /// Where the tenant lies in the batch (a record's own, or the header's); a tenant
    /// is at most 255 bytes (validated).
    at: u32,
    len: u8,
}

impl IndexNotes {
    /// Marks the start of a streak of `tenant` (a slice of `batch`) at the next note,
    /// unless the batch's last mark (from `first_mark` on) names the same bytes.
    #[cold]
    #[inline(never)]
    fn mark(&mut self, batch: &[u8], first_mark: usize, tenant: &[u8]) {
        let at = tenant.as_ptr() as usize - batch.as_ptr() as usize;
        if let Some(last) = self.tenants[first_mark..].last() {
            if batch[last.at as usize..][..usize::from(last.len)] == *tenant {
                return;
            }
        }
        self.tenants.push(TenantMark {
            first_note: self.notes.len() as u32,
            at: at as u32,
            len: tenant.len() as u8,
        });
    }
}

/// Notes an [`IndexNotes`] keeps room for between uses (a huge group's are let go).
const INDEX_NOTES_KEPT: usize = 1 << 16;

impl IndexNotes {
    /// Empties the buffer for the next group, giving back an unusually large one.
    pub fn clear(&mut self) {
        if self.notes.capacity() > INDEX_NOTES_KEPT {
            self.notes = Vec::new();
        }
        self.notes.clear();
        self.tenants.clear();
    }
}

/// What became of one run of [`Partition::append_checked`].
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// The run's batches appended (or found to be producer retries), in order.
    pub appended: Vec<Appended>,
    /// Why the run stopped before its end, if it did: the batch after `appended` failed.
    pub error: Option<EngineError>,
}

/// Batches given their offsets and waiting for their one write.
#[derive(Debug)]
struct Plan<'a> {
    /// The checked batches' index notes.
    notes: &'a IndexNotes,
    items: Vec<Planned<'a>>,
    bytes: usize,
    /// The offset after the last planned batch.
    next_offset: Option<u64>,
}

impl Plan<'_> {
    fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
        self.next_offset = None;
    }
}

#[derive(Debug)]
struct Planned<'a> {
    batch: &'a CheckedBatch<'a>,
    base_offset: u64,
    /// Its run, and its place among that run's outcomes.
    run: usize,
    at: usize,
}

/// A write error again, for each run it stopped (an `io::Error` is not `Clone`).
fn retold(e: &EngineError) -> EngineError {
    match e {
        EngineError::Io { op, path, source } => EngineError::Io {
            op,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => EngineError::InvalidBatch(other.to_string()),
    }
}

#[derive(Debug)]
struct Writer {
    active: Arc<Segment>,
    producers: ProducerState,
    /// Segments rolled away from but not yet sealed (synced, trimmed) by the flusher.
    /// Sealing is slow (it syncs a whole segment), so it never runs on the append path.
    unsealed: Vec<Arc<Segment>>,
}

/// Tenant records applied and segment boundaries passed since the index's last checkpoint:
/// whether the next boundary owes a new one.
///
/// A checkpoint costs O(live keys) on the indexer thread (encode, write, fsync); what it
/// saves is a replay of the records since the previous one after a crash. With a
/// long-lived tenant of a million keys updated at random, a checkpoint at every 256 MiB
/// roll was ~45 % of the indexer's CPU, as much as applying the updates. So a boundary
/// owes one only once [`CHECKPOINT_RECORDS_PER_KEY`] records per live key were applied
/// since the last (at most a quarter of a key's encoding per record), or the checkpoint
/// is small ([`CHECKPOINT_SMALL_KEYS`]), or [`CHECKPOINT_ROLLS_MAX`] boundaries passed.
/// A restart's replay is thus at most that many records (plus the tail after the last
/// boundary), never the whole log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CheckpointDebt {
    records: u64,
    rolls: u32,
}

/// Records per live key applied since the last checkpoint that make the next one due.
const CHECKPOINT_RECORDS_PER_KEY: u64 = 4;
/// An index with at most this many live keys (a checkpoint of 1.5 MiB, under a
/// millisecond to encode) is checkpointed at every segment boundary.
const CHECKPOINT_SMALL_KEYS: u64 = 1 << 16;
/// Segment boundaries after which a checkpoint is due whatever the records (bounds the
/// replay when a few huge tenants see few updates).
const CHECKPOINT_ROLLS_MAX: u32 = 16;

impl CheckpointDebt {
    /// After an open: the replay just done may have been long; the next boundary settles it.
    const DUE: CheckpointDebt = CheckpointDebt {
        records: u64::MAX,
        rolls: CHECKPOINT_ROLLS_MAX,
    };
    const NONE: CheckpointDebt = CheckpointDebt {
        records: 0,
        rolls: 0,
    };

    fn due(&self, live_keys: u64) -> bool {
        live_keys <= CHECKPOINT_SMALL_KEYS
            || self.rolls >= CHECKPOINT_ROLLS_MAX
            || self.records >= live_keys.saturating_mul(CHECKPOINT_RECORDS_PER_KEY)
    }
}

/// The tenant index and its pending checkpoint.
#[derive(Debug)]
pub(crate) struct IndexState {
    /// Tenant → key → latest offset, for the offsets below `tenants.next_offset()`.
    pub(crate) tenants: TenantIndex,
    /// A segment boundary was passed since the last checkpoint was encoded: the indexer
    /// thread owes one. Only it encodes (O(keys): tens of ms for millions of keys), so
    /// whoever else catches the index up — an extraction's freeze, TENANT_INFO, an
    /// appender — never pays for it.
    checkpoint_owed: bool,
    /// The index written by the indexer to a temporary file, to be synced and renamed
    /// into place once the log is durable as far as it covers (a checkpoint never covers
    /// data that is not).
    checkpoint: Option<PendingCheckpoint>,
    /// Checkpoints written so far: names each one's temporary file, so that writing the
    /// next never touches one about to be renamed.
    checkpoints_written: u64,
    /// What the index has applied since its last checkpoint was encoded.
    debt: CheckpointDebt,
    /// The pending updates being applied (swapped with `Partition::pending`, so both
    /// buffers keep their capacity).
    drained: PendingUpdates,
}

/// A tenant index checkpoint written to `tenants.<n>.tmp`, covering every record below
/// `covers`, waiting for the log to be durable that far. Dropped without being
/// published (superseded, or at close), its file goes; one left by a crash is removed
/// on open, as every `.tmp` file is.
#[derive(Debug)]
struct PendingCheckpoint {
    covers: u64,
    path: PathBuf,
    /// `None` once published.
    file: Option<std::fs::File>,
}

impl PendingCheckpoint {
    /// Syncs it and renames it onto `to` (then syncs the directory).
    fn publish(mut self, to: &Path) -> Result<()> {
        let file = self.file.take().expect("not yet published");
        fsio::commit(file, &self.path, to, true)
    }
}

impl Drop for PendingCheckpoint {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[derive(Debug, Default)]
struct FlushProgress {
    segment_base: u64,
    position: u32,
    offset_entries: usize,
    time_entries: usize,
}

/// Shared with the engine: who to tell about changes.
pub(crate) type WatcherSlot = Arc<OnceLock<Arc<dyn Watcher>>>;

/// Engine-wide services every partition uses.
#[derive(Debug, Clone)]
pub(crate) struct Services {
    pub sync: SyncPolicy,
    pub watcher: WatcherSlot,
    pub indexer: IndexerHandle,
    pub index_lag: crate::config::IndexLag,
}

pub struct Partition {
    topic: Arc<str>,
    id: u32,
    dir: PathBuf,
    config: TopicConfig,
    sync: SyncPolicy,
    writer: Mutex<Writer>,
    index: Mutex<IndexState>,
    /// Index updates appended and not yet applied.
    pending: Mutex<PendingUpdates>,
    /// Queued with the indexer thread.
    index_queued: AtomicBool,
    /// A tenant index checkpoint is owed, or written and not yet in place: the next flush
    /// must give the indexer a round.
    checkpoint_waiting: AtomicBool,
    /// This partition as the indexer thread holds it (set when it is put in its `Arc`).
    me: OnceLock<Weak<Partition>>,
    indexer: IndexerHandle,
    index_lag: crate::config::IndexLag,
    segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    next_offset: AtomicU64,
    durable_offset: AtomicU64,
    poisoned: AtomicBool,
    flush: Mutex<FlushProgress>,
    /// Held while compacting or applying retention: one at a time per partition (both
    /// replace sealed segments and their files).
    compaction: Mutex<()>,
    checkpoint: CheckpointFile,
    wait: WaitPoint,
    watcher: WatcherSlot,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("topic", &self.topic)
            .field("id", &self.id)
            .field("next_offset", &self.next_offset())
            .finish_non_exhaustive()
    }
}

/// What recovery hands to a partition.
pub(crate) struct Recovered {
    pub segments: Vec<Arc<Segment>>,
    pub producers: ProducerState,
    pub tenants: TenantIndex,
    /// Offset up to which the log is known durable (sealed segments, or the checkpoint).
    pub durable_offset: u64,
}

impl Partition {
    pub(crate) fn from_recovered(
        topic: Arc<str>,
        id: u32,
        dir: PathBuf,
        config: TopicConfig,
        recovered: Recovered,
        services: &Services,
    ) -> Result<Partition> {
        let active = recovered.segments.last().cloned().ok_or_else(|| {
            EngineError::InvalidConfig("a partition needs at least one segment".into())
        })?;
        let next = active.next_offset();
        let checkpoint = CheckpointFile::open(&dir)?;
        Ok(Partition {
            topic,
            id,
            dir,
            config,
            sync: services.sync.clone(),
            next_offset: AtomicU64::new(next),
            durable_offset: AtomicU64::new(recovered.durable_offset.min(next)),
            writer: Mutex::new(Writer {
                active,
                producers: recovered.producers,
                unsealed: Vec::new(),
            }),
            index: Mutex::new(IndexState {
                tenants: recovered.tenants,
                checkpoint_owed: false,
                checkpoint: None,
                checkpoints_written: 0,
                debt: CheckpointDebt::DUE,
                drained: PendingUpdates::default(),
            }),
            pending: Mutex::new(PendingUpdates::default()),
            index_queued: AtomicBool::new(false),
            checkpoint_waiting: AtomicBool::new(false),
            me: OnceLock::new(),
            indexer: services.indexer.clone(),
            index_lag: services.index_lag,
            segments: RwLock::new(Arc::new(recovered.segments)),
            poisoned: AtomicBool::new(false),
            flush: Mutex::new(FlushProgress::default()),
            compaction: Mutex::new(()),
            checkpoint,
            wait: WaitPoint::default(),
            watcher: services.watcher.clone(),
        })
    }

    /// Puts the partition in its `Arc` (the indexer thread holds it weakly).
    pub(crate) fn into_arc(self) -> Arc<Partition> {
        let arc = Arc::new(self);
        let _ = arc.me.set(Arc::downgrade(&arc));
        arc
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> &TopicConfig {
        &self.config
    }

    /// The next offset to be assigned (the high watermark): records `< next_offset()` are
    /// readable.
    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Records `< durable_offset()` are synced to disk.
    pub fn durable_offset(&self) -> u64 {
        self.durable_offset.load(Ordering::Acquire)
    }

    pub fn earliest_offset(&self) -> u64 {
        self.segments().first().map_or(0, |s| s.base_offset())
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// The current segment list (a snapshot; cheap to clone).
    pub fn segments(&self) -> Arc<Vec<Arc<Segment>>> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bytes held on disk by the partition's data (not counting preallocation).
    pub fn size_bytes(&self) -> u64 {
        self.segments().iter().map(|s| u64::from(s.len())).sum()
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the watcher, then wakes blocking waiters: a caller woken by a change can rely
    /// on the watcher having seen it.
    fn emit(&self, change: Change) {
        if let Some(w) = self.watcher.get() {
            w.on_change(&self.topic, self.id, change);
        }
        self.wait.notify();
    }

    fn poison(&self, err: &EngineError) {
        tracing::error!(topic = %self.topic, partition = self.id, error = %err, "sync failed; partition poisoned");
        self.poisoned.store(true, Ordering::Release);
        self.emit(Change::Poisoned);
    }

    fn poisoned_error(&self) -> EngineError {
        EngineError::Poisoned {
            topic: self.topic.to_string(),
            partition: self.id,
        }
    }

    /// Appends one batch (as built by `builder::build_batch` or received from a producer).
    /// The batch is fully validated (CRC, structure) before anything is written. Returns
    /// once the batch is readable (`written`); see [`Partition::wait_durable`] for
    /// `durable`.
    pub fn append(&self, batch_bytes: &[u8]) -> Result<Appended> {
        let mut notes = IndexNotes::default();
        let checked = self.check(batch_bytes, &mut notes)?;
        let mut outcome = self
            .append_checked(&[std::slice::from_ref(&checked)], &notes)
            .pop()
            .expect("one outcome per run");
        match outcome.error.take() {
            Some(e) => Err(e),
            None => Ok(outcome.appended[0]),
        }
    }

    /// Validates a batch (size, CRC, structure) without taking any lock, and notes in
    /// `notes` what its tenant records change in the index (keys hashed while the bytes
    /// are in the cache, offsets relative to the batch until it has its base).
    pub fn check<'a>(
        &self,
        batch_bytes: &'a [u8],
        notes: &mut IndexNotes,
    ) -> Result<CheckedBatch<'a>> {
        let max = self.config.batch_bytes_max as usize;
        if batch_bytes.len() > max {
            return Err(EngineError::RecordTooLarge {
                len: batch_bytes.len(),
                max,
            });
        }
        let first = notes.notes.len();
        let first_mark = notes.tenants.len();
        // Where the current streak's tenant lies: a tenant-uniform batch hands every
        // record the header's slice (one compare per record); records with their own
        // tenant are compared by their bytes ([`IndexNotes::mark`]).
        let mut streak: *const u8 = std::ptr::null();
        // Inlined into the walk: as a call, noting cost ~17 instructions per record even
        // for a record without a tenant (saving and restoring registers around nothing).
        let validated = batch::validate_each(
            batch_bytes,
            #[inline(always)]
            |r| {
                let Some(tenant) = r.tenant else { return };
                let (key, mut flags) = match r.key {
                    Some(k) => (key_hash(k), Note::HAS_KEY),
                    None => (0, 0),
                };
                if r.value.is_some() {
                    flags |= Note::LIVE;
                }
                if tenant.as_ptr() != streak {
                    streak = tenant.as_ptr();
                    notes.mark(batch_bytes, first_mark, tenant);
                }
                notes.notes.push(Note::new(key, r.offset_delta, flags));
            },
        );
        let view = match validated {
            Ok(view) => view,
            Err(e) => {
                // A failed batch leaves no note.
                notes.notes.truncate(first);
                notes.tenants.truncate(first_mark);
                return Err(match e {
                    BatchError::Incomplete { needed, have } => EngineError::InvalidBatch(format!(
                        "truncated: batch needs {needed} bytes, {have} given"
                    )),
                    BatchError::Invalid(why) => EngineError::InvalidBatch(why),
                });
            }
        };
        Ok(CheckedBatch {
            view,
            notes: first as u32..notes.notes.len() as u32,
            tenants: first_mark as u32..notes.tenants.len() as u32,
        })
    }

    /// Appends runs of checked batches, in order, with as few writes as the segments
    /// allow: every batch that fits the active segment goes out in `pwritev` calls of up to
    /// [`fsio::WRITE_MAX`] (see
    /// `Segment::append_all` for why that matters). Each run is one request's batches: it
    /// stops at its first error (the batches before it stay appended), and the other runs
    /// go on. The same outcome, batch for batch, as appending them one at a time.
    /// `notes` is what [`Partition::check`] noted while checking them.
    pub fn append_checked(
        &self,
        runs: &[&[CheckedBatch<'_>]],
        notes: &IndexNotes,
    ) -> Vec<RunOutcome> {
        let mut outcomes: Vec<RunOutcome> = Vec::with_capacity(runs.len());
        let mut plan = Plan {
            notes,
            items: Vec::new(),
            bytes: 0,
            next_offset: None,
        };
        let mut queued = None;
        let mut w = self.lock_writer();
        let next_before = self.next_offset.load(Ordering::Relaxed);
        for (run_index, run) in runs.iter().enumerate() {
            outcomes.push(RunOutcome::default());
            for checked in run.iter() {
                if let Err(e) = self.place(
                    &mut w,
                    &mut plan,
                    run_index,
                    checked,
                    &mut outcomes,
                    &mut queued,
                ) {
                    outcomes[run_index].error.get_or_insert(e);
                }
                if outcomes[run_index].error.is_some() {
                    break;
                }
            }
        }
        self.write_plan(&mut w, &mut plan, &mut outcomes, &mut queued);
        let next_offset = self.next_offset.load(Ordering::Relaxed);
        drop(w);
        if let Some((before, after, last_offset)) = queued {
            self.after_queueing(before, after, last_offset);
        }
        if next_offset != next_before {
            self.emit(Change::Appended { next_offset });
        }
        outcomes
    }

    /// Gives one checked batch its place: a duplicate's outcome, a roll when the active
    /// segment is full (writing what is planned first), or a slot in the plan.
    fn place<'a>(
        &self,
        w: &mut Writer,
        plan: &mut Plan<'a>,
        run: usize,
        checked: &'a CheckedBatch<'a>,
        outcomes: &mut [RunOutcome],
        queued: &mut Option<(usize, usize, u64)>,
    ) -> Result<()> {
        if self.is_poisoned() {
            return Err(self.poisoned_error());
        }
        let header = &checked.view.header;
        if header.producer_id != 0 {
            // Batches planned but not yet written are recorded already (and forgotten
            // again if their write fails), so a retry among them is seen; it is answered
            // once they are written.
            let mut check = w.producers.check(header.producer_id, header.producer_seq)?;
            if matches!(check, SequenceCheck::Duplicate(hit) if hit.base_offset >= self.next_offset.load(Ordering::Relaxed))
            {
                self.write_plan(w, plan, outcomes, queued);
                if outcomes[run].error.is_some() {
                    return Ok(());
                }
                check = w.producers.check(header.producer_id, header.producer_seq)?;
            }
            if let SequenceCheck::Duplicate(hit) = check {
                outcomes[run].appended.push(Appended {
                    base_offset: hit.base_offset,
                    last_offset: hit.last_offset,
                    duplicate: true,
                });
                return Ok(());
            }
        }
        let len = checked.view.bytes().len();
        if !w.active.has_room(plan.bytes + len) || self.segment_expired(&w.active) {
            self.write_plan(w, plan, outcomes, queued);
            if outcomes[run].error.is_some() {
                return Ok(());
            }
            self.roll(w)?;
        }
        let base_offset = plan
            .next_offset
            .unwrap_or_else(|| self.next_offset.load(Ordering::Relaxed));
        let last_offset = base_offset + u64::from(header.last_offset_delta);
        if header.producer_id != 0 {
            w.producers.record(
                header.producer_id,
                BatchRecord {
                    sequence: header.producer_seq,
                    base_offset,
                    last_offset,
                },
            );
        }
        let appended = &mut outcomes[run].appended;
        plan.items.push(Planned {
            batch: checked,
            base_offset,
            run,
            at: appended.len(),
        });
        appended.push(Appended {
            base_offset,
            last_offset,
            duplicate: false,
        });
        plan.bytes += len;
        plan.next_offset = Some(last_offset + 1);
        Ok(())
    }

    /// Writes the planned batches to the active segment, queues their index updates and
    /// publishes their offsets; empties the plan. If the write fails, nothing of it is
    /// published: the runs it held get the error in place of those batches (the producer
    /// records made for them are forgotten).
    fn write_plan(
        &self,
        w: &mut Writer,
        plan: &mut Plan<'_>,
        outcomes: &mut [RunOutcome],
        queued: &mut Option<(usize, usize, u64)>,
    ) {
        if plan.items.is_empty() {
            return;
        }
        let batches: Vec<(&[u8], &batch::BatchHeader, u64)> = plan
            .items
            .iter()
            .map(|p| (p.batch.view.bytes(), &p.batch.view.header, p.base_offset))
            .collect();
        let first_offset = plan.items[0].base_offset;
        let next_offset = plan.next_offset.expect("a plan with items knows its end");
        if let Err(e) = w.active.append_all(&batches) {
            w.producers.truncate_from(first_offset);
            let mut failed_run = None;
            for p in &plan.items {
                if failed_run == Some(p.run) {
                    continue;
                }
                failed_run = Some(p.run);
                let outcome = &mut outcomes[p.run];
                outcome.appended.truncate(p.at);
                outcome.error = Some(retold(&e));
            }
            plan.clear();
            return;
        }
        // Queued before the offsets are published: whoever sees the offsets and then
        // drains the queue finds these.
        if plan.items.iter().any(|p| !p.batch.notes.is_empty()) {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let before = pending.len();
            pending.end = next_offset;
            let IndexNotes { notes, tenants } = plan.notes;
            for p in &plan.items {
                let batch = p.batch;
                let bytes = batch.view.bytes();
                let marks = &tenants[batch.tenants.start as usize..batch.tenants.end as usize];
                for (i, mark) in marks.iter().enumerate() {
                    let end = marks.get(i + 1).map_or(batch.notes.end, |m| m.first_note);
                    let tenant = &bytes[mark.at as usize..][..usize::from(mark.len)];
                    let id = pending.intern(tenant);
                    pending.push(
                        id,
                        p.base_offset,
                        &notes[mark.first_note as usize..end as usize],
                    );
                }
            }
            let after = pending.len();
            let first = queued.map_or(before, |(b, _, _)| b.min(before));
            *queued = Some((first, after, next_offset - 1));
        }
        self.next_offset.store(next_offset, Ordering::SeqCst);
        plan.clear();
    }

    /// The index's lag after an append queued updates (`before` → `after` queued, the
    /// last at `last_offset`): wake the indexer, help it, or wait for it.
    fn after_queueing(&self, before: usize, queued: usize, last_offset: u64) {
        if queued > self.index_lag.hard {
            // The index is far behind: wait for it (and help).
            drop(self.index_up_to(last_offset + 1));
        } else if queued > self.index_lag.soft {
            // Behind: pay for the index here, unless the indexer is at it already — it has
            // taken the queue, and these updates came in during its round. (A segment
            // boundary in the queue costs nothing more here: the checkpoint it calls for
            // is the indexer's to encode.)
            let owes = match self.index.try_lock() {
                Ok(mut state) => self.catch_up(&mut state, last_offset + 1),
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    self.catch_up(&mut p.into_inner(), last_offset + 1)
                }
                Err(std::sync::TryLockError::WouldBlock) => true,
            };
            if owes {
                self.poke_indexer();
            }
        } else {
            // A round here once per INDEX_APPLY_AT updates, not per append; and well before
            // `soft` where that is set lower.
            let apply_at = INDEX_APPLY_AT.min(self.index_lag.soft / 2).max(1);
            if queued / apply_at > before / apply_at {
                self.apply_here_or_poke(last_offset);
            }
        }
    }

    /// The appending thread's round: applies the queued updates under the index lock
    /// unless someone holds it (the indexer or a reader is catching up: the indexer is
    /// woken to take these too) or they would double a large key table (the indexer's
    /// work: tens of ms for millions of keys). A checkpoint owed is the indexer's too.
    fn apply_here_or_poke(&self, last_offset: u64) {
        let mut state = match self.index.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return self.poke_indexer(),
        };
        let owes = self.catch_up_if(&mut state, last_offset + 1, TenantIndex::applies_cheaply);
        drop(state);
        if owes != Some(false) {
            self.poke_indexer();
        }
    }

    fn segment_expired(&self, active: &Segment) -> bool {
        self.config.segment_ms > 0
            && !active.is_empty()
            && fsio::now_ms().saturating_sub(active.opened_ms()) as u64 >= self.config.segment_ms
    }

    /// Closes the active segment and starts a new one at the next offset. The old one is
    /// sealed by the flusher; until then it counts as part of the unflushed tail.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let next = self.next_offset.load(Ordering::Relaxed);
        let seg = Arc::new(Segment::create(
            &self.dir,
            next,
            self.config.segment_bytes,
            self.config.index_interval_bytes,
        )?);
        // Bounds the replay of producer state on open to the segments after `next`. Not
        // fsynced: losing it only makes recovery replay more.
        let snapshot = w.producers.encode(next);
        if let Err(e) = fsio::write_atomic(&self.dir.join(PRODUCER_SNAPSHOT_FILE), &snapshot, false)
        {
            tracing::warn!(error = %e, "could not write producer snapshot");
        }
        {
            let mut list = self.segments.write().unwrap_or_else(|p| p.into_inner());
            let mut segs: Vec<Arc<Segment>> = list.as_ref().clone();
            segs.push(seg.clone());
            *list = Arc::new(segs);
        }
        let old = std::mem::replace(&mut w.active, seg);
        w.unsealed.push(old);
        // Where the index will checkpoint (once this roll is durable).
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rolls
            .push(next);
        self.poke_indexer();
        tracing::debug!(topic = %self.topic, partition = self.id, base = next, "rolled segment");
        Ok(())
    }

    /// Resolves a starting point to an offset.
    pub fn resolve(&self, from: SeekFrom) -> u64 {
        match from {
            SeekFrom::Earliest => self.earliest_offset(),
            SeekFrom::Latest => self.next_offset(),
            SeekFrom::Offset(o) => o,
            SeekFrom::Timestamp(ts) => self.offset_for_time(ts),
        }
    }

    /// Base offset of the first batch holding a record at or after `timestamp_ms`, or the
    /// next offset if there is none.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> u64 {
        let next = self.next_offset();
        for seg in self.segments().iter() {
            if let Some((_, base)) = seg.find_time(timestamp_ms) {
                return base.min(next);
            }
        }
        next
    }

    /// Reads whole batches starting with the one that holds `from`, up to `max_bytes`
    /// (at least one batch, so a consumer always makes progress), from one segment.
    /// Reading at the high watermark returns an empty result.
    pub fn read(&self, from: u64, max_bytes: u32) -> Result<Fetched> {
        // Load the watermark before the segment list: a roll publishes the new segment
        // before the offsets in it become visible.
        let high_watermark = self.next_offset();
        let segs = self.segments();
        Self::read_in(&segs, high_watermark, from, max_bytes)
    }

    /// Where a [`Partition::read`] from `from` of up to `max_bytes` would find pages out
    /// of the page cache: the span of the segment it would read (from the index entry at
    /// or before `from`, one index interval more than `max_bytes`), if some page of it is
    /// not cached ([`ColdSpan::must_wait`]) — or if all of it is but the page half a
    /// read-ahead past it ([`WARM_AHEAD_BYTES`]) is not: a reader going on in order is
    /// about to run out of what was read ahead for it, and warming the span asks for the
    /// next read-ahead (the kernel's own read-ahead marker, for reads it does not see
    /// coming). `None` when there is nothing to do, when the read would fail or find
    /// nothing, and without asking the kernel for the tail this process has just written
    /// ([`Segment::may_be_cold`]). A thread that must not wait for the disk warms the span
    /// on one that may ([`ColdSpan::warm`]), before it reads if it must wait.
    pub fn cold_span(&self, from: u64, max_bytes: u32) -> Option<ColdSpan> {
        let segs = self.segments();
        let idx = segs
            .partition_point(|s| s.base_offset() <= from)
            .checked_sub(1)?;
        let seg = &segs[idx];
        if !seg.may_be_cold() || from >= seg.next_offset() {
            return None;
        }
        let relative = u32::try_from(from - seg.base_offset()).ok()?;
        let start = seg
            .index()
            .lookup_offset(relative)
            .map_or(0, |e| e.position);
        let end = start
            .saturating_add(max_bytes)
            .saturating_add(self.config.index_interval_bytes)
            .min(seg.len());
        // The read-ahead marker: asked for already (read in or not) unless missing.
        let marker = end.saturating_add(WARM_AHEAD_BYTES / 2).min(seg.len());
        // One look at all of it first: in the usual case (everything cached) the only
        // other question is whether the span's last page has been read in yet (pages of a
        // read come in in order, so a read-ahead still in flight shows there).
        let all_cached = seg.cached(start, marker.saturating_add(1));
        let span_cached = all_cached || seg.cached(start, end);
        let must_wait = !span_cached || !seg.resident(end.saturating_sub(1).max(start), end);
        let ahead_missing = !all_cached && marker < seg.len() && !seg.cached(marker, marker + 1);
        (must_wait || ahead_missing).then(|| ColdSpan {
            segment: seg.clone(),
            start,
            end,
            must_wait,
        })
    }

    /// As [`Partition::read`], from a segment list taken earlier (see
    /// [`Partition::segments`]): what a reader that must not see retention or compaction
    /// act under it (a history extraction) reads from. Reads stop at `high_watermark`.
    pub fn read_pinned(&self, segs: &[Arc<Segment>], from: u64, max_bytes: u32) -> Result<Fetched> {
        let pinned_end = segs.last().map_or(0, |s| s.next_offset());
        let high_watermark = self.next_offset().min(pinned_end);
        Self::read_in(segs, high_watermark, from, max_bytes)
    }

    fn read_in(
        segs: &[Arc<Segment>],
        high_watermark: u64,
        from: u64,
        max_bytes: u32,
    ) -> Result<Fetched> {
        let earliest = segs.first().map_or(0, |s| s.base_offset());
        let empty = |next| Fetched {
            segment: None,
            start: 0,
            end: 0,
            next_offset: next,
            high_watermark,
            earliest_offset: earliest,
        };
        if from == high_watermark && from >= earliest {
            return Ok(empty(from));
        }
        if from < earliest || from > high_watermark {
            return Err(EngineError::OffsetOutOfRange {
                requested: from,
                earliest,
                next: high_watermark,
            });
        }
        let idx = segs
            .partition_point(|s| s.base_offset() <= from)
            .saturating_sub(1);
        let seg = segs.get(idx).ok_or(EngineError::OffsetOutOfRange {
            requested: from,
            earliest,
            next: high_watermark,
        })?;
        let Some(start) = seg.find_position(from) else {
            return Err(EngineError::corrupt(
                seg.path(),
                0,
                format!("offset {from} not found in its segment"),
            ));
        };
        let (end, next_offset) = seg.batch_run(start, max_bytes);
        let next_offset = next_offset.unwrap_or(from);
        Ok(Fetched {
            segment: Some(seg.clone()),
            start,
            end,
            next_offset,
            high_watermark,
            earliest_offset: earliest,
        })
    }

    /// Blocks until the high watermark passes `offset` (a record at `offset` is readable)
    /// or the deadline; returns whether it did.
    pub fn wait_for_data(&self, offset: u64, deadline: Instant) -> bool {
        self.wait
            .wait_until(deadline, || self.next_offset() > offset)
    }

    /// Blocks until `offset` is durable. Errors if the partition is poisoned or the
    /// deadline passes first. The flusher must have been asked (the engine does this).
    pub fn wait_durable(&self, offset: u64, deadline: Instant) -> Result<()> {
        self.wait.wait_until(deadline, || {
            self.durable_offset() > offset || self.is_poisoned()
        });
        if self.durable_offset() > offset {
            Ok(())
        } else if self.is_poisoned() {
            Err(self.poisoned_error())
        } else {
            Err(EngineError::Timeout("a durable flush"))
        }
    }

    /// Syncs everything appended so far and advances the durable offset: seals the
    /// segments rolled away from, syncs the active one, then writes the checkpoint.
    /// Flusher (and clean close) only.
    pub fn flush(&self) -> Result<()> {
        let mut progress = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_poisoned() {
            return Err(self.poisoned_error());
        }
        let (unsealed, seg, len, next, max_ts, offset_entries, time_entries) = {
            let w = self.lock_writer();
            let s = w.active.clone();
            let (len, next, max_ts) = (s.len(), s.next_offset(), s.max_timestamp_ms());
            let entries = (s.index().offset_entries(), s.index().time_entries());
            (
                w.unsealed.clone(),
                s,
                len,
                next,
                max_ts,
                entries.0,
                entries.1,
            )
        };
        if unsealed.is_empty()
            && progress.segment_base == seg.base_offset()
            && progress.position == len
        {
            return Ok(());
        }
        let synced_from = |base: u64, p: &FlushProgress| {
            if p.segment_base == base {
                p.position
            } else {
                0
            }
        };
        for old in &unsealed {
            if let Err(e) = old.seal(synced_from(old.base_offset(), &progress), &self.sync) {
                self.poison(&e);
                return Err(e);
            }
        }
        if !unsealed.is_empty() {
            // The new segments' directory entries must be durable before the checkpoint
            // points into them.
            fsio::sync_dir(&self.dir)?;
            let mut w = self.lock_writer();
            w.unsealed
                .retain(|s| !unsealed.iter().any(|done| Arc::ptr_eq(s, done)));
        }
        let (from, oe_from, te_from) = if progress.segment_base == seg.base_offset() {
            (
                progress.position,
                progress.offset_entries,
                progress.time_entries,
            )
        } else {
            (0, 0, 0)
        };
        let synced = seg
            .sync_range(from, len, &self.sync)
            .and_then(|()| seg.index().sync_range(oe_from, te_from, &self.sync));
        if let Err(e) = synced {
            self.poison(&e);
            return Err(e);
        }
        let cp = Checkpoint {
            segment_base: seg.base_offset(),
            position: len,
            offset_entries: offset_entries as u32,
            time_entries: time_entries as u32,
            next_offset: next,
            max_timestamp_ms: max_ts,
        };
        if let Err(e) = self.checkpoint.write(&cp) {
            tracing::warn!(error = %e, "could not write recovery checkpoint");
        }
        *progress = FlushProgress {
            segment_base: seg.base_offset(),
            position: len,
            offset_entries,
            time_entries,
        };
        if self.durable_offset.fetch_max(next, Ordering::AcqRel) < next {
            self.emit(Change::Durable {
                durable_offset: next,
            });
        }
        let index_behind = !self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if index_behind || self.checkpoint_waiting.load(Ordering::Acquire) {
            // This flush may make the tenant index's checkpoint writable, and updates short
            // of a wake-up's worth should not wait for more appends.
            self.poke_indexer();
        }
        for sealed in &unsealed {
            sealed.store_tenant_map();
        }
        Ok(())
    }

    /// Whether there is appended data not yet durable.
    pub fn is_dirty(&self) -> bool {
        self.durable_offset() < self.next_offset()
    }

    /// For the page cache budget (`page_cache.rs`): the bytes of the segments that keep
    /// their pages (the active one and those awaiting their seal), and the sealed
    /// segments whose pages have not been dropped yet, oldest first.
    pub(crate) fn cache_candidates(&self) -> (u64, Vec<Arc<Segment>>) {
        // Under the writer lock, so that a segment is never counted sealed between its
        // roll and its seal.
        let w = self.lock_writer();
        let segs = self.segments();
        let sealed = segs.len().saturating_sub(1 + w.unsealed.len());
        drop(w);
        let (sealed, hot) = segs.split_at(sealed);
        let hot_bytes = hot.iter().map(|s| u64::from(s.len())).sum();
        let candidates = sealed
            .iter()
            .filter(|s| !s.cache_dropped())
            .cloned()
            .collect();
        (hot_bytes, candidates)
    }

    /// Deletes whole sealed segments past the size or age limit, oldest first. Returns
    /// the number of segments deleted. Readers holding a deleted segment keep reading it.
    pub fn apply_retention(&self, now_ms: i64) -> Result<usize> {
        let (bytes_max, ms_max) = (self.config.retention_bytes, self.config.retention_ms);
        if bytes_max == u64::MAX && ms_max == u64::MAX {
            return Ok(0);
        }
        // Serialised with compaction: a compaction that had picked a segment this deletes
        // would rename its rewrite onto the deleted file, and the next open would read it
        // as part of the log again.
        let _serial = self.compaction.lock().unwrap_or_else(|p| p.into_inner());
        let w = self.lock_writer();
        let segs = self.segments();
        let mut total: u64 = segs.iter().map(|s| u64::from(s.len())).sum();
        // Only sealed segments: the active one and those awaiting their seal stay.
        let sealed = segs.len().saturating_sub(1 + w.unsealed.len());
        let mut drop_count = 0;
        for seg in segs.iter().take(sealed) {
            let len = u64::from(seg.len());
            let past_size = total.saturating_sub(len) >= bytes_max;
            // Records stamped in the future (producer clock skew) are simply not old.
            let age_ms = now_ms.saturating_sub(seg.max_timestamp_ms());
            let past_age = ms_max != u64::MAX && age_ms > 0 && age_ms as u64 > ms_max;
            if !(past_size || past_age) {
                break;
            }
            total -= len;
            drop_count += 1;
        }
        if drop_count == 0 {
            return Ok(0);
        }
        let (gone, kept) = segs.split_at(drop_count);
        *self.segments.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(kept.to_vec());
        // The files go after the lock: unlinking a segment and syncing the directory took
        // 0.4–1.3 ms a segment on this machine's ext4 (the log line says how long), time
        // appends to this partition would wait. No one finds these segments any more;
        // readers holding one keep its mapping and descriptor.
        drop(w);
        let started = std::time::Instant::now();
        for seg in gone {
            seg.delete_files(&self.dir)?;
        }
        fsio::sync_dir(&self.dir)?;
        for seg in gone {
            tracing::info!(
                topic = %self.topic,
                partition = self.id,
                base = seg.base_offset(),
                ms = started.elapsed().as_secs_f64() * 1e3,
                "retention deleted segment"
            );
        }
        Ok(drop_count)
    }

    /// Compacts the sealed segments of a `compact` topic (see `compaction.rs`): each one
    /// where enough can go is rewritten keeping the latest record of every (tenant, key),
    /// offsets preserved, and swapped in crash-safely. Readers holding the old segment
    /// (extraction snapshots) keep reading it. Runs on the flusher thread; a call from
    /// elsewhere is serialised with it.
    pub fn compact(&self, now_ms: i64) -> Result<crate::compaction::CompactionStats> {
        use crate::compaction;
        let mut stats = compaction::CompactionStats::default();
        if self.config.cleanup != crate::config::CleanupPolicy::Compact || self.is_poisoned() {
            return Ok(stats);
        }
        let _serial = self.compaction.lock().unwrap_or_else(|p| p.into_inner());
        let candidates = {
            let w = self.lock_writer();
            let segs = self.segments();
            let sealed = segs.len().saturating_sub(1 + w.unsealed.len());
            segs[..sealed].to_vec()
        };
        // An index that covers every candidate (it may cover more: a record it does not
        // name as its key's latest has a later version, wherever that is).
        let covered = candidates.last().map_or(0, |s| s.next_offset());
        // A copy (O(keys)): compaction reads it for a while; this runs every
        // cleanup interval on compacted topics only.
        let index = self.index_up_to(covered).tenants.clone();
        let pinned: compaction::Pinned = candidates
            .iter()
            .filter_map(|s| compaction::pinned_key(s, &index))
            .collect();
        let rules = compaction::Rules {
            index: &index,
            pinned: &pinned,
            now_ms,
            tombstone_retention_ms: self.config.tombstone_retention_ms,
        };
        for seg in candidates {
            let Some((batches, removed)) = compaction::plan(&seg, &rules)? else {
                continue;
            };
            let base = seg.base_offset();
            let fresh = Arc::new(compaction::rewrite(
                &self.dir,
                base,
                &batches,
                self.config.index_interval_bytes,
                &self.sync,
            )?);
            stats.segments_rewritten += 1;
            stats.records_removed += removed;
            stats.bytes_before += u64::from(seg.len());
            stats.bytes_after += u64::from(fresh.len());
            let _w = self.lock_writer();
            let mut list = self.segments.write().unwrap_or_else(|p| p.into_inner());
            let mut next: Vec<Arc<Segment>> = list.to_vec();
            if let Some(slot) = next.iter_mut().find(|s| s.base_offset() == base) {
                *slot = fresh;
            }
            *list = Arc::new(next);
            tracing::info!(topic = %self.topic, partition = self.id, base, removed, "compacted segment");
        }
        Ok(stats)
    }

    /// Clean close: sync everything, seal the active segment, persist producer state and
    /// the tenant index (so the next open replays nothing).
    pub(crate) fn close(&self) -> Result<()> {
        self.flush()?;
        let w = self.lock_writer();
        if let Err(e) = w.active.seal(0, &self.sync) {
            self.poison(&e);
            return Err(e);
        }
        w.active.store_tenant_map();
        let next = self.next_offset();
        drop(w);
        let path = self.dir.join(TENANT_INDEX_FILE);
        let tmp = path.with_extension("tmp");
        let written = {
            let mut state = self.index_up_to(next);
            state.checkpoint = None;
            state.checkpoint_owed = false;
            state.debt = CheckpointDebt::NONE;
            self.checkpoint_waiting.store(false, Ordering::Release);
            state.tenants.write_checkpoint(&tmp)
        };
        let file = written.map_err(|e| EngineError::io("write", &tmp, e))?;
        fsio::commit(file, &tmp, &path, true)?;
        let w = self.lock_writer();
        fsio::write_atomic(
            &self.dir.join(PRODUCER_SNAPSHOT_FILE),
            &w.producers.encode(self.next_offset()),
            true,
        )
    }

    /// The tenant index, caught up by the caller: every update queued so far is applied,
    /// and the index then covers every offset below `target` — which must have been read
    /// from [`Partition::next_offset`] before this call (the updates of those offsets were
    /// queued before it was published). Returns with the index locked, so the caller can
    /// freeze it at that instant.
    pub(crate) fn index_up_to(&self, target: u64) -> MutexGuard<'_, IndexState> {
        let mut state = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if self.catch_up(&mut state, target) {
            self.poke_indexer(); // for the checkpoint now owed
        }
        state
    }

    /// [`Partition::index_up_to`] with the index lock already held. True when the updates
    /// applied passed a segment boundary that owes a checkpoint ([`CheckpointDebt`]).
    fn catch_up(&self, state: &mut IndexState, target: u64) -> bool {
        self.catch_up_if(state, target, |_, _| true)
            .expect("admitted")
    }

    /// [`Partition::catch_up`] if `admit` accepts the queue as it stands (checked and
    /// taken under the queue's lock, so nothing queued meanwhile escapes the check);
    /// `None`, and nothing applied, if not.
    fn catch_up_if(
        &self,
        state: &mut IndexState,
        target: u64,
        admit: impl FnOnce(&TenantIndex, &PendingUpdates) -> bool,
    ) -> Option<bool> {
        let mut drained = std::mem::take(&mut state.drained);
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if !admit(&state.tenants, &pending) {
                state.drained = drained;
                return None;
            }
            std::mem::swap(&mut *pending, &mut drained);
        }
        let passed_roll = !drained.rolls.is_empty();
        // Whole batches: the index never stops inside one (a checkpoint covers whole
        // batches, and replay resumes at a batch boundary).
        let end = drained.end;
        state.debt.records = state.debt.records.saturating_add(drained.len() as u64);
        state.debt.rolls = state.debt.rolls.saturating_add(drained.rolls.len() as u32);
        if !drained.is_empty() {
            state.tenants.apply_pending(&drained);
            drained.clear();
        }
        let owes = passed_roll && state.debt.due(state.tenants.live_keys());
        if owes {
            state.checkpoint_owed = true;
            self.checkpoint_waiting.store(true, Ordering::Release);
        }
        state.drained = drained;
        state.tenants.advance_to(target.max(end));
        Some(owes)
    }

    /// The indexer thread's round for this partition: catch the index up; write the
    /// checkpoint owed since a segment roll (as the index stands now) to a temporary file
    /// unless one is waiting already; put in place the newest one the log is durable as
    /// far as.
    pub(crate) fn index_in_background(&self) {
        self.index_queued.store(false, Ordering::Release);
        let (due, waiting_for) = {
            let mut state = self.index.lock().unwrap_or_else(|p| p.into_inner());
            self.catch_up(&mut state, self.next_offset());
            let durable = self.durable_offset();
            let writable =
                |c: &Option<PendingCheckpoint>| c.as_ref().is_some_and(|c| c.covers <= durable);
            let mut due = None;
            if writable(&state.checkpoint) {
                due = state.checkpoint.take();
            }
            if state.checkpoint_owed && state.checkpoint.is_none() {
                // Once per roll that owes one: O(keys), here rather than on whoever
                // else drained the roll. Appends go on meanwhile. Straight to a file:
                // no copy of the whole index in memory.
                let covers = state.tenants.next_offset();
                let path = self
                    .dir
                    .join(format!("tenants.{}.tmp", state.checkpoints_written));
                state.checkpoints_written += 1;
                match state.tenants.write_checkpoint(&path) {
                    Ok(file) => {
                        state.checkpoint = Some(PendingCheckpoint {
                            covers,
                            path,
                            file: Some(file),
                        })
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        tracing::warn!(topic = %self.topic, partition = self.id, error = %e, "could not write tenant index checkpoint");
                    }
                }
                state.checkpoint_owed = false;
                state.debt = CheckpointDebt::NONE;
                if writable(&state.checkpoint) {
                    due = state.checkpoint.take(); // supersedes an older one
                }
            }
            // Under the index lock, so a roll drained meanwhile is not missed.
            self.checkpoint_waiting.store(
                state.checkpoint.is_some() || state.checkpoint_owed,
                Ordering::Release,
            );
            (due, state.checkpoint.as_ref().map(|c| c.covers))
        };
        if let Some(checkpoint) = due {
            if let Err(e) = checkpoint.publish(&self.dir.join(TENANT_INDEX_FILE)) {
                tracing::warn!(topic = %self.topic, partition = self.id, error = %e, "could not write tenant index checkpoint");
            }
        }
        // A flush that made the waiting checkpoint writable during this round may have
        // seen no checkpoint waiting: another round then.
        if waiting_for.is_some_and(|covers| covers <= self.durable_offset()) {
            self.poke_indexer();
        }
    }

    /// Asks the indexer thread for a round: updates to apply, a checkpoint owed since a
    /// roll, or one a flush made writable.
    pub(crate) fn poke_indexer(&self) {
        if let Some(me) = self.me.get() {
            self.indexer.poke(me, &self.index_queued);
        }
    }

    /// Freezes `tenant`'s live keys at the watermark: the index is caught up to the log's
    /// end and copied under its lock, so the copy holds every update up to the watermark
    /// and none after it, while appends go on (see `extract.rs`). Costs time in
    /// proportion to the tenant's live keys: the server calls it off its event loop.
    /// An empty `tenant` freezes every tenant's (a topic-wide extraction's part for this
    /// partition): the whole index is persistent at the tenant level, so that is O(1) too.
    pub fn tenant_snapshot(&self, tenant: &[u8]) -> TenantSnapshot {
        // The watermark is where the index stands once caught up to the log's end as of
        // this call (it may be further: the indexer thread runs on); the segment list is
        // taken after the freeze, so it holds every offset up to the watermark.
        let target = self.next_offset();
        let state = self.index_up_to(target);
        let watermark = state.tenants.next_offset().checked_sub(1);
        // Sized up front (under the index lock: a million keys' offsets).
        let maps: Vec<&crate::key_map::KeyMap> = if tenant.is_empty() {
            state.tenants.all_keys().collect()
        } else {
            state
                .tenants
                .tenant(tenant)
                .map(|t| &t.keys)
                .into_iter()
                .collect()
        };
        let mut offsets = Vec::with_capacity(maps.iter().map(|k| k.len()).sum());
        for keys in maps {
            offsets.extend(keys.values());
        }
        let segments = self.segments();
        drop(state);
        TenantSnapshot::new(tenant.to_vec(), watermark, offsets, segments)
    }

    /// Every tenant with at least one record in the index (any order).
    pub fn tenant_names(&self) -> Vec<Vec<u8>> {
        self.index_up_to(self.next_offset()).tenants.names()
    }

    /// A tenant's latest event id and live key count.
    pub fn tenant_info(&self, tenant: &[u8]) -> Option<TenantInfo> {
        let state = self.index_up_to(self.next_offset());
        state.tenants.tenant(tenant).map(|t| TenantInfo {
            latest_offset: t.latest_offset,
            live_keys: t.keys.len() as u64,
            events: t.events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::indexer::Indexer;
    use tidelog_protocol::builder::{build_batch, ProducerStamp, Record};

    /// A partition whose indexer has no thread: its rounds run only when the test calls
    /// `index_in_background`.
    fn partition_without_indexer_thread(dir: &Path) -> Arc<Partition> {
        partition_of_segments_without_indexer_thread(dir, 64 << 10)
    }

    fn partition_of_segments_without_indexer_thread(
        dir: &Path,
        segment_bytes: u32,
    ) -> Arc<Partition> {
        let config = TopicConfig {
            partitions: 1,
            segment_bytes,
            index_interval_bytes: 512,
            batch_bytes_max: 64 << 10,
            ..TopicConfig::default()
        };
        let sync = SyncPolicy::default();
        let opened = crate::recovery::open_partition(
            dir,
            &config,
            crate::config::RecoveryPolicy::default(),
            false,
            &sync,
        )
        .expect("open");
        let services = Services {
            sync,
            watcher: WatcherSlot::default(),
            indexer: Arc::new(Indexer::default()),
            index_lag: crate::config::IndexLag::default(),
        };
        Partition::from_recovered(
            "t".into(),
            0,
            dir.into(),
            config,
            opened.recovered,
            &services,
        )
        .expect("partition")
        .into_arc()
    }

    fn keyed_batch(first_key: u64) -> Vec<u8> {
        let records: Vec<Record> = (first_key..first_key + 10)
            .map(|k| Record {
                tenant: Some(b"acme".to_vec()),
                key: Some(format!("key-{}", k % 300).into_bytes()),
                value: Some(vec![7; 500]),
                ..Record::default()
            })
            .collect();
        build_batch(&records, ProducerStamp::default())
    }

    /// Names of the partition directory's `.tmp` files, sorted.
    fn temp_files(p: &Partition) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(p.dir())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_checkpoint_still_waiting_at_close_leaves_no_file_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_without_indexer_thread(dir.path());
        let mut k = 0;
        while p.segments().len() < 2 {
            p.append(&keyed_batch(k)).expect("append");
            k += 10;
        }
        p.index_in_background();
        assert_eq!(
            temp_files(&p),
            ["tenants.0.tmp"],
            "written, not durable yet"
        );
        p.close().expect("close");
        assert_eq!(temp_files(&p), Vec::<String>::new());
        assert_eq!(checkpoint_covers(&p), Some(p.next_offset()), "close's own");
    }

    fn checkpoint_covers(p: &Partition) -> Option<u64> {
        std::fs::read(p.dir().join(TENANT_INDEX_FILE))
            .ok()
            .and_then(|b| TenantIndex::decode(&b).ok())
            .map(|i| i.next_offset())
    }

    #[test]
    fn the_index_stops_only_between_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_without_indexer_thread(dir.path());
        // A tenant record, then one without a tenant (it queues no update).
        let batch = build_batch(
            &[
                Record {
                    tenant: Some(b"acme".to_vec()),
                    key: Some(b"k".to_vec()),
                    value: Some(b"v".to_vec()),
                    ..Record::default()
                },
                Record {
                    value: Some(b"plain".to_vec()),
                    ..Record::default()
                },
            ],
            ProducerStamp::default(),
        );
        p.append(&batch).expect("append");
        // A caller whose target was read before the append drains its update: the index
        // must still cover the whole batch, not stop after the tenant record (a checkpoint
        // there would make recovery apply the batch's first record twice).
        let state = p.index_up_to(0);
        assert_eq!(state.tenants.next_offset(), 2);
    }

    #[test]
    fn an_extraction_that_drains_a_roll_leaves_the_checkpoint_to_the_indexer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_without_indexer_thread(dir.path());
        let mut k = 0;
        while p.segments().len() < 3 {
            p.append(&keyed_batch(k)).expect("append");
            k += 10;
        }
        let roll = p.segments().last().expect("segments").base_offset();
        // The extraction catches the index up past the rolls: the checkpoint they call for
        // is owed, not encoded on this (the event loop's) thread.
        let snapshot = p.tenant_snapshot(b"acme");
        assert_eq!(snapshot.watermark, Some(p.next_offset() - 1));
        {
            let state = p.index.lock().expect("index");
            assert!(state.checkpoint_owed && state.checkpoint.is_none());
        }
        // The indexer's round writes it as the index stands, to a temporary file, and
        // puts it in place once the log is durable that far.
        p.index_in_background();
        assert_eq!(checkpoint_covers(&p), None, "not durable yet");
        assert_eq!(temp_files(&p), ["tenants.0.tmp"], "written, waiting");
        p.flush().expect("flush");
        p.index_in_background();
        assert_eq!(temp_files(&p), Vec::<String>::new(), "renamed into place");
        let covers = checkpoint_covers(&p).expect("checkpoint written");
        assert!(
            covers >= roll && covers <= p.next_offset(),
            "{covers} vs roll {roll}"
        );
        assert!(!p.index.lock().expect("index").checkpoint_owed);
    }

    #[test]
    fn the_appender_applies_the_queue_itself_every_round() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_of_segments_without_indexer_thread(dir.path(), 16 << 20);
        append_keys(&p, 0..(INDEX_APPLY_AT as u64 * 3 / 2), 8, 500);
        // No one caught the index up (no indexer thread, no reader): the appends did, the
        // last time the queue passed a round's worth.
        let queued = p.pending.lock().expect("pending").len();
        assert!(queued < INDEX_APPLY_AT, "{queued} still queued");
        let state = p.index.lock().expect("index");
        let applied = state.tenants.next_offset();
        assert_eq!(applied + queued as u64, p.next_offset());
        assert_eq!(
            state.tenants.tenant(b"acme").map(|t| t.keys.len() as u64),
            Some(applied)
        );
    }

    /// Appends one record of `acme` per key number, `per_batch` to a batch.
    fn append_keys(
        p: &Partition,
        keys: impl Iterator<Item = u64>,
        value_len: usize,
        per_batch: usize,
    ) {
        let records: Vec<Record> = keys
            .map(|k| Record {
                tenant: Some(b"acme".to_vec()),
                key: Some(format!("key-{k}").into_bytes()),
                value: Some(vec![1; value_len]),
                ..Record::default()
            })
            .collect();
        for batch in records.chunks(per_batch) {
            p.append(&build_batch(batch, ProducerStamp::default()))
                .expect("append");
        }
    }

    /// Whether the rolls applied so far owe an index checkpoint.
    fn owed(p: &Partition) -> bool {
        p.index_up_to(p.next_offset()).checkpoint_owed
    }

    /// The indexer's round once the log is durable: the owed checkpoint is encoded and
    /// written.
    fn write_checkpoint(p: &Partition) {
        p.flush().expect("flush");
        p.index_in_background();
        assert_eq!(checkpoint_covers(p), Some(p.next_offset()));
    }

    #[test]
    fn a_large_index_is_checkpointed_once_the_records_since_pay_for_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_of_segments_without_indexer_thread(dir.path(), 1 << 20);
        let keys = CHECKPOINT_SMALL_KEYS + 4464;
        // The first boundary after an open owes a checkpoint whatever the index holds.
        append_keys(&p, 0..keys, 8, 1000);
        assert!(p.segments().len() > 1);
        assert!(owed(&p));
        write_checkpoint(&p);
        assert!(!owed(&p));
        let rolls = |p: &Partition| p.segments().len();
        // Updates of those keys across two more boundaries: far fewer records than
        // CHECKPOINT_RECORDS_PER_KEY per key, so no checkpoint is owed yet...
        let mut k = 0..;
        let start = rolls(&p);
        while rolls(&p) < start + 2 {
            append_keys(&p, k.by_ref().take(1000).map(|k| k % keys), 8, 1000);
        }
        assert!(
            !owed(&p),
            "a checkpoint of {keys} keys after {} records",
            k.start
        );
        // ...and one is, at the first boundary once there are enough.
        while k.start < CHECKPOINT_RECORDS_PER_KEY * keys {
            append_keys(&p, k.by_ref().take(1000).map(|k| k % keys), 8, 1000);
        }
        let start = rolls(&p);
        while rolls(&p) == start {
            append_keys(&p, k.by_ref().take(100).map(|k| k % keys), 8, 100);
        }
        assert!(owed(&p), "no checkpoint owed after {} records", k.start);
        assert!(rolls(&p) < start + CHECKPOINT_ROLLS_MAX as usize);
        write_checkpoint(&p);
        // Few, large records: CHECKPOINT_ROLLS_MAX boundaries owe one whatever the records.
        let start = rolls(&p);
        while rolls(&p) < start + CHECKPOINT_ROLLS_MAX as usize - 1 {
            append_keys(&p, k.by_ref().take(8).map(|k| k % keys), 4000, 8);
        }
        assert!(!owed(&p));
        while rolls(&p) < start + CHECKPOINT_ROLLS_MAX as usize {
            append_keys(&p, k.by_ref().take(8).map(|k| k % keys), 4000, 8);
        }
        assert!(owed(&p));
    }

    /// The appender's notes (one buffer across a group of batches, as the event loop
    /// keeps it) give the index a replay of the log gives: batches mixing tenants (each
    /// record's own tenant found in its batch, in streaks), records without a tenant, tombstones, and
    /// a batch refused in the middle of the group.
    #[test]
    fn the_appenders_notes_index_what_a_replay_of_the_log_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_without_indexer_thread(dir.path());
        let record = |tenant: Option<&str>, key: u64, live: bool| Record {
            tenant: tenant.map(|t| t.as_bytes().to_vec()),
            key: tenant.map(|_| format!("k{key}").into_bytes()),
            value: live.then(|| b"v".to_vec()),
            ..Record::default()
        };
        // Two of one length: a streak ends where the bytes differ.
        let tenants = [Some("acme"), Some("acne"), None, Some("initech-long-name")];
        // Streaks of 1 to 3 records of one tenant (each record carrying its own copy).
        let mixed = |seed: u64| -> Vec<Record> {
            let streak = 1 + seed as usize % 3;
            (0..40)
                .map(|i| {
                    record(
                        tenants[(i / streak * 7 + seed as usize) % 4],
                        (i as u64 * 13 + seed) % 17,
                        i % 5 != 0,
                    )
                })
                .collect()
        };
        let uniform = |seed: u64| -> Vec<Record> {
            (0..30)
                .map(|i| record(Some("acme"), (i + seed) % 23, i % 7 != 3))
                .collect()
        };
        let mut corrupt = build_batch(&uniform(9), ProducerStamp::default());
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xFF;
        let mut notes = IndexNotes::default();
        for round in 0..3u64 {
            notes.clear();
            let bytes = [
                build_batch(&mixed(round), ProducerStamp::default()),
                build_batch(&uniform(round), ProducerStamp::default()),
                corrupt.clone(),
                build_batch(&mixed(round + 10), ProducerStamp::default()),
            ];
            let mut runs: Vec<Vec<CheckedBatch<'_>>> = vec![Vec::new(), Vec::new()];
            for (i, b) in bytes.iter().enumerate() {
                match p.check(b, &mut notes) {
                    Ok(c) => runs[i / 2].push(c),
                    Err(_) => assert_eq!(i, 2, "only the corrupt batch is refused"),
                }
            }
            let runs: Vec<&[CheckedBatch<'_>]> = runs.iter().map(Vec::as_slice).collect();
            for outcome in p.append_checked(&runs, &notes) {
                assert!(outcome.error.is_none());
            }
        }
        let state = p.index_up_to(p.next_offset());
        let mut replayed = TenantIndex::default();
        for seg in p.segments().iter() {
            let mut pos = 0;
            while let Some(view) = seg
                .bytes(pos, seg.len())
                .and_then(|b| batch::view_stored(b).ok())
            {
                replayed.apply(&view);
                pos += view.header.batch_len;
            }
        }
        assert_eq!(state.tenants.next_offset(), p.next_offset());
        assert_eq!(replayed.next_offset(), p.next_offset());
        let mut names = replayed.names();
        names.sort();
        assert_eq!(names.len(), 3);
        for name in names {
            let (got, want) = (state.tenants.tenant(&name), replayed.tenant(&name));
            let (got, want) = (got.expect("tenant indexed"), want.expect("tenant"));
            assert!(!want.keys.is_empty());
            assert_eq!(got.keys, want.keys, "{}", String::from_utf8_lossy(&name));
            assert_eq!(
                (got.events, got.latest_offset),
                (want.events, want.latest_offset)
            );
        }
    }
}
