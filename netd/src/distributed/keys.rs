//! The pure part of zones across hosts: the etcd key layout, the records stored under it, slice
//! allocation, and what the data path of one host must hold given a snapshot of the zone's
//! hosts. No I/O here; `etcd.rs` reads and writes these records, `vxlan.rs` programs the plan.
//!
//! Keys (one etcd cluster may serve many rnet hosts and zones):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `/rnet/zones/NAME` | [`ZoneRecord`]: subnet, VNI, slice prefix | none: created once, if absent |
//! | `/rnet/vnis/N` | the name of the zone whose VNI is N | none: created with the zone's record |
//! | `/rnet/zones/NAME/slices/A.B.C.D-P` | the node name holding the slice | the node's lease |
//! | `/rnet/zones/NAME/hosts/NODE` | [`HostRecord`]: underlay address, VTEP MAC, slice | the node's lease |
//!
//! A zone's record and its VNI's key are created in one transaction, only if both are absent,
//! so two zones never share a VNI (a derived one as much as one given with `--vni`): VXLAN
//! packets of one zone would otherwise be taken in by the other's device on another host.
//! A slice is claimed by a transaction that creates its key only if absent (compare
//! `create_revision == 0`), so two hosts racing for one slice cannot both win. The host key
//! is what the others watch (`/rnet/zones/NAME/hosts/`); when a node's lease expires etcd
//! deletes both of its keys and the others remove its entries.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher24;

use crate::api::{MAX_VNI, Mac, ZoneName};

/// Where every key of rnet lives.
pub const ROOT: &str = "/rnet/zones/";

/// The key naming the zone whose VNI is `vni`.
pub fn vni_key(vni: u32) -> String {
    format!("/rnet/vnis/{vni}")
}

/// The key of zone `zone`'s record.
pub fn zone_key(zone: &ZoneName) -> String {
    format!("{ROOT}{zone}")
}

/// The prefix of zone `zone`'s host keys (watched).
pub fn hosts_prefix(zone: &ZoneName) -> String {
    format!("{ROOT}{zone}/hosts/")
}

/// The key of node `node` in zone `zone`.
pub fn host_key(zone: &ZoneName, node: &str) -> String {
    format!("{}{node}", hosts_prefix(zone))
}

/// The prefix of zone `zone`'s slice claims.
pub fn slices_prefix(zone: &ZoneName) -> String {
    format!("{ROOT}{zone}/slices/")
}

/// The key claiming `slice` of zone `zone` (`/` of the CIDR written `-`).
pub fn slice_key(zone: &ZoneName, slice: Ipv4Network) -> String {
    format!(
        "{}{}-{}",
        slices_prefix(zone),
        slice.network(),
        slice.prefix()
    )
}

/// A node name as it may appear in a key: 1 to 64 characters of letters, digits, `-`, `_`
/// and `.` (a hostname fits).
pub fn check_node(node: &str) -> Result<(), String> {
    if node.is_empty() || node.len() > 64 {
        return Err(format!("node name {node:?} must be 1 to 64 characters"));
    }
    if let Some(c) = node
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "node name {node:?} contains {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// The value of `/rnet/zones/NAME`: what every host of the zone agrees on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneRecord {
    /// The whole zone's subnet.
    pub subnet: Ipv4Network,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// The prefix length of each host's slice.
    pub slice_prefix: u8,
}

/// The subnet of a distributed zone created without `--subnet`.
pub const DEFAULT_SUBNET: &str = "10.240.0.0/16";

/// The longest slice prefix: a `/28` holds the gateway and 13 members.
pub const MAX_SLICE_PREFIX: u8 = 28;

impl ZoneRecord {
    /// The record a new zone gets: `subnet` (or [`DEFAULT_SUBNET`]), `vni` (or one derived
    /// from the name), slices 8 bits longer than the subnet, at most `/28`.
    pub fn new(zone: &ZoneName, subnet: Option<Ipv4Network>, vni: Option<u32>) -> Self {
        let subnet = subnet.unwrap_or_else(|| {
            DEFAULT_SUBNET
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid constant"))
        });
        let subnet = Ipv4Network::new(subnet.network(), subnet.prefix()).unwrap_or(subnet);
        let slice_prefix = (subnet.prefix() + 8)
            .min(MAX_SLICE_PREFIX)
            .max(subnet.prefix());
        Self {
            subnet,
            vni: vni.unwrap_or_else(|| derived_vni(zone)),
            slice_prefix,
        }
    }

    /// Whether a request's subnet and VNI agree with this record (unset ones always do).
    pub fn agrees(&self, subnet: Option<Ipv4Network>, vni: Option<u32>) -> Result<(), String> {
        if let Some(net) = subnet
            && Ipv4Network::new(net.network(), net.prefix()).ok() != Some(self.subnet)
        {
            return Err(format!(
                "the zone's subnet is {} in etcd, not {net}",
                self.subnet
            ));
        }
        if let Some(v) = vni
            && v != self.vni
        {
            return Err(format!("the zone's VNI is {} in etcd, not {v}", self.vni));
        }
        Ok(())
    }
}

/// A VNI derived from the zone's name (1 to [`MAX_VNI`]), the same on every host.
pub fn derived_vni(zone: &ZoneName) -> u32 {
    let mut h = SipHasher24::new_with_keys(0x726e_6574, 0x0076_6e69);
    h.write(zone.as_str().as_bytes());
    (h.finish() % u64::from(MAX_VNI)) as u32 + 1
}

/// The value of `/rnet/zones/NAME/hosts/NODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    /// The node's underlay address: where its VXLAN packets come from and go to.
    pub underlay: Ipv4Addr,
    /// The MAC of the node's VXLAN device for this zone.
    #[serde(with = "mac_text")]
    pub vtep_mac: Mac,
    /// The node's slice of the zone's subnet.
    pub slice: Ipv4Network,
}

/// A MAC as text (`02:..`) in a record.
mod mac_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::api::Mac;

    pub fn serialize<S: Serializer>(mac: &Mac, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(mac)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The MAC of node `node`'s VXLAN device of zone `zone`: locally administered, unicast, the
/// same after a restart.
pub fn vtep_mac(zone: &ZoneName, node: &str) -> Mac {
    let mut h = SipHasher24::new_with_keys(0x726e_6574, 0x7674_6570);
    h.write(zone.as_str().as_bytes());
    h.write_u8(0);
    h.write(node.as_bytes());
    let b = h.finish().to_le_bytes();
    Mac([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

/// The first slice of `record`'s subnet that is not `taken` and does not hold one of `avoid`
/// (addresses in use on the host, e.g. its underlay).
pub fn free_slice(
    record: &ZoneRecord,
    taken: &BTreeSet<Ipv4Network>,
    avoid: &[Ipv4Network],
) -> Option<Ipv4Network> {
    let size = 1u64 << (32 - u32::from(record.slice_prefix));
    let count = 1u64 << (u32::from(record.slice_prefix) - u32::from(record.subnet.prefix()));
    let base = u64::from(u32::from(record.subnet.network()));
    (0..count)
        .filter_map(|i| {
            let addr = Ipv4Addr::from(u32::try_from(base + i * size).ok()?);
            Ipv4Network::new(addr, record.slice_prefix).ok()
        })
        .find(|s| {
            !taken.contains(s)
                && !avoid
                    .iter()
                    .any(|a| a.prefix() > 0 && crate::pool::overlaps(*a, *s))
        })
}

/// Parses a slice key's last part (`A.B.C.D-P`).
pub fn parse_slice(part: &str) -> Option<Ipv4Network> {
    let (addr, prefix) = part.split_once('-')?;
    Ipv4Network::new(addr.parse().ok()?, prefix.parse().ok()?).ok()
}

/// What one remote host needs on this host (flannel's "vxlan" backend): a route to its slice
/// through the VXLAN device with its slice's network address as on-link next hop, a permanent
/// neighbour entry mapping that next hop to its VTEP MAC, and an FDB entry sending that MAC to
/// its underlay address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// The remote slice (routed through the VXLAN device).
    pub slice: Ipv4Network,
    /// The remote VTEP's MAC.
    pub mac: Mac,
    /// The remote underlay address.
    pub underlay: Ipv4Addr,
}

impl Peer {
    /// The next hop of the route to the slice: its network address, as flannel uses.
    pub fn next_hop(&self) -> Ipv4Addr {
        self.slice.network()
    }
}

/// The peers this node (`me`) must program, from a snapshot of the zone's host records (by
/// node name). Records that are this node's, overlap another's slice (only the lowest node
/// name of an overlap is kept, so every host decides alike), or lie outside the zone's subnet
/// are left out.
pub fn plan_peers(
    record: &ZoneRecord,
    me: &str,
    hosts: &BTreeMap<String, HostRecord>,
) -> BTreeSet<Peer> {
    let mut kept: Vec<(&str, &HostRecord)> = Vec::new();
    for (node, h) in hosts {
        let inside =
            record.subnet.contains(h.slice.network()) && h.slice.prefix() >= record.subnet.prefix();
        if !inside
            || kept
                .iter()
                .any(|(_, k)| crate::pool::overlaps(k.slice, h.slice))
        {
            continue;
        }
        kept.push((node, h));
    }
    kept.into_iter()
        .filter(|(node, _)| *node != me)
        .map(|(_, h)| Peer {
            slice: h.slice,
            mac: h.vtep_mac,
            underlay: h.underlay,
        })
        .collect()
}

/// The changes from `current` to `desired`: peers to remove, then peers to add.
pub fn diff_peers(current: &BTreeSet<Peer>, desired: &BTreeSet<Peer>) -> (Vec<Peer>, Vec<Peer>) {
    (
        current.difference(desired).copied().collect(),
        desired.difference(current).copied().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> ZoneName {
        ZoneName::new("web").unwrap()
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn host(underlay: &str, slice: &str, node: &str) -> HostRecord {
        HostRecord {
            underlay: underlay.parse().unwrap(),
            vtep_mac: vtep_mac(&zone(), node),
            slice: net(slice),
        }
    }

    #[test]
    fn key_layout() {
        let z = zone();
        assert_eq!(zone_key(&z), "/rnet/zones/web");
        assert_eq!(host_key(&z, "h1"), "/rnet/zones/web/hosts/h1");
        assert_eq!(
            slice_key(&z, net("10.77.3.0/24")),
            "/rnet/zones/web/slices/10.77.3.0-24"
        );
        assert_eq!(parse_slice("10.77.3.0-24"), Some(net("10.77.3.0/24")));
        assert_eq!(parse_slice("10.77.3.0"), None);
        // A zone's own record never starts with another zone's prefix ("web" vs "web2").
        assert!(!hosts_prefix(&ZoneName::new("web2").unwrap()).starts_with(&hosts_prefix(&z)));
    }

    #[test]
    fn records_round_trip_and_reject_unknown_fields() {
        let r = ZoneRecord::new(&zone(), Some(net("10.77.0.0/16")), Some(42));
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"subnet":"10.77.0.0/16","vni":42,"slice_prefix":24}"#
        );
        assert_eq!(serde_json::from_str::<ZoneRecord>(&text).unwrap(), r);
        assert!(
            serde_json::from_str::<ZoneRecord>(
                r#"{"subnet":"10.77.0.0/16","vni":1,"slice_prefix":24,"x":1}"#
            )
            .is_err()
        );
        let h = host("198.51.100.11", "10.77.1.0/24", "h1");
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<HostRecord>(&text).unwrap(), h);
    }

    #[test]
    fn record_defaults_and_agreement() {
        let r = ZoneRecord::new(&zone(), None, None);
        assert_eq!(r.subnet, net(DEFAULT_SUBNET));
        assert_eq!(r.slice_prefix, 24);
        assert_eq!(r.vni, derived_vni(&zone()));
        assert!((1..=MAX_VNI).contains(&r.vni));
        // Host bits are dropped; a /24 zone gets /28 slices.
        let small = ZoneRecord::new(&zone(), Some(net("10.9.9.77/24")), Some(5));
        assert_eq!(small.subnet, net("10.9.9.0/24"));
        assert_eq!(small.slice_prefix, 28);
        assert!(r.agrees(None, None).is_ok());
        assert!(r.agrees(Some(net("10.240.0.0/16")), Some(r.vni)).is_ok());
        assert_eq!(
            r.agrees(Some(net("10.1.0.0/16")), None).unwrap_err(),
            "the zone's subnet is 10.240.0.0/16 in etcd, not 10.1.0.0/16"
        );
        assert!(r.agrees(None, Some(r.vni % MAX_VNI + 1)).is_err());
    }

    #[test]
    fn vtep_macs_are_stable_unicast_and_distinct() {
        let a = vtep_mac(&zone(), "h1");
        assert_eq!(a, vtep_mac(&zone(), "h1"));
        assert_ne!(a, vtep_mac(&zone(), "h2"));
        assert_ne!(a, vtep_mac(&ZoneName::new("db").unwrap(), "h1"));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn slices_are_allocated_first_free() {
        let r = ZoneRecord::new(&zone(), Some(net("10.77.0.0/16")), Some(1));
        let mut taken = BTreeSet::new();
        assert_eq!(free_slice(&r, &taken, &[]), Some(net("10.77.0.0/24")));
        taken.insert(net("10.77.0.0/24"));
        taken.insert(net("10.77.2.0/24"));
        assert_eq!(free_slice(&r, &taken, &[]), Some(net("10.77.1.0/24")));
        // A slice holding an address in use on the host is skipped.
        assert_eq!(
            free_slice(&r, &taken, &[net("10.77.1.5/32")]),
            Some(net("10.77.3.0/24"))
        );
        let all: BTreeSet<_> = (0..=255u8)
            .map(|i| Ipv4Network::new(Ipv4Addr::new(10, 77, i, 0), 24).unwrap())
            .collect();
        assert_eq!(free_slice(&r, &all, &[]), None);
        // A /30 zone has a single slice: itself.
        let tiny = ZoneRecord::new(&zone(), Some(net("10.1.1.0/30")), Some(1));
        assert_eq!(tiny.slice_prefix, 30);
        assert_eq!(
            free_slice(&tiny, &BTreeSet::new(), &[]),
            Some(net("10.1.1.0/30"))
        );
    }

    #[test]
    fn peers_from_a_snapshot() {
        let r = ZoneRecord::new(&zone(), Some(net("10.77.0.0/16")), Some(1));
        let mut hosts = BTreeMap::new();
        hosts.insert("h1".to_owned(), host("198.51.100.11", "10.77.0.0/24", "h1"));
        hosts.insert("h2".to_owned(), host("198.51.100.12", "10.77.1.0/24", "h2"));
        hosts.insert("h3".to_owned(), host("198.51.100.13", "10.77.2.0/24", "h3"));
        // Outside the zone: ignored.
        hosts.insert("hx".to_owned(), host("198.51.100.99", "10.78.0.0/24", "hx"));
        // Overlapping h2's slice: the lower node name (h2) keeps it.
        hosts.insert("h9".to_owned(), host("198.51.100.19", "10.77.1.0/25", "h9"));
        let peers = plan_peers(&r, "h1", &hosts);
        let slices: Vec<_> = peers.iter().map(|p| p.slice.to_string()).collect();
        assert_eq!(slices, ["10.77.1.0/24", "10.77.2.0/24"]);
        let h2 = peers.iter().next().unwrap();
        assert_eq!(h2.underlay, "198.51.100.12".parse::<Ipv4Addr>().unwrap());
        assert_eq!(h2.mac, vtep_mac(&zone(), "h2"));
        assert_eq!(h2.next_hop(), "10.77.1.0".parse::<Ipv4Addr>().unwrap());

        // h3's lease expired: its key is gone, so is its peer; h4 joined.
        let mut later = hosts.clone();
        later.remove("h3");
        later.insert("h4".to_owned(), host("198.51.100.14", "10.77.3.0/24", "h4"));
        let (gone, new) = diff_peers(&peers, &plan_peers(&r, "h1", &later));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].slice, net("10.77.2.0/24"));
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].slice, net("10.77.3.0/24"));
        // Nothing changed: nothing to do.
        assert_eq!(diff_peers(&peers, &peers), (vec![], vec![]));
    }

    #[test]
    fn node_names() {
        assert!(check_node("host-1.example").is_ok());
        assert!(check_node("").is_err());
        assert!(check_node("a/b").is_err());
        assert!(check_node(&"x".repeat(65)).is_err());
    }
}
