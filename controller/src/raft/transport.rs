//! Outgoing raft messages: one long-lived client-streaming `Raft.Send` call per peer, fed from
//! a bounded queue. Snapshots go alone in a call of their own, whose answer reports the
//! snapshot's fate to raft.
//!
//! Invariants:
//! - The ready loop never waits on the network: it only `try_send`s into a peer's queue; when the
//!   queue is full (slow or unreachable peer) the message is dropped — raft retransmits.
//! - Messages to one peer keep their order within one stream. A broken stream is reported to
//!   raft as unreachable and reconnected with backoff on the next message; what queued up
//!   meanwhile is dropped.
//! - Every snapshot handed over is reported back (`SnapshotStatus`), or raft would keep the
//!   peer paused forever.
//! - Tasks run on the tokio runtime the node started on and end when their peer is removed or
//!   the transport shuts down.

use std::collections::HashMap;
use std::sync::mpsc::Sender as EventSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::raft::eraftpb::{Message, MessageType};
use flotilla_proto::raft::v1::raft_client::RaftClient;
use flotilla_proto::raft::v1::RaftEnvelope;
use protobuf::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ready_loop::Event;
use super::{Connector, RaftConfig};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Envelopes buffered between a peer's queue and its HTTP/2 stream.
const STREAM_BUFFER: usize = 256;

struct Peer {
    addr: String,
    tx: mpsc::Sender<Message>,
    dropped: u64,
}

pub(crate) struct Transport {
    self_id: u64,
    self_addr: String,
    rt: tokio::runtime::Handle,
    connector: Arc<dyn Connector>,
    events: EventSender<Event>,
    peers: HashMap<u64, Peer>,
    queue: usize,
    snapshot_timeout: Duration,
}

fn envelope(m: &Message, from_addr: &str) -> Option<RaftEnvelope> {
    match m.write_to_bytes() {
        Ok(message) => Some(RaftEnvelope {
            message,
            from_addr: from_addr.to_string(),
        }),
        Err(e) => {
            tracing::error!(error = %e, to = m.to, "cannot encode a raft message");
            None
        }
    }
}

impl Transport {
    pub fn new(
        cfg: &RaftConfig,
        rt: tokio::runtime::Handle,
        connector: Arc<dyn Connector>,
        events: EventSender<Event>,
    ) -> Self {
        Transport {
            self_id: cfg.raft_id,
            self_addr: cfg.listen_addr.clone(),
            rt,
            connector,
            events,
            peers: HashMap::new(),
            queue: cfg.peer_queue,
            snapshot_timeout: cfg.request_timeout.max(Duration::from_secs(60)),
        }
    }

    pub fn addr_of(&self, id: u64) -> Option<&str> {
        self.peers.get(&id).map(|p| p.addr.as_str())
    }

    /// Dials `id` at `addr` from now on (replacing a previous address).
    pub fn set_peer(&mut self, id: u64, addr: &str) {
        if id == self.self_id || addr.is_empty() || self.addr_of(id) == Some(addr) {
            return;
        }
        let (tx, rx) = mpsc::channel(self.queue);
        let task = PeerTask {
            to: id,
            addr: addr.to_string(),
            self_addr: self.self_addr.clone(),
            connector: Arc::clone(&self.connector),
            events: self.events.clone(),
        };
        self.rt.spawn(task.run(rx));
        // Replacing the entry drops the old queue, which ends the old task.
        self.peers.insert(
            id,
            Peer {
                addr: addr.to_string(),
                tx,
                dropped: 0,
            },
        );
    }

    pub fn peer_ids(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }

    pub fn remove_peer(&mut self, id: u64) {
        self.peers.remove(&id);
    }

    pub fn shutdown(&mut self) {
        self.peers.clear();
    }

    pub fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let Some(peer) = self.peers.get_mut(&to) else {
                tracing::debug!(
                    raft_id = self.self_id,
                    to,
                    "no address for raft peer: message dropped"
                );
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    let _ = self.events.send(Event::SnapshotStatus { to, ok: false });
                }
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(m);
                continue;
            }
            match peer.tx.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    peer.dropped += 1;
                    if peer.dropped.is_power_of_two() {
                        tracing::debug!(
                            raft_id = self.self_id,
                            to,
                            dropped = peer.dropped,
                            "raft peer queue full: dropping messages"
                        );
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::debug!(raft_id = self.self_id, to, "raft peer task ended");
                }
            }
        }
    }

    fn send_snapshot(&self, m: Message) {
        let Some(peer) = self.peers.get(&m.to) else {
            return;
        };
        let to = m.to;
        let addr = peer.addr.clone();
        let self_addr = self.self_addr.clone();
        let connector = Arc::clone(&self.connector);
        let events = self.events.clone();
        let timeout = self.snapshot_timeout;
        let index = m.get_snapshot().get_metadata().index;
        self.rt.spawn(async move {
            let ok = match envelope(&m, &self_addr) {
                None => false,
                Some(env) => {
                    let mut client = RaftClient::new(connector.channel(&addr));
                    match tokio::time::timeout(timeout, client.send(tokio_stream::once(env))).await
                    {
                        Ok(Ok(_)) => true,
                        Ok(Err(status)) => {
                            tracing::warn!(to, %addr, index, error = %status, "sending a raft snapshot failed");
                            false
                        }
                        Err(_) => {
                            tracing::warn!(to, %addr, index, "sending a raft snapshot timed out");
                            false
                        }
                    }
                }
            };
            if ok {
                tracing::info!(to, %addr, index, "sent a raft snapshot");
            }
            let _ = events.send(Event::SnapshotStatus { to, ok });
        });
    }
}

struct PeerTask {
    to: u64,
    addr: String,
    self_addr: String,
    connector: Arc<dyn Connector>,
    events: EventSender<Event>,
}

impl PeerTask {
    async fn run(self, mut rx: mpsc::Receiver<Message>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            // Connect lazily, on the first message to send.
            let Some(first) = rx.recv().await else {
                return;
            };
            let started = Instant::now();
            let mut client = RaftClient::new(self.connector.channel(&self.addr));
            let (tx, stream_rx) = mpsc::channel::<RaftEnvelope>(STREAM_BUFFER);
            if let Some(env) = envelope(&first, &self.self_addr) {
                let _ = tx.try_send(env);
            }
            let call = client.send(ReceiverStream::new(stream_rx));
            tokio::pin!(call);
            let outcome = loop {
                tokio::select! {
                    res = &mut call => break res,
                    m = rx.recv() => match m {
                        // Peer removed or transport shut down.
                        None => return,
                        Some(m) => {
                            if let Some(env) = envelope(&m, "") {
                                // A full stream buffer means a slow peer: drop, raft retries.
                                let _ = tx.try_send(env);
                            }
                        }
                    },
                }
            };
            match outcome {
                Ok(_) => {
                    tracing::debug!(to = self.to, addr = %self.addr, "raft stream closed by the peer")
                }
                Err(status) => tracing::debug!(to = self.to, addr = %self.addr, error = %status,
                    "raft stream to peer failed"),
            }
            let _ = self.events.send(Event::Unreachable(self.to));
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            // Stale by now.
            while rx.try_recv().is_ok() {}
        }
    }
}
