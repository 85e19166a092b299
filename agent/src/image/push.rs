//! Push: a local image's blobs and manifest to the registry its reference names.
//!
//! Blobs the registry already has are skipped (HEAD first); the others stream from the blob
//! store in chunks, never whole in memory. The manifest goes last, byte for byte as stored, so
//! the pushed image keeps its digest.

use futures_util::stream::{self, StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use tokio_util::io::ReaderStream;
use tracing::info;

use super::error::{ImageError, Result};
use super::reference;
use super::remote::{client_for, ProgressFn, PushOptions, PushProgress};
use super::store::ImageStore;

impl ImageStore {
    /// Push the local image `input` to the registry of its reference (tag it first to push
    /// elsewhere). Returns the manifest digest.
    pub async fn push(
        &self,
        input: &str,
        opts: &PushOptions,
        progress: ProgressFn<'_, PushProgress>,
    ) -> Result<String> {
        self.push_inner(input, opts, progress)
            .await
            .map_err(|e| opts.credentials.explain(e))
    }

    async fn push_inner(
        &self,
        input: &str,
        opts: &PushOptions,
        progress: ProgressFn<'_, PushProgress>,
    ) -> Result<String> {
        let record = self.get(input)?;
        let target = reference::parse(&record.reference)?;
        let registry = target.resolve_registry().to_string();
        let key = target.whole();
        let err = |e: OciDistributionError| ImageError::from_remote(e, &registry, &key);
        let _pins = self.pin(record.blobs().map(str::to_string).collect::<Vec<_>>());

        let mut insecure = self.config().insecure_registries.clone();
        insecure.extend(opts.insecure_registries.iter().cloned());
        let client = client_for(&target, &insecure, self.config().max_concurrent_downloads);
        client
            .store_auth_if_needed(&registry, &opts.credentials.to_auth())
            .await;
        info!(reference = %key, registry = %registry, "pushing image");

        let mut blobs: Vec<(String, u64)> = record
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size))
            .collect();
        blobs.push((
            record.config_digest.clone(),
            self.inner.blobs.size(&record.config_digest)?,
        ));
        blobs.sort();
        blobs.dedup();

        let concurrency = self.config().max_concurrent_downloads.max(1);
        stream::iter(blobs)
            .map(|(digest, size)| {
                let client = &client;
                let target = &target;
                let err = &err;
                let key = &key;
                async move {
                    if client.blob_exists(target, &digest).await.map_err(err)? {
                        progress(PushProgress::BlobExists { digest });
                        return Ok::<_, ImageError>(());
                    }
                    let path = self.inner.blobs.path(&digest)?;
                    let file = tokio::fs::File::open(&path).await.map_err(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            ImageError::MissingBlob {
                                digest: digest.clone(),
                                what: format!("image {key}"),
                                path: path.clone(),
                            }
                        } else {
                            ImageError::io("open blob", &path, e)
                        }
                    })?;
                    let body = ReaderStream::with_capacity(file, 1024 * 1024)
                        .map_err(OciDistributionError::IoError);
                    client
                        .push_blob_stream(target, body, &digest, Some(size))
                        .await
                        .map_err(err)?;
                    progress(PushProgress::BlobPushed { digest, size });
                    Ok(())
                }
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;

        let manifest = self.inner.blobs.read(&record.manifest_digest, "manifest")?;
        let content_type = match record.manifest_media_type.parse() {
            Ok(v) => v,
            Err(_) => {
                return Err(ImageError::UnsupportedMediaType {
                    media_type: record.manifest_media_type.clone(),
                    what: format!("manifest of {key}"),
                })
            }
        };
        client
            .push_manifest_raw(&target, manifest, content_type)
            .await
            .map_err(err)?;
        progress(PushProgress::ManifestPushed {
            reference: key.clone(),
            digest: record.manifest_digest.clone(),
        });
        info!(reference = %key, manifest = %record.manifest_digest, "image pushed");
        Ok(record.manifest_digest)
    }
}
