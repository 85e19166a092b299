//! flotilla's test lab: real components started by tests and torn down even when a test fails.
pub mod agent;
pub mod cluster;
pub mod executor;
pub mod linearizability;
pub mod network;
pub mod registry;
pub mod runtime;
