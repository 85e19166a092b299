//! Container root file systems: one overlay snapshot per container over an image's layers.
//!
//! `create_rootfs` first writes `snapshots/.pin-<id>.json` (the image and the diff ids the overlay
//! will use as lowers) and only then mounts the overlay, so the layers are pinned before they are
//! used; `remove_rootfs` unmounts and deletes the snapshot before the pin. `gc` and `remove`
//! keep every layer some pin file names, whatever happened to the image records.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::error::{error_chain, ImageError, Result};
use super::records::write_atomic;
use super::snapshot;
use super::store::{ImageStore, SnapshotPin};

/// A usable container id: a file name of 1-128 characters from `[A-Za-z0-9_.-]`, not starting
/// with `.` or `-`.
pub fn check_container_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ImageError::InvalidContainerId { id: id.to_string() })
    }
}

impl ImageStore {
    /// Directory holding container snapshots.
    pub fn snapshots_dir(&self) -> &Path {
        &self.inner.snapshots
    }

    /// Mount a fresh copy-on-write root file system of image `image` for container
    /// `container_id`; returns the rootfs path.
    pub fn create_rootfs(&self, image: &str, container_id: &str) -> Result<PathBuf> {
        self.create_rootfs_with_bundle(image, container_id, None)
    }

    pub(super) fn create_rootfs_with_bundle(
        &self,
        image: &str,
        container_id: &str,
        bundle: Option<&Path>,
    ) -> Result<PathBuf> {
        check_container_id(container_id)?;
        let pin_path = self.pin_file(container_id);
        let snapshot_dir = self.inner.snapshots.join(container_id);
        // Pin the layers in memory, check they are there, then write the pin file: a concurrent
        // `remove`/`gc` either ran before the in-memory pin (and the check fails cleanly) or keeps
        // the layers.
        let layers: Vec<String> = {
            let record = self.get(image)?;
            if pin_path.exists() || snapshot_dir.exists() {
                return Err(ImageError::RootfsExists {
                    id: container_id.to_string(),
                });
            }
            let _guard = self.pin(record.diff_ids().map(str::to_string).collect::<Vec<_>>());
            for d in record.diff_ids() {
                if !self.inner.layers.contains(d)? {
                    return Err(ImageError::Unpack {
                        digest: d.to_string(),
                        reason: format!(
                            "layer of {} is missing; pull the image again",
                            record.reference
                        ),
                    });
                }
            }
            let pin = SnapshotPin {
                image: record.reference.clone(),
                layers: record.diff_ids().map(str::to_string).collect(),
                bundle: bundle.map(Path::to_path_buf),
            };
            let data = serde_json::to_vec_pretty(&pin).map_err(|e| ImageError::InvalidContent {
                what: format!("snapshot pin {container_id}"),
                reason: e.to_string(),
            })?;
            write_atomic(&self.inner.snapshots, &pin_path, &data)?;
            pin.layers
        };
        let mut lowers = Vec::with_capacity(layers.len());
        for d in layers.iter().rev() {
            lowers.push(self.inner.layers.path(d)?);
        }
        match prepare_snapshot(&self.inner.snapshots, container_id, &lowers) {
            Ok(rootfs) => {
                info!(container = container_id, image, rootfs = %rootfs.display(), "container rootfs ready");
                Ok(rootfs)
            }
            Err(e) => {
                if let Err(e2) = fs::remove_file(&pin_path) {
                    warn!(pin = %pin_path.display(), error = %e2, "cannot remove snapshot pin");
                }
                Err(e)
            }
        }
    }

    /// Mounts container `container_id`'s root file system again if it is not mounted (after a host
    /// restart); its changes are kept. Returns whether it had to be mounted.
    pub fn ensure_rootfs_mounted(&self, container_id: &str) -> Result<bool> {
        check_container_id(container_id)?;
        let pin_path = self.pin_file(container_id);
        let data =
            fs::read(&pin_path).map_err(|e| ImageError::io("read snapshot pin", &pin_path, e))?;
        let pin: SnapshotPin =
            serde_json::from_slice(&data).map_err(|e| ImageError::InvalidContent {
                what: format!("snapshot pin {container_id}"),
                reason: e.to_string(),
            })?;
        let mut lowers = Vec::with_capacity(pin.layers.len());
        for d in pin.layers.iter().rev() {
            lowers.push(self.inner.layers.path(d)?);
        }
        snapshot::remount(&self.inner.snapshots, container_id, lowers).map_err(|e| {
            ImageError::Snapshot {
                id: container_id.to_string(),
                reason: error_chain(&e),
            }
        })
    }

    /// Unmount and delete container `container_id`'s root file system, then release its layers.
    /// Removing a rootfs that does not exist is not an error.
    pub fn remove_rootfs(&self, container_id: &str) -> Result<()> {
        self.remove_rootfs_inner(container_id).map(|_| ())
    }

    /// Like `remove_rootfs`; returns the pin (with the bundle dir, if any) that was removed.
    pub(super) fn remove_rootfs_inner(&self, container_id: &str) -> Result<Option<SnapshotPin>> {
        check_container_id(container_id)?;
        let pin_path = self.pin_file(container_id);
        let pin = match fs::read(&pin_path) {
            Ok(data) => serde_json::from_slice::<SnapshotPin>(&data).ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(ImageError::io("read snapshot pin", &pin_path, e)),
        };
        remove_snapshot(&self.inner.snapshots, container_id)?;
        match fs::remove_file(&pin_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("remove snapshot pin", &pin_path, e)),
        }
        info!(container = container_id, "container rootfs removed");
        Ok(pin)
    }
}

/// Mount the overlay for `id` with `lowers` (topmost first); returns the rootfs path.
fn prepare_snapshot(root: &Path, id: &str, lowers: &[PathBuf]) -> Result<PathBuf> {
    snapshot::prepare(root, id, lowers.to_vec())
        .map(|s| s.rootfs)
        .map_err(|e| ImageError::Snapshot {
            id: id.to_string(),
            reason: error_chain(&e),
        })
}

/// Unmount and delete the snapshot `id` (absent is fine).
fn remove_snapshot(root: &Path, id: &str) -> Result<()> {
    snapshot::remove(root, id).map_err(|e| ImageError::Snapshot {
        id: id.to_string(),
        reason: error_chain(&e),
    })
}
