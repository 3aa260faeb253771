//! The IPv4 networks in use on the host (addresses and routes of every table), kept up to date
//! from rtnetlink notifications so that an attach's pool check costs no dump
//! (`docs/architecture.md#address-pools`).
//!
//! [`InUse`] is the pure map: it applies `RTM_NEWADDR`/`RTM_DELADDR`/`RTM_NEWROUTE`/
//! `RTM_DELROUTE` (and `RTM_DELLINK`/link down, after which the kernel drops the IPv4 routes of
//! the link without a notification) and answers the networks in use. [`Watch`] is what the
//! daemon shares: the map, or "invalid" while it is being (re)built, in which case the caller
//! dumps instead. [`watch`] starts the task that follows the kernel: subscribe to
//! `RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR` and `RTNLGRP_IPV4_ROUTE` first, then dump, then apply
//! what arrived meanwhile and everything after; on a lost notification (`ENOBUFS`, the socket's
//! buffer overflowed) or a closed socket, mark invalid and start over.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::TryRecvError;
use futures::{StreamExt, TryStreamExt};
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_REPLACE, NetlinkMessage, NetlinkPayload};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};
use tracing::{info, warn};

use crate::rtnl::RtnlError;

/// An IPv4 address as the kernel tells it apart: link, local address, peer address, prefix.
type AddrKey = (u32, Ipv4Addr, Ipv4Addr, u8);

/// An IPv4 route as the kernel tells it apart: (table, destination, prefix, TOS, metric), plus
/// the type, output link and gateway so that routes appended to the same destination
/// (`ip route append`) stay apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RouteKey {
    table: u32,
    dst: Ipv4Addr,
    prefix: u8,
    tos: u8,
    metric: u32,
    kind: u8,
    /// The output link of a route with one next hop (none for multipath, nexthop objects,
    /// blackhole and the like).
    oif: Option<u32>,
    gateway: Option<Ipv4Addr>,
    /// Scope host (local addresses): kept when the link goes down.
    host_scope: bool,
}

impl RouteKey {
    /// The (table, destination, prefix, TOS, metric) a `NLM_F_REPLACE` replaces.
    fn slot(&self) -> (u32, Ipv4Addr, u8, u8, u32) {
        (self.table, self.dst, self.prefix, self.tos, self.metric)
    }
}

/// The IPv4 addresses and routes of the host, with the networks they cover.
#[derive(Debug, Default, Clone)]
pub struct InUse {
    addrs: HashMap<AddrKey, Vec<Ipv4Network>>,
    routes: HashMap<RouteKey, Ipv4Network>,
    /// Every covered network (normalized to its network address), how many addresses and
    /// routes cover it and the addresses among them.
    nets: BTreeMap<Ipv4Network, Covered>,
}

/// What covers one network.
#[derive(Debug, Default, Clone)]
struct Covered {
    /// Addresses and routes.
    count: u32,
    /// The addresses as added (`203.0.113.2/24`): the answer names the network by one of
    /// them, as a message about an overlap should.
    addrs: Vec<Ipv4Network>,
}

/// The network `a/prefix` covers, normalized (`192.168.0.1/28` → `192.168.0.0/28`).
fn normalized(a: Ipv4Addr, prefix: u8) -> Option<Ipv4Network> {
    let n = Ipv4Network::new(a, prefix).ok()?;
    Ipv4Network::new(n.network(), prefix).ok()
}

impl InUse {
    /// Counts `net`, an address as added when `addr`, else a route's network.
    fn count(&mut self, net: Ipv4Network, addr: bool) {
        let Some(key) = normalized(net.ip(), net.prefix()) else {
            return;
        };
        let c = self.nets.entry(key).or_default();
        c.count += 1;
        if addr {
            c.addrs.push(net);
        }
    }

    fn uncount(&mut self, net: Ipv4Network, addr: bool) {
        let Some(key) = normalized(net.ip(), net.prefix()) else {
            return;
        };
        if let Some(c) = self.nets.get_mut(&key) {
            c.count -= 1;
            if addr && let Some(i) = c.addrs.iter().position(|a| *a == net) {
                c.addrs.swap_remove(i);
            }
            if c.count == 0 {
                self.nets.remove(&key);
            }
        }
    }

    /// Applies one message of the kernel's (a dump's answer or a notification); `replace` is
    /// the `NLM_F_REPLACE` flag of its header. Messages of other kinds or families are ignored.
    pub fn apply(&mut self, msg: &RouteNetlinkMessage, replace: bool) {
        match msg {
            RouteNetlinkMessage::NewAddress(m) => {
                if let Some((key, nets)) = addr_entry(m) {
                    self.del_addr(&key);
                    for &n in &nets {
                        self.count(n, true);
                    }
                    self.addrs.insert(key, nets);
                }
            }
            RouteNetlinkMessage::DelAddress(m) => {
                if let Some((key, _)) = addr_entry(m) {
                    self.del_addr(&key);
                }
            }
            RouteNetlinkMessage::NewRoute(m) => {
                if let Some((key, net)) = route_entry(m) {
                    if replace {
                        let slot = key.slot();
                        let old: Vec<RouteKey> = self
                            .routes
                            .keys()
                            .filter(|k| k.slot() == slot)
                            .copied()
                            .collect();
                        for k in old {
                            self.del_route(&k);
                        }
                    }
                    self.del_route(&key);
                    self.count(net, false);
                    self.routes.insert(key, net);
                }
            }
            RouteNetlinkMessage::DelRoute(m) => {
                if let Some((key, _)) = route_entry(m) {
                    self.del_route(&key);
                }
            }
            RouteNetlinkMessage::DelLink(m) => self.link_gone(m.header.index, true),
            RouteNetlinkMessage::NewLink(m) if !is_up(m) => self.link_gone(m.header.index, false),
            _ => {}
        }
    }

    fn del_addr(&mut self, key: &AddrKey) {
        if let Some(nets) = self.addrs.remove(key) {
            for n in nets {
                self.uncount(n, true);
            }
        }
    }

    fn del_route(&mut self, key: &RouteKey) {
        if let Some(n) = self.routes.remove(key) {
            self.uncount(n, false);
        }
    }

    /// A link went down (`deleted`: away): the kernel flushes the IPv4 routes whose only next
    /// hop is on it without sending `RTM_DELROUTE` (fib_disable_ip → fib_sync_down_dev +
    /// fib_flush in Linux's net/ipv4/fib_frontend.c and fib_semantics.c), but for the routes of
    /// scope host while the link is only down; a deleted link's addresses go too (their
    /// `RTM_DELADDR` come as well, this only makes sure).
    fn link_gone(&mut self, index: u32, deleted: bool) {
        let routes: Vec<RouteKey> = self
            .routes
            .keys()
            .filter(|k| k.oif == Some(index) && (deleted || !k.host_scope))
            .copied()
            .collect();
        for k in routes {
            self.del_route(&k);
        }
        if deleted {
            let addrs: Vec<AddrKey> = self
                .addrs
                .keys()
                .filter(|k| k.0 == index)
                .copied()
                .collect();
            for k in addrs {
                self.del_addr(&k);
            }
        }
    }

    /// The networks in use, each once, leaving out those inside another one listed (a link's
    /// `/28` covers its address's local and broadcast `/32` routes): what overlaps a left-out
    /// network overlaps the one covering it. A `/0` is left out, as the pool ignores it (it
    /// must not hide the rest). O(networks), no allocation but the answer's.
    pub fn networks(&self) -> Vec<Ipv4Network> {
        let mut out: Vec<Ipv4Network> = Vec::new();
        // Ordered by network address, then by prefix (wider first): a covered network comes
        // after its cover and before anything past the cover's end.
        let mut cover_end: Option<u32> = None;
        for (&net, covered) in self.nets.iter().filter(|(n, _)| n.prefix() > 0) {
            let start = u32::from(net.network());
            let end = u32::from(net.broadcast());
            match cover_end {
                Some(e) if start <= e && end <= e => continue,
                _ => {}
            }
            cover_end = Some(cover_end.map_or(end, |e| e.max(end)));
            out.push(covered.addrs.first().copied().unwrap_or(net));
        }
        out
    }

    /// How many addresses and routes are known (for the log).
    pub fn len(&self) -> (usize, usize) {
        (self.addrs.len(), self.routes.len())
    }
}

/// Whether the link is administratively up.
fn is_up(m: &LinkMessage) -> bool {
    m.header.flags.contains(LinkFlags::Up)
}

/// An IPv4 address's key and the networks it covers (local and peer address with the prefix,
/// as added).
fn addr_entry(m: &AddressMessage) -> Option<(AddrKey, Vec<Ipv4Network>)> {
    if m.header.family != AddressFamily::Inet {
        return None;
    }
    let prefix = m.header.prefix_len;
    let (mut local, mut peer) = (None, None);
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => peer = Some(*a),
            _ => {}
        }
    }
    let (local, peer) = match (local, peer) {
        (None, None) => return None,
        (l, p) => (l.or(p)?, p.or(l)?),
    };
    let mut nets: Vec<Ipv4Network> = [local, peer]
        .into_iter()
        .filter_map(|a| Ipv4Network::new(a, prefix).ok())
        .collect();
    nets.dedup();
    Some(((m.header.index, local, peer, prefix), nets))
}

/// An IPv4 route's key and the network it covers; `None` for other families and for routes
/// without a destination (default routes, which the pool ignores).
fn route_entry(m: &RouteMessage) -> Option<(RouteKey, Ipv4Network)> {
    if m.header.address_family != AddressFamily::Inet {
        return None;
    }
    let prefix = m.header.destination_prefix_length;
    let mut table = u32::from(m.header.table);
    let (mut dst, mut metric, mut oif, mut gateway) = (None, 0, None, None);
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            _ => {}
        }
    }
    let dst = dst?;
    let net = normalized(dst, prefix)?;
    let key = RouteKey {
        table,
        dst,
        prefix,
        tos: m.header.tos,
        metric,
        kind: u8::from(m.header.kind),
        oif,
        gateway,
        host_scope: m.header.scope == RouteScope::Host,
    };
    Some((key, net))
}

/// Fills `map` from a dump of the IPv4 addresses and the IPv4 routes of every table (`ip -4
/// addr; ip -4 route show table all`).
pub async fn dump(handle: &Handle, map: &mut InUse) -> Result<(), RtnlError> {
    let mut req = handle.address().get();
    // Only IPv4: without the family the kernel sends every IPv6 address too.
    req.message_mut().header.family = AddressFamily::Inet;
    let mut addrs = req.execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|e| RtnlError::new("listing", "addresses", &e))?
    {
        map.apply(&RouteNetlinkMessage::NewAddress(msg), false);
    }
    let filter = RouteMessageBuilder::<Ipv4Addr>::new().table_id(0).build();
    let mut routes = handle.route().get(filter).execute();
    while let Some(msg) = routes
        .try_next()
        .await
        .map_err(|e| RtnlError::new("listing", "routes", &e))?
    {
        map.apply(&RouteNetlinkMessage::NewRoute(msg), false);
    }
    Ok(())
}

/// The map of what is in use, shared between the task following the kernel and the attaches
/// reading it.
#[derive(Debug, Default)]
pub struct Watch {
    state: Mutex<Option<InUse>>,
}

impl Watch {
    /// The networks in use, or `None` while the map is not known to be complete (before the
    /// first dump, after a lost notification): the caller dumps then.
    pub fn networks(&self) -> Option<Vec<Ipv4Network>> {
        self.lock().as_ref().map(InUse::networks)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<InUse>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, map: InUse) {
        *self.lock() = Some(map);
    }

    fn invalidate(&self) {
        *self.lock() = None;
    }

    fn apply(&self, msg: &RouteNetlinkMessage, replace: bool) {
        if let Some(map) = self.lock().as_mut() {
            map.apply(msg, replace);
        }
    }
}

/// The receive buffer asked for the notification socket (as root, past `rmem_max`): room for
/// the notifications of a burst of link changes while the connection's task is not scheduled.
const RCVBUF: libc::c_int = 4 << 20;

/// Starts following the kernel's IPv4 addresses and routes on the current tokio runtime, in
/// the current network namespace; the map is valid once the first dump is in.
pub fn watch() -> Arc<Watch> {
    let w = Arc::new(Watch::default());
    tokio::spawn(follow_forever(Arc::clone(&w)));
    w
}

/// Why following stopped.
#[derive(Debug)]
enum Stop {
    /// The socket's buffer overflowed: notifications were lost.
    Overrun,
    /// The connection ended.
    Closed,
}

async fn follow_forever(w: Arc<Watch>) {
    loop {
        let stop = follow(&w).await;
        w.invalidate();
        match stop {
            Ok(Stop::Overrun) => {
                warn!("address/route notifications lost (socket buffer full); dumping again");
                continue;
            }
            Ok(Stop::Closed) => warn!("address/route notification socket closed; reopening"),
            Err(e) => warn!(error = %e, "following addresses and routes failed; retrying"),
        }
        // Until then every attach dumps (the cache is invalid).
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Aborts the connection's task when following stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Subscribes, dumps, publishes, then applies notifications until one is lost.
async fn follow(w: &Watch) -> Result<Stop, RtnlError> {
    let io_err = |e: std::io::Error| RtnlError {
        step: "subscribing to",
        object: "address and route notifications".into(),
        errno: e.raw_os_error(),
        reason: e.to_string(),
    };
    // Subscribed before the dump: a change during or after the dump is in the queue.
    let (mut conn, handle, mut rx) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
    ])
    .map_err(io_err)?;
    let sock = conn.socket_mut().socket_mut();
    let fd = sock.as_raw_fd();
    let size = RCVBUF;
    // SAFETY: setsockopt on a socket we own with a pointer to a c_int of the given size.
    let forced = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        let _ = sock.set_rx_buf_sz(RCVBUF as usize);
    }
    let _conn = AbortOnDrop(tokio::spawn(conn));
    let mut map = InUse::default();
    dump(&handle, &mut map).await?;
    // What changed during the dump: applied on top of it, in order (each message sets or
    // clears one address or route, so the last one for each wins, as in the kernel).
    loop {
        match rx.try_recv() {
            Ok((msg, _)) => {
                if let Some(stop) = apply_to(&mut map, &msg) {
                    return Ok(stop);
                }
            }
            Err(TryRecvError::Closed) => return Ok(Stop::Closed),
            Err(TryRecvError::Empty) => break,
        }
    }
    let (addrs, routes) = map.len();
    info!(
        addrs,
        routes, "following the host's IPv4 addresses and routes"
    );
    w.publish(map);
    while let Some((msg, _)) = rx.next().await {
        match &msg.payload {
            NetlinkPayload::Overrun(_) => return Ok(Stop::Overrun),
            NetlinkPayload::InnerMessage(m) => {
                w.apply(m, msg.header.flags & NLM_F_REPLACE != 0);
            }
            _ => {}
        }
    }
    Ok(Stop::Closed)
}

/// Applies a notification to a map being built; `Some` when it says notifications were lost.
fn apply_to(map: &mut InUse, msg: &NetlinkMessage<RouteNetlinkMessage>) -> Option<Stop> {
    match &msg.payload {
        NetlinkPayload::Overrun(_) => Some(Stop::Overrun),
        NetlinkPayload::InnerMessage(m) => {
            map.apply(m, msg.header.flags & NLM_F_REPLACE != 0);
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::route::{RouteHeader, RouteType};

    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn addr(index: u32, a: &str, prefix: u8) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.index = index;
        m.header.prefix_len = prefix;
        let a: Ipv4Addr = a.parse().unwrap();
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(a)));
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(a)));
        m
    }

    fn route(table: u32, dst: &str, prefix: u8, oif: Option<u32>) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Table(table));
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                dst.parse().unwrap(),
            )));
        if let Some(i) = oif {
            m.attributes.push(RouteAttribute::Oif(i));
        }
        m
    }

    fn link(index: u32, up: bool) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        m
    }

    use RouteNetlinkMessage::{DelAddress, DelLink, DelRoute, NewAddress, NewLink, NewRoute};

    #[test]
    fn addresses_come_and_go() {
        let mut m = InUse::default();
        m.apply(&NewAddress(addr(7, "10.1.2.3", 24)), false);
        assert_eq!(m.networks(), [net("10.1.2.3/24")]);
        // The same address again (a dump's answer after its notification) counts once.
        m.apply(&NewAddress(addr(7, "10.1.2.3", 24)), false);
        m.apply(&DelAddress(addr(7, "10.1.2.3", 24)), false);
        assert_eq!(m.networks(), []);
        // Deleting what is not there is nothing.
        m.apply(&DelAddress(addr(7, "10.1.2.3", 24)), false);
        assert_eq!(m.len(), (0, 0));
    }

    #[test]
    fn an_address_and_its_prefix_route_are_one_network_until_both_go() {
        let mut m = InUse::default();
        m.apply(&NewAddress(addr(7, "192.168.0.1", 28)), false);
        m.apply(&NewRoute(route(254, "192.168.0.0", 28, Some(7))), false);
        m.apply(&NewRoute(route(255, "192.168.0.1", 32, Some(7))), false);
        m.apply(&NewRoute(route(255, "192.168.0.15", 32, Some(7))), false);
        assert_eq!(m.networks(), [net("192.168.0.1/28")]);
        m.apply(&DelAddress(addr(7, "192.168.0.1", 28)), false);
        assert_eq!(m.networks(), [net("192.168.0.0/28")]);
        m.apply(&DelRoute(route(254, "192.168.0.0", 28, Some(7))), false);
        assert_eq!(
            m.networks(),
            [net("192.168.0.1/32"), net("192.168.0.15/32")]
        );
    }

    #[test]
    fn routes_are_told_apart_by_table_and_link() {
        let mut m = InUse::default();
        m.apply(&NewRoute(route(254, "10.9.0.0", 16, Some(3))), false);
        m.apply(&NewRoute(route(100, "10.9.0.0", 16, Some(3))), false);
        m.apply(&NewRoute(route(254, "10.9.0.0", 16, Some(4))), false);
        m.apply(&DelRoute(route(254, "10.9.0.0", 16, Some(3))), false);
        m.apply(&DelRoute(route(100, "10.9.0.0", 16, Some(3))), false);
        assert_eq!(m.networks(), [net("10.9.0.0/16")]);
        m.apply(&DelRoute(route(254, "10.9.0.0", 16, Some(4))), false);
        assert_eq!(m.networks(), []);
    }

    #[test]
    fn a_replace_drops_the_route_it_replaces() {
        let mut m = InUse::default();
        m.apply(&NewRoute(route(254, "10.9.0.0", 16, Some(3))), false);
        m.apply(&NewRoute(route(254, "10.9.0.0", 16, Some(4))), true);
        assert_eq!(m.len(), (0, 1));
        m.apply(&DelRoute(route(254, "10.9.0.0", 16, Some(4))), false);
        assert_eq!(m.networks(), []);
    }

    #[test]
    fn a_link_going_down_or_away_takes_its_routes_silently() {
        let mut m = InUse::default();
        m.apply(&NewAddress(addr(5, "172.16.0.1", 24)), false);
        m.apply(&NewRoute(route(254, "172.16.0.0", 24, Some(5))), false);
        m.apply(&NewRoute(route(254, "10.50.0.0", 16, Some(5))), false);
        m.apply(&NewRoute(route(254, "10.60.0.0", 16, Some(6))), false);
        m.apply(&NewRoute(route(254, "10.70.0.0", 16, None)), false);
        let mut local = route(255, "10.80.0.0", 16, Some(5));
        local.header.scope = RouteScope::Host;
        m.apply(&NewRoute(local), false);
        // Up: nothing changes.
        m.apply(&NewLink(link(5, true)), false);
        assert_eq!(m.len(), (1, 5));
        // Down: its routes go but those of scope host, its address stays.
        m.apply(&NewLink(link(5, false)), false);
        assert_eq!(
            m.networks(),
            [
                net("10.60.0.0/16"),
                net("10.70.0.0/16"),
                net("10.80.0.0/16"),
                net("172.16.0.1/24")
            ]
        );
        // Away: its address goes too; routes of other links or of none stay.
        m.apply(&DelLink(link(6, false)), false);
        m.apply(&DelLink(link(5, false)), false);
        assert_eq!(m.networks(), [net("10.70.0.0/16")]);
    }

    #[test]
    fn other_families_and_default_routes_are_ignored() {
        let mut m = InUse::default();
        let mut a6 = addr(7, "10.0.0.1", 24);
        a6.header.family = AddressFamily::Inet6;
        m.apply(&NewAddress(a6), false);
        let mut default = route(254, "0.0.0.0", 0, Some(2));
        default
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Destination(_)));
        m.apply(&NewRoute(default), false);
        assert_eq!(m.len(), (0, 0));
    }

    #[test]
    fn covered_networks_are_left_out_but_overlaps_are_kept() {
        let mut m = InUse::default();
        for (i, (a, p)) in [
            ("10.0.0.0", 8),
            ("10.1.0.0", 16),
            ("10.200.3.4", 32),
            ("11.0.0.0", 8),
            ("172.16.0.0", 12),
            ("172.31.255.255", 32),
            ("192.168.0.0", 24),
            ("192.168.0.128", 25),
            ("192.168.1.0", 24),
        ]
        .into_iter()
        .enumerate()
        {
            m.apply(&NewAddress(addr(i as u32 + 1, a, p)), false);
        }
        assert_eq!(
            m.networks(),
            [
                net("10.0.0.0/8"),
                net("11.0.0.0/8"),
                net("172.16.0.0/12"),
                net("192.168.0.0/24"),
                net("192.168.1.0/24")
            ]
        );
    }

    #[test]
    fn an_overrun_stops_the_build() {
        let mut m = InUse::default();
        let lost = NetlinkMessage::new(Default::default(), NetlinkPayload::Overrun(Vec::new()));
        assert!(matches!(apply_to(&mut m, &lost), Some(Stop::Overrun)));
        let new = NetlinkMessage::from(NewAddress(addr(1, "10.0.0.1", 8)));
        assert!(apply_to(&mut m, &new).is_none());
        assert_eq!(m.networks(), [net("10.0.0.1/8")]);
    }

    #[test]
    fn an_invalid_watch_answers_none_and_a_published_one_follows() {
        let w = Watch::default();
        assert_eq!(w.networks(), None);
        w.apply(&NewAddress(addr(1, "10.0.0.1", 8)), false);
        assert_eq!(w.networks(), None);
        w.publish(InUse::default());
        w.apply(&NewAddress(addr(1, "10.0.0.1", 8)), false);
        assert_eq!(w.networks(), Some(vec![net("10.0.0.1/8")]));
        w.invalidate();
        assert_eq!(w.networks(), None);
    }

    proptest::proptest! {
        /// Left-out networks never change the answer to "does this candidate overlap anything?".
        #[test]
        fn leaving_out_covered_networks_keeps_every_overlap(
            nets in proptest::collection::vec((proptest::prelude::any::<u32>(), 0u8..=32), 0..30),
            cands in proptest::collection::vec((proptest::prelude::any::<u32>(), 8u8..=32), 1..30),
        ) {
            let mut m = InUse::default();
            let mut all = Vec::new();
            for (i, (a, p)) in nets.into_iter().enumerate() {
                let a = Ipv4Addr::from(a);
                m.apply(&NewAddress(addr(i as u32, &a.to_string(), p)), false);
                all.push(normalized(a, p).unwrap());
            }
            let kept = m.networks();
            for (a, p) in cands {
                let c = normalized(Ipv4Addr::from(a), p).unwrap();
                let full = all.iter().any(|n| n.prefix() > 0 && crate::pool::overlaps(*n, c));
                let short = kept.iter().any(|n| crate::pool::overlaps(*n, c));
                proptest::prop_assert_eq!(full, short, "{}", c);
            }
        }
    }
}
