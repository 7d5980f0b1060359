//! Putting batches from the log on the wire: FETCH responses, DATA pushes, the
//! subscription pump, and the extraction pump (which sends the chunks the worker thread
//! has read and asks it for the next).
//!
//! The batches themselves are never copied into a buffer: the frame's prefix is encoded
//! into the outbox and the mapped bytes follow as their own chunk, written with `writev`.
//! A tenant filter keeps or skips tenant-uniform batches whole and re-encodes only mixed
//! batches (`tidelog_protocol::filter`).

use tidelog_engine::extract::{push_batch, Criteria};
use tidelog_engine::{EngineError, Fetched};
use tidelog_protocol::batch;
use tidelog_protocol::filter::{filter_batch, Filtered};
use tidelog_protocol::response::{
    begin_data, begin_extract_data, begin_fetched, encode_extract_end, encode_push_error,
};
use tidelog_protocol::{kind, ErrorCode, ProtocolError};

use crate::connection::Connection;
use crate::outbox::Outbox;
use crate::state::{to_protocol, Limits};
use crate::worker::{Job, ReadJob, Waiter, Worker};

/// The bytes to send for a run of batches: zero-copy slices and re-encoded batches.
#[derive(Debug, Default)]
pub struct Selection {
    parts: Vec<Part>,
    pub len: usize,
}

#[derive(Debug)]
enum Part {
    Mapped(Fetched),
    Owned(Vec<u8>),
}

impl Selection {
    /// Everything in `fetched`, or only `tenant`'s records, and only those meeting
    /// `criteria` (each record decided; matching records re-encoded with their offsets
    /// unless a whole batch matches).
    pub fn filtered(
        fetched: &Fetched,
        tenant: Option<&[u8]>,
        criteria: Option<&Criteria>,
    ) -> Selection {
        let Some(criteria) = criteria else {
            return Selection::of(fetched, tenant);
        };
        let mut sel = Selection::default();
        let bytes: &[u8] = fetched;
        let mut pos = 0;
        let mut scratch = Vec::new();
        while pos < bytes.len() {
            let Ok(view) = batch::view_stored(&bytes[pos..]) else {
                break;
            };
            pos += view.bytes().len();
            if tenant.is_some_and(|t| view.uniform_tenant().is_some_and(|u| u != t)) {
                continue;
            }
            let kept: Vec<_> = view
                .records()
                .filter_map(Result::ok)
                .filter(|r| tenant.is_none_or(|t| r.tenant == Some(t)) && criteria.matches(r))
                .collect();
            let mut out = Vec::new();
            push_batch(&mut out, &mut scratch, &view, &kept);
            if !out.is_empty() {
                sel.len += out.len();
                sel.parts.push(Part::Owned(out));
            }
        }
        sel
    }

    /// Everything in `fetched`, or only `tenant`'s records.
    pub fn of(fetched: &Fetched, tenant: Option<&[u8]>) -> Selection {
        let Some(tenant) = tenant else {
            return Selection {
                len: fetched.len(),
                parts: vec![Part::Mapped(fetched.clone())],
            };
        };
        let mut sel = Selection::default();
        let bytes: &[u8] = fetched;
        let mut pos = 0;
        // Start of the current run of batches kept whole.
        let mut run: Option<usize> = None;
        while pos < bytes.len() {
            let Ok(view) = batch::view_stored(&bytes[pos..]) else {
                break;
            };
            let end = pos + view.bytes().len();
            match filter_batch(&view, tenant) {
                Filtered::Whole => {
                    run.get_or_insert(pos);
                }
                other => {
                    if let Some(start) = run.take() {
                        sel.push_mapped(fetched.slice(start, pos));
                    }
                    if let Filtered::Rebuilt(b) = other {
                        sel.len += b.len();
                        sel.parts.push(Part::Owned(b));
                    }
                }
            }
            pos = end;
        }
        if let Some(start) = run {
            sel.push_mapped(fetched.slice(start, pos));
        }
        sel
    }

    fn push_mapped(&mut self, f: Fetched) {
        self.len += f.len();
        self.parts.push(Part::Mapped(f));
    }

    fn into_outbox(self, outbox: &mut Outbox) {
        for part in self.parts {
            match part {
                Part::Mapped(f) => outbox.push_mapped(f),
                Part::Owned(b) => outbox.push_owned(b),
            }
        }
    }
}

/// Queues a FETCH response carrying `fetched` (filtered to `tenant`).
pub fn send_fetched(
    outbox: &mut Outbox,
    correlation: u64,
    partition: u32,
    fetched: &Fetched,
    tenant: Option<&[u8]>,
) {
    let sel = Selection::of(fetched, tenant);
    outbox.encode(|out| {
        begin_fetched(
            out,
            correlation,
            partition,
            fetched.high_watermark,
            fetched.next_offset,
            sel.len,
        )
    });
    sel.into_outbox(outbox);
}

/// What a pump did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Caught up with the log, or out of credit, or the outbox is full.
    Idle,
    /// Stopped at the scan budget with more to send: pump again this tick.
    More,
    /// The subscription failed (its position left the log) and was removed.
    Ended,
}

/// Size of an extraction's first chunk: small, so the client has its first records
/// after one short read rather than a full chunk's.
const FIRST_CHUNK_BYTES: u32 = 64 << 10;

/// Bytes of log one pump may scan, so one filtered subscription cannot hold the loop.
const PUMP_SCAN_BYTES_MAX: usize = 16 << 20;

/// An extraction's chunks after the first are at most this large. They are read on the
/// worker thread (`worker.rs`), never on the event loop: a state extraction reads its
/// records at random from the log, a few ms per MiB when cached and a disk read per page
/// when not, and on the loop every other client waited that long.
const EXTRACT_CHUNK_BYTES: u32 = 1 << 20;

/// An extraction asks for its next chunk while it has less than this read and not sent
/// (and credit for more): the next read overlaps the sending of the last.
const EXTRACT_READ_AHEAD_BYTES: u64 = 2 << 20;

/// Pushes what subscription or extraction `id` may receive now. `token` is the
/// connection's; an extraction's reads go to `worker`, a subscription's reads of pages
/// out of the page cache to `reader` first.
pub fn pump(
    conn: &mut Connection,
    token: usize,
    id: u32,
    limits: &Limits,
    worker: &mut Worker,
    reader: &mut Worker,
) -> Pumped {
    if conn.subscriptions.contains_key(&id) {
        pump_subscription(conn, token, id, limits, reader)
    } else {
        pump_extraction(conn, token, id, limits, worker)
    }
}

/// Streams an extraction: the chunks the worker has read, as EXTRACT_DATA within its
/// credit, then EXTRACT_END (or the error that stopped it); and asks the worker for the
/// next chunk while there is credit for it.
fn pump_extraction(
    conn: &mut Connection,
    token: usize,
    id: u32,
    limits: &Limits,
    worker: &mut Worker,
) -> Pumped {
    loop {
        if conn.outbox.bytes() >= limits.buffered_bytes_max {
            conn.throttled = true;
            return Pumped::Idle;
        }
        let Some(ex) = conn.extractions.get_mut(&id) else {
            return Pumped::Ended;
        };
        match ex.ready.front() {
            Some(chunk) if chunk.bytes.len() as u64 > ex.credit_bytes => break, // credit
            Some(_) => {
                let chunk = ex.ready.pop_front().expect("just seen");
                let len = chunk.bytes.len() as u64;
                ex.credit_bytes -= len;
                ex.records_sent += chunk.records;
                conn.outbox
                    .encode(|out| begin_extract_data(out, id, chunk.cursor, chunk.bytes.len()));
                conn.outbox.push_owned(chunk.bytes);
                continue;
            }
            None => {}
        }
        match ex.end.take() {
            Some(Ok(())) => {
                let (watermark, records) = (ex.watermark.unwrap_or(u64::MAX), ex.records_sent);
                conn.extractions.remove(&id);
                conn.outbox
                    .encode(|out| encode_extract_end(out, id, watermark, records));
                return Pumped::Ended;
            }
            Some(Err(e)) => return end_extraction(conn, id, &to_protocol(&e)),
            None => break,
        }
    }
    let Some(ex) = conn.extractions.get_mut(&id) else {
        return Pumped::Ended;
    };
    let ready_bytes = ex.ready_bytes();
    let room = ex.credit_bytes.saturating_sub(ready_bytes);
    if ex.reading.is_some()
        || ex.end.is_some()
        || ready_bytes >= EXTRACT_READ_AHEAD_BYTES
        || room == 0
    {
        return Pumped::Idle;
    }
    let first = ex.records_sent == 0 && ex.ready.is_empty();
    let max_bytes = room
        .min(u64::from(limits.fetch_bytes_max))
        .min(u64::from(if first {
            FIRST_CHUNK_BYTES
        } else {
            EXTRACT_CHUNK_BYTES
        })) as u32;
    let Some(reader) = ex.reader.take() else {
        return Pumped::Idle; // out on the worker (`reading` says so)
    };
    let seq = worker.next_seq();
    let job = Job::Read(ReadJob {
        conn: token,
        extraction: id,
        seq,
        reader,
        max_bytes,
    });
    if worker.submit(job) {
        ex.reading = Some(seq);
        return Pumped::Idle;
    }
    end_extraction(conn, id, &crate::dispatch::worker_stopped())
}

/// Ends extraction `id` with an error push.
fn end_extraction(conn: &mut Connection, id: u32, error: &ProtocolError) -> Pumped {
    conn.extractions.remove(&id);
    conn.outbox
        .encode(|out| encode_push_error(out, kind::EXTRACT_DATA, id, error));
    Pumped::Ended
}

/// Pushes what subscription `id` may receive now: whole batches from its position, within
/// its credit and the connection's buffered-bytes limit. A read that would find its pages
/// out of the page cache waits for `reader` to bring them in (`cold.rs`).
fn pump_subscription(
    conn: &mut Connection,
    token: usize,
    id: u32,
    limits: &Limits,
    reader: &mut Worker,
) -> Pumped {
    let mut scanned = 0;
    loop {
        if conn.outbox.bytes() >= limits.buffered_bytes_max {
            conn.throttled = true;
            return Pumped::Idle;
        }
        let Some(sub) = conn.subscriptions.get_mut(&id) else {
            return Pumped::Ended;
        };
        if sub.credit_bytes == 0
            || sub.warming.is_some()
            || sub.next_offset >= sub.partition.next_offset()
        {
            return Pumped::Idle;
        }
        if scanned >= PUMP_SCAN_BYTES_MAX {
            return Pumped::More;
        }
        let want = sub.credit_bytes.min(u64::from(limits.fetch_bytes_max)) as u32;
        if sub.warmed_at != Some(sub.next_offset) {
            let waiter = || Waiter::Subscription(id);
            let cold = crate::cold::to_reader(
                reader,
                token,
                waiter,
                &sub.partition,
                sub.next_offset,
                want,
            );
            if let Some(seq) = cold {
                sub.warming = Some(seq);
                return Pumped::Idle;
            }
        }
        let fetched = match sub.partition.read(sub.next_offset, want) {
            Ok(f) => f,
            Err(e) => {
                let error = match e {
                    EngineError::OffsetOutOfRange { .. } => ProtocolError::new(
                        ErrorCode::OffsetOutOfRange,
                        format!("subscription {id} fell behind the log's retention: {e}"),
                    ),
                    other => to_protocol(&other),
                };
                conn.subscriptions.remove(&id);
                conn.outbox
                    .encode(|out| encode_push_error(out, kind::DATA, id, &error));
                return Pumped::Ended;
            }
        };
        scanned += fetched.len();
        let sel = Selection::filtered(&fetched, sub.tenant.as_deref(), sub.criteria.as_ref());
        if sel.len as u64 > sub.credit_bytes {
            return Pumped::Idle; // wait for credit: never send beyond it
        }
        sub.credit_bytes -= sel.len as u64;
        sub.next_offset = fetched.next_offset;
        if sel.len > 0 {
            let partition = sub.partition.id();
            conn.outbox.encode(|out| {
                begin_data(
                    out,
                    id,
                    partition,
                    fetched.high_watermark,
                    fetched.next_offset,
                    sel.len,
                )
            });
            sel.into_outbox(&mut conn.outbox);
        }
    }
}
