//! Global services: one runnable task per usable node.
//!
//! A node is usable when it has an agent (status READY or DISCONNECTED: a node still UNKNOWN
//! never had a session, like a manager that runs no agent, and a DOWN node lost it), is not
//! drained, and [`super::Env::node_eligible`] accepts the service's task spec (constraints and
//! platform); its slot is the node (slot 0, `node_id` preset on new tasks). A
//! paused node keeps its tasks but gets no new one (not even a restart or an update) until it
//! is active again. Tasks on nodes that are not usable (or gone) end without replacement
//! ("node down" when the node is DOWN or gone); a node that joins or comes back gets a new task.

use std::collections::BTreeMap;

use flotilla_proto::control::v1::{Node, NodeAvailability, NodeState, Service, Task};

use super::plan::Group;
use super::replicated::end_all;
use super::slot::{self, SlotKey, SlotView};
use super::{availability, is_runnable, Pass};

pub(super) fn run(pass: &mut Pass, svc: &Service, tasks: &[&Task]) -> Vec<SlotView> {
    let mut by_node: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for &t in tasks {
        if t.slot != 0 || t.node_id.is_empty() {
            // Left from a replicated mode.
            end_all(pass, &[t], true);
        } else {
            by_node.entry(&t.node_id).or_default().push(t);
        }
    }
    let task_spec = svc
        .spec
        .as_ref()
        .and_then(|s| s.task.clone())
        .unwrap_or_default();
    let state = pass.state;
    let mut views = Vec::new();
    for node in state.nodes.values() {
        let usable = has_agent(node)
            && availability(node) != NodeAvailability::Drain
            && pass.env.node_eligible(node, &task_spec);
        let ts = by_node.remove(node.id.as_str()).unwrap_or_default();
        if !usable {
            end_all(pass, &ts, false);
            continue;
        }
        let may_create = availability(node) == NodeAvailability::Active;
        let key = SlotKey::Node(node.id.clone());
        if ts.iter().any(|t| is_runnable(t)) {
            views.push(slot::lifecycle(pass, svc, key, &ts, may_create, &node.id));
        } else if may_create && !slot::done(&ts, svc) && !pass.plan.is_full() {
            let t = pass.new_task(svc, 0, &node.id, 0);
            let mut g = Group::default();
            g.create(t.clone());
            if pass.plan.commit(g) {
                views.push(SlotView {
                    key,
                    runnable: vec![t],
                    may_create,
                    node_id: node.id.clone(),
                });
            }
        }
    }
    // Tasks on nodes that are gone.
    for ts in by_node.values() {
        end_all(pass, ts, false);
    }
    views
}

/// Whether the node runs an agent that is (or was until lately) in session: READY or
/// DISCONNECTED; not UNKNOWN (never had a session) nor DOWN.
fn has_agent(node: &Node) -> bool {
    let state = node.status.as_ref().map_or(0, |s| s.state);
    state == NodeState::Ready as i32 || state == NodeState::Disconnected as i32
}
