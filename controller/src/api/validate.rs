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
