//! The durable raft log: raft-rs's read-only `Storage` over an in-memory cache of everything in
//! the raft state directory:
//! - `log/`: a raft-engine log (tikv's append-only store for raft logs: one record per batch,
//!   checksummed, `fdatasync` after each batch that must be durable). On start, a damaged record
//!   in the newest file is taken for a write a crash cut short and the file is truncated there
//!   (raft-engine's `TolerateTailCorruption`, TiKV's default); damage in an older file stops the
//!   start with an error. Region [`META`] holds key-value pairs (raft id, hard state, the
//!   truncation point, the members, the snapshot's metadata, which region holds the entries);
//!   the entries live in their own region, replaced by a fresh one when a snapshot from the
//!   leader replaces the log;
//! - `snapshot-<index>.bin`: the data of the last snapshot, written and fsync'd before the batch
//!   that refers to it (its length and CRC-32 are in that batch, checked on load).
//!
//! Invariants:
//! - The cache is only changed by [`RaftStorage::commit`], after the raft-engine batch holding the
//!   same change was written; a batch is fsync'd whenever it carries entries, a snapshot, or a
//!   new term or vote. A batch changing only the commit index or the members is written without
//!   fsync: both are rebuilt from the log.
//! - The log is contiguous: `entries[i].index == truncated_index + 1 + i`; the entry at
//!   `truncated_index` is gone but its term is kept (`truncated_term`) for raft's log matching.
//! - The snapshot's index is at least `truncated_index`, so a follower behind the log can always
//!   be sent the snapshot; `hard_state.commit` is at least the snapshot's index.
//! - The `ConfState` given to raft at start is the snapshot's: the conf changes after it are
//!   replayed with the committed entries, exactly like the state machine's commands.
//! - Each local snapshot rewrites every key of [`META`], so the log files before it hold nothing
//!   live and raft-engine's purge can delete them.

use std::cell::Cell;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ::raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use ::raft::{GetEntriesContext, RaftState, Storage, StorageError};
use prost::Message as _;
use protobuf::Message as _;
use raft_engine::{Command, Engine, LogBatch, MessageExt, ReadableSize, RecoveryMode};

use super::legacy_redb;
use super::{Member, RaftError};

/// The region of the key-value pairs.
const META: u64 = 1;
/// The region of the entries of a fresh log; each installed snapshot moves them to the next.
const FIRST_LOG_REGION: u64 = 2;

const K_RAFT_ID: &[u8] = b"raft_id";
const K_HARD_STATE: &[u8] = b"hard_state";
const K_TRUNCATED: &[u8] = b"truncated";
const K_MEMBERS: &[u8] = b"members";
const K_LOG_REGION: &[u8] = b"log_region";
/// The snapshot's data length (8 bytes), CRC-32 (4 bytes), then its encoded metadata.
const K_SNAPSHOT: &[u8] = b"snapshot";

/// The raft-engine directory inside the state directory.
pub(crate) const LOG_DIR: &str = "log";
const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".bin";

/// raft-engine's file size and the total after which it purges the files compaction emptied.
const TARGET_FILE_SIZE: u64 = 16 << 20;
const PURGE_THRESHOLD: u64 = 64 << 20;

#[derive(Clone)]
struct Entries;

impl MessageExt for Entries {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// One durable change, committed in one transaction.
#[derive(Default)]
pub(crate) struct WriteBatch {
    /// A snapshot received from the leader: replaces the whole log (applied first).
    pub install: Option<Snapshot>,
    /// Entries to append; any stored entry at or after the first one's index is discarded.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// A snapshot taken locally, and the index up to which (inclusive) the log is compacted.
    pub snapshot: Option<(Snapshot, u64)>,
    /// The members, replacing the stored ones.
    pub members: Option<Vec<Member>>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.install.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.members.is_none()
    }
}

pub(crate) struct RaftStorage {
    engine: Engine,
    /// The raft state directory.
    dir: PathBuf,
    /// The raft-engine directory, named in errors.
    path: PathBuf,
    raft_id: u64,
    log_region: u64,
    hard_state: HardState,
    /// The hard state as last written, to skip writing an unchanged one.
    persisted_hs: HardState,
    snapshot: Snapshot,
    /// CRC-32 of the snapshot's data (part of its file name).
    snapshot_crc: u32,
    truncated_index: u64,
    truncated_term: u64,
    entries: Vec<Entry>,
    members: Vec<Member>,
    /// Set when raft asked for a snapshot we could not give (none yet, too old, or one whose
    /// configuration lacks the peer); the ready loop then takes a fresh one.
    snapshot_wanted: Cell<bool>,
}

pub(crate) fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// A snapshot's file, named by its index and the CRC-32 of its data: another snapshot at the same
/// index (`init --force-new-cluster` installs one with other members) never overwrites the file
/// the log still refers to.
fn snapshot_file(dir: &Path, index: u64, crc: u32) -> PathBuf {
    dir.join(format!(
        "{SNAPSHOT_PREFIX}{index:020}-{crc:08x}{SNAPSHOT_SUFFIX}"
    ))
}

fn encode_members(ms: &[Member]) -> Vec<u8> {
    flotilla_proto::raft::v1::Members {
        members: ms.iter().cloned().map(Into::into).collect(),
    }
    .encode_to_vec()
}

fn encode_truncated(index: u64, term: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&index.to_be_bytes());
    b.extend_from_slice(&term.to_be_bytes());
    b
}

impl RaftStorage {
    /// Opens (creating it if needed) the log in `dir` for raft id `raft_id`. A state written by
    /// an older flotilla (`raft.redb`) is imported once and the old file kept as
    /// `raft.redb.imported`.
    pub fn open(dir: &Path, raft_id: u64) -> Result<Self, RaftError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| RaftError::storage(dir, "creating the state directory", e))?;
        let path = dir.join(LOG_DIR);
        let err = |what: &str, e: &dyn std::fmt::Display| RaftError::storage(&path, what, e);
        let cfg = raft_engine::Config {
            dir: path
                .to_str()
                .ok_or_else(|| err("opening the log", &"the path is not UTF-8"))?
                .to_string(),
            recovery_mode: RecoveryMode::TolerateTailCorruption,
            recovery_threads: 1,
            target_file_size: ReadableSize(TARGET_FILE_SIZE),
            purge_threshold: ReadableSize(PURGE_THRESHOLD),
            enable_log_recycle: false,
            ..Default::default()
        };
        let engine = Engine::open(cfg).map_err(|e| err("opening the log", &e))?;
        let mut s = RaftStorage {
            engine,
            dir: dir.to_path_buf(),
            path,
            raft_id,
            log_region: FIRST_LOG_REGION,
            hard_state: HardState::default(),
            persisted_hs: HardState::default(),
            snapshot: Snapshot::default(),
            snapshot_crc: 0,
            truncated_index: 0,
            truncated_term: 0,
            entries: Vec::new(),
            members: Vec::new(),
            snapshot_wanted: Cell::new(false),
        };
        let legacy = dir.join(legacy_redb::DB_FILE);
        if legacy.exists() {
            if s.engine.get(META, K_RAFT_ID).is_none() {
                s.import(&legacy)?;
            } else {
                // Imported before a crash cut the rename short.
                s.keep_imported(&legacy)?;
            }
        }
        match s.engine.get(META, K_RAFT_ID).and_then(|b| be_u64(&b)) {
            Some(found) if found != raft_id => {
                return Err(RaftError::WrongId {
                    path: s.path,
                    found,
                    expected: raft_id,
                });
            }
            Some(_) => {}
            None => {
                let mut b = LogBatch::default();
                b.put(META, K_RAFT_ID.to_vec(), raft_id.to_be_bytes().to_vec())
                    .map_err(|e| s.err("recording the raft id", e))?;
                s.write(&mut b, true, "recording the raft id")?;
            }
        }
        s.load()?;
        s.remove_stale_snapshot_files();
        Ok(s)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> RaftError {
        RaftError::storage(&self.path, what, e)
    }

    fn write(&self, b: &mut LogBatch, sync: bool, what: &str) -> Result<(), RaftError> {
        self.engine
            .write(b, sync)
            .map(|_| ())
            .map_err(|e| self.err(what, e))
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.engine.get(META, key)
    }

    /// Moves the state of an older flotilla's `raft.redb` into the log, in one synced batch.
    fn import(&mut self, legacy: &Path) -> Result<(), RaftError> {
        let old = legacy_redb::read(legacy)?;
        if let Some(found) = old.raft_id.filter(|found| *found != self.raft_id) {
            return Err(RaftError::WrongId {
                path: legacy.to_path_buf(),
                found,
                expected: self.raft_id,
            });
        }
        let snapshot = if old.snapshot.get_metadata().index > 0 {
            Some(self.write_snapshot(&old.snapshot)?.1)
        } else {
            None
        };
        let mut b = LogBatch::default();
        let put = |b: &mut LogBatch, k: &[u8], v: Vec<u8>| {
            b.put(META, k.to_vec(), v)
                .map_err(|e| RaftError::storage(legacy, "importing", e))
        };
        put(&mut b, K_RAFT_ID, self.raft_id.to_be_bytes().to_vec())?;
        put(
            &mut b,
            K_LOG_REGION,
            FIRST_LOG_REGION.to_be_bytes().to_vec(),
        )?;
        put(
            &mut b,
            K_HARD_STATE,
            old.hard_state
                .write_to_bytes()
                .map_err(|e| self.err("encoding the hard state", e))?,
        )?;
        put(
            &mut b,
            K_TRUNCATED,
            encode_truncated(old.truncated_index, old.truncated_term),
        )?;
        put(&mut b, K_MEMBERS, encode_members(&old.members))?;
        if let Some(value) = snapshot {
            put(&mut b, K_SNAPSHOT, value)?;
        }
        if !old.entries.is_empty() {
            b.add_entries::<Entries>(FIRST_LOG_REGION, &old.entries)
                .map_err(|e| self.err("importing the entries", e))?;
        }
        self.write(&mut b, true, "importing the old raft database")?;
        tracing::info!(from = %legacy.display(), entries = old.entries.len(),
            "imported the raft state of an older flotilla");
        self.keep_imported(legacy)
    }

    /// Renames an imported `raft.redb` out of the way (kept, never read again).
    fn keep_imported(&self, legacy: &Path) -> Result<(), RaftError> {
        let kept = legacy.with_extension("redb.imported");
        std::fs::rename(legacy, &kept)
            .map_err(|e| RaftError::storage(legacy, "renaming the imported database", e))?;
        tracing::info!(kept = %kept.display(), "the old raft database is kept, unused");
        Ok(())
    }

    fn load(&mut self) -> Result<(), RaftError> {
        if let Some(b) = self.get(K_LOG_REGION) {
            self.log_region =
                be_u64(&b).ok_or_else(|| self.err("decoding the log region", "not 8 bytes"))?;
        }
        if let Some(b) = self.get(K_HARD_STATE) {
            self.hard_state = HardState::parse_from_bytes(&b)
                .map_err(|e| self.err("decoding the hard state", e))?;
        }
        if let Some(b) = self.get(K_TRUNCATED) {
            if b.len() != 16 {
                return Err(self.err("decoding the truncated state", "not 16 bytes"));
            }
            self.truncated_index = be_u64(&b[..8]).unwrap_or_default();
            self.truncated_term = be_u64(&b[8..]).unwrap_or_default();
        }
        if let Some(b) = self.get(K_SNAPSHOT) {
            (self.snapshot, self.snapshot_crc) = self.read_snapshot(&b)?;
        }
        if let Some(b) = self.get(K_MEMBERS) {
            let ms = flotilla_proto::raft::v1::Members::decode(&b[..])
                .map_err(|e| self.err("decoding the members", e))?;
            self.members = ms.members.into_iter().map(Into::into).collect();
        }
        let region = self.log_region;
        if let (Some(first), Some(last)) = (
            self.engine.first_index(region),
            self.engine.last_index(region),
        ) {
            let from = self.truncated_index + 1;
            if first > from {
                return Err(self.err(
                    "checking the log",
                    format!(
                        "it starts at entry {first}, but was truncated at {} (entries are missing)",
                        from - 1
                    ),
                ));
            }
            if last >= from {
                let mut ents = Vec::with_capacity((last + 1 - from) as usize);
                self.engine
                    .fetch_entries_to::<Entries>(region, from, last + 1, None, &mut ents)
                    .map_err(|e| self.err("reading the entries", e))?;
                for (i, e) in ents.iter().enumerate() {
                    let expected = from + i as u64;
                    if e.index != expected {
                        return Err(self.err(
                            "checking the log",
                            format!("found entry {} where {expected} was expected", e.index),
                        ));
                    }
                }
                self.entries = ents;
            }
        }
        // The snapshot's entries are committed, whatever the lazily written commit says.
        let snap_index = self.snapshot.get_metadata().index;
        if self.hard_state.commit < snap_index {
            self.hard_state.commit = snap_index;
        }
        self.persisted_hs = self.hard_state.clone();
        Ok(())
    }

    /// Reads the snapshot `K_SNAPSHOT`'s value describes, checking its length and checksum.
    fn read_snapshot(&self, b: &[u8]) -> Result<(Snapshot, u32), RaftError> {
        if b.len() < 12 {
            return Err(self.err("decoding the snapshot metadata", "too short"));
        }
        let len = be_u64(&b[..8]).unwrap_or_default();
        let crc = u32::from_be_bytes(b[8..12].try_into().unwrap_or_default());
        let meta = SnapshotMetadata::parse_from_bytes(&b[12..])
            .map_err(|e| self.err("decoding the snapshot metadata", e))?;
        let file = snapshot_file(&self.dir, meta.index, crc);
        let data = std::fs::read(&file)
            .map_err(|e| RaftError::storage(&file, "reading the snapshot", e))?;
        let got = crc32fast::hash(&data);
        if data.len() as u64 != len || got != crc {
            return Err(RaftError::storage(
                &file,
                "checking the snapshot",
                format!(
                    "{} bytes with CRC-32 {got:08x}, the log recorded {len} bytes with {crc:08x}",
                    data.len(),
                ),
            ));
        }
        let mut s = Snapshot::default();
        s.set_metadata(meta);
        s.data = data.into();
        Ok((s, crc))
    }

    /// Writes a snapshot's data durably (temporary file, fsync, rename, fsync of the directory);
    /// returns its CRC-32 and the `K_SNAPSHOT` value describing it (length, CRC-32, metadata).
    fn write_snapshot(&self, s: &Snapshot) -> Result<(u32, Vec<u8>), RaftError> {
        let crc = crc32fast::hash(&s.data);
        let meta = s
            .get_metadata()
            .write_to_bytes()
            .map_err(|e| self.err("encoding the snapshot metadata", e))?;
        let mut value = Vec::with_capacity(12 + meta.len());
        value.extend_from_slice(&(s.data.len() as u64).to_be_bytes());
        value.extend_from_slice(&crc.to_be_bytes());
        value.extend_from_slice(&meta);
        let file = snapshot_file(&self.dir, s.get_metadata().index, crc);
        let tmp = file.with_extension("tmp");
        let io = |what: &str, e: std::io::Error| RaftError::storage(&file, what, e);
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating the snapshot", e))?;
        f.write_all(&s.data)
            .map_err(|e| io("writing the snapshot", e))?;
        f.sync_all().map_err(|e| io("syncing the snapshot", e))?;
        drop(f);
        std::fs::rename(&tmp, &file).map_err(|e| io("renaming the snapshot", e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the state directory", e))?;
        Ok((crc, value))
    }

    /// Deletes snapshot files other than the current one (left by a crash between writing a
    /// snapshot and committing the batch naming it, or replaced since).
    fn remove_stale_snapshot_files(&self) {
        let current = (self.snapshot.get_metadata().index > 0).then(|| {
            snapshot_file(
                &self.dir,
                self.snapshot.get_metadata().index,
                self.snapshot_crc,
            )
        });
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for f in dir.flatten() {
            let is_snapshot = f
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(SNAPSHOT_PREFIX));
            if is_snapshot && current.as_deref() != Some(f.path().as_path()) {
                if let Err(e) = std::fs::remove_file(f.path()) {
                    tracing::warn!(file = %f.path().display(), error = %e,
                        "could not remove an old snapshot file");
                }
            }
        }
    }

    /// Whether the directory holds a raft state (a node that started before).
    pub fn is_initialized(&self) -> bool {
        self.hard_state != HardState::default()
            || self.snapshot.get_metadata().index > 0
            || !self.entries.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The entries after the truncated index.
    pub fn entries_after_truncation(&self) -> &[Entry] {
        &self.entries
    }

    pub fn last_index_inner(&self) -> u64 {
        self.truncated_index + self.entries.len() as u64
    }

    fn term_inner(&self, idx: u64) -> Result<u64, StorageError> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.truncated_index {
            return Err(StorageError::Compacted);
        }
        match self.entries.get((idx - self.truncated_index - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(StorageError::Unavailable),
        }
    }

    /// Records a commit index learnt after a Ready (raft's `LightReady`); written with the next
    /// batch.
    pub fn set_commit(&mut self, commit: u64) {
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
        }
    }

    /// Takes (and clears) the request for a fresh snapshot.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Persists `batch` in one raft-engine write (fsync'd when it must be), then applies it to
    /// the cache.
    pub fn commit(&mut self, batch: WriteBatch) -> Result<(), RaftError> {
        let mut hs = batch
            .hard_state
            .clone()
            .unwrap_or_else(|| self.hard_state.clone());
        // Keep a commit index learnt through set_commit even if the Ready's is older.
        hs.commit = hs.commit.max(self.hard_state.commit);
        if let Some(s) = &batch.install {
            hs.commit = hs.commit.max(s.get_metadata().index);
            hs.term = hs.term.max(s.get_metadata().term);
        }
        if let Some((s, _)) = &batch.snapshot {
            hs.commit = hs.commit.max(s.get_metadata().index);
        }
        let write_hs = hs != self.persisted_hs;
        let must_sync = batch.install.is_some()
            || !batch.entries.is_empty()
            || batch.snapshot.is_some()
            || hs.term != self.persisted_hs.term
            || hs.vote != self.persisted_hs.vote;
        if !write_hs && batch.is_empty() {
            return Ok(());
        }

        // Where the log starts once the install (if any) is applied, and where appends go.
        let (base, region) = match &batch.install {
            Some(s) => (s.get_metadata().index, self.log_region + 1),
            None => (self.truncated_index, self.log_region),
        };
        if let Some(first) = batch.entries.first() {
            let last = if batch.install.is_some() {
                base
            } else {
                self.last_index_inner()
            };
            // raft never does this; refuse rather than leave a hole or rewrite compacted entries.
            if first.index <= base || first.index > last + 1 {
                return Err(self.err(
                    "appending to the log",
                    format!(
                        "entry {} cannot follow a log of entries {}..={last}",
                        first.index,
                        base + 1
                    ),
                ));
            }
        }
        // The compaction point of a local snapshot, and the term to keep for it.
        let compact = match &batch.snapshot {
            Some((_, c)) if *c > self.truncated_index => {
                let term = self
                    .term_inner(*c)
                    .map_err(|e| self.err(&format!("compacting the log to {c}"), e))?;
                Some((*c, term))
            }
            _ => None,
        };

        let mut b = LogBatch::default();
        let put = |b: &mut LogBatch, k: &[u8], v: Vec<u8>| -> Result<(), RaftError> {
            b.put(META, k.to_vec(), v)
                .map_err(|e| RaftError::storage(&self.path, "preparing a write", e))
        };
        let mut truncated = None;
        let mut new_crc = None;
        if let Some(s) = &batch.install {
            let (crc, value) = self.write_snapshot(s)?;
            new_crc = Some(crc);
            // The whole old log goes; the entries continue in a fresh region.
            b.add_command(self.log_region, Command::Clean);
            put(&mut b, K_LOG_REGION, region.to_be_bytes().to_vec())?;
            put(&mut b, K_SNAPSHOT, value)?;
            truncated = Some((s.get_metadata().index, s.get_metadata().term));
        }
        if !batch.entries.is_empty() {
            b.add_entries::<Entries>(region, &batch.entries)
                .map_err(|e| self.err("encoding entries", e))?;
        }
        let members = batch.members.as_deref().unwrap_or(&self.members);
        if let Some((s, _)) = &batch.snapshot {
            let (crc, value) = self.write_snapshot(s)?;
            new_crc = Some(crc);
            put(&mut b, K_SNAPSHOT, value)?;
            // Every live key again, so that older log files hold nothing live.
            put(&mut b, K_RAFT_ID, self.raft_id.to_be_bytes().to_vec())?;
            put(&mut b, K_LOG_REGION, region.to_be_bytes().to_vec())?;
            put(&mut b, K_MEMBERS, encode_members(members))?;
            let (i, t) = compact.unwrap_or((self.truncated_index, self.truncated_term));
            truncated = Some((i, t));
        }
        if let Some((c, term)) = compact {
            b.add_command(region, Command::Compact { index: c + 1 });
            truncated = Some((c, term));
        }
        if let Some((i, t)) = truncated {
            put(&mut b, K_TRUNCATED, encode_truncated(i, t))?;
        }
        if write_hs || batch.snapshot.is_some() {
            let v = hs
                .write_to_bytes()
                .map_err(|e| self.err("encoding the hard state", e))?;
            put(&mut b, K_HARD_STATE, v)?;
        }
        if batch.members.is_some() && batch.snapshot.is_none() {
            put(&mut b, K_MEMBERS, encode_members(members))?;
        }
        self.write(&mut b, must_sync, "writing the log")?;

        // Durable: now the cache.
        if let Some(s) = batch.install {
            self.truncated_index = s.get_metadata().index;
            self.truncated_term = s.get_metadata().term;
            self.entries.clear();
            self.snapshot = s;
            self.log_region = region;
        }
        if let Some(first) = batch.entries.first() {
            let keep = first.index.saturating_sub(self.truncated_index + 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend(batch.entries);
        }
        if let Some((s, _)) = batch.snapshot {
            self.snapshot = s;
        }
        if let Some((c, term)) = compact {
            let drop = (c - self.truncated_index) as usize;
            self.entries.drain(..drop.min(self.entries.len()));
            self.truncated_index = c;
            self.truncated_term = term;
        }
        if let Some(ms) = batch.members {
            self.members = ms;
        }
        self.hard_state = hs.clone();
        self.persisted_hs = hs;
        if let Some(crc) = new_crc {
            self.snapshot_crc = crc;
            self.remove_stale_snapshot_files();
            // Files before the snapshot's batch hold nothing live any more.
            if let Err(e) = self.engine.purge_expired_files() {
                tracing::warn!(path = %self.path.display(), error = %e,
                    "could not purge old raft log files");
            }
        }
        Ok(())
    }
}

fn conf_has(cs: &ConfState, id: u64) -> bool {
    cs.voters.contains(&id)
        || cs.learners.contains(&id)
        || cs.voters_outgoing.contains(&id)
        || cs.learners_next.contains(&id)
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> ::raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.snapshot.get_metadata().get_conf_state().clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> ::raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(StorageError::Compacted.into());
        }
        if high > self.last_index_inner() + 1 || low > high {
            return Err(StorageError::Unavailable.into());
        }
        let first = self.truncated_index + 1;
        let mut ents = self.entries[(low - first) as usize..(high - first) as usize].to_vec();
        ::raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> ::raft::Result<u64> {
        Ok(self.term_inner(idx)?)
    }

    fn first_index(&self) -> ::raft::Result<u64> {
        Ok(self.truncated_index + 1)
    }

    fn last_index(&self) -> ::raft::Result<u64> {
        Ok(self.last_index_inner())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> ::raft::Result<Snapshot> {
        let meta = self.snapshot.get_metadata();
        if meta.index == 0 || meta.index < request_index || !conf_has(meta.get_conf_state(), to) {
            self.snapshot_wanted.set(true);
            return Err(StorageError::SnapshotTemporarilyUnavailable.into());
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("cmd{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn snapshot(index: u64, term: u64, voters: Vec<u64>, data: &[u8]) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().mut_conf_state().voters = voters;
        s.data = data.to_vec().into();
        s
    }

    fn append(s: &mut RaftStorage, ents: Vec<Entry>) {
        s.commit(WriteBatch {
            entries: ents,
            ..Default::default()
        })
        .expect("append");
    }

    fn indexes_terms(s: &RaftStorage, low: u64, high: u64) -> Vec<(u64, u64)> {
        s.entries(low, high, None, GetEntriesContext::empty(false))
            .expect("entries")
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    #[test]
    fn append_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RaftStorage::open(dir.path(), 1).expect("open");
        assert!(!s.is_initialized());
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        append(&mut s, vec![entry(1, 1), entry(2, 1), entry(3, 2)]);
        assert!(s.is_initialized());
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(s.term(0).unwrap(), 0);
        assert!(matches!(
            s.term(4),
            Err(::raft::Error::Store(StorageError::Unavailable))
        ));
        assert_eq!(indexes_terms(&s, 1, 4), vec![(1, 1), (2, 1), (3, 2)]);
        // max_size keeps at least one entry.
        let one = s
            .entries(1, 4, Some(1), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn overwriting_a_conflicting_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RaftStorage::open(dir.path(), 1).expect("open");
        append(
            &mut s,
            vec![entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1)],
        );
        append(&mut s, vec![entry(3, 2)]);
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(indexes_terms(&s, 1, 4), vec![(1, 1), (2, 1), (3, 2)]);
        drop(s);
        // The discarded tail is gone from disk too.
        let s = RaftStorage::open(dir.path(), 1).expect("reopen");
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(indexes_terms(&s, 1, 4), vec![(1, 1), (2, 1), (3, 2)]);
    }

    #[test]
    fn local_snapshot_compacts_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RaftStorage::open(dir.path(), 1).expect("open");
        append(&mut s, (1..=10).map(|i| entry(i, 1 + i / 5)).collect());
        let snap = snapshot(8, 2, vec![1, 2], b"state@8");
        s.commit(WriteBatch {
            snapshot: Some((snap, 6)),
            ..Default::default()
        })
        .expect("snapshot");
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(6).unwrap(), 2);
        assert!(matches!(
            s.term(5),
            Err(::raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(6, 8, None, GetEntriesContext::empty(false)),
            Err(::raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.hard_state().commit, 8);
        let got = s.snapshot(0, 2).expect("snapshot for a member");
        assert_eq!(got.get_metadata().index, 8);
        assert_eq!(&got.data[..], b"state@8");
        // A peer missing from the snapshot's configuration makes us ask for a fresh one.
        assert!(!s.take_snapshot_wanted());
        assert!(s.snapshot(0, 3).is_err());
        assert!(s.take_snapshot_wanted());
        assert!(!s.take_snapshot_wanted());
        // Too old for the request: same.
        assert!(s.snapshot(9, 2).is_err());
        assert!(s.take_snapshot_wanted());
    }

    #[test]
    fn installing_a_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RaftStorage::open(dir.path(), 2).expect("open");
        append(&mut s, vec![entry(1, 1), entry(2, 1)]);
        let snap = snapshot(20, 3, vec![1, 2, 3], b"state@20");
        s.commit(WriteBatch {
            install: Some(snap),
            entries: vec![entry(21, 3)],
            ..Default::default()
        })
        .expect("install");
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 21);
        assert_eq!(s.term(20).unwrap(), 3);
        assert_eq!(s.hard_state().commit, 20);
        assert_eq!(s.hard_state().term, 3);
        let st = s.initial_state().unwrap();
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
    }

    #[test]
    fn restart_reloads_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = RaftStorage::open(dir.path(), 7).expect("open");
            append(&mut s, (1..=6).map(|i| entry(i, 1)).collect());
            let hs = HardState {
                term: 4,
                vote: 7,
                commit: 5,
                ..Default::default()
            };
            s.commit(WriteBatch {
                hard_state: Some(hs),
                snapshot: Some((snapshot(4, 1, vec![7, 8], b"s4"), 3)),
                members: Some(vec![
                    Member {
                        raft_id: 7,
                        addr: "127.0.0.1:1".into(),
                        node_id: "a".into(),
                    },
                    Member {
                        raft_id: 8,
                        addr: "127.0.0.1:2".into(),
                        node_id: "b".into(),
                    },
                ]),
                ..Default::default()
            })
            .expect("commit");
            // A commit-only change is written too (without fsync).
            s.set_commit(6);
            s.commit(WriteBatch::default()).expect("commit index");
        }
        let s = RaftStorage::open(dir.path(), 7).expect("reopen");
        assert!(s.is_initialized());
        assert_eq!(s.first_index().unwrap(), 4);
        assert_eq!(s.last_index().unwrap(), 6);
        assert_eq!(s.term(3).unwrap(), 1);
        let hs = s.hard_state();
        assert_eq!((hs.term, hs.vote, hs.commit), (4, 7, 6));
        assert_eq!(s.snapshot_ref().get_metadata().index, 4);
        assert_eq!(&s.snapshot_ref().data[..], b"s4");
        assert_eq!(s.members().len(), 2);
        assert_eq!(s.members()[1].node_id, "b");
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![7, 8]);
        drop(s);
        // The directory belongs to raft id 7.
        match RaftStorage::open(dir.path(), 9) {
            Err(RaftError::WrongId {
                found: 7,
                expected: 9,
                ..
            }) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened another node's state"),
        }
    }
    #[test]
    fn a_snapshot_from_the_leader_leaves_no_stale_entry_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = RaftStorage::open(dir.path(), 2).expect("open");
            // A log of another history, longer than the snapshot's index.
            append(&mut s, (1..=30).map(|i| entry(i, 1)).collect());
            s.commit(WriteBatch {
                install: Some(snapshot(20, 3, vec![1, 2], b"state@20")),
                ..Default::default()
            })
            .expect("install");
            assert_eq!(s.last_index().unwrap(), 20);
        }
        let mut s = RaftStorage::open(dir.path(), 2).expect("reopen");
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(
            s.last_index().unwrap(),
            20,
            "entries 21..=30 of the old log came back"
        );
        assert_eq!(&s.snapshot_ref().data[..], b"state@20");
        append(&mut s, vec![entry(21, 3), entry(22, 3)]);
        drop(s);
        let s = RaftStorage::open(dir.path(), 2).expect("reopen");
        assert_eq!(indexes_terms(&s, 21, 23), vec![(21, 3), (22, 3)]);
    }

    #[test]
    fn appends_that_would_leave_a_hole_or_rewrite_compacted_entries_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RaftStorage::open(dir.path(), 1).expect("open");
        append(&mut s, (1..=5).map(|i| entry(i, 1)).collect());
        let hole = s.commit(WriteBatch {
            entries: vec![entry(7, 1)],
            ..Default::default()
        });
        assert!(
            matches!(&hole, Err(e) if e.to_string().contains("entry 7 cannot follow a log of entries 1..=5")),
            "{:?}",
            hole.err().map(|e| e.to_string())
        );
        s.commit(WriteBatch {
            snapshot: Some((snapshot(4, 1, vec![1], b"s4"), 4)),
            ..Default::default()
        })
        .expect("snapshot");
        assert!(s
            .commit(WriteBatch {
                entries: vec![entry(3, 2)],
                ..Default::default()
            })
            .is_err());
        // Nothing changed.
        assert_eq!(indexes_terms(&s, 5, 6), vec![(5, 1)]);
    }

    #[test]
    fn a_damaged_snapshot_file_is_an_error_and_stale_ones_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = RaftStorage::open(dir.path(), 1).expect("open");
            append(&mut s, (1..=10).map(|i| entry(i, 1)).collect());
            for at in [4, 8] {
                s.commit(WriteBatch {
                    snapshot: Some((
                        snapshot(at, 1, vec![1], format!("state@{at}").as_bytes()),
                        at,
                    )),
                    ..Default::default()
                })
                .expect("snapshot");
            }
        }
        let files = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(SNAPSHOT_PREFIX))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            files(dir.path()),
            vec![format!(
                "snapshot-{:020}-{:08x}.bin",
                8,
                crc32fast::hash(b"state@8")
            )]
        );
        // A crash after writing a newer snapshot file but before its batch: ignored, removed.
        std::fs::write(snapshot_file(dir.path(), 9, 1), b"orphan").unwrap();
        let s = RaftStorage::open(dir.path(), 1).expect("reopen");
        assert_eq!(&s.snapshot_ref().data[..], b"state@8");
        assert_eq!(files(dir.path()).len(), 1);
        drop(s);
        // The current one damaged: opening fails and says which file.
        std::fs::write(
            snapshot_file(dir.path(), 8, crc32fast::hash(b"state@8")),
            b"state@X",
        )
        .unwrap();
        let err = RaftStorage::open(dir.path(), 1)
            .err()
            .expect("a damaged snapshot");
        let msg = err.to_string();
        assert!(msg.contains("snapshot-") && msg.contains("CRC-32"), "{msg}");
    }

    #[test]
    fn many_snapshots_keep_the_log_small_and_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut big = || noise(&mut x, 64 << 10);
        {
            let mut s = RaftStorage::open(dir.path(), 1).expect("open");
            // 2,000 entries of 64 KiB (125 MiB) with a snapshot every 100: raft-engine's files
            // before each snapshot hold nothing live, and are purged past its threshold.
            for i in 1..=2000u64 {
                let mut e = entry(i, 1);
                e.data = big().into();
                append(&mut s, vec![e]);
                if i % 100 == 0 {
                    s.commit(WriteBatch {
                        snapshot: Some((snapshot(i, 1, vec![1], b"state"), i - 10)),
                        ..Default::default()
                    })
                    .expect("snapshot");
                }
            }
        }
        let used: u64 = std::fs::read_dir(dir.path().join(LOG_DIR))
            .unwrap()
            .flatten()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum();
        assert!(
            used < PURGE_THRESHOLD + 2 * TARGET_FILE_SIZE,
            "the log uses {used} bytes after compactions"
        );
        let s = RaftStorage::open(dir.path(), 1).expect("reopen");
        assert_eq!(s.first_index().unwrap(), 1991);
        assert_eq!(s.last_index().unwrap(), 2000);
        assert_eq!(s.term(1990).unwrap(), 1);
    }

    #[test]
    fn the_state_of_an_older_flotilla_is_imported_once() {
        import_case(false);
        // Before f98408e the snapshot's data was in the meta table.
        import_case(true);
    }

    fn import_case(snapshot_in_meta: bool) {
        use redb::Database;
        let dir = tempfile::tempdir().expect("tempdir");
        let legacy = dir.path().join(legacy_redb::DB_FILE);
        {
            // The layout flotilla wrote before the log moved to raft-engine.
            let db = Database::create(&legacy).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(legacy_redb::META).unwrap();
                meta.insert("raft_id", 5u64.to_be_bytes().as_slice())
                    .unwrap();
                let hs = HardState {
                    term: 3,
                    vote: 5,
                    commit: 7,
                    ..Default::default()
                };
                meta.insert("hard_state", hs.write_to_bytes().unwrap().as_slice())
                    .unwrap();
                let snap = snapshot(4, 2, vec![5, 6], b"old state");
                meta.insert(
                    "snapshot_meta",
                    snap.get_metadata().write_to_bytes().unwrap().as_slice(),
                )
                .unwrap();
                let mut t = [0u8; 16];
                t[..8].copy_from_slice(&4u64.to_be_bytes());
                t[8..].copy_from_slice(&2u64.to_be_bytes());
                meta.insert("truncated", t.as_slice()).unwrap();
                if snapshot_in_meta {
                    meta.insert("snapshot_data", b"old state".as_slice())
                        .unwrap();
                } else {
                    let mut snaps = txn.open_table(legacy_redb::SNAPSHOT).unwrap();
                    snaps
                        .insert("snapshot_data", b"old state".as_slice())
                        .unwrap();
                }
                let mut ents = txn.open_table(legacy_redb::ENTRIES).unwrap();
                for i in 5..=8u64 {
                    let e = entry(i, 3).write_to_bytes().unwrap();
                    ents.insert(i, e.as_slice()).unwrap();
                }
                let mut members = txn.open_table(legacy_redb::MEMBERS).unwrap();
                let m = flotilla_proto::raft::v1::Member {
                    raft_id: 6,
                    addr: "127.0.0.1:9".into(),
                    node_id: "n6".into(),
                }
                .encode_to_vec();
                members.insert(6u64, m.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        // Another raft id: refused, nothing moved.
        assert!(matches!(
            RaftStorage::open(dir.path(), 9),
            Err(RaftError::WrongId {
                found: 5,
                expected: 9,
                ..
            })
        ));
        assert!(legacy.exists());
        for _ in 0..2 {
            let s = RaftStorage::open(dir.path(), 5).expect("open with the old state");
            assert!(s.is_initialized());
            let hs = s.hard_state();
            assert_eq!((hs.term, hs.vote, hs.commit), (3, 5, 7));
            assert_eq!(s.first_index().unwrap(), 5);
            assert_eq!(
                indexes_terms(&s, 5, 9),
                vec![(5, 3), (6, 3), (7, 3), (8, 3)]
            );
            assert_eq!(s.term(4).unwrap(), 2);
            assert_eq!(&s.snapshot_ref().data[..], b"old state");
            assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![5, 6]);
            assert_eq!(s.members().len(), 1);
            assert_eq!(s.members()[0].node_id, "n6");
            assert!(!legacy.exists());
            assert!(dir.path().join("raft.redb.imported").exists());
            // A crash between the import and the rename: set aside at the next start.
            std::fs::copy(dir.path().join("raft.redb.imported"), &legacy).unwrap();
        }
    }
    /// Incompressible bytes (raft-engine compresses large batches): an xorshift stream.
    fn noise(x: &mut u64, len: usize) -> Vec<u8> {
        (0..len / 8)
            .flat_map(|_| {
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                x.to_le_bytes()
            })
            .collect()
    }

    /// The log files raft-engine wrote, oldest first.
    fn log_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(LOG_DIR))
            .unwrap()
            .flatten()
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|e| e == "raftlog"))
            .collect();
        files.sort();
        files
    }

    /// Overwrites 4 bytes at `at` bytes before the end of the written data (the file may be
    /// preallocated with zeros past it).
    fn damage(file: &Path, from_end: usize) {
        let mut b = std::fs::read(file).unwrap();
        let end = b.iter().rposition(|x| *x != 0).expect("data") + 1;
        for x in &mut b[end - from_end..end - from_end + 4] {
            *x ^= 0xff;
        }
        std::fs::write(file, b).unwrap();
    }

    #[test]
    fn a_torn_last_write_is_dropped_and_the_log_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = RaftStorage::open(dir.path(), 1).expect("open");
            for i in 1..=5 {
                append(&mut s, vec![entry(i, 1)]);
            }
        }
        // A crash in the middle of writing entry 5 (never acknowledged: it was not synced).
        let files = log_files(dir.path());
        assert_eq!(files.len(), 1);
        damage(&files[0], 6);
        let mut s = RaftStorage::open(dir.path(), 1).expect("reopen after a torn write");
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(
            indexes_terms(&s, 1, 5),
            vec![(1, 1), (2, 1), (3, 1), (4, 1)]
        );
        append(&mut s, vec![entry(5, 2)]);
        drop(s);
        let s = RaftStorage::open(dir.path(), 1).expect("reopen");
        assert_eq!(indexes_terms(&s, 4, 6), vec![(4, 1), (5, 2)]);
    }

    /// raft-engine (as TiKV runs it) takes damage in the last file for a write cut short by a
    /// crash and truncates it there; damage in an older file is never dropped silently.
    #[test]
    fn damage_in_an_older_log_file_stops_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut x = 0x2545_f491_4f6c_dd1du64;
        {
            let mut s = RaftStorage::open(dir.path(), 1).expect("open");
            // 20 MiB: more than one file.
            for i in 1..=320 {
                let mut e = entry(i, 1);
                e.data = noise(&mut x, 64 << 10).into();
                append(&mut s, vec![e]);
            }
        }
        let files = log_files(dir.path());
        assert!(files.len() >= 2, "{files:?}");
        let len = std::fs::read(&files[0])
            .unwrap()
            .iter()
            .rposition(|x| *x != 0)
            .unwrap();
        damage(&files[0], len / 2);
        let err = RaftStorage::open(dir.path(), 1)
            .err()
            .expect("a damaged log must not open");
        assert!(err.to_string().contains(LOG_DIR), "{err}");
    }
}
