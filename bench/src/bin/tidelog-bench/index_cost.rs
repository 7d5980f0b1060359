//! `index-cost`: what the tenant index costs publishing, measured as bursts to two topics
//! of one server taken in turn — one whose records all carry a tenant and a key drawn at
//! random from `--keys` (every record updates the index), one without tenant or key
//! whose values are longer by the key's bytes, so both publish the same bytes.
//!
//! Why bursts on one server rather than two separate runs: this machine's speed swings
//! by ±30 % over seconds with the host's load, more than the cost measured, so two runs a
//! minute apart compare two host phases. Bursts of a fraction of a second, in the order
//! plain, keyed, keyed, plain, plain, keyed... (each side first as often as second), see
//! the same phases. Three figures: the keyed side's records/s over the plain side's, each
//! summed over all its bursts; the same over the two sides' median burst rates (the
//! steadiest: a burst that meets the VM's memory provisioning runs at a fraction of the
//! speed, and one such burst moves the sums); and CPU per record, plain over keyed.
//!
//! Fairness: the keyed side's index work is inside its own window. After every burst the
//! index is caught up (a tenant-info request, timed with the keyed burst), then the bench
//! pauses past the server's flush interval before reading the burst back, so what the
//! burst left behind is done before the next burst starts. That is mostly a checkpoint's
//! file write: the checkpoint itself is encoded during the burst (on the indexer thread,
//! competing with the appends as it does in steady state), but it is written only once
//! the log is durable that far, which may fall in the pause — outside the keyed side's
//! wall time, inside its CPU. For a million keys that write is 8–37 ms (24 MB) once per
//! ~4 M keyed records, 1–5 % of their wall time, which the ratio of records/s leaves out
//! and the CPU ratio does not. `server_thread_ns_per_record` splits each side's server
//! CPU by thread (nanosecond `schedstat` counts): the event loop's keyed-minus-plain is
//! what the index costs the thread every publish waits for (steadier than the wall
//! clock, though the host's slow phases inflate CPU time too); in `settings` as
//! `{plain, keyed}`, while the report's top-level `cpu_seconds` and
//! `server_thread_ns_per_record` are the keyed side's, as every report's are its measured
//! run's. Both topics are prefilled
//! (untimed, `--prefill` records each), so the tenant is long-lived and its keys are in
//! the index already. Every burst is read back and verified, untimed.
//!
//! Memory: a run publishes several GB (both prefills and 2 × `--count` records). Past
//! ~2 GB of fresh page cache this VM slows to the pace at which the host hands it memory
//! (docs/BENCHMARKS.md), which would measure the host, not the index; so both topics keep
//! [`RETAIN_BYTES`] (retention), and a server the bench spawns applies retention every
//! second.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cpu::{CpuClock, CpuUse};
use crate::report::Report;
use crate::scenarios::{
    bench_key, end_offsets, histogram, prefill, read_back, run_producers_round,
};
use crate::verify::{Verdict, Verifier};
use crate::{Common, Target};
use tidelog_client::TopicSettings;

/// Longer than the server's default flush interval (500 ms): a checkpoint a burst made
/// due is written (once the log is durable that far) before the next burst.
const SETTLE: Duration = Duration::from_millis(700);

/// Retention of both topics: two 256 MiB segments beside the active one, far more than a
/// burst (read back right after it).
const RETAIN_BYTES: u64 = 512 << 20;
/// Unmeasured bursts per side, at most, until retention has deleted a segment of both
/// topics: the moment this VM's page cache first outgrows the memory it was using (and
/// starts reusing what retention frees) is then behind the measurement. Without the
/// warm-up, one burst ran at a third of the speed, always the same one, on whichever
/// side's turn it was.
const WARM_UP_BURSTS_MAX: u64 = 12;

/// One side's totals over its bursts.
#[derive(Default)]
struct Side {
    records: u64,
    bytes: u64,
    seconds: f64,
    cpu: CpuUse,
}

impl Side {
    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }

    fn cpu_per_record(&self) -> f64 {
        (self.cpu.client + self.cpu.server.unwrap_or(0.0)) / self.records.max(1) as f64
    }

    /// CPU per record in ns: {client, server} (server null when not spawned).
    fn cpu_ns(&self) -> serde_json::Value {
        let per = |s: f64| s * 1e9 / self.records.max(1) as f64;
        serde_json::json!({"client": per(self.cpu.client), "server": self.cpu.server.map(per)})
    }

    /// Server CPU per record by thread, in ns: where the index's cost lands (the event
    /// loop, `main`, appends and applies its rounds; `tidelog-indexer` grows large tables
    /// and writes checkpoints).
    fn thread_ns(&self) -> serde_json::Value {
        self.cpu.server_thread_ns_per_record(self.records)
    }
}

pub fn index_cost(
    target: &Target,
    c: &Common,
    burst: u64,
    progress: &Arc<AtomicU64>,
) -> Result<Report, String> {
    let tenant = c.tenant.clone().ok_or("index-cost needs a tenant")?;
    if c.keys == 0 {
        return Err("index-cost needs --keys > 0".into());
    }
    let keyed = Common {
        topic: format!("{}-keyed", c.topic),
        ..c.clone()
    };
    let plain = Common {
        topic: format!("{}-plain", c.topic),
        tenant: None,
        keys: 0,
        // The key's bytes and its length byte: both sides send the same bytes.
        record_size: c.record_size + bench_key(0).len() + 1,
        ..c.clone()
    };
    let client = target.connect()?;
    for side in [&plain, &keyed] {
        client
            .create_topic(
                &side.topic,
                TopicSettings {
                    partitions: side.partitions,
                    retention_bytes: RETAIN_BYTES,
                    ..TopicSettings::default()
                },
            )
            .map_err(|e| format!("create topic {}: {e}", side.topic))?;
        if c.prefill > 0 {
            prefill(target, side)?;
        }
    }
    let catch_up = || {
        client
            .tenant_info(&keyed.topic, &tenant)
            .map(|_| ())
            .map_err(|e| format!("tenant info: {e}"))
    };
    catch_up()?;
    std::thread::sleep(SETTLE);

    let burst = burst.max(1);
    let bursts = c.count.div_ceil(burst).max(1);
    let deadline = Instant::now() + c.timeout;
    let (mut totals, mut pair_ratios) = ([Side::default(), Side::default()], Vec::new());
    let mut latency = histogram();
    let mut verdict = Verdict::default();
    let mut rate = [0.0f64; 2];
    // Each side's burst rates: their medians are the figure least moved by the host (a
    // burst that meets the VM's memory provisioning runs at a fraction of the speed).
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    // Every burst in order, the warm-up's too: a burst far off its neighbours shows here.
    let mut timeline = Vec::new();
    // Bursts before the measured ones, a multiple of 4 (the order's period); none when the
    // topics stay under their retention anyway.
    let published = (c.prefill + c.count) * plain.record_size as u64;
    let mut warm_ups = (published <= RETAIN_BYTES).then_some(0);
    for j in 0.. {
        if Instant::now() > deadline {
            return Err(format!("timed out after {j} bursts"));
        }
        if warm_ups.is_none() && j % 4 == 0 {
            let trimmed = |topic: &str| -> Result<bool, String> {
                let offsets = client.offsets(topic).map_err(|e| e.to_string())?;
                Ok(offsets.iter().all(|o| o.earliest > 0))
            };
            if j >= WARM_UP_BURSTS_MAX * 2 || (trimmed(&plain.topic)? && trimmed(&keyed.topic)?) {
                warm_ups = Some(j);
            }
        }
        let warm_up = warm_ups.is_none();
        let i = j - warm_ups.unwrap_or(j);
        if i >= bursts * 2 {
            break;
        }
        let keyed_turn = keyed_turn(j);
        let side = if keyed_turn { &keyed } else { &plain };
        let n = if warm_up {
            burst
        } else {
            burst.min(c.count - (i / 2) * burst)
        };
        let this = Common {
            count: n,
            duration: None,
            ..side.clone()
        };
        let from = end_offsets(&client, side)?;
        // Every burst draws other keys (round 2 + burst).
        let round = 2 + (j / 2) as u32;
        let run = run_producers_round(target, &this, round, None, progress)?;
        let mut seconds = run.seconds;
        if keyed_turn {
            let started = Instant::now();
            catch_up()?;
            seconds += started.elapsed().as_secs_f64();
        }
        std::thread::sleep(SETTLE);
        let cpu = CpuClock::now(target.server_pid).since(&run.cpu);
        let verifier = Arc::new(Mutex::new(Verifier::new(&run.counts)));
        read_back(
            target,
            side,
            &from,
            &verifier,
            1,
            &Arc::new(AtomicU64::new(0)),
        )?;
        verdict.add(&verifier.lock().unwrap_or_else(|p| p.into_inner()).verdict());
        let records: u64 = run.counts.iter().sum();
        timeline.push(serde_json::json!({
            "side": if keyed_turn { "keyed" } else { "plain" },
            "warm_up": warm_up,
            "records": records,
            "seconds": seconds,
        }));
        if warm_up {
            continue;
        }
        if keyed_turn {
            latency.add(&run.latency).map_err(|e| e.to_string())?;
        }
        let t = &mut totals[usize::from(keyed_turn)];
        t.records += records;
        t.bytes += run.bytes;
        t.seconds += seconds;
        t.cpu.client += cpu.client;
        t.cpu.server = cpu.server.map(|s| s + t.cpu.server.unwrap_or(0.0));
        for (name, ns) in cpu.server_threads {
            *t.cpu.server_threads.entry(name).or_insert(0) += ns;
        }
        rate[usize::from(keyed_turn)] = records as f64 / seconds.max(1e-9);
        rates[usize::from(keyed_turn)].push(rate[usize::from(keyed_turn)]);
        if i % 2 == 1 {
            pair_ratios.push(rate[1] / rate[0].max(1e-9));
        }
    }
    let [p, k] = &totals;
    pair_ratios.sort_by(f64::total_cmp);
    for r in &mut rates {
        r.sort_by(f64::total_cmp);
    }
    let (plain_median, keyed_median) = (median(&rates[0]), median(&rates[1]));
    let mut settings = c.settings();
    settings["bursts_per_side"] = bursts.into();
    settings["warm_up_bursts_per_side"] = (warm_ups.unwrap_or(0) / 2).into();
    settings["burst_records"] = burst.into();
    settings["plain_record_size"] = plain.record_size.into();
    settings["plain_records_per_sec"] = p.records_per_sec().into();
    settings["keyed_records_per_sec"] = k.records_per_sec().into();
    settings["keyed_vs_plain"] = (k.records_per_sec() / p.records_per_sec().max(1e-9)).into();
    settings["keyed_vs_plain_pair_median"] = median(&pair_ratios).into();
    settings["plain_burst_median_records_per_sec"] = plain_median.into();
    settings["keyed_burst_median_records_per_sec"] = keyed_median.into();
    settings["keyed_vs_plain_burst_medians"] = (keyed_median / plain_median.max(1e-9)).into();
    settings["keyed_vs_plain_pairs"] = pair_ratios.clone().into();
    settings["cpu_ns_per_record_plain"] = p.cpu_ns();
    settings["cpu_ns_per_record_keyed"] = k.cpu_ns();
    settings["bursts"] = timeline.into();
    settings["cpu_plain_vs_keyed"] = (p.cpu_per_record() / k.cpu_per_record().max(1e-18)).into();
    settings["server_thread_ns_per_record"] =
        serde_json::json!({"plain": p.thread_ns(), "keyed": k.thread_ns()});
    Ok(Report {
        scenario: "index_cost".into(),
        records: k.records,
        bytes: k.bytes,
        seconds: k.seconds,
        latency: Some(latency),
        verdict: Some(verdict),
        cpu: Some(k.cpu.clone()),
        settings,
    })
}

/// Whether burst `j` is the keyed side's: plain keyed | keyed plain | plain keyed ...,
/// so each side goes first in half the pairs (and a drift of the host's speed over a pair
/// favours neither).
fn keyed_turn(j: u64) -> bool {
    (j % 2 == 1) == (j / 2 % 2 == 0)
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pair_has_one_burst_per_side_and_each_side_goes_first_as_often() {
        let order: String = (0..8)
            .map(|j| if keyed_turn(j) { 'k' } else { 'p' })
            .collect();
        assert_eq!(order, "pkkppkkp");
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[0.5, 0.7, 0.9]), 0.7);
        assert_eq!(median(&[0.5, 0.7, 0.9, 1.5]), 0.8);
    }
}
