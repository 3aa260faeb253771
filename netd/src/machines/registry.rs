//! The daemon's in-memory state: attached machines, zones, the two subnet pools. Pure: it
//! changes only when a plan has been applied (commit) or a teardown has run (forget), and it is
//! what the state file is made of.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;

use ipnetwork::{Ipv4Network, Ipv6Network};
use tokio::task::AbortHandle;

use crate::api::{
    ApiError, AttachRequest, ErrorKind, Machine, MachineName, NetworkSpec, ZoneConfig, ZoneName,
};
use crate::ipv6::Pool6;
use crate::pool::Pool;

pub use super::zones::{ZoneEntry, Zones};
use crate::state::{Change, SavedMachine, SavedZone, State};

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

/// Machines, zones and pools.
pub struct Registry {
    /// Attached machines.
    pub machines: BTreeMap<MachineName, Entry>,
    /// Existing zones and their subnets.
    pub zones: Zones,
    /// Subnets (`/28` by default) of `ve-` links.
    pub pool: Pool,
    /// The IPv6 `/64`s of `ve-` links and zones; `None` without IPv6.
    pub pool6: Option<Pool6>,
    /// Machines committed or forgotten since the last [`Registry::changes`].
    changed: Vec<MachineName>,
}

impl Registry {
    /// An empty registry over two pools.
    pub fn new(pool: Pool, zone_pool: Pool, pool6: Option<Pool6>) -> Self {
        Self {
            machines: BTreeMap::new(),
            zones: Zones::new(zone_pool),
            pool,
            pool6,
            changed: Vec::new(),
        }
    }

    /// The IPv6 `/64`s in use: those of `ve-` machines and of zones (a zone member's is its
    /// zone's).
    pub fn taken6(&self) -> BTreeSet<Ipv6Network> {
        self.machines
            .values()
            .filter(|e| e.saved.machine.network == NetworkSpec::Veth)
            .filter_map(|e| e.saved.machine.subnet6)
            .chain(self.zones.iter().filter_map(|z| z.config.subnet6))
            .collect()
    }

    /// A free `/64` for a new link or zone, or `None` without IPv6; an error when all are
    /// taken.
    pub fn propose6(&self) -> Result<Option<Ipv6Network>, ApiError> {
        let Some(pool) = &self.pool6 else {
            return Ok(None);
        };
        pool.propose(&self.taken6()).map(Some).ok_or_else(|| {
            ApiError::new(
                ErrorKind::PoolExhausted,
                format!("no IPv6 /64 left in {}", pool.base()),
            )
        })
    }

    /// Everything in use on the host plus what either pool handed out.
    pub fn taken(&self, in_use: &[Ipv4Network]) -> Vec<Ipv4Network> {
        in_use
            .iter()
            .chain(self.pool.allocated())
            .chain(self.zones.subnets())
            .copied()
            // The whole subnet of a zone across hosts: other hosts' slices live there.
            .chain(
                self.zones
                    .iter()
                    .filter_map(|z| z.config.span.as_ref()?.subnet),
            )
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
        if let NetworkSpec::Zone(z) = &machine.network {
            self.zones.join(z, &machine.machine);
        }
        self.changed.push(machine.machine.clone());
        self.machines.insert(machine.machine.clone(), entry);
    }

    /// Forgets a machine whose networking is gone: its subnet back to the pool, out of its
    /// zone.
    pub fn forget_machine(&mut self, name: &MachineName) -> Option<Entry> {
        let entry = self.machines.remove(name)?;
        self.changed.push(name.clone());
        let m = &entry.saved.machine;
        match (&m.network, m.subnet) {
            (NetworkSpec::Veth, Some(net)) => {
                self.pool.release(net);
            }
            (NetworkSpec::Zone(z), _) => self.zones.leave(z, name),
            _ => {}
        }
        Some(entry)
    }

    /// Forgets a removed zone: its subnet back to the pool.
    pub fn forget_zone(&mut self, name: &ZoneName) -> Option<ZoneEntry> {
        self.zones.remove(name)
    }

    /// What changed since the last call, for the state file's journal: every machine and zone
    /// committed or forgotten, as it is now (its record, or gone). O(changes), not O(machines).
    pub fn changes(&mut self) -> Vec<Change<'_>> {
        let mut machines = std::mem::take(&mut self.changed);
        machines.sort();
        machines.dedup();
        let zones = self.zones.take_changed();
        let me = &*self;
        machines
            .into_iter()
            .map(|n| match me.machines.get(&n) {
                Some(e) => Change::Machine(&e.saved),
                None => Change::Forget(n),
            })
            .chain(zones.into_iter().map(|n| match me.zones.get(&n) {
                Some(z) => Change::Zone(&z.config, z.explicit),
                None => Change::ForgetZone(n),
            }))
            .collect()
    }

    /// What the state file keeps (the whole state, for a rewrite); the changes so far are
    /// in it, so they are dropped.
    pub fn state(&mut self, forward_restore: Option<String>) -> State {
        self.changed.clear();
        self.zones.take_changed();
        State {
            machines: self.machines.values().map(|e| e.saved.clone()).collect(),
            zones: self
                .zones
                .iter()
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
        self.zones.explicit_configs()
    }
}
