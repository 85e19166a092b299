//! `flotilla-controller`: a manager of a flotilla cluster (Swarm-mode manager equivalent).
//! `init` starts a new cluster, `join` adds a manager to one, `serve` restarts a manager from its
//! state directory; all three then run in the foreground until SIGINT/SIGTERM, or until the
//! manager is removed from the cluster's managers (exit 0, its state deleted).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use flotilla_controller::cli::parse::{parse_cert_expiry, MIN_CERT_EXPIRY};
use flotilla_controller::manager::run::{Manager, ManagerConfig, Start};

#[derive(Parser)]
#[command(
    name = "flotilla-controller",
    version,
    about = "A manager of a flotilla cluster: replicated state (raft), scheduling, the cluster API",
    long_about = "A manager of a flotilla cluster. Managers keep the cluster state replicated with \
raft (run 1, 3 or 5 of them), schedule services onto the nodes' agents, and serve the cluster \
API, the node CA and the agents' sessions on one mutual-TLS port."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a new cluster with this manager as its first member; prints the join tokens and
    /// writes an admin context for the `flotilla` CLI.
    Init {
        #[command(flatten)]
        common: Common,
        /// Start a new one-manager cluster from this manager's existing state (after losing the
        /// quorum for good); the data is kept, the other managers are forgotten.
        #[arg(long)]
        force_new_cluster: bool,
        /// Where to write the admin context (default: $FLOTILLA_CONFIG or ~/.flotilla).
        #[arg(long)]
        config_dir: Option<PathBuf>,
        /// Name of the admin context to write (and make current).
        #[arg(long, default_value = "default")]
        context: String,
        /// Agent heartbeat period of the new cluster (a node is down after 3 missed).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        heartbeat_period: Duration,
        /// Validity of node certificates (e.g. 90d, 720h): every node, manager or worker,
        /// renews its certificate at two thirds of it, without a restart. At least 1h.
        #[arg(long, default_value = "90d", value_parser = parse_cert_expiry)]
        cert_expiry: Duration,
        /// Accept a --cert-expiry under an hour (down to 20s): for tests of certificate renewal.
        #[arg(long, hide = true)]
        unsafe_short_cert_expiry: bool,
    },
    /// Join an existing cluster as a manager, with a manager join token (or, on a promoted
    /// node, with the node's manager certificate: --node-tls).
    Join {
        #[command(flatten)]
        common: Common,
        /// The manager token (`flotilla cluster join-token manager`).
        #[arg(
            long,
            env = "FLOTILLA_JOIN_TOKEN",
            hide_env_values = true,
            required_unless_present = "node_tls"
        )]
        token: Option<String>,
        /// Join as the node whose certificate this directory holds (an agent's `cluster/tls`
        /// after `flotilla node promote`; the agent does this itself), keeping its node id.
        #[arg(long, conflicts_with = "token")]
        node_tls: Option<PathBuf>,
        /// Address (host:port) of a manager of the cluster.
        addr: String,
    },
    /// Restart a manager from its state directory.
    Serve {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// State directory (raft log, certificates, data key).
    #[arg(long, default_value = "/var/lib/flotilla-controller")]
    state_dir: PathBuf,
    /// Address to listen on (cluster API, node CA, agents' sessions, raft).
    #[arg(long, default_value = "0.0.0.0:4242")]
    listen: SocketAddr,
    /// Address other managers and agents dial (default: --listen, which must then not be a
    /// wildcard address).
    #[arg(long)]
    advertise: Option<String>,
    /// Raft election timeout.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    election_timeout: Duration,
    /// Applied entries between raft snapshots.
    #[arg(long, default_value_t = 10_000, hide = true)]
    snapshot_interval: u64,
    /// Log filter (tracing env-filter syntax), default info.
    #[arg(long, env = "FLOTILLA_LOG", default_value = "info")]
    log: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("invalid duration {s:?}: give a unit, e.g. 1s or 500ms"))?;
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: e.g. 1s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    };
    if !(secs > 0.0 && secs < 3600.0) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Checks `--cert-expiry` against the minimum: 1h, or the CA's 20 s floor with
/// `--unsafe-short-cert-expiry`.
fn check_cert_expiry(d: Duration, allow_short: bool) -> anyhow::Result<Duration> {
    let min = if allow_short {
        flotilla_pki::MIN_CERT_VALIDITY
    } else {
        MIN_CERT_EXPIRY
    };
    if d < min {
        anyhow::bail!(
            "--cert-expiry {}s is shorter than the minimum {}s{}",
            d.as_secs(),
            min.as_secs(),
            if allow_short {
                ""
            } else {
                " (nodes renew at two thirds of it; validities under an hour are only for tests, with --unsafe-short-cert-expiry)"
            }
        );
    }
    Ok(d)
}

fn config(common: &Common, heartbeat: Duration) -> anyhow::Result<ManagerConfig> {
    let advertise = match &common.advertise {
        Some(a) => a.clone(),
        None if common.listen.ip().is_unspecified() => anyhow::bail!(
            "--listen {} is a wildcard address: say which address others dial with --advertise HOST:PORT",
            common.listen
        ),
        None => common.listen.to_string(),
    };
    Ok(ManagerConfig {
        state_dir: common.state_dir.clone(),
        listen: common.listen,
        advertise,
        election_timeout: common.election_timeout,
        heartbeat_period: heartbeat,
        config_dir: None,
        context_name: "default".into(),
        snapshot_interval: common.snapshot_interval,
        // Only `init` uses it (a cluster-wide setting afterwards).
        cert_expiry: flotilla_controller::api::nodeca::DEFAULT_CERT_EXPIRY,
    })
}

fn main() {
    let cli = Cli::parse();
    let log = match &cli.cmd {
        Cmd::Init { common, .. } | Cmd::Join { common, .. } | Cmd::Serve { common } => {
            common.log.clone()
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flotilla-controller: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("flotilla-controller: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (cfg, start, print_tokens) = match cli.cmd {
        Cmd::Init {
            common,
            force_new_cluster,
            config_dir,
            context,
            heartbeat_period,
            cert_expiry,
            unsafe_short_cert_expiry,
        } => {
            let mut cfg = config(&common, heartbeat_period)?;
            cfg.cert_expiry = check_cert_expiry(cert_expiry, unsafe_short_cert_expiry)?;
            if force_new_cluster {
                (cfg, Start::ForceNewCluster, false)
            } else {
                cfg.config_dir = Some(match config_dir {
                    Some(d) => d,
                    None => flotilla_controller::cli::context::config_dir()?,
                });
                cfg.context_name = context;
                (cfg, Start::Init, true)
            }
        }
        Cmd::Join {
            common,
            token,
            node_tls,
            addr,
        } => (
            config(&common, Duration::from_secs(1))?,
            match (token, node_tls) {
                (_, Some(tls_dir)) => Start::JoinAsNode { addr, tls_dir },
                (Some(token), None) => Start::Join { addr, token },
                (None, None) => anyhow::bail!("give --token (or --node-tls on a promoted node)"),
            },
            false,
        ),
        Cmd::Serve { common } => (
            // A restart uses the address its manager.json recorded.
            config(&common, Duration::from_secs(1)).or_else(|_| {
                config(
                    &Common {
                        advertise: Some(String::new()),
                        ..common
                    },
                    Duration::from_secs(1),
                )
            })?,
            Start::Restart,
            false,
        ),
    };
    let manager = Manager::start(cfg.clone(), start).await?;
    if print_tokens {
        let state = manager.store.read();
        let c = state
            .cluster
            .clone()
            .context("the new cluster has no cluster object")?;
        drop(state);
        println!(
            "Cluster {} initialized; this manager is {}.",
            c.id, manager.identity.node_id
        );
        println!();
        println!("To add a worker, run on it:");
        println!(
            "    flotilla-agent serve --join {} --token {}",
            cfg.advertise,
            manager.join_token(flotilla_pki::Role::Worker)?
        );
        println!();
        println!("To add a manager, run on it:");
        println!(
            "    flotilla-controller join --token {} {}",
            manager.join_token(flotilla_pki::Role::Manager)?,
            cfg.advertise
        );
        if let Some(dir) = &cfg.config_dir {
            println!();
            println!(
                "The `flotilla` CLI on this host now uses context {:?} (in {}).",
                cfg.context_name,
                dir.display()
            );
        }
    } else {
        eprintln!(
            "manager {} serving on {} (raft id {})",
            manager.identity.node_id, manager.identity.advertise, manager.identity.raft_id
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::select! {
        _ = wait_signal() => {
            tracing::info!("shutting down");
            manager.shutdown().await;
        }
        _ = manager.removed() => {
            let node = manager.identity.node_id.clone();
            manager.shutdown_removed().await?;
            eprintln!(
                "manager {node} was removed from the cluster's managers (demoted, or left): its raft state in {} is deleted",
                cfg.state_dir.display()
            );
        }
    }
    Ok(())
}

async fn wait_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_expiry_values() {
        let s = Duration::from_secs;
        assert_eq!(parse_cert_expiry("90d").unwrap(), s(90 * 24 * 3600));
        assert_eq!(parse_cert_expiry("720h").unwrap(), s(720 * 3600));
        assert_eq!(parse_cert_expiry("45m").unwrap(), s(45 * 60));
        assert_eq!(parse_cert_expiry("30s").unwrap(), s(30));
        for bad in ["", "90", "d", "1.5h", "-1h", "1w", "99999999999999999999d"] {
            assert!(parse_cert_expiry(bad).is_err(), "{bad:?}");
        }
        assert!(parse_cert_expiry("8000d")
            .unwrap_err()
            .contains("longer than the root CA"));

        assert_eq!(check_cert_expiry(s(3600), false).unwrap(), s(3600));
        let e = check_cert_expiry(s(30), false).unwrap_err().to_string();
        assert!(e.contains("shorter than the minimum 3600s"), "{e}");
        assert!(e.contains("--unsafe-short-cert-expiry"), "{e}");
        assert_eq!(check_cert_expiry(s(30), true).unwrap(), s(30));
        let e = check_cert_expiry(s(10), true).unwrap_err().to_string();
        assert!(e.contains("shorter than the minimum 20s"), "{e}");
    }

    #[test]
    fn clap_tree_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
