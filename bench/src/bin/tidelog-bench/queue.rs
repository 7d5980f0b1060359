//! The `queue` scenario: a queue group of `--consumers` members drains a filled topic,
//! acking every record (settlements batched: sent with each member's next poll). Every
//! record is verified delivered and acked exactly once (order is not checked: a queue
//! group spreads one partition's records over its members).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidelog_client::{Ack, QueueConfig, QueueConsumer};

use crate::report::Report;
use crate::scenarios::{create_topic, run_producers};
use crate::verify::Verifier;
use crate::{Common, Target};

pub fn queue(
    target: &Target,
    c: &Common,
    poll_records: u32,
    progress: &Arc<AtomicU64>,
) -> Result<Report, String> {
    create_topic(&target.connect()?, c)?;
    let fill = Common {
        ack: Ack::Written,
        producers: c.producers.max(c.partitions),
        ..c.clone()
    };
    let counts = run_producers(target, &fill, None, &Arc::new(AtomicU64::new(0)))?.counts;
    let total: u64 = counts.iter().sum();
    let verifier = Arc::new(Mutex::new(Verifier::new(&counts)));
    let acked = Arc::new(AtomicU64::new(0));
    let group = format!("{}-queue", c.topic);
    let deadline = Instant::now() + c.timeout;
    let started = Instant::now();
    let handles: Vec<_> = (0..c.consumers)
        .map(|_| {
            let (target, c, group, verifier, acked, progress) = (
                target.clone(),
                c.clone(),
                group.clone(),
                verifier.clone(),
                acked.clone(),
                progress.clone(),
            );
            std::thread::spawn(move || -> Result<u64, String> {
                let client = target.connect()?;
                let mut q = QueueConsumer::join(&client, &group, &c.topic, &QueueConfig::default())
                    .map_err(|e| format!("join: {e}"))?;
                let mut bytes = 0u64;
                while acked.load(Ordering::Relaxed) < total && Instant::now() < deadline {
                    let batch = q
                        .poll(poll_records, Duration::from_millis(20))
                        .map_err(|e| format!("poll: {e}"))?;
                    if batch.is_empty() {
                        continue;
                    }
                    let mut v = verifier.lock().unwrap_or_else(|p| p.into_inner());
                    for r in &batch {
                        let value = r.record.value.as_deref().unwrap_or(&[]);
                        v.record_payload(value);
                        bytes += value.len() as u64;
                        q.ack(r);
                    }
                    drop(v);
                    acked.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    progress.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                q.flush().map_err(|e| format!("settle: {e}"))?;
                let refused = q.take_refused();
                if !refused.is_empty() {
                    return Err(format!(
                        "{} acks refused, e.g. {:?}",
                        refused.len(),
                        refused[0]
                    ));
                }
                q.close().map_err(|e| format!("leave: {e}"))?;
                Ok(bytes)
            })
        })
        .collect();
    let mut bytes = 0;
    for h in handles {
        bytes += h.join().map_err(|_| "a consumer panicked".to_string())??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut verdict = verifier.lock().unwrap_or_else(|p| p.into_inner()).verdict();
    // Members receive one partition's records in parallel: order across them is not a
    // property of queue groups.
    verdict.out_of_order = 0;
    let info = target
        .connect()?
        .group_describe(&group)
        .map_err(|e| format!("describe: {e}"))?;
    let unsettled: u64 = info.partitions.iter().map(|p| p.lag).sum();
    if unsettled > 0 {
        verdict.missing += unsettled;
    }
    let mut settings = c.settings();
    settings["poll_records"] = poll_records.into();
    settings["group_lag_after"] = unsettled.into();
    Ok(Report {
        scenario: "queue".into(),
        records: acked.load(Ordering::Relaxed),
        bytes,
        seconds,
        latency: None,
        verdict: Some(verdict),
        cpu: None,
        settings,
    })
}
