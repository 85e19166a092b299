//! `flotilla-agent`: the node agent. For now the offline image commands (`image ...`) and bundle
//! creation for the runtime (`bundle ...`); the daemon (`serve`) comes later.
use std::collections::{BTreeSet, HashMap};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use flotilla_agent::image::{
    self, bundle, digest, ConfigChange, Credentials, ImageRecord, ImageStore, PullOptions,
    PullProgress, PushOptions, PushProgress, StoreConfig, DEFAULT_ROOT,
};

/// `println!` that ends the process quietly when stdout is a closed pipe (`| head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: write to stdout: {e}");
            std::process::exit(1);
        }
    }};
}

#[derive(Parser)]
#[command(
    name = "flotilla-agent",
    version,
    about = "flotilla node agent: local image store and container bundles",
    long_about = "flotilla node agent. `image` manages the local OCI image store (pull and push with \
                  registries, OCI layout archives, rootfs imports, garbage collection); `bundle` turns \
                  an image into an OCI runtime bundle for flotilla-runtime (or runc). Only one process \
                  uses a store at a time."
)]
struct Cli {
    /// Root directory of the image store.
    #[arg(long, global = true, default_value = DEFAULT_ROOT, env = "FLOTILLA_IMAGE_ROOT")]
    root: PathBuf,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `flotilla_agent=debug`.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent daemon: the gRPC API (`flotilla.agent.v1`) for the `flotilla` CLI.
    #[command(after_help = "Examples:\n  flotilla-agent serve\n  \
        flotilla-agent serve --state-dir /srv/flotilla --allow-host-path /srv/data\n  \
        flotilla-agent serve --tcp 127.0.0.1:2377 --insecure-tcp\n\n\
        Containers run under one flotilla-shim each and keep running when the agent stops, \
        crashes or is upgraded; on start the agent re-attaches to them and records the exits that \
        happened meanwhile.")]
    Serve(Box<ServeArgs>),
    /// Manage images in the local store.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Create and remove OCI runtime bundles from images.
    #[command(subcommand)]
    Bundle(BundleCmd),
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Pull an image from a registry (progress on stderr, manifest digest on stdout).
    #[command(after_help = "Examples:\n  flotilla-agent image pull busybox:1.36\n  \
        flotilla-agent image pull 127.0.0.1:5000/busybox:latest\n  \
        echo secret | flotilla-agent image pull --username me --password-stdin reg.example:5000/app:1\n\n\
        Registries on 127.0.0.0/8 or localhost are reached over plain http, all others over https \
        unless listed with --insecure-registry.")]
    Pull {
        /// Image reference: NAME[:TAG] or NAME@sha256:DIGEST (docker-style, docker.io by default).
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Print only the manifest digest, no progress.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Push a local image to the registry its name points at (tag it first to push elsewhere).
    Push {
        /// Local image reference; its registry part says where to push.
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print only image ids (short, one per image).
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show an image's record, manifest and config as JSON.
    Inspect {
        /// Image reference or id.
        reference: String,
    },
    /// Remove images; content no other image or container uses is deleted.
    #[command(alias = "remove")]
    Rm {
        /// Image references or ids.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Give an image another name.
    Tag {
        /// Existing image reference or id.
        source: String,
        /// New reference.
        target: String,
    },
    /// Load images from an OCI image layout archive (tar, optionally gzip/zstd compressed).
    Load {
        /// The archive.
        #[arg(short, long)]
        input: PathBuf,
        /// Name for the image when the archive holds one image with only a bare tag (skopeo's
        /// oci-archive does) or when it should be loaded under another name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Save images as an OCI image layout archive.
    Save {
        /// The archive to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Image references or ids.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Create a single-layer image from a root filesystem tarball (tar, tar.gz or tar.zst).
    #[command(
        after_help = "Changes use Dockerfile keys: CMD, ENTRYPOINT, ENV, WORKDIR, USER, as \
        KEY=VALUE or KEY VALUE; lists are a JSON array or whitespace-separated:\n  \
        flotilla-agent image import rootfs.tar myimg:1 --change 'CMD=[\"/bin/sh\",\"-c\",\"echo hi\"]' \
        --change ENV=FOO=bar --change WORKDIR=/srv"
    )]
    Import {
        /// The rootfs tarball.
        file: PathBuf,
        /// Name of the new image.
        reference: String,
        /// Config change (repeatable).
        #[arg(short, long = "change")]
        changes: Vec<String>,
    },
    /// Delete blobs and layers that no image or container uses.
    Gc,
}

#[derive(clap::Args)]
struct RegistryArgs {
    /// Registry user name.
    #[arg(long, short)]
    username: Option<String>,
    /// Read the password (or token) from stdin; needs --username.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Registry (HOST:PORT) to reach over plain http; repeatable. Loopback registries always are.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
}

#[derive(Subcommand)]
enum BundleCmd {
    /// Mount a fresh rootfs of an image and write an OCI bundle config.json for it.
    #[command(
        after_help = "Example:\n  flotilla-agent bundle create busybox --id c1 --bundle /run/c1 -- sh -c 'echo hi'\n  \
        flotilla-runtime run --bundle /run/c1 c1\n  flotilla-agent bundle rm --id c1"
    )]
    Create {
        /// Image reference or id.
        image: String,
        /// Container id (names the rootfs snapshot).
        #[arg(long)]
        id: String,
        /// Bundle directory (created if needed); gets config.json.
        #[arg(long)]
        bundle: PathBuf,
        /// Arguments replacing the image's Cmd (its Entrypoint stays).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Unmount and delete a container's rootfs (and the config.json bundle create wrote).
    Rm {
        /// Container id.
        #[arg(long)]
        id: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns.
    Table,
    /// A JSON array of image records.
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Persistent state: images, containers, volumes, logs.
    #[arg(long, default_value = "/var/lib/flotilla", env = "FLOTILLA_STATE_DIR")]
    state_dir: PathBuf,
    /// Runtime state (tmpfs): the API socket, shim sockets, runtime state, network namespaces.
    #[arg(long, default_value = "/run/flotilla", env = "FLOTILLA_RUN_DIR")]
    run_dir: PathBuf,
    /// The API's unix socket (mode 0660); default RUN_DIR/agent.sock.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also serve the API on TCP. Without TLS (it comes with the cluster) only a loopback address
    /// with --insecure-tcp is accepted.
    #[arg(long, value_name = "ADDR:PORT")]
    tcp: Option<std::net::SocketAddr>,
    /// Accept the plain-text TCP listener (loopback only).
    #[arg(long)]
    insecure_tcp: bool,
    /// Allow bind mounts of host system paths under PREFIX (/etc, /run, ... are refused otherwise).
    #[arg(long, value_name = "PREFIX")]
    allow_host_path: Vec<PathBuf>,
    /// Run containers in a user namespace: root inside is UID:GID (COUNT ids) on the host.
    #[arg(long, value_name = "UID:GID[:COUNT]")]
    userns_remap: Option<String>,
    /// A registry reached over plain http (loopback registries always are).
    #[arg(long, value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    /// Mount point of the cgroup filesystems.
    #[arg(long, default_value = "/sys/fs/cgroup", hide = true)]
    cgroup_root: PathBuf,
    /// Bridge of the default network `bridge`.
    #[arg(long, default_value = "flotilla0")]
    bridge_name: String,
    /// Subnet of the default network.
    #[arg(long, default_value = "10.88.0.0/16")]
    bridge_subnet: String,
    /// Pool that user-defined networks without --subnet take a /24 from.
    #[arg(long, default_value = "10.89.0.0/16")]
    network_pool: String,
    /// Prefix of the bridges of user-defined networks (at most 9 characters).
    #[arg(long, default_value = "flbr-")]
    bridge_prefix: String,
    /// The nftables table (family ip) the agent owns for NAT, isolation and published ports.
    #[arg(long, default_value = "flotilla")]
    nft_table: String,
    /// Join the cluster of the manager at ADDR (host:port) as a worker, with --token. Needed
    /// once: the node's certificate is kept in STATE_DIR/cluster and later starts reconnect by
    /// themselves (ADDR is then just one more manager to try).
    #[arg(long, value_name = "ADDR")]
    join: Option<String>,
    /// The worker join token (`flotilla cluster join-token worker`).
    #[arg(
        long,
        env = "FLOTILLA_JOIN_TOKEN",
        hide_env_values = true,
        requires = "join"
    )]
    token: Option<String>,
    /// Where this node's manager listens once the node is promoted (`flotilla node promote`).
    #[arg(long, default_value = "0.0.0.0:4242", value_name = "ADDR:PORT")]
    manager_listen: std::net::SocketAddr,
    /// Address others dial to reach this node's manager (default: this host's address towards
    /// the cluster's managers, with the --manager-listen port).
    #[arg(long, value_name = "HOST:PORT")]
    manager_advertise: Option<String>,
    /// The manager binary a promoted node runs (default: flotilla-controller next to this one).
    #[arg(long)]
    controller_bin: Option<PathBuf>,
}

fn parse_userns(s: &str) -> Result<(u32, u32, u32)> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |p: &str| {
        p.parse::<u32>()
            .with_context(|| format!("invalid --userns-remap {s:?}: {p:?} is not a number"))
    };
    match parts.as_slice() {
        [u, g] => Ok((num(u)?, num(g)?, 65536)),
        [u, g, c] => Ok((num(u)?, num(g)?, num(c)?)),
        _ => bail!("invalid --userns-remap {s:?}: use UID:GID[:COUNT], e.g. 100000:100000:65536"),
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode> {
    use flotilla_agent::engine::{Engine, EngineConfig};
    if args.join.is_some() && args.token.is_none() {
        bail!("--join needs --token (the worker join token: `flotilla cluster join-token worker` on a manager)");
    }
    // Whether TCP gets TLS is known only once the membership is loaded (below): a plain listener
    // must be loopback and explicitly insecure whatever the state dir holds.
    let plain_tcp_allowed =
        |addr: std::net::SocketAddr| args.insecure_tcp && addr.ip().is_loopback();
    let userns_remap = args.userns_remap.as_deref().map(parse_userns).transpose()?;
    let exe = std::env::current_exe().context("locate flotilla-agent")?;
    let dir = exe
        .parent()
        .context("flotilla-agent has no directory")?
        .to_path_buf();
    let shim_bin = dir.join("flotilla-shim");
    let runtime_bin = dir.join("flotilla-runtime");
    for b in [&shim_bin, &runtime_bin] {
        if !b.exists() {
            bail!("{} is missing: flotilla-shim and flotilla-runtime must be installed next to flotilla-agent", b.display());
        }
    }
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| args.run_dir.join("agent.sock"));
    let mut cfg = EngineConfig {
        state_dir: args.state_dir.clone(),
        run_dir: args.run_dir.clone(),
        cgroup_root: args.cgroup_root,
        shim_bin,
        runtime_bin,
        allow_host_paths: args.allow_host_path,
        userns_remap,
        insecure_registries: args.insecure_registry,
        network: flotilla_agent::network::NetConfig {
            state_dir: args.state_dir.join("network"),
            run_dir: args.run_dir.clone(),
            default_bridge: args.bridge_name,
            default_subnet: args
                .bridge_subnet
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid --bridge-subnet: {e}"))?,
            pool: args
                .network_pool
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid --network-pool: {e}"))?,
            pool_prefix_len: 24,
            bridge_prefix: args.bridge_prefix,
            nft_table: args.nft_table,
            host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
        },
    };
    let secrets_dir = args.run_dir.join("secrets");
    flotilla_agent::executor::allow_secrets_dir(&mut cfg, &secrets_dir);
    // Few arenas, and free memory given back when idle: the agent lives for weeks and its work
    // comes in bursts (a hundred starts, then nothing).
    flotilla_agent::runtime::syscall::limit_malloc_arenas(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let listener = flotilla_agent::server::bind_unix(&socket)
            .await
            .with_context(|| format!("listen on {}", socket.display()))?;
        let engine = Engine::open(cfg).await.context("open the agent state")?;
        let routes = flotilla_agent::server::router(engine.clone());
        let join = args.join.as_deref().zip(args.token.as_deref());
        let membership = flotilla_agent::membership::Membership::load_or_join(
            &args.state_dir,
            join,
            flotilla_agent::cluster::describe_host(Default::default()),
        )
        .await
        .context("join the cluster")?;
        let session_stop = tokio_util::sync::CancellationToken::new();
        let mut tcp_tls = None;
        let mut active = None;
        let manager = std::sync::Arc::new(flotilla_agent::cluster::member::ManagerProc::new(
            flotilla_agent::cluster::member::ManagerSettings {
                controller_bin: args
                    .controller_bin
                    .clone()
                    .unwrap_or_else(|| dir.join("flotilla-controller")),
                state_dir: args.state_dir.join("manager"),
                log: args.run_dir.join("manager.log"),
                listen: args.manager_listen,
                advertise: args.manager_advertise.clone(),
            },
        ));
        if let Some(m) = membership {
            // The TCP API presents the node certificate of the moment: renewal replaces it in
            // `live` without closing the listener.
            let live = m.live_tls()?;
            tcp_tls = Some(live.server_config());
            active = Some(start_cluster_member(
                m,
                live,
                engine.clone(),
                secrets_dir,
                session_stop.clone(),
                manager,
            )?);
        }
        let local_routes = routes.clone().add_service(
            flotilla_proto::agent::v1::cluster_membership_server::ClusterMembershipServer::new(
                flotilla_agent::cluster::member::MembershipService::new(active),
            ),
        );
        if let Some(addr) = args.tcp {
            if tcp_tls.is_none() && !plain_tcp_allowed(addr) {
                bail!("refusing to serve the API on TCP {addr}: this node is not a cluster member, so there is no certificate for mutual TLS; only a loopback address with --insecure-tcp is allowed without it");
            }
        }
        tokio::spawn(async {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tick.tick().await;
                let _ = tokio::task::spawn_blocking(
                    flotilla_agent::runtime::syscall::release_free_memory,
                )
                .await;
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down; containers keep running under their shims");
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let (Some(addr), Some(tls)) = (args.tcp, tcp_tls) {
            let tcp_routes = routes.clone();
            let mut stop = stop_rx.clone();
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr}"))?;
            eprintln!("flotilla-agent: serving on tcp://{addr} (mutual TLS: admin or manager certificates of the cluster)");
            // Also ends when the node leaves the cluster: its certificates no longer speak for it.
            let left = session_stop.clone();
            tokio::spawn(async move {
                let incoming = flotilla_pki::tls_incoming(l, tls);
                let _ = tonic::transport::Server::builder()
                    .layer(tonic::service::InterceptorLayer::new(only_admins))
                    .add_routes(tcp_routes)
                    .serve_with_incoming_shutdown(incoming, async move {
                        tokio::select! {
                            _ = stop.changed() => {}
                            _ = left.cancelled() => {}
                        }
                    })
                    .await;
            });
        } else if let Some(addr) = args.tcp {
            let tcp_routes = routes.clone();
            let mut stop = stop_rx.clone();
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr}"))?;
            eprintln!("flotilla-agent: serving on tcp://{addr} (insecure, loopback only)");
            tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                let _ = tonic::transport::Server::builder()
                    .add_routes(tcp_routes)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.changed().await;
                    })
                    .await;
            });
        }
        eprintln!("flotilla-agent: serving on unix://{}", socket.display());
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_routes(local_routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("serve the API")?;
        let _ = stop_tx.send(true);
        session_stop.cancel();
        let _ = std::fs::remove_file(&socket);
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

/// The agent's TCP API of a cluster member: admin or manager certificates only.
#[allow(clippy::result_large_err)] // tonic's interceptor signature
fn only_admins(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let id = flotilla_pki::peer_identity(&req)?;
    if id.role == flotilla_pki::PeerRole::Worker {
        return Err(tonic::Status::permission_denied(
            "a worker certificate cannot drive another node's agent: use an admin context",
        ));
    }
    Ok(req)
}

/// Runs the node's part in the cluster: the task executor over the engine, the session with
/// the managers (reconnecting forever), certificate renewal, and the manager of a promoted
/// node. Returns what `cluster leave` needs.
fn start_cluster_member(
    m: flotilla_agent::membership::Membership,
    live: flotilla_pki::LiveTls,
    engine: std::sync::Arc<flotilla_agent::engine::Engine>,
    secrets_dir: PathBuf,
    stop: tokio_util::sync::CancellationToken,
    manager: std::sync::Arc<flotilla_agent::cluster::member::ManagerProc>,
) -> Result<flotilla_agent::cluster::member::Active> {
    use std::sync::Arc;
    let (executor, statuses) = flotilla_agent::executor::Executor::new(engine, secrets_dir);
    let executor = Arc::new(executor);
    let client_cfg = live.client_config();
    let connect: flotilla_agent::cluster::Connect =
        Arc::new(move |addr: &str| flotilla_pki::channel(addr, Arc::clone(&client_cfg)));
    let (info_tx, mut info_rx) = tokio::sync::watch::channel(None);
    let mut session = flotilla_agent::cluster::SessionConfig::new(
        m.managers.clone(),
        flotilla_agent::cluster::describe_host(Default::default()),
        connect,
    );
    let info_tx_for_roles = info_tx.subscribe();
    session.info = Some(info_tx);
    let known = Arc::new(std::sync::Mutex::new(m.managers.clone()));
    let m = Arc::new(m);
    {
        let (m, known) = (Arc::clone(&m), Arc::clone(&known));
        tokio::spawn(async move {
            while info_rx.changed().await.is_ok() {
                let info = info_rx.borrow_and_update().clone();
                if let Some(info) = info {
                    if !info.manager_addrs.is_empty() {
                        *known.lock().unwrap_or_else(|p| p.into_inner()) =
                            info.manager_addrs.clone();
                        if let Err(e) = m.save_managers(&info.manager_addrs) {
                            tracing::warn!(error = %e, "cannot remember the managers");
                        }
                    }
                }
            }
        });
    }
    let role_info = info_tx_for_roles;
    let known_managers: Arc<dyn Fn() -> Vec<String> + Send + Sync> =
        Arc::new(move || known.lock().unwrap_or_else(|p| p.into_inner()).clone());
    let renew_now = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(flotilla_agent::membership::renew_loop(
        m.files.clone(),
        live,
        Arc::clone(&known_managers),
        Arc::clone(&renew_now),
        stop.clone(),
    ));
    tokio::spawn(flotilla_agent::cluster::member::role_loop(
        m.files.clone(),
        role_info,
        renew_now,
        Arc::clone(&manager),
        Arc::clone(&known_managers),
        stop.clone(),
    ));
    eprintln!(
        "flotilla-agent: node {} of cluster {}",
        m.tls.identity.node_id, m.tls.identity.cluster_id
    );
    let active = flotilla_agent::cluster::member::Active {
        files: m.files.clone(),
        cluster_dir: m.dir().to_path_buf(),
        session_stop: stop.clone(),
        executor: Arc::clone(&executor),
        managers: known_managers,
        manager,
    };
    tokio::spawn(flotilla_agent::cluster::run_session(
        session, executor, statuses, stop,
    ));
    Ok(active)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without repeating a cause a message already quotes.
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(cli: Cli) -> Result<ExitCode> {
    let open = |insecure: Vec<String>| -> Result<ImageStore> {
        let mut config = StoreConfig::with_root(&cli.root);
        config.insecure_registries = insecure;
        ImageStore::open(config).with_context(|| format!("open image store {}", cli.root.display()))
    };
    match cli.cmd {
        Cmd::Serve(args) => return serve(*args),
        Cmd::Image(cmd) => match cmd {
            ImageCmd::Pull {
                reference,
                registry,
                quiet,
            } => {
                let credentials = registry.credentials()?;
                let store = open(registry.insecure_registries)?;
                let opts = PullOptions {
                    credentials,
                    ..Default::default()
                };
                let printer = PullPrinter::default();
                let report = |p: PullProgress| {
                    if !quiet {
                        printer.print(&p)
                    }
                };
                let record = runtime()?
                    .block_on(store.pull(&reference, &opts, &report))
                    .with_context(|| format!("pull {reference}"))?;
                outln!("{}", record.manifest_digest);
            }
            ImageCmd::Push {
                reference,
                registry,
            } => {
                let credentials = registry.credentials()?;
                let store = open(registry.insecure_registries)?;
                let opts = PushOptions {
                    credentials,
                    ..Default::default()
                };
                let report = |p: PushProgress| match p {
                    PushProgress::BlobExists { digest } => {
                        eprintln!("{}: already in the registry", digest::short(&digest))
                    }
                    PushProgress::BlobPushed { digest, size } => {
                        eprintln!("{}: pushed {}", digest::short(&digest), human(size))
                    }
                    PushProgress::ManifestPushed { reference, digest } => {
                        eprintln!("{reference}: manifest {digest} pushed")
                    }
                };
                let digest = runtime()?
                    .block_on(store.push(&reference, &opts, &report))
                    .with_context(|| format!("push {reference}"))?;
                outln!("{digest}");
            }
            ImageCmd::Ls { format, quiet } => {
                let store = open(Vec::new())?;
                let records = store.list();
                if quiet {
                    let ids: BTreeSet<String> = records
                        .iter()
                        .map(|r| digest::short(r.id()).to_string())
                        .collect();
                    for id in ids {
                        outln!("{id}");
                    }
                } else if format == Format::Json {
                    let list: Vec<serde_json::Value> = records.iter().map(record_json).collect();
                    outln!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    print_table(&records);
                }
            }
            ImageCmd::Inspect { reference } => {
                let store = open(Vec::new())?;
                let inspect = store.inspect(&reference)?;
                outln!("{}", serde_json::to_string_pretty(&inspect)?);
            }
            ImageCmd::Rm { references } => {
                let store = open(Vec::new())?;
                let mut failed = false;
                for r in &references {
                    match store.remove(r) {
                        Ok(report) => {
                            outln!("untagged: {}", report.untagged);
                            for d in report.deleted_blobs {
                                outln!("deleted blob: {d}");
                            }
                            for d in report.deleted_layers {
                                outln!("deleted layer: {d}");
                            }
                        }
                        Err(e) => {
                            eprintln!("error: remove {r}: {e}");
                            failed = true;
                        }
                    }
                }
                if failed {
                    return Ok(ExitCode::FAILURE);
                }
            }
            ImageCmd::Tag { source, target } => {
                let store = open(Vec::new())?;
                let record = store
                    .tag(&source, &target)
                    .with_context(|| format!("tag {source} as {target}"))?;
                outln!("{}", record.reference);
            }
            ImageCmd::Load { input, name } => {
                let store = open(Vec::new())?;
                let records = store
                    .load(&input, name.as_deref())
                    .with_context(|| format!("load {}", input.display()))?;
                for r in records {
                    outln!("loaded: {} ({})", r.reference, r.manifest_digest);
                }
            }
            ImageCmd::Save { output, references } => {
                let store = open(Vec::new())?;
                let refs: Vec<&str> = references.iter().map(String::as_str).collect();
                store
                    .save(&refs, &output)
                    .with_context(|| format!("save to {}", output.display()))?;
                eprintln!("saved {} image(s) to {}", refs.len(), output.display());
            }
            ImageCmd::Import {
                file,
                reference,
                changes,
            } => {
                let changes = changes
                    .iter()
                    .map(|c| ConfigChange::parse(c))
                    .collect::<image::Result<Vec<_>>>()?;
                let store = open(Vec::new())?;
                let record = store
                    .import(&file, &reference, &changes)
                    .with_context(|| format!("import {}", file.display()))?;
                outln!("{} {}", record.reference, record.id());
            }
            ImageCmd::Gc => {
                let store = open(Vec::new())?;
                let report = store.gc()?;
                for d in &report.deleted_blobs {
                    outln!("deleted blob: {d}");
                }
                for d in &report.deleted_layers {
                    outln!("deleted layer: {d}");
                }
                eprintln!(
                    "gc: {} blob(s), {} layer(s) deleted, {} freed",
                    report.deleted_blobs.len(),
                    report.deleted_layers.len(),
                    human(report.freed_blob_bytes)
                );
            }
        },
        Cmd::Bundle(cmd) => match cmd {
            BundleCmd::Create {
                image,
                id,
                bundle: dir,
                args,
            } => {
                let store = open(Vec::new())?;
                let args = (!args.is_empty()).then_some(args);
                let config = bundle::create(&store, &image, &id, &dir, args)
                    .with_context(|| format!("create bundle {id} from {image}"))?;
                outln!("{}", config.display());
            }
            BundleCmd::Rm { id } => {
                let store = open(Vec::new())?;
                bundle::remove(&store, &id).with_context(|| format!("remove bundle {id}"))?;
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

impl RegistryArgs {
    fn credentials(&self) -> Result<Credentials> {
        let Some(username) = self.username.clone() else {
            return Ok(Credentials::Anonymous);
        };
        if !self.password_stdin {
            bail!(
                "--username needs --password-stdin (passwords are never taken on the command line)"
            );
        }
        if std::io::stdin().is_terminal() {
            eprint!("password for {username}: ");
            std::io::stderr().flush().ok();
        }
        let mut password = String::new();
        std::io::stdin()
            .read_to_string(&mut password)
            .context("read password from stdin")?;
        let password = password.trim_end_matches(['\n', '\r']).to_string();
        if password.is_empty() {
            bail!("empty password on stdin");
        }
        Ok(Credentials::Basic { username, password })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start async runtime")
}

/// Progress lines of a pull, on stderr: one per layer event, byte counts every quarter.
#[derive(Default)]
struct PullPrinter {
    quarters: Mutex<HashMap<String, u64>>,
}

impl PullPrinter {
    fn print(&self, p: &PullProgress) {
        match p {
            PullProgress::Resolved {
                reference,
                manifest_digest,
                layers,
                total_bytes,
            } => eprintln!(
                "{reference}: resolved to {manifest_digest} ({layers} layer(s), {})",
                human(*total_bytes)
            ),
            PullProgress::LayerAlreadyPresent { digest, .. } => {
                eprintln!("{}: already present", digest::short(digest))
            }
            PullProgress::LayerStarted { digest, size } => {
                eprintln!("{}: downloading {}", digest::short(digest), human(*size))
            }
            PullProgress::LayerBytes {
                digest,
                downloaded,
                size,
            } => {
                let quarter = if *size == 0 { 4 } else { downloaded * 4 / size };
                let mut q = self.quarters.lock().unwrap_or_else(|p| p.into_inner());
                let last = q.entry(digest.clone()).or_insert(0);
                if quarter > *last && quarter < 4 {
                    *last = quarter;
                    eprintln!(
                        "{}: {} / {}",
                        digest::short(digest),
                        human(*downloaded),
                        human(*size)
                    );
                }
            }
            PullProgress::LayerDownloaded { digest } => {
                eprintln!("{}: downloaded", digest::short(digest))
            }
            PullProgress::LayerDone { digest, .. } => {
                eprintln!("{}: unpacked", digest::short(digest))
            }
            PullProgress::Done {
                reference,
                downloaded_bytes,
                ..
            } => eprintln!(
                "{reference}: pulled ({} downloaded)",
                human(*downloaded_bytes)
            ),
        }
    }
}

fn record_json(r: &ImageRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), r.id().into());
        o.insert("size".into(), r.size().into());
    }
    v
}

fn print_table(records: &[ImageRecord]) {
    let rows: Vec<[String; 4]> = records
        .iter()
        .map(|r| {
            [
                r.reference.clone(),
                digest::short(r.id()).to_string(),
                r.created
                    .as_deref()
                    .map(|c| c.chars().take(19).collect::<String>().replace('T', " "))
                    .unwrap_or_else(|| "-".into()),
                human(r.size()),
            ]
        })
        .collect();
    let header = ["REFERENCE", "IMAGE ID", "CREATED", "SIZE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("   ");
        outln!("{}", line.trim_end());
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
