//! The tenant index's hot path: applying queued updates (what the indexer thread does for
//! every keyed record) to a tenant that already has many live keys, updated at random, and
//! hashing a key (what the appender does per keyed record); encoding its checkpoint; and a
//! sealed segment's tenant map (made at every seal; read by every history extraction).
//!
//! Run: `cargo bench -p tidelog-bench --bench tenant_index`. Figures go in
//! docs/BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidelog_bench::{index_updates, random_keys};
use tidelog_engine::key_map::key_hash;
use tidelog_engine::tenant_index::{PendingUpdates, TenantIndex};

/// Updates applied per iteration (a few indexer rounds' worth).
const UPDATES: usize = 16_384;
const TENANT: &[u8] = b"tenant-0042";

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("tenant_index_apply");
    group.throughput(Throughput::Elements(UPDATES as u64));
    for keys in [10_000u64, 1_000_000] {
        // The tenant's keys all present first: the steady state of a long-lived tenant
        // (updates of existing keys at random, no table growth).
        let mut index = TenantIndex::default();
        index.apply_pending(&index_updates(TENANT, 0..keys, 0));
        // Several queues, so one iteration does not find the previous one's slots cached.
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        let queues: Vec<PendingUpdates> = (0..8)
            .map(|i| {
                let first = keys + (i * UPDATES) as u64;
                index_updates(TENANT, random_keys(&mut seed, keys, UPDATES), first)
            })
            .collect();
        let mut next = 0;
        group.bench_function(BenchmarkId::new("random_updates", keys), |b| {
            b.iter(|| {
                index.apply_pending(black_box(&queues[next % queues.len()]));
                next += 1;
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("key_hash");
    let key = b"file-00123456";
    group.throughput(Throughput::Elements(1));
    group.bench_function("xxh3_128_13B", |b| b.iter(|| key_hash(black_box(key))));
    group.finish();
}

/// The index checkpoint the indexer writes at segment rolls: O(keys), on the indexer
/// thread, under the index lock — streamed to its file (what the indexer does; the page
/// cache's copy included, not the fsync, which comes later outside the lock), and
/// encoded in memory (what it did before, and what a clean close did).
fn checkpoint(c: &mut Criterion) {
    let mut group = c.benchmark_group("tenant_index_checkpoint");
    let keys = 1_000_000u64;
    let mut index = TenantIndex::default();
    index.apply_pending(&index_updates(TENANT, 0..keys, 0));
    group.throughput(Throughput::Elements(keys));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tenants.0.tmp");
    group.bench_function(BenchmarkId::new("write", keys), |b| {
        b.iter(|| black_box(index.write_checkpoint(&path).expect("written")))
    });
    group.bench_function(BenchmarkId::new("encode", keys), |b| {
        b.iter(|| black_box(index.encode().len()))
    });
    // Loading it back (a restart): a checkpoint lists keys in the slot order of the table
    // it was encoded from. 700 000 keys fill 2^20 slots to 2/3, the load at which a list
    // in slot order, inserted as it comes into a growing table, piled every key after
    // the first wrap-around into one run (seconds, not milliseconds).
    group.sample_size(10);
    for keys in [1_000_000u64, 700_000] {
        let mut index = TenantIndex::default();
        index.apply_pending(&index_updates(TENANT, 0..keys, 0));
        let encoded = index.encode();
        group.throughput(Throughput::Elements(keys));
        group.bench_function(BenchmarkId::new("decode", keys), |b| {
            b.iter(|| black_box(TenantIndex::decode(&encoded).map(|i| i.next_offset())))
        });
    }
    group.finish();
}

/// A segment of 64 MiB in tenant-uniform batches of 100 records of 200 bytes (~21 KiB),
/// 64 tenants in turn: making its tenant map (a walk over the batch headers, as at a
/// seal), and finding one tenant's chunks in it (as a history scan does).
fn tenant_map(c: &mut Criterion) {
    use tidelog_engine::tenant_map::{tenant_bits, TenantMap};
    use tidelog_engine::{build_batch, ProducerStamp, Record};
    let mut group = c.benchmark_group("tenant_map");
    let mut segment = Vec::with_capacity(64 << 20);
    let mut i = 0u64;
    while segment.len() < 64 << 20 {
        let tenant = format!("tenant-{}", i % 64).into_bytes();
        let records: Vec<Record> = (0..100)
            .map(|r| Record {
                timestamp_ms: 1_700_000_000_000,
                tenant: Some(tenant.clone()),
                key: Some(format!("file-{r:08}").into_bytes()),
                value: Some(vec![7; 200]),
                headers: Vec::new(),
            })
            .collect();
        segment.extend(build_batch(&records, ProducerStamp::default()));
        i += 1;
    }
    group.throughput(Throughput::Bytes(segment.len() as u64));
    group.bench_function("build_64MiB", |b| {
        b.iter(|| black_box(TenantMap::build(&segment).map(|m| m.heap_bytes())))
    });
    // The worst case for the walk: a batch per record of 100 bytes.
    let mut singles = Vec::with_capacity(64 << 20);
    while singles.len() < 64 << 20 {
        let record = Record {
            timestamp_ms: 1_700_000_000_000,
            tenant: Some(format!("tenant-{}", singles.len() % 64).into_bytes()),
            key: Some(b"file-00000001".to_vec()),
            value: Some(vec![7; 100]),
            headers: Vec::new(),
        };
        singles.extend(build_batch(&[record], ProducerStamp::default()));
    }
    group.bench_function("build_64MiB_single_record_batches", |b| {
        b.iter(|| black_box(TenantMap::build(&singles).map(|m| m.heap_bytes())))
    });
    let map = TenantMap::build(&segment).expect("map");
    let bits = tenant_bits(b"tenant-7");
    group.bench_function("chunks_of_one_tenant_64MiB", |b| {
        b.iter(|| {
            let (mut n, mut at) = (0, 0);
            while let Some(c) = map.next_chunk(bits, at) {
                n += 1;
                at = c + 1;
            }
            black_box(n)
        })
    });
    group.finish();
}

criterion_group!(benches, apply, checkpoint, tenant_map);
criterion_main!(benches);
