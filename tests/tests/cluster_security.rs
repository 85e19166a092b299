//! Cluster security on lab hosts, with the real binaries: a join token with a wrong secret, a
//! token for another CA, a worker token given to `flotilla-controller join` (also relabelled as
//! a manager token), a manager token given to an agent, and a rotated worker token are all
//! refused with a clear message (the joiner exits non-zero and no node is created), while the
//! new token works. On the API port, a client without a certificate is UNAUTHENTICATED, one with
//! a certificate of another CA fails the TLS handshake, and a worker's own node certificate is
//! denied the Control API. A worker removed with `node rm --force` is refused its session from
//! then on and never comes back READY.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_tests::agent::text;
use flotilla_tests::cluster::{files_containing, json_items, ClusterLab};

static SERIAL: Mutex<()> = Mutex::new(());

/// A token like `token` whose secret is random (same format, same CA digest and role).
fn other_secret(token: &str) -> String {
    let (head, secret) = token.rsplit_once('-').expect("a token has dashes");
    let mut s: String = std::iter::repeat_with(|| {
        let n = rand_u8() % 36;
        char::from_digit(n as u32, 36).unwrap_or('0')
    })
    .take(secret.len())
    .collect();
    if s == secret {
        s.replace_range(0..1, if secret.starts_with('a') { "b" } else { "a" });
    }
    format!("{head}-{s}")
}

fn rand_u8() -> u8 {
    let mut b = [0u8; 1];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("read /dev/urandom");
    b[0]
}

fn node_count(lab: &ClusterLab) -> Result<usize> {
    Ok(json_items(&lab.cli_ok(&["node", "ls", "--format", "json"])?)?.len())
}

/// Expects the agent joining on `host` with `token` to exit non-zero with `needle` in its log.
fn agent_join_refused(lab: &mut ClusterLab, host: u8, token: &str, needle: &str) -> Result<String> {
    lab.spawn_agent_join(host, 1, token)?;
    let code = lab.wait_agent_exit(host, Duration::from_secs(30))?;
    let log = lab.agent_log(host);
    assert!(
        code.is_some_and(|c| c != 0),
        "the agent must exit non-zero, exited {code:?}: {log}"
    );
    assert!(log.contains(needle), "expected {needle:?} in:\n{log}");
    eprintln!(
        "refused agent join: {}",
        log.lines()
            .rfind(|l| l.contains(needle))
            .unwrap_or_default()
    );
    // A fresh state for the next attempt (a refused join leaves no membership behind).
    let cluster_dir = lab
        .agent_state_dir(host)
        .join("cluster")
        .join("tls")
        .join("current");
    assert!(!cluster_dir.exists(), "a refused join stored a certificate");
    let _ = std::fs::remove_file(lab.agent_socket(host));
    Ok(log)
}

fn manager_join_refused(lab: &mut ClusterLab, host: u8, token: &str, needle: &str) -> Result<()> {
    lab.spawn_manager_join(host, 1, token)?;
    let code = lab.wait_manager_exit(host, Duration::from_secs(30))?;
    let log = lab.manager_log(host);
    assert!(
        code.is_some_and(|c| c != 0),
        "the manager must exit non-zero, exited {code:?}: {log}"
    );
    assert!(log.contains(needle), "expected {needle:?} in:\n{log}");
    eprintln!(
        "refused manager join: {}",
        log.lines()
            .rfind(|l| l.contains(needle))
            .unwrap_or_default()
    );
    Ok(())
}

#[test]
fn join_tokens_are_checked() -> Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = ClusterLab::new(4)?;
    lab.scenario(|lab| {
        lab.init(1, &[])?;
        let worker = lab.worker_token().to_string();
        let manager = lab.manager_token().to_string();
        assert_eq!(node_count(lab)?, 1);

        // Right format and CA, wrong secret.
        agent_join_refused(lab, 2, &other_secret(&worker), "refused to join")?;
        // A token for another CA: the agent refuses the controller before sending it.
        let digest = worker.split('-').nth(2).context("token digest")?;
        let other_ca = worker.replace(digest, &"0".repeat(digest.len()));
        agent_join_refused(lab, 2, &other_ca, "digest does not match")?;
        // A manager token given to an agent.
        agent_join_refused(lab, 2, &manager, "this is a manager token")?;
        // A worker token given to a manager, as is and relabelled as a manager token: the role
        // letter grants nothing.
        manager_join_refused(lab, 4, &worker, "this is a worker token")?;
        let _ = std::fs::remove_dir_all(lab.dir().join("h4").join("controller"));
        let relabelled = worker.replacen("-w-", "-m-", 1);
        assert_ne!(relabelled, worker);
        manager_join_refused(lab, 4, &relabelled, "refused")?;
        assert_eq!(node_count(lab)?, 1, "no node joined with a bad token");

        // Rotation: the old worker token stops working, the new one works.
        let out = lab.cli_ok(&["cluster", "join-token", "--rotate", "-q", "worker"])?;
        let rotated = out.trim().to_string();
        assert_ne!(rotated, worker);
        assert!(rotated.starts_with("FLTKN-1-"), "{rotated}");
        assert_eq!(
            lab.cli_ok(&["cluster", "join-token", "-q", "manager"])?
                .trim(),
            manager,
            "rotating the worker token leaves the manager token alone"
        );
        agent_join_refused(lab, 2, &worker, "refused to join")?;
        assert_eq!(node_count(lab)?, 1);
        lab.add_worker_with_token(3, 1, &rotated)?;
        assert_eq!(node_count(lab)?, 2);

        // The tokens are credentials: the raft log and snapshots hold them sealed only.
        for t in [&worker, &rotated, &manager] {
            let secret = t.rsplit('-').next().context("token secret")?;
            let found = files_containing(&lab.controller_dir(1), secret.as_bytes());
            assert!(found.is_empty(), "join token in clear in {found:?}");
        }
        Ok(())
    })
}

/// Calls `Control.GetCluster` on `addr` from inside network namespace `ns` over TLS verified
/// against `ca_pem`, presenting no client certificate.
fn get_cluster_without_cert(ns: &str, addr: &str, ca_pem: &str) -> Result<tonic::Status> {
    let (ns, addr, ca_pem) = (ns.to_string(), addr.to_string(), ca_pem.to_string());
    std::thread::spawn(move || -> Result<tonic::Status> {
        // This thread only: the test process stays in its own namespace.
        let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let cfg = flotilla_pki::client_config(&ca_pem, None)?;
            let mut c = flotilla_proto::control::v1::control_client::ControlClient::new(
                flotilla_pki::channel(&addr, cfg),
            );
            match tokio::time::timeout(
                Duration::from_secs(20),
                c.get_cluster(flotilla_proto::control::v1::GetClusterRequest {}),
            )
            .await
            {
                Ok(Ok(_)) => bail!("GetCluster without a client certificate succeeded"),
                Ok(Err(s)) => Ok(s),
                Err(_) => bail!("GetCluster without a client certificate hung"),
            }
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

fn self_signed(dir: &Path) -> Result<()> {
    let o = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=intruder/O=elsewhere"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .context("run openssl (apt-get install -y openssl)")?;
    if !o.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

#[test]
fn certificates_are_checked_and_removed_nodes_refused() -> Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = ClusterLab::new(2)?;
    lab.scenario(|lab| {
        lab.init(1, &[])?;
        lab.add_worker(2, 1)?;
        let admin = lab.admin_context_dir()?;
        let ca_pem = std::fs::read_to_string(admin.join("ca.pem"))?;

        // No client certificate: UNAUTHENTICATED.
        let s = get_cluster_without_cert(&lab.netns(1), &lab.manager_addr(1), &ca_pem)?;
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains("no client certificate"), "{s:?}");

        // A certificate of another CA: the TLS handshake fails, nothing is answered.
        let intruder = lab.dir().join("intruder");
        std::fs::create_dir_all(&intruder)?;
        self_signed(&intruder)?;
        let cfg = lab.dir().join("intruder-cli");
        let ctx = |name: &str, cert: &Path, key: &Path| -> Result<()> {
            let o = lab.cli_config(
                1,
                &cfg,
                None,
                &[
                    "context",
                    "create",
                    name,
                    "--controller",
                    &lab.manager_addr(1),
                    "--ca",
                    admin.join("ca.pem").to_str().context("path")?,
                    "--cert",
                    cert.to_str().context("path")?,
                    "--key",
                    key.to_str().context("path")?,
                ],
            )?;
            if !o.status.success() {
                bail!("context create {name}: {}", text(&o));
            }
            Ok(())
        };
        ctx(
            "intruder",
            &intruder.join("cert.pem"),
            &intruder.join("key.pem"),
        )?;
        let o = lab.cli_config(1, &cfg, Some("intruder"), &["node", "ls"])?;
        assert!(!o.status.success(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        eprintln!("a certificate of another CA: {err}");
        assert!(err.contains("cannot reach the cluster"), "{err}");
        assert!(o.stdout.is_empty(), "{}", text(&o));

        // The worker's own node certificate: a valid identity, but not an admin one.
        let tls = lab
            .agent_state_dir(2)
            .join("cluster")
            .join("tls")
            .join("current");
        ctx("worker", &tls.join("node.crt"), &tls.join("node.key"))?;
        for args in [
            &["node", "ls"][..],
            &["cluster", "join-token", "-q", "manager"][..],
            &["service", "create", "--name", "x", "busybox:latest"][..],
        ] {
            let o = lab.cli_config(1, &cfg, Some("worker"), args)?;
            assert!(!o.status.success(), "{args:?}: {}", text(&o));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("a worker certificate cannot use the cluster API"),
                "{args:?}: {err}"
            );
            assert!(o.stdout.is_empty(), "{args:?}: {}", text(&o));
        }

        // node rm --force: the agent's session is refused from then on.
        let node = lab.node_of_host(2)?;
        lab.cli_ok(&["node", "rm", "--force", &node])?;
        let gone = |lab: &ClusterLab| -> Result<()> {
            let nodes = json_items(&lab.cli_ok(&["node", "ls", "--format", "json"])?)?;
            if nodes
                .iter()
                .any(|n| n["ID"].as_str() == Some(node.as_str()))
            {
                bail!("node {node} still listed: {nodes:?}");
            }
            Ok(())
        };
        gone(lab)?;
        // The live session is ended by the manager...
        lab.eventually(Duration::from_secs(10), || {
            if lab
                .agent_log(2)
                .contains(&format!("node {node} was removed from the cluster"))
            {
                Ok(())
            } else {
                bail!("the agent's session was not ended")
            }
        })?;
        // ...and a restarted agent (same certificate) is refused.
        lab.restart_agent(2)?;
        lab.eventually(Duration::from_secs(20), || {
            let log = lab.agent_log(2);
            if log.contains(&format!("node {node} is not a member of this cluster")) {
                Ok(())
            } else {
                bail!("no refusal in the agent's log yet")
            }
        })?;
        // Several reconnection attempts later it is still not back.
        std::thread::sleep(Duration::from_secs(5));
        gone(lab)?;
        assert!(
            lab.agent_running(2),
            "the agent keeps running (it serves its own node)"
        );
        Ok(())
    })
}
