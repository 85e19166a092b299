//! Running a manager: its state directory, the one mTLS port that serves everything (Control,
//! NodeCA, Dispatcher, Raft), raft over the store, and the leader-only loops.
//!
//! State directory: `manager.json` (identity: node id, raft id, cluster id, addresses),
//! `tls/` (this manager's certificate, see `flotilla_pki::NodeTlsFiles`; renewed in place by
//! `super::renew`), `data.key` (seals secrets and the CA key in the log; 0600), `raft/` (the
//! durable log and snapshots).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use flotilla_pki::{
    client_config, fetch_and_verify_root_ca, tls_incoming, DataKey, JoinToken, LiveTls,
    MtlsConnector, NodeKey, NodeTls, NodeTlsFiles, PeerRole, Role, RootCa,
};
use flotilla_proto::control::v1::{
    self as pb, control_server::ControlServer, dispatcher_server::DispatcherServer,
    node_ca_client::NodeCaClient, node_ca_server::NodeCaServer, Cluster, ClusterSpec, Meta, Node,
    NodeAvailability, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus,
};
use flotilla_proto::raft::v1 as rpb;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use super::loops;
use super::proposer::{BoxFuture, ProposeError, Proposer};
use crate::api::{control::ControlService, nodeca::NodeCaService, Ctx, Membership, RaftSummary};
use crate::dispatcher::{now_ms, Dispatcher, SecretOpener};
use crate::raft::{
    Bootstrap, Connector, RaftConfig, RaftError, RaftNode, RaftService, StateMachine,
};
use crate::store::{Batch, Store};

/// How a manager starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// A new cluster whose first manager this is.
    Init,
    /// A new cluster from this manager's existing state (the others are gone for good).
    ForceNewCluster,
    /// Join the cluster of the manager at `addr` with a manager token.
    Join { addr: String, token: String },
    /// Join the cluster of the manager at `addr` as the node whose certificate is in `tls_dir`
    /// (a promoted node: its agent's certificate, renewed as a manager's after `node promote`).
    JoinAsNode { addr: String, tls_dir: PathBuf },
    /// Restart from the state directory.
    Restart,
}

/// Settings of one manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub state_dir: PathBuf,
    /// Where to listen (all of Control, NodeCA, Dispatcher and Raft).
    pub listen: SocketAddr,
    /// host:port other managers and agents dial (default: the listen address).
    pub advertise: String,
    /// Raft election timeout (rounded to 100 ms ticks; default 1 s).
    pub election_timeout: Duration,
    /// Agent heartbeat period written into a new cluster's spec (default 1 s).
    pub heartbeat_period: Duration,
    /// Where `init` writes the admin context for the CLI (None: don't).
    pub config_dir: Option<PathBuf>,
    /// The name of the admin context `init` writes.
    pub context_name: String,
    /// Applied entries between raft snapshots.
    pub snapshot_interval: u64,
    /// Validity of node certificates written into a new cluster's spec (and of the first
    /// manager's own certificate); nodes renew at two thirds of it.
    pub cert_expiry: Duration,
}

/// What a manager remembers about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: String,
    pub raft_id: u64,
    pub cluster_id: String,
    pub advertise: String,
}

const IDENTITY_FILE: &str = "manager.json";

fn identity_path(dir: &Path) -> PathBuf {
    dir.join(IDENTITY_FILE)
}

fn save_identity(dir: &Path, id: &Identity) -> anyhow::Result<()> {
    let path = identity_path(dir);
    let tmp = dir.join(".manager.json.tmp");
    let data = serde_json::to_vec_pretty(id)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn load_identity(dir: &Path) -> anyhow::Result<Option<Identity>> {
    let path = identity_path(dir);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!("{} is corrupt: restore it from a backup", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The store as raft's state machine (readers share the same `Store`).
struct StoreMachine(Store);

impl StateMachine for StoreMachine {
    fn apply(&mut self, index: u64, command: &[u8]) -> Result<Vec<u8>, String> {
        self.0.apply_command(index, command)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot_bytes()
    }
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), String> {
        self.0.restore_bytes(index, data)
    }
}

struct Mtls(MtlsConnector);

impl Connector for Mtls {
    fn channel(&self, addr: &str) -> tonic::transport::Channel {
        self.0.channel(addr)
    }
}

/// Writes through raft.
struct RaftProposer(RaftNode<StoreMachine>);

fn propose_error(e: RaftError) -> ProposeError {
    match e {
        RaftError::Refused(m) => ProposeError::Refused(m),
        other => ProposeError::Unavailable(other.to_string()),
    }
}

impl Proposer for RaftProposer {
    fn propose(&self, batch: pb::StoreBatch) -> BoxFuture<'_, Result<u64, ProposeError>> {
        Box::pin(async move {
            use prost::Message;
            let (index, _) = self
                .0
                .propose(batch.encode_to_vec())
                .await
                .map_err(propose_error)?;
            Ok(index)
        })
    }
    fn read_barrier(&self) -> BoxFuture<'_, Result<(), ProposeError>> {
        Box::pin(async move { self.0.read_barrier().await.map_err(propose_error) })
    }
}

struct RaftMembership(RaftNode<StoreMachine>);

impl Membership for RaftMembership {
    fn summary(&self) -> RaftSummary {
        let s = self.0.status();
        RaftSummary {
            raft_id: s.raft_id,
            leader_raft_id: s.leader_id,
            term: s.term,
            commit_index: s.commit_index,
            members: s
                .members
                .iter()
                .map(|m| (m.raft_id, m.addr.clone(), m.node_id.clone()))
                .collect(),
            reachable: s.reachable_ids,
            learners: s.learners,
        }
    }
    fn add_member(
        &self,
        raft_id: u64,
        addr: String,
        node_id: String,
    ) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let members = self
                .0
                .add_member(raft_id, addr, node_id)
                .await
                .map_err(|e| e.to_string())?;
            Ok(members.into_iter().map(|m| m.addr).collect())
        })
    }
    fn remove_member(&self, raft_id: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.0
                .remove_member(raft_id)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// The Raft service, only for manager certificates whose node is a member of this manager's
/// raft configuration or a manager of its store (a removed node keeps a valid certificate until
/// it expires). Either is enough: a manager behind may not have applied the store write or the
/// configuration change that made the caller — maybe the current leader — a manager yet.
struct GuardedRaft(RaftService<StoreMachine>, Store, RaftNode<StoreMachine>);

impl GuardedRaft {
    fn require_manager<T>(&self, req: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let id = flotilla_pki::peer_identity(req)?;
        if id.role != PeerRole::Manager {
            return Err(tonic::Status::permission_denied(
                "only managers speak raft on this port",
            ));
        }
        let known = self
            .1
            .read()
            .nodes
            .get(&id.node_id)
            .is_some_and(|n| n.role == NodeRole::Manager as i32)
            || self
                .2
                .status()
                .members
                .iter()
                .any(|m| m.node_id == id.node_id);
        // An empty store is a joining manager's, before its first snapshot arrives.
        if !known && self.1.read().cluster.is_some() {
            return Err(tonic::Status::permission_denied(format!(
                "node {} is not a manager of this cluster",
                id.node_id
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl rpb::raft_server::Raft for GuardedRaft {
    async fn send(
        &self,
        req: tonic::Request<tonic::Streaming<rpb::RaftEnvelope>>,
    ) -> Result<tonic::Response<rpb::SendAck>, tonic::Status> {
        self.require_manager(&req)?;
        self.0.send(req).await
    }
    async fn propose(
        &self,
        req: tonic::Request<rpb::ProposeRequest>,
    ) -> Result<tonic::Response<rpb::ProposeResponse>, tonic::Status> {
        self.require_manager(&req)?;
        self.0.propose(req).await
    }
    async fn read_index(
        &self,
        req: tonic::Request<rpb::ReadIndexRequest>,
    ) -> Result<tonic::Response<rpb::ReadIndexResponse>, tonic::Status> {
        self.require_manager(&req)?;
        self.0.read_index(req).await
    }
    async fn change_membership(
        &self,
        req: tonic::Request<rpb::ChangeMembershipRequest>,
    ) -> Result<tonic::Response<rpb::ChangeMembershipResponse>, tonic::Status> {
        self.require_manager(&req)?;
        self.0.change_membership(req).await
    }
    async fn status(
        &self,
        req: tonic::Request<rpb::StatusRequest>,
    ) -> Result<tonic::Response<rpb::StatusResponse>, tonic::Status> {
        self.require_manager(&req)?;
        self.0.status(req).await
    }
}

/// The Dispatcher service: sessions on the leader, redirects elsewhere.
struct DispatcherService {
    dispatcher: Arc<Dispatcher>,
    membership: Arc<RaftMembership>,
}

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for DispatcherService {
    type SessionStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::DispatcherMessage, tonic::Status>>;

    async fn session(
        &self,
        req: tonic::Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
        let id = flotilla_pki::peer_identity(&req)?;
        if id.role == PeerRole::Admin {
            return Err(tonic::Status::permission_denied(
                "an admin certificate has no node to open a session for",
            ));
        }
        let summary = self.membership.summary();
        if !summary.is_leader() {
            let mut status = tonic::Status::failed_precondition(
                "this manager is not the leader: reconnect to the leader",
            );
            if let Some(addr) = summary.leader_addr() {
                if let Ok(v) = addr.parse() {
                    status.metadata_mut().insert("flotilla-leader", v);
                }
            }
            return Err(status);
        }
        let addr = flotilla_pki::peer_addr(&req)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let rx = self
            .dispatcher
            .session(id.node_id, addr, req.into_inner())
            .await?;
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

/// A running manager.
pub struct Manager {
    pub identity: Identity,
    pub store: Store,
    raft: RaftNode<StoreMachine>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    loops: tokio::task::JoinHandle<()>,
    removed: watch::Receiver<bool>,
    state_dir: PathBuf,
    data_key: Arc<DataKey>,
}

impl Manager {
    /// Prepares the state directory as `start` says, then runs the manager's server and raft.
    pub async fn start(cfg: ManagerConfig, start: Start) -> anyhow::Result<Manager> {
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("cannot create {}", cfg.state_dir.display()))?;
        let existing = load_identity(&cfg.state_dir)?;
        // Listen first: a joining manager becomes a raft voter during `join`, and its peers must
        // find the port open (and a port in use must fail the join before it changes anything).
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let tls_files = NodeTlsFiles::new(cfg.state_dir.join("tls"));
        let key_path = cfg.state_dir.join("data.key");
        let mut new_cluster: Option<(RootCa, DataKey)> = None;
        let (identity, bootstrap) = match (&start, existing) {
            (Start::Init, Some(id))
            | (Start::Join { .. }, Some(id))
            | (Start::JoinAsNode { .. }, Some(id)) => bail!(
                "{} already holds manager {} of cluster {}: restart it with `flotilla-controller serve --state-dir {}`, or use an empty directory",
                cfg.state_dir.display(),
                id.node_id,
                id.cluster_id,
                cfg.state_dir.display()
            ),
            (Start::Restart, None) | (Start::ForceNewCluster, None) => bail!(
                "{} holds no manager state: start a cluster with `flotilla-controller init`, or join one with `flotilla-controller join`",
                cfg.state_dir.display()
            ),
            (Start::Restart, Some(id)) => (id, Bootstrap::Restart),
            (Start::ForceNewCluster, Some(id)) => (id, Bootstrap::ForceNewCluster),
            (Start::Init, None) => {
                // `manager.json` is written only once the cluster object (which holds the only
                // copy of the sealed CA key) is committed: anything else here is an init that
                // died half-way, started over from nothing.
                for leftover in ["raft", "tls"] {
                    let p = cfg.state_dir.join(leftover);
                    if p.exists() {
                        warn!(path = %p.display(), "removing the state of an unfinished init");
                        std::fs::remove_dir_all(&p)
                            .with_context(|| format!("cannot remove {}", p.display()))?;
                    }
                }
                if key_path.exists() {
                    std::fs::remove_file(&key_path)
                        .with_context(|| format!("cannot remove {}", key_path.display()))?;
                }
                let cluster_id = super::random_id();
                let node_id = super::random_id();
                let ca = RootCa::generate(&cluster_id)?;
                let data_key = DataKey::load_or_create(&key_path)?;
                let key = NodeKey::generate()?;
                let issued = ca.issue(&key.csr_pem, &node_id, Role::Manager, cfg.cert_expiry)?;
                tls_files.save(ca.cert_pem(), &issued.cert_pem, &key.key_pem)?;
                let id = Identity {
                    node_id: node_id.clone(),
                    raft_id: random_raft_id(),
                    cluster_id,
                    advertise: cfg.advertise.clone(),
                };
                new_cluster = Some((ca, data_key));
                (id, Bootstrap::NewCluster { node_id })
            }
            (Start::Join { addr, token }, None) => {
                let id = join_as_manager(&cfg, addr, token, &tls_files, &key_path).await?;
                (id, Bootstrap::Join)
            }
            (Start::JoinAsNode { addr, tls_dir }, None) => {
                let id = join_as_node(&cfg, addr, tls_dir, &tls_files, &key_path).await?;
                (id, Bootstrap::Join)
            }
        };
        let tls = tls_files.load()?.with_context(|| {
            format!(
                "{} has no certificate: the state directory is incomplete",
                tls_files.dir().display()
            )
        })?;
        let data_key = Arc::new(DataKey::load(&key_path)?);
        if new_cluster.is_none() {
            save_identity(&cfg.state_dir, &identity)?;
        }

        let store = Store::new();
        // Every port and dial of this manager presents the certificate `live` holds at each
        // handshake; the renewal loop replaces it.
        let live = LiveTls::new(tls.clone())?;
        let client_cfg = live.client_config();
        let connector = Arc::new(Mtls(MtlsConnector::new(Arc::clone(&client_cfg))));
        let mut rcfg = RaftConfig::new(
            identity.raft_id,
            cfg.state_dir.join("raft"),
            identity.advertise.clone(),
        );
        rcfg.election_ticks =
            ((cfg.election_timeout.as_millis() as u64 / rcfg.tick_ms).max(3)) as usize;
        rcfg.snapshot_interval = cfg.snapshot_interval;
        let raft = RaftNode::start(
            rcfg,
            bootstrap,
            StoreMachine(store.clone()),
            connector.clone(),
        )
        .await
        .context("cannot start raft")?;
        let proposer: Arc<dyn Proposer> = Arc::new(RaftProposer(raft.clone()));
        let membership = Arc::new(RaftMembership(raft.clone()));
        let opener_key = Arc::clone(&data_key);
        let open_secret: SecretOpener = Arc::new(move |s: &pb::Secret| {
            opener_key
                .open(&s.data_sealed, s.id.as_bytes())
                .map_err(|e| e.to_string())
        });
        let addrs_view = Arc::clone(&membership);
        let dispatcher = Dispatcher::new(
            store.clone(),
            Arc::clone(&proposer),
            open_secret,
            Arc::new(move || {
                addrs_view
                    .summary()
                    .members
                    .into_iter()
                    .map(|m| m.1)
                    .collect()
            }),
        );
        let dial_cfg = Arc::clone(&client_cfg);
        let ctx = Arc::new(Ctx {
            store: store.clone(),
            proposer: Arc::clone(&proposer),
            membership: membership.clone(),
            dispatcher: Arc::clone(&dispatcher),
            data_key: Arc::clone(&data_key),
            node_id: identity.node_id.clone(),
            dial: Arc::new(move |addr: &str| flotilla_pki::channel(addr, Arc::clone(&dial_cfg))),
        });
        let (stop, stop_rx) = watch::channel(false);
        let incoming = tls_incoming(listener, live.server_config());
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .add_service(ControlServer::new(ControlService {
                ctx: Arc::clone(&ctx),
            }))
            .add_service(NodeCaServer::new(NodeCaService {
                ctx: Arc::clone(&ctx),
            }))
            .add_service(DispatcherServer::new(DispatcherService {
                dispatcher: Arc::clone(&dispatcher),
                membership: membership.clone(),
            }))
            .add_service(
                rpb::raft_server::RaftServer::new(GuardedRaft(
                    RaftService::new(raft.clone()),
                    store.clone(),
                    raft.clone(),
                ))
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
            );
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                warn!(error = %e, "the manager's server stopped");
            }
        });
        info!(
            node = %identity.node_id,
            raft_id = identity.raft_id,
            addr = %identity.advertise,
            "manager started"
        );

        // A new cluster writes its cluster object and this manager's node once it leads.
        if let Some((ca, data_key)) = new_cluster {
            wait_leader(&raft, Duration::from_secs(10)).await?;
            let c = new_cluster_object(&identity, &ca, &data_key, &cfg)?;
            let node = manager_node(&identity, &tls);
            let mut b = Batch::new();
            b.create(c).create(node);
            proposer
                .propose(b.into_proto())
                .await
                .map_err(|e| anyhow::anyhow!("cannot write the new cluster: {e}"))?;
            if let Some(dir) = &cfg.config_dir {
                write_admin_context(dir, &cfg.context_name, &ca, &identity.advertise)?;
            }
            // From here on the state dir is a manager's: `serve` restarts it.
            save_identity(&cfg.state_dir, &identity)?;
        }

        tokio::spawn(
            super::renew::Renewer {
                live,
                files: tls_files,
                store: store.clone(),
                proposer: Arc::clone(&proposer),
                data_key: Arc::clone(&data_key),
            }
            .run(stop_rx.clone()),
        );
        let loops = tokio::spawn(loops::leader_loops(
            raft.leadership(),
            store.clone(),
            Arc::clone(&proposer),
            Arc::clone(&dispatcher),
            membership.clone() as Arc<dyn Membership>,
            identity.clone(),
            stop_rx.clone(),
        ));
        let (removed_tx, removed) = watch::channel(false);
        tokio::spawn(removal_watch(
            raft.clone(),
            identity.clone(),
            connector,
            removed_tx,
            stop_rx,
        ));
        Ok(Manager {
            identity,
            store,
            raft,
            stop,
            server,
            loops,
            removed,
            state_dir: cfg.state_dir.clone(),
            data_key,
        })
    }

    /// The cluster's current join token for `role` (for `init` to print).
    pub fn join_token(&self, role: Role) -> anyhow::Result<String> {
        let c = self
            .store
            .read()
            .cluster
            .clone()
            .context("the cluster has no cluster object yet")?;
        crate::api::join_token(&c, role, &self.data_key)
            .map_err(|s| anyhow::anyhow!("{}", s.message()))
    }

    /// raft's view of the cluster.
    pub fn raft_status(&self) -> crate::raft::RaftStatus {
        self.raft.status()
    }

    /// Resolves once this manager has been removed from the raft group (demoted, or left the
    /// cluster): it then has nothing left to do but [`Manager::shutdown_removed`].
    pub async fn removed(&self) {
        let mut rx = self.removed.clone();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Shuts a removed manager down and deletes its state (raft log, certificate, data key,
    /// identity): it is no member any more, and `serve` must not bring the old log back.
    pub async fn shutdown_removed(self) -> anyhow::Result<()> {
        let dir = self.state_dir.clone();
        self.shutdown().await;
        forget_state(&dir)
    }

    /// Stops serving and shuts raft down (state stays on disk).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        // Unary calls finish within this; long-lived streams (peers' raft streams, agents'
        // sessions, followed logs) never would and are cut: their clients reconnect elsewhere.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.server).await;
        let _ = self.loops.await;
        self.raft.shutdown().await;
    }
}

/// Deletes a removed manager's state: `manager.json` first (so a crash half-way leaves a
/// directory `serve` refuses and `join` starts over in), then the rest.
fn forget_state(dir: &Path) -> anyhow::Result<()> {
    let id = identity_path(dir);
    if id.exists() {
        std::fs::remove_file(&id).with_context(|| format!("cannot remove {}", id.display()))?;
    }
    for sub in ["raft", "tls"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    let key = dir.join("data.key");
    if key.exists() {
        std::fs::remove_file(&key).with_context(|| format!("cannot remove {}", key.display()))?;
    }
    Ok(())
}

/// Whether this manager's applied raft configuration says it was removed: it was a member and
/// no longer is. (The local store is no evidence: a joiner replaying the log sees the cluster
/// long before its own node, a promoted node sees itself a worker until the promotion.)
fn removed_locally(saw_self: bool, st: &crate::raft::RaftStatus) -> bool {
    saw_self && !st.members.is_empty() && !st.members.iter().any(|m| m.raft_id == st.raft_id)
}

/// Watches for this manager's removal from the raft group. A removed member may never learn it
/// from raft (the leader stops talking to it once the change is applied), so when it has had no
/// leader, or a configuration without itself, for a while it asks the members it knows: their
/// raft port refuses a node the store no longer knows as a manager.
async fn removal_watch(
    raft: RaftNode<StoreMachine>,
    identity: Identity,
    connector: Arc<Mtls>,
    removed: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut saw_self = false;
    let mut leaderless_since: Option<std::time::Instant> = None;
    let patience = raft.election_timeout() * 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
        let st = raft.status();
        saw_self |= st.members.iter().any(|m| m.raft_id == st.raft_id);
        let mut gone = removed_locally(saw_self, &st);
        // No leader, a leader not heard from, or a configuration without this manager (a
        // removed member is not promotable: it never campaigns, and keeps its old leader).
        let unsure = st.leader_id == 0
            || (!st.is_leader && !st.reachable_ids.contains(&st.leader_id))
            || (!st.members.is_empty() && !st.members.iter().any(|m| m.raft_id == st.raft_id));
        if !gone && unsure {
            let since = *leaderless_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= patience {
                leaderless_since = Some(std::time::Instant::now());
                // A majority of the other members must refuse it: one peer whose store is
                // behind (down since before this manager joined) must not make it wipe itself.
                // Voters only: a learner still replaying the log may not know this one yet.
                let others: Vec<String> = st
                    .members
                    .iter()
                    .filter(|m| m.raft_id != st.raft_id && !st.learners.contains(&m.raft_id))
                    .map(|m| m.addr.clone())
                    .collect();
                let mut asks = tokio::task::JoinSet::new();
                for addr in others.clone() {
                    let mut c = rpb::raft_client::RaftClient::new(connector.0.channel(&addr));
                    asks.spawn(async move {
                        let asked = tokio::time::timeout(
                            Duration::from_secs(2),
                            c.status(rpb::StatusRequest {}),
                        )
                        .await;
                        matches!(asked, Ok(Err(s)) if s.code() == tonic::Code::PermissionDenied
                            && s.message().contains("is not a manager of this cluster"))
                    });
                }
                let mut refused = 0;
                while let Some(r) = asks.join_next().await {
                    refused += usize::from(r.unwrap_or(false));
                }
                if !others.is_empty() && refused > others.len() / 2 {
                    info!(
                        refused,
                        of = others.len(),
                        "the other managers no longer know this one as a manager"
                    );
                    gone = true;
                }
            }
        } else {
            leaderless_since = None;
        }
        if gone {
            warn!(node = %identity.node_id, "this manager was removed from the cluster (demoted or left): stopping");
            let _ = removed.send(true);
            return;
        }
    }
}

fn random_raft_id() -> u64 {
    loop {
        let id = rand::random::<u64>() >> 1;
        if id != 0 {
            return id;
        }
    }
}

async fn wait_leader(raft: &RaftNode<StoreMachine>, limit: Duration) -> anyhow::Result<()> {
    let mut rx = raft.leadership();
    tokio::time::timeout(limit, rx.wait_for(|l| l.is_leader))
        .await
        .context("this manager did not become the leader of its new cluster")?
        .context("raft stopped")?;
    Ok(())
}

fn new_cluster_object(
    id: &Identity,
    ca: &RootCa,
    data_key: &DataKey,
    cfg: &ManagerConfig,
) -> anyhow::Result<Cluster> {
    let now = now_ms();
    let mut c = Cluster {
        id: id.cluster_id.clone(),
        meta: Some(Meta {
            version: 0,
            created_at: now,
            updated_at: now,
        }),
        spec: Some(ClusterSpec {
            name: "default".into(),
            task_history_limit: 5,
            heartbeat_period_ms: cfg.heartbeat_period.as_millis() as u64,
            node_cert_expiry_secs: cfg.cert_expiry.as_secs(),
        }),
        root_ca_cert: ca.cert_pem().to_string(),
        root_ca_key_sealed: ca.seal_key(data_key)?,
        ..Default::default()
    };
    for role in [Role::Worker, Role::Manager] {
        let token = JoinToken::generate(ca.digest(), role)?.to_string();
        crate::api::set_join_token(&mut c, role, &token, data_key)?;
    }
    Ok(c)
}

/// The node object of a manager (with its certificate `tls`): it runs no agent, so it is never a
/// scheduling target unless an agent registers a session for it.
fn manager_node(id: &Identity, tls: &NodeTls) -> Node {
    let now = now_ms();
    Node {
        id: id.node_id.clone(),
        meta: Some(Meta {
            version: 0,
            created_at: now,
            updated_at: now,
        }),
        spec: Some(NodeSpec {
            desired_role: NodeRole::Manager as i32,
            availability: NodeAvailability::Active as i32,
            labels: Default::default(),
        }),
        description: Some(local_description()),
        status: Some(NodeStatus {
            state: NodeState::Unknown as i32,
            message: "manager (no agent on this node)".into(),
            addr: id.advertise.clone(),
            last_heartbeat: 0,
        }),
        manager_status: None,
        role: NodeRole::Manager as i32,
        cert_expires_at: tls
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        cert_serial: tls.identity.serial.clone(),
    }
}

fn local_description() -> NodeDescription {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    NodeDescription {
        hostname,
        platform: Some(pb::Platform {
            os: "linux".into(),
            architecture: std::env::consts::ARCH.into(),
        }),
        resources: None,
        engine_version: env!("CARGO_PKG_VERSION").into(),
        engine_labels: Default::default(),
    }
}

async fn join_as_manager(
    cfg: &ManagerConfig,
    addr: &str,
    token: &str,
    tls_files: &NodeTlsFiles,
    key_path: &Path,
) -> anyhow::Result<Identity> {
    let token = JoinToken::parse(token)?;
    if token.role() != Role::Manager {
        bail!("this is a worker token: workers join with `flotilla-agent serve --join {addr} --token …`; managers need the manager token (`flotilla cluster join-token manager`)");
    }
    let ca_pem = fetch_and_verify_root_ca(addr, &token).await?;
    let key = NodeKey::generate()?;
    let anon = client_config(&ca_pem, None)?;
    let mut ca_client = NodeCaClient::new(flotilla_pki::channel(addr, anon));
    let issued = ca_client
        .issue_node_certificate(pb::IssueNodeCertificateRequest {
            token: token.to_string(),
            csr_pem: key.csr_pem.clone(),
            description: Some(local_description()),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the cluster refused to join: {}", s.message()))?
        .into_inner();
    if issued.role != NodeRole::Manager as i32 {
        bail!("the cluster issued a worker certificate: use the manager token");
    }
    let tls = tls_files.save(&ca_pem, &issued.cert_pem, &key.key_pem)?;
    enter_raft_group(cfg, addr, &tls, key_path).await
}

/// Joins as the node whose manager certificate `tls_dir` holds (no token: the certificate is
/// the credential, and the node keeps its id).
async fn join_as_node(
    cfg: &ManagerConfig,
    addr: &str,
    tls_dir: &Path,
    tls_files: &NodeTlsFiles,
    key_path: &Path,
) -> anyhow::Result<Identity> {
    let node = NodeTlsFiles::new(tls_dir.to_path_buf())
        .load()?
        .with_context(|| format!("{} holds no node certificate", tls_dir.display()))?;
    if node.identity.role != PeerRole::Manager {
        bail!(
            "node {}'s certificate is a worker's: promote the node first (`flotilla node promote {}`)",
            node.identity.node_id,
            node.identity.node_id
        );
    }
    let tls = tls_files.save(&node.ca_pem, &node.cert_pem, &node.key_pem)?;
    enter_raft_group(cfg, addr, &tls, key_path).await
}

/// Asks the cluster at `addr` to add this manager (certificate `tls`) to the raft group, and
/// keeps the data key it answers with.
async fn enter_raft_group(
    cfg: &ManagerConfig,
    addr: &str,
    tls: &flotilla_pki::NodeTls,
    key_path: &Path,
) -> anyhow::Result<Identity> {
    let mut ca_client = NodeCaClient::new(flotilla_pki::channel(addr, tls.client_config()?));
    let joined = ca_client
        .join_manager(pb::JoinManagerRequest {
            addr: cfg.advertise.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("cannot join the raft group: {}", s.message()))?
        .into_inner();
    let data_key = DataKey::from_bytes(&joined.data_key)?;
    write_private(key_path, hex::encode(data_key.to_bytes()).as_bytes())?;
    Ok(Identity {
        node_id: tls.identity.node_id.clone(),
        raft_id: joined.raft_id,
        cluster_id: tls.identity.cluster_id.clone(),
        advertise: cfg.advertise.clone(),
    })
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn write_admin_context(
    config_dir: &Path,
    name: &str,
    ca: &RootCa,
    controller: &str,
) -> anyhow::Result<()> {
    let key = NodeKey::generate()?;
    let issued = ca.issue_admin(&key.csr_pem, Duration::from_secs(365 * 24 * 3600))?;
    crate::cli::context::save_context(
        config_dir,
        &crate::cli::context::ContextMeta {
            name: name.to_string(),
            description: format!("admin of cluster {}", ca.cluster_id()),
            controller: controller.to_string(),
        },
        ca.cert_pem(),
        &issued.cert_pem,
        &key.key_pem,
        true,
    )?;
    info!(context = name, dir = %config_dir.display(), "wrote the admin context for the CLI");
    Ok(())
}
