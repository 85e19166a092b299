//! The task executor: runs the tasks the managers assign to this node, one state machine per task
//! (swarmkit's agent/exec idea), over the local [`Engine`].
//!
//! [`Executor::apply`] takes `Assignments` (a full set or a delta) and keeps one worker per task;
//! a worker walks its task forward — ACCEPTED, PREPARING (secrets written to tmpfs, image pulled
//! when missing, container created), STARTING, RUNNING, then COMPLETE, FAILED or SHUTDOWN — and
//! removes the container when the task is removed. Observed statuses go out on an mpsc channel
//! that the dispatcher session batches to the managers.
//!
//! Invariants: a task's reported state never goes back, and never changes once terminal
//! (COMPLETE, SHUTDOWN, FAILED, REJECTED); the executor never restarts a container (restart
//! policy "no": the orchestrator replaces failed tasks); containers keep running when the
//! executor or the agent goes away, and a new executor adopts them from their
//! `com.flotilla.task.id` label without restarting them; secrets live only on tmpfs and in
//! memory, and a task's files go with the task.

pub mod files;
pub mod spec;
mod task;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{error, warn};

use crate::engine::logs::Query;
use crate::engine::{Engine, EngineConfig};
use crate::shim::logfile::Stream as LogStreamKind;
use files::TaskFiles;
pub use flotilla_proto::control::v1 as pb;
pub use spec::LABEL_TASK_ID;
use task::{Desired, Worker};

/// Capacity of the status channel; workers wait when the session falls this far behind.
const STATUS_CHANNEL: usize = 1024;
/// Log lines per chunk.
const LOG_LINES_PER_CHUNK: usize = 100;
/// How often a followed log file is read again.
const LOG_POLL: Duration = Duration::from_millis(100);

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds the executor's secrets directory to the engine's allowed bind-mount sources (secret and
/// config files are bound from there; the engine refuses binds from its own run dir otherwise).
/// Call before `Engine::open`.
pub fn allow_secrets_dir(cfg: &mut EngineConfig, secrets_dir: &Path) {
    let dir = canonical_guess(secrets_dir);
    if !cfg.allow_host_paths.iter().any(|p| dir.starts_with(p)) {
        cfg.allow_host_paths.push(dir);
    }
}

/// `p` with its deepest existing ancestor resolved (the rest appended as is).
fn canonical_guess(p: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = p.to_path_buf();
    loop {
        if let Ok(c) = std::fs::canonicalize(&cur) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (cur.file_name().map(|n| n.to_os_string()), cur.parent()) {
            (Some(n), Some(parent)) => {
                rest.push(n);
                cur = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// The data of one secret or config.
type Blob = Vec<u8>;

/// What one task is, for the executor.
struct Entry {
    desired: watch::Sender<Desired>,
    status: Arc<Mutex<pb::TaskStatus>>,
    container: Arc<Mutex<Option<String>>>,
}

#[derive(Default)]
struct Shared {
    tasks: HashMap<String, Entry>,
    /// Secret and config data by id, as the last assignments gave them.
    secrets: HashMap<String, Vec<u8>>,
    configs: HashMap<String, Vec<u8>>,
}

pub(crate) struct Inner {
    engine: Arc<Engine>,
    files: Result<TaskFiles, String>,
    tx: mpsc::Sender<pb::TaskStatusUpdate>,
    shared: Mutex<Shared>,
    /// Serializes `apply` and adoption; true once the engine's task containers were adopted.
    adopted: tokio::sync::Mutex<bool>,
}

pub struct Executor {
    inner: Arc<Inner>,
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Workers end when their desired-state channel closes; containers keep running.
        lock(&self.inner.shared).tasks.clear();
    }
}

impl Executor {
    /// An executor over `engine`; secret and config files go under `secrets_dir` (a tmpfs is
    /// mounted there when it is not one). Returns the receiver of status updates.
    pub fn new(
        engine: Arc<Engine>,
        secrets_dir: PathBuf,
    ) -> (Executor, mpsc::Receiver<pb::TaskStatusUpdate>) {
        let remap = engine.cfg.userns_remap.map(|(u, g, _)| (u, g));
        let files = TaskFiles::open(&secrets_dir, remap).map_err(|e| {
            error!(error = %e, "task secrets and configs are unavailable");
            e.to_string()
        });
        let files = files.and_then(|f| {
            let allowed = engine
                .cfg
                .allow_host_paths
                .iter()
                .any(|p| f.root().starts_with(p));
            if allowed {
                Ok(f)
            } else {
                let msg = format!(
                    "the engine does not allow bind mounts from the secrets directory {}: add it to the engine's allowed host paths (executor::allow_secrets_dir)",
                    f.root().display()
                );
                error!("{msg}");
                Err(msg)
            }
        });
        let (tx, rx) = mpsc::channel(STATUS_CHANNEL);
        let inner = Arc::new(Inner {
            engine,
            files,
            tx,
            shared: Mutex::new(Shared::default()),
            adopted: tokio::sync::Mutex::new(false),
        });
        (Executor { inner }, rx)
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.inner.engine
    }

    /// Applies an Assignments message: a full set (anything not listed is stopped and removed)
    /// or a delta (tasks added or updated, tasks removed).
    pub async fn apply(&self, a: pb::Assignments) {
        let mut adopted = self.inner.adopted.lock().await;
        if !*adopted {
            self.inner.adopt().await;
            *adopted = true;
        }
        let mut sh = lock(&self.inner.shared);
        if a.full {
            sh.secrets.clear();
            sh.configs.clear();
        }
        for s in a.secrets {
            sh.secrets.insert(s.id, s.data);
        }
        for id in &a.removed_secrets {
            sh.secrets.remove(id);
        }
        for c in a.configs {
            sh.configs.insert(c.id, c.data);
        }
        for id in &a.removed_configs {
            sh.configs.remove(id);
        }
        let listed: HashSet<String> = a.tasks.iter().map(|t| t.id.clone()).collect();
        for t in a.tasks {
            if !files::valid_task_id(&t.id) {
                warn!(task = %t.id, "ignoring a task with an invalid id");
                continue;
            }
            let removed = t.desired_state >= pb::TaskState::Remove as i32;
            let d = Desired {
                state: t.desired_state,
                removed,
                task: Some(Arc::new(t)),
            };
            let id = d.task.as_ref().map(|t| t.id.clone()).unwrap_or_default();
            if let Some(e) = sh.tasks.get(&id) {
                e.desired.send_replace(d);
            } else if !removed {
                let initial = d
                    .task
                    .as_ref()
                    .and_then(|t| t.status.clone())
                    .unwrap_or_default();
                let entry = self.inner.spawn(&id, d, initial, None);
                sh.tasks.insert(id, entry);
            }
        }
        let mut gone: Vec<&String> = a.removed_tasks.iter().collect();
        let unlisted: Vec<String> = if a.full {
            sh.tasks
                .keys()
                .filter(|id| !listed.contains(*id))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        gone.extend(unlisted.iter());
        for id in gone {
            if let Some(e) = sh.tasks.get(id) {
                e.desired.send_modify(|d| d.removed = true);
            }
        }
    }

    /// The tasks this node knows with their current status (for Register after a restart or a
    /// reconnect). The first call adopts the engine's task containers.
    pub async fn running(&self) -> Vec<pb::TaskStatusUpdate> {
        {
            let mut adopted = self.inner.adopted.lock().await;
            if !*adopted {
                self.inner.adopt().await;
                *adopted = true;
            }
        }
        let sh = lock(&self.inner.shared);
        let mut out: Vec<pb::TaskStatusUpdate> = sh
            .tasks
            .iter()
            .map(|(id, e)| pb::TaskStatusUpdate {
                task_id: id.clone(),
                status: Some(lock(&e.status).clone()),
            })
            .collect();
        out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        out
    }

    /// The logs of the requested tasks as chunks of lines, each line tagged with its task and
    /// stream; with `follow`, new lines keep coming until the stream is dropped or the tasks'
    /// containers are removed. `tail` > 0 keeps that many lines per task (else all); `since` is
    /// unix milliseconds (0: from the start). The last chunk has `end` set (and `error` naming
    /// the tasks whose logs cannot be read here).
    pub fn logs(&self, req: pb::LogRequest) -> LogStream {
        let (tx, rx) = mpsc::channel(16);
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.stream_logs(req, tx).await });
        LogStream { rx }
    }
}

/// The chunks of one `Executor::logs` call; dropping it stops the readers.
pub struct LogStream {
    rx: mpsc::Receiver<pb::LogChunk>,
}

impl LogStream {
    /// A stream of the chunks sent on `rx` (for fakes of the executor).
    pub fn from_receiver(rx: mpsc::Receiver<pb::LogChunk>) -> LogStream {
        LogStream { rx }
    }

    pub async fn next(&mut self) -> Option<pb::LogChunk> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for LogStream {
    type Item = pb::LogChunk;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<pb::LogChunk>> {
        self.rx.poll_recv(cx)
    }
}

/// Where one task's logs are.
struct LogSource {
    task_id: String,
    container: String,
    node_id: String,
    slot: u64,
}

impl Inner {
    /// Starts the worker of a task.
    fn spawn(
        self: &Arc<Self>,
        id: &str,
        desired: Desired,
        initial: pb::TaskStatus,
        container: Option<String>,
    ) -> Entry {
        let (dtx, drx) = watch::channel(desired);
        let status = Arc::new(Mutex::new(initial));
        let container = Arc::new(Mutex::new(container));
        let w = Worker {
            inner: self.clone(),
            id: id.to_string(),
            status: status.clone(),
            container: container.clone(),
            desired: drx,
        };
        tokio::spawn(w.run());
        Entry {
            desired: dtx,
            status,
            container,
        }
    }

    /// Takes over the task containers the engine has (after an agent or executor restart):
    /// their status comes from the engine (refined by the status last reported), and each gets
    /// a worker that watches it without restarting it. Task files with no container left are
    /// deleted.
    async fn adopt(self: &Arc<Self>) {
        let list = match self.engine.list(true, &[format!("label={LABEL_TASK_ID}")]) {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot list the engine's task containers");
                return;
            }
        };
        let mut sh = lock(&self.shared);
        for info in list {
            let Some(task_id) = info
                .config
                .as_ref()
                .and_then(|c| c.labels.get(LABEL_TASK_ID))
                .cloned()
            else {
                continue;
            };
            if !files::valid_task_id(&task_id) || sh.tasks.contains_key(&task_id) {
                if sh.tasks.contains_key(&task_id) {
                    warn!(task = %task_id, container = %info.id, "a second container of the same task is left alone");
                }
                continue;
            }
            let saved = self
                .files
                .as_ref()
                .ok()
                .and_then(|f| f.load_status(&task_id));
            let status = task::status_from_container(&info, saved);
            let d = Desired {
                task: None,
                state: pb::TaskState::Running as i32,
                removed: false,
            };
            tracing::info!(task = %task_id, container = %info.id, state = status.state, "adopted a task container");
            let entry = self.spawn(&task_id, d, status, Some(info.id.clone()));
            sh.tasks.insert(task_id, entry);
        }
        if let Ok(f) = &self.files {
            for id in f.task_ids() {
                if !sh.tasks.contains_key(&id) {
                    f.remove(&id);
                }
            }
        }
    }

    /// Drops the entry of a task whose worker finished (unless a new one took its place).
    fn forget(&self, id: &str, status: &Arc<Mutex<pb::TaskStatus>>) {
        let mut sh = lock(&self.shared);
        if sh
            .tasks
            .get(id)
            .is_some_and(|e| Arc::ptr_eq(&e.status, status))
        {
            sh.tasks.remove(id);
        }
    }

    /// The secret and config data a task refers to; the name of the first one missing.
    fn data_for(&self, task: &pb::Task) -> Result<(Vec<Blob>, Vec<Blob>), String> {
        let sh = lock(&self.shared);
        let c = task.spec.as_ref().and_then(|s| s.container.as_ref());
        let mut secrets = Vec::new();
        for r in c.map(|c| c.secrets.as_slice()).unwrap_or_default() {
            match sh.secrets.get(&r.secret_id) {
                Some(d) => secrets.push(d.clone()),
                None => {
                    let name = if r.secret_name.is_empty() {
                        &r.secret_id
                    } else {
                        &r.secret_name
                    };
                    return Err(format!("secret {name} not available"));
                }
            }
        }
        let mut configs = Vec::new();
        for r in c.map(|c| c.configs.as_slice()).unwrap_or_default() {
            match sh.configs.get(&r.config_id) {
                Some(d) => configs.push(d.clone()),
                None => {
                    let name = if r.config_name.is_empty() {
                        &r.config_id
                    } else {
                        &r.config_name
                    };
                    return Err(format!("config {name} not available"));
                }
            }
        }
        Ok((secrets, configs))
    }

    /// Finds the container, node and slot of each task; why the others have no logs here.
    fn log_sources(&self, ids: &[String]) -> (Vec<LogSource>, Vec<String>) {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let sh = lock(&self.shared);
        for id in ids {
            let known = sh.tasks.get(id).and_then(|e| {
                let c = lock(&e.container).clone()?;
                let d = e.desired.borrow();
                Some((c, d.task.as_ref().map(|t| (t.node_id.clone(), t.slot))))
            });
            let (container, meta) = match known {
                Some(k) => k,
                None => {
                    // A task the executor no longer tracks may still have its container.
                    let hit = self
                        .engine
                        .list(true, &[format!("label={LABEL_TASK_ID}={id}")])
                        .ok()
                        .and_then(|l| l.into_iter().next());
                    match hit {
                        Some(info) => (info.id, None),
                        None if sh.tasks.contains_key(id) => {
                            missing.push(format!("task {id} has no container yet"));
                            continue;
                        }
                        None => {
                            missing.push(format!("task {id} is not on this node"));
                            continue;
                        }
                    }
                }
            };
            let (node_id, slot) = meta.unwrap_or_else(|| {
                let slot = self
                    .engine
                    .inspect(&container)
                    .ok()
                    .and_then(|i| i.config)
                    .and_then(|c| c.labels.get(spec::LABEL_SLOT).cloned())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                (String::new(), slot)
            });
            found.push(LogSource {
                task_id: id.clone(),
                container,
                node_id,
                slot,
            });
        }
        (found, missing)
    }

    async fn stream_logs(self: Arc<Self>, req: pb::LogRequest, tx: mpsc::Sender<pb::LogChunk>) {
        let (sources, missing) = self.log_sources(&req.task_ids);
        let query = Query {
            since: req.since.saturating_mul(1_000_000),
            until: 0,
            tail: if req.tail > 0 { req.tail } else { -1 },
            stdout: false,
            stderr: false,
        };
        let mut readers = tokio::task::JoinSet::new();
        for src in sources {
            let engine = self.engine.clone();
            let tx = tx.clone();
            let q = query.clone();
            let rid = req.request_id;
            let follow = req.follow;
            readers.spawn(async move { read_task_log(engine, src, q, follow, rid, tx).await });
        }
        let mut errors = missing;
        loop {
            tokio::select! {
                r = readers.join_next() => match r {
                    None => break,
                    Some(Ok(Err(e))) => errors.push(e),
                    Some(_) => {}
                },
                _ = tx.closed() => return, // cancelled: the readers go with the JoinSet
            }
        }
        let _ = tx
            .send(pb::LogChunk {
                request_id: req.request_id,
                lines: Vec::new(),
                end: true,
                error: errors.join("; "),
            })
            .await;
    }
}

/// Sends the log of one task as chunks; with `follow`, until the receiver goes or the container
/// is removed.
async fn read_task_log(
    engine: Arc<Engine>,
    src: LogSource,
    mut q: Query,
    follow: bool,
    request_id: u64,
    tx: mpsc::Sender<pb::LogChunk>,
) -> Result<(), String> {
    use crate::engine::logs;
    let (path, _changed, _active) = engine
        .log_path(&src.container)
        .map_err(|e| format!("logs of task {}: {e}", src.task_id))?;
    let send = |records: Vec<crate::shim::logfile::Record>| {
        let lines: Vec<pb::LogLine> = records
            .into_iter()
            .map(|r| pb::LogLine {
                task_id: src.task_id.clone(),
                node_id: src.node_id.clone(),
                slot: src.slot,
                stream: match r.stream {
                    LogStreamKind::Stdout => "stdout".into(),
                    LogStreamKind::Stderr => "stderr".into(),
                },
                timestamp_ns: r.time_unix_nano,
                data: r.data,
            })
            .collect();
        let tx = tx.clone();
        async move {
            for part in lines.chunks(LOG_LINES_PER_CHUNK) {
                let chunk = pb::LogChunk {
                    request_id,
                    lines: part.to_vec(),
                    end: false,
                    error: String::new(),
                };
                if tx.send(chunk).await.is_err() {
                    return false;
                }
            }
            true
        }
    };
    let p = path.clone();
    let q1 = q.clone();
    let (records, mut offset) = tokio::task::spawn_blocking(move || logs::read(&p, &q1))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if !send(records).await || !follow {
        return Ok(());
    }
    q.tail = -1;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LOG_POLL) => {}
            _ = tx.closed() => return Ok(()),
        }
        let Ok(f) = std::fs::File::open(&path) else {
            return Ok(()); // the container was removed
        };
        let q2 = q.clone();
        let (more, off) = tokio::task::spawn_blocking(move || logs::read_from(f, offset, &q2))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        offset = off;
        if !more.is_empty() && !send(more).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_secrets_dir_resolves_what_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(tmp.path()).unwrap();
        let p = canonical_guess(&tmp.path().join("run/secrets"));
        assert_eq!(p, real.join("run/secrets"));
    }
}
