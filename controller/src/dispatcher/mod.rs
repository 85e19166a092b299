//! Agent sessions on the leader: registration, heartbeats, assignments, task status.
