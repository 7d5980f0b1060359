//! Compaction through the real server: a `compact` topic created from the CLI shrinks as
//! the server compacts it in the background, consumers read it across the gaps with
//! offsets preserved, and the replayed state and the tenant's extraction are unchanged.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use tidelog_client::{Record, StartAt};
use tidelog_e2e::{binary, publish_batch, Server};

#[test]
fn a_compact_topic_shrinks_in_the_background_and_keeps_its_state() {
    let server = Server::start_with(&["--cleanup-interval-ms", "100"]);
    let out = Command::new(binary())
        .args([
            "topic",
            "create",
            "kv",
            "--segment-bytes",
            "65536",
            "--cleanup-policy",
            "compact",
        ])
        .env("TIDELOG_SERVER", server.addr.to_string())
        .output()
        .expect("topic create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = server.client();
    let mut latest: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for round in 0..200u64 {
        let records: Vec<Record> = (0..10u64)
            .map(|k| Record {
                timestamp_ms: tidelog_engine_now(),
                tenant: Some(b"acme".to_vec()),
                key: Some(format!("key-{k}").into_bytes()),
                value: Some(format!("{round}:{}", "v".repeat(1000)).into_bytes()),
                headers: Vec::new(),
            })
            .collect();
        let published = publish_batch(&client, "kv", 0, &records);
        let base = published;
        for k in 0..10u64 {
            latest.insert(format!("key-{k}"), (base + k, format!("{round}:")));
        }
    }
    let size = |c: &tidelog_client::Client| -> u64 {
        c.describe_topic("kv").expect("describe").partitions[0].size_bytes
    };
    let before = size(&client);
    let deadline = Instant::now() + Duration::from_secs(60);
    while size(&client) > before / 2 {
        assert!(
            Instant::now() < deadline,
            "not compacted: {} of {before} bytes",
            size(&client)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let described = Command::new(binary())
        .args(["topic", "describe", "kv"])
        .env("TIDELOG_SERVER", server.addr.to_string())
        .output()
        .expect("describe");
    assert!(String::from_utf8_lossy(&described.stdout).contains("cleanup compact"));
    // Read everything from earliest across the gaps: offsets increase, every key's latest
    // record is there at its offset, and replaying gives the same state.
    let mut state: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let (mut at, mut read, mut last) = (0u64, 0usize, None);
    loop {
        let f = client
            .fetch("kv", 0, StartAt::Offset(at), 1 << 20, Duration::ZERO, None)
            .expect("fetch");
        for r in &f.records {
            assert!(last.is_none_or(|l| r.offset > l), "offsets increase");
            last = Some(r.offset);
            read += 1;
            let value = String::from_utf8_lossy(r.value.as_deref().expect("value")).into_owned();
            let round = value.split(':').next().expect("round").to_string() + ":";
            state.insert(
                String::from_utf8_lossy(r.key.as_deref().expect("key")).into_owned(),
                (r.offset, round),
            );
        }
        if f.next_offset >= f.high_watermark {
            break;
        }
        at = f.next_offset;
    }
    assert_eq!(
        state, latest,
        "the replayed state is the latest record of every key, at its offset"
    );
    assert!(
        read < 2000 / 2,
        "compaction removed superseded records ({read} of 2000 left)"
    );
    server.stop();
}

fn tidelog_engine_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
