//! Stream-group membership: a [`GroupConsumer`] joins a group, is given partitions by the
//! server, consumes them from the group's committed offsets, and commits its progress.
//!
//! A background thread heartbeats (at the interval the server asks for, at once when the
//! server pushes a notice or a revocation completes). Everything that touches the
//! records happens in [`GroupConsumer::poll`], on the caller's thread:
//! - partitions the server took away are *revoked* there: the rebalance listener hears of
//!   them, their positions are committed (so the next owner continues exactly there), their
//!   subscriptions end, and only then is the server told they are released. Records
//!   returned by earlier polls count as processed — Kafka's at-least-once contract: process
//!   what `poll` returned before calling it again.
//! - partitions the server granted are *assigned* there: subscribed from the committed
//!   offset (or `GroupConfig::start` when there is none, or it fell out of retention).
//! - if the session was lost (the member was too slow to heartbeat, or the server
//!   restarted), every partition is *lost* — no commit is possible — and the consumer joins
//!   again; if the connection itself dropped, `poll` connects again to the same address
//!   first (up to 10 s of attempts). A connection closed on purpose (`Client::close`) is
//!   not reopened.
//!
//! The server grants a partition only after its previous holder released it, so two
//! members never consume one partition at once; a member that vanishes without leaving
//! loses its partitions after its session timeout, and its successor resumes from the last
//! commit (records after it are delivered again: the at-least-once window).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tidelog_protocol::group::{CommitEntry, GroupRequest, GroupResponse, NO_OFFSET};
use tidelog_protocol::response::decode_data;
use tidelog_protocol::{ErrorCode, ProtocolError, Request, Response, StartAt};

use crate::connection::{Client, Frame, PendingReply};
use crate::error::{ClientError, Result};
use crate::extract::{RECONNECT_ATTEMPTS, RECONNECT_PAUSE};
use crate::records::{decode_batches, ConsumedRecord};

/// How a member behaves.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The member is removed if the server hears nothing for this long; it must also
    /// release a revoked partition within it (so call `poll` more often than this).
    pub session_timeout: Duration,
    /// Where to start a partition the group has no usable committed offset for.
    pub start: StartAt,
    /// Credit window of each partition's subscription.
    pub window_bytes: u32,
    /// Commit positions in `poll` at most this often (None: only explicit commits, plus
    /// the commit of revoked partitions).
    pub auto_commit_interval: Option<Duration>,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout: Duration::from_secs(10),
            start: StartAt::Earliest,
            window_bytes: 4 << 20,
            auto_commit_interval: None,
        }
    }
}

/// A change of the member's partitions, as the rebalance listener hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebalance<'a> {
    /// Now consumed by this member (subscriptions started).
    Assigned(&'a [u32]),
    /// About to be handed to another member: commit anything of your own now. The
    /// consumer commits its positions right after this returns.
    Revoked(&'a [u32]),
    /// Taken away without a chance to commit (the session was lost).
    Lost(&'a [u32]),
}

type Listener = Box<dyn FnMut(Rebalance<'_>) + Send>;

/// Membership state shared by the heartbeat thread and the consumer.
#[derive(Debug, Default)]
struct Membership {
    member_id: String,
    generation: u32,
    /// Reported to the server as held: assigned and not yet released.
    held: BTreeSet<u32>,
    /// The server's latest assignment.
    assigned: BTreeSet<u32>,
    /// Partitions lost with the session, for the consumer to drop.
    lost: Vec<u32>,
    /// Partitions of the assignment still held by other members.
    pending: u32,
    heartbeat_now: bool,
    /// Set by GROUP_NOTICE pushes.
    noticed: bool,
    stop: bool,
    error: Option<ClientError>,
    heartbeats: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Membership>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Inbound {
    Data(Frame),
    /// The membership changed: look at it.
    Membership,
}

/// One consumed partition.
#[derive(Debug)]
struct Stream {
    subscription: u32,
    /// Next offset to hand out.
    position: u64,
    /// Position last committed (or the start position).
    committed: u64,
    consumed_bytes: u64,
}

/// See the module documentation.
pub struct GroupConsumer {
    client: Client,
    group: String,
    topic: String,
    config: GroupConfig,
    shared: Arc<Shared>,
    heartbeat: Option<JoinHandle<()>>,
    notify_id: u32,
    inbound_tx: Sender<Inbound>,
    inbound: Receiver<Inbound>,
    streams: BTreeMap<u32, Stream>,
    by_subscription: HashMap<u32, u32>,
    buffered: VecDeque<ConsumedRecord>,
    listener: Option<Listener>,
    last_auto_commit: Instant,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.group)
            .field("topic", &self.topic)
            .field("partitions", &self.streams.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl GroupConsumer {
    /// Joins `group` consuming `topic`, and waits (up to the client's request timeout)
    /// for the server's first answer. Partitions arrive through `poll`.
    pub fn join(client: &Client, group: &str, topic: &str, config: GroupConfig) -> Result<Self> {
        let (inbound_tx, inbound) = mpsc::channel();
        let mut consumer = GroupConsumer {
            client: client.clone(),
            group: group.to_string(),
            topic: topic.to_string(),
            config,
            shared: Arc::new(Shared::default()),
            heartbeat: None,
            notify_id: 0,
            inbound_tx,
            inbound,
            streams: BTreeMap::new(),
            by_subscription: HashMap::new(),
            buffered: VecDeque::new(),
            listener: None,
            last_auto_commit: Instant::now(),
        };
        consumer.start_membership()?;
        Ok(consumer)
    }

    /// Joins on the current connection and starts the heartbeat thread. The first
    /// heartbeat (the join) runs here, so a bad group or topic fails at once.
    fn start_membership(&mut self) -> Result<()> {
        let session_timeout_ms = u32::try_from(self.config.session_timeout.as_millis())
            .map_err(|_| ClientError::InvalidArgument("session timeout too long".into()))?;
        let shared = Arc::new(Shared::default());
        let notify_id = {
            let (shared, tx) = (shared.clone(), self.inbound_tx.clone());
            self.client.register_push(move |_notice| {
                let mut m = shared.lock();
                m.noticed = true;
                shared.changed.notify_all();
                drop(m);
                let _ = tx.send(Inbound::Membership);
            })
        };
        let beat = Beat {
            client: self.client.clone(),
            group: self.group.clone(),
            topic: self.topic.clone(),
            session_timeout_ms,
            notify_id,
        };
        let interval = match beat.send(&shared) {
            Ok(interval) => interval,
            Err(e) => {
                self.client.forget_subscription(notify_id);
                return Err(e);
            }
        };
        let heartbeat = {
            let (shared, tx) = (shared.clone(), self.inbound_tx.clone());
            std::thread::Builder::new()
                .name(format!("tidelog-group-{}", self.group))
                .spawn(move || heartbeat_loop(&beat, &shared, &tx, interval))?
        };
        self.shared = shared;
        self.notify_id = notify_id;
        self.heartbeat = Some(heartbeat);
        Ok(())
    }

    /// After the connection dropped (a server restart, a network cut): every partition
    /// is lost (no commit is possible), the consumer connects again to the same address
    /// and joins as a new member; its partitions come back through `poll`, from the
    /// group's committed offsets.
    fn reconnect(&mut self) -> Result<()> {
        {
            let mut m = self.shared.lock();
            m.stop = true;
            self.shared.changed.notify_all();
        }
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        let lost: Vec<u32> = self.streams.keys().copied().collect();
        self.streams.clear();
        self.by_subscription.clear();
        self.buffered.clear();
        if !lost.is_empty() {
            self.tell(Rebalance::Lost(&lost));
        }
        let address = self.client.server().address;
        let options = self.client.options().clone();
        let mut last = ClientError::Disconnected;
        for _ in 0..RECONNECT_ATTEMPTS {
            match Client::connect(address, options.clone()) {
                Ok(c) => {
                    self.client = c;
                    match self.start_membership() {
                        Ok(()) => {
                            tracing::info!(group = self.group, "group member reconnected");
                            return Ok(());
                        }
                        Err(e) => last = e,
                    }
                }
                Err(e) => last = e,
            }
            std::thread::sleep(RECONNECT_PAUSE);
        }
        Err(last)
    }

    /// Called (on the `poll` thread) when partitions are assigned, revoked or lost.
    pub fn on_rebalance(&mut self, listener: impl FnMut(Rebalance<'_>) + Send + 'static) {
        self.listener = Some(Box::new(listener));
    }

    pub fn member_id(&self) -> String {
        self.shared.lock().member_id.clone()
    }

    pub fn generation(&self) -> u32 {
        self.shared.lock().generation
    }

    /// Partitions this member is consuming now.
    pub fn assignment(&self) -> Vec<u32> {
        self.streams.keys().copied().collect()
    }

    /// Whether every partition the server assigned is being consumed, none is waiting
    /// for another member to release it, and nothing revoked is still held.
    pub fn is_settled(&self) -> bool {
        let m = self.shared.lock();
        m.pending == 0
            && m.held == m.assigned
            && m.assigned.iter().eq(self.streams.keys())
            && m.lost.is_empty()
    }

    /// Heartbeats sent so far.
    pub fn heartbeats(&self) -> u64 {
        self.shared.lock().heartbeats
    }

    /// Offset of the next record `poll` will return for `partition`.
    pub fn position(&self, partition: u32) -> Option<u64> {
        self.streams.get(&partition).map(|s| s.position)
    }

    /// Records of the member's partitions, waiting up to `timeout` for some; applies
    /// rebalances first. Empty when nothing arrived in time.
    /// A dropped connection is repaired here: see [`GroupConsumer`]'s reconnect (every
    /// partition is reported lost, then comes back).
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumedRecord>> {
        match self.poll_once(timeout) {
            Err(ClientError::Disconnected | ClientError::Io(_)) if !self.client_alive() => {
                self.reconnect()?;
                Ok(Vec::new())
            }
            other => other,
        }
    }

    /// Still usable, or closed on purpose (no reconnect then).
    fn client_alive(&self) -> bool {
        !self.client.is_closed() || self.client.is_closed_here()
    }

    fn poll_once(&mut self, timeout: Duration) -> Result<Vec<ConsumedRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reconcile()?;
            self.maybe_auto_commit()?;
            if !self.buffered.is_empty() {
                let records: Vec<ConsumedRecord> = self.buffered.drain(..).collect();
                for r in &records {
                    if let Some(s) = self.streams.get_mut(&r.partition) {
                        s.position = r.offset + 1;
                    }
                }
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            match self.inbound.recv_timeout(deadline - now) {
                Ok(Inbound::Data(frame)) => self.accept(frame)?,
                Ok(Inbound::Membership) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(ClientError::Disconnected),
            }
        }
    }

    /// Commits the position of every consumed partition that moved, and waits for the
    /// server to have it durable.
    pub fn commit(&mut self) -> Result<()> {
        match self.commit_async()? {
            Some(pending) => pending.wait(),
            None => Ok(()),
        }
    }

    /// Sends the commit of every position that moved; wait on the result (or drop it).
    pub fn commit_async(&mut self) -> Result<Option<PendingCommit>> {
        let entries: Vec<(u32, u64)> = self
            .streams
            .iter()
            .filter(|(_, s)| s.position != s.committed)
            .map(|(p, s)| (*p, s.position))
            .collect();
        let pending = self.send_commit(&entries)?;
        for (p, offset) in &entries {
            if let Some(s) = self.streams.get_mut(p) {
                s.committed = *offset;
            }
        }
        Ok(pending)
    }

    /// Commits exactly these positions (partition, next offset to consume) — e.g. when
    /// only part of what `poll` returned was processed — and waits for them to be durable.
    pub fn commit_positions(&mut self, positions: &[(u32, u64)]) -> Result<()> {
        if let Some(pending) = self.send_commit(positions)? {
            pending.wait()?;
        }
        for (p, offset) in positions {
            if let Some(s) = self.streams.get_mut(p) {
                s.committed = *offset;
            }
        }
        Ok(())
    }

    /// Leaves the group (its partitions go to the others at once). Commit first.
    pub fn close(mut self) -> Result<()> {
        self.leave()
    }

    fn leave(&mut self) -> Result<()> {
        let member_id = {
            let mut m = self.shared.lock();
            m.stop = true;
            self.shared.changed.notify_all();
            std::mem::take(&mut m.member_id)
        };
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        self.client.forget_subscription(self.notify_id);
        for s in std::mem::take(&mut self.streams).into_values() {
            self.drop_subscription(s.subscription);
        }
        if member_id.is_empty() || self.client.is_closed() {
            return Ok(());
        }
        let frame = self.client.request(&Request::Group(GroupRequest::Leave {
            group: &self.group,
            member_id: &member_id,
        }))?;
        frame.response().map(|_| ())
    }

    fn send_commit(&self, entries: &[(u32, u64)]) -> Result<Option<PendingCommit>> {
        if entries.is_empty() {
            return Ok(None);
        }
        let (member_id, generation) = {
            let m = self.shared.lock();
            (m.member_id.clone(), m.generation)
        };
        let commits: Vec<CommitEntry<'_>> = entries
            .iter()
            .map(|&(partition, offset)| CommitEntry {
                partition,
                offset,
                metadata: "",
            })
            .collect();
        let reply = self
            .client
            .send(&Request::Group(GroupRequest::Commit {
                group: &self.group,
                member_id: &member_id,
                generation,
                commits,
            }))?
            .ok_or_else(|| ClientError::Protocol("GROUP_COMMIT has a response".into()))?;
        Ok(Some(PendingCommit { reply }))
    }

    fn maybe_auto_commit(&mut self) -> Result<()> {
        if let Some(interval) = self.config.auto_commit_interval {
            if self.last_auto_commit.elapsed() >= interval {
                self.last_auto_commit = Instant::now();
                // Not awaited: its result only matters if it fails, and the next commit
                // (or the revocation commit) covers the same positions.
                self.commit_async()?;
            }
        }
        Ok(())
    }

    /// Applies what the heartbeat thread learned: lost, revoked and assigned partitions.
    fn reconcile(&mut self) -> Result<()> {
        let (lost, revoked, added) = {
            let mut m = self.shared.lock();
            if let Some(e) = m.error.take() {
                return Err(e);
            }
            let lost = std::mem::take(&mut m.lost);
            let revoked: Vec<u32> = self
                .streams
                .keys()
                .filter(|p| !m.assigned.contains(p) && !lost.contains(p))
                .copied()
                .collect();
            let added: Vec<u32> = m
                .assigned
                .iter()
                .filter(|p| !self.streams.contains_key(p))
                .copied()
                .collect();
            (lost, revoked, added)
        };
        if !lost.is_empty() {
            let lost: Vec<u32> = lost
                .into_iter()
                .filter(|p| self.streams.contains_key(p))
                .collect();
            self.stop_partitions(&lost);
            self.tell(Rebalance::Lost(&lost));
        }
        if !revoked.is_empty() {
            self.tell(Rebalance::Revoked(&revoked));
            let entries: Vec<(u32, u64)> = revoked
                .iter()
                .filter_map(|p| self.streams.get(p))
                .zip(&revoked)
                .filter(|(s, _)| s.position != s.committed)
                .map(|(s, p)| (*p, s.position))
                .collect();
            // The next owner starts where this commit says; a refusal (the partition was
            // already taken, e.g. after a lost session) changes nothing for us.
            if let Some(pending) = self.send_commit(&entries)? {
                match pending.wait() {
                    Ok(()) | Err(ClientError::Server(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            self.stop_partitions(&revoked);
            let mut m = self.shared.lock();
            for p in &revoked {
                m.held.remove(p);
            }
            m.heartbeat_now = true;
            self.shared.changed.notify_all();
        }
        if !added.is_empty() {
            let committed = self.committed_offsets()?;
            for &p in &added {
                let start = match committed.get(&p) {
                    Some(&o) => StartAt::Offset(o),
                    None => self.config.start,
                };
                let stream = match self.subscribe(p, start) {
                    Err(ClientError::Server(e)) if e.code == ErrorCode::OffsetOutOfRange => {
                        self.subscribe(p, self.config.start)?
                    }
                    other => other?,
                };
                self.by_subscription.insert(stream.subscription, p);
                self.streams.insert(p, stream);
            }
            self.tell(Rebalance::Assigned(&added));
        }
        Ok(())
    }

    fn tell(&mut self, event: Rebalance<'_>) {
        if let Some(listener) = self.listener.as_mut() {
            listener(event);
        }
    }

    fn stop_partitions(&mut self, partitions: &[u32]) {
        for p in partitions {
            if let Some(s) = self.streams.remove(p) {
                self.by_subscription.remove(&s.subscription);
                self.drop_subscription(s.subscription);
            }
        }
        self.buffered.retain(|r| !partitions.contains(&r.partition));
    }

    fn drop_subscription(&self, id: u32) {
        self.client.forget_subscription(id);
        if !self.client.is_closed() {
            let _ = self.client.send(&Request::Unsubscribe { subscription: id });
        }
    }

    fn committed_offsets(&self) -> Result<HashMap<u32, u64>> {
        let offsets = self.client.group_offsets(&self.group)?;
        Ok(offsets
            .into_iter()
            .filter(|c| c.offset != NO_OFFSET)
            .map(|c| (c.partition, c.offset))
            .collect())
    }

    fn subscribe(&self, partition: u32, start: StartAt) -> Result<Stream> {
        let tx = self.inbound_tx.clone();
        let id = self.client.register_push(move |frame| {
            let _ = tx.send(Inbound::Data(frame));
        });
        let request = Request::Subscribe {
            subscription: id,
            topic: &self.topic,
            partition,
            start,
            credit_bytes: self.config.window_bytes,
            tenant: None,
            filter: Default::default(),
        };
        let started = self
            .client
            .request(&request)
            .and_then(|f| match f.response()? {
                Response::Subscribed { start_offset } => Ok(start_offset),
                other => Err(ClientError::Protocol(format!(
                    "unexpected SUBSCRIBE response {other:?}"
                ))),
            });
        match started {
            Ok(position) => Ok(Stream {
                subscription: id,
                position,
                committed: position,
                consumed_bytes: 0,
            }),
            Err(e) => {
                self.client.forget_subscription(id);
                Err(e)
            }
        }
    }

    /// A pushed frame for one of the partition subscriptions.
    fn accept(&mut self, frame: Frame) -> Result<()> {
        let id = frame.header.correlation as u32;
        let Some(&partition) = self.by_subscription.get(&id) else {
            return Ok(()); // a partition stopped since: its data is someone else's now
        };
        if let Some(e) = frame.error() {
            return Err(e);
        }
        let data = decode_data(frame.body()).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let Some(stream) = self.streams.get_mut(&partition) else {
            return Ok(());
        };
        let from = self
            .buffered
            .iter()
            .rev()
            .find(|r| r.partition == partition)
            .map_or(stream.position, |r| r.offset + 1);
        let mut records = Vec::new();
        decode_batches(partition, data.batches, from, &mut records)?;
        self.buffered.extend(records);
        stream.consumed_bytes += data.batches.len() as u64;
        if stream.consumed_bytes >= u64::from(self.config.window_bytes / 2) {
            let credit_bytes = u32::try_from(stream.consumed_bytes).unwrap_or(u32::MAX);
            self.client.send(&Request::GrantCredits {
                subscription: id,
                credit_bytes,
            })?;
            stream.consumed_bytes -= u64::from(credit_bytes);
        }
        Ok(())
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        if self.heartbeat.is_some() {
            let _ = self.leave();
        }
    }
}

/// A commit sent and not yet acknowledged.
#[derive(Debug)]
pub struct PendingCommit {
    reply: PendingReply,
}

impl PendingCommit {
    /// Waits for the commit to be durable. A partition the server refused (no longer
    /// held, stale generation) is an error naming it.
    pub fn wait(self) -> Result<()> {
        let frame = self.reply.wait()?;
        match frame.response()? {
            Response::Group(GroupResponse::Committed(results)) => {
                let refused: Vec<String> = results
                    .iter()
                    .filter(|(_, code)| *code != 0)
                    .map(|(p, code)| {
                        let code =
                            ErrorCode::from_u16(*code).map_or(code.to_string(), |c| c.to_string());
                        format!("partition {p}: {code}")
                    })
                    .collect();
                if refused.is_empty() {
                    return Ok(());
                }
                let code = results
                    .iter()
                    .find(|(_, c)| *c != 0)
                    .and_then(|(_, c)| ErrorCode::from_u16(*c))
                    .unwrap_or(ErrorCode::Internal);
                Err(ClientError::Server(ProtocolError::new(
                    code,
                    format!("commit refused for {}", refused.join(", ")),
                )))
            }
            other => Err(ClientError::Protocol(format!(
                "unexpected GROUP_COMMIT response {other:?}"
            ))),
        }
    }
}

/// What the heartbeat thread needs.
struct Beat {
    client: Client,
    group: String,
    topic: String,
    session_timeout_ms: u32,
    notify_id: u32,
}

impl Beat {
    /// One heartbeat; updates the shared membership. Returns the interval to the next.
    fn send(&self, shared: &Shared) -> Result<Duration> {
        let (member_id, generation, owned) = {
            let mut m = shared.lock();
            m.heartbeat_now = false;
            m.noticed = false;
            (
                m.member_id.clone(),
                m.generation,
                m.held.iter().copied().collect(),
            )
        };
        let result = self
            .client
            .request(&Request::Group(GroupRequest::Heartbeat {
                group: &self.group,
                topic: &self.topic,
                member_id: &member_id,
                generation,
                session_timeout_ms: self.session_timeout_ms,
                notify: self.notify_id,
                owned,
            }))
            .and_then(|frame| match frame.response()? {
                Response::Group(GroupResponse::Heartbeat(h)) => Ok((
                    h.member_id.to_string(),
                    h.generation,
                    Duration::from_millis(u64::from(h.heartbeat_interval_ms)),
                    h.assignment,
                    h.pending,
                )),
                other => Err(ClientError::Protocol(format!(
                    "unexpected GROUP_HEARTBEAT response {other:?}"
                ))),
            });
        let mut m = shared.lock();
        m.heartbeats += 1;
        match result {
            Ok((member_id, generation, interval, assignment, pending)) => {
                m.member_id = member_id;
                m.generation = generation;
                m.assigned = assignment.into_iter().collect();
                let assigned = m.assigned.clone();
                m.held.extend(assigned);
                m.pending = pending;
                shared.changed.notify_all();
                // While partitions are on their way, ask again soon (a notice usually
                // comes first).
                Ok(if pending > 0 {
                    interval.min(Duration::from_millis(50))
                } else {
                    interval
                })
            }
            Err(ClientError::Server(e)) if e.code == ErrorCode::UnknownMember => {
                // The session is gone: everything held is lost; join again at once.
                tracing::warn!(group = self.group, "group session lost; joining again");
                m.lost = std::mem::take(&mut m.held).into_iter().collect();
                m.assigned.clear();
                m.member_id.clear();
                m.generation = 0;
                m.heartbeat_now = true;
                shared.changed.notify_all();
                Ok(Duration::ZERO)
            }
            Err(e) => Err(e),
        }
    }
}

fn heartbeat_loop(beat: &Beat, shared: &Shared, tx: &Sender<Inbound>, first: Duration) {
    let mut next = Instant::now() + first;
    loop {
        {
            let mut m = shared.lock();
            loop {
                if m.stop {
                    return;
                }
                let now = Instant::now();
                if m.heartbeat_now || m.noticed || now >= next {
                    break;
                }
                m = shared
                    .changed
                    .wait_timeout(m, next - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        match beat.send(shared) {
            Ok(interval) => next = Instant::now() + interval,
            Err(ClientError::Timeout(_)) => next = Instant::now() + Duration::from_millis(100),
            Err(e) => {
                let mut m = shared.lock();
                if !m.stop {
                    m.error = Some(e);
                }
                drop(m);
                let _ = tx.send(Inbound::Membership);
                return;
            }
        }
        let _ = tx.send(Inbound::Membership);
    }
}

/// A committed offset of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    pub partition: u32,
    /// The next offset the group consumes.
    pub offset: u64,
    pub generation: u32,
    pub timestamp_ms: i64,
    pub metadata: String,
}

/// A group, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub name: String,
    pub kind: String,
    pub topic: String,
    pub members: u32,
    pub generation: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberInfo {
    pub member_id: String,
    pub client: String,
    pub generation: u32,
    pub owned: Vec<u32>,
    pub target: Vec<u32>,
    pub last_heartbeat_ms_ago: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartitionInfo {
    pub partition: u32,
    /// Member holding it (None: nobody).
    pub owner: Option<String>,
    pub committed: Option<u64>,
    pub next: u64,
    pub lag: u64,
    /// Queue groups: records leased now, unsettled records past the settled prefix, and
    /// records written to the dead-letter topic so far.
    pub leased: u64,
    pub in_flight: u64,
    pub dead_lettered: u64,
}

/// A group described: members, what they hold, committed offsets and lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    pub kind: String,
    pub topic: String,
    pub generation: u32,
    pub members: Vec<GroupMemberInfo>,
    pub partitions: Vec<GroupPartitionInfo>,
}

fn group_call<T>(
    client: &Client,
    request: GroupRequest<'_>,
    what: &str,
    pick: impl FnOnce(GroupResponse<'_>) -> Option<T>,
) -> Result<T> {
    let frame = client.request(&Request::Group(request))?;
    match frame.response()? {
        Response::Group(g) => {
            let text = format!("{g:?}");
            pick(g)
                .ok_or_else(|| ClientError::Protocol(format!("unexpected {what} response {text}")))
        }
        other => Err(ClientError::Protocol(format!(
            "unexpected {what} response {other:?}"
        ))),
    }
}

impl Client {
    /// The group's committed offsets on its topic.
    pub fn group_offsets(&self, group: &str) -> Result<Vec<GroupOffset>> {
        group_call(
            self,
            GroupRequest::Offsets { group },
            "GROUP_OFFSETS",
            |g| match g {
                GroupResponse::Offsets { offsets, .. } => Some(
                    offsets
                        .into_iter()
                        .map(|c| GroupOffset {
                            partition: c.partition,
                            offset: c.offset,
                            generation: c.generation,
                            timestamp_ms: c.timestamp_ms,
                            metadata: c.metadata.to_string(),
                        })
                        .collect(),
                ),
                _ => None,
            },
        )
    }

    /// Every group of the server.
    pub fn group_list(&self) -> Result<Vec<GroupListing>> {
        group_call(self, GroupRequest::List, "GROUP_LIST", |g| match g {
            GroupResponse::List(groups) => Some(
                groups
                    .into_iter()
                    .map(|g| GroupListing {
                        name: g.name.to_string(),
                        kind: kind_name(g.kind).to_string(),
                        topic: g.topic.to_string(),
                        members: g.members,
                        generation: g.generation,
                    })
                    .collect(),
            ),
            _ => None,
        })
    }

    /// A group's members, assignments, committed offsets and lag.
    pub fn group_describe(&self, group: &str) -> Result<GroupInfo> {
        group_call(
            self,
            GroupRequest::Describe { group },
            "GROUP_DESCRIBE",
            |g| match g {
                GroupResponse::Described(d) => Some(GroupInfo {
                    name: d.name.to_string(),
                    kind: kind_name(d.kind).to_string(),
                    topic: d.topic.to_string(),
                    generation: d.generation,
                    members: d
                        .members
                        .into_iter()
                        .map(|m| GroupMemberInfo {
                            member_id: m.member_id.to_string(),
                            client: m.client.to_string(),
                            generation: m.generation,
                            owned: m.owned,
                            target: m.target,
                            last_heartbeat_ms_ago: m.last_heartbeat_ms_ago,
                        })
                        .collect(),
                    partitions: d
                        .partitions
                        .into_iter()
                        .map(|p| GroupPartitionInfo {
                            partition: p.partition,
                            owner: (!p.owner.is_empty()).then(|| p.owner.to_string()),
                            committed: (p.committed != NO_OFFSET).then_some(p.committed),
                            next: p.next,
                            lag: p.lag,
                            leased: p.leased,
                            in_flight: p.in_flight,
                            dead_lettered: p.dead_lettered,
                        })
                        .collect(),
                }),
                _ => None,
            },
        )
    }
}

fn kind_name(kind: tidelog_protocol::group::GroupKind) -> &'static str {
    match kind {
        tidelog_protocol::group::GroupKind::Stream => "stream",
        tidelog_protocol::group::GroupKind::Queue => "queue",
    }
}
