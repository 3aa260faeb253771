//! End-to-end tests of rnet beside other firewalls (`--host-firewall`): Docker's iptables-nft
//! `FORWARD` policy DROP, its `DOCKER-USER` chain, a hardened nft input chain with policy drop.
//! Every `iptables`/`nft` command runs in the rig's host netns, never on the real host.

use std::time::{Duration, Instant};

use rig::{
    HOST_ADDR, Rig, UPLINK_ADDR, in_pid_netns, netprobe, ok, output, privileged, wait_until,
};

/// Docker's layout as `dockerd` makes it with iptables-nft: FORWARD policy DROP, jumping to
/// DOCKER-USER first (which returns), then to its isolation chain (with a drop).
const DOCKER: &str = "iptables -N DOCKER-USER && iptables -A DOCKER-USER -j RETURN && \
    iptables -N DOCKER-ISOLATION-STAGE-1 && \
    iptables -A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DROP && \
    iptables -A FORWARD -j DOCKER-USER && iptables -A FORWARD -j DOCKER-ISOLATION-STAGE-1 && \
    iptables -P FORWARD DROP";

/// A hardened host: an nft input chain with policy drop (ssh and replies only).
const HARDENED: &str = "nft add table inet hardened && \
    nft add chain inet hardened input '{ type filter hook input priority 0; policy drop; }' && \
    nft add rule inet hardened input ct state established,related accept && \
    nft add rule inet hardened input tcp dport 22 accept";

/// True if `cmd` (a `netprobe connect`) got an answer.
fn answered(cmd: &mut std::process::Command) -> bool {
    output(cmd).status.success()
}

/// Starts a netprobe server on the uplink (tcp 7000).
fn uplink_server(rig: &mut Rig) {
    rig.spawn_ready(rig.in_uplink(netprobe()).args(["serve", "tcp:7000"]));
}

/// Starts a container `name` serving tcp 80 (published on 8080), returns its pid.
fn server(rig: &mut Rig, name: &str) -> u64 {
    rig.spawn_ready(
        rig.rnet()
            .args(["run", "-n", "-M", name, "-p", "8080:80", "--"])
            .arg(netprobe())
            .args(["serve", "tcp:80"]),
    );
    rig.wait_machine(name)["pid"].as_u64().unwrap()
}

/// The container of `pid` reaches the uplink server.
fn reaches_uplink(pid: u64) -> bool {
    answered(in_pid_netns(pid, netprobe()).args(["connect", "tcp", UPLINK_ADDR, "7000"]))
}

/// The uplink reaches the published port 8080.
fn published_answers(rig: &Rig) -> bool {
    answered(
        rig.in_uplink(netprobe())
            .args(["connect", "tcp", HOST_ADDR, "8080"]),
    )
}

/// Waits (at most `limit`) until rnetd has `n` rules of ours in other tables; panics otherwise,
/// naming what there is.
fn await_ours(rig: &Rig, n: usize, limit: Duration) -> Vec<String> {
    let mut ours = Vec::new();
    let ok = wait_until(limit, || {
        ours = rig.our_foreign_rules();
        ours.len() == n
    });
    assert!(
        ok,
        "expected {n} rules of ours within {limit:?}, have {ours:?}; rnetd log:\n{}",
        rig::tail(&rig.log(), 30)
    );
    ours
}

/// Stops the rig's containers by their pids and checks that nothing of ours stays behind in
/// any foreign chain.
fn end(rig: &Rig, pids: &[u64]) {
    for pid in pids {
        rig::kill_container(*pid);
    }
    rig.assert_all_gone();
    assert_eq!(rig.our_foreign_rules(), Vec::<String>::new());
}

#[test]
fn iptables_forward_drop_lets_our_containers_through_and_nothing_else() {
    if !privileged("iptables_forward_drop_lets_our_containers_through_and_nothing_else") {
        return;
    }
    let mut rig = Rig::new();
    uplink_server(&mut rig);
    let other = rig.routed_netns();
    let other_out = || {
        answered(
            other
                .run(netprobe())
                .args(["connect", "tcp", UPLINK_ADDR, "7000"]),
        )
    };
    // Control: the routed namespace is forwarded while nothing drops...
    assert!(other_out(), "the control namespace does not route at all");
    rig.host_sh("iptables -P FORWARD DROP");
    // ...and dropped under iptables' policy.
    assert!(!other_out(), "iptables -P FORWARD DROP does not drop");

    rig.start_rnetd();
    let pid = server(&mut rig, "srv");
    assert!(reaches_uplink(pid), "{}", rig.log());
    assert!(published_answers(&rig), "{}", rig.log());
    assert!(
        !other_out(),
        "rnet opened the forward path for traffic not its own"
    );
    let ours = await_ours(&rig, 2, Duration::from_secs(1));
    assert!(
        ours.iter()
            .all(|r| r.starts_with("ip filter FORWARD: rnet: ")),
        "{ours:?}"
    );
    // `rnet status` says where our rules are.
    let status = ok(rig.rnet().args(["status", "srv"]));
    assert!(
        status.contains("Host firewall: ip filter FORWARD (forward: policy drop)"),
        "{status}"
    );
    // iptables still reads its chain (our rules use only what iptables-nft understands) and
    // its policy is unchanged.
    let rules = rig.host_sh("iptables -S FORWARD");
    assert!(rules.contains("-P FORWARD DROP"), "{rules}");
    assert!(
        rules.contains(
            "-m devgroup --src-group 0x726e6574 -m comment --comment \"rnet: from our links\""
        ),
        "{rules}"
    );
    end(&rig, &[pid]);
    assert!(!other_out(), "the drop policy is as it was");
}

#[test]
fn docker_user_gets_our_rules_and_they_come_back_after_reloads() {
    if !privileged("docker_user_gets_our_rules_and_they_come_back_after_reloads") {
        return;
    }
    let mut rig = Rig::new();
    uplink_server(&mut rig);
    let other = rig.routed_netns();
    rig.host_sh(DOCKER);
    let other_out = || {
        answered(
            other
                .run(netprobe())
                .args(["connect", "tcp", UPLINK_ADDR, "7000"]),
        )
    };
    assert!(!other_out(), "Docker's FORWARD policy does not drop");
    rig.start_rnetd();
    let pid = server(&mut rig, "web");
    assert!(reaches_uplink(pid), "{}", rig.log());
    assert!(published_answers(&rig), "{}", rig.log());
    let ours = await_ours(&rig, 2, Duration::from_secs(1));
    assert!(
        ours.iter()
            .all(|r| r.starts_with("ip filter DOCKER-USER: ")),
        "{ours:?}"
    );
    let chain = rig.host_sh("iptables -S DOCKER-USER");
    assert!(
        chain.trim_end().ends_with("-A DOCKER-USER -j RETURN"),
        "ours at the head: {chain}"
    );
    // More containers, and one of them gone, change nothing in Docker's table: our rules
    // match our links' group, not each link.
    let before = rig.host_sh("nft -s -a list table ip filter");
    let mut more = Vec::new();
    for name in ["web2", "web3"] {
        rig.spawn_ready(
            rig.rnet()
                .args(["run", "-n", "-M", name, "--"])
                .arg(netprobe())
                .args(["serve", "tcp:80"]),
        );
        more.push(rig.wait_machine(name)["pid"].as_u64().unwrap());
    }
    assert!(reaches_uplink(more[1]), "{}", rig.log());
    rig::kill_container(more[0]);
    assert!(wait_until(Duration::from_secs(5), || rig
        .machines()
        .iter()
        .all(|m| m["name"] != "web2")));
    assert_eq!(rig.host_sh("nft -s -a list table ip filter"), before);
    rig::kill_container(more[1]);

    // Docker flushes and re-creates DOCKER-USER: ours are back within a second (the periodic
    // check alone would take up to 2 s).
    let reloads = [
        "iptables -F DOCKER-USER && iptables -A DOCKER-USER -j RETURN",
        // iptables-restore of a ruleset without ours (what a firewall service reloads).
        "iptables-save | grep -v 'rnet: ' | iptables-restore",
        // Everything flushed, then Docker's layout back.
        &format!("nft flush ruleset && {DOCKER}"),
    ];
    for reload in reloads {
        rig.host_sh(reload);
        let started = Instant::now();
        let back = wait_until(Duration::from_secs(1), || {
            rig.our_foreign_rules().len() == 2
        });
        assert!(
            back,
            "after `{reload}` ours did not come back within 1 s: {:?}; log:\n{}",
            rig.our_foreign_rules(),
            rig::tail(&rig.log(), 30)
        );
        eprintln!("after `{reload}`: ours back in {:?}", started.elapsed());
        assert!(
            wait_until(Duration::from_secs(3), || rig.nft_table().is_some()),
            "table inet rnet not rebuilt"
        );
        assert!(reaches_uplink(pid), "after `{reload}`:\n{}", rig.log());
        assert!(!other_out(), "after `{reload}`, traffic not ours passes");
    }
    assert_eq!(rig.our_foreign_rules().len(), 2, "never duplicated");
    end(&rig, &[pid]);
    assert!(!other_out());
}

/// A udhcpc run in the container of `pid`: true if it got a lease.
fn dhcp_answers(pid: u64) -> bool {
    let out = rig::udhcpc_once(pid, "/bin/true");
    out.status.success()
}

/// Whether rnetd's DNS forwarder on the gateway of machine `name` answers from inside it
/// (`_gateway`, answered by rnetd itself: no upstream needed).
fn dns_answers(rig: &Rig, name: &str) -> bool {
    let m = rig.wait_machine(name);
    let gw = m["host_address"].as_str().unwrap().to_owned();
    in_pid_netns(m["pid"].as_u64().unwrap(), "timeout")
        .args(["3", "busybox", "nslookup", "_gateway", &gw])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_firewall_that_appears_while_containers_run_gets_our_rules_and_keeps_them() {
    if !privileged("a_firewall_that_appears_while_containers_run_gets_our_rules_and_keeps_them") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let pid = server(&mut rig, "late");
    // No other firewall yet: nothing of ours anywhere. A peer's nat table with chains of its
    // own (as CNI makes per container) is none of our business either.
    rig.host_sh(
        "nft add table ip nat && nft add chain ip nat CNI-0123456789abcdef && \
         nft add rule ip nat CNI-0123456789abcdef masquerade",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rig.our_foreign_rules(), Vec::<String>::new());
    // A hardened input chain appears (a new table: `nft monitor` reports its base chain).
    rig.host_sh(HARDENED);
    let ours = await_ours(&rig, 4, Duration::from_secs(5));
    assert!(
        ours.iter()
            .all(|r| r.starts_with("inet hardened input: rnet: ")),
        "{ours:?}"
    );
    assert!(dhcp_answers(pid), "no DHCP answer; log:\n{}", rig.log());
    // Its table is watched from now on: a flush of the chain brings ours back.
    rig.host_sh("nft flush chain inet hardened input");
    await_ours(&rig, 4, Duration::from_secs(5));
    end(&rig, &[pid]);
}

#[test]
fn a_hardened_input_chain_still_lets_dhcp_through() {
    if !privileged("a_hardened_input_chain_still_lets_dhcp_through") {
        return;
    }
    let mut rig = Rig::new();
    rig.host_sh(HARDENED);
    rig.start_rnetd();
    let pid = server(&mut rig, "dhcp");
    assert!(dhcp_answers(pid), "no DHCP answer; log:\n{}", rig.log());
    assert!(
        dns_answers(&rig, "dhcp"),
        "no DNS answer; log:\n{}",
        rig.log()
    );
    // An inet chain sees IPv6 too: ICMPv6 (solicitations, neighbour discovery) passes as well.
    let ours = await_ours(&rig, 4, Duration::from_secs(1));
    assert_eq!(
        ours,
        [
            "inet hardened input: rnet: DHCP udp from our links",
            "inet hardened input: rnet: DNS udp from our links",
            "inet hardened input: rnet: DNS tcp from our links",
            "inet hardened input: rnet: ICMPv6 from our links",
        ]
    );
    // The chain still drops what is not ours: its policy and rules are as they were.
    let chain = rig.host_sh("nft list chain inet hardened input");
    assert!(chain.contains("policy drop;"), "{chain}");
    assert!(chain.contains("tcp dport 22 accept"), "{chain}");
    end(&rig, &[pid]);
}

#[test]
fn with_host_firewall_off_nothing_of_ours_appears_and_the_drops_apply() {
    if !privileged("with_host_firewall_off_nothing_of_ours_appears_and_the_drops_apply") {
        return;
    }
    let mut rig = Rig::new();
    uplink_server(&mut rig);
    rig.host_sh(HARDENED);
    rig.host_sh("iptables -P FORWARD DROP");
    rig.start_rnetd_with(&["--host-firewall=off"]);
    let pid = server(&mut rig, "off");
    // The other firewalls decide: DHCP and forwarding are dropped (the control that the
    // tests above would fail without our rules).
    assert!(!dhcp_answers(pid), "DHCP answered through a policy drop");
    assert!(
        !dns_answers(&rig, "off"),
        "DNS answered through a policy drop"
    );
    assert!(!reaches_uplink(pid), "forwarded through iptables' DROP");
    assert!(!published_answers(&rig));
    std::thread::sleep(Duration::from_millis(2500)); // a periodic check went by
    assert_eq!(rig.our_foreign_rules(), Vec::<String>::new());
    let status: serde_json::Value =
        serde_json::from_str(&ok(rig.rnet().args(["status", "off", "--json"]))).unwrap();
    assert_eq!(status["machine"], "off", "{status}");
    assert!(status.get("host_firewall").is_none(), "{status}");
    end(&rig, &[pid]);
    let forward = ok(rig.in_host("iptables").args(["-S", "FORWARD"]));
    assert!(forward.contains("-P FORWARD DROP"), "{forward}");
}

/// The lines of `PROGRAM -S CHAIN` in the host netns carrying comment `comment`.
fn copies(rig: &Rig, program: &str, chain: &str, comment: &str) -> usize {
    ok(rig.in_host(program).args(["-S", chain]))
        .lines()
        .filter(|l| l.contains(&format!("--comment \"{comment}\"")))
        .count()
}

#[test]
fn rules_restored_by_iptables_restore_are_ours_and_not_duplicated() {
    if !privileged("rules_restored_by_iptables_restore_are_ours_and_not_duplicated") {
        return;
    }
    let mut rig = Rig::new();
    uplink_server(&mut rig);
    rig.host_sh("iptables -P FORWARD DROP && ip6tables -P FORWARD DROP");
    rig.start_rnetd();
    let pid = server(&mut rig, "rst");
    await_ours(&rig, 4, Duration::from_secs(1));
    let comments = ["rnet: from our links", "rnet: to our links"];
    for round in 1..=2 {
        // What a firewall service does on reload: our rules come back as new rules (new
        // handles) with iptables' `-m comment` (an xt match, which `nft -j` does not show as a
        // comment).
        rig.host_sh("iptables-save | iptables-restore && ip6tables-save | ip6tables-restore");
        // The restore is an nft event: rnetd checks at once; a periodic check goes by too.
        std::thread::sleep(Duration::from_millis(2500));
        for program in ["iptables", "ip6tables"] {
            for comment in comments {
                assert_eq!(
                    copies(&rig, program, "FORWARD", comment),
                    1,
                    "round {round}: {program} -S FORWARD:\n{}\nrnetd log:\n{}",
                    ok(rig.in_host(program).args(["-S", "FORWARD"])),
                    rig::tail(&rig.log(), 30)
                );
            }
        }
        assert!(reaches_uplink(pid), "round {round}: {}", rig.log());
    }
    end(&rig, &[pid]);
    for program in ["iptables", "ip6tables"] {
        let rules = ok(rig.in_host(program).args(["-S", "FORWARD"]));
        assert!(
            !rules.contains("rnet: "),
            "left after the last link: {rules}"
        );
        assert!(rules.contains("-P FORWARD DROP"), "{rules}");
    }
}

/// Container `name` (of `pid`) reaches the uplink, its published port answers, and DHCP and
/// DNS to rnetd answer it; `what` names the moment for the failure message.
fn works_for(rig: &Rig, pid: u64, name: &str, what: &str) {
    assert!(
        reaches_uplink(pid),
        "{what}: no egress; log:\n{}",
        rig.log()
    );
    assert!(
        published_answers(rig),
        "{what}: published port; log:\n{}",
        rig.log()
    );
    assert!(
        dhcp_answers(pid),
        "{what}: no DHCP answer; log:\n{}",
        rig.log()
    );
    assert!(
        dns_answers(rig, name),
        "{what}: no DNS answer; log:\n{}",
        rig.log()
    );
}

/// The interfaces of firewalld's runtime zone `trusted`.
fn trusted(fw: &rig::PrivateFirewalld) -> String {
    fw.cmd(&["--zone=trusted", "--list-interfaces"])
        .trim()
        .to_owned()
}

/// firewalld (Debian's, with a private system bus in the rig's host netns) with its default
/// zone public, which rejects forwarding and input other than ssh: rnetd binds its links to the
/// zone `trusted` at runtime over D-Bus, again after `firewall-cmd --reload` and a restart of
/// firewalld, keeps them over its own restart (unbinding a link that went meanwhile), and
/// unbinds them with the last link; with `--host-firewall=off` it leaves firewalld alone (the
/// control), after removing a binding a killed rnetd left.
#[test]
fn firewalld_gets_our_links_over_dbus_and_keeps_them_across_reloads() {
    const TEST: &str = "firewalld_gets_our_links_over_dbus_and_keeps_them_across_reloads";
    if !privileged(TEST) {
        return;
    }
    let mut rig = Rig::new();
    let mut fw = match rig.start_firewalld() {
        Ok(fw) => fw,
        Err(why) => {
            eprintln!("SKIP {TEST}: {why}");
            return;
        }
    };
    assert_eq!(fw.cmd(&["--get-default-zone"]).trim(), "public");
    uplink_server(&mut rig);

    // The control: rnetd leaves firewalld alone, and firewalld drops our traffic.
    rig.start_rnetd_with(&["--host-firewall=off"]);
    let pid = server(&mut rig, "off");
    assert!(
        !reaches_uplink(pid),
        "forwarded through firewalld's public zone"
    );
    assert!(
        !dhcp_answers(pid),
        "DHCP answered through firewalld's public zone"
    );
    assert!(
        !dns_answers(&rig, "off"),
        "DNS answered through firewalld's public zone"
    );
    // Published ports are firewalld's own business: its forward chain accepts DNAT'd traffic
    // (`ct status dnat accept`) whatever the zones.
    assert!(
        published_answers(&rig),
        "firewalld dropped a published port by itself"
    );
    assert_eq!(trusted(&fw), "");
    rig::kill_container(pid);
    rig.assert_all_gone();
    rig.stop_rnetd(nix::sys::signal::Signal::SIGTERM);

    rig.start_rnetd();
    let pid = server(&mut rig, "web");
    let works = |what: &str| works_for(&rig, pid, "web", what);
    works("firewalld running");
    assert_eq!(trusted(&fw), "ve-web");
    assert_eq!(
        fw.cmd(&["--permanent", "--zone=trusted", "--list-interfaces"])
            .trim(),
        "",
        "runtime only"
    );
    let status = ok(rig.rnet().args(["status", "web"]));
    assert!(
        status.contains("Host firewall: firewalld: zone trusted (runtime)"),
        "{status}"
    );
    // firewalld's own table gets no rules of ours (it would flush them on every reload).
    assert_eq!(rig.our_foreign_rules(), Vec::<String>::new());

    for (what, action) in [("--reload", true), ("a restart of firewalld", false)] {
        if action {
            assert_eq!(fw.cmd(&["--reload"]).trim(), "success");
        } else {
            fw.restart()
                .unwrap_or_else(|why| panic!("restarting firewalld: {why}"));
        }
        let started = Instant::now();
        let back = wait_until(Duration::from_secs(1), || {
            fw.zone_of_interface("ve-web") == "trusted"
        });
        assert!(
            back,
            "after {what} our link was not bound again within 1 s: {:?}; log:\n{}",
            trusted(&fw),
            rig::tail(&rig.log(), 30)
        );
        eprintln!("after {what}: bound again in {:?}", started.elapsed());
        works(what);
        assert_eq!(rig.our_foreign_rules(), Vec::<String>::new());
    }

    // rnetd stopped (SIGTERM) keeps the container's networking, firewalld's binding included;
    // the container dies meanwhile; the restarted rnetd tears it down and unbinds its link (it
    // recorded what it bound).
    rig.stop_rnetd(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(trusted(&fw), "ve-web", "rnetd's exit took the binding");
    assert!(
        reaches_uplink(pid),
        "rnetd's exit stopped the container's traffic"
    );
    rig::kill_container(pid);
    rig.start_rnetd();
    assert!(
        wait_until(Duration::from_secs(2), || trusted(&fw).is_empty()),
        "the restarted rnetd left the stale binding: {}; log:\n{}",
        trusted(&fw),
        rig::tail(&rig.log(), 30)
    );

    let pid = server(&mut rig, "two");
    assert_eq!(trusted(&fw), "ve-two");
    works_for(&rig, pid, "two", "a second container");
    end(&rig, &[pid]);
    assert!(
        wait_until(Duration::from_secs(2), || trusted(&fw).is_empty()),
        "firewalld still holds ours after the last link: {}",
        trusted(&fw)
    );

    // A binding left by an rnetd that was killed goes with the next start, even with
    // --host-firewall=off (which then leaves firewalld alone).
    let pid = server(&mut rig, "three");
    assert_eq!(trusted(&fw), "ve-three");
    rig.stop_rnetd(nix::sys::signal::Signal::SIGKILL);
    rig.start_rnetd_with(&["--host-firewall=off"]);
    assert!(
        wait_until(Duration::from_secs(2), || trusted(&fw).is_empty()),
        "--host-firewall=off left our binding: {}; log:\n{}",
        trusted(&fw),
        rig::tail(&rig.log(), 30)
    );
    assert!(!reaches_uplink(pid), "forwarded without the binding");
    end(&rig, &[pid]);
    assert!(
        wait_until(Duration::from_secs(2), || trusted(&fw).is_empty()),
        "firewalld still holds ours after the last link: {}",
        trusted(&fw)
    );
    assert!(!fw.cmd(&["--get-active-zones"]).contains("ve-"));
    assert!(!rig.runtime_dir().join("firewalld.json").exists());
    rig.stop_rnetd(nix::sys::signal::Signal::SIGTERM);
    assert!(!fw.stop(), "firewalld or its bus still runs");
}
