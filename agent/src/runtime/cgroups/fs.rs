//! Reading and writing cgroup interface files, with errors that carry the path and the value.
//!
//! Invariants: writes open an existing file (never `O_CREAT`: a missing interface file means a
//! missing controller, and must not be papered over by creating a regular file) and truncate it,
//! so a fake cgroupfs tree in tests holds exactly the last value written, like the kernel reports.
//! Under `cfg(test)` every successful write is also recorded in a per-thread log, so tests can
//! assert the order of writes and that a rejected request wrote nothing.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::CgroupError;

/// Writes `value` to the cgroup interface file `path` in a single write.
pub(super) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let err = |source: io::Error| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    file.write_all(value.as_bytes()).map_err(err)?;
    #[cfg(test)]
    write_log::record(path, value);
    tracing::trace!(path = %path.display(), value, "cgroup write");
    Ok(())
}

/// Reads a whole interface file.
pub(super) fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads an interface file, trimmed of surrounding white space.
pub(super) fn read_trimmed(path: &Path) -> Result<String, CgroupError> {
    Ok(read(path)?.trim().to_string())
}

/// Reads a file holding one unsigned number.
pub(super) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read_trimmed(path)?;
    text.parse::<u64>().map_err(|e| CgroupError::Parse {
        path: path.to_path_buf(),
        value: text.clone(),
        reason: e.to_string(),
    })
}

/// Reads a limit file: `max` (v2) or the v1 "unlimited" value give `None`.
pub(super) fn read_limit(path: &Path) -> Result<Option<u64>, CgroupError> {
    let text = read_trimmed(path)?;
    super::stats::parse_limit(&text).map_err(|reason| CgroupError::Parse {
        path: path.to_path_buf(),
        value: text.clone(),
        reason,
    })
}

/// Whether `path` exists (files or directories; a broken symlink counts as missing).
pub(super) fn exists(path: &Path) -> bool {
    path.exists()
}

/// `mkdir -p` of a cgroup directory.
pub(super) fn mkdir_all(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(|source| CgroupError::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses `cgroup.procs`: one pid per line.
pub(super) fn read_pids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let text = read(path)?;
    let mut pids = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let pid = line.parse::<i32>().map_err(|e| CgroupError::Parse {
            path: path.to_path_buf(),
            value: line.to_string(),
            reason: e.to_string(),
        })?;
        pids.push(pid);
    }
    Ok(pids)
}

/// Removes the cgroup directory `dir` and every child cgroup below it (depth first).
///
/// A missing directory is success (destroy is idempotent). `EBUSY` — processes still exiting —
/// is retried with a growing pause until `timeout` has passed. Only directories are removed:
/// the interface files inside a cgroup go away with its `rmdir`.
pub(super) fn remove_cgroup(dir: &Path, timeout: Duration) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Remove {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut children: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Remove {
            path: dir.to_path_buf(),
            source,
        })?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            children.push(entry.path());
        }
    }
    for child in children {
        remove_cgroup(&child, timeout)?;
    }

    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => {
                tracing::debug!(path = %dir.display(), "removed cgroup");
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if start.elapsed() >= timeout {
                    return Err(CgroupError::Busy {
                        path: dir.to_path_buf(),
                        waited_ms: duration_ms(start.elapsed()),
                    });
                }
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Polls `check` until it returns `Some`, or `timeout` passes (then `None`).
pub(super) fn poll<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>, CgroupError>,
) -> Result<Option<T>, CgroupError> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(500);
    loop {
        if let Some(v) = check()? {
            return Ok(Some(v));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

pub(super) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The text of an I/O error in house style: lower case, without the "(os error N)" suffix.
pub(super) fn io_text(e: &io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    };
    lower_first(&text)
}

/// The text of an errno in house style.
pub(super) fn errno_text(e: &nix::errno::Errno) -> String {
    lower_first(e.desc())
}

fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Test-only record of the writes made by this thread, in order.
#[cfg(test)]
pub(super) mod write_log {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    thread_local! {
        static LOG: RefCell<Vec<(PathBuf, String)>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn record(path: &Path, value: &str) {
        LOG.with(|log| {
            log.borrow_mut()
                .push((path.to_path_buf(), value.to_string()))
        });
    }

    /// Takes (and clears) this thread's log.
    pub(crate) fn take() -> Vec<(PathBuf, String)> {
        LOG.with(|log| std::mem::take(&mut *log.borrow_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_error_names_value_path_and_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory.limit_in_bytes");
        let err = write(&path, "-5").expect_err("missing file must fail");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot write \"-5\" to {}: no such file or directory",
                path.display()
            )
        );
    }

    #[test]
    fn write_truncates_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pids.max");
        fs::write(&path, "max\n").expect("seed");
        write(&path, "12").expect("write");
        assert_eq!(read_trimmed(&path).expect("read"), "12");
        assert_eq!(read_u64(&path).expect("u64"), 12);
        fs::write(&path, "max\n").expect("seed");
        assert_eq!(read_limit(&path).expect("limit"), None);
    }

    #[test]
    fn read_pids_parses_and_rejects_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cgroup.procs");
        fs::write(&path, "12\n345\n\n").expect("seed");
        assert_eq!(read_pids(&path).expect("pids"), vec![12, 345]);
        fs::write(&path, "12\nabc\n").expect("seed");
        let err = read_pids(&path).expect_err("garbage");
        assert!(err.to_string().contains("\"abc\""), "{err}");
    }

    #[test]
    fn remove_cgroup_is_depth_first_and_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cg = dir.path().join("a");
        fs::create_dir_all(cg.join("b/c")).expect("mkdir");
        remove_cgroup(&cg, Duration::from_millis(10)).expect("remove");
        assert!(!cg.exists());
        remove_cgroup(&cg, Duration::from_millis(10)).expect("second remove is fine");
    }

    #[test]
    fn io_text_is_lower_case_without_os_error_suffix() {
        let e = io::Error::from_raw_os_error(libc::EINVAL);
        assert_eq!(io_text(&e), "invalid argument");
        assert_eq!(errno_text(&nix::errno::Errno::ESRCH), "no such process");
    }
}
