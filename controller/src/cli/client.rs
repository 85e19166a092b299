//! The connection to the node agent: parsing `--host`/`FLOTILLA_HOST` (`unix:///path` or
//! `tcp://HOST:PORT`), dialing it with tonic (a unix socket through a custom connector, TCP in
//! plain text or mutual TLS), typed clients for each service, and turning gRPC statuses into the
//! one-line errors the CLI prints.
//!
//! TLS on `tcp://` hosts ([`choose_tls`]), docker-like: `--tlscacert/--tlscert/--tlskey` give the
//! files; `--tls` uses the cluster context's CA and admin certificate; `--tls=false` forces plain
//! text. Without any of them a loopback address is dialed in plain text (the only place an agent
//! serves it, with `--insecure-tcp`) and any other address with the context's material (an agent
//! serves TCP beyond loopback only as a cluster member, in mutual TLS). The agent is verified as
//! `worker.flotilla` (every agent holds a worker certificate) against the CA, whatever address was
//! dialed.
//!
//! Invariant: a failure to reach the agent always reads "cannot connect to the flotilla agent at
//! <host>: <cause>. <what to do>" so users are told what to do; TLS failures say which side's
//! certificate was the problem ([`unreachable_message`]).

use std::path::PathBuf;
use std::time::Duration;

use flotilla_proto::agent::v1::{
    containers_client::ContainersClient, images_client::ImagesClient,
    networks_client::NetworksClient, system_client::SystemClient, volumes_client::VolumesClient,
    DEFAULT_SOCKET,
};
use tonic::transport::{Channel, Endpoint};

use super::parse::ParseError;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Unix(PathBuf),
    /// `host:port`, as given (IPv6 hosts in brackets).
    Tcp(String),
}

/// The default `--host`.
pub fn default_host() -> String {
    format!("unix://{DEFAULT_SOCKET}")
}

/// `unix:///abs/path`, a bare absolute path, or `tcp://HOST:PORT`.
pub fn parse_host(s: &str) -> Result<Host, ParseError> {
    let bad = |why: &str| {
        Err(ParseError(format!(
            "invalid host {s:?}: {why} (expected unix:///path/to/agent.sock or tcp://HOST:PORT)"
        )))
    };
    if let Some(p) = s.strip_prefix("unix://") {
        if !p.starts_with('/') {
            return bad("the socket path must be absolute");
        }
        return Ok(Host::Unix(PathBuf::from(p)));
    }
    if s.starts_with('/') {
        return Ok(Host::Unix(PathBuf::from(s)));
    }
    if let Some(a) = s.strip_prefix("tcp://") {
        let a = a.trim_end_matches('/');
        let (h, port) = match a.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (h, p),
            _ => return bad("missing port"),
        };
        if h.contains(':') && !(h.starts_with('[') && h.ends_with(']')) {
            return bad("write IPv6 addresses in brackets, e.g. tcp://[::1]:2377");
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return bad("the port must be a number 1-65535"),
        }
        if a.contains('/') {
            return bad("unexpected path after the port");
        }
        return Ok(Host::Tcp(a.to_string()));
    }
    if let Some((scheme, _)) = s.split_once("://") {
        return bad(&format!("unsupported scheme {scheme:?}"));
    }
    bad("no scheme")
}

/// The TLS flags of the command line, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFlags {
    /// `--tls` / `--tls=BOOL`.
    pub tls: Option<bool>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How to dial a `tcp://` agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsChoice {
    Plain,
    /// Mutual TLS with these files (no client certificate when `client` is None: the agent
    /// then refuses every call, with a message that says so).
    Files {
        ca: PathBuf,
        client: Option<(PathBuf, PathBuf)>,
    },
    /// Mutual TLS with the cluster context's CA and admin certificate.
    Context,
}

/// Whether `addr` (`host:port`) names a loopback address.
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Picks plain text or TLS for a `tcp://` agent at `addr` (see the module documentation).
pub fn choose_tls(addr: &str, flags: &TlsFlags) -> Result<TlsChoice, ParseError> {
    let files = flags.ca.is_some() || flags.cert.is_some() || flags.key.is_some();
    if flags.tls == Some(false) {
        if files {
            return Err(ParseError(
                "--tls=false contradicts --tlscacert/--tlscert/--tlskey".into(),
            ));
        }
        return Ok(TlsChoice::Plain);
    }
    if files {
        let client = match (&flags.cert, &flags.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ParseError(
                    "--tlscert needs --tlskey (the certificate's private key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ParseError(
                    "--tlskey needs --tlscert (the certificate of that key)".into(),
                ))
            }
        };
        let Some(ca) = flags.ca.clone() else {
            return Err(ParseError(
                "--tlscert/--tlskey need --tlscacert: the cluster CA certificate that signed the agent's certificate".into(),
            ));
        };
        return Ok(TlsChoice::Files { ca, client });
    }
    if flags.tls == Some(true) || !is_loopback(addr) {
        return Ok(TlsChoice::Context);
    }
    Ok(TlsChoice::Plain)
}

/// The PEM material of a TLS choice.
struct TlsMaterial {
    ca: String,
    /// Certificate and key.
    client: Option<(String, String)>,
    /// Where it came from, for messages.
    source: String,
}

/// The CA, certificate and key (PEM) of a TLS choice.
fn tls_material(
    addr: &str,
    choice: &TlsChoice,
    context: Option<&str>,
) -> anyhow::Result<TlsMaterial> {
    use anyhow::Context as _;
    let read = |p: &PathBuf, what: &str| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {what} {}", p.display()))
    };
    match choice {
        TlsChoice::Plain => unreachable!("plain text has no TLS material"),
        TlsChoice::Files { ca, client } => {
            let ca_pem = read(ca, "--tlscacert")?;
            let client = match client {
                Some((c, k)) => Some((read(c, "--tlscert")?, read(k, "--tlskey")?)),
                None => None,
            };
            Ok(TlsMaterial {
                ca: ca_pem,
                client,
                source: format!("--tlscacert {}", ca.display()),
            })
        }
        TlsChoice::Context => {
            let dir = super::context::config_dir()?;
            let ctx = super::context::resolve(&dir, context).map_err(|e| {
                anyhow::anyhow!(
                    "tcp://{addr} needs mutual TLS ({e}): give --tlscacert, --tlscert and --tlskey, or a cluster context with an admin certificate (`flotilla context create`); a loopback agent with --insecure-tcp takes --tls=false"
                )
            })?;
            Ok(TlsMaterial {
                ca: ctx.ca_pem,
                client: Some((ctx.cert_pem, ctx.key_pem)),
                source: format!("context {}", ctx.meta.name),
            })
        }
    }
}

/// A connection to one agent.
#[derive(Clone)]
pub struct Agent {
    channel: Channel,
    /// The address as the user wrote it, for messages.
    pub host: String,
}

const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The message when the agent cannot be reached: the cause, then what to do about it.
pub fn unreachable_message(host: &str, cause: &str) -> String {
    let mut msg = format!("cannot connect to the flotilla agent at {host}: {cause}.");
    let lower = cause.to_ascii_lowercase();
    if cause.contains("Permission denied") {
        msg.push_str(" The socket belongs to root: run as root or with sudo.");
    } else if lower.contains("unknownissuer") || lower.contains("badsignature") {
        msg.push_str(" The agent's certificate was not issued by the CA the CLI trusts: use the CA of the agent's cluster (--tlscacert or the cluster's context).");
    } else if lower.contains("not valid for name") {
        msg.push_str(" The server's certificate is not a flotilla agent's (worker.flotilla).");
    } else if lower.contains("received fatal alert") {
        msg.push_str(" The agent refused the client certificate: use an admin certificate of the agent's cluster (--tlscert/--tlskey or the cluster's context).");
    } else if lower.contains("tls") || lower.contains("handshake") {
        msg.push_str(" Check --tlscacert/--tlscert/--tlskey or the cluster context.");
    } else if host.starts_with("tcp://")
        && !lower.contains("refused")
        && !lower.contains("timed out")
    {
        // A plain-text client to a TLS port sees the connection closed or a protocol error.
        msg.push_str(" If the agent serves mutual TLS (a cluster member does on TCP), connect with --tls (the cluster context's admin certificate) or --tlscacert/--tlscert/--tlskey.");
    } else {
        msg.push_str(" Is it running? Start it with: flotilla-agent serve");
    }
    msg
}

/// The innermost error's text (tonic wraps the io error that says what happened).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl Agent {
    /// Dials the agent (TLS for `tcp://` hosts as [`choose_tls`] says; `context` is the
    /// `--context` flag); fails with the "is it running" message when it is not reachable.
    pub async fn connect(
        host: &str,
        tls: &TlsFlags,
        context: Option<&str>,
    ) -> anyhow::Result<Agent> {
        let parsed = parse_host(host)?;
        tracing::debug!(host, "connecting to the agent");
        let result = match parsed {
            Host::Unix(path) => {
                let ep = Endpoint::try_from("http://[::]:50051")?;
                ep.connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
            }
            Host::Tcp(addr) => match choose_tls(&addr, tls)? {
                TlsChoice::Plain => {
                    let ep = Endpoint::from_shared(format!("http://{addr}"))?
                        .connect_timeout(Duration::from_secs(5));
                    ep.connect().await
                }
                choice => {
                    let TlsMaterial { ca, client, source } = tls_material(&addr, &choice, context)?;
                    let client = client.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
                    let cfg = flotilla_pki::client_config(&ca, client).map_err(|e| {
                        anyhow::anyhow!("the TLS material ({source}) is not usable: {e}")
                    })?;
                    tracing::debug!(host, %source, "dialing the agent with mutual TLS");
                    flotilla_pki::connect(&addr, cfg, flotilla_pki::WORKER_SERVER_NAME).await
                }
            },
        };
        match result {
            Ok(channel) => Ok(Agent {
                channel,
                host: host.to_string(),
            }),
            Err(e) => Err(anyhow::anyhow!(unreachable_message(host, &root_cause(&e)))),
        }
    }

    pub fn system(&self) -> SystemClient<Channel> {
        SystemClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    pub fn volumes(&self) -> VolumesClient<Channel> {
        VolumesClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    pub fn networks(&self) -> NetworksClient<Channel> {
        NetworksClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }
    pub fn membership(
        &self,
    ) -> flotilla_proto::agent::v1::cluster_membership_client::ClusterMembershipClient<Channel>
    {
        flotilla_proto::agent::v1::cluster_membership_client::ClusterMembershipClient::new(
            self.channel.clone(),
        )
    }

    /// Turns a failed call into the error the CLI prints: the agent's message as is, or, when
    /// the call never reached the agent, the "is it running" message.
    pub fn err(&self, s: tonic::Status) -> anyhow::Error {
        api_error(&self.host, s)
    }
}

/// A status from the agent, kept typed so callers can tell NOT_FOUND from the rest.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: tonic::Code,
    pub message: String,
}

/// See `Agent::err`.
pub fn api_error(host: &str, s: tonic::Status) -> anyhow::Error {
    use std::error::Error as _;
    // A call that failed in the transport (UNAVAILABLE, or UNKNOWN "transport error" when the
    // connection broke under it) never reached the agent.
    if let Some(src) = s.source() {
        if s.code() == tonic::Code::Unavailable
            || src.downcast_ref::<tonic::transport::Error>().is_some()
        {
            return anyhow::anyhow!(unreachable_message(host, &root_cause(src)));
        }
    }
    let message = if s.code() == tonic::Code::Unimplemented {
        format!("the agent at {host} does not support this command yet (it answered UNIMPLEMENTED); upgrade the agent")
    } else if s.code() == tonic::Code::Unauthenticated && host.starts_with("tcp://") {
        format!(
            "{} (give --tlscert and --tlskey, or use a cluster context's admin certificate)",
            s.message()
        )
    } else if s.message().is_empty() {
        s.code().description().to_string()
    } else {
        s.message().to_string()
    };
    ApiError {
        code: s.code(),
        message,
    }
    .into()
}

/// Whether an error is the agent's NOT_FOUND.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiError>()
        .is_some_and(|a| a.code == tonic::Code::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host("unix:///run/flotilla/agent.sock").unwrap(),
            Host::Unix("/run/flotilla/agent.sock".into())
        );
        assert_eq!(
            parse_host(&default_host()).unwrap(),
            Host::Unix(DEFAULT_SOCKET.into())
        );
        assert_eq!(
            parse_host("/tmp/a.sock").unwrap(),
            Host::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            parse_host("tcp://127.0.0.1:2377").unwrap(),
            Host::Tcp("127.0.0.1:2377".into())
        );
        assert_eq!(
            parse_host("tcp://10.1.2.3:2377/").unwrap(),
            Host::Tcp("10.1.2.3:2377".into())
        );
        assert_eq!(
            parse_host("tcp://[::1]:2377").unwrap(),
            Host::Tcp("[::1]:2377".into())
        );
        assert_eq!(
            parse_host("tcp://node1:2377").unwrap(),
            Host::Tcp("node1:2377".into())
        );
        let e = |s| parse_host(s).unwrap_err().0;
        assert!(e("unix://rel.sock").contains("must be absolute"));
        assert!(e("tcp://127.0.0.1").contains("missing port"));
        assert!(e("tcp://:2377").contains("missing port"));
        assert!(e("tcp://h:0").contains("1-65535"));
        assert!(e("tcp://h:99999").contains("1-65535"));
        assert!(e("tcp://::1:2377").contains("brackets"));
        assert!(e("tcp://h:1/x").contains("1-65535"));
        assert!(e("http://h:1").contains("unsupported scheme \"http\""));
        assert!(e("agent.sock").contains("no scheme"));
    }

    #[test]
    fn messages() {
        assert_eq!(
            unreachable_message("unix:///x.sock", "No such file or directory (os error 2)"),
            "cannot connect to the flotilla agent at unix:///x.sock: No such file or directory (os error 2). Is it running? Start it with: flotilla-agent serve"
        );
        assert!(unreachable_message("u", "Permission denied (os error 13)").contains("sudo"));
        let e = api_error(
            "h",
            tonic::Status::not_found("no such container: wbe (did you mean web?)"),
        );
        assert_eq!(e.to_string(), "no such container: wbe (did you mean web?)");
        assert!(is_not_found(&e));
        let e = api_error("unix:///a.sock", tonic::Status::unimplemented(""));
        assert_eq!(
            e.to_string(),
            "the agent at unix:///a.sock does not support this command yet (it answered UNIMPLEMENTED); upgrade the agent"
        );
        let e = api_error("h", tonic::Status::new(tonic::Code::AlreadyExists, ""));
        assert!(!is_not_found(&e));
        assert!(!e.to_string().is_empty());
    }

    #[tokio::test]
    async fn absent_socket_says_is_it_running() {
        let host = "unix:///nonexistent-dir-flotilla/agent.sock";
        let e = Agent::connect(host, &TlsFlags::default(), None)
            .await
            .err()
            .expect("no agent there");
        assert_eq!(
            e.to_string(),
            format!("cannot connect to the flotilla agent at {host}: No such file or directory (os error 2). Is it running? Start it with: flotilla-agent serve")
        );
    }

    #[test]
    fn tls_choice() {
        let p = |s: &str| Some(PathBuf::from(s));
        let none = TlsFlags::default();
        // Loopback: plain unless asked; elsewhere: the context's material.
        assert_eq!(
            choose_tls("127.0.0.1:2377", &none).unwrap(),
            TlsChoice::Plain
        );
        assert_eq!(choose_tls("[::1]:2377", &none).unwrap(), TlsChoice::Plain);
        assert_eq!(
            choose_tls("localhost:2377", &none).unwrap(),
            TlsChoice::Plain
        );
        assert_eq!(
            choose_tls("10.0.0.5:2377", &none).unwrap(),
            TlsChoice::Context
        );
        assert_eq!(choose_tls("node1:2377", &none).unwrap(), TlsChoice::Context);
        let tls = |v| TlsFlags {
            tls: Some(v),
            ..Default::default()
        };
        assert_eq!(
            choose_tls("127.0.0.1:1", &tls(true)).unwrap(),
            TlsChoice::Context
        );
        assert_eq!(
            choose_tls("10.0.0.5:1", &tls(false)).unwrap(),
            TlsChoice::Plain
        );
        // Files.
        let files = TlsFlags {
            ca: p("ca.pem"),
            cert: p("c.pem"),
            key: p("k.pem"),
            ..Default::default()
        };
        assert_eq!(
            choose_tls("127.0.0.1:1", &files).unwrap(),
            TlsChoice::Files {
                ca: "ca.pem".into(),
                client: Some(("c.pem".into(), "k.pem".into()))
            }
        );
        let ca_only = TlsFlags {
            ca: p("ca.pem"),
            ..Default::default()
        };
        assert_eq!(
            choose_tls("10.0.0.5:1", &ca_only).unwrap(),
            TlsChoice::Files {
                ca: "ca.pem".into(),
                client: None
            }
        );
        let e = |f: TlsFlags| choose_tls("10.0.0.5:1", &f).unwrap_err().0;
        assert!(e(TlsFlags {
            cert: p("c"),
            ca: p("ca"),
            ..Default::default()
        })
        .contains("--tlscert needs --tlskey"));
        assert!(e(TlsFlags {
            key: p("k"),
            ca: p("ca"),
            ..Default::default()
        })
        .contains("--tlskey needs --tlscert"));
        assert!(e(TlsFlags {
            cert: p("c"),
            key: p("k"),
            ..Default::default()
        })
        .contains("need --tlscacert"));
        assert!(e(TlsFlags {
            tls: Some(false),
            ..files
        })
        .contains("contradicts"));
    }

    #[test]
    fn tls_failures_say_what_to_do() {
        let h = "tcp://10.0.0.5:2377";
        let m = unreachable_message(h, "TLS handshake with the server at 10.0.0.5:2377 failed: invalid peer certificate: UnknownIssuer");
        assert!(m.contains("not issued by the CA the CLI trusts"), "{m}");
        let m = unreachable_message(h, "the server at 10.0.0.5:2377 ended the TLS session after the handshake: received fatal alert: DecryptError");
        assert!(m.contains("refused the client certificate"), "{m}");
        let m = unreachable_message(h, "connection closed before message completed");
        assert!(m.contains("connect with --tls"), "{m}");
        let m = unreachable_message(h, "Connection refused (os error 111)");
        assert!(m.contains("Is it running?"), "{m}");
        let e = api_error(
            h,
            tonic::Status::unauthenticated(
                "no client certificate: this port requires a flotilla node or admin certificate",
            ),
        );
        assert!(e.to_string().contains("give --tlscert and --tlskey"), "{e}");
    }
}
