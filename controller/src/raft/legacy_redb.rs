//! Reads the raft state of a manager written by flotilla before the log moved to raft-engine
//! (`<state_dir>/raft.redb`: redb tables of entries, hard state, snapshot, members and raft id),
//! so that [`super::storage::RaftStorage::open`] can import it once instead of starting empty.
//! Read-only: the file is renamed, never changed, by the import.

use std::path::Path;

use ::raft::eraftpb::{Entry, HardState, Snapshot, SnapshotMetadata};
use prost::Message as _;
use protobuf::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::storage::be_u64;
use super::{Member, RaftError};

pub(crate) const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// The file name of the old database inside the raft state directory.
pub(crate) const DB_FILE: &str = "raft.redb";

/// Everything the old database held.
#[derive(Default)]
pub(crate) struct LegacyState {
    pub raft_id: Option<u64>,
    pub hard_state: HardState,
    pub snapshot: Snapshot,
    pub truncated_index: u64,
    pub truncated_term: u64,
    pub entries: Vec<Entry>,
    pub members: Vec<Member>,
}

/// Reads the whole old database at `path`, checking that its log is contiguous.
pub(crate) fn read(path: &Path) -> Result<LegacyState, RaftError> {
    let err = |what: &str, e: &dyn std::fmt::Display| RaftError::storage(path, what, e);
    let db = Database::open(path).map_err(|e| err("opening the old raft database", &e))?;
    let txn = db.begin_read().map_err(|e| err("starting a read", &e))?;
    let mut st = LegacyState::default();
    let meta = txn
        .open_table(META)
        .map_err(|e| err("opening the meta table", &e))?;
    let get = |key: &str| -> Result<Option<Vec<u8>>, RaftError> {
        Ok(meta
            .get(key)
            .map_err(|e| err(&format!("reading {key}"), &e))?
            .map(|v| v.value().to_vec()))
    };
    st.raft_id = get("raft_id")?.and_then(|b| be_u64(&b));
    if let Some(b) = get("hard_state")? {
        st.hard_state =
            HardState::parse_from_bytes(&b).map_err(|e| err("decoding the hard state", &e))?;
    }
    if let Some(b) = get("snapshot_meta")? {
        let m = SnapshotMetadata::parse_from_bytes(&b)
            .map_err(|e| err("decoding the snapshot metadata", &e))?;
        // In its own table since f98408e, in the meta table before.
        let in_table = match txn.open_table(SNAPSHOT) {
            Ok(t) => t
                .get("snapshot_data")
                .map_err(|e| err("reading the snapshot data", &e))?
                .map(|v| v.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(err("opening the snapshot table", &e)),
        };
        let data = match in_table {
            Some(d) => d,
            None => get("snapshot_data")?.ok_or_else(|| {
                err(
                    "reading the snapshot",
                    &format!("the data of the snapshot at {} is missing", m.index),
                )
            })?,
        };
        st.snapshot.set_metadata(m);
        st.snapshot.data = data.into();
    }
    if let Some(b) = get("truncated")? {
        if b.len() != 16 {
            return Err(err("decoding the truncated state", &"not 16 bytes"));
        }
        st.truncated_index = be_u64(&b[..8]).unwrap_or_default();
        st.truncated_term = be_u64(&b[8..]).unwrap_or_default();
    }
    let entries = txn
        .open_table(ENTRIES)
        .map_err(|e| err("opening the entries table", &e))?;
    for item in entries
        .range((st.truncated_index + 1)..)
        .map_err(|e| err("reading the entries", &e))?
    {
        let (k, v) = item.map_err(|e| err("reading an entry", &e))?;
        let e = Entry::parse_from_bytes(v.value())
            .map_err(|e| err(&format!("decoding entry {}", k.value()), &e))?;
        let expected = st.truncated_index + 1 + st.entries.len() as u64;
        if e.index != expected || k.value() != expected {
            return Err(err(
                "checking the log",
                &format!(
                    "found entry {} (key {}) where {expected} was expected",
                    e.index,
                    k.value()
                ),
            ));
        }
        st.entries.push(e);
    }
    let members = txn
        .open_table(MEMBERS)
        .map_err(|e| err("opening the members table", &e))?;
    for item in members.iter().map_err(|e| err("reading the members", &e))? {
        let (_, v) = item.map_err(|e| err("reading a member", &e))?;
        let m = flotilla_proto::raft::v1::Member::decode(v.value())
            .map_err(|e| err("decoding a member", &e))?;
        st.members.push(m.into());
    }
    Ok(st)
}
