//! Admin and fetch calls on a [`Client`].

use std::time::Duration;

use tidelog_protocol::{
    Ack, PartitionOffsets, PublishedBatch, Request, Response, StartAt, TopicDescription,
    TopicSettings,
};

use crate::connection::{Client, Frame, PendingReply};
use crate::error::{ClientError, Result};
use crate::records::{decode_batches, ConsumedRecord};

/// The result of a fetch.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub records: Vec<ConsumedRecord>,
    /// Where the next fetch should start.
    pub next_offset: u64,
    /// The partition's next offset to be written, when the fetch was served.
    pub high_watermark: u64,
}

/// The result of [`Client::fetch_batches`]: CRC-checked batches, read in place.
#[derive(Debug)]
pub struct FetchedBatches {
    frame: Frame,
    batches_at: usize,
    batches_len: usize,
    /// Records before this offset (at the start of the first batch) are skipped.
    from: u64,
    /// Where the next fetch should start.
    pub next_offset: u64,
    /// The partition's next offset to be written, when the fetch was served.
    pub high_watermark: u64,
}

/// A [`Client::send_fetch_batches`] request in flight.
#[derive(Debug)]
pub struct PendingFetch {
    reply: PendingReply,
    from: u64,
}

impl PendingFetch {
    /// Waits for the response; its batches are CRC-checked before they are returned.
    pub fn wait(self) -> Result<FetchedBatches> {
        let frame = self.reply.wait()?;
        let (batches_at, batches_len, next_offset, high_watermark) = {
            let response = frame.response()?;
            let Response::Fetched(b) = response else {
                return Err(unexpected("FETCH", &response));
            };
            // The batches are the body's tail.
            let at = frame.body().len() - b.batches.len();
            (at, b.batches.len(), b.next_offset, b.high_watermark)
        };
        let fetched = FetchedBatches {
            frame,
            batches_at,
            batches_len,
            from: self.from,
            next_offset,
            high_watermark,
        };
        fetched.check()?;
        Ok(fetched)
    }
}

impl FetchedBatches {
    fn bytes(&self) -> &[u8] {
        &self.frame.body()[self.batches_at..self.batches_at + self.batches_len]
    }

    /// Bytes of batches received.
    pub fn len(&self) -> usize {
        self.batches_len
    }

    pub fn is_empty(&self) -> bool {
        self.batches_len == 0
    }

    fn check(&self) -> Result<()> {
        let bytes = self.bytes();
        let mut pos = 0;
        while pos < bytes.len() {
            let view = tidelog_protocol::batch::check_frame(&bytes[pos..])
                .map_err(|e| ClientError::Corrupt(format!("batch at byte {pos}: {e}")))?;
            pos += view.bytes().len();
        }
        Ok(())
    }

    /// Calls `f` with every record at or after the fetch's start offset, in order.
    pub fn for_each(
        &self,
        mut f: impl FnMut(&tidelog_protocol::record::RecordView<'_>),
    ) -> Result<()> {
        let bytes = self.bytes();
        let mut pos = 0;
        while pos < bytes.len() {
            let view = tidelog_protocol::batch::view_stored(&bytes[pos..])
                .map_err(|e| ClientError::Corrupt(format!("batch at byte {pos}: {e}")))?;
            for r in view.records() {
                let r = r.map_err(ClientError::Corrupt)?;
                if r.offset >= self.from {
                    f(&r);
                }
            }
            pos += view.bytes().len();
        }
        Ok(())
    }
}

fn unexpected(what: &str, r: &Response<'_>) -> ClientError {
    ClientError::Protocol(format!("unexpected response to {what}: {r:?}"))
}

fn done(frame: Frame, what: &str) -> Result<()> {
    match frame.response()? {
        Response::Done => Ok(()),
        other => Err(unexpected(what, &other)),
    }
}

/// A tenant's figures in its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantInfo {
    pub partition: u32,
    /// Offset of the tenant's most recent event (its latest event id).
    pub latest_offset: Option<u64>,
    /// Keys whose latest record is not a tombstone.
    pub live_keys: u64,
    /// Records of the tenant in the partition.
    pub events: u64,
}

impl Client {
    /// The tenant's latest event id, live key count and event count.
    pub fn tenant_info(&self, topic: &str, tenant: &[u8]) -> Result<TenantInfo> {
        let frame = self.request(&Request::TenantInfo { topic, tenant })?;
        match frame.response()? {
            Response::TenantInfo {
                partition,
                latest_offset,
                live_keys,
                events,
            } => Ok(TenantInfo {
                partition,
                latest_offset: (latest_offset != u64::MAX).then_some(latest_offset),
                live_keys,
                events,
            }),
            other => Err(unexpected("TENANT_INFO", &other)),
        }
    }

    pub fn ping(&self) -> Result<()> {
        done(self.request(&Request::Ping)?, "PING")
    }

    pub fn create_topic(&self, name: &str, settings: TopicSettings) -> Result<()> {
        done(
            self.request(&Request::CreateTopic { name, settings })?,
            "CREATE_TOPIC",
        )
    }

    pub fn delete_topic(&self, name: &str) -> Result<()> {
        done(
            self.request(&Request::DeleteTopic { name })?,
            "DELETE_TOPIC",
        )
    }

    pub fn add_partitions(&self, name: &str, partitions: u32) -> Result<()> {
        done(
            self.request(&Request::AddPartitions { name, partitions })?,
            "ADD_PARTITIONS",
        )
    }

    /// Topic names with their partition counts.
    pub fn list_topics(&self) -> Result<Vec<(String, u32)>> {
        let frame = self.request(&Request::ListTopics)?;
        match frame.response()? {
            Response::Topics(list) => {
                Ok(list.into_iter().map(|(n, p)| (n.to_string(), p)).collect())
            }
            other => Err(unexpected("LIST_TOPICS", &other)),
        }
    }

    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let frame = self.request(&Request::DescribeTopic { name })?;
        match frame.response()? {
            Response::Described(d) => Ok(d),
            other => Err(unexpected("DESCRIBE_TOPIC", &other)),
        }
    }

    pub fn offsets(&self, topic: &str) -> Result<Vec<PartitionOffsets>> {
        let frame = self.request(&Request::Offsets { topic })?;
        match frame.response()? {
            Response::Offsets(list) => Ok(list),
            other => Err(unexpected("OFFSETS", &other)),
        }
    }

    /// Publishes whole batches (built with `tidelog_protocol::builder`) to one partition.
    /// With `Ack::None` nothing is awaited and the result is empty.
    pub fn publish(
        &self,
        topic: &str,
        partition: u32,
        ack: Ack,
        batches: &[u8],
    ) -> Result<Vec<PublishedBatch>> {
        let Some(pending) = self.send(&Request::Publish {
            topic,
            partition,
            ack,
            batches,
        })?
        else {
            return Ok(Vec::new());
        };
        published(pending.wait()?)
    }

    /// As [`Client::fetch`], without decoding the records into owned values: the batches
    /// stay in the received frame, are CRC-checked here, and their records are read in
    /// place through [`FetchedBatches::for_each`] — no allocation per record.
    pub fn fetch_batches(
        &self,
        topic: &str,
        partition: u32,
        start: StartAt,
        max_bytes: u32,
        tenant: Option<&[u8]>,
    ) -> Result<FetchedBatches> {
        self.send_fetch_batches(topic, partition, start, max_bytes, tenant)?
            .wait()
    }

    /// Sends a [`Client::fetch_batches`] request without waiting for its response: a
    /// consumer asks for the next range (from the previous response's `next_offset`)
    /// before it processes the current one, so the server and the network work while it
    /// does — as Kafka's consumer prefetches.
    pub fn send_fetch_batches(
        &self,
        topic: &str,
        partition: u32,
        start: StartAt,
        max_bytes: u32,
        tenant: Option<&[u8]>,
    ) -> Result<PendingFetch> {
        let reply = self
            .send(&Request::Fetch {
                topic,
                partition,
                start,
                max_bytes,
                max_wait_ms: 0,
                tenant,
            })?
            .ok_or_else(|| ClientError::Protocol("FETCH expects a response".into()))?;
        Ok(PendingFetch {
            reply,
            from: match start {
                StartAt::Offset(o) => o,
                _ => 0,
            },
        })
    }

    /// Fetches records from `start`, waiting up to `max_wait` for data when there is none.
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        start: StartAt,
        max_bytes: u32,
        max_wait: Duration,
        tenant: Option<&[u8]>,
    ) -> Result<Fetched> {
        let max_wait_ms = u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX);
        let frame = self.request(&Request::Fetch {
            topic,
            partition,
            start,
            max_bytes,
            max_wait_ms,
            tenant,
        })?;
        let response = frame.response()?;
        let Response::Fetched(b) = response else {
            return Err(unexpected("FETCH", &response));
        };
        let from = match start {
            StartAt::Offset(o) => o,
            _ => 0,
        };
        let mut records = Vec::new();
        decode_batches(b.partition, b.batches, from, &mut records)?;
        Ok(Fetched {
            records,
            next_offset: b.next_offset,
            high_watermark: b.high_watermark,
        })
    }
}

/// Decodes a PUBLISH response.
pub fn published(frame: Frame) -> Result<Vec<PublishedBatch>> {
    match frame.response()? {
        Response::Published(list) => Ok(list),
        other => Err(unexpected("PUBLISH", &other)),
    }
}

/// The acknowledgement levels by name, for command lines and configuration.
pub fn parse_ack(s: &str) -> Option<Ack> {
    match s {
        "none" => Some(Ack::None),
        "written" => Some(Ack::Written),
        "durable" => Some(Ack::Durable),
        _ => None,
    }
}
