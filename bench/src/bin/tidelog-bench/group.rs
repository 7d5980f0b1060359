//! The `group` scenario: a stream group of `--consumers` members consumes a filled topic
//! (every record verified exactly once and in per-producer order across the handovers of
//! the joins), then a member joins and leaves `--rebalances` times while the others keep
//! polling: the time until every member has its new assignment active.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidelog_client::{Ack, GroupConfig, GroupConsumer, StartAt};

use crate::report::Report;
use crate::scenarios::{create_topic, histogram, run_producers};
use crate::verify::Verifier;
use crate::{Common, Target};

/// What a member thread shows the scenario.
#[derive(Debug, Default)]
struct MemberView {
    assignment: Mutex<Vec<u32>>,
    settled: AtomicBool,
    stop: AtomicBool,
    done: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One member: polls, verifies, commits (async, every poll) until told to stop.
fn member(
    target: &Target,
    c: &Common,
    group: &str,
    view: &MemberView,
    verifier: &Mutex<Verifier>,
    consumed: &AtomicU64,
    progress: &AtomicU64,
) -> Result<u64, String> {
    let client = target.connect()?;
    let config = GroupConfig {
        session_timeout: Duration::from_secs(10),
        start: StartAt::Earliest,
        ..GroupConfig::default()
    };
    let mut consumer =
        GroupConsumer::join(&client, group, &c.topic, config).map_err(|e| format!("join: {e}"))?;
    let mut bytes = 0u64;
    while !view.stop.load(Ordering::Relaxed) {
        let records = consumer
            .poll(Duration::from_millis(5))
            .map_err(|e| format!("poll: {e}"))?;
        *lock(&view.assignment) = consumer.assignment();
        view.settled.store(consumer.is_settled(), Ordering::Release);
        if records.is_empty() {
            continue;
        }
        let mut v = lock(verifier);
        for r in &records {
            let value = r.value.as_deref().unwrap_or(&[]);
            v.record_payload(value);
            bytes += value.len() as u64;
        }
        drop(v);
        consumed.fetch_add(records.len() as u64, Ordering::Relaxed);
        progress.fetch_add(records.len() as u64, Ordering::Relaxed);
        // Not awaited: the next commit or the revocation commit covers the same ground.
        consumer
            .commit_async()
            .map_err(|e| format!("commit: {e}"))?;
    }
    consumer.commit().map_err(|e| format!("commit: {e}"))?;
    consumer.close().map_err(|e| format!("leave: {e}"))?;
    view.done.store(true, Ordering::Release);
    Ok(bytes)
}

/// Waits until every view is settled and the assignments cover every partition once.
fn wait_settled(
    views: &[Arc<MemberView>],
    partitions: u32,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let all_settled = views.iter().all(|v| v.settled.load(Ordering::Acquire));
        let held: Vec<u32> = views
            .iter()
            .flat_map(|v| lock(&v.assignment).clone())
            .collect();
        let distinct: BTreeSet<u32> = held.iter().copied().collect();
        if all_settled && held.len() == partitions as usize && distinct.len() == held.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the group did not settle: {} partitions held ({} distinct) of {partitions}",
                held.len(),
                distinct.len()
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

type MemberHandle = std::thread::JoinHandle<Result<u64, String>>;

pub fn group(
    target: &Target,
    c: &Common,
    rebalances: u32,
    progress: &Arc<AtomicU64>,
) -> Result<Report, String> {
    create_topic(&target.connect()?, c)?;
    // Fill every partition (one producer per partition), untimed.
    let fill = Common {
        ack: Ack::Written,
        producers: c.partitions,
        ..c.clone()
    };
    let counts = run_producers(target, &fill, None, &Arc::new(AtomicU64::new(0)))?.counts;
    let total: u64 = counts.iter().sum();
    let verifier = Arc::new(Mutex::new(Verifier::new(&counts)));
    let consumed = Arc::new(AtomicU64::new(0));
    let group = format!("{}-group", c.topic);
    let deadline = Instant::now() + c.timeout;
    let spawn = |view: Arc<MemberView>| -> MemberHandle {
        let (target, c, group, verifier, consumed, progress) = (
            target.clone(),
            c.clone(),
            group.clone(),
            verifier.clone(),
            consumed.clone(),
            progress.clone(),
        );
        std::thread::spawn(move || {
            member(&target, &c, &group, &view, &verifier, &consumed, &progress)
        })
    };
    let started = Instant::now();
    let views: Vec<Arc<MemberView>> = (0..c.consumers).map(|_| Arc::default()).collect();
    let mut handles: Vec<MemberHandle> = views.iter().map(|v| spawn(v.clone())).collect();
    while consumed.load(Ordering::Relaxed) < total {
        if Instant::now() > deadline || handles.iter().any(|h| h.is_finished()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let seconds = started.elapsed().as_secs_f64();

    // Rebalances: a member joins, then leaves; the others keep polling throughout.
    wait_settled(&views, c.partitions, deadline)?;
    let (mut join_ms, mut leave_ms) = (histogram(), histogram());
    for _ in 0..rebalances {
        let extra: Arc<MemberView> = Arc::default();
        let t = Instant::now();
        let h = spawn(extra.clone());
        let mut all = views.clone();
        all.push(extra.clone());
        wait_settled(&all, c.partitions, deadline)?;
        let _ = join_ms.record(t.elapsed().as_micros().max(1) as u64);
        let t = Instant::now();
        extra.stop.store(true, Ordering::Relaxed);
        while !extra.done.load(Ordering::Acquire) && !h.is_finished() {
            std::thread::sleep(Duration::from_micros(100));
        }
        wait_settled(&views, c.partitions, deadline)?;
        let _ = leave_ms.record(t.elapsed().as_micros().max(1) as u64);
        h.join().map_err(|_| "a member panicked".to_string())??;
    }
    for v in &views {
        v.stop.store(true, Ordering::Relaxed);
    }
    let mut bytes = 0;
    for h in handles.drain(..) {
        bytes += h.join().map_err(|_| "a member panicked".to_string())??;
    }
    let verdict = lock(&verifier).verdict();
    let mut settings = c.settings();
    settings["members"] = c.consumers.into();
    settings["rebalances"] = rebalances.into();
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    if rebalances > 0 {
        settings["rebalance_join_ms"] =
            serde_json::json!({"p50": ms(&join_ms, 0.5), "max": join_ms.max() as f64 / 1000.0});
        settings["rebalance_leave_ms"] =
            serde_json::json!({"p50": ms(&leave_ms, 0.5), "max": leave_ms.max() as f64 / 1000.0});
    }
    Ok(Report {
        scenario: "group".into(),
        records: consumed.load(Ordering::Relaxed),
        bytes,
        seconds,
        latency: None,
        verdict: Some(verdict),
        cpu: None,
        settings,
    })
}
