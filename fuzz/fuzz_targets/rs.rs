//! Arbitrary bytes into rnetd's router solicitation check (`netd::ra::parse_rs`) as a raw
//! ICMPv6 socket delivers them: must never panic, whatever the source and hop limit; what it
//! accepts is a type 133 code 0 message with hop limit 255 whose options all fit.

#![no_main]

use std::net::Ipv6Addr;

use libfuzzer_sys::fuzz_target;
use netd::ra::{ROUTER_SOLICIT, parse_rs};

fuzz_target!(|data: &[u8]| {
    for (source, hop) in [
        ("fe80::1".parse::<Ipv6Addr>().unwrap(), Some(255)),
        (Ipv6Addr::UNSPECIFIED, Some(255)),
        ("fe80::1".parse().unwrap(), Some(64)),
        ("fe80::1".parse().unwrap(), None),
    ] {
        if let Ok(rs) = parse_rs(source, hop, data) {
            assert!(data.len() >= 8 && data[0] == ROUTER_SOLICIT && data[1] == 0);
            assert_eq!(hop, Some(255));
            assert!(!(source.is_unspecified() && rs.source_mac.is_some()));
        }
    }
});
