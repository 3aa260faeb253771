//! Bad input is dropped and counted, never answered wrongly and never a panic.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, MessageType};

use super::*;
use crate::DropReason;
use crate::wire::{HEADER_LEN, MAX_PACKET_SIZE};

/// Sends `bytes`, expects a silent drop for `reason`, counted once.
fn dropped(bytes: &[u8], reason: DropReason) {
    let mut s = server();
    let h = send_raw(&mut s, at(0), bytes);
    assert!(h.replies.is_empty(), "{reason}: {h:?}");
    assert_eq!(h.dropped, Some(reason));
    assert_eq!(s.counters().dropped(reason), 1);
    assert_eq!(s.counters().dropped_total(), 1);
    assert_eq!(s.counters().received, 1);
    assert!(s.leases(LINK, at(0)).is_empty());
}

fn discover() -> Vec<u8> {
    encode(&msg(MessageType::Discover, mac(1)))
}

/// A DISCOVER whose option area (after the cookie) is `opts`.
fn discover_with_options(opts: &[u8]) -> Vec<u8> {
    let mut b = discover();
    b.truncate(HEADER_LEN + 4);
    b.extend_from_slice(opts);
    b
}

#[test]
fn truncated_packets() {
    let good = discover();
    for len in [0, 1, 100, HEADER_LEN, HEADER_LEN + 3] {
        dropped(&good[..len], DropReason::Truncated);
    }
    // An option whose length runs past the end.
    dropped(
        &discover_with_options(&[53, 1, 1, 61, 7, 1, 2]),
        DropReason::Truncated,
    );
    dropped(
        &discover_with_options(&[53, 1, 1, 12]),
        DropReason::Truncated,
    );
}

#[test]
fn oversized_packet() {
    let mut b = discover();
    b.resize(MAX_PACKET_SIZE + 1, 0);
    dropped(&b, DropReason::TooLarge);
}

#[test]
fn wrong_op_code() {
    let mut b = discover();
    b[0] = 2; // BOOTREPLY
    dropped(&b, DropReason::NotRequest);
    b[0] = 77;
    dropped(&b, DropReason::NotRequest);
}

#[test]
fn bad_magic_cookie() {
    let mut b = discover();
    b[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&[1, 2, 3, 4]);
    dropped(&b, DropReason::BadCookie);
}

#[test]
fn hardware_length_beyond_chaddr() {
    let mut b = discover();
    b[2] = 200;
    dropped(&b, DropReason::BadHardwareLength);
}

#[test]
fn looping_or_invalid_option_overload() {
    // Overload value outside 1..=3.
    dropped(
        &discover_with_options(&[53, 1, 1, 52, 1, 4, 255]),
        DropReason::BadOptions,
    );
    // Overload pointing at a `file` field that overloads again: read once, no loop.
    let mut b = discover_with_options(&[52, 1, 1, 255]);
    b[108..117].copy_from_slice(&[52, 1, 3, 53, 1, 1, 255, 0, 0]);
    let mut s = server();
    assert_eq!(
        kind(&reply(&send_raw(&mut s, at(0), &b))),
        MessageType::Offer
    );
    // An overloaded field with an option running past its end.
    let mut b = discover_with_options(&[53, 1, 1, 52, 1, 2, 255]);
    b[44 + 62] = 61;
    b[44 + 63] = 9;
    dropped(&b, DropReason::Truncated);
}

#[test]
fn undecodable_required_options() {
    // Message type, lease time, requested address, server id with wrong lengths.
    dropped(
        &discover_with_options(&[53, 2, 1, 1, 255]),
        DropReason::BadOptions,
    );
    dropped(
        &discover_with_options(&[53, 1, 1, 51, 2, 0, 1, 255]),
        DropReason::BadOptions,
    );
    dropped(
        &discover_with_options(&[53, 1, 1, 50, 3, 1, 2, 3, 255]),
        DropReason::BadOptions,
    );
    dropped(
        &discover_with_options(&[53, 1, 1, 54, 5, 1, 2, 3, 4, 5, 255]),
        DropReason::BadOptions,
    );
    dropped(
        &discover_with_options(&[53, 1, 1, 57, 1, 2, 255]),
        DropReason::BadOptions,
    );
}

#[test]
fn undecodable_optional_options_are_ignored() {
    // A hostname that is not UTF-8 and a rapid-commit option with a value: still an OFFER,
    // no echo, no rapid commit.
    let mut s = server();
    let b = discover_with_options(&[53, 1, 1, 12, 2, 0xc3, 0x28, 80, 1, 1, 255]);
    let r = reply(&send_raw(&mut s, at(0), &b));
    assert_eq!(kind(&r), MessageType::Offer);
    assert!(r.opts().get(dhcproto::v4::OptionCode::Hostname).is_none());
}

#[test]
fn plain_bootp_and_server_message_types() {
    dropped(&discover_with_options(&[255]), DropReason::NoMessageType);
    dropped(&discover_with_options(&[]), DropReason::NoMessageType);
    for k in [
        MessageType::Offer,
        MessageType::Ack,
        MessageType::Nak,
        MessageType::Unknown(99),
    ] {
        dropped(&encode(&msg(k, mac(1))), DropReason::UnsupportedMessageType);
    }
}

#[test]
fn no_client_identity() {
    // Zero chaddr and no option 61.
    dropped(
        &encode(&msg(MessageType::Discover, [0; 6])),
        DropReason::NoClientId,
    );
    // hlen 0.
    let mut m = msg(MessageType::Discover, mac(1));
    m.set_chaddr(&[]);
    dropped(&encode(&m), DropReason::NoClientId);
    // A one-byte option 61 does not count (RFC 2132: at least 2).
    let m = with(
        msg(MessageType::Discover, [0; 6]),
        DhcpOption::ClientIdentifier(vec![1]),
    );
    dropped(&encode(&m), DropReason::NoClientId);
    // But a proper option 61 with a zero chaddr is fine, answered by broadcast.
    let m = with(
        msg(MessageType::Discover, [0; 6]),
        DhcpOption::ClientIdentifier(vec![0xff, 1, 2, 3]),
    );
    let mut s = server();
    let h = send(&mut s, at(0), &m);
    assert_eq!(h.replies[0].destination, crate::Destination::Broadcast);
}

#[test]
fn requests_outside_the_subnet() {
    // INIT-REBOOT: NAKed (RFC 2131 §4.3.2) and counted.
    let mut s = server();
    let m = with(
        msg(MessageType::Request, mac(1)),
        DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 1)),
    );
    let h = send(&mut s, at(0), &m);
    assert_eq!(kind(&reply(&h)), MessageType::Nak);
    assert_eq!(s.counters().dropped(DropReason::OutsideSubnet), 1);
    // RENEWING from outside: silent.
    let mut m = msg(MessageType::Request, mac(1));
    m.set_ciaddr(Ipv4Addr::new(10, 0, 0, 1));
    dropped(&encode(&m), DropReason::OutsideSubnet);
    // DECLINE of an address outside: ignored.
    let m = with(
        msg(MessageType::Decline, mac(1)),
        DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 1)),
    );
    dropped(&encode(&m), DropReason::OutsideSubnet);
}

#[test]
fn release_without_ciaddr_or_for_another_server() {
    dropped(
        &encode(&msg(MessageType::Release, mac(1))),
        DropReason::BadRequest,
    );
    let mut m = with(
        msg(MessageType::Release, mac(1)),
        DhcpOption::ServerIdentifier(ip(18)),
    );
    m.set_ciaddr(ip(20));
    dropped(&encode(&m), DropReason::OtherServer);
}
