//! The container's filesystem view: spec mounts, `/dev`, pivot_root, masked and read-only paths.
//!
//! Runs inside the container's mount namespace, in its init, before the user process is executed.
//! Invariants: every mount target is resolved inside the rootfs with symlinks interpreted relative
//! to the rootfs (a hostile image cannot redirect a mount onto the host); the root is made a slave
//! mount first so nothing propagates back to the host; the old root is detached after pivot_root.
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::SFlag;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use super::error::RuntimeError;
use super::syscall::{FileKind, Syscall};

/// A spec mount's options split into what mount(2) takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Flags cleared by options such as `rw`, `suid`, `dev`, `exec`.
    pub clear: MsFlags,
    /// Propagation changes applied by separate mount calls (rprivate, shared, ...).
    pub propagation: Vec<MsFlags>,
    /// Options the filesystem itself interprets (mode=755, size=65536k, ...).
    pub data: Vec<String>,
    pub bind: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            clear: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
            bind: false,
        }
    }
}

/// Parses OCI mount options (`ro`, `nosuid`, `rbind`, `rprivate`, `mode=755`, ...).
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" | "rdonly" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                o.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                o.propagation
                    .push(propagation_flag(opt).unwrap_or(MsFlags::MS_PRIVATE));
                continue;
            }
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
        o.clear.insert(clear);
    }
    o
}

/// `rslave` and friends as mount(2) flags; `None` for anything else.
pub fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Joins `path` (interpreted inside the container) onto `root`, resolving symlinks as if `root`
/// were `/`: the result never leaves `root`. `readlink` answers the target of a host path that is a
/// symlink, `None` otherwise.
pub fn secure_join(
    root: &Path,
    path: &Path,
    readlink: &dyn Fn(&Path) -> Option<PathBuf>,
) -> PathBuf {
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> =
        path.components().rev().filter_map(component_name).collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            out.pop();
            continue;
        }
        let candidate: PathBuf = root.join(out.iter().collect::<PathBuf>()).join(&part);
        match readlink(&candidate) {
            Some(target) if links < 255 => {
                links += 1;
                if target.is_absolute() {
                    out.clear();
                }
                for c in target.components().rev().filter_map(component_name) {
                    pending.push(c);
                }
            }
            _ => out.push(part),
        }
    }
    root.join(out.iter().collect::<PathBuf>())
}

fn component_name(c: Component<'_>) -> Option<std::ffi::OsString> {
    match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    }
}

fn host_readlink(p: &Path) -> Option<PathBuf> {
    let meta = std::fs::symlink_metadata(p).ok()?;
    if meta.file_type().is_symlink() {
        std::fs::read_link(p).ok()
    } else {
        None
    }
}

/// The devices every container gets (OCI runtime spec "Default Devices").
pub fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

const DEV_SYMLINKS: [(&str, &str); 5] = [
    ("/proc/self/fd", "dev/fd"),
    ("/proc/self/fd/0", "dev/stdin"),
    ("/proc/self/fd/1", "dev/stdout"),
    ("/proc/self/fd/2", "dev/stderr"),
    ("pts/ptmx", "dev/ptmx"),
];

/// What rootfs setup needs to know besides the spec.
pub struct RootfsContext<'a> {
    pub rootfs: &'a Path,
    /// In a new user namespace device nodes cannot be created: they are bind-mounted from the host.
    pub in_userns: bool,
    /// A fresh sysfs can be mounted (a new network namespace, or a joined one without a user
    /// namespace); otherwise the host's /sys is bind-mounted read-only.
    pub new_netns: bool,
    pub readlink: &'a dyn Fn(&Path) -> Option<PathBuf>,
}

/// Mounts everything the spec asks for under the rootfs and creates `/dev`; stops before pivot_root.
pub fn prepare(
    sys: &dyn Syscall,
    spec: &Spec,
    ctx: &RootfsContext<'_>,
) -> Result<(), RuntimeError> {
    let linux = spec.linux().as_ref();
    let propagation = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .map(|p| {
            propagation_flag(p).ok_or_else(|| RuntimeError::InvalidSpec {
                path: "config.json".into(),
                reason: format!("unknown rootfsPropagation {p:?}"),
            })
        })
        .transpose()?
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    sys.mount(None, Path::new("/"), None, propagation, None)?;
    // pivot_root needs the new root to be a mount point.
    sys.mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let mut dev_is_tmpfs = false;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        mount_one(sys, m, ctx)?;
    }
    if dev_is_tmpfs {
        create_devices(
            sys,
            linux
                .and_then(|l| l.devices().as_deref())
                .unwrap_or_default(),
            ctx,
        )?;
    }
    Ok(())
}

fn mount_one(sys: &dyn Syscall, m: &Mount, ctx: &RootfsContext<'_>) -> Result<(), RuntimeError> {
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.bind { "bind" } else { "none" });
    let target = secure_join(ctx.rootfs, m.destination(), ctx.readlink);
    let is_bind = opts.bind || typ == "bind";
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    if typ == "cgroup" || typ == "cgroup2" {
        return Err(RuntimeError::InvalidSpec {
            path: "config.json".into(),
            reason: format!(
                "mount of type {typ} at {} is not supported yet",
                m.destination().display()
            ),
        });
    }
    if is_bind && sys.kind(&source) != FileKind::Dir {
        if sys.kind(&target) == FileKind::Missing {
            sys.create_file(&target)?;
        }
    } else {
        sys.mkdir_all(&target, 0o755)?;
    }
    let data = (!opts.data.is_empty()).then(|| opts.data.join(","));
    if is_bind {
        let base = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        sys.mount(Some(&source), &target, None, base, None)?;
        // A bind mount ignores every flag but MS_BIND/MS_REC: apply ro, nosuid, ... by remounting.
        let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            sys.mount(
                None,
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                None,
            )?;
        }
    } else if typ == "sysfs" && !ctx.new_netns {
        // sysfs can only be mounted by the owner of the network namespace: bind the host's.
        sys.mount(
            Some(Path::new("/sys")),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        sys.mount(
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        )?;
    } else {
        sys.mount(
            Some(&source),
            &target,
            Some(typ),
            opts.flags,
            data.as_deref(),
        )?;
    }
    for p in &opts.propagation {
        sys.mount(None, &target, None, *p, None)?;
    }
    Ok(())
}

/// One device node to create in the container's /dev.
struct DeviceNode {
    path: PathBuf,
    kind: SFlag,
    mode: u32,
    major: u64,
    minor: u64,
    owner: Option<(u32, u32)>,
}

fn create_devices(
    sys: &dyn Syscall,
    extra: &[LinuxDevice],
    ctx: &RootfsContext<'_>,
) -> Result<(), RuntimeError> {
    let mut devices: Vec<DeviceNode> = default_devices()
        .into_iter()
        .map(|(p, major, minor)| DeviceNode {
            path: p.into(),
            kind: SFlag::S_IFCHR,
            mode: 0o666,
            major,
            minor,
            owner: None,
        })
        .collect();
    for d in extra {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(RuntimeError::InvalidSpec {
                    path: "config.json".into(),
                    reason: format!(
                        "device {} has type \"a\", which only cgroup rules take",
                        d.path().display()
                    ),
                })
            }
        };
        devices.retain(|x| x.path != *d.path());
        devices.push(DeviceNode {
            path: d.path().clone(),
            kind,
            mode: d.file_mode().unwrap_or(0o666),
            major: d.major() as u64,
            minor: d.minor() as u64,
            owner: Some((d.uid().unwrap_or(0), d.gid().unwrap_or(0))),
        });
    }
    for dev in devices {
        let target = secure_join(ctx.rootfs, &dev.path, ctx.readlink);
        if let Some(parent) = target.parent() {
            sys.mkdir_all(parent, 0o755)?;
        }
        if ctx.in_userns {
            // Device nodes cannot be created in a user namespace: bind the host's node instead.
            if sys.kind(&target) == FileKind::Missing {
                sys.create_file(&target)?;
            }
            sys.mount(Some(&dev.path), &target, None, MsFlags::MS_BIND, None)?;
        } else {
            sys.mknod(&target, dev.kind, dev.mode, dev.major, dev.minor)?;
            if let Some((uid, gid)) = dev.owner {
                sys.chown(&target, uid, gid)?;
            }
        }
    }
    for (target, link) in DEV_SYMLINKS {
        sys.symlink(Path::new(target), &ctx.rootfs.join(link))?;
    }
    sys.symlink(Path::new("/proc/kcore"), &ctx.rootfs.join("dev/core"))?;
    Ok(())
}

/// After `prepare`: switch to the new root, then mask and protect paths, then make the root read-only
/// if asked. Masked paths that do not exist in the image are skipped, as the spec says.
pub fn finish(sys: &dyn Syscall, spec: &Spec, rootfs: &Path) -> Result<(), RuntimeError> {
    sys.pivot_root(rootfs)?;
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
    {
        let path = Path::new(p);
        match sys.kind(path) {
            FileKind::Missing => {}
            FileKind::Dir => sys.mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?,
            FileKind::File => sys.mount(
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )?,
        }
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or_default()
    {
        let path = Path::new(p);
        if sys.kind(path) == FileKind::Missing {
            continue;
        }
        sys.mount(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        sys.mount(
            None,
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        )?;
    }
    if let Some(sysctl) = linux.and_then(|l| l.sysctl().as_ref()) {
        let mut keys: Vec<_> = sysctl.keys().collect();
        keys.sort();
        for k in keys {
            let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
            sys.write_file(&path, &sysctl[k])?;
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// The readlink used for real setups.
pub fn real_readlink() -> &'static dyn Fn(&Path) -> Option<PathBuf> {
    &host_readlink
}

#[cfg(test)]
mod tests {
    use super::super::spec::default_spec;
    use super::super::syscall::{Call, RecordingSyscall};
    use super::*;
    use std::collections::HashMap;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_data_and_propagation() {
        let o = parse_options(&strs(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
            "ro",
        ]));
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | MsFlags::MS_RDONLY
        );
        assert_eq!(o.data, strs(&["mode=755", "size=65536k"]));
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        let o = parse_options(&strs(&["rbind", "ro", "rw"]));
        assert!(o.bind);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
    }

    #[test]
    fn secure_join_never_leaves_the_root() {
        let links: HashMap<PathBuf, PathBuf> = [
            (PathBuf::from("/r/evil"), PathBuf::from("/etc")),
            (PathBuf::from("/r/up"), PathBuf::from("../../..")),
            (PathBuf::from("/r/a/rel"), PathBuf::from("../b")),
        ]
        .into_iter()
        .collect();
        let rl = |p: &Path| links.get(p).cloned();
        let root = Path::new("/r");
        assert_eq!(
            secure_join(root, Path::new("/evil/passwd"), &rl),
            PathBuf::from("/r/etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/up/x"), &rl),
            PathBuf::from("/r/x")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../x"), &rl),
            PathBuf::from("/r/x")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/rel/c"), &rl),
            PathBuf::from("/r/b/c")
        );
        // A loop stops after 255 hops instead of spinning.
        let loops = |p: &Path| (p == Path::new("/r/l")).then(|| PathBuf::from("/l"));
        assert_eq!(
            secure_join(root, Path::new("/l"), &loops),
            PathBuf::from("/r/l")
        );
    }

    #[test]
    fn bind_mount_read_only_is_bind_then_remount() {
        let sys = RecordingSyscall {
            kinds: [(PathBuf::from("/host/data"), FileKind::Dir)]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let m: Mount = serde_json::from_value(serde_json::json!({
            "destination": "/data", "type": "bind", "source": "/host/data", "options": ["rbind", "ro", "nosuid", "rslave"]
        }))
        .expect("mount");
        let rl = |_: &Path| None;
        let ctx = RootfsContext {
            rootfs: Path::new("/r"),
            in_userns: false,
            new_netns: true,
            readlink: &rl,
        };
        mount_one(&sys, &m, &ctx).expect("mount");
        let calls = sys.take();
        assert_eq!(calls[0], Call::MkdirAll("/r/data".into()));
        assert!(
            matches!(&calls[1], Call::Mount { flags, .. } if *flags == MsFlags::MS_BIND | MsFlags::MS_REC)
        );
        assert!(matches!(&calls[2], Call::Mount { flags, source: None, .. }
            if *flags == MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert!(
            matches!(&calls[3], Call::Mount { flags, .. } if *flags == MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(calls.len(), 4);
    }

    #[test]
    fn default_spec_creates_devices_and_symlinks() {
        let sys = RecordingSyscall::default();
        let spec = default_spec(vec!["/bin/true".into()]);
        let rl = |_: &Path| None;
        let ctx = RootfsContext {
            rootfs: Path::new("/r"),
            in_userns: false,
            new_netns: true,
            readlink: &rl,
        };
        prepare(&sys, &spec, &ctx).expect("prepare");
        let calls = sys.take();
        assert!(calls.contains(&Call::Mknod {
            path: "/r/dev/null".into(),
            major: 1,
            minor: 3
        }));
        assert!(calls.contains(&Call::Symlink {
            target: "/proc/self/fd".into(),
            link: "/r/dev/fd".into()
        }));
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { fstype: Some(t), target, .. } if t == "proc" && target == Path::new("/r/proc"))));
        // First the propagation change on /, then the rootfs bind.
        assert!(
            matches!(&calls[0], Call::Mount { target, flags, .. } if target == Path::new("/") && *flags == MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
    }

    #[test]
    fn devices_in_a_user_namespace_are_bind_mounted() {
        let sys = RecordingSyscall::default();
        let rl = |_: &Path| None;
        let ctx = RootfsContext {
            rootfs: Path::new("/r"),
            in_userns: true,
            new_netns: true,
            readlink: &rl,
        };
        create_devices(&sys, &[], &ctx).expect("devices");
        let calls = sys.take();
        assert!(!calls.iter().any(|c| matches!(c, Call::Mknod { .. })));
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { source: Some(s), target, .. } if s == Path::new("/dev/null") && target == Path::new("/r/dev/null"))));
    }

    #[test]
    fn masked_paths_use_null_for_files_and_tmpfs_for_dirs() {
        let sys = RecordingSyscall {
            kinds: [
                (PathBuf::from("/proc/kcore"), FileKind::File),
                (PathBuf::from("/proc/acpi"), FileKind::Dir),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let mut spec = default_spec(vec!["/bin/true".into()]);
        if let Some(l) = spec.linux_mut().as_mut() {
            l.set_masked_paths(Some(strs(&["/proc/kcore", "/proc/acpi", "/proc/missing"])));
            l.set_readonly_paths(Some(vec![]));
        }
        finish(&sys, &spec, Path::new("/r")).expect("finish");
        let calls = sys.take();
        assert_eq!(calls[0], Call::PivotRoot("/r".into()));
        assert!(
            matches!(&calls[1], Call::Mount { source: Some(s), target, .. } if s == Path::new("/dev/null") && target == Path::new("/proc/kcore"))
        );
        assert!(
            matches!(&calls[2], Call::Mount { fstype: Some(t), target, .. } if t == "tmpfs" && target == Path::new("/proc/acpi"))
        );
        assert_eq!(calls.len(), 3);
    }

    #[test]
    fn unknown_root_propagation_is_an_error() {
        let sys = RecordingSyscall::default();
        let mut spec = default_spec(vec!["/bin/true".into()]);
        if let Some(l) = spec.linux_mut().as_mut() {
            l.set_rootfs_propagation(Some("sideways".into()));
        }
        let rl = |_: &Path| None;
        let ctx = RootfsContext {
            rootfs: Path::new("/r"),
            in_userns: false,
            new_netns: true,
            readlink: &rl,
        };
        let err = prepare(&sys, &spec, &ctx)
            .expect_err("bad propagation")
            .to_string();
        assert!(err.contains("sideways"), "{err}");
    }
}
