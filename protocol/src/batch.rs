//! The batch: the unit that is appended, stored, indexed and served.
//!
//! A batch is written once by a producer, checked once on arrival, and from then on its
//! bytes are never rewritten except for `base_offset`, which the log stamps. That field
//! sits *before* the CRC-covered region (as in Kafka's batch format) so stamping does not
//! invalidate the producer's checksum and the server never re-hashes.
//!
//! ```text
//! | 0..8   base_offset        u64 LE  stamped by the log; not covered by the CRC
//! | 8..12  batch_len          u32 LE  total bytes of the batch, header included
//! | 12..16 crc                u32 LE  CRC-32 (IEEE) of bytes 16..batch_len
//! | 16     magic              u8      format version, = 1
//! | 17     flags              u8      bit 0: TENANT_UNIFORM; bit 1: OFFSET_GAP (compaction only); others 0
//! | 18..20 tenant_len         u16 LE  length of the batch tenant (0 unless uniform)
//! | 20..24 record_count       u32 LE  number of records, >= 1
//! | 24..28 last_offset_delta  u32 LE  offset of the last record minus base_offset
//! | 28..36 first_timestamp_ms i64 LE  timestamp of the first record
//! | 36..44 max_timestamp_ms   i64 LE  largest record timestamp in the batch
//! | 44..52 producer_id        u64 LE  0 = not an idempotent producer
//! | 52..60 producer_seq       u64 LE  per-producer batch sequence number
//! | 60..64 reserved           u32 LE  must be 0
//! | 64..   tenant bytes (tenant_len), then the records (see `record.rs`)
//! ```
//!
//! Invariant of every batch stored in a log: it passed [`validate`], so its length, CRC
//! and record structure are sound, and offsets of its records are `base_offset +
//! offset_delta` with deltas strictly increasing up to `last_offset_delta`.
#![deny(clippy::indexing_slicing)]

use crate::record::{KeyedRecordIter, RecordIter, RecordView, RECORD_HAS_TENANT};

pub const BASE_OFFSET_AT: usize = 0;
pub const BATCH_LEN_AT: usize = BASE_OFFSET_AT + 8;
pub const CRC_AT: usize = BATCH_LEN_AT + 4;
/// First byte covered by the CRC.
pub const CRC_COVERED_FROM: usize = CRC_AT + 4;
pub const MAGIC_AT: usize = CRC_COVERED_FROM;
pub const FLAGS_AT: usize = MAGIC_AT + 1;
pub const TENANT_LEN_AT: usize = FLAGS_AT + 1;
pub const RECORD_COUNT_AT: usize = TENANT_LEN_AT + 2;
pub const LAST_OFFSET_DELTA_AT: usize = RECORD_COUNT_AT + 4;
pub const FIRST_TIMESTAMP_AT: usize = LAST_OFFSET_DELTA_AT + 4;
pub const MAX_TIMESTAMP_AT: usize = FIRST_TIMESTAMP_AT + 8;
pub const PRODUCER_ID_AT: usize = MAX_TIMESTAMP_AT + 8;
pub const PRODUCER_SEQ_AT: usize = PRODUCER_ID_AT + 8;
pub const RESERVED_AT: usize = PRODUCER_SEQ_AT + 8;
/// Length of the fixed header; the tenant bytes follow it.
pub const HEADER_LEN: usize = RESERVED_AT + 4;
const _: () = assert!(HEADER_LEN == 64);
const _: () = assert!(CRC_COVERED_FROM == 16);

pub const MAGIC: u8 = 1;
/// Every record of the batch belongs to the tenant named in the header; records then carry
/// no tenant of their own. Lets a tenant filter keep or skip the batch from its header.
pub const FLAG_TENANT_UNIFORM: u8 = 0b0000_0001;
/// Set by compaction, never by a producer: records before this batch were removed, so its
/// base offset may lie past the previous batch's end (a gap in the offsets).
pub const FLAG_OFFSET_GAP: u8 = 0b0000_0010;
/// Flags a producer may set ([`validate`] refuses the others).
const FLAGS_KNOWN: u8 = FLAG_TENANT_UNIFORM;

/// Longest tenant id, in bytes.
pub const TENANT_LEN_MAX: usize = 255;

/// The decoded fixed header of a batch (plus where its tenant lies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub batch_len: u32,
    pub crc: u32,
    pub flags: u8,
    pub tenant_len: u16,
    pub record_count: u32,
    pub last_offset_delta: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: u64,
    pub producer_seq: u64,
}

impl BatchHeader {
    /// Offset of the last record of the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta)
    }

    /// Offset right after the batch.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    /// Whether [`BatchHeader::next_offset`] is a `u64`: [`check_frame`] and [`view_stored`]
    /// refuse a header where it is not, so the offsets of a framed batch never overflow.
    fn offsets_fit(&self) -> bool {
        self.base_offset
            .checked_add(u64::from(self.last_offset_delta))
            .and_then(|last| last.checked_add(1))
            .is_some()
    }

    pub fn is_tenant_uniform(&self) -> bool {
        self.flags & FLAG_TENANT_UNIFORM != 0
    }

    /// Decodes the fixed header from the front of `buf` without checking the CRC.
    /// `None` if fewer than `HEADER_LEN` bytes are there.
    pub fn parse(buf: &[u8]) -> Option<BatchHeader> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(BatchHeader {
            base_offset: u64_at(h, BASE_OFFSET_AT),
            batch_len: u32_at(h, BATCH_LEN_AT),
            crc: u32_at(h, CRC_AT),
            flags: h[FLAGS_AT],
            tenant_len: u16::from_le_bytes([h[TENANT_LEN_AT], h[TENANT_LEN_AT + 1]]),
            record_count: u32_at(h, RECORD_COUNT_AT),
            last_offset_delta: u32_at(h, LAST_OFFSET_DELTA_AT),
            first_timestamp_ms: u64_at(h, FIRST_TIMESTAMP_AT) as i64,
            max_timestamp_ms: u64_at(h, MAX_TIMESTAMP_AT) as i64,
            producer_id: u64_at(h, PRODUCER_ID_AT),
            producer_seq: u64_at(h, PRODUCER_SEQ_AT),
        })
    }
}

// Constant indexes into a fixed-size array: checked at compile time, cannot panic.
#[allow(clippy::indexing_slicing)]
fn u32_at(h: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

fn u64_at(h: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(h.get(at..at + 8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(b)
}

/// A validated batch, borrowed from a buffer or a mapping.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    pub header: BatchHeader,
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// The whole batch, header included: the bytes as stored and served.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Tenant shared by every record, when the batch is tenant-uniform.
    pub fn uniform_tenant(&self) -> Option<&'a [u8]> {
        if self.header.is_tenant_uniform() {
            self.bytes
                .get(HEADER_LEN..HEADER_LEN + usize::from(self.header.tenant_len))
        } else {
            None
        }
    }

    /// The records of the batch, in order, decoded only as far as the tenant index needs
    /// (see [`KeyedRecordIter`]): for batches read back from the log.
    pub fn keyed_records(&self) -> KeyedRecordIter<'a> {
        let start = HEADER_LEN + usize::from(self.header.tenant_len);
        KeyedRecordIter::new(
            self.header.base_offset,
            self.uniform_tenant(),
            self.bytes.get(start..).unwrap_or(&[]),
        )
    }

    /// The records of the batch, in order.
    pub fn records(&self) -> RecordIter<'a> {
        let start = HEADER_LEN + usize::from(self.header.tenant_len);
        RecordIter::new(
            self.header,
            self.uniform_tenant(),
            self.bytes.get(start..).unwrap_or(&[]),
        )
    }
}

/// Why a run of bytes is not a valid batch. `Incomplete` means the bytes end before the
/// batch does, which in a log tail is a torn write, not corruption in the middle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    Incomplete { needed: usize, have: usize },
    Invalid(String),
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Incomplete { needed, have } => {
                write!(f, "batch needs {needed} bytes, only {have} present")
            }
            BatchError::Invalid(why) => f.write_str(why),
        }
    }
}

/// Checks length, flags and CRC of the batch at the front of `buf`, without decoding
/// records. This is what recovery runs on every batch of the tail.
pub fn check_frame(buf: &[u8]) -> Result<BatchView<'_>, BatchError> {
    let view = view_stored(buf)?;
    if buf.get(MAGIC_AT) != Some(&MAGIC) {
        return Err(BatchError::Invalid("unknown batch magic".into()));
    }
    let covered = view.bytes.get(CRC_COVERED_FROM..).unwrap_or(&[]);
    let crc = crc32fast::hash(covered);
    if crc != view.header.crc {
        return Err(BatchError::Invalid(format!(
            "crc mismatch: stored {:#010x}, computed {crc:#010x}",
            view.header.crc
        )));
    }
    Ok(view)
}

/// Frames the batch at the front of `buf` without computing its CRC: for batches read back
/// from a log that validated them on arrival (tenant filtering, extraction). Lengths and
/// the range of its offsets are still checked, and decoding its records stays
/// bounds-checked. ([`check_frame`] is this plus the magic and the CRC.)
pub fn view_stored(buf: &[u8]) -> Result<BatchView<'_>, BatchError> {
    let header = BatchHeader::parse(buf).ok_or(BatchError::Incomplete {
        needed: HEADER_LEN,
        have: buf.len(),
    })?;
    let len = header.batch_len as usize;
    if len < HEADER_LEN + usize::from(header.tenant_len) + 1 {
        return Err(BatchError::Invalid(format!("batch_len {len} too small")));
    }
    let bytes = buf.get(..len).ok_or(BatchError::Incomplete {
        needed: len,
        have: buf.len(),
    })?;
    if !header.offsets_fit() {
        return Err(BatchError::Invalid(format!(
            "base_offset {} + last_offset_delta {} overflows u64",
            header.base_offset, header.last_offset_delta
        )));
    }
    Ok(BatchView { header, bytes })
}

/// Full validation of a batch arriving from a producer: [`check_frame`], then header
/// rules and a structural walk over every record (bounds, count, deltas, tenant rules).
/// Afterwards, decoding its records cannot fail.
pub fn validate(buf: &[u8]) -> Result<BatchView<'_>, BatchError> {
    validate_each(buf, |_| {})
}

/// As [`validate`], handing every record to `visit` during the one walk, so a caller that
/// needs the records (the log's tenant index) does not decode the batch a second time.
/// `visit` may see records of a batch that later fails validation.
pub fn validate_each<'a>(
    buf: &'a [u8],
    mut visit: impl FnMut(&RecordView<'a>),
) -> Result<BatchView<'a>, BatchError> {
    let view = check_frame(buf)?;
    let h = view.header;
    if view.bytes.len() != buf.len() {
        return Err(BatchError::Invalid(format!(
            "batch_len {} but {} bytes given",
            h.batch_len,
            buf.len()
        )));
    }
    if h.flags & !FLAGS_KNOWN != 0 {
        return Err(BatchError::Invalid(format!(
            "unknown flags {:#04x}",
            h.flags
        )));
    }
    if buf.get(RESERVED_AT..HEADER_LEN) != Some(&[0, 0, 0, 0][..]) {
        return Err(BatchError::Invalid(
            "reserved header bytes are not zero".into(),
        ));
    }
    let tenant_len = usize::from(h.tenant_len);
    if h.is_tenant_uniform() != (tenant_len > 0) {
        return Err(BatchError::Invalid(
            "tenant_len must be > 0 exactly when TENANT_UNIFORM is set".into(),
        ));
    }
    if tenant_len > TENANT_LEN_MAX {
        return Err(BatchError::Invalid(format!("tenant of {tenant_len} bytes")));
    }
    if h.record_count == 0 || h.last_offset_delta < h.record_count - 1 {
        return Err(BatchError::Invalid(format!(
            "record_count {} inconsistent with last_offset_delta {}",
            h.record_count, h.last_offset_delta
        )));
    }
    if h.max_timestamp_ms < h.first_timestamp_ms {
        return Err(BatchError::Invalid(
            "max_timestamp before first_timestamp".into(),
        ));
    }
    let mut count = 0u32;
    let mut last_delta: Option<u32> = None;
    let mut max_ts = i64::MIN;
    for record in view.records() {
        let record = record.map_err(BatchError::Invalid)?;
        if let Some(prev) = last_delta {
            if record.offset_delta <= prev {
                return Err(BatchError::Invalid("offset deltas not increasing".into()));
            }
        } else if record.offset_delta != 0 {
            return Err(BatchError::Invalid(
                "first record offset_delta must be 0".into(),
            ));
        }
        if h.is_tenant_uniform() && record.attributes & RECORD_HAS_TENANT != 0 {
            return Err(BatchError::Invalid(
                "record tenant inside a tenant-uniform batch".into(),
            ));
        }
        last_delta = Some(record.offset_delta);
        max_ts = max_ts.max(record.timestamp_ms);
        count += 1;
        visit(&record);
    }
    if count != h.record_count || last_delta != Some(h.last_offset_delta) {
        return Err(BatchError::Invalid(format!(
            "header says {} records ending at delta {}, found {count} ending at {:?}",
            h.record_count, h.last_offset_delta, last_delta
        )));
    }
    if max_ts != h.max_timestamp_ms {
        return Err(BatchError::Invalid(
            "max_timestamp does not match the records".into(),
        ));
    }
    Ok(view)
}

/// Marks a batch as following a gap in the offsets (see [`FLAG_OFFSET_GAP`]) and
/// recomputes its CRC (the flags are covered by it).
pub fn mark_offset_gap(batch: &mut [u8]) {
    let Some(flags) = batch.get_mut(FLAGS_AT) else {
        return;
    };
    *flags |= FLAG_OFFSET_GAP;
    let crc = crc32fast::hash(batch.get(CRC_COVERED_FROM..).unwrap_or(&[]));
    if let Some(field) = batch.get_mut(CRC_AT..CRC_AT + 4) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
}

/// Writes the log-assigned base offset into a batch (outside the CRC region).
pub fn stamp_base_offset(batch: &mut [u8], base_offset: u64) {
    if let Some(field) = batch.get_mut(BASE_OFFSET_AT..BASE_OFFSET_AT + 8) {
        field.copy_from_slice(&base_offset.to_le_bytes());
    }
}

/// Reads `batch_len` of the batch at the front of `buf`, if the field is there.
pub fn peek_len(buf: &[u8]) -> Option<u32> {
    let b: [u8; 4] = buf.get(BATCH_LEN_AT..BATCH_LEN_AT + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}
