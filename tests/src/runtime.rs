//! Runtime lab: busybox bundles and a private `flotilla-runtime --root`, cleaned up on drop.
//!
//! Every container a test creates lives under the lab's own state root; dropping the lab deletes
//! them with `delete --force` (processes, cgroups) even when the test panicked.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Path of a workspace binary built next to the running test (target/<profile>/NAME).
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the test binary")?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no parent directory")?;
    let p = dir.join(name);
    if !p.exists() {
        bail!("{} is missing: build it first with `cargo build --workspace --bins` (deploy/test.sh does)", p.display());
    }
    Ok(p)
}

/// Fills `rootfs` with Debian's static busybox, one symlink per applet, and a minimal /etc.
pub fn busybox_rootfs(rootfs: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: apt-get install busybox-static");
    }
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "tmp", "var/www",
    ] {
        std::fs::create_dir_all(rootfs.join(d))
            .with_context(|| format!("create {d} in {}", rootfs.display()))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::copy(busybox, rootfs.join("bin/busybox")).context("copy busybox")?;
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("busybox --list-full")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = rootfs.join(applet);
        if applet == "bin/busybox" || link.exists() {
            continue;
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link)
            .with_context(|| format!("symlink {}", link.display()))?;
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

pub struct RuntimeLab {
    pub root: tempfile::TempDir,
    pub work: tempfile::TempDir,
    pub runtime: PathBuf,
}

impl RuntimeLab {
    pub fn new() -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("runtime tests need root (namespaces, cgroups, mounts)");
        }
        Ok(RuntimeLab {
            root: tempfile::Builder::new().prefix("flt-rt-root").tempdir()?,
            work: tempfile::Builder::new().prefix("flt-rt-work").tempdir()?,
            runtime: bin("flotilla-runtime")?,
        })
    }

    /// A command for `flotilla-runtime --root <lab root> ARGS`.
    pub fn rt(&self) -> Command {
        let mut c = Command::new(&self.runtime);
        c.arg("--root").arg(self.root.path());
        c
    }

    /// A new busybox bundle named `name` whose process runs `args`; `edit` adjusts config.json.
    pub fn bundle(
        &self,
        name: &str,
        args: &[&str],
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> Result<PathBuf> {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir)?;
        busybox_rootfs(&dir.join("rootfs"))?;
        let out = self
            .rt()
            .arg("spec")
            .arg("--bundle")
            .arg(&dir)
            .arg("--")
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "flotilla-runtime spec failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let path = dir.join("config.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        edit(&mut v);
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
        Ok(dir)
    }

    /// `flotilla-runtime run --bundle B ID`, output captured.
    pub fn run(&self, id: &str, bundle: &Path) -> Result<Output> {
        Ok(self
            .rt()
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .output()?)
    }

    /// Runs `flotilla-runtime ARGS` for commands that leave a container process behind (`create`,
    /// `run -d`): that process inherits stdio, so output goes to files rather than pipes that would
    /// never reach EOF. Returns the exit status and what was written to stderr.
    pub fn detached<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[S],
    ) -> Result<(std::process::ExitStatus, String)> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tag = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let err_path = self
            .work
            .path()
            .join(format!("stderr-{}-{tag}", std::process::id()));
        let err = std::fs::File::create(&err_path)?;
        let status = self
            .rt()
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .status()?;
        let text = std::fs::read_to_string(&err_path).unwrap_or_default();
        Ok((status, text))
    }

    /// `run -d --bundle B ID` with stdio on files (see [`detached`](Self::detached)); fails
    /// unless it succeeds.
    pub fn run_detached(&self, id: &str, bundle: &Path) -> Result<()> {
        let (status, err) = self.detached(&[
            "run".as_ref(),
            "-d".as_ref(),
            "--bundle".as_ref(),
            bundle.as_os_str(),
            id.as_ref(),
        ])?;
        if !status.success() {
            bail!("run -d {id}: {err}");
        }
        Ok(())
    }

    /// The pid of a container's init, from its state.
    pub fn init_pid(&self, id: &str) -> Result<i32> {
        let st = self.state(id)?;
        match st["pid"].as_i64() {
            Some(p) if p > 0 => Ok(p as i32),
            _ => bail!("container {id} has no pid: {st}"),
        }
    }

    /// `flotilla-runtime exec ARGS` for a process that ends: stdin empty, output captured.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output> {
        Ok(self
            .rt()
            .arg("exec")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()?)
    }

    /// The OCI state JSON of a container.
    pub fn state(&self, id: &str) -> Result<serde_json::Value> {
        let out = self.rt().args(["state", id]).output()?;
        if !out.status.success() {
            bail!("state {id}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `delete --force ID`, asserting that it succeeds.
    pub fn delete_force(&self, id: &str) {
        let out = self
            .rt()
            .args(["delete", "--force", id])
            .output()
            .expect("flotilla-runtime delete");
        assert!(
            out.status.success(),
            "delete --force {id}: {}",
            stderr(&out)
        );
    }

    /// Asserts that container `id` left no record, state directory or cgroup behind.
    pub fn assert_nothing_left(&self, id: &str) {
        assert!(
            self.ids().expect("ids").is_empty(),
            "containers left: {:?}",
            self.ids()
        );
        assert!(
            !self.root.path().join(id).exists(),
            "state directory of {id} left"
        );
        assert!(
            cgroup_dirs(id).is_empty(),
            "cgroups left: {:?}",
            cgroup_dirs(id)
        );
    }

    pub fn ids(&self) -> Result<Vec<String>> {
        let out = self.rt().args(["list", "-q"]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

impl Drop for RuntimeLab {
    fn drop(&mut self) {
        if let Ok(ids) = self.ids() {
            for id in ids {
                let _ = self.rt().args(["delete", "--force", &id]).status();
            }
        }
    }
}

/// A container id unique to this test process: the cgroup path `flotilla/<id>` is shared by every
/// runtime root on the host, so fixed ids would collide with other test runs.
pub fn unique_id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// The container's cgroup directories that still exist, in every hierarchy.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("flotilla").join(id))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default()
}

/// stdout as a trimmed string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// stderr as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}
