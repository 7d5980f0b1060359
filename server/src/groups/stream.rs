//! One stream group: its members, who holds which partition, the target assignment, and
//! the committed offsets. Pure state: the caller passes the time in, and routes the
//! notices and the commit records this produces.
//!
//! Invariants:
//! - A partition has at most one holder. It is granted to its target member only while it
//!   has no holder, and it loses its holder only when that member reports it released
//!   (heartbeat), leaves, or is removed (session expired, or it kept a revoked partition
//!   longer than its session timeout). So two live members never hold one partition at
//!   once — whatever the generation.
//! - The generation grows on every change of membership or partition count; a member
//!   learns it on each heartbeat. A commit is accepted only from the partition's holder,
//!   with a generation between the one the partition was granted in and the member's
//!   current one: a member fenced out (removed) or one that lost the partition in between
//!   cannot overwrite the new holder's progress.
//! - Only members that gain or lose a partition are told to act (notices); the others keep
//!   consuming through a rebalance.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tidelog_protocol::{ErrorCode, ProtocolError};

use super::assign::assign;

/// Longest metadata stored with a committed offset.
pub const COMMIT_METADATA_MAX: usize = 1024;

#[derive(Debug, Clone)]
pub struct Member {
    pub client: String,
    /// The generation this member last heartbeated in.
    pub generation: u32,
    pub session_timeout: Duration,
    pub last_heartbeat: Instant,
    /// Where GROUP_NOTICE pushes go: (connection token, notify id).
    pub notify: Option<(usize, u32)>,
    /// A notice was sent since its last heartbeat (one is enough).
    notified: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub member: String,
    /// The generation in which the partition was granted to `member`.
    pub granted_in: u32,
    /// Since when its target has been another member (it must release it).
    pub revoking_since: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: u64,
    pub generation: u32,
    pub timestamp_ms: i64,
    pub metadata: String,
}

/// What a heartbeat answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub member_id: String,
    pub generation: u32,
    pub heartbeat_interval: Duration,
    pub assignment: Vec<u32>,
    pub pending: u32,
}

/// A heartbeat as the group sees it.
#[derive(Debug, Clone)]
pub struct Beat<'a> {
    pub member_id: &'a str,
    pub generation: u32,
    pub session_timeout: Duration,
    pub notify: Option<(usize, u32)>,
    pub owned: &'a [u32],
    pub client: &'a str,
}

#[derive(Debug, Clone)]
pub struct StreamGroup {
    pub topic: String,
    pub generation: u32,
    pub members: BTreeMap<String, Member>,
    /// Per partition of the topic.
    pub holders: Vec<Option<Holding>>,
    pub target: Vec<Option<String>>,
    /// Committed offsets by (topic, partition): they outlive a change of topic.
    pub committed: BTreeMap<(String, u32), CommittedOffset>,
    /// Notices to push: (connection token, notify id, generation).
    pub notices: Vec<(usize, u32, u32)>,
}

impl StreamGroup {
    pub fn new(topic: &str) -> StreamGroup {
        StreamGroup {
            topic: topic.to_string(),
            generation: 0,
            members: BTreeMap::new(),
            holders: Vec::new(),
            target: Vec::new(),
            committed: BTreeMap::new(),
            notices: Vec::new(),
        }
    }

    /// Handles a heartbeat (a join when `member_id` is empty; `new_id` names the member).
    /// `partitions` is the topic's current partition count.
    pub fn heartbeat(
        &mut self,
        now: Instant,
        beat: &Beat<'_>,
        partitions: u32,
        new_id: impl FnOnce() -> String,
    ) -> Result<HeartbeatReply, ProtocolError> {
        let mut changed = false;
        if partitions as usize != self.holders.len() {
            // Partitions only ever grow (the engine cannot remove them).
            self.holders.resize(partitions as usize, None);
            self.target.resize(partitions as usize, None);
            changed = true;
        }
        let id = if beat.member_id.is_empty() {
            let id = new_id();
            self.members.insert(
                id.clone(),
                Member {
                    client: beat.client.to_string(),
                    generation: 0,
                    session_timeout: beat.session_timeout,
                    last_heartbeat: now,
                    notify: beat.notify,
                    notified: false,
                },
            );
            changed = true;
            id
        } else {
            let member = self.members.get(beat.member_id).ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::UnknownMember,
                    format!(
                        "member {} is not in the group (session expired, left, or the server restarted); join again",
                        beat.member_id
                    ),
                )
            })?;
            if beat.generation > member.generation {
                return Err(stale(format!(
                    "generation {} is newer than the member's ({})",
                    beat.generation, member.generation
                )));
            }
            beat.member_id.to_string()
        };
        if changed {
            self.generation += 1;
            self.rebalance(now);
        }
        // Released partitions: held by this member but no longer reported.
        let owned: BTreeSet<u32> = beat.owned.iter().copied().collect();
        let mut released = false;
        for (p, holder) in self.holders.iter_mut().enumerate() {
            if matches!(holder, Some(h) if h.member == id) && !owned.contains(&(p as u32)) {
                *holder = None;
                released = true;
            }
        }
        // Grants: target partitions without a holder.
        let (mut assignment, mut pending) = (Vec::new(), 0);
        for p in 0..self.target.len() {
            if self.target[p].as_deref() != Some(id.as_str()) {
                continue;
            }
            match &self.holders[p] {
                None => {
                    self.holders[p] = Some(Holding {
                        member: id.clone(),
                        granted_in: self.generation,
                        revoking_since: None,
                    });
                    assignment.push(p as u32);
                }
                Some(h) if h.member == id => assignment.push(p as u32),
                Some(_) => pending += 1,
            }
        }
        let generation = self.generation;
        let member = self.members.get_mut(&id).expect("present");
        member.generation = generation;
        member.last_heartbeat = now;
        member.session_timeout = beat.session_timeout;
        member.notify = beat.notify;
        member.client = beat.client.to_string();
        member.notified = false;
        let heartbeat_interval = heartbeat_interval(member.session_timeout);
        if released {
            self.queue_notices();
        }
        Ok(HeartbeatReply {
            member_id: id,
            generation,
            heartbeat_interval,
            assignment,
            pending,
        })
    }

    /// A member leaves: its partitions are free at once.
    pub fn leave(&mut self, now: Instant, member_id: &str) -> Result<(), ProtocolError> {
        if !self.members.contains_key(member_id) {
            return Err(unknown_member(member_id));
        }
        self.remove(now, &[member_id.to_string()]);
        Ok(())
    }

    /// Removes members whose session expired, and members that kept a revoked partition
    /// longer than their session timeout. Returns the removed member ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_heartbeat) > m.session_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for h in self.holders.iter().flatten() {
            let Some(since) = h.revoking_since else {
                continue;
            };
            let timeout = self
                .members
                .get(&h.member)
                .map_or(Duration::ZERO, |m| m.session_timeout);
            if now.saturating_duration_since(since) > timeout && !gone.contains(&h.member) {
                gone.push(h.member.clone());
            }
        }
        if !gone.is_empty() {
            self.remove(now, &gone);
        }
        gone
    }

    /// When [`StreamGroup::expire`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let sessions = self
            .members
            .values()
            .map(|m| m.last_heartbeat + m.session_timeout);
        let revocations = self.holders.iter().flatten().filter_map(|h| {
            let since = h.revoking_since?;
            let m = self.members.get(&h.member)?;
            Some(since + m.session_timeout)
        });
        sessions.chain(revocations).min()
    }

    /// Checks a commit: one result code per entry (0 = accepted). Fails as a whole only for
    /// an unknown member.
    pub fn check_commit(
        &self,
        member_id: &str,
        generation: u32,
        entries: &[(u32, &str)],
    ) -> Result<Vec<u16>, ProtocolError> {
        let member = self
            .members
            .get(member_id)
            .ok_or_else(|| unknown_member(member_id))?;
        Ok(entries
            .iter()
            .map(|&(p, metadata)| {
                let code = match self.holders.get(p as usize).and_then(Option::as_ref) {
                    _ if metadata.len() > COMMIT_METADATA_MAX => ErrorCode::InvalidRequest,
                    Some(h) if h.member != member_id => ErrorCode::NotPartitionOwner,
                    None => ErrorCode::NotPartitionOwner,
                    Some(h) if generation < h.granted_in || generation > member.generation => {
                        ErrorCode::StaleGeneration
                    }
                    Some(_) => return 0,
                };
                code as u16
            })
            .collect())
    }

    /// Partitions `member` holds, and those its target gives it.
    pub fn member_partitions(&self, member: &str) -> (Vec<u32>, Vec<u32>) {
        let pick = |v: Vec<bool>| {
            v.iter()
                .enumerate()
                .filter(|(_, b)| **b)
                .map(|(p, _)| p as u32)
                .collect()
        };
        (
            pick(
                self.holders
                    .iter()
                    .map(|h| matches!(h, Some(h) if h.member == member))
                    .collect(),
            ),
            pick(
                self.target
                    .iter()
                    .map(|t| t.as_deref() == Some(member))
                    .collect(),
            ),
        )
    }

    /// Forgets notice routes through a closed connection.
    pub fn connection_closed(&mut self, token: usize) {
        for m in self.members.values_mut() {
            if matches!(m.notify, Some((t, _)) if t == token) {
                m.notify = None;
            }
        }
    }

    fn remove(&mut self, now: Instant, ids: &[String]) {
        for id in ids {
            self.members.remove(id);
        }
        for holder in &mut self.holders {
            if matches!(holder, Some(h) if ids.contains(&h.member)) {
                *holder = None;
            }
        }
        self.generation += 1;
        self.rebalance(now);
    }

    /// New target assignment (sticky), revocation clocks, and notices to the members that
    /// must act.
    fn rebalance(&mut self, now: Instant) {
        let ids: Vec<&String> = self.members.keys().collect();
        let index = |m: &str| ids.binary_search_by(|id| id.as_str().cmp(m)).ok();
        let previous: Vec<Option<usize>> = self
            .target
            .iter()
            .map(|t| t.as_deref().and_then(index))
            .collect();
        let target: Vec<Option<String>> = assign(ids.len(), &previous)
            .into_iter()
            .map(|i| i.map(|i| ids[i].clone()))
            .collect();
        self.target = target;
        for (p, holder) in self.holders.iter_mut().enumerate() {
            if let Some(h) = holder {
                if self.target[p].as_deref() == Some(h.member.as_str()) {
                    h.revoking_since = None;
                } else {
                    h.revoking_since.get_or_insert(now);
                }
            }
        }
        self.queue_notices();
    }

    /// Notices for members with something to do: release a partition, or take one that
    /// is free.
    fn queue_notices(&mut self) {
        let generation = self.generation;
        for (id, m) in self.members.iter_mut() {
            if m.notified {
                continue;
            }
            let must_act = self.holders.iter().zip(&self.target).any(|(h, t)| {
                let holds = matches!(h, Some(h) if &h.member == id);
                let targeted = t.as_ref() == Some(id);
                (holds && !targeted) || (targeted && h.is_none())
            });
            if let (true, Some((token, notify))) = (must_act, m.notify) {
                self.notices.push((token, notify, generation));
                m.notified = true;
            }
        }
    }
}

/// A third of the session timeout: two heartbeats can be lost before the session ends.
pub fn heartbeat_interval(session_timeout: Duration) -> Duration {
    (session_timeout / 3).max(Duration::from_millis(10))
}

fn stale(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::StaleGeneration, message)
}

fn unknown_member(member_id: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::UnknownMember,
        format!("member {member_id} is not in the group"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SESSION: Duration = Duration::from_secs(10);

    fn beat<'a>(id: &'a str, generation: u32, owned: &'a [u32]) -> Beat<'a> {
        Beat {
            member_id: id,
            generation,
            session_timeout: SESSION,
            notify: Some((7, 1)),
            owned,
            client: "test",
        }
    }

    fn join(g: &mut StreamGroup, now: Instant, name: &str, partitions: u32) -> HeartbeatReply {
        g.heartbeat(now, &beat("", 0, &[]), partitions, || name.to_string())
            .unwrap()
    }

    #[test]
    fn a_partition_moves_only_after_its_holder_releases_it() {
        let now = Instant::now();
        let mut g = StreamGroup::new("t");
        let a = join(&mut g, now, "a", 4);
        assert_eq!(a.assignment, vec![0, 1, 2, 3]);
        let b = join(&mut g, now, "b", 4);
        assert!(b.assignment.is_empty(), "a still holds everything");
        assert_eq!(b.pending, 2);
        // a learns its new assignment (two partitions fewer) but still holds all four.
        let a2 = g
            .heartbeat(
                now,
                &beat("a", a.generation, &[0, 1, 2, 3]),
                4,
                || unreachable!(),
            )
            .unwrap();
        assert_eq!(a2.assignment.len(), 2);
        let b2 = g
            .heartbeat(now, &beat("b", b.generation, &[]), 4, || unreachable!())
            .unwrap();
        assert!(b2.assignment.is_empty());
        // a releases: b gets them on its next heartbeat, and was told to come.
        g.notices.clear();
        g.heartbeat(
            now,
            &beat("a", a2.generation, &a2.assignment),
            4,
            || unreachable!(),
        )
        .unwrap();
        assert_eq!(g.notices.len(), 1, "b is told the partitions are free");
        let b3 = g
            .heartbeat(now, &beat("b", b2.generation, &[]), 4, || unreachable!())
            .unwrap();
        assert_eq!(b3.assignment.len(), 2);
        assert_eq!(b3.pending, 0);
    }

    #[test]
    fn commits_are_fenced() {
        let now = Instant::now();
        let mut g = StreamGroup::new("t");
        let a = join(&mut g, now, "a", 2);
        assert_eq!(
            g.check_commit("a", a.generation, &[(0, "")]).unwrap(),
            vec![0]
        );
        assert_eq!(
            g.check_commit("a", a.generation - 1, &[(0, "")]).unwrap(),
            vec![ErrorCode::StaleGeneration as u16]
        );
        assert_eq!(
            g.check_commit("a", a.generation + 1, &[(0, "")]).unwrap(),
            vec![ErrorCode::StaleGeneration as u16]
        );
        assert_eq!(
            g.check_commit("a", a.generation, &[(9, "")]).unwrap(),
            vec![ErrorCode::NotPartitionOwner as u16]
        );
        assert_eq!(
            g.check_commit("zz", a.generation, &[(0, "")])
                .unwrap_err()
                .code,
            ErrorCode::UnknownMember
        );
        // a's session expires: its commits are refused from then on.
        let later = now + SESSION + Duration::from_millis(1);
        assert_eq!(g.expire(later), vec!["a".to_string()]);
        assert_eq!(
            g.check_commit("a", a.generation, &[(0, "")])
                .unwrap_err()
                .code,
            ErrorCode::UnknownMember
        );
    }

    #[test]
    fn a_member_keeping_a_revoked_partition_is_removed() {
        let now = Instant::now();
        let mut g = StreamGroup::new("t");
        join(&mut g, now, "a", 2);
        let b = join(&mut g, now, "b", 2);
        // a keeps heartbeating but never releases partition 1.
        let t1 = now + SESSION / 2;
        g.heartbeat(t1, &beat("a", 1, &[0, 1]), 2, || unreachable!())
            .unwrap();
        let t2 = now + SESSION + Duration::from_millis(1);
        g.heartbeat(t2, &beat("a", 2, &[0, 1]), 2, || unreachable!())
            .unwrap();
        g.heartbeat(t2, &beat("b", b.generation, &[]), 2, || unreachable!())
            .unwrap();
        assert_eq!(g.expire(t2), vec!["a".to_string()]);
        let b2 = g
            .heartbeat(t2, &beat("b", b.generation, &[]), 2, || unreachable!())
            .unwrap();
        assert_eq!(b2.assignment, vec![0, 1]);
    }

    /// A simulated client: what it holds, learned from heartbeats, released when told.
    #[derive(Debug, Default, Clone)]
    struct Sim {
        id: String,
        generation: u32,
        holds: BTreeSet<u32>,
        /// Partitions the last reply did not include: released at its next step.
        to_release: BTreeSet<u32>,
        alive: bool,
    }

    impl Sim {
        /// One heartbeat, releasing first what was revoked when `release` is set; on an
        /// error the member is gone (its code returned).
        fn beat(
            &mut self,
            g: &mut StreamGroup,
            now: Instant,
            partitions: u32,
            release: bool,
        ) -> Result<(), ErrorCode> {
            if release {
                for p in std::mem::take(&mut self.to_release) {
                    self.holds.remove(&p);
                }
            }
            let owned: Vec<u32> = self.holds.iter().copied().collect();
            match g.heartbeat(
                now,
                &beat(&self.id, self.generation, &owned),
                partitions,
                || unreachable!(),
            ) {
                Ok(r) => {
                    self.generation = r.generation;
                    let assigned: BTreeSet<u32> = r.assignment.into_iter().collect();
                    self.to_release = self.holds.difference(&assigned).copied().collect();
                    self.holds.extend(assigned);
                    Ok(())
                }
                Err(e) => {
                    self.alive = false;
                    Err(e.code)
                }
            }
        }
    }

    proptest! {
        /// Whatever the order of joins, heartbeats, slow releases, leaves and crashes, no
        /// two live members hold one partition; after everyone heartbeats a few times with
        /// no change, every partition is held by its balanced target.
        #[test]
        fn never_two_holders_and_convergence(
            ops in proptest::collection::vec((0u8..6, 0usize..6), 1..200),
            partitions in 1u32..16,
        ) {
            let mut now = Instant::now();
            let mut g = StreamGroup::new("t");
            let mut sims: Vec<Sim> = Vec::new();
            let mut next = 0;
            for (op, who) in ops {
                now += Duration::from_millis(100);
                match op {
                    0 => {
                        next += 1;
                        let name = format!("m{next:03}");
                        let r = g.heartbeat(now, &beat("", 0, &[]), partitions, || name.clone()).unwrap();
                        sims.push(Sim { id: r.member_id, generation: r.generation, holds: r.assignment.into_iter().collect(), alive: true, ..Sim::default() });
                    }
                    1 | 2 => {
                        // Heartbeat (op 2: release first what was revoked).
                        let Some(s) = sims.iter_mut().filter(|s| s.alive).nth(who) else { continue };
                        if let Err(code) = s.beat(&mut g, now, partitions, op == 2) {
                            prop_assert_eq!(code, ErrorCode::UnknownMember);
                            s.holds.clear();
                        }
                    }
                    3 => {
                        let Some(s) = sims.iter_mut().filter(|s| s.alive).nth(who) else { continue };
                        g.leave(now, &s.id).unwrap();
                        s.alive = false;
                        s.holds.clear();
                    }
                    4 => {
                        // Crash: stops heartbeating; the server expires it later. Until
                        // then it still believes it holds its partitions, but the server
                        // fences its commits once it is gone.
                        let Some(s) = sims.iter_mut().filter(|s| s.alive).nth(who) else { continue };
                        s.alive = false;
                    }
                    _ => {
                        now += SESSION / 4;
                        for gone in g.expire(now) {
                            let s = sims.iter_mut().find(|s| s.id == gone).unwrap();
                            s.alive = false;
                            s.holds.clear();
                        }
                    }
                }
                // Never two holders among members the server still counts.
                let mut seen = BTreeSet::new();
                for s in sims.iter().filter(|s| g.members.contains_key(&s.id)) {
                    for p in &s.holds {
                        prop_assert!(seen.insert(*p), "partition {} held twice", p);
                    }
                }
            }
            // Converge: the live members heartbeat (releasing what was revoked) every
            // quarter session while the crashed ones expire. A live member that sat on a
            // revoked partition for a whole session during the run is removed (that is the
            // rule), and counts as gone.
            for _ in 0..12 {
                now += SESSION / 4;
                for s in sims.iter_mut().filter(|s| s.alive) {
                    if let Err(code) = s.beat(&mut g, now, partitions, true) {
                        prop_assert_eq!(code, ErrorCode::UnknownMember);
                    }
                }
                for gone in g.expire(now) {
                    let s = sims.iter_mut().find(|s| s.id == gone).unwrap();
                    s.alive = false;
                }
                for s in sims.iter_mut().filter(|s| !s.alive) { s.holds.clear(); }
            }
            let live = sims.iter().filter(|s| s.alive).count();
            if let Some(lo) = (partitions as usize).checked_div(live) {
                let total: usize = sims.iter().map(|s| s.holds.len()).sum();
                prop_assert_eq!(total, partitions as usize);
                for s in sims.iter().filter(|s| s.alive) {
                    prop_assert!(s.holds.len() >= lo && s.holds.len() <= lo + 1);
                }
            }
        }
    }
}
