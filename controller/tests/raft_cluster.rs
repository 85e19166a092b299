//! Raft clusters of 3 and 5 in-process managers over real loopback gRPC (one tonic server per
//! node on 127.0.0.1, ephemeral ports), replicating a small key-value state machine whose
//! commands are `set k v` and `cas k old new` (a deterministic refusal when `k` is not `old`).
//! Every wait has a deadline; every test cleans its temp dir. The tests take a process-wide lock
//! so their timing (elections in ~1 s) is not disturbed by each other on a small machine.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flotilla_controller::raft::{
    Bootstrap, Connector, RaftConfig, RaftError, RaftNode, StateMachine,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------- the test state machine ----------

#[derive(Default)]
struct Kv {
    map: BTreeMap<String, String>,
    restored_at: u64,
}

impl StateMachine for Kv {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(command).map_err(|e| e.to_string())?;
        let parts: Vec<&str> = text.split(' ').collect();
        match parts.as_slice() {
            ["set", k, v] => {
                let prev = self.map.insert(k.to_string(), v.to_string());
                Ok(prev.unwrap_or_default().into_bytes())
            }
            ["cas", k, old, new] => {
                let cur = self.map.get(*k).cloned().unwrap_or_default();
                if cur != *old {
                    return Err(format!("cas conflict on {k}: is {cur:?}, not {old:?}"));
                }
                self.map.insert(k.to_string(), new.to_string());
                Ok(b"ok".to_vec())
            }
            _ => Err(format!("unknown command {text:?}")),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.map).unwrap_or_default()
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), String> {
        self.map = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        self.restored_at = index;
        Ok(())
    }
}

struct PlainConnector;

impl Connector for PlainConnector {
    fn channel(&self, addr: &str) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("test addresses are valid")
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy()
    }
}

// ---------- the cluster harness ----------

struct TestNode {
    node: RaftNode<Kv>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

struct Cluster {
    dir: tempfile::TempDir,
    addrs: BTreeMap<u64, String>,
    nodes: BTreeMap<u64, TestNode>,
    tweak: fn(&mut RaftConfig),
}

fn default_tweak(_: &mut RaftConfig) {}

async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// Polls `cond` every 20 ms until it holds; panics after `limit`.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not true within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Cluster {
    fn empty(tweak: fn(&mut RaftConfig)) -> Self {
        Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            tweak,
        }
    }

    fn config(&self, id: u64) -> RaftConfig {
        let mut cfg = RaftConfig::new(
            id,
            self.dir.path().join(format!("node-{id}")),
            self.addrs[&id].clone(),
        );
        (self.tweak)(&mut cfg);
        cfg
    }

    async fn bind(&mut self, id: u64) -> TcpListener {
        let addr = self
            .addrs
            .get(&id)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:0".to_string());
        let l = TcpListener::bind(&addr).await.expect("bind 127.0.0.1");
        let local = l.local_addr().expect("local addr").to_string();
        self.addrs.insert(id, local);
        l
    }

    /// Starts node `id` (binding its address first, the same one on a restart).
    async fn start(&mut self, id: u64, bootstrap: Bootstrap) {
        let listener = self.bind(id).await;
        let node = RaftNode::start(
            self.config(id),
            bootstrap,
            Kv::default(),
            Arc::new(PlainConnector),
        )
        .await
        .unwrap_or_else(|e| panic!("start node {id}: {e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = node.service();
        let server = tokio::spawn(async move {
            // Without TCP_NODELAY on the accepted sockets, Nagle delays the leader's answers.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        self.nodes.insert(id, TestNode { node, stop, server });
    }

    /// A cluster of `n` managers: node 1 bootstraps, the others join and are added by the leader.
    async fn new(n: u64, tweak: fn(&mut RaftConfig)) -> Self {
        let mut c = Cluster::empty(tweak);
        c.start(
            1,
            Bootstrap::NewCluster {
                node_id: "node-1".into(),
            },
        )
        .await;
        c.wait_leader(&[1]).await;
        for id in 2..=n {
            c.start(id, Bootstrap::Join).await;
            let addr = c.addrs[&id].clone();
            let members = within(
                Duration::from_secs(15),
                "add member",
                c.node(1).add_member(id, addr, format!("node-{id}")),
            )
            .await
            .unwrap_or_else(|e| panic!("add member {id}: {e}"));
            assert_eq!(members.len() as u64, id);
            c.wait_voter(id).await;
        }
        let all: Vec<u64> = (1..=n).collect();
        c.wait_leader(&all).await;
        c
    }

    /// Waits until the leader made the new member `id` a voter (it enters as a learner).
    async fn wait_voter(&self, id: u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let voter = self.nodes.values().any(|n| {
                let st = n.node.status();
                st.is_leader
                    && st.members.iter().any(|m| m.raft_id == id)
                    && !st.learners.contains(&id)
            });
            if voter {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {id} never became a voter"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn node(&self, id: u64) -> &RaftNode<Kv> {
        &self.nodes[&id].node
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Waits until all of `ids` agree on a leader among them that knows it leads.
    async fn wait_leader(&self, ids: &[u64]) -> u64 {
        let mut found = 0;
        eventually(Duration::from_secs(10), "leader elected", || {
            let views: Vec<_> = ids.iter().map(|i| self.node(*i).status()).collect();
            let l = views[0].leader_id;
            let ok = l != 0
                && ids.contains(&l)
                && views.iter().all(|s| s.leader_id == l)
                && self.node(l).status().is_leader;
            if ok {
                found = l;
            }
            ok
        })
        .await;
        found
    }

    fn followers(&self, leader: u64) -> Vec<u64> {
        self.ids().into_iter().filter(|i| *i != leader).collect()
    }

    async fn kill(&mut self, id: u64) {
        let t = self.nodes.remove(&id).expect("node is running");
        t.node.shutdown().await;
        let _ = t.stop.send(());
        let mut server = t.server;
        if tokio::time::timeout(Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }

    async fn shutdown(mut self) {
        for id in self.ids() {
            self.kill(id).await;
        }
    }

    fn value(&self, id: u64, k: &str) -> Option<String> {
        self.node(id).with_state(|kv| kv.map.get(k).cloned())
    }

    fn map(&self, id: u64) -> BTreeMap<String, String> {
        self.node(id).with_state(|kv| kv.map.clone())
    }

    async fn set(&self, via: u64, k: &str, v: &str) -> u64 {
        let (index, prev) = within(
            Duration::from_secs(15),
            "propose",
            self.node(via).propose(format!("set {k} {v}").into_bytes()),
        )
        .await
        .unwrap_or_else(|e| panic!("set {k} via node {via}: {e}"));
        let _ = prev;
        index
    }

    /// After a read barrier on each, every running node has exactly `expected`.
    async fn converged(&self, expected: &BTreeMap<String, String>) {
        for id in self.ids() {
            self.barrier(id).await;
            assert_eq!(&self.map(id), expected, "state of node {id}");
        }
    }

    /// After a read barrier on each, all running nodes have the same state, which holds every
    /// entry of `acked` (and maybe writes whose outcome the writer did not learn).
    async fn converged_with(&self, acked: &BTreeMap<String, String>) {
        let mut states = Vec::new();
        for id in self.ids() {
            self.barrier(id).await;
            states.push((id, self.map(id)));
        }
        let (first, reference) = &states[0];
        for (id, state) in &states[1..] {
            assert!(state == reference, "nodes {first} and {id} differ");
        }
        let missing: Vec<_> = acked
            .iter()
            .filter(|(k, v)| reference.get(*k) != Some(*v))
            .collect();
        assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    }

    async fn barrier(&self, id: u64) {
        within(
            Duration::from_secs(15),
            "read barrier",
            self.node(id).read_barrier(),
        )
        .await
        .unwrap_or_else(|e| panic!("read barrier on {id}: {e}"));
    }
}

// ---------- scenarios ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_forward() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new(3, default_tweak).await;
    let leader = c.wait_leader(&c.ids()).await;
    let st = c.node(leader).status();
    assert_eq!(st.members.len(), 3);
    assert_eq!(
        st.members
            .iter()
            .map(|m| m.node_id.clone())
            .collect::<Vec<_>>(),
        vec!["node-1", "node-2", "node-3"]
    );

    let mut expected = BTreeMap::new();
    let mut last = 0;
    for (i, id) in [1u64, 2, 3, 1, 2, 3].iter().enumerate() {
        let k = format!("k{i}");
        let v = format!("v{i}-via-{id}");
        let index = c.set(*id, &k, &v).await;
        assert!(index > last, "indexes grow: {index} after {last}");
        last = index;
        // Read-your-writes on the node that proposed, forwarded or not.
        assert_eq!(c.value(*id, &k).as_deref(), Some(v.as_str()));
        assert!(c.node(*id).status().applied_index >= index);
        expected.insert(k, v);
    }

    // The state machine's refusal comes back to the proposer, from a follower too.
    let follower = c.followers(leader)[0];
    let err = c
        .node(follower)
        .propose(b"cas k0 wrong new".to_vec())
        .await
        .expect_err("cas on a wrong value is refused");
    match err {
        RaftError::Refused(m) => assert!(m.contains("cas conflict on k0"), "{m}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    let (_, r) = c
        .node(follower)
        .propose(b"cas k0 v0-via-1 swapped".to_vec())
        .await
        .expect("cas on the right value");
    assert_eq!(r, b"ok");
    expected.insert("k0".into(), "swapped".into());

    // A linearizable read on any node sees every write acknowledged before it.
    c.converged(&expected).await;
    c.shutdown().await;
}

fn slow_ticks(cfg: &mut RaftConfig) {
    // One tick (a heartbeat) per second, elections after 10 s: a follower that waits for the
    // next heartbeat to learn a commit index is plain to see.
    cfg.tick_ms = 1000;
}

/// The leader does not broadcast each commit index while only its own clients write (followers
/// learn it with the next append or heartbeat), but a follower's forwarded writes and reads never
/// wait for a heartbeat: they are answered and applied there at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_learn_commits_at_once_only_when_they_wait_for_them() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new(3, slow_ticks).await;
    let leader = c.wait_leader(&c.ids()).await;
    let follower = c.followers(leader)[0];
    // Let the first heartbeats after the election pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Writes through the followers: each one applied on its follower before it returns, and
    // fast: 10 writes well within one tick (each would wait ~half a tick for a heartbeat if
    // the leader held the commit index back).
    let started = Instant::now();
    for i in 0..10 {
        let index = c.set(follower, &format!("f{i}"), "x").await;
        assert!(c.node(follower).status().applied_index >= index);
        assert_eq!(c.value(follower, &format!("f{i}")).as_deref(), Some("x"));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "10 writes via a follower took {took:?}: did they wait for heartbeats?"
    );
    // A read barrier on a follower: the same.
    let started = Instant::now();
    for _ in 0..10 {
        within(
            Duration::from_secs(5),
            "barrier",
            c.node(follower).read_barrier(),
        )
        .await
        .expect("read barrier");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "10 follower reads took {took:?}"
    );

    // Once no follower forwarded anything for a while (2 s), the leader's own writes reach
    // the followers' state machines with the next heartbeat (at most a tick later), not at once.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut lagged = 0;
    for i in 0..5 {
        let index = c.set(leader, &format!("l{i}"), "y").await;
        // Plenty for a broadcast commit index to be applied; a heartbeat lands in it 5 % of
        // the time.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if c.followers(leader)
            .iter()
            .all(|f| c.node(*f).status().applied_index < index)
        {
            lagged += 1;
        }
    }
    // Only a heartbeat landing between a commit and this check can make a follower current.
    assert!(
        lagged >= 3,
        "followers applied the leader's writes at once {} of 5 times",
        5 - lagged
    );
    let last = c.node(leader).status().applied_index;
    eventually(
        Duration::from_millis(2500),
        "followers catch up within a heartbeat",
        || {
            c.followers(leader)
                .iter()
                .all(|f| c.node(*f).status().applied_index >= last)
        },
    )
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_shows_who_is_reachable() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new(3, default_tweak).await;
    let leader = c.wait_leader(&c.ids()).await;
    let all = c.ids();
    // A follower hears only the leader: it shows the leader's view, every member reachable.
    eventually(
        Duration::from_secs(5),
        "all reachable on every node",
        || {
            all.iter()
                .all(|id| c.node(*id).status().reachable_ids == all)
        },
    )
    .await;
    // One follower dies: the leader and the other follower both stop counting it.
    let followers = c.followers(leader);
    let (dead, alive) = (followers[0], followers[1]);
    c.kill(dead).await;
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != dead).collect();
    eventually(
        Duration::from_secs(5),
        "the dead follower unreachable",
        || {
            [leader, alive]
                .iter()
                .all(|id| c.node(*id).status().reachable_ids == rest)
        },
    )
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_acknowledged_writes() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new(3, default_tweak).await;
    let leader = c.wait_leader(&c.ids()).await;
    let mut expected = BTreeMap::new();
    for i in 0..20 {
        let via = c.ids()[i % 3];
        c.set(via, &format!("a{i}"), &format!("{i}")).await;
        expected.insert(format!("a{i}"), format!("{i}"));
    }

    // Writers keep going through every node while the leader dies; whatever they got
    // acknowledged must survive.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = c
        .ids()
        .into_iter()
        .map(|id| {
            let node = c.node(id).clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = format!("w{id}-{i}");
                    match node.propose(format!("set {k} {i}").into_bytes()).await {
                        Ok(_) => acked.push((k, i.to_string())),
                        Err(RaftError::Stopped { .. }) => break,
                        // Unknown outcome (leader lost, unreachable): not acknowledged.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed_at = Instant::now();
    c.kill(leader).await;
    let survivors = c.ids();
    let new_leader = c.wait_leader(&survivors).await;
    let failover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked_total = 0;
    for w in writers {
        let acked = within(Duration::from_secs(15), "writer", w)
            .await
            .expect("writer task");
        acked_total += acked.len();
        expected.extend(acked);
    }
    assert!(acked_total > 0, "the writers got some writes through");
    eprintln!("failover: new leader {new_leader} after {failover:?}");
    assert_ne!(new_leader, leader);
    assert!(
        failover < Duration::from_secs(4),
        "new leader after {failover:?}"
    );

    // Writes are accepted again, through the new leader and through the other survivor.
    for via in &survivors {
        c.set(*via, &format!("after-{via}"), "yes").await;
        expected.insert(format!("after-{via}"), "yes".into());
    }
    c.converged_with(&expected).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up_from_its_log() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new(3, default_tweak).await;
    let leader = c.wait_leader(&c.ids()).await;
    let mut expected = BTreeMap::new();
    for i in 0..5 {
        c.set(leader, &format!("b{i}"), "before").await;
        expected.insert(format!("b{i}"), "before".to_string());
    }
    let down = c.followers(leader)[0];
    c.kill(down).await;
    for i in 0..10 {
        c.set(leader, &format!("c{i}"), "while-down").await;
        expected.insert(format!("c{i}"), "while-down".to_string());
    }
    c.start(down, Bootstrap::Restart).await;
    // Restarted from its state directory: the snapshot taken at bootstrap plus its log.
    assert_eq!(c.node(down).status().raft_id, down);
    c.converged(&expected).await;
    assert_eq!(
        c.node(down).status().snapshot_index,
        c.node(down).with_state(|kv| kv.restored_at),
        "no new snapshot was needed"
    );
    c.shutdown().await;
}

fn small_snapshots(cfg: &mut RaftConfig) {
    cfg.snapshot_interval = 20;
    cfg.snapshot_catchup_entries = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_through_a_snapshot() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new(3, small_snapshots).await;
    let leader = c.wait_leader(&c.ids()).await;
    let down = c.followers(leader)[0];
    c.kill(down).await;
    let mut expected = BTreeMap::new();
    let mut last = 0;
    for i in 0..100 {
        last = c.set(leader, &format!("s{i}"), &format!("{i}")).await;
        expected.insert(format!("s{i}"), format!("{i}"));
    }
    let leader_snap = c.node(leader).status().snapshot_index;
    assert!(
        leader_snap >= last - 20,
        "leader snapshot at {leader_snap}, last {last}"
    );

    c.start(down, Bootstrap::Restart).await;
    c.converged(&expected).await;
    // It could only catch up from a snapshot: the leader's log starts after its snapshot.
    let restored = c.node(down).with_state(|kv| kv.restored_at);
    assert!(
        restored >= leader_snap,
        "node {down} restored a snapshot at {restored}, leader's is at {leader_snap}"
    );
    // And it keeps working as a member.
    c.set(down, "after", "snapshot").await;
    expected.insert("after".into(), "snapshot".into());
    c.converged(&expected).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_refuses_writes_with_no_leader() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new(3, default_tweak).await;
    let leader = c.wait_leader(&c.ids()).await;
    let index = c.set(leader, "x", "1").await;
    // Keep a follower: it sees the leader vanish. It learns that x=1 is committed with the
    // next heartbeat (the leader does not broadcast commits nobody waits for).
    let survivor = c.followers(leader)[0];
    eventually(Duration::from_secs(2), "the follower applies x=1", || {
        c.node(survivor).status().applied_index >= index
    })
    .await;
    for id in c.ids() {
        if id != survivor {
            c.kill(id).await;
        }
    }
    let n = c.node(survivor).clone();
    eventually(
        Duration::from_secs(5),
        "survivor forgets the leader",
        || n.status().leader_id == 0,
    )
    .await;
    let started = Instant::now();
    let err = within(
        Duration::from_secs(5),
        "propose without quorum",
        n.propose(b"set x 2".to_vec()),
    )
    .await
    .expect_err("no quorum, no write");
    let took = started.elapsed();
    match &err {
        RaftError::NoLeader { reachable, members } => {
            assert_eq!((*reachable, *members), (1, 3));
        }
        other => panic!("expected NoLeader, got {other:?}"),
    }
    assert!(
        err.to_string().contains("1 of 3 managers reachable"),
        "{err}"
    );
    // Two election timeouts (2 s), not a hang.
    assert!(took < Duration::from_secs(3), "failed after {took:?}");
    assert!(took >= Duration::from_millis(1500), "failed after {took:?}");
    // Reads are refused the same way; the local state is still readable.
    assert!(matches!(
        n.read_barrier().await,
        Err(RaftError::NoLeader { .. })
    ));
    assert_eq!(c.value(survivor, "x").as_deref(), Some("1"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_proposals_fail_when_leadership_is_lost() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new(3, default_tweak).await;
    let leader = c.wait_leader(&c.ids()).await;
    c.set(leader, "x", "1").await;
    for f in c.followers(leader) {
        c.kill(f).await;
    }
    let n = c.node(leader).clone();
    assert!(
        n.status().is_leader,
        "still leader right after losing its followers"
    );
    let mut leadership = n.leadership();
    let started = Instant::now();
    let pending: Vec<_> = (0..5)
        .map(|i| {
            let n = n.clone();
            tokio::spawn(async move { n.propose(format!("set p{i} v").into_bytes()).await })
        })
        .collect();
    for p in pending {
        let r = within(Duration::from_secs(5), "pending proposal", p)
            .await
            .expect("task");
        match r {
            Err(RaftError::QuorumLost {
                raft_id,
                reachable,
                members,
                ..
            }) => {
                assert_eq!(raft_id, leader);
                assert_eq!((reachable, members), (1, 3));
            }
            other => panic!("expected QuorumLost, got {other:?}"),
        }
    }
    // check_quorum stepped it down after at most two election timeouts.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    within(
        Duration::from_secs(1),
        "leadership watch",
        leadership.wait_for(|l| !l.is_leader),
    )
    .await
    .expect("watch");
    assert_eq!(
        c.value(leader, "p0"),
        None,
        "nothing was applied without quorum"
    );
    c.shutdown().await;
}

/// A leader whose raft node stops with proposals in flight (a storage error stops it the same
/// way) must not make the followers that forwarded them propose again: those entries may
/// already be replicated and commit under the next leader, and a second copy would apply twice.
/// Each proposal here is a `cas` of a fresh key from empty: applied twice, the second copy is
/// refused, and the writer is told "conflict" about a write that took effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_proposals_in_flight_when_the_leader_stops_apply_once() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new(3, default_tweak).await;
    let leader = c.wait_leader(&c.ids()).await;
    let via = c.followers(leader)[0];
    let n = c.node(via).clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let (n, stop) = (n.clone(), stop.clone());
            tokio::spawn(async move {
                let mut results = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let key = format!("k{w}-{i}");
                    let r = n.propose(format!("cas {key}  v").into_bytes()).await;
                    if r.is_err() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    results.push((key, r));
                }
                results
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The raft node first, its server after: forwarded calls in flight get its answer.
    c.kill(leader).await;
    let rest = c.ids();
    c.wait_leader(&rest).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut twice = Vec::new();
    let (mut ok, mut open) = (0, 0);
    for w in writers {
        for (key, r) in within(Duration::from_secs(20), "writer", w)
            .await
            .expect("task")
        {
            match r {
                Ok(_) => ok += 1,
                Err(RaftError::Refused(m)) => twice.push(format!("{key}: {m}")),
                Err(_) => open += 1,
            }
        }
    }
    eprintln!(
        "{ok} acknowledged, {open} indeterminate, {} refused",
        twice.len()
    );
    assert!(ok > 100, "only {ok} writes went through");
    assert!(
        twice.is_empty(),
        "{} forwarded writes were applied twice ({ok} acknowledged, {open} indeterminate): {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_membership_changes() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new(5, default_tweak).await;
    let leader = c.wait_leader(&c.ids()).await;
    let mut expected = BTreeMap::new();
    for id in c.ids() {
        c.set(id, &format!("m{id}"), "5").await;
        expected.insert(format!("m{id}"), "5".to_string());
    }
    c.converged(&expected).await;

    // Invalid changes are refused with a reason.
    let dup = c
        .node(leader)
        .add_member(9, c.addrs[&leader].clone(), "node-9".into())
        .await
        .expect_err("address in use");
    assert!(matches!(dup, RaftError::Membership(_)), "{dup:?}");
    let missing = c
        .node(c.followers(leader)[0])
        .remove_member(42)
        .await
        .expect_err("not a member");
    assert!(matches!(missing, RaftError::Membership(_)), "{missing:?}");

    // Remove a follower (asked through another follower).
    let fs = c.followers(leader);
    let (gone, asker) = (fs[0], fs[1]);
    let members = c
        .node(asker)
        .remove_member(gone)
        .await
        .expect("remove follower");
    assert_eq!(members.len(), 4);
    assert!(members.iter().all(|m| m.raft_id != gone));
    c.kill(gone).await;
    eventually(Duration::from_secs(5), "members updated everywhere", || {
        c.ids()
            .iter()
            .all(|id| c.node(*id).status().members.len() == 4)
    })
    .await;

    // Remove the leader itself: it hands over and a remaining member leads.
    let members = c
        .node(leader)
        .remove_member(leader)
        .await
        .expect("remove leader");
    assert_eq!(members.len(), 3);
    let rest: Vec<u64> = c.ids().into_iter().filter(|i| *i != leader).collect();
    let new_leader = c.wait_leader(&rest).await;
    assert_ne!(new_leader, leader);
    eventually(Duration::from_secs(5), "old leader steps down", || {
        !c.node(leader).status().is_leader
    })
    .await;
    c.kill(leader).await;
    for id in &rest {
        c.set(*id, &format!("n{id}"), "3").await;
        expected.insert(format!("n{id}"), "3".to_string());
    }
    c.converged(&expected).await;

    // 3 members left: one more failure is tolerated.
    let f = c.followers(new_leader)[0];
    c.kill(f).await;
    c.set(new_leader, "last", "2-of-3").await;
    expected.insert("last".into(), "2-of-3".into());
    c.converged(&expected).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_losing_the_leader_and_a_follower() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new(5, default_tweak).await;
    let leader = c.wait_leader(&c.ids()).await;
    let mut expected = BTreeMap::new();
    for i in 0..10 {
        c.set(c.ids()[i % 5], &format!("f{i}"), "x").await;
        expected.insert(format!("f{i}"), "x".to_string());
    }
    let f = c.followers(leader)[0];
    c.kill(leader).await;
    c.kill(f).await;
    let new_leader = c.wait_leader(&c.ids()).await;
    assert!(![leader, f].contains(&new_leader));
    for id in c.ids() {
        c.set(id, &format!("g{id}"), "y").await;
        expected.insert(format!("g{id}"), "y".to_string());
    }
    c.converged(&expected).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_from_one_survivor_keeps_the_data() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::new(3, small_snapshots).await;
    let leader = c.wait_leader(&c.ids()).await;
    let mut expected = BTreeMap::new();
    // Enough writes for a snapshot and a log after it.
    for i in 0..30 {
        c.set(leader, &format!("d{i}"), &format!("{i}")).await;
        expected.insert(format!("d{i}"), format!("{i}"));
    }
    let survivor = c.followers(leader)[0];
    // Make sure the survivor applied everything before the disaster.
    c.node(survivor).read_barrier().await.expect("barrier");
    for id in c.ids() {
        c.kill(id).await;
    }

    // A plain restart alone cannot elect itself.
    c.start(survivor, Bootstrap::Restart).await;
    assert!(matches!(
        c.node(survivor).propose(b"set z 1".to_vec()).await,
        Err(RaftError::NoLeader { .. })
    ));
    c.kill(survivor).await;

    c.start(survivor, Bootstrap::ForceNewCluster).await;
    let l = c.wait_leader(&[survivor]).await;
    assert_eq!(l, survivor);
    let st = c.node(survivor).status();
    assert_eq!(st.members.len(), 1);
    assert_eq!(st.members[0].raft_id, survivor);
    assert_eq!(st.members[0].node_id, format!("node-{survivor}"));
    assert_eq!(c.map(survivor), expected, "data kept");
    c.set(survivor, "alone", "yes").await;
    expected.insert("alone".into(), "yes".into());
    c.converged(&expected).await;

    // Restarted again, it is still a cluster of one with the data.
    c.kill(survivor).await;
    c.start(survivor, Bootstrap::Restart).await;
    c.wait_leader(&[survivor]).await;
    c.converged(&expected).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_a_missing_state_and_a_foreign_one() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::empty(default_tweak);
    c.bind(1).await;
    let err = RaftNode::start(
        c.config(1),
        Bootstrap::Restart,
        Kv::default(),
        Arc::new(PlainConnector),
    )
    .await
    .err()
    .expect("nothing to restart from");
    assert!(matches!(err, RaftError::NoState { .. }), "{err:?}");
    assert!(err.to_string().contains("node-1"), "{err}");

    c.start(
        1,
        Bootstrap::NewCluster {
            node_id: "node-1".into(),
        },
    )
    .await;
    c.wait_leader(&[1]).await;
    c.kill(1).await;
    let mut other = c.config(1);
    other.raft_id = 2;
    let err = RaftNode::start(
        other,
        Bootstrap::Restart,
        Kv::default(),
        Arc::new(PlainConnector),
    )
    .await
    .err()
    .expect("another node's state");
    assert!(
        matches!(
            err,
            RaftError::WrongId {
                found: 1,
                expected: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

// ---------- benchmark (ignored by default) ----------

struct Figures {
    writes: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn report(mut self, what: &str) {
        self.latencies.sort();
        let pct = |p: f64| {
            let i =
                ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
            self.latencies[i - 1]
        };
        eprintln!(
            "{what}: {} writes in {:.2?} = {:.0} w/s, p50 {:.2?}, p99 {:.2?}",
            self.writes,
            self.elapsed,
            self.writes as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
        );
    }
}

/// `clients` concurrent callers each proposing `per_client` sequential 256-byte writes via `via`.
async fn load(node: &RaftNode<Kv>, clients: usize, per_client: usize, tag: &str) -> Figures {
    let value = "x".repeat(256);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let node = node.clone();
            let value = value.clone();
            let tag = tag.to_string();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let cmd = format!("set {tag}-{c:02}-{i:06} {value}").into_bytes();
                    let t = Instant::now();
                    node.propose(cmd).await.expect("benchmark write");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    Figures {
        writes: clients * per_client,
        elapsed: started.elapsed(),
        latencies,
    }
}

/// Write throughput and latency of a 3-manager cluster with fsync on:
/// `cargo test --release -p flotilla-controller --test raft_cluster bench -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_write_throughput() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new(3, default_tweak).await;
    let leader = c.wait_leader(&c.ids()).await;
    let follower = c.followers(leader)[0];
    // Warm up connections and the log.
    load(c.node(leader), 8, 25, "warm").await;

    load(c.node(leader), 1, 1000, "seq")
        .await
        .report("1 client, at the leader");
    load(c.node(leader), 64, 160, "c64")
        .await
        .report("64 clients, at the leader");
    load(c.node(follower), 1, 500, "fseq")
        .await
        .report("1 client, via a follower");
    load(c.node(follower), 64, 80, "f64")
        .await
        .report("64 clients, via a follower");

    let total = 200 + 1000 + 64 * 160 + 500 + 64 * 80;
    for id in c.ids() {
        c.node(id).read_barrier().await.expect("barrier");
        assert_eq!(c.map(id).len(), total, "node {id} has every write");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_new_manager_stays_a_learner_and_costs_no_quorum() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::new(1, default_tweak).await;
    let leader = c.wait_leader(&c.ids()).await;
    // Nothing listens there: the new member can never catch up.
    let members = c
        .node(leader)
        .add_member(7, "127.0.0.1:1".into(), "node-7".into())
        .await
        .expect("added as a learner");
    assert_eq!(members.len(), 2);
    // Were it a voter, one manager out of two could not commit anything.
    c.set(leader, "still", "writable").await;
    let st = c.node(leader).status();
    assert_eq!(st.learners, vec![7], "{st:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.node(leader).status().learners, vec![7], "never promoted");
    c.set(leader, "later", "too").await;
    let members = c
        .node(leader)
        .remove_member(7)
        .await
        .expect("a learner can be removed");
    assert_eq!(members.len(), 1);
    assert!(c.node(leader).status().learners.is_empty());
    c.shutdown().await;
}
