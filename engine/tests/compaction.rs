//! Compaction of `compact` topics: the latest record of every (tenant, key) stays at its
//! offset, superseded records go, tombstones go after their retention (unless an older
//! version of their key survives), records without a key or tenant stay; the log still
//! reads in order across the gaps and reopens; a crash mid-compaction leaves the old or
//! the new segment whole; and an extraction running across a compaction still meets the
//! live stream exactly at its watermark.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use tidelog_engine::batch::check_frame;
use tidelog_engine::extract::Criteria;
use tidelog_engine::{build_batch, CleanupPolicy, Partition, ProducerStamp, Record, TopicConfig};

const HOUR_MS: i64 = 3600 * 1000;

fn compact_topic() -> TopicConfig {
    TopicConfig {
        cleanup: CleanupPolicy::Compact,
        tombstone_retention_ms: HOUR_MS as u64,
        ..small_topic(64 << 10)
    }
}

/// (offset, tenant, key, value) of every record, read from earliest across the gaps.
type Row = (u64, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

fn read_all(p: &Partition) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut offset = p.earliest_offset();
    while offset < p.next_offset() {
        let f = p.read(offset, 1 << 20).expect("read");
        let mut pos = 0;
        while pos < f.len() {
            let v = check_frame(&f[pos..]).expect("every batch passes its CRC");
            for r in v.records() {
                let r = r.expect("record");
                if r.offset >= offset {
                    rows.push((
                        r.offset,
                        r.tenant.map(<[u8]>::to_vec),
                        r.key.map(<[u8]>::to_vec),
                        r.value.map(<[u8]>::to_vec),
                    ));
                }
            }
            pos += v.bytes().len();
        }
        assert!(f.next_offset > offset, "reads progress across gaps");
        offset = f.next_offset;
    }
    rows
}

/// The state the rows describe: (tenant, key) → (offset, value), tombstones removing.
type TenantState = BTreeMap<(Vec<u8>, Vec<u8>), (u64, Vec<u8>)>;

fn state_of(rows: &[Row]) -> TenantState {
    let mut state = BTreeMap::new();
    for (offset, tenant, key, value) in rows {
        let (Some(t), Some(k)) = (tenant, key) else {
            continue;
        };
        match value {
            Some(v) => {
                state.insert((t.clone(), k.clone()), (*offset, v.clone()));
            }
            None => {
                state.remove(&(t.clone(), k.clone()));
            }
        }
    }
    state
}

/// Updates of 30 keys over 3 tenants, deletes, records without key or tenant; old and
/// recent tombstones.
fn fill(p: &Partition, now_ms: i64, rounds: u64) {
    let mut x: u64 = 7;
    for round in 0..rounds {
        let records: Vec<Record> = (0..20)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let pick = (x >> 33) % 100;
                let tenant = format!("t{}", (x >> 20) % 3).into_bytes();
                let key = format!("k{}", (x >> 40) % 30).into_bytes();
                // The first half of the rounds is "old" (past tombstone retention).
                let ts = if round < rounds / 2 {
                    now_ms - 2 * HOUR_MS
                } else {
                    now_ms
                };
                match pick {
                    0..=9 => Record {
                        timestamp_ms: ts,
                        tenant: Some(tenant),
                        key: Some(key),
                        value: None,
                        headers: Vec::new(),
                    },
                    10..=14 => Record {
                        timestamp_ms: ts,
                        tenant: None,
                        key: Some(key),
                        value: Some(format!("no-tenant {round}.{i}").into_bytes()),
                        headers: Vec::new(),
                    },
                    15..=19 => Record {
                        timestamp_ms: ts,
                        tenant: Some(tenant),
                        key: None,
                        value: Some(format!("no-key {round}.{i}").into_bytes()),
                        headers: Vec::new(),
                    },
                    _ => Record {
                        timestamp_ms: ts,
                        tenant: Some(tenant),
                        key: Some(key),
                        value: Some(format!("v {round}.{i} {}", "x".repeat(200)).into_bytes()),
                        headers: Vec::new(),
                    },
                }
            })
            .collect();
        p.append(&build_batch(&records, ProducerStamp::default()))
            .expect("append");
    }
}

/// Copies the files of a live partition's directory, as a crash at about that instant
/// would leave them. The engine's background threads run meanwhile: a file listed may be
/// gone when its turn comes (a checkpoint's temporary file renamed into place by the
/// indexer); it is skipped, as a crash after the rename would not have it either.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("list") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            match std::fs::copy(e.path(), to.join(e.file_name())) {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("copy {:?}: {err}", e.file_name()),
            }
        }
    }
}

/// Every tenant's history (read through the rewritten segments' tenant maps) is exactly
/// its records in `rows`, in order.
fn assert_histories(p: &Partition, rows: &[Row]) {
    for tenant in [&b"t0"[..], b"t1", b"t2"] {
        let (got, _) = history_offsets(p, tenant, &Criteria::default(), p.earliest_offset(), 4096);
        let want: Vec<u64> = rows
            .iter()
            .filter(|r| r.1.as_deref() == Some(tenant))
            .map(|r| r.0)
            .collect();
        assert!(!want.is_empty());
        assert_eq!(got, want, "history of {}", String::from_utf8_lossy(tenant));
    }
}

#[test]
fn compaction_keeps_the_latest_of_each_key_at_its_offset_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = tidelog_engine::fsio::now_ms();
    let (before, after) = {
        let engine = open(dir.path());
        engine.create_topic("t", compact_topic()).expect("create");
        let p = partition0(&engine, "t");
        fill(&p, now, 400);
        engine.flush_all().expect("flush");
        let before = read_all(&p);
        let stats = p.compact(now).expect("compact");
        assert!(
            stats.segments_rewritten > 0 && stats.records_removed > 0,
            "{stats:?}"
        );
        assert!(stats.bytes_after < stats.bytes_before);
        let after = read_all(&p);
        assert_histories(&p, &after);
        engine.close().expect("close");
        (before, after)
    };
    {
        // The rewritten segments' maps came with them, and are theirs.
        let engine = open(dir.path());
        assert_histories(&partition0(&engine, "t"), &after);
    }
    assert!(after.len() < before.len());
    // Same state, every kept record exactly as it was at its offset.
    assert_eq!(state_of(&after), state_of(&before));
    let by_offset: BTreeMap<u64, &Row> = before.iter().map(|r| (r.0, r)).collect();
    for row in &after {
        assert_eq!(
            Some(&row),
            by_offset.get(&row.0),
            "record at {} changed",
            row.0
        );
    }
    // What must stay stayed; old tombstones went unless pinned.
    let latest = state_of(&before);
    for row in &before {
        let (o, t, k, v) = row;
        let kept = after.iter().any(|r| r.0 == *o);
        match (t, k, v) {
            (None, _, _) | (_, None, _) => {
                assert!(kept, "record {o} without tenant or key dropped")
            }
            (Some(t), Some(k), Some(_))
                if latest.get(&(t.clone(), k.clone())).map(|l| l.0) == Some(*o) =>
            {
                assert!(kept, "latest record {o} dropped")
            }
            _ => {}
        }
    }
    let tombstones_before = before
        .iter()
        .filter(|r| r.2.is_some() && r.1.is_some() && r.3.is_none())
        .count();
    let tombstones_after = after
        .iter()
        .filter(|r| r.2.is_some() && r.1.is_some() && r.3.is_none())
        .count();
    assert!(
        tombstones_after < tombstones_before,
        "old tombstones are dropped"
    );
    // Reopen (clean): the gaps are accepted, the content is the same.
    let engine = open(dir.path());
    let p = partition0(&engine, "t");
    assert_eq!(read_all(&p), after);
    assert_eq!(
        p.compact(now).expect("again").segments_rewritten,
        0,
        "nothing left to gain"
    );
    // And after a crash-style reopen (no clean-shutdown marker): recovery accepts them too.
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(read_all(&partition0(&engine, "t")), after);
}

#[test]
fn a_crash_mid_compaction_leaves_the_old_or_the_new_segment_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = tidelog_engine::fsio::now_ms();
    let pdir = dir.path().join("topics/t/0");
    let snapshots = tempfile::tempdir().expect("tempdir");
    let (before, after, rewritten) = {
        let engine = open(dir.path());
        engine.create_topic("t", compact_topic()).expect("create");
        let p = partition0(&engine, "t");
        fill(&p, now, 400);
        engine.flush_all().expect("flush");
        let before = read_all(&p);
        copy_dir(&pdir, &snapshots.path().join("before"));
        let bases_before: Vec<(u64, u32)> = p
            .segments()
            .iter()
            .map(|s| (s.base_offset(), s.len()))
            .collect();
        p.compact(now).expect("compact");
        let after = read_all(&p);
        copy_dir(&pdir, &snapshots.path().join("after"));
        let segs = p.segments();
        let i = segs
            .iter()
            .zip(&bases_before)
            .position(|(s, (_, len))| s.len() != *len)
            .expect("a rewritten segment");
        let rewritten = (segs[i].base_offset(), segs[i + 1].base_offset());
        engine.close().expect("close");
        (before, after, rewritten)
    };
    let (rewritten, end) = rewritten;
    let inside = |r: &&Row| r.0 >= rewritten && r.0 < end;
    let names = |base: u64| ["log", "index", "timeindex"].map(|ext| format!("{base:020}.{ext}"));
    let reset = |from: &str| {
        std::fs::remove_dir_all(&pdir).expect("rm");
        copy_dir(&snapshots.path().join(from), &pdir);
        // As after a crash: no clean-shutdown marker, so recovery runs.
        let _ = std::fs::remove_file(dir.path().join("clean-shutdown"));
    };
    // Crash before the commit point: the new files are in the scratch directory only.
    reset("before");
    let scratch = pdir.join(format!(".compact-{rewritten:020}"));
    std::fs::create_dir(&scratch).expect("scratch");
    for n in names(rewritten) {
        std::fs::copy(snapshots.path().join("after").join(&n), scratch.join(&n)).expect("copy");
    }
    {
        let engine = open(dir.path());
        assert_eq!(
            read_all(&partition0(&engine, "t")),
            before,
            "uncommitted: the old segment"
        );
    }
    assert!(!scratch.exists(), "the scratch directory is cleaned up");
    // Crash after the commit point, with the log renamed into place but not the indexes.
    reset("before");
    std::fs::create_dir(&scratch).expect("scratch");
    let [log, index, time] = names(rewritten);
    std::fs::copy(snapshots.path().join("after").join(&log), pdir.join(&log)).expect("log");
    for n in [&index, &time] {
        std::fs::copy(snapshots.path().join("after").join(n), scratch.join(n)).expect("copy");
    }
    std::fs::write(scratch.join("COMMIT"), b"commit").expect("commit");
    {
        let engine = open(dir.path());
        let p = partition0(&engine, "t");
        let rows = read_all(&p);
        // The rewritten segment is the new one; the others as they were before.
        let mut expected: Vec<Row> = before.iter().filter(|r| !inside(r)).cloned().collect();
        expected.extend(after.iter().filter(inside).cloned());
        expected.sort_by_key(|r| r.0);
        assert_eq!(
            rows, expected,
            "committed: the new segment, whole, nothing twice"
        );
        assert_eq!(state_of(&rows), state_of(&before));
    }
    assert!(!scratch.exists());
}

/// Many seeds: writers update and delete keys of three tenants; an extraction of one
/// tenant is frozen at W and read in small chunks while segments roll and the partition is
/// compacted under it; then the live records after W are applied. The result equals the
/// tenant's state replayed from the (compacted) log.
#[test]
fn the_extraction_handoff_holds_across_a_compaction() {
    let mut compactions_during_snapshots = 0;
    for seed in 1..=16u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(open(dir.path()));
        // Tombstones outlive the test: a consumer behind by more than the tombstone
        // retention can miss a deletion (as in Kafka) — not the property checked here.
        engine.create_topic("t", compact_topic()).expect("create");
        let p = partition0(&engine, "t");
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (p, stop) = (p.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut x = seed * 1000 + w + 1;
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) || n < 300 {
                        let records: Vec<Record> = (0..1 + x % 8)
                            .map(|_| {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                let tenant = ["acme", "zeta", "omega"][(x % 3) as usize];
                                Record {
                                    timestamp_ms: tidelog_engine::fsio::now_ms(),
                                    tenant: Some(tenant.as_bytes().to_vec()),
                                    key: Some(format!("key-{}", (x >> 8) % 40).into_bytes()),
                                    value: ((x >> 20) % 5 != 0)
                                        .then(|| format!("v{}", x % 997).repeat(20).into_bytes()),
                                    headers: Vec::new(),
                                }
                            })
                            .collect();
                        p.append(&build_batch(&records, ProducerStamp::default()))
                            .expect("append");
                        n += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20 + seed % 10));
        let snap = p.tenant_snapshot(b"acme");
        let mut state = State::new();
        let mut cursor = 0;
        let mut compacted = 0;
        while cursor < snap.len() {
            let (bytes, next) = snap
                .read(cursor, 400, &Criteria::default())
                .expect("snapshot read");
            apply(&mut state, &bytes, b"acme", 0, u64::MAX);
            cursor = next;
            if compacted < 2 {
                // Seal what rolled, then compact it — while the snapshot is being read.
                engine.flush_all().expect("flush");
                compacted += p
                    .compact(tidelog_engine::fsio::now_ms())
                    .expect("compact")
                    .segments_rewritten;
            }
        }
        assert_eq!(
            state.len(),
            snap.len(),
            "seed {seed}: one record per live key"
        );
        compactions_during_snapshots += compacted;
        std::thread::sleep(std::time::Duration::from_millis(10));
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer");
        }
        engine.flush_all().expect("flush");
        p.compact(tidelog_engine::fsio::now_ms())
            .expect("compact after");
        let from = snap.watermark.map_or(0, |w| w + 1);
        let later = p.next_offset() - 1;
        let mut offset = from;
        while offset <= later {
            let f = p.read(offset, 1 << 20).expect("live read");
            apply(&mut state, &f, b"acme", from, later);
            offset = f.next_offset;
        }
        let mut reference = State::new();
        let mut offset = p.earliest_offset();
        while offset <= later {
            let f = p.read(offset, 1 << 20).expect("replay");
            apply(&mut reference, &f, b"acme", 0, later);
            offset = f.next_offset;
        }
        let values = |s: &State| -> BTreeMap<Vec<u8>, Vec<u8>> {
            s.iter().map(|(k, (_, v))| (k.clone(), v.clone())).collect()
        };
        assert_eq!(
            values(&state),
            values(&reference),
            "seed {seed}: snapshot ∪ live ≠ compacted replay"
        );
        assert!(p.segments().len() > 2, "seed {seed}: segments rolled");
    }
    assert!(
        compactions_during_snapshots >= 8,
        "compaction ran under the snapshots ({compactions_during_snapshots} segments rewritten)"
    );
}

/// A superseded record that survives as a segment's last record keeps its key's
/// tombstone alive past the tombstone retention: otherwise replaying the compacted log
/// would resurrect the deleted key.
#[test]
fn a_segments_last_record_keeps_its_keys_tombstone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine.create_topic("t", compact_topic()).expect("create");
    let p = partition0(&engine, "t");
    let now = tidelog_engine::fsio::now_ms();
    let old = now - 2 * HOUR_MS;
    let rec = |key: &str, value: Option<String>| Record {
        timestamp_ms: old,
        tenant: Some(b"acme".to_vec()),
        key: Some(key.as_bytes().to_vec()),
        value: value.map(String::into_bytes),
        headers: Vec::new(),
    };
    // Batches ending with key "doomed", until the segment rolls: the first segment then
    // ends with a superseded version of "doomed".
    let mut i = 0;
    while p.segments().len() == 1 {
        let records = vec![
            rec("filler", Some("f".repeat(2000))),
            rec("doomed", Some(format!("v{i}"))),
        ];
        p.append(&build_batch(&records, ProducerStamp::default()))
            .expect("append");
        i += 1;
    }
    // Delete it (an old tombstone, past retention), then fill until that segment rolls too.
    p.append(&build_batch(
        &[rec("doomed", None)],
        ProducerStamp::default(),
    ))
    .expect("tombstone");
    let segments = p.segments().len();
    while p.segments().len() == segments {
        p.append(&build_batch(
            &[rec("more", Some("m".repeat(2000)))],
            ProducerStamp::default(),
        ))
        .expect("append");
    }
    engine.flush_all().expect("flush");
    assert!(p.compact(now).expect("compact").segments_rewritten > 0);
    let state = state_of(&read_all(&p));
    assert!(
        !state.contains_key(&(b"acme".to_vec(), b"doomed".to_vec())),
        "the deleted key came back after compaction"
    );
}

/// The `.log` files in a partition's directory, by base offset.
fn log_files(dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .expect("partition dir")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

#[test]
fn retention_and_compaction_called_at_once_never_bring_a_deleted_segment_back() {
    // Both normally run one after the other on the flusher thread; the engine's API lets
    // anyone call them. A compaction that rewrote a segment retention deleted meanwhile
    // must not put its file back (the next open would read it as part of the log).
    let dir = tempfile::tempdir().expect("tempdir");
    let pdir = dir.path().join("topics/t/0");
    let now = tidelog_engine::fsio::now_ms();
    let engine = open(dir.path());
    engine
        .create_topic(
            "t",
            TopicConfig {
                retention_bytes: 256 << 10,
                ..compact_topic()
            },
        )
        .expect("create");
    let p = partition0(&engine, "t");
    for round in 0..12 {
        fill(&p, now, 150);
        engine.flush_all().expect("flush");
        let start = Arc::new(std::sync::Barrier::new(2));
        let compactor = {
            let (p, start) = (p.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                p.compact(now).expect("compact");
            })
        };
        start.wait();
        // Let the compaction pick its candidates first, then pull segments from under it.
        std::thread::sleep(std::time::Duration::from_micros(200 * round));
        p.apply_retention(now).expect("retention");
        compactor.join().expect("compactor");
        let listed: Vec<u64> = p.segments().iter().map(|s| s.base_offset()).collect();
        assert_eq!(log_files(&pdir), listed, "round {round}: files = segments");
    }
    let earliest = p.earliest_offset();
    let rows = read_all(&p);
    engine.close().expect("close");
    let engine = open(dir.path());
    let p = partition0(&engine, "t");
    assert_eq!(p.earliest_offset(), earliest, "reopened at the same start");
    assert_eq!(read_all(&p), rows);
}
