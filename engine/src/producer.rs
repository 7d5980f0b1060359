//! Idempotent producers: per partition, the last batch sequences seen from each producer id.
//!
//! A producer numbers its batches 0, 1, 2, ... per partition. A batch whose sequence is one
//! of the last [`RECENT_BATCHES`] seen is a retry: it is not appended again and the
//! original offsets are returned. A sequence further back is `StaleSequence`; a gap is
//! `OutOfOrderSequence` (a batch was lost in between). An unknown producer starts anywhere.
//!
//! Persistence: a snapshot (`producers.snapshot`) written at every segment roll and at clean
//! shutdown, plus a replay of batch headers after the snapshot's offset on open, so state
//! survives restarts and crashes, and recovery work stays bounded by one segment.
//!
//! ```text
//! producers.snapshot:
//! | 0..4 magic "TLPS" | 4..8 crc32 of bytes 8.. | 8..16 next_offset u64 LE | 16..20 count u32 LE |
//! then `count` producers:
//! | producer_id u64 | batches u8 (1..=5) | batches × (sequence u64, base_offset u64, last_offset u64) |
//! ```

use std::collections::{HashMap, VecDeque};

use crate::error::{EngineError, Result};
use crate::snapshot_file;

/// Retried batches recognised per producer (as Kafka's max in-flight of 5).
pub const RECENT_BATCHES: usize = 5;
/// Producers remembered per partition; beyond it the least recently active is forgotten.
pub const PRODUCERS_MAX: usize = 10_000;

const MAGIC: &[u8; 4] = b"TLPS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRecord {
    pub sequence: u64,
    pub base_offset: u64,
    pub last_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Fresh,
    /// Already appended at these offsets.
    Duplicate(BatchRecord),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerState {
    producers: HashMap<u64, VecDeque<BatchRecord>>,
}

impl ProducerState {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn check(&self, producer_id: u64, sequence: u64) -> Result<SequenceCheck> {
        let Some(recent) = self.producers.get(&producer_id) else {
            return Ok(SequenceCheck::Fresh);
        };
        let Some(last) = recent.back() else {
            return Ok(SequenceCheck::Fresh);
        };
        if sequence == last.sequence.wrapping_add(1) {
            return Ok(SequenceCheck::Fresh);
        }
        if let Some(hit) = recent.iter().find(|b| b.sequence == sequence) {
            return Ok(SequenceCheck::Duplicate(*hit));
        }
        if sequence < last.sequence {
            Err(EngineError::StaleSequence {
                producer_id,
                got: sequence,
                last: last.sequence,
            })
        } else {
            Err(EngineError::OutOfOrderSequence {
                producer_id,
                expected: last.sequence + 1,
                got: sequence,
            })
        }
    }

    pub fn record(&mut self, producer_id: u64, batch: BatchRecord) {
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= PRODUCERS_MAX {
            self.evict_oldest();
        }
        let recent = self.producers.entry(producer_id).or_default();
        if recent.len() == RECENT_BATCHES {
            recent.pop_front();
        }
        recent.push_back(batch);
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .producers
            .iter()
            .min_by_key(|(_, r)| r.back().map_or(0, |b| b.last_offset))
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.producers.remove(&id);
        }
    }

    /// Forgets batches at or after `offset` (their records were truncated by recovery).
    pub fn truncate_from(&mut self, offset: u64) {
        self.producers.retain(|_, recent| {
            recent.retain(|b| b.last_offset < offset);
            !recent.is_empty()
        });
    }

    pub fn encode(&self, next_offset: u64) -> Vec<u8> {
        let mut out = snapshot_file::begin(MAGIC, 12 + self.producers.len() * 33);
        out.extend_from_slice(&next_offset.to_le_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        let mut ids: Vec<_> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let recent = &self.producers[&id];
            out.extend_from_slice(&id.to_le_bytes());
            out.push(recent.len() as u8);
            for b in recent {
                out.extend_from_slice(&b.sequence.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset.to_le_bytes());
            }
        }
        snapshot_file::seal(&mut out);
        out
    }

    /// Decodes a snapshot; returns the state and the offset it is valid up to (exclusive),
    /// or a reason it cannot be used.
    pub fn decode(bytes: &[u8]) -> std::result::Result<(ProducerState, u64), String> {
        let mut r = snapshot_file::open(bytes, MAGIC)?;
        let next_offset = r.u64()?;
        let count = r.u32()? as usize;
        let mut state = ProducerState::default();
        for _ in 0..count {
            let id = r.u64()?;
            let n = usize::from(r.u8()?);
            if n == 0 || n > RECENT_BATCHES {
                return Err(format!("{n} batches for one producer"));
            }
            let mut recent = VecDeque::with_capacity(n);
            for _ in 0..n {
                recent.push_back(BatchRecord {
                    sequence: r.u64()?,
                    base_offset: r.u64()?,
                    last_offset: r.u64()?,
                });
            }
            state.producers.insert(id, recent);
        }
        r.finish()?;
        Ok((state, next_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, base: u64) -> BatchRecord {
        BatchRecord {
            sequence: seq,
            base_offset: base,
            last_offset: base + 9,
        }
    }

    #[test]
    fn retries_are_recognised_and_gaps_rejected() {
        let mut s = ProducerState::default();
        assert_eq!(s.check(7, 0).expect("ok"), SequenceCheck::Fresh);
        s.record(7, rec(0, 0));
        s.record(7, rec(1, 10));
        assert_eq!(
            s.check(7, 1).expect("ok"),
            SequenceCheck::Duplicate(rec(1, 10))
        );
        assert_eq!(
            s.check(7, 0).expect("ok"),
            SequenceCheck::Duplicate(rec(0, 0))
        );
        assert_eq!(s.check(7, 2).expect("ok"), SequenceCheck::Fresh);
        assert!(matches!(
            s.check(7, 5),
            Err(EngineError::OutOfOrderSequence { expected: 2, .. })
        ));
        for i in 2..10 {
            s.record(7, rec(i, i * 10));
        }
        assert!(matches!(
            s.check(7, 1),
            Err(EngineError::StaleSequence { .. })
        ));
    }

    #[test]
    fn snapshot_round_trips_and_detects_corruption() {
        let mut s = ProducerState::default();
        for p in 1..5 {
            for i in 0..7 {
                s.record(p, rec(i, p * 1000 + i * 10));
            }
        }
        let bytes = s.encode(4242);
        let (back, next) = ProducerState::decode(&bytes).expect("decodes");
        assert_eq!((back, next), (s, 4242));
        let mut bad = bytes.clone();
        bad[30] ^= 4;
        assert!(ProducerState::decode(&bad).is_err());
        assert!(ProducerState::decode(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn truncation_forgets_lost_batches() {
        let mut s = ProducerState::default();
        s.record(1, rec(0, 0));
        s.record(1, rec(1, 10));
        s.truncate_from(10);
        assert_eq!(s.check(1, 1).expect("ok"), SequenceCheck::Fresh);
    }
}
