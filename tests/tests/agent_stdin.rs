//! `run -i` streams a large stdin through the shim to a container that echoes it back (`cat`),
//! without deadlocking while the container's output and input both back up, and EOF on our stdin
//! ends the container's input.
use std::time::Duration;

use flotilla_tests::agent::{output_with_timeout, AgentLab};

#[test]
fn large_stdin_round_trips_through_cat() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    let input = lab.scratch("input").expect("scratch").join("data");
    // 4 MiB of lines: far more than pipe buffers (64 KiB) and the shim's own buffer (1 MiB).
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\n";
    let data: String = line.repeat(4 * 1024 * 1024 / line.len());
    std::fs::write(&input, &data).expect("write input");
    // Through a shell: the lab's runner gives commands a closed stdin.
    let cli = lab.cli_command();
    let mut cmd = std::process::Command::new("sh");
    cmd.env("FLOTILLA_HOST", lab.host()).arg("-c").arg(format!(
        "exec {} run --rm -i busybox cat < {}",
        cli.get_program().to_string_lossy(),
        input.display()
    ));
    let o = output_with_timeout(cmd, Duration::from_secs(60)).expect("run -i cat");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.stdout.len(), data.len(), "all of stdin came back");
    assert!(o.stdout == data.as_bytes(), "the bytes came back in order");
}
