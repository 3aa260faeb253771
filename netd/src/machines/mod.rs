//! Attached machines and zones: the daemon's requests (attach, detach, stop, list, status,
//! zone create/list/show/delete), the pidfd watch that cleans up after a container that died
//! without saying so, the restart path that adopts what is still alive, and the periodic
//! firewall check.
//!
//! Every change is observe → plan → apply: what the kernel has is read first, a pure planner
//! (`plan.rs`, on the `Registry`) decides everything, and `apply.rs`
//! executes the plan with one undo list; teardown runs every removal and reports every failure.
//! The host is reached only through the seams of `system.rs`, so the same logic runs on fakes
//! in unit tests.
//!
//! # Locks
//!
//! Two `tokio::sync::Mutex`es, always taken in this order: `registry` (machines, zones, pools),
//! then `firewall` (the nft tables as we installed them). Both may be held across netlink and
//! `nft` work of a change (attach, detach, zone create/delete), which must not interleave with
//! another. Reads (list, status, zone list/show) take only `registry` (status then `firewall`,
//! briefly). The periodic table check, and the same check run on an `nft monitor` event, take
//! only `firewall`, and only to copy what it compares and, rarely, to repair: the listings run
//! with no lock held, and the monitor is read with no lock held. The DHCP service has its own rule (see `dhcp_glue`); no
//! `std::sync::Mutex` anywhere is held across an `.await` or across file or netlink work.

mod apply;
mod extras;
mod held;
pub mod plan;
pub mod registry;
mod restore;
mod span;
pub mod system;
pub mod zones;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use ipnetwork::{Ipv4Network, Ipv6Network};
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::api::{
    ApiError, AttachRequest, ErrorKind, InitKind, Machine, MachineName, NetworkSpec, Zone,
    ZoneConfig, ZoneName,
};
use crate::dhcp_glue::DhcpService;
use crate::firewall::Firewall;
use crate::firewall::firewalld::{self, Firewalld};
use crate::firewall::hostfw::{self, HostFwMode};
use crate::naming::MachineId;
use crate::pool::Pool;
use crate::rtnl::Rtnl;
use crate::state::{Forward, SavedMachine, State, StateFile, ZoneFile};
use crate::sysctl::Sysctl;
use crate::timing;

use apply::{Applied, Deletes};
use plan::{AttachObserved, plan_zone_removal};
use registry::{Entry, Registry};
use system::{Host, HostProcs, Leases, Links, Procs, System};

/// How often the firewall table is checked for changes made from outside.
pub const FIREWALL_CHECK: Duration = Duration::from_secs(2);
/// How long `Stop` waits before it kills a machine's process (systemd-nspawn's, too).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// DNS servers given to containers; empty (rnetd's default): the link's gateway, where its
    /// DNS forwarder answers (`crate::dns`).
    pub dns: Vec<Ipv4Addr>,
    /// `--host-firewall`: let our traffic through other firewalls' chains, or not.
    pub host_firewall: HostFwMode,
    /// The prefix the IPv6 `/64`s are cut from (`--pool6`, default the ULA `/48` derived from
    /// the machine id: `crate::ipv6`); `None`: no IPv6 (`--ipv6=no`).
    pub pool6: Option<Ipv6Network>,
}

/// An internal error (the daemon's side failed), with its cause's text.
pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Internal, e.to_string())
}

/// A refused request.
pub(crate) fn bad(msg: String) -> ApiError {
    ApiError::new(ErrorKind::BadRequest, msg)
}

fn not_found(name: &MachineName) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no machine {name} is attached"),
    )
}

fn zone_not_found(name: &ZoneName) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no zone {name}"))
}

/// The attached machines and zones, and what it takes to change them.
pub struct Machines<S: System = Host> {
    settings: Settings,
    links: S::Links,
    procs: S::Procs,
    leases: S::Leases,
    ipv6: S::Ipv6,
    state: StateFile,
    zone_file: ZoneFile,
    registry: Mutex<Registry>,
    firewall: Mutex<Firewall<S::Nft>>,
    /// Zones across hosts (`rnetd --etcd`), set once after the start.
    fabric: std::sync::OnceLock<Arc<crate::distributed::Fabric>>,
    /// Links being deleted in the background, by name ([`Deletes::Behind`]).
    deleting: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Links whose background deletion failed: the next attach of the name tries again.
    undeleted: std::sync::Mutex<std::collections::HashSet<String>>,
    /// What the last firewall check found in order, when it found nothing to do: a check that
    /// would look at the same ([`CheckedAt`]) has nothing to list.
    checked: std::sync::Mutex<Option<CheckedAt>>,
    this: Weak<Self>,
}

/// What a firewall check's outcome depends on: the kernel's ruleset (its generation), the
/// table we want (the firewall's generation), whether firewalld handles our links, and
/// `--host-firewall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CheckedAt {
    ruleset: u32,
    desired: u64,
    firewalld: bool,
    mode: HostFwMode,
}

impl Machines<Host> {
    /// The daemon's machines on the real host: loads the saved state and reconciles it with
    /// the kernel (see [`Machines::start_with`]).
    pub async fn start(
        settings: Settings,
        rtnl: Rtnl,
        dns: crate::dns::DnsConfig,
        ra_interval: Duration,
    ) -> Result<Arc<Self>, ApiError> {
        let leases =
            DhcpService::start(&settings.runtime_dir.join("leases"), dns).map_err(|e| {
                internal(format!(
                    "starting the DHCP service in {}: {e}",
                    settings.runtime_dir.join("leases").display()
                ))
            })?;
        let watch_others = settings.host_firewall == HostFwMode::Auto;
        let record = settings.runtime_dir.join(firewalld::RECORD);
        let nft = nat::NftCli::new().with_session();
        let nft = nft.clone().with_netlink().unwrap_or_else(|e| {
            warn!(error = %e, "no nf_tables netlink socket: element changes go through nft");
            nft
        });
        let me = Self::start_with(
            settings,
            rtnl,
            HostProcs,
            leases,
            system::HostIpv6::new(ra_interval),
            nft,
            Sysctl::default(),
        )
        .await?;
        let checks = me.spawn_firewall_events();
        if watch_others {
            let watched = me.firewall.lock().await.watched_tables();
            tokio::spawn(hostfw::monitor("nft", checks.clone(), watched));
        }
        // firewalld through D-Bus (its task connects on its own: no wait here without a bus);
        // with --host-firewall=off only to unbind links a previous rnetd bound.
        if watch_others || firewalld::recorded(&record) {
            let mut firewall = me.firewall.lock().await;
            let links = firewall.host_links();
            firewall.attach_firewalld(Firewalld::spawn(record, links, checks));
        }
        Ok(me)
    }
}

impl<S: System> Machines<S> {
    /// Loads the saved state and reconciles it with what is observed: machines whose process
    /// still runs and whose link still exists are adopted (and watched again), the rest are
    /// removed, as are links of ours that no state explains; then the firewall check starts.
    pub async fn start_with(
        settings: Settings,
        links: S::Links,
        procs: S::Procs,
        leases: S::Leases,
        ipv6: S::Ipv6,
        nft: S::Nft,
        sysctl: Sysctl,
    ) -> Result<Arc<Self>, ApiError> {
        let state = StateFile::new(&settings.runtime_dir);
        let saved = state.load().map_err(internal)?;
        let pool = Pool::new(settings.pool_ranges.clone(), settings.veth_prefix)
            .map_err(|e| internal(format!("--pool/--veth-prefix: {e}")))?;
        // Zones take the ranges large enough for a /24 (a --pool of small ranges still serves
        // ve- links; zones then need --subnet).
        let zone_ranges = settings
            .pool_ranges
            .iter()
            .copied()
            .filter(|r| r.prefix() < ZONE_PREFIX)
            .collect();
        let zone_pool =
            Pool::new(zone_ranges, ZONE_PREFIX).map_err(|e| internal(format!("--pool: {e}")))?;
        let pool6 = settings.pool6.map(crate::ipv6::Pool6::new);
        let zone_file = ZoneFile::new(&settings.state_dir);
        let explicit = zone_file.load().map_err(internal)?;
        let host_mode = settings.host_firewall;
        let me = Arc::new_cyclic(|this| Machines {
            settings,
            links,
            procs,
            leases,
            ipv6,
            state,
            zone_file,
            registry: Mutex::new(Registry::new(pool, zone_pool, pool6)),
            firewall: Mutex::new(
                Firewall::new(nft, sysctl, saved.forward_restore.clone())
                    .with_host_mode(host_mode)
                    .with_forward6(saved.forward6_restore.clone()),
            ),
            fabric: std::sync::OnceLock::new(),
            deleting: std::sync::Mutex::default(),
            undeleted: std::sync::Mutex::default(),
            checked: std::sync::Mutex::default(),
            this: this.clone(),
        });
        me.restore(saved, explicit).await?;
        me.spawn_firewall_check();
        Ok(me)
    }

    /// Checks the firewall tables periodically and rebuilds them when they were removed or
    /// changed from outside (e.g. `nft flush ruleset`); puts our rules back into other
    /// firewalls' chains when those were reloaded (the fallback of the `nft monitor` watch).
    fn spawn_firewall_check(&self) {
        let this = self.this.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FIREWALL_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = this.upgrade() else { return };
                me.check_firewall().await;
            }
        });
    }

    /// Runs a firewall check on every event of the returned sender: `nft monitor` (changes of
    /// any table, ours or another firewall's, within [`hostfw`]'s settle time) and firewalld
    /// appearing, going or reloading. Events are read with no lock held; each check takes the
    /// firewall's lock as [`Machines::check_firewall`] says.
    fn spawn_firewall_events(&self) -> tokio::sync::mpsc::Sender<()> {
        let (events, mut received) = tokio::sync::mpsc::channel(1);
        let this = self.this.clone();
        tokio::spawn(async move {
            while received.recv().await.is_some() {
                let Some(me) = this.upgrade() else { return };
                me.check_firewall().await;
            }
        });
        events
    }

    /// One check of the firewall: our tables, then our rules in other firewalls' chains. What
    /// it compares is copied under the firewall's lock, listed and compared with no lock held,
    /// and the lock is taken again only to repair (and only if nothing changed meanwhile).
    async fn check_firewall(&self) {
        let (probe, mode) = {
            let firewall = self.firewall.lock().await;
            (firewall.probe(), firewall.host_mode())
        };
        let Some(mut probe) = probe else { return };
        // Read before the listings: a change made while they run makes the next check look.
        let at = nat::AsyncNft::generation(&mut probe.nft).map(|ruleset| CheckedAt {
            ruleset,
            desired: probe.generation,
            firewalld: probe.firewalld,
            mode,
        });
        let checked = || self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        if at.is_some() && *checked() == at {
            return; // nothing changed since a check found everything in order
        }
        let table = match probe.needs_repair().await {
            Ok(repair) => repair,
            Err(e) => {
                warn!(error = %e, "checking the firewall table failed");
                return;
            }
        };
        let host = !table
            && match probe.host_needs_sync(mode).await {
                Ok(sync) => sync,
                Err(e) => {
                    warn!(error = %e, "checking other firewalls' chains failed");
                    return;
                }
            };
        if let Some(comments) = probe.learned.take() {
            self.firewall.lock().await.learn_comments(comments);
        }
        if !table && !host {
            *checked() = at;
            crate::trim::poke();
            return;
        }
        *checked() = None;
        let mut firewall = self.firewall.lock().await;
        if firewall.generation() != probe.generation {
            return; // changed meanwhile: the next check looks again
        }
        if table {
            match firewall.reconcile_tables().await {
                Ok(true) => {
                    info!("table inet rnet was removed or changed from outside; rebuilt it")
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "repairing the firewall table failed"),
            }
        }
        if let Err(e) = firewall.sync_host().await {
            warn!(error = %e, "putting our rules back into other firewalls' chains failed");
        }
    }

    /// The forwarding values to restore, as the firewall keeps them.
    async fn forward(&self) -> Forward {
        let firewall = self.firewall.lock().await;
        Forward {
            forward_restore: firewall.forward_restore().map(str::to_owned),
            forward6_restore: firewall.forward6_restore(),
        }
    }

    /// Records in the state file what changed in the registry since the last save: the
    /// changed machines' and zones' lines appended before returning (an attach is answered
    /// only once it is on file), O(changes) whatever the number of machines.
    async fn save(&self, registry: &mut Registry) -> Result<(), ApiError> {
        let forward = self.forward().await;
        let saved = self
            .state
            .record(&registry.changes(), &forward)
            .map_err(internal);
        timing::lap("state write");
        saved
    }

    /// [`Machines::save`] for removals, whose failure is logged: a crash before the write
    /// cannot lose a removal (a restart tears down what it finds dead).
    async fn save_or_warn(&self, registry: &mut Registry) {
        if let Err(e) = self.save(registry).await {
            warn!(error = %e.message, "saving state failed");
        }
    }

    /// Replaces the whole state file with the registry (at start, once reconciled).
    async fn save_all(&self, registry: &mut Registry) -> Result<(), ApiError> {
        let forward = self.forward().await;
        let state = State {
            forward6_restore: forward.forward6_restore,
            ..registry.state(forward.forward_restore)
        };
        self.state.rewrite(&state).map_err(internal)
    }

    /// Writes the explicit zones' file.
    fn save_zone_file(&self, registry: &Registry) {
        if let Err(e) = self.zone_file.save(&registry.explicit_zones()) {
            warn!(error = %e, "saving the explicit zones failed");
        }
    }

    /// Checks the passed namespace: a network namespace, the pid's own, not ours.
    fn check_netns(&self, pid: u32, netns: &OwnedFd) -> Result<(), ApiError> {
        self.procs
            .check_netns(netns.as_fd())
            .map_err(|e| bad(e.to_string()))?;
        let ns = self
            .procs
            .ns_id(netns.as_fd())
            .map_err(|e| bad(format!("cannot inspect the passed fd: {e}")))?;
        let pid_ns = self.procs.pid_netns_id(pid).map_err(|e| {
            bad(format!(
                "cannot read the network namespace of pid {pid}: {e}"
            ))
        })?;
        if ns != pid_ns {
            return Err(bad(format!(
                "the passed fd is not the network namespace of pid {pid}"
            )));
        }
        // Attaching the host's namespace would put host0 on the host.
        if self.procs.own_netns_id().ok() == Some(ns) {
            return Err(bad(
                "the passed network namespace is rnetd's own; a container needs a private one"
                    .into(),
            ));
        }
        Ok(())
    }

    /// What an attach planner needs to have looked at.
    async fn observe_attach(
        &self,
        registry: &Registry,
        req: &AttachRequest,
    ) -> Result<AttachObserved, ApiError> {
        let mut seen = AttachObserved::default();
        let needs_pool = match &req.network {
            NetworkSpec::Veth => true,
            NetworkSpec::Zone(z) => !registry.zones.contains(z),
            _ => false,
        };
        if needs_pool {
            seen.in_use = self.links.ipv4_in_use().await.map_err(internal)?;
            timing::lap("in use");
        }
        match &req.network {
            NetworkSpec::Bridge(b) => {
                seen.bridge = self.links.lookup(b).await.map_err(internal)?;
            }
            NetworkSpec::Zone(z) => match registry.zones.get(z) {
                None => {
                    // A zone removed with its last member may still have its bridge going.
                    self.deleted(&z.bridge()).await;
                    seen.bridge = self.links.lookup(&z.bridge()).await.map_err(internal)?;
                }
                Some(zone) if zone.config.dhcp => {
                    let mac = plan::container_mac(&self.settings, &req.machine);
                    seen.zone_address = self.leases.pick(zone.index, mac.0);
                }
                Some(_) => {}
            },
            _ => {}
        }
        Ok(seen)
    }

    /// Gives a container networking: veth, zone port, bridge port and/or extra links, as
    /// `req` asks, for the container whose network namespace is `netns`. On any error nothing
    /// is left behind.
    pub async fn attach(&self, req: AttachRequest, netns: OwnedFd) -> Result<Machine, ApiError> {
        let name = req.machine.clone();
        timing::timed("attach", name.as_str(), self.attach_timed(req, netns)).await
    }

    async fn attach_timed(&self, req: AttachRequest, netns: OwnedFd) -> Result<Machine, ApiError> {
        let pid = req.pid;
        // An attachment no process owns is checked against its path instead (`held.rs`).
        let (pid_start_time, pidfd, held_ns) = match &req.held {
            Some(holder) => (0, None, Some(self.check_held(pid, holder, &netns)?)),
            None => {
                self.check_netns(pid, &netns)?;
                let start = self
                    .procs
                    .start_time(pid)
                    .map_err(|e| bad(format!("process {pid} does not exist: {e}")))?;
                let pidfd = self
                    .procs
                    .pidfd(pid)
                    .map_err(|e| bad(format!("cannot watch process {pid}: {e}")))?;
                (start, Some(pidfd), None)
            }
        };
        // The first member of a zone that spans hosts makes this host join it.
        self.span_join_for(&req.network).await?;

        timing::lap("check");
        let mut registry = self.registry.lock().await;
        timing::lap("lock");
        self.reap_exited(&mut registry, &req).await;
        if let Some(holder) = &req.held {
            held::check_owner_free(&registry, holder)?;
        }
        let seen = self.observe_attach(&registry, &req).await?;
        timing::lap("observe");
        let plan = registry.plan_attach(&self.settings, &req, &seen)?;
        registry.reserve(&plan)?;
        timing::lap("plan");
        // A zone created for its first member comes first.
        let mut known = Vec::new();
        if let Some(zone) = &plan.new_zone {
            let mut done = Applied::default();
            if let Err(e) = self.apply(None, &zone.steps, None, &mut done).await {
                registry.unreserve(&plan);
                return Err(e);
            }
            let bridge = zone.config.name.bridge();
            let index = done.indexes.get(&bridge).copied().unwrap_or_default();
            info!(zone = %zone.config.name, %bridge, subnet = ?zone.config.subnet, "zone created");
            registry.commit_zone(zone.clone(), index);
            known.push((bridge, index));
        } else if let NetworkSpec::Zone(z) = &req.network
            && let Some(zone) = registry.zones.get(z)
        {
            known.push((z.bridge(), zone.index));
        }
        let mut done = Applied::knowing(known);
        if let Err(e) = self
            .apply(Some(&req.machine), &plan.steps, Some(&netns), &mut done)
            .await
        {
            if let Some(zone) = &plan.new_zone {
                self.remove_zone(&mut registry, &zone.config.name, Deletes::Wait)
                    .await;
            }
            if let Some(net) = plan.subnet {
                registry.pool.release(net);
            }
            return Err(e);
        }
        let mut machine = plan.machine;
        machine.links = done.extras;
        let index = machine
            .host_ifname
            .as_ref()
            .and_then(|n| done.indexes.get(n))
            .copied()
            .unwrap_or_default();
        let netns = extras::needs_netns(&machine.links).then_some(netns);
        let name = req.machine.clone();
        registry.commit_machine(
            machine.clone(),
            Entry {
                saved: SavedMachine {
                    machine: machine.clone(),
                    pid_start_time,
                    held_ns,
                    init: req.init,
                },
                index,
                watcher: None,
                pidfd: pidfd.as_ref().and_then(|p| p.try_clone().ok()),
                netns,
                teardown_errors: Vec::new(),
            },
        );
        timing::lap("commit");
        if let Err(e) = self.save(&mut registry).await {
            let _ = self
                .remove_machine(&mut registry, &name, Deletes::Wait)
                .await;
            return Err(e);
        }
        if let Some(pidfd) = pidfd {
            let watcher = self.watch(name.clone(), pidfd);
            if let Some(entry) = registry.machines.get_mut(&name) {
                entry.watcher = Some(watcher);
            }
        }
        timing::lap("watch");
        info!(machine = %name, ifname = machine.host_ifname.as_deref().unwrap_or("-"), links = machine.links.len(), "attached");
        Ok(machine)
    }

    /// Tears down, now, the machines in the way of `req` (its name, or a host port it asks
    /// for) whose process has already exited: the launcher does not wait for its container's
    /// teardown, so a run with the same name or ports right after must not find the old machine
    /// still listed because the pidfd watch has not had the registry's lock yet. The watch's
    /// own task is aborted by the removal. A failed teardown leaves the machine listed, and the
    /// attach is then refused as before.
    async fn reap_exited(&self, registry: &mut Registry, req: &AttachRequest) {
        let exited = |e: &Entry| {
            e.pidfd
                .as_ref()
                .is_some_and(|fd| crate::procfs::has_exited(fd.as_fd()))
        };
        let mut ended: Vec<MachineName> = Vec::new();
        if registry.machines.get(&req.machine).is_some_and(exited) {
            ended.push(req.machine.clone());
        }
        if !req.ports.is_empty() {
            ended.extend(
                registry
                    .machines
                    .iter()
                    .filter(|(n, e)| {
                        **n != req.machine
                            && e.saved
                                .machine
                                .ports
                                .iter()
                                .any(|q| req.ports.iter().any(|p| q.overlaps(p)))
                            && exited(e)
                    })
                    .map(|(n, _)| n.clone()),
            );
        }
        for name in ended {
            info!(machine = %name, "container process exited; cleaning up before an attach that needs its name or ports");
            let _ = self.remove_machine(registry, &name, Deletes::Behind).await;
        }
        timing::lap("reap exited");
    }

    /// Removes a machine's networking. When a step fails the others still run; the machine
    /// then stays listed with what failed, and the answer says it. The host link's deletion
    /// finishes after the answer (a failure there is logged, and the next attach of the name or
    /// the next restart deletes the link again).
    pub async fn detach(&self, name: &MachineName) -> Result<(), ApiError> {
        timing::timed("detach", name.as_str(), self.detach_timed(name)).await
    }

    async fn detach_timed(&self, name: &MachineName) -> Result<(), ApiError> {
        let mut registry = self.registry.lock().await;
        timing::lap("lock");
        if !registry.machines.contains_key(name) {
            return Err(not_found(name));
        }
        // The link's deletion (tens of milliseconds of RCU grace periods in the kernel) goes on
        // after the answer, as after an exit: its firewall elements and services are gone
        // already, and an attach of the same name waits for it (`Machines::deleted`).
        let result = self
            .remove_machine(&mut registry, name, Deletes::Behind)
            .await;
        self.save_or_warn(&mut registry).await;
        result
    }

    /// Tears a machine down (see [`Machines::detach`]) and, when it was the last member of an
    /// implicit zone, the zone.
    async fn remove_machine(
        &self,
        registry: &mut Registry,
        name: &MachineName,
        deletes: Deletes,
    ) -> Result<(), ApiError> {
        let Some((removals, empty_zone)) = registry.plan_detach(name) else {
            return Ok(());
        };
        timing::lap("plan");
        if let Some(entry) = registry.machines.get_mut(name)
            && let Some(w) = entry.watcher.take()
        {
            w.abort();
        }
        let netns = registry.machines.get_mut(name).and_then(|e| e.netns.take());
        let failed = self.remove(removals, netns.as_ref(), deletes).await;
        if !failed.is_empty() {
            for f in &failed {
                warn!(machine = %name, failure = %f, "teardown step failed");
            }
            if let Some(entry) = registry.machines.get_mut(name) {
                entry.teardown_errors = failed.clone();
                entry.netns = netns;
            }
            return Err(ApiError::new(
                ErrorKind::Internal,
                format!(
                    "detaching {name}: {} step(s) failed: {}; it stays listed until a detach succeeds",
                    failed.len(),
                    failed.join("; ")
                ),
            ));
        }
        let entry = registry.forget_machine(name);
        timing::lap("forget");
        if let Some(z) = empty_zone {
            self.remove_zone(registry, &z, deletes).await;
        }
        info!(machine = %name, ifname = entry.as_ref().and_then(|e| e.saved.machine.host_ifname.as_deref()).unwrap_or("-"), "detached");
        Ok(())
    }

    /// Removes a zone's firewall elements, DHCP server and bridge; forgets it (failures are
    /// logged: a zone without members has nothing left to show them on).
    async fn remove_zone(&self, registry: &mut Registry, name: &ZoneName, deletes: Deletes) {
        let Some(zone) = registry.zones.get(name) else {
            return;
        };
        let explicit = zone.explicit;
        let failed = self.remove(plan_zone_removal(zone), None, deletes).await;
        for f in &failed {
            warn!(zone = %name, failure = %f, "removing the zone failed in part");
        }
        registry.forget_zone(name);
        if explicit {
            self.save_zone_file(registry);
        }
        info!(zone = %name, bridge = %name.bridge(), "zone removed");
    }

    /// Writes what must survive a restart that is not yet on disk (leases).
    pub async fn shutdown(&self) {
        self.state.flush();
        self.leases.sync().await;
    }

    /// Asks a machine to stop: SIGRTMIN+3 to a systemd init (it powers off), SIGTERM to any
    /// other process (through its pidfd, so a reused pid is never hit), SIGKILL after
    /// [`STOP_TIMEOUT`] if it has not ended. Its launcher sees PID 1 end; cleanup follows.
    pub async fn stop(&self, name: &MachineName) -> Result<(), ApiError> {
        self.stop_within(name, STOP_TIMEOUT).await
    }

    /// [`Self::stop`], with SIGKILL after `timeout`.
    pub async fn stop_within(&self, name: &MachineName, timeout: Duration) -> Result<(), ApiError> {
        let registry = self.registry.lock().await;
        let entry = registry.machines.get(name).ok_or_else(|| not_found(name))?;
        let fd = entry
            .pidfd
            .as_ref()
            .ok_or_else(|| internal(format!("no handle on the process of {name}")))?;
        let signal = match entry.saved.init {
            InitKind::Systemd => libc::SIGRTMIN() + 3,
            InitKind::Other => libc::SIGTERM,
        };
        self.procs
            .signal(fd, signal)
            .map_err(|e| internal(format!("signalling {name}: {e}")))?;
        // Through a pidfd of its own: a process that ended meanwhile is not confused with a
        // new one of the same pid (the signal then fails with ESRCH, ignored).
        if let Ok(fd) = fd.try_clone() {
            let this = self.this.clone();
            let name = name.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let Some(me) = this.upgrade() else { return };
                if me.procs.signal(&fd, libc::SIGKILL).is_ok() {
                    warn!(machine = %name, ?timeout, "still running after the stop request: killed");
                }
            });
        }
        Ok(())
    }

    /// All attached machines.
    pub async fn list(&self) -> Vec<Machine> {
        let registry = self.registry.lock().await;
        registry.machines.values().map(Entry::view).collect()
    }

    /// One attached machine, with the other firewalls' chains that let its traffic through.
    pub async fn status(&self, name: &MachineName) -> Result<Machine, ApiError> {
        let registry = self.registry.lock().await;
        let mut machine = registry
            .machines
            .get(name)
            .map(Entry::view)
            .ok_or_else(|| not_found(name))?;
        // Routed by us (a ve- link or a zone's bridge): our rules in other firewalls are for it.
        if matches!(machine.network, NetworkSpec::Veth | NetworkSpec::Zone(_)) {
            machine.host_firewall = self.firewall.lock().await.host_chains();
        }
        Ok(machine)
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
            // Boxed: the task waits for the exit for the container's whole life, and with the
            // detach's state machine inline it weighed ~7.5 KiB per container (heaptrack, issue
            // 15); now only what the wait needs stays allocated until the exit.
            Box::pin(timing::timed("exit", name.as_str(), me.exited(&name))).await;
            crate::trim::poke();
        })
        .abort_handle()
    }

    /// Detaches a machine whose process exited (the pidfd watch).
    async fn exited(&self, name: &MachineName) {
        let mut registry = self.registry.lock().await;
        timing::lap("lock");
        // Our own abort handle is in the entry: take it out so removal does not abort us
        // half-way.
        match registry.machines.get_mut(name) {
            Some(e) => e.watcher = None,
            None => return,
        }
        info!(machine = %name, "container process exited; cleaning up");
        // Failures are logged and kept on the machine by remove_machine.
        let _ = self
            .remove_machine(&mut registry, name, Deletes::Behind)
            .await;
        self.save_or_warn(&mut registry).await;
    }

    /// `rnet zone create`: a zone that stays when its last member goes, and across restarts.
    pub async fn zone_create(&self, config: ZoneConfig) -> Result<Zone, ApiError> {
        if config.span.is_some() {
            return self.span_create(config).await;
        }
        let name = config.name.clone();
        timing::timed("zone create", name.as_str(), self.zone_create_timed(config)).await
    }

    async fn zone_create_timed(&self, config: ZoneConfig) -> Result<Zone, ApiError> {
        let mut registry = self.registry.lock().await;
        if registry.zones.contains(&config.name) {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!("zone {} already exists", config.name),
            ));
        }
        let name = config.name.clone();
        self.create_zone(&mut registry, config, true).await?;
        self.save_zone_file(&registry);
        self.save(&mut registry).await?;
        registry
            .zones
            .get(&name)
            .map(|z| z.info(self.leases.lease_count(z.index)))
            .ok_or_else(|| internal("zone vanished"))
    }

    /// Plans and builds a zone (nothing is left behind on error).
    async fn create_zone(
        &self,
        registry: &mut Registry,
        config: ZoneConfig,
        explicit: bool,
    ) -> Result<(), ApiError> {
        self.deleted(&config.name.bridge()).await;
        let mut seen = AttachObserved {
            bridge: self
                .links
                .lookup(&config.name.bridge())
                .await
                .map_err(internal)?,
            ..AttachObserved::default()
        };
        if config.subnet.is_none() || seen.bridge.is_none() {
            seen.in_use = self.links.ipv4_in_use().await.map_err(internal)?;
        }
        let plan = registry.plan_zone(&self.settings, config, explicit, &seen)?;
        registry.reserve_zone(&plan)?;
        let mut done = Applied::default();
        if let Err(e) = self.apply(None, &plan.steps, None, &mut done).await {
            registry.unreserve_zone(&plan);
            return Err(e);
        }
        let bridge = plan.config.name.bridge();
        let index = done.indexes.get(&bridge).copied().unwrap_or_default();
        info!(zone = %plan.config.name, %bridge, subnet = ?plan.config.subnet, explicit, "zone created");
        registry.commit_zone(plan, index);
        Ok(())
    }

    /// `rnet zone list`.
    pub async fn zone_list(&self) -> Vec<Zone> {
        let registry = self.registry.lock().await;
        registry
            .zones
            .iter()
            .map(|z| self.span_info(z.info(self.leases.lease_count(z.index))))
            .collect()
    }

    /// `rnet zone show`.
    pub async fn zone_show(&self, name: &ZoneName) -> Result<Zone, ApiError> {
        let registry = self.registry.lock().await;
        registry
            .zones
            .get(name)
            .map(|z| self.span_info(z.info(self.leases.lease_count(z.index))))
            .ok_or_else(|| zone_not_found(name))
    }

    /// `rnet zone delete [--force]`.
    pub async fn zone_delete(&self, name: &ZoneName, force: bool) -> Result<(), ApiError> {
        let mut registry = self.registry.lock().await;
        let members: Vec<MachineName> = match registry.zones.get(name) {
            Some(z) => z.members.iter().cloned().collect(),
            None => return Err(zone_not_found(name)),
        };
        if !members.is_empty() && !force {
            let list: Vec<String> = members.iter().map(ToString::to_string).collect();
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!(
                    "zone {name} has {} member(s) ({}); stop them first or use --force",
                    members.len(),
                    list.join(", ")
                ),
            ));
        }
        let mut failed = Vec::new();
        for m in &members {
            if let Err(e) = self.remove_machine(&mut registry, m, Deletes::Wait).await {
                failed.push(e.message);
            }
        }
        if failed.is_empty() && registry.zones.contains(name) {
            self.span_leave(&registry, name).await;
            // Deleting it is what was asked, explicit or not.
            self.remove_zone(&mut registry, name, Deletes::Wait).await;
            self.save_zone_file(&registry);
        }
        self.save(&mut registry).await?;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::Internal,
                format!("deleting zone {name}: {}", failed.join("; ")),
            ))
        }
    }
}
