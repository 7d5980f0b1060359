//! The indexer thread: the tenant/key index's work that must not run on an appending
//! thread.
//!
//! The appender notes what each tenant record changes (key hash, offset in its batch,
//! tombstone: 16 bytes, noted in the batch's validation walk while its bytes are in the
//! cache, queued with the batch's base offset) and, every `partition::INDEX_APPLY_AT`
//! queued updates, applies the queue itself in one round. It wakes this thread
//! ([`Indexer::poke`]) instead when that round would double a large key table (tens of ms
//! for millions of keys), when the index lock is taken (someone is catching up: these
//! updates wait for the next round), and for every checkpoint owed since a segment roll,
//! which only this thread encodes and writes. (Until the eleventh session this thread did
//! every round; on two cores shared with the event loop and the producer, waking it cost
//! more than the rounds it took off the loop: docs/BENCHMARKS.md.)
//!
//! Invariants (the index's side is in `Partition::index_up_to`):
//! - the index reflects exactly the offsets below its `next_offset`, every one of them:
//!   batches are applied whole and in order, by whoever holds the partition's index lock;
//! - whoever needs the index current — an extraction fixing its watermark, tenant info,
//!   compaction, retention, close — catches it up itself under that lock, so nobody waits
//!   on this thread and nobody reads an index missing an acknowledged record;
//! - the lag is bounded (`config::IndexLag`): an appender that finds more than `soft`
//!   updates queued applies them itself unless this thread is at it, and past `hard` it
//!   waits for the index whatever it is doing — the back-pressure when this thread cannot
//!   keep up.
//!
//! A partition is queued at most once (its `index_queued` flag), so a busy partition costs
//! one wake-up per round of this thread, not one per append.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use crate::partition::Partition;
use crate::work_queue::WorkQueue;

#[derive(Debug, Default)]
pub(crate) struct Indexer {
    queue: WorkQueue<Weak<Partition>>,
}

impl Indexer {
    /// Queues `partition` unless it is queued already (`queued` is its flag).
    pub(crate) fn poke(&self, partition: &Weak<Partition>, queued: &AtomicBool) {
        if queued.load(Ordering::Relaxed) || queued.swap(true, Ordering::AcqRel) {
            return;
        }
        self.queue.push(partition.clone());
    }

    pub(crate) fn stop(&self) {
        self.queue.stop();
    }

    pub(crate) fn run(&self) {
        while let Some(partitions) = self.queue.take() {
            for partition in partitions.iter().filter_map(Weak::upgrade) {
                partition.index_in_background();
            }
        }
    }
}

/// Keeps the indexer thread's handle with the engine's services.
pub(crate) type IndexerHandle = Arc<Indexer>;
