//! `Volumes`: named volumes.

use std::sync::Arc;

use flotilla_proto::agent::v1 as pb;
use tonic::{Request, Response, Status};

use crate::engine::{Engine, EngineError};

pub struct VolumesService {
    engine: Arc<Engine>,
}

impl VolumesService {
    pub fn new(engine: Arc<Engine>) -> Self {
        VolumesService { engine }
    }
}

#[tonic::async_trait]
impl pb::volumes_server::Volumes for VolumesService {
    async fn create(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let r = req.into_inner();
        let v = self
            .engine
            .volumes
            .create(&r.name, r.labels.into_iter().collect(), false)?;
        self.engine
            .events
            .emit("volume", "create", &v.name, &v.name, &[]);
        Ok(Response::new(v))
    }

    async fn list(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let filters = req.into_inner().filters;
        let mut fs = Vec::new();
        for f in &filters {
            let (k, v) = f.split_once('=').ok_or_else(|| {
                Status::invalid_argument(format!("invalid filter {f:?}: use KEY=VALUE"))
            })?;
            if !matches!(k, "name" | "label" | "dangling") {
                return Err(Status::invalid_argument(format!(
                    "invalid filter {k:?}: use name, label or dangling"
                )));
            }
            fs.push((k.to_string(), v.to_string()));
        }
        let e = &self.engine;
        let volumes = e
            .volumes
            .list(|n| e.volume_users(n))
            .into_iter()
            .filter(|v| {
                fs.iter().all(|(k, val)| match k.as_str() {
                    "name" => v.name.contains(val.as_str()),
                    "dangling" => (val == "true" || val == "1") == v.used_by.is_empty(),
                    "label" => match val.split_once('=') {
                        Some((lk, lv)) => v.labels.get(lk).is_some_and(|x| x == lv),
                        None => v.labels.contains_key(val.as_str()),
                    },
                    _ => true,
                })
            })
            .collect();
        Ok(Response::new(pb::ListVolumesResponse { volumes }))
    }

    async fn inspect(&self, req: Request<pb::VolumeRef>) -> Result<Response<pb::Volume>, Status> {
        let name = req.into_inner().name;
        let users = self.engine.volume_users(&name);
        Ok(Response::new(self.engine.volumes.inspect(&name, users)?))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveVolumeRequest>,
    ) -> Result<Response<pb::RemoveVolumeResponse>, Status> {
        let r = req.into_inner();
        let users = self.engine.volume_users(&r.name);
        match self.engine.volumes.remove(&r.name, &users) {
            Ok(_) => {
                self.engine
                    .events
                    .emit("volume", "destroy", &r.name, &r.name, &[]);
                Ok(Response::new(pb::RemoveVolumeResponse { name: r.name }))
            }
            Err(EngineError {
                kind: crate::engine::Kind::NotFound,
                ..
            }) if r.force => Ok(Response::new(pb::RemoveVolumeResponse { name: r.name })),
            Err(e) => Err(e.into()),
        }
    }

    async fn prune(
        &self,
        _: Request<pb::PruneVolumesRequest>,
    ) -> Result<Response<pb::PruneVolumesResponse>, Status> {
        let e = &self.engine;
        let mut removed = Vec::new();
        let mut reclaimed = 0;
        for v in e.volumes.list(|n| e.volume_users(n)) {
            if v.used_by.is_empty() {
                if let Ok(n) = e.volumes.remove(&v.name, &[]) {
                    reclaimed += n;
                    e.events.emit("volume", "destroy", &v.name, &v.name, &[]);
                    removed.push(v.name);
                }
            }
        }
        Ok(Response::new(pb::PruneVolumesResponse {
            removed,
            reclaimed_bytes: reclaimed,
        }))
    }
}
