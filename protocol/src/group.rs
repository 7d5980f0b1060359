//! Consumer-group messages (kinds 0x0200..=0x02FF), version 1: stream groups, whose
//! members own whole partitions and commit offsets, and queue groups, whose members lease
//! individual records and ack, nack or defer each. Body layouts are listed on each
//! variant and in docs/PROTOCOL.md ("Consumer groups").
//!
//! The membership protocol is one request, GROUP_HEARTBEAT (after Kafka's KIP-848): a
//! member reports the partitions it holds and gets back the partitions it may hold now.
//! The server grants a partition only once its previous holder has reported releasing it,
//! so two live members never hold the same partition. A GROUP_NOTICE push tells a member
//! to heartbeat now (its assignment changed) instead of at its next interval.

use crate::codec::{Reader, Writer};
use crate::error::ProtocolError;
use crate::kind;

/// "No committed offset" in offset fields.
pub const NO_OFFSET: u64 = u64::MAX;

/// What kind of group a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// Members own partitions and commit offsets.
    Stream = 0,
    /// Members lease records; each is acked, nacked, deferred or dead-lettered.
    Queue = 1,
}

impl GroupKind {
    fn get(r: &mut Reader<'_>) -> Result<GroupKind, ProtocolError> {
        match r.u8("group kind")? {
            0 => Ok(GroupKind::Stream),
            1 => Ok(GroupKind::Queue),
            k => Err(ProtocolError::invalid(format!(
                "group kind {k} is not 0 or 1"
            ))),
        }
    }
}

/// How a queue group leases and retries; fixed by the member that creates the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings<'a> {
    /// How long a delivered record stays leased to its member.
    pub visibility_timeout_ms: u32,
    /// Deliveries after which a failing record is dead-lettered.
    pub max_deliveries: u32,
    /// A record waits while an earlier record with its key is unsettled.
    pub per_key_ordering: bool,
    /// Records tracked per partition past the settled prefix (leased, waiting, settled
    /// out of order); delivery pauses on a partition at the limit.
    pub max_in_flight: u32,
    /// Where dead letters go (empty: `<topic>.dlq`).
    pub dead_letter_topic: &'a str,
    /// Delay before redelivery after the n-th failed delivery (nack without a delay, or
    /// lease expiry); the last entry repeats.
    pub backoff_ms: Vec<u32>,
}

impl QueueSettings<'_> {
    /// The settings' encoding (also how the server stores them).
    pub fn put(&self, out: &mut Vec<u8>) {
        out.put_u32(self.visibility_timeout_ms);
        out.put_u32(self.max_deliveries);
        out.put_bool(self.per_key_ordering);
        out.put_u32(self.max_in_flight);
        out.put_str(self.dead_letter_topic);
        put_u32s(out, &self.backoff_ms);
    }

    pub fn get<'a>(r: &mut Reader<'a>) -> Result<QueueSettings<'a>, ProtocolError> {
        Ok(QueueSettings {
            visibility_timeout_ms: r.u32("visibility_timeout_ms")?,
            max_deliveries: r.u32("max_deliveries")?,
            per_key_ordering: r.bool("per_key_ordering")?,
            max_in_flight: r.u32("max_in_flight")?,
            dead_letter_topic: r.str("dead_letter_topic")?,
            backoff_ms: get_u32s(r, "backoff_ms")?,
        })
    }
}

/// What a queue member does with a leased record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done: never delivered again.
    Ack,
    /// Failed: deliver again after `delay_ms` (0: the group's backoff), or dead-letter it
    /// if it has had its deliveries.
    Nack { delay_ms: i64 },
    /// Not now: deliver again at `until_ms` (ms since the epoch), not before; never
    /// dead-lettered for it.
    Defer { until_ms: i64 },
    /// Give the lease back: available again at once (leaving, shutting down).
    Release,
}

/// One settlement of a leased record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleEntry<'a> {
    pub partition: u32,
    pub offset: u64,
    pub action: Settle,
    /// Why (nack): stored in the dead letter's headers.
    pub reason: &'a str,
}

/// Records leased from one partition, as a QUEUE_POLL delivers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased<'a> {
    pub partition: u32,
    /// (offset, delivery count) of each record, in offset order.
    pub records: Vec<(u64, u32)>,
    /// Whole batches holding exactly those records (offsets preserved).
    pub batches: &'a [u8],
}

/// One offset to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitEntry<'a> {
    pub partition: u32,
    /// The next offset to consume (one past the last record processed).
    pub offset: u64,
    /// Free-form, stored with the offset (≤ 1 KiB).
    pub metadata: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRequest<'a> {
    /// `group str, topic str, member_id str (empty: join), generation u32,
    /// session_timeout_ms u32, notify u32 (push id for GROUP_NOTICE; 0: none),
    /// count u32, count × partition u32 (the partitions the member holds)`
    Heartbeat {
        group: &'a str,
        topic: &'a str,
        member_id: &'a str,
        generation: u32,
        session_timeout_ms: u32,
        notify: u32,
        owned: Vec<u32>,
    },
    /// `group str, member_id str`
    Leave { group: &'a str, member_id: &'a str },
    /// `group str, member_id str, generation u32, count u32,
    /// count × (partition u32, offset u64, metadata str)`
    Commit {
        group: &'a str,
        member_id: &'a str,
        generation: u32,
        commits: Vec<CommitEntry<'a>>,
    },
    /// `group str`
    Offsets { group: &'a str },
    /// empty
    List,
    /// `group str`
    Describe { group: &'a str },
    /// `group str, topic str, member_id str (empty: the server names it), settings`
    /// (settings: `visibility_timeout_ms u32, max_deliveries u32, per_key_ordering u8,
    /// max_in_flight u32, dead_letter_topic str, count u32 × backoff_ms u32`; zeros and
    /// empties take the server's defaults; they apply when this join creates the group)
    QueueJoin {
        group: &'a str,
        topic: &'a str,
        member_id: &'a str,
        settings: QueueSettings<'a>,
    },
    /// `group str, member_id str, max_records u32, max_bytes u32, max_wait_ms u32`
    QueuePoll {
        group: &'a str,
        member_id: &'a str,
        max_records: u32,
        max_bytes: u32,
        max_wait_ms: u32,
    },
    /// `group str, member_id str, count u32 × (partition u32, offset u64, action u8
    /// (0 ack, 1 nack, 2 defer, 3 release), time_ms i64 (nack: delay; defer: until),
    /// reason str)`
    QueueSettle {
        group: &'a str,
        member_id: &'a str,
        entries: Vec<SettleEntry<'a>>,
    },
    /// `group str, member_id str`: its leases are released.
    QueueLeave { group: &'a str, member_id: &'a str },
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat<'a> {
    pub member_id: &'a str,
    /// The group's generation as this member now knows it; commits carry it.
    pub generation: u32,
    pub heartbeat_interval_ms: u32,
    /// The partitions the member may hold now. Held partitions missing from it must be
    /// released (stop, commit, report them no longer held).
    pub assignment: Vec<u32>,
    /// Partitions meant for this member still held by another (released soon).
    pub pending: u32,
}

/// A committed offset as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed<'a> {
    pub partition: u32,
    pub offset: u64,
    pub generation: u32,
    pub timestamp_ms: i64,
    pub metadata: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary<'a> {
    pub name: &'a str,
    pub kind: GroupKind,
    pub topic: &'a str,
    pub members: u32,
    pub generation: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription<'a> {
    pub member_id: &'a str,
    /// The peer address and client name it heartbeats from.
    pub client: &'a str,
    pub generation: u32,
    /// Partitions it holds (granted and not yet released).
    pub owned: Vec<u32>,
    /// Partitions the current assignment gives it.
    pub target: Vec<u32>,
    pub last_heartbeat_ms_ago: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag<'a> {
    pub partition: u32,
    /// Member holding it; empty when none.
    pub owner: &'a str,
    /// [`NO_OFFSET`] when nothing was committed.
    pub committed: u64,
    /// The partition's next offset to be written.
    pub next: u64,
    /// Records after the committed offset (after the earliest one when none).
    pub lag: u64,
    /// Queue groups: records leased now.
    pub leased: u64,
    /// Queue groups: records past the settled prefix not yet settled (leased, waiting
    /// for a retry or a deferral, or never delivered but inside the window).
    pub in_flight: u64,
    /// Queue groups: records written to the dead-letter topic so far.
    pub dead_lettered: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription<'a> {
    pub name: &'a str,
    pub kind: GroupKind,
    pub topic: &'a str,
    pub generation: u32,
    pub members: Vec<MemberDescription<'a>>,
    pub partitions: Vec<PartitionLag<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupResponse<'a> {
    /// GROUP_HEARTBEAT: `member_id str, generation u32, heartbeat_interval_ms u32,
    /// count u32, count × partition u32, pending u32`
    Heartbeat(Heartbeat<'a>),
    /// GROUP_COMMIT: `count u32, count × (partition u32, code u16)`; code 0 = committed,
    /// else an error code (StaleGeneration, NotPartitionOwner, ...) for that partition.
    Committed(Vec<(u32, u16)>),
    /// GROUP_OFFSETS: `topic str, count u32, count × (partition u32, offset u64,
    /// generation u32, timestamp_ms i64, metadata str)`
    Offsets {
        topic: &'a str,
        offsets: Vec<Committed<'a>>,
    },
    /// GROUP_LIST: `count u32, count × (name str, kind u8, topic str, members u32,
    /// generation u32)`
    List(Vec<GroupSummary<'a>>),
    /// GROUP_DESCRIBE: `name str, kind u8, topic str, generation u32,
    /// members u32 × (member_id str, client str, generation u32, owned u32 + u32s,
    /// target u32 + u32s, last_heartbeat_ms_ago u32),
    /// partitions u32 × (partition u32, owner str, committed u64, next u64, lag u64,
    /// leased u64, in_flight u64, dead_lettered u64)`
    Described(GroupDescription<'a>),
    /// QUEUE_JOIN: `member_id str, settings` (the group's, in effect)
    QueueJoined {
        member_id: &'a str,
        settings: QueueSettings<'a>,
    },
    /// QUEUE_POLL: `count u32 × (partition u32, count u32 × (offset u64, deliveries u32),
    /// batches bytes)`
    Leased(Vec<Leased<'a>>),
    /// QUEUE_SETTLE: `count u32 × code u16` (0 = done), one per entry.
    Settled(Vec<u16>),
}

impl<'a> GroupRequest<'a> {
    pub fn kind(&self) -> u16 {
        match self {
            GroupRequest::Heartbeat { .. } => kind::GROUP_HEARTBEAT,
            GroupRequest::Leave { .. } => kind::GROUP_LEAVE,
            GroupRequest::Commit { .. } => kind::GROUP_COMMIT,
            GroupRequest::Offsets { .. } => kind::GROUP_OFFSETS,
            GroupRequest::List => kind::GROUP_LIST,
            GroupRequest::Describe { .. } => kind::GROUP_DESCRIBE,
            GroupRequest::QueueJoin { .. } => kind::QUEUE_JOIN,
            GroupRequest::QueuePoll { .. } => kind::QUEUE_POLL,
            GroupRequest::QueueSettle { .. } => kind::QUEUE_SETTLE,
            GroupRequest::QueueLeave { .. } => kind::QUEUE_LEAVE,
        }
    }

    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            GroupRequest::Heartbeat {
                group,
                topic,
                member_id,
                generation,
                session_timeout_ms,
                notify,
                owned,
            } => {
                out.put_str(group);
                out.put_str(topic);
                out.put_str(member_id);
                out.put_u32(*generation);
                out.put_u32(*session_timeout_ms);
                out.put_u32(*notify);
                put_u32s(out, owned);
            }
            GroupRequest::Leave { group, member_id } => {
                out.put_str(group);
                out.put_str(member_id);
            }
            GroupRequest::Commit {
                group,
                member_id,
                generation,
                commits,
            } => {
                out.put_str(group);
                out.put_str(member_id);
                out.put_u32(*generation);
                out.put_u32(commits.len() as u32);
                for c in commits {
                    out.put_u32(c.partition);
                    out.put_u64(c.offset);
                    out.put_str(c.metadata);
                }
            }
            GroupRequest::Offsets { group } | GroupRequest::Describe { group } => {
                out.put_str(group)
            }
            GroupRequest::List => {}
            GroupRequest::QueueJoin {
                group,
                topic,
                member_id,
                settings,
            } => {
                out.put_str(group);
                out.put_str(topic);
                out.put_str(member_id);
                settings.put(out);
            }
            GroupRequest::QueuePoll {
                group,
                member_id,
                max_records,
                max_bytes,
                max_wait_ms,
            } => {
                out.put_str(group);
                out.put_str(member_id);
                out.put_u32(*max_records);
                out.put_u32(*max_bytes);
                out.put_u32(*max_wait_ms);
            }
            GroupRequest::QueueSettle {
                group,
                member_id,
                entries,
            } => {
                out.put_str(group);
                out.put_str(member_id);
                out.put_u32(entries.len() as u32);
                for e in entries {
                    out.put_u32(e.partition);
                    out.put_u64(e.offset);
                    let (action, time) = match e.action {
                        Settle::Ack => (0, 0),
                        Settle::Nack { delay_ms } => (1, delay_ms),
                        Settle::Defer { until_ms } => (2, until_ms),
                        Settle::Release => (3, 0),
                    };
                    out.put_u8(action);
                    out.put_i64(time);
                    out.put_str(e.reason);
                }
            }
            GroupRequest::QueueLeave { group, member_id } => {
                out.put_str(group);
                out.put_str(member_id);
            }
        }
    }

    /// Decodes the body of a group request of `kind`; `None` for a kind that is not one.
    pub fn decode(kind: u16, body: &'a [u8]) -> Option<Result<GroupRequest<'a>, ProtocolError>> {
        let mut r = Reader::new(body);
        let request = match kind {
            kind::GROUP_HEARTBEAT => (|| {
                Ok(GroupRequest::Heartbeat {
                    group: r.str("group")?,
                    topic: r.str("topic")?,
                    member_id: r.str("member_id")?,
                    generation: r.u32("generation")?,
                    session_timeout_ms: r.u32("session_timeout_ms")?,
                    notify: r.u32("notify")?,
                    owned: get_u32s(&mut r, "owned")?,
                })
            })(),
            kind::GROUP_LEAVE => (|| {
                Ok(GroupRequest::Leave {
                    group: r.str("group")?,
                    member_id: r.str("member_id")?,
                })
            })(),
            kind::GROUP_COMMIT => (|| {
                let group = r.str("group")?;
                let member_id = r.str("member_id")?;
                let generation = r.u32("generation")?;
                let n = r.count("commits", 14)?;
                let mut commits = Vec::with_capacity(n);
                for _ in 0..n {
                    commits.push(CommitEntry {
                        partition: r.u32("partition")?,
                        offset: r.u64("offset")?,
                        metadata: r.str("metadata")?,
                    });
                }
                Ok(GroupRequest::Commit {
                    group,
                    member_id,
                    generation,
                    commits,
                })
            })(),
            kind::GROUP_OFFSETS => r.str("group").map(|group| GroupRequest::Offsets { group }),
            kind::GROUP_LIST => Ok(GroupRequest::List),
            kind::GROUP_DESCRIBE => r.str("group").map(|group| GroupRequest::Describe { group }),
            kind::QUEUE_JOIN => (|| {
                Ok(GroupRequest::QueueJoin {
                    group: r.str("group")?,
                    topic: r.str("topic")?,
                    member_id: r.str("member_id")?,
                    settings: QueueSettings::get(&mut r)?,
                })
            })(),
            kind::QUEUE_POLL => (|| {
                Ok(GroupRequest::QueuePoll {
                    group: r.str("group")?,
                    member_id: r.str("member_id")?,
                    max_records: r.u32("max_records")?,
                    max_bytes: r.u32("max_bytes")?,
                    max_wait_ms: r.u32("max_wait_ms")?,
                })
            })(),
            kind::QUEUE_SETTLE => (|| {
                let group = r.str("group")?;
                let member_id = r.str("member_id")?;
                let n = r.count("entries", 23)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let partition = r.u32("partition")?;
                    let offset = r.u64("offset")?;
                    let action = r.u8("action")?;
                    let time = r.i64("time_ms")?;
                    let action = match action {
                        0 | 3 if time != 0 => {
                            return Err(ProtocolError::invalid(format!(
                                "time_ms must be 0 for action {action}"
                            )))
                        }
                        0 => Settle::Ack,
                        1 => Settle::Nack { delay_ms: time },
                        2 => Settle::Defer { until_ms: time },
                        3 => Settle::Release,
                        a => {
                            return Err(ProtocolError::invalid(format!(
                                "action {a} is not 0..=3 (ack, nack, defer, release)"
                            )))
                        }
                    };
                    entries.push(SettleEntry {
                        partition,
                        offset,
                        action,
                        reason: r.str("reason")?,
                    });
                }
                Ok(GroupRequest::QueueSettle {
                    group,
                    member_id,
                    entries,
                })
            })(),
            kind::QUEUE_LEAVE => (|| {
                Ok(GroupRequest::QueueLeave {
                    group: r.str("group")?,
                    member_id: r.str("member_id")?,
                })
            })(),
            _ => return None,
        };
        Some(request.and_then(|req| r.finish("the request body").map(|()| req)))
    }
}

impl<'a> GroupResponse<'a> {
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            GroupResponse::Heartbeat(h) => {
                out.put_str(h.member_id);
                out.put_u32(h.generation);
                out.put_u32(h.heartbeat_interval_ms);
                put_u32s(out, &h.assignment);
                out.put_u32(h.pending);
            }
            GroupResponse::Committed(results) => {
                out.put_u32(results.len() as u32);
                for (p, code) in results {
                    out.put_u32(*p);
                    out.put_u16(*code);
                }
            }
            GroupResponse::Offsets { topic, offsets } => {
                out.put_str(topic);
                out.put_u32(offsets.len() as u32);
                for c in offsets {
                    out.put_u32(c.partition);
                    out.put_u64(c.offset);
                    out.put_u32(c.generation);
                    out.put_i64(c.timestamp_ms);
                    out.put_str(c.metadata);
                }
            }
            GroupResponse::List(groups) => {
                out.put_u32(groups.len() as u32);
                for g in groups {
                    out.put_str(g.name);
                    out.put_u8(g.kind as u8);
                    out.put_str(g.topic);
                    out.put_u32(g.members);
                    out.put_u32(g.generation);
                }
            }
            GroupResponse::Described(d) => {
                out.put_str(d.name);
                out.put_u8(d.kind as u8);
                out.put_str(d.topic);
                out.put_u32(d.generation);
                out.put_u32(d.members.len() as u32);
                for m in &d.members {
                    out.put_str(m.member_id);
                    out.put_str(m.client);
                    out.put_u32(m.generation);
                    put_u32s(out, &m.owned);
                    put_u32s(out, &m.target);
                    out.put_u32(m.last_heartbeat_ms_ago);
                }
                out.put_u32(d.partitions.len() as u32);
                for p in &d.partitions {
                    out.put_u32(p.partition);
                    out.put_str(p.owner);
                    out.put_u64(p.committed);
                    out.put_u64(p.next);
                    out.put_u64(p.lag);
                    out.put_u64(p.leased);
                    out.put_u64(p.in_flight);
                    out.put_u64(p.dead_lettered);
                }
            }
            GroupResponse::QueueJoined {
                member_id,
                settings,
            } => {
                out.put_str(member_id);
                settings.put(out);
            }
            GroupResponse::Leased(parts) => {
                out.put_u32(parts.len() as u32);
                for l in parts {
                    out.put_u32(l.partition);
                    out.put_u32(l.records.len() as u32);
                    for (offset, deliveries) in &l.records {
                        out.put_u64(*offset);
                        out.put_u32(*deliveries);
                    }
                    out.put_bytes(l.batches);
                }
            }
            GroupResponse::Settled(codes) => {
                out.put_u32(codes.len() as u32);
                for c in codes {
                    out.put_u16(*c);
                }
            }
        }
    }

    /// Decodes a group response body of `kind` (the group's LEAVE answers `Done`, decoded
    /// by the caller); `None` for a kind that has no group response.
    pub fn decode(kind: u16, body: &'a [u8]) -> Option<Result<GroupResponse<'a>, ProtocolError>> {
        let mut r = Reader::new(body);
        let response = match kind {
            kind::GROUP_HEARTBEAT => (|| {
                Ok(GroupResponse::Heartbeat(Heartbeat {
                    member_id: r.str("member_id")?,
                    generation: r.u32("generation")?,
                    heartbeat_interval_ms: r.u32("heartbeat_interval_ms")?,
                    assignment: get_u32s(&mut r, "assignment")?,
                    pending: r.u32("pending")?,
                }))
            })(),
            kind::GROUP_COMMIT => (|| {
                let n = r.count("results", 6)?;
                let mut results = Vec::with_capacity(n);
                for _ in 0..n {
                    results.push((r.u32("partition")?, r.u16("code")?));
                }
                Ok(GroupResponse::Committed(results))
            })(),
            kind::GROUP_OFFSETS => (|| {
                let topic = r.str("topic")?;
                let n = r.count("offsets", 26)?;
                let mut offsets = Vec::with_capacity(n);
                for _ in 0..n {
                    offsets.push(Committed {
                        partition: r.u32("partition")?,
                        offset: r.u64("offset")?,
                        generation: r.u32("generation")?,
                        timestamp_ms: r.i64("timestamp_ms")?,
                        metadata: r.str("metadata")?,
                    });
                }
                Ok(GroupResponse::Offsets { topic, offsets })
            })(),
            kind::GROUP_LIST => (|| {
                let n = r.count("groups", 13)?;
                let mut groups = Vec::with_capacity(n);
                for _ in 0..n {
                    groups.push(GroupSummary {
                        name: r.str("name")?,
                        kind: GroupKind::get(&mut r)?,
                        topic: r.str("topic")?,
                        members: r.u32("members")?,
                        generation: r.u32("generation")?,
                    });
                }
                Ok(GroupResponse::List(groups))
            })(),
            kind::GROUP_DESCRIBE => (|| {
                let name = r.str("name")?;
                let kind = GroupKind::get(&mut r)?;
                let topic = r.str("topic")?;
                let generation = r.u32("generation")?;
                let n = r.count("members", 20)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(MemberDescription {
                        member_id: r.str("member_id")?,
                        client: r.str("client")?,
                        generation: r.u32("generation")?,
                        owned: get_u32s(&mut r, "owned")?,
                        target: get_u32s(&mut r, "target")?,
                        last_heartbeat_ms_ago: r.u32("last_heartbeat_ms_ago")?,
                    });
                }
                let n = r.count("partitions", 54)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push(PartitionLag {
                        partition: r.u32("partition")?,
                        owner: r.str("owner")?,
                        committed: r.u64("committed")?,
                        next: r.u64("next")?,
                        lag: r.u64("lag")?,
                        leased: r.u64("leased")?,
                        in_flight: r.u64("in_flight")?,
                        dead_lettered: r.u64("dead_lettered")?,
                    });
                }
                Ok(GroupResponse::Described(GroupDescription {
                    name,
                    kind,
                    topic,
                    generation,
                    members,
                    partitions,
                }))
            })(),
            kind::QUEUE_JOIN => (|| {
                Ok(GroupResponse::QueueJoined {
                    member_id: r.str("member_id")?,
                    settings: QueueSettings::get(&mut r)?,
                })
            })(),
            kind::QUEUE_POLL => (|| {
                let n = r.count("partitions", 12)?;
                let mut parts = Vec::with_capacity(n);
                for _ in 0..n {
                    let partition = r.u32("partition")?;
                    let k = r.count("records", 12)?;
                    let mut records = Vec::with_capacity(k);
                    for _ in 0..k {
                        records.push((r.u64("offset")?, r.u32("deliveries")?));
                    }
                    parts.push(Leased {
                        partition,
                        records,
                        batches: r.bytes("batches")?,
                    });
                }
                Ok(GroupResponse::Leased(parts))
            })(),
            kind::QUEUE_SETTLE => (|| {
                let n = r.count("codes", 2)?;
                let mut codes = Vec::with_capacity(n);
                for _ in 0..n {
                    codes.push(r.u16("code")?);
                }
                Ok(GroupResponse::Settled(codes))
            })(),
            _ => return None,
        };
        Some(response.and_then(|resp| r.finish("the response body").map(|()| resp)))
    }
}

/// Encodes a GROUP_NOTICE push body: `generation u32`.
pub fn encode_notice(out: &mut Vec<u8>, notify: u32, generation: u32) {
    let start = crate::frame::begin_frame(
        out,
        kind::GROUP_NOTICE,
        crate::frame::FLAG_PUSH,
        u64::from(notify),
    );
    out.put_u32(generation);
    crate::frame::finish_frame(out, start, 0);
}

fn put_u32s(out: &mut Vec<u8>, values: &[u32]) {
    out.put_u32(values.len() as u32);
    for v in values {
        out.put_u32(*v);
    }
}

fn get_u32s(r: &mut Reader<'_>, field: &str) -> Result<Vec<u32>, ProtocolError> {
    let n = r.count(field, 4)?;
    (0..n).map(|_| r.u32(field)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_request(req: GroupRequest<'_>) {
        let mut body = Vec::new();
        req.encode_body(&mut body);
        let back = GroupRequest::decode(req.kind(), &body).unwrap().unwrap();
        assert_eq!(back, req);
        // Every strict prefix fails to decode (no field silently defaults).
        for cut in 0..body.len() {
            assert!(GroupRequest::decode(req.kind(), &body[..cut])
                .unwrap()
                .is_err());
        }
    }

    fn round_trip_response(kind: u16, resp: GroupResponse<'_>) {
        let mut body = Vec::new();
        resp.encode_body(&mut body);
        assert_eq!(GroupResponse::decode(kind, &body).unwrap().unwrap(), resp);
        body.push(0);
        assert!(GroupResponse::decode(kind, &body).unwrap().is_err());
    }

    #[test]
    fn requests_round_trip() {
        round_trip_request(GroupRequest::Heartbeat {
            group: "indexers",
            topic: "files",
            member_id: "m-1",
            generation: 7,
            session_timeout_ms: 10_000,
            notify: 3,
            owned: vec![0, 5, 11],
        });
        round_trip_request(GroupRequest::Leave {
            group: "g",
            member_id: "m",
        });
        round_trip_request(GroupRequest::Commit {
            group: "g",
            member_id: "m",
            generation: 2,
            commits: vec![
                CommitEntry {
                    partition: 1,
                    offset: 99,
                    metadata: "",
                },
                CommitEntry {
                    partition: 4,
                    offset: 0,
                    metadata: "host-a",
                },
            ],
        });
        round_trip_request(GroupRequest::Offsets { group: "g" });
        round_trip_request(GroupRequest::QueueJoin {
            group: "q",
            topic: "t",
            member_id: "",
            settings: QueueSettings {
                visibility_timeout_ms: 30_000,
                max_deliveries: 5,
                per_key_ordering: true,
                max_in_flight: 1000,
                dead_letter_topic: "t.dlq",
                backoff_ms: vec![100, 1000],
            },
        });
        round_trip_request(GroupRequest::QueuePoll {
            group: "q",
            member_id: "m",
            max_records: 100,
            max_bytes: 1 << 20,
            max_wait_ms: 500,
        });
        round_trip_request(GroupRequest::QueueSettle {
            group: "q",
            member_id: "m",
            entries: vec![
                SettleEntry {
                    partition: 0,
                    offset: 1,
                    action: Settle::Ack,
                    reason: "",
                },
                SettleEntry {
                    partition: 1,
                    offset: 2,
                    action: Settle::Nack { delay_ms: 250 },
                    reason: "timeout",
                },
                SettleEntry {
                    partition: 1,
                    offset: 3,
                    action: Settle::Defer {
                        until_ms: 1_800_000_000_000,
                    },
                    reason: "",
                },
                SettleEntry {
                    partition: 2,
                    offset: 4,
                    action: Settle::Release,
                    reason: "",
                },
            ],
        });
        round_trip_request(GroupRequest::QueueLeave {
            group: "q",
            member_id: "m",
        });
        round_trip_request(GroupRequest::Describe { group: "g" });
        let mut body = Vec::new();
        GroupRequest::List.encode_body(&mut body);
        assert!(body.is_empty());
    }

    #[test]
    fn responses_round_trip() {
        round_trip_response(
            kind::GROUP_HEARTBEAT,
            GroupResponse::Heartbeat(Heartbeat {
                member_id: "m-1",
                generation: 3,
                heartbeat_interval_ms: 1000,
                assignment: vec![2, 3],
                pending: 1,
            }),
        );
        round_trip_response(
            kind::GROUP_COMMIT,
            GroupResponse::Committed(vec![(0, 0), (3, 73)]),
        );
        round_trip_response(
            kind::GROUP_OFFSETS,
            GroupResponse::Offsets {
                topic: "t",
                offsets: vec![Committed {
                    partition: 0,
                    offset: 10,
                    generation: 1,
                    timestamp_ms: 1_700_000_000_000,
                    metadata: "x",
                }],
            },
        );
        round_trip_response(
            kind::GROUP_LIST,
            GroupResponse::List(vec![GroupSummary {
                name: "g",
                kind: GroupKind::Stream,
                topic: "t",
                members: 2,
                generation: 5,
            }]),
        );
        round_trip_response(
            kind::GROUP_DESCRIBE,
            GroupResponse::Described(GroupDescription {
                name: "g",
                kind: GroupKind::Stream,
                topic: "t",
                generation: 5,
                members: vec![MemberDescription {
                    member_id: "m",
                    client: "127.0.0.1:5000 cli",
                    generation: 5,
                    owned: vec![0],
                    target: vec![0, 1],
                    last_heartbeat_ms_ago: 12,
                }],
                partitions: vec![PartitionLag {
                    partition: 0,
                    owner: "m",
                    committed: NO_OFFSET,
                    next: 7,
                    lag: 7,
                    leased: 1,
                    in_flight: 2,
                    dead_lettered: 3,
                }],
            }),
        );
        round_trip_response(
            kind::QUEUE_JOIN,
            GroupResponse::QueueJoined {
                member_id: "m-1",
                settings: QueueSettings {
                    visibility_timeout_ms: 1,
                    max_deliveries: 2,
                    per_key_ordering: false,
                    max_in_flight: 3,
                    dead_letter_topic: "d",
                    backoff_ms: vec![],
                },
            },
        );
        round_trip_response(
            kind::QUEUE_POLL,
            GroupResponse::Leased(vec![Leased {
                partition: 3,
                records: vec![(10, 1), (12, 4)],
                batches: b"not really batches",
            }]),
        );
        round_trip_response(kind::QUEUE_SETTLE, GroupResponse::Settled(vec![0, 76]));
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        let mut body = Vec::new();
        body.put_str("g");
        body.put_str("t");
        body.put_str("");
        body.put_u32(0);
        body.put_u32(0);
        body.put_u32(0);
        body.put_u32(u32::MAX); // owned count
        assert!(GroupRequest::decode(kind::GROUP_HEARTBEAT, &body)
            .unwrap()
            .is_err());
    }
}
