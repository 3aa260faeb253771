//! Properties: arbitrary bytes never panic; no client sequence ever double-allocates.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, MessageType};
use proptest::prelude::*;

use super::*;
use crate::wire::HEADER_LEN;
use crate::{ClientId, StaticLease};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let mut s = server();
        let h = send_raw(&mut s, at(0), &bytes);
        prop_assert!(h.replies.len() <= 1);
    }

    /// Random options behind a valid header and cookie, to get past the first checks.
    #[test]
    fn random_options_never_panic(
        head in proptest::collection::vec(any::<u8>(), HEADER_LEN..=HEADER_LEN),
        opts in proptest::collection::vec(any::<u8>(), 0..600),
        kind in 1u8..=8,
    ) {
        let mut s = server();
        let mut b = head;
        b[0] = 1;
        b[2] %= 17;
        b.extend_from_slice(&dhcproto::v4::MAGIC);
        b.extend_from_slice(&[53, 1, kind]);
        b.extend_from_slice(&opts);
        let h = send_raw(&mut s, at(0), &b);
        for out in &h.replies {
            prop_assert!(out.payload.len() >= crate::wire::MIN_REPLY_SIZE);
            prop_assert!(crate::wire::decode(&out.payload).is_err(), "a reply is no request");
        }
    }

    #[test]
    fn pool_never_double_allocates(steps in proptest::collection::vec(step(), 1..120)) {
        let mut cfg = config();
        cfg.static_leases = vec![StaticLease::mac(mac(0), ip(30))];
        cfg.default_lease_time = std::time::Duration::from_secs(300);
        let mut s = server_with(cfg);
        let mut now = 0;
        for st in steps {
            if let Step::Wait(secs) = st {
                now += secs;
                s.expire(at(now));
                continue;
            }
            let h = send(&mut s, at(now), &st.message());
            // Every ACKed address is now held by that client and nobody else.
            for out in &h.replies {
                let r = Message::decode(&mut Decoder::new(&out.payload)).unwrap();
                if r.opts().msg_type() == Some(MessageType::Ack) && !r.yiaddr().is_unspecified() {
                    let holders: Vec<_> = s.leases(LINK, at(now)).into_iter()
                        .filter(|l| l.address == r.yiaddr()).collect();
                    prop_assert_eq!(holders.len(), 1);
                }
            }
            let leases = s.leases(LINK, at(now));
            let addrs: BTreeSet<Ipv4Addr> = leases.iter().map(|l| l.address).collect();
            let clients: BTreeSet<&ClientId> = leases.iter().map(|l| &l.client_id).collect();
            prop_assert_eq!(addrs.len(), leases.len(), "address leased twice: {:?}", leases);
            prop_assert_eq!(clients.len(), leases.len(), "client with two leases: {:?}", leases);
            for l in &leases {
                prop_assert!(subnet().contains(l.address));
                prop_assert!(![SERVER, ip(16), ip(31)].contains(&l.address));
                // The static address only ever goes to its owner.
                prop_assert!(l.address != ip(30) || l.client_id == ClientId::from_mac(mac(0)));
            }
        }
    }
}

/// One client action (client 0 owns the static lease).
#[derive(Debug, Clone)]
enum Step {
    Discover(u8, bool),
    Select(u8, u8),
    InitReboot(u8, u8),
    Renew(u8, u8),
    Release(u8, u8),
    Decline(u8, u8),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    let c = 0u8..20;
    // Addresses around the /28 (16..=31), with a few outside it.
    let a = 12u8..36;
    prop_oneof![
        (c.clone(), any::<bool>()).prop_map(|(c, r)| Step::Discover(c, r)),
        (c.clone(), a.clone()).prop_map(|(c, a)| Step::Select(c, a)),
        (c.clone(), a.clone()).prop_map(|(c, a)| Step::InitReboot(c, a)),
        (c.clone(), a.clone()).prop_map(|(c, a)| Step::Renew(c, a)),
        (c.clone(), a.clone()).prop_map(|(c, a)| Step::Release(c, a)),
        (c, a).prop_map(|(c, a)| Step::Decline(c, a)),
        (0u64..400).prop_map(Step::Wait),
    ]
}

impl Step {
    fn message(&self) -> Message {
        match *self {
            Step::Discover(c, rapid) => {
                let m = msg(MessageType::Discover, mac(c));
                if rapid {
                    with(m, DhcpOption::RapidCommit)
                } else {
                    m
                }
            }
            Step::Select(c, a) => with(
                with(
                    msg(MessageType::Request, mac(c)),
                    DhcpOption::ServerIdentifier(SERVER),
                ),
                DhcpOption::RequestedIpAddress(ip(a)),
            ),
            Step::InitReboot(c, a) => with(
                msg(MessageType::Request, mac(c)),
                DhcpOption::RequestedIpAddress(ip(a)),
            ),
            Step::Renew(c, a) => {
                let mut m = msg(MessageType::Request, mac(c));
                m.set_ciaddr(ip(a));
                m
            }
            Step::Release(c, a) => {
                let mut m = msg(MessageType::Release, mac(c));
                m.set_ciaddr(ip(a));
                m
            }
            Step::Decline(c, a) => with(
                msg(MessageType::Decline, mac(c)),
                DhcpOption::RequestedIpAddress(ip(a)),
            ),
            Step::Wait(_) => unreachable!("handled by the caller"),
        }
    }
}
