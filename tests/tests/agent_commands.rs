//! The remaining verbs end to end: `top`, `pause`/`unpause`, `system info`, `events`,
//! `network connect`/`disconnect`, and images through the agent (`push` to and `pull` from a real
//! registry, `tag`, `save`/`load`, `image inspect`, `rmi` refused while a container uses it).
use std::time::Duration;

use flotilla_tests::agent::{stdout, text, AgentLab};

#[test]
fn top_pause_info_events_and_network_connect() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    lab.cli_ok(&["run", "-d", "--name", "worker", "busybox", "sleep", "1000"])
        .expect("run -d");
    let top = lab.cli_ok(&["top", "worker"]).expect("top");
    assert!(top.contains("PID") && top.contains("sleep 1000"), "{top}");

    lab.cli_ok(&["pause", "worker"]).expect("pause");
    assert_eq!(lab.status("worker").expect("status"), "paused");
    // Frozen by the v1 freezer or by cgroup2 (`frozen 1`), whichever the runtime used here.
    let id = lab.inspect("worker").expect("inspect")["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let v1 = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/freezer/flotilla/{id}/freezer.state"
    ))
    .unwrap_or_default();
    let v2 = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/unified/flotilla/{id}/cgroup.events"
    ))
    .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/flotilla/{id}/cgroup.events")))
    .unwrap_or_default();
    assert!(
        v1.trim() == "FROZEN" || v2.lines().any(|l| l == "frozen 1"),
        "freezer v1 {v1:?}, v2 {v2:?}"
    );
    let o = lab.cli(&["exec", "worker", "true"]).expect("exec");
    assert!(
        text(&o).contains("paused"),
        "exec into a paused container: {}",
        text(&o)
    );
    lab.cli_ok(&["unpause", "worker"]).expect("unpause");
    assert_eq!(lab.status("worker").expect("status"), "running");

    let info = lab
        .cli_ok(&["system", "info", "--format", "json"])
        .expect("info");
    let v: serde_json::Value = serde_json::from_str(&info).expect("info json");
    assert!(
        v.to_string().contains("hybrid")
            || v.to_string().contains("v2")
            || v.to_string().contains("v1"),
        "{v}"
    );
    let ev = lab
        .cli_for(
            &[
                "events",
                "--since",
                "5m",
                "-f",
                "container=worker",
                "--format",
                "{{.Action}}",
            ],
            Duration::from_secs(2),
        )
        .expect("events");
    let ev_out = stdout(&ev);
    let actions: Vec<&str> = ev_out.lines().map(str::trim).collect();
    for want in ["create", "start", "pause", "unpause"] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }

    // A second network joined while running, left again.
    lab.cli_ok(&["network", "create", "side"])
        .expect("network create");
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "peer",
        "--network",
        "side",
        "busybox",
        "sleep",
        "1000",
    ])
    .expect("peer");
    lab.cli_ok(&["network", "connect", "side", "worker"])
        .expect("connect");
    let o = lab
        .cli(&[
            "exec",
            "worker",
            "sh",
            "-c",
            "ls /sys/class/net; grep nameserver /etc/resolv.conf",
        ])
        .expect("exec");
    let out = stdout(&o);
    assert!(out.contains("eth1"), "a second interface: {out}");
    // resolv.conf must point at the embedded resolver of `side` (its gateway) before anything is
    // looked up: queries never go to the host's resolvers.
    let side = lab
        .cli_ok(&["network", "inspect", "side", "--format", "json"])
        .expect("inspect side");
    let gw = serde_json::from_str::<serde_json::Value>(&side)
        .expect("json")
        .to_string();
    let ns_line = out
        .lines()
        .find(|l| l.starts_with("nameserver"))
        .unwrap_or("")
        .to_string();
    let ns = ns_line.trim_start_matches("nameserver").trim().to_string();
    assert!(
        ns.parse::<std::net::Ipv4Addr>().is_ok() && gw.contains(&format!("\"{ns}\"")),
        "resolv.conf points at the side network's gateway: {ns_line} / {gw}"
    );
    let o = lab
        .cli(&["exec", "worker", "nslookup", "peer", &ns])
        .expect("nslookup");
    assert!(
        stdout(&o).contains("Address") && !stdout(&o).contains("NXDOMAIN"),
        "peer resolves on the new network: {}",
        text(&o)
    );
    lab.cli_ok(&["network", "disconnect", "side", "worker"])
        .expect("disconnect");
    let o = lab
        .cli(&["exec", "worker", "ls", "/sys/class/net"])
        .expect("exec");
    assert!(!stdout(&o).contains("eth1"), "{}", text(&o));
}

#[test]
fn images_through_the_agent() {
    let mut lab = AgentLab::new().expect("agent lab");
    let reference = lab
        .pull_busybox()
        .expect("pull busybox from the lab registry");
    let inspect = lab
        .cli_ok(&["image", "inspect", &reference])
        .expect("image inspect");
    assert!(inspect.contains("sha256:"), "{inspect}");

    // tag + push to the registry under a new name, remove locally, pull it back.
    let reg = lab.registry().expect("registry").addr();
    let target = format!("{reg}/copies/bb:v2");
    lab.cli_ok(&["tag", "busybox:latest", &target])
        .expect("tag");
    let o = lab.cli(&["push", &target]).expect("push");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    lab.cli_ok(&["rmi", &target]).expect("rmi");
    lab.cli_ok(&["pull", "-q", &target]).expect("pull back");
    let images = lab.cli_ok(&["images"]).expect("images");
    assert!(
        images.contains("copies/bb") && images.contains("v2"),
        "{images}"
    );

    // save / load round trip.
    let archive = lab.scratch("archive").expect("scratch").join("bb.tar");
    lab.cli_ok(&["save", "-o", archive.to_str().unwrap(), &target])
        .expect("save");
    assert!(std::fs::metadata(&archive).expect("archive").len() > 100_000);
    lab.cli_ok(&["rmi", &target]).expect("rmi");
    let loaded = lab
        .cli_ok(&["load", "-i", archive.to_str().unwrap()])
        .expect("load");
    assert!(loaded.contains("bb"), "{loaded}");
    let o = lab
        .cli(&["run", "--rm", &target, "echo", "from-the-loaded-image"])
        .expect("run");
    assert!(stdout(&o).contains("from-the-loaded-image"), "{}", text(&o));

    // An image used by a container is not removed without -f.
    lab.cli_ok(&["create", "--name", "user", &target, "true"])
        .expect("create");
    let o = lab.cli(&["rmi", &target]).expect("rmi");
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("used by container"), "{}", text(&o));
}
