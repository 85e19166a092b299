//! The container's first process, from clone(2) to execve(2).
//!
//! Runs in the child created by `container::create`, inside its new namespaces, in the
//! single-threaded `flotilla-runtime` process (so allocating here is safe). Protocol with the
//! creator over two pipes: wait for `GO` (uid/gid maps written, cgroup joined), set everything up,
//! send `READY` (or `ERR` + message), then block opening the exec fifo until `start`, then drop
//! privileges and exec. If the creator dies before `GO`, the pipe reads EOF and init exits quietly.
use std::convert::Infallible;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::capabilities::CapPlan;
use super::error::RuntimeError;
use super::namespaces::NsPlan;
use super::rootfs::{self, RootfsContext};
use super::seccomp::Filter;
use super::syscall::{LinuxSyscall, Syscall};

pub const MSG_GO: u8 = b'G';
pub const MSG_READY: u8 = b'R';
pub const MSG_ERR: u8 = b'E';

/// Everything init needs, prepared by the creator before cloning.
pub struct InitConfig<'a> {
    pub spec: &'a Spec,
    pub rootfs: PathBuf,
    pub ns: &'a NsPlan,
    pub caps: CapPlan,
    pub seccomp: Option<&'a Filter>,
    pub exec_fifo: PathBuf,
    pub from_parent: OwnedFd,
    pub to_parent: OwnedFd,
    /// Where to send the pty master when `process.terminal` is true.
    pub console: Option<&'a OwnedFd>,
    /// cgroup v1 `tasks` files the init writes `0` to, moving itself (see `Placement`).
    pub self_attach: &'a [PathBuf],
}

/// Never returns: execs the user process or exits.
pub fn run(cfg: InitConfig<'_>) -> ! {
    let mut to_parent = std::fs::File::from(cfg.to_parent.try_clone().unwrap_or_else(|_| exit(1)));
    match setup(&cfg, &mut to_parent) {
        Ok(never) => match never {},
        Err(Failure::Quiet) => exit(1),
        Err(Failure::BeforeReady(e)) => {
            let mut msg = vec![MSG_ERR];
            msg.extend_from_slice(e.to_string().as_bytes());
            let _ = to_parent.write_all(&msg);
            exit(1)
        }
        Err(Failure::AfterReady(e)) => {
            let _ = writeln!(std::io::stderr(), "flotilla-runtime: {e}");
            exit(127)
        }
    }
}

enum Failure {
    Quiet,
    BeforeReady(RuntimeError),
    AfterReady(RuntimeError),
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit never returns and runs no destructors or atexit handlers of the parent's copy.
    unsafe { libc::_exit(code) }
}

fn setup(cfg: &InitConfig<'_>, to_parent: &mut std::fs::File) -> Result<Infallible, Failure> {
    let mut from_parent =
        std::fs::File::from(cfg.from_parent.try_clone().map_err(|_| Failure::Quiet)?);
    let mut go = [0u8; 1];
    match from_parent.read(&mut go) {
        Ok(1) if go[0] == MSG_GO => {}
        _ => return Err(Failure::Quiet),
    }
    let before = Failure::BeforeReady;
    let fifo = prepare(cfg).map_err(before)?;
    to_parent
        .write_all(&[MSG_READY])
        .map_err(|_| Failure::Quiet)?;
    drop(from_parent);

    // Block until `start` opens the fifo for reading, then tell it we are going.
    let reopen = PathBuf::from(format!("/proc/self/fd/{}", fifo.as_raw_fd()));
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(&reopen)
        .map_err(|e| Failure::AfterReady(RuntimeError::io("open the exec fifo", &reopen, e)))?;
    let _ = w.write_all(b"0");
    drop(w);
    drop(fifo);
    finalize_and_exec(cfg).map_err(Failure::AfterReady)
}

/// Namespaces, loopback, rootfs, hostname, rlimits, cwd; returns the exec fifo opened O_PATH
/// before pivot_root.
fn prepare(cfg: &InitConfig<'_>) -> Result<OwnedFd, RuntimeError> {
    let sys = LinuxSyscall;
    let spec = cfg.spec;
    // First, before any allocation worth accounting: join the v1 hierarchies.
    for tasks in cfg.self_attach {
        sys.write_file(tasks, "0")?;
    }
    if cfg.ns.new_netns() {
        // A new network namespace starts with `lo` down; runc and crun bring it up, and
        // containers expect to reach themselves on 127.0.0.1. Joined namespaces are left alone.
        sys.link_up("lo")?;
    }
    if cfg.ns.new_userns() {
        // The maps are written now; until we switch, our kernel ids are still the host's, which the
        // new namespace does not map (files we create would fail with EOVERFLOW).
        sys.set_gid(0)?;
        sys.set_uid(0)?;
    }
    if cfg.ns.new_cgroupns {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| RuntimeError::sys("unshare the cgroup namespace", e))?;
    }
    if cfg.ns.has(LinuxNamespaceType::Uts) {
        if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            sys.sethostname(h)?;
        }
        if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
            sys.setdomainname(d)?;
        }
    }
    if !cfg.ns.has(LinuxNamespaceType::Mount) {
        return Err(RuntimeError::InvalidSpec {
            path: "config.json".into(),
            reason: "a mount namespace is required".into(),
        });
    }
    let ctx = RootfsContext {
        rootfs: &cfg.rootfs,
        in_userns: cfg.ns.has(LinuxNamespaceType::User),
        // A fresh sysfs needs CAP_SYS_ADMIN over the network namespace's owner: true for a new
        // netns, and for a joined one (the agent's sandboxes) when there is no user namespace.
        new_netns: cfg.ns.new_netns() || !cfg.ns.has(LinuxNamespaceType::User),
        readlink: rootfs::real_readlink(),
    };
    rootfs::prepare(&sys, spec, &ctx)?;
    let fifo = nix::fcntl::open(
        &cfg.exec_fifo,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| RuntimeError::sys(format!("open {}", cfg.exec_fifo.display()), e))?;
    rootfs::finish(&sys, spec, &cfg.rootfs)?;
    if let Some(sock) = cfg.console {
        let size = spec
            .process()
            .as_ref()
            .and_then(|p| p.console_size())
            .map(|b| (b.height() as u16, b.width() as u16));
        super::console::setup_in_container(sock, size)?;
    }

    let process = process_of(spec)?;
    for rl in process.rlimits().as_deref().unwrap_or_default() {
        sys.set_rlimit(rl.typ(), rl.soft(), rl.hard())?;
    }
    let cwd = process.cwd();
    if sys.kind(cwd) == super::syscall::FileKind::Missing {
        sys.mkdir_all(cwd, 0o755)?;
    }
    sys.chdir(cwd)?;
    // Resolve the executable now so a typo fails `create`, not a later `start`.
    let args = process.args().as_deref().unwrap_or_default();
    let env = process.env().as_deref().unwrap_or_default();
    let first = args.first().map(String::as_str).unwrap_or_default();
    find_executable(first, env, cwd).ok_or_else(|| RuntimeError::InvalidSpec {
        path: "config.json".into(),
        reason: format!(
            "executable {first:?} not found in the container's $PATH or not executable"
        ),
    })?;
    Ok(fifo)
}

/// Switches to the spec's user and privileges. The order is what makes it work: a filter that
/// must be loaded without no_new_privs goes in while CAP_SYS_ADMIN is still held; the bounding set
/// shrinks while CAP_SETPCAP is held; KEEPCAPS carries the permitted set across setuid; with
/// no_new_privs the filter is loaded last (by the caller, right before exec).
pub fn drop_privileges(
    sys: &dyn Syscall,
    process: &Process,
    caps: &CapPlan,
    seccomp: Option<&Filter>,
    in_userns: bool,
) -> Result<(), RuntimeError> {
    let nnp = process.no_new_privileges().unwrap_or(false);
    if let (Some(f), false) = (seccomp, nnp) {
        sys.load_seccomp(f)?;
    }
    sys.drop_bounding_caps(caps)?;
    let user = process.user();
    match user.additional_gids().as_deref() {
        Some(gids) => sys.set_groups(gids)?,
        // setgroups may be denied in a user namespace; there is nothing to clear there anyway.
        None if !in_userns => sys.set_groups(&[])?,
        None => {}
    }
    sys.set_keep_caps(true)?;
    sys.set_gid(user.gid())?;
    sys.set_uid(user.uid())?;
    sys.set_keep_caps(false)?;
    sys.set_caps(caps)?;
    if let Some(mask) = user.umask() {
        sys.set_umask(mask);
    }
    if nnp {
        sys.set_no_new_privs()?;
    }
    Ok(())
}

fn finalize_and_exec(cfg: &InitConfig<'_>) -> Result<Infallible, RuntimeError> {
    let sys = LinuxSyscall;
    let process = process_of(cfg.spec)?;
    drop_privileges(
        &sys,
        process,
        &cfg.caps,
        cfg.seccomp,
        cfg.ns.has(LinuxNamespaceType::User),
    )?;
    let args = process.args().as_deref().unwrap_or_default();
    let env = process.env().as_deref().unwrap_or_default();
    let first = args.first().map(String::as_str).unwrap_or_default();
    let exe =
        find_executable(first, env, process.cwd()).ok_or_else(|| RuntimeError::InvalidSpec {
            path: "config.json".into(),
            reason: format!("executable {first:?} not found"),
        })?;
    let cexe = CString::new(exe.as_os_str().as_bytes()).map_err(|_| nul("executable"))?;
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| nul("args"))?;
    let cenv: Vec<CString> = env
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| nul("env"))?;
    reset_signals();
    if let (Some(f), true) = (cfg.seccomp, process.no_new_privileges().unwrap_or(false)) {
        // Last step before exec, so the filter only has to allow execve itself.
        sys.load_seccomp(f)?;
    }
    let e = nix::unistd::execve(&cexe, &cargs, &cenv).unwrap_err();
    Err(RuntimeError::sys(format!("exec {}", exe.display()), e))
}

/// The spec's process; `spec::load` already refused specs without one.
fn process_of(spec: &Spec) -> Result<&Process, RuntimeError> {
    spec.process()
        .as_ref()
        .ok_or_else(|| RuntimeError::InvalidSpec {
            path: "config.json".into(),
            reason: "no process".into(),
        })
}

fn nul(what: &str) -> RuntimeError {
    RuntimeError::InvalidSpec {
        path: "config.json".into(),
        reason: format!("process {what} contain a NUL byte"),
    }
}

/// `name` as execvp would find it: a path with '/' is taken as is (relative to cwd), else each
/// directory of the container's PATH (from `env`, default the usual one) is tried.
pub fn find_executable(name: &str, env: &[String], cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        let p = if name.starts_with('/') {
            PathBuf::from(name)
        } else {
            cwd.join(name)
        };
        return is_exec(&p).then_some(p);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_exec(p))
}

/// Gives the process a clean signal state before exec, as runc does: the signal mask and ignored
/// dispositions survive execve, and our callers (a shim blocking SIGCHLD for its signalfd, Rust's
/// runtime ignoring SIGPIPE) must not leak theirs into the container.
pub(crate) fn reset_signals() {
    // SAFETY: sigprocmask and signal(SIG_DFL) are async-signal-safe syscalls without allocation;
    // this runs in a single-threaded child just before exec.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // The raw syscall: glibc's wrappers refuse the two real-time signals it reserves (32,
        // 33), which the Rust runtime of our caller may have ignored.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const libc::sigaction,
                    std::ptr::null_mut::<libc::sigaction>(),
                    8usize,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::syscall::{Call, RecordingSyscall};
    use super::*;

    fn process(v: serde_json::Value) -> Process {
        serde_json::from_value(v).expect("process")
    }

    #[test]
    fn privileges_drop_in_a_working_order() {
        let sys = RecordingSyscall::default();
        let p = process(
            serde_json::json!({"cwd": "/", "args": ["x"], "noNewPrivileges": true,
            "user": {"uid": 1000, "gid": 100, "additionalGids": [5, 6], "umask": 18}}),
        );
        drop_privileges(&sys, &p, &CapPlan::default(), None, false).expect("drop");
        assert_eq!(
            sys.take(),
            vec![
                Call::DropBounding,
                Call::SetGroups(vec![5, 6]),
                Call::KeepCaps(true),
                Call::SetGid(100),
                Call::SetUid(1000),
                Call::KeepCaps(false),
                Call::SetCaps,
                Call::Umask(18),
                Call::NoNewPrivs,
            ]
        );
    }

    #[test]
    fn without_no_new_privs_seccomp_loads_first_and_userns_keeps_groups() {
        let sys = RecordingSyscall::default();
        let p = process(
            serde_json::json!({"cwd": "/", "args": ["x"], "noNewPrivileges": false, "user": {"uid": 0, "gid": 0}}),
        );
        let spec: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}))
                .expect("seccomp");
        let f = Filter::compile(&spec).expect("compile");
        drop_privileges(&sys, &p, &CapPlan::default(), Some(&f), true).expect("drop");
        let calls = sys.take();
        assert_eq!(calls[0], Call::LoadSeccomp, "{calls:?}");
        assert!(
            !calls.iter().any(|c| matches!(c, Call::SetGroups(_))),
            "{calls:?}"
        );
        assert!(!calls.contains(&Call::NoNewPrivs));
    }

    #[test]
    fn executables_are_found_on_path_or_by_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir");
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        std::fs::write(bin.join("data"), "x").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let env = vec![format!("PATH=/nonexistent:{}", bin.display())];
        assert_eq!(
            find_executable("tool", &env, Path::new("/")),
            Some(tool.clone())
        );
        assert_eq!(find_executable("data", &env, Path::new("/")), None);
        assert_eq!(find_executable("missing", &env, Path::new("/")), None);
        assert_eq!(
            find_executable("bin/tool", &[], dir.path()),
            Some(tool.clone())
        );
        assert_eq!(
            find_executable(tool.to_str().expect("utf8"), &[], Path::new("/")),
            Some(tool)
        );
        assert_eq!(find_executable("", &env, Path::new("/")), None);
    }
}
