//! [`RaftNode`]: the cheap-to-clone handle the controller uses. It talks to the ready loop over
//! its channel, forwards to the leader over gRPC when this manager is a follower, and waits on
//! the loop's published watches (applied index, leadership).
//!
//! Invariants:
//! - Every call is bounded: by `request_timeout`, and, while no leader is known, by two election
//!   timeouts after which it fails with [`RaftError::NoLeader`].
//! - A forwarded request is sent again only when the leader certainly did not execute it (it
//!   answered "not leader", or the connection was refused): a write is never applied twice
//!   because of a retry here.
//! - A write or read barrier forwarded to the leader returns only once this node applied the
//!   index the leader answered (read-your-writes on every manager).

use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use flotilla_proto::raft::v1 as pb;
use flotilla_proto::raft::v1::raft_client::RaftClient;
use flotilla_proto::raft::v1::raft_server::RaftServer;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::ready_loop::{lock, Event, MemberChange, Published, ReadyLoop};
use super::service::RaftService;
use super::{
    Bootstrap, Connector, LeaderState, Member, RaftConfig, RaftError, RaftStatus, StateMachine,
};

/// Handle of a running raft node. Clones share the node; [`RaftNode::shutdown`] stops it for all.
pub struct RaftNode<S: StateMachine> {
    pub(crate) inner: Arc<Inner<S>>,
}

impl<S: StateMachine> Clone for RaftNode<S> {
    fn clone(&self) -> Self {
        RaftNode {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub(crate) struct Inner<S> {
    pub cfg: RaftConfig,
    pub events: Sender<Event>,
    pub sm: Arc<Mutex<S>>,
    pub published: Arc<Published>,
    connector: Arc<dyn Connector>,
    channels: Mutex<HashMap<String, Channel>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<S> Drop for Inner<S> {
    /// The last handle gone (the service holds one): stop the loop rather than leak its thread.
    fn drop(&mut self) {
        let _ = self.events.send(Event::Shutdown);
    }
}

/// A follower's list of reachable members from its leader's `view`: the leader's view, with the
/// follower itself (it can hear the leader, so the leader hears it or will shortly).
fn leader_view_of(me: u64, view: &[u64]) -> Vec<u64> {
    let mut ids = view.to_vec();
    if !ids.contains(&me) {
        ids.push(me);
    }
    ids.sort_unstable();
    ids
}

/// On a follower, asks the leader every half election timeout which members it hears from
/// (`Raft.Status`), for [`RaftNode::status`]: a follower hears only from the leader, so its own
/// view would show every other follower unreachable. Ends with the node.
async fn poll_leader_view<S: StateMachine>(inner: Weak<Inner<S>>) {
    let Some(period) = inner.upgrade().map(|i| i.cfg.election_timeout() / 2) else {
        return;
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.published.stopped.borrow().is_some() {
            return;
        }
        let node = RaftNode { inner };
        let (is_leader, leader_id) = {
            let st = lock(&node.inner.published.status);
            (st.is_leader, st.leader_id)
        };
        if is_leader || leader_id == 0 {
            *lock(&node.inner.published.leader_view) = None;
            continue;
        }
        let Some(addr) = node.leader_addr(leader_id) else {
            continue;
        };
        let mut client = RaftClient::new(node.channel(&addr));
        if let Ok(Ok(r)) = tokio::time::timeout(period, client.status(pb::StatusRequest {})).await {
            let r = r.into_inner();
            if r.leader_id == r.raft_id && r.raft_id == leader_id {
                *lock(&node.inner.published.leader_view) =
                    Some((leader_id, std::time::Instant::now(), r.reachable));
            }
        }
    }
}

impl<S: StateMachine> RaftNode<S> {
    /// Starts a node: a brand-new single-member cluster, an empty node joining one, a restart
    /// from the state directory, or a forced new cluster from it (see [`Bootstrap`]). Must be
    /// called within a tokio runtime, which then carries the node's transport.
    pub async fn start(
        cfg: RaftConfig,
        bootstrap: Bootstrap,
        sm: S,
        connector: Arc<dyn Connector>,
    ) -> Result<RaftNode<S>, RaftError> {
        cfg.validate()?;
        let rt = tokio::runtime::Handle::current();
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let published = Arc::new(Published::new(cfg.raft_id));
        let sm = Arc::new(Mutex::new(sm));
        let (built_tx, built_rx) = oneshot::channel();
        let thread = {
            let (cfg, sm, published, connector, events_tx) = (
                cfg.clone(),
                Arc::clone(&sm),
                Arc::clone(&published),
                Arc::clone(&connector),
                events_tx.clone(),
            );
            std::thread::Builder::new()
                .name(format!("raft-{}", cfg.raft_id))
                .spawn(move || {
                    let built = ReadyLoop::build(
                        cfg, bootstrap, sm, events_rx, events_tx, published, rt, connector,
                    );
                    match built {
                        Ok(lp) => {
                            let _ = built_tx.send(Ok(()));
                            lp.run();
                        }
                        Err(e) => {
                            let _ = built_tx.send(Err(e));
                        }
                    }
                })
                .map_err(|e| RaftError::Stopped {
                    reason: format!("cannot start the raft thread: {e}"),
                })?
        };
        let built = built_rx.await.unwrap_or_else(|_| {
            Err(RaftError::Stopped {
                reason: "the raft thread panicked while starting".into(),
            })
        });
        if let Err(e) = built {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            return Err(e);
        }
        tracing::info!(raft_id = cfg.raft_id, addr = %cfg.listen_addr, "raft node started");
        let node = RaftNode {
            inner: Arc::new(Inner {
                cfg,
                events: events_tx,
                sm,
                published,
                connector,
                channels: Mutex::new(HashMap::new()),
                thread: Mutex::new(Some(thread)),
            }),
        };
        tokio::spawn(poll_leader_view(Arc::downgrade(&node.inner)));
        Ok(node)
    }

    /// The gRPC service to mount on the manager's server.
    pub fn service(&self) -> RaftServer<RaftService<S>> {
        RaftServer::new(RaftService::new(self.clone()))
            .max_decoding_message_size(self.inner.cfg.max_message_bytes)
            .max_encoding_message_size(self.inner.cfg.max_message_bytes)
    }

    pub fn raft_id(&self) -> u64 {
        self.inner.cfg.raft_id
    }

    /// This node's view of the cluster (on a follower, with the leader's view of who is
    /// reachable when it is recent: see [`RaftStatus::reachable_ids`]).
    pub fn status(&self) -> RaftStatus {
        let mut st = lock(&self.inner.published.status).clone();
        if !st.is_leader {
            let fresh = 2 * self.inner.cfg.election_timeout();
            if let Some((leader, at, view)) = lock(&self.inner.published.leader_view).as_ref() {
                if *leader == st.leader_id && at.elapsed() < fresh {
                    st.reachable_ids = leader_view_of(st.raft_id, view);
                }
            }
        }
        st
    }

    /// Who leads; changes are published as they happen (leader-only loops watch it).
    pub fn leadership(&self) -> watch::Receiver<LeaderState> {
        self.inner.published.leadership.subscribe()
    }

    /// Reads the state machine (as of the last applied entry), without going through raft.
    /// Call [`RaftNode::read_barrier`] first for a linearizable read.
    pub fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&lock(&self.inner.sm))
    }

    /// Proposes a command and returns its index and the state machine's result once it is
    /// applied on this node. Forwarded to the leader when this node is a follower.
    pub async fn propose(&self, command: Vec<u8>) -> Result<(u64, Vec<u8>), RaftError> {
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        loop {
            let leader = self.wait_leader(deadline).await?;
            let result = if leader.is_leader {
                self.propose_as_leader_until(command.clone(), false, deadline)
                    .await
            } else {
                match self.leader_addr(leader.leader_id) {
                    None => Err(RaftError::NotLeader {
                        raft_id: leader.leader_id,
                        leader_id: 0,
                    }),
                    Some(addr) => {
                        let req = pb::ProposeRequest {
                            command: command.clone(),
                        };
                        let res = self
                            .forward(leader.leader_id, &addr, deadline, |mut c| async move {
                                c.propose(req).await
                            })
                            .await;
                        match res {
                            Ok(r) => {
                                self.wait_applied(r.index, deadline).await?;
                                Ok((r.index, r.result))
                            }
                            Err(e) => Err(e),
                        }
                    }
                }
            };
            match result {
                Err(e) if e.is_retryable() => self.wait_leader_change(leader, deadline).await?,
                other => return other,
            }
        }
    }

    /// Linearizable read barrier: returns once this node applied everything committed before the
    /// call (raft ReadIndex, asked of the leader when this node is a follower).
    pub async fn read_barrier(&self) -> Result<(), RaftError> {
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        loop {
            let leader = self.wait_leader(deadline).await?;
            let result = if leader.is_leader {
                self.read_index_as_leader_until(false, deadline).await
            } else {
                match self.leader_addr(leader.leader_id) {
                    None => Err(RaftError::NotLeader {
                        raft_id: leader.leader_id,
                        leader_id: 0,
                    }),
                    Some(addr) => self
                        .forward(leader.leader_id, &addr, deadline, |mut c| async move {
                            c.read_index(pb::ReadIndexRequest {}).await
                        })
                        .await
                        .map(|r| r.index),
                }
            };
            match result {
                Ok(index) => return self.wait_applied(index, deadline).await,
                // Reads have no effect: any failure to reach the leader may be retried.
                Err(RaftError::Timeout { .. }) | Err(RaftError::Stopped { .. }) => {
                    return result.map(|_| ())
                }
                Err(_) => self.wait_leader_change(leader, deadline).await?,
            }
        }
    }

    /// Adds a manager (a `ConfChangeV2` whose context carries its address and node id) and
    /// returns the members once the change is applied on the leader.
    pub async fn add_member(
        &self,
        raft_id: u64,
        addr: String,
        node_id: String,
    ) -> Result<Vec<Member>, RaftError> {
        self.change_membership(MemberChange::Add(Member {
            raft_id,
            addr,
            node_id,
        }))
        .await
    }

    /// Removes a manager; removing the leader makes it hand leadership over.
    pub async fn remove_member(&self, raft_id: u64) -> Result<Vec<Member>, RaftError> {
        self.change_membership(MemberChange::Remove(raft_id)).await
    }

    async fn change_membership(&self, change: MemberChange) -> Result<Vec<Member>, RaftError> {
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        loop {
            let leader = self.wait_leader(deadline).await?;
            let result = if leader.is_leader {
                self.change_as_leader_until(change.clone(), deadline).await
            } else {
                match self.leader_addr(leader.leader_id) {
                    None => Err(RaftError::NotLeader {
                        raft_id: leader.leader_id,
                        leader_id: 0,
                    }),
                    Some(addr) => {
                        let req = pb::ChangeMembershipRequest {
                            change: Some(change.to_wire()),
                        };
                        self.forward(leader.leader_id, &addr, deadline, |mut c| async move {
                            c.change_membership(req).await
                        })
                        .await
                        .map(|r| r.members.into_iter().map(Member::from).collect())
                    }
                }
            };
            match result {
                Err(e) if e.is_retryable() => self.wait_leader_change(leader, deadline).await?,
                other => return other,
            }
        }
    }

    /// Stops the node: pending requests fail with [`RaftError::Stopped`] (writes raft already
    /// took with [`RaftError::StoppedInFlight`]: they may still commit), the transport ends,
    /// the database is closed (the state directory can be reopened once this returns).
    pub async fn shutdown(self) {
        let _ = self.inner.events.send(Event::Shutdown);
        let thread = lock(&self.inner.thread).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::info!(raft_id = self.inner.cfg.raft_id, "raft node stopped");
    }

    // ---- leader side (also used by the gRPC service) ----

    async fn ask<T>(
        &self,
        ev: impl FnOnce(oneshot::Sender<Result<T, RaftError>>) -> Event,
        what: &'static str,
        deadline: Instant,
    ) -> Result<T, RaftError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.events.send(ev(tx)).is_err() {
            return Err(self.stopped_error());
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.stopped_error()),
            Err(_) => Err(RaftError::Timeout {
                what,
                timeout: self.inner.cfg.request_timeout,
            }),
        }
    }

    async fn propose_as_leader_until(
        &self,
        command: Vec<u8>,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<(u64, Vec<u8>), RaftError> {
        self.ask(
            |reply| Event::Propose {
                command,
                reply,
                forwarded,
            },
            "proposal",
            deadline,
        )
        .await
    }

    async fn read_index_as_leader_until(
        &self,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<u64, RaftError> {
        self.ask(
            |reply| Event::ReadIndex { reply, forwarded },
            "read barrier",
            deadline,
        )
        .await
    }

    async fn change_as_leader_until(
        &self,
        change: MemberChange,
        deadline: Instant,
    ) -> Result<Vec<Member>, RaftError> {
        self.ask(
            |reply| Event::ChangeMembership { change, reply },
            "membership change",
            deadline,
        )
        .await
    }

    /// A proposal a follower forwarded (`Raft.Propose`).
    pub(crate) async fn propose_forwarded(
        &self,
        command: Vec<u8>,
    ) -> Result<(u64, Vec<u8>), RaftError> {
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        self.propose_as_leader_until(command, true, deadline).await
    }

    /// A read barrier a follower forwarded (`Raft.ReadIndex`).
    pub(crate) async fn read_index_forwarded(&self) -> Result<u64, RaftError> {
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        self.read_index_as_leader_until(true, deadline).await
    }

    pub(crate) async fn change_as_leader(
        &self,
        change: MemberChange,
    ) -> Result<Vec<Member>, RaftError> {
        let deadline = Instant::now() + self.inner.cfg.request_timeout;
        self.change_as_leader_until(change, deadline).await
    }

    // ---- waiting and forwarding ----

    fn stopped_error(&self) -> RaftError {
        let reason = self
            .inner
            .published
            .stopped
            .borrow()
            .clone()
            .unwrap_or_default();
        RaftError::Stopped { reason }
    }

    fn no_leader(&self) -> RaftError {
        let st = self.status();
        RaftError::NoLeader {
            reachable: st.reachable.max(1),
            members: st.members.len().max(1),
        }
    }

    /// Waits for a known leader: up to two election timeouts (then `NoLeader`), and no later
    /// than `deadline`.
    async fn wait_leader(&self, deadline: Instant) -> Result<LeaderState, RaftError> {
        let mut rx = self.leadership();
        let limit = deadline.min(Instant::now() + 2 * self.inner.cfg.election_timeout());
        loop {
            if self.inner.published.stopped.borrow().is_some() {
                return Err(self.stopped_error());
            }
            let ls = *rx.borrow_and_update();
            if ls.leader_id != 0 {
                return Ok(ls);
            }
            match tokio::time::timeout_at(limit, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.stopped_error()),
                Err(_) if limit < deadline => return Err(self.no_leader()),
                Err(_) => {
                    return Err(RaftError::Timeout {
                        what: "wait for a raft leader",
                        timeout: self.inner.cfg.request_timeout,
                    })
                }
            }
        }
    }

    /// After the leader refused or could not be reached: waits until the leadership view changes,
    /// or one election timeout, whichever comes first; `Timeout` past `deadline`.
    async fn wait_leader_change(
        &self,
        seen: LeaderState,
        deadline: Instant,
    ) -> Result<(), RaftError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(RaftError::Timeout {
                what: "request (the leader kept changing)",
                timeout: self.inner.cfg.request_timeout,
            });
        }
        let mut rx = self.leadership();
        let limit = deadline.min(now + self.inner.cfg.election_timeout());
        let _ = tokio::time::timeout_at(limit, rx.wait_for(|ls| *ls != seen)).await;
        Ok(())
    }

    /// Waits until this node applied `index`.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), RaftError> {
        let mut rx = self.inner.published.applied.subscribe();
        let waited = tokio::time::timeout_at(deadline, rx.wait_for(|a| *a >= index))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.stopped_error()),
            Err(_) => Err(RaftError::Timeout {
                what: "local apply of a committed entry",
                timeout: self.inner.cfg.request_timeout,
            }),
        }
    }

    fn leader_addr(&self, leader_id: u64) -> Option<String> {
        lock(&self.inner.published.status)
            .members
            .iter()
            .find(|m| m.raft_id == leader_id && !m.addr.is_empty())
            .map(|m| m.addr.clone())
    }

    fn channel(&self, addr: &str) -> Channel {
        let mut channels = lock(&self.inner.channels);
        channels
            .entry(addr.to_string())
            .or_insert_with(|| self.inner.connector.channel(addr))
            .clone()
    }

    /// Calls the leader; maps its answer back to the leader's error, and a refused connection to
    /// a retryable `NotLeader`.
    async fn forward<T, F, Fut>(
        &self,
        leader_id: u64,
        addr: &str,
        deadline: Instant,
        call: F,
    ) -> Result<T, RaftError>
    where
        F: FnOnce(RaftClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = RaftClient::new(self.channel(addr))
            .max_decoding_message_size(self.inner.cfg.max_message_bytes);
        match tokio::time::timeout_at(deadline, call(client)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) if flotilla_pki::never_sent(&status) => {
                tracing::debug!(leader_id, %addr, error = %status, "raft leader unreachable");
                Err(RaftError::NotLeader {
                    raft_id: leader_id,
                    leader_id: 0,
                })
            }
            Ok(Err(status)) => Err(RaftError::from_status(&status, leader_id, addr)),
            Err(_) => Err(RaftError::Timeout {
                what: "request forwarded to the leader",
                timeout: self.inner.cfg.request_timeout,
            }),
        }
    }

    /// Election timeout in use (for callers sizing their own waits).
    pub fn election_timeout(&self) -> Duration {
        self.inner.cfg.election_timeout()
    }
}
