//! Placement constraints (`node.labels.zone==b`, `node.role!=manager`, ...): parsing, the
//! validation the API runs at service create, and matching against a node.
//!
//! Grammar: `KEY==VALUE` or `KEY!=VALUE`, whitespace allowed around the key, the operator and
//! the value. Keys: `node.id`, `node.hostname`, `node.role` (`manager` | `worker`),
//! `node.labels.KEY` (the node spec's labels), `engine.labels.KEY` (labels the agent reports),
//! `node.platform.os`, `node.platform.arch`. Values compare case-sensitively, except role, os and
//! arch (case-insensitive, as in swarm; arch also folds the aliases `amd64` = `x86_64` and
//! `arm64` = `aarch64`). A constraint on a label the node does not have fails with `==` and
//! passes with `!=`.

use std::fmt;

use flotilla_proto::control::v1::NodeRole;

use super::node::{Interner, NodeInfo};

/// What a constraint looks at on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    Id,
    Hostname,
    Role,
    NodeLabel(String),
    EngineLabel(String),
    Os,
    Arch,
}

/// A parsed constraint. `text` is the user's constraint with the whitespace removed around
/// the operator, as explanations show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Constraint {
    pub key: Key,
    pub equal: bool,
    /// The value to compare, already folded for the case-insensitive keys.
    pub value: String,
    /// For `node.role`: the role named.
    pub role: Option<NodeRole>,
    pub text: String,
    /// Interned label name and value ([`Constraint::resolve`]); None: no node has it.
    pub name_id: Option<u32>,
    pub value_id: Option<u32>,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const KEYS_HELP: &str = "node.id, node.hostname, node.role, node.labels.KEY, engine.labels.KEY, \
                         node.platform.os or node.platform.arch";

/// The canonical spelling of a CPU architecture: lower case, `amd64`/`x86-64` as `x86_64`,
/// `arm64` as `aarch64` (agents report `uname -m`; Docker users often write Go's names).
pub(crate) fn normalize_arch(arch: &str) -> String {
    let lower = arch.trim().to_ascii_lowercase();
    match lower.as_str() {
        "amd64" | "x86-64" => "x86_64".to_string(),
        "arm64" => "aarch64".to_string(),
        _ => lower,
    }
}

impl Constraint {
    /// Parses one constraint; the error is the message shown to the user.
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let invalid = |why: &str| format!("invalid constraint {text:?}: {why}");
        let eq = text.find("==");
        let ne = text.find("!=");
        let (pos, equal) = match (eq, ne) {
            (Some(e), Some(n)) if n < e => (n, false),
            (Some(e), _) => (e, true),
            (None, Some(n)) => (n, false),
            (None, None) => return Err(invalid("expected KEY==VALUE or KEY!=VALUE")),
        };
        let key = text[..pos].trim();
        let value = text[pos + 2..].trim();
        if key.is_empty() || value.is_empty() {
            return Err(invalid("expected KEY==VALUE or KEY!=VALUE"));
        }
        if value.contains("==") || value.contains("!=") {
            return Err(invalid(
                "more than one operator (expected KEY==VALUE or KEY!=VALUE)",
            ));
        }
        let label = |prefix: &str| -> Result<Option<String>, String> {
            match key.strip_prefix(prefix) {
                None => Ok(None),
                Some("") => Err(invalid(&format!("empty label name after {prefix:?}"))),
                Some(name) => Ok(Some(name.to_string())),
            }
        };
        let mut role = None;
        let (key, value) = if let Some(name) = label("node.labels.")? {
            (Key::NodeLabel(name), value.to_string())
        } else if let Some(name) = label("engine.labels.")? {
            (Key::EngineLabel(name), value.to_string())
        } else {
            match key {
                "node.id" => (Key::Id, value.to_string()),
                "node.hostname" => (Key::Hostname, value.to_string()),
                "node.role" => {
                    let v = value.to_ascii_lowercase();
                    role = Some(match v.as_str() {
                        "manager" => NodeRole::Manager,
                        "worker" => NodeRole::Worker,
                        _ => {
                            return Err(invalid(&format!(
                                "node.role is manager or worker, not {value:?}"
                            )))
                        }
                    });
                    (Key::Role, v)
                }
                "node.platform.os" => (Key::Os, value.to_ascii_lowercase()),
                "node.platform.arch" => (Key::Arch, normalize_arch(value)),
                _ => {
                    return Err(invalid(&format!(
                        "unknown key {key:?} (expected {KEYS_HELP})"
                    )))
                }
            }
        };
        let op = if equal { "==" } else { "!=" };
        let text = format!("{}{op}{}", text[..pos].trim(), text[pos + 2..].trim());
        Ok(Constraint {
            key,
            equal,
            value,
            role,
            text,
            name_id: None,
            value_id: None,
        })
    }

    /// Looks the label name and the value up in the ids the nodes use (before `matches`).
    pub fn resolve(&mut self, strings: &Interner) {
        self.name_id = match &self.key {
            Key::NodeLabel(name) | Key::EngineLabel(name) => strings.get(name),
            _ => None,
        };
        self.value_id = strings.get(&self.value);
    }

    /// Whether `node` satisfies the constraint (resolved against the node's interner).
    pub fn matches(&self, node: &NodeInfo) -> bool {
        let is = |v: Option<u32>| v.is_some() && v == self.value_id;
        let found = match &self.key {
            Key::Id => node.id == self.value,
            Key::Hostname => node.hostname == self.value,
            Key::Role => Some(node.role) == self.role,
            Key::Os => is(node.os),
            Key::Arch => is(node.arch),
            Key::NodeLabel(_) | Key::EngineLabel(_) => {
                let value = self.name_id.and_then(|name| {
                    if matches!(self.key, Key::NodeLabel(_)) {
                        node.label(name)
                    } else {
                        node.engine_label(name)
                    }
                });
                match value {
                    Some(v) => Some(v) == self.value_id,
                    None => return !self.equal,
                }
            }
        };
        found == self.equal
    }
}

/// Checks the constraints of a service's placement; the error names the first bad one and
/// says what is expected. The API calls it at service create and update.
pub fn validate_constraints(constraints: &[String]) -> Result<(), String> {
    for c in constraints {
        Constraint::parse(c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_operators_with_whitespace() {
        let c = Constraint::parse(" node.labels.zone == b ").unwrap();
        assert_eq!(c.key, Key::NodeLabel("zone".into()));
        assert!(c.equal);
        assert_eq!(c.value, "b");
        assert_eq!(c.text, "node.labels.zone==b");
        let c = Constraint::parse("node.role!=Manager").unwrap();
        assert_eq!(c.key, Key::Role);
        assert!(!c.equal);
        assert_eq!(c.role, Some(NodeRole::Manager));
        let c = Constraint::parse("node.platform.arch==amd64").unwrap();
        assert_eq!(c.value, "x86_64");
        let c = Constraint::parse("engine.labels.disk!=hdd").unwrap();
        assert_eq!(c.key, Key::EngineLabel("disk".into()));
    }

    #[test]
    fn rejects_bad_text_with_clear_messages() {
        assert_eq!(
            validate_constraints(&["node.labels.zone=b".into()]),
            Err(
                "invalid constraint \"node.labels.zone=b\": expected KEY==VALUE or KEY!=VALUE"
                    .into()
            )
        );
        assert_eq!(
            validate_constraints(&["node.role==boss".into()]),
            Err("invalid constraint \"node.role==boss\": node.role is manager or worker, not \"boss\"".into())
        );
        assert_eq!(
            validate_constraints(&["zone==b".into()]),
            Err(format!(
                "invalid constraint \"zone==b\": unknown key \"zone\" (expected {KEYS_HELP})"
            ))
        );
        assert!(validate_constraints(&["node.labels.==b".into()]).is_err());
        assert!(validate_constraints(&["node.id==".into()]).is_err());
        assert!(validate_constraints(&["==x".into()]).is_err());
        assert!(validate_constraints(&["node.id==a==b".into()]).is_err());
        assert!(validate_constraints(&[
            "node.id==a".into(),
            "node.hostname != h1".into(),
            "node.platform.os==Linux".into()
        ])
        .is_ok());
    }
}
