//! Placement on a cluster of 1 manager (no agent) + 2 workers, a third joining later:
//! hostname constraints (== and !=); a memory reservation no node has leaves the task pending
//! with a reason `service ps` shows, for replicated and global services; a CPU reservation and
//! `--replicas-max-per-node` leave a task pending until a worker joins, which places it; a
//! spread preference over zones with uneven node counts halves the tasks between the zones.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use flotilla_tests::cluster::{ClusterLab, TaskRow};

const CONVERGE: Duration = Duration::from_secs(30);

fn create(lab: &ClusterLab, args: &[&str]) -> Result<()> {
    let mut all = vec!["service", "create", "-d", "--stop-grace-period", "1s"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["busybox:latest", "sleep", "1000"]);
    lab.cli_ok(&all).map(|_| ())
}

/// Waits until `service` has `running` tasks running and `pending` tasks pending; the pending
/// ones.
fn wait_pending(
    lab: &ClusterLab,
    service: &str,
    running: usize,
    pending: usize,
) -> Result<Vec<TaskRow>> {
    lab.eventually(CONVERGE, || {
        let rows = lab.task_rows(service)?;
        let r = rows.iter().filter(|t| t.running()).count();
        let p: Vec<TaskRow> = rows
            .iter()
            .filter(|t| t.desired == "running" && t.current == "pending" && !t.error.is_empty())
            .cloned()
            .collect();
        if r == running && p.len() == pending {
            Ok(p)
        } else {
            bail!(
                "{service}: {r} running, {} pending with a reason: {rows:?}",
                p.len()
            )
        }
    })
}

#[test]
fn constraints_reservations_max_per_node_and_spread() -> Result<()> {
    let mut lab = ClusterLab::new(4)?;
    let r = scenario(&mut lab);
    if let Err(e) = &r {
        eprintln!("{e:#}\n{}", lab.logs());
    }
    r
}

fn scenario(lab: &mut ClusterLab) -> Result<()> {
    lab.init(1, &[])?;
    lab.add_worker_with_image(2, 1)?;
    lab.add_worker_with_image(3, 1)?;
    let h2 = lab.hostname(2);

    // Hostname constraints.
    let on = format!("node.hostname=={h2}");
    let off = format!("node.hostname!={h2}");
    create(
        lab,
        &["--name", "on2", "--replicas", "3", "--constraint", &on],
    )?;
    create(
        lab,
        &["--name", "off2", "--replicas", "3", "--constraint", &off],
    )?;
    lab.wait_running("on2", &[(2, 3)], CONVERGE)?;
    lab.wait_running("off2", &[(3, 3)], CONVERGE)?;

    // More memory than any node: pending, with the reason in `service ps` (the manager's
    // node has no agent: it is not available).
    create(lab, &["--name", "big", "--reserve-memory", "100t"])?;
    let p = wait_pending(lab, "big", 0, 1)?;
    ensure!(
        p[0].error == "no suitable node (1 node not available, 2 nodes lack memory)",
        "{p:?}"
    );
    ensure!(p[0].node.is_empty(), "{p:?}");
    // The table says it too (truncated to fit, like docker).
    let table = lab.cli_ok(&["service", "ps", "big"])?;
    ensure!(table.contains("\"no suitable node"), "{table}");
    // A global one: a pending task on each worker, none on the manager's node.
    create(
        lab,
        &[
            "--name",
            "gbig",
            "--mode",
            "global",
            "--reserve-memory",
            "100t",
        ],
    )?;
    let p = wait_pending(lab, "gbig", 0, 2)?;
    for t in &p {
        ensure!(t.error == "no suitable node (1 node lacks memory)", "{p:?}");
    }
    lab.cli_ok(&["service", "rm", "big", "gbig"])?;

    // CPU reservations: two nodes of 2 CPUs take one task of 1.5 each.
    create(
        lab,
        &["--name", "cpu", "--replicas", "3", "--reserve-cpu", "1.5"],
    )?;
    let p = wait_pending(lab, "cpu", 2, 1)?;
    ensure!(
        p[0].error == "no suitable node (1 node not available, 2 nodes lack CPU)",
        "{p:?}"
    );
    let m = lab.running_by_host("cpu")?;
    ensure!(
        m.len() == 2 && m.values().all(|n| *n == 1),
        "one per worker: {m:?}"
    );
    // At most one per node: the third replica waits.
    create(
        lab,
        &[
            "--name",
            "one",
            "--replicas",
            "3",
            "--replicas-max-per-node",
            "1",
        ],
    )?;
    let p = wait_pending(lab, "one", 2, 1)?;
    ensure!(
        p[0].error
            == "no suitable node (1 node not available, max replicas per node (1) reached on 2 nodes)",
        "{p:?}"
    );

    // A third worker joins: both pending tasks are placed there.
    let joined = Instant::now();
    lab.add_worker_with_image(4, 1)?;
    lab.wait_running("one", &[(2, 1), (3, 1), (4, 1)], CONVERGE)?;
    lab.wait_running("cpu", &[(2, 1), (3, 1), (4, 1)], CONVERGE)?;
    eprintln!(
        "pending tasks running {:?} after the third worker was started",
        joined.elapsed()
    );
    // Freed resources are reused: scale down, and the slot left can be taken again.
    lab.cli_ok(&["service", "scale", "-d", "cpu=2"])?;
    lab.eventually(CONVERGE, || {
        let m = lab.running_by_host("cpu")?;
        ensure!(m.values().sum::<usize>() == 2, "{m:?}");
        Ok(())
    })?;
    lab.cli_ok(&["service", "scale", "-d", "cpu=3"])?;
    lab.wait_running("cpu", &[(2, 1), (3, 1), (4, 1)], CONVERGE)?;

    // Spread over zones: a has one node, b two; 6 tasks go 3 to a and 3 to b (without the
    // preference they would go 2/2/2).
    lab.node_update(2, &["--label-add", "zone=a"])?;
    lab.node_update(3, &["--label-add", "zone=b"])?;
    lab.node_update(4, &["--label-add", "zone=b"])?;
    create(
        lab,
        &[
            "--name",
            "spread",
            "--replicas",
            "6",
            "--placement-pref",
            "spread=node.labels.zone",
        ],
    )?;
    let m = lab.eventually(CONVERGE, || {
        let m = lab.running_by_host("spread")?;
        ensure!(m.values().sum::<usize>() == 6, "{m:?}");
        Ok(m)
    })?;
    let on = |h: u8| m.get(&lab.hostname(h)).copied().unwrap_or(0);
    ensure!(
        on(2) == 3 && on(3) + on(4) == 3 && on(3) >= 1 && on(4) >= 1,
        "zone a (host 2) takes half: {m:?}"
    );
    Ok(())
}
