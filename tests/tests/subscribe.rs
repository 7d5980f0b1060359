//! Subscriptions through the real server: every record published after subscribing
//! arrives in order with no gap across segment rolls; tenant filters; a subscriber that
//! grants no credit costs bounded memory and does not slow the others.

use std::time::{Duration, Instant};

use tidelog_client::{
    build_batch, Ack, ProducerStamp, Record, StartAt, TopicSettings, WINDOW_BYTES_DEFAULT,
};
use tidelog_e2e::{create_topic, publish_batch, Server};
use tidelog_protocol::Request;

fn batch(first: u64, n: u64, tenant: Option<&str>, value_len: usize) -> Vec<u8> {
    let records: Vec<Record> = (first..first + n)
        .map(|i| {
            let mut value = i.to_le_bytes().to_vec();
            value.resize(value_len.max(8), b'x');
            Record {
                timestamp_ms: i as i64,
                tenant: tenant.map(|t| t.as_bytes().to_vec()),
                value: Some(value),
                ..Record::default()
            }
        })
        .collect();
    build_batch(&records, ProducerStamp::default())
}

fn number(value: &[u8]) -> u64 {
    u64::from_le_bytes(value[..8].try_into().expect("8 bytes"))
}

#[test]
fn subscriber_sees_everything_after_it_subscribed_across_segment_rolls() {
    let server = Server::start();
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
    // Records before the subscription must not be delivered.
    client
        .publish("t", 0, Ack::Written, &batch(0, 50, None, 100))
        .expect("publish");
    let mut sub = server
        .client()
        .subscribe("t", 0, StartAt::Latest, None, WINDOW_BYTES_DEFAULT)
        .expect("subscribe");
    assert_eq!(sub.position(), 50);
    let producer = std::thread::spawn(move || {
        let mut n = 50;
        for i in 0..400u64 {
            client
                .publish("t", 0, Ack::Written, &batch(n, 1 + i % 9, None, 300))
                .expect("publish");
            n += 1 + i % 9;
        }
        (
            client.describe_topic("t").expect("describe").partitions[0].segments,
            n,
        )
    });
    let (segments, end) = {
        let mut expected = 50u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut result = None;
        while Instant::now() < deadline {
            if producer.is_finished() && result.is_none() {
                result = Some(());
            }
            match sub
                .next_timeout(Duration::from_millis(200))
                .expect("subscription")
            {
                Some(r) => {
                    assert_eq!(r.offset, expected, "in order, no gap, no duplicate");
                    assert_eq!(number(r.value.as_deref().expect("value")), expected);
                    expected += 1;
                }
                None if result.is_some() => break,
                None => {}
            }
        }
        let (segments, end) = producer.join().expect("producer");
        assert_eq!(
            expected, end,
            "every record published after subscribing arrived"
        );
        (segments, end)
    };
    assert!(
        segments > 3,
        "the test crossed segment rolls ({segments} segments)"
    );
    assert!(end > 1500);
    server.stop();
}

#[test]
fn tenant_filtered_subscription_gets_only_that_tenant() {
    let server = Server::start();
    let client = server.client();
    create_topic(&client, "t", 1);
    let mut sub = server
        .client()
        .subscribe(
            "t",
            0,
            StartAt::Earliest,
            Some(b"acme"),
            WINDOW_BYTES_DEFAULT,
        )
        .expect("subscribe");
    // Uniform batches of both tenants, and a mixed batch.
    client
        .publish("t", 0, Ack::Written, &batch(0, 5, Some("acme"), 10))
        .expect("publish");
    client
        .publish("t", 0, Ack::Written, &batch(5, 5, Some("zeta"), 10))
        .expect("publish");
    let mixed: Vec<Record> = (10..16u64)
        .map(|i| Record {
            tenant: Some(if i % 2 == 0 {
                b"acme".to_vec()
            } else {
                b"zeta".to_vec()
            }),
            value: Some(i.to_le_bytes().to_vec()),
            ..Record::default()
        })
        .collect();
    publish_batch(&client, "t", 0, &mixed);
    let mut got = Vec::new();
    while got.len() < 8 {
        let r = sub
            .next_timeout(Duration::from_secs(10))
            .expect("sub")
            .expect("a record in time");
        assert_eq!(r.tenant.as_deref(), Some(&b"acme"[..]));
        got.push(r.offset);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4, 10, 12, 14]);
    assert!(sub
        .next_timeout(Duration::from_millis(300))
        .expect("sub")
        .is_none());
    server.stop();
}

#[test]
fn a_slow_subscriber_costs_bounded_memory_and_does_not_slow_others() {
    let total_bytes: u64 = std::env::var("TIDELOG_SLOW_SUBSCRIBER_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let server = Server::start();
    let client = server.client();
    create_topic(&client, "t", 1);
    // The slow one: subscribes with 1 MiB of credit and never grants more or reads.
    let slow = server.client();
    let slow_request = Request::Subscribe {
        subscription: 77,
        topic: "t",
        partition: 0,
        start: StartAt::Earliest,
        credit_bytes: 1 << 20,
        tenant: None,
        filter: Default::default(),
    };
    slow.request(&slow_request).expect("slow subscribe");
    let mut fast = server
        .client()
        .subscribe("t", 0, StartAt::Earliest, None, WINDOW_BYTES_DEFAULT)
        .expect("subscribe");

    let rss_before = server.rss_anon_kib();
    let one = batch(0, 64, None, 16 << 10); // ~1 MiB per batch
    let batches = total_bytes / one.len() as u64;
    let producer = std::thread::spawn(move || {
        for _ in 0..batches {
            client.publish("t", 0, Ack::None, &one).expect("publish");
        }
        client.ping().expect("ping"); // every publish before it has been handled
    });
    let mut seen = 0u64;
    let mut rss_max = 0;
    let expected = batches * 64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < expected && Instant::now() < deadline {
        if let Some(r) = fast
            .next_timeout(Duration::from_secs(5))
            .expect("fast subscriber")
        {
            assert_eq!(r.offset, seen, "the fast subscriber keeps up, in order");
            seen += 1;
            if seen % 4096 == 0 {
                rss_max = rss_max.max(server.rss_anon_kib());
            }
        }
    }
    producer.join().expect("producer");
    assert_eq!(seen, expected, "the fast subscriber got everything");
    rss_max = rss_max.max(server.rss_anon_kib());
    // The log grew by `total_bytes`; the server's heap did not follow it.
    let growth_kib = rss_max.saturating_sub(rss_before);
    assert!(
        growth_kib < 256 << 10,
        "server heap grew by {growth_kib} KiB while {total_bytes} bytes went by a stalled subscriber"
    );
    server.stop();
}

/// Criteria on a subscription are applied by the server: only matching records are sent
/// (and count against the credit), each at its offset, in order.
#[test]
fn a_filtered_subscription_receives_only_matching_records() {
    let server = Server::start();
    let client = server.client();
    create_topic(&client, "t", 1);
    let records: Vec<Record> = (0..300u64)
        .map(|i| Record {
            timestamp_ms: 1_000 + i as i64,
            tenant: Some(if i % 3 == 0 {
                b"acme".to_vec()
            } else {
                b"zeta".to_vec()
            }),
            key: Some(format!("{}-{i}", if i % 2 == 0 { "doc" } else { "img" }).into_bytes()),
            value: Some(i.to_le_bytes().to_vec()),
            headers: vec![(
                b"type".to_vec(),
                if i % 5 == 0 {
                    b"share".to_vec()
                } else {
                    b"upload".to_vec()
                },
            )],
        })
        .collect();
    for chunk in records.chunks(37) {
        publish_batch(&client, "t", 0, chunk);
    }
    let criteria = tidelog_client::ExtractCriteria {
        since_ms: Some(1_050),
        until_ms: Some(1_250),
        key_prefix: Some("doc".into()),
        headers: vec![("type".into(), "share".into())],
    };
    let mut sub = server
        .client()
        .subscribe_filtered("t", 0, StartAt::Earliest, Some(b"acme"), &criteria, 1 << 20)
        .expect("subscribe");
    let expected: Vec<u64> = (0..300u64)
        .filter(|i| i % 3 == 0 && i % 2 == 0 && i % 5 == 0 && (50..=250).contains(i))
        .collect();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let r = sub
            .next_timeout(Duration::from_secs(10))
            .expect("record")
            .expect("in time");
        assert_eq!(
            number(r.value.as_deref().expect("value")),
            r.offset,
            "record at its offset"
        );
        got.push(r.offset);
    }
    assert_eq!(got, expected);
    assert!(
        sub.next_timeout(Duration::from_millis(300))
            .expect("none")
            .is_none(),
        "nothing else is sent"
    );
}
