//! Change notification: how the server learns that a partition's high watermark or
//! durable point advanced, without polling.
//!
//! Two mechanisms, for two kinds of waiter:
//! - a [`Watcher`] callback registered on the engine, called from the appending thread
//!   (new data) and from the flusher (durability). An event-loop server implements it
//!   with a `mio::Waker`; implementations must be cheap and must not call back into the
//!   engine.
//! - [`WaitPoint`], a condition variable for blocking callers (tests, simple consumers),
//!   which costs nothing while nobody waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// What changed in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Records up to `next_offset - 1` are readable.
    Appended { next_offset: u64 },
    /// Records up to `durable_offset - 1` are synced to disk.
    Durable { durable_offset: u64 },
    /// A sync failed; the partition refuses writes and durable waiters get an error.
    Poisoned,
}

pub trait Watcher: Send + Sync {
    fn on_change(&self, topic: &str, partition: u32, change: Change);
}

impl std::fmt::Debug for dyn Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

/// A condition variable that skips the lock and the wake-up when nobody waits.
#[derive(Debug, Default)]
pub struct WaitPoint {
    waiters: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
}

impl WaitPoint {
    /// Wakes every waiter. Call after making the new state visible.
    pub fn notify(&self) {
        // SeqCst pairs with the waiter's increment: either we see the waiter, or the
        // waiter's re-check sees the state we published before calling this.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            drop(self.lock.lock());
            self.cond.notify_all();
        }
    }

    /// Blocks until `ready()` is true or `deadline` passes; returns the last `ready()`.
    pub fn wait_until(&self, deadline: Instant, mut ready: impl FnMut() -> bool) -> bool {
        if ready() {
            return true;
        }
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            if ready() {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            guard = match self.cond.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }
}
