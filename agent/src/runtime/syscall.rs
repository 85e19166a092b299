//! Every system call the container setup makes, behind one trait.
//!
//! Mounts and files, then process identity and privileges (ids, capabilities, no_new_privs,
//! seccomp, rlimits). `LinuxSyscall` is the real thing; `RecordingSyscall` (tests only) records each call and answers
//! file-type questions from a table, so the mount, device and identity logic is unit-tested without
//! root. The setup code runs in the container's init after fork in the single-threaded
//! `flotilla-runtime` process, so allocation there is safe.
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use oci_spec::runtime::PosixRlimitType;

use super::capabilities::{self, CapPlan};
use super::error::RuntimeError;
use super::seccomp::Filter;

/// What is at a path, as far as mount setup cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    File,
    Missing,
}

pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), RuntimeError>;
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), RuntimeError>;
    fn pivot_root(&self, new_root: &Path) -> Result<(), RuntimeError>;
    fn chdir(&self, path: &Path) -> Result<(), RuntimeError>;
    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<(), RuntimeError>;
    fn create_file(&self, path: &Path) -> Result<(), RuntimeError>;
    fn mknod(
        &self,
        path: &Path,
        kind: SFlag,
        mode: u32,
        major: u64,
        minor: u64,
    ) -> Result<(), RuntimeError>;
    fn symlink(&self, target: &Path, link: &Path) -> Result<(), RuntimeError>;
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), RuntimeError>;
    fn kind(&self, path: &Path) -> FileKind;
    fn sethostname(&self, name: &str) -> Result<(), RuntimeError>;
    fn setdomainname(&self, name: &str) -> Result<(), RuntimeError>;
    fn write_file(&self, path: &Path, data: &str) -> Result<(), RuntimeError>;
    /// Sets `IFF_UP` on network interface `name` of the current network namespace.
    fn link_up(&self, name: &str) -> Result<(), RuntimeError>;
    // Process identity and privileges.
    fn set_groups(&self, gids: &[u32]) -> Result<(), RuntimeError>;
    fn set_gid(&self, gid: u32) -> Result<(), RuntimeError>;
    fn set_uid(&self, uid: u32) -> Result<(), RuntimeError>;
    fn set_keep_caps(&self, keep: bool) -> Result<(), RuntimeError>;
    fn drop_bounding_caps(&self, caps: &CapPlan) -> Result<(), RuntimeError>;
    fn set_caps(&self, caps: &CapPlan) -> Result<(), RuntimeError>;
    fn set_no_new_privs(&self) -> Result<(), RuntimeError>;
    fn load_seccomp(&self, filter: &Filter) -> Result<(), RuntimeError>;
    fn set_rlimit(
        &self,
        resource: PosixRlimitType,
        soft: u64,
        hard: u64,
    ) -> Result<(), RuntimeError>;
    fn set_umask(&self, mask: u32);
}

/// The real system calls.
pub struct LinuxSyscall;

fn cpath(p: &Path) -> Result<CString, RuntimeError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        RuntimeError::sys(
            format!("path {p:?} contains a NUL byte"),
            nix::Error::EINVAL,
        )
    })
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), RuntimeError> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(|e| {
            RuntimeError::sys(
                format!(
                    "mount {} on {} (type {}, flags {:?}, data {:?})",
                    source
                        .map(|s| s.display().to_string())
                        .unwrap_or_else(|| "none".into()),
                    target.display(),
                    fstype.unwrap_or("none"),
                    flags,
                    data.unwrap_or("")
                ),
                e,
            )
        })
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), RuntimeError> {
        nix::mount::umount2(target, flags)
            .map_err(|e| RuntimeError::sys(format!("umount {}", target.display()), e))
    }

    fn pivot_root(&self, new_root: &Path) -> Result<(), RuntimeError> {
        // pivot_root(".", ".") stacks the old root on top of the new one; the caller then detaches it.
        nix::unistd::chdir(new_root)
            .map_err(|e| RuntimeError::sys(format!("chdir {}", new_root.display()), e))?;
        nix::unistd::pivot_root(".", ".")
            .map_err(|e| RuntimeError::sys(format!("pivot_root {}", new_root.display()), e))?;
        nix::mount::mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| RuntimeError::sys("make the old root a slave mount", e))?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)
            .map_err(|e| RuntimeError::sys("detach the old root", e))?;
        nix::unistd::chdir("/").map_err(|e| RuntimeError::sys("chdir /", e))
    }

    fn chdir(&self, path: &Path) -> Result<(), RuntimeError> {
        nix::unistd::chdir(path)
            .map_err(|e| RuntimeError::sys(format!("chdir {}", path.display()), e))
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<(), RuntimeError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| RuntimeError::io("create directory", path, e))
    }

    fn create_file(&self, path: &Path) -> Result<(), RuntimeError> {
        if let Some(parent) = path.parent() {
            self.mkdir_all(parent, 0o755)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(drop)
            .map_err(|e| RuntimeError::io("create file", path, e))
    }

    fn mknod(
        &self,
        path: &Path,
        kind: SFlag,
        mode: u32,
        major: u64,
        minor: u64,
    ) -> Result<(), RuntimeError> {
        let dev = nix::sys::stat::makedev(major, minor);
        nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(mode), dev).map_err(|e| {
            RuntimeError::sys(format!("mknod {} ({major}:{minor})", path.display()), e)
        })
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), RuntimeError> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r.map_err(|e| RuntimeError::io("create symlink", link, e)),
        }
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), RuntimeError> {
        let p = cpath(path)?;
        // SAFETY: p is a valid NUL-terminated string that outlives the call.
        let rc = unsafe { libc::lchown(p.as_ptr(), uid, gid) };
        if rc != 0 {
            return Err(RuntimeError::sys(
                format!("chown {} to {uid}:{gid}", path.display()),
                nix::Error::last(),
            ));
        }
        Ok(())
    }

    fn kind(&self, path: &Path) -> FileKind {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => FileKind::Dir,
            Ok(_) => FileKind::File,
            Err(_) => FileKind::Missing,
        }
    }

    fn sethostname(&self, name: &str) -> Result<(), RuntimeError> {
        nix::unistd::sethostname(name)
            .map_err(|e| RuntimeError::sys(format!("set hostname {name:?}"), e))
    }

    fn setdomainname(&self, name: &str) -> Result<(), RuntimeError> {
        // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
        let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        if rc != 0 {
            return Err(RuntimeError::sys(
                format!("set domain name {name:?}"),
                nix::Error::last(),
            ));
        }
        Ok(())
    }

    fn write_file(&self, path: &Path, data: &str) -> Result<(), RuntimeError> {
        std::fs::write(path, data).map_err(|e| RuntimeError::io("write", path, e))
    }

    fn link_up(&self, name: &str) -> Result<(), RuntimeError> {
        use std::os::fd::AsRawFd;
        let what = || format!("bring up network interface {name}");
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(RuntimeError::sys(what(), nix::Error::EINVAL));
        }
        // SAFETY: ifreq is plain old data, for which all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let sock = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| RuntimeError::sys(what(), e))?;
        // SAFETY: SIOCGIFFLAGS reads the name from `req` and writes the flags into it; `req` outlives
        // the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } != 0 {
            return Err(RuntimeError::sys(what(), nix::Error::last()));
        }
        // SAFETY: the kernel has just filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: SIOCSIFFLAGS only reads `req`, which outlives the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } != 0 {
            return Err(RuntimeError::sys(what(), nix::Error::last()));
        }
        Ok(())
    }

    fn set_groups(&self, gids: &[u32]) -> Result<(), RuntimeError> {
        let gids: Vec<nix::unistd::Gid> = gids
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids)
            .map_err(|e| RuntimeError::sys(format!("set additional groups {gids:?}"), e))
    }

    fn set_gid(&self, gid: u32) -> Result<(), RuntimeError> {
        let g = nix::unistd::Gid::from_raw(gid);
        nix::unistd::setresgid(g, g, g).map_err(|e| RuntimeError::sys(format!("setgid {gid}"), e))
    }

    fn set_uid(&self, uid: u32) -> Result<(), RuntimeError> {
        let u = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresuid(u, u, u).map_err(|e| RuntimeError::sys(format!("setuid {uid}"), e))
    }

    fn set_keep_caps(&self, keep: bool) -> Result<(), RuntimeError> {
        prctl(libc::PR_SET_KEEPCAPS, keep.into(), "set keep-capabilities")
    }

    fn drop_bounding_caps(&self, caps: &CapPlan) -> Result<(), RuntimeError> {
        capabilities::apply_bounding(caps)
    }

    fn set_caps(&self, caps: &CapPlan) -> Result<(), RuntimeError> {
        capabilities::apply_sets(caps)
    }

    fn set_no_new_privs(&self) -> Result<(), RuntimeError> {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "set no_new_privs")
    }

    fn load_seccomp(&self, filter: &Filter) -> Result<(), RuntimeError> {
        Ok(filter.load()?)
    }

    fn set_rlimit(
        &self,
        resource: PosixRlimitType,
        soft: u64,
        hard: u64,
    ) -> Result<(), RuntimeError> {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: lim is a valid rlimit for the duration of the call.
        let rc = unsafe { libc::setrlimit(rlimit_resource(resource), &lim) };
        if rc != 0 {
            return Err(RuntimeError::sys(
                format!("set rlimit {resource:?} to {soft}/{hard}"),
                nix::Error::last(),
            ));
        }
        Ok(())
    }

    fn set_umask(&self, mask: u32) {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask));
    }
}

fn prctl(option: libc::c_int, arg: libc::c_ulong, what: &str) -> Result<(), RuntimeError> {
    // SAFETY: these prctl options take integer arguments only.
    let rc = unsafe { libc::prctl(option, arg, 0, 0, 0) };
    if rc != 0 {
        return Err(RuntimeError::sys(what, nix::Error::last()));
    }
    Ok(())
}

pub fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// One recorded call, with the arguments that matter to the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount(PathBuf),
    PivotRoot(PathBuf),
    Chdir(PathBuf),
    MkdirAll(PathBuf),
    CreateFile(PathBuf),
    Mknod {
        path: PathBuf,
        major: u64,
        minor: u64,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    Chown(PathBuf, u32, u32),
    Hostname(String),
    Domainname(String),
    WriteFile(PathBuf, String),
    LinkUp(String),
    SetGroups(Vec<u32>),
    SetGid(u32),
    SetUid(u32),
    KeepCaps(bool),
    DropBounding,
    SetCaps,
    NoNewPrivs,
    LoadSeccomp,
    Rlimit(PosixRlimitType, u64, u64),
    Umask(u32),
}

/// Test double: records calls; `kinds` answers `kind()`; `fail_mount_on` makes mounts on a target fail.
#[derive(Default)]
pub struct RecordingSyscall {
    pub calls: std::cell::RefCell<Vec<Call>>,
    pub kinds: std::collections::HashMap<PathBuf, FileKind>,
    pub fail_mount_on: Option<PathBuf>,
}

impl RecordingSyscall {
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }
    fn push(&self, c: Call) {
        self.calls.borrow_mut().push(c);
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), RuntimeError> {
        if self.fail_mount_on.as_deref() == Some(target) {
            return Err(RuntimeError::sys(
                format!("mount on {}", target.display()),
                nix::Error::EPERM,
            ));
        }
        self.push(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        });
        Ok(())
    }
    fn umount(&self, target: &Path, _flags: MntFlags) -> Result<(), RuntimeError> {
        self.push(Call::Umount(target.to_path_buf()));
        Ok(())
    }
    fn pivot_root(&self, new_root: &Path) -> Result<(), RuntimeError> {
        self.push(Call::PivotRoot(new_root.to_path_buf()));
        Ok(())
    }
    fn chdir(&self, path: &Path) -> Result<(), RuntimeError> {
        self.push(Call::Chdir(path.to_path_buf()));
        Ok(())
    }
    fn mkdir_all(&self, path: &Path, _mode: u32) -> Result<(), RuntimeError> {
        self.push(Call::MkdirAll(path.to_path_buf()));
        Ok(())
    }
    fn create_file(&self, path: &Path) -> Result<(), RuntimeError> {
        self.push(Call::CreateFile(path.to_path_buf()));
        Ok(())
    }
    fn mknod(
        &self,
        path: &Path,
        _kind: SFlag,
        _mode: u32,
        major: u64,
        minor: u64,
    ) -> Result<(), RuntimeError> {
        self.push(Call::Mknod {
            path: path.to_path_buf(),
            major,
            minor,
        });
        Ok(())
    }
    fn symlink(&self, target: &Path, link: &Path) -> Result<(), RuntimeError> {
        self.push(Call::Symlink {
            target: target.to_path_buf(),
            link: link.to_path_buf(),
        });
        Ok(())
    }
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<(), RuntimeError> {
        self.push(Call::Chown(path.to_path_buf(), uid, gid));
        Ok(())
    }
    fn kind(&self, path: &Path) -> FileKind {
        self.kinds.get(path).copied().unwrap_or(FileKind::Missing)
    }
    fn sethostname(&self, name: &str) -> Result<(), RuntimeError> {
        self.push(Call::Hostname(name.into()));
        Ok(())
    }
    fn setdomainname(&self, name: &str) -> Result<(), RuntimeError> {
        self.push(Call::Domainname(name.into()));
        Ok(())
    }
    fn write_file(&self, path: &Path, data: &str) -> Result<(), RuntimeError> {
        self.push(Call::WriteFile(path.to_path_buf(), data.into()));
        Ok(())
    }
    fn link_up(&self, name: &str) -> Result<(), RuntimeError> {
        self.push(Call::LinkUp(name.into()));
        Ok(())
    }
    fn set_groups(&self, gids: &[u32]) -> Result<(), RuntimeError> {
        self.push(Call::SetGroups(gids.to_vec()));
        Ok(())
    }
    fn set_gid(&self, gid: u32) -> Result<(), RuntimeError> {
        self.push(Call::SetGid(gid));
        Ok(())
    }
    fn set_uid(&self, uid: u32) -> Result<(), RuntimeError> {
        self.push(Call::SetUid(uid));
        Ok(())
    }
    fn set_keep_caps(&self, keep: bool) -> Result<(), RuntimeError> {
        self.push(Call::KeepCaps(keep));
        Ok(())
    }
    fn drop_bounding_caps(&self, _caps: &CapPlan) -> Result<(), RuntimeError> {
        self.push(Call::DropBounding);
        Ok(())
    }
    fn set_caps(&self, _caps: &CapPlan) -> Result<(), RuntimeError> {
        self.push(Call::SetCaps);
        Ok(())
    }
    fn set_no_new_privs(&self) -> Result<(), RuntimeError> {
        self.push(Call::NoNewPrivs);
        Ok(())
    }
    fn load_seccomp(&self, _filter: &Filter) -> Result<(), RuntimeError> {
        self.push(Call::LoadSeccomp);
        Ok(())
    }
    fn set_rlimit(
        &self,
        resource: PosixRlimitType,
        soft: u64,
        hard: u64,
    ) -> Result<(), RuntimeError> {
        self.push(Call::Rlimit(resource, soft, hard));
        Ok(())
    }
    fn set_umask(&self, mask: u32) {
        self.push(Call::Umask(mask));
    }
}
/// Caps glibc's malloc arenas (one per thread by default, up to 8 per core): a daemon with
/// worker and blocking-pool threads otherwise keeps several heaps of freed memory.
pub fn limit_malloc_arenas(n: i32) {
    // SAFETY: mallopt only changes allocator tuning; called at start-up before other threads.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) };
}

/// Returns free heap memory to the kernel (glibc `malloc_trim`).
pub fn release_free_memory() {
    // SAFETY: malloc_trim only releases memory that is already free; it takes malloc's own locks.
    unsafe { libc::malloc_trim(0) };
}
