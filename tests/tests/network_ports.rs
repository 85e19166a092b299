//! A server in a sandbox on the default bridge is reachable through its published port from the
//! host (127.0.0.1 and the gateway address) and from itself (hairpin); a taken port is refused
//! with a message naming the holder; removing the sandbox takes everything back.
use std::net::Ipv4Addr;
use std::time::Duration;

use flotilla_agent::network::{EndpointRequest, NetConfig, NetworkManager, PortSpec, Proto};
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

fn tcp(host_ip: Option<Ipv4Addr>, host_port: u16, container_port: u16) -> PortSpec {
    PortSpec {
        host_ip,
        host_port,
        container_port,
        proto: Proto::Tcp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_port_reaches_the_container_and_conflicts_are_refused() {
    let lab = NetLab::new().expect("lab");
    let net = NetworkManager::open(config(&lab)).await.expect("open");
    let www = lab.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("index.html"), "hello from the sandbox\n").expect("index");

    let id = lab.container_id(1);
    let ns = net.create_sandbox(&id).await.expect("sandbox");
    let ep = net
        .connect(
            &id,
            EndpointRequest {
                container_name: "web".into(),
                network: "bridge".into(),
                ..Default::default()
            },
        )
        .await
        .expect("connect");
    lab.track_veth(&ep.host_ifname);
    assert_eq!(ep.gateway, lab.ip(1));
    let _httpd = spawn_in_sandbox(
        &ns,
        &["httpd", "-f", "-p", "80", "-h", www.to_str().unwrap()],
    )
    .expect("httpd");

    // port 0: the agent picks a free host port
    let published = net
        .publish(&id, &[tcp(None, 0, 80)])
        .await
        .expect("publish");
    let port = published[0].host_port;
    assert_ne!(port, 0, "actual port reported");
    assert_eq!(net.published(&id), published);
    let table = lab.nft_table();
    assert!(
        table.contains(&format!("tcp dport {port} dnat to {}:80", ep.ip)),
        "{table}"
    );

    // from the host, via loopback and via the bridge gateway
    for addr in [Ipv4Addr::LOCALHOST, ep.gateway] {
        let body = eventually(Duration::from_secs(10), || http_get((addr, port))).expect("fetch");
        assert!(
            body.contains("hello from the sandbox"),
            "via {addr}:{port}:\n{body}"
        );
    }
    // hairpin: the container reaches its own published port through the host address
    let out = in_sandbox(
        &ns,
        &[
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{}:{port}/", ep.gateway),
        ],
    )
    .expect("wget");
    assert!(
        text(&out).contains("hello from the sandbox"),
        "hairpin failed:\n{}",
        text(&out)
    );

    // a second container asking for the same host port is refused, naming the first one
    let id2 = lab.container_id(2);
    net.create_sandbox(&id2).await.expect("sandbox 2");
    let ep2 = net
        .connect(
            &id2,
            EndpointRequest {
                container_name: "other".into(),
                network: "bridge".into(),
                ..Default::default()
            },
        )
        .await
        .expect("connect 2");
    lab.track_veth(&ep2.host_ifname);
    let err = net
        .publish(&id2, &[tcp(None, port, 8080)])
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("port {port}/tcp is already in use on 0.0.0.0 (by another container: web)")
    );
    let err = net
        .publish(&id2, &[tcp(Some(Ipv4Addr::LOCALHOST), port, 8080)])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("by another container: web"), "{err}");

    // a port held by a plain process on the host
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let taken = squatter.local_addr().expect("addr").port();
    let err = net
        .publish(&id2, &[tcp(None, 0, 81), tcp(None, taken, 8080)])
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("port {taken}/tcp is already in use on 0.0.0.0 (by a process on this host)")
    );
    assert!(
        net.published(&id2).is_empty(),
        "a refused publish reserves nothing"
    );
    // an address that is not the host's
    let err = net
        .publish(&id2, &[tcp(Some(Ipv4Addr::new(10, 250, lab.x, 77)), 0, 80)])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not an address of this host"), "{err}");
    // a specific host ip restricts the rule to that address
    let p2 = net
        .publish(&id2, &[tcp(Some(Ipv4Addr::LOCALHOST), 0, 8080)])
        .await
        .expect("publish 2");
    let table = lab.nft_table();
    assert!(
        table.contains(&format!(
            "ip daddr 127.0.0.1 tcp dport {} dnat to {}:8080",
            p2[0].host_port, ep2.ip
        )),
        "{table}"
    );

    // removing the sandbox takes back the veth, the rules, the reservation and the netns file
    net.remove_sandbox(&id).await.expect("remove sandbox");
    assert!(
        !link_exists(&ep.host_ifname),
        "veth {} left",
        ep.host_ifname
    );
    assert!(!ns.exists(), "netns file left");
    let table = lab.nft_table();
    assert!(
        !table.contains(&format!("dport {port} ")),
        "rule left:\n{table}"
    );
    std::net::TcpListener::bind(("0.0.0.0", port)).expect("port released");
    net.remove_sandbox(&id)
        .await
        .expect("remove_sandbox is idempotent");
    net.remove_sandbox(&id2).await.expect("remove sandbox 2");
    assert!(!lab.nft_table().contains("dnat to"), "{}", lab.nft_table());
    net.shutdown().await;
}
