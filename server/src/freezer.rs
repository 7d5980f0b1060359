//! State extractions' freezes, taken off the event loop.
//!
//! Freezing a tenant (`Partition::tenant_snapshot`: catch the index up, copy the tenant's
//! offsets under the index lock, sort them) costs time in proportion to its live keys —
//! about 35 ms for a million. On the event loop that would stall every connection for as
//! long, so one worker thread does it: the loop hands it a [`Job`], keeps serving, and
//! collects the [`Frozen`] result on a later tick (the worker wakes it through the
//! notices' waker), then answers the EXTRACT and starts streaming.
//!
//! Invariants:
//! - The watermark is the one the snapshot fixed, on the worker: appends go on meanwhile,
//!   and the snapshot is still exactly the tenant's state at its watermark (the index is
//!   caught up to an offset and copied under its lock; see `extract.rs`).
//! - A result goes to the connection that asked only if that connection still waits for
//!   that job (`Connection::freezing` holds the job's token): a connection closed meanwhile,
//!   or a new one that reuses its slot, never receives it.
//! - Jobs run one at a time, in order: a burst of extractions costs one core, not many.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tidelog_engine::extract::Criteria;
use tidelog_engine::{Partition, TenantSnapshot};

use crate::notices::Notices;

/// Everything the EXTRACT needs again once its snapshot is frozen.
#[derive(Debug)]
pub struct Job {
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

#[derive(Debug)]
pub struct Frozen {
    pub job: Job,
    pub snapshot: TenantSnapshot,
}

#[derive(Debug)]
pub struct Freezer {
    jobs: Option<Sender<Job>>,
    done: Arc<Mutex<Vec<Frozen>>>,
    /// Jobs handed over and not yet collected.
    in_flight: usize,
    worker: Option<JoinHandle<()>>,
}

impl Freezer {
    pub fn start(notices: Arc<Notices>) -> std::io::Result<Freezer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let done = Arc::new(Mutex::new(Vec::new()));
        let results = done.clone();
        let worker = std::thread::Builder::new()
            .name("tidelog-freezer".into())
            .spawn(move || work(&rx, &results, &notices))?;
        Ok(Freezer {
            jobs: Some(tx),
            done,
            in_flight: 0,
            worker: Some(worker),
        })
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

    pub fn take_done(&mut self) -> Vec<Frozen> {
        let done = std::mem::take(&mut *lock(&self.done));
        self.in_flight -= done.len();
        done
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        // Closing the channel ends the worker once it finishes its current job.
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn work(jobs: &Receiver<Job>, done: &Mutex<Vec<Frozen>>, notices: &Notices) {
    while let Ok(job) = jobs.recv() {
        let snapshot = job.partition.tenant_snapshot(&job.tenant);
        let was_empty = {
            let mut done = lock(done);
            let was_empty = done.is_empty();
            done.push(Frozen { job, snapshot });
            was_empty
        };
        // One wake-up per batch of results: the loop takes them all at once.
        if was_empty {
            notices.wake();
        }
    }
}
