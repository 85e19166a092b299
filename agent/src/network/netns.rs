//! Sandboxes: network namespaces kept alive by a bind mount at `<run_dir>/netns/<container id>`.
//!
//! A namespace is created on a dedicated OS thread: the thread unshares its own network namespace
//! and bind-mounts `/proc/thread-self/ns/net` onto the sandbox file, so the tokio threads never
//! change namespace and nothing forks. Work inside an existing sandbox (addresses, routes) runs
//! the same way: a short-lived thread joins the namespace with `setns` and drives its own netlink
//! connection on a current-thread runtime, because a netlink socket talks to the namespace it
//! was created in. The file is the only handle: the namespace lives exactly as long as the mount
//! (and the processes of the container that joined it).

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::error::{NetError, Result};

/// Runs `work` on a new OS thread and awaits its result without blocking the runtime.
async fn on_thread<T, W>(what: &'static str, work: W) -> Result<T>
where
    T: Send + 'static,
    W: FnOnce() -> Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{what}"))
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| NetError::io("spawn a thread to", what, e))?;
    rx.await.map_err(|_| NetError::Sys {
        op: format!("{what}: worker thread panicked"),
        source: nix::Error::EIO,
    })?
}

/// Drives `f` with a netlink handle of the calling thread's namespace, on a private runtime.
fn with_netlink<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NetError::io("start a runtime in", "sandbox", e))?;
    rt.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::io("open netlink in", "sandbox", e))?;
        let task = tokio::spawn(conn);
        let out = f(handle).await;
        task.abort();
        out
    })
}

/// Creates the namespace file `path` (which must not exist) with loopback up.
pub async fn create(path: PathBuf) -> Result<()> {
    on_thread("create", move || {
        File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| NetError::io("create sandbox file", &path, e))?;
        let undo = |err: NetError| {
            let _ = umount2(&path, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&path);
            err
        };
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
            undo(NetError::Sys {
                op: "unshare a network namespace".into(),
                source: e,
            })
        })?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            undo(NetError::Sys {
                op: format!("bind-mount the namespace on {}", path.display()),
                source: e,
            })
        })?;
        with_netlink(|h| async move { super::link::set_up_by_name(&h, "lo").await }).map_err(undo)
    })
    .await
}

/// Runs `f` with a netlink handle inside the sandbox at `path`.
pub async fn run_in<T, F, Fut>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let path = path.to_path_buf();
    on_thread("enter", move || {
        let ns = File::open(&path).map_err(|e| NetError::io("open sandbox", &path, e))?;
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Sys {
            op: format!("enter sandbox {}", path.display()),
            source: e,
        })?;
        with_netlink(f)
    })
    .await
}

/// True when `path` is a mounted network namespace.
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Unmounts and deletes the sandbox file; a missing or unmounted file is fine.
pub fn remove(path: &Path) -> Result<()> {
    while is_netns(path) {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => break,
            Err(e) => {
                return Err(NetError::Sys {
                    op: format!("unmount sandbox {}", path.display()),
                    source: e,
                })
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetError::io("remove sandbox file", path, e)),
    }
}
