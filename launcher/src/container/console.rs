//! The container's console (`--console`, systemd-nspawn(1)): a pty allocated in the
//! container's own devpts, its peer bound on `/dev/console` and made the payload's stdio and
//! controlling terminal; the launcher holds the master. `interactive` relays it both ways with
//! the launcher's terminal in raw mode (Ctrl-] three times within a second ends the session,
//! as nspawn's does: the container is killed), `read-only` relays its output only, `passive`
//! reads and drops it (connected nowhere, yet never blocking the payload).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

use crate::container::fdpass;
use crate::container::spec::Console;

/// Opens a new pty in the devpts mounted at `pts`; returns the master and the peer's path.
pub fn open_pty(pts: &Path) -> Result<(OwnedFd, PathBuf), String> {
    let master = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(pts.join("ptmx"))
        .map_err(|e| format!("opening the container's ptmx: {e}"))?;
    let mut unlock: libc::c_int = 0;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCSPTLCK reads an int, TIOCGPTN writes an unsigned int; both are valid.
    let ok = unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) == 0
            && libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) == 0
    };
    if !ok {
        return Err(format!(
            "setting up the console pty: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((OwnedFd::from(master), pts.join(n.to_string())))
}

/// In the payload, before exec: a session of its own with `/dev/console` as its controlling
/// terminal and stdio.
pub fn attach_stdio() -> Result<(), String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {}", e.desc()))?;
    let tty = File::options()
        .read(true)
        .write(true)
        .open("/dev/console")
        .map_err(|e| format!("opening /dev/console: {e}"))?;
    // SAFETY: plain ioctl and dup2 on descriptors we own.
    unsafe {
        libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0);
        for fd in 0..3 {
            libc::dup2(tty.as_raw_fd(), fd);
        }
    }
    Ok(())
}

/// The child's side: the master goes to the launcher with one byte, `C`.
pub fn send_master(sock: &UnixStream, master: &OwnedFd) -> Result<(), String> {
    fdpass::send(sock, b'C', Some(master))
        .map_err(|e| format!("passing the console to the launcher: {}", e.desc()))
}

/// The launcher's side: the master, or (no descriptor came) what the child wrote instead: the
/// start of its error report.
pub fn recv_master(sock: &UnixStream) -> Result<OwnedFd, String> {
    let mut buf = [0u8; 1024];
    let (n, fd) =
        fdpass::recv(sock, &mut buf).map_err(|e| format!("receiving the console: {}", e.desc()))?;
    fd.ok_or_else(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The launcher's terminal in raw mode while it lives.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn new(on: bool) -> Self {
        if !on {
            return Self(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a termios.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return Self(None);
        }
        let saved = t;
        // SAFETY: as above.
        unsafe {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
        Self(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in new().
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// Copies the launcher's window size to the pty.
fn copy_winsize(master: RawFd) {
    // SAFETY: winsize is plain data; both ioctls take a pointer to one.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master, libc::TIOCSWINSZ, &ws);
        }
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            return;
        }
        data = &data[usize::try_from(n).unwrap_or(data.len())..];
    }
}

/// What the relay tells the wait loop.
pub enum Event {
    /// A signal arrived (number, `si_code`).
    Signal(i32, i32),
    /// Ctrl-] three times: end the session.
    Escape,
}

/// The relay between the launcher's stdio and the pty, multiplexed with the signals the
/// launcher waits for (a signalfd of `wait_set`).
pub struct Relay {
    master: OwnedFd,
    mode: Console,
    signals: OwnedFd,
    _raw: RawTerminal,
    escapes: Vec<Instant>,
    stdin_open: bool,
    master_open: bool,
}

impl Relay {
    pub fn new(master: OwnedFd, mode: Console, wait_set: &SigSet) -> Result<Self, String> {
        // SAFETY: signalfd on a valid set, new descriptor.
        let sfd = unsafe {
            libc::signalfd(
                -1,
                wait_set.as_ref(),
                libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
            )
        };
        if sfd < 0 {
            return Err(format!("signalfd: {}", std::io::Error::last_os_error()));
        }
        let interactive = mode == Console::Interactive;
        if interactive {
            copy_winsize(master.as_raw_fd());
        }
        Ok(Self {
            // SAFETY: just created, owned here.
            signals: unsafe { OwnedFd::from_raw_fd(sfd) },
            _raw: RawTerminal::new(
                interactive && nix::unistd::isatty(std::io::stdin()).unwrap_or(false),
            ),
            master,
            mode,
            escapes: Vec::new(),
            stdin_open: interactive,
            master_open: true,
        })
    }

    /// Relays until a signal or the escape comes (or `timeout` passes: `None`).
    pub fn next(&mut self, timeout: Option<Duration>) -> Option<Event> {
        let end = timeout.map(|t| Instant::now() + t);
        loop {
            let mut fds = vec![libc::pollfd {
                fd: self.signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if self.master_open {
                fds.push(libc::pollfd {
                    fd: self.master.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            if self.stdin_open {
                fds.push(libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let ms = end.map_or(-1, |e| {
                i32::try_from(e.saturating_duration_since(Instant::now()).as_millis())
                    .unwrap_or(i32::MAX)
            });
            // SAFETY: fds is a valid array of its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if n == 0 {
                return None;
            }
            if n < 0 {
                continue;
            }
            for p in &fds[1..] {
                if p.revents == 0 {
                    continue;
                }
                let mut buf = [0u8; 4096];
                // SAFETY: the buffer is valid for its length.
                let r = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
                let got = usize::try_from(r).unwrap_or(0);
                if p.fd == self.master.as_raw_fd() {
                    if got == 0 {
                        // EIO: no process holds the console any more.
                        self.master_open = false;
                    } else if self.mode != Console::Passive {
                        write_all(1, &buf[..got]);
                    }
                } else if got == 0 {
                    self.stdin_open = false;
                } else {
                    for b in &buf[..got] {
                        if *b == 0x1d {
                            let now = Instant::now();
                            self.escapes
                                .retain(|t| now.duration_since(*t) < Duration::from_secs(1));
                            self.escapes.push(now);
                            if self.escapes.len() >= 3 {
                                return Some(Event::Escape);
                            }
                        }
                    }
                    write_all(self.master.as_raw_fd(), &buf[..got]);
                }
            }
            if fds[0].revents != 0 {
                // SAFETY: signalfd_siginfo is plain data of the size read.
                let mut si: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
                let size = std::mem::size_of::<libc::signalfd_siginfo>();
                // SAFETY: reads at most `size` bytes into si.
                let r = unsafe { libc::read(self.signals.as_raw_fd(), (&raw mut si).cast(), size) };
                if usize::try_from(r).is_ok_and(|r| r == size) {
                    let sig = i32::try_from(si.ssi_signo).unwrap_or(0);
                    if sig == libc::SIGWINCH && self.mode == Console::Interactive {
                        copy_winsize(self.master.as_raw_fd());
                        continue;
                    }
                    return Some(Event::Signal(sig, si.ssi_code));
                }
            }
        }
    }

    /// Drains what is left of the output once the container ended.
    pub fn flush(&mut self) {
        while self.master_open && self.mode != Console::Passive {
            match self.next(Some(Duration::from_millis(50))) {
                None | Some(Event::Escape) => break,
                Some(Event::Signal(..)) => {}
            }
        }
    }
}

/// Forwards nothing, kills: the escape's end of the session.
pub fn kill_container(child: Pid) {
    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
}
