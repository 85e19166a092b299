//! rustls configurations of flotilla's mTLS ports: all with the ring provider given explicitly,
//! TLS 1.3 only, ALPN `h2`.
//!
//! - [`server_config`]: the server's node certificate; client certificates are optional at the
//!   TLS layer but, when presented, must chain to the cluster CA and be valid now (else the
//!   handshake fails). Handlers decide what a connection without one may do ([`super::peer_identity`]).
//! - [`client_config`]: verifies the server against the cluster CA for the fixed name
//!   [`MANAGER_SERVER_NAME`], whatever address was dialed; optionally presents a client
//!   certificate.
//! - [`bootstrap_client_config`]: verifies nothing about the server (it only proves possession
//!   of the key of whatever certificate it shows). It exists for exactly one call,
//!   `NodeCA.GetRootCACertificate`, whose answer the caller checks against the digest in its join
//!   token before trusting it ([`super::fetch_and_verify_root_ca`]); nothing secret is sent over it.
//! - TLS session resumption is off on both sides: a resumed TLS 1.3 session carries the client
//!   certificate of the original handshake without verifying it again, so an expired (or
//!   renewed-away) certificate could keep authenticating; every connection here is long-lived, so
//!   a full handshake per connection costs nothing that matters.
//! - The certificate a port presents can be fixed ([`server_config`], [`client_config`]) or
//!   replaced while the process runs ([`super::LiveTls`], built on [`server_config_with`] and
//!   [`client_config_with`]).
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use super::root::single_cert_der;
use super::CaError;

/// The name every manager certificate carries and every client verifies managers by.
pub const MANAGER_SERVER_NAME: &str = "manager.flotilla";
/// The name every worker certificate carries.
pub const WORKER_SERVER_NAME: &str = "worker.flotilla";
/// ALPN protocol of every flotilla port (gRPC over HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The ring crypto provider, built once.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, CaError> {
    let ca = single_cert_der(ca_pem, "CA certificate")?;
    let mut store = RootCertStore::empty();
    store
        .add(ca)
        .map_err(|e| CaError::Tls(format!("cannot use the CA certificate as a root: {e}")))?;
    Ok(Arc::new(store))
}

fn chain_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
    let cert = single_cert_der(cert_pem, "certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CaError::InvalidPem {
            what: "private key",
            reason: e.to_string(),
        })?;
    Ok((vec![cert], key))
}

/// The server side of an mTLS port: presents `cert_pem`/`key_pem`; verifies client certificates
/// against `ca_pem` when the client sends one (optional).
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, CaError> {
    server_config_with(
        ca_pem,
        Arc::new(FixedServerCert(Arc::new(certified_key(cert_pem, key_pem)?))),
    )
}

/// [`server_config`] presenting whatever `resolver` gives at each handshake (a certificate that
/// is replaced while the port stays open).
pub fn server_config_with(
    ca_pem: &str,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, CaError> {
    let provider = crypto_provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(ca_pem)?,
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| CaError::Tls(format!("client certificate verifier: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption (see the module documentation).
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// The client side: verifies the server against `ca_pem` for [`MANAGER_SERVER_NAME`] (the
/// connectors always send that name); presents `client` (certificate PEM, key PEM) when given.
pub fn client_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, CaError> {
    match client {
        Some((cert_pem, key_pem)) => client_config_with(
            ca_pem,
            Arc::new(FixedClientCert(Arc::new(certified_key(cert_pem, key_pem)?))),
        ),
        None => client_config_anonymous(ca_pem),
    }
}

fn client_config_anonymous(ca_pem: &str) -> Result<Arc<ClientConfig>, CaError> {
    let mut cfg = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    finish_client(&mut cfg);
    Ok(Arc::new(cfg))
}

/// [`client_config`] presenting whatever `resolver` gives at each handshake.
pub fn client_config_with(
    ca_pem: &str,
    resolver: Arc<dyn ResolvesClientCert>,
) -> Result<Arc<ClientConfig>, CaError> {
    let mut cfg = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_cert_resolver(resolver);
    finish_client(&mut cfg);
    Ok(Arc::new(cfg))
}

fn finish_client(cfg: &mut ClientConfig) {
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption (see the module documentation).
    cfg.resumption = rustls::client::Resumption::disabled();
}

/// A certificate and its key, ready for rustls (the key is checked against the certificate).
pub(crate) fn certified_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::sign::CertifiedKey, CaError> {
    let (chain, key) = chain_and_key(cert_pem, key_pem)?;
    rustls::sign::CertifiedKey::from_der(chain, key, &crypto_provider())
        .map_err(|e| CaError::Tls(format!("certificate and key: {e}")))
}

/// A server certificate that never changes.
#[derive(Debug)]
struct FixedServerCert(Arc<rustls::sign::CertifiedKey>);

impl ResolvesServerCert for FixedServerCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A client certificate that never changes (sent whatever CA hints the server gives: flotilla
/// servers trust exactly one CA).
#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client side for the first contact of a joining node: accepts any server certificate.
/// Use it only for `NodeCA.GetRootCACertificate` (see the module documentation).
pub fn bootstrap_client_config() -> Result<Arc<ClientConfig>, CaError> {
    let provider = crypto_provider();
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CaError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnverifiedServer { provider }))
        .with_no_client_auth();
    finish_client(&mut cfg);
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate; still checks the handshake signatures so the connection is a
/// well-formed TLS session with whoever holds that certificate's key.
#[derive(Debug)]
struct UnverifiedServer {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeKey, Role, RootCa};
    use std::time::Duration;

    #[test]
    fn configs_build_from_issued_material() {
        let ca = RootCa::generate("c").unwrap();
        let key = NodeKey::generate().unwrap();
        let cert = ca
            .issue(&key.csr_pem, "m1", Role::Manager, Duration::from_secs(3600))
            .unwrap();
        let s = server_config(ca.cert_pem(), &cert.cert_pem, &key.key_pem).unwrap();
        assert_eq!(s.alpn_protocols, vec![b"h2".to_vec()]);
        let c = client_config(ca.cert_pem(), Some((&cert.cert_pem, &key.key_pem))).unwrap();
        assert!(c.client_auth_cert_resolver.has_certs());
        let c = client_config(ca.cert_pem(), None).unwrap();
        assert!(!c.client_auth_cert_resolver.has_certs());
        bootstrap_client_config().unwrap();
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let err = client_config("nope", None).unwrap_err().to_string();
        assert!(err.contains("invalid CA certificate"), "{err}");
        let ca = RootCa::generate("c").unwrap();
        let err = server_config(ca.cert_pem(), ca.cert_pem(), "nope")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid private key"), "{err}");
    }
}
