//! Explicit limits: a connection over `connections_max` is refused with
//! `ServerOverloaded` and the connections inside the limit keep working; an idle
//! connection is closed after `idle_timeout_secs`; past `--page-cache-bytes` the oldest
//! sealed segments leave the page cache and their records still read.

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

#[test]
fn the_page_cache_budget_hands_back_old_segments_and_their_records_still_read() {
    use tidelog_client::{Record, StartAt, TopicSettings};
    let server = Server::start_with(&["--page-cache-bytes", "262144", "--flush-interval-ms", "20"]);
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
    let value = |i: u64| {
        let mut v = i.to_le_bytes().to_vec();
        v.resize(1000, (i % 251) as u8);
        v
    };
    for b in 0..300u64 {
        let records: Vec<Record> = (b * 4..b * 4 + 4)
            .map(|i| Record {
                value: Some(value(i)),
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
