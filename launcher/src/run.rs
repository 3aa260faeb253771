//! `rnet run`: validate, then perform the side effects in a fixed order
//! (`docs/architecture.md#a-container-from-rnet-run-to-exec`).
//!
//! 1. Host mode: exec the command in place; nothing else to do.
//! 2. Private network: block the signals we forward, fork. The child enters new network and UTS
//!    namespaces, sets the hostname, reports ready and waits for its network configuration.
//! 3. The parent opens the child's network namespace and (for a veth) asks rnetd to attach it,
//!    then hands the answer to the child, which configures `lo` and `host0`, binds a resolv.conf
//!    naming its DNS servers over `/etc/resolv.conf` in a mount namespace of its own, and execs.
//! 4. The parent forwards signals, waits, sends Detach, and exits with the payload's code.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use api::{
    AttachRequest, Client, ClientError, ErrorKind, ExtraLink, Machine, MachineName, NetworkSpec,
    PortSpec, Request,
};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, execvp, fork, sethostname};

use crate::cli::RunArgs;
use netlink_sync::BlockingRtnl;

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
    command: Vec<CString>,
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
    fn new(args: RunArgs) -> Result<Self, String> {
        let command = args
            .command
            .iter()
            .map(|a| {
                CString::new(a.as_bytes())
                    .map_err(|_| format!("argument {a:?} contains a NUL byte"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let machine = match args.machine {
            Some(m) => m,
            None => default_machine_name(&args.command[0])?,
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
        Ok(Self {
            machine,
            network,
            ports: args.ports,
            links,
            command,
            ipv6: args.ipv6,
        })
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
pub fn run(args: RunArgs, client: &Client) -> Result<u8, String> {
    let plan = Plan::new(args)?;
    if plan.network == Network::Host {
        return Err(exec_error(&plan.command));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("a private network needs root (creating namespaces and links)".into());
    }
    if matches!(plan.network, Network::Attached(_)) {
        // Fail before forking anything when the daemon is not there.
        client.ping().map_err(|e| e.to_string())?;
    }
    // Signals we forward are blocked so they queue for sigwaitinfo() instead of killing us.
    let forwarded = forwarded_signals();
    let mut mask = forwarded;
    mask.add(Signal::SIGCHLD);
    let old = sigprocmask_swap(&mask)?;
    let (parent_end, child_end) =
        UnixStream::pair().map_err(|e| format!("creating a socket pair: {e}"))?;
    // SAFETY: the launcher is single-threaded, so the child may allocate and run arbitrary code
    // after fork.
    match unsafe { fork() }.map_err(|e| format!("fork failed: {e}"))? {
        ForkResult::Child => {
            drop(parent_end);
            child(plan, child_end, &old)
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            parent(plan, client, parent_end, child, &forwarded)
        }
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

fn sigprocmask_swap(mask: &SigSet) -> Result<SigSet, String> {
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(mask), Some(&mut old))
        .map_err(|e| format!("blocking signals: {e}"))?;
    Ok(old)
}

/// The child: never returns.
fn child(plan: Plan, mut sock: UnixStream, old_mask: &SigSet) -> ! {
    let result = (|| -> Result<(), String> {
        // Die with the launcher: if it is SIGKILLed, the container goes too, and rnetd's pidfd
        // watch cleans up its links.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("prctl: {e}"))?;
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS)
            .map_err(|e| format!("creating the container's namespaces: {e}"))?;
        sethostname(plan.machine.as_str()).map_err(|e| format!("setting the hostname: {e}"))?;
        sock.write_all(b"R")
            .map_err(|e| format!("signalling the launcher: {e}"))?;
        let mut cfg = Vec::new();
        sock.read_to_end(&mut cfg)
            .map_err(|e| format!("reading the network configuration: {e}"))?;
        let machine: Option<Machine> = serde_json::from_slice(&cfg)
            .map_err(|e| format!("launcher sent a bad configuration: {e}"))?;
        configure(machine.as_ref())
    })();
    if let Err(e) = result {
        let _ = sock.write_all(e.as_bytes());
        // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(i32::from(EXIT_SETUP_FAILED)) }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None);
    let err = exec_error(&plan.command);
    // exec failed: tell the parent (the socket closes on a successful exec, CLOEXEC).
    let _ = sock.write_all(err.as_bytes());
    // SAFETY: as above.
    unsafe { libc::_exit(i32::from(EXIT_EXEC_FAILED)) }
}

/// Inside the container's namespace: `lo` up and, for a veth, `host0` configured.
fn configure(machine: Option<&Machine>) -> Result<(), String> {
    let mut rtnl =
        BlockingRtnl::open().map_err(|e| format!("opening rtnetlink in the container: {e}"))?;
    let lo = nix::net::if_::if_nametoindex("lo").map_err(|e| format!("finding lo: {e}"))?;
    rtnl.set_up(lo)
        .map_err(|e| format!("bringing lo up: {e}"))?;
    let Some(m) = machine else { return Ok(()) };
    // Extra links are left as they come (as nspawn does): the payload configures them.
    let Some(ifname) = m.container_ifname.as_deref() else {
        return Ok(());
    };
    let idx =
        nix::net::if_::if_nametoindex(ifname).map_err(|e| format!("finding {ifname}: {e}"))?;
    // On an admin's bridge the admin's DHCP server configures the link: only bring it up.
    if let (Some(addr), Some(subnet)) = (m.container_address, m.subnet) {
        rtnl.add_address(idx, addr, subnet.prefix())
            .map_err(|e| format!("adding {addr}/{} to {ifname}: {e}", subnet.prefix()))?;
    }
    rtnl.set_up(idx)
        .map_err(|e| format!("bringing {ifname} up: {e}"))?;
    if let Some(gw) = m.host_address {
        rtnl.add_default_route(idx, gw)
            .map_err(|e| format!("adding the default route via {gw}: {e}"))?;
    }
    crate::ipv6::configure_host0(&mut rtnl, idx, m)?;
    bind_resolv_conf(m)
}

/// The resolv.conf of a container whose DNS servers are `dns` (its gateway, where rnetd's
/// forwarder answers), with its zone as search domain.
fn resolv_conf(dns: &[std::net::Ipv4Addr], zone: Option<&str>) -> String {
    let mut text = String::from("# Generated by rnet for this container\n");
    for s in dns {
        text.push_str(&format!("nameserver {s}\n"));
    }
    if let Some(zone) = zone {
        text.push_str(&format!("search {zone}\n"));
    }
    text
}

/// The container shares the host's files, whose resolv.conf may name servers it cannot reach
/// (systemd-resolved's 127.0.0.53 is the host's loopback): in a mount namespace of its own, its
/// `/etc/resolv.conf` is a generated file naming its DNS servers, as `ip netns exec` binds
/// `/etc/netns/NAME/resolv.conf`. The host's file is never written. Nothing to do without
/// servers (an admin's bridge: its DHCP server tells the payload) or without the file.
fn bind_resolv_conf(m: &Machine) -> Result<(), String> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    const TARGET: &str = "/etc/resolv.conf";
    // A scratch tmpfs holds the file while it is bound; it is then detached, so the payload sees
    // its /tmp as it was, and the bind mount keeps the file alive.
    const SCRATCH: &str = "/tmp";
    if m.dns.is_empty() || !std::path::Path::new(TARGET).exists() {
        return Ok(());
    }
    let zone = match &m.network {
        NetworkSpec::Zone(z) => Some(z.as_str()),
        _ => None,
    };
    let text = resolv_conf(&m.dns, zone);
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("creating the container's mount namespace: {e}"))?;
    // Our mounts must not propagate to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private in the container: {e}"))?;
    mount(
        Some("tmpfs"),
        SCRATCH,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(|e| format!("mounting a scratch tmpfs on {SCRATCH}: {e}"))?;
    let file = format!("{SCRATCH}/resolv.conf");
    let bound = std::fs::write(&file, text)
        .map_err(|e| format!("writing the container's resolv.conf: {e}"))
        .and_then(|()| {
            mount(
                Some(file.as_str()),
                TARGET,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("binding the container's resolv.conf over {TARGET}: {e}"))
        });
    let detached = umount2(SCRATCH, MntFlags::MNT_DETACH)
        .map_err(|e| format!("unmounting the scratch tmpfs on {SCRATCH}: {e}"));
    bound.and(detached)
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
) -> Result<u8, String> {
    let setup = (|| -> Result<Option<Machine>, String> {
        let mut ready = [0u8; 1];
        if sock.read_exact(&mut ready).is_err() {
            return Err(child_error(
                &mut sock,
                "the container process died during setup",
            ));
        }
        let Network::Attached(spec) = &plan.network else {
            return Ok(None);
        };
        let netns = File::open(format!("/proc/{child}/ns/net"))
            .map_err(|e| format!("opening the container's network namespace: {e}"))?;
        let req = Request::Attach(AttachRequest {
            machine: plan.machine.clone(),
            pid: u32::try_from(child.as_raw()).unwrap_or_default(),
            network: spec.clone(),
            ports: plan.ports.clone(),
            links: plan.links.clone(),
            ipv6: plan.ipv6,
        });
        match client.call(&req, Some(netns.as_fd())) {
            Ok(api::Response::Attached(m)) => Ok(Some(m)),
            Ok(other) => Err(format!("rnetd sent an unexpected answer: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    })();
    let machine = match setup {
        Ok(m) => m,
        Err(e) => {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            return Err(e);
        }
    };
    let attached = machine.is_some();
    let cfg = serde_json::to_vec(&machine).unwrap_or_default();
    let sent = sock
        .write_all(&cfg)
        .and_then(|()| sock.shutdown(Shutdown::Write));
    let mut report = String::new();
    let _ = sock.read_to_string(&mut report);
    if sent.is_err() && report.is_empty() {
        report = "the container process died during setup".into();
    }
    let code = wait_forwarding(child, forwarded)?;
    if attached {
        detach(client, &plan.machine);
    }
    if !report.is_empty() {
        return Err(report);
    }
    Ok(code)
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
        // SAFETY: siginfo_t is plain data; sigwaitinfo fills it for the signal it returns.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the duration of the call.
        let sig = unsafe { libc::sigwaitinfo(wait_set.as_ref(), &mut info) };
        if sig < 0 || sig == libc::SIGCHLD {
            continue;
        }
        // A signal from the terminal (si_code > 0, sent by the kernel) reached the whole
        // foreground process group, the payload included: forward only what was sent to us.
        if info.si_code <= 0
            && let Ok(s) = Signal::try_from(sig)
        {
            let _ = kill(child, s);
        }
    }
}

fn detach(client: &Client, machine: &MachineName) {
    match client.call(
        &Request::Detach {
            machine: machine.clone(),
        },
        None,
    ) {
        Ok(_) => {}
        // rnetd's pidfd watch may have been quicker.
        Err(ClientError::Api(e)) if e.kind == ErrorKind::NotFound => {}
        Err(e) => eprintln!("rnet: warning: detaching {machine}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_names_the_servers_and_the_zone() {
        let gw = "10.0.0.1".parse().unwrap();
        assert_eq!(
            resolv_conf(&[gw], Some("blue")),
            "# Generated by rnet for this container\nnameserver 10.0.0.1\nsearch blue\n"
        );
        assert_eq!(
            resolv_conf(&[gw], None),
            "# Generated by rnet for this container\nnameserver 10.0.0.1\n"
        );
    }
}
