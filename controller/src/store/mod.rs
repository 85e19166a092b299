//! The cluster state machine: objects of `flotilla.control.v1` applied from raft batches.
