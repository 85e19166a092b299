//! Network lab: a private slice of addresses and kernel names per test, cleaned up on drop.
//!
//! Each [`NetLab`] claims a number `X` (1..=250) that no other live lab holds (a marker
//! directory with the owner's pid under the temp dir; markers of dead processes are taken over)
//! and whose `10.250.X.0/24` is on no host interface. Everything the test makes is named from
//! `X`: default subnet `10.250.X.0/25`, user pool `10.250.X.128/25`, bridges `flt<X>d` and
//! `flt<X>u…`, nft table `fltest<X>`. Dropping the lab unmounts and deletes the sandbox files
//! (which destroys their namespaces and veth peers), deletes every link named `flt<X>…` and the
//! registered veth host ends, and deletes the nft table, even when the test panicked.
//! Traffic in these tests goes only to 127.0.0.0/8 and to the lab's own addresses.
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One test's slice of the network namespace of the host.
pub struct NetLab {
    pub dir: tempfile::TempDir,
    pub x: u8,
    claim: PathBuf,
    veths: Mutex<Vec<String>>,
}

fn pid_alive(pid: &str) -> bool {
    !pid.is_empty() && Path::new("/proc").join(pid.trim()).exists()
}

fn host_addrs() -> String {
    Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl NetLab {
    pub fn new() -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("network tests need root (namespaces, bridges, nftables)");
        }
        let claims = std::env::temp_dir().join("flotilla-netlab");
        std::fs::create_dir_all(&claims)?;
        let me = std::process::id().to_string();
        let addrs = host_addrs();
        let start = (std::process::id() % 250) as u16;
        for i in 0..250u16 {
            let x = ((start + i) % 250 + 1) as u8;
            if addrs.contains(&format!("10.250.{x}.")) {
                continue;
            }
            let claim = claims.join(x.to_string());
            let taken = match std::fs::create_dir(&claim) {
                Ok(()) => false,
                Err(_) => {
                    let owner = std::fs::read_to_string(claim.join("pid")).unwrap_or_default();
                    // a claim of a live process (possibly this one) is taken; a dead one is free
                    pid_alive(&owner) || owner.is_empty()
                }
            };
            if taken {
                continue;
            }
            std::fs::write(claim.join("pid"), &me)?;
            let lab = NetLab {
                dir: tempfile::Builder::new().prefix("flt-net").tempdir()?,
                x,
                claim,
                veths: Mutex::new(Vec::new()),
            };
            lab.sweep(); // leftovers of a crashed earlier owner
            return Ok(lab);
        }
        bail!("no free 10.250.X.0/24 slice for a network lab")
    }

    /// Prefix of every kernel name of this lab.
    pub fn tag(&self) -> String {
        format!("flt{}", self.x)
    }
    pub fn default_bridge(&self) -> String {
        format!("flt{}d", self.x)
    }
    pub fn bridge_prefix(&self) -> String {
        format!("flt{}u", self.x)
    }
    pub fn table(&self) -> String {
        format!("fltest{}", self.x)
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    /// A resolv.conf without any nameserver: the embedded DNS can never forward.
    pub fn resolv_conf(&self) -> PathBuf {
        let p = self.dir.path().join("resolv.conf");
        if !p.exists() {
            let _ = std::fs::write(&p, "search lab.invalid\n");
        }
        p
    }
    /// `10.250.X.0/25`, the default network's subnet.
    pub fn default_subnet(&self) -> String {
        format!("10.250.{}.0/25", self.x)
    }
    /// `10.250.X.128/25`, the pool of user networks.
    pub fn pool(&self) -> String {
        format!("10.250.{}.128/25", self.x)
    }
    /// `10.250.X.<host>`.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.x, host)
    }
    /// `10.250.X.<first>/<len>`.
    pub fn subnet(&self, first: u8, len: u8) -> String {
        format!("10.250.{}.{first}/{len}", self.x)
    }
    /// A container id unique to this lab.
    pub fn container_id(&self, n: u32) -> String {
        format!("{:08x}{:04x}{:052x}", std::process::id(), self.x, n)
    }

    /// Registers a veth host end for deletion on drop.
    pub fn track_veth(&self, name: &str) {
        if let Ok(mut v) = self.veths.lock() {
            v.push(name.to_string());
        }
    }

    /// `nft list table ip <table>` (empty string if the table does not exist).
    pub fn nft_table(&self) -> String {
        Command::new("nft")
            .args(["list", "table", "ip", &self.table()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn sweep(&self) {
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
        let mut names: Vec<String> = self.veths.lock().map(|v| v.clone()).unwrap_or_default();
        names.extend(link_names().into_iter().filter(|n| {
            n.starts_with(&format!("{}d", self.tag())) || n.starts_with(&format!("{}u", self.tag()))
        }));
        for n in names {
            if link_exists(&n) {
                let _ = Command::new("ip").args(["link", "del", &n]).output();
            }
        }
        let _ = nft_stdin(&format!(
            "table ip {0}\ndelete table ip {0}\n",
            self.table()
        ));
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.sweep();
        let _ = std::fs::remove_dir_all(&self.claim);
    }
}

fn nft_stdin(text: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes())?;
    }
    child.wait()?;
    Ok(())
}

/// Names of the host's links.
pub fn link_names() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// True when the host has a link called `name`.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// `nsenter --net=<sandbox> busybox ARGS`, with a time limit, output captured.
pub fn in_sandbox(sandbox: &Path, args: &[&str]) -> Result<Output> {
    Command::new("timeout")
        .arg("20")
        .arg("nsenter")
        .arg(format!("--net={}", sandbox.display()))
        .arg("busybox")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("nsenter {} busybox {args:?}", sandbox.display()))
}

/// A process in a sandbox, killed on drop.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `busybox ARGS` in a sandbox in the background.
pub fn spawn_in_sandbox(sandbox: &Path, args: &[&str]) -> Result<Background> {
    let child = Command::new("nsenter")
        .arg(format!("--net={}", sandbox.display()))
        .arg("busybox")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn nsenter")?;
    Ok(Background(child))
}

/// `GET /` over HTTP/1.0 from the host; the whole response.
pub fn http_get(addr: (Ipv4Addr, u16)) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
        .with_context(|| format!("connect {}:{}", addr.0, addr.1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .with_context(|| format!("read from {}:{}", addr.0, addr.1))?;
    Ok(out)
}

/// Retries `f` until it succeeds or `timeout` passes (servers in sandboxes start asynchronously).
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// stdout and stderr of an output, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
