//! The image store: records, blobs, unpacked layers and container snapshots under one root.
//!
//! ```text
//! <root>/lock                  flock held for the store's lifetime (one process at a time)
//! <root>/images.json           image records (atomic replace)
//! <root>/blobs/sha256/<hex>    manifests, configs, layer blobs (verified before rename)
//! <root>/ingest/               partial blob downloads (deleted by open)
//! <root>/layers/<diffid hex>/  unpacked layers (complete or absent; .tmp-* deleted by open)
//! <root>/snapshots/<id>/       container overlay rootfs (snapshot module)
//! <root>/snapshots/.pin-<id>.json  the layers that snapshot pins (ids never start with `.`)
//! ```
//!
//! Invariants:
//! - A record is written only after every blob and layer it names is complete on disk; content is
//!   deleted only after the records that name it are gone. So any crash leaves records that are
//!   whole, plus possibly unreferenced content that [`ImageStore::gc`] removes.
//! - Which blobs and layers are in use is derived from the records, the snapshot pin files and
//!   the in-flight pins of running operations; no counter is stored.
//! - Lock order: `pins` before `records`. `gc` holds `pins` for its whole run, so an operation
//!   that pinned its digests before looking at the disk can never see them vanish.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::blobs::BlobStore;
use super::digest;
use super::error::{ImageError, Result};
use super::layers::Layers;
use super::records::{ImageRecord, Records};
use super::reference;

/// Default store root.
pub const DEFAULT_ROOT: &str = "/var/lib/flotilla/images";

/// Default number of concurrent layer downloads.
pub const DEFAULT_CONCURRENT_DOWNLOADS: usize = 3;

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root directory.
    pub root: PathBuf,
    /// Registries (`host:port`) reached over plain http although they are not on loopback.
    pub insecure_registries: Vec<String>,
    /// Layer downloads in flight per pull.
    pub max_concurrent_downloads: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            root: PathBuf::from(DEFAULT_ROOT),
            insecure_registries: Vec::new(),
            max_concurrent_downloads: DEFAULT_CONCURRENT_DOWNLOADS,
        }
    }
}

impl StoreConfig {
    /// A config with the given root and defaults otherwise.
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        StoreConfig {
            root: root.into(),
            ..Default::default()
        }
    }
}

/// The image store. Cheap to clone (shared state); usable from several tasks at once.
#[derive(Clone)]
pub struct ImageStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) config: StoreConfig,
    pub(super) blobs: BlobStore,
    pub(super) layers: Layers,
    pub(super) snapshots: PathBuf,
    pub(super) records: Mutex<Records>,
    pins: Mutex<HashMap<String, usize>>,
    recovery: Recovery,
    _lock: Flock<File>,
}

/// What `open` found and cleaned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Partial blob downloads deleted.
    pub ingest_files: usize,
    /// Partial layer unpacks deleted.
    pub layer_temps: usize,
    /// Other temp files deleted (interrupted record writes, snapshot pins without snapshot).
    pub other: usize,
}

/// What `remove` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoveReport {
    /// The reference whose record was removed.
    pub untagged: String,
    /// Blobs deleted because no other image needs them.
    pub deleted_blobs: Vec<String>,
    /// Layer directories deleted because no image or container needs them.
    pub deleted_layers: Vec<String>,
}

/// What `gc` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Blobs deleted.
    pub deleted_blobs: Vec<String>,
    /// Layer directories deleted.
    pub deleted_layers: Vec<String>,
    /// Bytes of blobs freed.
    pub freed_blob_bytes: u64,
}

/// `inspect` output: the record plus the manifest and config documents.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInspect {
    /// The store record.
    pub record: ImageRecord,
    /// The manifest as stored.
    pub manifest: serde_json::Value,
    /// The image config as stored.
    pub config: serde_json::Value,
}

/// The pin file next to a snapshot: the layers its overlay uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SnapshotPin {
    pub image: String,
    pub layers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
}

/// Digests held by a running operation; released on drop.
pub(super) struct PinGuard {
    inner: Arc<Inner>,
    keys: Vec<String>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut pins = lock(&self.inner.pins);
        for k in &self.keys {
            if let Some(n) = pins.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(k);
                }
            }
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the data half-updated: every mutation is
    // complete-or-rolled-back before the guard is dropped, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ImageStore {
    /// Open (creating if needed) the store at `config.root`, take its lock and clean up whatever
    /// an interrupted process left behind.
    pub fn open(config: StoreConfig) -> Result<Self> {
        let root = config.root.clone();
        fs::create_dir_all(&root).map_err(|e| ImageError::io("create store root", &root, e))?;
        let lock_path = root.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| ImageError::io("open store lock", &lock_path, e))?;
        let flock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                ImageError::StoreLocked {
                    root: root.clone(),
                    lock: lock_path.clone(),
                }
            } else {
                ImageError::io("lock store", &lock_path, io::Error::from(e))
            }
        })?;
        let blobs = BlobStore::new(&root);
        blobs.create_dirs()?;
        let layers = Layers::new(&root);
        layers.create_dirs()?;
        let snapshots = root.join("snapshots");
        fs::create_dir_all(&snapshots)
            .map_err(|e| ImageError::io("create directory", &snapshots, e))?;

        let mut recovery = Recovery {
            ingest_files: blobs.clean_ingest()?,
            layer_temps: layers.clean_temps()?,
            other: 0,
        };
        recovery.other += remove_temp_files(&root)?;
        recovery.other += remove_dangling_pins(&snapshots)?;
        if recovery != Recovery::default() {
            info!(root = %root.display(), ?recovery, "image store recovered from an interrupted run");
        }
        let records = Records::load(&root.join("images.json"))?;
        Ok(ImageStore {
            inner: Arc::new(Inner {
                config,
                blobs,
                layers,
                snapshots,
                records: Mutex::new(records),
                pins: Mutex::new(HashMap::new()),
                recovery,
                _lock: flock,
            }),
        })
    }

    /// What `open` cleaned up after an interrupted run.
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// Root directory.
    pub fn root(&self) -> &Path {
        &self.inner.config.root
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Path of a blob (for readers such as the archive writer).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        self.inner.blobs.path(digest)
    }

    /// Path of an unpacked layer.
    pub fn layer_path(&self, diff_id: &str) -> Result<PathBuf> {
        self.inner.layers.path(diff_id)
    }

    /// Every image record, sorted by reference.
    pub fn list(&self) -> Vec<ImageRecord> {
        lock(&self.inner.records).all().cloned().collect()
    }

    /// The record named by `input`: a reference (`busybox`, `host:5000/x:tag`, `repo@sha256:…`)
    /// or an image id (`sha256:<hex>` or a hex prefix of at least 6 digits).
    pub fn get(&self, input: &str) -> Result<ImageRecord> {
        let records = lock(&self.inner.records);
        resolve(&records, input).cloned()
    }

    /// Record, manifest and config of an image.
    pub fn inspect(&self, input: &str) -> Result<ImageInspect> {
        let record = self.get(input)?;
        let parse = |digest: &str, what: &str| -> Result<serde_json::Value> {
            let data = self.inner.blobs.read(digest, what)?;
            serde_json::from_slice(&data).map_err(|e| ImageError::InvalidContent {
                what: format!("{what} {digest}"),
                reason: e.to_string(),
            })
        };
        Ok(ImageInspect {
            manifest: parse(&record.manifest_digest, "manifest")?,
            config: parse(&record.config_digest, "image config")?,
            record,
        })
    }

    /// The parsed image config of an image.
    pub fn image_config(&self, input: &str) -> Result<oci_spec::image::ImageConfiguration> {
        let record = self.get(input)?;
        let data = self
            .inner
            .blobs
            .read(&record.config_digest, "image config")?;
        serde_json::from_slice(&data).map_err(|e| ImageError::InvalidContent {
            what: format!("image config {}", record.config_digest),
            reason: e.to_string(),
        })
    }

    /// Give the image `src` the additional name `dst` (replacing whatever `dst` named).
    pub fn tag(&self, src: &str, dst: &str) -> Result<ImageRecord> {
        let dst_ref = reference::parse(dst)?;
        if dst_ref.digest().is_some() {
            return Err(ImageError::InvalidReference {
                input: dst.to_string(),
                reason: "a tag target cannot carry a digest".to_string(),
            });
        }
        let mut records = lock(&self.inner.records);
        let mut record = resolve(&records, src)?.clone();
        record.reference = dst_ref.whole();
        record.added = now_unix();
        records.put(record.clone())?;
        info!(src, dst = %record.reference, "image tagged");
        Ok(record)
    }

    /// Remove the record `input` names, then delete the blobs and layers no other image (and no
    /// container) needs.
    pub fn remove(&self, input: &str) -> Result<RemoveReport> {
        let removed = {
            let mut records = lock(&self.inner.records);
            let found = resolve(&records, input)?;
            let by_name = reference::normalize(input).is_ok_and(|n| n == found.reference);
            if !by_name {
                // An id (or digest) naming an image that has several names: removing one of
                // them at random would surprise; make the caller say which.
                let names: Vec<&str> = records
                    .all()
                    .filter(|r| r.config_digest == found.config_digest)
                    .map(|r| r.reference.as_str())
                    .collect();
                if names.len() > 1 {
                    return Err(ImageError::Ambiguous {
                        input: input.to_string(),
                        matches: names.join(", "),
                    });
                }
            }
            let key = found.reference.clone();
            records.remove(&key)?.ok_or_else(|| ImageError::NotFound {
                reference: key.clone(),
            })?
        };
        let (blobs, layers) = self.collect(
            Some(removed.blobs().map(str::to_string).collect()),
            Some(removed.diff_ids().map(str::to_string).collect()),
        )?;
        info!(reference = %removed.reference, blobs = blobs.len(), layers = layers.len(), "image removed");
        Ok(RemoveReport {
            untagged: removed.reference,
            deleted_blobs: blobs,
            deleted_layers: layers,
        })
    }

    /// Delete every blob and layer no record, snapshot or running operation uses.
    pub fn gc(&self) -> Result<GcReport> {
        let before: HashMap<String, u64> = self
            .inner
            .blobs
            .list()?
            .into_iter()
            .map(|d| {
                let size = self.inner.blobs.size(&d).unwrap_or(0);
                (d, size)
            })
            .collect();
        let (blobs, layers) = self.collect(None, None)?;
        let freed = blobs.iter().filter_map(|d| before.get(d)).sum();
        info!(
            blobs = blobs.len(),
            layers = layers.len(),
            freed,
            "image gc done"
        );
        Ok(GcReport {
            deleted_blobs: blobs,
            deleted_layers: layers,
            freed_blob_bytes: freed,
        })
    }

    /// Delete unreferenced blobs and layers among the candidates (all when `None`).
    pub(super) fn collect(
        &self,
        blob_candidates: Option<Vec<String>>,
        layer_candidates: Option<Vec<String>>,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let pins = lock(&self.inner.pins);
        let (mut used_blobs, mut used_layers) = {
            let records = lock(&self.inner.records);
            let mut b = HashSet::new();
            let mut l = HashSet::new();
            for r in records.all() {
                b.extend(r.blobs().map(str::to_string));
                l.extend(r.diff_ids().map(str::to_string));
            }
            (b, l)
        };
        for pin in self.snapshot_pins()? {
            used_layers.extend(pin.layers);
        }
        used_blobs.extend(pins.keys().cloned());
        used_layers.extend(pins.keys().cloned());

        let blob_candidates = match blob_candidates {
            Some(c) => c,
            None => self.inner.blobs.list()?,
        };
        let layer_candidates = match layer_candidates {
            Some(c) => c,
            None => self.inner.layers.list()?,
        };
        let mut deleted_blobs = Vec::new();
        for d in blob_candidates {
            if !used_blobs.contains(&d) && self.inner.blobs.contains(&d)? {
                self.inner.blobs.remove(&d)?;
                deleted_blobs.push(d);
            }
        }
        let mut deleted_layers = Vec::new();
        for d in layer_candidates {
            if !used_layers.contains(&d) && self.inner.layers.contains(&d)? {
                self.inner.layers.remove(&d)?;
                deleted_layers.push(d);
            }
        }
        deleted_blobs.sort();
        deleted_blobs.dedup();
        deleted_layers.sort();
        deleted_layers.dedup();
        Ok((deleted_blobs, deleted_layers))
    }

    /// Pin digests (blobs or diff ids) against `gc` / `remove` until the guard drops.
    pub(super) fn pin<I, S>(&self, keys: I) -> PinGuard
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let mut pins = lock(&self.inner.pins);
        for k in &keys {
            *pins.entry(k.clone()).or_insert(0) += 1;
        }
        PinGuard {
            inner: self.inner.clone(),
            keys,
        }
    }

    /// Store what `reader` yields as a blob whose digest is not known in advance; the digest is
    /// pinned before the blob gets its final name, so `gc` cannot take it before the caller
    /// records it.
    pub(super) fn ingest_pinned(
        &self,
        reader: &mut dyn std::io::Read,
        what: &str,
    ) -> Result<(String, u64, PinGuard)> {
        let (temp, hasher) = self.inner.blobs.stage(reader)?;
        let digest = hasher.clone().finish();
        let pin = self.pin([digest.clone()]);
        let (digest, size) = self
            .inner
            .blobs
            .commit(temp, hasher, Some(&digest), None, what)?;
        Ok((digest, size, pin))
    }

    /// Write a record (all its content must be complete on disk).
    pub(super) fn put_record(&self, record: ImageRecord) -> Result<()> {
        for d in record.blobs() {
            if !self.inner.blobs.contains(d)? {
                return Err(ImageError::MissingBlob {
                    digest: d.to_string(),
                    what: format!("image {}", record.reference),
                    path: self.inner.blobs.path(d)?,
                });
            }
        }
        for d in record.diff_ids() {
            if !self.inner.layers.contains(d)? {
                return Err(ImageError::Unpack {
                    digest: d.to_string(),
                    reason: format!("layer of {} is not unpacked", record.reference),
                });
            }
        }
        lock(&self.inner.records).put(record)
    }

    /// Unpack a stored layer blob (blocking work; call from a blocking context).
    pub(super) fn unpack_layer_blob(
        &self,
        blob_digest: &str,
        media_type: &str,
        diff_id: &str,
    ) -> Result<bool> {
        if self.inner.layers.contains(diff_id)? {
            return Ok(false);
        }
        let blob = self.inner.blobs.open(blob_digest, "layer")?;
        self.inner
            .layers
            .unpack(blob, media_type, blob_digest, diff_id)
    }

    /// Path of a snapshot's pin file.
    pub(super) fn pin_file(&self, id: &str) -> PathBuf {
        self.inner
            .snapshots
            .join(format!("{PIN_PREFIX}{id}{PIN_SUFFIX}"))
    }

    /// Every snapshot pin file's content.
    pub(super) fn snapshot_pins(&self) -> Result<Vec<SnapshotPin>> {
        let dir = &self.inner.snapshots;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| ImageError::io("read directory", dir, e))? {
            let entry = entry.map_err(|e| ImageError::io("read directory", dir, e))?;
            let path = entry.path();
            if pin_id(&entry.file_name().to_string_lossy()).is_none() {
                continue;
            }
            let data =
                fs::read(&path).map_err(|e| ImageError::io("read snapshot pin", &path, e))?;
            match serde_json::from_slice::<SnapshotPin>(&data) {
                Ok(pin) => out.push(pin),
                Err(e) => {
                    // Keep everything rather than guess: a pin we cannot read may protect layers.
                    return Err(ImageError::CorruptIndex {
                        path,
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Look up a record by reference or id.
fn resolve<'a>(records: &'a Records, input: &str) -> Result<&'a ImageRecord> {
    let parsed = reference::parse(input);
    if let Ok(r) = &parsed {
        if let Some(rec) = records.get(&r.whole()) {
            return Ok(rec);
        }
        // `repo@sha256:…`: any record of that repository with that manifest or index digest.
        if let Some(d) = r.digest() {
            if let Some(rec) = records.all().find(|rec| {
                reference::parse(&rec.reference)
                    .is_ok_and(|x| x.registry() == r.registry() && x.repository() == r.repository())
                    && (rec.manifest_digest == d || rec.index_digest.as_deref() == Some(d))
            }) {
                return Ok(rec);
            }
        }
    }
    // Image id or a prefix of it.
    let hex = input.strip_prefix(digest::SHA256_PREFIX).unwrap_or(input);
    if hex.len() >= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hex = hex.to_ascii_lowercase();
        let mut matches: Vec<&ImageRecord> = records
            .all()
            .filter(|rec| {
                rec.config_digest
                    .strip_prefix(digest::SHA256_PREFIX)
                    .is_some_and(|h| h.starts_with(&hex))
            })
            .collect();
        let ids: HashSet<&str> = matches.iter().map(|r| r.config_digest.as_str()).collect();
        match ids.len() {
            0 => {}
            1 => {
                matches.sort_by(|a, b| a.reference.cmp(&b.reference));
                if matches.len() > 1 {
                    debug!(input, image = %matches[0].config_digest, "image id has several names; using the first");
                }
                return Ok(matches[0]);
            }
            _ => {
                return Err(ImageError::Ambiguous {
                    input: input.to_string(),
                    matches: ids.into_iter().collect::<Vec<_>>().join(", "),
                })
            }
        }
    }
    match parsed {
        Ok(r) => Err(ImageError::NotFound {
            reference: r.whole(),
        }),
        Err(e) => Err(e),
    }
}

/// Delete `.tmp-*` files directly under `dir` (interrupted atomic writes).
fn remove_temp_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(|e| ImageError::io("read directory", dir, e))? {
        let entry = entry.map_err(|e| ImageError::io("read directory", dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(".tmp-")
            && entry.file_type().map(|t| t.is_file()).unwrap_or(false)
        {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| ImageError::io("remove temp file", &path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Delete snapshot pin files whose snapshot directory never got created (crash between the two).
fn remove_dangling_pins(dir: &Path) -> Result<usize> {
    let mut removed = remove_temp_files(dir)?;
    for entry in fs::read_dir(dir).map_err(|e| ImageError::io("read directory", dir, e))? {
        let entry = entry.map_err(|e| ImageError::io("read directory", dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if pin_id(&name).is_some_and(|id| !dir.join(id).exists()) {
            fs::remove_file(&path).map_err(|e| ImageError::io("remove snapshot pin", &path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Prefix and suffix of snapshot pin file names.
const PIN_PREFIX: &str = ".pin-";
const PIN_SUFFIX: &str = ".json";

/// The container id of a pin file name.
fn pin_id(name: &str) -> Option<&str> {
    name.strip_prefix(PIN_PREFIX)?.strip_suffix(PIN_SUFFIX)
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC time of a unix timestamp (`2024-01-02T03:04:05Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (proleptic Gregorian), era-based.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = ImageStore::open(StoreConfig::with_root(dir.path())).expect("open");
        let err = ImageStore::open(StoreConfig::with_root(dir.path()))
            .err()
            .expect("locked")
            .to_string();
        assert!(err.contains("in use"), "{err}");
        drop(s);
        ImageStore::open(StoreConfig::with_root(dir.path())).expect("reopen");
    }

    #[test]
    fn unknown_image_errors_name_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = ImageStore::open(StoreConfig::with_root(dir.path())).expect("open");
        let err = s.get("nosuch:1").expect_err("missing").to_string();
        assert!(err.contains("docker.io/library/nosuch:1"), "{err}");
        let err = s.get("Bad Ref").expect_err("invalid").to_string();
        assert!(err.contains("invalid image reference"), "{err}");
    }
}
