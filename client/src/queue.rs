//! Queue-group members: a [`QueueConsumer`] polls records leased to it for the group's
//! visibility timeout, and settles each one — ack (done), nack (retry after a delay or the
//! group's backoff; dead-lettered after the group's max deliveries), defer (not before a
//! time), or release.
//!
//! Settlements are batched: they are queued by `ack`/`nack`/`defer` and sent with the next
//! `poll` (pipelined ahead of it) or by `flush`; the server answers once they are durable.
//! A settlement the server refuses (the lease had expired and the record went to another
//! member, or it was already settled) is reported by [`QueueConsumer::take_refused`]: the
//! record will be (or was) delivered again — the at-least-once contract.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tidelog_protocol::group::{GroupRequest, GroupResponse, QueueSettings, Settle, SettleEntry};
use tidelog_protocol::{ErrorCode, Request, Response};

use crate::connection::{Client, Frame, PendingReply};
use crate::error::{ClientError, Result};
use crate::records::{decode_batches, ConsumedRecord};

/// Settings of a queue group, applied when a join creates it (zero or empty: the
/// server's default). A group's settings never change afterwards; the join returns them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// How long a delivered record is leased to its member [server default 30 s].
    pub visibility_timeout: Duration,
    /// Deliveries after which a failing record is dead-lettered [5].
    pub max_deliveries: u32,
    /// Wait after the n-th failure (nack without a delay, lease expiry); the last entry
    /// repeats [100 ms, 1 s, 5 s, 30 s].
    pub backoff: Vec<Duration>,
    /// [`<topic>.dlq`]
    pub dead_letter_topic: Option<String>,
    /// A record waits while an earlier record with its key is unsettled.
    pub per_key_ordering: bool,
    /// Records tracked per partition past the settled prefix [10 000].
    pub max_in_flight: u32,
}

/// A leased record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecord {
    pub record: ConsumedRecord,
    /// This delivery's number (1 = first).
    pub deliveries: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub struct QueueConsumer {
    client: Client,
    group: String,
    topic: String,
    member_id: String,
    settings: QueueConfig,
    queued: Vec<(u32, u64, Settle, String)>,
    in_flight: VecDeque<(PendingReply, Vec<(u32, u64)>)>,
    refused: Vec<(u32, u64, ErrorCode)>,
    /// Bytes asked for per poll.
    pub max_bytes: u32,
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl QueueConsumer {
    /// Joins (creating it with `config` if it does not exist) queue group `group` on
    /// `topic`.
    pub fn join(client: &Client, group: &str, topic: &str, config: &QueueConfig) -> Result<Self> {
        let frame = client.request(&Request::Group(GroupRequest::QueueJoin {
            group,
            topic,
            member_id: "",
            settings: QueueSettings {
                visibility_timeout_ms: millis(config.visibility_timeout),
                max_deliveries: config.max_deliveries,
                per_key_ordering: config.per_key_ordering,
                max_in_flight: config.max_in_flight,
                dead_letter_topic: config.dead_letter_topic.as_deref().unwrap_or(""),
                backoff_ms: config.backoff.iter().map(|d| millis(*d)).collect(),
            },
        }))?;
        let (member_id, settings) = match frame.response()? {
            Response::Group(GroupResponse::QueueJoined {
                member_id,
                settings,
            }) => (
                member_id.to_string(),
                QueueConfig {
                    visibility_timeout: Duration::from_millis(u64::from(
                        settings.visibility_timeout_ms,
                    )),
                    max_deliveries: settings.max_deliveries,
                    backoff: settings
                        .backoff_ms
                        .iter()
                        .map(|ms| Duration::from_millis(u64::from(*ms)))
                        .collect(),
                    dead_letter_topic: Some(settings.dead_letter_topic.to_string()),
                    per_key_ordering: settings.per_key_ordering,
                    max_in_flight: settings.max_in_flight,
                },
            ),
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected QUEUE_JOIN response {other:?}"
                )))
            }
        };
        Ok(QueueConsumer {
            client: client.clone(),
            group: group.to_string(),
            topic: topic.to_string(),
            member_id,
            settings,
            queued: Vec::new(),
            in_flight: VecDeque::new(),
            refused: Vec::new(),
            max_bytes: 8 << 20,
        })
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// After the connection dropped (`Disconnected`): connects again to the same address
    /// (up to 10 s of attempts) and joins under the same member id, so leases still held
    /// on a server that stayed up remain this member's. Settlements sent but not answered
    /// are forgotten: their records come back if the server did not apply them
    /// (at-least-once); queued ones are sent with the next poll.
    pub fn reconnect(&mut self) -> Result<()> {
        let address = self.client.server().address;
        let options = self.client.options().clone();
        self.in_flight.clear();
        let mut last = ClientError::Disconnected;
        for _ in 0..crate::extract::RECONNECT_ATTEMPTS {
            match Client::connect(address, options.clone()) {
                Ok(c) => {
                    let joined = c.request(&Request::Group(GroupRequest::QueueJoin {
                        group: &self.group,
                        topic: &self.topic,
                        member_id: &self.member_id,
                        settings: QueueSettings {
                            visibility_timeout_ms: 0,
                            max_deliveries: 0,
                            per_key_ordering: false,
                            max_in_flight: 0,
                            dead_letter_topic: "",
                            backoff_ms: Vec::new(),
                        },
                    }));
                    match joined.and_then(|f| f.response().map(|_| ())) {
                        Ok(()) => {
                            self.client = c;
                            return Ok(());
                        }
                        Err(e) => last = e,
                    }
                }
                Err(e) => last = e,
            }
            std::thread::sleep(crate::extract::RECONNECT_PAUSE);
        }
        Err(last)
    }

    /// The group's settings in effect.
    pub fn settings(&self) -> &QueueConfig {
        &self.settings
    }

    /// Up to `max_records` records leased to this member, waiting up to `wait` for some
    /// (at most the connection's request timeout). Queued settlements go first.
    pub fn poll(&mut self, max_records: u32, wait: Duration) -> Result<Vec<QueuedRecord>> {
        self.send_settlements()?;
        self.collect_settled(false)?;
        let wait = wait.min(
            self.client
                .options()
                .request_timeout
                .saturating_sub(Duration::from_secs(1)),
        );
        let frame = self
            .client
            .request(&Request::Group(GroupRequest::QueuePoll {
                group: &self.group,
                member_id: &self.member_id,
                max_records,
                max_bytes: self.max_bytes,
                max_wait_ms: millis(wait),
            }))?;
        self.leased(&frame)
    }

    fn leased(&self, frame: &Frame) -> Result<Vec<QueuedRecord>> {
        let parts = match frame.response()? {
            Response::Group(GroupResponse::Leased(parts)) => parts,
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected QUEUE_POLL response {other:?}"
                )))
            }
        };
        let mut out = Vec::new();
        for part in parts {
            let mut records = Vec::new();
            decode_batches(part.partition, part.batches, 0, &mut records)?;
            if records.len() != part.records.len() {
                return Err(ClientError::Protocol(format!(
                    "partition {}: {} records leased, {} in the batches",
                    part.partition,
                    part.records.len(),
                    records.len()
                )));
            }
            for (record, (offset, deliveries)) in records.into_iter().zip(part.records) {
                if record.offset != offset {
                    return Err(ClientError::Protocol(format!(
                        "leased offset {offset} but the batch holds {}",
                        record.offset
                    )));
                }
                out.push(QueuedRecord { record, deliveries });
            }
        }
        Ok(out)
    }

    fn queue(&mut self, r: &QueuedRecord, action: Settle, reason: &str) {
        self.queued.push((
            r.record.partition,
            r.record.offset,
            action,
            reason.to_string(),
        ));
    }

    /// Done with it: never delivered again.
    pub fn ack(&mut self, r: &QueuedRecord) {
        self.queue(r, Settle::Ack, "");
    }

    /// Failed: delivered again after `delay` (None: the group's backoff), or
    /// dead-lettered (with `reason` in its headers) once it has had its deliveries.
    pub fn nack(&mut self, r: &QueuedRecord, delay: Option<Duration>, reason: &str) {
        let delay_ms = delay.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.queue(r, Settle::Nack { delay_ms }, reason);
    }

    /// Not now: delivered again at `until`, not before.
    pub fn defer(&mut self, r: &QueuedRecord, until: SystemTime) {
        let until_ms = until
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.queue(r, Settle::Defer { until_ms }, "");
    }

    /// Gives the lease back: available to any member at once.
    pub fn release(&mut self, r: &QueuedRecord) {
        self.queue(r, Settle::Release, "");
    }

    /// Sends queued settlements and waits until the server has every one durable.
    pub fn flush(&mut self) -> Result<()> {
        self.send_settlements()?;
        self.collect_settled(true)
    }

    /// Settlements the server refused since the last call: (partition, offset, why).
    pub fn take_refused(&mut self) -> Vec<(u32, u64, ErrorCode)> {
        std::mem::take(&mut self.refused)
    }

    /// Flushes settlements, then leaves: the member's remaining leases are released.
    pub fn close(mut self) -> Result<()> {
        self.flush()?;
        let frame = self
            .client
            .request(&Request::Group(GroupRequest::QueueLeave {
                group: &self.group,
                member_id: &self.member_id,
            }))?;
        frame.response().map(|_| ())
    }

    fn send_settlements(&mut self) -> Result<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let queued = std::mem::take(&mut self.queued);
        // Bounded requests: a frame of settlements stays far below any frame limit.
        for chunk in queued.chunks(10_000) {
            let entries: Vec<SettleEntry<'_>> = chunk
                .iter()
                .map(|(partition, offset, action, reason)| SettleEntry {
                    partition: *partition,
                    offset: *offset,
                    action: *action,
                    reason,
                })
                .collect();
            let reply = self
                .client
                .send(&Request::Group(GroupRequest::QueueSettle {
                    group: &self.group,
                    member_id: &self.member_id,
                    entries,
                }))?
                .ok_or_else(|| ClientError::Protocol("QUEUE_SETTLE has a response".into()))?;
            self.in_flight
                .push_back((reply, chunk.iter().map(|(p, o, _, _)| (*p, *o)).collect()));
        }
        Ok(())
    }

    /// Takes the answers that arrived (all of them, waiting, with `block`).
    fn collect_settled(&mut self, block: bool) -> Result<()> {
        while let Some((reply, which)) = self.in_flight.pop_front() {
            let frame = if block {
                reply.wait()?
            } else {
                match reply.try_wait() {
                    None => {
                        self.in_flight.push_front((reply, which));
                        return Ok(());
                    }
                    Some(frame) => frame?,
                }
            };
            match frame.response()? {
                Response::Group(GroupResponse::Settled(codes)) if codes.len() == which.len() => {
                    for (code, (p, o)) in codes.into_iter().zip(which) {
                        if code != 0 {
                            let code = ErrorCode::from_u16(code).unwrap_or(ErrorCode::Internal);
                            self.refused.push((p, o, code));
                        }
                    }
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected QUEUE_SETTLE response {other:?}"
                    )))
                }
            }
        }
        Ok(())
    }
}
