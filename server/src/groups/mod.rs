//! Consumer-group coordination, on the event-loop thread: stream groups (members own
//! partitions, commit offsets).
//!
//! - `assign.rs` — the sticky balanced assignor (pure).
//! - `stream.rs` — one group's membership, holdings, fencing and committed offsets (pure,
//!   time passed in).
//! - `offsets_log.rs` — committed offsets as records of the internal topic
//!   `__tidelog_offsets`, loaded from its tenant/key index on start.
//! - this file — the registry of groups and the request handlers.
//!
//! A commit is acknowledged only once its record is durable (group commit with every other
//! durable write of the tick); membership is not persisted — after a restart members get
//! `UnknownMember` and join again, and resume from the committed offsets.

pub mod assign;
pub mod offsets_log;
pub mod stream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidelog_engine::{Engine, EngineError, Partition};
use tidelog_protocol::group::{
    Committed, GroupDescription, GroupKind, GroupRequest, GroupResponse, GroupSummary, Heartbeat,
    MemberDescription, PartitionLag, NO_OFFSET,
};
use tidelog_protocol::response::encode_response;
use tidelog_protocol::{ErrorCode, ProtocolError, Response};

use crate::connection::Connection;
use crate::state::{to_protocol, State};
use stream::{Beat, CommittedOffset, StreamGroup};

/// Session timeouts a member may ask for.
pub const SESSION_TIMEOUT_MIN: Duration = Duration::from_millis(100);
pub const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(600);
/// Groups the server holds (with members or committed offsets).
pub const GROUPS_MAX: usize = 10_000;
/// Members of one group.
pub const MEMBERS_MAX: usize = 4096;

/// Every group of the server.
#[derive(Debug)]
pub struct Coordinator {
    groups: BTreeMap<String, StreamGroup>,
    offsets: Arc<Partition>,
    /// Member ids carry this, so an id from before a restart is never taken for a new one.
    boot: u64,
    next_member: u64,
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
        tracing::info!(groups = groups.len(), "consumer groups loaded");
        Ok(Coordinator {
            groups,
            offsets,
            boot,
            next_member: 0,
        })
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
    }

    fn group(&mut self, name: &str) -> Result<&mut StreamGroup, ProtocolError> {
        self.groups.get_mut(name).ok_or_else(|| unknown_group(name))
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
            if member_id.is_empty() && !co.groups.contains_key(group) {
                if co.groups.len() >= GROUPS_MAX {
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
            let list = state
                .groups
                .groups
                .iter()
                .map(|(name, g)| GroupSummary {
                    name,
                    kind: GroupKind::Stream,
                    topic: &g.topic,
                    members: g.members.len() as u32,
                    generation: g.generation,
                })
                .collect();
            respond(conn, GroupResponse::List(list));
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
                        last_heartbeat_ms_ago: now
                            .saturating_duration_since(m.last_heartbeat)
                            .as_millis()
                            .min(u128::from(u32::MAX))
                            as u32,
                    }
                })
                .collect();
            let topic_partitions = engine
                .topic(&g.topic)
                .map(|t| t.partitions().to_vec())
                .unwrap_or_default();
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
    }
    Ok(())
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
