//! Shared helpers of the `image_*` tests: a store in a temp dir, progress capture, and OCI
//! images built by code (layers from tar entries, gzip / zstd / plain, OCI or Docker media
//! types, indexes) written as layout directories or layout archives.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use flotilla_agent::image::{ImageStore, PullOptions, PullProgress, StoreConfig};
use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// A store under `dir/store`.
pub fn open_store(dir: &Path) -> ImageStore {
    ImageStore::open(StoreConfig::with_root(dir.join("store"))).expect("open image store")
}

/// Events of a pull, recorded.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<PullProgress>>>);

impl Events {
    pub fn push(&self, p: PullProgress) {
        self.0.lock().expect("events").push(p);
    }
    pub fn take(&self) -> Vec<PullProgress> {
        std::mem::take(&mut *self.0.lock().expect("events"))
    }
}

/// Pull `reference` anonymously, returning the record and the progress events.
pub async fn pull(
    store: &ImageStore,
    reference: &str,
) -> (
    flotilla_agent::image::Result<flotilla_agent::image::ImageRecord>,
    Vec<PullProgress>,
) {
    pull_with(store, reference, &PullOptions::default()).await
}

/// Pull with options.
pub async fn pull_with(
    store: &ImageStore,
    reference: &str,
    opts: &PullOptions,
) -> (
    flotilla_agent::image::Result<flotilla_agent::image::ImageRecord>,
    Vec<PullProgress>,
) {
    let events = Events::default();
    let e = events.clone();
    let report = move |p: PullProgress| e.push(p);
    let res = store.pull(reference, opts, &report).await;
    (res, events.take())
}

/// Names of the entries of a directory (sorted), empty when it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Mount points (from /proc/self/mountinfo) under `prefix`.
pub fn mounts_under(prefix: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let prefix = prefix.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One tar entry of a layer built by code.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    /// `.wh.NAME` in DIR for path DIR/NAME.
    Whiteout(&'a str),
    /// `DIR/.wh..wh..opq`.
    Opaque(&'a str),
}

/// An uncompressed layer tar.
pub fn layer_tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).expect("append file");
    };
    for e in entries {
        match e {
            Entry::Dir(p) => {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(1_700_000_000);
                b.append_data(&mut h, p, std::io::empty())
                    .expect("append dir");
            }
            Entry::File(p, data) => file(&mut b, p, data, 0o644),
            Entry::Symlink(p, target) => {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(1_700_000_000);
                b.append_link(&mut h, p, target).expect("append symlink");
            }
            Entry::Whiteout(p) => {
                let path = Path::new(p);
                let name = path.file_name().expect("name").to_string_lossy();
                let wh = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => format!("{}/.wh.{name}", d.display()),
                    _ => format!(".wh.{name}"),
                };
                file(&mut b, &wh, b"", 0o644);
            }
            Entry::Opaque(d) => file(&mut b, &format!("{d}/.wh..wh..opq"), b"", 0o644),
        }
    }
    b.into_inner().expect("finish tar")
}

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn compress(data: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::None => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).expect("gzip");
            e.finish().expect("gzip")
        }
        Comp::Zstd => {
            let zstd = flotilla_tests::registry::require_binary("zstd", "zstd").expect("zstd");
            let dir = tempfile::tempdir().expect("tempdir");
            let input = dir.path().join("layer.tar");
            fs::write(&input, data).expect("write");
            let out = Command::new(zstd)
                .args(["-q", "-c"])
                .arg(&input)
                .output()
                .expect("run zstd");
            assert!(out.status.success(), "zstd failed");
            out.stdout
        }
    }
}

/// A descriptor.
#[derive(Clone, Debug)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Desc {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// Blobs of images built by code.
#[derive(Default, Clone)]
pub struct Blobs(pub BTreeMap<String, Vec<u8>>);

impl Blobs {
    pub fn add(&mut self, media_type: &str, data: Vec<u8>) -> Desc {
        let d = Desc {
            media_type: media_type.to_string(),
            digest: sha256(&data),
            size: data.len() as u64,
        };
        self.0.insert(d.digest.clone(), data);
        d
    }

    /// An image of `layers` (uncompressed tar + compression), with `cmd`; Docker schema 2 media
    /// types when `docker`. Returns the manifest descriptor and the layer diff ids.
    pub fn image(
        &mut self,
        layers: &[(Vec<u8>, Comp)],
        cmd: &[&str],
        docker: bool,
    ) -> (Desc, Vec<String>) {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, c) in layers {
            diff_ids.push(sha256(tar));
            let mt = match (docker, c) {
                (false, Comp::None) => "application/vnd.oci.image.layer.v1.tar",
                (false, Comp::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
                (false, Comp::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
                (true, Comp::None) => "application/vnd.docker.image.rootfs.diff.tar",
                (true, Comp::Gzip) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                (true, Comp::Zstd) => "application/vnd.docker.image.rootfs.diff.tar.zstd",
            };
            descs.push(self.add(mt, compress(tar, *c)));
        }
        let config = serde_json::json!({
            "created": "2024-01-02T03:04:05Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.add(
            if docker { DOCKER_CONFIG } else { OCI_CONFIG },
            serde_json::to_vec(&config).expect("json"),
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": if docker { DOCKER_MANIFEST } else { OCI_MANIFEST },
            "config": config.json(),
            "layers": descs.iter().map(Desc::json).collect::<Vec<_>>(),
        });
        let m = self.add(
            if docker {
                DOCKER_MANIFEST
            } else {
                OCI_MANIFEST
            },
            serde_json::to_vec(&manifest).expect("json"),
        );
        (m, diff_ids)
    }

    /// An index / manifest list of `(manifest, os, arch)`.
    pub fn index(&mut self, entries: &[(&Desc, &str, &str)], docker: bool) -> Desc {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(d, os, arch)| {
                let mut v = d.json();
                v["platform"] = serde_json::json!({"os": os, "architecture": arch});
                v
            })
            .collect();
        let mt = if docker { DOCKER_LIST } else { OCI_INDEX };
        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": mt, "manifests": manifests});
        self.add(mt, serde_json::to_vec(&index).expect("json"))
    }

    fn index_json(&self, refs: &[(&Desc, BTreeMap<String, String>)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = refs
            .iter()
            .map(|(d, ann)| {
                let mut v = d.json();
                if !ann.is_empty() {
                    v["annotations"] = serde_json::json!(ann);
                }
                v
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))
        .expect("json")
    }

    /// An OCI layout directory with every blob and `refs` tagged (`org.opencontainers.image.ref.name`).
    pub fn write_layout(&self, dir: &Path, refs: &[(&Desc, &str)]) -> PathBuf {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).expect("mkdir");
        for (d, data) in &self.0 {
            fs::write(blobs.join(d.trim_start_matches("sha256:")), data).expect("write blob");
        }
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
        let refs: Vec<(&Desc, BTreeMap<String, String>)> = refs
            .iter()
            .map(|(d, tag)| {
                let mut a = BTreeMap::new();
                a.insert(
                    "org.opencontainers.image.ref.name".to_string(),
                    tag.to_string(),
                );
                (*d, a)
            })
            .collect();
        fs::write(dir.join("index.json"), self.index_json(&refs)).expect("write");
        dir.to_path_buf()
    }

    /// An OCI layout archive (tar) with every blob and `refs` with the given annotations.
    pub fn write_archive(&self, path: &Path, refs: &[(&Desc, BTreeMap<String, String>)]) {
        let mut b = tar::Builder::new(fs::File::create(path).expect("create archive"));
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            b.append_data(&mut h, name, data).expect("append");
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("index.json", &self.index_json(refs));
        for (d, data) in &self.0 {
            add(
                &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
                data,
            );
        }
        b.into_inner().expect("finish").sync_all().expect("sync");
    }
}

/// `PUT path` with `content_type` and `body` on a plain-http registry at `addr`; returns the status.
pub fn http_put(addr: &str, path: &str, content_type: &str, body: &[u8]) -> u16 {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect registry");
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .expect("send head");
    s.write_all(body).expect("send body");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Removes container rootfs snapshots on drop, so a failing assertion leaves no mount behind.
pub struct RootfsCleanup {
    pub store: ImageStore,
    pub ids: Vec<&'static str>,
}

impl Drop for RootfsCleanup {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.store.remove_rootfs(id);
        }
    }
}
