//! A tiny TCP/UDP probe for the tests, so they need no socat or python on the machine.
//!
//!   netprobe serve tcp:PORT|udp:PORT ...   answer every connection or datagram with
//!                                          "FROM <peer address>\n"; `udp:ADDR:PORT` listens
//!                                          on one IPv4 address only
//!   netprobe connect tcp|udp ADDR PORT     send "hello", print the answer; exit 1 on timeout
//!
//! The answer names the peer as the server saw it, so a test can check what NAT did. Servers
//! listen on both families (`[::]`, IPv4 peers shown as IPv4); ADDR may be IPv6.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("connect") if args.len() == 4 => connect(&args[1], &args[2], &args[3]),
        _ => {
            eprintln!(
                "usage: netprobe serve tcp:PORT|udp:PORT ... | netprobe connect tcp|udp ADDR PORT"
            );
            std::process::exit(2);
        }
    }
}

fn serve(specs: &[String]) {
    let mut threads = Vec::new();
    for spec in specs {
        let (proto, port) = spec.split_once(':').expect("PROTO:PORT");
        if let Some((addr, port)) = port.split_once(':').filter(|_| proto == "udp") {
            let at = SocketAddr::new(addr.parse().expect("address"), port.parse().expect("port"));
            let u = UdpSocket::bind(at).expect("bind udp");
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok((_, peer)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(format!("FROM {}\n", shown(peer)).as_bytes(), peer);
                }
            }));
            continue;
        }
        let port: u16 = port.parse().expect("port");
        // Dual stack where the kernel has IPv6, else IPv4 only.
        let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        let any4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
        match proto {
            "tcp" => {
                let l = TcpListener::bind(any6)
                    .or_else(|_| TcpListener::bind(any4))
                    .expect("bind tcp");
                threads.push(std::thread::spawn(move || {
                    for s in l.incoming().flatten() {
                        let mut s = s;
                        let peer = s.peer_addr().map(shown).unwrap_or_default();
                        let mut buf = [0u8; 64];
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(format!("FROM {peer}\n").as_bytes());
                    }
                }));
            }
            "udp" => {
                let u = UdpSocket::bind(any6)
                    .or_else(|_| UdpSocket::bind(any4))
                    .expect("bind udp");
                threads.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while let Ok((_, peer)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(format!("FROM {}\n", shown(peer)).as_bytes(), peer);
                    }
                }));
            }
            other => panic!("unknown protocol {other}"),
        }
    }
    // Ready: tests wait for this line.
    println!("READY");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
}

/// A peer as the tests compare it: an IPv4 peer of a dual-stack socket as IPv4.
fn shown(peer: SocketAddr) -> String {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())).to_string(),
            None => peer.to_string(),
        },
        v4 => v4.to_string(),
    }
}

fn connect(proto: &str, addr: &str, port: &str) {
    let ip: IpAddr = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .expect("address");
    let target = SocketAddr::new(ip, port.parse().expect("port"));
    // Generous: under a loaded CI machine a first connection through fresh NAT state can be slow.
    let timeout = Duration::from_secs(5);
    let answer = match proto {
        "tcp" => TcpStream::connect_timeout(&target, timeout).and_then(|mut s| {
            s.set_read_timeout(Some(timeout))?;
            s.write_all(b"hello")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        }),
        "udp" => UdpSocket::bind(if ip.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }).and_then(|u| {
            u.set_read_timeout(Some(timeout))?;
            u.send_to(b"hello", target)?;
            let mut buf = [0u8; 512];
            let (n, _) = u.recv_from(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        }),
        other => panic!("unknown protocol {other}"),
    };
    match answer {
        Ok(a) if !a.is_empty() => print!("{a}"),
        Ok(_) => {
            eprintln!("netprobe: empty answer from {target}");
            std::process::exit(1)
        }
        Err(e) => {
            eprintln!("netprobe: {proto} {target}: {e}");
            std::process::exit(1)
        }
    }
}
