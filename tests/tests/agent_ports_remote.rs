//! A published port is reachable from another host: a lab host (its own network namespace, joined
//! to this one by a veth pair with addresses only the test uses) fetches busybox httpd through the
//! host's address on that link and the published port.
use std::process::Command;
use std::time::Duration;

use flotilla_tests::agent::{eventually, AgentLab};
use flotilla_tests::registry::free_port;

/// The peer host: a network namespace and a veth pair, removed on drop.
struct Peer {
    ns: String,
    host_if: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_published_port_answers_other_hosts() {
    let lab = AgentLab::new().expect("agent lab");
    lab.import_busybox().expect("busybox image");
    let x = lab.x;
    let peer = Peer {
        ns: format!("flapeer{x}"),
        host_if: format!("flap{x}h"),
    };
    let _ = Command::new("ip").args(["netns", "del", &peer.ns]).output();
    let _ = Command::new("ip")
        .args(["link", "del", &peer.host_if])
        .output();
    let (host_ip, peer_ip) = (format!("10.246.{x}.1"), format!("10.246.{x}.2"));
    ip(&["netns", "add", &peer.ns]);
    let peer_if = format!("flap{x}p");
    ip(&[
        "link",
        "add",
        &peer.host_if,
        "type",
        "veth",
        "peer",
        "name",
        &peer_if,
    ]);
    ip(&["link", "set", &peer_if, "netns", &peer.ns]);
    ip(&[
        "addr",
        "add",
        &format!("{host_ip}/30"),
        "dev",
        &peer.host_if,
    ]);
    ip(&["link", "set", &peer.host_if, "up"]);
    ip(&[
        "-n",
        &peer.ns,
        "addr",
        "add",
        &format!("{peer_ip}/30"),
        "dev",
        &peer_if,
    ]);
    ip(&["-n", &peer.ns, "link", "set", &peer_if, "up"]);
    ip(&["-n", &peer.ns, "link", "set", "lo", "up"]);

    let port = free_port().unwrap();
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("{port}:80"),
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo from-the-container > /www/index.html && exec httpd -f -p 80 -h /www",
    ])
    .unwrap();
    let url = format!("http://{host_ip}:{port}/");
    let body = eventually(Duration::from_secs(10), || {
        let o = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", peer.ns))
            .args(["timeout", "5", "busybox", "wget", "-q", "-O", "-", &url])
            .output()?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            Ok(out)
        } else {
            anyhow::bail!(
                "wget {url} from {}: {} {}",
                peer.ns,
                o.status,
                String::from_utf8_lossy(&o.stderr)
            )
        }
    })
    .unwrap();
    assert_eq!(body.trim(), "from-the-container");
    // Bound to 127.0.0.1 only: other hosts do not get it.
    let port2 = free_port().unwrap();
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "local",
        "-p",
        &format!("127.0.0.1:{port2}:80"),
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo local > /www/index.html && exec httpd -f -p 80 -h /www",
    ])
    .unwrap();
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", peer.ns))
        .args([
            "timeout",
            "3",
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{host_ip}:{port2}/"),
        ])
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "a 127.0.0.1-bound port answered another host"
    );
}
