//! One manager and two workers on lab hosts: a replicated service spreads across the workers,
//! a worker that dies has its tasks replaced on the other within the bound, and when it comes
//! back its old copies stop, so the count is never above the spec for long.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use flotilla_tests::cluster::ClusterLab;

fn running_by_node(lab: &ClusterLab, service: &str) -> Result<BTreeMap<String, usize>> {
    let mut by_node = BTreeMap::new();
    for t in lab.tasks(service)? {
        let desired = t.get("DesiredState").and_then(|v| v.as_str()).unwrap_or("");
        let current = t.get("CurrentState").and_then(|v| v.as_str()).unwrap_or("");
        if desired.eq_ignore_ascii_case("running") && current.to_lowercase().starts_with("running")
        {
            let node = t
                .get("Node")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            *by_node.entry(node).or_default() += 1;
        }
    }
    Ok(by_node)
}

#[test]
fn replicated_service_spreads_and_is_replaced_when_a_worker_dies() -> Result<()> {
    let mut lab = ClusterLab::new(3)?;
    let r = (|| -> Result<()> {
        lab.init(1, &[])?;
        lab.add_worker(2, 1)?;
        lab.add_worker(3, 1)?;
        let out = lab.cli_ok(&[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "4",
            "busybox:latest",
            "sleep",
            "1000",
        ])?;
        assert!(!out.trim().is_empty(), "service create prints the id");
        let spread = lab.eventually(Duration::from_secs(30), || {
            let m = running_by_node(&lab, "web")?;
            if m.values().sum::<usize>() == 4 {
                Ok(m)
            } else {
                bail!("running: {m:?}")
            }
        })?;
        assert_eq!(
            spread.keys().cloned().collect::<Vec<_>>(),
            [lab.hostname(2), lab.hostname(3)],
            "spread over both workers"
        );
        assert!(spread.values().all(|n| *n == 2), "2 and 2: {spread:?}");
        // The containers are there on each worker, named service.slot.task.
        for host in [2, 3] {
            let names: Vec<String> = lab
                .containers(host)?
                .iter()
                .filter_map(|c| c.get("Names").and_then(|v| v.as_str()).map(str::to_string))
                .collect();
            assert_eq!(names.len(), 2, "host {host}: {names:?}");
            assert!(names.iter().all(|n| n.contains("web.")), "{names:?}");
        }

        // Worker 3 dies: its node goes DOWN and its tasks run on worker 2 within 10 s of that.
        let node3 = lab.node_of_host(3)?;
        let host3 = lab.hostname(3);
        let killed = Instant::now();
        lab.kill_agent(3)?;
        lab.set_connected(3, false)?;
        lab.eventually(Duration::from_secs(15), || {
            let s = lab.node_state(&node3)?;
            if s == "down" {
                Ok(())
            } else {
                bail!("node 3 is {s}")
            }
        })?;
        let down_after = killed.elapsed();
        let replaced = lab.eventually(Duration::from_secs(10), || {
            let m = running_by_node(&lab, "web")?;
            if m.values().sum::<usize>() == 4 && !m.contains_key(&host3) {
                Ok(m)
            } else {
                bail!("running: {m:?}")
            }
        })?;
        eprintln!(
            "node down after {down_after:?}, replacements running {:?} after the kill: {replaced:?}",
            killed.elapsed()
        );
        // Its containers kept running while it was away (the agent died, not the host).
        assert_eq!(lab.shims(3), 2, "worker 3's containers outlive its agent");

        // Worker 3 returns: its stale copies stop and go; the count stays 4.
        lab.set_connected(3, true)?;
        lab.restart_agent(3)?;
        lab.eventually(Duration::from_secs(20), || {
            let n = lab.containers(3)?.len();
            if n == 0 {
                Ok(())
            } else {
                bail!("{n} stale containers still on worker 3")
            }
        })?;
        assert_eq!(running_by_node(&lab, "web")?.values().sum::<usize>(), 4);
        Ok(())
    })();
    if let Err(e) = &r {
        eprintln!("{e:#}\n{}", lab.logs());
    }
    r
}
