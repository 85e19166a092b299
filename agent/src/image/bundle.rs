//! OCI runtime bundles from images: `config.json` whose root is a fresh overlay rootfs of the
//! image, and whose process comes from the image config.
//!
//! Process rules (Docker's): args are `Entrypoint + Cmd`; arguments given by the caller replace
//! `Cmd` and keep `Entrypoint`. `Env` is the image's, with a default `PATH` when it has none;
//! `cwd` is `WorkingDir` or `/`; `User` must be numeric `uid[:gid]` for now (gid 0 when absent;
//! names need a passwd lookup in the rootfs, which is not done yet). The rest of the spec
//! (namespaces, mounts, capabilities, masked paths) is the runtime's default container.
//!
//! Invariant: `config.json` is written (atomically) only after the rootfs is mounted, and a
//! failure after mounting removes the rootfs again, so a bundle dir with a `config.json` always
//! has a live rootfs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Spec, User};
use tracing::{info, warn};

use super::error::{ImageError, Result};
use super::import::DEFAULT_PATH;
use super::records::write_atomic;
use super::store::ImageStore;

/// Create the bundle of container `container_id` from `image` in `bundle_dir`: mount the rootfs
/// and write `bundle_dir/config.json`. `args_override` replaces the image's `Cmd`. Returns the
/// path of `config.json`.
pub fn create(
    store: &ImageStore,
    image: &str,
    container_id: &str,
    bundle_dir: &Path,
    args_override: Option<Vec<String>>,
) -> Result<PathBuf> {
    let record = store.get(image)?;
    let config = store.image_config(image)?;
    let exec = config.config().clone().unwrap_or_default();

    let mut args: Vec<String> = exec.entrypoint().clone().unwrap_or_default();
    match args_override {
        Some(a) if !a.is_empty() => args.extend(a),
        _ => args.extend(exec.cmd().clone().unwrap_or_default()),
    }
    if args.is_empty() {
        return Err(ImageError::NoCommand {
            reference: record.reference.clone(),
        });
    }
    let mut env = exec.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let cwd = match exec.working_dir() {
        Some(w) if !w.is_empty() => w.clone(),
        _ => "/".to_string(),
    };
    if !cwd.starts_with('/') {
        return Err(ImageError::Spec {
            reference: record.reference.clone(),
            reason: format!("working dir {cwd:?} is not absolute"),
        });
    }
    let user = parse_user(exec.user().as_deref().unwrap_or(""), &record.reference)?;

    let created_dir = !bundle_dir.exists();
    fs::create_dir_all(bundle_dir)
        .map_err(|e| ImageError::io("create bundle directory", bundle_dir, e))?;
    let bundle_dir = bundle_dir
        .canonicalize()
        .map_err(|e| ImageError::io("resolve bundle directory", bundle_dir, e))?;
    let rootfs = match store.create_rootfs_with_bundle(image, container_id, Some(&bundle_dir)) {
        Ok(r) => r,
        Err(e) => {
            if created_dir {
                let _ = fs::remove_dir(&bundle_dir);
            }
            return Err(e);
        }
    };

    let written = (|| {
        let mut spec = base_spec(args.clone());
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(args));
        process.set_env(Some(env));
        process.set_cwd(PathBuf::from(&cwd));
        process.set_user(user);
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(rootfs.clone());
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
        let data = serde_json::to_vec_pretty(&spec).map_err(|e| ImageError::Spec {
            reference: record.reference.clone(),
            reason: e.to_string(),
        })?;
        let path = bundle_dir.join("config.json");
        write_atomic(&bundle_dir, &path, &data)?;
        Ok(path)
    })();
    match written {
        Ok(path) => {
            info!(container = container_id, image = %record.reference, bundle = %bundle_dir.display(), "bundle created");
            Ok(path)
        }
        Err(e) => {
            if let Err(e2) = store.remove_rootfs(container_id) {
                warn!(container = container_id, error = %e2, "cannot remove rootfs after failed bundle");
            }
            if created_dir {
                let _ = fs::remove_dir(&bundle_dir);
            }
            Err(e)
        }
    }
}

/// Remove container `container_id`'s rootfs and the `config.json` its bundle got (the bundle
/// directory too when that leaves it empty). Removing what does not exist is not an error.
pub fn remove(store: &ImageStore, container_id: &str) -> Result<()> {
    let pin = store.remove_rootfs_inner(container_id)?;
    if let Some(dir) = pin.and_then(|p| p.bundle) {
        let config = dir.join("config.json");
        match fs::remove_file(&config) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("remove", &config, e)),
        }
        // Only an empty directory goes; anything else in it belongs to someone else.
        if let Err(e) = fs::remove_dir(&dir) {
            tracing::debug!(dir = %dir.display(), error = %e, "bundle directory kept");
        }
    }
    Ok(())
}

/// The runtime's default container spec running `args`.
fn base_spec(args: Vec<String>) -> Spec {
    crate::runtime::spec::default_spec(args)
}

/// `uid[:gid]` -> spec user; empty means root.
fn parse_user(user: &str, reference: &str) -> Result<User> {
    let unsupported = || ImageError::UnsupportedUser {
        user: user.to_string(),
        reference: reference.to_string(),
    };
    let mut u = User::default();
    if user.is_empty() {
        u.set_uid(0);
        u.set_gid(0);
        return Ok(u);
    }
    let (uid, gid) = match user.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (user, None),
    };
    u.set_uid(uid.parse::<u32>().map_err(|_| unsupported())?);
    u.set_gid(match gid {
        Some(g) => g.parse::<u32>().map_err(|_| unsupported())?,
        None => 0,
    });
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_users_parse_and_names_are_refused() {
        let u = parse_user("1000:100", "img").expect("ok");
        assert_eq!((u.uid(), u.gid()), (1000, 100));
        let u = parse_user("7", "img").expect("ok");
        assert_eq!((u.uid(), u.gid()), (7, 0));
        let u = parse_user("", "img").expect("ok");
        assert_eq!((u.uid(), u.gid()), (0, 0));
        let err = parse_user("nobody", "img").expect_err("name").to_string();
        assert!(err.contains("\"nobody\"") && err.contains("img"), "{err}");
        assert!(parse_user("1:x", "img").is_err());
    }
}
