//! Planning: what an attach, a detach or a zone builds or removes, decided from the request,
//! the registry and what was observed beforehand — no kernel, no clock, no `/proc`. The plan is
//! a list of [`Step`]s (or [`Removal`]s) that `apply` executes; everything here is unit-tested
//! as plain data.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::api::Mac;
use crate::api::{
    ApiError, AttachRequest, ErrorKind, ExtraLink, Machine, MachineName, NetworkSpec, PortSpec,
    ZoneConfig, ZoneName,
};
use crate::dhcp_glue::DhcpLink;
use crate::firewall::{FirewallError, LinkRules};
use crate::ipv6::{LINK_PREFIX, eui64, gateway6};
use crate::naming::{LinkName, MacKey, generate_mac};

use super::registry::Registry;
use super::zones::ZoneEntry;
pub use super::zones::gateway;
use super::{CONTAINER_IFNAME, Settings, ZONE_PREFIX, bad, internal};

/// One step of building something; `apply` runs them in order and undoes the done ones, in
/// reverse, when one fails.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Extra links in the container (macvlan, ipvlan, moved interfaces, extra veths), in the
    /// request's order. Undo: remove them.
    AddExtras(Vec<ExtraLink>),
    /// `ip link add IFNAME type veth peer name PEER netns CONTAINER` (+ altname). Undo: delete.
    AddVeth {
        /// Host end.
        ifname: String,
        /// Full name kept as altname when `ifname` is shortened.
        altname: Option<String>,
        /// Host end's MAC.
        host_mac: Mac,
        /// Container end.
        peer: String,
        /// Container end's MAC.
        peer_mac: Mac,
    },
    /// `ip link add IFNAME type bridge`. Undo: delete.
    AddBridge {
        /// The bridge.
        ifname: String,
    },
    /// `ip addr add NET dev IFNAME` (undone with the link).
    AddAddress {
        /// The link.
        ifname: String,
        /// Address and prefix.
        net: Ipv4Network,
    },
    /// `ip -6 addr add NET dev IFNAME nodad`, duplicate address detection off on the link
    /// (undone with the link).
    AddAddress6 {
        /// The link.
        ifname: String,
        /// Address and prefix.
        net: Ipv6Network,
    },
    /// `ip link set IFNAME up` (undone with the link).
    SetUp {
        /// The link.
        ifname: String,
    },
    /// `ip link set IFNAME master BRIDGE up` (+ port isolation); undone with the link.
    JoinBridge {
        /// The port.
        ifname: String,
        /// The bridge.
        bridge: String,
        /// Bridge port isolation.
        isolated: bool,
    },
    /// Start the DHCP server on a link. Undo: stop it.
    Serve(DhcpPlan),
    /// Record a container's lease on a zone bridge. Undo: release it.
    RecordLease {
        /// The zone bridge.
        bridge: String,
        /// The container's MAC.
        mac: [u8; 6],
        /// Its address.
        addr: Ipv4Addr,
        /// Its name in the zone's DNS (the machine name).
        hostname: String,
    },
    /// Add firewall elements (one atomic batch). Undo: remove them.
    AddRules(LinkRules),
    /// Send router advertisements on a link (`crate::ra`). Undo: stop them.
    Advertise(AdvertPlan),
    /// Relay published ports on `[::1]` to the container (`crate::relay6`), each spec to its
    /// target. Undo: stop them.
    Relay(Vec<(PortSpec, IpAddr)>),
}

/// What a link's router advertisements announce; its ifindex is known only once the link
/// exists.
#[derive(Debug, Clone, PartialEq)]
pub struct AdvertPlan {
    /// The link.
    pub ifname: String,
    /// Its `/64`.
    pub prefix: Ipv6Network,
    /// The DNS server announced (RDNSS): the gateway, where the DNS forwarder listens.
    pub dns: Vec<Ipv6Addr>,
}

impl AdvertPlan {
    /// The advertisements of a link with `/64` `prefix`, naming its gateway as DNS server.
    pub fn new(ifname: &str, prefix: Ipv6Network) -> Self {
        Self {
            ifname: ifname.to_owned(),
            prefix,
            dns: vec![gateway6(prefix)],
        }
    }

    /// The service's view, with the link's ifindex.
    pub fn link(&self, index: u32) -> crate::ra::RaLink {
        crate::ra::RaLink {
            ifname: self.ifname.clone(),
            index,
            prefix: self.prefix,
            dns: self.dns.clone(),
        }
    }
}

/// What a link's DHCP server hands out; its ifindex is known only once the link exists.
#[derive(Debug, Clone, PartialEq)]
pub struct DhcpPlan {
    /// The link.
    pub ifname: String,
    /// Its subnet.
    pub subnet: Ipv4Network,
    /// The server's address, also the router.
    pub server: Ipv4Addr,
    /// DNS servers handed out.
    pub dns: Vec<Ipv4Addr>,
    /// The container's lease to record (MAC, address).
    pub container: Option<([u8; 6], Ipv4Addr)>,
    /// The host side's IPv6 address, where the DNS forwarder also listens.
    pub gateway6: Option<Ipv6Addr>,
}

impl DhcpPlan {
    /// The service's view, with the link's ifindex.
    pub fn link(&self, index: u32) -> DhcpLink {
        DhcpLink {
            ifname: self.ifname.clone(),
            index,
            subnet: self.subnet,
            server: self.server,
            dns: self.dns.clone(),
            container: self.container,
            gateway6: self.gateway6,
        }
    }
}

/// One thing to remove; `apply` tries every one and collects what failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Removal {
    /// Firewall elements.
    Rules(LinkRules),
    /// A machine's extra links.
    Extras(Vec<crate::api::AttachedLink>),
    /// A link's DHCP server and lease files.
    StopServing {
        /// The link.
        ifname: String,
        /// Its ifindex.
        index: u32,
    },
    /// A container's lease on a zone bridge.
    Release {
        /// The bridge's ifindex.
        index: u32,
        /// The container's MAC.
        mac: [u8; 6],
    },
    /// A link (a link already gone counts as removed).
    DelLink(String),
    /// A link's router advertisements.
    StopAdvertising(String),
    /// `[::1]` relays of published ports.
    StopRelay(Vec<PortSpec>),
}

/// Everything an attach will do, decided before anything is done.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachPlan {
    /// The answer (extra links are filled in as they are made).
    pub machine: Machine,
    /// A zone created for this member first (its first member).
    pub new_zone: Option<ZonePlan>,
    /// The `ve-` subnet taken from the pool.
    pub subnet: Option<Ipv4Network>,
    /// The container's firewall contribution.
    pub rules: LinkRules,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// A zone to create: its settings (subnet chosen) and steps.
#[derive(Debug, Clone, PartialEq)]
pub struct ZonePlan {
    /// The zone's settings, its subnet set.
    pub config: ZoneConfig,
    /// Kept when its last member goes.
    pub explicit: bool,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// What was looked at before planning an attach (reads only, no lock of the kernel's).
#[derive(Debug, Clone, Default)]
pub struct AttachObserved {
    /// Networks in use on the host (addresses and routes).
    pub in_use: Vec<Ipv4Network>,
    /// `--network-bridge=BR`: BR's ifindex and whether it is a bridge; for a new zone, whether
    /// `vz-ZONE` already exists (it must not).
    pub bridge: Option<(u32, bool)>,
    /// For a member of an existing zone with DHCP: the address its server would give the
    /// container's MAC.
    pub zone_address: Option<Ipv4Addr>,
}

/// The MACs and names of a machine's primary link (`PREFIX-NAME`/`host0`), as systemd derives
/// them.
fn primary_link(settings: &Settings, req: &AttachRequest, prefix: &str) -> (LinkName, Mac, Mac) {
    let name = req.machine.as_str();
    (
        LinkName::new(prefix, name),
        generate_mac(settings.machine_id, name, MacKey::Host, 0),
        container_mac(settings, &req.machine),
    )
}

/// The MAC of a machine's `host0`, as systemd derives it (also its DHCP client's hardware
/// address, which is how its lease is found).
pub fn container_mac(settings: &Settings, machine: &MachineName) -> Mac {
    generate_mac(settings.machine_id, machine.as_str(), MacKey::Container, 0)
}

/// The machine as answered, before addresses.
fn machine(
    req: &AttachRequest,
    settings: &Settings,
    link: Option<(&LinkName, Mac, Mac)>,
) -> Machine {
    Machine {
        machine: req.machine.clone(),
        pid: req.pid,
        network: req.network.clone(),
        host_ifname: link.map(|l| l.0.ifname.clone()),
        host_altname: link.and_then(|l| l.0.altname.clone()),
        container_ifname: link.map(|_| CONTAINER_IFNAME.to_owned()),
        host_mac: link.map(|l| l.1.to_string()),
        container_mac: link.map(|l| l.2.to_string()),
        subnet: None,
        host_address: None,
        container_address: None,
        dns: if link.is_some() {
            settings.dns.clone()
        } else {
            Vec::new()
        },
        ports: req.ports.clone(),
        links: Vec::new(),
        teardown_errors: Vec::new(),
        host_firewall: Vec::new(),
        held: req.held.clone(),
        subnet6: None,
        host_address6: None,
        container_address6: None,
    }
}

fn rules(m: &Machine) -> Result<LinkRules, ApiError> {
    link_rules(m).map_err(|e| bad(e.to_string()))
}

/// The firewall contribution of a machine: a `ve-` link's interface, subnets and ports; a zone
/// member's ports and its `vb-` port held to its MAC and address (its zone has the rest); on an
/// admin's bridge, its `vb-` port held to its MAC only.
pub fn link_rules(m: &Machine) -> Result<LinkRules, FirewallError> {
    let guard = |addr| -> Result<Option<nat::GuardedPort>, FirewallError> {
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
    let ports = port_mappings(m)?;
    match (&m.network, m.subnet) {
        (NetworkSpec::Veth, Some(subnet)) => Ok(LinkRules {
            ifname: Some(m.host_ifname.clone().unwrap_or_default()),
            subnet: Some(subnet),
            subnet6: m.subnet6,
            ports,
            guard: None,
        }),
        (NetworkSpec::Zone(_), _) => Ok(LinkRules {
            ports,
            guard: guard(Some(addr))?,
            ..LinkRules::default()
        }),
        _ => Ok(LinkRules {
            ports,
            ..LinkRules::default()
        }),
    }
}

/// Which families a published port is DNATed for: a port on every address for both (where the
/// machine has the address), one on an address for that address's family; `[::1]` for none
/// (the kernel cannot DNAT it: `crate::relay6` answers there).
fn port_families(p: &PortSpec) -> (bool, bool) {
    match p.host_address {
        None => (true, true),
        Some(IpAddr::V4(_)) => (true, false),
        Some(IpAddr::V6(a)) => (false, !a.is_loopback()),
    }
}

/// The nft mappings of a machine's published ports, IPv4 and IPv6.
fn port_mappings(m: &Machine) -> Result<Vec<nat::PortMapping>, FirewallError> {
    let mut out = Vec::new();
    for p in &m.ports {
        let (v4, v6) = port_families(p);
        let one = std::slice::from_ref(p);
        if let (true, Some(a)) = (v4, m.container_address) {
            out.extend(LinkRules::mappings(IpAddr::V4(a), one)?);
        }
        if let (true, Some(a)) = (v6, m.container_address6) {
            out.extend(LinkRules::mappings(IpAddr::V6(a), one)?);
        }
    }
    Ok(out)
}

/// The `[::1]` relays of a machine: its ports published on every address or on `::1`, to its
/// IPv6 address, or its IPv4 address without one.
pub fn relays(m: &Machine) -> Vec<(PortSpec, IpAddr)> {
    let target = m
        .container_address6
        .map(IpAddr::V6)
        .or(m.container_address.map(IpAddr::V4));
    let Some(target) = target else {
        return Vec::new();
    };
    m.ports
        .iter()
        .filter(|p| !crate::relay6::loopback_ports(p).is_empty())
        .map(|p| (p.clone(), target))
        .collect()
}

/// A port on a specific IPv6 address needs an IPv6 address in the container.
fn check_ports6(m: &Machine) -> Result<(), ApiError> {
    if m.container_address6.is_some() {
        return Ok(());
    }
    match m
        .ports
        .iter()
        .find(|p| matches!(p.host_address, Some(IpAddr::V6(a)) if !a.is_loopback()))
    {
        Some(p) => Err(bad(format!(
            "port {p} is on an IPv6 address, but machine {} gets no IPv6 address (IPv6 is off for it or for rnetd)",
            m.machine
        ))),
        None => Ok(()),
    }
}

/// The firewall contribution of a zone: its bridge and, when masqueraded, its subnets (of a
/// zone across hosts the whole zone's subnet, so traffic to other hosts' slices keeps its
/// source address).
pub fn zone_rules(config: &ZoneConfig) -> LinkRules {
    let span_subnet = config.span.as_ref().and_then(|s| s.subnet);
    LinkRules {
        ifname: Some(config.name.bridge()),
        subnet: span_subnet.or(config.subnet).filter(|_| config.masquerade),
        subnet6: config.subnet6.filter(|_| config.masquerade),
        ..LinkRules::default()
    }
}

/// The router advertisements of a `ve-` machine's link (`None` without IPv6).
pub fn veth_advert(m: &Machine) -> Option<AdvertPlan> {
    if m.network != NetworkSpec::Veth {
        return None;
    }
    Some(AdvertPlan::new(m.host_ifname.as_deref()?, m.subnet6?))
}

/// The router advertisements of a zone's bridge (`None` without IPv6).
pub fn zone_advert(config: &ZoneConfig) -> Option<AdvertPlan> {
    Some(AdvertPlan::new(&config.name.bridge(), config.subnet6?))
}

/// Parses a MAC as the API writes it (`aa:bb:cc:dd:ee:ff`).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    text.parse::<Mac>().ok().map(|m| m.0)
}

/// The MAC of a machine's container end, parsed from what it was answered.
pub fn machine_mac(m: &Machine) -> Option<[u8; 6]> {
    m.container_mac.as_deref().and_then(parse_mac)
}

/// The DHCP server of a `ve-` machine's link (`None` for other kinds).
pub fn veth_dhcp(m: &Machine) -> Option<DhcpPlan> {
    if m.network != NetworkSpec::Veth {
        return None;
    }
    Some(DhcpPlan {
        ifname: m.host_ifname.clone()?,
        subnet: m.subnet?,
        server: m.host_address?,
        dns: m.dns.clone(),
        container: machine_mac(m).zip(m.container_address),
        gateway6: m.host_address6,
    })
}

impl Registry {
    /// Plans an attach: names, MACs, subnet, container address, firewall elements, DHCP link
    /// and the steps that build them. Refusals (name taken, port taken, pool or zone full, no
    /// such bridge) come from here, before anything is built.
    pub fn plan_attach(
        &self,
        settings: &Settings,
        req: &AttachRequest,
        seen: &AttachObserved,
    ) -> Result<AttachPlan, ApiError> {
        if self.machines.contains_key(&req.machine) {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!("machine {} is already running", req.machine),
            ));
        }
        self.check_ports(req)?;
        if req.network == NetworkSpec::None && req.links.is_empty() {
            return Err(bad("nothing to attach: no veth and no extra links".into()));
        }
        let mut steps = Vec::new();
        if !req.links.is_empty() {
            // Extra links first: if the primary link then fails, they are undone.
            steps.push(Step::AddExtras(req.links.clone()));
        }
        let mut plan = match &req.network {
            NetworkSpec::None => AttachPlan {
                machine: machine(req, settings, None),
                new_zone: None,
                subnet: None,
                rules: LinkRules::default(),
                steps,
            },
            NetworkSpec::Veth => self.plan_veth(settings, req, seen, steps)?,
            NetworkSpec::Zone(zone) => self.plan_member(settings, req, zone, seen, steps)?,
            NetworkSpec::Bridge(bridge) => plan_bridge_port(settings, req, bridge, seen, steps)?,
        };
        check_ports6(&plan.machine)?;
        plan.rules = rules(&plan.machine)?;
        let relays = relays(&plan.machine);
        if !relays.is_empty() {
            plan.steps.push(Step::Relay(relays));
        }
        if plan.rules != LinkRules::default() {
            // Before a port joins a bridge (and before anything is served): no frame with
            // another MAC or address gets through, not even for a moment.
            let at = plan
                .steps
                .iter()
                .position(|s| matches!(s, Step::JoinBridge { .. } | Step::Serve(_)))
                .unwrap_or(plan.steps.len());
            plan.steps.insert(at, Step::AddRules(plan.rules.clone()));
        }
        Ok(plan)
    }

    /// `-n`: a `ve-` link with a subnet of its own, its DHCP server and masquerade.
    fn plan_veth(
        &self,
        settings: &Settings,
        req: &AttachRequest,
        seen: &AttachObserved,
        mut steps: Vec<Step>,
    ) -> Result<AttachPlan, ApiError> {
        let subnet = self
            .pool
            .peek(&self.taken(&seen.in_use))
            .map_err(pool_error)?;
        let (link, host_mac, peer_mac) = primary_link(settings, req, "ve-");
        let host_address = gateway(subnet);
        let client_id = dhcp::client_id_from_mac(peer_mac.0);
        let container = dhcp::pick_address(subnet, &client_id, |a| a != host_address)
            .ok_or_else(|| internal(format!("no container address left in {subnet}")))?;
        let mut m = machine(req, settings, Some((&link, host_mac, peer_mac)));
        m.subnet = Some(subnet);
        m.host_address = Some(host_address);
        m.container_address = Some(container);
        if req.ipv6
            && let Some(subnet6) = self.propose6()?
        {
            m.subnet6 = Some(subnet6);
            m.host_address6 = Some(gateway6(subnet6));
            m.container_address6 = Some(eui64(subnet6, peer_mac.0));
        }
        if m.dns.is_empty() {
            // The link's DNS forwarder (crate::dns), started with its DHCP server.
            m.dns = vec![host_address];
        }
        steps.push(veth_step(&link, host_mac, peer_mac));
        steps.push(Step::AddAddress {
            ifname: link.ifname.clone(),
            net: Ipv4Network::new(host_address, subnet.prefix()).map_err(internal)?,
        });
        if let (Some(subnet6), Some(gw6)) = (m.subnet6, m.host_address6) {
            steps.push(Step::AddAddress6 {
                ifname: link.ifname.clone(),
                net: Ipv6Network::new(gw6, subnet6.prefix()).map_err(internal)?,
            });
        }
        steps.push(Step::SetUp {
            ifname: link.ifname.clone(),
        });
        if let Some(dhcp) = veth_dhcp(&m) {
            steps.push(Step::Serve(dhcp));
        }
        if let Some(ra) = veth_advert(&m) {
            steps.push(Step::Advertise(ra));
        }
        Ok(AttachPlan {
            machine: m,
            new_zone: None,
            subnet: Some(subnet),
            rules: LinkRules::default(),
            steps,
        })
    }

    /// `--network-zone=Z`: a `vb-` port of `vz-Z`, the zone created first if it is new.
    fn plan_member(
        &self,
        settings: &Settings,
        req: &AttachRequest,
        zone: &ZoneName,
        seen: &AttachObserved,
        mut steps: Vec<Step>,
    ) -> Result<AttachPlan, ApiError> {
        let (new_zone, config) = match self.zones.get(zone) {
            Some(z) => (None, z.config.clone()),
            None => {
                let plan =
                    self.plan_zone(settings, ZoneConfig::implicit(zone.clone()), false, seen)?;
                let config = plan.config.clone();
                (Some(plan), config)
            }
        };
        let subnet = config
            .subnet
            .ok_or_else(|| internal(format!("zone {zone} has no subnet")))?;
        let gw = gateway(subnet);
        let (link, host_mac, peer_mac) = primary_link(settings, req, "vb-");
        let client_id = dhcp::client_id_from_mac(peer_mac.0);
        let address = match (config.dhcp, new_zone.is_some()) {
            // An existing zone's server knows its leases: the address it would give.
            (true, false) => seen.zone_address,
            // Otherwise the zone's own members are all there is.
            _ => {
                let used: Vec<Ipv4Addr> = self
                    .machines
                    .values()
                    .filter(|e| e.saved.machine.network == req.network)
                    .filter_map(|e| e.saved.machine.container_address)
                    .collect();
                dhcp::pick_address(subnet, &client_id, |a| a != gw && !used.contains(&a))
            }
        }
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::PoolExhausted,
                format!("zone {zone} is full: no free address left in {subnet}"),
            )
        })?;
        let mut m = machine(req, settings, Some((&link, host_mac, peer_mac)));
        m.subnet = Some(subnet);
        m.host_address = Some(gw);
        m.container_address = Some(address);
        if req.ipv6
            && let Some(subnet6) = config.subnet6
        {
            m.subnet6 = Some(subnet6);
            m.host_address6 = Some(gateway6(subnet6));
            m.container_address6 = Some(eui64(subnet6, peer_mac.0));
        }
        if m.dns.is_empty() && config.dhcp {
            m.dns = vec![gw];
        }
        steps.push(veth_step(&link, host_mac, peer_mac));
        if config.dhcp {
            steps.push(Step::RecordLease {
                bridge: zone.bridge(),
                mac: peer_mac.0,
                addr: address,
                hostname: req.machine.as_str().to_owned(),
            });
        }
        steps.push(Step::JoinBridge {
            ifname: link.ifname.clone(),
            bridge: zone.bridge(),
            isolated: config.isolated,
        });
        Ok(AttachPlan {
            machine: m,
            new_zone,
            subnet: None,
            rules: LinkRules::default(),
            steps,
        })
    }

    /// Plans zone `config.name`: its subnet (fixed or from the zone pool), bridge, address,
    /// DHCP server and firewall elements.
    pub fn plan_zone(
        &self,
        settings: &Settings,
        mut config: ZoneConfig,
        explicit: bool,
        seen: &AttachObserved,
    ) -> Result<ZonePlan, ApiError> {
        let bridge = config.name.bridge();
        if seen.bridge.is_some() {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!("interface {bridge} already exists on the host"),
            ));
        }
        let taken = self.taken(&seen.in_use);
        let subnet = match config.subnet {
            Some(net) => {
                let net = Ipv4Network::new(net.network(), net.prefix()).map_err(internal)?;
                if net.prefix() > 30 {
                    return Err(bad(format!("subnet {net} is too small for a zone")));
                }
                if let Some(t) = taken
                    .iter()
                    .find(|t| t.prefix() > 0 && crate::pool::overlaps(**t, net))
                {
                    return Err(bad(format!("subnet {net} overlaps {t}, which is in use")));
                }
                net
            }
            None => self.zones.propose_subnet(&taken).map_err(|e| {
                ApiError::new(
                    ErrorKind::PoolExhausted,
                    format!("no subnet left for zone {}: {e}", config.name),
                )
            })?,
        };
        debug_assert!(subnet.prefix() <= ZONE_PREFIX || config.subnet.is_some());
        config.subnet = Some(subnet);
        config.subnet6 = match (config.subnet6, &self.pool6) {
            (Some(net), _) if self.taken6().contains(&net) => {
                return Err(bad(format!("subnet {net} is in use")));
            }
            (Some(net), _) => Some(net),
            (None, Some(_)) => self.propose6()?,
            (None, None) => None,
        };
        let gw = gateway(subnet);
        let mut steps = vec![
            Step::AddBridge {
                ifname: bridge.clone(),
            },
            Step::AddAddress {
                ifname: bridge.clone(),
                net: Ipv4Network::new(gw, subnet.prefix()).map_err(internal)?,
            },
        ];
        if let Some(subnet6) = config.subnet6 {
            steps.push(Step::AddAddress6 {
                ifname: bridge.clone(),
                net: Ipv6Network::new(gateway6(subnet6), LINK_PREFIX).map_err(internal)?,
            });
        }
        steps.push(Step::SetUp {
            ifname: bridge.clone(),
        });
        if config.dhcp {
            steps.push(Step::Serve(DhcpPlan {
                ifname: bridge,
                subnet,
                server: gw,
                dns: settings.dns.clone(),
                container: None,
                gateway6: config.subnet6.map(gateway6),
            }));
        }
        if let Some(ra) = zone_advert(&config) {
            steps.push(Step::Advertise(ra));
        }
        steps.push(Step::AddRules(zone_rules(&config)));
        Ok(ZonePlan {
            config,
            explicit,
            steps,
        })
    }

    /// Plans the removal of a machine: firewall elements, extra links, DHCP server, link,
    /// zone lease; and, when it was the last member of an implicit zone, the zone to remove.
    pub fn plan_detach(&self, name: &MachineName) -> Option<(Vec<Removal>, Option<ZoneName>)> {
        let entry = self.machines.get(name)?;
        let m = &entry.saved.machine;
        let zone = match &m.network {
            NetworkSpec::Zone(z) => self.zones.get(z),
            _ => None,
        };
        let empty_zone = zone
            .filter(|z| !z.explicit && z.members.len() == 1 && z.members.contains(name))
            .map(|z| z.config.name.clone());
        Some((machine_removals(m, entry.index, zone), empty_zone))
    }
}

/// What removing machine `m` (host link `index`, member of `zone`) takes.
pub fn machine_removals(m: &Machine, index: u32, zone: Option<&ZoneEntry>) -> Vec<Removal> {
    let mut out = Vec::new();
    if let Ok(r) = link_rules(m)
        && r != LinkRules::default()
    {
        out.push(Removal::Rules(r));
    }
    let relayed = relays(m);
    if !relayed.is_empty() {
        out.push(Removal::StopRelay(
            relayed.into_iter().map(|(p, _)| p).collect(),
        ));
    }
    if !m.links.is_empty() {
        out.push(Removal::Extras(m.links.clone()));
    }
    if let Some(ifname) = &m.host_ifname {
        if m.network == NetworkSpec::Veth {
            if m.subnet6.is_some() {
                out.push(Removal::StopAdvertising(ifname.clone()));
            }
            out.push(Removal::StopServing {
                ifname: ifname.clone(),
                index,
            });
        }
        out.push(Removal::DelLink(ifname.clone()));
    }
    if let Some(zone) = zone
        && zone.config.dhcp
        && let Some(mac) = machine_mac(m)
    {
        out.push(Removal::Release {
            index: zone.index,
            mac,
        });
    }
    out
}

/// Plans the removal of a zone: its firewall elements, DHCP server and bridge.
pub fn plan_zone_removal(zone: &ZoneEntry) -> Vec<Removal> {
    let bridge = zone.config.name.bridge();
    let mut out = vec![Removal::Rules(zone_rules(&zone.config))];
    if zone.config.subnet6.is_some() {
        out.push(Removal::StopAdvertising(bridge.clone()));
    }
    if zone.config.dhcp {
        out.push(Removal::StopServing {
            ifname: bridge.clone(),
            index: zone.index,
        });
    }
    out.push(Removal::DelLink(bridge));
    out
}

/// `--network-bridge=BR`: a `vb-` port of the admin's bridge; nothing else from us.
fn plan_bridge_port(
    settings: &Settings,
    req: &AttachRequest,
    bridge: &str,
    seen: &AttachObserved,
    mut steps: Vec<Step>,
) -> Result<AttachPlan, ApiError> {
    if !req.ports.is_empty() {
        return Err(bad(
            "--port is not available with --network-bridge: the admin's bridge gets no address or NAT from rnet".into(),
        ));
    }
    match seen.bridge {
        None => return Err(bad(format!("bridge {bridge} does not exist"))),
        Some((_, false)) => return Err(bad(format!("{bridge} is not a bridge"))),
        Some((_, true)) => {}
    }
    let (link, host_mac, peer_mac) = primary_link(settings, req, "vb-");
    steps.push(veth_step(&link, host_mac, peer_mac));
    steps.push(Step::JoinBridge {
        ifname: link.ifname.clone(),
        bridge: bridge.to_owned(),
        isolated: false,
    });
    Ok(AttachPlan {
        machine: machine(req, settings, Some((&link, host_mac, peer_mac))),
        new_zone: None,
        subnet: None,
        rules: LinkRules::default(),
        steps,
    })
}

fn veth_step(link: &LinkName, host_mac: Mac, peer_mac: Mac) -> Step {
    Step::AddVeth {
        ifname: link.ifname.clone(),
        altname: link.altname.clone(),
        host_mac,
        peer: CONTAINER_IFNAME.to_owned(),
        peer_mac,
    }
}

fn pool_error(e: crate::pool::PoolError) -> ApiError {
    match e {
        crate::pool::PoolError::Exhausted { .. } => {
            ApiError::new(ErrorKind::PoolExhausted, e.to_string())
        }
        other => internal(other),
    }
}

/// Reservations: what a plan takes from the pools before it is applied, and gives back if
/// applying fails.
impl Registry {
    /// Takes what a plan reserves (its subnets) before it is applied; [`Registry::unreserve`]
    /// gives them back if applying fails.
    pub fn reserve(&mut self, plan: &AttachPlan) -> Result<(), ApiError> {
        if let Some(net) = plan.subnet {
            self.pool.take(net).map_err(super::internal)?;
        }
        if plan.machine.network == NetworkSpec::Veth
            && let (Some(net), Some(pool)) = (plan.machine.subnet6, self.pool6.as_mut())
        {
            pool.advance(net);
        }
        if let Some(z) = &plan.new_zone {
            self.reserve_zone(z)?;
        }
        Ok(())
    }

    /// Gives back what [`Registry::reserve`] took.
    pub fn unreserve(&mut self, plan: &AttachPlan) {
        if let Some(net) = plan.subnet {
            self.pool.release(net);
        }
        if let Some(z) = &plan.new_zone {
            self.unreserve_zone(z);
        }
    }

    /// Takes a zone plan's subnet.
    pub fn reserve_zone(&mut self, z: &ZonePlan) -> Result<(), ApiError> {
        if let (Some(net), Some(pool)) = (z.config.subnet6, self.pool6.as_mut()) {
            pool.advance(net);
        }
        match z.config.subnet {
            Some(net) => self.zones.reserve_subnet(net).map_err(super::internal),
            None => Ok(()),
        }
    }

    /// Gives a zone plan's subnet back.
    pub fn unreserve_zone(&mut self, z: &ZonePlan) {
        if let Some(net) = z.config.subnet {
            self.zones.release_subnet(net);
        }
    }

    /// Records a built zone.
    pub fn commit_zone(&mut self, z: ZonePlan, index: u32) {
        self.zones.add(z.config, index, z.explicit);
    }
}
