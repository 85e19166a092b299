//! The cluster data key: a 256-bit XChaCha20-Poly1305 key that seals secrets and the CA private
//! key before they enter the raft log or snapshots. Only managers hold it (on disk, mode 0600;
//! a joining manager receives it in `JoinManagerResponse.data_key` over mutual TLS).
//!
//! Sealed format: `[version = 1][24-byte random nonce][ciphertext || 16-byte tag]`. The caller's
//! associated data (e.g. the object id) binds a sealed blob to its place: a blob copied into
//! another object does not open. Random 192-bit nonces make reuse negligible without any nonce
//! state.
//!
//! On disk: one line, the key as 64 lower-case hex characters.
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{fsutil, random, CaError};

/// Length of the key in bytes.
pub const DATA_KEY_LEN: usize = 32;
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// The cluster data key. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; DATA_KEY_LEN]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    pub fn generate() -> Result<DataKey, CaError> {
        Ok(DataKey(random::bytes::<DATA_KEY_LEN>()?))
    }

    /// The key from its raw bytes (as carried by `JoinManagerResponse.data_key`).
    pub fn from_bytes(bytes: &[u8]) -> Result<DataKey, CaError> {
        let key: [u8; DATA_KEY_LEN] = bytes.try_into().map_err(|_| {
            CaError::InvalidDataKey(format!("{} bytes instead of {DATA_KEY_LEN}", bytes.len()))
        })?;
        Ok(DataKey(key))
    }

    /// A keyed digest of `data` for display and comparison (`secret inspect`): HMAC-SHA256 under
    /// a key derived from this one for `purpose`, so a digest cannot be used to guess a short
    /// secret offline the way a plain sha256 can. Form: `hmac-sha256:<hex>`.
    pub fn digest(&self, purpose: &str, data: &[u8]) -> String {
        let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let sub = ring::hmac::sign(&derive, format!("flotilla digest key/{purpose}").as_bytes());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, sub.as_ref());
        let tag = ring::hmac::sign(&key, data);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("hmac-sha256:{hex}")
    }

    /// The raw key, to hand to a joining manager. Never log it.
    pub fn to_bytes(&self) -> [u8; DATA_KEY_LEN] {
        self.0
    }

    /// Loads the key at `path`, or creates it (mode 0600, durable) when the file does not exist.
    /// Two processes racing to create it end up with the same key.
    pub fn load_or_create(path: &Path) -> Result<DataKey, CaError> {
        match std::fs::metadata(path) {
            Ok(_) => return DataKey::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CaError::io("read", path, e)),
        }
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsutil::create_private_dir(dir)?;
        }
        let key = DataKey::generate()?;
        let text = format!("{}\n", hex::encode(key.0));
        if fsutil::create_exclusive(path, text.as_bytes(), 0o600)? {
            tracing::info!(path = %path.display(), "created the cluster data key");
            Ok(key)
        } else {
            DataKey::load(path)
        }
    }

    /// Loads the key at `path`; warns when the file is readable by group or others.
    pub fn load(path: &Path) -> Result<DataKey, CaError> {
        let text = std::fs::read_to_string(path).map_err(|e| CaError::io("read", path, e))?;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
                    "the data key file is readable by others; chmod 600 it");
            }
        }
        let bad = |reason: String| CaError::InvalidDataKeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = hex::decode(text.trim()).map_err(|e| bad(format!("not hex: {e}")))?;
        DataKey::from_bytes(&bytes).map_err(|e| bad(e.to_string()))
    }

    /// Encrypts `plaintext` bound to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CaError> {
        let nonce = random::bytes::<NONCE_LEN>()?;
        let ct = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CaError::Seal(format!("{} bytes is too large", plaintext.len())))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what [`DataKey::seal`] produced with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CaError> {
        let (version, rest) = sealed
            .split_first()
            .ok_or_else(|| CaError::Open("empty".into()))?;
        if *version != VERSION {
            return Err(CaError::Open(format!(
                "unknown format version {version} (this flotilla reads version {VERSION})"
            )));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(CaError::Open(format!(
                "{} bytes is too short to be sealed data",
                sealed.len()
            )));
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| {
                CaError::Open(
                    "authentication failed: another data key, other associated data, or altered data"
                        .into(),
                )
            })
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_keyed_and_stable() {
        let k = DataKey::generate().unwrap();
        let d = k.digest("secret", b"hunter2");
        assert!(d.starts_with("hmac-sha256:") && d.len() == 12 + 64, "{d}");
        assert_eq!(d, k.digest("secret", b"hunter2"), "same key, same data");
        assert_ne!(d, k.digest("secret", b"hunter3"));
        assert_ne!(d, k.digest("config", b"hunter2"), "purposes are separate");
        let other = DataKey::generate().unwrap();
        assert_ne!(
            d,
            other.digest("secret", b"hunter2"),
            "another cluster, another digest"
        );
        // Not the plain sha256 an attacker could brute-force offline.
        use sha2::Digest as _;
        let plain = hex::encode(sha2::Sha256::digest(b"hunter2"));
        assert!(!d.contains(&plain));
    }

    #[test]
    fn seal_open_round_trip() {
        let k = DataKey::generate().unwrap();
        let sealed = k.seal(b"top secret", b"secret/s1").unwrap();
        assert_eq!(sealed[0], 1);
        assert_eq!(sealed.len(), 1 + 24 + 10 + 16);
        assert_eq!(k.open(&sealed, b"secret/s1").unwrap(), b"top secret");
        // Fresh nonce each time.
        assert_ne!(sealed, k.seal(b"top secret", b"secret/s1").unwrap());
        assert_eq!(k.open(&k.seal(b"", b"").unwrap(), b"").unwrap(), b"");
    }

    #[test]
    fn tampering_wrong_key_or_wrong_aad_fail() {
        let k = DataKey::generate().unwrap();
        let sealed = k.seal(b"top secret", b"a").unwrap();
        for i in [1, 10, 25, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            let err = k.open(&t, b"a").unwrap_err().to_string();
            assert!(err.contains("authentication failed"), "{i}: {err}");
        }
        let other = DataKey::generate().unwrap();
        assert!(other.open(&sealed, b"a").is_err());
        assert!(k.open(&sealed, b"b").is_err());
        let mut v = sealed.clone();
        v[0] = 2;
        assert!(k
            .open(&v, b"a")
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        assert!(k
            .open(&sealed[..30], b"a")
            .unwrap_err()
            .to_string()
            .contains("too short"));
        assert!(k.open(&[], b"a").is_err());
    }

    #[test]
    fn load_or_create_persists_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/data.key");
        let k1 = DataKey::load_or_create(&p).unwrap();
        let k2 = DataKey::load_or_create(&p).unwrap();
        assert_eq!(k1, k2);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(format!("{k1:?}"), "DataKey(<redacted>)");
        std::fs::write(&p, "zz\n").unwrap();
        let err = DataKey::load_or_create(&p).unwrap_err().to_string();
        assert!(
            err.contains("invalid data key") && err.contains("not hex"),
            "{err}"
        );
        assert_eq!(DataKey::from_bytes(&k1.to_bytes()).unwrap(), k1);
        assert!(DataKey::from_bytes(&[0; 31]).is_err());
    }
}
