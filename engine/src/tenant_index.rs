//! The tenant/key index of a partition: for every tenant, the offset of the latest record
//! of each live key (a tombstone removes the key), and the tenant's latest event.
//!
//! It is what makes a `state` extraction exact and cheap: under the partition's writer
//! lock, the watermark is read and the tenant's key map is frozen at the same instant —
//! no append can interleave — and the records at those offsets never change. Tenants are
//! in a persistent map (`imbl`, structurally shared) and each tenant's keys in a
//! [`KeyMap`] (128-bit key hashes in copy-on-write shards), so freezing is O(shards) and
//! never stalls appends for more than one shard's copy, however many keys a tenant has.
//!
//! Persistence: a checkpoint (`tenants.snapshot`) of the whole index as of a segment roll
//! is written by the flusher after it seals that segment (so the checkpoint never covers
//! data that is not durable), and at clean shutdown. On open the checkpoint is loaded and
//! the log after it replayed: at most the unsealed tail, never the whole log.
//!
//! ```text
//! tenants.snapshot:
//! | 0..4 magic "TLT2" | 4..8 crc32 of bytes 8.. | 8..16 next_offset u64 LE (covers offsets below it)
//! | 16..20 tenants u32 LE | then per tenant:
//! |   tenant_len u8, tenant bytes, latest_offset u64 LE, events u64 LE, keys u32 LE,
//! |   keys × (key_hash u128 LE (XXH3-128 of the key), offset u64 LE)
//! ```
//! (A checkpoint of the first format, magic "TLTI", is not read: the index is rebuilt by
//! replaying the log once.)

use std::sync::Arc;

/// Persistent maps with a fast, per-process-seeded hasher: the index is updated for every
/// tenant record appended, and SipHash was half of that cost.
type PersistentMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;
use tidelog_protocol::batch::BatchView;

use crate::key_map::{key_hash, KeyMap};
use crate::snapshot_file;

/// A tenant record of a batch being appended, as the index needs it.
#[derive(Debug, Clone, Copy)]
pub struct IndexUpdate<'a> {
    pub offset_delta: u32,
    pub tenant: &'a [u8],
    pub key: Option<&'a [u8]>,
    /// False for a tombstone.
    pub live: bool,
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
    tenants: PersistentMap<Arc<[u8]>, TenantKeys>,
    /// Offsets below this are reflected in the index.
    next_offset: u64,
}

const MAGIC: &[u8; 4] = b"TLT2";

impl TenantIndex {
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn tenant(&self, tenant: &[u8]) -> Option<&TenantKeys> {
        self.tenants.get(tenant)
    }

    pub fn names(&self) -> Vec<Vec<u8>> {
        self.tenants.keys().map(|t| t.to_vec()).collect()
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// Applies the tenant records of a batch appended at `base_offset` (collected while the
    /// batch was validated), then marks everything below `next_offset` reflected.
    pub fn apply_updates(
        &mut self,
        updates: &[IndexUpdate<'_>],
        base_offset: u64,
        next_offset: u64,
    ) {
        let mut rest = updates;
        while let Some(first) = rest.first() {
            // One lookup per run of records of the same tenant (a whole uniform batch).
            let run = rest.iter().take_while(|u| u.tenant == first.tenant).count();
            let entry = Self::entry(&mut self.tenants, first.tenant);
            for u in &rest[..run] {
                Self::apply_record(
                    entry,
                    base_offset + u64::from(u.offset_delta),
                    u.key,
                    u.live,
                );
            }
            rest = &rest[run..];
        }
        self.next_offset = self.next_offset.max(next_offset);
    }

    /// Applies a stored (stamped) batch. Batches must be applied in offset order.
    pub fn apply(&mut self, view: &BatchView<'_>) {
        // The hot path: a tenant-uniform batch looks its tenant up once.
        if let Some(tenant) = view.uniform_tenant() {
            let entry = Self::entry(&mut self.tenants, tenant);
            for record in view.records().filter_map(Result::ok) {
                Self::apply_record(entry, record.offset, record.key, record.value.is_some());
            }
        } else {
            for record in view.records().filter_map(Result::ok) {
                if let Some(tenant) = record.tenant {
                    let entry = Self::entry(&mut self.tenants, tenant);
                    Self::apply_record(entry, record.offset, record.key, record.value.is_some());
                }
            }
        }
        self.next_offset = self.next_offset.max(view.header.next_offset());
    }

    fn entry<'m>(
        tenants: &'m mut PersistentMap<Arc<[u8]>, TenantKeys>,
        tenant: &[u8],
    ) -> &'m mut TenantKeys {
        if !tenants.contains_key(tenant) {
            tenants.insert(Arc::from(tenant), TenantKeys::default());
        }
        tenants.get_mut(tenant).expect("present")
    }

    fn apply_record(entry: &mut TenantKeys, offset: u64, key: Option<&[u8]>, live: bool) {
        entry.latest_offset = Some(offset);
        entry.events += 1;
        let Some(key) = key else { return };
        let key = key_hash(key);
        if live {
            entry.keys.insert(key, offset);
        } else {
            entry.keys.remove(key);
        }
    }

    /// Marks offsets below `next` as reflected (for batches without tenants, or after a
    /// replay that ended there).
    pub fn advance_to(&mut self, next: u64) {
        self.next_offset = self.next_offset.max(next);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = snapshot_file::begin(MAGIC, 64);
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&(self.tenants.len() as u32).to_le_bytes());
        for (tenant, t) in &self.tenants {
            out.push(tenant.len() as u8);
            out.extend_from_slice(tenant);
            out.extend_from_slice(&t.latest_offset.unwrap_or(u64::MAX).to_le_bytes());
            out.extend_from_slice(&t.events.to_le_bytes());
            out.extend_from_slice(&(t.keys.len() as u32).to_le_bytes());
            for (key, offset) in t.keys.iter() {
                out.extend_from_slice(&key.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
            }
        }
        snapshot_file::seal(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<TenantIndex, String> {
        let mut r = snapshot_file::open(bytes, MAGIC)?;
        let next_offset = r.u64()?;
        let count = r.u32()?;
        let mut tenants = PersistentMap::default();
        for _ in 0..count {
            let len = usize::from(r.u8()?);
            let tenant: Arc<[u8]> = Arc::from(r.take(len)?);
            let latest = r.u64()?;
            let events = r.u64()?;
            let n = r.u32()?;
            let mut keys = KeyMap::default();
            for _ in 0..n {
                let key = u128::from_le_bytes(r.take(16)?.try_into().map_err(|_| "key hash")?);
                keys.insert(key, r.u64()?);
            }
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
}
