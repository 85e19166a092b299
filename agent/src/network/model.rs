//! The data of networking: what callers ask for, what they get back, and what is persisted.
//!
//! Requests and answers are plain values; records (`NetworkRecord`, `SandboxRecord`) are the
//! durable truth written as JSON under the state directory. Everything the kernel holds (bridges,
//! veths, the nft table, port reservations) is derived from records and can be rebuilt from them.
//! Address allocations are not stored separately: an address is taken exactly when an endpoint
//! record holds it, so allocations and endpoints can never disagree after a crash.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ipnet::Ipv4Net;

/// Name of the default network (docker's `bridge`).
pub const DEFAULT_NETWORK: &str = "bridge";
/// Pseudo network: the container shares the host's network namespace (no sandbox).
pub const HOST_NETWORK: &str = "host";
/// Pseudo network: the container gets a sandbox with loopback only.
pub const NONE_NETWORK: &str = "none";

/// A request to create a user-defined network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateNetwork {
    pub name: String,
    /// Only `bridge` (empty means bridge).
    pub driver: String,
    /// CIDR such as `10.89.7.0/24`; `None` takes the next free /24 of the pool.
    pub subnet: Option<String>,
    /// Gateway address inside the subnet; `None` is the first host address.
    pub gateway: Option<String>,
    /// No masquerade and no forwarding in or out of the bridge.
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
}

/// A network as shown by list/inspect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    /// `bridge`, `host` or `null`.
    pub driver: String,
    /// Linux bridge device (bridge driver only).
    pub bridge: Option<String>,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub internal: bool,
    /// True for `bridge`, `host` and `none`, which cannot be removed.
    pub predefined: bool,
    /// Embedded DNS answers container names on this network (user-defined bridges).
    pub dns: bool,
    pub labels: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Connected containers by container id.
    pub containers: BTreeMap<String, EndpointInfo>,
}

/// Connect a sandbox to a network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointRequest {
    /// Container name: answered by the embedded DNS and written to /etc/hosts.
    pub container_name: String,
    /// Network name or id (a unique id prefix is accepted).
    pub network: String,
    /// A fixed address (`--ip`); must be inside the subnet and free.
    pub ip: Option<Ipv4Addr>,
    /// Extra DNS names on this network (`--network-alias`).
    pub aliases: Vec<String>,
}

/// One interface of a sandbox on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub network: String,
    pub network_id: String,
    pub container_name: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub aliases: Vec<String>,
    /// Interface name inside the sandbox (`eth0`, `eth1`, ...).
    pub ifname: String,
    /// Host end of the veth pair, enslaved to the network's bridge.
    pub host_ifname: String,
    /// The sandbox's default route goes through this endpoint.
    pub default_route: bool,
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A published port (`-p [host_ip:]host_port:container_port[/proto]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    /// `None` means every address of the host.
    pub host_ip: Option<Ipv4Addr>,
    /// 0 asks for any free port; answers carry the port actually reserved.
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl PortSpec {
    /// The address the reservation binds (`0.0.0.0` without a host ip).
    pub fn bind_ip(&self) -> Ipv4Addr {
        self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

/// Durable record of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    /// The default network: no embedded DNS, cannot be removed.
    pub default: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created: u64,
}

/// Durable record of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network_id: String,
    pub container_name: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub ifname: String,
    pub host_ifname: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub default_route: bool,
}

/// Durable record of one published port: where it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    pub spec: PortSpec,
    pub network_id: String,
    pub container_ip: Ipv4Addr,
}

/// Durable record of a sandbox (one per container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub container_id: String,
    pub path: PathBuf,
    #[serde(default)]
    pub endpoints: Vec<EndpointRecord>,
    #[serde(default)]
    pub ports: Vec<PortRecord>,
}
