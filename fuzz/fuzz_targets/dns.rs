//! Arbitrary bytes into rnetd's DNS query path (`netd::dns::decide`) as a zone bridge's and a
//! `ve-` link's forwarder see them: must never panic; a reply must decode, be a response to the
//! query's id, and a query that is dropped must not be answered or forwarded.

#![no_main]

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use netd::dns::{Decision, DnsLink, decide};

fuzz_target!(|data: &[u8]| {
    let names = [
        ("web".to_owned(), Ipv4Addr::new(10, 0, 0, 7)),
        ("db".to_owned(), Ipv4Addr::new(10, 0, 0, 8)),
    ];
    for link in [
        DnsLink::new(
            "vz-blue",
            Ipv4Addr::new(10, 0, 0, 1),
            "10.0.0.0/24".parse().unwrap(),
        ),
        DnsLink::new(
            "ve-web",
            Ipv4Addr::new(10, 0, 1, 1),
            "10.0.1.0/28".parse().unwrap(),
        ),
    ] {
        match decide(&link, &names, data) {
            Decision::Reply(bytes) => {
                let reply = Message::from_vec(&bytes).expect("a reply decodes");
                assert_eq!(reply.metadata.message_type, MessageType::Response);
                assert_eq!(&bytes[..2], &data[..2], "the query's id");
            }
            Decision::Forward => {
                let query = Message::from_vec(data).expect("what is forwarded decodes");
                assert_eq!(query.queries.len(), 1);
            }
            Decision::Drop(_) => {}
        }
    }
});
