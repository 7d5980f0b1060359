//! Engine hot paths: append (vs memcpy of the same bytes), read (slice lookup, and slice
//! plus a copy as a socket write would do), and durable append under group commit.
//!
//! Run: `cargo bench -p tidelog-bench --bench engine`. Figures go in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidelog_bench::{big_segment_topic, event_batch};
use tidelog_engine::{AckLevel, Engine, EngineConfig, TopicConfig};

const SEGMENT_BYTES: u32 = 256 << 20;

fn engine(dir: &std::path::Path) -> Engine {
    Engine::open(dir, EngineConfig::default()).expect("open engine")
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    for (records, value_len) in [(100usize, 1024usize), (1000, 100)] {
        let batch = event_batch(records, value_len);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        let id = format!("{records}x{value_len}B");

        // Yardstick: copying the same bytes into a large buffer, as the append does into
        // the mapping.
        let mut arena = vec![0u8; SEGMENT_BYTES as usize];
        let mut pos = 0usize;
        group.bench_function(BenchmarkId::new("memcpy", &id), |b| {
            b.iter(|| {
                if pos + batch.len() > arena.len() {
                    pos = 0;
                }
                arena[pos..pos + batch.len()].copy_from_slice(black_box(&batch));
                pos += batch.len();
            })
        });
        drop(arena);

        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine(dir.path());
        let cfg = TopicConfig {
            retention_bytes: 2 * u64::from(SEGMENT_BYTES),
            ..big_segment_topic(SEGMENT_BYTES)
        };
        engine.create_topic("t", cfg).expect("create");
        let p = engine.partition("t", 0).expect("partition");
        group.bench_function(BenchmarkId::new("engine", &id), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(p.append(black_box(&batch)).expect("append"));
                }
                let elapsed = start.elapsed();
                // Keep the disk footprint bounded between samples (not timed).
                engine.apply_retention().expect("retention");
                elapsed
            })
        });
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    engine
        .create_topic("t", big_segment_topic(SEGMENT_BYTES))
        .expect("create");
    let p = engine.partition("t", 0).expect("partition");
    let batch = event_batch(100, 1024);
    while p.size_bytes() < 200 << 20 {
        p.append(&batch).expect("fill");
    }
    let next = p.next_offset();
    let mut group = c.benchmark_group("read_1MiB");
    group.throughput(Throughput::Bytes(1 << 20));
    let mut offset = 0u64;
    let step = 7919; // a prime stride visits offsets all over the log
    group.bench_function("slice", |b| {
        b.iter(|| {
            offset = (offset + step) % next;
            let f = p.read(black_box(offset), 1 << 20).expect("read");
            black_box(f.len())
        })
    });
    let mut sink = vec![0u8; 2 << 20];
    group.bench_function("slice_and_copy", |b| {
        b.iter(|| {
            offset = (offset + step) % next;
            let f = p.read(black_box(offset), 1 << 20).expect("read");
            sink[..f.len()].copy_from_slice(&f);
            black_box(&sink);
        })
    });
    let src = vec![7u8; 1 << 20];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            sink[..src.len()].copy_from_slice(black_box(&src));
            black_box(&sink);
        })
    });
    group.finish();
}

/// N threads each append durable batches; throughput in batches, and the flusher's sync
/// count shows how many appends each sync covered.
fn durable_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable_append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let batch = Arc::new(event_batch(10, 1024));
    for appenders in [1usize, 8, 64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(engine(dir.path()));
        let cfg = TopicConfig {
            retention_bytes: 2 * u64::from(SEGMENT_BYTES),
            ..big_segment_topic(SEGMENT_BYTES)
        };
        engine.create_topic("t", cfg).expect("create");
        group.throughput(Throughput::Elements(appenders as u64));
        let (mut appends, mut syncs) = (0u64, 0u64);
        group.bench_function(BenchmarkId::from_parameter(appenders), |b| {
            b.iter_custom(|iters| {
                let syncs_before = engine.sync_count();
                let start = Instant::now();
                let threads: Vec<_> = (0..appenders)
                    .map(|_| {
                        let (engine, batch) = (engine.clone(), batch.clone());
                        std::thread::spawn(move || {
                            for _ in 0..iters {
                                engine
                                    .append("t", 0, &batch, AckLevel::Durable)
                                    .expect("append");
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().expect("join");
                }
                let elapsed = start.elapsed();
                appends += iters * appenders as u64;
                syncs += engine.sync_count() - syncs_before;
                engine.apply_retention().expect("retention");
                elapsed
            })
        });
        eprintln!(
            "durable_append/{appenders}: {appends} durable appends, {syncs} syncs, {:.1} appends per sync",
            appends as f64 / syncs.max(1) as f64
        );
    }
    group.finish();
}

criterion_group!(benches, append, read, durable_append);
criterion_main!(benches);
