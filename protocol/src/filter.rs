//! Tenant filtering of stored batches, for tenant-filtered fetches and subscriptions.
//!
//! A tenant-uniform batch is kept or skipped whole from its header, without decoding a
//! record: that is the hot path, and producers that batch per tenant (the client library
//! does) only ever hit it. A mixed batch is decoded and the matching records re-encoded
//! into a new batch that keeps their offsets (its base offset is the first kept record's;
//! offset deltas may have gaps, which the format allows) and gets a fresh CRC.

use crate::batch::{self, BatchView};
use crate::builder::{encode_batch, ProducerStamp};

/// What to send of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// Send the stored bytes as they are.
    Whole,
    /// Nothing of this batch belongs to the tenant.
    Skip,
    /// These bytes (a new batch of the matching records).
    Rebuilt(Vec<u8>),
}

/// Filters one (validated) batch down to `tenant`'s records.
pub fn filter_batch(view: &BatchView<'_>, tenant: &[u8]) -> Filtered {
    if let Some(t) = view.uniform_tenant() {
        return if t == tenant {
            Filtered::Whole
        } else {
            Filtered::Skip
        };
    }
    let kept: Vec<_> = view
        .records()
        .filter_map(Result::ok)
        .filter(|r| r.tenant == Some(tenant))
        .collect();
    let Some(first) = kept.first() else {
        return Filtered::Skip;
    };
    if kept.len() as u32 == view.header.record_count {
        return Filtered::Whole;
    }
    let base = first.offset;
    let mut out = Vec::new();
    encode_batch(
        &mut out,
        &kept,
        |i| (kept[i].offset - base) as u32,
        ProducerStamp::default(),
    );
    batch::stamp_base_offset(&mut out, base);
    Filtered::Rebuilt(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate;
    use crate::builder::{build_batch, Record};

    fn rec(tenant: &str, n: u8) -> Record {
        Record {
            tenant: Some(tenant.as_bytes().to_vec()),
            key: Some(vec![n]),
            value: Some(vec![n; 3]),
            timestamp_ms: i64::from(n),
            headers: vec![(b"h".to_vec(), vec![n])],
        }
    }

    #[test]
    fn uniform_batches_are_kept_or_skipped_whole() {
        let b = build_batch(&[rec("a", 1), rec("a", 2)], ProducerStamp::default());
        let v = validate(&b).expect("valid");
        assert_eq!(filter_batch(&v, b"a"), Filtered::Whole);
        assert_eq!(filter_batch(&v, b"b"), Filtered::Skip);
    }

    #[test]
    fn mixed_batches_keep_offsets_of_matching_records() {
        let mut b = build_batch(
            &[rec("a", 1), rec("b", 2), rec("a", 3), rec("b", 4)],
            ProducerStamp::default(),
        );
        batch::stamp_base_offset(&mut b, 100);
        let v = validate(&b).expect("valid");
        let Filtered::Rebuilt(out) = filter_batch(&v, b"b") else {
            panic!("rebuilt expected")
        };
        let f = validate(&out).expect("rebuilt batch is valid");
        let got: Vec<_> = f
            .records()
            .map(|r| r.expect("ok"))
            .map(|r| {
                (
                    r.offset,
                    r.key.map(<[u8]>::to_vec),
                    r.tenant.map(<[u8]>::to_vec),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (101, Some(vec![2]), Some(b"b".to_vec())),
                (103, Some(vec![4]), Some(b"b".to_vec()))
            ]
        );
        assert_eq!(f.header.last_offset(), 103);
        assert_eq!(filter_batch(&v, b"zzz"), Filtered::Skip);
    }
}
