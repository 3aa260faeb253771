//! End-to-end tests of zones (`--network-zone`, `rnet zone`) and admin bridges
//! (`--network-bridge`), with real traffic and a real DHCP client and server.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use rig::{
    HOST_ADDR, Rig, UPLINK_ADDR, Value, in_pid_netns, netprobe, ok, output, privileged, wait_until,
};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn zones(rig: &Rig) -> Vec<Value> {
    serde_json::from_str(&ok(rig.rnet().args(["zone", "list", "--json"]))).unwrap()
}

fn zone<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|z| z["name"] == name)
}

/// A udhcpc script that applies the lease with `ip` (never touching /etc/resolv.conf, which
/// containers share with the host) and prints it.
fn udhcpc_script(dir: &Path) -> String {
    let path = dir.join("udhcpc.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\ncase \"$1\" in bound|renew)\n  ip addr add \"$ip/$mask\" dev \"$interface\"\n  \
         [ -n \"$router\" ] && ip route replace default via \"$router\"\n  echo \"LEASE $ip/$mask $router\";;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// A shell snippet that replaces the launcher's static configuration of host0 with a lease
/// from a real DHCP client.
fn dhcp_client(script: &str) -> String {
    format!(
        "ip addr flush dev host0 && ip route flush dev host0 && udhcpc -i host0 -n -q -f -t 5 -T 1 -s {script}"
    )
}

#[test]
fn three_members_share_a_zone_reach_each_other_and_the_uplink() {
    if !privileged("three_members_share_a_zone_reach_each_other_and_the_uplink") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let tmp = tempfile::tempdir().unwrap();
    let probe = netprobe();
    rig.spawn_ready(rig.in_uplink(&probe).args(["serve", "tcp:7000"]));
    rig.spawn_ready(
        rig.rnet()
            .args(["run", "--network-zone=web", "-M", "a", "--"])
            .arg(&probe)
            .args(["serve", "tcp:80"]),
    );
    rig.spawn_ready(
        rig.rnet()
            .args(["run", "--network-zone=web", "-M", "b", "--"])
            .arg(&probe)
            .args(["serve", "tcp:80"]),
    );
    let (a, b) = (rig.wait_machine("a"), rig.wait_machine("b"));
    // The zone was created implicitly with its first member.
    let list = zones(&rig);
    let z = zone(&list, "web").expect("zone web");
    assert_eq!(z["bridge"], "vz-web");
    assert_eq!(z["explicit"], false);
    assert!(z["subnet"].as_str().unwrap().ends_with("/24"));
    assert_eq!(a["host_ifname"], "vb-a");
    let link = rig.host_ip(&["link", "show", "dev", "vb-a"]);
    assert_eq!(link[0]["master"], "vz-web");

    // The third member configures itself with a real DHCP client.
    let a_addr = a["container_address"].as_str().unwrap();
    let b_addr = b["container_address"].as_str().unwrap();
    let script = format!(
        "{} && {p} connect tcp {a_addr} 80 && {p} connect tcp {b_addr} 80 && {p} connect tcp {UPLINK_ADDR} 7000",
        dhcp_client(&udhcpc_script(tmp.path())),
        p = probe.display()
    );
    let out = output(rig.rnet().args([
        "run",
        "--network-zone=web",
        "-M",
        "c",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}\n{}",
        stderr(&out),
        rig.log()
    );
    let lease = text.lines().find(|l| l.starts_with("LEASE ")).unwrap();
    let c_addr = lease
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let gateway = a["host_address"].as_str().unwrap();
    assert_eq!(lease, format!("LEASE {c_addr}/24 {gateway}"));
    let mut addrs = vec![a_addr, b_addr, c_addr];
    addrs.sort();
    addrs.dedup();
    assert_eq!(
        addrs.len(),
        3,
        "addresses not distinct: {a_addr} {b_addr} {c_addr}"
    );
    // c saw a and b (their own address as source: bridged, not NATed), the uplink saw the host.
    let answers: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(answers.len(), 3, "{text}");
    assert!(answers[0].starts_with(&format!("FROM {c_addr}:")), "{text}");
    assert!(
        answers[2].starts_with(&format!("FROM {HOST_ADDR}:")),
        "{text}"
    );
    // a and b reach each other too.
    let pid = a["pid"].as_u64().unwrap();
    ok(in_pid_netns(pid, &probe).args(["connect", "tcp", b_addr, "80"]));
}

#[test]
fn implicit_zones_go_with_their_last_member_explicit_ones_stay_and_survive_restarts() {
    if !privileged(
        "implicit_zones_go_with_their_last_member_explicit_ones_stay_and_survive_restarts",
    ) {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    // Implicit: gone with the last member.
    ok(rig.rnet().args(["run", "--network-zone=tmp", "--", "true"]));
    assert!(!rig.host_has_link("vz-tmp"));
    assert!(zones(&rig).is_empty());

    // Explicit, with a fixed subnet and flags.
    let out = ok(rig.rnet().args([
        "zone",
        "create",
        "keep",
        "--subnet",
        "10.42.0.0/24",
        "--no-masquerade",
    ]));
    assert_eq!(
        out,
        "zone keep created: bridge vz-keep, subnet 10.42.0.0/24\n"
    );
    assert!(rig.host_has_link("vz-keep"));
    let m = rig.spawn(rig.rnet().args([
        "run",
        "--network-zone=keep",
        "-M",
        "member",
        "--",
        "sleep",
        "60",
    ]));
    let member = rig.wait_machine("member");
    assert!(
        member["container_address"]
            .as_str()
            .unwrap()
            .starts_with("10.42.0.")
    );
    let list = zones(&rig);
    let z = zone(&list, "keep").unwrap();
    assert_eq!(z["members"], serde_json::json!(["member"]));
    assert_eq!(z["explicit"], true);
    assert_eq!(z["masquerade"], false);
    assert_eq!(z["leases"], 1);
    // Deleting a zone with members is refused without --force.
    let out = output(rig.rnet().args(["zone", "delete", "keep"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "rnet: zone keep has 1 member(s) (member); stop them first or use --force\n"
    );
    rig.signal(m, Signal::SIGTERM);
    rig.wait(m);
    assert!(
        rig.host_has_link("vz-keep"),
        "explicit zone removed with its last member"
    );

    // A restart keeps it.
    rig.stop_rnetd(Signal::SIGTERM);
    rig.start_rnetd();
    let list = zones(&rig);
    let z = zone(&list, "keep").expect("explicit zone lost in a restart");
    assert_eq!(z["subnet"], "10.42.0.0/24");
    // So does a "reboot": runtime state and bridge gone, the state directory kept.
    rig.stop_rnetd(Signal::SIGKILL);
    ok(rig.in_host("ip").args(["link", "del", "vz-keep"]));
    std::fs::remove_dir_all(rig.runtime_dir()).unwrap();
    rig.start_rnetd();
    assert!(rig.host_has_link("vz-keep"));
    let list = zones(&rig);
    assert_eq!(zone(&list, "keep").unwrap()["subnet"], "10.42.0.0/24");

    // Refusals: overlapping subnet, too-long name, duplicate.
    let out = output(
        rig.rnet()
            .args(["zone", "create", "clash", "--subnet", "203.0.113.0/24"]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "rnet: subnet 203.0.113.0/24 overlaps 203.0.113.2/24, which is in use\n"
    );
    let out = output(rig.rnet().args(["zone", "create", "thirteen-char"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("must be 1 to 12 characters"),
        "{}",
        stderr(&out)
    );
    let out = output(
        rig.rnet()
            .args(["run", "--network-zone=thirteen-char", "--", "true"]),
    );
    assert_eq!(out.status.code(), Some(2));
    let out = output(rig.rnet().args(["zone", "create", "keep"]));
    assert_eq!(stderr(&out), "rnet: zone keep already exists\n");

    // --force detaches members cleanly.
    let m = rig.spawn(rig.rnet().args([
        "run",
        "--network-zone=keep",
        "-M",
        "late",
        "--",
        "sleep",
        "60",
    ]));
    rig.wait_machine("late");
    ok(rig.rnet().args(["zone", "delete", "keep", "--force"]));
    assert!(!rig.host_has_link("vz-keep") && !rig.host_has_link("vb-late"));
    // rnetd holds nothing of it; the machine still runs (listed from the machine registry),
    // without its link.
    assert!(rig.machines().is_empty() && zones(&rig).is_empty());
    let listed = ok(rig.rnet().args(["list", "--json"]));
    let listed: Vec<rig::Value> = serde_json::from_str(&listed).unwrap();
    assert!(
        listed.len() == 1 && listed[0]["machine"] == "late" && listed[0]["host_ifname"].is_null(),
        "{listed:?}"
    );
    rig.signal(m, Signal::SIGTERM);
    rig.wait(m);
    assert!(rig.nft_table().is_none());
}

#[test]
fn zones_are_isolated_from_each_other_and_isolated_zones_from_their_members() {
    if !privileged("zones_are_isolated_from_each_other_and_isolated_zones_from_their_members") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let probe = netprobe();
    rig.spawn_ready(rig.in_uplink(&probe).args(["serve", "tcp:7000"]));
    rig.spawn_ready(
        rig.rnet()
            .args(["run", "--network-zone=red", "-M", "red1", "--"])
            .arg(&probe)
            .args(["serve", "tcp:80"]),
    );
    let red = rig.wait_machine("red1");
    let red_addr = red["container_address"].as_str().unwrap();
    // From another zone: not reachable; the uplink is.
    let script = format!(
        "{p} connect tcp {red_addr} 80 && echo REACHED; {p} connect tcp {UPLINK_ADDR} 7000 >/dev/null && echo UPLINK",
        p = probe.display()
    );
    let out = ok(rig
        .rnet()
        .args(["run", "--network-zone=blue", "--", "sh", "-c", &script]));
    assert_eq!(out, "UPLINK\n");
    // From a ve- container: not reachable either.
    let out = ok(rig.rnet().args(["run", "-n", "--", "sh", "-c", &script]));
    assert_eq!(out, "UPLINK\n");

    // An isolated zone: members cannot reach each other, but reach the uplink.
    ok(rig.rnet().args(["zone", "create", "iso", "--isolated"]));
    rig.spawn_ready(
        rig.rnet()
            .args(["run", "--network-zone=iso", "-M", "iso1", "--"])
            .arg(&probe)
            .args(["serve", "tcp:80"]),
    );
    let iso = rig.wait_machine("iso1");
    let iso_addr = iso["container_address"].as_str().unwrap();
    ok(rig.in_host(&probe).args(["connect", "tcp", iso_addr, "80"]));
    let script = format!(
        "{p} connect tcp {iso_addr} 80 && echo REACHED; {p} connect tcp {UPLINK_ADDR} 7000 >/dev/null && echo UPLINK",
        p = probe.display()
    );
    let out = ok(rig
        .rnet()
        .args(["run", "--network-zone=iso", "--", "sh", "-c", &script]));
    assert_eq!(out, "UPLINK\n");
    // A plain zone's members do reach each other (the control).
    let script = format!(
        "{} connect tcp {red_addr} 80 >/dev/null && echo REACHED",
        probe.display()
    );
    let out = ok(rig
        .rnet()
        .args(["run", "--network-zone=red", "--", "sh", "-c", &script]));
    assert_eq!(out, "REACHED\n");
}

#[test]
fn an_admin_bridge_member_gets_its_lease_from_the_admins_dhcp_server() {
    if !privileged("an_admin_bridge_member_gets_its_lease_from_the_admins_dhcp_server") {
        return;
    }
    if !Path::new("/usr/sbin/dnsmasq").exists() {
        if std::env::var("RNET_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("dnsmasq is not installed");
        }
        eprintln!(
            "SKIP an_admin_bridge_member_gets_its_lease_from_the_admins_dhcp_server: no dnsmasq"
        );
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let tmp = tempfile::tempdir().unwrap();
    let br = format!("{}br", rig.prefix);
    ok(rig
        .in_host("ip")
        .args(["link", "add", &br, "type", "bridge"]));
    ok(rig
        .in_host("ip")
        .args(["addr", "add", "10.77.0.1/24", "dev", &br]));
    ok(rig.in_host("ip").args(["link", "set", &br, "up"]));
    let leases = tmp.path().join("dnsmasq.leases");
    rig.spawn(
        rig.in_host("dnsmasq")
            .args([
                "--no-daemon",
                "--port=0",
                "--bind-interfaces",
                "--conf-file=/dev/null",
                "--no-resolv",
            ])
            .arg(format!("--interface={br}"))
            .arg("--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,1h")
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!(
                "--pid-file={}",
                tmp.path().join("dnsmasq.pid").display()
            )),
    );
    assert!(
        wait_until(Duration::from_secs(5), || leases.exists()),
        "dnsmasq did not start"
    );

    let script = format!(
        "udhcpc -i host0 -n -q -f -t 5 -T 1 -s {}",
        udhcpc_script(tmp.path())
    );
    let out = output(rig.rnet().args([
        "run",
        "--network-bridge",
        &br,
        "-M",
        "guest",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let lease = text
        .lines()
        .find(|l| l.starts_with("LEASE "))
        .expect("no lease");
    let addr: std::net::Ipv4Addr = lease
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let last = addr.octets()[3];
    assert!(
        addr.octets()[..3] == [10, 77, 0] && (50..=99).contains(&last),
        "{lease}"
    );
    assert!(
        std::fs::read_to_string(&leases)
            .unwrap()
            .contains(&addr.to_string())
    );
    // No address, DHCP or NAT from us on the admin's bridge; the vb- link is gone afterwards.
    assert!(!rig.host_has_link("vb-guest"));
    assert!(rig.nft_table().is_none());

    // Refusals.
    let cases: [(&[&str], &str); 4] = [
        (
            &["run", "--network-bridge", "nosuchbr0", "--", "true"],
            "rnet: bridge nosuchbr0 does not exist\n",
        ),
        (
            &[
                "run",
                "--network-bridge",
                &rig.uplink_ifname(),
                "--",
                "true",
            ],
            "is not a bridge\n",
        ),
        (
            &[
                "run",
                "--network-bridge",
                &br,
                "--network-zone=z",
                "--",
                "true",
            ],
            "rnet: --network-bridge and --network-zone are mutually exclusive\n",
        ),
        (
            &["run", "--network-bridge", &br, "-p", "80", "--", "true"],
            "--port is not available with --network-bridge",
        ),
    ];
    for (args, needle) in cases {
        let out = output(rig.rnet().args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1);
    }
    assert!(rig.machines().is_empty());
}
