//! The scheduler: assigns pending tasks to nodes through a filter pipeline, spreads them, and
//! explains why a task cannot be placed. Pure: no I/O, no async, no clock; the leader keeps one
//! [`Scheduler`] alive, feeds it store events ([`Scheduler::upsert_node`],
//! [`Scheduler::remove_node`], [`Scheduler::task_changed`]) and commits its [`Decision`]s.
//!
//! Owns a view of the cluster: every node, and every task that holds resources on a node
//! (node set, observed state not terminal, whatever its desired state). Invariant: each
//! node's sums (reservations, task counts, host ports) are the sums of the tracked tasks on it,
//! and a task id is tracked at most once, so feeding the same task twice never counts it twice.
//!
//! Placement, per group of pending tasks that share a service and spec version (they ask the
//! same thing): the filters (`filter.rs`) run once per node; the nodes that pass go into a
//! decision tree of the service's placement preferences (`spread=node.labels.X`, outermost
//! first; nodes without the label form their own branch), whose leaves are heaps of nodes keyed
//! by (tasks of the service on the node, tasks on the node, node id). Each task descends to the
//! branch holding the fewest tasks of the service, takes the leaf's first node, and the node goes
//! back into its heap if it still passes the dynamic filters (resources, host ports, max replicas
//! per node). A leaf only holds its k best nodes for k tasks (no other node can be reached).
//! Node ids are sorted when nodes come or go, label names and values are interned, and the
//! loops work on indices and ids, so a group costs one cheap pass over the nodes plus a heap
//! operation per task. Tasks that find no node are left pending with the pipeline's
//! explanation, counted again over the final state of the nodes.
//!
//! The swarmkit scheduler (`manager/scheduler`) is the model: its filter/pipeline split and its
//! decision tree for preferences, written anew for flotilla's objects.

mod constraint;
mod filter;
mod node;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use flotilla_proto::control::v1::{Node, Task, TaskState};

pub use constraint::validate_constraints;
pub use filter::validate_preferences;

use filter::{host_ports, Pipeline, TaskRequest};
use node::{FastMap, IndexMap, Interner, NodeInfo, TaskUse};

/// What the scheduler decided for one pending task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run the task on the node (the caller writes `node_id` and state ASSIGNED).
    Assign { task_id: String, node_id: String },
    /// No node fits; `reason` is for the task's status message, e.g. "no suitable node
    /// (3 nodes lack memory, 2 nodes fail constraint node.labels.zone==b)".
    Pending { task_id: String, reason: String },
}

impl Decision {
    /// The task decided on.
    pub fn task_id(&self) -> &str {
        match self {
            Decision::Assign { task_id, .. } | Decision::Pending { task_id, .. } => task_id,
        }
    }
}

/// Whether a task's observed state is terminal (it no longer holds resources).
fn observed_terminal(task: &Task) -> bool {
    let state = task.status.as_ref().map(|s| s.state).unwrap_or_default();
    matches!(
        TaskState::try_from(state),
        Ok(TaskState::Complete
            | TaskState::Shutdown
            | TaskState::Failed
            | TaskState::Rejected
            | TaskState::Remove
            | TaskState::Orphaned)
    )
}

/// Whether a task holds resources on its node: it has one and its observed state is not
/// terminal, whatever its desired state: a task being shut down still holds its memory and
/// host ports until its container has stopped (as in swarmkit), so a stop-first replacement
/// cannot be placed beside it on a port it still uses. An observed state this version does
/// not know counts as holding, so resources are never overcommitted. A task bound to its node
/// from the start (a global service's) holds nothing while it is still PENDING there: it is
/// placed by [`Scheduler::schedule_on`] like any other.
fn holds_resources(task: &Task) -> bool {
    let pending_on_node = task.status.as_ref().map_or(0, |s| s.state) <= TaskState::Pending as i32;
    !task.node_id.is_empty() && !pending_on_node && !observed_terminal(task)
}

/// Whether `schedule` should place the task: no node, desired READY or RUNNING (a stop-first
/// replacement waits in READY for its predecessor to stop), not ended.
fn is_pending(task: &Task) -> bool {
    task.node_id.is_empty()
        && task.desired_state <= TaskState::Running as i32
        && !observed_terminal(task)
}

/// Placement state over the cluster's nodes. See the module documentation.
#[derive(Debug, Default)]
pub struct Scheduler {
    /// Node table; a slot is reused after its node is removed and no task names it.
    nodes: Vec<NodeInfo>,
    /// Node id -> slot.
    index: FastMap<String, u32>,
    /// Slots free for reuse.
    free: Vec<u32>,
    /// Service id -> interned index.
    services: FastMap<String, u32>,
    /// Per interned service: slot -> tasks of the service holding resources on the node
    /// (the same counts as the nodes' `services`, kept by service so that a placement reads
    /// the few nodes a service is on instead of looking the service up on every node).
    service_nodes: Vec<IndexMap<u32>>,
    /// Label names and values, os and arch.
    strings: Interner,
    /// Scratch of `build_tree`: tasks of the group's service per slot (all zero between uses).
    scratch: Vec<u32>,
    /// Tasks holding resources, by task id.
    tasks: FastMap<String, TaskUse>,
    /// Slots of the present nodes in node id order (a node's position is its rank).
    order: Vec<u32>,
    /// `order` must be recomputed (a node came or went).
    order_dirty: bool,
}

/// A group of pending tasks asking the same thing.
struct Group<'a> {
    service_id: &'a str,
    spec_version: u64,
    tasks: Vec<&'a Task>,
}

impl Scheduler {
    /// Builds the view: every node, and every task that holds resources on a node (node_id
    /// set and observed state not terminal: COMPLETE, SHUTDOWN, FAILED, REJECTED, ORPHANED
    /// free their resources). Tasks may name nodes not given (yet):
    /// their use is kept and counts once the node is upserted.
    pub fn new<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        tasks: impl IntoIterator<Item = &'a Task>,
    ) -> Scheduler {
        let mut s = Scheduler::default();
        for n in nodes {
            s.upsert_node(n);
        }
        for t in tasks {
            s.task_changed(None, Some(t));
        }
        s
    }

    /// Places pending tasks (those with empty node_id and desired_state READY or RUNNING; others are
    /// ignored). Deterministic for the same input, whatever the order of `pending`: groups go
    /// by (service id, spec version), tasks within a group by (slot, task id). Updates its own
    /// view as it places, so one call can place many; a task placed by an earlier call whose
    /// assignment has not come back through [`Scheduler::task_changed`] yet gets the same
    /// node again (unless that node is gone or no longer available). When the caller does not
    /// commit an assignment, it reports the task's stored version with `task_changed` so the
    /// view drops the reservation.
    pub fn schedule<'a>(&mut self, pending: impl IntoIterator<Item = &'a Task>) -> Vec<Decision> {
        self.refresh_order();
        let mut out = Vec::new();
        let mut again: Vec<&'a Task> = Vec::new();
        let mut groups: Vec<Group<'a>> = Vec::new();
        let mut by_key: FastMap<(&'a str, u64), usize> = FastMap::default();
        for t in pending {
            if !is_pending(t) {
                continue;
            }
            if let Some(u) = self.tasks.get(&t.id) {
                let n = &self.nodes[u.node as usize];
                if n.present && n.available {
                    again.push(t);
                    continue;
                }
                // Its node went away before the assignment came back: place it anew.
                self.forget_task(&t.id);
            }
            let new_group = |groups: &mut Vec<Group<'a>>| {
                groups.push(Group {
                    service_id: &t.service_id,
                    spec_version: t.spec_version,
                    tasks: Vec::new(),
                });
                groups.len() - 1
            };
            // A task without a service asks only for itself.
            let g = if t.service_id.is_empty() {
                new_group(&mut groups)
            } else {
                *by_key
                    .entry((&t.service_id, t.spec_version))
                    .or_insert_with(|| new_group(&mut groups))
            };
            groups[g].tasks.push(t);
        }
        drop(by_key);

        again.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        again.dedup_by(|a, b| a.id == b.id);
        for t in again {
            if let Some(u) = self.tasks.get(&t.id) {
                out.push(Decision::Assign {
                    task_id: t.id.clone(),
                    node_id: self.nodes[u.node as usize].id.clone(),
                });
            }
        }

        for g in &mut groups {
            g.tasks
                .sort_unstable_by(|a, b| (a.slot, &a.id).cmp(&(b.slot, &b.id)));
            g.tasks.dedup_by(|a, b| a.id == b.id);
        }
        groups.sort_unstable_by(|a, b| {
            (a.service_id, a.spec_version, &a.tasks[0].id).cmp(&(
                b.service_id,
                b.spec_version,
                &b.tasks[0].id,
            ))
        });
        let to_place: usize = groups.iter().map(|g| g.tasks.len()).sum();
        out.reserve(to_place);
        // One growth of the task table instead of a rehash at every doubling.
        self.tasks.reserve(to_place);
        for g in &groups {
            self.place_group(&g.tasks, &mut out);
        }
        out
    }

    /// Places a task that can only go to `node_id` (a global service's task, bound to its node
    /// from the start): the filter pipeline on that node alone, against every reservation this
    /// view holds — including those of this pass's earlier placements, so two tasks never get
    /// the same memory or host port. Reserves on success, like [`Scheduler::schedule`].
    pub fn schedule_on(&mut self, task: &Task, node_id: &str) -> Decision {
        self.refresh_order();
        let pending = |reason: String| Decision::Pending {
            task_id: task.id.clone(),
            reason,
        };
        let Some(&slot) = self.index.get(node_id) else {
            return pending("its node is gone".into());
        };
        if let Some(u) = self.tasks.get(&task.id) {
            if u.node == slot {
                return Decision::Assign {
                    task_id: task.id.clone(),
                    node_id: node_id.to_string(),
                };
            }
            self.forget_task(&task.id);
        }
        if !self.nodes[slot as usize].present {
            return pending("its node is gone".into());
        }
        let service = self.intern_service(&task.service_id);
        let req = match TaskRequest::of(task, service, &self.strings) {
            Ok(r) => r,
            Err(reason) => return pending(reason),
        };
        let pipeline = Pipeline::new(&req);
        let node = &self.nodes[slot as usize];
        if !pipeline.check(node) {
            return pending(pipeline.explain(std::iter::once(node)));
        }
        let u = req.use_on(slot, service);
        self.apply(&u);
        self.tasks.insert(task.id.clone(), u);
        Decision::Assign {
            task_id: task.id.clone(),
            node_id: node_id.to_string(),
        }
    }

    /// Adds a node or takes its new spec, description and status (the tasks on it stay).
    pub fn upsert_node(&mut self, node: &Node) {
        let slot = self.slot(&node.id) as usize;
        if !self.nodes[slot].present {
            self.order_dirty = true;
        }
        self.nodes[slot].describe(node, &mut self.strings);
    }

    /// Removes a node: it is no longer a candidate. The tasks still on it keep counting until
    /// `task_changed` says they ended.
    pub fn remove_node(&mut self, id: &str) {
        let Some(&slot) = self.index.get(id) else {
            return;
        };
        let n = &mut self.nodes[slot as usize];
        if n.present {
            self.order_dirty = true;
        }
        n.forget();
        self.release_if_unused(slot);
    }

    /// A task was created (`old` None), updated, or deleted (`new` None). The view follows
    /// `new`: whatever was tracked for the task is dropped, and `new` is tracked if it holds
    /// resources on a node.
    pub fn task_changed(&mut self, old: Option<&Task>, new: Option<&Task>) {
        if let Some(o) = old {
            if new.is_none_or(|n| n.id != o.id) {
                self.forget_task(&o.id);
            }
        }
        if let Some(n) = new {
            self.forget_task(&n.id);
            if holds_resources(n) {
                self.track(n);
            }
        }
    }

    /// The slot of node `id`, a placeholder one when the node is unknown.
    fn slot(&mut self, id: &str) -> u32 {
        if let Some(&s) = self.index.get(id) {
            return s;
        }
        let s = match self.free.pop() {
            Some(s) => {
                self.nodes[s as usize] = NodeInfo::placeholder(id);
                s
            }
            None => {
                self.nodes.push(NodeInfo::placeholder(id));
                u32::try_from(self.nodes.len() - 1).expect("fewer than 2^32 nodes")
            }
        };
        self.index.insert(id.to_string(), s);
        s
    }

    /// Frees the slot of a node that is gone and has no task left.
    fn release_if_unused(&mut self, slot: u32) {
        let n = &mut self.nodes[slot as usize];
        if !n.present && n.tasks == 0 {
            self.index.remove(&n.id);
            *n = NodeInfo::default();
            self.free.push(slot);
        }
    }

    fn intern_service(&mut self, id: &str) -> u32 {
        if let Some(&s) = self.services.get(id) {
            return s;
        }
        let s = u32::try_from(self.service_nodes.len()).expect("fewer than 2^32 services");
        self.services.insert(id.to_string(), s);
        self.service_nodes.push(IndexMap::default());
        s
    }

    fn apply(&mut self, u: &TaskUse) {
        self.nodes[u.node as usize].add(u);
        *self.service_nodes[u.service as usize]
            .entry(u.node)
            .or_insert(0) += 1;
    }

    fn unapply(&mut self, u: &TaskUse) {
        self.nodes[u.node as usize].remove(u);
        let on = &mut self.service_nodes[u.service as usize];
        if let Some(n) = on.get_mut(&u.node) {
            *n -= 1;
            if *n == 0 {
                on.remove(&u.node);
            }
        }
        self.release_if_unused(u.node);
    }

    fn forget_task(&mut self, id: &str) {
        if let Some(u) = self.tasks.remove(id) {
            self.unapply(&u);
        }
    }

    /// Starts counting a task that holds resources (not tracked yet).
    fn track(&mut self, task: &Task) {
        let node = self.slot(&task.node_id);
        let service = self.intern_service(&task.service_id);
        let reservations = task
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.reservations.as_ref());
        let u = TaskUse {
            node,
            service,
            nano_cpus: reservations.map(|r| r.nano_cpus).unwrap_or(0).max(0),
            memory_bytes: reservations.map(|r| r.memory_bytes).unwrap_or(0).max(0),
            ports: host_ports(task).into_boxed_slice(),
        };
        self.apply(&u);
        self.tasks.insert(task.id.clone(), u);
    }

    fn refresh_order(&mut self) {
        if !self.order_dirty {
            return;
        }
        let nodes = &self.nodes;
        self.order = (0..nodes.len() as u32)
            .filter(|&s| nodes[s as usize].present)
            .collect();
        self.order
            .sort_unstable_by(|&a, &b| nodes[a as usize].id.cmp(&nodes[b as usize].id));
        self.order_dirty = false;
    }

    /// Places one group's tasks (sorted, same service and spec version).
    fn place_group(&mut self, tasks: &[&Task], out: &mut Vec<Decision>) {
        let Some(first) = tasks.first() else {
            return;
        };
        let service = self.intern_service(&first.service_id);
        let req = match TaskRequest::of(first, service, &self.strings) {
            Ok(r) => r,
            Err(reason) => return pend(tasks, reason, out),
        };
        let pipeline = Pipeline::new(&req);
        let mut tree = self.build_tree(&req, &pipeline, tasks.len());
        let mut placed = 0;
        for t in tasks {
            let Some((svc_on_node, _, rank)) = tree.pick() else {
                break;
            };
            let slot = self.order[rank as usize];
            let u = req.use_on(slot, service);
            self.apply(&u);
            let node = &self.nodes[slot as usize];
            let key = pipeline
                .check_dynamic(node)
                .then_some((svc_on_node + 1, node.tasks, rank));
            out.push(Decision::Assign {
                task_id: t.id.clone(),
                node_id: node.id.clone(),
            });
            tree.put_back(key);
            if let Some(old) = self.tasks.insert(t.id.clone(), u) {
                // The same task id twice in one call (under two spec versions): the last wins.
                self.unapply(&old);
            }
            placed += 1;
        }
        if placed < tasks.len() {
            let nodes = &self.nodes;
            let reason = pipeline.explain(self.order.iter().map(|&s| &nodes[s as usize]));
            pend(&tasks[placed..], reason, out);
        }
    }

    /// The decision tree of the nodes that pass `pipeline` for `req`, for placing `tasks`
    /// tasks.
    fn build_tree(&mut self, req: &TaskRequest, pipeline: &Pipeline, tasks: usize) -> Tree {
        let mut svc = std::mem::take(&mut self.scratch);
        svc.resize(self.nodes.len(), 0);
        let on = &self.service_nodes[req.service as usize];
        for (&slot, &n) in on {
            svc[slot as usize] = n;
        }
        let tree = if req.spread.is_empty() {
            let mut keys = Vec::with_capacity(self.order.len());
            for (rank, &slot) in self.order.iter().enumerate() {
                let n = &self.nodes[slot as usize];
                if pipeline.check(n) {
                    keys.push(Reverse((svc[slot as usize], n.tasks, rank as u32)));
                }
            }
            Tree::leaf(keys, tasks)
        } else {
            self.spread_tree(req, pipeline, tasks, &svc)
        };
        for &slot in on.keys() {
            svc[slot as usize] = 0;
        }
        self.scratch = svc;
        tree
    }

    /// The decision tree for placement preferences. `svc` has the service's tasks per slot.
    fn spread_tree(
        &self,
        req: &TaskRequest,
        pipeline: &Pipeline,
        tasks: usize,
        svc: &[u32],
    ) -> Tree {
        let levels = req.spread.len();
        // Every node that is a candidate or holds tasks of the service (a branch's count
        // includes the tasks on its nodes that cannot take more), with its label values
        // interned per level (u32::MAX: no such label).
        let mut values: Vec<IndexMap<u32>> = vec![IndexMap::default(); levels];
        let mut recs = Recs {
            levels,
            ..Recs::default()
        };
        for (rank, &slot) in self.order.iter().enumerate() {
            let n = &self.nodes[slot as usize];
            let candidate = pipeline.check(n);
            let count = svc[slot as usize];
            if !candidate && count == 0 {
                continue;
            }
            for (label, ids) in req.spread.iter().zip(values.iter_mut()) {
                recs.path.push(match label.value(n) {
                    Some(v) => {
                        let next = ids.len() as u32;
                        *ids.entry(v).or_insert(next)
                    }
                    None => u32::MAX,
                });
            }
            recs.svc.push(count);
            recs.key
                .push(candidate.then_some((count, n.tasks, rank as u32)));
        }
        // Number the values of each level in order (nodes without the label come last).
        let ordered: Vec<Vec<u32>> = values
            .iter()
            .map(|ids| {
                let mut v: Vec<(&str, u32)> = ids
                    .iter()
                    .map(|(k, id)| (self.strings.name(*k), *id))
                    .collect();
                v.sort_unstable();
                let mut order = vec![0; v.len()];
                for (pos, (_, id)) in v.iter().enumerate() {
                    order[*id as usize] = pos as u32;
                }
                order
            })
            .collect();
        for (i, id) in recs.path.iter_mut().enumerate() {
            let level = &ordered[i % levels];
            *id = if *id == u32::MAX {
                level.len() as u32
            } else {
                level[*id as usize]
            };
        }
        recs.distinct = ordered.iter().map(Vec::len).collect();
        let mut ix: Vec<u32> = (0..recs.svc.len() as u32).collect();
        let mut tree = Tree::default();
        let mut tmp = Vec::with_capacity(ix.len());
        tree.root = tree
            .build(&recs, &mut ix, 0, tasks, &mut tmp)
            .map(|(b, _)| b);
        tree
    }
}

/// Leaves `tasks` pending for `reason`.
fn pend(tasks: &[&Task], reason: String, out: &mut Vec<Decision>) {
    for t in tasks {
        out.push(Decision::Pending {
            task_id: t.id.clone(),
            reason: reason.clone(),
        });
    }
}

/// The nodes considered for a group with placement preferences, by record index.
#[derive(Default)]
struct Recs {
    levels: usize,
    /// Per level, the number of distinct values; value ids are their order, and the number
    /// itself stands for "no such label".
    distinct: Vec<usize>,
    /// `levels` value ids per record.
    path: Vec<u32>,
    /// Tasks of the service on the node.
    svc: Vec<u32>,
    /// The node's heap key when it is a candidate.
    key: Vec<Option<NodeKey>>,
}

/// (tasks of the service on the node, tasks on the node, rank of the node id).
type NodeKey = (u32, u32, u32);

/// A branch of the decision tree: a leaf holds nodes keyed by [`NodeKey`]; an inner branch
/// holds its children keyed by (tasks of the service under the child, the child's value
/// order, child index). Only branches with a candidate left are in their parent's heap.
#[derive(Default)]
struct Branch {
    leaf: bool,
    heap: BinaryHeap<Reverse<(u32, u32, u32)>>,
}

impl Branch {
    /// A leaf for placing at most `tasks` tasks: only the `tasks` best nodes can be picked
    /// (each pick takes the best node left, and a node that is not picked keeps its key), so
    /// the others are left out of the heap.
    fn leaf(mut keys: Vec<Reverse<NodeKey>>, tasks: usize) -> Branch {
        if tasks == 0 {
            keys.clear();
        } else if keys.len() > tasks {
            // Reverse: the best keys are the greatest.
            keys.select_nth_unstable_by(tasks - 1, |a, b| b.cmp(a));
            keys.truncate(tasks);
        }
        Branch {
            leaf: true,
            heap: BinaryHeap::from(keys),
        }
    }
}

/// The decision tree of one group; without preferences it is a single leaf.
#[derive(Default)]
struct Tree {
    branches: Vec<Branch>,
    root: Option<u32>,
    /// The descent of the last `pick`: (inner branch, the child entry popped from it).
    path: Vec<(u32, (u32, u32, u32))>,
    /// The leaf of the last `pick`.
    leaf: u32,
}

impl Tree {
    /// A tree of one leaf for `tasks` tasks.
    fn leaf(keys: Vec<Reverse<NodeKey>>, tasks: usize) -> Tree {
        let root = (!keys.is_empty()).then_some(0);
        Tree {
            branches: vec![Branch::leaf(keys, tasks)],
            root,
            ..Tree::default()
        }
    }

    /// Builds the branch of the records `ix` at `level` (`ix` is reordered); None when no
    /// candidate is under it. Returns the branch index and the tasks of the service under it.
    fn build(
        &mut self,
        recs: &Recs,
        ix: &mut [u32],
        level: usize,
        tasks: usize,
        tmp: &mut Vec<u32>,
    ) -> Option<(u32, u32)> {
        let count = ix.iter().map(|&i| recs.svc[i as usize]).sum();
        let idx = self.branches.len() as u32;
        if level == recs.levels {
            let keys: Vec<_> = ix
                .iter()
                .filter_map(|&i| recs.key[i as usize].map(Reverse))
                .collect();
            if keys.is_empty() {
                return None;
            }
            self.branches.push(Branch::leaf(keys, tasks));
            return Some((idx, count));
        }
        // Counting sort of `ix` by this level's value.
        let value = |i: u32| recs.path[i as usize * recs.levels + level] as usize;
        let mut start = vec![0usize; recs.distinct[level] + 2];
        for &i in ix.iter() {
            start[value(i) + 1] += 1;
        }
        for v in 1..start.len() {
            start[v] += start[v - 1];
        }
        tmp.clear();
        tmp.resize(ix.len(), 0);
        let mut next = start.clone();
        for &i in ix.iter() {
            tmp[next[value(i)]] = i;
            next[value(i)] += 1;
        }
        ix.copy_from_slice(tmp);
        self.branches.push(Branch::default());
        let mut children = Vec::new();
        for v in 0..start.len() - 1 {
            let (a, b) = (start[v], start[v + 1]);
            if a == b {
                continue;
            }
            if let Some((child, n)) = self.build(recs, &mut ix[a..b], level + 1, tasks, tmp) {
                children.push(Reverse((n, v as u32, child)));
            }
        }
        if children.is_empty() {
            // The branch stays in the table unreferenced.
            return None;
        }
        self.branches[idx as usize].heap = BinaryHeap::from(children);
        Some((idx, count))
    }

    /// Takes the best node: down the branches with the fewest tasks of the service, then the
    /// leaf's first node. The caller must `put_back` before the next pick.
    fn pick(&mut self) -> Option<NodeKey> {
        let mut b = self.root?;
        self.path.clear();
        loop {
            let Reverse(e) = self.branches[b as usize].heap.pop()?;
            if self.branches[b as usize].leaf {
                self.leaf = b;
                return Some(e);
            }
            self.path.push((b, e));
            b = e.2;
        }
    }

    /// Ends a pick: the node goes back with its new key when it can take more (`Some`), and
    /// each branch on the way counts one more task of the service.
    fn put_back(&mut self, key: Option<NodeKey>) {
        let leaf = &mut self.branches[self.leaf as usize].heap;
        if let Some(k) = key {
            leaf.push(Reverse(k));
        }
        let mut non_empty = !leaf.is_empty();
        for &(parent, (count, value, child)) in self.path.iter().rev() {
            let heap = &mut self.branches[parent as usize].heap;
            if non_empty {
                heap.push(Reverse((count + 1, value, child)));
            }
            non_empty = !heap.is_empty();
        }
        if !non_empty {
            self.root = None;
        }
    }
}

#[cfg(test)]
impl Scheduler {
    /// Panics unless every node's sums are those of the tasks tracked on it.
    fn check_invariants(&self) {
        let mut want: Vec<NodeInfo> = self
            .nodes
            .iter()
            .map(|n| NodeInfo::placeholder(&n.id))
            .collect();
        for u in self.tasks.values() {
            want[u.node as usize].add(u);
        }
        for (slot, (n, w)) in self.nodes.iter().zip(&want).enumerate() {
            assert_eq!(
                (n.cpu_reserved, n.mem_reserved, n.tasks, &n.services),
                (w.cpu_reserved, w.mem_reserved, w.tasks, &w.services),
                "node {}",
                n.id
            );
            let mut ports = n.ports.clone();
            let mut want_ports = w.ports.clone();
            ports.sort();
            want_ports.sort();
            assert_eq!(ports, want_ports, "node {}", n.id);
            if n.id.is_empty() {
                assert!(self.free.contains(&(slot as u32)));
            } else {
                assert_eq!(self.index[&n.id], slot as u32);
            }
            for (svc, on) in self.service_nodes.iter().enumerate() {
                assert_eq!(
                    on.get(&(slot as u32)).copied().unwrap_or(0),
                    n.service_tasks(svc as u32)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::control::v1::{
        NodeAvailability, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus, Placement,
        PlacementPreference, Platform, PortConfig, PortProtocol, ResourceRequirements, Resources,
        SpreadOver, TaskSpec, TaskStatus,
    };

    const GIB: i64 = 1 << 30;
    const MIB: i64 = 1 << 20;

    /// A READY, ACTIVE linux/x86_64 worker with 4 CPUs and 8 GiB.
    fn node(id: &str) -> Node {
        Node {
            id: id.to_string(),
            spec: Some(NodeSpec::default()),
            description: Some(NodeDescription {
                hostname: format!("host-{id}"),
                platform: Some(Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                }),
                resources: Some(Resources {
                    nano_cpus: 4_000_000_000,
                    memory_bytes: 8 * GIB,
                    pids: 0,
                }),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn label(mut n: Node, k: &str, v: &str) -> Node {
        n.spec
            .get_or_insert_default()
            .labels
            .insert(k.into(), v.into());
        n
    }

    fn memory(mut n: Node, bytes: i64) -> Node {
        let d = n.description.get_or_insert_default();
        d.resources.get_or_insert_default().memory_bytes = bytes;
        n
    }

    fn availability(mut n: Node, a: NodeAvailability) -> Node {
        n.spec.get_or_insert_default().availability = a as i32;
        n
    }

    fn state(mut n: Node, s: NodeState) -> Node {
        n.status.get_or_insert_default().state = s as i32;
        n
    }

    /// A pending task of `service`, slot `slot`, without requirements.
    fn task(id: &str, service: &str, slot: u64) -> Task {
        Task {
            id: id.to_string(),
            service_id: service.to_string(),
            slot,
            spec: Some(TaskSpec::default()),
            spec_version: 1,
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: TaskState::Pending as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `n` pending tasks `{service}-{slot}`.
    fn tasks(service: &str, n: u64, f: impl Fn(&mut Task)) -> Vec<Task> {
        (1..=n)
            .map(|i| {
                let mut t = task(&format!("{service}-{i}"), service, i);
                f(&mut t);
                t
            })
            .collect()
    }

    /// The task running on `node`.
    fn running(mut t: Task, node: &str) -> Task {
        t.node_id = node.to_string();
        t.status.get_or_insert_default().state = TaskState::Running as i32;
        t
    }

    fn placement(t: &mut Task) -> &mut Placement {
        t.spec
            .get_or_insert_default()
            .placement
            .get_or_insert_default()
    }

    fn reserve(t: &mut Task, nano_cpus: i64, memory_bytes: i64) {
        t.spec.get_or_insert_default().resources = Some(ResourceRequirements {
            limits: None,
            reservations: Some(Resources {
                nano_cpus,
                memory_bytes,
                pids: 0,
            }),
        });
    }

    fn publish(t: &mut Task, protocol: PortProtocol, port: u32) {
        t.endpoint.get_or_insert_default().ports.push(PortConfig {
            protocol: protocol as i32,
            target_port: 80,
            published_port: port,
            publish_mode: "host".into(),
            ..Default::default()
        });
    }

    /// Node id of each assigned task, "-" for pending ones, in decision order.
    fn placed(ds: &[Decision]) -> Vec<(String, String)> {
        ds.iter()
            .map(|d| match d {
                Decision::Assign { task_id, node_id } => (task_id.clone(), node_id.clone()),
                Decision::Pending { task_id, .. } => (task_id.clone(), "-".to_string()),
            })
            .collect()
    }

    /// Assigned tasks per node id.
    fn per_node(ds: &[Decision]) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for d in ds {
            if let Decision::Assign { node_id, .. } = d {
                *m.entry(node_id.clone()).or_insert(0) += 1;
            }
        }
        m
    }

    fn reasons(ds: &[Decision]) -> Vec<&str> {
        ds.iter()
            .filter_map(|d| match d {
                Decision::Pending { reason, .. } => Some(reason.as_str()),
                Decision::Assign { .. } => None,
            })
            .collect()
    }

    fn run(nodes: &[Node], existing: &[Task], pending: &[Task]) -> Vec<Decision> {
        Scheduler::new(nodes, existing).schedule(pending)
    }

    #[test]
    fn spreads_seven_tasks_on_three_nodes_three_two_two() {
        let nodes = [node("n1"), node("n2"), node("n3")];
        let ds = run(&nodes, &[], &tasks("web", 7, |_| {}));
        let want: Vec<(String, String)> = [
            ("web-1", "n1"),
            ("web-2", "n2"),
            ("web-3", "n3"),
            ("web-4", "n1"),
            ("web-5", "n2"),
            ("web-6", "n3"),
            ("web-7", "n1"),
        ]
        .iter()
        .map(|(t, n)| (t.to_string(), n.to_string()))
        .collect();
        assert_eq!(placed(&ds), want);
        let counts: Vec<usize> = per_node(&ds).into_values().collect();
        assert_eq!(counts, vec![3, 2, 2]);
    }

    #[test]
    fn spread_counts_the_service_first_then_all_tasks() {
        let nodes = [node("n1"), node("n2"), node("n3")];
        // n1 runs two tasks of another service, n3 one task of web.
        let existing = [
            running(task("db-1", "db", 1), "n1"),
            running(task("db-2", "db", 2), "n1"),
            running(task("web-0", "web", 9), "n3"),
        ];
        let ds = run(&nodes, &existing, &tasks("web", 3, |_| {}));
        // n2 (0 web, 0 tasks), then n1 (0 web, 2 tasks), then n3/n2 tie (1 web, 1 task) -> n2.
        assert_eq!(
            placed(&ds).into_iter().map(|(_, n)| n).collect::<Vec<_>>(),
            ["n2", "n1", "n2"]
        );
    }

    #[test]
    fn a_small_group_takes_the_best_nodes() {
        let nodes: Vec<Node> = (1..=5).map(|i| node(&format!("n{i}"))).collect();
        let mut existing = Vec::new();
        for (n, count) in [("n1", 3), ("n3", 2), ("n5", 1)] {
            for i in 0..count {
                existing.push(running(task(&format!("db-{n}-{i}"), "db", i), n));
            }
        }
        let on = |k: u64| -> Vec<String> {
            placed(&run(&nodes, &existing, &tasks("web", k, |_| {})))
                .into_iter()
                .map(|(_, n)| n)
                .collect()
        };
        assert_eq!(on(1), ["n2"]);
        assert_eq!(on(3), ["n2", "n4", "n5"]);
        assert_eq!(on(4), ["n2", "n4", "n5", "n3"]);
        assert_eq!(on(6), ["n2", "n4", "n5", "n3", "n1", "n2"]);
    }

    #[test]
    fn drained_paused_and_down_nodes_are_never_chosen() {
        let nodes = [
            availability(node("n1"), NodeAvailability::Drain),
            availability(node("n2"), NodeAvailability::Pause),
            state(node("n3"), NodeState::Down),
            state(node("n4"), NodeState::Disconnected),
            node("n5"),
        ];
        let ds = run(&nodes, &[], &tasks("web", 5, |_| {}));
        assert_eq!(
            per_node(&ds).into_iter().collect::<Vec<_>>(),
            [("n5".to_string(), 5)]
        );

        let nodes = [
            availability(node("n1"), NodeAvailability::Drain),
            availability(node("n2"), NodeAvailability::Pause),
            state(node("n3"), NodeState::Down),
        ];
        let ds = run(&nodes, &[], &tasks("web", 1, |_| {}));
        assert_eq!(reasons(&ds), ["no suitable node (3 nodes not available)"]);
        let ds = run(&nodes[..1], &[], &tasks("web", 1, |_| {}));
        assert_eq!(reasons(&ds), ["no suitable node (1 node not available)"]);
    }

    #[test]
    fn no_nodes_in_the_cluster() {
        let ds = run(&[], &[], &tasks("web", 2, |_| {}));
        assert_eq!(
            reasons(&ds),
            ["no suitable node (no nodes in the cluster)"; 2]
        );
    }

    #[test]
    fn resources_reserve_memory_and_cpu() {
        let nodes = [memory(node("n1"), GIB)];
        let ds = run(&nodes, &[], &tasks("web", 3, |t| reserve(t, 0, 512 * MIB)));
        assert_eq!(per_node(&ds)["n1"], 2);
        assert_eq!(reasons(&ds), ["no suitable node (1 node lacks memory)"]);

        // 4 CPUs: one task already reserves 3.
        let existing = [running(
            {
                let mut t = task("big-1", "big", 1);
                reserve(&mut t, 3_000_000_000, 0);
                t
            },
            "n1",
        )];
        let nodes = [node("n1"), node("n2")];
        let ds = run(
            &nodes,
            &existing,
            &tasks("web", 3, |t| reserve(t, 1_500_000_000, 0)),
        );
        assert_eq!(per_node(&ds)["n2"], 2);
        assert_eq!(reasons(&ds), ["no suitable node (2 nodes lack CPU)"]);
    }

    #[test]
    fn explanation_counts_each_node_once_in_pipeline_order() {
        let nodes = [
            state(label(node("n0"), "zone", "b"), NodeState::Down),
            memory(label(node("n1"), "zone", "b"), 100 * MIB),
            memory(label(node("n2"), "zone", "b"), 100 * MIB),
            memory(label(node("n3"), "zone", "a"), 100 * MIB),
            label(node("n4"), "zone", "a"),
            node("n5"),
        ];
        let ds = run(
            &nodes,
            &[],
            &tasks("web", 1, |t| {
                reserve(t, 0, GIB);
                placement(t).constraints = vec!["node.labels.zone == b".into()];
            }),
        );
        assert_eq!(
            reasons(&ds),
            ["no suitable node (1 node not available, 3 nodes lack memory, 2 nodes fail constraint node.labels.zone==b)"]
        );
    }

    #[test]
    fn constraints_on_every_key() {
        let mut m = label(node("m1"), "zone", "a");
        m.role = NodeRole::Manager as i32;
        let mut w = label(node("w1"), "zone", "b");
        w.description
            .get_or_insert_default()
            .engine_labels
            .insert("disk".into(), "ssd".into());
        let mut arm = node("w2");
        arm.description
            .get_or_insert_default()
            .platform
            .get_or_insert_default()
            .architecture = "aarch64".into();
        let nodes = [m, w, arm];
        let only = |constraint: &str| -> Vec<String> {
            let ds = run(
                &nodes,
                &[],
                &tasks("web", 3, |t| {
                    placement(t).constraints = vec![constraint.into()]
                }),
            );
            per_node(&ds).into_keys().collect()
        };
        assert_eq!(only("node.id==w1"), ["w1"]);
        assert_eq!(only("node.id!=w1"), ["m1", "w2"]);
        assert_eq!(only("node.hostname==host-w2"), ["w2"]);
        assert_eq!(only("node.role==MANAGER"), ["m1"]);
        assert_eq!(only("node.role != manager"), ["w1", "w2"]);
        assert_eq!(only("node.labels.zone==a"), ["m1"]);
        assert_eq!(only("node.labels.zone==A"), Vec::<String>::new());
        // A missing label: == fails, != passes.
        assert_eq!(only("node.labels.zone!=a"), ["w1", "w2"]);
        assert_eq!(only("engine.labels.disk==ssd"), ["w1"]);
        assert_eq!(only("engine.labels.disk!=ssd"), ["m1", "w2"]);
        assert_eq!(only("node.platform.os==Linux"), ["m1", "w1", "w2"]);
        assert_eq!(only("node.platform.arch==arm64"), ["w2"]);
        assert_eq!(only("node.platform.arch==AMD64"), ["m1", "w1"]);

        let ds = run(
            &nodes,
            &[],
            &tasks("web", 1, |t| {
                placement(t).constraints =
                    vec!["node.role==worker".into(), "node.labels.zone==b".into()]
            }),
        );
        assert_eq!(per_node(&ds).into_keys().collect::<Vec<_>>(), ["w1"]);
        let ds = run(
            &nodes,
            &[],
            &tasks("web", 1, |t| {
                placement(t).constraints =
                    vec!["node.role==worker".into(), "node.labels.zone==c".into()]
            }),
        );
        assert_eq!(
            reasons(&ds),
            ["no suitable node (1 node fails constraint node.role==worker, 2 nodes fail constraint node.labels.zone==c)"]
        );
    }

    #[test]
    fn invalid_stored_constraint_leaves_the_task_pending() {
        let ds = run(
            &[node("n1")],
            &[],
            &tasks("web", 1, |t| {
                placement(t).constraints = vec!["node.labels.zone=b".into()]
            }),
        );
        assert_eq!(
            reasons(&ds),
            ["invalid constraint \"node.labels.zone=b\": expected KEY==VALUE or KEY!=VALUE"]
        );
    }

    #[test]
    fn platforms_match_with_arch_aliases() {
        let mut arm = node("a1");
        arm.description
            .get_or_insert_default()
            .platform
            .get_or_insert_default()
            .architecture = "aarch64".into();
        let nodes = [arm, node("x1")];
        let want = |os: &str, arch: &str| -> Vec<Decision> {
            run(
                &nodes,
                &[],
                &tasks("web", 2, |t| {
                    placement(t).platforms = vec![Platform {
                        os: os.into(),
                        architecture: arch.into(),
                    }]
                }),
            )
        };
        assert_eq!(per_node(&want("linux", "arm64"))["a1"], 2);
        assert_eq!(per_node(&want("Linux", "amd64"))["x1"], 2);
        assert_eq!(per_node(&want("", "x86_64"))["x1"], 2);
        assert_eq!(per_node(&want("linux", "")).len(), 2);
        assert_eq!(
            reasons(&want("windows", "amd64")),
            ["no suitable node (2 nodes do not support platform windows/x86_64)"; 2]
        );
    }

    #[test]
    fn host_port_in_use_rejects_the_node() {
        let nodes = [node("n1"), node("n2")];
        let mut old = running(task("old-1", "old", 1), "n1");
        publish(&mut old, PortProtocol::Tcp, 8080);
        let ds = run(
            &nodes,
            &[old],
            &tasks("web", 2, |t| publish(t, PortProtocol::Tcp, 8080)),
        );
        assert_eq!(placed(&ds)[0], ("web-1".to_string(), "n2".to_string()));
        assert_eq!(
            reasons(&ds),
            ["no suitable node (2 nodes have host port 8080/tcp in use)"]
        );

        // Another protocol or port does not conflict; a single node explains in the singular.
        let mut old = running(task("old-1", "old", 1), "n1");
        publish(&mut old, PortProtocol::Tcp, 8080);
        let ds = run(
            &nodes[..1],
            std::slice::from_ref(&old),
            &tasks("dns", 1, |t| publish(t, PortProtocol::Udp, 8080)),
        );
        assert_eq!(per_node(&ds)["n1"], 1);
        let ds = run(
            &nodes[..1],
            &[old],
            &tasks("web", 1, |t| {
                publish(t, PortProtocol::Tcp, 9090);
                publish(t, PortProtocol::Tcp, 8080);
            }),
        );
        assert_eq!(
            reasons(&ds),
            ["no suitable node (1 node has host port 8080/tcp in use)"]
        );
    }

    #[test]
    fn max_replicas_per_node_leaves_the_rest_pending() {
        let nodes = [node("n1"), node("n2")];
        let existing = [running(task("web-0", "web", 9), "n1")];
        let ds = run(
            &nodes,
            &existing,
            &tasks("web", 5, |t| placement(t).max_replicas_per_node = 2),
        );
        assert_eq!(per_node(&ds)["n1"], 1);
        assert_eq!(per_node(&ds)["n2"], 2);
        assert_eq!(
            reasons(&ds),
            ["no suitable node (max replicas per node (2) reached on 2 nodes)"; 2]
        );
    }

    fn spread_zone(t: &mut Task) {
        placement(t).preferences = vec![PlacementPreference {
            spread: Some(SpreadOver {
                spread_descriptor: "node.labels.zone".into(),
            }),
        }];
    }

    #[test]
    fn preference_balances_zones_with_uneven_node_counts() {
        let nodes = [
            label(node("a1"), "zone", "a"),
            label(node("b1"), "zone", "b"),
            label(node("b2"), "zone", "b"),
            label(node("b3"), "zone", "b"),
        ];
        let ds = run(&nodes, &[], &tasks("web", 6, spread_zone));
        let counts = per_node(&ds);
        assert_eq!(counts["a1"], 3);
        assert_eq!((counts["b1"], counts["b2"], counts["b3"]), (1, 1, 1));

        // Existing tasks of the service count for their zone, even on a full node; nodes
        // without the label are a zone of their own.
        let nodes = [
            memory(label(node("a1"), "zone", "a"), 0),
            label(node("a2"), "zone", "a"),
            label(node("b1"), "zone", "b"),
            node("x1"),
        ];
        let existing = [
            running(task("web-0", "web", 10), "a1"),
            running(task("web-00", "web", 11), "a1"),
        ];
        let ds = run(
            &nodes,
            &existing,
            &tasks("web", 4, |t| {
                spread_zone(t);
                reserve(t, 0, MIB);
            }),
        );
        let counts = per_node(&ds);
        assert_eq!(counts.get("a2"), None);
        assert_eq!((counts["b1"], counts["x1"]), (2, 2));
    }

    #[test]
    fn hierarchical_preferences() {
        let dc = |n: Node, d: &str, r: &str| label(label(n, "dc", d), "rack", r);
        let nodes = [
            dc(node("n1"), "east", "r1"),
            dc(node("n2"), "east", "r1"),
            dc(node("n3"), "east", "r2"),
            dc(node("n4"), "west", "r3"),
        ];
        let ds = run(
            &nodes,
            &[],
            &tasks("web", 8, |t| {
                placement(t).preferences = ["node.labels.dc", "node.labels.rack"]
                    .iter()
                    .map(|d| PlacementPreference {
                        spread: Some(SpreadOver {
                            spread_descriptor: d.to_string(),
                        }),
                    })
                    .collect();
            }),
        );
        let counts = per_node(&ds);
        // 4 per dc; in east 2 per rack.
        assert_eq!(counts["n4"], 4);
        assert_eq!(counts["n3"], 2);
        assert_eq!((counts["n1"], counts["n2"]), (1, 1));
    }

    #[test]
    fn more_memory_lets_a_pending_task_be_placed_on_the_next_call() {
        let mut s = Scheduler::new(&[memory(node("n1"), 256 * MIB)], &[]);
        let pending = tasks("web", 1, |t| reserve(t, 0, 512 * MIB));
        assert_eq!(
            reasons(&s.schedule(&pending)),
            ["no suitable node (1 node lacks memory)"]
        );
        s.upsert_node(&memory(node("n1"), GIB));
        assert_eq!(placed(&s.schedule(&pending))[0].1, "n1");
    }

    #[test]
    fn a_task_that_ends_frees_its_resources() {
        let mut big = running(task("big-1", "big", 1), "n1");
        reserve(&mut big, 0, GIB);
        let done = {
            let mut t = big.clone();
            t.status.get_or_insert_default().state = TaskState::Complete as i32;
            t
        };
        let nodes = [memory(node("n1"), GIB)];
        let pending = tasks("web", 1, |t| reserve(t, 0, GIB));

        let mut s = Scheduler::new(&nodes, std::slice::from_ref(&big));
        assert_eq!(
            reasons(&s.schedule(&pending)),
            ["no suitable node (1 node lacks memory)"]
        );
        s.task_changed(Some(&big), Some(&done));
        assert_eq!(placed(&s.schedule(&pending))[0].1, "n1");

        // A terminal task does not count at build time; deleting a task frees too. A task
        // being shut down (desired state) holds until it has stopped.
        assert_eq!(placed(&run(&nodes, &[done], &pending))[0].1, "n1");
        let mut s = Scheduler::new(&nodes, std::slice::from_ref(&big));
        let mut stopping = big.clone();
        stopping.desired_state = TaskState::Shutdown as i32;
        s.task_changed(Some(&big), Some(&stopping));
        assert_eq!(
            reasons(&s.schedule(&pending)),
            ["no suitable node (1 node lacks memory)"]
        );
        let mut stopped = stopping.clone();
        stopped.status.get_or_insert_default().state = TaskState::Shutdown as i32;
        s.task_changed(Some(&stopping), Some(&stopped));
        assert_eq!(placed(&s.schedule(&pending))[0].1, "n1");
        let mut s = Scheduler::new(&nodes, std::slice::from_ref(&big));
        s.task_changed(Some(&big), None);
        assert_eq!(placed(&s.schedule(&pending))[0].1, "n1");
    }

    #[test]
    fn a_placed_task_is_counted_once() {
        let nodes = [memory(node("n1"), GIB), memory(node("n2"), GIB)];
        let pending = tasks("web", 2, |t| reserve(t, 0, GIB));
        let mut s = Scheduler::new(&nodes, &[]);
        let first = s.schedule(&pending);
        assert_eq!(per_node(&first).len(), 2);
        // Asked again before the assignments come back: same answer, nothing counted twice.
        assert_eq!(s.schedule(&pending), first);
        // The assignments come back through the store.
        for (t, (_, n)) in pending.iter().zip(placed(&first)) {
            s.task_changed(Some(t), Some(&running(t.clone(), &n)));
        }
        let slot = s.index["n1"] as usize;
        assert_eq!((s.nodes[slot].tasks, s.nodes[slot].mem_reserved), (1, GIB));
        let more = tasks("api", 1, |t| reserve(t, 0, GIB));
        assert_eq!(
            reasons(&s.schedule(&more)),
            ["no suitable node (2 nodes lack memory)"]
        );
    }

    #[test]
    fn removed_nodes_are_not_chosen_and_their_tasks_still_count() {
        let existing = [running(task("web-0", "web", 9), "n1")];
        let mut s = Scheduler::new(&[node("n1"), node("n2")], &existing);
        s.remove_node("n2");
        assert_eq!(placed(&s.schedule(&tasks("web", 1, |_| {})))[0].1, "n1");
        s.remove_node("n1");
        assert_eq!(
            reasons(&s.schedule(&tasks("api", 1, |_| {}))),
            ["no suitable node (no nodes in the cluster)"]
        );
        // The node comes back with its task still counted (and the one placed above).
        s.upsert_node(&node("n1"));
        let slot = s.index["n1"] as usize;
        assert_eq!(s.nodes[slot].tasks, 2);
        // A node that is gone with nothing on it frees its slot.
        assert!(!s.index.contains_key("n2"));
    }

    #[test]
    fn deterministic_whatever_the_input_order() {
        let nodes: Vec<Node> = (0..12)
            .map(|i| {
                let zone = ["a", "b", "c"][i % 3];
                memory(
                    label(node(&format!("n{i:02}")), "zone", zone),
                    (i as i64 + 1) * GIB,
                )
            })
            .collect();
        let mut pending = tasks("web", 20, |t| reserve(t, 0, GIB));
        pending.extend(tasks("api", 9, spread_zone));
        pending.extend(tasks("db", 5, |t| {
            placement(t).constraints = vec!["node.labels.zone!=c".into()];
            placement(t).max_replicas_per_node = 1;
            publish(t, PortProtocol::Tcp, 5432);
        }));
        let a = run(&nodes, &[], &pending);
        let mut rev_nodes = nodes.clone();
        rev_nodes.reverse();
        let mut rev_pending = pending.clone();
        rev_pending.reverse();
        let b = run(&rev_nodes, &[], &rev_pending);
        assert_eq!(a, b);
        assert_eq!(a.len(), pending.len());
    }

    #[test]
    fn a_placed_task_whose_node_went_away_is_placed_anew() {
        let mut s = Scheduler::new(&[node("n1"), node("n2")], &[]);
        let pending = tasks("web", 1, |_| {});
        assert_eq!(placed(&s.schedule(&pending))[0].1, "n1");
        s.upsert_node(&state(node("n1"), NodeState::Down));
        assert_eq!(placed(&s.schedule(&pending))[0].1, "n2");
        s.remove_node("n2");
        assert_eq!(
            reasons(&s.schedule(&pending)),
            ["no suitable node (1 node not available)"]
        );
        s.check_invariants();
    }

    /// A long run of random events (a fixed seed) keeps every node's sums right.
    #[test]
    fn the_view_stays_consistent_through_random_events() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut s = Scheduler::default();
        let mut live: Vec<Task> = Vec::new();
        for round in 0..200 {
            match rand(6) {
                0 => {
                    let id = format!("n{}", rand(8));
                    s.upsert_node(&memory(
                        label(node(&id), "zone", ["a", "b"][rand(2) as usize]),
                        4 * GIB,
                    ));
                }
                1 => s.remove_node(&format!("n{}", rand(8))),
                2 | 3 => {
                    let svc = format!("s{}", rand(4));
                    let (n, mem, port, spread, max) =
                        (1 + rand(5), rand(3), rand(3), rand(3), rand(4));
                    let pending = tasks(&svc, n, |t| {
                        t.id = format!("{}-{round}", t.id);
                        reserve(t, 100_000_000, 256 * MIB * mem as i64);
                        if port != 0 {
                            publish(t, PortProtocol::Tcp, 8000 + port as u32);
                        }
                        if spread == 0 {
                            spread_zone(t);
                        }
                        if max == 0 {
                            placement(t).max_replicas_per_node = 2;
                        }
                    });
                    for (t, (_, n)) in pending.iter().zip(placed(&s.schedule(&pending))) {
                        if n != "-" && rand(4) != 0 {
                            let r = running(t.clone(), &n);
                            s.task_changed(Some(t), Some(&r));
                            live.push(r);
                        }
                    }
                }
                _ => {
                    if !live.is_empty() {
                        let t = live.swap_remove(rand(live.len() as u64) as usize);
                        let mut ended = t.clone();
                        ended.status.get_or_insert_default().state = TaskState::Failed as i32;
                        if rand(2) == 0 {
                            s.task_changed(Some(&t), Some(&ended));
                        } else {
                            s.task_changed(Some(&t), None);
                        }
                    }
                }
            }
            s.check_invariants();
        }
        assert!(
            s.tasks.len() > 20,
            "the events placed {} tasks",
            s.tasks.len()
        );
    }

    #[test]
    fn ignores_tasks_that_are_not_pending() {
        let mut on_node = task("t1", "web", 1);
        on_node.node_id = "n1".into();
        let mut stopped = task("t2", "web", 2);
        stopped.desired_state = TaskState::Shutdown as i32;
        let ds = run(&[node("n1")], &[], &[on_node, stopped]);
        assert!(ds.is_empty());
    }
}
