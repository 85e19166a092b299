//! gRPC protocol definitions for flotilla: generated code (tonic + prost) and pure conversions
//! only, no business logic. `agent::v1` is the node agent API (`flotilla.agent.v1`); the control
//! API and the raft transport land here with the controller.

/// The node agent API, package `flotilla.agent.v1`.
pub mod agent {
    pub mod v1 {
        tonic::include_proto!("flotilla.agent.v1");

        /// Default path of the agent's unix socket.
        pub const DEFAULT_SOCKET: &str = "/run/flotilla/agent.sock";
        /// API version reported by `System.Version`.
        pub const API_VERSION: &str = "1";
    }
}
