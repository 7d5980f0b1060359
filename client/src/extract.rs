//! Extract-then-follow: a tenant's state (or history) as of a watermark W, then every
//! matching record after W, live — one call, no gap and no duplicate at the seam.
//!
//! The server fixes W and streams the extraction (EXTRACT_DATA under credit, EXTRACT_END);
//! this iterator then subscribes to the tenant's partition from W + 1 with the tenant
//! filter, and applies the same criteria to live records.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use tidelog_protocol::response::{decode_extract_data, decode_extract_end};
use tidelog_protocol::{kind, partitioner, ExtractFilter, ExtractMode, Request, Response, StartAt};

use crate::connection::{Client, Frame};
use crate::error::{ClientError, Result};
use crate::records::{decode_batches, ConsumedRecord};
use crate::subscription::{Subscription, WINDOW_BYTES_DEFAULT};

/// What an extraction keeps (owned form of the protocol's filter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractCriteria {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub key_prefix: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl ExtractCriteria {
    pub fn matches(&self, r: &ConsumedRecord) -> bool {
        self.since_ms.is_none_or(|t| r.timestamp_ms >= t)
            && self.until_ms.is_none_or(|t| r.timestamp_ms <= t)
            && self.key_prefix.as_deref().is_none_or(|p| {
                r.key
                    .as_deref()
                    .is_some_and(|k| k.starts_with(p.as_bytes()))
            })
            && self.headers.iter().all(|(n, v)| {
                r.headers
                    .iter()
                    .any(|(hn, hv)| hn == n.as_bytes() && hv == v.as_bytes())
            })
    }
}

/// One step of extract-then-follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractEvent {
    /// A record of the extraction (state: the latest of a live key; history: an event).
    Snapshot(ConsumedRecord),
    /// The extraction is complete: it is exactly the tenant's data up to `offset`
    /// (`None`: the partition was empty). Live records follow from `offset + 1`.
    Watermark {
        partition: u32,
        offset: Option<u64>,
        records: u64,
    },
    /// A record published after the watermark.
    Live(ConsumedRecord),
}

enum Phase {
    Extracting {
        id: u32,
        rx: Receiver<Frame>,
        consumed: u64,
    },
    Live(Box<Subscription>),
}

/// See the module documentation.
pub struct ExtractThenFollow {
    client: Client,
    topic: String,
    tenant: Vec<u8>,
    partition: u32,
    criteria: ExtractCriteria,
    window_bytes: u32,
    phase: Phase,
    buffered: VecDeque<ExtractEvent>,
}

impl std::fmt::Debug for ExtractThenFollow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtractThenFollow")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .finish()
    }
}

impl Client {
    /// Starts extract-then-follow for `tenant` of `topic` (its partition is the tenant's).
    pub fn extract_then_follow(
        &self,
        topic: &str,
        tenant: &[u8],
        mode: ExtractMode,
        criteria: ExtractCriteria,
    ) -> Result<ExtractThenFollow> {
        let partitions = self.describe_topic(topic)?.partitions.len() as u32;
        let partition = partitioner::partition_for(Some(tenant), None, partitions).unwrap_or(0);
        let (id, rx) = self.register_subscription();
        let filter = ExtractFilter {
            since_ms: criteria.since_ms.unwrap_or(i64::MIN),
            until_ms: criteria.until_ms.unwrap_or(i64::MAX),
            key_prefix: criteria.key_prefix.as_deref().unwrap_or(""),
            headers: criteria
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
        };
        let request = Request::Extract {
            extraction: id,
            topic,
            partition,
            tenant,
            mode,
            filter,
            credit_bytes: WINDOW_BYTES_DEFAULT,
        };
        let started = self.request(&request).and_then(|f| match f.response()? {
            Response::Extracting { .. } => Ok(()),
            other => Err(ClientError::Protocol(format!(
                "unexpected EXTRACT response {other:?}"
            ))),
        });
        if let Err(e) = started {
            self.forget_subscription(id);
            return Err(e);
        }
        Ok(ExtractThenFollow {
            client: self.clone(),
            topic: topic.to_string(),
            tenant: tenant.to_vec(),
            partition,
            criteria,
            window_bytes: WINDOW_BYTES_DEFAULT,
            phase: Phase::Extracting {
                id,
                rx,
                consumed: 0,
            },
            buffered: VecDeque::new(),
        })
    }
}

impl ExtractThenFollow {
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The next event, waiting up to `timeout`; `Ok(None)` if none came in time.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<ExtractEvent>> {
        loop {
            if let Some(e) = self.buffered.pop_front() {
                return Ok(Some(e));
            }
            match &mut self.phase {
                Phase::Live(sub) => {
                    let Some(r) = sub.next_timeout(timeout)? else {
                        return Ok(None);
                    };
                    if self.criteria.matches(&r) {
                        return Ok(Some(ExtractEvent::Live(r)));
                    }
                }
                Phase::Extracting { id, rx, consumed } => {
                    let frame = match rx.recv_timeout(timeout) {
                        Ok(f) => f,
                        Err(RecvTimeoutError::Timeout) => return Ok(None),
                        Err(RecvTimeoutError::Disconnected) => {
                            return Err(ClientError::Disconnected)
                        }
                    };
                    if let Some(e) = frame.error() {
                        return Err(e);
                    }
                    let id = *id;
                    match frame.header.kind {
                        kind::EXTRACT_DATA => {
                            let data = decode_extract_data(frame.body())
                                .map_err(|e| ClientError::Protocol(e.to_string()))?;
                            let mut records = Vec::new();
                            decode_batches(self.partition, data.batches, 0, &mut records)?;
                            self.buffered
                                .extend(records.into_iter().map(ExtractEvent::Snapshot));
                            *consumed += data.batches.len() as u64;
                            if *consumed >= u64::from(self.window_bytes / 2) {
                                let credit_bytes = u32::try_from(*consumed).unwrap_or(u32::MAX);
                                self.client.send(&Request::GrantCredits {
                                    subscription: id,
                                    credit_bytes,
                                })?;
                                *consumed -= u64::from(credit_bytes);
                            }
                        }
                        kind::EXTRACT_END => {
                            let (w, records) = decode_extract_end(frame.body())
                                .map_err(|e| ClientError::Protocol(e.to_string()))?;
                            let watermark = (w != u64::MAX).then_some(w);
                            self.client.forget_subscription(id);
                            let from = watermark.map_or(0, |w| w + 1);
                            let sub = self.client.subscribe(
                                &self.topic,
                                self.partition,
                                StartAt::Offset(from),
                                Some(&self.tenant),
                                self.window_bytes,
                            )?;
                            self.phase = Phase::Live(Box::new(sub));
                            return Ok(Some(ExtractEvent::Watermark {
                                partition: self.partition,
                                offset: watermark,
                                records,
                            }));
                        }
                        other => {
                            return Err(ClientError::Protocol(format!(
                                "unexpected push kind {other:#06x}"
                            )))
                        }
                    }
                }
            }
        }
    }
}

impl Iterator for ExtractThenFollow {
    type Item = Result<ExtractEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(e)) => return Some(Ok(e)),
                Ok(None) => continue,
                Err(ClientError::Disconnected) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
