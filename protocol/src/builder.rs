//! Building batches from records: what a producer (the client library, tests, benches)
//! does before a batch reaches the log.
//!
//! The builder decides whether a batch is tenant-uniform (every record has the same
//! tenant), which lets tenant filters keep or skip it from the header alone.

use crate::batch::{self, HEADER_LEN};
use crate::record::{RecordView, RECORD_HAS_KEY, RECORD_HAS_TENANT, RECORD_HAS_VALUE};
use crate::varint;

/// A record as a producer hands it in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub timestamp_ms: i64,
    pub tenant: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Record {
    /// A record with just a value.
    pub fn value(timestamp_ms: i64, value: impl Into<Vec<u8>>) -> Record {
        Record {
            timestamp_ms,
            value: Some(value.into()),
            ..Record::default()
        }
    }
}

/// Identity of an idempotent producer: a retried batch with the same id and sequence is
/// appended once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: u64,
    pub sequence: u64,
}

/// Encodes `records` into one batch (base offset 0; the log stamps the real one).
/// Panics if `records` is empty or a tenant is longer than `TENANT_LEN_MAX`: both are
/// caller bugs, checked by the client before it gets here.
pub fn build_batch(records: &[Record], producer: ProducerStamp) -> Vec<u8> {
    let mut out = Vec::new();
    build_batch_into(&mut out, records, producer);
    out
}

/// As [`build_batch`], appending into a reusable buffer (cleared first).
pub fn build_batch_into(out: &mut Vec<u8>, records: &[Record], producer: ProducerStamp) {
    encode_batch(out, records, |i| i as u32, producer);
}

/// What the encoder needs of a record: implemented by owned [`Record`]s and by borrowed
/// [`RecordView`]s (so a server can re-encode a filtered subset of a batch).
pub trait RecordParts {
    fn timestamp_ms(&self) -> i64;
    fn tenant(&self) -> Option<&[u8]>;
    fn key(&self) -> Option<&[u8]>;
    fn value(&self) -> Option<&[u8]>;
    fn header_count(&self) -> usize;
    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])>;
}

impl RecordParts for Record {
    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }
    fn tenant(&self) -> Option<&[u8]> {
        self.tenant.as_deref()
    }
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
    fn header_count(&self) -> usize {
        self.headers.len()
    }
    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
    }
}

impl RecordParts for RecordView<'_> {
    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }
    fn tenant(&self) -> Option<&[u8]> {
        self.tenant
    }
    fn key(&self) -> Option<&[u8]> {
        self.key
    }
    fn value(&self) -> Option<&[u8]> {
        self.value
    }
    fn header_count(&self) -> usize {
        RecordView::headers(self).count()
    }
    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        RecordView::headers(self)
    }
}

/// Encodes records into one batch, record `i` at offset delta `offset_delta(i)` (which
/// must start at 0 and increase). Base offset 0: the log stamps the real one.
pub fn encode_batch<R: RecordParts>(
    out: &mut Vec<u8>,
    records: &[R],
    offset_delta: impl Fn(usize) -> u32,
    producer: ProducerStamp,
) {
    assert!(!records.is_empty(), "a batch holds at least one record");
    out.clear();
    let first_ts = records[0].timestamp_ms();
    let max_ts = records
        .iter()
        .map(|r| r.timestamp_ms())
        .max()
        .unwrap_or(first_ts);
    let uniform_tenant = uniform_tenant(records);
    let tenant_bytes = uniform_tenant.unwrap_or(&[]);
    assert!(
        tenant_bytes.len() <= batch::TENANT_LEN_MAX,
        "tenant too long"
    );

    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(tenant_bytes);
    let mut body = Vec::with_capacity(64);
    let mut last_delta = 0;
    for (i, record) in records.iter().enumerate() {
        body.clear();
        last_delta = offset_delta(i);
        encode_record(
            &mut body,
            record,
            u64::from(last_delta),
            first_ts,
            uniform_tenant.is_some(),
        );
        varint::put_u64(out, body.len() as u64);
        out.extend_from_slice(&body);
    }

    let count = records.len() as u32;
    let len = u32::try_from(out.len()).expect("batch larger than 4 GiB");
    out[batch::BATCH_LEN_AT..][..4].copy_from_slice(&len.to_le_bytes());
    out[batch::MAGIC_AT] = batch::MAGIC;
    out[batch::FLAGS_AT] = if uniform_tenant.is_some() {
        batch::FLAG_TENANT_UNIFORM
    } else {
        0
    };
    out[batch::TENANT_LEN_AT..][..2].copy_from_slice(&(tenant_bytes.len() as u16).to_le_bytes());
    out[batch::RECORD_COUNT_AT..][..4].copy_from_slice(&count.to_le_bytes());
    out[batch::LAST_OFFSET_DELTA_AT..][..4].copy_from_slice(&last_delta.to_le_bytes());
    out[batch::FIRST_TIMESTAMP_AT..][..8].copy_from_slice(&first_ts.to_le_bytes());
    out[batch::MAX_TIMESTAMP_AT..][..8].copy_from_slice(&max_ts.to_le_bytes());
    out[batch::PRODUCER_ID_AT..][..8].copy_from_slice(&producer.producer_id.to_le_bytes());
    out[batch::PRODUCER_SEQ_AT..][..8].copy_from_slice(&producer.sequence.to_le_bytes());
    let crc = crc32fast::hash(&out[batch::CRC_COVERED_FROM..]);
    out[batch::CRC_AT..][..4].copy_from_slice(&crc.to_le_bytes());
}

fn uniform_tenant<R: RecordParts>(records: &[R]) -> Option<&[u8]> {
    let first = records[0].tenant()?;
    records
        .iter()
        .all(|r| r.tenant() == Some(first))
        .then_some(first)
}

fn encode_record<R: RecordParts>(
    out: &mut Vec<u8>,
    r: &R,
    offset_delta: u64,
    first_ts: i64,
    uniform: bool,
) {
    let mut attributes = 0;
    if r.key().is_some() {
        attributes |= RECORD_HAS_KEY;
    }
    if r.value().is_some() {
        attributes |= RECORD_HAS_VALUE;
    }
    let own_tenant = if uniform { None } else { r.tenant() };
    if let Some(t) = own_tenant {
        assert!(
            !t.is_empty() && t.len() <= batch::TENANT_LEN_MAX,
            "tenant length"
        );
        attributes |= RECORD_HAS_TENANT;
    }
    out.push(attributes);
    varint::put_u64(out, offset_delta);
    varint::put_u64(out, varint::zigzag(r.timestamp_ms().wrapping_sub(first_ts)));
    for field in [own_tenant, r.key(), r.value()].into_iter().flatten() {
        put_bytes(out, field);
    }
    varint::put_u64(out, r.header_count() as u64);
    for (name, value) in r.headers() {
        put_bytes(out, name);
        put_bytes(out, value);
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    varint::put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{validate, BatchError};
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            -1_000_000i64..1_000_000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 1..8)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..4),
                    proptest::collection::vec(any::<u8>(), 0..4),
                ),
                0..3,
            ),
        )
            .prop_map(|(ts, tenant, key, value, headers)| Record {
                timestamp_ms: 1_700_000_000_000 + ts,
                tenant,
                key,
                value,
                headers,
            })
    }

    proptest! {
        #[test]
        fn batches_round_trip(records in proptest::collection::vec(arb_record(), 1..20), pid in any::<u64>(), seq in any::<u64>()) {
            let bytes = build_batch(&records, ProducerStamp { producer_id: pid, sequence: seq });
            let view = validate(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(view.header.producer_id, pid);
            prop_assert_eq!(view.header.record_count as usize, records.len());
            let decoded: Vec<Record> = view.records().map(|r| {
                let r = r.expect("validated");
                Record {
                    timestamp_ms: r.timestamp_ms,
                    tenant: r.tenant.map(<[u8]>::to_vec),
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.map(<[u8]>::to_vec),
                    headers: r.headers().map(|(n, v)| (n.to_vec(), v.to_vec())).collect(),
                }
            }).collect();
            prop_assert_eq!(decoded, records);
        }

        #[test]
        fn validate_never_panics_on_mutations(records in proptest::collection::vec(arb_record(), 1..5), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4), cut in any::<usize>()) {
            let mut bytes = build_batch(&records, ProducerStamp::default());
            for (at, x) in flips {
                let at = at % bytes.len();
                bytes[at] ^= x;
            }
            let cut = cut % (bytes.len() + 1);
            let _ = validate(&bytes[..cut]);
            let _ = validate(&bytes);
        }
    }

    #[test]
    fn single_bit_flip_in_covered_region_is_detected() {
        let records: Vec<Record> = (0..10)
            .map(|i| Record::value(i, vec![i as u8; 30]))
            .collect();
        let bytes = build_batch(&records, ProducerStamp::default());
        for byte in batch::CRC_COVERED_FROM..bytes.len() {
            for bit in 0..8 {
                let mut copy = bytes.clone();
                copy[byte] ^= 1 << bit;
                assert!(validate(&copy).is_err(), "flip at {byte}:{bit} undetected");
            }
        }
    }

    #[test]
    fn stamping_the_base_offset_keeps_the_crc_valid() {
        let mut bytes = build_batch(&[Record::value(5, "x")], ProducerStamp::default());
        batch::stamp_base_offset(&mut bytes, 123_456);
        let view = validate(&bytes).expect("still valid");
        assert_eq!(view.header.base_offset, 123_456);
        assert_eq!(
            view.records().next().and_then(Result::ok).map(|r| r.offset),
            Some(123_456)
        );
    }

    #[test]
    fn truncated_batch_is_incomplete_not_invalid() {
        let bytes = build_batch(&[Record::value(5, "hello")], ProducerStamp::default());
        assert!(matches!(
            validate(&bytes[..10]),
            Err(BatchError::Incomplete { .. })
        ));
        assert!(matches!(
            batch::check_frame(&bytes[..bytes.len() - 1]),
            Err(BatchError::Incomplete { .. })
        ));
    }

    #[test]
    fn uniform_tenant_goes_to_the_header() {
        let mk = |t: &str| Record {
            tenant: Some(t.as_bytes().to_vec()),
            ..Record::value(1, "v")
        };
        let uniform = build_batch(&[mk("acme"), mk("acme")], ProducerStamp::default());
        let view = validate(&uniform).expect("valid");
        assert_eq!(view.uniform_tenant(), Some(&b"acme"[..]));
        assert!(view
            .records()
            .all(|r| r.expect("ok").tenant == Some(&b"acme"[..])));
        let mixed = build_batch(&[mk("acme"), mk("zeta")], ProducerStamp::default());
        let view = validate(&mixed).expect("valid");
        assert_eq!(view.uniform_tenant(), None);
        let tenants: Vec<_> = view.records().map(|r| r.expect("ok").tenant).collect();
        assert_eq!(tenants, vec![Some(&b"acme"[..]), Some(&b"zeta"[..])]);
    }
}
