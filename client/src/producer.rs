//! A batching producer: records are grouped per (partition, tenant) into batches (so
//! tenant filters downstream keep or skip whole batches), sent when a batch is full or
//! has waited `linger`, with up to `max_in_flight` publish requests pipelined on the
//! connection. Each `send` returns a [`Receipt`] that resolves to the record's offset.
//!
//! Ordering: batches of one partition are dispatched in the order their records were
//! sent, and the connection preserves that order, so offsets follow send order per
//! (partition, tenant).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tidelog_protocol::builder::{build_batch, ProducerStamp, Record};
use tidelog_protocol::{batch, partitioner, Ack, Request};

use crate::admin::published;
use crate::connection::{Client, PendingReply};
use crate::error::{ClientError, Result};

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub ack: Ack,
    /// How long a record may wait for its batch to fill.
    pub linger: Duration,
    /// A batch is sent once its records reach this many bytes (values + keys + headers).
    pub batch_bytes_max: usize,
    /// Publish requests in flight at once before `send` blocks (back-pressure).
    pub max_in_flight: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            ack: Ack::Written,
            linger: Duration::from_millis(5),
            batch_bytes_max: 1 << 20,
            max_in_flight: 16,
        }
    }
}

/// The outcome of one record: its partition and offset (`None` offset with ack `none`).
#[derive(Debug, Clone)]
pub struct Receipt {
    cell: Arc<ReceiptCell>,
    pub partition: u32,
}

#[derive(Debug, Default)]
struct ReceiptCell {
    slot: Mutex<Option<Result<Option<u64>, String>>>,
    cond: Condvar,
}

impl Receipt {
    /// Blocks until the record's batch is acknowledged; returns its offset.
    pub fn wait(&self) -> Result<Option<u64>> {
        let mut slot = self.cell.slot.lock().unwrap_or_else(|p| p.into_inner());
        while slot.is_none() {
            slot = self.cell.cond.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
        match slot.as_ref() {
            Some(Ok(offset)) => Ok(*offset),
            Some(Err(e)) => Err(ClientError::Protocol(format!("publish failed: {e}"))),
            None => unreachable!("loop exits only when set"),
        }
    }

    fn resolve(&self, result: Result<Option<u64>, String>) {
        *self.cell.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        self.cell.cond.notify_all();
    }
}

#[derive(Default)]
struct Buffer {
    records: Vec<Record>,
    receipts: Vec<Receipt>,
    bytes: usize,
    since: Option<Instant>,
}

type Buffers = HashMap<(u32, Option<Vec<u8>>), Buffer>;

struct InFlight {
    pending: Option<PendingReply>,
    receipts: Vec<Receipt>,
}

#[derive(Default)]
struct Progress {
    dispatched: u64,
    completed: u64,
    first_error: Option<String>,
}

struct Inner {
    client: Client,
    topic: String,
    partitions: u32,
    config: ProducerConfig,
    /// Open batches by (partition, tenant), and the round-robin counter.
    buffers: Mutex<(Buffers, u32)>,
    in_flight: Mutex<Option<SyncSender<InFlight>>>,
    progress: Mutex<Progress>,
    progress_cond: Condvar,
    closed: AtomicBool,
}

/// See the module documentation.
pub struct Producer {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("topic", &self.inner.topic)
            .finish()
    }
}

impl Producer {
    pub fn new(client: &Client, topic: &str, config: ProducerConfig) -> Result<Producer> {
        let partitions = client.describe_topic(topic)?.partitions.len() as u32;
        let (tx, rx) = mpsc::sync_channel(config.max_in_flight.max(1));
        let inner = Arc::new(Inner {
            client: client.clone(),
            topic: topic.to_string(),
            partitions: partitions.max(1),
            config,
            buffers: Mutex::new((HashMap::new(), 0)),
            in_flight: Mutex::new(Some(tx)),
            progress: Mutex::new(Progress::default()),
            progress_cond: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let completer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("tidelog-producer-acks".into())
                .spawn(move || complete(&inner, rx))?
        };
        let linger = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("tidelog-producer-linger".into())
                .spawn(move || linger_loop(&inner))?
        };
        Ok(Producer {
            inner,
            threads: vec![completer, linger],
        })
    }

    pub fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    /// Queues a record; its partition follows the tenant, else the key, else round-robin.
    pub fn send(&self, record: Record) -> Result<Receipt> {
        if let Some(t) = &record.tenant {
            if t.is_empty() || t.len() > batch::TENANT_LEN_MAX {
                return Err(ClientError::InvalidArgument(format!(
                    "tenant of {} bytes (1..=255)",
                    t.len()
                )));
            }
        }
        let mut guard = self.inner.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let (buffers, rr) = &mut *guard;
        let partition = partitioner::partition_for(
            record.tenant.as_deref(),
            record.key.as_deref(),
            self.inner.partitions,
        )
        .unwrap_or_else(|| {
            *rr = rr.wrapping_add(1);
            *rr % self.inner.partitions
        });
        let receipt = Receipt {
            cell: Arc::default(),
            partition,
        };
        let size = record_size(&record);
        let key = (partition, record.tenant.clone());
        let buffer = buffers.entry(key.clone()).or_default();
        buffer.since.get_or_insert_with(Instant::now);
        buffer.records.push(record);
        buffer.receipts.push(receipt.clone());
        buffer.bytes += size;
        if buffer.bytes >= self.inner.config.batch_bytes_max {
            let full = buffers.remove(&key).unwrap_or_default();
            dispatch(&self.inner, partition, full)?;
        }
        Ok(receipt)
    }

    /// Sends every buffered record and waits until every request sent so far is
    /// acknowledged. Returns the first publish error since the last flush, if any.
    pub fn flush(&self) -> Result<()> {
        {
            let mut guard = self.inner.buffers.lock().unwrap_or_else(|p| p.into_inner());
            for ((partition, _), buffer) in guard.0.drain() {
                dispatch(&self.inner, partition, buffer)?;
            }
        }
        let mut progress = self
            .inner
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while progress.completed < progress.dispatched {
            progress = self
                .inner
                .progress_cond
                .wait(progress)
                .unwrap_or_else(|p| p.into_inner());
        }
        match progress.first_error.take() {
            Some(e) => Err(ClientError::Protocol(format!("publish failed: {e}"))),
            None => Ok(()),
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.flush();
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn record_size(r: &Record) -> usize {
    16 + r.key.as_ref().map_or(0, Vec::len)
        + r.value.as_ref().map_or(0, Vec::len)
        + r.headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum::<usize>()
}

/// Builds a batch from a buffer and sends it (called with the buffers lock held, so
/// batches of a partition leave in order).
fn dispatch(inner: &Inner, partition: u32, buffer: Buffer) -> Result<()> {
    if buffer.records.is_empty() {
        return Ok(());
    }
    let bytes = build_batch(&buffer.records, ProducerStamp::default());
    let pending = match inner.client.send(&Request::Publish {
        topic: &inner.topic,
        partition,
        ack: inner.config.ack,
        batches: &bytes,
    }) {
        Ok(p) => p,
        Err(e) => {
            for r in &buffer.receipts {
                r.resolve(Err(e.to_string()));
            }
            return Err(e);
        }
    };
    inner
        .progress
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .dispatched += 1;
    let sender = inner
        .in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match sender {
        // Blocks while `max_in_flight` requests are unacknowledged: back-pressure.
        Some(tx) => tx
            .send(InFlight {
                pending,
                receipts: buffer.receipts,
            })
            .map_err(|_| ClientError::Disconnected),
        None => Err(ClientError::Disconnected),
    }
}

/// Resolves receipts as publish responses arrive, in order.
fn complete(inner: &Inner, rx: Receiver<InFlight>) {
    for flight in rx {
        let outcome: Result<Option<u64>, String> = match flight.pending {
            None => Ok(None),
            Some(p) => match p.wait().and_then(published) {
                Ok(list) => list
                    .first()
                    .map(|b| Some(b.base_offset))
                    .ok_or_else(|| "empty publish response".to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        for (i, receipt) in flight.receipts.iter().enumerate() {
            receipt.resolve(outcome.clone().map(|base| base.map(|b| b + i as u64)));
        }
        let mut progress = inner.progress.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = outcome {
            progress.first_error.get_or_insert(e);
        }
        progress.completed += 1;
        inner.progress_cond.notify_all();
    }
}

/// Sends batches that have waited `linger`.
fn linger_loop(inner: &Inner) {
    let tick = (inner.config.linger / 2).max(Duration::from_millis(1));
    while !inner.closed.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        let mut guard = inner.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let due: Vec<_> = guard
            .0
            .iter()
            .filter(|(_, b)| b.since.is_some_and(|s| s.elapsed() >= inner.config.linger))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(buffer) = guard.0.remove(&key) {
                if dispatch(inner, key.0, buffer).is_err() {
                    return;
                }
            }
        }
    }
}
