//! A DHCP client for the crash tests that records every ACK it gets, so a test can check that
//! no ACKed lease was lost or given to another client across rnetd crashes.
//!
//!   dhcpcheck LOCAL_ADDR SERVER_ADDR COUNT SEED LOG
//!
//! Acts as a relay on LOCAL_ADDR (giaddr, port 67, as perfdhcp does), so it needs no raw
//! socket: for each of COUNT client MACs derived from SEED, in turn and forever, it sends a
//! DISCOVER with rapid commit and, on an ACK, appends "MAC ADDRESS" to LOG (flushed at once).
//! Unanswered exchanges (rnetd down) are simply retried with the next client.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 5 {
        eprintln!("usage: dhcpcheck LOCAL_ADDR SERVER_ADDR COUNT SEED LOG");
        std::process::exit(2);
    }
    let local: Ipv4Addr = args[0].parse().expect("LOCAL_ADDR");
    let server: Ipv4Addr = args[1].parse().expect("SERVER_ADDR");
    let count: u8 = args[2].parse().expect("COUNT");
    let seed: u8 = args[3].parse().expect("SEED");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args[4])
        .expect("LOG");
    let socket = UdpSocket::bind(SocketAddrV4::new(local, 67)).expect("bind port 67");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut xid = u32::from(seed) << 24;
    println!("READY");
    loop {
        for n in 0..count {
            let mac = [0x02, 0xcc, 0x00, 0x00, seed, n];
            xid = xid.wrapping_add(1);
            let mut m = Message::new_with_id(
                xid,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                local,
                &mac,
            );
            m.set_hops(1);
            m.opts_mut()
                .insert(DhcpOption::MessageType(MessageType::Discover));
            m.opts_mut().insert(DhcpOption::RapidCommit);
            let mut buf = Vec::new();
            m.encode(&mut Encoder::new(&mut buf)).unwrap();
            if socket.send_to(&buf, SocketAddrV4::new(server, 67)).is_err() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let mut answer = [0u8; 1500];
            while let Ok(len) = socket.recv(&mut answer) {
                let Ok(reply) = Message::decode(&mut Decoder::new(&answer[..len])) else {
                    continue;
                };
                if reply.xid() != xid {
                    continue;
                }
                if reply.opts().msg_type() == Some(MessageType::Ack) {
                    let mac = mac.map(|b| format!("{b:02x}")).join(":");
                    // One write per line: a reader never sees half of one.
                    let line = format!("{mac} {}\n", reply.yiaddr());
                    log.write_all(line.as_bytes()).unwrap();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
