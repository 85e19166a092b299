//! The filter pipeline (the idea of swarmkit's `filter.go` and `pipeline.go`): small filters,
//! each prepared for a task with `set_task` (false = it does not apply), asked `check` per
//! node, and able to `explain` how many nodes it rejected. A node is rejected by the first
//! filter it fails, so each node counts once, against one filter.
//!
//! Filters that can reject for several distinct reasons (one per constraint, one per host port,
//! memory apart from CPU) appear once per reason, so explanations can name the reason. Filters
//! whose verdict changes as tasks are placed on a node (resources, host ports, max replicas per
//! node) are `dynamic`: the placement loop re-checks only those when a node takes a task.

use flotilla_proto::control::v1::{PlacementPreference, Task};

use super::constraint::{normalize_arch, Constraint};
use super::node::{HostPort, Interner, NodeInfo, TaskUse};

/// What the filters need to know about a task (all tasks of one service at one spec version
/// ask the same thing).
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskRequest {
    /// Interned service id.
    pub service: u32,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub constraints: Vec<Constraint>,
    /// The platforms the task runs on (any, when empty).
    pub platforms: Vec<PlatformWant>,
    /// Published host ports.
    pub ports: Vec<HostPort>,
    /// 0 = unlimited.
    pub max_per_node: u64,
    /// Labels spread over, outermost first.
    pub spread: Vec<Spread>,
}

/// One of `placement.platforms`: os lower case and arch normalized as written (for
/// explanations), and their interned ids (`None` inside: no node has it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlatformWant {
    pub os: String,
    pub arch: String,
    os_id: Option<u32>,
    arch_id: Option<u32>,
}

impl PlatformWant {
    fn new(os: &str, arch: &str, strings: &Interner) -> Self {
        let os = os.trim().to_ascii_lowercase();
        let arch = normalize_arch(arch);
        PlatformWant {
            os_id: strings.get(&os),
            arch_id: strings.get(&arch),
            os,
            arch,
        }
    }

    fn matches(&self, node: &NodeInfo) -> bool {
        (self.os.is_empty() || (self.os_id.is_some() && node.os == self.os_id))
            && (self.arch.is_empty() || (self.arch_id.is_some() && node.arch == self.arch_id))
    }
}

/// A placement preference `spread=node.labels.KEY` or `spread=engine.labels.KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SpreadLabel {
    Node(String),
    Engine(String),
}

/// A spread label resolved against the interner (None: no node has the label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spread {
    engine: bool,
    name: Option<u32>,
}

impl Spread {
    /// The node's value of the label, interned.
    pub fn value(&self, node: &NodeInfo) -> Option<u32> {
        let name = self.name?;
        if self.engine {
            node.engine_label(name)
        } else {
            node.label(name)
        }
    }
}

impl SpreadLabel {
    /// Parses a spread descriptor; the error is the message shown to the user.
    pub fn parse(descriptor: &str) -> Result<SpreadLabel, String> {
        let d = descriptor.trim();
        let label = |prefix: &str| d.strip_prefix(prefix).filter(|k| !k.is_empty());
        if let Some(k) = label("node.labels.") {
            Ok(SpreadLabel::Node(k.to_string()))
        } else if let Some(k) = label("engine.labels.") {
            Ok(SpreadLabel::Engine(k.to_string()))
        } else {
            Err(format!(
                "invalid placement preference spread={descriptor:?}: expected node.labels.KEY or engine.labels.KEY"
            ))
        }
    }

    fn resolve(&self, strings: &Interner) -> Spread {
        match self {
            SpreadLabel::Node(k) => Spread {
                engine: false,
                name: strings.get(k),
            },
            SpreadLabel::Engine(k) => Spread {
                engine: true,
                name: strings.get(k),
            },
        }
    }
}

/// Checks a service's placement preferences (the API calls it with [`super::validate_constraints`]).
pub fn validate_preferences(preferences: &[PlacementPreference]) -> Result<(), String> {
    for p in preferences {
        let Some(spread) = &p.spread else {
            return Err("invalid placement preference: only spread is supported".to_string());
        };
        SpreadLabel::parse(&spread.spread_descriptor)?;
    }
    Ok(())
}

impl TaskRequest {
    /// What a task of this request holds once placed on the node in `slot`.
    pub fn use_on(&self, slot: u32, service: u32) -> TaskUse {
        TaskUse {
            node: slot,
            service,
            nano_cpus: self.nano_cpus,
            memory_bytes: self.memory_bytes,
            ports: self.ports.clone().into_boxed_slice(),
        }
    }

    /// The request of `task`, its service interned as `service`, labels and platforms looked
    /// up in `strings`. Errs with the user's message when the placement cannot be understood
    /// (the API should have refused it).
    pub fn of(task: &Task, service: u32, strings: &Interner) -> Result<TaskRequest, String> {
        let spec = task.spec.as_ref();
        let reservations = spec
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.reservations.as_ref());
        let placement = spec.and_then(|s| s.placement.as_ref());
        let mut req = TaskRequest {
            service,
            nano_cpus: reservations.map(|r| r.nano_cpus).unwrap_or(0).max(0),
            memory_bytes: reservations.map(|r| r.memory_bytes).unwrap_or(0).max(0),
            ports: host_ports(task),
            ..TaskRequest::default()
        };
        if let Some(p) = placement {
            for c in &p.constraints {
                let mut c = Constraint::parse(c)?;
                c.resolve(strings);
                req.constraints.push(c);
            }
            req.platforms = p
                .platforms
                .iter()
                .map(|p| PlatformWant::new(&p.os, &p.architecture, strings))
                .collect();
            req.max_per_node = p.max_replicas_per_node;
            for pref in &p.preferences {
                match &pref.spread {
                    Some(s) => req
                        .spread
                        .push(SpreadLabel::parse(&s.spread_descriptor)?.resolve(strings)),
                    None => {
                        return Err("invalid placement preference: only spread is supported".into())
                    }
                }
            }
        }
        Ok(req)
    }
}

/// The host ports a task publishes: every port with a published port number (publish mode
/// "host", the only one until the routing mesh exists), deduplicated.
pub(crate) fn host_ports(task: &Task) -> Vec<HostPort> {
    let mut ports: Vec<HostPort> = task
        .endpoint
        .iter()
        .flat_map(|e| e.ports.iter())
        .filter(|p| p.published_port != 0)
        .map(|p| HostPort {
            protocol: p.protocol,
            port: p.published_port,
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// One check of the pipeline.
pub(crate) trait Filter {
    /// Prepares the filter for `task`; false when it does not apply (it is then skipped).
    fn set_task(&mut self, task: &TaskRequest) -> bool;
    /// Whether `node` passes.
    fn check(&self, node: &NodeInfo) -> bool;
    /// Why `rejected` nodes (at least one) failed, e.g. "3 nodes lack memory".
    fn explain(&self, rejected: usize) -> String;
    /// Whether the verdict changes as tasks are placed on a node.
    fn dynamic(&self) -> bool {
        false
    }
}

/// "1 node" / "3 nodes", and the verb that agrees with it.
fn nodes(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 node {one}")
    } else {
        format!("{n} nodes {many}")
    }
}

/// Status READY and availability ACTIVE (pause, drain, down and unknown all reject).
#[derive(Default)]
pub(crate) struct ReadyFilter;

impl Filter for ReadyFilter {
    fn set_task(&mut self, _: &TaskRequest) -> bool {
        true
    }
    fn check(&self, node: &NodeInfo) -> bool {
        node.available
    }
    fn explain(&self, n: usize) -> String {
        nodes(n, "not available", "not available")
    }
}

/// One resource the task reserves against what the node has left.
pub(crate) struct ResourceFilter {
    memory: bool,
    need: i64,
}

impl ResourceFilter {
    pub fn memory() -> Self {
        ResourceFilter {
            memory: true,
            need: 0,
        }
    }
    pub fn cpu() -> Self {
        ResourceFilter {
            memory: false,
            need: 0,
        }
    }
}

impl Filter for ResourceFilter {
    fn set_task(&mut self, task: &TaskRequest) -> bool {
        self.need = if self.memory {
            task.memory_bytes
        } else {
            task.nano_cpus
        };
        self.need > 0
    }
    fn check(&self, node: &NodeInfo) -> bool {
        if self.memory {
            node.memory_bytes - node.mem_reserved >= self.need
        } else {
            node.nano_cpus - node.cpu_reserved >= self.need
        }
    }
    fn explain(&self, n: usize) -> String {
        if self.memory {
            nodes(n, "lacks memory", "lack memory")
        } else {
            nodes(n, "lacks CPU", "lack CPU")
        }
    }
    fn dynamic(&self) -> bool {
        true
    }
}

/// The task's `index`-th constraint.
pub(crate) struct ConstraintFilter {
    index: usize,
    constraint: Option<Constraint>,
}

impl ConstraintFilter {
    pub fn new(index: usize) -> Self {
        ConstraintFilter {
            index,
            constraint: None,
        }
    }
}

impl Filter for ConstraintFilter {
    fn set_task(&mut self, task: &TaskRequest) -> bool {
        self.constraint = task.constraints.get(self.index).cloned();
        self.constraint.is_some()
    }
    fn check(&self, node: &NodeInfo) -> bool {
        self.constraint.as_ref().is_none_or(|c| c.matches(node))
    }
    fn explain(&self, n: usize) -> String {
        let c = self.constraint.as_ref().map(|c| c.text.as_str());
        let what = format!("constraint {}", c.unwrap_or("?"));
        nodes(n, &format!("fails {what}"), &format!("fail {what}"))
    }
}

/// The node's platform is one of the task's `placement.platforms` (when it lists any).
#[derive(Default)]
pub(crate) struct PlatformFilter {
    platforms: Vec<PlatformWant>,
}

impl Filter for PlatformFilter {
    fn set_task(&mut self, task: &TaskRequest) -> bool {
        self.platforms = task.platforms.clone();
        !self.platforms.is_empty()
    }
    fn check(&self, node: &NodeInfo) -> bool {
        self.platforms.iter().any(|p| p.matches(node))
    }
    fn explain(&self, n: usize) -> String {
        let wanted: Vec<String> = self
            .platforms
            .iter()
            .map(|p| match (p.os.is_empty(), p.arch.is_empty()) {
                (false, false) => format!("{}/{}", p.os, p.arch),
                (true, _) => p.arch.clone(),
                (false, true) => p.os.clone(),
            })
            .collect();
        let what = format!("platform {}", wanted.join(" or "));
        nodes(
            n,
            &format!("does not support {what}"),
            &format!("do not support {what}"),
        )
    }
}

/// The task's `index`-th published host port is free on the node.
pub(crate) struct HostPortFilter {
    index: usize,
    port: Option<HostPort>,
}

impl HostPortFilter {
    pub fn new(index: usize) -> Self {
        HostPortFilter { index, port: None }
    }
}

impl Filter for HostPortFilter {
    fn set_task(&mut self, task: &TaskRequest) -> bool {
        self.port = task.ports.get(self.index).copied();
        self.port.is_some()
    }
    fn check(&self, node: &NodeInfo) -> bool {
        self.port.is_none_or(|p| !node.port_in_use(p))
    }
    fn explain(&self, n: usize) -> String {
        let what = match self.port {
            Some(p) => format!("host port {p} in use"),
            None => "a host port in use".to_string(),
        };
        nodes(n, &format!("has {what}"), &format!("have {what}"))
    }
    fn dynamic(&self) -> bool {
        true
    }
}

/// `placement.max_replicas_per_node`: the service's tasks on the node stay below it.
#[derive(Default)]
pub(crate) struct MaxReplicasFilter {
    service: u32,
    max: u64,
}

impl Filter for MaxReplicasFilter {
    fn set_task(&mut self, task: &TaskRequest) -> bool {
        self.service = task.service;
        self.max = task.max_per_node;
        self.max > 0
    }
    fn check(&self, node: &NodeInfo) -> bool {
        u64::from(node.service_tasks(self.service)) < self.max
    }
    fn explain(&self, n: usize) -> String {
        let on = if n == 1 {
            "1 node".to_string()
        } else {
            format!("{n} nodes")
        };
        format!("max replicas per node ({}) reached on {on}", self.max)
    }
    fn dynamic(&self) -> bool {
        true
    }
}

/// The filters that apply to one task request, in order.
pub(crate) struct Pipeline {
    filters: Vec<Box<dyn Filter>>,
    /// Indices into `filters` of the dynamic ones.
    dynamic: Vec<usize>,
}

impl Pipeline {
    /// Ready, memory, CPU, each constraint, platform, each host port, max replicas per node;
    /// only those that apply to `task`.
    pub fn new(task: &TaskRequest) -> Pipeline {
        let mut all: Vec<Box<dyn Filter>> = vec![
            Box::new(ReadyFilter),
            Box::new(ResourceFilter::memory()),
            Box::new(ResourceFilter::cpu()),
        ];
        for i in 0..task.constraints.len() {
            all.push(Box::new(ConstraintFilter::new(i)));
        }
        all.push(Box::<PlatformFilter>::default());
        for i in 0..task.ports.len() {
            all.push(Box::new(HostPortFilter::new(i)));
        }
        all.push(Box::<MaxReplicasFilter>::default());
        all.retain_mut(|f| f.set_task(task));
        let dynamic = (0..all.len()).filter(|&i| all[i].dynamic()).collect();
        Pipeline {
            filters: all,
            dynamic,
        }
    }

    /// Whether `node` passes every filter.
    pub fn check(&self, node: &NodeInfo) -> bool {
        self.filters.iter().all(|f| f.check(node))
    }

    /// Whether `node` still passes the dynamic filters (it passed all of them before taking
    /// a task).
    pub fn check_dynamic(&self, node: &NodeInfo) -> bool {
        self.dynamic.iter().all(|&i| self.filters[i].check(node))
    }

    /// Why no node of `nodes` fits: "no suitable node (3 nodes lack memory, 2 nodes fail
    /// constraint node.labels.zone==b)", each filter's count of the nodes it rejected first,
    /// in pipeline order.
    pub fn explain<'n>(&self, nodes: impl IntoIterator<Item = &'n NodeInfo>) -> String {
        let mut counts = vec![0usize; self.filters.len()];
        let mut any = false;
        for node in nodes {
            any = true;
            if let Some(i) = self.filters.iter().position(|f| !f.check(node)) {
                counts[i] += 1;
            }
        }
        if !any {
            return "no suitable node (no nodes in the cluster)".to_string();
        }
        let reasons: Vec<String> = counts
            .iter()
            .zip(&self.filters)
            .filter(|(n, _)| **n > 0)
            .map(|(n, f)| f.explain(*n))
            .collect();
        if reasons.is_empty() {
            "no suitable node".to_string()
        } else {
            format!("no suitable node ({})", reasons.join(", "))
        }
    }
}
