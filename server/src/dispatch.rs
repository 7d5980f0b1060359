//! Request handling: one decoded frame → engine calls → a response queued on the
//! connection (or parked: a durable publish until its sync, a fetch until data arrives).
//!
//! Every failure becomes an error response with its code; nothing here panics on client
//! input. Framing errors are handled by the caller (the connection closes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidelog_engine::extract::Criteria;
use tidelog_engine::{CheckedBatch, CleanupPolicy, IndexNotes, Partition, SeekFrom, TopicConfig};
use tidelog_protocol::frame::{FrameHeader, HEADER_LEN};
use tidelog_protocol::response::{encode_error, encode_response};
use tidelog_protocol::{
    batch, kind, Ack, ErrorCode, ExtractMode, PartitionDescription, PartitionOffsets,
    ProtocolError, PublishedBatch, Request, Response, StartAt, TopicDescription, TopicSettings,
    PROTOCOL_VERSION,
};

use crate::connection::{Connection, Freezing};
use crate::deliver;
use crate::extraction::{Extraction, Resumable, ResumeSpec};
use crate::state::{key_of, to_protocol, ColdFetch, FetchArgs, LongPoll, State};
use crate::subscription::Subscription;
use crate::worker;

/// Handles the whole frames of one read from connection `token`, in order. Returns how
/// many it handled: it stops early once the connection starts closing or its outbox is
/// full (the client must read first; the rest waits in the input buffer).
///
/// Consecutive publishes to one partition are appended together
/// (`Partition::append_checked`): their batches go to the log in one write, which the
/// page cache makes cheaper per byte than one write each. Each still gets its own
/// answer, in order, exactly as if it had been handled alone.
pub fn handle_frames(
    state: &mut State,
    token: usize,
    conn: &mut Connection,
    frames: &[(FrameHeader, &[u8])],
) -> usize {
    let mut i = 0;
    while i < frames.len() {
        if conn.closing
            || conn.admin_pending
            || conn.outbox.bytes() >= state.limits.buffered_bytes_max
        {
            break;
        }
        // Publishes go straight to `publish`, decoded once (a single one too).
        let (group, topic, partition) = publish_group(conn, &frames[i..]);
        if !group.is_empty() {
            if let Err(error) = publish(state, token, conn, topic, partition, &group) {
                for f in &group {
                    conn.outbox
                        .encode(|out| encode_error(out, kind::PUBLISH, f.correlation, &error));
                }
            }
            i += group.len();
            continue;
        }
        let (header, frame) = frames[i];
        handle(state, token, conn, header, frame);
        i += 1;
    }
    i
}

/// The PUBLISH requests to one partition at the head of `frames` (none unless the
/// connection is past its HELLO), with that topic and partition.
fn publish_group<'a>(
    conn: &Connection,
    frames: &[(FrameHeader, &'a [u8])],
) -> (Vec<PublishFrame<'a>>, &'a str, u32) {
    let mut group = Vec::new();
    let mut target = ("", 0);
    if !conn.handshaken {
        return (group, target.0, target.1);
    }
    for (header, frame) in frames {
        if header.kind != kind::PUBLISH {
            break;
        }
        let body = frame.get(HEADER_LEN..).unwrap_or(&[]);
        let Ok(Request::Publish {
            topic,
            partition,
            ack,
            batches,
        }) = decode(conn, header, body)
        else {
            break;
        };
        if group.is_empty() {
            target = (topic, partition);
        } else if target != (topic, partition) {
            break;
        }
        group.push(PublishFrame {
            correlation: header.correlation,
            ack,
            batches,
        });
    }
    (group, target.0, target.1)
}

/// Handles one whole request frame from connection `token`.
pub fn handle(
    state: &mut State,
    token: usize,
    conn: &mut Connection,
    header: FrameHeader,
    frame: &[u8],
) {
    let body = frame.get(HEADER_LEN..).unwrap_or(&[]);
    let result = decode(conn, &header, body).and_then(|request| {
        let is_hello = matches!(request, Request::Hello { .. });
        if !conn.handshaken && !is_hello {
            conn.closing = true;
            return Err(ProtocolError::new(
                ErrorCode::HandshakeRequired,
                "the first request on a connection must be HELLO",
            ));
        }
        let expects_response = request.expects_response();
        let kind = request.kind();
        execute(state, token, conn, header.correlation, request)
            .map(|reply| (reply, expects_response, kind))
    });
    match result {
        Ok((Reply::Now(response), true, kind)) => {
            conn.outbox
                .encode(|out| encode_response(out, kind, header.correlation, &response));
        }
        Ok(_) => {}
        Err(error) => {
            conn.outbox
                .encode(|out| encode_error(out, header.kind, header.correlation, &error));
        }
    }
}

fn decode<'a>(
    conn: &Connection,
    header: &FrameHeader,
    body: &'a [u8],
) -> Result<Request<'a>, ProtocolError> {
    if header.is_response() || header.is_push() {
        return Err(ProtocolError::invalid(
            "clients send requests: RESPONSE and PUSH flags must be clear",
        ));
    }
    if header.version != PROTOCOL_VERSION {
        return Err(ProtocolError::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "frame version {} is not supported (this server speaks {PROTOCOL_VERSION}){}",
                header.version,
                if conn.handshaken { "" } else { "; send HELLO" }
            ),
        ));
    }
    Request::decode(header.kind, body)
}

/// What a handler produced.
enum Reply<'a> {
    /// Send this response now (if the request expects one).
    Now(Response<'a>),
    /// The handler queued its response itself, or parked it.
    Handled,
}

fn execute<'a>(
    state: &mut State,
    token: usize,
    conn: &mut Connection,
    correlation: u64,
    request: Request<'a>,
) -> Result<Reply<'a>, ProtocolError> {
    let engine = state.engine.clone();
    let e = |err| to_protocol(&err);
    Ok(match request {
        Request::Hello {
            min_version,
            max_version,
            client,
        } => {
            if !(min_version..=max_version).contains(&PROTOCOL_VERSION) {
                conn.closing = true;
                return Err(ProtocolError::new(
                    ErrorCode::UnsupportedVersion,
                    format!("client speaks versions {min_version}..={max_version}; this server speaks {PROTOCOL_VERSION}"),
                ));
            }
            conn.handshaken = true;
            conn.client_name = client.chars().take(128).collect();
            tracing::debug!(peer = %conn.peer, client, "handshake");
            conn.outbox.encode(|out| {
                encode_response(
                    out,
                    kind::HELLO,
                    correlation,
                    &Response::Hello {
                        version: PROTOCOL_VERSION,
                        server: &state.server_name,
                        frame_bytes_max: state.limits.frame_bytes_max,
                        fetch_bytes_max: state.limits.fetch_bytes_max,
                    },
                )
            });
            Reply::Handled
        }
        Request::Ping => Reply::Now(Response::Done),
        Request::CreateTopic { name, settings } => {
            refuse_internal(name)?;
            let config = topic_config(&state.topic_defaults, &settings);
            let change = worker::TopicChange::Create(name.to_string(), config);
            change_topic(state, token, conn, correlation, kind::CREATE_TOPIC, change)?
        }
        Request::DeleteTopic { name } => {
            refuse_internal(name)?;
            let change = worker::TopicChange::Delete(name.to_string());
            change_topic(state, token, conn, correlation, kind::DELETE_TOPIC, change)?
        }
        Request::AddPartitions { name, partitions } => {
            refuse_internal(name)?;
            let change = worker::TopicChange::AddPartitions(name.to_string(), partitions);
            change_topic(
                state,
                token,
                conn,
                correlation,
                kind::ADD_PARTITIONS,
                change,
            )?
        }
        Request::ListTopics => {
            let names = engine.topic_names();
            let mut topics = Vec::with_capacity(names.len());
            for name in &names {
                let partitions = engine
                    .topic(name)
                    .map(|t| t.partitions().len() as u32)
                    .unwrap_or(0);
                topics.push((name.clone(), partitions));
            }
            conn.outbox.encode(|out| {
                let list: Vec<(&str, u32)> = topics.iter().map(|(n, p)| (n.as_str(), *p)).collect();
                encode_response(out, kind::LIST_TOPICS, correlation, &Response::Topics(list))
            });
            Reply::Handled
        }
        Request::DescribeTopic { name } => {
            let info = engine.describe_topic(name).map_err(e)?;
            Reply::Now(Response::Described(TopicDescription {
                segment_bytes: info.config.segment_bytes,
                retention_bytes: info.config.retention_bytes,
                retention_ms: info.config.retention_ms,
                cleanup: u8::from(info.config.cleanup == CleanupPolicy::Compact),
                tombstone_retention_ms: info.config.tombstone_retention_ms,
                created_ms: info.created_ms,
                partitions: info
                    .partitions
                    .iter()
                    .map(|p| PartitionDescription {
                        offsets: PartitionOffsets {
                            partition: p.partition,
                            earliest: p.earliest_offset,
                            next: p.next_offset,
                            durable: p.durable_offset,
                        },
                        size_bytes: p.size_bytes,
                        segments: p.segments as u32,
                    })
                    .collect(),
            }))
        }
        Request::Offsets { topic } => {
            let t = engine.topic(topic).map_err(e)?;
            Reply::Now(Response::Offsets(
                t.partitions()
                    .iter()
                    .map(|p| PartitionOffsets {
                        partition: p.id(),
                        earliest: p.earliest_offset(),
                        next: p.next_offset(),
                        durable: p.durable_offset(),
                    })
                    .collect(),
            ))
        }
        Request::Publish {
            topic,
            partition,
            ack,
            batches,
        } => {
            let request = PublishFrame {
                correlation,
                ack,
                batches,
            };
            publish(state, token, conn, topic, partition, &[request])?;
            Reply::Handled
        }
        Request::Fetch {
            topic,
            partition,
            start,
            max_bytes,
            max_wait_ms,
            tenant,
        } => {
            let p = state.partition(topic, partition)?;
            let args = FetchArgs {
                correlation,
                from: p.resolve(seek(start)),
                partition: p,
                max_bytes: max_bytes.clamp(1, state.limits.fetch_bytes_max),
                max_wait_ms,
                tenant: tenant.map(<[u8]>::to_vec),
            };
            fetch(state, token, conn, args, false).map_err(e)?;
            Reply::Handled
        }
        Request::Subscribe {
            subscription,
            topic,
            partition,
            start,
            credit_bytes,
            tenant,
            filter,
        } => {
            if conn.subscriptions.contains_key(&subscription) {
                return Err(ProtocolError::new(
                    ErrorCode::SubscriptionExists,
                    format!("subscription {subscription} already exists on this connection"),
                ));
            }
            if conn.subscriptions.len() >= state.limits.subscriptions_per_connection_max {
                return Err(ProtocolError::new(
                    ErrorCode::ServerOverloaded,
                    format!(
                        "at most {} subscriptions per connection",
                        state.limits.subscriptions_per_connection_max
                    ),
                ));
            }
            let p = state.partition(topic, partition)?;
            let from = p.resolve(seek(start));
            if from < p.earliest_offset() || from > p.next_offset() {
                return Err(e(tidelog_engine::EngineError::OffsetOutOfRange {
                    requested: from,
                    earliest: p.earliest_offset(),
                    next: p.next_offset(),
                }));
            }
            state
                .subscribers
                .entry(key_of(&p))
                .or_default()
                .push((token, subscription));
            conn.subscriptions.insert(
                subscription,
                Subscription {
                    partition: p,
                    next_offset: from,
                    credit_bytes: u64::from(credit_bytes),
                    tenant: tenant.map(<[u8]>::to_vec),
                    criteria: (!filter.is_empty()).then(|| criteria_of(&filter)),
                    warming: None,
                    warmed_at: None,
                },
            );
            conn.outbox.encode(|out| {
                encode_response(
                    out,
                    kind::SUBSCRIBE,
                    correlation,
                    &Response::Subscribed { start_offset: from },
                )
            });
            state.to_pump.push((token, subscription));
            Reply::Handled
        }
        Request::Unsubscribe { subscription } => {
            let sub = conn
                .subscriptions
                .remove(&subscription)
                .ok_or_else(|| unknown_subscription(subscription))?;
            state.unsubscribe(token, &key_of(&sub.partition), subscription);
            Reply::Now(Response::Done)
        }
        Request::GrantCredits {
            subscription,
            credit_bytes,
        } => {
            let credit = if let Some(sub) = conn.subscriptions.get_mut(&subscription) {
                &mut sub.credit_bytes
            } else if let Some(ex) = conn.extractions.get_mut(&subscription) {
                &mut ex.credit_bytes
            } else if let Some(f) = conn.freezing.get_mut(&subscription) {
                &mut f.credit_bytes
            } else {
                return Err(unknown_subscription(subscription));
            };
            *credit = credit.saturating_add(u64::from(credit_bytes));
            state.to_pump.push((token, subscription));
            Reply::Handled
        }
        Request::Group(group) => {
            crate::groups::handle(state, token, conn, correlation, group)?;
            Reply::Handled
        }
        Request::TenantInfo { topic, tenant } => {
            let partitions = engine.topic(topic).map_err(e)?.partitions().len() as u32;
            let partition =
                tidelog_protocol::partitioner::partition_for(Some(tenant), None, partitions)
                    .unwrap_or(0);
            let p = state.partition(topic, partition)?;
            // The index is caught up on the worker thread; answered when it is done.
            let submitted = state.worker.submit(worker::Job::Info(worker::InfoJob {
                conn: token,
                serial: conn.serial,
                correlation,
                partition: p,
                tenant: tenant.to_vec(),
            }));
            if !submitted {
                return Err(worker_stopped());
            }
            Reply::Handled
        }
        Request::Extract {
            extraction,
            topic,
            partition,
            tenant,
            mode,
            filter,
            credit_bytes,
            resume_token,
            resume_cursor,
        } => {
            if conn.subscriptions.contains_key(&extraction)
                || conn.extractions.contains_key(&extraction)
                || conn.freezing.contains_key(&extraction)
            {
                return Err(ProtocolError::new(
                    ErrorCode::SubscriptionExists,
                    format!("id {extraction} is in use on this connection"),
                ));
            }
            let window = state.limits.extract_resume_window;
            let (ex, total) = if resume_token != 0 {
                let r = state.resumable.get_mut(&resume_token).ok_or_else(|| {
                    ProtocolError::new(
                        ErrorCode::ExtractionExpired,
                        format!("extraction {resume_token:#x} cannot be resumed (older than {window:?}, or the server restarted); start a new one"),
                    )
                })?;
                if r.partition.topic() != topic || r.partition.id() != partition {
                    return Err(ProtocolError::invalid(format!(
                        "extraction {resume_token:#x} is of topic {} partition {}, not {topic} partition {partition}",
                        r.partition.topic(),
                        r.partition.id()
                    )));
                }
                r.expires = Instant::now() + window;
                (
                    r.at(resume_cursor, u64::from(credit_bytes), resume_token),
                    u64::MAX,
                )
            } else {
                let p = state.partition(topic, partition)?;
                let partitions = engine.topic(topic).map_err(e)?.partitions().len() as u32;
                check_tenant_partition(&p, partitions, tenant)?;
                let criteria = criteria_of(&filter);
                let ex_token = state.next_token;
                state.next_token = state.next_token.wrapping_add(2);
                match mode {
                    ExtractMode::State => {
                        // Frozen on the worker thread; answered when it is done.
                        let submitted =
                            state.worker.submit(worker::Job::Freeze(worker::FreezeJob {
                                conn: token,
                                extraction,
                                correlation,
                                token: ex_token,
                                partition: p,
                                tenant: tenant.to_vec(),
                                criteria,
                            }));
                        if !submitted {
                            return Err(worker_stopped());
                        }
                        conn.freezing.insert(
                            extraction,
                            Freezing {
                                token: ex_token,
                                credit_bytes: u64::from(credit_bytes),
                            },
                        );
                        return Ok(Reply::Handled);
                    }
                    ExtractMode::History => {
                        // Records up to W are immutable: reading W is the whole fence.
                        let watermark = p.next_offset().checked_sub(1);
                        let next = criteria
                            .since_ms
                            .map_or(p.earliest_offset(), |t| p.offset_for_time(t));
                        let spec = ResumeSpec::History(tenant.to_vec(), p.segments());
                        let ex = register(state, ex_token, p, watermark, criteria, spec).at(
                            next,
                            u64::from(credit_bytes),
                            ex_token,
                        );
                        (ex, u64::MAX)
                    }
                }
            };
            begin_extraction(state, token, conn, extraction, correlation, ex, total);
            Reply::Handled
        }
    })
}

/// Answers a FETCH: now, or parked until data arrives (a long poll), or — if its pages
/// are out of the page cache and it has not been `warmed` yet — once the reader thread
/// has read them in (`cold.rs`).
pub fn fetch(
    state: &mut State,
    token: usize,
    conn: &mut Connection,
    args: FetchArgs,
    warmed: bool,
) -> Result<(), tidelog_engine::EngineError> {
    if !warmed {
        let cold = crate::cold::to_reader(
            &mut state.reader,
            token,
            || worker::Waiter::Fetch,
            &args.partition,
            args.from,
            args.max_bytes,
        );
        if let Some(seq) = cold {
            state.cold_fetches.push(ColdFetch {
                seq,
                token,
                fetch: args,
            });
            return Ok(());
        }
    }
    let fetched = args.partition.read(args.from, args.max_bytes)?;
    if fetched.is_empty() && args.max_wait_ms > 0 {
        let wait = Duration::from_millis(u64::from(args.max_wait_ms)).min(state.limits.max_wait);
        state.long_polls.push(LongPoll {
            token,
            correlation: args.correlation,
            key: key_of(&args.partition),
            partition: args.partition,
            from: args.from,
            max_bytes: args.max_bytes,
            tenant: args.tenant,
            deadline: Instant::now() + wait,
        });
    } else {
        let partition = args.partition.id();
        deliver::send_fetched(
            &mut conn.outbox,
            args.correlation,
            partition,
            &fetched,
            args.tenant.as_deref(),
        );
    }
    Ok(())
}

/// Hands a topic change to the worker thread: creating a topic preallocates and syncs a
/// segment per partition (about 2 ms each here, 140 ms for 64 partitions), deleting one
/// unlinks and syncs as many, and on the loop every client would wait that long. The
/// connection's later requests wait until it is done (`Connection::admin_pending`), so a
/// client that pipelines a publish behind a create still finds the topic.
fn change_topic<'a>(
    state: &mut State,
    token: usize,
    conn: &mut Connection,
    correlation: u64,
    kind: u16,
    change: worker::TopicChange,
) -> Result<Reply<'a>, ProtocolError> {
    let job = worker::Job::Topic(worker::TopicJob {
        conn: token,
        serial: conn.serial,
        correlation,
        kind,
        engine: state.engine.clone(),
        change,
    });
    if !state.worker.submit(job) {
        return Err(worker_stopped());
    }
    conn.admin_pending = true;
    Ok(Reply::Handled)
}

/// Answers a topic change the worker has made, and lets the connection's later requests
/// run.
pub fn answer_topic_change(conn: &mut Connection, done: worker::TopicDone) {
    conn.admin_pending = false;
    // Its later requests wait in the input buffer: handle them on the next tick.
    conn.read_ready = true;
    let job = done.job;
    match done.result {
        Ok(()) => conn
            .outbox
            .encode(|out| encode_response(out, job.kind, job.correlation, &Response::Done)),
        Err(e) => {
            let error = to_protocol(&e);
            conn.outbox
                .encode(|out| encode_error(out, job.kind, job.correlation, &error));
        }
    }
}

/// The answer to a request whose work the worker thread would have done, when it is gone
/// (it panicked).
pub fn worker_stopped() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Internal,
        "the server's worker thread has stopped",
    )
}

/// Answers a TENANT_INFO the worker has looked up.
pub fn answer_tenant_info(conn: &mut Connection, done: worker::InfoDone) {
    let info = done.info;
    let response = Response::TenantInfo {
        partition: done.job.partition.id(),
        latest_offset: info.and_then(|i| i.latest_offset).unwrap_or(u64::MAX),
        live_keys: info.map_or(0, |i| i.live_keys),
        events: info.map_or(0, |i| i.events),
    };
    conn.outbox
        .encode(|out| encode_response(out, kind::TENANT_INFO, done.job.correlation, &response));
}

/// Keeps an extraction resumable (by its token) for the resume window.
fn register(
    state: &mut State,
    ex_token: u64,
    partition: Arc<Partition>,
    watermark: Option<u64>,
    criteria: Criteria,
    spec: ResumeSpec,
) -> &Resumable {
    let resumable = Resumable {
        partition,
        watermark,
        criteria,
        spec,
        expires: Instant::now() + state.limits.extract_resume_window,
    };
    state.resumable.insert(ex_token, resumable);
    &state.resumable[&ex_token]
}

/// A state extraction whose snapshot the worker has taken: registers it, answers the
/// EXTRACT and starts streaming.
pub fn finish_freeze(
    state: &mut State,
    conn: &mut Connection,
    frozen: worker::Frozen,
    credit_bytes: u64,
) {
    let worker::Frozen { job, snapshot } = frozen;
    let total = if job.criteria.is_empty() {
        snapshot.len() as u64
    } else {
        u64::MAX
    };
    let watermark = snapshot.watermark;
    let spec = ResumeSpec::State(snapshot);
    let ex = register(
        state,
        job.token,
        job.partition,
        watermark,
        job.criteria,
        spec,
    )
    .at(0, credit_bytes, job.token);
    begin_extraction(
        state,
        job.conn,
        conn,
        job.extraction,
        job.correlation,
        ex,
        total,
    );
}

/// Answers an EXTRACT with its watermark and queues the extraction's first pump.
fn begin_extraction(
    state: &mut State,
    token: usize,
    conn: &mut Connection,
    extraction: u32,
    correlation: u64,
    ex: Extraction,
    total: u64,
) {
    let (watermark, ex_token) = (ex.watermark.unwrap_or(u64::MAX), ex.token);
    conn.extractions.insert(extraction, ex);
    conn.outbox.encode(|out| {
        encode_response(
            out,
            kind::EXTRACT,
            correlation,
            &Response::Extracting {
                watermark,
                total,
                token: ex_token,
            },
        )
    });
    state.to_pump.push((token, extraction));
}

/// One PUBLISH request.
struct PublishFrame<'a> {
    correlation: u64,
    ack: Ack,
    batches: &'a [u8],
}

/// Appends the batches of publish requests to one partition and answers each request:
/// every batch is checked first (no lock), then they are appended together. A request
/// stops at its first bad batch; the batches before it stay appended, and its error says
/// how many. An error returned here (unknown topic or partition) is every request's.
fn publish(
    state: &mut State,
    token: usize,
    conn: &mut Connection,
    topic: &str,
    partition: u32,
    requests: &[PublishFrame<'_>],
) -> Result<(), ProtocolError> {
    refuse_internal(topic)?;
    let p = state.partition(topic, partition)?;
    // Every request's checked batches in one vector (a request mostly carries one batch),
    // each request's run a slice of it: one allocation per group, not one per request.
    let mut checked: Vec<CheckedBatch<'_>> = Vec::with_capacity(requests.len());
    let mut ends: Vec<usize> = Vec::with_capacity(requests.len());
    let mut refused: Vec<Option<ProtocolError>> = Vec::with_capacity(requests.len());
    // The loop's one buffer of index notes, reused from group to group.
    let mut notes = std::mem::take(&mut state.index_notes);
    notes.clear();
    for request in requests {
        refused.push(check_batches(&p, request.batches, &mut notes, &mut checked));
        ends.push(checked.len());
    }
    let runs: Vec<&[CheckedBatch<'_>]> = ends
        .iter()
        .scan(0, |start, &end| {
            let run = &checked[*start..end];
            *start = end;
            Some(run)
        })
        .collect();
    let outcomes = p.append_checked(&runs, &notes);
    state.index_notes = notes;
    for ((request, outcome), refused) in requests.iter().zip(outcomes).zip(refused) {
        let published: Vec<PublishedBatch> = outcome
            .appended
            .iter()
            .map(|a| PublishedBatch {
                base_offset: a.base_offset,
                last_offset: a.last_offset,
                duplicate: a.duplicate,
            })
            .collect();
        let error = match (outcome.error, refused) {
            (Some(e), _) => Some(to_protocol(&e)),
            (None, Some(e)) => Some(e),
            (None, None) if published.is_empty() => Some(ProtocolError::new(
                ErrorCode::InvalidBatch,
                "a publish carries at least one batch",
            )),
            (None, None) => None,
        };
        if let Some(mut error) = error {
            if !published.is_empty() {
                error.message = format!(
                    "{} (the {} batches before it were appended)",
                    error.message,
                    published.len()
                );
            }
            conn.outbox
                .encode(|out| encode_error(out, kind::PUBLISH, request.correlation, &error));
            continue;
        }
        match request.ack {
            Ack::None => {}
            Ack::Written => conn.outbox.encode(|out| {
                encode_response(
                    out,
                    kind::PUBLISH,
                    request.correlation,
                    &Response::Published(published),
                )
            }),
            Ack::Durable => {
                let last_offset = published.iter().map(|b| b.last_offset).max().unwrap_or(0);
                let mut response = Vec::new();
                encode_response(
                    &mut response,
                    kind::PUBLISH,
                    request.correlation,
                    &Response::Published(published),
                );
                state.reply_when_durable(
                    token,
                    conn,
                    &p,
                    last_offset,
                    response,
                    kind::PUBLISH,
                    request.correlation,
                );
            }
        }
    }
    Ok(())
}

/// The batches of one publish request, each checked by the partition and pushed to
/// `checked`, up to the first that fails (its error is returned).
fn check_batches<'a>(
    p: &Partition,
    batches: &'a [u8],
    notes: &mut IndexNotes,
    checked: &mut Vec<CheckedBatch<'a>>,
) -> Option<ProtocolError> {
    let first = checked.len();
    let mut rest = batches;
    while !rest.is_empty() {
        let len = batch::peek_len(rest).map_or(rest.len() + 1, |l| l as usize);
        let Some(one) = rest.get(..len).filter(|_| len > 0) else {
            let error = ProtocolError::new(
                ErrorCode::InvalidBatch,
                format!(
                    "batch {} is truncated: batch_len {len}, {} bytes left",
                    checked.len() - first,
                    rest.len()
                ),
            );
            return Some(error);
        };
        match p.check(one, notes) {
            Ok(c) => checked.push(c),
            Err(err) => return Some(to_protocol(&err)),
        }
        rest = &rest[len..];
    }
    None
}

/// The engine's form of a request's criteria.
fn criteria_of(filter: &tidelog_protocol::ExtractFilter<'_>) -> Criteria {
    Criteria {
        since_ms: (filter.since_ms != i64::MIN).then_some(filter.since_ms),
        until_ms: (filter.until_ms != i64::MAX).then_some(filter.until_ms),
        key_prefix: (!filter.key_prefix.is_empty()).then(|| filter.key_prefix.as_bytes().to_vec()),
        headers: filter
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect(),
    }
}

/// A tenant's records go to the partition the partitioning rule gives it: an extraction
/// of a tenant on another partition where it has no records is a client's mistake, told
/// as such. (A tenant with no records yet on its own partition has an empty state: the
/// extraction answers with the watermark and no records, and the live stream follows.)
fn check_tenant_partition(
    p: &tidelog_engine::Partition,
    partitions: u32,
    tenant: &[u8],
) -> Result<(), ProtocolError> {
    if tenant.is_empty() || p.tenant_info(tenant).is_some() {
        return Ok(());
    }
    let home =
        tidelog_protocol::partitioner::partition_for(Some(tenant), None, partitions).unwrap_or(0);
    if home != p.id() {
        return Err(ProtocolError::invalid(format!(
            "tenant {:?} has no records in partition {} of {}; by the partitioning rule its partition is {home}",
            String::from_utf8_lossy(tenant),
            p.id(),
            p.topic()
        )));
    }
    Ok(())
}

/// Topics named `__tidelog*` hold the server's own state (committed offsets): clients may
/// read them, never write, create or delete them.
fn refuse_internal(topic: &str) -> Result<(), ProtocolError> {
    if topic.starts_with(INTERNAL_TOPIC_PREFIX) {
        return Err(ProtocolError::new(
            ErrorCode::NotAllowed,
            format!("topic {topic} is internal to the server (prefix {INTERNAL_TOPIC_PREFIX}): read-only"),
        ));
    }
    Ok(())
}

pub const INTERNAL_TOPIC_PREFIX: &str = "__tidelog";

fn unknown_subscription(id: u32) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::UnknownSubscription,
        format!("no subscription {id} on this connection"),
    )
}

fn seek(start: StartAt) -> SeekFrom {
    match start {
        StartAt::Offset(o) => SeekFrom::Offset(o),
        StartAt::Timestamp(t) => SeekFrom::Timestamp(t),
        StartAt::Earliest => SeekFrom::Earliest,
        StartAt::Latest => SeekFrom::Latest,
    }
}

/// A protocol topic request over the server's defaults (0 = default).
fn topic_config(defaults: &TopicConfig, s: &TopicSettings) -> TopicConfig {
    let pick = |v: u64, d: u64| if v == 0 { d } else { v };
    let segment_bytes = if s.segment_bytes == 0 {
        defaults.segment_bytes
    } else {
        s.segment_bytes
    };
    TopicConfig {
        partitions: s.partitions.max(1),
        segment_bytes,
        retention_bytes: pick(s.retention_bytes, defaults.retention_bytes),
        retention_ms: pick(s.retention_ms, defaults.retention_ms),
        batch_bytes_max: defaults.batch_bytes_max.min(segment_bytes),
        cleanup: if s.cleanup == 1 {
            CleanupPolicy::Compact
        } else {
            CleanupPolicy::Delete
        },
        tombstone_retention_ms: pick(s.tombstone_retention_ms, defaults.tombstone_retention_ms),
        ..*defaults
    }
}
