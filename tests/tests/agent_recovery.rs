//! The agent dies (SIGKILL) with containers running and comes back: running containers are still
//! running with the same pid, their logs hold the lines written while the agent was down, a
//! container that exited meanwhile shows its exit code (inspect, ps, events), published ports
//! still answer, and the nftables table has no duplicated rules after one or two restarts.
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_tests::agent::{eventually, http_get_local, stdout, text, AgentLab};
use flotilla_tests::registry::free_port;

fn pid(lab: &AgentLab, name: &str) -> i64 {
    let v = lab.inspect(name).unwrap();
    v["State"]["Pid"].as_i64().unwrap_or(0)
}

/// Highest N of the `lineN` lines in `logs`, and whether every line 1..=N is there once.
fn ticks(logs: &str) -> (u64, bool) {
    let nums: Vec<u64> = logs
        .lines()
        .filter_map(|l| l.trim().strip_prefix("line"))
        .filter_map(|n| n.parse().ok())
        .collect();
    let max = nums.iter().copied().max().unwrap_or(0);
    let complete =
        nums.len() as u64 == max && nums.iter().enumerate().all(|(i, n)| *n == i as u64 + 1);
    (max, complete)
}

fn rule_counts(table: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *m.entry(l.to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn containers_survive_an_agent_crash_and_exits_meanwhile_are_recorded() {
    let mut lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    let ctl = lab.scratch("ctl").unwrap();
    let port = free_port().unwrap();

    lab.cli_ok(&["run", "-d", "--name", "sleeper", "busybox", "sleep", "1000"])
        .unwrap();
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo line$i; sleep 0.1; done",
    ])
    .unwrap();
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "ex7",
        "-v",
        &format!("{}:/ctl", ctl.display()),
        "busybox",
        "sh",
        "-c",
        "while [ ! -e /ctl/go ]; do sleep 0.05; done; exit 7",
    ])
    .unwrap();
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("{port}:80"),
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo web-up > /www/index.html && exec httpd -f -p 80 -h /www",
    ])
    .unwrap();
    for n in ["sleeper", "ticker", "ex7", "web"] {
        lab.wait_status(n, "running", Duration::from_secs(10))
            .unwrap();
    }
    let body = eventually(Duration::from_secs(10), || http_get_local(port)).unwrap();
    assert!(body.contains("web-up"), "{body}");
    let pids: Vec<(&str, i64)> = ["sleeper", "ticker", "web"]
        .into_iter()
        .map(|n| (n, pid(&lab, n)))
        .collect();
    for (n, p) in &pids {
        assert!(*p > 0, "{n} has a pid");
    }
    std::thread::sleep(Duration::from_millis(300));
    let (before_kill, complete) = ticks(&lab.cli_ok(&["logs", "ticker"]).unwrap());
    assert!(before_kill > 0 && complete, "ticker logs before the crash");
    let table_before = lab.nft_table();
    assert!(
        table_before.contains(&format!("dport {port}")),
        "the published port has rules: {table_before}"
    );
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();

    // the crash; one container ends while the agent is away
    lab.kill_agent();
    std::fs::write(ctl.join("go"), "").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let o = lab.cli(&["ps"]).unwrap();
    assert_eq!(o.status.code(), Some(1), "no agent: {}", text(&o));
    // the port still answers without the agent (the data path is the kernel's)
    let body = http_get_local(port).unwrap();
    assert!(body.contains("web-up"), "{body}");

    lab.start_agent().unwrap();

    for (n, p) in &pids {
        let v = lab.inspect(n).unwrap();
        assert_eq!(
            v["State"]["Status"], "running",
            "{n} after the restart: {v}"
        );
        assert_eq!(v["State"]["Pid"].as_i64(), Some(*p), "{n} kept its process");
    }
    let logs = lab.cli_ok(&["logs", "ticker"]).unwrap();
    let (after, complete) = ticks(&logs);
    assert!(
        after >= before_kill + 10,
        "ticker logged while the agent was down (line{before_kill} before the crash, line{after} now)"
    );
    assert!(complete, "no line of ticker was lost or doubled:\n{logs}");

    let v = lab.inspect("ex7").unwrap();
    assert_eq!(v["State"]["Status"], "exited", "{v}");
    assert_eq!(v["State"]["ExitCode"], 7, "{v}");
    let ps = lab
        .cli_ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"])
        .unwrap();
    assert!(
        ps.lines().any(|l| l.starts_with("ex7 Exited (7)")),
        "ps shows the exit: {ps}"
    );
    let o = lab
        .cli_for(
            &[
                "events",
                "--since",
                &since,
                "--format",
                "json",
                "-f",
                "container=ex7",
            ],
            Duration::from_secs(2),
        )
        .unwrap();
    let events = stdout(&o);
    let die = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["Action"] == "die");
    let die = die.unwrap_or_else(|| panic!("events --since shows ex7's die: {}", text(&o)));
    assert_eq!(die["Actor"]["Attributes"]["exitCode"], "7", "{die}");

    // the port still answers, the rules are not doubled
    let body = eventually(Duration::from_secs(5), || http_get_local(port)).unwrap();
    assert!(body.contains("web-up"), "{body}");
    let table_after = lab.nft_table();
    let before = rule_counts(&table_before);
    for (line, n) in rule_counts(&table_after) {
        let had = before.get(&line).copied().unwrap_or(0);
        assert!(
            n <= had,
            "rule {line:?} appears {n} times after the restart, {had} before:\n{table_after}"
        );
    }
    let dport = format!("dport {port}");
    assert_eq!(
        table_after.matches(&dport).count(),
        table_before.matches(&dport).count(),
        "published port rules before:\n{table_before}\nafter:\n{table_after}"
    );
    // a second restart changes nothing
    lab.restart_agent().unwrap();
    assert_eq!(
        lab.nft_table(),
        table_after,
        "a second restart rewrote the table"
    );

    // the re-attached containers are fully managed again
    let o = lab.cli(&["exec", "sleeper", "echo", "still here"]).unwrap();
    assert_eq!(stdout(&o), "still here\n", "{}", text(&o));
    lab.cli_ok(&["stop", "-t", "1", "ticker"]).unwrap();
    let v = lab.inspect("ticker").unwrap();
    assert_eq!(v["State"]["Status"], "exited", "{v}");
    lab.cli_ok(&["rm", "-f", "sleeper", "web"]).unwrap();
}
