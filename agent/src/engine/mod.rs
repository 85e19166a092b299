//! The node's container engine (what dockerd is to docker): containers from images, their
//! lifecycle through per-container shims, logs, volumes, restart policies and events. The gRPC
//! handlers in `server` are thin wrappers around it.
//!
//! State on disk (`<state>/containers/<id>/`): `container.json` (the record: request, observed
//! state; written atomically at every transition), `config.json` (the OCI bundle spec; its rootfs is
//! an overlay snapshot of the image store), `container.log` (CRI format, written by the shim),
//! `exit.json` (written by the shim when the container ends), `shim.json`, `hosts`, `resolv.conf`,
//! `hostname`. The shim's socket is `<run>/shims/<id prefix>.sock`.
//!
//! Invariants: a record says `running` only after its shim reported the container started; the
//! engine never holds the in-memory record lock across an await; each container's lifecycle
//! operations (start, stop, remove) are serialized by its own async lock; the exit of a container
//! is handled once, by its monitor task (or by recovery when the agent was down).

pub mod error;
pub mod events;
pub mod health;
pub mod logs;
pub mod net;
pub mod spec;
pub mod volumes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::agent::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use crate::image::{self, ImageStore, StoreConfig};
use crate::network::{EndpointRequest, NetConfig, NetworkManager};
use crate::runtime;
use crate::shim::frame::Frame;
use crate::shim::{logfile, ExitRecord, ShimConfig};
pub use error::{EngineError, Kind, Result};
use events::Events;
use spec::{NetNs, ResolvedMount};
use volumes::Volumes;

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Persistent state: images, containers, volumes (default /var/lib/flotilla).
    pub state_dir: PathBuf,
    /// Runtime state: sockets, runtime root, network namespaces (default /run/flotilla).
    pub run_dir: PathBuf,
    pub cgroup_root: PathBuf,
    /// The `flotilla-shim` and `flotilla-runtime` binaries.
    pub shim_bin: PathBuf,
    pub runtime_bin: PathBuf,
    /// Host path prefixes under which bind mounts of sensitive paths are allowed.
    pub allow_host_paths: Vec<PathBuf>,
    /// userns-remap: root in containers is this (uid, gid, count) range on the host.
    pub userns_remap: Option<(u32, u32, u32)>,
    /// Registries reached over plain http beside loopback ones.
    pub insecure_registries: Vec<String>,
    /// Container networking (bridges, nftables table, address pools).
    pub network: NetConfig,
}

/// Observed status of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
    /// A process exists (or is about to, for restarting).
    pub fn is_active(self) -> bool {
        matches!(self, Status::Running | Status::Paused | Status::Restarting)
    }
}

/// The persisted state of one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    pub pid: i32,
    pub exit_code: i32,
    pub oom_killed: bool,
    pub started_unix_nano: i64,
    pub finished_unix_nano: i64,
    pub error: String,
    pub restart_count: u32,
    /// Quick successive restarts, for the back-off.
    #[serde(default)]
    pub restart_streak: u32,
    /// Stopped by a user (stop, kill): restart policies wait for a manual start.
    pub user_stopped: bool,
    #[serde(default)]
    pub health: Option<pb::HealthState>,
}

/// `container.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub created_unix_nano: i64,
    pub image: String,
    pub image_id: String,
    pub args: Vec<String>,
    pub config: pb::ContainerConfig,
    pub state: State,
    #[serde(default)]
    pub mounts: Vec<pb::MountInfo>,
    #[serde(default)]
    pub endpoints: Vec<pb::EndpointInfo>,
    #[serde(default)]
    pub ports: Vec<pb::PortBinding>,
    /// Networks joined with `network connect`, joined again at each start.
    #[serde(default)]
    pub extra_networks: Vec<pb::ConnectNetworkRequest>,
}

/// Tells whether a container is (about to be) running.
pub type IsActive = Arc<dyn Fn() -> bool + Send + Sync>;

/// A container being waited on, valid even after it is removed (for `run --rm`).
pub struct ExitHandle(Arc<Ctr>);

impl ExitHandle {
    pub fn id(&self) -> &str {
        &self.0.id
    }
}

/// A running container's live channels (while its shim runs).
struct Live {
    /// Bounded: a client sending stdin faster than the container reads is slowed down (HTTP/2
    /// flow control), not buffered without limit.
    to_shim: mpsc::Sender<Frame>,
    output: broadcast::Sender<Frame>,
}

struct Ctr {
    id: String,
    dir: PathBuf,
    rec: Mutex<Record>,
    /// Serializes lifecycle operations on this container.
    op: tokio::sync::Mutex<()>,
    /// Bumped at every state change.
    changed: watch::Sender<u64>,
    live: Mutex<Option<Live>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctr {
    fn record(&self) -> Record {
        lock(&self.rec).clone()
    }
    fn status(&self) -> Status {
        lock(&self.rec).state.status
    }
    /// Applies `f` to the record, persists it, wakes waiters.
    fn update(&self, f: impl FnOnce(&mut Record)) -> Result<Record> {
        // The write happens under the lock: records reach the disk in the order they were made.
        let result = {
            let mut r = lock(&self.rec);
            f(&mut r);
            let rec = r.clone();
            let path = self.dir.join("container.json");
            serde_json::to_vec_pretty(&rec)
                .map_err(|e| EngineError::internal(e.to_string()))
                .and_then(|data| {
                    crate::shim::write_file_atomic(&path, &data)
                        .map_err(|e| EngineError::io("write", &path, e))
                })
                .map(|()| rec)
        };
        // Waiters see the change in memory even when the disk refused it.
        self.changed.send_modify(|v| *v += 1);
        result
    }
}

/// 64 random hex digits (container and volume ids).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Err(e) = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
    {
        warn!(error = %e, "read /dev/urandom; falling back to time and pid");
        let seed = logfile::now_unix_nano() as u64 ^ u64::from(std::process::id()) << 32;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed.rotate_left(i as u32 * 7) & 0xff) as u8;
        }
    }
    hex::encode(buf)
}

/// Container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, like docker.
pub fn valid_container_name(name: &str) -> bool {
    volumes::valid_name(name)
}

const ADJECTIVES: [&str; 16] = [
    "brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry",
    "nifty", "proud", "quiet", "swift", "tender", "vivid",
];
const NOUNS: [&str; 16] = [
    "albatross",
    "brig",
    "caravel",
    "dinghy",
    "frigate",
    "galleon",
    "junk",
    "ketch",
    "lugger",
    "pinnace",
    "schooner",
    "sloop",
    "tender",
    "trawler",
    "wherry",
    "yawl",
];

/// When (if at all) a container that exited should be started again.
pub fn restart_delay(
    policy: Option<&pb::RestartPolicy>,
    exit_code: i32,
    st: &State,
    ran_for: Duration,
) -> Option<Duration> {
    let p = policy?;
    if st.user_stopped {
        return None;
    }
    let restart = match p.name.as_str() {
        "always" | "unless-stopped" => true,
        "on-failure" => exit_code != 0 && (p.max_retries == 0 || st.restart_count < p.max_retries),
        _ => false,
    };
    if !restart {
        return None;
    }
    // Back-off: 100 ms doubling per quick restart, at most a minute; a run of 10 s resets it.
    let streak = if ran_for >= Duration::from_secs(10) {
        0
    } else {
        st.restart_streak
    };
    Some(
        Duration::from_millis(100u64.saturating_mul(1 << streak.min(10)))
            .min(Duration::from_secs(60)),
    )
}

/// Docker's restart policy names.
pub fn validate_restart_policy(p: &pb::RestartPolicy) -> Result<()> {
    match p.name.as_str() {
        "" | "no" | "always" | "unless-stopped" | "on-failure" => {}
        other => {
            return Err(EngineError::invalid(format!(
                "invalid restart policy {other:?}: use no, on-failure[:max-retries], always or unless-stopped"
            )))
        }
    }
    if p.max_retries > 0 && p.name != "on-failure" {
        return Err(EngineError::invalid(format!(
            "invalid restart policy: maximum retry count only applies to on-failure, not {}",
            p.name
        )));
    }
    Ok(())
}

/// Paths a bind mount may not expose (seed §2.3: who can bind-mount /etc owns the host).
const SENSITIVE: [&str; 8] = [
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/run",
    "/var/run",
    "/var/lib/flotilla",
];

/// Whether binding `source` (canonical) is allowed.
pub fn bind_allowed(
    source: &Path,
    agent_dirs: &[&Path],
    allow: &[PathBuf],
    privileged: bool,
) -> Result<()> {
    if privileged || allow.iter().any(|a| source.starts_with(a)) {
        return Ok(());
    }
    // A protected path, anything under one, or anything above one (binding /var exposes
    // /var/lib/flotilla and /var/run).
    let touches = |p: &Path| source.starts_with(p) || p.starts_with(source);
    let refused = source == Path::new("/")
        || SENSITIVE.iter().any(|s| touches(Path::new(s)))
        || agent_dirs.iter().any(|d| touches(d));
    if refused {
        return Err(EngineError::new(
            Kind::Precondition,
            format!(
                "bind mount of {} refused: host system paths (/, /etc, /proc, /sys, /dev, /boot, /run and the agent's state) \
                 give a container control of the host; use a volume, run with --privileged, or start the agent with --allow-host-path {}",
                source.display(),
                source.display()
            ),
        ));
    }
    Ok(())
}

pub struct Engine {
    pub cfg: EngineConfig,
    pub images: ImageStore,
    pub volumes: Volumes,
    pub events: Events,
    pub net: NetworkManager,
    containers: Mutex<BTreeMap<String, Arc<Ctr>>>,
}

impl Engine {
    fn containers_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("containers")
    }
    fn runtime_root(&self) -> PathBuf {
        self.cfg.run_dir.join("runtime")
    }
    fn socket_path(&self, id: &str) -> PathBuf {
        self.cfg
            .run_dir
            .join("shims")
            .join(format!("{}.sock", &id[..24.min(id.len())]))
    }

    /// Opens the state, re-attaches to running containers and reconciles those that ended while the
    /// agent was away.
    pub async fn open(mut cfg: EngineConfig) -> Result<Arc<Engine>> {
        for d in [&mut cfg.state_dir, &mut cfg.run_dir] {
            std::fs::create_dir_all(&*d).map_err(|e| EngineError::io("create", d, e))?;
            // Canonical, so the bind-mount policy compares real paths.
            *d = std::fs::canonicalize(&*d).map_err(|e| EngineError::io("resolve", d, e))?;
        }
        let mut sc = StoreConfig::with_root(cfg.state_dir.join("images"));
        sc.insecure_registries = cfg.insecure_registries.clone();
        let images = ImageStore::open(sc)?;
        let volumes = Volumes::open(cfg.state_dir.join("volumes"))?;
        let net = NetworkManager::open(cfg.network.clone()).await?;
        let engine = Arc::new(Engine {
            cfg,
            images,
            volumes,
            net,
            events: Events::default(),
            containers: Mutex::new(BTreeMap::new()),
        });
        let dir = engine.containers_dir();
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io("create", &dir, e))?;
        // Records hold the containers' environment (secrets): root only; traversable, so that a
        // user-namespaced container's runtime can reach its bind sources.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| EngineError::io("chmod", &dir, e))?;
            let shims = engine.cfg.run_dir.join("shims");
            std::fs::create_dir_all(&shims).map_err(|e| EngineError::io("create", &shims, e))?;
            std::fs::set_permissions(&shims, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| EngineError::io("chmod", &shims, e))?;
        }
        let mut recovered = Vec::new();
        for entry in std::fs::read_dir(&dir)
            .map_err(|e| EngineError::io("read", &dir, e))?
            .flatten()
        {
            let cdir = entry.path();
            let path = cdir.join("container.json");
            if cdir.extension().is_some() {
                continue; // quarantined (`<id>.corrupt-<time>`)
            }
            let rec: Record = match std::fs::read(&path) {
                Ok(d) => match serde_json::from_slice(&d) {
                    Ok(r) => r,
                    Err(e) => {
                        // Never delete what might belong to a running container: set it aside.
                        let aside =
                            cdir.with_extension(format!("corrupt-{}", logfile::now_unix_nano()));
                        tracing::error!(dir = %cdir.display(), error = %e, aside = %aside.display(), "unreadable container record set aside");
                        let _ = std::fs::rename(&cdir, &aside);
                        continue;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // A create that crashed before its record was written: nothing refers to it.
                    warn!(dir = %cdir.display(), "removing a container directory without a record");
                    if let Some(id) = cdir.file_name().and_then(|n| n.to_str()) {
                        let _ = image::bundle::remove(&engine.images, id);
                    }
                    let _ = std::fs::remove_dir_all(&cdir);
                    continue;
                }
                Err(e) => return Err(EngineError::io("read", &path, e)),
            };
            let ctr = Arc::new(Ctr {
                id: rec.id.clone(),
                dir: cdir,
                rec: Mutex::new(rec),
                op: tokio::sync::Mutex::new(()),
                changed: watch::channel(0).0,
                live: Mutex::new(None),
            });
            lock(&engine.containers).insert(ctr.id.clone(), ctr.clone());
            recovered.push(ctr);
        }
        for ctr in recovered {
            engine.recover(ctr).await;
        }
        Ok(engine)
    }

    async fn recover(self: &Arc<Self>, ctr: Arc<Ctr>) {
        let st = ctr.record().state;
        match st.status {
            Status::Running | Status::Paused => {
                if let Ok(stream) = tokio::net::UnixStream::connect(self.socket_path(&ctr.id)).await
                {
                    info!(id = %ctr.id, "re-attached to the container's shim");
                    self.attach_monitor(ctr, stream, true);
                } else {
                    // The shim is gone: its exit.json (if any) says how the container ended.
                    self.handle_exit(ctr).await;
                }
            }
            Status::Restarting => {
                self.schedule_restart(ctr, Duration::from_millis(100));
            }
            Status::Exited | Status::Created | Status::Dead => {
                let rec = ctr.record();
                if rec
                    .config
                    .restart_policy
                    .as_ref()
                    .is_some_and(|p| p.name == "always")
                    && rec.state.status == Status::Exited
                {
                    // docker: `always` brings back even manually stopped containers when the daemon starts.
                    let _ = ctr.update(|r| r.state.user_stopped = false);
                    self.schedule_restart(ctr, Duration::from_millis(0));
                }
            }
        }
    }

    fn all(&self) -> Vec<Arc<Ctr>> {
        lock(&self.containers).values().cloned().collect()
    }

    /// A container by full id, unique id prefix, or name.
    fn find(&self, input: &str) -> Result<Arc<Ctr>> {
        let map = lock(&self.containers);
        if let Some(c) = map.get(input) {
            return Ok(c.clone());
        }
        if let Some(c) = map
            .values()
            .find(|c| lock(&c.rec).name == input.trim_start_matches('/'))
        {
            return Ok(c.clone());
        }
        if !input.is_empty() && input.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<_> = map.values().filter(|c| c.id.starts_with(input)).collect();
            match hits.len() {
                1 => return Ok(hits[0].clone()),
                0 => {}
                n => {
                    return Err(EngineError::invalid(format!(
                        "container id prefix {input} is ambiguous ({n} containers): give more characters"
                    )))
                }
            }
        }
        let names: Vec<String> = map.values().map(|c| lock(&c.rec).name.clone()).collect();
        Err(error::no_such(
            "container",
            input,
            names.iter().map(String::as_str),
        ))
    }

    // ------------------------------------------------------------------ create

    pub async fn create(
        self: &Arc<Self>,
        name: &str,
        config: pb::ContainerConfig,
    ) -> Result<(String, String, Vec<String>)> {
        let name = if name.is_empty() {
            self.generate_name()
        } else {
            let n = name.trim_start_matches('/').to_string();
            if !valid_container_name(&n) {
                return Err(EngineError::invalid(format!(
                    "invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )));
            }
            n
        };
        if let Some(p) = &config.restart_policy {
            validate_restart_policy(p)?;
            if config.auto_remove && !matches!(p.name.as_str(), "" | "no") {
                return Err(EngineError::invalid(
                    "conflicting options: --restart and --rm",
                ));
            }
        }
        let id = random_hex(32);
        let dir = self.containers_dir().join(&id);
        // The name is claimed in memory first, so two creates cannot both take it.
        let ctr = {
            let mut map = lock(&self.containers);
            if let Some(other) = map.values().find(|c| lock(&c.rec).name == name) {
                return Err(EngineError::conflict(format!(
                    "the container name \"{name}\" is already in use by container {}: remove it or choose another name",
                    &other.id[..12]
                )));
            }
            let rec = Record {
                id: id.clone(),
                name: name.clone(),
                created_unix_nano: logfile::now_unix_nano(),
                image: config.image.clone(),
                image_id: String::new(),
                args: Vec::new(),
                config: config.clone(),
                state: State {
                    status: Status::Created,
                    pid: 0,
                    exit_code: 0,
                    oom_killed: false,
                    started_unix_nano: 0,
                    finished_unix_nano: 0,
                    error: String::new(),
                    restart_count: 0,
                    restart_streak: 0,
                    user_stopped: false,
                    health: None,
                },
                mounts: Vec::new(),
                endpoints: Vec::new(),
                ports: Vec::new(),
                extra_networks: Vec::new(),
            };
            let ctr = Arc::new(Ctr {
                id: id.clone(),
                dir: dir.clone(),
                rec: Mutex::new(rec),
                op: tokio::sync::Mutex::new(()),
                changed: watch::channel(0).0,
                live: Mutex::new(None),
            });
            map.insert(id.clone(), ctr.clone());
            ctr
        };
        let this = self.clone();
        let ctr2 = ctr.clone();
        let built = tokio::task::spawn_blocking(move || this.prepare(&ctr2, &config)).await;
        let built = built
            .unwrap_or_else(|e| Err(EngineError::internal(format!("create task failed: {e}"))));
        match built {
            Ok(warnings) => {
                self.events.emit(
                    "container",
                    "create",
                    &id,
                    &name,
                    &[("image", ctr.record().image)],
                );
                Ok((id, name, warnings))
            }
            Err(e) => {
                lock(&self.containers).remove(&id);
                let _ = image::bundle::remove(&self.images, &id);
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn generate_name(&self) -> String {
        let map = lock(&self.containers);
        let taken = |n: &str| map.values().any(|c| lock(&c.rec).name == n);
        for _ in 0..64 {
            let r = random_hex(2);
            let a = ADJECTIVES[usize::from_str_radix(&r[..1], 16).unwrap_or(0)];
            let n = NOUNS[usize::from_str_radix(&r[1..2], 16).unwrap_or(0)];
            let name = format!("{a}_{n}");
            if !taken(&name) {
                return name;
            }
        }
        format!("flotilla_{}", random_hex(4))
    }

    /// Bundle, mounts, spec: everything `create` writes to disk (blocking).
    fn prepare(&self, ctr: &Ctr, cfg: &pb::ContainerConfig) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        let image_rec = self.images.get(&cfg.image).map_err(|e| match e {
            image::ImageError::NotFound { .. } => {
                let hint = match self.image_error(e).msg.rsplit_once(" (did you mean ") {
                    Some((_, c)) => format!(" (did you mean {}", c),
                    None => String::new(),
                };
                EngineError::not_found(format!(
                    "image {} not found locally: pull it first (flotilla pull {}){hint}",
                    cfg.image, cfg.image
                ))
            }
            other => other.into(),
        })?;
        let image_cfg = self.images.image_config(&cfg.image)?;
        let exec = image_cfg.config().clone().unwrap_or_default();
        let entrypoint: Vec<String> = if cfg.entrypoint_set {
            cfg.entrypoint.clone()
        } else {
            exec.entrypoint().clone().unwrap_or_default()
        };
        let cmd: Vec<String> = if !cfg.cmd.is_empty() {
            cfg.cmd.clone()
        } else if cfg.entrypoint_set {
            Vec::new()
        } else {
            exec.cmd().clone().unwrap_or_default()
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(EngineError::invalid(format!(
                "no command specified: image {} has no CMD or ENTRYPOINT; give one after the image name",
                cfg.image
            )));
        }
        std::fs::create_dir_all(&ctr.dir).map_err(|e| EngineError::io("create", &ctr.dir, e))?;
        let config_path = image::bundle::create(
            &self.images,
            &cfg.image,
            &ctr.id,
            &ctr.dir,
            Some(vec!["true".into()]),
        )?;
        let base: serde_json::Value = std::fs::read(&config_path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .ok_or_else(|| EngineError::internal(format!("read back {}", config_path.display())))?;
        let rootfs = PathBuf::from(base["root"]["path"].as_str().unwrap_or_default());
        let mut base = base;
        base["process"]["args"] = serde_json::json!(args);
        if exec.user().as_deref().is_some_and(|u| !u.is_empty()) && cfg.user.is_empty() {
            // The image's user (by name too) is resolved below like --user.
        }

        // Mounts.
        let mut resolved = Vec::new();
        let mut infos = Vec::new();
        let mut targets: Vec<String> = Vec::new();
        for m in &cfg.mounts {
            let target = check_target(&m.target)?;
            targets.push(target.clone());
            match pb::mount::Type::try_from(m.r#type).unwrap_or(pb::mount::Type::Bind) {
                pb::mount::Type::Bind => {
                    let src = Path::new(&m.source);
                    if !src.is_absolute() {
                        return Err(EngineError::invalid(format!(
                            "invalid bind mount source {:?}: it must be an absolute host path (or a volume name)",
                            m.source
                        )));
                    }
                    let canon = std::fs::canonicalize(src).map_err(|_| {
                        EngineError::invalid(format!(
                            "bind source path does not exist: {}",
                            m.source
                        ))
                    })?;
                    bind_allowed(
                        &canon,
                        &[&self.cfg.state_dir, &self.cfg.run_dir],
                        &self.cfg.allow_host_paths,
                        cfg.privileged,
                    )?;
                    resolved.push(ResolvedMount::Bind {
                        source: canon.clone(),
                        target: target.clone(),
                        read_only: m.read_only,
                    });
                    infos.push(pb::MountInfo {
                        r#type: "bind".into(),
                        name: String::new(),
                        source: canon.display().to_string(),
                        destination: target,
                        read_only: m.read_only,
                    });
                }
                pb::mount::Type::Volume => {
                    let anonymous = m.source.is_empty();
                    let v = self.volumes.create(&m.source, BTreeMap::new(), anonymous)?;
                    let mp = PathBuf::from(&v.mountpoint);
                    seed_volume(&rootfs, &target, &mp);
                    resolved.push(ResolvedMount::Bind {
                        source: mp.clone(),
                        target: target.clone(),
                        read_only: m.read_only,
                    });
                    infos.push(pb::MountInfo {
                        r#type: "volume".into(),
                        name: v.name,
                        source: mp.display().to_string(),
                        destination: target,
                        read_only: m.read_only,
                    });
                }
                pb::mount::Type::Tmpfs => {
                    resolved.push(ResolvedMount::Tmpfs {
                        target: target.clone(),
                        size: m.tmpfs_size,
                        mode: m.tmpfs_mode,
                    });
                    infos.push(pb::MountInfo {
                        r#type: "tmpfs".into(),
                        name: String::new(),
                        source: String::new(),
                        destination: target,
                        read_only: false,
                    });
                }
            }
        }
        // The image's VOLUMEs not covered by the request get anonymous volumes, as with docker.
        if let Some(vols) = exec.volumes() {
            for t in vols {
                // An image's VOLUME with `..` is ignored rather than trusted.
                let Ok(t) = check_target(t) else {
                    warn!(image = %cfg.image, volume = %t, "ignoring an invalid VOLUME of the image");
                    continue;
                };
                if targets.contains(&t) {
                    continue;
                }
                let v = self.volumes.create("", BTreeMap::new(), true)?;
                let mp = PathBuf::from(&v.mountpoint);
                seed_volume(&rootfs, &t, &mp);
                resolved.push(ResolvedMount::Bind {
                    source: mp.clone(),
                    target: t.clone(),
                    read_only: false,
                });
                infos.push(pb::MountInfo {
                    r#type: "volume".into(),
                    name: v.name,
                    source: mp.display().to_string(),
                    destination: t,
                    read_only: false,
                });
            }
        }

        // Network mode.
        let netns = match cfg.network.as_str() {
            "host" => NetNs::Host,
            "none" => NetNs::New,
            other => {
                let name = if other.is_empty() || other == "default" {
                    "bridge"
                } else {
                    other
                };
                self.net.inspect(name)?;
                if !cfg.ip.is_empty() {
                    cfg.ip.parse::<std::net::Ipv4Addr>().map_err(|_| {
                        EngineError::invalid(format!(
                            "invalid --ip {:?}: not an IPv4 address",
                            cfg.ip
                        ))
                    })?;
                }
                NetNs::Path(self.net.sandbox_path(&ctr.id))
            }
        };
        if !matches!(netns, NetNs::Path(_)) && (!cfg.ports.is_empty() || cfg.publish_all) {
            warnings.push(format!(
                "published ports are ignored with --network {}",
                cfg.network
            ));
        }
        let hostname = if cfg.hostname.is_empty() {
            if netns == NetNs::Host {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_else(|| ctr.id[..12].to_string())
            } else {
                ctr.id[..12].to_string()
            }
        } else {
            cfg.hostname.clone()
        };
        if hostname.len() > 63
            || hostname.is_empty()
            || !hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(EngineError::invalid(format!(
                "invalid hostname {hostname:?}: letters, digits, '-' and '.', at most 63"
            )));
        }
        let mut etc_files = Vec::new();
        let extra_hosts = parse_extra_hosts(&cfg.extra_hosts)?;
        if netns != NetNs::Host {
            // Until a network gives it an address, the hostname is the Debian-style 127.0.1.1.
            let loopback = std::net::Ipv4Addr::new(127, 0, 1, 1);
            let hosts =
                crate::network::resolv::hosts_file(Some(loopback), &hostname, None, &extra_hosts);
            write_etc(&ctr.dir.join("hosts"), &hosts)?;
            write_etc(&ctr.dir.join("hostname"), &format!("{hostname}\n"))?;
            etc_files.push((ctr.dir.join("hosts"), "/etc/hosts".to_string()));
            etc_files.push((ctr.dir.join("hostname"), "/etc/hostname".to_string()));
        }
        let host_resolv =
            std::fs::read_to_string(&self.cfg.network.host_resolv_conf).unwrap_or_default();
        let resolv = crate::network::resolv::resolv_conf(&host_resolv, None, &cfg.dns);
        write_etc(&ctr.dir.join("resolv.conf"), &resolv)?;
        etc_files.push((ctr.dir.join("resolv.conf"), "/etc/resolv.conf".to_string()));

        // Security.
        let sec = spec::parse_security_opts(&cfg.security_opt)?;
        let defaults: Vec<String> = runtime::spec::DOCKER_DEFAULT_CAPS
            .iter()
            .map(|c| runtime::spec::cap_name(*c))
            .collect();
        let caps = within_our_bounding_set(spec::capabilities(cfg, &defaults)?);
        let default_seccomp =
            if cfg.privileged || sec.seccomp_unconfined || sec.seccomp_profile.is_some() {
                None
            } else {
                let s = runtime::seccomp::docker::default_profile(&caps).map_err(|e| {
                    EngineError::internal(format!("load the default seccomp profile: {e}"))
                })?;
                Some(serde_json::to_value(s).map_err(|e| EngineError::internal(e.to_string()))?)
            };
        let custom_seccomp = match &sec.seccomp_profile {
            None => None,
            Some(p) => {
                let json = if p.trim_start().starts_with('{') {
                    p.clone().into_bytes()
                } else {
                    std::fs::read(p).map_err(|e| {
                        EngineError::invalid(format!("read seccomp profile {p}: {e}"))
                    })?
                };
                let arch =
                    runtime::seccomp::docker::host_docker_arch().unwrap_or("SCMP_ARCH_X86_64");
                let s = runtime::seccomp::docker::from_docker_profile(&json, &caps, arch)
                    .map_err(|e| EngineError::invalid(format!("invalid seccomp profile: {e}")))?;
                Some(serde_json::to_value(s).map_err(|e| EngineError::internal(e.to_string()))?)
            }
        };
        let user = if cfg.user.is_empty() {
            exec.user().clone().unwrap_or_default()
        } else {
            cfg.user.clone()
        };
        let mut cfg_user = cfg.clone();
        cfg_user.user = user;
        let ctx = spec::SpecContext {
            hostname,
            netns,
            mounts: resolved,
            etc_files,
            passwd: std::fs::read_to_string(rootfs.join("etc/passwd")).ok(),
            group: std::fs::read_to_string(rootfs.join("etc/group")).ok(),
            default_seccomp,
            custom_seccomp,
            userns: self.cfg.userns_remap,
            labels: cfg
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let spec_json = spec::build(base, &cfg_user, &ctx, &caps, &sec)?;
        prepare_mount_targets(&rootfs, &spec_json)?;
        if let Some((uid, gid, count)) = self.cfg.userns_remap {
            shift_ownership(&rootfs, uid, gid, count)?;
            for m in &infos {
                if m.r#type == "volume" {
                    shift_ownership(Path::new(&m.source), uid, gid, count)?;
                }
            }
        }
        let _: oci_spec::runtime::Spec = serde_json::from_value(spec_json.clone())
            .map_err(|e| EngineError::internal(format!("generated an invalid spec: {e}")))?;
        let data = serde_json::to_vec_pretty(&spec_json)
            .map_err(|e| EngineError::internal(e.to_string()))?;
        crate::shim::write_file_atomic(&config_path, &data)
            .map_err(|e| EngineError::io("write", &config_path, e))?;
        ctr.update(|r| {
            r.image = image_rec.reference.clone();
            r.image_id = image_rec.config_digest.clone();
            r.args = args.clone();
            r.mounts = infos;
        })?;
        Ok(warnings)
    }

    // ------------------------------------------------------------------ start / exit

    /// Starts a created or exited container. With `wait_start`, the shim creates the container
    /// and waits for a `Start` frame (sent by `attach_and_start`).
    pub async fn start(self: &Arc<Self>, input: &str) -> Result<pb::ContainerInfo> {
        let ctr = self.find(input)?;
        self.start_or_clean(&ctr, false).await?;
        Ok(self.info(&ctr))
    }

    /// Starts; a `--rm` container that fails to start is removed, as docker does.
    async fn start_or_clean(self: &Arc<Self>, ctr: &Arc<Ctr>, wait_start: bool) -> Result<()> {
        match self.start_ctr(ctr, wait_start).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if ctr.record().config.auto_remove {
                    if let Err(e2) = self.remove_ctr(ctr, true, true).await {
                        warn!(id = %ctr.id, error = %e2, "cannot remove the --rm container after its failed start");
                    }
                }
                Err(e)
            }
        }
    }

    async fn start_ctr(self: &Arc<Self>, ctr: &Arc<Ctr>, wait_start: bool) -> Result<()> {
        let _op = ctr.op.lock().await;
        self.start_locked(ctr, wait_start).await
    }

    /// `start_ctr` with the container's op lock held by the caller.
    async fn start_locked(self: &Arc<Self>, ctr: &Arc<Ctr>, wait_start: bool) -> Result<()> {
        if !lock(&self.containers).contains_key(&ctr.id) {
            return Err(EngineError::not_found(format!(
                "container {} was removed",
                ctr.id
            )));
        }
        match ctr.status() {
            Status::Running | Status::Paused => return Ok(()),
            _ => {}
        }
        let rec = ctr.record();
        let exit_path = ctr.dir.join("exit.json");
        let _ = std::fs::remove_file(&exit_path);
        let shim_cfg = ShimConfig {
            id: ctr.id.clone(),
            bundle: ctr.dir.clone(),
            runtime_root: self.runtime_root(),
            cgroup_root: self.cfg.cgroup_root.clone(),
            log_path: ctr.dir.join("container.log"),
            exit_path,
            socket_path: self.socket_path(&ctr.id),
            tty: rec.config.tty,
            stdin: rec.config.open_stdin,
            // Always created first and started by a frame once the agent is connected: a
            // container that exits at once cannot finish before the agent is watching it.
            wait_start: true,
            size: None,
        };
        // After a host restart the overlay is gone; its upper directory (the container's
        // changes) is still there.
        let images = self.images.clone();
        let id = ctr.id.clone();
        let remounted = tokio::task::spawn_blocking(move || images.ensure_rootfs_mounted(&id))
            .await
            .map_err(|e| EngineError::internal(e.to_string()))??;
        if remounted {
            info!(id = %ctr.id, "container root filesystem mounted again");
        }
        // A bind source could have been swapped for a symlink since create: check again.
        for m in rec.mounts.iter().filter(|m| m.r#type == "bind") {
            let now = std::fs::canonicalize(&m.source).map_err(|_| {
                EngineError::precondition(format!("bind source path {} no longer exists", m.source))
            })?;
            if now != Path::new(&m.source) {
                return Err(EngineError::precondition(format!(
                    "bind source {} now resolves to {}: refusing to start; recreate the container",
                    m.source,
                    now.display()
                )));
            }
            bind_allowed(
                &now,
                &[&self.cfg.state_dir, &self.cfg.run_dir],
                &self.cfg.allow_host_paths,
                rec.config.privileged,
            )?;
        }
        let networked = self.setup_network(ctr, &rec).await?;
        let shim_json = ctr.dir.join("shim.json");
        // A leftover runtime state of this id (agent crash mid-start) would make create fail.
        let rt = self.runtime_root();
        let _ = runtime::container::delete(&rt, &ctr.id, true, &self.cfg.cgroup_root);
        let launched = async {
            let data = serde_json::to_vec_pretty(&shim_cfg)
                .map_err(|e| EngineError::internal(e.to_string()))?;
            crate::shim::write_file_atomic(&shim_json, &data)
                .map_err(|e| EngineError::io("write", &shim_json, e))?;
            tokio::process::Command::new(&self.cfg.shim_bin)
                .arg(&shim_json)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| {
                    EngineError::internal(format!("run {}: {e}", self.cfg.shim_bin.display()))
                })
        }
        .await;
        let out = match launched {
            Ok(o) => o,
            Err(e) => {
                if networked {
                    self.teardown_network(ctr).await;
                }
                return Err(e);
            }
        };
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let pid = match line.strip_prefix("ok ").and_then(|p| p.parse::<i32>().ok()) {
            Some(pid) => pid,
            None => {
                let msg = line.strip_prefix("err ").unwrap_or(&line).to_string();
                let msg = if msg.is_empty() {
                    "the shim exited without a status".to_string()
                } else {
                    msg
                };
                if networked {
                    self.teardown_network(ctr).await;
                }
                ctr.update(|r| {
                    r.state.error = msg.clone();
                    r.state.exit_code = 128;
                    if r.state.status != Status::Created {
                        r.state.status = Status::Exited;
                    }
                })?;
                return Err(start_error(&msg));
            }
        };
        let stream = match tokio::net::UnixStream::connect(&shim_cfg.socket_path).await {
            Ok(s) => s,
            Err(e) => {
                // The container was created but will never be started: remove it (its shim
                // then exits) rather than leave it untracked.
                let _ = runtime::container::delete(&rt, &ctr.id, true, &self.cfg.cgroup_root);
                if networked {
                    self.teardown_network(ctr).await;
                }
                return Err(EngineError::internal(format!(
                    "connect to the shim of {}: {e}",
                    ctr.id
                )));
            }
        };
        ctr.update(|r| {
            r.state.status = Status::Running;
            r.state.pid = pid;
            r.state.started_unix_nano = logfile::now_unix_nano();
            r.state.error.clear();
            r.state.exit_code = 0;
            r.state.oom_killed = false;
            r.state.user_stopped = false;
        })?;
        self.attach_monitor(ctr.clone(), stream, true);
        if !wait_start {
            // The caller attaches first and sends `Start` itself otherwise.
            if let Some(l) = lock(&ctr.live).as_ref() {
                let _ = l.to_shim.try_send(Frame::Start);
            }
            self.events.emit(
                "container",
                "start",
                &ctr.id,
                &rec.name,
                &[("image", rec.image.clone())],
            );
        }
        Ok(())
    }

    /// Sandbox, endpoints, published ports and /etc files for a container on a bridge network.
    /// Returns whether a sandbox was set up.
    async fn setup_network(&self, ctr: &Ctr, rec: &Record) -> Result<bool> {
        let mode = rec.config.network.as_str();
        if mode == "host" || mode == "none" {
            return Ok(false);
        }
        let result = async {
            self.net.create_sandbox(&ctr.id).await?;
            let first = if mode.is_empty() || mode == "default" {
                "bridge"
            } else {
                mode
            };
            let ip = if rec.config.ip.is_empty() {
                None
            } else {
                Some(rec.config.ip.parse::<std::net::Ipv4Addr>().map_err(|_| {
                    EngineError::invalid(format!("invalid --ip {:?}", rec.config.ip))
                })?)
            };
            let mut reqs = vec![EndpointRequest {
                container_name: rec.name.clone(),
                network: first.to_string(),
                ip,
                aliases: rec.config.network_aliases.clone(),
            }];
            for extra in &rec.extra_networks {
                reqs.push(EndpointRequest {
                    container_name: rec.name.clone(),
                    network: extra.network.clone(),
                    ip: extra.ip.parse().ok(),
                    aliases: extra.aliases.clone(),
                });
            }
            let mut endpoints = Vec::new();
            for req in reqs {
                let ep = self.net.connect(&ctr.id, req).await?;
                endpoints.push(net::endpoint_pb(&ep));
            }
            let exposed = self.images.inspect(&rec.image).ok().and_then(|i| {
                i.config["config"]["ExposedPorts"]
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>())
            });
            let specs = net::port_specs(&rec.config, &exposed.unwrap_or_default())?;
            let ports = if specs.is_empty() {
                Vec::new()
            } else {
                self.net.publish(&ctr.id, &specs).await?
            };
            self.write_net_etc(ctr, rec)?;
            ctr.update(|r| {
                r.endpoints = endpoints;
                r.ports = ports.iter().map(net::port_pb).collect();
            })?;
            Ok::<_, EngineError>(())
        }
        .await;
        match result {
            Ok(()) => Ok(true),
            Err(e) => {
                self.teardown_network(ctr).await;
                Err(e)
            }
        }
    }

    /// The container's /etc/hosts and /etc/resolv.conf from its current endpoints (bind-mounted
    /// files rewritten in place, so a running container sees the change).
    fn write_net_etc(&self, ctr: &Ctr, rec: &Record) -> Result<()> {
        let hostname = std::fs::read_to_string(ctr.dir.join("hostname"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let extra_hosts = parse_extra_hosts(&rec.config.extra_hosts)?;
        write_etc(
            &ctr.dir.join("hosts"),
            &self.net.hosts_file(&ctr.id, &hostname, &extra_hosts),
        )?;
        write_etc(
            &ctr.dir.join("resolv.conf"),
            &self.net.resolv_conf(&ctr.id, &rec.config.dns),
        )
    }

    async fn teardown_network(&self, ctr: &Ctr) {
        if let Err(e) = self.net.remove_sandbox(&ctr.id).await {
            warn!(id = %ctr.id, error = %e, "cannot remove the container's network sandbox");
        }
        let _ = ctr.update(|r| {
            r.endpoints.clear();
            r.ports.clear();
        });
    }

    /// One task per running container: fans the shim's output out, forwards input, and handles
    /// the exit when the shim reports it or goes away.
    fn attach_monitor(
        self: &Arc<Self>,
        ctr: Arc<Ctr>,
        stream: tokio::net::UnixStream,
        health: bool,
    ) {
        let (tx, mut rx) = mpsc::channel::<Frame>(64);
        let (out_tx, _) = broadcast::channel::<Frame>(1024);
        *lock(&ctr.live) = Some(Live {
            to_shim: tx,
            output: out_tx.clone(),
        });
        if health {
            self.spawn_health(ctr.clone());
        }
        let (mut rd, mut wr) = stream.into_split();
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if wr.write_all(&f.encode()).await.is_err() {
                    break;
                }
            }
        });
        let engine = self.clone();
        tokio::spawn(async move {
            let mut dec = crate::shim::frame::Decoder::default();
            let mut buf = vec![0u8; 64 * 1024];
            'read: loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        dec.feed(&buf[..n]);
                        loop {
                            match dec.next_frame() {
                                Ok(Some(f)) => {
                                    let last = matches!(f, Frame::Exit { .. });
                                    let _ = out_tx.send(f);
                                    if last {
                                        break 'read;
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    warn!(id = %ctr.id, error = %e, "bad frame from the shim");
                                    break 'read;
                                }
                            }
                        }
                    }
                }
            }
            engine.handle_exit(ctr).await;
        });
    }

    /// The container's shim is gone: record how it ended, clean up, apply the restart policy.
    async fn handle_exit(self: &Arc<Self>, ctr: Arc<Ctr>) {
        *lock(&ctr.live) = None;
        let exit_path = ctr.dir.join("exit.json");
        let mut exit = ExitRecord::load(&exit_path).ok().flatten();
        if exit.is_none() {
            // The connection ended without an exit: a shim that dropped a slow client is still
            // there, and a dead one refuses connections.
            if let Ok(stream) = tokio::net::UnixStream::connect(self.socket_path(&ctr.id)).await {
                info!(id = %ctr.id, "reconnected to the container's shim");
                self.attach_monitor(ctr, stream, false);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            exit = ExitRecord::load(&exit_path).ok().flatten();
        }
        let exit = match exit {
            Some(e) => e,
            None => {
                // The shim died without a status (killed, or the host restarted): whatever is left
                // of the container goes, so the record tells the truth.
                let rt = self.runtime_root();
                let _ = runtime::container::delete(&rt, &ctr.id, true, &self.cfg.cgroup_root);
                ExitRecord {
                    code: 255,
                    oom_killed: false,
                    finished_unix_nano: logfile::now_unix_nano(),
                    error: Some("the container's supervisor (shim) ended without reporting an exit status; the container was stopped".into()),
                }
            }
        };
        let before = ctr.record();
        if !before.state.status.is_active() && before.state.status != Status::Created {
            return;
        }
        let ran_for = Duration::from_nanos(
            (exit.finished_unix_nano - before.state.started_unix_nano).max(0) as u64,
        );
        let delay = if before.config.auto_remove {
            None
        } else {
            restart_delay(
                before.config.restart_policy.as_ref(),
                exit.code,
                &before.state,
                ran_for,
            )
        };
        // The network goes before the status says exited: a start that follows (restart, stop
        // then start) must not meet this run's sandbox.
        self.teardown_network(&ctr).await;
        let rec = match ctr.update(|r| {
            r.state.status = if delay.is_some() {
                Status::Restarting
            } else {
                Status::Exited
            };
            r.state.exit_code = exit.code;
            r.state.oom_killed = exit.oom_killed;
            r.state.finished_unix_nano = exit.finished_unix_nano;
            r.state.error = exit.error.clone().unwrap_or_default();
            r.state.pid = 0;
            if let Some(h) = r.state.health.as_mut() {
                h.status = String::new();
            }
        }) {
            Ok(r) => r,
            Err(e) => {
                warn!(id = %ctr.id, error = %e, "cannot record the container's exit");
                ctr.record()
            }
        };
        if exit.oom_killed {
            self.events.emit(
                "container",
                "oom",
                &ctr.id,
                &rec.name,
                &[("image", rec.image.clone())],
            );
        }
        self.events.emit(
            "container",
            "die",
            &ctr.id,
            &rec.name,
            &[
                ("exitCode", exit.code.to_string()),
                ("image", rec.image.clone()),
            ],
        );
        if rec.config.auto_remove {
            if let Err(e) = self.remove_ctr(&ctr, true, true).await {
                warn!(id = %ctr.id, error = %e, "auto-remove failed");
            }
            return;
        }
        if let Some(d) = delay {
            self.schedule_restart(ctr, d);
        }
    }

    fn schedule_restart(self: &Arc<Self>, ctr: Arc<Ctr>, delay: Duration) {
        let engine = self.clone();
        let _ = ctr.update(|r| r.state.status = Status::Restarting);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // Decided under the op lock, so a stop or rm that ran meanwhile wins.
            let _op = ctr.op.lock().await;
            let rec = ctr.record();
            if rec.state.status != Status::Restarting || rec.state.user_stopped {
                return;
            }
            if !lock(&engine.containers).contains_key(&ctr.id) {
                return;
            }
            let quick = Duration::from_nanos(
                (rec.state.finished_unix_nano - rec.state.started_unix_nano).max(0) as u64,
            ) < Duration::from_secs(10);
            let _ = ctr.update(|r| {
                r.state.restart_count += 1;
                r.state.restart_streak = if quick { r.state.restart_streak + 1 } else { 0 };
            });
            engine
                .events
                .emit("container", "restart", &ctr.id, &rec.name, &[]);
            if let Err(e) = engine.start_locked(&ctr, false).await {
                warn!(id = %ctr.id, error = %e, "restart failed");
                // Counted as a failed run: try again later with the back-off.
                let st = ctr.record().state;
                let again =
                    restart_delay(rec.config.restart_policy.as_ref(), 128, &st, Duration::ZERO);
                match again {
                    Some(d) => {
                        drop(_op);
                        engine.schedule_restart(ctr, d);
                    }
                    None => {
                        let _ = ctr.update(|r| r.state.status = Status::Exited);
                    }
                }
            }
        });
    }

    // ------------------------------------------------------------------ stop / kill / remove

    pub async fn stop(self: &Arc<Self>, input: &str, timeout: i32) -> Result<pb::ContainerInfo> {
        let ctr = self.find(input)?;
        self.stop_ctr(&ctr, timeout).await?;
        Ok(self.info(&ctr))
    }

    async fn stop_ctr(self: &Arc<Self>, ctr: &Arc<Ctr>, timeout: i32) -> Result<()> {
        // Held while waiting for the exit: a pending restart cannot start it again meanwhile
        // (the exit itself is handled without this lock).
        let _op = ctr.op.lock().await;
        let rec = ctr.update(|r| r.state.user_stopped = true)?;
        match rec.state.status {
            Status::Restarting => {
                ctr.update(|r| r.state.status = Status::Exited)?;
                return Ok(());
            }
            Status::Running | Status::Paused => {}
            _ => return Ok(()),
        }
        let timeout = if timeout >= 0 {
            timeout
        } else if rec.config.stop_timeout > 0 {
            rec.config.stop_timeout
        } else {
            10
        };
        let sig = if rec.config.stop_signal.is_empty() {
            "SIGTERM".to_string()
        } else {
            rec.config.stop_signal.clone()
        };
        let sig = runtime::container::parse_signal(&sig)
            .map_err(|e| EngineError::invalid(e.to_string()))?;
        let rt = self.runtime_root();
        if rec.state.status == Status::Paused {
            let _ = runtime::container::resume(&rt, &ctr.id, &self.cfg.cgroup_root);
        }
        let _ = runtime::container::kill(&rt, &ctr.id, sig, false, &self.cfg.cgroup_root);
        if !self
            .wait_inactive(ctr, Duration::from_secs(timeout as u64))
            .await
        {
            info!(id = %ctr.id, timeout, "the container did not stop in time: SIGKILL");
            let _ = runtime::container::kill(
                &rt,
                &ctr.id,
                nix::sys::signal::Signal::SIGKILL,
                true,
                &self.cfg.cgroup_root,
            );
            if !self.wait_inactive(ctr, Duration::from_secs(10)).await {
                return Err(EngineError::internal(format!(
                    "container {} did not stop after SIGKILL",
                    &ctr.id[..12]
                )));
            }
        }
        self.events
            .emit("container", "stop", &ctr.id, &rec.name, &[]);
        Ok(())
    }

    /// Waits until the container is not running; false on timeout.
    async fn wait_inactive(&self, ctr: &Ctr, timeout: Duration) -> bool {
        let mut rx = ctr.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !matches!(ctr.status(), Status::Running | Status::Paused) {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    pub async fn kill(self: &Arc<Self>, input: &str, signal: &str) -> Result<pb::ContainerInfo> {
        let ctr = self.find(input)?;
        let sig = if signal.is_empty() { "KILL" } else { signal };
        let sig = runtime::container::parse_signal(sig)
            .map_err(|e| EngineError::invalid(e.to_string()))?;
        let rec = ctr.record();
        if !matches!(rec.state.status, Status::Running | Status::Paused) {
            return Err(EngineError::precondition(format!(
                "container {} is not running (status {})",
                rec.name,
                rec.state.status.as_str()
            )));
        }
        let stop_sig = runtime::container::parse_signal(if rec.config.stop_signal.is_empty() {
            "TERM"
        } else {
            &rec.config.stop_signal
        })
        .ok();
        if sig == nix::sys::signal::Signal::SIGKILL || Some(sig) == stop_sig {
            ctr.update(|r| r.state.user_stopped = true)?;
        }
        runtime::container::kill(
            &self.runtime_root(),
            &ctr.id,
            sig,
            sig == nix::sys::signal::Signal::SIGKILL,
            &self.cfg.cgroup_root,
        )?;
        self.events.emit(
            "container",
            "kill",
            &ctr.id,
            &rec.name,
            &[("signal", (sig as i32).to_string())],
        );
        Ok(self.info(&ctr))
    }

    pub async fn restart(self: &Arc<Self>, input: &str, timeout: i32) -> Result<pb::ContainerInfo> {
        let ctr = self.find(input)?;
        self.stop_ctr(&ctr, timeout).await?;
        self.start_ctr(&ctr, false).await?;
        Ok(self.info(&ctr))
    }

    pub async fn remove(
        self: &Arc<Self>,
        input: &str,
        force: bool,
        volumes: bool,
    ) -> Result<String> {
        let ctr = self.find(input)?;
        self.remove_ctr(&ctr, force, volumes).await?;
        Ok(ctr.id.clone())
    }

    async fn remove_ctr(
        self: &Arc<Self>,
        ctr: &Arc<Ctr>,
        force: bool,
        volumes: bool,
    ) -> Result<()> {
        let _op = ctr.op.lock().await;
        if !lock(&self.containers).contains_key(&ctr.id) {
            return Ok(());
        }
        let rec = ctr.record();
        if rec.state.status.is_active() {
            if !force {
                return Err(EngineError::precondition(format!(
                    "cannot remove container {}: it is {}; stop it first or use rm -f",
                    rec.name,
                    rec.state.status.as_str()
                )));
            }
            ctr.update(|r| r.state.user_stopped = true)?;
            if rec.state.status == Status::Restarting {
                ctr.update(|r| r.state.status = Status::Exited)?;
            } else {
                let rt = self.runtime_root();
                let _ = runtime::container::resume(&rt, &ctr.id, &self.cfg.cgroup_root);
                let _ = runtime::container::kill(
                    &rt,
                    &ctr.id,
                    nix::sys::signal::Signal::SIGKILL,
                    true,
                    &self.cfg.cgroup_root,
                );
                if !self.wait_inactive(ctr, Duration::from_secs(10)).await {
                    return Err(EngineError::internal(format!(
                        "container {} did not die after SIGKILL",
                        rec.name
                    )));
                }
            }
        }
        self.teardown_network(ctr).await;
        let _ = std::fs::remove_file(self.socket_path(&ctr.id));
        let images = self.images.clone();
        let id = ctr.id.clone();
        tokio::task::spawn_blocking(move || image::bundle::remove(&images, &id))
            .await
            .map_err(|e| EngineError::internal(e.to_string()))??;
        // The record goes last: a crash before leaves a container that can be removed again.
        std::fs::remove_dir_all(&ctr.dir).map_err(|e| EngineError::io("remove", &ctr.dir, e))?;
        lock(&self.containers).remove(&ctr.id);
        ctr.changed.send_modify(|v| *v += 1);
        if volumes {
            for m in rec.mounts.iter().filter(|m| m.r#type == "volume") {
                let anon = self
                    .volumes
                    .inspect(&m.name, vec![])
                    .map(|v| v.anonymous)
                    .unwrap_or(false);
                if anon && self.volume_users(&m.name).is_empty() {
                    let _ = self.volumes.remove(&m.name, &[]);
                }
            }
        }
        self.events
            .emit("container", "destroy", &ctr.id, &rec.name, &[]);
        Ok(())
    }

    pub async fn pause(self: &Arc<Self>, input: &str, pause: bool) -> Result<pb::ContainerInfo> {
        let ctr = self.find(input)?;
        let _op = ctr.op.lock().await;
        let rec = ctr.record();
        let rt = self.runtime_root();
        match (pause, rec.state.status) {
            (true, Status::Running) => {
                runtime::container::pause(&rt, &ctr.id, &self.cfg.cgroup_root)?;
                ctr.update(|r| r.state.status = Status::Paused)?;
                self.events
                    .emit("container", "pause", &ctr.id, &rec.name, &[]);
            }
            (false, Status::Paused) => {
                runtime::container::resume(&rt, &ctr.id, &self.cfg.cgroup_root)?;
                ctr.update(|r| r.state.status = Status::Running)?;
                self.events
                    .emit("container", "unpause", &ctr.id, &rec.name, &[]);
            }
            (true, s) => {
                return Err(EngineError::precondition(format!(
                    "container {} is not running (status {})",
                    rec.name,
                    s.as_str()
                )))
            }
            (false, s) => {
                return Err(EngineError::precondition(format!(
                    "container {} is not paused (status {})",
                    rec.name,
                    s.as_str()
                )))
            }
        }
        Ok(self.info(&ctr))
    }

    // ------------------------------------------------------------------ queries

    pub fn inspect(&self, input: &str) -> Result<pb::ContainerInfo> {
        let ctr = self.find(input)?;
        Ok(self.info(&ctr))
    }

    fn info(&self, ctr: &Ctr) -> pb::ContainerInfo {
        let r = ctr.record();
        pb::ContainerInfo {
            id: r.id.clone(),
            name: r.name.clone(),
            image: r.image.clone(),
            image_id: r.image_id.clone(),
            created_unix_nano: r.created_unix_nano,
            command: shell_join(&r.args),
            config: Some(r.config.clone()),
            state: Some(pb::ContainerState {
                status: r.state.status.as_str().into(),
                pid: r.state.pid,
                exit_code: r.state.exit_code,
                oom_killed: r.state.oom_killed,
                started_unix_nano: r.state.started_unix_nano,
                finished_unix_nano: r.state.finished_unix_nano,
                error: r.state.error.clone(),
                health: r.state.health.clone(),
                restart_count: r.state.restart_count,
            }),
            networks: r.endpoints.clone(),
            ports: r.ports.clone(),
            mounts: r.mounts.clone(),
            log_path: ctr.dir.join("container.log").display().to_string(),
        }
    }

    pub fn list(&self, all: bool, filters: &[String]) -> Result<Vec<pb::ContainerInfo>> {
        let mut fs = Vec::new();
        for f in filters {
            let (k, v) = f.split_once('=').ok_or_else(|| {
                EngineError::invalid(format!("invalid filter {f:?}: use KEY=VALUE"))
            })?;
            if !matches!(k, "name" | "label" | "status" | "id" | "ancestor") {
                return Err(EngineError::invalid(format!(
                    "invalid filter {k:?}: use name, id, label, status or ancestor"
                )));
            }
            fs.push((k.to_string(), v.to_string()));
        }
        let mut out: Vec<pb::ContainerInfo> = self
            .all()
            .iter()
            .map(|c| self.info(c))
            .filter(|i| {
                let status = i.state.as_ref().map(|s| s.status.as_str()).unwrap_or("");
                (all || fs.iter().any(|(k, _)| k == "status")
                    || status == "running"
                    || status == "paused"
                    || status == "restarting")
                    && fs.iter().all(|(k, v)| match k.as_str() {
                        "name" => i.name.contains(v.as_str()),
                        "id" => i.id.starts_with(v.as_str()),
                        "status" => status == v,
                        "ancestor" => {
                            i.image == *v
                                || i.image.ends_with(&format!("/{v}"))
                                || i.image.ends_with(&format!("/{v}:latest"))
                        }
                        "label" => {
                            let labels = i.config.as_ref().map(|c| &c.labels);
                            match v.split_once('=') {
                                Some((lk, lv)) => {
                                    labels.and_then(|l| l.get(lk)).is_some_and(|x| x == lv)
                                }
                                None => labels.is_some_and(|l| l.contains_key(v.as_str())),
                            }
                        }
                        _ => true,
                    })
            })
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.created_unix_nano));
        Ok(out)
    }

    /// Waits until the container is not running; its exit status.
    pub async fn wait(&self, input: &str) -> Result<pb::WaitContainerResponse> {
        let ctr = self.find(input)?;
        let mut rx = ctr.changed.subscribe();
        loop {
            let rec = ctr.record();
            if !rec.state.status.is_active() {
                return Ok(pb::WaitContainerResponse {
                    exit_code: rec.state.exit_code,
                    oom_killed: rec.state.oom_killed,
                    error: rec.state.error,
                });
            }
            if rx.changed().await.is_err() {
                return Err(EngineError::not_found(format!(
                    "container {input} was removed"
                )));
            }
        }
    }

    /// Names of the containers that mount volume `name`.
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        self.all()
            .iter()
            .map(|c| c.record())
            .filter(|r| {
                r.mounts
                    .iter()
                    .any(|m| m.r#type == "volume" && m.name == name)
            })
            .map(|r| r.name)
            .collect()
    }

    /// Containers using image `id` (config digest).
    pub fn image_users(&self, image_id: &str) -> Vec<String> {
        self.all()
            .iter()
            .map(|c| c.record())
            .filter(|r| r.image_id == image_id)
            .map(|r| r.name)
            .collect()
    }

    /// The log file of a container, a receiver of its state changes, and whether it is active.
    pub fn log_path(&self, input: &str) -> Result<(PathBuf, watch::Receiver<u64>, IsActive)> {
        let ctr = self.find(input)?;
        let c2 = ctr.clone();
        let active: IsActive = Arc::new(move || c2.status().is_active());
        Ok((
            ctr.dir.join("container.log"),
            ctr.changed.subscribe(),
            active,
        ))
    }

    /// Subscribes to the live output of a container, starting it first when `start` (a created or
    /// exited container is started with its shim waiting, so nothing is missed). Returns the
    /// output receiver and the input sender.
    pub async fn attach(
        self: &Arc<Self>,
        input: &str,
        start: bool,
    ) -> Result<(ExitHandle, broadcast::Receiver<Frame>, mpsc::Sender<Frame>)> {
        let ctr = self.find(input)?;
        let needs_start = start && !matches!(ctr.status(), Status::Running | Status::Paused);
        if needs_start {
            self.start_or_clean(&ctr, true).await?;
        }
        let (rx, tx) = {
            let live = lock(&ctr.live);
            match live.as_ref() {
                Some(l) => (l.output.subscribe(), l.to_shim.clone()),
                None => {
                    return Err(EngineError::precondition(format!(
                        "container {} is not running: start it first (or attach with start)",
                        ctr.record().name
                    )))
                }
            }
        };
        if needs_start {
            let rec = ctr.record();
            let _ = tx.try_send(Frame::Start);
            self.events.emit(
                "container",
                "start",
                &ctr.id,
                &rec.name,
                &[("image", rec.image.clone())],
            );
        }
        Ok((ExitHandle(ctr.clone()), rx, tx))
    }

    /// The exit status of a container that is no longer running (after `attach`'s exit frame).
    pub async fn exit_status(&self, handle: &ExitHandle) -> pb::ExitStatus {
        let ctr = &handle.0;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.wait_inactive(ctr, Duration::from_secs(5)),
        )
        .await;
        let rec = ctr.record();
        if rec.config.auto_remove {
            // `run --rm` returns once the container is gone, so its name is free again; the
            // removal bumps `changed`.
            let mut rx = ctr.changed.subscribe();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while lock(&self.containers).contains_key(&ctr.id) {
                if tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        let st = rec.state;
        pb::ExitStatus {
            code: st.exit_code,
            oom_killed: st.oom_killed,
            error: st.error,
        }
    }

    pub fn stats(&self, input: &str) -> Result<pb::ContainerStats> {
        let ctr = self.find(input)?;
        let rec = ctr.record();
        if !matches!(rec.state.status, Status::Running | Status::Paused) {
            return Err(EngineError::precondition(format!(
                "container {} is not running",
                rec.name
            )));
        }
        let s = runtime::container::stats(&self.runtime_root(), &ctr.id, &self.cfg.cgroup_root)?;
        let mem = s.memory.unwrap_or_default();
        let pids = s.pids.unwrap_or_default();
        Ok(pb::ContainerStats {
            id: rec.id,
            name: rec.name,
            time_unix_nano: logfile::now_unix_nano(),
            cpu_usage_ns: s.cpu.map(|c| c.usage_ns).unwrap_or(0),
            online_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_usage: mem.usage.saturating_sub(mem.cache),
            memory_limit: mem.limit.filter(|l| *l < (1 << 60)).unwrap_or(0),
            pids: pids.current,
            pids_limit: pids.limit.unwrap_or(0),
            oom_kills: mem.oom_kills,
        })
    }

    pub fn running_ids(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter(|c| matches!(c.status(), Status::Running | Status::Paused))
            .map(|c| c.id.clone())
            .collect()
    }

    pub async fn top(&self, input: &str) -> Result<pb::TopResponse> {
        let ctr = self.find(input)?;
        let pids = runtime::container::pids(&self.runtime_root(), &ctr.id, &self.cfg.cgroup_root)
            .map_err(|_| {
            EngineError::precondition(format!("container {} is not running", ctr.record().name))
        })?;
        if pids.is_empty() {
            return Err(EngineError::precondition(format!(
                "container {} is not running",
                ctr.record().name
            )));
        }
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        let out = tokio::process::Command::new("ps")
            .args([
                "-o",
                "uid,pid,ppid,c,stime,tty,time,cmd",
                "-p",
                &list.join(","),
            ])
            .output()
            .await
            .map_err(|e| EngineError::internal(format!("run ps: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let titles: Vec<String> = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let n = titles.len();
        let processes = lines
            .map(|l| {
                let mut cols: Vec<String> = l
                    .split_whitespace()
                    .take(n.saturating_sub(1))
                    .map(str::to_string)
                    .collect();
                let rest: Vec<&str> = l.split_whitespace().skip(n.saturating_sub(1)).collect();
                cols.push(rest.join(" "));
                pb::TopRow { columns: cols }
            })
            .collect();
        Ok(pb::TopResponse { titles, processes })
    }

    /// Writes the OCI process of an `exec` into the container's directory: the container's own
    /// process (capabilities, rlimits, no_new_privs, env) running `start.cmd`, with the request's
    /// env, user, working directory on top. Returns (container id, process file, runtime root).
    pub fn exec_prepare(&self, start: &pb::ExecStart) -> Result<(String, PathBuf, PathBuf)> {
        let ctr = self.find(&start.container)?;
        let rec = ctr.record();
        match rec.state.status {
            Status::Running => {}
            Status::Paused => {
                return Err(EngineError::precondition(format!(
                    "container {} is paused: unpause it first",
                    rec.name
                )))
            }
            s => {
                return Err(EngineError::precondition(format!(
                    "container {} is not running (status {})",
                    rec.name,
                    s.as_str()
                )))
            }
        }
        if start.cmd.is_empty() {
            return Err(EngineError::invalid("exec: no command given"));
        }
        let config_path = ctr.dir.join("config.json");
        let spec: serde_json::Value = std::fs::read(&config_path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .ok_or_else(|| EngineError::internal(format!("read {}", config_path.display())))?;
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(start.cmd);
        process["terminal"] = serde_json::json!(false);
        let mut env: Vec<String> = process["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for e in &start.env {
            let key = e.split('=').next().unwrap_or(e);
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        process["env"] = serde_json::json!(env);
        if !start.working_dir.is_empty() {
            if !start.working_dir.starts_with('/') {
                return Err(EngineError::invalid(format!(
                    "exec: working directory {:?} must be absolute",
                    start.working_dir
                )));
            }
            process["cwd"] = serde_json::json!(start.working_dir);
        }
        if !start.user.is_empty() {
            let rootfs = PathBuf::from(spec["root"]["path"].as_str().unwrap_or_default());
            let (uid, gid, extra) = spec::resolve_user(
                &start.user,
                std::fs::read_to_string(rootfs.join("etc/passwd"))
                    .ok()
                    .as_deref(),
                std::fs::read_to_string(rootfs.join("etc/group"))
                    .ok()
                    .as_deref(),
            )?;
            process["user"] = serde_json::json!({"uid": uid, "gid": gid, "additionalGids": extra});
        }
        if start.privileged {
            let all =
                within_our_bounding_set(spec::ALL_CAPS.iter().map(|c| c.to_string()).collect());
            process["capabilities"] =
                serde_json::json!({"bounding": all, "effective": all, "permitted": all});
        }
        let path = ctr.dir.join(format!("exec-{}.json", random_hex(8)));
        let data =
            serde_json::to_vec(&process).map_err(|e| EngineError::internal(e.to_string()))?;
        // 0600: the process's environment may hold secrets.
        crate::shim::write_file_atomic(&path, &data)
            .map_err(|e| EngineError::io("write", &path, e))?;
        Ok((ctr.id.clone(), path, self.runtime_root()))
    }

    /// `network connect`: joins now when the container runs, and at every start from now on.
    pub async fn connect(&self, req: pb::ConnectNetworkRequest) -> Result<pb::EndpointInfo> {
        let ctr = self.find(&req.container)?;
        let _op = ctr.op.lock().await;
        let rec = ctr.record();
        if matches!(rec.config.network.as_str(), "host" | "none") {
            return Err(EngineError::invalid(format!(
                "container {} uses --network {}: it cannot join other networks",
                rec.name, rec.config.network
            )));
        }
        let info = self.net.inspect(&req.network)?;
        let first = if rec.config.network.is_empty() {
            "bridge"
        } else {
            rec.config.network.as_str()
        };
        if info.name == first || rec.extra_networks.iter().any(|e| e.network == info.name) {
            return Err(EngineError::conflict(format!(
                "container {} is already connected to network {}",
                rec.name, info.name
            )));
        }
        let ip = if req.ip.is_empty() {
            None
        } else {
            Some(
                req.ip
                    .parse::<std::net::Ipv4Addr>()
                    .map_err(|_| EngineError::invalid(format!("invalid --ip {:?}", req.ip)))?,
            )
        };
        let mut ep = pb::EndpointInfo {
            network: info.name.clone(),
            aliases: req.aliases.clone(),
            ..Default::default()
        };
        if matches!(rec.state.status, Status::Running | Status::Paused) {
            let e = self
                .net
                .connect(
                    &ctr.id,
                    EndpointRequest {
                        container_name: rec.name.clone(),
                        network: info.name.clone(),
                        ip,
                        aliases: req.aliases.clone(),
                    },
                )
                .await?;
            ep = net::endpoint_pb(&e);
            // Joining a user network brings its addresses and the embedded DNS.
            self.write_net_etc(&ctr, &rec)?;
        }
        let mut stored = req.clone();
        stored.network = info.name.clone();
        let ep2 = ep.clone();
        let running = matches!(rec.state.status, Status::Running | Status::Paused);
        ctr.update(|r| {
            r.extra_networks.push(stored);
            if running {
                r.endpoints.push(ep2);
            }
        })?;
        self.events.emit(
            "network",
            "connect",
            &info.id,
            &info.name,
            &[("container", ctr.id.clone())],
        );
        Ok(ep)
    }

    /// `network disconnect`.
    pub async fn disconnect(&self, network: &str, container: &str, force: bool) -> Result<()> {
        let ctr = self.find(container)?;
        let _op = ctr.op.lock().await;
        let rec = ctr.record();
        let info = self.net.inspect(network)?;
        let first = if rec.config.network.is_empty() {
            "bridge"
        } else {
            rec.config.network.as_str()
        };
        let is_extra = rec.extra_networks.iter().any(|e| e.network == info.name);
        if info.name == first && !force {
            return Err(EngineError::precondition(format!(
                "network {} is the primary network of container {}: recreate the container to change it (or use -f to cut it off until the next start)",
                info.name, rec.name
            )));
        }
        if !is_extra && info.name != first {
            return Err(EngineError::precondition(format!(
                "container {} is not connected to network {}",
                rec.name, info.name
            )));
        }
        if matches!(rec.state.status, Status::Running | Status::Paused) {
            self.net.disconnect(&ctr.id, &info.name).await?;
            self.write_net_etc(&ctr, &rec)?;
        }
        ctr.update(|r| {
            r.extra_networks.retain(|e| e.network != info.name);
            r.endpoints.retain(|e| e.network != info.name);
        })?;
        self.events.emit(
            "network",
            "disconnect",
            &info.id,
            &info.name,
            &[("container", ctr.id.clone())],
        );
        Ok(())
    }

    /// An image-store error, with the closest local image suggested when the name is unknown.
    pub fn image_error(&self, e: image::ImageError) -> EngineError {
        if let image::ImageError::NotFound { reference } = &e {
            let names: Vec<String> = self
                .images
                .list()
                .iter()
                .map(|r| short_reference(&r.reference))
                .collect();
            let short = short_reference(reference);
            if let Some(c) = error::closest(&short, names.iter().map(String::as_str)) {
                return EngineError::not_found(format!("{e} (did you mean {c}?)"));
            }
        }
        e.into()
    }

    /// Counts for `info`.
    pub fn counts(&self) -> (u32, u32, u32, u32) {
        let (mut running, mut paused, mut stopped) = (0, 0, 0);
        let all = self.all();
        for c in &all {
            match c.status() {
                Status::Running | Status::Restarting => running += 1,
                Status::Paused => paused += 1,
                _ => stopped += 1,
            }
        }
        (all.len() as u32, running, paused, stopped)
    }
}

fn start_error(msg: &str) -> EngineError {
    let kind = if msg.contains("No such file")
        || msg.contains("not found")
        || msg.contains("executable")
    {
        Kind::Invalid
    } else {
        Kind::Internal
    };
    EngineError::new(kind, format!("cannot start the container: {msg}"))
}

/// Copies what the image has at `target` into a new, empty volume (docker's volume seeding).
fn seed_volume(rootfs: &Path, target: &str, volume: &Path) {
    // Host-side access to the image's files: only through a path without symlinks, so an image
    // cannot point a VOLUME at the host's /etc.
    let Some(src) = in_rootfs_no_symlinks(rootfs, target) else {
        return;
    };
    let empty = std::fs::read_dir(volume)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    let is_dir = std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_dir());
    if !empty || !is_dir {
        return;
    }
    // `cp -a` copies symlinks inside the tree as symlinks, never what they point at.
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(volume)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        warn!(src = %src.display(), volume = %volume.display(), "could not seed the volume from the image");
    }
}

/// `rootfs` + `target` when no component of `target` inside the rootfs is a symlink, `..` or
/// missing beyond the last existing one; `None` otherwise (the runtime resolves such targets
/// safely inside the container; the agent does not touch them from the host).
fn in_rootfs_no_symlinks(rootfs: &Path, target: &str) -> Option<PathBuf> {
    let mut p = rootfs.to_path_buf();
    for c in Path::new(target).components() {
        match c {
            std::path::Component::RootDir | std::path::Component::CurDir => continue,
            std::path::Component::Normal(n) => p.push(n),
            _ => return None,
        }
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.file_type().is_symlink() => return None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
    }
    Some(p)
}

/// A mount target: absolute, without `..`, not `/`.
fn check_target(target: &str) -> Result<String> {
    let t = target.trim_end_matches('/');
    let bad = !t.starts_with('/')
        || t.is_empty()
        || Path::new(t)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if bad {
        return Err(EngineError::invalid(format!(
            "invalid mount target {target:?}: it must be an absolute path other than / without `..`"
        )));
    }
    Ok(t.to_string())
}

/// Creates the targets of bind mounts in the rootfs as the agent (root on the host): inside a
/// user namespace the container's root may not write the image's directories.
fn prepare_mount_targets(rootfs: &Path, spec: &serde_json::Value) -> Result<()> {
    for m in spec["mounts"].as_array().into_iter().flatten() {
        if m["type"] != "bind" {
            continue;
        }
        let (Some(dest), Some(src)) = (m["destination"].as_str(), m["source"].as_str()) else {
            continue;
        };
        let Some(target) = in_rootfs_no_symlinks(rootfs, dest) else {
            continue;
        };
        if std::fs::symlink_metadata(&target).is_ok() {
            continue;
        }
        // Parents are created one by one, each checked again: no symlink can appear midway.
        let Some(parent) = target.parent() else {
            continue;
        };
        let rel = parent.strip_prefix(rootfs).unwrap_or(Path::new(""));
        let mut cur = rootfs.to_path_buf();
        let mut ok = true;
        for c in rel.components() {
            cur.push(c);
            match std::fs::symlink_metadata(&cur) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    ok = false;
                    break;
                }
                Err(_) => {
                    if std::fs::create_dir(&cur).is_err() {
                        ok = false;
                        break;
                    }
                }
            }
        }
        if !ok {
            continue;
        }
        let _ = if Path::new(src).is_dir() {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(|_| ())
        };
    }
    Ok(())
}

/// userns-remap: shifts the owner of every file under `root` by (uid, gid), as docker does, so the
/// container's root (host `uid`) owns what the image's root owned. Files of ids beyond `count` are
/// left alone. On an overlay rootfs this copies the files up (metadata and data): the cost of
/// remapping without idmapped mounts.
fn shift_ownership(root: &Path, uid: u32, gid: u32, count: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(|e| EngineError::io("stat", &p, e))?;
        if md.uid() < count && md.gid() < count && md.uid() < uid {
            std::os::unix::fs::lchown(&p, Some(md.uid() + uid), Some(md.gid() + gid))
                .map_err(|e| EngineError::io("chown", &p, e))?;
            // chown clears set-id bits; put them back like docker.
            if md.is_file() && md.mode() & 0o6000 != 0 {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(
                    &p,
                    std::fs::Permissions::from_mode(md.mode() & 0o7777),
                );
            }
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p)
                .map_err(|e| EngineError::io("read", &p, e))?
                .flatten()
            {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

/// `caps` limited to what the agent itself may hand out (its bounding set): `--privileged` means
/// every capability the agent has, as with docker, not ones the kernel would refuse.
fn within_our_bounding_set(caps: Vec<String>) -> Vec<String> {
    match ::caps::read(None, ::caps::CapSet::Bounding) {
        Ok(ours) => {
            let ours: std::collections::HashSet<String> =
                ours.iter().map(|c| c.to_string()).collect();
            caps.into_iter().filter(|c| ours.contains(c)).collect()
        }
        Err(_) => caps,
    }
}

/// `--add-host NAME:IP` entries.
fn parse_extra_hosts(extra: &[String]) -> Result<Vec<(String, std::net::Ipv4Addr)>> {
    extra
        .iter()
        .map(|e| {
            let (name, ip) = e.split_once(':').ok_or_else(|| {
                EngineError::invalid(format!("invalid --add-host {e:?}: use NAME:IP"))
            })?;
            let ip = ip.parse().map_err(|_| {
                EngineError::invalid(format!(
                    "invalid --add-host {e:?}: {ip:?} is not an IPv4 address"
                ))
            })?;
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(EngineError::invalid(format!(
                    "invalid --add-host {e:?}: bad host name"
                )));
            }
            Ok((name.to_string(), ip))
        })
        .collect()
}

fn write_etc(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).map_err(|e| EngineError::io("write", path, e))
}

/// `docker.io/library/busybox:latest` -> `busybox:latest`, as users type it.
pub fn short_reference(r: &str) -> String {
    r.strip_prefix("docker.io/library/")
        .or_else(|| r.strip_prefix("docker.io/"))
        .unwrap_or(r)
        .to_string()
}

/// Args joined for display, quoting those with spaces.
pub fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) || a.contains('"') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st() -> State {
        State {
            status: Status::Exited,
            pid: 0,
            exit_code: 0,
            oom_killed: false,
            started_unix_nano: 0,
            finished_unix_nano: 0,
            error: String::new(),
            restart_count: 0,
            restart_streak: 0,
            user_stopped: false,
            health: None,
        }
    }

    fn pol(name: &str, max: u32) -> pb::RestartPolicy {
        pb::RestartPolicy {
            name: name.into(),
            max_retries: max,
        }
    }

    #[test]
    fn restart_policies_decide_and_back_off() {
        let quick = Duration::from_millis(10);
        assert_eq!(restart_delay(None, 1, &st(), quick), None);
        assert_eq!(restart_delay(Some(&pol("no", 0)), 1, &st(), quick), None);
        assert_eq!(
            restart_delay(Some(&pol("on-failure", 0)), 0, &st(), quick),
            None
        );
        assert_eq!(
            restart_delay(Some(&pol("on-failure", 0)), 1, &st(), quick),
            Some(Duration::from_millis(100))
        );
        let mut s = st();
        s.restart_count = 3;
        assert_eq!(
            restart_delay(Some(&pol("on-failure", 3)), 1, &s, quick),
            None
        );
        assert!(restart_delay(Some(&pol("on-failure", 4)), 1, &s, quick).is_some());
        assert!(restart_delay(Some(&pol("always", 0)), 0, &st(), quick).is_some());
        s.user_stopped = true;
        assert_eq!(restart_delay(Some(&pol("always", 0)), 0, &s, quick), None);
        let mut s = st();
        s.restart_streak = 3;
        assert_eq!(
            restart_delay(Some(&pol("always", 0)), 0, &s, quick),
            Some(Duration::from_millis(800))
        );
        s.restart_streak = 30;
        assert_eq!(
            restart_delay(Some(&pol("always", 0)), 0, &s, quick),
            Some(Duration::from_secs(60))
        );
        // A long run resets the back-off.
        assert_eq!(
            restart_delay(Some(&pol("always", 0)), 0, &s, Duration::from_secs(11)),
            Some(Duration::from_millis(100))
        );
        assert!(validate_restart_policy(&pol("sometimes", 0)).is_err());
        assert!(validate_restart_policy(&pol("always", 3)).is_err());
        assert!(validate_restart_policy(&pol("on-failure", 3)).is_ok());
    }

    #[test]
    fn bind_policy_refuses_host_system_paths() {
        let state = Path::new("/var/lib/flotilla");
        for p in [
            "/",
            "/etc",
            "/etc/shadow",
            "/proc/1",
            "/sys",
            "/dev/sda",
            "/boot",
            "/run/flotilla/agent.sock",
            "/var/run",
            "/var/lib/flotilla/images",
            "/var",
            "/var/lib",
        ] {
            let e = bind_allowed(Path::new(p), &[state], &[], false).unwrap_err();
            assert!(e.msg.contains("refused"), "{p}: {}", e.msg);
        }
        for p in [
            "/srv/data",
            "/home/u",
            "/tmp/x",
            "/var/lib/other",
            "/etcetera",
        ] {
            assert!(
                bind_allowed(Path::new(p), &[state], &[], false).is_ok(),
                "{p}"
            );
        }
        assert!(bind_allowed(
            Path::new("/etc/app"),
            &[state],
            &[PathBuf::from("/etc/app")],
            false
        )
        .is_ok());
        assert!(bind_allowed(Path::new("/etc"), &[state], &[], true).is_ok());
        let other_state = Path::new("/data/flotilla");
        assert!(bind_allowed(
            Path::new("/data/flotilla/volumes"),
            &[other_state],
            &[],
            false
        )
        .is_err());
    }

    #[test]
    fn names_and_display() {
        assert!(valid_container_name("web-1.a_b"));
        assert!(!valid_container_name("-web"));
        assert!(!valid_container_name("w"));
        assert_eq!(
            shell_join(&["sh".into(), "-c".into(), "echo hi".into()]),
            "sh -c \"echo hi\""
        );
        assert_eq!(random_hex(32).len(), 64);
        assert_ne!(random_hex(8), random_hex(8));
    }
}
