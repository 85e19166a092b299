//! The node's membership while the agent runs: leaving the cluster (`flotilla cluster leave`,
//! served on the agent's unix socket), and the manager process a promoted node runs.
//!
//! Promotion works like Swarm's: `node promote` changes the node's role in the cluster; the
//! session tells the agent ([`pb::SessionInfo::role`]); the agent renews its certificate, which
//! now says manager, and starts `flotilla-controller join --node-tls <its certificate>` (then
//! `serve` on later starts) with its state under `<state>/manager`. The manager keeps the
//! node's id, so the node stays one node: it runs tasks and is a raft member. A demotion removes
//! the manager from the raft group; the manager notices, deletes its state and exits; the agent
//! renews its certificate as a worker's and does not start it again.
//!
//! The manager runs in its own process group, so an agent restart (or crash) leaves it running,
//! like containers under their shims; the agent finds it again through its pid file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_pki::{NodeTlsFiles, PeerRole};
use flotilla_proto::agent::v1 as apb;
use flotilla_proto::control::v1::{self as pb, node_ca_client::NodeCaClient, NodeRole};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::executor::Executor;

/// Where and how a promoted node runs its manager.
#[derive(Debug, Clone)]
pub struct ManagerSettings {
    /// The `flotilla-controller` binary.
    pub controller_bin: PathBuf,
    /// The manager's state directory (`<agent state>/manager`).
    pub state_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    pub listen: SocketAddr,
    /// host:port others dial; default: this host's address towards the cluster's managers,
    /// with the listen port.
    pub advertise: Option<String>,
}

/// The manager process of a promoted node.
pub struct ManagerProc {
    settings: ManagerSettings,
    child: Mutex<Option<std::process::Child>>,
    last_start: Mutex<Option<Instant>>,
    /// Joins tried so far (each goes through the next known manager).
    attempts: std::sync::atomic::AtomicUsize,
}

const PID_FILE: &str = "controller.pid";
/// Starts of the manager are at least this far apart (a manager that keeps failing is not
/// restarted in a tight loop; its log says why).
const RESTART_DELAY: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ManagerProc {
    pub fn new(settings: ManagerSettings) -> Self {
        ManagerProc {
            settings,
            child: Mutex::new(None),
            last_start: Mutex::new(None),
            attempts: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The pid of this node's manager if one runs (ours, or one an earlier agent started).
    pub fn running_pid(&self) -> Option<i32> {
        if let Some(c) = lock(&self.child).as_mut() {
            if let Ok(None) = c.try_wait() {
                return Some(c.id() as i32);
            }
        }
        let pid: i32 = std::fs::read_to_string(self.settings.state_dir.join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let dir = self.settings.state_dir.to_string_lossy().into_owned();
        let ours = cmdline.split(|b| *b == 0).any(|arg| arg == dir.as_bytes());
        ours.then_some(pid)
    }

    /// Whether the state directory holds a manager (`serve` can restart it).
    fn has_state(&self) -> bool {
        self.settings.state_dir.join("manager.json").exists()
    }

    /// Starts the manager unless it runs: `join` as this node the first time, `serve` after.
    pub fn ensure_running(&self, tls_dir: &Path, managers: &[String]) -> Result<(), String> {
        if self.running_pid().is_some() {
            return Ok(());
        }
        {
            let mut last = lock(&self.last_start);
            if last.is_some_and(|t| t.elapsed() < RESTART_DELAY) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let s = &self.settings;
        if !s.controller_bin.exists() {
            return Err(format!(
                "this node is promoted to manager but {} is missing: install flotilla-controller next to flotilla-agent (or give --controller-bin)",
                s.controller_bin.display()
            ));
        }
        if managers.is_empty() {
            return Err("no manager known to join through".into());
        }
        let attempt = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let first = &managers[attempt % managers.len()];
        let advertise = match &s.advertise {
            Some(a) => a.clone(),
            None => format!("{}:{}", local_ip_towards(first)?, s.listen.port()),
        };
        std::fs::create_dir_all(&s.state_dir)
            .map_err(|e| format!("cannot create {}: {e}", s.state_dir.display()))?;
        let mut cmd = std::process::Command::new(&s.controller_bin);
        if self.has_state() {
            cmd.arg("serve");
        } else {
            cmd.arg("join").arg("--node-tls").arg(tls_dir);
        }
        cmd.arg("--state-dir")
            .arg(&s.state_dir)
            .arg("--listen")
            .arg(s.listen.to_string())
            .arg("--advertise")
            .arg(&advertise);
        if !self.has_state() {
            cmd.arg(first);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .map_err(|e| format!("cannot open {}: {e}", s.log.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", s.log.display()))?;
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", s.controller_bin.display()))?;
        let pid = child.id();
        let _ = std::fs::write(s.state_dir.join(PID_FILE), pid.to_string());
        info!(pid, %advertise, log = %s.log.display(), "started this node's manager");
        *lock(&self.child) = Some(child);
        Ok(())
    }

    /// Stops the manager (SIGTERM, then SIGKILL after 10 s) and deletes its state.
    pub async fn stop_and_forget(&self) {
        if let Some(pid) = self.running_pid() {
            use nix::sys::signal::{kill, Signal};
            use nix::unistd::Pid;
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.running_pid().is_some() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if self.running_pid().is_some() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if let Some(mut c) = lock(&self.child).take() {
            let _ = c.wait();
        }
        if self.settings.state_dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.settings.state_dir) {
                warn!(error = %e, dir = %self.settings.state_dir.display(), "cannot remove the manager's state");
            }
        }
    }
}

/// The address this host uses to reach `addr` (host:port), without sending anything: a
/// connected UDP socket's local address.
fn local_ip_towards(addr: &str) -> Result<std::net::IpAddr, String> {
    let target = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| format!("cannot resolve manager address {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("manager address {addr} resolves to nothing"))?;
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = std::net::UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.connect(target)
        .map_err(|e| format!("no route to manager {addr}: {e}"))?;
    Ok(sock.local_addr().map_err(|e| e.to_string())?.ip())
}

/// Makes the certificate and the manager process follow the role the session reports, until
/// `stop`. `renew` wakes the certificate renewal loop.
pub async fn role_loop(
    files: NodeTlsFiles,
    mut info: watch::Receiver<Option<pb::SessionInfo>>,
    renew: Arc<Notify>,
    manager: Arc<ManagerProc>,
    managers: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    stop: CancellationToken,
) {
    let mut told: Option<String> = None;
    loop {
        let role = info.borrow_and_update().as_ref().map(|i| i.role);
        if let Some(role) = role {
            let want_manager = role == NodeRole::Manager as i32;
            let cert_role = files.load().ok().flatten().map(|t| t.identity.role);
            if want_manager != (cert_role == Some(PeerRole::Manager)) {
                info!(
                    role = if want_manager { "manager" } else { "worker" },
                    "the node's role changed: renewing its certificate"
                );
                renew.notify_one();
            } else if want_manager {
                match manager.ensure_running(files.dir(), &managers()) {
                    Ok(()) => told = None,
                    Err(e) => {
                        if told.as_deref() != Some(e.as_str()) {
                            warn!("{e}");
                            told = Some(e);
                        }
                    }
                }
            }
        }
        tokio::select! {
            r = info.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// What a running member needs to leave.
pub struct Active {
    pub files: NodeTlsFiles,
    /// `<state>/cluster`, deleted on leave.
    pub cluster_dir: PathBuf,
    pub session_stop: CancellationToken,
    pub executor: Arc<Executor>,
    pub managers: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    pub manager: Arc<ManagerProc>,
}

/// The `ClusterMembership` service of the agent's unix socket.
pub struct MembershipService {
    active: tokio::sync::Mutex<Option<Active>>,
}

impl MembershipService {
    pub fn new(active: Option<Active>) -> Self {
        MembershipService {
            active: tokio::sync::Mutex::new(active),
        }
    }
}

/// How a manager's answer to LeaveCluster is taken.
enum Told {
    Yes { was_manager: bool },
    Refused(Status),
    Unreachable(String),
}

async fn tell_managers(a: &Active, force: bool) -> Told {
    let tls = match a.files.load() {
        Ok(Some(t)) => t,
        Ok(None) => return Told::Unreachable("this node has no certificate".into()),
        Err(e) => return Told::Unreachable(e.to_string()),
    };
    let cfg = match tls.client_config() {
        Ok(c) => c,
        Err(e) => return Told::Unreachable(e.to_string()),
    };
    let mut last = "no manager known".to_string();
    for addr in (a.managers)() {
        let mut c = NodeCaClient::new(flotilla_pki::channel(&addr, Arc::clone(&cfg)));
        let call = c.leave_cluster(pb::LeaveClusterRequest { force });
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(r)) => {
                return Told::Yes {
                    was_manager: r.into_inner().was_manager,
                }
            }
            // Already removed, or its certificate no longer accepted: gone either way.
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                return Told::Yes { was_manager: false }
            }
            Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => return Told::Refused(s),
            Ok(Err(s)) => last = format!("{addr}: {}", s.message()),
            Err(_) => last = format!("{addr}: no answer within 10 s"),
        }
    }
    Told::Unreachable(last)
}

#[tonic::async_trait]
impl apb::cluster_membership_server::ClusterMembership for MembershipService {
    async fn leave(
        &self,
        req: Request<apb::LeaveClusterRequest>,
    ) -> Result<Response<apb::LeaveClusterResponse>, Status> {
        let force = req.get_ref().force;
        let mut guard = self.active.lock().await;
        let Some(a) = guard.as_ref() else {
            return Err(Status::failed_precondition(
                "this node is not part of a cluster",
            ));
        };
        let node_id = a
            .files
            .load()
            .ok()
            .flatten()
            .map(|t| t.identity.node_id)
            .unwrap_or_default();
        let mut warning = String::new();
        let was_manager = match tell_managers(a, force).await {
            Told::Yes { was_manager } => was_manager,
            Told::Refused(s) => return Err(s),
            Told::Unreachable(why) if !force => {
                return Err(Status::unavailable(format!(
                    "cannot tell the cluster ({why}); nothing changed: retry, or leave with --force (the node then stays listed until `flotilla node rm --force` on a manager)"
                )))
            }
            Told::Unreachable(why) => {
                warning = format!(
                    "the cluster could not be told ({why}): remove the node with `flotilla node rm --force {node_id}` on a manager"
                );
                false
            }
        };
        info!(node = %node_id, was_manager, "leaving the cluster");
        a.session_stop.cancel();
        a.manager.stop_and_forget().await;
        // An empty full set: every task's container is stopped and removed.
        a.executor
            .apply(pb::Assignments {
                full: true,
                ..Default::default()
            })
            .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let left = a
                .executor
                .engine()
                .list(true, &[format!("label={}", crate::executor::LABEL_TASK_ID)])
                .map_or(0, |l| l.len());
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Err(e) = std::fs::remove_dir_all(&a.cluster_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Status::internal(format!(
                    "left the cluster, but cannot remove {}: {e}",
                    a.cluster_dir.display()
                )));
            }
        }
        *guard = None;
        Ok(Response::new(apb::LeaveClusterResponse {
            node_id,
            was_manager,
            warning,
        }))
    }
}
