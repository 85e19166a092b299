//! Agent lab: a real `flotilla-agent serve` driven through the real `flotilla` CLI, with a private
//! state dir, run dir and network slice, torn down on drop even when a test panicked.
//!
//! Each [`AgentLab`] claims a number `X` (1..=120) that no other live lab holds (a marker directory
//! with the owner's pid under the temp dir; markers of dead processes are taken over) and whose
//! addresses are on no host interface. Everything the agent makes is named from `X`: default
//! bridge `fla<X>d` on `10.247.X.0/24`, user networks from the pool `10.248.<2X>.0/23` on bridges
//! `fla<X>u…`, nft table `flagent<X>`. These never overlap the [`crate::network::NetLab`] slices
//! (`10.250.X.0/24`, `flt<X>…`, `fltest<X>`).
//!
//! Dropping the lab removes every container with `flotilla rm -f` while the agent still runs,
//! stops the agent, kills what is left of the lab's shims (found by their socket under the lab's
//! run dir), deletes leftover runtime containers with `flotilla-runtime delete --force`, removes
//! the containers' cgroups (`flotilla/<id>`), unmounts the network namespace files and every mount
//! under the lab dir (overlay snapshots), deletes the lab's bridges, their veths and the nft
//! table, and finally the temp dir. Traffic in these tests goes only to 127.0.0.0/8 and to the
//! lab's own bridge and container addresses.
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::registry::{push_busybox, Registry, RegistryOptions};
use crate::runtime::{bin, busybox_rootfs};

/// How long one CLI command may take before the lab kills it and reports a hang.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One test's agent, its CLI, and its private slice of the host.
pub struct AgentLab {
    dir: Option<tempfile::TempDir>,
    pub x: u8,
    claim: PathBuf,
    agent: Option<Child>,
    agent_bin: PathBuf,
    cli_bin: PathBuf,
    runtime_bin: PathBuf,
    registry: Option<Registry>,
    extra_args: Vec<String>,
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

/// stdout and stderr of an output, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "[{}] stdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// stdout of an output as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of an output as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Retries `f` until it succeeds or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > timeout => {
                return Err(e.context(format!("still failing after {timeout:?}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `GET /` over HTTP/1.0 to `127.0.0.1:port`; the whole response.
pub fn http_get_local(port: u16) -> Result<String> {
    use std::io::Write;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .with_context(|| format!("read from {addr}"))?;
    Ok(out)
}

/// Runs `cmd` with stdin closed and stdout/stderr captured, killing it after `timeout`.
pub fn output_with_timeout(cmd: Command, timeout: Duration) -> Result<Output> {
    capture(cmd, timeout, true)
}

/// Runs `cmd` (stdin closed, output captured) for at most `limit`; past it the command is killed,
/// which is an error when `limit_is_a_hang`, else the normal end (`events`, `logs -f`).
fn capture(mut cmd: Command, limit: Duration, limit_is_a_hang: bool) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {shown}"))?;
    let mut out_pipe = child.stdout.take().context("stdout pipe")?;
    let mut err_pipe = child.stderr.take().context("stderr pipe")?;
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status: ExitStatus = loop {
        if let Some(s) = child.try_wait().context("wait for the command")? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().context("wait for the killed command")?;
            if limit_is_a_hang {
                bail!("{shown} did not finish within {limit:?}: killed (a hang)");
            }
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

impl AgentLab {
    /// A lab with a running agent (no images yet).
    pub fn new() -> Result<Self> {
        Self::with_agent_args(&[])
    }

    /// A lab whose agent gets `extra` serve arguments (e.g. `--allow-host-path`).
    pub fn with_agent_args(extra: &[&str]) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("agent tests need root (namespaces, cgroups, mounts, bridges, nftables)");
        }
        let agent_bin = bin("flotilla-agent")?;
        let cli_bin = bin("flotilla")?;
        let runtime_bin = bin("flotilla-runtime")?;
        bin("flotilla-shim")?;
        for tool in ["ip", "nft"] {
            if crate::registry::require_binary(tool, "iproute2 / nftables").is_err() {
                bail!("{tool} is missing: apt-get install -y iproute2 nftables");
            }
        }
        let claims = std::env::temp_dir().join("flotilla-agentlab");
        std::fs::create_dir_all(&claims).context("create the lab claims dir")?;
        let me = std::process::id().to_string();
        let addrs = host_addrs();
        let start = (std::process::id() % 120) as u16;
        for i in 0..120u16 {
            let x = ((start + i) % 120 + 1) as u8;
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
            let mut lab = AgentLab {
                dir: Some(
                    tempfile::Builder::new()
                        .prefix("flt-agent")
                        .tempdir()
                        .context("create the lab dir")?,
                ),
                x,
                claim,
                agent: None,
                agent_bin,
                cli_bin,
                runtime_bin,
                registry: None,
                extra_args: extra.iter().map(|s| s.to_string()).collect(),
            };
            lab.sweep_network(); // leftovers of a crashed earlier owner of this number
            lab.start_agent()?;
            return Ok(lab);
        }
        bail!("no free agent lab slice (10.247.X.0/24 with X in 1..=120)")
    }

    /// The lab's temp dir.
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
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("agent.sock")
    }
    /// `unix://<run>/agent.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }
    /// The agent's log (stdout and stderr of every start).
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("agent.log")).unwrap_or_default()
    }
    /// A scratch directory inside the lab dir (created).
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let p = self.dir().join("scratch").join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(p)
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
    /// `10.247.X.0/24`: the default network.
    pub fn bridge_subnet(&self) -> String {
        format!("10.247.{}.0/24", self.x)
    }
    /// `10.248.<2X>.0/23`: the pool of user networks (two /24s).
    pub fn network_pool(&self) -> String {
        format!("10.248.{}.0/23", 2 * self.x as u16)
    }

    /// `nft list table ip <table>` (empty if the table does not exist).
    pub fn nft_table(&self) -> String {
        Command::new("nft")
            .args(["list", "table", "ip", &self.table()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn serve_command(&self) -> Result<Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("agent.log"))
            .context("open the agent log")?;
        let mut cmd = Command::new(&self.agent_bin);
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--bridge-name")
            .arg(self.default_bridge())
            .arg("--bridge-subnet")
            .arg(self.bridge_subnet())
            .arg("--network-pool")
            .arg(self.network_pool())
            .arg("--bridge-prefix")
            .arg(self.bridge_prefix())
            .arg("--nft-table")
            .arg(self.table())
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup the agent log")?)
            .stderr(log)
            // its own process group: a ^C of the test run does not reach it first
            .process_group(0);
        Ok(cmd)
    }

    /// Starts the agent and waits until it answers `flotilla version`.
    pub fn start_agent(&mut self) -> Result<()> {
        if self.agent_running() {
            bail!("the lab's agent is already running");
        }
        let child = self
            .serve_command()?
            .spawn()
            .with_context(|| format!("start {}", self.agent_bin.display()))?;
        self.agent = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(c) = self.agent.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.agent = None;
                    bail!(
                        "flotilla-agent serve exited during start-up ({status}); its log:\n{}",
                        self.agent_log()
                    );
                }
            }
            if self.socket().exists() {
                if let Ok(o) = self.cli(&["version"]) {
                    if o.status.success() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "flotilla-agent did not answer on {} within {READY_TIMEOUT:?}; its log:\n{}",
                    self.socket().display(),
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Is the agent process alive?
    pub fn agent_running(&mut self) -> bool {
        match self.agent.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The agent's pid, if it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// SIGKILL the agent (containers keep running under their shims).
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the agent and wait for it to end (SIGKILL after 10 s).
    pub fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// SIGKILL the agent if it runs, then start it again and wait until it answers.
    pub fn restart_agent(&mut self) -> Result<()> {
        self.kill_agent();
        self.start_agent()
    }

    /// The CLI, `FLOTILLA_HOST` pointing at this lab's agent.
    pub fn cli_command(&self) -> Command {
        let mut c = Command::new(&self.cli_bin);
        c.env("FLOTILLA_HOST", self.host())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        c
    }

    /// `flotilla ARGS`: stdin closed, stdout and stderr captured, killed after [`CLI_TIMEOUT`].
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let mut c = self.cli_command();
        c.args(args);
        output_with_timeout(c, CLI_TIMEOUT)
    }

    /// `flotilla ARGS` for a command that does not end by itself (`events`, `logs -f`): runs it
    /// for `run_for`, then kills it and returns what it printed.
    pub fn cli_for(&self, args: &[&str], run_for: Duration) -> Result<Output> {
        let mut c = self.cli_command();
        c.args(args);
        capture(c, run_for, false)
    }

    /// `flotilla ARGS` that must succeed: its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let o = self.cli(args)?;
        if !o.status.success() {
            bail!("flotilla {} failed: {}", args.join(" "), text(&o));
        }
        Ok(stdout(&o))
    }

    /// `flotilla inspect NAME` parsed: the one object of the array.
    pub fn inspect(&self, name: &str) -> Result<serde_json::Value> {
        let out = self.cli_ok(&["inspect", name])?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("flotilla inspect {name} is not JSON: {out}"))?;
        match v {
            serde_json::Value::Array(mut a) if a.len() == 1 => Ok(a.remove(0)),
            other => bail!("flotilla inspect {name}: expected an array of one object, got {other}"),
        }
    }

    /// `State.Status` of a container.
    pub fn status(&self, name: &str) -> Result<String> {
        let v = self.inspect(name)?;
        v["State"]["Status"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("inspect {name} has no State.Status: {v}"))
    }

    /// Waits until `State.Status` of `name` is `want`.
    pub fn wait_status(&self, name: &str, want: &str, timeout: Duration) -> Result<()> {
        eventually(timeout, || {
            let s = self.status(name)?;
            if s == want {
                Ok(())
            } else {
                bail!("container {name} is {s}, want {want}")
            }
        })
    }

    /// Full ids of all containers (`ps -aq --no-trunc`).
    pub fn container_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .cli_ok(&["ps", "-a", "-q", "--no-trunc"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// A real registry on loopback holding the busybox test image; `flotilla pull` it and tag it
    /// `busybox:latest`. Returns the registry reference that was pulled.
    pub fn pull_busybox(&mut self) -> Result<String> {
        if self.registry.is_none() {
            self.registry = Some(Registry::start(RegistryOptions::default())?);
        }
        let reg = self.registry.as_ref().context("registry")?;
        let reference = push_busybox(reg, "busybox:latest")?;
        self.cli_ok(&["pull", "-q", &reference])
            .context("flotilla pull of the busybox test image")?;
        self.cli_ok(&["tag", &reference, "busybox:latest"])?;
        Ok(reference)
    }

    /// The lab's registry (after [`AgentLab::pull_busybox`]).
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }

    /// `flotilla image import` of a busybox rootfs tarball as `busybox:latest` (no registry).
    pub fn import_busybox(&self) -> Result<()> {
        let root = self.scratch("busybox-rootfs")?;
        busybox_rootfs(&root)?;
        let tar = self.dir().join("scratch/busybox.tar");
        let o = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .context("run tar")?;
        if !o.status.success() {
            bail!("tar of the busybox rootfs failed: {}", text(&o));
        }
        self.cli_ok(&[
            "image",
            "import",
            "-c",
            "CMD [\"/bin/sh\"]",
            "-c",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            tar.to_str().context("lab path is not UTF-8")?,
            "busybox:latest",
        ])?;
        Ok(())
    }

    // ------------------------------------------------------------------ cleanup

    /// Pids of processes whose command line mentions the lab dir (the agent, shims, runtime
    /// helpers), never this process.
    fn lab_processes(&self) -> Vec<i32> {
        processes_mentioning(self.dir())
    }

    /// Container ids the lab's state knows of (records and runtime states).
    fn known_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for d in [
            self.state_dir().join("containers"),
            self.run_dir().join("runtime"),
        ] {
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    if let Some(n) = e.file_name().to_str() {
                        if !n.is_empty() && !ids.iter().any(|i| i == n) {
                            ids.push(n.to_string());
                        }
                    }
                }
            }
        }
        ids
    }

    /// Simulates a host restart (power loss): SIGKILLs the agent, every shim and container of the
    /// lab, and takes away what a reboot takes: overlay and namespace mounts, the run dir, the
    /// containers' cgroups, bridges and the nft table. The state dir stays. The agent is not
    /// started again.
    pub fn simulate_host_restart(&mut self) -> Result<()> {
        self.kill_agent();
        let dir = self.dir().to_path_buf();
        let _ = Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(dir.as_os_str())
            .output();
        let ids: Vec<String> = std::fs::read_dir(self.state_dir().join("containers"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for id in &ids {
            for h in &hierarchies {
                let cg = h.join("flotilla").join(id);
                if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        for id in &ids {
            for h in &hierarchies {
                let _ = std::fs::remove_dir(h.join("flotilla").join(id));
            }
        }
        let prefix = dir.to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort();
        for m in mounts.iter().rev() {
            let _ = nix::mount::umount2(Path::new(m), nix::mount::MntFlags::MNT_DETACH);
        }
        self.sweep_network();
        let run = self.run_dir();
        if run.exists() {
            std::fs::remove_dir_all(&run).with_context(|| format!("remove {}", run.display()))?;
        }
        Ok(())
    }

    /// Removes the lab's network namespaces, bridges (with their veths) and nft table.
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
        let bridges: Vec<String> = crate::network::link_names()
            .into_iter()
            .filter(|n| n == &tag_d || n.starts_with(&tag_u))
            .collect();
        for br in &bridges {
            // veth host ends still enslaved to the lab's bridges
            if let Ok(ports) = std::fs::read_dir(Path::new("/sys/class/net").join(br).join("brif"))
            {
                for p in ports.flatten() {
                    let n = p.file_name().to_string_lossy().into_owned();
                    let _ = Command::new("ip").args(["link", "del", &n]).output();
                }
            }
            let _ = Command::new("ip").args(["link", "del", br]).output();
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table()])
            .stderr(Stdio::null())
            .output();
    }

    fn teardown(&mut self) {
        // 1. containers, through the agent while it runs
        if self.agent_running() {
            if let Ok(ids) = self.container_ids() {
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids.iter().map(String::as_str));
                    let _ = self.cli(&args);
                }
            }
        }
        // 2. the agent
        self.stop_agent();
        // 3. what is left: shims and helpers of this lab, runtime containers, cgroups
        for pid in self.lab_processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let ids = self.known_ids();
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
        remove_container_cgroups(&ids);
        // 4. network and mounts
        self.sweep_network();
        unmount_under(self.dir());
        self.registry = None;
        if let Some(d) = self.dir.take() {
            let path = d.path().to_path_buf();
            if d.close().is_err() {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        let _ = std::fs::remove_dir_all(&self.claim);
    }
}

impl Drop for AgentLab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The objects of `ps --format json` output, whichever of docker's shapes it uses (a JSON
/// array, or one object per line).
pub fn ps_json(out: &str) -> Result<Vec<serde_json::Value>> {
    let t = out.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    if let Ok(serde_json::Value::Array(a)) = serde_json::from_str(t) {
        return Ok(a);
    }
    t.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("ps --format json line is not JSON: {l}"))
        })
        .collect()
}

/// Pids of processes whose command line mentions `dir` (a lab's agent, shims, runtime helpers),
/// never this process. Nothing for a path too short to be a lab's.
pub(crate) fn processes_mentioning(dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    if needle.len() < 8 {
        return pids;
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
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
    }
    pids
}

/// Detaches every mount under `dir`, deepest first (overlay snapshots, namespace files).
pub(crate) fn unmount_under(dir: &Path) {
    let dir = dir.to_string_lossy().into_owned();
    if dir.len() < 8 {
        return;
    }
    for _ in 0..4 {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| p.starts_with(&dir))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Removes the cgroups `flotilla/<id>` of containers (children first) in every hierarchy.
pub(crate) fn remove_container_cgroups(ids: &[String]) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let controllers: Vec<PathBuf> = controllers.flatten().map(|e| e.path()).collect();
    for id in ids {
        if id.len() < 8 || id.contains('/') {
            continue;
        }
        for c in &controllers {
            let cg = c.join("flotilla").join(id);
            if cg.is_dir() {
                // children first (runtime sub-cgroups, if any)
                let _ = Command::new("find")
                    .arg(&cg)
                    .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                    .stderr(Stdio::null())
                    .output();
            }
        }
    }
}
