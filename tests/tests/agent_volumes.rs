//! Storage through the real CLI and agent: named volumes outlive their containers and cannot be
//! removed while in use; binding a host system path (/etc) is refused with the policy message
//! while a temp dir binds (and `:ro` is read-only); `--tmpfs`; `--read-only` rootfs.
use std::time::Duration;

use flotilla_tests::agent::{stderr, stdout, text, AgentLab};

fn lab() -> AgentLab {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    lab
}

#[test]
fn named_volume_outlives_its_container_and_is_kept_while_in_use() {
    let lab = lab();
    lab.cli_ok(&["volume", "create", "data"]).unwrap();
    lab.cli_ok(&[
        "run",
        "--name",
        "writer",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo persisted > /data/f",
    ])
    .unwrap();
    lab.cli_ok(&["rm", "writer"]).unwrap();
    let out = lab
        .cli_ok(&[
            "run",
            "--rm",
            "-v",
            "data:/data",
            "busybox",
            "cat",
            "/data/f",
        ])
        .unwrap();
    assert_eq!(out, "persisted\n");

    // a volume named in -v that does not exist yet is created
    lab.cli_ok(&["run", "--rm", "-v", "fresh:/x", "busybox", "true"])
        .unwrap();
    let ls = lab.cli_ok(&["volume", "ls", "-q"]).unwrap();
    assert!(ls.lines().any(|l| l.trim() == "fresh"), "{ls}");

    // in use: refused, naming the container
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "user",
        "-v",
        "data:/data",
        "busybox",
        "sleep",
        "1000",
    ])
    .unwrap();
    let o = lab.cli(&["volume", "rm", "data"]).unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains("in use") && stderr(&o).contains("user"),
        "volume rm says who uses it: {}",
        text(&o)
    );
    // a stopped container still holds it (docker refuses too)
    lab.cli_ok(&["stop", "-t", "0", "user"]).unwrap();
    let o = lab.cli(&["volume", "rm", "data"]).unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    lab.cli_ok(&["rm", "user"]).unwrap();
    lab.cli_ok(&["volume", "rm", "data"]).unwrap();
    let ls = lab.cli_ok(&["volume", "ls", "-q"]).unwrap();
    assert!(!ls.lines().any(|l| l.trim() == "data"), "{ls}");
}

#[test]
fn bind_mounts_follow_the_host_path_policy() {
    let lab = lab();
    let o = lab
        .cli(&["run", "--rm", "-v", "/etc:/host-etc", "busybox", "true"])
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let msg = stderr(&o);
    assert!(
        msg.contains("/etc") && msg.contains("refused") && msg.contains("--allow-host-path"),
        "binding /etc is refused with the policy and how to allow it: {msg}"
    );
    // nothing is left behind by the refused create
    let all = lab.cli_ok(&["ps", "-a", "-q"]).unwrap();
    assert_eq!(all.trim(), "", "a refused create leaves no container");

    let dir = lab.scratch("shared").unwrap();
    std::fs::write(dir.join("from-host"), "host data\n").unwrap();
    let bind = format!("{}:/shared", dir.display());
    let out = lab
        .cli_ok(&[
            "run",
            "--rm",
            "-v",
            &bind,
            "busybox",
            "sh",
            "-c",
            "cat /shared/from-host && echo back > /shared/from-container",
        ])
        .unwrap();
    assert_eq!(out, "host data\n");
    assert_eq!(
        std::fs::read_to_string(dir.join("from-container")).unwrap(),
        "back\n"
    );

    let ro = format!("{}:/shared:ro", dir.display());
    let o = lab
        .cli(&[
            "run",
            "--rm",
            "-v",
            &ro,
            "busybox",
            "sh",
            "-c",
            "cat /shared/from-host; echo nope > /shared/x",
        ])
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stdout(&o), "host data\n", "{}", text(&o));
    assert!(stderr(&o).contains("Read-only file system"), "{}", text(&o));
    assert!(!dir.join("x").exists(), ":ro bind was written to");
}

#[test]
fn tmpfs_and_read_only_rootfs() {
    let lab = lab();
    let o = lab
        .cli(&[
            "run",
            "--rm",
            "--read-only",
            "--tmpfs",
            "/scratch",
            "busybox",
            "sh",
            "-c",
            "if echo a > /a; then echo root-writable; fi; echo b > /scratch/b && cat /scratch/b; \
             grep ' /scratch ' /proc/mounts",
        ])
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        !out.contains("root-writable"),
        "--read-only rootfs was writable: {}",
        text(&o)
    );
    assert!(stderr(&o).contains("Read-only file system"), "{}", text(&o));
    assert!(
        out.starts_with("b\n"),
        "the tmpfs is writable: {}",
        text(&o)
    );
    assert!(out.contains("tmpfs /scratch tmpfs"), "{}", text(&o));

    // a tmpfs does not keep data across restarts of the container
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "tm",
        "--tmpfs",
        "/scratch",
        "busybox",
        "sh",
        "-c",
        "ls /scratch; touch /scratch/mark; sleep 1000",
    ])
    .unwrap();
    lab.wait_status("tm", "running", Duration::from_secs(10))
        .unwrap();
    lab.cli_ok(&["exec", "tm", "test", "-e", "/scratch/mark"])
        .unwrap();
    lab.cli_ok(&["restart", "-t", "0", "tm"]).unwrap();
    lab.wait_status("tm", "running", Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let logs = lab.cli_ok(&["logs", "tm"]).unwrap();
    assert!(
        !logs.contains("mark"),
        "the tmpfs was empty at each start: {logs}"
    );
}
