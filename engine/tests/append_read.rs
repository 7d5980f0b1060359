//! Append/read round trips: offsets dense and ordered across segment rolls and restarts
//! (clean and crash), for random batch sizes and roll limits.

mod common;

use common::*;
use proptest::prelude::*;
use tidelog_engine::{
    build_batch, AckLevel, EngineError, ProducerStamp, Record, SeekFrom, TopicConfig,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn offsets_are_dense_across_rolls_and_restarts(
        batches in proptest::collection::vec((1u64..40, 8usize..300), 1..60),
        segment_kib in 64u32..160,
        restart_every in 5usize..30,
        clean in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut engine = open(dir.path());
        engine.create_topic("t", small_topic(segment_kib << 10)).expect("create");
        let mut expected = Vec::new();
        let mut n = 0u64;
        for (i, (count, value_len)) in batches.iter().enumerate() {
            let p = partition0(&engine, "t");
            let appended = p.append(&batch_of(n, *count, *value_len)).expect("append");
            prop_assert_eq!(appended.base_offset, expected.len() as u64);
            prop_assert_eq!(appended.last_offset, appended.base_offset + count - 1);
            for k in 0..*count {
                expected.push((appended.base_offset + k, n + k));
            }
            n += count;
            if (i + 1) % restart_every == 0 {
                if clean { engine.close().expect("close") } else { drop(engine) }
                engine = open(dir.path());
            }
        }
        let p = partition0(&engine, "t");
        prop_assert_eq!(read_all(&p), expected.clone());
        drop(p);
        engine.close().expect("close");
        let engine = open(dir.path());
        prop_assert_eq!(read_all(&partition0(&engine, "t")), expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A read returns exactly the run of whole batches a header-by-header walk would —
    /// the sparse index lets it skip most headers, never change the answer.
    #[test]
    fn a_read_is_the_longest_run_of_whole_batches_within_the_limit(
        batches in proptest::collection::vec((1u64..20, 8usize..400), 1..80),
        index_interval in 64u32..4096,
        limits in proptest::collection::vec(1u32..40_000, 1..8),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path());
        let config = TopicConfig { index_interval_bytes: index_interval, ..small_topic(1 << 20) };
        engine.create_topic("t", config).expect("create");
        let p = partition0(&engine, "t");
        // (base offset, length) of every batch.
        let mut layout = Vec::new();
        let mut n = 0u64;
        for (count, value_len) in &batches {
            let batch = batch_of(n, *count, *value_len);
            p.append(&batch).expect("append");
            layout.push((n, batch.len()));
            n += count;
        }
        for (i, &(base, _)) in layout.iter().enumerate() {
            for &limit in &limits {
                let mut take = 1;
                let mut bytes = layout[i].1;
                while i + take < layout.len() && bytes + layout[i + take].1 <= limit as usize {
                    bytes += layout[i + take].1;
                    take += 1;
                }
                let next = layout.get(i + take).map_or(n, |&(b, _)| b);
                let f = p.read(base, limit).expect("read");
                prop_assert_eq!((f.len(), f.next_offset), (bytes, next), "from {} limit {}", base, limit);
            }
        }
        drop(p);
        engine.close().expect("close");
    }
}

#[test]
fn reads_cover_whole_batches_and_respect_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine
        .create_topic("t", small_topic(1 << 20))
        .expect("create");
    let p = partition0(&engine, "t");
    for i in 0..50 {
        p.append(&batch_of(i * 10, 10, 100)).expect("append");
    }
    let one_batch = batch_of(0, 10, 100).len();
    // A limit below one batch still returns one whole batch.
    let f = p.read(0, 10).expect("read");
    assert_eq!(f.len(), one_batch);
    assert_eq!(f.next_offset, 10);
    // Reading from the middle of a batch returns that batch.
    let three: usize = (1..4).map(|i| batch_of(i * 10, 10, 100).len()).sum();
    let f = p.read(15, three as u32).expect("read");
    assert_eq!(f.len(), three);
    assert_eq!(
        p.read(15, three as u32 - 1).expect("read").len(),
        three - batch_of(30, 10, 100).len()
    );
    assert_eq!(&f[..8], &10u64.to_le_bytes());
    assert_eq!(f.next_offset, 40);
    assert_eq!(f.high_watermark, 500);
    // At the high watermark: empty; past it or before earliest: out of range.
    assert!(p.read(500, 100).expect("read").is_empty());
    assert!(matches!(
        p.read(501, 100),
        Err(EngineError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn seek_by_timestamp_earliest_and_latest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine
        .create_topic("t", small_topic(64 << 10))
        .expect("create");
    let p = partition0(&engine, "t");
    for i in 0..200 {
        p.append(&batch_of(i * 5, 5, 200)).expect("append");
    }
    assert!(p.segments().len() > 3, "test needs several segments");
    assert_eq!(p.resolve(SeekFrom::Earliest), 0);
    assert_eq!(p.resolve(SeekFrom::Latest), 1000);
    // Record n has timestamp base + n; batches are 5 records.
    assert_eq!(p.resolve(SeekFrom::Timestamp(1_700_000_000_000 + 637)), 635);
    assert_eq!(p.resolve(SeekFrom::Timestamp(0)), 0);
    assert_eq!(p.resolve(SeekFrom::Timestamp(i64::MAX)), 1000);
}

#[test]
fn invalid_batches_are_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine
        .create_topic("t", small_topic(64 << 10))
        .expect("create");
    let p = partition0(&engine, "t");
    let mut bad = batch_of(0, 3, 10);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert!(matches!(p.append(&bad), Err(EngineError::InvalidBatch(_))));
    assert!(matches!(
        p.append(&bad[..20]),
        Err(EngineError::InvalidBatch(_))
    ));
    let huge = batch_of(0, 1, 70 << 10);
    assert!(matches!(
        p.append(&huge),
        Err(EngineError::RecordTooLarge { .. })
    ));
    assert_eq!(p.next_offset(), 0);
    engine
        .append("t", 0, &batch_of(0, 3, 10), AckLevel::Durable)
        .expect("good batch");
    assert_eq!(p.durable_offset(), 3);
}

#[test]
fn topics_persist_and_partitions_can_be_added() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let engine = open(dir.path());
        let mut cfg = small_topic(64 << 10);
        cfg.partitions = 3;
        engine.create_topic("a", cfg).expect("create");
        engine.create_topic("b", cfg).expect("create");
        assert!(matches!(
            engine.create_topic("a", cfg),
            Err(EngineError::TopicExists(_))
        ));
        engine
            .append("a", 2, &batch_of(0, 4, 10), AckLevel::Written)
            .expect("append");
        engine.add_partitions("a", 5).expect("grow");
        engine
            .append("a", 4, &batch_of(0, 1, 10), AckLevel::Written)
            .expect("append");
        engine.delete_topic("b").expect("delete");
        engine.close().expect("close");
    }
    let engine = open(dir.path());
    assert_eq!(engine.topic_names(), vec!["a".to_string()]);
    let info = engine.describe_topic("a").expect("describe");
    assert_eq!(info.partitions.len(), 5);
    assert_eq!(info.partitions[2].next_offset, 4);
    assert_eq!(info.partitions[4].next_offset, 1);
    assert!(matches!(
        engine.describe_topic("b"),
        Err(EngineError::UnknownTopic(_))
    ));
    assert!(engine.add_partitions("a", 2).is_err());
}

#[test]
fn a_second_engine_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = open(dir.path());
    assert!(tidelog_engine::Engine::open(dir.path(), quick_config()).is_err());
}

/// What a producer does with one batch of the test below.
#[derive(Debug, Clone, Copy)]
enum Stamp {
    /// No producer id.
    Plain,
    /// The producer's next sequence.
    Next,
    /// The previous sequence again: a retry.
    Retry,
    /// One sequence ahead of the next: a gap, refused.
    Gap,
}

fn stamp() -> impl Strategy<Value = Stamp> {
    prop_oneof![
        4 => Just(Stamp::Plain),
        4 => Just(Stamp::Next),
        1 => Just(Stamp::Retry),
        1 => Just(Stamp::Gap)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Runs of batches appended together (`append_checked`, one write per segment they
    /// fill) end up exactly as if each batch had been appended alone, a run stopping at
    /// its first error: the same outcome for every batch, the same records at the same
    /// offsets, the same segments — with rolls in the middle of a group, producer retries
    /// of batches planned in the same group, and sequence gaps that stop one run while
    /// the others go on. And the log reads back the same after a restart.
    #[test]
    fn batches_appended_together_end_up_as_if_appended_one_at_a_time(
        runs in proptest::collection::vec(
            proptest::collection::vec((1u64..30, 64usize..2000, stamp()), 0..8),
            1..12,
        ),
        segment_kib in 64u32..128,
    ) {
        // The same batches for both sides.
        let mut n = 0u64;
        let mut next_seq = 0u64;
        let batches: Vec<Vec<Vec<u8>>> = runs
            .iter()
            .map(|run| {
                run.iter()
                    .map(|&(count, value_len, stamp)| {
                        let records: Vec<Record> =
                            (n..n + count).map(|k| numbered(k, value_len)).collect();
                        n += count;
                        let sequence = match stamp {
                            Stamp::Plain => None,
                            Stamp::Next => {
                                next_seq += 1;
                                Some(next_seq - 1)
                            }
                            Stamp::Retry => Some(next_seq.saturating_sub(1)),
                            Stamp::Gap => Some(next_seq + 1),
                        };
                        let stamp = sequence.map_or(ProducerStamp::default(), |sequence| {
                            ProducerStamp { producer_id: 7, sequence }
                        });
                        build_batch(&records, stamp)
                    })
                    .collect()
            })
            .collect();
        let one_dir = tempfile::tempdir().expect("tempdir");
        let together_dir = tempfile::tempdir().expect("tempdir");
        let one = open(one_dir.path());
        let mut together = open(together_dir.path());
        for engine in [&one, &together] {
            engine.create_topic("t", small_topic(segment_kib << 10)).expect("create");
        }

        // One at a time.
        let p = partition0(&one, "t");
        let mut expected = Vec::new();
        for run in &batches {
            let mut appended = Vec::new();
            let mut error = None;
            for batch in run {
                match p.append(batch) {
                    Ok(a) => appended.push(a),
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
            expected.push((appended, error));
        }

        // Together.
        let q = partition0(&together, "t");
        let mut notes = tidelog_engine::IndexNotes::default();
        let checked: Vec<Vec<_>> = batches
            .iter()
            .map(|run| run.iter().map(|b| q.check(b, &mut notes).expect("valid")).collect())
            .collect();
        let runs: Vec<&[_]> = checked.iter().map(Vec::as_slice).collect();
        let outcomes = q.append_checked(&runs, &notes);
        let got: Vec<_> = outcomes
            .into_iter()
            .map(|o| (o.appended, o.error.map(|e| e.to_string())))
            .collect();
        prop_assert_eq!(&got, &expected);

        let log = read_all(&p);
        prop_assert_eq!(read_all(&q), log.clone());
        prop_assert_eq!(q.next_offset(), p.next_offset());
        prop_assert_eq!(q.segments().len(), p.segments().len());
        drop((checked, q));
        together.close().expect("close");
        together = open(together_dir.path());
        prop_assert_eq!(read_all(&partition0(&together, "t")), log);
    }
}
