//! The bench's record payload: who sent it, its sequence number, and when, so the
//! consumer side can check every record and measure latency.
//!
//! `| 0..4 producer u32 LE | 4..12 sequence u64 LE | 12..20 sent_ns u64 LE | padding |`

use std::time::{SystemTime, UNIX_EPOCH};

pub const HEADER_BYTES: usize = 20;

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn write(buf: &mut Vec<u8>, size: usize, producer: u32, sequence: u64, sent_ns: u64) {
    buf.clear();
    buf.extend_from_slice(&producer.to_le_bytes());
    buf.extend_from_slice(&sequence.to_le_bytes());
    buf.extend_from_slice(&sent_ns.to_le_bytes());
    buf.resize(size.max(HEADER_BYTES), 0xA5);
}

/// (producer, sequence, sent_ns), or `None` for a payload this bench did not write.
pub fn read(value: &[u8]) -> Option<(u32, u64, u64)> {
    let producer = u32::from_le_bytes(value.get(0..4)?.try_into().ok()?);
    let sequence = u64::from_le_bytes(value.get(4..12)?.try_into().ok()?);
    let sent = u64::from_le_bytes(value.get(12..20)?.try_into().ok()?);
    Some((producer, sequence, sent))
}
