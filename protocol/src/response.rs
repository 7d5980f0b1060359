//! Responses (server → client) and pushes, version 1. A response frame has the kind of its
//! request and the RESPONSE flag; an error response also has the ERROR flag and the body
//! `code u16, message str`. Fetch results and subscription data end with a `bytes` field
//! of whole batches, so a server can write the batches straight from its log (zero copy)
//! after an encoded prefix: see [`put_batches_prefix`].

use crate::codec::{Reader, Writer};
use crate::error::{ErrorCode, ProtocolError};
use crate::frame::{self, FLAG_ERROR, FLAG_PUSH, FLAG_RESPONSE};
use crate::group::GroupResponse;
use crate::kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedBatch {
    pub base_offset: u64,
    pub last_offset: u64,
    /// A producer retry: already in the log at these offsets, not written again.
    pub duplicate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition: u32,
    pub earliest: u64,
    /// The next offset to be written (the high watermark).
    pub next: u64,
    /// Records below this are synced to disk.
    pub durable: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionDescription {
    pub offsets: PartitionOffsets,
    pub size_bytes: u64,
    pub segments: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub segment_bytes: u32,
    pub retention_bytes: u64,
    pub retention_ms: u64,
    /// 0 delete, 1 compact.
    pub cleanup: u8,
    pub tombstone_retention_ms: u64,
    pub created_ms: i64,
    pub partitions: Vec<PartitionDescription>,
}

/// Whole batches with the positions that frame them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batches<'a> {
    pub partition: u32,
    /// The partition's next offset to be written, when the read was made.
    pub high_watermark: u64,
    /// Where the next read should start (after the last batch included).
    pub next_offset: u64,
    pub batches: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    /// HELLO: `version u8, server str, frame_bytes_max u32, fetch_bytes_max u32`
    Hello {
        version: u8,
        server: &'a str,
        frame_bytes_max: u32,
        fetch_bytes_max: u32,
    },
    /// PING, CREATE_TOPIC, DELETE_TOPIC, ADD_PARTITIONS, UNSUBSCRIBE: empty body.
    Done,
    /// LIST_TOPICS: `count u32, count × (name str, partitions u32)`
    Topics(Vec<(&'a str, u32)>),
    /// DESCRIBE_TOPIC: `segment_bytes u32, retention_bytes u64, retention_ms u64,
    /// cleanup u8, tombstone_retention_ms u64, created_ms i64, count u32, count × (partition u32, earliest u64, next u64,
    /// durable u64, size_bytes u64, segments u32)`
    Described(TopicDescription),
    /// PUBLISH: `count u32, count × (base_offset u64, last_offset u64, duplicate u8)`
    Published(Vec<PublishedBatch>),
    /// FETCH: `partition u32, high_watermark u64, next_offset u64, batches bytes`
    Fetched(Batches<'a>),
    /// SUBSCRIBE: `start_offset u64`
    Subscribed { start_offset: u64 },
    /// OFFSETS: `count u32, count × (partition u32, earliest u64, next u64, durable u64)`
    Offsets(Vec<PartitionOffsets>),
    /// EXTRACT: `watermark u64 (u64::MAX: the partition was empty), total u64, token u64` — the
    /// records to come for a state extraction (u64::MAX: unknown, for history).
    /// `token u64` names the extraction for a resume after a reconnect.
    Extracting {
        watermark: u64,
        total: u64,
        token: u64,
    },
    /// Consumer groups: see [`crate::group`]. GROUP_LEAVE answers [`Response::Done`].
    Group(GroupResponse<'a>),
    /// TENANT_INFO: `partition u32, latest_offset u64 (u64::MAX: no record), live_keys u64,
    /// events u64`
    TenantInfo {
        partition: u32,
        latest_offset: u64,
        live_keys: u64,
        events: u64,
    },
}

/// An EXTRACT_DATA push: `cursor u64, batches bytes`. `cursor` is where a resumed
/// extraction would continue after this chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractData<'a> {
    pub cursor: u64,
    pub batches: &'a [u8],
}

/// Decodes an EXTRACT_DATA body.
pub fn decode_extract_data(body: &[u8]) -> Result<ExtractData<'_>, ProtocolError> {
    let mut r = Reader::new(body);
    let data = ExtractData {
        cursor: r.u64("cursor")?,
        batches: r.bytes("batches")?,
    };
    r.finish("the extract data body")?;
    Ok(data)
}

/// Decodes an EXTRACT_END body: `(watermark, records)`.
pub fn decode_extract_end(body: &[u8]) -> Result<(u64, u64), ProtocolError> {
    let mut r = Reader::new(body);
    let end = (r.u64("watermark")?, r.u64("records")?);
    r.finish("the extract end body")?;
    Ok(end)
}

/// The header and prefix of an EXTRACT_DATA push whose `batches_len` bytes follow.
pub fn begin_extract_data(out: &mut Vec<u8>, extraction: u32, cursor: u64, batches_len: usize) {
    let start = frame::begin_frame(out, kind::EXTRACT_DATA, FLAG_PUSH, u64::from(extraction));
    out.put_u64(cursor);
    out.put_u32(u32::try_from(batches_len).expect("batches larger than 4 GiB"));
    frame::finish_frame(out, start, batches_len);
}

/// A whole EXTRACT_END push.
pub fn encode_extract_end(out: &mut Vec<u8>, extraction: u32, watermark: u64, records: u64) {
    let start = frame::begin_frame(out, kind::EXTRACT_END, FLAG_PUSH, u64::from(extraction));
    out.put_u64(watermark);
    out.put_u64(records);
    frame::finish_frame(out, start, 0);
}

/// A DATA push: `partition u32, high_watermark u64, next_offset u64, batches bytes`,
/// with the subscription id as the frame's correlation id.
pub type Data<'a> = Batches<'a>;

fn put_offsets(out: &mut Vec<u8>, o: &PartitionOffsets) {
    out.put_u32(o.partition);
    out.put_u64(o.earliest);
    out.put_u64(o.next);
    out.put_u64(o.durable);
}

fn get_offsets(r: &mut Reader<'_>) -> Result<PartitionOffsets, ProtocolError> {
    Ok(PartitionOffsets {
        partition: r.u32("partition")?,
        earliest: r.u64("earliest")?,
        next: r.u64("next")?,
        durable: r.u64("durable")?,
    })
}

/// Writes the fields of a FETCH response or DATA push that precede the batches, including
/// the batches' length; the caller then sends `batches_len` bytes of whole batches.
pub fn put_batches_prefix(
    out: &mut Vec<u8>,
    partition: u32,
    high_watermark: u64,
    next_offset: u64,
    batches_len: usize,
) {
    out.put_u32(partition);
    out.put_u64(high_watermark);
    out.put_u64(next_offset);
    out.put_u32(u32::try_from(batches_len).expect("batches larger than 4 GiB"));
}

fn get_batches<'a>(r: &mut Reader<'a>) -> Result<Batches<'a>, ProtocolError> {
    Ok(Batches {
        partition: r.u32("partition")?,
        high_watermark: r.u64("high_watermark")?,
        next_offset: r.u64("next_offset")?,
        batches: r.bytes("batches")?,
    })
}

impl<'a> Response<'a> {
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Response::Hello {
                version,
                server,
                frame_bytes_max,
                fetch_bytes_max,
            } => {
                out.put_u8(*version);
                out.put_str(server);
                out.put_u32(*frame_bytes_max);
                out.put_u32(*fetch_bytes_max);
            }
            Response::Done => {}
            Response::Topics(topics) => {
                out.put_u32(topics.len() as u32);
                for (name, partitions) in topics {
                    out.put_str(name);
                    out.put_u32(*partitions);
                }
            }
            Response::Described(d) => {
                out.put_u32(d.segment_bytes);
                out.put_u64(d.retention_bytes);
                out.put_u64(d.retention_ms);
                out.put_u8(d.cleanup);
                out.put_u64(d.tombstone_retention_ms);
                out.put_i64(d.created_ms);
                out.put_u32(d.partitions.len() as u32);
                for p in &d.partitions {
                    put_offsets(out, &p.offsets);
                    out.put_u64(p.size_bytes);
                    out.put_u32(p.segments);
                }
            }
            Response::Published(batches) => {
                out.put_u32(batches.len() as u32);
                for b in batches {
                    out.put_u64(b.base_offset);
                    out.put_u64(b.last_offset);
                    out.put_bool(b.duplicate);
                }
            }
            Response::Fetched(b) => {
                put_batches_prefix(
                    out,
                    b.partition,
                    b.high_watermark,
                    b.next_offset,
                    b.batches.len(),
                );
                out.extend_from_slice(b.batches);
            }
            Response::Subscribed { start_offset } => out.put_u64(*start_offset),
            Response::Offsets(list) => {
                out.put_u32(list.len() as u32);
                for o in list {
                    put_offsets(out, o);
                }
            }
            Response::Extracting {
                watermark,
                total,
                token,
            } => {
                out.put_u64(*watermark);
                out.put_u64(*total);
                out.put_u64(*token);
            }
            Response::Group(g) => g.encode_body(out),
            Response::TenantInfo {
                partition,
                latest_offset,
                live_keys,
                events,
            } => {
                out.put_u32(*partition);
                out.put_u64(*latest_offset);
                out.put_u64(*live_keys);
                out.put_u64(*events);
            }
        }
    }

    /// Decodes the body of a successful response to a request of `kind`.
    pub fn decode(kind: u16, body: &'a [u8]) -> Result<Response<'a>, ProtocolError> {
        let mut r = Reader::new(body);
        let response = match kind {
            kind::HELLO => Response::Hello {
                version: r.u8("version")?,
                server: r.str("server")?,
                frame_bytes_max: r.u32("frame_bytes_max")?,
                fetch_bytes_max: r.u32("fetch_bytes_max")?,
            },
            kind::PING
            | kind::CREATE_TOPIC
            | kind::DELETE_TOPIC
            | kind::ADD_PARTITIONS
            | kind::UNSUBSCRIBE
            | kind::GROUP_LEAVE
            | kind::QUEUE_LEAVE => Response::Done,
            kind::LIST_TOPICS => {
                let n = r.count("count", 6)?;
                let mut topics = Vec::with_capacity(n);
                for _ in 0..n {
                    topics.push((r.str("name")?, r.u32("partitions")?));
                }
                Response::Topics(topics)
            }
            kind::DESCRIBE_TOPIC => {
                let segment_bytes = r.u32("segment_bytes")?;
                let retention_bytes = r.u64("retention_bytes")?;
                let retention_ms = r.u64("retention_ms")?;
                let cleanup = r.u8("cleanup")?;
                let tombstone_retention_ms = r.u64("tombstone_retention_ms")?;
                let created_ms = r.i64("created_ms")?;
                let n = r.count("count", 40)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push(PartitionDescription {
                        offsets: get_offsets(&mut r)?,
                        size_bytes: r.u64("size_bytes")?,
                        segments: r.u32("segments")?,
                    });
                }
                Response::Described(TopicDescription {
                    segment_bytes,
                    retention_bytes,
                    retention_ms,
                    cleanup,
                    tombstone_retention_ms,
                    created_ms,
                    partitions,
                })
            }
            kind::PUBLISH => {
                let n = r.count("count", 17)?;
                let mut batches = Vec::with_capacity(n);
                for _ in 0..n {
                    batches.push(PublishedBatch {
                        base_offset: r.u64("base_offset")?,
                        last_offset: r.u64("last_offset")?,
                        duplicate: r.bool("duplicate")?,
                    });
                }
                Response::Published(batches)
            }
            kind::FETCH => Response::Fetched(get_batches(&mut r)?),
            kind::SUBSCRIBE => Response::Subscribed {
                start_offset: r.u64("start_offset")?,
            },
            kind::OFFSETS => {
                let n = r.count("count", 28)?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push(get_offsets(&mut r)?);
                }
                Response::Offsets(list)
            }
            kind::TENANT_INFO => Response::TenantInfo {
                partition: r.u32("partition")?,
                latest_offset: r.u64("latest_offset")?,
                live_keys: r.u64("live_keys")?,
                events: r.u64("events")?,
            },
            kind::EXTRACT => Response::Extracting {
                watermark: r.u64("watermark")?,
                total: r.u64("total")?,
                token: r.u64("token")?,
            },
            other => {
                if let Some(group) = GroupResponse::decode(other, body) {
                    return group.map(Response::Group);
                }
                return Err(ProtocolError::new(
                    ErrorCode::UnknownKind,
                    format!("no response is defined for kind {other:#06x}"),
                ));
            }
        };
        r.finish("the response body")?;
        Ok(response)
    }
}

/// Decodes a DATA push body.
pub fn decode_data(body: &[u8]) -> Result<Data<'_>, ProtocolError> {
    let mut r = Reader::new(body);
    let data = get_batches(&mut r)?;
    r.finish("the data body")?;
    Ok(data)
}

/// Decodes an error response body.
pub fn decode_error(body: &[u8]) -> Result<ProtocolError, ProtocolError> {
    let mut r = Reader::new(body);
    let code = r.u16("code")?;
    let message = r.str("message")?;
    r.finish("the error body")?;
    let code = ErrorCode::from_u16(code).unwrap_or(ErrorCode::Internal);
    Ok(ProtocolError::new(code, message))
}

/// A whole response frame.
pub fn encode_response(out: &mut Vec<u8>, kind: u16, correlation: u64, response: &Response<'_>) {
    let start = frame::begin_frame(out, kind, FLAG_RESPONSE, correlation);
    response.encode_body(out);
    frame::finish_frame(out, start, 0);
}

/// A whole error frame. The message is cut to fit a `str` field.
pub fn encode_error(out: &mut Vec<u8>, kind: u16, correlation: u64, error: &ProtocolError) {
    put_error(out, kind, FLAG_RESPONSE | FLAG_ERROR, correlation, error);
}

/// An error that ends a subscription or extraction: flags `PUSH|ERROR`, correlation = its
/// id, so it reaches the stream it concerns and can never be mistaken for the response
/// to a request.
pub fn encode_push_error(out: &mut Vec<u8>, kind: u16, id: u32, error: &ProtocolError) {
    put_error(out, kind, FLAG_PUSH | FLAG_ERROR, u64::from(id), error);
}

fn put_error(out: &mut Vec<u8>, kind: u16, flags: u8, correlation: u64, error: &ProtocolError) {
    let start = frame::begin_frame(out, kind, flags, correlation);
    out.put_u16(error.code as u16);
    let mut message = error.message.as_str();
    while message.len() > 4096 {
        let mut cut = 4096;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message = &message[..cut];
    }
    out.put_str(message);
    frame::finish_frame(out, start, 0);
}

/// The header and prefix of a DATA push whose `batches_len` bytes of batches follow.
pub fn begin_data(
    out: &mut Vec<u8>,
    subscription: u32,
    partition: u32,
    high_watermark: u64,
    next_offset: u64,
    batches_len: usize,
) {
    let start = frame::begin_frame(out, kind::DATA, FLAG_PUSH, u64::from(subscription));
    put_batches_prefix(out, partition, high_watermark, next_offset, batches_len);
    frame::finish_frame(out, start, batches_len);
}

/// The header and prefix of a FETCH response whose `batches_len` bytes of batches follow.
pub fn begin_fetched(
    out: &mut Vec<u8>,
    correlation: u64,
    partition: u32,
    high_watermark: u64,
    next_offset: u64,
    batches_len: usize,
) {
    let start = frame::begin_frame(out, kind::FETCH, FLAG_RESPONSE, correlation);
    put_batches_prefix(out, partition, high_watermark, next_offset, batches_len);
    frame::finish_frame(out, start, batches_len);
}
