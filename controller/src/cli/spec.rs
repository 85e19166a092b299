//! `flotilla service create|update` flags, spelled as Swarm spells them, and their pure
//! translation into a [`ServiceSpec`]: [`build_create`] makes a whole spec (documented
//! defaults written out, so inspect shows what runs), [`apply_update`] changes a spec read from
//! the controller (`--env-add`, `--constraint-rm`, `--force`, ...). Every user error is caught
//! here, before anything is sent, with a message that quotes the input and says what is
//! expected. Secret and config references come out with names only; the command resolves them
//! to ids with the controller before sending.

use std::collections::HashMap;

use clap::{ArgAction, Args};
use flotilla_proto::control::v1::{
    service_spec::Mode, ConfigReference, ContainerSpec, EndpointSpec, GlobalService, HealthConfig,
    Mount, Placement, PlacementPreference, PortConfig, PortProtocol, ReplicatedService,
    ResourceRequirements, Resources, RestartCondition, RestartPolicy, SecretReference, ServiceSpec,
    SpreadOver, TaskSpec, UpdateConfig, UpdateFailureAction, UpdateOrder,
};

use super::container::Env;
use super::parse::{self, ParseError};

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

// ------------------------------------------------------------------ clap

/// Flags `service create` and `service update` share. In an update only the flags given change
/// the spec.
#[derive(Debug, Args, Clone, Default)]
pub struct CommonFlags {
    /// Number of tasks (replicated mode)
    #[arg(long, value_name = "N", help_heading = "Scheduling")]
    pub replicas: Option<u64>,
    /// Maximum number of tasks per node (0 = unlimited)
    #[arg(long, value_name = "N", help_heading = "Scheduling")]
    pub replicas_max_per_node: Option<u64>,
    /// Move tasks onto nodes that join or come back, to even out the spread (Swarm never does)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, value_name = "BOOL", help_heading = "Scheduling")]
    pub rebalance: Option<bool>,

    /// Reserve CPUs for each task (e.g. 0.5)
    #[arg(long, value_name = "DECIMAL", help_heading = "Resources")]
    pub reserve_cpu: Option<String>,
    /// Reserve memory for each task (e.g. 512m)
    #[arg(long, value_name = "BYTES", help_heading = "Resources")]
    pub reserve_memory: Option<String>,
    /// Limit CPUs of each task (e.g. 1.5)
    #[arg(long, value_name = "DECIMAL", help_heading = "Resources")]
    pub limit_cpu: Option<String>,
    /// Limit memory of each task (e.g. 1g)
    #[arg(long, value_name = "BYTES", help_heading = "Resources")]
    pub limit_memory: Option<String>,
    /// Limit the number of processes of each task (0 = unlimited)
    #[arg(long, value_name = "N", help_heading = "Resources")]
    pub limit_pids: Option<i64>,

    /// Restart when: none, on-failure, any (default any)
    #[arg(long, value_name = "COND", value_parser = ["none", "on-failure", "any"], help_heading = "Restart policy")]
    pub restart_condition: Option<String>,
    /// Delay between restart attempts (default 5s)
    #[arg(long, value_name = "DURATION", help_heading = "Restart policy")]
    pub restart_delay: Option<String>,
    /// Maximum number of restarts before giving up (0 = unlimited)
    #[arg(long, value_name = "N", help_heading = "Restart policy")]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (0 = unbounded)
    #[arg(long, value_name = "DURATION", help_heading = "Restart policy")]
    pub restart_window: Option<String>,

    /// Tasks updated at once (0 = all at once; default 1)
    #[arg(long, value_name = "N", help_heading = "Rolling update")]
    pub update_parallelism: Option<u64>,
    /// Delay between updates of batches
    #[arg(long, value_name = "DURATION", help_heading = "Rolling update")]
    pub update_delay: Option<String>,
    /// Action on update failure: pause, continue, rollback (default pause)
    #[arg(long, value_name = "ACTION", value_parser = ["pause", "continue", "rollback"], help_heading = "Rolling update")]
    pub update_failure_action: Option<String>,
    /// Time to watch each updated task for failure (default 5s)
    #[arg(long, value_name = "DURATION", help_heading = "Rolling update")]
    pub update_monitor: Option<String>,
    /// Failure rate to tolerate during an update (0 to 1)
    #[arg(long, value_name = "RATIO", help_heading = "Rolling update")]
    pub update_max_failure_ratio: Option<f32>,
    /// Update order: stop-first, start-first (default stop-first)
    #[arg(long, value_name = "ORDER", value_parser = ["stop-first", "start-first"], help_heading = "Rolling update")]
    pub update_order: Option<String>,

    /// Tasks rolled back at once (0 = all at once; default 1)
    #[arg(long, value_name = "N", help_heading = "Rollback")]
    pub rollback_parallelism: Option<u64>,
    /// Delay between rollbacks of batches
    #[arg(long, value_name = "DURATION", help_heading = "Rollback")]
    pub rollback_delay: Option<String>,
    /// Action on rollback failure: pause, continue (default pause)
    #[arg(long, value_name = "ACTION", value_parser = ["pause", "continue"], help_heading = "Rollback")]
    pub rollback_failure_action: Option<String>,
    /// Time to watch each rolled back task for failure (default 5s)
    #[arg(long, value_name = "DURATION", help_heading = "Rollback")]
    pub rollback_monitor: Option<String>,
    /// Failure rate to tolerate during a rollback (0 to 1)
    #[arg(long, value_name = "RATIO", help_heading = "Rollback")]
    pub rollback_max_failure_ratio: Option<f32>,
    /// Rollback order: stop-first, start-first (default stop-first)
    #[arg(long, value_name = "ORDER", value_parser = ["stop-first", "start-first"], help_heading = "Rollback")]
    pub rollback_order: Option<String>,

    /// Time to wait after the stop signal before killing a task (default 10s)
    #[arg(long, value_name = "DURATION", help_heading = "Container")]
    pub stop_grace_period: Option<String>,
    /// Signal to stop the container (e.g. SIGQUIT)
    #[arg(long, value_name = "SIGNAL", help_heading = "Container")]
    pub stop_signal: Option<String>,
    /// Working directory inside the container
    #[arg(short, long, value_name = "DIR", help_heading = "Container")]
    pub workdir: Option<String>,
    /// Username or UID[:GID]
    #[arg(short, long, value_name = "USER", help_heading = "Container")]
    pub user: Option<String>,
    /// Container hostname
    #[arg(long, value_name = "NAME", help_heading = "Container")]
    pub hostname: Option<String>,
    /// Override the image's ENTRYPOINT (split like a shell; "" = the image's)
    #[arg(
        long,
        value_name = "CMD",
        allow_hyphen_values = true,
        help_heading = "Container"
    )]
    pub entrypoint: Option<String>,
    /// Mount the container's root filesystem read-only
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, value_name = "BOOL", help_heading = "Container")]
    pub read_only: Option<bool>,

    /// Command to check health (run with /bin/sh -c)
    #[arg(
        long,
        value_name = "CMD",
        allow_hyphen_values = true,
        help_heading = "Health check"
    )]
    pub health_cmd: Option<String>,
    /// Time between checks
    #[arg(long, value_name = "DURATION", help_heading = "Health check")]
    pub health_interval: Option<String>,
    /// Maximum time a check may run
    #[arg(long, value_name = "DURATION", help_heading = "Health check")]
    pub health_timeout: Option<String>,
    /// Consecutive failures to report unhealthy
    #[arg(long, value_name = "N", help_heading = "Health check")]
    pub health_retries: Option<u32>,
    /// Time for the container to start before failures count
    #[arg(long, value_name = "DURATION", help_heading = "Health check")]
    pub health_start_period: Option<String>,
    /// Disable any health check of the image
    #[arg(long, help_heading = "Health check")]
    pub no_healthcheck: bool,

    /// Do not wait for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Do not show the progress while waiting
    #[arg(short, long)]
    pub quiet: bool,
    /// How long to wait for the service to converge before reporting the tasks' errors
    #[arg(long, value_name = "DURATION", default_value = "3m")]
    pub wait_timeout: String,
}

/// `service create` flags.
#[derive(Debug, Args, Clone, Default)]
pub struct ServiceCreateArgs {
    /// Service name (generated by the controller when omitted)
    #[arg(long)]
    pub name: Option<String>,
    /// Service mode: replicated (N tasks) or global (one task per eligible node)
    #[arg(long, default_value = "replicated", value_parser = ["replicated", "global"])]
    pub mode: String,
    /// Set an environment variable (KEY=VALUE, or KEY to take ours)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<String>,
    /// Service label (KEY=VALUE)
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Container label (KEY=VALUE)
    #[arg(long, value_name = "KEY=VALUE")]
    pub container_label: Vec<String>,
    /// Placement constraint, e.g. node.labels.zone==b, node.role!=manager (repeatable)
    #[arg(long, value_name = "EXPR", help_heading = "Scheduling")]
    pub constraint: Vec<String>,
    /// Placement preference: spread=node.labels.KEY (repeatable)
    #[arg(long, value_name = "PREF", help_heading = "Scheduling")]
    pub placement_pref: Vec<String>,
    /// Mount: type=bind|volume|tmpfs,source=SRC,target=DST[,readonly]
    #[arg(long, value_name = "SPEC")]
    pub mount: Vec<String>,
    /// Give a secret: NAME, or source=NAME,target=FILE,uid=,gid=,mode=0400
    #[arg(long, value_name = "SPEC")]
    pub secret: Vec<String>,
    /// Give a config: NAME, or source=NAME,target=/PATH,uid=,gid=,mode=0444
    #[arg(long, value_name = "SPEC")]
    pub config: Vec<String>,
    /// Publish a port: published=8080,target=80[,protocol=udp][,mode=host] or 8080:80[/udp]
    #[arg(short, long, value_name = "SPEC")]
    pub publish: Vec<String>,
    #[command(flatten)]
    pub common: CommonFlags,
    /// Image to run
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Command and arguments (replace the image's CMD)
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

/// `service update` flags.
#[derive(Debug, Args, Clone, Default)]
pub struct ServiceUpdateArgs {
    /// New image
    #[arg(long)]
    pub image: Option<String>,
    /// Replace the command's arguments (split like a shell)
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Replace every task even when nothing else changes
    #[arg(long)]
    pub force: bool,
    /// Add or replace an environment variable (KEY=VALUE)
    #[arg(long, value_name = "KEY=VALUE")]
    pub env_add: Vec<String>,
    /// Remove an environment variable
    #[arg(long, value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Add or replace a service label
    #[arg(long, value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a service label
    #[arg(long, value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Add or replace a container label
    #[arg(long, value_name = "KEY=VALUE")]
    pub container_label_add: Vec<String>,
    /// Remove a container label
    #[arg(long, value_name = "KEY")]
    pub container_label_rm: Vec<String>,
    /// Add a placement constraint
    #[arg(long, value_name = "EXPR", help_heading = "Scheduling")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint
    #[arg(long, value_name = "EXPR", help_heading = "Scheduling")]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference (spread=node.labels.KEY)
    #[arg(long, value_name = "PREF", help_heading = "Scheduling")]
    pub placement_pref_add: Vec<String>,
    /// Remove a placement preference
    #[arg(long, value_name = "PREF", help_heading = "Scheduling")]
    pub placement_pref_rm: Vec<String>,
    /// Add or replace a mount (same syntax as create --mount)
    #[arg(long, value_name = "SPEC")]
    pub mount_add: Vec<String>,
    /// Remove a mount by its target path
    #[arg(long, value_name = "PATH")]
    pub mount_rm: Vec<String>,
    /// Add or replace a secret (same syntax as create --secret)
    #[arg(long, value_name = "SPEC")]
    pub secret_add: Vec<String>,
    /// Remove a secret by name
    #[arg(long, value_name = "NAME")]
    pub secret_rm: Vec<String>,
    /// Add or replace a config (same syntax as create --config)
    #[arg(long, value_name = "SPEC")]
    pub config_add: Vec<String>,
    /// Remove a config by name
    #[arg(long, value_name = "NAME")]
    pub config_rm: Vec<String>,
    /// Add or replace a published port (same syntax as create --publish)
    #[arg(long, value_name = "SPEC")]
    pub publish_add: Vec<String>,
    /// Remove a published port: TARGET[/PROTOCOL], or a full port spec
    #[arg(long, value_name = "PORT")]
    pub publish_rm: Vec<String>,
    #[command(flatten)]
    pub common: CommonFlags,
    /// Service (name, id or unique id prefix)
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

// ------------------------------------------------------------------ value parsers

/// A shell-like split for `--entrypoint` and `--args`: whitespace separates words; single
/// quotes keep everything, double quotes keep all but `\"` and `\\`, a backslash outside quotes
/// escapes the next character.
pub fn shell_words(s: &str) -> Result<Vec<String>, ParseError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return err(format!("unterminated ' quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\')) => cur.push(ch),
                            Some(ch) => {
                                cur.push('\\');
                                cur.push(ch);
                            }
                            None => return err(format!("unterminated \" quote in {s:?}")),
                        },
                        Some(ch) => cur.push(ch),
                        None => return err(format!("unterminated \" quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(ch) => cur.push(ch),
                    None => return err(format!("trailing backslash in {s:?}")),
                }
            }
            ch => {
                in_word = true;
                cur.push(ch);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// A duration flag in whole milliseconds.
pub fn duration_ms(flag: &str, s: &str) -> Result<u64, ParseError> {
    let d = parse::parse_duration(s).map_err(|e| ParseError(format!("{flag}: {e}")))?;
    u64::try_from(d.as_millis()).or_else(|_| err(format!("{flag}: {s:?} is too large")))
}

fn size(flag: &str, s: &str) -> Result<i64, ParseError> {
    parse::parse_size(s).map_err(|e| ParseError(format!("{flag}: {e}")))
}

fn cpus(flag: &str, s: &str) -> Result<i64, ParseError> {
    parse::parse_cpus(s).map_err(|e| ParseError(e.0.replace("--cpus", flag)))
}

fn ratio(flag: &str, r: f32) -> Result<f32, ParseError> {
    if !(0.0..=1.0).contains(&r) {
        return err(format!("invalid {flag} {r}: must be between 0 and 1"));
    }
    Ok(r)
}

fn bool_value(spec: &str, key: &str, v: &str) -> Result<bool, ParseError> {
    match v.to_ascii_lowercase().as_str() {
        "" | "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => err(format!("invalid {spec:?}: {key}={v:?} is not a boolean")),
    }
}

/// `key=value,...` pairs (a bare key has an empty value and `bare = true`).
fn pairs(s: &str) -> Vec<(String, String, bool)> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string(), false),
            None => (p.to_ascii_lowercase(), String::new(), true),
        })
        .collect()
}

/// `--mount type=bind|volume|tmpfs,source=SRC,target=DST[,readonly[=true|false]]` (type defaults
/// to volume; `src`, `dst`, `destination`, `ro` are accepted spellings).
pub fn parse_mount(spec: &str) -> Result<Mount, ParseError> {
    let bad = |why: String| err(format!("invalid mount {spec:?}: {why}"));
    let mut m = Mount {
        r#type: "volume".into(),
        ..Default::default()
    };
    for (k, v, bare) in pairs(spec) {
        match k.as_str() {
            "type" => match v.as_str() {
                "bind" | "volume" | "tmpfs" => m.r#type = v,
                _ => return bad(format!("type must be bind, volume or tmpfs, not {v:?}")),
            },
            "source" | "src" => m.source = v,
            "target" | "destination" | "dst" => m.target = v,
            "readonly" | "ro" => m.read_only = bool_value(spec, &k, if bare { "" } else { &v })?,
            "consistency" | "bind-propagation" | "bind-nonrecursive" | "volume-driver"
            | "volume-label" | "volume-nocopy" | "volume-opt" | "tmpfs-size" | "tmpfs-mode" => {
                return bad(format!(
                    "option {k:?} is not supported by flotilla services"
                ))
            }
            _ => {
                return bad(format!(
                    "unknown option {k:?} (expected type, source, target, readonly)"
                ))
            }
        }
    }
    if m.target.is_empty() {
        return bad("target is required".into());
    }
    if !m.target.starts_with('/') {
        return bad(format!("target {:?} must be an absolute path", m.target));
    }
    match m.r#type.as_str() {
        "bind" if m.source.is_empty() => return bad("a bind mount needs a source".into()),
        "bind" if !m.source.starts_with('/') => {
            return bad(format!(
                "the bind source {:?} must be an absolute path on the node",
                m.source
            ))
        }
        "tmpfs" if !m.source.is_empty() => return bad("a tmpfs mount takes no source".into()),
        _ => {}
    }
    Ok(m)
}

fn parse_port_number(spec: &str, what: &str, v: &str) -> Result<u32, ParseError> {
    match v.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n),
        _ => err(format!(
            "invalid port spec {spec:?}: {what} {v:?} must be a number 1-65535"
        )),
    }
}

fn parse_proto(spec: &str, p: &str) -> Result<PortProtocol, ParseError> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        _ => err(format!(
            "invalid port spec {spec:?}: protocol must be tcp or udp, not {p:?}"
        )),
    }
}

/// `--publish published=8080,target=80[,protocol=tcp|udp][,mode=host]` or the short
/// `[PUBLISHED:]TARGET[/PROTOCOL]`. Host mode is the only one until overlay networks bring the
/// routing mesh; a port without a published number lets the node pick one.
pub fn parse_port(spec: &str) -> Result<PortConfig, ParseError> {
    let s = spec.trim();
    let mut p = PortConfig {
        protocol: PortProtocol::Tcp as i32,
        publish_mode: "host".into(),
        ..Default::default()
    };
    if s.contains('=') {
        for (k, v, _) in pairs(s) {
            match k.as_str() {
                "published" => p.published_port = parse_port_number(spec, "published port", &v)?,
                "target" => p.target_port = parse_port_number(spec, "target port", &v)?,
                "protocol" => p.protocol = parse_proto(spec, &v)? as i32,
                "mode" => match v.as_str() {
                    "host" => {}
                    "ingress" => {
                        return err(format!(
                            "invalid port spec {spec:?}: mode=ingress needs the routing mesh, which flotilla does not have yet; use mode=host"
                        ))
                    }
                    _ => {
                        return err(format!(
                            "invalid port spec {spec:?}: mode must be host, not {v:?}"
                        ))
                    }
                },
                _ => {
                    return err(format!(
                        "invalid port spec {spec:?}: unknown key {k:?} (expected published, target, protocol, mode)"
                    ))
                }
            }
        }
        if p.target_port == 0 {
            return err(format!("invalid port spec {spec:?}: target is required"));
        }
        return Ok(p);
    }
    let (ports, proto) = match s.split_once('/') {
        Some((a, pr)) => (a, Some(pr)),
        None => (s, None),
    };
    if let Some(pr) = proto {
        p.protocol = parse_proto(spec, pr)? as i32;
    }
    if ports.contains('-') {
        return err(format!(
            "invalid port spec {spec:?}: port ranges are not supported for services; publish each port"
        ));
    }
    match ports.split(':').collect::<Vec<_>>()[..] {
        [target] => p.target_port = parse_port_number(spec, "target port", target)?,
        [published, target] => {
            p.published_port = parse_port_number(spec, "published port", published)?;
            p.target_port = parse_port_number(spec, "target port", target)?;
        }
        _ => {
            return err(format!(
                "invalid port spec {spec:?}: expected published=P,target=T or P:T[/udp] (services take no host IP)"
            ))
        }
    }
    Ok(p)
}

/// The fields of a `--secret`/`--config` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub name: String,
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// `NAME` or `source=NAME,target=T,uid=U,gid=G,mode=0440` (mode in octal). `default_target`
/// maps the name to the default target.
fn parse_file_ref(
    what: &str,
    spec: &str,
    default_target: impl Fn(&str) -> String,
) -> Result<FileRef, ParseError> {
    let bad = |why: String| err(format!("invalid --{what} {spec:?}: {why}"));
    let mut r = FileRef {
        name: String::new(),
        target: String::new(),
        uid: 0,
        gid: 0,
        mode: 0o444,
    };
    if !spec.contains('=') {
        r.name = spec.trim().to_string();
    } else {
        for (k, v, _) in pairs(spec) {
            let num = |v: &str, radix: u32| u32::from_str_radix(v, radix).ok();
            match k.as_str() {
                "source" | "src" => r.name = v,
                "target" => r.target = v,
                "uid" => match num(&v, 10) {
                    Some(n) => r.uid = n,
                    None => return bad(format!("uid {v:?} is not a number")),
                },
                "gid" => match num(&v, 10) {
                    Some(n) => r.gid = n,
                    None => return bad(format!("gid {v:?} is not a number")),
                },
                "mode" => match num(&v, 8) {
                    Some(n) if n <= 0o7777 => r.mode = n,
                    _ => return bad(format!("mode {v:?} is not an octal file mode like 0440")),
                },
                _ => {
                    return bad(format!(
                        "unknown key {k:?} (expected source, target, uid, gid, mode)"
                    ))
                }
            }
        }
    }
    if r.name.is_empty() {
        return bad("the name (source) is required".into());
    }
    if r.target.is_empty() {
        r.target = default_target(&r.name);
    }
    Ok(r)
}

/// `--secret`: the target defaults to the name (a file under /run/secrets).
pub fn parse_secret(spec: &str) -> Result<SecretReference, ParseError> {
    let r = parse_file_ref("secret", spec, str::to_string)?;
    Ok(SecretReference {
        secret_id: String::new(),
        secret_name: r.name,
        target: r.target,
        uid: r.uid,
        gid: r.gid,
        mode: r.mode,
    })
}

/// `--config`: the target defaults to `/NAME` and must be absolute.
pub fn parse_config(spec: &str) -> Result<ConfigReference, ParseError> {
    let r = parse_file_ref("config", spec, |n| format!("/{n}"))?;
    if !r.target.starts_with('/') {
        return err(format!(
            "invalid --config {spec:?}: the target {:?} must be an absolute path",
            r.target
        ));
    }
    Ok(ConfigReference {
        config_id: String::new(),
        config_name: r.name,
        target: r.target,
        uid: r.uid,
        gid: r.gid,
        mode: r.mode,
    })
}

/// A placement constraint: `KEY==VALUE` or `KEY!=VALUE`, kept as typed (the scheduler parses
/// it); only the shape is checked here.
pub fn parse_constraint(s: &str) -> Result<String, ParseError> {
    let (k, v) = match s.split_once("==").or_else(|| s.split_once("!=")) {
        Some(kv) => kv,
        None => {
            return err(format!(
                "invalid constraint {s:?}: expected KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==b or node.role!=manager"
            ))
        }
    };
    if k.trim().is_empty() || v.trim().is_empty() {
        return err(format!(
            "invalid constraint {s:?}: the key and the value must not be empty"
        ));
    }
    Ok(s.trim().to_string())
}

/// `--placement-pref spread=node.labels.KEY`.
pub fn parse_placement_pref(s: &str) -> Result<PlacementPreference, ParseError> {
    match s.split_once('=') {
        Some(("spread", d)) if !d.trim().is_empty() => Ok(PlacementPreference {
            spread: Some(SpreadOver {
                spread_descriptor: d.trim().to_string(),
            }),
        }),
        _ => err(format!(
            "invalid placement preference {s:?}: expected spread=node.labels.KEY"
        )),
    }
}

fn pref_text(p: &PlacementPreference) -> String {
    format!(
        "spread={}",
        p.spread
            .as_ref()
            .map(|s| s.spread_descriptor.as_str())
            .unwrap_or("")
    )
}

/// Docker's rule for service names: a DNS label (letters, digits, `-`; at most 63).
pub fn validate_service_name(n: &str) -> Result<(), ParseError> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    if !ok {
        return err(format!(
            "invalid service name {n:?}: use 1-63 letters, digits and '-', not starting or ending with '-'"
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------ defaults

/// The update and rollback defaults written into a new spec (Swarm's).
pub fn default_update_config() -> UpdateConfig {
    UpdateConfig {
        parallelism: 1,
        delay_ms: 0,
        failure_action: UpdateFailureAction::Pause as i32,
        monitor_ms: 5000,
        max_failure_ratio: 0.0,
        order: UpdateOrder::StopFirst as i32,
    }
}

/// The restart policy written into a new spec.
pub fn default_restart() -> RestartPolicy {
    RestartPolicy {
        condition: RestartCondition::Any as i32,
        delay_ms: 5000,
        max_attempts: 0,
        window_ms: 0,
    }
}

/// Grace period written into a new spec.
pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

// ------------------------------------------------------------------ building

fn container(spec: &mut ServiceSpec) -> &mut ContainerSpec {
    spec.task
        .get_or_insert_with(TaskSpec::default)
        .container
        .get_or_insert_with(ContainerSpec::default)
}

fn task(spec: &mut ServiceSpec) -> &mut TaskSpec {
    spec.task.get_or_insert_with(TaskSpec::default)
}

fn placement(spec: &mut ServiceSpec) -> &mut Placement {
    task(spec).placement.get_or_insert_with(Placement::default)
}

fn env_list(files: &[String], vars: &[String], env: &Env<'_>) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    for f in files {
        let content = (env.read)(f)?;
        out.extend(parse::parse_env_file(f, &content, env.var)?);
    }
    for v in vars {
        if let Some(kv) = parse::parse_env(v, env.var)? {
            out.push(kv);
        }
    }
    Ok(out)
}

fn labels(list: &[String]) -> Result<HashMap<String, String>, ParseError> {
    list.iter().map(|l| parse::parse_label(l)).collect()
}

/// Applies the flags both commands share; only the given ones change `spec`.
pub fn apply_common(spec: &mut ServiceSpec, c: &CommonFlags) -> Result<(), ParseError> {
    if let Some(n) = c.replicas {
        match &mut spec.mode {
            Some(Mode::Replicated(r)) => r.replicas = n,
            _ => return err("--replicas can only be used with replicated mode"),
        }
    }
    if let Some(n) = c.replicas_max_per_node {
        if matches!(spec.mode, Some(Mode::Global(_))) {
            return err("--replicas-max-per-node can only be used with replicated mode");
        }
        placement(spec).max_replicas_per_node = n;
    }
    if let Some(b) = c.rebalance {
        spec.rebalance = b;
    }

    // Resources.
    let reserve_cpu = c
        .reserve_cpu
        .as_deref()
        .map(|s| cpus("--reserve-cpu", s))
        .transpose()?;
    let reserve_memory = c
        .reserve_memory
        .as_deref()
        .map(|s| size("--reserve-memory", s))
        .transpose()?;
    let limit_cpu = c
        .limit_cpu
        .as_deref()
        .map(|s| cpus("--limit-cpu", s))
        .transpose()?;
    let limit_memory = c
        .limit_memory
        .as_deref()
        .map(|s| size("--limit-memory", s))
        .transpose()?;
    if let Some(p) = c.limit_pids {
        if p < 0 {
            return err(format!("invalid --limit-pids {p}: must not be negative"));
        }
    }
    if reserve_cpu.is_some() || reserve_memory.is_some() {
        let r = task(spec)
            .resources
            .get_or_insert_with(ResourceRequirements::default)
            .reservations
            .get_or_insert_with(Resources::default);
        if let Some(v) = reserve_cpu {
            r.nano_cpus = v;
        }
        if let Some(v) = reserve_memory {
            r.memory_bytes = v;
        }
    }
    if limit_cpu.is_some() || limit_memory.is_some() || c.limit_pids.is_some() {
        let l = task(spec)
            .resources
            .get_or_insert_with(ResourceRequirements::default)
            .limits
            .get_or_insert_with(Resources::default);
        if let Some(v) = limit_cpu {
            l.nano_cpus = v;
        }
        if let Some(v) = limit_memory {
            l.memory_bytes = v;
        }
        if let Some(v) = c.limit_pids {
            l.pids = v;
        }
    }
    if let Some(res) = task(spec).resources.as_ref() {
        if let (Some(r), Some(l)) = (&res.reservations, &res.limits) {
            if l.memory_bytes > 0 && r.memory_bytes > l.memory_bytes {
                return err("--reserve-memory must not be above --limit-memory");
            }
            if l.nano_cpus > 0 && r.nano_cpus > l.nano_cpus {
                return err("--reserve-cpu must not be above --limit-cpu");
            }
        }
    }

    // Restart policy.
    let any_restart = c.restart_condition.is_some()
        || c.restart_delay.is_some()
        || c.restart_max_attempts.is_some()
        || c.restart_window.is_some();
    if any_restart {
        let delay = c
            .restart_delay
            .as_deref()
            .map(|s| duration_ms("--restart-delay", s))
            .transpose()?;
        let window = c
            .restart_window
            .as_deref()
            .map(|s| duration_ms("--restart-window", s))
            .transpose()?;
        let r = task(spec).restart.get_or_insert_with(default_restart);
        if let Some(cond) = &c.restart_condition {
            r.condition = match cond.as_str() {
                "none" => RestartCondition::None,
                "on-failure" => RestartCondition::OnFailure,
                _ => RestartCondition::Any,
            } as i32;
        }
        if let Some(d) = delay {
            r.delay_ms = d;
        }
        if let Some(n) = c.restart_max_attempts {
            r.max_attempts = n;
        }
        if let Some(w) = window {
            r.window_ms = w;
        }
    }

    // Rolling update and rollback.
    let groups = [
        (
            "update",
            &c.update_parallelism,
            &c.update_delay,
            &c.update_failure_action,
            &c.update_monitor,
            &c.update_max_failure_ratio,
            &c.update_order,
        ),
        (
            "rollback",
            &c.rollback_parallelism,
            &c.rollback_delay,
            &c.rollback_failure_action,
            &c.rollback_monitor,
            &c.rollback_max_failure_ratio,
            &c.rollback_order,
        ),
    ];
    for (which, par, delay, action, monitor, ratio_v, order) in groups {
        if par.is_none()
            && delay.is_none()
            && action.is_none()
            && monitor.is_none()
            && ratio_v.is_none()
            && order.is_none()
        {
            continue;
        }
        let delay = delay
            .as_deref()
            .map(|s| duration_ms(&format!("--{which}-delay"), s))
            .transpose()?;
        let monitor = monitor
            .as_deref()
            .map(|s| duration_ms(&format!("--{which}-monitor"), s))
            .transpose()?;
        let ratio_v = ratio_v
            .map(|r| ratio(&format!("--{which}-max-failure-ratio"), r))
            .transpose()?;
        let u = if which == "update" {
            spec.update.get_or_insert_with(default_update_config)
        } else {
            spec.rollback.get_or_insert_with(default_update_config)
        };
        if let Some(p) = par {
            u.parallelism = *p;
        }
        if let Some(d) = delay {
            u.delay_ms = d;
        }
        if let Some(a) = action {
            u.failure_action = match a.as_str() {
                "continue" => UpdateFailureAction::Continue,
                "rollback" => UpdateFailureAction::Rollback,
                _ => UpdateFailureAction::Pause,
            } as i32;
        }
        if let Some(m) = monitor {
            u.monitor_ms = m;
        }
        if let Some(r) = ratio_v {
            u.max_failure_ratio = r;
        }
        if let Some(o) = order {
            u.order = if o == "start-first" {
                UpdateOrder::StartFirst
            } else {
                UpdateOrder::StopFirst
            } as i32;
        }
    }

    // Container settings.
    if let Some(g) = &c.stop_grace_period {
        let ms = duration_ms("--stop-grace-period", g)?;
        container(spec).stop_grace_period_ms = ms;
    }
    if let Some(s) = &c.stop_signal {
        if s.trim().is_empty() {
            return err("--stop-signal is empty");
        }
        container(spec).stop_signal = s.clone();
    }
    if let Some(w) = &c.workdir {
        if !w.is_empty() && !w.starts_with('/') {
            return err(format!("invalid --workdir {w:?}: must be an absolute path"));
        }
        container(spec).dir = w.clone();
    }
    if let Some(u) = &c.user {
        container(spec).user = u.clone();
    }
    if let Some(h) = &c.hostname {
        container(spec).hostname = h.clone();
    }
    if let Some(e) = &c.entrypoint {
        let words = shell_words(e).map_err(|e| ParseError(format!("--entrypoint: {e}")))?;
        container(spec).entrypoint = words;
    }
    if let Some(r) = c.read_only {
        container(spec).read_only = r;
    }

    // Health check.
    let any_health = c.health_cmd.is_some()
        || c.health_interval.is_some()
        || c.health_timeout.is_some()
        || c.health_retries.is_some()
        || c.health_start_period.is_some();
    if c.no_healthcheck && any_health {
        return err("conflicting options: --no-healthcheck and --health-*");
    }
    if c.no_healthcheck {
        container(spec).healthcheck = Some(HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        });
    } else if any_health {
        let dur =
            |flag: &str, v: &Option<String>| v.as_deref().map(|s| duration_ms(flag, s)).transpose();
        let interval = dur("--health-interval", &c.health_interval)?;
        let timeout = dur("--health-timeout", &c.health_timeout)?;
        let start = dur("--health-start-period", &c.health_start_period)?;
        if let Some(cmd) = &c.health_cmd {
            if cmd.trim().is_empty() {
                return err("--health-cmd is empty");
            }
        }
        let h = container(spec)
            .healthcheck
            .get_or_insert_with(HealthConfig::default);
        if h.test.first().map(String::as_str) == Some("NONE") {
            h.test.clear();
        }
        if let Some(cmd) = &c.health_cmd {
            h.test = vec!["CMD-SHELL".into(), cmd.clone()];
        }
        if let Some(v) = interval {
            h.interval_ms = v;
        }
        if let Some(v) = timeout {
            h.timeout_ms = v;
        }
        if let Some(v) = c.health_retries {
            h.retries = v;
        }
        if let Some(v) = start {
            h.start_period_ms = v;
        }
    }
    Ok(())
}

/// `service create` flags -> the spec to send (secret and config references by name only).
pub fn build_create(a: &ServiceCreateArgs, env: &Env<'_>) -> Result<ServiceSpec, ParseError> {
    if a.image.trim().is_empty() {
        return err("an image is required");
    }
    let name = a.name.clone().unwrap_or_default();
    if !name.is_empty() {
        validate_service_name(&name)?;
    }
    let mode = if a.mode == "global" {
        Mode::Global(GlobalService {})
    } else {
        Mode::Replicated(ReplicatedService { replicas: 1 })
    };
    let mut mounts = Vec::new();
    for m in &a.mount {
        let m = parse_mount(m)?;
        if mounts.iter().any(|x: &Mount| x.target == m.target) {
            return err(format!("duplicate mount target {}", m.target));
        }
        mounts.push(m);
    }
    let mut secrets: Vec<SecretReference> = Vec::new();
    for s in &a.secret {
        let r = parse_secret(s)?;
        if secrets.iter().any(|x| x.target == r.target) {
            return err(format!("duplicate secret target {:?}", r.target));
        }
        secrets.push(r);
    }
    let mut configs: Vec<ConfigReference> = Vec::new();
    for s in &a.config {
        let r = parse_config(s)?;
        if configs.iter().any(|x| x.target == r.target) {
            return err(format!("duplicate config target {:?}", r.target));
        }
        configs.push(r);
    }
    let ports = a
        .publish
        .iter()
        .map(|p| parse_port(p))
        .collect::<Result<Vec<_>, _>>()?;
    check_ports(&ports)?;
    let constraints = a
        .constraint
        .iter()
        .map(|c| parse_constraint(c))
        .collect::<Result<Vec<_>, _>>()?;
    let preferences = a
        .placement_pref
        .iter()
        .map(|p| parse_placement_pref(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut spec = ServiceSpec {
        name,
        labels: labels(&a.label)?,
        task: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: a.image.clone(),
                args: a.command.clone(),
                env: env_list(&a.env_file, &a.env, env)?,
                labels: labels(&a.container_label)?,
                mounts,
                secrets,
                configs,
                stop_grace_period_ms: DEFAULT_STOP_GRACE_MS,
                ..Default::default()
            }),
            resources: None,
            restart: Some(default_restart()),
            placement: (!constraints.is_empty() || !preferences.is_empty()).then(|| Placement {
                constraints,
                preferences,
                ..Default::default()
            }),
            force_update: 0,
        }),
        mode: Some(mode),
        update: Some(default_update_config()),
        rollback: Some(default_update_config()),
        endpoint: (!ports.is_empty()).then_some(EndpointSpec { ports }),
        rebalance: false,
    };
    apply_common(&mut spec, &a.common)?;
    Ok(spec)
}

/// Two ports may not publish the same number and protocol.
fn check_ports(ports: &[PortConfig]) -> Result<(), ParseError> {
    for (i, p) in ports.iter().enumerate() {
        if p.published_port != 0
            && ports[..i]
                .iter()
                .any(|q| q.published_port == p.published_port && q.protocol == p.protocol)
        {
            return err(format!(
                "port {}/{} is published twice",
                p.published_port,
                super::objects::protocol_name(p.protocol)
            ));
        }
    }
    Ok(())
}

fn env_key(kv: &str) -> &str {
    kv.split_once('=').map(|(k, _)| k).unwrap_or(kv)
}

fn same_constraint(a: &str, b: &str) -> bool {
    let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    squash(a) == squash(b)
}

/// `--publish-rm TARGET[/PROTO]` (or a full spec): whether `p` is the port meant.
fn port_matches(sel: &str, p: &PortConfig) -> Result<bool, ParseError> {
    if sel.contains(':') || sel.contains('=') {
        let q = parse_port(sel)?;
        return Ok(q.target_port == p.target_port
            && q.protocol == p.protocol
            && (q.published_port == 0 || q.published_port == p.published_port));
    }
    let (port, proto) = match sel.split_once('/') {
        Some((a, b)) => (a, Some(parse_proto(sel, b)?)),
        None => (sel, None),
    };
    let target = parse_port_number(sel, "target port", port)?;
    Ok(p.target_port == target && proto.is_none_or(|pr| p.protocol == pr as i32))
}

/// Applies `service update` flags to the spec read from the controller. New secret and config
/// references have names only (the command resolves them).
pub fn apply_update(
    spec: &mut ServiceSpec,
    a: &ServiceUpdateArgs,
    env: &Env<'_>,
) -> Result<(), ParseError> {
    if let Some(img) = &a.image {
        if img.trim().is_empty() {
            return err("--image is empty");
        }
        container(spec).image = img.clone();
    }
    if let Some(args) = &a.args {
        container(spec).args = shell_words(args).map_err(|e| ParseError(format!("--args: {e}")))?;
    }

    // Environment: removals, then additions (replacing the same key).
    let adds = env_list(&[], &a.env_add, env)?;
    let c = container(spec);
    c.env
        .retain(|kv| !a.env_rm.iter().any(|k| env_key(k) == env_key(kv)));
    for kv in adds {
        match c.env.iter_mut().find(|x| env_key(x) == env_key(&kv)) {
            Some(x) => *x = kv,
            None => c.env.push(kv),
        }
    }

    // Labels.
    for k in &a.label_rm {
        spec.labels.remove(k);
    }
    spec.labels.extend(labels(&a.label_add)?);
    let c = container(spec);
    for k in &a.container_label_rm {
        c.labels.remove(k);
    }
    c.labels.extend(labels(&a.container_label_add)?);

    // Mounts, by target.
    let mut added = Vec::new();
    for m in &a.mount_add {
        added.push(parse_mount(m)?);
    }
    let c = container(spec);
    c.mounts.retain(|m| {
        !a.mount_rm
            .iter()
            .any(|t| t.trim_end_matches('/') == m.target.trim_end_matches('/'))
            && !added.iter().any(|n| n.target == m.target)
    });
    c.mounts.extend(added);

    // Secrets and configs: removed by name (or id), added ones replace the same name or target.
    let mut new_secrets = Vec::new();
    for s in &a.secret_add {
        new_secrets.push(parse_secret(s)?);
    }
    let mut new_configs = Vec::new();
    for s in &a.config_add {
        new_configs.push(parse_config(s)?);
    }
    let c = container(spec);
    c.secrets.retain(|r| {
        !a.secret_rm
            .iter()
            .any(|n| *n == r.secret_name || *n == r.secret_id)
            && !new_secrets
                .iter()
                .any(|n| n.secret_name == r.secret_name || n.target == r.target)
    });
    c.secrets.extend(new_secrets);
    c.configs.retain(|r| {
        !a.config_rm
            .iter()
            .any(|n| *n == r.config_name || *n == r.config_id)
            && !new_configs
                .iter()
                .any(|n| n.config_name == r.config_name || n.target == r.target)
    });
    c.configs.extend(new_configs);

    // Placement.
    let added_constraints = a
        .constraint_add
        .iter()
        .map(|c| parse_constraint(c))
        .collect::<Result<Vec<_>, _>>()?;
    let added_prefs = a
        .placement_pref_add
        .iter()
        .map(|p| parse_placement_pref(p))
        .collect::<Result<Vec<_>, _>>()?;
    let rm_prefs = a
        .placement_pref_rm
        .iter()
        .map(|p| parse_placement_pref(p).map(|p| pref_text(&p)))
        .collect::<Result<Vec<_>, _>>()?;
    if !a.constraint_rm.is_empty()
        || !added_constraints.is_empty()
        || !added_prefs.is_empty()
        || !rm_prefs.is_empty()
    {
        let p = placement(spec);
        p.constraints
            .retain(|c| !a.constraint_rm.iter().any(|r| same_constraint(r, c)));
        for c in added_constraints {
            if !p.constraints.iter().any(|x| same_constraint(x, &c)) {
                p.constraints.push(c);
            }
        }
        p.preferences.retain(|x| !rm_prefs.contains(&pref_text(x)));
        for n in added_prefs {
            if !p.preferences.iter().any(|x| pref_text(x) == pref_text(&n)) {
                p.preferences.push(n);
            }
        }
    }

    // Published ports.
    if !a.publish_rm.is_empty() || !a.publish_add.is_empty() {
        let added = a
            .publish_add
            .iter()
            .map(|p| parse_port(p))
            .collect::<Result<Vec<_>, _>>()?;
        let ep = spec.endpoint.get_or_insert_with(EndpointSpec::default);
        let mut kept = Vec::new();
        for p in std::mem::take(&mut ep.ports) {
            let mut removed = false;
            for sel in &a.publish_rm {
                removed |= port_matches(sel, &p)?;
            }
            let replaced = added.iter().any(|n| {
                (n.target_port == p.target_port && n.protocol == p.protocol)
                    || (n.published_port != 0
                        && n.published_port == p.published_port
                        && n.protocol == p.protocol)
            });
            if !removed && !replaced {
                kept.push(p);
            }
        }
        kept.extend(added);
        check_ports(&kept)?;
        ep.ports = kept;
    }

    apply_common(spec, &a.common)?;
    if a.force {
        let t = task(spec);
        t.force_update = t.force_update.wrapping_add(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Create {
        #[command(flatten)]
        a: ServiceCreateArgs,
    }

    #[derive(Debug, Parser)]
    struct Update {
        #[command(flatten)]
        a: ServiceUpdateArgs,
    }

    fn no_env() -> Env<'static> {
        Env {
            var: &|k| (k == "HOME").then(|| "/root".to_string()),
            read: &|f| {
                if f == "app.env" {
                    Ok("# comment\nA=1\n\nB=two words\nHOME\n".into())
                } else {
                    Err(ParseError(format!("reading env file {f:?}: not found")))
                }
            },
            cwd: "/",
        }
    }

    fn create(argv: &[&str]) -> Result<ServiceSpec, ParseError> {
        let mut v = vec!["create"];
        v.extend_from_slice(argv);
        let c = Create::try_parse_from(v).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        build_create(&c.a, &no_env())
    }

    fn update(spec: &mut ServiceSpec, argv: &[&str]) -> Result<(), ParseError> {
        let mut v = vec!["update"];
        v.extend_from_slice(argv);
        v.push("web");
        let u = Update::try_parse_from(v).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        apply_update(spec, &u.a, &no_env())
    }

    fn base() -> ServiceSpec {
        ServiceSpec {
            name: String::new(),
            labels: HashMap::new(),
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "nginx".into(),
                    stop_grace_period_ms: 10_000,
                    ..Default::default()
                }),
                resources: None,
                restart: Some(default_restart()),
                placement: None,
                force_update: 0,
            }),
            mode: Some(Mode::Replicated(ReplicatedService { replicas: 1 })),
            update: Some(default_update_config()),
            rollback: Some(default_update_config()),
            endpoint: None,
            rebalance: false,
        }
    }

    fn c(s: &ServiceSpec) -> &ContainerSpec {
        s.task.as_ref().unwrap().container.as_ref().unwrap()
    }

    fn e<T: std::fmt::Debug>(r: Result<T, ParseError>) -> String {
        r.expect_err("expected an error").0
    }

    #[test]
    fn minimal_create_writes_the_defaults() {
        assert_eq!(create(&["nginx"]).unwrap(), base());
    }

    #[test]
    fn name_mode_command_labels() {
        let s = create(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-l",
            "tier=front",
            "--container-label",
            "x=y",
            "--rebalance",
            "alpine",
            "sh",
            "-c",
            "sleep 1d",
        ])
        .unwrap();
        let mut want = base();
        want.name = "web".into();
        want.labels = [("tier".to_string(), "front".to_string())].into();
        want.mode = Some(Mode::Replicated(ReplicatedService { replicas: 3 }));
        want.rebalance = true;
        let wc = want.task.as_mut().unwrap().container.as_mut().unwrap();
        wc.image = "alpine".into();
        wc.args = vec!["sh".into(), "-c".into(), "sleep 1d".into()];
        wc.labels = [("x".to_string(), "y".to_string())].into();
        assert_eq!(s, want);

        let g = create(&["--mode", "global", "nginx"]).unwrap();
        assert_eq!(g.mode, Some(Mode::Global(GlobalService {})));
        assert_eq!(
            e(create(&["--mode", "global", "--replicas", "2", "nginx"])),
            "--replicas can only be used with replicated mode"
        );
        assert!(e(create(&[
            "--mode",
            "global",
            "--replicas-max-per-node",
            "2",
            "nginx"
        ]))
        .contains("replicated mode"));
        assert!(e(create(&["--name", "web_1", "nginx"])).contains("invalid service name"));
    }

    #[test]
    fn placement_flags() {
        let s = create(&[
            "--constraint",
            "node.labels.zone==b",
            "--constraint",
            "node.role!=manager",
            "--placement-pref",
            "spread=node.labels.zone",
            "--replicas-max-per-node",
            "2",
            "nginx",
        ])
        .unwrap();
        assert_eq!(
            s.task.unwrap().placement,
            Some(Placement {
                constraints: vec!["node.labels.zone==b".into(), "node.role!=manager".into()],
                preferences: vec![PlacementPreference {
                    spread: Some(SpreadOver {
                        spread_descriptor: "node.labels.zone".into()
                    })
                }],
                max_replicas_per_node: 2,
                platforms: vec![],
            })
        );
        assert!(e(create(&["--constraint", "node.role=manager", "nginx"]))
            .contains("expected KEY==VALUE"));
        assert!(e(create(&["--placement-pref", "binpack=x", "nginx"]))
            .contains("expected spread=node.labels.KEY"));
    }

    #[test]
    fn resource_flags() {
        let s = create(&[
            "--reserve-cpu",
            "0.5",
            "--reserve-memory",
            "256m",
            "--limit-cpu",
            "1.5",
            "--limit-memory",
            "1g",
            "--limit-pids",
            "100",
            "nginx",
        ])
        .unwrap();
        assert_eq!(
            s.task.unwrap().resources,
            Some(ResourceRequirements {
                limits: Some(Resources {
                    nano_cpus: 1_500_000_000,
                    memory_bytes: 1 << 30,
                    pids: 100,
                }),
                reservations: Some(Resources {
                    nano_cpus: 500_000_000,
                    memory_bytes: 256 << 20,
                    pids: 0,
                }),
            })
        );
        assert!(e(create(&["--limit-memory", "12q", "nginx"]))
            .starts_with("--limit-memory: invalid size \"12q\""));
        assert!(e(create(&["--limit-cpu", "x", "nginx"]))
            .starts_with("invalid --limit-cpu value \"x\""));
        assert_eq!(
            e(create(&[
                "--reserve-memory",
                "2g",
                "--limit-memory",
                "1g",
                "nginx"
            ])),
            "--reserve-memory must not be above --limit-memory"
        );
    }

    #[test]
    fn restart_update_rollback_flags() {
        let s = create(&[
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "10s",
            "--restart-max-attempts",
            "3",
            "--restart-window",
            "1m30s",
            "--update-parallelism",
            "2",
            "--update-delay",
            "500ms",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "30s",
            "--update-max-failure-ratio",
            "0.25",
            "--update-order",
            "start-first",
            "--rollback-parallelism",
            "0",
            "--rollback-failure-action",
            "continue",
            "nginx",
        ])
        .unwrap();
        assert_eq!(
            s.task.as_ref().unwrap().restart,
            Some(RestartPolicy {
                condition: RestartCondition::OnFailure as i32,
                delay_ms: 10_000,
                max_attempts: 3,
                window_ms: 90_000,
            })
        );
        assert_eq!(
            s.update,
            Some(UpdateConfig {
                parallelism: 2,
                delay_ms: 500,
                failure_action: UpdateFailureAction::Rollback as i32,
                monitor_ms: 30_000,
                max_failure_ratio: 0.25,
                order: UpdateOrder::StartFirst as i32,
            })
        );
        assert_eq!(
            s.rollback,
            Some(UpdateConfig {
                parallelism: 0,
                failure_action: UpdateFailureAction::Continue as i32,
                ..default_update_config()
            })
        );
        assert_eq!(
            e(create(&["--update-delay", "10", "nginx"])),
            "--update-delay: invalid duration \"10\": missing unit (expected e.g. 30s, 1m30s, 500ms, 2h)"
        );
        assert!(e(create(&["--restart-delay=-1s", "nginx"])).contains("must not be negative"));
        assert_eq!(
            e(create(&["--update-max-failure-ratio", "1.5", "nginx"])),
            "invalid --update-max-failure-ratio 1.5: must be between 0 and 1"
        );
    }

    #[test]
    fn container_flags() {
        let s = create(&[
            "-e",
            "X=1",
            "-e",
            "HOME",
            "-e",
            "UNSET",
            "--env-file",
            "app.env",
            "-w",
            "/app",
            "-u",
            "1000:1000",
            "--hostname",
            "box",
            "--entrypoint",
            "/bin/sh -c 'echo hi'",
            "--read-only",
            "--stop-grace-period",
            "30s",
            "--stop-signal",
            "SIGQUIT",
            "--health-cmd",
            "curl -f http://localhost/",
            "--health-interval",
            "10s",
            "--health-timeout",
            "2s",
            "--health-retries",
            "3",
            "--health-start-period",
            "1m",
            "nginx",
        ])
        .unwrap();
        let want = ContainerSpec {
            image: "nginx".into(),
            entrypoint: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            args: vec![],
            env: vec![
                "A=1".into(),
                "B=two words".into(),
                "HOME=/root".into(),
                "X=1".into(),
                "HOME=/root".into(),
            ],
            labels: HashMap::new(),
            dir: "/app".into(),
            user: "1000:1000".into(),
            hostname: "box".into(),
            mounts: vec![],
            secrets: vec![],
            configs: vec![],
            stop_grace_period_ms: 30_000,
            stop_signal: "SIGQUIT".into(),
            healthcheck: Some(HealthConfig {
                test: vec!["CMD-SHELL".into(), "curl -f http://localhost/".into()],
                interval_ms: 10_000,
                timeout_ms: 2_000,
                retries: 3,
                start_period_ms: 60_000,
            }),
            read_only: true,
        };
        assert_eq!(c(&s), &want);
        let s = create(&["--no-healthcheck", "nginx"]).unwrap();
        assert_eq!(
            c(&s).healthcheck,
            Some(HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            })
        );
        assert_eq!(
            e(create(&[
                "--no-healthcheck",
                "--health-retries",
                "1",
                "nginx"
            ])),
            "conflicting options: --no-healthcheck and --health-*"
        );
        assert!(e(create(&["--env-file", "nope.env", "nginx"])).contains("not found"));
        assert!(e(create(&["-w", "rel", "nginx"])).contains("absolute"));
        assert_eq!(
            create(&["--read-only=false", "nginx"]).map(|s| c(&s).read_only),
            Ok(false)
        );
    }

    #[test]
    fn mounts_secrets_configs() {
        let s = create(&[
            "--mount",
            "type=bind,source=/srv/www,target=/usr/share/nginx/html,readonly",
            "--mount",
            "source=data,target=/data",
            "--mount",
            "type=tmpfs,dst=/tmp,ro=false",
            "--secret",
            "db_password",
            "--secret",
            "source=tls_key,target=server.key,uid=101,gid=101,mode=0400",
            "--config",
            "nginx_conf",
            "--config",
            "source=site,target=/etc/nginx/conf.d/site.conf,mode=644",
            "nginx",
        ])
        .unwrap();
        let cs = c(&s);
        assert_eq!(
            cs.mounts,
            vec![
                Mount {
                    r#type: "bind".into(),
                    source: "/srv/www".into(),
                    target: "/usr/share/nginx/html".into(),
                    read_only: true,
                },
                Mount {
                    r#type: "volume".into(),
                    source: "data".into(),
                    target: "/data".into(),
                    read_only: false,
                },
                Mount {
                    r#type: "tmpfs".into(),
                    source: "".into(),
                    target: "/tmp".into(),
                    read_only: false,
                },
            ]
        );
        assert_eq!(
            cs.secrets,
            vec![
                SecretReference {
                    secret_id: "".into(),
                    secret_name: "db_password".into(),
                    target: "db_password".into(),
                    uid: 0,
                    gid: 0,
                    mode: 0o444,
                },
                SecretReference {
                    secret_id: "".into(),
                    secret_name: "tls_key".into(),
                    target: "server.key".into(),
                    uid: 101,
                    gid: 101,
                    mode: 0o400,
                },
            ]
        );
        assert_eq!(
            cs.configs,
            vec![
                ConfigReference {
                    config_id: "".into(),
                    config_name: "nginx_conf".into(),
                    target: "/nginx_conf".into(),
                    uid: 0,
                    gid: 0,
                    mode: 0o444,
                },
                ConfigReference {
                    config_id: "".into(),
                    config_name: "site".into(),
                    target: "/etc/nginx/conf.d/site.conf".into(),
                    uid: 0,
                    gid: 0,
                    mode: 0o644,
                },
            ]
        );
        assert!(e(create(&[
            "--mount",
            "type=bind,source=rel,target=/x",
            "nginx"
        ]))
        .contains("absolute path on the node"));
        assert!(e(create(&[
            "--mount",
            "type=tmpfs,source=x,target=/x",
            "nginx"
        ]))
        .contains("takes no source"));
        assert!(e(create(&["--mount", "source=x", "nginx"])).contains("target is required"));
        assert!(
            e(create(&["--mount", "target=/x,volume-driver=nfs", "nginx"]))
                .contains("not supported")
        );
        assert!(e(create(&[
            "--mount",
            "target=/x",
            "--mount",
            "type=tmpfs,target=/x",
            "nginx"
        ]))
        .contains("duplicate mount"));
        assert!(e(create(&["--secret", "source=a,mode=999", "nginx"])).contains("octal"));
        assert!(e(create(&["--secret", "target=x", "nginx"])).contains("name (source) is required"));
        assert!(e(create(&["--config", "source=a,target=rel", "nginx"])).contains("absolute"));
        assert!(e(create(&[
            "--secret",
            "a",
            "--secret",
            "source=b,target=a",
            "nginx"
        ]))
        .contains("duplicate secret target"));
    }

    #[test]
    fn ports() {
        let s = create(&[
            "-p",
            "8080:80",
            "-p",
            "5353:53/udp",
            "--publish",
            "published=8443,target=443,protocol=tcp,mode=host",
            "-p",
            "9000",
            "nginx",
        ])
        .unwrap();
        let port = |published, target, udp: bool| PortConfig {
            name: String::new(),
            protocol: if udp {
                PortProtocol::Udp
            } else {
                PortProtocol::Tcp
            } as i32,
            target_port: target,
            published_port: published,
            publish_mode: "host".into(),
        };
        assert_eq!(
            s.endpoint,
            Some(EndpointSpec {
                ports: vec![
                    port(8080, 80, false),
                    port(5353, 53, true),
                    port(8443, 443, false),
                    port(0, 9000, false),
                ]
            })
        );
        assert!(e(create(&[
            "-p",
            "published=80,target=80,mode=ingress",
            "nginx"
        ]))
        .contains("routing mesh"));
        assert!(e(create(&["-p", "127.0.0.1:80:80", "nginx"])).contains("no host IP"));
        assert!(e(create(&["-p", "80:70000", "nginx"])).contains("1-65535"));
        assert!(e(create(&["-p", "80:80/sctp", "nginx"])).contains("tcp or udp"));
        assert!(e(create(&["-p", "published=80", "nginx"])).contains("target is required"));
        assert!(e(create(&["-p", "80:80", "-p", "80:81", "nginx"])).contains("published twice"));
        assert!(e(create(&["-p", "8000-8001:80-81", "nginx"])).contains("ranges"));
    }

    #[test]
    fn update_env_labels_and_force() {
        let mut s = base();
        {
            let c = s.task.as_mut().unwrap().container.as_mut().unwrap();
            c.env = vec!["A=1".into(), "B=2".into(), "C=3".into()];
            c.labels = [
                ("keep".to_string(), "1".to_string()),
                ("old".to_string(), "x".to_string()),
            ]
            .into();
        }
        s.labels = [("tier".to_string(), "front".to_string())].into();
        s.task.as_mut().unwrap().force_update = 4;
        update(
            &mut s,
            &[
                "--env-rm",
                "B",
                "--env-rm",
                "C=whatever",
                "--env-add",
                "A=10",
                "--env-add",
                "D=4",
                "--label-rm",
                "tier",
                "--label-add",
                "team=ops",
                "--container-label-rm",
                "old",
                "--container-label-add",
                "new=y",
                "--image",
                "nginx:1.27",
                "--args",
                "nginx -g 'daemon off;'",
                "--force",
            ],
        )
        .unwrap();
        let cs = c(&s);
        assert_eq!(cs.env, vec!["A=10".to_string(), "D=4".to_string()]);
        assert_eq!(cs.image, "nginx:1.27");
        assert_eq!(cs.args, vec!["nginx", "-g", "daemon off;"]);
        assert_eq!(
            cs.labels,
            [
                ("keep".to_string(), "1".to_string()),
                ("new".to_string(), "y".to_string())
            ]
            .into()
        );
        assert_eq!(s.labels, [("team".to_string(), "ops".to_string())].into());
        assert_eq!(s.task.as_ref().unwrap().force_update, 5);
        // Without --force the counter stays.
        update(&mut s, &["--env-add", "E=5"]).unwrap();
        assert_eq!(s.task.as_ref().unwrap().force_update, 5);
    }

    #[test]
    fn update_constraints_and_prefs() {
        let mut s = base();
        update(
            &mut s,
            &[
                "--constraint-add",
                "node.labels.zone==a",
                "--constraint-add",
                "node.role==worker",
                "--placement-pref-add",
                "spread=node.labels.rack",
            ],
        )
        .unwrap();
        update(
            &mut s,
            &[
                "--constraint-rm",
                "node.labels.zone == a",
                "--constraint-add",
                "node.role==worker",
                "--constraint-add",
                "node.labels.zone==b",
                "--placement-pref-rm",
                "spread=node.labels.rack",
            ],
        )
        .unwrap();
        assert_eq!(
            s.task.as_ref().unwrap().placement,
            Some(Placement {
                constraints: vec!["node.role==worker".into(), "node.labels.zone==b".into()],
                preferences: vec![],
                max_replicas_per_node: 0,
                platforms: vec![],
            })
        );
    }

    #[test]
    fn update_ports() {
        let mut s = base();
        update(
            &mut s,
            &[
                "--publish-add",
                "8080:80",
                "--publish-add",
                "53:53/udp",
                "--publish-add",
                "9090:90",
            ],
        )
        .unwrap();
        update(
            &mut s,
            &[
                "--publish-rm",
                "53/udp",
                "--publish-rm",
                "9090:90",
                "--publish-add",
                "8081:80",
            ],
        )
        .unwrap();
        assert_eq!(
            s.endpoint,
            Some(EndpointSpec {
                ports: vec![PortConfig {
                    name: String::new(),
                    protocol: PortProtocol::Tcp as i32,
                    target_port: 80,
                    published_port: 8081,
                    publish_mode: "host".into(),
                }]
            })
        );
        // A tcp selector does not remove the udp port.
        update(
            &mut s,
            &["--publish-add", "53:53/udp", "--publish-rm", "53/tcp"],
        )
        .unwrap();
        assert_eq!(s.endpoint.as_ref().unwrap().ports.len(), 2);
        assert!(e(update(&mut s, &["--publish-rm", "x"])).contains("1-65535"));
    }

    #[test]
    fn update_secrets_configs_mounts() {
        let mut s = base();
        {
            let c = s.task.as_mut().unwrap().container.as_mut().unwrap();
            c.secrets = vec![
                SecretReference {
                    secret_id: "sid1".into(),
                    secret_name: "old".into(),
                    target: "old".into(),
                    mode: 0o444,
                    ..Default::default()
                },
                SecretReference {
                    secret_id: "sid2".into(),
                    secret_name: "keep".into(),
                    target: "keep".into(),
                    mode: 0o444,
                    ..Default::default()
                },
            ];
            c.configs = vec![ConfigReference {
                config_id: "cid1".into(),
                config_name: "conf".into(),
                target: "/conf".into(),
                mode: 0o444,
                ..Default::default()
            }];
            c.mounts = vec![Mount {
                r#type: "volume".into(),
                source: "data".into(),
                target: "/data".into(),
                read_only: false,
            }];
        }
        update(
            &mut s,
            &[
                "--secret-rm",
                "old",
                "--secret-add",
                "new",
                "--config-rm",
                "cid1",
                "--config-add",
                "source=conf2,target=/etc/app.conf",
                "--mount-rm",
                "/data/",
                "--mount-add",
                "type=tmpfs,target=/cache",
            ],
        )
        .unwrap();
        let cs = c(&s);
        assert_eq!(
            cs.secrets
                .iter()
                .map(|r| (r.secret_id.as_str(), r.secret_name.as_str()))
                .collect::<Vec<_>>(),
            [("sid2", "keep"), ("", "new")]
        );
        assert_eq!(
            cs.configs,
            vec![ConfigReference {
                config_id: "".into(),
                config_name: "conf2".into(),
                target: "/etc/app.conf".into(),
                uid: 0,
                gid: 0,
                mode: 0o444,
            }]
        );
        assert_eq!(
            cs.mounts,
            vec![Mount {
                r#type: "tmpfs".into(),
                source: "".into(),
                target: "/cache".into(),
                read_only: false,
            }]
        );
    }

    #[test]
    fn update_scalars() {
        let mut s = base();
        update(
            &mut s,
            &[
                "--replicas",
                "5",
                "--limit-memory",
                "512m",
                "--update-parallelism",
                "3",
                "--health-retries",
                "2",
            ],
        )
        .unwrap();
        assert_eq!(
            s.mode,
            Some(Mode::Replicated(ReplicatedService { replicas: 5 }))
        );
        assert_eq!(
            s.task.as_ref().unwrap().resources,
            Some(ResourceRequirements {
                limits: Some(Resources {
                    memory_bytes: 512 << 20,
                    ..Default::default()
                }),
                reservations: None,
            })
        );
        assert_eq!(s.update.as_ref().unwrap().parallelism, 3);
        assert_eq!(s.update.as_ref().unwrap().monitor_ms, 5000);
        assert_eq!(
            c(&s).healthcheck,
            Some(HealthConfig {
                retries: 2,
                ..Default::default()
            })
        );
        s.mode = Some(Mode::Global(GlobalService {}));
        assert!(e(update(&mut s, &["--replicas", "2"])).contains("replicated mode"));
        assert_eq!(e(update(&mut s, &["--image", ""])), "--image is empty");
    }

    #[test]
    fn shell_split() {
        assert_eq!(shell_words("a  b\tc").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(
            shell_words("sh -c 'echo $X; ls'").unwrap(),
            vec!["sh", "-c", "echo $X; ls"]
        );
        assert_eq!(
            shell_words(r#"a "b \"c\" d" e\ f"#).unwrap(),
            vec!["a", "b \"c\" d", "e f"]
        );
        assert_eq!(shell_words("''").unwrap(), vec![""]);
        assert_eq!(shell_words("").unwrap(), Vec::<String>::new());
        assert!(shell_words("'x").is_err());
        assert!(shell_words("\"x").is_err());
    }

    #[test]
    fn duration_and_size_errors() {
        assert_eq!(duration_ms("--x", "1m30s"), Ok(90_000));
        assert_eq!(duration_ms("--x", "500ms"), Ok(500));
        assert_eq!(duration_ms("--x", "0"), Ok(0));
        assert_eq!(
            e(duration_ms("--x", "5 parsecs")),
            "--x: invalid duration \"5 parsecs\": unknown unit \" parsecs\" (expected e.g. 30s, 1m30s, 500ms, 2h)"
        );
        assert_eq!(size("--limit-memory", "512m"), Ok(512 << 20));
        assert!(e(size("--limit-memory", "-1")).contains("must not be negative"));
    }
}
