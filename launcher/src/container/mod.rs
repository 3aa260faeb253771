//! `rnet run -D DIR`: a container in an OS tree, as systemd-nspawn runs one
//! (`docs/architecture.md#the-containers-filesystem-and-isolation`).
//!
//! The launcher unshares a PID namespace for its child and forks; the child is PID 1 of it and
//! enters new mount, UTS, IPC (and, with a private network, network) namespaces, sets the
//! hostname, gets its network configuration from the launcher as without `-D`, then:
//!
//! 1. `fs::setup`: the tree (or an overlay of it, `-x`) with the API filesystems, binds and
//!    tmpfs, `/run/host/`, the resolv.conf and localtime (`hostfiles`); `pivot_root`.
//! 2. `isolate::apply` and `seccomp::install`: nspawn's capability bounding set, its seccomp
//!    filter, `no_new_privs`. A user namespace (`-U`) would be entered before step 1, right
//!    after the fork, with the tree's ownership shifted; nothing here assumes real root
//!    beyond that point.
//! 3. `init::run` (PID 1 stays rnet's init, the payload is PID 2) or an exec of the payload or
//!    the tree's init as PID 1 (`--as-pid1`, `--boot`).

pub mod cgroupfs;
pub mod chase;
pub mod console;
pub mod fdpass;
pub mod fs;
pub mod hostfiles;
pub mod init;
pub mod isolate;
pub mod seccomp;
pub mod spec;
pub mod userns;

use std::ffi::CString;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::{Machine, NetworkSpec};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cli::RunArgs;
use spec::{Bind, Console, Start, Tmpfs, User};

/// nspawn's exit code for a container that rebooted (`EXIT_FORCE_RESTART`).
pub const EXIT_REBOOTED: u8 = 133;
/// How long `rnet` waits after passing a stop request on before it kills the container.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A validated `-D` container.
#[derive(Debug)]
pub struct Container {
    pub root: PathBuf,
    pub start: Start,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub binds: Vec<Bind>,
    pub tmpfs: Vec<Tmpfs>,
    pub chdir: Option<PathBuf>,
    pub user: Option<User>,
    pub hostname: String,
    pub read_only: bool,
    pub console: Console,
    pub ephemeral: bool,
    pub no_new_privs: bool,
    pub uuid: String,
    /// The tree's init is systemd: a stop request becomes SIGRTMIN+3.
    pub systemd: bool,
    /// `-U`, `--private-users=`: the user namespace, decided and its range locked.
    pub userns: Option<userns::Plan>,
    /// The launcher's capability bounding set (a user namespace's starts full again).
    pub bounding: u64,
    /// `--resolv-conf=` (default `auto`).
    pub resolv_conf: hostfiles::ResolvConf,
    /// `--timezone=` (default `auto`).
    pub timezone: hostfiles::Timezone,
    /// The host's resolv.conf and localtime, observed before the fork.
    pub host: hostfiles::Host,
}

fn read_in_tree(root: &Path, file: &str) -> String {
    chase::chase(root, Path::new(file))
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

impl Container {
    /// Checks every container option; nothing is created.
    pub fn new(args: &RunArgs, machine: &str, runtime_dir: &Path) -> Result<Self, String> {
        let dir = args.directory.as_deref().unwrap_or(Path::new("."));
        let root = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let start = if args.boot {
            Start::Boot
        } else if args.as_pid1 {
            Start::Pid1
        } else {
            Start::Pid2
        };
        spec::check_tree(&root, start == Start::Boot)?;
        let root = root
            .canonicalize()
            .map_err(|e| format!("{}: {e}", root.display()))?;
        let mut binds = Vec::new();
        for (list, ro) in [(&args.bind, false), (&args.bind_ro, true)] {
            for b in list {
                let b = Bind::parse(b, ro)?;
                if let Err(e) = std::fs::metadata(&b.src) {
                    let opt = if ro { "--bind-ro" } else { "--bind" };
                    return Err(format!(
                        "{opt} source {}: {}",
                        b.src.display(),
                        nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc()
                    ));
                }
                binds.push(b);
            }
        }
        let tmpfs = args
            .tmpfs
            .iter()
            .map(|t| Tmpfs::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        let setenv = args
            .setenv
            .iter()
            .map(|e| spec::parse_setenv(e, |n| std::env::var(n).ok()))
            .collect::<Result<Vec<_>, _>>()?;
        let user = match &args.user {
            None => None,
            Some(who) => {
                let passwd = read_in_tree(&root, "/etc/passwd");
                let group = read_in_tree(&root, "/etc/group");
                Some(User::find(who, &passwd, &group).ok_or_else(|| {
                    format!("user {who:?} is not in {}/etc/passwd", root.display())
                })?)
            }
        };
        if let Some(c) = &args.chdir
            && !c.is_absolute()
        {
            return Err(format!("--chdir {}: not an absolute path", c.display()));
        }
        let hostname = args.hostname.clone().unwrap_or_else(|| machine.to_owned());
        if hostname.is_empty()
            || hostname.len() > 64
            || !hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(format!("invalid --hostname {hostname:?}"));
        }
        let on_tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
            && nix::unistd::isatty(std::io::stdout()).unwrap_or(false);
        let console = Console::parse(args.console.as_deref(), on_tty)?;
        let no_new_privs = match &args.no_new_privileges {
            Some(v) => spec::parse_bool("--no-new-privileges", v)?,
            None => true,
        };
        let mut systemd = false;
        let mut argv: Vec<String> = args.command.clone();
        if start == Start::Boot {
            let init = spec::find_init(&root).ok_or_else(|| {
                format!(
                    "no init found in {} (looked for {})",
                    root.display(),
                    spec::INITS.join(", ")
                )
            })?;
            systemd = init.ends_with("systemd/systemd")
                || chase::chase(&root, Path::new(init))
                    .ok()
                    .and_then(|p| p.canonicalize().ok())
                    .is_some_and(|p| p.ends_with("systemd/systemd"));
            argv.insert(0, init.to_owned());
        } else if argv.is_empty() {
            argv.push("/bin/sh".into());
        }
        let argv = argv
            .iter()
            .map(|a| {
                CString::new(a.as_bytes())
                    .map_err(|_| format!("argument {a:?} contains a NUL byte"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mode = match (&args.private_users, args.userns) {
            (Some(m), _) => userns::Mode::parse(m)?,
            (None, true) => userns::Mode::Pick,
            (None, false) => userns::Mode::Off,
        };
        let ownership = match &args.private_users_ownership {
            Some(o) => userns::Ownership::parse(o)?,
            None if mode == userns::Mode::Pick => userns::Ownership::Auto,
            None => userns::Ownership::Off,
        };
        let resolv_conf = match &args.resolv_conf {
            Some(m) => hostfiles::ResolvConf::parse(m)?,
            None => hostfiles::ResolvConf::Auto,
        };
        let timezone = match &args.timezone {
            Some(m) => hostfiles::Timezone::parse(m)?,
            None => hostfiles::Timezone::Auto,
        };
        let uuid = spec::random_uuid()?;
        let term = std::env::var("TERM").ok();
        // Last: it takes the range's lock.
        let userns = userns::plan(mode, ownership, &root, machine, &runtime_dir.join("uid"))?;
        let env = spec::environment(&uuid, user.as_ref(), term.as_deref(), &setenv);
        Ok(Self {
            root,
            start,
            argv,
            env,
            binds,
            tmpfs,
            chdir: args.chdir.clone(),
            user,
            hostname,
            read_only: args.read_only,
            console,
            ephemeral: args.ephemeral,
            no_new_privs,
            uuid,
            systemd,
            userns,
            bounding: isolate::bounding_set(),
            resolv_conf,
            timezone,
            host: hostfiles::Host::observe(),
        })
    }

    /// The default machine name of a tree: its directory's name (as nspawn).
    pub fn default_machine(dir: &Path) -> String {
        let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        let base = abs
            .canonicalize()
            .unwrap_or(abs)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name: String = base
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(64)
            .collect();
        let name = name.trim_matches('-').to_owned();
        if name.is_empty() { "rnet".into() } else { name }
    }
}

/// The host's os-release, for `/run/host/os-release`.
fn host_os_release() -> String {
    std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default()
}

/// In the container's first process, after its network is configured: filesystem, isolation,
/// then PID 1. Never returns: a failure is reported on `sock` and ends the process with 125
/// (nothing is left: the namespaces and mounts go with it).
pub fn enter(
    c: &Container,
    machine: Option<&Machine>,
    private_network: bool,
    tree: Option<&OwnedFd>,
    mut sock: UnixStream,
    forwarded: &SigSet,
) -> ! {
    // Descriptors the launcher inherited stay outside (nspawn closes all but stdio): each one
    // above stderr closes on exec (the socket to the launcher already does).
    // SAFETY: close_range with plain integers.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let sent = prepare(c, machine, private_network, tree).and_then(|master| match master {
        Some(m) => console::send_master(&sock, &m),
        None => Ok(()),
    });
    if let Err(e) = sent {
        let _ = sock.write_all(e.as_bytes());
        // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(EXIT_SETUP_FAILED) }
    }
    let payload = init::Payload {
        argv: &c.argv,
        env: &c.env,
        user: if c.start == Start::Boot {
            None
        } else {
            c.user.as_ref()
        },
        chdir: c.chdir.as_deref(),
        console: c.console != Console::Pipe,
    };
    if c.start == Start::Pid2 {
        init::run(&payload, sock, forwarded);
    }
    init::reset_signals();
    let msg = init::exec(&payload);
    let _ = sock.write_all(msg.as_bytes());
    // SAFETY: as above.
    unsafe { libc::_exit(init::EXIT_EXEC_FAILED) }
}

/// Exit code of a container whose setup failed (before the payload).
const EXIT_SETUP_FAILED: i32 = 125;

/// Filesystem and isolation; returns the console's master, if any.
fn prepare(
    c: &Container,
    machine: Option<&Machine>,
    private_network: bool,
    tree: Option<&OwnedFd>,
) -> Result<Option<std::os::fd::OwnedFd>, String> {
    // --resolv-conf=auto: a private network whose DNS server rnet knows (the gateway's
    // forwarder) gets a file naming it; a booted tree with a private network asks DHCP itself.
    let generated = match machine {
        Some(m) if !m.dns.is_empty() && c.start != Start::Boot => {
            let zone = match &m.network {
                NetworkSpec::Zone(z) => Some(z.as_str()),
                _ => None,
            };
            Some(crate::netconf::resolv_conf(&m.dns, zone))
        }
        _ => None,
    };
    let etc_writable = !c.read_only;
    let resolv_conf = hostfiles::resolv_action(
        c.resolv_conf,
        &c.host,
        private_network,
        generated,
        etc_writable,
    );
    let timezone = hostfiles::timezone_action(c.timezone, &c.host, etc_writable);
    let host_localtime = c.host.path("/etc/localtime");
    let master = fs::setup(&fs::Layout {
        root: &c.root,
        ephemeral: c.ephemeral,
        read_only: c.read_only,
        private_network,
        binds: &c.binds,
        tmpfs: &c.tmpfs,
        run_host: vec![
            ("os-release", host_os_release()),
            ("container-uuid", format!("{}\n", c.uuid)),
            ("container-manager", "rnet\n".into()),
        ],
        resolv_conf,
        timezone,
        host_localtime: &host_localtime,
        console_pty: c.console != Console::Pipe,
        userns: c.userns.is_some(),
        tree,
        cgroups: c.systemd,
    })?;
    let retain = isolate::retained(private_network, c.userns.is_some()) & c.bounding;
    isolate::apply(retain, false)?;
    seccomp::install(retain)?;
    if c.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("setting no_new_privs: {e}"))?;
    }
    Ok(master)
}

/// The launcher's wait for a container's PID 1, forwarding signals (and relaying its console
/// when it has a pty). A SIGTERM sent to the launcher stops the container as nspawn does:
/// SIGRTMIN+3 to a systemd init, SIGTERM to others, SIGKILL after [`STOP_TIMEOUT`]. PID 1
/// killed by SIGHUP or SIGINT is the kernel's report of `reboot(2)` in the namespace
/// (`reboot_pid_ns()`): rebooted (133) or powered off (0).
pub fn wait(
    child: Pid,
    forwarded: &SigSet,
    systemd: bool,
    master: Option<OwnedFd>,
    mode: Console,
) -> Result<u8, String> {
    let mut wait_set = *forwarded;
    wait_set.add(Signal::SIGCHLD);
    wait_set.add(Signal::SIGWINCH);
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&wait_set), None);
    let mut relay = master
        .map(|m| console::Relay::new(m, mode, &wait_set))
        .transpose()?;
    let mut deadline: Option<Instant> = None;
    loop {
        let status = match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(u8::try_from(code & 0xff).unwrap_or(1)),
            Ok(WaitStatus::Signaled(_, Signal::SIGHUP, _)) => Some(EXIT_REBOOTED),
            Ok(WaitStatus::Signaled(_, Signal::SIGINT, _)) => Some(0),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                Some(u8::try_from(128 + sig as i32).unwrap_or(255))
            }
            Ok(_) => None,
            Err(e) => return Err(format!("waiting for the container: {e}")),
        };
        if let Some(code) = status {
            if let Some(r) = relay.as_mut() {
                r.flush();
            }
            return Ok(code);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            let _ = kill(child, Signal::SIGKILL);
            deadline = None;
            continue;
        }
        let (sig, code) = match relay.as_mut() {
            Some(r) => match r.next(left) {
                None => continue,
                Some(console::Event::Escape) => {
                    console::kill_container(child);
                    continue;
                }
                Some(console::Event::Signal(sig, code)) => (sig, code),
            },
            None => match next_signal(&wait_set, left) {
                Some(x) => x,
                None => continue,
            },
        };
        if sig == libc::SIGCHLD || sig == libc::SIGWINCH || code > 0 {
            continue;
        }
        if sig == libc::SIGTERM {
            let stop = if systemd {
                libc::SIGRTMIN() + 3
            } else {
                libc::SIGTERM
            };
            // SAFETY: kill with a pid and a signal number.
            unsafe { libc::kill(child.as_raw(), stop) };
            deadline.get_or_insert_with(|| Instant::now() + STOP_TIMEOUT);
        } else if let Ok(s) = Signal::try_from(sig) {
            let _ = kill(child, s);
        }
    }
}

/// The next of the blocked signals of `set` (number, `si_code`), waiting at most `limit`.
fn next_signal(set: &SigSet, limit: Option<Duration>) -> Option<(i32, i32)> {
    // SAFETY: plain data, filled by the kernel.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let sig = match limit {
        // SAFETY: both pointers are valid for the call.
        None => unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) },
        Some(l) => {
            let ts = libc::timespec {
                tv_sec: libc::time_t::try_from(l.as_secs()).unwrap_or(1),
                tv_nsec: libc::c_long::from(l.subsec_nanos()),
            };
            // SAFETY: all pointers are valid for the call.
            unsafe { libc::sigtimedwait(set.as_ref(), &mut info, &ts) }
        }
    };
    (sig > 0).then_some((sig, info.si_code))
}
