//! tidelog's storage engine: topics of partitions, each an append-only log of CRC-checked
//! batches in segment files (written with `pwritev`, read through memory mappings), with sparse offset and time indexes, group
//! commit, crash recovery and retention. No networking here.
//!
//! # Layout (in data-path order)
//! - (`tidelog-protocol`) `builder`, `batch`, `record`: the batch format, shared with the
//!   wire; validated once on arrival.
//! - `partition.rs` — append (validate → producer dedup → roll → `pwritev` into the
//!   segment → offset index → queue the tenant index's updates → publish), read (index lookup → whole batches as a borrowed slice), flush,
//!   retention.
//! - `segment.rs` — one segment file and its mapping; `index.rs` — its offset and time
//!   indexes over `entry_file.rs`, a mapped array of fixed-size entries.
//! - `flusher.rs` — the background thread: group commit, periodic sync, retention;
//!   `indexer.rs` — the thread that does the tenant index's work an appender must not
//!   (a large key table's doubling, checkpoints), fed through `work_queue.rs`.
//! - `checkpoint.rs` — how far the active segment is durable; `recovery.rs` — opening a
//!   partition after a clean or unclean stop; `producer.rs` — idempotent producer state;
//!   `snapshot_file.rs` — the magic + CRC framing of the snapshot files.
//! - `key_map.rs` — one tenant's keys: 128-bit key hashes in a flat, huge-page table.
//! - `tenant_index.rs` — tenant → key → latest offset, applied from the updates appends
//!   queue, and checkpointed; `extract.rs` — the frozen tenant snapshot a state extraction reads.
//! - `topic.rs` — topic metadata; `engine.rs` — the data directory, topics, clean shutdown.
//! - `notify.rs` — change notification for long polls and subscriptions; `fsio.rs` —
//!   fallocate, atomic writes, the sync seam for fault injection; `config.rs`, `error.rs`.
//!
//! The file formats are specified in `docs/FORMAT.md`.
//!
//! # Example
//!
//! ```
//! use tidelog_engine::{build_batch, AckLevel, Engine, EngineConfig, ProducerStamp, Record, TopicConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let engine = Engine::open(dir.path(), EngineConfig::default())?;
//! engine.create_topic("files", TopicConfig { partitions: 4, ..TopicConfig::default() })?;
//! let batch = build_batch(
//!     &[Record {
//!         tenant: Some(b"acme".to_vec()),
//!         key: Some(b"file-1".to_vec()),
//!         value: Some(b"uploaded".to_vec()),
//!         timestamp_ms: 1_700_000_000_000,
//!         headers: vec![(b"type".to_vec(), b"upload".to_vec())],
//!     }],
//!     ProducerStamp::default(),
//! );
//! let appended = engine.append("files", 0, &batch, AckLevel::Durable)?; // after fsync
//! let fetched = engine.partition("files", 0)?.read(appended.base_offset, 1 << 20)?;
//! assert_eq!(fetched.len(), batch.len()); // the stored batch, a zero-copy slice
//! engine.close()?; // clean shutdown: the next open does no recovery scan
//! # Ok(())
//! # }
//! ```

mod checkpoint;
pub mod compaction;
pub mod config;
mod engine;
mod entry_file;
pub mod error;
pub mod extract;
mod flusher;
pub mod fsio;
pub mod index;
mod indexer;
pub mod key_map;
pub mod notify;
pub mod offset_sort;
pub mod page_cache;
pub mod partition;
pub mod producer;
pub mod recovery;
pub mod segment;
mod snapshot_file;
pub mod tenant_index;
pub mod tenant_map;
pub mod topic;
mod work_queue;

/// The batch format is the wire format too; it lives in `tidelog-protocol`.
pub use tidelog_protocol::{batch, builder, record, varint};

pub use builder::{build_batch, build_batch_into, ProducerStamp, Record};
pub use checkpoint::{Checkpoint, CHECKPOINT_FILE};
pub use config::{CleanupPolicy, EngineConfig, IndexLag, RecoveryPolicy, TopicConfig};
pub use engine::{AckLevel, Engine, PartitionInfo, TopicInfo, CLEAN_SHUTDOWN_FILE};
pub use error::{EngineError, Result};
pub use extract::TenantSnapshot;
pub use notify::{Change, Watcher};
pub use partition::{
    Appended, CheckedBatch, ColdSpan, Fetched, IndexNotes, Partition, RunOutcome, SeekFrom,
    TenantInfo,
};
pub use recovery::{RecoveryReport, Truncation};
