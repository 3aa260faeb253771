//! Engine tests on a virtual clock, with packets built by `dhcproto`'s encoder.

mod bounds;
mod malformed;
mod messages;
mod props;
mod states;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use crate::{Handled, Inbound, LinkConfig, LinkId, Server};

/// The link every test uses.
pub(super) const LINK: LinkId = LinkId(7);

/// The server's address in [`subnet`].
pub(super) const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 17);

/// A fixed "now" (seconds since the epoch).
pub(super) const T0: u64 = 1_700_000_000;

/// `T0 + secs`.
pub(super) fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

/// The /28 of the reference's hash example, as networkd would configure it.
pub(super) fn subnet() -> ipnetwork::Ipv4Network {
    "192.168.10.16/28".parse().unwrap()
}

pub(super) fn config() -> LinkConfig {
    LinkConfig::new(subnet(), SERVER)
}

pub(super) fn server_with(config: LinkConfig) -> Server {
    let mut s = Server::new();
    s.add_link(LINK, config).unwrap();
    s
}

pub(super) fn server() -> Server {
    server_with(config())
}

/// `192.168.10.x`.
pub(super) fn ip(x: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 10, x)
}

/// The MAC of test client `n`.
pub(super) fn mac(n: u8) -> [u8; 6] {
    [0x02, 0xaa, 0xbb, 0xcc, 0xdd, n]
}

/// A client message of `kind` from the client with `mac` (no option 61).
pub(super) fn msg(kind: MessageType, mac: [u8; 6]) -> Message {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(0x1234_5678, z, z, z, z, &mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

/// `msg` plus an option.
pub(super) fn with(mut m: Message, opt: DhcpOption) -> Message {
    m.opts_mut().insert(opt);
    m
}

pub(super) fn encode(m: &Message) -> Vec<u8> {
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

/// Sends raw bytes on [`LINK`].
pub(super) fn send_raw(s: &mut Server, now: SystemTime, bytes: &[u8]) -> Handled {
    let inbound = Inbound {
        payload: bytes,
        source: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    };
    s.handle(now, LINK, &inbound)
}

pub(super) fn send(s: &mut Server, now: SystemTime, m: &Message) -> Handled {
    send_raw(s, now, &encode(m))
}

/// The single reply of `h`, decoded.
pub(super) fn reply(h: &Handled) -> Message {
    assert_eq!(h.replies.len(), 1, "expected one reply: {h:?}");
    let m = Message::decode(&mut Decoder::new(&h.replies[0].payload)).unwrap();
    assert_eq!(m.opcode(), Opcode::BootReply);
    m
}

pub(super) fn kind(m: &Message) -> MessageType {
    m.opts().msg_type().unwrap()
}

pub(super) fn lease_time(m: &Message) -> Option<u32> {
    match m.opts().get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => Some(*t),
        _ => None,
    }
}

/// DISCOVER with rapid commit: the quickest way to bind `mac`. Returns the bound address.
pub(super) fn bind(s: &mut Server, now: SystemTime, mac: [u8; 6]) -> Ipv4Addr {
    let h = send(
        s,
        now,
        &with(msg(MessageType::Discover, mac), DhcpOption::RapidCommit),
    );
    let r = reply(&h);
    assert_eq!(kind(&r), MessageType::Ack);
    r.yiaddr()
}

/// A client id whose first hash candidate in [`subnet`] is `target`.
pub(super) fn mac_hashing_to(target: Ipv4Addr, not: [u8; 6]) -> [u8; 6] {
    (0..=255u8)
        .map(|n| [0x02, 0x11, 0x22, 0x33, 0x44, n])
        .find(|&m| {
            m != not
                && crate::pick_address(subnet(), &crate::client_id_from_mac(m), |_| true)
                    == Some(target)
        })
        .unwrap()
}
