//! Queue groups through the real server: 8 consumers share a topic record by record; a
//! random 1 % is nacked once with a delay, 0.5 % deferred once, 0.1 % always fails. Every
//! good record is acked exactly once, no nacked or deferred record comes back before its
//! time, the failing ones land in the dead-letter topic with headers naming their origin
//! after max deliveries; a kill -9 of the server mid-run redelivers nothing that was
//! acknowledged and loses nothing that was not; bad settlements get clear errors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tidelog_client::{Client, ErrorCode, QueueConfig, QueueConsumer, Record, StartAt};
use tidelog_e2e::{create_topic, publish_batch, Server};
use tidelog_protocol::group::{GroupRequest, GroupResponse, Settle, SettleEntry};
use tidelog_protocol::{Request, Response};

/// Records in the big run (1 000 000 in the proof; `TIDELOG_QUEUE_RECORDS`
/// overrides, e.g. for a quick local run).
fn records() -> u64 {
    std::env::var("TIDELOG_QUEUE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Good,
    NackOnce,
    DeferOnce,
    AlwaysFails,
}

/// A fixed pseudo-random fate per record number.
fn fate(n: u64) -> Fate {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % 10_000;
    match h {
        0..=9 => Fate::AlwaysFails,   // 0.1 %
        10..=109 => Fate::NackOnce,   // 1 %
        110..=159 => Fate::DeferOnce, // 0.5 %
        _ => Fate::Good,
    }
}

fn publish_numbers(client: &Client, topic: &str, partitions: u32, total: u64) {
    let per = total / u64::from(partitions);
    for p in 0..partitions {
        let mut n = u64::from(p) * per;
        let end = n + per;
        while n < end {
            let batch: Vec<Record> = (n..(n + 1000).min(end))
                .map(|i| Record {
                    key: Some(format!("k{}", i % 997).into_bytes()),
                    ..Record::value(i as i64, i.to_string())
                })
                .collect();
            n += batch.len() as u64;
            publish_batch(client, topic, p, &batch);
        }
    }
}

fn number(r: &tidelog_client::QueuedRecord) -> u64 {
    std::str::from_utf8(r.record.value.as_deref().expect("value"))
        .expect("utf-8")
        .parse()
        .expect("number")
}

const NACK_DELAY: Duration = Duration::from_millis(200);
const DEFER_BY: Duration = Duration::from_millis(300);

#[derive(Default)]
struct Seen {
    acked: HashMap<u64, u32>,
    /// When each record was nacked or deferred (and until when it must not come back).
    not_before: HashMap<u64, (Instant, SystemTime)>,
    early: Vec<String>,
    failing_deliveries: HashMap<u64, u32>,
    refused: Vec<(u32, u64, ErrorCode)>,
}

#[test]
fn eight_consumers_ack_nack_defer_and_dead_letter() {
    let total = records();
    let server = Server::start();
    let admin = server.client();
    create_topic(&admin, "work", 4);
    publish_numbers(&admin, "work", 4, total);
    let config = QueueConfig {
        visibility_timeout: Duration::from_secs(30),
        max_deliveries: 3,
        backoff: vec![Duration::from_millis(20), Duration::from_millis(50)],
        dead_letter_topic: Some("work.dead".into()),
        ..QueueConfig::default()
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let consumers: Vec<_> = (0..8)
        .map(|_| {
            let (client, seen, stop, config) =
                (server.client(), seen.clone(), stop.clone(), config.clone());
            std::thread::spawn(move || {
                let mut q = QueueConsumer::join(&client, "workers", "work", &config).expect("join");
                while !stop.load(Ordering::Relaxed) {
                    let batch = q.poll(500, Duration::from_millis(100)).expect("poll");
                    let mut s = seen.lock().expect("lock");
                    for r in &batch {
                        let n = number(r);
                        if let Some((at, until)) = s.not_before.get(&n).copied() {
                            let early_instant =
                                at.elapsed() < NACK_DELAY.min(DEFER_BY) - Duration::from_millis(2);
                            let early_wall = SystemTime::now() + Duration::from_millis(2) < until;
                            if early_instant || early_wall {
                                s.early.push(format!(
                                    "{n} came back early (delivery {})",
                                    r.deliveries
                                ));
                            }
                        }
                        match fate(n) {
                            Fate::AlwaysFails => {
                                *s.failing_deliveries.entry(n).or_default() += 1;
                                q.nack(r, None, "always fails");
                            }
                            Fate::NackOnce if r.deliveries == 1 => {
                                s.not_before
                                    .insert(n, (Instant::now(), SystemTime::now() + NACK_DELAY));
                                q.nack(r, Some(NACK_DELAY), "try later");
                            }
                            Fate::DeferOnce if r.deliveries == 1 => {
                                let until = SystemTime::now() + DEFER_BY;
                                s.not_before.insert(n, (Instant::now(), until));
                                q.defer(r, until);
                            }
                            _ => {
                                *s.acked.entry(n).or_default() += 1;
                                q.ack(r);
                            }
                        }
                    }
                    drop(s);
                    q.flush().expect("flush");
                    let refused = q.take_refused();
                    seen.lock().expect("lock").refused.extend(refused);
                }
                q.close().expect("leave");
            })
        })
        .collect();
    let good = (0..total).filter(|&n| fate(n) != Fate::AlwaysFails).count();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let acked = seen.lock().expect("lock").acked.len();
        let info = admin.group_describe("workers").expect("describe");
        let settled = info.partitions.iter().all(|p| p.lag == 0);
        if acked == good && settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{acked} of {good} acked; {:?}",
            info.partitions
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for c in consumers {
        c.join().expect("consumer");
    }
    let seen = seen.lock().expect("lock");
    assert!(
        seen.early.is_empty(),
        "{:?}",
        &seen.early[..seen.early.len().min(10)]
    );
    assert!(
        seen.refused.is_empty(),
        "{:?}",
        &seen.refused[..seen.refused.len().min(10)]
    );
    for n in 0..total {
        let acks = seen.acked.get(&n).copied().unwrap_or(0);
        match fate(n) {
            Fate::AlwaysFails => {
                assert_eq!(acks, 0);
                assert_eq!(seen.failing_deliveries.get(&n), Some(&3), "record {n}");
            }
            _ => assert_eq!(acks, 1, "record {n} acked {acks} times"),
        }
    }
    // The dead letters: each failing record once, with its origin.
    let failing: BTreeSet<u64> = (0..total)
        .filter(|&n| fate(n) == Fate::AlwaysFails)
        .collect();
    let fetched = admin
        .fetch(
            "work.dead",
            0,
            StartAt::Earliest,
            64 << 20,
            Duration::ZERO,
            None,
        )
        .expect("fetch dead letters");
    let mut dead: BTreeMap<u64, BTreeMap<String, String>> = BTreeMap::new();
    for r in &fetched.records {
        let n: u64 = std::str::from_utf8(r.value.as_deref().expect("value"))
            .expect("utf-8")
            .parse()
            .expect("number");
        let headers: BTreeMap<String, String> = r
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into(),
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect();
        assert!(dead.insert(n, headers).is_none(), "{n} dead-lettered twice");
    }
    assert_eq!(dead.keys().copied().collect::<BTreeSet<_>>(), failing);
    let per = total / 4;
    for (n, h) in &dead {
        assert_eq!(h["tidelog.origin.topic"], "work");
        assert_eq!(h["tidelog.origin.partition"], (n / per).to_string());
        assert_eq!(h["tidelog.origin.offset"], (n % per).to_string());
        assert_eq!(h["tidelog.deliveries"], "3");
        assert_eq!(h["tidelog.reason"], "nacked: always fails");
    }
    let info = admin.group_describe("workers").expect("describe");
    assert_eq!(
        info.partitions.iter().map(|p| p.dead_lettered).sum::<u64>(),
        failing.len() as u64
    );
    eprintln!(
        "{total} records: {good} acked once each, {} dead-lettered, {} nacked once, {} deferred once",
        failing.len(),
        (0..total).filter(|&n| fate(n) == Fate::NackOnce).count(),
        (0..total).filter(|&n| fate(n) == Fate::DeferOnce).count()
    );
}

#[test]
fn a_killed_server_redelivers_nothing_acknowledged_and_loses_nothing() {
    let mut server = Server::start();
    let admin = server.client();
    create_topic(&admin, "jobs", 3);
    let total = 30_000;
    publish_numbers(&admin, "jobs", 3, total);
    let config = QueueConfig::default();
    // Acknowledged (flushed: durable) before the crash.
    let confirmed: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let run = |server: &Server,
               stop_after: Option<usize>,
               confirmed: &Arc<Mutex<BTreeSet<u64>>>| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (client, confirmed, config) =
                    (server.client(), confirmed.clone(), config.clone());
                std::thread::spawn(move || -> Vec<u64> {
                    let mut delivered = Vec::new();
                    let Ok(mut q) = QueueConsumer::join(&client, "crashy", "jobs", &config) else {
                        return delivered;
                    };
                    loop {
                        let Ok(batch) = q.poll(200, Duration::from_millis(200)) else {
                            return delivered; // the server died
                        };
                        if batch.is_empty() && stop_after.is_none() {
                            return delivered;
                        }
                        let numbers: Vec<u64> = batch.iter().map(number).collect();
                        delivered.extend(&numbers);
                        for r in &batch {
                            q.ack(r);
                        }
                        if q.flush().is_err() {
                            return delivered;
                        }
                        assert!(q.take_refused().is_empty());
                        let mut c = confirmed.lock().expect("lock");
                        c.extend(numbers);
                        if stop_after.is_some_and(|n| c.len() >= n) {
                            // Keep polling until the server is killed under us.
                        }
                    }
                })
            })
            .collect();
        handles
    };
    let before = run(&server, Some(total as usize / 3), &confirmed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while confirmed.lock().expect("lock").len() < total as usize / 3 {
        assert!(Instant::now() < deadline, "no progress before the crash");
        std::thread::sleep(Duration::from_millis(5));
    }
    let dir_guard = server.take_dir();
    let dir = server.data_dir.clone();
    server.kill();
    let mut delivered_before: Vec<u64> = Vec::new();
    for h in before {
        delivered_before.extend(h.join().expect("consumer"));
    }
    let confirmed_at_crash = confirmed.lock().expect("lock").clone();

    let server = Server::start_in(&dir, &[]);
    let after_confirmed: Arc<Mutex<BTreeSet<u64>>> = Arc::default(); // (not used after)
    let mut delivered_after: Vec<u64> = Vec::new();
    for h in run(&server, None, &after_confirmed) {
        delivered_after.extend(h.join().expect("consumer"));
    }
    // Nothing acknowledged before the crash comes back...
    let again: Vec<u64> = delivered_after
        .iter()
        .filter(|n| confirmed_at_crash.contains(n))
        .copied()
        .collect();
    assert!(
        again.is_empty(),
        "{} acknowledged records redelivered, e.g. {:?}",
        again.len(),
        &again[..again.len().min(5)]
    );
    // ...and nothing is lost: every record was delivered (and acked) on one side of the
    // crash. (A record whose ack was durable but whose answer the crash swallowed is not
    // in `confirmed_at_crash`, and is not delivered again either: it was processed.)
    let delivered: BTreeSet<u64> = delivered_before
        .iter()
        .chain(&delivered_after)
        .copied()
        .collect();
    let missing: Vec<u64> = (0..total).filter(|n| !delivered.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} records never acknowledged, e.g. {:?}; group: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        server.client().group_describe("crashy").expect("describe")
    );
    let info = server.client().group_describe("crashy").expect("describe");
    assert!(
        info.partitions.iter().all(|p| p.lag == 0),
        "{:?}",
        info.partitions
    );
    eprintln!(
        "{} acknowledged before the crash, {} delivered before it, {} after",
        confirmed_at_crash.len(),
        delivered_before.len(),
        delivered_after.len()
    );
    drop(dir_guard);
}

fn settle(
    client: &Client,
    group: &str,
    member_id: &str,
    partition: u32,
    offset: u64,
    action: Settle,
) -> Result<u16, ErrorCode> {
    let frame = client
        .request(&Request::Group(GroupRequest::QueueSettle {
            group,
            member_id,
            entries: vec![SettleEntry {
                partition,
                offset,
                action,
                reason: "",
            }],
        }))
        .expect("request");
    match frame.response() {
        Ok(Response::Group(GroupResponse::Settled(codes))) => Ok(codes[0]),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(tidelog_client::ClientError::Server(e)) => Err(e.code),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn bad_settlements_and_groups_get_clear_errors() {
    let server = Server::start();
    let client = server.client();
    create_topic(&client, "t", 1);
    publish_numbers(&client, "t", 1, 10);
    let mut a = QueueConsumer::join(&client, "q", "t", &QueueConfig::default()).expect("join a");
    let b = QueueConsumer::join(&client, "q", "t", &QueueConfig::default()).expect("join b");
    let got = a.poll(1, Duration::from_secs(5)).expect("poll");
    assert_eq!(got.len(), 1);
    let offset = got[0].record.offset;
    let not_leased = ErrorCode::NotLeased as u16;
    // Another member cannot settle a's lease; nobody can settle a record never delivered.
    assert_eq!(
        settle(&client, "q", b.member_id(), 0, offset, Settle::Ack),
        Ok(not_leased)
    );
    assert_eq!(
        settle(&client, "q", a.member_id(), 0, 9, Settle::Ack),
        Ok(not_leased)
    );
    assert_eq!(
        settle(&client, "q", a.member_id(), 7, 0, Settle::Ack),
        Ok(not_leased),
        "no partition 7"
    );
    assert_eq!(
        settle(&client, "q", a.member_id(), 0, offset, Settle::Ack),
        Ok(0)
    );
    assert_eq!(
        settle(&client, "q", a.member_id(), 0, offset, Settle::Ack),
        Ok(not_leased),
        "already settled"
    );
    assert_eq!(
        settle(&client, "no-such-group", a.member_id(), 0, 0, Settle::Ack),
        Err(ErrorCode::UnknownGroup)
    );
    // A stream group's name is not a queue group's, and the reverse.
    let err = QueueConsumer::join(&client, "q2", "no-such-topic", &QueueConfig::default())
        .expect_err("unknown topic");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
    let err = tidelog_client::GroupConsumer::join(
        &client,
        "q",
        "t",
        tidelog_client::GroupConfig::default(),
    )
    .expect_err("a queue group joined as a stream group");
    assert_eq!(err.code(), Some(ErrorCode::GroupKindMismatch));
    let listed = client.group_list().expect("list");
    assert!(listed.iter().any(|g| g.name == "q" && g.kind == "queue"));
    // Settings are the group's: a second join with others gets the first's.
    let c = QueueConsumer::join(
        &client,
        "q",
        "t",
        &QueueConfig {
            max_deliveries: 99,
            ..QueueConfig::default()
        },
    )
    .expect("join c");
    assert_eq!(c.settings().max_deliveries, 5);
    client.ping().expect("healthy");
}

#[test]
fn per_key_ordering_holds_a_key_back_while_its_earlier_record_is_unsettled() {
    let server = Server::start();
    let client = server.client();
    create_topic(&client, "ordered", 1);
    let records: Vec<Record> = (0..40u64)
        .map(|i| Record {
            key: Some(format!("k{}", i % 10).into_bytes()),
            ..Record::value(i as i64, i.to_string())
        })
        .collect();
    publish_batch(&client, "ordered", 0, &records);
    let config = QueueConfig {
        per_key_ordering: true,
        ..QueueConfig::default()
    };
    let mut q = QueueConsumer::join(&client, "ordered-q", "ordered", &config).expect("join");
    let numbers =
        |batch: &[tidelog_client::QueuedRecord]| -> Vec<u64> { batch.iter().map(number).collect() };
    // Only the first record of each key: the rest wait for their predecessors.
    let first = q.poll(100, Duration::from_secs(5)).expect("poll");
    assert_eq!(numbers(&first), (0..10).collect::<Vec<_>>());
    assert!(q.poll(100, Duration::ZERO).expect("poll").is_empty());
    // Defer key k0's record; settle the others: k1..k9 move on, k0 does not.
    let until = SystemTime::now() + Duration::from_millis(300);
    q.defer(&first[0], until);
    for r in &first[1..] {
        q.ack(r);
    }
    let second = q.poll(100, Duration::from_secs(5)).expect("poll");
    assert_eq!(numbers(&second), (11..20).collect::<Vec<_>>());
    for r in &second {
        q.ack(r);
    }
    let third = q.poll(100, Duration::ZERO).expect("poll");
    assert_eq!(
        numbers(&third),
        (21..30).collect::<Vec<_>>(),
        "k0 is still held back"
    );
    for r in &third {
        q.ack(r);
    }
    // After the deferral: record 0 again (not 10, which still waits for it).
    let again = q.poll(100, Duration::from_secs(5)).expect("poll");
    let mut got = numbers(&again);
    while !got.contains(&0) {
        for r in &again {
            q.ack(r);
        }
        got = numbers(&q.poll(100, Duration::from_secs(5)).expect("poll"));
    }
    assert!(
        SystemTime::now() + Duration::from_millis(2) >= until,
        "not before its time"
    );
    assert!(!got.contains(&10));
    q.flush().expect("flush");
}

#[test]
fn a_queue_member_reconnects_after_a_server_restart() {
    let mut server = Server::start();
    let addr = server.addr;
    let client = server.client();
    create_topic(&client, "jobs", 1);
    publish_numbers(&client, "jobs", 1, 2000);
    let dir_guard = server.take_dir();
    let dir = server.data_dir.clone();
    let mut q = QueueConsumer::join(&client, "rq", "jobs", &QueueConfig::default()).expect("join");
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut confirmed: BTreeSet<u64> = BTreeSet::new();
    let mut restarted = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while confirmed.len() < 2000 {
        assert!(Instant::now() < deadline, "{} of 2000", confirmed.len());
        if !restarted && confirmed.len() >= 500 {
            server.kill();
            server = Server::start_in_at(&dir, &addr.to_string(), &[]);
            restarted = true;
        }
        let batch = match q.poll(100, Duration::from_millis(200)) {
            Ok(b) => b,
            Err(_) => {
                q.reconnect().expect("reconnect");
                continue;
            }
        };
        let numbers: Vec<u64> = batch.iter().map(number).collect();
        for n in &numbers {
            assert!(
                !confirmed.contains(n),
                "{n} redelivered after its ack was confirmed"
            );
        }
        for r in &batch {
            q.ack(r);
        }
        acked.extend(&numbers);
        if q.flush().is_ok() {
            confirmed.extend(numbers);
        } else {
            q.reconnect().expect("reconnect");
        }
    }
    assert!(restarted);
    assert_eq!(acked.len(), 2000);
    q.close().expect("leave");
    let info = server.client().group_describe("rq").expect("describe");
    assert_eq!(info.partitions[0].lag, 0);
    drop(dir_guard);
}
