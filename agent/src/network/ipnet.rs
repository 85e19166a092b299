//! IPv4 prefixes (`10.88.0.0/16`): parsing, containment, overlap and enumeration.
//!
//! Pure value type; no I/O. A prefix is always stored normalized (host bits zero): parsing a
//! CIDR with host bits set is refused with the normalized form in the message, because a user who
//! typed `10.89.0.1/24` as a subnet most likely meant a gateway.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix_len: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Ipv4Net {
    /// The prefix `addr/prefix_len`, refusing host bits and lengths above 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, CidrError> {
        if prefix_len > 32 {
            return Err(CidrError(format!(
                "prefix length {prefix_len} is larger than 32"
            )));
        }
        let net = Ipv4Net::truncate(addr, prefix_len);
        if net.addr != addr {
            return Err(CidrError(format!(
                "host bits are set (did you mean {net}?)"
            )));
        }
        Ok(net)
    }

    /// The prefix of length `prefix_len` that contains `addr` (host bits dropped).
    pub fn truncate(addr: Ipv4Addr, prefix_len: u8) -> Self {
        let prefix_len = prefix_len.min(32);
        Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix_len)),
            prefix_len,
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix_len))
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix_len) == u32::from(self.addr)
    }

    /// True when the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The `n`th address of the prefix (0 is the network address), if inside.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        if n >= self.size() {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.addr) + n as u32))
    }

    /// The sub-prefixes of length `len` in address order (empty if `len` is shorter than ours).
    pub fn subnets(&self, len: u8) -> impl Iterator<Item = Ipv4Net> {
        let base = u32::from(self.addr);
        let count: u64 = if len < self.prefix_len || len > 32 {
            0
        } else {
            1u64 << (len - self.prefix_len)
        };
        let step: u64 = if len > 32 { 0 } else { 1u64 << (32 - len) };
        (0..count).map(move |i| Ipv4Net {
            addr: Ipv4Addr::from((u64::from(base) + i * step) as u32),
            prefix_len: len,
        })
    }
}

fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    }
}

impl FromStr for Ipv4Net {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| CidrError("expected ADDRESS/PREFIX, e.g. 10.89.3.0/24".into()))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| CidrError(format!("{ip:?} is not an IPv4 address")))?;
        let len: u8 = len
            .parse()
            .map_err(|_| CidrError(format!("{len:?} is not a prefix length (0-32)")))?;
        Ipv4Net::new(ip, len)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = CidrError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(n: Ipv4Net) -> String {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(net("10.88.0.0/16").to_string(), "10.88.0.0/16");
        assert_eq!(net("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(net("10.0.0.7/32").broadcast(), Ipv4Addr::new(10, 0, 0, 7));
    }

    #[test]
    fn refuses_bad_cidrs_with_a_reason() {
        let e = "10.89.0.1/24".parse::<Ipv4Net>().unwrap_err();
        assert!(e.0.contains("did you mean 10.89.0.0/24"), "{e}");
        assert!("10.89.0.0"
            .parse::<Ipv4Net>()
            .unwrap_err()
            .0
            .contains("ADDRESS/PREFIX"));
        assert!("10.89.0.0/33"
            .parse::<Ipv4Net>()
            .unwrap_err()
            .0
            .contains("33"));
        assert!("10.889.0.0/16"
            .parse::<Ipv4Net>()
            .unwrap_err()
            .0
            .contains("IPv4"));
        assert!("10.89.0.0/x".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn containment_and_overlap() {
        let a = net("10.89.0.0/16");
        assert!(a.contains(Ipv4Addr::new(10, 89, 255, 255)));
        assert!(!a.contains(Ipv4Addr::new(10, 90, 0, 0)));
        assert!(a.overlaps(&net("10.89.4.0/24")));
        assert!(net("10.89.4.0/24").overlaps(&a));
        assert!(!a.overlaps(&net("10.88.0.0/16")));
        assert_eq!(a.broadcast(), Ipv4Addr::new(10, 89, 255, 255));
    }

    #[test]
    fn enumerates_subnets_and_hosts() {
        let subs: Vec<_> = net("10.89.0.0/22").subnets(24).collect();
        assert_eq!(subs.len(), 4);
        assert_eq!(subs[3], net("10.89.3.0/24"));
        assert_eq!(net("10.89.0.0/24").subnets(16).count(), 0);
        assert_eq!(
            net("10.89.0.0/24").nth(1),
            Some(Ipv4Addr::new(10, 89, 0, 1))
        );
        assert_eq!(net("10.89.0.0/24").nth(256), None);
    }

    #[test]
    fn serde_as_string() {
        let j = serde_json::to_string(&net("10.1.0.0/16")).unwrap();
        assert_eq!(j, "\"10.1.0.0/16\"");
        assert!(serde_json::from_str::<Ipv4Net>("\"10.1.0.1/16\"").is_err());
    }
}
