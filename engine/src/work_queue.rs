//! A queue feeding one background thread (the indexer): producers push
//! and wake it; it takes everything queued at once, or learns that it must stop.
//!
//! Invariant: once `stop` is called, `take` returns `None` (after at most the round in
//! progress), whatever is still queued.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

#[derive(Debug)]
pub(crate) struct WorkQueue<T> {
    items: Mutex<Vec<T>>,
    cond: Condvar,
    stop: AtomicBool,
}

impl<T> Default for WorkQueue<T> {
    fn default() -> Self {
        WorkQueue {
            items: Mutex::new(Vec::new()),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
        }
    }
}

impl<T> WorkQueue<T> {
    pub(crate) fn push(&self, item: T) {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(item);
        self.cond.notify_one();
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Taking the lock orders the flag before a waiter's next check.
        drop(self.items.lock());
        self.cond.notify_all();
    }

    /// Blocks until something is queued (all of it is returned, oldest first) or the
    /// queue is stopped (`None`).
    pub(crate) fn take(&self) -> Option<Vec<T>> {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            if !items.is_empty() {
                return Some(std::mem::take(&mut *items));
            }
            items = self.cond.wait(items).unwrap_or_else(|p| p.into_inner());
        }
    }
}
