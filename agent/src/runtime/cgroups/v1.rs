//! cgroup v1: one hierarchy per controller under `root/<controller>`; also the hybrid layout,
//! which adds a controller-less cgroup2 directory under `root/unified`.
//!
//! Invariants: a controller is used when `root/<controller>` is the root of a mounted hierarchy,
//! recognised by its `cgroup.procs` (a bare directory of that name, such as one left on the
//! `/sys/fs/cgroup` tmpfs after a hierarchy was unmounted, is never written to). Co-mounted
//! hierarchies such as `cpu,cpuacct` are reached through their per-controller symlinks, so the
//! same directory may be visited twice: harmless for mkdir, writes of a pid, and rmdir. Limits
//! are written to v1 only. On hybrid hosts the unified directory is created, joined, frozen and
//! killed, and removed with the others. Memory and memory+swap limits are written in the order
//! that keeps `memsw >= limit` true at every step, as the kernel requires.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::v2::V2Group;
use super::validate::{self, HostCpus};
use super::{fs, relative_path, stats, CgroupError, CgroupManager, FileWrite, Stats};
use super::{FREEZE_TIMEOUT, REMOVE_TIMEOUT, UNIFIED_DIR};

/// The v1 controllers flotilla joins when they are mounted.
pub(super) const CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

/// Where to read the process list from, in order of preference.
const PROCS_FROM: &[&str] = &[
    "freezer", "pids", "memory", "cpu", "cpuacct", "devices", "blkio", "cpuset",
];

#[derive(Debug)]
pub(super) struct V1Manager {
    root: PathBuf,
    path: PathBuf,
    hybrid: bool,
}

/// The freezer in use: v2 `cgroup.freeze` on hybrid hosts whose kernel has it, else v1.
enum Freezer {
    V1(PathBuf),
    V2(V2Group),
}

/// True when `dir` is the root of a mounted cgroup hierarchy: every hierarchy root has
/// `cgroup.procs`, a plain directory does not.
fn is_hierarchy(dir: &Path) -> bool {
    fs::exists(&dir.join("cgroup.procs"))
}

impl V1Manager {
    pub(super) fn new(root: PathBuf, path: PathBuf, hybrid: bool) -> Self {
        Self { root, path, hybrid }
    }

    fn mounted(&self) -> Vec<&'static str> {
        CONTROLLERS
            .iter()
            .copied()
            .filter(|c| is_hierarchy(&self.root.join(c)))
            .collect()
    }

    /// The container's directory in controller `c`'s hierarchy, if that hierarchy is mounted.
    fn controller_dir(&self, c: &str) -> Result<Option<PathBuf>, CgroupError> {
        let rel = relative_path(&self.path)?;
        let base = self.root.join(c);
        Ok(is_hierarchy(&base).then(|| base.join(rel)))
    }

    /// Like [`controller_dir`](Self::controller_dir), but a missing hierarchy is an error.
    fn require(&self, c: &str, what: &str) -> Result<PathBuf, CgroupError> {
        self.controller_dir(c)?
            .ok_or_else(|| CgroupError::Unsupported {
                what: what.to_string(),
                reason: format!(
                    "the {c} cgroup v1 hierarchy is not mounted at {}",
                    self.root.join(c).display()
                ),
            })
    }

    fn unified(&self) -> Result<Option<V2Group>, CgroupError> {
        if !self.hybrid {
            return Ok(None);
        }
        let rel = relative_path(&self.path)?;
        Ok(Some(V2Group::new(self.root.join(UNIFIED_DIR).join(rel))))
    }

    /// Every directory of the container: one per mounted controller, plus the unified one.
    fn all_dirs(&self) -> Result<Vec<PathBuf>, CgroupError> {
        let rel = relative_path(&self.path)?;
        let mut dirs: Vec<PathBuf> = self
            .mounted()
            .iter()
            .map(|c| self.root.join(c).join(&rel))
            .collect();
        if let Some(u) = self.unified()? {
            dirs.push(u.dir);
        }
        if dirs.is_empty() {
            return Err(CgroupError::Unsupported {
                what: "cgroup v1".to_string(),
                reason: format!(
                    "no cgroup v1 controller hierarchy is mounted under {}",
                    self.root.display()
                ),
            });
        }
        Ok(dirs)
    }

    fn freezer(&self) -> Result<Freezer, CgroupError> {
        if let Some(u) = self.unified()? {
            if u.has_freezer() {
                return Ok(Freezer::V2(u));
            }
        }
        Ok(Freezer::V1(self.require("freezer", "freezing")?))
    }

    fn host_cpus(&self) -> Result<HostCpus, CgroupError> {
        let base = self.root.join("cpuset");
        let read = |names: [&str; 2], fallback: &str| -> Result<String, CgroupError> {
            for p in [
                base.join(names[0]),
                base.join(names[1]),
                PathBuf::from(fallback),
            ] {
                if fs::exists(&p) {
                    return fs::read_trimmed(&p);
                }
            }
            Ok("0".to_string())
        };
        Ok(HostCpus {
            cpus: read(
                ["cpuset.effective_cpus", "cpuset.cpus"],
                "/sys/devices/system/cpu/online",
            )?,
            mems: read(
                ["cpuset.effective_mems", "cpuset.mems"],
                "/sys/devices/system/node/online",
            )?,
        })
    }

    /// Validates `r` and turns it into the ordered list of file writes; writes nothing.
    pub(super) fn plan(&self, r: &LinuxResources) -> Result<Vec<FileWrite>, CgroupError> {
        validate::validate(r, || self.host_cpus())?;
        if r.unified().as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(CgroupError::Unsupported {
                what: "linux.resources.unified".to_string(),
                reason: "it sets cgroup v2 files, and this host's resource controllers are \
                         cgroup v1"
                    .to_string(),
            });
        }
        let mut plan = Vec::new();
        let mut push = |path: PathBuf, value: String| plan.push(FileWrite { path, value });

        if let Some(m) = r.memory() {
            let limit = m.limit().filter(|&l| l != 0);
            let swap = m.swap().filter(|&s| s != 0);
            let any = limit.is_some()
                || swap.is_some()
                || m.reservation().is_some()
                || m.swappiness().is_some()
                || m.disable_oom_killer().is_some();
            if any {
                let dir = self.require("memory", "a memory limit")?;
                let limit_file = dir.join("memory.limit_in_bytes");
                let memsw_file = dir.join("memory.memsw.limit_in_bytes");
                let has_memsw = fs::exists(&memsw_file);
                let swap = match swap {
                    Some(-1) if !has_memsw => None,
                    Some(_) if !has_memsw => {
                        return Err(CgroupError::Unsupported {
                            what: "a swap limit".to_string(),
                            reason: format!(
                                "{} does not exist: the kernel has no swap accounting (boot \
                                 with swapaccount=1)",
                                memsw_file.display()
                            ),
                        })
                    }
                    // Unlimited memory without a swap value: lift memory+swap too, or the
                    // kernel refuses a limit above the current memsw limit.
                    None if limit == Some(-1) && has_memsw => Some(-1),
                    other => other,
                };
                match (limit, swap) {
                    (Some(l), Some(s)) => {
                        let current = fs::read_limit(&limit_file)?;
                        let new = u64::try_from(l).ok();
                        let raising = match (new, current) {
                            (None, Some(_)) => true,
                            (Some(n), Some(c)) => n > c,
                            _ => false,
                        };
                        if raising {
                            push(memsw_file, s.to_string());
                            push(limit_file, l.to_string());
                        } else {
                            push(limit_file, l.to_string());
                            push(memsw_file, s.to_string());
                        }
                    }
                    (Some(l), None) => push(limit_file, l.to_string()),
                    (None, Some(s)) => push(memsw_file, s.to_string()),
                    (None, None) => {}
                }
                if let Some(res) = m.reservation() {
                    push(dir.join("memory.soft_limit_in_bytes"), res.to_string());
                }
                if let Some(sw) = m.swappiness() {
                    push(dir.join("memory.swappiness"), sw.to_string());
                }
                if let Some(disable) = m.disable_oom_killer() {
                    push(
                        dir.join("memory.oom_control"),
                        if disable { "1" } else { "0" }.to_string(),
                    );
                }
            }
            #[allow(deprecated)]
            let kernel = m.kernel().is_some() || m.kernel_tcp().is_some();
            if kernel {
                tracing::warn!("kernel memory limits are obsolete since Linux 5.4; ignored");
            }
        }

        if let Some(c) = r.cpu() {
            let needs_cpu = c.shares().is_some()
                || c.quota().is_some()
                || c.period().is_some()
                || c.burst().is_some()
                || c.idle().is_some()
                || c.realtime_period().is_some()
                || c.realtime_runtime().is_some();
            if needs_cpu {
                let dir = self.require("cpu", "a cpu limit")?;
                let optional = |name: &str, what: &str| -> Result<PathBuf, CgroupError> {
                    let p = dir.join(name);
                    if fs::exists(&p) {
                        Ok(p)
                    } else {
                        Err(CgroupError::Unsupported {
                            what: what.to_string(),
                            reason: format!("{} does not exist on this kernel", p.display()),
                        })
                    }
                };
                if let Some(s) = c.shares() {
                    push(dir.join("cpu.shares"), s.to_string());
                }
                // Period first: the quota is checked against it.
                if let Some(p) = c.period() {
                    push(dir.join("cpu.cfs_period_us"), p.to_string());
                }
                if let Some(q) = c.quota() {
                    push(dir.join("cpu.cfs_quota_us"), q.to_string());
                }
                if let Some(b) = c.burst() {
                    push(
                        optional("cpu.cfs_burst_us", "linux.resources.cpu.burst")?,
                        b.to_string(),
                    );
                }
                if let Some(i) = c.idle() {
                    push(
                        optional("cpu.idle", "linux.resources.cpu.idle")?,
                        i.to_string(),
                    );
                }
                if let Some(p) = c.realtime_period() {
                    push(
                        optional("cpu.rt_period_us", "linux.resources.cpu.realtimePeriod")?,
                        p.to_string(),
                    );
                }
                if let Some(rt) = c.realtime_runtime() {
                    push(
                        optional("cpu.rt_runtime_us", "linux.resources.cpu.realtimeRuntime")?,
                        rt.to_string(),
                    );
                }
            }
            let cpus = c.cpus().as_deref().map(str::trim).filter(|s| !s.is_empty());
            let mems = c.mems().as_deref().map(str::trim).filter(|s| !s.is_empty());
            if cpus.is_some() || mems.is_some() {
                let dir = self.require("cpuset", "a cpuset")?;
                if let Some(cpus) = cpus {
                    push(dir.join("cpuset.cpus"), cpus.to_string());
                }
                if let Some(mems) = mems {
                    push(dir.join("cpuset.mems"), mems.to_string());
                }
            }
        }

        if let Some(p) = r.pids() {
            if p.limit() != 0 {
                let dir = self.require("pids", "a pids limit")?;
                let value = if p.limit() == -1 {
                    "max".to_string()
                } else {
                    p.limit().to_string()
                };
                push(dir.join("pids.max"), value);
            }
        }

        if let Some(b) = r.block_io() {
            let throttles = [
                (
                    "blkio.throttle.read_bps_device",
                    b.throttle_read_bps_device(),
                ),
                (
                    "blkio.throttle.write_bps_device",
                    b.throttle_write_bps_device(),
                ),
                (
                    "blkio.throttle.read_iops_device",
                    b.throttle_read_iops_device(),
                ),
                (
                    "blkio.throttle.write_iops_device",
                    b.throttle_write_iops_device(),
                ),
            ];
            let any = b.weight().is_some()
                || b.leaf_weight().is_some()
                || b.weight_device().as_ref().is_some_and(|v| !v.is_empty())
                || throttles
                    .iter()
                    .any(|(_, l)| l.as_ref().is_some_and(|v| !v.is_empty()));
            if any {
                let dir = self.require("blkio", "a block io limit")?;
                // CFQ's blkio.weight is gone since 5.0; BFQ provides blkio.bfq.weight.
                let pick =
                    |names: [&str; 2]| names.iter().map(|n| dir.join(n)).find(|p| fs::exists(p));
                let no_weight = || CgroupError::Unsupported {
                    what: "a block io weight".to_string(),
                    reason: format!(
                        "neither blkio.weight nor blkio.bfq.weight exists in {} (no proportional \
                         I/O scheduler such as BFQ)",
                        dir.display()
                    ),
                };
                if let Some(w) = b.weight() {
                    let file = pick(["blkio.weight", "blkio.bfq.weight"]).ok_or_else(no_weight)?;
                    push(file, w.to_string());
                }
                if let Some(w) = b.leaf_weight() {
                    let file = dir.join("blkio.leaf_weight");
                    match fs::exists(&file) {
                        true => push(file, w.to_string()),
                        false => tracing::warn!(
                            "linux.resources.blockIO.leafWeight needs CFQ, which this kernel \
                             lacks; ignored"
                        ),
                    }
                }
                let devices = b.weight_device().clone().unwrap_or_default();
                if devices.iter().any(|d| d.weight().is_some()) {
                    let file = pick(["blkio.weight_device", "blkio.bfq.weight_device"])
                        .ok_or_else(no_weight)?;
                    for d in &devices {
                        if let Some(w) = d.weight() {
                            push(file.clone(), format!("{}:{} {w}", d.major(), d.minor()));
                        }
                    }
                }
                for (name, list) in throttles {
                    for d in list.iter().flatten() {
                        push(
                            dir.join(name),
                            format!("{}:{} {}", d.major(), d.minor(), d.rate()),
                        );
                    }
                }
            }
        }

        if let Some(rules) = r.devices() {
            match self.controller_dir("devices")? {
                Some(dir) => {
                    let allow = dir.join("devices.allow");
                    let deny = dir.join("devices.deny");
                    push(deny.clone(), "a".to_string());
                    for rule in rules.iter().chain(validate::default_device_rules().iter()) {
                        match validate::device_rule_v1(rule) {
                            Some(text) => {
                                let file = if rule.allow() { &allow } else { &deny };
                                push(file.clone(), text);
                            }
                            None => tracing::debug!(?rule, "skipping a rule for FIFOs"),
                        }
                    }
                }
                None => tracing::warn!(
                    "the devices cgroup is not mounted: device access is not confined"
                ),
            }
        }

        super::warn_ignored(r);
        Ok(plan)
    }
}

/// Gives every newly created cpuset level its parent's CPUs and memory nodes (a v1 cpuset
/// starts empty, and a process cannot join an empty cpuset).
fn init_cpuset(base: &Path, rel: &Path) -> Result<(), CgroupError> {
    let mut parent = base.to_path_buf();
    for component in rel.components() {
        let dir = parent.join(component);
        for name in ["cpuset.cpus", "cpuset.mems"] {
            let own = dir.join(name);
            if fs::read_trimmed(&own)?.is_empty() {
                let inherited = fs::read_trimmed(&parent.join(name))?;
                fs::write(&own, &inherited)?;
            }
        }
        parent = dir;
    }
    Ok(())
}

fn v1_set_frozen(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    let want = if frozen { "FROZEN" } else { "THAWED" };
    fs::write(&state, want)?;
    let settled = fs::poll(FREEZE_TIMEOUT, || {
        let now = fs::read_trimmed(&state)?;
        if now == want {
            return Ok(Some(()));
        }
        if frozen {
            // A write of FROZEN retries the tasks that could not be frozen yet.
            fs::write(&state, want)?;
        }
        Ok(None)
    })?;
    if settled.is_some() {
        tracing::debug!(path = %dir.display(), state = want, "v1 freezer settled");
        return Ok(());
    }
    if frozen {
        if let Err(e) = fs::write(&state, "THAWED") {
            tracing::warn!(error = %e, "cannot undo a freeze that timed out");
        }
    }
    Err(CgroupError::Timeout {
        path: state,
        wanted: want.to_string(),
        waited_ms: fs::duration_ms(FREEZE_TIMEOUT),
    })
}

impl CgroupManager for V1Manager {
    fn create(&self) -> Result<(), CgroupError> {
        let rel = relative_path(&self.path)?;
        let dirs = self.all_dirs()?;
        for dir in &dirs {
            fs::mkdir_all(dir)?;
        }
        if self.controller_dir("cpuset")?.is_some() {
            init_cpuset(&self.root.join("cpuset"), &rel)?;
        }
        tracing::debug!(root = %self.root.display(), path = %rel.display(), hybrid = self.hybrid, "created cgroup v1");
        Ok(())
    }

    fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let plan = self.plan(r)?;
        super::execute(&plan)
    }

    fn placement(&self) -> Result<super::Placement, CgroupError> {
        let rel = relative_path(&self.path)?;
        Ok(super::Placement {
            v1_tasks: self
                .mounted()
                .iter()
                .map(|c| self.root.join(c).join(&rel).join("tasks"))
                .collect(),
            unified: self.unified()?.map(|u| u.dir),
        })
    }

    fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        super::check_pid(pid)?;
        let value = pid.to_string();
        for dir in self.all_dirs()? {
            // A hierarchy mounted after `create` (e.g. hugetlb bound to v1 for crun) has no
            // directory for us yet.
            fs::mkdir_all(&dir)?;
            fs::write(&dir.join("cgroup.procs"), &value)?;
        }
        Ok(())
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        match self.freezer()? {
            Freezer::V1(dir) => v1_set_frozen(&dir, true),
            Freezer::V2(g) => g.set_frozen(true, FREEZE_TIMEOUT),
        }
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        match self.freezer()? {
            Freezer::V1(dir) => v1_set_frozen(&dir, false),
            Freezer::V2(g) => g.set_frozen(false, FREEZE_TIMEOUT),
        }
    }

    fn state_frozen(&self) -> Result<bool, CgroupError> {
        match self.freezer()? {
            Freezer::V1(dir) => Ok(fs::read_trimmed(&dir.join("freezer.state"))? == "FROZEN"),
            Freezer::V2(g) => g.frozen(),
        }
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let memory = match self.controller_dir("memory")? {
            Some(dir) => {
                let usage = fs::read_u64(&dir.join("memory.usage_in_bytes"))?;
                let max_path = dir.join("memory.max_usage_in_bytes");
                let max_usage = if fs::exists(&max_path) {
                    Some(fs::read_u64(&max_path)?)
                } else {
                    None
                };
                let memsw_usage = dir.join("memory.memsw.usage_in_bytes");
                let swap_usage = if fs::exists(&memsw_usage) {
                    Some(fs::read_u64(&memsw_usage)?.saturating_sub(usage))
                } else {
                    None
                };
                let (cache, rss) = stats::memory_stat_v1(&fs::read(&dir.join("memory.stat"))?);
                let oom_kills =
                    stats::oom_kill_count(&fs::read(&dir.join("memory.oom_control"))?).unwrap_or(0);
                Some(stats::MemoryStats {
                    usage,
                    max_usage,
                    limit: fs::read_limit(&dir.join("memory.limit_in_bytes"))?,
                    cache,
                    rss,
                    swap_usage,
                    oom_kills,
                })
            }
            None => None,
        };

        let cpuacct = self.controller_dir("cpuacct")?;
        let cpu_dir = self.controller_dir("cpu")?;
        let cpu = if cpuacct.is_none() && cpu_dir.is_none() {
            None
        } else {
            let mut s = stats::CpuStats::default();
            if let Some(dir) = &cpuacct {
                s.usage_ns = fs::read_u64(&dir.join("cpuacct.usage"))?;
                let (user, sys) = (
                    dir.join("cpuacct.usage_user"),
                    dir.join("cpuacct.usage_sys"),
                );
                if fs::exists(&user) && fs::exists(&sys) {
                    s.user_ns = Some(fs::read_u64(&user)?);
                    s.system_ns = Some(fs::read_u64(&sys)?);
                } else {
                    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                        .ok()
                        .flatten()
                        .and_then(|v| u64::try_from(v).ok())
                        .unwrap_or(100);
                    let (user, sys) =
                        stats::cpuacct_stat_v1(&fs::read(&dir.join("cpuacct.stat"))?, hz);
                    s.user_ns = user;
                    s.system_ns = sys;
                }
            }
            if let Some(dir) = &cpu_dir {
                let stat = dir.join("cpu.stat");
                if fs::exists(&stat) {
                    let (periods, throttled, time) = stats::cpu_throttling_v1(&fs::read(&stat)?);
                    s.nr_periods = periods;
                    s.nr_throttled = throttled;
                    s.throttled_ns = time;
                }
            }
            Some(s)
        };

        let pids = match self.controller_dir("pids")? {
            Some(dir) => Some(stats::PidsStats {
                current: fs::read_u64(&dir.join("pids.current"))?,
                limit: fs::read_limit(&dir.join("pids.max"))?,
            }),
            None => None,
        };
        Ok(Stats { memory, cpu, pids })
    }

    fn oom_kills(&self) -> Result<u64, CgroupError> {
        let path = self
            .require("memory", "oom kill counting")?
            .join("memory.oom_control");
        let text = fs::read(&path)?;
        stats::oom_kill_count(&text).ok_or_else(|| CgroupError::Parse {
            path,
            value: text.trim().to_string(),
            reason: "no oom_kill line (kernel older than 4.13?)".to_string(),
        })
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        if let Some(u) = self.unified()? {
            return u.pids();
        }
        for c in PROCS_FROM {
            if let Some(dir) = self.controller_dir(c)? {
                if !fs::exists(&dir) {
                    return Ok(Vec::new());
                }
                return fs::read_pids(&dir.join("cgroup.procs"));
            }
        }
        Err(CgroupError::Unsupported {
            what: "listing processes".to_string(),
            reason: format!(
                "no cgroup v1 controller hierarchy is mounted under {}",
                self.root.display()
            ),
        })
    }

    fn kill_all(&self, signal: i32) -> Result<(), CgroupError> {
        super::check_signal(signal)?;
        if let Some(u) = self.unified()? {
            if signal == libc::SIGKILL && u.has_kill() {
                return u.kill();
            }
        }
        let rel = relative_path(&self.path)?;
        super::signal_all_frozen(self, &rel, signal)
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in self.all_dirs()? {
            if let Err(e) = fs::remove_cgroup(&dir, REMOVE_TIMEOUT) {
                tracing::warn!(error = %e, "cannot remove cgroup; continuing with the others");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fs::write_log;
    use super::super::{new_manager, CgroupConfig, Layout};
    use super::*;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroup, LinuxDeviceType,
        LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, LinuxThrottleDeviceBuilder,
    };
    use std::collections::HashMap;
    use std::fs as stdfs;
    use tempfile::TempDir;

    const UNLIMITED: &str = "9223372036854771712\n";
    const MOUNTED: &[&str] = &[
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
    ];

    /// A hierarchy root as a mount shows it: a directory with `cgroup.procs`.
    fn mk_hierarchy(dir: &Path) {
        stdfs::create_dir(dir).expect("mkdir controller");
        stdfs::write(dir.join("cgroup.procs"), "").expect("seed cgroup.procs");
    }

    /// A v1 (or hybrid) root as the kernel shows it: controller hierarchies with their root
    /// files, and the container's directory in each with the files the kernel creates.
    fn fake(hybrid: bool) -> (TempDir, Box<dyn CgroupManager>) {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        for c in MOUNTED {
            mk_hierarchy(&root.join(c));
        }
        let seed = |dir: &Path, files: &[(&str, &str)]| {
            stdfs::create_dir_all(dir).expect("mkdir");
            for (name, value) in files {
                stdfs::write(dir.join(name), value).expect("seed");
            }
        };
        seed(
            &root.join("cpuset"),
            &[
                ("cpuset.cpus", "0-3\n"),
                ("cpuset.mems", "0\n"),
                ("cpuset.effective_cpus", "0-3\n"),
                ("cpuset.effective_mems", "0\n"),
            ],
        );
        let rel = Path::new("flotilla/ctr1");
        // cpuset levels start empty, as on the kernel.
        seed(
            &root.join("cpuset/flotilla"),
            &[("cpuset.cpus", ""), ("cpuset.mems", "")],
        );
        let files: &[(&str, &[(&str, &str)])] = &[
            (
                "memory",
                &[
                    ("memory.limit_in_bytes", UNLIMITED),
                    ("memory.memsw.limit_in_bytes", UNLIMITED),
                    ("memory.soft_limit_in_bytes", UNLIMITED),
                    ("memory.swappiness", "60\n"),
                    (
                        "memory.oom_control",
                        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                    ),
                    ("memory.usage_in_bytes", "4096000\n"),
                    ("memory.max_usage_in_bytes", "8192000\n"),
                    ("memory.memsw.usage_in_bytes", "4196000\n"),
                    (
                        "memory.stat",
                        "cache 1\nrss 2\ntotal_cache 300\ntotal_rss 400\n",
                    ),
                ],
            ),
            (
                "cpu",
                &[
                    ("cpu.shares", "1024\n"),
                    ("cpu.cfs_quota_us", "-1\n"),
                    ("cpu.cfs_period_us", "100000\n"),
                    ("cpu.cfs_burst_us", "0\n"),
                    (
                        "cpu.stat",
                        "nr_periods 7\nnr_throttled 5\nthrottled_time 123456\n",
                    ),
                ],
            ),
            (
                "cpuacct",
                &[
                    ("cpuacct.usage", "5000000\n"),
                    ("cpuacct.usage_user", "3000000\n"),
                    ("cpuacct.usage_sys", "2000000\n"),
                ],
            ),
            ("cpuset", &[("cpuset.cpus", ""), ("cpuset.mems", "")]),
            ("pids", &[("pids.max", "max\n"), ("pids.current", "2\n")]),
            (
                "blkio",
                &[
                    ("blkio.bfq.weight", "100\n"),
                    ("blkio.throttle.read_bps_device", ""),
                ],
            ),
            ("devices", &[("devices.allow", ""), ("devices.deny", "")]),
            ("freezer", &[("freezer.state", "THAWED\n")]),
        ];
        for (c, list) in files {
            let dir = root.join(c).join(rel);
            seed(&dir, list);
            seed(&dir, &[("cgroup.procs", "")]);
        }
        let layout = if hybrid {
            let u = root.join("unified/flotilla/ctr1");
            seed(
                &u,
                &[
                    ("cgroup.procs", ""),
                    ("cgroup.freeze", "0\n"),
                    ("cgroup.events", "populated 0\nfrozen 0\n"),
                    ("cgroup.kill", ""),
                ],
            );
            Layout::Hybrid
        } else {
            Layout::V1
        };
        let m = new_manager(CgroupConfig {
            root: root.to_path_buf(),
            layout,
            path: PathBuf::from("/flotilla/ctr1"),
        });
        write_log::take();
        (t, m)
    }

    fn read(t: &TempDir, rel: &str) -> String {
        stdfs::read_to_string(t.path().join(rel)).expect("read fake file")
    }

    fn leaf(c: &str, file: &str) -> String {
        format!("{c}/flotilla/ctr1/{file}")
    }

    #[test]
    fn create_makes_every_hierarchy_and_fills_cpuset() {
        let t = tempfile::tempdir().expect("tempdir");
        for c in MOUNTED {
            mk_hierarchy(&t.path().join(c));
        }
        stdfs::create_dir(t.path().join("systemd")).expect("named hierarchy");
        stdfs::write(t.path().join("cpuset/cpuset.cpus"), "0-3\n").expect("seed");
        stdfs::write(t.path().join("cpuset/cpuset.mems"), "0\n").expect("seed");
        // What the kernel would show after mkdir: empty cpuset files at each new level.
        for level in ["cpuset/flotilla", "cpuset/flotilla/ctr1"] {
            stdfs::create_dir_all(t.path().join(level)).expect("mkdir");
            stdfs::write(t.path().join(level).join("cpuset.cpus"), "").expect("seed");
            stdfs::write(t.path().join(level).join("cpuset.mems"), "").expect("seed");
        }
        let m = new_manager(CgroupConfig {
            root: t.path().to_path_buf(),
            layout: Layout::V1,
            path: PathBuf::from("flotilla/ctr1"),
        });
        m.create().expect("create");
        for c in MOUNTED {
            assert!(t.path().join(c).join("flotilla/ctr1").is_dir(), "{c}");
        }
        assert!(
            !t.path().join("systemd/flotilla").exists(),
            "name=systemd is not used"
        );
        assert!(!t.path().join("unified").exists(), "v1 has no unified dir");
        assert_eq!(read(&t, "cpuset/flotilla/cpuset.cpus"), "0-3");
        assert_eq!(read(&t, "cpuset/flotilla/ctr1/cpuset.cpus"), "0-3");
        assert_eq!(read(&t, "cpuset/flotilla/ctr1/cpuset.mems"), "0");
    }

    #[test]
    fn apply_writes_v1_files() {
        let (t, m) = fake(false);
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(32i64 << 20)
                    .swap(64i64 << 20)
                    .reservation(16i64 << 20)
                    .swappiness(0u64)
                    .build()
                    .expect("memory"),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(50_000i64)
                    .period(100_000u64)
                    .cpus("1")
                    .mems("0")
                    .build()
                    .expect("cpu"),
            )
            .pids(
                LinuxPidsBuilder::default()
                    .limit(64i64)
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
                    .build()
                    .expect("blkio"),
            )
            .build()
            .expect("resources");
        m.apply(&r).expect("apply");
        assert_eq!(
            read(&t, &leaf("memory", "memory.limit_in_bytes")),
            "33554432"
        );
        assert_eq!(
            read(&t, &leaf("memory", "memory.memsw.limit_in_bytes")),
            "67108864"
        );
        assert_eq!(
            read(&t, &leaf("memory", "memory.soft_limit_in_bytes")),
            "16777216"
        );
        assert_eq!(read(&t, &leaf("memory", "memory.swappiness")), "0");
        assert_eq!(read(&t, &leaf("cpu", "cpu.shares")), "512");
        assert_eq!(read(&t, &leaf("cpu", "cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&t, &leaf("cpu", "cpu.cfs_period_us")), "100000");
        assert_eq!(read(&t, &leaf("cpuset", "cpuset.cpus")), "1");
        assert_eq!(read(&t, &leaf("cpuset", "cpuset.mems")), "0");
        assert_eq!(read(&t, &leaf("pids", "pids.max")), "64");
        assert_eq!(read(&t, &leaf("blkio", "blkio.bfq.weight")), "500");
        assert_eq!(
            read(&t, &leaf("blkio", "blkio.throttle.read_bps_device")),
            "8:0 1048576"
        );
        // Lowering the limit from unlimited: limit first, then memory+swap.
        let order: Vec<String> = write_log::take()
            .into_iter()
            .filter_map(|(p, _)| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .filter(|f| f == "memory.limit_in_bytes" || f == "memory.memsw.limit_in_bytes")
            .collect();
        assert_eq!(
            order,
            vec!["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
        );
    }

    #[test]
    fn raising_memory_writes_memsw_first() {
        let (t, m) = fake(false);
        stdfs::write(
            t.path().join(leaf("memory", "memory.limit_in_bytes")),
            "33554432\n",
        )
        .expect("seed");
        stdfs::write(
            t.path().join(leaf("memory", "memory.memsw.limit_in_bytes")),
            "33554432\n",
        )
        .expect("seed");
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .swap(128i64 << 20)
                    .build()
                    .expect("memory"),
            )
            .build()
            .expect("resources");
        m.apply(&r).expect("apply");
        let files: Vec<(String, String)> = write_log::take()
            .into_iter()
            .map(|(p, v)| {
                let name = p.file_name().map(|f| f.to_string_lossy().into_owned());
                (name.unwrap_or_default(), v)
            })
            .collect();
        assert_eq!(
            files,
            vec![
                (
                    "memory.memsw.limit_in_bytes".to_string(),
                    "134217728".to_string()
                ),
                ("memory.limit_in_bytes".to_string(), "67108864".to_string()),
            ]
        );
        // Unlimited memory with no swap value lifts memory+swap first.
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(-1i64)
                    .build()
                    .expect("memory"),
            )
            .build()
            .expect("resources");
        m.apply(&r).expect("apply");
        let values: Vec<String> = write_log::take().into_iter().map(|(_, v)| v).collect();
        assert_eq!(values, vec!["-1", "-1"]);
        assert_eq!(read(&t, &leaf("memory", "memory.limit_in_bytes")), "-1");
    }

    #[test]
    fn device_rules_deny_all_then_spec_then_defaults() {
        let (t, m) = fake(false);
        let mut deny_all = LinuxDeviceCgroup::default();
        deny_all.set_access(Some("rwm".into()));
        let mut fuse = LinuxDeviceCgroup::default();
        fuse.set_allow(true);
        fuse.set_typ(Some(LinuxDeviceType::C));
        fuse.set_major(Some(10));
        fuse.set_minor(Some(229));
        fuse.set_access(Some("rwm".into()));
        let r = LinuxResourcesBuilder::default()
            .devices(vec![deny_all, fuse])
            .build()
            .expect("resources");
        m.apply(&r).expect("apply");
        let log: Vec<(String, String)> = write_log::take()
            .into_iter()
            .map(|(p, v)| {
                let name = p.file_name().map(|f| f.to_string_lossy().into_owned());
                (name.unwrap_or_default(), v)
            })
            .collect();
        let pair = |f: &str, v: &str| (f.to_string(), v.to_string());
        assert_eq!(log[0], pair("devices.deny", "a"));
        assert_eq!(log[1], pair("devices.deny", "a *:* rwm"));
        assert_eq!(log[2], pair("devices.allow", "c 10:229 rwm"));
        assert_eq!(log[3], pair("devices.allow", "c *:* m"));
        assert_eq!(log.len(), 3 + default_len());
        assert!(log[3..].iter().all(|(f, _)| f == "devices.allow"));
        assert!(log.contains(&pair("devices.allow", "c 1:3 rwm")));
        assert!(log.contains(&pair("devices.allow", "c 136:* rwm")));
        assert_eq!(read(&t, &leaf("devices", "devices.deny")), "a *:* rwm");
        // No devices section: the device cgroup is left alone (updates must not reset it).
        m.apply(&LinuxResourcesBuilder::default().build().expect("r"))
            .expect("apply");
        assert!(write_log::take().is_empty());
    }

    fn default_len() -> usize {
        super::super::default_device_rules().len()
    }

    #[test]
    fn invalid_or_unsupported_requests_write_nothing() {
        let (t, m) = fake(false);
        let pids = LinuxPidsBuilder::default().limit(10i64).build().expect("p");
        let cases = [
            LinuxResourcesBuilder::default()
                .pids(pids)
                .memory(
                    LinuxMemoryBuilder::default()
                        .limit(-5i64)
                        .build()
                        .expect("m"),
                )
                .build()
                .expect("r"),
            LinuxResourcesBuilder::default()
                .pids(pids)
                .cpu(LinuxCpuBuilder::default().cpus("0,9").build().expect("c"))
                .build()
                .expect("r"),
            LinuxResourcesBuilder::default()
                .pids(pids)
                .unified(HashMap::from([(
                    "memory.high".to_string(),
                    "1".to_string(),
                )]))
                .build()
                .expect("r"),
            LinuxResourcesBuilder::default()
                .pids(pids)
                .cpu(
                    LinuxCpuBuilder::default()
                        .realtime_runtime(1000i64)
                        .build()
                        .expect("c"),
                )
                .build()
                .expect("r"),
        ];
        for r in cases {
            let err = m.apply(&r).expect_err("rejected");
            assert!(
                matches!(
                    err,
                    CgroupError::Invalid { .. } | CgroupError::Unsupported { .. }
                ),
                "{err}"
            );
            assert!(write_log::take().is_empty(), "wrote before failing: {err}");
        }
        assert_eq!(read(&t, &leaf("pids", "pids.max")), "max\n");
        let err = m
            .apply(
                &LinuxResourcesBuilder::default()
                    .memory(
                        LinuxMemoryBuilder::default()
                            .limit(-5i64)
                            .build()
                            .expect("m"),
                    )
                    .build()
                    .expect("r"),
            )
            .expect_err("negative");
        assert_eq!(
            err.to_string(),
            "invalid linux.resources.memory.limit -5: must be -1 (unlimited) or a positive \
             number of bytes"
        );
    }

    #[test]
    fn swap_without_swap_accounting_is_unsupported() {
        let (t, m) = fake(false);
        stdfs::remove_file(t.path().join(leaf("memory", "memory.memsw.limit_in_bytes")))
            .expect("no swap accounting");
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(32i64 << 20)
                    .swap(64i64 << 20)
                    .build()
                    .expect("m"),
            )
            .build()
            .expect("r");
        let err = m.apply(&r).expect_err("no memsw").to_string();
        assert!(err.contains("swapaccount=1"), "{err}");
        // Unlimited swap needs no accounting.
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(32i64 << 20)
                    .swap(-1i64)
                    .build()
                    .expect("m"),
            )
            .build()
            .expect("r");
        m.apply(&r).expect("apply");
        assert_eq!(
            read(&t, &leaf("memory", "memory.limit_in_bytes")),
            "33554432"
        );
    }

    #[test]
    fn freezer_v1() {
        let (t, m) = fake(false);
        m.freeze().expect("freeze");
        assert_eq!(read(&t, &leaf("freezer", "freezer.state")), "FROZEN");
        assert!(m.state_frozen().expect("state"));
        m.thaw().expect("thaw");
        assert_eq!(read(&t, &leaf("freezer", "freezer.state")), "THAWED");
        assert!(!m.state_frozen().expect("state"));
    }

    #[test]
    fn hybrid_uses_unified_for_grouping_freeze_and_kill() {
        let (t, m) = fake(true);
        m.add_process(777).expect("add");
        for c in MOUNTED {
            assert_eq!(read(&t, &leaf(c, "cgroup.procs")), "777", "{c}");
        }
        assert_eq!(read(&t, "unified/flotilla/ctr1/cgroup.procs"), "777");
        stdfs::write(
            t.path().join("unified/flotilla/ctr1/cgroup.events"),
            "frozen 1\n",
        )
        .expect("kernel view");
        m.freeze().expect("freeze");
        assert_eq!(read(&t, "unified/flotilla/ctr1/cgroup.freeze"), "1");
        assert_eq!(read(&t, &leaf("freezer", "freezer.state")), "THAWED\n");
        assert!(m.state_frozen().expect("state"));
        m.kill_all(libc::SIGKILL).expect("kill");
        assert_eq!(read(&t, "unified/flotilla/ctr1/cgroup.kill"), "1");
        // Limits never go to the unified directory.
        m.apply(
            &LinuxResourcesBuilder::default()
                .pids(LinuxPidsBuilder::default().limit(5i64).build().expect("p"))
                .build()
                .expect("r"),
        )
        .expect("apply");
        assert_eq!(read(&t, &leaf("pids", "pids.max")), "5");
        assert!(!t.path().join("unified/flotilla/ctr1/pids.max").exists());
    }

    #[test]
    fn stats_oom_and_pids_v1() {
        let (t, m) = fake(false);
        stdfs::write(t.path().join(leaf("freezer", "cgroup.procs")), "5\n6\n").expect("seed");
        assert_eq!(m.pids().expect("pids"), vec![5, 6]);
        assert_eq!(m.oom_kills().expect("oom"), 2);
        let s = m.stats().expect("stats");
        assert_eq!(
            s.memory.expect("memory"),
            stats::MemoryStats {
                usage: 4_096_000,
                max_usage: Some(8_192_000),
                limit: None,
                cache: 300,
                rss: 400,
                swap_usage: Some(100_000),
                oom_kills: 2,
            }
        );
        assert_eq!(
            s.cpu.expect("cpu"),
            stats::CpuStats {
                usage_ns: 5_000_000,
                user_ns: Some(3_000_000),
                system_ns: Some(2_000_000),
                nr_periods: 7,
                nr_throttled: 5,
                throttled_ns: 123_456,
            }
        );
        assert_eq!(
            s.pids.expect("pids"),
            stats::PidsStats {
                current: 2,
                limit: None
            }
        );
    }

    #[test]
    fn destroy_removes_every_hierarchy_and_is_idempotent() {
        let t = tempfile::tempdir().expect("tempdir");
        for c in MOUNTED {
            mk_hierarchy(&t.path().join(c));
        }
        stdfs::create_dir(t.path().join("unified")).expect("mkdir");
        let m = new_manager(CgroupConfig {
            root: t.path().to_path_buf(),
            layout: Layout::Hybrid,
            path: PathBuf::from("flotilla/ctr1"),
        });
        // cpuset needs its files for create; leave it out of this tree.
        stdfs::remove_dir_all(t.path().join("cpuset")).expect("rmdir");
        m.create().expect("create");
        assert!(t.path().join("unified/flotilla/ctr1").is_dir());
        m.destroy().expect("destroy");
        for c in ["cpu", "memory", "freezer", "unified"] {
            assert!(!t.path().join(c).join("flotilla/ctr1").exists(), "{c}");
            assert!(
                t.path().join(c).join("flotilla").is_dir(),
                "parent {c} stays"
            );
        }
        m.destroy().expect("destroy again");
        assert_eq!(m.pids().expect("no cgroup, no pids"), Vec::<i32>::new());
        m.kill_all(libc::SIGTERM).expect("nothing to kill");
    }

    #[test]
    fn a_directory_that_is_not_a_mounted_hierarchy_is_left_alone() {
        let t = tempfile::tempdir().expect("tempdir");
        for c in ["memory", "pids"] {
            mk_hierarchy(&t.path().join(c));
        }
        // What an unmounted hierarchy leaves on the /sys/fs/cgroup tmpfs: an empty directory.
        stdfs::create_dir(t.path().join("hugetlb")).expect("mkdir");
        let m = new_manager(CgroupConfig {
            root: t.path().to_path_buf(),
            layout: Layout::V1,
            path: PathBuf::from("flotilla/ctr1"),
        });
        m.create().expect("create");
        // The kernel creates cgroup.procs in a new cgroup; the fake tree needs it seeded.
        for c in ["memory", "pids"] {
            stdfs::write(t.path().join(c).join("flotilla/ctr1/cgroup.procs"), "").expect("seed");
        }
        m.add_process(777).expect("add");
        assert_eq!(read(&t, "pids/flotilla/ctr1/cgroup.procs"), "777");
        assert!(
            !t.path().join("hugetlb/flotilla").exists(),
            "cgroups made in a plain directory"
        );
    }
}
