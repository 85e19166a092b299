//! Restart policies through the real CLI and agent: `on-failure:3` restarts a failing container
//! three times with a growing back-off and then leaves it exited (RestartCount 3); `always`
//! restarts a container whose process ends by itself, `stop` and `kill` (a user stop) end the
//! restarts, and an agent restart brings an `always` container back but not an `unless-stopped` one.
use std::time::Duration;

use flotilla_tests::agent::{eventually, stdout, text, AgentLab};

fn restart_count(lab: &AgentLab, name: &str) -> i64 {
    let v = lab.inspect(name).unwrap();
    v["RestartCount"]
        .as_i64()
        .unwrap_or_else(|| panic!("inspect {name} has a RestartCount: {v}"))
}

/// Waits until `name` is exited and its restart count stays put for `quiet`.
fn settled(lab: &AgentLab, name: &str, quiet: Duration) -> i64 {
    lab.wait_status(name, "exited", Duration::from_secs(20))
        .unwrap();
    let n = restart_count(lab, name);
    std::thread::sleep(quiet);
    let v = lab.inspect(name).unwrap();
    assert_eq!(v["State"]["Status"], "exited", "{name} came back: {v}");
    assert_eq!(
        v["RestartCount"].as_i64(),
        Some(n),
        "{name} was restarted again: {v}"
    );
    n
}

#[test]
fn on_failure_gives_up_after_max_retries_with_back_off() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    // each run prints the host's uptime (1/100 s) and fails
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:3",
        "busybox",
        "sh",
        "-c",
        "cut -d' ' -f1 /proc/uptime; exit 1",
    ])
    .unwrap();
    let n = eventually(Duration::from_secs(20), || {
        let v = lab.inspect("flaky")?;
        if v["State"]["Status"] == "exited" && v["RestartCount"] == 3 {
            Ok(3)
        } else {
            anyhow::bail!(
                "flaky: {} after {} restarts",
                v["State"]["Status"],
                v["RestartCount"]
            )
        }
    })
    .unwrap();
    assert_eq!(settled(&lab, "flaky", Duration::from_millis(1500)), n);
    let v = lab.inspect("flaky").unwrap();
    assert_eq!(v["State"]["ExitCode"], 1, "{v}");
    assert_eq!(v["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(v["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 3);

    // four runs, spread out by the back-off (docker: 100 ms doubling), not instant
    let logs = lab.cli_ok(&["logs", "flaky"]).unwrap();
    let starts: Vec<f64> = logs.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(
        starts.len(),
        4,
        "one line per run (1 + 3 restarts):\n{logs}"
    );
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= 0.05),
        "each restart waits for the back-off (gaps {gaps:?} s)"
    );
    assert!(
        starts[3] - starts[0] >= 0.3,
        "the restarts are spread out (gaps {gaps:?} s)"
    );
    assert!(
        gaps[2] >= gaps[0],
        "the back-off does not shrink (gaps {gaps:?} s)"
    );
}

#[test]
fn always_restarts_until_stopped_and_comes_back_with_the_agent() {
    let mut lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    for (name, policy) in [
        ("loop", "always"),
        ("loop2", "always"),
        ("polite", "unless-stopped"),
    ] {
        lab.cli_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--restart",
            policy,
            "busybox",
            "sh",
            "-c",
            "echo run; sleep 0.3",
        ])
        .unwrap();
    }
    // exits 0 by itself, and is started again, several times
    eventually(Duration::from_secs(20), || {
        let n = restart_count(&lab, "loop");
        if n >= 2 {
            Ok(())
        } else {
            anyhow::bail!("loop restarted {n} times")
        }
    })
    .unwrap();
    // each restart is a new run of the process (the count goes up before the run prints)
    eventually(Duration::from_secs(5), || {
        let logs = lab.cli_ok(&["logs", "loop"])?;
        if logs.lines().filter(|l| *l == "run").count() >= 3 {
            Ok(())
        } else {
            anyhow::bail!("fewer than 3 runs logged:\n{logs}")
        }
    })
    .unwrap();

    // stop ends the restarts, whether it catches a run or the back-off between runs
    let o = lab.cli(&["stop", "-t", "1", "loop"]).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let stopped_at = settled(&lab, "loop", Duration::from_millis(1500));
    assert!(stopped_at >= 2);
    let o = lab.cli(&["stop", "-t", "1", "polite"]).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    settled(&lab, "polite", Duration::from_millis(200));
    // kill (SIGKILL) is a user stop too, like docker
    eventually(Duration::from_secs(10), || {
        let o = lab.cli(&["kill", "loop2"])?;
        if o.status.success() {
            Ok(())
        } else {
            anyhow::bail!("kill loop2 (between runs?): {}", text(&o))
        }
    })
    .unwrap();
    settled(&lab, "loop2", Duration::from_millis(1000));

    // docker: an agent (daemon) start brings `always` containers back, not `unless-stopped` ones
    lab.restart_agent().unwrap();
    lab.wait_status("loop", "running", Duration::from_secs(10))
        .or_else(|_| lab.wait_status("loop", "restarting", Duration::from_secs(1)))
        .unwrap_or_else(|e| panic!("`always` container back after an agent restart: {e:#}"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.status("polite").unwrap(), "exited");
    let o = lab.cli(&["ps", "--format", "{{.Names}}"]).unwrap();
    assert!(!stdout(&o).contains("polite"), "{}", text(&o));
}
