//! `NodeCA`: how nodes get and renew their certificates, and how a new manager enters the raft
//! group. The join token is the credential of `IssueNodeCertificate`; everything else needs a
//! node certificate of this cluster whose node still exists.

use std::sync::Arc;
use std::time::Duration;

use flotilla_pki::{match_join_token, peer_identity, PeerRole, Role, RootCa};
use flotilla_proto::control::v1::node_ca_server::NodeCa;
use flotilla_proto::control::v1::{
    self as pb, Cluster, Meta, Node, NodeAvailability, NodeRole, NodeSpec, NodeState, NodeStatus,
};
use tonic::{Request, Response, Status};
use tracing::info;

use super::{status_of, Ctx};
use crate::dispatcher::now_ms;
use crate::manager::random_id;
use crate::store::Batch;

/// The status message of a node that left the cluster (`cluster leave`): it gets no new
/// certificate, so it stays out until it joins again with a token.
pub const LEFT_MESSAGE: &str = "left the cluster (remove it with `flotilla node rm`)";

/// Default validity of node certificates.
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

/// The validity of node certificates the cluster issues (`ClusterSpec.node_cert_expiry_secs`,
/// [`DEFAULT_CERT_EXPIRY`] when unset). Agents renew through `RenewNodeCertificate`, managers
/// locally (`manager::renew`); both use this.
pub fn cert_expiry(c: &Cluster) -> Duration {
    let secs = c.spec.as_ref().map_or(0, |s| s.node_cert_expiry_secs);
    if secs == 0 {
        DEFAULT_CERT_EXPIRY
    } else {
        Duration::from_secs(secs)
    }
}

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
        cert_expiry(c)
    }
}

#[tonic::async_trait]
impl NodeCa for NodeCaService {
    async fn get_root_ca_certificate(
        &self,
        _req: Request<pb::GetRootCaRequest>,
    ) -> Result<Response<pb::GetRootCaResponse>, Status> {
        // A manager that just joined may not have applied the cluster object yet: catch up
        // before answering "initializing" (only then: the call is anonymous).
        let c = match self.cluster() {
            Ok(c) => c,
            Err(_) => {
                self.ctx.barrier().await?;
                self.cluster()?
            }
        };
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
        let worker = super::join_token(&c, Role::Worker, &self.ctx.data_key)?;
        let manager = super::join_token(&c, Role::Manager, &self.ctx.data_key)?;
        let role = match_join_token(&r.token, &digest, &worker, &manager)
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
        if id.role == PeerRole::Admin {
            return Err(Status::permission_denied(
                "admin certificates are renewed with `flotilla-controller` on a manager",
            ));
        }
        self.ctx.barrier().await?;
        let c = self.cluster()?;
        for _ in 0..3 {
            let Some(mut node) = self.ctx.store.read().nodes.get(&id.node_id).cloned() else {
                return Err(Status::permission_denied(format!(
                    "node {} was removed from the cluster: join it again with a token",
                    id.node_id
                )));
            };
            if node
                .status
                .as_ref()
                .is_some_and(|st| st.message == LEFT_MESSAGE)
            {
                return Err(Status::permission_denied(format!(
                    "node {} left the cluster: join it again with a token",
                    id.node_id
                )));
            }
            // The role the cluster gives the node now: promote/demote change it, and the
            // node's next certificate follows.
            let role = if node.role == NodeRole::Manager as i32 {
                Role::Manager
            } else {
                Role::Worker
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
        match self.ctx.store.read().nodes.get(&id.node_id) {
            None => {
                return Err(Status::permission_denied(format!(
                    "node {} was removed from the cluster",
                    id.node_id
                )))
            }
            Some(n)
                if n.role != NodeRole::Manager as i32
                    || n.spec.as_ref().map(|s| s.desired_role) == Some(NodeRole::Worker as i32) =>
            {
                return Err(Status::permission_denied(format!(
                    "node {} is not a manager (demoted): promote it again first",
                    id.node_id
                )))
            }
            Some(_) => {}
        }
        let summary = self.ctx.membership.summary();
        let raft_id = match summary.members.iter().find(|m| m.2 == id.node_id) {
            // A retry of a join that went through but never started (still a learner).
            Some(m) if summary.learners.contains(&m.0) => m.0,
            // A voter with that node id: its log and votes live on, a fresh state under the
            // same raft id could vote against what it promised.
            Some(m) => {
                return Err(Status::failed_precondition(format!(
                    "node {} is already a voting raft member (raft id {} at {}): demote it first (`flotilla node demote {}`), then promote it again",
                    id.node_id, m.0, m.1, id.node_id
                )))
            }
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

    async fn leave_cluster(
        &self,
        req: Request<pb::LeaveClusterRequest>,
    ) -> Result<Response<pb::LeaveClusterResponse>, Status> {
        let id = peer_identity(&req)?;
        if id.role == PeerRole::Admin {
            return Err(Status::permission_denied(
                "an admin certificate has no node to leave with",
            ));
        }
        let force = req.get_ref().force;
        self.ctx.barrier().await?;
        for _ in 0..3 {
            let Some(mut node) = self.ctx.store.read().nodes.get(&id.node_id).cloned() else {
                return Err(Status::not_found(format!(
                    "node {} is not part of the cluster (removed already)",
                    id.node_id
                )));
            };
            let was_manager = node.role == NodeRole::Manager as i32
                || node.spec.as_ref().map(|s| s.desired_role) == Some(NodeRole::Manager as i32);
            if was_manager {
                crate::manager::roles::demotion_check(&self.ctx.membership.summary(), &node.id)
                    .map_err(|e| {
                        Status::failed_precondition(if force {
                            format!("{e}: not even --force can leave the remaining managers without a quorum")
                        } else {
                            e
                        })
                    })?;
                if !force {
                    return Err(Status::failed_precondition(format!(
                        "node {} is a manager: demote it first (`flotilla node demote {}`), or leave with --force",
                        node.id, node.id
                    )));
                }
            }
            let spec = node.spec.get_or_insert_with(Default::default);
            spec.desired_role = NodeRole::Worker as i32;
            node.status = Some(NodeStatus {
                state: NodeState::Down as i32,
                message: LEFT_MESSAGE.into(),
                addr: node
                    .status
                    .as_ref()
                    .map(|s| s.addr.clone())
                    .unwrap_or_default(),
                last_heartbeat: node.status.as_ref().map_or(0, |s| s.last_heartbeat),
            });
            if let Some(m) = node.meta.as_mut() {
                m.updated_at = now_ms();
            }
            let mut b = Batch::new();
            b.update(node);
            match self.ctx.proposer.propose(b.into_proto()).await {
                Ok(_) => {
                    // A manager leaves the raft group before it is answered: its agent stops
                    // it right after, and the removal must commit while it still counts.
                    let summary = self.ctx.membership.summary();
                    if let Some(m) = summary.members.iter().find(|m| m.2 == id.node_id) {
                        // The leader's role loop may remove it first: gone is gone.
                        if let Err(e) = self.ctx.membership.remove_member(m.0).await {
                            let _ = self.ctx.barrier().await;
                            let still = self
                                .ctx
                                .membership
                                .summary()
                                .members
                                .iter()
                                .any(|x| x.0 == m.0);
                            if still {
                                return Err(Status::unavailable(format!(
                                    "node {} is marked as leaving but is still a raft member: {e}; retry",
                                    id.node_id
                                )));
                            }
                        }
                    }
                    info!(node = %id.node_id, was_manager, "node left the cluster");
                    return Ok(Response::new(pb::LeaveClusterResponse { was_manager }));
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(status_of(e)),
            }
        }
        Err(Status::aborted(
            "too many concurrent changes to the node: retry",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_support;
    use crate::store::Batch;

    #[tokio::test]
    async fn root_ca_of_a_manager_that_is_behind_waits_for_the_log() {
        let cluster = Cluster {
            id: "c1".into(),
            root_ca_cert: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into(),
            ..Default::default()
        };
        let mut b = Batch::new();
        b.create(cluster.clone());
        // A follower that has not applied the cluster object yet.
        let (ctx, p) = test_support::ctx(false);
        p.behind.lock().unwrap().push(b.into_proto());
        let svc = NodeCaService { ctx };
        let r = svc
            .get_root_ca_certificate(Request::new(pb::GetRootCaRequest {}))
            .await
            .expect("answered once caught up");
        assert_eq!(r.into_inner().cert_pem, cluster.root_ca_cert);
        assert_eq!(p.barriers(), 1);
        // Known now: answered from the store, no barrier for an anonymous caller.
        svc.get_root_ca_certificate(Request::new(pb::GetRootCaRequest {}))
            .await
            .expect("answered");
        assert_eq!(p.barriers(), 1);

        // Nothing committed yet anywhere: still initializing.
        let svc = NodeCaService {
            ctx: test_support::ctx(false).0,
        };
        let e = svc
            .get_root_ca_certificate(Request::new(pb::GetRootCaRequest {}))
            .await
            .expect_err("no cluster yet");
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("initializing"), "{e:?}");
    }
}
