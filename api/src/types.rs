//! Request and response types. Every struct rejects unknown fields.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use super::{IfName, IfNameError, MachineName, PortSpec};

/// A request to `rnetd`. Changing requests need uid 0; `List` and `Status` are open to all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Give a container networking. The container's network namespace is passed as the
    /// connection's `SCM_RIGHTS` fd.
    Attach(AttachRequest),
    /// Remove what `Attach` built for a machine.
    Detach {
        /// The machine to detach.
        machine: MachineName,
    },
    /// Ask a machine to stop (SIGTERM to its process).
    Stop {
        /// The machine to stop.
        machine: MachineName,
    },
    /// All attached machines.
    List,
    /// One attached machine.
    Status {
        /// The machine to show.
        machine: MachineName,
    },
    /// Create a zone explicitly: it stays when its last member goes, and across restarts.
    ZoneCreate(ZoneConfig),
    /// All zones.
    ZoneList,
    /// One zone.
    ZoneShow {
        /// The zone.
        zone: ZoneName,
    },
    /// Delete a zone; refused while it has members unless `force` (which detaches them).
    ZoneDelete {
        /// The zone.
        zone: ZoneName,
        /// Detach members first.
        #[serde(default)]
        force: bool,
    },
    /// Detach the attachment held for `owner` (see [`Holder`]); answered with the machines
    /// released, none when nothing was held for it (so a repeated release succeeds).
    Release {
        /// The holder's owner key, e.g. `cni/NETWORK/CONTAINERID/IFNAME` or `netns/NAME`.
        owner: String,
    },
    /// Detach every attachment whose owner starts with `prefix` and is not in `keep` (CNI's
    /// GC); answered with the machines released.
    ReleaseExcept {
        /// The owners concerned, e.g. `cni/NETWORK/`.
        prefix: String,
        /// The owners to keep.
        #[serde(default)]
        keep: Vec<String>,
    },
}

impl Request {
    /// What the request asks, for messages: `attach machine web`, `delete zone lab`, ...
    pub fn describe(&self) -> String {
        match self {
            Request::Attach(a) => format!("attach machine {}", a.machine),
            Request::Detach { machine } => format!("detach machine {machine}"),
            Request::Stop { machine } => format!("stop machine {machine}"),
            Request::List => "list machines".to_owned(),
            Request::Status { machine } => format!("show machine {machine}"),
            Request::ZoneCreate(z) => format!("create zone {}", z.name),
            Request::ZoneList => "list zones".to_owned(),
            Request::ZoneShow { zone } => format!("show zone {zone}"),
            Request::ZoneDelete { zone, force } => {
                format!(
                    "delete zone {zone}{}",
                    if *force { " (forced)" } else { "" }
                )
            }
            Request::Release { owner } => format!("release {owner}"),
            Request::ReleaseExcept { prefix, keep } => {
                format!("release {prefix}* but {} kept", keep.len())
            }
        }
    }

    /// Whether the request changes anything (and so needs uid 0).
    pub fn is_change(&self) -> bool {
        matches!(
            self,
            Request::Attach(_)
                | Request::Detach { .. }
                | Request::Stop { .. }
                | Request::ZoneCreate(_)
                | Request::ZoneDelete { .. }
                | Request::Release { .. }
                | Request::ReleaseExcept { .. }
        )
    }
}

/// What `Attach` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// The machine's name; unique among attached machines.
    pub machine: MachineName,
    /// The pid of the container's first process, watched through a pidfd: when it exits,
    /// `rnetd` removes the machine's networking even if nobody sends `Detach`.
    pub pid: u32,
    /// The kind of network to build.
    pub network: NetworkSpec,
    /// Host ports to publish to the container.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Links besides the primary one: macvlan, ipvlan, moved interfaces, extra veths.
    #[serde(default)]
    pub links: Vec<ExtraLink>,
    /// An attachment no process owns (a CNI container, a named namespace): `pid` is 0, the
    /// fd must be the namespace at `held.netns`, and rnetd keeps the attachment until it is
    /// released or detached, across its own restarts while that namespace exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Holder>,
    /// What the process `pid` is, which tells how `Stop` asks it to end.
    #[serde(default, skip_serializing_if = "InitKind::is_other")]
    pub init: InitKind,
    /// IPv6 on the primary link (`rnet run --ipv6=no` sets it false): a `/64`, the launcher's
    /// address and default route, router advertisements. Left out of the JSON when true.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub ipv6: bool,
}

/// Who holds an attachment that no process owns, and where its network namespace is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawHolder")]
pub struct Holder {
    /// A key naming the holder, unique among attachments: `cni/NETWORK/CONTAINERID/IFNAME`,
    /// `netns/NAME`. Printable ASCII without spaces, at most [`MAX_OWNER_LEN`] bytes.
    pub owner: String,
    /// The namespace's path (a bind mount of an nsfs file, as `ip netns add` makes, or
    /// `/proc/PID/ns/net`): reopened when rnetd restarts.
    pub netns: PathBuf,
}

/// Longest holder owner key.
pub const MAX_OWNER_LEN: usize = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHolder {
    owner: String,
    netns: PathBuf,
}

impl Holder {
    /// Checks an owner key: 1 to [`MAX_OWNER_LEN`] bytes of printable ASCII, no spaces.
    pub fn check_owner(owner: &str) -> Result<(), String> {
        if owner.is_empty() || owner.len() > MAX_OWNER_LEN {
            return Err(format!(
                "holder owner must be 1 to {MAX_OWNER_LEN} bytes long"
            ));
        }
        if let Some(c) = owner.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "holder owner {owner:?} contains {c:?}; use printable ASCII without spaces"
            ));
        }
        Ok(())
    }
}

impl TryFrom<RawHolder> for Holder {
    type Error = String;

    fn try_from(raw: RawHolder) -> Result<Self, String> {
        Holder::check_owner(&raw.owner)?;
        if !raw.netns.is_absolute() {
            return Err(format!(
                "holder netns path {} is not absolute",
                raw.netns.display()
            ));
        }
        Ok(Self {
            owner: raw.owner,
            netns: raw.netns,
        })
    }
}

/// The kind of a container's first process, for `Stop` (systemd-nspawn's `--kill-signal=`
/// default): systemd takes SIGTERM as "re-execute" and powers off on SIGRTMIN+3; anything
/// else gets SIGTERM. Either gets SIGKILL when it has not ended after a timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitKind {
    /// Not systemd (rnet's own init, busybox init, a payload as PID 1).
    #[default]
    Other,
    /// systemd as PID 1 (`rnet run -b` of a tree whose init is systemd).
    Systemd,
}

impl InitKind {
    /// The default (left out of the wire format, so older peers read the request).
    pub fn is_other(&self) -> bool {
        *self == Self::Other
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Whether IPv6 space starting at `first` can be handed to containers: not multicast,
/// loopback, unspecified or link-local (zone subnets and rnetd's `--pool6`).
pub fn usable_unicast6(first: Ipv6Addr) -> bool {
    !(first.is_multicast()
        || first.is_loopback()
        || first.is_unspecified()
        || first.is_unicast_link_local())
}

/// A link of a container besides the primary veth. Every name is checked with
/// [`IfName`] when the link is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExtraLink {
    /// `--network-macvlan=IF[:NAME]`: a macvlan (bridge mode) on host link `parent`, named
    /// `mv-IF` (shortened like systemd) unless `name` is given.
    Macvlan {
        /// The host link it sits on.
        parent: String,
        /// Its name in the container.
        name: Option<String>,
    },
    /// `--network-ipvlan=IF[:NAME]`: an ipvlan (L2) on `parent`, named `iv-IF` by default.
    Ipvlan {
        /// The host link it sits on.
        parent: String,
        /// Its name in the container.
        name: Option<String>,
    },
    /// `--network-interface=IF[:NEW]`: the host link `name` moved into the container (renamed
    /// to `rename`), moved back with its name when the container ends.
    Interface {
        /// The host link.
        name: String,
        /// Its name in the container.
        rename: Option<String>,
    },
    /// `--network-veth-extra=HOST[:CONT]`: an extra veth pair, no address from us.
    VethExtra {
        /// The host side's name.
        host: String,
        /// The container side's name (default: `host`).
        container: Option<String>,
    },
}

/// An interface name in a request that [`IfName::new`] refused, and which one it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct BadIfName {
    /// The name's role, e.g. "macvlan parent".
    pub what: &'static str,
    /// Why it was refused.
    pub reason: IfNameError,
}

fn check_ifname(what: &'static str, name: &str) -> Result<(), BadIfName> {
    IfName::new(name)
        .map(drop)
        .map_err(|reason| BadIfName { what, reason })
}

fn check_opt_ifname(what: &'static str, name: Option<&String>) -> Result<(), BadIfName> {
    name.map_or(Ok(()), |n| check_ifname(what, n))
}

// The derives above (with `remote = "Self"`) make inherent `ExtraLink::serialize` and
// `ExtraLink::deserialize`; the trait impls below use them and check the names on the way in,
// so the wire shape is written once.
impl Serialize for ExtraLink {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ExtraLink::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for ExtraLink {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let link = ExtraLink::deserialize(d)?;
        link.check().map_err(serde::de::Error::custom)?;
        Ok(link)
    }
}

impl ExtraLink {
    /// Checks every interface name of the link.
    fn check(&self) -> Result<(), BadIfName> {
        match self {
            ExtraLink::Macvlan { parent, name } => {
                check_ifname("macvlan parent", parent)?;
                check_opt_ifname("macvlan name", name.as_ref())
            }
            ExtraLink::Ipvlan { parent, name } => {
                check_ifname("ipvlan parent", parent)?;
                check_opt_ifname("ipvlan name", name.as_ref())
            }
            ExtraLink::Interface { name, rename } => {
                check_ifname("moved interface", name)?;
                check_opt_ifname("moved interface's new name", rename.as_ref())
            }
            ExtraLink::VethExtra { host, container } => {
                check_ifname("extra veth host side", host)?;
                check_opt_ifname("extra veth container side", container.as_ref())
            }
        }
    }
}

/// What an extra link became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachedLink {
    /// What was asked for.
    pub spec: ExtraLink,
    /// Its name in the container.
    pub container_ifname: String,
}

/// The network a container gets. A bridge's name is checked with [`IfName`] when the
/// spec is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case", deny_unknown_fields)]
pub enum NetworkSpec {
    /// `--network-veth`: a `ve-NAME` / `host0` pair with a /28 of its own.
    Veth,
    /// `--network-zone=Z`: `vb-NAME` is a port of bridge `vz-Z` (created with the first
    /// member), which has a /24, DHCP and masquerade.
    Zone(ZoneName),
    /// `--network-bridge=BR`: `vb-NAME` is a port of the admin's existing bridge; no address,
    /// DHCP or NAT from us.
    Bridge(String),
    /// A private network with only extra links (macvlan, ipvlan, moved interfaces, extra
    /// veths) and no primary veth.
    None,
}

// As for [`ExtraLink`]: one wire shape, the bridge's name checked on the way in.
impl Serialize for NetworkSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        NetworkSpec::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for NetworkSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = NetworkSpec::deserialize(d)?;
        if let NetworkSpec::Bridge(b) = &spec {
            check_ifname("bridge", b).map_err(serde::de::Error::custom)?;
        }
        Ok(spec)
    }
}

/// A zone name: at most 12 characters so that `vz-NAME` is a valid interface name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ZoneName(String);

/// Longest zone name (`vz-` + 12 = 15 characters).
pub const MAX_ZONE_LEN: usize = 12;

impl ZoneName {
    /// Validates a zone name: 1 to 12 characters of letters, digits, `-` and `_`.
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > MAX_ZONE_LEN {
            return Err(format!(
                "zone name {name:?} must be 1 to {MAX_ZONE_LEN} characters (so that vz-{name} fits in an interface name)"
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "zone name {name:?} contains {c:?}; use letters, digits, '-' and '_'"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The zone's bridge, `vz-NAME`.
    pub fn bridge(&self) -> String {
        format!("vz-{}", self.0)
    }
}

impl std::fmt::Display for ZoneName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

impl std::str::FromStr for ZoneName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for ZoneName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ZoneName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Settings of a zone. A fixed subnet is checked with [`ZoneConfig::check_subnet`] when the
/// config is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawZoneConfig")]
pub struct ZoneConfig {
    /// The zone's name.
    pub name: ZoneName,
    /// A fixed subnet; default: a /24 from the pool.
    #[serde(default)]
    pub subnet: Option<Ipv4Network>,
    /// Masquerade traffic from the zone to the outside.
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// Run a DHCP server on the zone's bridge.
    #[serde(default = "yes")]
    pub dhcp: bool,
    /// Members cannot reach each other (bridge port isolation).
    #[serde(default)]
    pub isolated: bool,
    /// The zone's IPv6 `/64` (`None`: chosen by rnetd from its ULA prefix when the zone is
    /// created, or no IPv6 with `rnetd --ipv6=no`). A given one must be a `/64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Network>,
    /// A zone spanning hosts (`rnet zone create --distributed`), kept in etcd; `subnet` is
    /// then this host's slice of the zone's subnet once rnetd has claimed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<Span>,
}

/// The settings of a zone spanning hosts (see `docs/architecture.md`, "Zones across hosts").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Span {
    /// The whole zone's subnet (every host's slice is in it); none in a request: the zone's
    /// record in etcd says, or rnetd's default.
    #[serde(default)]
    pub subnet: Option<Ipv4Network>,
    /// The VXLAN network identifier (1 to 16777215); none in a request: the record's, or one
    /// derived from the name.
    #[serde(default)]
    pub vni: Option<u32>,
}

/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// One host of a zone spanning hosts, as `rnet zone show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanHost {
    /// The host's node name.
    pub node: String,
    /// Its underlay address (the VXLAN tunnel's end).
    pub underlay: Ipv4Addr,
    /// Its slice of the zone's subnet.
    pub slice: Ipv4Network,
}

/// A zone spanning hosts as `rnet zone show` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanInfo {
    /// The whole zone's subnet.
    pub subnet: Ipv4Network,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// This host's node name.
    pub node: String,
    /// The hosts of the zone this host knows of (from etcd), this one included.
    pub hosts: Vec<SpanHost>,
}

fn yes() -> bool {
    true
}

/// [`ZoneConfig`] as it arrives, before its subnet is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZoneConfig {
    name: ZoneName,
    #[serde(default)]
    subnet: Option<Ipv4Network>,
    #[serde(default = "yes")]
    masquerade: bool,
    #[serde(default = "yes")]
    dhcp: bool,
    #[serde(default)]
    isolated: bool,
    #[serde(default)]
    subnet6: Option<Ipv6Network>,
    #[serde(default)]
    span: Option<Span>,
}

impl TryFrom<RawZoneConfig> for ZoneConfig {
    type Error = String;

    fn try_from(raw: RawZoneConfig) -> Result<Self, String> {
        if let Some(net) = raw.subnet {
            ZoneConfig::check_subnet(net)?;
        }
        if let Some(net) = raw.subnet6 {
            ZoneConfig::check_subnet6(net)?;
        }
        if let Some(span) = &raw.span {
            if let Some(net) = span.subnet {
                ZoneConfig::check_subnet(net)?;
            }
            if let Some(vni) = span.vni
                && !(1..=MAX_VNI).contains(&vni)
            {
                return Err(format!("VNI {vni}: must be 1 to {MAX_VNI}"));
            }
        }
        Ok(Self {
            name: raw.name,
            subnet: raw.subnet,
            masquerade: raw.masquerade,
            dhcp: raw.dhcp,
            isolated: raw.isolated,
            subnet6: raw.subnet6,
            span: raw.span,
        })
    }
}

/// Shortest prefix of a zone's fixed subnet (as for `--veth-prefix`).
pub const MIN_ZONE_PREFIX: u8 = 8;

/// Longest prefix of a zone's fixed subnet: a /30 holds the bridge and one member.
pub const MAX_ZONE_PREFIX: u8 = 30;

impl ZoneConfig {
    /// Checks a fixed zone subnet: a prefix from /8 to /30, in unicast space that is neither
    /// loopback, link-local, multicast nor reserved.
    pub fn check_subnet(net: Ipv4Network) -> Result<(), String> {
        let prefix = net.prefix();
        if !(MIN_ZONE_PREFIX..=MAX_ZONE_PREFIX).contains(&prefix) {
            return Err(format!(
                "zone subnet {net}: the prefix must be /{MIN_ZONE_PREFIX} to /{MAX_ZONE_PREFIX}"
            ));
        }
        let first = net.network();
        let special = first.octets()[0] == 0
            || first.is_loopback()
            || first.is_link_local()
            || first.is_multicast()
            || first.octets()[0] >= 240;
        if special {
            return Err(format!(
                "zone subnet {net}: not a unicast range a zone can use (0/8, loopback, link-local, multicast and 240/4 are refused)"
            ));
        }
        Ok(())
    }

    /// Checks a fixed IPv6 zone subnet: a `/64` (SLAAC needs one), unicast, not link-local or
    /// loopback.
    pub fn check_subnet6(net: Ipv6Network) -> Result<(), String> {
        if net.prefix() != 64 {
            return Err(format!(
                "zone subnet {net}: an IPv6 zone subnet must be a /64"
            ));
        }
        if !usable_unicast6(net.network()) {
            return Err(format!(
                "zone subnet {net}: not a unicast range a zone can use (multicast, loopback and link-local are refused)"
            ));
        }
        Ok(())
    }

    /// The defaults for a zone created implicitly by its first member.
    pub fn implicit(name: ZoneName) -> Self {
        Self {
            name,
            subnet: None,
            masquerade: true,
            dhcp: true,
            isolated: false,
            subnet6: None,
            span: None,
        }
    }
}

/// A zone as `rnet zone list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// The zone's name.
    pub name: ZoneName,
    /// The bridge, `vz-NAME`.
    pub bridge: String,
    /// The zone's subnet.
    pub subnet: Ipv4Network,
    /// The bridge's address: the members' gateway and DHCP server.
    pub address: Ipv4Addr,
    /// Attached members.
    pub members: Vec<MachineName>,
    /// Bound DHCP leases.
    pub leases: usize,
    /// Created with `rnet zone create` (kept without members and across restarts).
    pub explicit: bool,
    /// Traffic to the outside is masqueraded.
    pub masquerade: bool,
    /// A DHCP server runs on the bridge.
    pub dhcp: bool,
    /// Members cannot reach each other.
    pub isolated: bool,
    /// The zone's IPv6 `/64`; none without IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Network>,
    /// The bridge's IPv6 address (`PREFIX::1`), the members' IPv6 router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
    /// A zone spanning hosts: the zone's subnet, VNI and hosts (`subnet` is this host's slice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<SpanInfo>,
}

/// A response from `rnetd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// `Attach` succeeded.
    Attached(Machine),
    /// `Detach` succeeded.
    Detached,
    /// `Stop` was delivered.
    Stopping,
    /// The answer to `List`.
    Machines(Vec<Machine>),
    /// The answer to `Status`.
    Status(Machine),
    /// The answer to `ZoneCreate` and `ZoneShow`.
    Zone(Zone),
    /// The answer to `ZoneList`.
    Zones(Vec<Zone>),
    /// `ZoneDelete` succeeded.
    ZoneDeleted,
    /// The answer to `Release` and `ReleaseExcept`: the machines detached.
    Released(Vec<MachineName>),
    /// The request failed; nothing was changed.
    Error(ApiError),
}

/// An attached machine and the network it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// The machine's name.
    pub machine: MachineName,
    /// The pid `rnetd` watches.
    pub pid: u32,
    /// The network kind.
    pub network: NetworkSpec,
    /// Host-side interface name (shortened to 15 characters if needed); none without a veth.
    pub host_ifname: Option<String>,
    /// The full host-side name, set as altname when `host_ifname` had to be shortened.
    pub host_altname: Option<String>,
    /// Container-side interface name (`host0`); none without a veth.
    pub container_ifname: Option<String>,
    /// MAC address of the host side.
    pub host_mac: Option<String>,
    /// MAC address of the container side.
    pub container_mac: Option<String>,
    /// The link's (or zone's) subnet; none on an admin's bridge.
    pub subnet: Option<Ipv4Network>,
    /// The gateway: the host side's address (first of the subnet); none on an admin's bridge.
    pub host_address: Option<Ipv4Addr>,
    /// The container's address, chosen as the DHCP server would choose it; none on an admin's
    /// bridge (the admin's DHCP server gives one).
    pub container_address: Option<Ipv4Addr>,
    /// DNS servers the container should use (may be empty).
    pub dns: Vec<Ipv4Addr>,
    /// The link's (or zone's) IPv6 `/64`; none without IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Network>,
    /// The host side's IPv6 address (`PREFIX::1`), the container's IPv6 router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_address6: Option<Ipv6Addr>,
    /// The container's IPv6 address: the `/64` and the EUI-64 interface identifier of its MAC,
    /// the address its own SLAAC would form from rnetd's router advertisements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_address6: Option<Ipv6Addr>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Extra links.
    #[serde(default)]
    pub links: Vec<AttachedLink>,
    /// What failed when it was last detached: a machine whose teardown failed stays listed
    /// with this until a detach succeeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teardown_errors: Vec<String>,
    /// Other firewalls' chains holding rnetd's accept rules for this machine's traffic
    /// (`ip filter DOCKER-USER (forward: policy drop)`); filled by `Status` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_firewall: Vec<String>,
    /// Who holds it when no process does (see [`Holder`]); `pid` is then 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Holder>,
}

/// A failed request: a stable kind for programs, a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// One line saying what failed and why.
    pub message: String,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Kinds of failure, stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The caller may not do this (not uid 0).
    PermissionDenied,
    /// The request is malformed or inconsistent.
    BadRequest,
    /// A machine of that name is already attached.
    AlreadyExists,
    /// No machine of that name is attached.
    NotFound,
    /// No free subnet is left in the address pools.
    PoolExhausted,
    /// The kernel or the daemon failed.
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let req = Request::Attach(AttachRequest {
            machine: MachineName::new("web").unwrap(),
            pid: 42,
            network: NetworkSpec::Veth,
            ports: vec![],
            links: vec![],
            held: None,
            init: InitKind::Other,
            ipv6: true,
        });
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(
            text,
            r#"{"attach":{"machine":"web","pid":42,"network":"veth","ports":[],"links":[]}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        // A systemd init is said; a request without the field (an older rnet) is "other".
        let Request::Attach(mut a) = req.clone() else {
            unreachable!()
        };
        a.init = InitKind::Systemd;
        let text = serde_json::to_string(&Request::Attach(a.clone())).unwrap();
        assert!(text.ends_with(r#""links":[],"init":"systemd"}}"#), "{text}");
        assert_eq!(
            serde_json::from_str::<Request>(&text).unwrap(),
            Request::Attach(a)
        );
        assert_eq!(serde_json::to_string(&Request::List).unwrap(), r#""list""#);
    }

    #[test]
    fn holders_round_trip_and_bad_ones_are_refused() {
        let req = r#"{"attach":{"machine":"c1","pid":0,"network":"veth","held":{"owner":"cni/n/abc/eth0","netns":"/run/netns/x"}}}"#;
        let Request::Attach(a) = serde_json::from_str::<Request>(req).unwrap() else {
            panic!("not an attach");
        };
        let held = a.held.clone().unwrap();
        assert_eq!(held.owner, "cni/n/abc/eth0");
        assert_eq!(
            serde_json::from_str::<Request>(
                &serde_json::to_string(&Request::Attach(a.clone())).unwrap()
            )
            .unwrap(),
            Request::Attach(a)
        );
        assert_eq!(
            refusal::<Holder>(r#"{"owner":"a b","netns":"/x"}"#),
            r#"holder owner "a b" contains ' '; use printable ASCII without spaces"#
        );
        assert_eq!(
            refusal::<Holder>(r#"{"owner":"","netns":"/x"}"#),
            "holder owner must be 1 to 512 bytes long"
        );
        assert_eq!(
            refusal::<Holder>(r#"{"owner":"o","netns":"x"}"#),
            "holder netns path x is not absolute"
        );
        let rel = r#"{"release_except":{"prefix":"cni/n/","keep":["cni/n/a/eth0"]}}"#;
        assert!(serde_json::from_str::<Request>(rel).unwrap().is_change());
    }

    #[test]
    fn unknown_fields_and_bad_names_are_refused() {
        let extra = r#"{"attach":{"machine":"web","pid":42,"network":"veth","x":1}}"#;
        let err = serde_json::from_str::<Request>(extra).unwrap_err();
        assert!(err.to_string().contains("unknown field `x`"), "{err}");
        let bad = r#"{"detach":{"machine":"-web"}}"#;
        assert!(serde_json::from_str::<Request>(bad).is_err());
        assert!(serde_json::from_str::<Request>(r#""reboot""#).is_err());
    }

    /// The error serde_json reports for `json` as a `T`, without its position suffix.
    fn refusal<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) -> String {
        let err = serde_json::from_str::<T>(json).unwrap_err().to_string();
        err.split(" at line ").next().unwrap().to_owned()
    }

    #[test]
    fn extra_link_names_are_checked_when_decoded() {
        let ok = r#"{"macvlan":{"parent":"eth0","name":"wan"}}"#;
        assert_eq!(
            serde_json::from_str::<ExtraLink>(ok).unwrap(),
            ExtraLink::Macvlan {
                parent: "eth0".into(),
                name: Some("wan".into())
            }
        );
        let ok = r#"{"veth_extra":{"host":"vx-a"}}"#;
        assert!(serde_json::from_str::<ExtraLink>(ok).is_ok());
        let chars = "use printable ASCII other than '/', ':', '%' and spaces";
        let cases = [
            (
                r#"{"macvlan":{"parent":"a/b"}}"#,
                format!(r#"macvlan parent: interface name "a/b" contains '/'; {chars}"#),
            ),
            (
                r#"{"macvlan":{"parent":"eth0","name":""}}"#,
                "macvlan name: interface name is empty".to_owned(),
            ),
            (
                r#"{"ipvlan":{"parent":"sixteen-chars-xx"}}"#,
                r#"ipvlan parent: interface name "sixteen-chars-xx" is 16 bytes long; at most 15 are allowed"#.to_owned(),
            ),
            (
                r#"{"ipvlan":{"parent":"eth0","name":"a\u0000b"}}"#,
                format!(r#"ipvlan name: interface name "a\0b" contains '\0'; {chars}"#),
            ),
            (
                r#"{"interface":{"name":".."}}"#,
                r#"moved interface: interface name ".." is not allowed (it names a directory in /sys/class/net)"#.to_owned(),
            ),
            (
                r#"{"interface":{"name":"eth1","rename":"wan 1"}}"#,
                format!(r#"moved interface's new name: interface name "wan 1" contains ' '; {chars}"#),
            ),
            (
                r#"{"veth_extra":{"host":"vx:1"}}"#,
                format!(r#"extra veth host side: interface name "vx:1" contains ':'; {chars}"#),
            ),
            (
                r#"{"veth_extra":{"host":"vx","container":"eth%d"}}"#,
                format!(r#"extra veth container side: interface name "eth%d" contains '%'; {chars}"#),
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(refusal::<ExtraLink>(json), expected, "{json}");
        }
        assert!(
            refusal::<ExtraLink>(r#"{"macvlan":{"parent":"eth0","mode":"vepa"}}"#)
                .contains("unknown field `mode`")
        );
    }

    #[test]
    fn bridge_names_are_checked_when_decoded() {
        assert_eq!(
            serde_json::from_str::<NetworkSpec>(r#"{"bridge":"br0"}"#).unwrap(),
            NetworkSpec::Bridge("br0".into())
        );
        assert_eq!(
            refusal::<NetworkSpec>(r#"{"bridge":"."}"#),
            r#"bridge: interface name "." is not allowed (it names a directory in /sys/class/net)"#
        );
        assert_eq!(
            refusal::<NetworkSpec>(r#"{"bridge":"br/../x"}"#),
            r#"bridge: interface name "br/../x" contains '/'; use printable ASCII other than '/', ':', '%' and spaces"#
        );
        // Through a whole request too.
        let req = r#"{"attach":{"machine":"m","pid":1,"network":{"bridge":""}}}"#;
        assert_eq!(refusal::<Request>(req), "bridge: interface name is empty");
        let req = r#"{"attach":{"machine":"m","pid":1,"network":"none","links":[{"macvlan":{"parent":"e/0"}}]}}"#;
        assert!(refusal::<Request>(req).starts_with("macvlan parent: interface name \"e/0\""));
        for unit in ["veth", "none"] {
            assert!(serde_json::from_str::<NetworkSpec>(&format!("{unit:?}")).is_ok());
        }
        assert!(serde_json::from_str::<NetworkSpec>(r#"{"zone":"lab"}"#).is_ok());
    }

    #[test]
    fn zone_subnets_are_checked_when_decoded() {
        let z =
            serde_json::from_str::<ZoneConfig>(r#"{"name":"lab","subnet":"10.7.0.0/24"}"#).unwrap();
        assert_eq!(z.subnet, Some("10.7.0.0/24".parse().unwrap()));
        assert!(z.masquerade && z.dhcp && !z.isolated);
        let cases = [
            (
                "10.7.0.0/31",
                "zone subnet 10.7.0.0/31: the prefix must be /8 to /30",
            ),
            (
                "0.0.0.0/0",
                "zone subnet 0.0.0.0/0: the prefix must be /8 to /30",
            ),
            (
                "127.0.0.0/24",
                "zone subnet 127.0.0.0/24: not a unicast range a zone can use (0/8, loopback, link-local, multicast and 240/4 are refused)",
            ),
            (
                "169.254.3.0/24",
                "zone subnet 169.254.3.0/24: not a unicast range a zone can use (0/8, loopback, link-local, multicast and 240/4 are refused)",
            ),
            (
                "224.1.0.0/16",
                "zone subnet 224.1.0.0/16: not a unicast range a zone can use (0/8, loopback, link-local, multicast and 240/4 are refused)",
            ),
            (
                "250.0.0.0/8",
                "zone subnet 250.0.0.0/8: not a unicast range a zone can use (0/8, loopback, link-local, multicast and 240/4 are refused)",
            ),
        ];
        for (subnet, expected) in cases {
            let json = format!(r#"{{"name":"lab","subnet":"{subnet}"}}"#);
            assert_eq!(refusal::<ZoneConfig>(&json), expected, "{subnet}");
        }
        assert!(
            refusal::<ZoneConfig>(r#"{"name":"lab","vlan":3}"#).contains("unknown field `vlan`")
        );
    }
}
