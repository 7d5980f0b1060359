//! Recovery: torn tails cut exactly at the last intact batch, bit flips detected, indexes
//! rebuilt, clean restarts skip scanning, producer state survives.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use tidelog_engine::{
    build_batch, Engine, EngineConfig, EngineError, ProducerStamp, Record, RecoveryPolicy,
    CHECKPOINT_FILE,
};

/// An engine whose flusher never runs on its own: nothing is synced or checkpointed, so
/// the whole active segment is "unflushed tail" and recovery must scan all of it.
fn no_flush_config() -> EngineConfig {
    EngineConfig {
        flush_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("readdir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

struct Pristine {
    dir: tempfile::TempDir,
    /// (offset, number) of every record before the last batch.
    before_last: Vec<(u64, u64)>,
    last_start: usize,
    last_len: usize,
    last_base: u64,
}

/// Writes 20 batches to one segment and "crashes" (drops the engine without closing).
fn pristine_log() -> Pristine {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), no_flush_config()).expect("open");
    engine
        .create_topic("t", small_topic(1 << 20))
        .expect("create");
    let p = partition0(&engine, "t");
    let mut position = 0;
    let mut last = (0, 0, 0);
    let mut n = 0;
    for i in 0..20u64 {
        let bytes = batch_of(n, 1 + i % 7, 40 + (i as usize * 13) % 90);
        let a = p.append(&bytes).expect("append");
        last = (position, bytes.len(), a.base_offset);
        position += bytes.len();
        n += 1 + i % 7;
    }
    let all = read_all(&p);
    drop(p);
    drop(engine);
    let before_last = all.into_iter().filter(|(o, _)| *o < last.2).collect();
    Pristine {
        dir,
        before_last,
        last_start: last.0,
        last_len: last.1,
        last_base: last.2,
    }
}

fn segment_file(root: &Path) -> std::path::PathBuf {
    root.join("topics/t/0/00000000000000000000.log")
}

/// Reopens a damaged copy and checks the log ends exactly before the last batch.
fn assert_recovers_to_before_last(root: &Path, p: &Pristine, what: &str) {
    let engine = Engine::open(root, no_flush_config())
        .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    let part = partition0(&engine, "t");
    assert_eq!(
        part.next_offset(),
        p.last_base,
        "{what}: log must end at the last intact batch"
    );
    assert_eq!(
        read_all(&part),
        p.before_last,
        "{what}: records before the tear must survive"
    );
    let report = &engine.recovery_reports()[0].2;
    assert!(!report.clean);
    // The log keeps working after the cut.
    let a = part
        .append(&batch_of(9999, 2, 10))
        .expect("append after recovery");
    assert_eq!(a.base_offset, p.last_base, "{what}");
}

#[test]
fn recovers_torn_tail_at_every_byte_of_the_last_batch() {
    let p = pristine_log();
    for cut in 0..p.last_len {
        for truncate_file in [false, true] {
            let copy = tempfile::tempdir().expect("tempdir");
            copy_dir(p.dir.path(), copy.path());
            let seg = segment_file(copy.path());
            let mut bytes = fs::read(&seg).expect("read");
            if truncate_file {
                if bytes[p.last_start + cut..p.last_start + p.last_len]
                    .iter()
                    .all(|&b| b == 0)
                {
                    continue; // the file is re-extended with zeros: nothing was lost
                }
                bytes.truncate(p.last_start + cut);
            } else {
                let torn = &mut bytes[p.last_start + cut..p.last_start + p.last_len];
                if torn.iter().all(|&b| b == 0) {
                    continue; // the batch ends in zeros: "losing" them changes nothing
                }
                torn.fill(0);
            }
            fs::write(&seg, &bytes).expect("write");
            assert_recovers_to_before_last(
                copy.path(),
                &p,
                &format!("cut at {cut} (truncate={truncate_file})"),
            );
        }
    }
}

#[test]
fn detects_single_bit_flips_in_the_last_batch() {
    let p = pristine_log();
    for at in 0..p.last_len {
        // Every bit of the header, one bit per byte after it (keeps the test quick).
        let bits: Vec<u8> = if at < 64 {
            (0..8).collect()
        } else {
            vec![(at % 8) as u8]
        };
        for bit in bits {
            let copy = tempfile::tempdir().expect("tempdir");
            copy_dir(p.dir.path(), copy.path());
            let seg = segment_file(copy.path());
            let mut bytes = fs::read(&seg).expect("read");
            bytes[p.last_start + at] ^= 1 << bit;
            fs::write(&seg, &bytes).expect("write");
            assert_recovers_to_before_last(copy.path(), &p, &format!("flip byte {at} bit {bit}"));
        }
    }
}

#[test]
fn stale_bytes_after_a_cut_are_never_resurrected() {
    // Regression guard: after recovery cuts a torn batch, the valid-looking batches that
    // followed it must be zeroed, or a later crash could splice them back in.
    let p = pristine_log();
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(p.dir.path(), copy.path());
    let seg = segment_file(copy.path());
    let mut bytes = fs::read(&seg).expect("read");
    // Tear the second-to-last batch region by corrupting the last batch's CRC field only.
    bytes[p.last_start + 12] ^= 0xff;
    fs::write(&seg, &bytes).expect("write");
    {
        let engine = Engine::open(copy.path(), no_flush_config()).expect("open");
        assert_eq!(partition0(&engine, "t").next_offset(), p.last_base);
    }
    let after = fs::read(&seg).expect("read");
    assert!(
        after[p.last_start..].iter().all(|&b| b == 0),
        "tail past the cut is zeroed"
    );
}

#[test]
fn absolute_consistency_refuses_a_torn_tail() {
    let p = pristine_log();
    let seg = segment_file(p.dir.path());
    let mut bytes = fs::read(&seg).expect("read");
    bytes[p.last_start + 70] ^= 1;
    fs::write(&seg, &bytes).expect("write");
    let strict = EngineConfig {
        recovery_policy: RecoveryPolicy::AbsoluteConsistency,
        ..no_flush_config()
    };
    assert!(matches!(
        Engine::open(p.dir.path(), strict),
        Err(EngineError::Corrupt { .. })
    ));
}

#[test]
fn rebuilds_missing_or_damaged_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = {
        let engine = open(dir.path());
        engine
            .create_topic("t", small_topic(64 << 10))
            .expect("create");
        let p = partition0(&engine, "t");
        for i in 0..600 {
            p.append(&batch_of(i * 3, 3, 150)).expect("append");
        }
        assert!(p.segments().len() >= 4);
        let all = read_all(&p);
        drop(p);
        engine.close().expect("close");
        all
    };
    let part_dir = dir.path().join("topics/t/0");
    // Remove one sealed segment's offset index, garble another's time index.
    fs::remove_file(part_dir.join("00000000000000000000.index")).expect("rm");
    let second = fs::read_dir(&part_dir)
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "timeindex"))
        .min_by_key(|p| p.file_name().map(|n| n.to_os_string()))
        .expect("a time index");
    fs::write(&second, b"garbage!!!!!!").expect("garble");
    let engine = open(dir.path());
    let p = partition0(&engine, "t");
    assert_eq!(read_all(&p), expected);
    let rebuilt: usize = engine
        .recovery_reports()
        .iter()
        .map(|r| r.2.indexes_rebuilt)
        .sum();
    assert!(rebuilt >= 1, "recovery reports the rebuild");
    for offset in (0..1800).step_by(7) {
        let f = p.read(offset, 1).expect("read");
        let base = u64::from_le_bytes(f[..8].try_into().expect("8"));
        assert!(base <= offset && offset < f.next_offset);
    }
}

#[test]
fn clean_restart_does_no_scanning() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let engine = open(dir.path());
        engine
            .create_topic("t", small_topic(128 << 10))
            .expect("create");
        let p = partition0(&engine, "t");
        for i in 0..2000 {
            p.append(&batch_of(i * 10, 10, 100)).expect("append");
        }
        engine.close().expect("close");
    }
    let engine = open(dir.path());
    let report = &engine.recovery_reports()[0].2;
    assert!(report.clean);
    assert_eq!(report.next_offset, 20_000);
    let segments = report.segments as u64;
    assert!(segments > 10);
    // Only the tail after each segment's last index entry is walked: at most an index
    // interval plus a batch per segment, far below the log's size.
    assert!(
        report.scanned_bytes <= segments * (512 + 2000),
        "scanned {} bytes of a {}-segment log",
        report.scanned_bytes,
        segments
    );
    assert!(
        !dir.path()
            .join(tidelog_engine::CLEAN_SHUTDOWN_FILE)
            .exists(),
        "marker consumed"
    );
    drop(engine);
    // A crash after a clean open is not mistaken for a clean shutdown.
    let engine = open(dir.path());
    assert!(!engine.recovery_reports()[0].2.clean);
}

#[test]
fn unclean_recovery_scans_only_past_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let engine = Engine::open(dir.path(), no_flush_config()).expect("open");
        engine
            .create_topic("t", small_topic(8 << 20))
            .expect("create");
        let p = partition0(&engine, "t");
        for i in 0..3000 {
            p.append(&batch_of(i * 10, 10, 100)).expect("append");
        }
        engine
            .wait_durable(&p, p.next_offset() - 1)
            .expect("durable");
        for i in 3000..3010 {
            p.append(&batch_of(i * 10, 10, 100)).expect("append");
        }
    }
    assert!(dir.path().join("topics/t/0").join(CHECKPOINT_FILE).exists());
    let engine = Engine::open(dir.path(), no_flush_config()).expect("open");
    let report = &engine.recovery_reports()[0].2;
    assert_eq!(report.next_offset, 30_100);
    let tail = (10 * batch_of(0, 10, 100).len()) as u64;
    assert!(
        report.scanned_bytes <= tail + 100,
        "scanned {} for a tail of {tail}",
        report.scanned_bytes
    );
}

#[test]
fn idempotent_producer_state_survives_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = |seq: u64| {
        build_batch(
            &[Record::value(1, format!("seq {seq}"))],
            ProducerStamp {
                producer_id: 42,
                sequence: seq,
            },
        )
    };
    {
        let engine = open(dir.path());
        engine
            .create_topic("t", small_topic(64 << 10))
            .expect("create");
        let p = partition0(&engine, "t");
        for seq in 0..3 {
            assert!(!p.append(&batch(seq)).expect("append").duplicate);
        }
        let retry = p.append(&batch(2)).expect("retry");
        assert!(retry.duplicate);
        assert_eq!(retry.base_offset, 2);
        assert_eq!(p.next_offset(), 3);
        // crash
    }
    for clean in [false, true] {
        let engine = open(dir.path());
        let p = partition0(&engine, "t");
        let retry = p.append(&batch(2)).expect("retry after restart");
        assert!(retry.duplicate, "clean={clean}");
        assert_eq!(retry.base_offset, 2);
        assert!(matches!(
            p.append(&batch(9)),
            Err(EngineError::OutOfOrderSequence { .. })
        ));
        if clean {
            assert_eq!(p.append(&batch(4)).expect("fresh").base_offset, 4);
        } else {
            assert_eq!(p.append(&batch(3)).expect("fresh").base_offset, 3);
            engine.close().expect("close");
        }
    }
}
