//! The page cache budget: the log keeps at most `EngineConfig::page_cache_bytes` of its
//! segments in the kernel's page cache, by handing back the pages of the oldest sealed
//! segments ([`Segment::drop_cache`]) once the total is over it.
//!
//! Why a log should bound its own cache: appends write into the page cache, and a log
//! that keeps everything grows it into every free page of the machine. On a virtual
//! machine that returns free memory to its host (virtio-balloon free page reporting, as
//! on the project's machine) each of those pages is provided by the host again at its
//! first touch, and the append's copy into it is several times slower: a server keeping
//! what it was sent published 1.0–1.4 M records/s of 215 bytes, with a 1 GiB budget 4.9–12.2 M
//! (docs/BENCHMARKS.md, "A budget for the page cache"). Pages dropped here go back to the
//! kernel's free lists and serve the next appends while they are still the guest's own.
//! Elsewhere it keeps a log from pushing other programs' data out of memory.
//!
//! The cost: a consumer reading a dropped segment reads it from the disk (as after a
//! restart; the server's reader thread waits for those reads, not its event loop), which
//! made reading 1.5 GB back from the start with a 1 GiB budget 1.3 GB/s against 1.6–2.4
//! uncapped. So there is no budget by default (the kernel alone decides, as Kafka leaves
//! it): `--page-cache-bytes` sets one.
//!
//! Invariants:
//! - only sealed segments are dropped: synced, so their pages are clean and dropping them
//!   loses nothing; the active segment and those awaiting their seal (the tail readers
//!   follow) always keep theirs;
//! - the oldest go first across all partitions (the order this process sealed them;
//!   segments sealed before it opened the log first);
//! - a segment is dropped once, until a reader brings it back in (`Segment::warm`, the
//!   server's cold reads): from then on it counts again, as the youngest, so that a
//!   consumer catching up keeps the segment it is reading while older ones go.
//!
//! Runs on the flusher thread after its periodic syncs, never on an appending thread.

use std::sync::Arc;

use crate::error::Result;
use crate::partition::Partition;
use crate::segment::Segment;

/// What one [`trim`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    pub segments: usize,
    pub bytes: u64,
}

/// Drops the pages of the oldest sealed segments of `partitions` until what they keep
/// cached fits in `budget` bytes (`u64::MAX`: no budget).
pub(crate) fn trim(partitions: &[Arc<Partition>], budget: u64) -> Result<Trimmed> {
    if budget == u64::MAX {
        return Ok(Trimmed::default());
    }
    let mut hot = 0u64;
    let mut sealed: Vec<Arc<Segment>> = Vec::new();
    for p in partitions {
        let (hot_bytes, candidates) = p.cache_candidates();
        hot += hot_bytes;
        sealed.extend(candidates);
    }
    sealed.sort_by_key(|s| (s.cache_seq(), s.base_offset()));
    let sizes: Vec<u64> = sealed.iter().map(|s| u64::from(s.len())).collect();
    let mut trimmed = Trimmed::default();
    for seg in &sealed[..oldest_over(hot, &sizes, budget)] {
        if seg.drop_cache()? {
            trimmed.segments += 1;
            trimmed.bytes += u64::from(seg.len());
        }
    }
    Ok(trimmed)
}

/// How many of the sealed segments (`sizes`, oldest first) must give up their pages for
/// `hot` bytes plus the rest to fit in `budget`.
fn oldest_over(hot: u64, sizes: &[u64], budget: u64) -> usize {
    let mut cached = hot.saturating_add(sizes.iter().sum());
    let mut n = 0;
    while cached > budget && n < sizes.len() {
        cached -= sizes[n];
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::oldest_over;

    #[test]
    fn the_oldest_sealed_segments_go_until_the_rest_fits() {
        // Nothing to do under the budget, or exactly at it.
        assert_eq!(oldest_over(10, &[20, 30], 60), 0);
        assert_eq!(oldest_over(10, &[20, 30], 100), 0);
        // Over it by less than the oldest segment: that one goes.
        assert_eq!(oldest_over(10, &[20, 30], 59), 1);
        // Over it by more: oldest first, as many as it takes.
        assert_eq!(oldest_over(10, &[20, 30, 5], 14), 3);
        assert_eq!(oldest_over(10, &[20, 30, 5], 16), 2);
        // The hot segments alone over budget: every sealed one goes, they stay.
        assert_eq!(oldest_over(100, &[20, 30], 50), 2);
        assert_eq!(oldest_over(0, &[], 0), 0);
    }
}
