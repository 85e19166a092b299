//! Address management: subnets for new networks and addresses for endpoints.
//!
//! Pure functions over the set of what is taken; the caller derives that set from the records
//! (see `model`), so nothing here is stored. Addresses are handed out lowest-free first; since the
//! MAC address is derived from the IP (`02:42:` + the four octets), a reused address comes back
//! with the same MAC and neighbours' ARP caches stay right.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::ipnet::Ipv4Net;

/// Why an address could not be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamError {
    OutsideSubnet,
    /// Network, broadcast or gateway address.
    Reserved(&'static str),
    InUse,
    Full,
}

/// The first prefix of length `len` inside `pool` that overlaps none of `taken`.
pub fn pick_subnet(pool: Ipv4Net, len: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    pool.subnets(len)
        .find(|candidate| !taken.iter().any(|t| t.overlaps(candidate)))
}

/// The first host address of a subnet, the default gateway.
pub fn default_gateway(subnet: Ipv4Net) -> Option<Ipv4Addr> {
    if subnet.prefix_len() > 30 {
        return None;
    }
    subnet.nth(1)
}

/// Why a gateway cannot be used in `subnet`, if it cannot.
pub fn check_gateway(subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<(), String> {
    if subnet.prefix_len() > 30 {
        return Err(format!(
            "subnet {subnet} is too small: a bridge network needs at least a /30"
        ));
    }
    if !subnet.contains(gateway) {
        return Err(format!("gateway {gateway} is outside subnet {subnet}"));
    }
    if gateway == subnet.network() || gateway == subnet.broadcast() {
        return Err(format!(
            "gateway {gateway} is the network or broadcast address of {subnet}"
        ));
    }
    Ok(())
}

/// An address for a new endpoint: `want` if given and usable, else the lowest free one.
pub fn allocate(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    used: &BTreeSet<Ipv4Addr>,
    want: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    if let Some(ip) = want {
        if !subnet.contains(ip) {
            return Err(IpamError::OutsideSubnet);
        }
        if ip == subnet.network() {
            return Err(IpamError::Reserved("the network address"));
        }
        if ip == subnet.broadcast() {
            return Err(IpamError::Reserved("the broadcast address"));
        }
        if ip == gateway {
            return Err(IpamError::Reserved("the gateway"));
        }
        if used.contains(&ip) {
            return Err(IpamError::InUse);
        }
        return Ok(ip);
    }
    (1..subnet.size().saturating_sub(1))
        .filter_map(|n| subnet.nth(n))
        .find(|ip| *ip != gateway && !used.contains(ip))
        .ok_or(IpamError::Full)
}

/// The MAC address of an endpoint with address `ip`: locally administered, unicast.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn picks_the_first_free_subnet() {
        let pool = net("10.89.0.0/16");
        assert_eq!(pick_subnet(pool, 24, &[]), Some(net("10.89.0.0/24")));
        let taken = [
            net("10.89.0.0/24"),
            net("10.89.1.128/25"),
            net("10.0.0.0/8").subnets(16).nth(90).unwrap(),
        ];
        assert_eq!(
            pick_subnet(pool, 24, &taken[..2]),
            Some(net("10.89.2.0/24"))
        );
        // a host address inside the pool counts as taken
        assert_eq!(
            pick_subnet(
                net("10.89.0.0/23"),
                24,
                &[net("10.89.0.5/32"), net("10.89.1.0/24")]
            ),
            None
        );
    }

    #[test]
    fn gateways() {
        assert_eq!(default_gateway(net("10.89.3.0/24")), Some(ip("10.89.3.1")));
        assert_eq!(default_gateway(net("10.89.3.0/31")), None);
        assert!(check_gateway(net("10.89.3.0/24"), ip("10.89.3.254")).is_ok());
        assert!(check_gateway(net("10.89.3.0/24"), ip("10.89.4.1"))
            .unwrap_err()
            .contains("outside"));
        assert!(check_gateway(net("10.89.3.0/24"), ip("10.89.3.255"))
            .unwrap_err()
            .contains("broadcast"));
        assert!(check_gateway(net("10.89.3.0/31"), ip("10.89.3.1"))
            .unwrap_err()
            .contains("too small"));
    }

    #[test]
    fn allocates_lowest_free_and_honours_requests() {
        let s = net("10.89.3.0/29");
        let gw = ip("10.89.3.1");
        let mut used = BTreeSet::new();
        assert_eq!(allocate(s, gw, &used, None), Ok(ip("10.89.3.2")));
        used.insert(ip("10.89.3.2"));
        used.insert(ip("10.89.3.4"));
        assert_eq!(allocate(s, gw, &used, None), Ok(ip("10.89.3.3")));
        assert_eq!(
            allocate(s, gw, &used, Some(ip("10.89.3.6"))),
            Ok(ip("10.89.3.6"))
        );
        assert_eq!(
            allocate(s, gw, &used, Some(ip("10.89.3.4"))),
            Err(IpamError::InUse)
        );
        assert_eq!(
            allocate(s, gw, &used, Some(ip("10.89.4.4"))),
            Err(IpamError::OutsideSubnet)
        );
        assert_eq!(
            allocate(s, gw, &used, Some(gw)),
            Err(IpamError::Reserved("the gateway"))
        );
        assert!(matches!(
            allocate(s, gw, &used, Some(ip("10.89.3.7"))),
            Err(IpamError::Reserved(_))
        ));
        for n in 3..=6 {
            used.insert(ip(&format!("10.89.3.{n}")));
        }
        assert_eq!(allocate(s, gw, &used, None), Err(IpamError::Full));
    }

    #[test]
    fn mac_follows_ip() {
        assert_eq!(format_mac(&mac_for(ip("10.88.0.2"))), "02:42:0a:58:00:02");
    }
}
