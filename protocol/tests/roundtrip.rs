//! Every request and response survives encode → frame check → decode unchanged, and the
//! decoders never panic on arbitrary or mutated bytes.

use proptest::prelude::*;
use tidelog_protocol::batch;
use tidelog_protocol::builder::{build_batch, ProducerStamp, Record};
use tidelog_protocol::frame::{self, FRAME_BYTES_MAX_DEFAULT};
use tidelog_protocol::response::{decode_data, decode_error, encode_error, encode_response};
use tidelog_protocol::{
    encode_request, kind, Ack, Batches, ErrorCode, ExtractFilter, ExtractMode,
    PartitionDescription, PartitionOffsets, ProtocolError, PublishedBatch, Request, Response,
    StartAt, TopicDescription, TopicSettings,
};

/// Owned inputs from which every request variant is built (requests borrow).
#[derive(Debug, Clone)]
struct Inputs {
    text: String,
    bytes: Vec<u8>,
    tenant: Option<Vec<u8>>,
    numbers: (u32, u32, u64, u64, u8),
    start: StartAt,
}

fn arb_start() -> impl Strategy<Value = StartAt> {
    prop_oneof![
        any::<u64>().prop_map(StartAt::Offset),
        any::<i64>().prop_map(StartAt::Timestamp),
        Just(StartAt::Earliest),
        Just(StartAt::Latest),
    ]
}

fn arb_inputs() -> impl Strategy<Value = Inputs> {
    (
        "[a-zA-Z0-9._-]{0,40}",
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 1..255)),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            0u8..3,
        ),
        arb_start(),
    )
        .prop_map(|(text, bytes, tenant, numbers, start)| Inputs {
            text,
            bytes,
            tenant,
            numbers,
            start,
        })
}

fn all_requests(i: &Inputs) -> Vec<Request<'_>> {
    let (a, b, c, d, e) = i.numbers;
    let ack = Ack::from_u8(e).expect("0..3");
    let t = i.text.as_str();
    vec![
        Request::Hello {
            min_version: e,
            max_version: e + 1,
            client: t,
        },
        Request::Ping,
        Request::CreateTopic {
            name: t,
            settings: TopicSettings {
                partitions: a,
                segment_bytes: b,
                retention_bytes: c,
                retention_ms: d,
                cleanup: (a % 2) as u8,
                tombstone_retention_ms: c ^ d,
            },
        },
        Request::DeleteTopic { name: t },
        Request::ListTopics,
        Request::DescribeTopic { name: t },
        Request::AddPartitions {
            name: t,
            partitions: a,
        },
        Request::Publish {
            topic: t,
            partition: a,
            ack,
            batches: &i.bytes,
        },
        Request::Fetch {
            topic: t,
            partition: a,
            start: i.start,
            max_bytes: b,
            max_wait_ms: a ^ b,
            tenant: i.tenant.as_deref(),
        },
        Request::Subscribe {
            subscription: b,
            topic: t,
            partition: a,
            start: i.start,
            credit_bytes: a,
            tenant: i.tenant.as_deref(),
            filter: ExtractFilter {
                since_ms: c as i64,
                until_ms: d as i64,
                key_prefix: t,
                headers: vec![(t, t)],
            },
        },
        Request::Unsubscribe { subscription: a },
        Request::GrantCredits {
            subscription: a,
            credit_bytes: b,
        },
        Request::Offsets { topic: t },
        Request::Extract {
            extraction: a,
            topic: t,
            partition: b,
            tenant: i.tenant.as_deref().unwrap_or(b"x"),
            mode: if e == 1 {
                ExtractMode::History
            } else {
                ExtractMode::State
            },
            filter: ExtractFilter {
                since_ms: c as i64,
                until_ms: d as i64,
                key_prefix: t,
                headers: vec![(t, "v"), ("type", t)],
            },
            credit_bytes: a ^ b,
            resume_token: c,
            resume_cursor: d,
        },
    ]
}

fn all_responses(i: &Inputs) -> Vec<(u16, Response<'_>)> {
    let (a, b, c, d, e) = i.numbers;
    let offsets = PartitionOffsets {
        partition: a,
        earliest: c,
        next: d,
        durable: c ^ d,
    };
    let batches = Batches {
        partition: a,
        high_watermark: c,
        next_offset: d,
        batches: &i.bytes,
    };
    vec![
        (
            kind::HELLO,
            Response::Hello {
                version: e,
                server: &i.text,
                frame_bytes_max: a,
                fetch_bytes_max: b,
            },
        ),
        (kind::PING, Response::Done),
        (
            kind::LIST_TOPICS,
            Response::Topics(vec![(&i.text, a), ("x", b)]),
        ),
        (
            kind::DESCRIBE_TOPIC,
            Response::Described(TopicDescription {
                segment_bytes: a,
                retention_bytes: c,
                retention_ms: d,
                cleanup: (b % 2) as u8,
                tombstone_retention_ms: c,
                created_ms: d as i64,
                partitions: vec![PartitionDescription {
                    offsets,
                    size_bytes: c,
                    segments: b,
                }],
            }),
        ),
        (
            kind::PUBLISH,
            Response::Published(vec![PublishedBatch {
                base_offset: c,
                last_offset: d,
                duplicate: e == 1,
            }]),
        ),
        (kind::FETCH, Response::Fetched(batches)),
        (kind::SUBSCRIBE, Response::Subscribed { start_offset: c }),
        (kind::OFFSETS, Response::Offsets(vec![offsets, offsets])),
        (
            kind::EXTRACT,
            Response::Extracting {
                watermark: c,
                total: d,
                token: c ^ d,
            },
        ),
    ]
}

proptest! {
    #[test]
    fn every_request_round_trips(inputs in arb_inputs(), correlation in any::<u64>()) {
        for request in all_requests(&inputs) {
            let mut buf = Vec::new();
            encode_request(&mut buf, correlation, &request);
            let header = frame::check(&buf, FRAME_BYTES_MAX_DEFAULT).expect("valid").expect("complete");
            prop_assert_eq!(header.total_len, buf.len());
            prop_assert_eq!(header.correlation, correlation);
            prop_assert!(!header.is_response());
            let decoded = Request::decode(header.kind, &buf[frame::HEADER_LEN..]).expect("decodes");
            prop_assert_eq!(&decoded, &request);
            // The split encoding (payload written separately) puts the same bytes on the wire.
            let mut split = Vec::new();
            let tail = tidelog_protocol::encode_request_split(&mut split, correlation, &request);
            split.extend_from_slice(tail);
            prop_assert_eq!(split, buf);
        }
    }

    #[test]
    fn every_response_round_trips(inputs in arb_inputs(), correlation in any::<u64>()) {
        for (kind, response) in all_responses(&inputs) {
            let mut buf = Vec::new();
            encode_response(&mut buf, kind, correlation, &response);
            let header = frame::check(&buf, FRAME_BYTES_MAX_DEFAULT).expect("valid").expect("complete");
            prop_assert!(header.is_response() && !header.is_error());
            let decoded = Response::decode(header.kind, &buf[frame::HEADER_LEN..]).expect("decodes");
            prop_assert_eq!(decoded, response);
        }
    }

    #[test]
    fn errors_round_trip(code_index in 0usize..ErrorCode::ALL.len(), message in ".{0,100}") {
        let error = ProtocolError::new(ErrorCode::ALL[code_index], message);
        let mut buf = Vec::new();
        encode_error(&mut buf, kind::FETCH, 5, &error);
        let header = frame::check(&buf, FRAME_BYTES_MAX_DEFAULT).expect("valid").expect("complete");
        prop_assert!(header.is_error());
        prop_assert_eq!(decode_error(&buf[frame::HEADER_LEN..]).expect("decodes"), error);
    }

    #[test]
    fn decoders_never_panic_on_garbage(kind in 0u16..0x50, body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Request::decode(kind, &body);
        let _ = Response::decode(kind, &body);
        let _ = decode_data(&body);
        let _ = decode_error(&body);
        let _ = frame::check(&body, FRAME_BYTES_MAX_DEFAULT);
    }

    #[test]
    fn truncated_bodies_are_errors(inputs in arb_inputs()) {
        for request in all_requests(&inputs) {
            let mut body = Vec::new();
            request.encode_body(&mut body);
            for cut in 0..body.len() {
                prop_assert!(Request::decode(request.kind(), &body[..cut]).is_err());
            }
        }
    }
}

#[test]
fn unknown_kind_is_its_own_error() {
    assert_eq!(
        Request::decode(0x0999, &[]).map_err(|e| e.code),
        Err(ErrorCode::UnknownKind)
    );
}

#[test]
fn hostile_counts_do_not_allocate() {
    // count = u32::MAX with an empty rest: rejected before any Vec::with_capacity.
    let body = u32::MAX.to_le_bytes();
    assert!(Response::decode(kind::OFFSETS, &body).is_err());
    assert!(Response::decode(kind::LIST_TOPICS, &body).is_err());
}

/// Regression (found by `cargo fuzz run decode_frame`): a SUBSCRIBE whose start was
/// `earliest` with a non-zero value decoded, then re-encoded differently. Such a start is
/// now rejected, so decoding is exact.
#[test]
fn start_value_must_be_zero_for_earliest_and_latest() {
    let bytes = include_bytes!("fixtures/fuzz-start-value-not-zero.bin");
    let header = frame::check(bytes, FRAME_BYTES_MAX_DEFAULT)
        .expect("well framed")
        .expect("whole");
    let decoded = Request::decode(header.kind, &bytes[frame::HEADER_LEN..header.total_len]);
    assert_eq!(decoded.map_err(|e| e.code), Err(ErrorCode::InvalidRequest));
}

/// Regression (found by `cargo fuzz run decode_batch`): a stored batch whose
/// `base_offset` is near `u64::MAX` made the record decoder overflow computing a record's
/// offset (a panic where overflow checks are on; a wrapped offset where they are not).
/// Framing now refuses a header whose offsets do not fit a `u64`, and the record decoders
/// refuse a record whose offset does not.
#[test]
fn offsets_past_u64_are_refused_not_overflowed() {
    let bytes = include_bytes!("fixtures/fuzz-record-offset-overflow.bin");
    let refused = batch::view_stored(bytes).map(|v| v.records().count());
    assert!(
        matches!(&refused, Err(batch::BatchError::Invalid(why)) if why.contains("overflows")),
        "{refused:?}"
    );
    // A well-formed batch of three records: its last offset may be u64::MAX - 1 (the
    // offset after it is then u64::MAX), not one more.
    let records: Vec<Record> = (0..3)
        .map(|i| Record {
            tenant: Some(b"acme".to_vec()),
            key: Some(format!("k{i}").into_bytes()),
            value: Some(b"v".to_vec()),
            ..Record::default()
        })
        .collect();
    let mut b = build_batch(&records, ProducerStamp::default());
    batch::stamp_base_offset(&mut b, u64::MAX - 3);
    let view = batch::validate(&b).expect("fits");
    assert_eq!(view.header.next_offset(), u64::MAX);
    let offsets: Vec<u64> = view.keyed_records().map(|r| r.offset).collect();
    assert_eq!(offsets, [u64::MAX - 3, u64::MAX - 2, u64::MAX - 1]);
    batch::stamp_base_offset(&mut b, u64::MAX - 2);
    for refused in [batch::validate(&b).err(), batch::view_stored(&b).err()] {
        assert!(
            matches!(refused, Some(batch::BatchError::Invalid(ref why)) if why.contains("overflows"))
        );
    }
}
