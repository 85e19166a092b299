//! Unpacked layers: `layers/<diff-id hex>/`, one directory per distinct layer content, shared by
//! every image (and every container snapshot) that has the layer.
//!
//! Invariants:
//! - A directory named `layers/<hex>` is complete: a layer is applied into a fresh temp dir
//!   `layers/.tmp-*`, its diff id checked against the image config, the file system synced, and
//!   only then renamed to its final name. Removal renames to `.tmp-*` before deleting.
//! - So after a crash only `.tmp-*` entries can be partial; [`Layers::clean_temps`] (run by
//!   `ImageStore::open`) deletes them.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use super::blobs::sync_dir;
use super::digest;
use super::error::{error_chain, ImageError, Result};
use super::manifest::{self, Compression};
use super::unpack::{self, UnpackOptions};

/// Prefix of temp entries in the layers directory.
const TEMP_PREFIX: &str = ".tmp-";

/// The directory of unpacked layers.
#[derive(Debug, Clone)]
pub struct Layers {
    dir: PathBuf,
}

impl Layers {
    /// Layers under `root/layers`.
    pub fn new(root: &Path) -> Self {
        Layers {
            dir: root.join("layers"),
        }
    }

    /// Create the directory.
    pub fn create_dirs(&self) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| ImageError::io("create directory", &self.dir, e))
    }

    /// Directory of a layer (whether or not it exists).
    pub fn path(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.dir.join(digest::hex_of(diff_id, "layer diff id")?))
    }

    /// Is the layer unpacked?
    pub fn contains(&self, diff_id: &str) -> Result<bool> {
        Ok(self.path(diff_id)?.is_dir())
    }

    /// Delete partial unpacks and interrupted removals.
    pub fn clean_temps(&self) -> Result<usize> {
        let mut removed = 0;
        for entry in
            fs::read_dir(&self.dir).map_err(|e| ImageError::io("read directory", &self.dir, e))?
        {
            let entry = entry.map_err(|e| ImageError::io("read directory", &self.dir, e))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                match remove_any(&path) {
                    Ok(()) => {
                        removed += 1;
                        info!(path = %path.display(), "removed interrupted layer unpack");
                    }
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot remove layer leftover")
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Diff ids of every unpacked layer.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in
            fs::read_dir(&self.dir).map_err(|e| ImageError::io("read directory", &self.dir, e))?
        {
            let entry = entry.map_err(|e| ImageError::io("read directory", &self.dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let d = format!("{}{name}", digest::SHA256_PREFIX);
            if digest::check(&d, "layer directory").is_ok() {
                out.push(d);
            } else {
                warn!(path = %entry.path().display(), "stray entry in layers directory");
            }
        }
        Ok(out)
    }

    /// Delete a layer directory: rename it to a temp name first so that a crash never leaves a
    /// half-deleted directory under its final name.
    pub fn remove(&self, diff_id: &str) -> Result<()> {
        let path = self.path(diff_id)?;
        let doomed = self.dir.join(format!(
            "{TEMP_PREFIX}rm-{}-{}",
            digest::hex_of(diff_id, "layer diff id")?,
            std::process::id()
        ));
        match fs::rename(&path, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ImageError::io("rename layer for removal", &path, e)),
        }
        remove_any(&doomed).map_err(|e| ImageError::io("remove layer", &doomed, e))
    }

    /// Apply the layer blob `blob` (media type `media_type`) as layer `diff_id`, unless it is
    /// already there. Returns true when it was unpacked now.
    pub fn unpack(
        &self,
        blob: File,
        media_type: &str,
        blob_digest: &str,
        diff_id: &str,
    ) -> Result<bool> {
        if self.path(diff_id)?.is_dir() {
            return Ok(false);
        }
        self.unpack_any(blob, media_type, blob_digest, Some(diff_id))
            .map(|(_, new)| new)
    }

    /// Apply a layer blob whose diff id is checked against `expected` when given (and learnt
    /// from the content otherwise). Returns the diff id and whether it was unpacked now.
    pub fn unpack_any(
        &self,
        blob: File,
        media_type: &str,
        blob_digest: &str,
        expected: Option<&str>,
    ) -> Result<(String, bool)> {
        if let Some(d) = expected {
            digest::check(d, "layer diff id")?;
        }
        let compression = manifest::layer_compression(media_type, &format!("layer {blob_digest}"))?;
        let temp = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}unpack-"))
            .tempdir_in(&self.dir)
            .map_err(|e| ImageError::io("create temp layer directory in", &self.dir, e))?;
        fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o755))
            .map_err(|e| ImageError::io("chmod", temp.path(), e))?;
        let actual = apply(compression, blob, temp.path(), blob_digest)?;
        if let Some(expected) = expected {
            if actual != expected {
                return Err(ImageError::DiffIdMismatch {
                    digest: blob_digest.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        let dest = self.path(&actual)?;
        if dest.is_dir() {
            return Ok((actual, false));
        }
        // Everything unpacked must be on disk before the directory gets its final name.
        let dir = File::open(temp.path()).map_err(|e| ImageError::io("open", temp.path(), e))?;
        nix::unistd::syncfs(&dir)
            .map_err(|e| ImageError::io("syncfs", temp.path(), io::Error::from(e)))?;
        let staged = temp.keep();
        match fs::rename(&staged, &dest) {
            Ok(()) => {}
            Err(e) if dest.is_dir() => {
                // Another unpack of the same layer won the race; ours is redundant.
                debug!(layer = %actual, error = %e, "layer appeared concurrently");
                let _ = remove_any(&staged);
                return Ok((actual, false));
            }
            Err(e) => {
                let _ = remove_any(&staged);
                return Err(ImageError::io("rename layer into place", &dest, e));
            }
        }
        sync_dir(&self.dir)?;
        debug!(layer = %actual, blob = %blob_digest, "layer unpacked");
        Ok((actual, true))
    }
}

/// Decompress and apply one layer blob into the empty directory `dest` with the safe,
/// overlay-aware unpacker; returns the diff id (sha256 of the whole uncompressed tar stream).
fn apply(compression: Compression, blob: File, dest: &Path, blob_digest: &str) -> Result<String> {
    let tar = manifest::decompress(compression, blob, blob_digest)?;
    let stats = unpack::unpack_layer(tar, dest, &UnpackOptions::default()).map_err(|e| {
        if is_enospc(&e) {
            ImageError::DiskFull {
                path: dest.to_path_buf(),
            }
        } else {
            ImageError::Unpack {
                digest: blob_digest.to_string(),
                reason: error_chain(&e),
            }
        }
    })?;
    debug!(
        blob = %blob_digest,
        entries = stats.entries,
        bytes = stats.bytes,
        "layer applied"
    );
    Ok(stats.diff_id)
}

/// Does an error (or one of its sources) come from ENOSPC?
fn is_enospc(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(libc::ENOSPC) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// Remove a file or a directory tree.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
