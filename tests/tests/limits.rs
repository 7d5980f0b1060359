//! Explicit limits: a connection over `connections_max` is refused with
//! `ServerOverloaded` and the connections inside the limit keep working; an idle
//! connection is closed after `idle_timeout_secs`; past `--page-cache-bytes` the oldest
//! sealed segments leave the page cache and their records still read, from the disk on
//! the reader thread while everyone else is served.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use tidelog_e2e::Server;

#[test]
fn connections_over_the_limit_are_refused_with_an_error() {
    let server = Server::start_with(&["--connections-max", "2"]);
    let a = server.client();
    let b = server.client();
    let mut third = TcpStream::connect(server.addr).expect("tcp connect succeeds");
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut bytes = Vec::new();
    third.read_to_end(&mut bytes).expect("the server closes it");
    assert!(bytes.len() >= 18, "an error frame before the close");
    assert_eq!(bytes[7], 0x03, "RESPONSE|ERROR");
    assert_eq!(
        u16::from_le_bytes([bytes[16], bytes[17]]),
        50,
        "ServerOverloaded"
    );
    a.ping().expect("first connection still served");
    b.ping().expect("second connection still served");
    drop(a);
    // A slot frees up once a client leaves.
    let mut retry = None;
    for _ in 0..250 {
        if let Ok(c) = tidelog_client::Client::connect(server.addr, Default::default()) {
            retry = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    retry
        .expect("a connection is accepted again")
        .ping()
        .expect("ping");
    server.stop();
}

#[test]
fn idle_connections_are_closed() {
    let server = Server::start_with(&["--idle-timeout-secs", "1"]);
    let mut idle = TcpStream::connect(server.addr).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut bytes = Vec::new();
    let n = idle
        .read_to_end(&mut bytes)
        .expect("closed by the server, not timed out here");
    assert_eq!(n, 0);
    server.stop();
}

/// Fraction of `path`'s pages in the page cache (`mincore` over a fresh mapping that is
/// never read).
fn cached_fraction(path: &std::path::Path) -> f64 {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open segment");
    let len = file.metadata().expect("stat").len() as usize;
    // SAFETY: a read-only shared mapping of a file held open, unmapped below; its pages
    // are only asked about.
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

/// The value of record `i` of [`old_records_out_of_the_cache`]'s log.
fn value_of(i: u64) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.resize(1000, (i % 251) as u8);
    v
}

/// Publishes 1 200 records of 1 000 bytes to topic `t` (64 KiB segments) of a server with
/// a 256 KiB page cache budget, and waits until the oldest segment has left the page
/// cache.
fn old_records_out_of_the_cache(server: &Server) {
    use tidelog_client::{Record, TopicSettings};
    let client = server.client();
    client
        .create_topic(
            "t",
            TopicSettings {
                partitions: 1,
                segment_bytes: 64 << 10,
                ..TopicSettings::default()
            },
        )
        .expect("create");
    for b in 0..300u64 {
        let records: Vec<Record> = (b * 4..b * 4 + 4)
            .map(|i| Record {
                value: Some(value_of(i)),
                ..Record::default()
            })
            .collect();
        tidelog_e2e::publish_batch(&client, "t", 0, &records);
    }
    // The oldest segment, written first: cached right after the write, handed back once
    // the flusher has sealed it and found the log over budget.
    let oldest = server.data_dir.join("topics/t/0/00000000000000000000.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cached = cached_fraction(&oldest);
        if cached < 0.1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the oldest segment is still {:.0} % cached after 30 s",
            cached * 100.0
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_page_cache_budget_hands_back_old_segments_and_their_records_still_read() {
    use tidelog_client::StartAt;
    let server = Server::start_with(&["--page-cache-bytes", "262144", "--flush-interval-ms", "20"]);
    old_records_out_of_the_cache(&server);
    let client = server.client();
    let value = value_of;
    // Every record reads back, from the files.
    let mut next = 0u64;
    while next < 1200 {
        let fetched = client
            .fetch("t", 0, StartAt::Offset(next), 1 << 20, Duration::ZERO, None)
            .expect("fetch");
        assert!(!fetched.records.is_empty(), "records from {next} on");
        for r in &fetched.records {
            assert_eq!(r.offset, next);
            assert_eq!(r.value.as_deref(), Some(&value(next)[..]));
            next += 1;
        }
    }
    server.stop();
}

/// A consumer reading records whose pages are out of the page cache waits for the disk on
/// the reader thread, not on the event loop: made slow (3 s per cold read), its fetch, its
/// subscription and a queue group's poll take that long while another client publishes
/// and reads the tail meanwhile; and what they get is what they would have got at once.
#[test]
fn a_consumer_reading_from_the_disk_does_not_hold_up_the_others() {
    use std::time::Instant;
    use tidelog_client::{QueueConfig, QueueConsumer, Record, StartAt, WINDOW_BYTES_DEFAULT};
    const DELAY: Duration = Duration::from_secs(3);
    let server = Server::start_with(&[
        "--page-cache-bytes",
        "262144",
        "--flush-interval-ms",
        "20",
        "--slow-disk-ms",
        "3000",
    ]);
    old_records_out_of_the_cache(&server);

    let cold_client = server.client();
    let sub_client = server.client();
    let asked = Instant::now();
    let cold_fetch = std::thread::spawn(move || {
        let fetched = cold_client
            .fetch("t", 0, StartAt::Offset(0), 64 << 10, Duration::ZERO, None)
            .expect("cold fetch");
        (fetched, Instant::now())
    });
    let subscriber = std::thread::spawn(move || {
        let mut sub = sub_client
            .subscribe("t", 0, StartAt::Earliest, None, WINDOW_BYTES_DEFAULT)
            .expect("subscribe");
        let first = sub
            .next_timeout(Duration::from_secs(30))
            .expect("subscription")
            .expect("a record within 30 s");
        let first_at = Instant::now();
        assert_eq!(first.offset, 0);
        assert_eq!(first.value.as_deref(), Some(&value_of(0)[..]));
        // The rest of the oldest segment (each further cold segment would wait 3 s more).
        for next in 1..40 {
            let r = sub
                .next_timeout(Duration::from_secs(30))
                .expect("subscription")
                .expect("records keep coming");
            assert_eq!(r.offset, next, "in order, no gap");
            assert_eq!(r.value.as_deref(), Some(&value_of(next)[..]));
        }
        first_at
    });

    let queue_client = server.client();
    let queue = std::thread::spawn(move || {
        let mut q = QueueConsumer::join(&queue_client, "q", "t", &QueueConfig::default())
            .expect("join the queue group");
        let mut got = Vec::new();
        let mut first_at = None;
        while got.len() < 40 {
            let polled = q.poll(40, Duration::from_secs(30)).expect("poll");
            assert!(!polled.is_empty(), "records within 30 s");
            first_at.get_or_insert_with(Instant::now);
            for r in polled {
                q.ack(&r);
                got.push((r.record.offset, r.record.value.clone()));
            }
        }
        (got, first_at.expect("polled"))
    });

    // Meanwhile another client publishes and reads the tail.
    std::thread::sleep(Duration::from_millis(300));
    let other = server.client();
    let records: Vec<Record> = (1200..1204)
        .map(|i| Record {
            value: Some(value_of(i)),
            ..Record::default()
        })
        .collect();
    tidelog_e2e::publish_batch(&other, "t", 0, &records);
    let tail = other
        .fetch("t", 0, StartAt::Offset(1200), 1 << 20, Duration::ZERO, None)
        .expect("tail fetch");
    assert_eq!(tail.records.len(), 4);
    let others_done = Instant::now();

    let (fetched, fetched_at) = cold_fetch.join().expect("cold fetch thread");
    let first_at = subscriber.join().expect("subscriber thread");
    let (queued, queued_at) = queue.join().expect("queue thread");
    assert!(
        fetched_at.duration_since(asked) >= DELAY - Duration::from_millis(100),
        "the cold fetch went to the reader ({:?})",
        fetched_at.duration_since(asked)
    );
    assert!(
        others_done < fetched_at && others_done < first_at && others_done < queued_at,
        "the publish and the tail read were served while the cold reads waited"
    );
    // The queue group hands out the oldest records first, intact.
    for (i, (offset, value)) in queued.iter().take(40).enumerate() {
        assert_eq!(*offset, i as u64);
        assert_eq!(value.as_deref(), Some(&value_of(i as u64)[..]));
    }
    // The same answer as a fetch from the cache would give.
    assert!(!fetched.records.is_empty());
    for (i, r) in fetched.records.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.value.as_deref(), Some(&value_of(i as u64)[..]));
    }
    server.stop();
}
