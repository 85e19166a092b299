//! The agent's session with the managers (the `Dispatcher.Session` stream), as swarmkit's agent
//! keeps it: dial a manager, Register with the node's description and the tasks it runs, then
//! heartbeat, send task status batches, apply assignments and answer log requests until the
//! stream breaks; then dial again with back-off (or straight to the leader a follower named).
//!
//! Invariants: containers keep running whatever happens to the session; status updates are
//! coalesced per task (only the latest matters) and survive reconnects until a session takes
//! them; statuses are only sent once the manager answered with its SessionInfo; one session at a
//! time; `shutdown` ends the loop promptly in every phase.

pub mod backoff;
pub mod batch;
pub mod describe;
pub mod member;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::control::v1 as pb;
use flotilla_proto::control::v1::dispatcher_client::DispatcherClient;
use pb::agent_message::Msg as Out;
use pb::dispatcher_message::Msg as In;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::executor::{Executor, LogStream};
pub use backoff::Backoff;
pub use batch::Pending;
pub use describe::describe_host;

/// Metadata key (trailer) in which a follower names the leader's address.
pub const LEADER_KEY: &str = "flotilla-leader";

/// What the session needs from the task side (the [`Executor`]; a fake in tests).
pub trait TaskRunner: Send + Sync + 'static {
    fn running(&self) -> impl Future<Output = Vec<pb::TaskStatusUpdate>> + Send;
    fn apply(&self, a: pb::Assignments) -> impl Future<Output = ()> + Send;
    fn logs(&self, req: pb::LogRequest) -> LogStream;
}

impl TaskRunner for Executor {
    fn running(&self) -> impl Future<Output = Vec<pb::TaskStatusUpdate>> + Send {
        Executor::running(self)
    }
    fn apply(&self, a: pb::Assignments) -> impl Future<Output = ()> + Send {
        Executor::apply(self, a)
    }
    fn logs(&self, req: pb::LogRequest) -> LogStream {
        Executor::logs(self, req)
    }
}

/// Builds the channel to one manager (`host:port`); the lead supplies the mutual-TLS one. It
/// should be lazy and set HTTP/2 keep-alives: the session notices a dead manager only through
/// the transport.
pub type Connect = Arc<dyn Fn(&str) -> tonic::transport::Channel + Send + Sync>;

pub struct SessionConfig {
    /// Managers to dial (`host:port`), round-robin; replaced by each SessionInfo's list.
    pub managers: Vec<String>,
    pub description: pb::NodeDescription,
    pub connect: Connect,
    pub backoff: Backoff,
    /// Status batches go out this often, or as soon as `batch_max` updates wait.
    pub flush_interval: Duration,
    pub batch_max: usize,
    /// Heartbeat period until the SessionInfo gives one.
    pub heartbeat: Duration,
    /// How long a manager may take to answer Register with a SessionInfo.
    pub establish_timeout: Duration,
    /// Gets the SessionInfo of each established session, and `None` when it ends.
    pub info: Option<watch::Sender<Option<pb::SessionInfo>>>,
}

impl SessionConfig {
    pub fn new(managers: Vec<String>, description: pb::NodeDescription, connect: Connect) -> Self {
        SessionConfig {
            managers,
            description,
            connect,
            backoff: Backoff::default(),
            flush_interval: Duration::from_millis(100),
            batch_max: 100,
            heartbeat: Duration::from_secs(1),
            establish_timeout: Duration::from_secs(10),
            info: None,
        }
    }
}

/// The leader's address a follower gave when it refused the session: FAILED_PRECONDITION with
/// a `flotilla-leader` entry holding `host:port`.
pub fn leader_redirect(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    let v = status.metadata().get(LEADER_KEY)?.to_str().ok()?.trim();
    let (host, port) = v.rsplit_once(':')?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    (port_ok && host_ok).then(|| v.to_string())
}

/// The managers, dialled in turn. Failures are counted per round: the session backs off only
/// once every known manager failed since the last session, so dead managers in the list do not
/// each cost a full back-off before a live one is tried (a new leader waits only so long for
/// its nodes before declaring them down).
#[derive(Debug, Default)]
pub struct Managers {
    list: Vec<String>,
    next: usize,
    failures: usize,
}

impl Managers {
    pub fn new(list: Vec<String>) -> Self {
        Managers {
            list,
            next: 0,
            failures: 0,
        }
    }

    /// Records a failed session; true when every manager failed since the last session (the
    /// round is over: back off before the next one).
    pub fn round_failed(&mut self) -> bool {
        self.failures += 1;
        if self.failures >= self.list.len() {
            self.failures = 0;
            true
        } else {
            false
        }
    }

    /// Records an established session.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
    /// The next address to dial, round-robin.
    pub fn next_addr(&mut self) -> Option<String> {
        if self.list.is_empty() {
            return None;
        }
        let a = self.list[self.next % self.list.len()].clone();
        self.next = (self.next + 1) % self.list.len();
        Some(a)
    }
    /// A new list from a SessionInfo (ignored when empty).
    pub fn update(&mut self, list: &[String]) {
        if list.is_empty() || list == self.list.as_slice() {
            return;
        }
        self.list = list.to_vec();
        self.next %= self.list.len();
        self.failures = 0;
    }
}

/// How one session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Shutdown,
    Redirect(String),
    Failed(String),
}

struct Session<E: TaskRunner> {
    cfg: SessionConfig,
    runner: Arc<E>,
    status_rx: mpsc::Receiver<pb::TaskStatusUpdate>,
    status_open: bool,
    pending: Pending,
    shutdown: CancellationToken,
}

/// Keeps a session with the managers until `shutdown` is cancelled.
pub async fn run_session<E: TaskRunner>(
    cfg: SessionConfig,
    runner: Arc<E>,
    status_rx: mpsc::Receiver<pb::TaskStatusUpdate>,
    shutdown: CancellationToken,
) {
    let mut managers = Managers::new(cfg.managers.clone());
    let mut backoff = cfg.backoff.clone();
    let mut s = Session {
        cfg,
        runner,
        status_rx,
        status_open: true,
        pending: Pending::new(),
        shutdown,
    };
    let mut redirect: Option<String> = None;
    let mut redirects_in_a_row = 0u32;
    loop {
        if s.shutdown.is_cancelled() {
            return;
        }
        let Some(addr) = redirect.take().or_else(|| managers.next_addr()) else {
            warn!("no manager to dial: the session waits for shutdown");
            s.shutdown.cancelled().await;
            return;
        };
        let (end, established) = s.one(&addr, &mut managers).await;
        if let Some(tx) = &s.cfg.info {
            tx.send_replace(None);
        }
        if established {
            backoff.reset();
            managers.succeeded();
            redirects_in_a_row = 0;
        }
        let delay = match end {
            End::Shutdown => return,
            End::Redirect(leader) => {
                info!(manager = %addr, leader = %leader, "the manager is not the leader: dialling the leader");
                redirect = Some(leader);
                redirects_in_a_row += 1;
                // Straight to the leader once; a redirect loop backs off like any failure.
                (redirects_in_a_row > 1).then(|| backoff.next_delay())
            }
            End::Failed(e) => {
                redirects_in_a_row = 0;
                warn!(manager = %addr, error = %e, "dispatcher session ended");
                // The next manager right away (but never in a hot loop); back off per round.
                Some(if managers.round_failed() {
                    backoff.next_delay()
                } else {
                    backoff.initial
                })
            }
        };
        if let Some(d) = delay {
            if !s.idle(d).await {
                return;
            }
        }
    }
}

impl<E: TaskRunner> Session<E> {
    /// Takes status updates while nothing else happens, for `d`; false on shutdown.
    async fn idle(&mut self, d: Duration) -> bool {
        let until = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                u = self.status_rx.recv(), if self.status_open => match u {
                    Some(u) => self.pending.push(u),
                    None => self.status_open = false,
                },
            }
        }
    }

    /// One session with `addr`: (how it ended, whether it got as far as a SessionInfo).
    async fn one(&mut self, addr: &str, managers: &mut Managers) -> (End, bool) {
        let channel = (self.cfg.connect)(addr);
        let mut client = DispatcherClient::new(channel);
        let (out_tx, out_rx) = mpsc::channel::<pb::AgentMessage>(64);
        let running = self.runner.running().await;
        debug!(manager = %addr, tasks = running.len(), "registering");
        let register = pb::AgentMessage {
            msg: Some(Out::Register(pb::Register {
                description: Some(self.cfg.description.clone()),
                running,
            })),
        };
        if out_tx.send(register).await.is_err() {
            return (End::Failed("the outgoing stream closed".into()), false);
        }
        let deadline = tokio::time::Instant::now() + self.cfg.establish_timeout;
        let call = client.session(tokio_stream::wrappers::ReceiverStream::new(out_rx));
        tokio::pin!(call);
        let resp = loop {
            tokio::select! {
                r = &mut call => break r,
                _ = self.shutdown.cancelled() => return (End::Shutdown, false),
                _ = tokio::time::sleep_until(deadline) => {
                    return (End::Failed(format!("{addr} did not answer within {:?}", self.cfg.establish_timeout)), false)
                }
                u = self.status_rx.recv(), if self.status_open => match u {
                    Some(u) => self.pending.push(u),
                    None => self.status_open = false,
                },
            }
        };
        let mut inbound = match resp {
            Ok(r) => r.into_inner(),
            Err(st) => return (end_of(&st), false),
        };

        let mut node_id = String::new();
        let mut established = false;
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + self.cfg.heartbeat,
            self.cfg.heartbeat,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(self.cfg.flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut log_cancel: HashMap<u64, CancellationToken> = HashMap::new();
        let mut log_tasks: tokio::task::JoinSet<u64> = tokio::task::JoinSet::new();
        let end = loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break End::Shutdown,
                _ = tokio::time::sleep_until(deadline), if !established => {
                    break End::Failed(format!("{addr} sent no session info within {:?}", self.cfg.establish_timeout));
                }
                m = inbound.message() => match m {
                    Ok(Some(pb::DispatcherMessage { msg: Some(msg) })) => match msg {
                        In::Session(si) => {
                            info!(manager = %addr, node = %si.node_id, session = %si.session_id, "dispatcher session established");
                            established = true;
                            node_id = si.node_id.clone();
                            if si.heartbeat_period_ms > 0 {
                                let p = Duration::from_millis(si.heartbeat_period_ms);
                                heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
                                heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            }
                            managers.update(&si.manager_addrs);
                            if let Some(tx) = &self.cfg.info {
                                tx.send_replace(Some(si));
                            }
                        }
                        In::Assignments(a) => {
                            debug!(full = a.full, tasks = a.tasks.len(), removed = a.removed_tasks.len(), "assignments");
                            self.runner.apply(a).await;
                        }
                        In::Logs(req) => {
                            let id = req.request_id;
                            let token = CancellationToken::new();
                            if let Some(old) = log_cancel.insert(id, token.clone()) {
                                old.cancel();
                            }
                            let stream = self.runner.logs(req);
                            log_tasks.spawn(forward_logs(id, stream, out_tx.clone(), node_id.clone(), token));
                        }
                        In::CancelLogs(c) => {
                            if let Some(t) = log_cancel.remove(&c.request_id) {
                                t.cancel();
                            }
                        }
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => break End::Failed("the manager closed the session".into()),
                    Err(st) => break end_of(&st),
                },
                u = self.status_rx.recv(), if self.status_open => match u {
                    Some(u) => {
                        self.pending.push(u);
                        if established && self.pending.len() >= self.cfg.batch_max {
                            self.flush(&out_tx);
                        }
                    }
                    None => self.status_open = false,
                },
                _ = flush.tick(), if established => self.flush(&out_tx),
                _ = heartbeat.tick() => {
                    let hb = pb::AgentMessage { msg: Some(Out::Heartbeat(pb::Heartbeat {})) };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = out_tx.try_send(hb) {
                        break End::Failed("the outgoing stream closed".into());
                    }
                }
                Some(done) = log_tasks.join_next() => {
                    if let Ok(id) = done {
                        log_cancel.remove(&id);
                    }
                }
            }
        };
        for t in log_cancel.values() {
            t.cancel();
        }
        (end, established)
    }

    /// Sends what waits, in batches; what the stream cannot take now stays.
    fn flush(&mut self, out: &mpsc::Sender<pb::AgentMessage>) {
        while !self.pending.is_empty() {
            let batch = self.pending.take(self.cfg.batch_max);
            let msg = pb::AgentMessage {
                msg: Some(Out::Status(pb::TaskStatusBatch {
                    updates: batch.clone(),
                })),
            };
            if out.try_send(msg).is_err() {
                self.pending.put_back(batch);
                return;
            }
        }
    }
}

fn end_of(st: &tonic::Status) -> End {
    match leader_redirect(st) {
        Some(leader) => End::Redirect(leader),
        None => End::Failed(format!("{}: {}", st.code(), st.message())),
    }
}

/// Sends the chunks of one log request until it ends or is cancelled; its request id.
async fn forward_logs(
    id: u64,
    mut stream: LogStream,
    out: mpsc::Sender<pb::AgentMessage>,
    node_id: String,
    cancel: CancellationToken,
) -> u64 {
    loop {
        let chunk = tokio::select! {
            _ = cancel.cancelled() => return id,
            c = stream.next() => c,
        };
        let Some(mut chunk) = chunk else {
            return id;
        };
        for l in &mut chunk.lines {
            if l.node_id.is_empty() {
                l.node_id = node_id.clone();
            }
        }
        let end = chunk.end;
        let sent = tokio::select! {
            _ = cancel.cancelled() => return id,
            r = out.send(pb::AgentMessage { msg: Some(Out::Logs(chunk)) }) => r,
        };
        if sent.is_err() || end {
            return id;
        }
    }
}

#[cfg(test)]
mod tests;
