//! Open time of a partition whose active segment holds 1 GiB: after a crash with nothing
//! checkpointed (every batch CRC-checked: the worst case), and after a clean shutdown
//! (no scanning at all).
//!
//! Run: `cargo bench -p tidelog-bench --bench recovery`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidelog_bench::{big_segment_topic, event_batch};
use tidelog_engine::{Engine, EngineConfig};

const ACTIVE_BYTES: u64 = 1 << 30;

fn no_flush() -> EngineConfig {
    EngineConfig {
        // Nothing gets checkpointed: recovery must scan the whole active segment.
        flush_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    }
}

fn recovery(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let engine = Engine::open(dir.path(), no_flush()).expect("open");
        engine
            .create_topic("t", big_segment_topic((ACTIVE_BYTES + (64 << 20)) as u32))
            .expect("create");
        let p = engine.partition("t", 0).expect("partition");
        let batch = event_batch(100, 1024);
        while p.size_bytes() < ACTIVE_BYTES {
            p.append(&batch).expect("fill");
        }
        // Dropped without close: a crash.
    }
    let mut group = c.benchmark_group("open_1GiB_active_segment");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(ACTIVE_BYTES));
    group.bench_function("after_crash_full_scan", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let engine = Engine::open(dir.path(), no_flush()).expect("recover");
                total += start.elapsed();
                assert!(!engine.recovery_reports()[0].2.clean);
                drop(engine); // still unclean for the next iteration
            }
            total
        })
    });
    group.bench_function("after_clean_shutdown", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                Engine::open(dir.path(), no_flush())
                    .expect("open")
                    .close()
                    .expect("close");
                let start = Instant::now();
                let engine = Engine::open(dir.path(), no_flush()).expect("open");
                total += start.elapsed();
                assert!(engine.recovery_reports()[0].2.clean);
                drop(engine);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
