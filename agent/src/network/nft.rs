//! The firewall: one nftables table owned entirely by flotilla, generated from state.
//!
//! [`ruleset`] is a pure function from the networks and published ports to the complete text of
//! the table; [`apply`] hands it to `nft -f -` as one transaction that first creates the table
//! (so the delete cannot fail), deletes it, and defines it again. The kernel therefore always
//! holds exactly what the state says: rules are never appended, so a restart or a repeated apply
//! cannot duplicate them, and other tables are never touched. The `nft` binary is used rather
//! than a netlink library because no maintained crate speaks nf_tables at this level, and the
//! text form is what operators read when they debug (`nft list table ip flotilla`).
//!
//! What the table does (docker's bridge driver with `--userland-proxy=false`):
//! - `postrouting`: masquerade each non-internal subnet leaving through another interface;
//!   masquerade host-local (127.0.0.0/8) traffic that a DNAT sent to a bridge (needs
//!   `route_localnet=1` on the bridge); masquerade DNAT'ed traffic coming back out of the bridge
//!   it came from (hairpin: a container reaching its own or a neighbour's published port).
//! - `prerouting`/`output`: published ports, DNAT for destinations that are local addresses
//!   (`fib daddr type local`), optionally restricted to a host address.
//! - `forward`: internal bridges neither send nor receive routed traffic; different bridges are
//!   isolated from each other; established traffic, traffic out of a bridge and DNAT'ed traffic
//!   into a bridge is accepted. The policy stays `accept` so forwarding of other software is left
//!   alone.
//! - `input`: the embedded DNS on a gateway answers only its own bridge.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::error::{NetError, Result};
use super::ipnet::Ipv4Net;
use super::model::Proto;

/// A bridge network as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRule {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    /// An embedded DNS listens on the gateway.
    pub dns: bool,
}

/// A published port as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub proto: Proto,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
}

/// The complete `nft -f` input that replaces table `ip <table>`.
pub fn ruleset(table: &str, bridges: &[BridgeRule], ports: &[PortRule]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table ip {table}");
    let _ = writeln!(s, "delete table ip {table}");
    let _ = writeln!(s, "table ip {table} {{");

    s.push_str(
        "\tchain prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n",
    );
    s.push_str("\t\tfib daddr type local jump published\n\t}\n");
    s.push_str("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n");
    s.push_str("\t\tfib daddr type local jump published\n\t}\n");

    s.push_str("\tchain published {\n");
    for p in ports {
        s.push_str("\t\t");
        if let Some(ip) = p.host_ip {
            let _ = write!(s, "ip daddr {ip} ");
        }
        let _ = writeln!(
            s,
            "{} dport {} dnat to {}:{}",
            p.proto, p.host_port, p.container_ip, p.container_port
        );
    }
    s.push_str("\t}\n");

    s.push_str(
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority 100; policy accept;\n",
    );
    for b in bridges.iter().filter(|b| !b.internal) {
        let _ = writeln!(
            s,
            "\t\tip saddr {} oifname != \"{}\" masquerade",
            b.subnet, b.bridge
        );
        let _ = writeln!(
            s,
            "\t\toifname \"{}\" ip saddr 127.0.0.0/8 masquerade",
            b.bridge
        );
        let _ = writeln!(
            s,
            "\t\toifname \"{}\" ip saddr {} ct status dnat masquerade",
            b.bridge, b.subnet
        );
    }
    s.push_str("\t}\n");

    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n");
    for b in bridges.iter().filter(|b| b.internal) {
        let _ = writeln!(s, "\t\tiifname \"{0}\" oifname != \"{0}\" drop", b.bridge);
        let _ = writeln!(s, "\t\toifname \"{0}\" iifname != \"{0}\" drop", b.bridge);
    }
    if bridges.len() > 1 {
        for b in bridges {
            let others: Vec<String> = bridges
                .iter()
                .filter(|o| o.bridge != b.bridge)
                .map(|o| format!("\"{}\"", o.bridge))
                .collect();
            let _ = writeln!(
                s,
                "\t\tiifname \"{}\" oifname {{ {} }} drop",
                b.bridge,
                others.join(", ")
            );
        }
    }
    s.push_str("\t\tct state established,related accept\n");
    for b in bridges.iter().filter(|b| !b.internal) {
        let _ = writeln!(s, "\t\tiifname \"{}\" accept", b.bridge);
        let _ = writeln!(s, "\t\toifname \"{}\" ct status dnat accept", b.bridge);
    }
    s.push_str("\t}\n");

    s.push_str("\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n");
    for b in bridges.iter().filter(|b| b.dns) {
        for proto in ["udp", "tcp"] {
            let _ = writeln!(
                s,
                "\t\tip daddr {} {proto} dport 53 iifname != \"{}\" drop",
                b.gateway, b.bridge
            );
        }
    }
    s.push_str("\t}\n}\n");
    s
}

/// The transaction that removes table `ip <table>` whether or not it exists.
pub fn deletion(table: &str) -> String {
    format!("table ip {table}\ndelete table ip {table}\n")
}

/// Runs `nft -f -` with `text` as one atomic transaction.
pub async fn apply(table: &str, text: &str) -> Result<()> {
    let fail = |detail: String| NetError::Nft {
        table: table.to_string(),
        detail,
    };
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run nft (is nftables installed?): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| fail(format!("write to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(format!("wait for nft: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridges() -> Vec<BridgeRule> {
        vec![
            BridgeRule {
                bridge: "flotilla0".into(),
                subnet: "10.88.0.0/16".parse().unwrap(),
                gateway: "10.88.0.1".parse().unwrap(),
                internal: false,
                dns: false,
            },
            BridgeRule {
                bridge: "flbr-app".into(),
                subnet: "10.89.0.0/24".parse().unwrap(),
                gateway: "10.89.0.1".parse().unwrap(),
                internal: false,
                dns: true,
            },
            BridgeRule {
                bridge: "flbr-db".into(),
                subnet: "10.89.1.0/24".parse().unwrap(),
                gateway: "10.89.1.1".parse().unwrap(),
                internal: true,
                dns: true,
            },
        ]
    }

    #[test]
    fn golden_ruleset() {
        let ports = [
            PortRule {
                host_ip: None,
                host_port: 8080,
                proto: Proto::Tcp,
                container_ip: "10.88.0.2".parse().unwrap(),
                container_port: 80,
            },
            PortRule {
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 5353,
                proto: Proto::Udp,
                container_ip: "10.89.0.3".parse().unwrap(),
                container_port: 53,
            },
        ];
        let want = r#"table ip flotilla
delete table ip flotilla
table ip flotilla {
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		fib daddr type local jump published
	}
	chain output {
		type nat hook output priority -100; policy accept;
		fib daddr type local jump published
	}
	chain published {
		tcp dport 8080 dnat to 10.88.0.2:80
		ip daddr 127.0.0.1 udp dport 5353 dnat to 10.89.0.3:53
	}
	chain postrouting {
		type nat hook postrouting priority 100; policy accept;
		ip saddr 10.88.0.0/16 oifname != "flotilla0" masquerade
		oifname "flotilla0" ip saddr 127.0.0.0/8 masquerade
		oifname "flotilla0" ip saddr 10.88.0.0/16 ct status dnat masquerade
		ip saddr 10.89.0.0/24 oifname != "flbr-app" masquerade
		oifname "flbr-app" ip saddr 127.0.0.0/8 masquerade
		oifname "flbr-app" ip saddr 10.89.0.0/24 ct status dnat masquerade
	}
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname "flbr-db" oifname != "flbr-db" drop
		oifname "flbr-db" iifname != "flbr-db" drop
		iifname "flotilla0" oifname { "flbr-app", "flbr-db" } drop
		iifname "flbr-app" oifname { "flotilla0", "flbr-db" } drop
		iifname "flbr-db" oifname { "flotilla0", "flbr-app" } drop
		ct state established,related accept
		iifname "flotilla0" accept
		oifname "flotilla0" ct status dnat accept
		iifname "flbr-app" accept
		oifname "flbr-app" ct status dnat accept
	}
	chain input {
		type filter hook input priority 0; policy accept;
		ip daddr 10.89.0.1 udp dport 53 iifname != "flbr-app" drop
		ip daddr 10.89.0.1 tcp dport 53 iifname != "flbr-app" drop
		ip daddr 10.89.1.1 udp dport 53 iifname != "flbr-db" drop
		ip daddr 10.89.1.1 tcp dport 53 iifname != "flbr-db" drop
	}
}
"#;
        assert_eq!(ruleset("flotilla", &bridges(), &ports), want);
    }

    #[test]
    fn empty_state_still_defines_every_chain() {
        let text = ruleset("t", &[], &[]);
        for chain in [
            "prerouting",
            "output",
            "published",
            "postrouting",
            "forward",
            "input",
        ] {
            assert!(
                text.contains(&format!("chain {chain} {{")),
                "{chain} missing:\n{text}"
            );
        }
        assert!(text.starts_with("table ip t\ndelete table ip t\n"));
    }

    #[test]
    fn deletion_never_fails_on_a_missing_table() {
        assert_eq!(deletion("x"), "table ip x\ndelete table ip x\n");
    }
}
