//! `Networks`: bridge networks and container endpoints.

use std::sync::Arc;

use flotilla_proto::agent::v1 as pb;
use tonic::{Request, Response, Status};

use crate::engine::net::network_pb;
use crate::engine::{Engine, EngineError};
use crate::network::CreateNetwork;

pub struct NetworksService {
    engine: Arc<Engine>,
}

impl NetworksService {
    pub fn new(engine: Arc<Engine>) -> Self {
        NetworksService { engine }
    }
}

#[tonic::async_trait]
impl pb::networks_server::Networks for NetworksService {
    async fn create(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let r = req.into_inner();
        let opt = |s: String| if s.is_empty() { None } else { Some(s) };
        let n = self
            .engine
            .net
            .create_network(CreateNetwork {
                name: r.name,
                driver: r.driver,
                subnet: opt(r.subnet),
                gateway: opt(r.gateway),
                internal: r.internal,
                labels: r.labels.into_iter().collect(),
            })
            .await
            .map_err(EngineError::from)?;
        self.engine
            .events
            .emit("network", "create", &n.id, &n.name, &[]);
        Ok(Response::new(network_pb(&n)))
    }

    async fn list(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let mut fs = Vec::new();
        for f in &req.into_inner().filters {
            let (k, v) = f.split_once('=').ok_or_else(|| {
                Status::invalid_argument(format!("invalid filter {f:?}: use KEY=VALUE"))
            })?;
            if !matches!(k, "name" | "id" | "driver" | "label") {
                return Err(Status::invalid_argument(format!(
                    "invalid filter {k:?}: use name, id, driver or label"
                )));
            }
            fs.push((k.to_string(), v.to_string()));
        }
        let networks = self
            .engine
            .net
            .list()
            .iter()
            .map(network_pb)
            .filter(|n| {
                fs.iter().all(|(k, v)| match k.as_str() {
                    "name" => n.name.contains(v.as_str()),
                    "id" => n.id.starts_with(v.as_str()),
                    "driver" => n.driver == *v,
                    "label" => match v.split_once('=') {
                        Some((lk, lv)) => n.labels.get(lk).is_some_and(|x| x == lv),
                        None => n.labels.contains_key(v.as_str()),
                    },
                    _ => true,
                })
            })
            .collect();
        Ok(Response::new(pb::ListNetworksResponse { networks }))
    }

    async fn inspect(&self, req: Request<pb::NetworkRef>) -> Result<Response<pb::Network>, Status> {
        let n = self
            .engine
            .net
            .inspect(&req.into_inner().network)
            .map_err(EngineError::from)?;
        Ok(Response::new(network_pb(&n)))
    }

    async fn remove(
        &self,
        req: Request<pb::NetworkRef>,
    ) -> Result<Response<pb::RemoveNetworkResponse>, Status> {
        let name = req.into_inner().network;
        let n = self.engine.net.inspect(&name).map_err(EngineError::from)?;
        self.engine
            .net
            .remove_network(&name)
            .await
            .map_err(EngineError::from)?;
        self.engine
            .events
            .emit("network", "destroy", &n.id, &n.name, &[]);
        Ok(Response::new(pb::RemoveNetworkResponse { id: n.id }))
    }

    async fn connect_container(
        &self,
        req: Request<pb::ConnectNetworkRequest>,
    ) -> Result<Response<pb::EndpointInfo>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.engine.connect(r).await?))
    }

    async fn disconnect_container(
        &self,
        req: Request<pb::DisconnectNetworkRequest>,
    ) -> Result<Response<pb::DisconnectNetworkResponse>, Status> {
        let r = req.into_inner();
        self.engine
            .disconnect(&r.network, &r.container, r.force)
            .await?;
        Ok(Response::new(pb::DisconnectNetworkResponse {}))
    }
}
