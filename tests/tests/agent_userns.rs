//! `flotilla-agent serve --userns-remap`: root in a container is an unprivileged user on the host,
//! yet can write its own root filesystem and its volumes (their owners are shifted into the range).
use flotilla_tests::agent::{stdout, text, AgentLab};

#[test]
fn root_in_the_container_is_the_remapped_user_on_the_host() {
    let lab =
        AgentLab::with_agent_args(&["--userns-remap", "300000:300000:65536"]).expect("agent lab");
    lab.import_busybox().expect("busybox image");
    let o = lab
        .cli(&[
            "run",
            "--rm",
            "-v",
            "remapvol:/data",
            "busybox",
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map; touch /x && echo root-ok; echo hi > /data/f && echo vol-ok",
        ])
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&"0"), "{out}");
    let map: Vec<&str> = lines
        .get(1)
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(map, ["0", "300000", "65536"], "{out}");
    assert!(out.contains("root-ok") && out.contains("vol-ok"), "{out}");

    // Seen from the host, the container's processes run as uid 300000.
    lab.cli_ok(&["run", "-d", "--name", "sleeper", "busybox", "sleep", "1000"])
        .expect("run -d");
    let v = lab.inspect("sleeper").expect("inspect");
    let pid = v["State"]["Pid"].as_i64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "300000"),
        "host uid of the container's root: {uid_line}"
    );
    // The volume's file belongs to the remapped root on the host.
    let vol = lab
        .cli_ok(&[
            "volume",
            "inspect",
            "remapvol",
            "--format",
            "{{.Mountpoint}}",
        ])
        .expect("volume inspect");
    let md = std::fs::metadata(std::path::Path::new(vol.trim()).join("f")).expect("volume file");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), 300000);
}
