//! Reconcilers that turn services into tasks: replicated and global services, restarts, node
//! loss and drain, rolling updates and rollbacks, opt-in rebalancing, and the task reaper.
//! Pure: no I/O, no async, no clock. [`reconcile`] reads the whole [`State`] and returns the
//! writes (one raft [`Batch`]) that move the cluster toward the specs, and when to call again.
//!
//! The model (swarmkit's `manager/orchestrator` is the teacher; this is written anew):
//! - A task is *runnable* while its desired state is at most RUNNING. A replicated service has
//!   `replicas` live slots (numbered from 1; new slots take the lowest free numbers, so a fresh
//!   service has slots 1..=replicas); a global service has one slot per usable node (slot 0,
//!   `node_id` preset). A live slot holds one runnable task (two during a start-first update),
//!   or is *done*: its newest task has desired state COMPLETE, which this module writes when a
//!   task ended and its restart policy declined a replacement.
//! - Desired states only move forward. A task's life ends with desired SHUTDOWN (or COMPLETE as
//!   above, or REMOVE when its service is gone); a replacement is always a new task in the same
//!   slot, never a reused one.
//! - A task that ended (observed terminal) while runnable stays as it is until its restart delay
//!   has passed; then, in one batch, it gets desired SHUTDOWN and its replacement (attempt + 1)
//!   is created. Tasks on a node that is DOWN or gone are replaced at once (status message
//!   "node down", attempt unchanged: not the task's fault), as are tasks on a drained node and
//!   tasks whose node no longer meets their constraints (its labels changed; Swarm's
//!   constraint enforcer).
//! - Everything is derived from the state, so a pass is idempotent: once its batch is applied,
//!   the same call at the same time writes nothing. Each object appears at most once in a batch
//!   and updates carry the version read; a batch refused for a version conflict is simply
//!   followed by another pass. A batch holds at most [`MAX_ACTIONS`] writes, the rest comes next
//!   pass (`wake_at` = now then).
//! - Rolling updates keep their state in `service.update_status`; `update.rs` has the rules and
//!   what the API is expected to write when a user changes or rolls back a spec.

mod global;
mod plan;
mod reaper;
mod rebalance;
mod replicated;
mod restart;
mod slot;
mod update;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use flotilla_proto::control::v1::{
    service_spec::Mode, Meta, Node, NodeAvailability, NodeState, Service, Task, TaskSpec,
    TaskState, TaskStatus,
};

use crate::store::{Batch, State};
use plan::{Group, Plan};

/// Most writes in one batch; the rest is left for the next pass.
pub const MAX_ACTIONS: usize = 1000;
/// Tasks kept per slot (per node for global services) when the cluster spec says 0.
pub const DEFAULT_TASK_HISTORY: u32 = 5;
/// Restart delay when the restart policy gives none.
pub const DEFAULT_RESTART_DELAY_MS: u64 = 5000;
/// Update monitoring period when the update config gives none.
pub const DEFAULT_MONITOR_MS: u64 = 5000;
/// Status message of a task waiting for the scheduler.
pub const MSG_PENDING: &str = "pending task scheduling";
/// Status message written on tasks whose node is down or gone.
pub const MSG_NODE_DOWN: &str = "node down";

/// What the orchestrator needs from outside.
pub trait Env {
    /// Fresh unique id for a new task (the caller uses random ids; tests use a counter).
    fn new_id(&mut self) -> String;
    /// Whether `node` may run tasks of `spec` at all (constraints, platform): the scheduler's
    /// static filters; used for global services (and to find the nodes a rebalance counts).
    fn node_eligible(&self, node: &Node, spec: &TaskSpec) -> bool;
}

/// The result of a pass.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// The writes to propose (empty when the cluster matches the specs).
    pub batch: Batch,
    /// Earliest time (unix ms) at which calling again may do more (restart delays, update
    /// delays and monitoring windows; `now` itself when the batch was cut at [`MAX_ACTIONS`]).
    pub wake_at: Option<i64>,
}

/// One full pass: compares every service with its tasks and the nodes, and returns the writes
/// that move the cluster toward the specs. Call it after every applied batch (debounced) and at
/// `wake_at`; it is idempotent (see the module documentation).
pub fn reconcile(state: &State, now_ms: i64, env: &mut dyn Env) -> Reconciled {
    reconcile_limited(state, now_ms, env, MAX_ACTIONS)
}

fn reconcile_limited(state: &State, now: i64, env: &mut dyn Env, limit: usize) -> Reconciled {
    let mut pass = Pass {
        state,
        now,
        env,
        plan: Plan::new(limit),
        wake_at: None,
    };
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in state.tasks.values() {
        by_service.entry(&t.service_id).or_default().push(t);
    }
    for t in by_service.values_mut() {
        t.sort_by(|a, b| age_key(a).cmp(&age_key(b)));
    }
    for svc in state.services.values() {
        let tasks = by_service.remove(svc.id.as_str()).unwrap_or_default();
        reconcile_service(&mut pass, svc, &tasks);
    }
    for tasks in by_service.values() {
        service_removed(&mut pass, tasks);
    }
    reaper::run(&mut pass);
    if pass.plan.is_full() {
        pass.wake_at = Some(now);
    }
    Reconciled {
        batch: pass.plan.into_batch(),
        wake_at: pass.wake_at,
    }
}

fn reconcile_service(pass: &mut Pass, read: &Service, tasks: &[&Task]) {
    if read.spec.as_ref().and_then(|s| s.mode.as_ref()).is_none() {
        return;
    }
    let mut svc = read.clone();
    let commits = pass.plan.commits();
    // A failure may roll the spec back first: what follows then works toward the rolled-back
    // spec in this same pass.
    update::check_failures(pass, &mut svc, tasks);
    let replicas = match svc.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(Mode::Replicated(r)) => Some(r.replicas),
        Some(Mode::Global(_)) => None,
        None => return,
    };
    let mut views = match replicas {
        Some(n) => replicated::run(pass, &svc, tasks, n),
        None => global::run(pass, &svc, tasks),
    };
    update::run(pass, &mut svc, &mut views);
    if replicas.is_some() && pass.plan.commits() == commits {
        rebalance::run(pass, &svc, &views);
    }
}

/// Tasks whose service is gone: desired REMOVE, or deleted when nothing runs them any more.
fn service_removed(pass: &mut Pass, tasks: &[&Task]) {
    for &t in tasks {
        let mut g = Group::default();
        if pass.finished(t) {
            g.remove(t.clone());
        } else if t.desired_state < TaskState::Remove as i32 {
            let mut c = pass.plan.working(t).clone();
            c.desired_state = TaskState::Remove as i32;
            touch(&mut c, pass.now);
            g.update(c);
        }
        if !pass.plan.commit(g) {
            return;
        }
    }
}

/// Whether a task state is terminal: COMPLETE, SHUTDOWN, FAILED, REJECTED, ORPHANED (and
/// REMOVE, which agents never report). A terminal task holds no resources and never runs again.
pub fn is_terminal(state: TaskState) -> bool {
    state >= TaskState::Complete
}

/// Whether the task is meant to run: desired state at most RUNNING. A slot has one runnable
/// task (two while a start-first update replaces it); the dispatcher assigns runnable tasks.
pub fn is_runnable(task: &Task) -> bool {
    task.desired_state <= TaskState::Running as i32
}

/// Whether the task was made from an older spec than the service's current one: a different
/// `spec_version` and a different task spec or endpoint (a spec change that touches neither,
/// such as the replica count, leaves tasks current; `force_update` is part of the task spec).
pub fn outdated(task: &Task, service: &Service) -> bool {
    if task.spec_version == service.spec_version {
        return false;
    }
    let spec = service.spec.as_ref();
    task.spec.as_ref() != spec.and_then(|s| s.task.as_ref())
        || task.endpoint.as_ref() != spec.and_then(|s| s.endpoint.as_ref())
}

/// The task's observed state (NEW when it has no status or an unknown one).
pub fn observed(task: &Task) -> TaskState {
    task.status
        .as_ref()
        .and_then(|s| TaskState::try_from(s.state).ok())
        .unwrap_or(TaskState::New)
}

/// Whether the task is up: observed RUNNING and its health check (if any) says healthy.
pub fn is_up(task: &Task) -> bool {
    let health = task.status.as_ref().map_or("", |s| s.health.as_str());
    observed(task) == TaskState::Running && (health.is_empty() || health == "healthy")
}

/// Time of the task's last observed status change (unix ms).
fn status_time(task: &Task) -> i64 {
    task.status.as_ref().map_or(0, |s| s.timestamp)
}

fn created_at(task: &Task) -> i64 {
    task.meta.as_ref().map_or(0, |m| m.created_at)
}

/// Orders the tasks of a slot from oldest to newest.
fn age_key(task: &Task) -> (i64, u64, &str) {
    (created_at(task), task.attempt, &task.id)
}

fn touch(task: &mut Task, now: i64) {
    task.meta.get_or_insert_with(Meta::default).updated_at = now;
}

fn touch_service(svc: &mut Service, now: i64) {
    svc.meta.get_or_insert_with(Meta::default).updated_at = now;
}

fn node_down(node: &Node) -> bool {
    node.status.as_ref().map_or(0, |s| s.state) == NodeState::Down as i32
}

fn availability(node: &Node) -> NodeAvailability {
    node.spec
        .as_ref()
        .and_then(|s| NodeAvailability::try_from(s.availability).ok())
        .unwrap_or(NodeAvailability::Active)
}

/// The state of one pass.
struct Pass<'a> {
    state: &'a State,
    now: i64,
    env: &'a mut dyn Env,
    plan: Plan,
    wake_at: Option<i64>,
}

impl Pass<'_> {
    /// Asks to be called again at `at` (kept when it is the earliest so far).
    fn wake(&mut self, at: i64) {
        if at > self.now {
            self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
        }
    }

    /// Whether nothing runs the task any more: it ended, was never placed, or its node is
    /// DOWN or gone.
    fn finished(&self, t: &Task) -> bool {
        if is_terminal(observed(t)) || t.node_id.is_empty() {
            return true;
        }
        self.state.nodes.get(&t.node_id).is_none_or(node_down)
    }

    /// A new task of the service in `slot`, pending, on `node_id` when preset (global).
    fn new_task(&mut self, svc: &Service, slot: u64, node_id: &str, attempt: u64) -> Task {
        let spec = svc.spec.clone().unwrap_or_default();
        Task {
            id: self.env.new_id(),
            meta: Some(Meta {
                version: 0,
                created_at: self.now,
                updated_at: self.now,
            }),
            service_id: svc.id.clone(),
            slot,
            node_id: node_id.to_string(),
            spec: spec.task,
            spec_version: svc.spec_version,
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: TaskState::Pending as i32,
                timestamp: self.now,
                message: MSG_PENDING.to_string(),
                ..Default::default()
            }),
            service_name: spec.name,
            attempt,
            endpoint: spec.endpoint,
        }
    }

    /// The task with its desired state raised to `desired` (never lowered); "node down" in
    /// its status message when `node_lost` and it has not ended.
    fn ended_copy(&self, t: &Task, desired: TaskState, node_lost: bool) -> Task {
        let mut c = self.plan.working(t).clone();
        if c.desired_state < desired as i32 {
            c.desired_state = desired as i32;
        }
        if node_lost && !is_terminal(observed(&c)) {
            c.status.get_or_insert_with(Default::default).message = MSG_NODE_DOWN.to_string();
        }
        touch(&mut c, self.now);
        c
    }
}
