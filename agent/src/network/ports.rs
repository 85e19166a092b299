//! Host port reservations for published ports.
//!
//! A published port is reserved by binding a socket on the host address and port and keeping it
//! open for as long as the port is published: the kernel then refuses the port to every other
//! process (and reports it taken when someone already has it), which is the only reliable way to
//! detect a conflict with software outside flotilla. TCP sockets are bound but never listen (no
//! `SO_REUSEADDR`), so they take no connections; traffic reaches the container through the DNAT
//! rules of `nft`. Conflicts between containers of this agent are found first, from the records,
//! so the message can name the other container.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::model::{PortSpec, Proto};

/// An open socket that holds a host port.
#[derive(Debug)]
pub enum Reservation {
    Tcp(tokio::net::TcpSocket),
    Udp(std::net::UdpSocket),
}

/// True when two published ports cannot both exist (same protocol and port, and the addresses
/// are equal or one of them is the wildcard).
pub fn clash(a: &PortSpec, b: &PortSpec) -> bool {
    a.proto == b.proto
        && a.host_port == b.host_port
        && a.host_port != 0
        && (a.host_ip.is_none()
            || b.host_ip.is_none()
            || a.bind_ip().is_unspecified()
            || b.bind_ip().is_unspecified()
            || a.host_ip == b.host_ip)
}

/// Binds the host side of `spec`; with port 0 the kernel picks a free port. Returns the
/// reservation and the port it holds.
pub fn reserve(spec: &PortSpec) -> io::Result<(Reservation, u16)> {
    let addr = SocketAddr::V4(SocketAddrV4::new(spec.bind_ip(), spec.host_port));
    match spec.proto {
        Proto::Tcp => {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(addr)?;
            let port = sock.local_addr()?.port();
            Ok((Reservation::Tcp(sock), port))
        }
        Proto::Udp => {
            let sock = std::net::UdpSocket::bind(addr)?;
            let port = sock.local_addr()?.port();
            Ok((Reservation::Udp(sock), port))
        }
    }
}

/// The address shown in messages for a spec (`0.0.0.0` for all addresses).
pub fn shown_ip(spec: &PortSpec) -> Ipv4Addr {
    spec.bind_ip()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ip: Option<&str>, port: u16, proto: Proto) -> PortSpec {
        PortSpec {
            host_ip: ip.map(|s| s.parse().unwrap()),
            host_port: port,
            container_port: 80,
            proto,
        }
    }

    #[test]
    fn clashes() {
        let any = spec(None, 8080, Proto::Tcp);
        assert!(clash(&any, &spec(Some("127.0.0.1"), 8080, Proto::Tcp)));
        assert!(clash(
            &spec(Some("0.0.0.0"), 8080, Proto::Tcp),
            &spec(Some("10.0.0.1"), 8080, Proto::Tcp)
        ));
        assert!(!clash(&any, &spec(None, 8080, Proto::Udp)));
        assert!(!clash(&any, &spec(None, 8081, Proto::Tcp)));
        assert!(!clash(
            &spec(Some("127.0.0.1"), 8080, Proto::Tcp),
            &spec(Some("127.0.0.2"), 8080, Proto::Tcp)
        ));
        assert!(!clash(
            &spec(None, 0, Proto::Tcp),
            &spec(None, 0, Proto::Tcp)
        ));
    }

    #[tokio::test]
    async fn a_reservation_holds_the_port_against_others() {
        let (held, port) = reserve(&spec(Some("127.0.0.1"), 0, Proto::Tcp)).unwrap();
        assert_ne!(port, 0);
        let again = reserve(&spec(Some("127.0.0.1"), port, Proto::Tcp));
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::AddrInUse);
        // a plain listener of another program is refused too
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
        drop(held);
        let (_u, uport) = reserve(&spec(Some("127.0.0.1"), 0, Proto::Udp)).unwrap();
        assert!(std::net::UdpSocket::bind(("127.0.0.1", uport)).is_err());
    }
}
