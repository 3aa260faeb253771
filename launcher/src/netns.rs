//! `rnet netns create|list|delete`: persistent named network namespaces at
//! `/run/netns/NAME`, made as `ip netns add` makes them (ip-netns(8), iproute2's
//! `ip/ipnetns.c`: `/run/netns` a shared mount, a bind mount of an nsfs file per name), attached
//! by rnetd as attachments that no process owns (`held` in the API), for runtimes that join a
//! namespace by path: `systemd-nspawn --network-namespace-path=/run/netns/NAME`, `ip netns exec`.
//!
//! Create runs in a fixed order, each step undone if a later one fails: the bind mount, the
//! attach, the container side (`lo`, `host0`'s address and default route, as `rnet run`'s child
//! configures them). Delete releases the attachment, then removes the bind mount.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use api::{
    AttachRequest, Client, ClientError, Holder, IfName, Machine, MachineName, NetworkSpec,
    PortSpec, Request, Response, ZoneName,
};
use clap::{Args, Subcommand};
use netlink_sync::{ContainerLink, configure_in};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Where named namespaces live (ip-netns(8)'s `NETNS_RUN_DIR`).
pub const NETNS_DIR: &str = "/run/netns";

/// The owner key of the named namespace `name`.
pub fn owner(name: &MachineName) -> String {
    format!("netns/{name}")
}

/// `rnet netns ...`.
#[derive(Debug, Subcommand)]
pub enum NetnsCommand {
    /// Create /run/netns/NAME and give it networking from rnetd (a veth by default); rnetd
    /// holds it until `rnet netns delete`, across its own restarts.
    Create(CreateArgs),
    /// List the named namespaces rnetd holds.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release a named namespace's networking and remove /run/netns/NAME.
    Delete {
        /// The namespace.
        name: MachineName,
    },
}

/// `rnet netns create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The namespace's name, also its machine name (a valid hostname).
    pub name: MachineName,
    /// A veth pair `ve-NAME` / `host0` with a subnet of its own (the default).
    #[arg(short = 'n', long = "network-veth")]
    pub network_veth: bool,
    /// Put it in zone Z (`vb-NAME` on `vz-Z`).
    #[arg(
        long = "network-zone",
        value_name = "Z",
        conflicts_with = "network_bridge"
    )]
    pub network_zone: Option<ZoneName>,
    /// Attach it to the admin's bridge BR (no address, DHCP or NAT from rnet).
    #[arg(long = "network-bridge", value_name = "BR")]
    pub network_bridge: Option<IfName>,
    /// Publish a host port to it: `[tcp:|udp:][ADDR:]HOST[:CONT]` (repeatable).
    #[arg(short = 'p', long = "port", value_name = "SPEC")]
    pub ports: Vec<PortSpec>,
}

/// Runs `rnet netns ...`.
pub fn run(client: &Client, cmd: NetnsCommand) -> Result<(), String> {
    match cmd {
        NetnsCommand::Create(args) => create(client, args, Path::new(NETNS_DIR)),
        NetnsCommand::List { json } => list(client, json),
        NetnsCommand::Delete { name } => delete(client, &name, Path::new(NETNS_DIR)),
    }
}

/// The network `args` ask for.
fn network(args: &CreateArgs) -> NetworkSpec {
    match (&args.network_zone, &args.network_bridge) {
        (Some(z), _) => NetworkSpec::Zone(z.clone()),
        (None, Some(b)) => NetworkSpec::Bridge(b.clone().into()),
        (None, None) => NetworkSpec::Veth,
    }
}

fn create(client: &Client, args: CreateArgs, dir: &Path) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("creating a network namespace needs root".into());
    }
    let path = dir.join(args.name.as_str());
    let network = network(&args);
    let req = AttachRequest {
        machine: args.name.clone(),
        pid: 0,
        network,
        ports: args.ports,
        links: Vec::new(),
        held: Some(Holder {
            owner: owner(&args.name),
            netns: path.clone(),
        }),
        init: Default::default(),
        ipv6: true,
    };
    make_netns(dir, &path)?;
    let ns = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            remove_netns(&path);
            return Err(format!("opening {}: {e}", path.display()));
        }
    };
    let machine = match client.call(&Request::Attach(req), Some(ns.as_fd())) {
        Ok(Response::Attached(m)) => m,
        Ok(_) => {
            remove_netns(&path);
            return Err("rnetd sent an unexpected answer to attach".into());
        }
        Err(e) => {
            remove_netns(&path);
            return Err(e.to_string());
        }
    };
    if let Err(e) = configure_in(ns.as_fd(), container_link(&machine, None).as_ref()) {
        let _ = client.call(
            &Request::Release {
                owner: owner(&args.name),
            },
            None,
        );
        remove_netns(&path);
        return Err(format!("configuring {}: {e}", path.display()));
    }
    match (
        machine.container_address,
        machine.subnet,
        machine.host_address,
    ) {
        (Some(a), Some(s), Some(gw)) => println!(
            "netns {} created: {}, {} {a}/{} via {gw}",
            args.name,
            path.display(),
            machine.container_ifname.as_deref().unwrap_or("host0"),
            s.prefix()
        ),
        _ => println!("netns {} created: {}", args.name, path.display()),
    }
    Ok(())
}

/// How the container end of a machine's veth is configured (none without a veth), renamed to
/// `rename` if given: the address and route `rnet run`'s child gives `host0`.
pub fn container_link(m: &Machine, rename: Option<&str>) -> Option<ContainerLink> {
    let ifname = m.container_ifname.clone()?;
    Some(ContainerLink {
        rename: rename.unwrap_or(&ifname).to_owned(),
        ifname,
        address: m.container_address.zip(m.subnet.map(|s| s.prefix())),
        gateway: m.host_address.filter(|_| m.container_address.is_some()),
    })
}

/// `mkdir -p DIR`, DIR a shared mount (bound onto itself first if it is not a mount point),
/// then an empty file at `path` with this thread's new network namespace bound onto it: what
/// `ip netns add` does (`netns_add()` in iproute2's `ip/ipnetns.c`).
fn make_netns(dir: &Path, path: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if let Err(nix::errno::Errno::EINVAL) =
        mount(None::<&str>, dir, Some("none"), shared, None::<&str>)
    {
        mount(
            Some(dir),
            dir,
            Some("none"),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("binding {} onto itself: {e}", dir.display()))?;
        mount(None::<&str>, dir, Some("none"), shared, None::<&str>)
            .map_err(|e| format!("making {} a shared mount: {e}", dir.display()))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => {
                format!("{} already exists", path.display())
            }
            _ => format!("creating {}: {e}", path.display()),
        })?;
    let target = path.to_owned();
    let bound = std::thread::spawn(move || -> Result<(), String> {
        // A thread of its own: unshare changes only this thread's namespace, and it ends here.
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("creating a network namespace: {e}"))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("binding the namespace onto {}: {e}", target.display()))
    })
    .join()
    .unwrap_or_else(|_| Err("the namespace thread panicked".into()));
    if let Err(e) = bound {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Unmounts and removes a named namespace's file (best effort, as `ip netns delete`).
fn remove_netns(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = fs::remove_file(path);
}

/// The named namespaces rnetd holds.
fn held(client: &Client) -> Result<Vec<(MachineName, PathBuf, Machine)>, String> {
    let Response::Machines(list) = client
        .call(&Request::List, None)
        .map_err(|e| e.to_string())?
    else {
        return Err("rnetd sent an unexpected answer to list".into());
    };
    Ok(list
        .into_iter()
        .filter_map(|m| {
            let h = m.held.clone()?;
            h.owner
                .strip_prefix("netns/")
                .and_then(|n| MachineName::new(n).ok())
                .map(|n| (n, h.netns, m))
        })
        .collect())
}

fn list(client: &Client, json: bool) -> Result<(), String> {
    let held = held(client)?;
    if json {
        let list: Vec<&Machine> = held.iter().map(|(_, _, m)| m).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:<24} {:<32} {:<16} {:<16}",
        "NETNS", "PATH", "HOST-IF", "ADDRESS"
    );
    for (name, path, m) in &held {
        println!(
            "{:<24} {:<32} {:<16} {:<16}",
            name,
            path.display(),
            m.host_ifname.as_deref().unwrap_or("-"),
            m.container_address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    println!("\n{} namespace(s) listed.", held.len());
    Ok(())
}

fn delete(client: &Client, name: &MachineName, dir: &Path) -> Result<(), String> {
    let released = match client.call(&Request::Release { owner: owner(name) }, None) {
        Ok(Response::Released(r)) => r,
        Ok(_) => return Err("rnetd sent an unexpected answer to release".into()),
        Err(ClientError::Api(e)) => return Err(e.message),
        Err(e) => return Err(e.to_string()),
    };
    let path = dir.join(name.as_str());
    if released.is_empty() {
        return Err(format!(
            "no named namespace {name} is held by rnetd (a namespace made otherwise is removed with `ip netns delete {name}`)"
        ));
    }
    remove_netns(&path);
    Ok(())
}
