//! The OCI runtime: bundle (`config.json` + rootfs) -> container process.
//!
//! One module per kernel concept: `namespaces`, `rootfs` (mounts, /dev, pivot_root, masked paths),
//! `capabilities`, `seccomp`, `cgroups`; `init` is the container's first process up to execve,
//! `container` the lifecycle (create/start/run/kill/delete), `exec` a further process in a running
//! container (as confined as its init) and `state` the on-disk record.
//! Filesystem and mount system calls of the setup go through `syscall::Syscall`.
pub mod capabilities;
pub mod cgroups;
pub mod console;
pub mod container;
pub mod error;
pub mod exec;
pub mod init;
pub mod namespaces;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod syscall;

pub use error::RuntimeError;
