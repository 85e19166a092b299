//! `linux.resources` limits enforced by the real kernel on containers run by `flotilla-runtime`:
//! memory (OOM kill), pids, CPU quota, and impossible values refused before anything is created.
//!
//! Container ids carry the test process id: the cgroup path `flotilla/<id>` is shared by every
//! runtime root on the host, so fixed ids would collide with other test runs.
use std::process::Stdio;
use std::time::Duration;

use flotilla_tests::runtime::{stderr, stdout, unique_id, RuntimeLab};
use serde_json::json;

#[test]
fn memory_limit_oom_kills_a_process_that_allocates_past_it() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("oom");
    // The shell keeps the 64 MiB command substitution in its own heap.
    let script = "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo done ${#x}";
    let b = lab
        .bundle("oom", &["sh", "-c", script], |v| {
            v["linux"]["resources"]["memory"] = json!({"limit": 16 * 1024 * 1024});
        })
        .expect("bundle");
    let out = lab.run(&id, &b).expect("run");
    assert_eq!(
        out.status.code(),
        Some(137),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("out of memory"),
        "run does not say why: {}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("done"), "{}", stdout(&out));
    lab.assert_nothing_left(&id);
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("pids");
    // Start 40 sleepers from a subshell (whose fork failure ends only the subshell), then count
    // the processes with shell builtins only: no fork is left for a command substitution.
    let script = "( for i in $(seq 40); do sleep 5 & done ) 2>/dev/null; \
                  set -- /proc/[0-9]*; echo procs=$#";
    let b = lab
        .bundle("pids", &["sh", "-c", script], |v| {
            v["linux"]["resources"]["pids"] = json!({"limit": 20});
        })
        .expect("bundle");
    let out = lab.run(&id, &b).expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let procs: u32 = stdout(&out)
        .strip_prefix("procs=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {}", stdout(&out)));
    assert!(
        (2..=20).contains(&procs),
        "{procs} processes in a container limited to 20"
    );
    lab.assert_nothing_left(&id);
}

#[test]
fn cpu_quota_throttles_a_busy_loop() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("cpu");
    let b = lab
        .bundle("cpu", &["sh", "-c", "while :; do :; done"], |v| {
            v["linux"]["resources"]["cpu"] = json!({"quota": 10000, "period": 100000});
        })
        .expect("bundle");
    // A detached container keeps the caller's stdio: no pipes, or the caller never sees EOF.
    let status = lab
        .rt()
        .args(["run", "-d", "--bundle"])
        .arg(&b)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run -d");
    assert!(status.success(), "run -d failed");
    std::thread::sleep(Duration::from_millis(1000));
    let out = lab
        .rt()
        .args(["events", "--stats", &id])
        .output()
        .expect("events");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    let cpu = &v["data"]["cpu"];
    let throttled = cpu["nr_throttled"].as_u64().expect("nr_throttled");
    let usage = cpu["usage_ns"].as_u64().expect("usage_ns");
    assert!(throttled > 0, "never throttled: {cpu}");
    // 10% of one CPU for about a second is ~100 ms; unthrottled it would be ~1 s.
    assert!(usage < 500_000_000, "used {usage} ns in ~1 s: {cpu}");
    lab.delete_force(&id);
    lab.assert_nothing_left(&id);
}

/// `run` with `resources` edited by `edit` must fail, name `field` and leave nothing behind.
fn assert_refused(name: &str, field: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id(name);
    let b = lab
        .bundle(name, &["true"], |v| edit(&mut v["linux"]["resources"]))
        .expect("bundle");
    let out = lab.run(&id, &b).expect("run");
    assert!(!out.status.success(), "accepted: {}", stdout(&out));
    assert!(
        stderr(&out).contains(field),
        "error does not name {field}: {}",
        stderr(&out)
    );
    lab.assert_nothing_left(&id);
}

#[test]
fn negative_memory_limit_is_refused() {
    assert_refused("memneg", "linux.resources.memory.limit", |r| {
        r["memory"] = json!({"limit": -5});
    });
}

#[test]
fn zero_cpu_shares_are_refused() {
    assert_refused("shares0", "linux.resources.cpu.shares", |r| {
        r["cpu"] = json!({"shares": 0});
    });
}

#[test]
fn swap_lower_than_memory_is_refused() {
    assert_refused("swaplow", "linux.resources.memory.swap", |r| {
        r["memory"] = json!({"limit": 32 * 1024 * 1024, "swap": 16 * 1024 * 1024});
    });
}
