//! The local terminal for `run -it`, `exec -it` and `start -ai`: raw mode on stdin (nix termios,
//! the same flags as `cfmakeraw`, which is what docker's term package sets), the window size, and
//! whether our streams are terminals. Invariant: at most one saved termios exists, and it is put
//! back by the guard's drop, by the panic hook, and by `restore_all` on the explicit exit paths
//! (`std::process::exit` skips destructors), so the user's shell never stays raw.
//!
//! The window size needs the TIOCGWINSZ ioctl, which nix only offers as an unsafe generated
//! function; it is the one `unsafe` block outside the runtime, justified below.

use std::io::IsTerminal;
use std::sync::{Mutex, Once};

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

static SAVED: Mutex<Option<Termios>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// Whether stdin, stdout, stderr are terminals.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// Stdin in raw mode until dropped.
#[must_use]
pub struct RawGuard(());

impl RawGuard {
    /// Puts stdin in raw mode, remembering the old settings.
    pub fn enter() -> anyhow::Result<RawGuard> {
        PANIC_HOOK.call_once(|| {
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_all();
                prev(info);
            }));
        });
        let stdin = std::io::stdin();
        let orig = tcgetattr(&stdin)
            .map_err(|e| anyhow::anyhow!("reading the terminal settings of stdin: {e}"))?;
        let mut raw = orig.clone();
        cfmakeraw(&mut raw);
        let mut saved = SAVED.lock().unwrap_or_else(|p| p.into_inner());
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .map_err(|e| anyhow::anyhow!("putting the terminal in raw mode: {e}"))?;
        if saved.is_none() {
            *saved = Some(orig);
        }
        Ok(RawGuard(()))
    }
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        restore_all();
    }
}

/// Puts back the terminal settings saved by `RawGuard::enter`, if any (idempotent).
pub fn restore_all() {
    let mut saved = SAVED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = saved.take() {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &t);
    }
}

/// The terminal's (rows, cols): stdout's, else stdin's, else stderr's; None when none is a tty.
pub fn size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO, libc::STDERR_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ only writes one `winsize` into `ws`, which we own and which lives
        // for the call; the fd is one of the standard streams, open for the process's life, and
        // an fd that is not a terminal just makes the ioctl fail with ENOTTY.
        let r = unsafe { tiocgwinsz(fd, &mut ws) };
        if r.is_ok() && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Asks `question [y/N]` on stderr and reads the answer from stdin; only y/yes confirms. A
/// closed stdin is a no.
pub fn confirm(question: &str) -> bool {
    use std::io::{BufRead, Write};
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => false,
        Ok(_) => matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
    }
}
