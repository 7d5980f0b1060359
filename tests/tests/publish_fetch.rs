//! Publish and fetch through the real server: round trip, long poll, durable acks,
//! restart.

use std::time::{Duration, Instant};

use tidelog_client::{build_batch, Ack, ErrorCode, ProducerStamp, Record, StartAt, TopicSettings};
use tidelog_e2e::Server;

fn records(first: u64, n: u64) -> Vec<Record> {
    (first..first + n)
        .map(|i| Record {
            timestamp_ms: 1_700_000_000_000 + i as i64,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("value {i}").into_bytes()),
            headers: vec![(b"n".to_vec(), i.to_string().into_bytes())],
            ..Record::default()
        })
        .collect()
}

fn settings(partitions: u32) -> TopicSettings {
    TopicSettings {
        partitions,
        ..TopicSettings::default()
    }
}

#[test]
fn publish_then_fetch_round_trips_every_field() {
    let server = Server::start();
    let client = server.client();
    client.create_topic("t", settings(2)).expect("create");
    let batch = build_batch(&records(0, 10), ProducerStamp::default());
    let published = client
        .publish("t", 1, Ack::Written, &batch)
        .expect("publish");
    assert_eq!((published[0].base_offset, published[0].last_offset), (0, 9));
    let again = client
        .publish(
            "t",
            1,
            Ack::Written,
            &build_batch(&records(10, 5), ProducerStamp::default()),
        )
        .expect("publish");
    assert_eq!(again[0].base_offset, 10);

    let f = client
        .fetch("t", 1, StartAt::Earliest, 1 << 20, Duration::ZERO, None)
        .expect("fetch");
    assert_eq!(f.records.len(), 15);
    assert_eq!(f.high_watermark, 15);
    for (i, r) in f.records.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.value.as_deref(), Some(format!("value {i}").as_bytes()));
        assert_eq!(r.headers, vec![(b"n".to_vec(), i.to_string().into_bytes())]);
        assert_eq!(r.timestamp_ms, 1_700_000_000_000 + i as i64);
    }
    // From the middle of a batch: only the records from that offset.
    let f = client
        .fetch("t", 1, StartAt::Offset(4), 1 << 20, Duration::ZERO, None)
        .expect("fetch");
    assert_eq!(f.records.first().map(|r| r.offset), Some(4));
    // By timestamp.
    let f = client
        .fetch(
            "t",
            1,
            StartAt::Timestamp(1_700_000_000_012),
            1 << 20,
            Duration::ZERO,
            None,
        )
        .expect("fetch");
    assert_eq!(f.records.first().map(|r| r.offset), Some(10));
    // Offsets and errors.
    let offsets = client.offsets("t").expect("offsets");
    assert_eq!((offsets[1].earliest, offsets[1].next), (0, 15));
    let err = client
        .fetch("t", 1, StartAt::Offset(99), 1 << 20, Duration::ZERO, None)
        .expect_err("out of range");
    assert_eq!(err.code(), Some(ErrorCode::OffsetOutOfRange));
    let err = client
        .fetch("nope", 0, StartAt::Earliest, 1 << 20, Duration::ZERO, None)
        .expect_err("missing topic");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
    server.stop();
}

#[test]
fn pipelined_fetches_read_the_partition_exactly_once_in_order() {
    let server = Server::start();
    let client = server.client();
    client.create_topic("t", settings(1)).expect("create");
    for first in (0..2_000).step_by(100) {
        let batch = build_batch(&records(first, 100), ProducerStamp::default());
        client
            .publish("t", 0, Ack::Written, &batch)
            .expect("publish");
    }
    // Small fetches, the next one sent before the previous is read (as a prefetching
    // consumer does), starting in the middle of a batch.
    let fetch = |at: u64| {
        client
            .send_fetch_batches("t", 0, StartAt::Offset(at), 3_000, None)
            .expect("send fetch")
    };
    let mut seen = Vec::new();
    let mut next = Some(fetch(250));
    let mut fetches = 0;
    while let Some(pending) = next.take() {
        let f = pending.wait().expect("fetch");
        fetches += 1;
        if f.next_offset < 2_000 {
            next = Some(fetch(f.next_offset));
        }
        f.for_each(|r| seen.push((r.offset, r.value.map(<[u8]>::to_vec))))
            .expect("records");
    }
    assert!(fetches > 10, "the partition took {fetches} fetches");
    let expected: Vec<_> = (250..2_000u64)
        .map(|i| (i, Some(format!("value {i}").into_bytes())))
        .collect();
    assert_eq!(seen, expected);
    server.stop();
}

#[test]
fn long_poll_returns_as_soon_as_data_arrives() {
    let server = Server::start();
    let client = server.client();
    client.create_topic("t", settings(1)).expect("create");
    let poller = server.client();
    let started = Instant::now();
    let handle = std::thread::spawn(move || {
        let f = poller
            .fetch(
                "t",
                0,
                StartAt::Offset(0),
                1 << 20,
                Duration::from_secs(30),
                None,
            )
            .expect("long poll");
        (f, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(300));
    let published_at = Instant::now();
    client
        .publish(
            "t",
            0,
            Ack::Written,
            &build_batch(&records(0, 3), ProducerStamp::default()),
        )
        .expect("publish");
    let (f, answered_at) = handle.join().expect("join");
    assert_eq!(f.records.len(), 3);
    // It waited for the data (not answered empty early), and did not wait out its 30 s.
    assert!(answered_at >= published_at);
    assert!(answered_at.duration_since(started) < Duration::from_secs(25));
    // With nothing arriving, it answers empty at its deadline.
    let f = client
        .fetch(
            "t",
            0,
            StartAt::Offset(3),
            1 << 20,
            Duration::from_millis(200),
            None,
        )
        .expect("timeout");
    assert!(f.records.is_empty());
    assert_eq!(f.next_offset, 3);
    server.stop();
}

#[test]
fn durable_publish_is_acknowledged_only_after_the_sync() {
    // A long periodic flush interval: only the group commit can make data durable.
    let server = Server::start_with(&["--flush-interval-ms", "600000"]);
    let client = server.client();
    client.create_topic("t", settings(1)).expect("create");
    for round in 0..20u64 {
        let written = client
            .publish(
                "t",
                0,
                Ack::Written,
                &build_batch(&records(round * 2, 1), ProducerStamp::default()),
            )
            .expect("written");
        let durable = client
            .publish(
                "t",
                0,
                Ack::Durable,
                &build_batch(&records(round * 2 + 1, 1), ProducerStamp::default()),
            )
            .expect("durable");
        let offsets = client.offsets("t").expect("offsets");
        assert!(
            offsets[0].durable > durable[0].last_offset,
            "acknowledged before durable"
        );
        assert!(
            offsets[0].durable > written[0].last_offset,
            "a sync covers everything before it"
        );
    }
    server.stop();
}

#[test]
fn restart_keeps_everything_clean_or_crashed() {
    let mut server = Server::start();
    let dir_guard = server.take_dir();
    let dir = server.data_dir.clone();
    let client = server.client();
    client.create_topic("t", settings(3)).expect("create");
    for p in 0..3 {
        client
            .publish(
                "t",
                p,
                Ack::Written,
                &build_batch(&records(0, 100), ProducerStamp::default()),
            )
            .expect("publish");
    }
    drop(client);
    server.stop();
    let server = Server::start_in(&dir, &[]);
    let client = server.client();
    let topics: Vec<(String, u32)> = client
        .list_topics()
        .expect("list")
        .into_iter()
        .filter(|(name, _)| !name.starts_with("__tidelog")) // the server's own topics
        .collect();
    assert_eq!(topics, vec![("t".to_string(), 3)]);
    client
        .publish(
            "t",
            0,
            Ack::Written,
            &build_batch(&records(100, 50), ProducerStamp::default()),
        )
        .expect("publish");
    drop(client);
    server.kill(); // acknowledged `written` must survive a crash too
    let server = Server::start_in(&dir, &[]);
    let client = server.client();
    let offsets = client.offsets("t").expect("offsets");
    assert_eq!(
        offsets.iter().map(|o| o.next).collect::<Vec<_>>(),
        vec![150, 100, 100]
    );
    let f = client
        .fetch("t", 0, StartAt::Offset(120), 1 << 20, Duration::ZERO, None)
        .expect("fetch");
    assert_eq!(f.records[0].value.as_deref(), Some(&b"value 120"[..]));
    server.stop();
    drop(dir_guard);
}

/// Large fetch responses go out with `sendfile`; clients that hang up while one is being
/// sent (unread bytes: the server's next send fails with a reset) cost only their own
/// connection, and every byte a reader does take is the log's.
#[test]
fn clients_leaving_mid_response_cost_only_their_connection() {
    use std::io::{Read, Write};
    let server = Server::start();
    let client = server.client();
    client.create_topic("t", settings(1)).expect("create");
    let value = vec![0x5Au8; 1000];
    for b in 0..64u64 {
        let batch: Vec<Record> = (0..256u64)
            .map(|i| Record {
                timestamp_ms: 1,
                value: Some(value.clone()),
                key: Some(format!("k{}", b * 256 + i).into_bytes()),
                ..Record::default()
            })
            .collect();
        client
            .publish(
                "t",
                0,
                Ack::Written,
                &build_batch(&batch, ProducerStamp::default()),
            )
            .expect("publish");
    }
    for round in 0..20 {
        let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
        let mut frames = tidelog_e2e::hello_frame("leaver");
        tidelog_protocol::encode_request(
            &mut frames,
            2,
            &tidelog_protocol::Request::Fetch {
                topic: "t",
                partition: 0,
                start: StartAt::Offset(0),
                max_bytes: 8 << 20,
                max_wait_ms: 0,
                tenant: None,
            },
        );
        s.write_all(&frames).expect("requests");
        // Take a little of the response (none, or a few KiB), then hang up.
        let mut some = vec![0u8; round * 1000];
        s.read_exact(&mut some).expect("some of the responses");
        drop(s);
    }
    // The server goes on, and a full read of the log is the log.
    let mut at = 0;
    let mut n = 0u64;
    while at < 64 * 256 {
        let f = client
            .fetch("t", 0, StartAt::Offset(at), 1 << 20, Duration::ZERO, None)
            .expect("fetch after the leavers");
        for r in &f.records {
            assert_eq!(r.offset, n);
            assert_eq!(r.value.as_deref(), Some(&value[..]));
            n += 1;
        }
        at = f.next_offset;
    }
    assert_eq!(n, 64 * 256);
    server.stop();
}

/// Publishes that reach the server together are appended together (one write for the
/// batches of consecutive publishes to one partition) and still answered each on its
/// own, in order, exactly as if alone: a bad batch stops only its own request (the batch
/// before it stays appended, and the error says so), a producer's retry of a batch in
/// the same group is a duplicate with that batch's offsets, a sequence gap is refused,
/// a publish to another partition in the middle is not mixed in, and nothing is written
/// twice or out of order. Raw frames, written to the socket in one go.
#[test]
fn publishes_read_together_are_each_answered_as_if_alone() {
    use std::io::Write;
    use tidelog_protocol::{encode_request, response, Request, Response};

    let server = Server::start();
    let client = server.client();
    client.create_topic("g", settings(2)).expect("create");
    let mut s = tidelog_e2e::raw_connection(&server);

    let plain = ProducerStamp::default();
    let stamped = |sequence| ProducerStamp {
        producer_id: 9,
        sequence,
    };
    let batch = |first, n, stamp| build_batch(&records(first, n), stamp);
    let mut corrupt = batch(100, 5, plain);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff; // the CRC no longer matches
    let requests: Vec<(u64, u32, Ack, Vec<u8>)> = vec![
        (2, 0, Ack::Written, batch(0, 10, plain)),
        (
            3,
            0,
            Ack::Written,
            [batch(10, 10, plain), corrupt, batch(200, 5, plain)].concat(),
        ),
        (4, 0, Ack::None, batch(20, 10, plain)),
        (5, 0, Ack::Durable, batch(30, 10, plain)),
        (6, 1, Ack::Written, batch(500, 10, plain)),
        (7, 0, Ack::Written, batch(40, 10, stamped(0))),
        (8, 0, Ack::Written, batch(40, 10, stamped(0))),
        (9, 0, Ack::Written, batch(300, 10, stamped(5))),
        (10, 0, Ack::Written, batch(50, 10, stamped(1))),
    ];
    let mut wire = Vec::new();
    for (correlation, partition, ack, batches) in &requests {
        let publish = Request::Publish {
            topic: "g",
            partition: *partition,
            ack: *ack,
            batches,
        };
        encode_request(&mut wire, *correlation, &publish);
    }
    encode_request(&mut wire, 11, &Request::Ping);
    s.write_all(&wire).expect("write");

    // Answers: every request but the one with ack `none`, the durable one whenever its
    // sync comes, the others in the order sent.
    let mut answers = std::collections::BTreeMap::new();
    let mut order = Vec::new();
    while answers.len() < 9 {
        let (k, flags, correlation, body) = tidelog_e2e::read_raw(&mut s).expect("answer");
        assert_ne!(correlation, 4, "a publish with ack none is not answered");
        if correlation != 5 {
            order.push(correlation);
        }
        let answer = if flags & 0x02 != 0 {
            let e = response::decode_error(&body).expect("error body");
            Err((e.code, e.message))
        } else {
            match Response::decode(k, &body).expect("response body") {
                Response::Published(b) => Ok(b
                    .iter()
                    .map(|b| (b.base_offset, b.last_offset, b.duplicate))
                    .collect::<Vec<_>>()),
                Response::Done => Ok(Vec::new()),
                other => panic!("unexpected answer {other:?}"),
            }
        };
        assert!(
            answers.insert(correlation, answer).is_none(),
            "one answer each"
        );
    }
    assert_eq!(order, vec![2, 3, 6, 7, 8, 9, 10, 11]);
    assert_eq!(answers[&2], Ok(vec![(0, 9, false)]));
    match &answers[&3] {
        Err((code, message)) => {
            assert_eq!(*code, ErrorCode::InvalidBatch);
            assert!(
                message.contains("the 1 batches before it were appended"),
                "{message}"
            );
        }
        other => panic!("the corrupt batch was not refused: {other:?}"),
    }
    assert_eq!(answers[&5], Ok(vec![(30, 39, false)]));
    assert_eq!(answers[&6], Ok(vec![(0, 9, false)]));
    assert_eq!(answers[&7], Ok(vec![(40, 49, false)]));
    assert_eq!(answers[&8], Ok(vec![(40, 49, true)]));
    assert!(
        matches!(&answers[&9], Err((ErrorCode::OutOfOrderSequence, _))),
        "{:?}",
        answers[&9]
    );
    assert_eq!(answers[&10], Ok(vec![(50, 59, false)]));

    // Partition 0 holds records 0..60 at offsets 0..60, each once; partition 1 the other
    // request's ten.
    let f = client
        .fetch("g", 0, StartAt::Earliest, 1 << 20, Duration::ZERO, None)
        .expect("fetch");
    let got: Vec<(u64, Vec<u8>)> = f
        .records
        .iter()
        .map(|r| (r.offset, r.value.clone().unwrap_or_default()))
        .collect();
    let want: Vec<(u64, Vec<u8>)> = (0..60)
        .map(|i| (i, format!("value {i}").into_bytes()))
        .collect();
    assert_eq!(got, want);
    let f = client
        .fetch("g", 1, StartAt::Earliest, 1 << 20, Duration::ZERO, None)
        .expect("fetch");
    let values: Vec<Vec<u8>> = f.records.iter().filter_map(|r| r.value.clone()).collect();
    let want: Vec<Vec<u8>> = (500..510)
        .map(|i| format!("value {i}").into_bytes())
        .collect();
    assert_eq!(values, want);
}
