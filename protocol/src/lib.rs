//! tidelog's wire protocol: the frame codec and every request and response. Pure
//! functions, no I/O; the decoder never panics and never allocates more than a frame's
//! declared, limit-checked size. The protocol is specified in `docs/PROTOCOL.md`.
//!
//! # Layout
//! - `frame.rs` — the 16-byte frame header; `check` (is a whole frame there?) then parse.
//! - `codec.rs` — the field encodings every body uses (`Reader`, `Writer`).
//! - `kind.rs` — frame kinds and reserved ranges.
//! - `request.rs` — client → server messages; `response.rs` — server → client messages,
//!   pushes and error bodies.
//! - `group.rs` — consumer-group requests, responses and the notice push.
//! - `error.rs` — numbered error codes.
//! - `filter.rs` — tenant filtering of stored batches (whole batches by header when possible).
//! - `partitioner.rs` — which partition a record goes to (shared by every client).
//! - `batch.rs`, `record.rs`, `varint.rs` — the record batch: the unit a producer builds
//!   (`builder.rs`), the server stores byte for byte, and a consumer receives. It is the
//!   wire format and the on-disk format at once (docs/FORMAT.md).

pub mod batch;
pub mod builder;
pub mod codec;
pub mod error;
pub mod filter;
pub mod frame;
pub mod group;
pub mod kind;
pub mod partitioner;
pub mod record;
pub mod request;
pub mod response;
pub mod varint;

pub use error::{ErrorCode, ProtocolError};
pub use frame::{FrameHeader, FRAME_BYTES_MAX_DEFAULT, HEADER_LEN, PROTOCOL_VERSION};
pub use request::{Ack, ExtractFilter, ExtractMode, Request, StartAt, TopicSettings};
pub use response::{
    Batches, Data, PartitionDescription, PartitionOffsets, PublishedBatch, Response,
    TopicDescription,
};

/// Encodes a request frame except its bulk payload (a publish's batches), which is
/// returned to be written right after `out` (with `writev`): the batches are never copied
/// into the frame buffer. For other requests the returned slice is empty.
pub fn encode_request_split<'a>(
    out: &mut Vec<u8>,
    correlation: u64,
    request: &Request<'a>,
) -> &'a [u8] {
    let start = frame::begin_frame(out, request.kind(), 0, correlation);
    let tail = request.encode_body_split(out);
    frame::finish_frame(out, start, tail.len());
    tail
}

/// Encodes a whole request frame.
pub fn encode_request(out: &mut Vec<u8>, correlation: u64, request: &Request<'_>) {
    let start = frame::begin_frame(out, request.kind(), 0, correlation);
    request.encode_body(out);
    frame::finish_frame(out, start, 0);
}
