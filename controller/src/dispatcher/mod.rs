//! Agent sessions on the leader: registration, heartbeats, assignments, task status, and the
//! routing of log requests to the agents.
//!
//! Invariants:
//! - Only the leader holds sessions; other managers end a session at once with
//!   FAILED_PRECONDITION and the leader's address in the `flotilla-leader` metadata.
//! - One session per node: a new one replaces the old (which is ended).
//! - A node's assignment set is the tasks on it that a scheduler assigned (observed state ≥
//!   ASSIGNED), ended ones included: a task leaves the set when it is deleted (the reaper keeps
//!   a few per slot as history) or its service is removed (desired REMOVE), so the agent keeps
//!   the stopped containers of history tasks, and their logs, as Swarm does. The agent runs
//!   exactly that set. Secrets and configs are sent only for the tasks of the set that have not
//!   ended (the agent deletes an ended task's files).
//! - Heartbeats are kept in memory (not in raft); a node is written DOWN after
//!   [`MISSED_HEARTBEATS`] periods without one; a node that never reported to this leader gets
//!   [`UNKNOWN_GRACE_FACTOR`] times longer, counted from when this manager became leader. A
//!   session's registration counts as a heartbeat before the node is written READY.
//! - Task status from agents only moves a task forward, and only for tasks assigned to the
//!   reporting node.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_proto::control::v1::{
    agent_message, dispatcher_message, AgentMessage, Assignments, ConfigData, DispatcherMessage,
    LogChunk, LogRequest, Node, NodeState, NodeStatus, SecretData, SessionInfo, Task, TaskState,
    TaskStatusUpdate,
};
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;
use tracing::{debug, info, warn};

use crate::manager::proposer::{ProposeError, Proposer};
use crate::store::{Batch, Event, Object, State, Store};

/// Heartbeat periods without a heartbeat before a node is declared DOWN.
pub const MISSED_HEARTBEATS: u32 = 3;
/// How many times longer than [`MISSED_HEARTBEATS`] periods a new leader waits for a node that
/// has not reported to it yet (agents back off up to 6 s while no leader answers).
pub const UNKNOWN_GRACE_FACTOR: u32 = 3;

/// Opens a secret's sealed data for a node that needs it.
pub type SecretOpener =
    Arc<dyn Fn(&flotilla_proto::control::v1::Secret) -> Result<Vec<u8>, String> + Send + Sync>;

/// Milliseconds since the unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether a task belongs to its node's assignment set.
pub fn assigned(t: &Task, node_id: &str) -> bool {
    if t.node_id != node_id || node_id.is_empty() {
        return false;
    }
    let observed = t.status.as_ref().map_or(0, |s| s.state);
    observed >= TaskState::Assigned as i32
}

/// Whether a task of the set may still run, so its node needs its secrets and configs.
fn needs_data(t: &Task) -> bool {
    !is_terminal(t.status.as_ref().map_or(0, |s| s.state))
}

/// Terminal observed states.
pub fn is_terminal(state: i32) -> bool {
    state >= TaskState::Complete as i32
}

/// The full assignment set of a node (secrets and configs opened for it).
pub fn full_assignments(state: &State, node_id: &str, open: &SecretOpener) -> Assignments {
    let tasks: Vec<Task> = state
        .tasks
        .values()
        .filter(|t| assigned(t, node_id))
        .cloned()
        .collect();
    let (secrets, configs) = referenced(state, &tasks, open);
    Assignments {
        full: true,
        tasks,
        removed_tasks: vec![],
        secrets,
        removed_secrets: vec![],
        configs,
        removed_configs: vec![],
    }
}

fn referenced(
    state: &State,
    tasks: &[Task],
    open: &SecretOpener,
) -> (Vec<SecretData>, Vec<ConfigData>) {
    let mut secret_ids = BTreeSet::new();
    let mut config_ids = BTreeSet::new();
    for t in tasks.iter().filter(|t| needs_data(t)) {
        if let Some(c) = t.spec.as_ref().and_then(|s| s.container.as_ref()) {
            secret_ids.extend(c.secrets.iter().map(|r| r.secret_id.clone()));
            config_ids.extend(c.configs.iter().map(|r| r.config_id.clone()));
        }
    }
    let secrets = secret_ids
        .iter()
        .filter_map(|id| state.secrets.get(id))
        .filter_map(|s| match open(s) {
            Ok(data) => Some(SecretData {
                id: s.id.clone(),
                name: s.spec.as_ref().map(|x| x.name.clone()).unwrap_or_default(),
                data,
            }),
            Err(e) => {
                warn!(secret = %s.id, error = %e, "cannot open a secret for a node");
                None
            }
        })
        .collect();
    let configs = config_ids
        .iter()
        .filter_map(|id| state.configs.get(id))
        .map(|c| ConfigData {
            id: c.id.clone(),
            name: c.spec.as_ref().map(|x| x.name.clone()).unwrap_or_default(),
            data: c.spec.as_ref().map(|x| x.data.clone()).unwrap_or_default(),
        })
        .collect();
    (secrets, configs)
}

/// What changed for one node in an applied batch: tasks to (re)send and tasks that left its set.
pub fn task_delta(events: &[Event], node_id: &str) -> (Vec<Task>, Vec<String>) {
    let mut send = Vec::new();
    let mut removed = Vec::new();
    for ev in events {
        let (old, new) = match ev {
            Event::Created(Object::Task(t)) => (None, Some(t)),
            Event::Updated {
                old: Object::Task(o),
                new: Object::Task(n),
            } => (Some(o), Some(n)),
            Event::Removed(Object::Task(t)) => (Some(t), None),
            _ => continue,
        };
        let was = old.is_some_and(|t| assigned(t, node_id));
        let is = new.is_some_and(|t| assigned(t, node_id));
        match (was, is) {
            (_, true) => {
                let t = new.expect("is implies new");
                let changed = match old {
                    Some(o) if was => {
                        o.desired_state != t.desired_state || o.spec_version != t.spec_version
                    }
                    _ => true,
                };
                if changed {
                    send.push(t.clone());
                }
            }
            (true, false) => {
                if let Some(t) = old {
                    removed.push(t.id.clone());
                }
            }
            (false, false) => {}
        }
    }
    (send, removed)
}

/// Applies agent status reports to the current tasks: only forward moves (or the same state with
/// new details), only for tasks assigned to `node_id`. Returns the updated tasks.
pub fn merge_statuses(state: &State, node_id: &str, updates: &[TaskStatusUpdate]) -> Vec<Task> {
    let mut latest: HashMap<&str, &TaskStatusUpdate> = HashMap::new();
    for u in updates {
        latest.insert(u.task_id.as_str(), u);
    }
    let mut out = Vec::new();
    for (id, u) in latest {
        let Some(task) = state.tasks.get(id) else {
            continue;
        };
        if task.node_id != node_id {
            continue;
        }
        let Some(new) = u.status.as_ref() else {
            continue;
        };
        let cur = task.status.clone().unwrap_or_default();
        if new.state < cur.state {
            continue;
        }
        if new.state == cur.state
            && new.health == cur.health
            && new.message == cur.message
            && new.err == cur.err
            && new.port_status == cur.port_status
            && new.container_id == cur.container_id
        {
            continue;
        }
        let mut t = task.clone();
        t.status = Some(new.clone());
        if let Some(m) = t.meta.as_mut() {
            m.updated_at = now_ms();
        }
        out.push(t);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Status reports of one node, as they come off its session.
type NodeReports = (String, Vec<TaskStatusUpdate>);

struct SessionEntry {
    session_id: String,
    /// Ends the session (replaced, node removed, leadership lost).
    cancel: watch::Sender<bool>,
    /// Log requests go to the agent through the session's writer.
    tx: mpsc::Sender<DispatcherMessage>,
}

/// Where the chunks of one log request go, and which session serves it.
struct LogRoute {
    node_id: String,
    session_id: String,
    tx: mpsc::Sender<LogChunk>,
}

/// The dispatcher of one manager. Serves sessions only while `leader` says this manager leads.
pub struct Dispatcher {
    store: Store,
    proposer: Arc<dyn Proposer>,
    open_secret: SecretOpener,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    heartbeats: Mutex<HashMap<String, Instant>>,
    status_tx: mpsc::Sender<NodeReports>,
    status_rx: Mutex<Option<mpsc::Receiver<NodeReports>>>,
    /// Open log requests: request id -> the session that serves it and where its chunks go.
    /// A session that ends drops its routes, so readers see the end instead of waiting forever.
    log_routes: Mutex<HashMap<u64, LogRoute>>,
    next_request: std::sync::atomic::AtomicU64,
    /// Addresses of the managers (sent to agents so they can fail over).
    manager_addrs: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// The longest heartbeat period in force lately, and until when it counts: a shorter
    /// period (`cluster update`) applies to the check only once every agent had time to beat
    /// at the old one.
    longest_period: Mutex<Option<(Duration, Instant)>>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        proposer: Arc<dyn Proposer>,
        open_secret: SecretOpener,
        manager_addrs: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    ) -> Arc<Dispatcher> {
        let (status_tx, status_rx) = mpsc::channel(1024);
        Arc::new(Dispatcher {
            store,
            proposer,
            open_secret,
            sessions: Mutex::new(HashMap::new()),
            heartbeats: Mutex::new(HashMap::new()),
            status_tx,
            status_rx: Mutex::new(Some(status_rx)),
            log_routes: Mutex::new(HashMap::new()),
            next_request: std::sync::atomic::AtomicU64::new(1),
            manager_addrs,
            longest_period: Mutex::new(None),
        })
    }

    fn heartbeat_period(&self) -> Duration {
        let ms = self
            .store
            .read()
            .cluster
            .as_ref()
            .and_then(|c| c.spec.as_ref())
            .map_or(0, |s| s.heartbeat_period_ms);
        Duration::from_millis(if ms == 0 { 1000 } else { ms })
    }

    /// Whether a node has a live session here.
    pub fn connected(&self, node_id: &str) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(node_id)
    }

    /// Ends every session (leadership lost): agents reconnect to the new leader.
    pub fn close_all(&self) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for (_, s) in sessions.drain() {
            let _ = s.cancel.send(true);
        }
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.log_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Ends the session of `node_id` (if any) and drops its log routes.
    fn close_session(&self, node_id: &str) {
        let old = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node_id);
        if let Some(s) = old {
            let _ = s.cancel.send(true);
            self.drop_log_routes(node_id, &s.session_id);
        }
    }

    /// Drops the log routes of a session that ended: their readers see the end of the stream.
    fn drop_log_routes(&self, node_id: &str, session_id: &str) {
        self.log_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, r| r.node_id != node_id || r.session_id != session_id);
    }

    /// Serves one agent session. `node_id` comes from the peer's certificate.
    pub async fn session(
        self: &Arc<Self>,
        node_id: String,
        remote_addr: String,
        mut inbound: tonic::Streaming<AgentMessage>,
    ) -> Result<mpsc::Receiver<Result<DispatcherMessage, Status>>, Status> {
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("session closed before registering"))?;
        let Some(agent_message::Msg::Register(register)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message of a session must be a Register",
            ));
        };
        // Counts as a heartbeat before the node is written READY: else the heartbeat check could
        // see it READY with no heartbeat yet and write it DOWN behind the live session's back.
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node_id.clone(), Instant::now());
        // The node must exist (a removed node keeps a valid certificate until it expires).
        self.mark_ready(&node_id, register.description.clone(), &remote_addr)
            .await?;
        // Statuses the agent reports at registration (what it runs after a restart).
        if !register.running.is_empty() {
            let _ = self
                .status_tx
                .send((node_id.clone(), register.running.clone()))
                .await;
        }
        let session_id = crate::manager::random_id();
        let (cancel_tx, mut cancel_rx) = watch::channel(false);
        let (msg_tx, mut msg_rx) = mpsc::channel::<DispatcherMessage>(256);
        let replaced = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                node_id.clone(),
                SessionEntry {
                    session_id: session_id.clone(),
                    cancel: cancel_tx,
                    tx: msg_tx.clone(),
                },
            );
        if let Some(old) = replaced {
            let _ = old.cancel.send(true);
            self.drop_log_routes(&node_id, &old.session_id);
        }
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node_id.clone(), Instant::now());
        info!(node = %node_id, addr = %remote_addr, "agent session opened");

        let (out_tx, out_rx) = mpsc::channel::<Result<DispatcherMessage, Status>>(64);
        // Writer: session info, the full set, then deltas from the store.
        let me = Arc::clone(self);
        let node = node_id.clone();
        let sid = session_id.clone();
        tokio::spawn(async move {
            let (state, mut watch) = me.store.snapshot_and_watch();
            let session_info = |role: i32, period: Duration| DispatcherMessage {
                msg: Some(dispatcher_message::Msg::Session(SessionInfo {
                    session_id: sid.clone(),
                    node_id: node.clone(),
                    heartbeat_period_ms: period.as_millis() as u64,
                    manager_addrs: (me.manager_addrs)(),
                    role,
                })),
            };
            let mut sent_role = state.nodes.get(&node).map_or(0, |n| n.role);
            let mut sent_period = me.heartbeat_period();
            let info = session_info(sent_role, sent_period);
            let full = full_assignments(&state, &node, &me.open_secret);
            let mut sent_secrets: HashSet<String> =
                full.secrets.iter().map(|s| s.id.clone()).collect();
            let mut sent_configs: HashSet<String> =
                full.configs.iter().map(|s| s.id.clone()).collect();
            drop(state);
            for m in [
                info,
                DispatcherMessage {
                    msg: Some(dispatcher_message::Msg::Assignments(full)),
                },
            ] {
                if out_tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = cancel_rx.changed() => {
                        let _ = out_tx.send(Err(Status::failed_precondition("session ended: replaced by a newer session, the node missed its heartbeats, or this manager stopped leading"))).await;
                        return;
                    }
                    m = msg_rx.recv() => {
                        let Some(m) = m else { return };
                        if out_tx.send(Ok(m)).await.is_err() { return; }
                    }
                    applied = watch.recv() => {
                        let msg = match applied {
                            Ok(applied) => {
                                let (tasks, removed) = task_delta(&applied.events, &node);
                                let node_gone = applied.events.iter().any(|e| matches!(e, Event::Removed(Object::Node(n)) if n.id == node));
                                if node_gone {
                                    let _ = out_tx.send(Err(Status::permission_denied(format!("node {node} was removed from the cluster")))).await;
                                    return;
                                }
                                // A promotion or demotion: the agent renews its certificate
                                // and starts or stops its manager.
                                let role = applied.events.iter().rev().find_map(|e| match e {
                                    Event::Updated { new: Object::Node(n), .. } if n.id == node => Some(n.role),
                                    _ => None,
                                });
                                // A new heartbeat period (`cluster update`): the agent beats
                                // at it before the checker expects it.
                                let period = applied.events.iter().any(|e| matches!(e, Event::Updated { new: Object::Cluster(_), .. })).then(|| me.heartbeat_period()).filter(|p| *p != sent_period);
                                if role.is_some_and(|r| r != sent_role) || period.is_some() {
                                    sent_role = role.unwrap_or(sent_role);
                                    sent_period = period.unwrap_or(sent_period);
                                    if out_tx.send(Ok(session_info(sent_role, sent_period))).await.is_err() { return; }
                                }
                                if tasks.is_empty() && removed.is_empty() { continue; }
                                let state = me.store.read();
                                let all: Vec<Task> = state.tasks.values().filter(|t| assigned(t, &node)).cloned().collect();
                                let (secrets, configs) = referenced(&state, &all, &me.open_secret);
                                drop(state);
                                let new_secrets: Vec<SecretData> = secrets.iter().filter(|s| !sent_secrets.contains(&s.id)).cloned().collect();
                                let keep: HashSet<String> = secrets.iter().map(|s| s.id.clone()).collect();
                                let removed_secrets: Vec<String> = sent_secrets.difference(&keep).cloned().collect();
                                sent_secrets = keep;
                                let new_configs: Vec<ConfigData> = configs.iter().filter(|s| !sent_configs.contains(&s.id)).cloned().collect();
                                let keepc: HashSet<String> = configs.iter().map(|s| s.id.clone()).collect();
                                let removed_configs: Vec<String> = sent_configs.difference(&keepc).cloned().collect();
                                sent_configs = keepc;
                                Assignments { full: false, tasks, removed_tasks: removed, secrets: new_secrets, removed_secrets, configs: new_configs, removed_configs }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                let role = me.store.read().nodes.get(&node).map(|n| n.role);
                                let period = me.heartbeat_period();
                                if role.is_some_and(|r| r != sent_role) || period != sent_period {
                                    sent_role = role.unwrap_or(sent_role);
                                    sent_period = period;
                                    if out_tx.send(Ok(session_info(sent_role, sent_period))).await.is_err() { return; }
                                }
                                let state = me.store.read();
                                let full = full_assignments(&state, &node, &me.open_secret);
                                sent_secrets = full.secrets.iter().map(|s| s.id.clone()).collect();
                                sent_configs = full.configs.iter().map(|s| s.id.clone()).collect();
                                full
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        if out_tx.send(Ok(DispatcherMessage { msg: Some(dispatcher_message::Msg::Assignments(msg)) })).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        // Reader: heartbeats, statuses, log chunks.
        let me = Arc::clone(self);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                match m.msg {
                    Some(agent_message::Msg::Heartbeat(_)) => {
                        me.heartbeats
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(node_id.clone(), Instant::now());
                    }
                    Some(agent_message::Msg::Status(batch)) => {
                        me.heartbeats
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(node_id.clone(), Instant::now());
                        let _ = me.status_tx.send((node_id.clone(), batch.updates)).await;
                    }
                    Some(agent_message::Msg::Logs(chunk)) => {
                        let route = me
                            .log_routes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&chunk.request_id)
                            .map(|r| r.tx.clone());
                        if let Some(tx) = route {
                            let _ = tx.send(chunk).await;
                        }
                    }
                    Some(agent_message::Msg::Register(_)) | None => {}
                }
            }
            {
                let mut sessions = me.sessions.lock().unwrap_or_else(|p| p.into_inner());
                if sessions
                    .get(&node_id)
                    .is_some_and(|s| s.session_id == session_id)
                {
                    sessions.remove(&node_id);
                }
            }
            me.drop_log_routes(&node_id, &session_id);
            debug!(node = %node_id, "agent session closed");
        });
        Ok(out_rx)
    }

    async fn mark_ready(
        &self,
        node_id: &str,
        description: Option<flotilla_proto::control::v1::NodeDescription>,
        addr: &str,
    ) -> Result<(), Status> {
        for _ in 0..5 {
            let node = self.store.read().nodes.get(node_id).cloned();
            let Some(mut node) = node else {
                return Err(Status::permission_denied(format!(
                    "node {node_id} is not a member of this cluster (removed?): join it again with a new token"
                )));
            };
            if node
                .status
                .as_ref()
                .is_some_and(|s| s.message == crate::api::nodeca::LEFT_MESSAGE)
            {
                return Err(Status::permission_denied(format!(
                    "node {node_id} left the cluster: join it again with a new token"
                )));
            }
            if description.is_some() {
                node.description = description.clone();
            }
            node.status = Some(NodeStatus {
                state: NodeState::Ready as i32,
                message: String::new(),
                addr: addr.to_string(),
                last_heartbeat: now_ms(),
            });
            if let Some(m) = node.meta.as_mut() {
                m.updated_at = now_ms();
            }
            let mut b = Batch::new();
            b.update(node);
            match self.proposer.propose(b.into_proto()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(Status::unavailable(e.to_string())),
            }
        }
        Err(Status::aborted(format!(
            "could not record node {node_id} as ready: too many concurrent changes"
        )))
    }

    /// The leader's background work: writes batched task statuses, and declares nodes DOWN
    /// when their heartbeats stop. Runs until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut rx) = self
            .status_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Statuses not written yet (conflicts, or raft unavailable): retried with the next
        // batch or tick, never dropped while this manager leads.
        let mut pending: HashMap<String, Vec<TaskStatusUpdate>> = HashMap::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                first = rx.recv() => {
                    let Some(first) = first else { break };
                    // Collect what else is queued (one raft write for many reports).
                    pending.entry(first.0).or_default().extend(first.1);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while let Ok((n, u)) = rx.try_recv() {
                        pending.entry(n).or_default().extend(u);
                    }
                    self.write_statuses(&mut pending).await;
                }
                _ = tick.tick() => {
                    if !pending.is_empty() {
                        self.write_statuses(&mut pending).await;
                    }
                    self.check_heartbeats(started).await;
                }
            }
        }
        // Give the receiver back for the next leadership term.
        *self.status_rx.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
    }

    /// Writes `pending` (merged into the current tasks) in one batch; empties it once written
    /// or once nothing in it changes a task any more. What could not be written stays, with
    /// only the last update of each task kept.
    async fn write_statuses(&self, pending: &mut HashMap<String, Vec<TaskStatusUpdate>>) {
        for _ in 0..3 {
            let mut b = Batch::new();
            {
                let state = self.store.read();
                for (node, updates) in pending.iter() {
                    for t in merge_statuses(&state, node, updates) {
                        b.update(t);
                    }
                }
            }
            if b.is_empty() {
                pending.clear();
                return;
            }
            match self.proposer.propose(b.into_proto()).await {
                Ok(_) => {
                    pending.clear();
                    return;
                }
                Err(e) if e.is_conflict() => continue,
                Err(ProposeError::Unavailable(e)) => {
                    warn!(error = %e, "could not record task statuses yet: retrying");
                    break;
                }
                Err(e) => {
                    // Refused for good (a task removed meanwhile...): retrying cannot help.
                    warn!(error = %e, "task statuses refused by the store: dropped");
                    pending.clear();
                    return;
                }
            }
        }
        for updates in pending.values_mut() {
            let mut last: HashMap<String, TaskStatusUpdate> = HashMap::new();
            for u in updates.drain(..) {
                last.insert(u.task_id.clone(), u);
            }
            updates.extend(last.into_values());
        }
    }

    async fn check_heartbeats(&self, leader_since: Instant) {
        let now = Instant::now();
        let period = {
            let current = self.heartbeat_period();
            let mut longest = self
                .longest_period
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match *longest {
                Some((old, until)) if old > current && now < until => old,
                _ => {
                    // Keep the current one for as long as an agent may still beat at it.
                    *longest = Some((current, now + current * MISSED_HEARTBEATS));
                    current
                }
            }
        };
        let limit = period * MISSED_HEARTBEATS;
        // A node that has not reported to this leader yet gets longer: its agent may be backing
        // off after failing to reach any leader (swarmkit's grace for nodes of unknown state).
        let unknown_limit = limit * UNKNOWN_GRACE_FACTOR;
        let stale: Vec<Node> = {
            let state = self.store.read();
            let beats = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
            state
                .nodes
                .values()
                .filter(|n| {
                    n.status.as_ref().map(|s| s.state) == Some(NodeState::Ready as i32)
                        && match beats.get(&n.id) {
                            Some(t) => now.duration_since(*t) > limit,
                            None => now.duration_since(leader_since) > unknown_limit,
                        }
                })
                .cloned()
                .collect()
        };
        if stale.is_empty() {
            return;
        }
        let mut b = Batch::new();
        for mut n in stale {
            info!(node = %n.id, "node missed {MISSED_HEARTBEATS} heartbeats: down");
            // Its session is dead even if its connection is not closed yet (a cut link): end
            // it, so that log readers stop waiting; a live agent opens a new one.
            self.close_session(&n.id);
            let status = n.status.get_or_insert_with(Default::default);
            status.state = NodeState::Down as i32;
            status.message = "heartbeat failure".into();
            if let Some(m) = n.meta.as_mut() {
                m.updated_at = now_ms();
            }
            b.update(n);
        }
        if let Err(e) = self.proposer.propose(b.into_proto()).await {
            if !matches!(e, ProposeError::Refused(_)) {
                warn!(error = %e, "could not mark nodes down");
            }
        }
    }

    /// Asks the agent of `node_id` for logs; chunks arrive on the returned receiver. None when
    /// the node has no session here.
    pub async fn request_logs(
        &self,
        node_id: &str,
        mut req: LogRequest,
    ) -> Option<(u64, mpsc::Receiver<LogChunk>)> {
        let (tx, session_id) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node_id)
            .map(|s| (s.tx.clone(), s.session_id.clone()))?;
        let id = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        req.request_id = id;
        let (ctx, crx) = mpsc::channel(64);
        self.log_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                LogRoute {
                    node_id: node_id.to_string(),
                    session_id,
                    tx: ctx,
                },
            );
        let msg = DispatcherMessage {
            msg: Some(dispatcher_message::Msg::Logs(req)),
        };
        if tx.send(msg).await.is_err() {
            self.end_logs(node_id, id).await;
            return None;
        }
        Some((id, crx))
    }

    /// Stops routing a log request (and tells the agent to stop it).
    pub async fn end_logs(&self, node_id: &str, request_id: u64) {
        self.log_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request_id);
        let tx = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node_id)
            .map(|s| s.tx.clone());
        if let Some(tx) = tx {
            let _ = tx
                .send(DispatcherMessage {
                    msg: Some(dispatcher_message::Msg::CancelLogs(
                        flotilla_proto::control::v1::LogCancel { request_id },
                    )),
                })
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::control::v1::TaskStatus;

    fn task(id: &str, node: &str, desired: TaskState, observed: TaskState) -> Task {
        Task {
            id: id.into(),
            node_id: node.into(),
            desired_state: desired as i32,
            status: Some(TaskStatus {
                state: observed as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Fails the first `fail` writes as raft does without a quorum, then applies locally.
    struct Flaky {
        inner: crate::manager::proposer::LocalProposer,
        fail: std::sync::atomic::AtomicUsize,
    }

    impl Proposer for Flaky {
        fn propose(
            &self,
            batch: flotilla_proto::control::v1::StoreBatch,
        ) -> crate::manager::proposer::BoxFuture<'_, Result<u64, ProposeError>> {
            use std::sync::atomic::Ordering;
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Box::pin(async { Err(ProposeError::Unavailable("no quorum".into())) });
            }
            self.inner.propose(batch)
        }
        fn read_barrier(
            &self,
        ) -> crate::manager::proposer::BoxFuture<'_, Result<(), ProposeError>> {
            self.inner.read_barrier()
        }
    }

    #[tokio::test]
    async fn statuses_that_cannot_be_written_yet_are_retried_not_dropped() {
        let store = Store::new();
        let local = crate::manager::proposer::LocalProposer::new(store.clone());
        let mut b = Batch::new();
        b.create(task("t1", "n1", TaskState::Running, TaskState::Assigned));
        local.propose(b.into_proto()).await.expect("seed");
        let flaky = Arc::new(Flaky {
            inner: local,
            fail: std::sync::atomic::AtomicUsize::new(2),
        });
        let d = Dispatcher::new(
            store.clone(),
            flaky.clone(),
            Arc::new(|_: &flotilla_proto::control::v1::Secret| Ok(Vec::new())),
            Arc::new(Vec::new),
        );
        let (stop_tx, stop) = watch::channel(false);
        let run = tokio::spawn(Arc::clone(&d).run(stop));
        let running = TaskStatusUpdate {
            task_id: "t1".into(),
            status: Some(TaskStatus {
                state: TaskState::Running as i32,
                ..Default::default()
            }),
        };
        d.status_tx
            .send(("n1".into(), vec![running]))
            .await
            .expect("send");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = store.read().tasks["t1"]
                .status
                .as_ref()
                .map_or(0, |s| s.state);
            if state == TaskState::Running as i32 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the status was dropped after a failed write"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(flaky.fail.load(std::sync::atomic::Ordering::SeqCst), 0);
        let _ = stop_tx.send(true);
        run.await.expect("run");
    }

    #[test]
    fn assignment_set_membership() {
        use TaskState::*;
        assert!(
            !assigned(&task("a", "n1", Running, Pending), "n1"),
            "not yet scheduled"
        );
        assert!(assigned(&task("a", "n1", Running, Assigned), "n1"));
        assert!(
            !assigned(&task("a", "n2", Running, Running), "n1"),
            "other node"
        );
        assert!(
            assigned(&task("a", "n1", Shutdown, Running), "n1"),
            "to be stopped"
        );
        assert!(
            assigned(&task("a", "n1", Shutdown, Shutdown), "n1"),
            "stopped: kept as history (its container and log stay)"
        );
        assert!(assigned(&task("a", "n1", Remove, Failed), "n1"));
        assert!(assigned(&task("a", "n1", Running, Failed), "n1"));
    }

    #[test]
    fn secrets_go_only_with_tasks_that_may_still_run() {
        use flotilla_proto::control::v1::{
            ContainerSpec, Secret, SecretReference, SecretSpec, TaskSpec,
        };
        use TaskState::*;
        let mut state = State::default();
        for id in ["s1", "s2"] {
            state.secrets.insert(
                id.into(),
                Secret {
                    id: id.into(),
                    spec: Some(SecretSpec {
                        name: id.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
        }
        let using = |id: &str, secret: &str, desired, observed| {
            let mut t = task(id, "n1", desired, observed);
            t.spec = Some(TaskSpec {
                container: Some(ContainerSpec {
                    secrets: vec![SecretReference {
                        secret_id: secret.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            });
            t
        };
        for t in [
            using("run", "s1", Running, Running),
            using("old", "s2", Shutdown, Shutdown),
        ] {
            state.tasks.insert(t.id.clone(), t);
        }
        let open: SecretOpener = Arc::new(|_: &Secret| Ok(b"data".to_vec()));
        let a = full_assignments(&state, "n1", &open);
        let mut ids: Vec<&str> = a.tasks.iter().map(|t| t.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["old", "run"], "history stays in the set");
        let secrets: Vec<&str> = a.secrets.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(secrets, ["s1"], "not the secret of the ended task");
    }

    #[test]
    fn deltas_send_new_and_changed_tasks_and_removals() {
        use TaskState::*;
        let events = vec![
            Event::Created(Object::Task(task("new", "n1", Running, Assigned))),
            Event::Updated {
                old: Object::Task(task("status-only", "n1", Running, Running)),
                new: Object::Task({
                    let mut t = task("status-only", "n1", Running, Running);
                    t.status.as_mut().expect("status").health = "healthy".into();
                    t
                }),
            },
            Event::Updated {
                old: Object::Task(task("stop", "n1", Running, Running)),
                new: Object::Task(task("stop", "n1", Shutdown, Running)),
            },
            Event::Updated {
                old: Object::Task(task("done", "n1", Shutdown, Running)),
                new: Object::Task(task("done", "n1", Shutdown, Shutdown)),
            },
            Event::Updated {
                old: Object::Task(task("sched", "", Running, Pending)),
                new: Object::Task(task("sched", "n1", Running, Assigned)),
            },
            Event::Created(Object::Task(task("elsewhere", "n2", Running, Assigned))),
        ];
        let (send, removed) = task_delta(&events, "n1");
        let ids: Vec<&str> = send.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["new", "stop", "sched"]);
        assert!(removed.is_empty(), "an ended task stays: {removed:?}");
        let gone = [Event::Removed(Object::Task(task(
            "done", "n1", Shutdown, Shutdown,
        )))];
        assert_eq!(task_delta(&gone, "n1").1, ["done"]);
    }

    #[test]
    fn statuses_only_move_forward_and_only_from_the_tasks_node() {
        use TaskState::*;
        let mut state = State::default();
        for t in [
            task("a", "n1", Running, Running),
            task("b", "n1", Running, Assigned),
            task("c", "n2", Running, Assigned),
        ] {
            state.tasks.insert(t.id.clone(), t);
        }
        let up = |id: &str, s: TaskState| TaskStatusUpdate {
            task_id: id.into(),
            status: Some(TaskStatus {
                state: s as i32,
                ..Default::default()
            }),
        };
        let merged = merge_statuses(
            &state,
            "n1",
            &[
                up("a", Starting),
                up("b", Preparing),
                up("b", Running),
                up("c", Running),
                up("zz", Running),
            ],
        );
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert_eq!(merged[0].id, "b");
        assert_eq!(
            merged[0].status.as_ref().map(|s| s.state),
            Some(Running as i32)
        );
    }
}
