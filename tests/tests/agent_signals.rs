//! Containers and exec'd processes start with a clean signal state (nothing blocked, nothing
//! ignored), whatever their supervisors block or ignore (the shim blocks SIGCHLD for its
//! signalfd; Rust programs ignore SIGPIPE).
use flotilla_tests::agent::{stdout, text, AgentLab};

fn signal_masks(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("SigBlk:") || l.starts_with("SigIgn:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn nothing_is_blocked_or_ignored_in_containers() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    let want = ["SigBlk: 0000000000000000", "SigIgn: 0000000000000000"];
    let o = lab
        .cli(&["run", "--rm", "busybox", "cat", "/proc/self/status"])
        .expect("run");
    assert_eq!(signal_masks(&stdout(&o)), want, "{}", text(&o));
    lab.cli_ok(&["run", "-d", "--name", "box", "busybox", "sleep", "1000"])
        .expect("run -d");
    let o = lab
        .cli(&["exec", "box", "cat", "/proc/self/status"])
        .expect("exec");
    assert_eq!(signal_masks(&stdout(&o)), want, "{}", text(&o));
    // `yes | head` ends quietly: SIGPIPE kills `yes` as it should.
    let o = lab
        .cli(&[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "yes | head -n 1; echo done",
        ])
        .expect("pipe");
    assert_eq!(stdout(&o), "y\ndone\n", "{}", text(&o));
}
