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
    /// The protocol's form (borrowing these strings).
    pub fn filter(&self) -> ExtractFilter<'_> {
        ExtractFilter {
            since_ms: self.since_ms.unwrap_or(i64::MIN),
            until_ms: self.until_ms.unwrap_or(i64::MAX),
            key_prefix: self.key_prefix.as_deref().unwrap_or(""),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
        }
    }

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
    /// `None` between a dropped connection and the resubscription.
    Live(Option<Box<Subscription>>),
}

/// See the module documentation.
pub struct ExtractThenFollow {
    client: Client,
    topic: String,
    tenant: Vec<u8>,
    partition: u32,
    mode: ExtractMode,
    criteria: ExtractCriteria,
    window_bytes: u32,
    phase: Phase,
    buffered: VecDeque<ExtractEvent>,
    /// Names the extraction on the server, for a resume after a reconnect.
    token: u64,
    /// Where a resumed extraction continues: after the last chunk received.
    cursor: u64,
    /// The next live offset to receive (a resumed subscription starts there).
    live_next: u64,
    /// Transparent reconnects so far.
    reconnects: u32,
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
        self.extract_then_follow_with_window(topic, tenant, mode, criteria, WINDOW_BYTES_DEFAULT)
    }

    /// As [`Client::extract_then_follow`], with the credit window (the most bytes of
    /// extraction or live data buffered unread here; at least one maximum batch).
    pub fn extract_then_follow_with_window(
        &self,
        topic: &str,
        tenant: &[u8],
        mode: ExtractMode,
        criteria: ExtractCriteria,
        window_bytes: u32,
    ) -> Result<ExtractThenFollow> {
        let partitions = self.describe_topic(topic)?.partitions.len() as u32;
        let partition = partitioner::partition_for(Some(tenant), None, partitions).unwrap_or(0);
        self.extract_partition(topic, partition, tenant, mode, criteria, window_bytes)
    }

    /// Extract-then-follow of every tenant of a topic: each partition's state (or
    /// history) at its own watermark — all fixed when this call returns — then the live
    /// records of every partition. See [`TopicExtraction`].
    pub fn extract_topic_then_follow(
        &self,
        topic: &str,
        mode: ExtractMode,
        criteria: ExtractCriteria,
        window_bytes: u32,
    ) -> Result<TopicExtraction> {
        let partitions = self.describe_topic(topic)?.partitions.len() as u32;
        let streams = (0..partitions)
            .map(|p| self.extract_partition(topic, p, &[], mode, criteria.clone(), window_bytes))
            .collect::<Result<Vec<_>>>()?;
        Ok(TopicExtraction {
            streams,
            current: 0,
            next_live: 0,
        })
    }

    /// One partition's extraction (`tenant` empty: every tenant's), then its live stream.
    fn extract_partition(
        &self,
        topic: &str,
        partition: u32,
        tenant: &[u8],
        mode: ExtractMode,
        criteria: ExtractCriteria,
        window_bytes: u32,
    ) -> Result<ExtractThenFollow> {
        let mut stream = ExtractThenFollow {
            client: self.clone(),
            topic: topic.to_string(),
            tenant: tenant.to_vec(),
            partition,
            mode,
            criteria,
            window_bytes,
            phase: Phase::Live(None),
            buffered: VecDeque::new(),
            token: 0,
            cursor: 0,
            live_next: 0,
            reconnects: 0,
        };
        stream.start_extraction()?;
        Ok(stream)
    }
}

/// Reconnect attempts after the connection drops, `RECONNECT_PAUSE` apart.
pub(crate) const RECONNECT_ATTEMPTS: u32 = 40;
pub(crate) const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

impl ExtractThenFollow {
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// How many times the stream reconnected and resumed transparently.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// The connection in use (it changes after a transparent reconnect).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends EXTRACT: a new extraction, or (with a token) a resume at the cursor.
    fn start_extraction(&mut self) -> Result<()> {
        let (id, rx) = self.client.register_subscription();
        let filter = self.criteria.filter();
        let request = Request::Extract {
            extraction: id,
            topic: &self.topic,
            partition: self.partition,
            tenant: &self.tenant,
            mode: self.mode,
            filter,
            credit_bytes: self.window_bytes,
            resume_token: self.token,
            resume_cursor: self.cursor,
        };
        let started = self
            .client
            .request(&request)
            .and_then(|f| match f.response()? {
                Response::Extracting { token, .. } => Ok(token),
                other => Err(ClientError::Protocol(format!(
                    "unexpected EXTRACT response {other:?}"
                ))),
            });
        match started {
            Ok(token) => {
                self.token = token;
                self.phase = Phase::Extracting {
                    id,
                    rx,
                    consumed: 0,
                };
                Ok(())
            }
            Err(e) => {
                self.client.forget_subscription(id);
                Err(e)
            }
        }
    }

    fn subscribe_live(&mut self) -> Result<()> {
        // The server applies the criteria to the live stream too.
        let tenant = (!self.tenant.is_empty()).then_some(self.tenant.as_slice());
        let sub = self.client.subscribe_filtered(
            &self.topic,
            self.partition,
            StartAt::Offset(self.live_next),
            tenant,
            &self.criteria,
            self.window_bytes,
        )?;
        self.phase = Phase::Live(Some(Box::new(sub)));
        Ok(())
    }

    /// After the connection dropped: connect again to the same server and continue where
    /// this stream was — the extraction from its cursor (within the server's resume
    /// window), or the live stream from the next offset. Nothing is repeated or skipped.
    fn reconnect(&mut self) -> Result<()> {
        let address = self.client.server().address;
        let options = self.client.options().clone();
        let mut last = ClientError::Disconnected;
        for _ in 0..RECONNECT_ATTEMPTS {
            match Client::connect(address, options.clone()) {
                Ok(c) => {
                    self.client = c;
                    self.reconnects += 1;
                    return match self.phase {
                        Phase::Extracting { .. } => self.start_extraction(),
                        Phase::Live(_) => self.subscribe_live(),
                    };
                }
                Err(e) => last = e,
            }
            std::thread::sleep(RECONNECT_PAUSE);
        }
        Err(last)
    }

    /// The next event, waiting up to `timeout`; `Ok(None)` if none came in time.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<ExtractEvent>> {
        loop {
            if let Some(e) = self.buffered.pop_front() {
                return Ok(Some(e));
            }
            let frame = match &mut self.phase {
                Phase::Live(None) => {
                    self.reconnect()?;
                    continue;
                }
                Phase::Live(Some(sub)) => match sub.next_timeout(timeout) {
                    Ok(None) => return Ok(None),
                    Ok(Some(r)) => {
                        self.live_next = r.offset + 1;
                        if self.criteria.matches(&r) {
                            return Ok(Some(ExtractEvent::Live(r)));
                        }
                        continue;
                    }
                    Err(ClientError::Disconnected) => {
                        self.phase = Phase::Live(None);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                Phase::Extracting { rx, .. } => match rx.recv_timeout(timeout) {
                    Ok(f) => f,
                    Err(RecvTimeoutError::Timeout) => return Ok(None),
                    Err(RecvTimeoutError::Disconnected) => {
                        self.reconnect()?;
                        continue;
                    }
                },
            };
            if let Some(event) = self.accept(frame)? {
                return Ok(Some(event));
            }
        }
    }

    /// Handles one extraction frame; returns the watermark event at the end.
    fn accept(&mut self, frame: Frame) -> Result<Option<ExtractEvent>> {
        if let Some(e) = frame.error() {
            return Err(e);
        }
        let Phase::Extracting { id, consumed, .. } = &mut self.phase else {
            return Ok(None);
        };
        let id = *id;
        match frame.header.kind {
            kind::EXTRACT_DATA => {
                let data = decode_extract_data(frame.body())
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                let mut records = Vec::new();
                decode_batches(self.partition, data.batches, 0, &mut records)?;
                self.buffered
                    .extend(records.into_iter().map(ExtractEvent::Snapshot));
                self.cursor = data.cursor;
                *consumed += data.batches.len() as u64;
                if *consumed >= u64::from(self.window_bytes / 2) {
                    let credit_bytes = u32::try_from(*consumed).unwrap_or(u32::MAX);
                    *consumed -= u64::from(credit_bytes);
                    // A lost grant is harmless: a reconnect resumes with a fresh credit.
                    let _ = self.client.send(&Request::GrantCredits {
                        subscription: id,
                        credit_bytes,
                    });
                }
                Ok(None)
            }
            kind::EXTRACT_END => {
                let (w, records) = decode_extract_end(frame.body())
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                let watermark = (w != u64::MAX).then_some(w);
                self.client.forget_subscription(id);
                self.live_next = watermark.map_or(0, |w| w + 1);
                self.phase = Phase::Live(None);
                match self.subscribe_live() {
                    Ok(()) | Err(ClientError::Disconnected | ClientError::Io(_)) => {}
                    Err(e) => return Err(e),
                }
                Ok(Some(ExtractEvent::Watermark {
                    partition: self.partition,
                    offset: watermark,
                    records,
                }))
            }
            other => Err(ClientError::Protocol(format!(
                "unexpected push kind {other:#06x}"
            ))),
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

/// Extract-then-follow of a whole topic (every tenant): partition by partition, its
/// extraction and its watermark event; then the live records of every partition, taken
/// in turn. Every partition's watermark is fixed when the extraction starts (the server
/// freezes each partition's index at its own last offset); the live stream of a partition
/// starts right after its watermark, so per partition the guarantee of
/// [`ExtractThenFollow`] holds. Live records of different partitions are not ordered
/// among themselves (they never are).
#[derive(Debug)]
pub struct TopicExtraction {
    streams: Vec<ExtractThenFollow>,
    /// The partition whose extraction is being read (== streams.len(): all are live).
    current: usize,
    /// Where the live round robin continues.
    next_live: usize,
}

impl TopicExtraction {
    /// The next event, waiting up to `timeout`; `Ok(None)` if none came in time.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<ExtractEvent>> {
        if self.current < self.streams.len() {
            let event = self.streams[self.current].next_timeout(timeout)?;
            if matches!(event, Some(ExtractEvent::Watermark { .. })) {
                self.current += 1;
            }
            return Ok(event);
        }
        let n = self.streams.len();
        if n == 0 {
            std::thread::sleep(timeout);
            return Ok(None);
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // A short wait on each partition in turn, so one quiet partition does not
            // hold back the others.
            let slice = Duration::from_millis(if n > 1 { 2 } else { 50 });
            for _ in 0..n {
                let i = self.next_live;
                self.next_live = (self.next_live + 1) % n;
                if let Some(e) = self.streams[i].next_timeout(Duration::ZERO)? {
                    return Ok(Some(e));
                }
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let i = self.next_live;
            if let Some(e) = self.streams[i].next_timeout(slice.min(deadline - now))? {
                self.next_live = (i + 1) % n;
                return Ok(Some(e));
            }
        }
    }

    /// Transparent reconnects so far, over all partitions.
    pub fn reconnects(&self) -> u32 {
        self.streams.iter().map(ExtractThenFollow::reconnects).sum()
    }
}
