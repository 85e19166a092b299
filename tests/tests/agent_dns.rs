//! Name resolution on a user bridge network through the real CLI and agent: two containers on a
//! `network create`d network reach each other by name (nslookup, wget), `--network-alias` names
//! answer too, and `network rm` is refused while a container uses the network.
use std::time::Duration;

use flotilla_tests::agent::{eventually, stderr, stdout, text, AgentLab};

#[test]
fn containers_on_a_user_network_find_each_other_by_name_and_alias() {
    let mut lab = AgentLab::new().expect("agent lab");
    lab.pull_busybox().expect("busybox from the lab registry");
    lab.cli_ok(&["network", "create", "appnet"]).unwrap();
    let ls = lab.cli_ok(&["network", "ls"]).unwrap();
    assert!(ls.contains("appnet"), "{ls}");

    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "appnet",
        "--network-alias",
        "db",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo srv-ok > /www/index.html && exec httpd -f -p 80 -h /www",
    ])
    .unwrap();
    lab.cli_ok(&[
        "run",
        "-d",
        "--name",
        "cli",
        "--network",
        "appnet",
        "busybox",
        "sleep",
        "1000",
    ])
    .unwrap();
    lab.wait_status("srv", "running", Duration::from_secs(10))
        .unwrap();
    lab.wait_status("cli", "running", Duration::from_secs(10))
        .unwrap();
    let srv_ip = lab.inspect("srv").unwrap()["NetworkSettings"]["Networks"]["appnet"]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!srv_ip.is_empty(), "srv has an address on appnet");

    // by name and by alias, from the other container
    for name in ["srv", "db"] {
        let o = lab.cli(&["exec", "cli", "nslookup", name]).unwrap();
        assert!(o.status.success(), "nslookup {name}: {}", text(&o));
        assert!(
            stdout(&o).contains(&srv_ip),
            "{name} resolves to srv's address {srv_ip}: {}",
            text(&o)
        );
        let body = eventually(Duration::from_secs(10), || {
            let o = lab.cli(&[
                "exec",
                "cli",
                "timeout",
                "5",
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://{name}/"),
            ])?;
            if o.status.success() {
                Ok(stdout(&o))
            } else {
                anyhow::bail!("wget http://{name}/: {}", text(&o))
            }
        })
        .unwrap();
        assert_eq!(body, "srv-ok\n");
    }
    // and back, from srv to cli by name
    let o = lab.cli(&["exec", "srv", "nslookup", "cli"]).unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // a container on another network does not see them
    lab.cli_ok(&["network", "create", "other"]).unwrap();
    let o = lab
        .cli(&[
            "run",
            "--rm",
            "--network",
            "other",
            "busybox",
            "nslookup",
            "srv",
        ])
        .unwrap();
    assert!(
        !stdout(&o).contains(&srv_ip),
        "srv is not resolvable from another network: {}",
        text(&o)
    );

    // network rm refused while in use
    let o = lab.cli(&["network", "rm", "appnet"]).unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains("in use") && stderr(&o).contains("srv"),
        "network rm names the containers using it: {}",
        text(&o)
    );
    lab.cli_ok(&["rm", "-f", "srv", "cli"]).unwrap();
    lab.cli_ok(&["network", "rm", "appnet", "other"]).unwrap();
    let ls = lab.cli_ok(&["network", "ls"]).unwrap();
    assert!(!ls.contains("appnet"), "{ls}");
}
