//! A sealed segment's tenant map: for every 64 KiB chunk of the segment file, which
//! tenants' batches may start in it — so that a history extraction reads only the chunks
//! that can hold its tenant's events, from the page cache or from disk alike, instead of
//! faulting in every page of the partition to read each batch's header.
//!
//! Per chunk: a 64-bit Bloom filter of the tenants of the batches that *start* in the
//! chunk (two bits per tenant, from the XXH3-64 of its bytes), and the position of the
//! first batch that starts in it. A batch that is not tenant-uniform (records of several
//! tenants, or none) sets every bit: any tenant may be in it. A history scan reads a
//! chunk's batches — each whole, even where it runs into the next chunk — only when the
//! filter has both of its tenant's bits; with the producer's tenant-uniform batches of
//! ~20 KiB, a chunk holds the batches of about three tenants (at most six bits set), so
//! another tenant matches it with odds of about 1 in 100 ((6/64)²).
//!
//! The map is derived data: a scan without it is only slower, so a map that is missing,
//! torn, or of another file is never used — it is rebuilt from the segment (one walk over
//! its batch headers) and written again — and it is never synced. It names the file it
//! describes by inode, modification time and length, which a compaction's rewrite (a new
//! file renamed into place) or recovery's cut (a modified file) changes.
//!
//! File (`{base_offset:020}.tenantmap`, little-endian), see `docs/FORMAT.md`:
//!
//! ```text
//! 0..4 magic "TLTM" | 4 version (1) | 5..8 zero | 8..12 chunk bytes | 12..16 segment length
//! 16..24 segment inode | 24..32 segment mtime (ns) | 32..36 chunk count | 36..40 zero
//! 40.. per chunk: bloom u64, first batch position u32 (0xFFFF_FFFF: none)
//! last 4: CRC-32 (IEEE) of every byte before it
//! ```

use std::fs::File;
use std::path::Path;

use tidelog_protocol::batch::view_stored;

/// Bytes of the segment file one chunk covers.
pub const CHUNK_BYTES: u32 = 64 << 10;
const MAGIC: &[u8; 4] = b"TLTM";
const VERSION: u8 = 1;
const HEAD_LEN: usize = 40;
const CHUNK_LEN: usize = 12;
/// A chunk in which no batch starts.
const NO_BATCH: u32 = u32::MAX;

/// The bits a tenant sets in a chunk's filter (two of 64).
pub fn tenant_bits(tenant: &[u8]) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64(tenant);
    (1u64 << (h & 63)) | (1u64 << ((h >> 6) & 63))
}

/// Which file a map describes: a map is used only for the file it was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub len: u32,
    pub inode: u64,
    pub mtime_ns: i64,
}

impl FileIdentity {
    /// The identity of `file` as it is now; `None` if it cannot be read or is no longer
    /// linked (a segment retention or compaction has replaced: its map is not written).
    pub fn of(file: &File, len: u32) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata().ok()?;
        (m.nlink() > 0).then(|| FileIdentity {
            len,
            inode: m.ino(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    bloom: u64,
    first: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantMap {
    chunks: Vec<Chunk>,
}

impl TenantMap {
    /// The map of a segment's bytes (every byte of the sealed file). `None` if a batch in
    /// them cannot be framed: the scan then reads the segment as it is, without a map.
    pub fn build(bytes: &[u8]) -> Option<TenantMap> {
        let chunks = bytes.len().div_ceil(CHUNK_BYTES as usize);
        let mut map = TenantMap {
            chunks: vec![
                Chunk {
                    bloom: 0,
                    first: NO_BATCH,
                };
                chunks
            ],
        };
        let mut pos = 0usize;
        while pos < bytes.len() {
            let view = view_stored(bytes.get(pos..)?).ok()?;
            let bits = view.uniform_tenant().map_or(u64::MAX, tenant_bits);
            let chunk = map.chunks.get_mut(pos / CHUNK_BYTES as usize)?;
            chunk.bloom |= bits;
            if chunk.first == NO_BATCH {
                chunk.first = u32::try_from(pos).ok()?;
            }
            pos += view.bytes().len();
        }
        Some(map)
    }

    /// The first chunk at or after `from` where a batch starts that may hold a tenant
    /// with `bits` ([`tenant_bits`]).
    pub fn next_chunk(&self, bits: u64, from: usize) -> Option<usize> {
        self.chunks
            .get(from..)?
            .iter()
            .position(|c| c.first != NO_BATCH && c.bloom & bits == bits)
            .map(|i| from + i)
    }

    /// Where the first batch that starts in `chunk` lies.
    pub fn first_batch(&self, chunk: usize) -> Option<u32> {
        self.chunks
            .get(chunk)
            .map(|c| c.first)
            .filter(|&f| f != NO_BATCH)
    }

    /// Where the batches that start in `chunk` end: at the first batch of a later chunk,
    /// or at the segment's end (`segment_len`).
    pub fn run_end(&self, chunk: usize, segment_len: u32) -> u32 {
        self.chunks
            .get(chunk + 1..)
            .and_then(|later| later.iter().find(|c| c.first != NO_BATCH))
            .map_or(segment_len, |c| c.first)
    }

    pub fn chunk_of(position: u32) -> usize {
        (position / CHUNK_BYTES) as usize
    }

    pub fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk>()
    }

    pub fn encode(&self, file: &FileIdentity) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD_LEN + self.chunks.len() * CHUNK_LEN + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&CHUNK_BYTES.to_le_bytes());
        out.extend_from_slice(&file.len.to_le_bytes());
        out.extend_from_slice(&file.inode.to_le_bytes());
        out.extend_from_slice(&file.mtime_ns.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for c in &self.chunks {
            out.extend_from_slice(&c.bloom.to_le_bytes());
            out.extend_from_slice(&c.first.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// The map in `bytes` if they are a whole, intact map of `file` (its identity, this
    /// chunk size); `None` otherwise.
    pub fn decode(bytes: &[u8], file: &FileIdentity) -> Option<TenantMap> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        let (head, entries) = body.split_at_checked(HEAD_LEN)?;
        let u32_at = |at: usize| Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?));
        let u64_at = |at: usize| Some(u64::from_le_bytes(head.get(at..at + 8)?.try_into().ok()?));
        let found = FileIdentity {
            len: u32_at(12)?,
            inode: u64_at(16)?,
            mtime_ns: u64_at(24)? as i64,
        };
        let chunks = u32_at(32)? as usize;
        let fits = head.get(..4)? == MAGIC
            && head.get(4) == Some(&VERSION)
            && u32_at(8)? == CHUNK_BYTES
            && found == *file
            && chunks == (file.len as usize).div_ceil(CHUNK_BYTES as usize)
            && entries.len() == chunks * CHUNK_LEN;
        if !fits {
            return None;
        }
        let chunks = entries
            .chunks_exact(CHUNK_LEN)
            .map(|e| {
                let (bloom, first) = e.split_at(8);
                Chunk {
                    bloom: u64::from_le_bytes(bloom.try_into().unwrap_or_default()),
                    first: u32::from_le_bytes(first.try_into().unwrap_or_default()),
                }
            })
            .collect();
        Some(TenantMap { chunks })
    }

    /// Reads the map of `file` from `path`, if there is an intact one of it.
    pub fn load(path: &Path, file: &FileIdentity) -> Option<TenantMap> {
        TenantMap::decode(&std::fs::read(path).ok()?, file)
    }

    /// Writes the map to `path` (temp file and rename; not synced: a map lost in a crash
    /// is rebuilt).
    pub fn store(&self, path: &Path, file: &FileIdentity) -> std::io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        std::fs::write(&tmp, self.encode(file))?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidelog_protocol::builder::{build_batch, ProducerStamp, Record};

    fn batch(tenant: Option<&[u8]>, records: usize, value: usize, base: u64) -> Vec<u8> {
        let list: Vec<Record> = (0..records)
            .map(|_| Record {
                tenant: tenant.map(<[u8]>::to_vec),
                value: Some(vec![7; value]),
                ..Record::default()
            })
            .collect();
        let mut b = build_batch(&list, ProducerStamp::default());
        tidelog_protocol::batch::stamp_base_offset(&mut b, base);
        b
    }

    /// A segment of `tenants` batches in turn, each ~`value` × 10 bytes.
    fn segment(tenants: &[Option<&[u8]>], batches: usize, value: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..batches {
            out.extend(batch(tenants[i % tenants.len()], 10, value, i as u64 * 10));
        }
        out
    }

    /// Every batch start of `bytes` with its uniform tenant.
    fn starts(bytes: &[u8]) -> Vec<(u32, Option<Vec<u8>>)> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < bytes.len() {
            let v = view_stored(&bytes[pos..]).expect("batch");
            out.push((pos as u32, v.uniform_tenant().map(<[u8]>::to_vec)));
            pos += v.bytes().len();
        }
        out
    }

    #[test]
    fn every_batch_of_a_tenant_lies_in_a_chunk_the_map_names_for_it() {
        let tenants: Vec<Vec<u8>> = (0..40)
            .map(|t| format!("tenant-{t}").into_bytes())
            .collect();
        let names: Vec<Option<&[u8]>> = tenants.iter().map(|t| Some(&t[..])).collect();
        let mut bytes = segment(&names, 400, 500); // ~2 MiB: 32 chunks
                                                   // A batch longer than a chunk: the chunks it covers have no batch start.
        bytes.extend(batch(Some(b"tenant-7"), 300, 500, 4000));
        bytes.extend(batch(Some(b"tenant-8"), 10, 500, 4300));
        let map = TenantMap::build(&bytes).expect("map");
        assert_eq!(map.chunks.len(), bytes.len().div_ceil(CHUNK_BYTES as usize));
        let all = starts(&bytes);
        for t in &tenants {
            let bits = tenant_bits(t);
            // The chunks a scan would visit, in order.
            let mut visited = Vec::new();
            let mut c = 0;
            while let Some(found) = map.next_chunk(bits, c) {
                visited.push(found);
                c = found + 1;
            }
            for (pos, tenant) in &all {
                if tenant.as_deref() == Some(&t[..]) {
                    assert!(
                        visited.contains(&TenantMap::chunk_of(*pos)),
                        "batch at {pos}"
                    );
                }
            }
            // And not every chunk: the filter tells tenants apart.
            assert!(
                visited.len() < map.chunks.len(),
                "{} of {}",
                visited.len(),
                map.chunks.len()
            );
        }
        // The first batch of each chunk is a batch start in it, and the chunk's batches
        // end where the next batch that starts in a later chunk starts (or the segment).
        for (i, c) in map.chunks.iter().enumerate() {
            if c.first != NO_BATCH {
                assert_eq!(TenantMap::chunk_of(c.first), i);
                assert!(all.iter().any(|(p, _)| *p == c.first));
                assert!(!all
                    .iter()
                    .any(|(p, _)| *p < c.first && TenantMap::chunk_of(*p) == i));
                let next = all
                    .iter()
                    .map(|(p, _)| *p)
                    .find(|p| TenantMap::chunk_of(*p) > i)
                    .unwrap_or(bytes.len() as u32);
                assert_eq!(map.run_end(i, bytes.len() as u32), next, "chunk {i}");
            }
        }
        assert!(
            map.chunks.iter().any(|c| c.first == NO_BATCH),
            "a chunk inside the long batch"
        );
    }

    #[test]
    fn a_batch_without_one_tenant_matches_every_tenant() {
        let mixed = segment(&[None], 3, 100);
        let map = TenantMap::build(&mixed).expect("map");
        assert_eq!(map.next_chunk(tenant_bits(b"anyone"), 0), Some(0));
    }

    #[test]
    fn a_map_is_read_back_only_for_its_own_file_and_intact() {
        let bytes = segment(&[Some(b"a"), Some(b"b")], 300, 400);
        let map = TenantMap::build(&bytes).expect("map");
        let file = FileIdentity {
            len: bytes.len() as u32,
            inode: 42,
            mtime_ns: 1_700_000_000_123_456_789,
        };
        let encoded = map.encode(&file);
        assert_eq!(TenantMap::decode(&encoded, &file), Some(map.clone()));
        for other in [
            FileIdentity { inode: 43, ..file },
            FileIdentity {
                mtime_ns: file.mtime_ns + 1,
                ..file
            },
            FileIdentity {
                len: file.len - 1,
                ..file
            },
        ] {
            assert_eq!(TenantMap::decode(&encoded, &other), None, "{other:?}");
        }
        for i in 0..encoded.len() {
            let mut torn = encoded.clone();
            torn[i] ^= 0x10;
            assert_eq!(TenantMap::decode(&torn, &file), None, "flip at {i}");
        }
        for cut in [0, 1, 4, HEAD_LEN, encoded.len() - 1] {
            assert_eq!(
                TenantMap::decode(&encoded[..cut], &file),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bytes_that_are_not_whole_batches_give_no_map() {
        let mut bytes = segment(&[Some(b"a")], 5, 100);
        bytes.truncate(bytes.len() - 3);
        assert_eq!(TenantMap::build(&bytes), None);
        assert_eq!(TenantMap::build(&[]).map(|m| m.chunks.len()), Some(0));
    }
}
