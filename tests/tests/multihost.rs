//! End-to-end tests of zones across hosts (`rnet zone create --distributed`, `rnetd --etcd`):
//! three simulated hosts (a netns each with its own rnetd) on an underlay bridge, a
//! three-member etcd cluster started by the test, real VXLAN, real traffic.

use std::process::Output;
use std::time::Duration;

use nix::sys::signal::Signal;
use rig::multihost::{MultiHost, available};
use rig::{Rig, Value, in_pid_netns, netprobe, ok, output, wait_until};

/// The lease TTL the tests give rnetd (seconds).
const TTL: u64 = 3;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn show(rig: &Rig, zone: &str) -> Value {
    serde_json::from_str(&ok(rig.rnet().args(["zone", "show", zone, "--json"]))).unwrap()
}

/// The node names zone `zone` lists on `rig`.
fn hosts_of(rig: &Rig, zone: &str) -> Vec<String> {
    let z = show(rig, zone);
    let mut v: Vec<String> = z["span"]["hosts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| h["node"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Starts member `name` of `zone` on `rig` serving TCP and UDP port 80; returns (pid, address).
fn member(rig: &mut Rig, zone: &str, name: &str) -> (u64, String) {
    let probe = netprobe();
    rig.spawn_ready(
        rig.rnet()
            .args(["run", &format!("--network-zone={zone}"), "-M", name, "--"])
            .arg(&probe)
            .args(["serve", "tcp:80", "udp:80"]),
    );
    let m = rig.wait_machine(name);
    (
        m["pid"].as_u64().unwrap(),
        m["container_address"].as_str().unwrap().to_owned(),
    )
}

/// TCP from the member `from` (pid, address) to `to`'s address: the answer must name `from`'s
/// own address (routed between hosts, never NATed).
fn assert_tcp(from: &(u64, String), to: &str, what: &str) {
    let out = output(in_pid_netns(from.0, netprobe()).args(["connect", "tcp", to, "80"]));
    let t = text(&out);
    assert!(out.status.success(), "{what}: tcp {} -> {to}: {t}", from.1);
    assert!(
        t.starts_with(&format!("FROM {}:", from.1)),
        "{what}: {to} saw another source than {}: {t}",
        from.1
    );
}

/// One ping from the member `from` to `to`; on failure the message ends with `logs()` (the
/// hosts' rnetd logs, where the data path's programming is told).
fn assert_ping(from: &(u64, String), to: &str, what: &str, logs: impl FnOnce() -> String) {
    let out = output(in_pid_netns(from.0, "ping").args(["-c", "1", "-W", "3", to]));
    assert!(
        out.status.success(),
        "{what}: ping {} -> {to}: {}\n{}",
        from.1,
        text(&out),
        logs()
    );
}

fn assert_no_tcp(from: &(u64, String), to: &str, what: &str) {
    let out = output(in_pid_netns(from.0, netprobe()).args(["connect", "tcp", to, "80"]));
    assert!(
        !out.status.success(),
        "{what}: {} reached {to}: {}",
        from.1,
        text(&out)
    );
}

fn logs(mh: &MultiHost) -> String {
    mh.hosts
        .iter()
        .enumerate()
        .map(|(i, h)| format!("--- rnetd h{i}:\n{}", rig::tail(&h.log(), 30)))
        .collect::<String>()
        + &mh.etcd_logs()
}

#[test]
fn a_zone_spans_three_hosts_members_reach_each_other_zones_stay_apart() {
    let test = "a_zone_spans_three_hosts_members_reach_each_other_zones_stay_apart";
    if !available(test) {
        return;
    }
    let mut mh = MultiHost::new(3, 3);
    for i in 0..3 {
        mh.start_rnetd_with(i, TTL, &["--underlay-filter"]);
    }
    // Three hosts join at once: they race for the first slice, exactly one gets each.
    let mut creates: Vec<_> = mh
        .hosts
        .iter()
        .map(|h| {
            h.rnet()
                .args(["zone", "create", "web", "--distributed"])
                .args(["--subnet", "10.77.0.0/16", "--vni", "77"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = creates
        .drain(..)
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (i, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "h{i}: {}\n{}", text(o), logs(&mh));
        assert!(
            text(o).starts_with("zone web joined: bridge vz-web, subnet 10.77.0.0/16 (VNI 77)"),
            "{}",
            text(o)
        );
    }
    let mut slices: Vec<String> = mh
        .hosts
        .iter()
        .map(|h| show(h, "web")["subnet"].as_str().unwrap().to_owned())
        .collect();
    slices.sort();
    assert_eq!(
        slices,
        ["10.77.0.0/24", "10.77.1.0/24", "10.77.2.0/24"],
        "slices"
    );
    // etcd holds the zone, three hosts and three slice claims, and the zone's VNI.
    let keys = ok(mh
        .etcdctl()
        .args(["get", "--prefix", "--keys-only", "/rnet/zones/web"]));
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 7, "{keys:?}");
    assert!(keys.contains(&"/rnet/zones/web"));
    assert!(keys.contains(&"/rnet/zones/web/hosts/h1"));
    assert_eq!(
        ok(mh
            .etcdctl()
            .args(["get", "--print-value-only", "/rnet/vnis/77"]))
        .trim(),
        "web"
    );
    // Another zone cannot take VNI 77 (its packets would reach web's devices): one line, and
    // no link, key or record of it.
    let out = output(mh.hosts[1].rnet().args([
        "zone",
        "create",
        "clash",
        "--distributed",
        "--subnet",
        "10.79.0.0/16",
        "--vni",
        "77",
    ]));
    assert!(!out.status.success());
    assert_eq!(
        text(&out).trim_end(),
        "rnet: zone clash: VNI 77 is zone web's in etcd: choose another with --vni"
    );
    assert!(!mh.hosts[1].host_has_link("vz-clash") && !mh.hosts[1].host_has_link("vx-clash"));
    let clash = ok(mh
        .etcdctl()
        .args(["get", "--prefix", "--keys-only", "/rnet/zones/clash"]));
    assert!(clash.trim().is_empty(), "{clash}");
    // Every host learns the others from the watch.
    for h in &mh.hosts {
        assert!(
            wait_until(Duration::from_secs(10), || hosts_of(h, "web").len() == 3),
            "{:?}\n{}",
            hosts_of(h, "web"),
            logs(&mh)
        );
    }
    // What an admin reads.
    let human = ok(mh.hosts[0].rnet().args(["zone", "show", "web"]));
    assert!(
        human.contains("  distributed: subnet 10.77.0.0/16, VNI 77, this host h0\n"),
        "{human}"
    );
    for (i, slice) in [(1, &slices_of_host(&mh, 1)), (2, &slices_of_host(&mh, 2))] {
        let line = format!(
            "    host h{i:<19} underlay {:<16} slice {slice}",
            MultiHost::host_addr(i)
        );
        assert!(human.contains(&line), "{line:?} not in\n{human}");
    }

    // The data path: vx-web with VNI 77, no learning, and a route per remote slice.
    let vx = rig::ip_json(
        mh.hosts[0]
            .in_host("ip")
            .args(["-j", "-d", "link", "show", "vx-web"]),
    );
    let info = &vx[0]["linkinfo"]["info_data"];
    assert_eq!(info["id"], 77, "{vx}");
    assert_eq!(info["port"], 4789, "{vx}");
    assert_eq!(info["learning"], false, "{vx}");
    assert_eq!(info["local"], MultiHost::host_addr(0), "{vx}");
    let routes = ok(mh.hosts[0]
        .in_host("ip")
        .args(["route", "show", "dev", "vx-web"]));
    assert_eq!(routes.lines().count(), 2, "{routes}\n{}", logs(&mh));

    let members: Vec<(u64, String)> = (0..3)
        .map(|i| member(&mut mh.hosts[i], "web", &format!("m{i}")))
        .collect();
    for (i, m) in members.iter().enumerate() {
        let slice: ipnetwork::Ipv4Network = show(&mh.hosts[i], "web")["subnet"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            slice.contains(m.1.parse().unwrap()),
            "{} not in {slice}",
            m.1
        );
    }
    for (i, from) in members.iter().enumerate() {
        for (j, to) in members.iter().enumerate() {
            if i != j {
                let what = format!("h{i} -> h{j}");
                assert_ping(from, &to.1, &what, || logs(&mh));
                assert_tcp(from, &to.1, &what);
            }
        }
    }

    // --underlay-filter: VXLAN only from the zone's other hosts; the members' traffic above
    // passed it, a sender elsewhere on the underlay is dropped.
    let table = ok(mh.hosts[0]
        .in_host("nft")
        .args(["list", "table", "inet", "rnet_underlay"]));
    assert!(
        table.contains("elements = { 198.51.100.12, 198.51.100.13 }"),
        "{table}"
    );
    let _ = output(mh.in_underlay(netprobe()).args([
        "connect",
        "udp",
        &MultiHost::host_addr(0),
        "4789",
    ]));
    let table = ok(mh.hosts[0]
        .in_host("nft")
        .args(["list", "table", "inet", "rnet_underlay"]));
    assert!(table.contains("counter packets 1 "), "{table}");

    // A second zone on hosts 0 and 1: its own VNI; neither zone reaches the other, on the same
    // host or across hosts.
    for h in &mh.hosts[..2] {
        let out = output(h.rnet().args([
            "zone",
            "create",
            "db",
            "--distributed",
            "--subnet",
            "10.78.0.0/16",
        ]));
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(wait_until(Duration::from_secs(10), || hosts_of(
        &mh.hosts[0],
        "db"
    )
    .len()
        == 2));
    let d1 = member(&mut mh.hosts[1], "db", "d1");
    let d0 = member(&mut mh.hosts[0], "db", "d0");
    assert_tcp(&d0, &d1.1, "db h0 -> h1");
    assert_no_tcp(&d1, &members[0].1, "db on h1 -> web on h0");
    assert_no_tcp(&d1, &members[1].1, "db on h1 -> web on h1");
    assert_no_tcp(&members[2], &d1.1, "web on h2 -> db on h1");
    assert_no_tcp(&members[0], &d1.1, "web on h0 -> db on h1");

    // An --isolated zone across hosts: its members reach their gateway, not each other.
    for h in &mh.hosts[..2] {
        let out = output(h.rnet().args([
            "zone",
            "create",
            "iso",
            "--distributed",
            "--isolated",
            "--subnet",
            "10.79.0.0/16",
        ]));
        assert!(out.status.success(), "{}", text(&out));
    }
    let i0 = member(&mut mh.hosts[0], "iso", "i0");
    let i1 = member(&mut mh.hosts[1], "iso", "i1");
    let gw0 = show(&mh.hosts[0], "iso")["address"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ping(&i0, &gw0, "iso member to its gateway", String::new);
    assert!(
        wait_until(Duration::from_secs(10), || hosts_of(&mh.hosts[0], "iso")
            .len()
            == 2),
        "{}",
        logs(&mh)
    );
    assert_no_tcp(&i0, &i1.1, "isolated zone h0 -> h1");
    assert_no_tcp(&i1, &i0.1, "isolated zone h1 -> h0");

    // rnetd restarts: it finds its slice and entries again; traffic never needed it.
    mh.hosts[2].stop_rnetd(Signal::SIGTERM);
    assert_tcp(
        &members[0],
        &members[2].1,
        "h0 -> h2 while h2's rnetd is down",
    );
    mh.start_rnetd(2, TTL);
    assert_eq!(
        show(&mh.hosts[2], "web")["subnet"],
        slices_of(&slices, &members[2].1)
    );
    assert!(
        wait_until(Duration::from_secs(10), || hosts_of(&mh.hosts[2], "web")
            .len()
            == 3),
        "{}",
        logs(&mh)
    );
    assert!(mh.hosts[2].log().contains("distributed zone resumed"));
    assert_tcp(&members[2], &members[1].1, "h2 -> h1 after h2's restart");
    // After more than a TTL the other hosts still list it: the restarted rnetd renews.
    std::thread::sleep(Duration::from_secs(TTL + 1));
    assert_eq!(hosts_of(&mh.hosts[0], "web"), ["h0", "h1", "h2"]);
    assert_tcp(
        &members[0],
        &members[2].1,
        "h0 -> h2 a TTL after h2's restart",
    );

    // Deleting the zone on one host withdraws it from the others.
    let out = output(mh.hosts[1].rnet().args(["zone", "delete", "db", "--force"]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(!mh.hosts[1].host_has_link("vx-db"));
    assert!(
        wait_until(Duration::from_secs(10), || hosts_of(&mh.hosts[0], "db")
            == ["h0"]),
        "{}",
        logs(&mh)
    );
    for h in &mh.hosts {
        h.assert_no_panic();
    }
}

/// Host `i`'s slice of zone web, as it says.
fn slices_of_host(mh: &MultiHost, i: usize) -> String {
    show(&mh.hosts[i], "web")["subnet"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The slice (of `slices`) holding `addr`.
fn slices_of(slices: &[String], addr: &str) -> String {
    let a: std::net::Ipv4Addr = addr.parse().unwrap();
    slices
        .iter()
        .find(|s| s.parse::<ipnetwork::Ipv4Network>().unwrap().contains(a))
        .unwrap()
        .clone()
}

#[test]
fn etcd_failures_and_a_dead_host_leave_the_data_path_working() {
    let test = "etcd_failures_and_a_dead_host_leave_the_data_path_working";
    if !available(test) {
        return;
    }
    let mut mh = MultiHost::new(3, 3);
    for i in 0..3 {
        mh.start_rnetd(i, TTL);
    }
    for h in &mh.hosts[..2] {
        let out = output(h.rnet().args([
            "zone",
            "create",
            "web",
            "--distributed",
            "--subnet",
            "10.77.0.0/16",
        ]));
        assert!(out.status.success(), "{}\n{}", text(&out), logs(&mh));
    }
    let a = member(&mut mh.hosts[0], "web", "a");
    let b = member(&mut mh.hosts[1], "web", "b");
    assert!(wait_until(Duration::from_secs(10), || hosts_of(
        &mh.hosts[0],
        "web"
    )
    .len()
        == 2));
    assert_tcp(&a, &b.1, "h0 -> h1");

    // One etcd member down: nothing changes, a host still joins, here through its first
    // member (no `zone create` on host 2: etcd says the zone spans hosts).
    mh.stop_etcd(2);
    assert_tcp(&a, &b.1, "h0 -> h1, one etcd member down");
    let c = member(&mut mh.hosts[2], "web", "c");
    assert_eq!(show(&mh.hosts[2], "web")["explicit"], true);
    assert!(
        wait_until(Duration::from_secs(10), || hosts_of(&mh.hosts[0], "web")
            .len()
            == 3),
        "{}",
        logs(&mh)
    );
    assert_tcp(&c, &a.1, "h2 -> h0, one etcd member down");

    // Two down (no quorum): the data path works, members of hosts holding a slice start, a
    // new host's join fails with one clear line, in bounded time.
    mh.stop_etcd(1);
    assert_tcp(&a, &b.1, "h0 -> h1 without quorum");
    assert_tcp(&b, &c.1, "h1 -> h2 without quorum");
    let a2 = member(&mut mh.hosts[0], "web", "a2");
    assert_tcp(&a2, &b.1, "a new member on h0 -> h1 without quorum");
    let out = output(mh.hosts[2].rnet().args([
        "zone",
        "create",
        "db",
        "--distributed",
        "--subnet",
        "10.78.0.0/16",
    ]));
    assert!(
        !out.status.success(),
        "joined without quorum: {}",
        text(&out)
    );
    let err = text(&out);
    assert!(err.contains("etcd (http://198.51.100.1:2379,"), "{err}");
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        !mh.hosts[2].host_has_link("vz-db"),
        "a failed join left vz-db"
    );
    assert!(
        !mh.hosts[2].host_has_link("vx-db"),
        "a failed join left vx-db"
    );
    // A member of a zone host 2 does not have cannot start either: whether the zone spans
    // hosts is etcd's to say.
    let out =
        output(
            mh.hosts[2]
                .rnet()
                .args(["run", "--network-zone=db", "-M", "x", "--", "true"]),
        );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("zone db: cannot tell whether it spans hosts: etcd ("),
        "{}",
        text(&out)
    );
    assert!(!mh.hosts[2].host_has_link("vz-db"));

    // Quorum back; then host 1 dies (rnetd killed): after its lease's TTL the others drop its
    // entries, and traffic between the others goes on.
    mh.start_etcd(1);
    mh.start_etcd(2);
    assert!(
        wait_until(Duration::from_secs(30), || mh.etcd_healthy()),
        "{}",
        mh.etcd_logs()
    );
    assert!(
        wait_until(Duration::from_secs(15), || hosts_of(&mh.hosts[0], "web")
            .len()
            == 3),
        "{}",
        logs(&mh)
    );
    let b_slice = show(&mh.hosts[1], "web")["subnet"]
        .as_str()
        .unwrap()
        .to_owned();
    mh.hosts[1].stop_rnetd(Signal::SIGKILL);
    for h in [0, 2] {
        let host = &mh.hosts[h];
        assert!(
            wait_until(Duration::from_secs(TTL * 4), || hosts_of(host, "web")
                == ["h0", "h2"]),
            "h{h} still lists h1: {:?}\n{}",
            hosts_of(host, "web"),
            logs(&mh)
        );
        let routes = ok(host.in_host("ip").args(["route", "show", "dev", "vx-web"]));
        assert!(!routes.contains(&b_slice), "h{h} kept h1's route: {routes}");
        let fdb = ok(host
            .in_host("bridge")
            .args(["fdb", "show", "dev", "vx-web"]));
        assert_eq!(
            fdb.lines().filter(|l| l.contains("dst")).count(),
            1,
            "{fdb}"
        );
    }
    assert_tcp(&a, &c.1, "h0 -> h2 after h1 died");
    assert_tcp(&c, &a2.1, "h2 -> h0 after h1 died");
    for i in [0, 2] {
        mh.hosts[i].assert_no_panic();
    }
}

#[test]
fn without_etcd_a_distributed_zone_is_refused_with_one_line() {
    let test = "without_etcd_a_distributed_zone_is_refused_with_one_line";
    if !rig::privileged(test) {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let out = output(rig.rnet().args(["zone", "create", "web", "--distributed"]));
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "rnet: zone web is distributed, but rnetd runs without --etcd"
    );
    assert!(!rig.host_has_link("vz-web"));
}
