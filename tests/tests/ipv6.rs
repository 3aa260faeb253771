//! End-to-end tests of IPv6: a `/64` per link and zone, the launcher's address and default
//! route, router advertisements (a container configured by the kernel's SLAAC alone), NAT66,
//! published ports over IPv6 and on `[::1]`, hairpin, isolation, the nft table with both
//! families, a restart keeping the `/64`, another firewall's IPv6 drop policies, and cleanup.
//! The uplink namespace has `2001:db8::1/64`, the host `2001:db8::2/64`; rnetd cuts its /64s
//! from `rig::POOL6`.

use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use rig::{
    HOST_ADDR6, POOL6, Rig, UPLINK_ADDR6, Value, hostile, in_pid_netns, netprobe, nft_element_list,
    ok, output, privileged, wait_until,
};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The peer address of a netprobe answer, without port and brackets.
fn from_addr(answer: &str) -> String {
    let peer = answer
        .trim()
        .strip_prefix("FROM ")
        .unwrap_or_else(|| panic!("bad answer {answer:?}"));
    let addr = peer.rsplit_once(':').unwrap().0;
    addr.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

fn pool6() -> ipnetwork::Ipv6Network {
    POOL6.parse().unwrap()
}

/// A string field of a machine or zone as JSON.
fn field(v: &Value, name: &str) -> String {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
        .to_owned()
}

/// The usable (not tentative) global IPv6 addresses on `host0` of the container with `pid`.
fn global6(pid: u64) -> Vec<String> {
    let out = output(in_pid_netns(pid, "ip").args([
        "-6", "-o", "addr", "show", "dev", "host0", "scope", "global",
    ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("tentative"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet6")?;
            words.next()?.split('/').next().map(str::to_owned)
        })
        .collect()
}

fn sysctl(rig: &Rig, key: &str) -> String {
    ok(rig
        .in_host("cat")
        .arg(format!("/proc/sys/{}", key.replace('.', "/"))))
}

#[test]
fn containers_reach_the_uplink_over_ipv6_masqueraded_with_dns_at_the_gateway() {
    if !privileged("containers_reach_the_uplink_over_ipv6_masqueraded_with_dns_at_the_gateway") {
        return;
    }
    let mut rig = Rig::new();
    let uplink_if = rig.uplink_ifname();
    let forwarding = "net.ipv6.conf.all.forwarding";
    let accept_ra = format!("net.ipv6.conf.{uplink_if}.accept_ra");
    let (fwd_before, ra_before) = (sysctl(&rig, forwarding), sysctl(&rig, &accept_ra));
    assert_eq!(
        ra_before.trim(),
        "1",
        "the rig's uplink takes router advertisements"
    );
    rig.start_rnetd();
    rig.spawn_ready(
        rig.in_uplink(netprobe())
            .args(["serve", "tcp:7000", "udp:7000"]),
    );
    let probe = netprobe();
    rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "c", "--", "sleep", "60"]),
    );
    let c = rig.wait_machine("c");
    let pid = c["pid"].as_u64().unwrap();
    let subnet6: ipnetwork::Ipv6Network = field(&c, "subnet6").parse().unwrap();
    assert_eq!(subnet6.prefix(), 64);
    assert!(
        pool6().contains(subnet6.network()),
        "{subnet6} not from {POOL6}"
    );
    let addr6 = field(&c, "container_address6");
    let gw6 = field(&c, "host_address6");
    // The launcher configured host0 before the payload: its address, the default route.
    assert!(
        wait_until(Duration::from_secs(5), || global6(pid).contains(&addr6)),
        "{:?}",
        global6(pid)
    );
    let routes = ok(in_pid_netns(pid, "ip").args(["-6", "route", "show", "default"]));
    assert!(routes.contains(&format!("via {gw6}")), "{routes}");
    // ping6, TCP and UDP to the uplink, which sees the host's address.
    ok(in_pid_netns(pid, "ping").args(["-6", "-c1", "-W2", UPLINK_ADDR6]));
    for proto in ["tcp", "udp"] {
        let a = ok(in_pid_netns(pid, &probe).args(["connect", proto, UPLINK_ADDR6, "7000"]));
        assert_eq!(from_addr(&a), HOST_ADDR6, "{proto}: {a}");
    }
    // DNS at the IPv6 gateway (the RDNSS of the advertisements): _gateway's AAAA.
    let dns = ok(in_pid_netns(pid, "busybox").args(["nslookup", "-type=AAAA", "_gateway", &gw6]));
    assert!(
        dns.lines()
            .any(|l| l.contains(&gw6) && l.starts_with("Address")),
        "{dns}"
    );
    // Forwarding on, the host's own router advertisements still taken (accept_ra 2).
    assert_eq!(sysctl(&rig, forwarding).trim(), "1");
    assert_eq!(sysctl(&rig, &accept_ra).trim(), "2");
    // `rnet list` and `rnet status` show both families.
    let list = ok(rig.rnet().arg("list"));
    assert!(
        list.contains(&addr6) && list.contains(&field(&c, "container_address")),
        "{list}"
    );
    let status = ok(rig.rnet().args(["status", "c"]));
    assert!(
        status.contains(&format!("Address6: {addr6} via {gw6}")),
        "{status}"
    );
    // With the container gone: nothing left, forwarding and accept_ra as they were.
    rig.signal(pid as u32, Signal::SIGTERM);
    rig.assert_all_gone();
    assert_eq!(sysctl(&rig, forwarding), fwd_before);
    assert_eq!(sysctl(&rig, &accept_ra), ra_before);
    let addrs = ok(rig.in_host("ip").args(["-6", "-o", "addr"]));
    assert!(!addrs.contains(&gw6), "gateway address left: {addrs}");
    rig.assert_no_panic();
}

#[test]
fn published_ports_over_ipv6_from_the_uplink_the_host_loopback_and_hairpin() {
    if !privileged("published_ports_over_ipv6_from_the_uplink_the_host_loopback_and_hairpin") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let probe = netprobe();
    let bound = format!("[{HOST_ADDR6}]:9000-9001:7000-7001");
    rig.spawn_ready(
        rig.rnet()
            .args([
                "run",
                "-n",
                "-M",
                "srv",
                "-p",
                "8080:80",
                "-p",
                "udp:5353:53",
                "-p",
                &bound,
                "-p",
                "[::1]:9100:80",
                "--",
            ])
            .arg(&probe)
            .args(["serve", "tcp:80", "udp:53", "tcp:7000", "tcp:7001"]),
    );
    let srv = rig.wait_machine("srv");
    let gw6 = field(&srv, "host_address6");
    // From the uplink over IPv6: the container sees the real client.
    for (proto, port) in [
        ("tcp", "8080"),
        ("udp", "5353"),
        ("tcp", "9000"),
        ("tcp", "9001"),
    ] {
        let a = ok(rig
            .in_uplink(&probe)
            .args(["connect", proto, HOST_ADDR6, port]));
        assert_eq!(from_addr(&a), UPLINK_ADDR6, "{proto} {port}");
    }
    // From the host: its IPv6 address, and [::1] (the relay: the container sees its gateway).
    ok(rig
        .in_host(&probe)
        .args(["connect", "tcp", HOST_ADDR6, "8080"]));
    for (proto, port) in [("tcp", "8080"), ("udp", "5353"), ("tcp", "9100")] {
        let a = ok(rig.in_host(&probe).args(["connect", proto, "::1", port]));
        assert_eq!(from_addr(&a), gw6, "[::1]:{port}/{proto}: {a}");
    }
    // 127.0.0.1 still works as before.
    ok(rig
        .in_host(&probe)
        .args(["connect", "tcp", "127.0.0.1", "8080"]));
    // Hairpin over IPv6: another container, and the container itself, through the host's
    // address.
    let out = output(
        rig.rnet()
            .args(["run", "-n", "-M", "peer", "--"])
            .arg(&probe)
            .args(["connect", "tcp", HOST_ADDR6, "8080"]),
    );
    assert!(out.status.success(), "hairpin failed: {}", stderr(&out));
    let pid = srv["pid"].as_u64().unwrap();
    ok(in_pid_netns(pid, &probe).args(["connect", "tcp", HOST_ADDR6, "8080"]));
    // Not published: nothing answers over IPv6 either; [::1]:9100 is only on ::1.
    assert!(
        !output(
            rig.in_uplink(&probe)
                .args(["connect", "tcp", HOST_ADDR6, "8081"])
        )
        .status
        .success()
    );
    assert!(
        !output(
            rig.in_uplink(&probe)
                .args(["connect", "tcp", HOST_ADDR6, "9100"])
        )
        .status
        .success()
    );
    // The relays go with the container.
    rig.signal(pid as u32, Signal::SIGTERM);
    rig.assert_all_gone();
    assert!(
        !output(rig.in_host(&probe).args(["connect", "tcp", "::1", "8080"]))
            .status
            .success(),
        "the [::1] relay outlived its port"
    );
    rig.assert_no_panic();
}

#[test]
fn links_and_zones_are_isolated_over_ipv6_and_zone_members_reach_each_other() {
    if !privileged("links_and_zones_are_isolated_over_ipv6_and_zone_members_reach_each_other") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let probe = netprobe();
    rig.spawn_ready(rig.in_uplink(&probe).args(["serve", "tcp:7000"]));
    for (name, net) in [("a", "-n"), ("z1", "--network-zone=lab")] {
        rig.spawn_ready(
            rig.rnet()
                .args(["run", net, "-M", name, "--"])
                .arg(&probe)
                .args(["serve", "tcp:80"]),
        );
    }
    let a6 = field(&rig.wait_machine("a"), "container_address6");
    let z1 = rig.wait_machine("z1");
    let z16 = field(&z1, "container_address6");
    // The zone's DNS forwarder answers a member's AAAA at the IPv6 gateway.
    let dns = ok(in_pid_netns(z1["pid"].as_u64().unwrap(), "busybox").args([
        "nslookup",
        "-type=AAAA",
        "z1.lab",
        &field(&z1, "host_address6"),
    ]));
    assert!(dns.contains(&z16), "{dns}");
    // The host reaches both (the servers are there).
    ok(rig.in_host(&probe).args(["connect", "tcp", &a6, "80"]));
    ok(rig.in_host(&probe).args(["connect", "tcp", &z16, "80"]));
    let p = probe.display();
    let script = |targets: &[&str]| {
        let mut s = String::new();
        for t in targets {
            s.push_str(&format!(
                "ping -6 -c1 -W1 {t} >/dev/null 2>&1 && echo PING {t}; {p} connect tcp {t} 80 >/dev/null 2>&1 && echo TCP {t}; "
            ));
        }
        s.push_str(&format!(
            "{p} connect tcp {UPLINK_ADDR6} 7000 >/dev/null && echo UPLINK"
        ));
        s
    };
    // A ve- container reaches neither over IPv6, but the uplink (the positive control).
    let out = ok(rig.rnet().args([
        "run",
        "-n",
        "-M",
        "b",
        "--",
        "sh",
        "-c",
        &script(&[&a6, &z16]),
    ]));
    assert_eq!(out, "UPLINK\n", "b reached another link: {out}");
    // A member of another zone neither.
    let out = ok(rig.rnet().args([
        "run",
        "--network-zone=other",
        "-M",
        "o",
        "--",
        "sh",
        "-c",
        &script(&[&a6, &z16]),
    ]));
    assert_eq!(out, "UPLINK\n", "o reached another link: {out}");
    // A member of the same zone reaches z1 (inside a zone members talk).
    let out = ok(rig.rnet().args([
        "run",
        "--network-zone=lab",
        "-M",
        "z2",
        "--",
        "sh",
        "-c",
        &script(&[&z16]),
    ]));
    assert_eq!(out, format!("PING {z16}\nTCP {z16}\nUPLINK\n"), "z2: {out}");
    rig.assert_no_panic();
}

/// Attaches a veth to the network namespace of `pid` through the API, as `rnet run` would,
/// but leaves `host0` unconfigured.
fn attach_raw(rig: &Rig, name: &str, pid: u32) -> Value {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    let req = netd::api::Request::Attach(netd::api::AttachRequest {
        machine: netd::api::MachineName::new(name).unwrap(),
        pid,
        network: netd::api::NetworkSpec::Veth,
        ports: vec![],
        links: vec![],
        held: None,
        init: Default::default(),
        ipv6: true,
    });
    let answer = rig.client().call(&req, Some(ns.as_fd())).expect("attach");
    serde_json::to_value(answer).unwrap()["attached"].clone()
}

#[test]
fn the_kernels_slaac_alone_configures_a_container_from_our_router_advertisements() {
    if !privileged("the_kernels_slaac_alone_configures_a_container_from_our_router_advertisements")
    {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    // A payload that only waits, in a namespace of its own: nobody configures host0 but its
    // kernel (accept_ra=1, forwarding=0 are a new namespace's defaults).
    let pid = rig.spawn(Command::new("unshare").args(["--net", "sleep", "120"]));
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
                != std::fs::read_link("/proc/self/ns/net").ok()
        }),
        "unshare did not run"
    );
    let m = attach_raw(&rig, "slaac", pid);
    let net6: ipnetwork::Ipv6Network = field(&m, "subnet6").parse().unwrap();
    let expected = field(&m, "container_address6");
    let gw_mac = field(&m, "host_mac");
    ok(in_pid_netns(u64::from(pid), "ip").args(["link", "set", "host0", "up"]));
    let got = wait_until(Duration::from_secs(20), || {
        global6(u64::from(pid)).contains(&expected)
    });
    assert!(
        got,
        "no address from the advertisements: {:?}; rnetd log:\n{}",
        global6(u64::from(pid)),
        rig.log()
    );
    assert!(net6.contains(expected.parse().unwrap()));
    // The default route came from the advertisement: via our link-local address.
    let route = ok(in_pid_netns(u64::from(pid), "ip").args(["-6", "route", "show", "default"]));
    assert!(
        route.contains("via fe80::") && route.contains("proto ra"),
        "{route}"
    );
    let neigh =
        ok(in_pid_netns(u64::from(pid), "ip").args(["-6", "neigh", "show", "dev", "host0"]));
    assert!(
        neigh.contains(&gw_mac) || route.contains("fe80::"),
        "{neigh}"
    );
    // And it works: the uplink over IPv6.
    ok(in_pid_netns(u64::from(pid), "ping").args(["-6", "-c1", "-W2", UPLINK_ADDR6]));
    rig.signal(pid, Signal::SIGKILL);
    rig.assert_all_gone();
    rig.assert_no_panic();
}

#[test]
fn the_table_has_both_families_and_a_restart_keeps_the_64_and_the_traffic() {
    if !privileged("the_table_has_both_families_and_a_restart_keeps_the_64_and_the_traffic") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    rig.spawn(rig.rnet().args([
        "run", "-n", "-M", "c", "-p", "8080:80", "--", "sleep", "120",
    ]));
    let c = rig.wait_machine("c");
    let pid = c["pid"].as_u64().unwrap();
    let table = rig.nft_table().expect("table");
    let elems = |name: &str| -> Vec<String> {
        nft_element_list(&table, name)
            .iter()
            .map(|e| e.to_string())
            .collect()
    };
    let subnet6 = field(&c, "subnet6");
    let (net, len) = subnet6.split_once('/').unwrap();
    // A veth's /28 and /64 are hash-set elements: their network addresses.
    assert_eq!(elems("masq4_28").len(), 1, "{:?}", elems("masq4_28"));
    assert_eq!(len, "64");
    assert_eq!(elems("masq6_64"), vec![format!("{net:?}")]);
    assert!(elems("masq4").is_empty() && elems("masq6").is_empty());
    assert_eq!(elems("ports4_addr").len(), 1);
    assert_eq!(elems("ports6_addr").len(), 1);
    assert!(elems("ports6_addr")[0].contains(&field(&c, "container_address6")));
    // rnetd restarts: the /64 is adopted, the container's IPv6 keeps working.
    rig.stop_rnetd(Signal::SIGTERM);
    ok(in_pid_netns(pid, "ping").args(["-6", "-c1", "-W2", UPLINK_ADDR6]));
    rig.start_rnetd();
    let after = rig.wait_machine("c");
    assert_eq!(field(&after, "subnet6"), subnet6);
    assert_eq!(
        field(&after, "container_address6"),
        field(&c, "container_address6")
    );
    ok(in_pid_netns(pid, "ping").args(["-6", "-c1", "-W2", UPLINK_ADDR6]));
    // A new machine after the restart gets another /64.
    rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "d", "--", "sleep", "120"]),
    );
    let d = rig.wait_machine("d");
    assert_ne!(field(&d, "subnet6"), subnet6);
    rig.signal(pid as u32, Signal::SIGTERM);
    rig.signal(d["pid"].as_u64().unwrap() as u32, Signal::SIGTERM);
    rig.assert_all_gone();
    rig.assert_no_panic();
}

/// Docker-like IPv6: `ip6tables -P FORWARD DROP` (iptables-nft), and a hardened `ip6` input
/// chain with policy drop that takes replies and, from the uplink `UPLINK` only, neighbour
/// discovery (RFC 4890 section 4.4.1: without it the host is unreachable over IPv6).
const FOREIGN6: &str = "ip6tables -P FORWARD DROP && \
    nft add table ip6 hardened && \
    nft add chain ip6 hardened input '{ type filter hook input priority 0; policy drop; }' && \
    nft add rule ip6 hardened input ct state established,related accept && \
    nft add rule ip6 hardened input iifname UPLINK icmpv6 type '{ nd-neighbor-solicit, nd-neighbor-advert }' accept";

#[test]
fn ipv6_passes_another_firewalls_drop_policies() {
    if !privileged("ipv6_passes_another_firewalls_drop_policies") {
        return;
    }
    let mut rig = Rig::new();
    rig.host_sh(&FOREIGN6.replace("UPLINK", &rig.uplink_ifname()));
    rig.start_rnetd();
    let probe = netprobe();
    rig.spawn_ready(rig.in_uplink(&probe).args(["serve", "tcp:7000"]));
    rig.spawn_ready(
        rig.rnet()
            .args(["run", "-n", "-M", "srv", "-p", "8080:80", "--"])
            .arg(&probe)
            .args(["serve", "tcp:80"]),
    );
    let srv = rig.wait_machine("srv");
    let pid = srv["pid"].as_u64().unwrap();
    let gw6 = field(&srv, "host_address6");
    let foreign = rig.our_foreign_rules();
    assert!(
        foreign
            .iter()
            .any(|r| r.contains("ip6 hardened input: rnet: ICMPv6 from our links")),
        "{foreign:?}"
    );
    // Egress over IPv6 (neighbour discovery of the gateway passes the input chain).
    let a = ok(in_pid_netns(pid, &probe).args(["connect", "tcp", UPLINK_ADDR6, "7000"]));
    assert_eq!(from_addr(&a), HOST_ADDR6);
    // A published port over IPv6 from the uplink.
    ok(rig
        .in_uplink(&probe)
        .args(["connect", "tcp", HOST_ADDR6, "8080"]));
    // DNS over IPv6 to the gateway.
    let dns = ok(in_pid_netns(pid, "busybox").args(["nslookup", "-type=AAAA", "_gateway", &gw6]));
    assert!(dns.contains(&gw6), "{dns}");
    // A router solicitation is answered through the input chain: a fresh SLAAC container.
    let sleeper = rig.spawn(Command::new("unshare").args(["--net", "sleep", "120"]));
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_link(format!("/proc/{sleeper}/ns/net")).ok()
            != std::fs::read_link("/proc/self/ns/net").ok()
    }));
    let m = attach_raw(&rig, "slaac", sleeper);
    let expected = field(&m, "container_address6");
    ok(in_pid_netns(u64::from(sleeper), "ip").args(["link", "set", "host0", "up"]));
    assert!(
        wait_until(Duration::from_secs(20), || global6(u64::from(sleeper))
            .contains(&expected)),
        "no SLAAC through the hardened chain"
    );
    // The control: with --host-firewall=off the same traffic is dropped.
    rig.stop_rnetd(Signal::SIGTERM);
    rig.start_rnetd_with(&["--host-firewall=off"]);
    assert!(wait_until(Duration::from_secs(5), || rig
        .our_foreign_rules()
        .is_empty()));
    assert!(
        !output(in_pid_netns(pid, &probe).args(["connect", "tcp", UPLINK_ADDR6, "7000"]))
            .status
            .success(),
        "the control: IPv6 egress passed a FORWARD DROP without our rules"
    );
    rig.signal(pid as u32, Signal::SIGTERM);
    rig.signal(sleeper, Signal::SIGKILL);
    rig.assert_all_gone();
    rig.assert_no_panic();
}

#[test]
fn ipv6_is_off_per_machine_and_per_daemon() {
    if !privileged("ipv6_is_off_per_machine_and_per_daemon") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "four", "--ipv6=no", "--", "sleep", "60"]),
    );
    let four = rig.wait_machine("four");
    assert!(four.get("subnet6").is_none(), "{four}");
    let pid = four["pid"].as_u64().unwrap();
    let off = || ok(in_pid_netns(pid, "cat").arg("/proc/sys/net/ipv6/conf/host0/disable_ipv6"));
    assert!(
        wait_until(Duration::from_secs(5), || off().trim() == "1"),
        "IPv6 still on in the container"
    );
    rig.signal(pid as u32, Signal::SIGTERM);
    rig.assert_all_gone();
    rig.stop_rnetd(Signal::SIGTERM);
    // rnetd without IPv6: no /64, no IPv6 elements, forwarding untouched.
    let fwd = sysctl(&rig, "net.ipv6.conf.all.forwarding");
    rig.start_rnetd_with(&["--ipv6=no"]);
    rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "v4", "--", "sleep", "60"]),
    );
    let v4 = rig.wait_machine("v4");
    assert!(v4.get("subnet6").is_none(), "{v4}");
    let table = rig.nft_table().unwrap();
    assert!(nft_element_list(&table, "masq6").is_empty());
    assert!(nft_element_list(&table, "masq6_64").is_empty());
    assert_eq!(nft_element_list(&table, "masq4_28").len(), 1);
    assert_eq!(sysctl(&rig, "net.ipv6.conf.all.forwarding"), fwd);
    rig.signal(v4["pid"].as_u64().unwrap() as u32, Signal::SIGTERM);
    rig.assert_all_gone();
    rig.assert_no_panic();
}

/// Datagrams the uplink received on udp `port` (an nft counter in its own table there).
fn uplink_count(rig: &Rig, port: u16) -> u64 {
    let out = ok(rig
        .in_uplink("nft")
        .args(["-j", "list", "table", "ip6", "count"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["expr"].to_string().contains(&format!("\"right\":{port}")))
        .filter_map(|r| {
            r["expr"]
                .as_array()?
                .iter()
                .find_map(|e| e["counter"]["packets"].as_u64())
        })
        .sum()
}

#[test]
fn spoofed_ipv6_sources_from_a_container_are_dropped() {
    if !privileged("spoofed_ipv6_sources_from_a_container_are_dropped") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    // The uplink counts what arrives on udp 7001..7004.
    ok(rig.in_uplink("sh").args([
        "-c",
        "nft add table ip6 count && \
         nft add chain ip6 count input '{ type filter hook input priority 0; }' && \
         for p in 7001 7002 7003 7004; do nft add rule ip6 count input udp dport $p counter; done",
    ]));
    rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "x", "--", "sleep", "60"]),
    );
    rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "y", "--", "sleep", "60"]),
    );
    let x = rig.wait_machine("x");
    let y = rig.wait_machine("y");
    let pid = x["pid"].as_u64().unwrap();
    let own = field(&x, "container_address6");
    assert!(wait_until(Duration::from_secs(5), || global6(pid).contains(&own)));
    // x claims y's address, the host's, and a random one (the kernel's own reverse-path filter
    // has no IPv6 counterpart: only rnet's rule can drop them).
    let spoofs = [
        field(&y, "container_address6"),
        HOST_ADDR6.to_owned(),
        "2001:db8:99::7".to_owned(),
    ];
    for (i, src) in spoofs.iter().enumerate() {
        ok(in_pid_netns(pid, "ip").args([
            "-6",
            "addr",
            "add",
            &format!("{src}/128"),
            "dev",
            "host0",
            "nodad",
        ]));
        let port = (7002 + i).to_string();
        ok(in_pid_netns(pid, hostile()).args(["udp", src, UPLINK_ADDR6, &port]));
    }
    // The control: from its own address, the uplink gets the datagrams.
    ok(in_pid_netns(pid, hostile()).args(["udp", &own, UPLINK_ADDR6, "7001"]));
    assert!(
        wait_until(Duration::from_secs(5), || uplink_count(&rig, 7001) == 3),
        "the control did not arrive: {}",
        uplink_count(&rig, 7001)
    );
    for port in 7002..=7004 {
        assert_eq!(
            uplink_count(&rig, port),
            0,
            "a spoof reached the uplink (udp {port})"
        );
    }
    rig.assert_no_panic();
}
