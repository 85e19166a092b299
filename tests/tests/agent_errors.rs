//! What users get wrong and what goes wrong, through the real CLI and agent: no agent running (how
//! to start it, exit 1), unknown images, invalid --memory / -p / --restart values (exit 125, no
//! container left), removing a running container without -f, and an agent killed right after
//! `create` or in the middle of a `stop` leaves a state that is listed, startable and removable.
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_tests::agent::{stderr, text, AgentLab};

fn mounted_under(path: &Path) -> Vec<String> {
    let p = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&p))
        .map(str::to_string)
        .collect()
}

#[test]
fn no_agent_says_how_to_start_it() {
    let mut lab = AgentLab::new().expect("agent lab");
    lab.kill_agent();
    // exit 1, but 125 for run (docker's code for failures before the container runs)
    for (args, code) in [
        (&["ps"][..], 1),
        (&["images"], 1),
        (&["logs", "x1"], 1),
        (&["run", "--rm", "busybox", "true"], 125),
    ] {
        let o = lab.cli(args).unwrap();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        let msg = stderr(&o);
        assert!(
            msg.contains(&lab.socket().display().to_string())
                && msg.contains("flotilla-agent serve"),
            "{args:?}: names the address and how to start the agent: {msg}"
        );
    }
    // a socket path that never existed
    let mut c = lab.cli_command();
    c.env("FLOTILLA_HOST", "unix:///nonexistent/flotilla/agent.sock")
        .arg("ps");
    let o = flotilla_tests::agent::output_with_timeout(c, Duration::from_secs(30)).unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("flotilla-agent serve"), "{}", text(&o));
}

#[test]
fn unknown_images_and_invalid_options_are_refused_clearly() {
    let mut lab = AgentLab::new().expect("agent lab");
    let reference = lab.pull_busybox().expect("busybox from the lab registry");

    // not in the store, and not pulled
    let o = lab
        .cli(&["run", "--rm", "--pull", "never", "nosuchimage:1", "true"])
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(
        stderr(&o).contains("nosuchimage") && stderr(&o).contains("not found"),
        "{}",
        text(&o)
    );
    // not in the registry either (the lab's registry on loopback: no traffic leaves the host)
    let missing = reference.replace("busybox:latest", "nosuch/image:1");
    let o = lab.cli(&["run", "--rm", &missing, "true"]).unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let msg = stderr(&o);
    assert!(
        msg.contains("nosuch/image") && !msg.contains("panicked"),
        "a missing image in the registry is named: {msg}"
    );

    let bad: [(&[&str], &str); 7] = [
        (&["--memory", "lots"], "lots"),
        (&["--memory=-5m"], "-5m"),
        (&["-p", "99999:80"], "99999"),
        (&["-p", "80:http"], "http"),
        (&["-p", "1.2.3:80:80"], "1.2.3"),
        (&["--restart", "sometimes"], "sometimes"),
        (&["--restart", "always:3"], "always"),
    ];
    for (flags, named) in bad {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["busybox", "true"]);
        let o = lab.cli(&args).unwrap();
        assert_eq!(o.status.code(), Some(125), "{flags:?}: {}", text(&o));
        let msg = stderr(&o);
        assert!(
            msg.contains(named) && msg.lines().count() <= 3 && !msg.contains("panicked"),
            "{flags:?}: one clear error naming {named:?}: {msg}"
        );
    }
    let all = lab.cli_ok(&["ps", "-a", "-q"]).unwrap();
    assert_eq!(all.trim(), "", "refused runs leave no container");

    // rm of a running container without -f
    lab.cli_ok(&["run", "-d", "--name", "up", "busybox", "sleep", "1000"])
        .unwrap();
    let o = lab.cli(&["rm", "up"]).unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("running") && stderr(&o).contains("-f"),
        "{}",
        text(&o)
    );
    assert_eq!(lab.status("up").unwrap(), "running");
}

#[test]
fn agent_killed_after_create_leaves_a_listed_removable_container() {
    let mut lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    let id = lab
        .cli_ok(&[
            "create",
            "--name",
            "fresh",
            "busybox",
            "echo",
            "started late",
        ])
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "create prints the id: {id}");
    let id2 = lab
        .cli_ok(&["create", "--name", "doomed", "busybox", "sleep", "1000"])
        .unwrap()
        .trim()
        .to_string();
    lab.kill_agent();
    lab.start_agent().unwrap();

    let all = lab
        .cli_ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"])
        .unwrap();
    assert!(all.lines().any(|l| l == "fresh created"), "{all}");
    assert!(all.lines().any(|l| l == "doomed created"), "{all}");
    // startable
    lab.cli_ok(&["start", "fresh"]).unwrap();
    lab.wait_status("fresh", "exited", Duration::from_secs(10))
        .unwrap();
    let logs = lab.cli_ok(&["logs", "fresh"]).unwrap();
    assert_eq!(logs, "started late\n");
    // removable, with nothing left behind
    lab.cli_ok(&["rm", "fresh", "doomed"]).unwrap();
    let all = lab.cli_ok(&["ps", "-a", "-q"]).unwrap();
    assert_eq!(all.trim(), "", "{all}");
    for i in [&id, &id2] {
        assert!(
            !lab.state_dir().join("containers").join(i).exists(),
            "the record of {i} is gone"
        );
        let mounts: Vec<String> = mounted_under(&lab.state_dir())
            .into_iter()
            .filter(|m| m.contains(i.as_str()))
            .collect();
        assert!(mounts.is_empty(), "rootfs of {i} still mounted: {mounts:?}");
    }
}

#[test]
fn agent_killed_during_stop_leaves_a_consistent_container() {
    let mut lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
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
    lab.wait_status("stubborn", "running", Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = lab.inspect("stubborn").unwrap()["State"]["Pid"]
        .as_i64()
        .unwrap_or(0);

    // stop waits 10 s for the SIGTERM that is ignored; the agent dies meanwhile
    let mut stop = lab.cli_command();
    stop.args(["stop", "-t", "10", "stubborn"]);
    let stopper = std::thread::spawn(move || {
        flotilla_tests::agent::output_with_timeout(stop, Duration::from_secs(30))
    });
    std::thread::sleep(Duration::from_millis(700));
    let t = Instant::now();
    lab.kill_agent();
    let o = stopper.join().unwrap().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the CLI noticed the agent's death"
    );
    assert_ne!(
        o.status.code(),
        Some(0),
        "stop cannot have succeeded: {}",
        text(&o)
    );
    lab.start_agent().unwrap();

    // still running under its shim (nothing killed it), and fully manageable
    let v = lab.inspect("stubborn").unwrap();
    assert_eq!(v["State"]["Status"], "running", "{v}");
    assert_eq!(v["State"]["Pid"].as_i64(), Some(pid), "{v}");
    let t = Instant::now();
    lab.cli_ok(&["stop", "-t", "1", "stubborn"]).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    let v = lab.inspect("stubborn").unwrap();
    assert_eq!(v["State"]["Status"], "exited", "{v}");
    assert_eq!(v["State"]["ExitCode"], 137, "{v}");
    lab.cli_ok(&["rm", "stubborn"]).unwrap();
}
