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
use crate::model::{Change, GuardedPort, IfName, PortMapping, Ruleset, canonical};
use crate::names::*;

/// The set a subnet goes to: `masq4` or `masq6`.
pub(crate) fn subnet_set(net: IpNetwork) -> &'static str {
    if net.is_ipv4() { MASQ4 } else { MASQ6 }
}

/// `10.0.0.0/28` (host bits cleared).
pub(crate) fn subnet_elem(net: IpNetwork) -> Expression<'static> {
    let net = canonical(net);
    prefix(net.network().to_string(), net.prefix())
}

/// `"ve-web"`.
pub(crate) fn iface_elem(name: &IfName) -> Expression<'static> {
    string(name.as_str())
}

/// `"vz-a" . "vz-b"`.
pub(crate) fn pair_elem(from: &IfName, to: &IfName) -> Expression<'static> {
    concat(vec![string(from.as_str()), string(to.as_str())])
}

/// `"vb-web" . 02:00:5e:10:00:01`.
pub(crate) fn port_mac_elem(port: &GuardedPort) -> Expression<'static> {
    concat(vec![
        string(port.ifname.as_str()),
        string(port.mac.to_string()),
    ])
}

/// `"vb-web" . 10.0.0.2`, for a port with an address.
pub(crate) fn port_addr_elem(port: &GuardedPort) -> Option<Expression<'static>> {
    let addr = port.addr?;
    Some(concat(vec![
        string(port.ifname.as_str()),
        string(addr.to_string()),
    ]))
}

/// The elements of a guarded port, set by set, in [`BRIDGE_SETS`] order (`zone_ports` and
/// `port_addrs` only for a port with an address).
fn guard_elems(port: &GuardedPort) -> Vec<(&'static str, Expression<'static>)> {
    let mut out = vec![
        (PORTS, iface_elem(&port.ifname)),
        (PORT_MACS, port_mac_elem(port)),
    ];
    if let Some(addr) = port_addr_elem(port) {
        out.push((ZONE_PORTS, iface_elem(&port.ifname)));
        out.push((PORT_ADDRS, addr));
    }
    out
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

/// The map keys of a mapping, one per host port: `tcp . 8080` or `203.0.113.2 . tcp . 8080`.
pub(crate) fn port_keys(mapping: &PortMapping) -> Vec<Expression<'static>> {
    mapping
        .port_pairs()
        .map(|(host_port, _)| port_key(mapping, host_port))
        .collect()
}

fn port_key(mapping: &PortMapping, host_port: u16) -> Expression<'static> {
    let mut key = Vec::with_capacity(3);
    if let Some(host) = mapping.host_addr() {
        key.push(addr(host));
    }
    key.push(string(mapping.proto().as_str()));
    key.push(number(host_port));
    concat(key)
}

/// The elements of the address map, one per port: `tcp . 8080 : 10.0.0.2`.
pub(crate) fn addr_elems(mapping: &PortMapping) -> Vec<Expression<'static>> {
    mapping
        .port_pairs()
        .map(|(host_port, _)| {
            Expression::List(vec![
                port_key(mapping, host_port),
                addr(mapping.container_addr()),
            ])
        })
        .collect()
}

/// The elements of the port map, one per port: `tcp . 8080 : 80`.
pub(crate) fn port_elems(mapping: &PortMapping) -> Vec<Expression<'static>> {
    mapping
        .port_pairs()
        .map(|(host_port, container_port)| {
            Expression::List(vec![port_key(mapping, host_port), number(container_port)])
        })
        .collect()
}

/// The elements `set` holds for `ruleset`, in a fixed order.
pub(crate) fn initial(set: &str, ruleset: &Ruleset) -> Vec<Expression<'static>> {
    match set {
        MASQ4 | MASQ6 => ruleset
            .subnets()
            .filter(|net| subnet_set(*net) == set)
            .map(subnet_elem)
            .collect(),
        IFACES => ruleset.ifaces().map(iface_elem).collect(),
        ALLOWED_PAIRS => {
            let pairs: BTreeSet<(&IfName, &IfName)> = ruleset
                .ifaces()
                .map(|i| (i, i))
                .chain(ruleset.allowed_pairs())
                .collect();
            pairs.into_iter().map(|(a, b)| pair_elem(a, b)).collect()
        }
        PORTS | PORT_MACS | ZONE_PORTS | PORT_ADDRS => {
            // Ports come sorted by name, so the elements of one name are adjacent.
            let mut elems: Vec<_> = ruleset
                .guarded()
                .flat_map(guard_elems)
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
                    addr_elems(m)
                } else if maps.port == set {
                    port_elems(m)
                } else {
                    Vec::new()
                }
            })
            .collect(),
    }
}

fn element(set: &'static str, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: family_of(set),
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(set),
        elem: Cow::Owned(elem),
    })
}

/// `add element`.
fn add(batch: &mut Batch<'static>, set: &'static str, elem: Vec<Expression<'static>>) {
    batch.add(element(set, elem));
}

/// `add element` then `delete element`: deletes whether or not the element is there (a bare
/// `delete element` of a missing element fails the whole batch with ENOENT). For a map the `add`
/// carries our value, so if the key holds another container's value the `add` fails with EEXIST
/// and nothing is deleted.
fn add_then_delete(
    batch: &mut Batch<'static>,
    set: &'static str,
    elem: Vec<Expression<'static>>,
    keys: Vec<Expression<'static>>,
) {
    batch.add(element(set, elem));
    batch.delete(element(set, keys));
}

fn render_into(batch: &mut Batch<'static>, change: &Change) {
    match change {
        Change::AddSubnet(net) => add(batch, subnet_set(*net), vec![subnet_elem(*net)]),
        Change::DelSubnet(net) => {
            let e = vec![subnet_elem(*net)];
            add_then_delete(batch, subnet_set(*net), e.clone(), e);
        }
        Change::AddIface(name) => {
            add(batch, IFACES, vec![iface_elem(name)]);
            add(batch, ALLOWED_PAIRS, vec![pair_elem(name, name)]);
        }
        Change::DelIface(name) => {
            let pair = vec![pair_elem(name, name)];
            add_then_delete(batch, ALLOWED_PAIRS, pair.clone(), pair);
            let e = vec![iface_elem(name)];
            add_then_delete(batch, IFACES, e.clone(), e);
        }
        Change::AllowPair(a, b) if a != b => add(batch, ALLOWED_PAIRS, vec![pair_elem(a, b)]),
        Change::DelPair(a, b) if a != b => {
            let e = vec![pair_elem(a, b)];
            add_then_delete(batch, ALLOWED_PAIRS, e.clone(), e);
        }
        Change::AllowPair(..) | Change::DelPair(..) => {}
        Change::AddPort(mapping) => {
            let maps = port_maps(mapping);
            add(batch, maps.addr, addr_elems(mapping));
            add(batch, maps.port, port_elems(mapping));
        }
        Change::DelPort(mapping) => {
            let maps = port_maps(mapping);
            let keys = port_keys(mapping);
            add_then_delete(batch, maps.addr, addr_elems(mapping), keys.clone());
            add_then_delete(batch, maps.port, port_elems(mapping), keys);
        }
        Change::GuardPort(port) => {
            for (set, elem) in guard_elems(port) {
                add(batch, set, vec![elem]);
            }
        }
        Change::UnguardPort(port) => {
            for (set, elem) in guard_elems(port).into_iter().rev() {
                add_then_delete(batch, set, vec![elem.clone()], vec![elem]);
            }
        }
    }
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
    for change in changes {
        render_into(&mut batch, change);
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
        let net: IpNetwork = "10.0.0.5/28".parse().unwrap();
        assert_eq!(
            json(&[Change::AddSubnet(net)])[0]["add"]["element"]["elem"],
            json!([{"prefix": {"addr": "10.0.0.0", "len": 28}}])
        );
        let net: IpNetwork = "fd00::1/64".parse().unwrap();
        let out = json(&[Change::DelSubnet(net)]);
        assert_eq!(out[0]["add"]["element"]["name"], "masq6");
        assert_eq!(
            out[1]["delete"]["element"]["elem"],
            json!([{"prefix": {"addr": "fd00::", "len": 64}}])
        );
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
