//! What the event loop's handlers share: the engine, the limits, and the work that spans
//! poll ticks (durable acks waiting for a sync, parked long polls, subscription index).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidelog_engine::{Engine, EngineError, Partition, TopicConfig};
use tidelog_protocol::{ErrorCode, ProtocolError};

use crate::notices::{Notices, PartitionKey};

/// Every limit of the server, explicit (docs/PROTOCOL.md, "Limits").
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest frame accepted, header included.
    pub frame_bytes_max: u32,
    /// Largest batch run returned by one fetch or pushed in one DATA frame.
    pub fetch_bytes_max: u32,
    pub connections_max: usize,
    /// Unsent bytes queued for one connection before the server stops reading its
    /// requests and stops pushing to its subscriptions.
    pub buffered_bytes_max: usize,
    pub subscriptions_per_connection_max: usize,
    /// Longest a fetch may wait for data.
    pub max_wait: Duration,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes read from one connection per poll tick (fairness between clients).
    pub read_budget_bytes: usize,
    /// How long an extraction can be resumed (from a cursor, on any connection) after it
    /// started or was last resumed. Its snapshot and segments stay pinned that long.
    pub extract_resume_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: tidelog_protocol::FRAME_BYTES_MAX_DEFAULT,
            fetch_bytes_max: 8 << 20,
            connections_max: 1024,
            buffered_bytes_max: 32 << 20,
            subscriptions_per_connection_max: 1024,
            max_wait: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            read_budget_bytes: 8 << 20,
            extract_resume_window: Duration::from_secs(600),
        }
    }
}

/// A durable publish waiting for the flusher.
#[derive(Debug)]
pub struct PendingAck {
    pub token: usize,
    pub key: PartitionKey,
    /// Acknowledge once the durable offset passes this.
    pub last_offset: u64,
    /// The encoded success response, sent once durable.
    pub response: Vec<u8>,
    pub kind: u16,
    pub correlation: u64,
}

/// A fetch waiting for data.
#[derive(Debug)]
pub struct LongPoll {
    pub token: usize,
    pub correlation: u64,
    pub key: PartitionKey,
    pub partition: Arc<Partition>,
    pub from: u64,
    pub max_bytes: u32,
    pub tenant: Option<Vec<u8>>,
    pub deadline: Instant,
}

/// A fetch whose pages the reader thread is bringing into the page cache: answered,
/// exactly as if it had just arrived, once they are there.
#[derive(Debug)]
pub struct ColdFetch {
    /// The reader's job for it.
    pub seq: u64,
    pub token: usize,
    pub fetch: FetchArgs,
}

/// What a FETCH asks for, resolved.
#[derive(Debug, Clone)]
pub struct FetchArgs {
    pub correlation: u64,
    pub partition: Arc<Partition>,
    pub from: u64,
    pub max_bytes: u32,
    pub max_wait_ms: u32,
    pub tenant: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct State {
    pub engine: Arc<Engine>,
    pub limits: Limits,
    pub topic_defaults: TopicConfig,
    pub notices: Arc<Notices>,
    pub pending_acks: Vec<PendingAck>,
    /// Partitions with durable publishes this tick: one flush request each.
    pub flush_wanted: Vec<Arc<Partition>>,
    pub long_polls: Vec<LongPoll>,
    /// Which (connection, subscription) follow each partition.
    pub subscribers: HashMap<PartitionKey, Vec<(usize, u32)>>,
    /// Subscriptions to pump before the tick ends.
    pub to_pump: Vec<(usize, u32)>,
    pub server_name: String,
    /// Extractions that can be resumed, by token.
    pub resumable: HashMap<u64, crate::extraction::Resumable>,
    pub next_token: u64,
    /// Consumer groups.
    pub groups: crate::groups::Coordinator,
    /// Takes state extractions' snapshots, their reads and TENANT_INFO off the loop.
    pub worker: crate::worker::Worker,
    /// Reads the pages of fetches and subscriptions that found them out of the page
    /// cache, so that the loop never waits for the disk (`cold.rs`).
    pub reader: crate::worker::Worker,
    /// Fetches waiting for the reader.
    pub cold_fetches: Vec<ColdFetch>,
    /// What checking a group of publishes noted for the tenant index (kept to be reused).
    pub index_notes: tidelog_engine::IndexNotes,
}

impl State {
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, ProtocolError> {
        self.engine
            .partition(topic, partition)
            .map_err(|e| to_protocol(&e))
    }

    pub fn want_flush(&mut self, partition: &Arc<Partition>) {
        if !self.flush_wanted.iter().any(|p| Arc::ptr_eq(p, partition)) {
            self.flush_wanted.push(partition.clone());
        }
    }

    /// Sends `response` once `partition` is durable past `last_offset` (now, if it is
    /// already): the acknowledgement of a durable write, batched into the tick's group
    /// commit.
    #[allow(clippy::too_many_arguments)]
    pub fn reply_when_durable(
        &mut self,
        token: usize,
        conn: &mut crate::connection::Connection,
        partition: &Arc<Partition>,
        last_offset: u64,
        response: Vec<u8>,
        kind: u16,
        correlation: u64,
    ) {
        if partition.durable_offset() > last_offset {
            conn.outbox.push_owned(response);
            return;
        }
        self.want_flush(partition);
        self.pending_acks.push(PendingAck {
            token,
            key: key_of(partition),
            last_offset,
            response,
            kind,
            correlation,
        });
    }

    pub fn unsubscribe(&mut self, token: usize, key: &PartitionKey, id: u32) {
        if let Some(list) = self.subscribers.get_mut(key) {
            list.retain(|&(t, s)| !(t == token && s == id));
            if list.is_empty() {
                self.subscribers.remove(key);
            }
        }
    }
}

pub fn key_of(partition: &Partition) -> PartitionKey {
    (partition.topic().to_string(), partition.id())
}

/// Maps an engine error to its protocol error code. I/O failures and corruption are the
/// server's problem, reported as `Internal` and logged.
pub fn to_protocol(e: &EngineError) -> ProtocolError {
    let code = match e {
        EngineError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        EngineError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        EngineError::TopicExists(_) => ErrorCode::TopicExists,
        EngineError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        EngineError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        EngineError::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
        EngineError::InvalidBatch(_) => ErrorCode::InvalidBatch,
        EngineError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
        EngineError::StaleSequence { .. } => ErrorCode::StaleSequence,
        EngineError::Poisoned { .. } => ErrorCode::StorageFailed,
        EngineError::Timeout(_) => ErrorCode::Timeout,
        EngineError::ShutDown => ErrorCode::ShuttingDown,
        EngineError::Io { .. } | EngineError::Corrupt { .. } => {
            tracing::error!(error = %e, "storage error while serving a request");
            ErrorCode::Internal
        }
    };
    ProtocolError::new(code, e.to_string())
}
