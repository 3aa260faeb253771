//! `rnet run`: validate, then perform the side effects in a fixed order
//! (`docs/architecture.md#a-container-from-rnet-run-to-exec`).
//!
//! 1. Host mode: exec the command in place; nothing else to do.
//! 2. Private network: block the signals we forward, fork. The child enters new network and UTS
//!    namespaces, sets the hostname, reports ready and waits for its network configuration.
//! 3. The parent opens the child's network namespace and (for a veth) asks rnetd to attach it,
//!    then hands the answer to the child, which configures `lo` and `host0`, binds a resolv.conf
//!    naming its DNS servers over `/etc/resolv.conf` in a mount namespace of its own, and execs.
//! 4. The parent forwards signals, waits, and exits with the payload's code; rnetd tears the
//!    networking down when it sees the container's process end (its pidfd watch).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use api::{
    AttachRequest, Client, ExtraLink, InitKind, Machine, MachineName, NetworkSpec, PortSpec,
    Request,
};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, execvp, fork, sethostname};

use crate::cli::RunArgs;
use crate::container::spec::{Console, Start};
use crate::container::{self, Container};
use crate::machines::registry;
use crate::netconf::{
    MountNs, bind_resolv_conf, configure, expects_resolv_conf, lo_up, write_resolv_conf,
};
use crate::timing;

/// Exit code when the command cannot be executed (as shells use).
const EXIT_EXEC_FAILED: u8 = 127;
/// Exit code when setting up the container failed after the fork.
const EXIT_SETUP_FAILED: u8 = 125;

/// The validated plan of a run (`Env::new` in the jailer's terms).
struct Plan {
    machine: MachineName,
    network: Network,
    ports: Vec<PortSpec>,
    links: Vec<ExtraLink>,
    properties: Vec<crate::cgroup::Property>,
    /// `--keep-unit`: no cgroup of its own; it stays in the launcher's.
    keep_unit: bool,
    command: Vec<CString>,
    /// `-D`: a container in an OS tree.
    container: Option<Container>,
    ipv6: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Network {
    Host,
    Private,
    /// A link attached by rnetd.
    Attached(NetworkSpec),
}

impl Plan {
    fn new(args: RunArgs, runtime_dir: &std::path::Path) -> Result<Self, String> {
        let command = args
            .command
            .iter()
            .map(|a| {
                CString::new(a.as_bytes())
                    .map_err(|_| format!("argument {a:?} contains a NUL byte"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let machine = match (&args.machine, &args.directory) {
            (Some(m), _) => m.clone(),
            (None, Some(dir)) => {
                MachineName::new(&Container::default_machine(dir)).map_err(|e| e.to_string())?
            }
            (None, None) => match args.command.first() {
                Some(cmd) => default_machine_name(cmd)?,
                None => return Err("a command to run is needed (or --directory)".into()),
            },
        };
        let container = match &args.directory {
            Some(_) => Some(Container::new(&args, machine.as_str(), runtime_dir)?),
            None => None,
        };
        // nspawn's rules (`parse_argv()` and `verify_arguments()` in src/nspawn/nspawn.c,
        // systemd-nspawn(1)): bridge and zone exclude each other and imply a veth.
        let network = match (args.network_zone, args.network_bridge) {
            (Some(_), Some(_)) => {
                return Err("--network-bridge and --network-zone are mutually exclusive".into());
            }
            (Some(z), None) => Network::Attached(NetworkSpec::Zone(z)),
            (None, Some(b)) => Network::Attached(NetworkSpec::Bridge(b.into())),
            (None, None) if args.network_veth => Network::Attached(NetworkSpec::Veth),
            (None, None) => Network::Host,
        };
        let mut links = Vec::new();
        links.extend(
            args.network_macvlan
                .into_iter()
                .map(|p| ExtraLink::Macvlan {
                    parent: p.first.into(),
                    name: p.second.map(String::from),
                }),
        );
        links.extend(args.network_ipvlan.into_iter().map(|p| ExtraLink::Ipvlan {
            parent: p.first.into(),
            name: p.second.map(String::from),
        }));
        links.extend(
            args.network_interface
                .into_iter()
                .map(|p| ExtraLink::Interface {
                    name: p.first.into(),
                    rename: p.second.map(String::from),
                }),
        );
        links.extend(
            args.network_veth_extra
                .into_iter()
                .map(|p| ExtraLink::VethExtra {
                    host: p.first.into(),
                    container: p.second.map(String::from),
                }),
        );
        // Any extra link implies a private network (as nspawn's `parse_argv()`: each of these
        // options sets `arg_private_network`).
        let network = match network {
            Network::Host if !links.is_empty() => Network::Attached(NetworkSpec::None),
            Network::Host if args.private_network => Network::Private,
            other => other,
        };
        if !args.ports.is_empty()
            && !matches!(
                network,
                Network::Attached(
                    NetworkSpec::Veth | NetworkSpec::Zone(_) | NetworkSpec::Bridge(_)
                )
            )
        {
            return Err(
                "--port needs --network-veth (a private network with a link to publish to)".into(),
            );
        }
        if network == Network::Host && container.is_none() && !args.properties.is_empty() {
            return Err(
                "--property needs a container process of its own (--private-network or a network option)".into(),
            );
        }
        Ok(Self {
            machine,
            network,
            ports: args.ports,
            links,
            properties: args.properties,
            keep_unit: args.keep_unit,
            command,
            container,
            ipv6: args.ipv6,
        })
    }
}

impl Plan {
    /// The registry entry of this run, its leader `leader` waited for by `launcher`.
    fn entry(&self, leader: u32, launcher: u32) -> registry::Entry {
        let network = match &self.network {
            Network::Host => "host".to_owned(),
            Network::Private => "private".to_owned(),
            Network::Attached(NetworkSpec::Veth) => "veth".to_owned(),
            Network::Attached(NetworkSpec::Zone(z)) => format!("zone:{z}"),
            Network::Attached(NetworkSpec::Bridge(b)) => format!("bridge:{b}"),
            Network::Attached(NetworkSpec::None) => "links".to_owned(),
        };
        let env_pid = |var| std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok());
        registry::Entry {
            name: self.machine.to_string(),
            leader,
            leader_start: registry::start_time(leader).unwrap_or_default(),
            launcher,
            supervisor: env_pid(crate::machines::SUPERVISOR_ENV),
            image: self.container.as_ref().map(|c| c.root.clone()),
            class: if self.container.is_some() {
                "container"
            } else {
                "host"
            }
            .to_owned(),
            network,
            started: registry::now(),
            unit: registry::own_unit(),
            systemd: self.container.as_ref().is_some_and(|c| c.systemd),
            log: std::env::var_os(crate::machines::LOG_ENV).map(Into::into),
            ready: false,
            keep_unit: self.keep_unit,
        }
    }
}

/// Refuses a name another running machine has (before rnetd attaches anything for it).
fn check_not_running(runtime_dir: &std::path::Path, machine: &MachineName) -> Result<(), String> {
    match registry::get(runtime_dir, machine.as_str()) {
        Some(e) => Err(registry::RegistryError::Running { name: e.name }.to_string()),
        None => Ok(()),
    }
}

/// The command's base name, reduced to hostname characters, plus four random hex digits.
fn default_machine_name(cmd: &str) -> Result<MachineName, String> {
    let base = cmd.rsplit('/').next().unwrap_or(cmd);
    let mut stem: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    stem = stem.trim_matches('-').to_owned();
    if stem.is_empty() {
        stem = "rnet".into();
    }
    let mut r = [0u8; 2];
    api::fsutil::random_bytes(&mut r).map_err(|e| e.to_string())?;
    MachineName::new(&format!("{stem}-{:02x}{:02x}", r[0], r[1])).map_err(|e| e.to_string())
}

/// Runs the command; returns the exit code to leave with.
pub fn run(
    mut args: RunArgs,
    client: &Client,
    runtime_dir: &std::path::Path,
) -> Result<u8, String> {
    let mode = args.settings;
    for warning in crate::settings::apply(&mut args, mode, Container::default_machine)? {
        eprintln!("rnet: warning: {warning}");
    }
    crate::properties::apply(&mut args, Container::default_machine)?;
    if args.keep_unit && !args.properties.is_empty() {
        // The command line's --property conflicts already; these came from the image's saved
        // properties or its settings file.
        let names: Vec<String> = args.properties.iter().map(ToString::to_string).collect();
        return Err(format!(
            "--keep-unit runs the machine in the caller's cgroup, where its properties ({}, saved \
             for its image or in its settings file) cannot apply",
            names.join(" ")
        ));
    }
    let plan = Plan::new(args, runtime_dir)?;
    check_not_running(runtime_dir, &plan.machine)?;
    if plan.network == Network::Host && plan.container.is_none() {
        // The process itself is the machine; the entry goes stale (and is cleaned by the next
        // reader) when it ends. Only root may write the runtime directory.
        let me = std::process::id();
        let mut entry = plan.entry(me, me);
        entry.ready = true;
        if let Err(e) = registry::register(runtime_dir, &entry)
            && nix::unistd::geteuid().is_root()
        {
            return Err(e.to_string());
        }
        return Err(exec_error(&plan.command));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(if plan.container.is_some() {
            "a container needs root (creating namespaces and mounts)".into()
        } else {
            "a private network needs root (creating namespaces and links)".into()
        });
    }
    if matches!(plan.network, Network::Attached(_)) {
        // Fail before forking anything when the daemon is not there.
        client.ping().map_err(|e| e.to_string())?;
        timing::mark("rnetd answered a ping");
    }
    // Signals we forward are blocked so they queue for sigwaitinfo() instead of killing us.
    let forwarded = forwarded_signals();
    let mut mask = forwarded;
    mask.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| format!("blocking signals: {e}"))?;
    let (parent_end, child_end) =
        UnixStream::pair().map_err(|e| format!("creating a socket pair: {e}"))?;
    let with_userns = with_userns(&plan);
    if plan.container.is_some() && !with_userns {
        // The child is PID 1 of a new PID namespace; the launcher itself stays where it is and
        // forks nothing else.
        unshare(CloneFlags::CLONE_NEWPID)
            .map_err(|e| format!("creating the container's PID namespace: {e}"))?;
    }
    let forked = if with_userns {
        // The user namespace and the PID namespace in one clone, so the PID namespace (and
        // every namespace the child creates next) is owned by the user namespace: its root may
        // mount /proc, configure its network, and so on.
        // SAFETY: the launcher is single-threaded (a clone without a stack is a fork).
        unsafe { clone_userns() }
    } else {
        // SAFETY: the launcher is single-threaded, so the child may allocate and run arbitrary
        // code after fork.
        unsafe { fork() }.map_err(|e| format!("fork failed: {e}"))
    };
    match forked? {
        ForkResult::Child => {
            drop(parent_end);
            child(plan, client, child_end, &forwarded)
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            timing::mark("forked");
            parent(plan, client, parent_end, child, &forwarded, runtime_dir)
        }
    }
}

/// `fork()` into new user and PID namespaces (`clone(CLONE_NEWUSER | CLONE_NEWPID)`).
///
/// # Safety
/// As `fork()`: the caller is single-threaded.
unsafe fn clone_userns() -> Result<ForkResult, String> {
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::SIGCHLD;
    // SAFETY: a clone without a new stack behaves as fork(); the caller is single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_ulong::try_from(flags).unwrap_or(0),
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match r {
        0 => Ok(ForkResult::Child),
        r if r > 0 => Ok(ForkResult::Parent {
            child: Pid::from_raw(i32::try_from(r).unwrap_or(-1)),
        }),
        _ => Err(format!(
            "creating the container's user and PID namespaces: {}",
            std::io::Error::last_os_error()
        )),
    }
}

fn forwarded_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        s.add(sig);
    }
    s
}

/// What the launcher sends the child once the child's namespaces are configured on the host
/// side, the last message before the child goes on alone.
#[derive(serde::Serialize, serde::Deserialize)]
struct Setup {
    /// The machine rnetd attached (`None` without an attached network).
    machine: Option<Machine>,
    /// The v1 `tasks` files the child writes `0` to (itself) to enter its cgroup. A process
    /// moved by another, through `cgroup.procs`, takes the kernel's `cgroup_threadgroup_rwsem`
    /// for writing, which waits for an RCU grace period unless another move happened within
    /// one: 6.5 to 31.5 ms per launch here (`docs/benchmarks.md`, item 23). A thread moving
    /// itself through `tasks` cannot exit or exec meanwhile, so the kernel skips that lock,
    /// and a child that has not made a thread yet is the whole process. Empty when the
    /// launcher moved the child itself (cgroup v2, a user namespace's child, no cgroup).
    cgroup: Vec<std::path::PathBuf>,
    /// Where the child of a machine without `-D` writes its resolv.conf, to bind it over
    /// `/etc/resolv.conf` ([`crate::netconf`]; removed with the registry entry).
    resolv_conf: Option<std::path::PathBuf>,
}

/// Whether the child sends its own Attach to rnetd (a machine without `-D` on an attached
/// network): it has its network namespace at hand as soon as it made it and reads the answer
/// itself, instead of each passing through the launcher (two wake-ups of another process,
/// about 0.6 ms of a start here; `docs/benchmarks.md`, item 30). The launcher still registers
/// the machine first: it tells the child to go (and the child's pid on the host) once the
/// entry is written. A container's launcher sends it (its child is PID 1 of its own PID
/// namespace, maybe in a user namespace).
fn child_attaches(plan: &Plan) -> bool {
    plan.container.is_none() && matches!(plan.network, Network::Attached(_))
}

/// Sends the Attach of `plan`'s machine, whose leader is `pid` on the host and whose network
/// namespace is at `netns`; the answer is read later ([`attached`]).
fn send_attach(
    client: &Client,
    plan: &Plan,
    spec: &NetworkSpec,
    netns: &str,
    pid: u32,
) -> Result<api::Pending, String> {
    let netns =
        File::open(netns).map_err(|e| format!("opening the container's network namespace: {e}"))?;
    let req = Request::Attach(AttachRequest {
        machine: plan.machine.clone(),
        pid,
        network: spec.clone(),
        ports: plan.ports.clone(),
        links: plan.links.clone(),
        held: None,
        init: if plan.container.as_ref().is_some_and(|c| c.systemd) {
            InitKind::Systemd
        } else {
            InitKind::Other
        },
        ipv6: plan.ipv6,
    });
    client
        .send(&req, Some(netns.as_fd()))
        .map_err(|e| e.to_string())
}

/// rnetd's answer to an Attach: the machine, or the error to report.
fn attached(answer: Result<api::Response, api::ClientError>) -> Result<Machine, String> {
    match answer {
        Ok(api::Response::Attached(m)) => Ok(m),
        Ok(other) => Err(format!("rnetd sent an unexpected answer: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The child: never returns.
fn child(plan: Plan, client: &Client, mut sock: UnixStream, forwarded: &SigSet) -> ! {
    let private = plan.network != Network::Host;
    let mut tree = None;
    let result = (|| -> Result<Option<Machine>, String> {
        // Die with the launcher: if it is SIGKILLed, the container goes too, and rnetd's pidfd
        // watch cleans up its links.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("prctl: {e}"))?;
        let mut flags = CloneFlags::CLONE_NEWUTS;
        if private {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        if plan.container.is_some() {
            flags |= CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC;
        }
        unshare(flags).map_err(|e| format!("creating the container's namespaces: {e}"))?;
        timing::mark("child: namespaces made");
        let hostname = plan
            .container
            .as_ref()
            .map_or(plan.machine.as_str(), |c| c.hostname.as_str());
        sethostname(hostname).map_err(|e| format!("setting the hostname: {e}"))?;
        sock.write_all(b"R")
            .map_err(|e| format!("signalling the launcher: {e}"))?;
        let pending = match &plan.network {
            Network::Attached(spec) if child_attaches(&plan) => {
                // The launcher registered the machine: our pid on the host is the signal.
                let mut go = [0u8; 4];
                sock.read_exact(&mut go)
                    .map_err(|e| format!("waiting for the launcher: {e}"))?;
                let pid = u32::from_le_bytes(go);
                let pending = send_attach(client, &plan, spec, "/proc/self/ns/net", pid)?;
                timing::mark("child: attach sent");
                Some(pending)
            }
            _ => None,
        };
        if plan.container.as_ref().is_some_and(|c| c.userns.is_some()) {
            // The launcher wrote our maps and made the tree ours (or an idmapped mount of it).
            tree = container::userns::recv_tree(&sock)?;
            container::userns::become_root()?;
        }
        // lo and our mount namespace while rnetd attaches us.
        let mut rtnl = if private { Some(lo_up()?) } else { None };
        timing::mark("child: lo up");
        let mount_ns = match &plan.network {
            Network::Attached(spec) if child_attaches(&plan) && expects_resolv_conf(spec) => {
                let ns = MountNs::enter()?;
                timing::mark("child: mount namespace made");
                Some(ns)
            }
            _ => None,
        };
        let mut cfg = Vec::new();
        sock.read_to_end(&mut cfg)
            .map_err(|e| format!("reading the network configuration: {e}"))?;
        let Setup {
            machine,
            cgroup,
            resolv_conf,
        } = serde_json::from_slice(&cfg)
            .map_err(|e| format!("launcher sent a bad configuration: {e}"))?;
        timing::mark("child: configuration received");
        let machine = match pending {
            Some(pending) => {
                let m = attached(pending.answer())?;
                timing::mark("child: attach answered");
                Some(m)
            }
            None => machine,
        };
        for tasks in &cgroup {
            // Our only thread, by itself: see `Setup::cgroup`.
            std::fs::write(tasks, "0")
                .map_err(|e| format!("entering the cgroup {}: {e}", tasks.display()))?;
        }
        timing::mark("child: in its cgroup");
        if plan.container.as_ref().is_some_and(|c| c.systemd) {
            // The launcher placed us in our cgroups: they become the roots of our hierarchies.
            container::cgroupfs::unshare_cgroupns()?;
        }
        let Some(c) = &plan.container else {
            if let Some(rtnl) = &mut rtnl {
                configure(rtnl, machine.as_ref())?;
            }
            timing::mark("child: host0 configured");
            let written = match (&machine, &resolv_conf) {
                (Some(m), Some(path)) if write_resolv_conf(m, path)? => Some(path.as_path()),
                _ => None,
            };
            bind_resolv_conf(written, mount_ns)?;
            timing::mark("child: resolv.conf bound");
            return Ok(machine);
        };
        if let Some(rtnl) = &mut rtnl {
            // A booted tree's own network manager configures host0 (rnetd's DHCP server gives
            // it the same address); lo is ours to bring up, as nspawn does.
            let own = if c.start == Start::Boot {
                None
            } else {
                machine.as_ref()
            };
            configure(rtnl, own)?;
        }
        Ok(machine)
    })();
    let machine = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = sock.write_all(e.as_bytes());
            // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
            unsafe { libc::_exit(i32::from(EXIT_SETUP_FAILED)) }
        }
    };
    if let Some(c) = &plan.container {
        container::enter(c, machine.as_ref(), private, tree.as_ref(), sock, forwarded);
    }
    container::init::reset_signals();
    timing::mark("child: exec");
    let err = exec_error(&plan.command);
    // exec failed: tell the parent (the socket closes on a successful exec, CLOEXEC).
    let _ = sock.write_all(err.as_bytes());
    // SAFETY: as above.
    unsafe { libc::_exit(i32::from(EXIT_EXEC_FAILED)) }
}

/// execvp; returns only on failure, with the message to print.
fn exec_error(command: &[CString]) -> String {
    let Err(e) = execvp(&command[0], command);
    format!(
        "cannot execute {}: {}",
        command[0].to_string_lossy(),
        e.desc()
    )
}

fn parent(
    plan: Plan,
    client: &Client,
    mut sock: UnixStream,
    child: Pid,
    forwarded: &SigSet,
    runtime_dir: &std::path::Path,
) -> Result<u8, String> {
    let mut cgroup_slot = None;
    let cgroup = &mut cgroup_slot;
    let mut systemd_cgroups_slot = None;
    let systemd_cgroups = &mut systemd_cgroups_slot;
    let mut self_move_slot = Vec::new();
    let self_move = &mut self_move_slot;
    let leader = u32::try_from(child.as_raw()).unwrap_or_default();
    // The entry registered for this run, marked ready later.
    let mut registered_slot: Option<registry::Entry> = None;
    let registered = &mut registered_slot;
    let setup = (|| -> Result<Option<Machine>, String> {
        // Registered before rnetd attaches it (so a listing never shows the attachment without
        // the entry), ready once the payload runs; while the child makes its namespaces.
        let entry = plan.entry(leader, std::process::id());
        registry::register(runtime_dir, &entry).map_err(|e| e.to_string())?;
        *registered = Some(entry);
        timing::mark("registered");
        if child_attaches(&plan) {
            sock.write_all(&leader.to_le_bytes())
                .map_err(|_| child_error(&mut sock, "the container process died during setup"))?;
        }
        let mut ready = [0u8; 1];
        if sock.read_exact(&mut ready).is_err() {
            return Err(child_error(
                &mut sock,
                "the container process died during setup",
            ));
        }
        timing::mark("child ready");
        if let Some(c) = &plan.container
            && let Some(u) = &c.userns
        {
            let tree = container::userns::prepare(u, &c.root, child)?;
            container::userns::send_tree(&sock, tree.as_ref())?;
        }
        // The attach is sent first and its answer read last: the cgroup is made meanwhile,
        // and where this process still moves the child (cgroup v2, a user namespace's child;
        // see `Setup::cgroup`), that move's RCU grace period overlaps rnetd's work.
        let pending = match &plan.network {
            Network::Attached(spec) if !child_attaches(&plan) => {
                let netns = format!("/proc/{child}/ns/net");
                let pending = send_attach(client, &plan, spec, &netns, leader)?;
                timing::mark("attach sent");
                Some(pending)
            }
            _ => None,
        };
        // On an error below the child is killed: rnetd's pidfd watch removes what it attached.
        if !plan.keep_unit {
            *cgroup = container_cgroup(&plan, child, !with_userns(&plan), self_move)?;
        }
        if let Some(c) = &plan.container
            && c.systemd
        {
            let owner = c.userns.as_ref().map(|u| u.shift);
            *systemd_cgroups = Some(container::cgroupfs::SystemdCgroups::create(
                plan.machine.as_str(),
                child.as_raw(),
                owner,
            )?);
        }
        timing::mark("cgroup made");
        let Some(pending) = pending else {
            return Ok(None);
        };
        let m = attached(pending.answer())?;
        timing::mark("attach answered");
        Ok(Some(m))
    })();
    let machine = match setup {
        Ok(m) => m,
        Err(e) => {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            if let Some(cg) = &cgroup_slot {
                cg.remove();
            }
            if registered_slot.is_some() {
                registry::unregister(runtime_dir, plan.machine.as_str(), leader);
            }
            return Err(e);
        }
    };
    let cfg = serde_json::to_vec(&Setup {
        machine,
        cgroup: self_move_slot,
        resolv_conf: child_attaches(&plan).then(|| registry::resolv_conf_path(runtime_dir, leader)),
    })
    .unwrap_or_default();
    let sent = sock
        .write_all(&cfg)
        .and_then(|()| sock.shutdown(Shutdown::Write));
    let mut report = String::new();
    // A container's console: the child passes the pty's master before it execs.
    let mut master = None;
    if sent.is_ok()
        && let Some(c) = &plan.container
        && c.console != Console::Pipe
    {
        match container::console::recv_master(&sock) {
            Ok(m) => master = Some(m),
            Err(text) => report = text,
        }
    }
    let mut rest = String::new();
    let _ = sock.read_to_string(&mut rest);
    report.push_str(&rest);
    if sent.is_err() && report.is_empty() {
        report = "the container process died during setup".into();
    }
    // Ready once the payload runs (the socket closed on its exec) and is networked: `rnet
    // start` waits for this, and `rnet shell` finds the container's root in place.
    if report.is_empty()
        && let Some(entry) = &mut registered_slot
    {
        entry.ready = true;
        if let Err(e) = registry::update(runtime_dir, entry) {
            eprintln!("rnet: warning: {e}");
        }
    }
    // Leftover cgroups of killed launchers are looked for at most once a minute, off the
    // start's path (the look reads every machine's cgroup): in a thread while the payload runs
    // (a launcher that ends first leaves the rest to the next look), or after the payload where
    // no thread can be made (a launcher that made a PID namespace for its child).
    let mut sweep_after = false;
    if cgroup_slot.is_some() && crate::cgroup::sweep_due(&runtime_dir.join("cgroups-swept")) {
        sweep_after = std::thread::Builder::new()
            .spawn(crate::cgroup::sweep_stale_all)
            .is_err();
    }
    timing::mark("payload runs");
    let code = match &plan.container {
        Some(c) => container::wait(child, forwarded, c.systemd, master, c.console)?,
        None => wait_forwarding(child, forwarded)?,
    };
    timing::mark("payload exited");
    // No Detach: rnetd watches the container through a pidfd and tears its networking down
    // once it has exited (a run with the same name or ports right after has it done first),
    // so the launcher exits with the payload's code without waiting for the teardown.
    if let Some(cg) = &cgroup_slot {
        cg.remove();
    }
    if registered_slot.is_some() {
        registry::unregister(runtime_dir, plan.machine.as_str(), leader);
    }
    if sweep_after {
        crate::cgroup::sweep_stale_all();
    }
    timing::mark("cleaned up");
    if !report.is_empty() {
        return Err(report);
    }
    Ok(code)
}

/// Whether the child runs in a user namespace of its own (it cannot write the host's cgroup
/// files then).
fn with_userns(plan: &Plan) -> bool {
    plan.container.as_ref().is_some_and(|c| c.userns.is_some())
}

/// The container's own cgroup `rnet-NAME` (`launcher/src/cgroup.rs`) with the properties
/// applied, before the payload runs. With `by_child` on cgroup v1 the `tasks` files the child
/// enters by itself go to `self_move` (see [`Setup::cgroup`]); otherwise the child is moved
/// here. Without properties a machine that cannot get a cgroup (no hierarchy mounted) runs
/// without one.
fn container_cgroup(
    plan: &Plan,
    child: Pid,
    by_child: bool,
    self_move: &mut Vec<std::path::PathBuf>,
) -> Result<Option<crate::cgroup::Cgroup>, String> {
    let pid = u32::try_from(child.as_raw()).unwrap_or_default();
    let made = crate::cgroup::Cgroup::create(plan.machine.as_str()).and_then(|cg| {
        match cg.thread_files().filter(|_| by_child) {
            Some(files) => *self_move = files,
            None => cg.add(pid)?,
        }
        Ok(cg)
    });
    let cg = match made {
        Ok(cg) => cg,
        Err(_) if plan.properties.is_empty() => return Ok(None),
        Err(e) => return Err(format!("creating the container's cgroup: {e}")),
    };
    match cg.apply(&plan.properties) {
        Ok(notes) => {
            for n in notes {
                eprintln!("rnet: note: {n}");
            }
            Ok(Some(cg))
        }
        Err(e) => {
            // The child is killed by the caller; the directory must not outlive it.
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            cg.remove();
            Err(format!("applying --property: {e}"))
        }
    }
}

/// The child's error message, or `fallback` when it sent none.
fn child_error(sock: &mut UnixStream, fallback: &str) -> String {
    let mut msg = String::new();
    let _ = sock.read_to_string(&mut msg);
    if msg.is_empty() {
        fallback.to_owned()
    } else {
        msg
    }
}

/// Waits for the child, forwarding the signals others send us; returns its exit code
/// (128 + signal number when it was killed).
fn wait_forwarding(child: Pid, forwarded: &SigSet) -> Result<u8, String> {
    let mut wait_set = *forwarded;
    wait_set.add(Signal::SIGCHLD);
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(u8::try_from(code & 0xff).unwrap_or(1)),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Ok(u8::try_from(128 + sig as i32).unwrap_or(255));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("waiting for the container: {e}")),
        }
        container::init::forward_next_signal(&wait_set, child);
    }
}
