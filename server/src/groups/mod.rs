//! Consumer-group coordination, on the event-loop thread: stream groups (members own
//! partitions, commit offsets) and queue groups (members lease records).
//!
//! - `assign.rs` — the sticky balanced assignor (pure).
//! - `stream.rs` — one group's membership, holdings, fencing and committed offsets (pure,
//!   time passed in).
//! - `offsets_log.rs` — committed offsets as records of the internal topic
//!   `__tidelog_offsets`, loaded from its tenant/key index on start.
//! - `queue.rs` — one queue group's per-partition windows of leased, waiting and settled
//!   records (pure, time passed in).
//! - `queue_io.rs` — queue groups against the engine: filling windows from the log,
//!   reading leased records, dead letters, persisted state in `__tidelog_queues`.
//! - this file — the registry of groups, the request handlers, and the per-tick work of
//!   queue groups (lease expiry, dead letters, parked polls, state snapshots).
//!
//! A commit is acknowledged only once its record is durable (group commit with every other
//! durable write of the tick); membership is not persisted — after a restart members get
//! `UnknownMember` and join again, and resume from the committed offsets.

pub mod assign;
pub mod offsets_log;
pub mod queue;
pub mod queue_io;
pub mod stream;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidelog_engine::{Engine, EngineError, Partition};
use tidelog_protocol::group::{
    Committed, GroupDescription, GroupKind, GroupRequest, GroupResponse, GroupSummary, Heartbeat,
    Leased, MemberDescription, PartitionLag, NO_OFFSET,
};
use tidelog_protocol::response::{encode_error, encode_response};
use tidelog_protocol::{kind, ErrorCode, ProtocolError, Response};

use crate::connection::Connection;
use crate::state::{key_of, to_protocol, PendingAck, State};
use crate::worker::Worker;
use queue::{QueueConfig, QueueGroup};
use stream::{Beat, CommittedOffset, StreamGroup};

/// Session timeouts a member may ask for.
pub const SESSION_TIMEOUT_MIN: Duration = Duration::from_millis(100);
pub const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(600);
/// Groups the server holds (with members or committed offsets).
pub const GROUPS_MAX: usize = 10_000;
/// Members of one group.
pub const MEMBERS_MAX: usize = 4096;
/// Queue polls waiting for records, server-wide.
pub const PARKED_POLLS_MAX: usize = 10_000;
/// Longest a queue poll waits.
pub const QUEUE_POLL_WAIT_MAX: Duration = Duration::from_secs(60);

/// A queue poll waiting for records.
#[derive(Debug)]
struct ParkedPoll {
    token: usize,
    correlation: u64,
    group: String,
    member: u32,
    max_records: u32,
    max_bytes: u32,
    deadline: Instant,
}

/// What a tick of queue work produced for the event loop.
#[derive(Debug, Default)]
pub struct QueueTick {
    /// Frames to queue on connections (answers to parked polls).
    pub frames: Vec<(usize, Vec<u8>)>,
    /// Settlement answers waiting for their snapshot to be durable.
    pub acks: Vec<PendingAck>,
}

/// Every group of the server.
#[derive(Debug)]
pub struct Coordinator {
    groups: BTreeMap<String, StreamGroup>,
    queues: BTreeMap<String, QueueGroup>,
    offsets: Arc<Partition>,
    queue_log: Arc<Partition>,
    /// Member ids carry this, so an id from before a restart is never taken for a new one.
    boot: u64,
    next_member: u64,
    parked: Vec<ParkedPoll>,
    /// Settlement answers (token, correlation, response) waiting for the snapshot that
    /// holds them to be written.
    settled_waiting: Vec<(usize, u64, Vec<u8>)>,
    /// Queue groups whose records may have become deliverable this tick.
    touched: HashSet<String>,
}

impl Coordinator {
    /// Opens the offsets topic and loads every group's committed offsets.
    pub fn open(engine: &Engine, boot: u64) -> Result<Coordinator, EngineError> {
        let offsets = offsets_log::open(engine)?;
        let mut groups = BTreeMap::new();
        for (name, committed) in offsets_log::load(&offsets)? {
            // The topic a group last committed for is the one it follows until a member
            // joins for another.
            let topic = committed
                .iter()
                .max_by_key(|(_, c)| c.timestamp_ms)
                .map(|((t, _), _)| t.clone())
                .unwrap_or_default();
            let mut group = StreamGroup::new(&topic);
            group.committed = committed;
            groups.insert(name, group);
        }
        let queue_log = queue_io::open(engine)?;
        let queues = queue_io::load(&queue_log)?;
        tracing::info!(
            stream_groups = groups.len(),
            queue_groups = queues.len(),
            "consumer groups loaded"
        );
        Ok(Coordinator {
            groups,
            queues,
            offsets,
            queue_log,
            boot,
            next_member: 0,
            parked: Vec::new(),
            settled_waiting: Vec::new(),
            touched: HashSet::new(),
        })
    }

    /// The per-tick work of queue groups: end expired leases, write dead letters, answer
    /// parked polls that can be answered, persist changed windows. `appended`: topics that
    /// received records since the last tick.
    pub fn queue_tick(
        &mut self,
        engine: &Engine,
        now: Instant,
        appended: &HashSet<String>,
        reader: &mut Worker,
    ) -> QueueTick {
        let mut out = QueueTick::default();
        let now_ms = tidelog_engine::fsio::now_ms();
        for (name, g) in &mut self.queues {
            if g.expire(now_ms) > 0 {
                self.touched.insert(name.clone());
            }
            g.prune_members(now);
            for (i, sp) in g.partitions.iter_mut().enumerate() {
                let pending = sp.pending_dead_letters();
                if pending.is_empty() {
                    continue;
                }
                let written = engine.partition(&g.topic, i as u32).and_then(|p| {
                    queue_io::dead_letter(
                        engine,
                        &g.topic,
                        &p,
                        sp,
                        &pending,
                        &g.config.dead_letter_topic,
                        now_ms,
                    )
                });
                match written {
                    Ok(done) => sp.dead_lettered(&done),
                    Err(e) => {
                        tracing::error!(group = name, error = %e, "writing dead letters failed; will retry")
                    }
                }
            }
        }
        if !self.parked.is_empty() {
            for pp in std::mem::take(&mut self.parked) {
                let Some(g) = self.queues.get_mut(&pp.group) else {
                    continue;
                };
                let expired = pp.deadline <= now;
                let maybe = self.touched.contains(&pp.group)
                    || appended.contains(&g.topic)
                    || g.next_wake_ms().is_some_and(|w| w <= now_ms);
                if !maybe && !expired {
                    self.parked.push(pp);
                    continue;
                }
                let mut frame = Vec::new();
                let (member, records, bytes) = (pp.member, pp.max_records, pp.max_bytes);
                match deliver(engine, &pp.group, g, member, records, bytes, now_ms, reader) {
                    Ok(parts) if parts.is_empty() && !expired => {
                        self.parked.push(pp);
                        continue;
                    }
                    Ok(parts) => encode_leased(&mut frame, pp.correlation, &parts),
                    Err(e) => encode_error(&mut frame, kind::QUEUE_POLL, pp.correlation, &e),
                }
                out.frames.push((pp.token, frame));
            }
        }
        self.touched.clear();
        // Persist every changed window (and new groups' settings) in one batch.
        let mut records = Vec::new();
        for (name, g) in &mut self.queues {
            if !g.config_saved {
                records.push(queue_io::config_record(name, g, now_ms));
                g.config_saved = true;
            }
            for (i, sp) in g.partitions.iter_mut().enumerate() {
                if sp.dirty {
                    records.push(queue_io::snapshot_record(
                        name, &g.topic, i as u32, sp, now_ms,
                    ));
                    sp.dirty = false;
                }
            }
        }
        let waiting = std::mem::take(&mut self.settled_waiting);
        if records.is_empty() {
            out.frames
                .extend(waiting.into_iter().map(|(t, _, r)| (t, r)));
            return out;
        }
        match queue_io::persist(&self.queue_log, &records) {
            Ok(last_offset) => {
                engine.request_flush(&self.queue_log);
                out.acks = waiting
                    .into_iter()
                    .map(|(token, correlation, response)| PendingAck {
                        token,
                        key: key_of(&self.queue_log),
                        last_offset,
                        response,
                        kind: kind::QUEUE_SETTLE,
                        correlation,
                    })
                    .collect();
            }
            Err(e) => {
                tracing::error!(error = %e, "persisting queue-group state failed");
                let error = to_protocol(&e);
                for (token, correlation, _) in waiting {
                    let mut frame = Vec::new();
                    encode_error(&mut frame, kind::QUEUE_SETTLE, correlation, &error);
                    out.frames.push((token, frame));
                }
            }
        }
        out
    }

    /// The reader has read in the pages queue group `group`'s partition `partition`
    /// waited for, from `at`: read from there now, and look at the group's parked polls
    /// again.
    pub fn warmed(&mut self, group: &str, partition: u32, at: u64) {
        let Some(g) = self.queues.get_mut(group) else {
            return;
        };
        if let Some(sp) = g.partitions.get_mut(partition as usize) {
            sp.warming = false;
            sp.warmed_at = Some(at);
        }
        self.touched.insert(group.to_string());
    }

    /// When queue work next has something to do (a lease ends, a record becomes
    /// deliverable for a parked poll, a parked poll times out).
    pub fn next_queue_deadline(&self, now: Instant) -> Option<Instant> {
        let now_ms = tidelog_engine::fsio::now_ms();
        let at = |ms: i64| now + Duration::from_millis((ms - now_ms).max(1) as u64);
        let leases = self
            .queues
            .values()
            .filter_map(|g| g.expiries.peek().map(|std::cmp::Reverse((u, _, _))| at(*u)));
        let parked = self.parked.iter().flat_map(|pp| {
            let wake = self
                .queues
                .get(&pp.group)
                .and_then(QueueGroup::next_wake_ms)
                .filter(|w| *w > now_ms)
                .map(at);
            std::iter::once(pp.deadline).chain(wake)
        });
        leases.chain(parked).min()
    }

    /// Removes expired members (and members holding revoked partitions too long).
    pub fn expire(&mut self, now: Instant) {
        for (name, g) in &mut self.groups {
            for member in g.expire(now) {
                tracing::info!(group = name, member, "member removed from its group");
            }
        }
        self.groups
            .retain(|_, g| !g.members.is_empty() || !g.committed.is_empty());
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups
            .values()
            .filter_map(StreamGroup::next_deadline)
            .min()
    }

    /// Notices to push: (connection token, notify id, generation).
    pub fn take_notices(&mut self) -> Vec<(usize, u32, u32)> {
        let mut all = Vec::new();
        for g in self.groups.values_mut() {
            all.append(&mut g.notices);
        }
        all
    }

    pub fn connection_closed(&mut self, token: usize) {
        for g in self.groups.values_mut() {
            g.connection_closed(token);
        }
        self.parked.retain(|p| p.token != token);
        self.settled_waiting.retain(|w| w.0 != token);
    }

    fn group(&mut self, name: &str) -> Result<&mut StreamGroup, ProtocolError> {
        if self.queues.contains_key(name) {
            return Err(kind_mismatch(name, "a queue group"));
        }
        self.groups.get_mut(name).ok_or_else(|| unknown_group(name))
    }

    fn queue(&mut self, name: &str) -> Result<&mut QueueGroup, ProtocolError> {
        if self.groups.contains_key(name) {
            return Err(kind_mismatch(name, "a stream group"));
        }
        self.queues.get_mut(name).ok_or_else(|| unknown_group(name))
    }
}

/// Handles one group request; the response (or a parked durable commit) is queued here.
pub fn handle(
    state: &mut State,
    token: usize,
    conn: &mut Connection,
    correlation: u64,
    request: GroupRequest<'_>,
) -> Result<(), ProtocolError> {
    let kind = request.kind();
    let now = Instant::now();
    let engine = state.engine.clone();
    let respond = |conn: &mut Connection, response: GroupResponse<'_>| {
        conn.outbox.encode(|out| {
            encode_response(out, kind, correlation, &Response::Group(response));
        });
    };
    match request {
        GroupRequest::Heartbeat {
            group,
            topic,
            member_id,
            generation,
            session_timeout_ms,
            notify,
            owned,
        } => {
            check_name("group", group)?;
            let session_timeout = Duration::from_millis(u64::from(session_timeout_ms));
            if !(SESSION_TIMEOUT_MIN..=SESSION_TIMEOUT_MAX).contains(&session_timeout) {
                return Err(ProtocolError::invalid(format!(
                    "session_timeout_ms must be in {}..={}",
                    SESSION_TIMEOUT_MIN.as_millis(),
                    SESSION_TIMEOUT_MAX.as_millis()
                )));
            }
            let partitions = engine
                .topic(topic)
                .map_err(|e| to_protocol(&e))?
                .partitions()
                .len() as u32;
            let co = &mut state.groups;
            if co.queues.contains_key(group) {
                return Err(kind_mismatch(group, "a queue group"));
            }
            if member_id.is_empty() && !co.groups.contains_key(group) {
                if co.groups.len() + co.queues.len() >= GROUPS_MAX {
                    return Err(ProtocolError::new(
                        ErrorCode::ServerOverloaded,
                        format!("at most {GROUPS_MAX} groups"),
                    ));
                }
                co.groups.insert(group.to_string(), StreamGroup::new(topic));
            }
            let (boot, next_member) = (co.boot, &mut co.next_member);
            let g = co.groups.get_mut(group).ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::UnknownMember,
                    format!(
                        "member {member_id} is not in group {group} (no such group); join again"
                    ),
                )
            })?;
            if g.topic != topic {
                if !g.members.is_empty() {
                    return Err(ProtocolError::new(
                        ErrorCode::GroupTopicMismatch,
                        format!("group {group} consumes topic {}, not {topic}", g.topic),
                    ));
                }
                // An empty group may move to another topic; its old offsets are kept.
                g.topic = topic.to_string();
                g.holders.clear();
                g.target.clear();
            }
            if member_id.is_empty() && g.members.len() >= MEMBERS_MAX {
                return Err(ProtocolError::new(
                    ErrorCode::ServerOverloaded,
                    format!("at most {MEMBERS_MAX} members per group"),
                ));
            }
            let client = format!("{} {}", conn.peer, conn.client_name);
            let beat = Beat {
                member_id,
                generation,
                session_timeout,
                notify: (notify != 0).then_some((token, notify)),
                owned: &owned,
                client: &client,
            };
            let reply = g.heartbeat(now, &beat, partitions, || {
                *next_member += 1;
                format!("m-{boot:x}-{next_member}")
            })?;
            if member_id.is_empty() {
                tracing::info!(
                    group,
                    member = reply.member_id,
                    generation = reply.generation,
                    "member joined"
                );
            }
            respond(
                conn,
                GroupResponse::Heartbeat(Heartbeat {
                    member_id: &reply.member_id,
                    generation: reply.generation,
                    heartbeat_interval_ms: reply.heartbeat_interval.as_millis() as u32,
                    assignment: reply.assignment,
                    pending: reply.pending,
                }),
            );
        }
        GroupRequest::Leave { group, member_id } => {
            state.groups.group(group)?.leave(now, member_id)?;
            tracing::info!(group, member = member_id, "member left");
            conn.outbox.encode(|out| {
                encode_response(out, kind, correlation, &Response::Done);
            });
        }
        GroupRequest::Commit {
            group,
            member_id,
            generation,
            commits,
        } => {
            let offsets = state.groups.offsets.clone();
            let g = state.groups.group(group)?;
            let entries: Vec<(u32, &str)> =
                commits.iter().map(|c| (c.partition, c.metadata)).collect();
            let codes = g.check_commit(member_id, generation, &entries)?;
            let accepted: Vec<(u32, u64, &str)> = commits
                .iter()
                .zip(&codes)
                .filter(|(_, code)| **code == 0)
                .map(|(c, _)| (c.partition, c.offset, c.metadata))
                .collect();
            let results: Vec<(u32, u16)> = commits.iter().map(|c| c.partition).zip(codes).collect();
            if accepted.is_empty() {
                respond(conn, GroupResponse::Committed(results));
                return Ok(());
            }
            let timestamp_ms = tidelog_engine::fsio::now_ms();
            let batch =
                offsets_log::commit_batch(group, &g.topic, generation, timestamp_ms, &accepted);
            let appended = offsets.append(&batch).map_err(|e| to_protocol(&e))?;
            for &(partition, offset, metadata) in &accepted {
                g.committed.insert(
                    (g.topic.clone(), partition),
                    CommittedOffset {
                        offset,
                        generation,
                        timestamp_ms,
                        metadata: metadata.to_string(),
                    },
                );
            }
            let mut response = Vec::new();
            encode_response(
                &mut response,
                kind,
                correlation,
                &Response::Group(GroupResponse::Committed(results)),
            );
            state.reply_when_durable(
                token,
                conn,
                &offsets,
                appended.last_offset,
                response,
                kind,
                correlation,
            );
        }
        GroupRequest::Offsets { group } if state.groups.queues.contains_key(group) => {
            let g = state.groups.queue(group)?;
            let offsets = g
                .partitions
                .iter()
                .enumerate()
                .map(|(p, sp)| Committed {
                    partition: p as u32,
                    offset: sp.start,
                    generation: 0,
                    timestamp_ms: 0,
                    metadata: "",
                })
                .collect();
            respond(
                conn,
                GroupResponse::Offsets {
                    topic: &g.topic,
                    offsets,
                },
            );
        }
        GroupRequest::Offsets { group } => {
            let g = state.groups.group(group)?;
            let offsets = g
                .committed
                .iter()
                .filter(|((t, _), _)| *t == g.topic)
                .map(|((_, p), c)| Committed {
                    partition: *p,
                    offset: c.offset,
                    generation: c.generation,
                    timestamp_ms: c.timestamp_ms,
                    metadata: &c.metadata,
                })
                .collect();
            respond(
                conn,
                GroupResponse::Offsets {
                    topic: &g.topic,
                    offsets,
                },
            );
        }
        GroupRequest::List => {
            let co = &state.groups;
            let streams = co.groups.iter().map(|(name, g)| GroupSummary {
                name,
                kind: GroupKind::Stream,
                topic: &g.topic,
                members: g.members.len() as u32,
                generation: g.generation,
            });
            let queues = co.queues.iter().map(|(name, g)| GroupSummary {
                name,
                kind: GroupKind::Queue,
                topic: &g.topic,
                members: g.members.len() as u32,
                generation: 0,
            });
            let mut list: Vec<GroupSummary<'_>> = streams.chain(queues).collect();
            list.sort_by(|a, b| a.name.cmp(b.name));
            respond(conn, GroupResponse::List(list));
        }
        GroupRequest::Describe { group } if state.groups.queues.contains_key(group) => {
            let g = state.groups.queue(group)?;
            let members: Vec<MemberDescription<'_>> = g
                .members
                .iter()
                .map(|(id, m)| {
                    let leased_on: Vec<u32> = g
                        .partitions
                        .iter()
                        .enumerate()
                        .filter(|(_, sp)| {
                            sp.slots.iter().any(|s| {
                                matches!(s.state, queue::SlotState::Leased { member, .. } if member == m.index)
                            })
                        })
                        .map(|(p, _)| p as u32)
                        .collect();
                    MemberDescription {
                        member_id: id,
                        client: &m.client,
                        generation: 0,
                        owned: leased_on,
                        target: Vec::new(),
                        last_heartbeat_ms_ago: ms_since(now, m.last_seen),
                    }
                })
                .collect();
            let topic_partitions = partitions_of(&engine, &g.topic);
            let partitions = topic_partitions
                .iter()
                .map(|p| {
                    let sp = g.partitions.get(p.id() as usize);
                    let start = sp.map_or(p.earliest_offset(), |sp| sp.start);
                    let (leased, in_flight) = sp.map_or((0, 0), queue::SharePartition::counts);
                    let next = p.next_offset();
                    PartitionLag {
                        partition: p.id(),
                        owner: "",
                        committed: start,
                        next,
                        lag: next.saturating_sub(start),
                        leased,
                        in_flight,
                        dead_lettered: sp.map_or(0, |sp| sp.dead_lettered),
                    }
                })
                .collect();
            respond(
                conn,
                GroupResponse::Described(GroupDescription {
                    name: group,
                    kind: GroupKind::Queue,
                    topic: &g.topic,
                    generation: 0,
                    members,
                    partitions,
                }),
            );
        }
        GroupRequest::Describe { group } => {
            let g = state.groups.group(group)?;
            let members: Vec<MemberDescription<'_>> = g
                .members
                .iter()
                .map(|(id, m)| {
                    let (owned, target) = g.member_partitions(id);
                    MemberDescription {
                        member_id: id,
                        client: &m.client,
                        generation: m.generation,
                        owned,
                        target,
                        last_heartbeat_ms_ago: ms_since(now, m.last_heartbeat),
                    }
                })
                .collect();
            let topic_partitions = partitions_of(&engine, &g.topic);
            let partitions = topic_partitions
                .iter()
                .map(|p| {
                    let committed = g
                        .committed
                        .get(&(g.topic.clone(), p.id()))
                        .map_or(NO_OFFSET, |c| c.offset);
                    let next = p.next_offset();
                    let from = if committed == NO_OFFSET {
                        p.earliest_offset()
                    } else {
                        committed
                    };
                    PartitionLag {
                        partition: p.id(),
                        owner: g
                            .holders
                            .get(p.id() as usize)
                            .and_then(Option::as_ref)
                            .map_or("", |h| h.member.as_str()),
                        committed,
                        next,
                        lag: next.saturating_sub(from),
                        leased: 0,
                        in_flight: 0,
                        dead_lettered: 0,
                    }
                })
                .collect();
            respond(
                conn,
                GroupResponse::Described(GroupDescription {
                    name: group,
                    kind: GroupKind::Stream,
                    topic: &g.topic,
                    generation: g.generation,
                    members,
                    partitions,
                }),
            );
        }
        GroupRequest::QueueJoin {
            group,
            topic,
            member_id,
            settings,
        } => {
            check_name("group", group)?;
            let topic_handle = engine.topic(topic).map_err(|e| to_protocol(&e))?;
            let co = &mut state.groups;
            if co.groups.contains_key(group) {
                return Err(kind_mismatch(group, "a stream group"));
            }
            if !co.queues.contains_key(group) {
                if co.groups.len() + co.queues.len() >= GROUPS_MAX {
                    return Err(ProtocolError::new(
                        ErrorCode::ServerOverloaded,
                        format!("at most {GROUPS_MAX} groups"),
                    ));
                }
                if topic.starts_with(crate::dispatch::INTERNAL_TOPIC_PREFIX) {
                    return Err(ProtocolError::new(
                        ErrorCode::NotAllowed,
                        "internal topics cannot be consumed by a queue group",
                    ));
                }
                let config = QueueConfig::from_settings(topic, &settings)?;
                let mut g = QueueGroup::new(topic, config);
                let parts = topic_handle.partitions();
                g.ensure_partitions(parts.len(), |i| parts[i].earliest_offset());
                for sp in &mut g.partitions {
                    sp.dirty = true;
                }
                tracing::info!(group, topic, "queue group created");
                co.queues.insert(group.to_string(), g);
            }
            let g = co.queues.get_mut(group).expect("present");
            if g.topic != topic {
                return Err(ProtocolError::new(
                    ErrorCode::GroupTopicMismatch,
                    format!(
                        "queue group {group} consumes topic {}, not {topic}",
                        g.topic
                    ),
                ));
            }
            let id = if member_id.is_empty() {
                co.next_member += 1;
                format!("q-{:x}-{}", co.boot, co.next_member)
            } else {
                member_id.to_string()
            };
            if g.members.len() >= MEMBERS_MAX && !g.members.contains_key(&id) {
                return Err(ProtocolError::new(
                    ErrorCode::ServerOverloaded,
                    format!("at most {MEMBERS_MAX} members per group"),
                ));
            }
            g.member(&id, &format!("{} {}", conn.peer, conn.client_name), now);
            respond(
                conn,
                GroupResponse::QueueJoined {
                    member_id: &id,
                    settings: g.config.settings(),
                },
            );
        }
        GroupRequest::QueuePoll {
            group,
            member_id,
            max_records,
            max_bytes,
            max_wait_ms,
        } => {
            let max_bytes = max_bytes.clamp(1, state.limits.fetch_bytes_max);
            let co = &mut state.groups;
            let g = co.queue(group)?;
            if !g.members.contains_key(member_id) && g.members.len() >= MEMBERS_MAX {
                return Err(ProtocolError::new(
                    ErrorCode::ServerOverloaded,
                    format!("at most {MEMBERS_MAX} members per group"),
                ));
            }
            let client = format!("{} {}", conn.peer, conn.client_name);
            let member = g.member(member_id, &client, now);
            let now_ms = tidelog_engine::fsio::now_ms();
            let reader = &mut state.reader;
            let parts = deliver(
                &engine,
                group,
                g,
                member,
                max_records,
                max_bytes,
                now_ms,
                reader,
            )?;
            if parts.is_empty() && max_wait_ms > 0 {
                if co.parked.len() >= PARKED_POLLS_MAX {
                    return Err(ProtocolError::new(
                        ErrorCode::ServerOverloaded,
                        format!("at most {PARKED_POLLS_MAX} waiting queue polls"),
                    ));
                }
                let wait = Duration::from_millis(u64::from(max_wait_ms)).min(QUEUE_POLL_WAIT_MAX);
                co.parked.push(ParkedPoll {
                    token,
                    correlation,
                    group: group.to_string(),
                    member,
                    max_records,
                    max_bytes,
                    deadline: now + wait,
                });
            } else {
                conn.outbox
                    .encode(|out| encode_leased(out, correlation, &parts));
            }
        }
        GroupRequest::QueueSettle {
            group,
            member_id,
            entries,
        } => {
            let co = &mut state.groups;
            let g = co.queue(group)?;
            let now_ms = tidelog_engine::fsio::now_ms();
            let member = g.members.get(member_id).map(|m| m.index);
            let config = g.config.clone();
            let codes: Vec<u16> = entries
                .iter()
                .map(|e| {
                    let sp = g.partitions.get_mut(e.partition as usize);
                    let result = match (member, sp) {
                        (Some(m), Some(sp)) => {
                            sp.settle(e.offset, m, e.action, e.reason, now_ms, &config)
                        }
                        _ => Err(ErrorCode::NotLeased),
                    };
                    result.map_or_else(|code| code as u16, |_| 0)
                })
                .collect();
            let accepted = codes.contains(&0);
            let mut response = Vec::new();
            encode_response(
                &mut response,
                kind,
                correlation,
                &Response::Group(GroupResponse::Settled(codes)),
            );
            if accepted {
                co.touched.insert(group.to_string());
                co.settled_waiting.push((token, correlation, response));
            } else {
                conn.outbox.push_owned(response);
            }
        }
        GroupRequest::QueueLeave { group, member_id } => {
            let co = &mut state.groups;
            co.queue(group)?
                .leave(member_id, tidelog_engine::fsio::now_ms())?;
            co.touched.insert(group.to_string());
            conn.outbox.encode(|out| {
                encode_response(out, kind, correlation, &Response::Done);
            });
        }
    }
    Ok(())
}

/// Records leased from one partition: (partition, (offset, deliveries) each, batches).
type LeasedPart = (u32, Vec<(u64, u32)>, Vec<u8>);

/// One delivery to `member`: from each partition in turn (round robin), waiting records
/// whose time has come, up to `max_records` and about `max_bytes`, leased until now + the
/// visibility timeout. A partition whose reads would find pages out of the page cache is
/// skipped until `reader` has read them in (`cold.rs`); the group is looked at again then.
#[allow(clippy::too_many_arguments)]
fn deliver(
    engine: &Engine,
    name: &str,
    g: &mut QueueGroup,
    member: u32,
    max_records: u32,
    max_bytes: u32,
    now_ms: i64,
    reader: &mut Worker,
) -> Result<Vec<LeasedPart>, ProtocolError> {
    let e = |err| to_protocol(&err);
    let topic = engine.topic(&g.topic).map_err(e)?;
    let parts = topic.partitions();
    g.ensure_partitions(parts.len(), |i| parts[i].earliest_offset());
    let n = parts.len();
    let (mut left, mut bytes) = (max_records.max(1) as usize, 0usize);
    let mut out = Vec::new();
    let until_ms = now_ms + i64::from(g.config.visibility_timeout_ms);
    for k in 0..n {
        if left == 0 || bytes >= max_bytes as usize {
            break;
        }
        let i = (g.cursor + k) % n;
        let (p, sp) = (&parts[i], &mut g.partitions[i]);
        let lost = sp.skip_to(p.earliest_offset());
        if lost > 0 {
            tracing::warn!(
                topic = g.topic,
                partition = i,
                lost,
                "retention removed records a queue group had not settled"
            );
        }
        // What `fill` would read: the whole window once after a restart (its keys), else
        // from the window's end while it has room.
        let fills = if !sp.keys_known && g.config.per_key_ordering {
            Some(sp.start)
        } else {
            (sp.room(g.config.max_in_flight) > 0 && sp.next() < p.next_offset()).then(|| sp.next())
        };
        if fills.is_some_and(|at| crate::cold::queue_waits(reader, name, p, sp, at)) {
            continue;
        }
        queue_io::fill(sp, p, &g.config).map_err(e)?;
        let offsets = sp.deliverable(now_ms, g.config.per_key_ordering, left);
        if offsets.is_empty() || crate::cold::queue_waits(reader, name, p, sp, offsets[0]) {
            continue;
        }
        let (batches, included) =
            queue_io::read_selected(p, &offsets, max_bytes as usize - bytes).map_err(e)?;
        let records: Vec<(u64, u32)> = included
            .iter()
            .map(|&o| (o, sp.lease(o, member, until_ms)))
            .collect();
        for &(o, _) in &records {
            g.lease_deadline(until_ms, i as u32, o);
        }
        left -= records.len();
        bytes += batches.len();
        if !records.is_empty() {
            out.push((i as u32, records, batches));
        }
    }
    if n > 0 {
        g.cursor = (g.cursor + 1) % n;
    }
    Ok(out)
}

fn encode_leased(out: &mut Vec<u8>, correlation: u64, parts: &[LeasedPart]) {
    let leased = parts
        .iter()
        .map(|(partition, records, batches)| Leased {
            partition: *partition,
            records: records.clone(),
            batches,
        })
        .collect();
    encode_response(
        out,
        kind::QUEUE_POLL,
        correlation,
        &Response::Group(GroupResponse::Leased(leased)),
    );
}

/// Milliseconds since `then`, saturated to u32 (for descriptions).
fn ms_since(now: Instant, then: Instant) -> u32 {
    now.saturating_duration_since(then)
        .as_millis()
        .min(u128::from(u32::MAX)) as u32
}

/// A topic's partitions (none if it was deleted).
fn partitions_of(engine: &Engine, topic: &str) -> Vec<Arc<Partition>> {
    engine
        .topic(topic)
        .map(|t| t.partitions().to_vec())
        .unwrap_or_default()
}

fn kind_mismatch(name: &str, is: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::GroupKindMismatch,
        format!("group {name} is {is}"),
    )
}

fn check_name(what: &str, name: &str) -> Result<(), ProtocolError> {
    if tidelog_engine::topic::is_valid_name(name) {
        Ok(())
    } else {
        Err(ProtocolError::invalid(format!(
            "{what} name {name:?}: use 1 to 249 of A-Z a-z 0-9 . _ -, not starting with '.'"
        )))
    }
}

fn unknown_group(name: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::UnknownGroup,
        format!("no group {name:?} (no member and no committed offset)"),
    )
}
