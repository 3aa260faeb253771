//! Zones across hosts in the machine logic: `rnet zone create --distributed` joins the zone in
//! etcd (`crate::distributed`), then builds it as a local zone on this host's slice, plus the
//! zone's VXLAN device and its firewall elements; zone delete undoes it; a restart resumes it.
//! The local zone is the ordinary one of `zones.rs` (its `subnet` is the slice), so members
//! attach to it as to any zone, also while etcd is away.

use std::sync::Arc;

use ipnetwork::Ipv4Network;
use nat::{Change, IfName};
use tracing::{info, warn};

use super::apply::Deletes;
use super::registry::Registry;
use super::system::{Leases, Links, System};
use super::{Machines, bad, internal};
use crate::api::{ApiError, ErrorKind, NetworkSpec, Span, Zone, ZoneConfig, ZoneName};
use crate::distributed::keys::ZoneRecord;
use crate::distributed::{Fabric, vxlan};

/// Whether zone `name` is `--isolated`.
fn config_isolated(registry: &Registry, name: &ZoneName) -> bool {
    registry.zones.get(name).is_some_and(|z| z.config.isolated)
}

/// The VXLAN devices of the registry's distributed zones (links of ours that state explains).
pub(super) fn devices(registry: &Registry) -> Vec<String> {
    registry
        .zones
        .iter()
        .filter(|z| z.config.span.is_some())
        .map(|z| vxlan::device_name(&z.config.name))
        .collect()
}

/// The firewall elements of a distributed zone beside its bridge's: the VXLAN device is one
/// of our links (so zones stay isolated from each other: traffic between `vx-A` and `vz-B`
/// is dropped), allowed to forward to and from the zone's own bridge only, and not even that
/// for an `--isolated` zone (its members reach no other member, on this host or another).
fn span_changes(zone: &ZoneName, isolated: bool, add: bool) -> Result<Vec<Change>, ApiError> {
    let vx = IfName::new(vxlan::device_name(zone)).map_err(internal)?;
    let vz = IfName::new(zone.bridge()).map_err(internal)?;
    let mut out = Vec::new();
    if add {
        out.push(Change::AddIface(vx.clone()));
    }
    if !isolated {
        if add {
            out.push(Change::AllowPair(vz.clone(), vx.clone()));
            out.push(Change::AllowPair(vx.clone(), vz));
        } else {
            out.push(Change::DelPair(vz.clone(), vx.clone()));
            out.push(Change::DelPair(vx.clone(), vz));
        }
    }
    if !add {
        out.push(Change::DelIface(vx));
    }
    Ok(out)
}

impl<S: System> Machines<S> {
    /// Hands the daemon its fabric (`rnetd --etcd`); false if it had one.
    pub fn set_fabric(&self, fabric: Arc<Fabric>) -> bool {
        self.fabric.set(fabric).is_ok()
    }

    /// `rnet zone create NAME --distributed`: joins the zone in etcd (its record created if
    /// absent, a slice claimed), builds the local zone on the slice and the VXLAN data path.
    /// Nothing is left behind on error (the claim is withdrawn).
    pub(super) async fn span_create(&self, mut config: ZoneConfig) -> Result<Zone, ApiError> {
        let name = config.name.clone();
        let fabric = self.fabric.get().cloned().ok_or_else(|| {
            bad(format!(
                "zone {name} is distributed, but rnetd runs without --etcd"
            ))
        })?;
        if config.subnet.is_some() {
            return Err(bad(format!(
                "zone {name}: a distributed zone's subnet is given in its span (each host takes a slice)"
            )));
        }
        let span = config.span.clone().unwrap_or(Span {
            subnet: None,
            vni: None,
        });
        let mut registry = self.registry.lock().await;
        if registry.zones.contains(&name) {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!("zone {name} already exists"),
            ));
        }
        let in_use = self.links.ipv4_in_use().await.map_err(internal)?;
        let joined = fabric
            .join(&name, span.subnet, span.vni, None, &in_use)
            .await?;
        config.subnet = Some(joined.slice);
        config.span = Some(Span {
            subnet: Some(joined.record.subnet),
            vni: Some(joined.record.vni),
        });
        if let Err(e) = self.create_zone(&mut registry, config, true).await {
            fabric
                .leave(&name, Some(joined.slice), async |_: &str| {})
                .await;
            return Err(e);
        }
        let isolated = config_isolated(&registry, &name);
        if let Err(e) = self
            .span_up(
                &fabric,
                &name,
                isolated,
                joined.record,
                joined.slice,
                Some(joined.lease),
            )
            .await
        {
            self.remove_zone(&mut registry, &name, Deletes::Wait).await;
            fabric
                .leave(&name, Some(joined.slice), async |dev: &str| {
                    let _ = self.links.del_link(dev).await;
                })
                .await;
            return Err(e);
        }
        self.save_zone_file(&registry);
        self.save(&mut registry).await?;
        registry
            .zones
            .get(&name)
            .map(|z| self.span_info(z.info(self.leases.lease_count(z.index))))
            .ok_or_else(|| internal("zone vanished"))
    }

    /// Before a member attaches to zone `network` that this host does not have: when etcd
    /// defines the zone, this host joins it first (as `rnet zone create --distributed`); else
    /// the zone is a local one, created with its member as always. With `--etcd`, a zone's
    /// first member on a host needs etcd to tell which (one clear error otherwise).
    pub(super) async fn span_join_for(&self, network: &NetworkSpec) -> Result<(), ApiError> {
        let (Some(fabric), NetworkSpec::Zone(zone)) = (self.fabric.get(), network) else {
            return Ok(());
        };
        if self.registry.lock().await.zones.contains(zone) {
            return Ok(());
        }
        if !fabric.defined(zone).await? {
            return Ok(());
        }
        let config = ZoneConfig {
            span: Some(Span {
                subnet: None,
                vni: None,
            }),
            ..ZoneConfig::implicit(zone.clone())
        };
        match self.span_create(config).await {
            Ok(_) => Ok(()),
            // Another member's attach joined first.
            Err(e) if e.kind == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The VXLAN device (address: the slice's network address, as flannel gives its device),
    /// its task, and its firewall elements.
    async fn span_up(
        &self,
        fabric: &Arc<Fabric>,
        name: &ZoneName,
        isolated: bool,
        record: ZoneRecord,
        slice: Ipv4Network,
        lease: Option<i64>,
    ) -> Result<(), ApiError> {
        let addr = Ipv4Network::new(slice.network(), 32).map_err(internal)?;
        fabric
            .activate(name, record, slice, lease, async |index| {
                match self.links.add_address(index, addr).await {
                    Ok(()) => {}
                    Err(e) if e.errno == Some(libc::EEXIST) => {}
                    Err(e) => return Err(internal(e)),
                }
                self.links.set_up(index).await.map_err(internal)
            })
            .await?;
        self.firewall
            .lock()
            .await
            .change_elements(&span_changes(name, isolated, true)?)
            .await
            .map_err(internal)
    }

    /// Zone delete of a distributed zone: its firewall elements, its keys in etcd, its VXLAN
    /// device (the local zone goes as any zone does).
    pub(super) async fn span_leave(&self, registry: &Registry, name: &ZoneName) {
        let Some(zone) = registry.zones.get(name) else {
            return;
        };
        if zone.config.span.is_none() {
            return;
        }
        if let Ok(changes) = span_changes(name, zone.config.isolated, false)
            && let Err(e) = self.firewall.lock().await.change_elements(&changes).await
        {
            warn!(zone = %name, error = %e, "removing the VXLAN device's firewall elements failed");
        }
        match self.fabric.get() {
            Some(f) => {
                f.leave(name, None, async |dev: &str| {
                    if let Err(e) = self.links.del_link(dev).await {
                        warn!(zone = %name, error = %e, "deleting the VXLAN device failed");
                    }
                })
                .await
            }
            None => {
                let _ = self.links.del_link(&vxlan::device_name(name)).await;
            }
        }
    }

    /// After a restart: the distributed zones of the saved state get their VXLAN device (kept
    /// as it is when it exists), firewall elements and task again; the task claims the saved
    /// slice again with a new lease as soon as etcd answers.
    pub async fn resume_spans(&self) {
        let registry = self.registry.lock().await;
        let spans: Vec<(ZoneName, Span, Option<Ipv4Network>, bool)> = registry
            .zones
            .iter()
            .filter_map(|z| {
                Some((
                    z.config.name.clone(),
                    z.config.span.clone()?,
                    z.config.subnet,
                    z.config.isolated,
                ))
            })
            .collect();
        for (name, span, slice, isolated) in spans {
            let Some(fabric) = self.fabric.get() else {
                warn!(zone = %name, "zone is distributed, but rnetd runs without --etcd: its hosts are not followed");
                continue;
            };
            let Some(slice) = slice else { continue };
            let record = ZoneRecord::new(&name, span.subnet, span.vni);
            match self
                .span_up(fabric, &name, isolated, record, slice, None)
                .await
            {
                Ok(()) => info!(zone = %name, %slice, "distributed zone resumed"),
                Err(e) => {
                    warn!(zone = %name, error = %e.message, "resuming distributed zone failed")
                }
            }
        }
    }

    /// Adds the span (subnet, VNI, hosts) to the API's view of a distributed zone.
    pub(super) fn span_info(&self, mut zone: Zone) -> Zone {
        if let Some(f) = self.fabric.get() {
            zone.span = f.info(&zone.name);
        }
        zone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;

    fn registry_with_span_zone() -> Registry {
        let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
        let mut r = Registry::new(
            Pool::new(vec![net("10.77.0.0/16"), net("10.78.0.0/16")], 28).unwrap(),
            Pool::new(vec![net("10.0.0.0/8")], 24).unwrap(),
            None,
        );
        let mut web = ZoneConfig::implicit(ZoneName::new("web").unwrap());
        web.subnet = Some(net("10.77.1.0/24"));
        web.span = Some(Span {
            subnet: Some(net("10.77.0.0/16")),
            vni: Some(77),
        });
        r.zones.reserve_subnet(net("10.77.1.0/24")).unwrap();
        r.zones.add(web, 5, true);
        let mut local = ZoneConfig::implicit(ZoneName::new("lab").unwrap());
        local.subnet = Some(net("10.9.0.0/24"));
        r.zones.reserve_subnet(net("10.9.0.0/24")).unwrap();
        r.zones.add(local, 6, true);
        r
    }

    #[test]
    fn a_span_zone_explains_its_vxlan_device_and_holds_its_whole_subnet() {
        let r = registry_with_span_zone();
        assert_eq!(devices(&r), ["vx-web"]);
        let taken = r.taken(&[]);
        assert!(
            taken.contains(&"10.77.0.0/16".parse().unwrap()),
            "{taken:?}"
        );
        assert!(taken.contains(&"10.77.1.0/24".parse().unwrap()));
        // New ve- subnets and zones stay out of the other hosts' slices.
        assert_eq!(
            r.pool.peek(&taken).unwrap(),
            "10.78.0.0/28".parse().unwrap()
        );
    }

    #[test]
    fn span_elements_pair_the_vxlan_device_with_its_bridge_only() {
        let z = ZoneName::new("web").unwrap();
        let add = span_changes(&z, false, true).unwrap();
        let vx = IfName::new("vx-web").unwrap();
        let vz = IfName::new("vz-web").unwrap();
        assert_eq!(
            add,
            [
                Change::AddIface(vx.clone()),
                Change::AllowPair(vz.clone(), vx.clone()),
                Change::AllowPair(vx.clone(), vz.clone()),
            ]
        );
        let del = span_changes(&z, false, false).unwrap();
        assert_eq!(del.len(), 3);
        assert_eq!(del[2], Change::DelIface(vx.clone()));
        // An isolated zone's device is paired with nothing: no member reaches another host.
        assert_eq!(
            span_changes(&z, true, true).unwrap(),
            [Change::AddIface(vx.clone())]
        );
        assert_eq!(
            span_changes(&z, true, false).unwrap(),
            [Change::DelIface(vx)]
        );
        // Masquerade covers the zone's whole subnet, so traffic between slices keeps its source.
        let r = registry_with_span_zone();
        let web = r.zones.get(&z).unwrap();
        assert_eq!(
            super::super::plan::zone_rules(&web.config).subnet,
            Some("10.77.0.0/16".parse().unwrap())
        );
    }
}
