//! flotilla control plane: the replicated cluster state (`store`, `raft`), the cluster CA
//! (`ca`), the reconcilers (`orchestrator`, `scheduler`), the agents' sessions (`dispatcher`),
//! the cluster API (`api`), and the `flotilla` command line (`cli`). See ARCHITECTURE.md.

pub mod api;
pub use flotilla_pki as ca;
pub mod cli;
pub mod dispatcher;
pub mod manager;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
pub mod store;
