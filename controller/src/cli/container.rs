//! `flotilla container ...` and its top-level shortcuts (`run`, `ps`, `exec`, `logs`, ...): flags
//! as docker spells them, turned into Containers.* calls. `build_create` is the pure translation
//! of `run`/`create` flags into a CreateContainerRequest (unit-tested); the rest is I/O.
//!
//! Exit codes follow docker: `run`/`create` exit 125 when they fail before the container runs and
//! with the container's exit code after; `exec` with the process's; multi-container commands
//! report each failure and exit 1 if any failed.

use std::collections::{BTreeMap, HashMap};

use clap::{ArgAction, Args, Subcommand};
use flotilla_proto::agent::v1::{
    attach_input, attach_output, exec_input, exec_output, log_entry, AttachInput, AttachOutput,
    AttachStart, ContainerConfig, ContainerInfo, ContainerRef, ContainerStats,
    CreateContainerRequest, ExecInput, ExecOutput, ExecStart, HealthConfig, InspectImageRequest,
    KillContainerRequest, ListContainersRequest, LogsRequest, RemoveContainerRequest, Resources,
    StatsRequest, StopContainerRequest,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::client::Agent;
use super::format::{self, outln};
use super::parse::{self, ParseError};
use super::stdio::{self, End, Inputs, Options, Out};
use super::template::Template;
use super::{term, with_exit, Ctx};

// ------------------------------------------------------------------ clap

/// Container commands.
#[derive(Debug, Subcommand)]
pub enum ContainerCmd {
    /// Create and run a new container from an image
    #[command(long_about = RUN_LONG, after_help = RUN_EXAMPLES, disable_help_flag = true)]
    Run(RunArgs),
    /// Create a new container without starting it
    #[command(long_about = CREATE_LONG, disable_help_flag = true)]
    Create(CreateArgs),
    /// Start one or more stopped containers
    Start(StartArgs),
    /// Stop one or more running containers (the stop signal, then SIGKILL after a timeout)
    Stop(StopArgs),
    /// Restart one or more containers
    Restart(StopArgs),
    /// Send a signal (default SIGKILL) to one or more running containers
    Kill(KillArgs),
    /// Remove one or more containers
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// List containers
    #[command(visible_aliases = ["ls", "list"], after_help = PS_EXAMPLES)]
    Ps(PsArgs),
    /// Fetch the logs of a container
    #[command(after_help = LOGS_EXAMPLES)]
    Logs(LogsArgs),
    /// Run a command in a running container
    #[command(after_help = EXEC_EXAMPLES)]
    Exec(ExecArgs),
    /// Show detailed information on one or more containers (JSON)
    #[command(after_help = INSPECT_EXAMPLES)]
    Inspect(InspectArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait(NamesArgs),
    /// Display a live stream of container resource usage
    Stats(StatsArgs),
    /// Display the running processes of a container
    Top(TopArgs),
    /// Freeze all processes of one or more containers
    Pause(NamesArgs),
    /// Thaw all processes of one or more paused containers
    Unpause(NamesArgs),
}

pub const RUN_LONG: &str = "Create and run a new container from an image.

Without -d the container's output is streamed to this terminal and flotilla exits with the \
container's exit code; with -i our stdin is forwarded, with -t the container gets a terminal \
(use -it for an interactive shell). Ctrl-C and SIGTERM are forwarded to the container when it \
has no terminal. Exit codes: 125 when the container could not be created or started, otherwise \
the container's.";

pub const CREATE_LONG: &str =
    "Create a new container without starting it; prints its id. Takes the \
same flags as `flotilla run` (except -d). Start it with `flotilla start`.";

pub const RUN_EXAMPLES: &str = "Examples:
  flotilla run --rm alpine echo hello
  flotilla run -it --rm alpine sh
  flotilla run -d --name web -p 8080:80 nginx
  flotilla run -d --restart unless-stopped -v data:/var/lib/postgresql/data \\
      -e POSTGRES_PASSWORD=secret --memory 512m --cpus 1.5 postgres:16
  flotilla run --rm --mount type=tmpfs,target=/scratch,tmpfs-size=64m alpine df -h /scratch";

const PS_EXAMPLES: &str = "Examples:
  flotilla ps
  flotilla ps -a -f status=exited
  flotilla ps -q -f label=tier=front
  flotilla ps --format json
  flotilla ps --format '{{.Names}} {{.Status}}'

Filters (-f, all must match): name=NAME, id=PREFIX, label=KEY or label=KEY=VALUE,
status=created|running|paused|restarting|exited";

const LOGS_EXAMPLES: &str = "Examples:
  flotilla logs web
  flotilla logs -f --tail 100 web
  flotilla logs --since 10m -t web
  flotilla logs --since 2026-11-28T10:00:00Z --until 2026-11-28T11:00:00Z web";

const EXEC_EXAMPLES: &str = "Examples:
  flotilla exec web ls -l /
  flotilla exec -it web sh
  flotilla exec -e DEBUG=1 -w /app -u 1000 web ./check.sh";

const INSPECT_EXAMPLES: &str = "Examples:
  flotilla inspect web
  flotilla inspect -f '{{.State.Status}}' web
  flotilla inspect -f '{{.State.ExitCode}}' job
  flotilla inspect -f '{{json .NetworkSettings.Ports}}' web
  flotilla inspect -f '{{index .Config.Labels \"tier\"}}' web";

/// Flags shared by `run` and `create` (docker's names).
#[derive(Debug, Args, Clone, Default)]
pub struct CreateArgs {
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// Pull the image first: missing (when not present), always, never
    #[arg(long, default_value = "missing", value_parser = ["missing", "always", "never"])]
    pub pull: String,
    /// Pull progress: do not print it
    #[arg(short, long)]
    pub quiet: bool,
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Keep stdin open and forward ours
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to take our value)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines, # comments)
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<String>,
    /// Working directory inside the container
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: uid[:gid] or name[:group]
    #[arg(short, long)]
    pub user: Option<String>,
    /// Set a label (KEY=VALUE)
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Override the image's entrypoint ("" clears it)
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Container host name
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Mount a volume: NAME:/path[:ro], /host/path:/path[:ro], or /path (anonymous volume)
    #[arg(short, long = "volume", value_name = "SPEC")]
    pub volume: Vec<String>,
    /// Mount: type=bind|volume|tmpfs,source=..,target=..[,readonly][,tmpfs-size=64m]
    #[arg(long, value_name = "SPEC")]
    pub mount: Vec<String>,
    /// Mount a tmpfs: /path[:size=64m,mode=1777]
    #[arg(long, value_name = "PATH[:OPTS]")]
    pub tmpfs: Vec<String>,
    /// Mount the container's root filesystem read-only
    #[arg(long)]
    pub read_only: bool,
    /// Publish a port: [hostip:][hostport:]containerport[/tcp|udp], ranges allowed
    #[arg(short, long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Publish every exposed port to a free host port
    #[arg(short = 'P', long)]
    pub publish_all: bool,
    /// Expose a port or a range (e.g. 80, 8000-8010/udp) without publishing it
    #[arg(long, value_name = "PORT")]
    pub expose: Vec<String>,
    /// Connect to a network: bridge (default), none, host, or a network's name
    #[arg(long, visible_alias = "net", value_name = "NETWORK")]
    pub network: Option<String>,
    /// Add a DNS alias on the network
    #[arg(long, value_name = "ALIAS")]
    pub network_alias: Vec<String>,
    /// IPv4 or IPv6 address on the network
    #[arg(long)]
    pub ip: Option<String>,
    /// DNS server to use
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// Add a host-to-IP mapping (NAME:IP)
    #[arg(long, value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// Restart policy: no, on-failure[:max-retries], always, unless-stopped
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// Command to run to check health (run by /bin/sh -c)
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub health_cmd: Option<String>,
    /// Time between health checks (e.g. 30s, 1m)
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Maximum time one check may take
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Consecutive failures before unhealthy
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Start period during which failures do not count
    #[arg(long, value_name = "DURATION")]
    pub health_start_period: Option<String>,
    /// Disable any health check, including the image's
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Signal to stop the container (default SIGTERM)
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Seconds to wait for a stop before killing
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub stop_timeout: Option<i32>,
    /// Give extended privileges to the container
    #[arg(long)]
    pub privileged: bool,
    /// Add a Linux capability (e.g. NET_ADMIN, ALL)
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Security options (seccomp=unconfined, no-new-privileges)
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Memory limit (e.g. 512m, 1g)
    #[arg(short, long, value_name = "BYTES")]
    pub memory: Option<String>,
    /// Memory plus swap limit; -1 for unlimited swap
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    pub memory_swap: Option<String>,
    /// Number of CPUs (decimal, e.g. 1.5)
    #[arg(long, value_name = "DECIMAL")]
    pub cpus: Option<String>,
    /// CPU shares (relative weight)
    #[arg(short = 'c', long, value_name = "N")]
    pub cpu_shares: Option<u64>,
    /// CPUs allowed to run on (e.g. 0-3, 0,1)
    #[arg(long, value_name = "LIST")]
    pub cpuset_cpus: Option<String>,
    /// Maximum number of processes (-1 for unlimited)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// Resource limit: NAME=SOFT[:HARD] (e.g. nofile=1024:2048)
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// OOM killer preference (-1000 to 1000)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub oom_score_adj: Option<i32>,
    /// Image to run
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Command and arguments (replace the image's CMD)
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// `run` = `create` flags plus detaching.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Run in the background and print the container id
    #[arg(short, long)]
    pub detach: bool,
    /// Proxy received signals to the container (when it has no terminal)
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub sig_proxy: bool,
    #[command(flatten)]
    pub create: CreateArgs,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Attach to the container's output and exit with its exit code
    #[arg(short, long)]
    pub attach: bool,
    /// Attach our stdin
    #[arg(short, long)]
    pub interactive: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait before killing (default: the container's stop timeout)
    #[arg(
        short = 't',
        long = "time",
        visible_alias = "timeout",
        value_name = "SECONDS"
    )]
    pub time: Option<i32>,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send: a name (KILL, SIGTERM, HUP) or a number
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill and remove a running container
    #[arg(short, long)]
    pub force: bool,
    /// Also remove the container's anonymous volumes
    #[arg(short, long)]
    pub volumes: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args, Default)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Only display container ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter: name=, id=, label=, status= (repeatable; all must match)
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Output: table (default), json, or a Go template like '{{.Names}}'
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Do not truncate ids and commands
    #[arg(long)]
    pub no_trunc: bool,
    /// Show the n last created containers (all states)
    #[arg(short = 'n', long, value_name = "N")]
    pub last: Option<usize>,
    /// Show the latest created container (all states)
    #[arg(short, long)]
    pub latest: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow the output
    #[arg(short, long)]
    pub follow: bool,
    /// Only logs since: relative (10m), RFC 3339, or unix seconds
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only logs before: relative (10m), RFC 3339, or unix seconds
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Number of lines from the end, or "all"
    #[arg(short = 'n', long, default_value = "all", value_name = "N")]
    pub tail: String,
    /// Prefix each line with its RFC 3339 timestamp
    #[arg(short, long)]
    pub timestamps: bool,
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Run in the background
    #[arg(short, long)]
    pub detach: bool,
    /// Keep stdin open and forward ours
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<String>,
    /// User to run as: uid[:gid] or name[:group]
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Give extended privileges to the command
    #[arg(long)]
    pub privileged: bool,
    #[arg(value_name = "CONTAINER")]
    pub container: String,
    /// Command and arguments
    #[arg(
        value_name = "COMMAND",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Format the output with a Go template (e.g. '{{.State.Status}}')
    #[arg(short, long)]
    pub format: Option<String>,
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NamesArgs {
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Print one sample and exit
    #[arg(long)]
    pub no_stream: bool,
    /// Output: table (default), json, or a Go template
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Do not truncate ids
    #[arg(long)]
    pub no_trunc: bool,
    #[arg(value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

/// Runs a container subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: ContainerCmd) -> anyhow::Result<i32> {
    match cmd {
        ContainerCmd::Run(a) => run(ctx, a).await,
        ContainerCmd::Create(a) => create(ctx, a).await,
        ContainerCmd::Start(a) => start(ctx, a).await,
        ContainerCmd::Stop(a) => stop(ctx, a, false).await,
        ContainerCmd::Restart(a) => stop(ctx, a, true).await,
        ContainerCmd::Kill(a) => kill(ctx, a).await,
        ContainerCmd::Rm(a) => rm(ctx, a).await,
        ContainerCmd::Ps(a) => ps(ctx, a).await,
        ContainerCmd::Logs(a) => logs(ctx, a).await,
        ContainerCmd::Exec(a) => exec(ctx, a).await,
        ContainerCmd::Inspect(a) => inspect(ctx, a).await,
        ContainerCmd::Wait(a) => wait(ctx, a).await,
        ContainerCmd::Stats(a) => stats(ctx, a).await,
        ContainerCmd::Top(a) => top(ctx, a).await,
        ContainerCmd::Pause(a) => pause(ctx, a, true).await,
        ContainerCmd::Unpause(a) => pause(ctx, a, false).await,
    }
}

// ------------------------------------------------------------------ create request

fn valid_container_name(n: &str) -> bool {
    let n = n.strip_prefix('/').unwrap_or(n);
    let mut c = n.chars();
    n.len() >= 2
        && matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && c.all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
}

/// Where `build_create` gets what is not in the flags.
pub struct Env<'a> {
    /// Our environment variables (for bare `-e KEY` and env-file keys).
    pub var: &'a dyn Fn(&str) -> Option<String>,
    /// Reads an env file.
    pub read: &'a dyn Fn(&str) -> Result<String, ParseError>,
    /// Our working directory, for relative bind sources.
    pub cwd: &'a str,
}

/// Reads env files from disk, the environment from the process.
pub fn process_env_read(path: &str) -> Result<String, ParseError> {
    std::fs::read_to_string(path).map_err(|e| ParseError(format!("reading env file {path:?}: {e}")))
}

fn env_list(files: &[String], vars: &[String], env: &Env<'_>) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    for f in files {
        let content = (env.read)(f)?;
        out.extend(parse::parse_env_file(f, &content, env.var)?);
    }
    for v in vars {
        if let Some(kv) = parse::parse_env(v, env.var)? {
            out.push(kv);
        }
    }
    Ok(out)
}

/// Translates `run`/`create` flags into the request; every user error is caught here, before
/// anything is sent.
pub fn build_create(a: &CreateArgs, env: &Env<'_>) -> Result<CreateContainerRequest, ParseError> {
    let name = a.name.clone().unwrap_or_default();
    if !name.is_empty() && !valid_container_name(&name) {
        return Err(ParseError(format!(
            "invalid container name {name:?}: use at least 2 characters from [a-zA-Z0-9_.-], starting with a letter or digit"
        )));
    }
    if a.image.is_empty() {
        return Err(ParseError("an image is required".into()));
    }
    let mut labels = HashMap::new();
    for l in &a.label {
        let (k, v) = parse::parse_label(l)?;
        labels.insert(k, v);
    }
    let mut mounts = Vec::new();
    for v in &a.volume {
        mounts.push(parse::parse_volume(v, env.cwd)?);
    }
    for m in &a.mount {
        mounts.push(parse::parse_mount(m, env.cwd)?);
    }
    for t in &a.tmpfs {
        mounts.push(parse::parse_tmpfs(t)?);
    }
    let mut seen = std::collections::HashSet::new();
    for m in &mounts {
        if !seen.insert(m.target.trim_end_matches('/').to_string()) {
            return Err(ParseError(format!("duplicate mount point: {}", m.target)));
        }
    }
    let mut ports = Vec::new();
    for p in &a.publish {
        ports.extend(parse::parse_publish(p)?);
    }
    let mut exposed_ports = Vec::new();
    for e in &a.expose {
        exposed_ports.extend(parse::parse_expose(e)?);
    }
    let restart_policy = a.restart.as_deref().map(parse::parse_restart).transpose()?;
    if a.rm && restart_policy.as_ref().is_some_and(|r| r.name != "no") {
        return Err(ParseError(
            "conflicting options: --restart and --rm (a container removed on exit cannot be restarted)".into(),
        ));
    }
    let any_health = a.health_cmd.is_some()
        || a.health_interval.is_some()
        || a.health_timeout.is_some()
        || a.health_retries.is_some()
        || a.health_start_period.is_some();
    if a.no_healthcheck && any_health {
        return Err(ParseError(
            "conflicting options: --no-healthcheck and --health-*".into(),
        ));
    }
    let healthcheck = if a.no_healthcheck {
        Some(HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        })
    } else if any_health {
        let dur = |flag: &str, v: &Option<String>| -> Result<i64, ParseError> {
            match v {
                None => Ok(0),
                Some(s) => {
                    parse::parse_duration_ns(s).map_err(|e| ParseError(format!("{flag}: {e}")))
                }
            }
        };
        Some(HealthConfig {
            test: match &a.health_cmd {
                Some(c) if c.trim().is_empty() => {
                    return Err(ParseError("--health-cmd is empty".into()))
                }
                Some(c) => vec!["CMD-SHELL".into(), c.clone()],
                None => Vec::new(),
            },
            interval_ns: dur("--health-interval", &a.health_interval)?,
            timeout_ns: dur("--health-timeout", &a.health_timeout)?,
            retries: a.health_retries.unwrap_or(0),
            start_period_ns: dur("--health-start-period", &a.health_start_period)?,
        })
    } else {
        None
    };
    let memory = a
        .memory
        .as_deref()
        .map(parse::parse_size)
        .transpose()?
        .unwrap_or(0);
    let memory_swap = a
        .memory_swap
        .as_deref()
        .map(parse::parse_memory_swap)
        .transpose()?
        .unwrap_or(0);
    if memory_swap > 0 && memory == 0 {
        return Err(ParseError(
            "--memory-swap needs --memory (it limits memory plus swap)".into(),
        ));
    }
    if memory_swap > 0 && memory_swap < memory {
        return Err(ParseError(
            "--memory-swap must be at least --memory (it limits memory plus swap)".into(),
        ));
    }
    if let Some(o) = a.oom_score_adj {
        if !(-1000..=1000).contains(&o) {
            return Err(ParseError(format!(
                "invalid --oom-score-adj {o}: must be between -1000 and 1000"
            )));
        }
    }
    let ulimits = a
        .ulimit
        .iter()
        .map(|u| parse::parse_ulimit(u))
        .collect::<Result<Vec<_>, _>>()?;
    let resources = Resources {
        memory,
        memory_swap,
        nano_cpus: a
            .cpus
            .as_deref()
            .map(parse::parse_cpus)
            .transpose()?
            .unwrap_or(0),
        cpu_shares: a.cpu_shares.unwrap_or(0),
        cpuset_cpus: a.cpuset_cpus.clone().unwrap_or_default(),
        pids_limit: a.pids_limit.unwrap_or(0),
        ulimits,
        oom_score_adj: a.oom_score_adj.unwrap_or(0),
    };
    let ip =
        a.ip.as_deref()
            .map(|i| parse::parse_ip("--ip", i))
            .transpose()?;
    let dns = a
        .dns
        .iter()
        .map(|d| parse::parse_ip("--dns", d))
        .collect::<Result<Vec<_>, _>>()?;
    let extra_hosts = a
        .add_host
        .iter()
        .map(|h| parse::parse_add_host(h))
        .collect::<Result<Vec<_>, _>>()?;
    let network = a.network.clone().unwrap_or_default();
    if matches!(network.as_str(), "none" | "host") && (!a.network_alias.is_empty() || ip.is_some())
    {
        return Err(ParseError(format!(
            "--network-alias and --ip need a bridge network, not --network {network}"
        )));
    }
    if network == "host" && (!ports.is_empty() || a.publish_all) {
        return Err(ParseError(
            "published ports are meaningless with --network host (the container uses the host's ports)".into(),
        ));
    }
    let (entrypoint, entrypoint_set) = match &a.entrypoint {
        None => (Vec::new(), false),
        Some(e) if e.is_empty() => (Vec::new(), true),
        Some(e) => (vec![e.clone()], true),
    };
    let config = ContainerConfig {
        image: a.image.clone(),
        cmd: a.command.clone(),
        entrypoint,
        entrypoint_set,
        env: env_list(&a.env_file, &a.env, env)?,
        working_dir: a.workdir.clone().unwrap_or_default(),
        user: a.user.clone().unwrap_or_default(),
        hostname: a.hostname.clone().unwrap_or_default(),
        labels,
        tty: a.tty,
        open_stdin: a.interactive,
        read_only: a.read_only,
        privileged: a.privileged,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        security_opt: a.security_opt.clone(),
        resources: Some(resources),
        mounts,
        ports,
        publish_all: a.publish_all,
        network,
        network_aliases: a.network_alias.clone(),
        ip: ip.unwrap_or_default(),
        dns,
        extra_hosts,
        restart_policy,
        healthcheck,
        stop_signal: a.stop_signal.clone().unwrap_or_default(),
        stop_timeout: a.stop_timeout.unwrap_or(-1),
        auto_remove: a.rm,
        exposed_ports,
    };
    Ok(CreateContainerRequest {
        name,
        config: Some(config),
    })
}

async fn create_container(ctx: &Ctx, a: &CreateArgs) -> anyhow::Result<(Agent, String)> {
    if a.interactive && a.tty && !term::stdin_is_tty() {
        anyhow::bail!("the input device is not a TTY (drop -t, or run from a terminal)");
    }
    let cwd = std::env::current_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/".into());
    let var = |k: &str| std::env::var(k).ok();
    let env = Env {
        var: &var,
        read: &process_env_read,
        cwd: &cwd,
    };
    let req = build_create(a, &env)?;
    let agent = ctx.agent().await?;
    let pull = match a.pull.as_str() {
        "always" => true,
        "never" => false,
        _ => match agent
            .images()
            .inspect(InspectImageRequest {
                reference: a.image.clone(),
            })
            .await
        {
            Ok(_) => false,
            Err(s) if s.code() == tonic::Code::NotFound => {
                eprintln!("Unable to find image '{}' locally", a.image);
                true
            }
            Err(s) => return Err(agent.err(s)),
        },
    };
    if pull {
        super::image::pull_with_progress(&agent, &a.image, None, false, a.quiet).await?;
    }
    let resp = agent
        .containers()
        .create(req)
        .await
        .map_err(|s| agent.err(s))?
        .into_inner();
    for w in &resp.warnings {
        eprintln!("WARNING: {w}");
    }
    Ok((agent, resp.id))
}

async fn create(ctx: &Ctx, a: CreateArgs) -> anyhow::Result<i32> {
    let (_, id) = create_container(ctx, &a)
        .await
        .map_err(|e| with_exit(125, e))?;
    outln(&id);
    Ok(0)
}

async fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<i32> {
    let c = &a.create;
    let (agent, id) = create_container(ctx, c)
        .await
        .map_err(|e| with_exit(125, e))?;
    if a.detach {
        agent
            .containers()
            .start(ContainerRef {
                container: id.clone(),
            })
            .await
            .map_err(|s| with_exit(125, agent.err(s)))?;
        outln(&id);
        return Ok(0);
    }
    let raw = c.tty && c.interactive && term::stdin_is_tty();
    attach(
        &agent,
        &id,
        true,
        Options {
            stdin: c.interactive,
            tty: c.tty,
            raw,
            sig_proxy: a.sig_proxy.then(|| id.clone()),
        },
    )
    .await
}

fn attach_out(o: AttachOutput) -> Option<Out> {
    Some(match o.output? {
        attach_output::Output::Stdout(b) => Out::Stdout(b),
        attach_output::Output::Stderr(b) => Out::Stderr(b),
        attach_output::Output::Exit(s) => Out::Exit(s),
    })
}

fn exec_out(o: ExecOutput) -> Option<Out> {
    Some(match o.output? {
        exec_output::Output::Stdout(b) => Out::Stdout(b),
        exec_output::Output::Stderr(b) => Out::Stderr(b),
        exec_output::Output::Exit(s) => Out::Exit(s),
    })
}

/// Our exit code for a final status: the process's, or 125 when it never ran (an error with
/// code 0); the error, if any, goes to stderr.
fn exit_code(s: &flotilla_proto::agent::v1::ExitStatus) -> i32 {
    if !s.error.is_empty() {
        eprintln!("Error: {}", s.error);
        if s.code == 0 {
            return 125;
        }
    }
    s.code
}

/// Attaches to a container (starting it when `start`) and runs the stdio session.
async fn attach(agent: &Agent, container: &str, start: bool, opts: Options) -> anyhow::Result<i32> {
    let (tx, rx) = mpsc::channel::<AttachInput>(64);
    let first = AttachInput {
        input: Some(attach_input::Input::Start(AttachStart {
            container: container.to_string(),
            stdin: opts.stdin,
            start_container: start,
            size: if opts.tty {
                stdio::terminal_size()
            } else {
                None
            },
        })),
    };
    tx.send(first)
        .await
        .map_err(|_| anyhow::anyhow!("attach stream closed"))?;
    let stream = agent
        .containers()
        .attach(ReceiverStream::new(rx))
        .await
        .map_err(|s| with_exit(125, agent.err(s)))?
        .into_inner();
    let inputs = Inputs {
        stdin: |b| AttachInput {
            input: Some(attach_input::Input::Stdin(b)),
        },
        close_stdin: || AttachInput {
            input: Some(attach_input::Input::CloseStdin(true)),
        },
        resize: |s| AttachInput {
            input: Some(attach_input::Input::Resize(s)),
        },
    };
    let mut got_output = false;
    match stdio::run(agent, tx, stream, attach_out, inputs, opts, &mut got_output).await {
        Ok(End::Exit(s)) => Ok(exit_code(&s)),
        Ok(End::Detached(code)) => Ok(code),
        Err(e) if start && !got_output => Err(with_exit(125, e)),
        Err(e) => Err(e),
    }
}

async fn exec(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<i32> {
    if a.interactive && a.tty && !term::stdin_is_tty() {
        anyhow::bail!("the input device is not a TTY (drop -t, or run from a terminal)");
    }
    let var = |k: &str| std::env::var(k).ok();
    let env = Env {
        var: &var,
        read: &process_env_read,
        cwd: "/",
    };
    let env_vars = env_list(&a.env_file, &a.env, &env)?;
    let agent = ctx.agent().await?;
    let (tx, rx) = mpsc::channel::<ExecInput>(64);
    let start = ExecStart {
        container: a.container.clone(),
        cmd: a.command.clone(),
        env: env_vars,
        user: a.user.clone().unwrap_or_default(),
        working_dir: a.workdir.clone().unwrap_or_default(),
        tty: a.tty,
        stdin: a.interactive && !a.detach,
        detach: a.detach,
        privileged: a.privileged,
        size: if a.tty { stdio::terminal_size() } else { None },
    };
    tx.send(ExecInput {
        input: Some(exec_input::Input::Start(start)),
    })
    .await
    .map_err(|_| anyhow::anyhow!("exec stream closed"))?;
    let stream = agent
        .containers()
        .exec(ReceiverStream::new(rx))
        .await
        .map_err(|s| with_exit(126, agent.err(s)))?
        .into_inner();
    let inputs = Inputs {
        stdin: |b| ExecInput {
            input: Some(exec_input::Input::Stdin(b)),
        },
        close_stdin: || ExecInput {
            input: Some(exec_input::Input::CloseStdin(true)),
        },
        resize: |s| ExecInput {
            input: Some(exec_input::Input::Resize(s)),
        },
    };
    let opts = Options {
        stdin: a.interactive && !a.detach,
        tty: a.tty && !a.detach,
        raw: a.tty && a.interactive && !a.detach && term::stdin_is_tty(),
        sig_proxy: None,
    };
    let mut got = false;
    match stdio::run(&agent, tx, stream, exec_out, inputs, opts, &mut got).await {
        Ok(End::Exit(s)) => {
            if !s.error.is_empty() && !got {
                // The process never started (e.g. command not found): docker's 126/127.
                eprintln!("Error: {}", s.error);
                return Ok(if s.code == 0 { 126 } else { s.code });
            }
            Ok(exit_code(&s))
        }
        Ok(End::Detached(c)) => Ok(c),
        Err(e) if !got => Err(with_exit(126, e)),
        Err(e) => Err(e),
    }
}

// ------------------------------------------------------------------ simple lifecycle

/// Runs `f` on each name, printing the name on success and the error otherwise; 1 if any failed.
async fn each<F, Fut>(names: &[String], mut f: F) -> anyhow::Result<i32>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<String>>>,
{
    let mut code = 0;
    for n in names {
        match f(n.clone()).await {
            Ok(Some(line)) => outln(&line),
            Ok(None) => {}
            Err(e) => {
                eprintln!("Error: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

async fn start(ctx: &Ctx, a: StartArgs) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    if a.attach || a.interactive {
        if a.containers.len() > 1 {
            anyhow::bail!("cannot start and attach to more than one container at once");
        }
        let c = &a.containers[0];
        let info = agent
            .containers()
            .inspect(ContainerRef {
                container: c.clone(),
            })
            .await
            .map_err(|s| agent.err(s))?
            .into_inner();
        let tty = info.config.as_ref().is_some_and(|c| c.tty);
        let raw = tty && a.interactive && term::stdin_is_tty();
        return attach(
            &agent,
            &info.id,
            true,
            Options {
                stdin: a.interactive,
                tty,
                raw,
                sig_proxy: Some(info.id.clone()),
            },
        )
        .await;
    }
    each(&a.containers, |c| {
        let agent = agent.clone();
        async move {
            agent
                .containers()
                .start(ContainerRef {
                    container: c.clone(),
                })
                .await
                .map_err(|s| agent.err(s))?;
            Ok(Some(c))
        }
    })
    .await
}

async fn stop(ctx: &Ctx, a: StopArgs, restart: bool) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    let timeout = a.time.unwrap_or(-1);
    each(&a.containers, |c| {
        let agent = agent.clone();
        async move {
            let req = StopContainerRequest {
                container: c.clone(),
                timeout,
            };
            let r = if restart {
                agent.containers().restart(req).await
            } else {
                agent.containers().stop(req).await
            };
            r.map_err(|s| agent.err(s))?;
            Ok(Some(c))
        }
    })
    .await
}

async fn kill(ctx: &Ctx, a: KillArgs) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    let sig = a.signal.clone();
    each(&a.containers, |c| {
        let (agent, signal) = (agent.clone(), sig.clone());
        async move {
            agent
                .containers()
                .kill(KillContainerRequest {
                    container: c.clone(),
                    signal,
                })
                .await
                .map_err(|s| agent.err(s))?;
            Ok(Some(c))
        }
    })
    .await
}

async fn rm(ctx: &Ctx, a: RmArgs) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    let (force, volumes) = (a.force, a.volumes);
    each(&a.containers, |c| {
        let agent = agent.clone();
        async move {
            agent
                .containers()
                .remove(RemoveContainerRequest {
                    container: c.clone(),
                    force,
                    volumes,
                })
                .await
                .map_err(|s| agent.err(s))?;
            Ok(Some(c))
        }
    })
    .await
}

async fn pause(ctx: &Ctx, a: NamesArgs, pause: bool) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    each(&a.containers, |c| {
        let agent = agent.clone();
        async move {
            let r = ContainerRef {
                container: c.clone(),
            };
            let res = if pause {
                agent.containers().pause(r).await
            } else {
                agent.containers().unpause(r).await
            };
            res.map_err(|s| agent.err(s))?;
            Ok(Some(c))
        }
    })
    .await
}

async fn wait(ctx: &Ctx, a: NamesArgs) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    each(&a.containers, |c| {
        let agent = agent.clone();
        async move {
            let r = agent
                .containers()
                .wait(ContainerRef { container: c })
                .await
                .map_err(|s| agent.err(s))?
                .into_inner();
            if !r.error.is_empty() {
                eprintln!("Error: {}", r.error);
            }
            Ok(Some(r.exit_code.to_string()))
        }
    })
    .await
}

async fn top(ctx: &Ctx, a: TopArgs) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    let r = agent
        .containers()
        .top(ContainerRef {
            container: a.container,
        })
        .await
        .map_err(|s| agent.err(s))?
        .into_inner();
    let titles: Vec<&str> = r.titles.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = r.processes.into_iter().map(|p| p.columns).collect();
    format::out(&format::table(&titles, &rows));
    Ok(0)
}

// ------------------------------------------------------------------ ps

/// One `ps` row, for `--format json` and templates (docker's keys).
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct PsRow {
    #[serde(rename = "ID")]
    pub id: String,
    pub image: String,
    pub command: String,
    pub created_at: String,
    pub running_for: String,
    pub ports: String,
    pub state: String,
    pub status: String,
    pub names: String,
    pub labels: BTreeMap<String, String>,
    pub networks: String,
    pub mounts: String,
}

/// The `ps` row of a container.
pub fn ps_row(c: &ContainerInfo, now: i64, no_trunc: bool) -> PsRow {
    let image = if c.image.starts_with("sha256:") {
        if no_trunc {
            c.image.clone()
        } else {
            format::short_id(&c.image)
        }
    } else {
        format::familiar_reference(&c.image)
    };
    let cfg = c.config.clone().unwrap_or_default();
    PsRow {
        id: if no_trunc {
            c.id.clone()
        } else {
            format::short_id(&c.id)
        },
        image,
        command: format::command_column(&c.command, no_trunc),
        created_at: format::rfc3339(c.created_unix_nano),
        running_for: format::ago(c.created_unix_nano, now),
        ports: format::ports_column(&c.ports, &cfg.exposed_ports),
        state: c
            .state
            .as_ref()
            .map(|s| s.status.clone())
            .unwrap_or_default(),
        status: format::status_column(c, now),
        names: c.name.clone(),
        labels: cfg.labels.into_iter().collect(),
        networks: c
            .networks
            .iter()
            .map(|n| n.network.clone())
            .collect::<Vec<_>>()
            .join(","),
        mounts: c
            .mounts
            .iter()
            .map(|m| {
                if m.name.is_empty() {
                    m.source.clone()
                } else {
                    m.name.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Newest first, then `-n`/`-l`.
pub fn select_containers(mut cs: Vec<ContainerInfo>, last: Option<usize>) -> Vec<ContainerInfo> {
    cs.sort_by(|a, b| {
        b.created_unix_nano
            .cmp(&a.created_unix_nano)
            .then(a.name.cmp(&b.name))
    });
    if let Some(n) = last {
        cs.truncate(n);
    }
    cs
}

/// Prints rows as a table, JSON array or one template line each.
pub fn print_rows<T: Serialize>(
    rows: &[T],
    format: &str,
    headers: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    match format {
        "table" | "" => {
            let body: Vec<Vec<String>> = rows.iter().map(&cells).collect();
            format::out(&format::table(headers, &body));
        }
        "json" => format::print_json(rows)?,
        tpl => {
            let tpl = tpl.strip_prefix("table ").unwrap_or(tpl);
            let t = Template::parse(tpl)?;
            let mut s = String::new();
            for r in rows {
                s.push_str(&t.render(&serde_json::to_value(r)?)?);
                s.push('\n');
            }
            format::out(&s);
        }
    }
    Ok(())
}

async fn ps(ctx: &Ctx, a: PsArgs) -> anyhow::Result<i32> {
    let last = if a.latest { Some(1) } else { a.last };
    if a.format != "table" && a.format != "json" {
        Template::parse(&a.format)?;
    }
    let agent = ctx.agent().await?;
    let list = agent
        .containers()
        .list(ListContainersRequest {
            all: a.all || last.is_some(),
            filters: a.filter.clone(),
        })
        .await
        .map_err(|s| agent.err(s))?
        .into_inner()
        .containers;
    let cs = select_containers(list, last);
    let now = format::now_ns();
    if a.quiet {
        let mut s = String::new();
        for c in &cs {
            s.push_str(&if a.no_trunc {
                c.id.clone()
            } else {
                format::short_id(&c.id)
            });
            s.push('\n');
        }
        format::out(&s);
        return Ok(0);
    }
    let rows: Vec<PsRow> = cs.iter().map(|c| ps_row(c, now, a.no_trunc)).collect();
    print_rows(
        &rows,
        &a.format,
        &[
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES",
        ],
        |r| {
            vec![
                r.id.clone(),
                r.image.clone(),
                r.command.clone(),
                r.running_for.clone(),
                r.status.clone(),
                r.ports.clone(),
                r.names.clone(),
            ]
        },
    )?;
    Ok(0)
}

// ------------------------------------------------------------------ logs

/// One log entry as we print it.
pub fn log_line(data: &[u8], time_ns: i64, timestamps: bool) -> Vec<u8> {
    if !timestamps {
        return data.to_vec();
    }
    let mut v = format::rfc3339_nano(time_ns).into_bytes();
    v.push(b' ');
    v.extend_from_slice(data);
    v
}

async fn logs(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<i32> {
    use std::io::Write;
    let now = format::now_ns();
    let since = a
        .since
        .as_deref()
        .map(|s| parse::parse_timestamp("--since", s, now))
        .transpose()?
        .unwrap_or(0);
    let until = a
        .until
        .as_deref()
        .map(|s| parse::parse_timestamp("--until", s, now))
        .transpose()?
        .unwrap_or(0);
    let tail = parse::parse_tail(&a.tail)?;
    let agent = ctx.agent().await?;
    let mut stream = agent
        .containers()
        .logs(LogsRequest {
            container: a.container,
            follow: a.follow,
            since_unix_nano: since,
            until_unix_nano: until,
            tail,
            stdout: false,
            stderr: false,
        })
        .await
        .map_err(|s| agent.err(s))?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(|s| agent.err(s))? {
        let line = log_line(&e.data, e.time_unix_nano, a.timestamps);
        if e.stream == log_entry::Stream::Stderr as i32 {
            let mut o = std::io::stderr().lock();
            let _ = o.write_all(&line);
        } else {
            format::out(&String::from_utf8_lossy(&line));
        }
    }
    Ok(0)
}

// ------------------------------------------------------------------ inspect

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthLogView {
    pub start: String,
    pub end: String,
    pub exit_code: i32,
    pub output: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthView {
    pub status: String,
    pub failing_streak: u32,
    pub log: Vec<HealthLogView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StateView {
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: i32,
    pub exit_code: i32,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthcheckView {
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub retries: u32,
    pub start_period: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConfigView {
    pub hostname: String,
    pub user: String,
    pub tty: bool,
    pub open_stdin: bool,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub image: String,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthcheckView>,
    pub stop_signal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i32>,
}

#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct PortView {
    #[serde(rename = "HostIp")]
    pub host_ip: String,
    #[serde(rename = "HostPort")]
    pub host_port: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicyView {
    pub name: String,
    pub maximum_retry_count: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UlimitView {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfigView {
    pub network_mode: String,
    pub port_bindings: BTreeMap<String, Vec<PortView>>,
    pub publish_all_ports: bool,
    pub restart_policy: RestartPolicyView,
    pub auto_remove: bool,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub dns: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub memory: i64,
    pub memory_swap: i64,
    pub nano_cpus: i64,
    pub cpu_shares: u64,
    pub cpuset_cpus: String,
    pub pids_limit: i64,
    pub ulimits: Vec<UlimitView>,
    pub oom_score_adj: i32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointView {
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u32,
    pub gateway: String,
    pub mac_address: String,
    pub aliases: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettingsView {
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    pub ports: BTreeMap<String, Option<Vec<PortView>>>,
    pub networks: BTreeMap<String, EndpointView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountView {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub source: String,
    pub destination: String,
    #[serde(rename = "RW")]
    pub rw: bool,
}

/// `flotilla inspect` of a container, in docker's shape.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectView {
    pub id: String,
    pub name: String,
    pub created: String,
    pub state: StateView,
    pub image: String,
    pub config: ConfigView,
    pub host_config: HostConfigView,
    pub network_settings: NetworkSettingsView,
    pub mounts: Vec<MountView>,
    pub restart_count: u32,
    pub log_path: String,
}

fn port_key(port: u32, proto: &str) -> String {
    format!("{port}/{}", if proto.is_empty() { "tcp" } else { proto })
}

/// Builds the inspect view of a container.
pub fn inspect_view(c: &ContainerInfo) -> InspectView {
    let st = c.state.clone().unwrap_or_default();
    let cfg = c.config.clone().unwrap_or_default();
    let res = cfg.resources.clone().unwrap_or_default();
    let mut exposed: BTreeMap<String, serde_json::Value> = cfg
        .exposed_ports
        .iter()
        .map(|p| (p.clone(), serde_json::json!({})))
        .collect();
    let mut bindings: BTreeMap<String, Vec<PortView>> = BTreeMap::new();
    for p in &cfg.ports {
        bindings
            .entry(port_key(p.container_port, &p.protocol))
            .or_default()
            .push(PortView {
                host_ip: p.host_ip.clone(),
                host_port: if p.host_port == 0 {
                    String::new()
                } else {
                    p.host_port.to_string()
                },
            });
    }
    let mut ports: BTreeMap<String, Option<Vec<PortView>>> =
        exposed.keys().map(|k| (k.clone(), None)).collect();
    for p in &c.ports {
        let key = port_key(p.container_port, &p.protocol);
        exposed
            .entry(key.clone())
            .or_insert_with(|| serde_json::json!({}));
        let v = PortView {
            host_ip: if p.host_ip.is_empty() {
                "0.0.0.0".into()
            } else {
                p.host_ip.clone()
            },
            host_port: p.host_port.to_string(),
        };
        ports
            .entry(key)
            .or_insert(None)
            .get_or_insert_with(Vec::new)
            .push(v);
    }
    let networks: BTreeMap<String, EndpointView> = c
        .networks
        .iter()
        .map(|n| {
            (
                n.network.clone(),
                EndpointView {
                    ip_address: n.ip.clone(),
                    ip_prefix_len: n.prefix_len,
                    gateway: n.gateway.clone(),
                    mac_address: n.mac.clone(),
                    aliases: n.aliases.clone(),
                },
            )
        })
        .collect();
    let health = st
        .health
        .as_ref()
        .filter(|h| !h.status.is_empty())
        .map(|h| HealthView {
            status: h.status.clone(),
            failing_streak: h.failing_streak,
            log: h
                .log
                .iter()
                .map(|l| HealthLogView {
                    start: format::rfc3339(l.start_unix_nano),
                    end: format::rfc3339(l.end_unix_nano),
                    exit_code: l.exit_code,
                    output: l.output.clone(),
                })
                .collect(),
        });
    let rp = cfg.restart_policy.clone().unwrap_or_default();
    InspectView {
        id: c.id.clone(),
        name: format!("/{}", c.name),
        created: format::rfc3339(c.created_unix_nano),
        state: StateView {
            running: st.status == "running" || st.status == "paused",
            paused: st.status == "paused",
            restarting: st.status == "restarting",
            dead: st.status == "dead",
            oom_killed: st.oom_killed,
            pid: st.pid,
            exit_code: st.exit_code,
            error: st.error.clone(),
            started_at: format::rfc3339(st.started_unix_nano),
            finished_at: format::rfc3339(st.finished_unix_nano),
            health,
            status: st.status.clone(),
        },
        image: c.image_id.clone(),
        config: ConfigView {
            hostname: cfg.hostname.clone(),
            user: cfg.user.clone(),
            tty: cfg.tty,
            open_stdin: cfg.open_stdin,
            env: cfg.env.clone(),
            cmd: cfg.cmd.clone(),
            entrypoint: cfg.entrypoint_set.then(|| cfg.entrypoint.clone()),
            image: if cfg.image.is_empty() {
                c.image.clone()
            } else {
                cfg.image.clone()
            },
            working_dir: cfg.working_dir.clone(),
            labels: cfg.labels.clone().into_iter().collect(),
            exposed_ports: exposed,
            healthcheck: cfg.healthcheck.as_ref().map(|h| HealthcheckView {
                test: h.test.clone(),
                interval: h.interval_ns,
                timeout: h.timeout_ns,
                retries: h.retries,
                start_period: h.start_period_ns,
            }),
            stop_signal: cfg.stop_signal.clone(),
            stop_timeout: (cfg.stop_timeout >= 0).then_some(cfg.stop_timeout),
        },
        host_config: HostConfigView {
            network_mode: if cfg.network.is_empty() {
                "bridge".into()
            } else {
                cfg.network.clone()
            },
            port_bindings: bindings,
            publish_all_ports: cfg.publish_all,
            restart_policy: RestartPolicyView {
                name: if rp.name.is_empty() {
                    "no".into()
                } else {
                    rp.name.clone()
                },
                maximum_retry_count: rp.max_retries,
            },
            auto_remove: cfg.auto_remove,
            privileged: cfg.privileged,
            readonly_rootfs: cfg.read_only,
            cap_add: cfg.cap_add.clone(),
            cap_drop: cfg.cap_drop.clone(),
            security_opt: cfg.security_opt.clone(),
            dns: cfg.dns.clone(),
            extra_hosts: cfg.extra_hosts.clone(),
            memory: res.memory,
            memory_swap: res.memory_swap,
            nano_cpus: res.nano_cpus,
            cpu_shares: res.cpu_shares,
            cpuset_cpus: res.cpuset_cpus.clone(),
            pids_limit: res.pids_limit,
            ulimits: res
                .ulimits
                .iter()
                .map(|u| UlimitView {
                    name: u.name.clone(),
                    soft: u.soft,
                    hard: u.hard,
                })
                .collect(),
            oom_score_adj: res.oom_score_adj,
        },
        network_settings: NetworkSettingsView {
            ip_address: c
                .networks
                .iter()
                .find(|n| n.network == "bridge")
                .map(|n| n.ip.clone())
                .unwrap_or_default(),
            ports,
            networks,
        },
        mounts: c
            .mounts
            .iter()
            .map(|m| MountView {
                kind: m.r#type.clone(),
                name: m.name.clone(),
                source: m.source.clone(),
                destination: m.destination.clone(),
                rw: !m.read_only,
            })
            .collect(),
        restart_count: st.restart_count,
        log_path: c.log_path.clone(),
    }
}

/// Prints inspect results: a JSON array, or one template line per object. Used by every group.
pub fn print_inspect(values: &[serde_json::Value], format: Option<&str>) -> anyhow::Result<()> {
    match format {
        None | Some("") | Some("json") => format::print_json(values),
        Some(tpl) => {
            let t = Template::parse(tpl)?;
            let mut s = String::new();
            for v in values {
                s.push_str(&t.render(v)?);
                s.push('\n');
            }
            format::out(&s);
            Ok(())
        }
    }
}

/// Fetches each item with `get`, prints the found ones, reports each failure; 1 if any failed.
pub async fn inspect_each<F, Fut>(
    names: &[String],
    format: Option<&str>,
    mut get: F,
) -> anyhow::Result<i32>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<serde_json::Value>>,
{
    if let Some(f) = format {
        if f != "json" {
            Template::parse(f)?;
        }
    }
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for n in names {
        match get(n.clone()).await {
            Ok(v) => found.push(v),
            Err(e) => errors.push(e),
        }
    }
    if !found.is_empty() || format.is_none() {
        print_inspect(&found, format)?;
    }
    for e in &errors {
        eprintln!("Error: {e:#}");
    }
    Ok(if errors.is_empty() { 0 } else { 1 })
}

async fn inspect(ctx: &Ctx, a: InspectArgs) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    inspect_each(&a.containers, a.format.as_deref(), |c| {
        let agent = agent.clone();
        async move {
            let info = agent
                .containers()
                .inspect(ContainerRef { container: c })
                .await
                .map_err(|s| agent.err(s))?
                .into_inner();
            Ok(serde_json::to_value(inspect_view(&info))?)
        }
    })
    .await
}

// ------------------------------------------------------------------ stats

/// One `stats` row (docker's keys, values already formatted like docker's).
#[derive(Debug, Serialize, PartialEq, Clone)]
pub struct StatsRow {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "CPUPerc")]
    pub cpu_perc: String,
    #[serde(rename = "MemUsage")]
    pub mem_usage: String,
    #[serde(rename = "MemPerc")]
    pub mem_perc: String,
    #[serde(rename = "PIDs")]
    pub pids: String,
}

/// CPU percent between two samples: CPU time used over wall time (100% = one CPU busy, as docker
/// shows it); None without a previous sample.
pub fn cpu_percent(prev: Option<&ContainerStats>, cur: &ContainerStats) -> Option<f64> {
    let p = prev?;
    let wall = cur.time_unix_nano.checked_sub(p.time_unix_nano)?;
    if wall <= 0 {
        return None;
    }
    let cpu = cur.cpu_usage_ns.saturating_sub(p.cpu_usage_ns) as f64;
    Some(cpu / wall as f64 * 100.0)
}

/// A `stats` row from the latest sample (and the one before, for CPU). `host_mem` stands in for
/// an unlimited container's limit, as docker shows it.
pub fn stats_row(
    prev: Option<&ContainerStats>,
    cur: &ContainerStats,
    host_mem: u64,
    no_trunc: bool,
) -> StatsRow {
    let limit = if cur.memory_limit == 0 || cur.memory_limit > host_mem && host_mem > 0 {
        host_mem
    } else {
        cur.memory_limit
    };
    let mem_perc = if limit > 0 {
        cur.memory_usage as f64 / limit as f64 * 100.0
    } else {
        0.0
    };
    StatsRow {
        id: if no_trunc {
            cur.id.clone()
        } else {
            format::short_id(&cur.id)
        },
        name: cur.name.clone(),
        cpu_perc: match cpu_percent(prev, cur) {
            Some(p) => format!("{p:.2}%"),
            None => "--".into(),
        },
        mem_usage: format!(
            "{} / {}",
            format::bytes_size(cur.memory_usage),
            if limit > 0 {
                format::bytes_size(limit)
            } else {
                "--".into()
            }
        ),
        mem_perc: format!("{mem_perc:.2}%"),
        pids: cur.pids.to_string(),
    }
}

async fn stats(ctx: &Ctx, a: StatsArgs) -> anyhow::Result<i32> {
    if a.format != "table" && a.format != "json" {
        Template::parse(&a.format)?;
    }
    let agent = ctx.agent().await?;
    let host_mem = agent
        .system()
        .info(flotilla_proto::agent::v1::InfoRequest {})
        .await
        .map(|r| r.into_inner().mem_total)
        .unwrap_or(0);
    // One stream per named container, or one for all running ones; `-a` adds stopped ones as
    // empty rows.
    let targets: Vec<String> = if a.containers.is_empty() {
        vec![String::new()]
    } else {
        a.containers.clone()
    };
    let mut placeholders: Vec<(String, String)> = Vec::new();
    if a.all && a.containers.is_empty() {
        let list = agent
            .containers()
            .list(ListContainersRequest {
                all: true,
                filters: vec![],
            })
            .await
            .map_err(|s| agent.err(s))?
            .into_inner()
            .containers;
        placeholders = list
            .iter()
            .filter(|c| c.state.as_ref().is_none_or(|s| s.status != "running"))
            .map(|c| (c.id.clone(), c.name.clone()))
            .collect();
    }
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<Option<ContainerStats>>>(64);
    let mut open = 0;
    for t in targets {
        let (agent, tx) = (agent.clone(), tx.clone());
        open += 1;
        tokio::spawn(async move {
            let r = agent
                .containers()
                .stats(StatsRequest {
                    container: t,
                    stream: true,
                })
                .await;
            let mut s = match r {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    let _ = tx.send(Err(agent.err(e))).await;
                    return;
                }
            };
            loop {
                match s.message().await {
                    Ok(Some(m)) => {
                        if tx.send(Ok(Some(m))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Ok(None)).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(agent.err(e))).await;
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    // id -> (previous sample, latest sample, samples seen)
    let mut samples: BTreeMap<String, (Option<ContainerStats>, ContainerStats, u32)> =
        BTreeMap::new();
    let mut failed = false;
    let clear = term::stdout_is_tty() && !a.no_stream && a.format == "table";
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.tick().await;
    let render = |samples: &BTreeMap<String, (Option<ContainerStats>, ContainerStats, u32)>| {
        let mut rows: Vec<StatsRow> = samples
            .values()
            .map(|(p, c, _)| stats_row(p.as_ref(), c, host_mem, a.no_trunc))
            .collect();
        for (id, name) in &placeholders {
            if !samples.contains_key(id) {
                rows.push(StatsRow {
                    id: if a.no_trunc {
                        id.clone()
                    } else {
                        format::short_id(id)
                    },
                    name: name.clone(),
                    cpu_perc: "0.00%".into(),
                    mem_usage: "0B / 0B".into(),
                    mem_perc: "0.00%".into(),
                    pids: "0".into(),
                });
            }
        }
        rows.sort_by(|x, y| x.name.cmp(&y.name));
        if clear {
            format::out("\x1b[2J\x1b[H");
        }
        print_rows(
            &rows,
            &a.format,
            &[
                "CONTAINER ID",
                "NAME",
                "CPU %",
                "MEM USAGE / LIMIT",
                "MEM %",
                "PIDS",
            ],
            |r| {
                vec![
                    r.id.clone(),
                    r.name.clone(),
                    r.cpu_perc.clone(),
                    r.mem_usage.clone(),
                    r.mem_perc.clone(),
                    r.pids.clone(),
                ]
            },
        )
    };
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                None => break,
                Some(Ok(Some(s))) => {
                    let e = samples.entry(s.id.clone()).or_insert((None, s.clone(), 0));
                    if e.2 > 0 {
                        e.0 = Some(std::mem::replace(&mut e.1, s));
                    }
                    e.2 += 1;
                    if a.no_stream && samples.values().all(|v| v.2 >= 2) && !samples.is_empty() {
                        break;
                    }
                }
                Some(Ok(None)) => {
                    open -= 1;
                    if open == 0 {
                        break;
                    }
                }
                Some(Err(e)) => {
                    eprintln!("Error: {e:#}");
                    failed = true;
                    open -= 1;
                    if open == 0 {
                        break;
                    }
                }
            },
            _ = tick.tick(), if !a.no_stream => render(&samples)?,
        }
    }
    if !samples.is_empty() || !placeholders.is_empty() || (a.no_stream && !failed) {
        render(&samples)?;
    }
    Ok(if failed { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;
    use flotilla_proto::agent::v1::{mount, ContainerState, EndpointInfo, MountInfo, PortBinding};

    fn args(argv: &[&str]) -> CreateArgs {
        let mut full = vec!["flotilla", "create"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            crate::cli::Cmd::Create(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn var(k: &str) -> Option<String> {
        (k == "TOKEN").then(|| "s3cret".to_string())
    }

    fn read(p: &str) -> Result<String, ParseError> {
        match p {
            "app.env" => Ok("# app\nMODE=prod\nTOKEN\n".into()),
            _ => Err(ParseError(format!(
                "reading env file {p:?}: No such file or directory"
            ))),
        }
    }

    fn build(argv: &[&str]) -> Result<CreateContainerRequest, ParseError> {
        build_create(
            &args(argv),
            &Env {
                var: &var,
                read: &read,
                cwd: "/home/u",
            },
        )
    }

    fn cfg(argv: &[&str]) -> ContainerConfig {
        build(argv).unwrap().config.unwrap()
    }

    #[test]
    fn minimal() {
        let r = build(&["alpine"]).unwrap();
        assert_eq!(r.name, "");
        let c = r.config.unwrap();
        assert_eq!(c.image, "alpine");
        assert!(c.cmd.is_empty());
        assert!(!c.entrypoint_set);
        let a = args(&["alpine"]);
        assert_eq!((a.pull.as_str(), a.quiet), ("missing", false));
        let a = args(&["--pull", "always", "-q", "alpine"]);
        assert_eq!((a.pull.as_str(), a.quiet), ("always", true));
        assert_eq!(c.stop_timeout, -1);
        assert_eq!(c.network, "");
        assert!(c.healthcheck.is_none());
        assert!(c.restart_policy.is_none());
    }

    #[test]
    fn command_after_image_keeps_its_flags() {
        let c = cfg(&["--rm", "alpine", "ls", "-l", "--rm", "-e", "X=1"]);
        assert_eq!(c.cmd, vec!["ls", "-l", "--rm", "-e", "X=1"]);
        assert!(c.auto_remove);
        assert!(c.env.is_empty());
        let c = cfg(&["alpine", "--", "x"]);
        assert_eq!(c.cmd, vec!["x"]);
    }

    #[test]
    fn everything() {
        let r = build(&[
            "--name",
            "web",
            "-it",
            "-e",
            "A=1",
            "-e",
            "TOKEN",
            "-e",
            "UNSET",
            "--env-file",
            "app.env",
            "-w",
            "/app",
            "-u",
            "1000:1000",
            "-l",
            "tier=front",
            "-l",
            "x",
            "--entrypoint",
            "/bin/sh",
            "-h",
            "web1",
            "-v",
            "data:/data:ro",
            "-v",
            "./site:/site",
            "--mount",
            "type=tmpfs,target=/scratch,tmpfs-size=1m",
            "--tmpfs",
            "/run:size=64k",
            "--read-only",
            "-p",
            "127.0.0.1:8080:80",
            "-p",
            "9000-9001:90-91/udp",
            "-P",
            "--expose",
            "443",
            "--network",
            "app",
            "--network-alias",
            "www",
            "--ip",
            "10.1.0.5",
            "--dns",
            "1.1.1.1",
            "--add-host",
            "db:10.1.0.9",
            "--restart",
            "on-failure:3",
            "--health-cmd",
            "curl -f localhost",
            "--health-interval",
            "30s",
            "--health-timeout",
            "5s",
            "--health-retries",
            "3",
            "--health-start-period",
            "1m",
            "--stop-signal",
            "SIGQUIT",
            "--stop-timeout",
            "20",
            "--privileged",
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop",
            "MKNOD",
            "--security-opt",
            "seccomp=unconfined",
            "-m",
            "512m",
            "--memory-swap",
            "1g",
            "--cpus",
            "1.5",
            "-c",
            "512",
            "--cpuset-cpus",
            "0-1",
            "--pids-limit",
            "100",
            "--ulimit",
            "nofile=1024:2048",
            "--oom-score-adj",
            "-500",
            "nginx:1.27",
            "nginx",
            "-g",
            "daemon off;",
        ])
        .unwrap();
        assert_eq!(r.name, "web");
        let c = r.config.unwrap();
        assert_eq!(c.image, "nginx:1.27");
        assert_eq!(c.cmd, vec!["nginx", "-g", "daemon off;"]);
        assert!(c.tty && c.open_stdin && c.read_only && c.privileged && c.publish_all);
        assert_eq!(
            c.env,
            vec!["MODE=prod", "TOKEN=s3cret", "A=1", "TOKEN=s3cret"]
        );
        assert_eq!(c.working_dir, "/app");
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(c.labels.get("x").map(String::as_str), Some(""));
        assert_eq!(
            (c.entrypoint.clone(), c.entrypoint_set),
            (vec!["/bin/sh".to_string()], true)
        );
        assert_eq!(c.hostname, "web1");
        assert_eq!(c.mounts.len(), 4);
        assert_eq!(c.mounts[0].source, "data");
        assert!(c.mounts[0].read_only);
        assert_eq!(c.mounts[1].source, "/home/u/site");
        assert_eq!(c.mounts[1].r#type, mount::Type::Bind as i32);
        assert_eq!(c.mounts[2].tmpfs_size, 1024 * 1024);
        assert_eq!(c.mounts[3].tmpfs_size, 64 * 1024);
        assert_eq!(c.ports.len(), 3);
        assert_eq!(
            c.ports[0],
            PortBinding {
                host_ip: "127.0.0.1".into(),
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into()
            }
        );
        assert_eq!(
            (c.ports[2].host_port, c.ports[2].container_port),
            (9001, 91)
        );
        assert_eq!(c.exposed_ports, vec!["443/tcp"]);
        assert_eq!(c.network, "app");
        assert_eq!(c.network_aliases, vec!["www"]);
        assert_eq!(c.ip, "10.1.0.5");
        assert_eq!(c.dns, vec!["1.1.1.1"]);
        assert_eq!(c.extra_hosts, vec!["db:10.1.0.9"]);
        let rp = c.restart_policy.unwrap();
        assert_eq!((rp.name.as_str(), rp.max_retries), ("on-failure", 3));
        let h = c.healthcheck.unwrap();
        assert_eq!(h.test, vec!["CMD-SHELL", "curl -f localhost"]);
        assert_eq!(
            (h.interval_ns, h.timeout_ns, h.retries, h.start_period_ns),
            (30_000_000_000, 5_000_000_000, 3, 60_000_000_000)
        );
        assert_eq!((c.stop_signal.as_str(), c.stop_timeout), ("SIGQUIT", 20));
        assert_eq!(c.cap_add, vec!["NET_ADMIN"]);
        assert_eq!(c.cap_drop, vec!["MKNOD"]);
        assert_eq!(c.security_opt, vec!["seccomp=unconfined"]);
        let res = c.resources.unwrap();
        assert_eq!(res.memory, 512 * 1024 * 1024);
        assert_eq!(res.memory_swap, 1024 * 1024 * 1024);
        assert_eq!(res.nano_cpus, 1_500_000_000);
        assert_eq!(res.cpu_shares, 512);
        assert_eq!(res.cpuset_cpus, "0-1");
        assert_eq!(res.pids_limit, 100);
        assert_eq!(res.ulimits[0].hard, 2048);
        assert_eq!(res.oom_score_adj, -500);
    }

    #[test]
    fn entrypoint_and_healthcheck_variants() {
        let c = cfg(&["--entrypoint", "", "alpine"]);
        assert!(c.entrypoint_set && c.entrypoint.is_empty());
        let c = cfg(&["--no-healthcheck", "alpine"]);
        assert_eq!(c.healthcheck.unwrap().test, vec!["NONE"]);
        let c = cfg(&["--health-interval", "10s", "alpine"]);
        let h = c.healthcheck.unwrap();
        assert!(h.test.is_empty());
        assert_eq!(h.interval_ns, 10_000_000_000);
        let c = cfg(&["--memory-swap", "-1", "-m", "1g", "alpine"]);
        assert_eq!(c.resources.unwrap().memory_swap, -1);
    }

    #[test]
    fn bad_input_is_refused_before_sending() {
        let e = |argv: &[&str]| build(argv).unwrap_err().0;
        assert_eq!(
            e(&["-p", "80:abc", "alpine"]),
            "invalid port spec \"80:abc\": container port must be a number 1-65535"
        );
        assert!(e(&["--name", "a b", "alpine"]).contains("invalid container name"));
        assert!(e(&["--name", "x", "alpine"]).contains("invalid container name"));
        assert!(e(&["-m", "lots", "alpine"]).contains("invalid size \"lots\""));
        assert!(e(&["--cpus", "two", "alpine"]).contains("invalid --cpus value"));
        assert!(e(&["--restart", "always", "--rm", "alpine"]).contains("--restart and --rm"));
        assert!(build(&["--restart", "no", "--rm", "alpine"]).is_ok());
        assert!(
            e(&["--no-healthcheck", "--health-cmd", "true", "alpine"]).contains("--no-healthcheck")
        );
        assert!(e(&["--health-interval", "10", "alpine"])
            .contains("--health-interval: invalid duration"));
        assert!(e(&["--health-cmd", " ", "alpine"]).contains("--health-cmd is empty"));
        assert!(e(&["--memory-swap", "1g", "alpine"]).contains("needs --memory"));
        assert!(e(&["-m", "1g", "--memory-swap", "512m", "alpine"]).contains("at least --memory"));
        assert!(e(&["--oom-score-adj", "2000", "alpine"]).contains("between -1000 and 1000"));
        assert!(e(&["--ulimit", "nofile", "alpine"]).contains("invalid ulimit"));
        assert!(e(&["--ip", "x", "alpine"]).contains("invalid --ip"));
        assert!(e(&["--dns", "x", "alpine"]).contains("invalid --dns"));
        assert!(e(&["--add-host", "x", "alpine"]).contains("invalid --add-host"));
        assert!(e(&["--network", "host", "-p", "80", "alpine"]).contains("--network host"));
        assert!(e(&["--network", "none", "--ip", "10.0.0.1", "alpine"])
            .contains("need a bridge network"));
        assert!(e(&["-v", "a:/x", "-v", "b:/x/", "alpine"]).contains("duplicate mount point: /x"));
        assert!(e(&["--env-file", "missing.env", "alpine"])
            .contains("reading env file \"missing.env\""));
        assert!(e(&["-e", "=x", "alpine"]).contains("name is empty"));
        assert!(e(&["-l", "=x", "alpine"]).contains("key is empty"));
        assert!(e(&["--expose", "http", "alpine"]).contains("invalid port spec"));
        assert!(e(&["--mount", "type=bind,target=/x", "alpine"]).contains("needs source"));
        assert!(e(&["--tmpfs", "rel", "alpine"]).contains("must be absolute"));
        assert!(e(&["-v", "x:y", "alpine"]).contains("must be absolute"));
    }

    fn ci() -> ContainerInfo {
        let s = 1_000_000_000i64;
        ContainerInfo {
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "web".into(),
            image: "docker.io/library/nginx:latest".into(),
            image_id: "sha256:feed".into(),
            created_unix_nano: 100 * s,
            command: "nginx -g 'daemon off;'".into(),
            config: Some(ContainerConfig {
                exposed_ports: vec!["80/tcp".into(), "443/tcp".into()],
                ports: vec![PortBinding {
                    host_ip: "".into(),
                    host_port: 0,
                    container_port: 80,
                    protocol: "tcp".into(),
                }],
                labels: [("tier".to_string(), "front".to_string())]
                    .into_iter()
                    .collect(),
                stop_timeout: -1,
                ..Default::default()
            }),
            state: Some(ContainerState {
                status: "running".into(),
                pid: 42,
                started_unix_nano: 110 * s,
                ..Default::default()
            }),
            networks: vec![EndpointInfo {
                network: "bridge".into(),
                ip: "172.17.0.2".into(),
                prefix_len: 16,
                gateway: "172.17.0.1".into(),
                mac: "02:42:ac:11:00:02".into(),
                aliases: vec![],
            }],
            ports: vec![PortBinding {
                host_ip: "".into(),
                host_port: 32768,
                container_port: 80,
                protocol: "tcp".into(),
            }],
            mounts: vec![MountInfo {
                r#type: "volume".into(),
                name: "data".into(),
                source: "/var/lib/flotilla/volumes/data".into(),
                destination: "/data".into(),
                read_only: false,
            }],
            log_path: "/var/lib/flotilla/containers/x/log".into(),
        }
    }

    #[test]
    fn ps_rows() {
        let r = ps_row(&ci(), 115 * 1_000_000_000, false);
        assert_eq!(r.id, "0123456789ab");
        assert_eq!(r.image, "nginx:latest");
        assert_eq!(r.command, "\"nginx -g 'daemon of…\"");
        assert_eq!(r.running_for, "15 seconds ago");
        assert_eq!(r.status, "Up 5 seconds");
        assert_eq!(r.ports, "443/tcp, 0.0.0.0:32768->80/tcp");
        assert_eq!(r.names, "web");
        assert_eq!(r.networks, "bridge");
        assert_eq!(r.mounts, "data");
        let full = ps_row(&ci(), 0, true);
        assert_eq!(full.id.len(), 32);
        assert_eq!(full.command, "\"nginx -g 'daemon off;'\"");

        let mk = |name: &str, t: i64| ContainerInfo {
            name: name.into(),
            created_unix_nano: t,
            ..Default::default()
        };
        let sel = select_containers(vec![mk("a", 1), mk("c", 3), mk("b", 2)], None);
        assert_eq!(
            sel.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["c", "b", "a"]
        );
        let sel = select_containers(vec![mk("a", 1), mk("c", 3), mk("b", 2)], Some(1));
        assert_eq!(sel.len(), 1);
        assert_eq!(sel[0].name, "c");
    }

    #[test]
    fn inspect_shape_is_dockers() {
        let v = serde_json::to_value(inspect_view(&ci())).unwrap();
        assert_eq!(v["Id"], "0123456789abcdef0123456789abcdef");
        assert_eq!(v["Name"], "/web");
        assert_eq!(v["Image"], "sha256:feed");
        assert_eq!(v["State"]["Status"], "running");
        assert_eq!(v["State"]["Running"], true);
        assert_eq!(v["State"]["Pid"], 42);
        assert_eq!(v["State"]["OOMKilled"], false);
        assert!(v["State"].get("Health").is_none());
        assert_eq!(v["State"]["FinishedAt"], "0001-01-01T00:00:00Z");
        assert_eq!(v["Config"]["Image"], "docker.io/library/nginx:latest");
        assert_eq!(v["Config"]["Entrypoint"], serde_json::Value::Null);
        assert_eq!(v["Config"]["Labels"]["tier"], "front");
        assert_eq!(
            v["Config"]["ExposedPorts"]["443/tcp"],
            serde_json::json!({})
        );
        assert!(v["Config"].get("StopTimeout").is_none());
        assert_eq!(v["HostConfig"]["NetworkMode"], "bridge");
        assert_eq!(v["HostConfig"]["RestartPolicy"]["Name"], "no");
        assert_eq!(v["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"], "");
        assert_eq!(v["NetworkSettings"]["IPAddress"], "172.17.0.2");
        assert_eq!(
            v["NetworkSettings"]["Ports"]["80/tcp"][0]["HostIp"],
            "0.0.0.0"
        );
        assert_eq!(
            v["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"],
            "32768"
        );
        assert_eq!(
            v["NetworkSettings"]["Ports"]["443/tcp"],
            serde_json::Value::Null
        );
        assert_eq!(
            v["NetworkSettings"]["Networks"]["bridge"]["Gateway"],
            "172.17.0.1"
        );
        assert_eq!(
            v["NetworkSettings"]["Networks"]["bridge"]["MacAddress"],
            "02:42:ac:11:00:02"
        );
        assert_eq!(v["Mounts"][0]["Type"], "volume");
        assert_eq!(v["Mounts"][0]["RW"], true);
        assert_eq!(v["RestartCount"], 0);
        assert_eq!(v["LogPath"], "/var/lib/flotilla/containers/x/log");
        let t = Template::parse(
            "{{.State.Status}} {{.State.ExitCode}} {{json .NetworkSettings.Ports}}",
        )
        .unwrap();
        assert_eq!(
            t.render(&v).unwrap(),
            r#"running 0 {"443/tcp":null,"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"32768"}]}"#
        );
    }

    fn sample(id: &str, t: i64, cpu: u64, mem: u64, limit: u64) -> ContainerStats {
        ContainerStats {
            id: id.into(),
            name: "web".into(),
            time_unix_nano: t,
            cpu_usage_ns: cpu,
            online_cpus: 4,
            memory_usage: mem,
            memory_limit: limit,
            pids: 3,
            ..Default::default()
        }
    }

    #[test]
    fn stats_rows() {
        let s = 1_000_000_000i64;
        let a = sample("0123456789abcdef", 10 * s, 1_000_000_000, 0, 0);
        let b = sample(
            "0123456789abcdef",
            11 * s,
            1_500_000_000,
            1536 * 1024,
            512 * 1024 * 1024,
        );
        assert_eq!(cpu_percent(None, &b), None);
        assert_eq!(cpu_percent(Some(&a), &b), Some(50.0));
        assert_eq!(cpu_percent(Some(&b), &a), None);
        let r = stats_row(Some(&a), &b, 8 << 30, false);
        assert_eq!(
            r,
            StatsRow {
                id: "0123456789ab".into(),
                name: "web".into(),
                cpu_perc: "50.00%".into(),
                mem_usage: "1.5MiB / 512MiB".into(),
                mem_perc: "0.29%".into(),
                pids: "3".into(),
            }
        );
        let r = stats_row(None, &sample("x", 0, 0, 1024, 0), 2 << 30, false);
        assert_eq!(
            (r.cpu_perc.as_str(), r.mem_usage.as_str()),
            ("--", "1KiB / 2GiB")
        );
        let r = stats_row(None, &sample("x", 0, 0, 1024, 0), 0, false);
        assert_eq!(
            (r.mem_usage.as_str(), r.mem_perc.as_str()),
            ("1KiB / --", "0.00%")
        );
    }

    #[test]
    fn log_lines() {
        assert_eq!(log_line(b"hi\n", 0, false), b"hi\n");
        assert_eq!(
            log_line(b"hi\n", 5, true),
            b"1970-01-01T00:00:00.000000005Z hi\n"
        );
    }
}
