//! [`NetworkManager`]: the records, the kernel objects derived from them, and the one lock that
//! keeps the two in step.
//!
//! Invariants:
//! - every mutation holds the async `ops` lock from its first check to its last write, so two
//!   operations never interleave; the record map (`state`, a std `RwLock`) is only locked for
//!   short reads and writes, never across an await, so `list`, `inspect`, `resolv_conf`,
//!   `hosts_file` and DNS queries never wait on the kernel;
//! - the kernel is changed first and the record written after; a failing step undoes what its
//!   operation already did, so a record always describes something that exists;
//! - the nft table is always regenerated in full from the records ([`nft::ruleset`]);
//! - kernel names are derived from ids: bridges from the config and the network id, veth host
//!   ends `vfl` + 8 hex digits of sha256(container id / network id).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use super::error::{NetError, PortHolder, Result};
use super::ipam::{self, IpamError};
use super::ipnet::Ipv4Net;
use super::model::*;
use super::ports::{self, Reservation};
use super::store::{self, Store};
use super::{dns, link, names, netns, nft, resolv, NetConfig};

/// The records in memory.
#[derive(Debug, Default)]
struct State {
    networks: BTreeMap<String, NetworkRecord>,
    sandboxes: BTreeMap<String, SandboxRecord>,
}

/// What only mutations touch: the host netlink handle, reservations and DNS tasks.
struct Kernel {
    nl: rtnetlink::Handle,
    conn: JoinHandle<()>,
    reservations: HashMap<String, Vec<(PortSpec, Reservation)>>,
    dns: HashMap<String, JoinHandle<()>>,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        for t in self.dns.values() {
            t.abort();
        }
        self.conn.abort();
    }
}

struct Inner {
    cfg: NetConfig,
    store: Store,
    state: Arc<RwLock<State>>,
    ops: tokio::sync::Mutex<Kernel>,
}

/// Container networking of one node. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct NetworkManager {
    inner: Arc<Inner>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_id() -> Result<String> {
    let mut buf = [0u8; 32];
    let path = Path::new("/dev/urandom");
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map_err(|e| NetError::io("read", path, e))?;
    Ok(hex::encode(buf))
}

fn digest_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Host end of the veth of `container` on network `network_id` (`prefix` vfl, peer vfp).
fn veth_name(prefix: &str, container: &str, network_id: &str) -> String {
    format!(
        "{prefix}{}",
        &digest_hex(&format!("{container}/{network_id}"))[..8]
    )
}

fn sysctl(key: &str, value: &str) -> Result<()> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| NetError::io("set sysctl", path, e))
}

fn lock_err<T>(_: T) -> NetError {
    NetError::Sys {
        op: "network state lock poisoned by a panic".into(),
        source: nix::Error::EDEADLK,
    }
}

fn builtin(name: &str, driver: &str) -> NetworkInfo {
    NetworkInfo {
        id: digest_hex(&format!("flotilla/network/{name}")),
        name: name.into(),
        driver: driver.into(),
        bridge: None,
        subnet: None,
        gateway: None,
        internal: false,
        predefined: true,
        dns: false,
        labels: BTreeMap::new(),
        created: 0,
        containers: BTreeMap::new(),
    }
}

fn endpoint_info(net: &NetworkRecord, ep: &EndpointRecord) -> EndpointInfo {
    EndpointInfo {
        network: net.name.clone(),
        network_id: net.id.clone(),
        container_name: ep.container_name.clone(),
        ip: ep.ip,
        prefix_len: net.subnet.prefix_len(),
        gateway: net.gateway,
        mac: ep.mac.clone(),
        aliases: ep.aliases.clone(),
        ifname: ep.ifname.clone(),
        host_ifname: ep.host_ifname.clone(),
        default_route: ep.default_route,
    }
}

impl State {
    /// A bridge network by exact name, exact id or unique id prefix.
    fn find(&self, name_or_id: &str) -> Option<&NetworkRecord> {
        if let Some(n) = self.networks.values().find(|n| n.name == name_or_id) {
            return Some(n);
        }
        if let Some(n) = self.networks.get(name_or_id) {
            return Some(n);
        }
        let mut prefixed = self
            .networks
            .values()
            .filter(|n| !name_or_id.is_empty() && n.id.starts_with(name_or_id));
        match (prefixed.next(), prefixed.next()) {
            (Some(n), None) => Some(n),
            _ => None,
        }
    }

    fn not_found(&self, input: &str) -> NetError {
        let mut all: Vec<&str> = self.networks.values().map(|n| n.name.as_str()).collect();
        all.extend([HOST_NETWORK, NONE_NETWORK]);
        NetError::NetworkNotFound {
            input: input.to_string(),
            suggestion: names::closest(input, all),
        }
    }

    fn info(&self, net: &NetworkRecord) -> NetworkInfo {
        let containers = self
            .sandboxes
            .values()
            .flat_map(|sb| {
                sb.endpoints
                    .iter()
                    .filter(|e| e.network_id == net.id)
                    .map(|e| (sb.container_id.clone(), endpoint_info(net, e)))
            })
            .collect();
        NetworkInfo {
            id: net.id.clone(),
            name: net.name.clone(),
            driver: net.driver.clone(),
            bridge: Some(net.bridge.clone()),
            subnet: Some(net.subnet),
            gateway: Some(net.gateway),
            internal: net.internal,
            predefined: net.default,
            dns: !net.default,
            labels: net.labels.clone(),
            created: net.created,
            containers,
        }
    }

    fn zone(&self, network_id: &str) -> dns::Zone {
        let mut zone = dns::Zone {
            subnet: self.networks.get(network_id).map(|n| n.subnet),
            entries: Vec::new(),
        };
        for sb in self.sandboxes.values() {
            for e in sb.endpoints.iter().filter(|e| e.network_id == network_id) {
                let mut names_of = Vec::new();
                if !e.container_name.is_empty() {
                    names_of.push(e.container_name.to_ascii_lowercase());
                }
                names_of.push(
                    sb.container_id
                        .chars()
                        .take(12)
                        .collect::<String>()
                        .to_ascii_lowercase(),
                );
                names_of.extend(
                    e.aliases
                        .iter()
                        .map(|a| a.trim_end_matches('.').to_ascii_lowercase()),
                );
                zone.entries.push((names_of, e.ip));
            }
        }
        zone
    }

    fn container_name(&self, container_id: &str) -> String {
        self.sandboxes
            .get(container_id)
            .and_then(|sb| sb.endpoints.iter().find(|e| !e.container_name.is_empty()))
            .map(|e| e.container_name.clone())
            .unwrap_or_else(|| container_id.chars().take(12).collect())
    }

    fn firewall(&self) -> (Vec<nft::BridgeRule>, Vec<nft::PortRule>) {
        let bridges = self
            .networks
            .values()
            .map(|n| nft::BridgeRule {
                bridge: n.bridge.clone(),
                subnet: n.subnet,
                gateway: n.gateway,
                internal: n.internal,
                dns: !n.default,
            })
            .collect();
        let ports = self
            .sandboxes
            .values()
            .flat_map(|sb| sb.ports.iter())
            .map(|p| nft::PortRule {
                host_ip: p.spec.host_ip.filter(|ip| !ip.is_unspecified()),
                host_port: p.spec.host_port,
                proto: p.spec.proto,
                container_ip: p.container_ip,
                container_port: p.spec.container_port,
            })
            .collect();
        (bridges, ports)
    }
}

impl NetworkManager {
    /// Loads the records, makes sure the default network exists, re-creates missing bridges and
    /// veths, drops sandboxes whose namespace is gone, re-reserves published ports, rewrites the
    /// nft table and starts the DNS responders.
    pub async fn open(cfg: NetConfig) -> Result<Self> {
        check_config(&cfg)?;
        let store = Store::open(&cfg.state_dir)?;
        let netns_dir = cfg.run_dir.join("netns");
        std::fs::create_dir_all(&netns_dir)
            .map_err(|e| NetError::io("create sandbox directory", &netns_dir, e))?;
        let (conn, nl, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::io("open netlink socket", "NETLINK_ROUTE", e))?;
        let conn = tokio::spawn(conn);

        let mut state = State::default();
        for n in store::load_all::<NetworkRecord>(&store.networks)? {
            state.networks.insert(n.id.clone(), n);
        }
        for s in store::load_all::<SandboxRecord>(&store.sandboxes)? {
            state.sandboxes.insert(s.container_id.clone(), s);
        }
        if !state.networks.values().any(|n| n.default) {
            let gateway = ipam::default_gateway(cfg.default_subnet).ok_or_else(|| {
                NetError::invalid(
                    "default subnet",
                    cfg.default_subnet.to_string(),
                    "it is smaller than a /30",
                )
            })?;
            let rec = NetworkRecord {
                id: new_id()?,
                name: DEFAULT_NETWORK.into(),
                driver: "bridge".into(),
                bridge: cfg.default_bridge.clone(),
                subnet: cfg.default_subnet,
                gateway,
                internal: false,
                default: true,
                labels: BTreeMap::new(),
                created: now(),
            };
            store::write_json(&store.network_path(&rec.id), &rec)?;
            state.networks.insert(rec.id.clone(), rec);
        }

        let mgr = NetworkManager {
            inner: Arc::new(Inner {
                cfg,
                store,
                state: Arc::new(RwLock::new(state)),
                ops: tokio::sync::Mutex::new(Kernel {
                    nl,
                    conn,
                    reservations: HashMap::new(),
                    dns: HashMap::new(),
                }),
            }),
        };
        mgr.restore().await?;
        Ok(mgr)
    }

    async fn restore(&self) -> Result<()> {
        let mut k = self.inner.ops.lock().await;
        sysctl("net.ipv4.ip_forward", "1")?;
        let networks: Vec<NetworkRecord> = self.read()?.networks.values().cloned().collect();
        for n in &networks {
            link::ensure_bridge(&k.nl, &n.bridge, n.gateway, n.subnet.prefix_len()).await?;
            sysctl(&format!("net.ipv4.conf.{}.route_localnet", n.bridge), "1")?;
        }
        let sandboxes: Vec<SandboxRecord> = self.read()?.sandboxes.values().cloned().collect();
        for sb in sandboxes {
            if !netns::is_netns(&sb.path) {
                tracing::info!(container = %sb.container_id, path = %sb.path.display(), "sandbox namespace is gone; dropping its endpoints and ports");
                for e in &sb.endpoints {
                    link::delete(&k.nl, &e.host_ifname).await?;
                }
                netns::remove(&sb.path)?;
                store::remove(&self.inner.store.sandbox_path(&sb.container_id))?;
                self.write()?.sandboxes.remove(&sb.container_id);
                continue;
            }
            for e in &sb.endpoints {
                let Some(net) = networks.iter().find(|n| n.id == e.network_id) else {
                    tracing::warn!(container = %sb.container_id, network = %e.network_id, "endpoint on a network that no longer exists");
                    continue;
                };
                let restored = match link::get(&k.nl, &e.host_ifname).await? {
                    Some(_) => link::attach(&k.nl, &e.host_ifname, &net.bridge).await,
                    None => plumb(&k.nl, &sb.container_id, &sb.path, net, e).await,
                };
                if let Err(err) = restored {
                    tracing::error!(container = %sb.container_id, network = %net.name, error = %err, "cannot restore endpoint");
                }
            }
            let mut held = Vec::new();
            for p in &sb.ports {
                match ports::reserve(&p.spec) {
                    Ok((r, _)) => held.push((p.spec, r)),
                    Err(err) => {
                        tracing::warn!(container = %sb.container_id, port = p.spec.host_port, proto = %p.spec.proto, error = %err, "cannot re-reserve published port")
                    }
                }
            }
            k.reservations.insert(sb.container_id.clone(), held);
        }
        self.apply_firewall().await?;
        for n in networks.iter().filter(|n| !n.default) {
            self.start_dns(&mut k, n).await;
        }
        Ok(())
    }

    /// Stops the DNS responders and releases the port reservations. The kernel objects stay, so
    /// running containers keep their network; a later `open` on the same state takes over.
    pub async fn shutdown(&self) {
        let mut k = self.inner.ops.lock().await;
        for (_, t) in k.dns.drain() {
            t.abort();
            let _ = t.await;
        }
        k.reservations.clear();
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, State>> {
        self.inner.state.read().map_err(lock_err)
    }

    fn write(&self) -> Result<std::sync::RwLockWriteGuard<'_, State>> {
        self.inner.state.write().map_err(lock_err)
    }

    async fn apply_firewall(&self) -> Result<()> {
        let text = {
            let st = self.read()?;
            let (bridges, ports) = st.firewall();
            nft::ruleset(&self.inner.cfg.nft_table, &bridges, &ports)
        };
        nft::apply(&self.inner.cfg.nft_table, &text).await
    }

    async fn start_dns(&self, k: &mut Kernel, net: &NetworkRecord) {
        if let Some(t) = k.dns.remove(&net.id) {
            t.abort();
            let _ = t.await;
        }
        let addr = SocketAddr::from((net.gateway, 53));
        let mut socket = None;
        for _ in 0..40 {
            match tokio::net::UdpSocket::bind(addr).await {
                Ok(s) => {
                    socket = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let Some(socket) = socket else {
            tracing::error!(network = %net.name, %addr, "embedded dns cannot bind; names on this network will not resolve");
            return;
        };
        let host_resolv =
            std::fs::read_to_string(&self.inner.cfg.host_resolv_conf).unwrap_or_default();
        let upstreams = resolv::upstreams(&host_resolv);
        let state = self.inner.state.clone();
        let id = net.id.clone();
        let zone = move || state.read().map(|s| s.zone(&id)).unwrap_or_default();
        k.dns.insert(
            net.id.clone(),
            tokio::spawn(dns::serve(socket, zone, upstreams)),
        );
    }

    /// Creates a user-defined bridge network.
    pub async fn create_network(&self, req: CreateNetwork) -> Result<NetworkInfo> {
        names::validate_network_name(&req.name)?;
        if !(req.driver.is_empty() || req.driver == "bridge") {
            return Err(NetError::UnsupportedDriver { driver: req.driver });
        }
        let mut k = self.inner.ops.lock().await;
        let cfg = &self.inner.cfg;
        let host_nets = match req.subnet {
            None => link::host_ipv4_nets(&k.nl).await?,
            Some(_) => Vec::new(),
        };
        let (subnet, gateway) = {
            let st = self.read()?;
            if let Some(n) = st.networks.values().find(|n| n.name == req.name) {
                return Err(NetError::NameConflict {
                    name: req.name,
                    id: n.id.clone(),
                });
            }
            if req.name == HOST_NETWORK || req.name == NONE_NETWORK {
                return Err(NetError::NameConflict {
                    id: builtin(&req.name, "").id,
                    name: req.name,
                });
            }
            let subnet = match &req.subnet {
                Some(s) => s
                    .trim()
                    .parse::<Ipv4Net>()
                    .map_err(|e| NetError::invalid("subnet", s.clone(), e.0))?,
                None => {
                    let mut taken: Vec<Ipv4Net> = st.networks.values().map(|n| n.subnet).collect();
                    taken.extend(host_nets);
                    ipam::pick_subnet(cfg.pool, cfg.pool_prefix_len, &taken).ok_or(
                        NetError::PoolExhausted {
                            pool: cfg.pool.to_string(),
                            prefix_len: cfg.pool_prefix_len,
                        },
                    )?
                }
            };
            let gateway = match &req.gateway {
                Some(g) => {
                    let ip: Ipv4Addr = g.trim().parse().map_err(|_| {
                        NetError::invalid("gateway", g.clone(), "not an IPv4 address")
                    })?;
                    ipam::check_gateway(subnet, ip)
                        .map_err(|r| NetError::invalid("gateway", g.clone(), r))?;
                    ip
                }
                None => {
                    let gw = ipam::default_gateway(subnet).ok_or_else(|| {
                        NetError::invalid(
                            "subnet",
                            subnet.to_string(),
                            "a bridge network needs at least a /30",
                        )
                    })?;
                    ipam::check_gateway(subnet, gw)
                        .map_err(|r| NetError::invalid("subnet", subnet.to_string(), r))?;
                    gw
                }
            };
            if let Some(other) = st.networks.values().find(|n| n.subnet.overlaps(&subnet)) {
                return Err(NetError::SubnetOverlap {
                    subnet: subnet.to_string(),
                    other: other.subnet.to_string(),
                    network: other.name.clone(),
                });
            }
            (subnet, gateway)
        };
        let id = new_id()?;
        let room = 15usize.saturating_sub(cfg.bridge_prefix.len());
        let rec = NetworkRecord {
            bridge: format!("{}{}", cfg.bridge_prefix, &id[..room]),
            id,
            name: req.name,
            driver: "bridge".into(),
            subnet,
            gateway,
            internal: req.internal,
            default: false,
            labels: req.labels,
            created: now(),
        };
        let made = async {
            link::ensure_bridge(&k.nl, &rec.bridge, rec.gateway, subnet.prefix_len()).await?;
            sysctl(&format!("net.ipv4.conf.{}.route_localnet", rec.bridge), "1")?;
            store::write_json(&self.inner.store.network_path(&rec.id), &rec)?;
            self.write()?.networks.insert(rec.id.clone(), rec.clone());
            self.apply_firewall().await
        }
        .await;
        if let Err(e) = made {
            if let Ok(mut st) = self.write() {
                st.networks.remove(&rec.id);
            }
            let _ = store::remove(&self.inner.store.network_path(&rec.id));
            let _ = link::delete(&k.nl, &rec.bridge).await;
            return Err(e);
        }
        self.start_dns(&mut k, &rec).await;
        tracing::info!(network = %rec.name, subnet = %rec.subnet, bridge = %rec.bridge, "network created");
        let st = self.read()?;
        Ok(st.info(&rec))
    }

    /// Removes a user-defined network that no container is connected to.
    pub async fn remove_network(&self, name_or_id: &str) -> Result<()> {
        let mut k = self.inner.ops.lock().await;
        let net = {
            let st = self.read()?;
            if name_or_id == HOST_NETWORK || name_or_id == NONE_NETWORK {
                return Err(NetError::Protected {
                    name: name_or_id.into(),
                });
            }
            let net = st
                .find(name_or_id)
                .cloned()
                .ok_or_else(|| st.not_found(name_or_id))?;
            if net.default {
                return Err(NetError::Protected { name: net.name });
            }
            let users: Vec<String> = st
                .sandboxes
                .values()
                .filter(|sb| sb.endpoints.iter().any(|e| e.network_id == net.id))
                .map(|sb| st.container_name(&sb.container_id))
                .collect();
            if !users.is_empty() {
                return Err(NetError::NetworkInUse {
                    name: net.name,
                    containers: users.join(", "),
                });
            }
            net
        };
        if let Some(t) = k.dns.remove(&net.id) {
            t.abort();
            let _ = t.await;
        }
        link::delete(&k.nl, &net.bridge).await?;
        store::remove(&self.inner.store.network_path(&net.id))?;
        self.write()?.networks.remove(&net.id);
        self.apply_firewall().await?;
        tracing::info!(network = %net.name, "network removed");
        Ok(())
    }

    /// Every network, predefined ones included, sorted by name.
    pub fn list(&self) -> Vec<NetworkInfo> {
        let Ok(st) = self.read() else {
            return Vec::new();
        };
        let mut out: Vec<NetworkInfo> = st.networks.values().map(|n| st.info(n)).collect();
        out.push(builtin(HOST_NETWORK, "host"));
        out.push(builtin(NONE_NETWORK, "null"));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One network by name, id or unique id prefix.
    pub fn inspect(&self, name_or_id: &str) -> Result<NetworkInfo> {
        let st = self.read()?;
        if let Some(n) = st.find(name_or_id) {
            return Ok(st.info(n));
        }
        for (name, driver) in [(HOST_NETWORK, "host"), (NONE_NETWORK, "null")] {
            let b = builtin(name, driver);
            if name_or_id == name || (!name_or_id.is_empty() && b.id.starts_with(name_or_id)) {
                return Ok(b);
            }
        }
        Err(st.not_found(name_or_id))
    }

    /// Where the sandbox of a container is (or would be) mounted.
    pub fn sandbox_path(&self, container_id: &str) -> PathBuf {
        self.inner.cfg.run_dir.join("netns").join(container_id)
    }

    /// Creates the network namespace of a container, loopback up, and returns its path for the
    /// OCI spec. Creating an existing sandbox returns its path.
    pub async fn create_sandbox(&self, container_id: &str) -> Result<PathBuf> {
        names::validate_container_id(container_id)?;
        let _k = self.inner.ops.lock().await;
        if let Some(sb) = self.read()?.sandboxes.get(container_id) {
            if netns::is_netns(&sb.path) {
                return Ok(sb.path.clone());
            }
        }
        let path = self.sandbox_path(container_id);
        netns::remove(&path)?; // a stale file of an earlier life
        netns::create(path.clone()).await?;
        let rec = SandboxRecord {
            container_id: container_id.into(),
            path: path.clone(),
            endpoints: Vec::new(),
            ports: Vec::new(),
        };
        if let Err(e) = store::write_json(&self.inner.store.sandbox_path(container_id), &rec) {
            let _ = netns::remove(&path);
            return Err(e);
        }
        self.write()?.sandboxes.insert(container_id.into(), rec);
        Ok(path)
    }

    /// Disconnects every endpoint, drops the container's published ports and deletes the
    /// namespace. Removing a sandbox that does not exist succeeds.
    pub async fn remove_sandbox(&self, container_id: &str) -> Result<()> {
        names::validate_container_id(container_id)?;
        let mut k = self.inner.ops.lock().await;
        let rec = self.read()?.sandboxes.get(container_id).cloned();
        if let Some(sb) = &rec {
            for e in &sb.endpoints {
                link::delete(&k.nl, &e.host_ifname).await?;
            }
            netns::remove(&sb.path)?;
        }
        netns::remove(&self.sandbox_path(container_id))?;
        k.reservations.remove(container_id);
        store::remove(&self.inner.store.sandbox_path(container_id))?;
        self.write()?.sandboxes.remove(container_id);
        if rec.is_some_and(|sb| !sb.ports.is_empty()) {
            self.apply_firewall().await?;
        }
        Ok(())
    }

    /// Connects a sandbox to a network: veth pair, address, and (for the first non-internal
    /// network) the default route.
    pub async fn connect(&self, container_id: &str, req: EndpointRequest) -> Result<EndpointInfo> {
        names::validate_container_id(container_id)?;
        if !req.container_name.is_empty() {
            names::validate_dns_name("container name", &req.container_name)?;
        }
        for a in &req.aliases {
            names::validate_dns_name("alias", a)?;
        }
        let k = self.inner.ops.lock().await;
        let (net, sb, ep) = {
            let st = self.read()?;
            let sb =
                st.sandboxes
                    .get(container_id)
                    .cloned()
                    .ok_or_else(|| NetError::NoSandbox {
                        container: container_id.into(),
                    })?;
            if req.network == HOST_NETWORK || req.network == NONE_NETWORK {
                return Err(NetError::NotConnectable {
                    name: req.network.clone(),
                    driver: if req.network == HOST_NETWORK {
                        "host"
                    } else {
                        "null"
                    }
                    .into(),
                    hint: "host means no sandbox at all and none means a sandbox without connect",
                });
            }
            let net = st
                .find(&req.network)
                .cloned()
                .ok_or_else(|| st.not_found(&req.network))?;
            if sb.endpoints.iter().any(|e| e.network_id == net.id) {
                return Err(NetError::AlreadyConnected {
                    container: container_id.into(),
                    network: net.name,
                });
            }
            let mut used = BTreeSet::new();
            let mut holders = BTreeMap::new();
            for other in st.sandboxes.values() {
                for e in other.endpoints.iter().filter(|e| e.network_id == net.id) {
                    used.insert(e.ip);
                    holders.insert(e.ip, st.container_name(&other.container_id));
                }
            }
            let ip =
                ipam::allocate(net.subnet, net.gateway, &used, req.ip).map_err(|e| match e {
                    IpamError::OutsideSubnet => NetError::IpOutsideSubnet {
                        ip: req.ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        subnet: net.subnet.to_string(),
                        network: net.name.clone(),
                    },
                    IpamError::Reserved(what) => NetError::IpUnavailable {
                        ip: req.ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        network: net.name.clone(),
                        reason: what.into(),
                    },
                    IpamError::InUse => {
                        let ip = req.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                        NetError::IpUnavailable {
                            ip,
                            network: net.name.clone(),
                            reason: format!(
                                "already in use by container {}",
                                holders.get(&ip).cloned().unwrap_or_default()
                            ),
                        }
                    }
                    IpamError::Full => NetError::SubnetFull {
                        subnet: net.subnet.to_string(),
                        network: net.name.clone(),
                    },
                })?;
            let ifname = (0..)
                .map(|n| format!("eth{n}"))
                .find(|n| !sb.endpoints.iter().any(|e| &e.ifname == n))
                .unwrap_or_else(|| "eth0".into());
            let default_route = !net.internal && !sb.endpoints.iter().any(|e| e.default_route);
            let ep = EndpointRecord {
                network_id: net.id.clone(),
                container_name: req.container_name.clone(),
                ip,
                mac: ipam::format_mac(&ipam::mac_for(ip)),
                ifname,
                host_ifname: veth_name("vfl", container_id, &net.id),
                aliases: req.aliases.clone(),
                default_route,
            };
            (net, sb, ep)
        };
        plumb(&k.nl, container_id, &sb.path, &net, &ep).await?;
        let saved = {
            let mut st = self.write()?;
            match st.sandboxes.get_mut(container_id) {
                Some(rec) => {
                    rec.endpoints.push(ep.clone());
                    let r = store::write_json(&self.inner.store.sandbox_path(container_id), rec);
                    if r.is_err() {
                        rec.endpoints.pop();
                    }
                    r
                }
                None => Err(NetError::NoSandbox {
                    container: container_id.into(),
                }),
            }
        };
        if let Err(e) = saved {
            let _ = link::delete(&k.nl, &ep.host_ifname).await;
            return Err(e);
        }
        tracing::info!(container = %container_id, network = %net.name, ip = %ep.ip, "endpoint connected");
        Ok(endpoint_info(&net, &ep))
    }

    /// Disconnects a sandbox from a network; its ports published through that network go too.
    pub async fn disconnect(&self, container_id: &str, network: &str) -> Result<()> {
        let mut k = self.inner.ops.lock().await;
        let (sb, net, ep) = {
            let st = self.read()?;
            let sb =
                st.sandboxes
                    .get(container_id)
                    .cloned()
                    .ok_or_else(|| NetError::NoSandbox {
                        container: container_id.into(),
                    })?;
            let net = st
                .find(network)
                .cloned()
                .ok_or_else(|| st.not_found(network))?;
            let ep = sb
                .endpoints
                .iter()
                .find(|e| e.network_id == net.id)
                .cloned()
                .ok_or_else(|| NetError::NotConnected {
                    container: container_id.into(),
                    network: net.name.clone(),
                })?;
            (sb, net, ep)
        };
        link::delete(&k.nl, &ep.host_ifname).await?;
        let mut rec = sb.clone();
        rec.endpoints.retain(|e| e.network_id != net.id);
        let dropped: Vec<PortSpec> = rec
            .ports
            .iter()
            .filter(|p| p.network_id == net.id)
            .map(|p| p.spec)
            .collect();
        rec.ports.retain(|p| p.network_id != net.id);
        if ep.default_route {
            let next = {
                let st = self.read()?;
                rec.endpoints
                    .iter_mut()
                    .find(|e| st.networks.get(&e.network_id).is_some_and(|n| !n.internal))
                    .and_then(|e| {
                        e.default_route = true;
                        st.networks.get(&e.network_id).map(|n| n.gateway)
                    })
            };
            if let Some(gw) = next {
                netns::run_in(&sb.path, move |h| async move {
                    link::set_default_route(&h, gw).await
                })
                .await?;
            }
        }
        store::write_json(&self.inner.store.sandbox_path(container_id), &rec)?;
        self.write()?.sandboxes.insert(container_id.into(), rec);
        if let Some(held) = k.reservations.get_mut(container_id) {
            held.retain(|(spec, _)| !dropped.contains(spec));
        }
        if !dropped.is_empty() {
            self.apply_firewall().await?;
        }
        Ok(())
    }

    /// Publishes container ports on the host through the container's first non-internal bridge
    /// endpoint. All or nothing: on a conflict no port of the request stays reserved.
    pub async fn publish(&self, container_id: &str, specs: &[PortSpec]) -> Result<Vec<PortSpec>> {
        let mut k = self.inner.ops.lock().await;
        let (ep, mut taken) = {
            let st = self.read()?;
            let sb = st
                .sandboxes
                .get(container_id)
                .ok_or_else(|| NetError::NoSandbox {
                    container: container_id.into(),
                })?;
            let ep = sb
                .endpoints
                .iter()
                .find(|e| st.networks.get(&e.network_id).is_some_and(|n| !n.internal))
                .cloned()
                .ok_or_else(|| NetError::NoBridgeEndpoint {
                    container: container_id.into(),
                })?;
            let taken: Vec<(PortSpec, String)> = st
                .sandboxes
                .values()
                .flat_map(|s| {
                    let name = st.container_name(&s.container_id);
                    s.ports.iter().map(move |p| (p.spec, name.clone()))
                })
                .collect();
            (ep, taken)
        };
        let own_name = self.read()?.container_name(container_id);
        let mut held: Vec<(PortSpec, Reservation)> = Vec::new();
        for spec in specs {
            if spec.container_port == 0 {
                return Err(NetError::invalid(
                    "port mapping",
                    format!("{}:0/{}", spec.host_port, spec.proto),
                    "the container port must be 1-65535",
                ));
            }
            if let Some((_, name)) = taken.iter().find(|(t, _)| ports::clash(t, spec)) {
                return Err(NetError::PortInUse {
                    port: spec.host_port,
                    proto: spec.proto,
                    host_ip: ports::shown_ip(spec),
                    holder: PortHolder::Container(name.clone()),
                });
            }
            let (r, port) = ports::reserve(spec).map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => NetError::PortInUse {
                    port: spec.host_port,
                    proto: spec.proto,
                    host_ip: ports::shown_ip(spec),
                    holder: PortHolder::HostProcess,
                },
                std::io::ErrorKind::AddrNotAvailable => NetError::HostIpNotLocal {
                    host_ip: spec.bind_ip(),
                },
                _ => NetError::io(
                    "reserve host port",
                    format!("{}:{}/{}", spec.bind_ip(), spec.host_port, spec.proto),
                    e,
                ),
            })?;
            let actual = PortSpec {
                host_port: port,
                ..*spec
            };
            taken.push((actual, own_name.clone()));
            held.push((actual, r));
        }
        let records: Vec<PortRecord> = held
            .iter()
            .map(|(spec, _)| PortRecord {
                spec: *spec,
                network_id: ep.network_id.clone(),
                container_ip: ep.ip,
            })
            .collect();
        let rollback = |st: &mut State| {
            if let Some(sb) = st.sandboxes.get_mut(container_id) {
                sb.ports.retain(|p| !records.contains(p));
            }
        };
        let saved = {
            let mut st = self.write()?;
            match st.sandboxes.get_mut(container_id) {
                Some(sb) => {
                    sb.ports.extend(records.iter().cloned());
                    let r = store::write_json(&self.inner.store.sandbox_path(container_id), sb);
                    if r.is_err() {
                        rollback(&mut st);
                    }
                    r
                }
                None => Err(NetError::NoSandbox {
                    container: container_id.into(),
                }),
            }
        };
        saved?;
        if let Err(e) = self.apply_firewall().await {
            let snapshot = {
                let mut st = self.write()?;
                rollback(&mut st);
                st.sandboxes.get(container_id).cloned()
            };
            if let Some(sb) = snapshot {
                let _ = store::write_json(&self.inner.store.sandbox_path(container_id), &sb);
            }
            return Err(e);
        }
        let out = held.iter().map(|(s, _)| *s).collect();
        k.reservations
            .entry(container_id.into())
            .or_default()
            .extend(held);
        Ok(out)
    }

    /// The endpoints of a container, in connection order.
    pub fn endpoints(&self, container_id: &str) -> Vec<EndpointInfo> {
        let Ok(st) = self.read() else {
            return Vec::new();
        };
        st.sandboxes
            .get(container_id)
            .map(|sb| {
                sb.endpoints
                    .iter()
                    .filter_map(|e| st.networks.get(&e.network_id).map(|n| endpoint_info(n, e)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The published ports of a container.
    pub fn published(&self, container_id: &str) -> Vec<PortSpec> {
        self.read()
            .ok()
            .and_then(|st| {
                st.sandboxes
                    .get(container_id)
                    .map(|sb| sb.ports.iter().map(|p| p.spec).collect())
            })
            .unwrap_or_default()
    }

    /// The container's /etc/resolv.conf: the embedded DNS when it is on a user-defined network,
    /// else the host's non-loopback resolvers; `extra_dns` (`--dns`) first.
    pub fn resolv_conf(&self, container_id: &str, extra_dns: &[String]) -> String {
        let host = std::fs::read_to_string(&self.inner.cfg.host_resolv_conf).unwrap_or_default();
        let embedded = self.read().ok().and_then(|st| {
            st.sandboxes.get(container_id).and_then(|sb| {
                sb.endpoints
                    .iter()
                    .filter_map(|e| st.networks.get(&e.network_id))
                    .find(|n| !n.default)
                    .map(|n| n.gateway)
            })
        });
        resolv::resolv_conf(&host, embedded, extra_dns)
    }

    /// The container's /etc/hosts.
    pub fn hosts_file(
        &self,
        container_id: &str,
        hostname: &str,
        extra_hosts: &[(String, Ipv4Addr)],
    ) -> String {
        let first = self.endpoints(container_id).into_iter().next();
        resolv::hosts_file(
            first.as_ref().map(|e| e.ip),
            hostname,
            first.as_ref().map(|e| e.container_name.as_str()),
            extra_hosts,
        )
    }
}

/// Creates the veth of `ep` and configures its sandbox end.
async fn plumb(
    nl: &rtnetlink::Handle,
    container_id: &str,
    path: &Path,
    net: &NetworkRecord,
    ep: &EndpointRecord,
) -> Result<()> {
    let peer = veth_name("vfp", container_id, &net.id);
    let ns = std::fs::File::open(path).map_err(|e| NetError::io("open sandbox", path, e))?;
    link::create_veth(nl, &ep.host_ifname, &peer, &net.bridge, &ns).await?;
    let (ifname, mac, ip, prefix) = (
        ep.ifname.clone(),
        ipam::mac_for(ep.ip),
        ep.ip,
        net.subnet.prefix_len(),
    );
    let gw = ep.default_route.then_some(net.gateway);
    let configured = netns::run_in(path, move |h| async move {
        link::configure_peer(&h, &peer, &ifname, mac, ip, prefix, gw).await
    })
    .await;
    if let Err(e) = configured {
        let _ = link::delete(nl, &ep.host_ifname).await;
        return Err(e);
    }
    Ok(())
}

fn check_config(cfg: &NetConfig) -> Result<()> {
    let ifname_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 15
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !ifname_ok(&cfg.default_bridge) {
        return Err(NetError::invalid(
            "default bridge name",
            cfg.default_bridge.clone(),
            "1-15 characters of [a-zA-Z0-9_-]",
        ));
    }
    if cfg.bridge_prefix.len() > 9 || !ifname_ok(&cfg.bridge_prefix) {
        return Err(NetError::invalid(
            "bridge prefix",
            cfg.bridge_prefix.clone(),
            "1-9 characters of [a-zA-Z0-9_-]",
        ));
    }
    if cfg.nft_table.is_empty()
        || !cfg
            .nft_table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(NetError::invalid(
            "nft table name",
            cfg.nft_table.clone(),
            "letters, digits and _ only",
        ));
    }
    if cfg.pool_prefix_len < cfg.pool.prefix_len() || cfg.pool_prefix_len > 30 {
        return Err(NetError::invalid(
            "pool prefix length",
            cfg.pool_prefix_len.to_string(),
            format!("must be between {} and 30", cfg.pool.prefix_len()),
        ));
    }
    if cfg.default_subnet.overlaps(&cfg.pool) {
        return Err(NetError::invalid(
            "default subnet",
            cfg.default_subnet.to_string(),
            format!("it overlaps the pool {}", cfg.pool),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = veth_name("vfl", "c1", "n1");
        assert_eq!(a, veth_name("vfl", "c1", "n1"));
        assert_eq!(a.len(), 11);
        assert_ne!(a, veth_name("vfl", "c1", "n2"));
        assert_ne!(a, veth_name("vfl", "c2", "n1"));
    }

    #[test]
    fn config_is_checked() {
        assert!(check_config(&NetConfig::default()).is_ok());
        let bad = NetConfig {
            bridge_prefix: "much-too-long".into(),
            ..NetConfig::default()
        };
        assert!(check_config(&bad)
            .unwrap_err()
            .to_string()
            .contains("bridge prefix"));
        let bad = NetConfig {
            nft_table: "a b".into(),
            ..NetConfig::default()
        };
        assert!(check_config(&bad).is_err());
        let bad = NetConfig {
            default_subnet: "10.89.0.0/24".parse().unwrap(),
            ..NetConfig::default()
        };
        assert!(check_config(&bad)
            .unwrap_err()
            .to_string()
            .contains("overlaps"));
    }

    #[test]
    fn zone_and_lookup_names() {
        let mut st = State::default();
        let net = NetworkRecord {
            id: "n1".into(),
            name: "app".into(),
            driver: "bridge".into(),
            bridge: "b".into(),
            subnet: "10.89.0.0/24".parse().unwrap(),
            gateway: "10.89.0.1".parse().unwrap(),
            internal: false,
            default: false,
            labels: BTreeMap::new(),
            created: 0,
        };
        st.networks.insert("n1".into(), net.clone());
        st.sandboxes.insert(
            "abcdef0123456789".into(),
            SandboxRecord {
                container_id: "abcdef0123456789".into(),
                path: "/x".into(),
                endpoints: vec![EndpointRecord {
                    network_id: "n1".into(),
                    container_name: "Web".into(),
                    ip: "10.89.0.2".parse().unwrap(),
                    mac: String::new(),
                    ifname: "eth0".into(),
                    host_ifname: "vflx".into(),
                    aliases: vec!["www.".into()],
                    default_route: true,
                }],
                ports: Vec::new(),
            },
        );
        let z = st.zone("n1");
        assert_eq!(z.entries[0].0, vec!["web", "abcdef012345", "www"]);
        assert_eq!(st.find("app").map(|n| n.id.as_str()), Some("n1"));
        assert_eq!(st.find("n").map(|n| n.id.as_str()), Some("n1"));
        assert!(st.find("").is_none());
        assert!(st.not_found("ap").to_string().contains("did you mean app?"));
        assert_eq!(st.container_name("abcdef0123456789"), "Web");
        let info = st.info(&net);
        assert_eq!(info.containers.len(), 1);
        assert!(info.dns);
    }
}
