//! flotilla control plane: cluster state, scheduling and the CLI. Empty until the controller issue; see ARCHITECTURE.md for the layout it grows into.
