//! The replicated log of the cluster managers (tikv raft-rs): durable log and snapshots
//! (`storage`), the ready loop that owns the raft `RawNode` (`ready_loop`), the transport of raft
//! messages as bytes over `flotilla.raft.v1` (`transport`, `service`), and the handle the rest of
//! the controller uses to propose commands and read linearizably (`node`).
//!
//! Invariants:
//! - One thread (the ready loop) owns the `RawNode`, the raft-engine log and the writes to the
//!   state machine; everything else talks to it through a channel. Readers of the state machine
//!   take its lock briefly (`RaftNode::with_state`) and never go through the loop.
//! - Nothing is acknowledged before it is durable: each `Ready` is persisted in one raft-engine
//!   batch written with sync (one `fdatasync` per Ready, however many proposals it carries)
//!   before its persisted messages are sent or its proposals answered.
//! - The state machine is in memory only; it is rebuilt on start from the last snapshot plus a
//!   replay of the committed entries after it. The applied index persists with each snapshot.
//! - A proposal is matched to its caller by a unique id in the entry's context (a random per-start
//!   nonce and a counter). Proposals, read requests and membership changes waiting on a leader
//!   fail with [`RaftError::LeadershipLost`] ([`RaftError::QuorumLost`] when it stepped down for
//!   want of a quorum) when it stops being leader or its term changes: they
//!   never hang. Followers forward writes and read barriers to the leader over `Raft.Propose` /
//!   `Raft.ReadIndex` and then wait until they applied the answer's index themselves.
//! - Membership changes are `ConfChangeV2` entries whose context is a prost-encoded
//!   [`flotilla_proto::raft::v1::Member`]; the members (raft id, address, node id) are part of
//!   every snapshot, so a manager that installs one knows whom to dial.
//!
//! Use: `RaftNode::start` with a [`StateMachine`] and a [`Connector`], mount
//! `RaftNode::service()` on the manager's tonic server (with `TCP_NODELAY` on its sockets, e.g.
//! `TcpIncoming::with_nodelay(Some(true))`: without it Nagle adds milliseconds to every
//! forwarded write), then `propose` / `read_barrier` + `with_state` from any manager.

mod error;
mod legacy_redb;
mod logger;
mod node;
mod ready_loop;
mod service;
mod storage;
mod transport;

use std::path::PathBuf;
use std::time::Duration;

pub use error::RaftError;
pub use node::RaftNode;
pub use service::RaftService;

/// What raft replicates into. Implemented by the cluster store elsewhere; must be deterministic:
/// every manager applies the same commands in the same order and must reach the same state.
pub trait StateMachine: Send + 'static {
    /// Applies a committed command at `index`; the returned bytes go back to the proposer.
    /// An `Err` is a deterministic refusal (e.g. a version conflict): it is returned to the
    /// proposer as [`RaftError::Refused`] and the entry still counts as applied.
    fn apply(&mut self, index: u64, command: &[u8]) -> Result<Vec<u8>, String>;
    /// Serialized full state (including whatever it needs to restore), used for raft snapshots.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state by a snapshot's (taken at `index`).
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), String>;
}

/// How to reach a peer manager: returns a (lazily connecting) gRPC channel to `addr` (host:port).
/// The CA module supplies an mTLS one; tests use plain http on 127.0.0.1.
pub trait Connector: Send + Sync + 'static {
    fn channel(&self, addr: &str) -> tonic::transport::Channel;
}

/// How [`RaftNode::start`] initializes the node. Whatever is asked, an existing state in
/// `state_dir` wins: a node with a persisted log always restarts from it (except
/// `ForceNewCluster`, which rewrites its membership).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// A brand-new single-member cluster whose only member is this manager.
    NewCluster { node_id: String },
    /// An empty node waiting for the leader to send it entries or a snapshot; the leader added
    /// it with [`RaftNode::add_member`] (before or after this start).
    Join,
    /// Restarts from the state directory, which must hold a raft state.
    Restart,
    /// Restarts from the state directory keeping all the data, as a new single-member cluster
    /// (like `etcd --force-new-cluster` / `swarm init --force-new-cluster`): every entry of the
    /// local log is kept and committed, and the membership is rewritten to this manager alone.
    ForceNewCluster,
}

/// A manager of the raft cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub raft_id: u64,
    /// host:port other managers dial.
    pub addr: String,
    /// The cluster node id of this manager (its certificate's identity).
    pub node_id: String,
}

impl From<flotilla_proto::raft::v1::Member> for Member {
    fn from(m: flotilla_proto::raft::v1::Member) -> Self {
        Member {
            raft_id: m.raft_id,
            addr: m.addr,
            node_id: m.node_id,
        }
    }
}

impl From<Member> for flotilla_proto::raft::v1::Member {
    fn from(m: Member) -> Self {
        flotilla_proto::raft::v1::Member {
            raft_id: m.raft_id,
            addr: m.addr,
            node_id: m.node_id,
        }
    }
}

/// Who leads, as seen by this node. Published on [`RaftNode::leadership`] so leader-only loops
/// can start and stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaderState {
    /// 0 when this node knows no leader.
    pub leader_id: u64,
    pub term: u64,
    pub is_leader: bool,
}

/// A snapshot of this node's view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub raft_id: u64,
    /// 0 when this node knows no leader.
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Index of the last snapshot this node holds (taken or received).
    pub snapshot_index: u64,
    /// The members at the applied index, ordered by raft id.
    pub members: Vec<Member>,
    pub is_leader: bool,
    /// Members this node heard from within two election timeouts, itself included.
    pub reachable: usize,
    /// Raft ids of the members considered reachable, sorted: on the leader, those it heard from
    /// within two election timeouts (itself included); on a follower, the leader's view (asked
    /// of the leader every half election timeout), or its own when that is older than two
    /// election timeouts (it then only knows itself and whoever it heard from).
    pub reachable_ids: Vec<u64>,
    /// Members that are learners: new managers catching up with the log before they get a
    /// vote (see `MemberChange::Add`).
    pub learners: Vec<u64>,
}

/// Configuration of one raft node.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This manager's raft id, non-zero and unique in the cluster.
    pub raft_id: u64,
    /// Directory of the durable state (the raft-engine log `log/` and the last snapshot).
    pub state_dir: PathBuf,
    /// host:port advertised to peers.
    pub listen_addr: String,
    /// Length of one raft tick (default 100 ms).
    pub tick_ms: u64,
    /// Ticks without hearing from a leader before a follower campaigns (raft-rs randomizes it in
    /// `[election_ticks, 2 * election_ticks)`); default 10, an election timeout of ~1 s.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats (default 1).
    pub heartbeat_ticks: usize,
    /// Applied entries between two snapshots (default 10 000).
    pub snapshot_interval: u64,
    /// Entries kept in the log behind a snapshot, so a briefly lagging follower catches up from
    /// the log rather than a whole snapshot (default 1 000).
    pub snapshot_catchup_entries: u64,
    /// Upper bound of one proposal, read barrier or membership change (default 10 s).
    pub request_timeout: Duration,
    /// Largest raft message accepted from a peer, snapshots included (default 256 MiB).
    pub max_message_bytes: usize,
    /// Raft messages queued for one peer before newer ones are dropped (default 4096).
    pub peer_queue: usize,
}

impl RaftConfig {
    pub fn new(
        raft_id: u64,
        state_dir: impl Into<PathBuf>,
        listen_addr: impl Into<String>,
    ) -> Self {
        RaftConfig {
            raft_id,
            state_dir: state_dir.into(),
            listen_addr: listen_addr.into(),
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_interval: 10_000,
            snapshot_catchup_entries: 1_000,
            request_timeout: Duration::from_secs(10),
            max_message_bytes: 256 << 20,
            peer_queue: 4096,
        }
    }

    /// The (minimum) election timeout.
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.tick_ms * self.election_ticks as u64)
    }

    fn validate(&self) -> Result<(), RaftError> {
        let bad = |m: String| Err(RaftError::Config(m));
        if self.raft_id == 0 {
            return bad("raft_id must not be 0".into());
        }
        if self.tick_ms == 0 {
            return bad("tick_ms must be at least 1".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return bad(format!(
                "election_ticks ({}) must be greater than heartbeat_ticks ({}), which must be at least 1",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.snapshot_interval == 0 {
            return bad("snapshot_interval must be at least 1".into());
        }
        if self.peer_queue == 0 {
            return bad("peer_queue must be at least 1".into());
        }
        Ok(())
    }
}
