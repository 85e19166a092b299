//! A node's own TLS material: its key and CSR, and the CA certificate, node certificate and key
//! on disk, with the renewal point.
//!
//! On-disk layout under the node's TLS directory (mode 0700):
//!
//! ```text
//! current -> gen-<unix ms>-<random>     symlink, replaced atomically on every save
//! gen-…/ca.pem                          cluster root CA certificate (0644)
//! gen-…/node.crt                        the node certificate (0644)
//! gen-…/node.key                        the node key, PKCS#8 PEM (0600)
//! ```
//!
//! Invariants: the three files of `current` always belong together (a save writes a complete new
//! generation, fsyncs it, then swaps the symlink; a crash leaves the old or the new set, never a
//! mix); `save` and `load` both check that the key matches the certificate and that the
//! certificate was signed by the CA. Old generations are removed after a successful swap.
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use super::root::{single_cert_der, NOT_BEFORE_SKEW};
use super::{client_config, fsutil, random, server_config, CaError, PeerIdentity};

/// Fraction of a certificate's lifetime after which the node renews it.
pub const RENEW_FRACTION: (u32, u32) = (2, 3);

const CURRENT: &str = "current";
const GEN_PREFIX: &str = "gen-";
const CA_FILE: &str = "ca.pem";
const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";

/// A fresh node key (ECDSA P-256) and a CSR for it. The CSR's subject is a placeholder: the CA
/// decides the certificate's names.
#[derive(Clone)]
pub struct NodeKey {
    pub key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::cert("generate a node key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "flotilla-node-csr");
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| CaError::cert("make a certificate signing request", e))?;
        Ok(NodeKey {
            key_pem: key.serialize_pem(),
            csr_pem: csr,
        })
    }
}

/// A node's TLS directory.
#[derive(Debug, Clone)]
pub struct NodeTlsFiles {
    dir: PathBuf,
}

/// A node's loaded and checked TLS material.
#[derive(Clone)]
pub struct NodeTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// What the certificate says (node id, cluster, role, serial).
    pub identity: PeerIdentity,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("identity", &self.identity)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Checks that the three belong together and reads the certificate. Times are not checked:
    /// an expired set loads (and [`NodeTls::expires_soon`] is true) so the caller can decide
    /// to renew or rejoin.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<NodeTls, CaError> {
        let ca_der = single_cert_der(ca_pem, "CA certificate")?;
        let cert_der = single_cert_der(cert_pem, "node certificate")?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|e| CaError::InvalidCertificate(format!("CA certificate: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::InvalidCertificate(format!("node certificate: {e}")))?;
        cert.verify_signature(Some(ca.public_key())).map_err(|_| {
            CaError::InvalidCertificate(
                "the node certificate was not signed by the cluster CA".into(),
            )
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::InvalidPem {
            what: "node key",
            reason: e.to_string(),
        })?;
        if key.public_key_raw() != &*cert.public_key().subject_public_key.data {
            return Err(CaError::InvalidCertificate(
                "the node key does not belong to the node certificate".into(),
            ));
        }
        let identity = PeerIdentity::from_der(&cert_der)?;
        let time = |secs: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
        Ok(NodeTls {
            ca_pem: ca_pem.to_string(),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            identity,
            not_before: time(cert.validity().not_before.timestamp()),
            not_after: time(cert.validity().not_after.timestamp()),
        })
    }

    /// The moment the CA issued the certificate: its not-before plus the CA's backdating
    /// ([`NOT_BEFORE_SKEW`]), never after not-after. The backdating only absorbs clock skew
    /// between hosts; counting it as lifetime would move the renewal point of a short-lived
    /// certificate before its issuing (a 30 s certificate backdated 5 minutes "is" 2/3 used up
    /// the moment it is made, and a renewal loop would spin).
    pub fn issued_at(&self) -> SystemTime {
        (self.not_before + NOT_BEFORE_SKEW).min(self.not_after)
    }

    /// When to renew: [`RENEW_FRACTION`] of the way from issuing ([`NodeTls::issued_at`]) to
    /// not-after.
    pub fn renew_at(&self) -> SystemTime {
        let issued = self.issued_at();
        let life = self.not_after.duration_since(issued).unwrap_or_default();
        let (num, den) = RENEW_FRACTION;
        issued + life * num / den
    }

    /// How long to wait after a failed renewal attempt at `now`: a tenth of the time left
    /// before expiry, between 1 s and 60 s. A minute suits certificates valid for days; one
    /// valid for 30 s must retry within its last 10 s, and an expired one keeps retrying every
    /// minute (a manager may come back).
    pub fn retry_delay(&self, now: SystemTime) -> Duration {
        let left = self.not_after.duration_since(now).unwrap_or_default();
        if left.is_zero() {
            return Duration::from_secs(60);
        }
        (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// True once `now` has reached [`NodeTls::renew_at`].
    pub fn expires_soon(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }

    /// A client configuration presenting this certificate (dials managers as
    /// `manager.flotilla`).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, CaError> {
        client_config(&self.ca_pem, Some((&self.cert_pem, &self.key_pem)))
    }

    /// A server configuration with this certificate (client certificates optional, verified
    /// against the CA when presented).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, CaError> {
        server_config(&self.ca_pem, &self.cert_pem, &self.key_pem)
    }
}

impl NodeTlsFiles {
    pub fn new(dir: impl Into<PathBuf>) -> NodeTlsFiles {
        NodeTlsFiles { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a new set durably and atomically, after checking it; returns the checked set.
    pub fn save(&self, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<NodeTls, CaError> {
        let tls = NodeTls::new(ca_pem, cert_pem, key_pem)?;
        fsutil::create_private_dir(&self.dir)?;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let gen_name = format!("{GEN_PREFIX}{now_ms}-{}", random::base36(6)?);
        let gen_dir = self.dir.join(&gen_name);
        fsutil::create_private_dir(&gen_dir)?;
        let written = (|| {
            fsutil::write_atomic(&gen_dir.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
            fsutil::write_atomic(&gen_dir.join(CERT_FILE), cert_pem.as_bytes(), 0o644)?;
            fsutil::write_atomic(&gen_dir.join(KEY_FILE), key_pem.as_bytes(), 0o600)?;
            fsutil::sync_dir(&self.dir)?;
            let tmp_link = self
                .dir
                .join(format!(".{CURRENT}.tmp-{}", random::base36(8)?));
            symlink(&gen_name, &tmp_link)
                .map_err(|e| CaError::io("create symlink", &tmp_link, e))?;
            let current = self.dir.join(CURRENT);
            if let Err(e) = fs::rename(&tmp_link, &current) {
                let _ = fs::remove_file(&tmp_link);
                return Err(CaError::io("replace symlink", &current, e));
            }
            fsutil::sync_dir(&self.dir)
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&gen_dir);
            return Err(e);
        }
        self.remove_old_generations(&gen_name);
        tracing::info!(dir = %self.dir.display(), node_id = %tls.identity.node_id,
            serial = %tls.identity.serial, "stored node TLS material");
        Ok(tls)
    }

    /// The current set, checked; None when nothing was saved yet (the node has not joined).
    pub fn load(&self) -> Result<Option<NodeTls>, CaError> {
        let current = self.dir.join(CURRENT);
        match fs::symlink_metadata(&current) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CaError::io("read", &current, e)),
        }
        let read = |name: &str| {
            let p = current.join(name);
            fs::read_to_string(&p).map_err(|e| CaError::io("read", p, e))
        };
        let (ca, cert, key) = (read(CA_FILE)?, read(CERT_FILE)?, read(KEY_FILE)?);
        NodeTls::new(&ca, &cert, &key)
            .map(Some)
            .map_err(|e| CaError::InvalidCertificate(format!("{}: {e}", current.display())))
    }

    fn remove_old_generations(&self, keep: &str) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(GEN_PREFIX) && name != keep {
                if let Err(e) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e,
                        "cannot remove an old TLS generation");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PeerRole, Role, RootCa};
    use std::os::unix::fs::PermissionsExt;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn material(ca: &RootCa, id: &str) -> (String, String) {
        let key = NodeKey::generate().unwrap();
        let issued = ca.issue(&key.csr_pem, id, Role::Worker, DAY).unwrap();
        (issued.cert_pem, key.key_pem)
    }

    #[test]
    fn save_load_replace() {
        let ca = RootCa::generate("c").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = NodeTlsFiles::new(dir.path().join("tls"));
        assert!(files.load().unwrap().is_none());

        let (cert, key) = material(&ca, "n1");
        files.save(ca.cert_pem(), &cert, &key).unwrap();
        let tls = files.load().unwrap().unwrap();
        assert_eq!(tls.identity.node_id, "n1");
        assert_eq!(tls.identity.role, PeerRole::Worker);
        assert_eq!(tls.key_pem, key);
        let key_path = dir.path().join("tls/current/node.key");
        let mode = fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(dir.path().join("tls"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        let (cert2, key2) = material(&ca, "n1");
        files.save(ca.cert_pem(), &cert2, &key2).unwrap();
        let tls2 = files.load().unwrap().unwrap();
        assert_eq!(tls2.cert_pem, cert2);
        assert_ne!(tls2.identity.serial, tls.identity.serial);
        let gens = fs::read_dir(dir.path().join("tls"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("gen-")
            })
            .count();
        assert_eq!(gens, 1, "old generation removed");
    }

    #[test]
    fn save_refuses_mismatched_material() {
        let ca = RootCa::generate("c").unwrap();
        let other = RootCa::generate("c").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = NodeTlsFiles::new(dir.path());
        let (cert, key) = material(&ca, "n1");
        let (_, key_b) = material(&ca, "n2");
        let err = files.save(ca.cert_pem(), &cert, &key_b).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let err = files.save(other.cert_pem(), &cert, &key).unwrap_err();
        assert!(
            err.to_string().contains("not signed by the cluster CA"),
            "{err}"
        );
        assert!(files.load().unwrap().is_none());
    }

    #[test]
    fn renewal_point_is_two_thirds_of_the_life_since_issuing() {
        let ca = RootCa::generate("c").unwrap();
        let (cert, key) = material(&ca, "n1");
        let tls = NodeTls::new(ca.cert_pem(), &cert, &key).unwrap();
        // Backdated by the CA, but the lifetime counts from the issuing moment.
        assert_eq!(tls.issued_at(), tls.not_before + NOT_BEFORE_SKEW);
        let now = SystemTime::now();
        assert!(tls.issued_at() <= now && tls.issued_at() + Duration::from_secs(5) > now);
        assert_eq!(tls.not_after.duration_since(tls.issued_at()).unwrap(), DAY);
        assert_eq!(tls.renew_at(), tls.issued_at() + DAY * 2 / 3);
        assert!(!tls.expires_soon(SystemTime::now()));
        assert!(!tls.expires_soon(tls.renew_at() - Duration::from_secs(1)));
        assert!(tls.expires_soon(tls.renew_at()));
        assert!(tls.expires_soon(tls.not_after + DAY));
    }

    #[test]
    fn short_certificates_renew_after_issuing_not_at_once() {
        let ca = RootCa::generate("c").unwrap();
        let key = NodeKey::generate().unwrap();
        let validity = crate::MIN_CERT_VALIDITY;
        let issued = ca
            .issue(&key.csr_pem, "n1", Role::Manager, validity)
            .unwrap();
        let tls = NodeTls::new(ca.cert_pem(), &issued.cert_pem, &key.key_pem).unwrap();
        let now = SystemTime::now();
        // 20 s: renew about 13 s after issuing, not (as from not-before) minutes ago.
        let wait = tls
            .renew_at()
            .duration_since(now)
            .expect("renewal is ahead");
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(14),
            "{wait:?}"
        );
        assert!(!tls.expires_soon(now));
    }

    #[test]
    fn retry_delay_shrinks_with_the_time_left() {
        let ca = RootCa::generate("c").unwrap();
        let (cert, key) = material(&ca, "n1");
        let tls = NodeTls::new(ca.cert_pem(), &cert, &key).unwrap();
        let s = Duration::from_secs;
        assert_eq!(tls.retry_delay(tls.not_after - DAY / 2), s(60));
        assert_eq!(tls.retry_delay(tls.not_after - s(100)), s(10));
        assert_eq!(tls.retry_delay(tls.not_after - s(5)), s(1));
        // Expired: keep trying, slowly.
        assert_eq!(tls.retry_delay(tls.not_after + s(1)), s(60));
    }
}
