//! On-disk container state under the runtime root (`<root>/<id>/state.json`) and status derivation.
//!
//! The file is written atomically (temp file, fsync, rename) at each step of `create`, so a runtime
//! killed at any point leaves a record that `delete` can act on: the creator's pid, and once known
//! the init pid with its start time (guarding against pid reuse) and the cgroup path.
//! Status is derived, never stored: a live init with the exec fifo present is `created`, without it
//! `running` (or `paused` when frozen), a dead or reused pid is `stopped`.
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::RuntimeError;

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The `flotilla-runtime create` process, while it is still setting up.
    pub creator_pid: i32,
    pub pid: Option<i32>,
    /// Field 22 of /proc/PID/stat when the pid was recorded.
    pub pid_start: Option<u64>,
    /// Relative cgroup path (same in every hierarchy).
    pub cgroup_path: PathBuf,
    /// True once create finished; false means a create was interrupted.
    pub created: bool,
    pub created_at: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
}

/// Valid ids: what runc accepts, so ids can be used as file names safely.
pub fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with(['.', '-'])
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_string()))
    }
}

pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

pub fn load(root: &Path, id: &str) -> Result<Record, RuntimeError> {
    validate_id(id)?;
    let path = dir(root, id).join(STATE_FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A directory without a record is a create killed right after claiming the id.
            if dir(root, id).is_dir() {
                return Err(RuntimeError::CorruptState {
                    path,
                    reason: "no state recorded (interrupted create)".into(),
                });
            }
            return Err(RuntimeError::NotFound(id.into()));
        }
        Err(e) => return Err(RuntimeError::io("read state", path, e)),
    };
    serde_json::from_slice(&data).map_err(|e| RuntimeError::CorruptState {
        path,
        reason: e.to_string(),
    })
}

pub fn save(root: &Path, rec: &Record) -> Result<(), RuntimeError> {
    let d = dir(root, &rec.id);
    let path = d.join(STATE_FILE);
    let tmp = d.join(".state.json.tmp");
    let data = serde_json::to_vec_pretty(rec).map_err(|e| RuntimeError::CorruptState {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| RuntimeError::io("write state", &tmp, e))?;
    f.write_all(&data)
        .and_then(|_| f.sync_all())
        .map_err(|e| RuntimeError::io("write state", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| RuntimeError::io("write state", &path, e))
}

/// What /proc says about a pid: its start time, or None if gone or a zombie.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Parses /proc/PID/stat: None for a zombie/dead process, else the start time (field 22).
pub fn parse_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Facts gathered from the system, kept apart so status derivation is pure.
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    pub creator_alive: bool,
    pub pid_start: Option<u64>,
    pub fifo_exists: bool,
    pub frozen: bool,
}

pub fn derive_status(rec: &Record, o: &Observed) -> Status {
    match rec.pid {
        None if o.creator_alive && !rec.created => Status::Creating,
        None => Status::Stopped,
        Some(_) => {
            let alive = o.pid_start.is_some() && o.pid_start == rec.pid_start;
            if !alive {
                if !rec.created && o.creator_alive {
                    return Status::Creating;
                }
                return Status::Stopped;
            }
            if !rec.created {
                return if o.creator_alive {
                    Status::Creating
                } else {
                    Status::Stopped
                };
            }
            if o.fifo_exists {
                Status::Created
            } else if o.frozen {
                Status::Paused
            } else {
                Status::Running
            }
        }
    }
}

/// Lists container ids under root (every directory, so interrupted creates show up), sorted.
pub fn list_ids(root: &Path) -> Result<Vec<String>, RuntimeError> {
    let mut ids = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(RuntimeError::io("list", root, e)),
    };
    for entry in rd.flatten() {
        if entry.path().is_dir() {
            if let Some(name) = entry.file_name().to_str() {
                // Dot directories are the runtime's own (the seccomp cache), not containers.
                if !name.starts_with('.') {
                    ids.push(name.to_string());
                }
            }
        }
    }
    ids.sort();
    Ok(ids)
}

/// RFC 3339 UTC timestamp of now.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Civil date from a Unix time (Howard Hinnant's days-from-civil inverse).
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pid: Option<i32>, created: bool) -> Record {
        Record {
            id: "c1".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            creator_pid: 10,
            pid,
            pid_start: pid.map(|_| 777),
            cgroup_path: "flotilla/c1".into(),
            created,
            created_at: rfc3339(0, 0),
            owner: "root".into(),
            annotations: Default::default(),
        }
    }

    fn obs(creator_alive: bool, start: Option<u64>, fifo: bool, frozen: bool) -> Observed {
        Observed {
            creator_alive,
            pid_start: start,
            fifo_exists: fifo,
            frozen,
        }
    }

    #[test]
    fn status_follows_the_lifecycle() {
        assert_eq!(
            derive_status(&rec(None, false), &obs(true, None, true, false)),
            Status::Creating
        );
        assert_eq!(
            derive_status(&rec(None, false), &obs(false, None, true, false)),
            Status::Stopped
        );
        assert_eq!(
            derive_status(&rec(Some(5), true), &obs(false, Some(777), true, false)),
            Status::Created
        );
        assert_eq!(
            derive_status(&rec(Some(5), true), &obs(false, Some(777), false, false)),
            Status::Running
        );
        assert_eq!(
            derive_status(&rec(Some(5), true), &obs(false, Some(777), false, true)),
            Status::Paused
        );
        assert_eq!(
            derive_status(&rec(Some(5), true), &obs(false, None, false, false)),
            Status::Stopped
        );
        // Same pid, different start time: the pid was reused by another process.
        assert_eq!(
            derive_status(&rec(Some(5), true), &obs(false, Some(778), false, false)),
            Status::Stopped
        );
        // A create that died after recording the pid is stopped, so delete can clean it.
        assert_eq!(
            derive_status(&rec(Some(5), false), &obs(false, Some(777), true, false)),
            Status::Stopped
        );
    }

    #[test]
    fn stat_parsing_handles_odd_command_names_and_zombies() {
        let live = "42 (a) b)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10 18446744073709551615";
        assert_eq!(parse_stat(live), Some(123456));
        let zombie = "42 (sh) Z 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        assert_eq!(parse_stat(zombie), None);
        assert_eq!(parse_stat("garbage"), None);
        assert!(proc_start_time(std::process::id() as i32).is_some());
    }

    #[test]
    fn ids_are_checked() {
        for ok in ["a", "web-1", "x_y.z", "A1"] {
            validate_id(ok).expect(ok);
        }
        for bad in ["", "../x", "a/b", ".hidden", "-flag", "sp ace"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_856_400, 5), "2026-11-28T09:00:00.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn save_and_load_round_trip_and_corruption_is_reported() {
        let root = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(root.path().join("c1")).expect("dir");
        let r = rec(Some(5), true);
        save(root.path(), &r).expect("save");
        assert_eq!(load(root.path(), "c1").expect("load"), r);
        assert_eq!(list_ids(root.path()).expect("list"), vec!["c1".to_string()]);
        std::fs::write(root.path().join("c1").join(STATE_FILE), "{").expect("corrupt");
        let err = load(root.path(), "c1").expect_err("corrupt").to_string();
        assert!(err.contains("delete --force"), "{err}");
        assert!(matches!(
            load(root.path(), "nope"),
            Err(RuntimeError::NotFound(_))
        ));
    }
}
