//! The connection to the node agent: parsing `--host`/`FLOTILLA_HOST` (`unix:///path` or
//! `tcp://HOST:PORT`), dialing it with tonic (a unix socket through a custom connector), typed
//! clients for each service, and turning gRPC statuses into the one-line errors the CLI prints.
//! Invariant: a failure to reach the agent always reads "cannot connect to the flotilla agent at
//! <host>: <cause>. Is it running? ..." so users are told what to do.

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

/// A connection to one agent.
#[derive(Clone)]
pub struct Agent {
    channel: Channel,
    /// The address as the user wrote it, for messages.
    pub host: String,
}

const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The message when the agent cannot be reached.
pub fn unreachable_message(host: &str, cause: &str) -> String {
    let mut msg = format!("cannot connect to the flotilla agent at {host}: {cause}.");
    if cause.contains("Permission denied") {
        msg.push_str(" The socket belongs to root: run as root or with sudo.");
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
    /// Dials the agent; fails with the "is it running" message when it is not reachable.
    pub async fn connect(host: &str) -> anyhow::Result<Agent> {
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
            Host::Tcp(addr) => {
                let ep = Endpoint::from_shared(format!("http://{addr}"))?
                    .connect_timeout(Duration::from_secs(5));
                ep.connect().await
            }
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
    if s.code() == tonic::Code::Unavailable {
        if let Some(src) = s.source() {
            return anyhow::anyhow!(unreachable_message(host, &root_cause(src)));
        }
    }
    let message = if s.code() == tonic::Code::Unimplemented {
        format!("the agent at {host} does not support this command yet (it answered UNIMPLEMENTED); upgrade the agent")
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
        let e = Agent::connect(host).await.err().expect("no agent there");
        assert_eq!(
            e.to_string(),
            format!("cannot connect to the flotilla agent at {host}: No such file or directory (os error 2). Is it running? Start it with: flotilla-agent serve")
        );
    }
}
