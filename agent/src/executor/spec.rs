//! From a cluster task to an engine container: its name, labels and `ContainerConfig`. Pure
//! functions (no I/O), so the whole mapping is unit-tested.
//!
//! Invariants: every task container carries the `com.flotilla.task.id` label (recovery finds
//! tasks by it) and the restart policy "no" (the managers' orchestrator replaces failed tasks;
//! the engine must not restart them behind its back).

use std::collections::HashMap;

use flotilla_proto::agent::v1 as apb;
use flotilla_proto::control::v1 as pb;

/// Label holding the task id (recovery looks containers up by it).
pub const LABEL_TASK_ID: &str = "com.flotilla.task.id";
pub const LABEL_SERVICE_ID: &str = "com.flotilla.service.id";
pub const LABEL_SERVICE_NAME: &str = "com.flotilla.service.name";
pub const LABEL_SLOT: &str = "com.flotilla.task.slot";

/// Stop grace period when the spec leaves it at 0.
pub const DEFAULT_GRACE_MS: u64 = 10_000;

/// Where the secret and config files of a task are, on the host, and where they go in the
/// container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    pub source: String,
    pub target: String,
}

/// `<service name>.<slot>.<task id>`, or `<service name>.<node id>.<task id>` for a global
/// service's task (slot 0). A task without a service name uses its service id.
pub fn container_name(task: &pb::Task) -> String {
    let service = if task.service_name.is_empty() {
        task.service_id.as_str()
    } else {
        task.service_name.as_str()
    };
    let middle = if task.slot == 0 {
        task.node_id.clone()
    } else {
        task.slot.to_string()
    };
    if middle.is_empty() {
        format!("{service}.{}", task.id)
    } else {
        format!("{service}.{middle}.{}", task.id)
    }
}

/// The grace period of a stop, in whole seconds (rounded up; the engine counts seconds).
pub fn grace_secs(spec: &pb::ContainerSpec) -> i32 {
    let ms = if spec.stop_grace_period_ms == 0 {
        DEFAULT_GRACE_MS
    } else {
        spec.stop_grace_period_ms
    };
    i32::try_from(ms.div_ceil(1000)).unwrap_or(i32::MAX)
}

fn ms_to_ns(ms: u64) -> i64 {
    i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

fn mount_of(m: &pb::Mount) -> Result<apb::Mount, String> {
    let kind = match m.r#type.as_str() {
        "bind" => apb::mount::Type::Bind,
        "volume" => apb::mount::Type::Volume,
        "tmpfs" => apb::mount::Type::Tmpfs,
        other => {
            return Err(format!(
                "invalid mount type {other:?} for {}: use bind, volume or tmpfs",
                m.target
            ))
        }
    };
    Ok(apb::Mount {
        r#type: kind as i32,
        source: m.source.clone(),
        target: m.target.clone(),
        read_only: m.read_only,
        tmpfs_size: 0,
        tmpfs_mode: 0,
    })
}

/// Host-mode port bindings of the task's endpoint. Only "host" (or unset) publish mode exists
/// until overlay networks bring the routing mesh.
fn ports_of(task: &pb::Task) -> Result<Vec<apb::PortBinding>, String> {
    let Some(ep) = &task.endpoint else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for p in &ep.ports {
        match p.publish_mode.as_str() {
            "" | "host" => {}
            other => {
                return Err(format!(
                    "publish mode {other:?} of port {} is not supported: use host",
                    p.target_port
                ))
            }
        }
        if p.target_port == 0 || p.target_port > 65535 || p.published_port > 65535 {
            return Err(format!(
                "invalid port {}:{}: ports are 1-65535 (published 0 = any free port)",
                p.published_port, p.target_port
            ));
        }
        let protocol = match pb::PortProtocol::try_from(p.protocol) {
            Ok(pb::PortProtocol::Udp) => "udp",
            _ => "tcp",
        };
        out.push(apb::PortBinding {
            host_ip: String::new(),
            host_port: p.published_port,
            container_port: p.target_port,
            protocol: protocol.into(),
        });
    }
    Ok(out)
}

/// The engine's container config for `task`; `files` are the secret and config files to bind
/// read-only. Errors are the text of a REJECTED status.
pub fn container_config(
    task: &pb::Task,
    files: &[FileMount],
) -> Result<apb::ContainerConfig, String> {
    let spec = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .ok_or_else(|| format!("task {} has no container spec", task.id))?;
    if spec.image.is_empty() {
        return Err(format!("task {} has no image", task.id));
    }
    let mut labels: HashMap<String, String> = spec.labels.clone();
    labels.insert(LABEL_TASK_ID.into(), task.id.clone());
    labels.insert(LABEL_SERVICE_ID.into(), task.service_id.clone());
    labels.insert(LABEL_SERVICE_NAME.into(), task.service_name.clone());
    labels.insert(LABEL_SLOT.into(), task.slot.to_string());
    let mut mounts = spec
        .mounts
        .iter()
        .map(mount_of)
        .collect::<Result<Vec<_>, _>>()?;
    mounts.extend(files.iter().map(|f| apb::Mount {
        r#type: apb::mount::Type::Bind as i32,
        source: f.source.clone(),
        target: f.target.clone(),
        read_only: true,
        tmpfs_size: 0,
        tmpfs_mode: 0,
    }));
    let healthcheck = spec.healthcheck.as_ref().and_then(|h| {
        let unset = h.test.is_empty()
            && h.interval_ms == 0
            && h.timeout_ms == 0
            && h.retries == 0
            && h.start_period_ms == 0;
        (!unset).then(|| apb::HealthConfig {
            test: h.test.clone(),
            interval_ns: ms_to_ns(h.interval_ms),
            timeout_ns: ms_to_ns(h.timeout_ms),
            retries: h.retries,
            start_period_ns: ms_to_ns(h.start_period_ms),
        })
    });
    let limits = task
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    let resources = limits.map(|l| apb::Resources {
        memory: l.memory_bytes,
        nano_cpus: l.nano_cpus,
        pids_limit: l.pids,
        ..Default::default()
    });
    Ok(apb::ContainerConfig {
        image: spec.image.clone(),
        cmd: spec.args.clone(),
        entrypoint: spec.entrypoint.clone(),
        entrypoint_set: !spec.entrypoint.is_empty(),
        env: spec.env.clone(),
        working_dir: spec.dir.clone(),
        user: spec.user.clone(),
        hostname: spec.hostname.clone(),
        labels,
        read_only: spec.read_only,
        resources,
        mounts,
        ports: ports_of(task)?,
        restart_policy: Some(apb::RestartPolicy {
            name: "no".into(),
            max_retries: 0,
        }),
        healthcheck,
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: grace_secs(spec),
        ..Default::default()
    })
}

/// A secret's file name under /run/secrets: its target, or its name. A plain file name only.
pub fn secret_target(r: &pb::SecretReference) -> Result<String, String> {
    let t = if r.target.is_empty() {
        r.secret_name.as_str()
    } else {
        r.target.as_str()
    };
    if t.is_empty() || t == "." || t == ".." || t.contains('/') || t.contains('\0') {
        return Err(format!(
            "invalid target {t:?} of secret {}: a file name under /run/secrets is expected",
            r.secret_name
        ));
    }
    Ok(t.to_string())
}

/// A config's absolute path in the container: its target, or `/<config name>`.
pub fn config_target(r: &pb::ConfigReference) -> Result<String, String> {
    let t = if r.target.is_empty() {
        format!("/{}", r.config_name)
    } else {
        r.target.clone()
    };
    let bad =
        !t.starts_with('/') || t == "/" || t.contains('\0') || t.split('/').any(|c| c == "..");
    if bad {
        return Err(format!(
            "invalid target {t:?} of config {}: an absolute path without `..` is expected",
            r.config_name
        ));
    }
    Ok(t)
}

/// File mode of a secret or config: the reference's, 0444 when unset.
pub fn file_mode(mode: u32) -> u32 {
    if mode == 0 {
        0o444
    } else {
        mode & 0o7777
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> pb::Task {
        pb::Task {
            id: "t1abc".into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 2,
            node_id: "n1".into(),
            desired_state: pb::TaskState::Running as i32,
            spec: Some(pb::TaskSpec {
                container: Some(pb::ContainerSpec {
                    image: "busybox:latest".into(),
                    args: vec!["sleep".into(), "1".into()],
                    env: vec!["A=1".into()],
                    labels: [("mine".to_string(), "yes".to_string())].into(),
                    mounts: vec![pb::Mount {
                        r#type: "tmpfs".into(),
                        target: "/scratch".into(),
                        ..Default::default()
                    }],
                    stop_grace_period_ms: 1500,
                    stop_signal: "SIGINT".into(),
                    healthcheck: Some(pb::HealthConfig {
                        test: vec!["CMD".into(), "true".into()],
                        interval_ms: 200,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                resources: Some(pb::ResourceRequirements {
                    limits: Some(pb::Resources {
                        nano_cpus: 500_000_000,
                        memory_bytes: 64 << 20,
                        pids: 50,
                    }),
                    reservations: None,
                }),
                ..Default::default()
            }),
            endpoint: Some(pb::EndpointSpec {
                ports: vec![pb::PortConfig {
                    target_port: 80,
                    published_port: 0,
                    publish_mode: "host".into(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn names_for_replicated_and_global_tasks() {
        let mut t = task();
        assert_eq!(container_name(&t), "web.2.t1abc");
        t.slot = 0;
        assert_eq!(container_name(&t), "web.n1.t1abc");
        t.service_name.clear();
        assert_eq!(container_name(&t), "s1.n1.t1abc");
    }

    #[test]
    fn config_maps_the_spec() {
        let files = [FileMount {
            source: "/run/flotilla/secrets/t1abc/secrets/pw".into(),
            target: "/run/secrets/pw".into(),
        }];
        let c = container_config(&task(), &files).unwrap();
        assert_eq!(c.image, "busybox:latest");
        assert_eq!(c.cmd, ["sleep", "1"]);
        assert!(!c.entrypoint_set);
        assert_eq!(c.labels[LABEL_TASK_ID], "t1abc");
        assert_eq!(c.labels[LABEL_SERVICE_NAME], "web");
        assert_eq!(c.labels[LABEL_SLOT], "2");
        assert_eq!(c.labels["mine"], "yes");
        assert_eq!(c.restart_policy.as_ref().unwrap().name, "no");
        assert_eq!(c.stop_timeout, 2, "1.5 s rounds up");
        assert_eq!(c.stop_signal, "SIGINT");
        let r = c.resources.unwrap();
        assert_eq!(
            (r.nano_cpus, r.memory, r.pids_limit),
            (500_000_000, 64 << 20, 50)
        );
        assert_eq!(c.mounts.len(), 2);
        assert_eq!(c.mounts[0].r#type, apb::mount::Type::Tmpfs as i32);
        assert!(c.mounts[1].read_only);
        assert_eq!(c.mounts[1].target, "/run/secrets/pw");
        assert_eq!(c.ports.len(), 1);
        assert_eq!((c.ports[0].host_port, c.ports[0].container_port), (0, 80));
        assert_eq!(c.ports[0].protocol, "tcp");
        let h = c.healthcheck.unwrap();
        assert_eq!(h.interval_ns, 200_000_000);
        assert_eq!(h.test, ["CMD", "true"]);
    }

    #[test]
    fn entrypoint_none_health_and_bad_inputs() {
        let mut t = task();
        {
            let c = t.spec.as_mut().unwrap().container.as_mut().unwrap();
            c.entrypoint = vec!["/bin/sh".into(), "-c".into()];
            c.healthcheck = Some(pb::HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            });
            c.stop_grace_period_ms = 0;
        }
        let c = container_config(&t, &[]).unwrap();
        assert!(c.entrypoint_set);
        assert_eq!(c.healthcheck.unwrap().test, ["NONE"]);
        assert_eq!(c.stop_timeout, 10);

        let mut bad = t.clone();
        bad.spec
            .as_mut()
            .unwrap()
            .container
            .as_mut()
            .unwrap()
            .mounts[0]
            .r#type = "nfs".into();
        assert!(container_config(&bad, &[])
            .unwrap_err()
            .contains("invalid mount type"));
        let mut bad = t.clone();
        bad.endpoint.as_mut().unwrap().ports[0].publish_mode = "ingress".into();
        assert!(container_config(&bad, &[])
            .unwrap_err()
            .contains("not supported"));
        let mut bad = t;
        bad.spec = None;
        assert!(container_config(&bad, &[]).is_err());
    }

    #[test]
    fn secret_and_config_targets() {
        let mut s = pb::SecretReference {
            secret_name: "db_pw".into(),
            ..Default::default()
        };
        assert_eq!(secret_target(&s).unwrap(), "db_pw");
        s.target = "pw.txt".into();
        assert_eq!(secret_target(&s).unwrap(), "pw.txt");
        s.target = "../etc/passwd".into();
        assert!(secret_target(&s).is_err());
        let mut c = pb::ConfigReference {
            config_name: "nginx.conf".into(),
            ..Default::default()
        };
        assert_eq!(config_target(&c).unwrap(), "/nginx.conf");
        c.target = "/etc/app/x.conf".into();
        assert_eq!(config_target(&c).unwrap(), "/etc/app/x.conf");
        c.target = "etc/x".into();
        assert!(config_target(&c).is_err());
        c.target = "/etc/../x".into();
        assert!(config_target(&c).is_err());
        assert_eq!(file_mode(0), 0o444);
        assert_eq!(file_mode(0o400), 0o400);
    }
}
