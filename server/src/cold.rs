//! Cold reads: a fetch, a subscription or a queue group's delivery about to read pages
//! that are not in the page cache has them read in on the reader thread first, so the
//! event loop does not wait for the disk.
//!
//! A read on the loop that faults a page in from the disk (walking batch headers in the
//! mapping, or `sendfile` from the file) stalls every connection for that long: a
//! consumer catching up on data older than the page cache holds (after a restart, past
//! the page cache budget, or under memory pressure) would delay every publish and every
//! live subscriber behind it. So before reading a segment that may be cold
//! (`Segment::may_be_cold`: anything but the tail this process has just written), the
//! loop asks the kernel which pages it holds (`Partition::cold_span`, `mincore`); if some
//! are missing, the reader thread reads them in (`ColdSpan::warm`) while the loop goes
//! on, and the read is made once they are there. The reader also reads ahead of each
//! such read (8 MiB), and is asked to read further ahead, with no one waiting, when a
//! read finds its own pages cached but not those half that far past it: a consumer
//! catching up in order is served from the page cache while the disk works ahead of it,
//! as the kernel's read-ahead would do for reads it saw coming.
//!
//! Invariants:
//! - The answer is the same as without this: a parked fetch is answered exactly as if it
//!   had just arrived (data, a long poll, or an error), a subscription resumes where it
//!   stood, a queue group's partition is skipped by deliveries until its pages are in
//!   (its parked polls are looked at again then). Only when it is answered changes.
//! - A read is sent to the reader at most once: once warmed, it is made even if the kernel
//!   has dropped some pages again meanwhile (memory pressure could otherwise send it
//!   round forever).
//! - A result goes only to the fetch or subscription that waits for exactly that job (its
//!   sequence number): a connection closed meanwhile drops its parked fetches, and a
//!   subscription id reused on a reused slot waits for no job or another one. A queue
//!   group's partition has at most one read out (`SharePartition::warming`).
//! - Without a reader thread (it stopped), reads happen on the loop, as before.

use std::sync::Arc;

use tidelog_engine::Partition;

use crate::groups::queue::SharePartition;
use crate::worker::{Job, Waiter, WarmJob, Worker};

/// Sends the read of `max_bytes` from `from` to the reader if it would find pages out of
/// the page cache. Returns the job's sequence number, or `None` when the read can be
/// made now — perhaps with the reader asked to read ahead of it, without anyone waiting.
pub fn to_reader(
    reader: &mut Worker,
    conn: usize,
    waiter: impl FnOnce() -> Waiter,
    partition: &Arc<Partition>,
    from: u64,
    max_bytes: u32,
) -> Option<u64> {
    let span = partition.cold_span(from, max_bytes)?;
    let must_wait = span.must_wait();
    let seq = reader.next_seq();
    let job = Job::Warm(WarmJob {
        conn,
        waiter: if must_wait { waiter() } else { Waiter::Nobody },
        seq,
        span,
    });
    (reader.submit(job) && must_wait).then_some(seq)
}

/// Whether queue group `group`'s partition `partition` (window `sp`) must wait for the
/// reader before reading from `at`: yes while a read of its is out, or when the read
/// would find pages out of the page cache (then one is sent). A position once warmed is
/// read without asking again.
pub fn queue_waits(
    reader: &mut Worker,
    group: &str,
    partition: &Arc<Partition>,
    sp: &mut SharePartition,
    at: u64,
) -> bool {
    if sp.warming {
        return true;
    }
    if sp.warmed_at == Some(at) {
        return false;
    }
    let waiter = || Waiter::Queue {
        group: group.to_string(),
        partition: partition.id(),
        at,
    };
    let step = crate::groups::queue_io::READ_STEP_BYTES;
    sp.warming = to_reader(reader, 0, waiter, partition, at, step).is_some();
    sp.warming
}
