//! `/etc/resolv.conf` and `/etc/hosts` contents for a container.
//!
//! Pure text generation. On a user-defined network the container asks the embedded DNS on its
//! gateway; on the default bridge it gets the host's resolvers minus loopback ones (which would
//! point into the container itself), or Google's public resolvers when none remain, as docker
//! does. `search` and `options` lines of the host are kept.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Nameserver addresses of a resolv.conf text, in order.
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => addr.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// Upstream resolvers for forwarding: the host's non-loopback nameservers, port 53.
pub fn upstreams(host_resolv: &str) -> Vec<SocketAddr> {
    nameservers(host_resolv)
        .into_iter()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Fallback resolvers when the host has only loopback ones (docker's choice).
const FALLBACK: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// The resolv.conf of a container. `embedded` is the gateway of its first user-defined network.
pub fn resolv_conf(host_resolv: &str, embedded: Option<Ipv4Addr>, extra_dns: &[String]) -> String {
    let mut out = String::new();
    let mut servers: Vec<String> = Vec::new();
    if let Some(gw) = embedded {
        servers.push(gw.to_string());
        servers.extend(extra_dns.iter().cloned());
    } else {
        servers.extend(extra_dns.iter().cloned());
        servers.extend(
            nameservers(host_resolv)
                .into_iter()
                .filter(|ip| !ip.is_loopback())
                .map(|ip| ip.to_string()),
        );
        if servers.is_empty() {
            servers.extend(FALLBACK.iter().map(|s| s.to_string()));
        }
    }
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    for l in host_resolv.lines() {
        let first = l.split_whitespace().next();
        if matches!(first, Some("search") | Some("domain") | Some("options")) {
            out.push_str(l.trim());
            out.push('\n');
        }
    }
    out
}

/// The /etc/hosts of a container: loopback names, its own address under `hostname` (and its
/// name when that differs), then `extra_hosts` (`--add-host`).
pub fn hosts_file(
    own: Option<Ipv4Addr>,
    hostname: &str,
    container_name: Option<&str>,
    extra_hosts: &[(String, Ipv4Addr)],
) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if let Some(ip) = own {
        out.push_str(&format!("{ip}\t{hostname}"));
        if let Some(name) = container_name.filter(|n| !n.is_empty() && *n != hostname) {
            out.push_str(&format!(" {name}"));
        }
        out.push('\n');
    }
    for (name, ip) in extra_hosts {
        out.push_str(&format!("{ip}\t{name}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str =
        "# generated\nsearch lab.example\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n\
                        nameserver ::1\noptions edns0\n";

    #[test]
    fn default_bridge_gets_host_resolvers_without_loopback() {
        assert_eq!(
            resolv_conf(HOST, None, &["192.0.2.99".into()]),
            "nameserver 192.0.2.99\nnameserver 192.0.2.53\nsearch lab.example\noptions edns0\n"
        );
        assert_eq!(
            resolv_conf("nameserver 127.0.0.1\n", None, &[]),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
    }

    #[test]
    fn user_networks_ask_the_embedded_dns() {
        assert_eq!(
            resolv_conf(HOST, Some("10.89.0.1".parse().unwrap()), &[]),
            "nameserver 10.89.0.1\nsearch lab.example\noptions edns0\n"
        );
    }

    #[test]
    fn upstreams_skip_loopback() {
        assert_eq!(upstreams(HOST), vec!["192.0.2.53:53".parse().unwrap()]);
        assert!(upstreams("").is_empty());
    }

    #[test]
    fn hosts() {
        let h = hosts_file(
            Some("10.88.0.2".parse().unwrap()),
            "abc123",
            Some("web"),
            &[("db".into(), "10.1.2.3".parse().unwrap())],
        );
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("\n10.88.0.2\tabc123 web\n"), "{h}");
        assert!(h.ends_with("10.1.2.3\tdb\n"));
        assert!(!hosts_file(None, "x", None, &[]).contains("\tx"));
    }
}
