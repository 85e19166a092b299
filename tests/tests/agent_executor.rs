//! The task executor over a real engine (in-process, private state, bridge and nft table per
//! test; busybox pulled from a real registry on loopback by the executor itself): tasks reach
//! RUNNING with their name and labels, exits end them COMPLETE or FAILED, desired SHUTDOWN stops
//! them and a full assignment set without them removes them; secrets and configs are files on
//! tmpfs bound read-only into the container and go with the task; a missing secret or image
//! rejects the task; host-mode port 0 reports the real host port, which answers; a new executor
//! adopts running tasks without restarting them; logs come back tagged with task and stream.
//! Statuses are asserted exactly and in order.
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::engine::{Engine, EngineConfig, Kind};
use flotilla_agent::executor::{self, pb, Executor};
use flotilla_agent::network::NetConfig;
use flotilla_tests::agent::{eventually, http_get_local};
use flotilla_tests::executor::EngineSlice;
use flotilla_tests::registry::{push_busybox, Registry, RegistryOptions};
use tokio::sync::mpsc;

use pb::TaskState as S;

const WAIT: Duration = Duration::from_secs(60);

struct Lab {
    // Field order is drop order: the registry, then the slice (after the runtime is gone).
    _registry: Registry,
    slice: EngineSlice,
    image: String,
}

impl Lab {
    fn new() -> Lab {
        let slice = EngineSlice::new().expect("engine slice");
        let registry = Registry::start(RegistryOptions::default()).expect("registry");
        let image = push_busybox(&registry, "busybox:latest").expect("push busybox");
        Lab {
            _registry: registry,
            slice,
            image,
        }
    }

    fn secrets_dir(&self) -> PathBuf {
        self.slice.run_dir().join("secrets")
    }

    async fn engine(&self) -> Arc<Engine> {
        let s = &self.slice;
        let mut cfg = EngineConfig {
            state_dir: s.state_dir(),
            run_dir: s.run_dir(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            shim_bin: s.shim_bin.clone(),
            runtime_bin: s.runtime_bin.clone(),
            allow_host_paths: Vec::new(),
            userns_remap: None,
            insecure_registries: Vec::new(),
            network: NetConfig {
                state_dir: s.state_dir().join("network"),
                run_dir: s.run_dir(),
                default_bridge: s.default_bridge(),
                default_subnet: s.bridge_subnet().parse().expect("subnet"),
                pool: s.network_pool().parse().expect("pool"),
                pool_prefix_len: 24,
                bridge_prefix: s.bridge_prefix(),
                nft_table: s.table(),
                host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
            },
        };
        executor::allow_secrets_dir(&mut cfg, &self.secrets_dir());
        Engine::open(cfg).await.expect("open the engine")
    }
}

/// Runs `f` on its own runtime, dropped (engine tasks and all) before the lab.
fn with_lab<F, Fut>(f: F)
where
    F: FnOnce(Arc<Lab>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let lab = Arc::new(Lab::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(f(lab.clone()));
    drop(rt);
    drop(lab);
}

/// Every status received, per task, in order.
struct Statuses {
    rx: mpsc::Receiver<pb::TaskStatusUpdate>,
    seen: HashMap<String, Vec<pb::TaskStatus>>,
}

impl Statuses {
    fn new(rx: mpsc::Receiver<pb::TaskStatusUpdate>) -> Self {
        Statuses {
            rx,
            seen: HashMap::new(),
        }
    }

    fn of(&self, task: &str) -> Vec<pb::TaskStatus> {
        self.seen.get(task).cloned().unwrap_or_default()
    }

    fn states(&self, task: &str) -> Vec<S> {
        self.of(task)
            .iter()
            .map(|s| S::try_from(s.state).expect("a task state"))
            .collect()
    }

    /// Receives until `task`'s latest status satisfies `ok`; its statuses so far.
    async fn until(
        &mut self,
        task: &str,
        ok: impl Fn(&pb::TaskStatus) -> bool,
    ) -> Vec<pb::TaskStatus> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.seen.get(task).and_then(|v| v.last()).is_some_and(&ok) {
                return self.of(task);
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(u)) => {
                    let st = u.status.expect("an update carries a status");
                    self.seen.entry(u.task_id).or_default().push(st);
                }
                Ok(None) => panic!("the status channel closed; {task}: {:?}", self.of(task)),
                Err(_) => panic!(
                    "task {task} did not get there in {WAIT:?}; its statuses: {:?}",
                    self.of(task)
                ),
            }
        }
    }

    async fn until_state(&mut self, task: &str, state: S) -> Vec<pb::TaskStatus> {
        self.until(task, |s| s.state == state as i32).await
    }

    /// Takes what arrives within `d`.
    async fn settle(&mut self, d: Duration) {
        while let Ok(Some(u)) = tokio::time::timeout(d, self.rx.recv()).await {
            let st = u.status.expect("status");
            self.seen.entry(u.task_id).or_default().push(st);
        }
    }
}

fn task(id: &str, service: &str, slot: u64, image: &str, args: &[&str]) -> pb::Task {
    pb::Task {
        id: id.into(),
        service_id: format!("svc-{service}"),
        service_name: service.into(),
        slot,
        node_id: "node1".into(),
        desired_state: S::Running as i32,
        status: Some(pb::TaskStatus {
            state: S::Assigned as i32,
            ..Default::default()
        }),
        spec: Some(pb::TaskSpec {
            container: Some(pb::ContainerSpec {
                image: image.into(),
                args: args.iter().map(|s| s.to_string()).collect(),
                labels: [("owner".to_string(), "tests".to_string())].into(),
                // busybox sleep as pid 1 ignores SIGTERM: do not wait 10 s for it.
                stop_grace_period_ms: 500,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(t: &mut pb::Task) -> &mut pb::ContainerSpec {
    t.spec
        .as_mut()
        .and_then(|s| s.container.as_mut())
        .expect("container spec")
}

fn delta(tasks: Vec<pb::Task>) -> pb::Assignments {
    pb::Assignments {
        full: false,
        tasks,
        ..Default::default()
    }
}

fn full(tasks: Vec<pb::Task>) -> pb::Assignments {
    pb::Assignments {
        full: true,
        tasks,
        ..Default::default()
    }
}

fn desired(mut t: pb::Task, s: S) -> pb::Task {
    t.desired_state = s as i32;
    t
}

fn gone(engine: &Engine, name: &str) -> bool {
    matches!(engine.inspect(name), Err(e) if e.kind == Kind::NotFound)
}

async fn eventually_gone(engine: &Engine, name: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gone(engine, name) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "container {name} is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every line of the task's log so far (non-follow).
async fn log_lines(ex: &Executor, task: &str) -> Vec<pb::LogLine> {
    let mut s = ex.logs(pb::LogRequest {
        request_id: 1,
        task_ids: vec![task.into()],
        ..Default::default()
    });
    let mut lines = Vec::new();
    while let Some(c) = tokio::time::timeout(WAIT, s.next())
        .await
        .expect("log chunk")
    {
        assert_eq!(c.request_id, 1);
        lines.extend(c.lines);
        if c.end {
            assert_eq!(c.error, "");
            break;
        }
    }
    lines
}

async fn log_text_until(ex: &Executor, task: &str, wanted: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text: String = log_lines(ex, task)
            .await
            .iter()
            .map(|l| String::from_utf8_lossy(&l.data).into_owned())
            .collect();
        if wanted.iter().all(|w| text.contains(w)) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "log of {task} lacks {wanted:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const STARTED: [S; 4] = [S::Accepted, S::Preparing, S::Starting, S::Running];

fn started_then(last: S) -> Vec<S> {
    let mut v = STARTED.to_vec();
    v.push(last);
    v
}

#[test]
fn tasks_run_exit_shut_down_and_are_removed() {
    with_lab(|lab| async move {
        let engine = lab.engine().await;
        let (ex, rx) = Executor::new(engine.clone(), lab.secrets_dir());
        let mut st = Statuses::new(rx);
        let sleeper = task("tsleep1", "web", 1, &lab.image, &["sleep", "1000"]);
        let fail = task("tfail1", "bad", 2, &lab.image, &["sh", "-c", "exit 3"]);
        let done = task("tdone1", "ok", 1, &lab.image, &["true"]);
        // The image is not there yet: the three pull it at once.
        ex.apply(delta(vec![sleeper.clone(), fail.clone(), done.clone()]))
            .await;

        let s = st.until_state("tsleep1", S::Running).await;
        assert_eq!(st.states("tsleep1"), STARTED);
        let cid = s.last().unwrap().container_id.clone();
        assert!(!cid.is_empty(), "RUNNING names the container: {s:?}");
        let info = engine
            .inspect("web.1.tsleep1")
            .expect("the task's container");
        assert_eq!(info.id, cid);
        assert_eq!(info.state.as_ref().unwrap().status, "running");
        let cfg = info.config.unwrap();
        assert_eq!(cfg.labels["com.flotilla.task.id"], "tsleep1");
        assert_eq!(cfg.labels["com.flotilla.service.id"], "svc-web");
        assert_eq!(cfg.labels["com.flotilla.service.name"], "web");
        assert_eq!(cfg.labels["com.flotilla.task.slot"], "1");
        assert_eq!(cfg.labels["owner"], "tests");
        assert_eq!(cfg.restart_policy.unwrap().name, "no");

        let s = st.until_state("tfail1", S::Failed).await;
        assert_eq!(st.states("tfail1"), started_then(S::Failed));
        let last = s.last().unwrap();
        assert_eq!(last.exit_code, 3);
        assert_eq!(last.err, "task: non-zero exit (3)");
        assert!(engine.inspect("bad.2.tfail1").is_ok(), "kept until removed");

        let s = st.until_state("tdone1", S::Complete).await;
        assert_eq!(st.states("tdone1"), started_then(S::Complete));
        assert_eq!(s.last().unwrap().exit_code, 0);
        assert_eq!(s.last().unwrap().err, "");

        // Desired SHUTDOWN: stopped, reported, kept.
        ex.apply(delta(vec![desired(sleeper.clone(), S::Shutdown)]))
            .await;
        st.until_state("tsleep1", S::Shutdown).await;
        assert_eq!(st.states("tsleep1"), started_then(S::Shutdown));
        let info = engine
            .inspect("web.1.tsleep1")
            .expect("kept after shutdown");
        assert_eq!(info.state.unwrap().status, "exited");

        // The same assignment again changes nothing; a terminal task says nothing more.
        ex.apply(delta(vec![desired(sleeper.clone(), S::Shutdown)]))
            .await;
        st.settle(Duration::from_millis(300)).await;
        assert_eq!(st.states("tsleep1"), started_then(S::Shutdown));
        let running: HashMap<String, i32> = ex
            .running()
            .await
            .into_iter()
            .map(|u| (u.task_id, u.status.unwrap().state))
            .collect();
        assert_eq!(running.len(), 3, "{running:?}");
        assert_eq!(running["tsleep1"], S::Shutdown as i32);
        assert_eq!(running["tfail1"], S::Failed as i32);
        assert_eq!(running["tdone1"], S::Complete as i32);

        // A full set without two of them: they go.
        ex.apply(full(vec![done.clone()])).await;
        eventually_gone(&engine, "web.1.tsleep1").await;
        eventually_gone(&engine, "bad.2.tfail1").await;
        assert!(engine.inspect("ok.1.tdone1").is_ok());
        // Desired REMOVE: the last one goes too.
        ex.apply(delta(vec![desired(done, S::Remove)])).await;
        eventually_gone(&engine, "ok.1.tdone1").await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = ex.running().await;
            if left.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tasks left: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        st.settle(Duration::from_millis(300)).await;
        assert_eq!(st.states("tsleep1"), started_then(S::Shutdown));
        assert_eq!(st.states("tdone1"), started_then(S::Complete));
    });
}

#[test]
fn secrets_and_configs_are_tmpfs_files_bound_read_only_and_go_with_the_task() {
    with_lab(|lab| async move {
        let engine = lab.engine().await;
        let (ex, rx) = Executor::new(engine.clone(), lab.secrets_dir());
        let mut st = Statuses::new(rx);
        let mut t = task(
            "tsec1",
            "app",
            1,
            &lab.image,
            &[
                "sh",
                "-c",
                "cat /run/secrets/db_pw; echo; stat -c 'mode=%a' /run/secrets/db_pw; cat /etc/app.conf; echo; \
                 echo x > /run/secrets/db_pw 2>/dev/null || echo read-only; sleep 1000",
            ],
        );
        container(&mut t).secrets = vec![pb::SecretReference {
            secret_id: "sec1".into(),
            secret_name: "db_pw".into(),
            ..Default::default()
        }];
        container(&mut t).configs = vec![pb::ConfigReference {
            config_id: "cfg1".into(),
            config_name: "app.conf".into(),
            target: "/etc/app.conf".into(),
            ..Default::default()
        }];
        let mut no_secret = task("tnosec1", "app", 2, &lab.image, &["sleep", "1000"]);
        container(&mut no_secret).secrets = vec![pb::SecretReference {
            secret_id: "missing-id".into(),
            secret_name: "nope".into(),
            ..Default::default()
        }];
        let missing_image = lab.image.replace("busybox:latest", "no-such-image:latest");
        let no_image = task("tnoimg1", "ghost", 1, &missing_image, &["true"]);
        ex.apply(pb::Assignments {
            full: false,
            tasks: vec![t.clone(), no_secret, no_image],
            secrets: vec![pb::SecretData {
                id: "sec1".into(),
                name: "db_pw".into(),
                data: b"s3cret-value".to_vec(),
            }],
            configs: vec![pb::ConfigData {
                id: "cfg1".into(),
                name: "app.conf".into(),
                data: b"answer=42".to_vec(),
            }],
            ..Default::default()
        })
        .await;

        st.until_state("tsec1", S::Running).await;
        assert_eq!(st.states("tsec1"), STARTED);
        let text = log_text_until(
            &ex,
            "tsec1",
            &["s3cret-value", "mode=444", "answer=42", "read-only"],
        )
        .await;
        assert!(!text.contains("Permission"), "{text}");
        // The backing file: on tmpfs, 0444, root's.
        let file = lab.secrets_dir().join("tsec1/secrets/db_pw");
        let md = std::fs::metadata(&file).expect("the secret's backing file");
        assert_eq!(md.mode() & 0o7777, 0o444);
        assert_eq!(md.uid(), 0);
        assert_eq!(std::fs::read(&file).unwrap(), b"s3cret-value");
        let fs = nix::sys::statfs::statfs(file.parent().unwrap()).expect("statfs");
        assert_eq!(
            fs.filesystem_type(),
            nix::sys::statfs::TMPFS_MAGIC,
            "secrets on tmpfs"
        );

        // A secret not in the assignments, an image no registry has.
        let s = st.until_state("tnosec1", S::Rejected).await;
        assert_eq!(
            st.states("tnosec1"),
            [S::Accepted, S::Preparing, S::Rejected]
        );
        assert_eq!(s.last().unwrap().err, "secret nope not available");
        assert!(gone(&engine, "app.2.tnosec1"));
        let s = st.until_state("tnoimg1", S::Rejected).await;
        assert_eq!(
            st.states("tnoimg1"),
            [S::Accepted, S::Preparing, S::Rejected]
        );
        let err = &s.last().unwrap().err;
        assert!(
            err.starts_with(&format!("pull {missing_image}: ")) && err.contains("no-such-image"),
            "{err}"
        );
        assert!(gone(&engine, "ghost.1.tnoimg1"));

        // Removed from the set: container and files go.
        ex.apply(full(Vec::new())).await;
        eventually_gone(&engine, "app.1.tsec1").await;
        let dir = lab.secrets_dir().join("tsec1");
        let deadline = tokio::time::Instant::now() + WAIT;
        while dir.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} stays",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!lab.secrets_dir().join("tnosec1").exists());
    });
}

#[test]
fn host_port_zero_reports_the_real_port_and_it_answers() {
    with_lab(|lab| async move {
        let engine = lab.engine().await;
        let (ex, rx) = Executor::new(engine.clone(), lab.secrets_dir());
        let mut st = Statuses::new(rx);
        let mut t = task(
            "tweb1",
            "www",
            1,
            &lab.image,
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo hello-task > /www/index.html && exec httpd -f -p 80 -h /www",
            ],
        );
        t.endpoint = Some(pb::EndpointSpec {
            ports: vec![pb::PortConfig {
                name: "http".into(),
                protocol: pb::PortProtocol::Tcp as i32,
                target_port: 80,
                published_port: 0,
                publish_mode: "host".into(),
            }],
        });
        ex.apply(delta(vec![t])).await;
        let s = st.until_state("tweb1", S::Running).await;
        assert_eq!(st.states("tweb1"), STARTED);
        let ports = s
            .last()
            .unwrap()
            .port_status
            .clone()
            .expect("RUNNING carries the port status")
            .ports;
        assert_eq!(ports.len(), 1, "{ports:?}");
        let p = &ports[0];
        assert_eq!((p.target_port, p.name.as_str()), (80, "http"));
        assert_eq!(p.publish_mode, "host");
        assert_ne!(p.published_port, 0, "a real host port");
        let port = u16::try_from(p.published_port).expect("port");
        let body = tokio::task::spawn_blocking(move || {
            eventually(Duration::from_secs(15), || http_get_local(port))
        })
        .await
        .expect("join")
        .expect("GET / on the published port");
        assert!(body.contains("hello-task"), "{body}");
        ex.apply(full(Vec::new())).await;
        eventually_gone(&engine, "www.1.tweb1").await;
    });
}

#[test]
fn a_new_executor_adopts_tasks_without_restarting_them() {
    with_lab(|lab| async move {
        let engine = lab.engine().await;
        let (ex, rx) = Executor::new(engine.clone(), lab.secrets_dir());
        let mut st = Statuses::new(rx);
        let keep = task("tkeep1", "db", 1, &lab.image, &["sleep", "1000"]);
        let stop = task("tstop1", "db", 2, &lab.image, &["sleep", "1000"]);
        ex.apply(delta(vec![keep.clone(), stop.clone()])).await;
        let s = st.until_state("tkeep1", S::Running).await;
        let cid = s.last().unwrap().container_id.clone();
        st.until_state("tstop1", S::Running).await;
        ex.apply(delta(vec![desired(stop.clone(), S::Shutdown)]))
            .await;
        st.until_state("tstop1", S::Shutdown).await;
        let started = engine
            .inspect(&cid)
            .unwrap()
            .state
            .unwrap()
            .started_unix_nano;
        drop(st);
        drop(ex);

        let (ex2, rx2) = Executor::new(engine.clone(), lab.secrets_dir());
        let mut st2 = Statuses::new(rx2);
        let running = ex2.running().await;
        let by_id: HashMap<String, pb::TaskStatus> = running
            .into_iter()
            .map(|u| (u.task_id, u.status.unwrap()))
            .collect();
        assert_eq!(by_id.len(), 2, "{by_id:?}");
        assert_eq!(by_id["tkeep1"].state, S::Running as i32);
        assert_eq!(by_id["tkeep1"].container_id, cid);
        // Stopped on purpose before the restart: still SHUTDOWN, not a failure.
        assert_eq!(by_id["tstop1"].state, S::Shutdown as i32);
        let info = engine.inspect(&cid).unwrap();
        let state = info.state.unwrap();
        assert_eq!(state.status, "running");
        assert_eq!(state.started_unix_nano, started, "not restarted");

        // The managers' full set confirms one task and drops the other.
        ex2.apply(full(vec![keep.clone()])).await;
        eventually_gone(&engine, "db.2.tstop1").await;
        st2.settle(Duration::from_millis(300)).await;
        assert!(
            st2.states("tkeep1").is_empty(),
            "{:?}",
            st2.states("tkeep1")
        );
        assert_eq!(
            engine
                .inspect(&cid)
                .unwrap()
                .state
                .unwrap()
                .started_unix_nano,
            started
        );
        // It is watched: its end is reported.
        ex2.apply(delta(vec![desired(keep, S::Shutdown)])).await;
        st2.until_state("tkeep1", S::Shutdown).await;
        assert_eq!(st2.states("tkeep1"), [S::Shutdown]);
    });
}

#[test]
fn logs_and_health_of_a_task() {
    with_lab(|lab| async move {
        let engine = lab.engine().await;
        let (ex, rx) = Executor::new(engine.clone(), lab.secrets_dir());
        let mut st = Statuses::new(rx);
        let mut t = task(
            "tlog1",
            "talk",
            3,
            &lab.image,
            &[
                "sh",
                "-c",
                "echo to-out; echo to-err >&2; i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done",
            ],
        );
        container(&mut t).healthcheck = Some(pb::HealthConfig {
            test: vec!["CMD".into(), "true".into()],
            interval_ms: 500,
            ..Default::default()
        });
        ex.apply(delta(vec![t])).await;
        st.until("tlog1", |s| {
            s.state == S::Running as i32 && s.health == "healthy"
        })
        .await;
        let health: Vec<(S, String)> = st
            .of("tlog1")
            .iter()
            .map(|s| (S::try_from(s.state).unwrap(), s.health.clone()))
            .collect();
        assert_eq!(
            health,
            [
                (S::Accepted, String::new()),
                (S::Preparing, String::new()),
                (S::Starting, String::new()),
                (S::Running, "starting".into()),
                (S::Running, "healthy".into()),
            ]
        );

        log_text_until(&ex, "tlog1", &["to-out", "to-err", "tick2"]).await;
        let lines = log_lines(&ex, "tlog1").await;
        let out = lines
            .iter()
            .find(|l| l.data == b"to-out\n")
            .expect("the stdout line");
        let err = lines
            .iter()
            .find(|l| l.data == b"to-err\n")
            .expect("the stderr line");
        assert_eq!(
            (out.task_id.as_str(), out.stream.as_str(), out.slot),
            ("tlog1", "stdout", 3)
        );
        assert_eq!(out.node_id, "node1");
        assert_eq!(
            (err.task_id.as_str(), err.stream.as_str()),
            ("tlog1", "stderr")
        );
        assert!(out.timestamp_ns > 0);

        // Follow with tail 1: new ticks keep coming until the stream is dropped.
        let mut f = ex.logs(pb::LogRequest {
            request_id: 9,
            task_ids: vec!["tlog1".into()],
            follow: true,
            tail: 1,
            since: 0,
        });
        let mut ticks = Vec::new();
        while ticks.len() < 4 {
            let c = tokio::time::timeout(Duration::from_secs(10), f.next())
                .await
                .expect("a chunk in time")
                .expect("the stream goes on");
            assert!(!c.end, "{c:?}");
            ticks.extend(
                c.lines
                    .iter()
                    .map(|l| String::from_utf8_lossy(&l.data).trim().to_string()),
            );
        }
        assert!(ticks.iter().all(|t| t.starts_with("tick")), "{ticks:?}");
        drop(f);

        // A task this node does not have.
        let mut s = ex.logs(pb::LogRequest {
            request_id: 2,
            task_ids: vec!["elsewhere".into()],
            ..Default::default()
        });
        let c = s.next().await.expect("the end chunk");
        assert!(c.end && c.lines.is_empty());
        assert_eq!(c.error, "task elsewhere is not on this node");

        ex.apply(full(Vec::new())).await;
        eventually_gone(&engine, "talk.3.tlog1").await;
    });
}
