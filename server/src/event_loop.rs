//! The mio event loop: one thread drives every connection.
//!
//! One poll tick: accept; read every readable connection and handle all its whole frames
//! (publishes append as they are decoded); then, once for the whole tick, ask the flusher
//! for one group commit per partition that got durable publishes; apply the engine's
//! notices (acknowledge what became durable, answer long polls and push to subscriptions
//! of partitions that grew); write every outbox until the socket would block; close what
//! must close. The loop sleeps in `poll` until a socket, the engine's notices (through a
//! `mio::Waker`) or the nearest long-poll deadline wakes it: never on a polling timer.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use tidelog_protocol::frame::FrameHeader;
use tidelog_protocol::response::encode_error;
use tidelog_protocol::{ErrorCode, ProtocolError};

use crate::connection::{Connection, NextFrame};
use crate::deliver::{self, Pumped};
use crate::dispatch;
use crate::notices::Pending;
use crate::state::State;
use crate::worker::{Done, Waiter};

/// Quiet time after which a connection's large input buffer is given back.
const INPUT_SHRINK_AFTER: Duration = Duration::from_secs(1);
const LISTENER: Token = Token(0);
pub const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;
/// Socket buffer sizes: a few MiB so one stream can run at GB/s on loopback.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// How long a shutdown waits for in-flight responses to drain.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

pub struct EventLoop {
    poll: Poll,
    listener: Option<TcpListener>,
    /// Connections by token - FIRST_CONNECTION; `None` slots are free.
    conns: Vec<Option<Connection>>,
    free: Vec<usize>,
    live: usize,
    /// Connections accepted so far (each one's serial).
    serials: u64,
    pub state: State,
    stop: Arc<AtomicBool>,
}

impl EventLoop {
    pub fn new(
        poll: Poll,
        mut listener: TcpListener,
        state: State,
        stop: Arc<AtomicBool>,
    ) -> io::Result<EventLoop> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(EventLoop {
            poll,
            listener: Some(listener),
            conns: Vec::new(),
            free: Vec::new(),
            serials: 0,
            live: 0,
            state,
            stop,
        })
    }

    /// Runs until the stop flag is set, then drains and returns.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut draining_until: Option<Instant> = None;
        self.state.notices.set_loop_thread();
        loop {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(t) => {
                        if let Some(conn) = self.conn_mut(t) {
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                conn.read_ready = true;
                            }
                        }
                    }
                }
            }
            self.tick();
            if self.stop.load(Ordering::Relaxed) {
                let until = *draining_until.get_or_insert_with(|| {
                    tracing::info!(
                        connections = self.live,
                        "stopping: no new connections, draining responses"
                    );
                    if let Some(mut l) = self.listener.take() {
                        let _ = self.poll.registry().deregister(&mut l);
                    }
                    if let Err(e) = self.state.engine.flush_all() {
                        tracing::error!(error = %e, "final flush failed");
                    }
                    Instant::now() + SHUTDOWN_DRAIN
                });
                let drained = self.conns.iter().flatten().all(|c| c.outbox.is_empty())
                    && self.state.pending_acks.is_empty()
                    && !self.state.worker.busy()
                    && !self.state.reader.busy();
                if drained || Instant::now() >= until {
                    return Ok(());
                }
            }
        }
    }

    fn next_timeout(&self) -> Duration {
        let now = Instant::now();
        let mut timeout = Duration::from_secs(1); // idle-connection sweep
        let limit = self.state.limits.buffered_bytes_max;
        let readable = |c: &Connection| c.read_ready && !c.closing && c.outbox.bytes() < limit;
        if !self.state.to_pump.is_empty()
            || self.conns.iter().flatten().any(readable)
            || self.state.worker.any_done()
            || self.state.reader.any_done()
            // Changes this thread made after the tick took the notices (it woke nobody).
            || self.state.notices.any()
        {
            return Duration::ZERO;
        }
        for lp in &self.state.long_polls {
            timeout = timeout.min(lp.deadline.saturating_duration_since(now));
        }
        if let Some(deadline) = self.state.groups.next_queue_deadline(now) {
            timeout = timeout.min(deadline.saturating_duration_since(now));
        }
        if let Some(deadline) = self.state.groups.next_deadline() {
            // Just past it: a session ends only once strictly older than its timeout.
            let after = deadline.saturating_duration_since(now) + Duration::from_millis(1);
            timeout = timeout.min(after);
        }
        if self.stop.load(Ordering::Relaxed) {
            timeout = timeout.min(Duration::from_millis(10));
        }
        timeout
    }

    /// Collects what the worker has done: answers the state extractions it has frozen
    /// (on the connection only if it still waits for that job), and hands read chunks to
    /// their extractions (only if still theirs) to be pumped.
    fn finish_work(&mut self) {
        if !self.state.worker.any_done() && !self.state.reader.any_done() {
            return;
        }
        let mut done = self.state.worker.take_done();
        done.extend(self.state.reader.take_done());
        for done in done {
            match done {
                Done::Warmed(job) => self.warmed(job),
                Done::Topic(done) => {
                    let Some(conn) = conn_at(&mut self.conns, done.job.conn) else {
                        continue;
                    };
                    if conn.serial == done.job.serial {
                        dispatch::answer_topic_change(conn, done);
                    }
                }
                Done::Frozen(frozen) => {
                    let Some(conn) = conn_at(&mut self.conns, frozen.job.conn) else {
                        continue;
                    };
                    let id = frozen.job.extraction;
                    if conn.freezing.get(&id).map(|f| f.token) != Some(frozen.job.token) {
                        continue; // closed meanwhile, and the slot reused
                    }
                    let credit_bytes = conn.freezing.remove(&id).map_or(0, |f| f.credit_bytes);
                    crate::dispatch::finish_freeze(&mut self.state, conn, frozen, credit_bytes);
                }
                Done::Info(done) => {
                    let Some(conn) = conn_at(&mut self.conns, done.job.conn) else {
                        continue;
                    };
                    if conn.serial == done.job.serial {
                        crate::dispatch::answer_tenant_info(conn, done);
                    }
                }
                Done::Read(read) => {
                    let Some(conn) = conn_at(&mut self.conns, read.conn) else {
                        continue;
                    };
                    let Some(ex) = conn.extractions.get_mut(&read.extraction) else {
                        continue;
                    };
                    if ex.reading != Some(read.seq) {
                        continue; // not this extraction's read (closed, id reused)
                    }
                    ex.read_done(read.reader, read.result);
                    self.state.to_pump.push((read.conn, read.extraction));
                }
            }
        }
    }

    /// The reader has brought a fetch's or a subscription's pages into the page cache:
    /// answer the fetch now, or pump the subscription (only if it still waits for that
    /// job).
    fn warmed(&mut self, job: crate::worker::WarmJob) {
        match job.waiter {
            Waiter::Nobody => {}
            Waiter::Queue {
                group,
                partition,
                at,
            } => self.state.groups.warmed(&group, partition, at),
            Waiter::Fetch => {
                let Some(i) = self
                    .state
                    .cold_fetches
                    .iter()
                    .position(|c| c.seq == job.seq)
                else {
                    return; // its connection closed meanwhile
                };
                let cold = self.state.cold_fetches.swap_remove(i);
                let Some(conn) = conn_at(&mut self.conns, cold.token) else {
                    return;
                };
                let correlation = cold.fetch.correlation;
                if let Err(e) = dispatch::fetch(&mut self.state, cold.token, conn, cold.fetch, true)
                {
                    let error = crate::state::to_protocol(&e);
                    conn.outbox.encode(|out| {
                        encode_error(out, tidelog_protocol::kind::FETCH, correlation, &error)
                    });
                }
            }
            Waiter::Subscription(id) => {
                let Some(conn) = conn_at(&mut self.conns, job.conn) else {
                    return;
                };
                let Some(sub) = conn.subscriptions.get_mut(&id) else {
                    return;
                };
                if sub.warming != Some(job.seq) {
                    return; // not this subscription's job (closed, id reused)
                }
                sub.warming = None;
                sub.warmed_at = Some(sub.next_offset);
                self.state.to_pump.push((job.conn, id));
            }
        }
    }

    fn conn_mut(&mut self, token: usize) -> Option<&mut Connection> {
        conn_at(&mut self.conns, token)
    }

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            };
            if self.live >= self.state.limits.connections_max {
                refuse(stream, self.state.limits.connections_max);
                continue;
            }
            if let Err(e) = self.add_connection(stream, peer) {
                tracing::warn!(%peer, error = %e, "could not set up a connection");
            }
        }
    }

    fn add_connection(&mut self, mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let sock = socket2::SockRef::from(&stream);
        sock.set_send_buffer_size(SOCKET_BUFFER_BYTES)?;
        sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let token = Token(index + FIRST_CONNECTION);
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.serials += 1;
        self.conns[index] = Some(Connection::new(stream, peer, self.serials));
        self.live += 1;
        tracing::debug!(%peer, token = token.0, "connection accepted");
        Ok(())
    }

    /// Everything one poll tick does after the events are known.
    fn tick(&mut self) {
        let limits = self.state.limits;
        for index in 0..self.conns.len() {
            let token = index + FIRST_CONNECTION;
            let Some(conn) = self.conns[index].as_mut() else {
                continue;
            };
            handle_input(&mut self.state, token, conn);
        }
        self.finish_work();
        for partition in std::mem::take(&mut self.state.flush_wanted) {
            self.state.engine.request_flush(&partition);
        }
        let notices = self.state.notices.take();
        let appended: std::collections::HashSet<String> = notices
            .appended
            .iter()
            .map(|(topic, _)| topic.clone())
            .collect();
        self.apply_notices(notices);
        self.expire_long_polls();
        let now = Instant::now();
        self.state.resumable.retain(|_, r| r.expires > now);
        self.state.groups.expire(now);
        let engine = self.state.engine.clone();
        let reader = &mut self.state.reader;
        let queue = self
            .state
            .groups
            .queue_tick(&engine, now, &appended, reader);
        self.state.pending_acks.extend(queue.acks);
        for (token, frame) in queue.frames {
            if let Some(conn) = self.conn_mut(token) {
                conn.outbox.push_owned(frame);
            }
        }
        for (token, notify, generation) in self.state.groups.take_notices() {
            if let Some(conn) = self.conn_mut(token) {
                conn.outbox
                    .encode(|out| tidelog_protocol::group::encode_notice(out, notify, generation));
            }
        }
        self.pump_scheduled();
        let now = Instant::now();
        for index in 0..self.conns.len() {
            let Some(conn) = self.conns[index].as_mut() else {
                continue;
            };
            let mut broken = false;
            if !conn.outbox.is_empty() {
                match conn.outbox.write_to(&mut conn.stream) {
                    Ok(n) if n > 0 => conn.last_active = now,
                    Ok(_) => {}
                    Err(_) => broken = true,
                }
            }
            // Room again after the outbox filled up: resume this connection's subscriptions.
            if conn.throttled && conn.outbox.bytes() < limits.buffered_bytes_max / 2 {
                conn.throttled = false;
                let ids: Vec<u32> = conn.subscriptions.keys().copied().collect();
                self.state
                    .to_pump
                    .extend(ids.into_iter().map(|id| (index + FIRST_CONNECTION, id)));
            }
            let idle = now.duration_since(conn.last_active) > limits.idle_timeout;
            let finished = (conn.closing || conn.eof) && conn.outbox.is_empty();
            if broken || finished || idle {
                if idle {
                    tracing::info!(peer = %conn.peer, "closing idle connection");
                }
                self.close(index);
            } else if now.duration_since(conn.last_active) > INPUT_SHRINK_AFTER {
                // Only once the connection has gone quiet: a busy one drains its buffer
                // every tick, and re-growing it means zeroing it again.
                conn.input.shrink_if_idle();
            }
        }
    }

    fn apply_notices(&mut self, pending: Pending) {
        if pending.is_empty() {
            return;
        }
        // Durable publishes whose sync has completed.
        let mut acks = std::mem::take(&mut self.state.pending_acks);
        acks.retain_mut(|ack| {
            let durable = pending.durable.get(&ack.key).copied().unwrap_or(0);
            let poisoned = pending.poisoned.contains(&ack.key);
            if durable <= ack.last_offset && !poisoned {
                return true;
            }
            if let Some(conn) = self.conn_mut(ack.token) {
                if durable > ack.last_offset {
                    conn.outbox.push_owned(std::mem::take(&mut ack.response));
                } else {
                    let error = ProtocolError::new(
                        ErrorCode::StorageFailed,
                        format!(
                            "partition {}/{} failed to sync; the batches may not be durable",
                            ack.key.0, ack.key.1
                        ),
                    );
                    conn.outbox
                        .encode(|out| encode_error(out, ack.kind, ack.correlation, &error));
                }
            }
            false
        });
        self.state.pending_acks = acks;
        // Long polls and subscriptions of partitions that grew.
        if pending.appended.is_empty() {
            return;
        }
        let polls = std::mem::take(&mut self.state.long_polls);
        for lp in polls {
            if !pending.appended.contains(&lp.key) {
                self.state.long_polls.push(lp);
                continue;
            }
            let Some(conn) = self.conn_mut(lp.token) else {
                continue;
            };
            match lp.partition.read(lp.from, lp.max_bytes) {
                Ok(f) if f.is_empty() => self.state.long_polls.push(lp),
                result => answer_long_poll(conn, &lp, result),
            }
        }
        for key in &pending.appended {
            if let Some(subs) = self.state.subscribers.get(key) {
                self.state.to_pump.extend(subs.iter().copied());
            }
        }
    }

    fn expire_long_polls(&mut self) {
        let now = Instant::now();
        let polls = std::mem::take(&mut self.state.long_polls);
        for lp in polls {
            if lp.deadline > now {
                self.state.long_polls.push(lp);
                continue;
            }
            let Some(conn) = self.conn_mut(lp.token) else {
                continue;
            };
            // Nothing arrived in time: an empty result at the requested position.
            answer_long_poll(conn, &lp, lp.partition.read(lp.from, lp.max_bytes));
        }
    }

    fn pump_scheduled(&mut self) {
        let limits = self.state.limits;
        let mut work = std::mem::take(&mut self.state.to_pump);
        work.sort_unstable();
        work.dedup();
        for (token, id) in work {
            let Some(conn) = conn_at(&mut self.conns, token) else {
                continue;
            };
            let key = conn
                .subscriptions
                .get(&id)
                .map(|s| crate::state::key_of(&s.partition));
            let (worker, reader) = (&mut self.state.worker, &mut self.state.reader);
            match deliver::pump(conn, token, id, &limits, worker, reader) {
                Pumped::Idle => {}
                Pumped::More => self.state.to_pump.push((token, id)),
                Pumped::Ended => {
                    if let Some(key) = key {
                        self.state.unsubscribe(token, &key, id);
                    }
                }
            }
        }
    }

    fn close(&mut self, index: usize) {
        let Some(mut conn) = self.conns[index].take() else {
            return;
        };
        let token = index + FIRST_CONNECTION;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        for (id, sub) in conn.subscriptions.drain() {
            let key = crate::state::key_of(&sub.partition);
            self.state.unsubscribe(token, &key, id);
        }
        self.state.long_polls.retain(|lp| lp.token != token);
        self.state.cold_fetches.retain(|c| c.token != token);
        self.state.pending_acks.retain(|a| a.token != token);
        self.state.to_pump.retain(|&(t, _)| t != token);
        self.state.groups.connection_closed(token);
        self.free.push(index);
        self.live -= 1;
        tracing::debug!(peer = %conn.peer, "connection closed");
    }
}

/// Answers a parked fetch with what a read found (data, nothing, or an error).
fn answer_long_poll(
    conn: &mut Connection,
    lp: &crate::state::LongPoll,
    result: Result<tidelog_engine::Fetched, tidelog_engine::EngineError>,
) {
    match result {
        Ok(f) => deliver::send_fetched(
            &mut conn.outbox,
            lp.correlation,
            lp.partition.id(),
            &f,
            lp.tenant.as_deref(),
        ),
        Err(e) => {
            let error = crate::state::to_protocol(&e);
            conn.outbox.encode(|out| {
                encode_error(out, tidelog_protocol::kind::FETCH, lp.correlation, &error)
            });
        }
    }
}

/// The connection of `token`, if it is open.
fn conn_at(conns: &mut [Option<Connection>], token: usize) -> Option<&mut Connection> {
    token
        .checked_sub(FIRST_CONNECTION)
        .and_then(|i| conns.get_mut(i))
        .and_then(Option::as_mut)
}

/// Reads what the connection has and handles every whole frame, unless its outbox is
/// full (then the client must read first: back-pressure).
fn handle_input(state: &mut State, token: usize, conn: &mut Connection) {
    let limits = state.limits;
    if conn.closing || conn.admin_pending || conn.outbox.bytes() >= limits.buffered_bytes_max {
        return;
    }
    if conn.read_ready {
        if let Err(e) = conn.read_some(limits.read_budget_bytes, limits.frame_bytes_max as usize) {
            tracing::debug!(peer = %conn.peer, error = %e, "read failed");
            conn.eof = true;
            conn.read_ready = false;
        }
    }
    let mut input = std::mem::take(&mut conn.input);
    // Every whole frame read so far first, so that consecutive publishes can share one
    // write (dispatch::handle_frames).
    let mut ranges = Vec::new();
    let mut broken = None;
    loop {
        match input.next_frame(limits.frame_bytes_max) {
            NextFrame::Frame(header, range) => ranges.push((header, range)),
            NextFrame::NeedMore => break,
            NextFrame::Broken(error) => {
                broken = Some(error);
                break;
            }
        }
    }
    let frames: Vec<(FrameHeader, &[u8])> = ranges
        .iter()
        .map(|(header, range)| (*header, input.bytes(range.clone())))
        .collect();
    let handled = dispatch::handle_frames(state, token, conn, &frames);
    drop(frames);
    if let Some((_, range)) = ranges.get(handled) {
        // Stopped early (closing, or the outbox is full: the client must read first). The
        // rest waits in the buffer.
        input.rewind_to(range.start);
    } else if let Some(error) = broken {
        tracing::debug!(peer = %conn.peer, %error, "framing lost; closing the connection");
        conn.outbox.encode(|out| encode_error(out, 0, 0, &error));
        conn.closing = true;
    }
    conn.input = input;
}

/// Over the connection limit: say so (best effort) and close.
fn refuse(mut stream: TcpStream, max: usize) {
    let mut frame = Vec::new();
    let error = ProtocolError::new(
        ErrorCode::ServerOverloaded,
        format!("the server accepts at most {max} connections"),
    );
    encode_error(&mut frame, 0, 0, &error);
    let _ = stream.write(&frame);
    tracing::warn!("connection refused: at the connection limit ({max})");
}
