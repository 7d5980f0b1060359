//! Index lookups agree with a linear scan, for every offset and every timestamp, before
//! and after restarts (so rebuilt indexes are checked too).

mod common;

use common::*;
use tidelog_engine::batch::check_frame;
use tidelog_engine::{build_batch, Partition, ProducerStamp, Record, SeekFrom};

/// (base_offset, last_offset, max_timestamp) of every batch, by walking all segments.
fn linear_batches(p: &Partition) -> Vec<(u64, u64, i64)> {
    let mut out = Vec::new();
    for seg in p.segments().iter() {
        let bytes = seg.bytes(0, seg.len()).expect("published");
        let mut pos = 0;
        while pos < bytes.len() {
            let v = check_frame(&bytes[pos..]).expect("valid");
            out.push((
                v.header.base_offset,
                v.header.last_offset(),
                v.header.max_timestamp_ms,
            ));
            pos += v.bytes().len();
        }
    }
    out
}

fn check_all_lookups(p: &Partition) {
    let batches = linear_batches(p);
    let next = p.next_offset();
    for &(base, last, _) in &batches {
        for offset in base..=last {
            let f = p.read(offset, 1).expect("read");
            let got = u64::from_le_bytes(f[..8].try_into().expect("8"));
            assert_eq!(got, base, "offset {offset} must be served from its batch");
        }
    }
    let mut probes: Vec<i64> = batches
        .iter()
        .flat_map(|b| [b.2 - 1, b.2, b.2 + 1])
        .collect();
    probes.extend([i64::MIN, 0, i64::MAX]);
    for ts in probes {
        let expected = batches.iter().find(|b| b.2 >= ts).map_or(next, |b| b.0);
        assert_eq!(
            p.resolve(SeekFrom::Timestamp(ts)),
            expected,
            "timestamp {ts}"
        );
    }
}

#[test]
fn index_lookups_agree_with_a_linear_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next_rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    {
        let engine = open(dir.path());
        engine
            .create_topic("t", small_topic(64 << 10))
            .expect("create");
        let p = partition0(&engine, "t");
        for _ in 0..700 {
            let count = 1 + next_rand() % 6;
            // Producer clocks are not monotonic: timestamps jitter backwards and forwards.
            let records: Vec<Record> = (0..count)
                .map(|_| {
                    Record::value(
                        (next_rand() % 100_000) as i64,
                        vec![7u8; (next_rand() % 200) as usize],
                    )
                })
                .collect();
            p.append(&build_batch(&records, ProducerStamp::default()))
                .expect("append");
        }
        assert!(p.segments().len() > 3);
        check_all_lookups(&p);
        // crash without closing
    }
    let engine = open(dir.path());
    check_all_lookups(&partition0(&engine, "t"));
    engine.close().expect("close");
    let engine = open(dir.path());
    check_all_lookups(&partition0(&engine, "t"));
}
