//! Bad input never panics the server, never changes data on disk, and never stalls other
//! clients: each case gets its documented error or a closed connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidelog_client::{build_batch, Ack, ErrorCode, ProducerStamp, Record, StartAt, TopicSettings};
use tidelog_e2e::Server;
use tidelog_protocol::{encode_request, Request};

fn hello() -> Vec<u8> {
    let mut f = Vec::new();
    encode_request(
        &mut f,
        1,
        &Request::Hello {
            min_version: 1,
            max_version: 1,
            client: "bad",
        },
    );
    f
}

/// Reads frames until EOF; returns the error codes seen.
fn error_codes_until_eof(s: &mut TcpStream) -> Vec<u16> {
    let mut codes = Vec::new();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let mut pos = 0;
    while pos + 16 <= all.len() {
        let len = u32::from_le_bytes(all[pos..pos + 4].try_into().expect("4")) as usize + 4;
        let flags = all[pos + 7];
        if flags & 0x02 != 0 && pos + 18 <= all.len() {
            codes.push(u16::from_le_bytes([all[pos + 16], all[pos + 17]]));
        }
        pos += len;
    }
    codes
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Contents of every segment file of a topic (the data written, and nothing else).
fn topic_files(data_dir: &Path, topic: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let dir = data_dir.join("topics").join(topic).join("0");
    for e in std::fs::read_dir(&dir).expect("ls") {
        let p = e.expect("entry").path();
        if p.extension()
            .is_some_and(|x| x == "log" || x == "index" || x == "timeindex")
        {
            out.push((p.display().to_string(), std::fs::read(&p).expect("read")));
        }
    }
    out.sort();
    out
}

#[test]
fn bad_input_gets_errors_and_harms_no_one() {
    let server = Server::start();
    let admin = server.client();
    let small = TopicSettings {
        partitions: 1,
        segment_bytes: 64 << 10,
        ..TopicSettings::default()
    };
    admin.create_topic("t", small).expect("create t");
    admin
        .create_topic(
            "good",
            TopicSettings {
                partitions: 1,
                ..TopicSettings::default()
            },
        )
        .expect("create good");
    let record = |i: u64| Record {
        value: Some(i.to_le_bytes().to_vec()),
        ..Record::default()
    };
    admin
        .publish(
            "t",
            0,
            Ack::Durable,
            &build_batch(&[record(1), record(2)], ProducerStamp::default()),
        )
        .expect("seed");
    let before = topic_files(&server.data_dir, "t");

    // A healthy client works throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let healthy = {
        let client = server.client();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let a = client
                    .publish(
                        "good",
                        0,
                        Ack::Written,
                        &build_batch(&[record(n)], ProducerStamp::default()),
                    )
                    .expect("healthy publish");
                assert_eq!(a[0].base_offset, n);
                let f = client
                    .fetch("good", 0, StartAt::Offset(n), 1 << 20, Duration::ZERO, None)
                    .expect("healthy fetch");
                assert_eq!(f.records[0].offset, n);
                n += 1;
            }
            n
        })
    };

    // 1. Garbage (an HTTP request): its first four bytes are an absurd length.
    let mut s = connect(&server);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert_eq!(
        error_codes_until_eof(&mut s),
        vec![ErrorCode::BadFrame as u16]
    );

    // 2. A frame longer than the limit, after a valid handshake.
    let mut s = connect(&server);
    s.write_all(&hello()).expect("hello");
    let mut oversize = (100u32 << 20).to_le_bytes().to_vec();
    oversize.extend_from_slice(&[0x20, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    s.write_all(&oversize).expect("write");
    assert_eq!(
        error_codes_until_eof(&mut s),
        vec![ErrorCode::BadFrame as u16]
    );

    // 3. A truncated frame, then the client disconnects.
    let mut s = connect(&server);
    s.write_all(&hello()).expect("hello");
    let mut publish = Vec::new();
    let batch = build_batch(&[record(9)], ProducerStamp::default());
    encode_request(
        &mut publish,
        2,
        &Request::Publish {
            topic: "t",
            partition: 0,
            ack: Ack::Written,
            batches: &batch,
        },
    );
    s.write_all(&publish[..publish.len() / 2])
        .expect("half a frame");
    drop(s);

    // 4. A request before HELLO: HandshakeRequired, then closed.
    let mut s = connect(&server);
    let mut ping = Vec::new();
    encode_request(&mut ping, 5, &Request::Ping);
    s.write_all(&ping).expect("ping");
    assert_eq!(
        error_codes_until_eof(&mut s),
        vec![ErrorCode::HandshakeRequired as u16]
    );

    // 5. Unknown kind, fetch of a missing topic, a batch with a bad CRC, a malformed
    //    body: each an error; the connection stays open for the next request.
    let client = server.client();
    let err = client
        .fetch("missing", 0, StartAt::Earliest, 1024, Duration::ZERO, None)
        .expect_err("missing topic");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
    let mut corrupt = build_batch(&[record(7)], ProducerStamp::default());
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    let err = client
        .publish("t", 0, Ack::Written, &corrupt)
        .expect_err("bad crc");
    assert_eq!(err.code(), Some(ErrorCode::InvalidBatch));
    let err = client
        .publish("t", 0, Ack::Written, &batch[..batch.len() - 3])
        .expect_err("truncated batch");
    assert_eq!(err.code(), Some(ErrorCode::InvalidBatch));
    let err = client
        .publish("t", 7, Ack::Written, &batch)
        .expect_err("no such partition");
    assert_eq!(err.code(), Some(ErrorCode::UnknownPartition));
    let mut s = connect(&server);
    s.write_all(&hello()).expect("hello");
    let mut unknown = vec![12, 0, 0, 0, 0x99, 0x09, 1, 0];
    unknown.extend_from_slice(&9u64.to_le_bytes());
    let mut malformed = vec![14, 0, 0, 0, 0x30, 0x00, 1, 0];
    malformed.extend_from_slice(&10u64.to_le_bytes());
    malformed.extend_from_slice(&[0xff, 0xff]); // a str claiming 65535 bytes
    let mut future = vec![12, 0, 0, 0, 0x02, 0x00, 9, 0];
    future.extend_from_slice(&11u64.to_le_bytes());
    s.write_all(&[unknown, malformed, future].concat())
        .expect("write");
    let mut ping = Vec::new();
    encode_request(&mut ping, 12, &Request::Ping);
    s.write_all(&ping).expect("ping");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_eq!(
        error_codes_until_eof(&mut s),
        vec![
            ErrorCode::UnknownKind as u16,
            ErrorCode::InvalidRequest as u16,
            ErrorCode::UnsupportedVersion as u16
        ]
    );
    client.ping().expect("the server still answers");

    stop.store(true, Ordering::Relaxed);
    let healthy_ops = healthy.join().expect("the healthy client never failed");
    assert!(healthy_ops > 0);
    // Nothing on disk changed for the topic the bad input aimed at.
    assert_eq!(admin.offsets("t").expect("offsets")[0].next, 2);
    let user_topics = admin
        .list_topics()
        .expect("list")
        .into_iter()
        .filter(|(name, _)| !name.starts_with("__tidelog"))
        .count();
    assert_eq!(user_topics, 2);
    assert!(
        topic_files(&server.data_dir, "t") == before,
        "segment and index bytes unchanged"
    );
    server.stop();
}

/// Numbers at the ends of their ranges, from a client that speaks the protocol correctly:
/// each request gets an answer or its error, never a panic of the server (the tests run
/// a debug build, where an arithmetic overflow is one). The batch case is the fuzzer's
/// finding: a base offset near `u64::MAX` overflowed the record decoder.
#[test]
fn numbers_at_the_ends_of_their_ranges_get_answers() {
    let server = Server::start();
    let client = server.client();
    client
        .create_topic("t", TopicSettings::default())
        .expect("create");
    let records: Vec<Record> = (0..3u8)
        .map(|i| Record {
            tenant: Some(b"acme".to_vec()),
            key: Some(vec![b'k', i]),
            value: Some(vec![i]),
            ..Record::default()
        })
        .collect();
    let mut batch = build_batch(&records, ProducerStamp::default());
    // The producer's base offset is the server's to stamp, but it is still framing.
    tidelog_protocol::batch::stamp_base_offset(&mut batch, u64::MAX - 1);
    let err = client
        .publish("t", 0, Ack::Written, &batch)
        .expect_err("offsets past u64");
    assert_eq!(err.code(), Some(ErrorCode::InvalidBatch), "{err}");
    tidelog_protocol::batch::stamp_base_offset(&mut batch, 0);
    let appended = client
        .publish("t", 0, Ack::Durable, &batch)
        .expect("a batch stamped 0 appends");
    assert_eq!(appended[0].base_offset, 0);
    for start in [
        StartAt::Offset(u64::MAX),
        StartAt::Offset(u64::MAX - 1),
        StartAt::Timestamp(i64::MAX),
        StartAt::Timestamp(i64::MIN),
        StartAt::Offset(0),
    ] {
        for tenant in [None, Some(&b"acme"[..])] {
            match client.fetch("t", 0, start, u32::MAX, Duration::ZERO, tenant) {
                Ok(fetched) => {
                    assert!(fetched.records.iter().all(|r| r.offset < 3), "{start:?}");
                }
                Err(e) => assert!(e.code().is_some(), "{start:?}: {e}"),
            }
        }
    }
    let fetched = client
        .fetch("t", 0, StartAt::Offset(0), u32::MAX, Duration::ZERO, None)
        .expect("fetch from 0");
    assert_eq!(fetched.records.len(), 3);
    client.ping().expect("the server is alive");
    server.stop(); // a clean stop: the server did not die on the way
}
