//! Bad input to `flotilla-runtime`: each is refused with a non-zero exit and a message naming the
//! input, and leaves no state, cgroup or process behind.
//!
//! Container ids carry the test process id: the cgroup path `flotilla/<id>` is shared by every
//! runtime root on the host, so fixed ids would collide with other test runs.
use std::path::Path;

use flotilla_tests::runtime::{cgroup_dirs, stderr, unique_id, RuntimeLab};
use serde_json::json;

/// Processes whose command line mentions `needle` (a container init keeps its creator's).
fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let pid = e.file_name().to_string_lossy().into_owned();
                    if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    cmd.contains(&needle).then(|| format!("{pid}: {cmd}"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn assert_nothing_left(lab: &RuntimeLab, id: &str, bundle: &Path) {
    lab.assert_nothing_left(id);
    let procs = processes_mentioning(bundle);
    assert!(procs.is_empty(), "processes left: {procs:?}");
}

/// `run` of `bundle` must fail, name each of `names` and leave nothing behind.
fn assert_run_refused(lab: &RuntimeLab, id: &str, bundle: &Path, names: &[&str]) {
    let out = lab.run(id, bundle).expect("run");
    assert!(!out.status.success(), "accepted");
    for n in names {
        assert!(
            stderr(&out).contains(n),
            "error does not name {n}: {}",
            stderr(&out)
        );
    }
    assert_nothing_left(lab, id, bundle);
}

#[test]
fn malformed_config_json_is_refused() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("malformed");
    let b = lab.bundle("malformed", &["true"], |_| {}).expect("bundle");
    std::fs::write(
        b.join("config.json"),
        "{\"ociVersion\": \"1.0.2\", \"process\": ",
    )
    .expect("write config");
    assert_run_refused(&lab, &id, &b, &["config.json", "invalid spec"]);
}

#[test]
fn unknown_namespace_type_is_refused() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("bogusns");
    let b = lab
        .bundle("bogusns", &["true"], |v| {
            v["linux"]["namespaces"]
                .as_array_mut()
                .expect("namespaces")
                .push(json!({"type": "bogus"}));
        })
        .expect("bundle");
    assert_run_refused(&lab, &id, &b, &["bogus", "config.json"]);
}

#[test]
fn missing_rootfs_is_refused() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("norootfs");
    let b = lab
        .bundle("norootfs", &["true"], |v| {
            v["root"]["path"] = json!("no-such-rootfs");
        })
        .expect("bundle");
    assert_run_refused(&lab, &id, &b, &["no-such-rootfs"]);
}

#[test]
fn missing_executable_fails_create() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("noexe");
    let b = lab
        .bundle("noexe", &["no-such-tool", "--flag"], |_| {})
        .expect("bundle");
    let (status, err) = lab
        .detached(&["create", "--bundle", &b.to_string_lossy(), id.as_str()])
        .expect("flotilla-runtime");
    assert!(!status.success(), "create accepted a missing executable");
    assert!(err.contains("\"no-such-tool\""), "{err}");
    assert!(err.contains("not found"), "{err}");
    assert_nothing_left(&lab, &id, &b);
}

#[test]
fn duplicate_container_id_is_refused_and_the_first_keeps_running() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("dup");
    let b = lab.bundle("dup", &["sleep", "30"], |_| {}).expect("bundle");
    let bundle = b.to_string_lossy().into_owned();
    let (status, err) = lab
        .detached(&["run", "-d", "--bundle", &bundle, &id])
        .expect("flotilla-runtime");
    assert!(status.success(), "first run: {err}");
    let first = lab.state(&id).expect("state");
    assert_eq!(first["status"], "running");

    let (status, err) = lab
        .detached(&["create", "--bundle", &bundle, &id])
        .expect("flotilla-runtime");
    assert!(!status.success(), "a second container took the same id");
    assert!(err.contains(&id) && err.contains("already exists"), "{err}");
    let now = lab.state(&id).expect("state after the refused create");
    assert_eq!(
        now["status"], "running",
        "the first container was disturbed"
    );
    assert_eq!(now["pid"], first["pid"]);
    assert_eq!(lab.ids().expect("ids"), std::slice::from_ref(&id));

    lab.delete_force(&id);
    assert_nothing_left(&lab, &id, &b);
}

#[test]
fn a_cgroup_in_use_by_another_root_is_not_adopted() {
    let first = RuntimeLab::new().expect("lab");
    let second = RuntimeLab::new().expect("second lab");
    let id = unique_id("shared");
    let b = first
        .bundle("shared", &["sleep", "30"], |_| {})
        .expect("bundle");
    let bundle = b.to_string_lossy().into_owned();
    let (status, err) = first
        .detached(&["run", "-d", "--bundle", &bundle, &id])
        .expect("flotilla-runtime");
    assert!(status.success(), "first run: {err}");
    let before = first.state(&id).expect("state");
    let (status, err) = second
        .detached(&["run", "-d", "--bundle", &bundle, &id])
        .expect("flotilla-runtime");
    assert!(!status.success(), "a second root adopted a busy cgroup");
    assert!(err.contains("already holds processes"), "{err}");
    assert!(
        second.ids().expect("ids").is_empty(),
        "the refused create left state behind"
    );
    let after = first.state(&id).expect("state");
    assert_eq!(
        after["status"], "running",
        "the first container was disturbed"
    );
    assert_eq!(after["pid"], before["pid"]);
}

#[test]
fn invalid_container_id_is_refused() {
    let lab = RuntimeLab::new().expect("lab");
    let b = lab.bundle("badid", &["true"], |_| {}).expect("bundle");
    let escape = lab.root.path().join("../x");
    let existed = escape.exists();
    let out = lab.run("../x", &b).expect("run");
    assert!(!out.status.success(), "accepted id ../x");
    assert!(stderr(&out).contains("\"../x\""), "{}", stderr(&out));
    assert_eq!(
        escape.exists(),
        existed,
        "something was created outside the runtime root"
    );
    assert!(cgroup_dirs("../x").is_empty(), "{:?}", cgroup_dirs("../x"));
    assert!(lab.ids().expect("ids").is_empty());
    assert!(processes_mentioning(&b).is_empty());
}

#[test]
fn unknown_signal_is_refused_and_the_container_keeps_running() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("badsig");
    let b = lab
        .bundle("badsig", &["sleep", "30"], |_| {})
        .expect("bundle");
    let (status, err) = lab
        .detached(&["run", "-d", "--bundle", &b.to_string_lossy(), &id])
        .expect("flotilla-runtime");
    assert!(status.success(), "run -d: {err}");

    let out = lab
        .rt()
        .args(["kill", &id, "SIGBOGUS"])
        .output()
        .expect("kill");
    assert!(!out.status.success(), "kill accepted SIGBOGUS");
    assert!(stderr(&out).contains("SIGBOGUS"), "{}", stderr(&out));
    assert_eq!(lab.state(&id).expect("state")["status"], "running");

    lab.delete_force(&id);
    assert_nothing_left(&lab, &id, &b);
}

#[test]
fn start_of_a_missing_container_is_refused() {
    let lab = RuntimeLab::new().expect("lab");
    let id = unique_id("ghost");
    let out = lab.rt().args(["start", &id]).output().expect("start");
    assert!(!out.status.success(), "started a missing container");
    assert!(
        stderr(&out).contains(&id) && stderr(&out).contains("does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(lab.ids().expect("ids").is_empty());
    assert!(
        !lab.root.path().join(&id).exists(),
        "start created a state directory"
    );
    assert!(cgroup_dirs(&id).is_empty());
}
