//! Durable records as JSON files, one file per network and per sandbox.
//!
//! Layout: `<state_dir>/networks/<id>.json` and `<state_dir>/sandboxes/<container id>.json`.
//! Every write goes to a temporary file in the same directory, is fsynced, renamed over the
//! target and the directory is fsynced, so a crash leaves either the old or the new record,
//! never half of one. A record that does not parse is reported and skipped, never deleted.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{NetError, Result};

/// The directories of the store.
#[derive(Debug, Clone)]
pub struct Store {
    pub networks: PathBuf,
    pub sandboxes: PathBuf,
}

impl Store {
    /// Opens (creating) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let store = Store {
            networks: state_dir.join("networks"),
            sandboxes: state_dir.join("sandboxes"),
        };
        for d in [&store.networks, &store.sandboxes] {
            fs::create_dir_all(d).map_err(|e| NetError::io("create state directory", d, e))?;
        }
        Ok(store)
    }

    pub fn network_path(&self, id: &str) -> PathBuf {
        self.networks.join(format!("{id}.json"))
    }

    pub fn sandbox_path(&self, container_id: &str) -> PathBuf {
        self.sandboxes.join(format!("{container_id}.json"))
    }
}

/// Writes `value` to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| NetError::State {
        path: path.to_path_buf(),
        reason: format!("cannot serialize: {e}"),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record")
    ));
    let mut f = fs::File::create(&tmp).map_err(|e| NetError::io("create", &tmp, e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| NetError::io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| NetError::io("rename into place", path, e))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes a record; a missing one is fine.
pub fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetError::io("remove", path, e)),
    }
}

/// Every record of a directory that parses; the others are logged and skipped.
pub fn load_all<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| NetError::io("read state directory", dir, e))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    paths.sort();
    for p in paths {
        match fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<T>(&b).map_err(|e| e.to_string()))
        {
            Ok(v) => out.push(v),
            Err(reason) => {
                tracing::error!(path = %p.display(), %reason, "skipping unreadable network state record")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_skip_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        write_json(&store.network_path("a"), &vec![1, 2]).unwrap();
        write_json(&store.network_path("a"), &vec![3]).unwrap();
        fs::write(store.networks.join("b.json"), b"{not json").unwrap();
        fs::write(store.networks.join(".c.json.tmp"), b"[9]").unwrap();
        let all: Vec<Vec<u32>> = load_all(&store.networks).unwrap();
        assert_eq!(all, vec![vec![3]]);
        remove(&store.network_path("a")).unwrap();
        remove(&store.network_path("a")).unwrap();
        assert!(load_all::<Vec<u32>>(&store.networks).unwrap().is_empty());
    }
}
