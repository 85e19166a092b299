//! Replicated services: `replicas` live slots.
//!
//! A slot is live when it holds a runnable task or is done (see [`super::slot::done`]). Too many
//! live slots: the surplus ends, done slots first, then slots whose task is not running on a
//! node (pending, ended, lost), then running ones taken from the node with the most tasks of the
//! service (recounted after each pick), highest slot first among equals. Too few: new slots take
//! the lowest numbers no live slot holds. Tasks with slot 0 (left from a global mode) end.

use std::collections::BTreeMap;

use flotilla_proto::control::v1::{Service, Task, TaskState};

use super::plan::Group;
use super::slot::{self, Cond, SlotKey, SlotView};
use super::{age_key, is_runnable, Pass};

/// How a live slot ranks for removal (lowest goes first).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Live {
    Done,
    /// Its task is not running on a node.
    Idle,
    Running(String),
}

pub(super) fn run(pass: &mut Pass, svc: &Service, tasks: &[&Task], replicas: u64) -> Vec<SlotView> {
    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for &t in tasks {
        if t.slot == 0 {
            end_all(pass, &[t], true);
        } else {
            slots.entry(t.slot).or_default().push(t);
        }
    }
    let mut live: BTreeMap<u64, Live> = BTreeMap::new();
    for (&n, ts) in &slots {
        let newest = ts
            .iter()
            .filter(|t| is_runnable(t))
            .max_by(|a, b| age_key(a).cmp(&age_key(b)));
        match newest {
            None if slot::done(ts, svc) => {
                live.insert(n, Live::Done);
            }
            None => {}
            Some(t) if !t.node_id.is_empty() && slot::condition(pass, t) == Cond::Alive => {
                live.insert(n, Live::Running(t.node_id.clone()));
            }
            Some(_) => {
                live.insert(n, Live::Idle);
            }
        }
    }

    let wanted = usize::try_from(replicas).unwrap_or(usize::MAX);
    for n in surplus(&live, wanted) {
        live.remove(&n);
        if let Some(ts) = slots.get(&n) {
            end_all(pass, ts, true);
        }
    }

    let mut views = Vec::new();
    for &n in live.keys() {
        let ts = &slots[&n];
        if ts.iter().any(|t| is_runnable(t)) {
            views.push(slot::lifecycle(
                pass,
                svc,
                SlotKey::Replica(n),
                ts,
                true,
                "",
            ));
        }
    }

    let mut next = 1u64;
    for _ in live.len()..wanted {
        if pass.plan.is_full() {
            break;
        }
        while live.contains_key(&next) {
            next += 1;
        }
        let t = pass.new_task(svc, next, "", 0);
        let mut g = Group::default();
        g.create(t.clone());
        if !pass.plan.commit(g) {
            break;
        }
        views.push(SlotView {
            key: SlotKey::Replica(next),
            runnable: vec![t],
            may_create: true,
            node_id: String::new(),
        });
        next += 1;
    }
    views
}

/// The slots to end so that `wanted` remain.
fn surplus(live: &BTreeMap<u64, Live>, wanted: usize) -> Vec<u64> {
    let mut excess = live.len().saturating_sub(wanted);
    let mut out = Vec::new();
    // Done and idle slots first, highest slot first.
    for rank in [Live::Done, Live::Idle] {
        for (&n, l) in live.iter().rev() {
            if excess > 0 && *l == rank {
                out.push(n);
                excess -= 1;
            }
        }
    }
    let mut load: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (&n, l) in live {
        if let Live::Running(node) = l {
            load.entry(node.as_str()).or_default().push(n);
        }
    }
    while excess > 0 {
        // The node with the most running slots; among equals, the one holding the highest slot.
        let Some(slots) = load
            .values_mut()
            .filter(|s| !s.is_empty())
            .max_by_key(|s| (s.len(), s.last().copied()))
        else {
            break;
        };
        if let Some(n) = slots.pop() {
            out.push(n);
            excess -= 1;
        }
    }
    out
}

/// Ends every runnable task of `tasks`, and a done slot's COMPLETE marker when `markers`.
pub(super) fn end_all(pass: &mut Pass, tasks: &[&Task], markers: bool) {
    let mut g = Group::default();
    for &t in tasks {
        let complete = markers && t.desired_state == TaskState::Complete as i32;
        if is_runnable(t) || complete {
            let lost = slot::condition(pass, t) == Cond::Lost;
            g.update(pass.ended_copy(t, TaskState::Shutdown, lost && is_runnable(t)));
        }
    }
    pass.plan.commit(g);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surplus_prefers_done_idle_then_the_most_loaded_node() {
        let live: BTreeMap<u64, Live> = [
            (1, Live::Running("a".into())),
            (2, Live::Running("a".into())),
            (3, Live::Running("b".into())),
            (4, Live::Idle),
            (5, Live::Done),
            (6, Live::Running("a".into())),
        ]
        .into_iter()
        .collect();
        assert_eq!(surplus(&live, 6), Vec::<u64>::new());
        assert_eq!(surplus(&live, 4), vec![5, 4]);
        // a holds 1, 2, 6; b holds 3: a's 6, then a's 2; then a and b hold one each: b's 3
        // (the higher slot).
        assert_eq!(surplus(&live, 1), vec![5, 4, 6, 2, 3]);
        assert_eq!(surplus(&live, 0), vec![5, 4, 6, 2, 3, 1]);
    }
}
