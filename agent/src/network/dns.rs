//! Embedded DNS: container names on user-defined bridge networks.
//!
//! One responder per user-defined bridge network listens on the network's gateway, UDP port 53
//! (the nft table drops port 53 to the gateway from anywhere but that bridge). [`answer`] is the
//! pure part: given a query and the network's [`Zone`] it decides between an authoritative reply
//! and forwarding. Names answered: container names, the 12-character container id and aliases of
//! the containers connected to the network, case-insensitively, with or without a trailing dot;
//! reverse (`in-addr.arpa`) names inside the network's subnet. An unknown single-label name is
//! NXDOMAIN (it must not leak to the host's resolvers); any other name is forwarded to the host's
//! non-loopback resolvers with a short timeout, SERVFAIL when there are none or none answers.
//! hickory-proto only encodes and decodes messages; the server loop is a few lines of tokio
//! because hickory-server would bring its own runtime model and catalogue for a job this small.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use super::ipnet::Ipv4Net;

/// Time to live of answers: short, since addresses are reused as containers come and go.
pub const TTL: u32 = 60;
/// How long a forwarded query waits for each upstream resolver.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// The names of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    pub subnet: Option<Ipv4Net>,
    /// (lower-case names without trailing dot, address); the first name is the PTR answer.
    pub entries: Vec<(Vec<String>, Ipv4Addr)>,
}

impl Zone {
    fn lookup(&self, name: &str) -> Vec<Ipv4Addr> {
        self.entries
            .iter()
            .filter(|(names, _)| names.iter().any(|n| n == name))
            .map(|(_, ip)| *ip)
            .collect()
    }

    fn reverse(&self, ip: Ipv4Addr) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, a)| *a == ip)
            .and_then(|(names, _)| names.first().map(String::as_str))
    }
}

/// What to do with a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reply(Vec<u8>),
    Forward,
    /// Not a DNS query we can even answer with an error.
    Drop,
}

/// Decides how to answer `query` for `zone`.
pub fn answer(query: &[u8], zone: &Zone) -> Outcome {
    let Ok(msg) = Message::from_vec(query) else {
        return Outcome::Drop;
    };
    if msg.metadata.message_type != MessageType::Query {
        return Outcome::Drop;
    }
    if msg.metadata.op_code != OpCode::Query {
        return reply(&msg, ResponseCode::NotImp, Vec::new());
    }
    let [q] = msg.queries.as_slice() else {
        return reply(&msg, ResponseCode::FormErr, Vec::new());
    };
    if q.query_class() != DNSClass::IN {
        return Outcome::Forward;
    }
    let qname = q.name().clone();
    let ascii = qname.to_ascii().to_ascii_lowercase();
    let name = ascii.trim_end_matches('.');

    if let Some(ip) = arpa_to_ip(name) {
        return match zone.subnet {
            Some(subnet) if subnet.contains(ip) => match (q.query_type(), zone.reverse(ip)) {
                (RecordType::PTR, Some(target)) => match Name::from_ascii(format!("{target}.")) {
                    Ok(target) => {
                        let rec = Record::from_rdata(qname, TTL, RData::PTR(PTR(target)));
                        reply(&msg, ResponseCode::NoError, vec![rec])
                    }
                    Err(_) => reply(&msg, ResponseCode::ServFail, Vec::new()),
                },
                (_, Some(_)) => reply(&msg, ResponseCode::NoError, Vec::new()),
                (_, None) => reply(&msg, ResponseCode::NXDomain, Vec::new()),
            },
            _ => Outcome::Forward,
        };
    }

    let found = zone.lookup(name);
    if found.is_empty() {
        if name.is_empty() || name.contains('.') {
            return Outcome::Forward;
        }
        return reply(&msg, ResponseCode::NXDomain, Vec::new());
    }
    let records = if q.query_type() == RecordType::A {
        found
            .into_iter()
            .map(|ip| Record::from_rdata(qname.clone(), TTL, RData::A(A(ip))))
            .collect()
    } else {
        Vec::new() // the name exists but has no record of this type (AAAA, MX...)
    };
    reply(&msg, ResponseCode::NoError, records)
}

/// A SERVFAIL answer to `query` (forwarding failed), if it parses.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    match reply(&msg, ResponseCode::ServFail, Vec::new()) {
        Outcome::Reply(bytes) => Some(bytes),
        _ => None,
    }
}

fn reply(query: &Message, code: ResponseCode, answers: Vec<Record>) -> Outcome {
    let mut out = Message::response(query.metadata.id, query.metadata.op_code);
    out.metadata.recursion_desired = query.metadata.recursion_desired;
    out.metadata.recursion_available = true;
    out.metadata.authoritative = code != ResponseCode::ServFail;
    out.metadata.response_code = code;
    out.queries = query.queries.clone();
    out.answers = answers;
    match out.to_vec() {
        Ok(bytes) => Outcome::Reply(bytes),
        Err(_) => Outcome::Drop,
    }
}

/// `4.3.2.1.in-addr.arpa` -> 1.2.3.4.
fn arpa_to_ip(name: &str) -> Option<Ipv4Addr> {
    let rev = name.strip_suffix(".in-addr.arpa")?;
    let octets: Vec<u8> = rev
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<_>>()?;
    let [d, c, b, a] = octets.as_slice() else {
        return None;
    };
    Some(Ipv4Addr::new(*a, *b, *c, *d))
}

/// Serves one network until the task is aborted. `zone` is called for every query so answers
/// follow connects and disconnects immediately.
pub async fn serve<Z>(socket: UdpSocket, zone: Z, upstreams: Vec<SocketAddr>)
where
    Z: Fn() -> Zone + Send + Sync + 'static,
{
    let socket = Arc::new(socket);
    let upstreams = Arc::new(upstreams);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "embedded dns: receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        match answer(&query, &zone()) {
            Outcome::Reply(bytes) => {
                let _ = socket.send_to(&bytes, peer).await;
            }
            Outcome::Drop => {}
            Outcome::Forward => {
                let socket = socket.clone();
                let upstreams = upstreams.clone();
                tokio::spawn(async move {
                    let bytes = match forward(&query, &upstreams).await {
                        Some(bytes) => bytes,
                        None => match servfail(&query) {
                            Some(b) => b,
                            None => return,
                        },
                    };
                    let _ = socket.send_to(&bytes, peer).await;
                });
            }
        }
    }
}

/// Asks each upstream in turn; the first answer with the query's id wins.
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    if query.len() < 2 {
        return None;
    }
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.send_to(query, upstream).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        let got = tokio::time::timeout(FORWARD_TIMEOUT, async {
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.ok()?;
                if from == *upstream && n >= 2 && buf[..2] == query[..2] {
                    return Some(buf[..n].to_vec());
                }
            }
        })
        .await;
        match got {
            Ok(Some(bytes)) => return Some(bytes),
            _ => tracing::debug!(%upstream, "embedded dns: upstream did not answer"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn zone() -> Zone {
        Zone {
            subnet: Some("10.89.0.0/24".parse().unwrap()),
            entries: vec![
                (
                    vec!["web".into(), "0123456789ab".into(), "www".into()],
                    "10.89.0.2".parse().unwrap(),
                ),
                (
                    vec!["db".into(), "db.internal".into()],
                    "10.89.0.3".parse().unwrap(),
                ),
                (vec!["www".into()], "10.89.0.4".parse().unwrap()),
            ],
        }
    }

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.to_vec().unwrap()
    }

    fn parse(o: Outcome) -> Message {
        match o {
            Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(A(ip)) => Some(ip),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn answers_names_ids_and_aliases_case_insensitively() {
        for name in ["web", "WEB.", "0123456789ab", "db.internal."] {
            let m = parse(answer(&query(name, RecordType::A), &zone()));
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(m.metadata.id, 4242);
            assert!(m.metadata.authoritative);
            assert_eq!(m.answers.len(), 1, "{name}");
        }
        let m = parse(answer(&query("db", RecordType::A), &zone()));
        assert_eq!(
            a_records(&m),
            vec!["10.89.0.3".parse::<Ipv4Addr>().unwrap()]
        );
        // an alias shared by two containers answers both
        let m = parse(answer(&query("www", RecordType::A), &zone()));
        assert_eq!(a_records(&m).len(), 2);
    }

    #[test]
    fn known_name_without_such_record_is_nodata() {
        let m = parse(answer(&query("web", RecordType::AAAA), &zone()));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn unknown_single_label_is_nxdomain_and_never_forwarded() {
        let m = parse(answer(&query("nope", RecordType::A), &zone()));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = parse(answer(&query("nope.", RecordType::AAAA), &zone()));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn other_names_are_forwarded() {
        assert_eq!(
            answer(&query("example.com.", RecordType::A), &zone()),
            Outcome::Forward
        );
        assert_eq!(
            answer(
                &query("1.1.168.192.in-addr.arpa.", RecordType::PTR),
                &zone()
            ),
            Outcome::Forward
        );
    }

    #[test]
    fn reverse_lookups_inside_the_subnet_are_local() {
        let m = parse(answer(
            &query("2.0.89.10.in-addr.arpa.", RecordType::PTR),
            &zone(),
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(matches!(&m.answers[0].data, RData::PTR(PTR(n)) if n.to_ascii() == "web."));
        let m = parse(answer(
            &query("99.0.89.10.in-addr.arpa.", RecordType::PTR),
            &zone(),
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn garbage_and_responses_are_dropped_servfail_keeps_the_id() {
        assert_eq!(answer(b"\x01\x02", &zone()), Outcome::Drop);
        let mut resp = Message::from_vec(&query("web", RecordType::A)).unwrap();
        resp.metadata.message_type = MessageType::Response;
        assert_eq!(answer(&resp.to_vec().unwrap(), &zone()), Outcome::Drop);
        let sf =
            Message::from_vec(&servfail(&query("example.com", RecordType::A)).unwrap()).unwrap();
        assert_eq!(sf.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(sf.metadata.id, 4242);
    }

    #[tokio::test]
    async fn serves_over_udp_on_loopback() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let task = tokio::spawn(serve(sock, zone, Vec::new()));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for (name, code) in [
            ("web", ResponseCode::NoError),
            ("example.com", ResponseCode::ServFail),
        ] {
            client
                .send_to(&query(name, RecordType::A), addr)
                .await
                .unwrap();
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let m = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(m.metadata.response_code, code, "{name}");
        }
        task.abort();
    }
}
