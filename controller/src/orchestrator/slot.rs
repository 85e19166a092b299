//! One slot's life, shared by replicated slots and global nodes: ends the tasks that ended or
//! lost their node, creates their replacements, and leaves duplicates no runnable company.
//!
//! Invariant on return: the slot holds at most one runnable task of the current spec, plus at
//! most one older runnable task during a start-first update; the runnable tasks after the pass
//! are reported in a [`SlotView`] for the rolling update.

use flotilla_proto::control::v1::{Node, NodeAvailability, Service, Task, TaskState};

use super::plan::Group;
use super::restart::{self, Restart};
use super::{age_key, availability, is_runnable, is_terminal, node_down, observed, outdated, Pass};

/// Which slot: a replica number, or a node for global services.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum SlotKey {
    Replica(u64),
    Node(String),
}

impl SlotKey {
    /// The key of the slot a task belongs to.
    pub fn of(t: &Task) -> SlotKey {
        if t.slot > 0 {
            SlotKey::Replica(t.slot)
        } else {
            SlotKey::Node(t.node_id.clone())
        }
    }

    /// The `slot` field of the slot's tasks.
    pub fn number(&self) -> u64 {
        match self {
            SlotKey::Replica(n) => *n,
            SlotKey::Node(_) => 0,
        }
    }
}

/// A live slot as this pass leaves it.
#[derive(Debug)]
pub(super) struct SlotView {
    pub key: SlotKey,
    /// Its runnable tasks after this pass's writes, oldest first.
    pub runnable: Vec<Task>,
    /// Whether new tasks may be created in it (not on a paused node).
    pub may_create: bool,
    /// Node preset on its new tasks (global services), else empty.
    pub node_id: String,
}

/// Where a runnable task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cond {
    /// Not ended, on a usable node or not placed yet.
    Alive,
    /// Not ended, but its node is DOWN or gone (or the task was orphaned).
    Lost,
    /// Not ended, on a drained node, or on a node that no longer meets the task's placement
    /// (its labels changed): moved like a drained node's tasks.
    Drained,
    /// Observed terminal: the restart policy decides.
    Ended,
}

pub(super) fn condition(pass: &Pass, t: &Task) -> Cond {
    let state = observed(t);
    if state == TaskState::Orphaned {
        return Cond::Lost;
    }
    if is_terminal(state) {
        return Cond::Ended;
    }
    if t.node_id.is_empty() {
        return Cond::Alive;
    }
    match pass.state.nodes.get(&t.node_id) {
        None => Cond::Lost,
        Some(n) if node_down(n) => Cond::Lost,
        Some(n) if availability(n) == NodeAvailability::Drain => Cond::Drained,
        Some(n) if !placement_holds(pass, n, t) => Cond::Drained,
        Some(_) => Cond::Alive,
    }
}

/// Whether `node` still meets the task's constraints and platforms (checked only for tasks
/// that have some: most have none, and the check builds a scheduler view).
fn placement_holds(pass: &Pass, node: &Node, t: &Task) -> bool {
    let Some(spec) = t.spec.as_ref() else {
        return true;
    };
    let placed = spec
        .placement
        .as_ref()
        .is_some_and(|p| !p.constraints.is_empty() || !p.platforms.is_empty());
    !placed || pass.env.node_eligible(node, spec)
}

/// Whether the task may still run on its node: not observed terminal, and its node is there
/// and not DOWN (a lost node's tasks are not waited for).
pub(super) fn holds_node(pass: &Pass, t: &Task) -> bool {
    !is_terminal(observed(t))
        && !t.node_id.is_empty()
        && pass
            .state
            .nodes
            .get(&t.node_id)
            .is_some_and(|n| !node_down(n))
}

/// Whether the slot is done: nothing runnable and its newest task was left COMPLETE by the
/// restart policy, for the current spec (a spec change runs the slot again).
pub(super) fn done(tasks: &[&Task], svc: &Service) -> bool {
    if tasks.iter().any(|t| is_runnable(t)) {
        return false;
    }
    tasks
        .iter()
        .max_by(|a, b| age_key(a).cmp(&age_key(b)))
        .is_some_and(|t| t.desired_state == TaskState::Complete as i32 && !outdated(t, svc))
}

/// The attempt number of a replacement of `old` made from the service's current spec.
fn next_attempt(old: &Task, svc: &Service, restarted: bool) -> u64 {
    if outdated(old, svc) {
        0
    } else if restarted {
        old.attempt + 1
    } else {
        old.attempt
    }
}

/// Runs the life of one kept slot (`tasks`: all its tasks, oldest first).
pub(super) fn lifecycle(
    pass: &mut Pass,
    svc: &Service,
    key: SlotKey,
    tasks: &[&Task],
    may_create: bool,
    node_id: &str,
) -> SlotView {
    let slot_no = key.number();
    let mut view = SlotView {
        key,
        runnable: Vec::new(),
        may_create,
        node_id: node_id.to_string(),
    };
    let mut runnable: Vec<&Task> = tasks.iter().copied().filter(|t| is_runnable(t)).collect();
    runnable.sort_by(|a, b| age_key(b).cmp(&age_key(a)));
    let Some((&newest, others)) = runnable.split_first() else {
        return view;
    };
    let mut g = Group::default();
    let mut kept: Vec<Task> = Vec::new();
    let newest_current = !outdated(newest, svc);
    let mut partner = false;
    for &t in others {
        let cond = condition(pass, t);
        if cond == Cond::Alive && newest_current && outdated(t, svc) && !partner {
            // The old task of a start-first update: it stays until the new one is up.
            partner = true;
            kept.push(t.clone());
        } else {
            g.update(pass.ended_copy(t, TaskState::Shutdown, cond == Cond::Lost));
        }
    }
    let cond = condition(pass, newest);
    let replace = |pass: &mut Pass, g: &mut Group, kept: &mut Vec<Task>, attempt: u64| {
        let lost = cond == Cond::Lost;
        g.update(pass.ended_copy(newest, TaskState::Shutdown, lost));
        if may_create {
            let t = pass.new_task(svc, slot_no, node_id, attempt);
            kept.push(t.clone());
            g.create(t);
        }
    };
    match cond {
        Cond::Alive if newest.desired_state < TaskState::Running as i32 => {
            // A stop-first replacement: it starts once no other task of the slot still runs.
            let waiting = tasks
                .iter()
                .any(|t| t.id != newest.id && !is_runnable(t) && holds_node(pass, t));
            if waiting {
                kept.push(newest.clone());
            } else {
                let mut c = pass.plan.working(newest).clone();
                c.desired_state = TaskState::Running as i32;
                super::touch(&mut c, pass.now);
                kept.push(c.clone());
                g.update(c);
            }
        }
        Cond::Alive => kept.push(newest.clone()),
        Cond::Lost | Cond::Drained => {
            replace(pass, &mut g, &mut kept, next_attempt(newest, svc, false));
        }
        Cond::Ended => {
            let immediate = match pass.state.nodes.get(&newest.node_id) {
                _ if newest.node_id.is_empty() => false,
                None => true,
                Some(n) => node_down(n) || availability(n) == NodeAvailability::Drain,
            };
            match restart::decide(newest, tasks, pass.now, immediate) {
                Restart::Now if may_create => {
                    replace(pass, &mut g, &mut kept, next_attempt(newest, svc, true));
                }
                // A paused node takes no new task: the ended one waits for it.
                Restart::Now => kept.push(newest.clone()),
                Restart::At(at) => {
                    pass.wake(at);
                    kept.push(newest.clone());
                }
                Restart::Never if outdated(newest, svc) && may_create => {
                    // A done slot of an older spec runs again with the current one.
                    replace(pass, &mut g, &mut kept, 0);
                }
                Restart::Never => {
                    g.update(pass.ended_copy(newest, TaskState::Complete, false));
                }
            }
        }
    }
    pass.plan.commit(g);
    kept.sort_by(|a, b| age_key(a).cmp(&age_key(b)));
    view.runnable = kept;
    view
}
