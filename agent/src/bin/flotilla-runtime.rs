//! `flotilla-runtime`: an OCI runtime with runc's command line, so engines and benchmarks can swap
//! it for runc or crun on the same bundle.
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use flotilla_agent::runtime::container::{self, CreateOptions, DEFAULT_ROOT};
use flotilla_agent::runtime::{console, exec, spec, state, RuntimeError};

#[derive(Parser)]
#[command(
    name = "flotilla-runtime",
    version,
    about = "Run OCI containers (runc-compatible command line)",
    long_about = "Run containers from OCI bundles (a directory with config.json and a root filesystem), \
                  with namespaces, cgroups v1/v2, capabilities and seccomp. The commands and flags \
                  follow runc, so flotilla-runtime can stand in for runc or crun."
)]
struct Cli {
    /// Directory for container state (tmpfs recommended).
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Write logs to this file instead of stderr (accepted for runc compatibility).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    /// Verbose logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Mount point of the cgroup filesystems.
    #[arg(long, global = true, default_value = "/sys/fs/cgroup", hide = true)]
    cgroup_root: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container from a bundle; its process waits until `start`.
    Create {
        /// Path to the bundle (contains config.json).
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Write the container init's pid to this file.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Unix socket to receive the pty master (process.terminal=true).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Do not use pivot_root (accepted for runc compatibility; pivot_root is always used).
        #[arg(long, hide = true)]
        no_pivot: bool,
        id: String,
    },
    /// Start a created container's process.
    Start { id: String },
    /// Create and start a container, wait for it and delete it (unless --detach).
    Run {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Return after start, leaving the container running.
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Keep the container's state after it exits (runc --keep).
        #[arg(long)]
        keep: bool,
        id: String,
    },
    /// Run a new process in a running container, as confined as its init.
    ///
    /// Without --process, the process is the container's own (config.json: env, user,
    /// capabilities, rlimits, no_new_privs, cwd) running ARGS, with the flags applied on top.
    /// In the foreground the exit status is the process's (128+N when killed by signal N; 127 when
    /// the executable is not found).
    Exec {
        /// A complete OCI process (JSON) to run instead of the container's with ARGS and flags.
        #[arg(short, long, value_name = "FILE")]
        process: Option<PathBuf>,
        /// Allocate a pseudo-terminal (proxied to our stdio unless --console-socket is given).
        #[arg(short, long)]
        tty: bool,
        /// Unix socket to receive the pty master (with --tty).
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Stdin is a terminal (a pty slave) the process takes as its controlling terminal.
        #[arg(long)]
        tty_stdin: bool,
        /// Return once the process runs, without waiting for it.
        #[arg(short, long)]
        detach: bool,
        /// Write the process's pid to this file.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Set an environment variable (KEY=VALUE); repeatable.
        #[arg(short, long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Run as UID[:GID] (numeric).
        #[arg(short, long, value_name = "UID[:GID]")]
        user: Option<String>,
        /// An additional group id; repeatable.
        #[arg(short = 'g', long = "additional-gids", value_name = "GID")]
        additional_gids: Vec<u32>,
        /// Add a capability (e.g. NET_ADMIN) to the bounding, effective and permitted sets.
        #[arg(short, long = "cap", value_name = "CAP")]
        cap: Vec<String>,
        /// Set no_new_privs for the process.
        #[arg(long)]
        no_new_privs: bool,
        id: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the OCI state of a container as JSON.
    State { id: String },
    /// Send a signal (default TERM) to the container's init, or to all its processes.
    Kill {
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
        /// Signal every process in the container's cgroup.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a container: its cgroup and state. Running containers need --force.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// List containers.
    #[command(alias = "ls")]
    List {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// List the pids of a container's processes.
    Ps {
        id: String,
        #[arg(short, long, default_value = "table")]
        format: String,
    },
    /// Print resource usage (cgroup statistics) as JSON.
    Events {
        id: String,
        /// Print the statistics once and exit (the only mode supported).
        #[arg(long)]
        stats: bool,
    },
    /// Write a default config.json (flotilla's defaults: Docker's capabilities, masked paths).
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Process arguments (default: sh).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match real_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::debug!(error = ?e, "command failed");
            let _ = writeln!(std::io::stderr(), "flotilla-runtime: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cli: &Cli) {
    let filter = if cli.debug { "debug" } else { "warn" };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let file = cli.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    match (file, cli.log_format.as_str()) {
        (Some(f), "json") => builder.json().with_writer(std::sync::Mutex::new(f)).init(),
        (Some(f), _) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .init(),
        (None, _) => builder.with_writer(std::io::stderr).init(),
    }
}

/// The console socket for `create`: connected to --console-socket when given.
fn console_for(console_socket: &Option<PathBuf>) -> Result<Option<OwnedFd>> {
    match console_socket {
        Some(p) => {
            let s = std::os::unix::net::UnixStream::connect(p)
                .with_context(|| format!("connect to console socket {}", p.display()))?;
            Ok(Some(OwnedFd::from(s)))
        }
        None => Ok(None),
    }
}

fn real_main(cli: Cli) -> Result<u8> {
    let root = cli.root.as_path();
    let cg = cli.cgroup_root.as_path();
    match cli.cmd {
        Cmd::Create {
            bundle,
            pid_file,
            console_socket,
            no_pivot: _,
            id,
        } => {
            let opts = CreateOptions {
                root,
                id: &id,
                bundle: &bundle,
                pid_file: pid_file.as_deref(),
                cgroup_root: cg,
                console: console_for(&console_socket)?,
            };
            container::create(&opts)?;
        }
        Cmd::Start { id } => container::start(root, &id, cg)?,
        Cmd::Run {
            bundle,
            pid_file,
            detach,
            console_socket,
            keep,
            id,
        } => {
            // A foreground run with a terminal and no console socket of the caller's: we take the
            // pty ourselves and copy it to our stdio.
            let terminal = spec::load(&bundle)?
                .process()
                .as_ref()
                .and_then(|p| p.terminal())
                .unwrap_or(false);
            let (console, peer) = if terminal && console_socket.is_none() && !detach {
                let (ours, theirs) = nix::sys::socket::socketpair(
                    nix::sys::socket::AddressFamily::Unix,
                    nix::sys::socket::SockType::Stream,
                    None,
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                )
                .context("socketpair for the terminal")?;
                (Some(theirs), Some(ours))
            } else {
                (console_for(&console_socket)?, None)
            };
            let opts = CreateOptions {
                root,
                id: &id,
                bundle: &bundle,
                pid_file: pid_file.as_deref(),
                cgroup_root: cg,
                console,
            };
            if detach || keep {
                if !detach {
                    container::block_forwarded_signals()?;
                }
                let pid = container::create(&opts)?;
                container::start(root, &id, cg)?;
                if detach {
                    return Ok(0);
                }
                let code = container::wait_forwarding(pid)?;
                return Ok(code.clamp(0, 255) as u8);
            }
            let exit = container::run(&opts, peer)?;
            if exit.oom_killed {
                eprintln!("flotilla-runtime: container {id} was killed by the kernel: out of memory (memory limit reached)");
            }
            return Ok(exit.code.clamp(0, 255) as u8);
        }
        Cmd::Exec {
            process,
            tty,
            console_socket,
            tty_stdin,
            detach,
            pid_file,
            env,
            cwd,
            user,
            additional_gids,
            cap,
            no_new_privs,
            id,
            args,
        } => {
            let process = match process {
                Some(path) => {
                    let flags_given = !args.is_empty()
                        || !env.is_empty()
                        || cwd.is_some()
                        || user.is_some()
                        || !additional_gids.is_empty()
                        || !cap.is_empty()
                        || no_new_privs;
                    if flags_given {
                        anyhow::bail!(
                            "--process {} gives the whole process: do not combine it with a \
                             command, --env, --cwd, --user, --additional-gids, --cap or \
                             --no-new-privs",
                            path.display()
                        );
                    }
                    let data = std::fs::read(&path)
                        .with_context(|| format!("read process file {}", path.display()))?;
                    let mut p: oci_spec::runtime::Process = serde_json::from_slice(&data)
                        .with_context(|| format!("invalid OCI process in {}", path.display()))?;
                    if tty {
                        p.set_terminal(Some(true));
                    }
                    exec::validate_process(&p)
                        .with_context(|| format!("process file {}", path.display()))?;
                    p
                }
                None => exec::apply_overrides(
                    exec::container_process(root, &id)?,
                    &exec::ProcessOverrides {
                        args,
                        env,
                        cwd,
                        user,
                        additional_gids,
                        caps: cap,
                        no_new_privs,
                        terminal: tty,
                    },
                )?,
            };
            let terminal = process.terminal().unwrap_or(false) && !tty_stdin;
            if terminal && detach && console_socket.is_none() {
                anyhow::bail!(
                    "a detached exec with a terminal needs --console-socket to hand it to"
                );
            }
            // A foreground terminal without a console socket: we take the pty and proxy it.
            let (console, peer) = if terminal && console_socket.is_none() {
                let (ours, theirs) = nix::sys::socket::socketpair(
                    nix::sys::socket::AddressFamily::Unix,
                    nix::sys::socket::SockType::Stream,
                    None,
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                )
                .context("socketpair for the terminal")?;
                (Some(theirs), Some(ours))
            } else {
                (console_for(&console_socket)?, None)
            };
            let opts = exec::ExecOptions {
                root,
                id: &id,
                cgroup_root: cg,
                process,
                console,
                tty_from_stdin: tty_stdin,
                pid_file: pid_file.as_deref(),
            };
            if !detach {
                // Before the process exists: a signal sent to us from now on is forwarded to it.
                container::block_forwarded_signals()?;
            }
            let pid = match exec::exec(&opts) {
                Ok(pid) => pid,
                Err(e @ RuntimeError::ExecutableNotFound { .. }) => {
                    let _ = writeln!(std::io::stderr(), "flotilla-runtime: {e}");
                    return Ok(127);
                }
                Err(e) => return Err(e.into()),
            };
            drop(opts);
            if detach {
                return Ok(0);
            }
            let proxy = match peer {
                Some(peer) => Some(
                    console::recv_fd(std::os::fd::AsRawFd::as_raw_fd(&peer))
                        .and_then(console::proxy)
                        .inspect_err(|_| {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        })?,
                ),
                None => None,
            };
            let code = container::wait_forwarding(pid)?;
            drop(proxy);
            return Ok(code.clamp(0, 255) as u8);
        }
        Cmd::State { id } => {
            let st = container::oci_state(root, &id, cg)?;
            println!("{}", serde_json::to_string_pretty(&st)?);
        }
        Cmd::Kill { id, signal, all } => {
            let sig = container::parse_signal(&signal)?;
            container::kill(root, &id, sig, all, cg)?;
        }
        Cmd::Delete { force, id } => container::delete(root, &id, force, cg)?,
        Cmd::List { format, quiet } => {
            let ids = state::list_ids(root)?;
            if quiet {
                for id in &ids {
                    println!("{id}");
                }
                return Ok(0);
            }
            let mut states = Vec::new();
            let mut broken = Vec::new();
            for id in ids {
                match container::oci_state(root, &id, cg) {
                    Ok(s) => states.push(s),
                    Err(e) => broken.push((id, e.to_string())),
                }
            }
            if format == "json" {
                println!("{}", serde_json::to_string(&states)?);
            } else {
                println!(
                    "{:<20} {:<8} {:<10} {:<40} {:<31} OWNER",
                    "ID", "PID", "STATUS", "BUNDLE", "CREATED"
                );
                for s in &states {
                    println!(
                        "{:<20} {:<8} {:<10} {:<40} {:<31} {}",
                        s.id,
                        s.pid,
                        s.status.to_string(),
                        s.bundle.display(),
                        s.created,
                        s.owner
                    );
                }
                for (id, _) in &broken {
                    println!("{id:<20} {:<8} {:<10}", 0, "unknown");
                }
            }
            for (id, e) in &broken {
                eprintln!("flotilla-runtime: {id}: {e}");
            }
        }
        Cmd::Pause { id } => container::pause(root, &id, cg)?,
        Cmd::Resume { id } => container::resume(root, &id, cg)?,
        Cmd::Ps { id, format } => {
            let pids = container::pids(root, &id, cg)?;
            if format == "json" {
                println!("{}", serde_json::to_string(&pids)?);
            } else {
                println!("PID");
                for p in pids {
                    println!("{p}");
                }
            }
        }
        Cmd::Events { id, stats: _ } => {
            let s = container::stats(root, &id, cg)?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"type": "stats", "id": id, "data": s})
                )?
            );
        }
        Cmd::Spec { bundle, args } => {
            let path = bundle.join("config.json");
            if path.exists() {
                anyhow::bail!("{} already exists; remove it first", path.display());
            }
            let args = if args.is_empty() {
                vec!["sh".to_string()]
            } else {
                args
            };
            let s = spec::to_stable_json(&spec::default_spec(args))?;
            std::fs::write(&path, serde_json::to_vec_pretty(&s)?)
                .with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(0)
}
