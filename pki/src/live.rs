//! A node certificate that is replaced while the process runs: renewal installs the new
//! certificate without restarting listeners or dropping connections.
//!
//! [`LiveTls`] holds the current certificate and key; the rustls configurations it hands out
//! ([`LiveTls::server_config`], [`LiveTls::client_config`]) ask it at every handshake (rustls
//! `ResolvesServerCert` / `ResolvesClientCert`), so after [`LiveTls::replace`] new connections,
//! accepted or dialed, present the new certificate while established ones carry on (TLS
//! authenticates a connection once, at its handshake).
//!
//! Invariants: the CA never changes (the verifiers of the configurations were built with it, and
//! root CA rotation is not supported), and neither does the node id or the cluster: `replace`
//! refuses anything else, so a bug cannot make a node present someone else's identity. The role
//! may change (a promoted or demoted node).
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::tls::certified_key;
use super::{client_config_with, server_config_with, CaError, NodeTls};

struct Current {
    tls: NodeTls,
    key: Arc<CertifiedKey>,
}

/// The shared slot both resolvers read.
#[derive(Clone)]
struct Slot(Arc<RwLock<Current>>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Slot")
            .field(&self.current().identity)
            .finish()
    }
}

impl Slot {
    fn key(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).key.clone()
    }

    fn current(&self) -> NodeTls {
        self.0.read().unwrap_or_else(|p| p.into_inner()).tls.clone()
    }
}

impl ResolvesServerCert for Slot {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for Slot {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A node's TLS identity that renewal replaces in place (see the module documentation).
/// Cloning shares it.
#[derive(Clone)]
pub struct LiveTls {
    slot: Slot,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls").field("slot", &self.slot).finish()
    }
}

impl LiveTls {
    pub fn new(tls: NodeTls) -> Result<LiveTls, CaError> {
        let key = Arc::new(certified_key(&tls.cert_pem, &tls.key_pem)?);
        let ca_pem = tls.ca_pem.clone();
        let slot = Slot(Arc::new(RwLock::new(Current { tls, key })));
        Ok(LiveTls {
            server: server_config_with(&ca_pem, Arc::new(slot.clone()))?,
            client: client_config_with(&ca_pem, Arc::new(slot.clone()))?,
            slot,
        })
    }

    /// The certificate presented now.
    pub fn current(&self) -> NodeTls {
        self.slot.current()
    }

    /// Presents `tls` from the next handshake on. Refused (and nothing changes) when it is for
    /// another CA, cluster or node id.
    pub fn replace(&self, tls: NodeTls) -> Result<(), CaError> {
        let key = Arc::new(certified_key(&tls.cert_pem, &tls.key_pem)?);
        let mut cur = self.slot.0.write().unwrap_or_else(|p| p.into_inner());
        let (old, new) = (&cur.tls.identity, &tls.identity);
        if cur.tls.ca_pem != tls.ca_pem {
            return Err(CaError::InvalidCertificate(
                "the new certificate comes with another CA certificate: root CA rotation needs a restart".into(),
            ));
        }
        if old.node_id != new.node_id || old.cluster_id != new.cluster_id {
            return Err(CaError::InvalidCertificate(format!(
                "the new certificate is for node {} of cluster {}, this process is node {} of cluster {}",
                new.node_id, new.cluster_id, old.node_id, old.cluster_id
            )));
        }
        tracing::info!(node_id = %new.node_id, old_serial = %old.serial, serial = %new.serial,
            "presenting the renewed certificate from now on");
        *cur = Current { tls, key };
        Ok(())
    }

    /// A server configuration presenting the current certificate at each handshake (client
    /// certificates optional, verified against the CA when presented).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// A client configuration presenting the current certificate at each handshake (servers
    /// verified against the CA).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeKey, Role, RootCa};
    use std::time::Duration;

    fn node(ca: &RootCa, id: &str, role: Role) -> NodeTls {
        let key = NodeKey::generate().unwrap();
        let c = ca
            .issue(&key.csr_pem, id, role, Duration::from_secs(3600))
            .unwrap();
        NodeTls::new(ca.cert_pem(), &c.cert_pem, &key.key_pem).unwrap()
    }

    #[test]
    fn replace_switches_what_both_resolvers_give() {
        let ca = RootCa::generate("c").unwrap();
        let first = node(&ca, "n1", Role::Worker);
        let live = LiveTls::new(first.clone()).unwrap();
        let leaf = |k: Arc<CertifiedKey>| k.cert[0].to_vec();
        let first_der = leaf(live.slot.key());
        assert_eq!(live.current().identity.serial, first.identity.serial);
        assert!(live.client_config().client_auth_cert_resolver.has_certs());

        let second = node(&ca, "n1", Role::Manager);
        live.replace(second.clone()).unwrap();
        assert_eq!(live.current().identity.serial, second.identity.serial);
        let resolved = live
            .client_config()
            .client_auth_cert_resolver
            .resolve(&[], &[])
            .unwrap();
        assert_ne!(leaf(resolved.clone()), first_der);
        assert_eq!(
            crate::PeerIdentity::from_der(&resolved.cert[0])
                .unwrap()
                .serial,
            second.identity.serial
        );
    }

    #[test]
    fn replace_refuses_another_identity_or_ca() {
        let ca = RootCa::generate("c").unwrap();
        let live = LiveTls::new(node(&ca, "n1", Role::Worker)).unwrap();
        let serial = live.current().identity.serial;
        let err = live.replace(node(&ca, "n2", Role::Worker)).unwrap_err();
        assert!(err.to_string().contains("for node n2"), "{err}");
        let other = RootCa::generate("c").unwrap();
        let err = live.replace(node(&other, "n1", Role::Worker)).unwrap_err();
        assert!(err.to_string().contains("another CA"), "{err}");
        assert_eq!(live.current().identity.serial, serial, "nothing changed");
    }
}
