//! `Images`: the image store over gRPC. Archives (save/load/import) are spooled through a temp
//! file under the state dir, which is removed whatever happens.

use std::io::{Read, Write};
use std::sync::Arc;

use flotilla_proto::agent::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{stream_of, BoxStream};
use crate::engine::{Engine, EngineError};
use crate::image::{
    ConfigChange, Credentials, ImageRecord, PullOptions, PullProgress, PushOptions, PushProgress,
};

pub struct ImagesService {
    engine: Arc<Engine>,
}

impl ImagesService {
    pub fn new(engine: Arc<Engine>) -> Self {
        ImagesService { engine }
    }

    fn summary(&self, r: &ImageRecord) -> pb::ImageSummary {
        summary(&self.engine, r)
    }

    fn spool(&self) -> Result<tempfile::NamedTempFile, Status> {
        let dir = self.engine.cfg.state_dir.join("tmp");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
        tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| Status::internal(format!("create a temp file in {}: {e}", dir.display())))
    }
}

fn credentials(a: Option<pb::RegistryAuth>) -> Credentials {
    match a {
        Some(a) if !a.username.is_empty() => Credentials::Basic {
            username: a.username,
            password: a.password,
        },
        _ => Credentials::Anonymous,
    }
}

/// The API's view of an image record (`containers`: how many containers use it).
fn summary(engine: &Engine, r: &ImageRecord) -> pb::ImageSummary {
    pb::ImageSummary {
        id: r.config_digest.clone(),
        reference: r.reference.clone(),
        manifest_digest: r.manifest_digest.clone(),
        size: r.layers.iter().map(|l| l.size).sum(),
        created: r.created.clone().unwrap_or_default(),
        containers: engine.image_users(&r.config_digest).len() as u32,
    }
}

/// The registry of `reference` when the request marks it insecure (plain http).
fn insecure_for(insecure: bool, reference: &str) -> Vec<String> {
    if insecure {
        registry_of(reference)
    } else {
        Vec::new()
    }
}

fn registry_of(reference: &str) -> Vec<String> {
    crate::image::reference::parse(reference)
        .map(|r| vec![r.registry().to_string()])
        .unwrap_or_default()
}

async fn receive_to(
    file: &mut std::fs::File,
    mut stream: impl tokio_stream::Stream<Item = Result<Vec<u8>, Status>> + Unpin,
) -> Result<u64, Status> {
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        file.write_all(&chunk).map_err(|e| {
            let kind = if e.raw_os_error() == Some(libc::ENOSPC) {
                tonic::Code::ResourceExhausted
            } else {
                tonic::Code::Internal
            };
            Status::new(kind, format!("spool the upload: {e}"))
        })?;
    }
    file.flush().map_err(|e| Status::internal(e.to_string()))?;
    Ok(n)
}

#[tonic::async_trait]
impl pb::images_server::Images for ImagesService {
    type PullStream = BoxStream<pb::PullImageProgress>;

    async fn pull(
        &self,
        req: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let r = req.into_inner();
        let (tx, out) = tokio::sync::mpsc::channel(64);
        let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<PullProgress>();
        let engine = self.engine.clone();
        let opts = PullOptions {
            credentials: credentials(r.auth),
            insecure_registries: insecure_for(r.insecure, &r.reference),
        };
        let reference = r.reference.clone();
        let pull = tokio::spawn(async move {
            let cb = move |p: PullProgress| {
                let _ = ptx.send(p);
            };
            engine.images.pull(&reference, &opts, &cb).await
        });
        let engine = self.engine.clone();
        tokio::spawn(async move {
            use pb::pull_image_progress::Event;
            while let Some(p) = prx.recv().await {
                let ev = match p {
                    PullProgress::Resolved {
                        reference,
                        manifest_digest,
                        layers,
                        total_bytes,
                    } => Event::Resolved(pb::PullResolved {
                        reference,
                        manifest_digest,
                        layers: layers as u32,
                        total_bytes,
                    }),
                    PullProgress::LayerAlreadyPresent { digest, size } => {
                        Event::Layer(pb::LayerProgress {
                            digest,
                            status: "exists".into(),
                            current: size,
                            total: size,
                        })
                    }
                    PullProgress::LayerStarted { digest, size } => {
                        Event::Layer(pb::LayerProgress {
                            digest,
                            status: "downloading".into(),
                            current: 0,
                            total: size,
                        })
                    }
                    PullProgress::LayerBytes {
                        digest,
                        downloaded,
                        size,
                    } => Event::Layer(pb::LayerProgress {
                        digest,
                        status: "downloading".into(),
                        current: downloaded,
                        total: size,
                    }),
                    PullProgress::LayerDownloaded { digest } => Event::Layer(pb::LayerProgress {
                        digest,
                        status: "unpacking".into(),
                        current: 0,
                        total: 0,
                    }),
                    PullProgress::LayerDone { digest, .. } => Event::Layer(pb::LayerProgress {
                        digest,
                        status: "done".into(),
                        current: 0,
                        total: 0,
                    }),
                    PullProgress::Done { .. } => continue,
                };
                let _ = tx.send(Ok(pb::PullImageProgress { event: Some(ev) })).await;
            }
            let result = match pull.await {
                Ok(Ok(rec)) => {
                    engine
                        .events
                        .emit("image", "pull", &rec.config_digest, &rec.reference, &[]);
                    let s = summary(&engine, &rec);
                    Ok(pb::PullImageProgress {
                        event: Some(Event::Done(s)),
                    })
                }
                Ok(Err(e)) => Err(super::status(EngineError::from(e))),
                Err(e) => Err(Status::internal(format!("pull task failed: {e}"))),
            };
            let _ = tx.send(result).await;
        });
        Ok(Response::new(stream_of(out)))
    }

    type PushStream = BoxStream<pb::PushImageProgress>;

    async fn push(
        &self,
        req: Request<pb::PushImageRequest>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let r = req.into_inner();
        let (tx, out) = tokio::sync::mpsc::channel(64);
        let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<PushProgress>();
        let engine = self.engine.clone();
        let opts = PushOptions {
            credentials: credentials(r.auth),
            insecure_registries: insecure_for(r.insecure, &r.reference),
        };
        let reference = r.reference.clone();
        let push = tokio::spawn(async move {
            let cb = move |p: PushProgress| {
                let _ = ptx.send(p);
            };
            engine.images.push(&reference, &opts, &cb).await
        });
        tokio::spawn(async move {
            use pb::push_image_progress::Event;
            let mut done = None;
            while let Some(p) = prx.recv().await {
                let ev = match p {
                    PushProgress::BlobExists { digest } => Event::Layer(pb::LayerProgress {
                        digest,
                        status: "exists".into(),
                        current: 0,
                        total: 0,
                    }),
                    PushProgress::BlobPushed { digest, size } => Event::Layer(pb::LayerProgress {
                        digest,
                        status: "pushed".into(),
                        current: size,
                        total: size,
                    }),
                    PushProgress::ManifestPushed { reference, digest } => {
                        done = Some(pb::PushDone { reference, digest });
                        continue;
                    }
                };
                let _ = tx.send(Ok(pb::PushImageProgress { event: Some(ev) })).await;
            }
            let result = match push.await {
                Ok(Ok(_)) => Ok(pb::PushImageProgress {
                    event: Some(Event::Done(done.unwrap_or_default())),
                }),
                Ok(Err(e)) => Err(super::status(EngineError::from(e))),
                Err(e) => Err(Status::internal(format!("push task failed: {e}"))),
            };
            let _ = tx.send(result).await;
        });
        Ok(Response::new(stream_of(out)))
    }

    async fn list(
        &self,
        _: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let mut images: Vec<pb::ImageSummary> = self
            .engine
            .images
            .list()
            .iter()
            .map(|r| self.summary(r))
            .collect();
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    async fn inspect(
        &self,
        req: Request<pb::InspectImageRequest>,
    ) -> Result<Response<pb::ImageDetails>, Status> {
        let r = req.into_inner();
        let i = self
            .engine
            .images
            .inspect(&r.reference)
            .map_err(|e| self.engine.image_error(e))?;
        let exposed = i.config["config"]["ExposedPorts"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        Ok(Response::new(pb::ImageDetails {
            summary: Some(self.summary(&i.record)),
            config_json: i.config.to_string(),
            layers: i.record.layers.iter().map(|l| l.diff_id.clone()).collect(),
            exposed_ports: exposed,
        }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let r = req.into_inner();
        let rec = self
            .engine
            .images
            .get(&r.reference)
            .map_err(|e| self.engine.image_error(e))?;
        let users = self.engine.image_users(&rec.config_digest);
        if !users.is_empty() && !r.force {
            return Err(Status::failed_precondition(format!(
                "image {} is used by container(s) {}: remove them first, or use -f (their root filesystems stay until they go)",
                rec.reference,
                users.join(", ")
            )));
        }
        let rep = self
            .engine
            .images
            .remove(&r.reference)
            .map_err(|e| self.engine.image_error(e))?;
        self.engine
            .events
            .emit("image", "delete", &rec.config_digest, &rec.reference, &[]);
        let mut deleted = rep.deleted_blobs;
        deleted.extend(rep.deleted_layers);
        Ok(Response::new(pb::RemoveImageResponse {
            untagged: vec![rep.untagged],
            deleted,
        }))
    }

    async fn tag(
        &self,
        req: Request<pb::TagImageRequest>,
    ) -> Result<Response<pb::ImageSummary>, Status> {
        let r = req.into_inner();
        let rec = self
            .engine
            .images
            .tag(&r.source, &r.target)
            .map_err(|e| self.engine.image_error(e))?;
        self.engine
            .events
            .emit("image", "tag", &rec.config_digest, &rec.reference, &[]);
        Ok(Response::new(self.summary(&rec)))
    }

    type SaveStream = BoxStream<pb::DataChunk>;

    async fn save(
        &self,
        req: Request<pb::SaveImageRequest>,
    ) -> Result<Response<Self::SaveStream>, Status> {
        let refs = req.into_inner().references;
        if refs.is_empty() {
            return Err(Status::invalid_argument("save needs at least one image"));
        }
        let spool = self.spool()?;
        let path = spool.path().to_path_buf();
        let images = self.engine.images.clone();
        let p2 = path.clone();
        tokio::task::spawn_blocking(move || {
            let r: Vec<&str> = refs.iter().map(String::as_str).collect();
            images.save(&r, &p2)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| self.engine.image_error(e))?;
        let (tx, out) = tokio::sync::mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            let spool = spool;
            let mut f = match std::fs::File::open(spool.path()) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(format!(
                        "open {}: {e}",
                        path.display()
                    ))));
                    return;
                }
            };
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx
                            .blocking_send(Ok(pb::DataChunk {
                                data: buf[..n].to_vec(),
                            }))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .blocking_send(Err(Status::internal(format!("read the archive: {e}"))));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream_of(out)))
    }

    async fn load(
        &self,
        req: Request<Streaming<pb::DataChunk>>,
    ) -> Result<Response<pb::LoadImageResponse>, Status> {
        let mut spool = self.spool()?;
        let stream = req.into_inner().map(|c| c.map(|c| c.data));
        receive_to(spool.as_file_mut(), stream).await?;
        let images = self.engine.images.clone();
        let path = spool.path().to_path_buf();
        let recs = tokio::task::spawn_blocking(move || images.load(&path, None))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| self.engine.image_error(e))?;
        drop(spool);
        for r in &recs {
            self.engine
                .events
                .emit("image", "load", &r.config_digest, &r.reference, &[]);
        }
        Ok(Response::new(pb::LoadImageResponse {
            images: recs.iter().map(|r| self.summary(r)).collect(),
        }))
    }

    async fn import(
        &self,
        req: Request<Streaming<pb::ImportImageRequest>>,
    ) -> Result<Response<pb::ImageSummary>, Status> {
        use pb::import_image_request::Part;
        let mut stream = req.into_inner();
        let header = match stream.next().await {
            Some(Ok(pb::ImportImageRequest {
                part: Some(Part::Header(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "import: the first message must be the header",
                ))
            }
        };
        let changes: Vec<ConfigChange> = header
            .changes
            .iter()
            .map(|c| ConfigChange::parse(c))
            .collect::<Result<_, _>>()
            .map_err(|e| self.engine.image_error(e))?;
        let mut spool = self.spool()?;
        let data = stream.map(|m| match m {
            Ok(pb::ImportImageRequest {
                part: Some(Part::Data(d)),
            }) => Ok(d),
            Ok(_) => Err(Status::invalid_argument(
                "import: only data may follow the header",
            )),
            Err(e) => Err(e),
        });
        receive_to(spool.as_file_mut(), Box::pin(data)).await?;
        let images = self.engine.images.clone();
        let path = spool.path().to_path_buf();
        let name = header.reference.clone();
        let rec = tokio::task::spawn_blocking(move || images.import(&path, &name, &changes))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| self.engine.image_error(e))?;
        drop(spool);
        self.engine
            .events
            .emit("image", "import", &rec.config_digest, &rec.reference, &[]);
        Ok(Response::new(self.summary(&rec)))
    }
}
