//! The agent's membership of a cluster: joining once with a worker token (the CA is checked
//! against the token's digest before the token is sent), then reloading the node certificate
//! at each start, renewing it before it expires, and remembering the managers to dial.
//!
//! State (`<state>/cluster/`): `tls/` (`flotilla_pki::NodeTlsFiles`: CA, certificate bound to
//! this node's id, key 0600) and `managers.json` (the last known manager addresses). A node that
//! holds a certificate never sends a token again; joining another cluster needs a fresh state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_pki::{
    client_config, fetch_and_verify_root_ca, JoinToken, LiveTls, NodeKey, NodeTls, NodeTlsFiles,
    Role,
};
use flotilla_proto::control::v1::{
    node_ca_client::NodeCaClient, IssueNodeCertificateRequest, NodeDescription, NodeRole,
    RenewNodeCertificateRequest,
};
use tracing::{info, warn};

/// Why the agent could not join or load its membership.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("{0}")]
    Pki(#[from] flotilla_pki::CaError),
    #[error("the cluster at {addr} refused to join: {message}")]
    Refused { addr: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the agent needs to talk to the cluster.
pub struct Membership {
    pub files: NodeTlsFiles,
    pub tls: NodeTls,
    pub managers: Vec<String>,
    dir: PathBuf,
}

fn managers_path(dir: &Path) -> PathBuf {
    dir.join("managers.json")
}

impl Membership {
    /// Loads the membership from `<state_dir>/cluster`, or joins with `join` = (addr, token)
    /// when there is none yet. A `join` given to an agent that is already a member only adds
    /// `addr` to the managers to try.
    pub async fn load_or_join(
        state_dir: &Path,
        join: Option<(&str, &str)>,
        description: NodeDescription,
    ) -> Result<Option<Membership>, MembershipError> {
        let dir = state_dir.join("cluster");
        let files = NodeTlsFiles::new(dir.join("tls"));
        if let Some(tls) = files.load()? {
            let mut managers = read_managers(&dir);
            if let Some((addr, _)) = join {
                if !managers.iter().any(|m| m == addr) {
                    managers.insert(0, addr.to_string());
                }
            }
            info!(node = %tls.identity.node_id, "member of cluster {}", tls.identity.cluster_id);
            return Ok(Some(Membership {
                files,
                tls,
                managers,
                dir,
            }));
        }
        let Some((addr, token)) = join else {
            return Ok(None);
        };
        let token = JoinToken::parse(token)?;
        if token.role() != Role::Worker {
            return Err(MembershipError::Usage(
                "this is a manager token: managers join with `flotilla-controller join`; agents need the worker token (`flotilla cluster join-token worker`)".into(),
            ));
        }
        let ca_pem = fetch_and_verify_root_ca(addr, &token).await?;
        let key = NodeKey::generate()?;
        let mut client =
            NodeCaClient::new(flotilla_pki::channel(addr, client_config(&ca_pem, None)?));
        let issued = client
            .issue_node_certificate(IssueNodeCertificateRequest {
                token: token.to_string(),
                csr_pem: key.csr_pem.clone(),
                description: Some(description),
            })
            .await
            .map_err(|s| MembershipError::Refused {
                addr: addr.to_string(),
                message: s.message().to_string(),
            })?
            .into_inner();
        if issued.role != NodeRole::Worker as i32 {
            return Err(MembershipError::Usage(
                "the cluster issued a manager certificate to an agent: use the worker token".into(),
            ));
        }
        let tls = files.save(&ca_pem, &issued.cert_pem, &key.key_pem)?;
        let mut managers = issued.manager_addrs;
        if !managers.iter().any(|m| m == addr) {
            managers.insert(0, addr.to_string());
        }
        let m = Membership {
            files,
            tls,
            managers,
            dir,
        };
        m.save_managers(&m.managers)?;
        info!(node = %issued.node_id, "joined the cluster as a worker");
        Ok(Some(m))
    }

    /// Remembers the managers the cluster told us about (for the next start).
    pub fn save_managers(&self, managers: &[String]) -> Result<(), MembershipError> {
        let path = managers_path(&self.dir);
        let tmp = self.dir.join(".managers.json.tmp");
        let data = serde_json::to_vec(managers).unwrap_or_default();
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| MembershipError::Io { what, path, source }
        };
        std::fs::write(&tmp, data).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("write", &path))?;
        Ok(())
    }

    /// `<state>/cluster`: everything the membership keeps.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This node's certificate as the agent's connections present it, replaced in place by
    /// [`renew_loop`].
    pub fn live_tls(&self) -> Result<LiveTls, MembershipError> {
        Ok(LiveTls::new(self.tls.clone())?)
    }
}

fn read_managers(dir: &Path) -> Vec<String> {
    std::fs::read(managers_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Renews the node certificate at two thirds of its life (retrying after
/// `NodeTls::retry_delay` on failure), or at once when `now` is notified (the node's role
/// changed), and installs each new one in `live`, which every connection of the agent (the
/// session to the managers, the TCP API) presents from its next handshake on. Ends with `stop`
/// (the node left the cluster: nothing may write its certificate again).
pub async fn renew_loop(
    files: NodeTlsFiles,
    live: LiveTls,
    managers: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    now: Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let tls = live.current();
        let wait = tls
            .renew_at()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = now.notified() => {}
            _ = stop.cancelled() => return,
        }
        let known = managers();
        let renewed = tokio::select! {
            r = renew_once(&files, &live, &known) => r,
            _ = stop.cancelled() => return,
        };
        match renewed {
            Ok(new) => {
                info!(serial = %new.identity.serial, expires = ?new.not_after, "node certificate renewed");
                let now = std::time::SystemTime::now();
                if new.expires_soon(now) {
                    // Its life was capped (the root CA expires soon): don't ask again at once.
                    let retry = new.retry_delay(now);
                    warn!(expires = ?new.not_after, retry_in = ?retry,
                        "the renewed certificate is already due for renewal: the root CA expires soon");
                    tokio::time::sleep(retry).await;
                }
            }
            Err(e) => {
                let retry = tls.retry_delay(std::time::SystemTime::now());
                warn!(error = %e, retry_in = ?retry, "cannot renew the node certificate");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = now.notified() => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

async fn renew_once(
    files: &NodeTlsFiles,
    live: &LiveTls,
    managers: &[String],
) -> Result<NodeTls, MembershipError> {
    let tls = live.current();
    let key = NodeKey::generate()?;
    let cfg = live.client_config();
    let mut last = None;
    for addr in managers {
        let mut client = NodeCaClient::new(flotilla_pki::channel(addr, Arc::clone(&cfg)));
        match client
            .renew_node_certificate(RenewNodeCertificateRequest {
                csr_pem: key.csr_pem.clone(),
            })
            .await
        {
            Ok(r) => {
                let new = files.save(&tls.ca_pem, &r.into_inner().cert_pem, &key.key_pem)?;
                live.replace(new.clone())?;
                return Ok(new);
            }
            Err(s) => {
                last = Some(MembershipError::Refused {
                    addr: addr.clone(),
                    message: s.message().to_string(),
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| MembershipError::Usage("no manager known to renew with".into())))
}
