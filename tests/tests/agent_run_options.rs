//! `flotilla run` options end to end, each observed from inside the container: identity
//! (`--user`, `--hostname`, `--env-file`), capabilities and security options, resource limits,
//! mounts (`--mount`), name resolution files (`--add-host`, `--dns`), a fixed `--ip`, and a
//! health check that turns a container healthy.
use std::time::Duration;

use flotilla_tests::agent::{eventually, stdout, text, AgentLab};

fn run(lab: &AgentLab, args: &[&str]) -> String {
    let mut full = vec!["run", "--rm"];
    full.extend_from_slice(args);
    let o = lab.cli(&full).expect("run");
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    stdout(&o)
}

fn status_field(out: &str, key: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(key))
        .map(|l| l[key.len()..].trim().to_string())
        .unwrap_or_default()
}

#[test]
fn identity_environment_and_name_resolution() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    let env_file = lab.scratch("env").expect("scratch").join("app.env");
    std::fs::write(&env_file, "# comment\nGREETING=hello world\nEMPTY=\n").expect("env file");
    let out = run(
        &lab,
        &[
            "--user", "1000:1001", "--hostname", "box1", "--env-file", env_file.to_str().unwrap(),
            "-e", "EXTRA=1", "--add-host", "db.internal:10.1.2.3", "--dns", "10.9.9.9",
            "busybox", "sh", "-c",
            "id -u; id -g; hostname; echo \"$GREETING/$EXTRA\"; grep db.internal /etc/hosts; grep nameserver /etc/resolv.conf",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..4],
        ["1000", "1001", "box1", "hello world/1"],
        "{out}"
    );
    assert!(
        out.contains("10.1.2.3") && out.contains("db.internal"),
        "{out}"
    );
    assert!(out.contains("nameserver 10.9.9.9"), "{out}");
}

#[test]
fn capabilities_security_options_and_privileged() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    let caps = |args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend_from_slice(&["busybox", "cat", "/proc/self/status"]);
        run(&lab, &a)
    };
    // Docker's default set, then with NET_ADMIN added and CHOWN dropped.
    let base = caps(&[]);
    assert_eq!(status_field(&base, "CapEff:"), "00000000a80425fb", "{base}");
    assert_eq!(status_field(&base, "NoNewPrivs:"), "1", "{base}");
    assert_eq!(status_field(&base, "Seccomp:"), "2", "{base}");
    let added = caps(&["--cap-add", "NET_ADMIN", "--cap-drop", "CHOWN"]);
    assert_eq!(
        status_field(&added, "CapEff:"),
        "00000000a80435fa",
        "{added}"
    );
    let out = run(
        &lab,
        &[
            "--cap-add",
            "NET_ADMIN",
            "busybox",
            "sh",
            "-c",
            "ip link add d0 type bridge && echo made",
        ],
    );
    assert!(out.contains("made"), "{out}");
    let o = lab
        .cli(&[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "ip link add d0 type bridge",
        ])
        .expect("run");
    assert_ne!(
        o.status.code(),
        Some(0),
        "NET_ADMIN is not a default capability: {}",
        text(&o)
    );
    // seccomp=unconfined and no-new-privileges=false.
    let open = caps(&[
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "no-new-privileges=false",
    ]);
    assert_eq!(status_field(&open, "Seccomp:"), "0", "{open}");
    assert_eq!(status_field(&open, "NoNewPrivs:"), "0", "{open}");
    // --privileged: every capability, no seccomp.
    let p = caps(&["--privileged"]);
    assert_eq!(status_field(&p, "Seccomp:"), "0", "{p}");
    assert!(status_field(&p, "CapEff:").starts_with("000001ff"), "{p}");
    let o = lab
        .cli(&["run", "--rm", "--cap-add", "FLY", "busybox", "true"])
        .expect("run");
    assert!(text(&o).contains("unknown capability"), "{}", text(&o));
}

#[test]
fn resource_limits_reach_the_cgroups_and_rlimits() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "limited",
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
        "--pids-limit",
        "40",
        "--memory",
        "64m",
        "--ulimit",
        "nofile=256:512",
        "--oom-score-adj",
        "300",
        "busybox",
        "sleep",
        "1000",
    ])
    .expect("run -d");
    let id = lab.inspect("limited").expect("inspect")["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let read = |h: &str, f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{h}/flotilla/{id}/{f}"))
            .unwrap_or_else(|e| panic!("read {h}/{f}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("pids", "pids.max"), "40");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    let o = lab
        .cli(&[
            "exec",
            "limited",
            "sh",
            "-c",
            "ulimit -Sn; ulimit -Hn; cat /proc/1/oom_score_adj",
        ])
        .expect("exec");
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        ["256", "512", "300"],
        "{}",
        text(&o)
    );
    let st = lab
        .cli(&["stats", "--no-stream", "--format", "json", "limited"])
        .expect("stats");
    assert_eq!(st.status.code(), Some(0), "{}", text(&st));
    let v: serde_json::Value = serde_json::from_str(stdout(&st).trim()).expect("stats json");
    let first = if v.is_array() { v[0].clone() } else { v };
    assert!(text(&st).contains("limited"), "{first}");
}

#[test]
fn mounts_fixed_ip_and_health() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    let host_dir = lab.scratch("data").expect("scratch");
    std::fs::write(host_dir.join("in.txt"), "from the host\n").expect("write");
    let mount = format!(
        "type=bind,source={},target=/data,readonly",
        host_dir.display()
    );
    let out = run(
        &lab,
        &[
            "--mount",
            &mount,
            "--mount",
            "type=tmpfs,target=/scratch,tmpfs-size=1m",
            "busybox",
            "sh",
            "-c",
            "cat /data/in.txt; touch /data/x 2>/dev/null || echo ro; df -k /scratch | tail -1",
        ],
    );
    assert!(out.contains("from the host") && out.contains("ro"), "{out}");
    assert!(out.contains(" 1024 "), "tmpfs of 1 MiB: {out}");

    lab.cli_ok(&[
        "network",
        "create",
        "--subnet",
        &format!("10.248.{}.0/24", 2 * lab.x as u16),
        "fixed",
    ])
    .expect("network create");
    let ip = format!("10.248.{}.77", 2 * lab.x as u16);
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "pinned",
        "--network",
        "fixed",
        "--ip",
        &ip,
        "--health-cmd",
        "test -f /tmp/ready",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        "busybox",
        "sh",
        "-c",
        "sleep 1; touch /tmp/ready; sleep 1000",
    ])
    .expect("run pinned");
    let v = lab.inspect("pinned").expect("inspect");
    assert!(
        v.to_string().contains(&ip),
        "the fixed address is in inspect: {v}"
    );
    eventually(Duration::from_secs(10), || {
        let h = lab.cli_ok(&["inspect", "-f", "{{.State.Health.Status}}", "pinned"])?;
        anyhow::ensure!(h.trim() == "healthy", "health {h}");
        Ok(())
    })
    .expect("healthy");
    let o = lab
        .cli(&[
            "run",
            "--rm",
            "--network",
            "fixed",
            "--ip",
            &ip,
            "busybox",
            "true",
        ])
        .expect("run");
    assert_ne!(
        o.status.code(),
        Some(0),
        "a taken --ip is refused: {}",
        text(&o)
    );
}
