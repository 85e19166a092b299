//! What reaches task containers and what comes back out, on a cluster of 1 manager (no agent)
//! + 2 workers.
//!
//! Secrets and configs: a secret given on stdin is readable at /run/secrets/NAME in the one task
//! that uses it (mode 0444 by default, or as asked; a read-only tmpfs bind), the other worker
//! never gets it (not in its secrets tmpfs, nowhere in its state or run dirs), the manager's
//! disk (raft log, snapshots) and every log file hold no plaintext; a secret in use cannot be
//! removed (the refusal names the service); when the service stops using it, it leaves the
//! worker's tmpfs although the old task stays as history. A config is mounted read-only at its
//! target.
//!
//! Service logs: `service logs` merges every task's lines with `web.N.<task>@host` prefixes;
//! `-f` streams new lines, of tasks that start later too; with a worker's agent dead, it still
//! prints the reachable tasks' lines and warns about the others instead of failing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use flotilla_tests::cluster::{files_containing, ClusterLab};

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

fn nonce() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}x{t}", std::process::id())
}

/// The line of /proc/mounts (inside a container) whose mount point is `target`: (fstype, opts).
fn mount_of(mounts: &str, target: &str) -> Option<(String, String)> {
    mounts.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 4 && f[1] == target).then(|| (f[2].to_string(), f[3].to_string()))
    })
}

#[test]
fn secrets_reach_only_their_task() -> Result<()> {
    let mut lab = ClusterLab::new(3)?;
    run(&mut lab, secrets)
}

fn secrets(lab: &mut ClusterLab) -> Result<()> {
    let secret = format!("pw-{}", nonce());
    let token = format!("tok-{}", nonce());
    let config = format!("cfg-{}", nonce());
    let id = lab.cli_stdin(&["secret", "create", "db_pw", "-"], secret.as_bytes())?;
    ensure!(!id.trim().is_empty(), "secret create prints the id");
    lab.cli_stdin(&["secret", "create", "api_token", "-"], token.as_bytes())?;
    lab.cli_stdin(&["config", "create", "app_cfg", "-"], config.as_bytes())?;
    let inspect = lab.cli_ok(&["secret", "inspect", "db_pw"])?;
    ensure!(
        !inspect.contains(&secret),
        "inspect never shows the data: {inspect}"
    );

    let on_a = format!("node.hostname=={}", lab.hostname(2));
    lab.cli_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "db",
        "--stop-grace-period",
        "1s",
        "--constraint",
        &on_a,
        "--secret",
        "db_pw",
        "--secret",
        "source=api_token,target=token,mode=0400",
        "--config",
        "source=app_cfg,target=/etc/app.conf",
        "busybox:latest",
        "sleep",
        "1000",
    ])?;
    lab.wait_running("db", &[(2, 1)], CONVERGE)?;
    let task = lab
        .task_rows("db")?
        .into_iter()
        .find(|t| t.running())
        .context("db's task")?;
    let c = lab.container_of_task(2, &task.id)?;

    // In the container: the data, the modes, read-only tmpfs binds.
    ensure!(lab.exec(2, &c, &["cat", "/run/secrets/db_pw"])? == secret);
    ensure!(lab.exec(2, &c, &["cat", "/run/secrets/token"])? == token);
    ensure!(lab.exec(2, &c, &["cat", "/etc/app.conf"])? == config);
    let modes = lab.exec(
        2,
        &c,
        &[
            "stat",
            "-c",
            "%a %n",
            "/run/secrets/db_pw",
            "/run/secrets/token",
            "/etc/app.conf",
        ],
    )?;
    ensure!(
        modes.lines().collect::<Vec<_>>()
            == [
                "444 /run/secrets/db_pw",
                "400 /run/secrets/token",
                "444 /etc/app.conf"
            ],
        "{modes}"
    );
    let mounts = lab.exec(2, &c, &["cat", "/proc/mounts"])?;
    for target in ["/run/secrets/db_pw", "/run/secrets/token", "/etc/app.conf"] {
        let (fstype, opts) =
            mount_of(&mounts, target).with_context(|| format!("{target} in {mounts}"))?;
        ensure!(fstype == "tmpfs", "{target} on {fstype}");
        ensure!(
            opts.split(',').any(|o| o == "ro"),
            "{target} mounted {opts}"
        );
    }
    let o = lab.agent_cli(2, &["exec", &c, "sh", "-c", "echo x > /etc/app.conf"])?;
    ensure!(!o.status.success(), "the config is read-only");

    // Only worker A has it: in its secrets tmpfs (the control for the searches below)...
    let a_has = files_containing(&lab.agent_run_dir(2).join("secrets"), secret.as_bytes());
    ensure!(
        !a_has.is_empty(),
        "worker A keeps the secret in its secrets tmpfs"
    );
    ensure!(
        files_containing(&lab.agent_state_dir(2), secret.as_bytes()).is_empty(),
        "worker A never writes it to its state dir (disk)"
    );
    // ...never on worker B, in its secrets dir or anywhere else.
    let b_secrets = lab.agent_run_dir(3).join("secrets");
    let b_files = files_containing(&b_secrets, b"");
    ensure!(
        b_files.is_empty(),
        "worker B's secrets dir is empty: {b_files:?}"
    );
    for d in [lab.agent_run_dir(3), lab.agent_state_dir(3)] {
        for needle in [&secret, &token, &config] {
            let found = files_containing(&d, needle.as_bytes());
            ensure!(found.is_empty(), "worker B holds {needle}: {found:?}");
        }
    }
    // The manager's disk: the raft log holds the config (the control) but not the secrets.
    let m = lab.controller_dir(1);
    ensure!(
        !files_containing(&m, config.as_bytes()).is_empty(),
        "the config is in the manager's state"
    );
    for needle in [&secret, &token] {
        let found = files_containing(&m, needle.as_bytes());
        ensure!(
            found.is_empty(),
            "plaintext secret on the manager's disk: {found:?}"
        );
    }
    // No log file names it either.
    let logs = format!(
        "{}{}{}",
        lab.manager_log(1),
        lab.agent_log(2),
        lab.agent_log(3)
    );
    ensure!(
        !logs.contains(&secret) && !logs.contains(&token),
        "a secret in a log"
    );

    // In use: refused, naming the service.
    let err = lab.cli_fails(&["secret", "rm", "db_pw"])?;
    ensure!(
        err.contains("db_pw") && err.contains("in use") && err.contains("db"),
        "{err}"
    );
    let err = lab.cli_fails(&["config", "rm", "app_cfg"])?;
    ensure!(err.contains("in use") && err.contains("db"), "{err}");

    // The service stops using them: its new task runs without them, the old one stays as
    // history (its stopped container), and the secrets leave worker A's tmpfs.
    lab.cli_ok(&[
        "service",
        "update",
        "-q",
        "--secret-rm",
        "db_pw",
        "--secret-rm",
        "api_token",
        "--config-rm",
        "app_cfg",
        "db",
    ])?;
    lab.eventually(CONVERGE, || {
        let left = files_containing(&lab.agent_run_dir(2), secret.as_bytes());
        ensure!(left.is_empty(), "still on worker A: {left:?}");
        let left = files_containing(&lab.agent_run_dir(2), token.as_bytes());
        ensure!(left.is_empty(), "still on worker A: {left:?}");
        Ok(())
    })?;
    ensure!(
        lab.container_of_task(2, &task.id).is_ok(),
        "the old task's container stays as history"
    );
    lab.cli_ok(&["secret", "rm", "db_pw", "api_token"])?;
    lab.cli_ok(&["config", "rm", "app_cfg"])?;
    // The service goes: its containers go.
    lab.cli_ok(&["service", "rm", "db"])?;
    lab.eventually(CONVERGE, || {
        let o = lab.agent_cli(2, &["ps", "-aq"])?;
        let left = String::from_utf8_lossy(&o.stdout).trim().to_string();
        ensure!(left.is_empty(), "containers left on worker A: {left}");
        Ok(())
    })?;
    let ls = lab.cli_ok(&["secret", "ls", "-q"])?;
    ensure!(ls.trim().is_empty(), "{ls}");
    Ok(())
}

#[test]
fn service_logs_merge_follow_and_survive_a_dead_node() -> Result<()> {
    let mut lab = ClusterLab::new(3)?;
    run(&mut lab, logs)
}

/// `prefix -> lines` of `service logs` output (`web.1.abc@host    | text`).
fn by_prefix(out: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in out.lines() {
        let (p, text) = l
            .split_once("    | ")
            .with_context(|| format!("a log line without a prefix: {l:?}"))?;
        m.entry(p.to_string()).or_default().push(text.to_string());
    }
    Ok(m)
}

/// The expected prefixes of the tasks of `service` that ran on a node (history included).
fn prefixes(lab: &ClusterLab, service: &str) -> Result<BTreeSet<String>> {
    Ok(lab
        .task_rows(service)?
        .iter()
        .filter(|t| !t.node.is_empty())
        .map(|t| format!("{}.{}@{}", t.name, &t.id[..12.min(t.id.len())], t.node))
        .collect())
}

fn logs(lab: &mut ClusterLab) -> Result<()> {
    lab.cli_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "chat",
        "--replicas",
        "4",
        "--stop-grace-period",
        "1s",
        "busybox:latest",
        "sh",
        "-c",
        "echo hello; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.3; done",
    ])?;
    lab.wait_running("chat", &[(2, 2), (3, 2)], CONVERGE)?;
    let want = prefixes(lab, "chat")?;

    // Merged, each task's lines under its prefix, starting with its first line.
    let m = lab.eventually(CONVERGE, || {
        let m = by_prefix(&lab.cli_ok(&["service", "logs", "chat"])?)?;
        let got: BTreeSet<String> = m.keys().cloned().collect();
        ensure!(got == want, "prefixes {got:?}, want {want:?}");
        Ok(m)
    })?;
    for (p, lines) in &m {
        ensure!(
            lines.first().map(String::as_str) == Some("hello"),
            "{p}: {lines:?}"
        );
        for (i, l) in lines.iter().skip(1).enumerate() {
            ensure!(*l == format!("tick {}", i + 1), "{p}: in order: {lines:?}");
        }
    }

    // Follow: new lines arrive, and a task that starts later joins the stream.
    let mut f = lab.cli_background(&["service", "logs", "-f", "--tail", "1", "chat"])?;
    let t0 = Instant::now();
    lab.eventually(CONVERGE, || {
        let m = by_prefix(&f.stdout())?;
        let fresh = want.iter().all(|p| m.get(p).is_some_and(|l| l.len() >= 3));
        ensure!(fresh, "following: {m:?}");
        Ok(())
    })?;
    eprintln!(
        "follow: 2 new lines of every task within {:?}",
        t0.elapsed()
    );
    lab.cli_ok(&["service", "scale", "-d", "chat=5"])?;
    lab.eventually(CONVERGE, || {
        let m = by_prefix(&f.stdout())?;
        let new: Vec<_> = m.keys().filter(|p| p.starts_with("chat.5.")).collect();
        ensure!(new.len() == 1, "the new task in the stream: {:?}", m.keys());
        Ok(())
    })?;
    ensure!(f.running(), "still following: {}", f.stderr());
    lab.cli_ok(&["service", "scale", "-d", "chat=4"])?;
    lab.wait_running("chat", &[(2, 2), (3, 2)], CONVERGE)?;

    // Worker 3's agent dies: its tasks' logs cannot be read; the others' still come, with a
    // warning instead of a failure.
    let host3 = lab.hostname(3);
    let on3: BTreeSet<String> = lab
        .task_rows("chat")?
        .into_iter()
        .filter(|t| t.node == host3)
        .map(|t| t.id)
        .collect();
    lab.kill_agent(3)?;
    let t0 = Instant::now();
    let o = lab.cli(&["service", "logs", "chat"])?;
    let took = t0.elapsed();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    ensure!(o.status.success(), "service logs fails: {err}");
    let m = by_prefix(&out)?;
    let reachable: BTreeSet<String> = prefixes(lab, "chat")?
        .into_iter()
        .filter(|p| !p.ends_with(&host3))
        .collect();
    let got: BTreeSet<String> = m.keys().cloned().collect();
    ensure!(
        got == reachable,
        "lines of the reachable tasks only: {got:?} vs {reachable:?}"
    );
    // One warning per task that was ever on worker 3 (history included), naming task and node.
    let warned: BTreeSet<String> = err
        .lines()
        .filter_map(|l| l.strip_prefix("WARNING: task "))
        .filter(|l| l.contains(&format!(" on node {host3} (")))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    ensure!(
        warned == on3 && err.lines().count() == on3.len(),
        "one warning per unreachable task ({on3:?}): {err}"
    );
    eprintln!("service logs with a dead agent: {took:?}; {err}");
    // The follower keeps streaming the others.
    let before = by_prefix(&f.stdout())?;
    lab.eventually(CONVERGE, || {
        let now = by_prefix(&f.stdout())?;
        for p in &reachable {
            let (a, b) = (
                before.get(p).map_or(0, Vec::len),
                now.get(p).map_or(0, Vec::len),
            );
            ensure!(b > a, "{p}: no new line after the agent died");
        }
        Ok(())
    })?;
    ensure!(f.running(), "still following: {}", f.stderr());
    let ferr = f.stderr();
    ensure!(
        ferr.lines()
            .any(|l| l.starts_with(&format!("WARNING: node {host3} ("))
                && l.ends_with("its session ended while reading logs")),
        "the follower says what it lost: {ferr}"
    );
    drop(f);

    // Worker 3 comes back, then its link is cut (its agent lives on, its connection hangs):
    // `service logs` must not wait for the connection; once the node is declared down its
    // session ends and the command completes with warnings.
    lab.restart_agent(3)?;
    lab.eventually(CONVERGE, || {
        let n = lab.node_state(&lab.node_of_host(3)?)?;
        ensure!(n == "ready", "node 3 is {n}");
        let running: usize = lab.running_by_host("chat")?.values().sum();
        ensure!(running == 4, "{running} running");
        Ok(())
    })?;
    lab.set_connected(3, false)?;
    let t0 = Instant::now();
    let o = lab.cli(&["service", "logs", "chat"])?;
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ensure!(o.status.success(), "service logs fails: {err}");
    let m = by_prefix(&String::from_utf8_lossy(&o.stdout))?;
    ensure!(
        m.keys().all(|p| !p.ends_with(&host3)) && !m.is_empty(),
        "lines of worker 2 only: {:?}",
        m.keys()
    );
    ensure!(
        err.lines().all(|l| l.starts_with("WARNING: ")) && err.contains(&host3),
        "{err}"
    );
    ensure!(took < Duration::from_secs(15), "took {took:?}");
    eprintln!("service logs with worker 3 cut off: {took:?}");
    lab.set_connected(3, true)?;
    Ok(())
}
