//! The cluster root CA: an ECDSA P-256 self-signed certificate (CN `flotilla-root-ca-<cluster
//! id>`, valid 20 years, path length 0 so it can sign only leaf certificates) and the issuing of
//! node and admin certificates from CSRs.
//!
//! Invariants: the issued subject and names come from the CA, never from the CSR (the CSR only
//! contributes its public key, and only after its signature verifies); serials are 16 random
//! bytes, positive, and printed as lower-case hex; certificates start five minutes in the past
//! (clock skew between hosts) and never outlive the CA.
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::time::ASN1Time;

use flotilla_proto::control::v1::NodeRole;

use super::{der_digest, random, CaError, DataKey, MANAGER_SERVER_NAME, WORKER_SERVER_NAME};

/// Validity of a new root CA: 20 years.
pub const ROOT_CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How far in the past issued certificates start, for hosts whose clocks lag. Renewal points
/// are computed from the issuing moment, not from not-before ([`super::NodeTls::renew_at`]).
pub(crate) const NOT_BEFORE_SKEW: Duration = Duration::from_secs(5 * 60);
/// The shortest validity the CA issues. Below it a node renewing at two thirds of the lifetime
/// has too little time left for a retry after a failed attempt (a few seconds of network or
/// leader trouble); clusters meant for production use hours or days (see the `--cert-expiry`
/// flag of `flotilla-controller init`).
pub const MIN_CERT_VALIDITY: Duration = Duration::from_secs(20);
/// Prefix of the root CA's common name; the rest is the cluster id.
const ROOT_CN_PREFIX: &str = "flotilla-root-ca-";

pub(crate) const OU_MANAGER: &str = "flotilla-manager";
pub(crate) const OU_WORKER: &str = "flotilla-worker";
pub(crate) const OU_ADMIN: &str = "flotilla-admin";

/// The role a node certificate grants (admin certificates are not node certificates; see
/// [`super::PeerRole`] for what a peer can present).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Worker,
    Manager,
}

impl Role {
    /// "worker" | "manager".
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }

    /// The organizational unit certificates of this role carry.
    pub(crate) fn ou(self) -> &'static str {
        match self {
            Role::Worker => OU_WORKER,
            Role::Manager => OU_MANAGER,
        }
    }

    /// The fixed DNS name certificates of this role carry besides the node id.
    pub fn server_name(self) -> &'static str {
        match self {
            Role::Worker => WORKER_SERVER_NAME,
            Role::Manager => MANAGER_SERVER_NAME,
        }
    }

    pub fn to_proto(self) -> NodeRole {
        match self {
            Role::Worker => NodeRole::Worker,
            Role::Manager => NodeRole::Manager,
        }
    }

    pub fn from_proto(role: NodeRole) -> Role {
        match role {
            NodeRole::Worker => Role::Worker,
            NodeRole::Manager => Role::Manager,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate the CA just signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// The subject CN: the node id, or `admin-<random>` for admin certificates.
    pub common_name: String,
    /// The serial, lower-case hex (what `Node.cert_serial` records).
    pub serial_hex: String,
    pub not_after_unix_ms: i64,
}

/// The cluster root CA: certificate and signing key.
pub struct RootCa {
    cluster_id: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    digest: String,
    not_after_unix: i64,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("cluster_id", &self.cluster_id)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// A new root CA for `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<RootCa, CaError> {
        validate_cluster_id(cluster_id)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::cert("generate the root CA key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{ROOT_CN_PREFIX}{cluster_id}"));
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        let now = unix_now();
        let not_after = now + secs_i64(ROOT_CA_VALIDITY);
        set_validity(&mut params, now - secs_i64(NOT_BEFORE_SKEW), not_after)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::cert("self-sign the root CA", e))?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        tracing::info!(cluster_id, digest = %der_digest(&cert_der), "generated the cluster root CA");
        Ok(RootCa {
            cluster_id: cluster_id.to_string(),
            digest: der_digest(&cert_der),
            cert_pem,
            cert_der,
            key_pem,
            not_after_unix: not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA from its certificate and key (PEM), checking that they belong together and that
    /// the certificate is a flotilla root CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa, CaError> {
        let cert_der = single_cert_der(cert_pem, "root CA certificate")?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| CaError::InvalidPem {
                what: "root CA certificate",
                reason: e.to_string(),
            })?;
        if !cert.is_ca() {
            return Err(CaError::InvalidCertificate(
                "the root CA certificate is not a CA certificate".into(),
            ));
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default();
        let cluster_id = cn.strip_prefix(ROOT_CN_PREFIX).ok_or_else(|| {
            CaError::InvalidCertificate(format!(
                "the root CA's common name {cn:?} is not {ROOT_CN_PREFIX}<cluster id>"
            ))
        })?;
        validate_cluster_id(cluster_id)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::InvalidPem {
            what: "root CA key",
            reason: e.to_string(),
        })?;
        if key.public_key_raw() != &*cert.public_key().subject_public_key.data {
            return Err(CaError::InvalidCertificate(
                "the root CA key does not belong to the root CA certificate".into(),
            ));
        }
        let not_after_unix = cert.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| CaError::cert("load the root CA as an issuer", e))?;
        Ok(RootCa {
            cluster_id: cluster_id.to_string(),
            digest: der_digest(&cert_der),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert_der,
            not_after_unix,
            issuer,
        })
    }

    /// The CA key sealed with the cluster data key, for `Cluster.root_ca_key_sealed`.
    pub fn seal_key(&self, data_key: &DataKey) -> Result<Vec<u8>, CaError> {
        data_key.seal(self.key_pem.as_bytes(), &self.key_aad())
    }

    /// The CA from `Cluster.root_ca_cert` and `Cluster.root_ca_key_sealed`.
    pub fn from_sealed(
        cert_pem: &str,
        sealed_key: &[u8],
        data_key: &DataKey,
    ) -> Result<RootCa, CaError> {
        let cert_der = single_cert_der(cert_pem, "root CA certificate")?;
        let aad = key_aad(&der_digest(&cert_der));
        let key = data_key.open(sealed_key, &aad)?;
        let key_pem = String::from_utf8(key)
            .map_err(|_| CaError::InvalidCertificate("the sealed root CA key is not PEM".into()))?;
        RootCa::from_pem(cert_pem, &key_pem)
    }

    fn key_aad(&self) -> Vec<u8> {
        key_aad(&self.digest)
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The private key, PEM (PKCS#8). Store it only sealed ([`RootCa::seal_key`]).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// sha256 of the certificate's DER, lower-case hex: what join tokens carry.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// A node certificate for `node_id` with `role`, for the public key of `csr_pem`.
    ///
    /// Subject CN = node id, O = cluster id, OU = `flotilla-manager` | `flotilla-worker`; DNS
    /// names: the node id, `worker.flotilla` (every node: its agent's TCP API is verified under
    /// that name, and a promoted node's agent presents its manager certificate), and
    /// `manager.flotilla` for managers only (a worker can never pass for a manager).
    /// Extended key usages: client and server authentication.
    pub fn issue(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        validity: Duration,
    ) -> Result<IssuedCert, CaError> {
        validate_node_id(node_id)?;
        let issued = self.sign(
            csr_pem,
            node_id,
            role.ou(),
            &match role {
                Role::Manager => vec![node_id, MANAGER_SERVER_NAME, WORKER_SERVER_NAME],
                Role::Worker => vec![node_id, WORKER_SERVER_NAME],
            },
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            validity,
        )?;
        tracing::info!(node_id, %role, serial = %issued.serial_hex, "issued a node certificate");
        Ok(issued)
    }

    /// An admin client certificate for the CLI: CN `admin-<random>`, OU `flotilla-admin`,
    /// client authentication only.
    pub fn issue_admin(&self, csr_pem: &str, validity: Duration) -> Result<IssuedCert, CaError> {
        let cn = format!("admin-{}", random::base36(12)?);
        let issued = self.sign(
            csr_pem,
            &cn,
            OU_ADMIN,
            &[&cn],
            &[ExtendedKeyUsagePurpose::ClientAuth],
            validity,
        )?;
        tracing::info!(cn, serial = %issued.serial_hex, "issued an admin certificate");
        Ok(issued)
    }

    fn sign(
        &self,
        csr_pem: &str,
        cn: &str,
        ou: &str,
        dns_names: &[&str],
        ekus: &[ExtendedKeyUsagePurpose],
        validity: Duration,
    ) -> Result<IssuedCert, CaError> {
        if validity < MIN_CERT_VALIDITY {
            return Err(CaError::InvalidCertificate(format!(
                "certificate validity {validity:?} is shorter than the minimum {MIN_CERT_VALIDITY:?}"
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CaError::InvalidCsr(
                "its signature does not verify (altered, or not signed by its own key)".into(),
            ),
            rcgen::Error::UnsupportedExtension => {
                CaError::InvalidCsr("it requests an unsupported extension".into())
            }
            other => CaError::InvalidCsr(other.to_string()),
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, self.cluster_id.as_str());
        dn.push(DnType::OrganizationalUnitName, ou);
        params.distinguished_name = dn;
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| {
                n.to_string()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| CaError::cert(format!("use {n:?} as a DNS name"), e))
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus.to_vec();
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial()?;
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        let now = unix_now();
        let not_after = (now.saturating_add(secs_i64(validity))).min(self.not_after_unix);
        set_validity(&mut params, now - secs_i64(NOT_BEFORE_SKEW), not_after)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CaError::cert(format!("sign the certificate of {cn}"), e))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            common_name: cn.to_string(),
            serial_hex,
            not_after_unix_ms: not_after.saturating_mul(1000),
        })
    }
}

fn key_aad(ca_digest: &str) -> Vec<u8> {
    format!("flotilla/root-ca-key/v1/{ca_digest}").into_bytes()
}

/// Node ids are DNS labels so they can be a DNS name of the certificate.
pub(crate) fn validate_node_id(id: &str) -> Result<(), CaError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(CaError::InvalidNodeId(id.to_string()))
    }
}

fn validate_cluster_id(id: &str) -> Result<(), CaError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CaError::InvalidClusterId(id.to_string()))
    }
}

/// 16 random bytes, first byte in 0x40..=0x7f: positive and minimally encoded as a DER INTEGER,
/// so the hex of these bytes is also what a parser reads back.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut b = random::bytes::<16>()?;
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

fn set_validity(
    params: &mut CertificateParams,
    not_before: i64,
    not_after: i64,
) -> Result<(), CaError> {
    let time = |secs: i64| {
        ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(|e| CaError::InvalidCertificate(format!("invalid time {secs}: {e}")))
    };
    params.not_before = time(not_before)?;
    params.not_after = time(not_after)?;
    Ok(())
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(secs_i64)
        .unwrap_or(0)
}

fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The DER of the one certificate in `pem` (more than one, or none, is an error).
pub(crate) fn single_cert_der(
    pem: &str,
    what: &'static str,
) -> Result<CertificateDer<'static>, CaError> {
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    let first = certs
        .next()
        .ok_or_else(|| CaError::InvalidPem {
            what,
            reason: "no CERTIFICATE block".into(),
        })?
        .map_err(|e| CaError::InvalidPem {
            what,
            reason: e.to_string(),
        })?;
    if certs.next().is_some() {
        return Err(CaError::InvalidPem {
            what,
            reason: "more than one CERTIFICATE block".into(),
        });
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeKey, PeerIdentity, PeerRole};
    use x509_parser::extensions::GeneralName;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn parse(pem: &str) -> Vec<u8> {
        single_cert_der(pem, "test").unwrap().to_vec()
    }

    fn dns_names(der: &[u8]) -> Vec<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(s) => s.to_string(),
                other => panic!("unexpected name {other:?}"),
            })
            .collect()
    }

    #[test]
    fn root_ca_is_a_p256_ca_named_after_the_cluster() {
        let ca = RootCa::generate("c1").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert!(cert.is_ca());
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "flotilla-root-ca-c1");
        let years = (cert.validity().not_after.timestamp() - unix_now()) / (365 * 24 * 3600);
        assert_eq!(years, 20);
        assert_eq!(ca.digest().len(), 64);
        assert_eq!(ca.digest(), der_digest(ca.cert_der()));
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
    }

    #[test]
    fn from_pem_round_trips_and_rejects_a_foreign_key() {
        let ca = RootCa::generate("c1").unwrap();
        let again = RootCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.cluster_id(), "c1");
        assert_eq!(again.digest(), ca.digest());
        // The reloaded CA issues certificates that chain to the same certificate.
        let key = NodeKey::generate().unwrap();
        let issued = again.issue(&key.csr_pem, "n1", Role::Worker, DAY).unwrap();
        let der = parse(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();

        let other = RootCa::generate("c2").unwrap();
        let err = RootCa::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn sealed_key_round_trips_only_with_the_data_key() {
        let ca = RootCa::generate("c1").unwrap();
        let dk = DataKey::generate().unwrap();
        let sealed = ca.seal_key(&dk).unwrap();
        let back = RootCa::from_sealed(ca.cert_pem(), &sealed, &dk).unwrap();
        assert_eq!(back.key_pem(), ca.key_pem());
        let wrong = DataKey::generate().unwrap();
        assert!(RootCa::from_sealed(ca.cert_pem(), &sealed, &wrong).is_err());
        // The seal is bound to this CA certificate.
        let other = RootCa::generate("c1").unwrap();
        assert!(RootCa::from_sealed(other.cert_pem(), &sealed, &dk).is_err());
    }

    #[test]
    fn manager_certificate_carries_node_id_cluster_role_and_fixed_name() {
        let ca = RootCa::generate("clu").unwrap();
        let key = NodeKey::generate().unwrap();
        let issued = ca.issue(&key.csr_pem, "node7", Role::Manager, DAY).unwrap();
        let der = parse(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
            it.next().unwrap().as_str().unwrap().to_string()
        };
        assert_eq!(first(&mut cert.subject().iter_common_name()), "node7");
        assert_eq!(first(&mut cert.subject().iter_organization()), "clu");
        assert_eq!(
            first(&mut cert.subject().iter_organizational_unit()),
            "flotilla-manager"
        );
        assert_eq!(
            dns_names(&der),
            ["node7", "manager.flotilla", "worker.flotilla"]
        );
        assert!(!cert.is_ca());
        let not_after = cert.validity().not_after.timestamp();
        assert_eq!(not_after * 1000, issued.not_after_unix_ms);
        assert!((not_after - unix_now() - DAY.as_secs() as i64).abs() < 5);
        assert!(cert.validity().not_before.timestamp() <= unix_now() - 290);
        assert_eq!(hex::encode(cert.raw_serial()), issued.serial_hex);
        assert_eq!(issued.common_name, "node7");

        let id = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(id.node_id, "node7");
        assert_eq!(id.cluster_id, "clu");
        assert_eq!(id.role, PeerRole::Manager);
        assert_eq!(id.serial, issued.serial_hex);
    }

    #[test]
    fn worker_certificate_has_worker_name_and_the_csr_subject_is_ignored() {
        let ca = RootCa::generate("clu").unwrap();
        // A CSR asking for a manager's name and another CN.
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["manager.flotilla".to_string(), "evil".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "flotilla-manager");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca.issue(&csr, "w1", Role::Worker, DAY).unwrap();
        let der = parse(&issued.cert_pem);
        assert_eq!(dns_names(&der), ["w1", "worker.flotilla"]);
        let id = PeerIdentity::from_der(&der).unwrap();
        assert_eq!((id.node_id.as_str(), id.role), ("w1", PeerRole::Worker));
    }

    #[test]
    fn validity_is_capped_by_the_ca() {
        let ca = RootCa::generate("clu").unwrap();
        let key = NodeKey::generate().unwrap();
        let issued = ca
            .issue(&key.csr_pem, "n1", Role::Worker, ROOT_CA_VALIDITY * 2)
            .unwrap();
        assert_eq!(issued.not_after_unix_ms, ca.not_after_unix * 1000);
        assert!(ca
            .issue(&key.csr_pem, "n1", Role::Worker, Duration::ZERO)
            .is_err());
    }

    #[test]
    fn admin_certificate() {
        let ca = RootCa::generate("clu").unwrap();
        let key = NodeKey::generate().unwrap();
        let issued = ca.issue_admin(&key.csr_pem, DAY).unwrap();
        let id = PeerIdentity::from_der(&parse(&issued.cert_pem)).unwrap();
        assert_eq!(id.role, PeerRole::Admin);
        assert!(id.node_id.starts_with("admin-"), "{}", id.node_id);
        assert_eq!(id.node_id, issued.common_name);
    }

    #[test]
    fn csr_with_a_bad_signature_is_refused() {
        let ca = RootCa::generate("clu").unwrap();
        let key = NodeKey::generate().unwrap();
        // Change one base64 character near the end of the body: inside the signature's last
        // integer, so the structure stays valid and only the signature breaks.
        let mut lines: Vec<String> = key.csr_pem.lines().map(str::to_string).collect();
        let last_body = lines.len() - 2;
        let line = &mut lines[last_body];
        let body_len = line.trim_end_matches('=').len();
        let i = body_len - 6;
        let old = line.as_bytes()[i];
        let new = if old == b'A' { 'B' } else { 'A' };
        line.replace_range(i..i + 1, &new.to_string());
        let tampered = lines.join("\n") + "\n";
        let err = ca.issue(&tampered, "n1", Role::Worker, DAY).unwrap_err();
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );

        let err = ca.issue("not a csr", "n1", Role::Worker, DAY).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid certificate signing request"));
    }

    #[test]
    fn node_ids_must_be_dns_labels() {
        let ca = RootCa::generate("clu").unwrap();
        let key = NodeKey::generate().unwrap();
        for bad in ["", "-a", "a-", "a.b", "a_b", "é", &"x".repeat(64)] {
            let err = ca.issue(&key.csr_pem, bad, Role::Worker, DAY).unwrap_err();
            assert!(matches!(err, CaError::InvalidNodeId(_)), "{bad:?}: {err}");
        }
        assert!(RootCa::generate("bad id").is_err());
    }
}
