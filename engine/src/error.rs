//! Typed errors of the engine.
//!
//! I/O failures are kept apart from corruption: `Io` means the operating system refused
//! something (disk full, permissions), `Corrupt` means bytes we read are not what we wrote.
//! Client mistakes (`InvalidBatch`, `RecordTooLarge`, `OffsetOutOfRange`, ...) are their own
//! variants so the server can map each to a protocol error code.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("i/o error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("corrupt data in {segment} at byte {position}: {reason}")]
    Corrupt {
        segment: PathBuf,
        position: u64,
        reason: String,
    },

    #[error("offset {requested} out of range: the log holds [{earliest}, {next})")]
    OffsetOutOfRange {
        requested: u64,
        earliest: u64,
        next: u64,
    },

    #[error("batch of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },

    #[error("invalid batch: {0}")]
    InvalidBatch(String),

    #[error("partition {topic}/{partition} refuses writes after a failed flush; reopen it")]
    Poisoned { topic: String, partition: u32 },

    #[error("unknown topic {0:?}")]
    UnknownTopic(String),

    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },

    #[error("topic {0:?} already exists")]
    TopicExists(String),

    #[error("invalid topic configuration: {0}")]
    InvalidConfig(String),

    #[error(
        "producer {producer_id}: sequence {got} out of order (expected {expected}); a batch was lost"
    )]
    OutOfOrderSequence {
        producer_id: u64,
        expected: u64,
        got: u64,
    },

    #[error(
        "producer {producer_id}: sequence {got} is older than the retained window (last {last})"
    )]
    StaleSequence {
        producer_id: u64,
        got: u64,
        last: u64,
    },

    #[error("the engine is shut down")]
    ShutDown,

    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

impl EngineError {
    /// Wraps an `io::Error` with the operation and path it concerned.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        EngineError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn corrupt(segment: impl Into<PathBuf>, position: u64, reason: impl Into<String>) -> Self {
        EngineError::Corrupt {
            segment: segment.into(),
            position,
            reason: reason.into(),
        }
    }
}
