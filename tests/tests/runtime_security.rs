//! Security settings of a container run by `flotilla-runtime`, observed from inside it: capabilities,
//! seccomp (Docker's default profile), masked and read-only paths, read-only root, no_new_privs,
//! user and groups, rlimits, oom_score_adj, umask, hostname, domain name, env and cwd.
use std::path::Path;
use std::process::Output;

use flotilla_agent::runtime::seccomp::docker::{from_docker_profile, DOCKER_DEFAULT_PROFILE_PATH};
use flotilla_agent::runtime::spec::{cap_name, DOCKER_DEFAULT_CAPS};
use flotilla_tests::runtime::{stderr, stdout, RuntimeLab};
use serde_json::json;

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Runs `sh -c script` in a fresh busybox container whose config.json `edit` adjusts.
fn run_sh(name: &str, script: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Output {
    let lab = RuntimeLab::new().expect("lab");
    let b = lab
        .bundle(name, &["sh", "-c", script], edit)
        .expect("bundle");
    let out = lab.run(&unique(name), &b).expect("run");
    assert!(
        lab.ids().expect("ids").is_empty(),
        "run left a container behind"
    );
    out
}

/// Output of a script that must succeed.
fn run_ok(name: &str, script: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let out = run_sh(name, script, edit);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Adds `cap` to or removes it from every capability set of the process.
fn set_cap(v: &mut serde_json::Value, cap: &str, present: bool) {
    for set in ["bounding", "effective", "permitted"] {
        let list = v["process"]["capabilities"][set]
            .as_array_mut()
            .expect("capability set");
        list.retain(|c| c != cap);
        if present {
            list.push(json!(cap));
        }
    }
}

/// Docker's default seccomp profile for Docker's default capabilities, as config.json's
/// `linux.seccomp`.
fn docker_default_seccomp() -> serde_json::Value {
    let bytes = std::fs::read(DOCKER_DEFAULT_PROFILE_PATH).unwrap_or_else(|e| {
        panic!(
            "{DOCKER_DEFAULT_PROFILE_PATH}: {e} (apt-get install golang-github-docker-docker-dev)"
        )
    });
    let caps: Vec<String> = DOCKER_DEFAULT_CAPS.into_iter().map(cap_name).collect();
    let seccomp = from_docker_profile(&bytes, &caps, "amd64").expect("convert the profile");
    serde_json::to_value(seccomp).expect("seccomp json")
}

fn status_field(text: &str, field: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in:\n{text}"))
}

const ADD_VETH: &str = "ip link add v0 type veth peer name v1 && ip -o link show";

#[test]
fn without_net_admin_a_veth_cannot_be_added() {
    let out = run_sh("nonetadmin", ADD_VETH, |_| {});
    assert!(!out.status.success(), "added a veth: {}", stdout(&out));
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn net_admin_allows_a_veth_in_the_containers_own_netns() {
    let out = run_ok("netadmin", ADD_VETH, |v| set_cap(v, "CAP_NET_ADMIN", true));
    assert!(out.contains(": v0@"), "no v0 in the container:\n{out}");
    assert!(
        !Path::new("/sys/class/net/v0").exists(),
        "the veth was created on the host"
    );
}

/// Serves /var/www on 127.0.0.1:80 (httpd forks into the background once bound) and fetches a
/// page from it over the container's loopback.
const BIND_80: &str = "echo hello > /var/www/index.html; httpd -p 127.0.0.1:80 -h /var/www && \
                       echo bound && wget -q -O- http://127.0.0.1:80/index.html";

#[test]
fn default_capabilities_allow_serving_on_port_80() {
    let out = run_ok("bind80", BIND_80, |_| {});
    assert_eq!(out, "bound\nhello");
}

#[test]
fn without_net_bind_service_port_80_is_refused() {
    let out = run_sh("nobind80", BIND_80, |v| {
        set_cap(v, "CAP_NET_BIND_SERVICE", false)
    });
    assert!(!out.status.success(), "bound: {}", stdout(&out));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ambient_capabilities_let_a_non_root_user_bind_port_80() {
    // A non-root process gets no capabilities across execve except its ambient set.
    let script =
        "id -u; grep CapAmb: /proc/self/status; httpd -p 127.0.0.1:80 -h /var/www && echo bound";
    let out = run_ok("ambient", script, |v| {
        v["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        let caps = &mut v["process"]["capabilities"];
        caps["inheritable"] = json!(["CAP_NET_BIND_SERVICE"]);
        caps["ambient"] = json!(["CAP_NET_BIND_SERVICE"]);
    });
    assert!(out.starts_with("1000\n"), "{out}");
    // CAP_NET_BIND_SERVICE is capability 10.
    assert_eq!(status_field(&out, "CapAmb"), "0000000000000400", "{out}");
    assert!(out.ends_with("\nbound"), "{out}");
}

#[test]
fn without_seccomp_a_user_namespace_can_be_created() {
    let out = run_ok(
        "noseccomp",
        "unshare -U true && echo unshared; grep Seccomp: /proc/self/status",
        |v| {
            assert!(v["linux"].get("seccomp").is_none());
        },
    );
    assert!(out.starts_with("unshared\n"), "{out}");
    assert_eq!(status_field(&out, "Seccomp"), "0");
}

#[test]
fn docker_default_seccomp_profile_blocks_user_namespaces() {
    let out = run_sh("seccompunshare", "unshare -U true && echo unshared", |v| {
        v["linux"]["seccomp"] = docker_default_seccomp();
    });
    assert!(!out.status.success(), "unshared: {}", stdout(&out));
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn docker_default_seccomp_profile_runs_ordinary_commands() {
    // wget to a closed port fails as a network error (exit 1), not by a seccomp kill (SIGSYS).
    // (No `-T`: busybox 1.35's wget segfaults when given one and the connection fails.)
    let script = "ls / >/dev/null && echo ls-ok; \
                  wget -q -O /dev/null http://127.0.0.1:9/; echo wget=$?; \
                  grep Seccomp: /proc/self/status";
    let out = run_ok("seccompok", script, |v| {
        v["linux"]["seccomp"] = docker_default_seccomp();
    });
    assert!(out.starts_with("ls-ok\nwget=1\n"), "{out}");
    assert_eq!(status_field(&out, "Seccomp"), "2", "no filter loaded");
}

#[test]
fn masked_paths_show_nothing() {
    // The host's copies have content; /proc/kcore does not exist on every kernel.
    for (path, file) in [
        ("/proc/timer_list", true),
        ("/proc/keys", true),
        ("/sys/firmware", false),
    ] {
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("host {path}: {e}"));
        assert_eq!(meta.is_file(), file, "{path}");
    }
    assert!(std::fs::read_dir("/sys/firmware")
        .expect("host /sys/firmware")
        .next()
        .is_some());
    let script = "for f in /proc/timer_list /proc/keys; do echo $f=$(wc -c < $f); done; \
                  echo firmware=$(ls -A /sys/firmware | wc -l)";
    let out = run_ok("masked", script, |v| {
        let masked = v["linux"]["maskedPaths"].as_array().expect("maskedPaths");
        for p in ["/proc/timer_list", "/proc/keys", "/sys/firmware"] {
            assert!(masked.contains(&json!(p)), "{p} is not masked by default");
        }
    });
    assert_eq!(
        out, "/proc/timer_list=0\n/proc/keys=0\nfirmware=0",
        "masked paths show content"
    );
}

#[test]
fn readonly_paths_refuse_writes() {
    let out = run_sh(
        "roproc",
        "echo 1 > /proc/sys/kernel/ns_last_pid && echo written",
        |_| {},
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn readonly_root_refuses_writes() {
    let out = run_sh("roroot", "touch /x && echo written", |v| {
        v["root"]["readonly"] = json!(true);
    });
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn no_new_privileges_is_set() {
    let out = run_ok("nnp", "cat /proc/self/status", |v| {
        v["process"]["noNewPrivileges"] = json!(true);
    });
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
}

#[test]
fn default_capabilities_are_dockers_set() {
    let out = run_ok("caps", "cat /proc/self/status", |_| {});
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(status_field(&out, set), "00000000a80425fb", "{set}");
    }
    assert_eq!(status_field(&out, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&out, "CapAmb"), "0000000000000000");
}

#[test]
fn user_and_additional_groups_are_applied() {
    let out = run_ok("user", "id -u; id -g; id -G", |v| {
        v["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [2000, 3000]});
    });
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["1000", "1001"], "{out}");
    let mut groups: Vec<&str> = lines[2].split_whitespace().collect();
    groups.sort();
    assert_eq!(groups, ["1001", "2000", "3000"], "{out}");
}

#[test]
fn rlimit_nofile_is_applied() {
    let out = run_ok("nofile", "ulimit -n; ulimit -Hn", |v| {
        v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654}]);
    });
    assert_eq!(out, "321\n654");
}

#[test]
fn oom_score_adj_is_applied() {
    let out = run_ok("oomadj", "cat /proc/self/oom_score_adj", |v| {
        v["process"]["oomScoreAdj"] = json!(123);
    });
    assert_eq!(out, "123");
}

#[test]
fn umask_is_applied() {
    let out = run_ok("umask", "umask; touch /tmp/f; stat -c %a /tmp/f", |v| {
        v["process"]["user"]["umask"] = json!(0o027);
    });
    assert_eq!(out, "0027\n640");
}

#[test]
fn hostname_and_domainname_are_set() {
    let out = run_ok("uts", "hostname; cat /proc/sys/kernel/domainname", |v| {
        v["hostname"] = json!("box1");
        v["domainname"] = json!("lab.example");
    });
    assert_eq!(out, "box1\nlab.example");
}

#[test]
fn env_and_cwd_are_applied() {
    let out = run_ok("envcwd", "echo \"$GREETING\"; pwd", |v| {
        v["process"]["env"]
            .as_array_mut()
            .expect("env")
            .push(json!("GREETING=hello  world"));
        v["process"]["cwd"] = json!("/srv/app");
    });
    assert_eq!(out, "hello  world\n/srv/app");
}
