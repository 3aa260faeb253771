//! Privileged test: real TCP through the table, in private namespaces. A "host" namespace (the
//! test thread) with the host address 203.0.113.2 on a veth "uplink", and two "containers" (threads
//! in namespaces of their own) on `ve-c` (10.0.0.2) and `ve-d` (10.0.0.18). Each container
//! runs a server on port 80 that answers with the address the connection came from, which shows
//! whether and how it was masqueraded.
//!
//! Checks the paths that need more than a DNAT map (localhost needs `route_localnet` and a
//! masquerade of 127.0.0.1 sources, `::1` cannot be DNATed, as the CNI `portmap` plugin's docs,
//! netavark#790 and podman#26092 say; hairpin needs a masquerade of DNATed traffic from the
//! container subnets; CNI's integration test checks container address, host address, 127.0.0.1
//! and hairpin per mapping), IPv4 and IPv6:
//! the host's 127.0.0.1 (needs route_localnet=1 on the link), a host address, ports bound to one
//! address, hairpin from a container to its own published port and from another link, and
//! isolation between links.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use common::{NetnsThread, enter_private_netns, nft_program, sh};
use nat::{
    Change, IfName, Nft, NftCli, PortMapping, PortRange, Proto, Ruleset, render_change,
    render_table,
};

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Connects to `addr` and returns what the server says (the peer address it saw), or the error.
fn ask(addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(1000))
        .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| e.to_string())?;
    Ok(reply)
}

/// A container: a namespace with `host0` = `addr`/28 (and an IPv6 /64) behind host link `link`,
/// serving "who are you" on port 80.
fn container(link: &str, addr: &'static str) -> NetnsThread {
    let ns = NetnsThread::new();
    // No duplicate address detection on the new links (the daemon does the same): addresses,
    // link-local ones included, are usable at once.
    ns.run(|| sh("sysctl -qw net.ipv6.conf.default.accept_dad=0"));
    let (gateway, _, gateway6) = peers_of(addr);
    sh(&format!(
        "ip link add {link} type veth peer name host0 netns {tid} && \
         ip addr add {gateway}/28 dev {link} && ip addr add {gateway6}/64 dev {link} nodad && \
         ip link set {link} up",
        tid = ns.tid()
    ));
    ns.run(move || {
        let (gateway, addr6, gateway6) = peers_of(addr);
        sh(&format!(
            "ip addr add {addr}/28 dev host0 && ip addr add {addr6}/64 dev host0 nodad && \
             ip link set host0 up && ip route add default via {gateway} && \
             ip -6 route add default via {gateway6}"
        ));
        // The listeners live in this namespace; the serving threads may be anywhere.
        serve(TcpListener::bind("0.0.0.0:80").expect("bind :80 in the container"));
        let addr6: IpAddr = addr6.parse().unwrap();
        serve(TcpListener::bind((addr6, 80)).expect("bind [addr6]:80 in the container"));
    });
    ns
}

/// Answers every connection with the address it came from.
fn serve(listener: TcpListener) {
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = conn.write_all(peer.as_bytes());
        }
    });
}

/// Host-side IPv4 address, container IPv6 address and host-side IPv6 address of a container.
fn peers_of(addr: &str) -> (&'static str, &'static str, &'static str) {
    match addr {
        "10.0.0.2" => ("10.0.0.1", "fd00:c::2", "fd00:c::1"),
        _ => ("10.0.0.17", "fd00:d::2", "fd00:d::1"),
    }
}

#[test]
fn published_ports_localhost_hairpin_and_isolation() {
    if !enter_private_netns("published_ports_localhost_hairpin_and_isolation") {
        return;
    }
    sh("sysctl -qw net.ipv6.conf.default.accept_dad=0");
    sh("ip link add uplink type veth peer name uplink-peer && \
        ip addr add 203.0.113.2/24 dev uplink && ip addr add 2001:db8::2/64 dev uplink nodad && \
        ip link set uplink-peer up && ip link set uplink up");
    let c = container("ve-c", "10.0.0.2");
    let d = container("ve-d", "10.0.0.18");
    // What the daemon does for each link (see the crate docs): forwarding, route_localnet.
    sh(
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
        net.ipv4.conf.ve-c.route_localnet=1 net.ipv4.conf.ve-d.route_localnet=1",
    );

    let ve_c = IfName::new("ve-c").unwrap();
    let ve_d = IfName::new("ve-d").unwrap();
    let port = |host: Option<IpAddr>, p: u16| {
        let range = PortRange::single(p).unwrap();
        PortMapping::new(Proto::Tcp, host, range, v4(10, 0, 0, 2), 80).unwrap()
    };
    let port6 = |host: Option<IpAddr>, p: u16| {
        let range = PortRange::single(p).unwrap();
        let c6 = "fd00:c::2".parse().unwrap();
        PortMapping::new(Proto::Tcp, host, range, c6, 80).unwrap()
    };
    let rs = Ruleset::new()
        .with(Change::AddSubnet("10.0.0.0/28".parse().unwrap()))
        .with(Change::AddSubnet("10.0.0.16/28".parse().unwrap()))
        .with(Change::AddSubnet("fd00:c::/64".parse().unwrap()))
        .with(Change::AddSubnet("fd00:d::/64".parse().unwrap()))
        .with(Change::AddPort(port6(None, 8080)))
        .with(Change::AddPort(port6(
            Some("2001:db8::2".parse().unwrap()),
            9090,
        )))
        .with(Change::AddIface(ve_c.clone()))
        .with(Change::AddIface(ve_d.clone()))
        .with(Change::AddPort(port(None, 8080)))
        .with(Change::AddPort(port(Some(v4(127, 0, 0, 1)), 9090)));
    let mut nft = NftCli::with_program(nft_program());
    nft.apply(&render_table(&rs)).unwrap();

    // The host reaches the published port on 127.0.0.1: masqueraded to the link address.
    assert_eq!(ask("127.0.0.1:8080").as_deref(), Ok("10.0.0.1"));
    // ... and on its other addresses, with its own address as source.
    assert_eq!(ask("203.0.113.2:8080").as_deref(), Ok("203.0.113.2"));
    // A port bound to 127.0.0.1 answers there, and only there.
    assert_eq!(ask("127.0.0.1:9090").as_deref(), Ok("10.0.0.1"));
    assert!(ask("203.0.113.2:9090").is_err());

    // Hairpin: the container reaches its own published port through the host address.
    let hairpin = c.run(|| ask("203.0.113.2:8080"));
    assert_eq!(hairpin.as_deref(), Ok("10.0.0.1"));
    // Another container reaches it too, through the host (DNATed traffic passes isolation).
    let other = d.run(|| ask("203.0.113.2:8080"));
    assert_eq!(other.as_deref(), Ok("10.0.0.1"));

    // IPv6: published on every address but ::1, bound to one address, hairpin.
    assert_eq!(ask("[2001:db8::2]:8080").as_deref(), Ok("2001:db8::2"));
    assert_eq!(ask("[2001:db8::2]:9090").as_deref(), Ok("2001:db8::2"));
    assert!(
        ask("[::1]:8080").is_err(),
        "::1 is not DNATed (nothing listens there)"
    );
    assert_eq!(
        c.run(|| ask("[2001:db8::2]:8080")).as_deref(),
        Ok("fd00:c::1")
    );
    // From another link too; masquerade takes the address of the link the packet leaves by.
    assert_eq!(
        d.run(|| ask("[2001:db8::2]:9090")).as_deref(),
        Ok("fd00:c::1")
    );

    // Links are isolated: d cannot reach c directly...
    assert!(d.run(|| ask("10.0.0.2:80")).is_err());
    // ... until the pair is allowed; then c sees d's own address (no masquerade inside).
    nft.apply(&render_change(&Change::AllowPair(
        ve_d.clone(),
        ve_c.clone(),
    )))
    .unwrap();
    assert_eq!(d.run(|| ask("10.0.0.2:80")).as_deref(), Ok("10.0.0.18"));
    // Directional: c still cannot open connections to d.
    assert!(c.run(|| ask("10.0.0.18:80")).is_err());
    assert!(c.run(|| ask("[fd00:d::2]:80")).is_err());

    // Without route_localnet the kernel will not send 127.0.0.1-sourced packets out of the link:
    // the daemon must set it.
    sh("sysctl -qw net.ipv4.conf.ve-c.route_localnet=0");
    assert!(ask("127.0.0.1:8080").is_err());
}
