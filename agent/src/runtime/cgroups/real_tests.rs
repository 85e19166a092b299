//! Tests against the real kernel of the lab host (root, hybrid or v1 cgroups).
//!
//! They fail — never skip — when not run as root or when the host has no cgroup v1 controllers,
//! so a green run always means the kernel paths were exercised. Each test works below its own
//! `flotilla-test-<pid>-<name>` parent and a [`Cleanup`] guard removes every directory it may
//! have created (and kills its child process) even when the test panics. cgroup v2 resource
//! limits cannot be tested here: the lab host's cgroup2 mount has no resource controllers, and
//! enabling one in its root `cgroup.subtree_control` would change the host for everyone.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
};

use super::*;

const ROOT: &str = "/sys/fs/cgroup";

/// Panics with a clear message unless this is root on a v1 or hybrid host; returns the layout.
fn require_root_with_v1() -> Layout {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "the real-kernel cgroup tests need root (euid is {euid}); run them on the lab host as root"
    );
    let layout = detect(Path::new(ROOT))
        .unwrap_or_else(|e| panic!("the real-kernel cgroup tests need a cgroup host: {e}"));
    assert!(
        matches!(layout, Layout::V1 | Layout::Hybrid),
        "the real-kernel cgroup tests need cgroup v1 controllers (hybrid or v1); {ROOT} is {layout:?}"
    );
    layout
}

/// Removes the test's cgroups (leaf first, then its private parent) in every hierarchy, and
/// kills the child, on drop — also when the test panics.
struct Cleanup {
    parent: PathBuf,
    child: Option<Child>,
}

impl Cleanup {
    fn new(name: &str) -> Self {
        Self {
            parent: PathBuf::from(format!("flotilla-test-{}-{name}", std::process::id())),
            child: None,
        }
    }

    fn hierarchies() -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = v1::CONTROLLERS
            .iter()
            .map(|c| Path::new(ROOT).join(c))
            .collect();
        v.push(Path::new(ROOT).join(UNIFIED_DIR));
        v
    }

    /// True when no hierarchy holds the test's parent directory any more.
    fn all_gone(&self) -> bool {
        Self::hierarchies()
            .iter()
            .all(|h| !h.join(&self.parent).exists())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for h in Self::hierarchies() {
            let dir = h.join(&self.parent);
            if dir.exists() {
                // Thaw first, or a frozen leftover would keep its cgroup busy.
                let _ = std::fs::write(dir.join("c/freezer.state"), "THAWED");
                let _ = std::fs::write(dir.join("c/cgroup.freeze"), "0");
                let _ = fs::remove_cgroup(&dir, Duration::from_secs(2));
            }
        }
    }
}

fn manager(layout: Layout, guard: &Cleanup) -> Box<dyn CgroupManager> {
    new_manager(CgroupConfig {
        root: PathBuf::from(ROOT),
        layout,
        path: guard.parent.join("c"),
    })
}

#[test]
fn real_detect_on_lab_host() {
    let layout = require_root_with_v1();
    if layout == Layout::Hybrid {
        let unified = Path::new(ROOT).join(UNIFIED_DIR);
        assert_eq!(detect(&unified).expect("unified"), Layout::V2);
    }
    let err = detect(&Path::new(ROOT).join("memory")).expect_err("a v1 hierarchy is no root");
    assert!(err.to_string().contains("one cgroup v1 hierarchy"), "{err}");
}

#[test]
fn real_v1_memory_limit() {
    require_root_with_v1();
    let guard = Cleanup::new("mem");
    let m = manager(Layout::V1, &guard);
    m.create().expect("create");
    let r = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(32i64 << 20)
                .build()
                .expect("memory"),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .build()
                .expect("cpu"),
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(32i64)
                .build()
                .expect("pids"),
        )
        .devices(vec![])
        .build()
        .expect("resources");
    m.apply(&r).expect("apply");
    let leaf = |c: &str, f: &str| {
        std::fs::read_to_string(
            Path::new(ROOT)
                .join(c)
                .join(&guard.parent)
                .join("c")
                .join(f),
        )
        .expect("read back")
        .trim()
        .to_string()
    };
    assert_eq!(leaf("memory", "memory.limit_in_bytes"), "33554432");
    assert_eq!(leaf("cpu", "cpu.shares"), "512");
    assert_eq!(leaf("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(leaf("cpuset", "cpuset.cpus"), "0");
    assert_eq!(leaf("pids", "pids.max"), "32");
    let devices = leaf("devices", "devices.list");
    assert!(devices.contains("c 1:3 rwm"), "{devices}");
    assert!(!devices.contains("a *:* rwm"), "{devices}");
    let stats = m.stats().expect("stats");
    assert_eq!(stats.memory.expect("memory").limit, Some(32 << 20));
    assert_eq!(stats.pids.expect("pids").limit, Some(32));

    let with_swap = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(32i64 << 20)
                .swap(64i64 << 20)
                .build()
                .expect("m"),
        )
        .build()
        .expect("r");
    m.apply(&with_swap).expect("memory + swap");
    assert_eq!(leaf("memory", "memory.memsw.limit_in_bytes"), "67108864");

    // The kernel refuses what validation cannot know (real-time time above the parent's 0);
    // the error names the file, the value and the kernel's reason.
    let rt = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .realtime_runtime(1000i64)
                .build()
                .expect("c"),
        )
        .build()
        .expect("r");
    let err = m.apply(&rt).expect_err("kernel refuses");
    let file = Path::new(ROOT)
        .join("cpu")
        .join(&guard.parent)
        .join("c/cpu.rt_runtime_us");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot write \"1000\" to {}: invalid argument",
            file.display()
        )
    );

    m.destroy().expect("destroy");
    for c in ["memory", "cpu", "cpuset", "pids", "devices", "freezer"] {
        let dir = Path::new(ROOT).join(c).join(&guard.parent).join("c");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    m.destroy().expect("destroy is idempotent");
    drop(guard);
    assert!(
        Cleanup::new("mem").all_gone(),
        "cleanup left directories behind"
    );
}

/// Spawns `sleep 30` into the guard and the cgroup of `m`.
fn spawn_sleeper(m: &dyn CgroupManager, guard: &mut Cleanup) -> i32 {
    let child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let pid = i32::try_from(child.id()).expect("pid fits");
    guard.child = Some(child);
    m.add_process(pid).expect("add_process");
    pid
}

fn wait_child(guard: &mut Cleanup) -> std::process::ExitStatus {
    guard.child.take().expect("child").wait().expect("wait")
}

/// create, join, freeze, thaw, SIGTERM (freeze/signal/thaw), SIGKILL, destroy.
fn process_lifecycle(layout: Layout, name: &str) {
    let mut guard = Cleanup::new(name);
    let m = manager(layout, &guard);
    m.create().expect("create");
    let pid = spawn_sleeper(m.as_ref(), &mut guard);
    assert_eq!(m.pids().expect("pids"), vec![pid]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("proc cgroup");
    let rel = guard.parent.join("c");
    assert!(own.contains(&format!("memory:/{}", rel.display())), "{own}");
    assert!(
        own.contains(&format!("freezer:/{}", rel.display())),
        "{own}"
    );
    if layout == Layout::Hybrid {
        assert!(own.contains(&format!("0::/{}", rel.display())), "{own}");
    }

    m.freeze().expect("freeze");
    assert!(m.state_frozen().expect("state"));
    m.thaw().expect("thaw");
    assert!(!m.state_frozen().expect("state"));

    m.kill_all(libc::SIGTERM).expect("kill_all SIGTERM");
    assert_eq!(wait_child(&mut guard).signal(), Some(libc::SIGTERM));

    spawn_sleeper(m.as_ref(), &mut guard);
    m.kill_all(libc::SIGKILL).expect("kill_all SIGKILL");
    assert_eq!(wait_child(&mut guard).signal(), Some(libc::SIGKILL));

    m.destroy().expect("destroy");
    m.destroy().expect("destroy is idempotent");
    assert_eq!(m.pids().expect("pids"), Vec::<i32>::new());
    drop(guard);
    assert!(
        Cleanup::new(name).all_gone(),
        "cleanup left directories behind"
    );
}

#[test]
fn real_v1_process_lifecycle() {
    require_root_with_v1();
    process_lifecycle(Layout::V1, "life-v1");
}

#[test]
fn real_hybrid_process_lifecycle() {
    let layout = require_root_with_v1();
    assert_eq!(
        layout,
        Layout::Hybrid,
        "this test needs the hybrid lab host"
    );
    process_lifecycle(Layout::Hybrid, "life-hybrid");
}

#[test]
fn real_oom_kill_is_counted() {
    let layout = require_root_with_v1();
    let mut guard = Cleanup::new("oom");
    let m = manager(layout, &guard);
    m.create().expect("create");
    // No swap either: memory + swap = memory.
    let r = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(16i64 << 20)
                .swap(16i64 << 20)
                .build()
                .expect("memory"),
        )
        .build()
        .expect("resources");
    m.apply(&r).expect("apply");
    // The child waits on stdin until it is in the cgroup, then buffers 256 MiB in one "line".
    let child = Command::new("sh")
        .args([
            "-c",
            "read go; head -c 268435456 /dev/zero | tail > /dev/null",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh");
    let pid = i32::try_from(child.id()).expect("pid fits");
    guard.child = Some(child);
    m.add_process(pid).expect("add_process");
    let child = guard.child.as_mut().expect("child");
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("start the hog");
    }
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the memory hog must fail under a 16 MiB limit"
    );
    let start = Instant::now();
    let kills = loop {
        let n = m.oom_kills().expect("oom_kills");
        if n > 0 || start.elapsed() > Duration::from_secs(2) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(kills >= 1, "memory.oom_control reports no oom_kill");
    assert!(m.stats().expect("stats").memory.expect("memory").oom_kills >= 1);
    guard.child = None;
    m.kill_all(libc::SIGKILL).expect("kill leftovers");
    m.destroy().expect("destroy");
}
