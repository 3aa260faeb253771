//! End-to-end tests of NAT, forwarding and port mapping (table `inet rnet`), checked with real
//! traffic at the other end: the uplink namespace plays the internet.

use std::time::Duration;

use nix::sys::signal::Signal;
use rig::{
    HOST_ADDR, Rig, UPLINK_ADDR, in_pid_netns, netprobe, nft_elements, nft_rules, ok, output,
    privileged, wait_until,
};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The peer address a netprobe answer reports (without the port).
fn from_addr(answer: &str) -> String {
    let peer = answer
        .trim()
        .strip_prefix("FROM ")
        .unwrap_or_else(|| panic!("bad answer {answer:?}"));
    peer.rsplit_once(':').unwrap().0.to_owned()
}

#[test]
fn containers_reach_the_uplink_masqueraded_and_the_table_goes_with_the_last() {
    if !privileged("containers_reach_the_uplink_masqueraded_and_the_table_goes_with_the_last") {
        return;
    }
    let mut rig = Rig::new();
    let forward_before = ok(rig.in_host("cat").arg("/proc/sys/net/ipv4/ip_forward"));
    rig.start_rnetd();
    rig.spawn_ready(
        rig.in_uplink(netprobe())
            .args(["serve", "tcp:7000", "udp:7000"]),
    );
    let probe = netprobe();
    let script = format!(
        "ping -c1 -W2 {UPLINK_ADDR} >/dev/null && {p} connect tcp {UPLINK_ADDR} 7000 && {p} connect udp {UPLINK_ADDR} 7000",
        p = probe.display()
    );
    let out = output(
        rig.rnet()
            .args(["run", "-n", "-M", "client", "--", "sh", "-c", &script]),
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), rig.log());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    // The uplink sees the host's uplink address, not the container's.
    for l in lines {
        assert_eq!(from_addr(l), HOST_ADDR, "{l}");
    }
    // With the last container gone, nothing of ours remains, forwarding is as it was.
    assert!(
        wait_until(Duration::from_secs(5), || rig.nft_table().is_none()),
        "table left"
    );
    assert_eq!(
        ok(rig.in_host("cat").arg("/proc/sys/net/ipv4/ip_forward")),
        forward_before
    );
}

#[test]
fn published_ports_work_from_uplink_localhost_host_address_and_hairpin() {
    if !privileged("published_ports_work_from_uplink_localhost_host_address_and_hairpin") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let probe = netprobe();
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
                "203.0.113.2:9000-9001:7000-7001",
                "--",
            ])
            .arg(&probe)
            .args(["serve", "tcp:80", "udp:53", "tcp:7000", "tcp:7001"]),
    );
    let srv = rig.wait_machine("srv");

    // From the uplink: tcp and udp, the container sees the real client address.
    let a = ok(rig
        .in_uplink(&probe)
        .args(["connect", "tcp", HOST_ADDR, "8080"]));
    assert_eq!(from_addr(&a), UPLINK_ADDR);
    let a = ok(rig
        .in_uplink(&probe)
        .args(["connect", "udp", HOST_ADDR, "5353"]));
    assert_eq!(from_addr(&a), UPLINK_ADDR);
    // A range bound to one host address, shifted 1:1.
    ok(rig
        .in_uplink(&probe)
        .args(["connect", "tcp", HOST_ADDR, "9000"]));
    ok(rig
        .in_uplink(&probe)
        .args(["connect", "tcp", HOST_ADDR, "9001"]));
    // From the host itself: its own address and 127.0.0.1 (systemd #6106).
    ok(rig
        .in_host(&probe)
        .args(["connect", "tcp", HOST_ADDR, "8080"]));
    ok(rig
        .in_host(&probe)
        .args(["connect", "tcp", "127.0.0.1", "8080"]));
    ok(rig
        .in_host(&probe)
        .args(["connect", "udp", "127.0.0.1", "5353"]));
    // Hairpin: another container reaching the published port through the host's address.
    let out = output(
        rig.rnet()
            .args(["run", "-n", "-M", "peer", "--"])
            .arg(&probe)
            .args(["connect", "tcp", HOST_ADDR, "8080"]),
    );
    assert!(out.status.success(), "hairpin failed: {}", stderr(&out));
    // The container itself through the host's address.
    let pid = srv["pid"].as_u64().unwrap();
    ok(in_pid_netns(pid, &probe).args(["connect", "tcp", HOST_ADDR, "8080"]));
    // Not published: nothing answers.
    let out = output(
        rig.in_uplink(&probe)
            .args(["connect", "tcp", HOST_ADDR, "8081"]),
    );
    assert!(!out.status.success());
}

#[test]
fn containers_cannot_reach_each_other() {
    if !privileged("containers_cannot_reach_each_other") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let probe = netprobe();
    rig.spawn_ready(
        rig.rnet()
            .args(["run", "-n", "-M", "a", "--"])
            .arg(&probe)
            .args(["serve", "tcp:80"]),
    );
    let a = rig.wait_machine("a");
    let a_addr = a["container_address"].as_str().unwrap();
    // The host reaches a (sanity: the server is there).
    ok(rig.in_host(&probe).args(["connect", "tcp", a_addr, "80"]));
    let script = format!(
        "ping -c1 -W1 {a_addr} >/dev/null 2>&1 && echo PING; {} connect tcp {a_addr} 80 && echo TCP; ping -c1 -W2 {UPLINK_ADDR} >/dev/null && echo UPLINK",
        probe.display()
    );
    let out = ok(rig
        .rnet()
        .args(["run", "-n", "-M", "b", "--", "sh", "-c", &script]));
    // b itself works (it reaches the uplink) but not a.
    assert_eq!(out, "UPLINK\n", "b reached a: {out}");
}

#[test]
fn ten_containers_cost_elements_not_rules() {
    if !privileged("ten_containers_cost_elements_not_rules") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let mut launchers = Vec::new();
    launchers.push(rig.spawn(rig.rnet().args([
        "run", "-n", "-M", "c0", "-p", "8000:80", "--", "sleep", "60",
    ])));
    rig.wait_machine("c0");
    let one = rig.nft_table().expect("table after one container");
    for i in 1..10 {
        let port = format!("{}:80", 8000 + i);
        let name = format!("c{i}");
        launchers.push(
            rig.spawn(
                rig.rnet()
                    .args(["run", "-n", "-M", &name, "-p", &port, "--", "sleep", "60"]),
            ),
        );
    }
    for i in 1..10 {
        rig.wait_machine(&format!("c{i}"));
    }
    let ten = rig.nft_table().expect("table after ten containers");
    assert!(nft_rules(&one) > 0);
    assert_eq!(nft_rules(&one), nft_rules(&ten));
    assert_eq!(nft_elements(&one, "masq4_28"), 1);
    assert_eq!(nft_elements(&ten, "masq4_28"), 10);
    assert_eq!(nft_elements(&ten, "ifaces"), 10);
    assert_eq!(nft_elements(&ten, "ports4_addr"), 10);
    // One container going takes exactly its elements with it.
    let first = launchers.remove(0);
    rig.signal(first, Signal::SIGTERM);
    rig.wait(first);
    let nine = rig.nft_table().expect("table with nine containers");
    assert_eq!(nft_rules(&nine), nft_rules(&one));
    assert_eq!(nft_elements(&nine, "masq4_28"), 9);
    assert_eq!(nft_elements(&nine, "ports4_addr"), 9);
    assert_eq!(nft_elements(&nine, "ports4_port"), 9);
    for l in launchers {
        rig.signal(l, Signal::SIGTERM);
        rig.wait(l);
    }
    assert!(
        rig.nft_table().is_none(),
        "table left after the last container"
    );
}

#[test]
fn a_flushed_ruleset_is_rebuilt_with_every_element() {
    if !privileged("a_flushed_ruleset_is_rebuilt_with_every_element") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let probe = netprobe();
    rig.spawn_ready(
        rig.rnet()
            .args(["run", "-n", "-M", "kept", "-p", "8080:80", "--"])
            .arg(&probe)
            .args(["serve", "tcp:80"]),
    );
    rig.wait_machine("kept");
    ok(rig
        .in_uplink(&probe)
        .args(["connect", "tcp", HOST_ADDR, "8080"]));
    let before = rig.nft_table().unwrap();
    ok(rig.in_host("nft").args(["flush", "ruleset"]));
    // No look at the table in between: rnetd's `nft monitor` watch may have rebuilt it already.
    assert!(
        wait_until(Duration::from_secs(10), || rig
            .nft_table()
            .is_some_and(|t| nft_elements(&t, "ports4_addr") == 1)),
        "table not rebuilt; log:\n{}",
        rig.log()
    );
    let after = rig.nft_table().unwrap();
    assert_eq!(nft_rules(&before), nft_rules(&after));
    assert_eq!(nft_elements(&after, "masq4_28"), 1);
    ok(rig
        .in_uplink(&probe)
        .args(["connect", "tcp", HOST_ADDR, "8080"]));
    assert!(rig.log().contains("rebuilt"), "{}", rig.log());
}

#[test]
fn a_taken_host_port_is_refused_and_ports_need_a_veth() {
    if !privileged("a_taken_host_port_is_refused_and_ports_need_a_veth") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let first = rig.spawn(rig.rnet().args([
        "run", "-n", "-M", "owner", "-p", "8080:80", "--", "sleep", "60",
    ]));
    rig.wait_machine("owner");
    let out = output(
        rig.rnet()
            .args(["run", "-n", "-M", "late", "-p", "8000-8090", "--", "true"]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "rnet: host port tcp:8000-8090:8000-8090 is already published by machine owner (tcp:8080:80)\n"
    );
    assert!(!rig.host_has_link("ve-late"));
    assert_eq!(rig.machines().len(), 1);
    let out = output(rig.rnet().args(["run", "-p", "80", "--", "true"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "rnet: --port needs --network-veth (a private network with a link to publish to)\n"
    );
    let out = output(rig.rnet().args(["run", "-n", "-p", "0", "--", "true"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("port 0 is not a port"),
        "{}",
        stderr(&out)
    );
    rig.signal(first, Signal::SIGTERM);
    rig.wait(first);
    assert!(rig.nft_table().is_none());
}
