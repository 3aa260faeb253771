//! Set and map elements: how the model's subnets, links and ports are spelled in nftables, and
//! the element-only batches for [`Change`]s.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::schema::{Element, NfListObject, Nftables};
use nftables::types::NfFamily;

use crate::expr::{concat, number, prefix, string};
use crate::model::{Change, GuardedPort, IfName, Mac, PortMapping, Proto, Ruleset, canonical};
use crate::names::*;

/// The prefix length of the subnets of `masq4_28`, and its mask in the rules.
pub(crate) const HASHED4: (u8, &str) = (28, "255.255.255.240");
/// The prefix length of the subnets of `masq6_64`, and its mask in the rules.
pub(crate) const HASHED6: (u8, &str) = (64, "ffff:ffff:ffff:ffff::");

/// The set a subnet goes to: a /28 (every `ve-` link's) to `masq4_28` and a /64 to `masq6_64`,
/// hash sets of network addresses; any other to the interval set `masq4` or `masq6`.
pub(crate) fn subnet_set(net: IpNetwork) -> &'static str {
    match (net.is_ipv4(), net.prefix()) {
        (true, p) if p == HASHED4.0 => MASQ4_28,
        (true, _) => MASQ4,
        (false, p) if p == HASHED6.0 => MASQ6_64,
        (false, _) => MASQ6,
    }
}

/// A subnet as an element of [`subnet_set`]: its network address in a hash set, the interval
/// otherwise (host bits cleared either way).
fn subnet_part(net: IpNetwork) -> Part {
    let net = canonical(net);
    match subnet_set(net) {
        MASQ4_28 | MASQ6_64 => Part::Addr(net.network()),
        _ => Part::Net(net),
    }
}

/// `10.0.0.0/28` (host bits cleared).
pub(crate) fn subnet_elem(net: IpNetwork) -> Expression<'static> {
    let net = canonical(net);
    prefix(net.network().to_string(), net.prefix())
}

/// The family of the table a set belongs to.
pub(crate) fn family_of(set: &str) -> NfFamily {
    if BRIDGE_SETS.contains(&set) {
        BRIDGE_FAMILY
    } else {
        FAMILY
    }
}

/// The maps a port mapping goes to: `ports4_*`, `bound4_*`, `ports6_*` or `bound6_*`.
pub(crate) fn port_maps(mapping: &PortMapping) -> PortMaps {
    let index = usize::from(!mapping.is_ipv4()) * 2 + usize::from(mapping.host_addr().is_some());
    PORT_MAPS[index]
}

fn addr(a: IpAddr) -> Expression<'static> {
    string(a.to_string())
}

/// The elements `set` holds for `ruleset`, in a fixed order.
pub(crate) fn initial(set: &str, ruleset: &Ruleset) -> Vec<Expression<'static>> {
    let elems: Vec<Elem> = match set {
        MASQ4 | MASQ6 | MASQ4_28 | MASQ6_64 => ruleset
            .subnets()
            .filter(|net| subnet_set(*net) == set)
            .map(|net| Elem::key(vec![subnet_part(net)]))
            .collect(),
        IFACES => ruleset
            .ifaces()
            .map(|i| Elem::key(vec![Part::Name(i.clone())]))
            .collect(),
        ALLOWED_PAIRS => {
            let pairs: BTreeSet<(&IfName, &IfName)> = ruleset
                .ifaces()
                .map(|i| (i, i))
                .chain(ruleset.allowed_pairs())
                .collect();
            pairs
                .into_iter()
                .map(|(a, b)| Elem::key(vec![Part::Name(a.clone()), Part::Name(b.clone())]))
                .collect()
        }
        PORTS | PORT_MACS | ZONE_PORTS | PORT_ADDRS => {
            // Ports come sorted by name, so the elements of one name are adjacent.
            let mut elems: Vec<_> = ruleset
                .guarded()
                .flat_map(guard_parts)
                .filter(|(s, _)| *s == set)
                .map(|(_, e)| e)
                .collect();
            elems.dedup();
            elems
        }
        _ => ruleset
            .ports()
            .flat_map(|m| {
                let maps = port_maps(m);
                if maps.addr == set {
                    port_map_elems(m, true)
                } else if maps.port == set {
                    port_map_elems(m, false)
                } else {
                    Vec::new()
                }
            })
            .collect(),
    };
    elems.iter().map(Elem::expr).collect()
}

fn element(set: &'static str, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: family_of(set),
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(set),
        elem: Cow::Owned(elem),
    })
}

/// One value of an element's key or data, typed as its set spells it: rendered as nft JSON here
/// and as the kernel's bytes by [`crate::netlink`], from the same [`Step`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// A subnet of an interval set (`masq4`, `masq6`), host bits cleared.
    Net(IpNetwork),
    /// An interface name (`ifname`).
    Name(IfName),
    /// A MAC address (`ether_addr`).
    Mac(Mac),
    /// An address (`ipv4_addr`, `ipv6_addr`).
    Addr(IpAddr),
    /// `inet_proto`.
    Proto(Proto),
    /// `inet_service`.
    Port(u16),
}

impl Part {
    fn expr(&self) -> Expression<'static> {
        match self {
            Part::Net(net) => subnet_elem(*net),
            Part::Name(name) => string(name.as_str()),
            Part::Mac(mac) => string(mac.to_string()),
            Part::Addr(a) => addr(*a),
            Part::Proto(p) => string(p.as_str()),
            Part::Port(p) => number(*p),
        }
    }
}

/// One element: its key (one part, or the parts of a concatenation) and, in a map, its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Elem {
    pub(crate) key: Vec<Part>,
    pub(crate) data: Option<Part>,
}

impl Elem {
    fn key(key: Vec<Part>) -> Self {
        Self { key, data: None }
    }

    fn expr(&self) -> Expression<'static> {
        let key = match self.key.as_slice() {
            [one] => one.expr(),
            parts => concat(parts.iter().map(Part::expr).collect()),
        };
        match &self.data {
            None => key,
            Some(data) => Expression::List(vec![key, data.expr()]),
        }
    }
}

/// One `add element` or `delete element` command on one set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) delete: bool,
    pub(crate) set: &'static str,
    pub(crate) elems: Vec<Elem>,
}

/// The element keys of a mapping, one per host port: `tcp . 8080` or `203.0.113.2 . tcp . 8080`.
fn port_key_parts(mapping: &PortMapping, host_port: u16) -> Vec<Part> {
    let mut key = Vec::with_capacity(3);
    if let Some(host) = mapping.host_addr() {
        key.push(Part::Addr(host));
    }
    key.push(Part::Proto(mapping.proto()));
    key.push(Part::Port(host_port));
    key
}

/// `addr` true: `KEY : container address`; false: `KEY : container port`; per host port.
fn port_map_elems(mapping: &PortMapping, addr: bool) -> Vec<Elem> {
    mapping
        .port_pairs()
        .map(|(host_port, container_port)| Elem {
            key: port_key_parts(mapping, host_port),
            data: Some(if addr {
                Part::Addr(mapping.container_addr())
            } else {
                Part::Port(container_port)
            }),
        })
        .collect()
}

/// The elements of a guarded port, set by set, in [`BRIDGE_SETS`] order.
fn guard_parts(port: &GuardedPort) -> Vec<(&'static str, Elem)> {
    let name = || Part::Name(port.ifname.clone());
    let mut out = vec![
        (PORTS, Elem::key(vec![name()])),
        (PORT_MACS, Elem::key(vec![name(), Part::Mac(port.mac)])),
    ];
    if let Some(addr) = port.addr {
        out.push((ZONE_PORTS, Elem::key(vec![name()])));
        out.push((
            PORT_ADDRS,
            Elem::key(vec![name(), Part::Addr(IpAddr::V4(addr))]),
        ));
    }
    out
}

/// Collects the [`Step`]s of changes.
#[derive(Default)]
struct Steps(Vec<Step>);

impl Steps {
    /// `add element`.
    fn add(&mut self, set: &'static str, elems: Vec<Elem>) {
        self.0.push(Step {
            delete: false,
            set,
            elems,
        });
    }

    /// `add element` then `delete element`: deletes whether or not the element is there (a bare
    /// `delete element` of a missing element fails the whole batch with ENOENT). For a map the
    /// `add` carries our value, so if the key holds another container's value the `add` fails
    /// with EEXIST and nothing is deleted.
    fn add_then_delete(&mut self, set: &'static str, elems: Vec<Elem>) {
        let keys = elems.iter().map(|e| Elem::key(e.key.clone())).collect();
        self.add(set, elems);
        self.0.push(Step {
            delete: true,
            set,
            elems: keys,
        });
    }

    fn change(&mut self, change: &Change) {
        let subnet = |net: &IpNetwork| vec![Elem::key(vec![subnet_part(*net)])];
        let iface = |name: &IfName| vec![Elem::key(vec![Part::Name(name.clone())])];
        let pair = |a: &IfName, b: &IfName| {
            vec![Elem::key(vec![
                Part::Name(a.clone()),
                Part::Name(b.clone()),
            ])]
        };
        match change {
            Change::AddSubnet(net) => self.add(subnet_set(*net), subnet(net)),
            Change::DelSubnet(net) => self.add_then_delete(subnet_set(*net), subnet(net)),
            Change::AddIface(name) => {
                self.add(IFACES, iface(name));
                self.add(ALLOWED_PAIRS, pair(name, name));
            }
            Change::DelIface(name) => {
                self.add_then_delete(ALLOWED_PAIRS, pair(name, name));
                self.add_then_delete(IFACES, iface(name));
            }
            Change::AllowPair(a, b) if a != b => self.add(ALLOWED_PAIRS, pair(a, b)),
            Change::DelPair(a, b) if a != b => self.add_then_delete(ALLOWED_PAIRS, pair(a, b)),
            Change::AllowPair(..) | Change::DelPair(..) => {}
            Change::AddPort(mapping) => {
                let maps = port_maps(mapping);
                self.add(maps.addr, port_map_elems(mapping, true));
                self.add(maps.port, port_map_elems(mapping, false));
            }
            Change::DelPort(mapping) => {
                let maps = port_maps(mapping);
                self.add_then_delete(maps.addr, port_map_elems(mapping, true));
                self.add_then_delete(maps.port, port_map_elems(mapping, false));
            }
            Change::GuardPort(port) => {
                for (set, elem) in guard_parts(port) {
                    self.add(set, vec![elem]);
                }
            }
            Change::UnguardPort(port) => {
                for (set, elem) in guard_parts(port).into_iter().rev() {
                    self.add_then_delete(set, vec![elem]);
                }
            }
        }
    }
}

/// The element commands of `changes`, in order: what [`render_changes`] renders as nft JSON and
/// [`crate::netlink`] sends as nf_tables messages.
pub(crate) fn steps(changes: &[Change]) -> Vec<Step> {
    let mut steps = Steps::default();
    for change in changes {
        steps.change(change);
    }
    steps.0
}

/// One atomic batch of element commands for `changes`, in order (e.g. everything of one container
/// attach or detach). Contains no table, chain or rule object.
///
/// Adding an element that is there, or deleting one that is not, is not an error (teardown is
/// idempotent: `docs/architecture.md#conventions`); adding a port that is mapped to another
/// container, or deleting another container's port, is refused by nft with `File exists`, and
/// nothing of the batch is applied.
/// Empty `changes` give an empty batch, which `nft` accepts.
pub fn render_changes(changes: &[Change]) -> Nftables<'static> {
    let mut batch = Batch::new();
    for step in steps(changes) {
        let elems = step.elems.iter().map(Elem::expr).collect();
        let object = element(step.set, elems);
        if step.delete {
            batch.delete(object);
        } else {
            batch.add(object);
        }
    }
    batch.to_nftables()
}

/// [`render_changes`] for one change.
pub fn render_change(change: &Change) -> Nftables<'static> {
    render_changes(std::slice::from_ref(change))
}

#[cfg(test)]
mod tests {
    use nftables::schema::{NfCmd, NfObject};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::model::strategies::arb_change;
    use crate::model::{PortRange, Proto};

    fn mapping(host: Option<&str>, first: u16, last: u16, addr: &str, port: u16) -> PortMapping {
        PortMapping::new(
            Proto::Tcp,
            host.map(|h| h.parse().unwrap()),
            PortRange::new(first, last).unwrap(),
            addr.parse().unwrap(),
            port,
        )
        .unwrap()
    }

    fn json(changes: &[Change]) -> serde_json::Value {
        serde_json::to_value(render_changes(changes)).unwrap()["nftables"].clone()
    }

    fn ve(name: &str) -> IfName {
        IfName::new(name).unwrap()
    }

    #[test]
    fn add_port_fills_both_maps() {
        let m = mapping(None, 8080, 8080, "10.0.0.2", 80);
        assert_eq!(
            json(&[Change::AddPort(m)]),
            json!([
                {"add": {"element": {"family": "inet", "table": "rnet", "name": "ports4_addr",
                    "elem": [[{"concat": ["tcp", 8080]}, "10.0.0.2"]]}}},
                {"add": {"element": {"family": "inet", "table": "rnet", "name": "ports4_port",
                    "elem": [[{"concat": ["tcp", 8080]}, 80]]}}},
            ])
        );
    }

    #[test]
    fn del_port_adds_its_own_value_then_deletes_the_key() {
        let m = mapping(Some("203.0.113.2"), 8080, 8080, "10.0.0.2", 80);
        let key = json!({"concat": ["203.0.113.2", "tcp", 8080]});
        assert_eq!(
            json(&[Change::DelPort(m)]),
            json!([
                {"add": {"element": {"family": "inet", "table": "rnet", "name": "bound4_addr",
                    "elem": [[key, "10.0.0.2"]]}}},
                {"delete": {"element": {"family": "inet", "table": "rnet", "name": "bound4_addr",
                    "elem": [key]}}},
                {"add": {"element": {"family": "inet", "table": "rnet", "name": "bound4_port",
                    "elem": [[key, 80]]}}},
                {"delete": {"element": {"family": "inet", "table": "rnet", "name": "bound4_port",
                    "elem": [key]}}},
            ])
        );
    }

    #[test]
    fn a_range_is_one_element_per_port_shifted_one_to_one() {
        let m = mapping(None, 8000, 8009, "fd00::2", 9000);
        let out = json(&[Change::AddPort(m)]);
        assert_eq!(out[0]["add"]["element"]["name"], "ports6_addr");
        let ports = out[1]["add"]["element"]["elem"].as_array().unwrap();
        assert_eq!(ports.len(), 10);
        assert_eq!(ports[0], json!([{"concat": ["tcp", 8000]}, 9000]));
        assert_eq!(ports[9], json!([{"concat": ["tcp", 8009]}, 9009]));
    }

    #[test]
    fn links_come_with_their_self_pair() {
        assert_eq!(
            json(&[Change::AddIface(ve("vz-web"))]),
            json!([
                {"add": {"element": {"family": "inet", "table": "rnet", "name": "ifaces",
                    "elem": ["vz-web"]}}},
                {"add": {"element": {"family": "inet", "table": "rnet", "name": "allowed_pairs",
                    "elem": [{"concat": ["vz-web", "vz-web"]}]}}},
            ])
        );
        assert_eq!(json(&[Change::AllowPair(ve("a"), ve("a"))]), json!([]));
        assert_eq!(json(&[Change::DelPair(ve("a"), ve("a"))]), json!([]));
    }

    #[test]
    fn subnets_lose_their_host_bits() {
        let net: IpNetwork = "10.0.0.5/24".parse().unwrap();
        assert_eq!(
            json(&[Change::AddSubnet(net)])[0]["add"]["element"]["elem"],
            json!([{"prefix": {"addr": "10.0.0.0", "len": 24}}])
        );
        let net: IpNetwork = "fd00::1/56".parse().unwrap();
        let out = json(&[Change::DelSubnet(net)]);
        assert_eq!(out[0]["add"]["element"]["name"], "masq6");
        assert_eq!(
            out[1]["delete"]["element"]["elem"],
            json!([{"prefix": {"addr": "fd00::", "len": 56}}])
        );
    }

    #[test]
    fn a_28_or_a_64_is_its_network_address_in_a_hash_set() {
        let add = |net: &str| json(&[Change::AddSubnet(net.parse().unwrap())]);
        let out = add("10.0.0.21/28");
        assert_eq!(out[0]["add"]["element"]["name"], "masq4_28");
        assert_eq!(out[0]["add"]["element"]["elem"], json!(["10.0.0.16"]));
        let out = add("fd00:0:0:7::1/64");
        assert_eq!(out[0]["add"]["element"]["name"], "masq6_64");
        assert_eq!(out[0]["add"]["element"]["elem"], json!(["fd00:0:0:7::"]));
        // Other sizes stay intervals; a /28 in IPv6 is not special.
        assert_eq!(add("10.0.0.0/27")[0]["add"]["element"]["name"], "masq4");
        assert_eq!(add("fd00::/28")[0]["add"]["element"]["name"], "masq6");
    }

    #[test]
    fn a_guarded_port_goes_to_the_bridge_table() {
        let zone = GuardedPort {
            ifname: ve("vb-a"),
            mac: "02:00:00:00:00:0a".parse().unwrap(),
            addr: Some("10.1.0.2".parse().unwrap()),
        };
        let elem = |name: &str, e: serde_json::Value| {
            json!({"add": {"element": {"family": "bridge", "table": "rnet", "name": name,
                "elem": [e]}}})
        };
        assert_eq!(
            json(&[Change::GuardPort(zone.clone())]),
            json!([
                elem("ports", json!("vb-a")),
                elem(
                    "port_macs",
                    json!({"concat": ["vb-a", "02:00:00:00:00:0a"]})
                ),
                elem("zone_ports", json!("vb-a")),
                elem("port_addrs", json!({"concat": ["vb-a", "10.1.0.2"]})),
            ])
        );
        // A port of an admin's bridge: its MAC only.
        let admin = GuardedPort { addr: None, ..zone };
        let out = json(&[Change::UnguardPort(admin)]);
        let names: Vec<_> = out
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let (verb, body) = c.as_object().unwrap().iter().next().unwrap();
                format!("{verb} {}", body["element"]["name"].as_str().unwrap())
            })
            .collect();
        assert_eq!(
            names,
            [
                "add port_macs",
                "delete port_macs",
                "add ports",
                "delete ports"
            ]
        );
    }

    proptest! {
        /// Per-container work is element changes only, and rendering is deterministic.
        #[test]
        fn changes_render_elements_only(changes in prop::collection::vec(arb_change(), 0..20)) {
            let batch = render_changes(&changes);
            for object in batch.objects.iter() {
                let only_elements = matches!(
                    object,
                    NfObject::CmdObject(NfCmd::Add(NfListObject::Element(_)))
                        | NfObject::CmdObject(NfCmd::Delete(NfListObject::Element(_)))
                );
                prop_assert!(only_elements, "{object:?}");
            }
            prop_assert_eq!(
                serde_json::to_string(&batch).unwrap(),
                serde_json::to_string(&render_changes(&changes)).unwrap()
            );
        }
    }
}
