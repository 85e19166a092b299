//! Mutual TLS between real tonic clients and a real tonic server on 127.0.0.1, served over
//! `ca::tls_incoming`: who gets through the TLS layer, what handlers see of the caller, and the
//! join dance (fetch the CA, check it against the token, get a certificate).
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_pki as ca;
use flotilla_pki::{
    self, client_config, fetch_and_verify_root_ca, match_join_token, peer_identity, server_config,
    tls_incoming, JoinToken, MtlsConnector, NodeKey, NodeTlsFiles, PeerRole, Role, RootCa,
};
use flotilla_proto::control::v1::node_ca_client::NodeCaClient;
use flotilla_proto::control::v1::node_ca_server::{NodeCa, NodeCaServer};
use flotilla_proto::control::v1::{
    GetRootCaRequest, GetRootCaResponse, IssueNodeCertificateRequest, IssueNodeCertificateResponse,
    JoinManagerRequest, JoinManagerResponse, RenewNodeCertificateRequest,
    RenewNodeCertificateResponse,
};
use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A minimal node CA: issues certificates for tokens; `RenewNodeCertificate` echoes the caller's
/// node id (in `cert_pem`) and role instead of renewing.
struct TestCa {
    ca: RootCa,
    worker_token: String,
    manager_token: String,
    authenticated_calls: AtomicUsize,
    next_node: AtomicUsize,
    /// Serial of the last client certificate `RenewNodeCertificate` saw.
    last_serial: std::sync::Mutex<String>,
}

#[tonic::async_trait]
impl NodeCa for TestCa {
    async fn get_root_ca_certificate(
        &self,
        _: Request<GetRootCaRequest>,
    ) -> Result<Response<GetRootCaResponse>, Status> {
        Ok(Response::new(GetRootCaResponse {
            cert_pem: self.ca.cert_pem().to_string(),
        }))
    }

    async fn issue_node_certificate(
        &self,
        req: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let req = req.into_inner();
        let role = match_join_token(
            &req.token,
            self.ca.digest(),
            &self.worker_token,
            &self.manager_token,
        )
        .map_err(|e| Status::permission_denied(e.to_string()))?;
        let node_id = format!("node{}", self.next_node.fetch_add(1, Ordering::SeqCst));
        let issued = self
            .ca
            .issue(&req.csr_pem, &node_id, role, DAY)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(IssueNodeCertificateResponse {
            node_id,
            cert_pem: issued.cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            role: role.to_proto() as i32,
            manager_addrs: vec![],
        }))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<RenewNodeCertificateResponse>, Status> {
        let id = peer_identity(&req)?;
        self.authenticated_calls.fetch_add(1, Ordering::SeqCst);
        *self.last_serial.lock().unwrap() = id.serial.clone();
        let role = id
            .role
            .node_role()
            .ok_or_else(|| Status::permission_denied("not a node"))?;
        assert!(ca::peer_addr(&req).is_some_and(|a| a.ip().is_loopback()));
        Ok(Response::new(RenewNodeCertificateResponse {
            cert_pem: id.node_id,
            role: role.to_proto() as i32,
        }))
    }

    async fn join_manager(
        &self,
        _: Request<JoinManagerRequest>,
    ) -> Result<Response<JoinManagerResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn leave_cluster(
        &self,
        _: Request<flotilla_proto::control::v1::LeaveClusterRequest>,
    ) -> Result<Response<flotilla_proto::control::v1::LeaveClusterResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
}

struct Cluster {
    svc: Arc<TestCa>,
    addr: SocketAddr,
}

impl Cluster {
    fn ca(&self) -> &RootCa {
        &self.svc.ca
    }

    fn calls(&self) -> usize {
        self.svc.authenticated_calls.load(Ordering::SeqCst)
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }
}

/// A node certificate and key from `ca`.
fn node_material(ca: &RootCa, node_id: &str, role: Role) -> (String, String) {
    let key = NodeKey::generate().unwrap();
    let cert = ca.issue(&key.csr_pem, node_id, role, DAY).unwrap();
    (cert.cert_pem, key.key_pem)
}

/// Serves `TestCa` on 127.0.0.1 with a server certificate of `server_role`.
async fn start(server_role: Role) -> Cluster {
    let ca = RootCa::generate("testcluster").unwrap();
    let (cert, key) = node_material(&ca, "srv", server_role);
    let cfg = server_config(ca.cert_pem(), &cert, &key).unwrap();
    start_with(ca, cfg).await
}

/// Serves `TestCa` of `ca` on 127.0.0.1 with the server configuration `cfg`.
async fn start_with(ca: RootCa, cfg: Arc<rustls::ServerConfig>) -> Cluster {
    let svc = Arc::new(TestCa {
        worker_token: JoinToken::generate(ca.digest(), Role::Worker)
            .unwrap()
            .to_string(),
        manager_token: JoinToken::generate(ca.digest(), Role::Manager)
            .unwrap()
            .to_string(),
        ca,
        authenticated_calls: AtomicUsize::new(0),
        next_node: AtomicUsize::new(1),
        last_serial: Default::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(NodeCaServer::from_arc(svc.clone()))
        .serve_with_incoming(tls_incoming(listener, cfg));
    tokio::spawn(async move {
        if let Err(e) = server.await {
            eprintln!("test server: {e}");
        }
    });
    Cluster { svc, addr }
}

async fn renew(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<RenewNodeCertificateResponse, Status> {
    let mut client = NodeCaClient::new(MtlsConnector::new(cfg).channel(addr));
    tokio::time::timeout(
        Duration::from_secs(8),
        client.renew_node_certificate(RenewNodeCertificateRequest::default()),
    )
    .await
    .map_err(|_| Status::deadline_exceeded("test timeout"))?
    .map(Response::into_inner)
}

#[tokio::test]
async fn node_certificate_is_accepted_and_handler_sees_node_id_and_role() {
    let c = start(Role::Manager).await;
    for (id, role) in [("w1", Role::Worker), ("m1", Role::Manager)] {
        let (cert, key) = node_material(c.ca(), id, role);
        let cfg = client_config(c.ca().cert_pem(), Some((&cert, &key))).unwrap();
        let resp = renew(&c.addr(), cfg).await.unwrap();
        assert_eq!(resp.cert_pem, id);
        assert_eq!(resp.role, role.to_proto() as i32);
    }
    assert_eq!(c.calls(), 2);
}

#[tokio::test]
async fn admin_certificate_is_identified_as_admin() {
    let c = start(Role::Manager).await;
    let key = NodeKey::generate().unwrap();
    let admin = c.ca().issue_admin(&key.csr_pem, DAY).unwrap();
    let cfg = client_config(c.ca().cert_pem(), Some((&admin.cert_pem, &key.key_pem))).unwrap();
    // The test handler refuses non-nodes after reading the identity.
    let err = renew(&c.addr(), cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert_eq!(c.calls(), 1);
    let tls = ca::NodeTls::new(c.ca().cert_pem(), &admin.cert_pem, &key.key_pem).unwrap();
    assert_eq!(tls.identity.role, PeerRole::Admin);
    assert_eq!(tls.identity.node_id, admin.common_name);
}

#[tokio::test]
async fn no_client_certificate_passes_tls_but_the_handler_says_unauthenticated() {
    let c = start(Role::Manager).await;
    let cfg = client_config(c.ca().cert_pem(), None).unwrap();
    let err = renew(&c.addr(), cfg.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert_eq!(
        err.message(),
        "no client certificate: this port requires a flotilla node or admin certificate"
    );
    // The same connection setup serves the unauthenticated rpcs.
    let mut client = NodeCaClient::new(ca::channel(&c.addr(), cfg));
    let root = client
        .get_root_ca_certificate(GetRootCaRequest {})
        .await
        .unwrap();
    assert_eq!(root.into_inner().cert_pem, c.ca().cert_pem());
    assert_eq!(c.calls(), 0);
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_and_the_listener_keeps_serving() {
    let c = start(Role::Manager).await;
    let other = RootCa::generate("testcluster").unwrap();
    let (cert, key) = node_material(&other, "intruder", Role::Manager);
    // Trusts the right CA for the server, presents a certificate of another CA.
    let cfg = client_config(c.ca().cert_pem(), Some((&cert, &key))).unwrap();
    let err = renew(&c.addr(), cfg).await.unwrap_err();
    assert!(format!("{err:?}").contains("fatal alert"), "{err:?}");
    assert_eq!(c.calls(), 0, "refused before any handler: {err}");

    let (cert, key) = node_material(c.ca(), "w1", Role::Worker);
    let cfg = client_config(c.ca().cert_pem(), Some((&cert, &key))).unwrap();
    assert_eq!(renew(&c.addr(), cfg).await.unwrap().cert_pem, "w1");
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let c = start(Role::Manager).await;
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        c.ca().cert_pem(),
        rcgen::KeyPair::from_pem(c.ca().key_pem()).unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "old");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "testcluster");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "flotilla-worker");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let cfg = client_config(c.ca().cert_pem(), Some((&cert.pem(), &key.serialize_pem()))).unwrap();
    let err = renew(&c.addr(), cfg).await.unwrap_err();
    assert!(format!("{err:?}").contains("CertificateExpired"), "{err:?}");
    assert_ne!(err.code(), Code::Ok);
    assert_eq!(c.calls(), 0, "refused before any handler: {err}");
}

#[tokio::test]
async fn a_server_without_the_manager_name_is_refused() {
    // The server holds a valid worker certificate of the right CA: not a manager.
    let c = start(Role::Worker).await;
    let (cert, key) = node_material(c.ca(), "w1", Role::Worker);
    let cfg = client_config(c.ca().cert_pem(), Some((&cert, &key))).unwrap();
    let err = renew(&c.addr(), cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        err.message()
            .contains("certificate not valid for name \"manager.flotilla\""),
        "{err}"
    );
    assert_eq!(c.calls(), 0);
}

#[tokio::test]
async fn join_with_the_right_token_gets_a_working_certificate() {
    let c = start(Role::Manager).await;
    let token = JoinToken::parse(&c.svc.worker_token).unwrap();
    let ca_pem = fetch_and_verify_root_ca(&c.addr(), &token).await.unwrap();
    assert_eq!(ca_pem, c.ca().cert_pem());

    // From now on the server is verified against the fetched CA; the token travels only there.
    let key = NodeKey::generate().unwrap();
    let mut client = NodeCaClient::new(ca::channel(
        &c.addr(),
        client_config(&ca_pem, None).unwrap(),
    ));
    let issued = client
        .issue_node_certificate(IssueNodeCertificateRequest {
            token: token.to_string(),
            csr_pem: key.csr_pem.clone(),
            description: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.role, Role::Worker.to_proto() as i32);

    let dir = tempfile::tempdir().unwrap();
    let files = NodeTlsFiles::new(dir.path().join("tls"));
    files
        .save(&issued.ca_pem, &issued.cert_pem, &key.key_pem)
        .unwrap();
    let tls = files.load().unwrap().unwrap();
    assert_eq!(tls.identity.node_id, issued.node_id);
    assert_eq!(tls.identity.role, PeerRole::Worker);
    let resp = renew(&c.addr(), tls.client_config().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.cert_pem, issued.node_id);

    // A worker token relabelled as a manager token is refused.
    let forged = token.to_string().replacen("-w-", "-m-", 1);
    let err = client
        .issue_node_certificate(IssueNodeCertificateRequest {
            token: forged,
            csr_pem: key.csr_pem,
            description: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("invalid join token"), "{err}");
}

#[tokio::test]
async fn a_token_for_another_ca_fails_with_a_clear_message() {
    let c = start(Role::Manager).await;
    let other = RootCa::generate("testcluster").unwrap();
    let token = JoinToken::generate(other.digest(), Role::Worker).unwrap();
    let err = fetch_and_verify_root_ca(&c.addr(), &token)
        .await
        .unwrap_err()
        .to_string();
    let want = format!(
        "the controller at {} presented a CA whose digest does not match the join token (expected {}, got {}): wrong address or a man-in-the-middle",
        c.addr(),
        other.digest(),
        c.ca().digest()
    );
    assert_eq!(err, want);
}

#[tokio::test]
async fn nothing_listening_is_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let token = JoinToken::generate(&"ab".repeat(32), Role::Worker).unwrap();
    let err = fetch_and_verify_root_ca(&addr, &token)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "cannot fetch the root CA certificate from the controller at {addr}"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn silent_clients_do_not_block_others() {
    let c = start(Role::Manager).await;
    // Connections that never start their handshake.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(c.addr).await.unwrap());
    }
    let (cert, key) = node_material(c.ca(), "w1", Role::Worker);
    let cfg = client_config(c.ca().cert_pem(), Some((&cert, &key))).unwrap();
    let started = Instant::now();
    assert_eq!(renew(&c.addr(), cfg).await.unwrap().cert_pem, "w1");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(silent);
}

/// The serial of the certificate the server at `addr` presents in a new handshake.
async fn server_serial(addr: SocketAddr, ca_pem: &str) -> String {
    let cfg = client_config(ca_pem, None).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(ca::MANAGER_SERVER_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    ca::PeerIdentity::from_der(leaf).unwrap().serial
}

#[tokio::test]
async fn live_certificates_serve_new_handshakes_without_a_restart() {
    let root = RootCa::generate("testcluster").unwrap();
    let tls_of = |id: &str, role: Role| {
        let (cert, key) = node_material(&root, id, role);
        ca::NodeTls::new(root.cert_pem(), &cert, &key).unwrap()
    };
    let (srv1, srv2) = (tls_of("srv", Role::Manager), tls_of("srv", Role::Manager));
    let (cli1, cli2) = (tls_of("w1", Role::Worker), tls_of("w1", Role::Worker));
    let server = ca::LiveTls::new(srv1.clone()).unwrap();
    let client = ca::LiveTls::new(cli1.clone()).unwrap();
    let ca_pem = root.cert_pem().to_string();
    let c = start_with(root, server.server_config()).await;
    let last = || c.svc.last_serial.lock().unwrap().clone();

    // One channel for the whole test: its connection was authenticated once, at its handshake.
    let old_conn = MtlsConnector::new(client.client_config()).channel(&c.addr());
    let mut old_client = NodeCaClient::new(old_conn);
    old_client
        .renew_node_certificate(RenewNodeCertificateRequest::default())
        .await
        .unwrap();
    assert_eq!(last(), cli1.identity.serial);
    assert_eq!(server_serial(c.addr, &ca_pem).await, srv1.identity.serial);

    server.replace(srv2.clone()).unwrap();
    client.replace(cli2.clone()).unwrap();
    // New handshakes, both ways, use the new certificates...
    assert_eq!(server_serial(c.addr, &ca_pem).await, srv2.identity.serial);
    assert_eq!(
        renew(&c.addr(), client.client_config())
            .await
            .unwrap()
            .cert_pem,
        "w1"
    );
    assert_eq!(last(), cli2.identity.serial);
    // ...and the established connection keeps working as it was authenticated.
    old_client
        .renew_node_certificate(RenewNodeCertificateRequest::default())
        .await
        .unwrap();
    assert_eq!(last(), cli1.identity.serial);
}

#[tokio::test]
async fn connect_reports_a_refused_client_certificate_at_connect_time() {
    // A worker-named server, as an agent's TCP API.
    let c = start(Role::Worker).await;
    let other = RootCa::generate("testcluster").unwrap();
    let (cert, key) = node_material(&other, "intruder", Role::Manager);
    let cfg = client_config(c.ca().cert_pem(), Some((&cert, &key))).unwrap();
    let err = ca::connect(&c.addr(), cfg, ca::WORKER_SERVER_NAME)
        .await
        .expect_err("the server refuses the client certificate");
    let mut text = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(e) = src {
        text = format!("{text}: {e}");
        src = e.source();
    }
    assert!(
        text.contains("ended the TLS session after the handshake"),
        "{text}"
    );
    assert!(text.contains("received fatal alert"), "{text}");

    // The same dial with a certificate of the cluster works, and the first bytes it read are
    // handed on (the call succeeds).
    let (cert, key) = node_material(c.ca(), "w1", Role::Worker);
    let cfg = client_config(c.ca().cert_pem(), Some((&cert, &key))).unwrap();
    let ch = ca::connect(&c.addr(), cfg, ca::WORKER_SERVER_NAME)
        .await
        .unwrap();
    let resp = NodeCaClient::new(ch)
        .renew_node_certificate(RenewNodeCertificateRequest::default())
        .await
        .unwrap();
    assert_eq!(resp.into_inner().cert_pem, "w1");
}
