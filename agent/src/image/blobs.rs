//! Content-addressed blob store: `blobs/sha256/<hex>` under the store root.
//!
//! Invariants:
//! - A file at `blobs/sha256/<hex>` always holds bytes whose sha256 is `<hex>`: content is written
//!   to a temp file in `ingest/` while it is hashed, fsynced, checked against the expected digest
//!   and only then renamed into place (and the directory fsynced).
//! - A failed or interrupted write leaves at most a file in `ingest/`; [`BlobStore::clean_ingest`]
//!   (run by `ImageStore::open`) deletes them. A digest mismatch or ENOSPC keeps nothing.
//! - Paths are only ever built from validated digests (see [`super::digest::hex_of`]).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;
use tracing::{debug, warn};

use super::digest::{self, Hasher, HashingWriter};
use super::error::{ImageError, Result};

/// The blob directory and its ingest area.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    ingest: PathBuf,
}

impl BlobStore {
    /// Blob store under `root` (`root/blobs/sha256`, `root/ingest`); nothing is created yet.
    pub fn new(root: &Path) -> Self {
        BlobStore {
            dir: root.join("blobs").join("sha256"),
            ingest: root.join("ingest"),
        }
    }

    /// Create the directories.
    pub fn create_dirs(&self) -> Result<()> {
        for d in [&self.dir, &self.ingest] {
            fs::create_dir_all(d).map_err(|e| ImageError::io("create directory", d, e))?;
        }
        Ok(())
    }

    /// Delete every leftover of interrupted writes.
    pub fn clean_ingest(&self) -> Result<usize> {
        let mut removed = 0;
        let entries = fs::read_dir(&self.ingest)
            .map_err(|e| ImageError::io("read directory", &self.ingest, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("read directory", &self.ingest, e))?;
            let path = entry.path();
            let res = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match res {
                Ok(()) => {
                    removed += 1;
                    debug!(path = %path.display(), "removed interrupted ingest");
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot remove ingest leftover")
                }
            }
        }
        Ok(removed)
    }

    /// Where the blob of `digest` lives (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join(digest::hex_of(digest, "blob")?))
    }

    /// Is the blob present?
    pub fn contains(&self, digest: &str) -> Result<bool> {
        Ok(self.path(digest)?.is_file())
    }

    /// Size of a present blob.
    pub fn size(&self, digest: &str) -> Result<u64> {
        let path = self.path(digest)?;
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| ImageError::io("stat blob", &path, e))
    }

    /// Open a present blob; `what` says what the blob is for the error text.
    pub fn open(&self, digest: &str, what: &str) -> Result<File> {
        let path = self.path(digest)?;
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::MissingBlob {
                    digest: digest.to_string(),
                    what: what.to_string(),
                    path: path.clone(),
                }
            } else {
                ImageError::io("open blob", &path, e)
            }
        })
    }

    /// Read a small blob (manifest, config) whole.
    pub fn read(&self, digest: &str, what: &str) -> Result<Vec<u8>> {
        let path = self.path(digest)?;
        let mut data = Vec::new();
        self.open(digest, what)?
            .read_to_end(&mut data)
            .map_err(|e| ImageError::io("read blob", &path, e))?;
        Ok(data)
    }

    /// Every digest in the store.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let entries =
            fs::read_dir(&self.dir).map_err(|e| ImageError::io("read directory", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("read directory", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let d = format!("{}{name}", digest::SHA256_PREFIX);
            if digest::check(&d, "blob file").is_ok() {
                out.push(d);
            } else {
                warn!(path = %entry.path().display(), "stray file in blob directory");
            }
        }
        Ok(out)
    }

    /// Delete a blob (absent is fine).
    pub fn remove(&self, digest: &str) -> Result<()> {
        let path = self.path(digest)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io("remove blob", &path, e)),
        }
    }

    /// A fresh temp file in the ingest area; it vanishes on drop unless committed.
    pub fn ingest_file(&self) -> Result<NamedTempFile> {
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.ingest)
            .map_err(|e| ImageError::io("create ingest file", &self.ingest, e))
    }

    /// Check a finished ingest file against `expected` and move it into place.
    ///
    /// `hasher` is the hash of exactly what was written to `temp`. On mismatch the temp file is
    /// dropped (deleted) and nothing is kept.
    pub fn commit(
        &self,
        temp: NamedTempFile,
        hasher: Hasher,
        expected: Option<&str>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<(String, u64)> {
        let size = hasher.len();
        let actual = hasher.finish();
        if let Some(expected) = expected {
            if expected != actual {
                return Err(ImageError::DigestMismatch {
                    what: what.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        if let Some(expected_size) = expected_size {
            if expected_size != size {
                return Err(ImageError::SizeMismatch {
                    what: what.to_string(),
                    expected: expected_size,
                    actual: size.to_string(),
                });
            }
        }
        temp.as_file()
            .sync_all()
            .map_err(|e| ImageError::io("fsync blob", temp.path(), e))?;
        let dest = self.path(&actual)?;
        temp.persist(&dest)
            .map_err(|e| ImageError::io("rename blob into place", &dest, e.error))?;
        sync_dir(&self.dir)?;
        debug!(digest = %actual, size, "blob committed");
        Ok((actual, size))
    }

    /// Copy everything `reader` yields into a new ingest file while hashing it.
    pub fn stage(&self, reader: &mut dyn Read) -> Result<(NamedTempFile, Hasher)> {
        let temp = self.ingest_file()?;
        let file = temp
            .as_file()
            .try_clone()
            .map_err(|e| ImageError::io("open ingest file", temp.path(), e))?;
        let mut writer = HashingWriter::new(io::BufWriter::with_capacity(256 * 1024, file));
        copy_io(reader, &mut writer, temp.path())?;
        let (mut buf, hasher) = writer.into_parts();
        buf.flush()
            .map_err(|e| ImageError::io("write ingest file", temp.path(), e))?;
        Ok((temp, hasher))
    }

    /// Store everything `reader` yields; verify it against `expected` when given.
    pub fn write_reader(
        &self,
        reader: &mut dyn Read,
        expected: Option<&str>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<(String, u64)> {
        if let Some(expected) = expected {
            digest::check(expected, what)?;
        }
        let (temp, hasher) = self.stage(reader)?;
        self.commit(temp, hasher, expected, expected_size, what)
    }

    /// Store a byte slice (manifests, configs); returns its digest.
    pub fn write_bytes(&self, data: &[u8], expected: Option<&str>, what: &str) -> Result<String> {
        let digest = digest::of_bytes(data);
        if let Some(expected) = expected {
            if expected != digest {
                return Err(ImageError::DigestMismatch {
                    what: what.to_string(),
                    expected: expected.to_string(),
                    actual: digest,
                });
            }
        }
        if self.contains(&digest)? {
            return Ok(digest);
        }
        self.write_reader(&mut &data[..], Some(&digest), None, what)
            .map(|(d, _)| d)
    }
}

/// Copy with errors attributed: read errors are reported as such, write errors name `dest`.
fn copy_io(reader: &mut dyn Read, writer: &mut dyn Write, dest: &Path) -> Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ImageError::Io {
                    op: "read source for",
                    path: dest.to_path_buf(),
                    source: e,
                })
            }
        };
        writer
            .write_all(&buf[..n])
            .map_err(|e| ImageError::io("write", dest, e))?;
        total += n as u64;
    }
}

/// fsync a directory so that renames into it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ImageError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = BlobStore::new(dir.path());
        s.create_dirs().expect("dirs");
        (dir, s)
    }

    #[test]
    fn write_and_read_back() {
        let (_d, s) = store();
        let digest = s.write_bytes(b"hello", None, "test").expect("write");
        assert_eq!(digest, digest::of_bytes(b"hello"));
        assert_eq!(s.read(&digest, "test").expect("read"), b"hello");
        assert_eq!(s.list().expect("list"), vec![digest]);
    }

    #[test]
    fn mismatch_keeps_nothing() {
        let (_d, s) = store();
        let wrong = digest::of_bytes(b"other");
        let err = s
            .write_reader(&mut &b"hello"[..], Some(&wrong), None, "layer x")
            .expect_err("mismatch");
        let text = err.to_string();
        assert!(text.contains(&wrong), "{text}");
        assert!(text.contains(&digest::of_bytes(b"hello")), "{text}");
        assert!(s.list().expect("list").is_empty());
        assert_eq!(fs::read_dir(&s.ingest).expect("ingest").count(), 0);
    }

    #[test]
    fn clean_ingest_removes_leftovers() {
        let (_d, s) = store();
        let t = s.ingest_file().expect("temp");
        let (_f, path) = t.keep().expect("keep");
        assert!(path.exists());
        assert_eq!(s.clean_ingest().expect("clean"), 1);
        assert!(!path.exists());
    }
}
