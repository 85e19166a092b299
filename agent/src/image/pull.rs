//! Pull: registry -> blob store -> unpacked layers -> record.
//!
//! The manifest is fetched raw (with OCI and Docker types in `Accept`) so that its digest is the
//! registry's; an index picks linux/amd64. Blobs stream to ingest files while hashed, never whole
//! in memory; at most `max_concurrent_downloads` layers download at once. What is already in the
//! store (blob, unpacked layer) is skipped, so a re-pull only fetches the manifest. The record is
//! written last, after every blob and layer is complete.

use futures_util::stream::{self, StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use super::digest::{self, AsyncHashingWriter};
use super::error::{ImageError, Result};
use super::manifest::{self, Document, ACCEPTED_MANIFEST_TYPES};
use super::records::{ImageRecord, LayerRecord};
use super::reference;
use super::remote::{client_for, ProgressFn, PullOptions, PullProgress};
use super::store::{now_unix, ImageStore};

/// Progress is reported about this often while a blob downloads.
const PROGRESS_EVERY: u64 = 1024 * 1024;

/// Largest config blob accepted.
const MAX_CONFIG_SIZE: u64 = 16 * 1024 * 1024;

/// Where one operation talks to.
struct Remote<'a> {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    registry: String,
    key: String,
    progress: ProgressFn<'a, PullProgress>,
}

/// The platform manifest a reference resolved to.
struct Resolved {
    /// The manifest as the registry sent it.
    bytes: Vec<u8>,
    /// Its digest.
    digest: String,
    /// Its media type.
    media_type: String,
    /// Parsed.
    manifest: Box<oci_spec::image::ImageManifest>,
    /// The index it was picked from, if any.
    index_digest: Option<String>,
}

impl Remote<'_> {
    fn err(&self, e: OciDistributionError) -> ImageError {
        ImageError::from_remote(e, &self.registry, &self.key)
    }
}

impl ImageStore {
    /// Pull `input` (any docker-style reference) from its registry into the store.
    pub async fn pull(
        &self,
        input: &str,
        opts: &PullOptions,
        progress: ProgressFn<'_, PullProgress>,
    ) -> Result<ImageRecord> {
        self.pull_inner(input, opts, progress)
            .await
            .map_err(|e| opts.credentials.explain(e))
    }

    async fn pull_inner(
        &self,
        input: &str,
        opts: &PullOptions,
        progress: ProgressFn<'_, PullProgress>,
    ) -> Result<ImageRecord> {
        let reference = reference::parse(input)?;
        let key = reference.whole();
        let mut insecure = self.config().insecure_registries.clone();
        insecure.extend(opts.insecure_registries.iter().cloned());
        let remote = Remote {
            client: client_for(
                &reference,
                &insecure,
                self.config().max_concurrent_downloads,
            ),
            registry: reference.resolve_registry().to_string(),
            auth: opts.credentials.to_auth(),
            reference,
            key,
            progress,
        };
        info!(reference = %remote.key, registry = %remote.registry, "pulling image");

        let Resolved {
            bytes: manifest_bytes,
            digest: manifest_digest,
            media_type,
            manifest: image_manifest,
            index_digest,
        } = self.resolve_manifest(&remote).await?;
        let layers_desc = image_manifest.layers();
        let config_digest = image_manifest.config().digest().to_string();
        let total: u64 = layers_desc.iter().map(|l| l.size()).sum();
        (remote.progress)(PullProgress::Resolved {
            reference: remote.key.clone(),
            manifest_digest: manifest_digest.clone(),
            layers: layers_desc.len(),
            total_bytes: total,
        });

        // Pin everything this pull will need before looking at the disk.
        let mut keys = vec![manifest_digest.clone(), config_digest.clone()];
        keys.extend(layers_desc.iter().map(|l| l.digest().to_string()));
        let _pins = self.pin(keys);

        // Config.
        if !self.inner.blobs.contains(&config_digest)? {
            let size = image_manifest.config().size();
            if size > MAX_CONFIG_SIZE {
                return Err(ImageError::InvalidContent {
                    what: format!("config of {}", remote.key),
                    reason: format!("{size} bytes is larger than the {MAX_CONFIG_SIZE} allowed"),
                });
            }
            self.download_blob(&remote, &config_digest, size, "image config", false)
                .await?;
        }
        let config_data = self.inner.blobs.read(&config_digest, "image config")?;
        let config = manifest::parse_config(&config_data, layers_desc.len(), &remote.key)?;
        let layers: Vec<LayerRecord> = layers_desc
            .iter()
            .zip(config.rootfs().diff_ids())
            .map(|(l, diff_id)| LayerRecord {
                digest: l.digest().to_string(),
                media_type: l.media_type().to_string(),
                size: l.size(),
                diff_id: diff_id.clone(),
            })
            .collect();
        let _layer_pins = self.pin(layers.iter().map(|l| l.diff_id.clone()));

        // Layers, concurrently.
        let concurrency = self.config().max_concurrent_downloads.max(1);
        // Owned items: a closure over borrowed ones makes the future not provably `Send`.
        let remote_ref = &remote;
        let downloaded: Vec<u64> = stream::iter(layers.iter().cloned())
            .map(|l| async move { self.ensure_layer(remote_ref, &l).await })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        let downloaded_bytes: u64 = downloaded.iter().sum();

        // Manifest last, then the record.
        self.inner
            .blobs
            .write_bytes(&manifest_bytes, Some(&manifest_digest), "manifest")?;
        let record = ImageRecord {
            reference: remote.key.clone(),
            manifest_digest: manifest_digest.clone(),
            manifest_media_type: media_type,
            config_digest,
            layers,
            index_digest,
            created: config.created().clone(),
            added: now_unix(),
        };
        let unchanged = self.get(&remote.key).ok().is_some_and(|old| {
            ImageRecord {
                added: old.added,
                ..record.clone()
            } == old
        });
        let record = if unchanged {
            debug!(reference = %remote.key, "image already up to date");
            self.get(&remote.key)?
        } else {
            self.put_record(record.clone())?;
            record
        };
        (remote.progress)(PullProgress::Done {
            reference: remote.key.clone(),
            manifest_digest,
            downloaded_bytes,
        });
        info!(reference = %remote.key, manifest = %record.manifest_digest, downloaded_bytes, "image pulled");
        Ok(record)
    }

    /// Fetch the manifest (through an index if needed).
    async fn resolve_manifest(&self, remote: &Remote<'_>) -> Result<Resolved> {
        let (data, _) = remote
            .client
            .pull_manifest_raw(&remote.reference, &remote.auth, ACCEPTED_MANIFEST_TYPES)
            .await
            .map_err(|e| remote.err(e))?;
        let top_digest = digest::of_bytes(&data);
        if let Some(expected) = remote.reference.digest() {
            if expected != top_digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest of {}", remote.key),
                    expected: expected.to_string(),
                    actual: top_digest,
                });
            }
        }
        match manifest::parse_document(&data, &remote.key)? {
            Document::Manifest(m, mt) => Ok(Resolved {
                bytes: data.to_vec(),
                digest: top_digest,
                media_type: mt,
                manifest: m,
                index_digest: None,
            }),
            Document::Index(index, _) => {
                let entry = manifest::select_linux_amd64(&index, &remote.key)?;
                let child_digest = entry.digest().to_string();
                debug!(index = %top_digest, manifest = %child_digest, "index resolved to linux/amd64");
                let child = remote.reference.clone_with_digest(child_digest.clone());
                let (child_data, _) = remote
                    .client
                    .pull_manifest_raw(&child, &remote.auth, ACCEPTED_MANIFEST_TYPES)
                    .await
                    .map_err(|e| remote.err(e))?;
                let actual = digest::of_bytes(&child_data);
                if actual != child_digest {
                    return Err(ImageError::DigestMismatch {
                        what: format!("linux/amd64 manifest of {}", remote.key),
                        expected: child_digest,
                        actual,
                    });
                }
                match manifest::parse_document(&child_data, &child_digest)? {
                    Document::Manifest(m, mt) => Ok(Resolved {
                        bytes: child_data.to_vec(),
                        digest: child_digest,
                        media_type: mt,
                        manifest: m,
                        index_digest: Some(top_digest),
                    }),
                    Document::Index(..) => Err(ImageError::InvalidContent {
                        what: format!("index of {}", remote.key),
                        reason: format!("entry {child_digest} is another index"),
                    }),
                }
            }
        }
    }

    /// Make one layer present (blob and unpacked dir); returns the bytes downloaded.
    async fn ensure_layer(&self, remote: &Remote<'_>, layer: &LayerRecord) -> Result<u64> {
        let have_blob = self.inner.blobs.contains(&layer.digest)?;
        let have_layer = self.inner.layers.contains(&layer.diff_id)?;
        if have_blob && have_layer {
            (remote.progress)(PullProgress::LayerAlreadyPresent {
                digest: layer.digest.clone(),
                size: layer.size,
            });
            return Ok(0);
        }
        let mut downloaded = 0;
        if !have_blob {
            (remote.progress)(PullProgress::LayerStarted {
                digest: layer.digest.clone(),
                size: layer.size,
            });
            downloaded = self
                .download_blob(remote, &layer.digest, layer.size, "layer", true)
                .await?;
            (remote.progress)(PullProgress::LayerDownloaded {
                digest: layer.digest.clone(),
            });
        }
        if !have_layer {
            let store = self.clone();
            let l = layer.clone();
            tokio::task::spawn_blocking(move || {
                store.unpack_layer_blob(&l.digest, &l.media_type, &l.diff_id)
            })
            .await
            .map_err(|e| ImageError::Unpack {
                digest: layer.digest.clone(),
                reason: format!("unpack task failed: {e}"),
            })??;
        }
        (remote.progress)(PullProgress::LayerDone {
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
        });
        Ok(downloaded)
    }

    /// Stream one blob into the store, verifying digest and size.
    async fn download_blob(
        &self,
        remote: &Remote<'_>,
        blob_digest: &str,
        size: u64,
        what: &str,
        report: bool,
    ) -> Result<u64> {
        let what = format!("{what} {blob_digest} of {}", remote.key);
        let temp = self.inner.blobs.ingest_file()?;
        let file = temp
            .as_file()
            .try_clone()
            .map_err(|e| ImageError::io("open ingest file", temp.path(), e))?;
        let file =
            tokio::io::BufWriter::with_capacity(1024 * 1024, tokio::fs::File::from_std(file));
        let progress = remote.progress;
        let digest_owned = blob_digest.to_string();
        let on_bytes: Box<dyn FnMut(u64) + Send + '_> = if report {
            Box::new(move |n| {
                progress(PullProgress::LayerBytes {
                    digest: digest_owned.clone(),
                    downloaded: n,
                    size,
                })
            })
        } else {
            Box::new(|_| {})
        };
        let mut writer = AsyncHashingWriter::new(file, Some(size), PROGRESS_EVERY, on_bytes);
        let res = remote
            .client
            .pull_blob(&remote.reference, blob_digest, &mut writer)
            .await;
        if let Err(e) = res {
            return Err(match e {
                OciDistributionError::IoError(io)
                    if io.kind() == std::io::ErrorKind::InvalidData =>
                {
                    ImageError::SizeMismatch {
                        what,
                        expected: size,
                        actual: "more".to_string(),
                    }
                }
                OciDistributionError::IoError(io) => ImageError::io("write blob", temp.path(), io),
                OciDistributionError::DigestError(
                    oci_client::errors::DigestError::VerificationError { expected, actual },
                ) => ImageError::DigestMismatch {
                    what,
                    expected,
                    actual,
                },
                other => remote.err(other),
            });
        }
        writer
            .flush()
            .await
            .map_err(|e| ImageError::io("write blob", temp.path(), e))?;
        let (file, hasher) = writer.into_parts();
        drop(file);
        let n = hasher.len();
        let blobs = self.inner.blobs.clone();
        let expected = blob_digest.to_string();
        tokio::task::spawn_blocking(move || {
            blobs.commit(temp, hasher, Some(&expected), Some(size), &what)
        })
        .await
        .map_err(|e| ImageError::Unpack {
            digest: blob_digest.to_string(),
            reason: format!("commit task failed: {e}"),
        })??;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{PushOptions, PushProgress};

    /// The daemon spawns pulls and pushes on a multi-threaded runtime: their futures must be Send.
    #[allow(dead_code)]
    fn futures_are_send(store: &ImageStore, pull: &PullOptions, push: &PushOptions) {
        fn is_send<T: Send>(_: &T) {}
        let report = |_: PullProgress| {};
        is_send(&store.pull("x", pull, &report));
        let report = |_: PushProgress| {};
        is_send(&store.push("x", push, &report));
    }

    #[test]
    fn store_is_shareable() {
        fn is_send_sync<T: Send + Sync + Clone + 'static>() {}
        is_send_sync::<ImageStore>();
    }
}
