//! The `tidelog` command line against a real server: topic admin, publish from stdin,
//! consume as json lines, and `consume --follow` stopping cleanly on SIGTERM/SIGINT with
//! everything it printed flushed and exit code 0.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};

use tidelog_e2e::{binary, Server};

fn tidelog(server: &Server, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .env("TIDELOG_SERVER", server.addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tidelog");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin");
    child.wait_with_output().expect("output")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

#[test]
fn topic_publish_consume_round_trip() {
    let server = Server::start();
    ok(&tidelog(
        &server,
        &["topic", "create", "events", "--partitions", "3"],
        "",
    ));
    assert!(ok(&tidelog(&server, &["topic", "list"], "")).contains("events\t3"));
    let printed = ok(&tidelog(
        &server,
        &["publish", "events", "--tenant", "acme", "--ack", "durable"],
        "one\ntwo\nthree\n",
    ));
    assert!(
        printed.starts_with("published 3 records to events"),
        "{printed}"
    );
    assert!(printed.contains("offsets 0..=2"), "{printed}");
    let json = "{\"tenant\":\"zeta\",\"key\":\"f1\",\"value\":\"v1\",\"headers\":{\"type\":\"share\"}}\n{\"tenant\":\"zeta\",\"key\":\"f1\",\"value\":null}\n";
    ok(&tidelog(
        &server,
        &["publish", "events", "--format", "json"],
        json,
    ));

    let text = ok(&tidelog(
        &server,
        &["consume", "events", "--tenant", "acme"],
        "",
    ));
    assert_eq!(text, "one\ntwo\nthree\n");
    let lines = ok(&tidelog(
        &server,
        &["consume", "events", "--tenant", "zeta", "--format", "json"],
        "",
    ));
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].contains("\"tenant\":\"zeta\"")
            && lines[0].contains("\"value\":\"v1\"")
            && lines[0].contains("\"type\":\"share\"")
    );
    assert!(
        lines[1].contains("\"value\":null"),
        "tombstone: {}",
        lines[1]
    );
    for field in [
        "\"partition\":",
        "\"offset\":",
        "\"timestamp\":",
        "\"key\":\"f1\"",
    ] {
        assert!(lines[0].contains(field), "{field} in {}", lines[0]);
    }
    assert_eq!(
        ok(&tidelog(&server, &["consume", "events", "--max", "2"], ""))
            .lines()
            .count(),
        2
    );
    let described = ok(&tidelog(&server, &["topic", "describe", "events"], ""));
    assert!(
        described.contains("partition\tearliest\tlatest"),
        "{described}"
    );

    // Errors exit non-zero with a message.
    let missing = tidelog(&server, &["consume", "nope"], "");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("UnknownTopic"));
    server.stop();
}

/// Binary values and headers used to be printed lossily (every invalid byte a U+FFFD),
/// and of a repeated header name only the last value: json lines now carry them as
/// base64, flagged `<field>_encoding`, every header in order, and
/// `consume --format json | publish --format json` copies records byte for byte.
#[test]
fn json_lines_carry_binary_bytes_without_loss() {
    use tidelog_client::{Record, StartAt};
    let server = Server::start();
    let client = server.client();
    tidelog_e2e::create_topic(&client, "blobs", 1);
    tidelog_e2e::create_topic(&client, "copy", 1);
    let records = vec![
        Record {
            tenant: Some(b"acme".to_vec()),
            key: Some(vec![0xde, 0xad, 0xbe, 0xef]),
            value: Some(vec![0xff, 0x00, 0xfe, b'a', 0x80]),
            // A repeated name, one value binary: every value of `sig` goes out as base64.
            headers: vec![
                (b"sig".to_vec(), vec![0xc3, 0x28]),
                (b"sig".to_vec(), b"text".to_vec()),
            ],
            timestamp_ms: 1_700_000_000_000,
        },
        Record {
            tenant: Some(b"acme".to_vec()),
            key: Some(b"plain.txt".to_vec()),
            value: Some("text stays text: é".as_bytes().to_vec()),
            headers: vec![(b"type".to_vec(), b"share".to_vec())],
            timestamp_ms: 1_700_000_000_001,
        },
        Record {
            tenant: Some(b"acme".to_vec()),
            key: Some(vec![0xde, 0xad, 0xbe, 0xef]),
            value: None,
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_002,
        },
    ];
    tidelog_e2e::publish_batch(&client, "blobs", 0, &records);

    let printed = ok(&tidelog(
        &server,
        &["consume", "blobs", "--from", "earliest", "--format", "json"],
        "",
    ));
    let lines: Vec<serde_json::Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 3, "{printed}");
    assert_eq!(lines[0]["value"], "/wD+YYA=", "{printed}");
    assert_eq!(lines[0]["value_encoding"], "base64");
    assert_eq!(lines[0]["key"], "3q2+7w==");
    assert_eq!(lines[0]["key_encoding"], "base64");
    assert_eq!(lines[0]["headers_encoding"]["sig"], "base64");
    assert_eq!(lines[1]["value"], "text stays text: é");
    assert!(lines[1].get("value_encoding").is_none(), "{printed}");
    assert_eq!(lines[2]["value"], serde_json::Value::Null);

    ok(&tidelog(
        &server,
        &["publish", "copy", "--format", "json"],
        &printed,
    ));
    let copied = client
        .fetch(
            "copy",
            0,
            StartAt::Earliest,
            1 << 20,
            std::time::Duration::ZERO,
            None,
        )
        .expect("fetch");
    assert_eq!(copied.records.len(), 3);
    for (copy, original) in copied.records.iter().zip(&records) {
        assert_eq!(copy.tenant, original.tenant);
        assert_eq!(copy.key, original.key);
        assert_eq!(copy.value, original.value);
        assert_eq!(copy.headers, original.headers);
        assert_eq!(copy.timestamp_ms, original.timestamp_ms);
    }
}

fn follow_stops_cleanly(signal: i32) {
    let server = Server::start();
    ok(&tidelog(&server, &["topic", "create", "live"], ""));
    ok(&tidelog(&server, &["publish", "live"], "before\n"));
    let mut follower = Command::new(binary())
        .args(["consume", "live", "--follow", "--format", "json"])
        .env("TIDELOG_SERVER", server.addr.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("follow");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout"));
    let mut first = String::new();
    lines.read_line(&mut first).expect("first line");
    assert!(first.contains("\"value\":\"before\""), "{first}");
    ok(&tidelog(
        &server,
        &["publish", "live"],
        "after-1\nafter-2\n",
    ));
    let mut second = String::new();
    lines.read_line(&mut second).expect("live line");
    assert!(second.contains("after-1"), "{second}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(follower.id() as i32, signal) };
    let rest: Vec<String> = lines.lines().map_while(Result::ok).collect();
    let status = follower.wait().expect("wait");
    assert!(status.success(), "exit {status:?}");
    // Whatever it printed arrives whole: complete json lines, in order, nothing torn.
    assert!(rest.len() <= 1, "{rest:?}");
    for line in &rest {
        assert!(
            line.starts_with('{') && line.ends_with('}') && line.contains("after-2"),
            "{line}"
        );
    }
    server.stop();
}

#[test]
fn consume_follow_stops_cleanly_on_sigterm() {
    follow_stops_cleanly(libc::SIGTERM);
}

#[test]
fn consume_follow_stops_cleanly_on_sigint() {
    follow_stops_cleanly(libc::SIGINT);
}

#[test]
fn extract_prints_the_snapshot_the_watermark_and_live_records() {
    let server = Server::start();
    ok(&tidelog(
        &server,
        &["topic", "create", "files", "--partitions", "2"],
        "",
    ));
    let lines = [
        r#"{"tenant":"acme","key":"a.pdf","value":"v1","headers":{"type":"upload"}}"#,
        r#"{"tenant":"acme","key":"b.pdf","value":"v1","headers":{"type":"share"}}"#,
        r#"{"tenant":"acme","key":"a.pdf","value":"v2","headers":{"type":"share"}}"#,
        r#"{"tenant":"acme","key":"b.pdf","value":null}"#,
        r#"{"tenant":"zeta","key":"c.pdf","value":"z"}"#,
    ];
    ok(&tidelog(
        &server,
        &["publish", "files", "--format", "json"],
        &(lines.join("\n") + "\n"),
    ));

    // State: the latest live record per key, then the watermark.
    let state = ok(&tidelog(
        &server,
        &["extract", "files", "--tenant", "acme", "--format", "json"],
        "",
    ));
    let state: Vec<&str> = state.lines().collect();
    assert_eq!(state.len(), 2, "{state:?}");
    assert!(
        state[0].contains("\"phase\":\"snapshot\"")
            && state[0].contains("\"key\":\"a.pdf\"")
            && state[0].contains("\"value\":\"v2\"")
    );
    assert!(state[1].contains("\"phase\":\"watermark\""), "{}", state[1]);
    // W is the partition's last offset: acme's four records, and zeta's if it shares the partition.
    let w = number_after(state[1], "\"offset\":");
    assert!(w == 3 || w == 4, "{}", state[1]);

    // History with criteria: every share event.
    let history = ok(&tidelog(
        &server,
        &[
            "extract",
            "files",
            "--tenant",
            "acme",
            "--mode",
            "history",
            "--header",
            "type=share",
            "--format",
            "json",
        ],
        "",
    ));
    let history: Vec<&str> = history.lines().collect();
    assert_eq!(history.len(), 3, "{history:?}");
    // Every acme share event, in offset order (b.pdf's share came before a.pdf's v2).
    assert!(
        history[..2]
            .iter()
            .all(|l| l.contains("\"type\":\"share\"")),
        "{history:?}"
    );
    assert!(history[0].contains("\"key\":\"b.pdf\"") && history[1].contains("\"key\":\"a.pdf\""));
    assert!(number_after(history[0], "\"offset\":") < number_after(history[1], "\"offset\":"));

    // Follow: live records after the watermark, then a clean stop.
    let mut follower = Command::new(binary())
        .args([
            "extract", "files", "--tenant", "acme", "--follow", "--format", "json",
        ])
        .env("TIDELOG_SERVER", server.addr.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("extract --follow");
    let mut out = BufReader::new(follower.stdout.take().expect("stdout"));
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        out.read_line(&mut line).expect("line");
    }
    assert!(line.contains("\"phase\":\"watermark\""), "{line}");
    ok(&tidelog(
        &server,
        &["publish", "files", "--format", "json"],
        "{\"tenant\":\"acme\",\"key\":\"c.pdf\",\"value\":\"new\"}\n",
    ));
    line.clear();
    out.read_line(&mut line).expect("live line");
    assert!(line.contains("\"phase\":\"live\""), "{line}");
    assert!(
        number_after(&line, "\"offset\":") > w,
        "live after the watermark: {line}"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(follower.id() as i32, libc::SIGTERM) };
    assert!(follower.wait().expect("wait").success());
    server.stop();
}

fn number_after(line: &str, marker: &str) -> u64 {
    let rest = &line[line.find(marker).expect("marker") + marker.len()..];
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a number")
}

/// Follows `consume --group` output into a shared list of values.
fn group_member(
    server: &Server,
    values: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> std::process::Child {
    follower(
        server,
        &[
            "consume",
            "jobs",
            "--group",
            "g",
            "--follow",
            "--format",
            "json",
            "--session-timeout-ms",
            "1000",
        ],
        values,
    )
}

type Values = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Members of `group` per `group describe` (0 while the group does not exist yet).
fn group_members(server: &Server, group: &str) -> usize {
    let out = tidelog(
        server,
        &["group", "describe", group, "--format", "json"],
        "",
    );
    if !out.status.success() {
        return 0;
    }
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    d["members"].as_array().map_or(0, Vec::len)
}

/// Runs a following `consume` and collects the values it prints.
fn follower(
    server: &Server,
    args: &[&str],
    values: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) -> std::process::Child {
    let mut child = Command::new(binary())
        .args(args)
        .env("TIDELOG_SERVER", server.addr.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("consume");
    let lines = BufReader::new(child.stdout.take().expect("stdout"));
    let values = values.clone();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("torn or invalid json line {line:?}: {e}"));
            values
                .lock()
                .expect("lock")
                .push(v["value"].as_str().expect("value").to_string());
        }
    });
    child
}

fn wait_for_values(values: &std::sync::Mutex<Vec<String>>, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let distinct: std::collections::BTreeSet<String> =
            values.lock().expect("lock").iter().cloned().collect();
        if (1..=n).all(|i| distinct.contains(&format!("v{i}"))) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} values printed",
            distinct.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn consume_group_members_share_the_work_survive_a_kill_and_stop_cleanly() {
    let server = Server::start();
    ok(&tidelog(
        &server,
        &["topic", "create", "jobs", "--partitions", "4"],
        "",
    ));
    let lines: String = (1..=400).map(|i| format!("v{i}\n")).collect();
    ok(&tidelog(&server, &["publish", "jobs"], &lines));
    let (a_values, b_values) = Default::default();
    let mut a = group_member(&server, &a_values);
    let mut b = group_member(&server, &b_values);
    let both = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let union = || {
        let mut all = a_values.lock().expect("lock").clone();
        all.extend(b_values.lock().expect("lock").iter().cloned());
        *both.lock().expect("lock") = all;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        union();
        // Until the members have joined, the group does not exist yet.
        let members = group_members(&server, "g");
        if members == 2 && both.lock().expect("lock").len() >= 400 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{members} members");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    wait_for_values(&both, 400);
    // kill -9 one member; the other takes its partitions after its session times out.
    a.kill().expect("kill");
    a.wait().expect("wait");
    let lines: String = (401..=800).map(|i| format!("v{i}\n")).collect();
    ok(&tidelog(&server, &["publish", "jobs"], &lines));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        union();
        let distinct: std::collections::BTreeSet<String> =
            both.lock().expect("lock").iter().cloned().collect();
        if distinct.len() >= 800 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 800",
            distinct.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    wait_for_values(&both, 800);
    // SIGTERM: the survivor commits what it printed, leaves, exits 0.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
    let status = b.wait().expect("wait");
    assert!(status.success(), "exit {status:?}");
    let described = ok(&tidelog(
        &server,
        &["group", "describe", "g", "--format", "json"],
        "",
    ));
    let d: serde_json::Value = serde_json::from_str(&described).expect("json");
    assert_eq!(
        d["members"].as_array().expect("members").len(),
        0,
        "{described}"
    );
    assert_eq!(d["lag"], 0, "everything printed was committed: {described}");
    let listed = ok(&tidelog(&server, &["group", "list"], ""));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("g\tstream\tjobs\t0\t")),
        "{listed}"
    );
    // The committed offsets live in an internal topic: listed only with --all.
    let topics = ok(&tidelog(&server, &["topic", "list"], ""));
    assert!(topics.contains("jobs\t"), "{topics}");
    assert!(!topics.contains("__tidelog"), "{topics}");
    let all = ok(&tidelog(&server, &["topic", "list", "--all"], ""));
    assert!(all.contains("__tidelog_offsets\t"), "{all}");
    server.stop();
}

#[test]
fn consume_queue_members_share_records_and_ack_each_once() {
    let server = Server::start();
    ok(&tidelog(
        &server,
        &["topic", "create", "jobs", "--partitions", "3"],
        "",
    ));
    let a_values: Values = Default::default();
    let b_values: Values = Default::default();
    let args = [
        "consume", "jobs", "--queue", "q", "--follow", "--format", "json", "--ack",
    ];
    let mut a = follower(&server, &args, &a_values);
    let mut b = follower(&server, &args, &b_values);
    // Both members joined, then records arrive a few at a time while both poll: each
    // takes a share (a queue group gives records to whoever asks).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while group_members(&server, "q") < 2 {
        assert!(std::time::Instant::now() < deadline, "members did not join");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for chunk in 0..12 {
        let lines: String = (chunk * 50 + 1..=chunk * 50 + 50)
            .map(|i| format!("v{i}\n"))
            .collect();
        ok(&tidelog(&server, &["publish", "jobs"], &lines));
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    let both = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut all = a_values.lock().expect("lock").clone();
        all.extend(b_values.lock().expect("lock").iter().cloned());
        let n = all.len();
        *both.lock().expect("lock") = all;
        if n >= 600 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} of 600");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    wait_for_values(&both, 600);
    for child in [&mut a, &mut b] {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().expect("wait").success());
    }
    let all = both.lock().expect("lock").clone();
    assert_eq!(
        all.len(),
        600,
        "each record printed exactly once across the two members"
    );
    assert!(
        !a_values.lock().expect("lock").is_empty() && !b_values.lock().expect("lock").is_empty(),
        "both members got work"
    );
    let described = ok(&tidelog(
        &server,
        &["group", "describe", "q", "--format", "json"],
        "",
    ));
    let d: serde_json::Value = serde_json::from_str(&described).expect("json");
    assert_eq!(d["kind"], "queue");
    assert_eq!(d["lag"], 0, "every printed record was acked: {described}");
    // --nack-delay: printed, not consumed: the records are still there afterwards.
    ok(&tidelog(&server, &["publish", "jobs"], "again\n"));
    let out = ok(&tidelog(
        &server,
        &[
            "consume",
            "jobs",
            "--queue",
            "q",
            "--nack-delay",
            "60000",
            "--idle-ms",
            "300",
        ],
        "",
    ));
    assert_eq!(out, "again\n");
    let described = ok(&tidelog(
        &server,
        &["group", "describe", "q", "--format", "json"],
        "",
    ));
    let d: serde_json::Value = serde_json::from_str(&described).expect("json");
    assert_eq!(d["in_flight"], 1, "{described}");
    server.stop();
}

#[test]
fn extract_without_a_tenant_covers_every_partition_and_tenant_info_prints() {
    let server = Server::start();
    ok(&tidelog(
        &server,
        &["topic", "create", "kv", "--partitions", "3"],
        "",
    ));
    let lines: String = (0..30)
        .map(|i| {
            format!(
                "{{\"tenant\":\"t{}\",\"key\":\"k{}\",\"value\":\"v{i}\"}}\n",
                i % 5,
                i % 7
            )
        })
        .collect();
    ok(&tidelog(
        &server,
        &["publish", "kv", "--format", "json"],
        &lines,
    ));
    let out = ok(&tidelog(
        &server,
        &["extract", "kv", "--format", "json"],
        "",
    ));
    let watermarks: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|v| v["phase"] == "watermark")
        .collect();
    assert_eq!(watermarks.len(), 3, "one watermark per partition: {out}");
    let snapshot: std::collections::BTreeSet<(String, String)> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|v| v["phase"] == "snapshot")
        .map(|v| {
            (
                v["tenant"].as_str().unwrap_or("").to_string(),
                v["key"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected: std::collections::BTreeSet<(String, String)> = (0..30)
        .map(|i| (format!("t{}", i % 5), format!("k{}", i % 7)))
        .collect();
    assert_eq!(snapshot, expected, "every live (tenant, key), once");
    let info = ok(&tidelog(&server, &["topic", "tenant", "kv", "t1"], ""));
    assert!(
        info.contains("tenant t1 of kv: partition") && info.contains("events"),
        "{info}"
    );
    server.stop();
}
