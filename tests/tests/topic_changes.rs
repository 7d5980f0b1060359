//! Topic changes (create, delete, add partitions) make and remove files — a preallocated,
//! synced segment per partition — on the server's worker thread, not its event loop: made
//! slow (3 s each, `--slow-disk-ms`), a create keeps no other client waiting, while the
//! requests its own connection pipelined behind it still run after it, in order.

use std::time::{Duration, Instant};

use tidelog_client::{Ack, Record, StartAt, TopicSettings};
use tidelog_e2e::{create_topic, publish_batch, Server};
use tidelog_protocol::Request;

const DELAY: Duration = Duration::from_secs(3);

#[test]
fn a_slow_topic_change_holds_up_only_its_own_connection() {
    let server = Server::start_with(&["--slow-disk-ms", "3000"]);
    let other = server.client();
    // Made before the clock starts (itself slow).
    create_topic(&other, "live", 1);

    let admin = server.client();
    let started = Instant::now();
    let create = admin
        .send(&Request::CreateTopic {
            name: "new",
            settings: TopicSettings {
                partitions: 4,
                ..TopicSettings::default()
            },
        })
        .expect("send create")
        .expect("a create is answered");
    // Pipelined behind the create, on the same connection: runs once the topic exists.
    let batch = tidelog_client::build_batch(
        &[Record::value(7, "first")],
        tidelog_client::ProducerStamp::default(),
    );
    let behind = admin
        .send(&Request::Publish {
            topic: "new",
            partition: 2,
            ack: Ack::Written,
            batches: &batch,
        })
        .expect("send publish")
        .expect("a written publish is answered");

    // Meanwhile another client publishes and reads.
    std::thread::sleep(Duration::from_millis(200));
    let offset = publish_batch(&other, "live", 0, &[Record::value(1, "meanwhile")]);
    let read = other
        .fetch(
            "live",
            0,
            StartAt::Offset(offset),
            1 << 20,
            Duration::ZERO,
            None,
        )
        .expect("fetch");
    assert_eq!(read.records.len(), 1);
    other.ping().expect("ping");
    let others_done = started.elapsed();

    let created = create.wait().expect("create answered");
    let created_at = started.elapsed();
    assert!(created.error().is_none(), "create: {:?}", created.error());
    let published = tidelog_client::published(behind.wait().expect("publish answered"))
        .expect("the publish behind the create finds the topic");
    assert_eq!(published[0].base_offset, 0);
    assert!(
        created_at >= DELAY - Duration::from_millis(100),
        "the create went to the worker ({created_at:?})"
    );
    assert!(
        others_done < created_at,
        "another client was served while the create was slow ({others_done:?} vs {created_at:?})"
    );

    // Deleting and growing go the same way, and work.
    admin.add_partitions("new", 6).expect("add partitions");
    assert_eq!(
        admin
            .describe_topic("new")
            .expect("describe")
            .partitions
            .len(),
        6
    );
    admin.delete_topic("new").expect("delete");
    assert!(admin.describe_topic("new").is_err(), "deleted");
    server.stop();
}
