//! The daemon's in-memory state: attached machines, zones, the two subnet pools. Pure: it
//! changes only when a plan has been applied (commit) or a teardown has run (forget), and it is
//! what the state file is made of.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use ipnetwork::Ipv4Network;
use tokio::task::AbortHandle;

use crate::api::{
    ApiError, AttachRequest, ErrorKind, Machine, MachineName, NetworkSpec, Zone, ZoneConfig,
    ZoneName,
};
use crate::pool::Pool;
use crate::state::{SavedMachine, SavedZone, State};

/// The gateway (host side) of a link or zone subnet: its first address. The one place that
/// says so.
pub fn gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// An attached machine.
pub struct Entry {
    /// What the state file keeps of it.
    pub saved: SavedMachine,
    /// ifindex of the host-side link (0: none).
    pub index: u32,
    /// The task watching its process.
    pub watcher: Option<AbortHandle>,
    /// A pidfd of the container's process, to signal it without a pid-reuse race.
    pub pidfd: Option<OwnedFd>,
    /// The container's network namespace, held while interfaces moved into it must be moved
    /// back when it ends.
    pub netns: Option<OwnedFd>,
    /// What failed when it was last detached: a machine whose teardown failed stays listed,
    /// with the failures, until a detach succeeds.
    pub teardown_errors: Vec<String>,
}

impl Entry {
    /// The machine as the API shows it, with what its last teardown left failing.
    pub fn view(&self) -> Machine {
        Machine {
            teardown_errors: self.teardown_errors.clone(),
            ..self.saved.machine.clone()
        }
    }
}

/// A zone that exists: its bridge, subnet and members.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneEntry {
    /// Settings; `subnet` is the subnet in use.
    pub config: ZoneConfig,
    /// ifindex of `vz-ZONE`.
    pub index: u32,
    /// Kept when its last member goes, and across restarts.
    pub explicit: bool,
    /// Its members.
    pub members: BTreeSet<MachineName>,
}

impl ZoneEntry {
    /// The zone's subnet.
    pub fn subnet(&self) -> Option<Ipv4Network> {
        self.config.subnet
    }

    /// The zone's gateway address (on `vz-ZONE`).
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.subnet().map(gateway)
    }

    /// The API's view of the zone, with `leases` leases.
    pub fn info(&self, leases: usize) -> Zone {
        let subnet = self.subnet().unwrap_or_else(|| {
            Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 32).unwrap_or_else(|_| unreachable!())
        });
        Zone {
            name: self.config.name.clone(),
            bridge: self.config.name.bridge(),
            subnet,
            address: gateway(subnet),
            members: self.members.iter().cloned().collect(),
            leases: if self.config.dhcp { leases } else { 0 },
            explicit: self.explicit,
            masquerade: self.config.masquerade,
            dhcp: self.config.dhcp,
            isolated: self.config.isolated,
        }
    }
}

/// Machines, zones and pools.
pub struct Registry {
    /// Attached machines.
    pub machines: BTreeMap<MachineName, Entry>,
    /// Existing zones.
    pub zones: BTreeMap<ZoneName, ZoneEntry>,
    /// Subnets (`/28` by default) of `ve-` links.
    pub pool: Pool,
    /// `/24`s of zones.
    pub zone_pool: Pool,
}

impl Registry {
    /// An empty registry over two pools.
    pub fn new(pool: Pool, zone_pool: Pool) -> Self {
        Self {
            machines: BTreeMap::new(),
            zones: BTreeMap::new(),
            pool,
            zone_pool,
        }
    }

    /// Everything in use on the host plus what either pool handed out.
    pub fn taken(&self, in_use: &[Ipv4Network]) -> Vec<Ipv4Network> {
        in_use
            .iter()
            .chain(self.pool.allocated())
            .chain(self.zone_pool.allocated())
            .copied()
            .collect()
    }

    /// Refuses host ports that another machine (or the same request) already publishes.
    pub fn check_ports(&self, req: &AttachRequest) -> Result<(), ApiError> {
        for (i, p) in req.ports.iter().enumerate() {
            if let Some(q) = req.ports[..i].iter().find(|q| q.overlaps(p)) {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    format!("port mappings {q} and {p} claim the same host port"),
                ));
            }
            for e in self.machines.values() {
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

    /// Records an attached machine (and its zone membership).
    pub fn commit_machine(&mut self, machine: Machine, entry: Entry) {
        if let NetworkSpec::Zone(z) = &machine.network
            && let Some(zone) = self.zones.get_mut(z)
        {
            zone.members.insert(machine.machine.clone());
        }
        self.machines.insert(machine.machine.clone(), entry);
    }

    /// Forgets a machine whose networking is gone: its subnet back to the pool, out of its
    /// zone.
    pub fn forget_machine(&mut self, name: &MachineName) -> Option<Entry> {
        let entry = self.machines.remove(name)?;
        let m = &entry.saved.machine;
        match (&m.network, m.subnet) {
            (NetworkSpec::Veth, Some(net)) => {
                self.pool.release(net);
            }
            (NetworkSpec::Zone(z), _) => {
                if let Some(zone) = self.zones.get_mut(z) {
                    zone.members.remove(name);
                }
            }
            _ => {}
        }
        Some(entry)
    }

    /// Forgets a removed zone: its subnet back to the pool.
    pub fn forget_zone(&mut self, name: &ZoneName) -> Option<ZoneEntry> {
        let z = self.zones.remove(name)?;
        if let Some(net) = z.subnet() {
            self.zone_pool.release(net);
        }
        Some(z)
    }

    /// What the state file keeps.
    pub fn state(&self, forward_restore: Option<String>) -> State {
        State {
            machines: self.machines.values().map(|e| e.saved.clone()).collect(),
            zones: self
                .zones
                .values()
                .map(|z| SavedZone {
                    config: z.config.clone(),
                    explicit: z.explicit,
                })
                .collect(),
            forward_restore,
            ..State::default()
        }
    }

    /// The explicit zones' settings (the zone file).
    pub fn explicit_zones(&self) -> Vec<ZoneConfig> {
        self.zones
            .values()
            .filter(|z| z.explicit)
            .map(|z| z.config.clone())
            .collect()
    }
}
