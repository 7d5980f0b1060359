//! The scenarios: `publish`, `consume`, `e2e`. Every one ends with the correctness check:
//! what was published is read back (or received) and verified record by record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tidelog_client::{
    build_batch, Ack, Client, ProducerStamp, Record, StartAt, TopicSettings, WINDOW_BYTES_DEFAULT,
};

use crate::cpu::CpuClock;
use crate::payload;
use crate::report::Report;
use crate::verify::Verifier;
use crate::{Common, Target};

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records each producer sends: `count` split evenly.
fn shares(count: u64, producers: u32) -> Vec<u64> {
    let p = u64::from(producers.max(1));
    (0..p)
        .map(|i| count / p + u64::from(i < count % p))
        .collect()
}

pub fn create_topic(client: &Client, c: &Common) -> Result<(), String> {
    client
        .create_topic(
            &c.topic,
            TopicSettings {
                partitions: c.partitions,
                ..TopicSettings::default()
            },
        )
        .map_err(|e| format!("create topic {}: {e}", c.topic))
}

/// One producer: up to `count` records (and at most `duration`) to one partition, `batch`
/// per publish, `in_flight` publishes pipelined, optionally paced to `rate` records/s.
/// Returns records and bytes of values sent, and the publish→ack latency histogram
/// (empty with ack `none`).
#[allow(clippy::too_many_arguments)]
fn produce(
    target: &Target,
    c: &Common,
    producer: u32,
    mut keys: Option<KeyDraws>,
    count: u64,
    rate: Option<f64>,
    progress: &AtomicU64,
) -> Result<(u64, u64, Histogram<u64>), String> {
    let client = target.connect()?;
    // A tenant's records all go to its partition (as every client routes them).
    let partition = c.tenant.as_deref().map_or(producer % c.partitions, |t| {
        tidelog_protocol::partitioner::partition_for(Some(t), None, c.partitions).unwrap_or(0)
    });
    let mut latency = histogram();
    let mut pending = VecDeque::new();
    let mut template: Option<Template> = None;
    let started = Instant::now();
    let deadline = c.duration.map(|d| started + d);
    let mut bytes = 0u64;
    let mut seq = 0u64;
    while seq < count && deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(seq as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let n = (c.batch as u64).min(count - seq);
        if template.as_ref().is_none_or(|t| t.records != n as usize) {
            template = Some(Template::new(n as usize, c, producer));
        }
        let t = template.as_mut().expect("just built");
        let batch = t.fill(seq, payload::now_ns(), keys.as_mut());
        let reply = client
            .send(&tidelog_protocol::Request::Publish {
                topic: &c.topic,
                partition,
                ack: c.ack,
                batches: batch,
            })
            .map_err(|e| format!("publish: {e}"))?;
        if let Some(r) = reply {
            pending.push_back((Instant::now(), r));
        }
        while pending.len() >= c.in_flight.max(1) {
            finish(&mut pending, &mut latency)?;
        }
        seq += n;
        bytes += n * c.record_size as u64;
        progress.fetch_add(n, Ordering::Relaxed);
    }
    while !pending.is_empty() {
        finish(&mut pending, &mut latency)?;
    }
    if c.ack == Ack::None {
        client.ping().map_err(|e| format!("ping: {e}"))?; // every publish handled
    }
    Ok((seq, bytes, latency))
}

/// A batch built once per producer and refilled for every publish: each record's value
/// gets its sequence number and send time, the header its timestamps, and the CRC is
/// recomputed — the bytes a real producer would send, without re-encoding every record.
struct Template {
    records: usize,
    bytes: Vec<u8>,
    /// Start of each record's value within `bytes`.
    value_at: Vec<usize>,
    /// Start of each record's key's digits within `bytes` (empty without keys).
    key_at: Vec<usize>,
}

/// Digits of the keys a producer's records get, drawn at random before the clock starts
/// (a real producer has its keys in hand: making them must not weigh on the figure),
/// used in turn and cyclically.
struct KeyDraws {
    digits: Vec<[u8; 10]>,
    next: usize,
}

/// Keys drawn ahead by all producers of a run together, at most (10 bytes each; a run
/// longer than this reuses its draws in the same order).
const KEY_DRAWS_MAX: u64 = 1 << 22;

/// "00" to "99": the decimal digits of every number below 100, two bytes each.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

impl KeyDraws {
    /// `n` keys drawn uniformly from `keys` by xorshift64 from `seed` (the same draws
    /// every run).
    fn new(keys: u64, n: u64, seed: u64) -> KeyDraws {
        // xorshift64 stays at 0 from 0.
        let mut draw = if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        };
        let digits = (0..n.max(1))
            .map(|_| {
                draw ^= draw << 13;
                draw ^= draw >> 7;
                draw ^= draw << 17;
                // Lemire's multiply-shift: onto 0..keys without a division.
                let mut k = ((u128::from(draw) * u128::from(keys)) >> 64) as u64;
                let mut d = [0u8; 10];
                for pair in d.chunks_exact_mut(2).rev() {
                    let two = (k % 100) as usize * 2;
                    pair.copy_from_slice(&DIGIT_PAIRS[two..two + 2]);
                    k /= 100;
                }
                d
            })
            .collect();
        KeyDraws { digits, next: 0 }
    }

    /// The next `n` draws, in order, wrapping around at the end: two slices (the second
    /// empty unless they wrap), so that filling a batch costs no check per key beyond
    /// the copy's (a division or a wrap test per record was a fifth of the producer's
    /// loop in a keyed run, CPU the figure must not pay for).
    fn take(&mut self, n: usize) -> (&[[u8; 10]], &[[u8; 10]]) {
        let len = self.digits.len();
        let n = n.min(len);
        let i = self.next;
        let first = n.min(len - i);
        self.next = (i + n) % len;
        (&self.digits[i..i + first], &self.digits[..n - first])
    }
}

/// A key as the bench writes it: fixed width, so it can be rewritten in place.
pub(crate) fn bench_key(n: u64) -> String {
    format!("key-{n:010}")
}

impl Template {
    fn new(records: usize, c: &Common, producer: u32) -> Template {
        let mut value = Vec::new();
        payload::write(&mut value, c.record_size, producer, 0, 0);
        let keyed = c.tenant.is_some() && c.keys > 0;
        let list: Vec<Record> = (0..records)
            .map(|_| Record {
                value: Some(value.clone()),
                tenant: c.tenant.clone(),
                key: keyed.then(|| bench_key(0).into_bytes()),
                ..Record::default()
            })
            .collect();
        let bytes = build_batch(&list, ProducerStamp::default());
        let view = tidelog_protocol::batch::validate(&bytes).expect("a built batch is valid");
        let base = bytes.as_ptr() as usize;
        let (mut value_at, mut key_at) = (Vec::new(), Vec::new());
        for r in view.records() {
            let r = r.expect("valid");
            value_at.push(r.value.expect("has a value").as_ptr() as usize - base);
            if let Some(key) = r.key {
                key_at.push(key.as_ptr() as usize - base + "key-".len());
            }
        }
        Template {
            records,
            bytes,
            value_at,
            key_at,
        }
    }

    /// The batch for records `first_seq..`, sent at `sent_ns`, keyed from `keys`.
    fn fill(&mut self, first_seq: u64, sent_ns: u64, keys: Option<&mut KeyDraws>) -> &[u8] {
        use tidelog_protocol::batch::{
            CRC_AT, CRC_COVERED_FROM, FIRST_TIMESTAMP_AT, MAX_TIMESTAMP_AT,
        };
        for (i, &at) in self.value_at.iter().enumerate() {
            self.bytes[at + 4..at + 12].copy_from_slice(&(first_seq + i as u64).to_le_bytes());
            self.bytes[at + 12..at + 20].copy_from_slice(&sent_ns.to_le_bytes());
        }
        if let Some(keys) = keys {
            let (a, b) = keys.take(self.key_at.len());
            for (&at, digits) in self.key_at.iter().zip(a.iter().chain(b)) {
                self.bytes[at..at + 10].copy_from_slice(digits);
            }
        }
        let ts = ((sent_ns / 1_000_000) as i64).to_le_bytes();
        self.bytes[FIRST_TIMESTAMP_AT..FIRST_TIMESTAMP_AT + 8].copy_from_slice(&ts);
        self.bytes[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&ts);
        let crc = crc32fast::hash(&self.bytes[CRC_COVERED_FROM..]);
        self.bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        &self.bytes
    }
}

fn finish(
    pending: &mut VecDeque<(Instant, tidelog_client::PendingReply)>,
    latency: &mut Histogram<u64>,
) -> Result<(), String> {
    if let Some((sent, reply)) = pending.pop_front() {
        let frame = reply.wait().map_err(|e| format!("publish: {e}"))?;
        tidelog_client::published(frame).map_err(|e| format!("publish: {e}"))?;
        let _ = latency.record(sent.elapsed().as_micros().max(1) as u64);
    }
    Ok(())
}

/// What a run of the producers did.
pub struct Produced {
    /// Records sent, by producer.
    pub counts: Vec<u64>,
    pub bytes: u64,
    pub seconds: f64,
    /// Publish → ack.
    pub latency: Histogram<u64>,
    /// CPU spent over the same window (keys are drawn before it starts).
    pub cpu: CpuClock,
}

/// Runs the producers.
pub fn run_producers(
    target: &Target,
    c: &Common,
    rate: Option<f64>,
    progress: &Arc<AtomicU64>,
) -> Result<Produced, String> {
    run_producers_round(target, c, 0, rate, progress)
}

/// [`run_producers`], drawing keys for `round` (0 for the measured run; a prefill
/// draws others).
pub(crate) fn run_producers_round(
    target: &Target,
    c: &Common,
    round: u32,
    rate: Option<f64>,
    progress: &Arc<AtomicU64>,
) -> Result<Produced, String> {
    let counts = shares(c.count, c.producers);
    let keyed = c.tenant.is_some() && c.keys > 0;
    let per_producer = KEY_DRAWS_MAX / u64::from(c.producers.max(1));
    let mut draws: Vec<Option<KeyDraws>> = counts
        .iter()
        .enumerate()
        .map(|(p, &n)| {
            keyed.then(|| {
                let seed = 0x9E37_79B9_7F4A_7C15
                    ^ (p as u64).wrapping_mul(0xA24B_AED4_963E_E407)
                    ^ u64::from(round).wrapping_mul(0x9FB2_1C65_1E98_DF25);
                KeyDraws::new(c.keys, n.min(per_producer), seed)
            })
        })
        .collect();
    let cpu = CpuClock::now(target.server_pid);
    let started = Instant::now();
    let handles: Vec<_> = counts
        .iter()
        .enumerate()
        .map(|(p, &n)| {
            let (target, c, progress) = (target.clone(), c.clone(), progress.clone());
            let rate = rate.map(|r| r / f64::from(c.producers.max(1)));
            let keys = draws[p].take();
            std::thread::spawn(move || produce(&target, &c, p as u32, keys, n, rate, &progress))
        })
        .collect();
    let mut latency = histogram();
    let mut bytes = 0;
    let mut sent = Vec::with_capacity(counts.len());
    for h in handles {
        let (n, b, l) = h.join().map_err(|_| "a producer panicked".to_string())??;
        sent.push(n);
        bytes += b;
        latency.add(&l).map_err(|e| e.to_string())?;
    }
    Ok(Produced {
        counts: sent,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        latency,
        cpu,
    })
}

/// Bytes asked for per fetch when reading back: 1 MiB, Kafka's default per partition
/// too. A response must still be in the core's cache (2 MiB of L2 here) when the
/// consumer checks and decodes it: `consume` of 1 KiB records, alternating, ran at
/// 2.0–2.4 GB/s with 1 MiB, 2.0–2.2 with 512 KiB, 1.3–1.5 with 256 KiB (the per-request
/// cost shows), 1.3–1.4 with 2 MiB and 1.4–1.5 with the 4 MiB used before
/// (BENCHMARKS.md, thirteenth session).
const FETCH_BYTES: u32 = 1 << 20;

/// Reads every partition from the earliest offset to its end and feeds the verifier;
/// with `consumers` threads each owning partitions `i, i + consumers, ...`.
/// `from`: where to start in each partition (by partition; earliest where absent).
pub(crate) fn read_back(
    target: &Target,
    c: &Common,
    from: &[u64],
    verifier: &Arc<Mutex<Verifier>>,
    consumers: u32,
    progress: &Arc<AtomicU64>,
) -> Result<(u64, u64), String> {
    let handles: Vec<_> = (0..consumers.max(1))
        .map(|i| {
            let (target, c, verifier, progress, from) = (
                target.clone(),
                c.clone(),
                verifier.clone(),
                progress.clone(),
                from.to_vec(),
            );
            std::thread::spawn(move || -> Result<(u64, u64), String> {
                let client = target.connect()?;
                let offsets = client.offsets(&c.topic).map_err(|e| e.to_string())?;
                let (mut records, mut bytes) = (0u64, 0u64);
                for o in offsets
                    .iter()
                    .filter(|o| o.partition % consumers.max(1) == i)
                {
                    let fetch = |at: u64| {
                        client
                            .send_fetch_batches(
                                &c.topic,
                                o.partition,
                                StartAt::Offset(at),
                                FETCH_BYTES,
                                None,
                            )
                            .map_err(|e| format!("fetch: {e}"))
                    };
                    let mut at = from
                        .get(o.partition as usize)
                        .map_or(o.earliest, |&f| f.max(o.earliest));
                    let mut next = (at < o.next).then(|| fetch(at)).transpose()?;
                    while let Some(pending) = next.take() {
                        // Records read in place from the received frame (CRC-checked
                        // there): no allocation per record.
                        let f = pending.wait().map_err(|e| format!("fetch: {e}"))?;
                        // The next range is asked for before this one is processed, so
                        // the server sends it meanwhile (one fetch always in flight).
                        if f.next_offset > at && f.next_offset < o.next {
                            next = Some(fetch(f.next_offset)?);
                        }
                        let mut v = verifier.lock().unwrap_or_else(|p| p.into_inner());
                        let mut n = 0u64;
                        f.for_each(|r| {
                            let value = r.value.unwrap_or(&[]);
                            v.record_payload(value);
                            bytes += value.len() as u64;
                            n += 1;
                        })
                        .map_err(|e| format!("fetch: {e}"))?;
                        drop(v);
                        records += n;
                        progress.fetch_add(n, Ordering::Relaxed);
                        if f.next_offset <= at {
                            return Err(format!(
                                "no progress reading partition {} at {at}",
                                o.partition
                            ));
                        }
                        at = f.next_offset;
                    }
                }
                Ok((records, bytes))
            })
        })
        .collect();
    let (mut records, mut bytes) = (0, 0);
    for h in handles {
        let (r, b) = h.join().map_err(|_| "a consumer panicked".to_string())??;
        records += r;
        bytes += b;
    }
    Ok((records, bytes))
}

/// Publishes `c.prefill` records with `c`'s settings (untimed, not read back; the keys
/// drawn for round 1, not the measured run's).
pub(crate) fn prefill(target: &Target, c: &Common) -> Result<(), String> {
    let fill = Common {
        count: c.prefill,
        duration: None,
        ..c.clone()
    };
    run_producers_round(target, &fill, 1, None, &Arc::new(AtomicU64::new(0))).map(|_| ())
}

/// The next offset of every partition of `c.topic`, by partition: where a read-back of
/// what is published next starts.
pub(crate) fn end_offsets(client: &Client, c: &Common) -> Result<Vec<u64>, String> {
    let mut from = vec![0; c.partitions as usize];
    for o in client.offsets(&c.topic).map_err(|e| e.to_string())? {
        if let Some(f) = from.get_mut(o.partition as usize) {
            *f = o.next;
        }
    }
    Ok(from)
}

pub fn publish(target: &Target, c: &Common, progress: &Arc<AtomicU64>) -> Result<Report, String> {
    let client = target.connect()?;
    create_topic(&client, c)?;
    let mut from = Vec::new();
    if c.prefill > 0 {
        prefill(target, c)?;
        if let Some(tenant) = &c.tenant {
            // Asking catches the index up: the prefill's share of its work stays out of
            // the measured run.
            client
                .tenant_info(&c.topic, tenant)
                .map_err(|e| format!("tenant info: {e}"))?;
        }
        from = end_offsets(&client, c)?;
    }
    let run = run_producers(target, c, None, progress)?;
    if let Some(tenant) = &c.tenant {
        // The index's work for the run, some of it still queued, is the run's: caught up
        // before the CPU clocks are read (the wall clock has stopped already).
        client
            .tenant_info(&c.topic, tenant)
            .map_err(|e| format!("tenant info: {e}"))?;
    }
    let cpu = CpuClock::now(target.server_pid).since(&run.cpu);
    let Produced {
        counts,
        bytes,
        seconds,
        latency,
        ..
    } = run;
    let verifier = Arc::new(Mutex::new(Verifier::new(&counts)));
    read_back(
        target,
        c,
        &from,
        &verifier,
        c.consumers,
        &Arc::new(AtomicU64::new(0)),
    )?;
    let verdict = verifier.lock().unwrap_or_else(|p| p.into_inner()).verdict();
    Ok(Report {
        scenario: "publish".into(),
        records: counts.iter().sum(),
        bytes,
        seconds,
        latency: (c.ack != Ack::None).then_some(latency),
        verdict: Some(verdict),
        cpu: Some(cpu),
        settings: c.settings(),
    })
}

/// Consumers read a topic from earliest: one `--count` records are first published to,
/// or (`existing`) one that already holds them.
pub fn consume(
    target: &Target,
    c: &Common,
    existing: bool,
    progress: &Arc<AtomicU64>,
) -> Result<Report, String> {
    let verifier = if existing {
        // Whatever the run that wrote it sent: every sequence up to the highest seen.
        Verifier::open_ended(c.producers as usize)
    } else {
        create_topic(&target.connect()?, c)?;
        let fill = Common {
            ack: Ack::Written,
            ..c.clone()
        };
        let counts = run_producers(target, &fill, None, &Arc::new(AtomicU64::new(0)))?.counts;
        Verifier::new(&counts)
    };
    let verifier = Arc::new(Mutex::new(verifier));
    let started = Instant::now();
    let (records, bytes) = read_back(target, c, &[], &verifier, c.consumers, progress)?;
    let seconds = started.elapsed().as_secs_f64();
    let verdict = verifier.lock().unwrap_or_else(|p| p.into_inner()).verdict();
    Ok(Report {
        scenario: "consume".into(),
        records,
        bytes,
        seconds,
        latency: None,
        verdict: Some(verdict),
        cpu: None,
        settings: c.settings(),
    })
}

/// Producers and subscribers at once; latency is publish call → delivery to the
/// subscriber (timestamps carried in the payload).
pub fn e2e(
    target: &Target,
    c: &Common,
    rate: Option<f64>,
    progress: &Arc<AtomicU64>,
) -> Result<Report, String> {
    create_topic(&target.connect()?, c)?;
    let verifier = Arc::new(Mutex::new(Verifier::open_ended(c.producers as usize)));
    // Known once the producers finish (a duration-bounded run sends what it can).
    let total = Arc::new(AtomicU64::new(u64::MAX));
    let received = Arc::new(AtomicU64::new(0));
    let consumers = c.consumers.max(1).min(c.partitions);
    let mut subs = Vec::new();
    for i in 0..consumers {
        let client = target.connect()?;
        let mut mine = Vec::new();
        for p in (0..c.partitions).filter(|p| p % consumers == i) {
            mine.push(
                client
                    .subscribe(&c.topic, p, StartAt::Latest, None, WINDOW_BYTES_DEFAULT)
                    .map_err(|e| e.to_string())?,
            );
        }
        subs.push(mine);
    }
    let deadline = Instant::now() + c.timeout;
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut mine| {
            let (verifier, received, progress, total) = (
                verifier.clone(),
                received.clone(),
                progress.clone(),
                total.clone(),
            );
            std::thread::spawn(move || -> Result<(Histogram<u64>, u64), String> {
                let mut latency = histogram();
                let mut bytes = 0u64;
                let several = mine.len() > 1;
                let wait = Duration::from_millis(if several { 1 } else { 50 });
                while received.load(Ordering::Relaxed) < total.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                {
                    for sub in &mut mine {
                        while let Some(r) = sub.next_timeout(wait).map_err(|e| e.to_string())? {
                            let now = payload::now_ns();
                            let value = r.value.as_deref().unwrap_or(&[]);
                            bytes += value.len() as u64;
                            let mut v = verifier.lock().unwrap_or_else(|p| p.into_inner());
                            match payload::read(value) {
                                Some((p, s, sent)) => {
                                    v.record(p, s);
                                    let _ =
                                        latency.record((now.saturating_sub(sent) / 1000).max(1));
                                }
                                None => v.record(u32::MAX, 0),
                            }
                            drop(v);
                            received.fetch_add(1, Ordering::Relaxed);
                            progress.fetch_add(1, Ordering::Relaxed);
                            if several {
                                break; // round-robin between partitions
                            }
                        }
                    }
                }
                Ok((latency, bytes))
            })
        })
        .collect();
    let started = Instant::now();
    let sent = run_producers(target, c, rate, &Arc::new(AtomicU64::new(0)))?.counts;
    total.store(sent.iter().sum(), Ordering::Relaxed);
    let mut latency = histogram();
    let mut bytes = 0;
    for r in readers {
        let (l, b) = r
            .join()
            .map_err(|_| "a subscriber panicked".to_string())??;
        latency.add(&l).map_err(|e| e.to_string())?;
        bytes += b;
    }
    let seconds = started.elapsed().as_secs_f64();
    let verdict = {
        let mut v = verifier.lock().unwrap_or_else(|p| p.into_inner());
        v.expect(&sent);
        v.verdict()
    };
    Ok(Report {
        scenario: "e2e".into(),
        records: received.load(Ordering::Relaxed),
        bytes,
        seconds,
        latency: Some(latency),
        verdict: Some(verdict),
        cpu: None,
        settings: c.settings(),
    })
}

/// Drains an extraction up to its watermark, handing every record to `record`. Returns
/// the watermark (`None`: the partition was empty) and when the first record came, after
/// `started`.
pub(crate) fn drain_to_watermark(
    stream: &mut tidelog_client::ExtractThenFollow,
    timeout: Duration,
    started: Instant,
    mut record: impl FnMut(tidelog_client::ConsumedRecord),
) -> Result<(Option<u64>, Option<Duration>), String> {
    use tidelog_client::ExtractEvent;
    let mut first_record = None;
    loop {
        match stream.next_timeout(timeout).map_err(|e| e.to_string())? {
            Some(ExtractEvent::Snapshot(r)) => {
                first_record.get_or_insert_with(|| started.elapsed());
                record(r);
            }
            Some(ExtractEvent::Watermark { offset, .. }) => return Ok((offset, first_record)),
            Some(ExtractEvent::Live(_)) => return Err("live record before the watermark".into()),
            None => return Err("extraction timed out".into()),
        }
    }
}

/// `extract`: a tenant with `keys` live keys, writers updating them throughout; the
/// extraction's time to first record and snapshot rate, then the live catch-up after the
/// writers stop. Verified: the snapshot holds every key exactly once, and snapshot ∪ live
/// equals the tenant's state replayed from the whole partition. Also measures a plain
/// fetch of the partition in the same run, for the ratio extraction / fetch.
pub fn extract(
    target: &Target,
    c: &Common,
    keys: u64,
    log_records: u64,
    progress: &Arc<AtomicU64>,
) -> Result<Report, String> {
    use std::collections::BTreeMap;
    use tidelog_client::{ExtractCriteria, ExtractEvent, ExtractMode};
    const TENANT: &[u8] = b"bench-tenant";
    let admin = target.connect()?;
    create_topic(&admin, c)?;
    let partition =
        tidelog_protocol::partitioner::partition_for(Some(TENANT), None, c.partitions).unwrap_or(0);
    let record = |i: u64, version: u64| {
        let mut value = vec![0xA5u8; c.record_size.max(16)];
        value[..8].copy_from_slice(&version.to_le_bytes());
        Record {
            timestamp_ms: (payload::now_ns() / 1_000_000) as i64,
            tenant: Some(TENANT.to_vec()),
            key: Some(format!("key-{i:012}").into_bytes()),
            value: Some(value),
            headers: Vec::new(),
        }
    };
    // Seed every key once, then (with --log-records) spread the live records over a
    // longer log: updates of random keys of the tenant and records of other tenants, half
    // and half. Untimed.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut written = 0;
    while written < keys.max(log_records) {
        let n = (c.batch as u64).min(keys.max(log_records) - written);
        let batch: Vec<Record> = (written..written + n)
            .map(|i| {
                if i < keys {
                    return record(i, 0);
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let update = record(x % keys.max(1), 1);
                if i % 2 == 0 {
                    update
                } else {
                    Record {
                        tenant: Some(format!("other-{}", x % 64).into_bytes()),
                        ..update
                    }
                }
            })
            .collect();
        admin
            .publish(
                &c.topic,
                partition,
                Ack::Written,
                &build_batch(&batch, ProducerStamp::default()),
            )
            .map_err(|e| format!("fill: {e}"))?;
        written += n;
    }
    // Writers keep updating random keys during the extraction.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..c.producers)
        .map(|w| {
            let (target, c, stop) = (target.clone(), c.clone(), stop.clone());
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>), String> {
                let client = target.connect()?;
                let mut x = u64::from(w) * 7919 + 1;
                let mut sent = 0;
                let mut latency = histogram();
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<Record> = (0..10)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let mut value = vec![0x5Au8; c.record_size.max(16)];
                            value[..8].copy_from_slice(&x.to_le_bytes());
                            Record {
                                timestamp_ms: 1,
                                tenant: Some(TENANT.to_vec()),
                                key: Some(format!("key-{:012}", x % keys.max(1)).into_bytes()),
                                value: Some(value),
                                headers: Vec::new(),
                            }
                        })
                        .collect();
                    let batch = build_batch(&batch, ProducerStamp::default());
                    let published = Instant::now();
                    client
                        .publish(&c.topic, partition, Ack::Written, &batch)
                        .map_err(|e| format!("writer: {e}"))?;
                    let _ = latency.record(published.elapsed().as_micros().max(1) as u64);
                    sent += 10;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok((sent, latency))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let client = target.connect()?;
    let started = Instant::now();
    let mut stream = client
        .extract_then_follow(
            &c.topic,
            TENANT,
            ExtractMode::State,
            ExtractCriteria::default(),
        )
        .map_err(|e| format!("extract: {e}"))?;
    let mut state: BTreeMap<Vec<u8>, (u64, Vec<u8>)> = BTreeMap::new();
    let mut duplicate = 0u64;
    let mut bytes = 0u64;
    let (watermark, first_record) = drain_to_watermark(&mut stream, c.timeout, started, |r| {
        let value = r.value.unwrap_or_default();
        bytes += value.len() as u64;
        if state
            .insert(r.key.unwrap_or_default(), (r.offset, value))
            .is_some()
        {
            duplicate += 1;
        }
        progress.fetch_add(1, Ordering::Relaxed);
    })?;
    let watermark = watermark.unwrap_or(0);
    let seconds = started.elapsed().as_secs_f64();
    let snapshot_records = state.len() as u64 + duplicate;
    // Live catch-up: stop the writers; follow up to the tenant's last record.
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    let mut writer_latency = histogram();
    for w in writers {
        let (sent, latency) = w.join().map_err(|_| "a writer panicked".to_string())??;
        written += sent;
        let _ = writer_latency.add(&latency);
    }
    let end = admin.offsets(&c.topic).map_err(|e| e.to_string())?[partition as usize].next;
    let catch_up = Instant::now();
    let mut live = 0u64;
    let mut out_of_order = 0u64;
    let mut last = watermark;
    while last + 1 < end {
        match stream.next_timeout(c.timeout).map_err(|e| e.to_string())? {
            Some(ExtractEvent::Live(r)) => {
                if r.offset <= last {
                    out_of_order += 1;
                }
                last = r.offset;
                live += 1;
                state.insert(
                    r.key.unwrap_or_default(),
                    (r.offset, r.value.unwrap_or_default()),
                );
            }
            Some(_) => return Err("unexpected event after the watermark".into()),
            None => break,
        }
    }
    let catch_up_seconds = catch_up.elapsed().as_secs_f64();
    // The reference, and a plain fetch of the same partition for the speed ratio.
    let fetch_started = Instant::now();
    let mut reference: BTreeMap<Vec<u8>, (u64, Vec<u8>)> = BTreeMap::new();
    let mut at = 0;
    let mut fetched_bytes = 0u64;
    while at < end {
        let f = admin
            .fetch(
                &c.topic,
                partition,
                StartAt::Offset(at),
                8 << 20,
                Duration::ZERO,
                None,
            )
            .map_err(|e| e.to_string())?;
        for r in f.records {
            fetched_bytes += r.value.as_ref().map_or(0, |v| v.len() as u64);
            if r.tenant.as_deref() != Some(TENANT) {
                continue; // other tenants' records (with --log-records)
            }
            reference.insert(
                r.key.unwrap_or_default(),
                (r.offset, r.value.unwrap_or_default()),
            );
        }
        at = f.next_offset;
    }
    let fetch_seconds = fetch_started.elapsed().as_secs_f64();
    let missing = reference.keys().filter(|k| !state.contains_key(*k)).count() as u64
        + state
            .iter()
            .filter(|(k, v)| reference.get(*k) != Some(v))
            .count() as u64;
    let verdict = crate::verify::Verdict {
        expected: keys,
        missing: missing + keys.saturating_sub(snapshot_records.min(keys)),
        duplicate,
        out_of_order,
        foreign: 0,
    };
    let mb_per_sec = bytes as f64 / 1e6 / seconds.max(1e-9);
    let fetch_mb_per_sec = fetched_bytes as f64 / 1e6 / fetch_seconds.max(1e-9);
    let mut settings = c.settings();
    settings["keys"] = keys.into();
    settings["writers_records_during_run"] = written.into();
    settings["time_to_first_record_us"] = first_record.map_or(0, |d| d.as_micros() as u64).into();
    settings["live_catch_up_records"] = live.into();
    settings["live_catch_up_seconds"] = catch_up_seconds.into();
    settings["fetch_same_partition_mb_per_sec"] = fetch_mb_per_sec.into();
    settings["extract_vs_fetch"] = (mb_per_sec / fetch_mb_per_sec.max(1e-9)).into();
    Ok(Report {
        scenario: "extract".into(),
        records: snapshot_records,
        bytes,
        seconds,
        // What the extraction costs everyone else: the concurrent writers' publish → ack
        // latency while it runs (a freeze on the event loop would show in the tail).
        latency: Some(writer_latency),
        verdict: Some(verdict),
        cpu: None,
        settings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_batches_carry_decimal_draws_below_the_key_count_spread_over_it() {
        let c = Common {
            topic: "t".into(),
            count: 0,
            record_size: 100,
            batch: 500,
            in_flight: 1,
            ack: Ack::Written,
            producers: 1,
            consumers: 1,
            partitions: 1,
            duration: None,
            timeout: Duration::from_secs(1),
            tenant: Some(b"acme".to_vec()),
            keys: 1000,
            prefill: 0,
        };
        let mut t = Template::new(500, &c, 0);
        // Fewer draws than records: they are reused in turn.
        let mut keys = KeyDraws::new(1000, 7000, 42);
        let mut seen = std::collections::HashSet::new();
        for round in 0..20 {
            let bytes = t.fill(round * 500, 1, Some(&mut keys)).to_vec();
            let view = tidelog_protocol::batch::validate(&bytes).expect("refilled batch is valid");
            for r in view.records() {
                let key = std::str::from_utf8(r.expect("valid").key.expect("keyed")).unwrap();
                let n: u64 = key
                    .strip_prefix("key-")
                    .expect("prefix")
                    .parse()
                    .expect("digits");
                assert!(n < 1000, "{key}");
                assert_eq!(key, bench_key(n), "fixed width");
                seen.insert(n);
            }
        }
        // 7 000 uniform draws over 1 000 keys miss a given key with probability e^-7.
        assert!(seen.len() > 980, "{} distinct keys", seen.len());
        // Another seed, other draws.
        assert_ne!(
            KeyDraws::new(1000, 50, 43).digits,
            KeyDraws::new(1000, 50, 42).digits
        );
    }
}
