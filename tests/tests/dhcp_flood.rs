//! A container flooding its zone with DHCP (perfdhcp's DORA exchanges from random MACs, and
//! DECLINEs from `dhcpflood`) takes at most its link's bounds and starves no other link: DHCP
//! clients on another link and in another zone get their leases promptly meanwhile, a zone
//! neighbour renews, a new member still attaches, and after an rnetd crash the flood's leases
//! and quarantines are still there (and still within the bounds).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use rig::{Rig, Value, dhcpflood, in_pid_netns, ok, output, privileged, wait_until};

/// A /24 zone: 253 usable addresses; unrecorded clients may hold 253 - 126, quarantines 63.
const FOREIGN_LIMIT: usize = 127;
const QUARANTINE_LIMIT: usize = 63;

fn pid(m: &Value) -> u64 {
    m["pid"].as_u64().unwrap()
}

fn client_id(m: &Value) -> String {
    format!("01:{}", m["container_mac"].as_str().unwrap())
}

/// One udhcpc exchange in the netns of `pid` (`-s /bin/true`: nothing is configured): how long
/// it took and the address it was given.
fn udhcpc(pid: u64) -> (Duration, Option<String>) {
    let start = Instant::now();
    let out = rig::udhcpc_once(pid, "/bin/true");
    let took = start.elapsed();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let got = text
        .split("lease of ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned);
    (took, got.filter(|_| out.status.success()))
}

fn run_in(rig: &mut Rig, args: &[&str]) {
    rig.spawn(rig.rnet().args(args));
}

#[test]
fn a_flooding_member_is_bounded_to_its_zone_and_starves_nobody() {
    if !privileged("a_flooding_member_is_bounded_to_its_zone_and_starves_nobody") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    run_in(
        &mut rig,
        &["run", "--network-zone=fl", "-M", "a", "--", "sleep", "600"],
    );
    run_in(
        &mut rig,
        &["run", "--network-zone=fl", "-M", "b", "--", "sleep", "600"],
    );
    run_in(&mut rig, &["run", "-n", "-M", "o", "--", "sleep", "600"]);
    run_in(
        &mut rig,
        &[
            "run",
            "--network-zone=other",
            "-M",
            "z",
            "--",
            "sleep",
            "600",
        ],
    );
    let (a, b, o, z) = (
        rig.wait_machine("a"),
        rig.wait_machine("b"),
        rig.wait_machine("o"),
        rig.wait_machine("z"),
    );
    let zones: Vec<Value> =
        serde_json::from_str(&ok(rig.rnet().args(["zone", "list", "--json"]))).unwrap();
    let fl = zones.iter().find(|z| z["name"] == "fl").expect("zone fl");
    let subnet: ipnetwork::Ipv4Network = fl["subnet"].as_str().unwrap().parse().unwrap();
    let server = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    let bridge = fl["bridge"].as_str().unwrap().to_owned();
    let addr = |m: &Value| m["container_address"].as_str().unwrap().to_owned();

    // Before the flood: the clients elsewhere answer, and how fast.
    let (base, got) = udhcpc(pid(&o));
    assert_eq!(got, Some(addr(&o)), "{}", rig.log());

    // The flood, from inside A: DORA from 100000 random MACs at 500/s for 10 s, and 3000
    // DECLINEs of random addresses of the zone.
    let mut perf = Command::new("nsenter");
    perf.arg(format!("--net=/proc/{}/ns/net", pid(&a))).args([
        "perfdhcp", "-4", "-l", "host0", "-r", "500", "-R", "100000", "-p", "10",
    ]);
    let perf = std::thread::spawn(move || output(&mut perf));
    let mut decl = in_pid_netns(pid(&a), dhcpflood());
    decl.args([server.to_string(), subnet.to_string(), "3000".into()]);
    let decl = std::thread::spawn(move || output(&mut decl));

    // Meanwhile: another link, another zone, and A's neighbour B.
    let mut latencies: Vec<(&str, Duration)> = Vec::new();
    let start = Instant::now();
    let mut c_attached = None;
    while start.elapsed() < Duration::from_secs(9) {
        for (name, m) in [("o", &o), ("z", &z), ("b", &b)] {
            let (took, got) = udhcpc(pid(m));
            assert_eq!(
                got,
                Some(addr(m)),
                "{name} during the flood; log:\n{}",
                rig.log()
            );
            latencies.push((name, took));
        }
        if c_attached.is_none() && start.elapsed() > Duration::from_secs(3) {
            // A new member of A's zone, mid-flood.
            let t = Instant::now();
            run_in(
                &mut rig,
                &["run", "--network-zone=fl", "-M", "c", "--", "sleep", "600"],
            );
            let c = rig.wait_machine("c");
            c_attached = Some((c, t.elapsed()));
        }
    }
    let perf = perf.join().unwrap();
    let decl = decl.join().unwrap();
    let (c, c_took) = c_attached.expect("C attached");
    let perf_out = String::from_utf8_lossy(&perf.stdout).into_owned();
    let declines: u32 = String::from_utf8_lossy(&decl.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert_eq!(declines, 3000, "dhcpflood: {decl:?}");
    assert!(
        perf_out.contains("sent packets"),
        "perfdhcp did not run: {perf:?}"
    );
    // C got its address in the zone, and B still has its own.
    assert!(subnet.contains(addr(&c).parse().unwrap()));
    let (_, got) = udhcpc(pid(&c));
    assert_eq!(got, Some(addr(&c)));

    // Within the bounds, on disk.
    let members: BTreeSet<String> = [&a, &b, &c].iter().map(|m| client_id(m)).collect();
    let leases = {
        let mut last = Vec::new();
        // The writer commits in groups: wait until the members' leases are all there.
        wait_until(Duration::from_secs(5), || {
            last = rig.saved_leases(&bridge).unwrap_or_default();
            members
                .iter()
                .all(|id| last.iter().any(|l| l["client_id"] == id.as_str()))
        });
        last
    };
    let flood: Vec<&Value> = leases
        .iter()
        .filter(|l| !members.contains(l["client_id"].as_str().unwrap()))
        .collect();
    let quarantined = rig.saved_quarantines(&bridge).unwrap();
    let mut sorted = latencies.iter().map(|(_, d)| *d).collect::<Vec<_>>();
    let p50 = rig::percentile(&mut sorted, 50);
    let max = sorted.iter().max().copied().unwrap_or_default();
    println!(
        "flood: perfdhcp {} / dhcpflood {declines} DECLINEs; leases taken by the flood {} (cap \
         {FOREIGN_LIMIT}), quarantined {} (cap {QUARANTINE_LIMIT}); other links' DORA latency \
         before {base:?}, during p50 {p50:?} max {max:?} over {} exchanges; C attached in \
         {c_took:?}",
        perf_out
            .lines()
            .filter(|l| l.contains("sent packets") || l.contains("received packets"))
            .collect::<Vec<_>>()
            .join(", "),
        flood.len(),
        quarantined.len(),
        latencies.len()
    );
    assert!(flood.len() <= FOREIGN_LIMIT, "{} leases", flood.len());
    assert!(
        flood.len() >= FOREIGN_LIMIT / 2,
        "the flood got nothing: not a flood"
    );
    assert!(quarantined.len() <= QUARANTINE_LIMIT);
    assert!(!quarantined.is_empty(), "no DECLINE was taken");
    // A's zone's answers to others stayed prompt: no retransmission (udhcpc waits 1 s).
    assert!(max < Duration::from_secs(1), "{latencies:?}");

    // A crash and a restart: the same leases and quarantines.
    let snapshot = |rig: &Rig| {
        let l: BTreeSet<(String, String)> = rig
            .saved_leases(&bridge)
            .unwrap_or_default()
            .into_iter()
            .map(|l| (l["client_id"].to_string(), l["address"].to_string()))
            .collect();
        let q: BTreeSet<String> = rig
            .saved_quarantines(&bridge)
            .unwrap_or_default()
            .into_iter()
            .collect();
        (l, q)
    };
    let before = snapshot(&rig);
    rig.stop_rnetd(nix::sys::signal::Signal::SIGKILL);
    rig.start_rnetd();
    rig.wait_machine("c");
    let mut after = snapshot(&rig);
    let same = wait_until(Duration::from_secs(10), || {
        after = snapshot(&rig);
        after == before
    });
    assert!(
        same,
        "before {} leases {} quarantines, after {} {}; log:\n{}",
        before.0.len(),
        before.1.len(),
        after.0.len(),
        after.1.len(),
        rig.log()
    );
    // And the restarted server still refuses the flood more and still serves B.
    let (_, got) = udhcpc(pid(&b));
    assert_eq!(got, Some(addr(&b)));
    rig.assert_no_panic();
}
