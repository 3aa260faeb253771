//! End-to-end tests of hostile containers: a rogue DHCP server, spoofed source addresses, ARP
//! poisoning and spoofed MAC addresses, each sent for real from inside a container and checked
//! with a sniffer at the receiving end (`hostile sniff`), next to a sniffer on the attacker's
//! host-side port that shows the attack was really sent, and an honest control that gets through.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rig::{
    HOST_ADDR, Rig, UPLINK_ADDR, Value, hostile, in_pid_netns, ip_json, netprobe, ok, output,
    privileged, wait_until,
};

/// A started sniffer: the file its lines go to.
struct Sniff(PathBuf);

impl Sniff {
    /// Sniffs `iface` in the netns `cmd` runs `hostile` in (`in_host`, `in_uplink`,
    /// `in_pid_netns`).
    fn start(
        rig: &mut Rig,
        cmd: impl FnOnce(&Rig) -> std::process::Command,
        iface: &str,
        dir: &Path,
    ) -> Self {
        let file = dir.join(format!("sniff-{iface}-{}.log", rand_tag()));
        let mut cmd = cmd(rig);
        rig.spawn_ready(cmd.args(["sniff", iface]).arg(&file));
        Sniff(file)
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }

    /// The lines that contain every one of `needles`.
    fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// Waits (up to 5 s) for a line with all of `needles`.
    fn wait_for(&self, needles: &[&str]) -> bool {
        wait_until(Duration::from_secs(5), || {
            !self.lines_with(needles).is_empty()
        })
    }
}

fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn field<'a>(m: &'a Value, key: &str) -> &'a str {
    m[key].as_str().unwrap_or_else(|| panic!("no {key} in {m}"))
}

fn pid(m: &Value) -> u64 {
    m["pid"].as_u64().unwrap()
}

/// Starts a container that sleeps, on `network` (`-n`, `--network-zone=Z`, ...), and returns
/// its machine record.
fn sleeper(rig: &mut Rig, network: &[&str], name: &str) -> Value {
    let mut cmd = rig.rnet();
    cmd.arg("run")
        .args(network)
        .args(["-M", name, "--", "sleep", "120"]);
    rig.spawn(&mut cmd);
    rig.wait_machine(name)
}

/// Runs a shell script in the network namespace of machine `m`; returns its output.
fn sh_in(m: &Value, script: &str) -> std::process::Output {
    output(in_pid_netns(pid(m), "sh").args(["-c", script]))
}

fn mac_of(links: &Value) -> String {
    links[0]["address"].as_str().unwrap().to_owned()
}

/// A udhcpc script that applies the lease with `ip` and prints it with the server's identity.
fn udhcpc_script(dir: &Path) -> String {
    let path = dir.join("udhcpc.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\ncase \"$1\" in bound|renew)\n  ip addr add \"$ip/$mask\" dev \"$interface\"\n  \
         echo \"LEASE $ip/$mask $router $serverid\";;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn a_rogue_dhcp_server_in_a_zone_member_is_not_heard_by_the_others() {
    if !privileged("a_rogue_dhcp_server_in_a_zone_member_is_not_heard_by_the_others") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let rogue = sleeper(&mut rig, &["--network-zone=dz"], "rogue");
    let victim = sleeper(&mut rig, &["--network-zone=dz"], "victim");
    let (rogue_addr, gateway) = (
        field(&rogue, "container_address"),
        field(&rogue, "host_address"),
    );
    let victim_addr = field(&victim, "container_address");

    // The rogue serves addresses of its own (.200-.210) and names itself the router.
    let net = rogue_addr.rsplit_once('.').unwrap().0;
    let conf = t.join("udhcpd.conf");
    std::fs::write(t.join("udhcpd.leases"), "").unwrap();
    std::fs::write(
        &conf,
        format!(
            "start {net}.200\nend {net}.210\ninterface host0\nlease_file {d}/udhcpd.leases\n\
             pidfile {d}/udhcpd.pid\noption subnet 255.255.255.0\noption router {rogue_addr}\n",
            d = t.display()
        ),
    )
    .unwrap();
    let server = rig.spawn(
        in_pid_netns(pid(&rogue), "busybox")
            .args(["udhcpd", "-f", "-a", "100"])
            .arg(&conf),
    );
    // What the rogue sends (its port's host side sees it before the bridge decides) and what the
    // victim receives.
    let sent = Sniff::start(&mut rig, |r| r.in_host(hostile()), "vb-rogue", t);
    let heard = Sniff::start(
        &mut rig,
        |_| in_pid_netns(pid(&victim), hostile()),
        "host0",
        t,
    );

    let script = format!(
        "ip addr flush dev host0 && udhcpc -i host0 -n -q -f -t 5 -T 1 -s {}",
        udhcpc_script(t)
    );
    let out = sh_in(&victim, &script);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The lease comes from rnetd: the address it assigned, the zone's gateway as router and
    // server.
    let lease = text.lines().find(|l| l.starts_with("LEASE ")).unwrap();
    assert_eq!(lease, format!("LEASE {victim_addr}/24 {gateway} {gateway}"));

    // Positive control: the rogue's server heard the DISCOVER and answered it.
    let rogue_offer = [&format!("IP {rogue_addr} > ")[..], "PORTS 67 > 68"];
    if !sent.wait_for(&rogue_offer) {
        rig.signal(server, nix::sys::signal::Signal::SIGTERM);
        let out = rig.wait(server);
        panic!(
            "the rogue DHCP server never answered: {}\nsent:\n{}",
            String::from_utf8_lossy(&out.stderr),
            sent.text()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    // The victim heard rnetd's answers (the sniffer works) and nothing of the rogue's.
    assert!(
        !heard
            .lines_with(&[&format!("IP {gateway} > "), "PORTS 67 > 68"])
            .is_empty(),
        "{}",
        heard.text()
    );
    // Matched on the rogue's MAC and the client port: where br_netfilter is loaded, bridged
    // traffic also passes table inet rnet, whose masquerade rewrites a broadcast's source.
    let from_rogue = format!("ETH {} > ", field(&rogue, "container_mac"));
    let rogue_to_clients: Vec<String> = heard
        .lines_with(&[&from_rogue, "PROTO 17"])
        .into_iter()
        .filter(|l| l.ends_with("> 68"))
        .collect();
    assert_eq!(rogue_to_clients, Vec::<String>::new());
    // The victim's address still works: it reaches the gateway.
    ok(in_pid_netns(pid(&victim), "ping").args(["-c1", "-W2", gateway]));
}

#[test]
fn spoofed_source_addresses_from_ve_links_and_zone_ports_reach_nobody() {
    if !privileged("spoofed_source_addresses_from_ve_links_and_zone_ports_reach_nobody") {
        return;
    }
    let mut rig = Rig::new();
    // The kernel's own reverse-path filter off, so that only rnet's rules can drop a spoof.
    for key in ["all", "default"] {
        ok(rig
            .in_host("sysctl")
            .args(["-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")]));
    }
    rig.start_rnetd();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let uplink_if = format!("{}dn", rig.prefix);
    let at_uplink = Sniff::start(&mut rig, |r| r.in_uplink(hostile()), &uplink_if, t);

    let x = sleeper(&mut rig, &["-n"], "x");
    let y = sleeper(&mut rig, &["-n"], "y");
    let m1 = sleeper(&mut rig, &["--network-zone=sz"], "m1");
    let m2 = sleeper(&mut rig, &["--network-zone=sz"], "m2");
    let (x_addr, y_addr) = (
        field(&x, "container_address"),
        field(&y, "container_address"),
    );
    let (m1_addr, m2_addr) = (
        field(&m1, "container_address"),
        field(&m2, "container_address"),
    );
    let zone_gw = field(&m1, "host_address");
    let bridge_mac = mac_of(&rig.host_ip(&["link", "show", "dev", "vz-sz"]));
    let at_m1 = Sniff::start(&mut rig, |_| in_pid_netns(pid(&m1), hostile()), "host0", t);
    let from_x = Sniff::start(&mut rig, |r| r.in_host(hostile()), "ve-x", t);
    let from_m2 = Sniff::start(&mut rig, |r| r.in_host(hostile()), "vb-m2", t);
    let tool = hostile().display().to_string();

    // From the ve- link: its own address (control, port 7000), then another container's, the
    // host's uplink address and a random one (ports 7001..). Next hops are resolved up front, so
    // that no ARP from a spoofed address is needed.
    let spoofs_x = [x_addr, y_addr, HOST_ADDR, "198.51.100.7"];
    let mut script = format!(
        "ip neigh replace {gw} lladdr {mac} dev host0 nud permanent",
        gw = field(&x, "host_address"),
        mac = field(&x, "host_mac")
    );
    for (i, src) in spoofs_x.iter().enumerate() {
        if i > 0 {
            script += &format!(" && ip addr add {src}/32 dev host0");
        }
        script += &format!(" && {tool} udp {src} {UPLINK_ADDR} {}", 7000 + i);
    }
    let out = sh_in(&x, &script);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // From a zone port: its own address (control), then another container's, the zone's
    // gateway, the host's uplink address and a random one; to another member (7000..) and to
    // the uplink (7100..).
    let spoofs_m2 = [m2_addr, x_addr, zone_gw, HOST_ADDR, "198.51.100.7"];
    let mut script = format!(
        "ip neigh replace {zone_gw} lladdr {bridge_mac} dev host0 nud permanent && \
         ip neigh replace {m1_addr} lladdr {mac} dev host0 nud permanent",
        mac = field(&m1, "container_mac")
    );
    for (i, src) in spoofs_m2.iter().enumerate() {
        if i > 0 {
            script += &format!(" && ip addr add {src}/32 dev host0");
        }
        script += &format!(
            " && {tool} udp {src} {m1_addr} {} && {tool} udp {src} {UPLINK_ADDR} {}",
            7000 + i,
            7100 + i
        );
    }
    let out = sh_in(&m2, &script);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Controls: the real addresses got through (masqueraded to the uplink, bridged to m1).
    assert!(at_uplink.wait_for(&[
        &format!("IP {HOST_ADDR} > {UPLINK_ADDR} PROTO 17"),
        "> 7000"
    ]));
    assert!(at_uplink.wait_for(&[
        &format!("IP {HOST_ADDR} > {UPLINK_ADDR} PROTO 17"),
        "> 7100"
    ]));
    assert!(at_m1.wait_for(&[&format!("IP {m2_addr} > {m1_addr} PROTO 17"), "> 7000"]));
    // The spoofs were really sent into the host...
    for (i, src) in spoofs_x.iter().enumerate().skip(1) {
        let port = format!("> {}", 7000 + i);
        assert!(
            from_x.wait_for(&[&format!("IP {src} > "), &port]),
            "{}",
            from_x.text()
        );
    }
    for (i, src) in spoofs_m2.iter().enumerate().skip(1) {
        let port = format!("> {}", 7100 + i);
        assert!(
            from_m2.wait_for(&[&format!("IP {src} > "), &port]),
            "{}",
            from_m2.text()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    // ... and reached nobody.
    let udp_to = |s: &Sniff, port: usize| {
        s.text()
            .lines()
            .filter(|l| l.contains("PROTO 17") && l.ends_with(&format!("> {port}")))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    for (i, src) in spoofs_x.iter().enumerate().skip(1) {
        assert_eq!(udp_to(&at_uplink, 7000 + i), Vec::<String>::new(), "{src}");
    }
    for (i, src) in spoofs_m2.iter().enumerate().skip(1) {
        assert_eq!(udp_to(&at_uplink, 7100 + i), Vec::<String>::new(), "{src}");
        assert_eq!(udp_to(&at_m1, 7000 + i), Vec::<String>::new(), "{src}");
    }
}

#[test]
fn arp_poisoning_from_a_zone_member_poisons_nobody() {
    if !privileged("arp_poisoning_from_a_zone_member_poisons_nobody") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    rig.spawn_ready(rig.in_uplink(netprobe()).args(["serve", "tcp:7000"]));
    let victim = sleeper(&mut rig, &["--network-zone=az"], "victim");
    let attacker = sleeper(&mut rig, &["--network-zone=az"], "attacker");
    let (v_addr, a_addr) = (
        field(&victim, "container_address"),
        field(&attacker, "container_address"),
    );
    let (v_mac, a_mac) = (
        field(&victim, "container_mac"),
        field(&attacker, "container_mac"),
    );
    let gateway = field(&victim, "host_address");
    let bridge_mac = mac_of(&rig.host_ip(&["link", "show", "dev", "vz-az"]));
    // Neighbour entries to poison: the victim's for the gateway, the host's for the victim.
    ok(in_pid_netns(pid(&victim), "ping").args(["-c1", "-W2", gateway]));
    ok(rig.in_host("ping").args(["-c1", "-W2", v_addr]));
    // Past the neighbour lock time (1 s), an ARP would override them.
    std::thread::sleep(Duration::from_millis(1200));
    let heard = Sniff::start(
        &mut rig,
        |_| in_pid_netns(pid(&victim), hostile()),
        "host0",
        t,
    );
    let sent = Sniff::start(&mut rig, |r| r.in_host(hostile()), "vb-attacker", t);

    // Control: an honest gratuitous ARP. Then: the gateway's address claimed (gratuitous and as
    // replies to the victim), and the victim's address claimed to the gateway.
    let script = format!(
        "busybox arping -U -c 2 -I host0 -s {a_addr} {a_addr}; \
         ip addr add {gateway}/32 dev host0 && ip addr add {v_addr}/32 dev host0 && \
         busybox arping -U -c 2 -I host0 -s {gateway} {gateway}; \
         busybox arping -A -c 2 -I host0 -s {gateway} {v_addr}; \
         busybox arping -U -c 2 -I host0 -s {v_addr} {v_addr}; true"
    );
    sh_in(&attacker, &script);
    let claim = |addr: &str| format!("SHA {a_mac} SPA {addr} ");
    assert!(sent.wait_for(&[&claim(gateway)]), "{}", sent.text());
    assert!(sent.wait_for(&[&claim(v_addr)]), "{}", sent.text());
    assert!(
        heard.wait_for(&[&claim(a_addr)]),
        "honest ARP not heard: {}",
        heard.text()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(heard.lines_with(&[&claim(gateway)]), Vec::<String>::new());
    assert_eq!(heard.lines_with(&[&claim(v_addr)]), Vec::<String>::new());

    // Nobody's neighbour table changed, and the victim still goes out through the gateway.
    let lladdr = |neigh: Value| {
        neigh
            .as_array()
            .and_then(|n| n.first())
            .and_then(|n| n["lladdr"].as_str())
            .unwrap_or("none")
            .to_owned()
    };
    let victims_view = ip_json(
        in_pid_netns(pid(&victim), "ip").args(["-j", "neigh", "show", gateway, "dev", "host0"]),
    );
    assert_eq!(lladdr(victims_view), bridge_mac);
    let hosts_view = rig.host_ip(&["neigh", "show", v_addr, "dev", "vz-az"]);
    assert_eq!(lladdr(hosts_view), v_mac);
    ok(in_pid_netns(pid(&victim), netprobe()).args(["connect", "tcp", UPLINK_ADDR, "7000"]));
}

#[test]
fn frames_with_a_foreign_mac_from_zone_and_bridge_ports_are_dropped() {
    if !privileged("frames_with_a_foreign_mac_from_zone_and_bridge_ports_are_dropped") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // An admin's bridge, with two members addressed by hand (no DHCP from us there).
    let br = format!("{}br", rig.prefix);
    ok(rig
        .in_host("ip")
        .args(["link", "add", &br, "type", "bridge"]));
    ok(rig.in_host("ip").args(["link", "set", &br, "up"]));
    let g1 = sleeper(&mut rig, &["--network-bridge", &br], "g1");
    let g2 = sleeper(&mut rig, &["--network-bridge", &br], "g2");
    for (m, addr) in [(&g1, "10.77.0.11/24"), (&g2, "10.77.0.12/24")] {
        let out = sh_in(
            m,
            &format!("ip link set host0 up && ip addr add {addr} dev host0"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let m1 = sleeper(&mut rig, &["--network-zone=mz"], "m1");
    let m2 = sleeper(&mut rig, &["--network-zone=mz"], "m2");
    let cases = [
        (
            &m1,
            &m2,
            field(&m1, "container_address").to_owned(),
            "vb-m2",
        ),
        (&g1, &g2, "10.77.0.11".to_owned(), "vb-g2"),
    ];
    for (victim, attacker, victim_addr, port) in cases {
        let heard = Sniff::start(
            &mut rig,
            |_| in_pid_netns(pid(victim), hostile()),
            "host0",
            t,
        );
        let sent = Sniff::start(&mut rig, |r| r.in_host(hostile()), port, t);
        // Control: with its own MAC the attacker reaches the victim.
        ok(in_pid_netns(pid(attacker), "ping").args(["-c1", "-W2", &victim_addr]));
        let own = format!("ETH {} > ", field(attacker, "container_mac"));
        assert!(heard.wait_for(&[&own]), "{port}: {}", heard.text());
        // With another MAC it reaches nobody.
        let fake = "02:66:66:66:66:66";
        let out = sh_in(
            attacker,
            &format!(
                "ip link set host0 down && ip link set host0 address {fake} && \
                 ip link set host0 up && ip neigh flush dev host0 && \
                 ping -c2 -W2 {victim_addr}"
            ),
        );
        assert!(
            !out.status.success(),
            "{port}: the ping with {fake} got an answer"
        );
        assert!(
            sent.wait_for(&[&format!("ETH {fake} > ")]),
            "{port}: {}",
            sent.text()
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            heard.lines_with(&[&format!("ETH {fake} > ")]),
            Vec::<String>::new(),
            "{port}"
        );
    }
}
