//! Container terminals (`process.terminal: true`).
//!
//! The init opens the pty from the container's own `/dev/ptmx` after pivot_root (so `tty` inside
//! names `/dev/pts/0` of the container's devpts), makes the slave its controlling terminal and
//! stdio, and sends the master over a unix socket with SCM_RIGHTS: the caller's `--console-socket`
//! (as runc does), or for a foreground `run` a socketpair whose other end `flotilla-runtime` keeps
//! to copy the terminal to its own stdio.
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::error::RuntimeError;

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);

/// In the init: create the pty, adopt the slave, send the master over `socket`.
pub fn setup_in_container(socket: &OwnedFd, size: Option<(u16, u16)>) -> Result<(), RuntimeError> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("open /dev/ptmx (is /dev/pts mounted?)", e))?;
    nix::pty::grantpt(&master).map_err(|e| RuntimeError::sys("grantpt", e))?;
    nix::pty::unlockpt(&master).map_err(|e| RuntimeError::sys("unlockpt", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| RuntimeError::sys("ptsname", e))?;
    if let Some((rows, cols)) = size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: ws is a valid winsize and master an open pty master.
        unsafe { set_winsize(master.as_raw_fd(), &ws) }
            .map_err(|e| RuntimeError::sys("set the terminal size", e))?;
    }
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| RuntimeError::sys(format!("open {name}"), e))?;
    nix::unistd::setsid().map_err(|e| RuntimeError::sys("setsid", e))?;
    // SAFETY: TIOCSCTTY takes an integer argument; slave is an open terminal.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(RuntimeError::sys(
            "make the pty the controlling terminal",
            nix::Error::last(),
        ));
    }
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this process.
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            return Err(RuntimeError::sys(
                "dup the pty onto stdio",
                nix::Error::last(),
            ));
        }
    }
    send_fd(socket.as_raw_fd(), master.as_raw_fd())
}

pub fn send_fd(socket: RawFd, fd: RawFd) -> Result<(), RuntimeError> {
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(b"pty")];
    sendmsg::<()>(socket, &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| RuntimeError::sys("send the pty master over the console socket", e))?;
    Ok(())
}

/// Receives one file descriptor sent with `send_fd`.
pub fn recv_fd(socket: RawFd) -> Result<OwnedFd, RuntimeError> {
    let mut buf = [0u8; 16];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| RuntimeError::sys("receive the pty master", e))?;
    for c in msg
        .cmsgs()
        .map_err(|e| RuntimeError::sys("read the control message", e))?
    {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor in our table for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(RuntimeError::sys(
        "the container sent no pty master",
        nix::Error::EBADMSG,
    ))
}

/// Copies between our stdio and the pty master until the container's side closes; puts our
/// terminal in raw mode meanwhile when stdin is one. Runs on threads: call only after all forks.
pub fn proxy(master: OwnedFd) -> Result<ProxyGuard, RuntimeError> {
    use std::io::{Read, Write};
    let stdin_tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    let saved = if stdin_tty {
        let t = nix::sys::termios::tcgetattr(std::io::stdin())
            .map_err(|e| RuntimeError::sys("read terminal modes", e))?;
        let mut raw = t.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &raw)
            .map_err(|e| RuntimeError::sys("set raw terminal mode", e))?;
        Some(t)
    } else {
        None
    };
    let reader = std::fs::File::from(
        master
            .try_clone()
            .map_err(|e| RuntimeError::io("dup", "pty master", e))?,
    );
    let mut writer = std::fs::File::from(master);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || writer.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let out = std::thread::spawn(move || {
        let mut reader = reader;
        let mut stdout = std::io::stdout();
        let mut buf = [0u8; 4096];
        // EIO once every slave descriptor is closed: the container is gone.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0
                || stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
            {
                break;
            }
        }
    });
    Ok(ProxyGuard {
        saved,
        out: Some(out),
    })
}

/// Restores the terminal and drains the output when dropped.
pub struct ProxyGuard {
    saved: Option<nix::sys::termios::Termios>,
    out: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ProxyGuard {
    fn drop(&mut self) {
        if let Some(h) = self.out.take() {
            let _ = h.join();
        }
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}
