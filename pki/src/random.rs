//! Randomness for keys, serials, token secrets and nonces, from the operating system's
//! generator. Failures are errors, never panics.
use rand::rngs::OsRng;
use rand::RngCore;

use super::CaError;

/// `N` random bytes from the OS generator.
pub(crate) fn bytes<const N: usize>() -> Result<[u8; N], CaError> {
    let mut out = [0u8; N];
    OsRng
        .try_fill_bytes(&mut out)
        .map_err(|e| CaError::Random(e.to_string()))?;
    Ok(out)
}

/// `len` characters drawn uniformly from `[0-9a-z]` (rejection sampling: bytes >= 252 are
/// dropped so every character is equally likely).
pub(crate) fn base36(len: usize) -> Result<String, CaError> {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in bytes::<64>()? {
            if b < 252 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_has_the_length_and_alphabet() {
        let s = base36(100).unwrap();
        assert_eq!(s.len(), 100);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        assert_ne!(base36(25).unwrap(), base36(25).unwrap());
    }
}
