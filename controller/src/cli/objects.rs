//! How the cluster's objects (`flotilla.control.v1`) are shown: enum names as docker prints
//! them (`ready`, `on-failure`, `Running`), Go-style durations (`1m30s`), the inspect JSON
//! (docker's PascalCase keys, `Version.Index`, RFC 3339 times, enums as names, no secret
//! data), and the task table shared by `service ps` and `node ps` (history under `\_`).
//! Everything here is pure and unit-tested.

use std::collections::HashMap;

use flotilla_proto::control::v1::{
    NodeAvailability, NodeRole, NodeState, PortConfig, PortProtocol, RestartCondition, Task,
    TaskState, UpdateFailureAction, UpdateOrder, UpdateState,
};
use serde::Serialize;
use serde_json::Value;

use super::format;

// ------------------------------------------------------------------ enum names

pub fn role_name(v: i32) -> &'static str {
    match NodeRole::try_from(v) {
        Ok(NodeRole::Worker) => "worker",
        Ok(NodeRole::Manager) => "manager",
        Err(_) => "unknown",
    }
}

pub fn availability_name(v: i32) -> &'static str {
    match NodeAvailability::try_from(v) {
        Ok(NodeAvailability::Active) => "active",
        Ok(NodeAvailability::Pause) => "pause",
        Ok(NodeAvailability::Drain) => "drain",
        Err(_) => "unknown",
    }
}

pub fn node_state_name(v: i32) -> &'static str {
    match NodeState::try_from(v) {
        Ok(NodeState::Unknown) | Err(_) => "unknown",
        Ok(NodeState::Down) => "down",
        Ok(NodeState::Ready) => "ready",
        Ok(NodeState::Disconnected) => "disconnected",
    }
}

pub fn task_state_name(v: i32) -> &'static str {
    match TaskState::try_from(v) {
        Ok(TaskState::New) => "new",
        Ok(TaskState::Pending) => "pending",
        Ok(TaskState::Assigned) => "assigned",
        Ok(TaskState::Accepted) => "accepted",
        Ok(TaskState::Preparing) => "preparing",
        Ok(TaskState::Ready) => "ready",
        Ok(TaskState::Starting) => "starting",
        Ok(TaskState::Running) => "running",
        Ok(TaskState::Complete) => "complete",
        Ok(TaskState::Shutdown) => "shutdown",
        Ok(TaskState::Failed) => "failed",
        Ok(TaskState::Rejected) => "rejected",
        Ok(TaskState::Remove) => "remove",
        Ok(TaskState::Orphaned) => "orphaned",
        Err(_) => "unknown",
    }
}

pub fn restart_condition_name(v: i32) -> &'static str {
    match RestartCondition::try_from(v) {
        Ok(RestartCondition::Any) => "any",
        Ok(RestartCondition::OnFailure) => "on-failure",
        Ok(RestartCondition::None) => "none",
        Err(_) => "unknown",
    }
}

pub fn failure_action_name(v: i32) -> &'static str {
    match UpdateFailureAction::try_from(v) {
        Ok(UpdateFailureAction::Pause) => "pause",
        Ok(UpdateFailureAction::Continue) => "continue",
        Ok(UpdateFailureAction::Rollback) => "rollback",
        Err(_) => "unknown",
    }
}

pub fn order_name(v: i32) -> &'static str {
    match UpdateOrder::try_from(v) {
        Ok(UpdateOrder::StopFirst) => "stop-first",
        Ok(UpdateOrder::StartFirst) => "start-first",
        Err(_) => "unknown",
    }
}

pub fn protocol_name(v: i32) -> &'static str {
    match PortProtocol::try_from(v) {
        Ok(PortProtocol::Tcp) => "tcp",
        Ok(PortProtocol::Udp) => "udp",
        Err(_) => "unknown",
    }
}

/// Docker's update states (`updating`, `rollback_completed`, ...).
pub fn update_state_name(v: i32) -> &'static str {
    match UpdateState::try_from(v) {
        Ok(UpdateState::Unknown) | Err(_) => "",
        Ok(UpdateState::Updating) => "updating",
        Ok(UpdateState::Paused) => "paused",
        Ok(UpdateState::Completed) => "completed",
        Ok(UpdateState::RollbackStarted) => "rollback_started",
        Ok(UpdateState::RollbackPaused) => "rollback_paused",
        Ok(UpdateState::RollbackCompleted) => "rollback_completed",
    }
}

/// `ready` -> `Ready`.
pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

// ------------------------------------------------------------------ values

/// Go's `time.Duration.String()` for a whole number of milliseconds: `0s`, `500ms`, `5s`,
/// `1.5s`, `1m30s`, `2h0m0s`.
pub fn go_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, ms / 60_000 % 60);
    let (s, frac) = (ms / 1000 % 60, ms % 1000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// Unix milliseconds as RFC 3339 (Go's zero time for 0).
pub fn rfc3339_ms(ms: i64) -> String {
    format::rfc3339(ms.saturating_mul(1_000_000))
}

/// Nano-CPUs as a decimal CPU count: 1_500_000_000 -> `1.5`.
pub fn cpus(nano: i64) -> String {
    let (i, f) = (nano / 1_000_000_000, nano % 1_000_000_000);
    if f == 0 {
        i.to_string()
    } else {
        format!("{i}.{}", format!("{f:09}").trim_end_matches('0'))
    }
}

/// A published port as docker's `service ls`/`ps` show it: `*:8080->80/tcp`.
pub fn port_text(p: &PortConfig) -> String {
    let proto = protocol_name(p.protocol);
    if p.published_port == 0 {
        format!("*:0->{}/{proto}", p.target_port)
    } else {
        format!("*:{}->{}/{proto}", p.published_port, p.target_port)
    }
}

/// Ports joined with ", ".
pub fn ports_text(ports: &[PortConfig]) -> String {
    ports.iter().map(port_text).collect::<Vec<_>>().join(", ")
}

/// Standard base64 with padding (config data in inspect output, as docker shows it). Written
/// here because it is the only use and the workspace has no base64 crate.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

// ------------------------------------------------------------------ inspect JSON

/// Which object an inspect view is for (the enum fields differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    Service,
    Task,
    Secret,
    Config,
}

type Namer = fn(i32) -> &'static str;

fn at_path(v: &mut Value, path: &[&str], f: Namer) {
    let Some((first, rest)) = path.split_first() else {
        if let Some(n) = v.as_i64() {
            *v = Value::String(f(n as i32).to_string());
        }
        return;
    };
    match (*first, v) {
        ("*", Value::Array(items)) => {
            for i in items {
                at_path(i, rest, f);
            }
        }
        (key, Value::Object(m)) => {
            if let Some(child) = m.get_mut(key) {
                at_path(child, rest, f);
            }
        }
        _ => {}
    }
}

fn spec_enums(v: &mut Value, prefix: &[&str]) {
    let mut p = |rest: &[&str], f: Namer| {
        let full: Vec<&str> = prefix.iter().chain(rest).copied().collect();
        at_path(v, &full, f);
    };
    p(&["task", "restart", "condition"], restart_condition_name);
    p(&["update", "failure_action"], failure_action_name);
    p(&["update", "order"], order_name);
    p(&["rollback", "failure_action"], failure_action_name);
    p(&["rollback", "order"], order_name);
    p(&["endpoint", "ports", "*", "protocol"], protocol_name);
}

/// `node_id` -> `NodeID`, `root_ca_cert` -> `RootCACert`, `nano_cpus` -> `NanoCPUs`.
pub fn pascal(key: &str) -> String {
    key.split('_')
        .map(|seg| match seg {
            "id" => "ID".to_string(),
            "ip" => "IP".to_string(),
            "ca" => "CA".to_string(),
            "cpus" => "CPUs".to_string(),
            _ => capitalize(seg),
        })
        .collect()
}

/// Keys whose values are user maps (left as they are).
const USER_MAPS: &[&str] = &["labels", "engine_labels", "node_names"];
/// Keys holding unix milliseconds.
const TIMES: &[&str] = &[
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
    "last_heartbeat",
    "cert_expires_at",
    "timestamp",
];

fn rename(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, child) in m {
                if child.is_null() {
                    continue;
                }
                let child = if USER_MAPS.contains(&k.as_str()) {
                    child
                } else if TIMES.contains(&k.as_str()) && child.is_i64() {
                    Value::String(rfc3339_ms(child.as_i64().unwrap_or(0)))
                } else {
                    rename(child)
                };
                out.insert(pascal(&k), child);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(rename).collect()),
        other => other,
    }
}

/// The inspect view of a serialized object: enums named, secret data dropped, config data in
/// base64, `meta` flattened to docker's `Version.Index`/`CreatedAt`/`UpdatedAt`, keys in
/// PascalCase (user maps like labels untouched), nulls left out.
pub fn inspect_json(kind: Kind, mut v: Value) -> Value {
    match kind {
        Kind::Node => {
            at_path(&mut v, &["spec", "desired_role"], role_name);
            at_path(&mut v, &["spec", "availability"], availability_name);
            at_path(&mut v, &["status", "state"], node_state_name);
            at_path(&mut v, &["role"], role_name);
        }
        Kind::Service => {
            spec_enums(&mut v, &["spec"]);
            spec_enums(&mut v, &["previous_spec"]);
            at_path(&mut v, &["update_status", "state"], update_state_name);
        }
        Kind::Task => {
            at_path(&mut v, &["desired_state"], task_state_name);
            at_path(&mut v, &["status", "state"], task_state_name);
            at_path(
                &mut v,
                &["spec", "restart", "condition"],
                restart_condition_name,
            );
            at_path(
                &mut v,
                &["endpoint", "ports", "*", "protocol"],
                protocol_name,
            );
            at_path(
                &mut v,
                &["status", "port_status", "ports", "*", "protocol"],
                protocol_name,
            );
        }
        Kind::Secret => {
            if let Some(m) = v.as_object_mut() {
                m.remove("data_sealed");
            }
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("data");
            }
        }
        Kind::Config => {
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                if let Some(data) = spec.remove("data") {
                    let bytes: Vec<u8> = data
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|b| b.as_u64())
                                .map(|b| b as u8)
                                .collect()
                        })
                        .unwrap_or_default();
                    spec.insert("data".into(), Value::String(base64(&bytes)));
                }
            }
        }
    }
    if let Some(m) = v.as_object_mut() {
        if let Some(Value::Object(meta)) = m.remove("meta") {
            let version = meta.get("version").cloned().unwrap_or(Value::from(0));
            m.insert("version".into(), serde_json::json!({ "Index": version }));
            for k in ["created_at", "updated_at"] {
                m.insert(k.into(), meta.get(k).cloned().unwrap_or(Value::from(0)));
            }
        }
    }
    rename(v)
}

/// [`inspect_json`] of a proto object.
pub fn inspect_value<T: Serialize>(kind: Kind, obj: &T) -> anyhow::Result<Value> {
    Ok(inspect_json(kind, serde_json::to_value(obj)?))
}

// ------------------------------------------------------------------ tasks

/// One line of `service ps` / `node ps`.
#[derive(Debug, Serialize, PartialEq, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct TaskRow {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub image: String,
    pub node: String,
    pub desired_state: String,
    pub current_state: String,
    pub error: String,
    pub ports: String,
}

pub const TASK_HEADERS: [&str; 8] = [
    "ID",
    "NAME",
    "IMAGE",
    "NODE",
    "DESIRED STATE",
    "CURRENT STATE",
    "ERROR",
    "PORTS",
];

/// The table cells of a task row.
pub fn task_cells(r: &TaskRow) -> Vec<String> {
    vec![
        r.id.clone(),
        r.name.clone(),
        r.image.clone(),
        r.node.clone(),
        r.desired_state.clone(),
        r.current_state.clone(),
        r.error.clone(),
        r.ports.clone(),
    ]
}

/// `web.1` for a replicated task, `web.<node id>` for a global one.
pub fn task_name(t: &Task) -> String {
    if t.slot > 0 {
        format!("{}.{}", t.service_name, t.slot)
    } else {
        format!("{}.{}", t.service_name, t.node_id)
    }
}

fn created(t: &Task) -> i64 {
    t.meta.as_ref().map(|m| m.created_at).unwrap_or(0)
}

/// Orders tasks like docker's `service ps`: by service name, then slot (or node for global
/// services), newest first within a slot.
pub fn sort_tasks(tasks: &mut [Task]) {
    tasks.sort_by(|a, b| {
        // Replicated tasks group by slot whatever node they ran on; global ones by node.
        let node = |t: &Task| {
            if t.slot == 0 {
                t.node_id.clone()
            } else {
                String::new()
            }
        };
        (&a.service_name, a.slot, node(a))
            .cmp(&(&b.service_name, b.slot, node(b)))
            .then_with(|| created(b).cmp(&created(a)))
            .then_with(|| {
                let ts = |t: &Task| t.status.as_ref().map(|s| s.timestamp).unwrap_or(0);
                ts(b).cmp(&ts(a))
            })
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// The rows of sorted tasks: the newest task of a slot carries its name, older ones are shown
/// as history (` \_ web.1`). `now_ms` is for "5 seconds ago".
pub fn task_rows(
    tasks: &[Task],
    node_names: &HashMap<String, String>,
    now_ms: i64,
    no_trunc: bool,
) -> Vec<TaskRow> {
    let mut rows = Vec::with_capacity(tasks.len());
    let mut prev: Option<String> = None;
    for t in tasks {
        let name = task_name(t);
        let shown = if prev.as_deref() == Some(name.as_str()) {
            format!(" \\_ {name}")
        } else {
            name.clone()
        };
        prev = Some(name);
        let st = t.status.clone().unwrap_or_default();
        let state = capitalize(task_state_name(st.state));
        let current_state = if st.timestamp > 0 {
            format!(
                "{state} {}",
                format::ago(
                    st.timestamp.saturating_mul(1_000_000),
                    now_ms.saturating_mul(1_000_000)
                )
            )
        } else {
            state
        };
        let image = t
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .map(|c| c.image.clone())
            .unwrap_or_default();
        let image = if no_trunc {
            image
        } else {
            image.split('@').next().unwrap_or("").to_string()
        };
        let err = if no_trunc {
            st.err.clone()
        } else {
            format::ellipsis(&st.err, 30)
        };
        rows.push(TaskRow {
            id: if no_trunc {
                t.id.clone()
            } else {
                format::short_id(&t.id)
            },
            name: shown,
            image,
            node: node_names
                .get(&t.node_id)
                .cloned()
                .unwrap_or_else(|| t.node_id.clone()),
            desired_state: capitalize(task_state_name(t.desired_state)),
            current_state,
            error: if err.is_empty() {
                err
            } else {
                format!("\"{err}\"")
            },
            ports: st
                .port_status
                .as_ref()
                .map(|p| ports_text(&p.ports))
                .unwrap_or_default(),
        });
    }
    rows
}

/// One `Key:   value` line of the `--pretty` outputs (values aligned at column 25).
pub fn kv(s: &mut String, key: &str, value: impl std::fmt::Display) {
    s.push_str(&format!("{:<24}{value}\n", format!("{key}:")));
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    format::now_ns() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::control::v1::{
        ContainerSpec, Meta, Node, NodeSpec, NodeStatus, PortStatus, Secret, SecretSpec, TaskSpec,
        TaskStatus,
    };

    #[test]
    fn durations_like_go() {
        assert_eq!(go_duration_ms(0), "0s");
        assert_eq!(go_duration_ms(500), "500ms");
        assert_eq!(go_duration_ms(5000), "5s");
        assert_eq!(go_duration_ms(1500), "1.5s");
        assert_eq!(go_duration_ms(90_000), "1m30s");
        assert_eq!(go_duration_ms(7_200_000), "2h0m0s");
        assert_eq!(go_duration_ms(3_661_250), "1h1m1.25s");
    }

    #[test]
    fn small_values() {
        assert_eq!(cpus(1_500_000_000), "1.5");
        assert_eq!(cpus(2_000_000_000), "2");
        assert_eq!(cpus(250_000_000), "0.25");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(pascal("node_id"), "NodeID");
        assert_eq!(pascal("root_ca_cert"), "RootCACert");
        assert_eq!(pascal("nano_cpus"), "NanoCPUs");
        assert_eq!(pascal("Replicated"), "Replicated");
        assert_eq!(capitalize("running"), "Running");
        assert_eq!(
            port_text(&PortConfig {
                protocol: PortProtocol::Udp as i32,
                target_port: 53,
                published_port: 5353,
                ..Default::default()
            }),
            "*:5353->53/udp"
        );
    }

    #[test]
    fn node_inspect_json() {
        let n = Node {
            id: "n1".into(),
            meta: Some(Meta {
                version: 7,
                created_at: 1_000,
                updated_at: 2_500,
            }),
            spec: Some(NodeSpec {
                desired_role: NodeRole::Manager as i32,
                availability: NodeAvailability::Drain as i32,
                labels: [("zone_x".to_string(), "a".to_string())].into(),
            }),
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                ..Default::default()
            }),
            role: NodeRole::Manager as i32,
            ..Default::default()
        };
        let j = inspect_value(Kind::Node, &n).unwrap();
        assert_eq!(j["ID"], "n1");
        assert_eq!(j["Version"]["Index"], 7);
        assert_eq!(j["CreatedAt"], "1970-01-01T00:00:01Z");
        assert_eq!(j["UpdatedAt"], "1970-01-01T00:00:02.5Z");
        assert_eq!(j["Spec"]["DesiredRole"], "manager");
        assert_eq!(j["Spec"]["Availability"], "drain");
        assert_eq!(j["Spec"]["Labels"]["zone_x"], "a");
        assert_eq!(j["Status"]["State"], "ready");
        assert_eq!(j["Role"], "manager");
        assert!(j.get("Description").is_none(), "nulls are left out: {j}");
    }

    #[test]
    fn service_inspect_json() {
        use flotilla_proto::control::v1::{
            service_spec::Mode, EndpointSpec, ReplicatedService, RestartPolicy, Service,
            ServiceSpec, UpdateConfig, UpdateStatus,
        };
        let s = Service {
            id: "s1".into(),
            meta: Some(Meta {
                version: 12,
                created_at: 0,
                updated_at: 0,
            }),
            spec: Some(ServiceSpec {
                name: "web".into(),
                labels: [("tier_x".to_string(), "front".to_string())].into(),
                task: Some(TaskSpec {
                    container: Some(ContainerSpec {
                        image: "nginx".into(),
                        ..Default::default()
                    }),
                    restart: Some(RestartPolicy {
                        condition: RestartCondition::OnFailure as i32,
                        delay_ms: 5000,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                mode: Some(Mode::Replicated(ReplicatedService { replicas: 3 })),
                update: Some(UpdateConfig {
                    parallelism: 1,
                    failure_action: UpdateFailureAction::Rollback as i32,
                    order: UpdateOrder::StartFirst as i32,
                    ..Default::default()
                }),
                endpoint: Some(EndpointSpec {
                    ports: vec![PortConfig {
                        protocol: PortProtocol::Udp as i32,
                        target_port: 53,
                        published_port: 53,
                        publish_mode: "host".into(),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            spec_version: 2,
            update_status: Some(UpdateStatus {
                state: UpdateState::RollbackCompleted as i32,
                started_at: 1_500,
                ..Default::default()
            }),
            ..Default::default()
        };
        let j = inspect_value(Kind::Service, &s).unwrap();
        assert_eq!(j["ID"], "s1");
        assert_eq!(j["Version"]["Index"], 12);
        assert_eq!(j["SpecVersion"], 2);
        assert_eq!(j["Spec"]["Name"], "web");
        assert_eq!(j["Spec"]["Labels"]["tier_x"], "front");
        assert_eq!(j["Spec"]["Mode"]["Replicated"]["Replicas"], 3);
        assert_eq!(j["Spec"]["Task"]["Restart"]["Condition"], "on-failure");
        assert_eq!(j["Spec"]["Task"]["Restart"]["DelayMs"], 5000);
        assert_eq!(j["Spec"]["Update"]["FailureAction"], "rollback");
        assert_eq!(j["Spec"]["Update"]["Order"], "start-first");
        assert_eq!(j["Spec"]["Endpoint"]["Ports"][0]["Protocol"], "udp");
        assert_eq!(j["UpdateStatus"]["State"], "rollback_completed");
        assert_eq!(j["UpdateStatus"]["StartedAt"], "1970-01-01T00:00:01.5Z");
    }

    #[test]
    fn secret_inspect_never_shows_data() {
        let s = Secret {
            id: "s1".into(),
            spec: Some(SecretSpec {
                name: "db".into(),
                labels: Default::default(),
                data: b"hunter2".to_vec(),
            }),
            data_sealed: vec![1, 2, 3],
            digest: "abc".into(),
            ..Default::default()
        };
        let j = inspect_value(Kind::Secret, &s).unwrap();
        let text = j.to_string();
        assert!(!text.contains("104"), "{text}"); // 'h'
        assert!(j["Spec"].get("Data").is_none());
        assert!(j.get("DataSealed").is_none());
        assert_eq!(j["Digest"], "abc");
        assert_eq!(j["Spec"]["Name"], "db");
        let c = flotilla_proto::control::v1::Config {
            id: "c1".into(),
            spec: Some(flotilla_proto::control::v1::ConfigSpec {
                name: "nginx.conf".into(),
                labels: Default::default(),
                data: b"foo".to_vec(),
            }),
            ..Default::default()
        };
        assert_eq!(
            inspect_value(Kind::Config, &c).unwrap()["Spec"]["Data"],
            "Zm9v"
        );
    }

    fn task(
        id: &str,
        slot: u64,
        node: &str,
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
            service_id: "svc".into(),
            slot,
            node_id: node.into(),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "nginx:1.27@sha256:0123".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
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
    fn task_table_with_history() {
        let now = 1_000_000;
        let mut failed = task(
            "aaaaaaaaaaaaaaaaaaaaaaaaa",
            1,
            "n1",
            now - 120_000,
            TaskState::Failed,
            TaskState::Shutdown,
        );
        if let Some(s) = failed.status.as_mut() {
            s.err = "task: non-zero exit (1): the process was killed".into();
        }
        let mut running = task(
            "bbbbbbbbbbbbbbbbbbbbbbbbb",
            1,
            "n1",
            now - 5_000,
            TaskState::Running,
            TaskState::Running,
        );
        if let Some(s) = running.status.as_mut() {
            s.port_status = Some(PortStatus {
                ports: vec![PortConfig {
                    target_port: 80,
                    published_port: 8080,
                    publish_mode: "host".into(),
                    ..Default::default()
                }],
            });
        }
        let pending = task(
            "ccccccccccccccccccccccccc",
            2,
            "",
            now - 1_000,
            TaskState::Pending,
            TaskState::Running,
        );
        let mut tasks = vec![failed, pending, running];
        sort_tasks(&mut tasks);
        let names: HashMap<String, String> = [("n1".to_string(), "host1".to_string())].into();
        let rows = task_rows(&tasks, &names, now, false);
        let body: Vec<Vec<String>> = rows.iter().map(task_cells).collect();
        assert_eq!(
            format::table(&TASK_HEADERS, &body),
            "ID             NAME        IMAGE        NODE    DESIRED STATE   CURRENT STATE           ERROR                              PORTS\n\
             bbbbbbbbbbbb   web.1       nginx:1.27   host1   Running         Running 5 seconds ago                                      *:8080->80/tcp\n\
             aaaaaaaaaaaa    \\_ web.1   nginx:1.27   host1   Shutdown        Failed 2 minutes ago    \"task: non-zero exit (1): the …\"\n\
             cccccccccccc   web.2       nginx:1.27           Running         Pending 1 second ago\n"
        );
        let full = task_rows(&tasks, &names, now, true);
        assert_eq!(full[1].id, "aaaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(full[1].image, "nginx:1.27@sha256:0123");
        assert_eq!(
            full[1].error,
            "\"task: non-zero exit (1): the process was killed\""
        );
        let j = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(
            j,
            serde_json::json!({
                "ID": "bbbbbbbbbbbb", "Name": "web.1", "Image": "nginx:1.27", "Node": "host1",
                "DesiredState": "Running", "CurrentState": "Running 5 seconds ago",
                "Error": "", "Ports": "*:8080->80/tcp"
            })
        );
    }

    #[test]
    fn a_replacement_on_another_node_comes_first_in_its_slot() {
        // The old task ran on node "b", its replacement on node "a" (which sorts first by id).
        let mut tasks = vec![
            task("old", 1, "b", 100, TaskState::Running, TaskState::Shutdown),
            task("new", 1, "a", 200, TaskState::Running, TaskState::Running),
        ];
        sort_tasks(&mut tasks);
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["new", "old"]);
    }

    #[test]
    fn global_task_names() {
        let t = task(
            "x",
            0,
            "node-abc",
            1,
            TaskState::Running,
            TaskState::Running,
        );
        assert_eq!(task_name(&t), "web.node-abc");
    }
}
