//! Opt-in rebalancing (`spec.rebalance`, replicated services; Swarm never rebalances).
//!
//! When every live slot of the service holds one current task that is up, no update is in
//! progress or paused, and the update delay has passed since the last task came up, the
//! service's tasks are counted on the nodes that could take them (ACTIVE, READY, and eligible
//! per [`super::Env::node_eligible`]). If the most loaded of these nodes has more than one task
//! more than the least loaded, one task of the most loaded node (its highest slot) ends and a
//! replacement is created in its slot without a node, for the scheduler to spread. One move per
//! pass: the next waits until the replacement is up, so moves never exceed the update's
//! parallelism or outrun its delay.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use flotilla_proto::control::v1::{
    NodeAvailability, NodeState, Service, Task, TaskState, UpdateState,
};

use super::plan::Group;
use super::slot::SlotView;
use super::update::state_of;
use super::{availability, is_up, outdated, status_time, Pass};

pub(super) fn run(pass: &mut Pass, svc: &Service, views: &[SlotView]) {
    let Some(spec) = svc.spec.as_ref() else {
        return;
    };
    if !spec.rebalance
        || !matches!(
            state_of(svc),
            UpdateState::Unknown | UpdateState::Completed | UpdateState::RollbackCompleted
        )
    {
        return;
    }
    let mut tasks: Vec<&Task> = Vec::with_capacity(views.len());
    for v in views {
        match v.runnable.as_slice() {
            [t] if !outdated(t, svc) && is_up(t) && !t.node_id.is_empty() => tasks.push(t),
            _ => return,
        }
    }
    let Some(last_up) = tasks.iter().map(|t| status_time(t)).max() else {
        return;
    };
    let delay = spec.update.as_ref().map_or(0, |u| u.delay_ms);
    if delay > 0 {
        let at = last_up.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
        if pass.now < at {
            pass.wake(at);
            return;
        }
    }
    let task_spec = spec.task.clone().unwrap_or_default();
    let mut load: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for n in pass.state.nodes.values() {
        let ready = n.status.as_ref().map_or(0, |s| s.state) == NodeState::Ready as i32;
        if ready
            && availability(n) == NodeAvailability::Active
            && pass.env.node_eligible(n, &task_spec)
        {
            load.insert(&n.id, Vec::new());
        }
    }
    for t in tasks {
        if let Some(l) = load.get_mut(t.node_id.as_str()) {
            l.push(t);
        }
    }
    let least = load.values().map(Vec::len).min().unwrap_or(0);
    let Some(most) = load
        .iter()
        .max_by_key(|(id, ts)| (ts.len(), Reverse(**id)))
        .map(|(_, ts)| ts)
    else {
        return;
    };
    if most.len() <= least + 1 {
        return;
    }
    let Some(&t) = most.iter().max_by_key(|t| t.slot) else {
        return;
    };
    let mut g = Group::default();
    g.update(pass.ended_copy(t, TaskState::Shutdown, false));
    let new = pass.new_task(svc, t.slot, "", t.attempt);
    g.create(new);
    pass.plan.commit(g);
}
