//! Validating a batch on arrival: every record of every published batch goes through
//! `batch::validate_each` on the server's event loop (CRC, then a structural walk of each
//! record), so its cost per record bounds the small-record publish rate.
//!
//! Run: `cargo bench -p tidelog-bench --bench protocol`. Figures go in
//! docs/BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidelog_protocol::batch::validate_each;
use tidelog_protocol::builder::{build_batch, ProducerStamp, Record};

/// A batch shaped like `tidelog-bench publish`'s: `records` values of `value_bytes`, and
/// with `tenant`, a tenant-uniform batch whose records each carry a 14-byte key.
fn batch(records: usize, value_bytes: usize, tenant: Option<&[u8]>) -> Vec<u8> {
    let list: Vec<Record> = (0..records)
        .map(|i| Record {
            timestamp_ms: 1_700_000_000_000,
            tenant: tenant.map(<[u8]>::to_vec),
            key: tenant.map(|_| format!("key-{i:010}").into_bytes()),
            value: Some(vec![0xA5; value_bytes]),
            headers: Vec::new(),
        })
        .collect();
    build_batch(&list, ProducerStamp::default())
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_batch");
    for (name, records, value_bytes, tenant) in [
        ("1000x100B", 1000, 100, None),
        ("100x1KiB", 100, 1024, None),
        ("100x200B_keyed", 100, 200, Some(&b"tenant-0042"[..])),
    ] {
        let bytes = batch(records, value_bytes, tenant);
        group.throughput(Throughput::Elements(records as u64));
        group.bench_function(BenchmarkId::new("validate_each", name), |b| {
            b.iter(|| {
                let mut keys = 0usize;
                let view =
                    validate_each(black_box(&bytes), |r| keys += r.key.map_or(0, <[u8]>::len))
                        .expect("valid");
                black_box((view.header.record_count, keys))
            })
        });
        // The CRC alone, over the same bytes: what validation costs beyond it is the walk.
        group.bench_function(BenchmarkId::new("crc_only", name), |b| {
            b.iter(|| crc32fast::hash(black_box(&bytes)))
        });
    }
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
