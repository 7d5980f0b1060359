//! Crash test with a real process: a child appends `written` and `durable` batches from
//! several threads and prints each acknowledgement; the parent `kill -9`s it at random
//! moments, dozens of times, and checks after every kill that each acknowledged record
//! is present and intact. Every other round also simulates power loss: every byte past
//! what the engine had synced (its recovery checkpoint) is zeroed before reopening, and
//! then only `durable` acknowledgements are owed.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tidelog_engine::batch::check_frame;
use tidelog_engine::{
    build_batch, AckLevel, Checkpoint, Engine, EngineConfig, ProducerStamp, Record, TopicConfig,
    CHECKPOINT_FILE,
};

const CHILD_ENV: &str = "TIDELOG_CRASH_CHILD_DIR";
const PARTITIONS: u32 = 2;
const THREADS: u64 = 4;

fn config() -> EngineConfig {
    EngineConfig {
        flush_interval: Duration::from_millis(20),
        ..EngineConfig::default()
    }
}

fn topic_config() -> TopicConfig {
    TopicConfig {
        partitions: PARTITIONS,
        segment_bytes: 256 << 10,
        index_interval_bytes: 1024,
        batch_bytes_max: 64 << 10,
        ..TopicConfig::default()
    }
}

/// The child side. Runs only when the parent starts this test binary with `CHILD_ENV`.
#[test]
#[ignore = "run by kill9_never_loses_acknowledged_records as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("TIDELOG_CRASH_ROUND")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let engine = Arc::new(Engine::open(&dir, config()).expect("child opens engine"));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (engine, out) = (engine.clone(), out.clone());
            std::thread::spawn(move || {
                let mut rng = round * 1000 + t + 1;
                for counter in 0u64.. {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let partition = (rng >> 33) as u32 % PARTITIONS;
                    let count = 1 + (rng >> 40) % 20;
                    let durable = (rng >> 20) % 2 == 0;
                    let tag = format!("{round}:{t}:{counter}");
                    let records: Vec<Record> = (0..count)
                        .map(|k| {
                            Record::value(
                                k as i64,
                                format!("{tag}:{k}:{}", "x".repeat(((rng >> 8) % 200) as usize)),
                            )
                        })
                        .collect();
                    let ack = if durable {
                        AckLevel::Durable
                    } else {
                        AckLevel::Written
                    };
                    let a = engine
                        .append(
                            "t",
                            partition,
                            &build_batch(&records, ProducerStamp::default()),
                            ack,
                        )
                        .expect("append");
                    let line = format!(
                        "ACK {partition} {} {count} {tag} {}\n",
                        a.base_offset,
                        u8::from(durable)
                    );
                    let mut o = out.lock().expect("stdout");
                    o.write_all(line.as_bytes()).expect("write");
                    o.flush().expect("flush");
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[derive(Debug, Clone)]
struct Ack {
    partition: u32,
    base: u64,
    count: u64,
    tag: String,
    durable: bool,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut it = line.split_whitespace();
    (it.next()? == "ACK").then_some(())?;
    Some(Ack {
        partition: it.next()?.parse().ok()?,
        base: it.next()?.parse().ok()?,
        count: it.next()?.parse().ok()?,
        tag: it.next()?.to_string(),
        durable: it.next()? == "1",
    })
}

/// Zeroes every byte the engine had not synced, as a power failure would lose them:
/// the checkpoint's segment past the checkpoint, and every segment after it (rolled
/// segments are synced by the flusher when it seals them, which the checkpoint follows).
fn simulate_power_loss(part_dir: &Path) {
    let cp = fs::read(part_dir.join(CHECKPOINT_FILE))
        .ok()
        .and_then(|b| Checkpoint::decode(&b));
    let zero_from = |path: &Path, from: usize| {
        if let Ok(mut bytes) = fs::read(path) {
            if from < bytes.len() {
                bytes[from..].fill(0);
                fs::write(path, bytes).expect("write");
            }
        }
    };
    for entry in fs::read_dir(part_dir).expect("ls") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|x| x != "log") {
            continue;
        }
        let base: u64 = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .expect("base");
        let (position, offset_entries, time_entries) = match cp {
            Some(cp) if base < cp.segment_base => continue,
            Some(cp) if cp.segment_base == base => (
                cp.position as usize,
                cp.offset_entries as usize,
                cp.time_entries as usize,
            ),
            _ => (0, 0, 0),
        };
        zero_from(&path, position);
        zero_from(&path.with_extension("index"), offset_entries * 8);
        zero_from(&path.with_extension("timeindex"), time_entries * 12);
    }
}

/// Values of every record in a partition, by offset.
fn all_values(engine: &Engine, partition: u32) -> HashMap<u64, Vec<u8>> {
    let p = engine.partition("t", partition).expect("partition");
    let mut out = HashMap::new();
    let mut offset = p.earliest_offset();
    loop {
        let f = p.read(offset, 1 << 20).expect("read");
        if f.is_empty() {
            break;
        }
        let mut pos = 0;
        while pos < f.len() {
            let v = check_frame(&f[pos..]).expect("every served batch passes its CRC");
            for r in v.records() {
                let r = r.expect("record");
                out.insert(r.offset, r.value.expect("value").to_vec());
            }
            pos += v.bytes().len();
        }
        offset = f.next_offset;
    }
    out
}

fn holds(values: &HashMap<u64, Vec<u8>>, ack: &Ack) -> bool {
    (0..ack.count).all(|k| {
        let prefix = format!("{}:{k}:", ack.tag);
        values
            .get(&(ack.base + k))
            .is_some_and(|v| v.starts_with(prefix.as_bytes()))
    })
}

#[test]
fn kill9_never_loses_acknowledged_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let engine = Engine::open(dir.path(), config()).expect("open");
        engine.create_topic("t", topic_config()).expect("create");
        engine.close().expect("close");
    }
    let exe = std::env::current_exe().expect("test binary");
    let rounds = 30u64;
    let mut owed: Vec<Ack> = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut total_acks = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("TIDELOG_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let want_acks = 1 + (rng % 400) as usize;
        let mut round_acks = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while round_acks.len() < want_acks && Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                if let Some(a) = parse_ack(&line) {
                    round_acks.push(a);
                }
            }
        }
        std::thread::sleep(Duration::from_micros(rng % 3000));
        child.kill().expect("kill -9");
        let _ = child.wait();
        let _ = reader.join();
        // Acks printed before the kill landed in the pipe; all of them count.
        while let Ok(line) = rx.try_recv() {
            if let Some(a) = parse_ack(&line) {
                round_acks.push(a);
            }
        }
        assert!(
            !round_acks.is_empty(),
            "round {round}: child made no progress"
        );
        total_acks += round_acks.len();

        let power_loss = round % 2 == 1;
        if power_loss {
            for p in 0..PARTITIONS {
                simulate_power_loss(&dir.path().join(format!("topics/t/{p}")));
            }
        }
        let engine = Engine::open(dir.path(), config()).expect("recovery after kill -9");
        let values: Vec<_> = (0..PARTITIONS).map(|p| all_values(&engine, p)).collect();
        owed.extend(round_acks);
        let mut kept = Vec::with_capacity(owed.len());
        for ack in owed.drain(..) {
            let present = holds(&values[ack.partition as usize], &ack);
            if ack.durable || !power_loss {
                assert!(present, "round {round} (power loss: {power_loss}): acknowledged {ack:?} is missing or damaged");
            }
            // A `written` record lost to power loss is no longer owed; its offsets may
            // be reused by later rounds.
            if present {
                kept.push(ack);
            }
        }
        owed = kept;
        drop(engine); // unclean again: the next child recovers too
    }
    assert!(
        total_acks > rounds as usize,
        "the test exercised real appends ({total_acks})"
    );
}
