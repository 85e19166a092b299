//! The `flotilla.raft.v1.Raft` gRPC service: thin handlers over [`RaftNode`]. `Send` steps the
//! peer's messages into the ready loop; `Propose`, `ReadIndex` and `ChangeMembership` are served
//! only by the leader (a follower answers "not leader" and the caller looks for the leader);
//! errors travel as [`RaftError`] through `tonic::Status`.
//!
//! Invariant: a `Send` stream ends as soon as the node stops, so a server shutting down
//! gracefully is not held open by its peers' long-lived streams.

use flotilla_proto::raft::v1 as pb;
use flotilla_proto::raft::v1::raft_server::Raft;
use protobuf::Message as _;
use tonic::{Request, Response, Status, Streaming};

use super::ready_loop::{Event, MemberChange};
use super::{RaftError, RaftNode, StateMachine};

/// The raft transport service of one node; build it with [`RaftNode::service`].
pub struct RaftService<S: StateMachine> {
    node: RaftNode<S>,
}

impl<S: StateMachine> RaftService<S> {
    pub(crate) fn new(node: RaftNode<S>) -> Self {
        RaftService { node }
    }

    fn stopped(&self) -> Status {
        RaftError::Stopped {
            reason: String::new(),
        }
        .into()
    }
}

#[tonic::async_trait]
impl<S: StateMachine> Raft for RaftService<S> {
    async fn send(
        &self,
        request: Request<Streaming<pb::RaftEnvelope>>,
    ) -> Result<Response<pb::SendAck>, Status> {
        let mut stream = request.into_inner();
        let mut stopped = self.node.inner.published.stopped.subscribe();
        let mut learned = false;
        loop {
            let env = tokio::select! {
                m = stream.message() => match m? {
                    Some(env) => env,
                    None => break,
                },
                _ = stopped.wait_for(|s| s.is_some()) => return Err(self.stopped()),
            };
            let msg = ::raft::eraftpb::Message::parse_from_bytes(&env.message)
                .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
            if !learned && !env.from_addr.is_empty() {
                learned = true;
                let _ = self.node.inner.events.send(Event::Learned {
                    raft_id: msg.from,
                    addr: env.from_addr,
                });
            }
            if self
                .node
                .inner
                .events
                .send(Event::Raft(Box::new(msg)))
                .is_err()
            {
                return Err(self.stopped());
            }
        }
        Ok(Response::new(pb::SendAck {}))
    }

    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let (index, result) = self
            .node
            .propose_forwarded(request.into_inner().command)
            .await?;
        Ok(Response::new(pb::ProposeResponse { result, index }))
    }

    async fn read_index(
        &self,
        _request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let index = self.node.read_index_forwarded().await?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::ChangeMembershipResponse>, Status> {
        let change = match request.into_inner().change {
            Some(pb::change_membership_request::Change::Add(m)) => MemberChange::Add(m.into()),
            Some(pb::change_membership_request::Change::Remove(id)) => MemberChange::Remove(id),
            None => {
                return Err(Status::invalid_argument(
                    "membership change without an add or a remove",
                ))
            }
        };
        let members = self.node.change_as_leader(change).await?;
        Ok(Response::new(pb::ChangeMembershipResponse {
            members: members.into_iter().map(Into::into).collect(),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let st = self.node.status();
        Ok(Response::new(pb::StatusResponse {
            raft_id: st.raft_id,
            leader_id: st.leader_id,
            term: st.term,
            commit_index: st.commit_index,
            applied_index: st.applied_index,
            members: st.members.into_iter().map(Into::into).collect(),
            reachable: st.reachable_ids,
        }))
    }
}
