//! Handler tests' manager: a store that may miss writes raft already committed, and a fixed view
//! of raft's membership.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use flotilla_proto::control::v1 as pb;

use super::{Ctx, Membership, RaftSummary};
use crate::dispatcher::Dispatcher;
use crate::manager::proposer::{BoxFuture, ProposeError, Proposer};
use crate::store::Store;

/// A manager whose store misses the committed batches in `behind`: they are applied by its read
/// barrier, or before its own next proposal, as raft would.
pub struct Behind {
    pub store: Store,
    pub behind: Mutex<Vec<pb::StoreBatch>>,
    index: AtomicU64,
    pub barriers: AtomicUsize,
}

impl Behind {
    pub fn new(store: Store) -> Behind {
        Behind {
            store,
            behind: Mutex::new(Vec::new()),
            index: AtomicU64::new(0),
            barriers: AtomicUsize::new(0),
        }
    }

    /// Applies `b` now, as a committed write this manager already has.
    pub fn apply(&self, b: pb::StoreBatch) -> Result<u64, ProposeError> {
        let i = self.index.fetch_add(1, Ordering::SeqCst) + 1;
        self.store
            .apply_command(i, &prost::Message::encode_to_vec(&b))
            .map_err(ProposeError::Refused)?;
        Ok(i)
    }

    pub fn barriers(&self) -> usize {
        self.barriers.load(Ordering::SeqCst)
    }

    fn catch_up(&self) -> Result<(), ProposeError> {
        let missed = std::mem::take(&mut *self.behind.lock().unwrap_or_else(|p| p.into_inner()));
        for b in missed {
            self.apply(b)?;
        }
        Ok(())
    }
}

impl Proposer for Behind {
    fn propose(&self, b: pb::StoreBatch) -> BoxFuture<'_, Result<u64, ProposeError>> {
        Box::pin(async move {
            self.catch_up()?;
            self.apply(b)
        })
    }

    fn read_barrier(&self) -> BoxFuture<'_, Result<(), ProposeError>> {
        Box::pin(async {
            self.barriers.fetch_add(1, Ordering::SeqCst);
            self.catch_up()
        })
    }
}

/// Raft as seen by a manager (raft id 1) that leads or follows; membership changes fail.
pub struct Leading(pub bool);

impl Membership for Leading {
    fn summary(&self) -> RaftSummary {
        RaftSummary {
            raft_id: 1,
            leader_raft_id: if self.0 { 1 } else { 2 },
            ..Default::default()
        }
    }
    fn add_member(
        &self,
        _: u64,
        _: String,
        _: String,
    ) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async { Err("not in this test".into()) })
    }
    fn remove_member(&self, _: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Err("not in this test".into()) })
    }
}

/// The handlers' context of manager `m1` over a [`Behind`] store.
pub fn ctx(leader: bool) -> (Arc<Ctx>, Arc<Behind>) {
    let store = Store::new();
    let proposer = Arc::new(Behind::new(store.clone()));
    let dispatcher = Dispatcher::new(
        store.clone(),
        proposer.clone(),
        Arc::new(|_: &pb::Secret| Ok(Vec::new())),
        Arc::new(Vec::new),
    );
    let ctx = Ctx {
        store,
        proposer: proposer.clone(),
        membership: Arc::new(Leading(leader)),
        dispatcher,
        data_key: Arc::new(flotilla_pki::DataKey::generate().expect("data key")),
        node_id: "m1".into(),
        dial: Arc::new(|_: &str| {
            tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy()
        }),
    };
    (Arc::new(ctx), proposer)
}
