//! `NodeCA`: how nodes get and renew their certificates, and how a new manager enters the raft
//! group. The join token is the credential of `IssueNodeCertificate`; everything else needs a
//! node certificate of this cluster whose node still exists.

use std::sync::Arc;
use std::time::Duration;

use flotilla_pki::{match_join_token, peer_identity, PeerRole, Role, RootCa};
use flotilla_proto::control::v1::node_ca_server::NodeCa;
use flotilla_proto::control::v1::{
    self as pb, Cluster, Meta, Node, NodeAvailability, NodeSpec, NodeState, NodeStatus,
};
use tonic::{Request, Response, Status};
use tracing::info;

use super::{status_of, Ctx};
use crate::dispatcher::now_ms;
use crate::manager::random_id;
use crate::store::Batch;

/// Default validity of node certificates.
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

pub struct NodeCaService {
    pub ctx: Arc<Ctx>,
}

impl NodeCaService {
    fn cluster(&self) -> Result<Cluster, Status> {
        self.ctx
            .store
            .read()
            .cluster
            .clone()
            .ok_or_else(|| Status::unavailable("the cluster is still initializing: retry"))
    }

    fn root_ca(&self, c: &Cluster) -> Result<RootCa, Status> {
        RootCa::from_sealed(&c.root_ca_cert, &c.root_ca_key_sealed, &self.ctx.data_key)
            .map_err(|e| Status::internal(format!("cannot open the cluster CA key: {e}")))
    }

    fn expiry(c: &Cluster) -> Duration {
        let secs = c.spec.as_ref().map_or(0, |s| s.node_cert_expiry_secs);
        if secs == 0 {
            DEFAULT_CERT_EXPIRY
        } else {
            Duration::from_secs(secs)
        }
    }
}

#[tonic::async_trait]
impl NodeCa for NodeCaService {
    async fn get_root_ca_certificate(
        &self,
        _req: Request<pb::GetRootCaRequest>,
    ) -> Result<Response<pb::GetRootCaResponse>, Status> {
        let c = self.cluster()?;
        Ok(Response::new(pb::GetRootCaResponse {
            cert_pem: c.root_ca_cert,
        }))
    }

    async fn issue_node_certificate(
        &self,
        req: Request<pb::IssueNodeCertificateRequest>,
    ) -> Result<Response<pb::IssueNodeCertificateResponse>, Status> {
        let r = req.into_inner();
        self.ctx.barrier().await?;
        let c = self.cluster()?;
        let digest = flotilla_pki::pem_digest(&c.root_ca_cert)
            .map_err(|e| Status::internal(e.to_string()))?;
        let role = match_join_token(&r.token, &digest, &c.worker_token, &c.manager_token)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        let ca = self.root_ca(&c)?;
        let node_id = random_id();
        let issued = ca
            .issue(&r.csr_pem, &node_id, role, Self::expiry(&c))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = now_ms();
        let node = Node {
            id: node_id.clone(),
            meta: Some(Meta {
                version: 0,
                created_at: now,
                updated_at: now,
            }),
            spec: Some(NodeSpec {
                desired_role: role.to_proto() as i32,
                availability: NodeAvailability::Active as i32,
                labels: Default::default(),
            }),
            description: r.description,
            status: Some(NodeStatus {
                state: NodeState::Unknown as i32,
                message: "certificate issued, waiting for the node's session".into(),
                addr: String::new(),
                last_heartbeat: 0,
            }),
            manager_status: None,
            role: role.to_proto() as i32,
            cert_expires_at: issued.not_after_unix_ms,
            cert_serial: issued.serial_hex.clone(),
        };
        let mut b = Batch::new();
        b.create(node);
        self.ctx
            .proposer
            .propose(b.into_proto())
            .await
            .map_err(status_of)?;
        info!(node = %node_id, role = role.as_str(), "node joined");
        Ok(Response::new(pb::IssueNodeCertificateResponse {
            node_id,
            cert_pem: issued.cert_pem,
            ca_pem: c.root_ca_cert,
            role: role.to_proto() as i32,
            manager_addrs: self
                .ctx
                .membership
                .summary()
                .members
                .into_iter()
                .map(|m| m.1)
                .collect(),
        }))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<pb::RenewNodeCertificateRequest>,
    ) -> Result<Response<pb::RenewNodeCertificateResponse>, Status> {
        let id = peer_identity(&req)?;
        let role = match id.role {
            PeerRole::Worker => Role::Worker,
            PeerRole::Manager => Role::Manager,
            PeerRole::Admin => {
                return Err(Status::permission_denied(
                    "admin certificates are renewed with `flotilla-controller` on a manager",
                ))
            }
        };
        self.ctx.barrier().await?;
        let c = self.cluster()?;
        for _ in 0..3 {
            let Some(mut node) = self.ctx.store.read().nodes.get(&id.node_id).cloned() else {
                return Err(Status::permission_denied(format!(
                    "node {} was removed from the cluster: join it again with a token",
                    id.node_id
                )));
            };
            let issued = self
                .root_ca(&c)?
                .issue(&req.get_ref().csr_pem, &id.node_id, role, Self::expiry(&c))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            node.cert_expires_at = issued.not_after_unix_ms;
            node.cert_serial = issued.serial_hex.clone();
            if let Some(m) = node.meta.as_mut() {
                m.updated_at = now_ms();
            }
            let mut b = Batch::new();
            b.update(node);
            match self.ctx.proposer.propose(b.into_proto()).await {
                Ok(_) => {
                    return Ok(Response::new(pb::RenewNodeCertificateResponse {
                        cert_pem: issued.cert_pem,
                        role: role.to_proto() as i32,
                    }))
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(status_of(e)),
            }
        }
        Err(Status::aborted(
            "too many concurrent changes to the node: retry",
        ))
    }

    async fn join_manager(
        &self,
        req: Request<pb::JoinManagerRequest>,
    ) -> Result<Response<pb::JoinManagerResponse>, Status> {
        let id = peer_identity(&req)?;
        if id.role != PeerRole::Manager {
            return Err(Status::permission_denied(
                "only a manager certificate can join the raft group: join with a manager token",
            ));
        }
        let addr = req.into_inner().addr;
        if addr.is_empty() {
            return Err(Status::invalid_argument(
                "the joining manager gave no address",
            ));
        }
        self.ctx.barrier().await?;
        if !self.ctx.store.read().nodes.contains_key(&id.node_id) {
            return Err(Status::permission_denied(format!(
                "node {} was removed from the cluster",
                id.node_id
            )));
        }
        let summary = self.ctx.membership.summary();
        let raft_id = match summary.members.iter().find(|m| m.2 == id.node_id) {
            // A retry of a join that already went through.
            Some(m) => m.0,
            None => {
                let mut raft_id = 0;
                while raft_id == 0 || summary.members.iter().any(|m| m.0 == raft_id) {
                    raft_id = rand::random::<u64>() >> 1;
                }
                raft_id
            }
        };
        let members = self
            .ctx
            .membership
            .add_member(raft_id, addr.clone(), id.node_id.clone())
            .await
            .map_err(Status::unavailable)?;
        info!(node = %id.node_id, raft_id, %addr, "manager joined the raft group");
        Ok(Response::new(pb::JoinManagerResponse {
            raft_id,
            data_key: self.ctx.data_key.to_bytes().to_vec(),
            member_addrs: members,
        }))
    }
}
