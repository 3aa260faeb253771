//! Attached machines: attach, detach, the pidfd watch that cleans up after a container that
//! died without saying so, and the restart path that adopts what is still alive.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use ipnetwork::Ipv4Network;
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use std::time::Duration;

use nat::NftCli;

use crate::api::{ApiError, AttachRequest, ErrorKind, Machine, MachineName, NetworkSpec};
use crate::dhcp_glue::{DhcpLink, DhcpService};
use crate::firewall::{Firewall, LinkRules};
use crate::naming::{LinkName, MacKey, MachineId, generate_mac};
use crate::pool::{Pool, PoolError};
use crate::procfs;
use crate::rtnl::{Rtnl, RtnlError};
use crate::state::{SavedMachine, StateFile};
use crate::sysctl::Sysctl;

/// How often the firewall table is checked for changes made from outside.
const FIREWALL_CHECK: Duration = Duration::from_secs(2);

/// Name of the container end of the primary veth (fixed, as in nspawn).
pub const CONTAINER_IFNAME: &str = "host0";

/// Prefix length of a `ve-` link's subnet (networkd's `80-container-ve.network`).
pub const VETH_PREFIX: u8 = 28;

/// Daemon settings the machine logic needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Runtime directory (state file, socket).
    pub runtime_dir: PathBuf,
    /// The host's machine id, for MACs.
    pub machine_id: MachineId,
    /// Ranges the link subnets are cut from.
    pub pool_ranges: Vec<Ipv4Network>,
    /// Prefix length of a `ve-` link's subnet (default [`VETH_PREFIX`]).
    pub veth_prefix: u8,
    /// DNS servers given to containers.
    pub dns: Vec<Ipv4Addr>,
}

struct Entry {
    saved: SavedMachine,
    /// ifindex of the host-side link.
    index: u32,
    watcher: Option<AbortHandle>,
}

struct Inner {
    machines: BTreeMap<MachineName, Entry>,
    pool: Pool,
    firewall: Firewall<NftCli>,
}

/// The attached machines and what it takes to change them.
pub struct Machines {
    settings: Settings,
    rtnl: Rtnl,
    state: StateFile,
    dhcp: Arc<DhcpService>,
    inner: Mutex<Inner>,
    this: Weak<Machines>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Internal, e.to_string())
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// What the DHCP server of a machine's link hands out.
fn dhcp_link(m: &Machine, index: u32) -> DhcpLink {
    DhcpLink {
        ifname: m.host_ifname.clone(),
        index,
        subnet: m.subnet,
        server: m.host_address,
        dns: m.dns.clone(),
        container: parse_mac(&m.container_mac).map(|mac| (mac, m.container_address)),
    }
}

/// The firewall contribution of a saved machine.
fn link_rules(m: &Machine) -> Result<LinkRules, crate::firewall::FirewallError> {
    LinkRules::new(
        &m.host_ifname,
        m.subnet,
        std::net::IpAddr::V4(m.container_address),
        &m.ports,
    )
}

impl Machines {
    /// Loads the saved state and reconciles it with the kernel: machines whose process still
    /// runs and whose link still exists are adopted (and watched again); the rest are removed.
    pub async fn start(settings: Settings, rtnl: Rtnl) -> Result<Arc<Self>, ApiError> {
        let state = StateFile::new(&settings.runtime_dir);
        let saved = state.load().map_err(internal)?;
        let pool =
            Pool::new(settings.pool_ranges.clone(), settings.veth_prefix).map_err(internal)?;
        let dhcp = DhcpService::start(&settings.runtime_dir.join("leases")).map_err(internal)?;
        let me = Arc::new_cyclic(|this| Machines {
            settings,
            rtnl,
            state,
            dhcp,
            inner: Mutex::new(Inner {
                machines: BTreeMap::new(),
                pool,
                firewall: Firewall::new(NftCli::new(), Sysctl::default(), saved.forward_restore),
            }),
            this: this.clone(),
        });
        let mut inner = me.inner.lock().await;
        for s in saved.machines {
            let m = &s.machine;
            let alive = procfs::pid_start_time(m.pid).ok() == Some(s.pid_start_time);
            let link = me.rtnl.link_index(&m.host_ifname).await.map_err(internal)?;
            let pidfd = if alive {
                procfs::pidfd_open(m.pid).ok()
            } else {
                None
            };
            match (pidfd, link) {
                (Some(pidfd), Some(index)) if inner.pool.reserve(m.subnet).is_ok() => {
                    info!(machine = %m.machine, ifname = %m.host_ifname, "adopted");
                    if let Err(e) = me.dhcp.add_link(&dhcp_link(m, index)) {
                        warn!(machine = %m.machine, error = %e, "restarting the DHCP server failed");
                    }
                    let watcher = Some(me.watch(m.machine.clone(), pidfd));
                    let entry = Entry {
                        saved: s.clone(),
                        index,
                        watcher,
                    };
                    inner.machines.insert(m.machine.clone(), entry);
                }
                _ => {
                    info!(machine = %m.machine, ifname = %m.host_ifname, "removing stale attachment");
                    if let Err(e) = me.rtnl.del_link(&m.host_ifname).await {
                        warn!(error = %e, "removing a stale link failed");
                    }
                    me.dhcp.remove_link(&m.host_ifname, link.unwrap_or(0));
                }
            }
        }
        let links: Vec<LinkRules> = inner
            .machines
            .values()
            .filter_map(|e| link_rules(&e.saved.machine).ok())
            .collect();
        inner.firewall.adopt(&links).map_err(internal)?;
        match inner.firewall.reconcile().await {
            Ok(true) => info!("firewall table brought in line with the adopted machines"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "checking the firewall table failed"),
        }
        me.save(&inner)?;
        drop(inner);
        me.spawn_firewall_check();
        Ok(me)
    }

    /// Checks the firewall table periodically and rebuilds it when it was removed or changed
    /// from outside (e.g. `nft flush ruleset`).
    fn spawn_firewall_check(&self) {
        let this = self.this.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FIREWALL_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = this.upgrade() else { return };
                let mut inner = me.inner.lock().await;
                if inner.machines.is_empty() {
                    continue;
                }
                match inner.firewall.reconcile().await {
                    Ok(true) => {
                        info!("table inet rnet was removed or changed from outside; rebuilt it")
                    }
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "checking the firewall table failed"),
                }
            }
        });
    }

    fn save(&self, inner: &Inner) -> Result<(), ApiError> {
        let all = inner.machines.values().map(|e| e.saved.clone()).collect();
        let restore = inner.firewall.forward_restore().map(str::to_owned);
        self.state.save(all, restore).map_err(internal)
    }

    /// Builds a `ve-NAME`/`host0` pair for the container whose network namespace is `netns`.
    /// On any error nothing is left behind.
    pub async fn attach(&self, req: AttachRequest, netns: OwnedFd) -> Result<Machine, ApiError> {
        let bad = |m: String| ApiError::new(ErrorKind::BadRequest, m);
        let pid = req.pid;
        // The namespace must be the pid's own, and not ours: attaching the host's namespace
        // would put host0 on the host.
        let ns =
            procfs::ns_id(&netns).map_err(|e| bad(format!("cannot inspect the passed fd: {e}")))?;
        let pid_ns = procfs::pid_netns_id(pid).map_err(|e| {
            bad(format!(
                "cannot read the network namespace of pid {pid}: {e}"
            ))
        })?;
        if ns != pid_ns {
            return Err(bad(format!(
                "the passed fd is not the network namespace of pid {pid}"
            )));
        }
        if procfs::pid_netns_id(std::process::id()).ok() == Some(ns) {
            return Err(bad(
                "the passed network namespace is rnetd's own; a container needs a private one"
                    .into(),
            ));
        }
        let pid_start_time = procfs::pid_start_time(pid)
            .map_err(|e| bad(format!("process {pid} does not exist: {e}")))?;
        let pidfd =
            procfs::pidfd_open(pid).map_err(|e| bad(format!("cannot watch process {pid}: {e}")))?;

        let mut inner = self.inner.lock().await;
        if inner.machines.contains_key(&req.machine) {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!("machine {} is already running", req.machine),
            ));
        }
        check_ports(&inner, &req)?;
        let in_use = self.rtnl.ipv4_in_use().await.map_err(internal)?;
        let subnet = inner.pool.allocate(&in_use).map_err(|e| match e {
            PoolError::Exhausted { .. } => ApiError::new(ErrorKind::PoolExhausted, e.to_string()),
            other => internal(other),
        })?;
        let built = self.build(&req, subnet, netns.as_fd()).await;
        let built = match built {
            Ok((machine, guard, index)) => {
                let added = match self.dhcp.add_link(&dhcp_link(&machine, index)) {
                    Ok(()) => {
                        let rules = link_rules(&machine)
                            .map_err(|e| ApiError::new(ErrorKind::BadRequest, e.to_string()));
                        let added = match rules {
                            Ok(r) => inner.firewall.add(&r).await.map_err(internal),
                            Err(e) => Err(e),
                        };
                        if added.is_err() {
                            self.dhcp.remove_link(&machine.host_ifname, index);
                        }
                        added
                    }
                    Err(e) => Err(internal(e)),
                };
                added.map(|()| {
                    guard.commit();
                    (machine, index)
                })
            }
            Err(e) => Err(e),
        };
        let (machine, index) = match built {
            Ok(m) => m,
            Err(e) => {
                inner.pool.release(subnet);
                return Err(e);
            }
        };
        let name = req.machine.clone();
        inner.machines.insert(
            name.clone(),
            Entry {
                saved: SavedMachine {
                    machine: machine.clone(),
                    pid_start_time,
                },
                index,
                watcher: None,
            },
        );
        if let Err(e) = self.save(&inner) {
            self.remove_locked(&mut inner, &name).await;
            return Err(e);
        }
        let watcher = self.watch(name.clone(), pidfd);
        if let Some(entry) = inner.machines.get_mut(&name) {
            entry.watcher = Some(watcher);
        }
        info!(machine = %name, ifname = %machine.host_ifname, %subnet, "attached");
        Ok(machine)
    }

    /// The link side of attach. The returned guard deletes the link unless committed.
    async fn build(
        &self,
        req: &AttachRequest,
        subnet: Ipv4Network,
        netns: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(Machine, LinkGuard, u32), ApiError> {
        let name = req.machine.as_str();
        let link = LinkName::new("ve-", name);
        let id = self.settings.machine_id;
        let host_mac = generate_mac(id, name, MacKey::Host, 0);
        let container_mac = generate_mac(id, name, MacKey::Container, 0);
        let index = self
            .rtnl
            .add_veth(
                &link.ifname,
                host_mac,
                CONTAINER_IFNAME,
                container_mac,
                netns,
            )
            .await
            .map_err(|e| link_error(e, &link.ifname))?;
        let guard = LinkGuard::new(self.rtnl.clone(), link.ifname.clone());
        if let Some(alt) = &link.altname {
            self.rtnl.add_altname(index, alt).await.map_err(internal)?;
        }
        let host_address = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let host_net = Ipv4Network::new(host_address, subnet.prefix()).map_err(internal)?;
        self.rtnl
            .add_address(index, host_net)
            .await
            .map_err(internal)?;
        self.rtnl.set_up(index).await.map_err(internal)?;
        let client_id = dhcp::client_id_from_mac(container_mac.0);
        let container_address = dhcp::pick_address(subnet, &client_id, |a| a != host_address)
            .ok_or_else(|| internal(format!("no container address left in {subnet}")))?;
        let machine = Machine {
            machine: req.machine.clone(),
            pid: req.pid,
            network: NetworkSpec::Veth,
            host_ifname: link.ifname,
            host_altname: link.altname,
            container_ifname: CONTAINER_IFNAME.into(),
            host_mac: host_mac.to_string(),
            container_mac: container_mac.to_string(),
            subnet,
            host_address,
            container_address,
            dns: self.settings.dns.clone(),
            ports: req.ports.clone(),
        };
        Ok((machine, guard, index))
    }

    /// Removes a machine's networking.
    pub async fn detach(&self, name: &MachineName) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        if !inner.machines.contains_key(name) {
            return Err(not_found(name));
        }
        self.remove_locked(&mut inner, name).await;
        self.save(&inner)
    }

    async fn remove_locked(&self, inner: &mut Inner, name: &MachineName) {
        let Some(entry) = inner.machines.remove(name) else {
            return;
        };
        if let Some(w) = entry.watcher {
            w.abort();
        }
        let m = &entry.saved.machine;
        match link_rules(m) {
            Ok(rules) => {
                if let Err(e) = inner.firewall.remove(&rules).await {
                    warn!(machine = %name, error = %e, "removing firewall elements failed");
                }
            }
            Err(e) => warn!(machine = %name, error = %e, "saved ports are invalid"),
        }
        self.dhcp.remove_link(&m.host_ifname, entry.index);
        // Best effort: a link that is already gone (the namespace died) is fine.
        if let Err(e) = self.rtnl.del_link(&m.host_ifname).await {
            warn!(machine = %name, error = %e, "deleting the link failed");
        }
        inner.pool.release(m.subnet);
        info!(machine = %name, ifname = %m.host_ifname, "detached");
    }

    /// Writes what must survive a restart that is not yet on disk (leases).
    pub fn shutdown(&self) {
        self.dhcp.flush();
    }

    /// All attached machines.
    pub async fn list(&self) -> Vec<Machine> {
        let inner = self.inner.lock().await;
        inner
            .machines
            .values()
            .map(|e| e.saved.machine.clone())
            .collect()
    }

    /// One attached machine.
    pub async fn status(&self, name: &MachineName) -> Result<Machine, ApiError> {
        let inner = self.inner.lock().await;
        inner
            .machines
            .get(name)
            .map(|e| e.saved.machine.clone())
            .ok_or_else(|| not_found(name))
    }

    /// Watches `pidfd`; when the process exits the machine is detached.
    fn watch(&self, name: MachineName, pidfd: OwnedFd) -> AbortHandle {
        let this = self.this.clone();
        tokio::spawn(async move {
            // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until dropped, so the
            // fd stays open and is the same for the AsyncFd's whole life.
            match unsafe { AsyncFd::register(pidfd) } {
                Ok(fd) => {
                    let _ = fd.readable().await;
                }
                Err(e) => {
                    let (_, e) = e.into_parts();
                    warn!(machine = %name, error = %e, "cannot watch the container's pidfd");
                    return;
                }
            }
            let Some(me) = this.upgrade() else { return };
            let mut inner = me.inner.lock().await;
            // Our own abort handle is in the entry: take it out so removal does not abort us
            // half-way.
            if let Some(e) = inner.machines.get_mut(&name) {
                e.watcher = None;
            } else {
                return;
            }
            info!(machine = %name, "container process exited; cleaning up");
            me.remove_locked(&mut inner, &name).await;
            if let Err(e) = me.save(&inner) {
                warn!(error = %e, "saving state failed");
            }
        })
        .abort_handle()
    }
}

/// Refuses host ports that another machine (or the same request) already publishes.
fn check_ports(inner: &Inner, req: &AttachRequest) -> Result<(), ApiError> {
    for (i, p) in req.ports.iter().enumerate() {
        if let Some(q) = req.ports[..i].iter().find(|q| q.overlaps(p)) {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("port mappings {q} and {p} claim the same host port"),
            ));
        }
        for e in inner.machines.values() {
            if let Some(q) = e.saved.machine.ports.iter().find(|q| q.overlaps(p)) {
                return Err(ApiError::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "host port {p} is already published by machine {} ({q})",
                        e.saved.machine.machine
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn not_found(name: &MachineName) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no machine {name} is attached"),
    )
}

fn link_error(e: RtnlError, ifname: &str) -> ApiError {
    if e.errno == Some(libc::EEXIST) {
        ApiError::new(
            ErrorKind::AlreadyExists,
            format!(
                "interface {ifname} already exists on the host; is another container using this name?"
            ),
        )
    } else {
        internal(e)
    }
}

/// Deletes a link on drop unless committed (STYLE.md principle 8).
struct LinkGuard {
    rtnl: Rtnl,
    name: Option<String>,
}

impl LinkGuard {
    fn new(rtnl: Rtnl, name: String) -> Self {
        Self {
            rtnl,
            name: Some(name),
        }
    }

    fn commit(mut self) {
        self.name = None;
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let rtnl = self.rtnl.clone();
            tokio::spawn(async move {
                if let Err(e) = rtnl.del_link(&name).await {
                    warn!(ifname = %name, error = %e, "undoing a half-built link failed");
                }
            });
        }
    }
}
