//! The engine's error: a kind (what the caller can do about it) and a message that says what failed
//! on what. The gRPC layer maps kinds to status codes in one place.

use crate::image::ImageError;

/// What kind of failure, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No such container, image, volume or network.
    NotFound,
    /// A name or resource is taken.
    Conflict,
    /// The object is in the wrong state for the operation (e.g. running).
    Precondition,
    /// The request itself is wrong.
    Invalid,
    /// Out of a resource: port in use, disk full.
    Exhausted,
    /// A peer (registry) is unreachable.
    Unavailable,
    /// Credentials refused.
    Unauthenticated,
    /// A bug or an unexpected system failure.
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct EngineError {
    pub kind: Kind,
    pub msg: String,
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    pub fn new(kind: Kind, msg: impl Into<String>) -> Self {
        EngineError {
            kind,
            msg: msg.into(),
        }
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, msg)
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, msg)
    }
    pub fn precondition(msg: impl Into<String>) -> Self {
        Self::new(Kind::Precondition, msg)
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(Kind::Internal, msg)
    }
    /// An I/O failure on `path` while doing `what`.
    pub fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> Self {
        let kind = if e.raw_os_error() == Some(libc::ENOSPC) {
            Kind::Exhausted
        } else {
            Kind::Internal
        };
        Self::new(kind, format!("{what} {}: {e}", path.display()))
    }
}

impl From<ImageError> for EngineError {
    fn from(e: ImageError) -> Self {
        let kind = match &e {
            ImageError::NotFound { .. } | ImageError::RemoteNotFound { .. } => Kind::NotFound,
            ImageError::InvalidReference { .. }
            | ImageError::Ambiguous { .. }
            | ImageError::InvalidChange { .. }
            | ImageError::UnsupportedUser { .. }
            | ImageError::NoCommand { .. }
            | ImageError::InvalidArchive { .. }
            | ImageError::NoMatchingPlatform { .. }
            | ImageError::UnsupportedMediaType { .. }
            | ImageError::InvalidContainerId { .. } => Kind::Invalid,
            ImageError::RegistryUnreachable { .. } => Kind::Unavailable,
            ImageError::Unauthorized { .. } => Kind::Unauthenticated,
            ImageError::DiskFull { .. } => Kind::Exhausted,
            ImageError::RootfsExists { .. } => Kind::Conflict,
            _ => Kind::Internal,
        };
        EngineError::new(kind, e.to_string())
    }
}

impl From<crate::runtime::error::RuntimeError> for EngineError {
    fn from(e: crate::runtime::error::RuntimeError) -> Self {
        EngineError::internal(e.to_string())
    }
}

/// The closest candidate to `input` by edit distance, when it is close enough to be a likely typo.
pub fn closest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    if !input.is_empty() {
        if let Some(c) = candidates
            .iter()
            .filter(|c| c.starts_with(input))
            .min_by_key(|c| c.len())
        {
            return Some(c);
        }
    }
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(input, c);
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.filter(|(d, c)| *d <= (input.len().max(c.len()) / 3).max(1))
        .map(|(_, c)| c)
}

/// "no such X: NAME" with a suggestion when one is close.
pub fn no_such<'a>(
    what: &str,
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> EngineError {
    match closest(input, candidates) {
        Some(c) => EngineError::not_found(format!("no such {what}: {input} (did you mean {c}?)")),
        None => EngineError::not_found(format!("no such {what}: {input}")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Optimal string alignment: insertions, deletions, substitutions, adjacent transpositions.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_pick_close_names_only() {
        let names = ["web", "database", "cache"];
        assert_eq!(closest("wbe", names), Some("web"));
        assert_eq!(closest("databse", names), Some("database"));
        assert_eq!(closest("data", names), Some("database"));
        assert_eq!(closest("zzzzzz", names), None);
        let e = no_such("container", "cahce", names);
        assert_eq!(e.kind, Kind::NotFound);
        assert_eq!(e.msg, "no such container: cahce (did you mean cache?)");
        assert_eq!(no_such("volume", "x", []).msg, "no such volume: x");
    }
}
