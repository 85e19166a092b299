//! Task lifecycles on a cluster of 1 manager (no agent) + 2 workers.
//!
//! Rolling updates gated by health checks: an update whose new tasks fail their check pauses
//! (the slots not yet updated keep their old tasks running) or rolls back by itself, as
//! configured; `service rollback` returns to the previous spec; an update with a passing
//! check, two tasks at a time with a delay, completes without taking more than two slots down;
//! `service scale` up and back down. A stop-first update of a service publishing a host port
//! on every node completes: each new task waits for its old one to free the port.
//!
//! Restart policies: on-failure with max attempts gives exactly 1 + max attempts tasks, then
//! the slot stays failed with its history in `service ps` (their containers and logs stay, as
//! in Swarm); condition none never restarts; on-failure leaves a task that exited 0 complete.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use flotilla_tests::cluster::ClusterLab;

const CONVERGE: Duration = Duration::from_secs(30);

fn run(lab: &mut ClusterLab, scenario: fn(&mut ClusterLab) -> Result<()>) -> Result<()> {
    let r = (|| {
        lab.init(1, &[])?;
        lab.add_worker_with_image(2, 1)?;
        lab.add_worker_with_image(3, 1)?;
        scenario(lab)
    })();
    if let Err(e) = &r {
        eprintln!("{e:#}\n{}", lab.logs());
    }
    r
}

/// Running tasks (desired and observed) of `service` per image.
fn running_images(lab: &ClusterLab, service: &str) -> Result<BTreeMap<String, usize>> {
    let mut m = BTreeMap::new();
    for t in lab.task_rows(service)?.iter().filter(|t| t.running()) {
        *m.entry(t.image.clone()).or_default() += 1;
    }
    Ok(m)
}

fn wait_update_state(lab: &ClusterLab, service: &str, want: &str) -> Result<String> {
    lab.eventually(Duration::from_secs(60), || {
        let (state, msg) = lab.update_status(service)?;
        if state == want {
            Ok(msg)
        } else {
            bail!("{service}: update state {state:?} ({msg}), want {want}")
        }
    })
}

fn wait_images(lab: &ClusterLab, service: &str, want: &[(&str, usize)]) -> Result<()> {
    let want: BTreeMap<String, usize> = want.iter().map(|(i, n)| (i.to_string(), *n)).collect();
    lab.eventually(CONVERGE, || {
        let got = running_images(lab, service)?;
        if got == want {
            Ok(())
        } else {
            bail!("{service}: running {got:?}, want {want:?}")
        }
    })
}

const OLD: &str = "busybox:latest";
const NEW: &str = "busybox:v2";

#[test]
fn rolling_updates_gated_by_health_checks() -> Result<()> {
    let mut lab = ClusterLab::new(3)?;
    run(&mut lab, updates)
}

fn updates(lab: &mut ClusterLab) -> Result<()> {
    for h in [2, 3] {
        let o = lab.agent_cli(h, &["tag", OLD, NEW])?;
        ensure!(o.status.success(), "tag on host {h}: {o:?}");
    }
    // Converged (every task running and healthy) when create returns.
    lab.cli_ok(&[
        "service",
        "create",
        "-q",
        "--wait-timeout",
        "30s",
        "--name",
        "web",
        "--replicas",
        "4",
        "--stop-grace-period",
        "1s",
        "-e",
        "V=1",
        "--health-cmd",
        "true",
        "--health-interval",
        "300ms",
        "--health-retries",
        "1",
        "--update-monitor",
        "2s",
        "--update-failure-action",
        "pause",
        "--rollback-parallelism",
        "2",
        "--rollback-monitor",
        "1s",
        OLD,
        "sleep",
        "1000",
    ])?;
    lab.wait_running("web", &[(2, 2), (3, 2)], Duration::ZERO)?;
    let v1_spec = lab.service_json("web")?["Spec"]["Task"].clone();

    // A failing check, failure action pause: the first new task never becomes healthy, the
    // update pauses, and the three other slots keep their old tasks.
    let started = Instant::now();
    lab.cli_ok(&[
        "service",
        "update",
        "-d",
        "--image",
        NEW,
        "--env-add",
        "V=2",
        "--health-cmd",
        "false",
        "web",
    ])?;
    let msg = wait_update_state(lab, "web", "paused")?;
    eprintln!("update paused {:?} after it started", started.elapsed());
    ensure!(
        msg.starts_with("update paused due to failure or early termination of task "),
        "{msg}"
    );
    let failed_task = msg.rsplit(' ').next().unwrap_or("").to_string();
    let rows = lab.task_rows("web")?;
    let new: Vec<_> = rows.iter().filter(|t| t.image == NEW).collect();
    ensure!(
        new.len() == 1 && new[0].id == failed_task,
        "one slot updated, the task the message names: {rows:?}"
    );
    // Paused for good: nothing else moves.
    std::thread::sleep(Duration::from_millis(1500));
    let m = running_images(lab, "web")?;
    ensure!(m.get(OLD) == Some(&3), "3 old tasks still run: {m:?}");
    ensure!(lab.update_status("web")?.0 == "paused");

    // `service rollback`: back to the previous spec on every slot.
    lab.cli_ok(&["service", "rollback", "-q", "web"])?;
    wait_update_state(lab, "web", "rollback_completed")?;
    wait_images(lab, "web", &[(OLD, 4)])?;
    ensure!(lab.service_json("web")?["Spec"]["Task"] == v1_spec);

    // A failing check, failure action rollback: rolled back by itself.
    let started = Instant::now();
    lab.cli_ok(&[
        "service",
        "update",
        "-d",
        "--image",
        NEW,
        "--health-cmd",
        "false",
        "--update-failure-action",
        "rollback",
        "web",
    ])?;
    let msg = wait_update_state(lab, "web", "rollback_completed")?;
    eprintln!(
        "failed update rolled back {:?} after it started",
        started.elapsed()
    );
    wait_images(lab, "web", &[(OLD, 4)])?;
    let spec = lab.service_json("web")?["Spec"]["Task"].clone();
    ensure!(
        spec["Container"]["Image"]
            .as_str()
            .unwrap_or("")
            .starts_with(OLD)
            && spec["Container"]["Env"] == v1_spec["Container"]["Env"],
        "rolled back to the old spec ({msg}): {spec}"
    );

    // A passing check, two at a time with a 1 s delay: completes, never more than two slots
    // down.
    let started = Instant::now();
    lab.cli_ok(&[
        "service",
        "update",
        "-d",
        "--image",
        NEW,
        "--update-parallelism",
        "2",
        "--update-delay",
        "1s",
        "--update-failure-action",
        "pause",
        "web",
    ])?;
    let mut min_running = usize::MAX;
    let mut overlap = Vec::new();
    lab.eventually(Duration::from_secs(60), || {
        let rows = lab.task_rows("web")?;
        let running = rows.iter().filter(|t| t.running()).count();
        min_running = min_running.min(running);
        // Stop-first: a slot's new task never runs beside its old one.
        let mut per_slot: BTreeMap<&str, usize> = BTreeMap::new();
        for t in rows.iter().filter(|t| t.current == "running") {
            *per_slot.entry(t.name.as_str()).or_default() += 1;
        }
        overlap.extend(
            per_slot
                .into_iter()
                .filter(|(_, n)| *n > 1)
                .map(|(s, _)| s.to_string()),
        );
        let (state, msg) = lab.update_status("web")?;
        ensure!(state == "completed", "update {state}: {msg}");
        Ok(())
    })?;
    let took = started.elapsed();
    eprintln!("update of 4 tasks, 2 at a time, 1 s delay: {took:?}; at least {min_running} running throughout");
    ensure!(
        min_running >= 2,
        "at most 2 slots down: {min_running} running at one time"
    );
    ensure!(
        overlap.is_empty(),
        "old and new tasks ran together in {overlap:?}"
    );
    ensure!(
        took >= Duration::from_secs(1),
        "the delay is kept: {took:?}"
    );
    wait_images(lab, "web", &[(NEW, 4)])?;

    // `service rollback` after a completed update.
    lab.cli_ok(&["service", "rollback", "-q", "web"])?;
    wait_update_state(lab, "web", "rollback_completed")?;
    wait_images(lab, "web", &[(OLD, 4)])?;

    // Scale up and back down.
    lab.cli_ok(&["service", "scale", "web=6"])?;
    lab.wait_running("web", &[(2, 3), (3, 3)], CONVERGE)?;
    lab.cli_ok(&["service", "scale", "web=4"])?;
    lab.wait_running("web", &[(2, 2), (3, 2)], CONVERGE)?;
    let slots: Vec<String> = lab
        .task_rows("web")?
        .into_iter()
        .filter(|t| t.running())
        .map(|t| t.name)
        .collect();
    ensure!(
        slots == ["web.1", "web.2", "web.3", "web.4"],
        "slots 5 and 6 went: {slots:?}"
    );
    Ok(())
}

#[test]
fn stop_first_update_of_a_service_with_a_host_port() -> Result<()> {
    let mut lab = ClusterLab::new(3)?;
    run(&mut lab, host_port)
}

fn host_port(lab: &mut ClusterLab) -> Result<()> {
    lab.cli_ok(&[
        "service",
        "create",
        "-q",
        "--wait-timeout",
        "30s",
        "--name",
        "api",
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "-p",
        "published=18080,target=8080,mode=host",
        "--update-monitor",
        "500ms",
        OLD,
        "httpd",
        "-f",
        "-p",
        "8080",
    ])?;
    lab.wait_running("api", &[(2, 1), (3, 1)], Duration::ZERO)?;
    // A third copy has no node with the port free.
    lab.cli_ok(&["service", "scale", "-d", "api=3"])?;
    let pending = lab.eventually(CONVERGE, || {
        let rows = lab.task_rows("api")?;
        let p: Vec<_> = rows
            .into_iter()
            .filter(|t| t.current == "pending")
            .collect();
        ensure!(p.len() == 1 && !p[0].error.is_empty(), "{p:?}");
        Ok(p)
    })?;
    ensure!(
        pending[0].error
            == "no suitable node (1 node not available, 2 nodes have host port 18080/tcp in use)",
        "{pending:?}"
    );
    lab.cli_ok(&["service", "scale", "-d", "api=2"])?;
    // Stop-first, one at a time: each new task takes the port its old one frees.
    let t0 = Instant::now();
    lab.cli_ok(&[
        "service",
        "update",
        "-q",
        "--wait-timeout",
        "30s",
        "--env-add",
        "V=2",
        "api",
    ])?;
    eprintln!(
        "stop-first update of 2 tasks with a host port: {:?}",
        t0.elapsed()
    );
    let (state, msg) = lab.update_status("api")?;
    ensure!(state == "completed", "{state}: {msg}");
    lab.wait_running("api", &[(2, 1), (3, 1)], CONVERGE)?;
    let failed: Vec<_> = lab
        .task_rows("api")?
        .into_iter()
        .filter(|t| t.current == "failed" || t.current == "rejected")
        .collect();
    ensure!(
        failed.is_empty(),
        "no task failed on a port in use: {failed:?}"
    );
    Ok(())
}

#[test]
fn restart_policies() -> Result<()> {
    let mut lab = ClusterLab::new(3)?;
    run(&mut lab, restarts)
}

fn create(lab: &ClusterLab, name: &str, policy: &[&str], script: &str) -> Result<()> {
    let mut args = vec![
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--restart-delay",
        "300ms",
    ];
    args.extend_from_slice(policy);
    args.extend_from_slice(&[OLD, "sh", "-c", script]);
    lab.cli_ok(&args).map(|_| ())
}

fn restarts(lab: &mut ClusterLab) -> Result<()> {
    create(
        lab,
        "flaky",
        &[
            "--restart-condition",
            "on-failure",
            "--restart-max-attempts",
            "2",
        ],
        "echo started; exit 1",
    )?;
    create(lab, "once", &["--restart-condition", "none"], "exit 1")?;
    create(lab, "ok", &["--restart-condition", "on-failure"], "exit 0")?;
    let started = Instant::now();
    let rows = lab.eventually(CONVERGE, || {
        let rows = lab.task_rows("flaky")?;
        ensure!(
            rows.len() == 3 && rows.iter().all(|t| t.current == "failed"),
            "{rows:?}"
        );
        Ok(rows)
    })?;
    eprintln!("3 attempts failed after {:?}", started.elapsed());
    // Stays failed: no fourth attempt.
    std::thread::sleep(Duration::from_secs(2));
    let after = lab.task_rows("flaky")?;
    ensure!(after.len() == 3, "no more attempts: {after:?}");
    // `service ps` shows the slot's history: the newest attempt, then two older ones.
    ensure!(
        after
            .iter()
            .map(|t| (t.name.as_str(), t.history))
            .collect::<Vec<_>>()
            == [("flaky.1", false), ("flaky.1", true), ("flaky.1", true)],
        "{after:?}"
    );
    for t in &after {
        ensure!(t.error.contains("exit") && t.error.contains('1'), "{t:?}");
        ensure!(t.desired != "running", "nothing is meant to run: {t:?}");
    }
    ensure!(
        rows.iter().map(|t| &t.id).collect::<Vec<_>>()
            == after.iter().map(|t| &t.id).collect::<Vec<_>>()
    );
    // The container ran three times on the workers, never more.
    let mut containers = 0;
    for h in [2, 3] {
        let o = lab.agent_cli(h, &["ps", "-a", "--format", "json"])?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        containers += flotilla_tests::cluster::json_items(&out)?
            .iter()
            .filter(|c| {
                c.get("Names")
                    .and_then(|v| v.as_str())
                    .is_some_and(|n| n.starts_with("flaky."))
            })
            .count();
    }
    ensure!(
        containers == 3,
        "three containers of flaky, kept as history: {containers}"
    );
    // Their logs too: every attempt said it started.
    let logs = lab.cli_ok(&["service", "logs", "flaky"])?;
    let mut attempts: Vec<&str> = logs
        .lines()
        .filter_map(|l| l.strip_suffix("    | started"))
        .collect();
    attempts.sort();
    let mut ids: Vec<String> = after
        .iter()
        .map(|t| format!("flaky.1.{}@", &t.id[..12]))
        .collect();
    ids.sort();
    ensure!(
        attempts.len() == 3
            && attempts
                .iter()
                .zip(&ids)
                .all(|(a, id)| a.starts_with(id.as_str())),
        "the log of each attempt: {logs}"
    );

    let once = lab.task_rows("once")?;
    ensure!(
        once.len() == 1 && once[0].current == "failed",
        "condition none: one attempt: {once:?}"
    );
    let ok = lab.task_rows("ok")?;
    ensure!(
        ok.len() == 1 && ok[0].current == "complete",
        "on-failure and exit 0: done: {ok:?}"
    );
    let ls = lab.cli_ok(&["service", "ls", "--format", "json"])?;
    let ls = flotilla_tests::cluster::json_items(&ls)?;
    let replicas = |name: &str| -> Result<String> {
        ls.iter()
            .find(|s| s["Name"] == name)
            .and_then(|s| s["Replicas"].as_str())
            .map(str::to_string)
            .with_context(|| format!("{name} in service ls: {ls:?}"))
    };
    eprintln!(
        "service ls replicas: flaky {}, once {}, ok {}",
        replicas("flaky")?,
        replicas("once")?,
        replicas("ok")?
    );
    Ok(())
}
