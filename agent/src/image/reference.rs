//! Docker-style image references, parsed with `oci-client`'s [`Reference`].
//!
//! The store keys images by the fully qualified form (`docker.io/library/busybox:latest`,
//! `127.0.0.1:5000/busybox:latest`, `repo@sha256:…`), so that `busybox` and
//! `docker.io/library/busybox:latest` name the same record.

use std::net::IpAddr;

pub use oci_client::Reference;

use super::error::{ImageError, Result};

/// Parse a user-given reference; invalid input gives an error naming it.
pub fn parse(input: &str) -> Result<Reference> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(ImageError::InvalidReference {
            input: input.to_string(),
            reason: "it is empty".to_string(),
        });
    }
    trimmed
        .parse::<Reference>()
        .map_err(|e| ImageError::InvalidReference {
            input: input.to_string(),
            reason: e.to_string(),
        })
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
