//! seccomp: turns an OCI `linux.seccomp` section into a kernel filter and loads it.
//!
//! This module owns the seccomp step of container start. [`Filter::compile`] converts an
//! [`oci_spec::runtime::LinuxSeccomp`] into a classic-BPF program with libseccomp, in the parent,
//! before any `fork`/`clone`. [`Filter::load`] installs that program in the calling thread with
//! one raw `seccomp(2)` call, in the child, just before `execve`. [`docker`] converts Docker's
//! profile format (`--security-opt seccomp=FILE`) into the OCI section.
//!
//! Invariants:
//! - Everything that allocates, takes a lock, logs or can fail on the user's input happens in
//!   `compile`: action, architecture and operator conversion, syscall name resolution, rule
//!   assembly, flag probing and the export of the finished BPF program into a `Vec`. The
//!   libseccomp context never leaves `compile`.
//! - `load` does not allocate, lock or log; it only reads the program owned by the [`Filter`] and
//!   returns an error that carries an errno and nothing heap-allocated. It is therefore safe
//!   between `fork` and `execve` in a multi-threaded process. libseccomp's own `seccomp_load` is
//!   not used because it regenerates (allocates) the program at load time.
//! - `load` does not set `no_new_privs`: the caller does (as runc does, after it is done with
//!   anything that needs privileges), or the caller keeps `CAP_SYS_ADMIN`.
//! - Syscall names unknown to libseccomp for this architecture are skipped with a debug log (as
//!   runc does), so one profile serves several kernels and architectures. Everything else that is
//!   unknown or unsupported is an error naming it.
//! - Rules whose action equals the default action are dropped: they cannot change the outcome and
//!   libseccomp refuses them.
//! - A rule's arguments are ANDed. When a rule compares the same argument more than once,
//!   libseccomp cannot AND them; like runc, each comparison then becomes its own rule (ORed), with
//!   a warning.
//! - `SCMP_ACT_NOTIFY` and `listenerPath` are refused: flotilla has no seccomp agent yet.
//! - Syscalls of architectures missing from the filter hit libseccomp's bad-architecture action
//!   (kill), as with runc.
//!
//! Hand-written parts, and why: BPF generation is libseccomp's; only the raw load (no crate
//! installs a prebuilt program without allocating) and the Docker profile conversion (no
//! maintained Rust crate implements Docker's include/exclude semantics) are written here.

pub mod docker;

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};
use libseccomp::{ScmpSyscall, ScmpVersion};
use nix::errno::Errno;
use nix::sys::memfd::{memfd_create, MFdFlags};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};
use tracing::{debug, warn};

pub use docker::{
    default_profile, from_docker_profile, host_docker_arch, DOCKER_DEFAULT_PROFILE_PACKAGE,
    DOCKER_DEFAULT_PROFILE_PATH,
};

/// The kernel's limit on the length of one classic-BPF program (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// The highest errno the kernel passes through from `SECCOMP_RET_ERRNO` (`MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;

/// A syscall has at most six arguments.
const MAX_ARGS: usize = 6;

/// Errors of seccomp compilation, loading and Docker profile conversion.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// `SCMP_ACT_NOTIFY` or a notify-only setting was asked for.
    #[error(
        "seccomp {what} is not supported: flotilla has no seccomp agent; \
         use SCMP_ACT_ERRNO or SCMP_ACT_TRACE instead"
    )]
    NotifyUnsupported {
        /// What asked for notification, e.g. `action SCMP_ACT_NOTIFY of syscalls[3]`.
        what: String,
    },

    /// An errno or trace value does not fit the kernel's return data.
    #[error("seccomp {what}: {field} {value} is out of range 0..={max}")]
    ReturnValueOutOfRange {
        /// Which rule (`defaultAction` or `syscalls[i]`).
        what: String,
        /// `errnoRet` or `defaultErrnoRet`.
        field: &'static str,
        /// The value given.
        value: u32,
        /// The largest accepted value.
        max: u32,
    },

    /// An argument index is not 0..=5.
    #[error("seccomp syscalls[{rule}] ({names}): argument index {index} is out of range 0..=5")]
    ArgIndexOutOfRange {
        /// Position of the rule in `syscalls`.
        rule: usize,
        /// The rule's syscall names, comma separated.
        names: String,
        /// The index given.
        index: usize,
    },

    /// The architecture is not known to the linked libseccomp.
    #[error("seccomp architecture {arch} is not supported by libseccomp {libseccomp}: {source}")]
    UnsupportedArch {
        /// The architecture as spelled in the spec, e.g. `SCMP_ARCH_LOONGARCH64`.
        arch: String,
        /// Version of the linked libseccomp.
        libseccomp: String,
        /// libseccomp's error.
        #[source]
        source: libseccomp::error::SeccompError,
    },

    /// The running kernel rejects a filter flag.
    #[error(
        "seccomp filter flag {flag} is not supported by the running kernel; \
         remove it from the profile"
    )]
    UnsupportedFlag {
        /// The flag as spelled in the spec.
        flag: String,
    },

    /// libseccomp refused an operation while building the filter.
    #[error("libseccomp: {context}: {source}")]
    Libseccomp {
        /// What was being done, naming the input, e.g. `adding rule for syscall mount`.
        context: String,
        /// libseccomp's error.
        #[source]
        source: libseccomp::error::SeccompError,
    },

    /// The compiled program could not be exported from libseccomp.
    #[error("exporting the seccomp bpf program: {0}")]
    Export(#[source] std::io::Error),

    /// The exported program is not a whole number of BPF instructions.
    #[error("exported seccomp bpf program has {0} bytes, not a whole number of instructions")]
    MalformedProgram(usize),

    /// The compiled program is longer than the kernel accepts.
    #[error(
        "seccomp bpf program has {0} instructions, more than the kernel limit of \
         {MAX_INSTRUCTIONS}; shorten the profile"
    )]
    ProgramTooLarge(usize),

    /// `seccomp(2)` refused the filter.
    #[error("loading the seccomp filter: {0}")]
    Load(#[source] Errno),

    /// `SECCOMP_FILTER_FLAG_TSYNC` could not synchronise a thread.
    #[error(
        "loading the seccomp filter with SECCOMP_FILTER_FLAG_TSYNC: \
         thread {0} cannot be synchronised"
    )]
    TsyncFailed(libc::c_long),

    /// The Docker profile is not JSON.
    #[error("seccomp profile is not valid json: {0}")]
    ProfileJson(#[source] serde_json::Error),

    /// A field of the Docker profile has the wrong type or an unknown value.
    #[error("seccomp profile field {field}: {reason}")]
    ProfileField {
        /// JSON path of the field, e.g. `syscalls[3].args[0].op`.
        field: String,
        /// What is wrong and what was expected.
        reason: String,
    },

    /// The architecture name given for Docker's include/exclude rules is unknown.
    #[error(
        "unknown architecture {0:?} for seccomp profile rules; \
         expected a Go architecture name such as amd64, arm64, 386, ppc64le, s390x, riscv64"
    )]
    UnknownDockerArch(String),

    /// The host kernel version could not be read for a `minKernel` rule.
    #[error("reading the kernel version for seccomp minKernel rules: {0}")]
    KernelVersion(String),

    /// The built-in default profile is not installed.
    #[error(
        "reading the default seccomp profile {path}: {source}; \
         install it with `apt-get install {DOCKER_DEFAULT_PROFILE_PACKAGE}`"
    )]
    DefaultProfileMissing {
        /// The path read.
        path: &'static str,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
}

/// A compiled seccomp filter: a classic-BPF program and the `seccomp(2)` flags to load it with.
///
/// Build it with [`Filter::compile`] before forking; call [`Filter::load`] in the child.
#[derive(Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("flags", &format_args!("{:#x}", self.flags))
            .finish()
    }
}

impl Filter {
    /// [`Filter::compile`] through a cache of compiled programs in `dir` (root-only, under the
    /// runtime's state root): libseccomp takes most of a container start's CPU, and the same
    /// profile (Docker's default for the default capabilities) comes back for every container.
    /// The key covers the spec, the architecture and the libseccomp version; a damaged or
    /// unreadable entry is compiled again.
    pub fn compile_cached(
        spec: &LinuxSeccomp,
        dir: &std::path::Path,
    ) -> Result<Filter, SeccompError> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"flotilla-seccomp-v1\0");
        h.update(std::env::consts::ARCH.as_bytes());
        if let Ok(v) = ScmpVersion::current() {
            h.update(format!("{}.{}.{}", v.major, v.minor, v.micro).as_bytes());
        }
        match serde_json::to_vec(spec) {
            Ok(j) => h.update(&j),
            Err(_) => return Filter::compile(spec),
        }
        let path = dir.join(format!("{}.bpf", hex::encode(h.finalize())));
        if let Ok(data) = std::fs::read(&path) {
            if let Some(f) = Filter::decode(&data) {
                return Ok(f);
            }
        }
        let f = Filter::compile(spec)?;
        // Best effort: a cache that cannot be written only costs time.
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            let tmp = dir.join(format!(
                ".{}.{}",
                std::process::id(),
                path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
            ));
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(&f.encode())?;
            drop(out);
            std::fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        };
        if let Err(e) = write() {
            debug!(dir = %dir.display(), error = %e, "seccomp cache not written");
        }
        Ok(f)
    }

    /// `flags` (u64 LE) then each instruction as code u16, jt u8, jf u8, k u32 (LE).
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.program.len() * 8);
        // c_ulong is 32 bits on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let flags = u64::from(self.flags);
        out.extend_from_slice(&flags.to_le_bytes());
        for i in &self.program {
            out.extend_from_slice(&i.code.to_le_bytes());
            out.push(i.jt);
            out.push(i.jf);
            out.extend_from_slice(&i.k.to_le_bytes());
        }
        out
    }

    fn decode(data: &[u8]) -> Option<Filter> {
        if data.len() < 16
            || !(data.len() - 8).is_multiple_of(8)
            || (data.len() - 8) / 8 > usize::from(u16::MAX)
        {
            return None;
        }
        let flags = u64::from_le_bytes(data[..8].try_into().ok()?) as libc::c_ulong;
        let program = data[8..]
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Some(Filter { program, flags })
    }

    /// Compiles `spec` into a BPF program. Does all allocation and name resolution.
    ///
    /// Unknown syscall names for this architecture are skipped (debug log). `SCMP_ACT_NOTIFY`,
    /// `listenerPath`, architectures unknown to libseccomp and flags unknown to the kernel are
    /// errors naming them.
    pub fn compile(spec: &LinuxSeccomp) -> Result<Filter, SeccompError> {
        if let Some(path) = spec.listener_path() {
            return Err(SeccompError::NotifyUnsupported {
                what: format!("listenerPath {}", path.display()),
            });
        }

        let default_action = scmp_action(
            spec.default_action(),
            spec.default_errno_ret(),
            "defaultAction",
            "defaultErrnoRet",
        )?;
        let mut ctx =
            ScmpFilterContext::new(default_action).map_err(|source| SeccompError::Libseccomp {
                context: format!("creating a filter with default action {default_action:?}"),
                source,
            })?;

        for &arch in spec.architectures().iter().flatten() {
            ctx.add_arch(scmp_arch(arch))
                .map_err(|source| SeccompError::UnsupportedArch {
                    arch: arch.to_string(),
                    libseccomp: libseccomp_version(),
                    source,
                })?;
        }

        let flags = filter_flags(spec.flags().iter().flatten())?;

        let mut skipped = 0usize;
        let mut rules = 0usize;
        for (index, call) in spec.syscalls().iter().flatten().enumerate() {
            let what = format!("syscalls[{index}]");
            let action = scmp_action(call.action(), call.errno_ret(), &what, "errnoRet")?;
            let args = call.args().as_deref().unwrap_or_default();
            let conditions = conditions(index, call.names(), args)?;
            if action == default_action {
                debug!(rule = index, names = ?call.names(), "rule has the default action; dropped");
                continue;
            }
            for name in call.names() {
                let syscall = match ScmpSyscall::from_name(name) {
                    Ok(syscall) => syscall,
                    Err(_) => {
                        debug!(syscall = %name, rule = index, "unknown syscall; skipped");
                        skipped += 1;
                        continue;
                    }
                };
                for group in &conditions {
                    ctx.add_rule_conditional(action, syscall, group)
                        .map_err(|source| SeccompError::Libseccomp {
                            context: format!(
                                "adding {what} rule {action:?} for syscall {name} \
                                 with {} argument conditions",
                                group.len()
                            ),
                            source,
                        })?;
                    rules += 1;
                }
            }
        }

        let program = export_program(&ctx)?;
        debug!(
            instructions = program.len(),
            rules,
            skipped_syscalls = skipped,
            flags = flags,
            "seccomp filter compiled"
        );
        Ok(Filter { program, flags })
    }

    /// Installs the filter in the calling thread with `seccomp(SECCOMP_SET_MODE_FILTER)`.
    ///
    /// Does not allocate, lock or log: safe between `fork` and `execve`. The caller must have set
    /// `no_new_privs` (`prctl(PR_SET_NO_NEW_PRIVS)`) or hold `CAP_SYS_ADMIN`, otherwise the kernel
    /// answers `EACCES`.
    pub fn load(&self) -> Result<(), SeccompError> {
        let len = match u16::try_from(self.program.len()) {
            Ok(len) => len,
            Err(_) => return Err(SeccompError::ProgramTooLarge(self.program.len())),
        };
        let prog = libc::sock_fprog {
            len,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `self.program`, which is alive and unchanged for the whole
        // call; the kernel only reads `len` instructions from it and copies them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        match rc {
            0 => Ok(()),
            rc if rc < 0 => Err(SeccompError::Load(Errno::last())),
            // With TSYNC the kernel returns the id of the thread it could not synchronise.
            tid => Err(SeccompError::TsyncFailed(tid)),
        }
    }

    /// Number of BPF instructions in the program.
    pub fn instructions(&self) -> usize {
        self.program.len()
    }

    /// The `SECCOMP_FILTER_FLAG_*` bits `load` passes to `seccomp(2)`.
    pub fn flags(&self) -> libc::c_ulong {
        self.flags
    }
}

fn libseccomp_version() -> String {
    match ScmpVersion::current() {
        Ok(v) => format!("{}.{}.{}", v.major, v.minor, v.micro),
        Err(_) => "(unknown version)".to_string(),
    }
}

/// Converts an OCI action and its return value; `what`/`field` name them in errors.
fn scmp_action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    what: &str,
    field: &'static str,
) -> Result<ScmpAction, SeccompError> {
    let out_of_range = |value, max| SeccompError::ReturnValueOutOfRange {
        what: what.to_string(),
        field,
        value,
        max,
    };
    let converted = match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            let errno = errno_ret.unwrap_or(libc::EPERM as u32);
            if errno > MAX_ERRNO {
                return Err(out_of_range(errno, MAX_ERRNO));
            }
            // In range 0..=4095: the cast is lossless.
            ScmpAction::Errno(errno as i32)
        }
        LinuxSeccompAction::ScmpActTrace => {
            let value = errno_ret.unwrap_or(libc::EPERM as u32);
            match u16::try_from(value) {
                Ok(v) => ScmpAction::Trace(v),
                Err(_) => return Err(out_of_range(value, u16::MAX.into())),
            }
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::NotifyUnsupported {
                what: format!("action SCMP_ACT_NOTIFY of {what}"),
            })
        }
    };
    if errno_ret.is_some()
        && !matches!(
            action,
            LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace
        )
    {
        warn!(
            rule = what,
            %action,
            "{field} is only used with SCMP_ACT_ERRNO and SCMP_ACT_TRACE; ignored"
        );
    }
    Ok(converted)
}

fn scmp_arch(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

fn scmp_compare(op: LinuxSeccompOperator, value: u64) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // OCI: `value` is the mask, `valueTwo` the value the masked argument must equal.
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value),
    }
}

/// Builds the condition groups of one rule: one group (ANDed) normally, one group per
/// comparison (ORed, runc's behaviour) when an argument index repeats.
fn conditions(
    rule: usize,
    names: &[String],
    args: &[LinuxSeccompArg],
) -> Result<Vec<Vec<ScmpArgCompare>>, SeccompError> {
    let mut seen = [false; MAX_ARGS];
    let mut repeated = false;
    let mut all = Vec::with_capacity(args.len());
    for arg in args {
        let index = arg.index();
        if index >= MAX_ARGS {
            return Err(SeccompError::ArgIndexOutOfRange {
                rule,
                names: names.join(","),
                index,
            });
        }
        repeated |= std::mem::replace(&mut seen[index], true);
        let (op, datum) = match arg.op() {
            LinuxSeccompOperator::ScmpCmpMaskedEq => (
                scmp_compare(arg.op(), arg.value()),
                arg.value_two().unwrap_or(0),
            ),
            op => (scmp_compare(op, arg.value()), arg.value()),
        };
        // `index` < 6: the cast is lossless.
        all.push(ScmpArgCompare::new(index as u32, op, datum));
    }
    if repeated {
        warn!(
            rule,
            names = %names.join(","),
            "seccomp rule compares one argument more than once; like runc, each comparison \
             becomes its own rule, so they are ORed, not ANDed"
        );
        Ok(all.into_iter().map(|c| vec![c]).collect())
    } else {
        Ok(vec![all])
    }
}

fn flag_bit(flag: LinuxSeccompFilterFlag) -> libc::c_ulong {
    match flag {
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
            libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
        }
    }
}

/// Converts the flags and checks the running kernel knows each of them.
fn filter_flags<'a>(
    flags: impl Iterator<Item = &'a LinuxSeccompFilterFlag>,
) -> Result<libc::c_ulong, SeccompError> {
    let mut bits = 0;
    for &flag in flags {
        if flag == LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv {
            // Only meaningful with a notification listener.
            return Err(SeccompError::NotifyUnsupported {
                what: format!("flag {flag}"),
            });
        }
        let bit = flag_bit(flag);
        match probe_flag(bit) {
            Ok(()) => {}
            Err(Errno::EINVAL) => {
                return Err(SeccompError::UnsupportedFlag {
                    flag: flag.to_string(),
                })
            }
            Err(errno) => {
                warn!(%flag, %errno, "cannot probe kernel support for the flag; load will tell");
            }
        }
        bits |= bit;
    }
    Ok(bits)
}

/// Asks the kernel whether it knows `flag` without installing anything: with a null program
/// the kernel fails with `EFAULT` after accepting the flags, `EINVAL` if it rejects them.
fn probe_flag(flag: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: the program pointer is null, so the kernel installs nothing: it validates the
    // flags, then fails copying the program header.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flag,
            std::ptr::null::<libc::sock_fprog>(),
        )
    };
    match (rc, Errno::last()) {
        (-1, Errno::EFAULT) => Ok(()),
        (-1, errno) => Err(errno),
        // Cannot happen with a null program; treat as supported, `load` will tell.
        _ => Ok(()),
    }
}

/// Exports the BPF program from libseccomp through a memfd into memory.
fn export_program(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let fd = memfd_create(c"flotilla-seccomp-bpf", MFdFlags::MFD_CLOEXEC)
        .map_err(|errno| SeccompError::Export(errno.into()))?;
    ctx.export_bpf(&fd)
        .map_err(|source| SeccompError::Libseccomp {
            context: "exporting the bpf program".to_string(),
            source,
        })?;
    let mut file = File::from(fd);
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(SeccompError::Export)?;
    decode_program(&bytes)
}

/// Decodes native-endian `struct sock_filter`s (u16 code, u8 jt, u8 jf, u32 k).
fn decode_program(bytes: &[u8]) -> Result<Vec<libc::sock_filter>, SeccompError> {
    const SIZE: usize = std::mem::size_of::<libc::sock_filter>();
    let instructions = bytes.chunks_exact(SIZE);
    if bytes.is_empty() || !instructions.remainder().is_empty() {
        return Err(SeccompError::MalformedProgram(bytes.len()));
    }
    if instructions.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::ProgramTooLarge(instructions.len()));
    }
    Ok(instructions
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    //! Compilation tests, and real-kernel tests: each loads a filter in a forked child, probes
    //! syscalls there and reports through the exit status. The test binary is multi-threaded, so
    //! filters are compiled before `fork` and the child only makes raw syscalls until `_exit`.

    use super::*;
    use nix::sys::resource::{setrlimit, Resource};
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use serde_json::json;

    /// Exit codes the child uses when confinement itself fails (probes use 0..=63).
    const CHILD_NNP_FAILED: i32 = 120;
    const CHILD_LOAD_FAILED: i32 = 121;

    fn oci(value: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(value).expect("test spec is valid OCI")
    }

    fn compile(value: serde_json::Value) -> Filter {
        Filter::compile(&oci(value)).expect("compile")
    }

    /// Forks; the child sets no_new_privs, loads `filter`, runs `probe` and exits with its code.
    fn run_confined<F: Fn() -> i32>(filter: &Filter, probe: F) -> WaitStatus {
        // SAFETY: the child only makes raw syscalls (prctl, setrlimit, seccomp and the probe's),
        // never allocates or takes a lock, and leaves with `_exit`.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let code = confined(filter, &probe);
                // SAFETY: ends the child without running the test harness' destructors.
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { child }) => waitpid(child, None).expect("waitpid"),
            Err(errno) => panic!("fork: {errno}"),
        }
    }

    fn confined(filter: &Filter, probe: &dyn Fn() -> i32) -> i32 {
        // No core files from the SIGSYS tests; failure is harmless.
        let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
        if nix::sys::prctl::set_no_new_privs().is_err() {
            return CHILD_NNP_FAILED;
        }
        if filter.load().is_err() {
            return CHILD_LOAD_FAILED;
        }
        probe()
    }

    /// The exit code of a child that exited, with a readable failure otherwise.
    fn exit_code(status: WaitStatus) -> i32 {
        match status {
            WaitStatus::Exited(_, CHILD_NNP_FAILED) => panic!("child could not set no_new_privs"),
            WaitStatus::Exited(_, CHILD_LOAD_FAILED) => panic!("child could not load the filter"),
            WaitStatus::Exited(_, code) => code,
            other => panic!("child did not exit normally: {other:?}"),
        }
    }

    /// The errno of a failed raw syscall, None on success.
    fn failed(rc: libc::c_long) -> Option<Errno> {
        (rc == -1).then(Errno::last)
    }

    /// Calls an argument-less syscall without side effects (getpid, getppid, getuid).
    fn syscall0(nr: libc::c_long) -> libc::c_long {
        // SAFETY: only used with argument-less, side-effect-free syscalls.
        unsafe { libc::syscall(nr) }
    }

    /// Calls getppid(2) with the given argument registers (getppid ignores them, seccomp
    /// sees them).
    fn getppid_with(a0: u64, a1: u64) -> libc::c_long {
        // SAFETY: getppid takes no arguments and has no side effects; the extra registers are
        // only read by the seccomp filter.
        unsafe { libc::syscall(libc::SYS_getppid, a0, a1) }
    }

    /// Bit i is set when probe i failed with EPERM.
    fn eperm_mask(probes: &[(u64, u64)]) -> i32 {
        let mut mask = 0;
        for (i, &(a0, a1)) in probes.iter().enumerate() {
            match failed(getppid_with(a0, a1)) {
                None => {}
                Some(Errno::EPERM) => mask |= 1 << i,
                Some(_) => return 63,
            }
        }
        mask
    }

    #[test]
    fn compile_produces_a_bounded_program() {
        let filter = compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
        }));
        assert!(filter.instructions() > 0 && filter.instructions() <= MAX_INSTRUCTIONS);
        assert_eq!(filter.flags(), 0);
        assert!(format!("{filter:?}").contains("instructions"));
    }

    #[test]
    fn unknown_syscall_names_are_skipped() {
        let filter = compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["flotilla_no_such_syscall", "mkdir"], "action": "SCMP_ACT_ERRNO"}
            ]
        }));
        assert!(filter.instructions() > 0);
    }

    #[test]
    fn rules_with_the_default_action_are_dropped() {
        compile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
            ]
        }));
    }

    #[test]
    fn notify_is_refused() {
        let err = Filter::compile(&oci(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        })))
        .expect_err("notify must be refused");
        assert!(
            matches!(err, SeccompError::NotifyUnsupported { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("SCMP_ACT_NOTIFY of syscalls[0]"),
            "{err}"
        );
        assert!(err.to_string().contains("not supported"), "{err}");

        let err = Filter::compile(&oci(json!({
            "defaultAction": "SCMP_ACT_NOTIFY"
        })))
        .expect_err("notify default must be refused");
        assert!(err.to_string().contains("defaultAction"), "{err}");

        let err = Filter::compile(&oci(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/agent.sock"
        })))
        .expect_err("listenerPath must be refused");
        assert!(err.to_string().contains("/run/agent.sock"), "{err}");

        let err = Filter::compile(&oci(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
        })))
        .expect_err("notify-only flag must be refused");
        assert!(
            err.to_string()
                .contains("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let err = Filter::compile(&oci(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5000}]
        })))
        .expect_err("errno 5000");
        assert!(
            err.to_string().contains("syscalls[0]") && err.to_string().contains("5000"),
            "{err}"
        );

        let err = Filter::compile(&oci(json!({
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000
        })))
        .expect_err("default errno 70000");
        assert!(err.to_string().contains("defaultErrnoRet 70000"), "{err}");

        let err = Filter::compile(&oci(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]
        })))
        .expect_err("arg index 6");
        assert!(
            matches!(err, SeccompError::ArgIndexOutOfRange { index: 6, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("mkdir"), "{err}");
    }

    #[test]
    fn unknown_oci_values_are_refused_by_name() {
        let err = serde_json::from_value::<LinuxSeccomp>(json!({
            "defaultAction": "SCMP_ACT_EXPLODE"
        }))
        .expect_err("unknown action");
        assert!(err.to_string().contains("SCMP_ACT_EXPLODE"), "{err}");
    }

    #[test]
    fn architectures_unknown_to_libseccomp_are_named() {
        let version = ScmpVersion::current().expect("libseccomp version");
        if (version.major, version.minor) >= (2, 6) {
            return; // LoongArch is known from libseccomp 2.6 on.
        }
        let err = Filter::compile(&oci(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_LOONGARCH64"]
        })))
        .expect_err("loongarch64 on libseccomp 2.5");
        assert!(err.to_string().contains("SCMP_ARCH_LOONGARCH64"), "{err}");
    }

    #[test]
    fn decode_program_checks_its_input() {
        assert!(matches!(
            decode_program(&[0; 7]),
            Err(SeccompError::MalformedProgram(7))
        ));
        assert!(matches!(
            decode_program(&[]),
            Err(SeccompError::MalformedProgram(0))
        ));
        assert!(matches!(
            decode_program(&vec![0; 8 * (MAX_INSTRUCTIONS + 1)]),
            Err(SeccompError::ProgramTooLarge(4097))
        ));
        assert!(SeccompError::ProgramTooLarge(4097)
            .to_string()
            .contains("limit of 4096"));
        let missing = SeccompError::DefaultProfileMissing {
            path: DOCKER_DEFAULT_PROFILE_PATH,
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert!(missing
            .to_string()
            .contains("apt-get install golang-github-docker-docker-dev"));
        let ret_allow = [0x06, 0x00, 0, 0, 0x00, 0x00, 0xff, 0x7f];
        let program = decode_program(&ret_allow).expect("one instruction");
        assert_eq!((program[0].code, program[0].k), (0x06, 0x7fff_0000));
    }

    #[test]
    fn errno_rule_makes_mkdir_fail_with_eperm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("denied");
        let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).expect("path");
        let filter = compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
        }));
        let status = run_confined(&filter, || {
            // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
            let rc = unsafe { libc::mkdir(path.as_ptr(), 0o755) };
            match failed(rc.into()) {
                Some(Errno::EPERM) => 0,
                Some(_) => 2,
                None => 1,
            }
        });
        assert_eq!(exit_code(status), 0, "mkdir must fail with EPERM");
        assert!(!target.exists(), "mkdir must not have run");
    }

    #[test]
    fn default_errno_ret_and_allow_rules() {
        let filter = compile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": libc::EXDEV,
            "syscalls": [
                {"names": ["exit", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["getuid"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOTTY}
            ]
        }));
        let status = run_confined(&filter, || {
            // errno is read right after each call.
            let mut code = 0;
            if failed(syscall0(libc::SYS_getpid)).is_some() {
                code |= 1;
            }
            if failed(syscall0(libc::SYS_getppid)) != Some(Errno::EXDEV) {
                code |= 2;
            }
            if failed(syscall0(libc::SYS_getuid)) != Some(Errno::ENOTTY) {
                code |= 4;
            }
            code
        });
        assert_eq!(exit_code(status), 0);
    }

    #[test]
    fn every_operator_compares_as_documented() {
        // (operator, value, valueTwo, which argument values the rule matches)
        type Case = (&'static str, u64, Option<u64>, fn(u64) -> bool);
        let cases: [Case; 7] = [
            ("SCMP_CMP_NE", 10, None, |v| v != 10),
            ("SCMP_CMP_LT", 10, None, |v| v < 10),
            ("SCMP_CMP_LE", 10, None, |v| v <= 10),
            ("SCMP_CMP_EQ", 10, None, |v| v == 10),
            ("SCMP_CMP_GE", 10, None, |v| v >= 10),
            ("SCMP_CMP_GT", 10, None, |v| v > 10),
            ("SCMP_CMP_MASKED_EQ", 0xf0, Some(0x10), |v| v & 0xf0 == 0x10),
        ];
        let probes: [(u64, u64); 6] = [
            (5, 0),
            (10, 0),
            (15, 0),
            (0x1f, 0),
            (0x20, 0),
            (0x1_0000_000a, 0),
        ];
        for (op, value, value_two, denies) in cases {
            let mut arg = json!({"index": 0, "value": value, "op": op});
            if let Some(two) = value_two {
                arg["valueTwo"] = json!(two);
            }
            let filter = compile(json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "args": [arg]}]
            }));
            let expected = probes
                .iter()
                .enumerate()
                .filter(|(_, &(a0, _))| denies(a0))
                .fold(0, |mask, (i, _)| mask | 1 << i);
            let status = run_confined(&filter, || eperm_mask(&probes));
            assert_eq!(exit_code(status), expected, "operator {op}");
        }
    }

    #[test]
    fn arguments_of_one_rule_are_anded() {
        let filter = compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}
            ]}]
        }));
        let status = run_confined(&filter, || eperm_mask(&[(1, 2), (1, 3), (0, 2)]));
        assert_eq!(exit_code(status), 0b001);
    }

    #[test]
    fn repeated_argument_comparisons_are_ored_like_runc() {
        let filter = compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}
            ]}]
        }));
        let status = run_confined(&filter, || eperm_mask(&[(1, 0), (2, 0), (3, 0)]));
        assert_eq!(exit_code(status), 0b011);
    }

    #[test]
    fn socket_family_rule_denies_only_netlink() {
        let filter = compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": libc::EAFNOSUPPORT,
                          "args": [{"index": 0, "value": libc::AF_NETLINK, "op": "SCMP_CMP_EQ"}]}]
        }));
        let status = run_confined(&filter, || {
            // SAFETY: plain socket(2) calls; a returned descriptor is closed right away.
            let (netlink, unix) = unsafe {
                (
                    libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE),
                    libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0),
                )
            };
            let mut code = 0;
            if failed(netlink.into()) != Some(Errno::EAFNOSUPPORT) {
                code |= 1;
            }
            if unix < 0 {
                code |= 2;
            } else {
                // SAFETY: `unix` is a descriptor this child just opened.
                unsafe { libc::close(unix) };
            }
            code
        });
        assert_eq!(exit_code(status), 0);
    }

    #[test]
    fn kill_actions_kill_with_sigsys() {
        for action in [
            "SCMP_ACT_KILL",
            "SCMP_ACT_KILL_THREAD",
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_TRAP",
        ] {
            let filter = compile(json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getppid"], "action": action}]
            }));
            let status = run_confined(&filter, || {
                getppid_with(0, 0);
                0
            });
            assert!(
                matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
                "{action}: {status:?}"
            );
        }
    }

    #[test]
    fn log_and_trace_actions_load() {
        // LOG allows the call; TRACE without a tracer fails it with ENOSYS.
        let filter = compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["getppid"], "action": "SCMP_ACT_LOG"},
                {"names": ["getuid"], "action": "SCMP_ACT_TRACE", "errnoRet": 7}
            ]
        }));
        let status = run_confined(&filter, || {
            let ppid_failed = failed(syscall0(libc::SYS_getppid)).is_some();
            let uid_errno = failed(syscall0(libc::SYS_getuid));
            i32::from(ppid_failed) | i32::from(uid_errno != Some(Errno::ENOSYS)) << 1
        });
        assert_eq!(exit_code(status), 0);
    }

    #[test]
    fn flags_are_passed_to_the_kernel() {
        let filter = compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "flags": [
                "SECCOMP_FILTER_FLAG_LOG",
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                "SECCOMP_FILTER_FLAG_TSYNC"
            ],
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}]
        }));
        assert_eq!(
            filter.flags(),
            libc::SECCOMP_FILTER_FLAG_LOG
                | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
                | libc::SECCOMP_FILTER_FLAG_TSYNC
        );
        let status = run_confined(&filter, || eperm_mask(&[(0, 0)]));
        assert_eq!(exit_code(status), 1);
    }

    #[test]
    fn load_reports_kernel_refusal() {
        // Without no_new_privs and without CAP_SYS_ADMIN the kernel refuses the filter (EACCES).
        let filter = compile(json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        // SAFETY: as in `run_confined`: raw syscalls only, then `_exit`.
        let status = match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                // SAFETY: setuid(2) on this child only; drops root and its capabilities.
                let dropped =
                    unsafe { libc::setuid(65534) } == 0 || !nix::unistd::geteuid().is_root();
                let code = match (dropped, filter.load()) {
                    (false, _) => 2,
                    (true, Err(SeccompError::Load(Errno::EACCES))) => 0,
                    (true, _) => 1,
                };
                // SAFETY: ends the child without running the harness' destructors.
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { child }) => waitpid(child, None).expect("waitpid"),
            Err(errno) => panic!("fork: {errno}"),
        };
        assert_eq!(exit_code(status), 0, "load must fail with EACCES");
    }

    #[test]
    fn filters_stack() {
        let deny_getppid = compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}]
        }));
        let deny_getuid = compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getuid"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EXDEV}]
        }));
        let status = run_confined(&deny_getppid, || {
            if deny_getuid.load().is_err() {
                return CHILD_LOAD_FAILED;
            }
            i32::from(failed(syscall0(libc::SYS_getppid)) != Some(Errno::EPERM))
                | i32::from(failed(syscall0(libc::SYS_getuid)) != Some(Errno::EXDEV)) << 1
        });
        assert_eq!(exit_code(status), 0);
    }

    /// Docker's default capability set.
    pub(super) fn docker_default_caps() -> Vec<String> {
        [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Docker's default profile converted for `caps`, failing with the install hint if missing.
    pub(super) fn docker_default(caps: &[String]) -> LinuxSeccomp {
        match default_profile(caps) {
            Ok(spec) => spec,
            Err(err @ SeccompError::DefaultProfileMissing { .. }) => panic!(
                "{err}\nthese tests need Docker's default seccomp profile: \
                 apt-get install {DOCKER_DEFAULT_PROFILE_PACKAGE}"
            ),
            Err(err) => panic!("converting docker's default profile: {err}"),
        }
    }

    #[test]
    fn docker_default_profile_confines_a_child() {
        let filter = Filter::compile(&docker_default(&docker_default_caps())).expect("compile");
        let status = run_confined(&filter, || {
            let mut code = 0;
            // SAFETY: each call either fails (the filter is what is tested) or has a harmless
            // effect on this short-lived child: unshare(0) and a fork-like clone whose child
            // exits at once.
            unsafe {
                if failed(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER))
                    != Some(Errno::EPERM)
                {
                    code |= 1;
                }
                if failed(libc::syscall(libc::SYS_getpid)).is_some() {
                    code |= 2;
                }
                if failed(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)) != Some(Errno::EPERM) {
                    code |= 4;
                }
                let mount = libc::syscall(
                    libc::SYS_mount,
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    0,
                );
                if failed(mount) != Some(Errno::EPERM) {
                    code |= 8;
                }
                // clone with a namespace flag is refused; a plain fork-like clone works.
                let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong;
                if failed(libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0)) != Some(Errno::EPERM) {
                    code |= 16;
                }
                match libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) {
                    0 => libc::_exit(0),
                    -1 => code |= 32,
                    pid => {
                        let mut status = 0;
                        libc::waitpid(pid as libc::pid_t, &mut status, 0);
                    }
                }
                // clone3 answers ENOSYS so that libcs fall back to clone.
                if failed(libc::syscall(libc::SYS_clone3, 0, 0)) != Some(Errno::ENOSYS) {
                    code |= 64;
                }
            }
            code
        });
        assert_eq!(exit_code(status), 0);
    }

    #[test]
    fn docker_default_profile_with_sys_admin_allows_unshare() {
        let mut caps = docker_default_caps();
        caps.push("CAP_SYS_ADMIN".to_string());
        let filter = Filter::compile(&docker_default(&caps)).expect("compile");
        let status = run_confined(&filter, || {
            // SAFETY: unshare(0) changes nothing.
            i32::from(failed(unsafe { libc::syscall(libc::SYS_unshare, 0) }).is_some())
        });
        assert_eq!(exit_code(status), 0);

        let filter = Filter::compile(&docker_default(&docker_default_caps())).expect("compile");
        let status = run_confined(&filter, || {
            // SAFETY: unshare(0) changes nothing.
            i32::from(failed(unsafe { libc::syscall(libc::SYS_unshare, 0) }) == Some(Errno::EPERM))
        });
        assert_eq!(exit_code(status), 1);
    }

    #[test]
    fn cached_programs_equal_compiled_ones() {
        let tmp = tempfile::tempdir().expect("tmp");
        let spec = oci(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        }));
        let direct = Filter::compile(&spec).expect("compile");
        let first = Filter::compile_cached(&spec, tmp.path()).expect("miss");
        let second = Filter::compile_cached(&spec, tmp.path()).expect("hit");
        assert_eq!(direct.encode(), first.encode());
        assert_eq!(direct.encode(), second.encode());
        let entries: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("dir")
            .flatten()
            .collect();
        assert_eq!(entries.len(), 1);
        // A damaged entry is compiled again, not trusted.
        std::fs::write(entries[0].path(), b"garbage").expect("damage");
        let again = Filter::compile_cached(&spec, tmp.path()).expect("recompile");
        assert_eq!(direct.encode(), again.encode());
        assert!(Filter::decode(b"short").is_none());
    }
}
