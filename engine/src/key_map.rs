//! One tenant's live keys: key → offset of its latest record, built for the append path
//! and for O(1) freezing.
//!
//! - Keys are identified by their 128-bit XXH3 hash (the key bytes are in the log): every
//!   entry is 24 fixed bytes in a flat hash table — no allocation per key, no key
//!   comparison, one cache miss per update. Two distinct keys of one tenant would have
//!   to share a 128-bit hash to be confused (for a million keys, odds about 10⁻²⁶) — the
//!   trade Kafka's log cleaner makes with its hashed offset map. XXH3 is specified and
//!   stable, so hashes in checkpoints stay valid across versions and machines.
//! - The table is split in shards behind `Arc`s: freezing (a snapshot at the watermark)
//!   clones the shard pointers, O(shards); the next update of a shard still shared with a
//!   snapshot copies that shard only. So a snapshot never stalls the writer for more than
//!   one shard's copy, and costs at most one copy of the map over the appends that follow.
//!   A small tenant has one shard; past [`SPLIT_AT`] keys it is split once into
//!   [`SHARDS`] shards (one rehash of `SPLIT_AT` entries).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// Keys at which a tenant's single shard is split.
pub const SPLIT_AT: usize = 1 << 16;
/// Shards of a split map (a power of two).
pub const SHARDS: usize = 4096;

/// The hash of a key as the index knows it.
pub fn key_hash(key: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key)
}

/// The table's hasher: the key already is a uniform hash; its low 64 bits serve.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreHashed;

#[derive(Debug, Default, Clone, Copy)]
pub struct PreHashedHasher(u64);

impl Hasher for PreHashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed with this hasher; keep it total anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

impl BuildHasher for PreHashed {
    type Hasher = PreHashedHasher;
    fn build_hasher(&self) -> PreHashedHasher {
        PreHashedHasher(0)
    }
}

type Shard = hashbrown::HashMap<u128, u64, PreHashed>;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct KeyMap {
    shards: Vec<Arc<Shard>>,
    len: usize,
}

impl Default for KeyMap {
    fn default() -> Self {
        KeyMap {
            shards: vec![Arc::new(Shard::with_hasher(PreHashed))],
            len: 0,
        }
    }
}

impl PartialEq for KeyMap {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl KeyMap {
    fn shard_of(&self, key: u128) -> usize {
        // The high bits pick the shard; the table uses the low ones.
        ((key >> 64) as usize) & (self.shards.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: u128) -> Option<u64> {
        self.shards[self.shard_of(key)].get(&key).copied()
    }

    /// Sets the key's offset.
    pub fn insert(&mut self, key: u128, offset: u64) {
        let s = self.shard_of(key);
        if Arc::make_mut(&mut self.shards[s])
            .insert(key, offset)
            .is_none()
        {
            self.len += 1;
            if self.len > SPLIT_AT && self.shards.len() == 1 {
                self.split();
            }
        }
    }

    pub fn remove(&mut self, key: u128) {
        let s = self.shard_of(key);
        // Only copy a shared shard if the key is there.
        if self.shards[s].contains_key(&key)
            && Arc::make_mut(&mut self.shards[s]).remove(&key).is_some()
        {
            self.len -= 1;
        }
    }

    /// Every (key hash, offset), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u128, u64)> + '_ {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (*k, *v)))
    }

    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.shards.iter().flat_map(|s| s.values().copied())
    }

    fn split(&mut self) {
        let mut shards: Vec<Shard> = (0..SHARDS)
            .map(|_| Shard::with_capacity_and_hasher(2 * SPLIT_AT / SHARDS, PreHashed))
            .collect();
        for (k, v) in self.iter() {
            shards[((k >> 64) as usize) & (SHARDS - 1)].insert(k, v);
        }
        self.shards = shards.into_iter().map(Arc::new).collect();
    }

    /// Approximate heap bytes (for memory reports).
    pub fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.capacity() * (std::mem::size_of::<(u128, u64)>() + 1) + 64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_map_across_the_split() {
        let mut m = KeyMap::default();
        let mut reference = HashMap::new();
        for i in 0..(SPLIT_AT as u64 * 3) {
            let k = key_hash(format!("k{}", i % (SPLIT_AT as u64 * 2)).as_bytes());
            if i % 7 == 0 {
                m.remove(k);
                reference.remove(&k);
            } else {
                m.insert(k, i);
                reference.insert(k, i);
            }
        }
        assert!(m.shards.len() == SHARDS);
        assert_eq!(m.len(), reference.len());
        for (k, v) in &reference {
            assert_eq!(m.get(*k), Some(*v));
        }
        assert_eq!(m.iter().count(), reference.len());
    }

    #[test]
    fn a_frozen_copy_does_not_see_later_updates() {
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
