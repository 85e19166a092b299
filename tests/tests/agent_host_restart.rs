//! A host restart (simulated: every process killed, mounts, cgroups, bridges and /run gone, the
//! state dir kept): on the agent's next start, `--restart always` containers run again on their
//! old root filesystem (their changes kept), others are reported exited.
use std::time::Duration;

use flotilla_tests::agent::{stdout, text, AgentLab};

#[test]
fn restart_policies_are_honoured_across_a_host_restart() {
    let mut lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "keeper",
        "--restart",
        "always",
        "-p",
        "80",
        "busybox",
        "sh",
        "-c",
        "echo boot >> /boots; httpd -f -p 80",
    ])
    .expect("run keeper");
    lab.cli_ok(&["run", "-d", "--name", "plain", "busybox", "sleep", "1000"])
        .expect("run plain");
    lab.wait_status("keeper", "running", Duration::from_secs(5))
        .expect("keeper runs");

    lab.simulate_host_restart().expect("host restart");
    lab.start_agent().expect("agent starts again");

    lab.wait_status("keeper", "running", Duration::from_secs(10))
        .expect("keeper runs again");
    let boots = lab.cli(&["exec", "keeper", "cat", "/boots"]).expect("exec");
    assert_eq!(
        stdout(&boots).lines().count(),
        2,
        "the rootfs kept the first boot's line: {}",
        text(&boots)
    );
    let v = lab.inspect("keeper").expect("inspect");
    assert!(v["State"]["Pid"].as_i64().unwrap_or(0) > 0, "{v}");
    assert_eq!(v["RestartCount"], 1, "{v}");
    // Its published port is reachable again.
    let ports = lab
        .cli_ok(&["port", "keeper"])
        .or_else(|_| lab.cli_ok(&["ps", "--filter", "name=keeper", "--format", "{{.Ports}}"]))
        .expect("ports");
    assert!(ports.contains("->80/tcp"), "{ports}");

    lab.wait_status("plain", "exited", Duration::from_secs(5))
        .expect("plain is exited");
    let v = lab.inspect("plain").expect("inspect");
    assert_ne!(v["State"]["ExitCode"], 0, "{v}");
    assert!(
        v["State"]["Error"].as_str().unwrap_or("").contains("shim"),
        "the error says the supervisor vanished: {v}"
    );
    // And it can be started again by hand.
    lab.cli_ok(&["start", "plain"]).expect("start plain");
    lab.wait_status("plain", "running", Duration::from_secs(5))
        .expect("plain runs");
}
