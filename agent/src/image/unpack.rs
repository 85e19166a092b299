//! Layer unpacking: one OCI layer (an uncompressed tar stream) into one empty directory that
//! later serves as a single overlayfs lower layer.
//!
//! The caller wraps any gzip/zstd decoder around the reader; [`unpack_layer`] hashes the
//! uncompressed bytes as it reads them (and drains the stream to EOF after the tar end marker),
//! so the returned diff id covers the whole stream and can be checked against the image config.
//!
//! Invariants, for any layer however hostile:
//! - Nothing is ever created, changed or removed outside `dest`. Entry paths are normalised
//!   (leading `/` and `.` components dropped) and any `..` component is an error naming the entry.
//!   Every parent directory is opened component by component from a descriptor of `dest` with
//!   `O_NOFOLLOW|O_DIRECTORY`, so a symlink anywhere in a path (including one the layer itself
//!   created a few entries earlier) is an error, never followed. Files are created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW`, symlinks with `symlinkat` (their target text is never
//!   resolved here), hard links with `linkat(.., 0)` on a target resolved the same way inside
//!   `dest`, and metadata is applied through descriptors or `*at(.., AT_SYMLINK_NOFOLLOW)`.
//! - Later entries override earlier ones: an existing non-directory (or a directory, when the new
//!   entry is not one) is removed first; an existing directory stays and takes the new owner,
//!   mode and mtime.
//! - Modes are applied exactly as the header says (`& 0o7777`, setuid/setgid/sticky included,
//!   never widened by us and independent of the umask); owners come from the header (PAX `uid`/
//!   `gid` win); mtimes from the header (PAX `mtime` wins). Directory modes and mtimes are applied
//!   after the last entry, so a read-only directory does not block its own children.
//! - Xattrs come from PAX `SCHILY.xattr.*` records on regular files and directories: `user.*`,
//!   `security.capability` and `system.posix_acl_*` are applied; `trusted.overlay.*` is always
//!   dropped (a layer must not fake overlay metadata) and every other namespace is skipped.
//! - Whiteouts are converted to the overlayfs form: `.wh.NAME` removes whatever this layer
//!   created at `NAME` and puts a 0:0 character device there; `D/.wh..wh..opq` sets
//!   `trusted.overlay.opaque=y` on `D`. Other `.wh..wh.*` names (aufs metadata) are skipped.
//!   Whiteout paths pass the same checks as every other path.
//! - Device nodes are refused unless [`UnpackOptions::allow_devices`]; fifos are allowed;
//!   overlay whiteouts are always allowed.
//!
//! On any error `dest` is left half-written: the caller must delete it (the store unpacks into a
//! temporary directory and renames it into place only on success).
//!
//! Written by hand rather than with `tar::Archive::unpack`: that API resolves destination paths
//! with ordinary path syscalls (following symlinks in some cases, e.g. through directories a
//! previous entry created) and knows nothing about overlay whiteouts. The `tar` crate is still
//! used for parsing (ustar, GNU long names, PAX records, sparse files).
//!
//! Requires root (or at least `CAP_CHOWN`, `CAP_MKNOD`, `CAP_FOWNER`, `CAP_SYS_ADMIN` for
//! `trusted.*`) and a mounted `/proc` (used to chmod device nodes and fifos without following
//! anything). Rootless id mapping is a future option.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};
use tar::EntryType;
use tracing::debug;

/// Longest accepted entry path after normalisation (Linux `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;
/// Deepest accepted entry path; bounds the descriptors held while removing a tree.
const MAX_DEPTH: usize = 256;
/// Overlay whiteout prefix and the opaque-directory marker.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";

/// How a layer is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Create character and block device nodes found in the layer. Off by default: images
    /// rarely need them and the runtime populates `/dev` itself. Overlay whiteouts (0:0
    /// character devices) are created regardless.
    pub allow_devices: bool,
    // Future: uid/gid mapping for user-namespaced containers.
}

/// What one [`unpack_layer`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries applied (PAX global headers not counted).
    pub entries: u64,
    /// Length of the uncompressed stream, trailing padding included.
    pub bytes: u64,
    /// Regular-file content bytes written.
    pub file_bytes: u64,
    /// `sha256:<hex>` of the uncompressed stream: the layer's diff id.
    pub diff_id: String,
}

/// Why a layer could not be applied. Entry paths are the raw tar names (lossy UTF-8).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("open layer destination {path}: {source}")]
    Destination {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer destination {path} is not empty; unpack needs a fresh directory")]
    DestinationNotEmpty { path: PathBuf },
    #[error("read layer tar stream: {source}")]
    Read {
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry:?}: read content: {source}")]
    ReadEntry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry:?}: invalid path: {reason}")]
    InvalidPath { entry: String, reason: &'static str },
    #[error(
        "layer entry {entry:?}: path has a `..` component; a layer may not reach outside its root"
    )]
    ParentComponent { entry: String },
    #[error("layer entry {entry:?}: {component:?} is a symlink; paths are never resolved through symlinks while unpacking")]
    SymlinkInPath { entry: String, component: String },
    #[error("layer entry {entry:?}: {component:?} is not a directory")]
    NotADirectory { entry: String, component: String },
    #[error("layer entry {entry:?}: hard link target {target:?} {reason}")]
    HardLinkTarget {
        entry: String,
        target: String,
        reason: &'static str,
    },
    #[error(
        "layer entry {entry:?}: device nodes are not allowed in this layer (allow_devices is off)"
    )]
    DeviceNotAllowed { entry: String },
    #[error("layer entry {entry:?}: unsupported tar entry type {kind}")]
    UnsupportedType { entry: String, kind: String },
    #[error("layer entry {entry:?}: invalid header: {reason}")]
    Header { entry: String, reason: String },
    #[error("layer entry {entry:?}: set xattr {name:?}: {source}")]
    Xattr {
        entry: String,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry:?}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Applies the layer read from `tar` (uncompressed) into `dest`, which must be an existing,
/// empty directory. Returns counts and the diff id.
///
/// On error `dest` holds a partial layer and must be deleted by the caller; nothing outside
/// `dest` has been touched.
pub fn unpack_layer<R: Read>(
    tar: R,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let root = open_dest(dest)?;
    let mut unpacker = Unpacker {
        root,
        opts,
        dirs: BTreeMap::new(),
        entries: 0,
        file_bytes: 0,
    };

    let mut archive = tar::Archive::new(HashingReader::new(tar));
    {
        let entries = archive
            .entries()
            .map_err(|source| UnpackError::Read { source })?;
        for entry in entries {
            let mut entry = entry.map_err(|source| UnpackError::Read { source })?;
            unpacker.apply(&mut entry)?;
        }
    }
    unpacker.finish_dirs()?;

    // Hash whatever follows the end-of-archive marker too: the diff id covers the whole stream.
    let mut reader = archive.into_inner();
    io::copy(&mut reader, &mut io::sink()).map_err(|source| UnpackError::Read { source })?;
    let (bytes, digest) = reader.finish();
    Ok(UnpackStats {
        entries: unpacker.entries,
        bytes,
        file_bytes: unpacker.file_bytes,
        diff_id: format!("sha256:{digest}"),
    })
}

/// Reader adapter that hashes and counts every byte passing through.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn open_dest(dest: &Path) -> Result<OwnedFd, UnpackError> {
    let dest_err = |e: Errno| UnpackError::Destination {
        path: dest.to_path_buf(),
        source: e.into(),
    };
    let root = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(dest_err)?;
    if !list_dir(root.as_fd()).map_err(dest_err)?.is_empty() {
        return Err(UnpackError::DestinationNotEmpty {
            path: dest.to_path_buf(),
        });
    }
    Ok(root)
}

/// Entry names of the directory `dir` (without `.` and `..`).
fn list_dir(dir: BorrowedFd<'_>) -> nix::Result<Vec<CString>> {
    let dup = dir.try_clone_to_owned().map_err(io_to_errno)?;
    let mut d = Dir::from_fd(dup)?;
    let mut names = Vec::new();
    for ent in d.iter() {
        let ent = ent?;
        let name = ent.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn io_to_errno(e: io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Why an entry path is unacceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathProblem {
    ParentDir,
    Nul,
    TooLong,
    TooDeep,
}

impl PathProblem {
    fn reason(self) -> &'static str {
        match self {
            PathProblem::ParentDir => "has a `..` component",
            PathProblem::Nul => "contains a NUL byte",
            PathProblem::TooLong => "is longer than 4096 bytes",
            PathProblem::TooDeep => "is deeper than 256 components",
        }
    }
}

/// Splits a tar path into components, dropping leading `/`, empty and `.` components.
/// An empty result names the layer root.
fn normalise(raw: &[u8]) -> Result<Vec<Vec<u8>>, PathProblem> {
    if raw.contains(&0) {
        return Err(PathProblem::Nul);
    }
    let mut comps = Vec::new();
    let mut len = 0;
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err(PathProblem::ParentDir),
            _ => {
                len += c.len() + 1;
                comps.push(c.to_vec());
            }
        }
    }
    if len > MAX_PATH_BYTES {
        return Err(PathProblem::TooLong);
    }
    if comps.len() > MAX_DEPTH {
        return Err(PathProblem::TooDeep);
    }
    Ok(comps)
}

/// Maps a failed syscall on entry `e` to [`UnpackError::Io`].
fn sys<'e>(e: &'e str, op: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'e {
    move |errno| UnpackError::Io {
        entry: e.to_owned(),
        op,
        source: errno.into(),
    }
}

fn os(c: &[u8]) -> &OsStr {
    OsStr::from_bytes(c)
}

fn join(comps: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

fn file_kind(st: &FileStat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// Why a directory path inside the layer could not be opened.
enum Resolve {
    /// Component `usize` is a symlink.
    Symlink(usize),
    /// Component `usize` exists but is not a directory.
    NotDir(usize),
    /// Component `usize` does not exist (only when not creating).
    Missing(usize),
    Sys(&'static str, Errno),
}

fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Explains a failed `open_dir_nofollow(dir, name)` for component `i`.
fn classify(dir: BorrowedFd<'_>, name: &OsStr, i: usize, err: Errno) -> Resolve {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if file_kind(&st) == libc::S_IFLNK => Resolve::Symlink(i),
        Ok(st) if file_kind(&st) != libc::S_IFDIR => Resolve::NotDir(i),
        Err(Errno::ENOENT) => Resolve::Missing(i),
        _ => Resolve::Sys("open directory", err),
    }
}

/// Opens the directory `comps` below `root` one component at a time, never following a
/// symlink. With `create`, missing components become directories (0755, owned by us).
fn resolve_dir(root: &OwnedFd, comps: &[Vec<u8>], create: bool) -> Result<OwnedFd, Resolve> {
    let mut cur = root
        .try_clone()
        .map_err(|e| Resolve::Sys("duplicate directory descriptor", io_to_errno(e)))?;
    for (i, c) in comps.iter().enumerate() {
        let name = os(c);
        let next = match open_dir_nofollow(cur.as_fd(), name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                match mkdirat(cur.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(Resolve::Sys("create parent directory", e)),
                }
                let fd = open_dir_nofollow(cur.as_fd(), name)
                    .map_err(|e| classify(cur.as_fd(), name, i, e))?;
                // Implicit parents are 0755 whatever the umask says.
                fchmod(&fd, Mode::from_bits_truncate(0o755))
                    .map_err(|e| Resolve::Sys("chmod parent directory", e))?;
                fd
            }
            Err(e) => return Err(classify(cur.as_fd(), name, i, e)),
        };
        cur = next;
    }
    Ok(cur)
}

/// Owner, mode, time and xattrs of one entry, as the header (and its PAX records) say.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Directory metadata applied after the last entry.
struct DirMeta {
    mode: u32,
    mtime: TimeSpec,
}

/// What to do with one xattr found in a layer.
enum XattrPolicy {
    Apply,
    Skip(&'static str),
}

fn xattr_policy(name: &[u8]) -> XattrPolicy {
    if name.starts_with(b"trusted.overlay.") {
        XattrPolicy::Skip("a layer may not carry overlay metadata")
    } else if name.starts_with(b"user.")
        || name == b"security.capability"
        || name.starts_with(b"system.posix_acl_")
    {
        XattrPolicy::Apply
    } else {
        XattrPolicy::Skip("namespace not applied from layers")
    }
}

fn fset_xattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `fd` is a live descriptor for the duration of the call, `name` is NUL-terminated
    // and `value` points to `value.len()` readable bytes; the kernel copies both before returning.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Parses a PAX time (`[-]seconds[.fraction]`).
fn parse_pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(b - b'0') * 10i64.pow(8 - i as u32);
    }
    if neg {
        // -1.25 is 1.25 seconds before the epoch: -2 s + 0.75 s.
        if nanos == 0 {
            Some(TimeSpec::new(-secs, 0))
        } else {
            Some(TimeSpec::new(-secs - 1, 1_000_000_000 - nanos))
        }
    } else {
        Some(TimeSpec::new(secs, nanos))
    }
}

/// Applies entries one by one into `root`.
struct Unpacker<'a> {
    root: OwnedFd,
    opts: &'a UnpackOptions,
    /// Directories seen so far, by normalised path; applied in reverse order at the end.
    dirs: BTreeMap<Vec<Vec<u8>>, DirMeta>,
    entries: u64,
    file_bytes: u64,
}

impl Unpacker<'_> {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let e = String::from_utf8_lossy(&raw).into_owned();
        let comps = normalise(&raw).map_err(|p| match p {
            PathProblem::ParentDir => UnpackError::ParentComponent { entry: e.clone() },
            other => UnpackError::InvalidPath {
                entry: e.clone(),
                reason: other.reason(),
            },
        })?;
        self.entries += 1;

        if let Some(base) = comps.last() {
            if base.starts_with(WHITEOUT_PREFIX) {
                return self.whiteout(&e, &comps);
            }
        }
        if comps.iter().any(|c| c.starts_with(WHITEOUT_META_PREFIX)) {
            debug!(entry = %e, "skipping aufs metadata entry");
            return Ok(());
        }

        let meta = read_meta(entry, &e)?;
        let is_dir = kind == EntryType::Directory
            || (matches!(kind, EntryType::Regular | EntryType::Continuous)
                && raw.last() == Some(&b'/'));
        if is_dir {
            return self.directory(&e, comps, meta);
        }
        if comps.is_empty() {
            return Err(UnpackError::InvalidPath {
                entry: e,
                reason: "names the layer root but is not a directory",
            });
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(entry, &e, &comps, &meta)
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.symlink(&e, &comps, target, &meta)
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                self.hard_link(&e, &comps, target)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.special(entry.header(), kind, &e, &comps, &meta)
            }
            other => Err(UnpackError::UnsupportedType {
                entry: e,
                kind: format!("{other:?}").to_lowercase(),
            }),
        }
    }

    fn resolve_parent(
        &self,
        e: &str,
        comps: &[Vec<u8>],
        create: bool,
    ) -> Result<OwnedFd, UnpackError> {
        resolve_dir(&self.root, comps, create).map_err(|r| match r {
            Resolve::Symlink(i) => UnpackError::SymlinkInPath {
                entry: e.to_owned(),
                component: join(&comps[..=i]),
            },
            // Missing only happens without `create`; report it like a non-directory.
            Resolve::NotDir(i) | Resolve::Missing(i) => UnpackError::NotADirectory {
                entry: e.to_owned(),
                component: join(&comps[..=i]),
            },
            Resolve::Sys(op, errno) => UnpackError::Io {
                entry: e.to_owned(),
                op,
                source: errno.into(),
            },
        })
    }

    /// Makes room for a new entry at `comps` (whose parent is `parent`): removes whatever is
    /// there unless both it and the new entry are directories. Returns true when an existing
    /// directory was kept.
    fn clear_slot(
        &mut self,
        e: &str,
        parent: &OwnedFd,
        comps: &[Vec<u8>],
        new_is_dir: bool,
    ) -> Result<bool, UnpackError> {
        let Some(name) = comps.last() else {
            return Ok(true);
        };
        let name = os(name);
        match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(false),
            Err(errno) => Err(sys(e, "inspect existing entry")(errno)),
            Ok(st) if file_kind(&st) == libc::S_IFDIR => {
                if new_is_dir {
                    return Ok(true);
                }
                remove_tree(parent.as_fd(), name).map_err(sys(e, "remove existing directory"))?;
                self.dirs.retain(|k, _| !k.starts_with(comps));
                Ok(false)
            }
            Ok(_) => {
                unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
                    .map_err(sys(e, "remove existing entry"))?;
                Ok(false)
            }
        }
    }

    fn whiteout(&mut self, e: &str, comps: &[Vec<u8>]) -> Result<(), UnpackError> {
        let (base, parent_comps) = match comps.split_last() {
            Some(split) => split,
            None => return Ok(()),
        };
        if base.as_slice() == OPAQUE_MARKER {
            let dir = self.resolve_parent(e, parent_comps, true)?;
            return fset_xattr(dir.as_fd(), OVERLAY_OPAQUE_XATTR, b"y").map_err(|source| {
                UnpackError::Xattr {
                    entry: e.to_owned(),
                    name: "trusted.overlay.opaque".to_owned(),
                    source,
                }
            });
        }
        if base.starts_with(WHITEOUT_META_PREFIX) {
            debug!(entry = %e, "skipping aufs whiteout metadata");
            return Ok(());
        }
        let hidden = &base[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::InvalidPath {
                entry: e.to_owned(),
                reason: "whiteout does not name an entry",
            });
        }
        let parent = self.resolve_parent(e, parent_comps, true)?;
        let mut target = parent_comps.to_vec();
        target.push(hidden.to_vec());
        self.clear_slot(e, &parent, &target, false)?;
        mknodat(&parent, os(hidden), SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(sys(e, "create overlay whiteout"))?;
        // Whiteouts are root-owned whatever our fsuid: overlay only looks at the 0:0 device.
        fchownat(
            &parent,
            os(hidden),
            Some(Uid::from_raw(0)),
            Some(Gid::from_raw(0)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(sys(e, "chown overlay whiteout"))
    }

    fn directory(&mut self, e: &str, comps: Vec<Vec<u8>>, meta: Meta) -> Result<(), UnpackError> {
        let dir = match comps.split_last() {
            None => self.root.try_clone().map_err(|source| UnpackError::Io {
                entry: e.to_owned(),
                op: "duplicate root descriptor",
                source,
            })?,
            Some((name, parent_comps)) => {
                let parent = self.resolve_parent(e, parent_comps, true)?;
                if !self.clear_slot(e, &parent, &comps, true)? {
                    mkdirat(&parent, os(name), Mode::from_bits_truncate(0o700))
                        .map_err(sys(e, "create directory"))?;
                }
                open_dir_nofollow(parent.as_fd(), os(name)).map_err(sys(e, "open directory"))?
            }
        };
        fchown(
            &dir,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(sys(e, "chown directory"))?;
        apply_xattrs(dir.as_fd(), e, &meta.xattrs)?;
        self.dirs.insert(
            comps,
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        e: &str,
        comps: &[Vec<u8>],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let (name, parent_comps) = comps.split_last().ok_or_else(|| UnpackError::InvalidPath {
            entry: e.to_owned(),
            reason: "names the layer root but is not a directory",
        })?;
        let parent = self.resolve_parent(e, parent_comps, true)?;
        self.clear_slot(e, &parent, comps, false)?;
        let fd = openat(
            &parent,
            os(name),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(sys(e, "create file"))?;
        let mut file = File::from(fd);
        let expected = entry.size();
        let mut written: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(UnpackError::ReadEntry {
                        entry: e.to_owned(),
                        source,
                    })
                }
            };
            file.write_all(&buf[..n])
                .map_err(|source| UnpackError::Io {
                    entry: e.to_owned(),
                    op: "write file",
                    source,
                })?;
            written += n as u64;
            self.file_bytes += n as u64;
        }
        if written != expected {
            return Err(UnpackError::ReadEntry {
                entry: e.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("stream ended after {written} of {expected} content bytes"),
                ),
            });
        }
        // Order matters: chown clears setuid/setgid and security.capability, so it goes first.
        fchown(
            &file,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(sys(e, "chown file"))?;
        fchmod(&file, Mode::from_bits_truncate(meta.mode)).map_err(sys(e, "chmod file"))?;
        apply_xattrs(file.as_fd(), e, &meta.xattrs)?;
        futimens(&file, &meta.mtime, &meta.mtime).map_err(sys(e, "set file times"))
    }

    fn symlink(
        &mut self,
        e: &str,
        comps: &[Vec<u8>],
        target: Option<Vec<u8>>,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let header_err = |reason: &str| UnpackError::Header {
            entry: e.to_owned(),
            reason: reason.to_owned(),
        };
        let target = target.ok_or_else(|| header_err("symlink without a target"))?;
        if target.is_empty() {
            return Err(header_err("symlink with an empty target"));
        }
        if target.contains(&0) {
            return Err(header_err("symlink target contains a NUL byte"));
        }
        let (name, parent_comps) = comps.split_last().ok_or_else(|| UnpackError::InvalidPath {
            entry: e.to_owned(),
            reason: "names the layer root but is not a directory",
        })?;
        let parent = self.resolve_parent(e, parent_comps, true)?;
        self.clear_slot(e, &parent, comps, false)?;
        // The target text is stored verbatim; it is never resolved while unpacking.
        symlinkat(os(&target), &parent, os(name)).map_err(sys(e, "create symlink"))?;
        fchownat(
            &parent,
            os(name),
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(sys(e, "chown symlink"))?;
        skip_xattrs(e, &meta.xattrs, "symlink");
        utimensat(
            &parent,
            os(name),
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(sys(e, "set symlink times"))
    }

    fn hard_link(
        &mut self,
        e: &str,
        comps: &[Vec<u8>],
        target: Option<Vec<u8>>,
    ) -> Result<(), UnpackError> {
        let target = target.ok_or_else(|| UnpackError::Header {
            entry: e.to_owned(),
            reason: "hard link without a target".to_owned(),
        })?;
        let shown = String::from_utf8_lossy(&target).into_owned();
        let bad = |reason| UnpackError::HardLinkTarget {
            entry: e.to_owned(),
            target: shown.clone(),
            reason,
        };
        let tcomps = normalise(&target).map_err(|p| bad(p.reason()))?;
        let (tname, tparent_comps) = tcomps
            .split_last()
            .ok_or_else(|| bad("names the layer root"))?;
        if tcomps.as_slice() == comps {
            // A link to itself: the entry already is what it asks for.
            return Ok(());
        }
        let tparent = resolve_dir(&self.root, tparent_comps, false).map_err(|r| match r {
            Resolve::Symlink(_) => bad("passes through a symlink"),
            Resolve::NotDir(_) | Resolve::Missing(_) => bad("does not exist in this layer"),
            Resolve::Sys(..) => bad("cannot be opened inside the layer"),
        })?;
        match fstatat(&tparent, os(tname), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if file_kind(&st) == libc::S_IFDIR => return Err(bad("is a directory")),
            Ok(_) => {}
            Err(Errno::ENOENT) => return Err(bad("does not exist in this layer")),
            Err(errno) => {
                return Err(UnpackError::Io {
                    entry: e.to_owned(),
                    op: "inspect hard link target",
                    source: errno.into(),
                })
            }
        }
        let (name, parent_comps) = comps.split_last().ok_or_else(|| UnpackError::InvalidPath {
            entry: e.to_owned(),
            reason: "names the layer root but is not a directory",
        })?;
        let parent = self.resolve_parent(e, parent_comps, true)?;
        self.clear_slot(e, &parent, comps, false)?;
        // Flags 0: a symlink target is linked itself, never followed.
        linkat(&tparent, os(tname), &parent, os(name), AtFlags::empty())
            .map_err(sys(e, "create hard link"))
    }

    fn special(
        &mut self,
        header: &tar::Header,
        kind: EntryType,
        e: &str,
        comps: &[Vec<u8>],
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let header_err = |err: io::Error| UnpackError::Header {
            entry: e.to_owned(),
            reason: err.to_string(),
        };
        let (sflag, dev) = match kind {
            EntryType::Fifo => (SFlag::S_IFIFO, 0),
            EntryType::Char | EntryType::Block => {
                if !self.opts.allow_devices {
                    return Err(UnpackError::DeviceNotAllowed {
                        entry: e.to_owned(),
                    });
                }
                let major = header.device_major().map_err(header_err)?.unwrap_or(0);
                let minor = header.device_minor().map_err(header_err)?.unwrap_or(0);
                let sflag = if kind == EntryType::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                (sflag, makedev(u64::from(major), u64::from(minor)))
            }
            _ => {
                return Err(UnpackError::UnsupportedType {
                    entry: e.to_owned(),
                    kind: format!("{kind:?}").to_lowercase(),
                })
            }
        };
        let (name, parent_comps) = comps.split_last().ok_or_else(|| UnpackError::InvalidPath {
            entry: e.to_owned(),
            reason: "names the layer root but is not a directory",
        })?;
        let parent = self.resolve_parent(e, parent_comps, true)?;
        self.clear_slot(e, &parent, comps, false)?;
        mknodat(&parent, os(name), sflag, Mode::empty(), dev).map_err(sys(e, "create node"))?;
        fchownat(
            &parent,
            os(name),
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(sys(e, "chown node"))?;
        // chmod without following: pin the node with O_PATH and chmod its /proc magic link,
        // which names the node itself (the mode given to mknodat would be cut by the umask).
        let pinned = openat(
            &parent,
            os(name),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys(e, "open node"))?;
        let proc_path = format!("/proc/self/fd/{}", pinned.as_raw_fd());
        fchmodat(
            AT_FDCWD,
            proc_path.as_str(),
            Mode::from_bits_truncate(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(sys(e, "chmod node"))?;
        skip_xattrs(e, &meta.xattrs, "special file");
        utimensat(
            &parent,
            os(name),
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(sys(e, "set node times"))
    }

    /// Applies directory modes and mtimes, deepest paths first. A directory that no longer
    /// resolves (replaced later by a non-directory, or now under a symlink) is skipped.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        for (comps, meta) in self.dirs.iter().rev() {
            let e = if comps.is_empty() {
                "/".to_owned()
            } else {
                join(comps)
            };
            let Ok(dir) = resolve_dir(&self.root, comps, false) else {
                debug!(entry = %e, "directory replaced later in the layer; metadata not applied");
                continue;
            };
            fchmod(&dir, Mode::from_bits_truncate(meta.mode))
                .map_err(sys(&e, "chmod directory"))?;
            futimens(&dir, &meta.mtime, &meta.mtime).map_err(sys(&e, "set directory times"))?;
        }
        Ok(())
    }
}

/// Reads owner, mode, mtime and xattrs of `entry` (the PAX records win over the header).
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, e: &str) -> Result<Meta, UnpackError> {
    let header_err = |reason: String| UnpackError::Header {
        entry: e.to_owned(),
        reason,
    };
    let mut xattrs = Vec::new();
    let mut pax_mtime = None;
    let exts = entry
        .pax_extensions()
        .map_err(|source| UnpackError::ReadEntry {
            entry: e.to_owned(),
            source,
        })?;
    if let Some(exts) = exts {
        for ext in exts {
            let ext = ext.map_err(|err| header_err(format!("malformed pax record: {err}")))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                pax_mtime = Some(
                    parse_pax_time(ext.value_bytes())
                        .ok_or_else(|| header_err("malformed pax mtime".to_owned()))?,
                );
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    let header = entry.header();
    // tar already folds PAX uid/gid records into the header.
    let uid = header
        .uid()
        .map_err(|err| header_err(format!("bad uid: {err}")))?;
    let gid = header
        .gid()
        .map_err(|err| header_err(format!("bad gid: {err}")))?;
    let uid = u32::try_from(uid).map_err(|_| header_err(format!("uid {uid} out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| header_err(format!("gid {gid} out of range")))?;
    let mode = header
        .mode()
        .map_err(|err| header_err(format!("bad mode: {err}")))?
        & 0o7777;
    let mtime = match pax_mtime {
        Some(t) => t,
        None => {
            let secs = header
                .mtime()
                .map_err(|err| header_err(format!("bad mtime: {err}")))?;
            TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        }
    };
    Ok(Meta {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    })
}

fn apply_xattrs(
    fd: BorrowedFd<'_>,
    e: &str,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), UnpackError> {
    for (name, value) in xattrs {
        let shown = String::from_utf8_lossy(name).into_owned();
        match xattr_policy(name) {
            XattrPolicy::Skip(why) => {
                debug!(entry = %e, xattr = %shown, why, "skipping xattr from layer");
            }
            XattrPolicy::Apply => {
                let cname = CString::new(name.as_slice()).map_err(|_| UnpackError::Header {
                    entry: e.to_owned(),
                    reason: format!("xattr name {shown:?} contains a NUL byte"),
                })?;
                fset_xattr(fd, &cname, value).map_err(|source| UnpackError::Xattr {
                    entry: e.to_owned(),
                    name: shown,
                    source,
                })?;
            }
        }
    }
    Ok(())
}

fn skip_xattrs(e: &str, xattrs: &[(Vec<u8>, Vec<u8>)], what: &str) {
    for (name, _) in xattrs {
        debug!(entry = %e, xattr = %String::from_utf8_lossy(name), what, "xattrs on this entry type are not applied");
    }
}

/// Removes `name` in `parent` and, when it is a directory, everything below it, without
/// following symlinks. Iterative, holding one descriptor per level (depth is bounded by
/// [`MAX_DEPTH`] because every directory came from a checked entry path).
fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    let st = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if file_kind(&st) != libc::S_IFDIR {
        return unlinkat(parent, name, UnlinkatFlags::NoRemoveDir);
    }
    struct Frame {
        fd: OwnedFd,
        name: CString,
        pending: Vec<CString>,
    }
    let top = open_dir_nofollow(parent, name)?;
    let pending = list_dir(top.as_fd())?;
    let mut stack = vec![Frame {
        fd: top,
        name: CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?,
        pending,
    }];
    while let Some(frame) = stack.last_mut() {
        if let Some(child) = frame.pending.pop() {
            let st = fstatat(&frame.fd, child.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
            if file_kind(&st) == libc::S_IFDIR {
                let fd = openat(
                    &frame.fd,
                    child.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                let pending = list_dir(fd.as_fd())?;
                stack.push(Frame {
                    fd,
                    name: child,
                    pending,
                });
            } else {
                unlinkat(&frame.fd, child.as_c_str(), UnlinkatFlags::NoRemoveDir)?;
            }
            continue;
        }
        let Some(done) = stack.pop() else { break };
        drop(done.fd);
        match stack.last() {
            Some(up) => unlinkat(&up.fd, done.name.as_c_str(), UnlinkatFlags::RemoveDir)?,
            None => unlinkat(parent, done.name.as_c_str(), UnlinkatFlags::RemoveDir)?,
        }
    }
    Ok(())
}

/// Hand-built layer tarballs for tests. Paths and link names are written raw into the header
/// (or a GNU long-name record), so `..` and absolute names really reach the unpacker.
#[cfg(test)]
pub(crate) mod fixtures {
    use tar::{Builder, EntryType, Header};

    /// Fixed mtime for fixture entries (2021-01-01T00:00:00Z).
    pub(crate) const MTIME: u64 = 1_609_459_200;

    pub(crate) struct Layer {
        builder: Builder<Vec<u8>>,
    }

    impl Layer {
        pub(crate) fn new() -> Self {
            Self {
                builder: Builder::new(Vec::new()),
            }
        }

        /// Appends a GNU long-name (`L`) or long-link (`K`) record.
        fn long_record(&mut self, kind: EntryType, value: &[u8]) {
            let mut h = Header::new_gnu();
            h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            h.set_entry_type(kind);
            h.set_mode(0o644);
            h.set_size(value.len() as u64 + 1);
            h.set_cksum();
            let mut data = value.to_vec();
            data.push(0);
            self.builder
                .append(&h, data.as_slice())
                .expect("append long record");
        }

        /// Header for `path` with raw name bytes; the caller finishes and appends it.
        fn header(&mut self, path: &[u8], kind: EntryType, mode: u32, size: u64) -> Header {
            if path.len() > 100 {
                self.long_record(EntryType::GNULongName, path);
            }
            let mut h = Header::new_gnu();
            let n = path.len().min(100);
            h.as_old_mut().name[..n].copy_from_slice(&path[..n]);
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(MTIME);
            h
        }

        fn set_link(&mut self, h: &mut Header, target: &[u8]) {
            if target.len() > 100 {
                self.long_record(EntryType::GNULongLink, target);
            }
            let n = target.len().min(100);
            h.as_old_mut().linkname[..n].copy_from_slice(&target[..n]);
        }

        fn push(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
            h.set_cksum();
            self.builder.append(&h, data).expect("append entry");
            self
        }

        pub(crate) fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
            let h = self.header(path.as_bytes(), EntryType::Directory, mode, 0);
            self.push(h, &[])
        }

        pub(crate) fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
            self.file_owned(path, data, mode, 0, 0)
        }

        pub(crate) fn file_owned(
            &mut self,
            path: &str,
            data: &[u8],
            mode: u32,
            uid: u64,
            gid: u64,
        ) -> &mut Self {
            let mut h = self.header(path.as_bytes(), EntryType::Regular, mode, data.len() as u64);
            h.set_uid(uid);
            h.set_gid(gid);
            self.push(h, data)
        }

        pub(crate) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
            let mut h = self.header(path.as_bytes(), EntryType::Symlink, 0o777, 0);
            self.set_link(&mut h, target.as_bytes());
            self.push(h, &[])
        }

        pub(crate) fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
            let mut h = self.header(path.as_bytes(), EntryType::Link, 0o644, 0);
            self.set_link(&mut h, target.as_bytes());
            self.push(h, &[])
        }

        pub(crate) fn node(
            &mut self,
            path: &str,
            kind: EntryType,
            major: u32,
            minor: u32,
        ) -> &mut Self {
            let mut h = self.header(path.as_bytes(), kind, 0o620, 0);
            h.set_device_major(major)
                .expect("gnu header has device fields");
            h.set_device_minor(minor)
                .expect("gnu header has device fields");
            self.push(h, &[])
        }

        /// A whiteout for `name` in `dir` ("" for the root), as a registry layer carries it.
        pub(crate) fn whiteout(&mut self, dir: &str, name: &str) -> &mut Self {
            let path = if dir.is_empty() {
                format!(".wh.{name}")
            } else {
                format!("{dir}/.wh.{name}")
            };
            self.file(&path, b"", 0o644)
        }

        /// Marks `dir` opaque.
        pub(crate) fn opaque(&mut self, dir: &str) -> &mut Self {
            self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
        }

        /// A regular file preceded by a PAX record set.
        pub(crate) fn pax_file(
            &mut self,
            path: &str,
            data: &[u8],
            mode: u32,
            records: &[(&str, &[u8])],
        ) -> &mut Self {
            self.builder
                .append_pax_extensions(records.iter().copied())
                .expect("append pax records");
            self.file(path, data, mode)
        }

        /// A directory preceded by a PAX record set.
        pub(crate) fn pax_dir(
            &mut self,
            path: &str,
            mode: u32,
            records: &[(&str, &[u8])],
        ) -> &mut Self {
            self.builder
                .append_pax_extensions(records.iter().copied())
                .expect("append pax records");
            self.dir(path, mode)
        }

        pub(crate) fn finish(self) -> Vec<u8> {
            self.builder.into_inner().expect("finish tar")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{Layer, MTIME};
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    /// Reads xattr `name` of `path` without following a final symlink.
    fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let p = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
        let n = CString::new(name).expect("name without NUL");
        let mut buf = vec![0u8; 4096];
        // SAFETY: both strings are NUL-terminated and `buf` is writable for `buf.len()` bytes.
        let rc =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if rc < 0 {
            return None;
        }
        buf.truncate(rc as usize);
        Some(buf)
    }

    /// `top/` (the sentinel parent, holding `sentinel.txt`) > `mid/` > `dest/`.
    /// A symlink `dest/x -> ../..` reaches `top`.
    struct Sandbox {
        top: tempfile::TempDir,
        dest: PathBuf,
    }

    impl Sandbox {
        fn new() -> Self {
            let top = tempfile::tempdir().expect("tempdir");
            fs::write(top.path().join("sentinel.txt"), b"untouched").expect("sentinel");
            let dest = top.path().join("mid").join("dest");
            fs::create_dir_all(&dest).expect("dest");
            Self { top, dest }
        }

        /// Everything under `top` except `dest`'s subtree: path -> (kind, size, mode, mtime).
        fn outside(&self) -> BTreeMap<PathBuf, (u32, u64, u32, i64)> {
            let mut out = BTreeMap::new();
            let mut stack = vec![self.top.path().to_path_buf()];
            while let Some(dir) = stack.pop() {
                for ent in fs::read_dir(&dir).expect("read_dir") {
                    let path = ent.expect("dir entry").path();
                    if path == self.dest {
                        continue;
                    }
                    let md = fs::symlink_metadata(&path).expect("lstat");
                    out.insert(
                        path.clone(),
                        (md.mode() & libc::S_IFMT, md.len(), md.mode(), md.mtime()),
                    );
                    if md.is_dir() {
                        stack.push(path);
                    }
                }
            }
            out
        }

        /// Unpacks `layer` and asserts nothing outside `dest` changed, whatever the result.
        fn unpack(&self, layer: Vec<u8>, opts: &UnpackOptions) -> Result<UnpackStats, UnpackError> {
            let before = self.outside();
            let res = unpack_layer(layer.as_slice(), &self.dest, opts);
            assert_eq!(
                before,
                self.outside(),
                "layer changed something outside dest"
            );
            assert_eq!(
                fs::read(self.top.path().join("sentinel.txt")).expect("sentinel"),
                b"untouched"
            );
            res
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dest.join(rel)
        }
    }

    fn unpack_ok(sb: &Sandbox, layer: Vec<u8>) -> UnpackStats {
        sb.unpack(layer, &UnpackOptions::default())
            .expect("layer unpacks")
    }

    #[test]
    fn normalise_strips_root_and_dots_and_rejects_parent() {
        assert_eq!(
            normalise(b"/a/./b//c/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(normalise(b"./").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(normalise(b"a/../b"), Err(PathProblem::ParentDir));
        assert_eq!(normalise(b"..").unwrap_err(), PathProblem::ParentDir);
        assert_eq!(normalise(&[b'a'; 5000]), Err(PathProblem::TooLong));
        assert_eq!(
            normalise("a/".repeat(300).as_bytes()),
            Err(PathProblem::TooDeep)
        );
    }

    #[test]
    fn pax_time_parses_fractions_and_negatives() {
        assert_eq!(
            parse_pax_time(b"12.5"),
            Some(TimeSpec::new(12, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"7"), Some(TimeSpec::new(7, 0)));
        assert_eq!(
            parse_pax_time(b"-1.25"),
            Some(TimeSpec::new(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time(b"1x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }

    #[test]
    fn plain_layer_gets_content_owner_mode_mtime_and_diff_id() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.dir("etc", 0o755)
            .file_owned("etc/app.conf", b"key=value\n", 0o640, 1234, 5678)
            .symlink("etc/link", "app.conf")
            .hardlink("etc/hard", "etc/app.conf")
            .node("run.fifo", EntryType::Fifo, 0, 0)
            .file("implicit/parent/file", b"x", 0o600);
        let tar = l.finish();
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let stats = unpack_ok(&sb, tar.clone());
        assert_eq!(stats.diff_id, expected);
        assert_eq!(stats.bytes, tar.len() as u64);
        assert_eq!(stats.entries, 6);
        assert_eq!(stats.file_bytes, 11);

        let conf = fs::symlink_metadata(sb.path("etc/app.conf")).unwrap();
        assert_eq!(fs::read(sb.path("etc/app.conf")).unwrap(), b"key=value\n");
        assert_eq!((conf.uid(), conf.gid()), (1234, 5678));
        assert_eq!(conf.mode() & 0o7777, 0o640);
        assert_eq!(conf.mtime(), MTIME as i64);
        assert_eq!(conf.nlink(), 2);
        let hard = fs::symlink_metadata(sb.path("etc/hard")).unwrap();
        assert_eq!(hard.ino(), conf.ino());
        assert_eq!(
            fs::read_link(sb.path("etc/link")).unwrap(),
            Path::new("app.conf")
        );
        assert!(fs::symlink_metadata(sb.path("run.fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let implicit = fs::metadata(sb.path("implicit/parent")).unwrap();
        assert_eq!(implicit.mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(sb.path("etc")).unwrap().mtime(), MTIME as i64);
    }

    #[test]
    fn diff_id_covers_bytes_after_the_end_marker() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.file("a", b"a", 0o644);
        let mut tar = l.finish();
        tar.extend_from_slice(&[0u8; 4096]);
        let stats = unpack_ok(&sb, tar.clone());
        assert_eq!(stats.bytes, tar.len() as u64);
        assert_eq!(
            stats.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
    }

    #[test]
    fn destination_must_be_empty() {
        let sb = Sandbox::new();
        fs::write(sb.path("old"), b"x").unwrap();
        let err = sb
            .unpack(Layer::new().finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(
            matches!(err, UnpackError::DestinationNotEmpty { .. }),
            "{err}"
        );
    }

    #[test]
    fn parent_escape_is_rejected() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.file("../escape", b"pwned", 0o644);
        let err = sb
            .unpack(l.finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(
            matches!(&err, UnpackError::ParentComponent { entry } if entry == "../escape"),
            "{err}"
        );
        assert!(err.to_string().contains("\"../escape\""), "{err}");
    }

    #[test]
    fn parent_escape_in_the_middle_is_rejected() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.dir("a", 0o755).file("a/../../x", b"pwned", 0o644);
        let err = sb
            .unpack(l.finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(
            matches!(&err, UnpackError::ParentComponent { entry } if entry == "a/../../x"),
            "{err}"
        );
    }

    #[test]
    fn parent_escape_in_a_gnu_long_name_is_rejected() {
        let sb = Sandbox::new();
        let name = format!("{}/../../../x", "d".repeat(120));
        let mut l = Layer::new();
        l.file(&name, b"pwned", 0o644);
        let err = sb
            .unpack(l.finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(
            matches!(&err, UnpackError::ParentComponent { entry } if *entry == name),
            "{err}"
        );
    }

    #[test]
    fn absolute_path_is_stripped_to_inside() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.file("/abs/file", b"inside", 0o644)
            .file("./dot/file", b"dot", 0o644);
        unpack_ok(&sb, l.finish());
        assert_eq!(fs::read(sb.path("abs/file")).unwrap(), b"inside");
        assert_eq!(fs::read(sb.path("dot/file")).unwrap(), b"dot");
    }

    #[test]
    fn file_through_symlink_to_root_is_rejected() {
        let sb = Sandbox::new();
        let marker = format!("flotilla-unpack-escape-{}", std::process::id());
        let mut l = Layer::new();
        l.symlink("evil", "/")
            .file(&format!("evil/tmp/{marker}"), b"pwned", 0o644);
        let err = sb
            .unpack(l.finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(
            matches!(&err, UnpackError::SymlinkInPath { component, .. } if component == "evil"),
            "{err}"
        );
        assert!(!Path::new("/tmp").join(&marker).exists());
    }

    #[test]
    fn file_through_absolute_symlink_to_sentinel_is_rejected() {
        let sb = Sandbox::new();
        let top = sb.top.path().to_str().unwrap().to_owned();
        let mut l = Layer::new();
        l.symlink("evil", &top)
            .file("evil/sentinel.txt", b"pwned", 0o644);
        let err = sb
            .unpack(l.finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(matches!(err, UnpackError::SymlinkInPath { .. }), "{err}");
    }

    #[test]
    fn directory_through_relative_symlink_is_rejected() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.symlink("evil", "../..").dir("evil/escaped", 0o755);
        let err = sb
            .unpack(l.finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(matches!(err, UnpackError::SymlinkInPath { .. }), "{err}");
        assert!(!sb.top.path().join("escaped").exists());
    }

    #[test]
    fn symlink_deeper_in_the_path_is_rejected() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.dir("a", 0o755)
            .symlink("a/b", "../../..")
            .file("a/b/c/d", b"pwned", 0o644);
        let err = sb
            .unpack(l.finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(
            matches!(&err, UnpackError::SymlinkInPath { component, .. } if component == "a/b"),
            "{err}"
        );
    }

    #[test]
    fn later_file_replaces_symlink_instead_of_writing_through_it() {
        let sb = Sandbox::new();
        let sentinel = sb.top.path().join("sentinel.txt");
        let mut l = Layer::new();
        l.symlink("link", sentinel.to_str().unwrap())
            .file("link", b"replaced", 0o644);
        unpack_ok(&sb, l.finish());
        let md = fs::symlink_metadata(sb.path("link")).unwrap();
        assert!(md.is_file());
        assert_eq!(fs::read(sb.path("link")).unwrap(), b"replaced");
    }

    #[test]
    fn hard_link_to_host_file_is_rejected() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.hardlink("passwd", "/etc/passwd");
        let err = sb
            .unpack(l.finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(
            matches!(&err, UnpackError::HardLinkTarget { target, .. } if target == "/etc/passwd"),
            "{err}"
        );
        assert!(!sb.path("passwd").exists());
    }

    #[test]
    fn hard_link_with_parent_components_is_rejected() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.hardlink("s", "../../sentinel.txt");
        let err = sb
            .unpack(l.finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(matches!(err, UnpackError::HardLinkTarget { .. }), "{err}");
    }

    #[test]
    fn hard_link_through_symlink_is_rejected() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.symlink("evil", "/etc").hardlink("passwd", "evil/passwd");
        let err = sb
            .unpack(l.finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(
            matches!(&err, UnpackError::HardLinkTarget { reason, .. } if reason.contains("symlink")),
            "{err}"
        );
        let mut l = Layer::new();
        let sb = Sandbox::new();
        l.symlink("evil", "../../sentinel.txt")
            .hardlink("s", "evil");
        // Linking the symlink itself is fine: it stays a symlink inside dest, never followed.
        unpack_ok(&sb, l.finish());
        assert!(fs::symlink_metadata(sb.path("s"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn devices_need_allow_devices() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.node("dev/null", EntryType::Char, 1, 3);
        let err = sb
            .unpack(l.finish(), &UnpackOptions::default())
            .unwrap_err();
        assert!(matches!(err, UnpackError::DeviceNotAllowed { .. }), "{err}");

        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.node("dev/null", EntryType::Char, 1, 3)
            .node("dev/loop9", EntryType::Block, 7, 9);
        let opts = UnpackOptions {
            allow_devices: true,
        };
        sb.unpack(l.finish(), &opts).expect("devices allowed");
        let null = fs::symlink_metadata(sb.path("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o620);
        let lp = fs::symlink_metadata(sb.path("dev/loop9")).unwrap();
        assert!(lp.file_type().is_block_device());
        assert_eq!(lp.rdev(), makedev(7, 9));
    }

    #[test]
    fn special_modes_are_kept_and_dir_modes_applied_last() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.dir("ro", 0o555)
            .file_owned("ro/su", b"#!", 0o4755, 0, 0)
            .file_owned("ro/sg", b"#!", 0o2711, 0, 50)
            .dir("tmp", 0o1777);
        unpack_ok(&sb, l.finish());
        assert_eq!(
            fs::metadata(sb.path("ro/su")).unwrap().mode() & 0o7777,
            0o4755
        );
        assert_eq!(
            fs::metadata(sb.path("ro/sg")).unwrap().mode() & 0o7777,
            0o2711
        );
        assert_eq!(
            fs::metadata(sb.path("ro")).unwrap().permissions().mode() & 0o7777,
            0o555
        );
        assert_eq!(
            fs::metadata(sb.path("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.file("f", b"first", 0o600)
            .file("f", b"second", 0o644)
            .file("d", b"file then dir", 0o644)
            .dir("d", 0o700)
            .file("d/child", b"c", 0o644)
            .dir("keep", 0o755)
            .file("keep/child", b"k", 0o644)
            .dir("keep", 0o711)
            .dir("gone", 0o755)
            .file("gone/child", b"g", 0o644)
            .symlink("gone", "f");
        unpack_ok(&sb, l.finish());
        assert_eq!(fs::read(sb.path("f")).unwrap(), b"second");
        assert_eq!(fs::metadata(sb.path("f")).unwrap().mode() & 0o7777, 0o644);
        assert!(fs::metadata(sb.path("d")).unwrap().is_dir());
        assert_eq!(fs::metadata(sb.path("d")).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(fs::read(sb.path("keep/child")).unwrap(), b"k");
        assert_eq!(
            fs::metadata(sb.path("keep")).unwrap().mode() & 0o7777,
            0o711
        );
        assert!(fs::symlink_metadata(sb.path("gone"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn whiteouts_become_overlay_form() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.dir("etc", 0o755)
            .file("etc/shadow", b"secret", 0o600)
            .whiteout("etc", "shadow")
            .whiteout("", "from-lower")
            .dir("var", 0o755)
            .dir("var/cache", 0o755)
            .file("var/cache/x", b"x", 0o644)
            .whiteout("var", "cache")
            .dir("opq", 0o755)
            .opaque("opq")
            .file("opq/kept", b"kept", 0o644)
            .opaque("new/deep");
        unpack_ok(&sb, l.finish());
        for rel in ["etc/shadow", "from-lower", "var/cache"] {
            let md = fs::symlink_metadata(sb.path(rel)).unwrap();
            assert!(md.file_type().is_char_device(), "{rel} is a whiteout");
            assert_eq!(md.rdev(), 0, "{rel} is 0:0");
            assert_eq!((md.uid(), md.gid()), (0, 0));
        }
        assert!(!sb.path("etc/.wh.shadow").exists());
        assert!(!sb.path("opq/.wh..wh..opq").exists());
        assert_eq!(
            get_xattr(&sb.path("opq"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            get_xattr(&sb.path("new/deep"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(get_xattr(&sb.path("etc"), "trusted.overlay.opaque"), None);
        assert_eq!(fs::read(sb.path("opq/kept")).unwrap(), b"kept");
    }

    #[test]
    fn whiteout_paths_pass_the_same_checks() {
        type Case = (&'static str, fn(&mut Layer));
        let cases: Vec<Case> = vec![
            ("parent", |l| {
                l.file("../.wh.sentinel.txt", b"", 0o644);
            }),
            ("symlink", |l| {
                l.symlink("evil", "../..")
                    .file("evil/.wh.sentinel.txt", b"", 0o644);
            }),
            ("opaque through symlink", |l| {
                l.symlink("evil", "../..")
                    .file("evil/.wh..wh..opq", b"", 0o644);
            }),
            ("dot-dot name", |l| {
                l.file("a/.wh...", b"", 0o644);
            }),
        ];
        for (what, build) in cases {
            let sb = Sandbox::new();
            let mut l = Layer::new();
            build(&mut l);
            let err = sb.unpack(l.finish(), &UnpackOptions::default());
            assert!(err.is_err(), "{what}: hostile whiteout accepted");
            assert!(sb.top.path().join("sentinel.txt").is_file(), "{what}");
            assert_eq!(
                get_xattr(sb.top.path(), "trusted.overlay.opaque"),
                None,
                "{what}"
            );
        }
    }

    #[test]
    fn pax_xattrs_are_filtered_and_applied() {
        let sb = Sandbox::new();
        // VFS_CAP_REVISION_2 with CAP_NET_BIND_SERVICE permitted and effective.
        let mut cap = Vec::new();
        cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
        cap.extend_from_slice(&(1u32 << 10).to_le_bytes());
        cap.extend_from_slice(&[0u8; 12]);
        let mut l = Layer::new();
        l.pax_dir(
            "dir",
            0o755,
            &[
                ("SCHILY.xattr.user.dir", b"d"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ],
        )
        .pax_file(
            "dir/bin",
            b"\x7fELF",
            0o755,
            &[
                ("SCHILY.xattr.user.note", b"hello"),
                ("SCHILY.xattr.security.capability", &cap),
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
                (
                    "SCHILY.xattr.security.selinux",
                    b"system_u:object_r:bin_t:s0",
                ),
                ("mtime", b"1700000000.5"),
            ],
        );
        unpack_ok(&sb, l.finish());
        let bin = sb.path("dir/bin");
        assert_eq!(get_xattr(&bin, "user.note").as_deref(), Some(&b"hello"[..]));
        assert_eq!(get_xattr(&bin, "security.capability"), Some(cap));
        assert_eq!(get_xattr(&bin, "trusted.overlay.redirect"), None);
        assert_eq!(
            get_xattr(&sb.path("dir"), "user.dir").as_deref(),
            Some(&b"d"[..])
        );
        assert_eq!(get_xattr(&sb.path("dir"), "trusted.overlay.opaque"), None);
        let md = fs::metadata(&bin).unwrap();
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 500_000_000));
    }

    #[test]
    fn truncated_stream_is_a_read_error() {
        let sb = Sandbox::new();
        let mut l = Layer::new();
        l.file("big", &[7u8; 10_000], 0o644);
        let tar = l.finish();
        let err = sb
            .unpack(tar[..3000].to_vec(), &UnpackOptions::default())
            .unwrap_err();
        assert!(
            matches!(&err, UnpackError::ReadEntry { entry, .. } if entry == "big"),
            "{err}"
        );
        assert!(err.to_string().contains("of 10000 content bytes"), "{err}");
    }
}
