//! Scenarios over a simulated cluster: the orchestrator's batches are applied to a [`State`],
//! agents and the scheduler are played by the test (placing pending tasks, reporting states).
//! Every pass also checks idempotence: the same call right after its batch is applied writes
//! nothing.

use std::collections::BTreeSet;

use flotilla_proto::control::v1::{
    service_spec::Mode, Cluster, ClusterSpec, ContainerSpec, EndpointSpec, GlobalService, Meta,
    Node, NodeAvailability, NodeSpec, NodeState, NodeStatus, PortConfig, ReplicatedService,
    RestartCondition, RestartPolicy, Service, ServiceSpec, Task, TaskSpec, TaskState, UpdateConfig,
    UpdateFailureAction, UpdateOrder, UpdateState,
};

use super::*;
use crate::store::Batch;

const T0: i64 = 1_000_000;

#[derive(Default)]
struct TestEnv {
    next: u32,
    ineligible: BTreeSet<String>,
}

impl Env for TestEnv {
    fn new_id(&mut self) -> String {
        self.next += 1;
        format!("t{:03}", self.next)
    }

    fn node_eligible(&self, node: &Node, _spec: &TaskSpec) -> bool {
        !self.ineligible.contains(&node.id)
    }
}

struct Sim {
    state: State,
    index: u64,
    env: TestEnv,
    now: i64,
}

fn image(spec: &ServiceSpec) -> &str {
    spec.task
        .as_ref()
        .and_then(|t| t.container.as_ref())
        .map_or("", |c| c.image.as_str())
}

fn task_image(t: &Task) -> &str {
    t.spec
        .as_ref()
        .and_then(|t| t.container.as_ref())
        .map_or("", |c| c.image.as_str())
}

fn spec(name: &str, mode: Mode) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        task: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: "img:1".into(),
                ..Default::default()
            }),
            restart: Some(RestartPolicy {
                condition: RestartCondition::Any as i32,
                delay_ms: 5000,
                ..Default::default()
            }),
            ..Default::default()
        }),
        mode: Some(mode),
        ..Default::default()
    }
}

fn replicated(name: &str, replicas: u64) -> ServiceSpec {
    spec(name, Mode::Replicated(ReplicatedService { replicas }))
}

fn global(name: &str) -> ServiceSpec {
    spec(name, Mode::Global(GlobalService {}))
}

fn restart(spec: &mut ServiceSpec) -> &mut RestartPolicy {
    spec.task
        .get_or_insert_with(Default::default)
        .restart
        .get_or_insert_with(Default::default)
}

fn set_image(spec: &mut ServiceSpec, img: &str) {
    spec.task
        .get_or_insert_with(Default::default)
        .container
        .get_or_insert_with(Default::default)
        .image = img.into();
}

fn update_config(parallelism: u64, order: UpdateOrder) -> UpdateConfig {
    UpdateConfig {
        parallelism,
        monitor_ms: 1000,
        order: order as i32,
        ..Default::default()
    }
}

fn desired(t: &Task) -> TaskState {
    TaskState::try_from(t.desired_state).expect("known desired state")
}

impl Sim {
    fn new() -> Sim {
        Sim {
            state: State::default(),
            index: 0,
            env: TestEnv::default(),
            now: T0,
        }
    }

    fn write(&mut self, b: Batch) {
        self.index += 1;
        self.state
            .apply(self.index, &b.into_proto())
            .expect("batch applies");
    }

    fn add_node(&mut self, id: &str) {
        let mut b = Batch::new();
        b.create(Node {
            id: id.into(),
            spec: Some(NodeSpec {
                availability: NodeAvailability::Active as i32,
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        self.write(b);
    }

    fn edit_node(&mut self, id: &str, f: impl FnOnce(&mut Node)) {
        let mut n = self.state.nodes[id].clone();
        f(&mut n);
        let mut b = Batch::new();
        b.update(n);
        self.write(b);
    }

    fn node_state(&mut self, id: &str, state: NodeState) {
        self.edit_node(id, |n| {
            n.status.get_or_insert_with(Default::default).state = state as i32
        });
    }

    fn node_availability(&mut self, id: &str, a: NodeAvailability) {
        self.edit_node(id, |n| {
            n.spec.get_or_insert_with(Default::default).availability = a as i32
        });
    }

    fn remove_node(&mut self, id: &str) {
        let n = self.state.nodes[id].clone();
        let mut b = Batch::new();
        b.remove(n);
        self.write(b);
    }

    fn history_limit(&mut self, limit: u32) {
        let mut b = Batch::new();
        b.create(Cluster {
            id: "c".into(),
            spec: Some(ClusterSpec {
                task_history_limit: limit,
                ..Default::default()
            }),
            ..Default::default()
        });
        self.write(b);
    }

    fn add_service(&mut self, id: &str, spec: ServiceSpec) {
        let mut b = Batch::new();
        b.create(Service {
            id: id.into(),
            meta: Some(Meta {
                created_at: self.now,
                ..Default::default()
            }),
            spec: Some(spec),
            spec_version: 1,
            ..Default::default()
        });
        self.write(b);
    }

    fn edit_service(&mut self, id: &str, f: impl FnOnce(&mut Service)) {
        let mut s = self.state.services[id].clone();
        f(&mut s);
        let mut b = Batch::new();
        b.update(s);
        self.write(b);
    }

    /// What the API does on `service update`: the spec changes, the old one is kept.
    fn update_spec(&mut self, id: &str, f: impl FnOnce(&mut ServiceSpec)) {
        self.edit_service(id, |s| {
            let old = s.spec.clone();
            f(s.spec.as_mut().expect("spec"));
            s.previous_spec = old;
            s.spec_version += 1;
        });
    }

    fn remove_service(&mut self, id: &str) {
        let s = self.state.services[id].clone();
        let mut b = Batch::new();
        b.remove(s);
        self.write(b);
    }

    fn service(&self, id: &str) -> &Service {
        &self.state.services[id]
    }

    fn update_state(&self, id: &str) -> UpdateState {
        update::state_of(self.service(id))
    }

    fn edit_task(&mut self, id: &str, f: impl FnOnce(&mut Task)) {
        let mut t = self.state.tasks[id].clone();
        f(&mut t);
        let mut b = Batch::new();
        b.update(t);
        self.write(b);
    }

    /// An agent reports `state` for the task now.
    fn report(&mut self, id: &str, state: TaskState) {
        self.report_exit(id, state, if state == TaskState::Failed { 1 } else { 0 });
    }

    fn report_exit(&mut self, id: &str, state: TaskState, exit_code: i32) {
        let now = self.now;
        self.edit_task(id, |t| {
            let s = t.status.get_or_insert_with(Default::default);
            s.state = state as i32;
            s.timestamp = now;
            s.exit_code = exit_code;
        });
    }

    fn reconcile(&mut self) -> Reconciled {
        reconcile(&self.state, self.now, &mut self.env)
    }

    /// One pass: reconcile, apply, and check that a second call writes nothing. Returns the
    /// number of writes and the wake time.
    fn pass(&mut self) -> (usize, Option<i64>) {
        let r = self.reconcile();
        let n = r.batch.len();
        if n > 0 {
            self.write(r.batch);
            let again = self.reconcile();
            assert!(
                again.batch.is_empty(),
                "second pass at {} wrote {:#?}",
                self.now,
                again.batch.actions
            );
        }
        (n, r.wake_at)
    }

    fn tasks(&self, svc: &str) -> Vec<&Task> {
        let mut ts: Vec<&Task> = self
            .state
            .tasks
            .values()
            .filter(|t| t.service_id == svc)
            .collect();
        ts.sort_by_key(|t| (t.slot, t.node_id.clone(), created_at(t), t.id.clone()));
        ts
    }

    fn runnable(&self, svc: &str) -> Vec<&Task> {
        self.tasks(svc)
            .into_iter()
            .filter(|t| is_runnable(t))
            .collect()
    }

    fn runnable_ids(&self, svc: &str) -> Vec<String> {
        self.runnable(svc).iter().map(|t| t.id.clone()).collect()
    }

    fn slot(&self, svc: &str, slot: u64) -> Vec<&Task> {
        self.tasks(svc)
            .into_iter()
            .filter(|t| t.slot == slot)
            .collect()
    }

    fn runnable_in(&self, svc: &str, slot: u64) -> &Task {
        let r: Vec<&Task> = self
            .slot(svc, slot)
            .into_iter()
            .filter(|t| is_runnable(t))
            .collect();
        assert_eq!(r.len(), 1, "one runnable task in slot {slot}: {r:#?}");
        r[0]
    }

    fn usable(&self, n: &Node) -> bool {
        n.status.as_ref().map(|s| s.state) == Some(NodeState::Ready as i32)
            && availability(n) == NodeAvailability::Active
            && !self.env.ineligible.contains(&n.id)
    }

    /// The scheduler: places pending tasks on the usable node with the fewest runnable tasks
    /// of their service (lowest id among equals). Returns whether it wrote.
    fn schedule(&mut self) -> bool {
        let pending: Vec<Task> = self
            .state
            .tasks
            .values()
            .filter(|t| {
                t.node_id.is_empty()
                    && t.desired_state <= TaskState::Running as i32
                    && observed(t) == TaskState::Pending
            })
            .cloned()
            .collect();
        let mut wrote = false;
        for mut t in pending {
            let load = |n: &str| {
                self.state
                    .tasks
                    .values()
                    .filter(|o| o.service_id == t.service_id && o.node_id == n && is_runnable(o))
                    .count()
            };
            let best = self
                .state
                .nodes
                .values()
                .filter(|n| self.usable(n))
                .min_by_key(|n| (load(&n.id), n.id.clone()))
                .map(|n| n.id.clone());
            if let Some(node) = best {
                t.node_id = node;
                let s = t.status.get_or_insert_with(Default::default);
                s.state = TaskState::Assigned as i32;
                s.timestamp = self.now;
                let mut b = Batch::new();
                b.update(t);
                self.write(b);
                wrote = true;
            }
        }
        wrote
    }

    /// The agents of nodes that are not DOWN: start what should run, stop what should not.
    fn agents(&mut self) -> bool {
        let mut changes: Vec<(String, TaskState)> = Vec::new();
        for t in self.state.tasks.values() {
            let up = self
                .state
                .nodes
                .get(&t.node_id)
                .is_some_and(|n| !node_down(n));
            if !up {
                continue;
            }
            let obs = observed(t);
            let ready = t.desired_state == TaskState::Ready as i32;
            if ready && obs >= TaskState::Assigned && obs < TaskState::Ready {
                // Prepared, not started.
                changes.push((t.id.clone(), TaskState::Ready));
            } else if !ready
                && is_runnable(t)
                && obs >= TaskState::Assigned
                && obs < TaskState::Running
            {
                changes.push((t.id.clone(), TaskState::Running));
            } else if !is_runnable(t) && !is_terminal(obs) {
                changes.push((t.id.clone(), TaskState::Shutdown));
            }
        }
        let wrote = !changes.is_empty();
        for (id, state) in changes {
            self.report(&id, state);
        }
        wrote
    }

    /// Stop-first replacements whose old tasks have stopped start: a pass (its writes) and
    /// the agents.
    fn start_prepared(&mut self) -> usize {
        let n = self.pass().0;
        self.agents();
        n
    }

    /// Passes, scheduling and agents until nothing moves (without advancing time).
    fn settle(&mut self) -> Option<i64> {
        for _ in 0..50 {
            let (n, wake) = self.pass();
            let moved = self.schedule() | self.agents();
            if n == 0 && !moved {
                return wake;
            }
        }
        panic!("the cluster did not settle");
    }

    /// Settles, then jumps to each wake time, until nothing is left to wait for.
    fn run_to_end(&mut self) {
        for _ in 0..100 {
            match self.settle() {
                Some(at) => self.now = at,
                None => return,
            }
        }
        panic!("no end in sight");
    }

    fn nodes_of(&self, svc: &str) -> Vec<String> {
        self.runnable(svc)
            .iter()
            .map(|t| t.node_id.clone())
            .collect()
    }
}

/// A cluster with nodes n1..n`nodes`.
fn cluster(nodes: usize) -> Sim {
    let mut sim = Sim::new();
    for i in 1..=nodes {
        sim.add_node(&format!("n{i}"));
    }
    sim
}

// ----- predicates ------------------------------------------------------------------------------

#[test]
fn terminal_states() {
    use TaskState::*;
    for s in [
        New, Pending, Assigned, Accepted, Preparing, Ready, Starting, Running,
    ] {
        assert!(!is_terminal(s), "{s:?}");
    }
    for s in [Complete, Shutdown, Failed, Rejected, Remove, Orphaned] {
        assert!(is_terminal(s), "{s:?}");
    }
}

#[test]
fn outdated_compares_versions_then_content() {
    let mut svc = Service {
        spec: Some(replicated("web", 1)),
        spec_version: 1,
        ..Default::default()
    };
    let task = Task {
        spec: svc.spec.as_ref().and_then(|s| s.task.clone()),
        spec_version: 1,
        ..Default::default()
    };
    assert!(!outdated(&task, &svc));
    // A new version that leaves the task spec alone (replicas) keeps the task current.
    svc.spec_version = 2;
    if let Some(Mode::Replicated(r)) = svc.spec.as_mut().and_then(|s| s.mode.as_mut()) {
        r.replicas = 5;
    }
    assert!(!outdated(&task, &svc));
    // force_update is part of the task spec.
    svc.spec
        .as_mut()
        .and_then(|s| s.task.as_mut())
        .expect("task")
        .force_update = 1;
    assert!(outdated(&task, &svc));
    // Same content, different endpoint.
    svc.spec
        .as_mut()
        .and_then(|s| s.task.as_mut())
        .expect("task")
        .force_update = 0;
    svc.spec.as_mut().expect("spec").endpoint = Some(EndpointSpec {
        ports: vec![PortConfig {
            target_port: 80,
            published_port: 8080,
            ..Default::default()
        }],
    });
    assert!(outdated(&task, &svc));
    // The same version is never outdated (the version is what a task was made from).
    svc.spec_version = 1;
    assert!(!outdated(&task, &svc));
}

#[test]
fn runnable_and_up() {
    let mut t = Task {
        desired_state: TaskState::Running as i32,
        ..Default::default()
    };
    assert!(is_runnable(&t));
    assert!(!is_up(&t));
    t.status = Some(flotilla_proto::control::v1::TaskStatus {
        state: TaskState::Running as i32,
        health: "starting".into(),
        ..Default::default()
    });
    assert!(!is_up(&t));
    t.status.as_mut().expect("status").health = "healthy".into();
    assert!(is_up(&t));
    t.desired_state = TaskState::Shutdown as i32;
    assert!(!is_runnable(&t));
}

// ----- replicated services ---------------------------------------------------------------------

#[test]
fn replicated_service_gets_one_pending_task_per_slot() {
    let mut sim = Sim::new();
    let mut s = replicated("web", 3);
    s.endpoint = Some(EndpointSpec {
        ports: vec![PortConfig {
            target_port: 80,
            ..Default::default()
        }],
    });
    sim.add_service("s1", s.clone());
    let r = sim.reconcile();
    assert_eq!(r.batch.len(), 3);
    assert_eq!(r.wake_at, None);
    sim.write(r.batch);
    let tasks = sim.tasks("s1");
    assert_eq!(tasks.iter().map(|t| t.slot).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["t001", "t002", "t003"]
    );
    for t in tasks {
        assert_eq!(t.service_id, "s1");
        assert_eq!(t.service_name, "web");
        assert_eq!(t.spec, s.task);
        assert_eq!(t.endpoint, s.endpoint);
        assert_eq!(t.spec_version, 1);
        assert_eq!(desired(t), TaskState::Running);
        assert_eq!(t.node_id, "");
        assert_eq!(t.attempt, 0);
        let st = t.status.as_ref().expect("status");
        assert_eq!(st.state, TaskState::Pending as i32);
        assert_eq!(st.timestamp, T0);
        assert_eq!(st.message, MSG_PENDING);
        let m = t.meta.expect("meta");
        assert_eq!((m.created_at, m.updated_at), (T0, T0));
    }
    // Applied: nothing more to do.
    assert!(sim.reconcile().batch.is_empty());
    // And after the scheduler and the agents did their part, still nothing.
    sim.add_node("n1");
    assert_eq!(sim.settle(), None);
    assert_eq!(sim.runnable("s1").len(), 3);
    assert!(sim.runnable("s1").iter().all(|t| is_up(t)));
}

#[test]
fn scale_down_takes_from_the_most_loaded_node_then_scale_up_reuses_slots() {
    let mut sim = cluster(2);
    sim.add_service("s1", replicated("web", 3));
    sim.pass();
    // Place slots 1 and 2 on n1, slot 3 on n2.
    for (slot, node) in [(1, "n1"), (2, "n1"), (3, "n2")] {
        let id = sim.runnable_in("s1", slot).id.clone();
        sim.edit_task(&id, |t| t.node_id = node.into());
        sim.report(&id, TaskState::Running);
    }
    sim.update_spec("s1", |s| {
        s.mode = Some(Mode::Replicated(ReplicatedService { replicas: 2 }))
    });
    assert_eq!(sim.pass().0, 1);
    assert_eq!(desired(sim.slot("s1", 2)[0]), TaskState::Shutdown);
    assert_eq!(
        sim.runnable("s1")
            .iter()
            .map(|t| t.slot)
            .collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(
        sim.update_state("s1"),
        UpdateState::Unknown,
        "no task changed spec"
    );
    sim.agents();
    // n1 and n2 hold one each: the higher slot goes.
    sim.update_spec("s1", |s| {
        s.mode = Some(Mode::Replicated(ReplicatedService { replicas: 1 }))
    });
    assert_eq!(sim.pass().0, 1);
    assert_eq!(
        sim.runnable("s1")
            .iter()
            .map(|t| t.slot)
            .collect::<Vec<_>>(),
        [1]
    );
    sim.agents();
    sim.update_spec("s1", |s| {
        s.mode = Some(Mode::Replicated(ReplicatedService { replicas: 3 }))
    });
    assert_eq!(sim.pass().0, 2);
    let r = sim.runnable("s1");
    assert_eq!(r.iter().map(|t| t.slot).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(r[1].attempt, 0);
    assert_eq!(r[1].spec_version, 4);
    assert_eq!(sim.slot("s1", 2).len(), 2, "the old task stays as history");
}

#[test]
fn scale_down_prefers_tasks_that_do_not_run() {
    let mut sim = cluster(1);
    sim.add_service("s1", replicated("web", 3));
    sim.settle();
    let failed = sim.runnable_in("s1", 1).id.clone();
    sim.report(&failed, TaskState::Failed);
    sim.update_spec("s1", |s| {
        s.mode = Some(Mode::Replicated(ReplicatedService { replicas: 2 }))
    });
    assert_eq!(sim.pass(), (1, None));
    assert_eq!(desired(&sim.state.tasks[&failed]), TaskState::Shutdown);
    assert_eq!(
        sim.runnable("s1")
            .iter()
            .map(|t| t.slot)
            .collect::<Vec<_>>(),
        [2, 3]
    );
}

// ----- restarts ----------------------------------------------------------------------------------

#[test]
fn failed_task_is_replaced_in_its_slot_after_the_delay() {
    let mut sim = cluster(1);
    sim.add_service("s1", replicated("web", 1));
    sim.settle();
    let old = sim.runnable_in("s1", 1).id.clone();
    sim.now = T0 + 1000;
    sim.report(&old, TaskState::Failed);
    assert_eq!(sim.pass(), (0, Some(T0 + 6000)));
    sim.now = T0 + 5999;
    assert_eq!(sim.pass(), (0, Some(T0 + 6000)));
    sim.now = T0 + 6000;
    assert_eq!(sim.pass(), (2, None));
    let t = &sim.state.tasks[&old];
    assert_eq!(desired(t), TaskState::Shutdown);
    assert_eq!(
        observed(t),
        TaskState::Failed,
        "observed status is the agent's"
    );
    let new = sim.runnable_in("s1", 1);
    assert_ne!(new.id, old);
    assert_eq!(new.attempt, 1);
    assert_eq!(new.node_id, "");
    assert_eq!(created_at(new), T0 + 6000);
    assert_eq!(observed(new), TaskState::Pending);
}

#[test]
fn restart_delay_zero_means_the_default() {
    let mut sim = cluster(1);
    let mut s = replicated("web", 1);
    restart(&mut s).delay_ms = 0;
    sim.add_service("s1", s);
    sim.settle();
    let old = sim.runnable_in("s1", 1).id.clone();
    sim.report(&old, TaskState::Failed);
    assert_eq!(sim.pass(), (0, Some(T0 + DEFAULT_RESTART_DELAY_MS as i64)));
}

#[test]
fn max_attempts_without_window_counts_every_restart_of_the_slot() {
    let mut sim = cluster(1);
    let mut s = replicated("web", 1);
    restart(&mut s).max_attempts = 2;
    restart(&mut s).delay_ms = 100;
    sim.add_service("s1", s);
    sim.settle();
    for attempt in 0..2 {
        let t = sim.runnable_in("s1", 1).id.clone();
        assert_eq!(sim.state.tasks[&t].attempt, attempt);
        sim.report(&t, TaskState::Failed);
        sim.now += 100;
        assert_eq!(sim.pass(), (2, None));
        sim.settle();
    }
    let last = sim.runnable_in("s1", 1).id.clone();
    assert_eq!(sim.state.tasks[&last].attempt, 2);
    sim.report(&last, TaskState::Failed);
    sim.now += 100;
    // Given up: the slot is done, not missing.
    assert_eq!(sim.pass(), (1, None));
    assert_eq!(desired(&sim.state.tasks[&last]), TaskState::Complete);
    assert!(sim.runnable("s1").is_empty());
    sim.now += 1_000_000;
    assert_eq!(sim.pass(), (0, None));
    // Scaling up adds a slot; the done one stays done.
    sim.update_spec("s1", |s| {
        s.mode = Some(Mode::Replicated(ReplicatedService { replicas: 2 }))
    });
    assert_eq!(sim.pass().0, 1);
    assert_eq!(
        sim.runnable("s1")
            .iter()
            .map(|t| t.slot)
            .collect::<Vec<_>>(),
        [2]
    );
}

#[test]
fn max_attempts_within_a_window() {
    let mut sim = cluster(1);
    let mut s = replicated("web", 2);
    let p = restart(&mut s);
    p.max_attempts = 1;
    p.window_ms = 10_000;
    p.delay_ms = 1000;
    sim.add_service("s1", s);
    sim.settle();
    // Both slots fail at T0 and restart at T0 + 1000.
    for slot in [1, 2] {
        let t = sim.runnable_in("s1", slot).id.clone();
        sim.report(&t, TaskState::Failed);
    }
    sim.now = T0 + 1000;
    assert_eq!(sim.pass().0, 4);
    sim.settle();
    // Slot 1 fails again within the window: given up.
    sim.now = T0 + 5000;
    let t1 = sim.runnable_in("s1", 1).id.clone();
    sim.report(&t1, TaskState::Failed);
    assert_eq!(sim.pass(), (1, None));
    assert_eq!(desired(&sim.state.tasks[&t1]), TaskState::Complete);
    // Slot 2 fails again after the window has moved past its restart: restarted.
    sim.now = T0 + 30_000;
    let t2 = sim.runnable_in("s1", 2).id.clone();
    sim.report(&t2, TaskState::Failed);
    assert_eq!(sim.pass(), (0, Some(T0 + 31_000)));
    sim.now = T0 + 31_000;
    assert_eq!(sim.pass(), (2, None));
    assert_eq!(sim.runnable_in("s1", 2).attempt, 2);
}

#[test]
fn on_failure_leaves_a_completed_slot_done() {
    let mut sim = cluster(1);
    let mut s = replicated("job", 2);
    restart(&mut s).condition = RestartCondition::OnFailure as i32;
    sim.add_service("s1", s);
    sim.settle();
    let ok = sim.runnable_in("s1", 1).id.clone();
    let bad = sim.runnable_in("s1", 2).id.clone();
    sim.report_exit(&ok, TaskState::Complete, 0);
    sim.report_exit(&bad, TaskState::Complete, 3);
    // Exit 0: done at once, no delay. Exit 3: a failure, restarted after the delay.
    assert_eq!(sim.pass(), (1, Some(T0 + 5000)));
    assert_eq!(desired(&sim.state.tasks[&ok]), TaskState::Complete);
    sim.now = T0 + 5000;
    assert_eq!(sim.pass(), (2, None));
    assert_eq!(sim.runnable("s1").len(), 1);
    assert_eq!(sim.runnable_in("s1", 2).attempt, 1);
    sim.settle();
    assert_eq!(
        sim.tasks("s1").len(),
        3,
        "no replacement for the completed slot"
    );
}

#[test]
fn condition_none_never_restarts() {
    let mut sim = cluster(1);
    let mut s = replicated("job", 1);
    restart(&mut s).condition = RestartCondition::None as i32;
    sim.add_service("s1", s);
    sim.settle();
    let t = sim.runnable_in("s1", 1).id.clone();
    sim.report(&t, TaskState::Failed);
    assert_eq!(sim.pass(), (1, None));
    assert_eq!(desired(&sim.state.tasks[&t]), TaskState::Complete);
    sim.now += 100_000;
    assert_eq!(sim.pass(), (0, None));
}

#[test]
fn a_forced_update_runs_a_done_slot_again() {
    let mut sim = cluster(1);
    let mut s = replicated("job", 1);
    restart(&mut s).condition = RestartCondition::None as i32;
    sim.add_service("s1", s);
    sim.settle();
    let t = sim.runnable_in("s1", 1).id.clone();
    sim.report_exit(&t, TaskState::Complete, 0);
    sim.settle();
    assert!(sim.runnable("s1").is_empty());
    sim.update_spec("s1", |s| {
        s.task.as_mut().expect("task").force_update += 1;
    });
    assert_eq!(sim.pass().0, 1);
    let new = sim.runnable_in("s1", 1);
    assert_eq!((new.spec_version, new.attempt), (2, 0));
}

// ----- node loss and drain -----------------------------------------------------------------------

#[test]
fn tasks_of_a_down_node_are_replaced_at_once() {
    let mut sim = cluster(2);
    let mut s = replicated("web", 2);
    restart(&mut s).max_attempts = 1;
    sim.add_service("s1", s);
    sim.settle();
    assert_eq!(sim.nodes_of("s1"), ["n1", "n2"]);
    let lost = sim.runnable_in("s1", 2).id.clone();
    sim.now = T0 + 10;
    sim.node_state("n2", NodeState::Down);
    assert_eq!(sim.pass(), (2, None));
    let t = &sim.state.tasks[&lost];
    assert_eq!(desired(t), TaskState::Shutdown);
    let st = t.status.as_ref().expect("status");
    assert_eq!(
        st.state,
        TaskState::Running as i32,
        "observed state untouched"
    );
    assert_eq!(st.message, MSG_NODE_DOWN);
    let new = sim.runnable_in("s1", 2);
    assert_eq!((new.attempt, new.node_id.as_str()), (0, ""));
    assert_eq!(created_at(new), T0 + 10);
    sim.settle();
    assert_eq!(sim.nodes_of("s1"), ["n1", "n1"]);
    // Not an attempt: the replacement may still be restarted once.
    let t = sim.runnable_in("s1", 2).id.clone();
    sim.report(&t, TaskState::Failed);
    sim.now += 5000;
    assert_eq!(sim.pass().0, 2);
    // The node comes back: its old task is not reused, nothing to do.
    sim.node_state("n2", NodeState::Ready);
    assert_eq!(sim.pass(), (0, None));
}

#[test]
fn tasks_of_a_removed_node_are_replaced_and_reaped() {
    let mut sim = cluster(2);
    sim.add_service("s1", replicated("web", 2));
    sim.settle();
    let lost = sim.runnable_in("s1", 1).id.clone();
    sim.remove_node("n1");
    // The lost task ends (and, nothing running it, may be reaped later); a replacement comes.
    assert_eq!(sim.pass().0, 2);
    assert_eq!(desired(&sim.state.tasks[&lost]), TaskState::Shutdown);
    sim.settle();
    assert_eq!(sim.nodes_of("s1"), ["n2", "n2"]);
}

#[test]
fn drained_node_tasks_move() {
    let mut sim = cluster(2);
    sim.add_service("s1", replicated("web", 2));
    sim.settle();
    let moved = sim.runnable_in("s1", 2).id.clone();
    sim.node_availability("n2", NodeAvailability::Drain);
    assert_eq!(sim.pass(), (2, None));
    let t = &sim.state.tasks[&moved];
    assert_eq!(desired(t), TaskState::Shutdown);
    assert_ne!(t.status.as_ref().expect("status").message, MSG_NODE_DOWN);
    sim.settle();
    assert_eq!(sim.nodes_of("s1"), ["n1", "n1"]);
    assert_eq!(observed(&sim.state.tasks[&moved]), TaskState::Shutdown);
    // Pause keeps what runs.
    sim.node_availability("n2", NodeAvailability::Active);
    sim.node_availability("n1", NodeAvailability::Pause);
    assert_eq!(sim.pass(), (0, None));
}

#[test]
fn tasks_move_off_a_node_that_no_longer_meets_their_constraints() {
    let mut sim = cluster(2);
    let mut sp = replicated("web", 2);
    sp.task
        .get_or_insert_with(Default::default)
        .placement
        .get_or_insert_with(Default::default)
        .constraints = vec!["node.labels.zone==a".into()];
    sim.add_service("s1", sp);
    // A service without constraints is never checked.
    sim.add_service("s2", replicated("api", 1));
    sim.env.ineligible.insert("n2".into());
    sim.settle();
    assert_eq!(sim.nodes_of("s1"), ["n1", "n1"]);
    assert_eq!(sim.nodes_of("s2"), ["n1"]);
    let before = sim.runnable_ids("s1");
    // The label moves from n1 to n2: both tasks of s1 move (2 shutdowns, 2 new tasks),
    // attempt unchanged; s2 stays.
    sim.env.ineligible.remove("n2");
    sim.env.ineligible.insert("n1".into());
    assert_eq!(sim.pass(), (4, None));
    sim.settle();
    assert_eq!(sim.nodes_of("s1"), ["n2", "n2"]);
    assert_eq!(sim.nodes_of("s2"), ["n1"]);
    for id in before {
        assert_eq!(desired(&sim.state.tasks[&id]), TaskState::Shutdown);
    }
    assert!(sim.runnable("s1").iter().all(|t| t.attempt == 0));
}

// ----- global services ---------------------------------------------------------------------------

#[test]
fn global_service_follows_the_nodes() {
    let mut sim = cluster(3);
    sim.add_service("g", global("agent"));
    assert_eq!(sim.pass(), (3, None));
    let ts = sim.runnable("g");
    assert_eq!(
        ts.iter().map(|t| t.node_id.as_str()).collect::<Vec<_>>(),
        ["n1", "n2", "n3"]
    );
    for t in &ts {
        assert_eq!(t.slot, 0);
        assert_eq!(observed(t), TaskState::Pending);
        assert_eq!(desired(t), TaskState::Running);
    }
    // The test's agents run what is assigned; preset tasks are assigned by the dispatcher.
    for id in sim.runnable_ids("g") {
        sim.report(&id, TaskState::Running);
    }
    // A node joins.
    sim.add_node("n4");
    assert_eq!(sim.pass(), (1, None));
    assert_eq!(sim.runnable("g").len(), 4);
    // Drained, ineligible: tasks end, no replacement.
    sim.node_availability("n2", NodeAvailability::Drain);
    sim.env.ineligible.insert("n3".into());
    assert_eq!(sim.pass(), (2, None));
    assert_eq!(
        sim.runnable("g")
            .iter()
            .map(|t| t.node_id.as_str())
            .collect::<Vec<_>>(),
        ["n1", "n4"]
    );
    // Down: ends with "node down".
    let on_n4 = sim.runnable("g")[1].id.clone();
    sim.node_state("n4", NodeState::Down);
    assert_eq!(sim.pass(), (1, None));
    let t = &sim.state.tasks[&on_n4];
    assert_eq!(desired(t), TaskState::Shutdown);
    assert_eq!(t.status.as_ref().expect("status").message, MSG_NODE_DOWN);
    // Back: a new task, the old one is not reused.
    sim.node_state("n4", NodeState::Ready);
    assert_eq!(sim.pass(), (1, None));
    let r = sim.runnable("g");
    assert_eq!(r[1].node_id, "n4");
    assert_ne!(r[1].id, on_n4);
    // A paused node gets nothing new but keeps what it has.
    sim.add_node("n5");
    sim.node_availability("n5", NodeAvailability::Pause);
    sim.node_availability("n1", NodeAvailability::Pause);
    assert_eq!(sim.pass(), (0, None));
    assert_eq!(sim.runnable("g").len(), 2);
}

#[test]
fn global_service_skips_nodes_without_an_agent() {
    let mut sim = cluster(2);
    // A manager that runs no agent: its node stays UNKNOWN.
    sim.add_node("m1");
    sim.node_state("m1", NodeState::Unknown);
    sim.add_service("g", global("agent"));
    assert_eq!(sim.pass(), (2, None));
    assert_eq!(sim.nodes_of("g"), ["n1", "n2"]);
    // Its agent starts: it gets its task.
    sim.node_state("m1", NodeState::Ready);
    assert_eq!(sim.pass(), (1, None));
    assert_eq!(sim.nodes_of("g"), ["m1", "n1", "n2"]);
}

#[test]
fn global_task_restarts_on_its_node_and_removed_nodes_lose_their_tasks() {
    let mut sim = cluster(2);
    sim.add_service("g", global("agent"));
    sim.pass();
    for id in sim.runnable_ids("g") {
        sim.report(&id, TaskState::Running);
    }
    let t = sim.runnable("g")[0].id.clone();
    sim.report(&t, TaskState::Failed);
    assert_eq!(sim.pass(), (0, Some(T0 + 5000)));
    sim.now = T0 + 5000;
    assert_eq!(sim.pass(), (2, None));
    let new = sim.runnable("g")[0];
    assert_eq!((new.node_id.as_str(), new.slot, new.attempt), ("n1", 0, 1));
    // n2 goes away: nothing runs its task any more and nothing is kept for a node that is
    // gone, so the task ends and is deleted in one write.
    let ran = sim.runnable("g")[1].id.clone();
    sim.remove_node("n2");
    assert_eq!(sim.pass(), (1, None));
    assert!(!sim.state.tasks.contains_key(&ran));
    assert_eq!(sim.tasks("g").len(), 2);
    assert!(sim.tasks("g").iter().all(|t| t.node_id == "n1"));
}

// ----- service removal and the reaper ------------------------------------------------------------

#[test]
fn removed_service_tasks_get_remove_then_are_deleted() {
    let mut sim = cluster(1);
    sim.add_service("s1", replicated("web", 2));
    sim.settle();
    // One ended task in history.
    let failed = sim.runnable_in("s1", 1).id.clone();
    sim.report(&failed, TaskState::Failed);
    sim.now += 5000;
    sim.settle();
    assert_eq!(sim.tasks("s1").len(), 3);
    sim.remove_service("s1");
    // The ended one is deleted at once; the running ones are asked to go.
    assert_eq!(sim.pass(), (3, None));
    assert!(!sim.state.tasks.contains_key(&failed));
    let ts = sim.tasks("s1");
    assert_eq!(ts.len(), 2);
    assert!(ts.iter().all(|t| desired(t) == TaskState::Remove));
    // The agent stops them; then they are deleted.
    sim.agents();
    assert_eq!(sim.pass(), (2, None));
    assert!(sim.state.tasks.is_empty());
}

#[test]
fn history_is_limited_per_slot() {
    let mut sim = cluster(1);
    sim.history_limit(2);
    let mut s = replicated("web", 2);
    restart(&mut s).delay_ms = 10;
    sim.add_service("s1", s);
    sim.settle();
    for _ in 0..4 {
        let t = sim.runnable_in("s1", 1).id.clone();
        sim.report(&t, TaskState::Failed);
        sim.now += 10;
        sim.settle();
        assert!(sim.slot("s1", 1).len() <= 2, "{:#?}", sim.slot("s1", 1));
    }
    let slot1 = sim.slot("s1", 1);
    assert_eq!(slot1.len(), 2);
    assert_eq!(desired(slot1[0]), TaskState::Shutdown);
    assert_eq!(slot1[1].attempt, 4);
    assert_eq!(sim.slot("s1", 2).len(), 1);
}

#[test]
fn default_history_is_five_and_a_restart_window_keeps_more() {
    let mut sim = cluster(1);
    let mut s = replicated("web", 1);
    restart(&mut s).delay_ms = 10;
    sim.add_service("s1", s);
    let mut w = replicated("windowed", 1);
    let p = restart(&mut w);
    p.delay_ms = 10;
    p.max_attempts = 7;
    p.window_ms = 1_000_000;
    sim.add_service("s2", w);
    sim.settle();
    for _ in 0..8 {
        for svc in ["s1", "s2"] {
            if let Some(t) = sim.runnable(svc).first().map(|t| t.id.clone()) {
                sim.report(&t, TaskState::Failed);
            }
        }
        sim.now += 10;
        sim.settle();
    }
    assert_eq!(sim.tasks("s1").len(), DEFAULT_TASK_HISTORY as usize);
    // 7 restarts allowed in the window, all kept to count them: 8 tasks, the last one done.
    let s2 = sim.tasks("s2");
    assert_eq!(s2.len(), 8);
    assert_eq!(desired(s2[7]), TaskState::Complete);
}

// ----- rolling updates ---------------------------------------------------------------------------

/// Five running replicas on three nodes, updated to img:2 with `cfg`.
fn five_updating(cfg: UpdateConfig) -> Sim {
    let mut sim = cluster(3);
    let mut s = replicated("web", 5);
    s.update = Some(cfg);
    sim.add_service("s1", s);
    sim.settle();
    sim.update_spec("s1", |s| set_image(s, "img:2"));
    sim
}

fn count(sim: &Sim, img: &str) -> usize {
    sim.runnable("s1")
        .iter()
        .filter(|t| task_image(t) == img)
        .count()
}

#[test]
fn rolling_update_stop_first_two_at_a_time() {
    let mut sim = five_updating(update_config(2, UpdateOrder::StopFirst));
    // Batch 1: the update starts, slots 1 and 2 are replaced.
    assert_eq!(sim.pass(), (5, None));
    let st = sim.service("s1").update_status.clone().expect("status");
    assert_eq!(st.state, UpdateState::Updating as i32);
    assert_eq!(st.started_at, T0);
    assert_eq!(st.message, "update in progress");
    assert_eq!((count(&sim, "img:1"), count(&sim, "img:2")), (3, 2));
    for slot in [1, 2] {
        let t = sim.runnable_in("s1", slot);
        assert_eq!((task_image(t), t.spec_version, t.attempt), ("img:2", 2, 0));
        assert_eq!(sim.slot("s1", slot).len(), 2);
    }
    // In flight until they run.
    sim.schedule();
    assert_eq!(sim.pass(), (0, None));
    sim.agents();
    // Stop-first: the new tasks were placed and prepared, not started, while the old ones
    // ran; the old ones have stopped now, so the new ones start.
    for slot in [1, 2] {
        let t = sim.runnable_in("s1", slot);
        assert_eq!(
            (desired(t), observed(t)),
            (TaskState::Ready, TaskState::Ready)
        );
    }
    assert_eq!(sim.start_prepared(), 2);
    assert_eq!(desired(sim.runnable_in("s1", 1)), TaskState::Running);
    // Batch 2 and 3.
    assert_eq!(sim.pass(), (4, None));
    assert_eq!(count(&sim, "img:2"), 4);
    sim.schedule();
    sim.agents();
    assert_eq!(sim.start_prepared(), 2);
    assert_eq!(sim.pass(), (2, None));
    assert_eq!(count(&sim, "img:2"), 5);
    sim.schedule();
    sim.agents();
    assert_eq!(sim.start_prepared(), 1);
    // All up: monitored for 1 s before completing.
    sim.now = T0 + 500;
    assert_eq!(sim.pass(), (0, Some(T0 + 1000)));
    assert_eq!(sim.update_state("s1"), UpdateState::Updating);
    sim.now = T0 + 1000;
    assert_eq!(sim.pass(), (1, None));
    let st = sim.service("s1").update_status.clone().expect("status");
    assert_eq!(st.state, UpdateState::Completed as i32);
    assert_eq!(st.completed_at, T0 + 1000);
    assert_eq!(st.message, "update completed");
    assert_eq!(sim.runnable("s1").len(), 5);
    assert_eq!(sim.settle(), None);
}

#[test]
fn stop_first_starts_the_new_task_once_the_old_one_has_stopped() {
    let mut sim = five_updating(update_config(1, UpdateOrder::StopFirst));
    // The update starts: slot 1's old task ends, its replacement waits in READY.
    assert_eq!(sim.pass(), (3, None));
    let new = sim.runnable_in("s1", 1).id.clone();
    let old = sim
        .slot("s1", 1)
        .iter()
        .find(|t| t.id != new)
        .map(|t| t.id.clone())
        .expect("old task");
    assert_eq!(desired(&sim.state.tasks[&new]), TaskState::Ready);
    // Placed, prepared; the old one still runs (its agent has not stopped it yet): it waits.
    sim.schedule();
    sim.report(&new, TaskState::Ready);
    assert_eq!(sim.pass(), (0, None));
    assert_eq!(desired(&sim.state.tasks[&new]), TaskState::Ready);
    // Stopped: the new one may start.
    sim.report(&old, TaskState::Shutdown);
    assert_eq!(sim.pass(), (1, None));
    assert_eq!(desired(&sim.state.tasks[&new]), TaskState::Running);
    // An old task that had already ended is not waited for: its replacement runs at once.
    let slot2 = sim.runnable_in("s1", 2).id.clone();
    sim.report(&slot2, TaskState::Failed);
    sim.agents();
    sim.run_to_end();
    assert_eq!(sim.update_state("s1"), UpdateState::Completed);
    assert!(sim
        .runnable("s1")
        .iter()
        .all(|t| desired(t) == TaskState::Running && task_image(t) == "img:2"));
}

#[test]
fn rolling_update_start_first_keeps_the_old_task_until_the_new_one_is_up() {
    let mut sim = five_updating(update_config(2, UpdateOrder::StartFirst));
    assert_eq!(sim.pass(), (3, None));
    assert_eq!((count(&sim, "img:1"), count(&sim, "img:2")), (5, 2));
    sim.schedule();
    assert_eq!(sim.pass(), (0, None), "new tasks not up yet");
    // Started but unhealthy-so-far: still not up.
    let new1 = sim
        .runnable("s1")
        .iter()
        .find(|t| task_image(t) == "img:2")
        .map(|t| t.id.clone())
        .expect("new");
    sim.agents();
    sim.edit_task(&new1, |t| {
        t.status.as_mut().expect("status").health = "starting".into()
    });
    // Slot 2's new task is up: its old one ends, and one more slot may start (its old task
    // stays).
    assert_eq!(sim.pass(), (2, None));
    assert_eq!((count(&sim, "img:1"), count(&sim, "img:2")), (4, 3));
    sim.edit_task(&new1, |t| {
        t.status.as_mut().expect("status").health = "healthy".into()
    });
    sim.schedule();
    sim.agents();
    sim.run_to_end();
    assert_eq!((count(&sim, "img:1"), count(&sim, "img:2")), (0, 5));
    assert_eq!(sim.update_state("s1"), UpdateState::Completed);
    for slot in 1..=5 {
        assert_eq!(sim.slot("s1", slot).len(), 2);
    }
}

#[test]
fn rolling_update_honours_the_delay() {
    let mut cfg = update_config(2, UpdateOrder::StopFirst);
    cfg.delay_ms = 10_000;
    let mut sim = five_updating(cfg);
    assert_eq!(sim.pass().0, 5);
    sim.now = T0 + 100;
    sim.schedule();
    sim.agents();
    assert_eq!(sim.start_prepared(), 2);
    assert_eq!(sim.pass(), (0, Some(T0 + 10_100)));
    sim.now = T0 + 10_099;
    assert_eq!(sim.pass(), (0, Some(T0 + 10_100)));
    sim.now = T0 + 10_100;
    assert_eq!(sim.pass(), (4, None));
    assert_eq!(count(&sim, "img:2"), 4);
}

#[test]
fn rolling_update_pauses_on_failure() {
    let mut sim = five_updating(update_config(1, UpdateOrder::StopFirst));
    sim.pass();
    sim.schedule();
    sim.agents();
    let new = sim.runnable_in("s1", 1).id.clone();
    sim.now = T0 + 300;
    sim.report(&new, TaskState::Failed);
    // Paused; the failed task itself still follows its restart policy.
    assert_eq!(sim.pass(), (1, Some(T0 + 5300)));
    let st = sim.service("s1").update_status.clone().expect("status");
    assert_eq!(st.state, UpdateState::Paused as i32);
    assert_eq!(
        st.message,
        format!("update paused due to failure or early termination of task {new}")
    );
    sim.now = T0 + 5300;
    assert_eq!(sim.pass(), (2, None));
    sim.run_to_end();
    assert_eq!((count(&sim, "img:1"), count(&sim, "img:2")), (4, 1));
    assert_eq!(sim.update_state("s1"), UpdateState::Paused);
}

#[test]
fn rolling_update_rolls_back_on_failure() {
    let mut cfg = update_config(1, UpdateOrder::StopFirst);
    cfg.failure_action = UpdateFailureAction::Rollback as i32;
    let mut sim = cluster(3);
    let mut s = replicated("web", 3);
    s.update = Some(cfg);
    s.rollback = Some(update_config(0, UpdateOrder::StopFirst));
    sim.add_service("s1", s);
    sim.settle();
    sim.update_spec("s1", |s| set_image(s, "img:2"));
    sim.pass();
    sim.schedule();
    sim.agents();
    let new = sim.runnable_in("s1", 1).id.clone();
    sim.now = T0 + 200;
    sim.report(&new, TaskState::Failed);
    // Rolled back in one batch: the spec swapped, the failed slot replaced with the old spec.
    let (n, _) = sim.pass();
    assert_eq!(n, 3);
    let svc = sim.service("s1").clone();
    assert_eq!(image(svc.spec.as_ref().expect("spec")), "img:1");
    assert_eq!(
        image(svc.previous_spec.as_ref().expect("previous")),
        "img:2"
    );
    assert_eq!(svc.spec_version, 3);
    let st = svc.update_status.clone().expect("status");
    assert_eq!(st.state, UpdateState::RollbackStarted as i32);
    assert_eq!(st.started_at, T0 + 200);
    assert_eq!(
        st.message,
        format!("update rolled back due to failure or early termination of task {new}")
    );
    let t = sim.runnable_in("s1", 1);
    assert_eq!((task_image(t), t.spec_version), ("img:1", 3));
    sim.run_to_end();
    assert_eq!(sim.update_state("s1"), UpdateState::RollbackCompleted);
    assert_eq!(count(&sim, "img:1"), 3);
    let st = sim.service("s1").update_status.clone().expect("status");
    assert_eq!(st.message, "rollback completed");
    assert_eq!(st.completed_at, T0 + 1200);
    // Slots 2 and 3 were never touched.
    assert_eq!(sim.slot("s1", 2).len(), 1);
}

#[test]
fn max_failure_ratio_lets_the_update_continue_through_one_failure() {
    let mut cfg = update_config(2, UpdateOrder::StopFirst);
    cfg.max_failure_ratio = 0.5;
    let mut sim = five_updating(cfg);
    sim.pass();
    sim.schedule();
    sim.agents();
    sim.start_prepared();
    let bad = sim.runnable_in("s1", 1).id.clone();
    sim.report(&bad, TaskState::Failed);
    // 1 failure of 2 updated slots = 0.5: go on; slot 1 waits for its restart, one slot starts.
    assert_eq!(sim.pass(), (2, Some(T0 + 5000)));
    assert_eq!(sim.update_state("s1"), UpdateState::Updating);
    assert_eq!(count(&sim, "img:2"), 3);
    sim.run_to_end();
    assert_eq!(sim.update_state("s1"), UpdateState::Completed);
    assert_eq!(count(&sim, "img:2"), 5);
}

#[test]
fn an_update_with_nothing_running_completes() {
    let mut sim = Sim::new();
    sim.add_service("s1", replicated("web", 0));
    sim.update_spec("s1", |s| set_image(s, "img:2"));
    sim.edit_service("s1", |s| {
        s.update_status = Some(flotilla_proto::control::v1::UpdateStatus {
            state: UpdateState::Updating as i32,
            started_at: T0,
            ..Default::default()
        })
    });
    assert_eq!(sim.pass(), (1, None));
    assert_eq!(sim.update_state("s1"), UpdateState::Completed);
}

#[test]
fn global_rolling_update() {
    let mut sim = cluster(3);
    let mut s = global("agent");
    s.update = Some(update_config(1, UpdateOrder::StopFirst));
    sim.add_service("g", s);
    sim.pass();
    for id in sim.runnable_ids("g") {
        sim.report(&id, TaskState::Running);
    }
    sim.update_spec("g", |s| set_image(s, "img:2"));
    assert_eq!(sim.pass(), (3, None));
    let new: Vec<&Task> = sim
        .runnable("g")
        .into_iter()
        .filter(|t| task_image(t) == "img:2")
        .collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].node_id, "n1");
    for _ in 0..10 {
        for id in sim.runnable_ids("g") {
            if observed(&sim.state.tasks[&id]) != TaskState::Running {
                sim.report(&id, TaskState::Running);
            }
        }
        sim.agents();
        match sim.pass() {
            (0, Some(at)) => sim.now = at,
            (0, None) => break,
            _ => {}
        }
    }
    assert_eq!(sim.update_state("g"), UpdateState::Completed);
    assert!(sim.runnable("g").iter().all(|t| task_image(t) == "img:2"));
}

// ----- rebalance ---------------------------------------------------------------------------------

fn rebalance_scenario(opt_in: bool) -> Sim {
    let mut sim = cluster(2);
    let mut s = replicated("web", 4);
    s.rebalance = opt_in;
    sim.add_service("s1", s);
    sim.settle();
    assert_eq!(sim.nodes_of("s1"), ["n1", "n2", "n1", "n2"]);
    sim.add_node("n3");
    sim
}

#[test]
fn rebalance_moves_tasks_to_a_new_node_only_when_opted_in() {
    let mut sim = rebalance_scenario(false);
    assert_eq!(sim.settle(), None);
    assert_eq!(sim.nodes_of("s1"), ["n1", "n2", "n1", "n2"]);

    let mut sim = rebalance_scenario(true);
    // One move: n1's highest slot, replaced without a node.
    assert_eq!(sim.pass(), (2, None));
    assert_eq!(sim.runnable_in("s1", 3).node_id, "");
    sim.run_to_end();
    assert_eq!(sim.nodes_of("s1"), ["n1", "n2", "n3", "n2"]);
    assert_eq!(sim.runnable("s1").len(), 4);
}

// ----- bounds ------------------------------------------------------------------------------------

#[test]
fn batches_are_bounded() {
    let mut sim = Sim::new();
    sim.add_service("s1", replicated("web", 1500));
    let r = sim.reconcile();
    assert_eq!(r.batch.len(), MAX_ACTIONS);
    assert_eq!(r.wake_at, Some(T0));
    sim.write(r.batch);
    let r = sim.reconcile();
    assert_eq!(r.batch.len(), 500);
    assert_eq!(r.wake_at, None);
    sim.write(r.batch);
    let slots: BTreeSet<u64> = sim.runnable("s1").iter().map(|t| t.slot).collect();
    assert_eq!(slots, (1..=1500).collect());
}

#[test]
fn shutdown_and_replacement_stay_together_when_the_batch_is_cut() {
    let mut sim = cluster(2);
    sim.add_service("s1", replicated("web", 4));
    sim.settle();
    sim.node_state("n2", NodeState::Down);
    let r = reconcile_limited(&sim.state, sim.now, &mut sim.env, 3);
    // Two slots lost: one (shutdown + replacement) pair fits in 3, the next does not.
    assert_eq!(r.batch.len(), 2);
    assert_eq!(r.wake_at, Some(sim.now));
    sim.write(r.batch);
    assert_eq!(sim.pass().0, 2);
    assert_eq!(sim.runnable("s1").len(), 4);
}

// ----- more update paths -------------------------------------------------------------------------

#[test]
fn an_unhealthy_new_task_is_a_failure() {
    let mut sim = five_updating(update_config(1, UpdateOrder::StopFirst));
    sim.pass();
    sim.schedule();
    sim.agents();
    sim.start_prepared();
    let new = sim.runnable_in("s1", 1).id.clone();
    sim.edit_task(&new, |t| {
        t.status.as_mut().expect("status").health = "unhealthy".into()
    });
    assert_eq!(sim.pass(), (1, None));
    assert_eq!(sim.update_state("s1"), UpdateState::Paused);
}

#[test]
fn a_failing_rollback_pauses() {
    let mut cfg = update_config(1, UpdateOrder::StopFirst);
    cfg.failure_action = UpdateFailureAction::Rollback as i32;
    let mut sim = cluster(1);
    let mut s = replicated("web", 2);
    s.update = Some(cfg);
    s.rollback = Some(cfg);
    sim.add_service("s1", s);
    sim.settle();
    sim.update_spec("s1", |s| set_image(s, "img:2"));
    sim.pass();
    sim.schedule();
    sim.agents();
    let bad = sim.runnable_in("s1", 1).id.clone();
    sim.report(&bad, TaskState::Failed);
    sim.pass();
    assert_eq!(sim.update_state("s1"), UpdateState::RollbackStarted);
    sim.schedule();
    sim.agents();
    let worse = sim.runnable_in("s1", 1).id.clone();
    assert_ne!(worse, bad);
    sim.report(&worse, TaskState::Rejected);
    assert_eq!(sim.pass().0, 1);
    let st = sim.service("s1").update_status.clone().expect("status");
    assert_eq!(st.state, UpdateState::RollbackPaused as i32);
    assert_eq!(
        st.message,
        format!("rollback paused due to failure or early termination of task {worse}")
    );
    // No second rollback: the spec stays where the rollback put it.
    assert_eq!(
        image(sim.service("s1").spec.as_ref().expect("spec")),
        "img:1"
    );
}

#[test]
fn a_rollback_asked_through_the_api_uses_the_rollback_config() {
    let mut sim = cluster(2);
    let mut s = replicated("web", 4);
    s.update = Some(update_config(1, UpdateOrder::StopFirst));
    s.rollback = Some(update_config(0, UpdateOrder::StopFirst));
    sim.add_service("s1", s);
    sim.settle();
    sim.update_spec("s1", |s| set_image(s, "img:2"));
    sim.run_to_end();
    assert_eq!(count(&sim, "img:2"), 4);
    // `service rollback`: the API swaps the specs and writes ROLLBACK_STARTED.
    let now = sim.now;
    sim.edit_service("s1", |s| {
        std::mem::swap(&mut s.spec, &mut s.previous_spec);
        s.spec_version += 1;
        s.update_status = Some(flotilla_proto::control::v1::UpdateStatus {
            state: UpdateState::RollbackStarted as i32,
            started_at: now,
            ..Default::default()
        });
    });
    // Parallelism 0: every slot at once.
    assert_eq!(sim.pass(), (8, None));
    assert_eq!(count(&sim, "img:1"), 4);
    sim.run_to_end();
    assert_eq!(sim.update_state("s1"), UpdateState::RollbackCompleted);
}

#[test]
fn a_paused_update_resumes_when_the_api_resets_its_state() {
    let mut sim = five_updating(update_config(1, UpdateOrder::StopFirst));
    sim.pass();
    sim.schedule();
    sim.agents();
    let bad = sim.runnable_in("s1", 1).id.clone();
    sim.report(&bad, TaskState::Failed);
    sim.pass();
    assert_eq!(sim.update_state("s1"), UpdateState::Paused);
    // A fixed spec; the API resets the update state.
    sim.update_spec("s1", |s| set_image(s, "img:3"));
    sim.edit_service("s1", |s| s.update_status = None);
    sim.run_to_end();
    assert_eq!(sim.update_state("s1"), UpdateState::Completed);
    assert_eq!(count(&sim, "img:3"), 5);
}

#[test]
fn start_first_old_task_that_dies_is_not_replaced() {
    let mut sim = five_updating(update_config(1, UpdateOrder::StartFirst));
    sim.pass();
    let old = sim
        .slot("s1", 1)
        .iter()
        .find(|t| task_image(t) == "img:1")
        .map(|t| t.id.clone())
        .expect("old");
    sim.report(&old, TaskState::Failed);
    // The old task ends; its slot already has its new task.
    assert_eq!(sim.pass(), (1, None));
    assert_eq!(desired(&sim.state.tasks[&old]), TaskState::Shutdown);
    assert_eq!(task_image(sim.runnable_in("s1", 1)), "img:2");
}

#[test]
fn changing_the_mode_replaces_the_tasks() {
    let mut sim = cluster(2);
    sim.add_service("s1", global("agent"));
    sim.pass();
    let old = sim.runnable_ids("s1");
    sim.update_spec("s1", |s| {
        s.mode = Some(Mode::Replicated(ReplicatedService { replicas: 3 }))
    });
    assert_eq!(sim.pass(), (5, None));
    assert_eq!(
        sim.runnable("s1")
            .iter()
            .map(|t| t.slot)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for id in old {
        assert_eq!(desired(&sim.state.tasks[&id]), TaskState::Shutdown);
    }
}

#[test]
fn a_node_that_becomes_eligible_gets_its_global_task() {
    let mut sim = cluster(2);
    sim.env.ineligible.insert("n2".into());
    sim.add_service("g", global("agent"));
    assert_eq!(sim.pass(), (1, None));
    sim.env.ineligible.clear();
    // The lead re-runs a pass when node labels (and so eligibility) change.
    assert_eq!(sim.pass(), (1, None));
    assert_eq!(
        sim.runnable("g")
            .iter()
            .map(|t| t.node_id.as_str())
            .collect::<Vec<_>>(),
        ["n1", "n2"]
    );
}

#[test]
fn never_placed_tasks_of_a_removed_service_are_deleted_at_once() {
    let mut sim = Sim::new();
    sim.add_service("s1", replicated("web", 2));
    sim.pass();
    sim.remove_service("s1");
    assert_eq!(sim.pass(), (2, None));
    assert!(sim.state.tasks.is_empty());
}
