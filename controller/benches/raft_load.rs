//! Load generator of the cluster benchmark (`deploy/bench/cluster.sh`): the same write workload
//! against a 3-manager flotilla cluster (its real control API over mutual TLS, with the admin
//! context `flotilla-controller init` wrote) and a 3-member etcd 3.4 cluster (the `etcd-client`
//! crate), so both sides are measured by one client implementation.
//!
//! - flotilla's write (`--op create-config`, the default) is `Control.CreateConfig` of a config
//!   with a 256-byte payload and a fresh name: one raft entry, no read barrier before it (the
//!   cheapest real write of the API; `UpdateNode` and `RemoveConfig` take a linearizable read
//!   first). `--op update-node` is `Control.UpdateNode` of one manager node, setting a 256-byte
//!   label (a read barrier, then one raft entry; the store does not grow). etcd's write is a `Put`
//!   of a 256-byte value under a fresh key.
//! - `write`: N clients (each one request at a time) spread over C connections, for a fixed time
//!   after a warm-up; prints one JSON line: writes, errors, writes/s, p50/p99/max latency.
//! - `failover`: finds the leader, opens connections to the other members, SIGKILLs the leader
//!   (by pid, given per endpoint), and sends a new write through every survivor every 20 ms (each
//!   with its own deadline) until one succeeds; prints the time from the kill to that success.
//! - `clear`: removes what the writes left (flotilla: every config, 32 removals at a time; etcd:
//!   the `/bench/` prefix), so each measurement starts from the same store size.
//! - `healthy`: waits until every endpoint accepts a write (after a member was restarted).
//! - `leader`: prints the leader's endpoint index.
//!
//! Every loop is bounded in time; nothing is sent anywhere but the given endpoints (lab hosts).
//! Run with no arguments (as `cargo bench` does) it only prints how it is used.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use flotilla_controller::ca;
use flotilla_controller::cli::context;
use flotilla_proto::control::v1::{
    control_client::ControlClient, ConfigSpec, CreateConfigRequest, GetByNameRequest,
    GetClusterRequest, ListByNameRequest, ListNodesRequest, NodeSpec, UpdateNodeRequest,
};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "raft_load",
    about = "cluster benchmark load generator (see deploy/bench/cluster.sh)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Kind {
    Flotilla,
    Etcd,
}

#[derive(clap::Args, Clone)]
struct Target {
    #[arg(long, value_enum)]
    kind: Kind,
    /// Comma-separated endpoints, one per member (flotilla: host:port; etcd: http://host:port).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// flotilla: the CLI config dir holding the admin context.
    #[arg(long)]
    config_dir: Option<std::path::PathBuf>,
    /// flotilla: which write.
    #[arg(long, value_enum, default_value = "create-config")]
    op: Op,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Op {
    CreateConfig,
    UpdateNode,
}

#[derive(Subcommand)]
enum Cmd {
    /// Throughput and latency of writes.
    Write {
        #[command(flatten)]
        target: Target,
        /// Send to the leader or to a follower.
        #[arg(long, default_value = "leader")]
        via: String,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        /// Measured seconds (after `warmup`).
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Unique prefix of the names/keys written by this run.
        #[arg(long)]
        tag: String,
        /// A label printed with the result.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Kill the leader, time the first successful write through a survivor.
    Failover {
        #[command(flatten)]
        target: Target,
        /// Pids of the members, in the order of the endpoints.
        #[arg(long, value_delimiter = ',')]
        pids: Vec<i32>,
        #[arg(long)]
        tag: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 20.0)]
        limit: f64,
    },
    /// Wait until every endpoint accepts a write.
    Healthy {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        tag: String,
        #[arg(long, default_value_t = 60.0)]
        limit: f64,
    },
    /// Remove what the writes left.
    Clear {
        #[command(flatten)]
        target: Target,
    },
    /// Print the index of the leader among the endpoints.
    Leader {
        #[command(flatten)]
        target: Target,
    },
}

/// One connection to one member.
#[derive(Clone)]
enum Conn {
    Flotilla(ControlClient<Channel>),
    /// flotilla with `--op update-node`: the node and the spec to write.
    FlotillaNode(ControlClient<Channel>, String, NodeSpec),
    Etcd(Box<etcd_client::Client>),
}

impl Conn {
    async fn open(t: &Target, endpoint: &str) -> anyhow::Result<Conn> {
        match t.kind {
            Kind::Flotilla => {
                let dir = t
                    .config_dir
                    .as_ref()
                    .context("flotilla needs --config-dir (the admin context)")?;
                let ctx = context::resolve(dir, None)?;
                let cfg = ca::client_config(&ctx.ca_pem, Some((&ctx.cert_pem, &ctx.key_pem)))?;
                let mut c = ControlClient::new(ca::channel(endpoint, cfg));
                if t.op == Op::CreateConfig {
                    return Ok(Conn::Flotilla(c));
                }
                let nodes = c
                    .list_nodes(ListNodesRequest {
                        role: "manager".into(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("list nodes via {endpoint}: {}", s.message()))?
                    .into_inner()
                    .nodes;
                let mut node = nodes
                    .into_iter()
                    .min_by(|a, b| a.id.cmp(&b.id))
                    .context("no manager node to update")?;
                let spec = node.spec.take().context("the node has no spec")?;
                Ok(Conn::FlotillaNode(c, node.id, spec))
            }
            Kind::Etcd => {
                let opts =
                    etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
                Ok(Conn::Etcd(Box::new(
                    etcd_client::Client::connect([endpoint], Some(opts))
                        .await
                        .with_context(|| format!("connect to etcd at {endpoint}"))?,
                )))
            }
        }
    }

    /// One write of `value` under the fresh name `name`.
    async fn write(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        match self {
            Conn::Flotilla(c) => c
                .create_config(CreateConfigRequest {
                    spec: Some(ConfigSpec {
                        name: name.to_string(),
                        labels: Default::default(),
                        data: value.to_vec(),
                    }),
                })
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
            Conn::FlotillaNode(c, id, spec) => {
                let mut spec = spec.clone();
                let mut label = format!("{name}-");
                label.extend(std::iter::repeat_n(
                    'x',
                    value.len().saturating_sub(label.len()),
                ));
                spec.labels.insert("bench".into(), label);
                c.update_node(UpdateNodeRequest {
                    node: id.clone(),
                    version: 0,
                    spec: Some(spec),
                })
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
            Conn::Etcd(c) => c
                .put(format!("/bench/{name}"), value.to_vec(), None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}

/// The leader's index among the endpoints (asking each member until one knows).
async fn leader(t: &Target) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for ep in &t.endpoints {
            let Ok(conn) = Conn::open(t, ep).await else {
                continue;
            };
            let found = match conn {
                Conn::Flotilla(mut c) | Conn::FlotillaNode(mut c, _, _) => {
                    match tokio::time::timeout(
                        Duration::from_secs(2),
                        c.get_cluster(GetClusterRequest::default()),
                    )
                    .await
                    {
                        Ok(Ok(r)) => r
                            .into_inner()
                            .managers
                            .iter()
                            .find(|m| m.leader)
                            .and_then(|m| t.endpoints.iter().position(|e| *e == m.addr)),
                        _ => None,
                    }
                }
                Conn::Etcd(_) => {
                    // Each member's own id, then who any of them says leads.
                    let mut ids = Vec::new();
                    let mut lead = 0;
                    for e in &t.endpoints {
                        let id = match Conn::open(t, e).await {
                            Ok(Conn::Etcd(mut c)) => {
                                match tokio::time::timeout(Duration::from_secs(2), c.status()).await
                                {
                                    Ok(Ok(s)) => {
                                        if s.leader() != 0 {
                                            lead = s.leader();
                                        }
                                        s.header().map(|h| h.member_id())
                                    }
                                    _ => None,
                                }
                            }
                            _ => None,
                        };
                        ids.push(id);
                    }
                    ids.iter().position(|id| *id == Some(lead) && lead != 0)
                }
            };
            if let Some(i) = found {
                return Ok(i);
            }
        }
        if Instant::now() > deadline {
            bail!("no leader found among {:?} within 20 s", t.endpoints);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn value(size: usize) -> Vec<u8> {
    // Printable, so a config's data is also a valid text file.
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

#[allow(clippy::too_many_arguments)]
async fn write(
    t: &Target,
    via: &str,
    clients: usize,
    conns: usize,
    secs: f64,
    warmup: f64,
    value_size: usize,
    tag: &str,
    label: &str,
) -> anyhow::Result<()> {
    let l = leader(t).await?;
    let idx = match via {
        "leader" => l,
        "follower" => (l + 1) % t.endpoints.len(),
        other => bail!("--via leader|follower, not {other}"),
    };
    let ep = &t.endpoints[idx];
    let mut pool = Vec::new();
    for _ in 0..conns.max(1) {
        pool.push(Conn::open(t, ep).await?);
    }
    let value = Arc::new(value(value_size));
    let start = Instant::now() + Duration::from_secs_f64(warmup);
    let end = start + Duration::from_secs_f64(secs);
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut conn = pool[c % pool.len()].clone();
        let value = Arc::clone(&value);
        let errors = Arc::clone(&errors);
        let first_error = Arc::clone(&first_error);
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u64> = Vec::with_capacity(8192);
            let mut i = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let name = format!("{tag}-{c}-{i}");
                i += 1;
                let r = tokio::time::timeout(Duration::from_secs(5), conn.write(&name, &value))
                    .await
                    .unwrap_or_else(|_| Err("timed out after 5 s".into()));
                let done = Instant::now();
                match r {
                    Ok(()) if now >= start && done <= end => {
                        lat.push(done.duration_since(now).as_micros() as u64)
                    }
                    Ok(()) => {}
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await?);
    }
    lat.sort_unstable();
    let n = lat.len();
    let kind = match (t.kind, t.op) {
        (Kind::Flotilla, Op::UpdateNode) => "flotilla-update-node".to_string(),
        (k, _) => format!("{k:?}").to_lowercase(),
    };
    let out = serde_json::json!({
        "kind": kind,
        "label": label,
        "via": via,
        "endpoint": ep,
        "clients": clients,
        "conns": conns,
        "secs": secs,
        "writes": n,
        "errors": errors.load(Ordering::Relaxed),
        "first_error": *first_error.lock().unwrap(),
        "wps": n as f64 / secs,
        "p50_ms": pct(&lat, 50.0),
        "p99_ms": pct(&lat, 99.0),
        "max_ms": pct(&lat, 100.0),
    });
    println!("{out}");
    Ok(())
}

async fn failover(t: &Target, pids: &[i32], tag: &str, limit: f64) -> anyhow::Result<()> {
    if pids.len() != t.endpoints.len() {
        bail!("give one pid per endpoint");
    }
    let l = leader(t).await?;
    let survivors: Vec<usize> = (0..t.endpoints.len()).filter(|i| *i != l).collect();
    let value = Arc::new(value(256));
    // Connections to the survivors, proven to work before the kill.
    let mut conns = Vec::new();
    for &i in &survivors {
        let mut c = Conn::open(t, &t.endpoints[i]).await?;
        c.write(&format!("{tag}-pre-{i}"), &value)
            .await
            .map_err(|e| anyhow::anyhow!("write via {} before the kill: {e}", t.endpoints[i]))?;
        conns.push((i, c));
    }
    let pid = nix::unistd::Pid::from_raw(pids[l]);
    let killed = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
        .with_context(|| format!("kill -9 {}", pids[l]))?;
    let done = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, usize)>();
    let limit = Duration::from_secs_f64(limit);
    let mut attempt = 0u64;
    let mut failures = 0u64;
    let (ftx, mut frx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let result = loop {
        if let Ok((d, via)) = rx.try_recv() {
            break Some((d, via));
        }
        while frx.try_recv().is_ok() {
            failures += 1;
        }
        if killed.elapsed() > limit {
            break None;
        }
        for (i, c) in &conns {
            let mut c = c.clone();
            let (i, value, tx, ftx, done) = (
                *i,
                Arc::clone(&value),
                tx.clone(),
                ftx.clone(),
                Arc::clone(&done),
            );
            let name = format!("{tag}-{i}-{attempt}");
            tokio::spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(3), c.write(&name, &value)).await;
                if matches!(r, Ok(Ok(()))) {
                    if !done.swap(true, Ordering::SeqCst) {
                        let _ = tx.send((killed.elapsed(), i));
                    }
                } else {
                    let _ = ftx.send(());
                }
            });
        }
        attempt += 1;
        tokio::select! {
            r = rx.recv() => if let Some(r) = r { break Some(r) },
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    done.store(true, Ordering::SeqCst);
    let out = match result {
        Some((d, via)) => serde_json::json!({
            "kind": format!("{:?}", t.kind).to_lowercase(),
            "killed": t.endpoints[l],
            "killed_index": l,
            "via": t.endpoints[via],
            "ok": true,
            "first_write_ms": d.as_secs_f64() * 1000.0,
            "failed_attempts": failures,
        }),
        None => serde_json::json!({
            "kind": format!("{:?}", t.kind).to_lowercase(),
            "killed": t.endpoints[l],
            "killed_index": l,
            "ok": false,
            "first_write_ms": null,
            "failed_attempts": failures,
        }),
    };
    println!("{out}");
    Ok(())
}

async fn healthy(t: &Target, tag: &str, limit: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(limit);
    let value = value(16);
    for (i, ep) in t.endpoints.iter().enumerate() {
        let mut n = 0;
        loop {
            let r = match Conn::open(t, ep).await {
                Ok(mut c) => tokio::time::timeout(
                    Duration::from_secs(2),
                    c.write(&format!("{tag}-h{i}-{n}"), &value),
                )
                .await
                .unwrap_or_else(|_| Err("timed out".into())),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    bail!("{ep} does not accept writes after {limit} s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            n += 1;
        }
    }
    Ok(())
}

async fn clear(t: &Target) -> anyhow::Result<()> {
    let l = leader(t).await?;
    let conn = Conn::open(t, &t.endpoints[l]).await?;
    let started = Instant::now();
    let removed = match conn {
        Conn::Etcd(mut c) => {
            let r = c
                .delete(
                    "/bench/",
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await?;
            r.deleted() as usize
        }
        Conn::FlotillaNode(..) => 0,
        Conn::Flotilla(c) => {
            let mut c = c.max_decoding_message_size(256 << 20);
            let ids: Vec<String> = c
                .list_configs(ListByNameRequest::default())
                .await
                .map_err(|s| anyhow::anyhow!("list configs: {}", s.message()))?
                .into_inner()
                .configs
                .into_iter()
                .map(|c| c.id)
                .collect();
            let n = ids.len();
            let ids = Arc::new(std::sync::Mutex::new(ids));
            let mut tasks = Vec::new();
            for _ in 0..32 {
                let (mut c, ids) = (c.clone(), Arc::clone(&ids));
                tasks.push(tokio::spawn(async move {
                    loop {
                        let Some(id) = ids.lock().unwrap().pop() else {
                            return Ok::<(), anyhow::Error>(());
                        };
                        c.remove_config(GetByNameRequest { name: id })
                            .await
                            .map_err(|s| anyhow::anyhow!("remove config: {}", s.message()))?;
                    }
                }));
            }
            for task in tasks {
                task.await??;
            }
            n
        }
    };
    eprintln!(
        "raft_load: removed {removed} objects in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`, a test harness would pass its own flags: usage only.
    if args.len() < 2 || (args[1].starts_with("--") && args[1] != "--help") {
        eprintln!("raft_load: the cluster benchmark's load generator; deploy/bench/cluster.sh runs it (see `raft_load --help`)");
        return Ok(());
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Write {
                target,
                via,
                clients,
                conns,
                secs,
                warmup,
                value_size,
                tag,
                label,
            } => {
                write(
                    &target, &via, clients, conns, secs, warmup, value_size, &tag, &label,
                )
                .await
            }
            Cmd::Failover {
                target,
                pids,
                tag,
                limit,
            } => failover(&target, &pids, &tag, limit).await,
            Cmd::Healthy { target, tag, limit } => healthy(&target, &tag, limit).await,
            Cmd::Clear { target } => clear(&target).await,
            Cmd::Leader { target } => {
                println!("{}", leader(&target).await?);
                Ok(())
            }
        }
    })
}
