//! `history`: a tenant's past events, out of a partition it shares with other tenants —
//! what a history extraction costs against the tenant's own data and against the whole
//! partition's.
//!
//! The log (untimed): `--count` records in tenant-uniform batches of `--batch` records,
//! as the client's producer makes them (it batches per partition and tenant); one batch
//! in `--tenants` is the measured tenant's, the others belong to `--tenants` − 1 other
//! tenants in turn. Every record has a `type` header, `share` for one record in four and
//! `upload` otherwise, so `--header type=share` selects a quarter of the tenant's events.
//!
//! Timed: a history extraction of the tenant (`extract_then_follow` in history mode, up
//! to its watermark), then, for the ratio, a plain fetch of the whole partition to the
//! same watermark. Verified: the extraction's records are exactly the tenant's records
//! that meet the criteria in the fetched partition, in offset order, each once, with
//! their values — the history property, on a log with no writers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tidelog_client::{
    build_batch, Ack, ExtractCriteria, ExtractMode, ProducerStamp, Record, StartAt,
};

use crate::report::Report;
use crate::scenarios::{create_topic, drain_to_watermark};
use crate::verify::Verdict;
use crate::{Common, Target};

const TENANT: &[u8] = b"history-tenant";
/// Batches sent in one PUBLISH while filling.
const BATCHES_PER_PUBLISH: usize = 16;

/// The `type` header of record `i` of the log.
fn record_type(i: u64) -> &'static [u8] {
    if i % 4 == 0 {
        b"share"
    } else {
        b"upload"
    }
}

/// Whether a record with `present` headers meets `wanted` (every name = value there).
fn matches<'a>(
    present: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
    wanted: &[(String, String)],
) -> bool {
    wanted.iter().all(|(name, value)| {
        present
            .clone()
            .any(|(n, v)| n == name.as_bytes() && v == value.as_bytes())
    })
}

pub fn history(
    target: &Target,
    c: &Common,
    tenants: u64,
    headers: &[(String, String)],
    progress: &Arc<AtomicU64>,
) -> Result<Report, String> {
    let admin = target.connect()?;
    create_topic(&admin, c)?;
    let partition =
        tidelog_protocol::partitioner::partition_for(Some(TENANT), None, c.partitions).unwrap_or(0);
    let tenants = tenants.max(1);
    // Fill.
    let mut written = 0u64;
    let mut batch_no = 0u64;
    let mut request = Vec::new();
    while written < c.count {
        request.clear();
        for _ in 0..BATCHES_PER_PUBLISH {
            if written >= c.count {
                break;
            }
            let n = (c.batch as u64).min(c.count - written);
            let tenant = match batch_no % tenants {
                0 => TENANT.to_vec(),
                t => format!("other-{t}").into_bytes(),
            };
            let now_ms = (crate::payload::now_ns() / 1_000_000) as i64;
            let records: Vec<Record> = (written..written + n)
                .map(|i| {
                    let mut value = vec![0xA5u8; c.record_size.max(8)];
                    value[..8].copy_from_slice(&i.to_le_bytes());
                    Record {
                        timestamp_ms: now_ms,
                        tenant: Some(tenant.clone()),
                        key: Some(format!("key-{:08}", i % 100_000).into_bytes()),
                        value: Some(value),
                        headers: vec![(b"type".to_vec(), record_type(i).to_vec())],
                    }
                })
                .collect();
            request.extend_from_slice(&build_batch(&records, ProducerStamp::default()));
            written += n;
            // The bar follows the fill (`--count` records, the run's long part).
            progress.fetch_add(n, Ordering::Relaxed);
            batch_no += 1;
        }
        admin
            .publish(&c.topic, partition, Ack::Written, &request)
            .map_err(|e| format!("fill: {e}"))?;
    }
    // The history extraction, timed to its watermark.
    let criteria = ExtractCriteria {
        headers: headers.to_vec(),
        ..ExtractCriteria::default()
    };
    let client = target.connect()?;
    let started = Instant::now();
    let mut stream = client
        .extract_then_follow(&c.topic, TENANT, ExtractMode::History, criteria)
        .map_err(|e| format!("extract: {e}"))?;
    let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut bytes = 0u64;
    let (watermark, first_record) = drain_to_watermark(&mut stream, c.timeout, started, |r| {
        let value = r.value.unwrap_or_default();
        bytes += value.len() as u64;
        got.push((r.offset, value));
    })?;
    let seconds = started.elapsed().as_secs_f64();
    drop(stream);
    // The whole partition up to the watermark, as the fastest consumer without history
    // mode would read it to pick the tenant's events out itself (raw batches, one fetch
    // always in flight, records read in place): the time to compare, and the reference.
    let end = watermark.map_or(0, |w| w + 1);
    let fetch_started = Instant::now();
    let mut expected: Vec<(u64, Vec<u8>)> = Vec::new();
    let (mut fetched_bytes, mut tenant_bytes, mut tenant_records) = (0u64, 0u64, 0u64);
    let fetch = |at: u64| {
        admin
            .send_fetch_batches(&c.topic, partition, StartAt::Offset(at), 8 << 20, None)
            .map_err(|e| format!("fetch: {e}"))
    };
    let mut next = (end > 0).then(|| fetch(0)).transpose()?;
    while let Some(pending) = next.take() {
        let f = pending.wait().map_err(|e| format!("fetch: {e}"))?;
        if f.next_offset < end && !f.is_empty() {
            next = Some(fetch(f.next_offset)?);
        }
        f.for_each(|r| {
            if r.offset >= end {
                return;
            }
            let value = r.value.unwrap_or(&[]);
            fetched_bytes += value.len() as u64;
            if r.tenant == Some(TENANT) {
                tenant_bytes += value.len() as u64;
                tenant_records += 1;
                if matches(r.headers(), headers) {
                    expected.push((r.offset, value.to_vec()));
                }
            }
        })
        .map_err(|e| format!("fetch: {e}"))?;
    }
    let fetch_seconds = fetch_started.elapsed().as_secs_f64();
    let verdict = compare(&expected, &got);
    let mut settings = c.settings();
    settings["tenants"] = tenants.into();
    settings["criteria_headers"] = headers
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .into();
    settings["watermark"] = watermark.into();
    settings["tenant_records"] = tenant_records.into();
    settings["tenant_share_of_partition_bytes"] =
        (tenant_bytes as f64 / fetched_bytes.max(1) as f64).into();
    settings["time_to_first_record_us"] = first_record.map_or(0, |d| d.as_micros() as u64).into();
    settings["partition_records"] = end.into();
    settings["partition_mb_scanned_per_sec"] =
        (fetched_bytes as f64 / 1e6 / seconds.max(1e-9)).into();
    settings["fetch_whole_partition_seconds"] = fetch_seconds.into();
    settings["fetch_whole_partition_mb_per_sec"] =
        (fetched_bytes as f64 / 1e6 / fetch_seconds.max(1e-9)).into();
    settings["history_vs_fetch_whole_partition_seconds"] =
        (seconds / fetch_seconds.max(1e-9)).into();
    Ok(Report {
        scenario: "history".into(),
        records: got.len() as u64,
        bytes,
        seconds,
        latency: None,
        verdict: Some(verdict),
        cpu: None,
        settings,
    })
}

/// `got` against `expected` (both in the order received): missing, duplicate and
/// out-of-order records by offset; a record whose value differs counts as missing.
fn compare(expected: &[(u64, Vec<u8>)], got: &[(u64, Vec<u8>)]) -> Verdict {
    use std::collections::BTreeMap;
    let want: BTreeMap<u64, &Vec<u8>> = expected.iter().map(|(o, v)| (*o, v)).collect();
    let mut seen = BTreeMap::new();
    let (mut duplicate, mut out_of_order, mut foreign) = (0, 0, 0);
    let mut last = None;
    for (offset, value) in got {
        if last.is_some_and(|l| *offset <= l) {
            out_of_order += 1;
        }
        last = Some(*offset);
        match want.get(offset) {
            Some(v) if *v == value => {
                if seen.insert(*offset, ()).is_some() {
                    duplicate += 1;
                }
            }
            _ => foreign += 1,
        }
    }
    Verdict {
        expected: expected.len() as u64,
        missing: (expected.len() - seen.len()) as u64,
        duplicate,
        out_of_order,
        foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: u64, v: u8) -> (u64, Vec<u8>) {
        (offset, vec![v])
    }

    #[test]
    fn the_comparison_finds_every_kind_of_fault() {
        let expected = [rec(1, 1), rec(5, 5), rec(9, 9)];
        assert!(compare(&expected, &expected).passed());
        let v = compare(&expected, &[rec(1, 1), rec(9, 9)]);
        assert_eq!((v.missing, v.passed()), (1, false));
        let v = compare(&expected, &[rec(1, 1), rec(5, 5), rec(5, 5), rec(9, 9)]);
        assert_eq!((v.duplicate, v.out_of_order), (1, 1));
        let v = compare(&expected, &[rec(5, 5), rec(1, 1), rec(9, 9)]);
        assert_eq!((v.out_of_order, v.missing), (1, 0));
        // A record of another tenant, or one whose value differs.
        let v = compare(&expected, &[rec(1, 1), rec(3, 3), rec(5, 6), rec(9, 9)]);
        assert_eq!((v.foreign, v.missing), (2, 1));
    }

    #[test]
    fn a_quarter_of_the_records_are_shares() {
        let shares = (0..1000).filter(|&i| record_type(i) == b"share").count();
        assert_eq!(shares, 250);
    }
}
