//! The layout of table `inet rnet` (sets, maps, chains, rules) and its rendering as one atomic
//! nftables batch.
//!
//! The rules never mention a container: they look things up in the sets and maps of
//! [`crate::names`], so their number is fixed ([`rule_count`]) and every per-container change is
//! an element change ([`crate::elements::render_changes`]).

use std::borrow::Cow;
use std::collections::HashSet;

use nftables::batch::Batch;
use nftables::expr::{Expression, MetaKey};
use nftables::schema::{
    Chain, Map, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::Statement;
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::elements;
use crate::expr::{
    accept, and, concat, ct, dnat_maps, drop, eq, fib_daddr_type, fib_saddr_iif_oif, has_flags,
    masquerade, meta, missing, ne, number, payload, prefix, set_ref, string,
};
use crate::model::Ruleset;
use crate::names::*;

/// One set or map of the table.
pub(crate) struct SetSpec {
    /// Family of its table: `inet` or `bridge`.
    pub family: NfFamily,
    /// Set name ([`crate::names`]).
    pub name: &'static str,
    /// Key type.
    pub key: &'static [SetType],
    /// Value type, for a map.
    pub data: Option<&'static [SetType]>,
    /// `flags interval` (subnets).
    pub interval: bool,
    /// Shown by `nft list table`.
    pub comment: &'static str,
}

/// The sets and maps, in [`SETS`] then [`BRIDGE_SETS`] order.
pub(crate) fn set_specs() -> Vec<SetSpec> {
    use SetType::{EtherAddr, Ifname, InetProto, InetService, Ipv4Addr, Ipv6Addr};
    let mut specs = vec![
        SetSpec {
            family: FAMILY,
            name: MASQ4,
            key: &[Ipv4Addr],
            data: None,
            interval: true,
            comment: "container subnets but /28s: masqueraded when leaving the fabric",
        },
        SetSpec {
            family: FAMILY,
            name: MASQ6,
            key: &[Ipv6Addr],
            data: None,
            interval: true,
            comment: "container subnets but /64s: masqueraded when leaving the fabric",
        },
        SetSpec {
            family: FAMILY,
            name: MASQ4_28,
            key: &[Ipv4Addr],
            data: None,
            interval: false,
            comment: "container /28 subnets by network address: masqueraded when leaving",
        },
        SetSpec {
            family: FAMILY,
            name: MASQ6_64,
            key: &[Ipv6Addr],
            data: None,
            interval: false,
            comment: "container /64 subnets by network address: masqueraded when leaving",
        },
        SetSpec {
            family: FAMILY,
            name: IFACES,
            key: &[Ifname],
            data: None,
            interval: false,
            comment: "host-side links of the fabric (ve-*, vz-*)",
        },
        SetSpec {
            family: FAMILY,
            name: ALLOWED_PAIRS,
            key: &[Ifname, Ifname],
            data: None,
            interval: false,
            comment: "input link . output link allowed to forward (each link to itself, zone pairs)",
        },
    ];
    for maps in PORT_MAPS {
        let key: &'static [SetType] = match (maps.ipv4, maps.bound) {
            (_, false) => &[InetProto, InetService],
            (true, true) => &[Ipv4Addr, InetProto, InetService],
            (false, true) => &[Ipv6Addr, InetProto, InetService],
        };
        let (addr_comment, port_comment) = match (maps.ipv4, maps.bound) {
            (true, false) => (
                "published ports on every local address: container address",
                "published ports on every local address: container port",
            ),
            (false, false) => (
                "published ports on every local address but ::1: container address",
                "published ports on every local address but ::1: container port",
            ),
            (_, true) => (
                "published ports bound to one host address: container address",
                "published ports bound to one host address: container port",
            ),
        };
        specs.push(SetSpec {
            family: FAMILY,
            name: maps.addr,
            key,
            data: Some(if maps.ipv4 { &[Ipv4Addr] } else { &[Ipv6Addr] }),
            interval: false,
            comment: addr_comment,
        });
        specs.push(SetSpec {
            family: FAMILY,
            name: maps.port,
            key,
            data: Some(&[InetService]),
            interval: false,
            comment: port_comment,
        });
    }
    let bridge_set = |name, key, comment| SetSpec {
        family: BRIDGE_FAMILY,
        name,
        key,
        data: None,
        interval: false,
        comment,
    };
    specs.extend([
        bridge_set(
            PORTS,
            &[Ifname],
            "vb-* ports of our containers (zones, admin bridges): MAC checked",
        ),
        bridge_set(
            PORT_MACS,
            &[Ifname, EtherAddr],
            "port . the MAC address of its container",
        ),
        bridge_set(
            ZONE_PORTS,
            &[Ifname],
            "ports whose address we assign (zone members): address checked",
        ),
        bridge_set(
            PORT_ADDRS,
            &[Ifname, Ipv4Addr],
            "zone port . the IPv4 address of its container",
        ),
    ]);
    specs
}

/// One base chain.
pub(crate) struct ChainSpec {
    /// Family of its table.
    pub family: NfFamily,
    /// Chain name ([`crate::names`]).
    pub name: &'static str,
    /// `filter` or `nat`.
    pub kind: NfChainType,
    /// Netfilter hook.
    pub hook: NfHook,
    /// Priority (`raw`, `dstnat`, `filter`, `srcnat`).
    pub prio: i32,
}

/// The chains, in [`CHAINS`] then [`BRIDGE_CHAINS`] order. All have policy accept: we only
/// decide for our own links and ports, never for the host's other traffic.
pub(crate) fn chain_specs() -> [ChainSpec; 7] {
    use NfChainType::{Filter, NAT};
    let chain = |name, kind, hook, prio| ChainSpec {
        family: FAMILY,
        name,
        kind,
        hook,
        prio,
    };
    [
        chain(PREROUTING_RAW, Filter, NfHook::Prerouting, PRIO_RAW),
        chain(PREROUTING, NAT, NfHook::Prerouting, PRIO_DSTNAT),
        chain(INPUT, Filter, NfHook::Input, PRIO_FILTER),
        chain(FORWARD, Filter, NfHook::Forward, PRIO_FILTER),
        chain(OUTPUT, NAT, NfHook::Output, PRIO_DSTNAT),
        chain(POSTROUTING, NAT, NfHook::Postrouting, PRIO_SRCNAT),
        ChainSpec {
            family: BRIDGE_FAMILY,
            name: BRIDGE_PREROUTING,
            kind: Filter,
            hook: NfHook::Prerouting,
            prio: PRIO_BRIDGE_FILTER,
        },
    ]
}

/// One rule: its chain, its statements and the comment `nft list` shows after it.
pub(crate) struct RuleSpec {
    /// Family of its table.
    pub family: NfFamily,
    /// Chain name.
    pub chain: &'static str,
    /// Statements, as `nft -j list` prints them.
    pub expr: Vec<Statement<'static>>,
    /// Why the rule is there (at most 128 bytes).
    pub comment: &'static str,
}

fn rule(chain: &'static str, comment: &'static str, expr: Vec<Statement<'static>>) -> RuleSpec {
    RuleSpec {
        family: FAMILY,
        chain,
        expr,
        comment,
    }
}

/// The lookup key of a kind of published port: `meta l4proto . th dport`, prefixed with
/// `ip daddr` / `ip6 daddr` for ports bound to one host address.
fn port_key(maps: PortMaps) -> Expression<'static> {
    let mut key = vec![meta(MetaKey::L4proto), payload("th", "dport")];
    if maps.bound {
        key.insert(0, payload(if maps.ipv4 { "ip" } else { "ip6" }, "daddr"));
    }
    concat(key)
}

/// The DNAT rules of prerouting (`from_host` false) or output (true): one per kind of published
/// port, bound ports first. On IPv6 `from_host` excludes `::1`: the kernel cannot send a packet
/// from `::1` out of the host (no `route_localnet` for IPv6), so DNAT of `::1` would blackhole
/// connections that a host service could answer.
fn dnat_rules(chain: &'static str, from_host: bool) -> Vec<RuleSpec> {
    let order = [PORT_MAPS[1], PORT_MAPS[0], PORT_MAPS[3], PORT_MAPS[2]];
    order
        .into_iter()
        .map(|maps| {
            let comment = match (maps.ipv4, maps.bound, from_host) {
                (true, true, false) => "published port bound to one host address",
                (true, false, false) => "published port on every local address",
                (false, true, false) => "published port bound to one host address (IPv6)",
                (false, false, false) => "published port on every local address (IPv6)",
                (true, true, true) => "from the host: published port bound to one host address",
                (true, false, true) => {
                    "from the host, 127.0.0.1 included: published port on every local address"
                }
                (false, true, true) => {
                    "from the host: published port bound to one host address (IPv6)"
                }
                (false, false, true) => {
                    "from the host, ::1 excluded: published port on every local address (IPv6)"
                }
            };
            let mut expr = vec![
                eq(fib_daddr_type(), string("local")),
                dnat_maps(maps.ipv4, port_key(maps), maps.addr, maps.port),
            ];
            if from_host && !maps.ipv4 {
                expr.insert(0, ne(payload("ip6", "daddr"), string("::1")));
            }
            rule(chain, comment, expr)
        })
        .collect()
}

/// Every rule of the table, chain by chain, in order. The list is fixed: it does not depend on
/// the [`Ruleset`].
pub(crate) fn rule_specs() -> Vec<RuleSpec> {
    let iif = || meta(MetaKey::Iifname);
    let oif = || meta(MetaKey::Oifname);
    let mut rules = vec![
        // prerouting_raw: route_localnet=1 (needed on our links for 127.0.0.1 publishing) also
        // lets packets to 127.0.0.0/8 in from those links; keep containers off the host loopback.
        // At priority raw this runs before conntrack un-NATs replies, which it must not drop.
        rule(
            PREROUTING_RAW,
            "containers must not reach the host loopback (route_localnet=1 on our links)",
            vec![
                eq(iif(), set_ref(IFACES)),
                eq(payload("ip", "daddr"), prefix("127.0.0.0", 8)),
                drop(),
            ],
        ),
        // A container may only send from addresses routed back through its own link (or its
        // zone's bridge): not another container's, not the host's, not a random one. 0.0.0.0 is
        // a DHCP client asking for its lease.
        rule(
            PREROUTING_RAW,
            "spoofed source: a reply would not go back out of the link it came in on",
            vec![
                eq(iif(), set_ref(IFACES)),
                ne(payload("ip", "saddr"), string("0.0.0.0")),
                eq(fib_saddr_iif_oif(), missing()),
                drop(),
            ],
        ),
        // The same for IPv6: the link's /64 and its link-local addresses route back through it;
        // :: is duplicate address detection.
        rule(
            PREROUTING_RAW,
            "spoofed source: a reply would not go back out of the link it came in on (IPv6)",
            vec![
                eq(iif(), set_ref(IFACES)),
                ne(payload("ip6", "saddr"), string("::")),
                eq(fib_saddr_iif_oif(), missing()),
                drop(),
            ],
        ),
    ];
    rules.extend(dnat_rules(PREROUTING, false));
    rules.push(
        // input: an `accept` here does not override a drop in another table (firewalld, ...);
        // it documents what the fabric needs and is where a future default drop would go.
        rule(
            INPUT,
            "DHCP from containers to our server",
            vec![
                eq(iif(), set_ref(IFACES)),
                eq(payload("udp", "dport"), number(67)),
                accept(),
            ],
        ),
    );
    rules.extend([
        rule(
            FORWARD,
            "not fabric traffic: left to the host's other rules",
            vec![
                ne(iif(), set_ref(IFACES)),
                ne(oif(), set_ref(IFACES)),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "replies to allowed connections",
            vec![
                has_flags(ct("state"), &["established", "related"]),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "broken connections to or from containers",
            vec![has_flags(ct("state"), &["invalid"]), drop()],
        ),
        rule(
            FORWARD,
            "published ports, also container to container (hairpin)",
            vec![has_flags(ct("status"), &["dnat"]), accept()],
        ),
        rule(
            FORWARD,
            "within a link or zone bridge, and allowed zone pairs",
            vec![
                eq(concat(vec![iif(), oif()]), set_ref(ALLOWED_PAIRS)),
                accept(),
            ],
        ),
        rule(
            FORWARD,
            "links and zones are isolated from each other",
            vec![
                eq(iif(), set_ref(IFACES)),
                eq(oif(), set_ref(IFACES)),
                drop(),
            ],
        ),
        rule(
            FORWARD,
            "containers to the outside",
            vec![eq(iif(), set_ref(IFACES)), accept()],
        ),
        rule(
            FORWARD,
            "nothing unsolicited from the outside into containers",
            vec![eq(oif(), set_ref(IFACES)), drop()],
        ),
    ]);
    rules.extend(dnat_rules(OUTPUT, true));
    rules.extend([
        // The host connecting to 127.0.0.1:PORT is DNATed to a container but keeps source
        // 127.0.0.1, which the container cannot answer: give it the link's address. The kernel
        // only routes such a packet out of a link with route_localnet=1.
        rule(
            POSTROUTING,
            "host 127.0.0.1 to a published port: source becomes the link's address",
            vec![
                eq(payload("ip", "saddr"), prefix("127.0.0.0", 8)),
                eq(oif(), set_ref(IFACES)),
                masquerade(),
            ],
        ),
    ]);
    rules.extend(masquerade_rules("ip", MASQ4, MASQ4_28, elements::HASHED4.1));
    rules.extend(masquerade_rules(
        "ip6",
        MASQ6,
        MASQ6_64,
        elements::HASHED6.1,
    ));
    rules.extend(bridge_rules());
    rules
}

/// The rules of table `bridge rnet`: what a container may send into a bridge through its port.
fn bridge_rules() -> Vec<RuleSpec> {
    let iif = || meta(MetaKey::Iifname);
    let rule = |comment, expr| RuleSpec {
        family: BRIDGE_FAMILY,
        chain: BRIDGE_PREROUTING,
        expr,
        comment,
    };
    vec![
        rule(
            "frames from a port carry its container's MAC address",
            vec![
                eq(iif(), set_ref(PORTS)),
                ne(
                    concat(vec![iif(), payload("ether", "saddr")]),
                    set_ref(PORT_MACS),
                ),
                drop(),
            ],
        ),
        rule(
            "not a zone port: left to the host's other rules",
            vec![ne(iif(), set_ref(ZONE_PORTS)), accept()],
        ),
        rule(
            "no DHCP server in a zone member (rnetd is the zone's server); relays may send",
            vec![
                eq(payload("udp", "sport"), number(67)),
                eq(payload("udp", "dport"), number(68)),
                drop(),
            ],
        ),
        rule(
            "no DHCPv6 server in a zone member",
            vec![
                eq(payload("udp", "sport"), number(547)),
                eq(payload("udp", "dport"), number(546)),
                drop(),
            ],
        ),
        rule(
            "no IPv6 router advertisement from a zone member",
            vec![
                eq(payload("icmpv6", "type"), string("nd-router-advert")),
                drop(),
            ],
        ),
        rule(
            "DHCP client without an address yet",
            vec![
                eq(payload("ip", "saddr"), string("0.0.0.0")),
                eq(payload("udp", "dport"), number(67)),
                accept(),
            ],
        ),
        rule(
            "IPv4 from a zone member carries its own address",
            vec![
                ne(
                    concat(vec![iif(), payload("ip", "saddr")]),
                    set_ref(PORT_ADDRS),
                ),
                drop(),
            ],
        ),
        rule(
            "ARP from a zone member carries its own MAC address",
            vec![
                ne(
                    concat(vec![iif(), payload("arp", "saddr ether")]),
                    set_ref(PORT_MACS),
                ),
                drop(),
            ],
        ),
        rule(
            "ARP probe (duplicate address detection)",
            vec![eq(payload("arp", "saddr ip"), string("0.0.0.0")), accept()],
        ),
        rule(
            "ARP from a zone member claims only its own address (no poisoning)",
            vec![
                ne(
                    concat(vec![iif(), payload("arp", "saddr ip")]),
                    set_ref(PORT_ADDRS),
                ),
                drop(),
            ],
        ),
    ]
}

/// The postrouting rules of one family (`ip` with `masq4` and `masq4_28`, `ip6` with `masq6`
/// and `masq6_64`): each rule twice, once per set a source subnet can be in. A container's
/// subnet is in `hashed` (its network address, matched through `mask`) when it has that set's
/// prefix length, in the interval set `subnets` otherwise (see [`elements::subnet_set`]).
fn masquerade_rules(
    family: &'static str,
    subnets: &'static str,
    hashed: &'static str,
    mask: &'static str,
) -> [RuleSpec; 4] {
    let from = |hashed_source: bool| {
        if hashed_source {
            eq(and(payload(family, "saddr"), mask), set_ref(hashed))
        } else {
            eq(payload(family, "saddr"), set_ref(subnets))
        }
    };
    // A container reaching a published port (its own or a neighbour's on the same bridge)
    // would get the reply straight from the target, not through the host's conntrack.
    let hairpin = |hashed_source| {
        rule(
            POSTROUTING,
            "hairpin: container to a published port, so replies come back through the host",
            vec![
                from(hashed_source),
                eq(meta(MetaKey::Oifname), set_ref(IFACES)),
                has_flags(ct("status"), &["dnat"]),
                masquerade(),
            ],
        )
    };
    let outside = |hashed_source| {
        rule(
            POSTROUTING,
            "containers to the outside (not to other containers)",
            vec![
                from(hashed_source),
                ne(and(payload(family, "daddr"), mask), set_ref(hashed)),
                ne(payload(family, "daddr"), set_ref(subnets)),
                masquerade(),
            ],
        )
    };
    [hairpin(true), hairpin(false), outside(true), outside(false)]
}

/// Number of rules in the table, whatever the number of containers.
pub fn rule_count() -> usize {
    rule_specs().len()
}

/// Our two tables: `inet rnet` and `bridge rnet`.
const FAMILIES: [NfFamily; 2] = [FAMILY, BRIDGE_FAMILY];

fn table(family: NfFamily) -> Table<'static> {
    Table {
        family,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

fn set_type(types: &[SetType]) -> SetTypeValue<'static> {
    match types {
        [one] => SetTypeValue::Single(*one),
        many => SetTypeValue::Concatenated(Cow::Owned(many.to_vec())),
    }
}

fn set_object(spec: &SetSpec, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
    let flags = spec.interval.then(|| HashSet::from([SetFlag::Interval]));
    let elem = (!elem.is_empty()).then(|| Cow::Owned(elem));
    let comment = Some(Cow::Borrowed(spec.comment));
    match spec.data {
        None => NfListObject::Set(Box::new(Set {
            family: spec.family,
            table: Cow::Borrowed(TABLE),
            name: Cow::Borrowed(spec.name),
            handle: None,
            set_type: set_type(spec.key),
            policy: None,
            flags,
            elem,
            timeout: None,
            gc_interval: None,
            size: None,
            comment,
        })),
        Some(data) => NfListObject::Map(Box::new(Map {
            family: spec.family,
            table: Cow::Borrowed(TABLE),
            name: Cow::Borrowed(spec.name),
            handle: None,
            set_type: set_type(spec.key),
            map: set_type(data),
            policy: None,
            flags,
            elem,
            timeout: None,
            gc_interval: None,
            size: None,
            comment,
        })),
    }
}

fn chain_object(spec: &ChainSpec) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: spec.family,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(spec.name),
        newname: None,
        handle: None,
        _type: Some(spec.kind),
        hook: Some(spec.hook),
        prio: Some(spec.prio),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    })
}

fn rule_object(spec: RuleSpec) -> Rule<'static> {
    Rule {
        family: spec.family,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(spec.chain),
        expr: Cow::Owned(spec.expr),
        handle: None,
        index: None,
        comment: Some(Cow::Borrowed(spec.comment)),
    }
}

/// Both tables for `ruleset`, as one atomic batch: `add table; delete table; add table;` for
/// `inet rnet` and for `bridge rnet`, then sets and maps with their elements, chains and rules.
///
/// Idempotent and convergent: applying it replaces whatever the tables hold (or creates them
/// after `nft flush ruleset`) without ever failing because a table exists or not, and without a
/// moment where a table is missing. Conntrack entries, and so established connections, survive.
/// Equivalent to `nft -f` of the listing in the crate docs.
pub fn render_table(ruleset: &Ruleset) -> Nftables<'static> {
    let mut batch = Batch::new();
    for family in FAMILIES {
        batch.add(NfListObject::Table(table(family)));
        batch.delete(NfListObject::Table(table(family)));
        batch.add(NfListObject::Table(table(family)));
    }
    for spec in set_specs() {
        batch.add(set_object(&spec, elements::initial(spec.name, ruleset)));
    }
    for spec in chain_specs() {
        batch.add(chain_object(&spec));
    }
    for spec in rule_specs() {
        batch.add(NfListObject::Rule(rule_object(spec)));
    }
    batch.to_nftables()
}

/// Removes tables `inet rnet` and `bridge rnet` with everything in them: `add table; delete
/// table` for each in one batch, so it succeeds whether or not they exist (`nft delete table inet
/// rnet` alone would fail with ENOENT).
pub fn render_delete_table() -> Nftables<'static> {
    let mut batch = Batch::new();
    for family in FAMILIES {
        batch.add(NfListObject::Table(table(family)));
        batch.delete(NfListObject::Table(table(family)));
    }
    batch.to_nftables()
}

/// The rule objects [`render_table`] creates, in order: for comparing with a listing.
pub(crate) fn rule_objects() -> Vec<Rule<'static>> {
    rule_specs().into_iter().map(rule_object).collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use nftables::schema::{NfCmd, NfObject};
    use serde_json::{Value, json};

    use super::*;
    use crate::model::{Change, IfName, PortMapping, PortRange, Proto};

    /// Container `n`: a /28, a `ve-` link and tcp 8000+n -> :80.
    fn container(n: u8) -> [Change; 3] {
        let addr: IpAddr = format!("10.0.{n}.2").parse().unwrap();
        let port = PortRange::single(8000 + u16::from(n)).unwrap();
        [
            Change::AddSubnet(format!("10.0.{n}.0/28").parse().unwrap()),
            Change::AddIface(IfName::new(format!("ve-c{n}")).unwrap()),
            Change::AddPort(PortMapping::new(Proto::Tcp, None, port, addr, 80).unwrap()),
        ]
    }

    fn ruleset(containers: impl IntoIterator<Item = u8>) -> Ruleset {
        let mut rs = Ruleset::new();
        for n in containers {
            for c in container(n) {
                rs.apply(&c);
            }
        }
        rs
    }

    fn count(batch: &Nftables<'_>, kind: fn(&NfListObject<'_>) -> bool) -> usize {
        batch
            .objects
            .iter()
            .filter(|o| matches!(o, NfObject::CmdObject(NfCmd::Add(obj)) if kind(obj)))
            .count()
    }

    fn is_rule(o: &NfListObject<'_>) -> bool {
        matches!(o, NfListObject::Rule(_))
    }

    /// The JSON of the `add rule` commands of `chain` in table `inet rnet`.
    fn chain_rules(chain: &str) -> Vec<Value> {
        family_rules("inet", chain)
    }

    /// The JSON of the `add rule` commands of `chain` in our table of `family`.
    fn family_rules(family: &str, chain: &str) -> Vec<Value> {
        let batch = serde_json::to_value(render_table(&Ruleset::new())).unwrap();
        batch["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["add"]["rule"]["chain"] == chain && o["add"]["rule"]["family"] == family)
            .map(|o| o["add"]["rule"]["expr"].clone())
            .collect()
    }

    #[test]
    fn rule_count_does_not_grow_with_containers() {
        let one = render_table(&ruleset(0..1));
        let ten = render_table(&ruleset(0..10));
        assert_eq!(count(&one, is_rule), count(&ten, is_rule));
        assert_eq!(count(&ten, is_rule), rule_count());
        assert_eq!(rule_count(), 39);
        let chains = |o: &NfListObject<'_>| matches!(o, NfListObject::Chain(_));
        assert_eq!(count(&ten, chains), CHAINS.len() + BRIDGE_CHAINS.len());
    }

    #[test]
    fn rendering_is_deterministic() {
        let forward = ruleset(0..10);
        let mut backward = Ruleset::new();
        for n in (0..10).rev() {
            for c in container(n).into_iter().rev() {
                backward.apply(&c);
            }
        }
        // Compared as values: the flags of a `fib` expression are a set, serialized in any order.
        assert_eq!(render_table(&forward), render_table(&backward));
        let elements = |rs: &Ruleset| {
            let batch = serde_json::to_value(render_table(rs)).unwrap();
            let sets: Vec<_> = batch["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["add"].get("set").is_some() || o["add"].get("map").is_some())
                .cloned()
                .collect();
            serde_json::to_string(&sets).unwrap()
        };
        assert_eq!(elements(&forward), elements(&backward));
    }

    #[test]
    fn table_is_recreated_in_one_batch() {
        let batch = serde_json::to_value(render_table(&Ruleset::new())).unwrap();
        let objects = batch["nftables"].as_array().unwrap();
        let table = json!({"family": "inet", "name": "rnet"});
        let bridge = json!({"family": "bridge", "name": "rnet"});
        assert_eq!(objects[0], json!({"add": {"table": table}}));
        assert_eq!(objects[1], json!({"delete": {"table": table}}));
        assert_eq!(objects[2], json!({"add": {"table": table}}));
        assert_eq!(objects[3], json!({"add": {"table": bridge}}));
        assert_eq!(objects[4], json!({"delete": {"table": bridge}}));
        assert_eq!(objects[5], json!({"add": {"table": bridge}}));
        assert_eq!(
            serde_json::to_value(render_delete_table()).unwrap(),
            json!({"nftables": [
                {"add": {"table": table}}, {"delete": {"table": table}},
                {"add": {"table": bridge}}, {"delete": {"table": bridge}},
            ]})
        );
    }

    #[test]
    fn sets_and_maps_have_the_documented_types() {
        let batch = serde_json::to_value(render_table(&ruleset(0..1))).unwrap();
        let find = |kind: &str, name: &str| {
            batch["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["add"][kind]["name"] == name)
                .map(|o| o["add"][kind].clone())
                .unwrap_or_else(|| panic!("no {kind} {name}"))
        };
        let masq4 = find("set", "masq4");
        assert_eq!(masq4["type"], "ipv4_addr");
        assert_eq!(masq4["flags"], json!(["interval"]));
        assert_eq!(masq4["elem"], Value::Null, "a /28 is not an interval");
        let masq4_28 = find("set", "masq4_28");
        assert_eq!(masq4_28["type"], "ipv4_addr");
        assert_eq!(masq4_28["flags"], Value::Null, "a hash set");
        assert_eq!(masq4_28["elem"], json!(["10.0.0.0"]));
        assert_eq!(find("set", "masq6_64")["type"], "ipv6_addr");
        assert_eq!(find("set", "ifaces")["elem"], json!(["ve-c0"]));
        assert_eq!(
            find("set", "allowed_pairs")["type"],
            json!(["ifname", "ifname"])
        );
        assert_eq!(
            find("set", "allowed_pairs")["elem"],
            json!([{"concat": ["ve-c0", "ve-c0"]}])
        );
        let addr = find("map", "ports4_addr");
        assert_eq!(addr["type"], json!(["inet_proto", "inet_service"]));
        assert_eq!(addr["map"], "ipv4_addr");
        assert_eq!(
            addr["elem"],
            json!([[{"concat": ["tcp", 8000]}, "10.0.0.2"]])
        );
        let port = find("map", "ports4_port");
        assert_eq!(port["map"], "inet_service");
        assert_eq!(port["elem"], json!([[{"concat": ["tcp", 8000]}, 80]]));
        assert_eq!(
            find("map", "bound6_addr")["type"],
            json!(["ipv6_addr", "inet_proto", "inet_service"])
        );
    }

    #[test]
    fn prerouting_dnats_through_the_maps() {
        let fib = json!({"match": {"left": {"fib": {"result": "type", "flags": ["daddr"]}},
                                   "right": "local", "op": "=="}});
        let key = json!({"concat": [{"meta": {"key": "l4proto"}},
                                    {"payload": {"protocol": "th", "field": "dport"}}]});
        let rules = chain_rules(PREROUTING);
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules[1],
            json!([fib, {"dnat": {
                "addr": {"map": {"key": key, "data": "@ports4_addr"}},
                "family": "ip",
                "port": {"map": {"key": key, "data": "@ports4_port"}}}}])
        );
        // Bound ports are looked up first, with the destination address in the key.
        assert_eq!(
            rules[0][1]["dnat"]["addr"]["map"]["key"]["concat"][0],
            json!({"payload": {"protocol": "ip", "field": "daddr"}})
        );
        assert_eq!(rules[2][1]["dnat"]["family"], "ip6");
    }

    #[test]
    fn output_dnats_loopback_v4_but_not_v6() {
        let rules = chain_rules(OUTPUT);
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[1][0]["match"]["left"]["fib"]["result"], "type");
        assert_eq!(
            rules[3][0],
            json!({"match": {"left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                             "right": "::1", "op": "!="}})
        );
    }

    #[test]
    fn postrouting_masquerades_outside_loopback_and_hairpin() {
        let rules = chain_rules(POSTROUTING);
        let saddr = json!({"payload": {"protocol": "ip", "field": "saddr"}});
        let daddr = json!({"payload": {"protocol": "ip", "field": "daddr"}});
        let oif = json!({"meta": {"key": "oifname"}});
        assert_eq!(
            rules[0],
            json!([
                {"match": {"left": saddr, "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}, "op": "=="}},
                {"match": {"left": oif, "right": "@ifaces", "op": "=="}},
                {"masquerade": null}
            ])
        );
        let masked = |addr: &Value, mask: &str| json!({"&": [addr, mask]});
        let hairpin = |from: Value| {
            json!([
                from,
                {"match": {"left": oif, "right": "@ifaces", "op": "=="}},
                {"match": {"left": {"ct": {"key": "status"}}, "right": "dnat", "op": "in"}},
                {"masquerade": null}
            ])
        };
        let from28 = json!({"match": {"left": masked(&saddr, "255.255.255.240"),
                                      "right": "@masq4_28", "op": "=="}});
        let from_other = json!({"match": {"left": saddr, "right": "@masq4", "op": "=="}});
        assert_eq!(rules[1], hairpin(from28.clone()));
        assert_eq!(rules[2], hairpin(from_other.clone()));
        let outside = |from: Value| {
            json!([
                from,
                {"match": {"left": masked(&daddr, "255.255.255.240"), "right": "@masq4_28",
                           "op": "!="}},
                {"match": {"left": daddr, "right": "@masq4", "op": "!="}},
                {"masquerade": null}
            ])
        };
        assert_eq!(rules[3], outside(from28));
        assert_eq!(rules[4], outside(from_other));
        let saddr6 = json!({"payload": {"protocol": "ip6", "field": "saddr"}});
        assert_eq!(
            rules[7][0],
            json!({"match": {"left": masked(&saddr6, "ffff:ffff:ffff:ffff::"),
                             "right": "@masq6_64", "op": "=="}})
        );
        assert_eq!(rules.len(), 9);
    }

    #[test]
    fn forward_decides_only_for_our_links() {
        let rules = chain_rules(FORWARD);
        let iif = json!({"meta": {"key": "iifname"}});
        let oif = json!({"meta": {"key": "oifname"}});
        // First: everything that touches none of our links leaves the chain untouched.
        assert_eq!(
            rules[0],
            json!([
                {"match": {"left": iif, "right": "@ifaces", "op": "!="}},
                {"match": {"left": oif, "right": "@ifaces", "op": "!="}},
                {"accept": null}
            ])
        );
        // Every drop names one of our links, or comes after that first rule.
        let drops: Vec<_> = rules
            .iter()
            .filter(|r| r.as_array().unwrap().last() == Some(&json!({"drop": null})))
            .collect();
        assert_eq!(drops.len(), 3);
        assert_eq!(
            rules[4],
            json!([
                {"match": {"left": {"concat": [iif, oif]}, "right": "@allowed_pairs", "op": "=="}},
                {"accept": null}
            ])
        );
        assert_eq!(
            rules[5],
            json!([
                {"match": {"left": iif, "right": "@ifaces", "op": "=="}},
                {"match": {"left": oif, "right": "@ifaces", "op": "=="}},
                {"drop": null}
            ])
        );
    }

    #[test]
    fn spoofed_sources_from_our_links_are_dropped_before_conntrack() {
        let rules = chain_rules(PREROUTING_RAW);
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[2][1],
            json!({"match": {"left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                             "right": "::", "op": "!="}})
        );
        let mut rp = rules[1].clone();
        // fib flags are a set: any order.
        let flags = rp[2]["match"]["left"]["fib"]["flags"].take();
        let mut flags: Vec<_> = flags.as_array().unwrap().clone();
        flags.sort_by_key(|f| f.to_string());
        assert_eq!(flags, vec![json!("iif"), json!("saddr")]);
        assert_eq!(
            rp,
            json!([
                {"match": {"left": {"meta": {"key": "iifname"}}, "right": "@ifaces", "op": "=="}},
                {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": "0.0.0.0", "op": "!="}},
                {"match": {"left": {"fib": {"result": "oif", "flags": null}},
                           "right": false, "op": "=="}},
                {"drop": null}
            ])
        );
    }

    #[test]
    fn bridge_ports_are_held_to_their_container() {
        let rules = family_rules("bridge", BRIDGE_PREROUTING);
        assert_eq!(rules.len(), 10);
        let iif = json!({"meta": {"key": "iifname"}});
        let drop = json!({"drop": null});
        // First the MAC of every port, then only zone ports go on.
        assert_eq!(
            rules[0],
            json!([
                {"match": {"left": iif, "right": "@ports", "op": "=="}},
                {"match": {"left": {"concat": [iif, {"payload": {"protocol": "ether", "field": "saddr"}}]},
                           "right": "@port_macs", "op": "!="}},
                drop
            ])
        );
        assert_eq!(
            rules[1],
            json!([{"match": {"left": iif, "right": "@zone_ports", "op": "!="}}, {"accept": null}])
        );
        // DHCP servers' answers to clients are dropped before DHCP clients (0.0.0.0) are let
        // through; a relay (server port to server port) is not a server.
        let server = |from: u16, to: u16| {
            json!([{"match": {"left": {"payload": {"protocol": "udp", "field": "sport"}},
                              "right": from, "op": "=="}},
                   {"match": {"left": {"payload": {"protocol": "udp", "field": "dport"}},
                              "right": to, "op": "=="}}, drop])
        };
        assert_eq!(rules[2], server(67, 68));
        assert_eq!(rules[3], server(547, 546));
        assert_eq!(rules[5][2], json!({"accept": null}));
        let held = |proto: &str, field: &str, set: &str| {
            json!([{"match": {"left": {"concat": [iif, {"payload": {"protocol": proto, "field": field}}]},
                              "right": set, "op": "!="}}, drop])
        };
        assert_eq!(rules[6], held("ip", "saddr", "@port_addrs"));
        assert_eq!(rules[7], held("arp", "saddr ether", "@port_macs"));
        assert_eq!(rules[9], held("arp", "saddr ip", "@port_addrs"));
    }

    #[test]
    fn chains_are_base_chains_with_policy_accept() {
        let batch = serde_json::to_value(render_table(&Ruleset::new())).unwrap();
        let chains: Vec<_> = batch["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["add"].get("chain"))
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["type"].as_str().unwrap().to_owned(),
                    c["hook"].as_str().unwrap().to_owned(),
                    c["prio"].as_i64().unwrap(),
                    c["policy"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let want = [
            ("prerouting_raw", "filter", "prerouting", -300),
            ("prerouting", "nat", "prerouting", -100),
            ("input", "filter", "input", 0),
            ("forward", "filter", "forward", 0),
            ("output", "nat", "output", -100),
            ("postrouting", "nat", "postrouting", 100),
            ("prerouting", "filter", "prerouting", -200),
        ];
        assert_eq!(chains.len(), want.len());
        for (have, want) in chains.iter().zip(want) {
            assert_eq!(
                (have.0.as_str(), have.1.as_str(), have.2.as_str(), have.3),
                want
            );
            assert_eq!(have.4, "accept");
        }
    }

    #[test]
    fn comments_fit_nft_limits() {
        for spec in rule_specs() {
            assert!(spec.comment.len() <= 128, "{:?} is too long", spec.comment);
        }
        for spec in set_specs() {
            assert!(spec.comment.len() <= 128, "{:?} is too long", spec.comment);
        }
    }
}
