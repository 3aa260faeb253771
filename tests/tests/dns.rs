//! End-to-end tests of DNS for containers on a host running systemd-resolved: rnetd's
//! `--resolv-conf` names only the stub 127.0.0.53 (which does not exist in a container's
//! namespace), its `--resolved-conf` the uplink's DNS server (dnsmasq on 203.0.113.1 serving
//! `www.example.test`). Containers get the forwarder at their gateway, and a resolv.conf naming
//! it bound over `/etc/resolv.conf` in their own mount namespace.

use std::process::Output;

use rig::{Rig, Value, WWW_ADDR, output, privileged};

/// The lines of a container's output that start with `KEY `, without the key, their words
/// separated by one space.
fn field(out: &str, key: &str) -> String {
    out.lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `script` with sh in a new container of `network` (e.g. `-n`), named `name`; panics
/// with rnetd's log if it fails. Its stdout.
fn run(rig: &Rig, network: &str, name: &str, script: &str) -> String {
    let out: Output = output(
        rig.rnet()
            .args(["run", network, "-M", name, "--", "sh", "-c", script]),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name}: {text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        rig.log()
    );
    text
}

/// A container's default gateway, in shell.
const GW: &str = "gw=$(ip -4 route show default | awk '{print $3}'); echo \"GW $gw\"";

/// A long-running zone member named `name` (a netprobe server); its machine record.
fn member(rig: &mut Rig, zone: &str, name: &str) -> Value {
    rig.spawn_ready(
        rig.rnet()
            .args(["run", &format!("--network-zone={zone}"), "-M", name, "--"])
            .arg(rig::netprobe())
            .args(["serve", "tcp:80"]),
    );
    rig.wait_machine(name)
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_container_resolves_through_its_gateway_on_a_resolved_host() {
    if !privileged("a_container_resolves_through_its_gateway_on_a_resolved_host") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_uplink_dns();
    rig.start_rnetd_resolved();
    let host_resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    // The host's mounts that a container's resolv.conf could leak into: anything on /etc or
    // /tmp. (Not the whole table: other test processes add and remove /run/netns mounts.)
    let resolv_mounts = || -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|point| point.starts_with("/etc") || point.starts_with("/tmp"))
            })
            .map(str::to_owned)
            .collect()
    };
    let host_mounts = resolv_mounts();
    let out = run(
        &rig,
        "-n",
        "web",
        &format!(
            "{GW}
             echo \"RESOLV $(grep -v '^#' /etc/resolv.conf | tr '\\n' ' ')\"
             echo \"WWW $(getent hosts www.example.test)\"
             echo \"NX $(getent hosts nx.example.test || echo none)\"
             echo \"GATEWAY $(getent ahostsv4 _gateway | head -1)\"
             echo \"DIRECT $(busybox nslookup www.example.test $gw | grep -c {WWW_ADDR})\"
             echo \"TMP $(ls -d /tmp/rnt* | head -1)\"
             echo \"MODE $(stat -c %a /etc/resolv.conf)\"
             echo \"NESTED $(mount --bind /etc/hostname /etc/resolv.conf && echo ok)\""
        ),
    );
    let gw = field(&out, "GW");
    assert!(gw.parse::<std::net::Ipv4Addr>().is_ok(), "{out}");
    // The container's resolv.conf names its gateway only; the host's is what it was (and is not
    // the container's: the control that the bind mount was seen at all).
    assert_eq!(field(&out, "RESOLV"), format!("nameserver {gw}"), "{out}");
    assert_eq!(
        std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        host_resolv
    );
    assert!(
        !String::from_utf8_lossy(&host_resolv).contains(&format!("nameserver {gw}")),
        "the host's resolv.conf names the container's gateway"
    );
    assert_eq!(resolv_mounts(), host_mounts, "the host's mounts changed");
    // Only /etc/resolv.conf is the container's: its /tmp is the host's (the rig's own
    // directory is there). The file is readable by a payload that dropped privileges, the
    // payload may mount over it in turn (as a DHCP client's test harness does), and the
    // launcher's copy of it is gone from the runtime directory once the machine ended.
    assert!(field(&out, "TMP").starts_with("/tmp/rnt"), "{out}");
    assert_eq!(field(&out, "MODE"), "644", "{out}");
    assert_eq!(field(&out, "NESTED"), "ok", "{out}");
    let left: Vec<_> = std::fs::read_dir(rig.runtime_dir().join("machines"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".resolv.conf"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Through libc (the generated resolv.conf) and directly at the gateway: the uplink's name,
    // forwarded to the server resolved's file names. A name the uplink does not have fails.
    assert!(
        field(&out, "WWW").starts_with(&format!("{WWW_ADDR} ")),
        "{out}\n{}",
        rig.log()
    );
    assert_eq!(field(&out, "NX"), "none", "{out}");
    assert_eq!(field(&out, "DIRECT"), "1", "{out}");
    // The gateway name resolves to the link's IPv4 gateway (its AAAA, the IPv6 gateway, is
    // checked in ipv6.rs).
    assert!(
        field(&out, "GATEWAY").starts_with(&format!("{gw} ")),
        "{out}"
    );
    rig.assert_no_panic();
}

#[test]
fn zone_members_resolve_each_other_but_not_another_zones() {
    if !privileged("zone_members_resolve_each_other_but_not_another_zones") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_uplink_dns();
    rig.start_rnetd_resolved();
    let a = member(&mut rig, "blue", "a");
    let r = member(&mut rig, "red", "r");
    let (a_addr, r_addr) = (text(&a["container_address"]), text(&r["container_address"]));
    let (blue_gw, red_gw) = (text(&a["host_address"]), text(&r["host_address"]));
    // The answer's DNS server is the gateway (what host0 and DHCP get).
    assert_eq!(a["dns"], serde_json::json!([blue_gw]), "{a}");

    let blue = run(
        &rig,
        "--network-zone=blue",
        "b",
        &format!(
            "echo \"RESOLV $(grep -v '^#' /etc/resolv.conf | tr '\\n' ' ')\"
             echo \"SHORT $(getent hosts a)\"
             echo \"FQDN $(getent hosts a.blue)\"
             echo \"PTR $(getent hosts {a_addr})\"
             echo \"MISSING $(getent hosts zz || echo none)\""
        ),
    );
    assert_eq!(
        field(&blue, "RESOLV"),
        format!("nameserver {blue_gw} search blue"),
        "{blue}"
    );
    // A member has both families; glibc's `getent hosts` shows the AAAA (rnetd answers a
    // member's AAAA with its IPv6 address, see ipv6.rs).
    let a6 = text(&a["container_address6"]);
    assert_eq!(field(&blue, "SHORT"), format!("{a6} a.blue"), "{blue}");
    assert_eq!(field(&blue, "FQDN"), format!("{a6} a.blue"), "{blue}");
    assert_eq!(field(&blue, "PTR"), format!("{a_addr} a.blue"), "{blue}");
    assert_eq!(field(&blue, "MISSING"), "none", "{blue}");

    // From the red zone: its own member resolves (the control), blue's do not, by name, by
    // NAME.ZONE, by address, nor by asking blue's gateway directly (the listener is bound to
    // blue's bridge).
    let red = run(
        &rig,
        "--network-zone=red",
        "q",
        &format!(
            "echo \"OWN $(getent hosts r)\"
             echo \"OWNDIRECT $(busybox nslookup r {red_gw} | grep -c {r_addr})\"
             echo \"OTHER $(getent hosts a || echo none)\"
             echo \"OTHERFQDN $(getent hosts a.blue || echo none)\"
             echo \"OTHERPTR $(getent hosts {a_addr} || echo none)\"
             echo \"OTHERGW $(busybox nslookup a {blue_gw} 2>&1 | grep -c {a_addr})\""
        ),
    );
    let r6 = text(&r["container_address6"]);
    assert_eq!(field(&red, "OWN"), format!("{r6} r.red"), "{red}");
    assert_eq!(field(&red, "OWNDIRECT"), "1", "{red}");
    assert_eq!(field(&red, "OTHER"), "none", "{red}");
    assert_eq!(field(&red, "OTHERFQDN"), "none", "{red}");
    assert_eq!(field(&red, "OTHERPTR"), "none", "{red}");
    assert_eq!(field(&red, "OTHERGW"), "0", "{red}");
    rig.assert_no_panic();
}

#[test]
fn a_malformed_query_burst_is_dropped_and_rnetd_keeps_answering() {
    if !privileged("a_malformed_query_burst_is_dropped_and_rnetd_keeps_answering") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_uplink_dns();
    rig.start_rnetd_resolved();
    // Random datagrams, a response instead of a query, a query without a question, garbage over
    // TCP; then a real query.
    let out = run(
        &rig,
        "-n",
        "junk",
        &format!(
            "{GW}
             echo \"BEFORE $(getent hosts www.example.test)\"
             bash -c 'for i in $(seq 1500); do head -c $((RANDOM % 64 + 1)) /dev/urandom > /dev/udp/'$gw'/53; done'
             printf '\\022\\064\\201\\200\\000\\001\\000\\000\\000\\000\\000\\000\\003www\\000\\000\\001\\000\\001' | bash -c 'cat > /dev/udp/'$gw'/53'
             printf '\\022\\064\\001\\000\\000\\000\\000\\000\\000\\000\\000\\000' | bash -c 'cat > /dev/udp/'$gw'/53'
             printf '\\000\\005hello' | bash -c 'cat > /dev/tcp/'$gw'/53'
             echo \"AFTER $(getent hosts www.example.test)\""
        ),
    );
    for key in ["BEFORE", "AFTER"] {
        assert!(
            field(&out, key).starts_with(&format!("{WWW_ADDR} ")),
            "{key}: {out}\n{}",
            rig.log()
        );
    }
    // Counted: the forwarder logs the count at each power of two.
    let log = rig.log();
    assert!(
        log.contains("dropped malformed DNS queries") && log.contains("dropped=1024"),
        "{log}"
    );
    // Still running (and it answered AFTER).
    let pid = nix::unistd::Pid::from_raw(i32::try_from(rig.rnetd_pid()).unwrap());
    assert!(nix::sys::signal::kill(pid, None).is_ok(), "rnetd is gone");
    rig.assert_no_panic();
}

#[test]
fn tcp_queries_are_answered_and_forwarded() {
    if !privileged("tcp_queries_are_answered_and_forwarded") {
        return;
    }
    if !std::path::Path::new("/usr/bin/dnsperf").exists() {
        if std::env::var("RNET_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("dnsperf is not installed (scripts/packages.txt)");
        }
        eprintln!("SKIP tcp_queries_are_answered_and_forwarded: no dnsperf");
        return;
    }
    let mut rig = Rig::new();
    rig.start_uplink_dns();
    rig.start_rnetd_resolved();
    // One TCP connection per query: a local name, a forwarded name, a forwarded NXDOMAIN.
    let out = run(
        &rig,
        "-n",
        "tcp",
        &format!(
            "{GW}
             printf 'www.example.test A\\nnx.example.test A\\n_gateway A\\n' |
               dnsperf -m tcp -s $gw -n 1 -O num-queries-per-conn=1 | sed -n 's/^ *Response codes: */CODES /p'"
        ),
    );
    assert_eq!(
        field(&out, "CODES"),
        "NOERROR 2 (66.67%), NXDOMAIN 1 (33.33%)",
        "{out}\n{}",
        rig.log()
    );
    rig.assert_no_panic();
}

#[test]
fn zone_names_survive_an_rnetd_restart() {
    if !privileged("zone_names_survive_an_rnetd_restart") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_uplink_dns();
    rig.start_rnetd_resolved();
    let a = member(&mut rig, "blue", "a");
    let a6 = text(&a["container_address6"]);
    // SIGTERM leaves the zone in place; the new rnetd adopts it, restarts its DHCP server and
    // forwarder, and records a's lease again, with its name.
    rig.stop_rnetd(nix::sys::signal::Signal::SIGTERM);
    rig.start_rnetd_resolved();
    rig.wait_machine("a");
    let out = run(
        &rig,
        "--network-zone=blue",
        "b",
        "echo \"PEER $(getent hosts a)\"
         echo \"WWW $(getent hosts www.example.test)\"",
    );
    assert_eq!(
        field(&out, "PEER"),
        format!("{a6} a.blue"),
        "{out}\n{}",
        rig.log()
    );
    assert!(
        field(&out, "WWW").starts_with(&format!("{WWW_ADDR} ")),
        "{out}"
    );
    rig.assert_no_panic();
}
