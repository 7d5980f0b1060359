//! Retention deletes only whole sealed segments past the limits; reads below the earliest
//! offset get `OffsetOutOfRange`; a reader holding a deleted segment keeps reading it.

mod common;

use common::*;
use tidelog_engine::{build_batch, EngineError, ProducerStamp, Record, TopicConfig};

#[test]
fn retention_by_size_deletes_whole_segments_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let cfg = TopicConfig {
        retention_bytes: 200 << 10,
        ..small_topic(64 << 10)
    };
    engine.create_topic("t", cfg).expect("create");
    let p = partition0(&engine, "t");
    for i in 0..1000 {
        p.append(&batch_of(i * 4, 4, 200)).expect("append");
    }
    let before = p.segments();
    let total_before: u64 = before.iter().map(|s| u64::from(s.len())).sum();
    assert!(total_before > 600 << 10);
    // A reader holding the oldest segment keeps its bytes after deletion.
    let held = p.read(0, 1 << 20).expect("read");
    let held_copy = held.to_vec();

    // Only sealed segments are eligible; sealing is the flusher's job.
    engine.flush_all().expect("flush");
    let deleted = engine.apply_retention().expect("retention");
    assert!(deleted > 0);
    let after = p.segments();
    assert_eq!(after.len() + deleted, before.len());
    // Whole segments: the survivors are exactly the newest ones, untouched.
    for (a, b) in after.iter().zip(before.iter().skip(deleted)) {
        assert_eq!((a.base_offset(), a.len()), (b.base_offset(), b.len()));
    }
    let total_after: u64 = after.iter().map(|s| u64::from(s.len())).sum();
    // Kafka's rule: a segment goes only if what remains is still at least the limit.
    assert!(total_after >= cfg.retention_bytes);
    assert!(total_after - u64::from(after[0].len()) < cfg.retention_bytes);
    let earliest = p.earliest_offset();
    assert_eq!(earliest, after[0].base_offset());
    assert!(matches!(
        p.read(earliest - 1, 100),
        Err(EngineError::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        p.read(0, 100),
        Err(EngineError::OffsetOutOfRange { .. })
    ));
    assert!(!p.read(earliest, 100).expect("read").is_empty());
    assert_eq!(&held[..], &held_copy[..]);
    for seg in before.iter().take(deleted) {
        assert!(!seg.path().exists(), "deleted segment file is gone");
    }
    drop(after);
    drop(before);
    drop(held);
    drop(p);
    // The new earliest offset survives a restart.
    engine.close().expect("close");
    let engine = open(dir.path());
    assert_eq!(partition0(&engine, "t").earliest_offset(), earliest);
}

#[test]
fn retention_by_age_never_deletes_the_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let cfg = TopicConfig {
        retention_ms: 60_000,
        ..small_topic(64 << 10)
    };
    engine.create_topic("t", cfg).expect("create");
    let p = partition0(&engine, "t");
    let now = tidelog_engine::fsio::now_ms();
    let old = |i: i64| {
        build_batch(
            &[Record::value(now - 3_600_000 + i, vec![1u8; 500])],
            ProducerStamp::default(),
        )
    };
    for i in 0..400 {
        p.append(&old(i)).expect("append");
    }
    let sealed_old = p.segments().len() - 1;
    // Fresh records after the old ones: their segments must stay.
    for i in 0..200 {
        p.append(&build_batch(
            &[Record::value(now + i, vec![2u8; 500])],
            ProducerStamp::default(),
        ))
        .expect("append");
    }
    let segs = p.segments();
    let expired = segs
        .iter()
        .take(segs.len() - 1)
        .take_while(|s| s.max_timestamp_ms() < now - 60_000)
        .count();
    assert!(expired >= 1 && expired <= sealed_old);
    drop(segs);
    engine.flush_all().expect("flush");
    let deleted = engine.apply_retention().expect("retention");
    assert_eq!(deleted, expired);
    assert!(!p.segments().is_empty());
    assert!(p
        .segments()
        .iter()
        .all(|s| s.max_timestamp_ms() >= now - 60_000
            || s.base_offset() == p.segments().last().expect("active").base_offset()));
}
