//! `rnet start`: a machine image run in the background with machinectl's defaults, and the
//! supervisor that keeps it (what `systemd-nspawn@.service` and its `RestartForceExitStatus=133`
//! are for nspawn).
//!
//! `rnet start NAME` checks the image, starts `rnet start --foreground NAME` detached (a session
//! of its own, output to `RUNTIME_DIR/logs/NAME.log`) and returns once the machine is registered ready
//! (the launcher marks it so once rnetd attached its veth and the init runs), or fails with the log's last line and
//! its path when the supervisor ends first. The supervisor runs `rnet run -M NAME -D IMAGE -b -n
//! -U --settings=override --console=read-only` (the unit's flags: the `.nspawn` file decides
//! over these defaults) and starts it again when it exits with 133 (the container rebooted).
//! Its signals: SIGTERM (or SIGINT) powers the machine off (SIGTERM to the launcher, which asks
//! the init, and no restart), [`SIG_RESTART`] restarts it (SIGTERM to the launcher, then a new
//! run), [`SIG_NO_RESTART`] only marks that it must not start again (`terminate` kills the
//! leader itself).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};

use super::registry;
use crate::container::EXIT_REBOOTED;

/// Restart the machine (a reboot of an init that is not systemd).
pub const SIG_RESTART: i32 = libc::SIGHUP;
/// The machine ends for good (it is being terminated).
pub const SIG_NO_RESTART: i32 = libc::SIGUSR1;
/// How long `rnet start` waits for the machine to run.
const START_LIMIT: Duration = Duration::from_secs(120);

/// The log of a started machine.
pub fn log_path(runtime_dir: &Path, name: &str) -> PathBuf {
    runtime_dir.join("logs").join(format!("{name}.log"))
}

/// The arguments of the supervisor's `rnet run`.
pub fn run_args(name: &str, image: &Path) -> Vec<String> {
    [
        "run",
        "-M",
        name,
        "-D",
        &image.display().to_string(),
        "-b",
        "--network-veth",
        "-U",
        "--settings=override",
        "--console=read-only",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The global options that point a child `rnet` at the same directories.
fn globals(runtime_dir: &Path, machines_dir: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "--runtime-dir".into(),
        runtime_dir.into(),
        "--machines-dir".into(),
        machines_dir.into(),
    ]
}

fn exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("finding rnet's own binary: {e}"))
}

/// The image of `name`: a directory tree in the machines directory.
fn image(machines_dir: &Path, name: &str) -> Result<PathBuf, String> {
    let image = crate::images::Images::new(machines_dir)
        .find(name)
        .map_err(|e| e.to_string())?;
    if image.kind != crate::images::Kind::Directory {
        return Err(format!(
            "image {name} is a raw disk image: rnet starts directory trees only"
        ));
    }
    Ok(image.path)
}

/// `rnet start NAME`: detached supervisor, returns when the machine runs.
pub fn start(runtime_dir: &Path, machines_dir: &Path, name: &str) -> Result<(), String> {
    image(machines_dir, name)?;
    if let Some(e) = registry::get(runtime_dir, name) {
        return Err(registry::RegistryError::Running { name: e.name }.to_string());
    }
    let log = log_path(runtime_dir, name);
    let dir = log.parent().unwrap_or(runtime_dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out =
        std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let mut cmd = Command::new(exe()?);
    cmd.args(globals(runtime_dir, machines_dir))
        .args(["start", "--foreground", "--log"])
        .arg(&log)
        .arg(name)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe; the supervisor leaves our session and terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the supervisor of {name}: {e}"))?;
    let pid = child.id();
    let end = Instant::now() + START_LIMIT;
    loop {
        if registry::get(runtime_dir, name).is_some_and(|e| e.ready && e.supervisor == Some(pid)) {
            return Ok(());
        }
        if let Ok(Some(_)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // The launcher's last word (the supervisor's own closing line says less).
            let own = format!("rnet: machine {name} ended");
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty() && !l.starts_with(&own))
                .unwrap_or("no output");
            return Err(format!(
                "machine {name} failed to start: {last} (its log: {})",
                log.display()
            ));
        }
        if Instant::now() > end {
            // SAFETY: kill with a pid and a signal number.
            unsafe { libc::kill(i32::try_from(pid).unwrap_or(-1), libc::SIGTERM) };
            let _ = child.wait();
            return Err(format!(
                "machine {name} did not start within {}s (its log: {})",
                START_LIMIT.as_secs(),
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `rnet start --foreground NAME`: runs the machine and starts it again after a reboot (exit
/// code 133); exits with the machine's last exit code.
pub fn foreground(
    runtime_dir: &Path,
    machines_dir: &Path,
    name: &str,
    log: Option<&Path>,
) -> Result<ExitCode, String> {
    let image = image(machines_dir, name)?;
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| format!("blocking signals: {e}"))?;
    let me = std::process::id().to_string();
    let mut stop = false;
    loop {
        let mut cmd = Command::new(exe()?);
        cmd.args(globals(runtime_dir, machines_dir))
            .args(run_args(name, &image))
            .env(super::SUPERVISOR_ENV, &me);
        match log {
            Some(l) => cmd.env(super::LOG_ENV, l),
            None => cmd.env_remove(super::LOG_ENV),
        };
        // SAFETY: sigprocmask is async-signal-safe; the launcher starts with nothing blocked.
        unsafe {
            cmd.pre_exec(|| {
                let empty = SigSet::empty();
                sigprocmask(SigmaskHow::SIG_SETMASK, Some(&empty), None)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting machine {name}: {e}"))?;
        let launcher = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(-1));
        let mut restart = false;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            let Ok(sig) = set.wait() else { continue };
            match sig {
                Signal::SIGTERM | Signal::SIGINT => {
                    stop = true;
                    let _ = nix::sys::signal::kill(launcher, Signal::SIGTERM);
                }
                Signal::SIGHUP => {
                    restart = true;
                    let _ = nix::sys::signal::kill(launcher, Signal::SIGTERM);
                }
                Signal::SIGUSR1 => stop = true,
                _ => {}
            }
        };
        // A request sent just before the machine ended still counts.
        while let Some(sig) = pending(&set) {
            match sig {
                libc::SIGTERM | libc::SIGINT | libc::SIGUSR1 => stop = true,
                libc::SIGHUP => restart = true,
                _ => {}
            }
        }
        let code = status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(1);
        if stop || !(restart || code == EXIT_REBOOTED) {
            eprintln!("rnet: machine {name} ended (exit code {code})");
            return Ok(ExitCode::from(if stop { 0 } else { code }));
        }
        eprintln!("rnet: machine {name} rebooted: starting it again");
    }
}

/// A pending signal of `set`, without waiting.
fn pending(set: &SigSet) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain data, filled by the kernel.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: all pointers are valid for the call.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), &mut info, &ts) };
    (sig > 0).then_some(sig)
}
