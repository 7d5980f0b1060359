//! Extract-then-follow through the real server: while producers update and delete keys of
//! the tenant (and of other tenants in the same partition) throughout, the snapshot plus
//! the live records after the watermark equal the tenant's state replayed from the whole
//! partition; no live record is at or before the watermark, none is missing or repeated.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidelog_client::{
    build_batch, Ack, ExtractCriteria, ExtractEvent, ExtractMode, ProducerStamp, Record, StartAt,
    TopicSettings,
};
use tidelog_e2e::Server;
use tidelog_protocol::partitioner;

type State = BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>;

fn apply(state: &mut State, key: &[u8], offset: u64, value: Option<&[u8]>) {
    match value {
        Some(v) => {
            state.insert(key.to_vec(), (offset, Some(v.to_vec())));
        }
        None => {
            state.remove(key);
        }
    }
}

fn writer(
    server_addr: std::net::SocketAddr,
    partition: u32,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let client =
            tidelog_client::Client::connect(server_addr, Default::default()).expect("connect");
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        while !stop.load(Ordering::Relaxed) {
            let n = 1 + next() % 5;
            let tenant = ["acme", "zeta"][(next() % 2) as usize];
            let records: Vec<Record> = (0..n)
                .map(|_| Record {
                    timestamp_ms: 1,
                    tenant: Some(tenant.as_bytes().to_vec()),
                    key: Some(format!("file-{}", next() % 50).into_bytes()),
                    value: (next() % 4 != 0).then(|| format!("v{}", next()).into_bytes()),
                    headers: Vec::new(),
                })
                .collect();
            client
                .publish(
                    "t",
                    partition,
                    Ack::Written,
                    &build_batch(&records, ProducerStamp::default()),
                )
                .expect("publish");
        }
    })
}

/// Every acme record of the partition from `from`, with tenant-filtered fetches.
fn tenant_records(
    client: &tidelog_client::Client,
    partition: u32,
    from: u64,
) -> Vec<tidelog_client::ConsumedRecord> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let f = client
            .fetch(
                "t",
                partition,
                StartAt::Offset(offset),
                1 << 20,
                Duration::ZERO,
                Some(b"acme"),
            )
            .expect("fetch");
        out.extend(f.records);
        if f.next_offset >= f.high_watermark || f.next_offset == offset {
            return out;
        }
        offset = f.next_offset;
    }
}

#[test]
fn extract_then_follow_has_no_gap_and_no_duplicate_under_concurrent_writes() {
    let server = Server::start();
    let admin = server.client();
    admin
        .create_topic(
            "t",
            TopicSettings {
                partitions: 1,
                segment_bytes: 128 << 10,
                ..TopicSettings::default()
            },
        )
        .expect("create");
    let partition = partitioner::partition_for(Some(b"acme"), None, 1).expect("partition");
    for round in 0..3u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|w| writer(server.addr, partition, round * 10 + w + 1, stop.clone()))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let client = server.client();
        let mut stream = client
            .extract_then_follow("t", b"acme", ExtractMode::State, ExtractCriteria::default())
            .expect("extract");
        let mut state = State::new();
        // 1. The snapshot, up to the watermark, with the writers running.
        let watermark = loop {
            match stream
                .next_timeout(Duration::from_secs(30))
                .expect("stream")
                .expect("an event in time")
            {
                ExtractEvent::Snapshot(r) => {
                    assert!(r.value.is_some(), "a snapshot has no tombstones");
                    let prev =
                        state.insert(r.key.clone().expect("key"), (r.offset, r.value.clone()));
                    assert!(prev.is_none(), "one record per key");
                }
                ExtractEvent::Watermark { offset, .. } => {
                    break offset.expect("the partition has data")
                }
                ExtractEvent::Live(_) => panic!("live before the watermark"),
            }
        };
        assert!(
            state.values().all(|(o, _)| *o <= watermark),
            "no snapshot record after W"
        );
        // 2. Writers go on a while after the watermark, then stop: the log's end is fixed.
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        for h in writers {
            h.join().expect("writer");
        }
        let last_acme = tenant_records(&admin, partition, watermark + 1)
            .last()
            .map(|r| r.offset);
        // 3. Live records after W, up to the last acme record.
        let mut last_live: Option<u64> = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while last_live < last_acme && Instant::now() < deadline {
            let Some(event) = stream
                .next_timeout(Duration::from_millis(200))
                .expect("stream")
            else {
                continue;
            };
            let ExtractEvent::Live(r) = event else {
                panic!("only live records after the watermark")
            };
            assert!(
                r.offset > watermark,
                "no live record at or before the watermark"
            );
            assert!(
                last_live.is_none_or(|l| r.offset > l),
                "in order, no duplicate"
            );
            assert_eq!(r.tenant.as_deref(), Some(&b"acme"[..]));
            last_live = Some(r.offset);
            apply(
                &mut state,
                r.key.as_deref().expect("key"),
                r.offset,
                r.value.as_deref(),
            );
        }
        assert_eq!(
            last_live, last_acme,
            "round {round}: every live record arrived"
        );
        // 4. The reference: the tenant's state replayed from the whole partition.
        let mut reference = State::new();
        for r in tenant_records(&admin, partition, 0) {
            apply(
                &mut reference,
                r.key.as_deref().expect("key"),
                r.offset,
                r.value.as_deref(),
            );
        }
        assert_eq!(
            state, reference,
            "round {round}: snapshot ∪ live ≠ the tenant's state"
        );
    }
    server.stop();
}

/// A tenant with `keys` live keys in a fresh topic; returns its partition.
fn seed_tenant(admin: &tidelog_client::Client, keys: u64) -> u32 {
    admin
        .create_topic(
            "t",
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .expect("create");
    let partition = partitioner::partition_for(Some(b"acme"), None, 1).expect("partition");
    for chunk in 0..keys / 100 {
        let records: Vec<Record> = (chunk * 100..chunk * 100 + 100)
            .map(|i| Record {
                tenant: Some(b"acme".to_vec()),
                key: Some(format!("key-{i:05}").into_bytes()),
                value: Some(vec![b'x'; 200]),
                ..Record::default()
            })
            .collect();
        admin
            .publish(
                "t",
                partition,
                Ack::Written,
                &build_batch(&records, ProducerStamp::default()),
            )
            .expect("publish");
    }
    partition
}

#[test]
fn an_interrupted_extraction_resumes_from_its_cursor_and_the_live_stream_too() {
    // Small fetch chunks: the snapshot arrives in many EXTRACT_DATA frames.
    let server = Server::start_with(&["--fetch-bytes-max", "4096"]);
    let admin = server.client();
    let partition = seed_tenant(&admin, 2000);
    // A 64 KiB credit window: most of the ~460 KB snapshot is still on the server when the
    // connection drops, so finishing it takes a resume from the cursor.
    let mut stream = server
        .client()
        .extract_then_follow_with_window(
            "t",
            b"acme",
            ExtractMode::State,
            ExtractCriteria::default(),
            64 << 10,
        )
        .expect("extract");
    let mut keys = BTreeMap::new();
    let mut n = 0;
    let watermark = loop {
        match stream
            .next_timeout(Duration::from_secs(30))
            .expect("stream")
            .expect("in time")
        {
            ExtractEvent::Snapshot(r) => {
                assert!(
                    keys.insert(r.key.clone().expect("key"), r.offset).is_none(),
                    "no record twice"
                );
                n += 1;
                if n == 300 || n == 1500 {
                    stream.client().close(); // the connection drops mid-extraction
                }
            }
            ExtractEvent::Watermark {
                offset, records, ..
            } => break (offset.expect("w"), records),
            ExtractEvent::Live(_) => panic!("live before the watermark"),
        }
    };
    assert_eq!(
        keys.len(),
        2000,
        "every key exactly once across two reconnects"
    );
    assert_eq!(watermark.0, 1999);
    // The live stream also survives a dropped connection, without loss or repeat.
    let publish = |first: u64| {
        let records: Vec<Record> = (first..first + 10)
            .map(|i| Record {
                tenant: Some(b"acme".to_vec()),
                key: Some(format!("new-{i}").into_bytes()),
                value: Some(vec![1]),
                ..Record::default()
            })
            .collect();
        admin
            .publish(
                "t",
                partition,
                Ack::Written,
                &build_batch(&records, ProducerStamp::default()),
            )
            .expect("publish");
    };
    publish(0);
    let mut live = Vec::new();
    while live.len() < 30 {
        match stream
            .next_timeout(Duration::from_secs(30))
            .expect("stream")
            .expect("in time")
        {
            ExtractEvent::Live(r) => {
                live.push(r.offset);
                if live.len() == 5 {
                    stream.client().close();
                    publish(10);
                    publish(20);
                }
            }
            other => panic!("only live records now: {other:?}"),
        }
    }
    assert_eq!(live, (2000..2030).collect::<Vec<_>>());
    assert_eq!(stream.reconnects(), 3);
    server.stop();
}

#[test]
fn a_resume_after_the_window_is_a_clear_error() {
    let server = Server::start_with(&[
        "--fetch-bytes-max",
        "4096",
        "--extract-resume-window-secs",
        "1",
    ]);
    let admin = server.client();
    seed_tenant(&admin, 500);
    // A 64 KiB credit window: the server cannot send the whole ~115 KB snapshot before the
    // connection drops, so finishing it needs a resume.
    let mut stream = server
        .client()
        .extract_then_follow_with_window(
            "t",
            b"acme",
            ExtractMode::State,
            ExtractCriteria::default(),
            64 << 10,
        )
        .expect("extract");
    let first = stream
        .next_timeout(Duration::from_secs(30))
        .expect("stream");
    assert!(matches!(first, Some(ExtractEvent::Snapshot(_))));
    stream.client().close();
    std::thread::sleep(Duration::from_millis(3500)); // past the window and a sweep
    let err = loop {
        match stream.next_timeout(Duration::from_secs(30)) {
            Ok(Some(ExtractEvent::Snapshot(_))) => continue, // already-received records drain first
            Ok(other) => panic!("expected the expiry error, got {other:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(
        err.code(),
        Some(tidelog_client::ErrorCode::ExtractionExpired),
        "{err}"
    );
    server.stop();
}
