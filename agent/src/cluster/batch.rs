//! Task status updates waiting to be sent: the latest status per task, in the order tasks first
//! changed, cut into batches. What was not sent stays for the next session.

use std::collections::{HashMap, VecDeque};

use flotilla_proto::control::v1 as pb;

#[derive(Debug, Default)]
pub struct Pending {
    order: VecDeque<String>,
    latest: HashMap<String, pb::TaskStatusUpdate>,
}

impl Pending {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Keeps `u` as its task's latest status. An update that would move the task's pending
    /// state backwards is dropped (statuses only move forward).
    pub fn push(&mut self, u: pb::TaskStatusUpdate) {
        let state = |x: &pb::TaskStatusUpdate| x.status.as_ref().map(|s| s.state).unwrap_or(0);
        match self.latest.get_mut(&u.task_id) {
            Some(cur) => {
                if state(&u) >= state(cur) {
                    *cur = u;
                }
            }
            None => {
                self.order.push_back(u.task_id.clone());
                self.latest.insert(u.task_id.clone(), u);
            }
        }
    }

    /// Takes up to `max` updates, oldest task first.
    pub fn take(&mut self, max: usize) -> Vec<pb::TaskStatusUpdate> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            if let Some(u) = self.latest.remove(&id) {
                out.push(u);
            }
        }
        out
    }

    /// Puts back a batch that could not be sent, before anything newer of the same tasks.
    pub fn put_back(&mut self, batch: Vec<pb::TaskStatusUpdate>) {
        for u in batch.into_iter().rev() {
            match self.latest.get(&u.task_id) {
                // A newer status came meanwhile: it supersedes the unsent one.
                Some(_) => {}
                None => {
                    self.order.push_front(u.task_id.clone());
                    self.latest.insert(u.task_id.clone(), u);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(id: &str, state: pb::TaskState, msg: &str) -> pb::TaskStatusUpdate {
        pb::TaskStatusUpdate {
            task_id: id.into(),
            status: Some(pb::TaskStatus {
                state: state as i32,
                message: msg.into(),
                ..Default::default()
            }),
        }
    }

    fn states(b: &[pb::TaskStatusUpdate]) -> Vec<(String, i32, String)> {
        b.iter()
            .map(|u| {
                let s = u.status.clone().unwrap_or_default();
                (u.task_id.clone(), s.state, s.message)
            })
            .collect()
    }

    #[test]
    fn keeps_the_latest_per_task_in_first_change_order() {
        let mut p = Pending::new();
        p.push(up("a", pb::TaskState::Accepted, ""));
        p.push(up("b", pb::TaskState::Accepted, ""));
        p.push(up("a", pb::TaskState::Running, ""));
        p.push(up("a", pb::TaskState::Running, "healthy"));
        p.push(up("b", pb::TaskState::Preparing, ""));
        p.push(up("a", pb::TaskState::Starting, "late"));
        assert_eq!(p.len(), 2);
        let b = p.take(100);
        assert_eq!(
            states(&b),
            vec![
                ("a".into(), pb::TaskState::Running as i32, "healthy".into()),
                ("b".into(), pb::TaskState::Preparing as i32, String::new()),
            ]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn batches_are_bounded_and_unsent_ones_come_back_first() {
        let mut p = Pending::new();
        for i in 0..250 {
            p.push(up(&format!("t{i:03}"), pb::TaskState::Running, ""));
        }
        let first = p.take(100);
        assert_eq!(first.len(), 100);
        assert_eq!(first[0].task_id, "t000");
        // t001 moved on while the batch was in flight and failed to go out.
        p.push(up("t001", pb::TaskState::Failed, "newer"));
        p.put_back(first);
        let again = p.take(100);
        assert_eq!(again[0].task_id, "t000");
        assert_eq!(again.len(), 100);
        let t001: Vec<_> = states(&again)
            .into_iter()
            .chain(states(&p.take(1000)))
            .filter(|(id, _, _)| id == "t001")
            .collect();
        assert_eq!(
            t001,
            vec![("t001".into(), pb::TaskState::Failed as i32, "newer".into())]
        );
        assert!(p.is_empty());
    }
}
