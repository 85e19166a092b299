//! Published ports through the real CLI and agent: `-p HOSTPORT:80` reaches busybox httpd in the
//! container from the host over 127.0.0.1; a second container asking for the same host port is
//! refused with "already in use"; `-P` with `--expose` picks a host port that `ps` and `inspect`
//! show and that answers.
use std::time::Duration;

use flotilla_tests::agent::{eventually, http_get_local, stderr, text, AgentLab};
use flotilla_tests::registry::free_port;

const HTTPD: &str =
    "mkdir -p /www && echo \"hello from $HOSTNAME\" > /www/index.html && exec httpd -f -p PORT -h /www";

fn httpd(port: u16) -> String {
    HTTPD.replace("PORT", &port.to_string())
}

#[test]
fn published_port_answers_on_loopback_and_a_taken_port_is_refused() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    let port = free_port().unwrap();
    let publish = format!("{port}:80");
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-h",
        "web1",
        "-p",
        &publish,
        "busybox",
        "sh",
        "-c",
        &httpd(80),
    ])
    .unwrap();
    let body = eventually(Duration::from_secs(10), || http_get_local(port)).unwrap();
    assert!(body.contains("hello from web1"), "{body}");

    let ps = lab
        .cli_ok(&["ps", "--format", "{{.Names}} {{.Ports}}"])
        .unwrap();
    assert!(
        ps.contains(&format!("web 0.0.0.0:{port}->80/tcp")),
        "ps shows the binding: {ps}"
    );
    let v = lab.inspect("web").unwrap();
    assert_eq!(
        v["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"],
        port.to_string(),
        "{v}"
    );

    // the same host port for another container
    let o = lab
        .cli(&[
            "run",
            "-d",
            "--name",
            "web2",
            "-p",
            &publish,
            "busybox",
            "sh",
            "-c",
            &httpd(80),
        ])
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    let msg = stderr(&o);
    assert!(
        msg.contains("already in use") && msg.contains(&port.to_string()),
        "a taken port is refused clearly: {msg}"
    );
    // the first container is unharmed
    let body = http_get_local(port).unwrap();
    assert!(body.contains("hello from web1"), "{body}");

    // after the first one is removed, the port is free again
    lab.cli_ok(&["rm", "-f", "web"]).unwrap();
    lab.cli_ok(&["rm", "-f", "web2"]).unwrap();
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "web3",
        "-h",
        "web3",
        "-p",
        &publish,
        "busybox",
        "sh",
        "-c",
        &httpd(80),
    ])
    .unwrap();
    let body = eventually(Duration::from_secs(10), || {
        let b = http_get_local(port)?;
        if b.contains("hello from web3") {
            Ok(b)
        } else {
            anyhow::bail!("not web3 yet: {b}")
        }
    })
    .unwrap();
    assert!(body.contains("200"), "{body}");
}

#[test]
fn publish_all_picks_a_port_that_is_shown_and_answers() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "auto",
        "-h",
        "auto",
        "--expose",
        "8080",
        "-P",
        "busybox",
        "sh",
        "-c",
        &httpd(8080),
    ])
    .unwrap();
    let v = lab.inspect("auto").unwrap();
    let host_port = v["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let port: u16 = host_port
        .parse()
        .unwrap_or_else(|_| panic!("-P assigns a host port to 8080/tcp: {v}"));
    assert_ne!(port, 0, "{v}");
    let ps = lab.cli_ok(&["ps", "--format", "{{.Ports}}"]).unwrap();
    assert!(ps.contains(&format!(":{port}->8080/tcp")), "{ps}");
    let body = eventually(Duration::from_secs(10), || http_get_local(port)).unwrap();
    assert!(body.contains("hello from auto"), "{body}");
}
