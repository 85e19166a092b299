//! The ready loop: one OS thread owns the raft `RawNode`, its storage and the writes to the state
//! machine. It waits on one channel of [`Event`]s (peer messages, proposals, read requests,
//! membership changes, transport reports) with a timeout until the next tick, drains what queued
//! up, then handles one `Ready` in the order raft-rs requires: send the leader's messages, install
//! a snapshot, apply committed entries, persist entries and hard state (one raft-engine batch, one
//! fsync), send the persisted messages, advance, and handle the `LightReady` the same way.
//!
//! Invariants:
//! - Waiting callers are answered only from here, after what they wait for was applied (entries
//!   are applied only once durable on this node and committed on a majority).
//! - Every waiter is answered exactly once: applied, refused, failed with `LeadershipLost` when
//!   this node stops being leader (or its term changes; `QuorumLost` when it stepped down because
//!   a majority stopped answering), or failed when the loop ends (shutdown, storage failure, or
//!   a panic of the state machine): `StoppedInFlight` for proposals and membership changes raft
//!   already took (they may still commit under the next leader), `Stopped` for the rest.
//! - `members` and `conf_state` are exactly those at `applied`; snapshots carry them.
//! - Blocking I/O (fsync) happens on this thread only, never on the async runtime.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, Snapshot,
};
use ::raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use flotilla_proto::raft::v1 as pb;
use prost::Message as _;
use protobuf::Message as _;
use tokio::sync::{oneshot, watch};

use super::storage::{RaftStorage, WriteBatch};
use super::transport::Transport;
use super::{
    Bootstrap, Connector, LeaderState, Member, RaftConfig, RaftError, RaftStatus, StateMachine,
};

/// At most this many events are taken before handling a Ready, so a flood of incoming messages
/// cannot starve the log writes (it also bounds one batch of proposals).
const MAX_EVENTS_PER_READY: usize = 4096;

/// How long after the last proposal or read forwarded by a follower the leader keeps sending
/// each new commit index to the followers at once (raft's commit broadcast). Otherwise they
/// learn it with the next append or heartbeat (one tick), which halves the messages per write:
/// nobody waits on a follower's apply then, and its own writes and reads are forwarded ones.
const BCAST_COMMIT_WINDOW: Duration = Duration::from_secs(2);

pub(crate) type ProposeReply = oneshot::Sender<Result<(u64, Vec<u8>), RaftError>>;
pub(crate) type MembersReply = oneshot::Sender<Result<Vec<Member>, RaftError>>;
pub(crate) type ReadReply = oneshot::Sender<Result<u64, RaftError>>;

#[derive(Clone, Debug)]
pub(crate) enum MemberChange {
    /// A new manager: it enters as a learner (no vote, no part of any quorum), and is made a
    /// voter once it has caught up with the log as it was when it entered. A new manager that
    /// the leader cannot reach (a wrong advertised address) therefore never weakens the quorum.
    Add(Member),
    /// The second step of `Add`: a learner that caught up becomes a voter.
    Promote(Member),
    Remove(u64),
}

impl MemberChange {
    pub fn to_wire(&self) -> pb::change_membership_request::Change {
        match self {
            MemberChange::Add(m) | MemberChange::Promote(m) => {
                pb::change_membership_request::Change::Add(m.clone().into())
            }
            MemberChange::Remove(id) => pb::change_membership_request::Change::Remove(*id),
        }
    }
}

pub(crate) enum Event {
    /// A raft message from a peer.
    Raft(Box<Message>),
    /// A peer's advertised address, learnt from its stream (used until it is a known member).
    Learned {
        raft_id: u64,
        addr: String,
    },
    Propose {
        command: Vec<u8>,
        reply: ProposeReply,
        /// Forwarded by a follower, which waits until it applied the entry itself.
        forwarded: bool,
    },
    ReadIndex {
        reply: ReadReply,
        /// Forwarded by a follower, which waits until it applied the read index itself.
        forwarded: bool,
    },
    ChangeMembership {
        change: MemberChange,
        reply: MembersReply,
    },
    Unreachable(u64),
    SnapshotStatus {
        to: u64,
        ok: bool,
    },
    Shutdown,
}

/// What the loop publishes for the handles.
pub(crate) struct Published {
    pub status: Mutex<RaftStatus>,
    pub applied: watch::Sender<u64>,
    pub leadership: watch::Sender<LeaderState>,
    /// `None` while the loop runs; the reason once it stopped (empty for a shutdown).
    pub stopped: watch::Sender<Option<String>>,
    /// On a follower: the leader's reachable members as it last told them (raft id of that
    /// leader, when it answered, its view).
    pub leader_view: Mutex<Option<(u64, Instant, Vec<u64>)>>,
}

impl Published {
    pub fn new(raft_id: u64) -> Self {
        Published {
            status: Mutex::new(RaftStatus {
                raft_id,
                ..Default::default()
            }),
            applied: watch::Sender::new(0),
            leadership: watch::Sender::new(LeaderState::default()),
            stopped: watch::Sender::new(None),
            leader_view: Mutex::new(None),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock stops the loop; readers still get the last state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The unique id of a proposal, read or membership change: this start's nonce and a counter.
fn context(nonce: u64, id: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(16);
    c.extend_from_slice(&nonce.to_be_bytes());
    c.extend_from_slice(&id.to_be_bytes());
    c
}

fn own_id(nonce: u64, ctx: &[u8]) -> Option<u64> {
    if ctx.len() != 16 || ctx[..8] != nonce.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(ctx[8..].try_into().ok()?))
}

fn decode_conf_change(e: &Entry) -> Result<ConfChangeV2, protobuf::ProtobufError> {
    match e.get_entry_type() {
        EntryType::EntryConfChange => {
            // Never proposed by flotilla; converted as raft-rs does.
            let v1 = ConfChange::parse_from_bytes(&e.data)?;
            let mut single = ConfChangeSingle::default();
            single.set_change_type(v1.get_change_type());
            single.node_id = v1.node_id;
            let mut cc = ConfChangeV2::default();
            cc.mut_changes().push(single);
            cc.context = v1.context;
            Ok(cc)
        }
        _ => ConfChangeV2::parse_from_bytes(&e.data),
    }
}

/// The member an `AddNode` change carries in its context, or an address-less one.
fn member_of(cc: &ConfChangeV2, raft_id: u64) -> Member {
    match pb::Member::decode(&cc.context[..]) {
        Ok(m) if m.raft_id == raft_id => m.into(),
        _ => {
            tracing::warn!(raft_id, "membership change without a member context");
            Member {
                raft_id,
                addr: String::new(),
                node_id: String::new(),
            }
        }
    }
}

fn encode_snapshot_data(members: &BTreeMap<u64, Member>, state: Vec<u8>) -> Vec<u8> {
    pb::SnapshotData {
        members: members.values().cloned().map(Into::into).collect(),
        state,
    }
    .encode_to_vec()
}

struct LearnerWatch {
    target: u64,
    since: Instant,
    /// The answer to its queued promotion; a failed one is tried again.
    promoting: Option<oneshot::Receiver<Result<Vec<Member>, RaftError>>>,
    warned: bool,
}

pub(crate) struct ReadyLoop<S: StateMachine> {
    raw: RawNode<RaftStorage>,
    cfg: RaftConfig,
    id: u64,
    sm: Arc<Mutex<S>>,
    events: Receiver<Event>,
    published: Arc<Published>,
    transport: Transport,
    members: BTreeMap<u64, Member>,
    members_changed: bool,
    conf_state: ConfState,
    applied: u64,
    applied_term: u64,
    snapshot_index: u64,
    nonce: u64,
    next_id: u64,
    proposals: HashMap<u64, ProposeReply>,
    conf_waiters: HashMap<u64, MembersReply>,
    /// On the leader, the learners (new managers) it watches catch up: the log index to reach
    /// (the commit index when it first saw them), since when, whether their promotion is queued.
    learners: HashMap<u64, LearnerWatch>,
    queued_conf: VecDeque<(MemberChange, MembersReply)>,
    /// Membership answers of the entries being applied, sent once the result is published.
    member_answers: Vec<(MembersReply, Result<Vec<Member>, RaftError>)>,
    reads: HashMap<u64, ReadReply>,
    deferred_reads: Vec<ReadReply>,
    leader: LeaderState,
    last_heard: HashMap<u64, Instant>,
    reachable: usize,
    heard_ids: Vec<u64>,
    /// Until when the leader broadcasts each new commit index (see [`BCAST_COMMIT_WINDOW`]);
    /// `None` while it skips that broadcast.
    bcast_commit_until: Option<Instant>,
}

impl<S: StateMachine> ReadyLoop<S> {
    /// Opens the storage, initializes it as `bootstrap` asks, restores the state machine from the
    /// last snapshot and creates the raw node. Blocking.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        cfg: RaftConfig,
        bootstrap: Bootstrap,
        sm: Arc<Mutex<S>>,
        events: Receiver<Event>,
        events_tx: Sender<Event>,
        published: Arc<Published>,
        rt: tokio::runtime::Handle,
        connector: Arc<dyn Connector>,
    ) -> Result<Self, RaftError> {
        let id = cfg.raft_id;
        let mut storage = RaftStorage::open(&cfg.state_dir, id)?;
        let path = storage.path().to_path_buf();
        match (bootstrap, storage.is_initialized()) {
            (Bootstrap::Restart, false) | (Bootstrap::ForceNewCluster, false) => {
                return Err(RaftError::NoState { path });
            }
            (Bootstrap::NewCluster { node_id }, false) => {
                let me = Member {
                    raft_id: id,
                    addr: cfg.listen_addr.clone(),
                    node_id,
                };
                let members = BTreeMap::from([(id, me.clone())]);
                let state = lock(&sm).snapshot();
                let mut snap = Snapshot::default();
                snap.mut_metadata().index = 1;
                snap.mut_metadata().term = 1;
                snap.mut_metadata().mut_conf_state().voters = vec![id];
                snap.data = encode_snapshot_data(&members, state).into();
                let hs = ::raft::eraftpb::HardState {
                    term: 1,
                    commit: 1,
                    ..Default::default()
                };
                storage.commit(WriteBatch {
                    install: Some(snap),
                    hard_state: Some(hs),
                    members: Some(vec![me]),
                    ..Default::default()
                })?;
                tracing::info!(raft_id = id, path = %path.display(), "bootstrapped a new raft cluster");
            }
            (Bootstrap::Join, false) => {
                tracing::info!(
                    raft_id = id,
                    "joining: waiting for the leader to send the log"
                );
            }
            (Bootstrap::ForceNewCluster, true) => {
                force_new_cluster(&cfg, &mut storage, &sm)?;
            }
            (b, true) => {
                if !matches!(b, Bootstrap::Restart) {
                    tracing::warn!(raft_id = id, path = %path.display(),
                        "the state directory already holds a raft state: restarting from it");
                }
            }
        }

        // The state machine starts from the last snapshot; raft replays the rest.
        let snap = storage.snapshot_ref().clone();
        let meta = snap.get_metadata();
        let mut members = BTreeMap::new();
        if meta.index > 0 {
            let data = pb::SnapshotData::decode(&snap.data[..])
                .map_err(|e| RaftError::storage(&path, "decoding the snapshot", e))?;
            lock(&sm).restore(meta.index, &data.state).map_err(|e| {
                RaftError::storage(
                    &path,
                    format!("restoring the state machine from snapshot {}", meta.index),
                    e,
                )
            })?;
            members = data
                .members
                .into_iter()
                .map(|m| (m.raft_id, Member::from(m)))
                .collect();
        }
        let conf_state = meta.get_conf_state().clone();
        let (applied, applied_term) = (meta.index, meta.term);
        let dial: Vec<Member> = storage.members().to_vec();

        let config = ::raft::Config {
            id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            batch_append: true,
            // Until a follower forwards something (`note_forwarded`).
            skip_bcast_commit: true,
            max_uncommitted_size: 64 << 20,
            max_committed_size_per_ready: 16 << 20,
            ..Default::default()
        };
        config.validate()?;
        let logger = super::logger::logger(id);
        let mut raw = RawNode::new(&config, storage, &logger)?;
        if conf_state.voters == [id] {
            // Alone: no need to wait an election timeout.
            raw.campaign()?;
        }

        let mut transport = Transport::new(&cfg, rt, connector, events_tx);
        for m in members.values().chain(dial.iter()) {
            if transport.addr_of(m.raft_id).is_none() {
                transport.set_peer(m.raft_id, &m.addr);
            }
        }
        let snapshot_index = applied;
        let status_members = members.values().cloned().collect();
        {
            let mut st = lock(&published.status);
            st.members = status_members;
            st.learners.clone_from(&conf_state.learners);
            st.learners.sort_unstable();
            st.applied_index = applied;
            st.snapshot_index = snapshot_index;
            st.commit_index = raw.raft.raft_log.committed;
            st.term = raw.raft.term;
        }
        published.applied.send_replace(applied);
        Ok(ReadyLoop {
            raw,
            id,
            sm,
            events,
            published,
            transport,
            members,
            members_changed: false,
            conf_state,
            applied,
            applied_term,
            snapshot_index,
            nonce: rand::random(),
            next_id: 0,
            proposals: HashMap::new(),
            conf_waiters: HashMap::new(),
            learners: HashMap::new(),
            queued_conf: VecDeque::new(),
            member_answers: Vec::new(),
            reads: HashMap::new(),
            deferred_reads: Vec::new(),
            leader: LeaderState::default(),
            last_heard: HashMap::new(),
            heard_ids: vec![id],
            reachable: 1,
            bcast_commit_until: None,
            cfg,
        })
    }

    /// Runs until shutdown or a fatal error; then fails every waiter and publishes the stop.
    pub fn run(mut self) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_inner()));
        let reason = match result {
            Ok(Ok(())) => String::new(),
            Ok(Err(e)) => {
                tracing::error!(raft_id = self.id, error = %e, "raft node stopped");
                e.to_string()
            }
            Err(_) => {
                tracing::error!(
                    raft_id = self.id,
                    "raft node stopped: panic in the ready loop"
                );
                "panic in the ready loop".to_string()
            }
        };
        self.stop(reason);
    }

    fn run_inner(&mut self) -> Result<(), RaftError> {
        let tick = Duration::from_millis(self.cfg.tick_ms);
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = if self.raw.has_ready() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            match self.events.recv_timeout(wait) {
                Ok(ev) => {
                    if !self.handle(ev)? {
                        return Ok(());
                    }
                    for _ in 1..MAX_EVENTS_PER_READY {
                        match self.events.try_recv() {
                            Ok(ev) => {
                                if !self.handle(ev)? {
                                    return Ok(());
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick = now + tick;
                self.on_tick(now);
            }
            self.on_ready()?;
            self.after_ready()?;
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn not_leader(&self) -> RaftError {
        RaftError::NotLeader {
            raft_id: self.id,
            leader_id: self.raw.raft.leader_id,
        }
    }

    fn next_ctx(&mut self) -> (u64, Vec<u8>) {
        self.next_id += 1;
        (self.next_id, context(self.nonce, self.next_id))
    }

    /// Handles one event; `false` to stop.
    fn handle(&mut self, ev: Event) -> Result<bool, RaftError> {
        match ev {
            Event::Raft(msg) => {
                if msg.to != self.id {
                    tracing::warn!(
                        raft_id = self.id,
                        to = msg.to,
                        from = msg.from,
                        "dropping a raft message addressed to another manager"
                    );
                    return Ok(true);
                }
                self.last_heard.insert(msg.from, Instant::now());
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(raft_id = self.id, error = %e, "raft message not stepped");
                }
            }
            Event::Learned { raft_id, addr } => {
                if raft_id != self.id
                    && !self.members.contains_key(&raft_id)
                    && self.transport.addr_of(raft_id) != Some(addr.as_str())
                {
                    tracing::debug!(raft_id = self.id, peer = raft_id, %addr, "learnt a peer address");
                    self.transport.set_peer(raft_id, &addr);
                }
            }
            Event::Propose {
                command,
                reply,
                forwarded,
            } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return Ok(true);
                }
                if forwarded {
                    self.note_forwarded();
                }
                let (id, ctx) = self.next_ctx();
                match self.raw.propose(ctx, command) {
                    Ok(()) => {
                        self.proposals.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RaftError::Dropped(e.to_string())));
                    }
                }
            }
            Event::ReadIndex { reply, forwarded } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return Ok(true);
                }
                if forwarded {
                    self.note_forwarded();
                }
                if !self.raw.raft.commit_to_current_term() {
                    // raft-rs ignores reads until the leader committed in its term.
                    self.deferred_reads.push(reply);
                } else {
                    self.issue_read(reply);
                }
            }
            Event::ChangeMembership { change, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                } else {
                    self.queued_conf.push_back((change, reply));
                    self.propose_queued_conf();
                }
            }
            Event::Unreachable(peer) => self.raw.report_unreachable(peer),
            Event::SnapshotStatus { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Event::Shutdown => return Ok(false),
        }
        Ok(true)
    }

    /// A follower waits on its own apply of what the leader commits now: from now on (for
    /// [`BCAST_COMMIT_WINDOW`]) each new commit index goes to the followers at once, and the
    /// current one too when it was held back.
    fn note_forwarded(&mut self) {
        if self.bcast_commit_until.is_none() {
            self.raw.raft.skip_bcast_commit(false);
            self.raw.raft.bcast_append();
        }
        self.bcast_commit_until = Some(Instant::now() + BCAST_COMMIT_WINDOW);
    }

    fn issue_read(&mut self, reply: ReadReply) {
        let (id, ctx) = self.next_ctx();
        self.reads.insert(id, reply);
        self.raw.read_index(ctx);
    }

    fn resolve_reads(&mut self, states: Vec<ReadState>) {
        for rs in states {
            if let Some(id) = own_id(self.nonce, &rs.request_ctx) {
                if let Some(reply) = self.reads.remove(&id) {
                    let _ = reply.send(Ok(rs.index));
                }
            }
        }
    }

    /// Validates a membership change against the members at the applied index.
    fn check_change(&self, change: &MemberChange) -> Result<Option<Vec<Member>>, RaftError> {
        match change {
            MemberChange::Add(m) => {
                if m.raft_id == 0 {
                    return Err(RaftError::Membership("raft id must not be 0".into()));
                }
                if m.addr.is_empty() {
                    return Err(RaftError::Membership(format!(
                        "manager {} has no address",
                        m.raft_id
                    )));
                }
                if let Some(cur) = self.members.get(&m.raft_id) {
                    if cur == m {
                        // Already there: adding again is a no-op.
                        return Ok(Some(self.members.values().cloned().collect()));
                    }
                    return Err(RaftError::Membership(format!(
                        "raft id {} is already a member (at {}, node {}); remove it first",
                        cur.raft_id, cur.addr, cur.node_id
                    )));
                }
                if let Some(other) = self.members.values().find(|o| o.addr == m.addr) {
                    return Err(RaftError::Membership(format!(
                        "address {} is already used by member {}",
                        m.addr, other.raft_id
                    )));
                }
            }
            MemberChange::Promote(m) => {
                if self.conf_state.voters.contains(&m.raft_id) {
                    return Ok(Some(self.members.values().cloned().collect()));
                }
                if !self.conf_state.learners.contains(&m.raft_id) {
                    return Err(RaftError::Membership(format!(
                        "raft id {} is no learner any more",
                        m.raft_id
                    )));
                }
            }
            MemberChange::Remove(id) => {
                if !self.conf_state.voters.contains(id)
                    && !self.conf_state.learners.contains(id)
                    && !self.members.contains_key(id)
                {
                    return Err(RaftError::Membership(format!(
                        "raft id {id} is not a member"
                    )));
                }
                if self.conf_state.voters == [*id] {
                    return Err(RaftError::Membership(format!(
                        "raft id {id} is the only manager: it cannot be removed"
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Proposes the next queued membership change once none is pending (raft allows one at a
    /// time).
    fn propose_queued_conf(&mut self) {
        while self.is_leader() && !self.raw.raft.has_pending_conf() {
            let Some((change, reply)) = self.queued_conf.pop_front() else {
                return;
            };
            match self.check_change(&change) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
                Ok(Some(members)) => {
                    let _ = reply.send(Ok(members));
                    continue;
                }
                Ok(None) => {}
            }
            let mut single = ConfChangeSingle::default();
            let mut cc = ConfChangeV2::default();
            match &change {
                MemberChange::Add(m) => {
                    single.set_change_type(ConfChangeType::AddLearnerNode);
                    single.node_id = m.raft_id;
                    cc.context = pb::Member::from(m.clone()).encode_to_vec().into();
                }
                MemberChange::Promote(m) => {
                    single.set_change_type(ConfChangeType::AddNode);
                    single.node_id = m.raft_id;
                    cc.context = pb::Member::from(m.clone()).encode_to_vec().into();
                }
                MemberChange::Remove(id) => {
                    single.set_change_type(ConfChangeType::RemoveNode);
                    single.node_id = *id;
                }
            }
            cc.mut_changes().push(single);
            let (id, ctx) = self.next_ctx();
            match self.raw.propose_conf_change(ctx, cc) {
                Ok(()) => {
                    self.conf_waiters.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(RaftError::Dropped(e.to_string())));
                }
            }
        }
    }

    /// Learners that caught up with the log (as it was when this leader first saw them) become
    /// voters. One that does not is left a learner — it counts in no quorum — and said so.
    fn promote_learners(&mut self) {
        let committed = self.raw.raft.raft_log.committed;
        let learners = self.conf_state.learners.clone();
        self.learners.retain(|id, _| learners.contains(id));
        for id in learners {
            let w = self.learners.entry(id).or_insert(LearnerWatch {
                target: committed,
                since: Instant::now(),
                promoting: None,
                warned: false,
            });
            if let Some(rx) = w.promoting.as_mut() {
                match rx.try_recv() {
                    // Still queued, or done (the learner leaves the configuration).
                    Err(oneshot::error::TryRecvError::Empty) | Ok(Ok(_)) => continue,
                    Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => w.promoting = None,
                }
            }
            let (matched, active) = self
                .raw
                .raft
                .prs()
                .get(id)
                .map_or((0, false), |p| (p.matched, p.recent_active));
            // Caught up and heard from lately: a learner that died after catching up must not
            // become a voter the quorum then waits for.
            if matched >= w.target && active {
                let (tx, rx) = oneshot::channel();
                w.promoting = Some(rx);
                let m = self.members.get(&id).cloned().unwrap_or(Member {
                    raft_id: id,
                    addr: String::new(),
                    node_id: String::new(),
                });
                tracing::info!(
                    raft_id = self.id,
                    member = id,
                    matched,
                    "new manager caught up: making it a voter"
                );
                self.queued_conf.push_back((MemberChange::Promote(m), tx));
            } else if !w.warned && w.since.elapsed() > self.cfg.request_timeout {
                w.warned = true;
                let addr = self
                    .members
                    .get(&id)
                    .map(|m| m.addr.clone())
                    .unwrap_or_default();
                tracing::warn!(raft_id = self.id, member = id, %addr, matched, target = w.target,
                    "a new manager has not caught up with the log: it stays a learner (no vote) until it does; check that the managers can reach its address (--advertise)");
            }
        }
    }

    fn on_tick(&mut self, now: Instant) {
        if self.bcast_commit_until.is_some_and(|t| now >= t) {
            self.raw.raft.skip_bcast_commit(true);
            self.bcast_commit_until = None;
        }
        let window = self.cfg.election_timeout() * 2;
        self.last_heard
            .retain(|_, t| now.duration_since(*t) < window);
        let voters = &self.conf_state.voters;
        let mut heard: Vec<u64> = voters
            .iter()
            .copied()
            .filter(|v| *v == self.id || self.last_heard.contains_key(v))
            .collect();
        heard.sort_unstable();
        self.reachable = heard.len();
        self.heard_ids = heard;
    }

    fn on_ready(&mut self) -> Result<(), RaftError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        // A leader sends before persisting (raft thesis 10.2.1); followers' messages wait.
        self.transport.send(rd.take_messages());

        let mut batch = WriteBatch::default();
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.restore(&snap)?;
            batch.install = Some(snap);
        }
        let reads = rd.take_read_states();
        self.resolve_reads(reads);
        self.apply(rd.take_committed_entries())?;

        batch.entries = rd.take_entries();
        batch.hard_state = rd.hs().cloned();
        self.raw.mut_store().commit(batch)?;
        self.transport.send(rd.take_persisted_messages());

        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        Ok(())
    }

    /// Installs a snapshot received from the leader into the state machine.
    fn restore(&mut self, snap: &Snapshot) -> Result<(), RaftError> {
        let meta = snap.get_metadata();
        let path = self.raw.store().path().to_path_buf();
        let data = pb::SnapshotData::decode(&snap.data[..]).map_err(|e| {
            RaftError::storage(&path, format!("decoding snapshot {}", meta.index), e)
        })?;
        lock(&self.sm)
            .restore(meta.index, &data.state)
            .map_err(|e| {
                RaftError::storage(
                    &path,
                    format!("restoring the state machine from snapshot {}", meta.index),
                    e,
                )
            })?;
        self.members = data
            .members
            .into_iter()
            .map(|m| (m.raft_id, Member::from(m)))
            .collect();
        for id in self.transport.peer_ids() {
            if !self.members.contains_key(&id) {
                self.transport.remove_peer(id);
            }
        }
        for m in self.members.values() {
            self.transport.set_peer(m.raft_id, &m.addr);
        }
        self.members_changed = true;
        self.conf_state = meta.get_conf_state().clone();
        self.applied = meta.index;
        self.applied_term = meta.term;
        self.snapshot_index = meta.index;
        tracing::info!(
            raft_id = self.id,
            index = meta.index,
            term = meta.term,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        if entries.is_empty() {
            return Ok(());
        }
        let sm = Arc::clone(&self.sm);
        let mut sm = lock(&sm);
        let mut answers = Vec::new();
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    // Empty entries are the ones a new leader appends.
                    if !e.data.is_empty() {
                        let result = sm.apply(e.index, &e.data);
                        if let Some(reply) =
                            own_id(self.nonce, &e.context).and_then(|id| self.proposals.remove(&id))
                        {
                            answers.push((
                                reply,
                                result.map(|r| (e.index, r)).map_err(RaftError::Refused),
                            ));
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&e)?;
                }
            }
            self.applied = e.index;
            self.applied_term = e.term;
        }
        drop(sm);
        // Callers see the applied index published before they get their answer.
        self.publish();
        for (reply, answer) in answers {
            let _ = reply.send(answer);
        }
        for (reply, answer) in self.member_answers.drain(..) {
            let _ = reply.send(answer);
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), RaftError> {
        let cc = decode_conf_change(e).map_err(|err| {
            RaftError::storage(
                self.raw.store().path(),
                format!("decoding the membership change at {}", e.index),
                err,
            )
        })?;
        let reply = own_id(self.nonce, &e.context).and_then(|id| self.conf_waiters.remove(&id));
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                self.conf_state = cs;
                for ch in cc.get_changes() {
                    match ch.get_change_type() {
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                            let m = member_of(&cc, ch.node_id);
                            tracing::info!(raft_id = self.id, member = m.raft_id, addr = %m.addr,
                                node_id = %m.node_id, index = e.index, "raft member added");
                            self.transport.set_peer(m.raft_id, &m.addr);
                            self.members.insert(m.raft_id, m);
                        }
                        ConfChangeType::RemoveNode => {
                            tracing::info!(
                                raft_id = self.id,
                                member = ch.node_id,
                                index = e.index,
                                "raft member removed"
                            );
                            self.members.remove(&ch.node_id);
                            self.transport.remove_peer(ch.node_id);
                            if ch.node_id == self.id {
                                tracing::warn!(
                                    raft_id = self.id,
                                    "this manager was removed from the raft cluster"
                                );
                            }
                        }
                    }
                }
                self.members_changed = true;
                if let Some(reply) = reply {
                    let members = self.members.values().cloned().collect();
                    self.member_answers.push((reply, Ok(members)));
                }
            }
            Err(err) => {
                tracing::warn!(raft_id = self.id, error = %err, index = e.index,
                    "membership change rejected");
                if let Some(reply) = reply {
                    self.member_answers
                        .push((reply, Err(RaftError::Membership(err.to_string()))));
                }
            }
        }
        Ok(())
    }

    fn after_ready(&mut self) -> Result<(), RaftError> {
        self.check_leadership();
        if self.is_leader() {
            if !self.deferred_reads.is_empty() && self.raw.raft.commit_to_current_term() {
                for reply in std::mem::take(&mut self.deferred_reads) {
                    self.issue_read(reply);
                }
            }
            self.promote_learners();
            self.propose_queued_conf();
            if !self.conf_state.voters.contains(&self.id) && self.raw.raft.lead_transferee.is_none()
            {
                // Removed while leading: hand over to the most up-to-date voter.
                let target = self
                    .raw
                    .raft
                    .prs()
                    .iter()
                    .filter(|(id, _)| **id != self.id && self.conf_state.voters.contains(id))
                    .max_by_key(|(_, p)| p.matched)
                    .map(|(id, _)| *id);
                if let Some(target) = target {
                    tracing::info!(
                        raft_id = self.id,
                        to = target,
                        "removed from the cluster while leader: transferring leadership"
                    );
                    self.raw.transfer_leader(target);
                }
            }
        }
        self.maybe_snapshot()?;
        self.publish();
        if self.members_changed {
            self.members_changed = false;
            let members: Vec<Member> = self.members.values().cloned().collect();
            self.raw.mut_store().commit(WriteBatch {
                members: Some(members),
                ..Default::default()
            })?;
        }
        Ok(())
    }

    fn check_leadership(&mut self) {
        let now = LeaderState {
            leader_id: self.raw.raft.leader_id,
            term: self.raw.raft.term,
            is_leader: self.is_leader(),
        };
        if now == self.leader {
            return;
        }
        let prev = self.leader;
        if prev.is_leader && now.term == prev.term && !now.is_leader && now.leader_id == 0 {
            // Stepped down in the same term with no successor: check_quorum found that a majority
            // no longer answers. Said so, for the user who sees this error.
            // check_quorum looks back one election timeout: count who answered within it.
            let now = Instant::now();
            let recent = self.cfg.election_timeout();
            let voters = &self.conf_state.voters;
            let reachable = voters
                .iter()
                .filter(|v| {
                    **v == self.id
                        || self
                            .last_heard
                            .get(v)
                            .is_some_and(|t| now.duration_since(*t) < recent)
                })
                .count();
            let members = voters.len();
            self.fail_waiters(|| RaftError::QuorumLost {
                raft_id: prev.leader_id,
                term: prev.term,
                reachable,
                members,
            });
        } else if prev.is_leader && (!now.is_leader || now.term != prev.term) {
            self.fail_waiters(|| RaftError::LeadershipLost {
                raft_id: prev.leader_id,
                term: prev.term,
            });
        }
        if now.leader_id != prev.leader_id || now.is_leader != prev.is_leader {
            tracing::info!(
                raft_id = self.id,
                leader = now.leader_id,
                term = now.term,
                is_leader = now.is_leader,
                "raft leadership changed"
            );
        }
        if now.is_leader && !prev.is_leader {
            // Followers may wait on writes the previous leader left them to apply: this
            // leader's first commit goes to them at once.
            self.bcast_commit_until = None;
            self.note_forwarded();
        } else if !now.is_leader && self.bcast_commit_until.take().is_some() {
            self.raw.raft.skip_bcast_commit(true);
        }
        self.leader = now;
        self.published.leadership.send_replace(now);
    }

    fn fail_waiters(&mut self, err: impl Fn() -> RaftError) {
        for (_, r) in self.proposals.drain() {
            let _ = r.send(Err(err()));
        }
        for (_, r) in self.conf_waiters.drain() {
            let _ = r.send(Err(err()));
        }
        self.learners.clear();
        for (_, r) in self.queued_conf.drain(..) {
            let _ = r.send(Err(err()));
        }
        for (_, r) in self.reads.drain() {
            let _ = r.send(Err(err()));
        }
        for r in self.deferred_reads.drain(..) {
            let _ = r.send(Err(err()));
        }
    }

    /// Takes a snapshot every `snapshot_interval` applied entries, or when raft asked for one it
    /// could not send, and compacts the log behind it.
    fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        let wanted = self.raw.store().take_snapshot_wanted();
        let due = self.applied >= self.snapshot_index + self.cfg.snapshot_interval;
        if self.applied <= self.snapshot_index || !(wanted || due) {
            return Ok(());
        }
        let state = lock(&self.sm).snapshot();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = self.applied;
        snap.mut_metadata().term = self.applied_term;
        snap.mut_metadata().set_conf_state(self.conf_state.clone());
        snap.data = encode_snapshot_data(&self.members, state).into();
        let compact = self
            .applied
            .saturating_sub(self.cfg.snapshot_catchup_entries);
        let size = snap.data.len();
        self.raw.mut_store().commit(WriteBatch {
            snapshot: Some((snap, compact)),
            ..Default::default()
        })?;
        self.snapshot_index = self.applied;
        tracing::info!(
            raft_id = self.id,
            index = self.applied,
            bytes = size,
            compacted_to = compact,
            "took a raft snapshot"
        );
        Ok(())
    }

    fn publish(&mut self) {
        let commit = self.raw.raft.raft_log.committed;
        {
            let mut st = lock(&self.published.status);
            st.leader_id = self.leader.leader_id;
            st.term = self.leader.term;
            st.is_leader = self.leader.is_leader;
            st.commit_index = commit;
            st.applied_index = self.applied;
            st.snapshot_index = self.snapshot_index;
            st.reachable = self.reachable;
            if st.reachable_ids != self.heard_ids {
                st.reachable_ids.clone_from(&self.heard_ids);
            }
            if self.members_changed {
                st.members = self.members.values().cloned().collect();
                st.learners.clone_from(&self.conf_state.learners);
                st.learners.sort_unstable();
            }
        }
        let applied = self.applied;
        self.published.applied.send_if_modified(|a| {
            if *a != applied {
                *a = applied;
                true
            } else {
                false
            }
        });
    }

    fn stop(&mut self, reason: String) {
        // Proposals and membership changes raft already took may be replicated and commit under
        // the next leader: their callers (a follower that forwarded one among them) must not
        // send them again. What raft never saw can be retried elsewhere.
        for (_, r) in self.proposals.drain() {
            let _ = r.send(Err(RaftError::StoppedInFlight {
                reason: reason.clone(),
            }));
        }
        for (_, r) in self.conf_waiters.drain() {
            let _ = r.send(Err(RaftError::StoppedInFlight {
                reason: reason.clone(),
            }));
        }
        let r = reason.clone();
        self.fail_waiters(|| RaftError::Stopped { reason: r.clone() });
        // Whatever queued up behind the stop gets the same answer.
        while let Ok(ev) = self.events.try_recv() {
            let err = || RaftError::Stopped {
                reason: reason.clone(),
            };
            match ev {
                Event::Propose { reply, .. } => {
                    let _ = reply.send(Err(err()));
                }
                Event::ReadIndex { reply, .. } => {
                    let _ = reply.send(Err(err()));
                }
                Event::ChangeMembership { reply, .. } => {
                    let _ = reply.send(Err(err()));
                }
                _ => {}
            }
        }
        self.transport.shutdown();
        self.published
            .leadership
            .send_replace(LeaderState::default());
        lock(&self.published.status).leader_id = 0;
        lock(&self.published.status).is_leader = false;
        self.published.stopped.send_replace(Some(reason));
    }
}

/// Rewrites the persisted state into a single-member cluster of this manager keeping all the
/// data: every entry of the local log is applied (committed or not, as etcd does), a snapshot of
/// the result replaces the log, and its configuration lists only this manager.
fn force_new_cluster<S: StateMachine>(
    cfg: &RaftConfig,
    storage: &mut RaftStorage,
    sm: &Arc<Mutex<S>>,
) -> Result<(), RaftError> {
    let path = storage.path().to_path_buf();
    let snap = storage.snapshot_ref().clone();
    let meta = snap.get_metadata();
    let mut sm = lock(sm);
    let mut members: BTreeMap<u64, Member> = BTreeMap::new();
    if meta.index > 0 {
        let data = pb::SnapshotData::decode(&snap.data[..])
            .map_err(|e| RaftError::storage(&path, "decoding the snapshot", e))?;
        sm.restore(meta.index, &data.state)
            .map_err(|e| RaftError::storage(&path, "restoring the state machine", e))?;
        members = data
            .members
            .into_iter()
            .map(|m| (m.raft_id, m.into()))
            .collect();
    }
    let (mut index, mut term) = (meta.index, meta.term);
    for e in storage.entries_after_truncation() {
        if e.index <= meta.index {
            continue;
        }
        match e.get_entry_type() {
            EntryType::EntryNormal => {
                if !e.data.is_empty() {
                    if let Err(refused) = sm.apply(e.index, &e.data) {
                        tracing::debug!(index = e.index, %refused, "replayed entry refused");
                    }
                }
            }
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                if let Ok(cc) = decode_conf_change(e) {
                    for ch in cc.get_changes() {
                        if ch.get_change_type() == ConfChangeType::RemoveNode {
                            members.remove(&ch.node_id);
                        } else {
                            members.insert(ch.node_id, member_of(&cc, ch.node_id));
                        }
                    }
                }
            }
        }
        index = e.index;
        term = e.term;
    }
    if index == 0 {
        return Err(RaftError::NoState { path });
    }
    let node_id = members
        .get(&cfg.raft_id)
        .map(|m| m.node_id.clone())
        .or_else(|| {
            storage
                .members()
                .iter()
                .find(|m| m.raft_id == cfg.raft_id)
                .map(|m| m.node_id.clone())
        })
        .unwrap_or_default();
    let me = Member {
        raft_id: cfg.raft_id,
        addr: cfg.listen_addr.clone(),
        node_id,
    };
    let only_me = BTreeMap::from([(cfg.raft_id, me.clone())]);
    let mut new = Snapshot::default();
    new.mut_metadata().index = index;
    new.mut_metadata().term = term;
    new.mut_metadata().mut_conf_state().voters = vec![cfg.raft_id];
    new.data = encode_snapshot_data(&only_me, sm.snapshot()).into();
    drop(sm);
    let mut hs = storage.hard_state().clone();
    hs.term = hs.term.max(term);
    hs.vote = 0;
    hs.commit = index;
    let dropped: Vec<u64> = members
        .keys()
        .copied()
        .filter(|id| *id != cfg.raft_id)
        .collect();
    storage.commit(WriteBatch {
        install: Some(new),
        hard_state: Some(hs),
        members: Some(vec![me]),
        ..Default::default()
    })?;
    tracing::warn!(raft_id = cfg.raft_id, index, term, ?dropped, path = %path.display(),
        "forced a new single-member raft cluster from the local state");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_matched_to_this_start_only() {
        let c = context(42, 7);
        assert_eq!(own_id(42, &c), Some(7));
        assert_eq!(own_id(43, &c), None);
        assert_eq!(own_id(42, &c[..15]), None);
        assert_eq!(own_id(42, b""), None);
    }
}
