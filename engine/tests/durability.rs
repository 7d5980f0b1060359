//! Durability: group commit shares syncs among concurrent durable appenders; a failed
//! sync poisons the partition instead of acknowledging data the kernel may have dropped.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tidelog_engine::fsio::{SyncHook, SyncPolicy};
use tidelog_engine::{AckLevel, Change, Engine, EngineConfig, EngineError, Watcher};

#[derive(Debug, Default)]
struct FailingSync {
    fail: AtomicBool,
}

impl SyncHook for FailingSync {
    fn before_sync(&self, _path: &Path) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected EIO"))
        } else {
            Ok(())
        }
    }
}

#[test]
fn failed_sync_poisons_the_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Arc::new(FailingSync::default());
    let config = EngineConfig {
        sync: SyncPolicy {
            hook: Some(hook.clone()),
        },
        flush_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    {
        let engine = Engine::open(dir.path(), config.clone()).expect("open");
        engine
            .create_topic("t", small_topic(64 << 10))
            .expect("create");
        engine
            .append("t", 0, &batch_of(0, 5, 10), AckLevel::Durable)
            .expect("durable ok");
        hook.fail.store(true, Ordering::SeqCst);
        let err = engine
            .append("t", 0, &batch_of(5, 5, 10), AckLevel::Durable)
            .expect_err("sync fails");
        assert!(matches!(err, EngineError::Poisoned { .. }), "{err}");
        let p = partition0(&engine, "t");
        assert!(p.is_poisoned());
        assert_eq!(
            p.durable_offset(),
            5,
            "nothing past the failed sync is reported durable"
        );
        assert!(matches!(
            p.append(&batch_of(10, 1, 10)),
            Err(EngineError::Poisoned { .. })
        ));
    }
    hook.fail.store(false, Ordering::SeqCst);
    // Reopening clears the poison; what was durable is there.
    let engine = Engine::open(dir.path(), config).expect("reopen");
    let p = partition0(&engine, "t");
    assert!(p.next_offset() >= 5);
    assert_eq!(
        read_all(&p)[..5],
        (0..5).map(|i| (i, i)).collect::<Vec<_>>()[..]
    );
    p.append(&batch_of(100, 1, 10)).expect("writes again");
}

#[test]
fn group_commit_shares_syncs_between_concurrent_appenders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(
        Engine::open(
            dir.path(),
            EngineConfig {
                flush_interval: Duration::from_secs(3600),
                ..EngineConfig::default()
            },
        )
        .expect("open"),
    );
    engine
        .create_topic("t", small_topic(16 << 20))
        .expect("create");
    let threads = 32;
    let per_thread = 40;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let a = engine
                        .append("t", 0, &batch_of(t * 1000 + i, 3, 100), AckLevel::Durable)
                        .expect("durable append");
                    let p = engine.partition("t", 0).expect("p");
                    assert!(
                        p.durable_offset() > a.last_offset,
                        "acknowledged only once durable"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let appends = threads * per_thread;
    let syncs = engine.sync_count();
    // Every append was durable; with 32 concurrent appenders the flusher must have
    // batched them: strictly fewer syncs than appends (ratio, not timing).
    assert!(
        syncs < appends,
        "{syncs} syncs for {appends} durable appends"
    );
    assert_eq!(
        engine.partition("t", 0).expect("p").durable_offset(),
        appends * 3
    );
}

#[derive(Default)]
struct Recorder {
    events: std::sync::Mutex<Vec<(String, u32, Change)>>,
}

impl Watcher for Recorder {
    fn on_change(&self, topic: &str, partition: u32, change: Change) {
        self.events
            .lock()
            .expect("lock")
            .push((topic.to_string(), partition, change));
    }
}

#[test]
fn watchers_learn_of_appends_and_durability() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let recorder = Arc::new(Recorder::default());
    assert!(engine.set_watcher(recorder.clone()));
    engine
        .create_topic("t", small_topic(64 << 10))
        .expect("create");
    engine
        .append("t", 0, &batch_of(0, 3, 10), AckLevel::Durable)
        .expect("append");
    let events = recorder.events.lock().expect("lock").clone();
    assert!(events.contains(&("t".into(), 0, Change::Appended { next_offset: 3 })));
    assert!(events.contains(&("t".into(), 0, Change::Durable { durable_offset: 3 })));
    // Blocking long-poll style wait wakes on append from another thread.
    let p = partition0(&engine, "t");
    let p2 = p.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        p2.append(&batch_of(3, 1, 10)).expect("append");
    });
    assert!(p.wait_for_data(3, std::time::Instant::now() + Duration::from_secs(10)));
    writer.join().expect("join");
}
