//! Attached machines: attach, detach, the pidfd watch that cleans up after a container that
//! died without saying so, and the restart path that adopts what is still alive.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use ipnetwork::Ipv4Network;
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use std::time::Duration;

use nat::NftCli;

use crate::api::{
    ApiError, AttachRequest, ErrorKind, Machine, MachineName, NetworkSpec, ZoneConfig, ZoneName,
};
use crate::dhcp_glue::{DhcpLink, DhcpService};
use crate::firewall::{Firewall, LinkRules};
use crate::naming::{LinkName, MacKey, MachineId, generate_mac};
use crate::pool::{Pool, PoolError};
use crate::procfs;
use crate::rtnl::{Rtnl, RtnlError};
use crate::state::{SavedMachine, SavedZone, State, StateFile, ZoneFile};
use crate::sysctl::Sysctl;

/// How often the firewall table is checked for changes made from outside.
const FIREWALL_CHECK: Duration = Duration::from_secs(2);

/// Name of the container end of the primary veth (fixed, as in nspawn).
pub const CONTAINER_IFNAME: &str = "host0";

/// Prefix length of a `ve-` link's subnet (networkd's `80-container-ve.network`).
pub const VETH_PREFIX: u8 = 28;

/// Prefix length of a zone's subnet (networkd's `80-container-vz.network`: 253 clients).
pub const ZONE_PREFIX: u8 = 24;

/// Daemon settings the machine logic needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Runtime directory (state file, socket).
    pub runtime_dir: PathBuf,
    /// State directory (explicit zones).
    pub state_dir: PathBuf,
    /// The host's machine id, for MACs.
    pub machine_id: MachineId,
    /// Ranges the link subnets are cut from.
    pub pool_ranges: Vec<Ipv4Network>,
    /// Prefix length of a `ve-` link's subnet (default [`VETH_PREFIX`]).
    pub veth_prefix: u8,
    /// DNS servers given to containers.
    pub dns: Vec<Ipv4Addr>,
}

pub(crate) struct Entry {
    pub(crate) saved: SavedMachine,
    /// ifindex of the host-side link.
    pub(crate) index: u32,
    pub(crate) watcher: Option<AbortHandle>,
    /// A pidfd of the container's process, to signal it without a pid-reuse race.
    pub(crate) pidfd: Option<OwnedFd>,
    /// The container's network namespace, held while interfaces moved into it must be moved
    /// back when it ends.
    pub(crate) netns: Option<OwnedFd>,
}

/// A zone that exists: its bridge, subnet and members.
pub(crate) struct ZoneEntry {
    /// Settings; `subnet` is the subnet in use.
    pub(crate) config: ZoneConfig,
    /// ifindex of `vz-ZONE`.
    pub(crate) index: u32,
    pub(crate) explicit: bool,
    pub(crate) members: BTreeSet<MachineName>,
}

impl ZoneEntry {
    pub(crate) fn subnet(&self) -> Ipv4Network {
        self.config.subnet.unwrap_or_else(|| {
            // Always set for an existing zone; a /32 of nothing otherwise.
            Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 32).unwrap_or_else(|_| unreachable!())
        })
    }

    pub(crate) fn address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet().network()) + 1)
    }
}

pub(crate) struct Inner {
    pub(crate) machines: BTreeMap<MachineName, Entry>,
    pub(crate) zones: BTreeMap<ZoneName, ZoneEntry>,
    /// `/28`s (by default) for `ve-` links.
    pub(crate) pool: Pool,
    /// `/24`s for zones.
    pub(crate) zone_pool: Pool,
}

impl Inner {
    /// Everything in use on the host plus what either pool handed out.
    pub(crate) fn taken(&self, in_use: &[Ipv4Network]) -> Vec<Ipv4Network> {
        in_use
            .iter()
            .chain(self.pool.allocated())
            .chain(self.zone_pool.allocated())
            .copied()
            .collect()
    }
}

/// The attached machines and what it takes to change them.
///
/// # Locks
///
/// Two `tokio::sync::Mutex`es, always taken in this order: `inner` (machines, zones, pools),
/// then `firewall` (the nft table as we installed it). Both may be held across netlink and `nft`
/// work of a change (attach, detach, zone create/delete), which must not interleave with
/// another. Reads (list, status, zone list/show) take only `inner`. The periodic table check
/// takes only `firewall`, and only to copy what it compares and, rarely, to repair: the
/// listing runs with no lock held. The DHCP service has its own rule (see `dhcp_glue`); no
/// `std::sync::Mutex` anywhere is held across an `.await` or across file or netlink work.
pub struct Machines {
    pub(crate) settings: Settings,
    pub(crate) rtnl: Rtnl,
    state: StateFile,
    pub(crate) zone_file: ZoneFile,
    pub(crate) dhcp: Arc<DhcpService>,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) firewall: Mutex<Firewall<NftCli>>,
    this: Weak<Machines>,
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
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

/// What the DHCP server of a `ve-` machine's link hands out (`None` for other kinds).
fn dhcp_link(m: &Machine, index: u32) -> Option<DhcpLink> {
    if m.network != NetworkSpec::Veth {
        return None;
    }
    Some(DhcpLink {
        ifname: m.host_ifname.clone()?,
        index,
        subnet: m.subnet?,
        server: m.host_address?,
        dns: m.dns.clone(),
        container: m
            .container_mac
            .as_deref()
            .and_then(parse_mac)
            .zip(m.container_address),
    })
}

/// The firewall contribution of a machine: a `ve-` link's interface, subnet and ports; a zone
/// member's ports and its `vb-` port held to its MAC and address (its zone has the rest); on an
/// admin's bridge, its `vb-` port held to its MAC only.
fn link_rules(m: &Machine) -> Result<LinkRules, crate::firewall::FirewallError> {
    let guard = |addr| -> Result<Option<nat::GuardedPort>, crate::firewall::FirewallError> {
        let (Some(ifname), Some(mac)) = (&m.host_ifname, &m.container_mac) else {
            return Ok(None);
        };
        Ok(Some(nat::GuardedPort {
            ifname: nat::IfName::new(ifname.clone())?,
            mac: mac.parse()?,
            addr,
        }))
    };
    let Some(addr) = m.container_address else {
        let guard = match m.network {
            NetworkSpec::Bridge(_) => guard(None)?,
            _ => None,
        };
        return Ok(LinkRules {
            guard,
            ..LinkRules::default()
        });
    };
    let ip = std::net::IpAddr::V4(addr);
    match (&m.network, m.subnet) {
        (NetworkSpec::Veth, Some(subnet)) => LinkRules::new(
            m.host_ifname.as_deref().unwrap_or_default(),
            subnet,
            ip,
            &m.ports,
        ),
        (NetworkSpec::Zone(_), _) => Ok(LinkRules {
            ports: LinkRules::mappings(ip, &m.ports)?,
            guard: guard(Some(addr))?,
            ..LinkRules::default()
        }),
        _ => Ok(LinkRules {
            ports: LinkRules::mappings(ip, &m.ports)?,
            ..LinkRules::default()
        }),
    }
}

/// Adds a machine's firewall elements (a bad port mapping is the caller's error).
async fn add_rules(firewall: &Mutex<Firewall<NftCli>>, m: &Machine) -> Result<(), ApiError> {
    let rules = link_rules(m).map_err(|e| ApiError::new(ErrorKind::BadRequest, e.to_string()))?;
    firewall.lock().await.add(&rules).await.map_err(internal)
}

fn pool_error(e: PoolError) -> ApiError {
    match e {
        PoolError::Exhausted { .. } => ApiError::new(ErrorKind::PoolExhausted, e.to_string()),
        other => internal(other),
    }
}

impl Machines {
    /// Loads the saved state and reconciles it with the kernel: machines whose process still
    /// runs and whose link still exists are adopted (and watched again); the rest are removed.
    pub async fn start(settings: Settings, rtnl: Rtnl) -> Result<Arc<Self>, ApiError> {
        let state = StateFile::new(&settings.runtime_dir);
        let saved = state.load().map_err(internal)?;
        let pool =
            Pool::new(settings.pool_ranges.clone(), settings.veth_prefix).map_err(internal)?;
        // Zones take the ranges large enough for a /24 (a --pool of small ranges still serves
        // ve- links; zones then need --subnet).
        let zone_ranges = settings
            .pool_ranges
            .iter()
            .copied()
            .filter(|r| r.prefix() < ZONE_PREFIX)
            .collect();
        let zone_pool = Pool::new(zone_ranges, ZONE_PREFIX).map_err(internal)?;
        let zone_file = ZoneFile::new(&settings.state_dir);
        let explicit = zone_file.load().map_err(internal)?;
        let dhcp = DhcpService::start(&settings.runtime_dir.join("leases")).map_err(internal)?;
        let me = Arc::new_cyclic(|this| Machines {
            settings,
            rtnl,
            state,
            zone_file,
            dhcp,
            inner: Mutex::new(Inner {
                machines: BTreeMap::new(),
                zones: BTreeMap::new(),
                pool,
                zone_pool,
            }),
            firewall: Mutex::new(Firewall::new(
                NftCli::new(),
                Sysctl::default(),
                saved.forward_restore,
            )),
            this: this.clone(),
        });
        let mut inner = me.inner.lock().await;
        // The table as the saved state says it is, so that removing what went stale below
        // subtracts from it (and cannot mistake the first removal for the last link going);
        // once adoption is done, the table is set to what was adopted and reconciled.
        let saved_rules: Vec<LinkRules> = saved
            .machines
            .iter()
            .filter_map(|s| link_rules(&s.machine).ok())
            .chain(
                saved
                    .zones
                    .iter()
                    .map(|z| crate::zones::config_rules(&z.config)),
            )
            .collect();
        if let Err(e) = me.firewall.lock().await.adopt(&saved_rules) {
            warn!(error = %e, "the saved state has firewall rules that cannot be used");
        }
        // Zones first: members need their bridge.
        me.restore_zones(&mut inner, &saved.zones, &explicit).await;
        for s in saved.machines {
            let m = &s.machine;
            let alive = procfs::pid_start_time(m.pid).ok() == Some(s.pid_start_time);
            let link = match &m.host_ifname {
                Some(ifname) => me.rtnl.link_index(ifname).await.map_err(internal)?,
                // No primary link: index 0 stands for "nothing to check".
                None => Some(0),
            };
            let pidfd = if alive {
                procfs::pidfd_open(m.pid).ok()
            } else {
                None
            };
            let zone = match &m.network {
                NetworkSpec::Zone(z) => Some(z.clone()),
                _ => None,
            };
            let zone_ok = zone.as_ref().is_none_or(|z| inner.zones.contains_key(z));
            let reserved = match (&m.network, m.subnet) {
                (NetworkSpec::Veth, Some(net)) => inner.pool.reserve(net).is_ok(),
                _ => true,
            };
            match (pidfd, link) {
                (Some(pidfd), Some(index)) if zone_ok && reserved => {
                    info!(machine = %m.machine, ifname = m.host_ifname.as_deref().unwrap_or("-"), "adopted");
                    if let Some(link) = dhcp_link(m, index)
                        && let Err(e) = me.dhcp.add_link(&link).await
                    {
                        warn!(machine = %m.machine, error = %e, "restarting the DHCP server failed");
                    }
                    if let Some(z) = zone.as_ref().and_then(|z| inner.zones.get_mut(z)) {
                        z.members.insert(m.machine.clone());
                        // Its lease may not have reached the disk before rnetd stopped.
                        if let (true, Some(mac), Some(addr)) = (
                            z.config.dhcp,
                            m.container_mac.as_deref().and_then(parse_mac),
                            m.container_address,
                        ) && !me.dhcp.ensure(z.index, mac, addr).await
                        {
                            warn!(machine = %m.machine, %addr, "its zone address is leased to another client");
                        }
                    }
                    let signal_fd = pidfd.try_clone().ok();
                    let watcher = Some(me.watch(m.machine.clone(), pidfd));
                    let netns = if crate::extras::needs_netns(&m.links) {
                        std::fs::File::open(format!("/proc/{}/ns/net", m.pid))
                            .ok()
                            .map(OwnedFd::from)
                    } else {
                        None
                    };
                    let entry = Entry {
                        saved: s.clone(),
                        index,
                        watcher,
                        pidfd: signal_fd,
                        netns,
                    };
                    inner.machines.insert(m.machine.clone(), entry);
                }
                _ => {
                    info!(machine = %m.machine, ifname = m.host_ifname.as_deref().unwrap_or("-"), "removing stale attachment");
                    me.remove_extras(&m.links, None).await;
                    if let Some(ifname) = &m.host_ifname {
                        if let Err(e) = me.rtnl.del_link(ifname).await {
                            warn!(error = %e, "removing a stale link failed");
                        }
                        me.dhcp.remove_link(ifname, link.unwrap_or(0)).await;
                    }
                    if let (NetworkSpec::Veth, Some(net)) = (&m.network, m.subnet) {
                        inner.pool.release(net);
                    }
                    if let (Some(z), Some(mac)) = (
                        zone.as_ref().and_then(|z| inner.zones.get(z)),
                        m.container_mac.as_deref().and_then(parse_mac),
                    ) {
                        me.dhcp.release(z.index, mac);
                    }
                }
            }
        }
        // Implicit zones whose members all went while we were down.
        me.drop_empty_implicit_zones(&mut inner).await;
        me.remove_unexplained_links(&inner).await;
        let links: Vec<LinkRules> = inner
            .machines
            .values()
            .filter_map(|e| link_rules(&e.saved.machine).ok())
            .chain(inner.zones.values().map(crate::zones::zone_rules))
            .collect();
        {
            let mut firewall = me.firewall.lock().await;
            firewall.adopt(&links).map_err(internal)?;
            match firewall.reconcile().await {
                Ok(true) => info!("firewall table brought in line with the adopted machines"),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "checking the firewall table failed"),
            }
        }
        me.save(&inner).await?;
        drop(inner);
        me.spawn_firewall_check();
        Ok(me)
    }

    /// Deletes the links of ours (in [`crate::rtnl::LINK_GROUP`]) that no adopted machine or
    /// zone explains: left by a crash between creating them and saving the state.
    async fn remove_unexplained_links(&self, inner: &Inner) {
        let explained: BTreeSet<String> = inner
            .machines
            .values()
            .flat_map(|e| {
                let m = &e.saved.machine;
                m.host_ifname
                    .iter()
                    .cloned()
                    .chain(m.links.iter().filter_map(|l| match &l.spec {
                        crate::api::ExtraLink::VethExtra { host, .. } => Some(host.clone()),
                        _ => None,
                    }))
            })
            .chain(inner.zones.keys().map(ZoneName::bridge))
            .collect();
        let marked = match self.rtnl.marked_links().await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "listing links to find stale ones failed");
                return;
            }
        };
        for name in marked.into_iter().filter(|n| !explained.contains(n)) {
            match self.rtnl.del_link(&name).await {
                Ok(()) => {
                    info!(ifname = %name, "removed a link of ours that no saved state explains")
                }
                Err(e) => warn!(ifname = %name, error = %e, "removing a stale link failed"),
            }
        }
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
                let Some(mut probe) = me.firewall.lock().await.probe() else {
                    continue;
                };
                // Listed and compared with no lock held: requests go on meanwhile.
                match probe.needs_repair().await {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(e) => {
                        warn!(error = %e, "checking the firewall table failed");
                        continue;
                    }
                }
                let mut firewall = me.firewall.lock().await;
                if firewall.generation() != probe.generation {
                    continue; // changed meanwhile: the next check looks again
                }
                match firewall.reconcile().await {
                    Ok(true) => {
                        info!("table inet rnet was removed or changed from outside; rebuilt it")
                    }
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "repairing the firewall table failed"),
                }
            }
        });
    }

    pub(crate) async fn save(&self, inner: &Inner) -> Result<(), ApiError> {
        let forward_restore = self
            .firewall
            .lock()
            .await
            .forward_restore()
            .map(str::to_owned);
        let state = State {
            machines: inner.machines.values().map(|e| e.saved.clone()).collect(),
            zones: inner
                .zones
                .values()
                .map(|z| SavedZone {
                    config: z.config.clone(),
                    explicit: z.explicit,
                })
                .collect(),
            forward_restore,
            ..State::default()
        };
        self.state.save(state).map_err(internal)
    }

    /// Builds a `ve-NAME`/`host0` pair for the container whose network namespace is `netns`.
    /// On any error nothing is left behind.
    pub async fn attach(&self, req: AttachRequest, netns: OwnedFd) -> Result<Machine, ApiError> {
        let bad = |m: String| ApiError::new(ErrorKind::BadRequest, m);
        let pid = req.pid;
        // The namespace must be the pid's own, and not ours: attaching the host's namespace
        // would put host0 on the host.
        procfs::check_netns(&netns).map_err(|e| bad(e.to_string()))?;
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
        if req.network == NetworkSpec::None && req.links.is_empty() {
            return Err(bad("nothing to attach: no veth and no extra links".into()));
        }
        // Extra links first: if the primary link then fails, they are undone.
        let links = self.add_extras(&req, &netns).await?;
        let built = match &req.network {
            NetworkSpec::Veth => self.attach_veth(&mut inner, &req, netns.as_fd()).await,
            NetworkSpec::Zone(zone) => {
                self.attach_zone(&mut inner, &req, zone, netns.as_fd())
                    .await
            }
            NetworkSpec::Bridge(bridge) => self.attach_bridge(&req, bridge, netns.as_fd()).await,
            NetworkSpec::None => Ok((self.bare_machine(&req), 0)),
        };
        let (mut machine, index) = match built {
            Ok(b) => b,
            Err(e) => {
                self.remove_extras(&links, Some(&netns)).await;
                return Err(e);
            }
        };
        machine.links = links;
        let netns = crate::extras::needs_netns(&machine.links).then_some(netns);
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
                pidfd: pidfd.try_clone().ok(),
                netns,
            },
        );
        if let NetworkSpec::Zone(z) = &req.network
            && let Some(zone) = inner.zones.get_mut(z)
        {
            zone.members.insert(name.clone());
        }
        if let Err(e) = self.save(&inner).await {
            self.remove_locked(&mut inner, &name).await;
            return Err(e);
        }
        let watcher = self.watch(name.clone(), pidfd);
        if let Some(entry) = inner.machines.get_mut(&name) {
            entry.watcher = Some(watcher);
        }
        info!(machine = %name, ifname = machine.host_ifname.as_deref().unwrap_or("-"), links = machine.links.len(), "attached");
        Ok(machine)
    }

    /// `-n`: a `ve-` link with a subnet of its own, DHCP and masquerade.
    async fn attach_veth(
        &self,
        inner: &mut Inner,
        req: &AttachRequest,
        netns: BorrowedFd<'_>,
    ) -> Result<(Machine, u32), ApiError> {
        let in_use = self.rtnl.ipv4_in_use().await.map_err(internal)?;
        let taken = inner.taken(&in_use);
        let subnet = inner.pool.allocate(&taken).map_err(pool_error)?;
        let result = async {
            let (mut machine, guard, index) = self.build_veth(req, "ve-", netns).await?;
            let host_address = Ipv4Addr::from(u32::from(subnet.network()) + 1);
            let host_net = Ipv4Network::new(host_address, subnet.prefix()).map_err(internal)?;
            self.rtnl
                .add_address(index, host_net)
                .await
                .map_err(internal)?;
            self.rtnl.set_up(index).await.map_err(internal)?;
            let mac = machine
                .container_mac
                .as_deref()
                .and_then(parse_mac)
                .unwrap_or_default();
            let client_id = dhcp::client_id_from_mac(mac);
            let container = dhcp::pick_address(subnet, &client_id, |a| a != host_address)
                .ok_or_else(|| internal(format!("no container address left in {subnet}")))?;
            machine.subnet = Some(subnet);
            machine.host_address = Some(host_address);
            machine.container_address = Some(container);
            if let Some(link) = dhcp_link(&machine, index) {
                self.dhcp.add_link(&link).await.map_err(internal)?;
            }
            if let Err(e) = add_rules(&self.firewall, &machine).await {
                self.dhcp
                    .remove_link(machine.host_ifname.as_deref().unwrap_or_default(), index)
                    .await;
                return Err(e);
            }
            guard.commit();
            Ok((machine, index))
        }
        .await;
        if result.is_err() {
            inner.pool.release(subnet);
        }
        result
    }

    /// `--network-zone=Z`: a `vb-` port of bridge `vz-Z`, created with the first member.
    async fn attach_zone(
        &self,
        inner: &mut Inner,
        req: &AttachRequest,
        zone: &ZoneName,
        netns: BorrowedFd<'_>,
    ) -> Result<(Machine, u32), ApiError> {
        let created = if inner.zones.contains_key(zone) {
            false
        } else {
            self.create_zone(inner, ZoneConfig::implicit(zone.clone()), false)
                .await?;
            true
        };
        let result = async {
            let z = inner
                .zones
                .get(zone)
                .ok_or_else(|| internal(format!("zone {zone} vanished")))?;
            let (bridge, isolated, serve_dhcp) = (z.index, z.config.isolated, z.config.dhcp);
            let (subnet, gateway) = (z.subnet(), z.address());
            let (mut machine, guard, index) = self.build_veth(req, "vb-", netns).await?;
            self.rtnl
                .set_master_up(index, bridge)
                .await
                .map_err(internal)?;
            if isolated {
                self.rtnl.set_port_isolated(index).await.map_err(internal)?;
            }
            let mac = machine
                .container_mac
                .as_deref()
                .and_then(parse_mac)
                .unwrap_or_default();
            let container = if serve_dhcp {
                self.dhcp.assign(bridge, mac).await
            } else {
                let used: Vec<Ipv4Addr> = inner
                    .machines
                    .values()
                    .filter(|e| e.saved.machine.network == req.network)
                    .filter_map(|e| e.saved.machine.container_address)
                    .collect();
                dhcp::pick_address(subnet, &dhcp::client_id_from_mac(mac), |a| {
                    a != gateway && !used.contains(&a)
                })
            }
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::PoolExhausted,
                    format!("zone {zone} is full: no free address left in {subnet}"),
                )
            })?;
            machine.subnet = Some(subnet);
            machine.host_address = Some(gateway);
            machine.container_address = Some(container);
            if let Err(e) = add_rules(&self.firewall, &machine).await {
                self.dhcp.release(bridge, mac);
                return Err(e);
            }
            guard.commit();
            Ok((machine, index))
        }
        .await;
        if result.is_err() && created {
            self.remove_zone(inner, zone).await;
        }
        result
    }

    /// `--network-bridge=BR`: a `vb-` port of the admin's bridge; nothing else from us.
    async fn attach_bridge(
        &self,
        req: &AttachRequest,
        bridge: &str,
        netns: BorrowedFd<'_>,
    ) -> Result<(Machine, u32), ApiError> {
        let bad = |m: String| ApiError::new(ErrorKind::BadRequest, m);
        if !req.ports.is_empty() {
            return Err(bad(
                "--port is not available with --network-bridge: the admin's bridge gets no address or NAT from rnet".into(),
            ));
        }
        let link = self.rtnl.link(bridge).await.map_err(internal)?;
        let Some(link) = link else {
            return Err(bad(format!("bridge {bridge} does not exist")));
        };
        if !Rtnl::is_bridge(&link) {
            return Err(bad(format!("{bridge} is not a bridge")));
        }
        let (machine, guard, index) = self.build_veth(req, "vb-", netns).await?;
        // Before the port joins the bridge: no frame with another MAC gets through.
        add_rules(&self.firewall, &machine).await?;
        if let Err(e) = self
            .rtnl
            .set_master_up(index, link.header.index)
            .await
            .map_err(internal)
        {
            if let Ok(rules) = link_rules(&machine)
                && let Err(e) = self.firewall.lock().await.remove(&rules).await
            {
                warn!(machine = %machine.machine, error = %e, "removing firewall elements failed");
            }
            return Err(e);
        }
        guard.commit();
        Ok((machine, index))
    }

    /// Creates `PREFIX-NAME` (shortened like systemd, full name as altname) with `host0` in the
    /// container, MACs derived like systemd. The guard deletes it unless committed.
    async fn build_veth(
        &self,
        req: &AttachRequest,
        prefix: &str,
        netns: BorrowedFd<'_>,
    ) -> Result<(Machine, LinkGuard, u32), ApiError> {
        let name = req.machine.as_str();
        let link = LinkName::new(prefix, name);
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
        let machine = Machine {
            machine: req.machine.clone(),
            pid: req.pid,
            network: req.network.clone(),
            host_ifname: Some(link.ifname),
            host_altname: link.altname,
            container_ifname: Some(CONTAINER_IFNAME.into()),
            host_mac: Some(host_mac.to_string()),
            container_mac: Some(container_mac.to_string()),
            subnet: None,
            host_address: None,
            container_address: None,
            dns: self.settings.dns.clone(),
            ports: req.ports.clone(),
            links: Vec::new(),
        };
        Ok((machine, guard, index))
    }

    /// A machine with no primary link (only extra links).
    fn bare_machine(&self, req: &AttachRequest) -> Machine {
        Machine {
            machine: req.machine.clone(),
            pid: req.pid,
            network: NetworkSpec::None,
            host_ifname: None,
            host_altname: None,
            container_ifname: None,
            host_mac: None,
            container_mac: None,
            subnet: None,
            host_address: None,
            container_address: None,
            dns: Vec::new(),
            ports: Vec::new(),
            links: Vec::new(),
        }
    }

    /// Removes a machine's networking.
    pub async fn detach(&self, name: &MachineName) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        if !inner.machines.contains_key(name) {
            return Err(not_found(name));
        }
        self.remove_locked(&mut inner, name).await;
        self.save(&inner).await
    }

    pub(crate) async fn remove_locked(&self, inner: &mut Inner, name: &MachineName) {
        let Some(entry) = inner.machines.remove(name) else {
            return;
        };
        if let Some(w) = entry.watcher {
            w.abort();
        }
        let m = &entry.saved.machine;
        match link_rules(m) {
            Ok(rules) => {
                if let Err(e) = self.firewall.lock().await.remove(&rules).await {
                    warn!(machine = %name, error = %e, "removing firewall elements failed");
                }
            }
            Err(e) => warn!(machine = %name, error = %e, "saved ports are invalid"),
        }
        self.remove_extras(&m.links, entry.netns.as_ref()).await;
        if let Some(ifname) = &m.host_ifname {
            if m.network == NetworkSpec::Veth {
                self.dhcp.remove_link(ifname, entry.index).await;
            }
            // Best effort: a link that is already gone (the namespace died) is fine.
            if let Err(e) = self.rtnl.del_link(ifname).await {
                warn!(machine = %name, error = %e, "deleting the link failed");
            }
        }
        match (&m.network, m.subnet) {
            (NetworkSpec::Veth, Some(net)) => {
                inner.pool.release(net);
            }
            (NetworkSpec::Zone(z), _) => {
                let now_empty = match inner.zones.get_mut(z) {
                    Some(zone) => {
                        zone.members.remove(name);
                        if let Some(mac) = m.container_mac.as_deref().and_then(parse_mac) {
                            self.dhcp.release(zone.index, mac);
                        }
                        zone.members.is_empty() && !zone.explicit
                    }
                    None => false,
                };
                if now_empty {
                    self.remove_zone(inner, z).await;
                }
            }
            _ => {}
        }
        info!(machine = %name, ifname = m.host_ifname.as_deref().unwrap_or("-"), "detached");
    }

    /// Writes what must survive a restart that is not yet on disk (leases).
    pub async fn shutdown(&self) {
        self.dhcp.sync().await;
    }

    /// Asks a machine to stop: SIGTERM to its process (through its pidfd, so a reused pid is
    /// never hit). Its launcher forwards nothing and sees the payload end; cleanup follows.
    pub async fn stop(&self, name: &MachineName) -> Result<(), ApiError> {
        let inner = self.inner.lock().await;
        let entry = inner.machines.get(name).ok_or_else(|| not_found(name))?;
        let fd = entry
            .pidfd
            .as_ref()
            .ok_or_else(|| internal(format!("no handle on the process of {name}")))?;
        procfs::pidfd_send_signal(fd, libc::SIGTERM)
            .map_err(|e| internal(format!("signalling {name}: {e}")))
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
            if let Err(e) = me.save(&inner).await {
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
