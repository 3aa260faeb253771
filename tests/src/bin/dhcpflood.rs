//! A DHCP DECLINE flood for tests: COUNT DECLINEs, each from a random hardware address and
//! naming a random host address of SUBNET, sent by unicast to SERVER:67 (rnetd's socket takes
//! them as it takes a broadcast on the link). Prints how many it sent.
//!
//! Usage: dhcpflood SERVER SUBNET COUNT

use std::net::{Ipv4Addr, UdpSocket};

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Encodable, Encoder};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: dhcpflood SERVER SUBNET COUNT");
        std::process::exit(2);
    }
    let server: Ipv4Addr = args[1].parse().expect("SERVER");
    let subnet: ipnetwork::Ipv4Network = args[2].parse().expect("SUBNET");
    let count: u32 = args[3].parse().expect("COUNT");
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    // xorshift seeded from the pid and the clock: different MACs each run.
    let mut seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let hosts = subnet.size().saturating_sub(2).max(1);
    let base = u32::from(subnet.network());
    let mut sent = 0u32;
    for _ in 0..count {
        let r = next().to_be_bytes();
        let mac = [0x0e, r[0], r[1], r[2], r[3], r[4]];
        let host = 1 + (next() % u64::from(hosts)) as u32;
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(next() as u32, z, z, z, z, &mac);
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(MessageType::Decline));
        opts.insert(DhcpOption::RequestedIpAddress(Ipv4Addr::from(base + host)));
        opts.insert(DhcpOption::ServerIdentifier(server));
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).expect("encode");
        if socket.send_to(&buf, (server, 67)).is_ok() {
            sent += 1;
        }
        if sent.is_multiple_of(100) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    println!("{sent}");
}
