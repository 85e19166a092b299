//! The cluster state machine: the objects of `flotilla.control.v1` (cluster, nodes, services,
//! tasks, secrets, configs), changed only by applying raft-committed [`StoreBatch`]es.
//!
//! Invariants:
//! - `apply` is deterministic: the same batches at the same indexes give the same state on every
//!   manager. Times come from the proposer (in the objects), never from the clock here.
//! - A batch is atomic: every action is checked first (existence, versions, unique names) and
//!   either all apply or none does.
//! - `meta.version` of an object is the raft index of its last write. An UPDATE names the version
//!   it read; a different stored version refuses the batch (optimistic concurrency), so two
//!   writers never silently overwrite each other.
//! - Service, secret and config names are unique among their kind.
//! - Watchers get the events of each applied batch in order; a watcher that lags behind gets
//!   `Lagged` and must resync from a full read (reconcilers start with a full pass anyway).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use flotilla_proto::control::v1::{
    store_action::Target, ActionKind, Cluster, Config, Node, Secret, Service, StoreAction,
    StoreBatch, StoreSnapshot, Task,
};
use prost::Message;
use tokio::sync::broadcast;

/// The kinds of stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Cluster,
    Node,
    Service,
    Task,
    Secret,
    Config,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Cluster => "cluster",
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Secret => "secret",
            Kind::Config => "config",
        })
    }
}

/// Why a batch was refused. Deterministic: every manager refuses the same batch the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id} changed since it was read (version {expected}, now {found}): retry")]
    Conflict {
        kind: Kind,
        id: String,
        expected: u64,
        found: u64,
    },
    #[error("no such {kind}: {id}")]
    NotFound { kind: Kind, id: String },
    #[error("{kind} {id} already exists")]
    Exists { kind: Kind, id: String },
    #[error("{kind} name {name:?} is already in use by {id}")]
    NameInUse {
        kind: Kind,
        name: String,
        id: String,
    },
    #[error("invalid store action: {0}")]
    Invalid(String),
}

/// A stored object, as events carry it.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // moved around by value once per event; boxing buys nothing
pub enum Object {
    Cluster(Cluster),
    Node(Node),
    Service(Service),
    Task(Task),
    Secret(Secret),
    Config(Config),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Cluster(_) => Kind::Cluster,
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::Task(_) => Kind::Task,
            Object::Secret(_) => Kind::Secret,
            Object::Config(_) => Kind::Config,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Object::Cluster(o) => &o.id,
            Object::Node(o) => &o.id,
            Object::Service(o) => &o.id,
            Object::Task(o) => &o.id,
            Object::Secret(o) => &o.id,
            Object::Config(o) => &o.id,
        }
    }

    fn from_target(t: &Target) -> Object {
        match t {
            Target::Cluster(o) => Object::Cluster(o.clone()),
            Target::Node(o) => Object::Node(o.clone()),
            Target::Service(o) => Object::Service(o.clone()),
            Target::Task(o) => Object::Task(o.clone()),
            Target::Secret(o) => Object::Secret(o.clone()),
            Target::Config(o) => Object::Config(o.clone()),
        }
    }

    fn meta_mut(&mut self) -> &mut Option<flotilla_proto::control::v1::Meta> {
        match self {
            Object::Cluster(o) => &mut o.meta,
            Object::Node(o) => &mut o.meta,
            Object::Service(o) => &mut o.meta,
            Object::Task(o) => &mut o.meta,
            Object::Secret(o) => &mut o.meta,
            Object::Config(o) => &mut o.meta,
        }
    }

    fn version(&self) -> u64 {
        let meta = match self {
            Object::Cluster(o) => &o.meta,
            Object::Node(o) => &o.meta,
            Object::Service(o) => &o.meta,
            Object::Task(o) => &o.meta,
            Object::Secret(o) => &o.meta,
            Object::Config(o) => &o.meta,
        };
        meta.as_ref().map_or(0, |m| m.version)
    }

    /// The name that must be unique among the kind, if the kind has one.
    fn unique_name(&self) -> Option<&str> {
        match self {
            Object::Service(o) => o.spec.as_ref().map(|s| s.name.as_str()),
            Object::Secret(o) => o.spec.as_ref().map(|s| s.name.as_str()),
            Object::Config(o) => o.spec.as_ref().map(|s| s.name.as_str()),
            _ => None,
        }
    }
}

/// One change an applied batch made.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // built once per change and shared behind an Arc
pub enum Event {
    Created(Object),
    Updated { old: Object, new: Object },
    Removed(Object),
}

impl Event {
    /// The object after the change (the removed one for removals).
    pub fn object(&self) -> &Object {
        match self {
            Event::Created(o) | Event::Removed(o) => o,
            Event::Updated { new, .. } => new,
        }
    }
}

/// The events of one applied batch.
#[derive(Debug, Clone)]
pub struct Applied {
    pub index: u64,
    pub events: Vec<Event>,
}

/// The whole cluster state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub cluster: Option<Cluster>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    pub tasks: BTreeMap<String, Task>,
    pub secrets: BTreeMap<String, Secret>,
    pub configs: BTreeMap<String, Config>,
    /// Raft index of the last applied batch.
    pub applied_index: u64,
    /// (kind, name) -> id of the services, secrets and configs: unique names are checked in
    /// O(1) on every manager's apply (a scan per create made writes slower as the store grew).
    names: HashMap<(Kind, String), String>,
}

impl State {
    fn get(&self, kind: Kind, id: &str) -> Option<Object> {
        match kind {
            Kind::Cluster => self
                .cluster
                .as_ref()
                .filter(|c| c.id == id)
                .cloned()
                .map(Object::Cluster),
            Kind::Node => self.nodes.get(id).cloned().map(Object::Node),
            Kind::Service => self.services.get(id).cloned().map(Object::Service),
            Kind::Task => self.tasks.get(id).cloned().map(Object::Task),
            Kind::Secret => self.secrets.get(id).cloned().map(Object::Secret),
            Kind::Config => self.configs.get(id).cloned().map(Object::Config),
        }
    }

    fn name_owner(&self, kind: Kind, name: &str) -> Option<String> {
        self.names.get(&(kind, name.to_string())).cloned()
    }

    /// The id of the service, secret or config named `name` (the kinds with unique names).
    pub fn id_named(&self, kind: Kind, name: &str) -> Option<&str> {
        self.names
            .get(&(kind, name.to_string()))
            .map(String::as_str)
    }

    /// Keeps the name index in step with a put (`old` is the object it replaces).
    fn index_name(&mut self, old: Option<&Object>, new: Option<&Object>) {
        if let Some(o) = old {
            if let Some(n) = o.unique_name() {
                let key = (o.kind(), n.to_string());
                if self.names.get(&key).is_some_and(|id| id == o.id()) {
                    self.names.remove(&key);
                }
            }
        }
        if let Some(o) = new {
            if let Some(n) = o.unique_name() {
                self.names
                    .insert((o.kind(), n.to_string()), o.id().to_string());
            }
        }
    }

    fn rebuild_names(&mut self) {
        let mut names = HashMap::new();
        let mut add = |kind: Kind, name: Option<&str>, id: &str| {
            if let Some(n) = name {
                names.insert((kind, n.to_string()), id.to_string());
            }
        };
        for o in self.services.values() {
            add(
                Kind::Service,
                o.spec.as_ref().map(|s| s.name.as_str()),
                &o.id,
            );
        }
        for o in self.secrets.values() {
            add(
                Kind::Secret,
                o.spec.as_ref().map(|s| s.name.as_str()),
                &o.id,
            );
        }
        for o in self.configs.values() {
            add(
                Kind::Config,
                o.spec.as_ref().map(|s| s.name.as_str()),
                &o.id,
            );
        }
        self.names = names;
    }

    fn put(&mut self, obj: Object) {
        match obj {
            Object::Cluster(o) => self.cluster = Some(o),
            Object::Node(o) => {
                self.nodes.insert(o.id.clone(), o);
            }
            Object::Service(o) => {
                self.services.insert(o.id.clone(), o);
            }
            Object::Task(o) => {
                self.tasks.insert(o.id.clone(), o);
            }
            Object::Secret(o) => {
                self.secrets.insert(o.id.clone(), o);
            }
            Object::Config(o) => {
                self.configs.insert(o.id.clone(), o);
            }
        }
    }

    fn delete(&mut self, kind: Kind, id: &str) {
        match kind {
            Kind::Cluster => self.cluster = None,
            Kind::Node => {
                self.nodes.remove(id);
            }
            Kind::Service => {
                self.services.remove(id);
            }
            Kind::Task => {
                self.tasks.remove(id);
            }
            Kind::Secret => {
                self.secrets.remove(id);
            }
            Kind::Config => {
                self.configs.remove(id);
            }
        }
    }

    /// Applies a committed batch at `index`: all of it, or nothing (with the reason).
    pub fn apply(&mut self, index: u64, batch: &StoreBatch) -> Result<Vec<Event>, StoreError> {
        // Check every action against the state as the earlier actions of the batch leave it,
        // without touching `self`: an overlay of (kind, id) -> object after the action
        // (None = removed), and of names taken or freed.
        let mut overlay: HashMap<(Kind, String), Option<Object>> = HashMap::new();
        let mut names: HashMap<(Kind, String), Option<String>> = HashMap::new();
        let mut planned = Vec::with_capacity(batch.actions.len());
        for action in &batch.actions {
            let target = action
                .target
                .as_ref()
                .ok_or_else(|| StoreError::Invalid("an action without an object".into()))?;
            let mut obj = Object::from_target(target);
            let kind = obj.kind();
            let id = obj.id().to_string();
            if id.is_empty() {
                return Err(StoreError::Invalid(format!("a {kind} without an id")));
            }
            let key = (kind, id.clone());
            let current = match overlay.get(&key) {
                Some(o) => o.clone(),
                None => self.get(kind, &id),
            };
            let action_kind = ActionKind::try_from(action.kind)
                .map_err(|_| StoreError::Invalid(format!("unknown action kind {}", action.kind)))?;
            match action_kind {
                ActionKind::Create => {
                    if current.is_some() {
                        return Err(StoreError::Exists { kind, id });
                    }
                    if kind == Kind::Cluster
                        && self.cluster.is_some()
                        && !overlay.contains_key(&key)
                    {
                        return Err(StoreError::Exists {
                            kind,
                            id: self
                                .cluster
                                .as_ref()
                                .map(|c| c.id.clone())
                                .unwrap_or_default(),
                        });
                    }
                    if let Some(name) = obj.unique_name() {
                        let nkey = (kind, name.to_string());
                        let owner = match names.get(&nkey) {
                            Some(o) => o.clone(),
                            None => self.name_owner(kind, name),
                        };
                        if let Some(owner) = owner {
                            return Err(StoreError::NameInUse {
                                kind,
                                name: name.to_string(),
                                id: owner,
                            });
                        }
                        names.insert(nkey, Some(id.clone()));
                    }
                    set_version(&mut obj, index, None);
                    overlay.insert(key, Some(obj.clone()));
                    planned.push(Event::Created(obj));
                }
                ActionKind::Update => {
                    let Some(old) = current else {
                        return Err(StoreError::NotFound { kind, id });
                    };
                    let expected = obj.version();
                    if expected != old.version() {
                        return Err(StoreError::Conflict {
                            kind,
                            id,
                            expected,
                            found: old.version(),
                        });
                    }
                    if let (Some(new_name), Some(old_name)) = (obj.unique_name(), old.unique_name())
                    {
                        if new_name != old_name {
                            let nkey = (kind, new_name.to_string());
                            let owner = match names.get(&nkey) {
                                Some(o) => o.clone(),
                                None => self.name_owner(kind, new_name),
                            };
                            if let Some(owner) = owner.filter(|o| *o != id) {
                                return Err(StoreError::NameInUse {
                                    kind,
                                    name: new_name.to_string(),
                                    id: owner,
                                });
                            }
                            names.insert((kind, old_name.to_string()), None);
                            names.insert(nkey, Some(id.clone()));
                        }
                    }
                    set_version(&mut obj, index, Some(&old));
                    overlay.insert(key, Some(obj.clone()));
                    planned.push(Event::Updated { old, new: obj });
                }
                ActionKind::Remove => {
                    let Some(old) = current else {
                        return Err(StoreError::NotFound { kind, id });
                    };
                    if let Some(name) = old.unique_name() {
                        names.insert((kind, name.to_string()), None);
                    }
                    overlay.insert(key, None);
                    planned.push(Event::Removed(old));
                }
            }
        }
        for event in &planned {
            match event {
                Event::Created(o) => {
                    self.index_name(None, Some(o));
                    self.put(o.clone());
                }
                Event::Updated { old, new } => {
                    self.index_name(Some(old), Some(new));
                    self.put(new.clone());
                }
                Event::Removed(o) => {
                    self.index_name(Some(o), None);
                    self.delete(o.kind(), o.id());
                }
            }
        }
        self.applied_index = index;
        Ok(planned)
    }

    pub fn to_snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            cluster: self.cluster.clone(),
            nodes: self.nodes.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            tasks: self.tasks.values().cloned().collect(),
            secrets: self.secrets.values().cloned().collect(),
            configs: self.configs.values().cloned().collect(),
            applied_index: self.applied_index,
        }
    }

    pub fn from_snapshot(s: StoreSnapshot) -> State {
        let mut state = State {
            cluster: s.cluster,
            nodes: s.nodes.into_iter().map(|o| (o.id.clone(), o)).collect(),
            services: s.services.into_iter().map(|o| (o.id.clone(), o)).collect(),
            tasks: s.tasks.into_iter().map(|o| (o.id.clone(), o)).collect(),
            secrets: s.secrets.into_iter().map(|o| (o.id.clone(), o)).collect(),
            configs: s.configs.into_iter().map(|o| (o.id.clone(), o)).collect(),
            applied_index: s.applied_index,
            names: HashMap::new(),
        };
        state.rebuild_names();
        state
    }

    /// Tasks of a service (any state kept in history).
    pub fn tasks_of_service<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> {
        self.tasks
            .values()
            .filter(move |t| t.service_id == service_id)
    }

    /// Tasks assigned to a node.
    pub fn tasks_of_node<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a Task> {
        self.tasks.values().filter(move |t| t.node_id == node_id)
    }
}

/// Stamps the object's meta: version = index; created_at kept from the old object on updates.
fn set_version(obj: &mut Object, index: u64, old: Option<&Object>) {
    let created = old.and_then(|o| match o {
        Object::Cluster(o) => o.meta,
        Object::Node(o) => o.meta,
        Object::Service(o) => o.meta,
        Object::Task(o) => o.meta,
        Object::Secret(o) => o.meta,
        Object::Config(o) => o.meta,
    });
    let meta = obj.meta_mut().get_or_insert_with(Default::default);
    meta.version = index;
    if let Some(c) = created {
        meta.created_at = c.created_at;
    }
}

/// Builds a batch of actions. Updates carry the version of the object as it was read.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub actions: Vec<StoreAction>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn len(&self) -> usize {
        self.actions.len()
    }

    fn push(&mut self, kind: ActionKind, target: Target) -> &mut Self {
        self.actions.push(StoreAction {
            kind: kind as i32,
            target: Some(target),
        });
        self
    }

    pub fn create(&mut self, obj: impl Into<Target>) -> &mut Self {
        self.push(ActionKind::Create, obj.into())
    }

    /// `obj.meta.version` must be the version read.
    pub fn update(&mut self, obj: impl Into<Target>) -> &mut Self {
        self.push(ActionKind::Update, obj.into())
    }

    pub fn remove(&mut self, obj: impl Into<Target>) -> &mut Self {
        self.push(ActionKind::Remove, obj.into())
    }

    pub fn into_proto(self) -> StoreBatch {
        StoreBatch {
            actions: self.actions,
        }
    }

    pub fn encode(self) -> Vec<u8> {
        self.into_proto().encode_to_vec()
    }
}

/// The state shared between the raft apply loop (the only writer) and readers (API handlers,
/// reconcilers), with a broadcast of applied events.
#[derive(Clone)]
pub struct Store {
    state: Arc<RwLock<State>>,
    events: broadcast::Sender<Arc<Applied>>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    pub fn new() -> Store {
        let (events, _) = broadcast::channel(4096);
        Store {
            state: Arc::new(RwLock::new(State::default())),
            events,
        }
    }

    /// A read view. Hold it briefly: the apply loop waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applied batches from now on.
    pub fn watch(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.events.subscribe()
    }

    /// A consistent copy of the state and a watch that starts right after it.
    pub fn snapshot_and_watch(&self) -> (State, broadcast::Receiver<Arc<Applied>>) {
        let guard = self.read();
        let rx = self.events.subscribe();
        (guard.clone(), rx)
    }

    /// Decodes and applies a committed command (the raft state machine's apply).
    pub fn apply_command(&self, index: u64, command: &[u8]) -> Result<Vec<u8>, String> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let batch = match StoreBatch::decode(command) {
            Ok(b) => b,
            Err(e) => {
                state.applied_index = index;
                return Err(format!("undecodable batch: {e}"));
            }
        };
        let result = state.apply(index, &batch);
        match result {
            Ok(events) => {
                drop(state);
                if !events.is_empty() {
                    let _ = self.events.send(Arc::new(Applied { index, events }));
                }
                Ok(Vec::new())
            }
            Err(e) => {
                // A refused batch still consumes the index.
                state.applied_index = index;
                Err(e.to_string())
            }
        }
    }

    pub fn snapshot_bytes(&self) -> Vec<u8> {
        self.read().to_snapshot().encode_to_vec()
    }

    pub fn restore_bytes(&self, index: u64, data: &[u8]) -> Result<(), String> {
        let snap =
            StoreSnapshot::decode(data).map_err(|e| format!("undecodable store snapshot: {e}"))?;
        let mut state = State::from_snapshot(snap);
        state.applied_index = state.applied_index.max(index);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::control::v1::{Meta, SecretSpec, ServiceSpec};

    fn service(id: &str, name: &str, version: u64) -> Service {
        Service {
            id: id.into(),
            meta: Some(Meta {
                version,
                created_at: 5,
                updated_at: 6,
            }),
            spec: Some(ServiceSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(id: &str, service: &str) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            ..Default::default()
        }
    }

    #[test]
    fn create_update_remove_with_versions() {
        let mut s = State::default();
        let mut b = Batch::new();
        b.create(service("s1", "web", 0));
        let ev = s.apply(3, &b.into_proto()).expect("create");
        assert_eq!(ev.len(), 1);
        assert_eq!(s.services["s1"].meta.as_ref().map(|m| m.version), Some(3));
        assert_eq!(s.applied_index, 3);

        // An update from version 3 succeeds and moves the version; created_at is kept.
        let mut b = Batch::new();
        let mut upd = service("s1", "web", 3);
        upd.meta.as_mut().expect("meta").created_at = 99;
        b.update(upd);
        s.apply(4, &b.into_proto()).expect("update");
        let meta = s.services["s1"].meta.expect("meta");
        assert_eq!((meta.version, meta.created_at), (4, 5));

        // A stale update is refused.
        let mut b = Batch::new();
        b.update(service("s1", "web", 3));
        assert_eq!(
            s.apply(5, &b.into_proto()),
            Err(StoreError::Conflict {
                kind: Kind::Service,
                id: "s1".into(),
                expected: 3,
                found: 4
            })
        );

        let mut b = Batch::new();
        b.remove(service("s1", "", 0));
        s.apply(6, &b.into_proto()).expect("remove");
        assert!(s.services.is_empty());
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let mut s = State::default();
        let mut b = Batch::new();
        b.create(service("s1", "web", 0)).create(task("t1", "s1"));
        s.apply(1, &b.into_proto()).expect("create");
        let before = s.clone();
        let mut b = Batch::new();
        b.create(task("t2", "s1")).create(task("t1", "s1"));
        assert_eq!(
            s.apply(2, &b.into_proto()),
            Err(StoreError::Exists {
                kind: Kind::Task,
                id: "t1".into()
            })
        );
        assert_eq!(s, before, "nothing of a refused batch applied");
    }

    #[test]
    fn names_are_unique_per_kind_and_freed_by_removal() {
        let mut s = State::default();
        let mut b = Batch::new();
        b.create(service("s1", "web", 0));
        s.apply(1, &b.into_proto()).expect("create");
        let mut b = Batch::new();
        b.create(service("s2", "web", 0));
        assert_eq!(
            s.apply(2, &b.into_proto()),
            Err(StoreError::NameInUse {
                kind: Kind::Service,
                name: "web".into(),
                id: "s1".into()
            })
        );
        // Same name in another kind is fine.
        let mut b = Batch::new();
        b.create(Secret {
            id: "x1".into(),
            spec: Some(SecretSpec {
                name: "web".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        s.apply(3, &b.into_proto()).expect("secret named web");
        // Remove and re-create in one batch.
        let mut b = Batch::new();
        b.remove(service("s1", "web", 0))
            .create(service("s2", "web", 0));
        s.apply(4, &b.into_proto()).expect("rename through removal");
        assert!(s.services.contains_key("s2"));
        // Renaming onto a taken name is refused.
        let mut b = Batch::new();
        b.create(service("s3", "api", 0));
        s.apply(5, &b.into_proto()).expect("api");
        let mut b = Batch::new();
        b.update(service("s3", "web", 5));
        assert!(matches!(
            s.apply(6, &b.into_proto()),
            Err(StoreError::NameInUse { .. })
        ));
        // A rename frees the old name, and the index survives a snapshot round trip.
        let mut b = Batch::new();
        b.update(service("s3", "api2", 5));
        s.apply(7, &b.into_proto()).expect("rename");
        let mut s = State::from_snapshot(s.to_snapshot());
        let mut b = Batch::new();
        b.create(service("s4", "api", 0));
        s.apply(8, &b.into_proto()).expect("the old name is free");
        let mut b = Batch::new();
        b.create(service("s5", "api2", 0));
        assert!(matches!(
            s.apply(9, &b.into_proto()),
            Err(StoreError::NameInUse { id, .. }) if id == "s3"
        ));
    }

    #[test]
    fn store_applies_commands_broadcasts_and_snapshots() {
        let store = Store::new();
        let mut rx = store.watch();
        let mut b = Batch::new();
        b.create(service("s1", "web", 0)).create(task("t1", "s1"));
        store.apply_command(7, &b.encode()).expect("apply");
        let applied = rx.try_recv().expect("event");
        assert_eq!(applied.index, 7);
        assert_eq!(applied.events.len(), 2);
        // Refused batches consume the index and send nothing.
        let mut b = Batch::new();
        b.create(task("t1", "s1"));
        assert!(store.apply_command(8, &b.encode()).is_err());
        assert_eq!(store.read().applied_index, 8);
        assert!(rx.try_recv().is_err());
        assert!(store.apply_command(9, b"\xff\xff").is_err());

        let bytes = store.snapshot_bytes();
        let other = Store::new();
        other.restore_bytes(9, &bytes).expect("restore");
        assert_eq!(*other.read(), *store.read());
        assert_eq!(other.read().tasks_of_service("s1").count(), 1);
    }
}
