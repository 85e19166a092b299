//! Every system call the container setup makes, behind one trait.
//!
//! `LinuxSyscall` is the real thing; `RecordingSyscall` (tests only) records each call and answers
//! file-type questions from a table, so the mount, device and identity logic is unit-tested without
//! root. The setup code runs in the container's init after fork in the single-threaded
//! `flotilla-runtime` process, so allocation there is safe.
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use super::error::RuntimeError;

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
}
