//! `Containers`: lifecycle, logs, attach, exec, stats, top.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::agent::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{stream_of, BoxStream};
use crate::engine::logs::{self, Query};
use crate::engine::Engine;
use crate::shim::frame::Frame;
use crate::shim::logfile::Stream as LogStream;

pub struct ContainersService {
    engine: Arc<Engine>,
}

impl ContainersService {
    pub fn new(engine: Arc<Engine>) -> Self {
        ContainersService { engine }
    }
}

#[tonic::async_trait]
impl pb::containers_server::Containers for ContainersService {
    async fn create(
        &self,
        req: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::CreateContainerResponse>, Status> {
        let r = req.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("create: config is required"))?;
        if config.image.is_empty() {
            return Err(Status::invalid_argument("create: an image is required"));
        }
        let (id, name, warnings) = self.engine.create(&r.name, config).await?;
        Ok(Response::new(pb::CreateContainerResponse {
            id,
            name,
            warnings,
        }))
    }

    async fn start(
        &self,
        req: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        Ok(Response::new(
            self.engine.start(&req.into_inner().container).await?,
        ))
    }

    async fn stop(
        &self,
        req: Request<pb::StopContainerRequest>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.engine.stop(&r.container, r.timeout).await?,
        ))
    }

    async fn kill(
        &self,
        req: Request<pb::KillContainerRequest>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.engine.kill(&r.container, &r.signal).await?,
        ))
    }

    async fn restart(
        &self,
        req: Request<pb::StopContainerRequest>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.engine.restart(&r.container, r.timeout).await?,
        ))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::RemoveContainerResponse>, Status> {
        let r = req.into_inner();
        let id = self.engine.remove(&r.container, r.force, r.volumes).await?;
        Ok(Response::new(pb::RemoveContainerResponse { id }))
    }

    async fn list(
        &self,
        req: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(pb::ListContainersResponse {
            containers: self.engine.list(r.all, &r.filters)?,
        }))
    }

    async fn inspect(
        &self,
        req: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        Ok(Response::new(
            self.engine.inspect(&req.into_inner().container)?,
        ))
    }

    async fn wait(
        &self,
        req: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::WaitContainerResponse>, Status> {
        Ok(Response::new(
            self.engine.wait(&req.into_inner().container).await?,
        ))
    }

    type LogsStream = BoxStream<pb::LogEntry>;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let (path, mut changed, active) = self.engine.log_path(&r.container)?;
        let q = Query {
            since: r.since_unix_nano,
            until: r.until_unix_nano,
            tail: r.tail,
            stdout: r.stdout,
            stderr: r.stderr,
        };
        let (tx, out) = tokio::sync::mpsc::channel(256);
        let follow = r.follow;
        tokio::spawn(async move {
            let to_entry = |rec: LogsRecord| pb::LogEntry {
                stream: match rec.stream {
                    LogStream::Stdout => pb::log_entry::Stream::Stdout as i32,
                    LogStream::Stderr => pb::log_entry::Stream::Stderr as i32,
                },
                data: rec.data,
                time_unix_nano: rec.time_unix_nano,
            };
            let p = path.clone();
            let q2 = q.clone();
            let first = tokio::task::spawn_blocking(move || logs::read(&p, &q2)).await;
            let (records, mut offset) = match first {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    let _ = tx
                        .send(Err(Status::internal(format!(
                            "read {}: {e}",
                            path.display()
                        ))))
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            };
            for rec in records {
                if tx.send(Ok(to_entry(rec))).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            let mut q = q;
            q.tail = -1;
            loop {
                let was_active = active();
                let Ok(f) = std::fs::File::open(&path) else {
                    return;
                };
                let (more, off) = match logs::read_from(f, offset, &q) {
                    Ok(x) => x,
                    Err(_) => return,
                };
                offset = off;
                for rec in more {
                    if tx.send(Ok(to_entry(rec))).await.is_err() {
                        return;
                    }
                }
                if !was_active && !active() {
                    // The container is down and its last lines are read; a restart policy may
                    // bring it back, which `changed` tells.
                    if tokio::time::timeout(Duration::from_millis(300), changed.changed())
                        .await
                        .is_err()
                        && !active()
                    {
                        return;
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Response::new(stream_of(out)))
    }

    type AttachStream = BoxStream<pb::AttachOutput>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use pb::attach_input::Input;
        use pb::attach_output::Output;
        let mut input = req.into_inner();
        let start = match input.next().await {
            Some(Ok(pb::AttachInput {
                input: Some(Input::Start(s)),
            })) => s,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "attach: the first message must be start",
                ))
            }
        };
        let attached = self
            .engine
            .attach(&start.container, start.start_container)
            .await;
        let (handle, mut rx, to_shim) = match attached {
            Ok(x) => x,
            // A container that could not start is an exit status for `run` (docker's 126/127),
            // not a transport error.
            Err(e) if start.start_container && e.kind != crate::engine::Kind::NotFound => {
                let code = if e.msg.contains("not found") {
                    127
                } else if e.msg.contains("ermission denied") {
                    126
                } else {
                    125
                };
                let (tx, out) = tokio::sync::mpsc::channel(1);
                let st = pb::ExitStatus {
                    code,
                    oom_killed: false,
                    error: e.msg,
                };
                let _ = tx
                    .send(Ok(pb::AttachOutput {
                        output: Some(Output::Exit(st)),
                    }))
                    .await;
                return Ok(Response::new(stream_of(out)));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(size) = start.size {
            let _ = to_shim.try_send(Frame::Resize {
                rows: size.rows as u16,
                cols: size.cols as u16,
            });
        }
        let forward_stdin = start.stdin;
        tokio::spawn(async move {
            while let Some(Ok(msg)) = input.next().await {
                let f = match msg.input {
                    Some(Input::Stdin(d)) if forward_stdin => Frame::Stdin(d),
                    Some(Input::CloseStdin(true)) if forward_stdin => Frame::CloseStdin,
                    Some(Input::Resize(s)) => Frame::Resize {
                        rows: s.rows as u16,
                        cols: s.cols as u16,
                    },
                    _ => continue,
                };
                if to_shim.send(f).await.is_err() {
                    return;
                }
            }
            if forward_stdin {
                let _ = to_shim.send(Frame::CloseStdin).await;
            }
        });
        let (tx, out) = tokio::sync::mpsc::channel(256);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            loop {
                let msg = match rx.recv().await {
                    Ok(Frame::Stdout(d)) => Output::Stdout(d),
                    Ok(Frame::Stderr(d)) => Output::Stderr(d),
                    Ok(Frame::Exit { .. })
                    | Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(id = %handle.id(), missed = n, "an attached client fell behind; output skipped");
                        continue;
                    }
                };
                if tx
                    .send(Ok(pb::AttachOutput { output: Some(msg) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let st = engine.exit_status(&handle).await;
            let _ = tx
                .send(Ok(pb::AttachOutput {
                    output: Some(Output::Exit(st)),
                }))
                .await;
        });
        Ok(Response::new(stream_of(out)))
    }

    type ExecStream = BoxStream<pb::ExecOutput>;

    async fn exec(
        &self,
        req: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        super::exec::serve(self.engine.clone(), req.into_inner())
            .await
            .map(Response::new)
    }

    type StatsStream = BoxStream<pb::ContainerStats>;

    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<Self::StatsStream>, Status> {
        let r = req.into_inner();
        if !r.container.is_empty() {
            self.engine.stats(&r.container)?;
        }
        let (tx, out) = tokio::sync::mpsc::channel(64);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            loop {
                let ids = if r.container.is_empty() {
                    engine.running_ids()
                } else {
                    vec![r.container.clone()]
                };
                for id in ids {
                    match engine.stats(&id) {
                        Ok(s) => {
                            if tx.send(Ok(s)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) if !r.container.is_empty() => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                        Err(_) => {}
                    }
                }
                if !r.stream {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Response::new(stream_of(out)))
    }

    async fn top(
        &self,
        req: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::TopResponse>, Status> {
        Ok(Response::new(
            self.engine.top(&req.into_inner().container).await?,
        ))
    }

    async fn pause(
        &self,
        req: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        Ok(Response::new(
            self.engine.pause(&req.into_inner().container, true).await?,
        ))
    }

    async fn unpause(
        &self,
        req: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        Ok(Response::new(
            self.engine
                .pause(&req.into_inner().container, false)
                .await?,
        ))
    }
}

type LogsRecord = crate::shim::logfile::Record;
