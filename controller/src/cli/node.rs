//! `flotilla node ls|inspect|update|promote|demote|rm|ps`: the cluster's nodes, as Swarm's
//! `docker node` shows and changes them. Changes read the node, edit its spec and send it back
//! with the version read; a concurrent change makes the controller refuse, and the command
//! reads again and retries once. Rows, filters and spec edits are pure and unit-tested.

use std::collections::HashMap;

use clap::{Args, Subcommand};
use flotilla_proto::control::v1::{
    GetNodeRequest, ListNodesRequest, ListTasksRequest, Node, NodeAvailability, NodeRole, NodeSpec,
    RemoveNodeRequest, UpdateNodeRequest,
};
use serde::Serialize;

use super::container::print_rows;
use super::control::{self, Cluster};
use super::format::{self, outln};
use super::objects::{self, capitalize, Kind};
use super::parse::{self, ParseError};
use super::template::Template;
use super::{with_exit, Ctx};

/// Node commands.
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List the cluster's nodes
    #[command(
        visible_alias = "list",
        after_help = "Examples:
  flotilla node ls
  flotilla node ls --filter role=manager
  flotilla node ls -f label=zone=b -q
  flotilla node ls --format '{{.Hostname}} {{.Status}}'

Filters (-f, all must match): role=manager|worker, label=KEY or label=KEY=VALUE,
name=HOSTNAME, id=PREFIX (several name=/id= match any of them)"
    )]
    Ls(NodeLsArgs),
    /// Show details of one or more nodes (JSON, or --pretty)
    Inspect(NodeInspectArgs),
    /// Change a node's availability, labels or role
    #[command(after_help = "Examples:
  flotilla node update --availability drain host2
  flotilla node update --label-add zone=b --label-add ssd host3
  flotilla node update --label-rm zone host3

drain moves the node's tasks elsewhere; pause keeps them but places no new ones.")]
    Update(NodeUpdateArgs),
    /// Make one or more nodes managers
    Promote(NodeNamesArgs),
    /// Make one or more managers workers
    Demote(NodeNamesArgs),
    /// Remove one or more nodes from the cluster
    #[command(visible_alias = "remove")]
    Rm(NodeRmArgs),
    /// List the tasks on nodes (default: every node)
    Ps(NodePsArgs),
}

#[derive(Debug, Args)]
pub struct NodeLsArgs {
    /// Only display ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter: role=, label=, name=, id= (repeatable)
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Output: table (default), json, or a Go template like '{{.Hostname}}'
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct NodeInspectArgs {
    /// Human-readable output instead of JSON
    #[arg(long)]
    pub pretty: bool,
    /// Format the output with a Go template (e.g. '{{.Status.State}}')
    #[arg(short, long)]
    pub format: Option<String>,
    /// Nodes (id, unique id prefix, or hostname; "self" is not supported)
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct NodeUpdateArgs {
    /// active, pause (no new tasks) or drain (move tasks away)
    #[arg(long, value_parser = ["active", "pause", "drain"])]
    pub availability: Option<String>,
    /// Add or replace a node label (KEY=VALUE or KEY)
    #[arg(long, value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a node label
    #[arg(long, value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// worker or manager
    #[arg(long, value_parser = ["worker", "manager"])]
    pub role: Option<String>,
    #[arg(value_name = "NODE")]
    pub node: String,
}

#[derive(Debug, Args)]
pub struct NodeNamesArgs {
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodeRmArgs {
    /// Remove a node that is not down
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true, value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodePsArgs {
    /// Only display task ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate ids, images and errors
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter: desired-state=running|shutdown|accepted
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Output: table (default), json, or a Go template like '{{.Name}}'
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Nodes (default: every node)
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
}

// ------------------------------------------------------------------ pure parts

/// `node ls` filters -> the request.
pub fn ls_request(filters: &[String]) -> Result<ListNodesRequest, ParseError> {
    let mut r = ListNodesRequest::default();
    for f in filters {
        match f.split_once('=') {
            Some(("role", v @ ("manager" | "worker"))) => r.role = v.to_string(),
            Some(("role", v)) => {
                return Err(ParseError(format!(
                    "invalid filter {f:?}: role must be manager or worker, not {v:?}"
                )))
            }
            Some(("label" | "node.label", v)) if !v.is_empty() => r.labels.push(v.to_string()),
            Some(("name" | "id", v)) if !v.is_empty() => r.names.push(v.to_string()),
            _ => {
                return Err(ParseError(format!(
                    "invalid filter {f:?}: expected role=, label=, name= or id="
                )))
            }
        }
    }
    Ok(r)
}

/// A `node ls` row.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct NodeRow {
    #[serde(rename = "ID")]
    pub id: String,
    pub hostname: String,
    pub status: String,
    pub availability: String,
    pub manager_status: String,
    pub engine_version: String,
}

pub const NODE_HEADERS: [&str; 6] = [
    "ID",
    "HOSTNAME",
    "STATUS",
    "AVAILABILITY",
    "MANAGER STATUS",
    "ENGINE VERSION",
];

pub fn node_cells(r: &NodeRow) -> Vec<String> {
    vec![
        r.id.clone(),
        r.hostname.clone(),
        r.status.clone(),
        r.availability.clone(),
        r.manager_status.clone(),
        r.engine_version.clone(),
    ]
}

/// `Leader`, `Reachable`, `Unreachable`, or empty for workers.
pub fn manager_status(n: &Node) -> String {
    match &n.manager_status {
        Some(m) if m.leader => "Leader".into(),
        Some(m) if m.reachability == "reachable" => "Reachable".into(),
        Some(m) if m.reachability == "unreachable" => "Unreachable".into(),
        Some(m) if !m.reachability.is_empty() => capitalize(&m.reachability),
        Some(_) => "Unknown".into(),
        None => String::new(),
    }
}

fn hostname(n: &Node) -> String {
    n.description
        .as_ref()
        .map(|d| d.hostname.clone())
        .unwrap_or_default()
}

pub fn node_row(n: &Node) -> NodeRow {
    NodeRow {
        id: n.id.clone(),
        hostname: hostname(n),
        status: capitalize(objects::node_state_name(
            n.status.as_ref().map(|s| s.state).unwrap_or(0),
        )),
        availability: capitalize(objects::availability_name(
            n.spec.as_ref().map(|s| s.availability).unwrap_or(0),
        )),
        manager_status: manager_status(n),
        engine_version: n
            .description
            .as_ref()
            .map(|d| d.engine_version.clone())
            .unwrap_or_default(),
    }
}

/// Sorted like docker's `node ls`: by hostname, then id.
pub fn sort_nodes(nodes: &mut [Node]) {
    nodes.sort_by(|a, b| (hostname(a), &a.id).cmp(&(hostname(b), &b.id)));
}

/// `node update` flags applied to a spec.
pub fn apply_node_update(spec: &mut NodeSpec, a: &NodeUpdateArgs) -> Result<(), ParseError> {
    if let Some(av) = &a.availability {
        spec.availability = match av.as_str() {
            "pause" => NodeAvailability::Pause,
            "drain" => NodeAvailability::Drain,
            _ => NodeAvailability::Active,
        } as i32;
    }
    if let Some(r) = &a.role {
        spec.desired_role = if r == "manager" {
            NodeRole::Manager
        } else {
            NodeRole::Worker
        } as i32;
    }
    for k in &a.label_rm {
        spec.labels.remove(k);
    }
    for l in &a.label_add {
        let (k, v) = parse::parse_label(l)?;
        spec.labels.insert(k, v);
    }
    Ok(())
}

/// `node inspect --pretty`.
pub fn pretty(n: &Node) -> String {
    let mut s = String::new();
    let spec = n.spec.clone().unwrap_or_default();
    let desc = n.description.clone().unwrap_or_default();
    let st = n.status.clone().unwrap_or_default();
    objects::kv(&mut s, "ID", &n.id);
    objects::kv(&mut s, "Hostname", &desc.hostname);
    if let Some(m) = &n.meta {
        objects::kv(&mut s, "Joined at", objects::rfc3339_ms(m.created_at));
    }
    s.push_str("Status:\n");
    objects::kv(
        &mut s,
        " State",
        capitalize(objects::node_state_name(st.state)),
    );
    if !st.message.is_empty() {
        objects::kv(&mut s, " Message", &st.message);
    }
    objects::kv(
        &mut s,
        " Availability",
        capitalize(objects::availability_name(spec.availability)),
    );
    objects::kv(&mut s, " Address", &st.addr);
    if st.last_heartbeat > 0 {
        objects::kv(
            &mut s,
            " Last heartbeat",
            objects::rfc3339_ms(st.last_heartbeat),
        );
    }
    if let Some(m) = &n.manager_status {
        s.push_str("Manager Status:\n");
        objects::kv(&mut s, " Address", &m.addr);
        objects::kv(&mut s, " Raft Status", capitalize(&m.reachability));
        objects::kv(&mut s, " Leader", if m.leader { "Yes" } else { "No" });
    }
    if spec.desired_role != n.role {
        objects::kv(
            &mut s,
            "Desired role",
            format!(
                "{} (the certificate still says {})",
                objects::role_name(spec.desired_role),
                objects::role_name(n.role)
            ),
        );
    }
    let labels = |s: &mut String, title: &str, m: &HashMap<String, String>| {
        if m.is_empty() {
            return;
        }
        s.push_str(&format!("{title}:\n"));
        let mut kv: Vec<_> = m.iter().collect();
        kv.sort();
        for (k, v) in kv {
            s.push_str(&format!(" - {k}={v}\n"));
        }
    };
    labels(&mut s, "Labels", &spec.labels);
    if let Some(p) = &desc.platform {
        s.push_str("Platform:\n");
        objects::kv(&mut s, " Operating System", &p.os);
        objects::kv(&mut s, " Architecture", &p.architecture);
    }
    if let Some(r) = &desc.resources {
        s.push_str("Resources:\n");
        objects::kv(&mut s, " CPUs", objects::cpus(r.nano_cpus));
        objects::kv(
            &mut s,
            " Memory",
            format::bytes_size(r.memory_bytes.max(0) as u64),
        );
    }
    objects::kv(&mut s, "Engine Version", &desc.engine_version);
    labels(&mut s, "Engine Labels", &desc.engine_labels);
    s.push_str("TLS Info:\n");
    objects::kv(&mut s, " Role", objects::role_name(n.role));
    objects::kv(&mut s, " Certificate Serial", &n.cert_serial);
    if n.cert_expires_at > 0 {
        objects::kv(&mut s, " Expires", objects::rfc3339_ms(n.cert_expires_at));
    }
    s
}

// ------------------------------------------------------------------ commands

async fn get_node(cl: &Cluster, node: &str) -> anyhow::Result<Node> {
    Ok(cl
        .api()
        .get_node(GetNodeRequest {
            node: node.to_string(),
        })
        .await
        .map_err(|s| cl.err(s))?
        .into_inner())
}

/// Reads `node`, edits its spec with `edit` (which may decline with `Ok(false)`: nothing to
/// do), and writes it with the version read; retries once when the node changed meanwhile.
/// Returns whether a write happened.
async fn update_node<F>(cl: &Cluster, node: &str, mut edit: F) -> anyhow::Result<(Node, bool)>
where
    F: FnMut(&Node, &mut NodeSpec) -> anyhow::Result<bool>,
{
    let mut attempt = 0;
    loop {
        let n = get_node(cl, node).await?;
        let mut spec = n.spec.clone().unwrap_or_default();
        if !edit(&n, &mut spec)? {
            return Ok((n, false));
        }
        let version = n.meta.as_ref().map(|m| m.version).unwrap_or(0);
        match cl
            .api()
            .update_node(UpdateNodeRequest {
                node: n.id.clone(),
                version,
                spec: Some(spec),
            })
            .await
        {
            Ok(r) => return Ok((r.into_inner(), true)),
            Err(s) => {
                let e = cl.err(s);
                if control::is_conflict(&e) && attempt == 0 {
                    attempt += 1;
                    tracing::debug!(node, "node changed since it was read; retrying");
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// Runs `f` for each name; prints each failure and returns 1 if any failed.
async fn each<F, Fut>(names: &[String], mut f: F) -> i32
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut code = 0;
    for n in names {
        if let Err(e) = f(n.clone()).await {
            eprintln!("{}", control::error_line(&e));
            code = 1;
        }
    }
    code
}

/// Lists tasks for `node ps` / `service ps` and prints them.
pub async fn print_tasks(
    cl: &Cluster,
    req: ListTasksRequest,
    quiet: bool,
    no_trunc: bool,
    fmt: &str,
) -> anyhow::Result<()> {
    let r = cl
        .api()
        .list_tasks(req)
        .await
        .map_err(|s| cl.err(s))?
        .into_inner();
    let mut tasks = r.tasks;
    objects::sort_tasks(&mut tasks);
    if quiet {
        let s: String = tasks
            .iter()
            .map(|t| {
                if no_trunc {
                    format!("{}\n", t.id)
                } else {
                    format!("{}\n", format::short_id(&t.id))
                }
            })
            .collect();
        format::out(&s);
        return Ok(());
    }
    let rows = objects::task_rows(&tasks, &r.node_names, objects::now_ms(), no_trunc);
    print_rows(&rows, fmt, &objects::TASK_HEADERS, objects::task_cells)
}

/// `desired-state=` filter of `ps` commands.
pub fn desired_state_filter(filters: &[String]) -> Result<String, ParseError> {
    let mut state = String::new();
    for f in filters {
        match f.split_once('=') {
            Some(("desired-state", v @ ("running" | "shutdown" | "accepted"))) => {
                state = v.to_string()
            }
            _ => {
                return Err(ParseError(format!(
                    "invalid filter {f:?}: expected desired-state=running|shutdown|accepted"
                )))
            }
        }
    }
    Ok(state)
}

fn check_format(f: &str) -> anyhow::Result<()> {
    if f != "table" && f != "json" {
        Template::parse(f.strip_prefix("table ").unwrap_or(f))?;
    }
    Ok(())
}

/// Runs a node subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: NodeCmd) -> anyhow::Result<i32> {
    match cmd {
        NodeCmd::Ls(a) => {
            let req = ls_request(&a.filter).map_err(|e| with_exit(125, e.into()))?;
            check_format(&a.format)?;
            let cl = Cluster::open(ctx).await?;
            let mut nodes = cl
                .api()
                .list_nodes(req)
                .await
                .map_err(|s| cl.err(s))?
                .into_inner()
                .nodes;
            sort_nodes(&mut nodes);
            if a.quiet {
                let s: String = nodes.iter().map(|n| format!("{}\n", n.id)).collect();
                format::out(&s);
                return Ok(0);
            }
            let rows: Vec<NodeRow> = nodes.iter().map(node_row).collect();
            print_rows(&rows, &a.format, &NODE_HEADERS, node_cells)?;
            Ok(0)
        }
        NodeCmd::Inspect(a) => {
            let cl = Cluster::open(ctx).await?;
            if a.pretty {
                let mut code = 0;
                let mut first = true;
                for name in &a.nodes {
                    match get_node(&cl, name).await {
                        Ok(n) => {
                            if !first {
                                format::out("\n");
                            }
                            first = false;
                            format::out(&pretty(&n));
                        }
                        Err(e) => {
                            eprintln!("{}", control::error_line(&e));
                            code = 1;
                        }
                    }
                }
                return Ok(code);
            }
            super::container::inspect_each(&a.nodes, a.format.as_deref(), |name| {
                let cl = cl.clone();
                async move { objects::inspect_value(Kind::Node, &get_node(&cl, &name).await?) }
            })
            .await
        }
        NodeCmd::Update(a) => {
            // Check the flags before any call.
            apply_node_update(&mut NodeSpec::default(), &a)
                .map_err(|e| with_exit(125, e.into()))?;
            let cl = Cluster::open(ctx).await?;
            update_node(&cl, &a.node, |_, spec| {
                apply_node_update(spec, &a)?;
                Ok(true)
            })
            .await?;
            outln(&a.node);
            Ok(0)
        }
        NodeCmd::Promote(a) => {
            let cl = Cluster::open(ctx).await?;
            Ok(each(&a.nodes, |name| {
                let cl = cl.clone();
                async move {
                    let (_, wrote) = update_node(&cl, &name, |_, spec| {
                        if spec.desired_role == NodeRole::Manager as i32 {
                            return Ok(false);
                        }
                        spec.desired_role = NodeRole::Manager as i32;
                        Ok(true)
                    })
                    .await?;
                    if wrote {
                        outln(&format!(
                            "Node {name} promoted to a manager in the cluster."
                        ));
                    } else {
                        outln(&format!("Node {name} is already a manager."));
                    }
                    Ok(())
                }
            })
            .await)
        }
        NodeCmd::Demote(a) => {
            let cl = Cluster::open(ctx).await?;
            Ok(each(&a.nodes, |name| {
                let cl = cl.clone();
                async move {
                    let (n, wrote) = update_node(&cl, &name, |_, spec| {
                        if spec.desired_role == NodeRole::Worker as i32 {
                            return Ok(false);
                        }
                        spec.desired_role = NodeRole::Worker as i32;
                        Ok(true)
                    })
                    .await?;
                    if wrote && n.role == NodeRole::Manager as i32 {
                        outln(&format!(
                            "Manager {name} is being demoted: it is still a raft member (see `flotilla node ls`)."
                        ));
                    } else if wrote {
                        outln(&format!("Manager {name} demoted in the cluster."));
                    } else {
                        outln(&format!("Node {name} is already a worker."));
                    }
                    Ok(())
                }
            })
            .await)
        }
        NodeCmd::Rm(a) => {
            let cl = Cluster::open(ctx).await?;
            let force = a.force;
            Ok(each(&a.nodes, |name| {
                let cl = cl.clone();
                async move {
                    cl.api()
                        .remove_node(RemoveNodeRequest {
                            node: name.clone(),
                            force,
                        })
                        .await
                        .map_err(|s| cl.err(s))?;
                    outln(&name);
                    Ok(())
                }
            })
            .await)
        }
        NodeCmd::Ps(a) => {
            let desired_state =
                desired_state_filter(&a.filter).map_err(|e| with_exit(125, e.into()))?;
            check_format(&a.format)?;
            let cl = Cluster::open(ctx).await?;
            let mut nodes = Vec::new();
            for n in &a.nodes {
                nodes.push(get_node(&cl, n).await?.id);
            }
            print_tasks(
                &cl,
                ListTasksRequest {
                    services: vec![],
                    nodes,
                    desired_state,
                },
                a.quiet,
                a.no_trunc,
                &a.format,
            )
            .await?;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::control::v1::{
        ManagerStatus, Meta, NodeDescription, NodeState, NodeStatus, Platform, Resources,
    };

    fn node(
        id: &str,
        host: &str,
        state: NodeState,
        av: NodeAvailability,
        mgr: Option<(bool, &str)>,
    ) -> Node {
        Node {
            id: id.into(),
            meta: Some(Meta {
                version: 3,
                created_at: 1_000,
                updated_at: 1_000,
            }),
            spec: Some(NodeSpec {
                desired_role: if mgr.is_some() {
                    NodeRole::Manager
                } else {
                    NodeRole::Worker
                } as i32,
                availability: av as i32,
                labels: HashMap::new(),
            }),
            description: Some(NodeDescription {
                hostname: host.into(),
                engine_version: "0.1.0".into(),
                platform: Some(Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                }),
                resources: Some(Resources {
                    nano_cpus: 4_000_000_000,
                    memory_bytes: 8 << 30,
                    pids: 0,
                }),
                engine_labels: HashMap::new(),
            }),
            status: Some(NodeStatus {
                state: state as i32,
                message: String::new(),
                addr: "10.0.0.1".into(),
                last_heartbeat: 0,
            }),
            manager_status: mgr.map(|(leader, reach)| ManagerStatus {
                raft_id: 1,
                addr: "10.0.0.1:4242".into(),
                leader,
                reachability: reach.into(),
            }),
            role: if mgr.is_some() {
                NodeRole::Manager
            } else {
                NodeRole::Worker
            } as i32,
            cert_expires_at: 0,
            cert_serial: "0a1b".into(),
        }
    }

    #[test]
    fn ls_table() {
        let mut nodes = vec![
            node(
                "w2id",
                "worker2",
                NodeState::Down,
                NodeAvailability::Drain,
                None,
            ),
            node(
                "m1id",
                "manager1",
                NodeState::Ready,
                NodeAvailability::Active,
                Some((true, "reachable")),
            ),
            node(
                "m2id",
                "manager2",
                NodeState::Ready,
                NodeAvailability::Pause,
                Some((false, "unreachable")),
            ),
            node(
                "w1id",
                "worker1",
                NodeState::Ready,
                NodeAvailability::Active,
                None,
            ),
        ];
        sort_nodes(&mut nodes);
        let rows: Vec<NodeRow> = nodes.iter().map(node_row).collect();
        let body: Vec<Vec<String>> = rows.iter().map(node_cells).collect();
        assert_eq!(
            format::table(&NODE_HEADERS, &body),
            "ID     HOSTNAME   STATUS   AVAILABILITY   MANAGER STATUS   ENGINE VERSION\n\
             m1id   manager1   Ready    Active         Leader           0.1.0\n\
             m2id   manager2   Ready    Pause          Unreachable      0.1.0\n\
             w1id   worker1    Ready    Active                          0.1.0\n\
             w2id   worker2    Down     Drain                           0.1.0\n"
        );
        assert_eq!(
            serde_json::to_value(&rows[0]).unwrap(),
            serde_json::json!({
                "ID": "m1id", "Hostname": "manager1", "Status": "Ready", "Availability": "Active",
                "ManagerStatus": "Leader", "EngineVersion": "0.1.0"
            })
        );
    }

    #[test]
    fn filters() {
        let r = ls_request(&[
            "role=manager".into(),
            "label=zone=b".into(),
            "label=ssd".into(),
            "name=web".into(),
        ])
        .unwrap();
        assert_eq!(
            r,
            ListNodesRequest {
                names: vec!["web".into()],
                role: "manager".into(),
                labels: vec!["zone=b".into(), "ssd".into()],
            }
        );
        assert!(ls_request(&["role=boss".into()]).is_err());
        assert!(ls_request(&["color=red".into()]).is_err());
        assert_eq!(
            desired_state_filter(&["desired-state=running".into()]).unwrap(),
            "running"
        );
        assert!(desired_state_filter(&["desired-state=x".into()]).is_err());
    }

    #[test]
    fn update_edits_the_spec() {
        let mut spec = NodeSpec {
            desired_role: NodeRole::Worker as i32,
            availability: NodeAvailability::Active as i32,
            labels: [
                ("zone".to_string(), "a".to_string()),
                ("old".to_string(), "1".to_string()),
            ]
            .into(),
        };
        let a = NodeUpdateArgs {
            availability: Some("drain".into()),
            label_add: vec!["zone=b".into(), "ssd".into()],
            label_rm: vec!["old".into(), "absent".into()],
            role: Some("manager".into()),
            node: "n".into(),
        };
        apply_node_update(&mut spec, &a).unwrap();
        assert_eq!(
            spec,
            NodeSpec {
                desired_role: NodeRole::Manager as i32,
                availability: NodeAvailability::Drain as i32,
                labels: [
                    ("zone".to_string(), "b".to_string()),
                    ("ssd".to_string(), "".to_string())
                ]
                .into(),
            }
        );
        let bad = NodeUpdateArgs {
            label_add: vec!["=x".into()],
            ..Default::default()
        };
        assert!(apply_node_update(&mut spec, &bad).is_err());
    }

    #[test]
    fn pretty_text() {
        let n = node(
            "m1id",
            "manager1",
            NodeState::Ready,
            NodeAvailability::Active,
            Some((true, "reachable")),
        );
        assert_eq!(
            pretty(&n),
            "ID:                     m1id
Hostname:               manager1
Joined at:              1970-01-01T00:00:01Z
Status:
 State:                 Ready
 Availability:          Active
 Address:               10.0.0.1
Manager Status:
 Address:               10.0.0.1:4242
 Raft Status:           Reachable
 Leader:                Yes
Platform:
 Operating System:      linux
 Architecture:          x86_64
Resources:
 CPUs:                  4
 Memory:                8GiB
Engine Version:         0.1.0
TLS Info:
 Role:                  manager
 Certificate Serial:    0a1b
"
        );
    }
}
