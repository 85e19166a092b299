//! Node roles: `node promote/demote` and `cluster leave` change a node's desired role; the
//! leader's role loop makes the rest follow, the way Swarm's role manager does:
//! - desired manager, role worker: the role becomes manager at once. The node's next certificate
//!   (its agent renews as soon as its session tells it the new role) is a manager's, with which
//!   the manager process its agent starts joins the raft group.
//! - desired worker, role manager: the node's raft member is removed first (the removed manager
//!   notices and stops, see `run::removal_watch`), then the role becomes worker. A removal that
//!   would leave the remaining managers without a quorum of reachable members waits.
//!
//! The decisions are pure ([`plan`], [`demotion_check`]) so they are unit-tested without raft.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::control::v1::{Node, NodeRole};
use tokio::sync::watch;
use tracing::{info, warn};

use super::proposer::Proposer;
use crate::api::{Membership, RaftSummary};
use crate::store::{Batch, Kind, State, Store};

/// One step towards the desired roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleAction {
    /// Write `role` as the node's current role.
    SetRole { node_id: String, role: NodeRole },
    /// Remove the node's raft member (a manager being demoted).
    RemoveMember { node_id: String, raft_id: u64 },
    /// A demotion that has to wait, and why.
    Wait { node_id: String, reason: String },
}

fn desired_role(n: &Node) -> i32 {
    n.spec.as_ref().map_or(n.role, |s| s.desired_role)
}

/// Whether removing `node_id`'s raft member keeps a working cluster: there must be another
/// member, and a majority of the remaining members must be reachable (else the removal itself
/// could not commit, or would leave a group that cannot).
pub fn demotion_check(raft: &RaftSummary, node_id: &str) -> Result<(), String> {
    let Some(me) = raft.members.iter().find(|m| m.2 == node_id) else {
        return Ok(());
    };
    // Learners have no vote: they neither count in the quorum nor can they make one.
    let rest: Vec<u64> = raft
        .members
        .iter()
        .filter(|m| m.0 != me.0 && !raft.learners.contains(&m.0))
        .map(|m| m.0)
        .collect();
    if rest.is_empty() {
        return Err(format!(
            "node {node_id} is the only manager: a cluster needs one (promote another node first)"
        ));
    }
    let reachable = rest
        .iter()
        .filter(|id| **id == raft.raft_id || raft.reachable.contains(id))
        .count();
    let quorum = rest.len() / 2 + 1;
    if reachable < quorum {
        return Err(format!(
            "removing manager {node_id} would leave {} managers of which only {reachable} reachable: they need {quorum} for a quorum",
            rest.len()
        ));
    }
    Ok(())
}

/// What the role loop does next, one action per node whose role differs from its desired one.
pub fn plan(state: &State, raft: &RaftSummary) -> Vec<RoleAction> {
    let mut out = Vec::new();
    for n in state.nodes.values() {
        let desired = desired_role(n);
        if desired == n.role {
            continue;
        }
        if desired == NodeRole::Manager as i32 {
            out.push(RoleAction::SetRole {
                node_id: n.id.clone(),
                role: NodeRole::Manager,
            });
            continue;
        }
        match raft.members.iter().find(|m| m.2 == n.id) {
            None => out.push(RoleAction::SetRole {
                node_id: n.id.clone(),
                role: NodeRole::Worker,
            }),
            Some(m) => match demotion_check(raft, &n.id) {
                Ok(()) => out.push(RoleAction::RemoveMember {
                    node_id: n.id.clone(),
                    raft_id: m.0,
                }),
                Err(reason) => out.push(RoleAction::Wait {
                    node_id: n.id.clone(),
                    reason,
                }),
            },
        }
    }
    out
}

/// The leader's role loop: a pass after every batch that changed a node and every second
/// (reachability changes without a batch), until `stop`.
pub async fn role_loop(
    store: Store,
    proposer: Arc<dyn Proposer>,
    membership: Arc<dyn Membership>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = store.watch();
    let mut told: Option<String> = None;
    loop {
        let actions = plan(&store.read(), &membership.summary());
        for a in actions {
            match a {
                RoleAction::SetRole { node_id, role } => {
                    let Some(mut n) = store.read().nodes.get(&node_id).cloned() else {
                        continue;
                    };
                    n.role = role as i32;
                    if let Some(m) = n.meta.as_mut() {
                        m.updated_at = crate::dispatcher::now_ms();
                    }
                    let mut b = Batch::new();
                    b.update(n);
                    match proposer.propose(b.into_proto()).await {
                        Ok(_) => {
                            info!(node = %node_id, role = role.as_str_name(), "node role changed")
                        }
                        Err(e) => {
                            warn!(node = %node_id, error = %e, "cannot write the node's role")
                        }
                    }
                }
                RoleAction::RemoveMember { node_id, raft_id } => {
                    info!(node = %node_id, raft_id, "demoting: removing the manager from the raft group");
                    if let Err(e) = membership.remove_member(raft_id).await {
                        warn!(node = %node_id, error = %e, "cannot remove the manager from the raft group");
                    }
                }
                RoleAction::Wait { node_id, reason } => {
                    if told.as_deref() != Some(reason.as_str()) {
                        warn!(node = %node_id, "demotion waits: {reason}");
                        told = Some(reason);
                    }
                }
            }
        }
        // Node changes only (not every write: most are configs, secrets, tasks), and every
        // second for reachability.
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        if !super::loops::next_change(&mut rx, &mut stop, Some(tick), &[Kind::Node]).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::control::v1::NodeSpec;

    fn node(id: &str, role: NodeRole, desired: NodeRole) -> Node {
        Node {
            id: id.into(),
            spec: Some(NodeSpec {
                desired_role: desired as i32,
                ..Default::default()
            }),
            role: role as i32,
            ..Default::default()
        }
    }

    fn raft(members: &[(u64, &str)], me: u64, reachable: &[u64]) -> RaftSummary {
        RaftSummary {
            raft_id: me,
            leader_raft_id: me,
            members: members
                .iter()
                .map(|(r, n)| (*r, format!("10.0.0.{r}:4242"), n.to_string()))
                .collect(),
            reachable: reachable.to_vec(),
            ..Default::default()
        }
    }

    fn state(nodes: Vec<Node>) -> State {
        let mut s = State::default();
        for n in nodes {
            s.nodes.insert(n.id.clone(), n);
        }
        s
    }

    #[test]
    fn the_last_manager_cannot_be_demoted() {
        let r = raft(&[(1, "a")], 1, &[1]);
        let e = demotion_check(&r, "a").expect_err("last manager");
        assert!(e.contains("only manager"), "{e}");
        // A node that is no raft member can always lose a manager role it never used.
        assert!(demotion_check(&r, "b").is_ok());
    }

    #[test]
    fn demotion_needs_a_reachable_quorum_of_the_rest() {
        // 3 managers, all reachable: removing one leaves 2 of 2 reachable.
        assert!(demotion_check(&raft(&[(1, "a"), (2, "b"), (3, "c")], 1, &[1, 2, 3]), "c").is_ok());
        // 3 managers, c down: removing b leaves a and c with only a reachable: refused.
        let e = demotion_check(&raft(&[(1, "a"), (2, "b"), (3, "c")], 1, &[1, 2]), "b")
            .expect_err("quorum");
        assert!(
            e.contains("only 1 reachable") && e.contains("need 2"),
            "{e}"
        );
        // ... but removing the unreachable c itself is fine (a and b remain, both reachable).
        assert!(demotion_check(&raft(&[(1, "a"), (2, "b"), (3, "c")], 1, &[1, 2]), "c").is_ok());
        // 2 managers: removing the other one leaves this one alone: fine.
        assert!(demotion_check(&raft(&[(1, "a"), (2, "b")], 1, &[1]), "b").is_ok());
    }

    #[test]
    fn plan_promotes_at_once_and_demotes_through_raft() {
        let s = state(vec![
            node("w1", NodeRole::Worker, NodeRole::Manager),
            node("m2", NodeRole::Manager, NodeRole::Worker),
            node("m3", NodeRole::Manager, NodeRole::Worker),
            node("m1", NodeRole::Manager, NodeRole::Manager),
            node("w2", NodeRole::Worker, NodeRole::Worker),
        ]);
        // m3 is no longer a raft member: its role can follow; m2 still is: remove it first.
        let r = raft(&[(1, "m1"), (2, "m2")], 1, &[1, 2]);
        let mut got = plan(&s, &r);
        got.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        assert_eq!(
            got,
            vec![
                RoleAction::RemoveMember {
                    node_id: "m2".into(),
                    raft_id: 2
                },
                RoleAction::SetRole {
                    node_id: "m3".into(),
                    role: NodeRole::Worker
                },
                RoleAction::SetRole {
                    node_id: "w1".into(),
                    role: NodeRole::Manager
                },
            ]
        );
    }

    #[test]
    fn plan_waits_when_a_demotion_would_lose_the_quorum() {
        let s = state(vec![
            node("m1", NodeRole::Manager, NodeRole::Manager),
            node("m2", NodeRole::Manager, NodeRole::Worker),
            node("m3", NodeRole::Manager, NodeRole::Manager),
        ]);
        let r = raft(&[(1, "m1"), (2, "m2"), (3, "m3")], 1, &[1, 2]);
        match plan(&s, &r).as_slice() {
            [RoleAction::Wait { node_id, reason }] => {
                assert_eq!(node_id, "m2");
                assert!(reason.contains("quorum"), "{reason}");
            }
            other => panic!("expected a wait, got {other:?}"),
        }
    }
}
