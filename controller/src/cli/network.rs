//! `flotilla network create|ls|inspect|rm|connect|disconnect`: Networks.* calls with docker's
//! output (`NETWORK ID  NAME  DRIVER  SCOPE`, docker's inspect keys with IPAM and Containers).

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use flotilla_proto::agent::v1::{
    ConnectNetworkRequest, CreateNetworkRequest, DisconnectNetworkRequest, ListNetworksRequest,
    Network, NetworkRef,
};
use serde::Serialize;

use super::container::{inspect_each, print_rows};
use super::format::{self, outln};
use super::parse;
use super::template::Template;
use super::Ctx;

/// Network commands.
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network (prints its id)
    #[command(after_help = "Examples:
  flotilla network create app
  flotilla network create --subnet 10.20.0.0/24 --gateway 10.20.0.1 app
  flotilla network create --internal backend
  flotilla run -d --network app --network-alias db postgres")]
    Create(NetworkCreateArgs),
    /// List networks
    #[command(visible_aliases = ["list"])]
    Ls(NetworkLsArgs),
    /// Show detailed information on one or more networks (JSON)
    Inspect(NetworkInspectArgs),
    /// Remove one or more networks
    #[command(visible_aliases = ["remove"])]
    Rm(NetworkRmArgs),
    /// Connect a container to a network
    Connect(ConnectArgs),
    /// Disconnect a container from a network
    Disconnect(DisconnectArgs),
}

#[derive(Debug, Args)]
pub struct NetworkCreateArgs {
    /// Driver: bridge
    #[arg(short, long, default_value = "bridge")]
    pub driver: String,
    /// Subnet in CIDR form (default: a free /24 from the agent's pool)
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Gateway address in the subnet
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// No access to the outside (no NAT)
    #[arg(long)]
    pub internal: bool,
    /// Set a label (KEY=VALUE)
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct NetworkLsArgs {
    /// Only display network ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter (repeatable), e.g. name=app, driver=bridge
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Output: table (default), json, or a Go template like '{{.Name}}'
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Do not truncate ids
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, Args)]
pub struct NetworkInspectArgs {
    /// Format the output with a Go template (e.g. '{{.IPAM.Config}}')
    #[arg(short, long)]
    pub format: Option<String>,
    #[arg(required = true, value_name = "NETWORK")]
    pub networks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NetworkRmArgs {
    #[arg(required = true, value_name = "NETWORK")]
    pub networks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// IPv4 or IPv6 address for the container on this network
    #[arg(long)]
    pub ip: Option<String>,
    /// DNS alias for the container on this network
    #[arg(long, value_name = "ALIAS")]
    pub alias: Vec<String>,
    #[arg(value_name = "NETWORK")]
    pub network: String,
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

#[derive(Debug, Args)]
pub struct DisconnectArgs {
    /// Disconnect even if the container is not running cleanly
    #[arg(short, long)]
    pub force: bool,
    #[arg(value_name = "NETWORK")]
    pub network: String,
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

/// One `network ls` row.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkRow {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub driver: String,
    pub scope: String,
    pub subnet: String,
    pub internal: bool,
    pub created_at: String,
}

/// The `network ls` row of a network.
pub fn network_row(n: &Network, no_trunc: bool) -> NetworkRow {
    NetworkRow {
        id: if no_trunc {
            n.id.clone()
        } else {
            format::short_id(&n.id)
        },
        name: n.name.clone(),
        driver: n.driver.clone(),
        scope: "local".into(),
        subnet: n.subnet.clone(),
        internal: n.internal,
        created_at: format::rfc3339(n.created_unix_nano),
    }
}

/// `network inspect` in docker's shape.
pub fn network_view(n: &Network) -> serde_json::Value {
    let config: Vec<serde_json::Value> = if n.subnet.is_empty() {
        vec![]
    } else {
        vec![serde_json::json!({"Subnet": n.subnet, "Gateway": n.gateway})]
    };
    let containers: BTreeMap<String, serde_json::Value> = n
        .endpoints
        .iter()
        .map(|e| {
            let prefix = n.subnet.split_once('/').map(|(_, p)| p).unwrap_or("");
            let addr = if e.ip.is_empty() || prefix.is_empty() || e.ip.contains('/') {
                e.ip.clone()
            } else {
                format!("{}/{prefix}", e.ip)
            };
            (
                e.container_id.clone(),
                serde_json::json!({"Name": e.container_name, "MacAddress": e.mac, "IPv4Address": addr}),
            )
        })
        .collect();
    let labels: BTreeMap<String, String> = n.labels.clone().into_iter().collect();
    serde_json::json!({
        "Name": n.name,
        "Id": n.id,
        "Created": format::rfc3339(n.created_unix_nano),
        "Scope": "local",
        "Driver": n.driver,
        "IPAM": {"Driver": "default", "Config": config},
        "Internal": n.internal,
        "Containers": containers,
        "Options": {"com.docker.network.bridge.name": n.bridge},
        "Labels": labels,
    })
}

/// Runs a network subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: NetworkCmd) -> anyhow::Result<i32> {
    match cmd {
        NetworkCmd::Create(a) => {
            let subnet = a.subnet.as_deref().map(parse::parse_cidr).transpose()?;
            let gateway = a
                .gateway
                .as_deref()
                .map(|g| parse::parse_ip("--gateway", g))
                .transpose()?;
            if gateway.is_some() && subnet.is_none() {
                anyhow::bail!("--gateway needs --subnet");
            }
            let mut labels = std::collections::HashMap::new();
            for l in &a.label {
                let (k, v) = parse::parse_label(l)?;
                labels.insert(k, v);
            }
            let agent = ctx.agent().await?;
            let n = agent
                .networks()
                .create(CreateNetworkRequest {
                    name: a.name,
                    driver: a.driver,
                    subnet: subnet.unwrap_or_default(),
                    gateway: gateway.unwrap_or_default(),
                    internal: a.internal,
                    labels,
                })
                .await
                .map_err(|s| agent.err(s))?
                .into_inner();
            outln(&n.id);
            Ok(0)
        }
        NetworkCmd::Ls(a) => {
            if a.format != "table" && a.format != "json" {
                Template::parse(&a.format)?;
            }
            let agent = ctx.agent().await?;
            let mut nets = agent
                .networks()
                .list(ListNetworksRequest { filters: a.filter })
                .await
                .map_err(|s| agent.err(s))?
                .into_inner()
                .networks;
            nets.sort_by(|x, y| x.name.cmp(&y.name));
            let rows: Vec<NetworkRow> = nets.iter().map(|n| network_row(n, a.no_trunc)).collect();
            if a.quiet {
                let s: String = rows.iter().map(|r| format!("{}\n", r.id)).collect();
                format::out(&s);
                return Ok(0);
            }
            print_rows(
                &rows,
                &a.format,
                &["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                |r| {
                    vec![
                        r.id.clone(),
                        r.name.clone(),
                        r.driver.clone(),
                        r.scope.clone(),
                    ]
                },
            )?;
            Ok(0)
        }
        NetworkCmd::Inspect(a) => {
            let agent = ctx.agent().await?;
            inspect_each(&a.networks, a.format.as_deref(), |network| {
                let agent = agent.clone();
                async move {
                    let n = agent
                        .networks()
                        .inspect(NetworkRef { network })
                        .await
                        .map_err(|s| agent.err(s))?
                        .into_inner();
                    Ok(network_view(&n))
                }
            })
            .await
        }
        NetworkCmd::Rm(a) => {
            let agent = ctx.agent().await?;
            let mut code = 0;
            for n in &a.networks {
                match agent
                    .networks()
                    .remove(NetworkRef { network: n.clone() })
                    .await
                {
                    Ok(_) => outln(n),
                    Err(s) => {
                        eprintln!("Error: {}", agent.err(s));
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        NetworkCmd::Connect(a) => {
            let ip =
                a.ip.as_deref()
                    .map(|i| parse::parse_ip("--ip", i))
                    .transpose()?;
            let agent = ctx.agent().await?;
            agent
                .networks()
                .connect_container(ConnectNetworkRequest {
                    network: a.network,
                    container: a.container,
                    ip: ip.unwrap_or_default(),
                    aliases: a.alias,
                })
                .await
                .map_err(|s| agent.err(s))?;
            Ok(0)
        }
        NetworkCmd::Disconnect(a) => {
            let agent = ctx.agent().await?;
            agent
                .networks()
                .disconnect_container(DisconnectNetworkRequest {
                    network: a.network,
                    container: a.container,
                    force: a.force,
                })
                .await
                .map_err(|s| agent.err(s))?;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::agent::v1::NetworkEndpoint;

    fn net() -> Network {
        Network {
            id: "f00dfeedbeef0123456789".into(),
            name: "app".into(),
            driver: "bridge".into(),
            subnet: "10.20.0.0/24".into(),
            gateway: "10.20.0.1".into(),
            bridge: "flt-f00dfeed".into(),
            internal: false,
            labels: Default::default(),
            created_unix_nano: 0,
            endpoints: vec![NetworkEndpoint {
                container_id: "abc".into(),
                container_name: "web".into(),
                ip: "10.20.0.2".into(),
                mac: "02:00:00:00:00:02".into(),
            }],
        }
    }

    #[test]
    fn rows_and_inspect() {
        let r = network_row(&net(), false);
        assert_eq!(
            (r.id.as_str(), r.name.as_str(), r.scope.as_str()),
            ("f00dfeedbeef", "app", "local")
        );
        let v = network_view(&net());
        assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "10.20.0.0/24");
        assert_eq!(v["IPAM"]["Config"][0]["Gateway"], "10.20.0.1");
        assert_eq!(v["Containers"]["abc"]["Name"], "web");
        assert_eq!(v["Containers"]["abc"]["IPv4Address"], "10.20.0.2/24");
        assert_eq!(
            v["Options"]["com.docker.network.bridge.name"],
            "flt-f00dfeed"
        );
        let none = network_view(&Network {
            name: "none".into(),
            ..Default::default()
        });
        assert_eq!(none["IPAM"]["Config"], serde_json::json!([]));
    }
}
