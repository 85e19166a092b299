//! `flotilla cluster join-token|status|ca`: the commands about the cluster as a whole (Swarm's
//! `swarm join-token` and `info`). Output text is built by pure functions, unit-tested below.

use clap::{Args, Subcommand};
use flotilla_proto::control::v1::{GetClusterRequest, GetClusterResponse, GetJoinTokensRequest};
use serde::Serialize;

use super::control::Cluster;
use super::format::{self, outln};
use super::{with_exit, Ctx};

/// Cluster commands.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Print the command that joins a node (worker or manager) to the cluster
    #[command(
        name = "join-token",
        long_about = "Print the command that joins a new node to the cluster as a worker or as a \
manager, with the current join token. --rotate replaces the token first: the old one stops \
working (nodes that already joined are not affected).",
        after_help = "Examples:
  flotilla cluster join-token worker
  flotilla cluster join-token -q manager
  flotilla cluster join-token --rotate worker"
    )]
    JoinToken(JoinTokenArgs),
    /// Show the cluster: managers (leader, reachability), raft term and commit index, counts
    Status(StatusArgs),
    /// Print the cluster's root CA certificate (PEM)
    Ca,
    /// Make this node (its local agent, -H) leave the cluster
    #[command(
        long_about = "Make this node leave the cluster, through its local agent (-H): the managers mark the node down (it stays listed until `flotilla node rm`), its tasks' containers are stopped and removed (the cluster runs them elsewhere), its certificate and cluster state are deleted. A manager node needs --force: it is demoted on the way out, which is refused when the other managers would lose their quorum (demote it with `flotilla node demote` first to be safe). With --force, a node that cannot reach any manager leaves anyway.",
        after_help = "Examples:
  flotilla cluster leave
  flotilla -H unix:///run/flotilla/agent.sock cluster leave --force"
    )]
    Leave(LeaveArgs),
    /// Change the cluster's settings, like `docker swarm update`
    #[command(
        long_about = "Change the cluster's settings. A new certificate validity applies to the \
certificates issued from now on (each node renews at two thirds of its current one); a new \
heartbeat period reaches connected agents at once (a shorter one is enforced only after every \
agent had time to beat at the old one); the task history limit applies at the next cleanup.",
        after_help = "Examples:
  flotilla cluster update --cert-expiry 30d
  flotilla cluster update --dispatcher-heartbeat 5s --task-history-limit 10"
    )]
    Update(UpdateArgs),
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Validity of node certificates, 1h to 20 years (e.g. 720h, 90d)
    #[arg(long, value_name = "DURATION", value_parser = super::parse::parse_cert_expiry)]
    pub cert_expiry: Option<std::time::Duration>,
    /// Agents' heartbeat period, 100ms to 5m (a node is down after 3 missed)
    #[arg(long, value_name = "DURATION", value_parser = super::parse::parse_duration)]
    pub dispatcher_heartbeat: Option<std::time::Duration>,
    /// Ended tasks kept per service slot (1 to 1000)
    #[arg(long, value_name = "N")]
    pub task_history_limit: Option<u32>,
}

/// `spec` with the flags of `a` applied; false when no flag was given.
pub fn apply_update(spec: &mut flotilla_proto::control::v1::ClusterSpec, a: &UpdateArgs) -> bool {
    if let Some(d) = a.cert_expiry {
        spec.node_cert_expiry_secs = d.as_secs();
    }
    if let Some(d) = a.dispatcher_heartbeat {
        spec.heartbeat_period_ms = d.as_millis() as u64;
    }
    if let Some(n) = a.task_history_limit {
        spec.task_history_limit = n;
    }
    a.cert_expiry.is_some() || a.dispatcher_heartbeat.is_some() || a.task_history_limit.is_some()
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// Leave even as a manager, or when no manager can be told
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Replace the token first (the old one stops working)
    #[arg(long)]
    pub rotate: bool,
    /// Only print the token
    #[arg(short, long)]
    pub quiet: bool,
    /// worker or manager
    #[arg(value_parser = ["worker", "manager"], value_name = "worker|manager")]
    pub role: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output: text (default) or json
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

/// The join instructions for `role` ("worker" or "manager") with `addr` a manager address.
pub fn join_text(role: &str, token: &str, addr: &str) -> String {
    let cmd = if role == "manager" {
        format!("flotilla-controller join --token {token} {addr}")
    } else {
        format!("flotilla-agent serve --join {addr} --token {token}")
    };
    format!("To add a {role} to this cluster, run the following command on the new node:\n\n    {cmd}\n\n")
}

/// The `cluster status` view.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct StatusView {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(rename = "AnsweredBy")]
    pub answered_by: String,
    #[serde(rename = "LeaderNodeID")]
    pub leader_node_id: String,
    pub term: u64,
    pub commit_index: u64,
    pub managers: Vec<ManagerView>,
    pub nodes: u64,
    pub services: u64,
    pub tasks: u64,
    /// Validity of node certificates, seconds.
    pub cert_expiry_seconds: u64,
    pub heartbeat_period_ms: u64,
    pub task_history_limit: u32,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ManagerView {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub raft_id: u64,
    pub addr: String,
    pub leader: bool,
    pub reachable: bool,
}

pub fn status_view(r: &GetClusterResponse) -> StatusView {
    let mut managers: Vec<ManagerView> = r
        .managers
        .iter()
        .map(|m| ManagerView {
            node_id: m.node_id.clone(),
            raft_id: m.raft_id,
            addr: m.addr.clone(),
            leader: m.leader,
            reachable: m.reachable,
        })
        .collect();
    managers.sort_by(|a, b| (!a.leader, &a.addr).cmp(&(!b.leader, &b.addr)));
    StatusView {
        id: r.id.clone(),
        name: r.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
        answered_by: r.node_id.clone(),
        leader_node_id: r.leader_node_id.clone(),
        term: r.term,
        commit_index: r.commit_index,
        managers,
        nodes: r.nodes,
        services: r.services,
        tasks: r.tasks,
        cert_expiry_seconds: r.spec.as_ref().map_or(0, |s| s.node_cert_expiry_secs),
        heartbeat_period_ms: r.spec.as_ref().map_or(0, |s| s.heartbeat_period_ms),
        task_history_limit: r.spec.as_ref().map_or(0, |s| s.task_history_limit),
    }
}

/// `cluster status` as text.
pub fn status_text(v: &StatusView) -> String {
    let reachable = v.managers.iter().filter(|m| m.reachable).count();
    let mut s = String::new();
    s.push_str(&format!("Cluster:        {}\n", v.id));
    if !v.name.is_empty() {
        s.push_str(&format!("Name:           {}\n", v.name));
    }
    s.push_str(&format!("Answered by:    {}\n", v.answered_by));
    s.push_str(&format!(
        "Leader:         {}\n",
        if v.leader_node_id.is_empty() {
            "none (no quorum?)"
        } else {
            &v.leader_node_id
        }
    ));
    s.push_str(&format!("Raft term:      {}\n", v.term));
    s.push_str(&format!("Commit index:   {}\n", v.commit_index));
    s.push_str(&format!(
        "Managers:       {} ({} reachable, quorum {})\n",
        v.managers.len(),
        reachable,
        v.managers.len() / 2 + 1
    ));
    let rows: Vec<Vec<String>> = v
        .managers
        .iter()
        .map(|m| {
            vec![
                m.node_id.clone(),
                m.addr.clone(),
                m.raft_id.to_string(),
                if m.leader {
                    "Leader".into()
                } else if m.reachable {
                    "Reachable".into()
                } else {
                    "Unreachable".into()
                },
            ]
        })
        .collect();
    for line in format::table(&["NODE ID", "ADDRESS", "RAFT ID", "STATUS"], &rows).lines() {
        s.push(' ');
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(&format!("Nodes:          {}\n", v.nodes));
    s.push_str(&format!("Services:       {}\n", v.services));
    s.push_str(&format!("Tasks:          {}\n", v.tasks));
    s.push_str(&format!(
        "Settings:       certificates {}, heartbeat {}, task history {}\n",
        compact_secs(v.cert_expiry_seconds),
        if v.heartbeat_period_ms.is_multiple_of(1000) {
            format!("{}s", v.heartbeat_period_ms / 1000)
        } else {
            format!("{}ms", v.heartbeat_period_ms)
        },
        v.task_history_limit
    ));
    s
}

/// `90d`, `36h`, `45m`, `20s`: the largest unit that divides the value.
fn compact_secs(secs: u64) -> String {
    match secs {
        0 => "default".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Runs a cluster subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: ClusterCmd) -> anyhow::Result<i32> {
    let cmd = match cmd {
        ClusterCmd::Leave(a) => return leave(ctx, a).await,
        other => other,
    };
    let cl = Cluster::open(ctx).await?;
    match cmd {
        ClusterCmd::Leave(_) => unreachable!("handled above"),
        ClusterCmd::Update(a) => {
            let r = cl
                .api()
                .get_cluster(GetClusterRequest {})
                .await
                .map_err(|s| cl.err(s))?
                .into_inner();
            let mut spec = r.spec.unwrap_or_default();
            if !apply_update(&mut spec, &a) {
                return Err(with_exit(
                    125,
                    anyhow::anyhow!(
                        "nothing to update: give --cert-expiry, --dispatcher-heartbeat or --task-history-limit"
                    ),
                ));
            }
            let r = cl
                .api()
                .update_cluster(flotilla_proto::control::v1::UpdateClusterRequest {
                    spec: Some(spec),
                })
                .await
                .map_err(|s| cl.err(s))?
                .into_inner();
            outln(&format!("Cluster {} updated.", r.id));
            Ok(0)
        }
        ClusterCmd::JoinToken(a) => {
            let r = cl
                .api()
                .get_join_tokens(GetJoinTokensRequest {
                    rotate: if a.rotate {
                        a.role.clone()
                    } else {
                        String::new()
                    },
                })
                .await
                .map_err(|s| cl.err(s))?
                .into_inner();
            let token = if a.role == "manager" {
                r.manager
            } else {
                r.worker
            };
            if a.quiet {
                outln(&token);
                return Ok(0);
            }
            let mut s = String::new();
            if a.rotate {
                s.push_str(&format!("Successfully rotated {} join token.\n\n", a.role));
            }
            let addr = r
                .manager_addrs
                .first()
                .cloned()
                .unwrap_or_else(|| cl.addr.clone());
            s.push_str(&join_text(&a.role, &token, &addr));
            format::out(&s);
            Ok(0)
        }
        ClusterCmd::Status(a) => {
            let r = cl
                .api()
                .get_cluster(GetClusterRequest {})
                .await
                .map_err(|s| cl.err(s))?
                .into_inner();
            let v = status_view(&r);
            if a.format == "json" {
                format::print_json(&v)?;
            } else {
                format::out(&status_text(&v));
            }
            Ok(0)
        }
        ClusterCmd::Ca => {
            let r = cl
                .api()
                .get_cluster(GetClusterRequest {})
                .await
                .map_err(|s| cl.err(s))?
                .into_inner();
            let pem = r.root_ca_cert;
            if pem.ends_with('\n') {
                format::out(&pem);
            } else {
                outln(&pem);
            }
            Ok(0)
        }
    }
}

/// `cluster leave`: asks the local agent, not a manager (the node leaves, not the cluster).
async fn leave(ctx: &Ctx, a: LeaveArgs) -> anyhow::Result<i32> {
    let agent = ctx.agent().await?;
    let r = agent
        .membership()
        .leave(flotilla_proto::agent::v1::LeaveClusterRequest { force: a.force })
        .await
        .map_err(|s| agent.err(s))?
        .into_inner();
    if !r.warning.is_empty() {
        eprintln!("warning: {}", r.warning);
    }
    if r.was_manager {
        outln(&format!(
            "Node {} left the cluster (demoted: it is no longer a manager).",
            r.node_id
        ));
    } else {
        outln(&format!("Node {} left the cluster.", r.node_id));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::control::v1::{ClusterSpec, ManagerInfo};

    #[test]
    fn update_flags_change_only_what_they_name() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: UpdateArgs,
        }
        let mut spec = ClusterSpec {
            name: "default".into(),
            task_history_limit: 5,
            heartbeat_period_ms: 1000,
            node_cert_expiry_secs: 90 * 86_400,
        };
        let t = T::try_parse_from(["x", "--cert-expiry", "30d", "--dispatcher-heartbeat", "2s"])
            .expect("flags");
        assert!(apply_update(&mut spec, &t.a));
        assert_eq!(spec.node_cert_expiry_secs, 30 * 86_400);
        assert_eq!(spec.heartbeat_period_ms, 2000);
        assert_eq!(spec.task_history_limit, 5, "untouched");
        let none = T::try_parse_from(["x"]).expect("no flags");
        assert!(!apply_update(&mut spec, &none.a));
        assert!(
            T::try_parse_from(["x", "--cert-expiry", "10"]).is_err(),
            "no unit"
        );
        assert!(T::try_parse_from(["x", "--dispatcher-heartbeat", "soon"]).is_err());
    }

    #[test]
    fn join_commands() {
        assert_eq!(
            join_text("worker", "FLTKN-1-abc-def", "10.0.0.1:4242"),
            "To add a worker to this cluster, run the following command on the new node:\n\n    flotilla-agent serve --join 10.0.0.1:4242 --token FLTKN-1-abc-def\n\n"
        );
        assert_eq!(
            join_text("manager", "FLTKN-1-abc-xyz", "10.0.0.1:4242"),
            "To add a manager to this cluster, run the following command on the new node:\n\n    flotilla-controller join --token FLTKN-1-abc-xyz 10.0.0.1:4242\n\n"
        );
    }

    #[test]
    fn status() {
        let r = GetClusterResponse {
            id: "c0ffee".into(),
            spec: Some(ClusterSpec {
                name: "default".into(),
                task_history_limit: 5,
                heartbeat_period_ms: 1500,
                node_cert_expiry_secs: 90 * 86_400,
            }),
            managers: vec![
                ManagerInfo {
                    node_id: "n2".into(),
                    raft_id: 2,
                    addr: "10.0.0.2:4242".into(),
                    leader: false,
                    reachable: false,
                },
                ManagerInfo {
                    node_id: "n1".into(),
                    raft_id: 1,
                    addr: "10.0.0.1:4242".into(),
                    leader: true,
                    reachable: true,
                },
                ManagerInfo {
                    node_id: "n3".into(),
                    raft_id: 3,
                    addr: "10.0.0.3:4242".into(),
                    leader: false,
                    reachable: true,
                },
            ],
            leader_node_id: "n1".into(),
            term: 4,
            commit_index: 1234,
            nodes: 5,
            services: 2,
            tasks: 7,
            node_id: "n3".into(),
            root_ca_cert: String::new(),
        };
        let v = status_view(&r);
        assert_eq!(
            status_text(&v),
            "Cluster:        c0ffee
Name:           default
Answered by:    n3
Leader:         n1
Raft term:      4
Commit index:   1234
Managers:       3 (2 reachable, quorum 2)
 NODE ID   ADDRESS         RAFT ID   STATUS
 n1        10.0.0.1:4242   1         Leader
 n2        10.0.0.2:4242   2         Unreachable
 n3        10.0.0.3:4242   3         Reachable
Nodes:          5
Services:       2
Tasks:          7
Settings:       certificates 90d, heartbeat 1500ms, task history 5
"
        );
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["Managers"][0]["NodeID"], "n1");
        assert_eq!(j["CommitIndex"], 1234);
    }
}
