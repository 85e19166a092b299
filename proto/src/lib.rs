//! gRPC protocol definitions for flotilla: generated code (tonic + prost) and pure conversions
//! only, no business logic. `agent::v1` is the node agent API (`flotilla.agent.v1`), `control::v1` the
//! cluster API, its objects and the agents' dispatcher sessions (`flotilla.control.v1`),
//! `raft::v1` the managers' raft transport (`flotilla.raft.v1`).

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

/// The cluster API, the objects of the replicated store, and the dispatcher (agent sessions),
/// package `flotilla.control.v1`.
pub mod control {
    pub mod v1 {
        tonic::include_proto!("flotilla.control.v1");

        macro_rules! into_target {
            ($($t:ident),*) => {$(
                impl From<$t> for store_action::Target {
                    fn from(o: $t) -> store_action::Target {
                        store_action::Target::$t(o)
                    }
                }
            )*};
        }
        into_target!(Cluster, Node, Service, Task, Secret, Config);
    }
}

/// The managers' raft transport, package `flotilla.raft.v1`.
pub mod raft {
    pub mod v1 {
        tonic::include_proto!("flotilla.raft.v1");
    }
}
