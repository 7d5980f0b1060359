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

#[derive(Debug)]
pub struct Extraction {
    pub partition: Arc<Partition>,
    /// The last offset the extraction covers (`None`: the partition was empty).
    pub watermark: Option<u64>,
    pub criteria: Criteria,
    pub credit_bytes: u64,
    pub records_sent: u64,
    pub source: Source,
    /// A chunk read but not yet sendable (over the remaining credit), with its cursor.
    pub pending: Option<(Vec<u8>, u64)>,
    /// Names the extraction for a resume.
    pub token: u64,
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
            partition: self.partition.clone(),
            watermark: self.watermark,
            criteria: self.criteria.clone(),
            credit_bytes,
            records_sent: 0,
            source,
            pending: None,
            token,
        }
    }
}

/// What one read step produced.
pub enum Step {
    Chunk(Vec<u8>, u64),
    Done,
}

impl Extraction {
    /// Reads the next chunk of about `max_bytes`.
    pub fn step(&mut self, max_bytes: u32) -> Result<Step, tidelog_engine::EngineError> {
        if let Some((bytes, cursor)) = self.pending.take() {
            return Ok(Step::Chunk(bytes, cursor));
        }
        match &mut self.source {
            Source::State { snapshot, cursor } => {
                if *cursor >= snapshot.len() {
                    return Ok(Step::Done);
                }
                let (bytes, next) = snapshot.read(*cursor, max_bytes as usize, &self.criteria)?;
                *cursor = next;
                Ok(Step::Chunk(bytes, next as u64))
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
                Ok(Step::Chunk(bytes, *next))
            }
        }
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
