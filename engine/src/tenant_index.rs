//! The tenant/key index of a partition: for every tenant, the offset of the latest record
//! of each live key (a tombstone removes the key), and the tenant's latest event.
//!
//! It is what makes a `state` extraction exact and cheap. The index follows the log in
//! rounds, mostly the appending thread's (see `indexer.rs`), and reflects exactly the
//! offsets below its `next_offset`: under the partition's index lock, an extraction catches it up to the
//! log's end, takes W = `next_offset - 1` and copies the tenant's live offsets — nothing
//! can interleave, since only the holder of that lock changes the index, and the records
//! at those offsets never change. Appends only try that lock (when it is held they
//! leave their round to the indexer thread), so the copy (O(the tenant's keys)) never
//! stalls them below the lag bound. Each tenant's keys are a [`KeyMap`] (80 bits of each
//! key's 128-bit hash, in flat tables).
//!
//! Persistence: a checkpoint (`tenants.snapshot`) of the whole index, written by the
//! indexer thread to a temporary file once the index has passed a segment boundary that
//! owes one (whoever drained the boundary; when a boundary owes one: `CheckpointDebt` in
//! `partition.rs`) and put in place once the log is durable as far as it covers (so it
//! never covers data that is not durable), and at clean shutdown. On open the checkpoint is loaded and the log after
//! it replayed: a bounded part of the log, never the whole of it.
//!
//! ```text
//! tenants.snapshot:
//! | 0..4 magic "TLT2" | 4..8 crc32 of bytes 8.. | 8..16 next_offset u64 LE (covers offsets below it)
//! | 16..20 tenants u32 LE | then per tenant:
//! |   tenant_len u8, tenant bytes, latest_offset u64 LE, events u64 LE, keys u32 LE,
//! |   keys × (key_hash u128 LE (XXH3-128 of the key: the bits a key map keeps, bits 0..48
//! |          written as 0 and ignored on reading), offset u64 LE)
//! ```
//! (A checkpoint of the first format, magic "TLTI", is not read: the index is rebuilt by
//! replaying the log once.)

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Tenants by name, with a fast, per-process-seeded hasher (looked up once per batch).
type TenantMap = std::collections::HashMap<Arc<[u8]>, TenantKeys, foldhash::fast::RandomState>;
use tidelog_protocol::batch::BatchView;

use crate::key_map::{key_hash, Bases, Change, KeyChange, KeyMap};
use crate::snapshot_file;

/// A tenant record appended but not yet in the index: what the appender noted of it in
/// its batch's validation walk (the key is hashed there, while its bytes are in the CPU's
/// cache; hashing on the indexer instead, from the log, cost more CPU in all: the indexer
/// reads bytes no longer in its caches — BENCHMARKS.md, ninth session). Queued as it
/// was noted, copied by the batch, with the batch's base offset and tenant in its
/// [`Run`], and applied from there in rounds: no conversion per record while
/// appending.
///
/// 16 bytes, since every keyed record's note is written, copied and read once: the
/// hash's high 64 bits; then the hash's bits 48..64 in place (the rest of the hash is
/// not kept: [`KeyId`](crate::key_map::KeyId)), the flags in bits 32..40 and the
/// record's offset within its batch in bits 0..32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Note {
    hi: u64,
    lo: u64,
}

impl Note {
    pub const HAS_KEY: u8 = 1;
    /// Clear for a tombstone.
    pub const LIVE: u8 = 2;

    /// The note of a record at `offset_delta` in its batch, whose key hashes to
    /// `key_hash` ([`key_hash`]; meaningless without [`Note::HAS_KEY`]).
    #[inline(always)]
    pub fn new(key_hash: u128, offset_delta: u32, flags: u8) -> Note {
        Note {
            hi: (key_hash >> 64) as u64,
            lo: (key_hash as u64 & crate::key_map::TAG_BITS)
                | u64::from(flags) << 32
                | u64::from(offset_delta),
        }
    }

    /// The record's offset within its batch.
    #[inline(always)]
    pub fn offset_delta(self) -> u32 {
        self.lo as u32
    }

    /// `HAS_KEY | LIVE` where [`Note::new`] puts them: tested in place, no shift.
    const FLAGS_IN_PLACE: u64 = ((Note::HAS_KEY | Note::LIVE) as u64) << 32;
    const HAS_KEY_IN_PLACE: u64 = (Note::HAS_KEY as u64) << 32;
}

const _: () = assert!(std::mem::size_of::<Note>() == 16);

/// A note's offset is its delta: [`KeyMap::apply_based`] adds its run's base.
impl Change for Note {
    #[inline(always)]
    fn key(&self) -> u128 {
        u128::from(self.hi) << 64 | u128::from(self.lo & crate::key_map::TAG_BITS)
    }
    #[inline(always)]
    fn offset(&self) -> u64 {
        u64::from(self.offset_delta())
    }
    #[inline(always)]
    fn sets(&self) -> bool {
        self.lo & Note::FLAGS_IN_PLACE == Note::FLAGS_IN_PLACE
    }
    #[inline(always)]
    fn removes(&self) -> bool {
        self.lo & Note::FLAGS_IN_PLACE == Note::HAS_KEY_IN_PLACE
    }
}

/// Consecutive queued notes of one tenant from one batch: the notes from the previous
/// run's `end` to this one's, at offsets `base_offset + offset_delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    base_offset: u64,
    /// An index into [`PendingUpdates`]' names.
    tenant: u32,
    end: usize,
}

/// The base offsets of a streak of runs, for the notes from `from` (an index into the
/// queue) to the last run's end. The current run's base and end are kept at hand: asking
/// is a compare for all but a run's first note.
struct RunBases<'a> {
    runs: &'a [Run],
    from: usize,
    /// The run of the last note asked about, its base, and its end relative to `from`.
    next: usize,
    base: u64,
    end: usize,
}

impl<'a> RunBases<'a> {
    fn new(runs: &'a [Run], from: usize) -> Self {
        RunBases {
            runs,
            from,
            next: 0,
            base: runs[0].base_offset,
            end: runs[0].end - from,
        }
    }

    #[cold]
    #[inline(never)]
    fn step_to(&mut self, i: usize) {
        while self.from + i >= self.runs[self.next].end {
            self.next += 1;
        }
        self.base = self.runs[self.next].base_offset;
        self.end = self.runs[self.next].end - self.from;
    }
}

impl Bases for RunBases<'_> {
    #[inline(always)]
    fn at(&mut self, i: usize) -> u64 {
        if i >= self.end {
            self.step_to(i);
        }
        self.base
    }

    fn most(&self) -> u64 {
        self.runs.last().map_or(0, |r| r.base_offset)
    }
}

/// Notes appended but not yet applied, in offset order, with the segment boundaries
/// among them (each calls for an index checkpoint). Filled by appenders under the
/// partition's writer lock, drained by whoever catches the index up.
#[derive(Debug, Default)]
pub struct PendingUpdates {
    notes: Vec<Note>,
    runs: Vec<Run>,
    names: Vec<Arc<[u8]>>,
    ids: std::collections::HashMap<Arc<[u8]>, u32, foldhash::fast::RandomState>,
    /// Base offsets of segments rolled to, ascending.
    pub rolls: Vec<u64>,
    /// The offset after the last batch whose updates are queued (0: none): every offset
    /// below it is reflected once the queue is applied.
    pub end: u64,
}

impl PendingUpdates {
    /// The id of `tenant` in this buffer (a batch's records mostly share one).
    pub fn intern(&mut self, tenant: &[u8]) -> u32 {
        if let Some(last) = self.names.last() {
            if **last == *tenant {
                return self.names.len() as u32 - 1;
            }
        }
        if let Some(&id) = self.ids.get(tenant) {
            return id;
        }
        let name: Arc<[u8]> = Arc::from(tenant);
        let id = self.names.len() as u32;
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    /// Queues `notes`, records of `tenant` (an [`PendingUpdates::intern`] id) in the batch
    /// stamped from `base_offset`, after everything queued so far (offset order).
    pub fn push(&mut self, tenant: u32, base_offset: u64, notes: &[Note]) {
        if notes.is_empty() {
            return;
        }
        self.notes.extend_from_slice(notes);
        self.runs.push(Run {
            base_offset,
            tenant,
            end: self.notes.len(),
        });
    }

    /// Notes queued (one per tenant record).
    pub fn len(&self) -> usize {
        self.notes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.notes.is_empty() && self.rolls.is_empty()
    }

    pub fn clear(&mut self) {
        self.notes.clear();
        self.runs.clear();
        self.names.clear();
        self.ids.clear();
        self.rolls.clear();
        self.end = 0;
    }
}

/// One tenant's part of the index.
#[derive(Debug, Clone, Default)]
pub struct TenantKeys {
    /// Key (hash) → offset of its latest record, live keys only.
    pub keys: KeyMap,
    /// Offset of the tenant's most recent event (any record, keyed or not).
    pub latest_offset: Option<u64>,
    /// Records of this tenant seen.
    pub events: u64,
}

#[derive(Debug, Clone, Default)]
pub struct TenantIndex {
    tenants: TenantMap,
    /// Offsets below this are reflected in the index.
    next_offset: u64,
}

const MAGIC: &[u8; 4] = b"TLT2";
/// A key's checkpoint entry: key hash u128 LE, offset u64 LE.
const KEY_ENTRY: usize = 24;
/// Key changes of a replayed batch handed to [`KeyMap::apply`] at once, so that its
/// sliding prefetch has changes ahead to fetch (queued notes go to it as they lie in the
/// queue; a replay decodes them from the log into this chunk on the stack).
const PREFETCH_CHUNK: usize = 256;

impl TenantIndex {
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn tenant(&self, tenant: &[u8]) -> Option<&TenantKeys> {
        self.tenants.get(tenant)
    }

    /// Every tenant's keys (any order).
    pub fn all_keys(&self) -> impl Iterator<Item = &KeyMap> + '_ {
        self.tenants.values().map(|t| &t.keys)
    }

    pub fn names(&self) -> Vec<Vec<u8>> {
        self.tenants.keys().map(|t| t.to_vec()).collect()
    }

    /// Live keys over all tenants.
    pub fn live_keys(&self) -> u64 {
        self.tenants.values().map(|t| t.keys.len() as u64).sum()
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// Applies pending updates (in offset order).
    pub fn apply_pending(&mut self, pending: &PendingUpdates) {
        let mut runs = &pending.runs[..];
        let mut from = 0;
        while let Some(first) = runs.first() {
            let Some(name) = pending.names.get(first.tenant as usize) else {
                break;
            };
            // One tenant lookup per streak of its runs (every batch, while one tenant
            // writes), and one pass over the streak's notes, which lie together in the
            // queue: the key map's prefetch window runs across its batches, however small.
            let streak = runs
                .iter()
                .position(|r| r.tenant != first.tenant)
                .unwrap_or(runs.len());
            let (these, rest) = runs.split_at(streak);
            runs = rest;
            let last_run = these[these.len() - 1];
            let notes = &pending.notes[from..last_run.end];
            let entry = Self::entry(&mut self.tenants, name);
            // In offset order: the streak's last note is the tenant's latest event, and
            // each note is one of its records.
            let last = last_run.base_offset + u64::from(notes[notes.len() - 1].offset_delta());
            entry.latest_offset = Some(last);
            entry.events += notes.len() as u64;
            // As queued (a record without a key neither sets nor removes one).
            entry.keys.apply_based(RunBases::new(these, from), notes);
            self.next_offset = self.next_offset.max(last + 1);
            from = last_run.end;
        }
        // Every offset below a queued roll was queued before it (batches without tenant
        // records leave no update).
        if let Some(&boundary) = pending.rolls.last() {
            self.next_offset = self.next_offset.max(boundary);
        }
    }

    /// Whether applying `pending` grows no large key table (see
    /// [`KeyMap::takes_cheaply`]), counting every note of a tenant as a new key: then it
    /// costs about a cache miss per note, and an appending thread may do it.
    pub fn applies_cheaply(&self, pending: &PendingUpdates) -> bool {
        let mut notes = vec![0usize; pending.names.len()];
        let mut from = 0;
        for run in &pending.runs {
            if let Some(n) = notes.get_mut(run.tenant as usize) {
                *n += run.end - from;
            }
            from = run.end;
        }
        pending.names.iter().zip(notes).all(|(name, n)| {
            n == 0
                || match self.tenants.get(&**name) {
                    Some(t) => t.keys.takes_cheaply(n),
                    None => n <= crate::key_map::CHEAP_GROWTH_KEYS,
                }
        })
    }

    /// Applies a stored (stamped) batch (recovery's replay). Batches must be applied in
    /// offset order.
    pub fn apply(&mut self, view: &BatchView<'_>) {
        // The hot path: a tenant-uniform batch looks its tenant up once.
        if let Some(tenant) = view.uniform_tenant() {
            let entry = Self::entry(&mut self.tenants, tenant);
            Self::apply_prefetched(
                entry,
                view.keyed_records()
                    .map(|r| (r.offset, r.key.map(key_hash), r.live)),
            );
        } else {
            for record in view.keyed_records() {
                if let Some(tenant) = record.tenant {
                    let entry = Self::entry(&mut self.tenants, tenant);
                    let update = (record.offset, record.key.map(key_hash), record.live);
                    Self::apply_prefetched(entry, std::iter::once(update));
                }
            }
        }
        self.next_offset = self.next_offset.max(view.header.next_offset());
    }

    fn entry<'m>(tenants: &'m mut TenantMap, tenant: &[u8]) -> &'m mut TenantKeys {
        if !tenants.contains_key(tenant) {
            tenants.insert(Arc::from(tenant), TenantKeys::default());
        }
        tenants.get_mut(tenant).expect("present")
    }

    /// Applies one tenant's updates decoded from the log (offset, key hash, live), in
    /// offset order (recovery's replay); the key changes go to the key map a chunk at a
    /// time, so their cache misses overlap ([`KeyMap::apply`]).
    fn apply_prefetched(
        entry: &mut TenantKeys,
        updates: impl Iterator<Item = (u64, Option<u128>, bool)>,
    ) {
        let mut chunk = [KeyChange::default(); PREFETCH_CHUNK];
        let mut n = 0;
        for (offset, key, live) in updates {
            entry.latest_offset = Some(offset);
            entry.events += 1;
            let Some(key) = key else { continue };
            chunk[n] = KeyChange { key, offset, live };
            n += 1;
            if n == PREFETCH_CHUNK {
                entry.keys.apply(&chunk);
                n = 0;
            }
        }
        entry.keys.apply(&chunk[..n]);
    }

    /// Marks offsets below `next` as reflected (for batches without tenants, or after a
    /// replay that ended there).
    pub fn advance_to(&mut self, next: u64) {
        self.next_offset = self.next_offset.max(next);
    }

    /// The checkpoint's bytes, built in memory (exactly sized up front): for tests,
    /// benchmarks and tools; the engine itself streams them ([`TenantIndex::write_checkpoint`]).
    pub fn encode(&self) -> Vec<u8> {
        let size = 12
            + self
                .tenants
                .iter()
                .map(|(name, t)| 21 + name.len() + KEY_ENTRY * t.keys.len())
                .sum::<usize>();
        let mut out = snapshot_file::begin(MAGIC, size);
        self.write_body(&mut out)
            .expect("writing to a Vec does not fail");
        snapshot_file::seal(&mut out);
        out
    }

    /// The checkpoint written to `path` (created or truncated; not synced), the same bytes
    /// as [`TenantIndex::encode`] without ever holding them all: 24 bytes per live key
    /// would otherwise be allocated, touched and freed at every checkpoint. Runs under the
    /// index lock, once per roll that owes a checkpoint, one pass over each table's slots.
    pub fn write_checkpoint(&self, path: &Path) -> std::io::Result<File> {
        let mut out = snapshot_file::FileSnapshot::create(path, MAGIC)?;
        self.write_body(&mut out)?;
        out.finish()
    }

    /// Everything after the snapshot framing's magic and CRC.
    fn write_body(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(&self.next_offset.to_le_bytes())?;
        out.write_all(&(self.tenants.len() as u32).to_le_bytes())?;
        for (tenant, t) in &self.tenants {
            out.write_all(&[tenant.len() as u8])?;
            out.write_all(tenant)?;
            out.write_all(&t.latest_offset.unwrap_or(u64::MAX).to_le_bytes())?;
            out.write_all(&t.events.to_le_bytes())?;
            out.write_all(&(t.keys.len() as u32).to_le_bytes())?;
            t.keys.write_entries(out)?;
        }
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<TenantIndex, String> {
        let mut r = snapshot_file::open(bytes, MAGIC)?;
        let next_offset = r.u64()?;
        let count = r.u32()?;
        let mut tenants = TenantMap::default();
        for _ in 0..count {
            let len = usize::from(r.u8()?);
            let tenant: Arc<[u8]> = Arc::from(r.take(len)?);
            let latest = r.u64()?;
            let events = r.u64()?;
            let n = r.u32()? as usize;
            let entries = r.take(n.checked_mul(KEY_ENTRY).ok_or("key count")?)?;
            // Built at its final size, not key by key in list order (see `from_entries`).
            let keys = KeyMap::from_entries(n, |i| {
                let entry = &entries[i * KEY_ENTRY..(i + 1) * KEY_ENTRY];
                let (key, offset) = entry.split_at(16);
                (
                    u128::from_le_bytes(key.try_into().expect("16 bytes")),
                    u64::from_le_bytes(offset.try_into().expect("8 bytes")),
                )
            });
            tenants.insert(
                tenant,
                TenantKeys {
                    keys,
                    latest_offset: (latest != u64::MAX).then_some(latest),
                    events,
                },
            );
        }
        if !r.buf.is_empty() {
            return Err("trailing bytes".into());
        }
        Ok(TenantIndex {
            tenants,
            next_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidelog_protocol::batch::{stamp_base_offset, validate};
    use tidelog_protocol::builder::{build_batch, ProducerStamp, Record};

    fn rec(tenant: &str, key: &str, value: Option<&str>) -> Record {
        Record {
            tenant: Some(tenant.as_bytes().to_vec()),
            key: Some(key.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            ..Record::default()
        }
    }

    #[test]
    fn tracks_latest_live_keys_and_round_trips() {
        let mut index = TenantIndex::default();
        let mut b = build_batch(
            &[
                rec("a", "k1", Some("1")),
                rec("a", "k2", Some("2")),
                rec("b", "k1", Some("x")),
                rec("a", "k1", Some("3")),
            ],
            ProducerStamp::default(),
        );
        stamp_base_offset(&mut b, 10);
        index.apply(&validate(&b).expect("valid"));
        let mut b2 = build_batch(&[rec("a", "k2", None)], ProducerStamp::default());
        stamp_base_offset(&mut b2, 14);
        index.apply(&validate(&b2).expect("valid"));
        let a = index.tenant(b"a").expect("tenant a");
        assert_eq!(a.keys.get(key_hash(b"k1")), Some(13));
        assert_eq!(a.keys.get(key_hash(b"k2")), None, "tombstoned");
        assert_eq!((a.latest_offset, a.events), (Some(14), 4));
        assert_eq!(index.next_offset(), 15);
        let back = TenantIndex::decode(&index.encode()).expect("decodes");
        assert_eq!(back.next_offset(), 15);
        assert_eq!(back.tenant(b"a").expect("a").keys, a.keys);
        assert_eq!(
            back.tenant(b"b").expect("b").keys.get(key_hash(b"k1")),
            Some(12)
        );
        let mut bad = index.encode();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(TenantIndex::decode(&bad).is_err());
    }

    /// The checkpoint streamed to a file is the one built in memory, byte for byte: across
    /// the key writer's blocks and the file writer's 1 MiB chunks, with several tenants.
    #[test]
    fn a_checkpoint_streamed_to_its_file_is_the_encoded_one() {
        let mut index = TenantIndex::default();
        let big: Vec<KeyChange> = (0..50_000u64)
            .map(|k| KeyChange {
                key: key_hash(format!("file-{k:08}").as_bytes()),
                offset: k,
                live: true,
            })
            .collect();
        TenantIndex::entry(&mut index.tenants, b"big")
            .keys
            .apply(&big);
        let mut b = build_batch(
            &[rec("small", "k1", Some("1")), rec("small", "k2", Some("2"))],
            ProducerStamp::default(),
        );
        stamp_base_offset(&mut b, 50_000);
        index.apply(&validate(&b).expect("valid"));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tenants.0.tmp");
        drop(index.write_checkpoint(&path).expect("written"));
        let written = std::fs::read(&path).expect("read");
        assert!(written.len() > 1 << 20, "{} bytes", written.len());
        assert!(written == index.encode(), "same bytes");
        let back = TenantIndex::decode(&written).expect("decodes");
        assert_eq!(back.live_keys(), 50_002);
    }

    /// Checkpoints written before the key map kept 80 bits carry whole 128-bit hashes:
    /// they read as the same keys, and are written back with bits 0..48 zeroed.
    #[test]
    fn a_checkpoint_with_whole_hashes_reads_the_same_keys() {
        let keys = [(b"k1", 3u64), (b"k2", 7)];
        let mut old = snapshot_file::begin(MAGIC, 64);
        old.extend_from_slice(&8u64.to_le_bytes()); // next_offset
        old.extend_from_slice(&1u32.to_le_bytes()); // tenants
        old.push(1);
        old.push(b'a');
        old.extend_from_slice(&7u64.to_le_bytes()); // latest_offset
        old.extend_from_slice(&2u64.to_le_bytes()); // events
        old.extend_from_slice(&2u32.to_le_bytes()); // keys
        for (key, offset) in keys {
            old.extend_from_slice(&key_hash(key).to_le_bytes());
            old.extend_from_slice(&offset.to_le_bytes());
        }
        snapshot_file::seal(&mut old);
        let index = TenantIndex::decode(&old).expect("decodes");
        let a = index.tenant(b"a").expect("tenant a");
        for (key, offset) in keys {
            assert_eq!(a.keys.get(key_hash(key)), Some(offset));
        }
        assert_eq!(a.keys.len(), 2);
        let again = index.encode();
        assert_eq!(again.len(), old.len());
        let entries = &again[again.len() - 2 * KEY_ENTRY..];
        for entry in entries.chunks(KEY_ENTRY) {
            assert_eq!(&entry[..6], &[0; 6], "bits 0..48 of the hash");
        }
        let back = TenantIndex::decode(&again).expect("decodes");
        assert_eq!(back.tenant(b"a").expect("tenant a").keys, a.keys);
    }

    #[test]
    fn a_tenants_batches_apply_as_one_streak_each_at_its_own_base() {
        // Three batches of one tenant (one streak of three runs, bases 10, 20, 30), a
        // fourth of another tenant, then the first again.
        let key = |k: &str| key_hash(k.as_bytes());
        let note = |k: &str, delta: u32, live: bool| {
            Note::new(
                key(k),
                delta,
                Note::HAS_KEY | if live { Note::LIVE } else { 0 },
            )
        };
        let mut pending = PendingUpdates::default();
        let a = pending.intern(b"a");
        pending.push(
            a,
            10,
            &[
                note("k0", 0, true),
                note("k1", 1, true),
                note("k2", 2, true),
            ],
        );
        pending.push(a, 20, &[note("k1", 0, true), note("k3", 3, true)]);
        pending.push(a, 30, &[note("k2", 1, false), note("k4", 4, true)]);
        let b = pending.intern(b"b");
        pending.push(b, 40, &[note("k0", 0, true)]);
        pending.push(a, 41, &[note("k5", 2, true)]);
        let mut index = TenantIndex::default();
        index.apply_pending(&pending);
        let t = index.tenant(b"a").expect("a");
        let got: Vec<Option<u64>> = ["k0", "k1", "k2", "k3", "k4", "k5"]
            .iter()
            .map(|k| t.keys.get(key(k)))
            .collect();
        assert_eq!(
            got,
            [Some(10), Some(20), None, Some(23), Some(34), Some(43)]
        );
        assert_eq!((t.events, t.latest_offset), (8, Some(43)));
        let t = index.tenant(b"b").expect("b");
        assert_eq!(t.keys.get(key("k0")), Some(40));
        assert_eq!(index.next_offset(), 44);
    }

    #[test]
    fn a_queue_applies_cheaply_unless_it_doubles_a_large_table() {
        use crate::key_map::CHEAP_GROWTH_KEYS;
        let note = |k: usize| {
            Note::new(
                key_hash(format!("key-{k}").as_bytes()),
                0,
                Note::HAS_KEY | Note::LIVE,
            )
        };
        // `n` new keys of `tenant` from key number `first`, in batches of 1000.
        let push = |pending: &mut PendingUpdates, tenant: &[u8], first: usize, n: usize| {
            let id = pending.intern(tenant);
            let notes: Vec<Note> = (first..first + n).map(note).collect();
            for chunk in notes.chunks(1000) {
                pending.push(id, 0, chunk);
            }
        };
        // A tenant of 60 000 keys: a table of 128 Ki slots, room for 65 536 (half full).
        let mut index = TenantIndex::default();
        let mut pending = PendingUpdates::default();
        push(&mut pending, b"acme", 0, 60_000);
        index.apply_pending(&pending);
        let cheap = |build: &dyn Fn(&mut PendingUpdates)| {
            let mut pending = PendingUpdates::default();
            build(&mut pending);
            index.applies_cheaply(&pending)
        };
        assert!(
            cheap(&|p| push(p, b"acme", 60_000, 4_096)),
            "fits the table"
        );
        assert!(!cheap(&|p| push(p, b"acme", 60_000, 40_000)), "doubles it");
        assert!(cheap(&|p| push(p, b"new", 0, 8_192)), "a small new table");
        assert!(!cheap(&|p| push(p, b"new", 0, CHEAP_GROWTH_KEYS + 1)));
        // A tenant's streaks count together: two of 3 000 (each would fit alone).
        assert!(cheap(&|p| push(p, b"acme", 60_000, 3_000)));
        assert!(!cheap(&|p| {
            push(p, b"acme", 60_000, 3_000);
            push(p, b"other", 0, 10);
            push(p, b"acme", 63_000, 3_000);
        }));
        assert!(cheap(&|_| {}), "nothing queued");
    }

    #[test]
    fn pending_updates_apply_in_order() {
        let mut pending = PendingUpdates::default();
        let key = |k: &str| key_hash(k.as_bytes());
        // Batches of 3 records from offset 0, 3, 6, 9: tenant b at offsets 0, 3, 6, 9.
        for base in (0..10u64).step_by(3) {
            for offset in base..(base + 3).min(10) {
                let tenant = pending.intern(if offset % 3 == 0 { b"b" } else { b"a" });
                let note = Note::new(
                    key(&format!("k{}", offset % 4)),
                    (offset - base) as u32,
                    Note::HAS_KEY | if offset == 8 { 0 } else { Note::LIVE },
                );
                pending.push(tenant, base, &[note]);
            }
        }
        pending.rolls.push(5);
        let mut index = TenantIndex::default();
        index.apply_pending(&pending);
        let a = index.tenant(b"a").expect("a");
        // After: a's k0 tombstoned at 8; k1 → 5, k2 → 2, k3 → 7.
        assert_eq!(a.keys.get(key("k0")), None);
        assert_eq!(a.keys.get(key("k1")), Some(5));
        assert_eq!(a.keys.get(key("k3")), Some(7));
        let b = index.tenant(b"b").expect("b");
        assert_eq!((b.events, b.latest_offset), (4, Some(9)));
        assert_eq!(index.next_offset(), 10);
    }
}
