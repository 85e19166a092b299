//! cgroup managers for containers: one [`CgroupManager`] trait, with a cgroup v1 manager (which
//! also serves hybrid hosts) and a cgroup v2 manager, picked by [`detect`]ing the host layout.
//!
//! What it owns: the container's cgroup directories, from creation to removal — limits from
//! `linux.resources`, membership, freezing, killing, usage statistics.
//!
//! Invariants:
//! - A container cgroup is always a child of the hierarchy root, named by a relative path such as
//!   `flotilla/ctr1`; an absolute `linux.cgroupsPath` is taken relative to the root, and `..` is
//!   refused, so no operation ever touches a directory outside `root`.
//! - `apply` validates the whole request before the first write ([`CgroupError::Invalid`] or
//!   [`CgroupError::Unsupported`] leave every file as it was); a kernel refusal afterwards is a
//!   [`CgroupError::Write`] naming the file and the value.
//! - v1: every mounted controller hierarchy gets the same relative directory. Hybrid: limits go
//!   through v1 only; the cgroup2 directory under `root/unified` groups the processes and is used
//!   to freeze (`cgroup.freeze`) and kill (`cgroup.kill`). The `name=systemd` hierarchy is never
//!   touched. v2: the container directory is a leaf; controllers are enabled in its ancestors.
//! - `destroy` is idempotent: missing directories are success, so a delete after a crash cleans
//!   up whatever is left. Parents (e.g. `flotilla/`) are shared and never removed.
//! - Nothing here spawns threads or holds locks: the managers are plain data and may be used
//!   from any thread.
//!
//! Written by hand rather than with a crate: youki's libcgroups brings youki's own error and stats
//! types and its systemd/D-Bus driver, and cgroups-rs has its own resource model instead of
//! oci-spec's; the file protocol itself is small, and owning it keeps validate-before-write and
//! the hybrid split (limits in v1, grouping in v2) in one place.
//! v2 limits can only be exercised against a fake tree on the hybrid lab host (its cgroup2 mount
//! has no resource controllers); the v1/hybrid paths are also tested against the real kernel.

mod fs;
mod stats;
mod v1;
mod v2;
mod validate;

#[cfg(test)]
mod real_tests;

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use serde::Serialize;

pub use stats::{CpuStats, MemoryStats, PidsStats, Stats};
pub use validate::default_device_rules;

/// Where the cgroup filesystems are normally mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
/// Where a hybrid host mounts its cgroup2 hierarchy, below the root.
pub const UNIFIED_DIR: &str = "unified";
/// Parent of the container cgroups when the spec names none.
pub const DEFAULT_PARENT: &str = "flotilla";

/// How long freeze/thaw wait for the kernel to report the new state.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `destroy` retries `rmdir` while the last processes exit.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The cgroup layout of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One hierarchy per controller under `root/<controller>`.
    V1,
    /// The unified hierarchy mounted at `root`.
    V2,
    /// v1 controller hierarchies plus a controller-less cgroup2 at `root/unified`.
    Hybrid,
}

/// Detects the layout of the cgroup filesystems mounted at `root` (normally [`DEFAULT_ROOT`]):
/// cgroup2 at `root` is V2; a tmpfs with v1 controller mounts is V1, or Hybrid when
/// `root/unified` is cgroup2.
pub fn detect(root: &Path) -> Result<Layout, CgroupError> {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC, TMPFS_MAGIC};
    let fs_type = |p: &Path| statfs(p).map(|s| s.filesystem_type());
    let root_type = fs_type(root).map_err(|e| CgroupError::Detect {
        path: root.to_path_buf(),
        reason: fs::errno_text(&e),
    })?;
    if root_type == CGROUP2_SUPER_MAGIC {
        return Ok(Layout::V2);
    }
    if root_type == CGROUP_SUPER_MAGIC {
        return Err(CgroupError::Detect {
            path: root.to_path_buf(),
            reason: "this is one cgroup v1 hierarchy, not the directory holding them (use its \
                     parent, normally /sys/fs/cgroup)"
                .to_string(),
        });
    }
    if root_type != TMPFS_MAGIC {
        return Err(CgroupError::Detect {
            path: root.to_path_buf(),
            reason: "neither cgroup2 nor a tmpfs holding cgroup v1 hierarchies".to_string(),
        });
    }
    let has_v1 = v1::CONTROLLERS
        .iter()
        .any(|c| fs_type(&root.join(c)).is_ok_and(|t| t == CGROUP_SUPER_MAGIC));
    let has_unified = fs_type(&root.join(UNIFIED_DIR)).is_ok_and(|t| t == CGROUP2_SUPER_MAGIC);
    match (has_v1, has_unified) {
        (true, true) => Ok(Layout::Hybrid),
        (true, false) => Ok(Layout::V1),
        _ => Err(CgroupError::Detect {
            path: root.to_path_buf(),
            reason: "no cgroup v1 controller hierarchy is mounted below it".to_string(),
        }),
    }
}

/// Which cgroup a manager works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupConfig {
    /// Where the hierarchies are mounted: normally [`DEFAULT_ROOT`]; a tempdir in tests.
    pub root: PathBuf,
    /// The host layout: [`detect`]ed, or given explicitly for a fake tree.
    pub layout: Layout,
    /// Cgroup path relative to each hierarchy root, e.g. `flotilla/ctr1`. A leading `/` (as in
    /// an OCI `linux.cgroupsPath`) is accepted and means the same.
    pub path: PathBuf,
}

impl CgroupConfig {
    /// The cgroup of container `id`: the spec's `linux.cgroupsPath` when given, otherwise
    /// `flotilla/<id>`. Checks the path (see [`relative_path`]).
    pub fn for_container(
        root: PathBuf,
        layout: Layout,
        spec_cgroups_path: Option<&Path>,
        id: &str,
    ) -> Result<Self, CgroupError> {
        let path = match spec_cgroups_path {
            Some(p) => relative_path(p)?,
            None => relative_path(&Path::new(DEFAULT_PARENT).join(id))?,
        };
        Ok(Self { root, layout, path })
    }

    /// [`for_container`](Self::for_container) on the host's real cgroup root, with its layout
    /// detected.
    pub fn detect_for_container(
        spec_cgroups_path: Option<&Path>,
        id: &str,
    ) -> Result<Self, CgroupError> {
        let root = PathBuf::from(DEFAULT_ROOT);
        let layout = detect(&root)?;
        Self::for_container(root, layout, spec_cgroups_path, id)
    }
}

/// Normalizes a cgroups path to a relative path below the hierarchy root: strips a leading
/// `/` and `.` components; refuses `..`, an empty path (the root itself) and systemd
/// `slice:prefix:name` paths.
pub fn relative_path(path: &Path) -> Result<PathBuf, CgroupError> {
    let bad = |reason: &str| CgroupError::InvalidPath {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if let Some(text) = path.to_str() {
        if !text.contains('/') && text.matches(':').count() == 2 {
            return Err(bad(
                "systemd cgroup paths (slice:prefix:name) are not supported; use a path like \
                 flotilla/<id>",
            ));
        }
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => return Err(bad("must not contain \"..\"")),
            Component::Prefix(_) => return Err(bad("must be a unix path")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad(
            "must name a cgroup below the hierarchy root, like flotilla/<id>",
        ));
    }
    Ok(out)
}

/// The cgroup of one container. Methods take `&self`; the state is in the kernel.
pub trait CgroupManager: Send + Sync {
    /// Creates the cgroup (`mkdir -p`) in every hierarchy used. v1: every mounted controller
    /// (cpuset levels get their parent's cpus/mems), plus the unified directory on hybrid hosts.
    /// v2: also enables the available controllers in each ancestor's `cgroup.subtree_control`.
    fn create(&self) -> Result<(), CgroupError>;
    /// Applies `linux.resources`, validating all of it first. Sections that are `None` are left
    /// as they are (so `apply` also serves updates). `devices: Some(rules)` on v1 writes deny-all,
    /// then the rules in order, then [`default_device_rules`]; on v2 only default rules are
    /// accepted (no eBPF device program yet).
    fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError>;
    /// Moves process `pid` into the cgroup in every hierarchy.
    fn add_process(&self, pid: i32) -> Result<(), CgroupError>;
    /// Freezes every process, waiting (bounded) until the kernel reports the cgroup frozen.
    fn freeze(&self) -> Result<(), CgroupError>;
    /// Thaws a frozen cgroup, waiting (bounded) until the kernel reports it thawed.
    fn thaw(&self) -> Result<(), CgroupError>;
    /// Whether the cgroup is frozen (a cgroup still freezing is not).
    fn state_frozen(&self) -> Result<bool, CgroupError>;
    /// Usage statistics.
    fn stats(&self) -> Result<Stats, CgroupError>;
    /// How many processes the OOM killer killed in this cgroup.
    fn oom_kills(&self) -> Result<u64, CgroupError>;
    /// Every process of the cgroup; none when the cgroup does not exist.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    /// Sends `signal` to every process: `cgroup.kill` for SIGKILL where the kernel has it,
    /// otherwise freeze, signal each process, thaw. A cgroup that does not exist is success.
    fn kill_all(&self, signal: i32) -> Result<(), CgroupError>;
    /// Removes the cgroup from every hierarchy (child cgroups first), retrying briefly while
    /// processes exit. Missing directories are success.
    fn destroy(&self) -> Result<(), CgroupError>;
    /// Where a new process can be placed without the parent writing its pid (which makes the
    /// kernel wait for an RCU grace period, ~15 ms): see [`Placement`].
    fn placement(&self) -> Result<Placement, CgroupError>;
}

/// Cheap ways into the cgroup for a new process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// v1 `tasks` files: a single-threaded process writing `0` there moves itself without the
    /// threadgroup lock. Requires write access to the host's cgroupfs (not from a user namespace).
    pub v1_tasks: Vec<PathBuf>,
    /// cgroup2 directory for `clone3(CLONE_INTO_CGROUP)`.
    pub unified: Option<PathBuf>,
}

/// The manager for `cfg.layout`. The path is checked by each operation (an invalid path makes
/// every operation fail with [`CgroupError::InvalidPath`]).
pub fn new_manager(cfg: CgroupConfig) -> Box<dyn CgroupManager> {
    match cfg.layout {
        Layout::V1 => Box::new(v1::V1Manager::new(cfg.root, cfg.path, false)),
        Layout::Hybrid => Box::new(v1::V1Manager::new(cfg.root, cfg.path, true)),
        Layout::V2 => Box::new(v2::V2Manager::new(cfg.root, cfg.path)),
    }
}

/// Errors of cgroup operations. Texts are lower case and name the file and value involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot write {value:?} to {}: {}", .path.display(), fs::io_text(.source))]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("cannot read {}: {}", .path.display(), fs::io_text(.source))]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot parse {value:?} in {}: {reason}", .path.display())]
    Parse {
        path: PathBuf,
        value: String,
        reason: String,
    },
    #[error("cannot create cgroup {}: {}", .path.display(), fs::io_text(.source))]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot remove cgroup {}: {}", .path.display(), fs::io_text(.source))]
    Remove { path: PathBuf, source: io::Error },
    #[error(
        "cannot remove cgroup {}: it still has processes after {waited_ms} ms (kill them first)",
        .path.display()
    )]
    Busy { path: PathBuf, waited_ms: u64 },
    /// The request is impossible; nothing was written.
    #[error("invalid {field} {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid cgroups path {}: {reason}", .path.display())]
    InvalidPath { path: PathBuf, reason: String },
    /// The request is possible but not on this host or not in flotilla yet; nothing was written.
    #[error("{what} is not supported here: {reason}")]
    Unsupported { what: String, reason: String },
    #[error("cannot detect the cgroup layout at {}: {reason}", .path.display())]
    Detect { path: PathBuf, reason: String },
    #[error("timed out after {waited_ms} ms waiting for {} to show {wanted:?}", .path.display())]
    Timeout {
        path: PathBuf,
        wanted: String,
        waited_ms: u64,
    },
    #[error("cannot send signal {signal} to process {pid} of {}: {}", .path.display(), fs::errno_text(.source))]
    Signal {
        pid: i32,
        signal: i32,
        path: PathBuf,
        source: nix::errno::Errno,
    },
}

/// One planned write of `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileWrite {
    path: PathBuf,
    value: String,
}

fn execute(plan: &[FileWrite]) -> Result<(), CgroupError> {
    for w in plan {
        fs::write(&w.path, &w.value)?;
    }
    Ok(())
}

fn check_pid(pid: i32) -> Result<(), CgroupError> {
    if pid <= 0 {
        return Err(CgroupError::Invalid {
            field: "pid",
            value: pid.to_string(),
            reason: "must be a positive process id".to_string(),
        });
    }
    Ok(())
}

fn check_signal(signal: i32) -> Result<(), CgroupError> {
    if !(1..=64).contains(&signal) {
        return Err(CgroupError::Invalid {
            field: "signal",
            value: signal.to_string(),
            reason: "must be a signal number between 1 and 64".to_string(),
        });
    }
    Ok(())
}

/// Warnings for the parts of `linux.resources` no manager applies.
fn warn_ignored(r: &LinuxResources) {
    if r.hugepage_limits().as_ref().is_some_and(|v| !v.is_empty()) {
        tracing::warn!("linux.resources.hugepageLimits is not supported yet; ignored");
    }
    if r.network().is_some() {
        tracing::warn!("linux.resources.network (net_cls/net_prio) is not supported; ignored");
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        tracing::warn!("linux.resources.rdma is not supported; ignored");
    }
}

/// Signals every process of `m` without `cgroup.kill`: freeze (so no process forks away
/// unseen), signal each process, thaw. A cgroup the caller had paused stays paused, except for
/// SIGKILL, which needs the processes thawed to die on v1.
fn signal_all_frozen(m: &dyn CgroupManager, dir: &Path, signal: i32) -> Result<(), CgroupError> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let sig = Signal::try_from(signal).map_err(|_| CgroupError::Invalid {
        field: "signal",
        value: signal.to_string(),
        reason: "not a signal this system knows".to_string(),
    })?;
    if m.pids()?.is_empty() {
        return Ok(());
    }
    let was_frozen = m.state_frozen().unwrap_or(false);
    let froze = !was_frozen
        && match m.freeze() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot freeze before signalling; signalling anyway");
                false
            }
        };
    let mut result = Ok(());
    match m.pids() {
        Ok(pids) => {
            for pid in pids.into_iter().filter(|&p| p > 0) {
                match kill(Pid::from_raw(pid), sig) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(source) => {
                        if result.is_ok() {
                            result = Err(CgroupError::Signal {
                                pid,
                                signal,
                                path: dir.to_path_buf(),
                                source,
                            });
                        }
                    }
                }
            }
        }
        Err(e) => result = Err(e),
    }
    if froze || (was_frozen && signal == libc::SIGKILL) {
        let thawed = m.thaw();
        if result.is_ok() {
            result = thawed;
        } else if let Err(e) = thawed {
            tracing::warn!(error = %e, "cannot thaw after signalling");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let ok = |p: &str| relative_path(Path::new(p)).expect(p);
        assert_eq!(ok("/flotilla/ctr1"), PathBuf::from("flotilla/ctr1"));
        assert_eq!(ok("flotilla/./ctr1/"), PathBuf::from("flotilla/ctr1"));
        for bad in ["", "/", "../etc", "a/../../b", "system.slice:docker:abc"] {
            let err = relative_path(Path::new(bad)).expect_err(bad);
            assert!(
                matches!(err, CgroupError::InvalidPath { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn config_for_container() {
        let cfg = CgroupConfig::for_container("/x".into(), Layout::V2, None, "abc").expect("cfg");
        assert_eq!(cfg.path, PathBuf::from("flotilla/abc"));
        let cfg = CgroupConfig::for_container(
            "/x".into(),
            Layout::V1,
            Some(Path::new("/custom/c1")),
            "abc",
        )
        .expect("cfg");
        assert_eq!(cfg.path, PathBuf::from("custom/c1"));
        assert!(CgroupConfig::for_container("/x".into(), Layout::V1, None, "../up").is_err());
    }

    #[test]
    fn invalid_path_fails_every_operation() {
        let t = tempfile::tempdir().expect("tempdir");
        for layout in [Layout::V1, Layout::V2, Layout::Hybrid] {
            let m = new_manager(CgroupConfig {
                root: t.path().to_path_buf(),
                layout,
                path: PathBuf::from("../escape"),
            });
            let err = m.create().expect_err("escape");
            assert!(
                err.to_string()
                    .starts_with("invalid cgroups path ../escape"),
                "{err}"
            );
            assert!(m.destroy().is_err());
            assert!(m.pids().is_err());
        }
        assert_eq!(std::fs::read_dir(t.path()).expect("dir").count(), 0);
    }

    #[test]
    fn detect_refuses_a_plain_directory() {
        let t = tempfile::tempdir().expect("tempdir");
        let err = detect(t.path()).expect_err("not a cgroup fs");
        assert!(
            err.to_string()
                .starts_with("cannot detect the cgroup layout"),
            "{err}"
        );
        let err = detect(&t.path().join("missing")).expect_err("missing");
        assert!(
            err.to_string().ends_with("no such file or directory"),
            "{err}"
        );
    }
}
