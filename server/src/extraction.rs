//! An extraction in progress on a connection: a tenant's state frozen at a watermark, or
//! its history up to the watermark, streamed as EXTRACT_DATA pushes under credit and
//! closed by EXTRACT_END. The client then subscribes from watermark + 1.

use std::sync::Arc;

use tidelog_engine::extract::{history_step, Criteria};
use tidelog_engine::segment::Segment;
use tidelog_engine::{Partition, TenantSnapshot};
use tidelog_protocol::batch;

#[derive(Debug)]
pub enum Source {
    /// The frozen snapshot and the position (index into it) of the next record to send.
    State {
        snapshot: TenantSnapshot,
        cursor: usize,
    },
    /// The next offset to scan; the scan ends after the watermark. Reads go to the
    /// segments of the extraction's start (pinned: retention and compaction cannot take
    /// records from under it).
    History {
        tenant: Vec<u8>,
        next: u64,
        segments: Arc<Vec<Arc<Segment>>>,
    },
}

/// An extraction's reading side: where it is in its source, and what it needs to read
/// on. It travels to the worker thread for each read (`worker.rs`) and comes back with
/// the chunk, so the event loop never reads the log for an extraction itself.
#[derive(Debug)]
pub struct Reader {
    pub partition: Arc<Partition>,
    /// The last offset the extraction covers (`None`: the partition was empty).
    pub watermark: Option<u64>,
    pub criteria: Criteria,
    pub source: Source,
}

/// A chunk read and not yet sent: its bytes (whole batches), the cursor after it (what
/// a resume starts from) and how many records it holds.
#[derive(Debug)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub cursor: u64,
    pub records: u64,
}

#[derive(Debug)]
pub struct Extraction {
    /// The last offset the extraction covers (`None`: the partition was empty).
    pub watermark: Option<u64>,
    pub credit_bytes: u64,
    pub records_sent: u64,
    /// At home while no read is out; `None` while the worker reads with it.
    pub reader: Option<Reader>,
    /// The read out on the worker (its sequence number: a result is this extraction's
    /// only if it matches).
    pub reading: Option<u64>,
    /// Chunks read and not yet sent, in order (a chunk waits here for credit).
    pub ready: std::collections::VecDeque<Chunk>,
    /// The source is exhausted (`Ok`) or failed: sent once `ready` is empty.
    pub end: Option<Result<(), tidelog_engine::EngineError>>,
    /// Names the extraction for a resume.
    pub token: u64,
}

impl Extraction {
    /// Bytes read and not yet sent (a chunk or two).
    pub fn ready_bytes(&self) -> u64 {
        self.ready.iter().map(|c| c.bytes.len() as u64).sum()
    }

    /// Takes in what the worker read: the reader comes home, the chunk joins the queue.
    pub fn read_done(&mut self, reader: Reader, result: Result<Step, tidelog_engine::EngineError>) {
        self.reading = None;
        self.reader = Some(reader);
        match result {
            Ok(Step::Chunk(chunk)) => {
                // An empty chunk (a history scan that found nothing in its budget) just
                // moved the cursor on.
                if !chunk.bytes.is_empty() {
                    self.ready.push_back(chunk);
                }
            }
            Ok(Step::Done) => self.end = Some(Ok(())),
            Err(e) => self.end = Some(Err(e)),
        }
    }
}

/// What is kept so an extraction can be resumed from a cursor by a later request.
#[derive(Debug)]
pub struct Resumable {
    pub partition: Arc<Partition>,
    pub watermark: Option<u64>,
    pub criteria: Criteria,
    pub spec: ResumeSpec,
    pub expires: std::time::Instant,
}

#[derive(Debug, Clone)]
pub enum ResumeSpec {
    /// The frozen snapshot itself (cheap to clone: shared offsets and pinned segments).
    State(TenantSnapshot),
    /// The tenant and the segments of the start (pinned).
    History(Vec<u8>, Arc<Vec<Arc<Segment>>>),
}

impl Resumable {
    /// A fresh extraction positioned at `cursor` (state: records already received;
    /// history: the next offset to scan).
    pub fn at(&self, cursor: u64, credit_bytes: u64, token: u64) -> Extraction {
        let source = match &self.spec {
            ResumeSpec::State(snapshot) => Source::State {
                snapshot: snapshot.clone(),
                cursor: usize::try_from(cursor)
                    .unwrap_or(usize::MAX)
                    .min(snapshot.len()),
            },
            ResumeSpec::History(tenant, segments) => Source::History {
                tenant: tenant.clone(),
                next: cursor,
                segments: segments.clone(),
            },
        };
        Extraction {
            watermark: self.watermark,
            credit_bytes,
            records_sent: 0,
            reader: Some(Reader {
                partition: self.partition.clone(),
                watermark: self.watermark,
                criteria: self.criteria.clone(),
                source,
            }),
            reading: None,
            ready: std::collections::VecDeque::new(),
            end: None,
            token,
        }
    }
}

/// What one read step produced.
#[derive(Debug)]
pub enum Step {
    Chunk(Chunk),
    Done,
}

impl Reader {
    /// Reads the next chunk of about `max_bytes` (at least one batch when any is left).
    pub fn step(&mut self, max_bytes: u32) -> Result<Step, tidelog_engine::EngineError> {
        let (bytes, cursor) = match &mut self.source {
            Source::State { snapshot, cursor } => {
                if *cursor >= snapshot.len() {
                    return Ok(Step::Done);
                }
                let (bytes, next) = snapshot.read(*cursor, max_bytes as usize, &self.criteria)?;
                *cursor = next;
                (bytes, next as u64)
            }
            Source::History {
                tenant,
                next,
                segments,
            } => {
                let Some(upto) = self.watermark.filter(|w| *next <= *w) else {
                    return Ok(Step::Done);
                };
                let (bytes, after) = history_step(
                    &self.partition,
                    segments,
                    tenant,
                    &self.criteria,
                    *next,
                    upto,
                    max_bytes,
                )?;
                *next = if after > *next { after } else { upto + 1 };
                (bytes, *next)
            }
        };
        let records = count_records(&bytes);
        Ok(Step::Chunk(Chunk {
            bytes,
            cursor,
            records,
        }))
    }
}

/// Records in a run of whole batches (from their headers).
pub fn count_records(bytes: &[u8]) -> u64 {
    let mut pos = 0;
    let mut n = 0;
    while let Some(h) = bytes.get(pos..).and_then(batch::BatchHeader::parse) {
        if h.batch_len == 0 {
            break;
        }
        n += u64::from(h.record_count);
        pos += h.batch_len as usize;
    }
    n
}
