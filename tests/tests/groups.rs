//! Stream groups through the real server: partitions shared by members with no two
//! holders, rebalances that move only what must move, commits fenced by generation and
//! ownership, committed offsets that survive restarts (clean and kill -9), and a member
//! dying without leaving: its partitions move after its session timeout and the group
//! reprocesses only what that member had processed after its last commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidelog_client::{
    build_batch, Ack, Client, ErrorCode, GroupConfig, GroupConsumer, ProducerStamp, Record,
    StartAt, TopicSettings,
};
use tidelog_e2e::{publish_batch, Server};
use tidelog_protocol::group::{CommitEntry, GroupRequest, GroupResponse};
use tidelog_protocol::{Request, Response};

const SESSION: Duration = Duration::from_millis(1500);

fn config() -> GroupConfig {
    GroupConfig {
        session_timeout: SESSION,
        start: StartAt::Earliest,
        window_bytes: 1 << 20,
        auto_commit_interval: None,
    }
}

fn create(client: &Client, topic: &str, partitions: u32) {
    client
        .create_topic(
            topic,
            TopicSettings {
                partitions,
                ..TopicSettings::default()
            },
        )
        .expect("create topic");
}

/// Publishes `n` records to each partition (values `p:i`), from `first`.
fn publish(client: &Client, topic: &str, partitions: u32, first: u64, n: u64) {
    for p in 0..partitions {
        let records: Vec<Record> = (first..first + n)
            .map(|i| Record::value(i as i64, format!("{p}:{i}")))
            .collect();
        publish_batch(client, topic, p, &records);
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// What the members did, in one place.
#[derive(Default)]
struct Log {
    /// (partition, offset) → how many times processed.
    processed: HashMap<(u32, u64), u32>,
    /// Per member: partition → offsets processed, in order.
    by_member: BTreeMap<usize, BTreeMap<u32, Vec<u64>>>,
    /// Per member: partition → last offset it committed successfully.
    committed: BTreeMap<usize, BTreeMap<u32, u64>>,
}

struct Member {
    client: Client,
    stop: Arc<AtomicBool>,
    assignment: Arc<Mutex<(Vec<u32>, bool)>>,
    thread: std::thread::JoinHandle<()>,
}

fn start_member(
    server: &Server,
    index: usize,
    commit_every: Duration,
    log: Arc<Mutex<Log>>,
) -> Member {
    let client = server.client();
    let stop = Arc::new(AtomicBool::new(false));
    let assignment = Arc::new(Mutex::new((Vec::new(), false)));
    let thread = {
        let (client, stop, assignment) = (client.clone(), stop.clone(), assignment.clone());
        std::thread::spawn(move || {
            let Ok(mut consumer) = GroupConsumer::join(&client, "workers", "jobs", config()) else {
                return;
            };
            let mut last_commit = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let records = match consumer.poll(Duration::from_millis(50)) {
                    Ok(r) => r,
                    Err(_) => return, // killed: the connection is gone
                };
                *assignment.lock().expect("lock") = (consumer.assignment(), consumer.is_settled());
                if records.is_empty() {
                    continue;
                }
                {
                    let mut log = log.lock().expect("lock");
                    for r in &records {
                        *log.processed.entry((r.partition, r.offset)).or_default() += 1;
                        log.by_member
                            .entry(index)
                            .or_default()
                            .entry(r.partition)
                            .or_default()
                            .push(r.offset);
                    }
                }
                if last_commit.elapsed() >= commit_every {
                    last_commit = Instant::now();
                    let positions: Vec<(u32, u64)> = consumer
                        .assignment()
                        .into_iter()
                        .filter_map(|p| consumer.position(p).map(|o| (p, o)))
                        .collect();
                    if consumer.commit().is_ok() {
                        let mut log = log.lock().expect("lock");
                        let mine = log.committed.entry(index).or_default();
                        for (p, o) in positions {
                            mine.insert(p, o);
                        }
                    }
                }
            }
            let _ = consumer.commit();
            let _ = consumer.close();
        })
    };
    Member {
        client,
        stop,
        assignment,
        thread,
    }
}

#[test]
fn four_members_share_twelve_partitions_and_survive_a_member_dying() {
    let server = Server::start();
    let admin = server.client();
    create(&admin, "jobs", 12);
    publish(&admin, "jobs", 12, 0, 200);
    let log = Arc::new(Mutex::new(Log::default()));
    // Member 0 starts alone and takes every partition; the others join while it is busy,
    // so partitions move from it to them: a graceful revocation, which must commit its
    // position first (without that commit the new holder would process records again: members commit every 300 ms). Member 3 will die: when it does, some of
    // what it processed is after its last commit, and only that may be processed twice.
    let every = Duration::from_millis(300);
    let mut members = vec![start_member(&server, 0, every, log.clone())];
    wait_until("member 0 is busy", Duration::from_secs(30), || {
        log.lock().expect("lock").processed.len() >= 100
    });
    members.extend((1..4).map(|i| start_member(&server, i, every, log.clone())));
    wait_until(
        "every member holds 3 partitions",
        Duration::from_secs(30),
        || {
            members.iter().all(|m| {
                let (a, settled) = &*m.assignment.lock().expect("lock");
                a.len() == 3 && *settled
            })
        },
    );
    let before: Vec<BTreeSet<u32>> = members
        .iter()
        .map(|m| {
            m.assignment
                .lock()
                .expect("lock")
                .0
                .iter()
                .copied()
                .collect()
        })
        .collect();
    let all: BTreeSet<u32> = before.iter().flatten().copied().collect();
    assert_eq!(
        all.len(),
        12,
        "12 distinct partitions over 4 members: {before:?}"
    );

    // Traffic while member 3 dies: it stops heartbeating and its connection drops,
    // without leaving.
    let producer = {
        let client = server.client();
        std::thread::spawn(move || {
            for round in 0..20 {
                publish(&client, "jobs", 12, 200 + round * 20, 20);
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    let victim = &members[3];
    victim.client.close();
    let killed_at = Instant::now();
    let moved = wait_until(
        "the dead member's partitions move to the others",
        Duration::from_secs(30),
        || {
            let info = admin.group_describe("workers").expect("describe");
            info.members.len() == 3
                && info.partitions.iter().all(|p| {
                    p.owner
                        .as_ref()
                        .is_some_and(|o| info.members.iter().any(|m| &m.member_id == o))
                })
        },
    );
    eprintln!(
        "partitions of the dead member moved {} ms after it died (session timeout {} ms)",
        moved.as_millis(),
        SESSION.as_millis()
    );
    // Its session ran from its last heartbeat, at most a heartbeat interval (a third of
    // the session) before it died.
    assert!(
        killed_at.elapsed() >= SESSION * 2 / 3,
        "moved before the session timeout could have passed"
    );
    producer.join().expect("producer");
    wait_until(
        "every survivor settles with 4 partitions",
        Duration::from_secs(30),
        || {
            members[..3].iter().all(|m| {
                let (a, settled) = &*m.assignment.lock().expect("lock");
                a.len() == 4 && *settled
            })
        },
    );
    for (i, m) in members[..3].iter().enumerate() {
        let after: BTreeSet<u32> = m
            .assignment
            .lock()
            .expect("lock")
            .0
            .iter()
            .copied()
            .collect();
        assert!(
            before[i].is_subset(&after),
            "member {i} lost a partition in the rebalance: {:?} → {after:?}",
            before[i]
        );
    }
    // Everything gets processed.
    let total = 12 * (200 + 20 * 20);
    wait_until("every record is processed", Duration::from_secs(60), || {
        log.lock().expect("lock").processed.len() == total as usize
    });
    for m in &members {
        m.stop.store(true, Ordering::Relaxed);
    }
    for m in members {
        m.thread.join().expect("member thread");
    }
    let log = log.lock().expect("lock");
    for p in 0..12u32 {
        for o in 0..(200 + 400) as u64 {
            assert!(
                log.processed.contains_key(&(p, o)),
                "record {p}/{o} never processed"
            );
        }
    }
    // A record is processed twice only if the dead member processed it after its last
    // successful commit of that partition.
    let victim_done = log.by_member.get(&3).cloned().unwrap_or_default();
    let victim_commits = log.committed.get(&3).cloned().unwrap_or_default();
    let mut duplicates = 0;
    for (&(p, o), &times) in &log.processed {
        if times == 1 {
            continue;
        }
        duplicates += 1;
        assert_eq!(times, 2, "record {p}/{o} processed {times} times");
        let processed_by_victim = victim_done.get(&p).is_some_and(|v| v.contains(&o));
        let after_its_commit = victim_commits.get(&p).is_none_or(|&c| o >= c);
        assert!(
            processed_by_victim && after_its_commit,
            "record {p}/{o} processed twice but not in the dead member's uncommitted window \
             (its last commit of {p}: {:?})",
            victim_commits.get(&p)
        );
    }
    let window: usize = victim_done
        .iter()
        .map(|(p, offsets)| {
            let c = victim_commits.get(p).copied().unwrap_or(0);
            offsets.iter().filter(|&&o| o >= c).count()
        })
        .sum();
    eprintln!(
        "{duplicates} records processed twice; the dead member's uncommitted window held {window}"
    );
    assert!(duplicates <= window);
}

fn raw(client: &Client, request: GroupRequest<'_>) -> Result<GroupResponseOwned, ErrorCode> {
    let frame = client.request(&Request::Group(request)).expect("request");
    match frame.response() {
        Ok(Response::Group(GroupResponse::Heartbeat(h))) => Ok(GroupResponseOwned::Heartbeat {
            member_id: h.member_id.to_string(),
            generation: h.generation,
            assignment: h.assignment,
        }),
        Ok(Response::Group(GroupResponse::Committed(codes))) => {
            Ok(GroupResponseOwned::Committed(codes))
        }
        Ok(_) => Ok(GroupResponseOwned::Other),
        Err(tidelog_client::ClientError::Server(e)) => Err(e.code),
        Err(e) => panic!("{e}"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum GroupResponseOwned {
    Heartbeat {
        member_id: String,
        generation: u32,
        assignment: Vec<u32>,
    },
    Committed(Vec<(u32, u16)>),
    Other,
}

fn heartbeat(
    client: &Client,
    member_id: &str,
    generation: u32,
    owned: Vec<u32>,
) -> Result<(String, u32, Vec<u32>), ErrorCode> {
    match raw(
        client,
        GroupRequest::Heartbeat {
            group: "g",
            topic: "t",
            member_id,
            generation,
            session_timeout_ms: 30_000,
            notify: 0,
            owned,
        },
    )? {
        GroupResponseOwned::Heartbeat {
            member_id,
            generation,
            assignment,
        } => Ok((member_id, generation, assignment)),
        other => panic!("unexpected {other:?}"),
    }
}

fn commit(
    client: &Client,
    member_id: &str,
    generation: u32,
    partition: u32,
) -> Result<u16, ErrorCode> {
    match raw(
        client,
        GroupRequest::Commit {
            group: "g",
            member_id,
            generation,
            commits: vec![CommitEntry {
                partition,
                offset: 1,
                metadata: "",
            }],
        },
    )? {
        GroupResponseOwned::Committed(codes) => Ok(codes[0].1),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn commits_are_fenced_and_bad_requests_get_clear_errors() {
    let server = Server::start();
    let client = server.client();
    create(&client, "t", 2);
    // A joins and gets both partitions in generation 1.
    let (a, gen_a, assigned) = heartbeat(&client, "", 0, vec![]).expect("join");
    assert_eq!(assigned, vec![0, 1]);
    assert_eq!(commit(&client, &a, gen_a, 0), Ok(0));
    assert_eq!(
        commit(&client, &a, gen_a - 1, 0),
        Ok(ErrorCode::StaleGeneration as u16),
        "a generation older than the grant"
    );
    // B joins (generation 2): A must release one partition before B gets it.
    let (b, gen_b, assigned_b) = heartbeat(&client, "", 0, vec![]).expect("join b");
    assert!(assigned_b.is_empty());
    let (_, gen_a2, assigned_a) = heartbeat(&client, &a, gen_a, vec![0, 1]).expect("a");
    assert_eq!(assigned_a.len(), 1);
    let released = if assigned_a[0] == 0 { 1 } else { 0 };
    // A may still commit what it holds until it releases it...
    assert_eq!(commit(&client, &a, gen_a2, released), Ok(0));
    heartbeat(&client, &a, gen_a2, assigned_a.clone()).expect("a releases");
    // ...and not after.
    assert_eq!(
        commit(&client, &a, gen_a2, released),
        Ok(ErrorCode::NotPartitionOwner as u16)
    );
    let (_, gen_b2, assigned_b) = heartbeat(&client, &b, gen_b, vec![]).expect("b");
    assert_eq!(assigned_b, vec![released]);
    assert_eq!(commit(&client, &b, gen_b2, released), Ok(0));
    assert_eq!(
        commit(&client, &b, gen_b2 - 1, released),
        Ok(ErrorCode::StaleGeneration as u16),
        "b was granted the partition in generation {gen_b2}"
    );
    assert_eq!(
        commit(&client, "m-nobody", 1, 0),
        Err(ErrorCode::UnknownMember)
    );
    assert_eq!(
        heartbeat(&client, "m-nobody", 1, vec![]),
        Err(ErrorCode::UnknownMember)
    );
    assert_eq!(
        raw(
            &client,
            GroupRequest::Describe {
                group: "no-such-group"
            }
        ),
        Err(ErrorCode::UnknownGroup)
    );
    assert_eq!(
        raw(
            &client,
            GroupRequest::Heartbeat {
                group: "g2",
                topic: "no-such-topic",
                member_id: "",
                generation: 0,
                session_timeout_ms: 30_000,
                notify: 0,
                owned: vec![],
            }
        ),
        Err(ErrorCode::UnknownTopic)
    );
    assert_eq!(
        raw(
            &client,
            GroupRequest::Heartbeat {
                group: "g",
                topic: "t",
                member_id: "",
                generation: 0,
                session_timeout_ms: 1,
                notify: 0,
                owned: vec![],
            }
        ),
        Err(ErrorCode::InvalidRequest)
    );
    // The offsets topic is the server's.
    let err = client
        .publish(
            "__tidelog_offsets",
            0,
            Ack::Written,
            &build_batch(&[Record::value(0, "x")], ProducerStamp::default()),
        )
        .expect_err("publishing into the offsets topic");
    assert_eq!(err.code(), Some(ErrorCode::NotAllowed));
    let err = client
        .delete_topic("__tidelog_offsets")
        .expect_err("deleting the offsets topic");
    assert_eq!(err.code(), Some(ErrorCode::NotAllowed));
    client.ping().expect("the connection is still healthy");
}

/// Consumes until `n` records arrived per partition, committing as it goes.
fn consume_and_commit(server: &Server, group: &str, per_partition: u64) -> BTreeMap<u32, u64> {
    let client = server.client();
    let mut consumer = GroupConsumer::join(&client, group, "jobs", config()).expect("join");
    let mut seen: BTreeMap<u32, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 || seen.values().any(|&n| n < per_partition) {
        assert!(Instant::now() < deadline, "consumed only {seen:?}");
        for r in consumer.poll(Duration::from_millis(100)).expect("poll") {
            *seen.entry(r.partition).or_default() += 1;
        }
    }
    consumer.commit().expect("commit");
    let positions = consumer
        .assignment()
        .into_iter()
        .map(|p| (p, consumer.position(p).expect("position")))
        .collect();
    consumer.close().expect("leave");
    positions
}

#[test]
fn committed_offsets_survive_clean_and_crash_restarts() {
    let mut server = Server::start();
    let client = server.client();
    create(&client, "jobs", 3);
    publish(&client, "jobs", 3, 0, 100);
    let positions = consume_and_commit(&server, "keepers", 100);
    assert_eq!(
        positions.values().copied().collect::<Vec<_>>(),
        vec![100, 100, 100]
    );
    let dir_guard = server.take_dir();
    let dir = server.data_dir.clone();
    server.stop();

    // Clean restart: offsets intact; a new member resumes exactly there.
    let server = Server::start_in(&dir, &[]);
    let client = server.client();
    let info = client
        .group_describe("keepers")
        .expect("describe after restart");
    let committed: Vec<Option<u64>> = info.partitions.iter().map(|p| p.committed).collect();
    assert_eq!(committed, vec![Some(100); 3]);
    assert!(info.partitions.iter().all(|p| p.lag == 0));
    publish(&client, "jobs", 3, 100, 10);
    let info = client.group_describe("keepers").expect("describe");
    assert!(info.partitions.iter().all(|p| p.lag == 10), "{info:?}");
    let mut consumer = GroupConsumer::join(&client, "keepers", "jobs", config()).expect("join");
    let mut first: BTreeMap<u32, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut count = 0;
    while count < 30 {
        assert!(Instant::now() < deadline);
        for r in consumer.poll(Duration::from_millis(100)).expect("poll") {
            first.entry(r.partition).or_insert(r.offset);
            count += 1;
        }
    }
    assert_eq!(first, (0..3).map(|p| (p, 100)).collect());
    consumer.commit().expect("commit");
    drop(consumer);
    let listed = client.group_list().expect("list");
    assert!(listed
        .iter()
        .any(|g| g.name == "keepers" && g.topic == "jobs"));

    // kill -9 right after the acknowledged (durable) commit: still there.
    server.kill();
    let server = Server::start_in(&dir, &[]);
    let info = server
        .client()
        .group_describe("keepers")
        .expect("describe after kill -9");
    let committed: Vec<Option<u64>> = info.partitions.iter().map(|p| p.committed).collect();
    assert_eq!(committed, vec![Some(110); 3]);
    drop(dir_guard);
}

#[test]
fn the_rebalance_listener_hears_assignments_and_revocations() {
    let server = Server::start();
    let admin = server.client();
    create(&admin, "jobs", 4);
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let client_a = server.client();
    let mut a = GroupConsumer::join(&client_a, "listened", "jobs", config()).expect("join a");
    {
        let events = events.clone();
        a.on_rebalance(move |r| events.lock().expect("lock").push(format!("{r:?}")));
    }
    wait_until("a holds all 4", Duration::from_secs(10), || {
        a.poll(Duration::from_millis(20)).expect("poll");
        a.assignment().len() == 4 && a.is_settled()
    });
    let client_b = server.client();
    let mut b = GroupConsumer::join(&client_b, "listened", "jobs", config()).expect("join b");
    wait_until("both hold 2", Duration::from_secs(10), || {
        a.poll(Duration::from_millis(10)).expect("poll a");
        b.poll(Duration::from_millis(10)).expect("poll b");
        a.assignment().len() == 2 && b.assignment().len() == 2 && a.is_settled() && b.is_settled()
    });
    let a_now: Vec<u32> = a.assignment();
    let revoked: Vec<u32> = (0..4).filter(|p| !a_now.contains(p)).collect();
    assert_eq!(
        *events.lock().expect("lock"),
        vec![
            "Assigned([0, 1, 2, 3])".to_string(),
            format!("Revoked({revoked:?})")
        ]
    );
    drop(b);
    wait_until("a gets them back", Duration::from_secs(10), || {
        a.poll(Duration::from_millis(10)).expect("poll a");
        a.assignment().len() == 4
    });
    assert_eq!(
        events.lock().expect("lock").last().cloned(),
        Some(format!("Assigned({revoked:?})"))
    );
}

/// A member outlives a server restart: its connection drops, its partitions are reported
/// lost, it reconnects to the same address, joins again and resumes from the committed
/// offsets; every record is processed, and twice only if it came after the last commit.
#[test]
fn a_member_reconnects_after_a_server_restart_and_resumes_at_the_committed_offsets() {
    let mut server = Server::start();
    let addr = server.addr;
    let admin = server.client();
    create(&admin, "jobs", 3);
    publish(&admin, "jobs", 3, 0, 100);
    let dir_guard = server.take_dir();
    let dir = server.data_dir.clone();
    let client = server.client();
    let mut consumer = GroupConsumer::join(&client, "survivors", "jobs", config()).expect("join");
    let lost: Arc<Mutex<Vec<u32>>> = Arc::default();
    {
        let lost = lost.clone();
        consumer.on_rebalance(move |r| {
            if let tidelog_client::Rebalance::Lost(p) = r {
                lost.lock().expect("lock").extend_from_slice(p);
            }
        });
    }
    let mut seen: HashMap<(u32, u64), u32> = HashMap::new();
    let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
    let consume_until = |consumer: &mut GroupConsumer,
                         n: usize,
                         seen: &mut HashMap<(u32, u64), u32>,
                         committed: &mut BTreeMap<u32, u64>| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < n {
            assert!(Instant::now() < deadline, "consumed {} of {n}", seen.len());
            for r in consumer.poll(Duration::from_millis(100)).expect("poll") {
                *seen.entry((r.partition, r.offset)).or_default() += 1;
            }
            if consumer.commit().is_ok() {
                for p in consumer.assignment() {
                    if let Some(o) = consumer.position(p) {
                        committed.insert(p, o);
                    }
                }
            }
        }
    };
    consume_until(&mut consumer, 300, &mut seen, &mut committed);
    let committed_before = committed.clone();
    server.kill();
    let server = Server::start_in_at(&dir, &addr.to_string(), &[]);
    publish(&server.client(), "jobs", 3, 100, 50);
    consume_until(&mut consumer, 450, &mut seen, &mut committed);
    assert!(
        !lost.lock().expect("lock").is_empty(),
        "the partitions were reported lost"
    );
    for p in 0..3u32 {
        for o in 0..150u64 {
            let times = seen.get(&(p, o)).copied().unwrap_or(0);
            assert!(times >= 1, "{p}/{o} never processed");
            if times > 1 {
                assert!(
                    o >= committed_before.get(&p).copied().unwrap_or(0),
                    "{p}/{o} processed twice though committed before the restart"
                );
            }
        }
    }
    consumer.close().expect("leave");
    drop(dir_guard);
}
