//! `Containers.Exec`: a new process in a running container, through `flotilla-runtime exec` run as
//! a child of the agent (the runtime forks and joins namespaces; the agent is multi-threaded and
//! must not). Stdio is streamed both ways: pipes, or a pty whose slave the process takes as its
//! controlling terminal (`--tty-stdin`) and whose master the agent reads, writes and resizes.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;

use flotilla_proto::agent::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use super::{stream_of, BoxStream};
use crate::engine::Engine;

fn set_winsize(fd: i32, rows: u32, cols: u32) {
    let ws = libc::winsize {
        ws_row: rows as u16,
        ws_col: cols as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; fd is our pty master.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

pub async fn serve(
    engine: Arc<Engine>,
    mut input: Streaming<pb::ExecInput>,
) -> Result<BoxStream<pb::ExecOutput>, Status> {
    use pb::exec_input::Input;
    use pb::exec_output::Output;
    let start = match input.next().await {
        Some(Ok(pb::ExecInput {
            input: Some(Input::Start(s)),
        })) => s,
        Some(Err(e)) => return Err(e),
        _ => {
            return Err(Status::invalid_argument(
                "exec: the first message must be start",
            ))
        }
    };
    let (id, process_file, runtime_root) = engine.exec_prepare(&start)?;
    let mut cmd = tokio::process::Command::new(&engine.cfg.runtime_bin);
    cmd.arg("--root")
        .arg(&runtime_root)
        .arg("--cgroup-root")
        .arg(&engine.cfg.cgroup_root);
    cmd.arg("exec").arg("--process").arg(&process_file);
    if start.detach {
        cmd.arg("--detach");
    }
    let mut master: Option<OwnedFd> = None;
    // A terminal is made by the runtime inside the container (its own devpts, so `tty` names
    // it) and handed to us over a console socket, as runc does.
    let mut console: Option<(tokio::net::UnixListener, std::path::PathBuf)> = None;
    if start.tty && !start.detach {
        // Unix socket paths are short (108 bytes): the run dir, not the container's dir.
        let sock = engine
            .cfg
            .run_dir
            .join("shims")
            .join(format!("exec-{}.sock", crate::engine::random_hex(8)));
        let bound = std::fs::create_dir_all(sock.parent().unwrap_or(&engine.cfg.run_dir))
            .and_then(|_| tokio::net::UnixListener::bind(&sock));
        let l = match bound {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_file(&process_file);
                return Err(Status::internal(format!(
                    "listen on {}: {e}",
                    sock.display()
                )));
            }
        };
        cmd.arg("--tty").arg("--console-socket").arg(&sock);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        console = Some((l, sock));
    } else if start.detach {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
    } else {
        cmd.stdin(if start.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    cmd.arg(&id);
    let mut child = cmd
        .spawn()
        .map_err(|e| Status::internal(format!("run {}: {e}", engine.cfg.runtime_bin.display())))?;
    drop(cmd);
    if let Some((listener, sock)) = console {
        let accepted =
            tokio::time::timeout(std::time::Duration::from_secs(10), listener.accept()).await;
        let _ = std::fs::remove_file(&sock);
        let received = match accepted {
            Ok(Ok((stream, _))) => match stream.into_std() {
                Ok(std_stream) => tokio::task::spawn_blocking(move || {
                    let _ = std_stream.set_nonblocking(false);
                    crate::runtime::console::recv_fd(std_stream.as_raw_fd())
                })
                .await
                .ok()
                .and_then(|r| r.ok()),
                Err(_) => None,
            },
            _ => None,
        };
        match received {
            Some(m) => {
                if let Some(s) = &start.size {
                    set_winsize(m.as_raw_fd(), s.rows, s.cols);
                }
                master = Some(m);
            }
            None => {
                let _ = child.start_kill();
                let mut msg = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        e.read_to_string(&mut msg),
                    )
                    .await;
                }
                let _ = child.wait().await;
                let _ = std::fs::remove_file(&process_file);
                let msg = msg.trim().trim_start_matches("error: ").to_string();
                return Err(Status::failed_precondition(if msg.is_empty() {
                    "exec: the runtime did not hand over a terminal".to_string()
                } else {
                    format!("exec: {msg}")
                }));
            }
        }
    }
    let (tx, out) = tokio::sync::mpsc::channel::<Result<pb::ExecOutput, Status>>(256);
    engine
        .events
        .emit("container", "exec_start", &id, &start.cmd.join(" "), &[]);

    if start.detach {
        let mut stderr = child.stderr.take();
        tokio::spawn(async move {
            let status = child.wait().await;
            let mut msg = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut msg).await;
            }
            let _ = std::fs::remove_file(&process_file);
            let code = status.map(|s| s.code().unwrap_or(128)).unwrap_or(128);
            let st = pb::ExitStatus {
                code,
                oom_killed: false,
                error: if code == 0 {
                    String::new()
                } else {
                    msg.trim().to_string()
                },
            };
            let _ = tx
                .send(Ok(pb::ExecOutput {
                    output: Some(Output::Exit(st)),
                }))
                .await;
        });
        return Ok(stream_of(out));
    }

    // Output pumps.
    let mut pumps = Vec::new();
    let mut master_writer: Option<std::fs::File> = None;
    if master.is_some() {
        // The runtime's own errors (say, a missing executable) come on its stderr.
        if let Some(mut e) = child.stderr.take() {
            let tx2 = tx.clone();
            pumps.push(tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = e.read_to_end(&mut buf).await;
                if !buf.is_empty() {
                    let _ = tx2
                        .send(Ok(pb::ExecOutput {
                            output: Some(Output::Stderr(buf)),
                        }))
                        .await;
                }
            }));
        }
    }
    if let Some(m) = master {
        let reader =
            std::fs::File::from(m.try_clone().map_err(|e| Status::internal(e.to_string()))?);
        master_writer = Some(std::fs::File::from(m));
        let tx2 = tx.clone();
        pumps.push(tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return, // EIO once the last slave closes
                    Ok(n) => {
                        if tx2
                            .blocking_send(Ok(pb::ExecOutput {
                                output: Some(Output::Stdout(buf[..n].to_vec())),
                            }))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }));
    } else {
        for (is_err, pipe) in [
            (
                false,
                child
                    .stdout
                    .take()
                    .map(Box::new)
                    .map(|b| b as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
            (
                true,
                child
                    .stderr
                    .take()
                    .map(Box::new)
                    .map(|b| b as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
        ] {
            let Some(mut pipe) = pipe else { continue };
            let tx2 = tx.clone();
            pumps.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match pipe.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let d = buf[..n].to_vec();
                            let o = if is_err {
                                Output::Stderr(d)
                            } else {
                                Output::Stdout(d)
                            };
                            if tx2
                                .send(Ok(pb::ExecOutput { output: Some(o) }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            }));
        }
    }
    // Input pump.
    let mut child_stdin = child.stdin.take();
    let master_fd = master_writer.as_ref().map(|f| f.as_raw_fd());
    let want_stdin = start.stdin;
    tokio::spawn(async move {
        let mut master_writer = master_writer;
        while let Some(Ok(msg)) = input.next().await {
            match msg.input {
                Some(Input::Stdin(d)) if want_stdin => {
                    if let Some(w) = child_stdin.as_mut() {
                        if w.write_all(&d).await.is_err() {
                            child_stdin = None;
                        }
                    } else if let Some(w) = master_writer.as_mut() {
                        let _ = w.write_all(&d);
                    }
                }
                Some(Input::CloseStdin(true)) => {
                    child_stdin = None;
                    if let Some(w) = master_writer.as_mut() {
                        let _ = w.write_all(&[4]);
                    }
                }
                Some(Input::Resize(s)) => {
                    if let Some(fd) = master_fd {
                        set_winsize(fd, s.rows, s.cols);
                    }
                }
                _ => {}
            }
        }
        drop(child_stdin);
    });
    tokio::spawn(async move {
        let status = child.wait().await;
        for p in pumps {
            // The pty reader ends on EIO when the process and its children are gone; a background
            // child keeping the terminal open must not hold the exit forever.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), p).await;
        }
        let _ = std::fs::remove_file(&process_file);
        let code = match status {
            Ok(s) => s.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)
            }),
            Err(_) => 128,
        };
        let _ = tx
            .send(Ok(pb::ExecOutput {
                output: Some(Output::Exit(pb::ExitStatus {
                    code,
                    oom_killed: false,
                    error: String::new(),
                })),
            }))
            .await;
    });
    Ok(stream_of(out))
}
