//! Which namespaces a container creates and which it joins.
//!
//! New namespaces are created by one clone(2) (all but cgroup, which init unshares after it has
//! been moved into its cgroup so that the cgroup becomes its root). Namespaces given by path are
//! joined with setns(2) before that clone, in a child of the runtime, user namespace first.
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespace, LinuxNamespaceType};

use super::error::RuntimeError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsPlan {
    /// Flags for the clone that creates the container's init.
    pub clone_flags: CloneFlags,
    /// Unshared by init itself after joining its cgroup.
    pub new_cgroupns: bool,
    /// Existing namespaces to enter, in the order to enter them.
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
}

impl Default for NsPlan {
    fn default() -> Self {
        NsPlan {
            clone_flags: CloneFlags::empty(),
            new_cgroupns: false,
            join: Vec::new(),
        }
    }
}

impl NsPlan {
    pub fn new_userns(&self) -> bool {
        self.clone_flags.contains(CloneFlags::CLONE_NEWUSER)
    }
    pub fn new_netns(&self) -> bool {
        self.clone_flags.contains(CloneFlags::CLONE_NEWNET)
    }
    pub fn has(&self, t: LinuxNamespaceType) -> bool {
        self.clone_flags.contains(flag(t))
            || self.join.iter().any(|(k, _)| *k == t)
            || (t == LinuxNamespaceType::Cgroup && self.new_cgroupns)
    }
}

pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // Refused by spec validation.
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

pub fn plan(namespaces: &[LinuxNamespace]) -> NsPlan {
    let mut p = NsPlan::default();
    for ns in namespaces {
        match ns.path() {
            Some(path) => p.join.push((ns.typ(), path.clone())),
            None if ns.typ() == LinuxNamespaceType::Cgroup => p.new_cgroupns = true,
            None => p.clone_flags |= flag(ns.typ()),
        }
    }
    // Joining a user namespace first gives the rights needed to join the others it owns.
    p.join.sort_by_key(|(t, _)| *t != LinuxNamespaceType::User);
    p
}

/// Opens every namespace to join; done before forking so that a bad path is reported by `create`.
pub fn open_joins(p: &NsPlan) -> Result<Vec<(LinuxNamespaceType, OwnedFd)>, RuntimeError> {
    p.join
        .iter()
        .map(|(t, path)| {
            std::fs::File::open(path)
                .map(|f| (*t, OwnedFd::from(f)))
                .map_err(|e| RuntimeError::io("open namespace", path, e))
        })
        .collect()
}

pub fn enter(joins: &[(LinuxNamespaceType, OwnedFd)]) -> Result<(), RuntimeError> {
    for (t, fd) in joins {
        // SAFETY: fd is an open namespace file descriptor owned by `joins`.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), flag(*t).bits()) };
        if rc != 0 {
            return Err(RuntimeError::sys(
                format!("join {t} namespace"),
                nix::Error::last(),
            ));
        }
    }
    Ok(())
}

/// The text written to /proc/PID/uid_map or gid_map.
pub fn id_map_text(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(v: serde_json::Value) -> Vec<LinuxNamespace> {
        serde_json::from_value(v).expect("namespaces")
    }

    #[test]
    fn new_namespaces_become_clone_flags_and_cgroup_is_deferred() {
        let p = plan(&ns(
            serde_json::json!([{"type":"pid"},{"type":"network"},{"type":"cgroup"},{"type":"mount"}]),
        ));
        assert_eq!(
            p.clone_flags,
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS
        );
        assert!(p.new_cgroupns);
        assert!(p.join.is_empty());
        assert!(p.has(LinuxNamespaceType::Cgroup));
    }

    #[test]
    fn joined_namespaces_enter_user_first() {
        let p = plan(&ns(serde_json::json!([
            {"type":"network","path":"/run/netns/a"},{"type":"user","path":"/proc/1/ns/user"},{"type":"uts"}])));
        assert_eq!(p.join[0].0, LinuxNamespaceType::User);
        assert_eq!(
            p.join[1],
            (LinuxNamespaceType::Network, PathBuf::from("/run/netns/a"))
        );
        assert!(!p.new_netns());
        assert!(p.has(LinuxNamespaceType::Network));
    }

    #[test]
    fn id_maps_render_one_line_each() {
        let maps: Vec<LinuxIdMapping> = serde_json::from_value(serde_json::json!([
            {"containerID":0,"hostID":100000,"size":65536},{"containerID":65536,"hostID":1000,"size":1}])).expect("maps");
        assert_eq!(id_map_text(&maps), "0 100000 65536\n65536 1000 1\n");
    }

    #[test]
    fn a_missing_namespace_path_is_named() {
        let p = plan(&ns(
            serde_json::json!([{"type":"network","path":"/run/netns/does-not-exist"}]),
        ));
        let err = open_joins(&p).expect_err("missing").to_string();
        assert!(err.contains("/run/netns/does-not-exist"), "{err}");
    }
}
