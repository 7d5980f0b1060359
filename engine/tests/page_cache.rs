//! The page cache budget hands back the pages of the oldest sealed segments, across
//! partitions, and of no others; the data reads back intact from the files afterwards.

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use common::*;
use tidelog_engine::segment::Segment;
use tidelog_engine::{Engine, EngineConfig};

/// Fraction of `path`'s pages in the page cache (`mincore` over a fresh mapping, which
/// reports the file's cached pages without touching them).
fn resident(path: &Path) -> f64 {
    let file = std::fs::File::open(path).expect("open");
    let len = file.metadata().expect("stat").len() as usize;
    assert!(len > 0);
    // SAFETY: a read-only shared mapping of a file we hold open, unmapped below; its
    // pages are never read, only asked about.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(at, libc::MAP_FAILED, "mmap");
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let mut pages = vec![0u8; len.div_ceil(page)];
        assert_eq!(libc::mincore(at, len, pages.as_mut_ptr()), 0, "mincore");
        libc::munmap(at, len);
        pages.iter().filter(|&&p| p & 1 == 1).count() as f64 / pages.len() as f64
    }
}

/// An engine that trims only when the test says so (no periodic round), with a page
/// cache budget of `budget` bytes (`u64::MAX`: none).
fn config_with_budget(budget: u64) -> EngineConfig {
    EngineConfig {
        flush_interval: Duration::from_secs(3600),
        page_cache_bytes: budget,
        ..EngineConfig::default()
    }
}

/// Topic `name` of 64 KiB segments holding records 0..600 (150 batches of 4 values of
/// 1 000 bytes: ~10 segments), flushed, so all but the last are sealed.
fn filled_topic(engine: &Engine, name: &str) -> std::sync::Arc<tidelog_engine::Partition> {
    engine
        .create_topic(name, small_topic(64 << 10))
        .expect("create");
    let p = partition0(engine, name);
    for i in 0..150 {
        p.append(&batch_of(i * 4, 4, 1000)).expect("append");
    }
    p.flush().expect("seal");
    p
}

fn sealed(engine: &Engine, topic: &str) -> Vec<std::sync::Arc<Segment>> {
    let segs = partition0(engine, topic).segments();
    segs[..segs.len() - 1].to_vec()
}

#[test]
fn the_budget_drops_the_oldest_sealed_segments_and_the_data_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    const BUDGET: u64 = 256 << 10;
    let engine = Engine::open(dir.path(), config_with_budget(BUDGET)).expect("open");
    // "a" written (and sealed) first, so all of its sealed segments are older than b's.
    let a = filled_topic(&engine, "a");
    let b = filled_topic(&engine, "b");
    let (sealed_a, sealed_b) = (sealed(&engine, "a"), sealed(&engine, "b"));
    assert!(sealed_a.len() >= 5 && sealed_b.len() >= 5);
    // A reader holding a slice of the oldest segment across the trim.
    let held = a.read(0, 1 << 20).expect("read");
    let held_copy = held.to_vec();
    // Everything just written is in the page cache: what the check below tells apart.
    assert!(
        resident(sealed_a[0].path()) > 0.9,
        "written pages are cached"
    );

    let trimmed = engine.trim_page_cache().expect("trim");

    // Just enough of the oldest went for the rest to fit.
    let segs_a = a.segments();
    let segs_b = b.segments();
    let all_sealed: Vec<_> = sealed_a.iter().chain(sealed_b.iter()).collect();
    let hot = u64::from(segs_a[segs_a.len() - 1].len()) + u64::from(segs_b[segs_b.len() - 1].len());
    let kept: u64 = all_sealed
        .iter()
        .filter(|s| !s.cache_dropped())
        .map(|s| u64::from(s.len()))
        .sum();
    assert!(hot + kept <= BUDGET, "what stays fits the budget");
    let first_kept = all_sealed
        .iter()
        .position(|s| !s.cache_dropped())
        .expect("some sealed segment fits");
    assert_eq!(trimmed.segments, first_kept);
    assert!(
        all_sealed[first_kept..].iter().all(|s| !s.cache_dropped()),
        "oldest first, across partitions: {first_kept} dropped, then none"
    );
    assert!(
        hot + kept + u64::from(all_sealed[first_kept - 1].len()) > BUDGET,
        "no more than needed went"
    );
    for s in &all_sealed[..first_kept] {
        let r = resident(s.path());
        assert!(
            r < 0.1,
            "{} still {:.0} % cached",
            s.path().display(),
            r * 100.0
        );
    }
    for s in &all_sealed[first_kept..] {
        assert!(
            resident(s.path()) > 0.9,
            "a segment within the budget keeps its pages"
        );
    }
    // A second trim has nothing left to do.
    assert_eq!(engine.trim_page_cache().expect("trim").segments, 0);

    // Every record comes back, in order, from the files.
    let expected: Vec<(u64, u64)> = (0..600).map(|n| (n, n)).collect();
    assert_eq!(read_all(&a), expected);
    assert_eq!(read_all(&b), expected);
    assert_eq!(
        &held[..],
        &held_copy[..],
        "a held slice reads the same bytes"
    );
    drop(held);
    engine.close().expect("close");
}

#[test]
fn without_a_budget_nothing_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), config_with_budget(u64::MAX)).expect("open");
    filled_topic(&engine, "a");
    assert_eq!(engine.trim_page_cache().expect("trim").segments, 0);
    assert!(sealed(&engine, "a").iter().all(|s| !s.cache_dropped()));
    engine.close().expect("close");
}

/// Drops a segment's clean pages from this process's mapping and the page cache, as
/// memory pressure would.
fn reclaim(segment: &Segment) {
    if let Some(bytes) = segment.bytes(0, segment.len()).filter(|b| !b.is_empty()) {
        let page = 4096;
        let start = bytes.as_ptr() as usize & !(page - 1);
        let len = bytes.as_ptr() as usize + bytes.len() - start;
        // SAFETY: whole pages of the segment's shared, read-only file mapping: DONTNEED
        // unmaps them, and the next read maps the same bytes from the file again.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        assert_eq!(rc, 0, "madvise");
    }
    let file = std::fs::File::open(segment.path()).expect("open");
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "fadvise");
}

#[test]
fn a_read_of_dropped_pages_is_found_cold_warmed_and_counted_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    const BUDGET: u64 = 256 << 10;
    let config = config_with_budget(BUDGET);
    let engine = Engine::open(dir.path(), config.clone()).expect("open");
    let a = filled_topic(&engine, "a");
    let last = a.next_offset() - 1;
    // All of it was just written: nothing is cold.
    assert!(
        a.cold_span(0, 64 << 10).is_none(),
        "written pages are cached"
    );
    assert!(a.cold_span(last, 64 << 10).is_none(), "the tail is cached");

    let trimmed = engine.trim_page_cache().expect("trim");
    assert!(trimmed.segments >= 2);
    let segs = sealed(&engine, "a");
    assert!(segs[0].cache_dropped());
    let span = a
        .cold_span(0, 64 << 10)
        .expect("the oldest segment's pages were dropped");
    assert!(!span.is_empty());
    assert!(
        a.cold_span(last, 64 << 10).is_none(),
        "the tail keeps its pages"
    );

    span.warm();
    assert!(resident(segs[0].path()) > 0.9, "warmed into the page cache");
    assert!(a.cold_span(0, 64 << 10).is_none(), "and no longer cold");
    // Read back in, the segment counts against the budget again, as the youngest: the
    // next trim hands back older ones first and keeps the one being read.
    assert!(!segs[0].cache_dropped());
    assert!(segs[1..]
        .iter()
        .all(|s| s.cache_seq() < segs[0].cache_seq()));
    let trimmed = engine.trim_page_cache().expect("trim");
    assert!(trimmed.segments >= 1, "over the budget again");
    assert!(!segs[0].cache_dropped(), "the segment just read stays");
    assert!(resident(segs[0].path()) > 0.9);
    let expected: Vec<(u64, u64)> = (0..600).map(|n| (n, n)).collect();
    assert_eq!(read_all(&a), expected);
    drop((a, segs, span));
    engine.close().expect("close");

    // After a restart every segment was read from disk by someone else: its pages may be
    // anywhere, so readers ask.
    let engine = Engine::open(dir.path(), config).expect("reopen");
    let a = partition0(&engine, "a");
    // As memory pressure would (the open's own reads brought them in, and its reads ahead
    // may still be landing).
    for _ in 0..100 {
        a.segments().iter().for_each(|s| reclaim(s));
        if a.segments().iter().all(|s| resident(s.path()) < 0.1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let active_base = a.segments().last().expect("active").base_offset();
    assert!(a.cold_span(0, 64 << 10).is_some(), "evicted");
    assert!(
        a.cold_span(active_base, 4 << 10).is_some(),
        "the reopened active segment was not written by this process"
    );
    assert_eq!(read_all(&a), expected);
    engine.close().expect("close");
}

/// Waits (up to 10 s) until `f` holds: the kernel's reads asked for without waiting land
/// when they land.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A reader going through a cold segment in order: its first read must wait for the
/// span, which brings the read-ahead past it in too; reads within the read-ahead find
/// nothing to do; the read whose marker (half a read-ahead on) is missing asks for more
/// without waiting itself.
#[test]
fn warming_reads_ahead_and_the_marker_asks_for_more_in_time() {
    use tidelog_engine::segment::WARM_AHEAD_BYTES;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), config_with_budget(u64::MAX)).expect("open");
    let topic = tidelog_engine::TopicConfig {
        partitions: 1,
        segment_bytes: 64 << 20,
        ..tidelog_engine::TopicConfig::default()
    };
    engine.create_topic("a", topic).expect("create");
    let a = partition0(&engine, "a");
    // 24 MiB: 1 536 batches of 16 records of 1 000 bytes (~16 KiB each).
    for i in 0..1536 {
        a.append(&batch_of(i * 16, 16, 1000)).expect("append");
    }
    engine.close().expect("close");
    let engine = Engine::open(dir.path(), EngineConfig::default()).expect("reopen");
    let a = partition0(&engine, "a");
    let seg = a.segments()[0].clone();
    for _ in 0..100 {
        reclaim(&seg);
        if resident(seg.path()) < 0.01 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    const MIB: u32 = 1 << 20;
    let offset_near = |position: u32| {
        // Records are ~16.4 KiB a batch of 16: the first offset of the batch near there.
        u64::from(position / 16_400) * 16
    };

    // Cold: the first read must wait.
    let first = a.cold_span(0, MIB).expect("cold");
    assert!(first.must_wait());
    first.warm();
    assert!(seg.resident(0, MIB), "the span is in once warm returns");
    // All of it: the reads land in whatever order the disk completes them.
    eventually("the read-ahead past the span lands", || {
        seg.resident(MIB, MIB + WARM_AHEAD_BYTES)
    });

    // Inside the read-ahead, with the marker there too: nothing to do.
    assert!(a.cold_span(offset_near(2 * MIB), MIB).is_none());

    // Further on the marker (half a read-ahead past the span) is missing: more is asked
    // for, and this read itself need not wait.
    let on = a
        .cold_span(offset_near(5 * MIB), MIB)
        .expect("the marker is missing");
    assert!(!on.must_wait(), "its own pages are in");
    on.warm();
    eventually("the next read-ahead lands", || {
        seg.resident(6 * MIB, 12 * MIB)
    });
    assert_eq!(read_all(&a).len(), 1536 * 16);
    engine.close().expect("close");
}
