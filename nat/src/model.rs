//! The desired state of our table ([`Ruleset`]) and the per-container edits to it ([`Change`]).
//!
//! Everything here is plain data: no nftables types, no I/O. Values are validated when they are
//! built ([`IfName::new`], [`PortRange::new`], [`PortMapping::new`]), so rendering cannot fail.
//! Interface names, MAC addresses and protocols are the shared types of crate `rnet-api`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

pub use api::{IfName, Mac, Proto};
use ipnetwork::IpNetwork;

use crate::error::{Error, Result};

/// A non-empty inclusive range of ports, none of them 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// `first..=last`; fails if `first > last` or `first == 0`.
    pub fn new(first: u16, last: u16) -> Result<Self> {
        let reason = if first == 0 {
            Some("port 0 cannot be published")
        } else if first > last {
            Some("first port is after the last")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidPortRange {
                first,
                last,
                reason,
            }),
            None => Ok(Self { first, last }),
        }
    }

    /// A single port; fails for port 0.
    pub fn single(port: u16) -> Result<Self> {
        Self::new(port, port)
    }

    /// First port.
    pub fn first(self) -> u16 {
        self.first
    }

    /// Last port (equal to [`first`](Self::first) for a single port).
    pub fn last(self) -> u16 {
        self.last
    }

    /// Number of ports: at least 1.
    pub fn len(self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    /// Always false: a range holds at least one port.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The ports, in order.
    pub fn iter(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One published port or port range: `-p [tcp:|udp:][HOSTADDR:]HOSTPORT[:CONTPORT]`, extended
/// with ranges (`8000-8009:9000-9009`, mapped 1:1) and IPv6.
///
/// In nft a mapping becomes one map element per port: in `ports4`/`ports6` when it applies to
/// every local address, in `addr_ports4`/`addr_ports6` when it is bound to one host address.
/// (An interval map would make a range one element, but nft's DNAT then picks *any* port of the
/// target range instead of shifting it 1:1, so ranges are expanded.)
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMapping {
    proto: Proto,
    host_addr: Option<IpAddr>,
    host_ports: PortRange,
    container_addr: IpAddr,
    container_port: u16,
}

impl PortMapping {
    /// Publishes `host_ports` (on `host_addr`, or on every local address when `None`) to
    /// `container_addr`, starting at `container_port` and shifting the range 1:1.
    ///
    /// Fails when the families of `host_addr` and `container_addr` differ, when the container
    /// range would run past 65535 or start at 0, when `container_addr` is unspecified, loopback
    /// or multicast, or when `host_addr` is unspecified, multicast or `::1` (IPv6 has no
    /// `route_localnet`; 127.0.0.1 works).
    pub fn new(
        proto: Proto,
        host_addr: Option<IpAddr>,
        host_ports: PortRange,
        container_addr: IpAddr,
        container_port: u16,
    ) -> Result<Self> {
        let mapping = Self {
            proto,
            host_addr,
            host_ports,
            container_addr,
            container_port,
        };
        let span = host_ports.last() - host_ports.first();
        let reason = if host_addr.is_some_and(|h| h.is_ipv4() != container_addr.is_ipv4()) {
            Some("host and container addresses are of different families")
        } else if container_port == 0 {
            Some("container port 0")
        } else if container_port.checked_add(span).is_none() {
            Some("container port range runs past 65535")
        } else if container_addr.is_unspecified()
            || container_addr.is_loopback()
            || container_addr.is_multicast()
        {
            Some("container address is unspecified, loopback or multicast")
        } else if host_addr.is_some_and(|h| h.is_unspecified() || h.is_multicast()) {
            Some("host address is unspecified or multicast (leave it out to publish everywhere)")
        } else if host_addr.is_some_and(|h| h.is_ipv6() && h.is_loopback()) {
            Some("::1 cannot be published: the kernel cannot DNAT it out of the host")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidPortMapping {
                mapping: mapping.to_string(),
                reason,
            }),
            None => Ok(mapping),
        }
    }

    /// `tcp` or `udp`.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// The host address the ports are bound to, `None` for every local address.
    pub fn host_addr(&self) -> Option<IpAddr> {
        self.host_addr
    }

    /// The published host ports.
    pub fn host_ports(&self) -> PortRange {
        self.host_ports
    }

    /// The container's address.
    pub fn container_addr(&self) -> IpAddr {
        self.container_addr
    }

    /// The container port the first host port maps to.
    pub fn container_port(&self) -> u16 {
        self.container_port
    }

    /// True for an IPv4 mapping (`ports4`/`addr_ports4`), false for IPv6.
    pub fn is_ipv4(&self) -> bool {
        self.container_addr.is_ipv4()
    }

    /// `(host port, container port)` for every port of the range: one map element each.
    pub fn port_pairs(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.host_ports
            .iter()
            .map(move |p| (p, self.container_port + (p - self.host_ports.first())))
    }

    /// The mapping as single-port mappings, one per map element (itself for a single port).
    pub fn split(&self) -> impl Iterator<Item = PortMapping> + '_ {
        self.port_pairs().map(|(host, container)| PortMapping {
            host_ports: PortRange {
                first: host,
                last: host,
            },
            container_port: container,
            ..self.clone()
        })
    }

    /// Same protocol, host address and an overlapping host port range: the two cannot coexist.
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.proto == other.proto
            && self.is_ipv4() == other.is_ipv4()
            && self.host_addr == other.host_addr
            && self.host_ports.first() <= other.host_ports.last()
            && other.host_ports.first() <= self.host_ports.last()
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.proto)?;
        match self.host_addr {
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:")?,
            Some(IpAddr::V4(a)) => write!(f, "{a}:")?,
            None => {}
        }
        write!(f, "{} -> ", self.host_ports)?;
        match self.container_addr {
            IpAddr::V6(a) => write!(f, "[{a}]:")?,
            IpAddr::V4(a) => write!(f, "{a}:")?,
        }
        let last = u32::from(self.container_port) + self.host_ports.len() - 1;
        if self.host_ports.len() == 1 {
            write!(f, "{}", self.container_port)
        } else {
            write!(f, "{}-{}", self.container_port, last)
        }
    }
}

/// A container's `vb-*` port of a bridge, held to its container's identity (table
/// `bridge rnet`): frames from the port must carry `mac`; with `addr` (a zone member, whose
/// address we assign) they must also carry that IPv4 address (or 0.0.0.0 to ask for a DHCP
/// lease), and the container may not answer DHCP or send router advertisements.
///
/// Without `addr` (a port of an admin's bridge, whose address the admin's DHCP server gives) only
/// the MAC address is checked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuardedPort {
    /// The host side of the container's veth: `vb-NAME`.
    pub ifname: IfName,
    /// The container side's MAC address.
    pub mac: Mac,
    /// The container's IPv4 address, when we assign it.
    pub addr: Option<Ipv4Addr>,
}

/// One per-container edit of the table: always a set or map element change, never a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    /// Masquerade traffic from this container subnet (`masq4`/`masq6`). Host bits are ignored.
    AddSubnet(IpNetwork),
    /// Stop masquerading this subnet.
    DelSubnet(IpNetwork),
    /// Manage this host-side link (`ifaces`), and allow forwarding from it to itself
    /// (`allowed_pairs`: a zone bridge forwards between its own members).
    AddIface(IfName),
    /// Forget this link (and its pair with itself).
    DelIface(IfName),
    /// Allow new connections from the first link to the second (`allowed_pairs`), e.g. between
    /// two zones configured to talk. Directional: replies pass as established traffic. A pair of a
    /// link with itself is implied by [`Change::AddIface`] and renders nothing.
    AllowPair(IfName, IfName),
    /// Withdraw an [`Change::AllowPair`].
    DelPair(IfName, IfName),
    /// Publish a port or port range.
    AddPort(PortMapping),
    /// Withdraw a published port or port range. Refused by nft (`File exists`) if the host port
    /// is currently mapped to a *different* container: we never delete another owner's element.
    DelPort(PortMapping),
    /// Hold a bridge port to its container's MAC (and address): table `bridge rnet`. A name is
    /// guarded once: to guard it with another MAC or address, unguard it first (the sets are
    /// keyed by name and value, so two identities of one port would both pass).
    GuardPort(GuardedPort),
    /// Forget a guarded port, given as it was added.
    UnguardPort(GuardedPort),
}

/// The full desired content of tables `inet rnet` (subnets, links, pairs and published ports) and
/// `bridge rnet` (guarded ports).
///
/// Rendered whole by [`crate::rules::render_table`]; kept in step with the kernel by
/// [`Ruleset::apply`] and [`crate::elements::render_changes`] for each [`Change`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    subnets: BTreeSet<IpNetwork>,
    ifaces: BTreeSet<IfName>,
    allowed_pairs: BTreeSet<(IfName, IfName)>,
    ports: BTreeSet<PortMapping>,
    guarded: BTreeSet<GuardedPort>,
}

impl Ruleset {
    /// An empty ruleset: the table with its sets, maps, chains and rules, and no elements.
    pub fn new() -> Self {
        Self::default()
    }

    /// Container subnets, canonical (host bits cleared).
    pub fn subnets(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.subnets.iter().copied()
    }

    /// Managed links.
    pub fn ifaces(&self) -> impl Iterator<Item = &IfName> + '_ {
        self.ifaces.iter()
    }

    /// Explicitly allowed `(from, to)` link pairs (not the implied pairs of a link with itself).
    pub fn allowed_pairs(&self) -> impl Iterator<Item = (&IfName, &IfName)> + '_ {
        self.allowed_pairs.iter().map(|(a, b)| (a, b))
    }

    /// Published ports.
    pub fn ports(&self) -> impl Iterator<Item = &PortMapping> + '_ {
        self.ports.iter()
    }

    /// Guarded bridge ports.
    pub fn guarded(&self) -> impl Iterator<Item = &GuardedPort> + '_ {
        self.guarded.iter()
    }

    /// True when there is nothing in either table: no subnet, link, port or guarded port.
    pub fn is_empty(&self) -> bool {
        self.subnets.is_empty()
            && self.ifaces.is_empty()
            && self.allowed_pairs.is_empty()
            && self.ports.is_empty()
            && self.guarded.is_empty()
    }

    /// How many subnets, links, pairs, published ports and guarded ports it holds: each
    /// [`Change`] adds or removes at most one.
    pub fn len(&self) -> usize {
        self.subnets.len()
            + self.ifaces.len()
            + self.allowed_pairs.len()
            + self.ports.len()
            + self.guarded.len()
    }

    /// Records `change`, as the kernel will after the change's batch is applied.
    ///
    /// Returns false if it changed nothing (adding what is there, deleting what is not).
    pub fn apply(&mut self, change: &Change) -> bool {
        match change {
            Change::AddSubnet(net) => self.subnets.insert(canonical(*net)),
            Change::DelSubnet(net) => self.subnets.remove(&canonical(*net)),
            Change::AddIface(name) => self.ifaces.insert(name.clone()),
            Change::DelIface(name) => self.ifaces.remove(name),
            Change::AllowPair(a, b) => a != b && self.allowed_pairs.insert((a.clone(), b.clone())),
            Change::DelPair(a, b) => self.allowed_pairs.remove(&(a.clone(), b.clone())),
            Change::AddPort(map) => self.ports.insert(map.clone()),
            Change::DelPort(map) => self.ports.remove(map),
            Change::GuardPort(port) => self.guarded.insert(port.clone()),
            Change::UnguardPort(port) => self.guarded.remove(port),
        }
    }

    /// Builder form of [`Ruleset::apply`].
    pub fn with(mut self, change: Change) -> Self {
        self.apply(&change);
        self
    }

    /// The changes that turn `self` (e.g. what the kernel holds) into `desired`: deletions first,
    /// so that a port moving to another container is deleted before it is added again.
    pub fn changes_to(&self, desired: &Ruleset) -> Vec<Change> {
        let mut out = Vec::new();
        out.extend(
            self.guarded
                .difference(&desired.guarded)
                .cloned()
                .map(Change::UnguardPort),
        );
        out.extend(
            self.ports
                .difference(&desired.ports)
                .cloned()
                .map(Change::DelPort),
        );
        out.extend(
            self.allowed_pairs
                .difference(&desired.allowed_pairs)
                .map(|(a, b)| Change::DelPair(a.clone(), b.clone())),
        );
        out.extend(
            self.ifaces
                .difference(&desired.ifaces)
                .cloned()
                .map(Change::DelIface),
        );
        out.extend(
            self.subnets
                .difference(&desired.subnets)
                .copied()
                .map(Change::DelSubnet),
        );
        out.extend(
            desired
                .subnets
                .difference(&self.subnets)
                .copied()
                .map(Change::AddSubnet),
        );
        out.extend(
            desired
                .ifaces
                .difference(&self.ifaces)
                .cloned()
                .map(Change::AddIface),
        );
        out.extend(
            desired
                .allowed_pairs
                .difference(&self.allowed_pairs)
                .map(|(a, b)| Change::AllowPair(a.clone(), b.clone())),
        );
        out.extend(
            desired
                .ports
                .difference(&self.ports)
                .cloned()
                .map(Change::AddPort),
        );
        out.extend(
            desired
                .guarded
                .difference(&self.guarded)
                .cloned()
                .map(Change::GuardPort),
        );
        out
    }
}

/// `net` with its host bits cleared (`10.0.0.5/28` → `10.0.0.0/28`): what nft stores.
pub fn canonical(net: IpNetwork) -> IpNetwork {
    // Cannot fail: the prefix comes from a valid network of the same family.
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn port_range_rules() {
        assert_eq!(PortRange::new(8000, 8009).unwrap().len(), 10);
        assert_eq!(PortRange::single(65535).unwrap().len(), 1);
        assert_eq!(
            PortRange::new(9, 8).unwrap_err().to_string(),
            "invalid port range 9-8: first port is after the last"
        );
        assert!(PortRange::single(0).is_err());
    }

    #[test]
    fn port_mapping_rules() {
        let r = PortRange::new(8000, 8009).unwrap();
        let m = PortMapping::new(Proto::Tcp, None, r, v4(10, 0, 0, 2), 9000).unwrap();
        assert_eq!(m.to_string(), "tcp 8000-8009 -> 10.0.0.2:9000-9009");
        let pairs: Vec<_> = m.port_pairs().collect();
        assert_eq!(pairs.len(), 10);
        assert_eq!(pairs[0], (8000, 9000));
        assert_eq!(pairs[9], (8009, 9009));

        let err = PortMapping::new(Proto::Udp, None, r, v4(10, 0, 0, 2), 65530).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid port mapping udp 8000-8009 -> 10.0.0.2:65530-65539: \
             container port range runs past 65535"
        );
        let six = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let err = PortMapping::new(Proto::Tcp, Some(six), r, v4(10, 0, 0, 2), 80).unwrap_err();
        assert!(err.to_string().contains("different families"), "{err}");
        assert!(PortMapping::new(Proto::Tcp, None, r, v4(127, 0, 0, 1), 80).is_err());
        // 127.0.0.1 as the *host* address is the point of localhost publishing.
        let lo = Some(v4(127, 0, 0, 1));
        assert!(PortMapping::new(Proto::Tcp, lo, r, v4(10, 0, 0, 2), 80).is_ok());
        let container6 = "fd00::2".parse().unwrap();
        let err = PortMapping::new(Proto::Tcp, Some(six), r, container6, 80).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("::1 cannot be published: the kernel cannot DNAT it out of the host"),
            "{err}"
        );
    }

    #[test]
    fn conflicts() {
        let one = |first, last, host| {
            let r = PortRange::new(first, last).unwrap();
            PortMapping::new(Proto::Tcp, host, r, v4(10, 0, 0, 2), 80).unwrap()
        };
        assert!(one(8000, 8009, None).conflicts_with(&one(8009, 8010, None)));
        assert!(!one(8000, 8009, None).conflicts_with(&one(8010, 8010, None)));
        assert!(!one(8000, 8000, None).conflicts_with(&one(8000, 8000, Some(v4(1, 2, 3, 4)))));
    }

    #[test]
    fn apply_and_diff() {
        let net: IpNetwork = "10.0.0.5/28".parse().unwrap();
        let ve = IfName::new("ve-a").unwrap();
        let mut rs = Ruleset::new();
        assert!(rs.apply(&Change::AddSubnet(net)));
        assert!(!rs.apply(&Change::AddSubnet("10.0.0.0/28".parse().unwrap())));
        assert!(rs.apply(&Change::AddIface(ve.clone())));
        assert!(!rs.apply(&Change::AllowPair(ve.clone(), ve.clone())));
        assert_eq!(
            rs.subnets().collect::<Vec<_>>(),
            vec!["10.0.0.0/28".parse::<IpNetwork>().unwrap()]
        );

        let empty = Ruleset::new();
        let up = empty.changes_to(&rs);
        let mut replay = Ruleset::new();
        for c in &up {
            replay.apply(c);
        }
        assert_eq!(replay, rs);
        let down = rs.changes_to(&empty);
        assert!(down.iter().all(|c| matches!(
            c,
            Change::DelSubnet(_) | Change::DelIface(_) | Change::DelPair(..) | Change::DelPort(_)
        )));
    }

    proptest::proptest! {
        /// `changes_to` is a plan: applied to the start it gives the goal, and then nothing is
        /// left to do.
        #[test]
        fn changes_to_reaches_the_goal(
            start in proptest::collection::vec(strategies::arb_change(), 0..20),
            goal in proptest::collection::vec(strategies::arb_change(), 0..20),
        ) {
            let build = |changes: &[Change]| {
                let mut rs = Ruleset::new();
                for c in changes {
                    rs.apply(c);
                }
                rs
            };
            let (mut rs, goal) = (build(&start), build(&goal));
            for c in rs.changes_to(&goal) {
                rs.apply(&c);
            }
            proptest::prop_assert_eq!(&rs, &goal);
            proptest::prop_assert!(rs.changes_to(&goal).is_empty());
        }
    }

    #[test]
    fn moved_port_is_deleted_before_added() {
        let r = PortRange::single(8080).unwrap();
        let a = PortMapping::new(Proto::Tcp, None, r, v4(10, 0, 0, 2), 80).unwrap();
        let b = PortMapping::new(Proto::Tcp, None, r, v4(10, 0, 0, 3), 80).unwrap();
        let old = Ruleset::new().with(Change::AddPort(a.clone()));
        let new = Ruleset::new().with(Change::AddPort(b.clone()));
        assert_eq!(
            old.changes_to(&new),
            vec![Change::DelPort(a), Change::AddPort(b)]
        );
    }
}

/// proptest strategies for the model, shared by the crate's tests.
#[cfg(test)]
pub(crate) mod strategies {
    use std::net::{IpAddr, Ipv4Addr};

    use ipnetwork::IpNetwork;
    use proptest::prelude::*;

    use super::*;

    /// Changes over 4 containers: subnets (v4 and v6), links, pairs, udp ports 8000-8005
    /// (single or ranges, every address or bound to one (127.0.0.1, fd00:ff::1)), and guarded
    /// bridge ports (with or without an address).
    pub(crate) fn arb_change() -> impl Strategy<Value = Change> {
        let name = (0u8..4).prop_map(|n| IfName::new(format!("ve-c{n}")).unwrap());
        let net = (0u8..4, any::<bool>()).prop_map(|(n, six)| {
            let text = if six {
                format!("fd00:{n}::/64")
            } else {
                format!("10.0.{n}.0/28")
            };
            text.parse::<IpNetwork>().unwrap()
        });
        let port = (0u8..4, 0u16..3, 1u16..4, any::<bool>(), any::<bool>()).prop_map(
            |(n, p, len, six, bound)| {
                let addr: IpAddr = if six {
                    format!("fd00:{n}::2").parse().unwrap()
                } else {
                    format!("10.0.{n}.2").parse().unwrap()
                };
                let host: Option<IpAddr> = bound.then(|| {
                    if six {
                        "fd00:ff::1".parse().unwrap()
                    } else {
                        "127.0.0.1".parse().unwrap()
                    }
                });
                let range = PortRange::new(8000 + p, 8000 + p + len - 1).unwrap();
                PortMapping::new(Proto::Udp, host, range, addr, 80).unwrap()
            },
        );
        // One identity per name, as the daemon guards a port (even ones are zone members).
        let guarded = (0u8..4).prop_map(|n| GuardedPort {
            ifname: IfName::new(format!("vb-c{n}")).unwrap(),
            mac: Mac([2, 0, 0, 0, 0, n]),
            addr: (n % 2 == 0).then(|| Ipv4Addr::new(10, 1, 0, 2 + n)),
        });
        prop_oneof![
            guarded.clone().prop_map(Change::GuardPort),
            guarded.prop_map(Change::UnguardPort),
            net.clone().prop_map(Change::AddSubnet),
            net.prop_map(Change::DelSubnet),
            name.clone().prop_map(Change::AddIface),
            name.clone().prop_map(Change::DelIface),
            (name.clone(), name.clone()).prop_map(|(a, b)| Change::AllowPair(a, b)),
            (name.clone(), name).prop_map(|(a, b)| Change::DelPair(a, b)),
            port.clone().prop_map(Change::AddPort),
            port.prop_map(Change::DelPort),
        ]
    }
}
