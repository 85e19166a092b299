//! Per-task files on tmpfs: the secret and config files bound into task containers, and the last
//! status reported for each task (so that a restarted agent tells a task it shut down from one
//! that failed).
//!
//! Layout: `<root>/<task id>/secrets/<target>`, `<root>/<task id>/configs/<n>`,
//! `<root>/<task id>/status.json`. Invariants: `<root>` is a tmpfs (mounted by [`TaskFiles::open`]
//! when it is not one), so secrets never reach a disk; the directories are root-only (0700), or
//! traversable (0711) when containers run user-namespaced and their runtime must reach the bind
//! sources; a task's directory goes when its task is removed.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flotilla_proto::control::v1 as pb;
use thiserror::Error;
use tracing::{info, warn};

use super::spec::{self, FileMount};

#[derive(Debug, Error)]
pub enum FilesError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mount a tmpfs on {path} for task secrets: {source}")]
    Mount { path: PathBuf, source: nix::Error },
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> FilesError {
    FilesError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path` is on a tmpfs.
pub fn is_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// A task id usable as a directory name.
pub fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The secret/config data of one reference, ready to be written.
pub struct FileData<'a> {
    pub target: String,
    pub data: &'a [u8],
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

pub struct TaskFiles {
    root: PathBuf,
    /// userns-remap: (uid, gid) of the containers' root on the host.
    remap: Option<(u32, u32)>,
}

impl TaskFiles {
    /// Creates `root` and makes sure it is a tmpfs (mounting one when it is not).
    pub fn open(root: &Path, remap: Option<(u32, u32)>) -> Result<TaskFiles, FilesError> {
        std::fs::create_dir_all(root).map_err(|e| io("create", root, e))?;
        let root = std::fs::canonicalize(root).map_err(|e| io("resolve", root, e))?;
        let dir_mode = if remap.is_some() { 0o711 } else { 0o700 };
        if !is_tmpfs(&root) {
            use nix::mount::{mount, MsFlags};
            let opts = format!("mode={dir_mode:o}");
            mount(
                Some("tmpfs"),
                &root,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(opts.as_str()),
            )
            .map_err(|source| FilesError::Mount {
                path: root.clone(),
                source,
            })?;
            info!(dir = %root.display(), "mounted a tmpfs for task secrets");
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(dir_mode))
            .map_err(|e| io("chmod", &root, e))?;
        Ok(TaskFiles { root, remap })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.root.join(task_id)
    }

    /// Task ids that have a directory.
    pub fn task_ids(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| valid_task_id(n))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn mkdir(&self, p: &Path) -> Result<(), String> {
        match std::fs::create_dir(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create {}: {e}", p.display())),
        }
        let mode = if self.remap.is_some() { 0o711 } else { 0o700 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", p.display()))
    }

    fn write_one(&self, path: &Path, f: &FileData<'_>) -> Result<(), String> {
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("create {}: {e}", tmp.display()))?;
        file.write_all(f.data)
            .map_err(|e| format!("write {}: {e}", tmp.display()))?;
        drop(file);
        let (uid, gid) = match self.remap {
            Some((ru, rg)) => (f.uid.saturating_add(ru), f.gid.saturating_add(rg)),
            None => (f.uid, f.gid),
        };
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", tmp.display()))?;
        // After chown, which would clear set-id bits.
        std::fs::set_permissions(
            &tmp,
            std::fs::Permissions::from_mode(spec::file_mode(f.mode)),
        )
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("rename {}: {e}", path.display()))
    }

    /// Writes a task's secret and config files; the bind mounts that expose them.
    pub fn write(
        &self,
        task_id: &str,
        secrets: &[FileData<'_>],
        configs: &[FileData<'_>],
    ) -> Result<Vec<FileMount>, String> {
        if !valid_task_id(task_id) {
            return Err(format!("invalid task id {task_id:?}"));
        }
        let dir = self.task_dir(task_id);
        self.mkdir(&dir)?;
        let mut out = Vec::new();
        if !secrets.is_empty() {
            let sdir = dir.join("secrets");
            self.mkdir(&sdir)?;
            for s in secrets {
                let p = sdir.join(&s.target);
                self.write_one(&p, s)?;
                out.push(FileMount {
                    source: p.display().to_string(),
                    target: format!("/run/secrets/{}", s.target),
                });
            }
        }
        if !configs.is_empty() {
            let cdir = dir.join("configs");
            self.mkdir(&cdir)?;
            for (i, c) in configs.iter().enumerate() {
                let p = cdir.join(i.to_string());
                self.write_one(&p, c)?;
                out.push(FileMount {
                    source: p.display().to_string(),
                    target: c.target.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Records the last status reported for a task (best effort: it only refines recovery).
    pub fn save_status(&self, task_id: &str, st: &pb::TaskStatus) {
        if !valid_task_id(task_id) {
            return;
        }
        let dir = self.task_dir(task_id);
        if let Err(e) = self.mkdir(&dir) {
            warn!(task = task_id, error = %e, "cannot keep the task's status");
            return;
        }
        let path = dir.join("status.json");
        let tmp = dir.join("status.json.tmp");
        let ok = serde_json::to_vec(st)
            .map_err(|e| e.to_string())
            .and_then(|d| std::fs::write(&tmp, d).map_err(|e| e.to_string()))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| e.to_string()));
        if let Err(e) = ok {
            warn!(task = task_id, error = %e, "cannot keep the task's status");
        }
    }

    pub fn load_status(&self, task_id: &str) -> Option<pb::TaskStatus> {
        if !valid_task_id(task_id) {
            return None;
        }
        let d = std::fs::read(self.task_dir(task_id).join("status.json")).ok()?;
        serde_json::from_slice(&d).ok()
    }

    /// Deletes a task's secret and config files, keeping its status: once the task has ended
    /// its container never runs again, and the node keeps no secret it does not need.
    pub fn remove_data(&self, task_id: &str) {
        if !valid_task_id(task_id) {
            return;
        }
        for what in ["secrets", "configs"] {
            let dir = self.task_dir(task_id).join(what);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(dir = %dir.display(), error = %e, "cannot remove the task's files"),
            }
        }
    }

    /// Deletes a task's files.
    pub fn remove(&self, task_id: &str) {
        if !valid_task_id(task_id) {
            return;
        }
        let dir = self.task_dir(task_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(dir = %dir.display(), error = %e, "cannot remove the task's files"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn task_ids_are_plain_names() {
        assert!(valid_task_id("abc123-_x"));
        assert!(!valid_task_id(""));
        assert!(!valid_task_id(".."));
        assert!(!valid_task_id("a/b"));
    }

    /// Writes into a plain directory (no tmpfs: `open` is exercised by the root tests).
    #[test]
    fn writes_files_with_modes_and_status() {
        let tmp = tempfile::tempdir().unwrap();
        let f = TaskFiles {
            root: tmp.path().to_path_buf(),
            remap: None,
        };
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let mounts = f
            .write(
                "t1",
                &[FileData {
                    target: "pw".into(),
                    data: b"s3cret",
                    uid,
                    gid,
                    mode: 0,
                }],
                &[FileData {
                    target: "/etc/app.conf".into(),
                    data: b"x=1",
                    uid,
                    gid,
                    mode: 0o440,
                }],
            )
            .unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].target, "/run/secrets/pw");
        assert_eq!(mounts[1].target, "/etc/app.conf");
        let md = std::fs::metadata(&mounts[0].source).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o444);
        assert_eq!(std::fs::read(&mounts[0].source).unwrap(), b"s3cret");
        assert_eq!(
            std::fs::metadata(&mounts[1].source).unwrap().mode() & 0o7777,
            0o440
        );
        let st = pb::TaskStatus {
            state: pb::TaskState::Shutdown as i32,
            ..Default::default()
        };
        f.save_status("t1", &st);
        assert_eq!(f.load_status("t1").unwrap().state, st.state);
        assert_eq!(f.task_ids(), ["t1"]);
        f.remove_data("t1");
        assert!(!f.task_dir("t1").join("secrets").exists());
        assert!(!f.task_dir("t1").join("configs").exists());
        assert!(f.load_status("t1").is_some(), "the status stays");
        f.remove("t1");
        assert!(!f.task_dir("t1").exists());
        assert!(f.write("../x", &[], &[]).is_err());
    }
}
