//! Floods stay within their link's bounds: OFFERs reserve nothing, the clients the daemon did
//! not record hold at most their share of the pool, quarantines are capped, and a container's
//! DHCP client keeps the container's address whatever client id it sends.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, MessageType};
use proptest::prelude::*;

use super::*;
use crate::{ClientId, DropReason, LeaseChange};

/// A /24 served from .1: 253 usable addresses, 127 for unrecorded clients, 63 quarantines.
fn zone() -> Server {
    server_with(LinkConfig::new(
        "10.9.0.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 9, 0, 1),
    ))
}

const ZONE_SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

/// The MAC of flooding client `n` (distinct for every `n`).
fn flood_mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x0e, 0x66, b[0], b[1], b[2], b[3]]
}

fn selecting(mac: [u8; 6], address: Ipv4Addr) -> Message {
    with(
        with(
            msg(MessageType::Request, mac),
            DhcpOption::ServerIdentifier(ZONE_SERVER),
        ),
        DhcpOption::RequestedIpAddress(address),
    )
}

fn decline(mac: [u8; 6], address: Ipv4Addr) -> Message {
    with(
        msg(MessageType::Decline, mac),
        DhcpOption::RequestedIpAddress(address),
    )
}

/// A DISCOVER-OFFER-REQUEST-ACK exchange; the ACKed address, if any.
fn dora(s: &mut Server, now: SystemTime, mac: [u8; 6]) -> Option<Ipv4Addr> {
    let h = send(s, now, &msg(MessageType::Discover, mac));
    let offered = h.replies.first().map(|_| reply(&h).yiaddr())?;
    let h = send(s, now, &selecting(mac, offered));
    (kind(&reply(&h)) == MessageType::Ack).then_some(offered)
}

/// dhcpcd's and networkd's kind of client id: type 255, IAID, DUID-LL.
fn duid_id(mac: [u8; 6]) -> DhcpOption {
    let mut id = vec![0xff, 0, 0, 0, 1, 0, 3, 0, 1];
    id.extend_from_slice(&mac);
    DhcpOption::ClientIdentifier(id)
}

#[test]
fn a_discover_flood_reserves_nothing() {
    let mut s = zone();
    for n in 0..5000 {
        let h = send(&mut s, at(0), &msg(MessageType::Discover, flood_mac(n)));
        assert_eq!(kind(&reply(&h)), MessageType::Offer);
        assert!(h.changes.is_empty());
    }
    assert_eq!(s.lease_count(LINK), 0);
    assert_eq!(s.counters().offers, 5000);
}

#[test]
fn unrecorded_clients_hold_at_most_their_share_and_containers_get_the_rest() {
    let mut s = zone();
    let limit = s.config(LINK).unwrap().foreign_lease_limit() as usize;
    assert_eq!(limit, 127);
    let taken = (0..1000)
        .filter_map(|n| dora(&mut s, at(0), flood_mac(n)))
        .count();
    assert_eq!(taken, limit);
    assert_eq!(s.lease_count(LINK), limit);
    assert_eq!(
        s.counters().dropped(DropReason::LeaseLimit),
        (1000 - limit) as u64
    );
    // A new client is refused at every step: no OFFER, a NAK for a SELECTING or INIT-REBOOT
    // REQUEST, nothing for a rapid-commit DISCOVER.
    let new = flood_mac(5000);
    let h = send(&mut s, at(1), &msg(MessageType::Discover, new));
    assert_eq!(h.dropped, Some(DropReason::LeaseLimit));
    assert!(h.replies.is_empty());
    let free = Ipv4Addr::new(10, 9, 0, 250);
    assert!(s.leases(LINK, at(1)).iter().all(|l| l.address != free));
    let h = send(&mut s, at(1), &selecting(new, free));
    assert_eq!(kind(&reply(&h)), MessageType::Nak);
    assert_eq!(h.dropped, Some(DropReason::LeaseLimit));
    let rapid = with(msg(MessageType::Discover, new), DhcpOption::RapidCommit);
    assert!(send(&mut s, at(1), &rapid).replies.is_empty());
    // The clients holding leases still renew them.
    let first = dora(&mut s, at(2), flood_mac(0));
    assert!(first.is_some());
    // Containers get the other 126 addresses.
    for n in 0..126u32 {
        let (address, lease) = s.assign(LINK, flood_mac(10_000 + n), at(3)).unwrap();
        assert!(lease.is_some_and(|l| l.container && l.address == address));
    }
    assert_eq!(s.lease_count(LINK), 253);
    assert_eq!(s.assign(LINK, flood_mac(20_000), at(3)), None);
    // A container already holding its address gets it again, nothing new to save.
    let again = s.assign(LINK, flood_mac(10_000), at(3)).unwrap();
    assert_eq!(again.1, None);
    // A released foreign lease makes room for one new client.
    s.release_lease(LINK, &ClientId::from_mac(flood_mac(0)));
    assert!(dora(&mut s, at(4), new).is_some());
}

#[test]
fn the_share_holds_after_a_restore_and_counts_only_unrecorded_leases() {
    let mut s = zone();
    for n in 0..127 {
        dora(&mut s, at(0), flood_mac(n)).unwrap();
    }
    let c = s.assign(LINK, mac(1), at(0)).unwrap().1.unwrap();
    // What the store gives back on a restart: the flags survive, so does the bound.
    let saved = s.leases(LINK, at(0));
    let mut t = zone();
    for l in saved {
        t.restore_lease(LINK, l, at(0)).unwrap();
    }
    assert_eq!(
        t.leases(LINK, at(0)).iter().filter(|l| l.container).count(),
        1
    );
    assert_eq!(dora(&mut t, at(1), flood_mac(999)), None);
    assert_eq!(t.assign(LINK, mac(1), at(1)).unwrap(), (c.address, None));
}

#[test]
fn quarantines_are_capped_the_first_to_end_goes_first_and_outside_the_pool_is_refused() {
    let mut s = zone();
    let limit = s.config(LINK).unwrap().quarantine_limit() as usize;
    assert_eq!(limit, 63);
    for n in 0..200u32 {
        let address = Ipv4Addr::new(10, 9, 0, 2 + (n % 250) as u8);
        let h = send(&mut s, at(u64::from(n)), &decline(flood_mac(n), address));
        let released = match &h.changes[..] {
            [LeaseChange::Declined { released, .. }] => *released,
            other => panic!("{other:?}"),
        };
        // Beyond the limit, the oldest quarantine (declined 63 steps before) is released.
        let expect = (n as usize >= limit).then(|| Ipv4Addr::new(10, 9, 0, 2 + (n - 63) as u8));
        assert_eq!(released, expect, "decline {n}");
    }
    let q = s.quarantined(LINK, at(200));
    assert_eq!(q.len(), limit);
    assert!(q.iter().all(|(a, _)| a.octets()[3] >= 2 + 200 - 63));
    // The network, broadcast and server addresses, and addresses outside the subnet, are not
    // quarantined.
    for a in [[10, 9, 0, 0], [10, 9, 0, 255], [10, 9, 0, 1], [10, 9, 1, 5]] {
        let h = send(&mut s, at(200), &decline(flood_mac(1), a.into()));
        assert!(h.changes.is_empty(), "{a:?}");
    }
    // Quarantines restored from the store obey the same limit.
    let mut t = zone();
    for n in 0..100u8 {
        assert!(t.restore_quarantine(LINK, Ipv4Addr::new(10, 9, 0, 2 + n), at(600)));
    }
    assert!(!t.restore_quarantine(LINK, ZONE_SERVER, at(600)));
    assert_eq!(t.quarantined(LINK, at(0)).len(), limit);
    // And they end.
    assert!(t.quarantined(LINK, at(600)).is_empty());
}

#[test]
fn a_container_client_with_a_duid_keeps_the_container_address() {
    let mut s = zone();
    let (address, _) = s.assign(LINK, mac(1), at(0)).unwrap();
    let own = ClientId::from_mac(mac(1));
    // DISCOVER with a DUID-based id from the container's MAC: offered the container's address.
    let discover = with(msg(MessageType::Discover, mac(1)), duid_id(mac(1)));
    assert_eq!(reply(&send(&mut s, at(1), &discover)).yiaddr(), address);
    let request = with(selecting(mac(1), address), duid_id(mac(1)));
    let h = send(&mut s, at(1), &request);
    assert_eq!(kind(&reply(&h)), MessageType::Ack);
    assert_eq!(reply(&h).yiaddr(), address);
    // Still one lease, under the container's id, still a container's.
    let leases = s.leases(LINK, at(1));
    assert_eq!(leases.len(), 1);
    assert_eq!((&leases[0].client_id, leases[0].container), (&own, true));
    // A container's address is the daemon's choice: its client cannot move it, with either id
    // (dhcpcd asks for the address of an old lease after a reboot).
    let other = Ipv4Addr::new(10, 9, 0, 200);
    for id in [
        duid_id(mac(1)),
        DhcpOption::ClientIdentifier(own.as_bytes().to_vec()),
    ] {
        let r = reply(&send(
            &mut s,
            at(2),
            &with(selecting(mac(1), other), id.clone()),
        ));
        assert_eq!(kind(&r), MessageType::Nak);
        let ask = with(
            with(msg(MessageType::Discover, mac(1)), id),
            DhcpOption::RequestedIpAddress(other),
        );
        assert_eq!(reply(&send(&mut s, at(2), &ask)).yiaddr(), address);
    }
    assert_eq!(s.leases(LINK, at(2))[0].address, address);
    // A type-1 id naming another MAC is another client, even from the container's chaddr.
    let mut s = zone();
    let (address, _) = s.assign(LINK, mac(1), at(0)).unwrap();
    let other_id = DhcpOption::ClientIdentifier(ClientId::from_mac(mac(2)).as_bytes().to_vec());
    let r = reply(&send(
        &mut s,
        at(1),
        &with(msg(MessageType::Discover, mac(1)), other_id),
    ));
    assert_ne!(r.yiaddr(), address);
    // A DUID from a MAC whose lease the daemon did not record is a client of its own.
    let foreign = dora(&mut s, at(1), mac(3)).unwrap();
    let discover = with(msg(MessageType::Discover, mac(3)), duid_id(mac(3)));
    let h = send(&mut s, at(1), &discover);
    assert_ne!(reply(&h).yiaddr(), foreign);
    // A DUID client that holds a lease of its own keeps it (the container's lease is not
    // taken over mid-lease).
    let mut s = zone();
    let discover = with(
        with(msg(MessageType::Discover, mac(4)), duid_id(mac(4))),
        DhcpOption::RapidCommit,
    );
    let mine = reply(&send(&mut s, at(0), &discover)).yiaddr();
    let (container, _) = s.assign(LINK, mac(4), at(0)).unwrap();
    assert_ne!(mine, container);
    assert_eq!(reply(&send(&mut s, at(1), &discover)).yiaddr(), mine);
}

/// One flooding action from client `mac`, on the /24 of [`zone`].
#[derive(Debug, Clone)]
enum Flood {
    Discover(u32),
    Dora(u32),
    Rapid(u32),
    Request(u32, u8),
    Decline(u32, u8),
    Wait(u64),
}

fn flood() -> impl Strategy<Value = Flood> {
    let c = 0u32..400;
    prop_oneof![
        1 => c.clone().prop_map(Flood::Discover),
        4 => c.clone().prop_map(Flood::Dora),
        1 => c.clone().prop_map(Flood::Rapid),
        1 => (c.clone(), any::<u8>()).prop_map(|(c, a)| Flood::Request(c, a)),
        3 => (c, any::<u8>()).prop_map(|(c, a)| Flood::Decline(c, a)),
        1 => (0u64..900).prop_map(Flood::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// After any flood, the unrecorded clients hold at most their share, at most the limit
    /// of addresses is quarantined, a container recorded before the flood still holds its
    /// address (and its DUID client gets it), and a container attached after it gets one.
    #[test]
    fn a_flood_leaves_room_for_containers(steps in proptest::collection::vec(flood(), 1..600)) {
        let mut s = zone();
        let cfg = s.config(LINK).unwrap().clone();
        let (before, _) = s.assign(LINK, mac(1), at(0)).unwrap();
        let mut now = 0;
        for st in steps {
            let a = |x: u8| Ipv4Addr::new(10, 9, 0, x);
            match st {
                Flood::Wait(secs) => {
                    // Within the container lease's 12 h.
                    now = (now + secs).min(11 * 3600);
                    s.expire(at(now));
                }
                Flood::Discover(c) => {
                    send(&mut s, at(now), &msg(MessageType::Discover, flood_mac(c)));
                }
                Flood::Dora(c) => {
                    dora(&mut s, at(now), flood_mac(c));
                }
                Flood::Rapid(c) => {
                    let m = with(msg(MessageType::Discover, flood_mac(c)), DhcpOption::RapidCommit);
                    send(&mut s, at(now), &m);
                }
                Flood::Request(c, x) => {
                    send(&mut s, at(now), &selecting(flood_mac(c), a(x)));
                }
                Flood::Decline(c, x) => {
                    send(&mut s, at(now), &decline(flood_mac(c), a(x)));
                }
            }
            let foreign = s.leases(LINK, at(now)).iter().filter(|l| !l.container).count();
            prop_assert!(foreign <= cfg.foreign_lease_limit() as usize);
            prop_assert!(s.quarantined(LINK, at(now)).len() <= cfg.quarantine_limit() as usize);
        }
        // The recorded container kept its address, and
        // its DHCP client gets it whatever id it sends.
        prop_assert_eq!(s.assign(LINK, mac(1), at(now)).unwrap(), (before, None));
        let discover = with(msg(MessageType::Discover, mac(1)), duid_id(mac(1)));
        prop_assert_eq!(reply(&send(&mut s, at(now), &discover)).yiaddr(), before);
        // A container attached now gets a free address, and its client gets it too.
        let (after, lease) = s.assign(LINK, mac(2), at(now)).unwrap();
        prop_assert!(lease.is_some());
        let h = send(&mut s, at(now), &msg(MessageType::Discover, mac(2)));
        prop_assert_eq!(reply(&h).yiaddr(), after);
    }
}
