//! REQUEST in each client state, RELEASE, DECLINE, INFORM, static leases, pool exhaustion,
//! expiry and leases recorded by the daemon.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, MessageType, OptionCode};

use super::*;
use crate::{ClientId, Destination, DropReason, Lease, LeaseChange, LeaseError, StaticLease};

fn selecting(mac: [u8; 6], server: Ipv4Addr, address: Ipv4Addr) -> Message {
    with(
        with(
            msg(MessageType::Request, mac),
            DhcpOption::ServerIdentifier(server),
        ),
        DhcpOption::RequestedIpAddress(address),
    )
}

fn init_reboot(mac: [u8; 6], address: Ipv4Addr) -> Message {
    with(
        msg(MessageType::Request, mac),
        DhcpOption::RequestedIpAddress(address),
    )
}

fn renewing(mac: [u8; 6], ciaddr: Ipv4Addr) -> Message {
    let mut m = msg(MessageType::Request, mac);
    m.set_ciaddr(ciaddr);
    m
}

#[test]
fn selecting_request_for_the_offer_is_acked() {
    let mut s = server();
    let offered = reply(&send(&mut s, at(0), &msg(MessageType::Discover, mac(1)))).yiaddr();
    let h = send(&mut s, at(1), &selecting(mac(1), SERVER, offered));
    let r = reply(&h);
    assert_eq!(kind(&r), MessageType::Ack);
    assert_eq!(r.yiaddr(), offered);
    assert_eq!(r.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(lease_time(&r), Some(3600));
    assert_eq!(
        h.destination(),
        Destination::Hardware {
            mac: mac(1),
            ip: offered
        }
    );
    let lease = &s.leases(LINK, at(1))[0];
    assert_eq!((lease.address, lease.expires), (offered, at(3601)));
    assert_eq!(lease.hwaddr, Some(mac(1)));
    assert_eq!(s.counters().acks, 1);
}

#[test]
fn selecting_another_server_is_ignored_silently() {
    let mut s = server();
    let h = send(
        &mut s,
        at(0),
        &selecting(mac(1), Ipv4Addr::new(192, 168, 10, 18), ip(20)),
    );
    assert!(h.replies.is_empty());
    assert_eq!(h.dropped, Some(DropReason::OtherServer));
    assert_eq!(s.counters().dropped(DropReason::OtherServer), 1);
    assert!(s.leases(LINK, at(0)).is_empty());
}

#[test]
fn selecting_a_taken_address_is_nakked() {
    let mut s = server();
    let a = bind(&mut s, at(0), mac(1));
    let h = send(&mut s, at(1), &selecting(mac(2), SERVER, a));
    let r = reply(&h);
    assert_eq!(kind(&r), MessageType::Nak);
    assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(!r.opts().contains(OptionCode::AddressLeaseTime));
    assert_eq!(h.destination(), Destination::Broadcast);
    assert_eq!(h.dropped, Some(DropReason::AddressUnavailable));
    assert_eq!(s.counters().naks, 1);
    // SELECTING with ciaddr set is malformed: dropped.
    let mut m = selecting(mac(2), SERVER, ip(20));
    m.set_ciaddr(ip(20));
    assert_eq!(
        send(&mut s, at(1), &m).dropped,
        Some(DropReason::BadRequest)
    );
}

#[test]
fn init_reboot_acks_the_clients_address_and_naks_a_wrong_one() {
    let mut s = server();
    let a = bind(&mut s, at(0), mac(1));
    let r = reply(&send(&mut s, at(10), &init_reboot(mac(1), a)));
    assert_eq!((kind(&r), r.yiaddr()), (MessageType::Ack, a));
    assert_eq!(s.leases(LINK, at(10))[0].expires, at(3610));

    // Another network: NAK, broadcast, counted.
    let h = send(
        &mut s,
        at(10),
        &init_reboot(mac(2), Ipv4Addr::new(10, 1, 2, 3)),
    );
    assert_eq!(kind(&reply(&h)), MessageType::Nak);
    assert_eq!(h.destination(), Destination::Broadcast);
    assert_eq!(s.counters().dropped(DropReason::OutsideSubnet), 1);
    // Another client's address: NAK.
    let h = send(&mut s, at(10), &init_reboot(mac(2), a));
    assert_eq!(kind(&reply(&h)), MessageType::Nak);
    // The server's own address and broadcast: NAK.
    for bad in [SERVER, ip(31)] {
        assert_eq!(
            kind(&reply(&send(&mut s, at(10), &init_reboot(mac(2), bad)))),
            MessageType::Nak
        );
    }
    assert_eq!(s.counters().naks, 4);
    // A free pool address for a client we have no record of (e.g. leases lost): ACKed, as
    // systemd does.
    let r = reply(&send(&mut s, at(10), &init_reboot(mac(3), ip(29))));
    assert_eq!((kind(&r), r.yiaddr()), (MessageType::Ack, ip(29)));
}

#[test]
fn renewing_extends_the_lease_by_unicast() {
    let mut s = server();
    let a = bind(&mut s, at(0), mac(1));
    let h = send(&mut s, at(1800), &renewing(mac(1), a));
    let r = reply(&h);
    assert_eq!((kind(&r), r.yiaddr(), r.ciaddr()), (MessageType::Ack, a, a));
    assert_eq!(h.destination(), Destination::Unicast(a));
    assert_eq!(s.leases(LINK, at(1800))[0].expires, at(5400));
    assert_eq!(s.poll_timeout(), Some(at(5400)));
}

#[test]
fn rebinding_is_acked_and_a_foreign_address_is_ignored() {
    let mut s = server();
    let a = bind(&mut s, at(0), mac(1));
    let b = bind(&mut s, at(0), mac(2));
    // REBINDING is a broadcast with ciaddr set; the answer still goes to ciaddr.
    let mut m = renewing(mac(1), a);
    m.set_flags(Flags::default().set_broadcast());
    let h = send(&mut s, at(3200), &m);
    assert_eq!(kind(&reply(&h)), MessageType::Ack);
    assert_eq!(h.destination(), Destination::Unicast(a));
    // Renewing someone else's address: silence (NAKs only in INIT-REBOOT and SELECTING).
    let h = send(&mut s, at(3200), &renewing(mac(1), b));
    assert!(h.replies.is_empty());
    assert_eq!(h.dropped, Some(DropReason::AddressUnavailable));
    // Neither ciaddr nor an address: malformed.
    let h = send(&mut s, at(3200), &msg(MessageType::Request, mac(1)));
    assert_eq!(h.dropped, Some(DropReason::BadRequest));
}

#[test]
fn release_frees_the_address() {
    let mut s = server();
    let a = bind(&mut s, at(0), mac(1));
    // Wrong address: nothing happens.
    let h = send(
        &mut s,
        at(5),
        &renewing(mac(1), ip(30)).tap_kind(MessageType::Release),
    );
    assert_eq!(h.dropped, Some(DropReason::NoLease));
    assert_eq!(s.leases(LINK, at(5)).len(), 1);

    let h = send(
        &mut s,
        at(5),
        &renewing(mac(1), a).tap_kind(MessageType::Release),
    );
    assert!(h.replies.is_empty());
    assert!(matches!(&h.changes[..], [LeaseChange::Released(l)] if l.address == a));
    assert!(s.leases(LINK, at(5)).is_empty());
    assert_eq!(s.counters().releases, 1);
    // The address can go to someone else now.
    let r = reply(&send(&mut s, at(6), &init_reboot(mac(2), a)));
    assert_eq!(kind(&r), MessageType::Ack);
}

#[test]
fn decline_quarantines_the_address_until_it_expires() {
    let mut s = server();
    let a = bind(&mut s, at(0), mac(1));
    let decline = with(
        msg(MessageType::Decline, mac(1)),
        DhcpOption::RequestedIpAddress(a),
    );
    let decline = with(decline, DhcpOption::ServerIdentifier(SERVER));
    let h = send(&mut s, at(1), &decline);
    assert!(h.replies.is_empty());
    assert!(
        matches!(&h.changes[..], [LeaseChange::Declined { address, lease: Some(l), .. }]
        if *address == a && l.address == a)
    );
    assert!(s.leases(LINK, at(1)).is_empty());
    assert_eq!(s.counters().declines, 1);

    // A client whose hash lands on the declined address is offered another one meanwhile.
    let other = mac_hashing_to(a, mac(1));
    let r = reply(&send(&mut s, at(2), &msg(MessageType::Discover, other)));
    assert_ne!(r.yiaddr(), a);
    // Asking for it explicitly does not help either.
    let ask = with(
        msg(MessageType::Discover, other),
        DhcpOption::RequestedIpAddress(a),
    );
    assert_ne!(reply(&send(&mut s, at(2), &ask)).yiaddr(), a);
    assert_eq!(
        kind(&reply(&send(&mut s, at(2), &init_reboot(other, a)))),
        MessageType::Nak
    );
    assert_eq!(s.poll_timeout(), Some(at(601)));

    // 10 minutes later it is back in the pool.
    assert!(s.expire(at(601)).is_empty());
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(
        reply(&send(&mut s, at(601), &msg(MessageType::Discover, other))).yiaddr(),
        a
    );
}

#[test]
fn decline_cannot_evict_another_client() {
    let mut s = server();
    let a = bind(&mut s, at(0), mac(1));
    let decline = with(
        msg(MessageType::Decline, mac(2)),
        DhcpOption::RequestedIpAddress(a),
    );
    let h = send(&mut s, at(1), &decline);
    assert_eq!(h.dropped, Some(DropReason::AddressUnavailable));
    assert_eq!(s.leases(LINK, at(1)).len(), 1);
    let h = send(&mut s, at(1), &msg(MessageType::Decline, mac(2)));
    assert_eq!(h.dropped, Some(DropReason::BadRequest));
    let h = send(
        &mut s,
        at(1),
        &with(
            msg(MessageType::Decline, mac(2)),
            DhcpOption::ServerIdentifier(ip(20)),
        ),
    );
    assert_eq!(h.dropped, Some(DropReason::OtherServer));
}

#[test]
fn inform_gets_configuration_without_a_lease() {
    let mut cfg = config();
    cfg.dns = vec![Ipv4Addr::new(9, 9, 9, 9)];
    let mut s = server_with(cfg);
    let mut m = with(
        msg(MessageType::Inform, mac(1)),
        DhcpOption::ParameterRequestList(vec![OptionCode::DomainNameServer]),
    );
    m.set_ciaddr(ip(25));
    let h = send(&mut s, at(0), &m);
    let r = reply(&h);
    assert_eq!(kind(&r), MessageType::Ack);
    assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.ciaddr(), ip(25));
    assert_eq!(h.destination(), Destination::Unicast(ip(25)));
    for absent in [
        OptionCode::AddressLeaseTime,
        OptionCode::Renewal,
        OptionCode::Rebinding,
    ] {
        assert!(!r.opts().contains(absent), "{absent:?}");
    }
    assert!(r.opts().contains(OptionCode::DomainNameServer));
    assert!(r.opts().contains(OptionCode::SubnetMask));
    assert!(s.leases(LINK, at(0)).is_empty());
    assert!(h.changes.is_empty());

    let h = send(&mut s, at(0), &msg(MessageType::Inform, mac(1)));
    assert_eq!(h.dropped, Some(DropReason::BadRequest));
    let mut m = msg(MessageType::Inform, mac(1));
    m.set_ciaddr(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(
        send(&mut s, at(0), &m).dropped,
        Some(DropReason::OutsideSubnet)
    );
}

#[test]
fn a_28_serves_13_clients_then_the_pool_is_exhausted() {
    // No share kept for containers: the whole pool goes to DHCP clients.
    let mut cfg = config();
    cfg.container_reserve_permille = 0;
    let mut s = server_with(cfg);
    let mut got: Vec<Ipv4Addr> = (1..=13).map(|n| bind(&mut s, at(0), mac(n))).collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 13);
    assert!(
        got.iter()
            .all(|&a| subnet().contains(a) && a != SERVER && a != ip(16) && a != ip(31))
    );

    let h = send(&mut s, at(0), &msg(MessageType::Discover, mac(14)));
    assert!(h.replies.is_empty());
    assert_eq!(h.dropped, Some(DropReason::PoolExhausted));
    assert_eq!(s.counters().dropped(DropReason::PoolExhausted), 1);
    // Once a lease expires there is room again.
    assert_eq!(s.expire(at(3600)).len(), 13);
    assert_eq!(
        kind(&reply(&send(
            &mut s,
            at(3600),
            &msg(MessageType::Discover, mac(14))
        ))),
        MessageType::Offer
    );
}

#[test]
fn static_lease_is_reserved_for_its_client() {
    let mut cfg = config();
    cfg.static_leases = vec![StaticLease::mac(mac(1), ip(30))];
    cfg.container_reserve_permille = 0;
    let mut s = server_with(cfg);
    assert_eq!(
        reply(&send(&mut s, at(0), &msg(MessageType::Discover, mac(1)))).yiaddr(),
        ip(30)
    );
    // The client cannot have another address...
    let r = reply(&send(&mut s, at(0), &init_reboot(mac(1), ip(20))));
    assert_eq!(kind(&r), MessageType::Nak);
    // ...and nobody else can have this one.
    let r = reply(&send(&mut s, at(0), &init_reboot(mac(2), ip(30))));
    assert_eq!(kind(&r), MessageType::Nak);
    let ask = with(
        msg(MessageType::Discover, mac(2)),
        DhcpOption::RequestedIpAddress(ip(30)),
    );
    assert_ne!(reply(&send(&mut s, at(0), &ask)).yiaddr(), ip(30));
    assert_eq!(bind(&mut s, at(0), mac(1)), ip(30));
    // The other 12 pool addresses (14 minus server minus static) go to other clients.
    for n in 2..=13 {
        assert_ne!(bind(&mut s, at(0), mac(n)), ip(30));
    }
    assert_eq!(
        send(&mut s, at(0), &msg(MessageType::Discover, mac(14))).dropped,
        Some(DropReason::PoolExhausted)
    );
}

#[test]
fn making_a_bound_address_static_moves_it_to_its_owner() {
    let mut s = server();
    let a = bind(&mut s, at(0), mac(2));
    let mut cfg = config();
    cfg.static_leases = vec![StaticLease::mac(mac(1), a)];
    // Reconfiguring keeps the leases still valid: mac(2)'s is not, `a` is now static.
    s.add_link(LINK, cfg).unwrap();
    assert!(s.leases(LINK, at(0)).is_empty());
    let err = s.record_lease(
        LINK,
        Lease::new(ClientId::from_mac(mac(2)), a, at(100)),
        at(0),
    );
    assert_eq!(
        err.unwrap_err().to_string(),
        format!("address {a} is the static lease of client 01:02:aa:bb:cc:dd:01")
    );
    assert_eq!(bind(&mut s, at(0), mac(1)), a);
    assert_ne!(bind(&mut s, at(0), mac(2)), a);
}

#[test]
fn expiry_is_reported_and_persisted() {
    let mut s = server();
    assert_eq!(s.poll_timeout(), None);
    let a = bind(&mut s, at(0), mac(1));
    assert_eq!(s.poll_timeout(), Some(at(3600)));
    assert!(s.expire(at(3599)).is_empty());
    let gone = s.expire(at(3600));
    assert_eq!(gone.len(), 1);
    assert_eq!((gone[0].0, gone[0].1.address), (LINK, a));
    assert_eq!(s.counters().expired, 1);
    assert!(s.leases(LINK, at(3600)).is_empty());

    // Expiry found while handling a packet is reported in `changes`.
    bind(&mut s, at(4000), mac(1));
    let h = send(&mut s, at(8000), &msg(MessageType::Discover, mac(2)));
    assert!(matches!(h.changes[..], [LeaseChange::Expired(_)]));
}

#[test]
fn recorded_lease_is_honoured() {
    let mut s = server();
    // The daemon configured 192.168.10.20 in a container with MAC mac(1).
    let mut lease = Lease::new(ClientId::from_mac(mac(1)), ip(20), at(3600));
    assert_eq!(lease.hwaddr, Some(mac(1)));
    s.record_lease(LINK, lease.clone(), at(0)).unwrap();
    // Recorded by the daemon: a container's lease.
    lease.container = true;
    assert_eq!(s.leases(LINK, at(0)), vec![lease]);
    assert_eq!(
        reply(&send(&mut s, at(1), &msg(MessageType::Discover, mac(1)))).yiaddr(),
        ip(20)
    );
    let r = reply(&send(&mut s, at(1), &renewing(mac(1), ip(20))));
    assert_eq!(kind(&r), MessageType::Ack);

    let err = s
        .record_lease(
            LINK,
            Lease::new(ClientId::from_mac(mac(2)), ip(20), at(3600)),
            at(0),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 192.168.10.20 is bound to client 01:02:aa:bb:cc:dd:01"
    );
    let err = s
        .record_lease(
            LINK,
            Lease::new(ClientId::from_mac(mac(2)), SERVER, at(3600)),
            at(0),
        )
        .unwrap_err();
    assert_eq!(err, LeaseError::Reserved { address: SERVER });
    let err = s
        .record_lease(
            LINK,
            Lease::new(
                ClientId::from_mac(mac(2)),
                Ipv4Addr::new(10, 0, 0, 1),
                at(3600),
            ),
            at(0),
        )
        .unwrap_err();
    assert!(matches!(err, LeaseError::OutsideSubnet { .. }));
    let err = s
        .record_lease(
            LinkId(1),
            Lease::new(ClientId::from_mac(mac(2)), ip(21), at(3600)),
            at(0),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "link 1 is not served by the DHCP server");
}

#[test]
fn reconfiguring_a_link_keeps_its_leases() {
    let mut s = server();
    let a = bind(&mut s, at(0), mac(1));
    let mut cfg = config();
    cfg.dns = vec![Ipv4Addr::new(1, 1, 1, 1)];
    s.add_link(LINK, cfg).unwrap();
    assert_eq!(s.leases(LINK, at(0))[0].address, a);
    assert_eq!(s.config(LINK).unwrap().dns.len(), 1);
    // A bad configuration is refused and the old one stays.
    let mut bad = config();
    bad.server_address = ip(31);
    assert!(s.add_link(LINK, bad).is_err());
    assert_eq!(s.leases(LINK, at(0)).len(), 1);
}

/// Test sugar.
trait Tap {
    fn tap_kind(self, kind: MessageType) -> Self;
}

impl Tap for Message {
    fn tap_kind(mut self, kind: MessageType) -> Self {
        self.opts_mut().insert(DhcpOption::MessageType(kind));
        self
    }
}

impl crate::Handled {
    /// The destination of the single reply.
    fn destination(&self) -> Destination {
        assert_eq!(self.replies.len(), 1, "{self:?}");
        self.replies[0].destination
    }
}
