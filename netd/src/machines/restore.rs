//! The restart path: what the saved state says, compared with what is observed (processes,
//! links), decides — in [`plan_restart`], pure — which zones and machines are adopted, which
//! explicit zones are built again, and which machines are torn down; [`Machines::restore`]
//! then applies that and removes the links of ours that nothing explains.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info, warn};

use crate::api::{ApiError, ExtraLink, MachineName, NetworkSpec, ZoneConfig, ZoneName};
use crate::firewall::LinkRules;
use crate::state::{SavedMachine, State};

use super::apply::Deletes;
use super::plan::{link_rules, machine_mac, machine_removals, veth_dhcp, zone_rules};
use super::registry::{Entry, Registry};
use super::system::{Ipv6Services, Leases, Links, Procs, System};
use super::{Machines, internal, span};

/// What was observed of the saved machines and zones.
#[derive(Debug, Clone, Default)]
pub struct RestartObserved {
    /// For each saved machine: whether its process is the one saved (pid and start time).
    pub alive: BTreeMap<MachineName, bool>,
    /// For each saved link name: its ifindex, if it exists.
    pub links: BTreeMap<String, u32>,
}

/// What a restart does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestartPlan {
    /// Zones whose bridge is still there: (settings, ifindex, explicit).
    pub adopt_zones: Vec<(ZoneConfig, u32, bool)>,
    /// Explicit zones whose bridge is gone (a reboot): built again.
    pub rebuild_zones: Vec<ZoneConfig>,
    /// Machines still alive with their link: (saved, ifindex of the host link, 0 for none).
    pub adopt: Vec<(SavedMachine, u32)>,
    /// Machines that ended meanwhile or lost their link: torn down.
    pub stale: Vec<SavedMachine>,
}

/// Decides the restart from the saved state, the explicit zones' file and what is observed.
pub fn plan_restart(saved: &State, explicit: &[ZoneConfig], seen: &RestartObserved) -> RestartPlan {
    let mut plan = RestartPlan::default();
    let mut zones: BTreeSet<ZoneName> = BTreeSet::new();
    for z in &saved.zones {
        let name = &z.config.name;
        if z.config.subnet.is_none() {
            continue;
        }
        if let Some(&index) = seen.links.get(&name.bridge()) {
            let is_explicit = z.explicit || explicit.iter().any(|c| &c.name == name);
            plan.adopt_zones
                .push((z.config.clone(), index, is_explicit));
            zones.insert(name.clone());
        }
    }
    for c in explicit {
        if !zones.contains(&c.name) {
            plan.rebuild_zones.push(c.clone());
        }
    }
    for s in &saved.machines {
        let m = &s.machine;
        let alive = seen.alive.get(&m.machine).copied().unwrap_or(false);
        let link = match &m.host_ifname {
            Some(ifname) => seen.links.get(ifname).copied(),
            None => Some(0),
        };
        let zone_ok = match &m.network {
            NetworkSpec::Zone(z) => zones.contains(z),
            _ => true,
        };
        match link {
            Some(index) if alive && zone_ok => plan.adopt.push((s.clone(), index)),
            _ => plan.stale.push(s.clone()),
        }
    }
    plan
}

/// The names of every link the saved state mentions (to look up).
fn saved_links(saved: &State) -> Vec<String> {
    saved
        .machines
        .iter()
        .filter_map(|s| s.machine.host_ifname.clone())
        .chain(saved.zones.iter().map(|z| z.config.name.bridge()))
        .collect()
}

impl<S: System> Machines<S> {
    /// Observes, plans and applies the restart (see the module docs).
    pub(super) async fn restore(
        &self,
        saved: State,
        explicit: Vec<ZoneConfig>,
    ) -> Result<(), ApiError> {
        let mut seen = RestartObserved::default();
        for s in &saved.machines {
            let m = &s.machine;
            let alive = match &m.held {
                Some(holder) => self.held_alive(holder, s.held_ns),
                None => self.procs.start_time(m.pid).ok() == Some(s.pid_start_time),
            };
            seen.alive.insert(m.machine.clone(), alive);
        }
        for name in saved_links(&saved) {
            if let Some((index, _)) = self.links.lookup(&name).await.map_err(internal)? {
                seen.links.insert(name, index);
            }
        }
        let plan = plan_restart(&saved, &explicit, &seen);

        // The table as the saved state says it is, so that removing what went stale below
        // subtracts from it (and cannot mistake the first removal for the last link going);
        // once adoption is done, the table is set to what was adopted and reconciled.
        let saved_rules: Vec<LinkRules> = saved
            .machines
            .iter()
            .filter_map(|s| link_rules(&s.machine).ok())
            .chain(saved.zones.iter().map(|z| zone_rules(&z.config)))
            .collect();
        if let Err(e) = self.firewall.lock().await.adopt(&saved_rules) {
            warn!(error = %e, "the saved state has firewall rules that cannot be used");
        }

        let mut registry = self.registry.lock().await;
        for (config, index, explicit) in plan.adopt_zones {
            self.adopt_zone(&mut registry, config, index, explicit)
                .await;
        }
        for config in plan.rebuild_zones {
            let name = config.name.clone();
            if let Err(e) = self.create_zone(&mut registry, config, true).await {
                warn!(zone = %name, error = %e, "re-creating an explicit zone failed");
            }
        }
        for s in plan.stale {
            self.remove_stale(&mut registry, &s).await;
        }
        for (s, index) in plan.adopt {
            if !self.adopt(&mut registry, &s, index).await {
                self.remove_stale(&mut registry, &s).await;
            }
        }
        // Implicit zones whose members all went while we were down.
        for z in registry.zones.empty_implicit() {
            self.remove_zone(&mut registry, &z, Deletes::Wait).await;
        }
        self.remove_unexplained_links(&registry).await;
        let links: Vec<LinkRules> = registry
            .machines
            .values()
            .filter_map(|e| link_rules(&e.saved.machine).ok())
            .chain(registry.zones.iter().map(|z| zone_rules(&z.config)))
            .collect();
        {
            let mut firewall = self.firewall.lock().await;
            firewall.adopt(&links).map_err(internal)?;
            match firewall.reconcile().await {
                Ok(true) => info!("firewall tables brought in line with the adopted machines"),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "checking the firewall table failed"),
            }
        }
        self.save_all(&mut registry).await
    }

    /// Takes over a zone whose bridge survived: its subnet, its DHCP server.
    async fn adopt_zone(
        &self,
        registry: &mut Registry,
        config: ZoneConfig,
        index: u32,
        explicit: bool,
    ) {
        let name = config.name.clone();
        let Some(subnet) = config.subnet else { return };
        if registry.zones.reserve_subnet(subnet).is_err() {
            warn!(zone = %name, %subnet, "saved zone subnet overlaps another; dropping it");
            return;
        }
        if config.dhcp {
            let link = super::plan::DhcpPlan {
                ifname: name.bridge(),
                subnet,
                server: super::plan::gateway(subnet),
                dns: self.settings.dns.clone(),
                container: None,
                gateway6: config.subnet6.map(crate::ipv6::gateway6),
            }
            .link(index);
            if let Err(e) = self.leases.serve(&link).await {
                warn!(zone = %name, error = %e, "restarting the zone's DHCP server failed");
            }
        }
        if let Some(ra) = super::plan::zone_advert(&config)
            && let Err(e) = self.ipv6.advertise(&ra.link(index))
        {
            warn!(zone = %name, error = %e, "restarting the zone's router advertisements failed");
        }
        info!(zone = %name, bridge = %name.bridge(), "zone adopted");
        registry.zones.add(config, index, explicit);
    }

    /// Takes over a live machine; false when it cannot be (its subnet is taken, its process
    /// cannot be watched): it is then torn down.
    async fn adopt(&self, registry: &mut Registry, s: &SavedMachine, index: u32) -> bool {
        let m = &s.machine;
        if let (NetworkSpec::Veth, Some(net)) = (&m.network, m.subnet)
            && registry.pool.reserve(net).is_err()
        {
            warn!(machine = %m.machine, %net, "saved subnet overlaps another; removing the machine");
            return false;
        }
        // An attachment no process owns has no process to watch (`held.rs`).
        let pidfd = match &m.held {
            Some(_) => None,
            None => match self.procs.pidfd(m.pid) {
                Ok(pidfd) => Some(pidfd),
                Err(_) => {
                    if let (NetworkSpec::Veth, Some(net)) = (&m.network, m.subnet) {
                        registry.pool.release(net);
                    }
                    return false;
                }
            },
        };
        if let Some(plan) = veth_dhcp(m)
            && let Err(e) = self.leases.serve(&plan.link(index)).await
        {
            warn!(machine = %m.machine, error = %e, "restarting the DHCP server failed");
        }
        if let Some(ra) = super::plan::veth_advert(m)
            && let Err(e) = self.ipv6.advertise(&ra.link(index))
        {
            warn!(machine = %m.machine, error = %e, "restarting the router advertisements failed");
        }
        for (spec, target) in super::plan::relays(m) {
            if let Err(e) = self.ipv6.relay(&spec, target) {
                warn!(machine = %m.machine, error = %e, "restarting a [::1] relay failed");
            }
        }
        if let NetworkSpec::Zone(z) = &m.network
            && let Some(zone) = registry.zones.get(z)
            && zone.config.dhcp
            && let (Some(mac), Some(addr)) = (machine_mac(m), m.container_address)
            // Its lease may not have reached the disk before rnetd stopped.
            && !self.leases.record(zone.index, mac, addr, m.machine.as_str()).await
        {
            warn!(machine = %m.machine, %addr, "its zone address is leased to another client");
        }
        let netns = if super::extras::needs_netns(&m.links) {
            match &m.held {
                // Checked to be the saved namespace by `held_alive`.
                Some(h) => std::fs::File::open(&h.netns).ok().map(Into::into),
                None => self.procs.open_netns(m.pid).ok(),
            }
        } else {
            None
        };
        let signal_fd = pidfd.as_ref().and_then(|p| p.try_clone().ok());
        let watcher = pidfd.map(|p| self.watch(m.machine.clone(), p));
        info!(machine = %m.machine, ifname = m.host_ifname.as_deref().unwrap_or("-"), "adopted");
        registry.commit_machine(
            m.clone(),
            Entry {
                saved: s.clone(),
                index,
                watcher,
                pidfd: signal_fd,
                netns,
                teardown_errors: Vec::new(),
            },
        );
        true
    }

    /// Tears down a machine that ended while rnetd was down.
    async fn remove_stale(&self, registry: &mut Registry, s: &SavedMachine) {
        let m = &s.machine;
        info!(machine = %m.machine, ifname = m.host_ifname.as_deref().unwrap_or("-"), "removing stale attachment");
        let zone = match &m.network {
            NetworkSpec::Zone(z) => registry.zones.get(z),
            _ => None,
        };
        let index = match &m.host_ifname {
            Some(ifname) => self
                .links
                .lookup(ifname)
                .await
                .ok()
                .flatten()
                .map_or(0, |(i, _)| i),
            None => 0,
        };
        for f in self
            .remove(machine_removals(m, index, zone), None, Deletes::Wait)
            .await
        {
            warn!(machine = %m.machine, failure = %f, "removing a stale attachment failed in part");
        }
    }

    /// Deletes the links of ours (in [`crate::rtnl::LINK_GROUP`]) that no adopted machine or
    /// zone explains: left by a crash between creating them and saving the state.
    async fn remove_unexplained_links(&self, registry: &Registry) {
        let explained: BTreeSet<String> = registry
            .machines
            .values()
            .flat_map(|e| {
                let m = &e.saved.machine;
                m.host_ifname
                    .iter()
                    .cloned()
                    .chain(m.links.iter().filter_map(|l| match &l.spec {
                        ExtraLink::VethExtra { host, .. } => Some(host.clone()),
                        _ => None,
                    }))
            })
            .chain(registry.zones.iter().map(|z| z.config.name.bridge()))
            .chain(span::devices(registry))
            .collect();
        let marked = match self.links.marked_links().await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "listing links to find stale ones failed");
                return;
            }
        };
        for name in marked.into_iter().filter(|n| !explained.contains(n)) {
            match self.links.del_link(&name).await {
                Ok(()) => {
                    info!(ifname = %name, "removed a link of ours that no saved state explains")
                }
                Err(e) => warn!(ifname = %name, error = %e, "removing a stale link failed"),
            }
        }
    }
}
