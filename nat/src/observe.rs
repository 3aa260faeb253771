//! Reading a listing of our table back ([`observe`]) and planning what brings it to the desired
//! state ([`plan`]): the reconcile path after a daemon restart or someone else's `nft` command.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use nftables::expr::{Expression, NamedExpression};
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables};
use nftables::types::NfChainPolicy;

use crate::elements::{HASHED4, HASHED6, render_changes, subnet_set};
use crate::error::{Error, Result};
use crate::model::{Change, GuardedPort, IfName, Mac, PortMapping, PortRange, Proto, Ruleset};
use crate::names::*;
use crate::rules::{chain_specs, render_table, rule_objects};

/// What a listing of tables `inet rnet` and `bridge rnet` holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The elements, read back into the model. Port ranges come back as one mapping per port.
    pub ruleset: Ruleset,
    /// True if the sets, maps, chains and rules of both tables are exactly those
    /// [`render_table`] creates, each link in `ifaces` (and only those) is paired with itself in
    /// `allowed_pairs`, and the four sets of the bridge table agree on their ports. When false,
    /// only re-creating the tables repairs them.
    pub intact: bool,
    /// Number of rules listed.
    pub rules: usize,
}

/// Reads a listing (`nft -j list table inet rnet` followed by `nft -j list table bridge rnet`, as
/// [`crate::Nft::list_table`] returns it).
///
/// Fails on an element that is not one of ours (e.g. a protocol other than tcp/udp).
pub fn observe(listing: &Nftables<'static>) -> Result<Observed> {
    let mut ruleset = Ruleset::new();
    let mut self_pairs = Vec::new();
    let mut ports = PortHalves::new();
    let mut guards = GuardParts::default();
    let mut layout_ok = true;
    let mut misplaced = false;
    let mut sets_seen = Vec::new();
    let mut chains_seen = Vec::new();
    let mut rules = Vec::new();
    let expected_sets = render_table(&Ruleset::new());

    for object in listing.objects.iter() {
        let NfObject::ListObject(object) = object else {
            continue;
        };
        let set = match object {
            NfListObject::Set(s) => Some((&s.name, s.elem.as_deref())),
            NfListObject::Map(m) => Some((&m.name, m.elem.as_deref())),
            _ => None,
        };
        if let Some((name, elems)) = set {
            layout_ok &= same_definition(object, &expected_sets);
            sets_seen.push(name.to_string());
            for elem in elems.unwrap_or_default() {
                if BRIDGE_SETS.contains(&name.as_ref()) {
                    guards.read(name, elem)?;
                } else {
                    read_element(
                        name,
                        elem,
                        &mut ruleset,
                        &mut self_pairs,
                        &mut ports,
                        &mut misplaced,
                    )?;
                }
            }
            continue;
        }
        match object {
            NfListObject::Chain(chain) => {
                let expected = chain_specs()
                    .into_iter()
                    .find(|c| c.family == chain.family && c.name == chain.name);
                layout_ok &= expected.is_some_and(|c| {
                    chain._type == Some(c.kind)
                        && chain.hook == Some(c.hook)
                        && chain.prio == Some(c.prio)
                        && chain.policy == Some(NfChainPolicy::Accept)
                });
                chains_seen.push(chain.name.to_string());
            }
            NfListObject::Rule(rule) => rules.push(rule),
            _ => {}
        }
    }

    let mut ports_ok = true;
    for ((_, host, proto, host_port), halves) in ports {
        let mapping = match halves {
            (Some(addr), Some(port)) => PortRange::single(host_port)
                .and_then(|range| PortMapping::new(proto, host, range, addr, port))
                .ok(),
            _ => None,
        };
        match mapping {
            Some(mapping) => {
                ruleset.apply(&Change::AddPort(mapping));
            }
            None => ports_ok = false,
        }
    }

    let guards_ok = guards.assemble(&mut ruleset);
    let expected_rules = rule_objects();
    let rules_ok = rules.len() == expected_rules.len()
        && rules.iter().zip(&expected_rules).all(|(have, want)| {
            have.family == want.family
                && have.chain == want.chain
                && have.expr == want.expr
                && have.comment == want.comment
        });
    self_pairs.sort();
    let pairs_ok = self_pairs.iter().eq(ruleset.ifaces()); // both sorted
    let intact = layout_ok
        && !misplaced
        && rules_ok
        && pairs_ok
        && ports_ok
        && guards_ok
        && sets_seen
            .iter()
            .map(String::as_str)
            .eq(SETS.into_iter().chain(BRIDGE_SETS))
        && chains_seen
            .iter()
            .map(String::as_str)
            .eq(CHAINS.into_iter().chain(BRIDGE_CHAINS));
    Ok(Observed {
        ruleset,
        intact,
        rules: rules.len(),
    })
}

/// The batch that brings the kernel from `observed` (`None`: no table) to `desired`, or `None`
/// if nothing is to be done.
///
/// A missing or damaged table is re-created whole with [`render_table`] (atomic: no gap, live
/// connections survive); otherwise only the differing elements change ([`render_changes`]).
pub fn plan(observed: Option<&Observed>, desired: &Ruleset) -> Option<Nftables<'static>> {
    match observed {
        Some(observed) if observed.intact => {
            let changes = observed.ruleset.changes_to(&split_ports(desired));
            (!changes.is_empty()).then(|| render_changes(&changes))
        }
        _ => Some(render_table(desired)),
    }
}

/// `ruleset` with every port range split into single ports, as a listing reads back.
fn split_ports(ruleset: &Ruleset) -> Ruleset {
    let mut out = Ruleset::new();
    for change in Ruleset::new().changes_to(ruleset) {
        match change {
            Change::AddPort(mapping) => {
                for single in mapping.split() {
                    out.apply(&Change::AddPort(single));
                }
            }
            other => {
                out.apply(&other);
            }
        }
    }
    out
}

/// True if `object` (a listed set or map) has the definition `render_table` gives it. Comments
/// are not compared: nft 1.0.6 drops set comments given in JSON.
fn same_definition(object: &NfListObject<'_>, table: &Nftables<'_>) -> bool {
    table.objects.iter().any(|cmd| {
        let NfObject::CmdObject(NfCmd::Add(want)) = cmd else {
            return false;
        };
        match (object, want) {
            (NfListObject::Set(have), NfListObject::Set(want)) => {
                have.family == want.family
                    && have.name == want.name
                    && have.set_type == want.set_type
                    && have.flags == want.flags
            }
            (NfListObject::Map(have), NfListObject::Map(want)) => {
                have.family == want.family
                    && have.name == want.name
                    && have.set_type == want.set_type
                    && have.map == want.map
                    && have.flags == want.flags
            }
            _ => false,
        }
    })
}

fn unexpected(set: &str, elem: &Expression<'_>) -> Error {
    Error::UnexpectedElement {
        set: set.to_owned(),
        element: serde_json::to_string(elem).unwrap_or_else(|_| format!("{elem:?}")),
    }
}

/// Key of a published port: IPv4 or not, host address (for `bound*`), protocol, host port.
type PortKey = (bool, Option<IpAddr>, Proto, u16);

/// Container address and port of each published port, read from the two maps of its kind.
type PortHalves = BTreeMap<PortKey, (Option<IpAddr>, Option<u16>)>;

/// The elements of the four sets of table `bridge rnet`, before they are put together into
/// [`GuardedPort`]s.
#[derive(Default)]
struct GuardParts {
    ports: BTreeSet<IfName>,
    macs: BTreeSet<(IfName, Mac)>,
    zone_ports: BTreeSet<IfName>,
    addrs: BTreeSet<(IfName, Ipv4Addr)>,
}

impl GuardParts {
    fn read(&mut self, set: &str, elem: &Expression<'_>) -> Result<()> {
        let bad = || unexpected(set, elem);
        match set {
            PORTS => {
                self.ports.insert(ifname(elem).ok_or_else(bad)?);
            }
            ZONE_PORTS => {
                self.zone_ports.insert(ifname(elem).ok_or_else(bad)?);
            }
            _ => {
                let [name, value] = parts(elem).ok_or_else(bad)? else {
                    return Err(bad());
                };
                let name = ifname(name).ok_or_else(bad)?;
                if set == PORT_MACS {
                    let mac = text(value).and_then(|t| t.parse().ok()).ok_or_else(bad)?;
                    self.macs.insert((name, mac));
                } else {
                    let addr = text(value).and_then(|t| t.parse().ok()).ok_or_else(bad)?;
                    self.addrs.insert((name, addr));
                }
            }
        }
        Ok(())
    }

    /// Adds the guarded ports to `ruleset`; false if the sets disagree (a port without its MAC,
    /// an address without its zone port, ...), which only re-creating the table repairs.
    fn assemble(self, ruleset: &mut Ruleset) -> bool {
        let mac_names: BTreeSet<&IfName> = self.macs.iter().map(|(n, _)| n).collect();
        let addr_names: BTreeSet<&IfName> = self.addrs.iter().map(|(n, _)| n).collect();
        let consistent = mac_names.iter().copied().eq(self.ports.iter())
            && addr_names.iter().copied().eq(self.zone_ports.iter())
            && self.zone_ports.is_subset(&self.ports);
        for (name, mac) in &self.macs {
            let addrs: Vec<Option<Ipv4Addr>> = if self.zone_ports.contains(name) {
                self.addrs
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, a)| Some(*a))
                    .collect()
            } else {
                vec![None]
            };
            for addr in addrs {
                ruleset.apply(&Change::GuardPort(GuardedPort {
                    ifname: name.clone(),
                    mac: *mac,
                    addr,
                }));
            }
        }
        consistent
    }
}

/// Reads one element of the `inet` table into `ruleset`. A subnet in a set it does not go to
/// ([`subnet_set`]), or a network address with host bits, sets `misplaced`: the table is
/// damaged then, as the rules would not match it.
fn read_element(
    set: &str,
    elem: &Expression<'_>,
    ruleset: &mut Ruleset,
    self_pairs: &mut Vec<IfName>,
    ports: &mut PortHalves,
    misplaced: &mut bool,
) -> Result<()> {
    let bad = || unexpected(set, elem);
    match set {
        MASQ4 | MASQ6 => {
            let net = subnet(elem).ok_or_else(bad)?;
            *misplaced |= subnet_set(net) != set;
            ruleset.apply(&Change::AddSubnet(net));
        }
        MASQ4_28 | MASQ6_64 => {
            let addr = ip(elem).ok_or_else(bad)?;
            let len = if set == MASQ4_28 {
                HASHED4.0
            } else {
                HASHED6.0
            };
            let net = IpNetwork::new(addr, len).map_err(|_| bad())?;
            // An address with host bits is never matched by the masked rules.
            *misplaced |= net.network() != addr;
            ruleset.apply(&Change::AddSubnet(net));
        }
        IFACES => {
            ruleset.apply(&Change::AddIface(ifname(elem).ok_or_else(bad)?));
        }
        ALLOWED_PAIRS => {
            let [a, b] = parts(elem).ok_or_else(bad)? else {
                return Err(bad());
            };
            let (a, b) = (ifname(a).ok_or_else(bad)?, ifname(b).ok_or_else(bad)?);
            if a == b {
                self_pairs.push(a);
            } else {
                ruleset.apply(&Change::AllowPair(a, b));
            }
        }
        _ => {
            let Some(maps) = PORT_MAPS.iter().find(|m| m.addr == set || m.port == set) else {
                return Ok(()); // not one of our sets: the layout check reports it
            };
            let Expression::List(kv) = elem else {
                return Err(bad());
            };
            let [key, value] = kv.as_slice() else {
                return Err(bad());
            };
            let key = port_key(*maps, key).ok_or_else(bad)?;
            let halves = ports.entry(key).or_default();
            if maps.addr == set {
                halves.0 = Some(ip(value).ok_or_else(bad)?);
            } else {
                halves.1 = Some(port_number(value).ok_or_else(bad)?);
            }
        }
    }
    Ok(())
}

fn text<'e>(e: &'e Expression<'_>) -> Option<&'e str> {
    match e {
        Expression::String(s) => Some(s),
        _ => None,
    }
}

fn parts<'e>(e: &'e Expression<'e>) -> Option<&'e [Expression<'e>]> {
    match e {
        Expression::Named(NamedExpression::Concat(parts)) => Some(parts),
        _ => None,
    }
}

fn ifname(e: &Expression<'_>) -> Option<IfName> {
    IfName::new(text(e)?).ok()
}

fn ip(e: &Expression<'_>) -> Option<IpAddr> {
    text(e)?.parse().ok()
}

fn port_number(e: &Expression<'_>) -> Option<u16> {
    match e {
        Expression::Number(n) => u16::try_from(*n).ok(),
        _ => None,
    }
}

/// `10.0.0.0/28`, or a bare address for a /32 or /128.
fn subnet(e: &Expression<'_>) -> Option<IpNetwork> {
    match e {
        Expression::Named(NamedExpression::Prefix(p)) => {
            IpNetwork::new(ip(&p.addr)?, u8::try_from(p.len).ok()?).ok()
        }
        other => ip(other).map(IpNetwork::from),
    }
}

/// `tcp . 8080` or, for a `bound*` map, `203.0.113.2 . tcp . 8080`.
fn port_key(maps: PortMaps, key: &Expression<'_>) -> Option<PortKey> {
    let (host, proto, port) = match (maps.bound, parts(key)?) {
        (false, [proto, port]) => (None, proto, port),
        (true, [host, proto, port]) => (Some(ip(host)?), proto, port),
        _ => return None,
    };
    let proto = match text(proto)? {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    Some((maps.ipv4, host, proto, port_number(port)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::FakeNft;
    use crate::{Nft, render_table};

    fn listing_of(rs: &Ruleset) -> Nftables<'static> {
        let mut nft = FakeNft::new();
        nft.apply(&render_table(rs)).unwrap();
        nft.list_table().unwrap().unwrap()
    }

    fn with_object(mut listing: Nftables<'static>, object: serde_json::Value) -> Nftables<'static> {
        let mut objects = listing.objects.into_owned();
        objects.push(serde_json::from_value(object).unwrap());
        listing.objects = objects.into();
        listing
    }

    #[test]
    fn foreign_elements_are_reported_by_name() {
        let listing = with_object(
            listing_of(&Ruleset::new()),
            serde_json::json!({"map": {"family": "inet", "table": "rnet", "name": "ports4_port",
                "type": ["inet_proto", "inet_service"], "map": "inet_service",
                "elem": [[{"concat": ["sctp", 8080]}, 80]]}}),
        );
        let err = observe(&listing).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unexpected element in ports4_port of table inet rnet: [{"concat":["sctp",8080]},80]"#
        );
    }

    #[test]
    fn extra_objects_or_half_a_port_mean_damage() {
        let clean = observe(&listing_of(&Ruleset::new())).unwrap();
        assert!(clean.intact);

        let extra_chain = with_object(
            listing_of(&Ruleset::new()),
            serde_json::json!({"chain": {"family": "inet", "table": "rnet", "name": "mine"}}),
        );
        assert!(!observe(&extra_chain).unwrap().intact);

        let half_port = with_object(
            listing_of(&Ruleset::new()),
            serde_json::json!({"map": {"family": "inet", "table": "rnet", "name": "ports4_addr",
                "type": ["inet_proto", "inet_service"], "map": "ipv4_addr",
                "elem": [[{"concat": ["tcp", 8080]}, "10.0.0.2"]]}}),
        );
        let observed = observe(&half_port).unwrap();
        assert!(!observed.intact, "address without port");
        let plan = plan(Some(&observed), &Ruleset::new()).unwrap();
        assert_eq!(plan, render_table(&Ruleset::new()));
    }

    /// A clean listing whose set `name` holds `elems` (nft's JSON).
    fn with_elems(name: &str, elems: serde_json::Value) -> Nftables<'static> {
        let mut json = serde_json::to_value(listing_of(&Ruleset::new())).unwrap();
        for o in json["nftables"].as_array_mut().unwrap() {
            if o["set"]["name"] == name {
                o["set"]["elem"] = elems.clone();
            }
        }
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_subnet_in_the_wrong_set_or_with_host_bits_is_damage() {
        let ok = observe(&with_elems("masq4_28", serde_json::json!(["10.0.0.16"]))).unwrap();
        assert!(ok.intact);
        let net: IpNetwork = "10.0.0.16/28".parse().unwrap();
        assert_eq!(ok.ruleset.subnets().collect::<Vec<_>>(), vec![net]);
        let v6 = observe(&with_elems("masq6_64", serde_json::json!(["fd00:0:0:7::"]))).unwrap();
        assert!(v6.intact);
        // A /28 as an interval: the masked rules would not know it, nor a delete find it.
        let interval = serde_json::json!([{"prefix": {"addr": "10.0.0.16", "len": 28}}]);
        let misplaced = observe(&with_elems("masq4", interval)).unwrap();
        assert!(!misplaced.intact);
        assert_eq!(misplaced.ruleset.subnets().collect::<Vec<_>>(), vec![net]);
        // Host bits: `saddr & mask` never equals it.
        let host_bits = observe(&with_elems("masq4_28", serde_json::json!(["10.0.0.17"]))).unwrap();
        assert!(!host_bits.intact);
        let plan = plan(Some(&host_bits), &host_bits.ruleset).unwrap();
        assert_eq!(plan, render_table(&host_bits.ruleset), "re-created whole");
    }

    #[test]
    fn a_bare_address_reads_as_a_host_prefix() {
        let listing = with_object(
            listing_of(&Ruleset::new()),
            serde_json::json!({"set": {"family": "inet", "table": "rnet", "name": "masq4",
                "type": "ipv4_addr", "flags": ["interval"], "elem": ["10.0.0.7"]}}),
        );
        let subnets: Vec<_> = observe(&listing).unwrap().ruleset.subnets().collect();
        assert_eq!(subnets, vec!["10.0.0.7/32".parse::<IpNetwork>().unwrap()]);
    }
}
