//! rnetd killed at any moment, and restarted: the state loads, what is alive is adopted with
//! the same view, what ended meanwhile and what no state explains is removed, no ACKed lease is
//! lost or given to another client, and live containers keep their traffic throughout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rig::{
    HOST_ADDR, Rig, UPLINK_ADDR, Value, in_pid_netns, netprobe, ok, output, privileged, tail,
    wait_until,
};

/// The tests of this file each restart rnetd many times; they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// xorshift64*: a seeded generator, so a failing run can be repeated with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_owned).collect()
}

/// Elements of set or map `name` in an `nft -j` listing, as JSON text each.
fn elements(listing: &Value, name: &str) -> Vec<String> {
    rig::nft_element_list(listing, name)
        .iter()
        .map(Value::to_string)
        .collect()
}

/// The ifnames in set `ifaces`.
fn table_ifaces(listing: &Value) -> BTreeSet<String> {
    elements(listing, "ifaces")
        .iter()
        .map(|e| e.trim_matches('"').to_owned())
        .collect()
}

/// Every ACK `dhcpcheck` logged, as (MAC, address) pairs in order (complete lines only: the
/// client may be writing the next one).
fn acks(log: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    text[..complete]
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(m, a)| (m.to_owned(), a.to_owned()))
        .collect()
}

/// Checks the leases against what the clients were told: every address was ACKed to one client
/// only, and each client's last ACKed lease is in rnetd's lease files for `ifname`.
fn check_leases(rig: &Rig, log: &Path, ifname: &str) -> Result<usize, String> {
    let acks = acks(log);
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    for (mac, addr) in &acks {
        if let Some(other) = owner.insert(addr, mac)
            && other != mac
        {
            return Err(format!("{addr} was ACKed to {other} and to {mac}"));
        }
        last.insert(mac, addr);
    }
    let saved = rig
        .saved_leases(ifname)
        .ok_or_else(|| format!("cannot read the leases of {ifname}"))?;
    for (mac, addr) in last {
        let id = format!("01:{mac}");
        let found = saved
            .iter()
            .any(|l| l["client_id"] == id.as_str() && l["address"] == addr);
        if !found {
            return Err(format!(
                "ACKed lease {addr} of {mac} is not in the lease files: {saved:?}"
            ));
        }
    }
    Ok(acks.len())
}

/// What must exist after a restart, compared with what does.
struct Expect {
    machines: BTreeSet<String>,
    links: BTreeSet<String>,
    ifaces: BTreeSet<String>,
    ports: usize,
}

fn observe(rig: &Rig) -> Expect {
    let listing = rig.nft_table();
    Expect {
        machines: rig
            .machines()
            .iter()
            .filter_map(|m| m["machine"].as_str().map(str::to_owned))
            .collect(),
        links: rig.host_links().into_iter().collect(),
        ifaces: listing.as_ref().map(table_ifaces).unwrap_or_default(),
        ports: listing
            .as_ref()
            .map_or(0, |l| elements(l, "ports4_port").len()),
    }
}

fn describe(e: &Expect) -> String {
    format!(
        "machines {:?}, links {:?}, ifaces {:?}, ports {}",
        e.machines, e.links, e.ifaces, e.ports
    )
}

/// Whether explicit zone `ez` exists after the restart (a create or delete killed half-way
/// may have gone either way; what matters is that everything agrees with the answer).
fn zone_exists(rig: &Rig, name: &str) -> bool {
    let zones: Vec<Value> =
        serde_json::from_str(&ok(rig.rnet().args(["zone", "list", "--json"]))).unwrap();
    zones.iter().any(|z| z["name"] == name)
}

fn reaches(cmd: &mut Command) -> bool {
    output(cmd).status.success()
}

/// Whether the uplink reaches the host's published `port`.
fn port_answers(rig: &Rig, port: u32) -> bool {
    reaches(
        rig.in_uplink(netprobe())
            .args(["connect", "tcp", HOST_ADDR, &port.to_string()]),
    )
}

/// Whether the container with payload `pid` reaches the uplink's tcp:7000.
fn reaches_uplink(pid: u64) -> bool {
    reaches(in_pid_netns(pid, netprobe()).args(["connect", "tcp", UPLINK_ADDR, "7000"]))
}

#[test]
fn rnetd_killed_at_random_moments_recovers_every_time() {
    if !privileged("rnetd_killed_at_random_moments_recovers_every_time") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed: u64 = std::env::var("RNET_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let iterations: u32 = std::env::var("RNET_CRASH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    eprintln!(
        "crash points: seed {seed} (RNET_CRASH_SEED={seed} repeats this run), {iterations} iterations"
    );
    let mut rng = Rng(seed);
    let mut rig = Rig::new();
    rig.start_rnetd();
    let tmp = tempfile::tempdir().unwrap();
    let probe = netprobe();
    rig.spawn_ready(rig.in_uplink(&probe).args(["serve", "tcp:7000"]));
    // Live containers that must keep working through every crash: a published port on a ve-
    // link, a zone member, and one with a DHCP client recording every ACK.
    rig.spawn_ready(
        rig.rnet()
            .args(["run", "-n", "-p", "8080:80", "-M", "web", "--"])
            .arg(&probe)
            .args(["serve", "tcp:80"]),
    );
    rig.spawn_ready(
        rig.rnet()
            .args(["run", "--network-zone=cz", "-M", "member", "--"])
            .arg(&probe)
            .args(["serve", "tcp:80"]),
    );
    rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "load", "--", "sleep", "3600"]),
    );
    let member_pid = rig.wait_machine("member")["pid"].as_u64().unwrap();
    let load = rig.wait_machine("load");
    let load_pid = load["pid"].as_u64().unwrap();
    let ack_log = tmp.path().join("acks");
    rig.spawn_ready(in_pid_netns(load_pid, rig::bin("dhcpcheck")).args([
        load["container_address"].as_str().unwrap(),
        load["host_address"].as_str().unwrap(),
        "8",
        "7",
        ack_log.to_str().unwrap(),
    ]));
    assert!(
        port_answers(&rig, 8080) && reaches_uplink(member_pid),
        "controls fail before any crash"
    );

    let mut explicit = false;
    let mut outage_checks = 0;
    for it in 0..iterations {
        // Let the DHCP client work for a while, so kills land among its exchanges.
        std::thread::sleep(Duration::from_millis(100 + rng.below(200)));
        let op = rng.below(6);
        let name = format!("x{it}");
        let port = format!("{}:80", 9000 + it);
        let mut cmd = rig.rnet();
        let what = match op {
            0 => {
                cmd.args(["run", "-n", "-M", &name, "--", "sleep", "0.3"]);
                "attach/detach -n"
            }
            1 => {
                cmd.args([
                    "run",
                    "--network-zone=cz",
                    "-M",
                    &name,
                    "--",
                    "sleep",
                    "0.3",
                ]);
                "attach/detach zone member"
            }
            2 => {
                cmd.args(["run", "-M", &name, "-p", &port])
                    .arg(format!("--network-zone=t{it}"))
                    .args(["--", "sleep", "0.3"]);
                "first member of a new zone, with a port"
            }
            3 => {
                cmd.args(["run", "-n", "-p", &port, "-M", &name, "--", "sleep", "0.3"]);
                "attach/detach -n with a port"
            }
            4 if explicit => {
                cmd.args(["zone", "delete", "ez"]);
                "zone delete"
            }
            4 => {
                cmd.args(["zone", "create", "ez"]);
                "zone create"
            }
            _ => {
                cmd.args(["list"]);
                "DHCP load only"
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.below(60));
        std::thread::sleep(delay);
        rig.stop_rnetd(Signal::SIGKILL);
        // While rnetd is down, the data path stays.
        if it % 5 == 0 {
            assert!(
                port_answers(&rig, 8080),
                "iteration {it}: published port dead while rnetd is down"
            );
            outage_checks += 1;
        }
        let end = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        rig.start_rnetd();
        explicit = zone_exists(&rig, "ez");
        let mut want = Expect {
            machines: set(["web", "member", "load"]),
            links: set(["ve-web", "vb-member", "vz-cz", "ve-load"]),
            ifaces: set(["ve-web", "vz-cz", "ve-load"]),
            ports: 1,
        };
        if explicit {
            want.links.insert("vz-ez".into());
            want.ifaces.insert("vz-ez".into());
        }
        let mut seen = observe(&rig);
        let settled = wait_until(Duration::from_secs(10), || {
            seen = observe(&rig);
            seen.machines == want.machines
                && seen.links == want.links
                && seen.ifaces == want.ifaces
                && seen.ports == want.ports
        });
        assert!(
            settled,
            "seed {seed}, iteration {it} ({what}, killed after {delay:?}):\nwant {}\nsee  {}\nrnetd log:\n{}",
            describe(&want),
            describe(&seen),
            tail(&rig.log(), 50)
        );
        match check_leases(&rig, &ack_log, "ve-load") {
            Ok(n) => eprintln!("iteration {it}: {what}, killed after {delay:?}; {n} ACKs so far"),
            Err(e) => panic!("seed {seed}, iteration {it} ({what}): {e}"),
        }
        let (web, member) = (port_answers(&rig, 8080), reaches_uplink(member_pid));
        assert!(
            web && member,
            "seed {seed}, iteration {it} ({what}): live containers lost their traffic (published \
             port {web}, member to uplink {member}); table:\n{}\nrnetd log:\n{}",
            output(rig.in_host("nft").args(["list", "ruleset"]))
                .stdout
                .escape_ascii(),
            tail(&rig.log(), 40)
        );
    }
    rig.assert_no_panic();
    assert!(
        !rig.log().contains("restoring state"),
        "a restart failed to load the state"
    );
    let n = check_leases(&rig, &ack_log, "ve-load").unwrap();
    assert!(n > 0, "the DHCP client never got an ACK");
    eprintln!(
        "crash points: seed {seed}: {iterations} kills, every restart converged; {n} ACKs \
         checked, none lost or duplicated; the published port answered in all {outage_checks} \
         outage checks"
    );
    rig.stop_rnetd(Signal::SIGTERM);
    drop(rig);
}

/// A udhcpc hook that applies nothing and prints the lease, so a test can read it.
fn lease_hook(dir: &Path) -> PathBuf {
    let path = dir.join("hook.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\ncase \"$1\" in bound|renew) echo \"LEASE $ip\";; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

#[test]
fn restart_with_twenty_containers_keeps_the_same_view_and_removes_the_rest() {
    if !privileged("restart_with_twenty_containers_keeps_the_same_view_and_removes_the_rest") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rig = Rig::new();
    rig.start_rnetd();
    let tmp = tempfile::tempdir().unwrap();
    let probe = netprobe();
    let hook = lease_hook(tmp.path());
    rig.spawn_ready(rig.in_uplink(&probe).args(["serve", "tcp:7000"]));
    // 20 containers: 6 on -n (2 publishing a port), 6 in zone za, 4 in zone zb (2 with a
    // port), 4 on -n running a DHCP client. Each serves tcp:80.
    let mut launchers: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..20 {
        let name = format!("m{i:02}");
        let port = format!("{}:80", 8100 + i);
        let mut cmd = rig.rnet();
        cmd.args(["run", "-M", &name]);
        match i {
            0..=5 => {
                cmd.arg("-n");
                if i < 2 {
                    cmd.args(["-p", &port]);
                }
            }
            6..=11 => {
                cmd.arg("--network-zone=za");
            }
            12..=15 => {
                cmd.arg("--network-zone=zb");
                if i < 14 {
                    cmd.args(["-p", &port]);
                }
            }
            _ => {
                cmd.arg("-n");
            }
        }
        cmd.arg("--");
        if i >= 16 {
            // A live DHCP client (it prints each lease), beside the server.
            cmd.args(["sh", "-c"]).arg(format!(
                "udhcpc -i host0 -f -t 0 -T 1 -s {} & {} serve tcp:80",
                hook.display(),
                probe.display()
            ));
        } else {
            cmd.arg(&probe).args(["serve", "tcp:80"]);
        }
        launchers.insert(name, rig.spawn_ready(&mut cmd));
    }
    let before: BTreeMap<String, Value> = rig
        .machines()
        .into_iter()
        .map(|m| (m["machine"].as_str().unwrap().to_owned(), m))
        .collect();
    assert_eq!(before.len(), 20);
    let ports_before = elements(&rig.nft_table().unwrap(), "ports4_port").len();
    assert_eq!(ports_before, 4);
    let pid = |name: &str| before[name]["pid"].as_u64().unwrap();

    rig.stop_rnetd(Signal::SIGKILL);
    // While rnetd is down: published ports answer, containers reach the uplink, zone members
    // reach each other.
    for i in [0, 1, 12, 13] {
        assert!(
            port_answers(&rig, 8100 + i),
            "port {} dead while rnetd is down",
            8100 + i
        );
    }
    for name in ["m02", "m07", "m14", "m17"] {
        assert!(
            reaches_uplink(pid(name)),
            "{name} cut off while rnetd is down"
        );
    }
    let m08 = before["m08"]["container_address"].as_str().unwrap();
    assert!(reaches(
        in_pid_netns(before["m06"]["pid"].as_u64().unwrap(), &probe)
            .args(["connect", "tcp", m08, "80"])
    ));
    // Five containers end meanwhile: two on -n (one with a DHCP client), one in za, two in
    // zb (one publishing a port).
    let ended = ["m03", "m09", "m12", "m15", "m19"];
    for name in ended {
        rig::kill_container(pid(name));
    }
    // Objects with our names that no state explains: a bridge of ours (marked with our link
    // group) and a table element; and a look-alike that is not ours (no mark), to be left.
    let ip = |rig: &Rig, args: &[&str]| ok(rig.in_host("ip").args(args));
    ip(
        &rig,
        &[
            "link",
            "add",
            "vz-ghost",
            "group",
            "1919837556",
            "type",
            "bridge",
        ],
    );
    ip(
        &rig,
        &[
            "link",
            "add",
            "ve-nspawn",
            "type",
            "veth",
            "peer",
            "name",
            "nspawn-p",
        ],
    );
    ok(rig.in_host("nft").args([
        "add",
        "element",
        "inet",
        "rnet",
        "ifaces",
        "{ \"ve-ghost\" }",
    ]));

    rig.start_rnetd();
    let survivors: BTreeSet<String> = before
        .keys()
        .filter(|n| !ended.contains(&n.as_str()))
        .cloned()
        .collect();
    let gone = wait_until(Duration::from_secs(15), || {
        let now: BTreeSet<String> = rig
            .machines()
            .iter()
            .filter_map(|m| m["machine"].as_str().map(str::to_owned))
            .collect();
        now == survivors
            && !rig
                .host_ip(&["link", "show"])
                .to_string()
                .contains("vz-ghost")
    });
    assert!(
        gone,
        "did not converge; rnetd log:\n{}",
        tail(&rig.log(), 60)
    );
    // The same view: every survivor exactly as before.
    for m in rig.machines() {
        let name = m["machine"].as_str().unwrap();
        assert_eq!(m, before[name], "{name} changed across the restart");
    }
    let mut links: BTreeSet<String> = rig.host_links().into_iter().collect();
    assert!(
        links.remove("ve-nspawn"),
        "a link that is not ours was removed"
    );
    let mut want: BTreeSet<String> = survivors
        .iter()
        .map(|n| before[n]["host_ifname"].as_str().unwrap().to_owned())
        .collect();
    want.extend(["vz-za".to_owned(), "vz-zb".to_owned()]);
    assert_eq!(links, want);
    let listing = rig.nft_table().unwrap();
    let mut ifaces: BTreeSet<String> = survivors
        .iter()
        .filter(|n| before[n.as_str()]["network"] == "veth")
        .map(|n| before[n]["host_ifname"].as_str().unwrap().to_owned())
        .collect();
    ifaces.extend(["vz-za".to_owned(), "vz-zb".to_owned()]);
    assert_eq!(table_ifaces(&listing), ifaces);
    assert_eq!(
        elements(&listing, "ports4_port").len(),
        3,
        "m12's port must be gone"
    );
    let log = rig.log();
    assert!(
        log.contains("removed a link of ours that no saved state explains")
            && log.contains("vz-ghost"),
        "the stale bridge was not logged:\n{}",
        tail(&log, 40)
    );
    // Traffic after the restart, and a DHCP client renews onto the same address.
    for i in [0, 1, 13] {
        assert!(
            port_answers(&rig, 8100 + i),
            "port {} dead after the restart",
            8100 + i
        );
    }
    assert!(
        !port_answers(&rig, 8112),
        "the port of ended m12 still answers"
    );
    for name in ["m02", "m07", "m14", "m17"] {
        assert!(
            reaches_uplink(pid(name)),
            "{name} cut off after the restart"
        );
    }
    let m16 = &before["m16"];
    let addr = m16["container_address"].as_str().unwrap();
    let renewed = rig::udhcpc_once(m16["pid"].as_u64().unwrap(), hook.to_str().unwrap());
    let text = String::from_utf8_lossy(&renewed.stdout);
    assert!(
        text.contains(&format!("LEASE {addr}")),
        "m16's DHCP client did not get its address back: {text}{}",
        String::from_utf8_lossy(&renewed.stderr)
    );
    ip(&rig, &["link", "del", "ve-nspawn"]);
    for pid in launchers.values() {
        rig.signal(*pid, Signal::SIGTERM);
    }
    rig.assert_all_gone();
    rig.assert_no_panic();
}
