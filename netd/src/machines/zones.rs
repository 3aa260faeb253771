//! Zones as the registry keeps them: each zone's settings, bridge and members, and the pool
//! their `/24`s come from. A narrow interface: the rest of the daemon asks for a zone, a
//! subnet proposal, or a membership change, and never touches the map or the pool itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::api::{MachineName, Zone, ZoneConfig, ZoneName};
use crate::pool::{Pool, PoolError};

/// The gateway (host side) of a link or zone subnet: its first address. The one place that
/// says so.
pub fn gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
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
            subnet6: self.config.subnet6,
            address6: self.config.subnet6.map(crate::ipv6::gateway6),
            span: None,
        }
    }
}

/// The zones that exist and the pool of their subnets.
pub struct Zones {
    map: BTreeMap<ZoneName, ZoneEntry>,
    pool: Pool,
    /// Zones added or removed since the last [`Zones::take_changed`].
    changed: Vec<ZoneName>,
}

impl Zones {
    /// No zones; subnets from `pool`.
    pub fn new(pool: Pool) -> Self {
        Self {
            map: BTreeMap::new(),
            pool,
            changed: Vec::new(),
        }
    }

    /// Zone `name`, if it exists.
    pub fn get(&self, name: &ZoneName) -> Option<&ZoneEntry> {
        self.map.get(name)
    }

    /// Whether zone `name` exists.
    pub fn contains(&self, name: &ZoneName) -> bool {
        self.map.contains_key(name)
    }

    /// Every zone, by name.
    pub fn iter(&self) -> impl Iterator<Item = &ZoneEntry> {
        self.map.values()
    }

    /// The subnets zones hold (or have reserved).
    pub fn subnets(&self) -> &[Ipv4Network] {
        self.pool.allocated()
    }

    /// The subnet a new zone would get, given the networks `taken` on the host.
    pub fn propose_subnet(&self, taken: &[Ipv4Network]) -> Result<Ipv4Network, PoolError> {
        self.pool.peek(taken)
    }

    /// Holds `net` for a zone being built or adopted.
    pub fn reserve_subnet(&mut self, net: Ipv4Network) -> Result<(), PoolError> {
        self.pool.take(net)
    }

    /// Gives back a subnet held by [`Zones::reserve_subnet`] for a zone that was not built.
    pub fn release_subnet(&mut self, net: Ipv4Network) {
        self.pool.release(net);
    }

    /// Records a zone that exists (its subnet already reserved).
    pub fn add(&mut self, config: ZoneConfig, index: u32, explicit: bool) {
        self.changed.push(config.name.clone());
        self.map.insert(
            config.name.clone(),
            ZoneEntry {
                config,
                index,
                explicit,
                members: BTreeSet::new(),
            },
        );
    }

    /// Forgets a removed zone; its subnet goes back to the pool.
    pub fn remove(&mut self, name: &ZoneName) -> Option<ZoneEntry> {
        let z = self.map.remove(name)?;
        self.changed.push(name.clone());
        if let Some(net) = z.subnet() {
            self.pool.release(net);
        }
        Some(z)
    }

    /// The zones added or removed since the last call, each once, by name (the state file's
    /// changes; membership is not saved with the zone).
    pub fn take_changed(&mut self) -> Vec<ZoneName> {
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort();
        changed.dedup();
        changed
    }

    /// `machine` becomes a member of `zone`.
    pub fn join(&mut self, zone: &ZoneName, machine: &MachineName) {
        if let Some(z) = self.map.get_mut(zone) {
            z.members.insert(machine.clone());
        }
    }

    /// `machine` is no longer a member of `zone`.
    pub fn leave(&mut self, zone: &ZoneName, machine: &MachineName) {
        if let Some(z) = self.map.get_mut(zone) {
            z.members.remove(machine);
        }
    }

    /// The implicit zones without members (theirs all went).
    pub fn empty_implicit(&self) -> Vec<ZoneName> {
        self.map
            .values()
            .filter(|z| !z.explicit && z.members.is_empty())
            .map(|z| z.config.name.clone())
            .collect()
    }

    /// The explicit zones' settings (the zone file).
    pub fn explicit_configs(&self) -> Vec<ZoneConfig> {
        self.map
            .values()
            .filter(|z| z.explicit)
            .map(|z| z.config.clone())
            .collect()
    }
}
