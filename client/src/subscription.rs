//! A subscription: the server pushes new records from a position, under credit. The
//! iterator grants credit back as it consumes, so at most `window_bytes` of pushed data
//! is ever buffered here (the server never sends beyond it).

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use tidelog_protocol::response::decode_data;
use tidelog_protocol::{Request, Response, StartAt};

use crate::connection::{Client, Frame};
use crate::error::{ClientError, Result};
use crate::extract::ExtractCriteria;
use crate::records::{decode_batches, ConsumedRecord};

/// Default credit window: at least one maximum batch (16 MiB) must fit in it.
pub const WINDOW_BYTES_DEFAULT: u32 = 32 << 20;

/// See the module documentation.
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    id: u32,
    partition: u32,
    rx: Receiver<Frame>,
    buffered: VecDeque<ConsumedRecord>,
    window_bytes: u32,
    /// Bytes consumed since credit was last granted back.
    consumed_bytes: u64,
    /// Offset of the next record to hand out (earlier records of a batch are skipped).
    next_offset: u64,
    ended: bool,
}

impl Client {
    /// Subscribes to a partition from `start`, optionally only `tenant`'s records.
    pub fn subscribe(
        &self,
        topic: &str,
        partition: u32,
        start: StartAt,
        tenant: Option<&[u8]>,
        window_bytes: u32,
    ) -> Result<Subscription> {
        self.subscribe_filtered(
            topic,
            partition,
            start,
            tenant,
            &ExtractCriteria::default(),
            window_bytes,
        )
    }

    /// As [`Client::subscribe`], with criteria (time range, key prefix, headers) the
    /// server applies: only matching records are sent.
    pub fn subscribe_filtered(
        &self,
        topic: &str,
        partition: u32,
        start: StartAt,
        tenant: Option<&[u8]>,
        criteria: &ExtractCriteria,
        window_bytes: u32,
    ) -> Result<Subscription> {
        let (id, rx) = self.register_subscription();
        let request = Request::Subscribe {
            subscription: id,
            topic,
            partition,
            start,
            credit_bytes: window_bytes,
            tenant,
            filter: criteria.filter(),
        };
        let frame = match self.request(&request) {
            Ok(f) => f,
            Err(e) => {
                self.forget_subscription(id);
                return Err(e);
            }
        };
        let start_offset = match frame.response() {
            Ok(Response::Subscribed { start_offset }) => start_offset,
            Ok(other) => {
                self.forget_subscription(id);
                return Err(ClientError::Protocol(format!(
                    "unexpected SUBSCRIBE response {other:?}"
                )));
            }
            Err(e) => {
                self.forget_subscription(id);
                return Err(e);
            }
        };
        Ok(Subscription {
            client: self.clone(),
            id,
            partition,
            rx,
            buffered: VecDeque::new(),
            window_bytes,
            consumed_bytes: 0,
            next_offset: start_offset,
            ended: false,
        })
    }
}

impl Subscription {
    /// Offset of the next record this subscription will yield.
    pub fn position(&self) -> u64 {
        self.next_offset
    }

    /// The next record, waiting up to `timeout`; `Ok(None)` if none arrived in time.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<ConsumedRecord>> {
        loop {
            if let Some(r) = self.buffered.pop_front() {
                self.next_offset = r.offset + 1;
                return Ok(Some(r));
            }
            if self.ended {
                return Err(ClientError::Disconnected);
            }
            let frame = match self.rx.recv_timeout(timeout) {
                Ok(f) => f,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    self.ended = true;
                    return Err(ClientError::Disconnected);
                }
            };
            self.accept(frame)?;
        }
    }

    fn accept(&mut self, frame: Frame) -> Result<()> {
        if let Some(e) = frame.error() {
            self.ended = true;
            return Err(e);
        }
        let data = decode_data(frame.body()).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut records = Vec::new();
        decode_batches(self.partition, data.batches, self.next_offset, &mut records)?;
        self.buffered.extend(records);
        self.consumed_bytes += data.batches.len() as u64;
        if self.consumed_bytes >= u64::from(self.window_bytes / 2) {
            let credit_bytes = u32::try_from(self.consumed_bytes).unwrap_or(u32::MAX);
            self.client.send(&Request::GrantCredits {
                subscription: self.id,
                credit_bytes,
            })?;
            self.consumed_bytes -= u64::from(credit_bytes);
        }
        Ok(())
    }
}

impl Iterator for Subscription {
    type Item = Result<ConsumedRecord>;

    /// Blocks until the next record (or the connection ends).
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(r)) => return Some(Ok(r)),
                Ok(None) => continue,
                Err(ClientError::Disconnected) if self.ended => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.client.forget_subscription(self.id);
        if !self.client.is_closed() {
            // Best effort: the response is not awaited.
            let _ = self.client.send(&Request::Unsubscribe {
                subscription: self.id,
            });
        }
    }
}
