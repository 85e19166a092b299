//! Bad requests are refused with messages that say what is wrong and what to do, and leave
//! nothing behind.
use flotilla_agent::network::{
    CreateNetwork, EndpointRequest, NetConfig, NetworkManager, PortSpec, Proto,
};
use flotilla_tests::network::{link_exists, NetLab};

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

fn create(name: &str, subnet: Option<String>) -> CreateNetwork {
    CreateNetwork {
        name: name.into(),
        driver: "bridge".into(),
        subnet,
        ..Default::default()
    }
}

fn err<T: std::fmt::Debug>(r: Result<T, flotilla_agent::network::NetError>) -> String {
    r.expect_err("expected an error").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_errors() {
    let lab = NetLab::new().expect("lab");
    let net = NetworkManager::open(config(&lab)).await.expect("open");
    let names: Vec<String> = net.list().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["bridge", "host", "none"]);

    let app = net
        .create_network(create("app", Some(lab.subnet(128, 27))))
        .await
        .expect("create app");
    assert_eq!(app.gateway, Some(lab.ip(129)));

    // networks
    let e = err(net.create_network(create("app", None)).await);
    assert!(e.starts_with("a network named app already exists"), "{e}");
    let e = err(net.create_network(create("none", None)).await);
    assert!(e.starts_with("a network named none already exists"), "{e}");
    let e = err(net
        .create_network(create("other", Some(lab.subnet(128, 26))))
        .await);
    assert_eq!(
        e,
        format!(
            "subnet {} overlaps subnet {} of network app; choose another subnet",
            lab.subnet(128, 26),
            lab.subnet(128, 27)
        )
    );
    let e = err(net
        .create_network(create("other", Some(lab.subnet(0, 28))))
        .await);
    assert!(e.contains("of network bridge"), "{e}");
    let e = err(net
        .create_network(create("other", Some(format!("10.250.{}.161/27", lab.x))))
        .await);
    assert!(
        e.contains(&format!("did you mean {}?", lab.subnet(160, 27))),
        "{e}"
    );
    let e = err(net
        .create_network(create("other", Some("10.250.300.0/24".into())))
        .await);
    assert!(e.starts_with("invalid subnet \"10.250.300.0/24\""), "{e}");
    let e = err(net.create_network(create("bad name", None)).await);
    assert!(e.starts_with("invalid network name \"bad name\""), "{e}");
    let e = err(net
        .create_network(CreateNetwork {
            gateway: Some(lab.ip(1).to_string()),
            ..create("other", Some(lab.subnet(160, 27)))
        })
        .await);
    assert!(e.contains("is outside subnet"), "{e}");
    let e = err(net
        .create_network(CreateNetwork {
            driver: "overlay".into(),
            ..create("other", None)
        })
        .await);
    assert_eq!(
        e,
        "network driver \"overlay\" is not supported here (supported: bridge)"
    );
    let e = err(net.inspect("ap"));
    assert_eq!(e, "network ap not found (did you mean app?)");
    let e = err(net.inspect("zzzzzzzz"));
    assert_eq!(e, "network zzzzzzzz not found");
    assert_eq!(net.list().len(), 4, "refused creates leave nothing");

    // endpoints
    let a = lab.container_id(1);
    let e = err(net
        .connect(
            &a,
            EndpointRequest {
                network: "app".into(),
                ..Default::default()
            },
        )
        .await);
    assert!(e.contains("has no network sandbox"), "{e}");
    net.create_sandbox(&a).await.expect("sandbox");
    let e = err(net
        .connect(
            &a,
            EndpointRequest {
                network: "host".into(),
                ..Default::default()
            },
        )
        .await);
    assert!(
        e.starts_with("network host (host) cannot be connected to"),
        "{e}"
    );
    let e = err(net
        .connect(
            &a,
            EndpointRequest {
                network: "app".into(),
                ip: Some(lab.ip(5)),
                ..Default::default()
            },
        )
        .await);
    assert_eq!(
        e,
        format!(
            "address {} is outside subnet {} of network app",
            lab.ip(5),
            lab.subnet(128, 27)
        )
    );
    let e = err(net
        .connect(
            &a,
            EndpointRequest {
                network: "app".into(),
                ip: Some(lab.ip(129)),
                ..Default::default()
            },
        )
        .await);
    assert!(e.contains("is the gateway"), "{e}");
    let e = err(net
        .connect(
            &a,
            EndpointRequest {
                network: "app".into(),
                aliases: vec!["-x".into()],
                ..Default::default()
            },
        )
        .await);
    assert!(e.starts_with("invalid alias \"-x\""), "{e}");
    let e = err(net
        .connect(
            &a,
            EndpointRequest {
                network: "apps".into(),
                ..Default::default()
            },
        )
        .await);
    assert!(e.contains("did you mean app?"), "{e}");
    let ep = net
        .connect(
            &a,
            EndpointRequest {
                container_name: "a".into(),
                network: "app".into(),
                ip: Some(lab.ip(140)),
                aliases: vec![],
            },
        )
        .await
        .expect("connect a");
    lab.track_veth(&ep.host_ifname);
    let e = err(net
        .connect(
            &a,
            EndpointRequest {
                network: "app".into(),
                ..Default::default()
            },
        )
        .await);
    assert!(e.contains("is already connected to network app"), "{e}");
    let b = lab.container_id(2);
    net.create_sandbox(&b).await.expect("sandbox b");
    let e = err(net
        .connect(
            &b,
            EndpointRequest {
                network: "app".into(),
                ip: Some(lab.ip(140)),
                ..Default::default()
            },
        )
        .await);
    assert_eq!(
        e,
        format!(
            "address {} on network app is already in use by container a; choose another address",
            lab.ip(140)
        )
    );
    let e = err(net
        .publish(
            &b,
            &[PortSpec {
                host_ip: None,
                host_port: 0,
                container_port: 80,
                proto: Proto::Tcp,
            }],
        )
        .await);
    assert!(
        e.contains("has no endpoint on a non-internal bridge network"),
        "{e}"
    );
    let e = err(net.disconnect(&b, "app").await);
    assert!(e.contains("is not connected to network app"), "{e}");

    // removal
    let e = err(net.remove_network("app").await);
    assert_eq!(
        e,
        "network app is in use by container(s) a; disconnect or remove them first"
    );
    for name in ["bridge", "host", "none"] {
        let e = err(net.remove_network(name).await);
        assert_eq!(
            e,
            format!("network {name} is predefined and cannot be removed")
        );
    }
    let e = err(net.remove_network("nope").await);
    assert!(e.starts_with("network nope not found"), "{e}");

    // the pool runs out: 4 /27s in a /25, app holds one
    for n in 0..3 {
        net.create_network(create(&format!("auto{n}"), None))
            .await
            .expect("auto");
    }
    let e = err(net.create_network(create("auto3", None)).await);
    assert_eq!(
        e,
        format!(
            "no free /27 subnet left in pool {}; remove unused networks or pass a subnet",
            lab.pool()
        )
    );

    net.remove_sandbox(&a).await.expect("remove a");
    net.remove_sandbox(&b).await.expect("remove b");
    let bridges: Vec<String> = net.list().into_iter().filter_map(|n| n.bridge).collect();
    for name in ["app", "auto0", "auto1", "auto2"] {
        net.remove_network(name).await.expect("remove");
    }
    for b in bridges
        .iter()
        .filter(|b| b.starts_with(&lab.bridge_prefix()))
    {
        assert!(!link_exists(b), "bridge {b} left");
    }
    net.shutdown().await;
}
