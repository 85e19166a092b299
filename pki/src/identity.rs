//! Who is calling: the identity in a peer certificate, and how gRPC handlers read it.
//!
//! Invariants: an identity is only ever read from a certificate that the TLS layer already
//! verified against the cluster CA ([`super::tls_incoming`] parses it once per connection into
//! [`MtlsConnectInfo`]); a handler that needs a caller calls [`peer_identity`] and gets
//! UNAUTHENTICATED when the connection has no certificate. The role comes from the certificate's
//! OU, which only the CA sets.
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use super::root::{OU_ADMIN, OU_MANAGER, OU_WORKER};
use super::{CaError, Role};

/// What a verified peer certificate says about the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerRole {
    Worker,
    Manager,
    /// The CLI's admin certificate (`flotilla-admin`): may call the cluster API, is not a node.
    Admin,
}

impl PeerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Worker => "worker",
            PeerRole::Manager => "manager",
            PeerRole::Admin => "admin",
        }
    }

    /// The node role, for node certificates (None for admin).
    pub fn node_role(self) -> Option<Role> {
        match self {
            PeerRole::Worker => Some(Role::Worker),
            PeerRole::Manager => Some(Role::Manager),
            PeerRole::Admin => None,
        }
    }
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Role> for PeerRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Worker => PeerRole::Worker,
            Role::Manager => PeerRole::Manager,
        }
    }
}

/// The identity of a peer certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Subject CN: the node id (or `admin-<random>` for admin certificates).
    pub node_id: String,
    /// Subject O.
    pub cluster_id: String,
    /// From the subject OU.
    pub role: PeerRole,
    /// Certificate serial, lower-case hex.
    pub serial: String,
}

impl PeerIdentity {
    /// Reads the identity of a certificate (DER). Does not verify it: the TLS layer did.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, CaError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CaError::InvalidCertificate(format!("cannot parse: {e}")))?;
        let subject = cert.subject();
        let one =
            |what: &str,
             mut it: Box<dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue> + '_>|
             -> Result<String, CaError> {
                let v = it
                    .next()
                    .ok_or_else(|| CaError::InvalidCertificate(format!("no subject {what}")))?;
                if it.next().is_some() {
                    return Err(CaError::InvalidCertificate(format!(
                        "more than one subject {what}"
                    )));
                }
                v.as_str()
                    .map(str::to_string)
                    .map_err(|e| CaError::InvalidCertificate(format!("subject {what}: {e}")))
            };
        let node_id = one("CN", Box::new(subject.iter_common_name()))?;
        let cluster_id = one("O", Box::new(subject.iter_organization()))?;
        let ou = one("OU", Box::new(subject.iter_organizational_unit()))?;
        let role = match ou.as_str() {
            OU_MANAGER => PeerRole::Manager,
            OU_WORKER => PeerRole::Worker,
            OU_ADMIN => PeerRole::Admin,
            other => {
                return Err(CaError::InvalidCertificate(format!(
                    "subject OU {other:?} is not a flotilla role"
                )))
            }
        };
        Ok(PeerIdentity {
            node_id,
            cluster_id,
            role,
            serial: hex::encode(cert.raw_serial()),
        })
    }
}

/// What [`super::tls_incoming`] records about each connection; tonic puts it in every
/// request's extensions.
#[derive(Debug, Clone)]
pub struct MtlsConnectInfo {
    pub remote_addr: Option<SocketAddr>,
    pub local_addr: Option<SocketAddr>,
    /// The verified client chain, leaf first (None: the client sent no certificate).
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The leaf's identity, parsed once at handshake time (Err: why it is unreadable).
    pub identity: Option<Result<PeerIdentity, String>>,
}

impl MtlsConnectInfo {
    pub(crate) fn new(
        remote_addr: Option<SocketAddr>,
        local_addr: Option<SocketAddr>,
        peer_certs: Option<Vec<CertificateDer<'static>>>,
    ) -> Self {
        let identity = peer_certs
            .as_ref()
            .and_then(|chain| chain.first())
            .map(|leaf| PeerIdentity::from_der(leaf).map_err(|e| e.to_string()));
        MtlsConnectInfo {
            remote_addr,
            local_addr,
            peer_certs: peer_certs.map(Arc::new),
            identity,
        }
    }
}

const NO_CLIENT_CERT: &str =
    "no client certificate: this port requires a flotilla node or admin certificate";

/// The caller's identity, for handlers served over [`super::tls_incoming`]: UNAUTHENTICATED
/// when the connection carries no client certificate (or one whose subject is not a flotilla
/// identity).
#[allow(clippy::result_large_err)] // tonic::Status is what handlers return
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Result<PeerIdentity, tonic::Status> {
    match req
        .extensions()
        .get::<MtlsConnectInfo>()
        .and_then(|info| info.identity.as_ref())
    {
        Some(Ok(id)) => Ok(id.clone()),
        Some(Err(reason)) => Err(tonic::Status::unauthenticated(format!(
            "unusable client certificate: {reason}"
        ))),
        None => Err(tonic::Status::unauthenticated(NO_CLIENT_CERT)),
    }
}

/// The caller's address, for handlers served over [`super::tls_incoming`] (informational: the
/// identity is the certificate).
pub fn peer_addr<T>(req: &tonic::Request<T>) -> Option<SocketAddr> {
    req.extensions()
        .get::<MtlsConnectInfo>()
        .and_then(|info| info.remote_addr)
        .or_else(|| req.remote_addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_connect_info_is_unauthenticated() {
        let req = tonic::Request::new(());
        let err = peer_identity(&req).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert_eq!(err.message(), NO_CLIENT_CERT);
    }

    #[test]
    fn connection_without_certificate_is_unauthenticated() {
        let mut req = tonic::Request::new(());
        req.extensions_mut()
            .insert(MtlsConnectInfo::new(None, None, None));
        assert_eq!(
            peer_identity(&req).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn garbage_certificate_is_unauthenticated_with_the_reason() {
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(MtlsConnectInfo::new(
            None,
            None,
            Some(vec![CertificateDer::from(vec![1u8, 2, 3])]),
        ));
        let err = peer_identity(&req).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().starts_with("unusable client certificate"));
    }
}
