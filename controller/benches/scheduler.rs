//! Scheduler throughput: 1,000 services x 1,000 replicas (1,000,000 tasks) onto 10,000 nodes,
//! with a mix of constraints, reservations, spread preferences, max replicas per node, platforms
//! and host ports. Prints placements per second, the times, and distribution checks.
//!
//! `cargo bench -p flotilla-controller --bench scheduler` (one thread; knobs: `NODES`,
//! `SERVICES`, `REPLICAS`, `STEADY_ROUNDS`, and `ONLY_SCHEDULE=1` to stop after the first
//! placement). Wall and thread CPU times are both printed: the machine is shared. Timings are reported, never asserted; the distribution checks are.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use flotilla_controller::scheduler::{Decision, Scheduler};
use flotilla_proto::control::v1::{
    EndpointSpec, Node, NodeAvailability, NodeDescription, NodeRole, NodeSpec, NodeState,
    NodeStatus, Placement, PlacementPreference, Platform, PortConfig, PortProtocol,
    ResourceRequirements, Resources, SpreadOver, Task, TaskSpec, TaskState, TaskStatus,
};

const GIB: i64 = 1 << 30;
const ZONES: [&str; 4] = ["a", "b", "c", "d"];

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Node `i`: zone by i % 4, every 10th a manager, every 5th aarch64, every other with an ssd
/// engine label, 1 in 100 drained and 1 in 100 down; 16 CPUs, 64 GiB.
fn node(i: usize) -> Node {
    let mut labels = HashMap::new();
    labels.insert("zone".to_string(), ZONES[i % 4].to_string());
    let mut engine_labels = HashMap::new();
    if i.is_multiple_of(2) {
        engine_labels.insert("disk".to_string(), "ssd".to_string());
    }
    Node {
        id: format!("node-{i:05}-{:08x}", (i as u32).wrapping_mul(2_654_435_761)),
        spec: Some(NodeSpec {
            availability: if i % 100 == 7 {
                NodeAvailability::Drain as i32
            } else {
                NodeAvailability::Active as i32
            },
            labels,
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: format!("host{i}"),
            platform: Some(Platform {
                os: "linux".into(),
                architecture: if i % 5 == 4 { "aarch64" } else { "x86_64" }.into(),
            }),
            resources: Some(Resources {
                nano_cpus: 16_000_000_000,
                memory_bytes: 64 * GIB,
                pids: 0,
            }),
            engine_labels,
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: if i % 100 == 13 {
                NodeState::Down as i32
            } else {
                NodeState::Ready as i32
            },
            ..Default::default()
        }),
        role: if i.is_multiple_of(10) {
            NodeRole::Manager as i32
        } else {
            NodeRole::Worker as i32
        },
        ..Default::default()
    }
}

/// What service `s` asks for, by s % 10 (host ports for s % 50 == 6).
fn service_spec(s: usize) -> (TaskSpec, Option<EndpointSpec>) {
    let mut placement = Placement::default();
    let mut resources = None;
    match s % 10 {
        0 => placement.constraints = vec!["node.labels.zone==a".into()],
        1 => {
            resources = Some(ResourceRequirements {
                limits: None,
                reservations: Some(Resources {
                    nano_cpus: 250_000_000,
                    memory_bytes: GIB / 2,
                    pids: 0,
                }),
            })
        }
        2 => {
            placement.preferences = vec![PlacementPreference {
                spread: Some(SpreadOver {
                    spread_descriptor: "node.labels.zone".into(),
                }),
            }]
        }
        3 => {
            placement.constraints = vec![
                "node.role==worker".into(),
                "engine.labels.disk == ssd".into(),
            ]
        }
        4 => placement.max_replicas_per_node = 1,
        5 => {
            placement.platforms = vec![Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
            }]
        }
        _ => {}
    }
    let endpoint = (s % 50 == 6).then(|| EndpointSpec {
        ports: vec![PortConfig {
            protocol: PortProtocol::Tcp as i32,
            target_port: 80,
            published_port: 20_000 + s as u32,
            publish_mode: "host".into(),
            ..Default::default()
        }],
    });
    (
        TaskSpec {
            resources,
            placement: Some(placement),
            ..Default::default()
        },
        endpoint,
    )
}

fn tasks(services: usize, replicas: usize) -> Vec<Task> {
    let mut out = Vec::with_capacity(services * replicas);
    for s in 0..services {
        let (spec, endpoint) = service_spec(s);
        let service_id = format!("svc-{s:04}-{:08x}", (s as u32).wrapping_mul(40_503));
        for r in 1..=replicas {
            out.push(Task {
                id: format!(
                    "task-{s:04}-{r:05}-{:08x}",
                    (r as u32).wrapping_mul(2_246_822_519)
                ),
                service_id: service_id.clone(),
                service_name: format!("service{s}"),
                slot: r as u64,
                spec: Some(spec.clone()),
                spec_version: 1,
                desired_state: TaskState::Running as i32,
                status: Some(TaskStatus {
                    state: TaskState::Pending as i32,
                    ..Default::default()
                }),
                endpoint: endpoint.clone(),
                ..Default::default()
            });
        }
    }
    out
}

fn main() {
    let n_nodes = knob("NODES", 10_000);
    let n_services = knob("SERVICES", 1_000);
    let replicas = knob("REPLICAS", 1_000);
    let t0 = Instant::now();
    let nodes: Vec<Node> = (0..n_nodes).map(node).collect();
    let pending = tasks(n_services, replicas);
    println!(
        "setup: {} nodes, {} services x {} replicas = {} tasks, built in {:.2?}",
        nodes.len(),
        n_services,
        replicas,
        pending.len(),
        t0.elapsed()
    );

    let t = Instant::now();
    let mut sched = Scheduler::new(&nodes, &[]);
    let t_new = t.elapsed();
    let t = Instant::now();
    let c = cpu_time();
    let decisions = black_box(sched.schedule(&pending));
    let t_sched = t.elapsed();
    let c_sched = cpu_time() - c;
    let assigned = decisions
        .iter()
        .filter(|d| matches!(d, Decision::Assign { .. }))
        .count();
    println!("Scheduler::new (empty cluster): {t_new:.2?}");
    println!(
        "schedule: {} decisions ({} assigned, {} pending) in {:.3?} = {:.0} placements/s \
         (cpu {:.3?} = {:.0} placements per cpu-second)",
        decisions.len(),
        assigned,
        decisions.len() - assigned,
        t_sched,
        assigned as f64 / t_sched.as_secs_f64(),
        c_sched,
        assigned as f64 / c_sched.as_secs_f64()
    );

    if std::env::var_os("ONLY_SCHEDULE").is_some() {
        // For profiling the placement alone (e.g. `perf record -D 1500`).
        return;
    }

    // Distribution checks.
    let node_index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let task_service: HashMap<&str, usize> = pending
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i / replicas))
        .collect();
    let mut per_node = vec![0usize; nodes.len()];
    let mut per_service_node: HashMap<(usize, usize), usize> = HashMap::new();
    let mut per_service_zone: HashMap<(usize, usize), usize> = HashMap::new();
    for d in &decisions {
        if let Decision::Assign { task_id, node_id } = d {
            let n = node_index[node_id.as_str()];
            let s = task_service[task_id.as_str()];
            assert!(
                nodes[n].status.as_ref().unwrap().state == NodeState::Ready as i32
                    && nodes[n].spec.as_ref().unwrap().availability
                        == NodeAvailability::Active as i32,
                "task placed on an unavailable node"
            );
            per_node[n] += 1;
            *per_service_node.entry((s, n)).or_insert(0) += 1;
            *per_service_zone.entry((s, n % 4)).or_insert(0) += 1;
        }
    }
    let available = |i: &usize| i % 100 != 7 && i % 100 != 13;
    for (z, zone) in ZONES.iter().enumerate() {
        let counts: Vec<usize> = (0..nodes.len())
            .filter(|i| i % 4 == z && available(i))
            .map(|i| per_node[i])
            .collect();
        let (min, max) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        println!(
            "zone {}: {} available nodes, tasks per node min {min} max {max} (max-min {})",
            zone,
            counts.len(),
            max - min
        );
    }
    let worst = per_service_node.values().max().copied().unwrap_or(0);
    println!("most tasks of one service on one node: {worst}");
    assert!(
        worst <= 1,
        "1,000 replicas on >= 2,000 eligible nodes must not stack"
    );
    let spread: Vec<usize> = (0..n_services)
        .filter(|s| s % 10 == 2)
        .map(|s| {
            let z: Vec<usize> = (0..4)
                .map(|z| per_service_zone.get(&(s, z)).copied().unwrap_or(0))
                .collect();
            z.iter().max().unwrap() - z.iter().min().unwrap()
        })
        .collect();
    let spread_worst = spread.iter().max().copied().unwrap_or(0);
    println!("spread=node.labels.zone services: worst max-min tasks per zone {spread_worst}");
    assert!(spread_worst <= 1);

    // Leader change: rebuild the view from the store with every task running.
    let placed: Vec<Task> = pending
        .iter()
        .zip(&decisions)
        .filter_map(|(t, d)| match d {
            Decision::Assign { task_id, node_id } => {
                assert_eq!(task_id, &t.id);
                let mut t = t.clone();
                t.node_id = node_id.clone();
                t.status.as_mut().unwrap().state = TaskState::Running as i32;
                Some(t)
            }
            Decision::Pending { .. } => None,
        })
        .collect();
    drop(decisions);
    drop(pending);
    let t = Instant::now();
    let c = cpu_time();
    let mut sched = black_box(Scheduler::new(&nodes, &placed));
    println!(
        "Scheduler::new with {} running tasks: {:.3?} (cpu {:.3?})",
        placed.len(),
        t.elapsed(),
        cpu_time() - c
    );

    // Steady state: one task per service fails and its replacement is scheduled, per round.
    let rounds = knob("STEADY_ROUNDS", 3).min(replicas);
    let per_service = placed.len() / n_services.max(1);
    let mut live: Vec<Task> = placed;
    for round in 0..rounds {
        let t = Instant::now();
        let c = cpu_time();
        let mut replacements = Vec::with_capacity(n_services);
        for s in 0..n_services {
            let old = &live[s * per_service + round];
            let mut failed = old.clone();
            failed.status.as_mut().unwrap().state = TaskState::Failed as i32;
            sched.task_changed(Some(old), Some(&failed));
            let mut new = old.clone();
            new.id = format!("{}-r", old.id);
            new.node_id.clear();
            new.status.as_mut().unwrap().state = TaskState::Pending as i32;
            replacements.push(new);
        }
        let ds = sched.schedule(&replacements);
        println!(
            "steady state round {}: {} task failures fed + {} replacements scheduled: {:.3?} (cpu {:.3?})",
            round + 1,
            n_services,
            ds.len(),
            t.elapsed(),
            cpu_time() - c
        );
        for (r, d) in replacements.iter().zip(&ds) {
            if let Decision::Assign { node_id, .. } = d {
                let mut r = r.clone();
                r.node_id = node_id.clone();
                sched.task_changed(None, Some(&r));
            }
        }
    }
    live.clear();
}

/// CPU time of this thread (the machine is shared: wall time includes waiting for a core).
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
