//! DISCOVER/OFFER, rapid commit, reply options and reply destinations.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, MessageType, OptionCode, relay};

use super::*;
use crate::{ClientId, Destination, DropReason, LeaseChange};

#[test]
fn discover_is_offered_the_hash_address_without_reserving_it() {
    let mut s = server();
    // Client id 01:02:aa:bb:cc:dd:ee starts probing at offset 7 of the /28 (sd-dhcp-server.c's
    // hash probe; the vector is checked in `pick::tests`).
    let m = with(
        msg(MessageType::Discover, [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]),
        DhcpOption::ClientIdentifier(vec![0x01, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]),
    );
    let h = send(&mut s, at(0), &m);
    let r = reply(&h);
    assert_eq!(kind(&r), MessageType::Offer);
    assert_eq!(r.yiaddr(), ip(23));
    assert_eq!(r.xid(), m.xid());
    assert_eq!(r.chaddr(), m.chaddr());
    let o = r.opts();
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 240)))
    );
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![SERVER]))
    );
    assert_eq!(lease_time(&r), Some(3600));
    assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
    assert_eq!(
        o.get(OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(3150))
    );
    assert!(!o.contains(OptionCode::RapidCommit));
    // No broadcast flag: unicast at the link layer to chaddr/yiaddr.
    assert_eq!(
        h.replies[0].destination,
        Destination::Hardware {
            mac: [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee],
            ip: ip(23)
        }
    );
    assert_eq!(h.replies[0].destination.port(), 68);
    assert!(h.replies[0].payload.len() >= crate::wire::MIN_REPLY_SIZE);
    // An offer is not a reservation.
    assert!(h.changes.is_empty());
    assert!(s.leases(LINK, at(0)).is_empty());
    assert_eq!(s.counters().offers, 1);
}

#[test]
fn client_without_option_61_is_known_by_its_mac() {
    let mut s = server();
    let a = bind(&mut s, at(0), [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
    assert_eq!(a, ip(23));
    assert_eq!(
        s.leases(LINK, at(0))[0].client_id,
        ClientId::from_mac([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])
    );
}

#[test]
fn broadcast_flag_gets_a_broadcast_reply() {
    let mut s = server();
    let mut m = msg(MessageType::Discover, mac(1));
    m.set_flags(Flags::default().set_broadcast());
    let h = send(&mut s, at(0), &m);
    assert_eq!(h.replies[0].destination, Destination::Broadcast);
    assert!(reply(&h).flags().broadcast());
}

#[test]
fn rapid_commit_acks_a_discover_directly() {
    let mut s = server();
    let m = with(msg(MessageType::Discover, mac(1)), DhcpOption::RapidCommit);
    let h = send(&mut s, at(0), &m);
    let r = reply(&h);
    assert_eq!(kind(&r), MessageType::Ack);
    assert!(r.opts().contains(OptionCode::RapidCommit));
    let leases = s.leases(LINK, at(0));
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].address, r.yiaddr());
    assert_eq!(leases[0].expires, at(3600));
    assert_eq!(h.changes, vec![LeaseChange::Bound(leases[0].clone())]);

    // Server side disabled: a plain OFFER, no option 80, nothing bound.
    let mut cfg = config();
    cfg.rapid_commit = false;
    let mut s = server_with(cfg);
    let r = reply(&send(&mut s, at(0), &m));
    assert_eq!(kind(&r), MessageType::Offer);
    assert!(!r.opts().contains(OptionCode::RapidCommit));
    assert!(s.leases(LINK, at(0)).is_empty());
}

#[test]
fn discover_prefers_current_lease_then_requested_address() {
    let mut s = server();
    let a = bind(&mut s, at(0), mac(1));
    // Asking for another address does not move a client that holds a lease.
    let m = with(
        msg(MessageType::Discover, mac(1)),
        DhcpOption::RequestedIpAddress(ip(29)),
    );
    assert_eq!(reply(&send(&mut s, at(1), &m)).yiaddr(), a);
    // A new client gets the free address it asks for...
    let m = with(
        msg(MessageType::Discover, mac(2)),
        DhcpOption::RequestedIpAddress(ip(29)),
    );
    assert_eq!(reply(&send(&mut s, at(1), &m)).yiaddr(), ip(29));
    // ...but not one that is taken, reserved or outside the subnet.
    for bad in [a, SERVER, ip(31), Ipv4Addr::new(10, 0, 0, 1)] {
        let m = with(
            msg(MessageType::Discover, mac(2)),
            DhcpOption::RequestedIpAddress(bad),
        );
        let got = reply(&send(&mut s, at(1), &m)).yiaddr();
        assert_ne!(got, bad);
        assert!(subnet().contains(got));
    }
}

#[test]
fn parameter_request_list_limits_optional_options() {
    let mut cfg = config();
    cfg.dns = vec![Ipv4Addr::new(9, 9, 9, 9)];
    cfg.domain = Some("containers.internal".into());
    let mut s = server_with(cfg);

    let m = with(
        msg(MessageType::Discover, mac(1)),
        DhcpOption::ParameterRequestList(vec![OptionCode::SubnetMask, OptionCode::Router]),
    );
    let r = reply(&send(&mut s, at(0), &m));
    let o = r.opts();
    // Mandatory ones always, the rest only if asked for.
    for code in [
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::ServerIdentifier,
        OptionCode::AddressLeaseTime,
    ] {
        assert!(o.contains(code), "{code:?}");
    }
    assert!(!o.contains(OptionCode::DomainNameServer));
    assert!(!o.contains(OptionCode::DomainName));

    let m = with(
        msg(MessageType::Discover, mac(1)),
        DhcpOption::ParameterRequestList(vec![
            OptionCode::DomainNameServer,
            OptionCode::DomainName,
        ]),
    );
    let r = reply(&send(&mut s, at(0), &m));
    assert_eq!(
        r.opts().get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            9, 9, 9, 9
        )]))
    );
    assert_eq!(
        r.opts().get(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("containers.internal".into()))
    );
    // No list at all: everything configured.
    let r = reply(&send(&mut s, at(0), &msg(MessageType::Discover, mac(1))));
    assert!(r.opts().contains(OptionCode::DomainNameServer));
    assert!(r.opts().contains(OptionCode::DomainName));
}

#[test]
fn maximum_message_size_drops_optional_options_rather_than_exceed() {
    let mut cfg = config();
    cfg.dns = (1..=60).map(|n| Ipv4Addr::new(10, 0, 0, n)).collect();
    cfg.domain = Some("d".repeat(200));
    let mut s = server_with(cfg);
    let base = with(
        msg(MessageType::Discover, mac(1)),
        DhcpOption::Hostname("web".into()),
    );

    // 576 (the RFC minimum, also the default): 548 bytes of DHCP message at most.
    for size in [None, Some(300), Some(576)] {
        let m = match size {
            Some(n) => with(base.clone(), DhcpOption::MaxMessageSize(n)),
            None => base.clone(),
        };
        let h = send(&mut s, at(0), &m);
        assert!(h.replies[0].payload.len() <= 548, "{size:?}");
        let r = reply(&h);
        assert!(r.opts().contains(OptionCode::SubnetMask));
        assert!(r.opts().contains(OptionCode::AddressLeaseTime));
        // 240 bytes of DNS fit alone; then the domain and the hostname echo had to go.
        assert!(r.opts().contains(OptionCode::DomainNameServer));
        assert!(!r.opts().contains(OptionCode::DomainName));
        assert!(!r.opts().contains(OptionCode::Hostname));
    }
    let h = send(&mut s, at(0), &with(base, DhcpOption::MaxMessageSize(1500)));
    let r = reply(&h);
    assert!(r.opts().contains(OptionCode::DomainName));
    assert!(r.opts().contains(OptionCode::Hostname));
    assert!(h.replies[0].payload.len() <= 1500 - 28);
}

#[test]
fn hostname_is_echoed_and_recorded() {
    let mut s = server();
    let m = with(
        with(
            msg(MessageType::Discover, mac(1)),
            DhcpOption::Hostname("web-1\0".into()),
        ),
        DhcpOption::RapidCommit,
    );
    let r = reply(&send(&mut s, at(0), &m));
    assert_eq!(
        r.opts().get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("web-1".into()))
    );
    assert_eq!(s.leases(LINK, at(0))[0].hostname.as_deref(), Some("web-1"));
    // Not echoed when the list leaves it out.
    let m = with(
        with(
            msg(MessageType::Discover, mac(2)),
            DhcpOption::Hostname("db".into()),
        ),
        DhcpOption::ParameterRequestList(vec![OptionCode::SubnetMask]),
    );
    assert!(
        !reply(&send(&mut s, at(0), &m))
            .opts()
            .contains(OptionCode::Hostname)
    );
}

#[test]
fn lease_time_is_clamped_to_the_maximum() {
    let mut s = server();
    let ask = |t| {
        with(
            msg(MessageType::Discover, mac(1)),
            DhcpOption::AddressLeaseTime(t),
        )
    };
    assert_eq!(
        lease_time(&reply(&send(&mut s, at(0), &ask(86_400)))),
        Some(43_200)
    );
    assert_eq!(lease_time(&reply(&send(&mut s, at(0), &ask(60)))), Some(60));
    assert_eq!(lease_time(&reply(&send(&mut s, at(0), &ask(0)))), Some(1));
    let r = reply(&send(&mut s, at(0), &ask(u32::MAX)));
    assert_eq!(lease_time(&r), Some(43_200));
    assert_eq!(
        r.opts().get(OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(37_800))
    );
}

#[test]
fn classless_routes_are_sent_with_a_default_route() {
    let mut cfg = config();
    cfg.classless_routes = vec![("10.20.0.0/16".parse().unwrap(), ip(18))];
    let mut s = server_with(cfg);
    let m = with(
        msg(MessageType::Discover, mac(1)),
        DhcpOption::ParameterRequestList(vec![OptionCode::ClasslessStaticRoute]),
    );
    let r = reply(&send(&mut s, at(0), &m));
    assert_eq!(
        r.opts().get(OptionCode::ClasslessStaticRoute),
        Some(&DhcpOption::ClasslessStaticRoute(vec![
            ("10.20.0.0/16".parse().unwrap(), ip(18)),
            ("0.0.0.0/0".parse().unwrap(), SERVER),
        ]))
    );
    // Not configured: never sent.
    let mut s = server();
    assert!(
        !reply(&send(&mut s, at(0), &m))
            .opts()
            .contains(OptionCode::ClasslessStaticRoute)
    );
}

#[test]
fn relayed_requests_are_answered_to_the_relay() {
    let mut s = server();
    let relay_ip = Ipv4Addr::new(192, 168, 10, 18);
    let mut info = relay::RelayAgentInformation::default();
    info.insert(relay::RelayInfo::AgentCircuitId(b"port7".to_vec()));
    let mut m = with(
        msg(MessageType::Discover, mac(1)),
        DhcpOption::RelayAgentInformation(info.clone()),
    );
    m.set_giaddr(relay_ip);
    let h = send(&mut s, at(0), &m);
    assert_eq!(h.replies[0].destination, Destination::Relay(relay_ip));
    assert_eq!(h.replies[0].destination.port(), 67);
    let r = reply(&h);
    assert_eq!(r.giaddr(), relay_ip);
    assert_eq!(
        r.opts().get(OptionCode::RelayAgentInformation),
        Some(&DhcpOption::RelayAgentInformation(info))
    );

    // A relayed NAK goes to the relay too, with the broadcast bit set for it.
    let mut m = with(
        msg(MessageType::Request, mac(1)),
        DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 5)),
    );
    m.set_giaddr(relay_ip);
    let h = send(&mut s, at(0), &m);
    let r = reply(&h);
    assert_eq!(kind(&r), MessageType::Nak);
    assert!(r.flags().broadcast());
    assert_eq!(h.replies[0].destination, Destination::Relay(relay_ip));
}

#[test]
fn unknown_link_is_dropped_and_counted() {
    let mut s = server();
    let bytes = encode(&msg(MessageType::Discover, mac(1)));
    let inbound = crate::Inbound {
        payload: &bytes,
        source: std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    };
    let h = s.handle(at(0), LinkId(99), &inbound);
    assert!(h.replies.is_empty());
    assert_eq!(h.dropped, Some(DropReason::UnknownLink));
    assert_eq!(s.counters().dropped(DropReason::UnknownLink), 1);
    assert!(s.remove_link(LINK));
    assert!(!s.remove_link(LINK));
}
