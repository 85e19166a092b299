//! Bridges are isolated from each other; an internal network talks only inside itself.
use flotilla_agent::network::{CreateNetwork, EndpointRequest, NetConfig, NetworkManager};
use flotilla_tests::network::{in_sandbox, text, NetLab};

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

fn ping(ns: &std::path::Path, ip: std::net::Ipv4Addr) -> (bool, String) {
    let out = in_sandbox(ns, &["ping", "-c", "1", "-W", "1", &ip.to_string()]).expect("ping");
    (out.status.success(), text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_are_isolated_and_internal_stays_inside() {
    let lab = NetLab::new().expect("lab");
    let net = NetworkManager::open(config(&lab)).await.expect("open");
    net.create_network(CreateNetwork {
        name: "app".into(),
        ..Default::default()
    })
    .await
    .expect("app");
    let int = net
        .create_network(CreateNetwork {
            name: "int".into(),
            internal: true,
            ..Default::default()
        })
        .await
        .expect("int");
    assert!(int.internal);

    let mut sandboxes = Vec::new();
    let mut eps = Vec::new();
    for (n, (name, network)) in [
        ("plain", "bridge"),
        ("u", "app"),
        ("i1", "int"),
        ("i2", "int"),
    ]
    .iter()
    .enumerate()
    {
        let id = lab.container_id(n as u32);
        let ns = net.create_sandbox(&id).await.expect("sandbox");
        let ep = net
            .connect(
                &id,
                EndpointRequest {
                    container_name: name.to_string(),
                    network: network.to_string(),
                    ..Default::default()
                },
            )
            .await
            .expect("connect");
        lab.track_veth(&ep.host_ifname);
        sandboxes.push((id, ns));
        eps.push(ep);
    }
    let (plain, u, i1, i2) = (&eps[0], &eps[1], &eps[2], &eps[3]);

    // same bridge: fine; own gateway: fine
    let (ok, out) = ping(&sandboxes[2].1, i2.ip);
    assert!(ok, "internal neighbours must reach each other:\n{out}");
    let (ok, out) = ping(&sandboxes[1].1, u.gateway);
    assert!(ok, "gateway unreachable:\n{out}");
    // another bridge: dropped by the forward chain even though a route exists
    let (ok, out) = ping(&sandboxes[1].1, plain.ip);
    assert!(!ok, "app reached the default bridge:\n{out}");
    let (ok, out) = ping(&sandboxes[0].1, u.ip);
    assert!(!ok, "the default bridge reached app:\n{out}");
    // internal: no default route, no masquerade, forward drops both ways
    assert!(!i1.default_route);
    let out = in_sandbox(&sandboxes[2].1, &["ip", "route"]).expect("ip route");
    assert!(!text(&out).contains("default"), "{}", text(&out));
    let table = lab.nft_table();
    let bridge = int.bridge.expect("bridge");
    assert!(
        table.contains(&format!(
            "iifname \"{bridge}\" oifname != \"{bridge}\" drop"
        )),
        "{table}"
    );
    assert!(
        !table.contains(&format!("{} oifname", int.subnet.expect("subnet"))),
        "internal subnet is masqueraded:\n{table}"
    );
    let (ok, out) = ping(&sandboxes[0].1, i1.ip);
    assert!(
        !ok,
        "the default bridge reached an internal network:\n{out}"
    );

    for (id, _) in &sandboxes {
        net.remove_sandbox(id).await.expect("remove");
    }
    net.remove_network("app").await.expect("rm app");
    net.remove_network("int").await.expect("rm int");
    net.shutdown().await;
}
