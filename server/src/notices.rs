//! The engine's change notifications, collected for the event loop.
//!
//! The engine calls [`Notices::on_change`] from whichever thread appended (usually the
//! event loop itself) or from its flusher. Changes are merged per partition into one set
//! and the loop is woken once per batch of changes through its `mio::Waker`: no polling
//! on a timer, and at most one wake-up syscall per loop iteration. A change made on the
//! loop's own thread (its appends) wakes nothing: the loop takes the notices before it
//! sleeps, and does not sleep while any are pending ([`Notices::any`]). That saves an
//! eventfd write and an extra trip through `epoll_wait` per publish.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;

use mio::Waker;
use tidelog_engine::{Change, Watcher};

/// (topic, partition)
pub type PartitionKey = (String, u32);

#[derive(Debug, Default)]
pub struct Pending {
    /// Partitions whose high watermark advanced.
    pub appended: HashSet<PartitionKey>,
    /// Partitions whose durable offset advanced, with the newest value.
    pub durable: HashMap<PartitionKey, u64>,
    /// Partitions that stopped accepting writes.
    pub poisoned: HashSet<PartitionKey>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.appended.is_empty() && self.durable.is_empty() && self.poisoned.is_empty()
    }
}

#[derive(Debug)]
pub struct Notices {
    pending: Mutex<Pending>,
    waker: Waker,
    /// The event loop's thread (set when it starts).
    loop_thread: OnceLock<ThreadId>,
}

impl Notices {
    pub fn new(waker: Waker) -> Notices {
        Notices {
            pending: Mutex::new(Pending::default()),
            waker,
            loop_thread: OnceLock::new(),
        }
    }

    /// Called by the event loop on its thread before it first polls.
    pub fn set_loop_thread(&self) {
        let _ = self.loop_thread.set(std::thread::current().id());
    }

    /// Whether changes are waiting to be taken.
    pub fn any(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Takes everything noticed since the last call.
    pub fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Wakes the loop (used by the signal thread too).
    pub fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "could not wake the event loop");
        }
    }
}

impl Watcher for Notices {
    fn on_change(&self, topic: &str, partition: u32, change: Change) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = pending.is_empty();
        let key = (topic.to_string(), partition);
        match change {
            Change::Appended { .. } => {
                pending.appended.insert(key);
            }
            Change::Durable { durable_offset } => {
                let slot = pending.durable.entry(key).or_insert(0);
                *slot = (*slot).max(durable_offset);
            }
            Change::Poisoned => {
                pending.poisoned.insert(key);
            }
        }
        drop(pending);
        let on_loop = self.loop_thread.get() == Some(&std::thread::current().id());
        if was_empty && !on_loop {
            self.wake();
        }
    }
}
