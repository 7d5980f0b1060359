//! Topic changes make and remove files outside the topic map's lock: an appender looking
//! its partition up while another thread creates a topic of many partitions is not kept
//! waiting for that.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use tidelog_engine::{Engine, TopicConfig};

#[test]
fn lookups_do_not_wait_for_a_topic_being_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), quick_config()).expect("open"));
    engine
        .create_topic("live", small_topic(1 << 20))
        .expect("create live");
    let done = Arc::new(AtomicBool::new(false));
    let creating = {
        let (engine, done) = (engine.clone(), done.clone());
        std::thread::spawn(move || {
            let config = TopicConfig {
                partitions: 256,
                ..small_topic(1 << 20)
            };
            engine.create_topic("wide", config).expect("create wide");
            done.store(true, Ordering::SeqCst);
        })
    };
    // Its first partition on disk: the create is under way, with 255 more to make.
    let first = dir.path().join("topics/wide/0");
    while !first.exists() {
        assert!(!done.load(Ordering::SeqCst), "the create ran past unseen");
        std::hint::spin_loop();
    }
    let p = engine.partition("live", 0).expect("lookup while creating");
    let answered_while_creating = !done.load(Ordering::SeqCst);
    p.append(&batch_of(0, 1, 10))
        .expect("append while creating");
    creating.join().expect("create thread");
    assert!(
        answered_while_creating,
        "the lookup waited for the whole create (the map's lock was held while files were made)"
    );
    assert_eq!(
        engine
            .describe_topic("wide")
            .expect("created")
            .partitions
            .len(),
        256
    );
    match Arc::try_unwrap(engine) {
        Ok(engine) => engine.close().expect("close"),
        Err(_) => panic!("engine still shared"),
    }
}
