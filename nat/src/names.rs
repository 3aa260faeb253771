//! Names of the objects in our table: the one place that spells them.
//!
//! What rnet owns in nftables lives in table `inet rnet`, plus table `bridge rnet` for the frames
//! a bridge forwards between its ports (anti-spoofing on `vb-*` ports); the layout is described in
//! `docs/architecture.md#nftables-layout`. An `inet` table sees IPv4 and IPv6, so one table, one
//! set of chains and one rule count serve both families; the per-family parts are the sets and
//! maps below.

use nftables::types::NfFamily;

/// Family of our table: `inet` (IPv4 and IPv6).
pub const FAMILY: NfFamily = NfFamily::INet;

/// Name of our table: `nft list table inet rnet`.
pub const TABLE: &str = "rnet";

/// Name of rnetd's `--underlay-filter` table (`inet`, written by `netd::distributed::filter`):
/// ours too, so never taken for another firewall's.
pub const UNDERLAY_TABLE: &str = "rnet_underlay";

/// Set `masq4 { type ipv4_addr; flags interval }`: IPv4 container subnets (masquerade sources)
/// other than /28s (zones of other sizes).
pub const MASQ4: &str = "masq4";
/// Set `masq6 { type ipv6_addr; flags interval }`: IPv6 container subnets other than /64s.
pub const MASQ6: &str = "masq6";
/// Set `masq4_28 { type ipv4_addr }`: the network address of each /28 container subnet (every
/// `ve-` link's), matched as `ip saddr & 255.255.255.240`. A hash set: the kernel walks an
/// interval set whole at each commit that changes it (`nft_rbtree_commit`), a hash set not.
pub const MASQ4_28: &str = "masq4_28";
/// Set `masq6_64 { type ipv6_addr }`: the network address of each /64 container subnet,
/// matched as `ip6 saddr & ffff:ffff:ffff:ffff::` (see [`MASQ4_28`]).
pub const MASQ6_64: &str = "masq6_64";
/// Set `ifaces { type ifname }`: the host-side L3 links we manage (`ve-*` links, `vz-*` zone
/// bridges). Not the `vb-*` ports of a bridge: routing sees the bridge, not its ports.
pub const IFACES: &str = "ifaces";
/// Set `allowed_pairs { type ifname . ifname }`: `input link . output link` pairs allowed to
/// forward between two of our links. Every link is paired with itself; zones may add more.
pub const ALLOWED_PAIRS: &str = "allowed_pairs";
// Published ports. Each map pair is looked up with the same key: one gives the container's
// address, the other its port (`dnat ip to KEY map @ports4_addr : KEY map @ports4_port`). One map
// of `ipv4_addr . inet_service` values would be shorter, but nft 1.0.6 (Debian 12) cannot create
// or fill such a map from JSON and crashes on a DNAT rule that uses one.

/// Map `ports4_addr { type inet_proto . inet_service : ipv4_addr }`: container address of each
/// port published on every local IPv4 address.
pub const PORTS4_ADDR: &str = "ports4_addr";
/// Map `ports4_port { type inet_proto . inet_service : inet_service }`: container port of each
/// port published on every local IPv4 address.
pub const PORTS4_PORT: &str = "ports4_port";
/// Map `ports6_addr { type inet_proto . inet_service : ipv6_addr }`: as `ports4_addr`, for IPv6
/// (every local address except `::1`, which the kernel cannot DNAT out of the host).
pub const PORTS6_ADDR: &str = "ports6_addr";
/// Map `ports6_port { type inet_proto . inet_service : inet_service }`: as `ports4_port`, IPv6.
pub const PORTS6_PORT: &str = "ports6_port";
/// Map `bound4_addr { type ipv4_addr . inet_proto . inet_service : ipv4_addr }`: container
/// address of each port bound to one host IPv4 address (`-p 203.0.113.2:8080:80`,
/// `-p 127.0.0.1:8080:80`).
pub const BOUND4_ADDR: &str = "bound4_addr";
/// Map `bound4_port { type ipv4_addr . inet_proto . inet_service : inet_service }`: container
/// port of each port bound to one host IPv4 address.
pub const BOUND4_PORT: &str = "bound4_port";
/// Map `bound6_addr { type ipv6_addr . inet_proto . inet_service : ipv6_addr }`: as
/// `bound4_addr`, for IPv6.
pub const BOUND6_ADDR: &str = "bound6_addr";
/// Map `bound6_port { type ipv6_addr . inet_proto . inet_service : inet_service }`: as
/// `bound4_port`, for IPv6.
pub const BOUND6_PORT: &str = "bound6_port";

/// The two maps that publish one kind of port (see [`PORT_MAPS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortMaps {
    /// Map from the key to the container address.
    pub addr: &'static str,
    /// Map from the key to the container port.
    pub port: &'static str,
    /// IPv4 (true) or IPv6.
    pub ipv4: bool,
    /// Keyed by host address too (`bound*`), or published on every local address (`ports*`).
    pub bound: bool,
}

/// The four kinds of published port: every address or bound to one, IPv4 or IPv6.
pub const PORT_MAPS: [PortMaps; 4] = [
    PortMaps {
        addr: PORTS4_ADDR,
        port: PORTS4_PORT,
        ipv4: true,
        bound: false,
    },
    PortMaps {
        addr: BOUND4_ADDR,
        port: BOUND4_PORT,
        ipv4: true,
        bound: true,
    },
    PortMaps {
        addr: PORTS6_ADDR,
        port: PORTS6_PORT,
        ipv4: false,
        bound: false,
    },
    PortMaps {
        addr: BOUND6_ADDR,
        port: BOUND6_PORT,
        ipv4: false,
        bound: true,
    },
];

/// Every set and map of the table, in the order they are created and listed.
pub const SETS: [&str; 14] = [
    MASQ4,
    MASQ6,
    MASQ4_28,
    MASQ6_64,
    IFACES,
    ALLOWED_PAIRS,
    PORTS4_ADDR,
    PORTS4_PORT,
    BOUND4_ADDR,
    BOUND4_PORT,
    PORTS6_ADDR,
    PORTS6_PORT,
    BOUND6_ADDR,
    BOUND6_PORT,
];

/// Chain `prerouting_raw` (filter, hook prerouting, priority raw): keeps containers away from the
/// host's loopback, which `route_localnet=1` on our links would otherwise expose.
pub const PREROUTING_RAW: &str = "prerouting_raw";
/// Chain `prerouting` (nat, hook prerouting, priority dstnat): published ports, for traffic that
/// arrives from outside or from a container.
pub const PREROUTING: &str = "prerouting";
/// Chain `input` (filter, hook input, priority filter): what containers may send to the host.
pub const INPUT: &str = "input";
/// Chain `forward` (filter, hook forward, priority filter): what may be routed to, from and
/// between our links.
pub const FORWARD: &str = "forward";
/// Chain `output` (nat, hook output, priority dstnat): published ports, for traffic the host
/// itself sends (including to 127.0.0.1).
pub const OUTPUT: &str = "output";
/// Chain `postrouting` (nat, hook postrouting, priority srcnat): masquerade.
pub const POSTROUTING: &str = "postrouting";

/// Every chain of the table, in packet-path order (the order they are created and listed).
pub const CHAINS: [&str; 6] = [
    PREROUTING_RAW,
    PREROUTING,
    INPUT,
    FORWARD,
    OUTPUT,
    POSTROUTING,
];

/// Chain priority `raw` (-300): before conntrack and before NAT has rewritten anything.
pub const PRIO_RAW: i32 = -300;
/// Chain priority `dstnat` (-100).
pub const PRIO_DSTNAT: i32 = -100;
/// Chain priority `filter` (0).
pub const PRIO_FILTER: i32 = 0;
/// Chain priority `srcnat` (100).
pub const PRIO_SRCNAT: i32 = 100;

// The bridge table. An `inet` table never sees frames that a bridge forwards between two of its
// ports, so what a zone member may send to the other members is decided in a `bridge` table of
// the same name, created, listed, repaired and removed with `inet rnet`.

/// Family of our second table: `bridge` (frames entering a bridge from one of its ports).
pub const BRIDGE_FAMILY: NfFamily = NfFamily::Bridge;

/// Set `ports { type ifname }`: the `vb-*` ports of our containers (zones and admin bridges),
/// whose frames must carry the container's MAC address.
pub const PORTS: &str = "ports";
/// Set `port_macs { type ifname . ether_addr }`: each port with its container's MAC address.
pub const PORT_MACS: &str = "port_macs";
/// Set `zone_ports { type ifname }`: the ports whose IPv4 address we assign (zone members), held
/// to that address, with no DHCP server or router advertisement of their own.
pub const ZONE_PORTS: &str = "zone_ports";
/// Set `port_addrs { type ifname . ipv4_addr }`: each zone port with its container's address.
pub const PORT_ADDRS: &str = "port_addrs";

/// Every set of table `bridge rnet`, in the order they are created and listed.
pub const BRIDGE_SETS: [&str; 4] = [PORTS, PORT_MACS, ZONE_PORTS, PORT_ADDRS];

/// Chain `prerouting` of table `bridge rnet` (filter, hook prerouting, priority filter): every
/// frame that enters a bridge from a port, whether the bridge forwards it to another port or
/// delivers it to the host.
pub const BRIDGE_PREROUTING: &str = "prerouting";

/// Every chain of table `bridge rnet`.
pub const BRIDGE_CHAINS: [&str; 1] = [BRIDGE_PREROUTING];

/// Chain priority `filter` of the bridge family (-200).
pub const PRIO_BRIDGE_FILTER: i32 = -200;
