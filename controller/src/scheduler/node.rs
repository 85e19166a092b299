//! The scheduler's view of one node: what the filters read (availability, attributes,
//! capacity) and what the tasks holding resources on it add up to (reservations, task counts
//! per service, host ports in use).
//!
//! Invariant: the sums (`cpu_reserved`, `mem_reserved`, `tasks`, `services`, `ports`) are
//! exactly the sum of the [`TaskUse`]s added and not yet removed; only [`NodeInfo::add`] and
//! [`NodeInfo::remove`] change them. Label names and values, os and arch are ids of the
//! scheduler's [`Interner`].

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use flotilla_proto::control::v1::{Node, NodeAvailability, NodeRole, NodeState, PortProtocol};

use super::constraint::normalize_arch;

/// Hasher for the scheduler's maps: ids the controller generates (task, service and node
/// ids, not chosen by an outsider) and interned indices. Eight bytes per multiply and a final
/// mix (murmur3's fmix64) so both the low bits (bucket) and the high bits (tag) vary; several
/// times cheaper than SipHash, which dominated the placement loops. Written here because the
/// controller has no fast-hash crate among its dependencies and this is a dozen lines.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// A hash map with [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A map keyed by a dense index.
pub(crate) type IndexMap<V> = FastMap<u32, V>;

/// Label names and values, platform os and arch, as dense ids: nodes hold ids, filters compare
/// ids (no pointer chasing through string maps per node). Strings stay interned for the life
/// of the scheduler (their number is bounded by the distinct labels the cluster used).
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: FastMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    /// The id of `s`, new if needed.
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 strings");
        self.ids.insert(s.to_string(), id);
        self.names.push(s.to_string());
        id
    }

    /// The id of `s` if any node ever used it.
    pub fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    /// The string of an id.
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// A published host port: protocol (a `PortProtocol` value) and port number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct HostPort {
    pub protocol: i32,
    pub port: u32,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match PortProtocol::try_from(self.protocol) {
            Ok(PortProtocol::Tcp) => write!(f, "{}/tcp", self.port),
            Ok(PortProtocol::Udp) => write!(f, "{}/udp", self.port),
            Err(_) => write!(f, "{}/protocol-{}", self.port, self.protocol),
        }
    }
}

/// What one task holding resources takes from its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskUse {
    /// Slot of the node in the scheduler's node table.
    pub node: u32,
    /// Interned service id.
    pub service: u32,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub ports: Box<[HostPort]>,
}

/// The scheduler's view of one node.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeInfo {
    pub id: String,
    /// False for a slot that only exists because tasks still name the node (not in the store,
    /// or removed while tasks were on it): never a candidate.
    pub present: bool,
    /// Status READY and availability ACTIVE.
    pub available: bool,
    pub hostname: String,
    pub role: NodeRole,
    /// The spec's labels, (name, value) interned, sorted by name.
    pub labels: Vec<(u32, u32)>,
    /// The labels the agent reports, the same way.
    pub engine_labels: Vec<(u32, u32)>,
    /// Lower case, interned (None: not reported).
    pub os: Option<u32>,
    /// Normalized with [`normalize_arch`], interned (None: not reported).
    pub arch: Option<u32>,
    pub nano_cpus: i64,
    pub memory_bytes: i64,

    pub cpu_reserved: i64,
    pub mem_reserved: i64,
    /// Tasks holding resources on the node.
    pub tasks: u32,
    /// Tasks holding resources on the node, per interned service id (no zero entries).
    pub services: IndexMap<u32>,
    /// Host ports in use with the number of tasks publishing each (normally one).
    pub ports: Vec<(HostPort, u32)>,
}

impl NodeInfo {
    /// A placeholder for a node id that tasks name but the store does not hold (yet).
    pub fn placeholder(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.to_string(),
            ..NodeInfo::default()
        }
    }

    /// Takes the node's spec, description and status; keeps the accounting.
    pub fn describe(&mut self, node: &Node, strings: &mut Interner) {
        let state = node.status.as_ref().map(|s| s.state);
        let availability = node
            .spec
            .as_ref()
            .map(|s| s.availability)
            .unwrap_or_default();
        self.present = true;
        self.available = state == Some(NodeState::Ready as i32)
            && availability == NodeAvailability::Active as i32;
        self.role = NodeRole::try_from(node.role).unwrap_or(NodeRole::Worker);
        let mut intern = |m: &HashMap<String, String>| -> Vec<(u32, u32)> {
            let mut v: Vec<(u32, u32)> = m
                .iter()
                .map(|(k, v)| (strings.intern(k), strings.intern(v)))
                .collect();
            v.sort_unstable();
            v
        };
        self.labels = node
            .spec
            .as_ref()
            .map(|s| intern(&s.labels))
            .unwrap_or_default();
        let desc = node.description.as_ref();
        self.hostname = desc.map(|d| d.hostname.clone()).unwrap_or_default();
        self.engine_labels = desc.map(|d| intern(&d.engine_labels)).unwrap_or_default();
        let platform = desc.and_then(|d| d.platform.as_ref());
        let os = platform.map(|p| p.os.trim().to_ascii_lowercase());
        let arch = platform.map(|p| normalize_arch(&p.architecture));
        let mut id = |s: Option<String>| s.filter(|s| !s.is_empty()).map(|s| strings.intern(&s));
        self.os = id(os);
        self.arch = id(arch);
        let resources = desc.and_then(|d| d.resources.as_ref());
        self.nano_cpus = resources.map(|r| r.nano_cpus).unwrap_or(0);
        self.memory_bytes = resources.map(|r| r.memory_bytes).unwrap_or(0);
    }

    /// Forgets what the store said about the node (it was removed); keeps the accounting of
    /// the tasks still on it.
    pub fn forget(&mut self) {
        let id = std::mem::take(&mut self.id);
        let keep = NodeInfo {
            id,
            cpu_reserved: self.cpu_reserved,
            mem_reserved: self.mem_reserved,
            tasks: self.tasks,
            services: std::mem::take(&mut self.services),
            ports: std::mem::take(&mut self.ports),
            ..NodeInfo::default()
        };
        *self = keep;
    }

    /// The value of label `name` (spec labels).
    pub fn label(&self, name: u32) -> Option<u32> {
        find(&self.labels, name)
    }

    /// The value of engine label `name`.
    pub fn engine_label(&self, name: u32) -> Option<u32> {
        find(&self.engine_labels, name)
    }

    /// Tasks of `service` holding resources here.
    pub fn service_tasks(&self, service: u32) -> u32 {
        self.services.get(&service).copied().unwrap_or(0)
    }

    /// Whether a task already here publishes `port`.
    pub fn port_in_use(&self, port: HostPort) -> bool {
        self.ports.iter().any(|(p, _)| *p == port)
    }

    /// Adds a task's use.
    pub fn add(&mut self, u: &TaskUse) {
        self.cpu_reserved += u.nano_cpus;
        self.mem_reserved += u.memory_bytes;
        self.tasks += 1;
        *self.services.entry(u.service).or_insert(0) += 1;
        for p in u.ports.iter() {
            match self.ports.iter_mut().find(|(q, _)| q == p) {
                Some((_, n)) => *n += 1,
                None => self.ports.push((*p, 1)),
            }
        }
    }

    /// Removes a use added before.
    pub fn remove(&mut self, u: &TaskUse) {
        self.cpu_reserved -= u.nano_cpus;
        self.mem_reserved -= u.memory_bytes;
        self.tasks = self.tasks.saturating_sub(1);
        if let Some(n) = self.services.get_mut(&u.service) {
            *n -= 1;
            if *n == 0 {
                self.services.remove(&u.service);
            }
        }
        for p in u.ports.iter() {
            if let Some(i) = self.ports.iter().position(|(q, _)| q == p) {
                self.ports[i].1 -= 1;
                if self.ports[i].1 == 0 {
                    self.ports.swap_remove(i);
                }
            }
        }
    }
}

/// The value of `name` in labels sorted by name.
fn find(labels: &[(u32, u32)], name: u32) -> Option<u32> {
    if labels.len() <= 8 {
        labels.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    } else {
        labels
            .binary_search_by_key(&name, |(k, _)| *k)
            .ok()
            .map(|i| labels[i].1)
    }
}
