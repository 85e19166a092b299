//! Engine slice: what an in-process engine (the task executor's tests) needs from the host — a
//! private state dir and run dir, a network slice, the shim and runtime binaries — and its
//! cleanup on drop, even when the test panicked.
//!
//! The slice number `X` is claimed from the same pool as [`crate::agent::AgentLab`]'s (marker
//! directories under `<tmp>/flotilla-agentlab`), so both kinds of lab never share names or
//! addresses: default bridge `fla<X>d` on `10.247.X.0/24`, user networks from
//! `10.248.<2X>.0/23` on `fla<X>u…`, nft table `flagent<X>`.
//!
//! Drop the engine (its tokio runtime) before the slice: dropping the slice kills the slice's
//! shims and containers (processes whose command line names the slice dir), deletes runtime
//! state and the containers' cgroups, the network namespaces, bridges, veths and nft table,
//! unmounts everything under the slice dir (overlay snapshots, the secrets tmpfs) and deletes it.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::runtime::bin;

pub struct EngineSlice {
    dir: Option<tempfile::TempDir>,
    pub x: u8,
    claim: PathBuf,
    pub shim_bin: PathBuf,
    pub runtime_bin: PathBuf,
}

fn pid_alive(pid: &str) -> bool {
    let pid = pid.trim();
    !pid.is_empty() && Path::new("/proc").join(pid).exists()
}

fn host_addrs() -> String {
    Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl EngineSlice {
    pub fn new() -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("engine tests need root (namespaces, cgroups, mounts, bridges, nftables)");
        }
        let shim_bin = bin("flotilla-shim")?;
        let runtime_bin = bin("flotilla-runtime")?;
        for tool in ["ip", "nft"] {
            crate::registry::require_binary(tool, "iproute2 / nftables")?;
        }
        let claims = std::env::temp_dir().join("flotilla-agentlab");
        std::fs::create_dir_all(&claims).context("create the lab claims dir")?;
        let me = std::process::id().to_string();
        let addrs = host_addrs();
        let start = (std::process::id() % 120) as u16;
        for i in 0..120u16 {
            let x = ((start + i * 7) % 120 + 1) as u8;
            if addrs.contains(&format!("10.247.{x}."))
                || addrs.contains(&format!("10.248.{}.", 2 * x as u16))
                || addrs.contains(&format!("10.248.{}.", 2 * x as u16 + 1))
            {
                continue;
            }
            let claim = claims.join(x.to_string());
            let taken = match std::fs::create_dir(&claim) {
                Ok(()) => false,
                Err(_) => {
                    let owner = std::fs::read_to_string(claim.join("pid")).unwrap_or_default();
                    pid_alive(&owner) || owner.is_empty()
                }
            };
            if taken {
                continue;
            }
            std::fs::write(claim.join("pid"), &me).context("write the lab claim")?;
            let slice = EngineSlice {
                dir: Some(
                    tempfile::Builder::new()
                        .prefix("flt-exec")
                        .tempdir()
                        .context("create the slice dir")?,
                ),
                x,
                claim,
                shim_bin,
                runtime_bin,
            };
            slice.sweep_network(); // leftovers of a crashed earlier owner of this number
            return Ok(slice);
        }
        bail!("no free engine lab slice (10.247.X.0/24 with X in 1..=120)")
    }

    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir().join("run")
    }
    pub fn default_bridge(&self) -> String {
        format!("fla{}d", self.x)
    }
    pub fn bridge_prefix(&self) -> String {
        format!("fla{}u", self.x)
    }
    pub fn table(&self) -> String {
        format!("flagent{}", self.x)
    }
    pub fn bridge_subnet(&self) -> String {
        format!("10.247.{}.0/24", self.x)
    }
    pub fn network_pool(&self) -> String {
        format!("10.248.{}.0/23", 2 * self.x as u16)
    }

    /// Removes the slice's network namespaces, bridges (with their veths) and nft table.
    pub fn sweep_network(&self) {
        let netns = self.run_dir().join("netns");
        if let Ok(entries) = std::fs::read_dir(&netns) {
            for e in entries.flatten() {
                let p = e.path();
                for _ in 0..4 {
                    if nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).is_err() {
                        break;
                    }
                }
                let _ = std::fs::remove_file(&p);
            }
        }
        let tag_d = self.default_bridge();
        let tag_u = self.bridge_prefix();
        for br in crate::network::link_names()
            .into_iter()
            .filter(|n| *n == tag_d || n.starts_with(&tag_u))
        {
            if let Ok(ports) = std::fs::read_dir(Path::new("/sys/class/net").join(&br).join("brif"))
            {
                for p in ports.flatten() {
                    let n = p.file_name().to_string_lossy().into_owned();
                    let _ = Command::new("ip").args(["link", "del", &n]).output();
                }
            }
            let _ = Command::new("ip").args(["link", "del", &br]).output();
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table()])
            .stderr(Stdio::null())
            .output();
    }

    fn processes(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let needle = self.dir().to_string_lossy().into_owned();
        let mut pids = Vec::new();
        if needle.len() < 8 {
            return pids;
        }
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }

    fn container_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for d in [
            self.state_dir().join("containers"),
            self.run_dir().join("runtime"),
        ] {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if let Some(n) = e.file_name().to_str() {
                    if n.len() >= 8 && !n.contains('.') && !ids.iter().any(|i| i == n) {
                        ids.push(n.to_string());
                    }
                }
            }
        }
        ids
    }

    fn teardown(&mut self) {
        // Containers: their processes (shims, and the containers through the runtime).
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let ids = self.container_ids();
        let rt_root = self.run_dir().join("runtime");
        for id in &ids {
            if rt_root.join(id).exists() {
                let _ = Command::new(&self.runtime_bin)
                    .arg("--root")
                    .arg(&rt_root)
                    .args(["delete", "--force", id])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let controllers: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        for id in &ids {
            for c in &controllers {
                let cg = c.join("flotilla").join(id);
                if cg.is_dir() {
                    let _ = Command::new("find")
                        .arg(&cg)
                        .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                        .stderr(Stdio::null())
                        .output();
                }
            }
        }
        self.sweep_network();
        // Mounts under the slice: overlay snapshots, volumes, the secrets tmpfs.
        let dir = self.dir().to_string_lossy().into_owned();
        if dir.len() >= 8 {
            for _ in 0..4 {
                let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                let mut points: Vec<String> = info
                    .lines()
                    .filter_map(|l| l.split(' ').nth(4))
                    .map(|p| p.replace("\\040", " "))
                    .filter(|p| p.starts_with(&dir))
                    .collect();
                if points.is_empty() {
                    break;
                }
                points.sort_by_key(|p| std::cmp::Reverse(p.len()));
                for p in points {
                    let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
        if let Some(d) = self.dir.take() {
            let path = d.path().to_path_buf();
            if d.close().is_err() {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        let _ = std::fs::remove_dir_all(&self.claim);
    }
}

impl Drop for EngineSlice {
    fn drop(&mut self) {
        self.teardown();
    }
}
