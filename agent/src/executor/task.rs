//! One task's state machine: prepare, start, watch, stop, remove.
//!
//! The worker owns its task's container. It reads the desired state from a watch channel (the
//! latest assignment of the task) and reports observed statuses through [`Worker::report`],
//! which drops anything that would move the state backwards or change a terminal one.

use std::sync::{Arc, Mutex};

use flotilla_proto::agent::v1 as apb;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use super::files::FileData;
use super::{lock, pb, spec, Inner};
use crate::engine::Kind;
use crate::image::PullOptions;

/// The latest assignment of a task.
#[derive(Clone, Debug)]
pub(crate) struct Desired {
    /// `None` for a task adopted from the engine before any assignment named it.
    pub task: Option<Arc<pb::Task>>,
    /// `TaskState` the managers want.
    pub state: i32,
    /// Stop and remove: desired REMOVE, listed in `removed_tasks`, or absent from a full set.
    pub removed: bool,
}

impl Desired {
    fn stop(&self) -> bool {
        self.removed || self.state >= pb::TaskState::Shutdown as i32
    }
}

const ACCEPTED: i32 = pb::TaskState::Accepted as i32;
const PREPARING: i32 = pb::TaskState::Preparing as i32;
const READY: i32 = pb::TaskState::Ready as i32;
const STARTING: i32 = pb::TaskState::Starting as i32;
const RUNNING: i32 = pb::TaskState::Running as i32;
const COMPLETE: i32 = pb::TaskState::Complete as i32;
const SHUTDOWN: i32 = pb::TaskState::Shutdown as i32;
const FAILED: i32 = pb::TaskState::Failed as i32;
const REJECTED: i32 = pb::TaskState::Rejected as i32;

/// COMPLETE and beyond: nothing changes any more.
pub fn is_terminal(state: i32) -> bool {
    state >= COMPLETE
}

fn now_ms() -> i64 {
    crate::shim::logfile::now_unix_nano() / 1_000_000
}

/// The status after moving `cur` to `state` and applying `f`, or `None` when that is not a
/// report to make: a lower state, a change of a terminal state, or no change at all.
pub fn next_status(
    cur: &pb::TaskStatus,
    state: i32,
    f: impl FnOnce(&mut pb::TaskStatus),
) -> Option<pb::TaskStatus> {
    if state < cur.state || is_terminal(cur.state) {
        return None;
    }
    let mut next = cur.clone();
    next.state = state;
    f(&mut next);
    next.timestamp = cur.timestamp;
    if next == *cur {
        return None;
    }
    next.timestamp = now_ms();
    Some(next)
}

fn port_status(
    ports: &[apb::PortBinding],
    asked: Option<&pb::EndpointSpec>,
) -> Option<pb::PortStatus> {
    if ports.is_empty() {
        return None;
    }
    let ports = ports
        .iter()
        .map(|p| {
            let protocol = if p.protocol == "udp" {
                pb::PortProtocol::Udp
            } else {
                pb::PortProtocol::Tcp
            };
            let name = asked
                .and_then(|e| {
                    e.ports.iter().find(|a| {
                        a.target_port == p.container_port && a.protocol == protocol as i32
                    })
                })
                .map(|a| a.name.clone())
                .unwrap_or_default();
            pb::PortConfig {
                name,
                protocol: protocol as i32,
                target_port: p.container_port,
                published_port: p.host_port,
                publish_mode: "host".into(),
            }
        })
        .collect();
    Some(pb::PortStatus { ports })
}

fn health_of(info: &apb::ContainerInfo) -> String {
    info.state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .map(|h| h.status.clone())
        .unwrap_or_default()
}

/// How an ended container ends its task.
fn exit_status(st: &mut pb::TaskStatus, code: i32) -> i32 {
    st.exit_code = code;
    st.message = "finished".into();
    if code == 0 {
        COMPLETE
    } else {
        st.err = format!("task: non-zero exit ({code})");
        FAILED
    }
}

/// The status of a task adopted from its container: what the engine says, unless the status
/// last reported (kept on tmpfs) is terminal (it never changes: a task stopped for SHUTDOWN
/// looks like a failed one to the engine) or further along.
pub fn status_from_container(
    info: &apb::ContainerInfo,
    saved: Option<pb::TaskStatus>,
) -> pb::TaskStatus {
    let mut st = pb::TaskStatus {
        container_id: info.id.clone(),
        timestamp: now_ms(),
        ..Default::default()
    };
    let state = info.state.clone().unwrap_or_default();
    st.state = match state.status.as_str() {
        "running" | "paused" | "restarting" => {
            st.message = "started".into();
            st.health = health_of(info);
            st.port_status = port_status(&info.ports, None);
            RUNNING
        }
        "created" => {
            st.message = "preparing".into();
            PREPARING
        }
        _ => exit_status(&mut st, state.exit_code),
    };
    match saved {
        Some(mut s) if is_terminal(s.state) || s.state > st.state => {
            s.container_id = info.id.clone();
            s
        }
        _ => st,
    }
}

pub(crate) struct Worker {
    pub inner: Arc<Inner>,
    pub id: String,
    pub status: Arc<Mutex<pb::TaskStatus>>,
    pub container: Arc<Mutex<Option<String>>>,
    pub desired: watch::Receiver<Desired>,
}

/// The executor went away: leave the container as it is.
struct Abandoned;

impl Worker {
    fn state(&self) -> i32 {
        lock(&self.status).state
    }

    fn container_id(&self) -> Option<String> {
        lock(&self.container).clone()
    }

    fn desired(&self) -> Desired {
        self.desired.borrow().clone()
    }

    /// Reports `state` (with `f` applied to the status) unless it would move backwards.
    async fn report(&self, state: i32, f: impl FnOnce(&mut pb::TaskStatus)) {
        let next = {
            let mut st = lock(&self.status);
            match next_status(&st, state, f) {
                Some(n) => {
                    *st = n.clone();
                    n
                }
                None => return,
            }
        };
        if let Ok(files) = &self.inner.files {
            files.save_status(&self.id, &next);
        }
        info!(task = %self.id, state = next.state, err = %next.err, "task status");
        let _ = self
            .inner
            .tx
            .send(pb::TaskStatusUpdate {
                task_id: self.id.clone(),
                status: Some(next),
            })
            .await;
    }

    async fn changed(&mut self) -> Result<Desired, Abandoned> {
        self.desired.changed().await.map_err(|_| Abandoned)?;
        Ok(self.desired())
    }

    pub async fn run(mut self) {
        if self.drive().await.is_err() {
            return;
        }
        // Terminal: its secrets and configs go now; the stopped container (and its log) stays
        // until the task is removed, as history.
        if let Ok(files) = &self.inner.files {
            files.remove_data(&self.id);
        }
        // Wait for the removal, then clean up.
        loop {
            if self.desired().removed {
                break;
            }
            if self.changed().await.is_err() {
                return;
            }
        }
        if let Some(cid) = self.container_id() {
            let engine = &self.inner.engine;
            let _ = engine.stop(&cid, -1).await;
            match engine.remove(&cid, true, true).await {
                Ok(_) => {}
                Err(e) if e.kind == Kind::NotFound => {}
                Err(e) => {
                    warn!(task = %self.id, container = %cid, error = %e, "cannot remove the task's container")
                }
            }
        }
        if let Ok(files) = &self.inner.files {
            files.remove(&self.id);
        }
        self.inner.forget(&self.id, &self.status);
    }

    /// Takes the task as far as it goes: returns once its status is terminal (or it was removed
    /// before it ran).
    async fn drive(&mut self) -> Result<(), Abandoned> {
        if is_terminal(self.state()) {
            return Ok(());
        }
        if self.container_id().is_none() {
            let d = self.desired();
            if d.removed {
                return Ok(());
            }
            if d.stop() {
                self.report(SHUTDOWN, |s| s.message = "shutdown".into())
                    .await;
                return Ok(());
            }
            if self.state() >= ACCEPTED {
                // The managers saw this task running here, and its container is gone.
                self.report(FAILED, |s| {
                    s.message = "lost".into();
                    s.err = "the task's container is gone from the node".into();
                })
                .await;
                return Ok(());
            }
            let Some(task) = d.task.clone() else {
                return Ok(());
            };
            self.report(ACCEPTED, |s| s.message = "accepted".into())
                .await;
            self.report(PREPARING, |s| s.message = "preparing".into())
                .await;
            let prepared = {
                let prep = prepare(&self.inner, &task);
                tokio::pin!(prep);
                loop {
                    tokio::select! {
                        r = &mut prep => break Some(r),
                        d = self.desired.changed() => {
                            if d.is_err() {
                                return Err(Abandoned);
                            }
                            if self.desired.borrow().stop() {
                                break None;
                            }
                        }
                    }
                }
            };
            match prepared {
                None => {
                    self.report(SHUTDOWN, |s| s.message = "shutdown".into())
                        .await;
                    return Ok(());
                }
                Some(Err(e)) => {
                    if let Ok(files) = &self.inner.files {
                        files.remove(&self.id);
                    }
                    self.report(REJECTED, |s| {
                        s.message = "preparing".into();
                        s.err = e;
                    })
                    .await;
                    return Ok(());
                }
                Some(Ok(config)) => {
                    // Not cancelled: a create cut short would leave a container nobody tracks.
                    match create(&self.inner, &task, config).await {
                        Ok(cid) => {
                            // Told with the next status (STARTING or READY).
                            *lock(&self.container) = Some(cid.clone());
                            lock(&self.status).container_id = cid;
                        }
                        Err(e) => {
                            if let Ok(files) = &self.inner.files {
                                files.remove(&self.id);
                            }
                            self.report(REJECTED, |s| {
                                s.message = "preparing".into();
                                s.err = e;
                            })
                            .await;
                            return Ok(());
                        }
                    }
                }
            }
        }
        let Some(cid) = self.container_id() else {
            return Ok(());
        };
        let info = match self.inner.engine.inspect(&cid) {
            Ok(i) => i,
            Err(e) => {
                self.report(FAILED, |s| {
                    s.message = "lost".into();
                    s.err = format!("the task's container is gone: {e}");
                })
                .await;
                return Ok(());
            }
        };
        let status = info
            .state
            .as_ref()
            .map(|s| s.status.clone())
            .unwrap_or_default();
        match status.as_str() {
            "running" | "paused" | "restarting" => {}
            "created" => {
                // Start once an assignment says RUNNING.
                loop {
                    let d = self.desired();
                    if d.stop() {
                        self.report(SHUTDOWN, |s| s.message = "shutdown".into())
                            .await;
                        return Ok(());
                    }
                    if d.task.is_some() && d.state >= RUNNING {
                        break;
                    }
                    if d.task.is_some() {
                        self.report(READY, |s| s.message = "prepared".into()).await;
                    }
                    self.changed().await?;
                }
                self.report(STARTING, |s| s.message = "starting".into())
                    .await;
                if let Err(e) = self.inner.engine.start(&cid).await {
                    self.report(FAILED, |s| {
                        s.message = "starting".into();
                        s.err = e.to_string();
                    })
                    .await;
                    return Ok(());
                }
            }
            _ => {
                let code = info.state.as_ref().map(|s| s.exit_code).unwrap_or(0);
                let mut tmp = pb::TaskStatus::default();
                let state = exit_status(&mut tmp, code);
                self.report(state, |s| {
                    s.exit_code = tmp.exit_code;
                    s.message = tmp.message;
                    s.err = tmp.err;
                })
                .await;
                return Ok(());
            }
        }
        self.watch(&cid).await
    }

    /// The container runs: report RUNNING, health changes, the exit, or stop it on demand.
    async fn watch(&mut self, cid: &str) -> Result<(), Abandoned> {
        let engine = self.inner.engine.clone();
        let (_, mut events) = engine.events.subscribe(0);
        let endpoint = self
            .desired()
            .task
            .as_ref()
            .and_then(|t| t.endpoint.clone());
        if let Ok(info) = engine.inspect(cid) {
            self.report(RUNNING, |s| {
                s.message = "started".into();
                s.health = health_of(&info);
                s.port_status = port_status(&info.ports, endpoint.as_ref());
            })
            .await;
        }
        loop {
            tokio::select! {
                d = self.desired.changed() => {
                    if d.is_err() {
                        return Err(Abandoned);
                    }
                    if self.desired.borrow().stop() {
                        if let Err(e) = engine.stop(cid, -1).await {
                            warn!(task = %self.id, container = %cid, error = %e, "cannot stop the task's container");
                        }
                        let code = engine
                            .inspect(cid)
                            .ok()
                            .and_then(|i| i.state)
                            .map(|s| s.exit_code)
                            .unwrap_or(0);
                        self.report(SHUTDOWN, |s| {
                            s.message = "shutdown".into();
                            s.exit_code = code;
                        })
                        .await;
                        return Ok(());
                    }
                }
                w = engine.wait(cid) => {
                    match w {
                        Ok(w) => {
                            let mut tmp = pb::TaskStatus::default();
                            let state = exit_status(&mut tmp, w.exit_code);
                            self.report(state, |s| {
                                s.exit_code = tmp.exit_code;
                                s.message = tmp.message;
                                s.err = tmp.err;
                                s.health.clear();
                            })
                            .await;
                        }
                        Err(e) => {
                            self.report(FAILED, |s| {
                                s.message = "lost".into();
                                s.err = format!("the task's container is gone: {e}");
                            })
                            .await;
                        }
                    }
                    return Ok(());
                }
                ev = events.recv() => {
                    let refresh = match ev {
                        Ok(ev) => ev.id == cid && ev.action.starts_with("health_status"),
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => {
                            // Never while the engine lives; keep watching the exit.
                            events = broadcast::channel(1).1;
                            false
                        }
                    };
                    if refresh {
                        if let Ok(info) = engine.inspect(cid) {
                            let running = info.state.as_ref().is_some_and(|s| s.status == "running");
                            if running {
                                let h = health_of(&info);
                                self.report(RUNNING, |s| s.health = h).await;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// PREPARING, the part that may be cancelled: the task's files and its image; the container's
/// config. Errors are the REJECTED text.
async fn prepare(inner: &Arc<Inner>, task: &pb::Task) -> Result<apb::ContainerConfig, String> {
    let c = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .ok_or_else(|| format!("task {} has no container spec", task.id))?;
    let (secret_data, config_data) = inner.data_for(task)?;
    let mut mounts = Vec::new();
    if !secret_data.is_empty() || !config_data.is_empty() {
        let files = inner.files.as_ref().map_err(|e| e.clone())?;
        let mut secrets = Vec::new();
        for (r, data) in c.secrets.iter().zip(&secret_data) {
            secrets.push(FileData {
                target: spec::secret_target(r)?,
                data,
                uid: r.uid,
                gid: r.gid,
                mode: r.mode,
            });
        }
        let mut configs = Vec::new();
        for (r, data) in c.configs.iter().zip(&config_data) {
            configs.push(FileData {
                target: spec::config_target(r)?,
                data,
                uid: r.uid,
                gid: r.gid,
                mode: r.mode,
            });
        }
        let files_task = task.id.clone();
        mounts = files.write(&files_task, &secrets, &configs)?;
    }
    let config = spec::container_config(task, &mounts)?;
    let engine = &inner.engine;
    if engine.images.get(&c.image).is_err() {
        info!(task = %task.id, image = %c.image, "pulling the task's image");
        let rec = engine
            .images
            .pull(&c.image, &PullOptions::default(), &|_| {})
            .await
            .map_err(|e| format!("pull {}: {e}", c.image))?;
        engine
            .events
            .emit("image", "pull", &rec.config_digest, &rec.reference, &[]);
    }
    Ok(config)
}

/// The task's container (created, not started); its id.
async fn create(
    inner: &Arc<Inner>,
    task: &pb::Task,
    config: apb::ContainerConfig,
) -> Result<String, String> {
    let engine = &inner.engine;
    let name = spec::container_name(task);
    match engine.create(&name, config).await {
        Ok((id, _, _)) => Ok(id),
        Err(e) if e.kind == Kind::Conflict => {
            // A container of this task from an earlier run of the executor: take it over.
            let info = engine.inspect(&name).map_err(|e| e.to_string())?;
            let ours = info
                .config
                .as_ref()
                .and_then(|c| c.labels.get(spec::LABEL_TASK_ID))
                .is_some_and(|t| *t == task.id);
            if ours {
                Ok(info.id)
            } else {
                Err(e.to_string())
            }
        }
        Err(e) => Err(format!("create the container: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(state: i32) -> pb::TaskStatus {
        pb::TaskStatus {
            state,
            timestamp: 1,
            ..Default::default()
        }
    }

    #[test]
    fn statuses_only_move_forward() {
        assert!(next_status(&st(RUNNING), STARTING, |_| {}).is_none());
        assert!(
            next_status(&st(RUNNING), RUNNING, |_| {}).is_none(),
            "no change"
        );
        let h = next_status(&st(RUNNING), RUNNING, |s| s.health = "healthy".into()).unwrap();
        assert_eq!((h.state, h.health.as_str()), (RUNNING, "healthy"));
        assert!(h.timestamp > 1);
        assert_eq!(
            next_status(&st(RUNNING), FAILED, |_| {}).unwrap().state,
            FAILED
        );
        // Terminal states never change.
        assert!(next_status(&st(COMPLETE), SHUTDOWN, |_| {}).is_none());
        assert!(next_status(&st(SHUTDOWN), FAILED, |_| {}).is_none());
        assert!(next_status(&st(REJECTED), REJECTED, |s| s.err = "x".into()).is_none());
        assert!(is_terminal(COMPLETE) && !is_terminal(RUNNING));
    }

    fn info(status: &str, exit_code: i32) -> apb::ContainerInfo {
        apb::ContainerInfo {
            id: "c1".into(),
            state: Some(apb::ContainerState {
                status: status.into(),
                exit_code,
                health: Some(apb::HealthState {
                    status: "healthy".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ports: vec![apb::PortBinding {
                host_port: 32768,
                container_port: 80,
                protocol: "tcp".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn adopted_status_from_the_engine_and_the_saved_status() {
        let s = status_from_container(&info("running", 0), None);
        assert_eq!((s.state, s.health.as_str()), (RUNNING, "healthy"));
        assert_eq!(s.container_id, "c1");
        let p = &s.port_status.unwrap().ports[0];
        assert_eq!((p.published_port, p.target_port), (32768, 80));
        assert_eq!(
            status_from_container(&info("created", 0), None).state,
            PREPARING
        );
        assert_eq!(
            status_from_container(&info("exited", 0), None).state,
            COMPLETE
        );
        let f = status_from_container(&info("exited", 3), None);
        assert_eq!((f.state, f.exit_code), (FAILED, 3));
        assert_eq!(f.err, "task: non-zero exit (3)");
        // Stopped on purpose: the saved SHUTDOWN wins over the engine's exit code.
        let s = status_from_container(&info("exited", 137), Some(st(SHUTDOWN)));
        assert_eq!((s.state, s.container_id.as_str()), (SHUTDOWN, "c1"));
        // A saved status behind the engine's is ignored.
        let s = status_from_container(&info("running", 0), Some(st(STARTING)));
        assert_eq!(s.state, RUNNING);
    }
}
