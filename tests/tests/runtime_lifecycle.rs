//! OCI lifecycle through the runc-compatible CLI: create, start, state, kill, pause, delete, list.
use std::time::{Duration, Instant};

use flotilla_tests::runtime::{cgroup_dirs, stderr, stdout, RuntimeLab};

fn wait_status(lab: &RuntimeLab, id: &str, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = lab.state(id).expect("state");
        if st["status"] == want || Instant::now() > deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn create_start_kill_delete() {
    let lab = RuntimeLab::new().expect("lab");
    let b = lab
        .bundle("life", &["sleep", "60"], |_| {})
        .expect("bundle");
    let pidfile = lab.work.path().join("life.pid");
    let (status, err) = lab
        .detached(&[
            "create".as_ref(),
            "--bundle".as_ref(),
            b.as_os_str(),
            "--pid-file".as_ref(),
            pidfile.as_os_str(),
            "life".as_ref(),
        ])
        .expect("create");
    assert!(status.success(), "create: {err}");
    let st = lab.state("life").expect("state");
    assert_eq!(st["status"], "created");
    let pid = st["pid"].as_i64().expect("pid");
    assert!(pid > 0);
    assert_eq!(
        std::fs::read_to_string(&pidfile).expect("pid file"),
        pid.to_string()
    );
    assert!(!cgroup_dirs("life").is_empty(), "cgroup created");

    let out = lab.rt().args(["start", "life"]).output().expect("start");
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(lab.state("life").expect("state")["status"], "running");
    // Starting twice is refused.
    let out = lab
        .rt()
        .args(["start", "life"])
        .output()
        .expect("start again");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("running"), "{}", stderr(&out));

    let out = lab.rt().args(["pause", "life"]).output().expect("pause");
    assert!(out.status.success(), "pause: {}", stderr(&out));
    assert_eq!(lab.state("life").expect("state")["status"], "paused");
    let out = lab.rt().args(["resume", "life"]).output().expect("resume");
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert_eq!(lab.state("life").expect("state")["status"], "running");

    let ps = lab
        .rt()
        .args(["ps", "--format", "json", "life"])
        .output()
        .expect("ps");
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).expect("ps json");
    assert!(pids.contains(&pid), "ps lists init {pid}: {pids:?}");

    // A running container is not deleted without --force.
    let out = lab.rt().args(["delete", "life"]).output().expect("delete");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));

    let out = lab
        .rt()
        .args(["kill", "life", "KILL"])
        .output()
        .expect("kill");
    assert!(out.status.success(), "kill: {}", stderr(&out));
    assert_eq!(wait_status(&lab, "life", "stopped")["status"], "stopped");
    let out = lab.rt().args(["delete", "life"]).output().expect("delete");
    assert!(out.status.success(), "delete: {}", stderr(&out));
    assert!(lab.ids().expect("ids").is_empty());
    assert!(
        cgroup_dirs("life").is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs("life")
    );
    let out = lab.rt().args(["state", "life"]).output().expect("state");
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

#[test]
fn run_returns_the_exit_code_and_output() {
    let lab = RuntimeLab::new().expect("lab");
    let b = lab
        .bundle(
            "exit7",
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            |_| {},
        )
        .expect("bundle");
    let out = lab.run("exit7", &b).expect("run");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(stdout(&out), "out");
    assert!(stderr(&out).contains("err"));
    assert!(cgroup_dirs("exit7").is_empty());
}

#[test]
fn detached_run_and_list() {
    let lab = RuntimeLab::new().expect("lab");
    let b = lab.bundle("det", &["sleep", "30"], |_| {}).expect("bundle");
    let (status, err) = lab
        .detached(&[
            "run".as_ref(),
            "-d".as_ref(),
            "--bundle".as_ref(),
            b.as_os_str(),
            "det".as_ref(),
        ])
        .expect("run -d");
    assert!(status.success(), "{err}");
    // The init is in the container's cgroup in every hierarchy (v1 controllers joined by the init
    // itself, cgroup2 through clone3), never left in the caller's.
    let pid = lab.state("det").expect("state")["pid"]
        .as_i64()
        .expect("pid");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("proc cgroup");
    for line in cgroups.lines().filter(|l| !l.contains("name=systemd")) {
        assert!(
            line.ends_with(":/flotilla/det"),
            "not in the container's cgroup: {line}\n{cgroups}"
        );
    }
    assert!(
        cgroups.lines().any(|l| l.starts_with("0::")),
        "no cgroup2 line:\n{cgroups}"
    );
    let list = lab
        .rt()
        .args(["list", "--format", "json"])
        .output()
        .expect("list");
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).expect("list json");
    assert_eq!(v[0]["id"], "det");
    assert_eq!(v[0]["status"], "running");
    lab.delete_force("det");
    assert!(lab.ids().expect("ids").is_empty());
    assert!(cgroup_dirs("det").is_empty());
}

#[test]
fn a_killed_create_leaves_nothing_delete_cannot_clean() {
    let lab = RuntimeLab::new().expect("lab");
    let b = lab.bundle("crash", &["true"], |_| {}).expect("bundle");
    // Kill the creator at different moments of its work.
    for (i, delay_us) in [0u64, 200, 500, 1000, 2000, 3000, 5000, 8000, 12000, 20000]
        .iter()
        .enumerate()
    {
        let id = format!("crash{i}");
        let mut child = lab
            .rt()
            .args(["create", "--bundle"])
            .arg(&b)
            .arg(&id)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn create");
        std::thread::sleep(Duration::from_micros(*delay_us));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        if lab.ids().expect("ids").contains(&id) {
            let out = lab
                .rt()
                .args(["delete", "--force", &id])
                .output()
                .expect("delete");
            assert!(
                out.status.success(),
                "delete after crash {i}: {}",
                stderr(&out)
            );
        }
        assert!(
            !lab.ids().expect("ids").contains(&id),
            "state left for {id}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cgroup_dirs(&id).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            cgroup_dirs(&id).is_empty(),
            "cgroup left for {id}: {:?}",
            cgroup_dirs(&id)
        );
    }
}
