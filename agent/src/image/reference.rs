//! Docker-style image references, as `oci-client`'s [`Reference`].
//!
//! The store keys images by the fully qualified form (`docker.io/library/busybox:latest`,
//! `127.0.0.1:5000/busybox:latest`, `repo@sha256:…`), so that `busybox` and
//! `docker.io/library/busybox:latest` name the same record.

use std::net::IpAddr;

pub use oci_client::Reference;

use super::error::{ImageError, Result};

/// Parse a user-given reference; invalid input gives an error naming it.
///
/// Parsed by hand with Docker's grammar (`[domain[:port]/]path[:tag][@digest]`) and built with
/// `Reference::with_*`: `Reference`'s own `FromStr` compiles a large Unicode regex on first use,
/// which costs 40-60 ms per process — more than a whole local pull of a small image.
/// `parse_agrees_with_oci_spec` checks both parsers agree.
pub fn parse(input: &str) -> Result<Reference> {
    let trimmed = input.trim();
    let invalid = |reason: &str| ImageError::InvalidReference {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let (name_tag, digest) = match trimmed.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (trimmed, None),
    };
    let (name, tag) = match name_tag.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
            });
        if !ok {
            return Err(invalid("invalid tag: use letters, digits, '_', '.', '-' (at most 128, not starting with '.' or '-')"));
        }
    }
    if let Some(d) = digest {
        let (algo, hex) = d
            .split_once(':')
            .ok_or_else(|| invalid("invalid digest: expected ALGORITHM:HEX"))?;
        let len = match algo {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(invalid("unsupported digest algorithm")),
        };
        if hex.len() != len
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid("invalid digest length or characters"));
        }
    }
    let (registry, repository) =
        split_domain(name).ok_or_else(|| invalid("invalid repository name"))?;
    if repository.len() > 255 {
        return Err(invalid(
            "repository name must not be more than 255 characters",
        ));
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
    })
}

/// Docker's normalisation: the first component is a registry when it has a '.' or ':' or is
/// `localhost`; otherwise Docker Hub, where single names live under `library/`.
fn split_domain(name: &str) -> Option<(String, String)> {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => ("docker.io", name),
    };
    if !valid_domain(domain) || path.is_empty() || !path.split('/').all(valid_path_component) {
        return None;
    }
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    Some((domain.to_string(), path))
}

/// `host[:port]` with host a DNS name, an IPv4 address or `[v6]`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                ("v6", tail.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    port_ok && !host.is_empty() && host.split('.').all(label_ok)
}

/// `[a-z0-9]+` runs joined by one '.', one or two '_', or any number of '-'.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// The fully qualified form the store uses as key.
pub fn normalize(input: &str) -> Result<String> {
    Ok(parse(input)?.whole())
}

/// True when `registry` (`host[:port]`) is on the loopback network: plain http is allowed there.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = host_of(registry);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// Host part of `host[:port]` / `[v6]:port`.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.contains(':') => {
            host
        }
        _ => registry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_references_normalize() {
        assert_eq!(
            normalize("busybox").expect("ok"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("busybox:1.36").expect("ok"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/busybox:latest").expect("ok"),
            "127.0.0.1:5000/busybox:latest"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize(&format!("localhost:5000/x/y@{d}")).expect("ok"),
            format!("localhost:5000/x/y@{d}")
        );
        let r = parse("127.0.0.1:5000/busybox").expect("ok");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "busybox");
        assert_eq!(r.tag(), Some("latest"));
    }

    #[test]
    fn invalid_references_name_the_input() {
        for bad in ["", "UPPER/Case", "a b", "repo@sha256:123", "x:"] {
            let err = parse(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn parse_agrees_with_oci_spec() {
        let d256 = format!("sha256:{}", "ab".repeat(32));
        let cases = [
            "busybox".to_string(),
            "busybox:1.36".into(),
            "library/busybox".into(),
            "docker.io/busybox".into(),
            "index.docker.io/library/busybox:x".into(),
            "127.0.0.1:5000/busybox:latest".into(),
            "localhost/a/b/c:v1.2_3-x".into(),
            "localhost:5000/x/y".into(),
            "registry.example.com/team/app".into(),
            "registry.example.com:443/team/app:TAG_1".into(),
            "my-registry.io/a__b/c.d/e---f".into(),
            "test.com:5000".into(),
            "test.com:tag".into(),
            format!("busybox@{d256}"),
            format!("localhost:5000/x/y:tag@{d256}"),
            // invalid
            "a b".into(),
            "x:".into(),
            "x:-tag".into(),
            "a//b".into(),
            "a/b/".into(),
            "_a".into(),
            "a___b".into(),
            "repo@sha256:123".into(),
            "repo@md5:0123456789abcdef0123456789abcdef".into(),
            format!("repo@{}", d256.to_uppercase()),
            "-bad.com/x".into(),
            "host:port/x".into(),
        ];
        for c in &cases {
            let ours = parse(c).map(|r| r.whole());
            let theirs = c.parse::<Reference>().map(|r| r.whole());
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{c}: ours {ours:?} theirs {theirs:?}"
            );
            if let (Ok(a), Ok(b)) = (&ours, &theirs) {
                assert_eq!(a, b, "{c}");
            }
        }
        // Docker refuses upper case in repository names; oci-spec's regex lets some through.
        assert!(parse("UPPER/case").is_err());
        // Docker's grammar takes bracketed IPv6 registries; oci-spec's regex does not.
        let v6 = parse("[::1]:5000/busybox").expect("ipv6 registry");
        assert_eq!(v6.registry(), "[::1]:5000");
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("127.3.2.1"));
        assert!(is_loopback_registry("localhost:80"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("docker.io"));
        assert!(!is_loopback_registry("10.0.0.1:5000"));
        assert!(!is_loopback_registry("127.0.0.1.example.com:5000"));
    }
}
