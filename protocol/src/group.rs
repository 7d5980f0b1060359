//! Consumer-group messages (kinds 0x0200..=0x02FF), version 1: stream groups, whose
//! members own whole partitions and commit offsets. Body layouts are listed on each
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
}

impl GroupKind {
    fn get(r: &mut Reader<'_>) -> Result<GroupKind, ProtocolError> {
        match r.u8("group kind")? {
            0 => Ok(GroupKind::Stream),
            k => Err(ProtocolError::invalid(format!("group kind {k} is not 0"))),
        }
    }
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
    /// partitions u32 × (partition u32, owner str, committed u64, next u64, lag u64)`
    Described(GroupDescription<'a>),
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
                let n = r.count("partitions", 30)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push(PartitionLag {
                        partition: r.u32("partition")?,
                        owner: r.str("owner")?,
                        committed: r.u64("committed")?,
                        next: r.u64("next")?,
                        lag: r.u64("lag")?,
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
                }],
            }),
        );
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
