//! Container networking on one node: docker's bridge driver for flotilla's agent.
//!
//! [`NetworkManager`] owns the networks, the per-container network namespaces ("sandboxes") and
//! everything flotilla puts into the host kernel for them: one Linux bridge per network, one veth
//! pair per endpoint (host end `vfl<hash8>` enslaved to the bridge, peer `eth<N>` in the
//! sandbox), one nftables table (`ip <nft_table>`) holding masquerade, isolation and published
//! port rules, host-port reservations, and an embedded DNS responder per user-defined network.
//! The durable truth is a set of JSON records under `state_dir` (see [`model`] and [`store`]);
//! the kernel side is derived from them, so [`NetworkManager::open`] after a crash or SIGKILL
//! rebuilds bridges, rules, reservations and DNS from the records without duplicating anything.
//!
//! # How the agent uses it
//! ```text
//! let net = NetworkManager::open(NetConfig::default()).await?;          // once, at start-up
//! // run a container on a network:
//! let ns = net.create_sandbox(&id).await?;                               // 1. empty netns, lo up
//! let ep = net.connect(&id, EndpointRequest { container_name, network, ip, aliases }).await?; // 2.
//! let ports = net.publish(&id, &[PortSpec { .. }]).await?;               // 3. (optional)
//! write net.resolv_conf(&id, &dns) and net.hosts_file(&id, &hostname, &extra_hosts)
//!   into the container's /etc, and put `ns` in the OCI spec: linux.namespaces
//!   [{ "type": "network", "path": ns }]                                  // 4. start the container
//! // when the container is removed (or its start failed):
//! net.remove_sandbox(&id).await?;                                         // idempotent
//! ```
//! `--network host` needs no sandbox (omit the network namespace from the spec); `--network none`
//! is `create_sandbox` without `connect`.
//!
//! # Submodules
//! Pure logic, unit-tested without root: [`ipnet`] (prefixes), [`ipam`] (subnets, addresses,
//! MACs), [`names`] (validation, suggestions), [`nft`] (the ruleset text), [`dns`] (answers),
//! [`resolv`] (resolv.conf and hosts), [`ports`] (clashes). Kernel and disk: [`link`]
//! (rtnetlink), [`netns`] (sandboxes), [`store`] (records), `nft::apply`, `ports::reserve`.
//! [`manager`] ties them together under one lock.

pub mod dns;
pub mod error;
pub mod ipam;
pub mod ipnet;
pub mod link;
pub mod manager;
pub mod model;
pub mod names;
pub mod netns;
pub mod nft;
pub mod ports;
pub mod resolv;
pub mod store;

use std::path::PathBuf;

pub use error::{NetError, PortHolder};
pub use ipnet::Ipv4Net;
pub use manager::NetworkManager;
pub use model::{
    CreateNetwork, EndpointInfo, EndpointRequest, NetworkInfo, PortSpec, Proto, DEFAULT_NETWORK,
    HOST_NETWORK, NONE_NETWORK,
};

/// Where networking keeps its state and which kernel names it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Durable records (`networks/`, `sandboxes/`), e.g. `/var/lib/flotilla/network`.
    pub state_dir: PathBuf,
    /// Volatile files; sandboxes are mounted at `<run_dir>/netns/<container id>`.
    pub run_dir: PathBuf,
    /// Bridge of the default network `bridge`.
    pub default_bridge: String,
    pub default_subnet: Ipv4Net,
    /// User networks without a subnet get the first free `/pool_prefix_len` of this pool.
    pub pool: Ipv4Net,
    pub pool_prefix_len: u8,
    /// Bridges of user networks are `<bridge_prefix><id>` cut to 15 characters (at most 9).
    pub bridge_prefix: String,
    /// The nftables table (family ip) flotilla owns entirely.
    pub nft_table: String,
    /// The host's resolver configuration: source of upstreams and of the default bridge's
    /// resolv.conf.
    pub host_resolv_conf: PathBuf,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            state_dir: PathBuf::from("/var/lib/flotilla/network"),
            run_dir: PathBuf::from("/run/flotilla"),
            default_bridge: "flotilla0".into(),
            default_subnet: Ipv4Net::truncate([10, 88, 0, 0].into(), 16),
            pool: Ipv4Net::truncate([10, 89, 0, 0].into(), 16),
            pool_prefix_len: 24,
            bridge_prefix: "flbr-".into(),
            nft_table: "flotilla".into(),
            host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}
