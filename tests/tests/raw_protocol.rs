//! Speaks to the server with bytes written from docs/PROTOCOL.md by hand — not from the
//! Rust codec — to prove the document is enough to write a client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tidelog_e2e::Server;

fn frame(kind: u16, correlation: u64, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&(12 + body.len() as u32).to_le_bytes());
    f.extend_from_slice(&kind.to_le_bytes());
    f.push(1); // version
    f.push(0); // flags: request
    f.extend_from_slice(&correlation.to_le_bytes());
    f.extend_from_slice(body);
    f
}

fn str_field(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// (kind, flags, correlation, body)
fn read_frame(s: &mut TcpStream) -> (u16, u8, u64, Vec<u8>) {
    let mut header = [0u8; 16];
    s.read_exact(&mut header).expect("frame header");
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4")) as usize;
    let mut body = vec![0u8; len - 12];
    s.read_exact(&mut body).expect("frame body");
    assert_eq!(header[6], 1, "version 1");
    (
        u16::from_le_bytes([header[4], header[5]]),
        header[7],
        u64::from_le_bytes(header[8..16].try_into().expect("8")),
        body,
    )
}

/// A batch of one record, built from the FORMAT.md byte tables: value "hi", no key, no
/// tenant, timestamp 1000.
fn one_record_batch() -> Vec<u8> {
    let record: Vec<u8> = vec![
        0x02, // attributes: HAS_VALUE
        0x00, // offset_delta 0
        0x00, // timestamp_delta zigzag(0)
        0x02, b'h', b'i', // value
        0x00, // header_count
    ];
    let mut b = vec![0u8; 64];
    b.push(record.len() as u8); // record length varint
    b.extend_from_slice(&record);
    let len = b.len() as u32;
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[16] = 1; // magic
    b[20..24].copy_from_slice(&1u32.to_le_bytes()); // record_count
    b[28..36].copy_from_slice(&1000i64.to_le_bytes()); // first_timestamp_ms
    b[36..44].copy_from_slice(&1000i64.to_le_bytes()); // max_timestamp_ms
    let crc = crc32(&b[16..]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Bitwise CRC-32 (IEEE), as the document specifies, independent of crc32fast.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_client_written_from_the_document_works() {
    let server = Server::start();
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");

    // HELLO, byte for byte as in the document's example.
    let hello: [u8; 21] = [
        0x11, 0, 0, 0, // frame_len 17
        0x01, 0x00, // HELLO
        0x01, // version
        0x00, // flags
        1, 0, 0, 0, 0, 0, 0, 0, // correlation 1
        0x01, 0x01, // versions 1..=1
        0x01, 0x00, 0x74, // client "t"
    ];
    s.write_all(&hello).expect("hello");
    let (kind, flags, corr, body) = read_frame(&mut s);
    assert_eq!((kind, flags, corr), (0x0001, 0x01, 1));
    assert_eq!(body[0], 1, "version 1 chosen");

    // PING, exactly the document's bytes, and the documented answer.
    s.write_all(&[
        0x0c, 0, 0, 0, 0x02, 0, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0,
    ])
    .expect("ping");
    let mut answer = [0u8; 16];
    s.read_exact(&mut answer).expect("pong");
    assert_eq!(
        answer,
        [0x0c, 0, 0, 0, 0x02, 0, 0x01, 0x01, 0x02, 0, 0, 0, 0, 0, 0, 0]
    );

    // FETCH of a missing topic: error frame, code 10.
    let mut fetch = str_field("x");
    fetch.extend_from_slice(&0u32.to_le_bytes()); // partition
    fetch.push(2); // start: earliest
    fetch.extend_from_slice(&0u64.to_le_bytes());
    fetch.extend_from_slice(&(1u32 << 20).to_le_bytes()); // max_bytes
    fetch.extend_from_slice(&0u32.to_le_bytes()); // max_wait_ms
    fetch.push(0); // no tenant
    s.write_all(&frame(0x0030, 3, &fetch)).expect("fetch");
    let (kind, flags, corr, body) = read_frame(&mut s);
    assert_eq!((kind, flags, corr), (0x0030, 0x03, 3));
    assert_eq!(u16::from_le_bytes([body[0], body[1]]), 10, "UnknownTopic");

    // CREATE_TOPIC x with 1 partition, server defaults.
    let mut create = str_field("x");
    create.extend_from_slice(&1u32.to_le_bytes());
    create.extend_from_slice(&0u32.to_le_bytes());
    create.extend_from_slice(&0u64.to_le_bytes());
    create.extend_from_slice(&0u64.to_le_bytes());
    create.push(0); // cleanup: delete
    create.extend_from_slice(&0u64.to_le_bytes()); // tombstone retention: default
    s.write_all(&frame(0x0010, 4, &create)).expect("create");
    assert_eq!(read_frame(&mut s), (0x0010, 0x01, 4, vec![]));

    // PUBLISH one hand-built batch, ack written.
    let batch = one_record_batch();
    let mut publish = str_field("x");
    publish.extend_from_slice(&0u32.to_le_bytes());
    publish.push(1); // ack written
    publish.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    publish.extend_from_slice(&batch);
    s.write_all(&frame(0x0020, 5, &publish)).expect("publish");
    let (kind, flags, corr, body) = read_frame(&mut s);
    assert_eq!((kind, flags, corr), (0x0020, 0x01, 5));
    assert_eq!(body.len(), 4 + 17);
    assert_eq!(u32::from_le_bytes(body[0..4].try_into().expect("4")), 1);
    assert_eq!(
        u64::from_le_bytes(body[4..12].try_into().expect("8")),
        0,
        "base offset"
    );
    assert_eq!(
        u64::from_le_bytes(body[12..20].try_into().expect("8")),
        0,
        "last offset"
    );
    assert_eq!(body[20], 0, "not a duplicate");

    // FETCH it back: the batch comes back byte for byte (base offset 0 stamped).
    s.write_all(&frame(0x0030, 6, &fetch)).expect("fetch");
    let (kind, flags, corr, body) = read_frame(&mut s);
    assert_eq!((kind, flags, corr), (0x0030, 0x01, 6));
    assert_eq!(
        u32::from_le_bytes(body[0..4].try_into().expect("4")),
        0,
        "partition"
    );
    assert_eq!(
        u64::from_le_bytes(body[4..12].try_into().expect("8")),
        1,
        "high watermark"
    );
    assert_eq!(
        u64::from_le_bytes(body[12..20].try_into().expect("8")),
        1,
        "next offset"
    );
    assert_eq!(
        u32::from_le_bytes(body[20..24].try_into().expect("4")) as usize,
        batch.len()
    );
    assert_eq!(&body[24..], &batch[..]);

    // An unknown kind is an error, and the connection stays usable.
    s.write_all(&frame(0x0999, 7, &[])).expect("unknown");
    let (_, flags, corr, body) = read_frame(&mut s);
    assert_eq!((flags, corr), (0x03, 7));
    assert_eq!(u16::from_le_bytes([body[0], body[1]]), 4, "UnknownKind");
    s.write_all(&[
        0x0c, 0, 0, 0, 0x02, 0, 0x01, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0,
    ])
    .expect("ping");
    assert_eq!(read_frame(&mut s).2, 8);
    server.stop();
}
