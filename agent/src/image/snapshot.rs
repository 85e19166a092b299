//! Overlay snapshots: container root filesystems made of unpacked layers (read-only lowers) plus
//! a private writable upper directory, joined by overlayfs.
//!
//! A snapshot lives in `root/<id>/` as `upper/` (the container's changes), `work/` (overlayfs
//! scratch space, same filesystem as `upper/`) and `rootfs/` (the mount point). Lowers are
//! layer directories produced by [`super::unpack`], whose whiteouts are already in overlay form.
//!
//! Invariants:
//! - Lower layers are never written: they are only ever overlay lowers (or a read-only bind).
//! - [`unmount`] and [`remove`] are idempotent: "not mounted" and "not there" are success, so a
//!   cleanup can be retried after a crash at any point of [`prepare`].
//! - [`remove`] never deletes through a mount: if `rootfs/` is still a mount point after
//!   unmounting, it fails instead of recursing into the lower layers.
//! - Overlay options must fit in one page (the limit of `mount(2)`'s data). When the absolute
//!   form does not fit, the lowers are given relative to their longest common parent directory,
//!   from a helper thread that unshares its filesystem context (`unshare(CLONE_FS)`) and
//!   `fchdir`s there, so the process working directory is never touched. If even that does not
//!   fit, mounting fails with [`SnapshotError::OptionsTooLong`] (no layer-merging fallback).
//! - Paths containing `,`, `:` or `\` are rejected rather than escaped: store paths never hold
//!   them, and overlay's escaping rules differ between kernel versions.
//!
//! The kernel refuses an overlay with a single lower and no upper ("at least 2 lowerdir are
//! needed while upperdir nonexistent"), so a read-only view of one layer is a read-only bind
//! mount instead; a single bottom layer has nothing below it to white out, but any whiteout
//! devices it carries are then visible as 0:0 character devices.
//!
//! Needs `CAP_SYS_ADMIN` in the initial user namespace (trusted.* xattrs, overlay mounts).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::{fchdir, sysconf, SysconfVar};
use tracing::{debug, warn};

/// Most stacked unmounts [`unmount`] performs on one target before giving up.
const MAX_STACKED_MOUNTS: usize = 64;

/// Why a snapshot or overlay mount operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("invalid snapshot id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("overlay path {path}: {reason}")]
    InvalidPath { path: PathBuf, reason: &'static str },
    #[error("overlay mount on {target} needs at least one lower layer")]
    NoLowers { target: PathBuf },
    #[error("overlay options for {target} are {len} bytes, over the {limit}-byte mount limit even with {layers} lower paths relative to {common}; use fewer layers or a shorter store path")]
    OptionsTooLong {
        target: PathBuf,
        len: usize,
        limit: usize,
        layers: usize,
        common: PathBuf,
    },
    #[error("mount {kind} on {target}: {source} (the kernel log may say why)")]
    Mount {
        kind: &'static str,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unmount {target}: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot {id:?} already exists at {path}; remove it first")]
    Exists { id: String, path: PathBuf },
    #[error("{path} is still a mount point after unmounting; refusing to delete through it")]
    StillMounted { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> SnapshotError + 'p {
    move |source| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One overlay (or read-only) mount of layer directories on a target directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// Lower layer directories, top-most first.
    lowers: Vec<PathBuf>,
    /// Writable upper directory; `None` for a read-only mount.
    upper: Option<PathBuf>,
    /// Overlay work directory (same filesystem as `upper`); `Some` exactly when `upper` is.
    work: Option<PathBuf>,
    target: PathBuf,
}

impl OverlayMount {
    /// A writable overlay: `lowers` (top-most first) under `upper`, with `work` as scratch.
    pub fn new(lowers: Vec<PathBuf>, upper: PathBuf, work: PathBuf, target: PathBuf) -> Self {
        Self {
            lowers,
            upper: Some(upper),
            work: Some(work),
            target,
        }
    }

    /// A read-only view of `lowers` (top-most first): `lowerdir=a:b` only, mounted read-only.
    /// A single lower becomes a read-only bind mount (see the module doc).
    pub fn read_only(lowers: Vec<PathBuf>, target: PathBuf) -> Self {
        Self {
            lowers,
            upper: None,
            work: None,
            target,
        }
    }

    pub fn lowers(&self) -> &[PathBuf] {
        &self.lowers
    }

    pub fn upper(&self) -> Option<&Path> {
        self.upper.as_deref()
    }

    pub fn work(&self) -> Option<&Path> {
        self.work.as_deref()
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The overlay option string with lowers given as `lowers` (absolute or relative).
    fn options_with(&self, lowers: &[PathBuf]) -> OsString {
        let mut opts = OsString::from("lowerdir=");
        for (i, l) in lowers.iter().enumerate() {
            if i > 0 {
                opts.push(":");
            }
            opts.push(l);
        }
        if let (Some(upper), Some(work)) = (&self.upper, &self.work) {
            opts.push(",upperdir=");
            opts.push(upper);
            opts.push(",workdir=");
            opts.push(work);
        }
        opts
    }

    /// The overlay option string with absolute paths, as [`OverlayMount::mount`] tries first.
    pub fn options(&self) -> Result<OsString, SnapshotError> {
        self.validate()?;
        Ok(self.options_with(&self.lowers))
    }

    fn validate(&self) -> Result<(), SnapshotError> {
        if self.lowers.is_empty() {
            return Err(SnapshotError::NoLowers {
                target: self.target.clone(),
            });
        }
        let all = self
            .lowers
            .iter()
            .chain(self.upper.iter())
            .chain(self.work.iter())
            .chain(std::iter::once(&self.target));
        for p in all {
            if !p.is_absolute() {
                return Err(SnapshotError::InvalidPath {
                    path: p.clone(),
                    reason: "must be absolute",
                });
            }
            if p.as_os_str()
                .as_bytes()
                .iter()
                .any(|b| matches!(b, b',' | b':' | b'\\' | 0))
            {
                return Err(SnapshotError::InvalidPath {
                    path: p.clone(),
                    reason: "contains `,`, `:`, `\\` or NUL, which overlay options cannot carry",
                });
            }
        }
        Ok(())
    }

    /// Mounts the overlay on `target` (which must exist).
    pub fn mount(&self) -> Result<(), SnapshotError> {
        self.validate()?;
        let mount_err = |kind| {
            move |errno: Errno| SnapshotError::Mount {
                kind,
                target: self.target.clone(),
                source: errno.into(),
            }
        };
        if self.upper.is_none() && self.lowers.len() == 1 {
            return self.bind_read_only();
        }
        let flags = if self.upper.is_none() {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        let limit = page_size();
        let opts = self.options_with(&self.lowers);
        if opts.len() < limit {
            debug!(target = %self.target.display(), layers = self.lowers.len(), "mounting overlay");
            return mount(
                Some("overlay"),
                &self.target,
                Some("overlay"),
                flags,
                Some(opts.as_os_str()),
            )
            .map_err(mount_err("overlay"));
        }

        let common = common_parent(&self.lowers);
        let relative: Vec<PathBuf> = self
            .lowers
            .iter()
            .map(|l| l.strip_prefix(&common).unwrap_or(l).to_path_buf())
            .collect();
        let opts = self.options_with(&relative);
        if opts.len() >= limit {
            return Err(SnapshotError::OptionsTooLong {
                target: self.target.clone(),
                len: opts.len(),
                limit,
                layers: self.lowers.len(),
                common,
            });
        }
        debug!(target = %self.target.display(), layers = self.lowers.len(), common = %common.display(),
            "overlay options exceed a page; mounting with lowers relative to their common parent");
        mount_from_dir(&common, &self.target, flags, &opts).map_err(|e| match e {
            InDir::Open(errno) => SnapshotError::Io {
                op: "open common lower parent",
                path: common.clone(),
                source: errno.into(),
            },
            InDir::Mount(errno) => mount_err("overlay")(errno),
        })
    }

    fn bind_read_only(&self) -> Result<(), SnapshotError> {
        let lower = &self.lowers[0];
        let err = |errno: Errno| SnapshotError::Mount {
            kind: "read-only bind",
            target: self.target.clone(),
            source: errno.into(),
        };
        mount(
            Some(lower.as_path()),
            &self.target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err)?;
        let remount = mount(
            None::<&str>,
            &self.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
        if let Err(errno) = remount {
            // Never leave a writable view of a layer behind.
            if let Err(e) = umount2(&self.target, MntFlags::MNT_DETACH) {
                warn!(target = %self.target.display(), error = %e, "cannot undo writable bind of a layer");
            }
            return Err(err(errno));
        }
        Ok(())
    }
}

fn page_size() -> usize {
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => usize::try_from(n).unwrap_or(4096),
        _ => 4096,
    }
}

/// Longest common ancestor directory of `paths` (absolute), never equal to any of them.
fn common_parent(paths: &[PathBuf]) -> PathBuf {
    let mut common: Vec<Component<'_>> = match paths.first() {
        Some(p) => p.parent().unwrap_or(p).components().collect(),
        None => return PathBuf::from("/"),
    };
    for p in &paths[1..] {
        let parent = p.parent().unwrap_or(p);
        let shared = common
            .iter()
            .zip(parent.components())
            .take_while(|(a, b)| *a == b)
            .count();
        common.truncate(shared);
    }
    common.iter().collect()
}

enum InDir {
    Open(Errno),
    Mount(Errno),
}

/// Mounts an overlay whose option paths are relative to `dir`, from a helper thread with its
/// own filesystem context so the process working directory is untouched.
fn mount_from_dir(dir: &Path, target: &Path, flags: MsFlags, opts: &OsStr) -> Result<(), InDir> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // The thread's cwd is now private: fchdir below does not move other threads.
            unshare(CloneFlags::CLONE_FS).map_err(InDir::Mount)?;
            let fd = nix::fcntl::open(
                dir,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(InDir::Open)?;
            fchdir(&fd).map_err(InDir::Open)?;
            mount(Some("overlay"), target, Some("overlay"), flags, Some(opts)).map_err(InDir::Mount)
        })
        .join()
        .unwrap_or(Err(InDir::Mount(Errno::EIO)))
    })
}

/// Unmounts `target` (lazily, `MNT_DETACH`; a final symlink is not followed), including
/// mounts stacked on it. Not mounted or missing is success, so cleanup can be repeated.
pub fn unmount(target: &Path) -> Result<(), SnapshotError> {
    for _ in 0..MAX_STACKED_MOUNTS {
        match umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => {
                return Err(SnapshotError::Unmount {
                    target: target.to_path_buf(),
                    source: errno.into(),
                })
            }
        }
    }
    Err(SnapshotError::Unmount {
        target: target.to_path_buf(),
        source: io::Error::other(format!("more than {MAX_STACKED_MOUNTS} stacked mounts")),
    })
}

/// A prepared, mounted container root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    /// `root/<id>`.
    pub dir: PathBuf,
    /// The mounted merged view: the container's root filesystem.
    pub rootfs: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Lower layers, top-most first.
    pub lowers: Vec<PathBuf>,
}

fn check_id(id: &str) -> Result<(), SnapshotError> {
    let bad = |reason| {
        Err(SnapshotError::InvalidId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() || id == "." || id == ".." {
        return bad("must be a plain, non-empty name");
    }
    if id.len() > 128 {
        return bad("longer than 128 bytes");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("only ASCII letters, digits, `-`, `_` and `.` are allowed");
    }
    Ok(())
}

/// Creates `root/<id>/{upper,work,rootfs}` and mounts `lowers` (top-most first) under a fresh
/// upper on `rootfs`. With no lowers (a `FROM scratch` image) an empty `lower/` is used.
/// On failure everything created here is removed again.
pub fn prepare(root: &Path, id: &str, lowers: Vec<PathBuf>) -> Result<Snapshot, SnapshotError> {
    check_id(id)?;
    fs::create_dir_all(root).map_err(io_err("create snapshot root", root))?;
    let dir = root.join(id);
    let mut builder = fs::DirBuilder::new();
    // Traversable (a runtime may enter it as a mapped user) but not listable.
    builder.mode(0o711);
    match builder.create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(SnapshotError::Exists {
                id: id.to_owned(),
                path: dir,
            })
        }
        Err(e) => return Err(io_err("create snapshot directory", &dir)(e)),
    }
    match populate_and_mount(&dir, id, lowers) {
        Ok(snap) => Ok(snap),
        Err(e) => {
            if let Err(cleanup) = remove(root, id) {
                warn!(snapshot = id, error = %cleanup, "cannot clean up failed snapshot");
            }
            Err(e)
        }
    }
}

fn populate_and_mount(
    dir: &Path,
    id: &str,
    mut lowers: Vec<PathBuf>,
) -> Result<Snapshot, SnapshotError> {
    let upper = dir.join("upper");
    let work = dir.join("work");
    let rootfs = dir.join("rootfs");
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o755);
    for d in [&upper, &work, &rootfs] {
        builder.create(d).map_err(io_err("create directory", d))?;
    }
    if lowers.is_empty() {
        let empty = dir.join("lower");
        builder
            .create(&empty)
            .map_err(io_err("create directory", &empty))?;
        lowers.push(empty);
    }
    // The merged root directory takes its owner and mode from the upper directory: copy them
    // from the top-most lower so "/" looks as the image says.
    let top = fs::metadata(&lowers[0]).map_err(io_err("stat lower layer", &lowers[0]))?;
    std::os::unix::fs::chown(&upper, Some(top.uid()), Some(top.gid()))
        .map_err(io_err("chown upper directory", &upper))?;
    fs::set_permissions(
        &upper,
        std::os::unix::fs::PermissionsExt::from_mode(top.mode() & 0o7777),
    )
    .map_err(io_err("chmod upper directory", &upper))?;

    let overlay = OverlayMount::new(lowers.clone(), upper.clone(), work.clone(), rootfs.clone());
    overlay.mount()?;
    debug!(snapshot = id, rootfs = %rootfs.display(), layers = lowers.len(), "snapshot mounted");
    Ok(Snapshot {
        id: id.to_owned(),
        dir: dir.to_path_buf(),
        rootfs,
        upper,
        work,
        lowers,
    })
}

/// Mounts the overlay of an existing snapshot again (after a host restart unmounted it), keeping
/// its upper directory: the container's changes survive. Returns false when it was mounted.
pub fn remount(root: &Path, id: &str, mut lowers: Vec<PathBuf>) -> Result<bool, SnapshotError> {
    check_id(id)?;
    let dir = root.join(id);
    let rootfs = dir.join("rootfs");
    let dir_md = fs::symlink_metadata(&dir).map_err(io_err("inspect snapshot directory", &dir))?;
    let root_md =
        fs::symlink_metadata(&rootfs).map_err(io_err("inspect snapshot rootfs", &rootfs))?;
    if root_md.dev() != dir_md.dev() {
        return Ok(false);
    }
    if lowers.is_empty() {
        lowers.push(dir.join("lower"));
    }
    let overlay = OverlayMount::new(lowers, dir.join("upper"), dir.join("work"), rootfs);
    overlay.mount()?;
    debug!(snapshot = id, "snapshot mounted again");
    Ok(true)
}

/// Unmounts and deletes snapshot `id`. Idempotent: a missing snapshot, an unmounted rootfs or a
/// half-made directory left by a crash are all fine.
pub fn remove(root: &Path, id: &str) -> Result<(), SnapshotError> {
    check_id(id)?;
    let dir = root.join(id);
    let dir_md = match fs::symlink_metadata(&dir) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspect snapshot directory", &dir)(e)),
    };
    let rootfs = dir.join("rootfs");
    if dir_md.is_dir() {
        unmount(&rootfs)?;
        match fs::symlink_metadata(&rootfs) {
            Ok(md) if md.dev() != dir_md.dev() => {
                return Err(SnapshotError::StillMounted { path: rootfs })
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect rootfs", &rootfs)(e)),
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("delete snapshot directory", &dir)(e)),
        }
    } else {
        // Not ours to interpret: a stray file or symlink named like the snapshot.
        fs::remove_file(&dir).map_err(io_err("delete stray snapshot entry", &dir))?;
    }
    debug!(snapshot = id, "snapshot removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::unpack::fixtures::Layer;
    use crate::image::unpack::{unpack_layer, UnpackOptions};

    /// Unmounts on drop, so a failing assertion never leaves a mount behind.
    struct MountGuard(PathBuf);

    impl Drop for MountGuard {
        fn drop(&mut self) {
            let _ = unmount(&self.0);
        }
    }

    /// Removes the snapshot on drop.
    struct SnapshotGuard<'a>(&'a Path, &'a str);

    impl Drop for SnapshotGuard<'_> {
        fn drop(&mut self) {
            let _ = remove(self.0, self.1);
        }
    }

    fn is_mounted(target: &Path) -> bool {
        let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let want = target.to_str().expect("utf-8 test path");
        info.lines().any(|l| l.split(' ').nth(4) == Some(want))
    }

    fn unpack(layer: &mut Layer, dest: &Path) {
        let tar = std::mem::replace(layer, Layer::new()).finish();
        fs::create_dir_all(dest).unwrap();
        unpack_layer(tar.as_slice(), dest, &UnpackOptions::default()).expect("fixture layer");
    }

    /// Bottom layer and a top layer that whites out `gone`, `etc/hosts` and makes `opq` opaque.
    fn two_layers(base: &Path) -> Vec<PathBuf> {
        let bottom = base.join("layers/bottom");
        let top = base.join("layers/top");
        let mut l = Layer::new();
        l.dir("etc", 0o755)
            .file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
            .file("etc/keep", b"keep", 0o644)
            .dir("opq", 0o755)
            .file("opq/a", b"a", 0o644)
            .file("opq/b", b"b", 0o644)
            .file("gone", b"gone", 0o644)
            .file("shadowed", b"old", 0o644);
        unpack(&mut l, &bottom);
        l.dir("etc", 0o755)
            .whiteout("etc", "hosts")
            .whiteout("", "gone")
            .dir("opq", 0o755)
            .opaque("opq")
            .file("opq/c", b"c", 0o644)
            .file("shadowed", b"new", 0o644);
        unpack(&mut l, &top);
        vec![top, bottom]
    }

    fn assert_merged_view(root: &Path) {
        assert!(!root.join("gone").exists(), "whiteout hides a lower file");
        assert!(
            !root.join("etc/hosts").exists(),
            "whiteout in a subdirectory"
        );
        assert_eq!(fs::read(root.join("etc/keep")).unwrap(), b"keep");
        let mut opq: Vec<_> = fs::read_dir(root.join("opq"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        opq.sort();
        assert_eq!(
            opq,
            vec![OsString::from("c")],
            "opaque dir hides the lower content"
        );
        assert_eq!(fs::read(root.join("shadowed")).unwrap(), b"new");
    }

    #[test]
    fn options_are_built_and_checked() {
        let m = OverlayMount::new(
            vec!["/l/top".into(), "/l/bottom".into()],
            "/s/upper".into(),
            "/s/work".into(),
            "/s/rootfs".into(),
        );
        assert_eq!(
            m.options().unwrap(),
            "lowerdir=/l/top:/l/bottom,upperdir=/s/upper,workdir=/s/work"
        );
        let ro = OverlayMount::read_only(vec!["/a".into(), "/b".into()], "/t".into());
        assert_eq!(ro.options().unwrap(), "lowerdir=/a:/b");
        let bad = OverlayMount::read_only(vec!["/a:b".into(), "/c".into()], "/t".into());
        assert!(matches!(
            bad.options(),
            Err(SnapshotError::InvalidPath { .. })
        ));
        let rel = OverlayMount::read_only(vec!["a".into(), "/c".into()], "/t".into());
        assert!(matches!(
            rel.options(),
            Err(SnapshotError::InvalidPath { .. })
        ));
        let none = OverlayMount::read_only(vec![], "/t".into());
        assert!(matches!(
            none.options(),
            Err(SnapshotError::NoLowers { .. })
        ));
    }

    #[test]
    fn common_parent_is_a_strict_ancestor() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(common_parent(&[p("/s/l/a"), p("/s/l/b")]), p("/s/l"));
        assert_eq!(common_parent(&[p("/s/l/a"), p("/s/m/b")]), p("/s"));
        assert_eq!(common_parent(&[p("/s/l/a")]), p("/s/l"));
        assert_eq!(common_parent(&[p("/s/l"), p("/s/l/b")]), p("/s"));
    }

    #[test]
    fn ids_are_plain_names() {
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        check_id("c0ffee_1.2-x").unwrap();
    }

    #[test]
    fn prepared_snapshot_merges_layers_and_writes_to_upper_only() {
        let tmp = tempfile::tempdir().unwrap();
        let lowers = two_layers(tmp.path());
        let root = tmp.path().join("snapshots");
        let _cleanup = SnapshotGuard(&root, "c1");
        let snap = prepare(&root, "c1", lowers.clone()).expect("prepare");
        let _guard = MountGuard(snap.rootfs.clone());
        assert!(is_mounted(&snap.rootfs));
        assert_merged_view(&snap.rootfs);

        fs::write(snap.rootfs.join("new-file"), b"written").unwrap();
        fs::write(snap.rootfs.join("etc/keep"), b"changed").unwrap();
        assert_eq!(fs::read(snap.upper.join("new-file")).unwrap(), b"written");
        assert_eq!(fs::read(snap.upper.join("etc/keep")).unwrap(), b"changed");
        for l in &lowers {
            assert!(!l.join("new-file").exists());
        }
        assert_eq!(fs::read(lowers[1].join("etc/keep")).unwrap(), b"keep");

        assert!(matches!(
            prepare(&root, "c1", lowers.clone()),
            Err(SnapshotError::Exists { .. })
        ));

        remove(&root, "c1").expect("remove");
        assert!(!is_mounted(&snap.rootfs));
        assert!(!snap.dir.exists());
        remove(&root, "c1").expect("remove is idempotent");
        assert_eq!(fs::read(lowers[1].join("etc/keep")).unwrap(), b"keep");
    }

    #[test]
    fn overlay_mount_and_unmount_directly() {
        let tmp = tempfile::tempdir().unwrap();
        let lowers = two_layers(tmp.path());
        let (upper, work, target) = (
            tmp.path().join("u"),
            tmp.path().join("w"),
            tmp.path().join("t"),
        );
        for d in [&upper, &work, &target] {
            fs::create_dir(d).unwrap();
        }
        let m = OverlayMount::new(lowers, upper.clone(), work, target.clone());
        m.mount().expect("mount");
        let guard = MountGuard(target.clone());
        assert_merged_view(&target);
        fs::remove_file(target.join("etc/keep")).unwrap();
        let wh = fs::symlink_metadata(upper.join("etc/keep")).unwrap();
        assert_eq!(
            wh.rdev(),
            0,
            "deleting a lower file leaves a whiteout in upper"
        );
        unmount(&target).expect("unmount");
        assert!(!is_mounted(&target));
        unmount(&target).expect("unmount is idempotent");
        unmount(&tmp.path().join("missing")).expect("missing target is fine");
        drop(guard);
    }

    #[test]
    fn read_only_views() {
        let tmp = tempfile::tempdir().unwrap();
        let lowers = two_layers(tmp.path());
        let target = tmp.path().join("ro");
        fs::create_dir(&target).unwrap();
        OverlayMount::read_only(lowers.clone(), target.clone())
            .mount()
            .expect("read-only overlay");
        let guard = MountGuard(target.clone());
        assert_merged_view(&target);
        let err = fs::write(target.join("x"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        drop(guard);
        assert!(!is_mounted(&target));

        OverlayMount::read_only(vec![lowers[1].clone()], target.clone())
            .mount()
            .expect("single-layer read-only view");
        let _guard = MountGuard(target.clone());
        assert_eq!(fs::read(target.join("gone")).unwrap(), b"gone");
        let err = fs::write(target.join("x"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    }

    #[test]
    fn long_option_strings_fall_back_to_relative_lowers() {
        let tmp = tempfile::tempdir().unwrap();
        // A long store path and digest-like layer names: ~290 bytes per absolute lower.
        let layers = tmp.path().join("p".repeat(200)).join("layers");
        let mut lowers = Vec::new();
        for i in 0..30 {
            let dir = layers.join(format!("{i:03}{}", "e".repeat(61)));
            let mut l = Layer::new();
            l.file(&format!("file-{i:03}"), format!("{i}").as_bytes(), 0o644);
            unpack(&mut l, &dir);
            lowers.push(dir);
        }
        lowers.reverse();
        let root = tmp.path().join("snapshots");
        let m = OverlayMount::read_only(lowers.clone(), tmp.path().into());
        assert!(
            m.options().unwrap().len() > page_size(),
            "fixture exceeds a page"
        );
        let cwd = std::env::current_dir().unwrap();
        let _cleanup = SnapshotGuard(&root, "many");
        let snap = prepare(&root, "many", lowers).expect("prepare with long options");
        let _guard = MountGuard(snap.rootfs.clone());
        assert_eq!(
            std::env::current_dir().unwrap(),
            cwd,
            "process cwd untouched"
        );
        assert_eq!(fs::read(snap.rootfs.join("file-000")).unwrap(), b"0");
        assert_eq!(fs::read(snap.rootfs.join("file-029")).unwrap(), b"29");
    }

    #[test]
    fn options_too_long_even_relative_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let lowers: Vec<PathBuf> = (0..200)
            .map(|i| tmp.path().join(format!("{i:03}-{}", "y".repeat(40))))
            .collect();
        let target = tmp.path().join("t");
        let err = OverlayMount::read_only(lowers, target).mount().unwrap_err();
        assert!(matches!(err, SnapshotError::OptionsTooLong { .. }), "{err}");
    }

    #[test]
    fn remove_handles_half_made_and_missing_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("snapshots");
        remove(&root, "never").expect("missing snapshot");
        fs::create_dir_all(root.join("half/upper/etc")).unwrap();
        fs::create_dir_all(root.join("half/work/work")).unwrap();
        fs::write(root.join("half/upper/etc/x"), b"x").unwrap();
        remove(&root, "half").expect("half-made snapshot");
        assert!(!root.join("half").exists());
        assert!(matches!(
            remove(&root, "../x"),
            Err(SnapshotError::InvalidId { .. })
        ));
    }

    #[test]
    fn failed_mount_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("snapshots");
        let err = prepare(&root, "bad", vec![tmp.path().join("no-such-layer")]).unwrap_err();
        assert!(matches!(err, SnapshotError::Io { .. }), "{err}");
        assert!(!root.join("bad").exists());
    }
}
