//! One queue group: per-record leases over a topic's partitions (like Kafka share groups,
//! JetStream work queues, SQS). Pure state: the caller reads the log, writes dead letters
//! and persists the snapshots this produces.
//!
//! Per partition, a *window* of records `[start, next)` is tracked (a [`SharePartition`]):
//! everything below `start` is settled; inside the window each record is waiting
//! (deliverable from its `available_at`), leased to one member until a deadline, pending
//! dead-lettering, or settled out of order. Records enter the window in offset order as
//! members poll; the window never holds more than `max_in_flight` records, so a record
//! that is never settled holds its partition back by at most that much.
//!
//! Invariants:
//! - a record is leased to at most one member at a time; a settlement (ack, nack, defer,
//!   release) is accepted only from the member holding an unexpired lease on it;
//! - a record is delivered until it is acked or dead-lettered; nothing below `start` is
//!   ever delivered again;
//! - a waiting record is not delivered before its `available_at` (a nack's delay, the
//!   backoff after a failure, or a deferral's time);
//! - each delivery counts; a failure (nack, lease expiry) with `max_deliveries`
//!   deliveries made sends the record to the dead-letter topic instead of back to
//!   waiting; a deferral never does;
//! - with per-key ordering, a record is not delivered while an earlier record of the same
//!   key in the window is unsettled.
//!
//! Persistence: a snapshot of a partition's window (start, and runs of records with equal
//! state, delivery count and availability) — leases are not persisted: after a restart,
//! leased records are waiting again. Settlements are acknowledged once the snapshot that
//! holds them is durable.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};

use tidelog_protocol::group::{QueueSettings, Settle};
use tidelog_protocol::{ErrorCode, ProtocolError};

pub const VISIBILITY_TIMEOUT_DEFAULT_MS: u32 = 30_000;
pub const MAX_DELIVERIES_DEFAULT: u32 = 5;
pub const MAX_IN_FLIGHT_DEFAULT: u32 = 10_000;
pub const MAX_IN_FLIGHT_MAX: u32 = 1_000_000;
pub const BACKOFF_DEFAULT_MS: [u32; 4] = [100, 1_000, 5_000, 30_000];
/// A member that has not polled for this long past the visibility timeout is forgotten.
pub const MEMBER_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// A queue group's settings, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub visibility_timeout_ms: u32,
    pub max_deliveries: u32,
    pub per_key_ordering: bool,
    pub max_in_flight: u32,
    pub dead_letter_topic: String,
    pub backoff_ms: Vec<u32>,
}

impl QueueConfig {
    /// The settings a join asked for, defaults for zeros and empties, validated.
    pub fn from_settings(topic: &str, s: &QueueSettings<'_>) -> Result<QueueConfig, ProtocolError> {
        let pick = |v: u32, d: u32| if v == 0 { d } else { v };
        let config = QueueConfig {
            visibility_timeout_ms: pick(s.visibility_timeout_ms, VISIBILITY_TIMEOUT_DEFAULT_MS),
            max_deliveries: pick(s.max_deliveries, MAX_DELIVERIES_DEFAULT),
            per_key_ordering: s.per_key_ordering,
            max_in_flight: pick(s.max_in_flight, MAX_IN_FLIGHT_DEFAULT),
            dead_letter_topic: if s.dead_letter_topic.is_empty() {
                format!("{topic}.dlq")
            } else {
                s.dead_letter_topic.to_string()
            },
            backoff_ms: if s.backoff_ms.is_empty() {
                BACKOFF_DEFAULT_MS.to_vec()
            } else {
                s.backoff_ms.clone()
            },
        };
        if config.max_in_flight > MAX_IN_FLIGHT_MAX {
            return Err(ProtocolError::invalid(format!(
                "max_in_flight must be at most {MAX_IN_FLIGHT_MAX}"
            )));
        }
        if config.backoff_ms.len() > 64 || config.max_deliveries > 1_000_000 {
            return Err(ProtocolError::invalid(
                "at most 64 backoff steps and 1 000 000 deliveries",
            ));
        }
        if config.dead_letter_topic == topic {
            return Err(ProtocolError::invalid(
                "the dead-letter topic cannot be the consumed topic",
            ));
        }
        Ok(config)
    }

    pub fn settings(&self) -> QueueSettings<'_> {
        QueueSettings {
            visibility_timeout_ms: self.visibility_timeout_ms,
            max_deliveries: self.max_deliveries,
            per_key_ordering: self.per_key_ordering,
            max_in_flight: self.max_in_flight,
            dead_letter_topic: &self.dead_letter_topic,
            backoff_ms: self.backoff_ms.clone(),
        }
    }

    /// Delay before redelivery after the `failures`-th failed delivery.
    pub fn backoff(&self, failures: u32) -> i64 {
        let i = (failures.max(1) as usize - 1).min(self.backoff_ms.len().saturating_sub(1));
        i64::from(self.backoff_ms.get(i).copied().unwrap_or(0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Deliverable from `available_at_ms`.
    Waiting,
    Leased {
        member: u32,
        until_ms: i64,
    },
    /// Failed its last delivery: to be written to the dead-letter topic.
    DeadLetter,
    Settled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub state: SlotState,
    pub deliveries: u32,
    pub available_at_ms: i64,
    /// Hash of the record's key (per-key ordering), when known.
    pub key: Option<u64>,
}

/// One partition's window. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct SharePartition {
    pub start: u64,
    pub slots: VecDeque<Slot>,
    pub dead_lettered: u64,
    /// Changed since its snapshot was last written.
    pub dirty: bool,
    /// Slot keys are known (false after a restart until the window is read again).
    pub keys_known: bool,
    /// Why each pending dead letter failed: one entry per slot in state `DeadLetter`.
    pub reasons: HashMap<u64, String>,
    /// A scan found nothing deliverable; nothing changed since.
    stalled: bool,
    /// No waiting record becomes deliverable before this (a lower bound, exact after a
    /// scan): when a parked poll should look again.
    wake_ms: i64,
    /// The reader thread is bringing pages this window must read into the page cache
    /// (`cold.rs`): the partition is skipped until it is done. Not persisted.
    pub warming: bool,
    /// The position whose pages the reader has read in: read from there without asking
    /// again. Not persisted.
    pub warmed_at: Option<u64>,
}

/// What a settlement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Done,
    /// Out of deliveries: it goes to the dead-letter topic.
    DeadLetter,
}

impl SharePartition {
    pub fn new(start: u64) -> SharePartition {
        SharePartition {
            start,
            keys_known: true,
            wake_ms: i64::MAX,
            ..SharePartition::default()
        }
    }

    /// A record of the window that is not in the log (a gap in a batch's offsets):
    /// nothing to deliver, settled.
    pub fn mark_absent(&mut self, offset: u64) {
        if let Some(slot) = self.slot_mut(offset) {
            slot.state = SlotState::Settled;
        }
        self.changed();
    }

    fn waiting_from(&mut self, at_ms: i64) {
        self.wake_ms = self.wake_ms.min(at_ms);
        self.stalled = false;
    }

    /// The next offset to bring into the window.
    pub fn next(&self) -> u64 {
        self.start + self.slots.len() as u64
    }

    /// Records the window can still take.
    pub fn room(&self, max_in_flight: u32) -> usize {
        (max_in_flight as usize).saturating_sub(self.slots.len())
    }

    /// Brings the record at `next()` into the window.
    pub fn admit(&mut self, key: Option<u64>) {
        self.slots.push_back(Slot {
            state: SlotState::Waiting,
            deliveries: 0,
            available_at_ms: 0,
            key,
        });
        self.waiting_from(0);
    }

    /// Retention removed records below `earliest`: they can never be delivered again.
    /// Returns how many unsettled records were lost that way.
    pub fn skip_to(&mut self, earliest: u64) -> u64 {
        let mut lost = 0;
        while self.start < earliest {
            match self.slots.pop_front() {
                Some(s) => lost += u64::from(!matches!(s.state, SlotState::Settled)),
                None => {
                    self.start = earliest;
                    break;
                }
            }
            self.start += 1;
        }
        if lost > 0 {
            self.dirty = true;
        }
        let start = self.start;
        self.reasons.retain(|o, _| *o >= start);
        lost
    }

    fn slot_mut(&mut self, offset: u64) -> Option<&mut Slot> {
        let i = offset.checked_sub(self.start)?;
        self.slots.get_mut(usize::try_from(i).ok()?)
    }

    pub fn slot(&self, offset: u64) -> Option<&Slot> {
        let i = offset.checked_sub(self.start)?;
        self.slots.get(usize::try_from(i).ok()?)
    }

    /// Up to `limit` offsets deliverable at `now_ms`, in offset order.
    pub fn deliverable(&mut self, now_ms: i64, per_key: bool, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        if (self.stalled && now_ms < self.wake_ms) || limit == 0 {
            return out;
        }
        let mut blocked: HashSet<u64> = HashSet::new();
        let mut later = i64::MAX;
        for (i, slot) in self.slots.iter().enumerate() {
            if out.len() >= limit {
                later = i64::MIN; // not scanned to the end: no exact bound
                break;
            }
            let unsettled = !matches!(slot.state, SlotState::Settled);
            let key_blocked = per_key && slot.key.is_some_and(|k| blocked.contains(&k));
            if slot.state == SlotState::Waiting {
                if slot.available_at_ms > now_ms {
                    later = later.min(slot.available_at_ms);
                } else if !key_blocked {
                    out.push(self.start + i as u64);
                }
            }
            if per_key && unsettled {
                if let Some(k) = slot.key {
                    blocked.insert(k);
                }
            }
        }
        self.wake_ms = if later == i64::MIN { now_ms } else { later };
        if out.is_empty() {
            self.stalled = true;
        }
        out
    }

    /// Leases `offset` (which must be waiting) to `member`; returns its delivery count.
    pub fn lease(&mut self, offset: u64, member: u32, until_ms: i64) -> u32 {
        let Some(slot) = self.slot_mut(offset) else {
            return 0;
        };
        slot.deliveries += 1;
        slot.state = SlotState::Leased { member, until_ms };
        let d = slot.deliveries;
        self.dirty = true;
        d
    }

    /// A member's settlement of one leased record.
    pub fn settle(
        &mut self,
        offset: u64,
        member: u32,
        action: Settle,
        reason: &str,
        now_ms: i64,
        config: &QueueConfig,
    ) -> Result<Settled, ErrorCode> {
        let slot = self.slot_mut(offset).ok_or(ErrorCode::NotLeased)?;
        match slot.state {
            SlotState::Leased {
                member: m,
                until_ms,
            } if m == member && until_ms > now_ms => {}
            _ => return Err(ErrorCode::NotLeased),
        }
        let outcome = match action {
            Settle::Ack => {
                slot.state = SlotState::Settled;
                Settled::Done
            }
            Settle::Nack { delay_ms } => {
                let delay = if delay_ms > 0 {
                    delay_ms
                } else {
                    config.backoff(slot.deliveries)
                };
                self.fail(offset, now_ms, delay, &format!("nacked: {reason}"), config)
            }
            Settle::Defer { until_ms } => {
                slot.state = SlotState::Waiting;
                slot.available_at_ms = until_ms.max(now_ms);
                let at = slot.available_at_ms;
                self.waiting_from(at);
                Settled::Done
            }
            Settle::Release => {
                slot.state = SlotState::Waiting;
                slot.available_at_ms = now_ms;
                self.waiting_from(now_ms);
                Settled::Done
            }
        };
        self.changed();
        Ok(outcome)
    }

    /// A failed delivery: back to waiting after `delay_ms`, or to the dead-letter topic
    /// if it has had its deliveries.
    fn fail(
        &mut self,
        offset: u64,
        now_ms: i64,
        delay_ms: i64,
        reason: &str,
        config: &QueueConfig,
    ) -> Settled {
        let Some(slot) = self.slot_mut(offset) else {
            return Settled::Done;
        };
        if slot.deliveries >= config.max_deliveries {
            slot.state = SlotState::DeadLetter;
            self.reasons.insert(offset, reason.to_string());
            Settled::DeadLetter
        } else {
            slot.state = SlotState::Waiting;
            slot.available_at_ms = now_ms.saturating_add(delay_ms);
            let at = slot.available_at_ms;
            self.waiting_from(at);
            Settled::Done
        }
    }

    /// The lease of `offset` ended at `now_ms` without a settlement (if it is still the
    /// lease that ran until `until_ms`).
    pub fn expire(
        &mut self,
        offset: u64,
        until_ms: i64,
        now_ms: i64,
        config: &QueueConfig,
    ) -> bool {
        let Some(slot) = self.slot(offset) else {
            return false;
        };
        if !matches!(slot.state, SlotState::Leased { until_ms: u, .. } if u == until_ms && u <= now_ms)
        {
            return false;
        }
        let delay = config.backoff(slot.deliveries);
        self.fail(offset, now_ms, delay, "lease expired", config);
        self.changed();
        true
    }

    /// Every lease of `member` is given back (it left).
    pub fn release_member(&mut self, member: u32, now_ms: i64) {
        let mut any = false;
        for slot in &mut self.slots {
            if matches!(slot.state, SlotState::Leased { member: m, .. } if m == member) {
                slot.state = SlotState::Waiting;
                slot.available_at_ms = now_ms;
                any = true;
            }
        }
        if any {
            self.waiting_from(now_ms);
            self.changed();
        }
    }

    /// Offsets waiting to be dead-lettered, ascending. Exactly the slots with a failure
    /// reason, so this costs nothing when there are none (it runs every poll tick).
    pub fn pending_dead_letters(&self) -> Vec<u64> {
        let mut offsets: Vec<u64> = self.reasons.keys().copied().collect();
        offsets.sort_unstable();
        offsets
    }

    /// Those offsets are now in the dead-letter topic.
    pub fn dead_lettered(&mut self, offsets: &[u64]) {
        for &o in offsets {
            if let Some(slot) = self.slot_mut(o) {
                if slot.state == SlotState::DeadLetter {
                    slot.state = SlotState::Settled;
                    self.dead_lettered += 1;
                }
            }
            self.reasons.remove(&o);
        }
        self.changed();
    }

    /// (leased, unsettled) records in the window.
    pub fn counts(&self) -> (u64, u64) {
        let mut leased = 0;
        let mut unsettled = 0;
        for s in &self.slots {
            match s.state {
                SlotState::Leased { .. } => {
                    leased += 1;
                    unsettled += 1;
                }
                SlotState::Settled => {}
                _ => unsettled += 1,
            }
        }
        (leased, unsettled)
    }

    /// No waiting record becomes deliverable before this (None: none waits for a time).
    pub fn next_available_ms(&self) -> Option<i64> {
        (self.wake_ms != i64::MAX).then_some(self.wake_ms)
    }

    fn changed(&mut self) {
        self.dirty = true;
        self.stalled = false;
        while self
            .slots
            .front()
            .is_some_and(|s| s.state == SlotState::Settled)
        {
            self.slots.pop_front();
            self.start += 1;
        }
    }

    /// `version u8 (1), start u64, dead_lettered u64, runs u32, runs × (len u32,
    /// settled u8, deliveries u32, available_at_ms i64)` — all LE. Leases are not kept:
    /// a leased record is stored as waiting (available at once after a restart); a pending
    /// dead letter as waiting too (it fails again on its next delivery or is written then).
    pub fn encode(&self) -> Vec<u8> {
        let mut runs: Vec<(u32, bool, u32, i64)> = Vec::new();
        for s in &self.slots {
            let settled = s.state == SlotState::Settled;
            let available = if s.state == SlotState::Waiting {
                s.available_at_ms
            } else {
                0
            };
            match runs.last_mut() {
                Some(r) if r.1 == settled && r.2 == s.deliveries && r.3 == available => r.0 += 1,
                _ => runs.push((1, settled, s.deliveries, available)),
            }
        }
        let mut out = Vec::with_capacity(21 + runs.len() * 17);
        out.push(1);
        out.extend_from_slice(&self.start.to_le_bytes());
        out.extend_from_slice(&self.dead_lettered.to_le_bytes());
        out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        for (len, settled, deliveries, available) in runs {
            out.extend_from_slice(&len.to_le_bytes());
            out.push(u8::from(settled));
            out.extend_from_slice(&deliveries.to_le_bytes());
            out.extend_from_slice(&available.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<SharePartition> {
        let mut r = bytes;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (a, b) = r.split_at_checked(n)?;
            r = b;
            Some(a)
        };
        if take(1)? != [1] {
            return None;
        }
        let start = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let dead_lettered = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let runs = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let mut slots = VecDeque::new();
        for _ in 0..runs {
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?);
            let settled = match take(1)?[0] {
                0 => false,
                1 => true,
                _ => return None,
            };
            let deliveries = u32::from_le_bytes(take(4)?.try_into().ok()?);
            let available_at_ms = i64::from_le_bytes(take(8)?.try_into().ok()?);
            if slots.len() + len as usize > MAX_IN_FLIGHT_MAX as usize {
                return None;
            }
            let state = if settled {
                SlotState::Settled
            } else {
                SlotState::Waiting
            };
            slots.extend((0..len).map(|_| Slot {
                state,
                deliveries,
                available_at_ms,
                key: None,
            }));
        }
        if take(1).is_some() {
            return None; // trailing bytes
        }
        let mut p = SharePartition {
            start,
            slots,
            dead_lettered,
            keys_known: false,
            wake_ms: 0,
            ..SharePartition::default()
        };
        p.changed();
        p.dirty = false;
        Some(p)
    }
}

/// A member as the group knows it.
#[derive(Debug, Clone)]
pub struct QueueMember {
    pub index: u32,
    pub client: String,
    pub last_seen: std::time::Instant,
}

/// A queue group: its settings, members and partition windows.
#[derive(Debug, Clone)]
pub struct QueueGroup {
    pub topic: String,
    pub config: QueueConfig,
    pub members: BTreeMap<String, QueueMember>,
    pub partitions: Vec<SharePartition>,
    /// Lease deadlines: (until_ms, partition, offset), checked lazily against the slot.
    pub expiries: BinaryHeap<Reverse<(i64, u32, u64)>>,
    /// Where the next poll starts (round robin over partitions).
    pub cursor: usize,
    next_member: u32,
    /// The config record is written (a group created by a join writes it first).
    pub config_saved: bool,
}

impl QueueGroup {
    pub fn new(topic: &str, config: QueueConfig) -> QueueGroup {
        QueueGroup {
            topic: topic.to_string(),
            config,
            members: BTreeMap::new(),
            partitions: Vec::new(),
            expiries: BinaryHeap::new(),
            cursor: 0,
            next_member: 0,
            config_saved: false,
        }
    }

    /// The member's index, registering it if new (members are soft state: a member id
    /// from before a restart is simply seen again).
    pub fn member(&mut self, id: &str, client: &str, now: std::time::Instant) -> u32 {
        if let Some(m) = self.members.get_mut(id) {
            m.last_seen = now;
            return m.index;
        }
        self.next_member += 1;
        let index = self.next_member;
        self.members.insert(
            id.to_string(),
            QueueMember {
                index,
                client: client.to_string(),
                last_seen: now,
            },
        );
        index
    }

    /// Grows the windows to the topic's partition count.
    pub fn ensure_partitions(&mut self, count: usize, earliest: impl Fn(usize) -> u64) {
        while self.partitions.len() < count {
            let start = earliest(self.partitions.len());
            self.partitions.push(SharePartition::new(start));
        }
    }

    /// Ends every lease that ran out by `now_ms`. Returns how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let mut n = 0;
        while let Some(Reverse((until, p, o))) = self.expiries.peek().copied() {
            if until > now_ms {
                break;
            }
            self.expiries.pop();
            if let Some(sp) = self.partitions.get_mut(p as usize) {
                if sp.expire(o, until, now_ms, &self.config) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Remembers when the lease of `offset` ends. Entries of leases settled early stay in
    /// the heap until their time (checked lazily), so the heap is rebuilt from the
    /// leased slots whenever it grows past twice the records in the windows: its size
    /// stays bounded by the windows, whatever the delivery rate.
    pub fn lease_deadline(&mut self, until_ms: i64, partition: u32, offset: u64) {
        self.expiries.push(Reverse((until_ms, partition, offset)));
        let tracked: usize = self.partitions.iter().map(|p| p.slots.len()).sum();
        if self.expiries.len() > 2 * tracked + 1024 {
            self.expiries = self
                .partitions
                .iter()
                .enumerate()
                .flat_map(|(i, p)| {
                    p.slots
                        .iter()
                        .enumerate()
                        .filter_map(move |(k, s)| match s.state {
                            SlotState::Leased { until_ms, .. } => {
                                Some(Reverse((until_ms, i as u32, p.start + k as u64)))
                            }
                            _ => None,
                        })
                })
                .collect();
        }
    }

    /// Forgets members that have not polled for a long time and can hold no lease (a
    /// lease never outlives the poll that took it by more than the visibility timeout).
    pub fn prune_members(&mut self, now: std::time::Instant) {
        let idle = std::time::Duration::from_millis(u64::from(self.config.visibility_timeout_ms))
            + MEMBER_IDLE;
        self.members
            .retain(|_, m| now.saturating_duration_since(m.last_seen) <= idle);
    }

    /// When the group next has a lease to end or a waiting record to offer.
    pub fn next_wake_ms(&self) -> Option<i64> {
        let lease = self.expiries.peek().map(|Reverse((u, _, _))| *u);
        let waiting = self
            .partitions
            .iter()
            .filter_map(SharePartition::next_available_ms)
            .min();
        lease.into_iter().chain(waiting).min()
    }

    /// A member leaves: its leases are given back.
    pub fn leave(&mut self, id: &str, now_ms: i64) -> Result<(), ProtocolError> {
        let m = self.members.remove(id).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::UnknownMember,
                format!("member {id} is not in the group"),
            )
        })?;
        for p in &mut self.partitions {
            p.release_member(m.index, now_ms);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QueueConfig {
        QueueConfig::from_settings(
            "t",
            &QueueSettings {
                visibility_timeout_ms: 1000,
                max_deliveries: 3,
                per_key_ordering: false,
                max_in_flight: 100,
                dead_letter_topic: "",
                backoff_ms: vec![10, 100],
            },
        )
        .unwrap()
    }

    fn window(n: usize) -> SharePartition {
        let mut p = SharePartition::new(0);
        for i in 0..n {
            p.admit(Some(i as u64 % 2));
        }
        p
    }

    #[test]
    fn acks_advance_the_start_and_only_the_holder_settles() {
        let c = config();
        let mut p = window(4);
        assert_eq!(p.deliverable(0, false, 10), vec![0, 1, 2, 3]);
        for o in 0..4 {
            assert_eq!(p.lease(o, 7, 1000), 1);
        }
        assert_eq!(
            p.settle(1, 8, Settle::Ack, "", 0, &c),
            Err(ErrorCode::NotLeased)
        );
        assert_eq!(p.settle(1, 7, Settle::Ack, "", 0, &c), Ok(Settled::Done));
        assert_eq!(
            p.settle(1, 7, Settle::Ack, "", 0, &c),
            Err(ErrorCode::NotLeased),
            "already settled"
        );
        assert_eq!(p.start, 0, "0 is still leased");
        p.settle(0, 7, Settle::Ack, "", 0, &c).unwrap();
        assert_eq!(p.start, 2);
        assert_eq!(
            p.settle(3, 7, Settle::Ack, "", 1000, &c),
            Err(ErrorCode::NotLeased),
            "lease ran out"
        );
    }

    #[test]
    fn nacks_back_off_and_dead_letter_after_max_deliveries() {
        let c = config();
        let mut p = window(1);
        for attempt in 1..=3u32 {
            let now = i64::from(attempt) * 10_000;
            assert_eq!(p.deliverable(now, false, 10), vec![0], "attempt {attempt}");
            assert_eq!(p.lease(0, 1, now + 1000), attempt);
            let outcome = p
                .settle(0, 1, Settle::Nack { delay_ms: 0 }, "boom", now, &c)
                .unwrap();
            if attempt < 3 {
                assert_eq!(outcome, Settled::Done);
                let wait = c.backoff(attempt);
                assert!(
                    p.deliverable(now + wait - 1, false, 10).is_empty(),
                    "not before its backoff"
                );
            } else {
                assert_eq!(outcome, Settled::DeadLetter);
            }
        }
        assert_eq!(p.pending_dead_letters(), vec![0]);
        assert_eq!(p.reasons[&0], "nacked: boom");
        p.dead_lettered(&[0]);
        assert_eq!((p.start, p.dead_lettered), (1, 1));
    }

    #[test]
    fn deferred_records_wait_for_their_time_and_never_dead_letter() {
        let c = config();
        let mut p = window(1);
        for round in 0..10 {
            let now = round * 100;
            assert_eq!(p.deliverable(now, false, 1), vec![0]);
            p.lease(0, 1, now + 1000);
            p.settle(
                0,
                1,
                Settle::Defer {
                    until_ms: now + 100,
                },
                "",
                now,
                &c,
            )
            .unwrap();
            assert!(p.deliverable(now + 99, false, 1).is_empty());
        }
        assert!(p.pending_dead_letters().is_empty());
    }

    #[test]
    fn per_key_ordering_holds_later_records_of_a_key() {
        let mut p = window(4); // keys 0,1,0,1
        assert_eq!(p.deliverable(0, true, 10), vec![0, 1]);
        p.lease(0, 1, 1000);
        p.lease(1, 1, 1000);
        assert!(p.deliverable(0, true, 10).is_empty());
        p.settle(0, 1, Settle::Ack, "", 0, &config()).unwrap();
        assert_eq!(
            p.deliverable(0, true, 10),
            vec![2],
            "key 1 still waits for offset 1"
        );
    }

    #[test]
    fn the_lease_heap_stays_bounded_by_the_windows() {
        let mut g = QueueGroup::new("t", config());
        g.partitions.push(window(10));
        for round in 0..10_000i64 {
            let o = (round % 10) as u64;
            g.partitions[0].lease(o, 1, round + 1000);
            g.lease_deadline(round + 1000, 0, o);
            g.partitions[0]
                .settle(o, 1, Settle::Release, "", round, &config())
                .unwrap();
        }
        assert!(
            g.expiries.len() <= 2 * 10 + 1024 + 1,
            "{}",
            g.expiries.len()
        );
    }

    #[test]
    fn expiry_is_a_failed_delivery() {
        let c = config();
        let mut g = QueueGroup::new("t", c.clone());
        g.partitions.push(window(1));
        let until = 500;
        g.partitions[0].lease(0, 1, until);
        g.expiries.push(Reverse((until, 0, 0)));
        assert_eq!(g.expire(499), 0);
        assert_eq!(g.expire(500), 1);
        assert!(g.partitions[0]
            .deliverable(500 + c.backoff(1) - 1, false, 1)
            .is_empty());
        assert_eq!(
            g.partitions[0].deliverable(500 + c.backoff(1), false, 1),
            vec![0]
        );
    }

    #[test]
    fn snapshots_round_trip_with_leases_as_waiting() {
        let c = config();
        let mut p = window(6);
        for o in 0..6 {
            p.lease(o, 1, 1000);
        }
        p.settle(2, 1, Settle::Ack, "", 0, &c).unwrap();
        p.settle(3, 1, Settle::Nack { delay_ms: 50 }, "", 0, &c)
            .unwrap();
        p.settle(0, 1, Settle::Ack, "", 0, &c).unwrap();
        let back = SharePartition::decode(&p.encode()).unwrap();
        assert_eq!(back.start, 1);
        let states: Vec<(SlotState, u32, i64)> = back
            .slots
            .iter()
            .map(|s| (s.state, s.deliveries, s.available_at_ms))
            .collect();
        assert_eq!(
            states,
            vec![
                (SlotState::Waiting, 1, 0),
                (SlotState::Settled, 1, 0),
                (SlotState::Waiting, 1, 50),
                (SlotState::Waiting, 1, 0),
                (SlotState::Waiting, 1, 0),
            ]
        );
        assert!(SharePartition::decode(&[2]).is_none());
        let bytes = p.encode();
        for cut in 0..bytes.len() {
            assert!(SharePartition::decode(&bytes[..cut]).is_none());
        }
    }
}
