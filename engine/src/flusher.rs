//! The flusher thread: group commit, periodic sync, retention.
//!
//! Group commit: a durable append asks for a flush of its partition and waits. The
//! flusher takes every pending request at once, syncs each requested partition once
//! (one `fdatasync` covering every batch appended so far), then publishes the new durable
//! offset, which releases every waiter at or below it. Requests that arrive while a
//! sync runs are served together by the next round, so N concurrent durable producers
//! cost about one sync per round, not N.
//!
//! Periodically (`flush_interval`) it also syncs every partition with unsynced data, so
//! dirty pages never pile up into multi-second write-back stalls, then keeps the log's
//! page cache within its budget (`page_cache.rs`), and applies retention every
//! `retention_check_interval`, and compaction (topics with cleanup `compact`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::engine::EngineInner;
use crate::partition::Partition;

#[derive(Debug, Default)]
pub(crate) struct FlushQueue {
    pending: Mutex<Vec<Arc<Partition>>>,
    cond: Condvar,
    pub(crate) stop: AtomicBool,
    /// Syncs performed (group commits and periodic), for benchmarks and tests.
    pub(crate) syncs: AtomicU64,
}

impl FlushQueue {
    pub(crate) fn request(&self, partition: &Arc<Partition>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.iter().any(|p| Arc::ptr_eq(p, partition)) {
            pending.push(partition.clone());
        }
        drop(pending);
        self.cond.notify_one();
    }

    pub(crate) fn wake_to_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.pending.lock());
        self.cond.notify_all();
    }

    fn take(&self, timeout: Duration) -> Vec<Arc<Partition>> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.is_empty() && !self.stop.load(Ordering::SeqCst) {
            pending = match self.cond.wait_timeout(pending, timeout) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        std::mem::take(&mut *pending)
    }
}

pub(crate) fn run(
    engine: Weak<EngineInner>,
    queue: Arc<FlushQueue>,
    flush_interval: Duration,
    retention_interval: Duration,
    page_cache_bytes: u64,
) {
    let mut next_periodic = Instant::now() + flush_interval;
    let mut next_retention = Instant::now() + retention_interval;
    loop {
        let wait = next_periodic
            .min(next_retention)
            .saturating_duration_since(Instant::now());
        let requested = queue.take(wait);
        for p in &requested {
            if p.flush().is_ok() {
                queue.syncs.fetch_add(1, Ordering::Relaxed);
            }
        }
        if queue.stop.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        if now >= next_periodic || now >= next_retention {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let partitions = engine.all_partitions();
            if now >= next_periodic {
                for p in partitions
                    .iter()
                    .filter(|p| p.is_dirty() && !p.is_poisoned())
                {
                    if p.flush().is_ok() {
                        queue.syncs.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Right after the syncs: segments they sealed are clean and may go.
                if let Err(e) = crate::page_cache::trim(&partitions, page_cache_bytes) {
                    tracing::warn!(error = %e, "page cache trim failed");
                }
                next_periodic = now + flush_interval;
            }
            if now >= next_retention {
                let now_ms = crate::fsio::now_ms();
                for p in partitions.iter() {
                    if let Err(e) = p.apply_retention(now_ms) {
                        tracing::warn!(topic = p.topic(), partition = p.id(), error = %e, "retention failed");
                    }
                    if let Err(e) = p.compact(now_ms) {
                        tracing::warn!(topic = p.topic(), partition = p.id(), error = %e, "compaction failed");
                    }
                }
                next_retention = now + retention_interval;
            }
        }
    }
}
