//! Health checks (`HEALTHCHECK` in the image, `--health-*` on run): a task per running container
//! runs the test through `flotilla-runtime exec` every interval, with a timeout, and keeps
//! docker's state machine: `starting` until the first success (failures inside the start period
//! do not count), `healthy`, and `unhealthy` after `retries` consecutive failures; the last five
//! results are kept for `inspect`, and each status change is an event (`health_status: healthy`).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::agent::v1 as pb;
use tokio::io::AsyncReadExt;

use super::{logfile, Ctr, Engine, Status};

/// Docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;
/// Results kept in the state.
const KEEP: usize = 5;
/// Output kept per result.
const MAX_OUTPUT: usize = 4096;

/// A resolved health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub cmd: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

fn dur(ns: i64, default: Duration) -> Duration {
    if ns > 0 {
        Duration::from_nanos(ns as u64)
    } else {
        default
    }
}

/// The check a container gets: the request's, or the image's with the request's timings on top.
/// `image` is the image config's `Healthcheck` object (docker's JSON), if any.
pub fn resolve(req: Option<&pb::HealthConfig>, image: &serde_json::Value) -> Option<Check> {
    let img_test: Vec<String> = image["Test"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let req_test = req.map(|r| r.test.clone()).unwrap_or_default();
    let test = if req_test.is_empty() {
        img_test
    } else {
        req_test
    };
    let cmd = match test.first().map(String::as_str) {
        None | Some("NONE") => return None,
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), test[1..].join(" ")],
        // A bare command line is a shell command, as `--health-cmd` gives.
        Some(_) => vec!["/bin/sh".into(), "-c".into(), test.join(" ")],
    };
    if cmd.is_empty() {
        return None;
    }
    let num = |k: &str| image[k].as_i64().unwrap_or(0);
    let r = req.cloned().unwrap_or_default();
    let pick = |a: i64, b: i64| if a > 0 { a } else { b };
    Some(Check {
        cmd,
        interval: dur(pick(r.interval_ns, num("Interval")), DEFAULT_INTERVAL),
        timeout: dur(pick(r.timeout_ns, num("Timeout")), DEFAULT_TIMEOUT),
        retries: if r.retries > 0 {
            r.retries
        } else if num("Retries") > 0 {
            num("Retries") as u32
        } else {
            DEFAULT_RETRIES
        },
        start_period: dur(pick(r.start_period_ns, num("StartPeriod")), Duration::ZERO),
    })
}

/// The next health state after one result. `in_start_period`: failures there do not count.
pub fn next(
    prev: &pb::HealthState,
    ok: bool,
    in_start_period: bool,
    retries: u32,
    log: pb::HealthLog,
) -> pb::HealthState {
    let mut st = prev.clone();
    st.log.push(log);
    if st.log.len() > KEEP {
        let n = st.log.len() - KEEP;
        st.log.drain(..n);
    }
    if ok {
        st.status = "healthy".into();
        st.failing_streak = 0;
    } else if !(in_start_period && st.status == "starting") {
        st.failing_streak += 1;
        if st.failing_streak >= retries {
            st.status = "unhealthy".into();
        }
    }
    st
}

impl Engine {
    /// Starts the health-check task of a container that just started (no-op without a check).
    pub(super) fn spawn_health(self: &Arc<Self>, ctr: Arc<Ctr>) {
        let rec = ctr.record();
        let image_check = self
            .images
            .inspect(&rec.image)
            .map(|i| i.config["config"]["Healthcheck"].clone())
            .unwrap_or(serde_json::Value::Null);
        let Some(check) = resolve(rec.config.healthcheck.as_ref(), &image_check) else {
            return;
        };
        let started = rec.state.started_unix_nano;
        let _ = ctr.update(|r| {
            r.state.health = Some(pb::HealthState {
                status: "starting".into(),
                failing_streak: 0,
                log: Vec::new(),
            });
        });
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(check.interval).await;
                let rec = ctr.record();
                // A restart starts a new task; this one ends with its run.
                if !matches!(rec.state.status, Status::Running | Status::Paused)
                    || rec.state.started_unix_nano != started
                {
                    return;
                }
                if rec.state.status == Status::Paused {
                    continue; // no checks while frozen; they resume with unpause
                }
                let begin = logfile::now_unix_nano();
                let (code, output) = engine.run_check(&ctr.id, &check).await;
                let end = logfile::now_unix_nano();
                let in_start =
                    Duration::from_nanos((end - started).max(0) as u64) < check.start_period;
                let log = pb::HealthLog {
                    start_unix_nano: begin,
                    end_unix_nano: end,
                    exit_code: code,
                    output,
                };
                let mut changed = None;
                let _ = ctr.update(|r| {
                    if r.state.started_unix_nano != started {
                        return;
                    }
                    let prev = r.state.health.clone().unwrap_or_default();
                    let st = next(&prev, code == 0, in_start, check.retries, log);
                    if st.status != prev.status {
                        changed = Some(st.status.clone());
                    }
                    r.state.health = Some(st);
                });
                if let Some(status) = changed {
                    engine.events.emit(
                        "container",
                        &format!("health_status: {status}"),
                        &ctr.id,
                        &rec.name,
                        &[],
                    );
                }
            }
        });
    }

    /// Runs the check once: (exit code, output). A timeout or a failure to run is code 1 or more.
    async fn run_check(&self, id: &str, check: &Check) -> (i32, String) {
        let start = pb::ExecStart {
            container: id.to_string(),
            cmd: check.cmd.clone(),
            ..Default::default()
        };
        let (id, process_file, runtime_root) = match self.exec_prepare(&start) {
            Ok(x) => x,
            Err(e) => return (1, e.to_string()),
        };
        let child = tokio::process::Command::new(&self.cfg.runtime_bin)
            .arg("--root")
            .arg(&runtime_root)
            .arg("--cgroup-root")
            .arg(&self.cfg.cgroup_root)
            .arg("exec")
            .arg("--process")
            .arg(&process_file)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&process_file);
                return (1, format!("run the health check: {e}"));
            }
        };
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let collect = async {
            let mut buf = Vec::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut buf).await;
            }
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_end(&mut buf).await;
            }
            let status = child.wait().await;
            (status, buf)
        };
        let result = tokio::time::timeout(check.timeout, collect).await;
        let _ = std::fs::remove_file(&process_file);
        match result {
            Ok((status, buf)) => {
                let code = status.ok().and_then(|s| s.code()).unwrap_or(1);
                let mut text = String::from_utf8_lossy(&buf).into_owned();
                text.truncate(MAX_OUTPUT);
                (code, text)
            }
            Err(_) => (
                1,
                format!("health check exceeded its timeout ({:?})", check.timeout),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn checks_resolve_from_request_and_image() {
        let img = json!({"Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 5_000_000_000i64, "Retries": 2});
        let c = resolve(None, &img).expect("image check");
        assert_eq!(c.cmd, ["/bin/sh", "-c", "wget -q localhost"]);
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.retries, 2);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        // Timings only: the image's test with the request's interval.
        let r = pb::HealthConfig {
            interval_ns: 1_000_000_000,
            ..Default::default()
        };
        let c = resolve(Some(&r), &img).expect("merged");
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.cmd[2], "wget -q localhost");
        // NONE disables, CMD runs directly.
        let none = pb::HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        assert_eq!(resolve(Some(&none), &img), None);
        let cmd = pb::HealthConfig {
            test: vec!["CMD".into(), "true".into()],
            ..Default::default()
        };
        assert_eq!(
            resolve(Some(&cmd), &serde_json::Value::Null)
                .expect("cmd")
                .cmd,
            ["true"]
        );
        assert_eq!(resolve(None, &serde_json::Value::Null), None);
    }

    #[test]
    fn state_machine_follows_docker() {
        let log = || pb::HealthLog::default();
        let start = pb::HealthState {
            status: "starting".into(),
            ..Default::default()
        };
        // Failures in the start period keep it starting.
        let s = next(&start, false, true, 3, log());
        assert_eq!((s.status.as_str(), s.failing_streak), ("starting", 0));
        let s = next(&s, true, true, 3, log());
        assert_eq!(s.status, "healthy");
        let s = next(&s, false, false, 2, log());
        assert_eq!((s.status.as_str(), s.failing_streak), ("healthy", 1));
        let s = next(&s, false, false, 2, log());
        assert_eq!(s.status, "unhealthy");
        let mut s = next(&s, true, false, 2, log());
        assert_eq!((s.status.as_str(), s.failing_streak), ("healthy", 0));
        for _ in 0..10 {
            s = next(&s, true, false, 2, log());
        }
        assert_eq!(s.log.len(), KEEP);
    }
}
