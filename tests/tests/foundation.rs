//! End-to-end tests of the foundation: rnetd, `rnet run` in host, --private-network and
//! --network-veth modes, names, MACs, addresses, cleanup, bad input. Each test builds its own
//! namespaces with the rig and removes them, even on failure.

use std::process::Command;
use std::time::{Duration, Instant};

use netd::naming::{LinkName, MacKey, MachineId, generate_mac};
use nix::sys::signal::Signal;
use rig::{Rig, Value, in_pid_netns, ip_json, ok, output, privileged, wait_until};

fn machine_id() -> MachineId {
    let text = std::fs::read_to_string("/etc/machine-id").expect("/etc/machine-id");
    MachineId::parse(&text).expect("valid machine id")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The link named `name` in an `ip -j link` listing.
fn find_link<'a>(links: &'a Value, name: &str) -> Option<&'a Value> {
    links.as_array()?.iter().find(|l| l["ifname"] == name)
}

fn ipv4_addrs(addr_json: &Value) -> Vec<String> {
    addr_json
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

#[test]
fn host_mode_shares_the_host_network() {
    if !privileged("host_mode_shares_the_host_network") {
        return;
    }
    let rig = Rig::new();
    // No rnetd: host mode needs none.
    let out = ok(rig.rnet().args(["run", "--", "ip", "-j", "link"]));
    let links: Value = serde_json::from_str(&out).unwrap();
    assert!(find_link(&links, &rig.uplink_ifname()).is_some(), "{out}");
}

#[test]
fn private_network_has_only_loopback_up() {
    if !privileged("private_network_has_only_loopback_up") {
        return;
    }
    let rig = Rig::new();
    let out = ok(rig
        .rnet()
        .args(["run", "--private-network", "-M", "lonely", "--", "sh", "-c"])
        .arg("hostname; ip -j link"));
    let (host, json) = out.split_once('\n').unwrap();
    assert_eq!(host, "lonely");
    let links: Value = serde_json::from_str(json).unwrap();
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lo"]);
    let flags = links[0]["flags"].as_array().unwrap();
    assert!(flags.iter().any(|f| f == "UP"), "{json}");
}

/// `RNET_TIMINGS` makes the launcher print when each step of a start ended, the child's
/// steps among the launcher's, in time order; without it nothing is printed.
#[test]
fn timing_lines_follow_a_start_step_by_step() {
    if !privileged("timing_lines_follow_a_start_step_by_step") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let out = output(
        rig.rnet()
            .env("RNET_TIMINGS", "1")
            .args(["run", "-n", "-M", "timed", "--", "true"]),
    );
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    let marks: Vec<(f64, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("rnet timing:"))
        .map(|l| {
            let mut w = l.split_whitespace();
            let ms: f64 = w
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(w.next(), Some("ms"), "{l}");
            let _pid = w.next().unwrap();
            (ms, w.collect::<Vec<_>>().join(" "))
        })
        .collect();
    let steps: Vec<&str> = marks.iter().map(|(_, s)| s.as_str()).collect();
    for want in [
        "registered",
        "child: namespaces made",
        "child: attach sent",
        "child: configuration received",
        "child: attach answered",
        "child: in its cgroup",
        "child: host0 configured",
        "child: exec",
        "payload exited",
        "cleaned up",
    ] {
        assert!(steps.contains(&want), "{want} missing: {text}");
    }
    let at = |step: &str| marks.iter().find(|(_, s)| s == step).unwrap().0;
    // The child attaches itself (a machine without -D), once its launcher registered it.
    assert!(at("registered") <= at("child: attach sent"), "{text}");
    assert!(at("child: attach answered") <= at("child: host0 configured"));
    assert!(at("child: exec") <= at("payload exited"));
    assert_eq!(steps.last(), Some(&"cleaned up"), "{text}");
    let quiet = output(rig.rnet().args(["run", "-n", "-M", "timed", "--", "true"]));
    assert!(!stderr(&quiet).contains("rnet timing"), "{quiet:?}");
}

#[test]
fn veth_builds_names_macs_addresses_and_routes_both_ways() {
    if !privileged("veth_builds_names_macs_addresses_and_routes_both_ways") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let name = "veth-test-machine";
    let launcher = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", name, "--", "sleep", "60"]),
    );
    let m = rig.wait_machine(name);

    // Names: shortened like systemd, the full name as altname.
    let expect = LinkName::new("ve-", name);
    assert!(expect.ifname.starts_with("ve-veth-tes") && expect.ifname.len() == 15);
    assert_eq!(m["host_ifname"], expect.ifname.as_str());
    let link = rig.host_ip(&["link", "show", "dev", &expect.ifname]);
    let link = &link[0];
    let altnames: Vec<&str> = link["altnames"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(altnames, [format!("ve-{name}").as_str()]);

    // MACs: derived like systemd from /etc/machine-id.
    let id = machine_id();
    let host_mac = generate_mac(id, name, MacKey::Host, 0).to_string();
    let cont_mac = generate_mac(id, name, MacKey::Container, 0).to_string();
    assert_eq!(link["address"], host_mac.as_str());

    // Addresses: host side first of a /28 from 192.168.0.0/16.
    let subnet = m["subnet"].as_str().unwrap();
    assert!(
        subnet.starts_with("192.168.") && subnet.ends_with("/28"),
        "{subnet}"
    );
    let host_addr = m["host_address"].as_str().unwrap();
    let cont_addr = m["container_address"].as_str().unwrap();
    assert_eq!(
        ipv4_addrs(&rig.host_ip(&["addr", "show", "dev", &expect.ifname])),
        [format!("{host_addr}/28")]
    );

    // Inside the container: host0 with its MAC and address, a default route via the host side.
    // (Listed once rnetd answered; the container configures host0 from that answer: wait.)
    let pid = m["pid"].as_u64().unwrap();
    let host0 = || ip_json(in_pid_netns(pid, "ip").args(["-j", "addr", "show", "dev", "host0"]));
    wait_until(Duration::from_secs(5), || !ipv4_addrs(&host0()).is_empty());
    let inside = host0();
    assert_eq!(inside[0]["address"], cont_mac.as_str());
    assert_eq!(ipv4_addrs(&inside), [format!("{cont_addr}/28")]);
    let routes = ip_json(in_pid_netns(pid, "ip").args(["-j", "route", "show", "default"]));
    assert_eq!(routes[0]["gateway"], host_addr);
    assert_eq!(routes[0]["dev"], "host0");
    // The address is the one the DHCP server will hand out: systemd's hash of 0x01+MAC.
    let subnet_net: ipnetwork::Ipv4Network = subnet.parse().unwrap();
    let mac_bytes = generate_mac(id, name, MacKey::Container, 0).0;
    let host_ip: std::net::Ipv4Addr = host_addr.parse().unwrap();
    let expected = dhcp::pick_address(subnet_net, &dhcp::client_id_from_mac(mac_bytes), |a| {
        a != host_ip
    })
    .unwrap();
    assert_eq!(cont_addr, expected.to_string());

    // Traffic both ways.
    ok(rig.in_host("ping").args(["-c1", "-W2", cont_addr]));
    ok(in_pid_netns(pid, "ping").args(["-c1", "-W2", host_addr]));

    // Stop: SIGTERM to the launcher is forwarded; exit code 128+15; everything is removed.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(launcher as i32), Signal::SIGTERM).unwrap();
    let out = rig.wait(launcher);
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert!(!rig.host_has_link(&expect.ifname));
    assert!(rig.machines().is_empty());
}

#[test]
fn exit_codes_are_propagated() {
    if !privileged("exit_codes_are_propagated") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let out = output(rig.rnet().args(["run", "-n", "--", "sh", "-c", "exit 7"]));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let out = output(
        rig.rnet()
            .args(["run", "-n", "--", "sh", "-c", "kill -KILL $$"]),
    );
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    let out = output(rig.rnet().args(["run", "--private-network", "--", "false"]));
    assert_eq!(out.status.code(), Some(1));
    let out = output(rig.rnet().args(["run", "--", "sh", "-c", "exit 9"]));
    assert_eq!(out.status.code(), Some(9));
    // Nothing attached remains.
    assert!(rig.machines().is_empty());
    let links = rig.host_ip(&["link"]);
    assert!(
        !links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["ifname"].as_str().unwrap().starts_with("ve-"))
    );
}

#[test]
fn sigkilled_launcher_is_cleaned_up_by_the_pidfd_watch() {
    if !privileged("sigkilled_launcher_is_cleaned_up_by_the_pidfd_watch") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let launcher = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "victim", "--", "sleep", "60"]),
    );
    let m = rig.wait_machine("victim");
    let payload = m["pid"].as_u64().unwrap();
    assert!(rig.host_has_link("ve-victim"));
    let t0 = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(launcher as i32), Signal::SIGKILL).unwrap();
    let gone = wait_until(Duration::from_secs(5), || {
        !rig.host_has_link("ve-victim") && rig.machines().is_empty()
    });
    eprintln!("cleanup after SIGKILL took {:?}", t0.elapsed());
    assert!(gone, "ve-victim still present; log:\n{}", rig.log());
    // The payload died with the launcher.
    assert!(wait_until(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{payload}")).exists()
    }));
    let _ = rig.wait(launcher);
}

#[test]
fn long_names_sharing_eleven_characters_get_distinct_links() {
    if !privileged("long_names_sharing_eleven_characters_get_distinct_links") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let (a, b) = ("long-container-alpha", "long-container-beta");
    let la = rig.spawn(rig.rnet().args(["run", "-n", "-M", a, "--", "sleep", "60"]));
    let lb = rig.spawn(rig.rnet().args(["run", "-n", "-M", b, "--", "sleep", "60"]));
    let (ma, mb) = (rig.wait_machine(a), rig.wait_machine(b));
    let (ia, ib) = (
        ma["host_ifname"].as_str().unwrap(),
        mb["host_ifname"].as_str().unwrap(),
    );
    assert_eq!(&ia[..11], &ib[..11]);
    assert_ne!(ia, ib);
    assert_eq!(ia, LinkName::new("ve-", a).ifname);
    assert_eq!(ib, LinkName::new("ve-", b).ifname);
    assert_ne!(ma["subnet"], mb["subnet"]);
    for (ifname, full) in [(ia, a), (ib, b)] {
        let link = rig.host_ip(&["link", "show", "dev", ifname]);
        assert_eq!(link[0]["altnames"][0], format!("ve-{full}").as_str());
    }
    for l in [la, lb] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(l as i32), Signal::SIGTERM).unwrap();
        rig.wait(l);
    }
    assert!(!rig.host_has_link(ia) && !rig.host_has_link(ib));
}

#[test]
fn a_running_name_is_refused_and_loses_nothing() {
    if !privileged("a_running_name_is_refused_and_loses_nothing") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let first = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "dup", "--", "sleep", "60"]),
    );
    let before = rig.wait_machine("dup");
    let out = output(rig.rnet().args(["run", "-n", "-M", "dup", "--", "true"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "rnet: machine dup is already running\n");
    // The first machine is untouched.
    assert_eq!(rig.machines(), vec![before]);
    assert!(rig.host_has_link("ve-dup"));
    ok(rig.in_host("ping").args([
        "-c1",
        "-W2",
        rig.machines()[0]["container_address"].as_str().unwrap(),
    ]));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), Signal::SIGTERM).unwrap();
    rig.wait(first);
}

#[test]
fn the_same_name_and_port_run_again_right_after_each_exit() {
    if !privileged("the_same_name_and_port_run_again_right_after_each_exit") {
        return;
    }
    // The launcher exits without waiting for its teardown: each next run of the name (and
    // port) must find it done, or have rnetd finish it first.
    let mut rig = Rig::new();
    rig.start_rnetd();
    for i in 0..50 {
        let out = output(rig.rnet().args([
            "run", "-n", "-M", "same", "-p", "8080:80", "--", "sh", "-c", "exit 3",
        ]));
        assert_eq!(
            out.status.code(),
            Some(3),
            "run {i}: {}\nrnetd log:\n{}",
            stderr(&out),
            rig.log()
        );
    }
    assert!(rig.machines().is_empty());
    assert!(!rig.host_has_link("ve-same"));
    assert!(rig.nft_table().is_none(), "table left after the last run");
    rig.assert_no_panic();
}

#[test]
fn bad_input_gives_one_clear_line() {
    if !privileged("bad_input_gives_one_clear_line") {
        return;
    }
    let rig = Rig::new();
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &["run", "--frobnicate", "--", "true"],
            2,
            "rnet: unexpected argument '--frobnicate' found\n",
        ),
        (&["run", "-M", "bad name", "--", "true"], 2, "contains ' '"),
        (
            &["run", "-M", &"x".repeat(65), "--", "true"],
            2,
            "at most 64 are allowed",
        ),
        (
            &["run", "-n", "--", "true"],
            1,
            "rnet: rnetd is not running (no daemon at ",
        ),
        (
            &["run", "--", "/no/such/program"],
            1,
            "rnet: cannot execute /no/such/program: No such file or directory\n",
        ),
    ];
    for (args, code, needle) in cases {
        let out = output(rig.rnet().args(args));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
    }
}

#[test]
fn rnetd_refuses_non_root_and_malformed_requests_without_dying() {
    if !privileged("rnetd_refuses_non_root_and_malformed_requests_without_dying") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let sock = rig.runtime_dir().join("rnetd.sock");
    let raw = env!("CARGO_BIN_EXE_rawclient");
    // A process of our own in a private netns to offer as the container.
    let mut holder = Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .unwrap();
    let holder_pid = holder.id();
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_link(format!("/proc/{holder_pid}/ns/net")).ok()
            != std::fs::read_link("/proc/self/ns/net").ok()
    }));
    let attach =
        format!(r#"{{"attach":{{"machine":"sneaky","pid":{holder_pid},"network":"veth"}}}}"#);
    let nsfile = format!("/proc/{holder_pid}/ns/net");

    // Not root: refused, and nothing is built.
    let out = ok(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", raw])
        .arg(&sock)
        .arg(&attach)
        .args(["--fd", "/proc/self/ns/net"]));
    assert!(out.contains(r#""kind":"permission_denied""#), "{out}");
    assert!(
        out.contains("only root may change machines or zones"),
        "{out}"
    );
    // Reading is open to everyone.
    let out = ok(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(rig::bin("rnet"))
        .arg("--runtime-dir")
        .arg(rig.runtime_dir())
        .arg("list"));
    assert!(out.contains("0 machine(s) listed."), "{out}");

    // Malformed requests: each gets a clear bad_request answer.
    let me = std::process::id();
    let mismatched = format!(r#"{{"attach":{{"machine":"x","pid":{me},"network":"veth"}}}}"#);
    let mismatch_msg = format!("the passed fd is not the network namespace of pid {me}");
    let bad: [(&str, &str); 6] = [
        (
            r#"{"attach":{"machine":"x","pid":1,"network":"veth","extra":true}}"#,
            "unknown field `extra`",
        ),
        (r#"{"attach":"#, "malformed message"),
        (r#""reboot""#, "unknown variant `reboot`"),
        (r#"{"detach":{"machine":"-x"}}"#, "not a valid hostname"),
        (&attach, "attach needs the container's network namespace"),
        (&mismatched, &mismatch_msg),
    ];
    for (body, needle) in bad {
        let mut cmd = Command::new(raw);
        cmd.arg(&sock).arg(body);
        if *body == mismatched {
            cmd.args(["--fd", &nsfile]);
        }
        let out = ok(&mut cmd);
        assert!(
            out.contains(r#""kind":"bad_request""#) && out.contains(needle),
            "{body}: {out}"
        );
    }
    // A frame announcing 4 GiB is refused, and a truncated one too.
    let out = ok(Command::new(raw).arg(&sock).arg("7f7f7f7f").arg("--hex"));
    assert!(out.contains("exceeds the limit"), "{out}");
    let out = ok(Command::new(raw)
        .arg(&sock)
        .arg("000001007b7d")
        .arg("--hex"));
    assert!(
        out.contains("connection closed before a whole request"),
        "{out}"
    );
    // Offering the daemon its own (the host's) namespace is refused. The client runs inside
    // the rig's host netns so nothing could ever reach this machine's real namespace.
    let rnetd = rig.rnetd_pid();
    let own = format!(r#"{{"attach":{{"machine":"hostns","pid":{rnetd},"network":"veth"}}}}"#);
    let out = ok(rig
        .in_host(raw)
        .arg(&sock)
        .arg(&own)
        .args(["--fd", &format!("/proc/{rnetd}/ns/net")]));
    assert!(
        out.contains("bad_request") && out.contains("rnetd's own"),
        "{out}"
    );

    // The daemon is alive and still serves a real attach for root.
    let out = ok(Command::new(raw)
        .arg(&sock)
        .arg(&attach)
        .args(["--fd", &nsfile]));
    assert!(out.contains(r#""attached""#), "{out}");
    assert!(rig.host_has_link("ve-sneaky"));
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !rig.host_has_link("ve-sneaky")),
        "{}",
        rig.log()
    );
    assert!(!rig.log().contains("panicked"));
}

#[test]
fn restarted_rnetd_adopts_live_machines_and_drops_dead_ones() {
    if !privileged("restarted_rnetd_adopts_live_machines_and_drops_dead_ones") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let live = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "survivor", "--", "sleep", "60"]),
    );
    let dies = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "goner", "--", "sleep", "60"]),
    );
    let m = rig.wait_machine("survivor");
    rig.wait_machine("goner");
    // SIGTERM leaves the networking in place.
    rig.stop_rnetd(Signal::SIGTERM);
    assert!(rig.host_has_link("ve-survivor") && rig.host_has_link("ve-goner"));
    ok(rig
        .in_host("ping")
        .args(["-c1", "-W2", m["container_address"].as_str().unwrap()]));
    // One container ends while rnetd is down.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(dies as i32), Signal::SIGKILL).unwrap();
    rig.wait(dies);
    rig.start_rnetd();
    let list = rig.machines();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0], m);
    assert!(!rig.host_has_link("ve-goner"));
    // The adopted machine is still watched: its end is noticed by the new daemon.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(live as i32), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !rig.host_has_link("ve-survivor")),
        "{}",
        rig.log()
    );
    rig.wait(live);
    // A new machine does not collide with anything left.
    let out = ok(rig.rnet().args(["run", "-n", "-M", "after", "--", "true"]));
    assert!(out.is_empty());
}

#[test]
fn status_and_list_show_machines() {
    if !privileged("status_and_list_show_machines") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let l = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "shown", "--", "sleep", "60"]),
    );
    let m = rig.wait_machine("shown");
    let text = ok(rig.rnet().args(["status", "shown"]));
    assert!(
        text.contains(&format!(
            "Address: {} via {}",
            m["container_address"].as_str().unwrap(),
            m["host_address"].as_str().unwrap()
        )),
        "{text}"
    );
    let table = ok(rig.rnet().args(["list"]));
    assert!(
        table.contains("shown") && table.contains("1 machine(s) listed."),
        "{table}"
    );
    let out = output(rig.rnet().args(["status", "nobody-here"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "rnet: no machine nobody-here is attached\n");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(l as i32), Signal::SIGINT).unwrap();
    let out = rig.wait(l);
    assert_eq!(out.status.code(), Some(130));
}

#[test]
fn an_exhausted_pool_is_a_clear_error_and_builds_nothing() {
    if !privileged("an_exhausted_pool_is_a_clear_error_and_builds_nothing") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd_with(&["--pool", "10.99.0.0/27"]);
    let a = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "first", "--", "sleep", "60"]),
    );
    let b = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "second", "--", "sleep", "60"]),
    );
    rig.wait_machine("first");
    rig.wait_machine("second");
    let out = output(rig.rnet().args(["run", "-n", "-M", "third", "--", "true"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "rnet: address pool exhausted: no free /28 left in 10.99.0.0/27\n"
    );
    assert!(!rig.host_has_link("ve-third"));
    assert_eq!(rig.machines().len(), 2);
    // Freeing one makes room again.
    rig.signal(a, Signal::SIGTERM);
    rig.wait(a);
    ok(rig.rnet().args(["run", "-n", "-M", "third", "--", "true"]));
    rig.signal(b, Signal::SIGTERM);
    rig.wait(b);
}

/// The pool avoids the host's addresses and routes, of every table, as they are now: one there
/// before rnetd started (found by its first dump), one added after (learnt from a
/// notification), and gives them out again once they are gone, including a route the kernel
/// drops without a notification when its link goes away.
#[test]
fn the_pool_follows_host_addresses_and_routes_added_and_removed_after_start() {
    if !privileged("the_pool_follows_host_addresses_and_routes_added_and_removed_after_start") {
        return;
    }
    let mut rig = Rig::new();
    let up = rig.uplink_ifname();
    // Before the start: a route in a table of its own.
    rig.host_sh(&format!("ip route add 10.98.0.48/28 dev {up} table 101"));
    rig.start_rnetd_with(&["--pool", "10.98.0.0/26"]);
    assert!(
        wait_until(Duration::from_secs(10), || rig
            .log()
            .contains("following the host's IPv4 addresses and routes")),
        "rnetd never followed addresses and routes; log:\n{}",
        rig.log()
    );
    // After the start: an address on a link of the test's, and a route through that link in
    // another table.
    rig.host_sh(
        "ip link add pooltest0 type veth peer name pooltest1 && \
         ip addr add 10.98.0.1/28 dev pooltest0 && ip link set pooltest0 up && \
         ip route add 10.98.0.32/28 dev pooltest0 table 100",
    );
    let subnet = |rig: &Rig, name: &str| {
        rig.wait_machine(name)["subnet"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let a = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "a", "--", "sleep", "60"]),
    );
    assert_eq!(subnet(&rig, "a"), "10.98.0.16/28");
    let full = output(rig.rnet().args(["run", "-n", "-M", "x", "--", "true"]));
    assert_eq!(
        stderr(&full),
        "rnet: address pool exhausted: no free /28 left in 10.98.0.0/26\n"
    );
    // The link goes: its address with a notification, its route without one.
    rig.host_sh("ip link del pooltest0");
    let b = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "b", "--", "sleep", "60"]),
    );
    assert_eq!(subnet(&rig, "b"), "10.98.0.32/28");
    let c = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "c", "--", "sleep", "60"]),
    );
    assert_eq!(subnet(&rig, "c"), "10.98.0.0/28");
    // The route there before the start still holds its /28.
    let full = output(rig.rnet().args(["run", "-n", "-M", "x", "--", "true"]));
    assert_eq!(
        stderr(&full),
        "rnet: address pool exhausted: no free /28 left in 10.98.0.0/26\n"
    );
    rig.host_sh(&format!("ip route del 10.98.0.48/28 dev {up} table 101"));
    let d = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "d", "--", "sleep", "60"]),
    );
    assert_eq!(subnet(&rig, "d"), "10.98.0.48/28");
    for pid in [a, b, c, d] {
        rig.signal(pid, Signal::SIGTERM);
        rig.wait(pid);
    }
    rig.assert_no_panic();
}

#[test]
fn rnet_stop_ends_a_machine_through_its_pidfd() {
    if !privileged("rnet_stop_ends_a_machine_through_its_pidfd") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let l = rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "stoppable", "--", "sleep", "60"]),
    );
    rig.wait_machine("stoppable");
    // Not for everyone.
    let out = output(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(rig::bin("rnet"))
            .arg("--runtime-dir")
            .arg(rig.runtime_dir())
            .args(["stop", "stoppable"]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("rnet: permission denied"),
        "{}",
        stderr(&out)
    );
    ok(rig.rnet().args(["stop", "stoppable"]));
    let out = rig.wait(l);
    assert_eq!(out.status.code(), Some(143));
    assert!(!rig.host_has_link("ve-stoppable"));
    let out = output(rig.rnet().args(["stop", "stoppable"]));
    assert_eq!(stderr(&out), "rnet: no machine stoppable is attached\n");
}
