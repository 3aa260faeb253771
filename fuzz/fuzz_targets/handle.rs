//! Arbitrary bytes into `Server::handle` on a /28 link with some state: must never panic, and
//! every reply must be a well-formed BOOTREPLY no larger than the client may accept.

#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use dhcp::{ClientId, Inbound, Lease, LinkConfig, LinkId, Server, StaticLease};
use dhcproto::v4::Message;
use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;

const LINK: LinkId = LinkId(1);

fn server(now: SystemTime) -> Server {
    let mut cfg = LinkConfig::new(
        "192.168.10.16/28".parse().expect("valid subnet"),
        Ipv4Addr::new(192, 168, 10, 17),
    );
    cfg.dns = vec![Ipv4Addr::new(192, 168, 10, 17)];
    cfg.domain = Some("fuzz.internal".into());
    cfg.classless_routes = vec![(
        "10.0.0.0/8".parse().expect("valid route"),
        cfg.server_address,
    )];
    cfg.static_leases = vec![StaticLease::mac(
        [2, 0, 0, 0, 0, 1],
        Ipv4Addr::new(192, 168, 10, 30),
    )];
    let mut s = Server::new();
    s.add_link(LINK, cfg).expect("valid config");
    let lease = Lease::new(
        ClientId::from_mac([2, 0, 0, 0, 0, 2]),
        Ipv4Addr::new(192, 168, 10, 20),
        now + Duration::from_secs(60),
    );
    s.record_lease(LINK, lease, now).expect("free address");
    s
}

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut s = server(now);
    // The same input twice, the second time later: exercises bound leases, renewals, expiry.
    for t in [0, 90] {
        let inbound = Inbound {
            payload: data,
            source: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        };
        let h = s.handle(now + Duration::from_secs(t), LINK, &inbound);
        assert!(h.replies.len() <= 1);
        for out in &h.replies {
            assert!(out.payload.len() >= 300);
            let reply = Message::decode(&mut Decoder::new(&out.payload)).expect("reply decodes");
            assert_eq!(u8::from(reply.opcode()), 2);
        }
        s.expire(now + Duration::from_secs(t));
    }
    let leases = s.leases(LINK, now);
    let mut addrs: Vec<_> = leases.iter().map(|l| l.address).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), leases.len());
});
