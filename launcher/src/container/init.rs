//! PID 1 and the payload (`docs/architecture.md#the-containers-filesystem-and-isolation`).
//!
//! With `--as-pid2` (the default) rnet's minimal init stays PID 1: it reaps every child,
//! forwards the signals sent to it to the payload (PID 2) and exits with the payload's code
//! (128 + the signal when it was killed), as systemd-nspawn's stub init does
//! (`src/nspawn/nspawn-stub-pid1.c`). It never execs: it is this launcher's code, already
//! isolated like the payload (capabilities, seccomp), so the payload gains nothing by
//! tracing it.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, setgid, setgroups, setuid};

use crate::container::spec::User;

/// Exit code when the command cannot be executed (as shells use).
pub const EXIT_EXEC_FAILED: i32 = 127;

/// What the payload becomes.
pub struct Payload<'a> {
    pub argv: &'a [CString],
    pub env: &'a [CString],
    pub user: Option<&'a User>,
    pub chdir: Option<&'a Path>,
    /// `/dev/console` (a pty) becomes the payload's terminal and stdio.
    pub console: bool,
}

/// `execvpe` on the container's `PATH` (glibc's would search the launcher's).
fn resolve(argv0: &CString, env: &[CString]) -> CString {
    let name = argv0.to_string_lossy();
    if name.contains('/') {
        return argv0.clone();
    }
    let path = env
        .iter()
        .find_map(|e| e.to_str().ok()?.strip_prefix("PATH="))
        .unwrap_or("/usr/bin:/bin");
    path.split(':')
        .map(|d| format!("{d}/{name}"))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .and_then(|p| CString::new(p).ok())
        .unwrap_or_else(|| argv0.clone())
}

/// Becomes the payload: user, working directory, exec. Returns only on failure, with the
/// message.
pub fn exec(p: &Payload) -> String {
    if p.console
        && let Err(e) = crate::container::console::attach_stdio()
    {
        return e;
    }
    if let Some(u) = p.user {
        let groups: Vec<Gid> = u.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        if let Err(e) = setgroups(&groups)
            .and_then(|()| setgid(Gid::from_raw(u.gid)))
            .and_then(|()| setuid(Uid::from_raw(u.uid)))
        {
            return format!("changing to user {}: {}", u.name, e.desc());
        }
    }
    let home = p.user.map(|u| u.home.as_str()).unwrap_or("/root");
    match p.chdir {
        Some(dir) => {
            if let Err(e) = std::env::set_current_dir(dir) {
                return format!("changing to {}: {e}", dir.display());
            }
        }
        // As nspawn: the home directory when there is one, else /.
        None => {
            if std::env::set_current_dir(home).is_err() {
                let _ = std::env::set_current_dir("/");
            }
        }
    }
    let file = resolve(&p.argv[0], p.env);
    let Err(e) = nix::unistd::execve(&file, p.argv, p.env);
    format!(
        "cannot execute {}: {}",
        p.argv[0].to_string_lossy(),
        e.desc()
    )
}

/// The payload starts as systemd-nspawn starts it (`reset_all_signal_handlers()`,
/// `reset_signal_mask()`): every signal at its default action and none blocked, whatever the
/// launcher inherited (a shell's background job has SIGINT and SIGQUIT ignored, which `exec`
/// would pass on, so a forwarded SIGINT would do nothing).
pub fn reset_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; invalid numbers fail harmlessly.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Runs as PID 1: forks the payload (PID 2), closes the launcher's socket once the payload
/// holds it (it closes on exec), then reaps and forwards until the payload ends.
pub fn run(p: &Payload, sock: UnixStream, forwarded: &SigSet) -> ! {
    // SAFETY: the launcher is single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            reset_signals();
            let msg = exec(p);
            let mut sock = sock;
            let _ = sock.write_all(msg.as_bytes());
            // SAFETY: _exit ends the forked child without running atexit handlers.
            unsafe { libc::_exit(EXIT_EXEC_FAILED) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(sock);
            let code = reap(child, forwarded);
            // SAFETY: as above; PID 1's exit takes the namespace's other processes with it.
            unsafe { libc::_exit(code) }
        }
        Err(e) => {
            let mut sock = sock;
            let _ = sock.write_all(format!("forking the payload: {}", e.desc()).as_bytes());
            // SAFETY: as above.
            unsafe { libc::_exit(125) }
        }
    }
}

/// Waits for `payload`, reaping every other child (orphans reparent to PID 1) and forwarding
/// the signals sent to us; returns the payload's exit code.
fn reap(payload: Pid, forwarded: &SigSet) -> i32 {
    let mut wait_set = *forwarded;
    wait_set.add(Signal::SIGCHLD);
    loop {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == payload => return code,
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == payload => return 128 + sig as i32,
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => {}
                Err(nix::errno::Errno::ECHILD) => return 1,
                Err(_) => break,
            }
        }
        forward_next_signal(&wait_set, payload);
    }
}

/// Waits for one of `wait_set`'s signals (blocked by the caller) and passes it on to `to`,
/// unless it came from the terminal: those (`si_code > 0`, sent by the kernel) reached the
/// whole foreground process group, `to` included. Returns after SIGCHLD or an interrupted
/// wait too, for the caller to reap.
pub fn forward_next_signal(wait_set: &SigSet, to: Pid) {
    // SAFETY: siginfo_t is plain data; sigwaitinfo fills it for the signal it returns.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let sig = unsafe { libc::sigwaitinfo(wait_set.as_ref(), &mut info) };
    if sig < 0 || sig == libc::SIGCHLD {
        return;
    }
    if info.si_code <= 0
        && let Ok(s) = Signal::try_from(sig)
    {
        let _ = kill(to, s);
    }
}
