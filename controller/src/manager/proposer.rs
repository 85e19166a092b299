//! How the manager's loops and handlers write: a batch goes through raft and comes back applied.
//! Behind a trait so the dispatcher and API can be unit-tested over a local store.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::control::v1::StoreBatch;
use prost::Message;

use crate::store::Store;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a write did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// The store refused the batch (version conflict, name in use, missing object): nothing applied.
    #[error("{0}")]
    Refused(String),
    /// Raft could not commit it (no leader, leadership lost, timeout): it may or may not apply.
    #[error("{0}")]
    Unavailable(String),
}

impl ProposeError {
    /// A version conflict: read again and retry.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ProposeError::Refused(m) if m.contains("changed since it was read"))
    }
}

/// Writes to the replicated store.
pub trait Proposer: Send + Sync + 'static {
    /// Commits and applies `batch`; returns the raft index it was applied at. When it returns
    /// Ok, the local store already shows the change.
    fn propose(&self, batch: StoreBatch) -> BoxFuture<'_, Result<u64, ProposeError>>;
    /// Returns once the local store holds everything committed before the call (linearizable
    /// reads).
    fn read_barrier(&self) -> BoxFuture<'_, Result<(), ProposeError>>;
}

/// A proposer that applies straight to a local store: a one-manager cluster without a log, for
/// unit tests of the loops and handlers.
pub struct LocalProposer {
    store: Store,
    index: AtomicU64,
}

impl LocalProposer {
    pub fn new(store: Store) -> LocalProposer {
        let index = store.read().applied_index;
        LocalProposer {
            store,
            index: AtomicU64::new(index),
        }
    }
}

impl Proposer for LocalProposer {
    fn propose(&self, batch: StoreBatch) -> BoxFuture<'_, Result<u64, ProposeError>> {
        Box::pin(async move {
            let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
            self.store
                .apply_command(index, &batch.encode_to_vec())
                .map_err(ProposeError::Refused)?;
            Ok(index)
        })
    }

    fn read_barrier(&self) -> BoxFuture<'_, Result<(), ProposeError>> {
        Box::pin(async { Ok(()) })
    }
}
