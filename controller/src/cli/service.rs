//! `flotilla service create|ls|ps|inspect|scale|update|rollback|rm|logs`: Swarm's service
//! commands against the cluster's control API. Flags become a spec in `spec`; secret and config
//! names are resolved to ids here before the spec is sent. Changes send the version they read
//! and retry once when the controller says the service changed meanwhile.
//!
//! Without `-d`, create/update/scale/rollback wait for the service to converge: every slot (or,
//! for a global service, every node) runs a task of the current spec version. Progress shows
//! per slot on stderr (bars on a terminal, one line per change otherwise); a paused or rolled
//! back update, or the wait timeout, ends the wait with the tasks' errors and exit code 1 (the
//! service stays as it is). Tables, convergence and log prefixes are pure and unit-tested.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use flotilla_proto::control::v1::{
    service_logs_message::Item, service_spec::Mode, CreateServiceRequest, GetByNameRequest,
    GetServiceRequest, ListNodesRequest, ListServicesRequest, ListTasksRequest, LogLine,
    RemoveServiceRequest, Service, ServiceLogsRequest, ServiceSpec, ServiceSummary, Task,
    TaskState, UpdateServiceRequest, UpdateState,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::container::{print_rows, process_env_read, Env};
use super::control::{self, Cluster};
use super::format::{self, outln};
use super::node::{desired_state_filter, print_tasks};
use super::objects::{self, kv, Kind};
use super::parse::{self, ParseError};
use super::spec::{self, CommonFlags, ServiceCreateArgs, ServiceUpdateArgs};
use super::template::Template;
use super::{term, with_exit, Ctx};

// ------------------------------------------------------------------ clap

const CREATE_LONG: &str = "Create a service: tasks of one image that the cluster keeps running.

Takes Swarm's flags. Without -d, waits until every task runs (progress on stderr) and then \
prints the service id; when the service does not converge within --wait-timeout, prints the \
tasks' errors and exits 1 (the service stays: fix it with `flotilla service update`). \
Durations are written like 10s, 1m30s, 500ms; sizes like 512m, 1g; CPUs as decimals (1.5). \
Published ports use host mode (each node that runs a task listens on the published port) \
until overlay networks bring the routing mesh. Secrets and configs are named; create them \
first with `flotilla secret create` / `flotilla config create`.";

const CREATE_EXAMPLES: &str = "Examples:
  flotilla service create --name web --replicas 3 -p 8080:80 nginx:1.27
  flotilla service create --name agent --mode global --constraint node.platform.os==linux \\
      --mount type=bind,source=/var/log,target=/host/log,readonly fluent-bit
  flotilla service create --name db --constraint node.labels.ssd==true \\
      --secret source=db_password,target=password,mode=0400 \\
      --reserve-memory 1g --limit-memory 2g -e POSTGRES_PASSWORD_FILE=/run/secrets/password postgres:16
  flotilla service create --name api --replicas 4 --placement-pref spread=node.labels.zone \\
      --update-parallelism 2 --update-delay 10s --update-failure-action rollback \\
      --health-cmd 'wget -qO- localhost:8080/health' --health-interval 5s myorg/api:2.1";

const UPDATE_EXAMPLES: &str = "Examples:
  flotilla service update --image nginx:1.28 web
  flotilla service update --env-add LOG_LEVEL=debug --env-rm OLD_VAR api
  flotilla service update --constraint-add node.labels.zone==b --replicas 6 api
  flotilla service update --publish-rm 80 --publish-add 8081:80 web
  flotilla service update --secret-rm old_key --secret-add source=new_key,target=key web
  flotilla service update --force web        (replace every task with the same spec)";

/// Service commands.
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a new service
    #[command(long_about = CREATE_LONG, after_help = CREATE_EXAMPLES)]
    Create(Box<ServiceCreateArgs>),
    /// List services
    #[command(
        visible_alias = "list",
        after_help = "Examples:
  flotilla service ls
  flotilla service ls -f label=tier=front -q
  flotilla service ls --format '{{.Name}} {{.Replicas}}'

Filters (-f; several name=/id= match any): name=NAME, id=PREFIX, label=KEY or label=KEY=VALUE,
mode=replicated|global"
    )]
    Ls(ServiceLsArgs),
    /// List the tasks of one or more services (with their history)
    #[command(after_help = "Examples:
  flotilla service ps web
  flotilla service ps -f desired-state=running web api
  flotilla service ps --no-trunc web

Older tasks of a slot are listed under it as ' \\_ web.1'.")]
    Ps(ServicePsArgs),
    /// Show details of one or more services (JSON, or --pretty)
    Inspect(ServiceInspectArgs),
    /// Set the number of tasks of one or more replicated services
    #[command(after_help = "Examples:
  flotilla service scale web=5
  flotilla service scale -d web=5 api=2")]
    Scale(ServiceScaleArgs),
    /// Change a service (rolling update)
    #[command(after_help = UPDATE_EXAMPLES)]
    Update(Box<ServiceUpdateArgs>),
    /// Return a service to its spec before the last update
    Rollback(ServiceRollbackArgs),
    /// Remove one or more services (their tasks are stopped)
    #[command(visible_alias = "remove")]
    Rm(ServiceRmArgs),
    /// Fetch the logs of a service's tasks
    #[command(after_help = "Examples:
  flotilla service logs web
  flotilla service logs -f --tail 20 web
  flotilla service logs --since 10m -t --no-task-ids web

Lines are prefixed with the task: web.1.<task id>@<node>. Tasks on nodes that cannot be reached \
are reported on stderr and skipped.")]
    Logs(ServiceLogsArgs),
}

#[derive(Debug, Args)]
pub struct ServiceLsArgs {
    /// Only display ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter: name=, id=, label=, mode= (repeatable)
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Output: table (default), json, or a Go template like '{{.Name}}'
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct ServicePsArgs {
    /// Only display task ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate ids, images and errors
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter: desired-state=running|shutdown|accepted
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Output: table (default), json, or a Go template like '{{.Name}} {{.CurrentState}}'
    #[arg(long, default_value = "table")]
    pub format: String,
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServiceInspectArgs {
    /// Human-readable output instead of JSON
    #[arg(long)]
    pub pretty: bool,
    /// Format the output with a Go template (e.g. '{{.Spec.Name}}')
    #[arg(short, long)]
    pub format: Option<String>,
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServiceScaleArgs {
    /// Do not wait for the services to converge
    #[arg(short, long)]
    pub detach: bool,
    /// SERVICE=REPLICAS
    #[arg(required = true, value_name = "SERVICE=REPLICAS")]
    pub scales: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServiceRollbackArgs {
    /// Do not wait for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Do not show the progress while waiting
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

#[derive(Debug, Args)]
pub struct ServiceRmArgs {
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServiceLogsArgs {
    /// Follow the output
    #[arg(short, long)]
    pub follow: bool,
    /// Lines to show from the end of each task's log (or "all")
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Only lines since this time (10m, 2026-11-28T10:00:00Z, unix seconds)
    #[arg(long)]
    pub since: Option<String>,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    /// Leave the task ids out of the prefixes
    #[arg(long)]
    pub no_task_ids: bool,
    /// Do not truncate task ids
    #[arg(long)]
    pub no_trunc: bool,
    /// Show node ids instead of hostnames
    #[arg(long)]
    pub no_resolve: bool,
    /// No prefixes at all
    #[arg(long)]
    pub raw: bool,
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

// ------------------------------------------------------------------ pure parts

fn bad(msg: String) -> ParseError {
    ParseError(msg)
}

/// `service ls` filters -> the request and the mode wanted (filtered here).
pub fn ls_request(filters: &[String]) -> Result<(ListServicesRequest, Option<String>), ParseError> {
    let mut r = ListServicesRequest::default();
    let mut mode = None;
    for f in filters {
        match f.split_once('=') {
            Some(("name" | "id", v)) if !v.is_empty() => r.names.push(v.to_string()),
            Some(("label", v)) if !v.is_empty() => r.labels.push(v.to_string()),
            Some(("mode", v @ ("replicated" | "global"))) => mode = Some(v.to_string()),
            _ => {
                return Err(bad(format!(
                    "invalid filter {f:?}: expected name=, id=, label= or mode=replicated|global"
                )))
            }
        }
    }
    Ok((r, mode))
}

/// A `service ls` row.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRow {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub mode: String,
    pub replicas: String,
    pub image: String,
    pub ports: String,
}

pub const SERVICE_HEADERS: [&str; 6] = ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"];

pub fn service_cells(r: &ServiceRow) -> Vec<String> {
    vec![
        r.id.clone(),
        r.name.clone(),
        r.mode.clone(),
        r.replicas.clone(),
        r.image.clone(),
        r.ports.clone(),
    ]
}

fn mode_name(spec: &ServiceSpec) -> &'static str {
    match spec.mode {
        Some(Mode::Global(_)) => "global",
        _ => "replicated",
    }
}

fn image_of(spec: &ServiceSpec) -> String {
    spec.task
        .as_ref()
        .and_then(|t| t.container.as_ref())
        .map(|c| c.image.clone())
        .unwrap_or_default()
}

pub fn service_row(s: &ServiceSummary) -> ServiceRow {
    let svc = s.service.clone().unwrap_or_default();
    let spec = svc.spec.unwrap_or_default();
    let max = spec
        .task
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .map(|p| p.max_replicas_per_node)
        .unwrap_or(0);
    let mut replicas = format!("{}/{}", s.running_tasks, s.desired_tasks);
    if max > 0 {
        replicas.push_str(&format!(" (max {max} per node)"));
    }
    ServiceRow {
        id: format::short_id(&svc.id),
        name: spec.name.clone(),
        mode: mode_name(&spec).into(),
        replicas,
        image: image_of(&spec),
        ports: spec
            .endpoint
            .as_ref()
            .map(|e| objects::ports_text(&e.ports))
            .unwrap_or_default(),
    }
}

/// `web=3` -> ("web", 3).
pub fn parse_scale(s: &str) -> Result<(String, u64), ParseError> {
    match s.split_once('=') {
        Some((name, n)) if !name.is_empty() => match n.parse::<u64>() {
            Ok(n) => Ok((name.to_string(), n)),
            Err(_) => Err(bad(format!(
                "invalid scale {s:?}: the number of replicas {n:?} is not a non-negative number"
            ))),
        },
        _ => Err(bad(format!(
            "invalid scale {s:?}: expected SERVICE=REPLICAS, e.g. web=3"
        ))),
    }
}

/// The progress of one slot (or node) while waiting.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotLine {
    /// `1/3`, or a hostname for global services.
    pub label: String,
    /// `running`, `preparing`, `failed: <error>`, ...
    pub state: String,
    /// 0 (new) ..= 7 (running), for the bar.
    pub step: u64,
}

/// Where a service stands on its way to running every task of its current spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Convergence {
    pub slots: Vec<SlotLine>,
    pub running: u64,
    pub desired: u64,
    pub done: bool,
    /// Why tasks are not running (`web.2: pending: no suitable node ...`).
    pub errors: Vec<String>,
}

fn created(t: &Task) -> (i64, &str) {
    (t.meta.as_ref().map(|m| m.created_at).unwrap_or(0), &t.id)
}

fn state_of(t: &Task) -> i32 {
    t.status.as_ref().map(|s| s.state).unwrap_or(0)
}

/// Whether a task was made from the service's current spec: the same spec version, or an older
/// one whose task spec and endpoint are what the service asks now (a change of the replica
/// count or of service labels bumps the version but keeps the tasks, as the orchestrator does).
pub fn is_current(t: &Task, svc: &Service) -> bool {
    if t.spec_version == svc.spec_version {
        return true;
    }
    let spec = svc.spec.as_ref();
    t.spec.as_ref() == spec.and_then(|s| s.task.as_ref())
        && t.endpoint.as_ref() == spec.and_then(|s| s.endpoint.as_ref())
}

/// Observed RUNNING and, when it has a health check, healthy.
pub fn is_up(t: &Task) -> bool {
    let st = t.status.as_ref();
    st.map(|s| s.state) == Some(TaskState::Running as i32)
        && st.is_none_or(|s| s.health.is_empty() || s.health == "healthy")
}

fn slot_line(
    label: String,
    latest: Option<&Task>,
    node_names: &HashMap<String, String>,
) -> (SlotLine, Option<String>) {
    let Some(t) = latest else {
        return (
            SlotLine {
                label,
                state: "new".into(),
                step: 0,
            },
            None,
        );
    };
    let st = t.status.clone().unwrap_or_default();
    let name = objects::task_name(t);
    let node = node_names
        .get(&t.node_id)
        .map(|h| format!(" on {h}"))
        .unwrap_or_default();
    let state_name = objects::task_state_name(st.state);
    let why = if !st.err.is_empty() {
        &st.err
    } else {
        &st.message
    };
    let failed = st.state > TaskState::Running as i32;
    let text = if failed && !why.is_empty() {
        format!("{state_name}: {}", format::ellipsis(why, 60))
    } else if st.state == TaskState::Running as i32 && !is_up(t) {
        format!("running ({})", st.health)
    } else {
        state_name.to_string()
    };
    let err = (st.state != TaskState::Running as i32 && !why.is_empty())
        .then(|| format!("{name}{node}: {state_name}: {why}"));
    (
        SlotLine {
            label,
            state: text,
            step: if failed {
                0
            } else {
                st.state.clamp(0, TaskState::Running as i32) as u64
            },
        },
        err,
    )
}

/// Convergence of `svc` from its tasks (all of them, history included). `desired_global` is the
/// controller's count of tasks a global service should run.
pub fn convergence(
    svc: &Service,
    tasks: &[Task],
    desired_global: u64,
    node_names: &HashMap<String, String>,
) -> Convergence {
    let spec = svc.spec.clone().unwrap_or_default();
    let current: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.service_id == svc.id && is_current(t, svc))
        .collect();
    let running_now = |t: &Task| t.desired_state <= TaskState::Running as i32 && is_up(t);
    let mut slots = Vec::new();
    let mut errors = Vec::new();
    let mut running = 0;
    let desired;
    let mut extra = false;
    match spec.mode {
        Some(Mode::Global(_)) => {
            desired = desired_global;
            let mut by_node: std::collections::BTreeMap<&str, &Task> = Default::default();
            for t in &current {
                if t.node_id.is_empty() {
                    continue;
                }
                let e = by_node.entry(t.node_id.as_str()).or_insert(t);
                if created(t) > created(e) {
                    *e = t;
                }
            }
            let mut lines: Vec<(String, &Task)> = by_node
                .into_iter()
                .map(|(n, t)| {
                    (
                        node_names.get(n).cloned().unwrap_or_else(|| n.to_string()),
                        t,
                    )
                })
                .collect();
            lines.sort_by(|a, b| a.0.cmp(&b.0));
            for (label, t) in lines {
                if running_now(t) {
                    running += 1;
                }
                let (line, err) = slot_line(label, Some(t), node_names);
                slots.push(line);
                errors.extend(err);
            }
        }
        _ => {
            let n = match spec.mode {
                Some(Mode::Replicated(r)) => r.replicas,
                _ => 0,
            };
            desired = n;
            for slot in 1..=n {
                let latest = current
                    .iter()
                    .filter(|t| t.slot == slot)
                    .max_by(|a, b| created(a).cmp(&created(b)))
                    .copied();
                if latest.is_some_and(running_now) {
                    running += 1;
                }
                let (line, err) = slot_line(format!("{slot}/{n}"), latest, node_names);
                slots.push(line);
                errors.extend(err);
            }
            // After a scale down, tasks of the removed slots must be gone.
            extra = tasks.iter().any(|t| {
                t.service_id == svc.id
                    && t.slot > n
                    && t.desired_state <= TaskState::Running as i32
                    && state_of(t) <= TaskState::Running as i32
            });
        }
    }
    Convergence {
        done: running >= desired && !extra,
        slots,
        running,
        desired,
        errors,
    }
}

/// What a log line is prefixed with.
#[derive(Debug, Clone, Default)]
pub struct LogOpts {
    pub no_task_ids: bool,
    pub no_trunc: bool,
    pub no_resolve: bool,
    pub raw: bool,
    pub timestamps: bool,
}

/// `web.1.abc123def456@host1` (docker's task context).
pub fn log_prefix(
    service: &str,
    l: &LogLine,
    nodes: &HashMap<String, String>,
    o: &LogOpts,
) -> String {
    let node = if o.no_resolve {
        l.node_id.clone()
    } else {
        nodes
            .get(&l.node_id)
            .cloned()
            .unwrap_or_else(|| l.node_id.clone())
    };
    let slot = if l.slot > 0 {
        l.slot.to_string()
    } else {
        l.node_id.clone()
    };
    let mut name = format!("{service}.{slot}");
    if !o.no_task_ids {
        name.push('.');
        name.push_str(&if o.no_trunc {
            l.task_id.clone()
        } else {
            format::short_id(&l.task_id)
        });
    }
    format!("{name}@{node}")
}

/// The bytes printed for one log entry: each line prefixed (unless raw), with the timestamp
/// after the prefix when asked, newline-terminated.
pub fn log_output(prefix: &str, l: &LogLine, o: &LogOpts) -> Vec<u8> {
    let mut out = Vec::new();
    if l.data.is_empty() {
        return out;
    }
    for line in l.data.split_inclusive(|b| *b == b'\n') {
        if !o.raw {
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(b"    | ");
        }
        if o.timestamps {
            out.extend_from_slice(format::rfc3339_nano(l.timestamp_ns).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out
}

fn duration_text(ms: u64) -> String {
    objects::go_duration_ms(ms)
}

/// `service inspect --pretty`.
pub fn pretty(s: &Service) -> String {
    let mut o = String::new();
    let spec = s.spec.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let c = task.container.clone().unwrap_or_default();
    kv(&mut o, "ID", &s.id);
    kv(&mut o, "Name", &spec.name);
    if !spec.labels.is_empty() {
        o.push_str("Labels:\n");
        let mut l: Vec<_> = spec.labels.iter().collect();
        l.sort();
        for (k, v) in l {
            o.push_str(&format!(" {k}={v}\n"));
        }
    }
    match &spec.mode {
        Some(Mode::Global(_)) => kv(&mut o, "Service Mode", "Global"),
        Some(Mode::Replicated(r)) => {
            kv(&mut o, "Service Mode", "Replicated");
            kv(&mut o, " Replicas", r.replicas);
        }
        None => {}
    }
    if spec.rebalance {
        kv(&mut o, "Rebalance", "true");
    }
    if let Some(u) = &s.update_status {
        let state = objects::update_state_name(u.state);
        if !state.is_empty() {
            o.push_str("UpdateStatus:\n");
            kv(&mut o, " State", state);
            if u.started_at > 0 {
                kv(&mut o, " Started", objects::rfc3339_ms(u.started_at));
            }
            if u.completed_at > 0 {
                kv(&mut o, " Completed", objects::rfc3339_ms(u.completed_at));
            }
            if !u.message.is_empty() {
                kv(&mut o, " Message", &u.message);
            }
        }
    }
    if let Some(p) = &task.placement {
        if !p.constraints.is_empty() || !p.preferences.is_empty() || p.max_replicas_per_node > 0 {
            o.push_str("Placement:\n");
            if !p.constraints.is_empty() {
                kv(
                    &mut o,
                    " Constraints",
                    format!("[{}]", p.constraints.join(" ")),
                );
            }
            if !p.preferences.is_empty() {
                let prefs: Vec<String> = p
                    .preferences
                    .iter()
                    .map(|x| {
                        format!(
                            "spread={}",
                            x.spread
                                .as_ref()
                                .map(|s| s.spread_descriptor.as_str())
                                .unwrap_or("")
                        )
                    })
                    .collect();
                kv(&mut o, " Preferences", format!("[{}]", prefs.join(" ")));
            }
            if p.max_replicas_per_node > 0 {
                kv(&mut o, " Max Replicas Per Node", p.max_replicas_per_node);
            }
        }
    }
    for (title, u) in [
        ("UpdateConfig", &spec.update),
        ("RollbackConfig", &spec.rollback),
    ] {
        if let Some(u) = u {
            o.push_str(&format!("{title}:\n"));
            kv(&mut o, " Parallelism", u.parallelism);
            if u.delay_ms > 0 {
                kv(&mut o, " Delay", duration_text(u.delay_ms));
            }
            kv(
                &mut o,
                " On failure",
                objects::failure_action_name(u.failure_action),
            );
            kv(&mut o, " Monitoring Period", duration_text(u.monitor_ms));
            kv(&mut o, " Max failure ratio", u.max_failure_ratio);
            kv(&mut o, " Update order", objects::order_name(u.order));
        }
    }
    o.push_str("ContainerSpec:\n");
    kv(&mut o, " Image", &c.image);
    if !c.entrypoint.is_empty() {
        kv(&mut o, " Entrypoint", c.entrypoint.join(" "));
    }
    if !c.args.is_empty() {
        kv(&mut o, " Args", c.args.join(" "));
    }
    if !c.env.is_empty() {
        kv(&mut o, " Env", c.env.join(" "));
    }
    if !c.dir.is_empty() {
        kv(&mut o, " Dir", &c.dir);
    }
    if !c.user.is_empty() {
        kv(&mut o, " User", &c.user);
    }
    if !c.hostname.is_empty() {
        kv(&mut o, " Hostname", &c.hostname);
    }
    if c.read_only {
        kv(&mut o, " Read Only", "true");
    }
    kv(
        &mut o,
        " Stop Grace Period",
        duration_text(c.stop_grace_period_ms),
    );
    if !c.stop_signal.is_empty() {
        kv(&mut o, " Stop Signal", &c.stop_signal);
    }
    if let Some(h) = &c.healthcheck {
        if h.test.first().map(String::as_str) == Some("NONE") {
            kv(&mut o, " Healthcheck", "disabled");
        } else {
            o.push_str(" Healthcheck:\n");
            if !h.test.is_empty() {
                kv(&mut o, "  Test", h.test.join(" "));
            }
            if h.interval_ms > 0 {
                kv(&mut o, "  Interval", duration_text(h.interval_ms));
            }
            if h.timeout_ms > 0 {
                kv(&mut o, "  Timeout", duration_text(h.timeout_ms));
            }
            if h.retries > 0 {
                kv(&mut o, "  Retries", h.retries);
            }
            if h.start_period_ms > 0 {
                kv(&mut o, "  Start Period", duration_text(h.start_period_ms));
            }
        }
    }
    if !c.mounts.is_empty() {
        o.push_str("Mounts:\n");
        for m in &c.mounts {
            kv(&mut o, " Target", &m.target);
            if !m.source.is_empty() {
                kv(&mut o, "  Source", &m.source);
            }
            kv(&mut o, "  ReadOnly", m.read_only);
            kv(&mut o, "  Type", &m.r#type);
        }
    }
    if !c.secrets.is_empty() {
        o.push_str("Secrets:\n");
        for r in &c.secrets {
            let target = if r.target.starts_with('/') {
                r.target.clone()
            } else {
                format!("/run/secrets/{}", r.target)
            };
            kv(&mut o, " Target", target);
            kv(&mut o, "  Source", &r.secret_name);
        }
    }
    if !c.configs.is_empty() {
        o.push_str("Configs:\n");
        for r in &c.configs {
            kv(&mut o, " Target", &r.target);
            kv(&mut o, "  Source", &r.config_name);
        }
    }
    if let Some(res) = &task.resources {
        o.push_str("Resources:\n");
        for (title, r) in [
            (" Reservations", &res.reservations),
            (" Limits", &res.limits),
        ] {
            if let Some(r) = r {
                o.push_str(&format!("{title}:\n"));
                if r.nano_cpus > 0 {
                    kv(&mut o, "  CPU", objects::cpus(r.nano_cpus));
                }
                if r.memory_bytes > 0 {
                    kv(
                        &mut o,
                        "  Memory",
                        format::bytes_size(r.memory_bytes as u64),
                    );
                }
                if r.pids > 0 {
                    kv(&mut o, "  Pids", r.pids);
                }
            }
        }
    }
    if let Some(r) = &task.restart {
        o.push_str("Restart Policy:\n");
        kv(
            &mut o,
            " Condition",
            objects::restart_condition_name(r.condition),
        );
        kv(&mut o, " Delay", duration_text(r.delay_ms));
        kv(&mut o, " Max Attempts", r.max_attempts);
        kv(&mut o, " Window", duration_text(r.window_ms));
    }
    if let Some(e) = &spec.endpoint {
        if !e.ports.is_empty() {
            o.push_str("Ports:\n");
            for p in &e.ports {
                o.push_str(&format!(" PublishedPort = {}\n", p.published_port));
                o.push_str(&format!(
                    "  Protocol = {}\n",
                    objects::protocol_name(p.protocol)
                ));
                o.push_str(&format!("  TargetPort = {}\n", p.target_port));
                o.push_str(&format!("  PublishMode = {}\n", p.publish_mode));
            }
        }
    }
    o
}

// ------------------------------------------------------------------ I/O helpers

async fn get_service(cl: &Cluster, name: &str) -> anyhow::Result<Service> {
    Ok(cl
        .api()
        .get_service(GetServiceRequest {
            service: name.to_string(),
        })
        .await
        .map_err(|s| cl.err(s))?
        .into_inner())
}

/// Resolves secret and config references that have a name but no id.
async fn resolve_refs(cl: &Cluster, spec: &mut ServiceSpec) -> anyhow::Result<()> {
    let Some(c) = spec.task.as_mut().and_then(|t| t.container.as_mut()) else {
        return Ok(());
    };
    for r in c.secrets.iter_mut().filter(|r| r.secret_id.is_empty()) {
        let s = match cl
            .api()
            .get_secret(GetByNameRequest {
                name: r.secret_name.clone(),
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(st) => {
                let e = cl.err(st);
                if control::is_not_found(&e) {
                    anyhow::bail!(
                        "secret {:?} not found: create it first with `flotilla secret create {} FILE`",
                        r.secret_name,
                        r.secret_name
                    );
                }
                return Err(e);
            }
        };
        r.secret_id = s.id;
        if let Some(name) = s.spec.map(|x| x.name) {
            r.secret_name = name;
        }
    }
    for r in c.configs.iter_mut().filter(|r| r.config_id.is_empty()) {
        let s = match cl
            .api()
            .get_config(GetByNameRequest {
                name: r.config_name.clone(),
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(st) => {
                let e = cl.err(st);
                if control::is_not_found(&e) {
                    anyhow::bail!(
                        "config {:?} not found: create it first with `flotilla config create {} FILE`",
                        r.config_name,
                        r.config_name
                    );
                }
                return Err(e);
            }
        };
        r.config_id = s.id;
        if let Some(name) = s.spec.map(|x| x.name) {
            r.config_name = name;
        }
    }
    Ok(())
}

/// Reads the service, edits its spec, sends it with the version read; on a conflict reads
/// again and retries once. `edit` returning `None` means a rollback request.
async fn update_service<F>(cl: &Cluster, name: &str, mut edit: F) -> anyhow::Result<Service>
where
    F: FnMut(&Service) -> anyhow::Result<Option<ServiceSpec>>,
{
    let mut attempt = 0;
    loop {
        let svc = get_service(cl, name).await?;
        let version = svc.meta.as_ref().map(|m| m.version).unwrap_or(0);
        let req = match edit(&svc)? {
            Some(mut spec) => {
                resolve_refs(cl, &mut spec).await?;
                UpdateServiceRequest {
                    service: svc.id.clone(),
                    version,
                    spec: Some(spec),
                    rollback: false,
                }
            }
            None => UpdateServiceRequest {
                service: svc.id.clone(),
                version,
                spec: None,
                rollback: true,
            },
        };
        match cl.api().update_service(req).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) => {
                let e = cl.err(s);
                if control::is_conflict(&e) && attempt == 0 {
                    attempt += 1;
                    tracing::debug!(name, "service changed since it was read; retrying");
                    continue;
                }
                return Err(e);
            }
        }
    }
}

fn process_env() -> Env<'static> {
    Env {
        var: &|k| std::env::var(k).ok(),
        read: &process_env_read,
        cwd: "/",
    }
}

/// Progress of the convergence on stderr.
struct Progress {
    quiet: bool,
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    bars: HashMap<String, ProgressBar>,
    last: HashMap<String, String>,
    last_overall: String,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        let multi = (!quiet && term::stderr_is_tty())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            quiet,
            multi,
            overall: None,
            bars: HashMap::new(),
            last: HashMap::new(),
            last_overall: String::new(),
        }
    }

    fn show(&mut self, c: &Convergence) {
        if self.quiet {
            return;
        }
        let overall = format!("overall progress: {} out of {} tasks", c.running, c.desired);
        let Some(multi) = &self.multi else {
            if overall != self.last_overall {
                eprintln!("{overall}");
                self.last_overall = overall;
            }
            for s in &c.slots {
                if self.last.get(&s.label) != Some(&s.state) {
                    eprintln!("{}: {}", s.label, s.state);
                    self.last.insert(s.label.clone(), s.state.clone());
                }
            }
            return;
        };
        let o = self.overall.get_or_insert_with(|| {
            multi.add(
                ProgressBar::new(1).with_style(
                    ProgressStyle::with_template("{msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                ),
            )
        });
        o.set_message(overall);
        let width = c.slots.iter().map(|s| s.label.len()).max().unwrap_or(3);
        let style = ProgressStyle::with_template("{prefix}: {msg:<12} [{bar:50}]")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        for s in &c.slots {
            let bar = self.bars.entry(s.label.clone()).or_insert_with(|| {
                multi.add(ProgressBar::new(TaskState::Running as u64).with_style(style.clone()))
            });
            bar.set_prefix(format!("{:<width$}", s.label));
            bar.set_position(s.step);
            bar.set_message(s.state.clone());
        }
    }

    fn finish(&mut self, line: &str) {
        if let Some(o) = &self.overall {
            o.finish();
        }
        for b in self.bars.values() {
            b.finish();
        }
        self.multi = None;
        if !self.quiet && !line.is_empty() {
            eprintln!("{line}");
        }
    }
}

/// The update status worth following after a write: the one the write started (UPDATING or
/// ROLLBACK_STARTED in the service it returned). A status left from an earlier update (a
/// change that does not touch the tasks, like a scale, starts none) is ignored.
fn tracked_update(written: &Service) -> Option<i64> {
    let u = written.update_status.as_ref()?;
    matches!(
        UpdateState::try_from(u.state),
        Ok(UpdateState::Updating | UpdateState::RollbackStarted)
    )
    .then_some(u.started_at)
}

/// Waits until the service converges (see the module doc). `written` is the service as the
/// write returned it; `rolling_back`: the wait is for a requested rollback (a completed
/// rollback is then success, not failure).
async fn wait_converged(
    cl: &Cluster,
    written: &Service,
    quiet: bool,
    timeout: Duration,
    rolling_back: bool,
) -> anyhow::Result<bool> {
    let id = written.id.as_str();
    let tracked = tracked_update(written);
    let start = Instant::now();
    let mut progress = Progress::new(quiet);
    let mut done_since: Option<Instant> = None;
    loop {
        let svc = get_service(cl, id).await?;
        let name = svc
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let desired_global = cl
            .api()
            .list_services(ListServicesRequest {
                names: vec![svc.id.clone()],
                labels: vec![],
            })
            .await
            .map_err(|s| cl.err(s))?
            .into_inner()
            .services
            .into_iter()
            .find(|s| s.service.as_ref().is_some_and(|x| x.id == svc.id))
            .map(|s| s.desired_tasks)
            .unwrap_or(0);
        let tasks = cl
            .api()
            .list_tasks(ListTasksRequest {
                services: vec![svc.id.clone()],
                nodes: vec![],
                desired_state: String::new(),
            })
            .await
            .map_err(|s| cl.err(s))?
            .into_inner();
        let conv = convergence(&svc, &tasks.tasks, desired_global, &tasks.node_names);
        progress.show(&conv);
        let status = svc
            .update_status
            .clone()
            .filter(|u| tracked.is_some_and(|since| u.started_at >= since))
            .unwrap_or_default();
        let state = UpdateState::try_from(status.state).unwrap_or(UpdateState::Unknown);
        match state {
            UpdateState::Paused => {
                progress.finish("");
                eprintln!("{}", state_line("update paused", &status.message));
                print_errors(&conv);
                return Ok(false);
            }
            UpdateState::RollbackPaused => {
                progress.finish("");
                eprintln!("{}", state_line("rollback paused", &status.message));
                print_errors(&conv);
                return Ok(false);
            }
            UpdateState::RollbackCompleted if !rolling_back && conv.done => {
                progress.finish("");
                eprintln!("{}", state_line("update rolled back", &status.message));
                return Ok(false);
            }
            _ => {}
        }
        let in_progress = matches!(state, UpdateState::Updating | UpdateState::RollbackStarted);
        if conv.done {
            let since = *done_since.get_or_insert_with(Instant::now);
            // The controller marks an update complete after its monitor period; do not wait
            // on that forever if it never does.
            let monitor_ms = svc
                .spec
                .as_ref()
                .map(|sp| {
                    [&sp.update, &sp.rollback]
                        .into_iter()
                        .flatten()
                        .map(|u| u.monitor_ms)
                        .max()
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            let grace = Duration::from_millis(monitor_ms.max(5000)) + Duration::from_secs(10);
            if !in_progress || since.elapsed() > grace {
                progress.finish(&format!("verify: Service {name} converged"));
                return Ok(true);
            }
        } else {
            done_since = None;
        }
        if start.elapsed() > timeout {
            progress.finish("");
            eprintln!(
                "service {name} did not converge within {}: {} of {} tasks running",
                objects::go_duration_ms(timeout.as_millis() as u64),
                conv.running,
                conv.desired
            );
            print_errors(&conv);
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// "update paused: <message>", or the message alone when it says that already.
fn state_line(what: &str, message: &str) -> String {
    if message.is_empty() {
        what.to_string()
    } else if message.starts_with(what) {
        message.to_string()
    } else {
        format!("{what}: {message}")
    }
}

fn print_errors(c: &Convergence) {
    for e in &c.errors {
        eprintln!("  {e}");
    }
}

fn check_format(f: &str) -> anyhow::Result<()> {
    if f != "table" && f != "json" {
        Template::parse(f.strip_prefix("table ").unwrap_or(f))?;
    }
    Ok(())
}

/// How long scale and rollback wait (create and update have --wait-timeout, default 3m).
const DEFAULT_WAIT: Duration = Duration::from_secs(180);

fn wait_timeout(c: &CommonFlags) -> Result<Duration, ParseError> {
    parse::parse_duration(&c.wait_timeout).map_err(|e| ParseError(format!("--wait-timeout: {e}")))
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

// ------------------------------------------------------------------ commands

/// Runs a service subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: ServiceCmd) -> anyhow::Result<i32> {
    match cmd {
        ServiceCmd::Create(a) => create(ctx, *a).await,
        ServiceCmd::Update(a) => update(ctx, *a).await,
        ServiceCmd::Ls(a) => {
            let (req, mode) = ls_request(&a.filter).map_err(|e| with_exit(125, e.into()))?;
            check_format(&a.format)?;
            let cl = Cluster::open(ctx).await?;
            let mut list = cl
                .api()
                .list_services(req)
                .await
                .map_err(|s| cl.err(s))?
                .into_inner()
                .services;
            if let Some(m) = mode {
                list.retain(|s| {
                    s.service
                        .as_ref()
                        .and_then(|x| x.spec.as_ref())
                        .is_some_and(|sp| mode_name(sp) == m)
                });
            }
            let mut rows: Vec<(ServiceRow, String)> = list
                .iter()
                .map(|s| {
                    (
                        service_row(s),
                        s.service.as_ref().map(|x| x.id.clone()).unwrap_or_default(),
                    )
                })
                .collect();
            rows.sort_by(|a, b| a.0.name.cmp(&b.0.name));
            if a.quiet {
                let s: String = rows.iter().map(|(_, id)| format!("{id}\n")).collect();
                format::out(&s);
                return Ok(0);
            }
            let rows: Vec<ServiceRow> = rows.into_iter().map(|(r, _)| r).collect();
            print_rows(&rows, &a.format, &SERVICE_HEADERS, service_cells)?;
            Ok(0)
        }
        ServiceCmd::Ps(a) => {
            let desired_state =
                desired_state_filter(&a.filter).map_err(|e| with_exit(125, e.into()))?;
            check_format(&a.format)?;
            let cl = Cluster::open(ctx).await?;
            print_tasks(
                &cl,
                ListTasksRequest {
                    services: a.services.clone(),
                    nodes: vec![],
                    desired_state,
                },
                a.quiet,
                a.no_trunc,
                &a.format,
            )
            .await?;
            Ok(0)
        }
        ServiceCmd::Inspect(a) => {
            let cl = Cluster::open(ctx).await?;
            if a.pretty {
                let mut code = 0;
                let mut first = true;
                for name in &a.services {
                    match get_service(&cl, name).await {
                        Ok(s) => {
                            if !first {
                                format::out("\n");
                            }
                            first = false;
                            format::out(&pretty(&s));
                        }
                        Err(e) => {
                            eprintln!("{}", control::error_line(&e));
                            code = 1;
                        }
                    }
                }
                return Ok(code);
            }
            super::container::inspect_each(&a.services, a.format.as_deref(), |name| {
                let cl = cl.clone();
                async move {
                    objects::inspect_value(Kind::Service, &get_service(&cl, &name).await?)
                }
            })
            .await
        }
        ServiceCmd::Scale(a) => {
            let scales = a
                .scales
                .iter()
                .map(|s| parse_scale(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| with_exit(125, e.into()))?;
            let cl = Cluster::open(ctx).await?;
            let mut code = 0;
            let mut scaled: Vec<Service> = Vec::new();
            for (name, n) in &scales {
                let r = update_service(&cl, name, |svc| {
                    let mut spec = svc.spec.clone().unwrap_or_default();
                    match &mut spec.mode {
                        Some(Mode::Replicated(r)) => r.replicas = *n,
                        _ => anyhow::bail!(
                            "{name}: scale can only be used with replicated mode (this service is global)"
                        ),
                    }
                    Ok(Some(spec))
                })
                .await;
                match r {
                    Ok(svc) => {
                        outln(&format!("{name} scaled to {n}"));
                        scaled.push(svc);
                    }
                    Err(e) => {
                        eprintln!("{}", control::error_line(&e));
                        code = 1;
                    }
                }
            }
            if !a.detach {
                let timeout = DEFAULT_WAIT;
                for svc in &scaled {
                    if !wait_converged(&cl, svc, false, timeout, false).await? {
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        ServiceCmd::Rollback(a) => {
            let cl = Cluster::open(ctx).await?;
            let svc = update_service(&cl, &a.service, |_| Ok(None)).await?;
            let mut code = 0;
            if !a.detach {
                let timeout = DEFAULT_WAIT;
                if !wait_converged(&cl, &svc, a.quiet, timeout, true).await? {
                    code = 1;
                }
            }
            outln(&a.service);
            Ok(code)
        }
        ServiceCmd::Rm(a) => {
            let cl = Cluster::open(ctx).await?;
            Ok(each(&a.services, |name| {
                let cl = cl.clone();
                async move {
                    cl.api()
                        .remove_service(RemoveServiceRequest {
                            service: name.clone(),
                        })
                        .await
                        .map_err(|s| cl.err(s))?;
                    outln(&name);
                    Ok(())
                }
            })
            .await)
        }
        ServiceCmd::Logs(a) => logs(ctx, a).await,
    }
}

async fn create(ctx: &Ctx, a: ServiceCreateArgs) -> anyhow::Result<i32> {
    let mut spec = spec::build_create(&a, &process_env()).map_err(|e| with_exit(125, e.into()))?;
    let timeout = wait_timeout(&a.common).map_err(|e| with_exit(125, e.into()))?;
    if spec.name.is_empty() {
        spec.name = spec::generated_name(&a.image, &spec::random_suffix());
    }
    let cl = Cluster::open(ctx).await?;
    resolve_refs(&cl, &mut spec).await?;
    let svc = cl
        .api()
        .create_service(CreateServiceRequest { spec: Some(spec) })
        .await
        .map_err(|s| cl.err(s))?
        .into_inner();
    if a.common.detach {
        outln(&svc.id);
        return Ok(0);
    }
    let ok = wait_converged(&cl, &svc, a.common.quiet, timeout, false).await?;
    outln(&svc.id);
    Ok(if ok { 0 } else { 1 })
}

async fn update(ctx: &Ctx, a: ServiceUpdateArgs) -> anyhow::Result<i32> {
    let env = process_env();
    // Check the flags before any call.
    let mut probe = ServiceSpec {
        mode: Some(Mode::Replicated(Default::default())),
        ..Default::default()
    };
    spec::apply_update(&mut probe, &a, &env).map_err(|e| with_exit(125, e.into()))?;
    let timeout = wait_timeout(&a.common).map_err(|e| with_exit(125, e.into()))?;
    let cl = Cluster::open(ctx).await?;
    let svc = update_service(&cl, &a.service, |svc| {
        let mut spec = svc.spec.clone().unwrap_or_default();
        spec::apply_update(&mut spec, &a, &env)?;
        Ok(Some(spec))
    })
    .await?;
    let mut code = 0;
    if !a.common.detach && !wait_converged(&cl, &svc, a.common.quiet, timeout, false).await? {
        code = 1;
    }
    outln(&a.service);
    Ok(code)
}

async fn logs(ctx: &Ctx, a: ServiceLogsArgs) -> anyhow::Result<i32> {
    let now_ns = format::now_ns();
    let since_ms = a
        .since
        .as_deref()
        .map(|s| parse::parse_timestamp("--since", s, now_ns))
        .transpose()
        .map_err(|e| with_exit(125, e.into()))?
        .map(|ns| ns / 1_000_000)
        .unwrap_or(0);
    let tail = parse::parse_tail(&a.tail).map_err(|e| with_exit(125, e.into()))?;
    let cl = Cluster::open(ctx).await?;
    let svc = get_service(&cl, &a.service).await?;
    let service_name = svc
        .spec
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let mut nodes: HashMap<String, String> = cl
        .api()
        .list_nodes(ListNodesRequest::default())
        .await
        .map_err(|s| cl.err(s))?
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| {
            let h = n.description.map(|d| d.hostname).unwrap_or_default();
            (n.id, h)
        })
        .collect();
    nodes.retain(|_, h| !h.is_empty());
    let opts = LogOpts {
        no_task_ids: a.no_task_ids,
        no_trunc: a.no_trunc,
        no_resolve: a.no_resolve,
        raw: a.raw,
        timestamps: a.timestamps,
    };
    let mut stream = cl
        .api()
        .service_logs(ServiceLogsRequest {
            service: svc.id.clone(),
            follow: a.follow,
            tail,
            since: since_ms,
            timestamps: a.timestamps,
        })
        .await
        .map_err(|s| cl.err(s))?
        .into_inner();
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(s) => return Err(cl.err(s)),
        };
        match msg.item {
            Some(Item::Line(l)) => {
                let prefix = log_prefix(&service_name, &l, &nodes, &opts);
                let bytes = log_output(&prefix, &l, &opts);
                if l.stream == "stderr" {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(&bytes).and_then(|_| e.flush());
                } else {
                    format::out(&String::from_utf8_lossy(&bytes));
                }
            }
            Some(Item::Unavailable(why)) => eprintln!("WARNING: {why}"),
            None => {}
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::control::v1::{
        ContainerSpec, EndpointSpec, GlobalService, Meta, Placement, PortConfig, ReplicatedService,
        TaskSpec, TaskStatus, UpdateStatus,
    };

    fn svc(mode: Mode, ports: Vec<PortConfig>, max: u64) -> Service {
        Service {
            id: "0123456789abcdefghijklm".into(),
            meta: Some(Meta {
                version: 9,
                created_at: 1,
                updated_at: 1,
            }),
            spec: Some(ServiceSpec {
                name: "web".into(),
                task: Some(TaskSpec {
                    container: Some(ContainerSpec {
                        image: "nginx:1.27".into(),
                        ..Default::default()
                    }),
                    placement: Some(Placement {
                        max_replicas_per_node: max,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                mode: Some(mode),
                endpoint: Some(EndpointSpec { ports }),
                ..Default::default()
            }),
            spec_version: 2,
            ..Default::default()
        }
    }

    #[test]
    fn ls_table() {
        let mut api = svc(
            Mode::Replicated(ReplicatedService { replicas: 3 }),
            vec![PortConfig {
                target_port: 80,
                published_port: 8080,
                publish_mode: "host".into(),
                ..Default::default()
            }],
            2,
        );
        api.id = "aaaaaaaaaaaaaaaaaaaaaaaaa".into();
        let mut agent = svc(Mode::Global(GlobalService {}), vec![], 0);
        agent.id = "bbbbbbbbbbbbbbbbbbbbbbbbb".into();
        if let Some(s) = agent.spec.as_mut() {
            s.name = "agent".into();
        }
        let rows = [
            service_row(&ServiceSummary {
                service: Some(agent),
                running_tasks: 4,
                desired_tasks: 4,
            }),
            service_row(&ServiceSummary {
                service: Some(api),
                running_tasks: 2,
                desired_tasks: 3,
            }),
        ];
        let body: Vec<Vec<String>> = rows.iter().map(service_cells).collect();
        assert_eq!(
            format::table(&SERVICE_HEADERS, &body),
            "ID             NAME    MODE         REPLICAS               IMAGE        PORTS\n\
             bbbbbbbbbbbb   agent   global       4/4                    nginx:1.27\n\
             aaaaaaaaaaaa   web     replicated   2/3 (max 2 per node)   nginx:1.27   *:8080->80/tcp\n"
        );
        assert_eq!(
            serde_json::to_value(&rows[1]).unwrap(),
            serde_json::json!({
                "ID": "aaaaaaaaaaaa", "Name": "web", "Mode": "replicated",
                "Replicas": "2/3 (max 2 per node)", "Image": "nginx:1.27", "Ports": "*:8080->80/tcp"
            })
        );
    }

    #[test]
    fn filters_and_scale() {
        let (r, m) = ls_request(&[
            "name=web".into(),
            "label=tier=front".into(),
            "mode=global".into(),
        ])
        .unwrap();
        assert_eq!(r.names, vec!["web"]);
        assert_eq!(r.labels, vec!["tier=front"]);
        assert_eq!(m.as_deref(), Some("global"));
        assert!(ls_request(&["mode=other".into()]).is_err());
        assert_eq!(parse_scale("web=3").unwrap(), ("web".to_string(), 3));
        assert!(parse_scale("web")
            .unwrap_err()
            .0
            .contains("expected SERVICE=REPLICAS"));
        assert!(parse_scale("web=-1")
            .unwrap_err()
            .0
            .contains("non-negative"));
        assert!(parse_scale("=3").is_err());
    }

    fn task(
        id: &str,
        slot: u64,
        node: &str,
        version: u64,
        created: i64,
        state: TaskState,
        desired: TaskState,
    ) -> Task {
        Task {
            id: id.into(),
            meta: Some(Meta {
                version: 1,
                created_at: created,
                updated_at: created,
            }),
            service_id: "0123456789abcdefghijklm".into(),
            slot,
            node_id: node.into(),
            spec_version: version,
            desired_state: desired as i32,
            status: Some(TaskStatus {
                state: state as i32,
                timestamp: created,
                ..Default::default()
            }),
            service_name: "web".into(),
            ..Default::default()
        }
    }

    #[test]
    fn replicated_convergence() {
        let s = svc(
            Mode::Replicated(ReplicatedService { replicas: 3 }),
            vec![],
            0,
        );
        let names: HashMap<String, String> = [("n1".to_string(), "host1".to_string())].into();
        let mut failed = task(
            "t2a",
            2,
            "n1",
            2,
            10,
            TaskState::Failed,
            TaskState::Shutdown,
        );
        if let Some(st) = failed.status.as_mut() {
            st.err = "task: non-zero exit (1)".into();
        }
        let mut pending = task("t3", 3, "", 2, 10, TaskState::Pending, TaskState::Running);
        if let Some(st) = pending.status.as_mut() {
            st.message = "no suitable node (insufficient memory on 2 nodes)".into();
        }
        let tasks = vec![
            // Slot 1: an old version still running does not count; the new one does.
            task(
                "t1old",
                1,
                "n1",
                1,
                1,
                TaskState::Running,
                TaskState::Shutdown,
            ),
            task("t1", 1, "n1", 2, 5, TaskState::Running, TaskState::Running),
            failed,
            pending,
        ];
        let c = convergence(&s, &tasks, 0, &names);
        assert_eq!(
            c,
            Convergence {
                slots: vec![
                    SlotLine {
                        label: "1/3".into(),
                        state: "running".into(),
                        step: 7
                    },
                    SlotLine {
                        label: "2/3".into(),
                        state: "failed: task: non-zero exit (1)".into(),
                        step: 0
                    },
                    SlotLine {
                        label: "3/3".into(),
                        state: "pending".into(),
                        step: 1
                    },
                ],
                running: 1,
                desired: 3,
                done: false,
                errors: vec![
                    "web.2 on host1: failed: task: non-zero exit (1)".into(),
                    "web.3: pending: no suitable node (insufficient memory on 2 nodes)".into(),
                ],
            }
        );
        // The replacement of slot 2 runs and slot 3 gets placed: converged.
        let mut tasks = tasks;
        tasks.push(task(
            "t2b",
            2,
            "n1",
            2,
            20,
            TaskState::Running,
            TaskState::Running,
        ));
        tasks[3] = task("t3", 3, "n1", 2, 10, TaskState::Running, TaskState::Running);
        let c = convergence(&s, &tasks, 0, &names);
        assert!(c.done);
        assert_eq!((c.running, c.desired), (3, 3));
        assert!(c.errors.is_empty());
        // After a scale down to 2, slot 3 must be gone first.
        let s2 = svc(
            Mode::Replicated(ReplicatedService { replicas: 2 }),
            vec![],
            0,
        );
        assert!(!convergence(&s2, &tasks, 0, &names).done);
        tasks[3] = task(
            "t3",
            3,
            "n1",
            2,
            10,
            TaskState::Shutdown,
            TaskState::Shutdown,
        );
        assert!(convergence(&s2, &tasks, 0, &names).done);
        // A scale up bumps the spec version but keeps the running tasks current.
        let mut s4 = svc(
            Mode::Replicated(ReplicatedService { replicas: 4 }),
            vec![],
            0,
        );
        s4.spec_version = 3;
        let mut same = tasks.clone();
        same[3] = task("t3", 3, "n1", 2, 10, TaskState::Running, TaskState::Running);
        for t in &mut same {
            t.spec = s4.spec.as_ref().and_then(|x| x.task.clone());
            t.endpoint = s4.spec.as_ref().and_then(|x| x.endpoint.clone());
        }
        let c = convergence(&s4, &same, 0, &names);
        assert_eq!((c.running, c.desired, c.done), (3, 4, false));
        same.push(task(
            "t4",
            4,
            "n1",
            3,
            30,
            TaskState::Running,
            TaskState::Running,
        ));
        if let Some(st) = same.last_mut().and_then(|t| t.status.as_mut()) {
            st.health = "starting".into();
        }
        let c = convergence(&s4, &same, 0, &names);
        assert_eq!(c.slots[3].state, "running (starting)");
        assert!(!c.done);
        if let Some(st) = same.last_mut().and_then(|t| t.status.as_mut()) {
            st.health = "healthy".into();
        }
        assert!(convergence(&s4, &same, 0, &names).done);
        // Zero replicas converge at once.
        let s0 = svc(
            Mode::Replicated(ReplicatedService { replicas: 0 }),
            vec![],
            0,
        );
        assert!(convergence(&s0, &[], 0, &names).done);
    }

    #[test]
    fn global_convergence() {
        let s = svc(Mode::Global(GlobalService {}), vec![], 0);
        let names: HashMap<String, String> = [
            ("n1".to_string(), "host1".to_string()),
            ("n2".to_string(), "host2".to_string()),
        ]
        .into();
        let tasks = vec![
            task("a", 0, "n2", 2, 1, TaskState::Preparing, TaskState::Running),
            task("b", 0, "n1", 2, 1, TaskState::Running, TaskState::Running),
        ];
        let c = convergence(&s, &tasks, 2, &names);
        assert_eq!(
            c.slots,
            vec![
                SlotLine {
                    label: "host1".into(),
                    state: "running".into(),
                    step: 7
                },
                SlotLine {
                    label: "host2".into(),
                    state: "preparing".into(),
                    step: 4
                },
            ]
        );
        assert!(!c.done);
        let tasks = vec![
            task("a", 0, "n2", 2, 1, TaskState::Running, TaskState::Running),
            task("b", 0, "n1", 2, 1, TaskState::Running, TaskState::Running),
        ];
        assert!(convergence(&s, &tasks, 2, &names).done);
    }

    #[test]
    fn clap_parses_the_cluster_commands() {
        use crate::cli::{Cli, Cmd};
        use clap::Parser;
        let parse =
            |argv: &[&str]| Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let c = parse(&[
            "flotilla",
            "--context",
            "prod",
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "-p",
            "8080:80",
            "nginx",
            "nginx",
            "-g",
            "daemon off;",
        ]);
        assert_eq!(c.context.as_deref(), Some("prod"));
        let Cmd::Service(ServiceCmd::Create(a)) = c.command else {
            panic!()
        };
        assert!(a.common.detach);
        assert_eq!(a.image, "nginx");
        assert_eq!(a.command, vec!["nginx", "-g", "daemon off;"]);
        let c = parse(&[
            "flotilla",
            "service",
            "update",
            "--force",
            "--env-add",
            "A=1",
            "web",
            "--context",
            "lab",
        ]);
        assert_eq!(c.context.as_deref(), Some("lab"));
        assert!(
            matches!(c.command, Cmd::Service(ServiceCmd::Update(ref u)) if u.force && u.service == "web")
        );
        assert!(matches!(
            parse(&["flotilla", "service", "logs", "-f", "-n", "10", "--no-task-ids", "web"]).command,
            Cmd::Service(ServiceCmd::Logs(ref l)) if l.follow && l.tail == "10" && l.no_task_ids
        ));
        assert!(matches!(
            parse(&["flotilla", "service", "scale", "web=3", "api=1"]).command,
            Cmd::Service(ServiceCmd::Scale(_))
        ));
        assert!(matches!(
            parse(&["flotilla", "node", "ls", "-q"]).command,
            Cmd::Node(_)
        ));
        assert!(matches!(
            parse(&[
                "flotilla",
                "node",
                "update",
                "--availability",
                "drain",
                "h2"
            ])
            .command,
            Cmd::Node(_)
        ));
        assert!(matches!(
            parse(&["flotilla", "cluster", "join-token", "-q", "worker"]).command,
            Cmd::Cluster(_)
        ));
        assert!(matches!(
            parse(&["flotilla", "secret", "create", "db", "-"]).command,
            Cmd::Secret(_)
        ));
        assert!(matches!(
            parse(&["flotilla", "config", "inspect", "--pretty", "c"]).command,
            Cmd::Config(_)
        ));
        assert!(matches!(
            parse(&["flotilla", "context", "use", "prod"]).command,
            Cmd::Context(_)
        ));
        assert!(Cli::try_parse_from(["flotilla", "cluster", "join-token", "boss"]).is_err());
        assert!(
            Cli::try_parse_from(["flotilla", "node", "update", "--availability", "off", "h"])
                .is_err()
        );
    }

    #[test]
    fn only_the_update_a_write_started_is_followed() {
        let mut s = svc(
            Mode::Replicated(ReplicatedService { replicas: 1 }),
            vec![],
            0,
        );
        assert_eq!(tracked_update(&s), None);
        s.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackCompleted as i32,
            started_at: 5,
            ..Default::default()
        });
        assert_eq!(tracked_update(&s), None);
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Updating as i32,
            started_at: 7,
            ..Default::default()
        });
        assert_eq!(tracked_update(&s), Some(7));
    }

    #[test]
    fn update_state_lines_say_it_once() {
        let m = "update paused due to failure or early termination of task t1";
        assert_eq!(state_line("update paused", m), m);
        assert_eq!(state_line("update paused", ""), "update paused");
        assert_eq!(
            state_line("update rolled back", "rollback completed"),
            "update rolled back: rollback completed"
        );
    }

    #[test]
    fn log_lines() {
        let nodes: HashMap<String, String> = [("n1".to_string(), "host1".to_string())].into();
        let l = LogLine {
            task_id: "abc123def456ghi789jkl0123".into(),
            node_id: "n1".into(),
            slot: 1,
            stream: "stdout".into(),
            timestamp_ns: 5,
            data: b"hello\nworld".to_vec(),
        };
        let o = LogOpts::default();
        let p = log_prefix("web", &l, &nodes, &o);
        assert_eq!(p, "web.1.abc123def456@host1");
        assert_eq!(
            String::from_utf8(log_output(&p, &l, &o)).unwrap(),
            "web.1.abc123def456@host1    | hello\nweb.1.abc123def456@host1    | world\n"
        );
        let o = LogOpts {
            no_task_ids: true,
            timestamps: true,
            ..Default::default()
        };
        let p = log_prefix("web", &l, &nodes, &o);
        assert_eq!(p, "web.1@host1");
        assert_eq!(
            String::from_utf8(log_output(
                &p,
                &LogLine {
                    data: b"x\n".to_vec(),
                    ..l.clone()
                },
                &o
            ))
            .unwrap(),
            "web.1@host1    | 1970-01-01T00:00:00.000000005Z x\n"
        );
        let o = LogOpts {
            no_trunc: true,
            no_resolve: true,
            ..Default::default()
        };
        let global = LogLine {
            slot: 0,
            ..l.clone()
        };
        assert_eq!(
            log_prefix("web", &global, &nodes, &o),
            "web.n1.abc123def456ghi789jkl0123@n1"
        );
        let raw = LogOpts {
            raw: true,
            ..Default::default()
        };
        assert_eq!(log_output("ignored", &l, &raw), b"hello\nworld\n".to_vec());
    }

    #[test]
    fn pretty_text() {
        let mut s = svc(
            Mode::Replicated(ReplicatedService { replicas: 3 }),
            vec![PortConfig {
                target_port: 80,
                published_port: 8080,
                publish_mode: "host".into(),
                ..Default::default()
            }],
            0,
        );
        if let Some(sp) = s.spec.as_mut() {
            sp.update = Some(spec::default_update_config());
            if let Some(t) = sp.task.as_mut() {
                t.restart = Some(spec::default_restart());
                t.placement = Some(Placement {
                    constraints: vec!["node.role==worker".into()],
                    ..Default::default()
                });
                if let Some(c) = t.container.as_mut() {
                    c.stop_grace_period_ms = 10_000;
                    c.env = vec!["A=1".into()];
                }
            }
        }
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Completed as i32,
            message: "update completed".into(),
            ..Default::default()
        });
        assert_eq!(
            pretty(&s),
            "ID:                     0123456789abcdefghijklm
Name:                   web
Service Mode:           Replicated
 Replicas:              3
UpdateStatus:
 State:                 completed
 Message:               update completed
Placement:
 Constraints:           [node.role==worker]
UpdateConfig:
 Parallelism:           1
 On failure:            pause
 Monitoring Period:     5s
 Max failure ratio:     0
 Update order:          stop-first
ContainerSpec:
 Image:                 nginx:1.27
 Env:                   A=1
 Stop Grace Period:     10s
Restart Policy:
 Condition:             any
 Delay:                 5s
 Max Attempts:          0
 Window:                0s
Ports:
 PublishedPort = 8080
  Protocol = tcp
  TargetPort = 80
  PublishMode = host
"
        );
    }
}
