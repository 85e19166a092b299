//! Typed errors of container networking.
//!
//! Each variant names the network, container, address or port it failed on, and, when the cause
//! is the user's input, what to do instead. Kernel failures keep the operation that failed
//! (`create bridge fl-br0`) next to the source error.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::model::Proto;

/// Who holds a host port that a publish asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortHolder {
    /// Another container (by name) published it through this agent.
    Container(String),
    /// Something outside flotilla bound it.
    HostProcess,
}

impl std::fmt::Display for PortHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortHolder::Container(name) => write!(f, "by another container: {name}"),
            PortHolder::HostProcess => f.write_str("by a process on this host"),
        }
    }
}

/// Errors of [`super::NetworkManager`].
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid {what} {input:?}: {reason}")]
    InvalidInput {
        what: &'static str,
        input: String,
        reason: String,
    },

    #[error("network driver {driver:?} is not supported here (supported: bridge)")]
    UnsupportedDriver { driver: String },

    #[error("a network named {name} already exists (id {id})")]
    NameConflict { name: String, id: String },

    #[error("subnet {subnet} overlaps subnet {other} of network {network}; choose another subnet")]
    SubnetOverlap {
        subnet: String,
        other: String,
        network: String,
    },

    #[error(
        "no free /{prefix_len} subnet left in pool {pool}; remove unused networks or pass a subnet"
    )]
    PoolExhausted { pool: String, prefix_len: u8 },

    #[error("network {input} not found{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    NetworkNotFound {
        input: String,
        suggestion: Option<String>,
    },

    #[error("network {name} is predefined and cannot be removed")]
    Protected { name: String },

    #[error(
        "network {name} is in use by container(s) {containers}; disconnect or remove them first"
    )]
    NetworkInUse { name: String, containers: String },

    #[error("network {name} ({driver}) cannot be connected to: {hint}")]
    NotConnectable {
        name: String,
        driver: String,
        hint: &'static str,
    },

    #[error("container {container} has no network sandbox (create_sandbox first)")]
    NoSandbox { container: String },

    #[error("container {container} is already connected to network {network}")]
    AlreadyConnected { container: String, network: String },

    #[error("container {container} is not connected to network {network}")]
    NotConnected { container: String, network: String },

    #[error("address {ip} is outside subnet {subnet} of network {network}")]
    IpOutsideSubnet {
        ip: Ipv4Addr,
        subnet: String,
        network: String,
    },

    #[error("address {ip} on network {network} is {reason}; choose another address")]
    IpUnavailable {
        ip: Ipv4Addr,
        network: String,
        reason: String,
    },

    #[error("no free address left in subnet {subnet} of network {network}")]
    SubnetFull { subnet: String, network: String },

    #[error("container {container} has no endpoint on a non-internal bridge network: connect it to one before publishing ports")]
    NoBridgeEndpoint { container: String },

    #[error("port {port}/{proto} is already in use on {host_ip} ({holder})")]
    PortInUse {
        port: u16,
        proto: Proto,
        host_ip: Ipv4Addr,
        holder: PortHolder,
    },

    #[error("cannot publish on {host_ip}: it is not an address of this host")]
    HostIpNotLocal { host_ip: Ipv4Addr },

    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{op}: {source}")]
    Sys {
        op: String,
        #[source]
        source: nix::Error,
    },

    #[error("nft failed to apply table {table}: {detail}")]
    Nft { table: String, detail: String },

    #[error("state file {} is unreadable: {reason}", path.display())]
    State { path: PathBuf, reason: String },
}

impl NetError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        NetError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        what: &'static str,
        input: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        NetError::InvalidInput {
            what,
            input: input.into(),
            reason: reason.into(),
        }
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = NetError> = std::result::Result<T, E>;
