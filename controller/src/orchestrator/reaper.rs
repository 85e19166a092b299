//! The task reaper: deletes the tasks nobody needs any more.
//!
//! A task is reapable when its life ended (desired state above RUNNING) and nothing runs it
//! (observed terminal, never placed, or its node is DOWN or gone). Per slot (per node for global
//! services) at most `cluster.spec.task_history_limit` tasks are kept (0 = 5), runnable ones
//! included: the oldest reapable ones go first, and the newest task of a slot always stays (it
//! may mark the slot done). A windowed restart policy keeps `max_attempts + 1` (see
//! [`super::restart`]). Reapable tasks whose node is gone, and tasks with desired REMOVE that
//! nothing runs, go whatever the limit. Works on the state as this pass leaves it, so the next
//! pass finds nothing more to delete.

use std::collections::BTreeMap;

use flotilla_proto::control::v1::{Task, TaskState};

use super::plan::Group;
use super::restart::history_needed;
use super::slot::SlotKey;
use super::{age_key, is_runnable, Pass, DEFAULT_TASK_HISTORY};

pub(super) fn run(pass: &mut Pass) {
    let limit = pass
        .state
        .cluster
        .as_ref()
        .and_then(|c| c.spec.as_ref())
        .map_or(0, |s| s.task_history_limit);
    let limit = if limit == 0 {
        DEFAULT_TASK_HISTORY
    } else {
        limit
    } as usize;
    let deletes = {
        let pass = &*pass;
        let reapable = |t: &Task| !is_runnable(t) && pass.finished(t);
        let mut deletes: Vec<Task> = Vec::new();
        let mut slots: BTreeMap<(&str, SlotKey), Vec<&Task>> = BTreeMap::new();
        for t in pass.plan.overlay(pass.state) {
            if !pass.state.services.contains_key(&t.service_id) {
                continue; // see `service_removed`
            }
            if t.desired_state >= TaskState::Remove as i32 && reapable(t) {
                deletes.push(t.clone());
                continue;
            }
            slots
                .entry((&t.service_id, SlotKey::of(t)))
                .or_default()
                .push(t);
        }
        for ((service_id, key), mut ts) in slots {
            ts.sort_by(|a, b| age_key(a).cmp(&age_key(b)));
            if let SlotKey::Node(n) = &key {
                if !pass.state.nodes.contains_key(n) {
                    deletes.extend(ts.into_iter().filter(|t| reapable(t)).cloned());
                    continue;
                }
            }
            let spec = pass.state.services[service_id]
                .spec
                .as_ref()
                .and_then(|s| s.task.as_ref());
            let keep = limit.max(history_needed(spec));
            let mut count = ts.len();
            for t in &ts[..ts.len() - 1] {
                if count <= keep {
                    break;
                }
                if reapable(t) {
                    deletes.push((*t).clone());
                    count -= 1;
                }
            }
        }
        deletes
    };
    for t in deletes {
        let mut g = Group::default();
        g.remove(t);
        if !pass.plan.commit(g) {
            return;
        }
    }
}
