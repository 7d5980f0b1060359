//! One tenant's live keys: key → offset of its latest record, built for the indexer's
//! update rate with keys updated at random.
//!
//! - Keys are identified by 80 bits of their 128-bit XXH3 hash (the key bytes are in the
//!   log): the high 64 bits and bits 48..64 ([`KeyId`]). Every entry is 16 fixed bytes in
//!   one flat open-addressing table — no allocation per key, no key comparison. Two
//!   distinct keys of one tenant would have to share those 80 bits to be confused: for a
//!   million keys, odds about 4·10⁻¹³ (n²/2⁸¹), for ten million 4·10⁻¹¹ — the trade
//!   Kafka's log cleaner makes with its hashed offset map (which keeps 128 bits; 80 here
//!   halve the table, below). XXH3 is specified and stable, so hashes in checkpoints
//!   stay valid across versions and machines.
//! - 16-byte slots ([`Narrow`]: the high 64 bits, then the 16 tag bits over a 48-bit
//!   offset): four to a cache line, so a probe past the home slot stays in its line three
//!   times in four (with 32-byte slots, half the probes that moved on missed a second
//!   line), and the table is half the memory. An offset of 2⁴⁸ or more (281 trillion
//!   records into one partition) switches that map to 32-byte [`Wide`] slots, once; no
//!   offset is ever cut short.
//! - With a million keys updated at random nearly every update misses the CPU caches and
//!   the TLB. So: one table (a key's slot is computed, not found through a shard list),
//!   each change's slot prefetched a fixed distance ahead of its update
//!   ([`KeyMap::apply`]) so their misses overlap, and tables of [`HUGE_TABLE_BYTES`] or
//!   more in their own anonymous mapping advised for transparent huge pages (one TLB
//!   entry per 2 MiB instead of per 4 KiB).
//! - The map is owned by its partition's index alone (the indexer thread, or whoever holds
//!   the index lock): an update is plain loads and stores, no reference count. A snapshot
//!   copies what it needs (the offsets) under that lock, which appends never take.
//! - Linear probing from the slot the key's high bits name, at most half full below 2²⁰
//!   slots and 3/4 from there ([`HALF_FULL_BELOW_SLOTS`]), deletion by
//!   backward shift (no tombstones), so a lookup ends at the key or at the first empty
//!   slot of its run. The table doubles when full: one rehash, on the indexer thread
//!   (appends go on meanwhile; see `indexer.rs`).
//!
//! Invariant: a slot is empty exactly when its first word (the high hash bits) is 0; a
//! key whose high bits are 0 is kept as 1 ([`KeyId::of`]) so that no key is ever confused
//! with an empty slot.

use memmap2::{Advice, MmapMut};

/// Slots of a new table (a power of two).
const MIN_SLOTS: usize = 16;
/// How many changes ahead [`KeyMap::apply`] prefetches: enough misses in flight to
/// cover a DRAM access, few enough for the core's miss buffers.
const PREFETCH_AHEAD: usize = 24;
/// Changes between two growth checks in [`KeyMap::apply`].
const GROW_CHECK: usize = 32;
/// Keys up to which growing a table is cheap enough for any thread (a table of at most
/// 64 Ki slots, half full, 1 MiB: a doubling well under a millisecond).
pub const CHEAP_GROWTH_KEYS: usize = 32 << 10;

/// Tables at least this large get their own huge-page-advised mapping.
pub const HUGE_TABLE_BYTES: usize = 2 << 20;
/// The bits of a hash's low half a [`KeyId`] keeps (48..64).
pub(crate) const TAG_BITS: u64 = 0xFFFF << 48;
/// The largest offset a [`Narrow`] slot holds.
const NARROW_OFFSET_MAX: u64 = !TAG_BITS;

/// The hash of a key as the index knows it.
///
/// Inlined for keys of 9 to 16 bytes (short ids, `file-00000001`): the appender hashes
/// every keyed record inside its validation walk, and there XXH3's other size classes
/// (and a call) cost more than the hash itself. Any other length takes the call.
#[inline(always)]
pub fn key_hash(key: &[u8]) -> u128 {
    if (9..=16).contains(&key.len()) {
        // The length is known to the inlined XXH3 here: only its 9..16 path is left.
        xxhash_rust::xxh3::xxh3_128(key)
    } else {
        key_hash_any(key)
    }
}

#[inline(never)]
fn key_hash_any(key: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key)
}

/// A key's identity in the table: 80 bits of its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId {
    /// The hash's high 64 bits, never 0 (0 marks an empty slot). Its low bits are the
    /// key's home slot.
    hi: u64,
    /// Bits 48..64 of the hash, in place (the other bits 0).
    tag: u64,
}

impl KeyId {
    #[inline(always)]
    pub fn of(hash: u128) -> KeyId {
        KeyId {
            hi: ((hash >> 64) as u64).max(1),
            tag: (hash as u64) & TAG_BITS,
        }
    }

    /// The hash with only the kept bits (what [`KeyMap::iter`] yields and checkpoints
    /// hold): `KeyId::of` gives this id back for it.
    pub fn hash(self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.tag)
    }
}

/// How a slot lays out a key and its offset. An empty slot is all zeros.
trait Layout {
    type Slot: bytemuck::Pod;
    const WORDS: usize;
    fn hi(s: &Self::Slot) -> u64;
    fn holds(s: &Self::Slot, id: KeyId) -> bool;
    fn offset(s: &Self::Slot) -> u64;
    fn id(s: &Self::Slot) -> KeyId;
    fn make(id: KeyId, offset: u64) -> Self::Slot;
}

/// 16 bytes: `hi`, then `tag | offset` (offsets up to [`NARROW_OFFSET_MAX`]).
struct Narrow;
/// 32 bytes (so a slot never straddles two cache lines): `hi`, `tag`, `offset`, unused.
struct Wide;

impl Layout for Narrow {
    type Slot = [u64; 2];
    const WORDS: usize = 2;
    #[inline(always)]
    fn hi(s: &Self::Slot) -> u64 {
        s[0]
    }
    #[inline(always)]
    fn holds(s: &Self::Slot, id: KeyId) -> bool {
        s[0] == id.hi && s[1] & TAG_BITS == id.tag
    }
    #[inline(always)]
    fn offset(s: &Self::Slot) -> u64 {
        s[1] & NARROW_OFFSET_MAX
    }
    fn id(s: &Self::Slot) -> KeyId {
        KeyId {
            hi: s[0],
            tag: s[1] & TAG_BITS,
        }
    }
    #[inline(always)]
    fn make(id: KeyId, offset: u64) -> Self::Slot {
        debug_assert!(offset <= NARROW_OFFSET_MAX);
        [id.hi, id.tag | offset]
    }
}

impl Layout for Wide {
    type Slot = [u64; 4];
    const WORDS: usize = 4;
    #[inline(always)]
    fn hi(s: &Self::Slot) -> u64 {
        s[0]
    }
    #[inline(always)]
    fn holds(s: &Self::Slot, id: KeyId) -> bool {
        s[0] == id.hi && s[1] == id.tag
    }
    #[inline(always)]
    fn offset(s: &Self::Slot) -> u64 {
        s[2]
    }
    fn id(s: &Self::Slot) -> KeyId {
        KeyId {
            hi: s[0],
            tag: s[1],
        }
    }
    #[inline(always)]
    fn make(id: KeyId, offset: u64) -> Self::Slot {
        [id.hi, id.tag, offset, 0]
    }
}

/// Where a table's slots live: the heap for small tables, an anonymous mapping advised
/// for huge pages for large ones. Zeroed (all slots empty) when made.
#[derive(Debug)]
enum Storage {
    Heap(Box<[u64]>),
    Mapped(MmapMut),
}

impl Storage {
    fn zeroed(words: usize) -> Storage {
        let bytes = words * 8;
        if bytes >= HUGE_TABLE_BYTES {
            // Fresh anonymous memory reads as zeros; the advice only matters before the
            // first touch. Without the mapping (or the advice) the table still works.
            if let Ok(map) = MmapMut::map_anon(bytes) {
                let _ = map.advise(Advice::HugePage);
                return Storage::Mapped(map);
            }
        }
        Storage::Heap(vec![0u64; words].into_boxed_slice())
    }

    fn words(&self) -> &[u64] {
        match self {
            Storage::Heap(b) => b,
            // A mapping is page-aligned and its length a multiple of 8: the cast is exact.
            Storage::Mapped(m) => bytemuck::cast_slice(&m[..]),
        }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        match self {
            Storage::Heap(b) => b,
            Storage::Mapped(m) => bytemuck::cast_slice_mut(&mut m[..]),
        }
    }
}

fn slots<L: Layout>(words: &[u64]) -> &[L::Slot] {
    bytemuck::cast_slice(words)
}

fn slots_mut<L: Layout>(words: &mut [u64]) -> &mut [L::Slot] {
    bytemuck::cast_slice_mut(words)
}

/// See the module documentation.
#[derive(Debug)]
pub struct KeyMap {
    words: Storage,
    /// Slots − 1 (slots are a power of two).
    mask: usize,
    len: usize,
    /// [`Wide`] slots (an offset past [`NARROW_OFFSET_MAX`] was set), else [`Narrow`].
    wide: bool,
}

impl Default for KeyMap {
    fn default() -> Self {
        KeyMap::with_slots(MIN_SLOTS, false)
    }
}

impl Clone for KeyMap {
    fn clone(&self) -> Self {
        let mut copy = KeyMap::with_slots(self.mask + 1, self.wide);
        copy.words.words_mut().copy_from_slice(self.words.words());
        copy.len = self.len;
        copy
    }
}

impl PartialEq for KeyMap {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

/// Calls `$body` with `$L` bound to the map's slot layout.
macro_rules! with_layout {
    ($map:expr, $L:ident => $body:expr) => {
        if $map.wide {
            type $L = Wide;
            $body
        } else {
            type $L = Narrow;
            $body
        }
    };
}

impl KeyMap {
    fn with_slots(slots: usize, wide: bool) -> KeyMap {
        debug_assert!(slots.is_power_of_two());
        KeyMap {
            words: Storage::zeroed(slots * words_per_slot(wide)),
            mask: slots - 1,
            len: 0,
            wide,
        }
    }

    /// An empty map with room for `keys` keys (no growth while they are added).
    pub fn with_capacity(keys: usize) -> KeyMap {
        KeyMap::with_slots(slots_for(keys, MIN_SLOTS), false)
    }

    /// A map of `n` keys, the `i`-th being `entry(i)` (distinct keys, e.g. a checkpoint's
    /// list), sized for them up front and filled in an order unrelated to `i`. Why: a
    /// list made in another table's slot order is sorted by that table's home bits, and
    /// in a smaller table (a growing one, or the source had grown past its keys) it wraps
    /// onto itself. Taken in list order, every key after the first wrap lands on the
    /// first pass's run and walks to its end, and above half full the runs merge into one
    /// that only grows: 700 000 keys took 3.6 s. The order used is a stride of about
    /// 0.618 n (coprime with n, so every entry comes once), which spreads consecutive
    /// keys over the whole list.
    pub fn from_entries(n: usize, entry: impl Fn(usize) -> (u128, u64)) -> KeyMap {
        let mut map = KeyMap::with_capacity(n);
        let stride = spread_stride(n);
        let mut chunk = [KeyChange::default(); 256];
        let mut filled = 0;
        let mut i = 0;
        for _ in 0..n {
            let (key, offset) = entry(i);
            chunk[filled] = KeyChange {
                key,
                offset,
                live: true,
            };
            filled += 1;
            if filled == chunk.len() {
                map.apply(&chunk);
                filled = 0;
            }
            // i + stride < 2n: no overflow for any list that fits in memory.
            i = (i + stride) % n;
        }
        map.apply(&chunk[..filled]);
        map
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether `more` new keys fit without a doubling, or with one of a small table only:
    /// what an appending thread may take on (a large table's doubling, tens of ms for
    /// millions of keys, is the indexer thread's).
    pub fn takes_cheaply(&self, more: usize) -> bool {
        let keys = self.len.saturating_add(more);
        holds(self.mask + 1, keys) || keys <= CHEAP_GROWTH_KEYS
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: u128) -> Option<u64> {
        let id = KeyId::of(key);
        with_layout!(self, L => {
            let table = slots::<L>(self.words.words());
            let mut i = (id.hi as usize) & self.mask;
            loop {
                let s = &table[i];
                if L::holds(s, id) {
                    return Some(L::offset(s));
                }
                if L::hi(s) == 0 {
                    return None;
                }
                i = (i + 1) & self.mask;
            }
        })
    }

    /// Sets the key's offset.
    pub fn insert(&mut self, key: u128, offset: u64) {
        self.apply(&[KeyChange {
            key,
            offset,
            live: true,
        }]);
    }

    pub fn remove(&mut self, key: u128) {
        self.apply(&[KeyChange {
            key,
            offset: 0,
            live: false,
        }]);
    }

    /// Applies changes in order (anything that reads as a [`Change`]: the indexer hands
    /// over its queued updates as they are, no copy). Each change's home slot is
    /// prefetched [`PREFETCH_AHEAD`] changes before it is made, so their cache misses
    /// overlap instead of each update waiting for its own — a sliding window that stays
    /// full across the whole slice (prefetching a chunk and then applying it drained the
    /// window at every chunk: the first change of each chunk waited for a whole miss).
    /// The table is grown (if need be) [`GROW_CHECK`] changes at a time, so a slice of
    /// updates to existing keys does not grow it for nothing. This loop is the indexer's
    /// whole per-record cost.
    #[inline]
    pub fn apply<C: Change>(&mut self, changes: &[C]) {
        self.apply_based(0u64, changes);
    }

    /// [`KeyMap::apply`] with every change's offset taken relative to a base from `bases`
    /// (queued notes carry their offset within their batch; one slice may span many
    /// batches, so that the prefetch window runs across them).
    #[inline]
    pub fn apply_based<C: Change>(&mut self, mut bases: impl Bases, changes: &[C]) {
        // One OR per change (no branch), at least the largest offset: a tombstone's counts
        // too, which at worst widens a map a little early.
        let deltas = changes.iter().fold(0, |all, c| all | c.offset());
        if !self.wide && bases.most().saturating_add(deltas) > NARROW_OFFSET_MAX {
            *self = self.rebuilt(self.mask + 1, true);
        }
        with_layout!(self, L => self.apply_in::<L, C>(&mut bases, changes))
    }

    #[inline(always)]
    fn apply_in<L: Layout, C: Change>(&mut self, bases: &mut impl Bases, changes: &[C]) {
        let mut start = 0;
        while start < changes.len() {
            let end = changes.len().min(start + GROW_CHECK);
            let grew = !holds(self.mask + 1, self.len + (end - start));
            if grew {
                self.grow_for(end - start);
            }
            let mask = self.mask;
            // Exactly `mask + 1` slots, so that `i & mask` needs no bounds check.
            let table = &mut slots_mut::<L>(self.words.words_mut())[..=mask];
            if start == 0 || grew {
                // (Re)fill the window: the slots ahead of this chunk moved, or were
                // never asked for.
                for c in changes[start..].iter().take(PREFETCH_AHEAD) {
                    prefetch_home::<L>(table, mask, c.key());
                }
            }
            // The count in a register, not stored back at every change.
            let mut len = self.len;
            for (i, c) in (start..end).zip(&changes[start..end]) {
                if let Some(ahead) = changes.get(i + PREFETCH_AHEAD) {
                    prefetch_home::<L>(table, mask, ahead.key());
                }
                if c.sets() {
                    let offset = bases.at(i) + c.offset();
                    len += usize::from(set::<L>(table, mask, KeyId::of(c.key()), offset));
                } else if c.removes() {
                    len -= usize::from(delete::<L>(table, mask, KeyId::of(c.key())));
                }
            }
            self.len = len;
            start = end;
        }
    }

    /// Doubles the table until `more` new keys fit. Every key moves once, so a doubling
    /// is as much work as the updates that filled the table.
    #[cold]
    #[inline(never)]
    fn grow_for(&mut self, more: usize) {
        let slots = slots_for(self.len + more, (self.mask + 1) * 2);
        *self = self.rebuilt(slots, self.wide);
    }

    /// The same entries in a table of `slots` slots, wide or narrow.
    fn rebuilt(&self, slots: usize, wide: bool) -> KeyMap {
        let mut to = KeyMap::with_slots(slots, wide);
        with_layout!(to, L => to.fill_from::<L>(self));
        to
    }

    /// Puts every entry of `source` (distinct keys) in this empty table, which has room:
    /// each in the first free slot of its run, skipping what an update checks, the slots
    /// prefetched a chunk at a time.
    fn fill_from<L: Layout>(&mut self, source: &KeyMap) {
        const CHUNK: usize = 16;
        let mask = self.mask;
        let table = slots_mut::<L>(self.words.words_mut());
        let place = |table: &mut [L::Slot], (id, offset): (KeyId, u64)| {
            let mut i = (id.hi as usize) & mask;
            while L::hi(&table[i]) != 0 {
                i = (i + 1) & mask;
            }
            table[i] = L::make(id, offset);
        };
        let mut chunk = [(KeyId { hi: 0, tag: 0 }, 0u64); CHUNK];
        let mut n = 0;
        for entry in source.entries() {
            prefetch_home::<L>(table, mask, entry.0.hash());
            chunk[n] = entry;
            n += 1;
            if n == CHUNK {
                chunk.iter().for_each(|&e| place(table, e));
                n = 0;
            }
        }
        chunk[..n].iter().for_each(|&e| place(table, e));
        self.len = source.len;
    }

    /// Every (key id, offset), in slot order.
    fn entries(&self) -> impl Iterator<Item = (KeyId, u64)> + '_ {
        let words = self.words.words();
        let (narrow, wide) = if self.wide {
            (&[][..], slots::<Wide>(words))
        } else {
            (slots::<Narrow>(words), &[][..])
        };
        let narrow = narrow
            .iter()
            .filter(|s| Narrow::hi(s) != 0)
            .map(|s| (Narrow::id(s), Narrow::offset(s)));
        let wide = wide
            .iter()
            .filter(|s| Wide::hi(s) != 0)
            .map(|s| (Wide::id(s), Wide::offset(s)));
        narrow.chain(wide)
    }

    /// Every (key hash, offset), in slot order. The hash has only the bits the map keeps
    /// ([`KeyId::hash`]); [`KeyMap::get`] finds the key by it.
    pub fn iter(&self) -> impl Iterator<Item = (u128, u64)> + '_ {
        self.entries().map(|(id, offset)| (id.hash(), offset))
    }

    /// Writes every entry to `out` as `key hash u128 LE, offset u64 LE` (24 bytes), in
    /// slot order, a few KiB per write.
    pub fn write_entries(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        const ENTRY: usize = 24;
        const PER_BLOCK: usize = 170;
        let mut block = [0u8; ENTRY * PER_BLOCK];
        let mut n = 0;
        for (key, offset) in self.iter() {
            let entry = &mut block[n * ENTRY..(n + 1) * ENTRY];
            entry[..16].copy_from_slice(&key.to_le_bytes());
            entry[16..].copy_from_slice(&offset.to_le_bytes());
            n += 1;
            if n == PER_BLOCK {
                out.write_all(&block)?;
                n = 0;
            }
        }
        out.write_all(&block[..n * ENTRY])
    }

    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries().map(|(_, v)| v)
    }

    /// Heap (or mapped) bytes of the table, for memory reports.
    pub fn heap_bytes(&self) -> usize {
        self.words.words().len() * 8
    }
}

fn words_per_slot(wide: bool) -> usize {
    if wide {
        Wide::WORDS
    } else {
        Narrow::WORDS
    }
}

/// Tables below this many slots (16 MiB of narrow slots) are kept at most half full,
/// larger ones at most 3/4.
///
/// Why: an update's cost in a table the caches hold is its probes, and a probe past the
/// home slot is a branch the CPU often mispredicts. Half full, a lookup takes 1.17–1.5
/// probes on average (linear probing), against 1.3–2.5 up to 3/4: criterion's
/// `tenant_index_apply` with 10 000 keys (16 Ki slots 61 % full, then 32 Ki slots 31 %
/// full) went from 12.6–13.5 to 7.0–8.3 ns per update. That costs at most 8 MiB more a
/// tenant (keys that 2¹⁹ slots held at 3/4 now take 2²⁰); beyond the boundary memory
/// counts more and the misses dominate (and at 3/4 most probes past the home
/// slot stay in its cache line). At the boundary a
/// half-full table of 2¹⁹ slots doubles into one of 2²⁰ filled to 1/4 at most: no key
/// count has its table grow and shrink back.
const HALF_FULL_BELOW_SLOTS: usize = 1 << 20;

/// Whether a table of `slots` slots holds `keys` keys within its load limit.
#[inline(always)]
fn holds(slots: usize, keys: usize) -> bool {
    if slots < HALF_FULL_BELOW_SLOTS {
        keys.saturating_mul(2) <= slots
    } else {
        keys.saturating_mul(4) <= slots.saturating_mul(3)
    }
}

/// The smallest power of two ≥ `at_least` slots that holds `keys` keys ([`holds`]).
fn slots_for(keys: usize, at_least: usize) -> usize {
    let mut slots = at_least.max(MIN_SLOTS);
    while !holds(slots, keys) {
        slots *= 2;
    }
    slots
}

/// One change to a key map: the key's latest record is now at `offset`, or (`live`
/// false, a tombstone) the key is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyChange {
    pub key: u128,
    pub offset: u64,
    pub live: bool,
}

/// Anything [`KeyMap::apply`] can apply: a key's hash ([`key_hash`]), an offset, and what
/// to do with them — set the key to the offset, remove the key (a tombstone), or, neither
/// being true, nothing (a record without a key).
pub trait Change {
    fn key(&self) -> u128;
    fn offset(&self) -> u64;
    fn sets(&self) -> bool;
    fn removes(&self) -> bool;
}

impl Change for KeyChange {
    #[inline(always)]
    fn key(&self) -> u128 {
        self.key
    }
    #[inline(always)]
    fn offset(&self) -> u64 {
        self.offset
    }
    #[inline(always)]
    fn sets(&self) -> bool {
        self.live
    }
    #[inline(always)]
    fn removes(&self) -> bool {
        !self.live
    }
}

/// The offsets [`KeyMap::apply_based`]'s changes are relative to: `at(i)` for the `i`-th
/// change, asked with `i` ascending.
pub trait Bases {
    fn at(&mut self, i: usize) -> u64;
    /// At least every base `at` returns.
    fn most(&self) -> u64;
}

/// One base for every change.
impl Bases for u64 {
    #[inline(always)]
    fn at(&mut self, _: usize) -> u64 {
        *self
    }
    fn most(&self) -> u64 {
        *self
    }
}

/// Sets `id` to `offset`; true when the key is new. The table has room.
#[inline(always)]
fn set<L: Layout>(table: &mut [L::Slot], mask: usize, id: KeyId, offset: u64) -> bool {
    let mut i = (id.hi as usize) & mask;
    loop {
        let s = &mut table[i];
        // The high word first: it tells the key's slot from a stranger's (all but
        // certainly) and from an empty one, so most probes are one compare.
        let hi = L::hi(s);
        if hi == id.hi {
            if L::holds(s, id) {
                *s = L::make(id, offset);
                return false;
            }
        } else if hi == 0 {
            *s = L::make(id, offset);
            return true;
        }
        i = (i + 1) & mask;
    }
}

/// Removes `id`; true when it was there.
fn delete<L: Layout>(table: &mut [L::Slot], mask: usize, id: KeyId) -> bool {
    let mut hole = (id.hi as usize) & mask;
    loop {
        let s = &table[hole];
        if L::holds(s, id) {
            break;
        }
        if L::hi(s) == 0 {
            return false;
        }
        hole = (hole + 1) & mask;
    }
    // Backward shift: pull later entries of the run into the hole when the hole lies on
    // their probe path (between their home and where they sit, cyclically).
    let mut j = hole;
    loop {
        j = (j + 1) & mask;
        let hi = L::hi(&table[j]);
        if hi == 0 {
            break;
        }
        let home = (hi as usize) & mask;
        if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
            table[hole] = table[j];
            hole = j;
        }
    }
    table[hole] = bytemuck::Zeroable::zeroed();
    true
}

/// A step through `0..n` that visits every index once (coprime with `n`) and puts
/// consecutive ones far apart (about 0.618 n: the golden ratio's Weyl sequence).
fn spread_stride(n: usize) -> usize {
    fn gcd(mut a: usize, mut b: usize) -> usize {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }
    if n < 3 {
        return 1;
    }
    let mut stride = ((n as f64 * 0.618_033_988_75) as usize).max(1);
    while gcd(stride, n) != 1 {
        stride += 1;
    }
    stride
}

/// Hints the CPU to fetch the home slot of the key hashed `key`.
#[inline(always)]
fn prefetch_home<L: Layout>(table: &[L::Slot], mask: usize, key: u128) {
    if let Some(slot) = table.get((KeyId::of(key).hi as usize) & mask) {
        prefetch_line(std::ptr::from_ref(slot).cast());
    }
}

/// A hint to bring the line of `at` into the cache; never faults, whatever the address.
#[inline]
fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint with no architectural effect; it never faults.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn key_hash_is_xxh3_128_at_every_length() {
        // Checkpoints hold these hashes: the inlined short path must be XXH3 itself.
        let bytes: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5A).collect();
        for len in 0..=bytes.len() {
            let key = &bytes[..len];
            assert_eq!(
                key_hash(key),
                xxhash_rust::xxh3::xxh3_128(key),
                "{len} bytes"
            );
        }
        // XXH3-128 of "file-00000001" (13 bytes) by the reference C library (Python's
        // `xxhash.xxh3_128_intdigest`).
        assert_eq!(
            key_hash(b"file-00000001"),
            0xaeea0160b3fbb57180a17836ebcac5e0
        );
    }

    #[test]
    fn behaves_like_a_map_through_growth_and_removals() {
        let mut m = KeyMap::default();
        let mut reference = HashMap::new();
        // Past the huge-table size, so both storages are exercised.
        let keys = (HUGE_TABLE_BYTES / 24) as u64;
        for i in 0..keys * 3 {
            let k = key_hash(format!("k{}", i % (keys * 2)).as_bytes());
            if i % 7 == 0 {
                m.remove(k);
                reference.remove(&k);
            } else {
                m.insert(k, i);
                reference.insert(k, i);
            }
        }
        assert!(matches!(m.words, Storage::Mapped(_)));
        assert_eq!(m.len(), reference.len());
        for (k, v) in &reference {
            assert_eq!(m.get(*k), Some(*v));
        }
        assert_eq!(m.iter().count(), reference.len());
        assert_eq!(m.get(key_hash(b"never inserted")), None);
    }

    #[test]
    fn removal_keeps_colliding_runs_reachable() {
        // Keys sharing home slots (the high half's low bits equal) wrap around the table's
        // end.
        let mut m = KeyMap::default();
        let at = |i: u128, home: u128| ((i << 4) | home) << 64;
        for i in 1..=6u128 {
            m.insert(at(i, 15), i as u64);
        }
        m.insert(at(7, 14), 7);
        m.remove(at(2, 15));
        m.remove(at(7, 14));
        for i in [1u128, 3, 4, 5, 6] {
            assert_eq!(m.get(at(i, 15)), Some(i as u64), "key {i}");
        }
        assert_eq!(m.get(at(2, 15)), None);
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn a_chunk_applies_in_order_and_grows_the_table_enough_at_once() {
        let mut m = KeyMap::default();
        let change = |key: u128, offset: u64, live: bool| KeyChange { key, offset, live };
        // More new keys than one doubling of the empty table holds, and the same key set,
        // deleted and set again within the chunk: the last change wins.
        let mut chunk: Vec<KeyChange> = (1..=100)
            .map(|k| change(k << 64 | k, k as u64, true))
            .collect();
        chunk.push(change(7 << 64 | 7, 0, false));
        chunk.push(change(8 << 64 | 8, 0, false));
        chunk.push(change(8 << 64 | 8, 500, true));
        m.apply(&chunk);
        assert_eq!(m.len(), 99);
        assert_eq!(m.get(7 << 64 | 7), None);
        assert_eq!(m.get(8 << 64 | 8), Some(500));
        assert_eq!(m.get(100 << 64 | 100), Some(100));
        assert!(holds(m.mask + 1, m.len()), "within the load limit");
        assert!(m.len() * 2 <= m.mask + 1, "small: at most half full");
    }

    /// Long slices, growing many times part-way through (the prefetch window refilled),
    /// sets and deletes of the same keys close together: the map a plain map would be.
    #[test]
    fn long_slices_apply_like_one_change_at_a_time() {
        let mut m = KeyMap::default();
        let mut reference = HashMap::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for round in 0..20u64 {
            let changes: Vec<KeyChange> = (0..5000u64)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = u128::from(x % (2000 + round * 3000));
                    KeyChange {
                        key: (k + 1) << 64 | k,
                        offset: round * 5000 + i,
                        live: x % 5 != 0,
                    }
                })
                .collect();
            for c in &changes {
                if c.live {
                    reference.insert(c.key, c.offset);
                } else {
                    reference.remove(&c.key);
                }
            }
            m.apply(&changes);
            assert_eq!(m.len(), reference.len(), "round {round}");
        }
        for (k, v) in &reference {
            assert_eq!(m.get(*k), Some(*v));
        }
        assert!(holds(m.mask + 1, m.len()), "within the load limit");
        assert!(m.len() * 2 <= m.mask + 1, "small: at most half full");
    }

    #[test]
    fn the_spread_order_visits_every_entry_once() {
        for n in (0..200).chain([1 << 16, 700_000]) {
            let stride = spread_stride(n);
            let mut seen = vec![false; n];
            let mut i = 0;
            for _ in 0..n {
                assert!(!seen[i], "n {n}: {i} twice");
                seen[i] = true;
                i = (i + stride) % n;
            }
            assert!(seen.iter().all(|&s| s), "n {n}");
        }
    }

    #[test]
    fn a_list_in_slot_order_rebuilds_the_same_map() {
        // A table more than half full, listed in its slot order (as a checkpoint is) and
        // rebuilt: the case that used to pile keys into one run. Same keys, same offsets.
        for keys in [0u64, 1, 2, 3, 11, 700, 70_000] {
            let mut source = KeyMap::default();
            for i in 0..keys {
                source.insert(key_hash(&i.to_le_bytes()), i * 3);
            }
            let list: Vec<(u128, u64)> = source.iter().collect();
            let rebuilt = KeyMap::from_entries(list.len(), |i| list[i]);
            assert_eq!(rebuilt.len(), source.len());
            assert_eq!(rebuilt, source, "{keys} keys");
            assert_eq!(
                rebuilt.heap_bytes(),
                KeyMap::with_capacity(list.len()).heap_bytes()
            );
        }
    }

    #[test]
    fn a_key_is_its_high_half_and_tag_bits() {
        let mut m = KeyMap::default();
        let key = 0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210u128;
        m.insert(key, 1);
        // Bits 0..48 are not kept: the same key, as the iteration reports it.
        assert_eq!(m.get(key & !0xFFFF_FFFF_FFFF), Some(1));
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![(key & !0xFFFF_FFFF_FFFF, 1)]
        );
        // Any kept bit that differs is another key: each tag bit and each high bit.
        for bit in (48..128).map(|b| 1u128 << b) {
            assert_eq!(m.get(key ^ bit), None, "bit {}", bit.trailing_zeros());
        }
        m.insert(key ^ (1 << 48), 2);
        m.insert(key ^ (1 << 127), 3);
        assert_eq!((m.get(key), m.len()), (Some(1), 3));
    }

    /// An offset a narrow slot cannot hold switches the map to wide slots with every entry
    /// kept; from then on it behaves as before, through growth and removals.
    #[test]
    fn an_offset_past_48_bits_widens_the_slots() {
        let mut m = KeyMap::default();
        let mut reference = HashMap::new();
        let key = |i: u64| key_hash(&i.to_le_bytes());
        for i in 0..5000u64 {
            m.insert(key(i), i);
            reference.insert(key(i), i);
        }
        assert!(!m.wide);
        let narrow_bytes = m.heap_bytes();
        let big = 1u64 << 48;
        m.insert(key(7), big);
        reference.insert(key(7), big);
        assert!(m.wide);
        assert_eq!(
            m.heap_bytes(),
            2 * narrow_bytes,
            "same slots, twice the bytes"
        );
        for i in 5000..40_000u64 {
            if i % 3 == 0 {
                m.remove(key(i / 2));
                reference.remove(&key(i / 2));
            } else {
                m.insert(key(i), u64::MAX - i);
                reference.insert(key(i), u64::MAX - i);
            }
        }
        assert_eq!(m.len(), reference.len());
        for (k, v) in &reference {
            assert_eq!(m.get(*k), Some(*v));
        }
        let list: Vec<(u128, u64)> = m.iter().collect();
        assert_eq!(list.len(), reference.len());
        assert_eq!(KeyMap::from_entries(list.len(), |i| list[i]), m);
    }

    #[test]
    fn zero_hash_is_a_key_like_any_other() {
        let mut m = KeyMap::default();
        m.insert(0, 5);
        assert_eq!(m.get(0), Some(5));
        m.remove(0);
        assert_eq!(m.get(0), None);
        assert!(m.is_empty());
    }

    #[test]
    fn a_copy_does_not_see_later_updates() {
        let mut m = KeyMap::default();
        for i in 0..100_000u64 {
            m.insert(key_hash(&i.to_le_bytes()), i);
        }
        let frozen = m.clone();
        for i in 0..100_000u64 {
            m.insert(key_hash(&i.to_le_bytes()), i + 1_000_000);
        }
        m.remove(key_hash(&7u64.to_le_bytes()));
        assert_eq!(frozen.len(), 100_000);
        assert!(frozen.iter().all(|(_, v)| v < 1_000_000));
        assert_eq!(frozen.get(key_hash(&7u64.to_le_bytes())), Some(7));
        assert_eq!(m.len(), 99_999);
    }
}
