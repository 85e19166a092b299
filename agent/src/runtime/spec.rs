//! Loading and defaulting OCI runtime specs (`config.json`).
//!
//! `load` turns a bundle's `config.json` into an `oci_spec::runtime::Spec` with errors that name the
//! file and the offending field; `default_spec` is flotilla's default container: Docker's default
//! capability set, masked and read-only paths, the usual `/proc`, `/dev`, `/sys` mounts and every
//! namespace but user and time. The spec types themselves come from the `oci-spec` crate.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxNamespaceType, Mount, Process, Root, Spec,
};

use super::error::RuntimeError;

/// Docker's default capability set (moby `oci/caps/defaults.go`), the set a container gets unless
/// it asks for more or less.
pub const DOCKER_DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The capability's name as the kernel and the spec spell it, e.g. `CAP_NET_ADMIN`.
pub fn cap_name(cap: Capability) -> String {
    format!("CAP_{cap}")
}

/// Reads `<bundle>/config.json`. The root path is resolved against the bundle when relative, and
/// must exist: a spec without a rootfs is refused here rather than half-way through create.
pub fn load(bundle: &Path) -> Result<Spec, RuntimeError> {
    let path = bundle.join("config.json");
    let data = std::fs::read(&path).map_err(|source| RuntimeError::Io {
        what: "read the bundle config",
        path: path.clone(),
        source,
    })?;
    let spec: Spec = serde_json::from_slice(&data).map_err(|e| RuntimeError::InvalidSpec {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    validate(&spec, &path)?;
    Ok(spec)
}

/// The rootfs directory of `spec`, absolute.
pub fn rootfs_path(spec: &Spec, bundle: &Path) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| "rootfs".into());
    if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    }
}

fn validate(spec: &Spec, path: &Path) -> Result<(), RuntimeError> {
    let invalid = |reason: String| RuntimeError::InvalidSpec {
        path: path.to_path_buf(),
        reason,
    };
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("no \"process\" section".into()))?;
    let args = process
        .args()
        .as_ref()
        .map(|a| a.as_slice())
        .unwrap_or_default();
    if args.is_empty() {
        return Err(invalid("process.args is empty: nothing to run".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(format!(
            "process.cwd {:?} is not absolute",
            process.cwd()
        )));
    }
    if let Some(linux) = spec.linux() {
        let mut seen = HashSet::new();
        for ns in linux.namespaces().as_deref().unwrap_or_default() {
            if !seen.insert(ns.typ()) {
                return Err(invalid(format!("namespace {} listed twice", ns.typ())));
            }
            if ns.typ() == LinuxNamespaceType::Time {
                return Err(invalid("time namespaces are not supported".into()));
            }
        }
        let has_userns = seen.contains(&LinuxNamespaceType::User);
        let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty());
        if has_userns && !has_maps {
            return Err(invalid(
                "a user namespace needs linux.uidMappings and linux.gidMappings".into(),
            ));
        }
    }
    if let Some(h) = spec.hooks() {
        let any = [
            h.prestart().as_ref().map(Vec::len),
            h.create_runtime().as_ref().map(Vec::len),
            h.create_container().as_ref().map(Vec::len),
            h.start_container().as_ref().map(Vec::len),
            h.poststart().as_ref().map(Vec::len),
            h.poststop().as_ref().map(Vec::len),
        ]
        .into_iter()
        .flatten()
        .any(|n| n > 0);
        if any {
            // Refused rather than ignored: a hook usually sets up something the process relies on.
            return Err(invalid(
                "hooks are not supported by flotilla-runtime yet".into(),
            ));
        }
    }
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if !m.destination().is_absolute() {
            return Err(invalid(format!(
                "mount destination {:?} is not absolute",
                m.destination()
            )));
        }
    }
    Ok(())
}

/// flotilla's default container spec, running `args`: Docker's defaults (capabilities, masked and
/// read-only paths, mounts, namespaces pid/net/ipc/uts/mnt/cgroup), rootfs `rootfs`, writable root.
pub fn default_spec(args: Vec<String>) -> Spec {
    let mut spec = Spec::default();
    let caps: HashSet<Capability> = DOCKER_DEFAULT_CAPS.into_iter().collect();
    let capabilities = LinuxCapabilities::default();
    let mut capabilities = capabilities;
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);
    let mut process = Process::default();
    process.set_args(Some(args));
    process.set_capabilities(Some(capabilities));
    process.set_no_new_privileges(Some(true));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    let mut root = Root::default();
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    spec.set_hostname(Some("flotilla".into()));
    // The cgroup filesystem inside a container comes with the cgroup work; until then a container
    // sees no /sys/fs/cgroup rather than the host's.
    let mounts: Vec<Mount> = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.typ().as_deref() != Some("cgroup"))
        .collect();
    spec.set_mounts(Some(mounts));
    spec
}

/// The spec as JSON with capability sets sorted: `oci-spec` keeps them in hash sets, so plain
/// serialisation would differ from one run to the next.
pub fn to_stable_json(spec: &Spec) -> Result<serde_json::Value, serde_json::Error> {
    let mut v = serde_json::to_value(spec)?;
    if let Some(sets) = v
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    {
        for set in sets.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_bundle(json: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.json"), json).expect("write");
        dir
    }

    #[test]
    fn default_spec_round_trips_and_validates() {
        let spec = default_spec(vec!["/bin/true".into()]);
        let dir = write_bundle(&serde_json::to_string(&spec).expect("json"));
        let back = load(dir.path()).expect("load");
        let caps = back
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().clone())
            .expect("caps");
        assert_eq!(caps.bounding().as_ref().map(|c| c.len()), Some(14));
        assert!(caps
            .bounding()
            .as_ref()
            .is_some_and(|c| !c.contains(&Capability::SysAdmin)));
        assert_eq!(cap_name(Capability::NetAdmin), "CAP_NET_ADMIN");
    }

    #[test]
    fn stable_json_sorts_capabilities() {
        let v = to_stable_json(&default_spec(vec!["/bin/true".into()])).expect("json");
        let bounding: Vec<&str> = v["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("bounding")
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        let mut sorted = bounding.clone();
        sorted.sort();
        assert_eq!(bounding, sorted);
        assert_eq!(bounding.len(), 14);
    }

    #[test]
    fn malformed_config_names_the_file() {
        let dir = write_bundle("{\"ociVersion\": \"1.0.2\", \"process\": ");
        let err = load(dir.path()).expect_err("must fail").to_string();
        assert!(err.contains("config.json"), "{err}");
    }

    #[test]
    fn unknown_namespace_is_refused_with_its_name() {
        let mut v = serde_json::to_value(default_spec(vec!["/bin/true".into()])).expect("json");
        v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "bogus"}]);
        let dir = write_bundle(&v.to_string());
        let err = load(dir.path()).expect_err("must fail").to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn empty_args_and_relative_cwd_are_refused() {
        let mut v = serde_json::to_value(default_spec(vec!["/bin/true".into()])).expect("json");
        v["process"]["args"] = serde_json::json!([]);
        let err = load(write_bundle(&v.to_string()).path())
            .expect_err("empty args")
            .to_string();
        assert!(err.contains("args"), "{err}");
        let mut v = serde_json::to_value(default_spec(vec!["/bin/true".into()])).expect("json");
        v["process"]["cwd"] = serde_json::json!("tmp");
        let err = load(write_bundle(&v.to_string()).path())
            .expect_err("relative cwd")
            .to_string();
        assert!(err.contains("cwd"), "{err}");
    }

    #[test]
    fn hooks_are_refused_not_ignored() {
        let mut v = serde_json::to_value(default_spec(vec!["/bin/true".into()])).expect("json");
        v["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/true"}]});
        let err = load(write_bundle(&v.to_string()).path())
            .expect_err("hooks")
            .to_string();
        assert!(err.contains("hooks"), "{err}");
        v["hooks"] = serde_json::json!({"prestart": []});
        load(write_bundle(&v.to_string()).path()).expect("empty hook lists are fine");
    }

    #[test]
    fn user_namespace_without_mappings_is_refused() {
        let mut v = serde_json::to_value(default_spec(vec!["/bin/true".into()])).expect("json");
        v["linux"]["namespaces"] = serde_json::json!([{"type": "user"}]);
        let err = load(write_bundle(&v.to_string()).path())
            .expect_err("no maps")
            .to_string();
        assert!(err.contains("uidMappings"), "{err}");
    }
}
