//! `Control`: the cluster API of the CLI and integrators (admin or manager certificates).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flotilla_pki::{JoinToken, Role};
use flotilla_proto::control::v1::control_server::Control;
use flotilla_proto::control::v1::{
    self as pb, service_logs_message, service_spec::Mode, Cluster, Config, LogRequest, Meta, Node,
    NodeRole, NodeState, Secret, Service, Task, TaskState, UpdateState, UpdateStatus,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{status_of, validate, Ctx};
use crate::dispatcher::now_ms;
use crate::manager::random_id;
use crate::store::{Batch, Kind, State};

/// How long `node promote/demote` waits for the role to follow before answering.
const ROLE_CHANGE_WAIT: Duration = Duration::from_secs(15);

/// Whether a task has (or had) a container whose log can be read: observed RUNNING or later.
fn log_ready(t: &Task) -> bool {
    t.status.as_ref().map_or(0, |s| s.state) >= TaskState::Running as i32
}

fn node_names(state: &State) -> HashMap<String, String> {
    state
        .nodes
        .values()
        .map(|n| (n.id.clone(), node_name(n).to_string()))
        .collect()
}

fn by_node(tasks: Vec<Task>) -> BTreeMap<String, Vec<Task>> {
    let mut m: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for t in tasks {
        m.entry(t.node_id.clone()).or_default().push(t);
    }
    m
}

/// Streams the lines of `req`'s tasks on `node` (hostname `host`) into `tx`, and what cannot be
/// read as `Unavailable` items (one per task when the node is not connected).
async fn read_node_logs(
    dispatcher: Arc<crate::dispatcher::Dispatcher>,
    node: String,
    host: String,
    req: LogRequest,
    tx: mpsc::Sender<Result<pb::ServiceLogsMessage, Status>>,
) {
    let shown = if host.is_empty() {
        node.clone()
    } else {
        format!("{host} ({node})")
    };
    let unavailable = |text: String| pb::ServiceLogsMessage {
        item: Some(service_logs_message::Item::Unavailable(text)),
    };
    let task_ids = req.task_ids.clone();
    let Some((id, mut chunks)) = dispatcher.request_logs(&node, req).await else {
        for t in task_ids {
            let msg = unavailable(format!(
                "task {t} on node {shown}: the node is not connected, its logs cannot be read now"
            ));
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        return;
    };
    'read: loop {
        tokio::select! {
            _ = tx.closed() => break,
            chunk = chunks.recv() => {
                let Some(chunk) = chunk else {
                    let msg = unavailable(format!("node {shown}: its session ended while reading logs"));
                    let _ = tx.send(Ok(msg)).await;
                    break;
                };
                for line in chunk.lines {
                    let msg = pb::ServiceLogsMessage {
                        item: Some(service_logs_message::Item::Line(line)),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        break 'read;
                    }
                }
                if !chunk.error.is_empty() {
                    let _ = tx.send(Ok(unavailable(format!("node {shown}: {}", chunk.error)))).await;
                }
                if chunk.end {
                    break;
                }
            }
        }
    }
    dispatcher.end_logs(&node, id).await;
}

pub struct ControlService {
    pub ctx: Arc<Ctx>,
}

/// Finds an object by exact id, exact name, or unique id prefix.
fn resolve<'a, T>(
    kind: &str,
    map: &'a BTreeMap<String, T>,
    input: &str,
    name_of: impl Fn(&T) -> &str,
) -> Result<&'a T, Status> {
    resolve_with(&kind, map, input, &name_of, |n| {
        map.values().find(|o| name_of(o) == n)
    })
}

/// [`resolve`] for the kinds whose names are unique, through the store's name index.
fn resolve_named<'a, T>(
    state: &'a State,
    k: Kind,
    map: &'a BTreeMap<String, T>,
    input: &str,
    name_of: impl Fn(&T) -> &str,
) -> Result<&'a T, Status> {
    resolve_with(&k, map, input, &name_of, |n| {
        state.id_named(k, n).and_then(|id| map.get(id))
    })
}

/// A service, secret or config by id, name (the store's name index) or unique id prefix.
fn find_service<'a>(state: &'a State, input: &str) -> Result<&'a Service, Status> {
    resolve_named(state, Kind::Service, &state.services, input, service_name)
}

fn find_secret<'a>(state: &'a State, input: &str) -> Result<&'a Secret, Status> {
    resolve_named(state, Kind::Secret, &state.secrets, input, secret_name)
}

fn find_config<'a>(state: &'a State, input: &str) -> Result<&'a Config, Status> {
    resolve_named(state, Kind::Config, &state.configs, input, config_name)
}

/// An id, then a name (`by_name`), then an unambiguous id prefix.
fn resolve_with<'a, T>(
    kind: &dyn std::fmt::Display,
    map: &'a BTreeMap<String, T>,
    input: &str,
    name_of: &impl Fn(&T) -> &str,
    by_name: impl FnOnce(&str) -> Option<&'a T>,
) -> Result<&'a T, Status> {
    if input.is_empty() {
        return Err(Status::invalid_argument(format!("no {kind} given")));
    }
    if let Some(o) = map.get(input) {
        return Ok(o);
    }
    if let Some(o) = by_name(input) {
        return Ok(o);
    }
    let mut prefixed = map
        .range::<str, _>((std::ops::Bound::Included(input), std::ops::Bound::Unbounded))
        .take_while(|(id, _)| id.starts_with(input));
    match (prefixed.next(), prefixed.next()) {
        (Some((_, o)), None) => Ok(o),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "{kind} {input:?} is ambiguous: give more of the id"
        ))),
        _ => {
            let names: Vec<&str> = map.values().map(name_of).collect();
            let hint = closest(input, &names)
                .map(|n| format!(" (did you mean {n:?}?)"))
                .unwrap_or_default();
            Err(Status::not_found(format!("no such {kind}: {input}{hint}")))
        }
    }
}

/// The closest name by edit distance, if close enough to be a typo.
fn closest<'a>(input: &str, names: &[&'a str]) -> Option<&'a str> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    names
        .iter()
        .map(|n| (dist(input, n), *n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 3))
        .min()
        .map(|(_, n)| n)
}

fn node_name(n: &Node) -> &str {
    n.description.as_ref().map_or("", |d| d.hostname.as_str())
}

fn service_name(s: &Service) -> &str {
    s.spec.as_ref().map_or("", |x| x.name.as_str())
}

fn secret_name(s: &Secret) -> &str {
    s.spec.as_ref().map_or("", |x| x.name.as_str())
}

fn config_name(s: &Config) -> &str {
    s.spec.as_ref().map_or("", |x| x.name.as_str())
}

fn cluster(state: &State) -> Result<Cluster, Status> {
    state
        .cluster
        .clone()
        .ok_or_else(|| Status::unavailable("the cluster is still initializing"))
}

fn meta_now() -> Option<Meta> {
    let now = now_ms();
    Some(Meta {
        version: 0,
        created_at: now,
        updated_at: now,
    })
}

fn touch(meta: &mut Option<Meta>, version: u64) {
    let m = meta.get_or_insert_with(Default::default);
    if version != 0 {
        m.version = version;
    }
    m.updated_at = now_ms();
}

fn resolve_refs(state: &State, spec: &mut pb::ServiceSpec) -> Result<(), Status> {
    let Some(c) = spec.task.as_mut().and_then(|t| t.container.as_mut()) else {
        return Ok(());
    };
    for r in &mut c.secrets {
        let key = if r.secret_id.is_empty() {
            r.secret_name.clone()
        } else {
            r.secret_id.clone()
        };
        let s = find_secret(state, &key)?;
        r.secret_id = s.id.clone();
        r.secret_name = secret_name(s).to_string();
        if r.target.is_empty() {
            r.target = r.secret_name.clone();
        }
        if r.target.contains('/') || r.target == ".." || r.target == "." {
            return Err(Status::invalid_argument(format!(
                "secret target {:?} must be a file name under /run/secrets",
                r.target
            )));
        }
        if r.mode == 0 {
            r.mode = 0o444;
        }
    }
    for r in &mut c.configs {
        let key = if r.config_id.is_empty() {
            r.config_name.clone()
        } else {
            r.config_id.clone()
        };
        let s = find_config(state, &key)?;
        r.config_id = s.id.clone();
        r.config_name = config_name(s).to_string();
        if r.target.is_empty() {
            r.target = format!("/{}", r.config_name);
        }
        if !r.target.starts_with('/') {
            return Err(Status::invalid_argument(format!(
                "config target {:?} must be an absolute path",
                r.target
            )));
        }
        if r.mode == 0 {
            r.mode = 0o444;
        }
    }
    Ok(())
}

fn uses_secret(s: &Service, id: &str) -> bool {
    s.spec
        .as_ref()
        .and_then(|x| x.task.as_ref())
        .and_then(|t| t.container.as_ref())
        .is_some_and(|c| c.secrets.iter().any(|r| r.secret_id == id))
}

fn uses_config(s: &Service, id: &str) -> bool {
    s.spec
        .as_ref()
        .and_then(|x| x.task.as_ref())
        .and_then(|t| t.container.as_ref())
        .is_some_and(|c| c.configs.iter().any(|r| r.config_id == id))
}

fn is_running(t: &Task) -> bool {
    t.desired_state == TaskState::Running as i32
        && t.status.as_ref().map(|s| s.state) == Some(TaskState::Running as i32)
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn get_cluster(
        &self,
        req: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::GetClusterResponse>, Status> {
        self.ctx.require_admin(&req)?;
        self.ctx.barrier().await?;
        Ok(Response::new(self.cluster_view()?))
    }

    async fn update_cluster(
        &self,
        req: Request<pb::UpdateClusterRequest>,
    ) -> Result<Response<pb::GetClusterResponse>, Status> {
        self.ctx.require_admin(&req)?;
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("no cluster spec given"))?;
        validate::cluster_spec(&spec).map_err(Status::invalid_argument)?;
        for _ in 0..3 {
            self.ctx.barrier().await?;
            let mut c = cluster(&self.ctx.store.read())?;
            let name = c.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            c.spec = Some(pb::ClusterSpec {
                name,
                ..spec.clone()
            });
            touch(&mut c.meta, 0);
            let mut b = Batch::new();
            b.update(c);
            match self.ctx.proposer.propose(b.into_proto()).await {
                Ok(_) => return Ok(Response::new(self.cluster_view()?)),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(status_of(e)),
            }
        }
        Err(Status::aborted(
            "the cluster changed concurrently three times: nothing updated, retry",
        ))
    }

    async fn get_join_tokens(
        &self,
        req: Request<pb::GetJoinTokensRequest>,
    ) -> Result<Response<pb::GetJoinTokensResponse>, Status> {
        self.ctx.require_admin(&req)?;
        let rotate = req.into_inner().rotate;
        if !rotate.is_empty() {
            let role = match rotate.as_str() {
                "worker" => Role::Worker,
                "manager" => Role::Manager,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "cannot rotate {other:?}: say worker or manager"
                    )))
                }
            };
            let mut rotated = false;
            for _ in 0..3 {
                self.ctx.barrier().await?;
                let mut c = cluster(&self.ctx.store.read())?;
                let digest = flotilla_pki::pem_digest(&c.root_ca_cert)
                    .map_err(|e| Status::internal(e.to_string()))?;
                let token = JoinToken::generate(&digest, role)
                    .map_err(|e| Status::internal(e.to_string()))?
                    .to_string();
                super::set_join_token(&mut c, role, &token, &self.ctx.data_key)
                    .map_err(|e| Status::internal(e.to_string()))?;
                touch(&mut c.meta, 0);
                let mut b = Batch::new();
                b.update(c);
                match self.ctx.proposer.propose(b.into_proto()).await {
                    Ok(_) => {
                        rotated = true;
                        break;
                    }
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err(status_of(e)),
                }
            }
            if !rotated {
                // Never hand back the old token as if it were the new one.
                return Err(Status::aborted(
                    "the cluster changed concurrently three times: the token was not rotated, retry",
                ));
            }
        }
        self.ctx.barrier().await?;
        let state = self.ctx.store.read();
        let c = cluster(&state)?;
        let raft = self.ctx.membership.summary();
        Ok(Response::new(pb::GetJoinTokensResponse {
            worker: super::join_token(&c, Role::Worker, &self.ctx.data_key)?,
            manager: super::join_token(&c, Role::Manager, &self.ctx.data_key)?,
            manager_addrs: raft.members.iter().map(|m| m.1.clone()).collect(),
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.ctx.require_admin(&req)?;
        let r = req.into_inner();
        self.ctx.barrier().await?;
        let raft = self.ctx.membership.summary();
        let state = self.ctx.store.read();
        let nodes = state
            .nodes
            .values()
            .filter(|n| {
                r.names.is_empty()
                    || r.names
                        .iter()
                        .any(|x| n.id.starts_with(x.as_str()) || node_name(n) == x)
            })
            .filter(|n| match r.role.as_str() {
                "" => true,
                "manager" => n.role == NodeRole::Manager as i32,
                "worker" => n.role == NodeRole::Worker as i32,
                _ => false,
            })
            .filter(|n| {
                r.labels.iter().all(|l| {
                    let labels = n.spec.as_ref().map(|s| &s.labels);
                    match l.split_once('=') {
                        Some((k, v)) => labels.and_then(|m| m.get(k)).is_some_and(|x| x == v),
                        None => labels.is_some_and(|m| m.contains_key(l)),
                    }
                })
            })
            .cloned()
            .map(|n| with_manager_status(n, &raft))
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn get_node(&self, req: Request<pb::GetNodeRequest>) -> Result<Response<Node>, Status> {
        self.ctx.require_admin(&req)?;
        self.ctx.barrier().await?;
        let raft = self.ctx.membership.summary();
        let state = self.ctx.store.read();
        let n = resolve("node", &state.nodes, &req.get_ref().node, node_name)?.clone();
        Ok(Response::new(with_manager_status(n, &raft)))
    }

    async fn update_node(
        &self,
        req: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<Node>, Status> {
        self.ctx.require_admin(&req)?;
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("no node spec given"))?;
        // The write below is a compare-and-set on the version read here, so a stale read can
        // only make it fail, never overwrite a newer node. The leader, which applied every write
        // it acknowledged, reads its own store and takes a read barrier only when the read may
        // have been stale (node not found, not the caller's version, a conflict): one consensus
        // round instead of two. Any other manager takes the barrier first.
        let mut fresh = !self.ctx.membership.summary().is_leader();
        let (mut n, role_change) = loop {
            if fresh {
                self.ctx.barrier().await?;
            }
            let found = resolve("node", &self.ctx.store.read().nodes, &r.node, node_name).cloned();
            let mut n = match found {
                Ok(n) => n,
                Err(_) if !fresh => {
                    fresh = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let current_version = n.meta.map_or(0, |m| m.version);
            if r.version != 0 && r.version != current_version {
                if !fresh {
                    fresh = true;
                    continue;
                }
                return Err(Status::aborted(format!(
                    "node {} changed since it was read (version {}, now {current_version}): retry",
                    n.id, r.version
                )));
            }
            let old_role = n.spec.as_ref().map_or(n.role, |s| s.desired_role);
            let demoting =
                spec.desired_role == NodeRole::Worker as i32 && old_role != spec.desired_role;
            if demoting {
                crate::manager::roles::demotion_check(&self.ctx.membership.summary(), &n.id)
                    .map_err(Status::failed_precondition)?;
            }
            let role_change = old_role != spec.desired_role;
            n.spec = Some(spec.clone());
            touch(&mut n.meta, 0);
            let mut b = Batch::new();
            b.update(n.clone());
            let index = match self.ctx.proposer.propose(b.into_proto()).await {
                Ok(index) => index,
                Err(e) if !fresh && e.is_conflict() => {
                    fresh = true;
                    continue;
                }
                Err(e) => return Err(status_of(e)),
            };
            if let Some(m) = n.meta.as_mut() {
                m.version = index;
            }
            break (n, role_change);
        };
        if role_change {
            // The leader's role loop makes the role follow (a demoted manager leaves the raft
            // group first): answer once it has, or with the node as it is after a while.
            let want = n.spec.as_ref().map_or(0, |s| s.desired_role);
            let deadline = tokio::time::Instant::now() + ROLE_CHANGE_WAIT;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Demoting the manager serving this call: it stops once it sees its removal,
                // so answer as soon as raft has applied it.
                if n.id == self.ctx.node_id
                    && !self
                        .ctx
                        .membership
                        .summary()
                        .members
                        .iter()
                        .any(|m| m.2 == n.id)
                {
                    n.role = want;
                    break;
                }
                if self.ctx.barrier().await.is_err() {
                    continue;
                }
                let now = self.ctx.store.read().nodes.get(&n.id).cloned();
                match now {
                    Some(now) if now.role == want => {
                        n = now;
                        break;
                    }
                    Some(now) => n = now,
                    None => return Err(Status::not_found(format!("node {} was removed", n.id))),
                }
            }
        }
        Ok(Response::new(with_manager_status(
            n,
            &self.ctx.membership.summary(),
        )))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.ctx.require_admin(&req)?;
        let r = req.into_inner();
        self.ctx.barrier().await?;
        let n = resolve("node", &self.ctx.store.read().nodes, &r.node, node_name)?.clone();
        if n.role == NodeRole::Manager as i32 {
            return Err(Status::failed_precondition(format!(
                "node {} is a manager: demote it first (`flotilla node demote {}`)",
                n.id, n.id
            )));
        }
        let down = n.status.as_ref().map(|s| s.state) != Some(NodeState::Ready as i32);
        if !down && !r.force {
            return Err(Status::failed_precondition(format!(
                "node {} is not down and can't be removed: stop its agent (or drain it), or use --force",
                n.id
            )));
        }
        let mut b = Batch::new();
        b.remove(n);
        self.ctx
            .proposer
            .propose(b.into_proto())
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn create_service(
        &self,
        req: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        self.ctx.require_admin(&req)?;
        let mut spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("no service spec given"))?;
        validate::service_spec(&spec).map_err(Status::invalid_argument)?;
        self.ctx.barrier().await?;
        resolve_refs(&self.ctx.store.read(), &mut spec)?;
        let service = Service {
            id: random_id(),
            meta: meta_now(),
            spec: Some(spec),
            previous_spec: None,
            spec_version: 1,
            update_status: None,
        };
        let mut b = Batch::new();
        b.create(service.clone());
        let index = self
            .ctx
            .proposer
            .propose(b.into_proto())
            .await
            .map_err(status_of)?;
        let stored = self.ctx.store.read().services.get(&service.id).cloned();
        Ok(Response::new(stored.unwrap_or_else(|| {
            let mut s = service;
            if let Some(m) = s.meta.as_mut() {
                m.version = index;
            }
            s
        })))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        self.ctx.require_admin(&req)?;
        self.ctx.barrier().await?;
        let state = self.ctx.store.read();
        let s = resolve(
            "service",
            &state.services,
            &req.get_ref().service,
            service_name,
        )?;
        Ok(Response::new(s.clone()))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        self.ctx.require_admin(&req)?;
        let r = req.into_inner();
        self.ctx.barrier().await?;
        let state = self.ctx.store.read();
        let mut running: HashMap<&str, u64> = HashMap::new();
        for t in state.tasks.values().filter(|t| is_running(t)) {
            *running.entry(t.service_id.as_str()).or_default() += 1;
        }
        let eligible_nodes = state
            .nodes
            .values()
            .filter(|n| {
                n.status.as_ref().map(|s| s.state) == Some(NodeState::Ready as i32)
                    && n.spec.as_ref().map_or(0, |s| s.availability)
                        != pb::NodeAvailability::Drain as i32
            })
            .count() as u64;
        let services = state
            .services
            .values()
            .filter(|s| {
                r.names.is_empty()
                    || r.names
                        .iter()
                        .any(|n| s.id.starts_with(n.as_str()) || service_name(s) == n)
            })
            .filter(|s| {
                r.labels.iter().all(|l| {
                    let labels = s.spec.as_ref().map(|x| &x.labels);
                    match l.split_once('=') {
                        Some((k, v)) => labels.and_then(|m| m.get(k)).is_some_and(|x| x == v),
                        None => labels.is_some_and(|m| m.contains_key(l)),
                    }
                })
            })
            .map(|s| {
                let desired = match s.spec.as_ref().and_then(|x| x.mode.as_ref()) {
                    Some(Mode::Replicated(r)) => r.replicas,
                    // One per node that has a task meant to run (two during a start-first
                    // update count once).
                    Some(Mode::Global(_)) => state
                        .tasks
                        .values()
                        .filter(|t| {
                            t.service_id == s.id && t.desired_state <= TaskState::Running as i32
                        })
                        .map(|t| t.node_id.as_str())
                        .collect::<std::collections::HashSet<_>>()
                        .len()
                        .max(eligible_nodes.min(1) as usize)
                        as u64,
                    None => 0,
                };
                pb::ServiceSummary {
                    service: Some(s.clone()),
                    running_tasks: running.get(s.id.as_str()).copied().unwrap_or(0),
                    desired_tasks: desired,
                }
            })
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        self.ctx.require_admin(&req)?;
        let r = req.into_inner();
        // A blind update (version 0) is retried on a conflict with the orchestrators' own
        // writes to the service (update status); a versioned one reports it.
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.ctx.barrier().await?;
            let mut s = resolve(
                "service",
                &self.ctx.store.read().services,
                &r.service,
                service_name,
            )?
            .clone();
            let current_version = s.meta.map_or(0, |m| m.version);
            if r.version != 0 && r.version != current_version {
                return Err(Status::aborted(format!(
                "service {} changed since it was read (version {}, now {current_version}): retry",
                service_name(&s),
                r.version
            )));
            }
            let (new_spec, state) = if r.rollback {
                let prev = s.previous_spec.clone().ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "service {} has no previous spec to roll back to",
                        service_name(&s)
                    ))
                })?;
                (prev, UpdateState::RollbackStarted)
            } else {
                let mut spec = r
                    .spec
                    .clone()
                    .ok_or_else(|| Status::invalid_argument("no service spec given"))?;
                validate::service_spec(&spec).map_err(Status::invalid_argument)?;
                resolve_refs(&self.ctx.store.read(), &mut spec)?;
                (spec, UpdateState::Updating)
            };
            if new_spec.name != service_name(&s) {
                return Err(Status::invalid_argument(
                    "a service cannot be renamed (create a new one)",
                ));
            }
            let mode_kind = |sp: &pb::ServiceSpec| matches!(sp.mode, Some(Mode::Global(_)));
            if s.spec.as_ref().map(mode_kind) != Some(mode_kind(&new_spec)) {
                return Err(Status::invalid_argument(
                    "a service's mode (replicated/global) cannot change",
                ));
            }
            let task_changed = s.spec.as_ref().map(|x| (&x.task, &x.endpoint))
                != Some((&new_spec.task, &new_spec.endpoint));
            s.previous_spec = s.spec.take();
            s.spec = Some(new_spec);
            s.spec_version += 1;
            if task_changed {
                s.update_status = Some(UpdateStatus {
                    state: state as i32,
                    started_at: now_ms(),
                    completed_at: 0,
                    message: if r.rollback {
                        "manually requested rollback".into()
                    } else {
                        "update in progress".into()
                    },
                });
            }
            touch(&mut s.meta, 0);
            let mut b = Batch::new();
            b.update(s.clone());
            match self.ctx.proposer.propose(b.into_proto()).await {
                Ok(_) => {}
                Err(e) if e.is_conflict() && r.version == 0 && attempt < 3 => continue,
                Err(e) => return Err(status_of(e)),
            }
            let stored = self.ctx.store.read().services.get(&s.id).cloned();
            return Ok(Response::new(stored.unwrap_or(s)));
        }
    }

    async fn remove_service(
        &self,
        req: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        self.ctx.require_admin(&req)?;
        self.ctx.barrier().await?;
        let s = resolve(
            "service",
            &self.ctx.store.read().services,
            &req.get_ref().service,
            service_name,
        )?
        .clone();
        let mut b = Batch::new();
        b.remove(s);
        self.ctx
            .proposer
            .propose(b.into_proto())
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::RemoveServiceResponse {}))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.ctx.require_admin(&req)?;
        let r = req.into_inner();
        self.ctx.barrier().await?;
        let state = self.ctx.store.read();
        let mut service_ids = Vec::new();
        for s in &r.services {
            service_ids.push(find_service(&state, s)?.id.clone());
        }
        let mut node_ids = Vec::new();
        for n in &r.nodes {
            node_ids.push(resolve("node", &state.nodes, n, node_name)?.id.clone());
        }
        let tasks: Vec<Task> = state
            .tasks
            .values()
            .filter(|t| service_ids.is_empty() || service_ids.contains(&t.service_id))
            .filter(|t| node_ids.is_empty() || node_ids.contains(&t.node_id))
            .filter(|t| match r.desired_state.as_str() {
                "" => true,
                "running" => t.desired_state <= TaskState::Running as i32,
                "shutdown" => t.desired_state >= TaskState::Shutdown as i32,
                "accepted" => t.desired_state == TaskState::Accepted as i32,
                _ => true,
            })
            .cloned()
            .collect();
        let node_names = tasks
            .iter()
            .filter_map(|t| state.nodes.get(&t.node_id))
            .map(|n| (n.id.clone(), node_name(n).to_string()))
            .collect();
        Ok(Response::new(pb::ListTasksResponse { tasks, node_names }))
    }

    type ServiceLogsStream = ReceiverStream<Result<pb::ServiceLogsMessage, Status>>;

    async fn service_logs(
        &self,
        req: Request<pb::ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        self.ctx.require_admin(&req)?;
        let r = req.into_inner();
        let raft = self.ctx.membership.summary();
        if !raft.is_leader() {
            // Agents' sessions live on the leader: ask it.
            let addr = raft.leader_addr().ok_or_else(|| {
                Status::unavailable("no raft leader: the cluster has lost its quorum")
            })?;
            let mut client = pb::control_client::ControlClient::new((self.ctx.dial)(addr.as_str()));
            let mut upstream = client.service_logs(r).await?.into_inner();
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                while let Some(m) = upstream.message().await.transpose() {
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
            });
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        self.ctx.barrier().await?;
        // Subscribed before the read: a task that starts after it is seen by the follower.
        let mut changes = self.ctx.store.watch();
        let (service_id, tasks, hosts) = {
            let state = self.ctx.store.read();
            let s = find_service(&state, &r.service)?;
            let tasks: Vec<Task> = state
                .tasks_of_service(&s.id)
                .filter(|t| !t.node_id.is_empty())
                .filter(|t| !r.follow || log_ready(t))
                .cloned()
                .collect();
            (s.id.clone(), tasks, node_names(&state))
        };
        let (tx, rx) = mpsc::channel(256);
        let mut requested: std::collections::HashSet<String> =
            tasks.iter().map(|t| t.id.clone()).collect();
        let request = LogRequest {
            request_id: 0,
            task_ids: Vec::new(),
            follow: r.follow,
            tail: r.tail,
            since: r.since,
        };
        for (node, tasks) in by_node(tasks) {
            let host = hosts.get(&node).cloned().unwrap_or_default();
            let req = LogRequest {
                task_ids: tasks.iter().map(|t| t.id.clone()).collect(),
                ..request.clone()
            };
            let dispatcher = Arc::clone(&self.ctx.dispatcher);
            tokio::spawn(read_node_logs(dispatcher, node, host, req, tx.clone()));
        }
        if r.follow {
            // Tasks that start later (scale up, replacements, updates) join the stream with
            // all their lines, until the client goes or the service is removed.
            let store = self.ctx.store.clone();
            let dispatcher = Arc::clone(&self.ctx.dispatcher);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        ev = changes.recv() => {
                            if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                                return;
                            }
                        }
                    }
                    let (fresh, hosts) = {
                        let state = store.read();
                        if !state.services.contains_key(&service_id) {
                            return;
                        }
                        let fresh: Vec<Task> = state
                            .tasks_of_service(&service_id)
                            .filter(|t| !t.node_id.is_empty() && log_ready(t))
                            .filter(|t| !requested.contains(&t.id))
                            .cloned()
                            .collect();
                        (fresh, node_names(&state))
                    };
                    for (node, tasks) in by_node(fresh) {
                        requested.extend(tasks.iter().map(|t| t.id.clone()));
                        let host = hosts.get(&node).cloned().unwrap_or_default();
                        let req = LogRequest {
                            task_ids: tasks.iter().map(|t| t.id.clone()).collect(),
                            tail: 0,
                            ..request.clone()
                        };
                        let d = Arc::clone(&dispatcher);
                        tokio::spawn(read_node_logs(d, node, host, req, tx.clone()));
                    }
                }
            });
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn create_secret(
        &self,
        req: Request<pb::CreateSecretRequest>,
    ) -> Result<Response<Secret>, Status> {
        self.ctx.require_admin(&req)?;
        let mut spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("no secret spec given"))?;
        validate::name("secret", &spec.name).map_err(Status::invalid_argument)?;
        if spec.data.len() > 500 * 1024 {
            return Err(Status::invalid_argument(
                "a secret is at most 500 KiB (like Docker's)",
            ));
        }
        let id = random_id();
        let data = std::mem::take(&mut spec.data);
        let digest = self.ctx.data_key.digest("secret", &data);
        let sealed = self
            .ctx
            .data_key
            .seal(&data, id.as_bytes())
            .map_err(|e| Status::internal(e.to_string()))?;
        let secret = Secret {
            id,
            meta: meta_now(),
            spec: Some(spec),
            data_sealed: sealed,
            digest,
        };
        let mut b = Batch::new();
        b.create(secret.clone());
        self.ctx
            .proposer
            .propose(b.into_proto())
            .await
            .map_err(status_of)?;
        let stored = self.ctx.store.read().secrets.get(&secret.id).cloned();
        Ok(Response::new(redact(stored.unwrap_or(secret))))
    }

    async fn get_secret(
        &self,
        req: Request<pb::GetByNameRequest>,
    ) -> Result<Response<Secret>, Status> {
        self.ctx.require_admin(&req)?;
        self.ctx.barrier().await?;
        let state = self.ctx.store.read();
        let s = find_secret(&state, &req.get_ref().name)?;
        Ok(Response::new(redact(s.clone())))
    }

    async fn list_secrets(
        &self,
        req: Request<pb::ListByNameRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        self.ctx.require_admin(&req)?;
        let names = req.into_inner().names;
        self.ctx.barrier().await?;
        let state = self.ctx.store.read();
        let secrets = state
            .secrets
            .values()
            .filter(|s| names.is_empty() || names.iter().any(|n| secret_name(s) == n))
            .cloned()
            .map(redact)
            .collect();
        Ok(Response::new(pb::ListSecretsResponse { secrets }))
    }

    async fn remove_secret(
        &self,
        req: Request<pb::GetByNameRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        self.ctx.require_admin(&req)?;
        self.ctx.barrier().await?;
        let s = {
            let state = self.ctx.store.read();
            let s = find_secret(&state, &req.get_ref().name)?.clone();
            let users: Vec<&str> = state
                .services
                .values()
                .filter(|x| uses_secret(x, &s.id))
                .map(service_name)
                .collect();
            if !users.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "secret {} is in use by service(s) {}: remove it from them first",
                    secret_name(&s),
                    users.join(", ")
                )));
            }
            s
        };
        let mut b = Batch::new();
        b.remove(s);
        self.ctx
            .proposer
            .propose(b.into_proto())
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn create_config(
        &self,
        req: Request<pb::CreateConfigRequest>,
    ) -> Result<Response<Config>, Status> {
        self.ctx.require_admin(&req)?;
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("no config spec given"))?;
        validate::name("config", &spec.name).map_err(Status::invalid_argument)?;
        if spec.data.len() > 1000 * 1024 {
            return Err(Status::invalid_argument("a config is at most 1000 KiB"));
        }
        let config = Config {
            id: random_id(),
            meta: meta_now(),
            spec: Some(spec),
        };
        let mut b = Batch::new();
        b.create(config.clone());
        self.ctx
            .proposer
            .propose(b.into_proto())
            .await
            .map_err(status_of)?;
        let stored = self.ctx.store.read().configs.get(&config.id).cloned();
        Ok(Response::new(stored.unwrap_or(config)))
    }

    async fn get_config(
        &self,
        req: Request<pb::GetByNameRequest>,
    ) -> Result<Response<Config>, Status> {
        self.ctx.require_admin(&req)?;
        self.ctx.barrier().await?;
        let state = self.ctx.store.read();
        let c = find_config(&state, &req.get_ref().name)?;
        Ok(Response::new(c.clone()))
    }

    async fn list_configs(
        &self,
        req: Request<pb::ListByNameRequest>,
    ) -> Result<Response<pb::ListConfigsResponse>, Status> {
        self.ctx.require_admin(&req)?;
        let names = req.into_inner().names;
        self.ctx.barrier().await?;
        let state = self.ctx.store.read();
        let configs = state
            .configs
            .values()
            .filter(|s| names.is_empty() || names.iter().any(|n| config_name(s) == n))
            .cloned()
            .collect();
        Ok(Response::new(pb::ListConfigsResponse { configs }))
    }

    async fn remove_config(
        &self,
        req: Request<pb::GetByNameRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        self.ctx.require_admin(&req)?;
        self.ctx.barrier().await?;
        let c = {
            let state = self.ctx.store.read();
            let c = find_config(&state, &req.get_ref().name)?.clone();
            let users: Vec<&str> = state
                .services
                .values()
                .filter(|x| uses_config(x, &c.id))
                .map(service_name)
                .collect();
            if !users.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "config {} is in use by service(s) {}: remove it from them first",
                    config_name(&c),
                    users.join(", ")
                )));
            }
            c
        };
        let mut b = Batch::new();
        b.remove(c);
        self.ctx
            .proposer
            .propose(b.into_proto())
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::RemoveResponse {}))
    }
}

/// Secrets leave the API without their data (sealed or not).
fn redact(mut s: Secret) -> Secret {
    s.data_sealed.clear();
    if let Some(spec) = s.spec.as_mut() {
        spec.data.clear();
    }
    s
}

/// Fills a manager node's manager status from raft's view.
fn with_manager_status(mut n: Node, raft: &super::RaftSummary) -> Node {
    if let Some(m) = raft.members.iter().find(|m| m.2 == n.id) {
        n.manager_status = Some(pb::ManagerStatus {
            raft_id: m.0,
            addr: m.1.clone(),
            leader: m.0 == raft.leader_raft_id,
            reachability: if raft.learners.contains(&m.0) {
                "catching up".into()
            } else if m.0 == raft.raft_id || raft.reachable.contains(&m.0) {
                "reachable".into()
            } else {
                "unreachable".into()
            },
        });
    }
    n
}

impl ControlService {
    /// The cluster as `GetCluster` answers it, from the local store (after a barrier).
    fn cluster_view(&self) -> Result<pb::GetClusterResponse, Status> {
        let raft = self.ctx.membership.summary();
        let state = self.ctx.store.read();
        let c = cluster(&state)?;
        let managers = raft
            .members
            .iter()
            .map(|(rid, addr, node)| pb::ManagerInfo {
                node_id: node.clone(),
                raft_id: *rid,
                addr: addr.clone(),
                leader: *rid == raft.leader_raft_id,
                reachable: *rid == raft.raft_id || raft.reachable.contains(rid),
            })
            .collect::<Vec<_>>();
        let leader_node_id = managers
            .iter()
            .find(|m| m.leader)
            .map(|m| m.node_id.clone())
            .unwrap_or_default();
        Ok(pb::GetClusterResponse {
            id: c.id.clone(),
            spec: c.spec.clone(),
            managers,
            leader_node_id,
            term: raft.term,
            commit_index: raft.commit_index,
            nodes: state.nodes.len() as u64,
            services: state.services.len() as u64,
            tasks: state.tasks.len() as u64,
            node_id: self.ctx.node_id.clone(),
            root_ca_cert: c.root_ca_cert.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_by_id_name_prefix_and_suggests() {
        let mut m = BTreeMap::new();
        for (id, name) in [("abc123", "web"), ("abd456", "api")] {
            m.insert(id.to_string(), (id.to_string(), name.to_string()));
        }
        fn name(x: &(String, String)) -> &str {
            x.1.as_str()
        }
        assert_eq!(
            resolve("service", &m, "web", name).expect("name").0,
            "abc123"
        );
        assert_eq!(
            resolve("service", &m, "abd", name).expect("prefix").1,
            "api"
        );
        let e = resolve("service", &m, "ab", name).expect_err("ambiguous");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = resolve("service", &m, "wbe", name).expect_err("missing");
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(e.message(), "no such service: wbe (did you mean \"web\"?)");
    }

    #[test]
    fn resolve_named_uses_the_name_index_and_id_prefixes() {
        let mut state = State::default();
        let mut b = Batch::new();
        for (id, name) in [("abc123", "web"), ("abd456", "api"), ("web", "other")] {
            b.create(pb::Service {
                id: id.into(),
                spec: Some(pb::ServiceSpec {
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        state.apply(1, &b.into_proto()).expect("create");
        let find = |input: &str| find_service(&state, input).map(|s| s.id.clone());
        // An id wins over a name; names and unambiguous prefixes resolve.
        assert_eq!(find("web").expect("id"), "web");
        assert_eq!(find("api").expect("name"), "abd456");
        assert_eq!(find("other").expect("name"), "web");
        assert_eq!(find("abc").expect("prefix"), "abc123");
        assert_eq!(
            find("ab").expect_err("ambiguous").code(),
            tonic::Code::InvalidArgument
        );
        let e = find("apj").expect_err("missing");
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(e.message(), "no such service: apj (did you mean \"api\"?)");
        assert_eq!(
            find("").expect_err("empty").code(),
            tonic::Code::InvalidArgument
        );
    }
    mod update_node_reads {
        use super::super::*;
        use crate::api::test_support::{self, Behind};
        use flotilla_pki::{MtlsConnectInfo, PeerIdentity, PeerRole};

        fn node(id: &str, labels: &[(&str, &str)]) -> pb::StoreBatch {
            let mut b = Batch::new();
            b.create(Node {
                id: id.into(),
                role: NodeRole::Worker as i32,
                spec: Some(pb::NodeSpec {
                    desired_role: NodeRole::Worker as i32,
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            b.into_proto()
        }

        fn api(leader: bool) -> (ControlService, Arc<Behind>) {
            let (ctx, p) = test_support::ctx(leader);
            (ControlService { ctx }, p)
        }

        fn update(node: &str, version: u64, zone: &str) -> Request<pb::UpdateNodeRequest> {
            let mut r = Request::new(pb::UpdateNodeRequest {
                node: node.into(),
                version,
                spec: Some(pb::NodeSpec {
                    desired_role: NodeRole::Worker as i32,
                    labels: [("zone".to_string(), zone.to_string())].into(),
                    ..Default::default()
                }),
            });
            r.extensions_mut().insert(MtlsConnectInfo {
                remote_addr: None,
                local_addr: None,
                peer_certs: None,
                identity: Some(Ok(PeerIdentity {
                    node_id: "admin-test".into(),
                    cluster_id: "c1".into(),
                    role: PeerRole::Admin,
                    serial: "1".into(),
                })),
            });
            r
        }

        fn zone(p: &Behind, id: &str) -> String {
            p.store.read().nodes[id].spec.as_ref().unwrap().labels["zone"].clone()
        }

        #[tokio::test]
        async fn the_leader_skips_the_read_barrier_unless_its_read_may_be_stale() {
            // Up to date: one consensus round, no barrier.
            let (api, p) = api(true);
            p.apply(node("n1", &[])).unwrap();
            let n = api.update_node(update("n1", 0, "a")).await.expect("update");
            assert_eq!(n.get_ref().spec.as_ref().unwrap().labels["zone"], "a");
            assert_eq!(p.barriers(), 0);

            // A node the leader has not applied yet: not "not found", a barrier and found.
            p.behind.lock().unwrap().push(node("n2", &[]));
            api.update_node(update("n2", 0, "b"))
                .await
                .expect("found after a barrier");
            assert_eq!(zone(&p, "n2"), "b");
            assert_eq!(p.barriers(), 1);

            // A committed change the leader has not applied: its compare-and-set conflicts,
            // it reads again after a barrier and writes on top of that change.
            let mut b = Batch::new();
            let mut changed = p.store.read().nodes["n1"].clone();
            changed.spec.as_mut().unwrap().availability = pb::NodeAvailability::Drain as i32;
            b.update(changed);
            p.behind.lock().unwrap().push(b.into_proto());
            api.update_node(update("n1", 0, "c"))
                .await
                .expect("retried after a conflict");
            let n1 = p.store.read().nodes["n1"].clone();
            assert_eq!(n1.spec.as_ref().unwrap().labels["zone"], "c");
            assert_eq!(p.barriers(), 2);

            // The caller's version differs: checked again after a barrier, then refused.
            let e = api
                .update_node(update("n1", 1, "d"))
                .await
                .expect_err("stale version");
            assert_eq!(e.code(), tonic::Code::Aborted);
            assert!(e.message().contains("changed since it was read"), "{e:?}");
            assert_eq!(p.barriers(), 3);
            assert_eq!(zone(&p, "n1"), "c");

            // Missing everywhere: not found after one barrier.
            let e = api
                .update_node(update("n9", 0, "e"))
                .await
                .expect_err("missing");
            assert_eq!(e.code(), tonic::Code::NotFound);
            assert_eq!(p.barriers(), 4);
        }

        #[tokio::test]
        async fn a_follower_reads_after_a_barrier() {
            let (api, p) = api(false);
            p.behind.lock().unwrap().push(node("n1", &[("zone", "a")]));
            api.update_node(update("n1", 0, "b")).await.expect("update");
            assert_eq!(zone(&p, "n1"), "b");
            assert_eq!(p.barriers(), 1);
        }
    }
}
