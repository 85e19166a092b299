//! The runtime's error type: every variant names the container, file or value it is about.
use std::path::PathBuf;

use super::cgroups::CgroupError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid spec {path}: {reason}")]
    InvalidSpec { path: PathBuf, reason: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("invalid container id {0:?}: use letters, digits, '_', '-', '.' (not starting with '.' or '-')")]
    InvalidId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("cgroup {path} already holds processes (pids {pids:?}): another container uses it; choose another id or linux.cgroupsPath")]
    CgroupInUse { path: PathBuf, pids: Vec<i32> },
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {id} is {status}: {hint}")]
    WrongState {
        id: String,
        status: String,
        hint: &'static str,
    },
    #[error("invalid signal {0:?}: use a name such as TERM, SIGKILL or a number 1-64")]
    InvalidSignal(String),
    #[error("cannot create container {id}: {reason}")]
    InitFailed { id: String, reason: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Seccomp(#[from] super::seccomp::SeccompError),
    #[error("corrupt state {path}: {reason}; `flotilla-runtime delete --force` removes it")]
    CorruptState { path: PathBuf, reason: String },
    #[error("invalid {what} {value:?}: {hint}")]
    InvalidInput {
        what: &'static str,
        value: String,
        hint: String,
    },
    #[error("cannot exec in container {id}: {reason}")]
    ExecFailed { id: String, reason: String },
    #[error("cannot exec in container {id}: executable {name:?} not found in the container's $PATH or not executable")]
    ExecutableNotFound { id: String, name: String },
}

impl RuntimeError {
    pub fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        RuntimeError::Sys {
            what: what.into(),
            source,
        }
    }
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
