//! cgroup v2 (unified hierarchy): one directory per container below `root`.
//!
//! Invariants: `create` enables every controller listed in each ancestor's `cgroup.controllers`
//! in that ancestor's `cgroup.subtree_control` (never in the container's own cgroup, which holds
//! processes); `apply` checks the container cgroup's `cgroup.controllers` lists every controller a
//! request needs before writing anything. [`V2Group`] carries the controller-less operations
//! (processes, freeze, kill, removal), and is shared with the hybrid manager, whose unified
//! directory groups, freezes and kills but never limits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;

use super::validate::{self, HostCpus};
use super::{fs, relative_path, stats, CgroupError, CgroupManager, FileWrite, Stats};
use super::{FREEZE_TIMEOUT, REMOVE_TIMEOUT};

/// The controller-independent part of a v2 cgroup directory.
#[derive(Debug, Clone)]
pub(super) struct V2Group {
    pub(super) dir: PathBuf,
}

impl V2Group {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(super) fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        fs::write(&self.file("cgroup.procs"), &pid.to_string())
    }

    /// Processes of the cgroup; a cgroup that does not exist has none.
    pub(super) fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        if !fs::exists(&self.dir) {
            return Ok(Vec::new());
        }
        fs::read_pids(&self.file("cgroup.procs"))
    }

    /// Whether the kernel has the v2 freezer (5.2+) for this cgroup.
    pub(super) fn has_freezer(&self) -> bool {
        fs::exists(&self.file("cgroup.freeze"))
    }

    /// Whether the kernel has `cgroup.kill` (5.14+).
    pub(super) fn has_kill(&self) -> bool {
        fs::exists(&self.file("cgroup.kill"))
    }

    pub(super) fn frozen(&self) -> Result<bool, CgroupError> {
        let events = self.file("cgroup.events");
        if fs::exists(&events) {
            return Ok(stats::events_frozen(&fs::read(&events)?));
        }
        Ok(fs::read_trimmed(&self.file("cgroup.freeze"))? == "1")
    }

    /// Writes `cgroup.freeze` and waits (bounded) until `cgroup.events` reports the new state.
    /// A freeze that does not settle in time is undone, so a timeout never leaves the container
    /// half frozen.
    pub(super) fn set_frozen(&self, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
        let freeze = self.file("cgroup.freeze");
        fs::write(&freeze, if frozen { "1" } else { "0" })?;
        let settled = fs::poll(timeout, || Ok((self.frozen()? == frozen).then_some(())))?;
        if settled.is_some() {
            tracing::debug!(path = %self.dir.display(), frozen, "cgroup freezer settled");
            return Ok(());
        }
        if frozen {
            if let Err(e) = fs::write(&freeze, "0") {
                tracing::warn!(error = %e, "cannot undo a freeze that timed out");
            }
        }
        Err(CgroupError::Timeout {
            path: self.file("cgroup.events"),
            wanted: if frozen { "frozen 1" } else { "frozen 0" }.to_string(),
            waited_ms: fs::duration_ms(timeout),
        })
    }

    /// SIGKILLs every process of the cgroup and its descendants at once (`cgroup.kill`).
    pub(super) fn kill(&self) -> Result<(), CgroupError> {
        fs::write(&self.file("cgroup.kill"), "1")
    }

    pub(super) fn destroy(&self) -> Result<(), CgroupError> {
        fs::remove_cgroup(&self.dir, REMOVE_TIMEOUT)
    }
}

/// Manager for a host whose `/sys/fs/cgroup` is cgroup2.
#[derive(Debug)]
pub(super) struct V2Manager {
    root: PathBuf,
    path: PathBuf,
}

impl V2Manager {
    pub(super) fn new(root: PathBuf, path: PathBuf) -> Self {
        Self { root, path }
    }

    fn group(&self) -> Result<V2Group, CgroupError> {
        Ok(V2Group::new(self.root.join(relative_path(&self.path)?)))
    }

    fn host_cpus(&self) -> Result<HostCpus, CgroupError> {
        let read = |file: &str, fallback: &str, default: &str| -> Result<String, CgroupError> {
            for p in [self.root.join(file), PathBuf::from(fallback)] {
                if fs::exists(&p) {
                    return fs::read_trimmed(&p);
                }
            }
            Ok(default.to_string())
        };
        Ok(HostCpus {
            cpus: read(
                "cpuset.cpus.effective",
                "/sys/devices/system/cpu/online",
                "0",
            )?,
            mems: read(
                "cpuset.mems.effective",
                "/sys/devices/system/node/online",
                "0",
            )?,
        })
    }

    /// Validates `r` and turns it into the ordered list of file writes; writes nothing.
    pub(super) fn plan(&self, r: &LinuxResources) -> Result<Vec<FileWrite>, CgroupError> {
        validate::validate(r, || self.host_cpus())?;
        let dir = self.group()?.dir;
        let enabled = enabled_controllers(&dir)?;
        let need = |controller: &str, what: &str| -> Result<(), CgroupError> {
            match &enabled {
                Some(set) if !set.contains(controller) => Err(CgroupError::Unsupported {
                    what: what.to_string(),
                    reason: format!(
                        "the {controller} controller is not enabled for {} (its cgroup.controllers \
                         lists: {}); enable it in the parent's cgroup.subtree_control",
                        dir.display(),
                        set.iter().cloned().collect::<Vec<_>>().join(" ")
                    ),
                }),
                _ => Ok(()),
            }
        };
        let file = |name: &str| dir.join(name);
        let mut plan = Vec::new();
        let mut push = |path: PathBuf, value: String| plan.push(FileWrite { path, value });

        if let Some(m) = r.memory() {
            let limit = m.limit().filter(|&l| l != 0);
            let swap = m.swap().filter(|&s| s != 0);
            if limit.is_some() || swap.is_some() || m.reservation().is_some() {
                need("memory", "a memory limit")?;
            }
            if let Some(l) = limit {
                push(file("memory.max"), limit_str(l));
            }
            let swap_file = file("memory.swap.max");
            match (limit, swap) {
                // OCI swap counts memory + swap; v2 memory.swap.max counts swap alone.
                (Some(l), Some(s)) if s > 0 => {
                    if !fs::exists(&swap_file) {
                        return Err(no_swap_accounting(&swap_file));
                    }
                    push(swap_file, (s - l).to_string());
                }
                (_, Some(_)) if fs::exists(&swap_file) => push(swap_file, "max".to_string()),
                // Unlimited memory without a swap value: unlimited swap too (v1 semantics).
                (Some(-1), None) if fs::exists(&swap_file) => push(swap_file, "max".to_string()),
                _ => {}
            }
            if let Some(res) = m.reservation() {
                push(file("memory.low"), limit_str(res));
            }
            if m.swappiness().is_some() {
                tracing::warn!(
                    "linux.resources.memory.swappiness has no cgroup v2 equivalent; ignored"
                );
            }
            if m.disable_oom_killer() == Some(true) {
                tracing::warn!(
                    "linux.resources.memory.disableOOMKiller has no cgroup v2 equivalent; ignored"
                );
            }
            #[allow(deprecated)]
            let kernel = m.kernel().is_some() || m.kernel_tcp().is_some();
            if kernel {
                tracing::warn!("kernel memory limits are not supported by cgroup v2; ignored");
            }
        }

        if let Some(c) = r.cpu() {
            if c.shares().is_some()
                || c.quota().is_some()
                || c.period().is_some()
                || c.burst().is_some()
                || c.idle().is_some()
            {
                need("cpu", "a cpu limit")?;
            }
            if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
                return Err(CgroupError::Unsupported {
                    what: "linux.resources.cpu.realtimeRuntime/realtimePeriod".to_string(),
                    reason: "cgroup v2 has no real-time CPU bandwidth control".to_string(),
                });
            }
            if let Some(s) = c.shares() {
                push(
                    file("cpu.weight"),
                    validate::shares_to_weight(s).to_string(),
                );
            }
            match (c.quota(), c.period()) {
                (Some(q), Some(p)) => push(file("cpu.max"), format!("{} {p}", quota_str(q))),
                (Some(q), None) => push(file("cpu.max"), quota_str(q)),
                (None, Some(p)) => {
                    // Keep the current quota; only the period changes.
                    let path = file("cpu.max");
                    let current = fs::read_trimmed(&path)?;
                    let quota = current
                        .split_whitespace()
                        .next()
                        .unwrap_or("max")
                        .to_string();
                    push(path, format!("{quota} {p}"));
                }
                (None, None) => {}
            }
            if let Some(b) = c.burst() {
                push(file("cpu.max.burst"), b.to_string());
            }
            if let Some(i) = c.idle() {
                push(file("cpu.idle"), i.to_string());
            }
            let cpus = c.cpus().as_deref().map(str::trim).filter(|s| !s.is_empty());
            let mems = c.mems().as_deref().map(str::trim).filter(|s| !s.is_empty());
            if cpus.is_some() || mems.is_some() {
                need("cpuset", "a cpuset")?;
            }
            if let Some(cpus) = cpus {
                push(file("cpuset.cpus"), cpus.to_string());
            }
            if let Some(mems) = mems {
                push(file("cpuset.mems"), mems.to_string());
            }
        }

        if let Some(p) = r.pids() {
            if p.limit() != 0 {
                need("pids", "a pids limit")?;
                push(file("pids.max"), limit_str(p.limit()));
            }
        }

        if let Some(b) = r.block_io() {
            let has_devices = b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
                || [
                    b.throttle_read_bps_device(),
                    b.throttle_write_bps_device(),
                    b.throttle_read_iops_device(),
                    b.throttle_write_iops_device(),
                ]
                .iter()
                .any(|l| l.as_ref().is_some_and(|v| !v.is_empty()));
            if b.weight().is_some() || has_devices {
                need("io", "a block io limit")?;
            }
            if b.leaf_weight().is_some() {
                tracing::warn!(
                    "linux.resources.blockIO.leafWeight has no cgroup v2 equivalent; ignored"
                );
            }
            let io_weight = file("io.weight");
            let bfq_weight = file("io.bfq.weight");
            let weight_file = if fs::exists(&io_weight) || !fs::exists(&bfq_weight) {
                (io_weight, false)
            } else {
                (bfq_weight, true)
            };
            if let Some(w) = b.weight() {
                let value = if weight_file.1 {
                    w.to_string()
                } else {
                    format!("default {}", validate::blkio_weight_to_io_weight(w))
                };
                push(weight_file.0.clone(), value);
            }
            for d in b.weight_device().iter().flatten() {
                if let Some(w) = d.weight() {
                    let w = if weight_file.1 {
                        u64::from(w)
                    } else {
                        validate::blkio_weight_to_io_weight(w)
                    };
                    push(
                        weight_file.0.clone(),
                        format!("{}:{} {w}", d.major(), d.minor()),
                    );
                }
            }
            // One io.max line per device, all its limits together.
            let mut max: BTreeMap<(i64, i64), Vec<String>> = BTreeMap::new();
            for (key, list) in [
                ("rbps", b.throttle_read_bps_device()),
                ("wbps", b.throttle_write_bps_device()),
                ("riops", b.throttle_read_iops_device()),
                ("wiops", b.throttle_write_iops_device()),
            ] {
                for d in list.iter().flatten() {
                    max.entry((d.major(), d.minor()))
                        .or_default()
                        .push(format!("{key}={}", d.rate()));
                }
            }
            for ((major, minor), limits) in max {
                push(
                    file("io.max"),
                    format!("{major}:{minor} {}", limits.join(" ")),
                );
            }
        }

        if let Some(rules) = r.devices() {
            if let Some(rule) = rules.iter().find(|r| !validate::is_default_device_rule(r)) {
                return Err(CgroupError::Unsupported {
                    what: format!(
                        "device rule {:?} ({})",
                        validate::device_rule_v1(rule).unwrap_or_else(|| "p".to_string()),
                        if rule.allow() { "allow" } else { "deny" }
                    ),
                    reason: "cgroup v2 device control needs an eBPF program, which flotilla does \
                             not implement yet; only the default device rules can be used on \
                             cgroup v2 hosts"
                        .to_string(),
                });
            }
            if !rules.is_empty() {
                tracing::warn!(
                    path = %dir.display(),
                    "cgroup v2: device rules are not enforced by the cgroup (no eBPF device \
                     program yet); the container's /dev is still limited to the nodes created for it"
                );
            }
        }

        if let Some(unified) = r.unified() {
            let mut keys: Vec<_> = unified.iter().collect();
            keys.sort();
            for (key, value) in keys {
                let path = file(key);
                if !fs::exists(&path) {
                    return Err(CgroupError::Invalid {
                        field: "linux.resources.unified",
                        value: format!("{key:?}"),
                        reason: format!(
                            "{} does not exist (unknown file, or its controller is not enabled)",
                            path.display()
                        ),
                    });
                }
                push(path, value.clone());
            }
        }

        super::warn_ignored(r);
        Ok(plan)
    }
}

fn no_swap_accounting(path: &Path) -> CgroupError {
    CgroupError::Unsupported {
        what: "a swap limit".to_string(),
        reason: format!(
            "{} does not exist: the kernel has no swap accounting (boot with swapaccount=1)",
            path.display()
        ),
    }
}

/// -1 is "max" in v2 files.
fn limit_str(v: i64) -> String {
    if v == -1 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

fn quota_str(q: i64) -> String {
    limit_str(q)
}

/// Controllers enabled for the cgroup at `dir` (its `cgroup.controllers`); `None` when the file
/// does not exist (a fake tree that does not model it).
fn enabled_controllers(dir: &Path) -> Result<Option<BTreeSet<String>>, CgroupError> {
    let path = dir.join("cgroup.controllers");
    if !fs::exists(&path) {
        return Ok(None);
    }
    Ok(Some(
        fs::read(&path)?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    ))
}

/// Enables in `dir/cgroup.subtree_control` every controller of `dir/cgroup.controllers` that is
/// not enabled yet. All at once first; if the kernel refuses the batch, one by one, so that one
/// controller that cannot be enabled does not take the others with it (`apply` then reports the
/// missing one clearly).
fn enable_subtree_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available: Vec<String> = fs::read(&dir.join("cgroup.controllers"))?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let control = dir.join("cgroup.subtree_control");
    let enabled: BTreeSet<String> = fs::read(&control)?
        .split_whitespace()
        .map(|c| c.trim_start_matches('+').to_string())
        .collect();
    let missing: Vec<&String> = available.iter().filter(|c| !enabled.contains(*c)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let batch = missing
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    if let Err(e) = fs::write(&control, &batch) {
        tracing::debug!(error = %e, "enabling controllers together failed; trying one by one");
        for c in missing {
            if let Err(e) = fs::write(&control, &format!("+{c}")) {
                tracing::warn!(error = %e, controller = %c, "cannot enable cgroup controller");
            }
        }
    }
    Ok(())
}

impl CgroupManager for V2Manager {
    fn create(&self) -> Result<(), CgroupError> {
        let rel = relative_path(&self.path)?;
        let mut dir = self.root.clone();
        for component in rel.components() {
            enable_subtree_controllers(&dir)?;
            dir.push(component);
            fs::mkdir_all(&dir)?;
        }
        tracing::debug!(path = %dir.display(), "created cgroup v2");
        Ok(())
    }

    fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let plan = self.plan(r)?;
        super::execute(&plan)
    }

    fn placement(&self) -> Result<super::Placement, CgroupError> {
        Ok(super::Placement {
            v1_tasks: Vec::new(),
            unified: Some(self.group()?.dir),
        })
    }

    fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        super::check_pid(pid)?;
        self.group()?.add_process(pid)
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        self.group()?.set_frozen(true, FREEZE_TIMEOUT)
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        self.group()?.set_frozen(false, FREEZE_TIMEOUT)
    }

    fn state_frozen(&self) -> Result<bool, CgroupError> {
        self.group()?.frozen()
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let dir = self.group()?.dir;
        let file = |name: &str| dir.join(name);
        let memory = if fs::exists(&file("memory.current")) {
            let (cache, rss) = stats::memory_stat_v2(&fs::read(&file("memory.stat"))?);
            let optional = |name: &str| -> Result<Option<u64>, CgroupError> {
                let p = file(name);
                if fs::exists(&p) {
                    fs::read_u64(&p).map(Some)
                } else {
                    Ok(None)
                }
            };
            let events = file("memory.events");
            let oom_kills = if fs::exists(&events) {
                stats::oom_kill_count(&fs::read(&events)?).unwrap_or(0)
            } else {
                0
            };
            Some(stats::MemoryStats {
                usage: fs::read_u64(&file("memory.current"))?,
                max_usage: optional("memory.peak")?,
                limit: fs::read_limit(&file("memory.max"))?,
                cache,
                rss,
                swap_usage: optional("memory.swap.current")?,
                oom_kills,
            })
        } else {
            None
        };
        let cpu = if fs::exists(&file("cpu.stat")) {
            Some(stats::cpu_v2(&fs::read(&file("cpu.stat"))?))
        } else {
            None
        };
        let pids = if fs::exists(&file("pids.current")) {
            Some(stats::PidsStats {
                current: fs::read_u64(&file("pids.current"))?,
                limit: fs::read_limit(&file("pids.max"))?,
            })
        } else {
            None
        };
        Ok(Stats { memory, cpu, pids })
    }

    fn oom_kills(&self) -> Result<u64, CgroupError> {
        let path = self.group()?.dir.join("memory.events");
        let text = fs::read(&path)?;
        stats::oom_kill_count(&text).ok_or_else(|| CgroupError::Parse {
            path,
            value: text.trim().to_string(),
            reason: "no oom_kill line (kernel older than 4.13?)".to_string(),
        })
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        self.group()?.pids()
    }

    fn kill_all(&self, signal: i32) -> Result<(), CgroupError> {
        super::check_signal(signal)?;
        let group = self.group()?;
        if !fs::exists(&group.dir) {
            return Ok(());
        }
        if signal == libc::SIGKILL && group.has_kill() {
            return group.kill();
        }
        super::signal_all_frozen(self, &group.dir, signal)
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        self.group()?.destroy()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fs::write_log;
    use super::super::{new_manager, CgroupConfig, Layout};
    use super::*;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroup, LinuxMemoryBuilder,
        LinuxPidsBuilder, LinuxResourcesBuilder, LinuxThrottleDeviceBuilder,
    };
    use std::collections::HashMap;
    use std::fs as stdfs;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tempfile::TempDir;

    const ALL: &str = "cpuset cpu io memory hugetlb pids rdma misc";

    /// A cgroup2 root as the kernel shows it, with an existing parent "flotilla" cgroup.
    fn fake_root() -> TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        for (name, value) in [
            ("cgroup.controllers", ALL),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", "1\n"),
            ("cpuset.cpus.effective", "0-3\n"),
            ("cpuset.mems.effective", "0\n"),
        ] {
            stdfs::write(root.join(name), value).expect("seed root");
        }
        let parent = root.join("flotilla");
        stdfs::create_dir(&parent).expect("mkdir parent");
        stdfs::write(parent.join("cgroup.controllers"), ALL).expect("seed");
        stdfs::write(parent.join("cgroup.subtree_control"), "").expect("seed");
        t
    }

    /// Fills the container cgroup with the interface files the kernel creates on mkdir.
    fn fake_kernel_files(dir: &Path, controllers: &str) {
        stdfs::create_dir_all(dir).expect("mkdir leaf");
        for (name, value) in [
            ("cgroup.controllers", controllers),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 0\nfrozen 0\n"),
            ("cgroup.kill", ""),
            ("memory.max", "max\n"),
            ("memory.swap.max", "max\n"),
            ("memory.low", "0\n"),
            ("memory.current", "1048576\n"),
            ("memory.peak", "2097152\n"),
            ("memory.swap.current", "0\n"),
            ("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"),
            ("memory.stat", "anon 524288\nfile 8192\nkernel 4096\n"),
            ("cpu.weight", "100\n"),
            ("cpu.max", "max 100000\n"),
            ("cpu.max.burst", "0\n"),
            ("cpu.idle", "0\n"),
            (
                "cpu.stat",
                "usage_usec 10\nuser_usec 6\nsystem_usec 4\nnr_periods 2\nnr_throttled 1\nthrottled_usec 3\n",
            ),
            ("cpuset.cpus", ""),
            ("cpuset.mems", ""),
            ("pids.max", "max\n"),
            ("pids.current", "3\n"),
            ("io.weight", "default 100\n"),
            ("io.max", ""),
            ("memory.high", "max\n"),
        ] {
            stdfs::write(dir.join(name), value).expect("seed leaf");
        }
    }

    fn manager(root: &Path) -> Box<dyn CgroupManager> {
        new_manager(CgroupConfig {
            root: root.to_path_buf(),
            layout: Layout::V2,
            path: PathBuf::from("/flotilla/ctr1"),
        })
    }

    fn read(path: impl AsRef<Path>) -> String {
        stdfs::read_to_string(path).expect("read fake file")
    }

    /// A created container cgroup with kernel files, and the write log cleared.
    fn ready(t: &TempDir) -> (Box<dyn CgroupManager>, PathBuf) {
        let m = manager(t.path());
        m.create().expect("create");
        let leaf = t.path().join("flotilla/ctr1");
        fake_kernel_files(&leaf, ALL);
        write_log::take();
        (m, leaf)
    }

    #[test]
    fn create_enables_controllers_in_ancestors_only() {
        let t = fake_root();
        let m = manager(t.path());
        m.create().expect("create");
        let want = "+cpuset +cpu +io +memory +hugetlb +pids +rdma +misc";
        assert_eq!(read(t.path().join("cgroup.subtree_control")), want);
        assert_eq!(read(t.path().join("flotilla/cgroup.subtree_control")), want);
        let leaf = t.path().join("flotilla/ctr1");
        assert!(leaf.is_dir());
        assert!(!leaf.join("cgroup.subtree_control").exists());
        // Idempotent: a second create changes nothing once the kernel lists them as enabled.
        stdfs::write(t.path().join("cgroup.subtree_control"), ALL).expect("kernel view");
        stdfs::write(t.path().join("flotilla/cgroup.subtree_control"), ALL).expect("kernel view");
        write_log::take();
        m.create().expect("create again");
        assert!(write_log::take().is_empty());
    }

    #[test]
    fn create_enables_only_missing_controllers() {
        let t = fake_root();
        stdfs::write(t.path().join("cgroup.subtree_control"), "cpu memory\n").expect("seed");
        manager(t.path()).create().expect("create");
        assert_eq!(
            read(t.path().join("cgroup.subtree_control")),
            "+cpuset +io +hugetlb +pids +rdma +misc"
        );
    }

    #[test]
    fn apply_writes_v2_files() {
        let t = fake_root();
        let (m, leaf) = ready(&t);
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(512i64 << 20)
                    .swap(1i64 << 30)
                    .reservation(256i64 << 20)
                    .build()
                    .expect("memory"),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(1024u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("0-1")
                    .mems("0")
                    .build()
                    .expect("cpu"),
            )
            .pids(
                LinuxPidsBuilder::default()
                    .limit(100i64)
                    .build()
                    .expect("pids"),
            )
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(500u16)
                    .throttle_read_bps_device(vec![LinuxThrottleDeviceBuilder::default()
                        .major(8i64)
                        .minor(0i64)
                        .rate(1_048_576u64)
                        .build()
                        .expect("throttle")])
                    .throttle_write_iops_device(vec![LinuxThrottleDeviceBuilder::default()
                        .major(8i64)
                        .minor(0i64)
                        .rate(100u64)
                        .build()
                        .expect("throttle")])
                    .build()
                    .expect("blkio"),
            )
            .build()
            .expect("resources");
        m.apply(&r).expect("apply");
        assert_eq!(read(leaf.join("memory.max")), "536870912");
        assert_eq!(read(leaf.join("memory.swap.max")), "536870912");
        assert_eq!(read(leaf.join("memory.low")), "268435456");
        assert_eq!(read(leaf.join("cpu.weight")), "39");
        assert_eq!(read(leaf.join("cpu.max")), "50000 100000");
        assert_eq!(read(leaf.join("cpuset.cpus")), "0-1");
        assert_eq!(read(leaf.join("cpuset.mems")), "0");
        assert_eq!(read(leaf.join("pids.max")), "100");
        assert_eq!(read(leaf.join("io.weight")), "default 4950");
        assert_eq!(read(leaf.join("io.max")), "8:0 rbps=1048576 wiops=100");
        // Untouched files keep the kernel's values.
        assert_eq!(read(leaf.join("memory.high")), "max\n");
    }

    #[test]
    fn unlimited_values_become_max() {
        let t = fake_root();
        let (m, leaf) = ready(&t);
        stdfs::write(leaf.join("memory.swap.max"), "1000\n").expect("seed");
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(-1i64)
                    .build()
                    .expect("m"),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(-1i64)
                    .period(250_000u64)
                    .build()
                    .expect("c"),
            )
            .pids(LinuxPidsBuilder::default().limit(-1i64).build().expect("p"))
            .build()
            .expect("r");
        m.apply(&r).expect("apply");
        assert_eq!(read(leaf.join("memory.max")), "max");
        assert_eq!(read(leaf.join("memory.swap.max")), "max");
        assert_eq!(read(leaf.join("cpu.max")), "max 250000");
        assert_eq!(read(leaf.join("pids.max")), "max");
    }

    #[test]
    fn cpu_max_partial_updates() {
        let t = fake_root();
        let (m, leaf) = ready(&t);
        let quota_only = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(20_000i64)
                    .build()
                    .expect("c"),
            )
            .build()
            .expect("r");
        m.apply(&quota_only).expect("apply");
        assert_eq!(read(leaf.join("cpu.max")), "20000");
        stdfs::write(leaf.join("cpu.max"), "20000 100000\n").expect("kernel view");
        let period_only = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .period(50_000u64)
                    .build()
                    .expect("c"),
            )
            .build()
            .expect("r");
        m.apply(&period_only).expect("apply");
        assert_eq!(read(leaf.join("cpu.max")), "20000 50000");
    }

    #[test]
    fn invalid_requests_write_nothing() {
        let t = fake_root();
        let (m, leaf) = ready(&t);
        let cases = [
            LinuxResourcesBuilder::default()
                .pids(LinuxPidsBuilder::default().limit(10i64).build().expect("p"))
                .memory(
                    LinuxMemoryBuilder::default()
                        .limit(-5i64)
                        .build()
                        .expect("m"),
                )
                .build()
                .expect("r"),
            LinuxResourcesBuilder::default()
                .pids(LinuxPidsBuilder::default().limit(10i64).build().expect("p"))
                .cpu(LinuxCpuBuilder::default().quota(0i64).build().expect("c"))
                .build()
                .expect("r"),
            LinuxResourcesBuilder::default()
                .cpu(LinuxCpuBuilder::default().shares(0u64).build().expect("c"))
                .build()
                .expect("r"),
            LinuxResourcesBuilder::default()
                .memory(
                    LinuxMemoryBuilder::default()
                        .limit(64i64 << 20)
                        .swap(32i64 << 20)
                        .build()
                        .expect("m"),
                )
                .build()
                .expect("r"),
            LinuxResourcesBuilder::default()
                .pids(LinuxPidsBuilder::default().limit(10i64).build().expect("p"))
                .cpu(LinuxCpuBuilder::default().cpus("0-7").build().expect("c"))
                .build()
                .expect("r"),
        ];
        for r in cases {
            let err = m.apply(&r).expect_err("invalid request");
            assert!(matches!(err, CgroupError::Invalid { .. }), "{err}");
            assert!(
                write_log::take().is_empty(),
                "wrote before validating: {err}"
            );
        }
        assert_eq!(read(leaf.join("pids.max")), "max\n");
        assert_eq!(read(leaf.join("memory.max")), "max\n");
    }

    #[test]
    fn missing_controller_is_reported_before_writing() {
        let t = fake_root();
        let (m, leaf) = ready(&t);
        stdfs::write(leaf.join("cgroup.controllers"), "cpu pids\n").expect("kernel view");
        let r = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(10i64).build().expect("p"))
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(1i64 << 20)
                    .build()
                    .expect("m"),
            )
            .build()
            .expect("r");
        let err = m.apply(&r).expect_err("memory not enabled").to_string();
        assert!(err.contains("memory controller is not enabled"), "{err}");
        assert!(err.contains("lists: cpu pids"), "{err}");
        assert!(write_log::take().is_empty());
    }

    #[test]
    fn device_rules_on_v2() {
        let t = fake_root();
        let (m, _leaf) = ready(&t);
        let mut deny_all = LinuxDeviceCgroup::default();
        deny_all.set_access(Some("rwm".into()));
        let mut rules = vec![deny_all];
        rules.extend(super::super::default_device_rules());
        let defaults = LinuxResourcesBuilder::default()
            .devices(rules.clone())
            .build()
            .expect("r");
        m.apply(&defaults).expect("default rules are accepted");
        assert!(write_log::take().is_empty());

        let mut fuse = LinuxDeviceCgroup::default();
        fuse.set_allow(true);
        fuse.set_typ(Some(oci_spec::runtime::LinuxDeviceType::C));
        fuse.set_major(Some(10));
        fuse.set_minor(Some(229));
        fuse.set_access(Some("rwm".into()));
        rules.push(fuse);
        let custom = LinuxResourcesBuilder::default()
            .devices(rules)
            .pids(LinuxPidsBuilder::default().limit(10i64).build().expect("p"))
            .build()
            .expect("r");
        let err = m.apply(&custom).expect_err("custom rule").to_string();
        assert!(err.contains("\"c 10:229 rwm\""), "{err}");
        assert!(err.contains("eBPF"), "{err}");
        assert!(write_log::take().is_empty());
    }

    #[test]
    fn unified_map_writes_existing_files_only() {
        let t = fake_root();
        let (m, leaf) = ready(&t);
        let r = LinuxResourcesBuilder::default()
            .unified(HashMap::from([(
                "memory.high".to_string(),
                "1000000".to_string(),
            )]))
            .build()
            .expect("r");
        m.apply(&r).expect("apply");
        assert_eq!(read(leaf.join("memory.high")), "1000000");
        let bad = LinuxResourcesBuilder::default()
            .unified(HashMap::from([(
                "memory.nope".to_string(),
                "1".to_string(),
            )]))
            .build()
            .expect("r");
        assert!(m.apply(&bad).is_err());
        let core = LinuxResourcesBuilder::default()
            .unified(HashMap::from([(
                "cgroup.procs".to_string(),
                "1".to_string(),
            )]))
            .build()
            .expect("r");
        assert!(m.apply(&core).is_err());
    }

    /// Mirrors `cgroup.freeze` into `cgroup.events` after a short delay, like the kernel.
    struct FakeFreezer {
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl FakeFreezer {
        fn start(dir: PathBuf) -> Self {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                    let want = stdfs::read_to_string(dir.join("cgroup.freeze")).unwrap_or_default();
                    let events = format!("populated 1\nfrozen {}\n", want.trim());
                    let tmp = dir.join(".events.tmp");
                    if stdfs::write(&tmp, events).is_ok() {
                        let _ = stdfs::rename(&tmp, dir.join("cgroup.events"));
                    }
                }
            });
            Self {
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for FakeFreezer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    #[test]
    fn freeze_waits_for_the_kernel_and_thaws() {
        let t = fake_root();
        let (m, leaf) = ready(&t);
        let _kernel = FakeFreezer::start(leaf.clone());
        m.freeze().expect("freeze");
        assert_eq!(read(leaf.join("cgroup.freeze")), "1");
        assert!(m.state_frozen().expect("state"));
        m.thaw().expect("thaw");
        assert_eq!(read(leaf.join("cgroup.freeze")), "0");
        assert!(!m.state_frozen().expect("state"));
    }

    #[test]
    fn freeze_timeout_is_undone() {
        let t = fake_root();
        let (_m, leaf) = ready(&t);
        let group = V2Group::new(leaf.clone());
        let err = group
            .set_frozen(true, Duration::from_millis(30))
            .expect_err("never settles");
        assert!(matches!(err, CgroupError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("frozen 1"), "{err}");
        assert_eq!(read(leaf.join("cgroup.freeze")), "0");
    }

    #[test]
    fn kill_uses_cgroup_kill_for_sigkill() {
        let t = fake_root();
        let (m, leaf) = ready(&t);
        m.kill_all(libc::SIGKILL).expect("kill");
        assert_eq!(read(leaf.join("cgroup.kill")), "1");
        assert!(m.kill_all(0).is_err());
        assert!(m.kill_all(65).is_err());
    }

    #[test]
    fn kill_without_cgroup_kill_freezes_signals_and_thaws() {
        let t = fake_root();
        let (m, leaf) = ready(&t);
        stdfs::remove_file(leaf.join("cgroup.kill")).expect("old kernel");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        stdfs::write(leaf.join("cgroup.procs"), format!("{}\n", child.id())).expect("seed");
        let _kernel = FakeFreezer::start(leaf.clone());
        m.kill_all(libc::SIGTERM).expect("kill_all");
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        let log: Vec<String> = write_log::take()
            .into_iter()
            .filter(|(p, _)| p.ends_with("cgroup.freeze"))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(log, vec!["1", "0"]);
    }

    #[test]
    fn processes_stats_and_oom() {
        let t = fake_root();
        let (m, leaf) = ready(&t);
        m.add_process(4242).expect("add");
        assert_eq!(read(leaf.join("cgroup.procs")), "4242");
        assert!(m.add_process(0).is_err());
        stdfs::write(leaf.join("cgroup.procs"), "10\n11\n").expect("seed");
        assert_eq!(m.pids().expect("pids"), vec![10, 11]);
        assert_eq!(m.oom_kills().expect("oom"), 1);
        let s = m.stats().expect("stats");
        let mem = s.memory.expect("memory");
        assert_eq!(mem.usage, 1_048_576);
        assert_eq!(mem.max_usage, Some(2_097_152));
        assert_eq!(mem.limit, None);
        assert_eq!((mem.cache, mem.rss), (8192, 524_288));
        assert_eq!(mem.oom_kills, 1);
        let cpu = s.cpu.expect("cpu");
        assert_eq!(cpu.usage_ns, 10_000);
        assert_eq!(cpu.nr_throttled, 1);
        assert_eq!(s.pids.expect("pids").current, 3);
    }

    #[test]
    fn destroy_is_idempotent_and_missing_cgroup_has_no_pids() {
        let t = fake_root();
        let m = manager(t.path());
        m.create().expect("create");
        let leaf = t.path().join("flotilla/ctr1");
        stdfs::create_dir(leaf.join("nested")).expect("nested cgroup");
        m.destroy().expect("destroy");
        assert!(!leaf.exists());
        assert!(t.path().join("flotilla").is_dir(), "parent stays");
        m.destroy().expect("destroy again");
        assert_eq!(m.pids().expect("pids"), Vec::<i32>::new());
        m.kill_all(libc::SIGKILL).expect("nothing to kill");
    }
}
