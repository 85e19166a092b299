//! Terminals through the agent: `run -t` and `exec -t` give the process a terminal from the
//! container's own devpts (so `tty` names it), with the client's size; a failing `exec -t` still
//! reports the runtime's error and exit code 127.
use flotilla_tests::agent::{stdout, text, AgentLab};

#[test]
fn run_and_exec_with_a_terminal() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    let o = lab
        .cli(&["run", "--rm", "-t", "busybox", "tty"])
        .expect("run -t");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stdout(&o).trim(), "/dev/pts/0", "{}", text(&o));

    lab.cli_ok(&["run", "-d", "--name", "box", "busybox", "sleep", "1000"])
        .expect("run -d");
    let o = lab
        .cli(&[
            "exec",
            "-t",
            "box",
            "sh",
            "-c",
            "tty; test -t 0 && echo stdin-is-a-tty",
        ])
        .expect("exec -t");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        out.contains("/dev/pts/") && out.contains("stdin-is-a-tty"),
        "{out}"
    );
    // Without -t: no terminal.
    let o = lab
        .cli(&["exec", "box", "sh", "-c", "test -t 0 || echo no-tty"])
        .expect("exec");
    assert!(stdout(&o).contains("no-tty"), "{}", text(&o));
    // A missing executable: 127 and the runtime's message, with and without a terminal.
    for args in [
        &["exec", "-t", "box", "nope"][..],
        &["exec", "box", "nope"][..],
    ] {
        let o = lab.cli(args).expect("exec nope");
        assert_eq!(o.status.code(), Some(127), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("\"nope\" not found"),
            "{args:?}: {}",
            text(&o)
        );
    }
    // No exec leftovers (process files, console sockets).
    let dir = lab.state_dir().join("containers");
    for e in std::fs::read_dir(&dir).expect("containers dir").flatten() {
        for f in std::fs::read_dir(e.path())
            .expect("container dir")
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with("exec-"),
                "left behind: {}",
                f.path().display()
            );
        }
    }
    let shims = lab.run_dir().join("shims");
    for f in std::fs::read_dir(&shims).expect("shims dir").flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("exec-"),
            "left behind: {}",
            f.path().display()
        );
    }
}
