//! The cluster CA: root certificate, node certificates bound to node ids, join tokens, the
//! cluster data key that seals secrets, and the rustls configurations of every mTLS port.
//!
//! Identity model (invariants every other module relies on):
//! - A certificate's identity is the node id, never an address: subject CN = node id,
//!   O = cluster id, OU = `flotilla-manager` | `flotilla-worker` | `flotilla-admin`
//!   ([`PeerRole`]). The CA ignores whatever subject or names a CSR asks for.
//! - Managers carry the DNS name [`MANAGER_SERVER_NAME`] (`manager.flotilla`) and clients verify
//!   every manager by that fixed name whatever address they dial, so a manager whose IP changes
//!   keeps working. Worker certificates carry [`WORKER_SERVER_NAME`] instead and can never pass as
//!   a manager.
//! - A join token carries the sha256 digest of the CA certificate: a joining node fetches the CA
//!   over an unverified channel ([`bootstrap_client_config`]) and trusts it only when the digest
//!   matches ([`fetch_and_verify_root_ca`]); the token itself is only ever sent over a channel
//!   verified against that CA. The role a token grants is the role of the cluster token it
//!   matched ([`match_join_token`]), compared in constant time.
//! - Client certificates are optional at the TLS layer (joining nodes have none yet) but are
//!   always verified against the cluster CA when presented; every rpc other than
//!   `NodeCA.GetRootCACertificate` / `IssueNodeCertificate` calls [`peer_identity`] itself.
//! - Every rustls configuration is built with the ring provider explicitly
//!   ([`crypto_provider`]); nothing depends on a process-wide default provider. TLS 1.3 only.
//! - The CA private key and secrets are stored in the raft log only sealed with the [`DataKey`]
//!   (XChaCha20-Poly1305), which only managers hold.
//!
//! Certificates are made with rcgen and parsed with x509-parser, TLS is rustls; the only
//! hand-written pieces are the token format, the on-disk layout of a node's material and the
//! glue between tokio-rustls and tonic. That glue exists because tonic's built-in TLS and its
//! `TlsConnectInfo` / `Request::peer_certs` need tonic's `tls-*` features, which the workspace
//! does not enable: [`tls_incoming`] runs the handshakes itself (concurrently, with a timeout)
//! and yields [`MtlsStream`]s whose [`MtlsConnectInfo`] carries the verified client chain and
//! its parsed [`PeerIdentity`].

mod datakey;
mod error;
mod fsutil;
mod identity;
mod live;
mod node;
mod random;
mod root;
mod tls;
mod token;
mod transport;

pub use datakey::{DataKey, DATA_KEY_LEN};
pub use error::CaError;
pub use identity::{peer_addr, peer_identity, MtlsConnectInfo, PeerIdentity, PeerRole};
pub use live::LiveTls;
pub use node::{NodeKey, NodeTls, NodeTlsFiles, RENEW_FRACTION};
pub use root::{IssuedCert, Role, RootCa, MIN_CERT_VALIDITY, ROOT_CA_VALIDITY};
pub use tls::{
    bootstrap_client_config, client_config, client_config_with, crypto_provider, server_config,
    server_config_with, ALPN_H2, MANAGER_SERVER_NAME, WORKER_SERVER_NAME,
};
pub use token::{match_join_token, JoinToken};
pub use transport::{
    channel, connect, fetch_and_verify_root_ca, never_sent, tls_incoming, MtlsConnector,
    MtlsStream, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT,
};

/// sha256 of a DER blob, lower-case hex: the CA digest join tokens carry.
pub fn der_digest(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// The CA digest of a PEM certificate (what [`der_digest`] gives for its DER).
pub fn pem_digest(cert_pem: &str) -> Result<String, CaError> {
    use rustls_pki_types::pem::PemObject;
    let der =
        rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            CaError::InvalidPem {
                what: "CA certificate",
                reason: e.to_string(),
            }
        })?;
    Ok(der_digest(&der))
}
