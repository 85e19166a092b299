//! `flotilla-runtime exec`: a new process in a running container is as confined as its init
//! (namespaces, cgroups, capabilities, seccomp, no_new_privs), gets the flags it is given, reports
//! its exit status, and bad requests fail clearly without leaving anything behind.
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_tests::runtime::{stderr, stdout, unique_id, RuntimeLab};
use serde_json::json;

/// An init that leaves a marker in /tmp and then sleeps.
const INIT: &[&str] = &["sh", "-c", "echo from-init > /tmp/marker; exec sleep 600"];

/// A running container `name` (unique id returned) whose config.json `edit` adjusts.
fn running(lab: &RuntimeLab, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let id = unique_id(name);
    let b = lab.bundle(name, INIT, edit).expect("bundle");
    lab.run_detached(&id, &b).expect("run -d");
    id
}

/// Output of an exec that must succeed.
fn exec_ok(lab: &RuntimeLab, args: &[&str]) -> String {
    let out = lab.exec(args).expect("exec");
    assert!(
        out.status.success(),
        "exec {args:?}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{text}"))
}

fn ns_link(pid: i32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .expect("ns link")
        .display()
        .to_string()
}

/// Pids of the container's processes (`ps --format json`).
fn pids(lab: &RuntimeLab, id: &str) -> Vec<i64> {
    let out = lab
        .rt()
        .args(["ps", "--format", "json", id])
        .output()
        .expect("ps");
    serde_json::from_slice(&out.stdout).expect("ps json")
}

/// Waits until the container holds only its init (exec'd processes are gone).
fn assert_only_init(lab: &RuntimeLab, id: &str) {
    let init = i64::from(lab.init_pid(id).expect("init pid"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut now = pids(lab, id);
    while now != [init] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        now = pids(lab, id);
    }
    assert_eq!(now, [init], "processes left in the container");
}

const PROBE: &str = r#"
i=0; while [ ! -f /tmp/marker ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
echo pid=$$
echo init=$(tr '\0' ' ' < /proc/1/cmdline)
echo host=$(hostname)
echo marker=$(cat /tmp/marker)
echo links=$(ls /sys/class/net)
for n in pid uts ipc net mnt cgroup user; do echo ns-$n=$(readlink /proc/self/ns/$n); done
if [ "$(cat /proc/self/cgroup)" = "$(cat /proc/1/cgroup)" ]; then echo cgroup=same; else echo cgroup=differs; cat /proc/self/cgroup /proc/1/cgroup; fi
for f in CapEff CapPrm CapBnd Seccomp NoNewPrivs; do
  echo self-$f=$(grep "^$f:" /proc/self/status | cut -f2)
  echo init-$f=$(grep "^$f:" /proc/1/status | cut -f2)
done
chmod 600 /tmp/marker 2>/dev/null && echo chmod=allowed || echo chmod=denied
"#;

#[test]
fn exec_joins_the_inits_namespaces_cgroups_and_security() {
    let lab = RuntimeLab::new().expect("lab");
    let id = running(&lab, "probe", |v| {
        // A filter that denies chmod: observable, and Seccomp: 2 in /proc/PID/status.
        v["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["chmod", "fchmod", "fchmodat", "fchmodat2"],
                          "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let init = lab.init_pid(&id).expect("init pid");
    let text = exec_ok(&lab, &[id.as_str(), "--", "sh", "-c", PROBE]);
    assert_ne!(value(&text, "pid"), "1", "the init is pid 1, not us");
    assert_eq!(value(&text, "init"), "sleep 600", "pid 1 is the init");
    assert_eq!(value(&text, "host"), "flotilla");
    assert_eq!(value(&text, "marker"), "from-init", "the init's /tmp");
    assert_eq!(value(&text, "links"), "lo", "the container's network");
    for n in ["pid", "uts", "ipc", "net", "mnt", "cgroup", "user"] {
        assert_eq!(
            value(&text, &format!("ns-{n}")),
            ns_link(init, n),
            "{n} namespace is not the init's"
        );
    }
    assert_eq!(value(&text, "cgroup"), "same", "{text}");
    for f in ["CapEff", "CapPrm", "CapBnd", "Seccomp", "NoNewPrivs"] {
        assert_eq!(
            value(&text, &format!("self-{f}")),
            value(&text, &format!("init-{f}")),
            "{f} differs from the init's"
        );
    }
    assert_eq!(value(&text, "self-Seccomp"), "2", "filtered");
    assert_eq!(value(&text, "self-NoNewPrivs"), "1");
    assert_eq!(value(&text, "chmod"), "denied", "the container's filter");
    assert_only_init(&lab, &id);
    lab.delete_force(&id);
    lab.assert_nothing_left(&id);
}

#[test]
fn exit_status_and_signals_propagate() {
    let lab = RuntimeLab::new().expect("lab");
    let id = running(&lab, "codes", |_| {});
    let out = lab.exec(&[&id, "sh", "-c", "exit 7"]).expect("exec");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let out = lab
        .exec(&[&id, "sh", "-c", "echo out; echo err >&2; kill -KILL $$"])
        .expect("exec");
    assert_eq!(out.status.code(), Some(137), "128 + SIGKILL");
    assert_eq!(stdout(&out), "out");
    assert!(stderr(&out).contains("err"), "{}", stderr(&out));

    // TERM sent to a foreground exec reaches the process.
    let mut child = lab
        .rt()
        .args(["exec", &id, "sleep", "30"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn exec");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids(&lab, &id).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal exec");
    let status = child.wait().expect("wait exec");
    assert_eq!(status.code(), Some(128 + 15), "forwarded TERM");
    assert_only_init(&lab, &id);
}

#[test]
fn flags_set_env_cwd_user_groups_caps_and_no_new_privs() {
    let lab = RuntimeLab::new().expect("lab");
    let id = running(&lab, "flags", |v| {
        v["process"]["noNewPrivileges"] = json!(false);
        v["process"]["env"] = json!(["PATH=/bin:/usr/bin", "TERM=xterm", "FROM_CONFIG=yes"]);
    });
    let text = exec_ok(
        &lab,
        &[
            "-e",
            "FOO=bar",
            "--env",
            "TERM=dumb",
            "--cwd",
            "/tmp",
            "-u",
            "1000:1000",
            "--additional-gids",
            "5",
            &id,
            "--",
            "sh",
            "-c",
            "echo foo=$FOO; echo term=$TERM; echo config=$FROM_CONFIG; echo cwd=$(pwd); \
             echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G); \
             echo nnp=$(grep ^NoNewPrivs: /proc/self/status | cut -f2)",
        ],
    );
    assert_eq!(value(&text, "foo"), "bar");
    assert_eq!(
        value(&text, "term"),
        "dumb",
        "a flag replaces the config's value"
    );
    assert_eq!(value(&text, "config"), "yes", "the config's env is kept");
    assert_eq!(value(&text, "cwd"), "/tmp");
    assert_eq!(value(&text, "uid"), "1000");
    assert_eq!(value(&text, "gid"), "1000");
    assert!(
        value(&text, "groups").split(' ').any(|g| g == "5"),
        "{text}"
    );
    assert_eq!(value(&text, "nnp"), "0", "the config's no_new_privs");
    let nnp = exec_ok(
        &lab,
        &[
            "--no-new-privs",
            &id,
            "sh",
            "-c",
            "grep ^NoNewPrivs: /proc/self/status | cut -f2",
        ],
    );
    assert_eq!(nnp, "1");

    const VETH: &str = "ip link add v0 type veth peer name v1 && echo added";
    let out = lab.exec(&[&id, "sh", "-c", VETH]).expect("exec");
    assert!(!out.status.success(), "no CAP_NET_ADMIN: {}", stdout(&out));
    assert_eq!(
        exec_ok(&lab, &["--cap", "NET_ADMIN", &id, "sh", "-c", VETH]),
        "added"
    );
    assert_only_init(&lab, &id);
}

#[test]
fn a_process_file_is_used_whole() {
    let lab = RuntimeLab::new().expect("lab");
    let id = running(&lab, "pfile", |_| {});
    let file = lab.work.path().join("process.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&json!({
            "args": ["sh", "-c", "echo a=$A; echo cwd=$(pwd); echo uid=$(id -u)"],
            "env": ["A=from-file", "PATH=/bin"],
            "cwd": "/root",
            "user": {"uid": 2, "gid": 2}
        }))
        .expect("json"),
    )
    .expect("write process.json");
    let p = file.to_str().expect("utf8");
    let text = exec_ok(&lab, &["--process", p, &id]);
    assert_eq!(value(&text, "a"), "from-file");
    assert_eq!(value(&text, "cwd"), "/root");
    assert_eq!(value(&text, "uid"), "2");
    // The file is the whole process: extra flags are refused rather than ignored.
    let out = lab.exec(&["--process", p, "-e", "X=1", &id]).expect("exec");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--process"), "{}", stderr(&out));
    assert_only_init(&lab, &id);
}

#[test]
fn bad_requests_fail_clearly_and_leave_nothing() {
    let lab = RuntimeLab::new().expect("lab");
    let nope = unique_id("nope");
    let out = lab.exec(&[&nope, "true"]).expect("exec");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("container {nope} does not exist")),
        "{}",
        stderr(&out)
    );

    let id = running(&lab, "bad", |_| {});
    let out = lab.exec(&[&id, "no-such-tool"]).expect("exec");
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("\"no-such-tool\" not found"),
        "{}",
        stderr(&out)
    );
    for (args, want) in [
        (vec!["-u", "bob"], "--user \"bob\""),
        (vec!["-e", "NOVALUE"], "environment variable \"NOVALUE\""),
        (vec!["--cwd", "/no/such/dir"], "chdir /no/such/dir"),
        (vec!["--cap", "CAP_NOPE"], "--cap \"CAP_NOPE\""),
        (vec![], "command"),
    ] {
        let mut all = args.clone();
        all.push(&id);
        if !args.is_empty() {
            all.push("true");
        }
        let out = lab.exec(&all).expect("exec");
        assert_eq!(out.status.code(), Some(1), "{all:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{all:?}: {}", stderr(&out));
    }
    assert_only_init(&lab, &id);

    let out = lab.rt().args(["pause", &id]).output().expect("pause");
    assert!(out.status.success(), "pause: {}", stderr(&out));
    let out = lab.exec(&[&id, "true"]).expect("exec");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("container {id} is paused")),
        "{}",
        stderr(&out)
    );
    let out = lab.rt().args(["resume", &id]).output().expect("resume");
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert_only_init(&lab, &id);
    lab.delete_force(&id);

    // A container whose init has exited.
    let id = unique_id("stopped");
    let b = lab.bundle("stopped", &["true"], |_| {}).expect("bundle");
    lab.run_detached(&id, &b).expect("run -d");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.state(&id).expect("state")["status"] != "stopped" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = lab.exec(&[&id, "true"]).expect("exec");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("container {id} is stopped")),
        "{}",
        stderr(&out)
    );
    let out = lab.rt().args(["delete", &id]).output().expect("delete");
    assert!(out.status.success(), "delete: {}", stderr(&out));
    lab.assert_nothing_left(&id);
}

#[test]
fn a_container_at_its_pids_limit_refuses_an_exec_clearly() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("pidsmax");
    let b = lab
        .bundle("pidsmax", &["sleep", "600"], |v| {
            v["linux"]["resources"]["pids"] = json!({"limit": 1});
        })
        .expect("bundle");
    lab.run_detached(&id, &b).expect("run -d");
    let out = lab.exec(&[&id, "true"]).expect("exec");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot exec in container {id}: clone the process"))
            && stderr(&out).contains("pids limit"),
        "{}",
        stderr(&out)
    );
    assert_only_init(&lab, &id);
    lab.delete_force(&id);
    lab.assert_nothing_left(&id);
}

#[test]
fn exec_in_a_user_namespace_runs_as_mapped_root() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("userns");
    let b = lab
        .bundle("userns", INIT, |v| {
            v["linux"]["namespaces"]
                .as_array_mut()
                .expect("ns")
                .push(json!({"type": "user"}));
            v["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            v["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        })
        .expect("bundle");
    // The rootfs must be readable by the mapped root.
    let chown = std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(b.join("rootfs"))
        .status()
        .expect("chown");
    assert!(chown.success());
    lab.run_detached(&id, &b).expect("run -d");
    let init = lab.init_pid(&id).expect("init pid");
    let text = exec_ok(
        &lab,
        &[
            &id,
            "sh",
            "-c",
            "echo uid=$(id -u); echo map=$(cat /proc/self/uid_map); \
             echo ns=$(readlink /proc/self/ns/user); echo caps=$(grep ^CapEff: /proc/self/status | cut -f2); \
             echo initcaps=$(grep ^CapEff: /proc/1/status | cut -f2)",
        ],
    );
    assert_eq!(value(&text, "uid"), "0", "root inside");
    assert!(value(&text, "map").contains("100000"), "{text}");
    assert_eq!(value(&text, "ns"), ns_link(init, "user"));
    assert_eq!(value(&text, "caps"), value(&text, "initcaps"));

    // Seen from the host, it is the unprivileged mapped user, in the container's cgroup.
    let pid_file = lab.work.path().join("userns-exec.pid");
    let (status, err) = lab
        .detached(&[
            "exec".as_ref(),
            "-d".as_ref(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            id.as_ref(),
            "sleep".as_ref(),
            "60".as_ref(),
        ])
        .expect("exec -d");
    assert!(status.success(), "{err}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .parse()
        .expect("pid");
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = st.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "100000"),
        "{uid_line}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup"),
        std::fs::read_to_string(format!("/proc/{init}/cgroup")).expect("init cgroup")
    );
    lab.delete_force(&id);
    lab.assert_nothing_left(&id);
}

#[test]
fn detached_exec_returns_at_once_with_the_pid_in_the_containers_cgroup() {
    let lab = RuntimeLab::new().expect("lab");
    let id = running(&lab, "detach", |_| {});
    let init = lab.init_pid(&id).expect("init pid");
    let pid_file = lab.work.path().join("exec.pid");
    let started = Instant::now();
    let (status, err) = lab
        .detached(&[
            "exec".as_ref(),
            "-d".as_ref(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            id.as_ref(),
            "sleep".as_ref(),
            "300".as_ref(),
        ])
        .expect("exec -d");
    assert!(status.success(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exec -d waited for the process"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .parse()
        .expect("pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "still running");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert_eq!(
        cgroups,
        std::fs::read_to_string(format!("/proc/{init}/cgroup")).expect("init cgroup"),
        "same cgroups as the init"
    );
    for line in cgroups.lines().filter(|l| !l.contains("name=systemd")) {
        assert!(
            line.ends_with(&format!(":/flotilla/{id}")),
            "not in the container's cgroup: {line}\n{cgroups}"
        );
    }
    assert!(pids(&lab, &id).contains(&i64::from(pid)), "ps lists it");
    assert_eq!(ns_link(pid, "pid"), ns_link(init, "pid"));
    assert_eq!(ns_link(pid, "mnt"), ns_link(init, "mnt"));
    // delete --force takes the exec'd process with the container.
    lab.delete_force(&id);
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        state_of(pid).is_none_or(|s| s == 'Z'),
        "exec'd process outlived the container"
    );
    lab.assert_nothing_left(&id);
}

/// The state letter of a process in /proc/PID/stat, if it exists.
fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[test]
fn tty_in_the_foreground_is_proxied() {
    let lab = RuntimeLab::new().expect("lab");
    let id = running(&lab, "ttyfg", |_| {});
    let out = lab
        .exec(&[
            "-t",
            &id,
            "sh",
            "-c",
            "tty; [ -t 0 ] && echo stdin-tty; exit 3",
        ])
        .expect("exec");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        text.contains("/dev/pts/"),
        "a pty of the container:\n{text}"
    );
    assert!(text.contains("stdin-tty"), "{text}");
    // Without a console socket there is nobody to hand the terminal of a detached exec to.
    let out = lab.exec(&["-t", "-d", &id, "true"]).expect("exec");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--console-socket"),
        "{}",
        stderr(&out)
    );
    assert_only_init(&lab, &id);
}

/// Reads a pty master until every slave is closed (EIO).
fn read_all(master: std::os::fd::OwnedFd) -> String {
    let mut f = std::fs::File::from(master);
    let mut text = String::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text.replace('\r', "")
}

#[test]
fn tty_through_a_console_socket() {
    let lab = RuntimeLab::new().expect("lab");
    let id = running(&lab, "ttycs", |_| {});
    let sock = lab.work.path().join("exec-console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let mut cmd = lab.rt();
    cmd.args(["exec", "-t", "--console-socket"])
        .arg(&sock)
        .args([&id, "sh", "-c", "echo hello-from-$(tty); exit 4"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let execer = std::thread::spawn(move || cmd.output().expect("exec"));
    let (conn, _) = listener.accept().expect("accept");
    let master = flotilla_agent::runtime::console::recv_fd(conn.as_raw_fd()).expect("pty master");
    let text = read_all(master);
    let out = execer.join().expect("exec thread");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(text.contains("hello-from-/dev/pts/"), "{text:?}");
    assert_only_init(&lab, &id);
}

#[test]
fn tty_from_stdin_becomes_the_controlling_terminal() {
    let lab = RuntimeLab::new().expect("lab");
    let id = running(&lab, "ttystdin", |_| {});
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = || std::process::Stdio::from(pty.slave.try_clone().expect("dup slave"));
    let mut cmd = lab.rt();
    cmd.args([
        "exec",
        "--tty-stdin",
        &id,
        "sh",
        "-c",
        // Fields 1, 6 and 7 of /proc/PID/stat: pid, session, controlling terminal.
        "read -r pid comm state ppid pgrp sid tty rest < /proc/self/stat; \
         echo tty_nr=$tty; [ $sid = $pid ] && echo leader; [ -t 0 ] && echo stdin-tty",
    ])
    .stdin(slave())
    .stdout(slave())
    .stderr(slave());
    let mut child = cmd.spawn().expect("spawn exec");
    drop(cmd);
    drop(pty.slave);
    let text = read_all(pty.master);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{text}");
    assert_ne!(
        value(&text, "tty_nr"),
        "0",
        "no controlling terminal:\n{text}"
    );
    assert!(text.contains("leader\n"), "not a session leader:\n{text}");
    assert!(text.contains("stdin-tty"), "{text}");
    assert_only_init(&lab, &id);
}
