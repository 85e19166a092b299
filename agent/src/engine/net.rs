//! The engine's side of networking: error mapping and conversions between the network module's
//! types and the API's, plus the port list a container asks for (`-p`, and `-P` over the image's
//! and the request's EXPOSE'd ports).

use std::net::Ipv4Addr;

use flotilla_proto::agent::v1 as pb;

use super::error::{EngineError, Kind};
use crate::network::{EndpointInfo, NetError, NetworkInfo, PortSpec, Proto};

impl From<NetError> for EngineError {
    fn from(e: NetError) -> Self {
        let kind = match &e {
            NetError::NetworkNotFound { .. } => Kind::NotFound,
            NetError::NameConflict { .. } | NetError::AlreadyConnected { .. } => Kind::Conflict,
            NetError::InvalidInput { .. }
            | NetError::UnsupportedDriver { .. }
            | NetError::SubnetOverlap { .. }
            | NetError::IpOutsideSubnet { .. }
            | NetError::NotConnectable { .. }
            | NetError::HostIpNotLocal { .. } => Kind::Invalid,
            NetError::Protected { .. }
            | NetError::NetworkInUse { .. }
            | NetError::NoSandbox { .. }
            | NetError::NotConnected { .. }
            | NetError::NoBridgeEndpoint { .. } => Kind::Precondition,
            NetError::PortInUse { .. }
            | NetError::PoolExhausted { .. }
            | NetError::SubnetFull { .. }
            | NetError::IpUnavailable { .. } => Kind::Exhausted,
            _ => Kind::Internal,
        };
        EngineError::new(kind, e.to_string())
    }
}

pub fn endpoint_pb(e: &EndpointInfo) -> pb::EndpointInfo {
    pb::EndpointInfo {
        network: e.network.clone(),
        ip: e.ip.to_string(),
        prefix_len: u32::from(e.prefix_len),
        gateway: e.gateway.to_string(),
        mac: e.mac.clone(),
        aliases: e.aliases.clone(),
    }
}

pub fn port_pb(p: &PortSpec) -> pb::PortBinding {
    pb::PortBinding {
        host_ip: p.host_ip.map(|i| i.to_string()).unwrap_or_default(),
        host_port: u32::from(p.host_port),
        container_port: u32::from(p.container_port),
        protocol: match p.proto {
            Proto::Tcp => "tcp".into(),
            Proto::Udp => "udp".into(),
        },
    }
}

pub fn network_pb(n: &NetworkInfo) -> pb::Network {
    pb::Network {
        id: n.id.clone(),
        name: n.name.clone(),
        driver: n.driver.clone(),
        subnet: n.subnet.map(|s| s.to_string()).unwrap_or_default(),
        gateway: n.gateway.map(|g| g.to_string()).unwrap_or_default(),
        bridge: n.bridge.clone().unwrap_or_default(),
        internal: n.internal,
        labels: n.labels.clone().into_iter().collect(),
        created_unix_nano: n.created as i64 * 1_000_000_000,
        endpoints: n
            .containers
            .iter()
            .map(|(id, e)| pb::NetworkEndpoint {
                container_id: id.clone(),
                container_name: e.container_name.clone(),
                ip: e.ip.to_string(),
                mac: e.mac.clone(),
            })
            .collect(),
    }
}

fn parse_proto(p: &str) -> Result<Proto, EngineError> {
    match p {
        "" | "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        other => Err(EngineError::invalid(format!(
            "invalid protocol {other:?}: use tcp or udp"
        ))),
    }
}

/// `80/tcp` -> (80, tcp).
fn parse_exposed(s: &str) -> Result<(u16, Proto), EngineError> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
        EngineError::invalid(format!("invalid exposed port {s:?}: use PORT[/tcp|udp]"))
    })?;
    Ok((port, parse_proto(proto)?))
}

/// The ports to publish: `-p` bindings, plus with `-P` every exposed port not already bound, to a
/// free host port.
pub fn port_specs(
    cfg: &pb::ContainerConfig,
    image_exposed: &[String],
) -> Result<Vec<PortSpec>, EngineError> {
    let mut out = Vec::new();
    for p in &cfg.ports {
        let host_ip = if p.host_ip.is_empty() || p.host_ip == "0.0.0.0" {
            None
        } else {
            Some(p.host_ip.parse::<Ipv4Addr>().map_err(|_| {
                EngineError::invalid(format!("invalid host address {:?} in a port binding: only IPv4 addresses are supported", p.host_ip))
            })?)
        };
        let container_port = u16::try_from(p.container_port)
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| {
                EngineError::invalid(format!(
                    "invalid container port {}: must be 1-65535",
                    p.container_port
                ))
            })?;
        let host_port = u16::try_from(p.host_port).map_err(|_| {
            EngineError::invalid(format!(
                "invalid host port {}: must be 0-65535",
                p.host_port
            ))
        })?;
        out.push(PortSpec {
            host_ip,
            host_port,
            container_port,
            proto: parse_proto(&p.protocol)?,
        });
    }
    if cfg.publish_all {
        for e in image_exposed.iter().chain(cfg.exposed_ports.iter()) {
            let (port, proto) = parse_exposed(e)?;
            if !out
                .iter()
                .any(|s| s.container_port == port && s.proto == proto)
            {
                out.push(PortSpec {
                    host_ip: None,
                    host_port: 0,
                    container_port: port,
                    proto,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_all_adds_exposed_ports_once() {
        let cfg = pb::ContainerConfig {
            ports: vec![pb::PortBinding {
                host_ip: String::new(),
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
            }],
            publish_all: true,
            exposed_ports: vec!["53/udp".into()],
            ..Default::default()
        };
        let specs = port_specs(&cfg, &["80/tcp".into(), "443".into()]).expect("specs");
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0].host_port, 8080);
        assert!(specs
            .iter()
            .any(|s| s.container_port == 443 && s.host_port == 0 && s.proto == Proto::Tcp));
        assert!(specs
            .iter()
            .any(|s| s.container_port == 53 && s.proto == Proto::Udp));
        let bad = pb::ContainerConfig {
            ports: vec![pb::PortBinding {
                host_ip: "::1".into(),
                host_port: 1,
                container_port: 1,
                protocol: "tcp".into(),
            }],
            ..Default::default()
        };
        assert!(port_specs(&bad, &[]).unwrap_err().msg.contains("IPv4"));
        let bad = pb::ContainerConfig {
            ports: vec![pb::PortBinding {
                host_ip: String::new(),
                host_port: 1,
                container_port: 0,
                protocol: "sctp".into(),
            }],
            ..Default::default()
        };
        assert!(port_specs(&bad, &[]).is_err());
        assert!(parse_exposed("x/tcp").is_err());
    }
}
