//! The durable raft log: raft-rs's read-only `Storage` over an in-memory cache of everything in
//! `<state_dir>/raft.redb` (entries, hard state, the last snapshot with its metadata, the last
//! known members, and the raft id the directory belongs to).
//!
//! Invariants:
//! - The cache is only changed by [`RaftStorage::commit`], after the redb transaction holding
//!   the same change committed; a batch is one transaction, fsync'd (`Durability::Immediate`)
//!   whenever it carries entries, a snapshot, or a new term or vote. A batch changing only the
//!   commit index or the members is committed without fsync: both are rebuilt from the log.
//! - The log is contiguous: `entries[i].index == truncated_index + 1 + i`; the entry at
//!   `truncated_index` is gone but its term is kept (`truncated_term`) for raft's log matching.
//! - The snapshot's index is at least `truncated_index`, so a follower behind the log can always
//!   be sent the snapshot; `hard_state.commit` is at least the snapshot's index.
//! - The `ConfState` given to raft at start is the snapshot's: the conf changes after it are
//!   replayed with the committed entries, exactly like the state machine's commands.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use ::raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use ::raft::{GetEntriesContext, RaftState, Storage, StorageError};
use prost::Message as _;
use protobuf::Message as _;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Member, RaftError};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");
/// The snapshot's data alone in its table: redb copies a B-tree leaf on every write, and the
/// hard state written with each Ready must not drag a multi-megabyte value along.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const K_RAFT_ID: &str = "raft_id";
const K_HARD_STATE: &str = "hard_state";
const K_SNAPSHOT_META: &str = "snapshot_meta";
const K_SNAPSHOT_DATA: &str = "snapshot_data";
const K_TRUNCATED: &str = "truncated";

/// The file name of the database inside the state directory.
pub(crate) const DB_FILE: &str = "raft.redb";

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
    db: Database,
    path: PathBuf,
    hard_state: HardState,
    /// The hard state as last written, to skip writing an unchanged one.
    persisted_hs: HardState,
    snapshot: Snapshot,
    truncated_index: u64,
    truncated_term: u64,
    entries: Vec<Entry>,
    members: Vec<Member>,
    /// Set when raft asked for a snapshot we could not give (none yet, too old, or one whose
    /// configuration lacks the peer); the ready loop then takes a fresh one.
    snapshot_wanted: Cell<bool>,
}

fn read_meta<'a>(
    table: &'a impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<redb::AccessGuard<'a, &'static [u8]>>, redb::StorageError> {
    table.get(key)
}

impl RaftStorage {
    /// Opens (creating it if needed) the log in `dir` for raft id `raft_id`.
    pub fn open(dir: &Path, raft_id: u64) -> Result<Self, RaftError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| RaftError::storage(dir, "creating the state directory", e))?;
        let path = dir.join(DB_FILE);
        let err = |what: &str, e: &dyn std::fmt::Display| RaftError::storage(&path, what, e);
        let db = Database::create(&path).map_err(|e| err("opening the database", &e))?;

        // Create the tables and record the owner id on first use.
        let txn = db
            .begin_write()
            .map_err(|e| err("starting a transaction", &e))?;
        let stored_id = {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| err("opening the meta table", &e))?;
            txn.open_table(ENTRIES)
                .map_err(|e| err("opening the entries table", &e))?;
            txn.open_table(MEMBERS)
                .map_err(|e| err("opening the members table", &e))?;
            txn.open_table(SNAPSHOT)
                .map_err(|e| err("opening the snapshot table", &e))?;
            let stored = read_meta(&meta, K_RAFT_ID)
                .map_err(|e| err("reading the raft id", &e))?
                .map(|v| decode_u64(v.value()));
            if stored.is_none() {
                meta.insert(K_RAFT_ID, raft_id.to_be_bytes().as_slice())
                    .map_err(|e| err("writing the raft id", &e))?;
            }
            stored
        };
        txn.commit().map_err(|e| err("committing", &e))?;
        if let Some(found) = stored_id.flatten() {
            if found != raft_id {
                return Err(RaftError::WrongId {
                    path,
                    found,
                    expected: raft_id,
                });
            }
        }

        let mut s = RaftStorage {
            db,
            path,
            hard_state: HardState::default(),
            persisted_hs: HardState::default(),
            snapshot: Snapshot::default(),
            truncated_index: 0,
            truncated_term: 0,
            entries: Vec::new(),
            members: Vec::new(),
            snapshot_wanted: Cell::new(false),
        };
        s.load()?;
        Ok(s)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> RaftError {
        RaftError::storage(&self.path, what, e)
    }

    fn load(&mut self) -> Result<(), RaftError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.err("starting a read", e))?;
        let meta = txn
            .open_table(META)
            .map_err(|e| self.err("opening the meta table", e))?;
        let path = self.path.clone();
        let get = |key: &str| -> Result<Option<Vec<u8>>, RaftError> {
            Ok(read_meta(&meta, key)
                .map_err(|e| RaftError::storage(&path, format!("reading {key}"), e))?
                .map(|v| v.value().to_vec()))
        };
        if let Some(b) = get(K_HARD_STATE)? {
            self.hard_state = HardState::parse_from_bytes(&b)
                .map_err(|e| self.err("decoding the hard state", e))?;
        }
        if let Some(b) = get(K_SNAPSHOT_META)? {
            let meta = ::raft::eraftpb::SnapshotMetadata::parse_from_bytes(&b)
                .map_err(|e| self.err("decoding the snapshot metadata", e))?;
            let snap_table = txn
                .open_table(SNAPSHOT)
                .map_err(|e| self.err("opening the snapshot table", e))?;
            let data = read_meta(&snap_table, K_SNAPSHOT_DATA)
                .map_err(|e| self.err("reading the snapshot data", e))?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            self.snapshot.set_metadata(meta);
            self.snapshot.data = data.into();
        }
        if let Some(b) = get(K_TRUNCATED)? {
            if b.len() != 16 {
                return Err(self.err("decoding the truncated state", "not 16 bytes"));
            }
            self.truncated_index = u64::from_be_bytes(b[..8].try_into().unwrap_or_default());
            self.truncated_term = u64::from_be_bytes(b[8..].try_into().unwrap_or_default());
        }
        let entries = txn
            .open_table(ENTRIES)
            .map_err(|e| self.err("opening the entries table", e))?;
        let iter = entries
            .range((self.truncated_index + 1)..)
            .map_err(|e| self.err("reading the entries", e))?;
        for item in iter {
            let (k, v) = item.map_err(|e| self.err("reading an entry", e))?;
            let e = Entry::parse_from_bytes(v.value())
                .map_err(|e| self.err(&format!("decoding entry {}", k.value()), e))?;
            let expected = self.truncated_index + 1 + self.entries.len() as u64;
            if e.index != expected || k.value() != expected {
                return Err(self.err(
                    "checking the log",
                    format!(
                        "found entry {} (key {}) where {expected} was expected",
                        e.index,
                        k.value()
                    ),
                ));
            }
            self.entries.push(e);
        }
        let members = txn
            .open_table(MEMBERS)
            .map_err(|e| self.err("opening the members table", e))?;
        for item in members
            .iter()
            .map_err(|e| self.err("reading the members", e))?
        {
            let (_, v) = item.map_err(|e| self.err("reading a member", e))?;
            let m = flotilla_proto::raft::v1::Member::decode(v.value())
                .map_err(|e| self.err("decoding a member", e))?;
            self.members.push(m.into());
        }
        // The snapshot's entries are committed, whatever the lazily written commit says.
        let snap_index = self.snapshot.get_metadata().index;
        if self.hard_state.commit < snap_index {
            self.hard_state.commit = snap_index;
        }
        self.persisted_hs = self.hard_state.clone();
        Ok(())
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

    /// Persists `batch` in one transaction, then applies it to the cache.
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

        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| self.err("starting a transaction", e))?;
        txn.set_durability(if must_sync {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| self.err("setting the durability", e))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| self.err("opening the meta table", e))?;
            let mut entries = txn
                .open_table(ENTRIES)
                .map_err(|e| self.err("opening the entries table", e))?;
            let mut snap_table = txn
                .open_table(SNAPSHOT)
                .map_err(|e| self.err("opening the snapshot table", e))?;
            let mut put_snapshot = |s: &Snapshot| -> Result<(), RaftError> {
                let m = s
                    .get_metadata()
                    .write_to_bytes()
                    .map_err(|e| self.err("encoding the snapshot metadata", e))?;
                meta.insert(K_SNAPSHOT_META, m.as_slice())
                    .map_err(|e| self.err("writing the snapshot metadata", e))?;
                snap_table
                    .insert(K_SNAPSHOT_DATA, s.get_data())
                    .map_err(|e| self.err("writing the snapshot data", e))?;
                Ok(())
            };
            let mut truncated = None;
            if let Some(s) = &batch.install {
                put_snapshot(s)?;
                entries
                    .retain(|_, _| false)
                    .map_err(|e| self.err("clearing the log", e))?;
                truncated = Some((s.get_metadata().index, s.get_metadata().term));
            }
            if let Some(first) = batch.entries.first() {
                entries
                    .retain_in(first.index.., |_, _| false)
                    .map_err(|e| self.err("truncating the log", e))?;
                for e in &batch.entries {
                    let b = e
                        .write_to_bytes()
                        .map_err(|err| self.err(&format!("encoding entry {}", e.index), err))?;
                    entries
                        .insert(e.index, b.as_slice())
                        .map_err(|err| self.err(&format!("writing entry {}", e.index), err))?;
                }
            }
            if let Some((s, _)) = &batch.snapshot {
                put_snapshot(s)?;
            }
            if let Some((c, term)) = compact {
                entries
                    .retain_in(..=c, |_, _| false)
                    .map_err(|e| self.err("compacting the log", e))?;
                truncated = Some((c, term));
            }
            if let Some((i, t)) = truncated {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&i.to_be_bytes());
                b[8..].copy_from_slice(&t.to_be_bytes());
                meta.insert(K_TRUNCATED, b.as_slice())
                    .map_err(|e| self.err("writing the truncated state", e))?;
            }
            if write_hs {
                let b = hs
                    .write_to_bytes()
                    .map_err(|e| self.err("encoding the hard state", e))?;
                meta.insert(K_HARD_STATE, b.as_slice())
                    .map_err(|e| self.err("writing the hard state", e))?;
            }
            if let Some(ms) = &batch.members {
                let mut table = txn
                    .open_table(MEMBERS)
                    .map_err(|e| self.err("opening the members table", e))?;
                table
                    .retain(|_, _| false)
                    .map_err(|e| self.err("clearing the members", e))?;
                for m in ms {
                    let b = flotilla_proto::raft::v1::Member::from(m.clone()).encode_to_vec();
                    table
                        .insert(m.raft_id, b.as_slice())
                        .map_err(|e| self.err("writing a member", e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.err("committing", e))?;

        // Durable: now the cache.
        if let Some(s) = batch.install {
            self.truncated_index = s.get_metadata().index;
            self.truncated_term = s.get_metadata().term;
            self.entries.clear();
            self.snapshot = s;
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
        Ok(())
    }
}

fn decode_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
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
}
