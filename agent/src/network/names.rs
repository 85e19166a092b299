//! Validation of user-supplied names and the "did you mean" suggestion for unknown networks.
//!
//! Pure functions. Network names follow docker's grammar (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`); container
//! ids become file names, so they are limited to the same safe alphabet; DNS names (container
//! names and aliases) must be valid single labels or dotted names of such labels.

use super::error::{NetError, Result};

const MAX_NAME: usize = 128;

fn name_chars_ok(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A network name as accepted by `create_network`.
pub fn validate_network_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(NetError::invalid("network name", name, "it is empty"));
    }
    if name.len() > MAX_NAME {
        return Err(NetError::invalid(
            "network name",
            name,
            format!("it is longer than {MAX_NAME} characters"),
        ));
    }
    if !name_chars_ok(name) {
        return Err(NetError::invalid(
            "network name",
            name,
            "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
        ));
    }
    Ok(())
}

/// A container id: it names the sandbox file, so it must be a plain file name.
pub fn validate_container_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_NAME || !name_chars_ok(id) {
        return Err(NetError::invalid(
            "container id",
            id,
            "expected 1-128 characters of [a-zA-Z0-9_.-] starting with a letter or digit",
        ));
    }
    Ok(())
}

/// A DNS name given as container name or alias (`web`, `db.internal`).
pub fn validate_dns_name(what: &'static str, name: &str) -> Result<()> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(NetError::invalid(
            what,
            name,
            "a DNS name needs 1-253 characters",
        ));
    }
    for label in trimmed.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(NetError::invalid(
                what,
                name,
                format!("label {label:?} is not a DNS label ([a-zA-Z0-9_-], 1-63 characters, no leading or trailing '-')"),
            ));
        }
    }
    Ok(())
}

/// Edit distance between two strings (insertions, deletions, substitutions).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The existing name closest to `input`, if it is close enough to be a likely typo.
pub fn closest<'a>(input: &str, names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let lower = input.to_ascii_lowercase();
    names
        .into_iter()
        .map(|n| (edit_distance(&lower, &n.to_ascii_lowercase()), n))
        .filter(|(d, n)| *d <= (n.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names() {
        assert!(validate_network_name("my-net_1.0").is_ok());
        for bad in ["", "-x", ".x", "a b", "a/b", &"x".repeat(129)] {
            let e = validate_network_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid network name"), "{e}");
        }
    }

    #[test]
    fn container_ids_are_file_names() {
        assert!(validate_container_id("0123abcd").is_ok());
        assert!(validate_container_id("../etc").is_err());
        assert!(validate_container_id("a/b").is_err());
    }

    #[test]
    fn dns_names() {
        assert!(validate_dns_name("alias", "db").is_ok());
        assert!(validate_dns_name("alias", "db.internal.").is_ok());
        assert!(validate_dns_name("alias", "my_db").is_ok());
        for bad in ["", ".", "a..b", "-a", "a-", "a b", &"x".repeat(64)] {
            assert!(validate_dns_name("alias", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
        let names = ["bridge", "backend", "frontend"];
        assert_eq!(closest("bakend", names), Some("backend".into()));
        assert_eq!(closest("Bridg", names), Some("bridge".into()));
        assert_eq!(closest("zzzzzz", names), None);
    }
}
