//! flotilla control plane: cluster state, scheduling and the CLI. For now it holds the
//! `flotilla` command line for one node (`cli`), which drives a node agent over
//! `flotilla.agent.v1`; see ARCHITECTURE.md for the layout it grows into.

pub mod cli;
