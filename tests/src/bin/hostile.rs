//! Tools of the hostile-container tests (tests/tests/hostile.rs).
//!
//! Usage: hostile sniff IFACE OUTFILE
//!        hostile udp SRC DST PORT
//!
//! `sniff` logs every frame an interface *receives* (not the ones it sends), one line each, so a
//! test can tell whether a frame a hostile container sent reached a peer. It prints `READY` once
//! its socket is bound, then appends to OUTFILE (flushed per frame) lines such as:
//!
//! ```text
//! ETH 02:..:01 > ff:..:ff IP 10.0.0.7 > 10.0.0.255 PROTO 17 PORTS 67 > 68
//! ETH 02:..:01 > ff:..:ff ARP OP 2 SHA 02:..:01 SPA 10.0.0.1 THA 00:..:00 TPA 10.0.0.1
//! ```
//!
//! It runs until killed.
//!
//! `udp` sends three datagrams from SRC (an address of the namespace, e.g. a spoofed one added
//! with `ip addr add`; IPv4 or IPv6) to DST:PORT and exits without waiting for an answer: the port marks the
//! attempt in a sniffer's log.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// One line describing an Ethernet frame.
fn describe(frame: &[u8]) -> String {
    if frame.len() < 14 {
        return format!("SHORT {}", frame.len());
    }
    let mut line = format!("ETH {} > {}", mac(&frame[6..12]), mac(&frame[0..6]));
    let kind = u16::from_be_bytes([frame[12], frame[13]]);
    let p = &frame[14..];
    match kind {
        0x0800 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let proto = p[9];
            line += &format!(
                " IP {} > {} PROTO {proto}",
                ipv4(&p[12..16]),
                ipv4(&p[16..20])
            );
            if (proto == 6 || proto == 17) && p.len() >= ihl + 4 {
                let sport = u16::from_be_bytes([p[ihl], p[ihl + 1]]);
                let dport = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
                line += &format!(" PORTS {sport} > {dport}");
            }
        }
        0x0806 if p.len() >= 28 => {
            let op = u16::from_be_bytes([p[6], p[7]]);
            line += &format!(
                " ARP OP {op} SHA {} SPA {} THA {} TPA {}",
                mac(&p[8..14]),
                ipv4(&p[14..18]),
                mac(&p[18..24]),
                ipv4(&p[24..28])
            );
        }
        other => line += &format!(" TYPE {other:04x}"),
    }
    line
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["sniff", iface, file] => sniff(iface, file),
        ["udp", src, dst, port] => udp(src, dst, port),
        _ => {
            eprintln!("usage: hostile sniff IFACE OUTFILE | hostile udp SRC DST PORT");
            std::process::exit(2);
        }
    }
}

fn udp(src: &str, dst: &str, port: &str) {
    let src: std::net::IpAddr = src.parse().expect("source address");
    let dst: std::net::IpAddr = dst.parse().expect("destination address");
    let port: u16 = port.parse().expect("port");
    let socket = UdpSocket::bind((src, 0)).expect("bind to the source address");
    for _ in 0..3 {
        // A refused send (no route, unreachable) is the test's business, not ours.
        if let Err(e) = socket.send_to(b"rnet-hostile", (dst, port)) {
            eprintln!("send to {dst}:{port} from {src}: {e}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn sniff(iface: &str, file: &str) {
    let name = CString::new(iface).expect("interface name");
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "no interface {iface}");
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = i32::try_from(index).expect("interface index");
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes for the duration of the call.
    let bound = unsafe { libc::bind(fd, (&raw const addr).cast(), len) };
    assert!(bound == 0, "bind: {}", std::io::Error::last_os_error());
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .expect("output file");
    println!("READY");
    std::io::stdout().flush().expect("stdout");
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: as above; `from` and `from_len` are valid for writes during the call.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = len;
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes; `from`/`from_len` as above.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("recvfrom: {e}");
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let n = usize::try_from(n).expect("length");
        writeln!(out, "{}", describe(&buf[..n])).expect("write");
        out.flush().expect("flush");
    }
}
