//! Media types, manifest / index / config parsing and layer decompression.
//!
//! Accepted: OCI image manifests and indexes, Docker schema 2 manifests and manifest lists; layer
//! blobs as plain tar, gzip or zstd (OCI and Docker spellings); OCI and Docker image configs.
//! Everything else is refused with [`ImageError::UnsupportedMediaType`] before any layer is
//! downloaded. Parsing uses the `oci-spec` types (Docker schema 2 has the same shape).

use std::io::{BufReader, Read};

use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os};
use serde::Deserialize;

use super::digest;
use super::error::{ImageError, Result};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Every manifest type the registry client asks for (the `Accept` list). A registry answers 404
/// for an OCI manifest unless the OCI types are listed.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] =
    &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression a layer media type implies; unknown types are refused.
pub fn layer_compression(media_type: &str, what: &str) -> Result<Compression> {
    match media_type {
        OCI_LAYER_TAR
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        OCI_LAYER_GZIP
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        OCI_LAYER_ZSTD
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
        other => Err(ImageError::UnsupportedMediaType {
            media_type: other.to_string(),
            what: what.to_string(),
        }),
    }
}

/// The compression of a file judged from its first bytes (for imported tarballs).
pub fn sniff_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// The OCI layer media type of a compression.
pub fn oci_layer_type(c: Compression) -> &'static str {
    match c {
        Compression::None => OCI_LAYER_TAR,
        Compression::Gzip => OCI_LAYER_GZIP,
        Compression::Zstd => OCI_LAYER_ZSTD,
    }
}

/// A reader yielding the uncompressed tar of a layer blob.
pub fn decompress<'a, R: Read + Send + 'a>(
    c: Compression,
    blob: R,
    what: &str,
) -> Result<Box<dyn Read + Send + 'a>> {
    let blob = BufReader::with_capacity(256 * 1024, blob);
    Ok(match c {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(blob)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(blob).map_err(|e| {
                ImageError::Unpack {
                    digest: what.to_string(),
                    reason: format!("zstd: {e}"),
                }
            })?)
        }
    })
}

/// Is this an image config media type we can run?
pub fn check_config_type(media_type: &str, what: &str) -> Result<()> {
    match media_type {
        OCI_CONFIG | DOCKER_CONFIG => Ok(()),
        other => Err(ImageError::UnsupportedMediaType {
            media_type: other.to_string(),
            what: format!("config of {what}"),
        }),
    }
}

/// A fetched manifest document: a single image or an index of them.
#[derive(Debug)]
pub enum Document {
    /// An image manifest, with its media type.
    Manifest(Box<ImageManifest>, String),
    /// An index / manifest list, with its media type.
    Index(Box<ImageIndex>, String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
}

/// Parse a manifest or index; `what` names it (reference or digest) in errors.
pub fn parse_document(data: &[u8], what: &str) -> Result<Document> {
    let invalid = |reason: String| ImageError::InvalidContent {
        what: format!("manifest of {what}"),
        reason,
    };
    let probe: Probe = serde_json::from_slice(data).map_err(|e| invalid(e.to_string()))?;
    if probe.schema_version != Some(2) {
        return Err(ImageError::UnsupportedMediaType {
            media_type: format!(
                "schemaVersion {} manifest",
                probe
                    .schema_version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "(none)".into())
            ),
            what: what.to_string(),
        });
    }
    let media_type = match probe.media_type {
        Some(mt) => mt,
        None if probe.manifests.is_some() => OCI_INDEX.to_string(),
        None if probe.layers.is_some() => OCI_MANIFEST.to_string(),
        None => return Err(invalid("neither layers nor manifests".to_string())),
    };
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: ImageManifest =
                serde_json::from_slice(data).map_err(|e| invalid(e.to_string()))?;
            check_manifest(&m, what)?;
            Ok(Document::Manifest(Box::new(m), media_type))
        }
        OCI_INDEX | DOCKER_LIST => {
            let i: ImageIndex = serde_json::from_slice(data).map_err(|e| invalid(e.to_string()))?;
            for d in i.manifests() {
                digest::check(d.digest().as_ref(), &format!("index of {what}"))?;
            }
            Ok(Document::Index(Box::new(i), media_type))
        }
        other => Err(ImageError::UnsupportedMediaType {
            media_type: other.to_string(),
            what: what.to_string(),
        }),
    }
}

/// Validate a manifest's digests and media types before anything is fetched.
pub fn check_manifest(m: &ImageManifest, what: &str) -> Result<()> {
    check_config_type(m.config().media_type().as_ref(), what)?;
    digest::check(m.config().digest().as_ref(), &format!("config of {what}"))?;
    for l in m.layers() {
        let d = l.digest().to_string();
        digest::check(&d, &format!("layer of {what}"))?;
        layer_compression(l.media_type().as_ref(), &format!("layer {d} of {what}"))?;
    }
    Ok(())
}

/// Pick the linux/amd64 manifest of an index.
pub fn select_linux_amd64<'a>(index: &'a ImageIndex, what: &str) -> Result<&'a Descriptor> {
    let is_image = |d: &Descriptor| {
        matches!(
            d.media_type().to_string().as_str(),
            OCI_MANIFEST | DOCKER_MANIFEST
        )
    };
    index
        .manifests()
        .iter()
        .filter(|d| is_image(d))
        .find(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
        })
        .ok_or_else(|| ImageError::NoMatchingPlatform {
            reference: what.to_string(),
            available: {
                let list: Vec<String> = index
                    .manifests()
                    .iter()
                    .map(|d| match d.platform() {
                        Some(p) => {
                            let mut s = format!("{}/{}", p.os(), p.architecture());
                            if let Some(v) = p.variant() {
                                s.push('/');
                                s.push_str(v);
                            }
                            s
                        }
                        None => format!("{} without platform", d.media_type()),
                    })
                    .collect();
                if list.is_empty() {
                    "no manifests".to_string()
                } else {
                    list.join(", ")
                }
            },
        })
}

/// Parse an image config and check it against the manifest's layer count.
pub fn parse_config(data: &[u8], layers: usize, what: &str) -> Result<ImageConfiguration> {
    let config: ImageConfiguration =
        serde_json::from_slice(data).map_err(|e| ImageError::InvalidContent {
            what: format!("image config of {what}"),
            reason: e.to_string(),
        })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers {
        return Err(ImageError::InvalidContent {
            what: format!("image config of {what}"),
            reason: format!(
                "rootfs.diff_ids lists {} layers but the manifest has {layers}",
                diff_ids.len()
            ),
        });
    }
    for d in diff_ids {
        digest::check(d, &format!("diff ids of {what}"))?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(mt: &str, platform: Option<(&str, &str)>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "mediaType": mt,
            "digest": digest::of_bytes(mt.as_bytes()),
            "size": 10
        });
        if let Some((os, arch)) = platform {
            v["platform"] = serde_json::json!({"os": os, "architecture": arch});
        }
        v
    }

    #[test]
    fn index_selects_linux_amd64() {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                desc(DOCKER_MANIFEST, Some(("linux", "arm64"))),
                desc(DOCKER_MANIFEST, Some(("linux", "amd64"))),
            ]
        });
        let data = serde_json::to_vec(&index).expect("json");
        let Document::Index(i, mt) = parse_document(&data, "x").expect("parse") else {
            panic!("not an index")
        };
        assert_eq!(mt, DOCKER_LIST);
        let d = select_linux_amd64(&i, "x").expect("select");
        assert_eq!(
            d.platform().as_ref().map(|p| p.architecture().clone()),
            Some(Arch::Amd64)
        );
    }

    #[test]
    fn index_without_amd64_says_what_it_has() {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [desc(OCI_MANIFEST, Some(("linux", "arm64")))]
        });
        let data = serde_json::to_vec(&index).expect("json");
        let Document::Index(i, _) = parse_document(&data, "img").expect("parse") else {
            panic!("not an index")
        };
        let err = select_linux_amd64(&i, "img").expect_err("none").to_string();
        assert!(err.contains("linux/arm64"), "{err}");
    }

    #[test]
    fn unknown_layer_type_is_refused() {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, None),
            "layers": [desc("application/vnd.wasm.content.layer.v1+wasm", None)]
        });
        let data = serde_json::to_vec(&m).expect("json");
        let err = parse_document(&data, "img")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("unsupported media type"), "{err}");
    }

    #[test]
    fn schema1_is_refused() {
        let err = parse_document(br#"{"schemaVersion":1,"fsLayers":[]}"#, "old")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("schemaVersion 1"), "{err}");
    }

    #[test]
    fn gzip_and_zstd_decompress() {
        use std::io::Write;
        let data = b"payload".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).expect("gz");
        let gz = gz.finish().expect("gz");
        assert_eq!(sniff_compression(&gz), Compression::Gzip);
        let mut out = Vec::new();
        decompress(Compression::Gzip, &gz[..], "t")
            .expect("dec")
            .read_to_end(&mut out)
            .expect("read");
        assert_eq!(out, data);
        let zs = zstd::encode_all(&data[..], 1).expect("zstd");
        assert_eq!(sniff_compression(&zs), Compression::Zstd);
        let mut out = Vec::new();
        decompress(Compression::Zstd, &zs[..], "t")
            .expect("dec")
            .read_to_end(&mut out)
            .expect("read");
        assert_eq!(out, data);
    }
}
