//! Validation of what users send, with messages that say what to change.

use flotilla_proto::control::v1::{service_spec::Mode, ServiceSpec};

/// A DNS-label-like name: services, secrets and configs are named this way (and service names
/// become DNS names with overlay networks).
pub fn name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// A service spec as create/update accept it.
pub fn service_spec(spec: &ServiceSpec) -> Result<(), String> {
    name("service", &spec.name)?;
    let task = spec
        .task
        .as_ref()
        .ok_or("a service needs a task spec (image and command)")?;
    let container = task
        .container
        .as_ref()
        .ok_or("a service needs a container spec")?;
    if container.image.trim().is_empty() {
        return Err("a service needs an image".into());
    }
    if spec.mode.is_none() {
        return Err("a service needs a mode: replicated or global".into());
    }
    if let Some(Mode::Replicated(r)) = &spec.mode {
        if r.replicas > 100_000 {
            return Err(format!("{} replicas is more than 100000", r.replicas));
        }
    }
    if let Some(p) = &task.placement {
        crate::scheduler::validate_constraints(&p.constraints)?;
        for pref in &p.preferences {
            let d = pref
                .spread
                .as_ref()
                .map(|s| s.spread_descriptor.as_str())
                .unwrap_or("");
            if !(d.starts_with("node.labels.") || d.starts_with("engine.labels."))
                || d.ends_with('.')
            {
                return Err(format!(
                    "invalid placement preference spread={d:?}: expected spread=node.labels.KEY"
                ));
            }
        }
    }
    if let Some(r) = task.resources.as_ref() {
        for (what, res) in [("limit", &r.limits), ("reservation", &r.reservations)] {
            if let Some(res) = res {
                if res.nano_cpus < 0 || res.memory_bytes < 0 || res.pids < 0 {
                    return Err(format!("a negative {what} is meaningless"));
                }
            }
        }
    }
    for u in [&spec.update, &spec.rollback].into_iter().flatten() {
        if !(0.0..=1.0).contains(&u.max_failure_ratio) {
            return Err(format!(
                "max failure ratio {} is not between 0 and 1",
                u.max_failure_ratio
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for p in spec.endpoint.iter().flat_map(|e| e.ports.iter()) {
        if p.target_port == 0 || p.target_port > 65535 || p.published_port > 65535 {
            return Err(format!(
                "invalid port {}:{}: ports are 1 to 65535",
                p.published_port, p.target_port
            ));
        }
        if !p.publish_mode.is_empty() && p.publish_mode != "host" {
            return Err(format!(
                "publish mode {:?} is not supported yet: use mode=host",
                p.publish_mode
            ));
        }
        if p.published_port != 0 && !seen.insert((p.protocol, p.published_port)) {
            return Err(format!("port {} is published twice", p.published_port));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("service", "web-1").is_ok());
        assert!(name("service", "").is_err());
        assert!(name("service", "-x").is_err());
        assert!(name("service", "a b").is_err());
        assert!(name("service", &"a".repeat(64)).is_err());
    }
}

/// A cluster spec as `cluster update` may set it: certificate validity 1 h to 20 years (Swarm's
/// minimum; under an hour only `init --unsafe-short-cert-expiry` for tests), heartbeat period
/// 100 ms to 5 min, task history 1 to 1000 per slot.
pub fn cluster_spec(spec: &flotilla_proto::control::v1::ClusterSpec) -> Result<(), String> {
    let expiry = std::time::Duration::from_secs(spec.node_cert_expiry_secs);
    if expiry < crate::cli::parse::MIN_CERT_EXPIRY || expiry > flotilla_pki::ROOT_CA_VALIDITY {
        return Err(format!(
            "certificate validity {}s out of range: between 1h and 20 years",
            spec.node_cert_expiry_secs
        ));
    }
    if !(100..=300_000).contains(&spec.heartbeat_period_ms) {
        return Err(format!(
            "heartbeat period {}ms out of range: between 100ms and 5m",
            spec.heartbeat_period_ms
        ));
    }
    if !(1..=1000).contains(&spec.task_history_limit) {
        return Err(format!(
            "task history limit {} out of range: between 1 and 1000",
            spec.task_history_limit
        ));
    }
    Ok(())
}

#[cfg(test)]
mod cluster_tests {
    use super::cluster_spec;
    use flotilla_proto::control::v1::ClusterSpec;

    #[test]
    fn cluster_settings_are_bounded() {
        let ok = ClusterSpec {
            name: "default".into(),
            task_history_limit: 5,
            heartbeat_period_ms: 1000,
            node_cert_expiry_secs: 90 * 86_400,
        };
        assert!(cluster_spec(&ok).is_ok());
        for (bad, what) in [
            (
                ClusterSpec {
                    node_cert_expiry_secs: 60,
                    ..ok.clone()
                },
                "certificate validity",
            ),
            (
                ClusterSpec {
                    heartbeat_period_ms: 10,
                    ..ok.clone()
                },
                "heartbeat period",
            ),
            (
                ClusterSpec {
                    heartbeat_period_ms: 600_000,
                    ..ok.clone()
                },
                "heartbeat period",
            ),
            (
                ClusterSpec {
                    task_history_limit: 0,
                    ..ok.clone()
                },
                "task history",
            ),
        ] {
            let e = cluster_spec(&bad).expect_err(what);
            assert!(e.contains(what), "{e}");
        }
    }
}
