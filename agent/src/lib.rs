//! flotilla's node side.
//!
//! `runtime` turns an OCI bundle into a process confined by namespaces, cgroups, capabilities and
//! seccomp (the engine behind the runc-compatible `flotilla-runtime` binary); `image` stores OCI
//! images by digest, pulls and pushes them, and lays out copy-on-write overlay root filesystems.
pub mod cluster;
pub mod engine;
pub mod executor;
pub mod image;
pub mod membership;
pub mod network;
pub mod runtime;
pub mod server;
pub mod shim;
