//! A manager renewing its own node certificate before it expires, without a restart.
//!
//! Where the certificate comes from: the manager issues it itself, with the cluster CA it already
//! holds (every manager can unseal the CA key from the replicated cluster object with its data
//! key; that is how any of them answers `NodeCA`). Asking the leader instead would add nothing:
//! the leader would run the same code with the same key, and it would need a working mTLS
//! connection, i.e. a certificate that is still valid. Issuing locally lets a manager that was
//! stopped past its certificate's expiry heal itself at start, before anyone accepts its
//! handshakes again.
//!
//! What a renewal does, in order: a new key and a certificate for the same node id, role manager,
//! with the cluster's validity (`ClusterSpec.node_cert_expiry_secs`); saved atomically with
//! `NodeTlsFiles` (a crash leaves the old or the new set); presented from the next handshake on by
//! every port and dial of this process (`flotilla_pki::LiveTls`: the server config of the
//! manager's port, the raft transport, the control API forwarding); recorded on the node object
//! (`cert_serial`, `cert_expires_at`, as agents' renewals are in `NodeCA.RenewNodeCertificate`).
//!
//! Invariants: the record follows the certificate in use: each turn of the loop first writes
//! the current certificate's serial and expiry to the node when the store says otherwise, so a
//! failed write (no quorum), a crash between saving and recording, or the first manager of a
//! cluster are all corrected by the next turn. A manager renews only while the store lists its
//! node as a manager: a removed or demoted node gets no new manager certificate from itself.
//! The certificate is renewed even when it cannot be recorded (a quorum loss must not also cost
//! the managers their certificates).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_pki::{DataKey, LiveTls, NodeKey, NodeTls, NodeTlsFiles, Role, RootCa};
use flotilla_proto::control::v1::{Node, NodeRole};
use tokio::sync::watch;
use tracing::{info, warn};

use super::proposer::Proposer;
use crate::dispatcher::now_ms;
use crate::store::{Batch, State, Store};

/// What the renewal loop needs of the running manager.
pub struct Renewer {
    pub live: LiveTls,
    pub files: NodeTlsFiles,
    pub store: Store,
    pub proposer: Arc<dyn Proposer>,
    pub data_key: Arc<DataKey>,
}

/// Why a renewal did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// Nothing to renew with yet or any more (not caught up, removed, demoted).
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    Pki(#[from] flotilla_pki::CaError),
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The node object updated to record `tls`, or None when it already does.
pub fn recorded(node: &Node, tls: &NodeTls) -> Option<Node> {
    let expires = unix_ms(tls.not_after);
    if node.cert_serial == tls.identity.serial && node.cert_expires_at == expires {
        return None;
    }
    let mut node = node.clone();
    node.cert_serial = tls.identity.serial.clone();
    node.cert_expires_at = expires;
    if let Some(m) = node.meta.as_mut() {
        m.updated_at = now_ms();
    }
    Some(node)
}

/// Whether the store allows `node_id` to issue itself a manager certificate: the cluster object
/// (with the CA) is there and lists the node as a manager.
pub fn may_renew(state: &State, node_id: &str) -> Result<(), RenewError> {
    if state.cluster.is_none() {
        return Err(RenewError::NotAllowed(
            "the store holds no cluster object yet (this manager is catching up)".into(),
        ));
    }
    match state.nodes.get(node_id) {
        None => Err(RenewError::NotAllowed(format!(
            "node {node_id} was removed from the cluster: not renewing its manager certificate"
        ))),
        Some(n) if n.role != NodeRole::Manager as i32 => Err(RenewError::NotAllowed(format!(
            "node {node_id} is no longer a manager: not renewing its manager certificate"
        ))),
        Some(_) => Ok(()),
    }
}

impl Renewer {
    /// Issues, saves and installs a new certificate; returns it (not yet recorded).
    pub fn renew_now(&self) -> Result<NodeTls, RenewError> {
        let cur = self.live.current();
        let node_id = cur.identity.node_id.clone();
        let (cluster, expiry) = {
            let state = self.store.read();
            may_renew(&state, &node_id)?;
            let c = state.cluster.clone().expect("checked by may_renew");
            let expiry = crate::api::nodeca::cert_expiry(&c);
            (c, expiry)
        };
        if cluster.root_ca_cert != cur.ca_pem {
            return Err(RenewError::NotAllowed(
                "the cluster's root CA differs from the one this manager trusts: restart it".into(),
            ));
        }
        let ca = RootCa::from_sealed(
            &cluster.root_ca_cert,
            &cluster.root_ca_key_sealed,
            &self.data_key,
        )?;
        let key = NodeKey::generate()?;
        let issued = ca.issue(&key.csr_pem, &node_id, Role::Manager, expiry)?;
        let tls = self
            .files
            .save(&cur.ca_pem, &issued.cert_pem, &key.key_pem)?;
        self.live.replace(tls.clone())?;
        info!(node = %node_id, old_serial = %cur.identity.serial, serial = %tls.identity.serial,
            expires = ?tls.not_after, "renewed this manager's certificate");
        Ok(tls)
    }

    /// Writes the current certificate's serial and expiry to this manager's node when the
    /// store says otherwise. Ok(true): written.
    pub async fn record(&self) -> Result<bool, String> {
        let tls = self.live.current();
        for _ in 0..3 {
            let node = self.store.read().nodes.get(&tls.identity.node_id).cloned();
            let Some(node) = node else {
                return Err(format!(
                    "node {} is not in the store (removed, or not caught up)",
                    tls.identity.node_id
                ));
            };
            let Some(updated) = recorded(&node, &tls) else {
                return Ok(false);
            };
            let mut b = Batch::new();
            b.update(updated);
            match self.proposer.propose(b.into_proto()).await {
                Ok(_) => return Ok(true),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the node object kept changing: retrying later".into())
    }

    /// Renews at two thirds of each certificate's life until `stop`; failed attempts are retried
    /// after `NodeTls::retry_delay`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut record_failed = false;
        loop {
            let cur = self.live.current();
            let now = SystemTime::now();
            match self.record().await {
                Ok(written) => {
                    if written {
                        info!(serial = %cur.identity.serial, "recorded this manager's certificate on its node");
                    }
                    record_failed = false;
                }
                Err(e) => {
                    if !record_failed {
                        warn!(error = %e, "cannot record this manager's certificate on its node yet");
                    }
                    record_failed = true;
                }
            }
            let mut wait = cur.renew_at().duration_since(now).unwrap_or_default();
            if wait.is_zero() {
                match self.renew_now() {
                    // A new certificate due at once (the root CA caps its life) must not make
                    // the loop spin: wait as after a failure.
                    Ok(new) if new.expires_soon(SystemTime::now()) => {
                        wait = new.retry_delay(SystemTime::now());
                        warn!(expires = ?new.not_after, retry_in = ?wait,
                            "the renewed certificate is already due for renewal: the root CA expires soon");
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        wait = cur.retry_delay(now);
                        warn!(error = %e, retry_in = ?wait, "cannot renew this manager's certificate");
                    }
                }
            }
            if record_failed {
                wait = wait.min(cur.retry_delay(now));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::proposer::LocalProposer;
    use flotilla_proto::control::v1::{Cluster, ClusterSpec, Meta};
    use std::time::Duration;

    struct Setup {
        renewer: Renewer,
        _dir: tempfile::TempDir,
    }

    /// An ordinary first certificate of `m1`: valid an hour from now.
    fn hour_certificate(ca: &RootCa) -> (String, String) {
        let key = NodeKey::generate().unwrap();
        let issued = ca
            .issue(&key.csr_pem, "m1", Role::Manager, Duration::from_secs(3600))
            .unwrap();
        (issued.cert_pem, key.key_pem)
    }

    /// A manager certificate of `m1` issued long ago and valid one more hour: past its renewal
    /// point (a manager restarted after a long stop).
    fn due_certificate(ca: &RootCa) -> (String, String) {
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            ca.cert_pem(),
            rcgen::KeyPair::from_pem(ca.key_pem()).unwrap(),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["m1".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in [
            (rcgen::DnType::CommonName, "m1"),
            (rcgen::DnType::OrganizationName, "c1"),
            (rcgen::DnType::OrganizationalUnitName, "flotilla-manager"),
        ] {
            params.distinguished_name.push(t, v);
        }
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = (SystemTime::now() + Duration::from_secs(3600)).into();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A one-manager store with node `m1` (role `role`) and a cluster whose certificates are
    /// valid `expiry`; `m1`'s first certificate (from `first`) is saved and live.
    async fn setup(
        role: NodeRole,
        expiry: Duration,
        first: fn(&RootCa) -> (String, String),
    ) -> Setup {
        let ca = RootCa::generate("c1").unwrap();
        let data_key = Arc::new(DataKey::generate().unwrap());
        let store = Store::new();
        let proposer: Arc<dyn Proposer> = Arc::new(LocalProposer::new(store.clone()));
        let meta = Some(Meta {
            version: 0,
            created_at: 1,
            updated_at: 1,
        });
        let mut b = Batch::new();
        b.create(Cluster {
            id: "c1".into(),
            meta,
            spec: Some(ClusterSpec {
                node_cert_expiry_secs: expiry.as_secs(),
                ..Default::default()
            }),
            root_ca_cert: ca.cert_pem().into(),
            root_ca_key_sealed: ca.seal_key(&data_key).unwrap(),
            ..Default::default()
        })
        .create(Node {
            id: "m1".into(),
            meta,
            role: role as i32,
            ..Default::default()
        });
        proposer.propose(b.into_proto()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = NodeTlsFiles::new(dir.path().join("tls"));
        let (cert, key) = first(&ca);
        let tls = files.save(ca.cert_pem(), &cert, &key).unwrap();
        Setup {
            renewer: Renewer {
                live: LiveTls::new(tls).unwrap(),
                files,
                store,
                proposer,
                data_key,
            },
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn renewal_saves_installs_and_records_a_new_certificate() {
        let s = setup(NodeRole::Manager, Duration::from_secs(40), hour_certificate).await;
        let r = &s.renewer;
        assert!(
            r.record().await.unwrap(),
            "the first certificate gets recorded"
        );
        assert!(!r.record().await.unwrap(), "once");
        let old = r.live.current();

        let new = r.renew_now().unwrap();
        assert_ne!(new.identity.serial, old.identity.serial);
        assert_eq!(new.identity.node_id, "m1");
        assert_eq!(new.identity.role, flotilla_pki::PeerRole::Manager);
        // The cluster's validity, counted from now.
        let life = new.not_after.duration_since(new.issued_at()).unwrap();
        assert_eq!(life, Duration::from_secs(40));
        // On disk and live.
        assert_eq!(
            r.files.load().unwrap().unwrap().identity.serial,
            new.identity.serial
        );
        assert_eq!(r.live.current().identity.serial, new.identity.serial);
        // Recorded on the node.
        assert!(r.record().await.unwrap());
        let node = r.store.read().nodes["m1"].clone();
        assert_eq!(node.cert_serial, new.identity.serial);
        assert_eq!(node.cert_expires_at, unix_ms(new.not_after));
        assert!(recorded(&node, &new).is_none());
    }

    #[tokio::test]
    async fn removed_or_demoted_managers_do_not_renew_themselves() {
        let s = setup(NodeRole::Worker, Duration::from_secs(3600), due_certificate).await;
        let serial = s.renewer.live.current().identity.serial;
        let e = s.renewer.renew_now().unwrap_err().to_string();
        assert!(e.contains("no longer a manager"), "{e}");
        assert_eq!(s.renewer.live.current().identity.serial, serial);

        let mut state = State::default();
        state.cluster = Some(Cluster::default());
        let e = may_renew(&state, "m1").unwrap_err().to_string();
        assert!(e.contains("removed from the cluster"), "{e}");
        let e = may_renew(&State::default(), "m1").unwrap_err().to_string();
        assert!(e.contains("catching up"), "{e}");
    }

    /// Runs the loop until `done` holds of (store, live) or 5 s passed; then stops it.
    async fn run_until(s: Setup, done: impl Fn(&Store, &LiveTls) -> bool) -> bool {
        let (store, live) = (s.renewer.store.clone(), s.renewer.live.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(s.renewer.run(stop_rx));
        let mut ok = false;
        for _ in 0..250 {
            if done(&store, &live) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the loop stops when told")
            .unwrap();
        ok
    }

    #[tokio::test]
    async fn the_loop_records_a_certificate_that_is_not_due_and_keeps_it() {
        let s = setup(
            NodeRole::Manager,
            Duration::from_secs(3600),
            hour_certificate,
        )
        .await;
        let first = s.renewer.live.current().identity.serial;
        let want = first.clone();
        let recorded = run_until(s, move |store, live| {
            store.read().nodes["m1"].cert_serial == want && live.current().identity.serial == want
        })
        .await;
        assert!(recorded, "the first certificate was never recorded");
    }

    #[tokio::test]
    async fn the_loop_renews_a_due_certificate_at_once() {
        let s = setup(
            NodeRole::Manager,
            Duration::from_secs(3600),
            due_certificate,
        )
        .await;
        let first = s.renewer.live.current().identity.serial;
        let files = s.renewer.files.clone();
        let renewed = run_until(s, move |store, live| {
            let cur = live.current().identity.serial;
            cur != first
                && store.read().nodes["m1"].cert_serial == cur
                && files.load().unwrap().unwrap().identity.serial == cur
        })
        .await;
        assert!(
            renewed,
            "the due certificate was not renewed, saved and recorded"
        );
    }
}
