//! The prefaulter thread: keeps the pages ahead of each active segment's write position
//! faulted in, so the appending thread's copy into the mapping never stops for a page
//! fault (on ext4 a first write to a page of a preallocated file costs about three times
//! the copy itself: readahead of the unwritten extent, zeroing, buffer heads).
//!
//! A segment asks once (`wants_prefault` flips its queued flag) and is re-queued by the
//! appender when the writer gets within the low-water mark again. If the prefaulter lags,
//! appends are still correct: the copy takes the faults itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::segment::Segment;

#[derive(Debug, Default)]
pub(crate) struct Prefaulter {
    queue: Mutex<VecDeque<Arc<Segment>>>,
    cond: Condvar,
    stop: AtomicBool,
}

impl Prefaulter {
    /// Queues `segment` if it wants prefaulting.
    pub(crate) fn poke(&self, segment: &Arc<Segment>) {
        if segment.wants_prefault() {
            self.queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(segment.clone());
            self.cond.notify_one();
        }
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.queue.lock());
        self.cond.notify_all();
    }

    pub(crate) fn run(&self) {
        loop {
            let segment = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if self.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(s) = queue.pop_front() {
                        break s;
                    }
                    queue = self.cond.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
            };
            while !self.stop.load(Ordering::Relaxed) {
                if !segment.prefault_step() {
                    break;
                }
            }
        }
    }
}
