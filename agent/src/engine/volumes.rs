//! Named volumes (`local` driver): a directory per volume under `<state>/volumes/<name>/_data`
//! with its metadata in `volume.json`. Data outlives the containers that use it; a volume in use
//! cannot be removed (the engine passes the users it knows of).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use flotilla_proto::agent::v1 as pb;
use serde::{Deserialize, Serialize};

use super::error::{no_such, EngineError, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    name: String,
    created_unix_nano: i64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    anonymous: bool,
}

pub struct Volumes {
    dir: PathBuf,
    lock: Mutex<()>,
}

/// Docker's rule for names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

impl Volumes {
    pub fn open(dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| EngineError::io("create", &dir, e))?;
        Ok(Volumes {
            dir,
            lock: Mutex::new(()),
        })
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("volume.json")
    }

    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    fn load(&self, name: &str) -> Option<Meta> {
        let data = fs::read(self.meta_path(name)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| self.meta_path(n).exists())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn to_pb(&self, m: &Meta, used_by: Vec<String>) -> pb::Volume {
        pb::Volume {
            name: m.name.clone(),
            driver: "local".into(),
            mountpoint: self.mountpoint(&m.name).display().to_string(),
            created_unix_nano: m.created_unix_nano,
            labels: m.labels.clone().into_iter().collect(),
            used_by,
            anonymous: m.anonymous,
        }
    }

    /// Creates the volume, or returns the existing one with that name (as docker does).
    pub fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<pb::Volume> {
        let name = if name.is_empty() {
            super::random_hex(32)
        } else {
            name.to_string()
        };
        if !valid_name(&name) {
            return Err(EngineError::invalid(format!(
                "invalid volume name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, 2 to 128 characters"
            )));
        }
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = self.load(&name) {
            return Ok(self.to_pb(&m, Vec::new()));
        }
        let data = self.mountpoint(&name);
        fs::create_dir_all(&data)
            .map_err(|e| EngineError::io("create volume directory", &data, e))?;
        let m = Meta {
            name: name.clone(),
            created_unix_nano: crate::shim::logfile::now_unix_nano(),
            labels,
            anonymous,
        };
        let bytes =
            serde_json::to_vec_pretty(&m).map_err(|e| EngineError::internal(e.to_string()))?;
        let path = self.meta_path(&name);
        crate::shim::write_file_atomic(&path, &bytes)
            .map_err(|e| EngineError::io("write", &path, e))?;
        Ok(self.to_pb(&m, Vec::new()))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.load(name).is_some()
    }

    pub fn inspect(&self, name: &str, used_by: Vec<String>) -> Result<pb::Volume> {
        match self.load(name) {
            Some(m) => Ok(self.to_pb(&m, used_by)),
            None => Err(no_such(
                "volume",
                name,
                self.names().iter().map(String::as_str),
            )),
        }
    }

    /// All volumes; `used_by(name)` gives the containers using each.
    pub fn list(&self, used_by: impl Fn(&str) -> Vec<String>) -> Vec<pb::Volume> {
        self.names()
            .iter()
            .filter_map(|n| self.load(n))
            .map(|m| {
                let u = used_by(&m.name);
                self.to_pb(&m, u)
            })
            .collect()
    }

    /// Removes a volume nobody uses. Returns the bytes it held.
    pub fn remove(&self, name: &str, used_by: &[String]) -> Result<u64> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.load(name).is_none() {
            return Err(no_such(
                "volume",
                name,
                self.names().iter().map(String::as_str),
            ));
        }
        if !used_by.is_empty() {
            return Err(EngineError::precondition(format!(
                "volume {name} is in use by container(s) {}: remove them first",
                used_by.join(", ")
            )));
        }
        let dir = self.dir.join(name);
        let size = dir_size(&self.mountpoint(name));
        // The metadata goes first: a crash midway leaves a directory `names` ignores, not a
        // volume without data.
        let meta = self.meta_path(name);
        fs::remove_file(&meta).map_err(|e| EngineError::io("remove", &meta, e))?;
        fs::remove_dir_all(&dir).map_err(|e| EngineError::io("remove", &dir, e))?;
        Ok(size)
    }
}

/// Bytes under `path` (files only, not following symlinks).
pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                total += md.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_inspect_remove_and_in_use() {
        let tmp = tempfile::tempdir().expect("tmp");
        let v = Volumes::open(tmp.path().join("volumes")).expect("open");
        let vol = v.create("data", BTreeMap::new(), false).expect("create");
        assert!(Path::new(&vol.mountpoint).is_dir());
        fs::write(Path::new(&vol.mountpoint).join("f"), b"12345").expect("write");
        // Creating again returns the same volume, data intact.
        v.create("data", BTreeMap::new(), false).expect("again");
        assert!(Path::new(&vol.mountpoint).join("f").exists());
        assert_eq!(v.list(|_| vec![]).len(), 1);
        let e = v.remove("data", &["web".into()]).unwrap_err();
        assert!(e.msg.contains("in use by container(s) web"), "{}", e.msg);
        assert!(v
            .inspect("dta", vec![])
            .unwrap_err()
            .msg
            .contains("did you mean data"));
        assert_eq!(v.remove("data", &[]).expect("rm"), 5);
        assert!(!v.exists("data"));
        for bad in ["a", "-x", "a/b", "..", "a b"] {
            assert!(v.create(bad, BTreeMap::new(), false).is_err(), "{bad}");
        }
        let anon = v.create("", BTreeMap::new(), true).expect("anon");
        assert_eq!(anon.name.len(), 64);
        assert!(anon.anonymous);
    }
}
