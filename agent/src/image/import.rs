//! Import a root file system tarball (plain, gzip or zstd) as a single-layer OCI image.
//!
//! The tarball is stored as the layer blob unchanged (its compression decides the media type),
//! unpacked once (which yields the diff id), and described by a generated config and OCI
//! manifest. Config changes (`CMD`, `ENTRYPOINT`, `ENV`, `WORKDIR`, `USER`) use the Dockerfile
//! spelling, `KEY=VALUE` or `KEY VALUE`; list values are a JSON array or whitespace-separated.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use tracing::info;

use super::digest;
use super::error::{ImageError, Result};
use super::manifest::{self, OCI_CONFIG, OCI_MANIFEST};
use super::records::{ImageRecord, LayerRecord};
use super::reference;
use super::store::{now_unix, rfc3339, ImageStore};

/// `PATH` given to imported images that set none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One change to the generated image config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// Default arguments.
    Cmd(Vec<String>),
    /// Entrypoint.
    Entrypoint(Vec<String>),
    /// One `KEY=VALUE` environment entry (replaces an earlier one of the same key).
    Env(String),
    /// Working directory (absolute).
    Workdir(String),
    /// User (`uid[:gid]` or a name).
    User(String),
    /// Exposed ports (`80`, `80/tcp`, `53/udp`), for `run -P`.
    Expose(Vec<String>),
}

impl FromStr for ConfigChange {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self> {
        ConfigChange::parse(s)
    }
}

impl ConfigChange {
    /// Parse `CMD=...`, `CMD [...]`, `ENV=K=V`, `ENV K=V`, `WORKDIR=/x`, `USER=1000:1000`.
    pub fn parse(change: &str) -> Result<Self> {
        let bad = |reason: &str| ImageError::InvalidChange {
            change: change.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = change.trim();
        let split = trimmed
            .find(|c: char| c == '=' || c.is_whitespace())
            .ok_or_else(|| bad("no value"))?;
        let key = trimmed[..split].to_ascii_uppercase();
        let value = trimmed[split + 1..].trim();
        if value.is_empty() {
            return Err(bad("empty value"));
        }
        let list = |v: &str| -> Result<Vec<String>> {
            if v.starts_with('[') {
                serde_json::from_str::<Vec<String>>(v)
                    .map_err(|e| bad(&format!("not a JSON array of strings: {e}")))
            } else {
                Ok(v.split_whitespace().map(str::to_string).collect())
            }
        };
        match key.as_str() {
            "CMD" => Ok(ConfigChange::Cmd(list(value)?)),
            "ENTRYPOINT" => Ok(ConfigChange::Entrypoint(list(value)?)),
            "ENV" => {
                if !value.contains('=') || value.starts_with('=') {
                    return Err(bad("ENV needs KEY=VALUE"));
                }
                Ok(ConfigChange::Env(value.to_string()))
            }
            "WORKDIR" => {
                if !value.starts_with('/') {
                    return Err(bad("WORKDIR must be absolute"));
                }
                Ok(ConfigChange::Workdir(value.to_string()))
            }
            "USER" => Ok(ConfigChange::User(value.to_string())),
            "EXPOSE" => {
                let mut ports = Vec::new();
                for p in value.split_whitespace() {
                    let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    let ok =
                        num.parse::<u16>().is_ok_and(|n| n > 0) && matches!(proto, "tcp" | "udp");
                    if !ok {
                        return Err(bad(&format!("EXPOSE takes PORT[/tcp|udp], not {p:?}")));
                    }
                    ports.push(format!("{num}/{proto}"));
                }
                Ok(ConfigChange::Expose(ports))
            }
            _ => Err(bad(&format!("unknown key {key}"))),
        }
    }
}

impl ImageStore {
    /// Import the rootfs tarball at `tar_path` as image `name` with `changes` applied to the
    /// generated config.
    pub fn import(
        &self,
        tar_path: &Path,
        name: &str,
        changes: &[ConfigChange],
    ) -> Result<ImageRecord> {
        let target = reference::parse(name)?;
        if target.digest().is_some() {
            return Err(ImageError::InvalidReference {
                input: name.to_string(),
                reason: "an imported image is named by a tag, not a digest".to_string(),
            });
        }
        let key = target.whole();

        let mut file = File::open(tar_path).map_err(|e| ImageError::io("open", tar_path, e))?;
        let mut head = [0u8; 4];
        let n = file
            .read(&mut head)
            .map_err(|e| ImageError::io("read", tar_path, e))?;
        let compression = manifest::sniff_compression(&head[..n]);
        let media_type = manifest::oci_layer_type(compression);
        let mut file = File::open(tar_path).map_err(|e| ImageError::io("open", tar_path, e))?;
        let (blob_digest, blob_size, _blob_pin) =
            self.ingest_pinned(&mut file, &format!("rootfs tarball {}", tar_path.display()))?;

        // The diff id is pinned before the layer directory can appear, so gc never races us.
        let diff_id = match compression {
            manifest::Compression::None => blob_digest.clone(),
            c => {
                let blob = self.inner.blobs.open(&blob_digest, "imported layer")?;
                let tar = manifest::decompress(c, blob, &blob_digest)?;
                digest::HashingReader::new(tar)
                    .finish()
                    .map_err(|e| ImageError::Unpack {
                        digest: blob_digest.clone(),
                        reason: format!("decompress: {e}"),
                    })?
                    .0
            }
        };
        let _layer_pin = self.pin([diff_id.clone()]);
        self.unpack_layer_blob(&blob_digest, media_type, &diff_id)?;

        let created = rfc3339(now_unix());
        let mut cmd: Option<Vec<String>> = None;
        let mut entrypoint: Option<Vec<String>> = None;
        let mut env: Vec<String> = Vec::new();
        let mut workdir: Option<String> = None;
        let mut user: Option<String> = None;
        let mut exposed = serde_json::Map::new();
        for c in changes {
            match c {
                ConfigChange::Cmd(v) => cmd = Some(v.clone()),
                ConfigChange::Entrypoint(v) => entrypoint = Some(v.clone()),
                ConfigChange::Env(kv) => {
                    let k = kv.split('=').next().unwrap_or_default();
                    env.retain(|e| e.split('=').next() != Some(k));
                    env.push(kv.clone());
                }
                ConfigChange::Workdir(w) => workdir = Some(w.clone()),
                ConfigChange::User(u) => user = Some(u.clone()),
                ConfigChange::Expose(ports) => {
                    for p in ports {
                        exposed.insert(p.clone(), serde_json::json!({}));
                    }
                }
            }
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        let mut exec = serde_json::Map::new();
        exec.insert("Env".into(), serde_json::json!(env));
        if let Some(v) = cmd {
            exec.insert("Cmd".into(), serde_json::json!(v));
        }
        if let Some(v) = entrypoint {
            exec.insert("Entrypoint".into(), serde_json::json!(v));
        }
        if let Some(v) = workdir {
            exec.insert("WorkingDir".into(), serde_json::json!(v));
        }
        if let Some(v) = user {
            exec.insert("User".into(), serde_json::json!(v));
        }
        if !exposed.is_empty() {
            exec.insert("ExposedPorts".into(), serde_json::Value::Object(exposed));
        }
        let source = tar_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let config = serde_json::json!({
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": exec,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": format!("flotilla-agent image import {source}")}],
        });
        let config = serde_json::to_vec(&config).map_err(|e| ImageError::InvalidContent {
            what: format!("generated config of {key}"),
            reason: e.to_string(),
        })?;
        let config_digest = digest::of_bytes(&config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": media_type, "digest": blob_digest, "size": blob_size}],
        });
        let manifest = serde_json::to_vec(&manifest).map_err(|e| ImageError::InvalidContent {
            what: format!("generated manifest of {key}"),
            reason: e.to_string(),
        })?;
        let manifest_digest = digest::of_bytes(&manifest);
        let _pins = self.pin([config_digest.clone(), manifest_digest.clone()]);
        self.inner
            .blobs
            .write_bytes(&config, Some(&config_digest), "image config")?;
        self.inner
            .blobs
            .write_bytes(&manifest, Some(&manifest_digest), "manifest")?;
        let record = ImageRecord {
            reference: key.clone(),
            manifest_digest,
            manifest_media_type: OCI_MANIFEST.to_string(),
            config_digest,
            layers: vec![LayerRecord {
                digest: blob_digest,
                media_type: media_type.to_string(),
                size: blob_size,
                diff_id,
            }],
            index_digest: None,
            created: Some(created),
            added: now_unix(),
        };
        self.put_record(record.clone())?;
        info!(reference = %key, source = %tar_path.display(), "rootfs imported");
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_in_both_spellings() {
        assert_eq!(
            ConfigChange::parse("CMD=/bin/sh -c true").expect("ok"),
            ConfigChange::Cmd(vec!["/bin/sh".into(), "-c".into(), "true".into()])
        );
        assert_eq!(
            ConfigChange::parse(r#"CMD ["/bin/echo", "a b"]"#).expect("ok"),
            ConfigChange::Cmd(vec!["/bin/echo".into(), "a b".into()])
        );
        assert_eq!(
            ConfigChange::parse("ENV=FOO=bar=baz").expect("ok"),
            ConfigChange::Env("FOO=bar=baz".into())
        );
        assert_eq!(
            ConfigChange::parse("env FOO=1").expect("ok"),
            ConfigChange::Env("FOO=1".into())
        );
        assert_eq!(
            ConfigChange::parse("WORKDIR=/srv").expect("ok"),
            ConfigChange::Workdir("/srv".into())
        );
        assert_eq!(
            ConfigChange::parse("USER=1000:1000").expect("ok"),
            ConfigChange::User("1000:1000".into())
        );
    }

    #[test]
    fn expose_lists_ports_with_their_protocol() {
        assert_eq!(
            ConfigChange::parse("EXPOSE 80 53/udp").expect("expose"),
            ConfigChange::Expose(vec!["80/tcp".into(), "53/udp".into()])
        );
    }

    #[test]
    fn bad_changes_are_refused_with_the_input() {
        for bad in [
            "CMD",
            "EXPOSE=http",
            "EXPOSE=80/sctp",
            "HEALTHCHECK=x",
            "WORKDIR=rel",
            "ENV=novalue",
            "CMD=[1,2]",
        ] {
            let err = ConfigChange::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
