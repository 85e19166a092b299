//! An agent restart (a new NetworkManager on the same state) keeps addresses, published ports
//! and names; it rebuilds a deleted bridge, replaces stale firewall rules without duplicating
//! any, and forgets sandboxes whose namespace disappeared while it was down.
use std::time::Duration;

use flotilla_agent::network::{
    CreateNetwork, EndpointRequest, NetConfig, NetworkManager, PortSpec, Proto,
};
use flotilla_tests::network::{
    eventually, http_get, in_sandbox, link_exists, spawn_in_sandbox, text, NetLab,
};

fn config(lab: &NetLab) -> NetConfig {
    NetConfig {
        state_dir: lab.state_dir(),
        run_dir: lab.run_dir(),
        default_bridge: lab.default_bridge(),
        default_subnet: lab.default_subnet().parse().unwrap(),
        pool: lab.pool().parse().unwrap(),
        pool_prefix_len: 27,
        bridge_prefix: lab.bridge_prefix(),
        nft_table: lab.table(),
        host_resolv_conf: lab.resolv_conf(),
    }
}

fn req(name: &str, network: &str) -> EndpointRequest {
    EndpointRequest {
        container_name: name.into(),
        network: network.into(),
        ip: None,
        aliases: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_restores_state_and_rules_without_duplicates() {
    let lab = NetLab::new().expect("lab");
    let www = lab.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("index.html"), "still here\n").expect("index");

    let net = NetworkManager::open(config(&lab)).await.expect("open");
    let app = net
        .create_network(CreateNetwork {
            name: "app".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let bridge = app.bridge.clone().expect("bridge");
    let gw = app.gateway.expect("gateway");
    let (a, b, c) = (
        lab.container_id(1),
        lab.container_id(2),
        lab.container_id(3),
    );
    let a_ns = net.create_sandbox(&a).await.expect("a");
    let b_ns = net.create_sandbox(&b).await.expect("b");
    let c_ns = net.create_sandbox(&c).await.expect("c");
    let ep_a = net.connect(&a, req("a", "app")).await.expect("connect a");
    let ep_c = net.connect(&c, req("c", "app")).await.expect("connect c");
    let ep_b = net
        .connect(&b, req("b", "bridge"))
        .await
        .expect("connect b");
    for ep in [&ep_a, &ep_b, &ep_c] {
        lab.track_veth(&ep.host_ifname);
    }
    let _httpd = spawn_in_sandbox(
        &b_ns,
        &["httpd", "-f", "-p", "80", "-h", www.to_str().unwrap()],
    )
    .expect("httpd");
    let port = net
        .publish(
            &b,
            &[PortSpec {
                host_ip: None,
                host_port: 0,
                container_port: 80,
                proto: Proto::Tcp,
            }],
        )
        .await
        .expect("publish")[0]
        .host_port;
    let rules_before = lab.nft_table();
    let before = net.inspect("app").expect("inspect");

    // the agent goes away; meanwhile the bridge is deleted, a stale rule is added to the table
    // and container c's namespace disappears
    net.shutdown().await;
    drop(net);
    let out = std::process::Command::new("ip")
        .args(["link", "del", &bridge])
        .output()
        .expect("ip");
    assert!(out.status.success(), "{}", text(&out));
    let out = std::process::Command::new("nft")
        .args([
            "add",
            "rule",
            "ip",
            &lab.table(),
            "published",
            "tcp",
            "dport",
            "1",
            "dnat",
            "to",
            &format!("{}:1", lab.ip(9)),
        ])
        .output()
        .expect("nft");
    assert!(out.status.success(), "{}", text(&out));
    nix::mount::umount2(&c_ns, nix::mount::MntFlags::MNT_DETACH).expect("umount c");
    std::fs::remove_file(&c_ns).expect("rm c");

    let net = NetworkManager::open(config(&lab)).await.expect("reopen");
    assert_eq!(
        lab.nft_table(),
        rules_before,
        "rules are regenerated, not appended"
    );
    assert!(link_exists(&bridge), "bridge re-created");
    assert!(
        !link_exists(&ep_c.host_ifname),
        "veth of the vanished sandbox removed"
    );
    let after = net.inspect("app").expect("inspect");
    assert_eq!(after.id, before.id);
    assert_eq!(
        after.containers.len(),
        1,
        "c is forgotten: {:?}",
        after.containers.keys()
    );
    assert_eq!(after.containers[&a].ip, ep_a.ip, "a keeps its address");
    assert_eq!(net.published(&b)[0].host_port, port);

    // a new container takes c's freed address, not a's
    let d = lab.container_id(4);
    let d_ns = net.create_sandbox(&d).await.expect("d");
    let ep_d = net.connect(&d, req("d", "app")).await.expect("connect d");
    lab.track_veth(&ep_d.host_ifname);
    assert_eq!(ep_d.ip, ep_c.ip);
    // a's veth is back on the re-created bridge; names still resolve
    let out =
        in_sandbox(&d_ns, &["ping", "-c", "1", "-W", "3", &ep_a.ip.to_string()]).expect("ping");
    assert!(
        out.status.success(),
        "ping a after restart:\n{}",
        text(&out)
    );
    let t = eventually(Duration::from_secs(5), || {
        let o = in_sandbox(&d_ns, &["nslookup", "a", &gw.to_string()])?;
        let t = text(&o);
        if t.contains(&ep_a.ip.to_string()) {
            Ok(t)
        } else {
            anyhow::bail!("{t}")
        }
    });
    assert!(t.is_ok(), "dns after restart: {t:?}");
    // the published port still works and is still held
    let body = eventually(Duration::from_secs(10), || {
        http_get((std::net::Ipv4Addr::LOCALHOST, port))
    })
    .expect("fetch");
    assert!(body.contains("still here"), "{body}");
    let err = net
        .publish(
            &d,
            &[PortSpec {
                host_ip: None,
                host_port: port,
                container_port: 80,
                proto: Proto::Tcp,
            }],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("by another container: b"), "{err}");
    assert!(
        std::net::TcpListener::bind(("0.0.0.0", port)).is_err(),
        "port re-reserved"
    );

    // a second reopen without changes is a no-op for the kernel
    net.shutdown().await;
    drop(net);
    let rules = lab.nft_table();
    let net = NetworkManager::open(config(&lab)).await.expect("reopen 2");
    assert_eq!(lab.nft_table(), rules);
    drop(a_ns);
    for id in [&a, &b, &d] {
        net.remove_sandbox(id).await.expect("remove");
    }
    net.remove_sandbox(&c)
        .await
        .expect("remove forgotten sandbox is fine");
    net.remove_network("app").await.expect("remove network");
    assert!(!link_exists(&bridge));
    net.shutdown().await;
}
