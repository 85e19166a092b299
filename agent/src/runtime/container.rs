//! Container lifecycle: create, start, run, kill, delete, pause/resume, state, list.
//!
//! `create` claims `<root>/<id>` (mkdir is the lock), records each step in `state.json` before
//! taking it, sets up the cgroup, then forks a helper that joins the namespaces given by path and
//! clones the init with `CLONE_PARENT` (so init is the creator's child and `run` can wait for it)
//! into its new namespaces. Any failure undoes what was done; a creator killed midway leaves a
//! record from which `delete` removes the process, the cgroup and the directory.
//! This code forks: it must run in a single-threaded process (the `flotilla-runtime` binary).
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use serde::Serialize;

use super::cgroups::{self, CgroupConfig, CgroupManager};
use super::error::RuntimeError;
use super::init::{self, InitConfig, MSG_ERR, MSG_GO, MSG_READY};
use super::namespaces;
use super::seccomp::Filter;
use super::spec;
use super::state::{self, Observed, Record, Status, EXEC_FIFO};

pub const DEFAULT_ROOT: &str = "/run/flotilla-runtime";

pub struct CreateOptions<'a> {
    pub root: &'a Path,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: Option<&'a Path>,
    pub cgroup_root: &'a Path,
    /// A connected unix socket that receives the pty master; required when `process.terminal`.
    pub console: Option<OwnedFd>,
}

/// The OCI state of a container (what `state` prints).
#[derive(Debug, Serialize)]
pub struct OciState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    pub annotations: std::collections::HashMap<String, String>,
}

pub fn cgroup_manager(
    cgroup_root: &Path,
    rel: &Path,
) -> Result<Box<dyn CgroupManager>, RuntimeError> {
    let layout = cgroups::detect(cgroup_root)?;
    Ok(cgroups::new_manager(CgroupConfig {
        root: cgroup_root.to_path_buf(),
        layout,
        path: rel.to_path_buf(),
    }))
}

/// The container's cgroup path and manager. A cgroup that already holds processes (another root's
/// container with this id) is refused: our cleanup would kill them.
fn free_cgroup(
    cgroup_root: &Path,
    spec: &Spec,
    id: &str,
    bundle: &Path,
) -> Result<(PathBuf, Box<dyn CgroupManager>), RuntimeError> {
    let path = cgroup_rel_path(spec, id).map_err(|e| RuntimeError::InvalidSpec {
        path: bundle.join("config.json"),
        reason: e.to_string(),
    })?;
    let cg = cgroup_manager(cgroup_root, &path)?;
    let pids = cg.pids()?;
    if !pids.is_empty() {
        return Err(RuntimeError::CgroupInUse { path, pids });
    }
    Ok((path, cg))
}

/// The container's cgroup, relative to each hierarchy: `linux.cgroupsPath` (checked: no `..`) or
/// `flotilla/<id>`.
fn cgroup_rel_path(spec: &Spec, id: &str) -> Result<PathBuf, RuntimeError> {
    match spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) {
        Some(p) => Ok(cgroups::relative_path(&p)?),
        None => Ok(Path::new(cgroups::DEFAULT_PARENT).join(id)),
    }
}

/// Creates the container and leaves its init waiting for `start`. Returns the init pid.
pub fn create(opts: &CreateOptions<'_>) -> Result<i32, RuntimeError> {
    state::validate_id(opts.id)?;
    let bundle = std::fs::canonicalize(opts.bundle)
        .map_err(|e| RuntimeError::io("open bundle", opts.bundle, e))?;
    let spec = spec::load(&bundle)?;
    let rootfs = spec::rootfs_path(&spec, &bundle);
    if !rootfs.is_dir() {
        return Err(RuntimeError::InvalidSpec {
            path: bundle.join("config.json"),
            reason: format!("root.path {} is not a directory", rootfs.display()),
        });
    }
    std::fs::create_dir_all(opts.root)
        .map_err(|e| RuntimeError::io("create the runtime root", opts.root, e))?;
    let dir = state::dir(opts.root, opts.id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(RuntimeError::Exists(opts.id.into()))
        }
        Err(e) => return Err(RuntimeError::io("create the state directory", &dir, e)),
    }
    let (cgroup_path, cg) = match free_cgroup(opts.cgroup_root, &spec, opts.id, &bundle) {
        Ok(found) => found,
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
    };
    let mut rec = Record {
        id: opts.id.into(),
        bundle: bundle.clone(),
        rootfs: rootfs.clone(),
        creator_pid: std::process::id() as i32,
        pid: None,
        pid_start: None,
        cgroup_path,
        created: false,
        created_at: state::now_rfc3339(),
        owner: nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "root".into()),
        annotations: spec.annotations().clone().unwrap_or_default(),
    };
    let result =
        state::save(opts.root, &rec).and_then(|_| create_inner(opts, &spec, &mut rec, cg.as_ref()));
    match result {
        Ok(pid) => Ok(pid),
        Err(e) => {
            let _ = destroy(opts.root, &rec, opts.cgroup_root);
            Err(e)
        }
    }
}

fn create_inner(
    opts: &CreateOptions<'_>,
    spec: &Spec,
    rec: &mut Record,
    cg: &dyn CgroupManager,
) -> Result<i32, RuntimeError> {
    let dir = state::dir(opts.root, opts.id);
    let fifo = dir.join(EXEC_FIFO);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .map_err(|e| RuntimeError::sys(format!("mkfifo {}", fifo.display()), e))?;
    // mkfifo honours the umask; the init may run as a user-namespaced root that needs "other" write.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o622))
        .map_err(|e| RuntimeError::io("chmod", &fifo, e))?;

    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    match (terminal, opts.console.is_some()) {
        (true, false) => {
            return Err(RuntimeError::InvalidSpec {
                path: rec.bundle.join("config.json"),
                reason: "process.terminal is true: pass --console-socket to receive the terminal"
                    .into(),
            })
        }
        (false, true) => {
            return Err(RuntimeError::InvalidSpec {
                path: rec.bundle.join("config.json"),
                reason: "--console-socket given but process.terminal is false".into(),
            })
        }
        _ => {}
    }
    let linux = spec.linux().clone().unwrap_or_default();
    let resources = linux.resources().clone().unwrap_or_default();
    cg.create()?;
    cg.apply(&resources)?;

    let cache = opts.root.join(".seccomp-cache");
    let seccomp = linux
        .seccomp()
        .as_ref()
        .map(|s| Filter::compile_cached(s, &cache))
        .transpose()?;
    let ns = namespaces::plan(linux.namespaces().as_deref().unwrap_or_default());
    let joins = namespaces::open_joins(&ns)?;
    let caps = super::capabilities::plan(
        spec.process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref()),
        &super::capabilities::kernel_caps(),
    );
    for c in &caps.unknown {
        tracing::warn!(capability = %c, "the kernel does not know this capability; ignored");
    }

    let (child_rx, parent_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("pipe", e))?;
    let (parent_rx, child_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("pipe", e))?;

    // Cheap cgroup placement: clone3 into the cgroup2 directory, and the init moving itself into
    // the v1 hierarchies; a parent writing the pid makes the kernel wait ~15 ms (RCU grace period).
    // From a new user namespace the init cannot write the host's cgroupfs: the parent does it.
    let placement = cg.placement()?;
    let self_attach = if ns.new_userns() {
        Vec::new()
    } else {
        placement.v1_tasks.clone()
    };
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

    // SAFETY: flotilla-runtime is single-threaded (see module doc), so the child may allocate.
    let helper = match unsafe { nix::unistd::fork() }.map_err(|e| RuntimeError::sys("fork", e))? {
        nix::unistd::ForkResult::Child => {
            drop(parent_tx);
            drop(parent_rx);
            let cfg = InitConfig {
                spec,
                rootfs: rec.rootfs.clone(),
                ns: &ns,
                caps,
                seccomp: seccomp.as_ref(),
                exec_fifo: fifo.clone(),
                from_parent: child_rx,
                to_parent: child_tx,
                console: opts.console.as_ref(),
                self_attach: &self_attach,
            };
            helper_main(cfg, &joins, cgroup_fd.as_ref())
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(child_rx);
    drop(child_tx);
    drop(joins);
    let mut rx = std::fs::File::from(parent_rx);
    let mut tx = std::fs::File::from(parent_tx);
    let helper_status =
        waitpid(helper, None).map_err(|e| RuntimeError::sys("wait for the clone helper", e))?;
    drop(cgroup_fd);
    // The init's pid, then 1 if clone3 placed it in the cgroup2 directory.
    let mut pid_buf = [0u8; 5];
    let pid = match rx.read_exact(&mut pid_buf) {
        Ok(()) if helper_status == WaitStatus::Exited(helper, 0) => {
            i32::from_ne_bytes([pid_buf[0], pid_buf[1], pid_buf[2], pid_buf[3]])
        }
        _ => {
            let mut msg = String::new();
            let _ = rx.read_to_string(&mut msg);
            return Err(RuntimeError::InitFailed {
                id: rec.id.clone(),
                reason: message_or(msg, "the clone helper failed"),
            });
        }
    };
    rec.pid = Some(pid);
    rec.pid_start = state::proc_start_time(pid);
    state::save(opts.root, rec)?;

    if ns.new_userns() {
        let uid = namespaces::id_map_text(linux.uid_mappings().as_deref().unwrap_or_default());
        let gid = namespaces::id_map_text(linux.gid_mappings().as_deref().unwrap_or_default());
        write_proc(pid, "uid_map", &uid)?;
        write_proc(pid, "gid_map", &gid)?;
    }
    let placed_unified = pid_buf[4] == 1;
    if !self_attach.is_empty() && (placed_unified || placement.unified.is_none()) {
        // The init joins the v1 hierarchies itself after GO; nothing left for us.
    } else if !self_attach.is_empty() {
        // clone3 could not place it (old kernel): only the cgroup2 directory is ours to write.
        if let Some(dir) = &placement.unified {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string())
                .map_err(|e| RuntimeError::io("join cgroup", procs, e))?;
        }
    } else {
        cg.add_process(pid)?;
    }
    if let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
        write_proc(pid, "oom_score_adj", &adj.to_string())?;
    }
    tx.write_all(&[MSG_GO])
        .map_err(|e| RuntimeError::io("signal the container init", "pipe", e))?;
    // READY is one byte and the pipe stays open until exec; ERR is followed by a message and EOF.
    let mut reply = vec![0u8; 1];
    if rx.read_exact(&mut reply).is_err() {
        reply.clear();
    } else if reply[0] == MSG_ERR {
        let _ = rx.read_to_end(&mut reply);
    }
    match reply.first() {
        Some(&MSG_READY) => {}
        Some(&MSG_ERR) => {
            return Err(RuntimeError::InitFailed {
                id: rec.id.clone(),
                reason: String::from_utf8_lossy(&reply[1..]).into_owned(),
            })
        }
        _ => {
            return Err(RuntimeError::InitFailed {
                id: rec.id.clone(),
                reason: "the container init exited during setup".into(),
            })
        }
    }
    if let Some(pf) = opts.pid_file {
        write_atomic(pf, &pid.to_string())?;
    }
    rec.created = true;
    state::save(opts.root, rec)?;
    Ok(pid)
}

fn message_or(msg: String, default: &str) -> String {
    if msg.is_empty() {
        default.to_string()
    } else {
        msg
    }
}

/// In the forked helper: join namespaces, clone the init, report its pid, exit.
fn helper_main(
    cfg: InitConfig<'_>,
    joins: &[(oci_spec::runtime::LinuxNamespaceType, OwnedFd)],
    cgroup_fd: Option<&OwnedFd>,
) -> ! {
    let mut tx = match cfg.to_parent.try_clone() {
        Ok(fd) => std::fs::File::from(fd),
        // SAFETY: _exit in a forked child.
        Err(_) => unsafe { libc::_exit(1) },
    };
    if let Err(e) = namespaces::enter(joins) {
        let _ = tx.write_all(e.to_string().as_bytes());
        // SAFETY: _exit in a forked child.
        unsafe { libc::_exit(1) }
    }
    let flags = cfg.ns.clone_flags.bits() as libc::c_ulong
        | libc::CLONE_PARENT as libc::c_ulong
        | libc::SIGCHLD as libc::c_ulong;
    let mut placed = 0u8;
    let mut rc = -1;
    if let Some(fd) = cgroup_fd {
        rc = clone3_into_cgroup(
            cfg.ns.clone_flags.bits() as u64 | libc::CLONE_PARENT as u64,
            fd,
        );
        if rc >= 0 {
            placed = 1;
        }
    }
    if rc < 0 {
        // SAFETY: a raw clone without CLONE_VM and with a NULL stack behaves like fork(2): the
        // child gets a copy of this single-threaded process and continues from here.
        rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    }
    if rc == 0 {
        drop(tx);
        init::run(cfg)
    }
    if rc < 0 {
        let e = nix::Error::last();
        let _ =
            tx.write_all(format!("clone with namespaces {:?}: {e}", cfg.ns.clone_flags).as_bytes());
        // SAFETY: _exit in a forked child.
        unsafe { libc::_exit(1) }
    }
    let mut msg = [0u8; 5];
    msg[..4].copy_from_slice(&(rc as i32).to_ne_bytes());
    msg[4] = placed;
    let _ = tx.write_all(&msg);
    // SAFETY: _exit in a forked child.
    unsafe { libc::_exit(0) }
}

/// `struct clone_args` of clone3(2), up to the `cgroup` field (kernel 5.7+).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// fork-like clone3 that starts the child inside the cgroup2 directory `cgroup`. Returns the
/// child's pid (0 in the child) or -1 (the caller falls back to clone).
pub(crate) fn clone3_into_cgroup(flags: u64, cgroup: &OwnedFd) -> i64 {
    use std::os::fd::AsRawFd;
    let args = CloneArgs {
        flags: flags | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        // clone3 refuses an exit signal with CLONE_PARENT: the child inherits ours (SIGCHLD).
        exit_signal: if flags & libc::CLONE_PARENT as u64 != 0 {
            0
        } else {
            libc::SIGCHLD as u64
        },
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup.as_raw_fd() as u64,
    };
    // SAFETY: args is a valid clone_args of the size passed; without CLONE_VM and with no stack the
    // child is a fork-style copy of this single-threaded process.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    }
}

fn write_proc(pid: i32, file: &str, data: &str) -> Result<(), RuntimeError> {
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    std::fs::write(&path, data).map_err(|e| RuntimeError::io("write", path, e))
}

pub(crate) fn write_atomic(path: &Path, data: &str) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("tmp-flotilla");
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| RuntimeError::io("write", path, e))
}

/// The container's current status, derived from the record and the system.
pub fn status(root: &Path, rec: &Record, cgroup_root: &Path) -> Status {
    let frozen = cgroup_manager(cgroup_root, &rec.cgroup_path)
        .ok()
        .and_then(|cg| cg.state_frozen().ok())
        .unwrap_or(false);
    let obs = Observed {
        creator_alive: rec.creator_pid != std::process::id() as i32
            && state::proc_start_time(rec.creator_pid).is_some(),
        pid_start: rec.pid.and_then(state::proc_start_time),
        fifo_exists: state::dir(root, &rec.id).join(EXEC_FIFO).exists(),
        frozen,
    };
    state::derive_status(rec, &obs)
}

pub fn oci_state(root: &Path, id: &str, cgroup_root: &Path) -> Result<OciState, RuntimeError> {
    let rec = state::load(root, id)?;
    let st = status(root, &rec, cgroup_root);
    Ok(OciState {
        oci_version: "1.2.0".into(),
        id: rec.id.clone(),
        status: st,
        pid: if st == Status::Stopped {
            0
        } else {
            rec.pid.unwrap_or(0)
        },
        bundle: rec.bundle,
        rootfs: rec.rootfs,
        created: rec.created_at,
        owner: rec.owner,
        annotations: rec.annotations,
    })
}

/// Lets a created container's init exec the user process.
pub fn start(root: &Path, id: &str, cgroup_root: &Path) -> Result<(), RuntimeError> {
    let rec = state::load(root, id)?;
    let st = status(root, &rec, cgroup_root);
    if st != Status::Created {
        return Err(RuntimeError::WrongState {
            id: id.into(),
            status: st.to_string(),
            hint: "only a created container can be started",
        });
    }
    let fifo = state::dir(root, id).join(EXEC_FIFO);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .map_err(|e| RuntimeError::io("open the exec fifo", &fifo, e))?;
    let pid = rec.pid.unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&f),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)).unwrap_or(0);
        if n > 0 {
            let mut b = [0u8; 1];
            match nix::unistd::read(&f, &mut b) {
                Ok(1) => break,
                Ok(_) | Err(nix::Error::EAGAIN) => {}
                Err(e) => return Err(RuntimeError::sys("read the exec fifo", e)),
            }
        }
        if state::proc_start_time(pid).is_none() {
            return Err(RuntimeError::InitFailed {
                id: id.into(),
                reason: "the container init exited before it could start".into(),
            });
        }
        if Instant::now() > deadline {
            return Err(RuntimeError::InitFailed {
                id: id.into(),
                reason: "the container init did not answer within 10 s".into(),
            });
        }
    }
    std::fs::remove_file(&fifo).map_err(|e| RuntimeError::io("remove the exec fifo", &fifo, e))
}

use std::os::unix::fs::OpenOptionsExt;

/// Parses `KILL`, `SIGKILL`, `9`.
pub fn parse_signal(s: &str) -> Result<Signal, RuntimeError> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| RuntimeError::InvalidSignal(s.into()));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    Signal::from_str(&name).map_err(|_| RuntimeError::InvalidSignal(s.into()))
}

pub fn kill(
    root: &Path,
    id: &str,
    sig: Signal,
    all: bool,
    cgroup_root: &Path,
) -> Result<(), RuntimeError> {
    let rec = state::load(root, id)?;
    let st = status(root, &rec, cgroup_root);
    if matches!(st, Status::Stopped | Status::Creating) {
        return Err(RuntimeError::WrongState {
            id: id.into(),
            status: st.to_string(),
            hint: "there is no process to signal",
        });
    }
    if all {
        let cg = cgroup_manager(cgroup_root, &rec.cgroup_path)?;
        return Ok(cg.kill_all(sig as i32)?);
    }
    let pid = rec.pid.unwrap_or(0);
    nix::sys::signal::kill(Pid::from_raw(pid), sig)
        .map_err(|e| RuntimeError::sys(format!("send {sig} to {pid}"), e))
}

pub fn pause(root: &Path, id: &str, cgroup_root: &Path) -> Result<(), RuntimeError> {
    let rec = state::load(root, id)?;
    let st = status(root, &rec, cgroup_root);
    if st != Status::Running {
        return Err(RuntimeError::WrongState {
            id: id.into(),
            status: st.to_string(),
            hint: "only a running container can be paused",
        });
    }
    Ok(cgroup_manager(cgroup_root, &rec.cgroup_path)?.freeze()?)
}

pub fn resume(root: &Path, id: &str, cgroup_root: &Path) -> Result<(), RuntimeError> {
    let rec = state::load(root, id)?;
    let st = status(root, &rec, cgroup_root);
    if st != Status::Paused {
        return Err(RuntimeError::WrongState {
            id: id.into(),
            status: st.to_string(),
            hint: "only a paused container can be resumed",
        });
    }
    Ok(cgroup_manager(cgroup_root, &rec.cgroup_path)?.thaw()?)
}

pub fn pids(root: &Path, id: &str, cgroup_root: &Path) -> Result<Vec<i32>, RuntimeError> {
    let rec = state::load(root, id)?;
    Ok(cgroup_manager(cgroup_root, &rec.cgroup_path)?.pids()?)
}

pub fn stats(root: &Path, id: &str, cgroup_root: &Path) -> Result<cgroups::Stats, RuntimeError> {
    let rec = state::load(root, id)?;
    Ok(cgroup_manager(cgroup_root, &rec.cgroup_path)?.stats()?)
}

/// Removes a container. Running or paused containers need `force` (they are killed first).
pub fn delete(root: &Path, id: &str, force: bool, cgroup_root: &Path) -> Result<(), RuntimeError> {
    let rec = match state::load(root, id) {
        Err(RuntimeError::CorruptState { .. }) if force => {
            let d = state::dir(root, id);
            return std::fs::remove_dir_all(&d).map_err(|e| RuntimeError::io("remove", d, e));
        }
        r => r?,
    };
    let st = status(root, &rec, cgroup_root);
    match st {
        Status::Running | Status::Paused if !force => {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status: st.to_string(),
                hint: "stop it first or use --force",
            })
        }
        Status::Creating if !force => {
            return Err(RuntimeError::WrongState {
                id: id.into(),
                status: st.to_string(),
                hint: "it is being created; use --force",
            })
        }
        _ => {}
    }
    destroy(root, &rec, cgroup_root)
}

/// Kills whatever is left of the container, removes its cgroup and its state directory.
fn destroy(root: &Path, rec: &Record, cgroup_root: &Path) -> Result<(), RuntimeError> {
    let live = rec
        .pid
        .filter(|p| rec.pid_start.is_some() && state::proc_start_time(*p) == rec.pid_start);
    if let Ok(cg) = cgroup_manager(cgroup_root, &rec.cgroup_path) {
        let _ = cg.thaw();
        let _ = cg.kill_all(libc::SIGKILL);
    }
    if let Some(pid) = live {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while state::proc_start_time(pid).is_some() && Instant::now() < deadline {
            // Reap it if it is our child (run, or a failed create); otherwise its parent will.
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if let Ok(cg) = cgroup_manager(cgroup_root, &rec.cgroup_path) {
        cg.destroy()?;
    }
    let d = state::dir(root, &rec.id);
    match std::fs::remove_dir_all(&d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::io("remove", d, e)),
        _ => Ok(()),
    }
}

/// How a container's init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Shell-style code: the exit status, or 128 + signal number.
    pub code: i32,
    pub oom_killed: bool,
}

/// Signals a foreground `run` or `exec` passes on to its process, as runc does.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn forwarded_set() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Blocks the forwarded signals and SIGCHLD in the calling thread, so that a signal sent at any
/// moment from now on is kept pending for [`wait_forwarding`] instead of killing us before the
/// wait begins. Call it before creating the process and before starting any thread (threads
/// inherit the mask; the container's processes reset it before exec).
pub fn block_forwarded_signals() -> Result<(), RuntimeError> {
    forwarded_set()
        .thread_block()
        .map_err(|e| RuntimeError::sys("block the signals to forward", e))
}

/// Waits for our child `pid` (the init after `run`, the process of `exec`), forwarding
/// INT/TERM/HUP/QUIT/USR1/USR2 to it. Signals are taken synchronously with sigwait, so none is
/// lost between two waits.
pub fn wait_forwarding(pid: i32) -> Result<i32, RuntimeError> {
    let set = forwarded_set();
    set.thread_block()
        .map_err(|e| RuntimeError::sys("block the signals to forward", e))?;
    let child = Pid::from_raw(pid);
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                return Err(RuntimeError::sys(
                    format!("wait for container process {pid}"),
                    e,
                ))
            }
        }
        // A SIGCHLD raised after the waitpid above stays pending, so this returns at once.
        match set.wait() {
            Ok(Signal::SIGCHLD) | Err(nix::Error::EINTR) => {}
            Ok(sig) => {
                let _ = nix::sys::signal::kill(child, sig);
            }
            Err(e) => return Err(RuntimeError::sys("wait for a signal", e)),
        }
    }
}

/// create + start + wait + delete, as `runc run` does. Returns how the init ended.
/// `terminal_peer`: our end of the socket given as `opts.console`; the pty it receives is copied
/// to and from our stdio.
pub fn run(opts: &CreateOptions<'_>, terminal_peer: Option<OwnedFd>) -> Result<Exit, RuntimeError> {
    block_forwarded_signals()?;
    let pid = create(opts)?;
    let proxy = match terminal_peer {
        Some(peer) => match super::console::recv_fd(std::os::fd::AsRawFd::as_raw_fd(&peer))
            .and_then(super::console::proxy)
        {
            Ok(g) => Some(g),
            Err(e) => {
                let _ = delete(opts.root, opts.id, true, opts.cgroup_root);
                return Err(e);
            }
        },
        None => None,
    };
    if let Err(e) = start(opts.root, opts.id, opts.cgroup_root) {
        let _ = delete(opts.root, opts.id, true, opts.cgroup_root);
        return Err(e);
    }
    let code = wait_forwarding(pid);
    drop(proxy);
    let rec = state::load(opts.root, opts.id)?;
    let oom_killed = cgroup_manager(opts.cgroup_root, &rec.cgroup_path)
        .ok()
        .and_then(|cg| cg.oom_kills().ok())
        .is_some_and(|n| n > 0);
    delete(opts.root, opts.id, true, opts.cgroup_root)?;
    Ok(Exit {
        code: code?,
        oom_killed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("KILL").expect("KILL"), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").expect("sigterm"), Signal::SIGTERM);
        assert_eq!(parse_signal("9").expect("9"), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn default_cgroup_path_is_under_the_flotilla_parent() {
        let spec = spec::default_spec(vec!["/bin/true".into()]);
        assert_eq!(
            cgroup_rel_path(&spec, "c1").expect("default"),
            PathBuf::from("flotilla/c1")
        );
        let mut spec = spec;
        if let Some(l) = spec.linux_mut().as_mut() {
            l.set_cgroups_path(Some("/custom/x".into()));
        }
        assert_eq!(
            cgroup_rel_path(&spec, "c1").expect("custom"),
            PathBuf::from("custom/x")
        );
        if let Some(l) = spec.linux_mut().as_mut() {
            l.set_cgroups_path(Some("/../../escape".into()));
        }
        assert!(
            cgroup_rel_path(&spec, "c1").is_err(),
            "a cgroupsPath with .. is refused"
        );
    }
}
