//! The session loop against fake dispatchers on loopback (a follower that redirects, a leader
//! the test drives message by message), with a fake task runner.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use flotilla_proto::control::v1::dispatcher_server::{Dispatcher, DispatcherServer};
use tokio_stream::StreamExt;

use super::*;

type OutRx = mpsc::Receiver<Result<pb::DispatcherMessage, tonic::Status>>;

struct FakeDispatcher {
    /// A follower: refuses every session, naming this leader.
    leader: Option<String>,
    /// Outgoing messages of the next sessions, one receiver per session.
    sessions: Mutex<VecDeque<OutRx>>,
    inbound: mpsc::UnboundedSender<(usize, pb::AgentMessage)>,
    count: AtomicUsize,
}

#[tonic::async_trait]
impl Dispatcher for FakeDispatcher {
    type SessionStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::DispatcherMessage, tonic::Status>>;

    async fn session(
        &self,
        req: tonic::Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
        if let Some(l) = &self.leader {
            let mut st = tonic::Status::failed_precondition("not the leader");
            st.metadata_mut()
                .insert(LEADER_KEY, l.parse().expect("metadata value"));
            return Err(st);
        }
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        let out = self
            .sessions
            .lock()
            .expect("lock")
            .pop_front()
            .ok_or_else(|| tonic::Status::unavailable("no session prepared"))?;
        let mut input = req.into_inner();
        let tx = self.inbound.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = input.next().await {
                if tx.send((n, m)).is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(out),
        ))
    }
}

async fn serve(d: FakeDispatcher) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(DispatcherServer::new(d))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await;
    });
    addr
}

#[derive(Default)]
struct FakeRunner {
    applied: Mutex<Vec<pb::Assignments>>,
}

impl TaskRunner for FakeRunner {
    fn running(&self) -> impl Future<Output = Vec<pb::TaskStatusUpdate>> + Send {
        std::future::ready(vec![up("t0", pb::TaskState::Running)])
    }
    fn apply(&self, a: pb::Assignments) -> impl Future<Output = ()> + Send {
        self.applied.lock().expect("lock").push(a);
        std::future::ready(())
    }
    fn logs(&self, req: pb::LogRequest) -> LogStream {
        let (tx, rx) = mpsc::channel(4);
        let line = pb::LogLine {
            task_id: req.task_ids.first().cloned().unwrap_or_default(),
            stream: "stdout".into(),
            data: b"hello\n".to_vec(),
            ..Default::default()
        };
        let _ = tx.try_send(pb::LogChunk {
            request_id: req.request_id,
            lines: vec![line],
            ..Default::default()
        });
        let _ = tx.try_send(pb::LogChunk {
            request_id: req.request_id,
            end: true,
            ..Default::default()
        });
        LogStream::from_receiver(rx)
    }
}

fn up(id: &str, state: pb::TaskState) -> pb::TaskStatusUpdate {
    pb::TaskStatusUpdate {
        task_id: id.into(),
        status: Some(pb::TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
    }
}

/// The next message of kind `want` from session `n` (others are skipped: heartbeats come any
/// time).
async fn expect(
    rx: &mut mpsc::UnboundedReceiver<(usize, pb::AgentMessage)>,
    n: usize,
    want: fn(&Out) -> bool,
) -> Out {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("a message from the agent in time")
            .expect("inbound open");
        if got.0 != n {
            continue;
        }
        if let Some(m) = got.1.msg {
            if want(&m) {
                return m;
            }
        }
    }
}

fn session_info(node: &str, leader: &str) -> Result<pb::DispatcherMessage, tonic::Status> {
    Ok(pb::DispatcherMessage {
        msg: Some(In::Session(pb::SessionInfo {
            session_id: "s".into(),
            node_id: node.into(),
            heartbeat_period_ms: 50,
            manager_addrs: vec![leader.into()],
            role: 0,
        })),
    })
}

#[tokio::test]
async fn redirect_register_status_assignments_logs_and_reconnect() {
    let (in_tx, mut inbound) = mpsc::unbounded_channel();
    let (o0_tx, o0) = mpsc::channel(16);
    let (o1_tx, o1) = mpsc::channel(16);
    let (_o2_tx, o2) = mpsc::channel(16);
    let leader = serve(FakeDispatcher {
        leader: None,
        sessions: Mutex::new([o0, o1, o2].into()),
        inbound: in_tx.clone(),
        count: AtomicUsize::new(0),
    })
    .await;
    let follower = serve(FakeDispatcher {
        leader: Some(leader.clone()),
        sessions: Mutex::new(VecDeque::new()),
        inbound: in_tx,
        count: AtomicUsize::new(0),
    })
    .await;

    let connect: Connect = Arc::new(|addr: &str| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy()
    });
    let mut cfg = SessionConfig::new(
        vec![follower.clone()],
        describe::describe("n1", "x86_64", 1, "", HashMap::new()),
        connect,
    );
    cfg.flush_interval = Duration::from_millis(20);
    let (info_tx, mut info_rx) = watch::channel(None);
    cfg.info = Some(info_tx);
    let runner = Arc::new(FakeRunner::default());
    let (status_tx, status_rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    // A status from before any session: kept until a manager takes it.
    status_tx
        .send(up("t1", pb::TaskState::Running))
        .await
        .expect("send");
    let session = tokio::spawn(run_session(
        cfg,
        runner.clone(),
        status_rx,
        shutdown.clone(),
    ));

    // The follower redirects; the leader gets the Register.
    let Out::Register(reg) = expect(&mut inbound, 0, |m| matches!(m, Out::Register(_))).await
    else {
        unreachable!()
    };
    assert_eq!(reg.description.expect("description").hostname, "n1");
    assert_eq!(reg.running.len(), 1);
    assert_eq!(reg.running[0].task_id, "t0");

    // Nothing but heartbeats before the SessionInfo.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok((_, m)) = inbound.try_recv() {
        assert!(
            matches!(m.msg, Some(Out::Heartbeat(_))),
            "before SessionInfo: {m:?}"
        );
    }
    o0_tx
        .send(session_info("node-1", &leader))
        .await
        .expect("send");
    let Out::Status(b) = expect(&mut inbound, 0, |m| matches!(m, Out::Status(_))).await else {
        unreachable!()
    };
    assert_eq!(b.updates.len(), 1);
    assert_eq!(b.updates[0].task_id, "t1");
    tokio::time::timeout(Duration::from_secs(5), info_rx.wait_for(|i| i.is_some()))
        .await
        .expect("session info published")
        .expect("watch");
    expect(&mut inbound, 0, |m| matches!(m, Out::Heartbeat(_))).await;

    // Assignments reach the runner.
    o0_tx
        .send(Ok(pb::DispatcherMessage {
            msg: Some(In::Assignments(pb::Assignments {
                full: true,
                ..Default::default()
            })),
        }))
        .await
        .expect("send");
    // Logs: the lines carry the node id, then the end.
    o0_tx
        .send(Ok(pb::DispatcherMessage {
            msg: Some(In::Logs(pb::LogRequest {
                request_id: 7,
                task_ids: vec!["t1".into()],
                ..Default::default()
            })),
        }))
        .await
        .expect("send");
    let Out::Logs(c) = expect(&mut inbound, 0, |m| matches!(m, Out::Logs(_))).await else {
        unreachable!()
    };
    assert_eq!(c.request_id, 7);
    assert_eq!(c.lines[0].node_id, "node-1");
    assert_eq!(c.lines[0].data, b"hello\n");
    let Out::Logs(c) = expect(&mut inbound, 0, |m| matches!(m, Out::Logs(_))).await else {
        unreachable!()
    };
    assert!(c.end);
    assert_eq!(runner.applied.lock().expect("lock").len(), 1);

    // The session breaks; a status made meanwhile goes out on the next one.
    o0_tx
        .send(Err(tonic::Status::unavailable("going away")))
        .await
        .expect("send");
    tokio::time::timeout(Duration::from_secs(5), info_rx.wait_for(|i| i.is_none()))
        .await
        .expect("session end published")
        .expect("watch");
    status_tx
        .send(up("t2", pb::TaskState::Failed))
        .await
        .expect("send");
    expect(&mut inbound, 1, |m| matches!(m, Out::Register(_))).await;
    o1_tx
        .send(session_info("node-1", &leader))
        .await
        .expect("send");
    let Out::Status(b) = expect(&mut inbound, 1, |m| matches!(m, Out::Status(_))).await else {
        unreachable!()
    };
    assert_eq!(b.updates[0].task_id, "t2");

    // A mid-stream FAILED_PRECONDITION naming the leader: dialled again at once.
    let mut st = tonic::Status::failed_precondition("leadership moved");
    st.metadata_mut()
        .insert(LEADER_KEY, leader.parse().expect("value"));
    let t = tokio::time::Instant::now();
    o1_tx.send(Err(st)).await.expect("send");
    expect(&mut inbound, 2, |m| matches!(m, Out::Register(_))).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), session)
        .await
        .expect("the session loop ends on shutdown")
        .expect("join");
}

#[test]
fn leader_redirects_are_parsed_from_failed_precondition_only() {
    let with = |code: tonic::Code, v: &str| {
        let mut st = tonic::Status::new(code, "x");
        st.metadata_mut()
            .insert(LEADER_KEY, v.parse().expect("value"));
        st
    };
    assert_eq!(
        leader_redirect(&with(tonic::Code::FailedPrecondition, "10.0.0.2:4242")),
        Some("10.0.0.2:4242".into())
    );
    assert_eq!(
        leader_redirect(&with(tonic::Code::FailedPrecondition, " mgr-1.lab:4242 ")),
        Some("mgr-1.lab:4242".into())
    );
    assert_eq!(
        leader_redirect(&with(tonic::Code::FailedPrecondition, "[fd00::2]:4242")),
        Some("[fd00::2]:4242".into())
    );
    assert_eq!(
        leader_redirect(&with(tonic::Code::Unavailable, "10.0.0.2:4242")),
        None
    );
    for bad in ["10.0.0.2", "10.0.0.2:0", ":4242", "host:port", "a b:1"] {
        assert_eq!(
            leader_redirect(&with(tonic::Code::FailedPrecondition, bad)),
            None,
            "{bad}"
        );
    }
    assert_eq!(
        leader_redirect(&tonic::Status::failed_precondition("no trailer")),
        None
    );
}

#[test]
fn managers_rotate_and_follow_the_session_info() {
    let mut m = Managers::new(vec!["a:1".into(), "b:1".into()]);
    assert_eq!(m.next_addr().as_deref(), Some("a:1"));
    assert_eq!(m.next_addr().as_deref(), Some("b:1"));
    assert_eq!(m.next_addr().as_deref(), Some("a:1"));
    m.update(&["c:1".into()]);
    assert_eq!(m.next_addr().as_deref(), Some("c:1"));
    m.update(&[]);
    assert_eq!(m.next_addr().as_deref(), Some("c:1"));
    assert_eq!(Managers::new(Vec::new()).next_addr(), None);
}

#[test]
fn managers_back_off_once_per_failed_round() {
    let mut m = Managers::new(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
    assert_eq!(
        (m.round_failed(), m.round_failed(), m.round_failed()),
        (false, false, true),
        "every manager tried before backing off"
    );
    assert!(!m.round_failed(), "a new round");
    m.succeeded();
    assert_eq!((m.round_failed(), m.round_failed()), (false, false));
    m.update(&["d:1".into()]);
    assert!(m.round_failed(), "one manager: each failure is a round");
    assert!(Managers::new(Vec::new()).round_failed());
}
