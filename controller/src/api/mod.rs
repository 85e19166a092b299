//! Thin gRPC handlers of `flotilla.control.v1` (Control, NodeCA, Dispatcher): they check the
//! caller's certificate, validate input, read the store after a read barrier, and write through
//! the proposer. One mapping from domain errors to `tonic::Status` ([`status_of`]).

pub mod control;
pub mod nodeca;
#[cfg(test)]
pub(crate) mod test_support;
pub mod validate;

use std::sync::Arc;

use flotilla_pki::{DataKey, PeerIdentity, PeerRole};
use tonic::Status;

use crate::dispatcher::Dispatcher;
use crate::manager::proposer::{BoxFuture, ProposeError, Proposer};
use crate::store::Store;

/// What the handlers need from raft beyond writes: its view and membership changes.
pub trait Membership: Send + Sync + 'static {
    fn summary(&self) -> RaftSummary;
    /// Adds a manager to the raft group; returns the members' addresses.
    fn add_member(
        &self,
        raft_id: u64,
        addr: String,
        node_id: String,
    ) -> BoxFuture<'_, Result<Vec<String>, String>>;
    fn remove_member(&self, raft_id: u64) -> BoxFuture<'_, Result<(), String>>;
}

/// Raft's state as the API shows it.
#[derive(Debug, Clone, Default)]
pub struct RaftSummary {
    pub raft_id: u64,
    pub leader_raft_id: u64,
    pub term: u64,
    pub commit_index: u64,
    /// (raft id, address, node id)
    pub members: Vec<(u64, String, String)>,
    /// Members considered reachable (the leader's view, also on a follower: see
    /// `crate::raft::RaftStatus::reachable_ids`).
    pub reachable: Vec<u64>,
    /// Members that have no vote yet (new managers catching up with the log).
    pub learners: Vec<u64>,
}

impl RaftSummary {
    pub fn is_leader(&self) -> bool {
        self.raft_id != 0 && self.raft_id == self.leader_raft_id
    }

    pub fn leader_addr(&self) -> Option<String> {
        self.members
            .iter()
            .find(|m| m.0 == self.leader_raft_id)
            .map(|m| m.1.clone())
    }
}

/// Shared by the handlers of one manager.
pub struct Ctx {
    pub store: Store,
    pub proposer: Arc<dyn Proposer>,
    pub membership: Arc<dyn Membership>,
    pub dispatcher: Arc<Dispatcher>,
    pub data_key: Arc<DataKey>,
    /// This manager's node id.
    pub node_id: String,
    /// How to reach another manager's Control service (for proxying logs to the leader).
    pub dial: Arc<dyn Fn(&str) -> tonic::transport::Channel + Send + Sync>,
}

impl Ctx {
    /// A linearizable read: waits until the local store holds every committed write.
    pub async fn barrier(&self) -> Result<(), Status> {
        self.proposer.read_barrier().await.map_err(status_of)
    }
}

/// The one mapping from write errors to gRPC statuses.
pub fn status_of(e: ProposeError) -> Status {
    match e {
        ProposeError::Refused(m)
            if m.contains("already in use") || m.contains("already exists") =>
        {
            Status::already_exists(m)
        }
        ProposeError::Refused(m) if m.contains("changed since it was read") => Status::aborted(m),
        ProposeError::Refused(m) if m.starts_with("no such") => Status::not_found(m),
        ProposeError::Refused(m) => Status::failed_precondition(m),
        ProposeError::Unavailable(m) => Status::unavailable(m),
    }
}

impl Ctx {
    /// The caller must hold an admin certificate, or the certificate of a node the store knows
    /// as a manager (a removed manager keeps a valid certificate until it expires).
    pub fn require_admin<T>(&self, req: &tonic::Request<T>) -> Result<PeerIdentity, Status> {
        let id = flotilla_pki::peer_identity(req)?;
        match id.role {
            PeerRole::Admin => Ok(id),
            PeerRole::Manager => {
                let manager = self.store.read().nodes.get(&id.node_id).is_some_and(|n| {
                    n.role == flotilla_proto::control::v1::NodeRole::Manager as i32
                });
                if manager {
                    Ok(id)
                } else {
                    Err(Status::permission_denied(format!(
                        "node {} is not a manager of this cluster",
                        id.node_id
                    )))
                }
            }
            PeerRole::Worker => Err(Status::permission_denied(
                "a worker certificate cannot use the cluster API: use an admin context",
            )),
        }
    }
}

/// The additional data a sealed join token is bound to (a sealed worker token cannot be passed
/// off as the manager one).
fn token_aad(cluster_id: &str, role: flotilla_pki::Role) -> Vec<u8> {
    format!("join-token/{cluster_id}/{}", role.as_str()).into_bytes()
}

/// The cluster's current join token for `role`, opened with the data key (or the plaintext
/// one of a cluster created before tokens were sealed).
pub fn join_token(
    c: &flotilla_proto::control::v1::Cluster,
    role: flotilla_pki::Role,
    key: &DataKey,
) -> Result<String, Status> {
    let (sealed, plain) = match role {
        flotilla_pki::Role::Worker => (&c.worker_token_sealed, &c.worker_token),
        flotilla_pki::Role::Manager => (&c.manager_token_sealed, &c.manager_token),
    };
    if sealed.is_empty() {
        return Ok(plain.clone());
    }
    let bytes = key
        .open(sealed, &token_aad(&c.id, role))
        .map_err(|e| Status::internal(format!("cannot open the join token: {e}")))?;
    String::from_utf8(bytes).map_err(|_| Status::internal("the sealed join token is not text"))
}

/// Replaces the cluster's join token for `role` (sealed; the plaintext field is cleared).
pub fn set_join_token(
    c: &mut flotilla_proto::control::v1::Cluster,
    role: flotilla_pki::Role,
    token: &str,
    key: &DataKey,
) -> Result<(), flotilla_pki::CaError> {
    let sealed = key.seal(token.as_bytes(), &token_aad(&c.id, role))?;
    match role {
        flotilla_pki::Role::Worker => {
            c.worker_token_sealed = sealed;
            c.worker_token.clear();
        }
        flotilla_pki::Role::Manager => {
            c.manager_token_sealed = sealed;
            c.manager_token.clear();
        }
    }
    Ok(())
}
