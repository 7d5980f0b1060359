//! The prefaulter thread: keeps the pages ahead of each active segment's write position
//! faulted in, so the appending thread's copy into the mapping never stops for a page
//! fault (on ext4 a first write to a page of a preallocated file costs about three times
//! the copy itself: readahead of the unwritten extent, zeroing, buffer heads).
//!
//! A segment asks once (`wants_prefault` flips its queued flag) and is re-queued by the
//! appender when the writer gets within the low-water mark again. If the prefaulter lags,
//! appends are still correct: the copy takes the faults itself.

use std::sync::Arc;

use crate::segment::Segment;
use crate::work_queue::WorkQueue;

#[derive(Debug, Default)]
pub(crate) struct Prefaulter {
    queue: WorkQueue<Arc<Segment>>,
}

impl Prefaulter {
    /// Queues `segment` if it wants prefaulting.
    pub(crate) fn poke(&self, segment: &Arc<Segment>) {
        if segment.wants_prefault() {
            self.queue.push(segment.clone());
        }
    }

    pub(crate) fn stop(&self) {
        self.queue.stop();
    }

    pub(crate) fn run(&self) {
        while let Some(segments) = self.queue.take() {
            for segment in segments {
                while !self.queue.is_stopping() && segment.prefault_step() {}
            }
        }
    }
}
