//! Node certificates on lab hosts, with the real binaries.
//!
//! - The agent's TCP API of a cluster member speaks mutual TLS: the `flotilla` CLI reaches it
//!   with the admin context (implicitly for a non-loopback `-H tcp://`) or with
//!   `--tlscacert/--tlscert/--tlskey`; without a client certificate, with a worker's node
//!   certificate, trusting another CA, presenting a certificate of another CA, or in plain text
//!   it is refused, each with a message that says why.
//! - With 30 s certificates every manager and agent renews at two thirds, without a restart:
//!   the serial changes on disk and in `node inspect`, and once every first certificate has
//!   expired and every TCP connection of the lab was reset (so each one is re-established with a
//!   fresh handshake), writes go through each manager (raft between the managers included: with
//!   two, every commit needs both), the agent's session comes back (a new task runs on it) and its
//!   TCP API answers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use flotilla_pki::{NodeTls, NodeTlsFiles};
use flotilla_tests::agent::text;
use flotilla_tests::cluster::{json_items, ClusterLab};

static SERIAL: Mutex<()> = Mutex::new(());

/// Port of the agents' TCP API in these tests.
const AGENT_TCP_PORT: u16 = 2378;

fn self_signed(dir: &Path, cn: &str) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let o = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}/O=elsewhere")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("run openssl (apt-get install -y openssl)")?;
    if !o.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok((cert, key))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("lab paths are UTF-8")
}

/// Runs `flotilla ARGS` on host 1 with the config dir `config`; expects a failure whose stderr
/// contains `needle`, and returns that stderr.
fn refused(lab: &ClusterLab, config: &Path, args: &[&str], needle: &str) -> Result<String> {
    let o = lab.cli_config(1, config, None, args)?;
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} succeeded: {}", text(&o));
    assert!(o.stdout.is_empty(), "{args:?} printed: {}", text(&o));
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in: {err}"
    );
    eprintln!("refused as expected: {}", err.trim());
    Ok(err)
}

#[test]
fn agent_tcp_api_speaks_mutual_tls() -> Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = ClusterLab::new(2)?;
    lab.scenario(|lab| {
        lab.init(1, &[])?;
        let tcp = format!("{}:{AGENT_TCP_PORT}", lab.addr(2));
        lab.set_agent_args(2, &["--tcp", &tcp]);
        lab.add_worker(2, 1)?;
        let o = lab.agent_cli(
            2,
            &[
                "run",
                "-d",
                "--name",
                "probe",
                "busybox:latest",
                "sleep",
                "300",
            ],
        )?;
        assert!(o.status.success(), "run on the worker: {}", text(&o));
        let host = format!("tcp://{tcp}");
        let ps = ["-H", host.as_str(), "ps", "--format", "{{.Names}}"];

        // The admin context `init` wrote (current in the lab's config dir): used implicitly for
        // a non-loopback tcp:// address.
        let o = lab.cli_on(1, &ps)?;
        assert!(
            o.status.success(),
            "ps with the admin context: {}",
            text(&o)
        );
        assert!(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "probe"),
            "{}",
            text(&o)
        );

        // The same with explicit files and no context at all.
        let admin = lab.admin_context_dir()?;
        let (ca, cert, key) = (
            admin.join("ca.pem"),
            admin.join("cert.pem"),
            admin.join("key.pem"),
        );
        let empty = lab.dir().join("no-contexts");
        std::fs::create_dir_all(&empty)?;
        let with = |ca: &Path, client: Option<(&Path, &Path)>| {
            let mut a = vec![
                "-H".to_string(),
                host.clone(),
                "--tlscacert".into(),
                path(ca).into(),
            ];
            if let Some((c, k)) = client {
                a.extend(["--tlscert".into(), path(c).into()]);
                a.extend(["--tlskey".into(), path(k).into()]);
            }
            a.extend(["ps".into(), "--format".into(), "{{.Names}}".into()]);
            a
        };
        let args = with(&ca, Some((&cert, &key)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = lab.cli_config(1, &empty, None, &args)?;
        assert!(o.status.success(), "ps with the files: {}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "probe");

        // No client certificate.
        let args = with(&ca, None);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = refused(lab, &empty, &args, "no client certificate")?;
        assert!(err.contains("give --tlscert and --tlskey"), "{err}");

        // A worker's node certificate: a valid identity of the cluster, not an admin.
        let node = lab
            .agent_state_dir(2)
            .join("cluster")
            .join("tls")
            .join("current");
        let args = with(&ca, Some((&node.join("node.crt"), &node.join("node.key"))));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(
            lab,
            &empty,
            &args,
            "a worker certificate cannot drive another node's agent",
        )?;

        // Trusting another CA: the agent's certificate does not verify.
        let (other_ca, _) = self_signed(&lab.dir().join("other-ca"), "other-ca")?;
        let args = with(&other_ca, Some((&cert, &key)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(
            lab,
            &empty,
            &args,
            "was not issued by the CA the CLI trusts",
        )?;

        // Presenting a certificate of another CA: the agent refuses the handshake.
        let (icert, ikey) = self_signed(&lab.dir().join("intruder"), "intruder")?;
        let args = with(&ca, Some((&icert, &ikey)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(lab, &empty, &args, "refused the client certificate")?;

        // Plain text to the TLS port.
        refused(
            lab,
            &empty,
            &["-H", &host, "--tls=false", "ps"],
            "connect with --tls",
        )?;
        // Neither files nor a context.
        refused(lab, &empty, &["-H", &host, "ps"], "needs mutual TLS")?;
        Ok(())
    })
}

/// The certificate in a node's TLS directory.
fn on_disk(dir: PathBuf) -> Result<NodeTls> {
    NodeTlsFiles::new(&dir)
        .load()?
        .with_context(|| format!("no certificate in {}", dir.display()))
}

fn manager_node_id(lab: &ClusterLab, i: u8) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.controller_dir(i).join("manager.json"))?)?;
    v["node_id"]
        .as_str()
        .map(str::to_string)
        .context("manager.json has no node_id")
}

/// The certificate serial `node inspect` shows for `node`.
fn inspected_serial(lab: &ClusterLab, node: &str) -> Result<String> {
    let out = lab.cli_ok(&["node", "inspect", node])?;
    let v = json_items(&out)?;
    let n = v.first().context("node inspect printed nothing")?;
    n.pointer("/CertSerial")
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .with_context(|| format!("no CertSerial in {n}"))
}

#[test]
fn certificates_renew_before_expiry_without_a_restart() -> Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let mut lab = ClusterLab::new(3)?;
    lab.scenario(|lab| {
        lab.init(1, &["--cert-expiry", "30s", "--unsafe-short-cert-expiry"])?;
        lab.join_manager(2, 1)?;
        let tcp = format!("{}:{AGENT_TCP_PORT}", lab.addr(3));
        lab.set_agent_args(3, &["--tcp", &tcp]);
        lab.add_worker(3, 1)?;
        let dirs = [
            ("manager 1", lab.controller_dir(1).join("tls")),
            ("manager 2", lab.controller_dir(2).join("tls")),
            (
                "worker 3",
                lab.agent_state_dir(3).join("cluster").join("tls"),
            ),
        ];
        let nodes = [
            manager_node_id(lab, 1)?,
            manager_node_id(lab, 2)?,
            lab.node_of_host(3)?,
        ];
        let mut first = Vec::new();
        for (what, dir) in &dirs {
            let tls = on_disk(dir.clone())?;
            let life = tls.not_after.duration_since(tls.issued_at())?;
            assert_eq!(
                life,
                Duration::from_secs(30),
                "{what}: the cluster's validity"
            );
            first.push(tls);
        }
        // Every first certificate expires; meanwhile each node renews (at 20 s) and the new
        // serial shows on disk and in `node inspect`.
        let last_expiry = first
            .iter()
            .map(|t| t.not_after)
            .max()
            .context("no nodes")?;
        for (((what, dir), node), old) in dirs.iter().zip(&nodes).zip(&first) {
            lab.eventually(Duration::from_secs(40), || {
                let now = on_disk(dir.clone())?;
                if now.identity.serial == old.identity.serial {
                    bail!("{what} still has its first certificate");
                }
                assert_eq!(now.identity.node_id, old.identity.node_id, "{what}");
                assert_eq!(now.identity.role, old.identity.role, "{what}");
                let shown = inspected_serial(lab, node)?;
                // The disk and the record agree (a renewal may land between the two reads).
                if shown != now.identity.serial && shown != on_disk(dir.clone())?.identity.serial {
                    bail!(
                        "{what}: node inspect shows {shown}, the disk {}",
                        now.identity.serial
                    );
                }
                eprintln!("{what}: serial {} -> {shown}", old.identity.serial);
                Ok(())
            })?;
        }
        if let Ok(left) = last_expiry.duration_since(SystemTime::now()) {
            std::thread::sleep(left + Duration::from_secs(1));
        }
        eprintln!(
            "every first certificate expired ({:?} into the test)",
            started.elapsed()
        );
        // New handshakes everywhere: managers to each other, the agent to the leader.
        for i in 1..=3 {
            lab.reset_connections(i)?;
        }

        // Writes through each manager (with two managers, each commit needs both).
        lab.cli_ok(&[
            "service",
            "create",
            "--name",
            "after",
            "--replicas",
            "1",
            "busybox:latest",
            "sleep",
            "300",
        ])?;
        lab.use_manager(2)?;
        lab.node_update(3, &["--label-add", "renewed=yes"])?;
        lab.use_manager(0)?;
        // The agent's session is back: the new service's task runs on the worker...
        lab.wait_running("after", &[(3, 1)], Duration::from_secs(20))?;
        // ...and its TCP API answers with its renewed certificate.
        let host = format!("tcp://{tcp}");
        let o = lab.cli_on(1, &["-H", &host, "ps", "--format", "{{.Names}}"])?;
        assert!(o.status.success(), "the agent's TCP API: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("after"),
            "{}",
            text(&o)
        );
        // Nobody was restarted.
        for i in 1..=2 {
            assert!(lab.manager_running(i), "manager {i} exited");
            assert_eq!(
                lab.manager_log(i).matches("manager started").count(),
                1,
                "manager {i} started more than once"
            );
            assert!(
                lab.manager_log(i)
                    .contains("renewed this manager's certificate"),
                "manager {i}"
            );
        }
        assert!(lab.agent_running(3), "the agent exited");
        assert!(lab.agent_log(3).contains("node certificate renewed"));
        eprintln!("done {:?} into the test", started.elapsed());
        Ok(())
    })
}

/// Why managers issue their own certificates: one stopped past its certificate's expiry renews
/// it at start, from the CA key in its own state, before anyone could accept its handshakes
/// again (via the leader it would need a valid certificate to ask).
#[test]
fn a_manager_stopped_past_expiry_renews_at_start() -> Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut lab = ClusterLab::new(1)?;
    lab.scenario(|lab| {
        lab.init(1, &["--cert-expiry", "20s", "--unsafe-short-cert-expiry"])?;
        lab.cli_ok(&["node", "ls"])?;
        lab.stop_manager(1)?;
        let dir = lab.controller_dir(1).join("tls");
        let stopped = on_disk(dir.clone())?;
        if let Ok(left) = stopped.not_after.duration_since(SystemTime::now()) {
            std::thread::sleep(left + Duration::from_secs(1));
        }
        assert!(
            on_disk(dir.clone())?.not_after < SystemTime::now(),
            "expired while stopped"
        );
        lab.restart_manager(1)?;
        let node = manager_node_id(lab, 1)?;
        // The CLI verifies the manager's certificate at every handshake: it gets through only
        // once the manager presents a valid one.
        lab.eventually(Duration::from_secs(15), || {
            let shown = inspected_serial(lab, &node)?;
            let now = on_disk(dir.clone())?;
            if now.identity.serial == stopped.identity.serial {
                bail!("still the expired certificate on disk");
            }
            if shown != now.identity.serial {
                bail!(
                    "node inspect shows {shown}, the disk {}",
                    now.identity.serial
                );
            }
            Ok(())
        })?;
        assert!(lab
            .manager_log(1)
            .contains("renewed this manager's certificate"));
        Ok(())
    })
}
