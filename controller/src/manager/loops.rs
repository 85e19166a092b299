//! The leader-only loops: they start when this manager becomes leader and stop when it stops
//! leading. Each starts with a full pass (events are lost across leader changes), then reacts to
//! applied batches (debounced) and to its own timers.
//! - reconcile: the orchestrators turn services into tasks (`orchestrator::reconcile`);
//! - schedule: pending tasks get nodes (`scheduler::Scheduler`);
//! - the dispatcher's statuses and heartbeat watch (`Dispatcher::run`);
//! - node roles: promotions and demotions (`roles::role_loop`).

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::control::v1::{
    Node, NodeAvailability, NodeState, Task, TaskSpec, TaskState, TaskStatus,
};
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use super::proposer::Proposer;
use super::run::Identity;
use crate::dispatcher::{now_ms, Dispatcher};
use crate::orchestrator;
use crate::raft::LeaderState;
use crate::scheduler::{Decision, Scheduler};
use crate::store::{Batch, Kind, State, Store};

/// Waits for leadership, runs the loops while it lasts, and again at each new term.
pub async fn leader_loops(
    mut leadership: watch::Receiver<LeaderState>,
    store: Store,
    proposer: Arc<dyn Proposer>,
    dispatcher: Arc<Dispatcher>,
    membership: Arc<dyn crate::api::Membership>,
    identity: Identity,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let leading = leadership.borrow_and_update().is_leader;
        if leading {
            // A new leader's store may still miss writes the previous one committed (they are
            // applied once this term's first entry commits): the loops and the agents'
            // sessions act on the whole log only, or a pass could recreate tasks for slots
            // already filled.
            let caught_up = tokio::select! {
                r = proposer.read_barrier() => r,
                _ = stop.changed() => return,
            };
            if let Err(e) = caught_up {
                warn!(error = %e, "leading, but the store cannot catch up yet: retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            if !leadership.borrow().is_leader {
                continue;
            }
            info!(node = %identity.node_id, "leading: starting the orchestrators, the scheduler and the dispatcher");
            let (term_stop_tx, term_stop) = watch::channel(false);
            let tasks = [
                tokio::spawn(Arc::clone(&dispatcher).run(term_stop.clone())),
                tokio::spawn(reconcile_loop(
                    store.clone(),
                    Arc::clone(&proposer),
                    term_stop.clone(),
                )),
                tokio::spawn(super::roles::role_loop(
                    store.clone(),
                    Arc::clone(&proposer),
                    Arc::clone(&membership),
                    term_stop.clone(),
                )),
                tokio::spawn(schedule_loop(
                    store.clone(),
                    Arc::clone(&proposer),
                    term_stop,
                )),
            ];
            loop {
                tokio::select! {
                    r = leadership.changed() => {
                        if r.is_err() || !leadership.borrow().is_leader { break; }
                    }
                    _ = stop.changed() => break,
                }
            }
            let _ = term_stop_tx.send(true);
            dispatcher.close_all();
            for t in tasks {
                let _ = t.await;
            }
            info!(node = %identity.node_id, "no longer leading: loops stopped");
            if *stop.borrow() {
                return;
            }
        } else {
            tokio::select! {
                r = leadership.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }
}

/// Waits for the next applied batch touching one of `kinds` (true), a lag (true: do a full
/// pass), the timer (true), or stop (false). Batches of other kinds (configs, secrets: most of
/// the API's writes) cost the loop nothing: its pass reads every task.
pub(super) async fn next_change(
    rx: &mut broadcast::Receiver<Arc<crate::store::Applied>>,
    stop: &mut watch::Receiver<bool>,
    timer: Option<tokio::time::Instant>,
    kinds: &[Kind],
) -> bool {
    let sleep = async {
        match timer {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(applied) if !touches(&applied, kinds) => continue,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return false,
            },
            _ = stop.changed() => return false,
            _ = &mut sleep => return true,
        }
    }
}

/// Whether a batch changed an object of one of `kinds`.
fn touches(applied: &crate::store::Applied, kinds: &[Kind]) -> bool {
    applied
        .events
        .iter()
        .any(|e| kinds.contains(&e.object().kind()))
}

/// What the orchestrators read: services and their tasks, nodes, the cluster's settings.
const RECONCILE_KINDS: &[Kind] = &[Kind::Service, Kind::Task, Kind::Node, Kind::Cluster];
/// What the scheduler reads: tasks and nodes.
const SCHEDULE_KINDS: &[Kind] = &[Kind::Task, Kind::Node];

/// Drains whatever else arrived within `window` (debounce: one pass for a burst of batches).
async fn settle(rx: &mut broadcast::Receiver<Arc<crate::store::Applied>>, window: Duration) {
    tokio::time::sleep(window).await;
    while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = rx.try_recv() {}
}

struct Env;

impl orchestrator::Env for Env {
    fn new_id(&mut self) -> String {
        super::random_id()
    }
    fn node_eligible(&self, node: &Node, spec: &TaskSpec) -> bool {
        node_eligible(node, spec)
    }
}

/// Whether `node` passes the scheduler's static filters for a task of `spec`: constraints and
/// platform (used for global services, whose tasks are bound to their node from the start, and
/// by the rebalancer). Readiness, availability and free resources are left out on purpose: a
/// paused node keeps its global tasks, and a global task on a node short of resources stays
/// pending there with the scheduler's reason instead of silently not existing.
pub fn node_eligible(node: &Node, spec: &TaskSpec) -> bool {
    let mut node = node.clone();
    node.status.get_or_insert_with(Default::default).state = NodeState::Ready as i32;
    node.spec.get_or_insert_with(Default::default).availability = NodeAvailability::Active as i32;
    let mut spec = spec.clone();
    if let Some(r) = spec.resources.as_mut() {
        r.reservations = None;
    }
    let node = &node;
    let probe = Task {
        id: "probe".into(),
        service_id: "probe".into(),
        spec: Some(spec),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: TaskState::Pending as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut s = Scheduler::new([node], std::iter::empty());
    matches!(s.schedule([&probe]).first(), Some(Decision::Assign { .. }))
}

async fn reconcile_loop(
    store: Store,
    proposer: Arc<dyn Proposer>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = store.watch();
    let mut env = Env;
    loop {
        if *stop.borrow() {
            return;
        }
        let out = {
            let state = store.read();
            orchestrator::reconcile(&state, now_ms(), &mut env)
        };
        let wake = out.wake_at.map(|at| {
            let ms = (at - now_ms()).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_millis(ms)
        });
        if !out.batch.is_empty() {
            let n = out.batch.len();
            match proposer.propose(out.batch.into_proto()).await {
                Ok(_) => debug!(actions = n, "orchestrator wrote"),
                Err(e) if e.is_conflict() => continue,
                Err(e) => {
                    warn!(error = %e, "orchestrator write failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            // Our own write shows up as an event: look again right away.
            continue;
        }
        if !next_change(&mut rx, &mut stop, wake, RECONCILE_KINDS).await {
            return;
        }
        settle(&mut rx, Duration::from_millis(10)).await;
    }
}

/// Decisions of one scheduling pass as a batch: assignments, and pending reasons that changed
/// (in the task's status `err`, the message staying "pending task scheduling").
pub fn schedule_pass(state: &State) -> Batch {
    let mut b = Batch::new();
    let pending_state = TaskState::Pending as i32;
    let runnable = |t: &&Task| {
        t.desired_state <= TaskState::Running as i32
            && t.status.as_ref().map_or(0, |s| s.state) <= pending_state
    };
    let now = now_ms();
    let mut sched = Scheduler::new(state.nodes.values(), state.tasks.values());
    // Tasks bound to a node from the start (global services) first: they have one candidate;
    // then the others, which see what the bound ones took.
    let mut decisions: Vec<Decision> = state
        .tasks
        .values()
        .filter(runnable)
        .filter(|t| !t.node_id.is_empty())
        .map(|t| {
            let mut unbound = t.clone();
            unbound.node_id.clear();
            sched.schedule_on(&unbound, &t.node_id)
        })
        .collect();
    let unbound: Vec<&Task> = state
        .tasks
        .values()
        .filter(runnable)
        .filter(|t| t.node_id.is_empty())
        .collect();
    decisions.extend(sched.schedule(unbound));
    for d in decisions {
        match d {
            Decision::Assign { task_id, node_id } => {
                let Some(mut t) = state.tasks.get(&task_id).cloned() else {
                    continue;
                };
                t.node_id = node_id;
                t.status = Some(TaskStatus {
                    state: TaskState::Assigned as i32,
                    timestamp: now,
                    message: "scheduled".into(),
                    ..Default::default()
                });
                if let Some(m) = t.meta.as_mut() {
                    m.updated_at = now;
                }
                b.update(t);
            }
            Decision::Pending { task_id, reason } => {
                let Some(stored) = state.tasks.get(&task_id) else {
                    continue;
                };
                // Compared before copying: most pending tasks keep their reason pass after pass.
                if stored
                    .status
                    .as_ref()
                    .is_some_and(|s| s.err == reason && s.state == pending_state)
                {
                    continue;
                }
                let mut t = stored.clone();
                let status = t.status.get_or_insert_with(Default::default);
                // As Swarm does: the reason is the task's error (what `service ps` shows).
                status.state = pending_state;
                status.message = orchestrator::MSG_PENDING.to_string();
                status.err = reason;
                b.update(t);
            }
        }
        if b.len() >= 1000 {
            break;
        }
    }
    b
}

async fn schedule_loop(store: Store, proposer: Arc<dyn Proposer>, mut stop: watch::Receiver<bool>) {
    let mut rx = store.watch();
    loop {
        if *stop.borrow() {
            return;
        }
        let batch = schedule_pass(&store.read());
        if !batch.is_empty() {
            let n = batch.len();
            match proposer.propose(batch.into_proto()).await {
                Ok(_) => debug!(actions = n, "scheduler wrote"),
                Err(e) if e.is_conflict() => continue,
                Err(e) => {
                    warn!(error = %e, "scheduler write failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        }
        if !next_change(&mut rx, &mut stop, None, SCHEDULE_KINDS).await {
            return;
        }
        settle(&mut rx, Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::control::v1::{
        ContainerSpec, NodeDescription, NodeSpec, NodeStatus, Placement, ResourceRequirements,
        Resources, Service, ServiceSpec,
    };

    fn node(id: &str, availability: NodeAvailability, zone: &str) -> Node {
        Node {
            id: id.into(),
            spec: Some(NodeSpec {
                availability: availability as i32,
                labels: [("zone".to_string(), zone.to_string())].into(),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: id.into(),
                resources: Some(Resources {
                    nano_cpus: 2_000_000_000,
                    memory_bytes: 1 << 30,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn spec(constraint: &str, memory: i64) -> TaskSpec {
        TaskSpec {
            container: Some(ContainerSpec {
                image: "img".into(),
                ..Default::default()
            }),
            placement: Some(Placement {
                constraints: vec![constraint.into()],
                ..Default::default()
            }),
            resources: Some(ResourceRequirements {
                reservations: Some(Resources {
                    memory_bytes: memory,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn loops_wake_only_for_the_kinds_they_read() {
        use flotilla_proto::control::v1::Config;
        let store = Store::new();
        let p = super::super::proposer::LocalProposer::new(store.clone());
        let mut rx = store.watch();
        let (_stop_tx, mut stop) = watch::channel(false);
        let mut b = Batch::new();
        b.create(Config {
            id: "c1".into(),
            ..Default::default()
        });
        p.propose(b.into_proto()).await.expect("config");
        let waited = tokio::time::timeout(
            Duration::from_millis(100),
            next_change(&mut rx, &mut stop, None, SCHEDULE_KINDS),
        )
        .await;
        assert!(
            waited.is_err(),
            "a config write must not wake the scheduler"
        );
        let mut b = Batch::new();
        b.create(node("n1", NodeAvailability::Active, "a"));
        p.propose(b.into_proto()).await.expect("node");
        let woke = tokio::time::timeout(
            Duration::from_millis(100),
            next_change(&mut rx, &mut stop, None, SCHEDULE_KINDS),
        )
        .await;
        assert_eq!(woke.ok(), Some(true), "a node write wakes it");
    }

    #[test]
    fn eligibility_is_constraints_and_platform_only() {
        let active = node("n1", NodeAvailability::Active, "a");
        assert!(node_eligible(&active, &spec("node.labels.zone==a", 0)));
        assert!(!node_eligible(&active, &spec("node.labels.zone==b", 0)));
        // Paused or drained, or short of memory: still eligible (the orchestrator and the
        // scheduler deal with those).
        let paused = node("n1", NodeAvailability::Pause, "a");
        assert!(node_eligible(&paused, &spec("node.labels.zone==a", 0)));
        assert!(node_eligible(
            &active,
            &spec("node.labels.zone==a", 1 << 40)
        ));
        let mut down = active.clone();
        down.status.get_or_insert_with(Default::default).state = NodeState::Down as i32;
        assert!(node_eligible(&down, &spec("node.labels.zone!=b", 0)));
    }

    #[test]
    fn a_pending_reason_is_the_task_error_and_is_written_once() {
        let mut state = State::default();
        let mut b = Batch::new();
        b.create(node("n1", NodeAvailability::Active, "a"));
        b.create(Service {
            id: "s".into(),
            spec: Some(ServiceSpec {
                name: "web".into(),
                ..Default::default()
            }),
            spec_version: 1,
            ..Default::default()
        });
        b.create(Task {
            id: "t1".into(),
            service_id: "s".into(),
            slot: 1,
            spec: Some(spec("node.labels.zone==a", 1 << 40)),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: TaskState::Pending as i32,
                message: orchestrator::MSG_PENDING.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        state.apply(1, &b.into_proto()).expect("applies");
        let b = schedule_pass(&state);
        assert_eq!(b.len(), 1);
        state.apply(2, &b.into_proto()).expect("applies");
        let st = state.tasks["t1"].status.clone().unwrap_or_default();
        assert_eq!(st.err, "no suitable node (1 node lacks memory)");
        assert_eq!(st.message, orchestrator::MSG_PENDING);
        assert_eq!(st.state, TaskState::Pending as i32);
        assert!(schedule_pass(&state).is_empty(), "nothing new to say");
    }

    /// Tasks of one pass never share the same memory: a global (node-bound) task and a
    /// replicated one, and two global ones, each asking for 600 MiB of a 1 GiB node.
    #[test]
    fn one_pass_never_books_the_same_memory_twice() {
        let pending_task = |id: &str, service: &str, node: &str| Task {
            id: id.into(),
            service_id: service.into(),
            node_id: node.into(),
            slot: if node.is_empty() { 1 } else { 0 },
            spec: Some(spec("node.labels.zone==a", 600 << 20)),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: TaskState::Pending as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let assigned = |state: &State| -> Vec<String> {
            let mut v: Vec<String> = state
                .tasks
                .values()
                .filter(|t| t.status.as_ref().map(|s| s.state) == Some(TaskState::Assigned as i32))
                .map(|t| t.id.clone())
                .collect();
            v.sort();
            v
        };
        for (a, b_node) in [("global", "n1"), ("replicated", "")] {
            let mut state = State::default();
            let mut b = Batch::new();
            b.create(node("n1", NodeAvailability::Active, "a"));
            b.create(pending_task("g1", "sg", "n1"));
            b.create(pending_task("x1", "sx", b_node));
            state.apply(1, &b.into_proto()).expect("applies");
            let b = schedule_pass(&state);
            state.apply(2, &b.into_proto()).expect("applies");
            assert_eq!(assigned(&state), vec!["g1".to_string()], "with a {a} task");
            let x = state.tasks["x1"].status.clone().unwrap_or_default();
            assert_eq!(x.state, TaskState::Pending as i32, "with a {a} task");
            assert!(x.err.contains("lacks memory"), "{}", x.err);
            // Once the first one ends, the other gets the memory.
            let mut g = state.tasks["g1"].clone();
            g.status.get_or_insert_with(Default::default).state = TaskState::Shutdown as i32;
            let mut b = Batch::new();
            b.update(g);
            state.apply(3, &b.into_proto()).expect("applies");
            let b = schedule_pass(&state);
            state.apply(4, &b.into_proto()).expect("applies");
            assert_eq!(assigned(&state), vec!["x1".to_string()], "with a {a} task");
        }
    }
    /// A new leader whose store misses tasks the previous leader created acts only after its
    /// read barrier brought them in: no second set of tasks for the same slots.
    #[tokio::test]
    async fn a_new_leader_acts_once_its_store_holds_the_whole_log() {
        use crate::api::test_support;
        use flotilla_proto::control::v1::{service_spec::Mode, ReplicatedService};

        let (ctx, p) = test_support::ctx(true);
        let mut b = Batch::new();
        b.create(node("n1", NodeAvailability::Active, "a"));
        b.create(Service {
            id: "s".into(),
            spec: Some(ServiceSpec {
                name: "web".into(),
                task: Some(spec("node.labels.zone==a", 0)),
                mode: Some(Mode::Replicated(ReplicatedService { replicas: 2 })),
                ..Default::default()
            }),
            spec_version: 1,
            ..Default::default()
        });
        p.apply(b.into_proto()).expect("applies");
        // The previous leader's pass, committed but not applied here yet.
        let created = orchestrator::reconcile(&ctx.store.read(), now_ms(), &mut Env).batch;
        assert_eq!(created.len(), 2);
        p.behind.lock().unwrap().push(created.into_proto());

        let (_lead_tx, lead) = watch::channel(LeaderState {
            leader_id: 1,
            term: 2,
            is_leader: true,
        });
        let (stop_tx, stop) = watch::channel(false);
        let loops = tokio::spawn(leader_loops(
            lead,
            ctx.store.clone(),
            ctx.proposer.clone(),
            ctx.dispatcher.clone(),
            ctx.membership.clone(),
            Identity {
                node_id: "m1".into(),
                raft_id: 1,
                cluster_id: "c1".into(),
                advertise: "127.0.0.1:1".into(),
            },
            stop,
        ));
        // Long enough for the passes (the scheduler places both tasks).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stop_tx.send(true);
        loops.await.expect("loops end");
        let state = ctx.store.read();
        let tasks: Vec<&Task> = state
            .tasks
            .values()
            .filter(|t| t.service_id == "s")
            .collect();
        assert_eq!(tasks.len(), 2, "{tasks:#?}");
        assert!(p.barriers() >= 1);
    }
}
