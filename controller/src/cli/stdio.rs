//! One interactive stdio session over a bidirectional gRPC stream, shared by `run`/`start -a`
//! (Containers.Attach) and `exec` (Containers.Exec): our stdin is forwarded when asked (read on a
//! plain thread, because a blocking read cannot be cancelled and must not hold up exit), the
//! terminal size follows SIGWINCH when there is a tty, SIGINT/SIGTERM are proxied to the
//! container with Containers.Kill when there is no raw terminal (docker's sig-proxy), and output
//! goes to our stdout/stderr as it arrives. The session ends with the final ExitStatus.
//!
//! Invariants: the request stream stays open until the session ends (the agent must not read the
//! end of our input as a detach; end of stdin is the explicit `close_stdin`), and the raw-mode
//! guard lives for the whole session, so the terminal is restored on every return, and
//! `term::restore_all` runs before any `process::exit`.

use std::io::{Read, Write};

use flotilla_proto::agent::v1::{ExitStatus, KillContainerRequest, TerminalSize};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use super::client::Agent;
use super::term;

/// Output of either stream type, unified.
pub enum Out {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitStatus),
}

/// Builders for the input messages of either stream type.
pub struct Inputs<I> {
    pub stdin: fn(Vec<u8>) -> I,
    pub close_stdin: fn() -> I,
    pub resize: fn(TerminalSize) -> I,
}

/// What the session does locally.
pub struct Options {
    /// Forward our stdin.
    pub stdin: bool,
    /// The remote process has a tty: follow our window size.
    pub tty: bool,
    /// Put our terminal in raw mode (tty and stdin and our stdin is a terminal).
    pub raw: bool,
    /// Proxy SIGINT/SIGTERM to this container (ignored in raw mode, where ^C is a byte).
    pub sig_proxy: Option<String>,
}

/// How the session ended.
pub enum End {
    /// The process exited (the final message of the stream).
    Exit(ExitStatus),
    /// We were told to stop (SIGTERM/SIGHUP while the terminal was raw); the process keeps
    /// running. Carries our exit code (128 + signal).
    Detached(i32),
}

/// The current terminal size as the proto wants it.
pub fn terminal_size() -> Option<TerminalSize> {
    term::size().map(|(rows, cols)| TerminalSize {
        rows: rows as u32,
        cols: cols as u32,
    })
}

/// Writes container output to our stdout; a closed pipe ends the process quietly.
fn write_stdout(b: &[u8]) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(b).and_then(|_| o.flush()) {
        term::restore_all();
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("Error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

fn write_stderr(b: &[u8]) {
    let mut o = std::io::stderr().lock();
    let _ = o.write_all(b).and_then(|_| o.flush());
}

/// Forwards our stdin on a plain thread until EOF (then `close_stdin`) or until the session is
/// gone. Never joined: the process exits without waiting for a blocked read.
pub fn spawn_stdin<I: Send + 'static>(tx: mpsc::Sender<I>, inputs: &Inputs<I>) {
    let (mk, close) = (inputs.stdin, inputs.close_stdin);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.blocking_send(close());
                    break;
                }
                Ok(n) => {
                    if tx.blocking_send(mk(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "reading stdin");
                    let _ = tx.blocking_send(close());
                    break;
                }
            }
        }
    });
}

async fn recv(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

fn listen(kind: SignalKind, want: bool) -> Option<Signal> {
    if want {
        signal(kind).ok()
    } else {
        None
    }
}

/// Runs the session until the exit status. `first_output` is set once anything arrived from
/// the agent (so callers can tell "failed before the container ran" from later failures).
pub async fn run<I, O>(
    agent: &Agent,
    tx: mpsc::Sender<I>,
    mut rx: tonic::Streaming<O>,
    map: fn(O) -> Option<Out>,
    inputs: Inputs<I>,
    opts: Options,
    first_output: &mut bool,
) -> anyhow::Result<End>
where
    I: Send + 'static,
{
    let _raw = if opts.raw {
        Some(term::RawGuard::enter()?)
    } else {
        None
    };
    if opts.stdin {
        spawn_stdin(tx.clone(), &inputs);
    }
    let proxy = if opts.raw {
        None
    } else {
        opts.sig_proxy.clone()
    };
    let mut winch = listen(SignalKind::window_change(), opts.tty);
    let mut sigint = listen(SignalKind::interrupt(), proxy.is_some());
    let mut sigterm = listen(SignalKind::terminate(), proxy.is_some() || opts.raw);
    let mut sighup = listen(SignalKind::hangup(), opts.raw);
    // Send the size once more: the window may have changed between start and now.
    if opts.tty {
        if let Some(sz) = terminal_size() {
            let _ = tx.send((inputs.resize)(sz)).await;
        }
    }
    let kill = |sig: &'static str| {
        if let Some(c) = &proxy {
            let (agent, c) = (agent.clone(), c.clone());
            tokio::spawn(async move {
                let r = agent
                    .containers()
                    .kill(KillContainerRequest {
                        container: c,
                        signal: sig.into(),
                    })
                    .await;
                if let Err(e) = r {
                    tracing::debug!(error = %e, sig, "forwarding a signal");
                }
            });
        }
    };
    loop {
        tokio::select! {
            msg = rx.message() => match msg {
                Ok(Some(o)) => {
                    *first_output = true;
                    match map(o) {
                        Some(Out::Stdout(b)) => write_stdout(&b),
                        Some(Out::Stderr(b)) => write_stderr(&b),
                        Some(Out::Exit(s)) => return Ok(End::Exit(s)),
                        None => {}
                    }
                }
                Ok(None) => anyhow::bail!("the agent ended the stream without an exit status"),
                Err(s) => return Err(agent.err(s)),
            },
            _ = recv(&mut winch) => {
                if let Some(sz) = terminal_size() {
                    let _ = tx.send((inputs.resize)(sz)).await;
                }
            }
            _ = recv(&mut sigint) => kill("SIGINT"),
            _ = recv(&mut sigterm) => {
                if opts.raw {
                    return Ok(End::Detached(128 + libc::SIGTERM));
                }
                kill("SIGTERM")
            }
            _ = recv(&mut sighup) => return Ok(End::Detached(128 + libc::SIGHUP)),
        }
    }
}
