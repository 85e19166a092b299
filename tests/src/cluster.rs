//! Cluster lab: several hosts on one machine, each a network namespace with its own address,
//! running the real `flotilla-controller` (managers) and `flotilla-agent` (workers) binaries,
//! driven through the real `flotilla` CLI.
//!
//! Layout of lab `L` (1..=60, claimed like [`crate::agent::AgentLab`] claims its number): a hub
//! namespace `flc<L>hub` holding bridge `br0`; host `i` is namespace `flc<L>h<i>` attached by a
//! veth (`eth0` inside, `h<i>` in the hub) with address `10.244.L.i/24`. Nothing of the lab
//! touches the root namespace's network: lab addresses exist only inside lab namespaces, so a bug
//! can never send traffic off the machine. Processes run with `nsenter --net=` only (the mount
//! namespace stays the host's, so cgroups and the lab dir are visible); each agent keeps its
//! default bridge and nft table inside its own namespace.
//!
//! Managers listen on `10.244.L.i:4242`. The CLI runs inside host 1's namespace with
//! `FLOTILLA_CONFIG` pointing at the admin context `init` wrote in the lab dir.
//!
//! Dropping the lab kills every process whose command line names the lab dir (controllers,
//! agents, shims), removes the containers' cgroups, unmounts everything under the lab dir, deletes
//! the namespaces (which takes their bridges, veths and nft tables along) and the lab dir.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::agent::{output_with_timeout, text};
use crate::runtime::{bin, busybox_rootfs};

/// Port every lab manager listens on.
pub const PORT: u16 = 4242;

/// One process of the lab (a manager or an agent) on a host.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(c) = self.child.as_ref() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A lab of hosts.
pub struct ClusterLab {
    dir: Option<tempfile::TempDir>,
    pub lab: u8,
    claim: PathBuf,
    hosts: u8,
    managers: Vec<(u8, Proc)>,
    agents: Vec<(u8, Proc)>,
    controller_bin: PathBuf,
    agent_bin: PathBuf,
    cli_bin: PathBuf,
    worker_token: String,
    manager_token: String,
    busybox_tar: Option<PathBuf>,
    /// The host whose manager the lab's own CLI calls go through (0: host 1 with the admin
    /// context `init` wrote); see [`ClusterLab::use_manager`].
    via: std::cell::Cell<u8>,
    /// Extra `flotilla-agent serve` arguments per host ([`ClusterLab::set_agent_args`]).
    agent_args: BTreeMap<u8, Vec<String>>,
}

fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip").args(args).output().context("run ip")?;
    if !o.status.success() {
        bail!("ip {} failed: {}", args.join(" "), text(&o));
    }
    Ok(())
}

fn pid_alive(pid: &str) -> bool {
    let pid = pid.trim();
    !pid.is_empty() && Path::new("/proc").join(pid).exists()
}

impl ClusterLab {
    /// A lab of `hosts` empty hosts (namespaces with addresses, nothing running).
    pub fn new(hosts: u8) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("cluster tests need root (network namespaces, containers)");
        }
        if hosts == 0 || hosts > 20 {
            bail!("a cluster lab has 1 to 20 hosts");
        }
        let controller_bin = bin("flotilla-controller")?;
        let agent_bin = bin("flotilla-agent")?;
        let cli_bin = bin("flotilla")?;
        bin("flotilla-shim")?;
        bin("flotilla-runtime")?;
        for tool in ["ip", "nsenter", "nft"] {
            if Command::new(tool).arg("--version").output().is_err() {
                bail!("{tool} is missing: apt-get install -y iproute2 util-linux nftables");
            }
        }
        let claims = std::env::temp_dir().join("flotilla-clusterlab");
        std::fs::create_dir_all(&claims).context("create the lab claims dir")?;
        let me = std::process::id().to_string();
        let start = (std::process::id() % 60) as u8;
        for i in 0..60u8 {
            let l = (start + i) % 60 + 1;
            let claim = claims.join(l.to_string());
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
            let lab = ClusterLab {
                dir: Some(
                    tempfile::Builder::new()
                        .prefix("flt-cluster")
                        .tempdir()
                        .context("create the lab dir")?,
                ),
                lab: l,
                claim,
                hosts,
                managers: Vec::new(),
                agents: Vec::new(),
                controller_bin,
                agent_bin,
                cli_bin,
                worker_token: String::new(),
                manager_token: String::new(),
                busybox_tar: None,
                via: std::cell::Cell::new(0),
                agent_args: BTreeMap::new(),
            };
            lab.delete_namespaces(); // leftovers of a crashed earlier owner of this number
            lab.create_network()?;
            return Ok(lab);
        }
        bail!("no free cluster lab number (1..=60)")
    }

    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    /// Name of host `i`'s network namespace.
    pub fn netns(&self, i: u8) -> String {
        format!("flc{}h{}", self.lab, i)
    }

    fn hub(&self) -> String {
        format!("flc{}hub", self.lab)
    }

    /// Address of host `i`.
    pub fn addr(&self, i: u8) -> String {
        format!("10.244.{}.{}", self.lab, i)
    }

    /// host:port of the manager on host `i`.
    pub fn manager_addr(&self, i: u8) -> String {
        format!("{}:{PORT}", self.addr(i))
    }

    fn create_network(&self) -> Result<()> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        for i in 1..=self.hosts {
            let ns = self.netns(i);
            let port = format!("h{i}");
            ip(&["netns", "add", &ns])?;
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn delete_namespaces(&self) {
        for i in 1..=20u8 {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns(i)])
                .stderr(Stdio::null())
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub()])
            .stderr(Stdio::null())
            .output();
    }

    /// Cuts host `i` off the lab network (its link goes down) or reconnects it.
    pub fn set_connected(&self, i: u8, up: bool) -> Result<()> {
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            &format!("h{i}"),
            if up { "up" } else { "down" },
        ])
    }

    /// `program` on host `i`: in its network namespace and in a UTS namespace of its own whose
    /// hostname is the host's name (so nodes are told apart by hostname, as on real machines).
    fn in_host(&self, i: u8, program: &Path) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--uts", "--", "sh", "-c", "hostname \"$0\" && exec \"$@\""])
            .arg(self.hostname(i))
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns(i)))
            .arg("--")
            .arg(program);
        c
    }

    /// The hostname of host `i` (its namespace's name).
    pub fn hostname(&self, i: u8) -> String {
        self.netns(i)
    }

    fn host_dir(&self, i: u8, what: &str) -> PathBuf {
        self.dir().join(format!("h{i}")).join(what)
    }

    /// The CLI's config dir (admin context written by `init`).
    pub fn config_dir(&self) -> PathBuf {
        self.dir().join("cli")
    }

    fn spawn(&self, mut cmd: Command, log: &Path) -> Result<Child> {
        if let Some(p) = log.parent() {
            std::fs::create_dir_all(p)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .env("FLOTILLA_LOG", "info,flotilla_controller=debug")
            .env("RUST_LOG", "info")
            .process_group(0);
        cmd.spawn().context("spawn a lab process")
    }

    fn manager_command(&self, i: u8, verb: &str) -> Command {
        let mut c = self.in_host(i, &self.controller_bin.clone());
        c.arg(verb)
            .arg("--state-dir")
            .arg(self.host_dir(i, "controller"))
            .arg("--listen")
            .arg(self.manager_addr(i))
            .arg("--election-timeout")
            .arg("1s");
        c
    }

    /// `flotilla-controller init` on host `i`: the first manager. Waits until it printed its
    /// join tokens.
    pub fn init(&mut self, i: u8, extra: &[&str]) -> Result<()> {
        let mut cmd = self.manager_command(i, "init");
        cmd.arg("--config-dir").arg(self.config_dir()).args(extra);
        let log = self.host_dir(i, "controller.log");
        let child = self.spawn(cmd, &log)?;
        self.managers.push((
            i,
            Proc {
                child: Some(child),
                log: log.clone(),
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            let token_after = |marker: &str| {
                out.lines()
                    .find(|l| l.contains(marker))
                    .and_then(|l| l.split_whitespace().skip_while(|w| *w != "--token").nth(1))
                    .map(str::to_string)
            };
            if let (Some(w), Some(m)) = (
                token_after("flotilla-agent serve --join"),
                token_after("flotilla-controller join --token"),
            ) {
                self.worker_token = w;
                self.manager_token = m;
                return Ok(());
            }
            if !self.managers.last_mut().is_some_and(|(_, p)| p.running()) {
                bail!("flotilla-controller init exited; its log:\n{out}");
            }
            if Instant::now() > deadline {
                bail!(
                    "flotilla-controller init printed no join tokens within 30 s; its log:\n{out}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn worker_token(&self) -> &str {
        &self.worker_token
    }

    pub fn manager_token(&self) -> &str {
        &self.manager_token
    }

    /// `flotilla-controller join` on host `i` (to the manager on host `via`); waits until the
    /// cluster lists it as a reachable manager.
    pub fn join_manager(&mut self, i: u8, via: u8) -> Result<()> {
        let token = self.manager_token.clone();
        self.spawn_manager_join(i, via, &token)?;
        let addr = self.manager_addr(i);
        self.eventually(Duration::from_secs(30), || {
            if !self
                .managers
                .iter()
                .any(|(h, p)| *h == i && p.child.is_some())
            {
                bail!("no manager process on host {i}");
            }
            let out = self.cli_ok(&["cluster", "status", "--format", "json"])?;
            if out.contains(&addr) {
                Ok(())
            } else {
                bail!("manager {addr} not in the cluster yet: {out}")
            }
        })
    }

    /// Starts `flotilla-controller join --token TOKEN <manager of via>` on host `i` and returns
    /// at once (see [`ClusterLab::wait_manager_exit`] for one expected to fail).
    pub fn spawn_manager_join(&mut self, i: u8, via: u8, token: &str) -> Result<()> {
        let mut cmd = self.manager_command(i, "join");
        cmd.arg("--token").arg(token).arg(self.manager_addr(via));
        let log = self.host_dir(i, "controller.log");
        let child = self.spawn(cmd, &log)?;
        install(&mut self.managers, i, child, log);
        Ok(())
    }

    /// Whether the manager process of host `i` runs.
    pub fn manager_running(&mut self, i: u8) -> bool {
        self.managers
            .iter_mut()
            .any(|(h, p)| *h == i && p.running())
    }

    /// Whether the agent process of host `i` runs.
    pub fn agent_running(&mut self, i: u8) -> bool {
        self.agents.iter_mut().any(|(h, p)| *h == i && p.running())
    }

    /// The host whose manager leads, from `cluster status` (asked of the manager the lab's CLI
    /// goes through).
    pub fn leader_host(&self) -> Result<u8> {
        let v: serde_json::Value =
            serde_json::from_str(&self.cli_ok(&["cluster", "status", "--format", "json"])?)
                .context("cluster status --format json is not JSON")?;
        let managers = v
            .get("Managers")
            .and_then(|m| m.as_array())
            .context("cluster status has no Managers")?;
        let leaders: Vec<&serde_json::Value> = managers
            .iter()
            .filter(|m| m.get("Leader").and_then(|l| l.as_bool()) == Some(true))
            .collect();
        if leaders.len() != 1 {
            bail!("{} leaders in {v}", leaders.len());
        }
        let addr = leaders[0]
            .get("Addr")
            .and_then(|a| a.as_str())
            .unwrap_or_default();
        (1..=self.hosts)
            .find(|i| self.manager_addr(*i) == addr)
            .with_context(|| format!("the leader's address {addr} is no lab host's"))
    }

    /// Creates (once) the context `mgr<i>`: the admin certificate `init` wrote, with the manager
    /// of host `i` as its controller; returns its name.
    pub fn manager_context(&self, i: u8) -> Result<String> {
        let name = format!("mgr{i}");
        let cfg = self.config_dir();
        if cfg.join("contexts").join(&name).join("meta.json").is_file() {
            return Ok(name);
        }
        let admin = self.admin_context_dir()?;
        let path = |f: &str| admin.join(f).to_string_lossy().into_owned();
        let mut c = Command::new(&self.cli_bin);
        c.env("FLOTILLA_CONFIG", &cfg)
            .env("NO_COLOR", "1")
            .env_remove("FLOTILLA_CONTEXT")
            .args(["context", "create", &name, "--controller"])
            .arg(self.manager_addr(i))
            .args(["--ca", &path("ca.pem"), "--cert", &path("cert.pem")])
            .args(["--key", &path("key.pem")])
            .args([
                "--description",
                &format!("admin, via the manager of host {i}"),
            ]);
        let o = output_with_timeout(c, Duration::from_secs(20))?;
        if !o.status.success() {
            bail!("context create {name}: {}", text(&o));
        }
        Ok(name)
    }

    /// The directory of the admin context `init` wrote (ca.pem, cert.pem, key.pem).
    pub fn admin_context_dir(&self) -> Result<PathBuf> {
        let cfg = self.config_dir();
        let current: serde_json::Value = serde_json::from_slice(
            &std::fs::read(cfg.join("config.json")).context("read the CLI's config.json")?,
        )?;
        let name = current
            .get("current_context")
            .and_then(|n| n.as_str())
            .context("no current context in config.json")?;
        Ok(cfg.join("contexts").join(name))
    }

    /// Routes the lab's own CLI calls ([`ClusterLab::cli`] and everything built on it) through
    /// the manager of host `i`, run inside host `i`'s namespace with context `mgr<i>`. `0` goes
    /// back to host 1 with the admin context.
    pub fn use_manager(&self, i: u8) -> Result<()> {
        if i != 0 {
            self.manager_context(i)?;
        }
        self.via.set(i);
        Ok(())
    }

    /// `flotilla --context CONTEXT ARGS` inside host `host`'s namespace, with the lab's config dir.
    pub fn cli_ctx(&self, host: u8, context: &str, args: &[&str]) -> Result<Output> {
        self.cli_config(host, &self.config_dir(), Some(context), args)
    }

    /// `flotilla ARGS` inside host `host`'s namespace with the config dir `config` (and the
    /// context `context`, else the current one there).
    pub fn cli_config(
        &self,
        host: u8,
        config: &Path,
        context: Option<&str>,
        args: &[&str],
    ) -> Result<Output> {
        let mut c = self.in_host(host, &self.cli_bin.clone());
        c.env("FLOTILLA_CONFIG", config)
            .env("NO_COLOR", "1")
            .env_remove("FLOTILLA_CONTEXT");
        if let Some(ctx) = context {
            c.arg("--context").arg(ctx);
        }
        c.args(args);
        output_with_timeout(c, Duration::from_secs(60))
    }

    /// Restarts the (stopped) manager of host `i` from its state (`flotilla-controller serve`).
    pub fn restart_manager(&mut self, i: u8) -> Result<()> {
        let cmd = self.manager_command(i, "serve");
        let log = self.host_dir(i, "controller.log");
        let child = self.spawn(cmd, &log)?;
        install(&mut self.managers, i, child, log);
        Ok(())
    }

    /// `flotilla-controller init --force-new-cluster` on host `i` (stopped before).
    pub fn force_new_cluster(&mut self, i: u8) -> Result<()> {
        let mut cmd = self.manager_command(i, "init");
        cmd.arg("--force-new-cluster");
        let log = self.host_dir(i, "controller.log");
        let child = self.spawn(cmd, &log)?;
        install(&mut self.managers, i, child, log);
        Ok(())
    }

    fn manager(&mut self, i: u8) -> Result<&mut Proc> {
        self.managers
            .iter_mut()
            .find(|(h, _)| *h == i)
            .map(|(_, p)| p)
            .with_context(|| format!("no manager on host {i}"))
    }

    pub fn kill_manager(&mut self, i: u8) -> Result<()> {
        self.manager(i)?.kill();
        Ok(())
    }

    pub fn stop_manager(&mut self, i: u8) -> Result<()> {
        self.manager(i)?.stop();
        Ok(())
    }

    /// SIGSTOP / SIGCONT the manager of host `i`.
    pub fn pause_manager(&mut self, i: u8, paused: bool) -> Result<()> {
        use nix::sys::signal::Signal;
        self.manager(i)?.signal(if paused {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        });
        Ok(())
    }

    pub fn manager_log(&self, i: u8) -> String {
        std::fs::read_to_string(self.host_dir(i, "controller.log")).unwrap_or_default()
    }

    fn agent_command(&self, i: u8, join: Option<(u8, &str)>) -> Command {
        let mut c = self.in_host(i, &self.agent_bin.clone());
        c.arg("serve")
            .arg("--state-dir")
            .arg(self.host_dir(i, "agent-state"))
            .arg("--run-dir")
            .arg(self.host_dir(i, "agent-run"));
        if let Some((via, token)) = join {
            c.arg("--join")
                .arg(self.manager_addr(via))
                .arg("--token")
                .arg(token);
        }
        c.args(self.agent_args.get(&i).into_iter().flatten());
        c
    }

    /// Extra arguments of every later `flotilla-agent serve` on host `i` (e.g. `--tcp ADDR`).
    pub fn set_agent_args(&mut self, i: u8, args: &[&str]) {
        self.agent_args
            .insert(i, args.iter().map(|a| a.to_string()).collect());
    }

    /// Closes every established TCP connection in host `i`'s namespace (`ss -K`): both ends see
    /// a reset and must dial again, with a new TLS handshake.
    pub fn reset_connections(&self, i: u8) -> Result<()> {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns(i),
                "ss",
                "-K",
                "-t",
                "state",
                "established",
            ])
            .output()
            .context("run ss -K")?;
        if !o.status.success() {
            bail!("ss -K on host {i} failed: {}", text(&o));
        }
        Ok(())
    }

    /// The state directory of host `i`'s agent (its cluster membership is under `cluster/`).
    pub fn agent_state_dir(&self, i: u8) -> PathBuf {
        self.host_dir(i, "agent-state")
    }

    /// The unix socket of host `i`'s agent.
    pub fn agent_socket(&self, i: u8) -> PathBuf {
        self.host_dir(i, "agent-run").join("agent.sock")
    }

    /// Starts an agent on host `i` joining through the manager on `via`, with busybox imported
    /// into its image store; waits until its node is READY.
    pub fn add_worker(&mut self, i: u8, via: u8) -> Result<()> {
        let token = self.worker_token.clone();
        self.add_worker_with_token(i, via, &token)
    }

    /// [`ClusterLab::add_worker`] with the given join token.
    pub fn add_worker_with_token(&mut self, i: u8, via: u8, token: &str) -> Result<()> {
        self.spawn_agent_join(i, via, token)?;
        self.wait_agent_socket(i)?;
        self.import_busybox(i)?;
        self.wait_node_ready(i)
    }

    /// Starts an agent on host `i` joining through the manager on `via` with `token`, and
    /// returns at once (see [`ClusterLab::wait_agent_exit`] for one expected to fail).
    pub fn spawn_agent_join(&mut self, i: u8, via: u8, token: &str) -> Result<()> {
        let cmd = self.agent_command(i, Some((via, token)));
        let log = self.host_dir(i, "agent.log");
        let child = self.spawn(cmd, &log)?;
        install(&mut self.agents, i, child, log);
        Ok(())
    }

    /// Waits (at most `timeout`) for the agent of host `i` to exit; its exit code (None when
    /// killed by a signal). An error when it is still running after `timeout`.
    pub fn wait_agent_exit(&mut self, i: u8, timeout: Duration) -> Result<Option<i32>> {
        let p = self.agent(i)?;
        wait_exit(p, timeout).with_context(|| format!("the agent of host {i}"))
    }

    /// Waits (at most `timeout`) for the manager of host `i` to exit; its exit code.
    pub fn wait_manager_exit(&mut self, i: u8, timeout: Duration) -> Result<Option<i32>> {
        let p = self.manager(i)?;
        wait_exit(p, timeout).with_context(|| format!("the manager of host {i}"))
    }

    fn wait_agent_socket(&mut self, i: u8) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.agent_socket(i).exists() {
            if !self.agent(i)?.running() {
                bail!(
                    "the agent of host {i} exited; its log:\n{}",
                    self.agent_log(i)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent of host {i} did not start; its log:\n{}",
                    self.agent_log(i)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The node id of host `i`'s agent (found by hostname).
    pub fn node_of_host(&self, i: u8) -> Result<String> {
        let host = self.hostname(i);
        for n in json_items(&self.cli_ok(&["node", "ls", "--format", "json"])?)? {
            if n.get("Hostname").and_then(|v| v.as_str()) == Some(host.as_str()) {
                if let Some(id) = n.get("ID").and_then(|v| v.as_str()) {
                    return Ok(id.to_string());
                }
            }
        }
        bail!("no node with hostname {host}")
    }

    fn wait_node_ready(&self, i: u8) -> Result<()> {
        self.eventually(Duration::from_secs(30), || {
            let id = self.node_of_host(i)?;
            let state = self.node_state(&id)?;
            if state == "ready" {
                Ok(())
            } else {
                bail!("node {id} of host {i} is {state}")
            }
        })
    }

    /// A node's status, lower case ("ready", "down", "unknown", ...).
    pub fn node_state(&self, id: &str) -> Result<String> {
        for n in json_items(&self.cli_ok(&["node", "ls", "--format", "json"])?)? {
            if n.get("ID").and_then(|v| v.as_str()) == Some(id) {
                return Ok(n
                    .get("Status")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_lowercase());
            }
        }
        bail!("no node {id}")
    }

    fn agent(&mut self, i: u8) -> Result<&mut Proc> {
        self.agents
            .iter_mut()
            .find(|(h, _)| *h == i)
            .map(|(_, p)| p)
            .with_context(|| format!("no agent on host {i}"))
    }

    /// SIGKILL the agent of host `i` (its containers keep running under their shims).
    pub fn kill_agent(&mut self, i: u8) -> Result<()> {
        self.agent(i)?.kill();
        Ok(())
    }

    /// SIGTERM the agent of host `i` and wait for it to exit.
    pub fn stop_agent(&mut self, i: u8) -> Result<()> {
        self.agent(i)?.stop();
        Ok(())
    }

    /// Starts the agent of host `i` again (it is a member already: no token).
    pub fn restart_agent(&mut self, i: u8) -> Result<()> {
        let cmd = self.agent_command(i, None);
        let log = self.host_dir(i, "agent.log");
        self.agent(i)?.kill();
        // The dead agent's socket file stays behind: wait for the new one.
        let _ = std::fs::remove_file(self.agent_socket(i));
        let child = self.spawn(cmd, &log)?;
        self.agent(i)?.child = Some(child);
        self.wait_agent_socket(i)
    }

    pub fn agent_log(&self, i: u8) -> String {
        std::fs::read_to_string(self.host_dir(i, "agent.log")).unwrap_or_default()
    }

    fn import_busybox(&mut self, i: u8) -> Result<()> {
        let tar = match &self.busybox_tar {
            Some(t) => t.clone(),
            None => {
                let root = self.dir().join("busybox-rootfs");
                std::fs::create_dir_all(&root)?;
                busybox_rootfs(&root)?;
                let tar = self.dir().join("busybox.tar");
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
                self.busybox_tar = Some(tar.clone());
                tar
            }
        };
        let out = self.agent_cli(
            i,
            &[
                "image",
                "import",
                "-c",
                "CMD [\"/bin/sh\"]",
                "-c",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                tar.to_str().context("lab path is not UTF-8")?,
                "busybox:latest",
            ],
        )?;
        if !out.status.success() {
            bail!("image import on host {i}: {}", text(&out));
        }
        Ok(())
    }

    /// `flotilla -H unix://<agent of host i> ARGS` (node-level commands on that host).
    pub fn agent_cli(&self, i: u8, args: &[&str]) -> Result<Output> {
        let mut c = Command::new(&self.cli_bin);
        c.env(
            "FLOTILLA_HOST",
            format!("unix://{}", self.agent_socket(i).display()),
        )
        .env("NO_COLOR", "1")
        .args(args);
        output_with_timeout(c, Duration::from_secs(60))
    }

    /// `flotilla ARGS` on host `host` (inside its namespace) with the lab's admin context.
    pub fn cli_on(&self, host: u8, args: &[&str]) -> Result<Output> {
        let mut c = self.in_host(host, &self.cli_bin.clone());
        c.env("FLOTILLA_CONFIG", self.config_dir())
            .env("NO_COLOR", "1")
            .env_remove("FLOTILLA_CONTEXT")
            .args(args);
        output_with_timeout(c, Duration::from_secs(60))
    }

    /// `flotilla ARGS` on host 1 with the admin context, or through the manager chosen with
    /// [`ClusterLab::use_manager`].
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        match self.via.get() {
            0 => self.cli_on(1, args),
            i => self.cli_ctx(i, &format!("mgr{i}"), args),
        }
    }

    /// [`ClusterLab::cli`], which must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let o = self.cli(args)?;
        if !o.status.success() {
            bail!("flotilla {} failed: {}", args.join(" "), text(&o));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Runs a scenario on the lab: on an error or a failed assertion (a panic), prints the lab's
    /// logs before passing it on (the lab is torn down when dropped, after that).
    pub fn scenario(&mut self, f: impl FnOnce(&mut ClusterLab) -> Result<()>) -> Result<()> {
        eprintln!("cluster lab {} in {}", self.lab, self.dir().display());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                eprintln!("{e:#}\n{}", self.logs());
                Err(e)
            }
            Err(panic) => {
                eprintln!("{}", self.logs());
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Retries `f` until it succeeds or `timeout` passes (then its last error).
    pub fn eventually<T>(&self, timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("still failing after {timeout:?}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Tasks of a service as JSON objects (`service ps --format json`).
    pub fn tasks(&self, service: &str) -> Result<Vec<serde_json::Value>> {
        json_items(&self.cli_ok(&["service", "ps", "--format", "json", service])?)
    }

    /// Containers of host `i`'s agent (`ps --format json`).
    pub fn containers(&self, i: u8) -> Result<Vec<serde_json::Value>> {
        let o = self.agent_cli(i, &["ps", "--format", "json"])?;
        if !o.status.success() {
            bail!("ps on host {i}: {}", text(&o));
        }
        json_items(&String::from_utf8_lossy(&o.stdout))
    }

    /// Everything a failing test wants to see.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (i, p) in &self.managers {
            s.push_str(&format!(
                "==== manager on host {i}\n{}\n",
                tail(&p.log(), 60)
            ));
        }
        for (i, p) in &self.agents {
            s.push_str(&format!("==== agent on host {i}\n{}\n", tail(&p.log(), 40)));
            // The manager a promoted node's agent started.
            let promoted = self.agent_run_dir(*i).join("manager.log");
            if promoted.exists() {
                s.push_str(&format!(
                    "==== manager of the promoted node on host {i}\n{}\n",
                    tail(&std::fs::read_to_string(&promoted).unwrap_or_default(), 60)
                ));
            }
        }
        s
    }

    /// Container shims alive on host `i` (they outlive their agent).
    pub fn shims(&self, i: u8) -> usize {
        self.shim_pids(i).len()
    }

    /// The pids of the container shims alive on host `i`, sorted: unchanged pids mean the
    /// containers were never restarted.
    pub fn shim_pids(&self, i: u8) -> Vec<i32> {
        let needle = self
            .host_dir(i, "agent-state")
            .to_string_lossy()
            .into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids: Vec<i32> = entries
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                (cmd.contains("flotilla-shim") && cmd.contains(&needle)).then_some(pid)
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    fn container_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 1..=self.hosts {
            for d in [
                self.host_dir(i, "agent-state").join("containers"),
                self.host_dir(i, "agent-run").join("runtime"),
            ] {
                if let Ok(entries) = std::fs::read_dir(&d) {
                    for e in entries.flatten() {
                        if let Some(n) = e.file_name().to_str() {
                            if n.len() >= 8 && !n.starts_with('.') && !ids.iter().any(|x| x == n) {
                                ids.push(n.to_string());
                            }
                        }
                    }
                }
            }
        }
        ids
    }

    fn teardown(&mut self) {
        // Managers first: with them gone nothing schedules replacements for the containers
        // removed below.
        for (_, p) in self.managers.iter_mut() {
            p.signal(nix::sys::signal::Signal::SIGCONT);
            p.stop();
        }
        // Containers through their agents while they run (clean stop).
        for i in 1..=self.hosts {
            if self.agents.iter_mut().any(|(h, p)| *h == i && p.running()) {
                if let Ok(list) = self.all_containers(i) {
                    let ids: Vec<String> = list
                        .iter()
                        .filter_map(|c| {
                            c.get("id")
                                .or_else(|| c.get("ID"))
                                .and_then(|v| v.as_str())
                                .map(str::to_string)
                        })
                        .collect();
                    if !ids.is_empty() {
                        let mut args = vec!["rm", "-f"];
                        args.extend(ids.iter().map(String::as_str));
                        let _ = self.agent_cli(i, &args);
                    }
                }
            }
        }
        for (_, p) in self.agents.iter_mut().chain(self.managers.iter_mut()) {
            p.signal(nix::sys::signal::Signal::SIGCONT);
            p.stop();
        }
        for pid in crate::agent::processes_mentioning(self.dir()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        let ids = self.container_ids();
        // Containers the agents did not remove (created while the lab was being torn down)
        // outlive their killed shims: kill what is left in their cgroups.
        kill_cgroup_processes(&ids);
        crate::agent::remove_container_cgroups(&ids);
        crate::agent::unmount_under(self.dir());
        self.delete_namespaces();
        if let Some(d) = self.dir.take() {
            let path = d.path().to_path_buf();
            if d.close().is_err() {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        let _ = std::fs::remove_dir_all(&self.claim);
    }
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn wait_exit(p: &mut Proc, timeout: Duration) -> Result<Option<i32>> {
    let deadline = Instant::now() + timeout;
    loop {
        let Some(c) = p.child.as_mut() else {
            bail!("no process");
        };
        if let Some(status) = c.try_wait().context("wait for a lab process")? {
            p.child = None;
            return Ok(status.code());
        }
        if Instant::now() > deadline {
            bail!(
                "still running after {timeout:?}; its log:\n{}",
                tail(&p.log(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes `child` host `i`'s process in `procs`: the one it replaces is killed first.
fn install(procs: &mut Vec<(u8, Proc)>, i: u8, child: Child, log: PathBuf) {
    match procs.iter_mut().find(|(h, _)| *h == i) {
        Some((_, p)) => {
            p.kill();
            p.child = Some(child);
        }
        None => procs.push((
            i,
            Proc {
                child: Some(child),
                log,
            },
        )),
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The objects of a `--format json` output: a JSON array, or one object per line.
pub fn json_items(out: &str) -> Result<Vec<serde_json::Value>> {
    let t = out.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(t) {
        return Ok(match v {
            serde_json::Value::Array(a) => a,
            other => vec![other],
        });
    }
    t.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

// ==== Services on a cluster: helpers of cluster_global, cluster_placement, cluster_update and
// cluster_secrets (one block, kept apart to ease merges). ====

/// One row of `service ps --no-trunc --format json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// Full task id.
    pub id: String,
    /// `web.1` (replicated) or `g.<node id>` (global), without the history marker.
    pub name: String,
    /// An older task of its slot (shown as ` \_ web.1`).
    pub history: bool,
    /// Image, without a digest.
    pub image: String,
    /// Hostname of its node ("" while unplaced).
    pub node: String,
    /// Desired state, lower case ("running", "shutdown", ...).
    pub desired: String,
    /// Observed state, lower case, without the "5 seconds ago".
    pub current: String,
    /// Its error or pending reason (untruncated).
    pub error: String,
}

impl TaskRow {
    /// Desired and observed RUNNING.
    pub fn running(&self) -> bool {
        self.desired == "running" && self.current == "running"
    }
}

/// A `flotilla` command running in the background (e.g. `service logs -f`), its stdout and
/// stderr collected as they come. Killed when dropped.
pub struct Background {
    child: Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    err: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Background {
    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().map(|b| b.clone()).unwrap_or_default()).into()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().map(|b| b.clone()).unwrap_or_default()).into()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(
    mut r: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let b = std::sync::Arc::clone(&buf);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            if let Ok(mut v) = b.lock() {
                v.extend_from_slice(&chunk[..n]);
            }
        }
    });
    buf
}

/// Regular files under `dir` (symlinks not followed) whose contents hold `needle` (every
/// regular file when `needle` is empty).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                if let Ok(data) = std::fs::read(e.path()) {
                    if needle.is_empty() || data.windows(needle.len()).any(|w| w == needle) {
                        found.push(e.path());
                    }
                }
            }
        }
    }
    found
}

/// SIGKILLs every process left in the cgroups of containers `ids` (all hierarchies), until they
/// are empty or a second has passed.
fn kill_cgroup_processes(ids: &[String]) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let dirs: Vec<PathBuf> = controllers
        .flatten()
        .flat_map(|c| ids.iter().map(move |id| c.path().join("flotilla").join(id)))
        .filter(|d| d.is_dir())
        .collect();
    for _ in 0..20 {
        let mut pids = Vec::new();
        let mut stack = dirs.clone();
        while let Some(d) = stack.pop() {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl ClusterLab {
    /// Every container of host `i`'s agent, stopped and created ones too (`ps -a`).
    pub fn all_containers(&self, i: u8) -> Result<Vec<serde_json::Value>> {
        let o = self.agent_cli(i, &["ps", "-a", "--no-trunc", "--format", "json"])?;
        if !o.status.success() {
            bail!("ps -a on host {i}: {}", text(&o));
        }
        json_items(&String::from_utf8_lossy(&o.stdout))
    }

    /// Like [`ClusterLab::add_worker`], but busybox is in the worker's image store before its
    /// node joins (the agent runs alone for the import, then again with `--join`), so the
    /// first tasks placed there never find the image missing.
    pub fn add_worker_with_image(&mut self, i: u8, via: u8) -> Result<()> {
        let log = self.host_dir(i, "agent.log");
        let child = self.spawn(self.agent_command(i, None), &log)?;
        self.agents.push((
            i,
            Proc {
                child: Some(child),
                log: log.clone(),
            },
        ));
        self.wait_agent_socket(i)?;
        self.import_busybox(i)?;
        self.agent(i)?.stop();
        let _ = std::fs::remove_file(self.agent_socket(i));
        let token = self.worker_token.clone();
        let child = self.spawn(self.agent_command(i, Some((via, token.as_str()))), &log)?;
        self.agent(i)?.child = Some(child);
        self.wait_agent_socket(i)?;
        self.wait_node_ready(i)
    }

    /// Run dir of host `i`'s agent (socket, runtime state, the secrets tmpfs).
    pub fn agent_run_dir(&self, i: u8) -> PathBuf {
        self.host_dir(i, "agent-run")
    }

    /// State dir of host `i`'s manager (raft log, snapshots, keys).
    pub fn controller_dir(&self, i: u8) -> PathBuf {
        self.host_dir(i, "controller")
    }

    /// `flotilla ARGS` on host 1, which must fail; its stderr.
    pub fn cli_fails(&self, args: &[&str]) -> Result<String> {
        let o = self.cli(args)?;
        if o.status.success() {
            bail!(
                "flotilla {} succeeded, expected a failure: {}",
                args.join(" "),
                text(&o)
            );
        }
        Ok(String::from_utf8_lossy(&o.stderr).into_owned())
    }

    /// `flotilla ARGS` on host 1 with `input` on its stdin, which must succeed; its stdout.
    pub fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Result<String> {
        use std::io::Write;
        let mut c = self.in_host(1, &self.cli_bin.clone());
        c.env("FLOTILLA_CONFIG", self.config_dir())
            .env("NO_COLOR", "1")
            .env_remove("FLOTILLA_CONTEXT")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().context("spawn flotilla")?;
        if let Some(mut s) = child.stdin.take() {
            s.write_all(input).context("write flotilla's stdin")?;
        }
        let out = child.stdout.take().map(collect);
        let err = child.stderr.take().map(collect);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("flotilla {} did not finish within 60 s", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        std::thread::sleep(Duration::from_millis(20));
        let get = |b: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>| {
            b.and_then(|b| {
                b.lock()
                    .ok()
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
            })
            .unwrap_or_default()
        };
        let (out, err) = (get(out), get(err));
        if !status.success() {
            bail!("flotilla {} failed: [{status}] {out} {err}", args.join(" "));
        }
        Ok(out)
    }

    /// Starts `flotilla ARGS` on host 1 in the background.
    pub fn cli_background(&self, args: &[&str]) -> Result<Background> {
        let mut c = self.in_host(1, &self.cli_bin.clone());
        c.env("FLOTILLA_CONFIG", self.config_dir())
            .env("NO_COLOR", "1")
            .env_remove("FLOTILLA_CONTEXT")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().context("spawn flotilla")?;
        let out = collect(child.stdout.take().context("stdout pipe")?);
        let err = collect(child.stderr.take().context("stderr pipe")?);
        Ok(Background { child, out, err })
    }

    /// Every task of `service`, history included (`service ps --no-trunc --format json`).
    pub fn task_rows(&self, service: &str) -> Result<Vec<TaskRow>> {
        let out = self.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", service])?;
        let field = |v: &serde_json::Value, k: &str| {
            v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string()
        };
        Ok(json_items(&out)?
            .iter()
            .map(|v| {
                let name = field(v, "Name");
                let history = name.trim_start().starts_with("\\_");
                let current = field(v, "CurrentState");
                let error = field(v, "Error");
                TaskRow {
                    id: field(v, "ID"),
                    name: name
                        .trim_start()
                        .trim_start_matches("\\_")
                        .trim()
                        .to_string(),
                    history,
                    image: field(v, "Image")
                        .split('@')
                        .next()
                        .unwrap_or("")
                        .to_string(),
                    node: field(v, "Node"),
                    desired: field(v, "DesiredState").to_lowercase(),
                    current: current
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_lowercase(),
                    error: error.trim_matches('"').to_string(),
                }
            })
            .collect())
    }

    /// Running tasks of `service` per hostname.
    pub fn running_by_host(&self, service: &str) -> Result<BTreeMap<String, usize>> {
        let mut m = BTreeMap::new();
        for t in self.task_rows(service)?.iter().filter(|t| t.running()) {
            *m.entry(t.node.clone()).or_default() += 1;
        }
        Ok(m)
    }

    /// Waits until the running tasks of `service` are exactly `want` (host index, count), and
    /// no other task of it is meant to run (desired RUNNING but not running yet).
    pub fn wait_running(
        &self,
        service: &str,
        want: &[(u8, usize)],
        timeout: Duration,
    ) -> Result<()> {
        let want: BTreeMap<String, usize> = want
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(h, n)| (self.hostname(*h), *n))
            .collect();
        self.eventually(timeout, || {
            let rows = self.task_rows(service)?;
            let mut got: BTreeMap<String, usize> = BTreeMap::new();
            for t in rows.iter().filter(|t| t.running()) {
                *got.entry(t.node.clone()).or_default() += 1;
            }
            let starting = rows
                .iter()
                .filter(|t| t.desired == "running" && !t.running())
                .count();
            if got == want && starting == 0 {
                Ok(())
            } else {
                bail!("{service}: running {got:?} (+{starting} starting), want {want:?}")
            }
        })
    }

    /// `service inspect SERVICE` as one JSON object.
    pub fn service_json(&self, service: &str) -> Result<serde_json::Value> {
        json_items(&self.cli_ok(&["service", "inspect", service])?)?
            .into_iter()
            .next()
            .with_context(|| format!("service inspect {service}: nothing"))
    }

    /// The service's UpdateStatus: (State, Message), empty strings when it has none.
    pub fn update_status(&self, service: &str) -> Result<(String, String)> {
        let v = self.service_json(service)?;
        let s = v.get("UpdateStatus");
        let f = |k: &str| {
            s.and_then(|s| s.get(k))
                .and_then(|x| x.as_str())
                .unwrap_or("")
                .to_string()
        };
        Ok((f("State"), f("Message")))
    }

    /// `flotilla node update ARGS <node of host i>`.
    pub fn node_update(&self, i: u8, args: &[&str]) -> Result<()> {
        let node = self.node_of_host(i)?;
        let mut all = vec!["node", "update"];
        all.extend_from_slice(args);
        all.push(&node);
        self.cli_ok(&all).map(|_| ())
    }

    /// The container id of task `task_id` on host `i` (from its agent's `ps -a`).
    pub fn container_of_task(&self, i: u8, task_id: &str) -> Result<String> {
        let o = self.agent_cli(i, &["ps", "-a", "--no-trunc", "--format", "json"])?;
        if !o.status.success() {
            bail!("ps on host {i}: {}", text(&o));
        }
        for c in json_items(&String::from_utf8_lossy(&o.stdout))? {
            let labels = c.get("Labels");
            if labels
                .and_then(|l| l.get("com.flotilla.task.id"))
                .and_then(|v| v.as_str())
                == Some(task_id)
            {
                if let Some(id) = c.get("ID").and_then(|v| v.as_str()) {
                    return Ok(id.to_string());
                }
            }
        }
        bail!("no container of task {task_id} on host {i}")
    }

    /// `exec CONTAINER CMD...` through host `i`'s agent, which must succeed; its stdout.
    pub fn exec(&self, i: u8, container: &str, cmd: &[&str]) -> Result<String> {
        let mut args = vec!["exec", container];
        args.extend_from_slice(cmd);
        let o = self.agent_cli(i, &args)?;
        if !o.status.success() {
            bail!("exec {} on host {i}: {}", cmd.join(" "), text(&o));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }
}
