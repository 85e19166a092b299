//! OCI image layout archives: `save` writes, `load` reads a tar holding `oci-layout`,
//! `index.json` and `blobs/sha256/*` (optionally gzip or zstd compressed on load).
//!
//! Names: `save` annotates each manifest with `org.opencontainers.image.ref.name` (the tag, as
//! the image spec and skopeo/umoci use it) and `io.containerd.image.name` (the full reference).
//! `load` takes the full reference from the containerd annotation, or from `ref.name` when that
//! is a full reference; a bare tag needs a name from the caller.
//!
//! Invariants: blobs are streamed from the tar into the blob store with their digest verified
//! against their file name (nothing is held in memory but `index.json`); every blob is pinned
//! from before it lands until the records are written; blobs of the archive that no image ends
//! up using are deleted again. `save` writes a temp file next to the target and renames it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::Descriptor;
use tracing::{info, warn};

use super::blobs::sync_dir;
use super::digest;
use super::error::{ImageError, Result};
use super::manifest::{self, Document, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use super::records::{ImageRecord, LayerRecord};
use super::reference;
use super::store::{now_unix, ImageStore, PinGuard};

/// The image spec's tag annotation.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// containerd's full-name annotation.
pub const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";

/// Largest `index.json` / `oci-layout` accepted.
const MAX_METADATA_SIZE: u64 = 16 * 1024 * 1024;

impl ImageStore {
    /// Write the images `inputs` (references or ids) as one OCI layout archive at `out`.
    pub fn save(&self, inputs: &[&str], out: &Path) -> Result<()> {
        let mut records = Vec::new();
        for input in inputs {
            records.push(self.get(input)?);
        }
        let _pins = self.pin(
            records
                .iter()
                .flat_map(|r| r.blobs().map(str::to_string))
                .collect::<Vec<_>>(),
        );
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".tmp-save-")
            .tempfile_in(&dir)
            .map_err(|e| ImageError::io("create temp file in", &dir, e))?;
        let file = temp
            .as_file()
            .try_clone()
            .map_err(|e| ImageError::io("open", temp.path(), e))?;
        let mut tar = tar::Builder::new(BufWriter::with_capacity(1024 * 1024, file));
        let tpath = temp.path().to_path_buf();
        let werr = |e: io::Error| ImageError::io("write archive", &tpath, e);

        append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr)?;
        append_dir(&mut tar, "blobs/").map_err(werr)?;
        append_dir(&mut tar, "blobs/sha256/").map_err(werr)?;
        let blobs: BTreeSet<&str> = records.iter().flat_map(|r| r.blobs()).collect();
        for d in blobs {
            let mut blob = self.inner.blobs.open(d, "image content")?;
            let size = self.inner.blobs.size(d)?;
            let name = format!("blobs/sha256/{}", digest::hex_of(d, "blob")?);
            let mut header = file_header(size);
            tar.append_data(&mut header, &name, &mut blob)
                .map_err(werr)?;
        }
        let manifests: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                let mut annotations = BTreeMap::new();
                annotations.insert(CONTAINERD_NAME_ANNOTATION, r.reference.clone());
                if let Ok(parsed) = reference::parse(&r.reference) {
                    if let Some(tag) = parsed.tag() {
                        annotations.insert(REF_NAME_ANNOTATION, tag.to_string());
                    }
                }
                let size = self.inner.blobs.size(&r.manifest_digest).unwrap_or(0);
                serde_json::json!({
                    "mediaType": r.manifest_media_type,
                    "digest": r.manifest_digest,
                    "size": size,
                    "annotations": annotations,
                    "platform": {"architecture": "amd64", "os": "linux"},
                })
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        });
        let index = serde_json::to_vec(&index).map_err(|e| ImageError::InvalidContent {
            what: "index.json".to_string(),
            reason: e.to_string(),
        })?;
        append_bytes(&mut tar, "index.json", &index).map_err(werr)?;
        let mut buf = tar.into_inner().map_err(werr)?;
        buf.flush().map_err(werr)?;
        drop(buf);
        temp.as_file().sync_all().map_err(werr)?;
        temp.persist(out)
            .map_err(|e| ImageError::io("rename archive into place", out, e.error))?;
        sync_dir(&dir)?;
        info!(out = %out.display(), images = records.len(), "images saved");
        Ok(())
    }

    /// Load every image of the OCI layout archive at `path`. `name` names the image when the
    /// archive holds exactly one (needed when it carries only a bare tag, as skopeo writes).
    pub fn load(&self, path: &Path, name: Option<&str>) -> Result<Vec<ImageRecord>> {
        let bad = |reason: String| ImageError::InvalidArchive {
            path: path.to_path_buf(),
            reason,
        };
        let name = name.map(reference::parse).transpose()?;
        let mut file = File::open(path).map_err(|e| ImageError::io("open archive", path, e))?;
        let mut head = [0u8; 4];
        let n = read_up_to(&mut file, &mut head)
            .map_err(|e| ImageError::io("read archive", path, e))?;
        let compression = manifest::sniff_compression(&head[..n]);
        let file = File::open(path).map_err(|e| ImageError::io("open archive", path, e))?;
        let stream = manifest::decompress(compression, file, &path.display().to_string())?;
        let mut archive = tar::Archive::new(stream);

        let mut index_json: Option<Vec<u8>> = None;
        let mut layout_seen = false;
        let mut docker_manifest_seen = false;
        let mut pins: Vec<PinGuard> = Vec::new();
        let mut new_blobs: Vec<String> = Vec::new();
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("read tar entry: {e}")))?;
            let entry_path = entry
                .path()
                .map_err(|e| bad(format!("entry name: {e}")))?
                .into_owned();
            let Some(rel) = normalize(&entry_path) else {
                return Err(bad(format!(
                    "entry {} escapes the archive root",
                    entry_path.display()
                )));
            };
            let kind = entry.header().entry_type();
            match rel.as_str() {
                "oci-layout" => {
                    let data = read_small(&mut entry, &rel).map_err(bad)?;
                    let v: serde_json::Value = serde_json::from_slice(&data)
                        .map_err(|e| bad(format!("oci-layout: {e}")))?;
                    if v.get("imageLayoutVersion").is_none() {
                        return Err(bad("oci-layout has no imageLayoutVersion".to_string()));
                    }
                    layout_seen = true;
                }
                "index.json" => index_json = Some(read_small(&mut entry, &rel).map_err(bad)?),
                "manifest.json" => docker_manifest_seen = true,
                _ => {
                    let Some(hex) = rel.strip_prefix("blobs/sha256/") else {
                        continue;
                    };
                    if kind.is_dir() {
                        continue;
                    }
                    if !kind.is_file() {
                        return Err(bad(format!("blob {rel} is not a regular file")));
                    }
                    let d = format!("{}{hex}", digest::SHA256_PREFIX);
                    digest::check(&d, &format!("archive entry {rel}"))?;
                    pins.push(self.pin([d.clone()]));
                    if self.inner.blobs.contains(&d)? {
                        continue;
                    }
                    let size = entry.header().size().ok();
                    self.inner.blobs.write_reader(
                        &mut entry,
                        Some(&d),
                        size,
                        &format!("archive blob {rel}"),
                    )?;
                    new_blobs.push(d);
                }
            }
        }
        let Some(index_json) = index_json else {
            return Err(bad(if docker_manifest_seen {
                "it has a Docker manifest.json but no index.json: only OCI layout archives \
                 (docker save from Docker 25+, skopeo oci-archive, flotilla save) are supported"
                    .to_string()
            } else {
                "no index.json: not an OCI image layout archive".to_string()
            }));
        };
        if !layout_seen {
            warn!(archive = %path.display(), "archive has no oci-layout file; loading anyway");
        }
        let index = match manifest::parse_document(&index_json, "index.json")? {
            Document::Index(i, _) => i,
            Document::Manifest(..) => {
                return Err(bad("index.json is a manifest, not an index".to_string()))
            }
        };
        let entries: Vec<&Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| {
                let mt = d.media_type().to_string();
                let keep = matches!(
                    mt.as_str(),
                    OCI_MANIFEST | DOCKER_MANIFEST | OCI_INDEX | DOCKER_LIST
                );
                if !keep {
                    warn!(digest = %d.digest(), media_type = %mt, "skipping non-image entry of index.json");
                }
                keep
            })
            .collect();
        if entries.is_empty() {
            return Err(bad("index.json lists no image".to_string()));
        }
        if name.is_some() && entries.len() > 1 {
            return Err(bad(format!(
                "it holds {} images; a name can only be given for a single image",
                entries.len()
            )));
        }

        let mut records = Vec::new();
        for entry in entries {
            let key = match &name {
                Some(n) => n.whole(),
                None => name_from(entry.annotations().as_ref()).map_err(|tag| {
                    bad(if tag.is_empty() {
                        format!(
                            "image {} has no name in the archive; give it one (--name REF)",
                            entry.digest()
                        )
                    } else {
                        format!(
                            "image {} is only tagged {tag:?} in the archive; give it a full name (--name REF)",
                            entry.digest()
                        )
                    })
                })?,
            };
            records.push(self.record_from_archive(path, entry, &key)?);
        }
        for r in &records {
            self.put_record(r.clone())?;
            info!(reference = %r.reference, manifest = %r.manifest_digest, "image loaded");
        }
        drop(pins);
        // Blobs the archive brought that no image uses (other platforms, stray files).
        self.collect(Some(new_blobs), Some(Vec::new()))?;
        Ok(records)
    }

    /// Build (and unpack the layers of) the record of one `index.json` entry.
    fn record_from_archive(
        &self,
        path: &Path,
        entry: &Descriptor,
        key: &str,
    ) -> Result<ImageRecord> {
        let missing = |d: &str, what: &str| ImageError::InvalidArchive {
            path: path.to_path_buf(),
            reason: format!("{what} {d} is listed but its blob is not in the archive"),
        };
        let mut digest_top = entry.digest().to_string();
        let mut index_digest = None;
        let mut data = self
            .inner
            .blobs
            .read(&digest_top, "manifest")
            .map_err(|_| missing(&digest_top, "manifest"))?;
        let (manifest, media_type) = loop {
            match manifest::parse_document(&data, &digest_top)? {
                Document::Manifest(m, mt) => break (m, mt),
                Document::Index(i, _) => {
                    if index_digest.is_some() {
                        return Err(ImageError::InvalidArchive {
                            path: path.to_path_buf(),
                            reason: format!("index {digest_top} nests another index"),
                        });
                    }
                    let child = manifest::select_linux_amd64(&i, key)?.digest().to_string();
                    index_digest = Some(digest_top.clone());
                    data = self
                        .inner
                        .blobs
                        .read(&child, "manifest")
                        .map_err(|_| missing(&child, "manifest"))?;
                    digest_top = child;
                }
            }
        };
        let config_digest = manifest.config().digest().to_string();
        let config_data = self
            .inner
            .blobs
            .read(&config_digest, "image config")
            .map_err(|_| missing(&config_digest, "config"))?;
        let config = manifest::parse_config(&config_data, manifest.layers().len(), key)?;
        let mut layers = Vec::new();
        for (l, diff_id) in manifest.layers().iter().zip(config.rootfs().diff_ids()) {
            let d = l.digest().to_string();
            if !self.inner.blobs.contains(&d)? {
                return Err(missing(&d, "layer"));
            }
            let layer = LayerRecord {
                digest: d,
                media_type: l.media_type().to_string(),
                size: l.size(),
                diff_id: diff_id.clone(),
            };
            let _pin = self.pin([layer.diff_id.clone()]);
            self.unpack_layer_blob(&layer.digest, &layer.media_type, &layer.diff_id)?;
            layers.push(layer);
        }
        Ok(ImageRecord {
            reference: key.to_string(),
            manifest_digest: digest_top,
            manifest_media_type: media_type,
            config_digest,
            layers,
            index_digest,
            created: config.created().clone(),
            added: now_unix(),
        })
    }
}

/// The full reference an `index.json` entry's annotations give, or the bare tag as error.
fn name_from(annotations: Option<&HashMap<String, String>>) -> std::result::Result<String, String> {
    let Some(a) = annotations else {
        return Err(String::new());
    };
    if let Some(n) = a.get(CONTAINERD_NAME_ANNOTATION) {
        if let Ok(r) = reference::parse(n) {
            return Ok(r.whole());
        }
    }
    match a.get(REF_NAME_ANNOTATION) {
        Some(n) if n.contains('/') || n.contains(':') => reference::parse(n)
            .map(|r| r.whole())
            .map_err(|_| n.clone()),
        Some(tag) => Err(tag.clone()),
        None => Err(String::new()),
    }
}

/// `a/./b` -> `a/b`; `None` for absolute paths or `..`.
fn normalize(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

fn read_small(entry: &mut dyn Read, name: &str) -> std::result::Result<Vec<u8>, String> {
    let mut data = Vec::new();
    entry
        .take(MAX_METADATA_SIZE + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("read {name}: {e}"))?;
    if data.len() as u64 > MAX_METADATA_SIZE {
        return Err(format!("{name} is larger than {MAX_METADATA_SIZE} bytes"));
    }
    Ok(data)
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = file_header(data.len() as u64);
    tar.append_data(&mut h, name, data)
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    tar.append_data(&mut h, name, io::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_annotations() {
        let mut a = HashMap::new();
        a.insert(REF_NAME_ANNOTATION.to_string(), "latest".to_string());
        assert_eq!(name_from(Some(&a)), Err("latest".to_string()));
        a.insert(
            REF_NAME_ANNOTATION.to_string(),
            "127.0.0.1:5000/bb:1".to_string(),
        );
        assert_eq!(name_from(Some(&a)).as_deref(), Ok("127.0.0.1:5000/bb:1"));
        a.insert(
            CONTAINERD_NAME_ANNOTATION.to_string(),
            "busybox".to_string(),
        );
        assert_eq!(
            name_from(Some(&a)).as_deref(),
            Ok("docker.io/library/busybox:latest")
        );
    }

    #[test]
    fn archive_paths_normalize() {
        assert_eq!(
            normalize(Path::new("./blobs/sha256/ab")).as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize(Path::new("/etc/passwd")), None);
        assert_eq!(normalize(Path::new("blobs/../../x")), None);
    }
}
