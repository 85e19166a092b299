//! One manager of the cluster: the replicated store behind raft, the leader-only loops
//! (orchestrator, scheduler, dispatcher's heartbeat watch), and the servers it exposes.

pub mod loops;
pub mod proposer;
pub mod renew;
pub mod roles;
pub mod run;

/// A new object id: 25 characters of [0-9a-z] (about 129 bits), like swarmkit's.
pub fn random_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    (0..25)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}
