//! `rnet shell [USER@]NAME [CMD...]` and `rnet login NAME`: a process in a running machine, as
//! `machinectl shell` and `machinectl login` give one.
//!
//! The order: the leader's namespace files are opened (`/proc/PID/ns/*`) while the host's
//! `/proc` is still ours; the caller joins the leader's cgroup; it enters the cgroup, IPC, UTS,
//! network, PID and mount namespaces (those that differ from its own), reads the user from the
//! container's `/etc/passwd`, opens a pty in the container's devpts when its stdin and stdout
//! are terminals (owned by the user as the container maps it), and enters the user namespace
//! last (so the steps before run with the host root's rights). It forks (the child is in the
//! container's PID namespace), and the child drops to the container's capability bounding set
//! and seccomp filter, takes the pty as its controlling terminal and stdio, changes to the user
//! and execs with the container's environment. The caller relays the pty (the console's relay)
//! or leaves plain stdio to the child, forwards signals and exits with the child's code.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::registry;
use crate::container::spec::{Console, User};
use crate::container::{console, init, isolate, seccomp};

/// Namespaces entered before the pty is opened, in this order (nsenter's, the user namespace
/// held back).
const NAMESPACES: [(&str, CloneFlags); 6] = [
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Environment variables of the container's PID 1 a shell keeps (machinectl's shell gets the
/// manager's: `container=`, `PATH=`, the locale).
fn kept(var: &str) -> bool {
    let name = var.split('=').next().unwrap_or("");
    matches!(
        name,
        "container" | "container_uuid" | "PATH" | "LANG" | "LANGUAGE"
    ) || name.starts_with("LC_")
}

/// The shell's environment: PID 1's filtered, then the user's own variables and `TERM`.
pub fn environment(pid1: &[u8], user: &User, term: Option<&str>) -> Vec<String> {
    let mut env: Vec<String> = pid1
        .split(|b| *b == 0)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .filter(|v| v.contains('=') && kept(v))
        .map(str::to_owned)
        .collect();
    if !env.iter().any(|v| v.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    env.push(format!("TERM={}", term.unwrap_or("vt220")));
    env.push(format!("HOME={}", user.home));
    env.push(format!("SHELL={}", user.shell));
    env.push(format!("USER={}", user.name));
    env.push(format!("LOGNAME={}", user.name));
    env
}

/// `[USER@]NAME`.
pub fn split_target(target: &str) -> (Option<&str>, &str) {
    match target.split_once('@') {
        Some((u, n)) if !u.is_empty() => (Some(u), n),
        Some((_, n)) => (None, n),
        None => (None, target),
    }
}

/// Maps `id` through a `uid_map`/`gid_map` text (inside → outside); the id itself without a
/// map line that covers it (no user namespace).
fn map_id(map: &str, id: u32) -> Option<u32> {
    for l in map.lines() {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [inside, outside, count] = f[..]
            && u64::from(id) >= inside
            && u64::from(id) < inside + count
        {
            return u32::try_from(outside + u64::from(id) - inside).ok();
        }
    }
    None
}

/// What runs: a command, the user's shell, or the tree's `login`.
pub enum What {
    Command(Vec<String>),
    Shell,
    Login,
}

fn ns_ino(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Runs `what` in machine `name` as `who` (default root); returns the exit code.
pub fn run(runtime_dir: &Path, name: &str, who: Option<&str>, what: What) -> Result<u8, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("entering a machine needs root".into());
    }
    let mut entry =
        registry::get(runtime_dir, name).ok_or_else(|| format!("no machine {name} is running"))?;
    // A machine still starting gets a moment to have its root in place.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !entry.ready {
        if std::time::Instant::now() > end {
            return Err(format!("machine {name} is still starting"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        entry = registry::get(runtime_dir, name)
            .ok_or_else(|| format!("no machine {name} is running"))?;
    }
    let pid = entry.leader;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let on_tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
        && nix::unistd::isatty(std::io::stdout()).unwrap_or(false);
    if matches!(what, What::Login) && !on_tty {
        return Err("rnet login needs a terminal (use rnet shell for a command)".into());
    }
    // Everything of the leader's is opened first: its /proc goes out of reach on entering.
    let mut entered = Vec::new();
    for (ns, flag) in NAMESPACES {
        let p = proc.join("ns").join(ns);
        if ns_ino(&p) == ns_ino(&Path::new("/proc/self/ns").join(ns)) {
            continue;
        }
        let f = File::open(&p).map_err(|e| format!("opening {}: {e}", p.display()))?;
        entered.push((ns, flag, f));
    }
    let user_ns = proc.join("ns/user");
    let userns = if ns_ino(&user_ns) == ns_ino(Path::new("/proc/self/ns/user")) {
        None
    } else {
        Some(File::open(&user_ns).map_err(|e| format!("opening {}: {e}", user_ns.display()))?)
    };
    let private_network = entered.iter().any(|(ns, ..)| *ns == "net");
    let pid1_env = std::fs::read(proc.join("environ")).unwrap_or_default();
    let uid_map = std::fs::read_to_string(proc.join("uid_map")).unwrap_or_default();
    let gid_map = std::fs::read_to_string(proc.join("gid_map")).unwrap_or_default();
    if !registry::alive(entry.leader, entry.leader_start) {
        return Err(format!("no machine {name} is running"));
    }
    // Its resources are counted (and limited) with the machine's.
    if let Ok(cg) = crate::cgroup::Cgroup::of_pid(pid) {
        let _ = cg.add(std::process::id());
    }
    for (ns, flag, f) in &entered {
        setns(f, *flag).map_err(|e| format!("entering the {ns} namespace of {name}: {e}"))?;
    }
    let _ = std::env::set_current_dir("/");
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let who = who.unwrap_or("root");
    let user = User::find(who, &read("/etc/passwd"), &read("/etc/group"))
        .or_else(|| {
            // A tree without a user database still has root.
            (who == "root" || who == "0").then(|| User {
                name: "root".into(),
                uid: 0,
                gid: 0,
                groups: Vec::new(),
                home: "/root".into(),
                shell: "/bin/sh".into(),
            })
        })
        .ok_or_else(|| format!("user {who:?} is not in the /etc/passwd of machine {name}"))?;
    let pty = if on_tty {
        let (master, peer) = console::open_pty(Path::new("/dev/pts"))?;
        // Owned by the user as the container maps it (host root's would be nobody's inside).
        let (uid, gid) = if userns.is_some() {
            (map_id(&uid_map, user.uid), map_id(&gid_map, user.gid))
        } else {
            (Some(user.uid), Some(user.gid))
        };
        if let (Some(u), Some(g)) = (uid, gid) {
            let _ = std::os::unix::fs::chown(&peer, Some(u), Some(g));
        }
        Some((master, peer))
    } else {
        None
    };
    if let Some(u) = &userns {
        setns(u, CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("entering the user namespace of {name}: {e}"))?;
    }
    let argv: Vec<String> = match what {
        What::Command(c) => c,
        What::Shell => vec![user.shell.clone(), "-l".into()],
        What::Login => {
            let login = ["/bin/login", "/usr/bin/login", "/sbin/login"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .ok_or_else(|| format!("machine {name} has no login program"))?;
            vec![login.to_owned(), "-p".into()]
        }
    };
    let term = std::env::var("TERM").ok();
    let env = environment(&pid1_env, &user, term.as_deref());
    let argv = cstrings(&argv)?;
    let env = cstrings(&env)?;
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGWINCH,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| format!("blocking signals: {e}"))?;
    // SAFETY: the launcher is single-threaded.
    match unsafe { fork() }.map_err(|e| format!("fork failed: {e}"))? {
        ForkResult::Child => {
            let login = argv[0].to_bytes().ends_with(b"/login");
            let msg = child(
                &argv,
                &env,
                (!login).then_some(&user),
                pty.as_ref().map(|(_, p)| p.as_path()),
                private_network,
                userns.is_some(),
            );
            eprintln!("rnet: {msg}");
            // SAFETY: ends the forked child without the parent's exit handlers.
            unsafe { libc::_exit(init::EXIT_EXEC_FAILED) }
        }
        ForkResult::Parent { child } => wait(child, pty.map(|(m, _)| m), &set),
    }
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, String> {
    v.iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| format!("{a:?} contains a NUL byte")))
        .collect()
}

/// The child: terminal, isolation, user, exec. Returns the failure.
fn child(
    argv: &[CString],
    env: &[CString],
    user: Option<&User>,
    pty: Option<&Path>,
    private_network: bool,
    userns: bool,
) -> String {
    init::reset_signals();
    if let Some(p) = pty {
        if let Err(e) = nix::unistd::setsid() {
            return format!("setsid: {}", e.desc());
        }
        let tty = match File::options().read(true).write(true).open(p) {
            Ok(t) => t,
            Err(e) => return format!("opening {}: {e}", p.display()),
        };
        // SAFETY: plain ioctl and dup2 on descriptors we own.
        unsafe {
            libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0);
            for fd in 0..3 {
                libc::dup2(tty.as_raw_fd(), fd);
            }
        }
    }
    // As the container's own processes: nspawn's capabilities and seccomp filter.
    let retain = isolate::retained(private_network, userns) & isolate::bounding_set();
    if let Err(e) = isolate::apply(retain, false).and_then(|()| seccomp::install(retain)) {
        return e;
    }
    init::exec(&init::Payload {
        argv,
        env,
        user,
        chdir: None,
        console: false,
    })
}

/// The caller: relays the pty (if any), forwards signals, returns the child's exit code.
fn wait(child: Pid, master: Option<OwnedFd>, set: &SigSet) -> Result<u8, String> {
    let mut relay = master
        .map(|m| console::Relay::new(m, Console::Interactive, set))
        .transpose()?;
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                if let Some(r) = relay.as_mut() {
                    r.flush();
                }
                return Ok(u8::try_from(code & 0xff).unwrap_or(1));
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                if let Some(r) = relay.as_mut() {
                    r.flush();
                }
                return Ok(u8::try_from(128 + sig as i32).unwrap_or(255));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("waiting for the shell: {e}")),
        }
        let (sig, code) = match relay.as_mut() {
            Some(r) => match r.next(None) {
                None => continue,
                Some(console::Event::Escape) => {
                    let _ = kill(child, Signal::SIGKILL);
                    continue;
                }
                Some(console::Event::Signal(sig, code)) => (sig, code),
            },
            None => match set.wait() {
                Ok(s) => (s as i32, 0),
                Err(_) => continue,
            },
        };
        if sig == libc::SIGCHLD || sig == libc::SIGWINCH || code > 0 {
            continue;
        }
        if let Ok(s) = Signal::try_from(sig) {
            let _ = kill(child, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_pid1s_filtered_plus_the_users() {
        let user = User {
            name: "web".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![],
            home: "/home/web".into(),
            shell: "/bin/sh".into(),
        };
        let pid1 = b"container=rnet\0PATH=/bin\0SECRET=x\0LC_ALL=C\0TERM=dumb\0";
        assert_eq!(
            environment(pid1, &user, Some("xterm")),
            [
                "container=rnet",
                "PATH=/bin",
                "LC_ALL=C",
                "TERM=xterm",
                "HOME=/home/web",
                "SHELL=/bin/sh",
                "USER=web",
                "LOGNAME=web"
            ]
        );
        assert!(environment(b"", &user, None).contains(&"TERM=vt220".to_owned()));
    }

    #[test]
    fn targets_and_id_maps() {
        assert_eq!(split_target("web@box"), (Some("web"), "box"));
        assert_eq!(split_target("box"), (None, "box"));
        assert_eq!(split_target("@box"), (None, "box"));
        let map = "         0     655360      65536\n";
        assert_eq!(map_id(map, 0), Some(655360));
        assert_eq!(map_id(map, 1000), Some(656360));
        assert_eq!(map_id(map, 70000), None);
    }
}
