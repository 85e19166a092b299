//! mTLS plumbing between rustls and tonic: client channels that dial an address but verify the
//! server as `manager.flotilla`, and a server-side stream of accepted TLS connections for
//! `Server::builder().serve_with_incoming(...)`.
//!
//! Invariants: handshakes on the server run concurrently, one task per connection, each bounded
//! by [`HANDSHAKE_TIMEOUT`] and together by a cap on pending handshakes, so a slow or hostile
//! client delays no one else; a failed handshake is logged and skipped, never ends the stream.
//! The stream ends (and the listener closes) when the server drops it. Client channels are lazy:
//! nothing is dialed before the first call, and a dropped connection is redialed by tonic.
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::Uri;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use flotilla_proto::control::v1::node_ca_client::NodeCaClient;
use flotilla_proto::control::v1::GetRootCaRequest;

use super::root::single_cert_der;
use super::{
    bootstrap_client_config, der_digest, CaError, JoinToken, MtlsConnectInfo, MANAGER_SERVER_NAME,
};

/// Limit on TCP connect plus TLS handshake when dialing.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Limit on a TLS handshake a server accepts.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once on one listener; more connections wait in the backlog.
const MAX_PENDING_HANDSHAKES: usize = 256;
/// Limit on the whole root CA fetch of a joining node.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A lazy gRPC channel to `addr` (`host:port`) over TLS with `cfg`, verifying the server as
/// [`MANAGER_SERVER_NAME`]. An unusable address shows as an error of the first call.
pub fn channel(addr: &str, cfg: Arc<rustls::ClientConfig>) -> Channel {
    endpoint(MANAGER_SERVER_NAME).connect_with_connector_lazy(dialer(
        addr,
        cfg,
        MANAGER_SERVER_NAME,
    ))
}

/// A gRPC channel to `addr` over TLS with `cfg`, verifying the server as `server_name` (e.g.
/// [`super::WORKER_SERVER_NAME`] for an agent's TCP API), connected before it returns: a wrong
/// address, a refused handshake, a refused client certificate or a server that does not speak
/// TLS is this call's error, with what happened in its message.
///
/// The refused client certificate needs care: in TLS 1.3 the client's handshake is over before
/// the server has checked the client certificate, so a refusal only arrives as an alert on the
/// client's first read, which hyper would report as a cancelled or broken call (or not at all).
/// So this waits for the server's first bytes after the handshake (an HTTP/2 server sends its
/// SETTINGS frame at once) and hands them on to the HTTP/2 client ahead of the rest.
pub async fn connect(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    server_name: &'static str,
) -> Result<Channel, tonic::transport::Error> {
    let addr: Arc<str> = Arc::from(addr);
    let connector = TlsConnector::from(cfg);
    let dial = tower::service_fn(move |_: Uri| {
        let addr = addr.clone();
        let connector = connector.clone();
        async move {
            let mut tls = dial(&addr, &connector, server_name).await?.into_inner();
            let mut head = vec![0u8; 1024];
            let n = match tokio::time::timeout(CONNECT_TIMEOUT, tls.read(&mut head)).await {
                Ok(Ok(0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("the server at {addr} closed the connection right after the TLS handshake"),
                    ))
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("the server at {addr} ended the TLS session after the handshake: {e}"),
                    ))
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the server at {addr} sent nothing within {CONNECT_TIMEOUT:?} of the TLS handshake: not a flotilla gRPC port?"),
                    ))
                }
            };
            head.truncate(n);
            Ok::<_, io::Error>(TokioIo::new(Confirmed {
                head,
                pos: 0,
                inner: tls,
            }))
        }
    });
    endpoint(server_name).connect_with_connector(dial).await
}

/// A client TLS stream whose first bytes were already read ([`connect`]): they are read again
/// first.
struct Confirmed {
    head: Vec<u8>,
    pos: usize,
    inner: tokio_rustls::client::TlsStream<TcpStream>,
}

impl AsyncRead for Confirmed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.pos);
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Confirmed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn endpoint(server_name: &'static str) -> Endpoint {
    // The URI is only the HTTP/2 authority; the connector dials the address itself.
    Endpoint::from_shared(format!("http://{server_name}"))
        .expect("a server name is a valid authority")
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

type Dialed = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

fn dialer(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    server_name: &'static str,
) -> impl tower::Service<
    Uri,
    Response = Dialed,
    Error = io::Error,
    Future = impl std::future::Future<Output = Result<Dialed, io::Error>> + Send,
> + Clone
       + Send
       + 'static {
    let addr: Arc<str> = Arc::from(addr);
    let connector = TlsConnector::from(cfg);
    tower::service_fn(move |_: Uri| {
        let addr = addr.clone();
        let connector = connector.clone();
        async move { dial(&addr, &connector, server_name).await }
    })
}

async fn dial(
    addr: &str,
    connector: &TlsConnector,
    server_name: &'static str,
) -> Result<Dialed, io::Error> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {addr}: {e}")))?;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(addr, error = %e, "cannot set TCP_NODELAY");
    }
    let name = ServerName::try_from(server_name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let peer = if server_name == MANAGER_SERVER_NAME {
        "the manager"
    } else {
        "the server"
    };
    let tls = connector.connect(name, tcp).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("TLS handshake with {peer} at {addr} failed: {e}"),
        )
    })?;
    Ok(TokioIo::new(tls))
}

/// Dials with one client configuration; what the raft transport and agents hold.
#[derive(Debug, Clone)]
pub struct MtlsConnector {
    cfg: Arc<rustls::ClientConfig>,
}

impl MtlsConnector {
    pub fn new(cfg: Arc<rustls::ClientConfig>) -> MtlsConnector {
        MtlsConnector { cfg }
    }

    /// A lazy channel to `addr` (see [`channel`]).
    pub fn channel(&self, addr: &str) -> Channel {
        channel(addr, self.cfg.clone())
    }
}

/// An accepted server-side TLS connection with its [`MtlsConnectInfo`] (which tonic puts in
/// each request's extensions; read it with [`super::peer_identity`]).
pub struct MtlsStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: MtlsConnectInfo,
}

impl MtlsStream {
    pub fn info(&self) -> &MtlsConnectInfo {
        &self.info
    }

    pub fn get_ref(&self) -> &tokio_rustls::server::TlsStream<TcpStream> {
        &self.inner
    }
}

impl Connected for MtlsStream {
    type ConnectInfo = MtlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for MtlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MtlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts connections on `listener` and yields them once their TLS handshake with `cfg`
/// succeeded. Must be called inside a tokio runtime (it spawns the accept loop).
pub fn tls_incoming(
    listener: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<MtlsStream, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(cfg), tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<Result<MtlsStream, io::Error>>,
) {
    let local = listener.local_addr().ok();
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            _ = tx.closed() => break,
            p = pending.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, remote) = tokio::select! {
            _ = tx.closed() => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(local = ?local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%remote, error = %e, "cannot set TCP_NODELAY");
            }
            let local_addr = tcp.local_addr().ok();
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%remote, error = %e, "TLS handshake failed; connection dropped");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%remote, timeout = ?HANDSHAKE_TIMEOUT,
                        "TLS handshake timed out; connection dropped");
                    return;
                }
            };
            let certs = tls.get_ref().1.peer_certificates().map(<[_]>::to_vec);
            let info = MtlsConnectInfo::new(Some(remote), local_addr, certs);
            tracing::debug!(%remote, identity = ?info.identity, "accepted a TLS connection");
            // Err: the server stopped taking connections; the connection is dropped.
            let _ = tx.send(Ok(MtlsStream { inner: tls, info })).await;
        });
    }
    tracing::debug!(local = ?local, "TLS listener stopped");
}

/// The first contact of a joining node: fetches the root CA from the controller at `addr` over
/// an unverified channel and returns its PEM only if its digest is the one in `token`. From then
/// on the node uses [`super::client_config`] with that CA (e.g. for `IssueNodeCertificate`).
pub async fn fetch_and_verify_root_ca(addr: &str, token: &JoinToken) -> Result<String, CaError> {
    let remote = |reason: String| CaError::Remote {
        what: "fetch the root CA certificate",
        addr: addr.to_string(),
        reason,
    };
    let mut client = NodeCaClient::new(channel(addr, bootstrap_client_config()?));
    let resp = tokio::time::timeout(
        FETCH_TIMEOUT,
        client.get_root_ca_certificate(GetRootCaRequest {}),
    )
    .await
    .map_err(|_| remote(format!("no answer within {FETCH_TIMEOUT:?}")))?
    .map_err(|s| remote(status_text(&s)))?;
    let pem = resp.into_inner().cert_pem;
    let der = single_cert_der(&pem, "root CA certificate")
        .map_err(|e| remote(format!("it sent an unusable certificate: {e}")))?;
    let got = der_digest(&der);
    if got != token.ca_digest() {
        return Err(CaError::CaDigestMismatch {
            addr: addr.to_string(),
            expected: token.ca_digest().to_string(),
            got,
        });
    }
    tracing::info!(addr, digest = %got, "fetched the cluster root CA and checked it against the join token");
    Ok(pem)
}

/// A status as one line: the message, and the transport error under it when there is one.
fn status_text(s: &tonic::Status) -> String {
    use std::error::Error;
    let mut text = format!("{}: {}", s.code(), s.message());
    let mut source = s.source();
    while let Some(e) = source {
        let t = e.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = e.source();
    }
    text
}

/// Whether the request behind `status` never reached the server (the connection was refused),
/// so sending it again cannot execute it twice (and it had no effect).
pub fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        source = e.source();
    }
    false
}
