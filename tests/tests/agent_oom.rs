//! Memory limits through the real CLI and agent: a `--memory 8m` container that holds 64 MB in RAM
//! is OOM-killed (exit 137, `State.OOMKilled` true, an `oom` event), while a container killed by
//! a user with SIGKILL exits 137 without being marked OOM-killed.
use std::time::Duration;

use flotilla_tests::agent::{stdout, text, AgentLab};

#[test]
fn a_container_over_its_memory_limit_is_oom_killed() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    // the shell keeps the whole 64 MB string in its own memory
    let o = lab
        .cli(&[
            "run",
            "--name",
            "hog",
            "--memory",
            "8m",
            "busybox",
            "sh",
            "-c",
            "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ])
        .unwrap();
    assert_eq!(o.status.code(), Some(137), "{}", text(&o));
    assert!(
        !stdout(&o).contains("64000000"),
        "the allocation succeeded: {}",
        text(&o)
    );
    let v = lab.inspect("hog").unwrap();
    assert_eq!(v["State"]["Status"], "exited", "{v}");
    assert_eq!(v["State"]["ExitCode"], 137, "{v}");
    assert_eq!(v["State"]["OOMKilled"], true, "{v}");
    assert_eq!(v["HostConfig"]["Memory"], 8 * 1024 * 1024, "{v}");
    let o = lab
        .cli_for(
            &[
                "events",
                "--since",
                "5m",
                "-f",
                "container=hog",
                "--format",
                "{{.Action}}",
            ],
            Duration::from_secs(2),
        )
        .unwrap();
    assert!(
        stdout(&o).lines().any(|l| l.trim() == "oom"),
        "an oom event: {}",
        text(&o)
    );

    // SIGKILL by the user: 137 as well, but not an OOM kill
    lab.cli_ok(&[
        "run", "-d", "--name", "victim", "--memory", "8m", "busybox", "sleep", "1000",
    ])
    .unwrap();
    lab.wait_status("victim", "running", Duration::from_secs(10))
        .unwrap();
    lab.cli_ok(&["kill", "victim"]).unwrap();
    lab.wait_status("victim", "exited", Duration::from_secs(10))
        .unwrap();
    let v = lab.inspect("victim").unwrap();
    assert_eq!(v["State"]["ExitCode"], 137, "{v}");
    assert_eq!(v["State"]["OOMKilled"], false, "{v}");
}
