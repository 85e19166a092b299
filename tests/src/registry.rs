//! Local OCI registry and busybox test image.
//!
//! [`Registry::start`] runs Debian's `docker-registry` (distribution 2.8) on a free 127.0.0.1
//! port with its own config and storage in a temp dir (never the packaged config), optionally
//! behind htpasswd basic auth; it is killed and its storage deleted on drop.
//! [`busybox_image_layout`] builds a small OCI image layout from the host's static busybox with
//! umoci (once per machine and busybox version; each call gets a private copy), and
//! [`push_busybox`] / [`push_layout`] put layouts into a registry with skopeo.
//!
//! A missing tool is an error naming the Debian package to install: tests never skip silently.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How long a registry may take to answer `/v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Options of [`Registry::start`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Require this user name and password (htpasswd basic auth).
    pub basic_auth: Option<(String, String)>,
}

impl RegistryOptions {
    /// Options for a registry behind basic auth.
    pub fn with_basic_auth(user: &str, password: &str) -> Self {
        RegistryOptions {
            basic_auth: Some((user.to_string(), password.to_string())),
        }
    }
}

/// A running `docker-registry serve` on 127.0.0.1.
pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    auth: Option<(String, String)>,
}

impl Registry {
    /// Start a registry on a free loopback port and wait until `/v2/` answers.
    pub fn start(opts: RegistryOptions) -> Result<Registry> {
        let binary = require_binary("docker-registry", "docker-registry")?;
        let mut dir = tempfile::Builder::new()
            .prefix("flotilla-registry-")
            .tempdir()
            .context("create registry temp dir")?;
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).context("create registry storage")?;
        let auth_section = match &opts.basic_auth {
            Some((user, password)) => {
                let htpasswd = require_binary("htpasswd", "apache2-utils")?;
                let out = Command::new(htpasswd)
                    .args(["-Bbn", user, password])
                    .output()
                    .context("run htpasswd")?;
                if !out.status.success() {
                    bail!(
                        "htpasswd -Bbn failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                let file = dir.path().join("htpasswd");
                fs::write(&file, &out.stdout).context("write htpasswd file")?;
                format!(
                    "auth:\n  htpasswd:\n    realm: flotilla-test\n    path: {}\n",
                    file.display()
                )
            }
            None => String::new(),
        };

        let mut last_error = None;
        for _attempt in 0..5 {
            let port = free_port()?;
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: {}\n{auth_section}",
                    storage.display(),
                    random_hex(16)?
                ),
            )
            .context("write registry config")?;
            let log_path = dir.path().join("registry.log");
            let log = fs::File::create(&log_path).context("create registry log")?;
            let child = Command::new(&binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("dup log")?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("start {}", binary.display()))?;
            let mut registry = Registry {
                child: Some(child),
                dir,
                port,
                auth: opts.basic_auth.clone(),
            };
            match registry.wait_ready() {
                Ok(()) => return Ok(registry),
                Err(e) => {
                    let log = registry.log();
                    registry.stop();
                    let retry = log.contains("address already in use");
                    last_error = Some(e.context(format!("registry log:\n{log}")));
                    dir = registry.take_dir()?;
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("registry did not start")))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A reference to `name` (e.g. `busybox:latest`) in this registry.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.addr())
    }

    /// The basic-auth credentials the registry requires, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Root of the registry's filesystem storage.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the content of blob `digest` (`sha256:<hex>`): corrupt it to test
    /// verification.
    pub fn blob_data_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64)
            .ok_or_else(|| anyhow!("not a sha256 digest: {digest}"))?;
        Ok(self
            .storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data"))
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kill the registry (storage stays until drop): to test an unreachable registry.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn take_dir(mut self) -> Result<tempfile::TempDir> {
        self.stop();
        let placeholder = tempfile::tempdir().context("temp dir")?;
        Ok(std::mem::replace(&mut self.dir, placeholder))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("docker-registry exited during start-up ({status})");
                }
            }
            match http_status(&self.addr(), "/v2/") {
                Ok(200) | Ok(401) => return Ok(()),
                Ok(code) => bail!("docker-registry answered {code} on /v2/"),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "docker-registry on {} not ready after {READY_TIMEOUT:?}",
                        self.addr()
                    )))
                }
            }
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now (nor, for a while, after this call:
/// the kernel does not hand the same ephemeral port out again at once).
pub fn free_port() -> Result<u16> {
    let l =
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(l.local_addr().context("local addr")?.port())
}

/// Status code of a plain `GET path` on `addr`.
fn http_status(addr: &str, path: &str) -> Result<u16> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").context("send request")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).context("read response")?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad http answer {line:?}"))
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The path of `name` in `PATH` (or /usr/sbin, /sbin), or an error naming the Debian package.
pub fn require_binary(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if fs::metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
            return Ok(p);
        }
    }
    bail!("{name} is not installed: install the Debian package {package} (apt-get install -y {package})")
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The tag of the busybox layout's image.
pub const BUSYBOX_TAG: &str = "latest";

/// `PATH` of the busybox image.
pub const BUSYBOX_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A private copy of the busybox OCI image layout (tag `latest`, cmd `/bin/sh`) in
/// `dir/busybox-oci`; returns its path. Built with umoci from the host's `/bin/busybox`
/// (package busybox-static) once per machine and busybox build, then copied.
pub fn busybox_image_layout(dir: &Path) -> Result<PathBuf> {
    static CACHE: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(None));
    let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
    let cached = match guard.as_ref() {
        Some(p) if p.join("index.json").is_file() => p.clone(),
        _ => {
            let p = build_busybox_layout()?;
            *guard = Some(p.clone());
            p
        }
    };
    drop(guard);
    let dest = dir.join("busybox-oci");
    if dest.exists() {
        fs::remove_dir_all(&dest).with_context(|| format!("clear {}", dest.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    run(Command::new("cp").arg("-a").arg(&cached).arg(&dest))?;
    Ok(dest)
}

/// Build (or reuse) the shared busybox layout under the temp dir.
fn build_busybox_layout() -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    let md = fs::metadata(busybox).map_err(|_| {
        anyhow!("/bin/busybox is missing: install the Debian package busybox-static (apt-get install -y busybox-static)")
    })?;
    let umoci = require_binary("umoci", "umoci")?;
    let base = std::env::temp_dir().join("flotilla-testlab");
    fs::create_dir_all(&base).context("create test lab cache dir")?;
    let key = format!("busybox-oci-{}-{}-v1", md.size(), md.mtime());
    let final_dir = base.join(&key);
    if final_dir.join("index.json").is_file() {
        return Ok(final_dir);
    }
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&base)
        .context("create build dir")?;
    let layout = work.path().join("layout");
    let bundle = work.path().join("bundle");
    let image = format!("{}:bb", layout.display());
    run(Command::new(&umoci)
        .arg("init")
        .arg("--layout")
        .arg(&layout))?;
    run(Command::new(&umoci).args(["new", "--image", &image]))?;
    run(Command::new(&umoci)
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    fill_busybox_rootfs(&rootfs, busybox)?;
    run(Command::new(&umoci)
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    run(Command::new(&umoci).args([
        "config",
        "--image",
        &image,
        "--tag",
        BUSYBOX_TAG,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        BUSYBOX_PATH_ENV,
        "--architecture",
        "amd64",
        "--os",
        "linux",
    ]))?;
    match fs::rename(&layout, &final_dir) {
        Ok(()) => Ok(final_dir),
        // Another test process finished first: use theirs.
        Err(_) if final_dir.join("index.json").is_file() => Ok(final_dir),
        Err(e) => Err(e).with_context(|| format!("move layout to {}", final_dir.display())),
    }
}

fn fill_busybox_rootfs(rootfs: &Path, busybox: &Path) -> Result<()> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "tmp",
    ] {
        fs::create_dir_all(rootfs.join(d)).with_context(|| format!("create {d}"))?;
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))
        .context("chmod /tmp")?;
    fs::set_permissions(rootfs.join("root"), fs::Permissions::from_mode(0o700))
        .context("chmod /root")?;
    fs::copy(busybox, rootfs.join("bin/busybox")).context("copy busybox")?;
    fs::set_permissions(
        rootfs.join("bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .context("chmod busybox")?;
    let list = run(Command::new(busybox).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let link = rootfs.join(applet);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        symlink("/bin/busybox", &link).with_context(|| format!("link {applet}"))?;
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .context("write /etc/passwd")?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")
        .context("write /etc/group")?;
    Ok(())
}

/// Copy tag `tag` of the OCI layout at `layout` to `registry` as `name` (e.g. `busybox:latest`)
/// with skopeo; returns the pushed reference.
pub fn push_layout(registry: &Registry, layout: &Path, tag: &str, name: &str) -> Result<String> {
    let skopeo = require_binary("skopeo", "skopeo")?;
    let reference = registry.reference(name);
    let mut cmd = Command::new(skopeo);
    // --preserve-digests: fail rather than let skopeo recompress plain layers on the way.
    cmd.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if let Some((u, p)) = registry.credentials() {
        cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{reference}"));
    run(&mut cmd)?;
    Ok(reference)
}

/// Push the busybox test image to `registry` as `name`; returns the pushed reference.
pub fn push_busybox(registry: &Registry, name: &str) -> Result<String> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let layout = busybox_image_layout(dir.path())?;
    push_layout(registry, &layout, BUSYBOX_TAG, name)
}
