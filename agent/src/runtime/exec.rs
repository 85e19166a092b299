//! Running an additional process inside a running container (`runc exec`).
//!
//! The new process ends up exactly as confined as the container's init: it joins every namespace
//! of the init that differs from ours (read from `/proc/<init>/ns/*`, user first, cgroup last), the
//! container's cgroups (the recorded path, in every v1 hierarchy and the cgroup2 one), and applies
//! the process's rlimits, cwd, user, groups, umask, capabilities, no_new_privs and the container's
//! seccomp filter (from its `config.json`, compiled before forking) before execve.
//!
//! Shape, as in `container::create`: we fork a helper that moves itself into the v1 hierarchies
//! (writing `0` to `tasks` while still host root and single-threaded: no RCU wait), joins the
//! namespaces, then clones the process with `CLONE_PARENT` (so it is the caller's child and its
//! exit status can be waited for) and `CLONE_INTO_CGROUP` for cgroup2; the pid namespace only
//! applies to children of the joiner, hence the helper. The helper reports the pid and exits; the
//! process waits for our `GO` (sent once we placed it in cgroup2 ourselves when clone3 could not),
//! sets itself up and execs. Its error pipe is close-on-exec: EOF without a message means the exec
//! happened; otherwise the message says what failed.
//! This code forks: it must run in a single-threaded process (the `flotilla-runtime` binary; the
//! agent spawns `flotilla-runtime exec` rather than calling it in-process).
use std::convert::Infallible;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxNamespaceType, Process, Spec};

use super::capabilities::{self, CapPlan};
use super::container;
use super::error::RuntimeError;
use super::init;
use super::namespaces;
use super::seccomp::Filter;
use super::spec;
use super::state::{self, Status};
use super::syscall::{LinuxSyscall, Syscall};

/// What to run and where. See the module doc for the single-threaded requirement.
pub struct ExecOptions<'a> {
    pub root: &'a Path,
    pub id: &'a str,
    pub cgroup_root: &'a Path,
    pub process: Process,
    /// A connected unix socket that receives the pty master; required when `process.terminal`
    /// (unless `tty_from_stdin`).
    pub console: Option<OwnedFd>,
    /// The caller passes a terminal (a pty slave) as stdin/stdout/stderr: the process starts a new
    /// session and makes stdin its controlling terminal.
    pub tty_from_stdin: bool,
    /// Write the new process's pid (as seen from the host) here once it runs.
    pub pid_file: Option<&'a Path>,
}

/// The command-line flags of `flotilla-runtime exec`, applied on top of the container's process.
#[derive(Debug, Clone, Default)]
pub struct ProcessOverrides {
    /// Replaces the arguments; must not be empty.
    pub args: Vec<String>,
    /// `KEY=VALUE`, replacing a variable of the same name or added.
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// `UID[:GID]`, numeric.
    pub user: Option<String>,
    pub additional_gids: Vec<u32>,
    /// Added to the bounding, effective and permitted sets: `NET_ADMIN` or `CAP_NET_ADMIN`.
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub terminal: bool,
}

/// The process of a container's `config.json`, the base of an exec without `--process`.
pub fn container_process(root: &Path, id: &str) -> Result<Process, RuntimeError> {
    let rec = state::load(root, id)?;
    let spec = spec::load(&rec.bundle)?;
    let mut p = spec.process().clone().unwrap_or_default();
    // A terminal is asked for per exec, never inherited from the init.
    p.set_terminal(Some(false));
    p.set_console_size(None);
    Ok(p)
}

/// `base` with the flags of `o` applied, checked.
pub fn apply_overrides(mut base: Process, o: &ProcessOverrides) -> Result<Process, RuntimeError> {
    if o.args.is_empty() {
        return Err(RuntimeError::InvalidInput {
            what: "command",
            value: String::new(),
            hint: "give the command to run after the container id, or --process FILE".into(),
        });
    }
    base.set_args(Some(o.args.clone()));
    let mut env = base.env().clone().unwrap_or_default();
    for kv in &o.env {
        let key = env_key(kv)?;
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    }
    base.set_env(Some(env));
    if let Some(cwd) = &o.cwd {
        base.set_cwd(cwd.clone());
    }
    if let Some(u) = &o.user {
        let (uid, gid) = parse_user(u)?;
        base.user_mut().set_uid(uid);
        if let Some(g) = gid {
            base.user_mut().set_gid(g);
        }
    }
    if !o.additional_gids.is_empty() {
        let mut gids = base.user().additional_gids().clone().unwrap_or_default();
        gids.extend(o.additional_gids.iter().copied());
        base.user_mut().set_additional_gids(Some(gids));
    }
    if !o.caps.is_empty() {
        let mut caps = base.capabilities().clone().unwrap_or_else(empty_caps);
        for name in &o.caps {
            let c = parse_cap(name)?;
            let add = |set: &Option<std::collections::HashSet<Capability>>| {
                let mut set = set.clone().unwrap_or_default();
                set.insert(c);
                Some(set)
            };
            let (b, e, p) = (
                add(caps.bounding()),
                add(caps.effective()),
                add(caps.permitted()),
            );
            caps.set_bounding(b).set_effective(e).set_permitted(p);
        }
        base.set_capabilities(Some(caps));
    }
    if o.no_new_privs {
        base.set_no_new_privileges(Some(true));
    }
    base.set_terminal(Some(o.terminal));
    validate_process(&base)?;
    Ok(base)
}

fn empty_caps() -> LinuxCapabilities {
    let mut c = LinuxCapabilities::default();
    c.set_bounding(None)
        .set_effective(None)
        .set_permitted(None)
        .set_inheritable(None)
        .set_ambient(None);
    c
}

/// Checks what the kernel would otherwise refuse half-way: arguments, cwd, environment.
pub fn validate_process(p: &Process) -> Result<(), RuntimeError> {
    let args = p.args().as_deref().unwrap_or_default();
    match args.first() {
        None => {
            return Err(RuntimeError::InvalidInput {
                what: "process.args",
                value: String::new(),
                hint: "nothing to run: give a command".into(),
            })
        }
        Some(a) if a.is_empty() => {
            return Err(RuntimeError::InvalidInput {
                what: "command",
                value: String::new(),
                hint: "the executable name is empty".into(),
            })
        }
        Some(_) => {}
    }
    if let Some(a) = args.iter().find(|a| a.contains('\0')) {
        return Err(RuntimeError::InvalidInput {
            what: "argument",
            value: a.clone(),
            hint: "arguments cannot contain a NUL byte".into(),
        });
    }
    if !p.cwd().is_absolute() {
        return Err(RuntimeError::InvalidInput {
            what: "cwd",
            value: p.cwd().display().to_string(),
            hint: "use an absolute path inside the container".into(),
        });
    }
    for kv in p.env().as_deref().unwrap_or_default() {
        env_key(kv)?;
    }
    Ok(())
}

fn env_key(kv: &str) -> Result<&str, RuntimeError> {
    let bad = |hint: &str| RuntimeError::InvalidInput {
        what: "environment variable",
        value: kv.to_string(),
        hint: hint.to_string(),
    };
    match kv.split_once('=') {
        _ if kv.contains('\0') => Err(bad("it contains a NUL byte")),
        Some((k, _)) if !k.is_empty() => Ok(k),
        _ => Err(bad("use KEY=VALUE")),
    }
}

/// `UID` or `UID:GID`, numeric.
pub fn parse_user(s: &str) -> Result<(u32, Option<u32>), RuntimeError> {
    let bad = || RuntimeError::InvalidInput {
        what: "--user",
        value: s.to_string(),
        hint: "use UID or UID:GID with numeric ids, e.g. 1000:1000".into(),
    };
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = u.parse::<u32>().map_err(|_| bad())?;
    let gid = g.map(|g| g.parse::<u32>().map_err(|_| bad())).transpose()?;
    Ok((uid, gid))
}

/// `NET_ADMIN`, `net_admin` or `CAP_NET_ADMIN`.
pub fn parse_cap(s: &str) -> Result<Capability, RuntimeError> {
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    serde_json::from_value(serde_json::Value::String(name)).map_err(|_| {
        RuntimeError::InvalidInput {
            what: "--cap",
            value: s.to_string(),
            hint: "use a capability name such as NET_ADMIN or CAP_NET_ADMIN".into(),
        }
    })
}

/// Why a container cannot take an exec, or Ok.
fn check_status(id: &str, st: Status) -> Result<(), RuntimeError> {
    let hint = match st {
        Status::Running => return Ok(()),
        Status::Paused => "resume it before exec",
        Status::Created => "start it before exec",
        Status::Creating => "it is still being created",
        Status::Stopped => "exec needs a running container",
    };
    Err(RuntimeError::WrongState {
        id: id.into(),
        status: st.to_string(),
        hint,
    })
}

/// The namespaces of `pid` to join: those that differ from ours, user first; cgroup apart (joined
/// last, by the process itself, once it is in the container's cgroups).
struct Joins {
    before_clone: Vec<(LinuxNamespaceType, OwnedFd)>,
    cgroup: Option<OwnedFd>,
    user: bool,
}

/// `/proc/<pid>/ns/<name>` for each namespace kind, in join order.
const NAMESPACES: [(LinuxNamespaceType, &str); 7] = [
    (LinuxNamespaceType::User, "user"),
    (LinuxNamespaceType::Ipc, "ipc"),
    (LinuxNamespaceType::Uts, "uts"),
    (LinuxNamespaceType::Network, "net"),
    (LinuxNamespaceType::Pid, "pid"),
    (LinuxNamespaceType::Mount, "mnt"),
    (LinuxNamespaceType::Cgroup, "cgroup"),
];

fn open_joins(id: &str, pid: i32) -> Result<Joins, RuntimeError> {
    use std::os::unix::fs::MetadataExt;
    let mut j = Joins {
        before_clone: Vec::new(),
        cgroup: None,
        user: false,
    };
    for (t, name) in NAMESPACES {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
        let f = match std::fs::File::open(&theirs) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::ExecFailed {
                    id: id.into(),
                    reason: format!("its init (pid {pid}) is gone"),
                })
            }
            Err(e) => return Err(RuntimeError::io("open namespace", theirs, e)),
        };
        let a = f
            .metadata()
            .map_err(|e| RuntimeError::io("stat namespace", &theirs, e))?;
        let ours = format!("/proc/self/ns/{name}");
        let b =
            std::fs::metadata(&ours).map_err(|e| RuntimeError::io("stat namespace", ours, e))?;
        if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
            continue;
        }
        match t {
            LinuxNamespaceType::Cgroup => j.cgroup = Some(OwnedFd::from(f)),
            LinuxNamespaceType::User => {
                j.user = true;
                j.before_clone.push((t, OwnedFd::from(f)));
            }
            _ => j.before_clone.push((t, OwnedFd::from(f))),
        }
    }
    Ok(j)
}

/// How the process gets its terminal.
enum Terminal<'a> {
    None,
    /// Create a pty in the container and send the master over this socket.
    Console(&'a OwnedFd, Option<(u16, u16)>),
    /// Make the terminal on stdin the controlling terminal.
    Stdin,
}

/// Everything the new process needs, prepared before forking.
struct ChildPlan<'a> {
    process: &'a Process,
    caps: CapPlan,
    seccomp: Option<&'a Filter>,
    in_userns: bool,
    cgroupns: Option<&'a OwnedFd>,
    terminal: Terminal<'a>,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// What the process reports when it cannot exec.
enum ChildError {
    NotFound(String),
    Other(RuntimeError),
}

impl From<RuntimeError> for ChildError {
    fn from(e: RuntimeError) -> Self {
        ChildError::Other(e)
    }
}

const MSG_NOT_FOUND: u8 = b'N';
const MSG_ERR: u8 = b'E';
const MSG_GO: u8 = b'G';

/// Starts `opts.process` in container `opts.id` and returns its pid, a child of the caller (wait
/// for it with `waitpid`, e.g. `container::wait_forwarding`). Refuses containers that are not
/// running. Must be called from a single-threaded process: it forks and the children allocate.
pub fn exec(opts: &ExecOptions<'_>) -> Result<i32, RuntimeError> {
    let rec = state::load(opts.root, opts.id)?;
    check_status(
        opts.id,
        container::status(opts.root, &rec, opts.cgroup_root),
    )?;
    let process = &opts.process;
    validate_process(process)?;
    let terminal = match (
        process.terminal().unwrap_or(false) || opts.tty_from_stdin,
        &opts.console,
    ) {
        (_, Some(_)) if opts.tty_from_stdin => {
            return Err(RuntimeError::InvalidInput {
                what: "terminal",
                value: "console socket and tty from stdin".into(),
                hint: "choose one way to get the terminal".into(),
            })
        }
        (true, None) if opts.tty_from_stdin => Terminal::Stdin,
        (true, None) => {
            return Err(RuntimeError::InvalidInput {
                what: "terminal",
                value: "process.terminal".into(),
                hint: "a terminal needs --console-socket (or --tty-stdin)".into(),
            })
        }
        (true, Some(sock)) => Terminal::Console(
            sock,
            process
                .console_size()
                .map(|b| (b.height() as u16, b.width() as u16)),
        ),
        (false, Some(_)) => {
            return Err(RuntimeError::InvalidInput {
                what: "console socket",
                value: "given".into(),
                hint: "a console socket needs process.terminal (-t)".into(),
            })
        }
        (false, None) => Terminal::None,
    };
    let spec: Spec = spec::load(&rec.bundle)?;
    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(|s| Filter::compile_cached(s, &opts.root.join(".seccomp-cache")))
        .transpose()?;
    let caps = capabilities::plan(
        process.capabilities().as_ref(),
        &capabilities::kernel_caps(),
    );
    for c in &caps.unknown {
        tracing::warn!(capability = %c, "the kernel does not know this capability; ignored");
    }
    let cstrings = |v: &[String]| -> Vec<CString> {
        // NUL bytes were refused by validate_process.
        v.iter()
            .filter_map(|s| CString::new(s.as_str()).ok())
            .collect()
    };
    let argv = cstrings(process.args().as_deref().unwrap_or_default());
    let envp = cstrings(process.env().as_deref().unwrap_or_default());

    let init_pid = rec.pid.unwrap_or(0);
    let joins = open_joins(opts.id, init_pid)?;
    // The descriptors are the init's only if the pid was not reused meanwhile.
    if rec.pid_start.is_none() || state::proc_start_time(init_pid) != rec.pid_start {
        return Err(RuntimeError::WrongState {
            id: opts.id.into(),
            status: Status::Stopped.to_string(),
            hint: "exec needs a running container",
        });
    }
    let cg = container::cgroup_manager(opts.cgroup_root, &rec.cgroup_path)?;
    let placement = cg.placement()?;
    let cgroup_fd: Option<OwnedFd> = placement.unified.as_ref().and_then(|d| {
        nix::fcntl::open(
            d,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    });
    let plan = ChildPlan {
        process,
        caps,
        seccomp: seccomp.as_ref(),
        in_userns: joins.user,
        cgroupns: joins.cgroup.as_ref(),
        terminal,
        argv,
        envp,
    };

    let (child_rx, parent_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("pipe", e))?;
    let (parent_rx, child_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("pipe", e))?;
    // SAFETY: the caller is single-threaded (see the doc), so the child may allocate.
    let helper = match unsafe { nix::unistd::fork() }.map_err(|e| RuntimeError::sys("fork", e))? {
        nix::unistd::ForkResult::Child => {
            drop(parent_tx);
            drop(parent_rx);
            helper_main(
                &plan,
                &placement.v1_tasks,
                &joins.before_clone,
                cgroup_fd.as_ref(),
                child_rx,
                child_tx,
            )
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(child_rx);
    drop(child_tx);
    drop(joins);
    let mut rx = std::fs::File::from(parent_rx);
    let mut tx = std::fs::File::from(parent_tx);
    let failed = |reason: String| RuntimeError::ExecFailed {
        id: opts.id.into(),
        reason,
    };
    let helper_status =
        waitpid(helper, None).map_err(|e| RuntimeError::sys("wait for the exec helper", e))?;
    drop(cgroup_fd);
    // On success the helper wrote the pid and whether clone3 placed it; on failure, a message.
    let mut pid_buf = [0u8; 5];
    let pid =
        if helper_status == WaitStatus::Exited(helper, 0) && rx.read_exact(&mut pid_buf).is_ok() {
            i32::from_ne_bytes([pid_buf[0], pid_buf[1], pid_buf[2], pid_buf[3]])
        } else {
            // Closing our end of GO makes a process that was cloned anyway exit, so EOF comes.
            drop(tx);
            let mut msg = String::new();
            let _ = rx.read_to_string(&mut msg);
            if msg.is_empty() {
                msg = format!("the exec helper failed ({helper_status:?})");
            }
            return Err(failed(msg));
        };
    let abandon = |e: RuntimeError| {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid), None);
        e
    };
    if pid_buf[4] == 0 {
        // clone3 could not place it (old kernel): cgroup2 membership is written by us.
        if let Some(dir) = &placement.unified {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string())
                .map_err(|e| abandon(RuntimeError::io("join cgroup", procs, e)))?;
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        let path = format!("/proc/{pid}/oom_score_adj");
        std::fs::write(&path, adj.to_string())
            .map_err(|e| abandon(RuntimeError::io("write", path, e)))?;
    }
    tx.write_all(&[MSG_GO])
        .map_err(|e| abandon(RuntimeError::io("signal the exec process", "pipe", e)))?;
    drop(tx);
    // EOF without a message: the pipe closed on exec.
    let mut reply = Vec::new();
    let _ = rx.read_to_end(&mut reply);
    match reply.split_first() {
        None => {}
        Some((&MSG_NOT_FOUND, name)) => {
            return Err(abandon(RuntimeError::ExecutableNotFound {
                id: opts.id.into(),
                name: String::from_utf8_lossy(name).into_owned(),
            }))
        }
        Some((_, msg)) => return Err(abandon(failed(String::from_utf8_lossy(msg).into_owned()))),
    }
    if let Some(p) = opts.pid_file {
        container::write_atomic(p, &pid.to_string()).map_err(abandon)?;
    }
    tracing::debug!(id = opts.id, pid, "exec'd");
    Ok(pid)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit never returns and runs no destructors or atexit handlers of the parent's copy.
    unsafe { libc::_exit(code) }
}

/// In the forked helper: join the v1 cgroups and the namespaces, clone the process, report its
/// pid (and whether clone3 placed it in cgroup2), exit.
fn helper_main(
    plan: &ChildPlan<'_>,
    v1_tasks: &[PathBuf],
    joins: &[(LinuxNamespaceType, OwnedFd)],
    cgroup_fd: Option<&OwnedFd>,
    from_parent: OwnedFd,
    to_parent: OwnedFd,
) -> ! {
    let mut tx = match to_parent.try_clone() {
        Ok(fd) => std::fs::File::from(fd),
        Err(_) => exit(1),
    };
    // While still the host's root and single-threaded: moving ourselves is cheap, and the child
    // inherits the membership.
    for tasks in v1_tasks {
        match std::fs::write(tasks, "0") {
            // A hierarchy mounted after create: the init is not in it either.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => fail(&mut tx, format!("join cgroup {}: {e}", tasks.display())),
            Ok(()) => {}
        }
    }
    if let Err(e) = namespaces::enter(joins) {
        fail(&mut tx, e.to_string())
    }
    let mut placed = 0u8;
    let mut rc = -1;
    if let Some(fd) = cgroup_fd {
        rc = container::clone3_into_cgroup(libc::CLONE_PARENT as u64, fd);
        if rc >= 0 {
            placed = 1;
        }
    }
    if rc < 0 {
        let flags = libc::CLONE_PARENT as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
        // SAFETY: a raw clone without CLONE_VM and with a NULL stack behaves like fork(2): the
        // child gets a copy of this single-threaded process and continues from here.
        rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    }
    if rc == 0 {
        child_main(plan, from_parent, to_parent)
    }
    if rc < 0 {
        let e = nix::Error::last();
        let hint = match e {
            nix::Error::ENOMEM => " (the container's pid namespace is exiting)",
            nix::Error::EAGAIN => " (the container's pids limit may be reached)",
            _ => "",
        };
        fail(&mut tx, format!("clone the process: {e}{hint}"))
    }
    let mut msg = [0u8; 5];
    msg[..4].copy_from_slice(&(rc as i32).to_ne_bytes());
    msg[4] = placed;
    let _ = tx.write_all(&msg);
    exit(0)
}

fn fail(tx: &mut std::fs::File, msg: String) -> ! {
    let _ = tx.write_all(msg.as_bytes());
    exit(1)
}

/// The new process: waits for GO, sets itself up and execs, or reports why not.
fn child_main(plan: &ChildPlan<'_>, from_parent: OwnedFd, to_parent: OwnedFd) -> ! {
    let mut rx = std::fs::File::from(from_parent);
    let mut go = [0u8; 1];
    match rx.read(&mut go) {
        Ok(1) if go[0] == MSG_GO => {}
        // The caller is gone or gave up: leave quietly.
        _ => exit(1),
    }
    drop(rx);
    let mut tx = std::fs::File::from(to_parent);
    let msg = match setup_and_exec(&LinuxSyscall, plan) {
        Ok(never) => match never {},
        Err(ChildError::NotFound(name)) => [&[MSG_NOT_FOUND], name.as_bytes()].concat(),
        Err(ChildError::Other(e)) => [&[MSG_ERR], e.to_string().as_bytes()].concat(),
    };
    let _ = tx.write_all(&msg);
    exit(127)
}

fn setup_and_exec(sys: &dyn Syscall, plan: &ChildPlan<'_>) -> Result<Infallible, ChildError> {
    let exe = prepare(sys, plan)?;
    init::reset_signals();
    let e = nix::unistd::execve(&exe, &plan.argv, &plan.envp).unwrap_err();
    if e == nix::Error::ENOENT {
        return Err(ChildError::NotFound(
            plan.argv
                .first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ));
    }
    Err(ChildError::Other(RuntimeError::sys(
        format!("exec {}", exe.to_string_lossy()),
        e,
    )))
}

/// Everything up to execve, in order: cgroup namespace, terminal, rlimits, cwd, executable
/// lookup, privileges (`init::drop_privileges`), and the seccomp filter last when no_new_privs.
fn prepare(sys: &dyn Syscall, plan: &ChildPlan<'_>) -> Result<CString, ChildError> {
    if let Some(fd) = plan.cgroupns {
        // SAFETY: fd is an open cgroup namespace descriptor that outlives the call.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWCGROUP) } != 0 {
            return Err(RuntimeError::sys("join cgroup namespace", nix::Error::last()).into());
        }
    }
    match plan.terminal {
        Terminal::None => {}
        Terminal::Console(sock, size) => super::console::setup_in_container(sock, size)?,
        Terminal::Stdin => stdin_as_controlling_terminal()?,
    }
    let process = plan.process;
    for rl in process.rlimits().as_deref().unwrap_or_default() {
        sys.set_rlimit(rl.typ(), rl.soft(), rl.hard())?;
    }
    sys.chdir(process.cwd())?;
    let args = process.args().as_deref().unwrap_or_default();
    let env = process.env().as_deref().unwrap_or_default();
    let first = args.first().map(String::as_str).unwrap_or_default();
    let exe = init::find_executable(first, env, process.cwd())
        .ok_or_else(|| ChildError::NotFound(first.to_string()))?;
    let cexe = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| ChildError::NotFound(first.to_string()))?;
    init::drop_privileges(sys, process, &plan.caps, plan.seccomp, plan.in_userns)?;
    if let (Some(f), true) = (plan.seccomp, process.no_new_privileges().unwrap_or(false)) {
        sys.load_seccomp(f)?;
    }
    Ok(cexe)
}

/// setsid, then stdin (a terminal the caller opened) becomes our controlling terminal.
fn stdin_as_controlling_terminal() -> Result<(), RuntimeError> {
    if !nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        return Err(RuntimeError::sys(
            "--tty-stdin: stdin is not a terminal",
            nix::Error::ENOTTY,
        ));
    }
    nix::unistd::setsid().map_err(|e| RuntimeError::sys("setsid", e))?;
    // SAFETY: TIOCSCTTY takes an integer argument; fd 0 is an open terminal.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        let e = nix::Error::last();
        let what = if e == nix::Error::EPERM {
            "make stdin the controlling terminal (it already is another session's: pass a pty \
             slave no session owns)"
        } else {
            "make stdin the controlling terminal"
        };
        return Err(RuntimeError::sys(what, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::syscall::{Call, RecordingSyscall};
    use super::*;

    fn process(v: serde_json::Value) -> Process {
        serde_json::from_value(v).expect("process")
    }

    fn base() -> Process {
        process(serde_json::json!({
            "cwd": "/", "args": ["sleep", "60"], "env": ["PATH=/bin", "TERM=xterm"],
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                             "permitted": ["CAP_KILL"]},
            "noNewPrivileges": false, "terminal": true
        }))
    }

    #[test]
    fn flags_apply_on_top_of_the_containers_process() {
        let o = ProcessOverrides {
            args: vec!["sh".into(), "-c".into(), "env".into()],
            env: vec!["TERM=dumb".into(), "FOO=a=b".into()],
            cwd: Some("/tmp".into()),
            user: Some("1000:100".into()),
            additional_gids: vec![5, 6],
            caps: vec!["net_admin".into(), "CAP_SYS_TIME".into()],
            no_new_privs: true,
            terminal: false,
        };
        let p = apply_overrides(base(), &o).expect("apply");
        assert_eq!(p.args().as_deref().expect("args"), &o.args[..]);
        assert_eq!(
            p.env().as_deref().expect("env"),
            &["PATH=/bin", "TERM=dumb", "FOO=a=b"]
        );
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 100));
        assert_eq!(p.user().additional_gids().as_deref(), Some(&[5, 6][..]));
        let caps = p.capabilities().as_ref().expect("caps");
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            let set = set.as_ref().expect("set");
            assert!(set.contains(&Capability::NetAdmin) && set.contains(&Capability::SysTime));
            assert!(set.contains(&Capability::Kill), "kept");
        }
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.terminal(), Some(false));
    }

    #[test]
    fn a_uid_alone_keeps_the_gid() {
        let o = ProcessOverrides {
            args: vec!["id".into()],
            user: Some("7".into()),
            ..Default::default()
        };
        let mut b = base();
        b.user_mut().set_gid(9);
        let p = apply_overrides(b, &o).expect("apply");
        assert_eq!((p.user().uid(), p.user().gid()), (7, 9));
    }

    #[test]
    fn bad_input_is_named() {
        let with = |o: ProcessOverrides| {
            apply_overrides(base(), &o)
                .expect_err("refused")
                .to_string()
        };
        let args = || vec!["true".to_string()];
        let e = with(ProcessOverrides {
            args: args(),
            user: Some("bob".into()),
            ..Default::default()
        });
        assert!(e.contains("--user \"bob\"") && e.contains("UID:GID"), "{e}");
        let e = with(ProcessOverrides {
            args: args(),
            env: vec!["NOVALUE".into()],
            ..Default::default()
        });
        assert!(e.contains("\"NOVALUE\"") && e.contains("KEY=VALUE"), "{e}");
        let e = with(ProcessOverrides {
            args: args(),
            env: vec!["=x".into()],
            ..Default::default()
        });
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = with(ProcessOverrides {
            args: args(),
            caps: vec!["NOT_A_CAP".into()],
            ..Default::default()
        });
        assert!(e.contains("--cap \"NOT_A_CAP\""), "{e}");
        let e = with(ProcessOverrides {
            args: args(),
            cwd: Some("relative".into()),
            ..Default::default()
        });
        assert!(e.contains("cwd \"relative\""), "{e}");
        let e = with(ProcessOverrides::default());
        assert!(e.contains("command"), "{e}");
        assert!(parse_user("1:2:3").is_err());
        assert_eq!(parse_user("0").expect("0"), (0, None));
    }

    #[test]
    fn only_running_containers_take_an_exec() {
        assert!(check_status("c", Status::Running).is_ok());
        for (st, word) in [
            (Status::Stopped, "stopped"),
            (Status::Paused, "paused"),
            (Status::Created, "created"),
            (Status::Creating, "creating"),
        ] {
            let e = check_status("c1", st).expect_err("refused").to_string();
            assert!(e.contains("container c1 is ") && e.contains(word), "{e}");
        }
    }

    #[test]
    fn setup_runs_in_order_and_seccomp_goes_last_with_no_new_privs() {
        let dir = tempfile::tempdir().expect("tmp");
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let p = process(serde_json::json!({
            "cwd": dir.path(), "args": [tool], "noNewPrivileges": true,
            "user": {"uid": 1000, "gid": 1000},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}]
        }));
        let seccomp: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}))
                .expect("seccomp");
        let f = Filter::compile(&seccomp).expect("compile");
        let plan = ChildPlan {
            process: &p,
            caps: CapPlan::default(),
            seccomp: Some(&f),
            in_userns: false,
            cgroupns: None,
            terminal: Terminal::None,
            argv: Vec::new(),
            envp: Vec::new(),
        };
        let sys = RecordingSyscall::default();
        let exe = prepare(&sys, &plan).unwrap_or_else(|_| panic!("prepare"));
        assert_eq!(exe.to_str().expect("utf8"), tool.to_str().expect("utf8"));
        let calls = sys.take();
        assert_eq!(
            calls[..2],
            [
                Call::Rlimit(oci_spec::runtime::PosixRlimitType::RlimitNofile, 100, 200),
                Call::Chdir(dir.path().to_path_buf()),
            ]
        );
        assert_eq!(calls[2], Call::DropBounding, "{calls:?}");
        assert_eq!(calls.last(), Some(&Call::LoadSeccomp), "{calls:?}");
        assert_eq!(calls.iter().filter(|c| **c == Call::LoadSeccomp).count(), 1);
        assert!(calls.contains(&Call::NoNewPrivs));
    }

    #[test]
    fn a_missing_executable_is_reported_by_name() {
        let p = process(serde_json::json!({
            "cwd": "/", "args": ["no-such-tool-here"], "env": ["PATH=/nonexistent"],
            "user": {"uid": 0, "gid": 0}
        }));
        let plan = ChildPlan {
            process: &p,
            caps: CapPlan::default(),
            seccomp: None,
            in_userns: false,
            cgroupns: None,
            terminal: Terminal::None,
            argv: Vec::new(),
            envp: Vec::new(),
        };
        let sys = RecordingSyscall::default();
        match prepare(&sys, &plan) {
            Err(ChildError::NotFound(n)) => assert_eq!(n, "no-such-tool-here"),
            _ => panic!("expected not found"),
        }
        assert!(
            !sys.take().contains(&Call::DropBounding),
            "privileges untouched"
        );
    }
}
