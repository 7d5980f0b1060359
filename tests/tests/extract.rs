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
use tidelog_e2e::{create_topic, publish_batch, raw_connection, read_raw, Server};
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
            publish_batch(&client, "t", partition, &records);
        }
    })
}

/// Every acme record of the partition from `from`, with tenant-filtered fetches.
fn tenant_records(
    client: &tidelog_client::Client,
    partition: u32,
    from: u64,
) -> Vec<tidelog_client::ConsumedRecord> {
    records(client, partition, from, Some(b"acme"))
}

/// Every record of the partition from `from` (of `tenant` only, if given).
fn records(
    client: &tidelog_client::Client,
    partition: u32,
    from: u64,
    tenant: Option<&[u8]>,
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
                tenant,
            )
            .expect("fetch");
        out.extend(f.records.into_iter().filter(|r| r.offset >= from));
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
    create_topic(admin, "t", 1);
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
        publish_batch(admin, "t", partition, &records);
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
        publish_batch(&admin, "t", partition, &records);
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

/// The whole topic, every tenant: one watermark per partition; per partition, the
/// snapshot plus the live records after its watermark equal the state replayed from the
/// partition — with writers on every partition throughout.
#[test]
fn a_topic_wide_extraction_has_one_watermark_per_partition_and_no_seam() {
    let server = Server::start();
    let admin = server.client();
    create_topic(&admin, "t", 3);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u32)
        .map(|p| writer(server.addr, p, 77 + u64::from(p), stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let client = server.client();
    let mut stream = client
        .extract_topic_then_follow("t", ExtractMode::State, ExtractCriteria::default(), 1 << 20)
        .expect("extract");
    // (partition, tenant) → state
    let mut state: BTreeMap<(u32, Vec<u8>), State> = BTreeMap::new();
    let mut watermarks: BTreeMap<u32, Option<u64>> = BTreeMap::new();
    let mut live_seen: BTreeMap<u32, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stopped_at: Option<Instant> = None;
    loop {
        assert!(Instant::now() < deadline, "timed out");
        if watermarks.len() == 3 && stopped_at.is_none() {
            std::thread::sleep(Duration::from_millis(100));
            stop.store(true, Ordering::Relaxed);
            stopped_at = Some(Instant::now());
        }
        let event = stream
            .next_timeout(Duration::from_millis(200))
            .expect("event");
        match event {
            Some(ExtractEvent::Snapshot(r)) => {
                assert!(
                    !watermarks.contains_key(&r.partition),
                    "snapshot after its watermark"
                );
                let key = r.key.clone().expect("key");
                apply(
                    state
                        .entry((r.partition, r.tenant.clone().expect("tenant")))
                        .or_default(),
                    &key,
                    r.offset,
                    r.value.as_deref(),
                );
            }
            Some(ExtractEvent::Watermark {
                partition, offset, ..
            }) => {
                assert!(
                    watermarks.insert(partition, offset).is_none(),
                    "one watermark per partition"
                );
            }
            Some(ExtractEvent::Live(r)) => {
                let w = watermarks.get(&r.partition).copied().flatten();
                assert!(
                    w.is_none_or(|w| r.offset > w),
                    "live record {} at or before W {w:?}",
                    r.offset
                );
                let prev = live_seen.insert(r.partition, r.offset);
                assert!(prev.is_none_or(|p| r.offset > p), "live order");
                let key = r.key.clone().expect("key");
                apply(
                    state
                        .entry((r.partition, r.tenant.clone().expect("tenant")))
                        .or_default(),
                    &key,
                    r.offset,
                    r.value.as_deref(),
                );
            }
            None => {
                if stopped_at.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) {
                    break;
                }
            }
        }
    }
    for w in writers {
        w.join().expect("writer");
    }
    assert_eq!(watermarks.len(), 3);
    // Catch up on anything the round robin has not delivered yet.
    while let Some(e) = stream
        .next_timeout(Duration::from_millis(300))
        .expect("event")
    {
        if let ExtractEvent::Live(r) = e {
            let key = r.key.clone().expect("key");
            apply(
                state
                    .entry((r.partition, r.tenant.clone().expect("tenant")))
                    .or_default(),
                &key,
                r.offset,
                r.value.as_deref(),
            );
        }
    }
    for p in 0..3u32 {
        let mut reference: BTreeMap<(u32, Vec<u8>), State> = BTreeMap::new();
        for r in records(&admin, p, 0, None) {
            let key = r.key.clone().expect("key");
            apply(
                reference
                    .entry((p, r.tenant.clone().expect("tenant")))
                    .or_default(),
                &key,
                r.offset,
                r.value.as_deref(),
            );
        }
        for tenant in [b"acme".to_vec(), b"zeta".to_vec()] {
            assert_eq!(
                state.get(&(p, tenant.clone())).cloned().unwrap_or_default(),
                reference
                    .get(&(p, tenant.clone()))
                    .cloned()
                    .unwrap_or_default(),
                "partition {p}, tenant {}",
                String::from_utf8_lossy(&tenant)
            );
        }
    }
}

#[test]
fn tenant_info_and_bad_extractions_get_clear_answers() {
    let server = Server::start();
    let client = server.client();
    create_topic(&client, "t", 4);
    let home = partitioner::partition_for(Some(b"acme"), None, 4).expect("partition");
    let records: Vec<Record> = (0..10)
        .map(|i| Record {
            timestamp_ms: 1,
            tenant: Some(b"acme".to_vec()),
            key: Some(format!("k{}", i % 4).into_bytes()),
            value: (i != 9).then(|| b"v".to_vec()),
            headers: Vec::new(),
        })
        .collect();
    let base = publish_batch(&client, "t", home, &records);
    let info = client.tenant_info("t", b"acme").expect("info");
    assert_eq!(info.partition, home);
    assert_eq!(
        info.latest_offset,
        Some(base + 9),
        "the 10th record is the latest event"
    );
    assert_eq!(
        info.live_keys, 3,
        "k0..k3 written, k1 (the 10th record's key) deleted"
    );
    assert_eq!(info.events, 10);
    let nobody = client.tenant_info("t", b"nobody").expect("info");
    assert_eq!((nobody.latest_offset, nobody.live_keys), (None, 0));
    let code = |r: tidelog_client::Result<_>| {
        r.map(|_: tidelog_client::ExtractThenFollow| ())
            .expect_err("an error")
            .code()
    };
    assert_eq!(
        code(client.extract_then_follow(
            "no-such-topic",
            b"acme",
            ExtractMode::State,
            ExtractCriteria::default()
        )),
        Some(tidelog_client::ErrorCode::UnknownTopic)
    );
    // EXTRACT of acme on a partition that is not its own.
    let other = (home + 1) % 4;
    let (id, _rx) = (1u32, ());
    let frame = client
        .request(&tidelog_protocol::Request::Extract {
            extraction: id,
            topic: "t",
            partition: other,
            tenant: b"acme",
            mode: ExtractMode::State,
            filter: Default::default(),
            credit_bytes: 1 << 20,
            resume_token: 0,
            resume_cursor: 0,
        })
        .expect("request");
    let err = frame.response().expect_err("wrong partition");
    assert_eq!(err.code(), Some(tidelog_client::ErrorCode::InvalidRequest));
    assert!(
        err.to_string()
            .contains(&format!("its partition is {home}")),
        "{err}"
    );
    // A resume token used with another topic is refused, clearly.
    create_topic(&client, "u", 1);
    let frame = client
        .request(&tidelog_protocol::Request::Extract {
            extraction: 2,
            topic: "t",
            partition: home,
            tenant: b"acme",
            mode: ExtractMode::State,
            filter: Default::default(),
            credit_bytes: 1 << 20,
            resume_token: 0,
            resume_cursor: 0,
        })
        .expect("request");
    let token = match frame.response().expect("extracting") {
        tidelog_protocol::Response::Extracting { token, .. } => token,
        other => panic!("{other:?}"),
    };
    let frame = client
        .request(&tidelog_protocol::Request::Extract {
            extraction: 3,
            topic: "u",
            partition: 0,
            tenant: b"acme",
            mode: ExtractMode::State,
            filter: Default::default(),
            credit_bytes: 1 << 20,
            resume_token: token,
            resume_cursor: 0,
        })
        .expect("request");
    let err = frame.response().expect_err("cursor of another topic");
    assert_eq!(err.code(), Some(tidelog_client::ErrorCode::InvalidRequest));
    client.ping().expect("healthy");
}

/// A writer that survives server restarts: it reconnects and goes on (a publish that
/// failed with the connection may or may not be in the log; the reference below is the
/// log itself, so either is fine).
fn resilient_writer(
    addr: std::net::SocketAddr,
    partition: u32,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while !stop.load(Ordering::Relaxed) {
            let Ok(client) = tidelog_client::Client::connect(addr, Default::default()) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            while !stop.load(Ordering::Relaxed) {
                let records: Vec<Record> = (0..3)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        Record {
                            timestamp_ms: 1,
                            tenant: Some(if x % 3 == 0 {
                                b"zeta".to_vec()
                            } else {
                                b"acme".to_vec()
                            }),
                            key: Some(format!("file-{}", (x >> 8) % 300).into_bytes()),
                            value: ((x >> 20) % 5 != 0)
                                .then(|| format!("v{x}").repeat(30).into_bytes()),
                            headers: Vec::new(),
                        }
                    })
                    .collect();
                if client
                    .publish(
                        "t",
                        partition,
                        Ack::Written,
                        &build_batch(&records, ProducerStamp::default()),
                    )
                    .is_err()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
}

/// The server is killed (-9) and restarted on the same address twice: once while the
/// snapshot is being read — the extraction cannot be resumed (the server lost it), the
/// client gets `ExtractionExpired` and starts over from a new watermark — and once while
/// following live — the stream reconnects and resubscribes from the next offset by
/// itself. Either way, snapshot ∪ live equals the tenant's state replayed from the log.
#[test]
fn the_handoff_holds_across_server_restarts() {
    let mut server = Server::start();
    let addr = server.addr;
    let admin = server.client();
    create_topic(&admin, "t", 1);
    let dir_guard = server.take_dir();
    let dir = server.data_dir.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = resilient_writer(addr, 0, stop.clone());
    // A snapshot several credit windows long, so the kill below lands while it is read
    // (on a loaded machine the writer may need longer than usual to get there).
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin
        .tenant_info("t", b"acme")
        .map_or(true, |i| i.live_keys < 200)
    {
        assert!(Instant::now() < deadline, "the writer made too few keys");
        std::thread::sleep(Duration::from_millis(20));
    }
    let listen = addr.to_string();
    let connect = || tidelog_client::Client::connect(addr, Default::default()).expect("connect");
    let start = |c: &tidelog_client::Client| {
        c.extract_then_follow_with_window(
            "t",
            b"acme",
            ExtractMode::State,
            ExtractCriteria::default(),
            16 << 10,
        )
        .expect("extract")
    };
    // Read a little of the snapshot, then kill the server and bring it back.
    let mut client = connect();
    let mut stream = start(&client);
    for _ in 0..5 {
        let event = stream.next_timeout(Duration::from_secs(10)).expect("event");
        assert!(
            matches!(event, Some(ExtractEvent::Snapshot(_))),
            "{event:?}"
        );
    }
    server.kill();
    server = Server::start_in_at(&dir, &listen, &[]);
    let mut state = State::new();
    let mut watermark = None;
    let mut restarts = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while watermark.is_none() {
        assert!(Instant::now() < deadline, "no watermark");
        match stream.next_timeout(Duration::from_secs(10)) {
            Ok(Some(ExtractEvent::Snapshot(r))) => apply(
                &mut state,
                r.key.as_deref().expect("key"),
                r.offset,
                r.value.as_deref(),
            ),
            Ok(Some(ExtractEvent::Watermark { offset, .. })) => watermark = Some(offset),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => {
                // The server lost the extraction with its restart: a clear error; start over.
                assert_eq!(
                    e.code(),
                    Some(tidelog_client::ErrorCode::ExtractionExpired),
                    "{e}"
                );
                restarts += 1;
                state.clear();
                client = connect();
                stream = start(&client);
            }
        }
    }
    assert_eq!(restarts, 1, "the extraction had to start over once");
    let w = watermark.expect("watermark");
    // Follow live for a while, restart the server again under the live stream.
    let mut last_live = w;
    let mut follow =
        |stream: &mut tidelog_client::ExtractThenFollow, state: &mut State, until: Instant| {
            while Instant::now() < until {
                if let Some(ExtractEvent::Live(r)) = stream
                    .next_timeout(Duration::from_millis(100))
                    .expect("live")
                {
                    assert!(
                        w.is_none_or(|w| r.offset > w),
                        "live record at or before the watermark"
                    );
                    assert!(
                        last_live.is_none_or(|l| r.offset > l),
                        "live records in order, once"
                    );
                    last_live = Some(r.offset);
                    apply(
                        state,
                        r.key.as_deref().expect("key"),
                        r.offset,
                        r.value.as_deref(),
                    );
                }
            }
        };
    follow(
        &mut stream,
        &mut state,
        Instant::now() + Duration::from_millis(500),
    );
    server.kill();
    server = Server::start_in_at(&dir, &listen, &[]);
    follow(
        &mut stream,
        &mut state,
        Instant::now() + Duration::from_secs(2),
    );
    assert!(stream.reconnects() >= 1, "the live stream reconnected");
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    follow(
        &mut stream,
        &mut state,
        Instant::now() + Duration::from_secs(1),
    );
    // Reference: acme's state replayed from the whole log.
    let mut reference = State::new();
    for r in tenant_records(&server.client(), 0, 0) {
        apply(
            &mut reference,
            r.key.as_deref().expect("key"),
            r.offset,
            r.value.as_deref(),
        );
    }
    assert_eq!(
        state, reference,
        "snapshot ∪ live across two server restarts"
    );
    drop(dir_guard);
}

/// Publishes one record of `tenant` for each of keys `key-0`.. `key-{keys - 1}` of
/// partition 0 of topic "t", with `value`, 5000 to a batch.
fn publish_keys(client: &tidelog_client::Client, tenant: &[u8], keys: u64, value: &[u8]) {
    for first in (0..keys).step_by(5000) {
        let records: Vec<Record> = (first..(first + 5000).min(keys))
            .map(|k| Record {
                timestamp_ms: 1,
                tenant: Some(tenant.to_vec()),
                key: Some(format!("key-{k}").into_bytes()),
                value: Some(value.to_vec()),
                headers: Vec::new(),
            })
            .collect();
        publish_batch(client, "t", 0, &records);
    }
}

/// Nothing arrives on `s` within `wait` (round `round` of a test).
fn assert_nothing_more(s: &mut std::net::TcpStream, wait: Duration, round: u32) {
    s.set_read_timeout(Some(wait)).expect("timeout");
    match read_raw(s) {
        Ok((k, _, c, _)) => panic!("round {round}: stray frame kind {k:#x} correlation {c}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
}

fn extract_frame(correlation: u64, extraction: u32, credit_bytes: u32) -> Vec<u8> {
    extract_frame_of(
        correlation,
        extraction,
        credit_bytes,
        b"acme",
        tidelog_protocol::ExtractMode::State,
    )
}

fn extract_frame_of(
    correlation: u64,
    extraction: u32,
    credit_bytes: u32,
    tenant: &[u8],
    mode: tidelog_protocol::ExtractMode,
) -> Vec<u8> {
    let mut out = Vec::new();
    tidelog_protocol::encode_request(
        &mut out,
        correlation,
        &tidelog_protocol::Request::Extract {
            extraction,
            topic: "t",
            partition: 0,
            tenant,
            mode,
            filter: tidelog_protocol::ExtractFilter {
                since_ms: i64::MIN,
                until_ms: i64::MAX,
                key_prefix: "",
                headers: Vec::new(),
            },
            credit_bytes,
            resume_token: 0,
            resume_cursor: 0,
        },
    );
    out
}

/// A state extraction's freeze runs off the event loop, and its answer goes only where it
/// is still awaited: credit granted before the EXTRACT is answered counts, and a connection
/// closed while its tenant is being frozen gets nothing — nor does the connection that
/// takes its place — while the server goes on serving.
#[test]
fn a_state_extraction_is_answered_after_its_freeze_and_only_to_its_asker() {
    use std::io::Write;
    use tidelog_protocol::kind;
    const KEYS: u64 = 100_000;
    let server = Server::start();
    let client = server.client();
    create_topic(&client, "t", 1);
    // Enough keys that a freeze takes milliseconds.
    publish_keys(&client, b"acme", KEYS, b"value");

    // EXTRACT without credit and GRANT_CREDITS in one write: the loop reads both before
    // the freeze can be collected (results are taken after a tick's input), so the grant
    // reaches the extraction while it is still being frozen.
    let mut s = raw_connection(&server);
    let mut frames = extract_frame(2, 7, 0);
    tidelog_protocol::encode_request(
        &mut frames,
        3,
        &tidelog_protocol::Request::GrantCredits {
            subscription: 7,
            credit_bytes: 1 << 30,
        },
    );
    s.write_all(&frames).expect("extract + credit");
    let (k, flags, correlation, _) = read_raw(&mut s).expect("EXTRACT response");
    assert_eq!((k, flags & 0x02, correlation), (kind::EXTRACT, 0, 2));
    let records = loop {
        let (k, flags, correlation, body) = read_raw(&mut s).expect("extraction frames");
        assert_eq!(flags & 0x02, 0, "no error frame (kind {k:#x})");
        assert_eq!(correlation, 7);
        if k == kind::EXTRACT_END {
            break u64::from_le_bytes(body[8..16].try_into().expect("8"));
        }
        assert_eq!(k, kind::EXTRACT_DATA);
    };
    assert_eq!(
        records, KEYS,
        "the whole state, on credit granted mid-freeze"
    );

    // A connection that asks and leaves at once; new connections right after it (one of
    // them likely in its slot) must never see that extraction's frames.
    for round in 0..5 {
        let mut a = raw_connection(&server);
        a.write_all(&extract_frame(2, 9, 1 << 20)).expect("extract");
        drop(a);
        std::thread::sleep(Duration::from_millis(2));
        let mut b = raw_connection(&server);
        let mut ping = Vec::new();
        tidelog_protocol::encode_request(&mut ping, 5, &tidelog_protocol::Request::Ping);
        b.write_all(&ping).expect("ping");
        let (k, _, correlation, _) = read_raw(&mut b).expect("ping response");
        assert_eq!((k, correlation), (kind::PING, 5), "round {round}");
        assert_nothing_more(&mut b, Duration::from_millis(150), round);
    }
    let info = client.tenant_info("t", b"acme").expect("tenant info");
    assert_eq!(info.live_keys, KEYS);
}

/// An extraction's reads run on the worker thread, one out at a time, and a chunk goes
/// only to the extraction that asked for it: a connection that leaves while a large read
/// of its extraction is out, replaced at once by one (likely in its slot) that starts an
/// extraction with the same id on another tenant, gets exactly that tenant's records,
/// each once — never the departed one's chunk.
#[test]
fn a_read_in_flight_reaches_only_the_extraction_that_asked() {
    use std::io::Write;
    use tidelog_protocol::{kind, ExtractMode};
    const KEYS: u64 = 300_000;
    const OTHER: u64 = 500;
    let server = Server::start();
    let client = server.client();
    create_topic(&client, "t", 1);
    // Tiny records, so one 1 MiB chunk is tens of thousands of random reads.
    publish_keys(&client, b"acme", KEYS, b"v");
    let beta: Vec<Record> = (0..OTHER)
        .map(|k| Record {
            timestamp_ms: 1,
            tenant: Some(b"beta".to_vec()),
            key: Some(format!("b{k}").into_bytes()),
            value: Some(b"w".to_vec()),
            headers: Vec::new(),
        })
        .collect();
    publish_batch(&client, "t", 0, &beta);

    for round in 0..6 {
        // A: its first chunk arrives, so its second read (up to 1 MiB) is out; then it
        // leaves.
        let mut a = raw_connection(&server);
        a.write_all(&extract_frame_of(
            2,
            9,
            8 << 20,
            b"acme",
            ExtractMode::State,
        ))
        .expect("extract");
        let (k, _, _, _) = read_raw(&mut a).expect("EXTRACT response");
        assert_eq!(k, kind::EXTRACT);
        let (k, _, _, _) = read_raw(&mut a).expect("first chunk");
        assert_eq!(k, kind::EXTRACT_DATA);
        drop(a);
        std::thread::sleep(Duration::from_millis(2));
        // B: a history extraction (registered at once, no freeze) with the same id.
        let mut b = raw_connection(&server);
        b.write_all(&extract_frame_of(
            2,
            9,
            1 << 30,
            b"beta",
            ExtractMode::History,
        ))
        .expect("extract");
        let (k, flags, _, _) = read_raw(&mut b).expect("EXTRACT response");
        assert_eq!((k, flags & 0x02), (kind::EXTRACT, 0), "round {round}");
        let mut keys = std::collections::BTreeSet::new();
        let ended_with = loop {
            let (k, flags, correlation, body) = read_raw(&mut b).expect("extraction frames");
            assert_eq!((flags & 0x02, correlation), (0, 9), "round {round}");
            if k == kind::EXTRACT_END {
                break u64::from_le_bytes(body[8..16].try_into().expect("8"));
            }
            assert_eq!(k, kind::EXTRACT_DATA);
            let data = tidelog_protocol::response::decode_extract_data(&body).expect("data");
            let mut batches = data.batches;
            while !batches.is_empty() {
                let len = tidelog_protocol::batch::peek_len(batches).expect("a batch") as usize;
                let view = tidelog_protocol::batch::validate(&batches[..len]).expect("valid");
                for r in view.records() {
                    let r = r.expect("valid record");
                    assert_eq!(
                        r.tenant,
                        Some(&b"beta"[..]),
                        "round {round}: another's record"
                    );
                    assert!(
                        keys.insert(r.key.expect("keyed").to_vec()),
                        "round {round}: twice"
                    );
                }
                batches = &batches[len..];
            }
        };
        assert_eq!(
            (keys.len() as u64, ended_with),
            (OTHER, OTHER),
            "round {round}"
        );
    }
}

/// TENANT_INFO is looked up on the worker thread (it catches the tenant index up first),
/// and its answer goes only to the connection that asked: one that asks and leaves while
/// the worker is busy with a large freeze, replaced at once by a connection (likely in its
/// slot) that sends a request with the same correlation id, never reaches the newcomer.
/// The newcomer's own TENANT_INFO is answered, behind the same freeze.
#[test]
fn a_tenant_info_answer_goes_only_to_the_connection_that_asked() {
    use std::io::Write;
    use tidelog_protocol::{kind, ExtractMode, Request, Response};
    const KEYS: u64 = 300_000;
    let server = Server::start();
    let client = server.client();
    create_topic(&client, "t", 1);
    publish_keys(&client, b"acme", KEYS, b"v");
    let info_frame = |correlation| {
        let mut out = Vec::new();
        tidelog_protocol::encode_request(
            &mut out,
            correlation,
            &Request::TenantInfo {
                topic: "t",
                tenant: b"acme",
            },
        );
        out
    };
    for round in 0..5 {
        // A freeze of 300 000 keys keeps the worker busy for milliseconds.
        let mut busy = raw_connection(&server);
        busy.write_all(&extract_frame_of(2, 1, 0, b"acme", ExtractMode::State))
            .expect("extract");
        let mut a = raw_connection(&server);
        a.write_all(&info_frame(6)).expect("tenant info");
        drop(a);
        std::thread::sleep(Duration::from_millis(2));
        let mut b = raw_connection(&server);
        let mut ping = Vec::new();
        tidelog_protocol::encode_request(&mut ping, 6, &Request::Ping);
        b.write_all(&ping).expect("ping");
        let (k, _, correlation, _) = read_raw(&mut b).expect("ping response");
        assert_eq!((k, correlation), (kind::PING, 6), "round {round}");
        b.write_all(&info_frame(7)).expect("tenant info");
        let (k, flags, correlation, body) = read_raw(&mut b).expect("tenant info response");
        assert_eq!(
            (k, flags & 0x02, correlation),
            (kind::TENANT_INFO, 0, 7),
            "round {round}: a stray answer"
        );
        match Response::decode(k, &body).expect("body") {
            Response::TenantInfo { live_keys, .. } => assert_eq!(live_keys, KEYS),
            other => panic!("unexpected {other:?}"),
        }
        assert_nothing_more(&mut b, Duration::from_millis(100), round);
        drop(busy);
    }
}
