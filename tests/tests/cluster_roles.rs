//! Node roles and leaving, as Swarm users know them: `node demote` takes a manager out of the
//! raft group (its process stops and deletes its state, writes keep working), and is refused
//! for the last manager and when the others would lose their quorum; `node promote` makes a
//! worker's agent renew its certificate and start a manager that joins the raft group under the
//! same node id, while the node keeps running its tasks; `cluster leave` on a worker stops its
//! tasks (the cluster replaces them elsewhere) and deletes its membership, and a manager node
//! needs --force.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_tests::agent::text;
use flotilla_tests::cluster::{json_items, ClusterLab};

/// Raft member addresses, from `cluster status --format json`.
fn members(lab: &ClusterLab) -> Result<BTreeSet<String>> {
    let v: serde_json::Value =
        serde_json::from_str(&lab.cli_ok(&["cluster", "status", "--format", "json"])?)?;
    Ok(v["Managers"]
        .as_array()
        .context("no Managers")?
        .iter()
        .filter_map(|m| m["Addr"].as_str().map(str::to_string))
        .collect())
}

fn wait_members(lab: &ClusterLab, hosts: &[u8]) -> Result<()> {
    let want: BTreeSet<String> = hosts.iter().map(|h| lab.manager_addr(*h)).collect();
    lab.eventually(Duration::from_secs(30), || {
        let got = members(lab)?;
        if got != want {
            bail!("raft members {got:?}, want {want:?}");
        }
        Ok(())
    })
}

/// The MANAGER STATUS column of a node.
fn manager_status(lab: &ClusterLab, node: &str) -> Result<String> {
    for n in json_items(&lab.cli_ok(&["node", "ls", "--format", "json"])?)? {
        if n["ID"].as_str() == Some(node) {
            return Ok(n["ManagerStatus"].as_str().unwrap_or_default().to_string());
        }
    }
    bail!("no node {node}")
}

/// Ids of the nodes `node ls --filter role=manager` lists.
fn manager_nodes(lab: &ClusterLab) -> Result<BTreeSet<String>> {
    Ok(
        json_items(&lab.cli_ok(&[
            "node",
            "ls",
            "--filter",
            "role=manager",
            "--format",
            "json",
        ])?)?
        .iter()
        .filter_map(|n| n["ID"].as_str().map(str::to_string))
        .collect(),
    )
}

fn write(lab: &ClusterLab, name: &str) -> Result<()> {
    let f = lab.dir().join("payload.txt");
    std::fs::write(&f, "payload\n")?;
    lab.cli_ok(&["config", "create", name, f.to_str().context("path")?])?;
    Ok(())
}

#[test]
fn demote_promote_and_leave() -> Result<()> {
    let mut lab = ClusterLab::new(5)?;
    lab.scenario(|lab| {
        lab.init(1, &[])?;
        lab.join_manager(2, 1)?;
        lab.join_manager(3, 1)?;
        lab.add_worker_with_image(4, 1)?;
        // Its TCP API needs the node certificate it has from now on (mutual TLS).
        let tcp4 = format!("tcp://{}:2378", lab.addr(4));
        lab.set_agent_args(4, &["--tcp", tcp4.trim_start_matches("tcp://")]);
        lab.restart_agent(4)?;
        lab.add_worker_with_image(5, 1)?;
        wait_members(lab, &[1, 2, 3])?;
        let m2 = lab.node_of_host(2)?;
        let m3 = lab.node_of_host(3)?;
        let w4 = lab.node_of_host(4)?;
        let w5 = lab.node_of_host(5)?;

        // A worker cannot be removed from the raft group it is not in, and the last manager
        // rule and the quorum rule are checked before anything is written.
        lab.kill_manager(3)?;
        // The check works on the leader's view of who answers (within two election timeouts).
        lab.eventually(Duration::from_secs(20), || {
            match manager_status(lab, &m3)?.as_str() {
                "Unreachable" => Ok(()),
                s => bail!("m3 is still {s:?}"),
            }
        })?;
        let e = lab.cli_fails(&["node", "demote", &m2])?;
        assert!(
            e.contains("quorum") && e.contains("only 1 reachable"),
            "demoting m2 with m3 down must be refused: {e}"
        );
        assert!(manager_nodes(lab)?.contains(&m2), "m2 still a manager");
        lab.restart_manager(3)?;
        wait_members(lab, &[1, 2, 3])?;
        lab.eventually(Duration::from_secs(20), || {
            match manager_status(lab, &m3)?.as_str() {
                "Reachable" | "Leader" => Ok(()),
                s => bail!("m3 is {s}"),
            }
        })?;

        // Demote m3: out of the raft group, its process exits 0 and deletes its state.
        let out = lab.cli_ok(&["node", "demote", &m3])?;
        assert!(out.contains("demoted"), "{out}");
        wait_members(lab, &[1, 2])?;
        let code = lab.wait_manager_exit(3, Duration::from_secs(30))?;
        assert_eq!(code, Some(0), "log:\n{}", lab.manager_log(3));
        assert!(
            !lab.controller_dir(3).join("manager.json").exists()
                && !lab.controller_dir(3).join("raft").exists(),
            "a removed manager deletes its raft state"
        );
        assert!(!manager_nodes(lab)?.contains(&m3));
        write(lab, "after-demote")?;

        // Two managers left: demoting one leaves one (fine), the last one is refused.
        let out = lab.cli_ok(&["node", "demote", &m2])?;
        assert!(out.contains("demoted"), "{out}");
        wait_members(lab, &[1])?;
        lab.wait_manager_exit(2, Duration::from_secs(30))?;
        let m1 = lab.node_of_host(1)?;
        let e = lab.cli_fails(&["node", "demote", &m1])?;
        assert!(e.contains("only manager"), "{e}");
        write(lab, "single-manager")?;

        // Promote worker 4: its agent renews its certificate and starts a manager that joins
        // the raft group as the same node; a replicated service keeps its task there.
        lab.cli_ok(&[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "busybox",
            "sleep",
            "3600",
        ])?;
        lab.wait_running("web", &[(4, 1), (5, 1)], Duration::from_secs(60))?;
        let before = lab.running_by_host("web")?;
        let out = lab.cli_ok(&["node", "promote", &w4])?;
        assert!(out.contains("promoted"), "{out}");
        wait_members(lab, &[1, 4])?;
        lab.eventually(Duration::from_secs(30), || {
            match manager_status(lab, &w4)?.as_str() {
                "Reachable" | "Leader" => Ok(()),
                s => bail!("w4 is {s:?}"),
            }
        })?;
        assert!(manager_nodes(lab)?.contains(&w4));
        assert_eq!(
            lab.node_state(&w4)?,
            "ready",
            "the promoted node keeps its agent session"
        );
        assert_eq!(
            lab.running_by_host("web")?,
            before,
            "tasks stay where they were"
        );
        // The new manager serves the API and replicates writes.
        lab.use_manager(4)?;
        write(lab, "via-promoted")?;
        lab.use_manager(0)?;
        let names = lab.cli_ok(&["config", "ls", "--format", "json"])?;
        assert!(names.contains("via-promoted"), "{names}");

        // Its agent's TCP API now presents the node's manager certificate, still verified as
        // a flotilla agent's.
        let o = lab.cli_on(1, &["-H", &tcp4, "ps", "--format", "{{.Names}}"])?;
        assert!(
            o.status.success(),
            "ps over mTLS on the promoted node: {}",
            text(&o)
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("web."),
            "{}",
            text(&o)
        );

        // `cluster leave` on a manager node needs --force.
        let o = lab.agent_cli(4, &["cluster", "leave"])?;
        assert!(!o.status.success(), "a manager leaving without --force");
        assert!(text(&o).contains("demote it first"), "{}", text(&o));

        // Demote 4 again: its manager stops, the agent goes on as a worker.
        let out = lab.cli_ok(&["node", "demote", &w4])?;
        assert!(out.contains("demoted"), "{out}");
        wait_members(lab, &[1])?;
        lab.eventually(Duration::from_secs(30), || {
            if lab
                .agent_state_dir(4)
                .join("manager")
                .join("manager.json")
                .exists()
            {
                bail!("the demoted node's manager state is still there");
            }
            Ok(())
        })?;
        assert_eq!(lab.node_state(&w4)?, "ready");
        assert!(lab.agent_running(4), "the agent outlives its manager");

        // Worker 5 leaves: it is marked down, its task is replaced on another node, its
        // containers and membership are gone; leaving twice says it is not a member.
        let o = lab.agent_cli(5, &["cluster", "leave"])?;
        assert!(o.status.success(), "leave: {}", text(&o));
        assert!(text(&o).contains("left the cluster"), "{}", text(&o));
        assert_eq!(lab.node_state(&w5)?, "down");
        assert!(
            lab.all_containers(5)?.is_empty(),
            "task containers left on the node that left"
        );
        assert!(!lab.agent_state_dir(5).join("cluster").exists());
        let o = lab.agent_cli(5, &["cluster", "leave"])?;
        assert!(!o.status.success());
        assert!(text(&o).contains("not part of a cluster"), "{}", text(&o));
        lab.eventually(Duration::from_secs(30), || {
            let by_host = lab.running_by_host("web")?;
            if by_host.values().sum::<usize>() != 2 || by_host.contains_key(&lab.hostname(5)) {
                bail!("web runs {by_host:?}");
            }
            Ok(())
        })?;
        lab.cli_ok(&["node", "rm", &w5])?;

        // A promoted node leaving with --force is out of the raft group before it is answered
        // (the remaining manager keeps its quorum), its manager stopped and forgotten.
        lab.cli_ok(&["node", "promote", &w4])?;
        wait_members(lab, &[1, 4])?;
        lab.eventually(Duration::from_secs(30), || {
            match manager_status(lab, &w4)?.as_str() {
                "Reachable" | "Leader" => Ok(()),
                s => bail!("w4 is {s:?}"),
            }
        })?;
        let o = lab.agent_cli(4, &["cluster", "leave", "--force"])?;
        assert!(o.status.success(), "leave --force: {}", text(&o));
        assert!(text(&o).contains("demoted"), "{}", text(&o));
        assert_eq!(members(lab)?.len(), 1, "removed before the answer");
        write(lab, "after-forced-leave")?;
        assert!(!lab.agent_state_dir(4).join("manager").exists());
        assert!(!lab.agent_state_dir(4).join("cluster").exists());
        assert_eq!(lab.node_state(&w4)?, "down");
        // Its TCP API (cluster certificates only) closed with its membership.
        lab.eventually(Duration::from_secs(10), || {
            let o = lab.cli_on(1, &["-H", &tcp4, "ps"])?;
            if o.status.success() {
                bail!("the TCP API still answers after leave");
            }
            Ok(())
        })?;
        Ok(())
    })
}

/// `cluster update` changes the settings live: a shorter heartbeat period reaches the connected
/// agent (it would be declared down otherwise, beating at the old period), bad values are
/// refused, `cluster status` shows them.
#[test]
fn cluster_update_changes_settings_live() -> Result<()> {
    let mut lab = ClusterLab::new(2)?;
    lab.scenario(|lab| {
        lab.init(1, &[])?;
        lab.add_worker(2, 1)?;
        let w2 = lab.node_of_host(2)?;
        let e = lab.cli_fails(&["cluster", "update", "--dispatcher-heartbeat", "10ms"])?;
        assert!(e.contains("out of range"), "{e}");
        let e = lab.cli_fails(&["cluster", "update"])?;
        assert!(e.contains("nothing to update"), "{e}");
        let out = lab.cli_ok(&[
            "cluster",
            "update",
            "--dispatcher-heartbeat",
            "300ms",
            "--task-history-limit",
            "2",
            "--cert-expiry",
            "30d",
        ])?;
        assert!(out.contains("updated"), "{out}");
        let status = lab.cli_ok(&["cluster", "status"])?;
        assert!(
            status.contains("certificates 30d, heartbeat 300ms, task history 2"),
            "{status}"
        );
        // Past the grace for agents still beating at the old period (3 x 1 s), never down:
        // the agent beats at 300 ms (at 1 s it would miss the 900 ms limit).
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < until {
            assert_eq!(
                lab.node_state(&w2)?,
                "ready",
                "the agent beats at the new period"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The settings came within the same session (SessionInfo sent again), not by a
        // reconnection.
        let log = lab.agent_log(2);
        let infos: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("dispatcher session established"))
            .filter_map(|l| l.split("session=").nth(1))
            .collect();
        let ids: BTreeSet<&str> = infos.iter().map(|s| s.trim()).collect();
        assert!(infos.len() >= 2 && ids.len() == 1, "{infos:?}");
        Ok(())
    })
}
