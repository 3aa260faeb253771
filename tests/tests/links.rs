//! End-to-end tests of the other link kinds: macvlan, ipvlan, moved interfaces and extra veths.
//! Parents are veth pairs (the machine has no dummy or vlan links).

use std::time::Duration;

use netd::naming::{MacKey, MachineId, generate_mac, shorten_ifname};
use nix::sys::signal::Signal;
use rig::{Rig, ok, output, privileged, wait_until};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn machine_id() -> MachineId {
    MachineId::parse(&std::fs::read_to_string("/etc/machine-id").unwrap()).unwrap()
}

/// A veth pair `A`/`B` in the host netns, `A` up; `B` moved to the uplink netns with `addr`.
fn parent_with_peer(rig: &Rig, a: &str, b: &str, addr: &str) {
    ok(rig
        .in_host("ip")
        .args(["link", "add", a, "type", "veth", "peer", "name", b]));
    ok(rig.in_host("ip").args(["link", "set", a, "up"]));
    ok(rig.in_host("ip").args([
        "link",
        "set",
        b,
        "netns",
        &format!("/run/netns/{}", rig.uplink_ns),
    ]));
    ok(rig.in_uplink("ip").args(["addr", "add", addr, "dev", b]));
    ok(rig.in_uplink("ip").args(["link", "set", b, "up"]));
}

#[test]
fn a_macvlan_on_a_veth_parent_reaches_a_peer_on_the_other_end() {
    if !privileged("a_macvlan_on_a_veth_parent_reaches_a_peer_on_the_other_end") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let (a, b) = (format!("{}m0", rig.prefix), format!("{}m1", rig.prefix));
    parent_with_peer(&rig, &a, &b, "10.88.0.1/24");
    let name = shorten_ifname(&format!("mv-{a}"));
    let script = format!(
        "ip link set {name} up && ip addr add 10.88.0.2/24 dev {name} && ip -br link show {name} && ping -c1 -W2 10.88.0.1 >/dev/null && echo PING"
    );
    let out = output(rig.rnet().args([
        "run",
        &format!("--network-macvlan={a}"),
        "-M",
        "mvtest",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}{}", stderr(&out), rig.log());
    let mac = generate_mac(machine_id(), "mvtest", MacKey::Macvlan, 0).to_string();
    assert!(text.contains(&mac), "macvlan MAC is not {mac}: {text}");
    assert!(text.ends_with("PING\n"), "{text}");
    // Named explicitly, a second one gets the next MAC index.
    let out = ok(rig.rnet().args([
        "run",
        &format!("--network-macvlan={a}:one"),
        &format!("--network-macvlan={a}:two"),
        "-M",
        "mvtwo",
        "--",
        "ip",
        "-br",
        "link",
    ]));
    let id = machine_id();
    assert!(
        out.contains(&generate_mac(id, "mvtwo", MacKey::Macvlan, 0).to_string()),
        "{out}"
    );
    assert!(
        out.contains(&generate_mac(id, "mvtwo", MacKey::Macvlan, 1).to_string()),
        "{out}"
    );
    assert!(out.contains("one@") && out.contains("two@"), "{out}");
    // A missing parent is a clear error.
    let out = output(
        rig.rnet()
            .args(["run", "--network-macvlan=nosuch0", "--", "true"]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "rnet: host link nosuch0 does not exist\n");
    assert!(rig.machines().is_empty());
}

#[test]
fn ipvlan_works_or_fails_clearly_when_the_kernel_lacks_it() {
    if !privileged("ipvlan_works_or_fails_clearly_when_the_kernel_lacks_it") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let (a, b) = (format!("{}p0", rig.prefix), format!("{}p1", rig.prefix));
    parent_with_peer(&rig, &a, &b, "10.89.0.1/24");
    let probe = output(rig.in_host("ip").args([
        "link", "add", "ivprobe", "link", &a, "type", "ipvlan", "mode", "l2",
    ]));
    let supported = probe.status.success();
    let _ = output(rig.in_host("ip").args(["link", "del", "ivprobe"]));
    let name = shorten_ifname(&format!("iv-{a}"));
    let script = format!(
        "ip link set {name} up && ip addr add 10.89.0.2/24 dev {name} && ping -c1 -W2 10.89.0.1 >/dev/null && echo PING"
    );
    let out = output(rig.rnet().args([
        "run",
        &format!("--network-ipvlan={a}"),
        "--",
        "sh",
        "-c",
        &script,
    ]));
    if supported {
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "PING\n");
    } else {
        eprintln!("SKIP ipvlan traffic: this kernel has no ipvlan; checking the error instead");
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            "rnet: ipvlan is not available: this kernel has no ipvlan support (CONFIG_IPVLAN / modprobe ipvlan)\n"
        );
    }
    assert!(rig.machines().is_empty());
}

#[test]
fn a_moved_interface_comes_back_with_its_name_after_exit_and_after_sigkill() {
    if !privileged("a_moved_interface_comes_back_with_its_name_after_exit_and_after_sigkill") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let (a, b) = (format!("{}i0", rig.prefix), format!("{}i1", rig.prefix));
    parent_with_peer(&rig, &a, &b, "10.90.0.1/24");
    let mac = rig.host_ip(&["link", "show", "dev", &a])[0]["address"]
        .as_str()
        .unwrap()
        .to_owned();
    // Normal exit: moved in under a new name, usable, and back afterwards.
    let script = "ip link set eth1 up && ip addr add 10.90.0.2/24 dev eth1 && ping -c1 -W2 10.90.0.1 >/dev/null && ip -br link show eth1";
    let out = output(rig.rnet().args([
        "run",
        &format!("--network-interface={a}:eth1"),
        "--",
        "sh",
        "-c",
        script,
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}{}", stderr(&out), rig.log());
    assert!(text.contains(&mac), "{text}");
    assert!(
        rig.host_has_link(&a),
        "{a} did not come back; log:\n{}",
        rig.log()
    );
    assert!(!rig.host_has_link("eth1"));
    assert_eq!(
        rig.host_ip(&["link", "show", "dev", &a])[0]["address"],
        mac.as_str()
    );

    // SIGKILL of the launcher: rnetd held the namespace and moves it back.
    let l = rig.spawn(rig.rnet().args([
        "run",
        &format!("--network-interface={a}"),
        "-M",
        "holder",
        "--",
        "sleep",
        "60",
    ]));
    rig.wait_machine("holder");
    assert!(!rig.host_has_link(&a));
    rig.signal(l, Signal::SIGKILL);
    rig.wait(l);
    assert!(
        wait_until(Duration::from_secs(5), || rig.host_has_link(&a)
            && rig.machines().is_empty()),
        "{a} did not come back after SIGKILL; log:\n{}",
        rig.log()
    );
    // And it works again on the host side.
    ok(rig
        .in_host("ip")
        .args(["addr", "add", "10.90.0.3/24", "dev", &a]));
    ok(rig.in_host("ip").args(["link", "set", &a, "up"]));
    ok(rig.in_host("ping").args(["-c1", "-W2", "10.90.0.1"]));
    // Bad input.
    let out = output(
        rig.rnet()
            .args(["run", "--network-interface=nosuch0", "--", "true"]),
    );
    assert_eq!(stderr(&out), "rnet: host link nosuch0 does not exist\n");
    let out = output(
        rig.rnet()
            .args(["run", "--network-interface=lo", "--", "true"]),
    );
    assert_eq!(
        stderr(&out),
        "rnet: the loopback interface cannot be moved\n"
    );
    let out = output(
        rig.rnet()
            .args(["run", "--network-interface=a:b:c", "--", "true"]),
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn extra_veths_get_their_names_and_macs_and_go_with_the_container() {
    if !privileged("extra_veths_get_their_names_and_macs_and_go_with_the_container") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let host = format!("{}x", rig.prefix);
    let l = rig.spawn(rig.rnet().args([
        "run",
        "-n",
        &format!("--network-veth-extra={host}:inner"),
        &format!("--network-veth-extra={host}2"),
        "-M",
        "extra",
        "--",
        "sleep",
        "60",
    ]));
    let m = rig.wait_machine("extra");
    let id = machine_id();
    let link = rig.host_ip(&["link", "show", "dev", &host]);
    assert_eq!(
        link[0]["address"],
        generate_mac(id, "extra", MacKey::VethExtraHost, 0)
            .to_string()
            .as_str()
    );
    let link2 = rig.host_ip(&["link", "show", "dev", &format!("{host}2")]);
    assert_eq!(
        link2[0]["address"],
        generate_mac(id, "extra", MacKey::VethExtraHost, 1)
            .to_string()
            .as_str()
    );
    let pid = m["pid"].as_u64().unwrap();
    let inner =
        rig::ip_json(rig::in_pid_netns(pid, "ip").args(["-j", "link", "show", "dev", "inner"]));
    assert_eq!(
        inner[0]["address"],
        generate_mac(id, "extra", MacKey::VethExtraContainer, 0)
            .to_string()
            .as_str()
    );
    ok(rig::in_pid_netns(pid, "ip").args(["link", "show", "dev", &format!("{host}2")]));
    ok(rig::in_pid_netns(pid, "ip").args(["link", "show", "dev", "host0"]));
    // Both ends are made with one queue each way (a kernel left to choose makes one per CPU,
    // then cuts them to one, waiting for RCU each time).
    let host0 =
        rig::ip_json(rig::in_pid_netns(pid, "ip").args(["-d", "-j", "link", "show", "host0"]));
    for l in [
        &rig.host_ip(&["-d", "link", "show", "dev", "ve-extra"])[0],
        &host0[0],
    ] {
        assert_eq!(
            (&l["num_tx_queues"], &l["num_rx_queues"]),
            (&1.into(), &1.into()),
            "{l}"
        );
    }
    assert_eq!(m["links"].as_array().unwrap().len(), 2);
    rig.signal(l, Signal::SIGTERM);
    rig.wait(l);
    assert!(!rig.host_has_link(&host) && !rig.host_has_link(&format!("{host}2")));
    assert!(!rig.host_has_link("ve-extra"));
}
