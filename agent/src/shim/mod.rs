//! The per-container supervisor (`flotilla-shim`), like containerd's shim or podman's conmon.
//!
//! The agent starts one shim per container run. The shim daemonizes (double fork + setsid, so it
//! survives the agent stopping, crashing or being upgraded), creates the container through the
//! runtime library and becomes the parent of its init. From then on it owns the container's stdio:
//! it appends every output line to the container's log file (CRI format, see [`logfile`]) and fans
//! it out to clients of its unix socket (the agent), forwards stdin and terminal resizes from them,
//! and when the init exits it drains the output, deletes the runtime state and the cgroup, and
//! writes `exit.json` atomically before it goes. So exit codes and logs produced while the agent is
//! down are not lost: the agent re-attaches to the socket when it comes back, or finds `exit.json`.
//!
//! Invariants: the shim is single-threaded (the runtime forks from it); `exit.json` exists only
//! once the runtime state and cgroup are gone; the exit frame is the last frame a client gets.
//!
//! Protocol with the agent: the agent writes [`ShimConfig`] to `<dir>/shim.json` and runs
//! `flotilla-shim <dir>/shim.json`. The first process prints one line on stdout, `ok <pid>` once the
//! container is created (and started, unless `wait_start`) or `err <message>`, and exits 0/1.

pub mod frame;
pub mod logfile;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::runtime::container::{self, CreateOptions};
use frame::{Decoder, Frame};
use logfile::{LineSplitter, Stream};

/// Stdin bytes the shim buffers for a container that reads slower than its clients send; beyond
/// this, clients are not read until the container catches up.
const MAX_PENDING_STDIN: usize = 1 << 20;

/// What the agent tells a shim (`shim.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime_root: PathBuf,
    pub cgroup_root: PathBuf,
    pub log_path: PathBuf,
    pub exit_path: PathBuf,
    pub socket_path: PathBuf,
    /// The container has a terminal (`process.terminal` in its config).
    pub tty: bool,
    /// Keep the container's stdin open for clients.
    pub stdin: bool,
    /// Create, then wait for a `Start` frame before starting (so an attached client misses nothing).
    pub wait_start: bool,
    /// Initial terminal size (rows, cols).
    #[serde(default)]
    pub size: Option<(u16, u16)>,
}

/// What `exit.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// Shell-style code: the exit status, or 128 + signal.
    pub code: i32,
    pub oom_killed: bool,
    pub finished_unix_nano: i64,
    /// Set when the container failed to start (then `code` is 128 or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ExitRecord {
    pub fn load(path: &Path) -> io::Result<Option<ExitRecord>> {
        match fs::read(path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Writes `data` to `path` through a temp file, fsynced, renamed, directory fsynced.
pub fn write_file_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Unique per writer: two writers never share (and truncate) one temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

/// The shim binary's main: returns the process exit code.
pub fn main_with_args(args: &[String]) -> i32 {
    let Some(config_path) = args.get(1) else {
        eprintln!("usage: flotilla-shim SHIM_JSON (started by flotilla-agent, not by hand)");
        return 2;
    };
    let cfg: ShimConfig = match fs::read(config_path)
        .map_err(|e| e.to_string())
        .and_then(|d| serde_json::from_slice(&d).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            println!("err read {config_path}: {e}");
            return 1;
        }
    };
    let (ready_r, ready_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            println!("err pipe: {e}");
            return 1;
        }
    };
    // SAFETY: the shim is single-threaded here; the child only runs our code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            println!("err fork: {e}");
            1
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(ready_w);
            // One line, not EOF: a container waiting for `Start` holds a copy of the write end
            // until it execs.
            let mut msg = String::new();
            let _ = io::BufRead::read_line(&mut io::BufReader::new(File::from(ready_r)), &mut msg);
            let msg = msg.trim();
            if msg.is_empty() {
                println!("err the shim died before the container was created");
                return 1;
            }
            println!("{msg}");
            i32::from(!msg.starts_with("ok "))
        }
        Ok(ForkResult::Child) => {
            drop(ready_r);
            let _ = nix::unistd::setsid();
            let mut ready = Some(File::from(ready_w));
            let code = match Shim::run(&cfg, &mut ready) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = fs::remove_file(&cfg.socket_path);
                    if let Some(mut r) = ready.take() {
                        let _ = writeln!(r, "err {e}");
                    }
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

struct Client {
    stream: UnixStream,
    decoder: Decoder,
}

struct Output {
    fd: OwnedFd,
    stream: Stream,
    splitter: LineSplitter,
    open: bool,
}

struct Shim<'a> {
    cfg: &'a ShimConfig,
    listener: UnixListener,
    clients: Vec<Client>,
    log: File,
    outputs: Vec<Output>,
    /// Our end of the container's stdin (pipe write end or the pty master), non-blocking.
    stdin: Option<File>,
    /// Input not yet accepted by the container (it reads slower than clients send).
    pending: Vec<u8>,
    /// Close stdin (or send ^D on a terminal) once `pending` is written.
    close_pending: bool,
    pty: Option<OwnedFd>,
    pid: i32,
    started: bool,
}

fn err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl<'a> Shim<'a> {
    fn run(cfg: &'a ShimConfig, ready: &mut Option<File>) -> io::Result<()> {
        // SIGCHLD through a signalfd; SIGPIPE ignored (clients may vanish).
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(|e| err("block SIGCHLD", e))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| err("signalfd", e))?;
        // SAFETY: setting SIGPIPE to SIG_IGN has no handler code.
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) }
            .map_err(|e| err("ignore SIGPIPE", e))?;

        let _ = fs::remove_file(&cfg.socket_path);
        if let Some(d) = cfg.socket_path.parent() {
            fs::create_dir_all(d).map_err(|e| err(&format!("create {}", d.display()), e))?;
        }
        let listener = UnixListener::bind(&cfg.socket_path)
            .map_err(|e| err(&format!("listen on {}", cfg.socket_path.display()), e))?;
        listener.set_nonblocking(true)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC)
            .open(&cfg.log_path)
            .map_err(|e| err(&format!("open {}", cfg.log_path.display()), e))?;

        let devnull = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| err("open /dev/null", e))?;
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| err("pipe", e));
        let mut outputs = Vec::new();
        let mut stdin = None;
        let mut console_peer = None;
        let mut console = None;
        if cfg.tty {
            let (a, b) = nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(|e| err("socketpair", e))?;
            console = Some(a);
            console_peer = Some(b);
            for fd in 0..3 {
                dup2(devnull.as_raw_fd(), fd)?;
            }
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            if cfg.stdin {
                let (in_r, in_w) = pipe()?;
                dup2(in_r.as_raw_fd(), 0)?;
                stdin = Some(File::from(in_w));
            } else {
                dup2(devnull.as_raw_fd(), 0)?;
            }
            dup2(out_w.as_raw_fd(), 1)?;
            dup2(err_w.as_raw_fd(), 2)?;
            outputs.push(Output {
                fd: out_r,
                stream: Stream::Stdout,
                splitter: LineSplitter::default(),
                open: true,
            });
            outputs.push(Output {
                fd: err_r,
                stream: Stream::Stderr,
                splitter: LineSplitter::default(),
                open: true,
            });
        }
        let created = container::create(&CreateOptions {
            root: &cfg.runtime_root,
            id: &cfg.id,
            bundle: &cfg.bundle,
            pid_file: None,
            cgroup_root: &cfg.cgroup_root,
            console,
        });
        // The container holds its ends now; ours go so that EOF means the container closed them.
        for fd in 0..3 {
            dup2(devnull.as_raw_fd(), fd)?;
        }
        let pid = created.map_err(|e| err("create the container", e))?;
        let mut pty = None;
        if let Some(peer) = console_peer {
            let master = crate::runtime::console::recv_fd(peer.as_raw_fd()).map_err(|e| {
                kill_and_delete(cfg);
                err("receive the container's terminal", e)
            })?;
            if let Some((rows, cols)) = cfg.size {
                set_winsize(master.as_fd(), rows, cols);
            }
            let m2 = master.try_clone()?;
            outputs.push(Output {
                fd: m2,
                stream: Stream::Stdout,
                splitter: LineSplitter::default(),
                open: true,
            });
            if cfg.stdin {
                stdin = Some(File::from(master.try_clone()?));
            }
            pty = Some(master);
        }
        for o in &outputs {
            set_nonblocking(o.fd.as_raw_fd())?;
        }
        if let Some(s) = &stdin {
            set_nonblocking(s.as_raw_fd())?;
        }
        let mut shim = Shim {
            cfg,
            listener,
            clients: Vec::new(),
            log,
            outputs,
            stdin,
            pending: Vec::new(),
            close_pending: false,
            pty,
            pid,
            started: false,
        };
        if !cfg.wait_start {
            if let Err(e) = shim.start() {
                kill_and_delete(cfg);
                return Err(e);
            }
        }
        if let Some(mut r) = ready.take() {
            let _ = writeln!(r, "ok {pid}");
        }
        // Creating the container (spec parsing, the seccomp compiler) left freed heap behind:
        // give it back, the shim lives as long as the container.
        // SAFETY: malloc_trim only releases free memory of this (single-threaded) process.
        unsafe { libc::malloc_trim(0) };
        shim.serve(sigfd)
    }

    fn start(&mut self) -> io::Result<()> {
        container::start(&self.cfg.runtime_root, &self.cfg.id, &self.cfg.cgroup_root)
            .map_err(|e| err("start the container", e))?;
        self.started = true;
        self.broadcast(&Frame::Started { pid: self.pid });
        Ok(())
    }

    fn broadcast(&mut self, f: &Frame) {
        let bytes = f.encode();
        // Clients are blocking sockets with a send timeout: a stuck client is dropped, not waited on.
        self.clients
            .retain_mut(|c| c.stream.write_all(&bytes).is_ok());
    }

    fn serve(mut self, sigfd: SignalFd) -> io::Result<()> {
        let mut exit: Option<(i32, Instant)> = None;
        let mut start_error: Option<String> = None;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let outputs_open = self.outputs.iter().any(|o| o.open);
            if let Some((_, at)) = exit {
                // Drain what the container wrote; processes that escaped the pid namespace could
                // hold the pipes forever, so the drain is bounded.
                if !outputs_open || at.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
            let mut fds: Vec<PollFd> = Vec::new();
            fds.push(PollFd::new(sigfd.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            let out_idx: Vec<usize> = (0..self.outputs.len())
                .filter(|i| self.outputs[*i].open)
                .collect();
            for i in &out_idx {
                // SAFETY: the fd lives in self.outputs for the whole poll call.
                fds.push(PollFd::new(
                    unsafe { BorrowedFd::borrow_raw(self.outputs[*i].fd.as_raw_fd()) },
                    PollFlags::POLLIN,
                ));
            }
            // Back-pressure: clients are not read while the container is behind on its stdin.
            let client_flags = if self.pending.len() < MAX_PENDING_STDIN {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            };
            let client_base = fds.len();
            for c in &self.clients {
                // SAFETY: as above, the stream outlives the poll call.
                fds.push(PollFd::new(
                    unsafe { BorrowedFd::borrow_raw(c.stream.as_raw_fd()) },
                    client_flags,
                ));
            }
            let stdin_idx = fds.len();
            let want_out = !self.pending.is_empty();
            if let (true, Some(s)) = (want_out, self.stdin.as_ref()) {
                // SAFETY: as above, stdin outlives the poll call.
                fds.push(PollFd::new(
                    unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) },
                    PollFlags::POLLOUT,
                ));
            }
            let timeout = if exit.is_some() {
                PollTimeout::from(100u16)
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(err("poll", e)),
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            let sig_ready = ready(0);
            let listen_ready = ready(1);
            let out_ready: Vec<usize> = out_idx
                .iter()
                .enumerate()
                .filter(|(k, _)| ready(2 + k))
                .map(|(_, i)| *i)
                .collect();
            let client_ready: Vec<usize> = (0..self.clients.len())
                .filter(|k| ready(client_base + k))
                .collect();
            let stdin_ready = want_out && fds.len() > stdin_idx && ready(stdin_idx);
            drop(fds);
            if stdin_ready {
                self.flush_stdin();
            }

            for i in out_ready {
                self.read_output(i, &mut buf);
            }
            if sig_ready {
                while let Ok(Some(_)) = sigfd.read_signal() {}
                loop {
                    match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(p, code)) if p.as_raw() == self.pid => {
                            exit = Some((code, Instant::now()));
                        }
                        Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == self.pid => {
                            exit = Some((128 + sig as i32, Instant::now()));
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            if listen_ready {
                while let Ok((stream, _)) = self.listener.accept() {
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                    let mut c = Client {
                        stream,
                        decoder: Decoder::default(),
                    };
                    if self.started {
                        let _ = Frame::Started { pid: self.pid }.write_to(&mut c.stream);
                    }
                    self.clients.push(c);
                }
            }
            // Client input, newest index first so removals keep the others' indices.
            for k in client_ready.into_iter().rev() {
                match self.read_client(k, &mut buf) {
                    Ok(frames) => {
                        for f in frames {
                            if let Err(e) = self.handle(f) {
                                start_error = Some(e.to_string());
                                self.broadcast(&Frame::Error(e.to_string()));
                            }
                        }
                    }
                    Err(_) => {
                        self.clients.remove(k);
                    }
                }
            }
            if start_error.is_some() && exit.is_none() {
                // The start failed: the init never ran the user's process.
                kill_and_delete(self.cfg);
                let _ = waitpid(Pid::from_raw(self.pid), None);
                exit = Some((128, Instant::now()));
            }
        }
        let (code, _) = exit.unwrap_or((128, Instant::now()));
        self.finish(code, start_error)
    }

    fn read_output(&mut self, i: usize, buf: &mut [u8]) {
        let fd = self.outputs[i].fd.as_raw_fd();
        loop {
            // SAFETY: fd stays open in self.outputs for this call.
            match nix::unistd::read(unsafe { BorrowedFd::borrow_raw(fd) }, buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => {
                    // EIO: the pty's last slave closed.
                    self.outputs[i].open = false;
                    let stream = self.outputs[i].stream;
                    let rec = self.outputs[i]
                        .splitter
                        .flush(stream, logfile::now_unix_nano());
                    self.append_log(&rec);
                    return;
                }
                Ok(n) => {
                    let stream = self.outputs[i].stream;
                    let data = buf[..n].to_vec();
                    let rec =
                        self.outputs[i]
                            .splitter
                            .push(stream, &data, logfile::now_unix_nano());
                    self.append_log(&rec);
                    let f = match stream {
                        Stream::Stdout => Frame::Stdout(data),
                        Stream::Stderr => Frame::Stderr(data),
                    };
                    self.broadcast(&f);
                }
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    self.outputs[i].open = false;
                    return;
                }
            }
        }
    }

    fn append_log(&mut self, rec: &[u8]) {
        if !rec.is_empty() {
            // A full disk loses log lines, never the container.
            let _ = self.log.write_all(rec);
        }
    }

    fn read_client(&mut self, k: usize, buf: &mut [u8]) -> io::Result<Vec<Frame>> {
        let c = &mut self.clients[k];
        c.stream.set_nonblocking(true)?;
        let r = c.stream.read(buf);
        c.stream.set_nonblocking(false)?;
        let n = match r {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        c.decoder.feed(&buf[..n]);
        let mut frames = Vec::new();
        while let Some(f) = c.decoder.next_frame()? {
            frames.push(f);
        }
        Ok(frames)
    }

    fn handle(&mut self, f: Frame) -> io::Result<()> {
        match f {
            Frame::Start if !self.started => self.start(),
            Frame::Start => Ok(()),
            Frame::Stdin(data) => {
                if self.stdin.is_some() && !self.close_pending {
                    self.pending.extend_from_slice(&data);
                    self.flush_stdin();
                }
                Ok(())
            }
            Frame::CloseStdin => {
                self.close_pending = true;
                self.flush_stdin();
                Ok(())
            }
            Frame::Resize { rows, cols } => {
                if let Some(p) = self.pty.as_ref() {
                    set_winsize(p.as_fd(), rows, cols);
                }
                Ok(())
            }
            // Output-direction frames from a client are ignored.
            _ => Ok(()),
        }
    }

    /// Writes what the container's stdin takes now; the rest waits for POLLOUT.
    fn flush_stdin(&mut self) {
        let Some(s) = self.stdin.as_mut() else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match s.write(&self.pending) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The container closed its stdin.
                    self.stdin = None;
                    self.pending.clear();
                    return;
                }
            }
        }
        if self.close_pending && self.pending.is_empty() {
            if self.pty.is_some() {
                // A terminal has no half-close: send EOF (^D) like a user would.
                let _ = s.write(&[4]);
            }
            self.stdin = None;
            self.close_pending = false;
        }
    }

    fn finish(mut self, code: i32, error: Option<String>) -> io::Result<()> {
        let oom_killed = crate::runtime::state::load(&self.cfg.runtime_root, &self.cfg.id)
            .ok()
            .and_then(|rec| container::cgroup_manager(&self.cfg.cgroup_root, &rec.cgroup_path).ok())
            .and_then(|cg| cg.oom_kills().ok())
            .is_some_and(|n| n > 0);
        for i in 0..self.outputs.len() {
            let stream = self.outputs[i].stream;
            let rec = self.outputs[i]
                .splitter
                .flush(stream, logfile::now_unix_nano());
            self.append_log(&rec);
        }
        let _ = self.log.sync_data();
        let delete_error = container::delete(
            &self.cfg.runtime_root,
            &self.cfg.id,
            true,
            &self.cfg.cgroup_root,
        )
        .err()
        .map(|e| format!("clean up the container: {e}"));
        let rec = ExitRecord {
            code,
            oom_killed,
            finished_unix_nano: logfile::now_unix_nano(),
            error: error.or(delete_error),
        };
        let data = serde_json::to_vec(&rec).map_err(|e| err("encode exit.json", e))?;
        write_file_atomic(&self.cfg.exit_path, &data)?;
        if let Some(e) = &rec.error {
            self.broadcast(&Frame::Error(e.clone()));
        }
        self.broadcast(&Frame::Exit { code, oom_killed });
        let _ = fs::remove_file(&self.cfg.socket_path);
        Ok(())
    }
}

fn kill_and_delete(cfg: &ShimConfig) {
    let _ = container::delete(&cfg.runtime_root, &cfg.id, true, &cfg.cgroup_root);
}

fn dup2(src: RawFd, dst: RawFd) -> io::Result<()> {
    // SAFETY: plain dup2 on descriptors we own; the shim is single-threaded.
    if unsafe { libc::dup2(src, dst) } < 0 {
        return Err(err("dup2", io::Error::last_os_error()));
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(err("set O_NONBLOCK", io::Error::last_os_error()));
    }
    Ok(())
}

fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; fd is an open pty master.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}
