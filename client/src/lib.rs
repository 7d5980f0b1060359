//! The native tidelog client: a blocking, pipelined connection, admin calls, a batching
//! producer, a fetch consumer and a subscription iterator. Used by the CLI, the bench and
//! the end-to-end tests.
//!
//! # Layout
//! - `connection.rs` — connect (with a failover list), handshake, pipelined requests, the
//!   reader thread routing responses and pushes.
//! - `admin.rs` — topics, offsets, publish and fetch calls.
//! - `producer.rs` — batching per (partition, tenant), linger, in-flight limit, receipts.
//! - `subscription.rs` — pushed records under credit, granted back as consumed.
//! - `extract.rs` — extract-then-follow: a tenant's state or history at a watermark, then
//!   the live records after it.
//! - `group.rs` — stream-group members (heartbeats, rebalances, commits) and group info.
//! - `queue.rs` — queue-group members: leased records, ack/nack/defer, batched settlements.
//! - `records.rs` — CRC-checked decoding of received batches.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tidelog_client::{Client, ConnectOptions, Producer, ProducerConfig, Record, StartAt, TopicSettings};
//!
//! # fn main() -> tidelog_client::Result<()> {
//! let client = Client::connect("127.0.0.1:7979", ConnectOptions::default())?;
//! client.create_topic("files", TopicSettings { partitions: 4, ..TopicSettings::default() })?;
//! let producer = Producer::new(&client, "files", ProducerConfig::default())?;
//! let receipt = producer.send(Record {
//!     tenant: Some(b"acme".to_vec()),
//!     key: Some(b"file-1".to_vec()),
//!     value: Some(b"uploaded".to_vec()),
//!     ..Record::default()
//! })?;
//! producer.flush()?;
//! let offset = receipt.wait()?.expect("acknowledged");
//! let fetched = client.fetch("files", receipt.partition, StartAt::Offset(offset), 1 << 20, Duration::ZERO, None)?;
//! assert_eq!(fetched.records[0].value.as_deref(), Some(&b"uploaded"[..]));
//! # Ok(())
//! # }
//! ```

mod admin;
mod connection;
mod error;
mod extract;
mod group;
mod producer;
mod queue;
mod records;
mod subscription;

pub use admin::{parse_ack, published, Fetched, FetchedBatches, PendingFetch, TenantInfo};
pub use connection::{Client, ConnectOptions, Frame, PendingReply, ServerInfo};
pub use error::{ClientError, Result};
pub use extract::{ExtractCriteria, ExtractEvent, ExtractThenFollow, TopicExtraction};
pub use group::{
    GroupConfig, GroupConsumer, GroupInfo, GroupListing, GroupMemberInfo, GroupOffset,
    GroupPartitionInfo, PendingCommit, Rebalance,
};
pub use producer::{Producer, ProducerConfig, Receipt};
pub use queue::{QueueConfig, QueueConsumer, QueuedRecord};
pub use records::{decode_batches, ConsumedRecord};
pub use subscription::{Subscription, WINDOW_BYTES_DEFAULT};
pub use tidelog_protocol::builder::{build_batch, ProducerStamp, Record};
pub use tidelog_protocol::{
    Ack, ErrorCode, ExtractMode, PartitionOffsets, ProtocolError, PublishedBatch, StartAt,
    TopicDescription, TopicSettings,
};
