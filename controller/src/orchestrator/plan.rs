//! The writes of one pass, gathered in groups that go into the batch whole or not at all.
//!
//! Invariants: each object appears at most once in the batch (a later write of the same object
//! replaces the earlier one, so an update always carries the version as read); the batch is a
//! prefix of the groups offered, so a group may rely on every group offered before it; once a
//! group does not fit, every later group is refused too and the pass reports that it has more
//! to do.

use std::collections::HashMap;

use flotilla_proto::control::v1::{Service, Task};

use crate::store::{Batch, State};

/// One write of the batch.
#[derive(Debug, Clone)]
pub(super) enum Write {
    Create(Task),
    /// The task as read, changed; its meta.version is the version read.
    Update(Task),
    Remove(Task),
    /// The service as read, changed (boxed: a service is twice the size of a task).
    Service(Box<Service>),
    /// A create that a later remove of the same task cancelled.
    Nothing,
}

impl Write {
    fn key(&self) -> Option<(bool, &str)> {
        match self {
            Write::Create(t) | Write::Update(t) | Write::Remove(t) => Some((false, &t.id)),
            Write::Service(s) => Some((true, &s.id)),
            Write::Nothing => None,
        }
    }
}

/// Writes that belong together (a task shut down and its replacement).
#[derive(Debug, Default)]
pub(super) struct Group {
    writes: Vec<Write>,
}

impl Group {
    pub fn create(&mut self, t: Task) {
        self.writes.push(Write::Create(t));
    }

    pub fn update(&mut self, t: Task) {
        self.writes.push(Write::Update(t));
    }

    pub fn remove(&mut self, t: Task) {
        self.writes.push(Write::Remove(t));
    }

    pub fn service(&mut self, s: Service) {
        self.writes.push(Write::Service(Box::new(s)));
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// The batch being built.
#[derive(Debug)]
pub(super) struct Plan {
    writes: Vec<Write>,
    /// (is a service, id) -> index in `writes`.
    at: HashMap<(bool, String), usize>,
    limit: usize,
    full: bool,
    commits: usize,
}

impl Plan {
    pub fn new(limit: usize) -> Plan {
        Plan {
            writes: Vec::new(),
            at: HashMap::new(),
            limit,
            full: false,
            commits: 0,
        }
    }

    /// Whether a group was refused for lack of room (the pass has more to do).
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Groups accepted so far (to tell whether a step wrote anything).
    pub fn commits(&self) -> usize {
        self.commits
    }

    /// Adds the group if it fits; false when it was refused (it and every later group).
    pub fn commit(&mut self, group: Group) -> bool {
        if group.is_empty() {
            return !self.full;
        }
        if self.full {
            return false;
        }
        let mut fresh: Vec<(bool, &str)> = Vec::new();
        for w in &group.writes {
            if let Some((svc, id)) = w.key() {
                if !self.at.contains_key(&(svc, id.to_string())) && !fresh.contains(&(svc, id)) {
                    fresh.push((svc, id));
                }
            }
        }
        if self.writes.len() + fresh.len() > self.limit {
            self.full = true;
            return false;
        }
        for w in group.writes {
            self.merge(w);
        }
        self.commits += 1;
        true
    }

    fn merge(&mut self, w: Write) {
        let Some((svc, id)) = w.key() else { return };
        let key = (svc, id.to_string());
        match self.at.get(&key) {
            None => {
                self.at.insert(key, self.writes.len());
                self.writes.push(w);
            }
            Some(&i) => {
                let merged = match (&self.writes[i], w) {
                    (Write::Create(_), Write::Update(t)) => Write::Create(t),
                    (Write::Create(_), Write::Remove(_)) => Write::Nothing,
                    (_, w) => w,
                };
                self.writes[i] = merged;
            }
        }
    }

    /// The task as this pass leaves it so far: the planned copy if one is planned, else `t`.
    pub fn working<'a>(&'a self, t: &'a Task) -> &'a Task {
        match self
            .at
            .get(&(false, t.id.clone()))
            .map(|&i| &self.writes[i])
        {
            Some(Write::Create(p) | Write::Update(p)) => p,
            _ => t,
        }
    }

    /// Every task as this pass leaves it so far (removed ones left out), in id order of the
    /// stored ones followed by the created ones.
    pub fn overlay<'a>(&'a self, state: &'a State) -> Vec<&'a Task> {
        let mut out = Vec::with_capacity(state.tasks.len());
        for t in state.tasks.values() {
            match self
                .at
                .get(&(false, t.id.clone()))
                .map(|&i| &self.writes[i])
            {
                Some(Write::Remove(_)) => {}
                Some(Write::Update(p)) => out.push(p),
                _ => out.push(t),
            }
        }
        for w in &self.writes {
            if let Write::Create(t) = w {
                out.push(t);
            }
        }
        out
    }

    pub fn into_batch(self) -> Batch {
        let mut b = Batch::new();
        for w in self.writes {
            match w {
                Write::Create(t) => {
                    b.create(t);
                }
                Write::Update(t) => {
                    b.update(t);
                }
                Write::Remove(t) => {
                    b.remove(t);
                }
                Write::Service(s) => {
                    b.update(*s);
                }
                Write::Nothing => {}
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, desired: i32) -> Task {
        Task {
            id: id.into(),
            desired_state: desired,
            ..Default::default()
        }
    }

    #[test]
    fn later_writes_of_an_object_replace_earlier_ones() {
        let mut p = Plan::new(10);
        let mut g = Group::default();
        g.update(task("a", 9));
        g.create(task("b", 7));
        assert!(p.commit(g));
        let mut g = Group::default();
        g.remove(task("a", 9));
        g.update(task("b", 8));
        assert!(p.commit(g));
        let b = p.into_batch();
        assert_eq!(b.len(), 2);
        assert_eq!(
            b.actions[0].kind,
            flotilla_proto::control::v1::ActionKind::Remove as i32
        );
        assert_eq!(
            b.actions[1].kind,
            flotilla_proto::control::v1::ActionKind::Create as i32
        );
    }

    #[test]
    fn a_group_that_does_not_fit_closes_the_plan() {
        let mut p = Plan::new(3);
        let mut g = Group::default();
        g.create(task("a", 7));
        g.create(task("b", 7));
        assert!(p.commit(g));
        let mut g = Group::default();
        g.create(task("c", 7));
        g.create(task("d", 7));
        assert!(!p.commit(g));
        assert!(p.is_full());
        let mut g = Group::default();
        g.create(task("e", 7));
        assert!(!p.commit(g), "nothing after a refused group");
        assert_eq!(p.commits(), 1);
        assert_eq!(p.into_batch().len(), 2);
    }
}
