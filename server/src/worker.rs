//! Work taken off the event loop: state extractions' freezes, every extraction's reads
//! of the log, and TENANT_INFO (which must catch the tenant index up first).
//!
//! Freezing a tenant (`Partition::tenant_snapshot`: catch the index up, copy the tenant's
//! offsets under the index lock, sort them) costs time in proportion to its live keys —
//! about 35 ms for a million. Reading an extraction's next chunk reads records at random
//! from the log: a few ms per 256 KiB when the pages are cached, a disk read per page when
//! they are not. On the event loop either would stall every connection for as long, so one
//! worker thread does both: the loop hands it a [`Job`], keeps serving, and collects the
//! [`Done`] result on a later tick (the worker wakes it through the notices' waker).
//!
//! Invariants:
//! - A freeze's watermark is the one the snapshot fixed, on the worker: appends go on
//!   meanwhile, and the snapshot is still exactly the tenant's state at its watermark
//!   (the index is caught up to an offset and copied under its lock; see `extract.rs`).
//! - A result goes to the connection that asked only if that connection still waits for
//!   that job: a freeze's token must match `Connection::freezing`, a read's sequence
//!   number the extraction's `reading`. A connection closed meanwhile, or a new one that
//!   reuses its slot (and perhaps the extraction's id), never receives it.
//! - An extraction has at most one read out, and its reader (its position) travels with
//!   it: chunks come back in order.
//! - Jobs run one at a time, in order: a burst of extractions costs one core, not many.
//!
//! Two threads run this: `tidelog-worker` takes the extraction work, TENANT_INFO and
//! topic changes (create, delete, add partitions: file preallocation and syncs),
//! `tidelog-reader` the cold reads of fetches and subscriptions (`cold.rs`), so that a
//! consumer's wait for the disk never queues behind a freeze of a million keys, nor a
//! freeze behind a disk.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tidelog_engine::extract::Criteria;
use tidelog_engine::{
    ColdSpan, Engine, EngineError, Partition, TenantInfo, TenantSnapshot, TopicConfig,
};

use crate::extraction::{Reader, Step};
use crate::notices::Notices;

#[derive(Debug)]
pub enum Job {
    Freeze(FreezeJob),
    Read(ReadJob),
    Info(InfoJob),
    Warm(WarmJob),
    Topic(TopicJob),
}

/// A topic created, deleted or grown: files preallocated or unlinked and synced.
#[derive(Debug)]
pub struct TopicJob {
    pub conn: usize,
    /// The connection's serial: the answer goes to it only if the slot still holds it.
    pub serial: u64,
    pub correlation: u64,
    /// The request's kind, for its response.
    pub kind: u16,
    pub engine: Arc<Engine>,
    pub change: TopicChange,
}

#[derive(Debug)]
pub enum TopicChange {
    Create(String, TopicConfig),
    Delete(String),
    AddPartitions(String, u32),
}

#[derive(Debug)]
pub struct TopicDone {
    pub job: TopicJob,
    pub result: Result<(), EngineError>,
}

/// Pages a fetch or a subscription is about to read and found out of the page cache
/// (`cold.rs`): read them in, then tell the loop.
#[derive(Debug)]
pub struct WarmJob {
    pub conn: usize,
    /// Who waits: a parked fetch or a subscription of `conn`.
    pub waiter: Waiter,
    /// Matches the waiter's (a result for a closed connection or a reused id is dropped).
    pub seq: u64,
    pub span: ColdSpan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiter {
    Fetch,
    Subscription(u32),
    /// A queue group's partition, reading from `at`.
    Queue {
        group: String,
        partition: u32,
        at: u64,
    },
    /// A read-ahead: the read that found it due was made at once.
    Nobody,
}

/// Everything the EXTRACT needs again once its snapshot is frozen.
#[derive(Debug)]
pub struct FreezeJob {
    /// The connection's token and the extraction's id on it.
    pub conn: usize,
    pub extraction: u32,
    pub correlation: u64,
    /// The extraction's token (resume handle), reserved when the request came in.
    pub token: u64,
    pub partition: Arc<Partition>,
    pub tenant: Vec<u8>,
    pub criteria: Criteria,
}

/// The next chunk of an extraction: at most `max_bytes` (its credit allows that much).
#[derive(Debug)]
pub struct ReadJob {
    pub conn: usize,
    pub extraction: u32,
    /// Matches the extraction's `reading`.
    pub seq: u64,
    pub reader: Reader,
    pub max_bytes: u32,
}

/// A TENANT_INFO request: the index must be caught up first (normally a few thousand
/// updates, at worst the lag bound's 2 Mi: 0.1-0.2 s).
#[derive(Debug)]
pub struct InfoJob {
    pub conn: usize,
    /// The connection's serial: the answer goes to it only if the slot still holds it.
    pub serial: u64,
    pub correlation: u64,
    pub partition: Arc<Partition>,
    pub tenant: Vec<u8>,
}

#[derive(Debug)]
pub enum Done {
    Frozen(Frozen),
    Read(ReadDone),
    Info(InfoDone),
    Warmed(WarmJob),
    Topic(TopicDone),
}

#[derive(Debug)]
pub struct InfoDone {
    pub job: InfoJob,
    pub info: Option<TenantInfo>,
}

#[derive(Debug)]
pub struct Frozen {
    pub job: FreezeJob,
    pub snapshot: TenantSnapshot,
}

#[derive(Debug)]
pub struct ReadDone {
    pub conn: usize,
    pub extraction: u32,
    pub seq: u64,
    /// The reader, moved on past the chunk.
    pub reader: Reader,
    pub result: Result<Step, EngineError>,
}

#[derive(Debug)]
pub struct Worker {
    jobs: Option<Sender<Job>>,
    done: Arc<Mutex<Vec<Done>>>,
    /// Jobs handed over and not yet collected.
    in_flight: usize,
    /// The last read sequence number given out.
    last_seq: u64,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a worker thread called `name`, which waits `slow_disk` before each
    /// [`WarmJob`] and [`TopicJob`] (tests: a slow disk; zero otherwise).
    pub fn start(
        name: &str,
        notices: Arc<Notices>,
        slow_disk: Duration,
    ) -> std::io::Result<Worker> {
        let (tx, rx) = mpsc::channel::<Job>();
        let done = Arc::new(Mutex::new(Vec::new()));
        let results = done.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || work(&rx, &results, &notices, slow_disk))?;
        Ok(Worker {
            jobs: Some(tx),
            done,
            in_flight: 0,
            last_seq: 0,
            thread: Some(thread),
        })
    }

    /// A sequence number for a read, never given before.
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Hands a job to the worker; false if the worker is gone (it panicked).
    pub fn submit(&mut self, job: Job) -> bool {
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        self.in_flight += usize::from(sent);
        sent
    }

    /// Results ready to be collected.
    pub fn any_done(&self) -> bool {
        !lock(&self.done).is_empty()
    }

    /// Whether jobs are handed over and not yet collected.
    pub fn busy(&self) -> bool {
        self.in_flight > 0
    }

    pub fn take_done(&mut self) -> Vec<Done> {
        let done = std::mem::take(&mut *lock(&self.done));
        self.in_flight -= done.len();
        done
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the worker once it finishes its current job.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn work(jobs: &Receiver<Job>, done: &Mutex<Vec<Done>>, notices: &Notices, slow_disk: Duration) {
    while let Ok(job) = jobs.recv() {
        let result = match job {
            Job::Freeze(job) => {
                let snapshot = job.partition.tenant_snapshot(&job.tenant);
                Done::Frozen(Frozen { job, snapshot })
            }
            Job::Info(job) => {
                let info = job.partition.tenant_info(&job.tenant);
                Done::Info(InfoDone { job, info })
            }
            Job::Warm(job) => {
                if !slow_disk.is_zero() {
                    std::thread::sleep(slow_disk);
                }
                job.span.warm();
                Done::Warmed(job)
            }
            Job::Topic(job) => {
                if !slow_disk.is_zero() {
                    std::thread::sleep(slow_disk);
                }
                let result = match &job.change {
                    TopicChange::Create(name, config) => {
                        job.engine.create_topic(name, *config).map(drop)
                    }
                    TopicChange::Delete(name) => job.engine.delete_topic(name),
                    TopicChange::AddPartitions(name, n) => {
                        job.engine.add_partitions(name, *n).map(drop)
                    }
                };
                Done::Topic(TopicDone { job, result })
            }
            Job::Read(mut job) => {
                let result = job.reader.step(job.max_bytes);
                Done::Read(ReadDone {
                    conn: job.conn,
                    extraction: job.extraction,
                    seq: job.seq,
                    reader: job.reader,
                    result,
                })
            }
        };
        let was_empty = {
            let mut done = lock(done);
            let was_empty = done.is_empty();
            done.push(result);
            was_empty
        };
        // One wake-up per batch of results: the loop takes them all at once.
        if was_empty {
            notices.wake();
        }
    }
}
