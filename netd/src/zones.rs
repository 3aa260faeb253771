//! Zones (`--network-zone=Z`, `rnet zone`): a bridge `vz-Z` with a /24, a DHCP server and
//! masquerade, whose ports are the members' `vb-` links. Created with the first member and
//! removed with the last, unless created explicitly; explicit zones are kept in the state
//! directory and come back after a restart.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use tracing::{info, warn};

use crate::api::{ApiError, ErrorKind, Zone, ZoneConfig, ZoneName};
use crate::dhcp_glue::DhcpLink;
use crate::firewall::LinkRules;
use crate::machines::{Inner, Machines, ZoneEntry, internal};
use crate::pool::overlaps;
use crate::state::SavedZone;

/// The firewall contribution of a zone: its bridge and, when masqueraded, its subnet.
pub(crate) fn zone_rules(z: &ZoneEntry) -> LinkRules {
    config_rules(&z.config)
}

/// The firewall contribution of a zone with settings `config` (its subnet set).
pub(crate) fn config_rules(config: &ZoneConfig) -> LinkRules {
    LinkRules {
        ifname: Some(config.name.bridge()),
        subnet: config.subnet.filter(|_| config.masquerade),
        ..LinkRules::default()
    }
}

impl Machines {
    /// Builds zone `config.name`: subnet, bridge, address, DHCP server, firewall elements.
    /// Nothing is left behind on error.
    pub(crate) async fn create_zone(
        &self,
        inner: &mut Inner,
        mut config: ZoneConfig,
        explicit: bool,
    ) -> Result<(), ApiError> {
        let bad = |m: String| ApiError::new(ErrorKind::BadRequest, m);
        let bridge = config.name.bridge();
        if self.rtnl.link(&bridge).await.map_err(internal)?.is_some() {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!("interface {bridge} already exists on the host"),
            ));
        }
        let in_use = self.rtnl.ipv4_in_use().await.map_err(internal)?;
        let taken = inner.taken(&in_use);
        let subnet = match config.subnet {
            Some(net) => {
                let net = Ipv4Network::new(net.network(), net.prefix()).map_err(internal)?;
                if net.prefix() > 30 {
                    return Err(bad(format!("subnet {net} is too small for a zone")));
                }
                if let Some(t) = taken.iter().find(|t| t.prefix() > 0 && overlaps(**t, net)) {
                    return Err(bad(format!("subnet {net} overlaps {t}, which is in use")));
                }
                inner.zone_pool.reserve(net).map_err(internal)?;
                net
            }
            None => inner
                .zone_pool
                .allocate(&taken)
                .map_err(|e| ApiError::new(ErrorKind::PoolExhausted, e.to_string()))?,
        };
        config.subnet = Some(subnet);
        let built = self.build_zone(&config, subnet).await;
        match built {
            Ok(index) => {
                info!(zone = %config.name, %bridge, %subnet, explicit, "zone created");
                inner.zones.insert(
                    config.name.clone(),
                    ZoneEntry {
                        config,
                        index,
                        explicit,
                        members: BTreeSet::new(),
                    },
                );
                Ok(())
            }
            Err(e) => {
                inner.zone_pool.release(subnet);
                Err(e)
            }
        }
    }

    async fn build_zone(&self, config: &ZoneConfig, subnet: Ipv4Network) -> Result<u32, ApiError> {
        let bridge = config.name.bridge();
        let index = self.rtnl.add_bridge(&bridge).await.map_err(internal)?;
        let undo = |e: ApiError| async {
            if let Err(d) = self.rtnl.del_link(&bridge).await {
                warn!(%bridge, error = %d, "undoing a half-built zone bridge failed");
            }
            e
        };
        let address = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let step = async {
            let net = Ipv4Network::new(address, subnet.prefix()).map_err(internal)?;
            self.rtnl.add_address(index, net).await.map_err(internal)?;
            self.rtnl.set_up(index).await.map_err(internal)?;
            if config.dhcp {
                self.dhcp
                    .add_link(&DhcpLink {
                        ifname: bridge.clone(),
                        index,
                        subnet,
                        server: address,
                        dns: self.settings.dns.clone(),
                        container: None,
                    })
                    .await
                    .map_err(internal)?;
            }
            let entry = ZoneEntry {
                config: ZoneConfig {
                    subnet: Some(subnet),
                    ..config.clone()
                },
                index,
                explicit: false,
                members: BTreeSet::new(),
            };
            if let Err(e) = self.firewall.lock().await.add(&zone_rules(&entry)).await {
                self.dhcp.remove_link(&bridge, index).await;
                return Err(internal(e));
            }
            Ok(index)
        }
        .await;
        match step {
            Ok(i) => Ok(i),
            Err(e) => Err(undo(e).await),
        }
    }

    /// Removes a zone's bridge, DHCP server, firewall elements and subnet.
    pub(crate) async fn remove_zone(&self, inner: &mut Inner, name: &ZoneName) {
        let Some(z) = inner.zones.remove(name) else {
            return;
        };
        let bridge = name.bridge();
        if let Err(e) = self.firewall.lock().await.remove(&zone_rules(&z)).await {
            warn!(zone = %name, error = %e, "removing the zone's firewall elements failed");
        }
        self.dhcp.remove_link(&bridge, z.index).await;
        if let Err(e) = self.rtnl.del_link(&bridge).await {
            warn!(zone = %name, error = %e, "deleting the zone bridge failed");
        }
        inner.zone_pool.release(z.subnet());
        if z.explicit {
            self.save_zone_file(inner);
        }
        info!(zone = %name, %bridge, "zone removed");
    }

    fn save_zone_file(&self, inner: &Inner) {
        let explicit: Vec<ZoneConfig> = inner
            .zones
            .values()
            .filter(|z| z.explicit)
            .map(|z| z.config.clone())
            .collect();
        if let Err(e) = self.zone_file.save(&explicit) {
            warn!(error = %e, "saving the explicit zones failed");
        }
    }

    /// At start: adopts the zones whose bridge still exists, re-creates explicit zones that are
    /// missing (e.g. after a reboot).
    pub(crate) async fn restore_zones(
        &self,
        inner: &mut Inner,
        saved: &[SavedZone],
        explicit: &[ZoneConfig],
    ) {
        for s in saved {
            let name = &s.config.name;
            let bridge = name.bridge();
            let Some(subnet) = s.config.subnet else {
                continue;
            };
            let index = match self.rtnl.link_index(&bridge).await {
                Ok(Some(i)) => i,
                _ => continue,
            };
            if inner.zone_pool.reserve(subnet).is_err() {
                warn!(zone = %name, %subnet, "saved zone subnet overlaps another; dropping it");
                continue;
            }
            let is_explicit = s.explicit || explicit.iter().any(|c| &c.name == name);
            if s.config.dhcp {
                let link = DhcpLink {
                    ifname: bridge.clone(),
                    index,
                    subnet,
                    server: Ipv4Addr::from(u32::from(subnet.network()) + 1),
                    dns: self.settings.dns.clone(),
                    container: None,
                };
                if let Err(e) = self.dhcp.add_link(&link).await {
                    warn!(zone = %name, error = %e, "restarting the zone's DHCP server failed");
                }
            }
            info!(zone = %name, %bridge, "zone adopted");
            inner.zones.insert(
                name.clone(),
                ZoneEntry {
                    config: s.config.clone(),
                    index,
                    explicit: is_explicit,
                    members: BTreeSet::new(),
                },
            );
        }
        for c in explicit {
            if inner.zones.contains_key(&c.name) {
                continue;
            }
            if let Err(e) = self.create_zone(inner, c.clone(), true).await {
                warn!(zone = %c.name, error = %e, "re-creating an explicit zone failed");
            }
        }
    }

    /// Removes implicit zones without members (theirs all ended while we were down).
    pub(crate) async fn drop_empty_implicit_zones(&self, inner: &mut Inner) {
        let empty: Vec<ZoneName> = inner
            .zones
            .iter()
            .filter(|(_, z)| !z.explicit && z.members.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for z in empty {
            self.remove_zone(inner, &z).await;
        }
    }

    fn zone_info(&self, z: &ZoneEntry) -> Zone {
        Zone {
            name: z.config.name.clone(),
            bridge: z.config.name.bridge(),
            subnet: z.subnet(),
            address: z.address(),
            members: z.members.iter().cloned().collect(),
            leases: if z.config.dhcp {
                self.dhcp.leases(z.index).len()
            } else {
                0
            },
            explicit: z.explicit,
            masquerade: z.config.masquerade,
            dhcp: z.config.dhcp,
            isolated: z.config.isolated,
        }
    }

    /// `rnet zone create`.
    pub async fn zone_create(&self, config: ZoneConfig) -> Result<Zone, ApiError> {
        let mut inner = self.inner.lock().await;
        if inner.zones.contains_key(&config.name) {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!("zone {} already exists", config.name),
            ));
        }
        let name = config.name.clone();
        self.create_zone(&mut inner, config, true).await?;
        self.save_zone_file(&inner);
        self.save(&inner).await?;
        inner
            .zones
            .get(&name)
            .map(|z| self.zone_info(z))
            .ok_or_else(|| internal("zone vanished"))
    }

    /// `rnet zone list`.
    pub async fn zone_list(&self) -> Vec<Zone> {
        let inner = self.inner.lock().await;
        inner.zones.values().map(|z| self.zone_info(z)).collect()
    }

    /// `rnet zone show`.
    pub async fn zone_show(&self, name: &ZoneName) -> Result<Zone, ApiError> {
        let inner = self.inner.lock().await;
        inner
            .zones
            .get(name)
            .map(|z| self.zone_info(z))
            .ok_or_else(|| zone_not_found(name))
    }

    /// `rnet zone delete [--force]`.
    pub async fn zone_delete(&self, name: &ZoneName, force: bool) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        let members: Vec<_> = match inner.zones.get(name) {
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
        for m in &members {
            self.remove_locked(&mut inner, m).await;
        }
        if let Some(z) = inner.zones.get_mut(name) {
            // Deleting it is what was asked, explicit or not.
            let was_explicit = z.explicit;
            z.explicit = false;
            self.remove_zone(&mut inner, name).await;
            if was_explicit {
                self.save_zone_file(&inner);
            }
        }
        self.save(&inner).await
    }
}

fn zone_not_found(name: &ZoneName) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no zone {name}"))
}
