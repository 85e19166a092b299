//! Global services and node availability on a cluster of 1 manager (no agent) + 3 workers:
//! a global service runs one task on every worker and none on the manager node, and on a
//! worker that joins later; a paused node keeps its tasks but takes no new one; draining a
//! node moves its replicated tasks away and ends its global task, and making it active again
//! brings the global task back; a global rolling update completes; node labels steer constraints, for replicated and global
//! services, and a global service follows a label as it moves between nodes.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use flotilla_tests::cluster::ClusterLab;

const CONVERGE: Duration = Duration::from_secs(30);

fn create(lab: &ClusterLab, args: &[&str]) -> Result<()> {
    let mut all = vec!["service", "create", "-d", "--stop-grace-period", "1s"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["busybox:latest", "sleep", "1000"]);
    lab.cli_ok(&all).map(|_| ())
}

#[test]
fn global_services_drain_pause_and_labels() -> Result<()> {
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
    let (h1, h3) = (lab.hostname(1), lab.hostname(3));

    // One task per worker; the manager's node (no agent) gets none.
    create(lab, &["--name", "g", "--mode", "global"])?;
    lab.wait_running("g", &[(2, 1), (3, 1)], CONVERGE)?;
    let rows = lab.task_rows("g")?;
    ensure!(rows.len() == 2, "exactly one task per worker: {rows:?}");
    ensure!(rows.iter().all(|t| t.node != h1), "{rows:?}");
    create(lab, &["--name", "web", "--replicas", "4"])?;
    lab.wait_running("web", &[(2, 2), (3, 2)], CONVERGE)?;

    // A worker that joins later gets the global task (and no replicated one: no rebalance).
    let joined = Instant::now();
    lab.add_worker_with_image(4, 1)?;
    lab.wait_running("g", &[(2, 1), (3, 1), (4, 1)], CONVERGE)?;
    eprintln!(
        "global task on the new worker {:?} after it joined",
        joined.elapsed()
    );
    let rows = lab.task_rows("g")?;
    ensure!(
        rows.len() == 3,
        "one task per worker, none failed: {rows:?}"
    );
    lab.wait_running("web", &[(2, 2), (3, 2)], Duration::ZERO)?;

    // Pause: worker 3 keeps its tasks, new ones go elsewhere.
    lab.node_update(3, &["--availability", "pause"])?;
    lab.cli_ok(&["service", "scale", "-d", "web=6"])?;
    lab.wait_running("web", &[(2, 2), (3, 2), (4, 2)], CONVERGE)?;
    lab.wait_running("g", &[(2, 1), (3, 1), (4, 1)], Duration::ZERO)?;
    let rows = lab.task_rows("g")?;
    ensure!(
        rows.len() == 3,
        "nothing of g ended on the paused node: {rows:?}"
    );

    // Drain: worker 3's replicated tasks move to 2 and 4, its global task ends, its containers go.
    lab.node_update(3, &["--availability", "active"])?;
    let drained = Instant::now();
    lab.node_update(3, &["--availability", "drain"])?;
    lab.wait_running("web", &[(2, 3), (4, 3)], CONVERGE)?;
    lab.wait_running("g", &[(2, 1), (4, 1)], CONVERGE)?;
    let moved = drained.elapsed();
    lab.eventually(CONVERGE, || {
        let n = lab.containers(3)?.len();
        if n == 0 {
            Ok(())
        } else {
            bail!("{n} containers still run on the drained worker")
        }
    })?;
    eprintln!(
        "drain: tasks moved in {moved:?}, drained worker empty after {:?}",
        drained.elapsed()
    );
    let g3: Vec<_> = lab
        .task_rows("g")?
        .into_iter()
        .filter(|t| t.node == h3)
        .collect();
    ensure!(g3.len() == 1 && g3[0].desired == "shutdown", "{g3:?}");
    // Active again: the global task comes back; the replicated ones stay where they are.
    lab.node_update(3, &["--availability", "active"])?;
    lab.wait_running("g", &[(2, 1), (3, 1), (4, 1)], CONVERGE)?;
    lab.wait_running("web", &[(2, 3), (4, 3)], Duration::ZERO)?;

    // A rolling update of the global service (stop-first on each node, all at once).
    let t0 = Instant::now();
    lab.cli_ok(&[
        "service",
        "update",
        "-q",
        "--env-add",
        "X=1",
        "--update-parallelism",
        "0",
        "--update-monitor",
        "500ms",
        "g",
    ])?;
    lab.wait_running("g", &[(2, 1), (3, 1), (4, 1)], CONVERGE)?;
    let (state, msg) = lab.update_status("g")?;
    ensure!(state == "completed", "{state}: {msg}");
    eprintln!("global update on 3 nodes: {:?}", t0.elapsed());
    let ls =
        flotilla_tests::cluster::json_items(&lab.cli_ok(&["service", "ls", "--format", "json"])?)?;
    let g = ls.iter().find(|s| s["Name"] == "g");
    ensure!(
        g.is_some_and(|g| g["Replicas"] == "3/3"),
        "service ls: {ls:?}"
    );

    // Labels and constraints.
    lab.node_update(4, &["--label-add", "zone=a"])?;
    create(
        lab,
        &[
            "--name",
            "z",
            "--replicas",
            "2",
            "--constraint",
            "node.labels.zone==a",
        ],
    )?;
    lab.wait_running("z", &[(4, 2)], CONVERGE)?;
    create(
        lab,
        &[
            "--name",
            "gz",
            "--mode",
            "global",
            "--constraint",
            "node.labels.zone==a",
        ],
    )?;
    lab.wait_running("gz", &[(4, 1)], CONVERGE)?;
    let rows = lab.task_rows("gz")?;
    ensure!(
        rows.len() == 1,
        "no task of gz on nodes without the label: {rows:?}"
    );
    create(
        lab,
        &[
            "--name",
            "notz",
            "--mode",
            "global",
            "--constraint",
            "node.labels.zone!=a",
        ],
    )?;
    lab.wait_running("notz", &[(2, 1), (3, 1)], CONVERGE)?;

    // The label moves from worker 4 to worker 2: the global services follow it.
    lab.node_update(2, &["--label-add", "zone=a"])?;
    lab.wait_running("gz", &[(2, 1), (4, 1)], CONVERGE)?;
    lab.wait_running("notz", &[(3, 1)], CONVERGE)?;
    lab.node_update(4, &["--label-rm", "zone"])?;
    lab.wait_running("gz", &[(2, 1)], CONVERGE)?;
    lab.wait_running("notz", &[(3, 1), (4, 1)], CONVERGE)?;
    // Replicated tasks whose node no longer meets their constraint move to one that does.
    lab.wait_running("z", &[(2, 2)], CONVERGE)?;
    Ok(())
}
