//! Two sandboxes on a user-defined network reach each other by address and find each other by
//! name, id and alias through the embedded DNS on the gateway.
use std::time::Duration;

use flotilla_agent::network::{CreateNetwork, EndpointRequest, NetConfig, NetworkManager};
use flotilla_tests::network::{eventually, in_sandbox, text, NetLab};

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

fn nslookup(sandbox: &std::path::Path, name: &str, server: &str) -> String {
    let out = in_sandbox(sandbox, &["nslookup", name, server]).expect("nslookup");
    text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_on_a_user_network_ping_and_resolve_each_other() {
    let lab = NetLab::new().expect("lab");
    let net = NetworkManager::open(config(&lab)).await.expect("open");
    let info = net
        .create_network(CreateNetwork {
            name: "app".into(),
            driver: "bridge".into(),
            ..Default::default()
        })
        .await
        .expect("create network");
    let gw = info.gateway.expect("gateway").to_string();
    assert_eq!(
        info.subnet.expect("subnet").to_string(),
        lab.subnet(128, 27),
        "first /27 of the pool"
    );

    let (web_id, db_id) = (lab.container_id(1), lab.container_id(2));
    let web_ns = net.create_sandbox(&web_id).await.expect("sandbox web");
    let db_ns = net.create_sandbox(&db_id).await.expect("sandbox db");
    let web = net
        .connect(
            &web_id,
            EndpointRequest {
                container_name: "web".into(),
                network: "app".into(),
                ip: None,
                aliases: vec!["frontend".into()],
            },
        )
        .await
        .expect("connect web");
    lab.track_veth(&web.host_ifname);
    let db = net
        .connect(
            &db_id,
            EndpointRequest {
                container_name: "db".into(),
                network: "app".into(),
                ip: Some(lab.ip(150)),
                aliases: vec!["postgres.internal".into()],
            },
        )
        .await
        .expect("connect db");
    lab.track_veth(&db.host_ifname);
    assert_eq!(web.ip, lab.ip(130), "lowest free address after the gateway");
    assert_eq!(db.ip, lab.ip(150), "--ip honoured");
    assert_eq!((web.ifname.as_str(), web.prefix_len), ("eth0", 27));
    assert!(web.default_route);

    // by address, both ways
    for (ns, ip) in [(&web_ns, db.ip), (&db_ns, web.ip)] {
        let out = in_sandbox(ns, &["ping", "-c", "1", "-W", "3", &ip.to_string()]).expect("ping");
        assert!(out.status.success(), "ping {ip} failed:\n{}", text(&out));
    }
    // the sandbox sees eth0 with its MAC, and its default route via the gateway
    let out = in_sandbox(&web_ns, &["ip", "route"]).expect("ip route");
    assert!(
        text(&out).contains(&format!("default via {gw} dev eth0")),
        "{}",
        text(&out)
    );
    let out = in_sandbox(&web_ns, &["ip", "link", "show", "eth0"]).expect("ip link");
    assert!(text(&out).contains(&web.mac), "{}", text(&out));

    // by name, alias, 12-char id; case-insensitive; trailing dot
    let short_db = &db_id[..12];
    for name in ["db", "DB", "postgres.internal", short_db, "db."] {
        let out = eventually(Duration::from_secs(5), || {
            let t = nslookup(&web_ns, name, &gw);
            if t.contains(&db.ip.to_string()) {
                Ok(t)
            } else {
                anyhow::bail!("{name} not resolved:\n{t}")
            }
        })
        .expect("resolve");
        assert!(out.contains(&db.ip.to_string()));
    }
    let t = nslookup(&db_ns, "frontend", &gw);
    assert!(t.contains(&web.ip.to_string()), "alias frontend:\n{t}");
    // unknown single label: NXDOMAIN, never forwarded
    let t = nslookup(&web_ns, "nosuchcontainer", &gw);
    assert!(
        t.contains("NXDOMAIN") || t.contains("can't find"),
        "unknown name:\n{t}"
    );
    assert!(
        !t.contains(&lab.ip(0).to_string()[..9]) || !t.contains("Name:"),
        "{t}"
    );

    // the embedded DNS answers its bridge only: the host's own query is dropped by nft
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    probe
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    // a minimal query for "web" (id 0x1234, RD, one A/IN question)
    let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x01\x00\x01";
    probe
        .send_to(query, (info.gateway.expect("gateway"), 53))
        .expect("send");
    let mut buf = [0u8; 512];
    assert!(
        probe.recv_from(&mut buf).is_err(),
        "the gateway's DNS answered the host"
    );

    // the container's resolv.conf points at the embedded DNS; /etc/hosts carries its address
    let rc = net.resolv_conf(&web_id, &[]);
    assert!(rc.starts_with(&format!("nameserver {gw}\n")), "{rc}");
    let hosts = net.hosts_file(&web_id, "webhost", &[]);
    assert!(
        hosts.contains(&format!("{}\twebhost web\n", web.ip)),
        "{hosts}"
    );

    // after a disconnect the name is gone
    net.disconnect(&db_id, "app").await.expect("disconnect");
    let t = nslookup(&web_ns, "db", &gw);
    assert!(
        !t.contains(&db.ip.to_string()),
        "db still resolves after disconnect:\n{t}"
    );
    assert!(
        !flotilla_tests::network::link_exists(&db.host_ifname),
        "veth left after disconnect"
    );

    // the default bridge has no name resolution
    let plain_id = lab.container_id(3);
    net.create_sandbox(&plain_id).await.expect("sandbox");
    let ep = net
        .connect(
            &plain_id,
            EndpointRequest {
                container_name: "plain".into(),
                network: "bridge".into(),
                ..Default::default()
            },
        )
        .await
        .expect("connect default");
    lab.track_veth(&ep.host_ifname);
    assert!(!net.inspect("bridge").expect("inspect").dns);
    assert!(!net
        .resolv_conf(&plain_id, &[])
        .contains(&ep.gateway.to_string()));

    for id in [&web_id, &db_id, &plain_id] {
        net.remove_sandbox(id).await.expect("remove sandbox");
    }
    net.remove_network("app").await.expect("remove network");
    net.shutdown().await;
}
