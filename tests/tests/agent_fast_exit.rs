//! Containers that exit at once (`run -d busybox true`) are started only once the agent watches
//! them: each is recorded as exited 0, and its network sandbox is gone.
use std::time::Duration;

use flotilla_tests::agent::AgentLab;

#[test]
fn immediate_exits_are_recorded_and_cleaned_up() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    for i in 0..10 {
        let name = format!("quick{i}");
        lab.cli_ok(&["run", "-d", "--name", &name, "busybox", "true"])
            .expect("run -d");
    }
    for i in 0..10 {
        let name = format!("quick{i}");
        lab.wait_status(&name, "exited", Duration::from_secs(10))
            .expect("exited");
        let v = lab.inspect(&name).expect("inspect");
        assert_eq!(v["State"]["ExitCode"], 0, "{v}");
        assert_eq!(v["State"]["Error"], "", "{v}");
    }
    let netns = lab.run_dir().join("netns");
    let left: Vec<_> = std::fs::read_dir(&netns)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "sandboxes left behind: {left:?}");
}
