//! `nats-peer`: the NATS JetStream side of `bench/peers/compare.py`, an equivalent of
//! `nats bench --js` (the `nats` CLI is not installable from this machine's registries).
//! It speaks the NATS text protocol directly over one TCP connection, with no NATS
//! library:
//!
//! ```text
//! nats-peer publish ADDR COUNT SIZE WINDOW   JetStream publishes with acks, WINDOW in flight
//! nats-peer consume ADDR COUNT SIZE          a pull consumer (ack none, batches of 1000) from the first message
//! ```
//!
//! It creates the stream `BENCH` (file storage, subjects `bench.>`) if needed. Output: one
//! JSON object, `{"records": N, "seconds": S, "records_per_sec": R, "mb_per_sec": M}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

type Result<T> = std::result::Result<T, String>;

/// One message from the server.
enum Incoming {
    Msg { subject: String, payload: Vec<u8> },
    Ping,
    Other(String),
}

fn read_incoming(r: &mut BufReader<TcpStream>) -> Result<Incoming> {
    let mut line = String::new();
    if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
        return Err("connection closed".into());
    }
    let line = line.trim_end();
    if line == "PING" {
        return Ok(Incoming::Ping);
    }
    if let Some(rest) = line.strip_prefix("MSG ") {
        // MSG <subject> <sid> [reply] <#bytes>
        let parts: Vec<&str> = rest.split(' ').collect();
        let len: usize = parts
            .last()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad MSG line {line:?}"))?;
        let mut payload = vec![0u8; len + 2];
        r.read_exact(&mut payload).map_err(|e| e.to_string())?;
        payload.truncate(len);
        return Ok(Incoming::Msg {
            subject: parts[0].to_string(),
            payload,
        });
    }
    if let Some(rest) = line.strip_prefix("HMSG ") {
        // HMSG <subject> <sid> [reply] <#header bytes> <#total bytes>: headers, then payload
        let parts: Vec<&str> = rest.split(' ').collect();
        let num = |i: usize| -> Result<usize> {
            parts
                .get(i)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad HMSG line {line:?}"))
        };
        let (header_len, total) = (num(parts.len() - 2)?, num(parts.len() - 1)?);
        let mut bytes = vec![0u8; total + 2];
        r.read_exact(&mut bytes).map_err(|e| e.to_string())?;
        bytes.truncate(total);
        return Ok(Incoming::Msg {
            subject: parts[0].to_string(),
            payload: bytes.split_off(header_len.min(total)),
        });
    }
    if line.starts_with("-ERR") {
        return Err(format!("server error: {line}"));
    }
    Ok(Incoming::Other(line.to_string()))
}

fn connect(addr: &str) -> Result<(TcpStream, BufReader<TcpStream>)> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(1 << 20, s.try_clone().map_err(|e| e.to_string())?);
    match read_incoming(&mut r)? {
        Incoming::Other(info) if info.starts_with("INFO") => {}
        _ => return Err("expected INFO".into()),
    }
    s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\nPING\r\n")
        .map_err(|e| e.to_string())?;
    loop {
        match read_incoming(&mut r)? {
            Incoming::Other(l) if l == "PONG" => return Ok((s, r)),
            Incoming::Ping => s.write_all(b"PONG\r\n").map_err(|e| e.to_string())?,
            _ => {}
        }
    }
}

/// A request/reply on the JetStream API; returns the reply's JSON.
fn request(
    s: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    subject: &str,
    body: &str,
) -> Result<String> {
    write!(
        s,
        "SUB _INBOX.api 99\r\nPUB {subject} _INBOX.api {}\r\n{body}\r\n",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    loop {
        match read_incoming(r)? {
            Incoming::Msg { subject, payload } if subject == "_INBOX.api" => {
                s.write_all(b"UNSUB 99\r\n").map_err(|e| e.to_string())?;
                return Ok(String::from_utf8_lossy(&payload).into_owned());
            }
            Incoming::Ping => s.write_all(b"PONG\r\n").map_err(|e| e.to_string())?,
            _ => {}
        }
    }
}

fn ensure_stream(s: &mut TcpStream, r: &mut BufReader<TcpStream>) -> Result<()> {
    let reply = request(
        s,
        r,
        "$JS.API.STREAM.CREATE.BENCH",
        r#"{"name":"BENCH","subjects":["bench.>"],"storage":"file","retention":"limits","discard":"old","max_msg_size":-1}"#,
    )?;
    if reply.contains("\"error\"") && !reply.contains("already in use") {
        return Err(format!("stream create: {reply}"));
    }
    Ok(())
}

fn report(records: u64, size: usize, seconds: f64) {
    println!(
        "{{\"records\": {records}, \"seconds\": {seconds}, \"records_per_sec\": {}, \"mb_per_sec\": {}}}",
        records as f64 / seconds,
        records as f64 * size as f64 / 1e6 / seconds
    );
}

/// JetStream publishes with acks, `window` unacknowledged at most.
fn publish(addr: &str, count: u64, size: usize, window: u64) -> Result<()> {
    let (mut s, mut r) = connect(addr)?;
    ensure_stream(&mut s, &mut r)?;
    write!(s, "SUB _INBOX.acks.* 1\r\n").map_err(|e| e.to_string())?;
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let acked = acked.clone();
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        std::thread::spawn(move || -> Result<()> {
            while acked.load(Ordering::Relaxed) < count {
                match read_incoming(&mut r)? {
                    Incoming::Msg { payload, .. } => {
                        if payload.windows(7).any(|w| w == b"\"error\"") {
                            return Err(format!(
                                "publish refused: {}",
                                String::from_utf8_lossy(&payload)
                            ));
                        }
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Incoming::Ping => w.write_all(b"PONG\r\n").map_err(|e| e.to_string())?,
                    Incoming::Other(_) => {}
                }
            }
            Ok(())
        })
    };
    let payload = vec![b'x'; size];
    let mut out = Vec::with_capacity(1 << 20);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        while sent - acked.load(Ordering::Relaxed) >= window {
            std::hint::spin_loop();
            if reader.is_finished() {
                break;
            }
        }
        let n = (window - (sent - acked.load(Ordering::Relaxed)))
            .min(count - sent)
            .clamp(1, 256);
        out.clear();
        for i in 0..n {
            write!(out, "PUB bench.x _INBOX.acks.{} {size}\r\n", sent + i)
                .map_err(|e| e.to_string())?;
            out.extend_from_slice(&payload);
            out.extend_from_slice(b"\r\n");
        }
        s.write_all(&out).map_err(|e| e.to_string())?;
        sent += n;
        if reader.is_finished() {
            break;
        }
    }
    reader.join().map_err(|_| "reader panicked".to_string())??;
    report(count, size, started.elapsed().as_secs_f64());
    Ok(())
}

/// A pull consumer (ack none) from the first message; counts `count` messages.
fn consume(addr: &str, count: u64, size: usize) -> Result<()> {
    let (mut s, mut r) = connect(addr)?;
    ensure_stream(&mut s, &mut r)?;
    // A pull consumer (a push consumer outruns any reader without flow control, which
    // needs message headers): batches of up to 1000 asked for one after the other.
    let reply = request(
        &mut s,
        &mut r,
        "$JS.API.CONSUMER.DURABLE.CREATE.BENCH.PULLER",
        r#"{"stream_name":"BENCH","config":{"durable_name":"PULLER","deliver_policy":"all","ack_policy":"none","replay_policy":"instant"}}"#,
    )?;
    if reply.contains("\"error\"") {
        return Err(format!("consumer create: {reply}"));
    }
    write!(s, "SUB _INBOX.pull 3\r\n").map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut got = 0u64;
    while got < count {
        let batch = (count - got).min(1000);
        let ask = format!("{{\"batch\":{batch},\"expires\":5000000000}}");
        write!(
            s,
            "PUB $JS.API.CONSUMER.MSG.NEXT.BENCH.PULLER _INBOX.pull {}\r\n{ask}\r\n",
            ask.len()
        )
        .map_err(|e| e.to_string())?;
        let mut in_batch = 0;
        while in_batch < batch {
            match read_incoming(&mut r)? {
                // Delivered messages keep their stream subject (they come on the pull
                // subscription's sid); status messages (headers only) carry no payload.
                Incoming::Msg { subject, payload }
                    if subject.starts_with("bench.") && payload.len() == size =>
                {
                    in_batch += 1;
                }
                Incoming::Ping => s.write_all(b"PONG\r\n").map_err(|e| e.to_string())?,
                _ => {}
            }
        }
        got += in_batch;
    }
    report(got, size, started.elapsed().as_secs_f64());
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let result = match arg(0).as_str() {
        "publish" => publish(&arg(1), num(2, 100_000), num(3, 100) as usize, num(4, 1000)),
        "consume" => consume(&arg(1), num(2, 100_000), num(3, 100) as usize),
        _ => Err("usage: nats-peer publish|consume ADDR COUNT SIZE [WINDOW]".into()),
    };
    if let Err(e) = result {
        eprintln!("nats-peer: {e}");
        std::process::exit(1);
    }
}
