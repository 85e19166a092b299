//! Each namespace is observable from inside a container run by `flotilla-runtime`.
use flotilla_tests::runtime::{stderr, stdout, RuntimeLab};

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .expect("host ns")
        .display()
        .to_string()
}

#[test]
fn new_namespaces_are_separate_from_the_host() {
    let lab = RuntimeLab::new().expect("lab");
    let script = "echo pid=$$; echo host=$(hostname); echo links=$(ls /sys/class/net); \
                  for n in pid uts ipc net mnt cgroup; do echo $n=$(readlink /proc/self/ns/$n); done";
    let b = lab
        .bundle("ns", &["sh", "-c", script], |_| {})
        .expect("bundle");
    let out = lab.run("ns", &b).expect("run");
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("pid=1\n"), "the shell is not pid 1:\n{text}");
    assert!(
        text.contains("host=flotilla\n"),
        "hostname not set:\n{text}"
    );
    assert!(
        text.contains("links=lo\n"),
        "a new netns has only lo:\n{text}"
    );
    for n in ["uts", "ipc", "net", "mnt", "cgroup"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{n}=")))
            .expect("ns line");
        assert_ne!(
            &line[n.len() + 1..],
            host_ns(n),
            "{n} namespace is the host's"
        );
    }
    // pid: /proc/self/ns/pid names the namespace the process was created in.
    let line = text
        .lines()
        .find(|l| l.starts_with("pid=pid:"))
        .expect("pid ns line");
    assert_ne!(&line[4..], host_ns("pid"));
    assert!(
        lab.ids().expect("ids").is_empty(),
        "run leaves no container behind"
    );
}

#[test]
fn ipc_objects_are_private() {
    let lab = RuntimeLab::new().expect("lab");
    // A SysV message queue made on the host must not be visible inside.
    // SAFETY: plain syscalls with constant arguments.
    let qid = unsafe { libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600) };
    assert!(qid >= 0, "msgget failed");
    struct Rm(i32);
    impl Drop for Rm {
        fn drop(&mut self) {
            // SAFETY: removes the queue this test created.
            unsafe { libc::msgctl(self.0, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
    let _rm = Rm(qid);
    let host = std::fs::read_to_string("/proc/sysvipc/msg").expect("host msg");
    assert!(
        host.lines().count() >= 2,
        "the host sees its queue:\n{host}"
    );
    let b = lab
        .bundle("ipc", &["sh", "-c", "wc -l < /proc/sysvipc/msg"], |_| {})
        .expect("bundle");
    let out = lab.run("ipc", &b).expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "1",
        "only the header line: the container has its own IPC namespace"
    );
}

#[test]
fn joins_an_existing_network_namespace_by_path() {
    let lab = RuntimeLab::new().expect("lab");
    let name = format!("flt-rt-{}", std::process::id());
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .expect("ip netns");
    assert!(ok.success(), "ip netns add failed");
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _guard = Del(name.clone());
    let path = format!("/run/netns/{name}");
    let b = lab
        .bundle("join", &["readlink", "/proc/self/ns/net"], |v| {
            let ns = v["linux"]["namespaces"].as_array_mut().expect("namespaces");
            for n in ns.iter_mut() {
                if n["type"] == "network" {
                    n["path"] = serde_json::json!(path);
                }
            }
        })
        .expect("bundle");
    let out = lab.run("join", &b).expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&path).expect("netns file").ino();
    assert_eq!(stdout(&out), format!("net:[{ino}]"));
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_host_user() {
    let lab = RuntimeLab::new().expect("lab");
    let shared = lab.work.path().join("shared");
    std::fs::create_dir(&shared).expect("shared dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let b = lab
        .bundle("userns", &["sh", "-c", "id -u; cat /proc/self/uid_map; touch /shared/f"], |v| {
            v["linux"]["namespaces"].as_array_mut().expect("ns").push(serde_json::json!({"type": "user"}));
            v["linux"]["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            v["linux"]["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            v["mounts"].as_array_mut().expect("mounts").push(serde_json::json!(
                {"destination": "/shared", "type": "bind", "source": shared, "options": ["rbind", "rw"]}));
        })
        .expect("bundle");
    // The rootfs must be readable by the mapped root.
    let _ = std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(b.join("rootfs"))
        .status();
    let out = lab.run("userns", &b).expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("0\n"), "root inside:\n{text}");
    assert!(
        text.contains("100000"),
        "uid_map shows the mapping:\n{text}"
    );
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(shared.join("f"))
        .expect("file made inside")
        .uid();
    assert_eq!(owner, 100000, "container root writes as host uid 100000");
}
