//! The `flotilla` command line for one node, shaped after docker's so muscle memory carries over:
//! `flotilla run -it --rm alpine sh`, `flotilla ps -a`, `flotilla logs -f web`, with management
//! groups (`container`, `image`, `volume`, `network`, `system`) and docker's top-level shortcuts.
//! This module owns the clap tree, the connection settings (`--host`/`FLOTILLA_HOST`), logging,
//! and how errors become exit codes: every failure prints one `Error: <message>` line on stderr;
//! the exit code is 1 unless a command attached another (`run`/`create` use 125 for failures
//! before the container runs, `exec` 126) with `with_exit`. The cluster groups (`cluster`,
//! `node`, `service`, `secret`, `config`) talk to a manager through a context (`context`,
//! `control`); the controller's own refusals print as "Error response from controller: ...".

pub mod client;
pub mod cluster;
pub mod container;
pub mod context;
pub mod control;
pub mod format;
pub mod image;
pub mod network;
pub mod node;
pub mod objects;
pub mod parse;
pub mod secret;
pub mod service;
pub mod spec;
pub mod stdio;
pub mod system;
pub mod template;
pub mod term;
pub mod volume;

use clap::{CommandFactory, Parser, Subcommand};

use client::Agent;
use container::{
    ContainerCmd, CreateArgs, ExecArgs, InspectArgs, KillArgs, LogsArgs, NamesArgs, PsArgs, RmArgs,
    RunArgs, StartArgs, StatsArgs, StopArgs, TopArgs,
};
use image::{
    ImageCmd, ImagesArgs, ImportArgs, LoadArgs, PullArgs, PushArgs, RmiArgs, SaveArgs, TagArgs,
};
use network::NetworkCmd;
use system::{EventsArgs, InfoArgs, SystemCmd, VersionArgs};
use volume::VolumeCmd;

const LONG_ABOUT: &str = "flotilla: run containers on this node (docker-compatible commands).

The CLI talks to the node agent (`flotilla-agent serve`) over gRPC, on its unix socket by \
default. Point it elsewhere with --host or FLOTILLA_HOST (unix:///path or tcp://HOST:PORT). \
A cluster member's agent serves TCP in mutual TLS: the CLI then uses the cluster context's admin \
certificate, or --tlscacert/--tlscert/--tlskey (loopback addresses are dialed in plain text \
unless --tls or the files are given).

The cluster commands (cluster, node, service, secret, config) talk to a manager's control API \
over mutual TLS, as set by a context: --context NAME, else FLOTILLA_CONTEXT, else the current \
context (see `flotilla context --help`).";

const EXAMPLES: &str = "Examples:
  flotilla run --rm -it alpine sh
  flotilla run -d --name web -p 8080:80 nginx
  flotilla ps -a
  flotilla logs -f web
  flotilla exec -it web sh
  flotilla images
  FLOTILLA_HOST=tcp://127.0.0.1:2377 flotilla info
  flotilla service create --name web --replicas 3 -p 8080:80 nginx
  flotilla node ls

Run 'flotilla COMMAND --help' for more on a command.";

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Run and manage containers on a flotilla node",
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Agent address: unix:///path/to/agent.sock or tcp://HOST:PORT
    #[arg(
        short = 'H',
        long,
        global = true,
        env = "FLOTILLA_HOST",
        default_value_t = client::default_host(),
        value_name = "ADDR"
    )]
    pub host: String,
    /// Cluster context of the cluster commands (default: FLOTILLA_CONTEXT, else the current one)
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Mutual TLS to a tcp:// agent with the cluster context's CA and admin certificate
    /// (default: on for non-loopback addresses); --tls=false for plain text
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_TLS",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub tls: Option<bool>,
    /// Trust certificates signed by this CA only (PEM) for a tcp:// agent
    #[arg(long, global = true, value_name = "FILE", env = "FLOTILLA_TLS_CACERT")]
    pub tlscacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a tcp:// agent: an admin certificate of its cluster
    #[arg(long, global = true, value_name = "FILE", env = "FLOTILLA_TLS_CERT")]
    pub tlscert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tlscert
    #[arg(long, global = true, value_name = "FILE", env = "FLOTILLA_TLS_KEY")]
    pub tlskey: Option<std::path::PathBuf>,
    /// Level of the CLI's own diagnostics on stderr
    #[arg(
        long,
        global = true,
        default_value = "warn",
        value_parser = ["trace", "debug", "info", "warn", "error"],
        hide_short_help = true
    )]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Cmd,
}

/// Top-level commands: docker's common commands, the management groups, then the shortcuts.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create and run a new container from an image
    #[command(long_about = container::RUN_LONG, after_help = container::RUN_EXAMPLES, disable_help_flag = true)]
    Run(RunArgs),
    /// Run a command in a running container
    Exec(ExecArgs),
    /// List containers
    Ps(PsArgs),
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// List images
    Images(ImagesArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// Show the client's and the agent's versions
    Version(VersionArgs),
    /// Show node-wide information
    Info(InfoArgs),

    /// Manage containers
    #[command(subcommand)]
    Container(ContainerCmd),
    /// Manage images
    #[command(subcommand)]
    Image(ImageCmd),
    /// Manage volumes
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Manage networks
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Node information and events
    #[command(subcommand)]
    System(SystemCmd),

    /// Manage the cluster (join tokens, status, CA)
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Manage the cluster's nodes
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Manage services
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Manage secrets
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Manage configs
    #[command(subcommand)]
    Config(secret::ConfigCmd),
    /// Manage cluster contexts
    #[command(subcommand)]
    Context(context::ContextCmd),

    /// Create a new container without starting it
    #[command(long_about = container::CREATE_LONG, disable_help_flag = true)]
    Create(CreateArgs),
    /// Start one or more stopped containers
    Start(StartArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Restart one or more containers
    Restart(StopArgs),
    /// Send a signal (default SIGKILL) to one or more containers
    Kill(KillArgs),
    /// Remove one or more containers
    Rm(RmArgs),
    /// Show detailed information on one or more containers (JSON)
    Inspect(InspectArgs),
    /// Block until containers stop, then print their exit codes
    Wait(NamesArgs),
    /// Display a live stream of container resource usage
    Stats(StatsArgs),
    /// Display the running processes of a container
    Top(TopArgs),
    /// Freeze all processes of one or more containers
    Pause(NamesArgs),
    /// Thaw all processes of one or more containers
    Unpause(NamesArgs),
    /// Remove one or more images
    Rmi(RmiArgs),
    /// Create a tag TARGET that refers to SOURCE
    Tag(TagArgs),
    /// Load images from an OCI archive (tar)
    Load(LoadArgs),
    /// Save images to an OCI archive (tar)
    Save(SaveArgs),
    /// Import a root filesystem tarball as an image
    Import(ImportArgs),
    /// Stream the agent's events
    Events(EventsArgs),
    /// Print a shell completion script
    #[command(after_help = "Examples:
  flotilla completion bash > /etc/bash_completion.d/flotilla
  flotilla completion zsh > \"${fpath[1]}/_flotilla\"
  flotilla completion fish > ~/.config/fish/completions/flotilla.fish")]
    Completion {
        /// Shell to generate the script for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What every command needs: where the agent is, and which cluster context to use.
pub struct Ctx {
    pub host: String,
    /// `--context`, for the cluster commands (and a tcp:// agent's TLS material).
    pub context: Option<String>,
    /// TLS to a tcp:// agent.
    pub tls: client::TlsFlags,
}

impl Ctx {
    /// Connects to the agent.
    pub async fn agent(&self) -> anyhow::Result<Agent> {
        Agent::connect(&self.host, &self.tls, self.context.as_deref()).await
    }
}

/// An error with the exit code the process should end with.
#[derive(Debug)]
pub struct WithExit {
    pub code: i32,
    pub error: anyhow::Error,
}

impl std::fmt::Display for WithExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for WithExit {}

/// Attaches an exit code to an error (the innermost code wins).
pub fn with_exit(code: i32, error: anyhow::Error) -> anyhow::Error {
    if error.downcast_ref::<WithExit>().is_some() {
        return error;
    }
    WithExit { code, error }.into()
}

/// The exit code for an error: its attached one, else 1.
pub fn exit_code_of(e: &anyhow::Error) -> i32 {
    e.downcast_ref::<WithExit>().map(|w| w.code).unwrap_or(1)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("flotilla_controller={level}"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

async fn dispatch(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<i32> {
    use container::dispatch as c;
    match cmd {
        Cmd::Run(a) => c(ctx, ContainerCmd::Run(a)).await,
        Cmd::Create(a) => c(ctx, ContainerCmd::Create(a)).await,
        Cmd::Exec(a) => c(ctx, ContainerCmd::Exec(a)).await,
        Cmd::Ps(a) => c(ctx, ContainerCmd::Ps(a)).await,
        Cmd::Logs(a) => c(ctx, ContainerCmd::Logs(a)).await,
        Cmd::Start(a) => c(ctx, ContainerCmd::Start(a)).await,
        Cmd::Stop(a) => c(ctx, ContainerCmd::Stop(a)).await,
        Cmd::Restart(a) => c(ctx, ContainerCmd::Restart(a)).await,
        Cmd::Kill(a) => c(ctx, ContainerCmd::Kill(a)).await,
        Cmd::Rm(a) => c(ctx, ContainerCmd::Rm(a)).await,
        Cmd::Inspect(a) => c(ctx, ContainerCmd::Inspect(a)).await,
        Cmd::Wait(a) => c(ctx, ContainerCmd::Wait(a)).await,
        Cmd::Stats(a) => c(ctx, ContainerCmd::Stats(a)).await,
        Cmd::Top(a) => c(ctx, ContainerCmd::Top(a)).await,
        Cmd::Pause(a) => c(ctx, ContainerCmd::Pause(a)).await,
        Cmd::Unpause(a) => c(ctx, ContainerCmd::Unpause(a)).await,
        Cmd::Container(cmd) => c(ctx, cmd).await,
        Cmd::Pull(a) => image::dispatch(ctx, ImageCmd::Pull(a)).await,
        Cmd::Push(a) => image::dispatch(ctx, ImageCmd::Push(a)).await,
        Cmd::Images(a) => image::dispatch(ctx, ImageCmd::Ls(a)).await,
        Cmd::Rmi(a) => image::dispatch(ctx, ImageCmd::Rm(a)).await,
        Cmd::Tag(a) => image::dispatch(ctx, ImageCmd::Tag(a)).await,
        Cmd::Load(a) => image::dispatch(ctx, ImageCmd::Load(a)).await,
        Cmd::Save(a) => image::dispatch(ctx, ImageCmd::Save(a)).await,
        Cmd::Import(a) => image::dispatch(ctx, ImageCmd::Import(a)).await,
        Cmd::Image(cmd) => image::dispatch(ctx, cmd).await,
        Cmd::Volume(cmd) => volume::dispatch(ctx, cmd).await,
        Cmd::Network(cmd) => network::dispatch(ctx, cmd).await,
        Cmd::Version(a) => system::version(ctx, a).await,
        Cmd::Info(a) => system::dispatch(ctx, SystemCmd::Info(a)).await,
        Cmd::Events(a) => system::dispatch(ctx, SystemCmd::Events(a)).await,
        Cmd::System(cmd) => system::dispatch(ctx, cmd).await,
        Cmd::Cluster(cmd) => cluster::dispatch(ctx, cmd).await,
        Cmd::Node(cmd) => node::dispatch(ctx, cmd).await,
        Cmd::Service(cmd) => service::dispatch(ctx, cmd).await,
        Cmd::Secret(cmd) => secret::dispatch_secret(ctx, cmd).await,
        Cmd::Config(cmd) => secret::dispatch_config(ctx, cmd).await,
        Cmd::Context(cmd) => context::dispatch(ctx, cmd).await,
        Cmd::Completion { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "flotilla", &mut out);
            format::out(&String::from_utf8_lossy(&out));
            Ok(0)
        }
    }
}

/// Parses the command line, runs the command, and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the async runtime: {e}");
            return 1;
        }
    };
    let ctx = Ctx {
        host: cli.host.clone(),
        context: cli.context.clone(),
        tls: client::TlsFlags {
            tls: cli.tls,
            ca: cli.tlscacert.clone(),
            cert: cli.tlscert.clone(),
            key: cli.tlskey.clone(),
        },
    };
    let result = rt.block_on(dispatch(&ctx, cli.command));
    term::restore_all();
    // A blocked stdin read (the forwarding thread) must not hold up the exit.
    rt.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", control::error_line(&e));
            exit_code_of(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(argv: &[&str]) -> Cli {
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    #[test]
    fn global_flags_and_defaults() {
        let c = parse(&["flotilla", "ps"]);
        if std::env::var_os("FLOTILLA_HOST").is_none() {
            assert_eq!(c.host, "unix:///run/flotilla/agent.sock");
        }
        let c = parse(&["flotilla", "ps", "--host", "tcp://127.0.0.1:2377"]);
        assert_eq!(c.host, "tcp://127.0.0.1:2377");
        let c = parse(&[
            "flotilla",
            "-H",
            "unix:///tmp/a.sock",
            "--log-level",
            "debug",
            "ps",
            "-aq",
        ]);
        assert_eq!(c.host, "unix:///tmp/a.sock");
        assert_eq!(c.log_level, "debug");
        match c.command {
            Cmd::Ps(p) => assert!(p.all && p.quiet),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shortcuts_and_groups_parse_alike() {
        for argv in [
            &[
                "flotilla", "run", "-d", "--name", "web", "-p", "8080:80", "nginx",
            ][..],
            &[
                "flotilla",
                "container",
                "run",
                "-d",
                "--name",
                "web",
                "-p",
                "8080:80",
                "nginx",
            ][..],
        ] {
            let c = parse(argv);
            let a = match c.command {
                Cmd::Run(a) | Cmd::Container(ContainerCmd::Run(a)) => a,
                other => panic!("{other:?}"),
            };
            assert!(a.detach);
            assert_eq!(a.create.name.as_deref(), Some("web"));
            assert_eq!(a.create.image, "nginx");
        }
        for argv in [
            &["flotilla", "container", "ls", "-a"][..],
            &["flotilla", "container", "ps", "-a"][..],
            &["flotilla", "container", "list", "-a"][..],
        ] {
            assert!(matches!(
                parse(argv).command,
                Cmd::Container(ContainerCmd::Ps(_))
            ));
        }
        assert!(matches!(
            parse(&["flotilla", "images", "-q"]).command,
            Cmd::Images(_)
        ));
        assert!(matches!(
            parse(&["flotilla", "image", "ls"]).command,
            Cmd::Image(ImageCmd::Ls(_))
        ));
        assert!(matches!(
            parse(&["flotilla", "rmi", "-f", "x"]).command,
            Cmd::Rmi(_)
        ));
        assert!(matches!(
            parse(&["flotilla", "volume", "ls"]).command,
            Cmd::Volume(_)
        ));
        assert!(matches!(
            parse(&["flotilla", "network", "ls"]).command,
            Cmd::Network(_)
        ));
        assert!(matches!(
            parse(&["flotilla", "system", "info"]).command,
            Cmd::System(_)
        ));
        assert!(matches!(
            parse(&["flotilla", "completion", "zsh"]).command,
            Cmd::Completion { .. }
        ));
    }

    #[test]
    fn run_hostname_short_flag_and_help() {
        let c = parse(&[
            "flotilla", "run", "-h", "box", "-it", "alpine", "sh", "-c", "echo hi",
        ]);
        let Cmd::Run(a) = c.command else { panic!() };
        assert_eq!(a.create.hostname.as_deref(), Some("box"));
        assert!(a.create.interactive && a.create.tty);
        assert_eq!(a.create.command, vec!["sh", "-c", "echo hi"]);
        let e = Cli::try_parse_from(["flotilla", "run", "--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        let e = Cli::try_parse_from(["flotilla", "create", "--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        // -h stays help everywhere else.
        let e = Cli::try_parse_from(["flotilla", "ps", "-h"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
    }

    #[test]
    fn exec_and_logs_flags() {
        let Cmd::Exec(a) =
            parse(&["flotilla", "exec", "-it", "-e", "A=1", "web", "ls", "-la"]).command
        else {
            panic!()
        };
        assert_eq!(
            (a.container.as_str(), a.command.clone()),
            ("web", vec!["ls".into(), "-la".into()])
        );
        assert!(Cli::try_parse_from(["flotilla", "exec", "web"]).is_err());
        let Cmd::Logs(l) = parse(&[
            "flotilla", "logs", "-f", "-n", "10", "-t", "--since", "10m", "web",
        ])
        .command
        else {
            panic!()
        };
        assert!(l.follow && l.timestamps);
        assert_eq!((l.tail.as_str(), l.since.as_deref()), ("10", Some("10m")));
    }

    #[test]
    fn exit_codes() {
        let e = with_exit(125, anyhow::anyhow!("no such image: nope"));
        assert_eq!(exit_code_of(&e), 125);
        assert_eq!(e.to_string(), "no such image: nope");
        assert_eq!(exit_code_of(&with_exit(1, e)), 125);
        assert_eq!(exit_code_of(&anyhow::anyhow!("x")), 1);
    }

    #[test]
    fn completions_generate() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "flotilla", &mut out);
            let s = String::from_utf8(out).unwrap();
            assert!(s.contains("flotilla"));
            assert!(s.contains("publish"));
        }
    }
}
