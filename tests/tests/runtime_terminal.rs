//! `process.terminal: true`: a pty from the container's own devpts, handed over a console socket
//! (runc's `--console-socket`) or proxied to the caller's stdio by a foreground `run`.
use std::io::Read;
use std::os::fd::AsRawFd;

use flotilla_tests::runtime::{stderr, RuntimeLab};

fn with_terminal<'a>(args: &'a [&'a str]) -> impl FnOnce(&mut serde_json::Value) + 'a {
    move |v| {
        v["process"]["terminal"] = serde_json::json!(true);
        v["process"]["consoleSize"] = serde_json::json!({"height": 30, "width": 100});
        v["process"]["args"] = serde_json::json!(args);
    }
}

#[test]
fn foreground_run_proxies_the_terminal() {
    let lab = RuntimeLab::new().expect("lab");
    let b = lab
        .bundle(
            "fg",
            &["true"],
            with_terminal(&["sh", "-c", "tty; stty size; exit 3"]),
        )
        .expect("bundle");
    let out = lab.run("fg", &b).expect("run");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        text.contains("/dev/pts/0\n"),
        "the container's own pty:\n{text}"
    );
    assert!(text.contains("30 100\n"), "console size applied:\n{text}");
}

#[test]
fn console_socket_receives_the_pty_master() {
    let lab = RuntimeLab::new().expect("lab");
    let b = lab
        .bundle(
            "cs",
            &["true"],
            with_terminal(&["sh", "-c", "echo hello-from-$(tty)"]),
        )
        .expect("bundle");
    let sock = lab.work.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let runtime = lab.runtime.clone();
    let root = lab.root.path().to_path_buf();
    let bundle = b.clone();
    let sock2 = sock.clone();
    let creator = std::thread::spawn(move || {
        std::process::Command::new(runtime)
            .arg("--root")
            .arg(root)
            .args(["create", "--bundle"])
            .arg(bundle)
            .arg("--console-socket")
            .arg(sock2)
            .arg("cs")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .output()
            .expect("create")
    });
    let (conn, _) = listener.accept().expect("accept");
    let master = flotilla_agent::runtime::console::recv_fd(conn.as_raw_fd()).expect("pty master");
    let out = creator.join().expect("creator thread");
    assert!(out.status.success(), "create: {}", stderr(&out));
    let st = lab.rt().args(["start", "cs"]).output().expect("start");
    assert!(st.status.success(), "start: {}", stderr(&st));
    let mut f = std::fs::File::from(master);
    let mut text = String::new();
    let mut buf = [0u8; 256];
    // Read until the container closes its side (EIO).
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.contains("hello-from-/dev/pts/0"), "{text:?}");
}

#[test]
fn terminal_without_console_socket_is_refused_by_create() {
    let lab = RuntimeLab::new().expect("lab");
    let b = lab
        .bundle("nocs", &["true"], with_terminal(&["true"]))
        .expect("bundle");
    let (status, err) = lab
        .detached(&[
            "create".as_ref(),
            "--bundle".as_ref(),
            b.as_os_str(),
            "nocs".as_ref(),
        ])
        .expect("create");
    assert!(!status.success());
    assert!(err.contains("--console-socket"), "{err}");
    assert!(lab.ids().expect("ids").is_empty(), "nothing left behind");
}
