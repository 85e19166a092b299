//! sha256 digests as the store uses them: `sha256:<64 lower-case hex>` strings.
//!
//! Invariant: every digest that reaches a file path went through [`hex_of`], so a manifest or
//! archive can never name a path outside the store (no `..`, no `/`, fixed length).

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWrite;

use super::error::{ImageError, Result};

/// Prefix of every digest the store accepts.
pub const SHA256_PREFIX: &str = "sha256:";

/// The 64 hex digits of a `sha256:` digest, validated; `what` names the digest's owner in errors.
pub fn hex_of<'a>(digest: &'a str, what: &str) -> Result<&'a str> {
    let hex = digest
        .strip_prefix(SHA256_PREFIX)
        .ok_or_else(|| ImageError::InvalidDigest {
            digest: digest.to_string(),
            what: what.to_string(),
        })?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ImageError::InvalidDigest {
            digest: digest.to_string(),
            what: what.to_string(),
        });
    }
    Ok(hex)
}

/// Validate a digest and return it unchanged.
pub fn check(digest: &str, what: &str) -> Result<()> {
    hex_of(digest, what).map(|_| ())
}

/// `sha256:<hex>` of a byte slice.
pub fn of_bytes(data: &[u8]) -> String {
    format!("{SHA256_PREFIX}{}", hex::encode(Sha256::digest(data)))
}

/// The first 12 hex digits of a digest, as shown in listings and progress lines.
pub fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix(SHA256_PREFIX).unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

/// A running sha256 with a byte count.
#[derive(Default, Clone)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True before any byte was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `sha256:<hex>` of everything fed.
    pub fn finish(self) -> String {
        format!("{SHA256_PREFIX}{}", hex::encode(self.inner.finalize()))
    }
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    /// Wrap a reader.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::default(),
        }
    }

    /// Read the rest of the stream (a tar reader may stop before trailing padding) and return the
    /// digest of all bytes and their count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let len = self.hasher.len();
        Ok((self.hasher.finish(), len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A writer that hashes what passes through it (sync).
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap a writer.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::default(),
        }
    }

    /// The inner writer and the hash of what was written.
    pub fn into_parts(self) -> (W, Hasher) {
        (self.inner, self.hasher)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An async writer that hashes what passes through it, refuses to grow past a limit and reports
/// progress every `report_every` bytes.
pub struct AsyncHashingWriter<'a, W> {
    inner: W,
    hasher: Hasher,
    limit: Option<u64>,
    report_every: u64,
    last_report: u64,
    on_progress: Box<dyn FnMut(u64) + Send + 'a>,
}

impl<'a, W: AsyncWrite + Unpin> AsyncHashingWriter<'a, W> {
    /// Wrap `inner`; writes past `limit` bytes fail with `InvalidData`.
    pub fn new(
        inner: W,
        limit: Option<u64>,
        report_every: u64,
        on_progress: Box<dyn FnMut(u64) + Send + 'a>,
    ) -> Self {
        AsyncHashingWriter {
            inner,
            hasher: Hasher::default(),
            limit,
            report_every: report_every.max(1),
            last_report: 0,
            on_progress,
        }
    }

    /// The inner writer and the hash of what was written.
    pub fn into_parts(self) -> (W, Hasher) {
        (self.inner, self.hasher)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for AsyncHashingWriter<'_, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(limit) = this.limit {
            if this.hasher.len() + buf.len() as u64 > limit {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("blob is larger than the {limit} bytes its descriptor announces"),
                )));
            }
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                if this.hasher.len() - this.last_report >= this.report_every {
                    this.last_report = this.hasher.len();
                    (this.on_progress)(this.hasher.len());
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_accepts_only_sha256_lower_hex() {
        let good = of_bytes(b"x");
        assert!(hex_of(&good, "t").is_ok());
        assert!(hex_of("sha256:../../etc/passwd", "t").is_err());
        assert!(hex_of(&good.to_uppercase(), "t").is_err());
        assert!(hex_of("sha512:00", "t").is_err());
        assert!(hex_of(&format!("{good}0"), "t").is_err());
    }

    #[test]
    fn hashing_reader_reads_to_end() {
        let data = vec![7u8; 10_000];
        let mut r = HashingReader::new(&data[..]);
        let mut first = [0u8; 10];
        r.read_exact(&mut first).expect("read");
        let (d, n) = r.finish().expect("finish");
        assert_eq!(n, 10_000);
        assert_eq!(d, of_bytes(&data));
        assert_eq!(short(&d).len(), 12);
    }
}
