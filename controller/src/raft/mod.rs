//! The replicated log (tikv raft-rs): durable log and snapshots, the ready loop, the transport
//! of raft messages as bytes over `flotilla.raft.v1`, and the proposer that matches proposals
//! to callers.
