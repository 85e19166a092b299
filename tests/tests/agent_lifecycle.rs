//! A container's life through the real CLI and agent: run (exit codes), run -d + exec, logs
//! (streams, --tail, -t), stop (SIGTERM, then SIGKILL after -t), rm (refused while running), ps
//! (-a, -q, --format json), inspect, wait, --rm, name conflicts and "did you mean" for unknown
//! names.
use std::time::{Duration, Instant};

use flotilla_tests::agent::{ps_json, stderr, stdout, text, AgentLab};

fn lab() -> AgentLab {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    lab
}

#[test]
fn run_propagates_exit_codes_and_keeps_streams_apart() {
    let lab = lab();
    let o = lab.cli(&["run", "busybox", "sh", "-c", "exit 3"]).unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // stdout and stderr of an attached run stay apart
    let o = lab
        .cli(&[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 0",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o), "to-out\n", "{}", text(&o));
    assert!(stderr(&o).contains("to-err"), "{}", text(&o));

    // run -d --rm: removed after it ends by itself
    lab.cli_ok(&["run", "-d", "--rm", "--name", "bg-once", "busybox", "true"])
        .unwrap();
    flotilla_tests::agent::eventually(Duration::from_secs(10), || {
        let all = lab.cli_ok(&["ps", "-a", "--format", "{{.Names}}"])?;
        if all.lines().any(|l| l.trim() == "bg-once") {
            anyhow::bail!("bg-once still listed:\n{all}");
        }
        Ok(())
    })
    .unwrap();
}

/// docker's client waits for the removal of a `--rm` container before it exits, so a script can
/// reuse the name at once (`docker run --rm --name x ...; docker run --name x ...`).
#[test]
fn run_rm_has_removed_the_container_when_run_returns() {
    let lab = lab();
    let o = lab
        .cli(&[
            "run", "--rm", "--name", "once", "busybox", "echo", "hi there",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o), "hi there\n");
    let all = lab.cli_ok(&["ps", "-a", "--format", "{{.Names}}"]).unwrap();
    assert!(
        !all.lines().any(|l| l.trim() == "once"),
        "`run --rm` returned but its container is still listed (docker waits for the removal):\n{all}"
    );
    let o = lab
        .cli(&["run", "--rm", "--name", "once", "busybox", "true"])
        .unwrap();
    assert!(
        o.status.success(),
        "the name of a --rm container is free again: {}",
        text(&o)
    );
}

#[test]
fn detached_exec_logs_and_ps() {
    let lab = lab();
    let id = lab
        .cli_ok(&[
            "run",
            "-d",
            "--name",
            "app",
            "busybox",
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo out$i; done; echo err1 >&2; exec sleep 1000",
        ])
        .unwrap();
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "run -d prints the full id: {id:?}");
    lab.wait_status("app", "running", Duration::from_secs(10))
        .unwrap();

    // exec: output and exit code
    let o = lab
        .cli(&[
            "exec",
            "app",
            "sh",
            "-c",
            "echo from-exec; echo exec-err >&2; exit 5",
        ])
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert_eq!(stdout(&o), "from-exec\n", "{}", text(&o));
    assert!(stderr(&o).contains("exec-err"), "{}", text(&o));
    let o = lab.cli(&["exec", "app", "cat", "/proc/1/cmdline"]).unwrap();
    assert!(stdout(&o).starts_with("sleep"), "{}", text(&o));

    // logs: the streams are separated, --tail counts lines, -t prefixes RFC 3339 times
    flotilla_tests::agent::eventually(Duration::from_secs(5), || {
        let o = lab.cli(&["logs", "app"])?;
        if stdout(&o) == "out1\nout2\nout3\nout4\nout5\n" && stderr(&o) == "err1\n" {
            Ok(())
        } else {
            anyhow::bail!("logs: {}", text(&o))
        }
    })
    .unwrap();
    let o = lab.cli(&["logs", "--tail", "1", "app"]).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let total = stdout(&o).lines().count() + stderr(&o).lines().count();
    assert_eq!(total, 1, "--tail 1 gives one line: {}", text(&o));
    let o = lab.cli(&["logs", "-t", "app"]).unwrap();
    let first = stdout(&o).lines().next().unwrap_or_default().to_string();
    let (ts, rest) = first.split_once(' ').unwrap_or_default();
    assert_eq!(rest, "out1", "{}", text(&o));
    assert!(
        ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T') && ts.ends_with('Z'),
        "-t prefixes an RFC 3339 timestamp: {first:?}"
    );

    // ps: running only by default, -a everything, -q ids, --format json
    lab.cli_ok(&["run", "--name", "done", "busybox", "true"])
        .unwrap();
    let ps = lab.cli_ok(&["ps"]).unwrap();
    assert!(ps.contains("app") && !ps.contains("done"), "{ps}");
    let ps = lab.cli_ok(&["ps", "-a"]).unwrap();
    assert!(ps.contains("app") && ps.contains("done"), "{ps}");
    assert!(ps.contains("Exited (0)"), "{ps}");
    let q = lab.cli_ok(&["ps", "-q"]).unwrap();
    assert_eq!(
        q.trim(),
        &id[..12],
        "ps -q shows short ids of running containers"
    );
    let rows = ps_json(&lab.cli_ok(&["ps", "-a", "--format", "json"]).unwrap()).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let app = rows
        .iter()
        .find(|r| r["Names"] == "app")
        .expect("app in ps --format json");
    assert_eq!(app["State"], "running", "{app}");
    assert!(id.starts_with(app["ID"].as_str().unwrap_or("-")), "{app}");

    // inspect
    let v = lab.inspect("app").unwrap();
    assert_eq!(v["Id"], id.as_str());
    assert_eq!(v["Name"], "/app");
    assert_eq!(v["State"]["Status"], "running");
    assert_eq!(v["State"]["Running"], true);
    assert!(v["State"]["Pid"].as_i64().unwrap_or(0) > 0, "{v}");
    let v = lab.inspect("done").unwrap();
    assert_eq!(v["State"]["Status"], "exited");
    assert_eq!(v["State"]["ExitCode"], 0);
    assert_eq!(v["State"]["Running"], false);
    // by id prefix too
    assert_eq!(lab.inspect(&id[..10]).unwrap()["Name"], "/app");
}

#[test]
fn stop_rm_wait_and_names() {
    let lab = lab();
    // a container that ignores SIGTERM is killed after the timeout
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "busybox",
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 0.1; done",
    ])
    .unwrap();
    // one that handles SIGTERM stops at once, with its own exit code
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        "busybox",
        "sh",
        "-c",
        "trap 'exit 42' TERM; while true; do sleep 0.1; done",
    ])
    .unwrap();
    lab.wait_status("stubborn", "running", Duration::from_secs(10))
        .unwrap();
    lab.wait_status("polite", "running", Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300)); // the traps are set

    // rm without -f is refused while running, with a clear message
    let o = lab.cli(&["rm", "stubborn"]).unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let msg = stderr(&o);
    assert!(
        msg.contains("running") && msg.contains("-f"),
        "rm of a running container says why and what to do: {msg}"
    );
    assert_eq!(lab.status("stubborn").unwrap(), "running");

    let t = Instant::now();
    let o = lab.cli(&["stop", "-t", "2", "stubborn"]).unwrap();
    let took = t.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        took >= Duration::from_millis(1800),
        "stop -t 2 of a container ignoring SIGTERM waits out the timeout (took {took:?})"
    );
    assert!(took < Duration::from_secs(15), "stop took {took:?}");
    let v = lab.inspect("stubborn").unwrap();
    assert_eq!(v["State"]["Status"], "exited");
    assert_eq!(v["State"]["ExitCode"], 137, "SIGKILL after the timeout");

    let t = Instant::now();
    lab.cli_ok(&["stop", "-t", "10", "polite"]).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "SIGTERM ends a container that handles it without waiting for the timeout"
    );
    assert_eq!(lab.inspect("polite").unwrap()["State"]["ExitCode"], 42);

    // wait prints the exit code
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "waiter",
        "busybox",
        "sh",
        "-c",
        "sleep 0.3; exit 4",
    ])
    .unwrap();
    let o = lab.cli(&["wait", "waiter"]).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o).trim(), "4", "{}", text(&o));
    assert_eq!(lab.status("waiter").unwrap(), "exited");

    // name conflict
    let o = lab
        .cli(&["run", "-d", "--name", "waiter", "busybox", "true"])
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(
        o.status.code(),
        Some(125),
        "docker uses 125 for run failures: {}",
        text(&o)
    );
    assert!(
        stderr(&o).contains("already in use"),
        "name conflict is explained: {}",
        text(&o)
    );

    // unknown container: suggests the closest name
    let o = lab.cli(&["inspect", "waitr"]).unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("no such container") && stderr(&o).contains("waiter"),
        "unknown name suggests the closest: {}",
        text(&o)
    );
    let o = lab.cli(&["stop", "stubbornn"]).unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(stderr(&o).contains("stubborn"), "{}", text(&o));

    // rm of stopped containers; rm -f of a running one
    lab.cli_ok(&["rm", "stubborn", "polite"]).unwrap();
    lab.cli_ok(&["run", "-d", "--name", "busy", "busybox", "sleep", "1000"])
        .unwrap();
    lab.wait_status("busy", "running", Duration::from_secs(10))
        .unwrap();
    let t = Instant::now();
    lab.cli_ok(&["rm", "-f", "busy"]).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "rm -f kills at once");
    let all = lab.cli_ok(&["ps", "-a", "--format", "{{.Names}}"]).unwrap();
    let names: Vec<&str> = all.lines().map(str::trim).collect();
    assert_eq!(names, ["waiter"], "{all}");
    let o = lab.cli(&["inspect", "busy"]).unwrap();
    assert!(!o.status.success(), "{}", text(&o));
}
