//! Frames: the length-prefixed envelope of every message.
//!
//! ```text
//! | 0..4   frame_len   u32 LE  bytes after this field (12 + body); 12 <= frame_len <= limit
//! | 4..6   kind        u16 LE  what the frame carries (see `kind`)
//! | 6      version     u8      protocol version of the body, 1
//! | 7      flags       u8      bit 0 RESPONSE, bit 1 ERROR, bit 2 PUSH; others 0
//! | 8..16  correlation u64 LE  chosen by the client, echoed in the response;
//! |                            for PUSH frames, the subscription id
//! | 16..   body
//! ```
//!
//! Decoding is two-phase, as in mini-redis: [`check`] says whether a whole frame is in
//! the buffer (`Ok(None)` means "read more", which is normal flow, not failure), then the
//! body is parsed by `message`. A length outside the limits is `BadFrame`: framing is lost
//! and the connection must close. The decoder never allocates: a frame is parsed in
//! place, so a hostile length costs nothing until it is checked.

use crate::error::{ErrorCode, ProtocolError};

pub const FRAME_LEN_AT: usize = 0;
pub const KIND_AT: usize = FRAME_LEN_AT + 4;
pub const VERSION_AT: usize = KIND_AT + 2;
pub const FLAGS_AT: usize = VERSION_AT + 1;
pub const CORRELATION_AT: usize = FLAGS_AT + 1;
pub const HEADER_LEN: usize = CORRELATION_AT + 8;
const _: () = assert!(HEADER_LEN == 16);
/// Smallest `frame_len`: the header fields after the length.
pub const FRAME_LEN_MIN: u32 = (HEADER_LEN - 4) as u32;

pub const PROTOCOL_VERSION: u8 = 1;

pub const FLAG_RESPONSE: u8 = 0b001;
pub const FLAG_ERROR: u8 = 0b010;
pub const FLAG_PUSH: u8 = 0b100;
const FLAGS_KNOWN: u8 = FLAG_RESPONSE | FLAG_ERROR | FLAG_PUSH;

/// Default largest frame, header included: a 16 MiB batch plus its request fields.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 17 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u16,
    pub version: u8,
    pub flags: u8,
    pub correlation: u64,
    /// Total bytes of the frame, header included.
    pub total_len: usize,
}

impl FrameHeader {
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }
    pub fn is_push(&self) -> bool {
        self.flags & FLAG_PUSH != 0
    }
}

/// Is a whole frame at the front of `buf`? `Ok(None)`: not yet, read more.
/// `Err(BadFrame)`: the length or flags are impossible; the stream cannot be resynchronised.
/// The version is not checked here: a frame of an unknown version is still a well-framed
/// frame, answered with `UnsupportedVersion` by the caller.
pub fn check(buf: &[u8], frame_bytes_max: u32) -> Result<Option<FrameHeader>, ProtocolError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let frame_len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    if frame_len < FRAME_LEN_MIN {
        return Err(ProtocolError::new(
            ErrorCode::BadFrame,
            format!("frame_len {frame_len} is below the minimum {FRAME_LEN_MIN}"),
        ));
    }
    let total_len = frame_len as usize + 4;
    if total_len > frame_bytes_max as usize {
        return Err(ProtocolError::new(
            ErrorCode::BadFrame,
            format!("frame of {total_len} bytes exceeds the limit of {frame_bytes_max}"),
        ));
    }
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let flags = h[FLAGS_AT];
    if flags & !FLAGS_KNOWN != 0 {
        return Err(ProtocolError::new(
            ErrorCode::BadFrame,
            format!("unknown frame flags {flags:#04x}"),
        ));
    }
    let header = FrameHeader {
        kind: u16::from_le_bytes([h[KIND_AT], h[KIND_AT + 1]]),
        version: h[VERSION_AT],
        flags,
        correlation: u64::from_le_bytes(h[CORRELATION_AT..HEADER_LEN].try_into().unwrap_or([0; 8])),
        total_len,
    };
    if buf.len() < total_len {
        return Ok(None);
    }
    Ok(Some(header))
}

/// Writes a frame header for a body of `body_len` bytes.
pub fn put_header(out: &mut Vec<u8>, kind: u16, flags: u8, correlation: u64, body_len: usize) {
    let frame_len = u32::try_from(body_len + HEADER_LEN - 4).expect("frame larger than 4 GiB");
    out.extend_from_slice(&frame_len.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.push(PROTOCOL_VERSION);
    out.push(flags);
    out.extend_from_slice(&correlation.to_le_bytes());
}

/// Starts a frame whose body the caller appends; finish with [`finish_frame`].
pub fn begin_frame(out: &mut Vec<u8>, kind: u16, flags: u8, correlation: u64) -> usize {
    let start = out.len();
    put_header(out, kind, flags, correlation, 0);
    start
}

/// Fixes the length of a frame begun at `start`, given `extra` body bytes that follow it
/// in a separate buffer (zero-copy payloads written with writev).
pub fn finish_frame(out: &mut [u8], start: usize, extra: usize) {
    let frame_len = u32::try_from(out.len() - start - 4 + extra).expect("frame larger than 4 GiB");
    out[start..start + 4].copy_from_slice(&frame_len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_is_not_invalid() {
        let mut f = Vec::new();
        let start = begin_frame(&mut f, 7, FLAG_RESPONSE, 99);
        f.extend_from_slice(b"body");
        finish_frame(&mut f, start, 0);
        for cut in 0..f.len() {
            assert_eq!(check(&f[..cut], 1024), Ok(None), "cut {cut}");
        }
        let h = check(&f, 1024).expect("valid").expect("complete");
        assert_eq!(
            (h.kind, h.flags, h.correlation, h.total_len),
            (7, FLAG_RESPONSE, 99, f.len())
        );
    }

    #[test]
    fn impossible_lengths_and_flags_lose_framing() {
        assert_eq!(
            check(&[0, 0, 0, 0], 1024).map_err(|e| e.code),
            Err(ErrorCode::BadFrame)
        );
        assert_eq!(
            check(&[0xff, 0xff, 0xff, 0x7f], 1024).map_err(|e| e.code),
            Err(ErrorCode::BadFrame)
        );
        let mut f = Vec::new();
        put_header(&mut f, 1, 0x80, 1, 0);
        assert_eq!(
            check(&f, 1024).map_err(|e| e.code),
            Err(ErrorCode::BadFrame)
        );
    }
}
