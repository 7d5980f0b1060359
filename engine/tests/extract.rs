//! The tenant index and the extraction seam: a snapshot frozen at watermark W, plus the
//! tenant's records after W, equals the tenant's state replayed from the whole log, with
//! producers writing to that tenant (and others, in the same partition) throughout.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use tidelog_engine::batch::check_frame;
use tidelog_engine::extract::Criteria;
use tidelog_engine::{
    build_batch, EngineConfig, IndexLag, Partition, ProducerStamp, Record, TopicConfig,
};

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// A random update or delete of a random key of a random tenant.
fn random_batch(next: &mut impl FnMut() -> u64, tenants: &[&str]) -> Vec<u8> {
    let n = 1 + next() % 8;
    let uniform = next() % 2 == 0;
    let fixed = tenants[(next() % tenants.len() as u64) as usize];
    let records: Vec<Record> = (0..n)
        .map(|_| {
            let tenant = if uniform {
                fixed
            } else {
                tenants[(next() % tenants.len() as u64) as usize]
            };
            let key = format!("key-{}", next() % 40).into_bytes();
            let value = (next() % 5 != 0).then(|| format!("v{}", next() % 1000).into_bytes());
            Record {
                timestamp_ms: 1,
                tenant: Some(tenant.as_bytes().to_vec()),
                key: Some(key),
                value,
                headers: Vec::new(),
            }
        })
        .collect();
    build_batch(&records, ProducerStamp::default())
}

/// The tenant's state replayed from the whole log, for records in [from, upto].
fn replay(p: &Partition, tenant: &[u8], from: u64, upto: u64) -> State {
    let mut state = State::new();
    let mut offset = p.earliest_offset().max(from);
    while offset <= upto && offset < p.next_offset() {
        let f = p.read(offset, 1 << 20).expect("read");
        apply(&mut state, &f, tenant, from, upto);
        offset = f.next_offset;
    }
    state
}

fn snapshot_state(p: &Partition, tenant: &[u8]) -> (Option<u64>, State) {
    let snap = p.tenant_snapshot(tenant);
    let mut state = State::new();
    let mut cursor = 0;
    let mut chunks = 0;
    while cursor < snap.len() {
        // Small reads: many cursors, as an interrupted-and-resumed extraction would use.
        let (bytes, next) = snap
            .read(cursor, 300, &Criteria::default())
            .expect("read snapshot");
        assert!(next > cursor, "progress");
        apply(&mut state, &bytes, tenant, 0, u64::MAX);
        cursor = next;
        chunks += 1;
    }
    assert!(snap.is_empty() || chunks > 0);
    if let Some(w) = snap.watermark {
        assert!(
            state.values().all(|(o, _)| *o <= w),
            "no snapshot record after the watermark"
        );
    }
    assert_eq!(state.len(), snap.len(), "one record per live key");
    (snap.watermark, state)
}

#[test]
fn snapshot_plus_events_after_the_watermark_is_the_state_under_concurrent_writes() {
    handoff_under_concurrent_writes(quick_config(), 1..=12);
}

/// The same with the tenant index allowed to trail the log by only a few updates: the
/// appenders keep applying the queue themselves, racing the indexer thread and the
/// snapshots for the index lock.
#[test]
fn the_handoff_holds_when_appenders_apply_the_index_themselves() {
    let config = EngineConfig {
        index_lag: IndexLag { soft: 4, hard: 24 },
        ..quick_config()
    };
    handoff_under_concurrent_writes(config, 13..=18);
}

fn handoff_under_concurrent_writes(config: EngineConfig, seeds: std::ops::RangeInclusive<u64>) {
    for seed in seeds {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine =
            Arc::new(tidelog_engine::Engine::open(dir.path(), config.clone()).expect("open"));
        let cfg = TopicConfig {
            retention_bytes: 96 << 10,
            ..small_topic(64 << 10)
        };
        engine.create_topic("t", cfg).expect("create");
        let p = partition0(&engine, "t");
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (p, stop) = (p.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut next = rng(seed * 100 + w);
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) || n < 200 {
                        p.append(&random_batch(&mut next, &["acme", "zeta", "omega"]))
                            .expect("append");
                        n += 1;
                    }
                })
            })
            .collect();
        let mut checks = 0;
        let mut next = rng(seed);
        for _ in 0..4 {
            std::thread::sleep(std::time::Duration::from_millis(next() % 20));
            // A snapshot of acme at W, with writers running...
            let (w, mut state) = snapshot_state(&p, b"acme");
            // ...retention may delete segments it reads: they are pinned.
            engine.flush_all().expect("flush");
            engine.apply_retention().expect("retention");
            std::thread::sleep(std::time::Duration::from_millis(next() % 20));
            // The live continuation from W+1 up to some later point L...
            let later = p.next_offset() - 1;
            let from = w.map_or(0, |w| w + 1);
            let earliest = p.earliest_offset();
            if earliest > from {
                continue; // retention already passed the watermark; nothing to compare
            }
            let mut offset = from;
            while offset <= later {
                let f = p.read(offset, 1 << 20).expect("live read");
                apply(&mut state, &f, b"acme", from, later);
                offset = f.next_offset;
            }
            // ...equals acme's state at L replayed from the log — where the log still
            // holds it: compare keys whose latest record is still retained.
            let reference = replay(&p, b"acme", 0, later);
            let retained: State = state
                .iter()
                .filter(|(_, (o, _))| *o >= earliest)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let reference_retained: State = reference
                .into_iter()
                .filter(|(_, (o, _))| *o >= earliest)
                .collect();
            assert_eq!(
                retained, reference_retained,
                "seed {seed}: snapshot ∪ live ≠ state at {later}"
            );
            checks += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer");
        }
        assert!(p.segments().len() > 1 || checks > 0);
    }
}

#[test]
fn tenant_index_survives_clean_and_crash_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut next = rng(7);
    let tenants = ["acme", "zeta"];
    {
        let engine = open(dir.path());
        engine
            .create_topic("t", small_topic(64 << 10))
            .expect("create");
        let p = partition0(&engine, "t");
        for _ in 0..400 {
            p.append(&random_batch(&mut next, &tenants))
                .expect("append");
        }
        engine.close().expect("close");
    }
    for round in 0..3 {
        let engine = open(dir.path());
        let p = partition0(&engine, "t");
        let report = &engine.recovery_reports()[0].2;
        if round == 0 {
            assert_eq!(
                report.index_replayed_bytes, 0,
                "after a clean shutdown nothing is replayed"
            );
        }
        for t in tenants {
            let end = p.next_offset() - 1;
            let reference = replay(&p, t.as_bytes(), 0, end);
            let (w, state) = snapshot_state(&p, t.as_bytes());
            assert_eq!(w, Some(end));
            assert_eq!(state, reference, "round {round}, tenant {t}");
            let info = p.tenant_info(t.as_bytes()).expect("known tenant");
            assert_eq!(info.live_keys, reference.len() as u64);
        }
        for _ in 0..150 {
            p.append(&random_batch(&mut next, &tenants))
                .expect("append");
        }
        drop(p);
        if round == 1 {
            engine.close().expect("close");
        } else {
            drop(engine); // a crash: no clean shutdown
        }
    }
    let engine = open(dir.path());
    let report = &engine.recovery_reports()[0].2;
    let total = partition0(&engine, "t").size_bytes();
    assert!(
        report.index_replayed_bytes < total,
        "a crash replays the unsealed tail, not the log ({} of {total})",
        report.index_replayed_bytes
    );
}

/// Waits until the indexer has written a tenant index checkpoint covering the last roll
/// (the log must be durable that far: the caller flushed).
fn wait_for_index_checkpoint_of_last_roll(p: &Partition) {
    let last_roll = p.segments().last().expect("segments").base_offset();
    let checkpoint = p.dir().join(tidelog_engine::partition::TENANT_INDEX_FILE);
    let covers = || {
        std::fs::read(&checkpoint)
            .ok()
            .and_then(|b| tidelog_engine::tenant_index::TenantIndex::decode(&b).ok())
            .map(|i| i.next_offset())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while covers().is_none_or(|c| c < last_roll) {
        assert!(
            std::time::Instant::now() < deadline,
            "no index checkpoint of the last roll ({last_roll}) after it became durable ({:?})",
            covers()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_crash_replays_the_index_from_its_last_checkpointed_roll_not_the_whole_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut next = rng(11);
    let tenants = ["acme", "zeta"];
    let total = {
        let engine = open(dir.path());
        engine
            .create_topic("t", small_topic(64 << 10))
            .expect("create");
        let p = partition0(&engine, "t");
        while p.segments().len() < 8 {
            p.append(&random_batch(&mut next, &tenants))
                .expect("append");
        }
        // Makes the log durable; the indexer then writes the index as it stood once past the
        // last roll (earlier rolls' checkpoints may be there already: wait for that one).
        p.flush().expect("flush");
        wait_for_index_checkpoint_of_last_roll(&p);
        (p.size_bytes(), p.dir().to_path_buf())
        // Dropped without close: a crash.
    };
    let (total, partition_dir) = total;
    // A checkpoint the indexer had written but not yet put in place when the crash came
    // (the log not durable that far): a valid one, of an empty index claiming the whole
    // log. Recovery must not use it, and open removes it.
    let stray = partition_dir.join("tenants.3.tmp");
    let mut empty = tidelog_engine::tenant_index::TenantIndex::default();
    empty.advance_to(u64::MAX / 2);
    std::fs::write(&stray, empty.encode()).expect("stray checkpoint");
    let engine = open(dir.path());
    assert!(!stray.exists(), "a waiting checkpoint is removed on open");
    let report = &engine.recovery_reports()[0].2;
    assert!(
        report.index_replayed_bytes < total / 2,
        "a crash replays the segments since the last roll, not the log ({} of {total})",
        report.index_replayed_bytes
    );
    let p = partition0(&engine, "t");
    for t in tenants {
        let end = p.next_offset() - 1;
        let (w, state) = snapshot_state(&p, t.as_bytes());
        assert_eq!(w, Some(end));
        assert_eq!(state, replay(&p, t.as_bytes(), 0, end), "tenant {t}");
    }
}

/// More live keys than an index that is checkpointed at every roll (65 536): a roll then
/// owes a checkpoint only once 4 records per live key were applied since the last one
/// (FORMAT.md), so a crash replays several segments — and the index must come back exact.
#[test]
fn a_crash_with_a_large_index_replays_the_segments_since_its_last_owed_checkpoint() {
    const KEYS: u64 = 70_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = 1u32 << 20;
    let total = {
        let engine = open(dir.path());
        engine
            .create_topic("t", small_topic(segment))
            .expect("create");
        let p = partition0(&engine, "t");
        let mut n = 0u64;
        let mut append = |p: &Partition| {
            let records: Vec<Record> = (n..n + 1000)
                .map(|i| Record {
                    timestamp_ms: 1,
                    tenant: Some(b"acme".to_vec()),
                    key: Some(format!("key-{}", i % KEYS).into_bytes()),
                    // A tombstone now and then; most keys stay live.
                    value: (i % 50 != 49).then(|| i.to_le_bytes().to_vec()),
                    headers: Vec::new(),
                })
                .collect();
            p.append(&build_batch(&records, ProducerStamp::default()))
                .expect("append");
            n += 1000;
        };
        // The first roll after an open owes a checkpoint, whatever the index holds: wait
        // for it.
        while p.segments().len() < 2 {
            append(&p);
        }
        p.flush().expect("flush");
        wait_for_index_checkpoint_of_last_roll(&p);
        // Four more rolls, with over 65 536 live keys from the second on and fewer than 4
        // records per key since the checkpoint: none of them owes one.
        while p.segments().len() < 6 {
            append(&p);
        }
        append(&p);
        p.flush().expect("flush");
        p.size_bytes()
        // Dropped without close: a crash.
    };
    let engine = open(dir.path());
    let report = &engine.recovery_reports()[0].2;
    assert!(
        report.index_replayed_bytes > 3 * u64::from(segment) && report.index_replayed_bytes < total,
        "a crash replays the segments since the last owed checkpoint ({} of {total})",
        report.index_replayed_bytes
    );
    let p = partition0(&engine, "t");
    let end = p.next_offset() - 1;
    let (w, state) = snapshot_state(&p, b"acme");
    assert_eq!(w, Some(end));
    assert!(state.len() as u64 > 65_536, "{} live keys", state.len());
    assert_eq!(state, replay(&p, b"acme", 0, end));
}

#[test]
fn history_returns_the_tenants_matching_events_in_offset_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine
        .create_topic("t", small_topic(64 << 10))
        .expect("create");
    let p = partition0(&engine, "t");
    let mut expected = Vec::new();
    for i in 0..600u64 {
        let tenant = if i % 3 == 0 { "acme" } else { "zeta" };
        let kind = if i % 2 == 0 { "share" } else { "upload" };
        let record = Record {
            timestamp_ms: 1000 + i as i64,
            tenant: Some(tenant.as_bytes().to_vec()),
            key: Some(format!("{}-{i}", if i % 4 == 0 { "doc" } else { "img" }).into_bytes()),
            value: Some(vec![1]),
            headers: vec![(b"type".to_vec(), kind.as_bytes().to_vec())],
        };
        let a = p
            .append(&build_batch(&[record], ProducerStamp::default()))
            .expect("append");
        if tenant == "acme"
            && kind == "share"
            && i % 4 == 0
            && (1100..=1500).contains(&(1000 + i as i64))
        {
            expected.push(a.base_offset);
        }
    }
    let criteria = Criteria {
        since_ms: Some(1100),
        until_ms: Some(1500),
        key_prefix: Some(b"doc".to_vec()),
        headers: vec![(b"type".to_vec(), b"share".to_vec())],
    };
    let (got, _) = history_offsets(&p, b"acme", &criteria, p.offset_for_time(1100), 2000);
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
}

/// The offsets of `tenant`'s records of type `kind` (any with `None`), read from the
/// whole log.
fn tenant_offsets(p: &Partition, tenant: &[u8], kind: Option<&[u8]>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = p.earliest_offset();
    while at < p.next_offset() {
        let f = p.read(at, 1 << 20).expect("read");
        let bytes: &[u8] = &f;
        let mut pos = 0;
        while pos < bytes.len() {
            let v = check_frame(&bytes[pos..]).expect("valid");
            for r in v.records().map(|r| r.expect("record")) {
                let typed = kind.is_none_or(|k| r.headers().any(|(n, v)| n == b"type" && v == k));
                if r.tenant == Some(tenant) && typed {
                    out.push(r.offset);
                }
            }
            pos += v.bytes().len();
        }
        at = f.next_offset;
    }
    out
}

#[test]
fn history_reads_only_the_chunks_its_tenants_map_names_and_misses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment_bytes = 256 << 10;
    let tenants: Vec<String> = (0..12).map(|t| format!("tenant-{t}")).collect();
    let fill = |p: &Partition| {
        // Runs of 24 batches (~100 KiB) per tenant, so a 64 KiB chunk holds one or two
        // tenants; a few batches mixed, half "rare" (a mixed batch matches every
        // tenant's filter); otherwise "rare" only at the very end.
        let mut next = rng(7);
        let mut i = 0u64;
        for round in 0..3 {
            for t in &tenants {
                for b in 0..24 {
                    let mixed = (round + b) % 37 == 0;
                    let records: Vec<Record> = (0..20)
                        .map(|r| {
                            i += 1;
                            Record {
                                timestamp_ms: 1,
                                tenant: Some(
                                    if mixed && r % 2 == 1 { "rare" } else { t }
                                        .as_bytes()
                                        .to_vec(),
                                ),
                                key: Some(format!("k{}", next() % 50).into_bytes()),
                                value: Some(vec![b'v'; 180]),
                                headers: vec![(
                                    b"type".to_vec(),
                                    if i % 3 == 0 { &b"share"[..] } else { b"upload" }.to_vec(),
                                )],
                            }
                        })
                        .collect();
                    p.append(&build_batch(&records, ProducerStamp::default()))
                        .expect("append");
                }
            }
        }
        for _ in 0..3 {
            let records: Vec<Record> = (0..20)
                .map(|_| Record {
                    timestamp_ms: 1,
                    tenant: Some(b"rare".to_vec()),
                    value: Some(vec![b'r'; 180]),
                    headers: vec![(b"type".to_vec(), b"share".to_vec())],
                    ..Record::default()
                })
                .collect();
            p.append(&build_batch(&records, ProducerStamp::default()))
                .expect("append");
        }
    };
    let share = Criteria {
        headers: vec![(b"type".to_vec(), b"share".to_vec())],
        ..Criteria::default()
    };
    let check = |p: &Partition| {
        for t in ["tenant-3", "tenant-11", "rare"] {
            let (got, _) = history_offsets(
                p,
                t.as_bytes(),
                &Criteria::default(),
                p.earliest_offset(),
                16 << 10,
            );
            assert_eq!(got, tenant_offsets(p, t.as_bytes(), None), "{t}");
            let (got, _) = history_offsets(p, t.as_bytes(), &share, p.earliest_offset(), 16 << 10);
            assert_eq!(
                got,
                tenant_offsets(p, t.as_bytes(), Some(b"share")),
                "{t}, type=share"
            );
        }
        assert!(!tenant_offsets(p, b"rare", None).is_empty());
    };
    // Steps of a tenant's whole history, at most 16 KiB of log each.
    let steps = |p: &Partition, tenant: &[u8]| {
        history_offsets(
            p,
            tenant,
            &Criteria::default(),
            p.earliest_offset(),
            16 << 10,
        )
        .1
    };
    let map_files = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let part = dir.join("topics").join("t").join("0");
        let mut files: Vec<_> = std::fs::read_dir(&part)
            .expect("partition dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "tenantmap"))
            .collect();
        files.sort();
        files
    };
    {
        let engine = open(dir.path());
        engine
            .create_topic("t", small_topic(segment_bytes))
            .expect("create");
        let p = partition0(&engine, "t");
        fill(&p);
        engine.flush_all().expect("flush"); // seals the rolled segments: their maps
        let sealed = p.segments().len() - 1;
        assert!(sealed >= 10, "{sealed} sealed segments");
        assert_eq!(
            map_files(dir.path()).len(),
            sealed,
            "one map per sealed segment"
        );
        check(&p);
        // The history of every tenant (no map applies)
        // reads all of it; the rare tenant's reads of the sealed segments only the chunks
        // with a mixed batch; a twelfth of the log, about a twelfth of the steps.
        let (all, rare, one) = (steps(&p, b""), steps(&p, b"rare"), steps(&p, b"tenant-3"));
        assert!(rare * 3 < all, "rare {rare} steps, all {all}");
        assert!(one * 3 < all, "tenant-3 {one} steps, all {all}");
        engine.close().expect("close");
    }
    // A map torn, one removed, one of another file: each is rebuilt when first needed,
    // and the history is the same.
    let maps = map_files(dir.path());
    let mut torn = std::fs::read(&maps[0]).expect("map");
    let middle = torn.len() / 2;
    torn[middle] ^= 0xFF;
    std::fs::write(&maps[0], torn).expect("tear");
    std::fs::remove_file(&maps[1]).expect("remove");
    std::fs::copy(&maps[3], &maps[2]).expect("another's map");
    let engine = open(dir.path());
    let p = partition0(&engine, "t");
    check(&p);
    let (all, rare) = (steps(&p, b""), steps(&p, b"rare"));
    assert!(
        rare * 3 < all,
        "after a restart: rare {rare} steps, all {all}"
    );
    assert_eq!(
        map_files(dir.path()),
        maps,
        "the damaged maps were written again"
    );
    let reread: Vec<Vec<u8>> = maps
        .iter()
        .map(|m| std::fs::read(m).expect("map"))
        .collect();
    assert_ne!(reread[2], reread[3], "each segment its own map");
}
