//! Image records: which reference names which manifest, config and layers.
//!
//! The records live in one small JSON file (`images.json` under the store root), replaced
//! atomically (temp file, fsync, rename, fsync of the directory) on every change, so a crash
//! leaves either the old or the new file. Nothing else is counted or cached: which blobs and layers
//! are in use is always derived from these records (plus container snapshot pins).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::blobs::sync_dir;
use super::digest;
use super::error::{ImageError, Result};

/// Version of the records file format.
const FORMAT_VERSION: u32 = 1;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the (possibly compressed) layer blob.
    pub digest: String,
    /// Media type of the blob (tells the compression).
    pub media_type: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry); names the
    /// unpacked directory `layers/<hex>`.
    pub diff_id: String,
}

/// One named image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Fully qualified reference (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// Digest of the image manifest (the platform manifest when pulled through an index).
    pub manifest_digest: String,
    /// Media type of the manifest (OCI or Docker schema 2).
    pub manifest_media_type: String,
    /// Digest of the image config: the image id.
    pub config_digest: String,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Digest of the index / manifest list the manifest was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// `created` of the image config (RFC 3339), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// When the record was written, seconds since the epoch.
    pub added: u64,
}

impl ImageRecord {
    /// The image id (config digest).
    pub fn id(&self) -> &str {
        &self.config_digest
    }

    /// Sum of the layer blob sizes.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Every blob this record needs: manifest, config and layers.
    pub fn blobs(&self) -> impl Iterator<Item = &str> {
        [self.manifest_digest.as_str(), self.config_digest.as_str()]
            .into_iter()
            .chain(self.layers.iter().map(|l| l.digest.as_str()))
    }

    /// Diff ids, bottom first.
    pub fn diff_ids(&self) -> impl Iterator<Item = &str> {
        self.layers.iter().map(|l| l.diff_id.as_str())
    }

    /// Check every digest of the record (they become file names).
    pub fn validate(&self) -> Result<()> {
        let what = format!("record {}", self.reference);
        for d in self.blobs().chain(self.diff_ids()) {
            digest::check(d, &what)?;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct RecordsFile {
    version: u32,
    images: Vec<ImageRecord>,
}

/// The in-memory copy of the records file.
#[derive(Debug)]
pub struct Records {
    path: PathBuf,
    images: BTreeMap<String, ImageRecord>,
}

impl Records {
    /// Load `path`; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self> {
        let images = match fs::read(path) {
            Ok(data) => {
                let file: RecordsFile =
                    serde_json::from_slice(&data).map_err(|e| ImageError::CorruptIndex {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                if file.version != FORMAT_VERSION {
                    return Err(ImageError::CorruptIndex {
                        path: path.to_path_buf(),
                        reason: format!(
                            "format version {} is not supported (this build reads {FORMAT_VERSION})",
                            file.version
                        ),
                    });
                }
                let mut map = BTreeMap::new();
                for rec in file.images {
                    rec.validate().map_err(|e| ImageError::CorruptIndex {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                    map.insert(rec.reference.clone(), rec);
                }
                map
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(ImageError::io("read image index", path, e)),
        };
        Ok(Records {
            path: path.to_path_buf(),
            images,
        })
    }

    /// All records, by reference.
    pub fn all(&self) -> impl Iterator<Item = &ImageRecord> {
        self.images.values()
    }

    /// The record of a normalized reference.
    pub fn get(&self, reference: &str) -> Option<&ImageRecord> {
        self.images.get(reference)
    }

    /// Insert or replace a record, then persist. On failure the in-memory copy is unchanged.
    pub fn put(&mut self, record: ImageRecord) -> Result<()> {
        record.validate()?;
        let previous = self.images.insert(record.reference.clone(), record.clone());
        if let Err(e) = self.save() {
            match previous {
                Some(p) => self.images.insert(p.reference.clone(), p),
                None => self.images.remove(&record.reference),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Remove a record, then persist. On failure the in-memory copy is unchanged.
    pub fn remove(&mut self, reference: &str) -> Result<Option<ImageRecord>> {
        let Some(previous) = self.images.remove(reference) else {
            return Ok(None);
        };
        if let Err(e) = self.save() {
            self.images.insert(previous.reference.clone(), previous);
            return Err(e);
        }
        Ok(Some(previous))
    }

    /// Write the file atomically.
    fn save(&self) -> Result<()> {
        let dir = self.path.parent().ok_or_else(|| {
            ImageError::io(
                "save image index",
                &self.path,
                io::ErrorKind::InvalidInput.into(),
            )
        })?;
        let file = RecordsFile {
            version: FORMAT_VERSION,
            images: self.images.values().cloned().collect(),
        };
        let data = serde_json::to_vec_pretty(&file).map_err(|e| ImageError::InvalidContent {
            what: "image index".to_string(),
            reason: e.to_string(),
        })?;
        write_atomic(dir, &self.path, &data)
    }
}

/// Replace `path` with `data`: temp file in `dir` (named `.tmp-*`), fsync, rename, fsync `dir`.
pub fn write_atomic(dir: &Path, path: &Path, data: &[u8]) -> Result<()> {
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| ImageError::io("create temp file in", dir, e))?;
    temp.write_all(data)
        .and_then(|_| temp.as_file().sync_all())
        .map_err(|e| ImageError::io("write", temp.path(), e))?;
    temp.persist(path)
        .map_err(|e| ImageError::io("rename into place", path, e.error))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> ImageRecord {
        ImageRecord {
            reference: name.to_string(),
            manifest_digest: digest::of_bytes(b"m"),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
            config_digest: digest::of_bytes(b"c"),
            layers: vec![LayerRecord {
                digest: digest::of_bytes(b"l"),
                media_type: "application/vnd.oci.image.layer.v1.tar".to_string(),
                size: 1,
                diff_id: digest::of_bytes(b"l"),
            }],
            index_digest: None,
            created: None,
            added: 1,
        }
    }

    #[test]
    fn put_remove_survive_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("images.json");
        let mut r = Records::load(&path).expect("load");
        r.put(record("a")).expect("put");
        r.put(record("b")).expect("put");
        assert_eq!(
            r.remove("a").expect("rm").map(|x| x.reference),
            Some("a".into())
        );
        let r2 = Records::load(&path).expect("reload");
        assert_eq!(
            r2.all().map(|x| x.reference.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(r2.get("b"), Some(&record("b")));
    }

    #[test]
    fn corrupt_file_is_reported_with_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("images.json");
        fs::write(&path, b"{not json").expect("write");
        let err = Records::load(&path).expect_err("corrupt").to_string();
        assert!(err.contains("images.json"), "{err}");
    }

    #[test]
    fn record_with_path_like_digest_is_refused() {
        let mut rec = record("a");
        rec.config_digest = "sha256:../../x".to_string();
        assert!(rec.validate().is_err());
    }
}
