//! Join tokens: what an operator hands to a new node so it can find and trust the cluster CA
//! and obtain a certificate.
//!
//! Format (ASCII, 100 characters):
//!
//! ```text
//! FLTKN-1-<ca digest: 64 lower-case hex>-<role: w | m>-<secret: 25 characters [0-9a-z]>
//! ```
//!
//! `1` is the format version; the digest is sha256 of the root CA certificate's DER (what a
//! joining node checks the CA it fetches against); the secret is about 129 random bits. The role
//! letter makes a token self-describing for people and for error messages, but it grants
//! nothing by itself: the role a join gets is the role of the cluster's current token that the
//! presented token equals ([`match_join_token`]), so a worker token can never yield a manager
//! certificate, and rotating a token invalidates it at once.
use std::fmt;

use super::{random, CaError, Role};

const PREFIX: &str = "FLTKN";
const VERSION: &str = "1";
const DIGEST_LEN: usize = 64;
const SECRET_LEN: usize = 25;

/// A parsed join token. `Display` prints the whole token, secret included; `Debug` hides the
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_digest: String,
    role: Role,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.ca_digest)
            .field("role", &self.role)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = match self.role {
            Role::Worker => 'w',
            Role::Manager => 'm',
        };
        write!(
            f,
            "{PREFIX}-{VERSION}-{}-{r}-{}",
            self.ca_digest, self.secret
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JoinToken::parse(s)
    }
}

impl JoinToken {
    /// A new token for the CA with digest `ca_digest` (see [`super::RootCa::digest`]).
    pub fn generate(ca_digest: &str, role: Role) -> Result<JoinToken, CaError> {
        check_digest(ca_digest)?;
        Ok(JoinToken {
            ca_digest: ca_digest.to_string(),
            role,
            secret: random::base36(SECRET_LEN)?,
        })
    }

    /// Parses a token (surrounding whitespace is ignored, as from a pasted line).
    pub fn parse(s: &str) -> Result<JoinToken, CaError> {
        let s = s.trim();
        let bad = |why: String| CaError::MalformedToken(why);
        let mut parts = s.split('-');
        let (prefix, version, digest, role, secret) = match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(p), Some(v), Some(d), Some(r), Some(s), None) => (p, v, d, r, s),
            _ => {
                return Err(bad(
                    "expected FLTKN-1-<ca digest>-<w|m>-<secret> (five parts separated by '-')"
                        .into(),
                ))
            }
        };
        if prefix != PREFIX {
            return Err(bad(format!("it does not start with {PREFIX}-")));
        }
        if version != VERSION {
            return Err(bad(format!(
                "unsupported version {version:?} (this flotilla reads version {VERSION})"
            )));
        }
        check_digest(digest)?;
        let role = match role {
            "w" => Role::Worker,
            "m" => Role::Manager,
            other => return Err(bad(format!("role {other:?} is neither \"w\" nor \"m\""))),
        };
        if secret.len() != SECRET_LEN
            || !secret
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        {
            return Err(bad(format!(
                "the secret is not {SECRET_LEN} characters of [0-9a-z] (was the token cut?)"
            )));
        }
        Ok(JoinToken {
            ca_digest: digest.to_string(),
            role,
            secret: secret.to_string(),
        })
    }

    /// sha256 of the CA certificate's DER, lower-case hex.
    pub fn ca_digest(&self) -> &str {
        &self.ca_digest
    }

    /// The role letter of the token (informational; see [`match_join_token`]).
    pub fn role(&self) -> Role {
        self.role
    }
}

fn check_digest(d: &str) -> Result<(), CaError> {
    if d.len() == DIGEST_LEN
        && d.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(CaError::MalformedToken(format!(
            "the CA digest is not {DIGEST_LEN} lower-case hex characters"
        )))
    }
}

/// Checks a presented token against the cluster's current tokens and CA digest; the role is the
/// role of the current token it equals. Both comparisons always run and take time independent of
/// where the strings differ.
pub fn match_join_token(
    presented: &str,
    cluster_ca_digest: &str,
    worker_token: &str,
    manager_token: &str,
) -> Result<Role, CaError> {
    let token = JoinToken::parse(presented)?;
    if token.ca_digest != cluster_ca_digest {
        return Err(CaError::TokenForOtherCa {
            token_digest: token.ca_digest,
            cluster_digest: cluster_ca_digest.to_string(),
        });
    }
    let canonical = token.to_string();
    let is_worker = ct_eq(canonical.as_bytes(), worker_token.as_bytes());
    let is_manager = ct_eq(canonical.as_bytes(), manager_token.as_bytes());
    match (is_worker, is_manager) {
        (true, false) => Ok(Role::Worker),
        (false, true) => Ok(Role::Manager),
        // Both: the cluster's tokens are equal, which never happens with random secrets; grant
        // the lesser role rather than guess.
        (true, true) => {
            tracing::warn!("the worker and manager join tokens are equal; granting worker");
            Ok(Role::Worker)
        }
        (false, false) => Err(CaError::TokenRejected),
    }
}

/// Equality whose time depends only on the lengths (which are public: the format fixes them).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> String {
        "ab".repeat(32)
    }

    #[test]
    fn format_round_trips() {
        let t = JoinToken::generate(&digest(), Role::Manager).unwrap();
        let s = t.to_string();
        assert_eq!(s.len(), 100);
        assert!(s.starts_with(&format!("FLTKN-1-{}-m-", digest())), "{s}");
        let back = JoinToken::parse(&format!("  {s}\n")).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.role(), Role::Manager);
        assert_eq!(back.ca_digest(), digest());
        let w = JoinToken::generate(&digest(), Role::Worker).unwrap();
        assert!(w.to_string().contains("-w-"));
        assert_ne!(w.secret, t.secret);
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn malformed_tokens_say_why() {
        let good = JoinToken::generate(&digest(), Role::Worker)
            .unwrap()
            .to_string();
        let cases = [
            ("", "five parts"),
            ("SWMTKN-1-x-y", "five parts"),
            (&good.replacen("FLTKN", "SWMTKN", 1), "does not start"),
            (&good.replacen("-1-", "-2-", 1), "unsupported version"),
            (&good.replacen(&digest(), &"AB".repeat(32), 1), "CA digest"),
            (&good.replacen(&digest(), "abcd", 1), "CA digest"),
            (&good.replacen("-w-", "-x-", 1), "role"),
            (&good[..good.len() - 1], "secret"),
            (&format!("{good}-extra"), "five parts"),
        ];
        for (s, why) in cases {
            let err = JoinToken::parse(s).unwrap_err().to_string();
            assert!(err.starts_with("malformed join token: "), "{s}: {err}");
            assert!(err.contains(why), "{s}: {err}");
        }
        assert!(JoinToken::generate("nothex", Role::Worker).is_err());
    }

    #[test]
    fn role_comes_from_the_matching_cluster_token() {
        let d = digest();
        let w = JoinToken::generate(&d, Role::Worker).unwrap().to_string();
        let m = JoinToken::generate(&d, Role::Manager).unwrap().to_string();
        assert_eq!(match_join_token(&w, &d, &w, &m).unwrap(), Role::Worker);
        assert_eq!(match_join_token(&m, &d, &w, &m).unwrap(), Role::Manager);
        // A worker token relabelled as a manager token matches nothing.
        let forged = w.replacen("-w-", "-m-", 1);
        assert!(matches!(
            match_join_token(&forged, &d, &w, &m),
            Err(CaError::TokenRejected)
        ));
        // A rotated (or unknown) token.
        let old = JoinToken::generate(&d, Role::Worker).unwrap().to_string();
        assert!(matches!(
            match_join_token(&old, &d, &w, &m),
            Err(CaError::TokenRejected)
        ));
    }

    #[test]
    fn token_for_another_ca_is_refused_with_both_digests() {
        let d = digest();
        let other = "cd".repeat(32);
        let w = JoinToken::generate(&other, Role::Worker)
            .unwrap()
            .to_string();
        let err = match_join_token(&w, &d, &w, "").unwrap_err().to_string();
        assert!(err.contains(&other) && err.contains(&d), "{err}");
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
