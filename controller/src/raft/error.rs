//! The errors of the raft node, and their round trip through `tonic::Status` (a follower that
//! forwarded a request to the leader gets back the same variant the leader produced). The kind
//! travels in the `flotilla-raft-error` metadata key; the message is the error's text.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::MetadataValue;

const KIND_KEY: &str = "flotilla-raft-error";
const TERM_KEY: &str = "flotilla-raft-term";
const QUORUM_KEY: &str = "flotilla-raft-quorum";

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error(
        "no raft leader: the cluster has lost its quorum ({reachable} of {members} managers reachable) \
         — writes are refused until a majority is back, or recover with \
         `flotilla-controller init --force-new-cluster`"
    )]
    NoLeader { reachable: usize, members: usize },

    #[error(
        "raft leadership changed while the request was in flight (manager {raft_id} was leader in \
         term {term}): it may or may not have been applied; check the state before retrying"
    )]
    LeadershipLost { raft_id: u64, term: u64 },

    #[error(
        "no raft leader: the cluster lost its quorum while the request was in flight (leader \
         {raft_id} of term {term} heard from {reachable} of {members} managers and stepped down): \
         it is not applied now and may or may not be once a majority is back; writes are refused \
         until then, or recover with `flotilla-controller init --force-new-cluster`"
    )]
    QuorumLost {
        raft_id: u64,
        term: u64,
        reachable: usize,
        members: usize,
    },

    #[error("refused: {0}")]
    Refused(String),

    #[error("raft manager {raft_id} is not the leader (leader: {leader_id}, 0 if none is known)")]
    NotLeader { raft_id: u64, leader_id: u64 },

    #[error("raft {what} did not complete within {timeout:?}; it may still complete")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },

    #[error("raft storage {path}: {what}: {detail}")]
    Storage {
        path: PathBuf,
        what: String,
        detail: String,
    },

    #[error("no raft state in {path}: start with a new cluster or join one instead of restarting")]
    NoState { path: PathBuf },

    #[error(
        "raft state in {path} belongs to raft id {found}, not {expected}: wrong state directory?"
    )]
    WrongId {
        path: PathBuf,
        found: u64,
        expected: u64,
    },

    #[error("invalid raft configuration: {0}")]
    Config(String),

    #[error("invalid membership change: {0}")]
    Membership(String),

    #[error("raft dropped the proposal: {0}")]
    Dropped(String),

    #[error("raft leader {leader_id} at {addr} could not be reached: {detail}")]
    Forward {
        leader_id: u64,
        addr: String,
        detail: String,
    },

    #[error("the raft node is stopped{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    Stopped { reason: String },

    /// The node stopped after it handed the request to raft: the entry may be replicated
    /// already and commit under the next leader, so unlike [`RaftError::Stopped`] it must not be
    /// sent again.
    #[error(
        "the raft node stopped while the request was in flight{}: it may or may not have been \
         applied; check the state before retrying",
        if reason.is_empty() { String::new() } else { format!(" ({reason})") }
    )]
    StoppedInFlight { reason: String },

    #[error("raft: {0}")]
    Raft(#[from] ::raft::Error),
}

impl RaftError {
    pub(crate) fn storage(
        path: &std::path::Path,
        what: impl Into<String>,
        err: impl std::fmt::Display,
    ) -> Self {
        RaftError::Storage {
            path: path.to_path_buf(),
            what: what.into(),
            detail: err.to_string(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            RaftError::NoLeader { .. } => "no-leader",
            RaftError::LeadershipLost { .. } => "leadership-lost",
            RaftError::QuorumLost { .. } => "quorum-lost",
            RaftError::Refused(_) => "refused",
            RaftError::NotLeader { .. } => "not-leader",
            RaftError::Timeout { .. } => "timeout",
            RaftError::Membership(_) => "membership",
            RaftError::Dropped(_) => "dropped",
            RaftError::Stopped { .. } => "stopped",
            RaftError::StoppedInFlight { .. } => "stopped-in-flight",
            _ => "internal",
        }
    }

    /// Rebuilds the error a leader sent back in `status` (answering a forwarded request).
    pub(crate) fn from_status(status: &tonic::Status, leader_id: u64, addr: &str) -> Self {
        let kind = status
            .metadata()
            .get(KIND_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let msg = status.message().to_string();
        match kind {
            // The leader lost its leader meanwhile, or stopped before it took the request: the
            // caller looks for the new one.
            "no-leader" | "stopped" => RaftError::NotLeader {
                raft_id: leader_id,
                leader_id: 0,
            },
            "leadership-lost" => RaftError::LeadershipLost {
                raft_id: leader_id,
                term: status
                    .metadata()
                    .get(TERM_KEY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            },
            "quorum-lost" => {
                let term = status
                    .metadata()
                    .get(TERM_KEY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let (reachable, members) = status
                    .metadata()
                    .get(QUORUM_KEY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split_once('/'))
                    .and_then(|(r, m)| Some((r.parse().ok()?, m.parse().ok()?)))
                    .unwrap_or((0, 0));
                RaftError::QuorumLost {
                    raft_id: leader_id,
                    term,
                    reachable,
                    members,
                }
            }
            "refused" => RaftError::Refused(msg.strip_prefix("refused: ").unwrap_or(&msg).into()),
            "not-leader" => RaftError::NotLeader {
                raft_id: leader_id,
                leader_id: 0,
            },
            "timeout" => RaftError::Timeout {
                what: "request on the leader",
                timeout: Duration::ZERO,
            },
            "membership" => RaftError::Membership(
                msg.strip_prefix("invalid membership change: ")
                    .unwrap_or(&msg)
                    .into(),
            ),
            "stopped-in-flight" => RaftError::StoppedInFlight {
                reason: format!("manager {leader_id} at {addr}"),
            },
            "dropped" => RaftError::Dropped(
                msg.strip_prefix("raft dropped the proposal: ")
                    .unwrap_or(&msg)
                    .into(),
            ),
            _ => RaftError::Forward {
                leader_id,
                addr: addr.to_string(),
                detail: format!("{}: {}", status.code(), msg),
            },
        }
    }

    /// Whether a request that failed this way was certainly not executed (the node was not the
    /// leader, or raft dropped the proposal before appending it: a leadership transfer or too
    /// many uncommitted entries), so sending it again cannot apply it twice.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, RaftError::NotLeader { .. } | RaftError::Dropped(_))
    }
}

impl From<RaftError> for tonic::Status {
    fn from(e: RaftError) -> Self {
        let code = match &e {
            RaftError::NoLeader { .. }
            | RaftError::QuorumLost { .. }
            | RaftError::Stopped { .. }
            | RaftError::StoppedInFlight { .. }
            | RaftError::Forward { .. } => tonic::Code::Unavailable,
            RaftError::NotLeader { .. } => tonic::Code::FailedPrecondition,
            RaftError::LeadershipLost { .. } | RaftError::Dropped(_) => tonic::Code::Aborted,
            RaftError::Refused(_) => tonic::Code::FailedPrecondition,
            RaftError::Membership(_) | RaftError::Config(_) => tonic::Code::InvalidArgument,
            RaftError::Timeout { .. } => tonic::Code::DeadlineExceeded,
            _ => tonic::Code::Internal,
        };
        let mut status = tonic::Status::new(code, e.to_string());
        status
            .metadata_mut()
            .insert(KIND_KEY, MetadataValue::from_static(e.kind()));
        match &e {
            RaftError::LeadershipLost { term, .. } => {
                if let Ok(v) = MetadataValue::try_from(term.to_string()) {
                    status.metadata_mut().insert(TERM_KEY, v);
                }
            }
            RaftError::QuorumLost {
                term,
                reachable,
                members,
                ..
            } => {
                if let Ok(v) = MetadataValue::try_from(term.to_string()) {
                    status.metadata_mut().insert(TERM_KEY, v);
                }
                if let Ok(v) = MetadataValue::try_from(format!("{reachable}/{members}")) {
                    status.metadata_mut().insert(QUORUM_KEY, v);
                }
            }
            _ => {}
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip_keeps_the_kind() {
        let s: tonic::Status = RaftError::Refused("version conflict on x".into()).into();
        match RaftError::from_status(&s, 3, "a:1") {
            RaftError::Refused(m) => assert_eq!(m, "version conflict on x"),
            other => panic!("unexpected {other:?}"),
        }
        let s: tonic::Status = RaftError::NotLeader {
            raft_id: 3,
            leader_id: 0,
        }
        .into();
        assert!(RaftError::from_status(&s, 3, "a:1").is_retryable());
        let s: tonic::Status = RaftError::LeadershipLost {
            raft_id: 2,
            term: 7,
        }
        .into();
        match RaftError::from_status(&s, 2, "a:1") {
            RaftError::LeadershipLost {
                raft_id: 2,
                term: 7,
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        let s: tonic::Status = RaftError::QuorumLost {
            raft_id: 2,
            term: 7,
            reachable: 1,
            members: 3,
        }
        .into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        let e = RaftError::from_status(&s, 2, "a:1");
        match &e {
            RaftError::QuorumLost {
                raft_id: 2,
                term: 7,
                reachable: 1,
                members: 3,
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(!e.is_retryable());
        let t = e.to_string();
        assert!(t.contains("quorum") && t.contains("1 of 3"), "{t}");
        let s = tonic::Status::unavailable("tcp connect error");
        let e = RaftError::from_status(&s, 3, "a:1");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("a:1"), "{e}");
    }

    #[test]
    fn stopped_is_retried_only_before_raft_took_the_request() {
        let s: tonic::Status = RaftError::Stopped {
            reason: String::new(),
        }
        .into();
        assert!(RaftError::from_status(&s, 3, "a:1").is_retryable());
        let s: tonic::Status = RaftError::StoppedInFlight {
            reason: String::new(),
        }
        .into();
        let e = RaftError::from_status(&s, 3, "a:1");
        assert!(matches!(e, RaftError::StoppedInFlight { .. }), "{e:?}");
        assert!(!e.is_retryable());
        let t = e.to_string();
        assert!(
            t.contains("may or may not have been applied") && t.contains("a:1"),
            "{t}"
        );
    }

    #[test]
    fn no_leader_text_tells_what_to_do() {
        let e = RaftError::NoLeader {
            reachable: 1,
            members: 3,
        };
        let t = e.to_string();
        assert!(t.contains("1 of 3 managers reachable"), "{t}");
        assert!(t.contains("--force-new-cluster"), "{t}");
    }
}
