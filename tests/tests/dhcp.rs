//! End-to-end tests of rnetd's DHCPv4 server with real clients: ISC dhclient, busybox udhcpc
//! and dhcpcd, each inside an `rnet run -n` container whose static configuration of `host0` is
//! flushed first. The assertions read what the clients were told (their hook scripts record
//! it), what they configured (`ip -j`), and the lease file rnetd keeps.
//!
//! No client ever touches this machine's files outside the test's temporary directory:
//! containers share the host's mount namespace, so every hook script is our own (it writes the
//! resolv.conf it would write into the temporary directory), dhclient gets its own lease, pid and
//! config files, and dhcpcd runs in a private mount namespace with tmpfs over `/run` and
//! `/var/lib/dhcpcd`. Each container runs its clients in a pid namespace of its own
//! (`unshare --pid --kill-child`), so a client that daemonised dies with the container.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use nix::sys::signal::Signal;
use rig::{Rig, Value, ok, privileged, wait_until};

/// The upstream DNS server rnetd's forwarder is told to use: what DHCP hands out is the link's
/// gateway instead (the forwarder), never this.
const DNS: &str = "192.0.2.53";

/// The shell prologue of every container: step handshakes with the test through files in the
/// container's directory `$C`, then host0 stripped of the launcher's static configuration.
const PROLOGUE: &str = r#"set -u
# Tell the test we reached a step.
mark() { : > "$C/$1.mark"; }
# Wait for the test to let us go on with a step.
await() {
  n=0
  while [ ! -e "$C/$1.go" ]; do
    n=$((n + 1)); [ $n -le 1200 ] || { echo "timed out waiting for step $1"; exit 90; }
    sleep 0.05
  done
}
# Wait until a client's hook recorded an event of kind $2 in events file $1.
wait_event() {
  n=0
  until grep -q "^$2|" "$1" 2>/dev/null; do
    n=$((n + 1)); [ $n -le 600 ] || { echo "no $2 event in $1"; exit 91; }
    sleep 0.05
  done
}
# What the kernel has on host0 now.
snapshot() {
  ip -j addr show dev host0 > "$C/$1.addr.json"
  ip -j route show > "$C/$1.route.json"
}
exec >> "$C/out.log" 2>&1
await start
ip addr flush dev host0
ip route del default 2>/dev/null || true
"#;

/// The client whose hook variables a script reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    /// busybox udhcpc: `$1` is the event; `$ip`, `$subnet`, `$mask` (prefix), `$router`, `$dns`.
    Udhcpc,
    /// ISC dhclient and dhcpcd: `$reason`; `$new_ip_address`, `$new_subnet_mask`,
    /// `$new_routers`, `$new_domain_name_servers`.
    Isc,
}

/// One event a client's hook recorded, with what the client was told.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    kind: String,
    ip: String,
    mask: String,
    router: String,
    dns: String,
}

/// A test's world: the rig with rnetd forwarding DNS to [`DNS`], and a temporary directory for the
/// scripts and what the clients record (removed on drop, also on panic).
struct World {
    rig: Rig,
    dir: tempfile::TempDir,
}

/// A running `rnet run -n` container and what rnetd says about it.
struct Container {
    name: String,
    launcher: u32,
    /// `rnet list --json` entry: `container_address`, `host_address`, `subnet`, ...
    machine: Value,
    /// The container's directory (`$C` in its script).
    dir: PathBuf,
}

impl World {
    /// A rig with rnetd started with `--dns` [`DNS`]; `None` (test skipped) when unprivileged.
    fn new(test: &str) -> Option<World> {
        if !privileged(test) {
            return None;
        }
        let mut rig = Rig::new();
        rig.start_rnetd_with(&["--dns", DNS]);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-dhcp-", rig.prefix))
            .tempdir()
            .expect("tempdir");
        Some(World { rig, dir })
    }

    /// The directory of container `name` (`$C` in its script), created empty: hooks and files
    /// the container needs go there before [`World::container`] starts it.
    fn prepare(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        fs::create_dir(&dir).unwrap();
        dir
    }

    /// Starts `rnet run -n -M NAME` running `body` after [`PROLOGUE`], in a pid namespace of
    /// its own and, with `private_mounts`, a private mount namespace. Returns once the machine
    /// is attached; its script waits for [`World::go`]`(c, "start")`.
    fn container(&mut self, name: &str, private_mounts: bool, body: &str) -> Container {
        let dir = self.dir.path().join(name);
        let script = dir.join("container.sh");
        let quoted = sh_quote(&dir);
        fs::write(&script, format!("C={quoted}\n{PROLOGUE}\n{body}\n")).unwrap();
        let mut cmd = self.rig.rnet();
        cmd.args(["run", "-n", "-M", name, "--"]).args([
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
        ]);
        if private_mounts {
            cmd.args(["--mount", "--propagation", "private"]);
        }
        cmd.arg("sh").arg(&script);
        let launcher = self.rig.spawn(&mut cmd);
        let machine = self.rig.wait_machine(name);
        Container {
            name: name.to_owned(),
            launcher,
            machine,
            dir,
        }
    }

    /// Lets the container go on with `step`.
    fn go(&self, c: &Container, step: &str) {
        fs::write(c.dir.join(format!("{step}.go")), "").unwrap();
    }

    /// Waits for the container to reach `step`.
    fn reached(&self, c: &Container, step: &str) {
        let mark = c.dir.join(format!("{step}.mark"));
        let ok = wait_until(Duration::from_secs(40), || mark.exists());
        assert!(
            ok,
            "container {} never reached {step}{}",
            c.name,
            self.show(c)
        );
    }

    /// The container's output and rnetd's log, for failure messages.
    fn show(&self, c: &Container) -> String {
        let out = fs::read_to_string(c.dir.join("out.log")).unwrap_or_default();
        format!(
            "\n--- container output:\n{out}\n--- rnetd log:\n{}",
            self.rig.log()
        )
    }

    /// Waits for the container to finish; it must succeed. rnetd must not have panicked.
    fn finish(&mut self, c: &Container) {
        let status = self.rig.wait(c.launcher).status;
        assert!(
            status.success(),
            "container {}: {status}{}",
            c.name,
            self.show(c)
        );
        self.rig.assert_no_panic();
    }

    /// The lease rnetd saved for client id `client_id` on `c`'s link, if any.
    fn saved_lease(&self, c: &Container, client_id: &str) -> Option<Value> {
        let ifname = c.machine["host_ifname"].as_str().unwrap();
        self.rig
            .saved_leases(ifname)?
            .into_iter()
            .find(|l| l["client_id"] == client_id)
    }

    /// Waits (the server coalesces writes) until the saved lease of `client_id` is on
    /// `address`, or until there is none when `address` is `None`.
    fn await_saved(&self, c: &Container, client_id: &str, address: Option<&str>) {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(5), || {
            last = self.saved_lease(c, client_id);
            last.as_ref().map(|l| l["address"].as_str().unwrap_or("")) == address
        });
        let ifname = c.machine["host_ifname"].as_str().unwrap();
        assert!(
            ok,
            "lease of {client_id} should be on {address:?}, is {last:?}; file: {:?}{}",
            self.rig.saved_leases(ifname),
            self.show(c)
        );
    }
}

/// `path` quoted for sh.
fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Writes a client hook script `DIR/TAG.hook` that appends each event as
/// `KIND|ip|mask|routers|dns` to `DIR/TAG.events` and writes the resolv.conf the client's stock
/// script would write to `DIR/TAG.resolv.conf` (never to /etc/resolv.conf). With `configure`,
/// it also configures host0 as the stock script would: the address and the default route.
/// Returns the script's path, quoted for sh.
fn hook(dir: &Path, tag: &str, client: Client, configure: bool) -> String {
    let (kind, ip, mask, prefix, routers, dns, bound, unbound) = match client {
        Client::Udhcpc => (
            "$1",
            "${ip:-}",
            "${subnet:-}",
            "${mask:-}",
            "${router:-}",
            "${dns:-}",
            "bound|renew",
            "deconfig|leasefail|nak",
        ),
        Client::Isc => (
            "${reason:-}",
            "${new_ip_address:-}",
            "${new_subnet_mask:-}",
            "${new_subnet_mask:-}",
            "${new_routers:-}",
            "${new_domain_name_servers:-}",
            "BOUND|RENEW|REBIND|REBOOT",
            "EXPIRE|FAIL|RELEASE|STOP",
        ),
    };
    let (apply, remove) = if configure {
        (
            format!(
                r#"
  [ "$(ip -4 -o addr show dev host0 | awk '{{print $4}}' | cut -d/ -f1)" = "{ip}" ] \
    || ip addr flush dev host0
  ip addr replace "{ip}/{prefix}" dev host0
  for r in {routers}; do ip route replace default via "$r" dev host0; break; done"#
            ),
            "ip addr flush dev host0",
        )
    } else {
        (String::new(), ":")
    };
    let text = format!(
        r#"#!/bin/sh
D={dir}
case "{kind}" in
{bound})
  for s in {dns}; do echo "nameserver $s"; done > "$D/{tag}.resolv.conf"{apply}
  ;;
{unbound}) {remove} ;;
esac
# Recorded last: whoever waits for the event sees the configuration it brought.
printf '%s|%s|%s|%s|%s\n' "{kind}" "{ip}" "{mask}" "{routers}" "{dns}" >> "$D/{tag}.events"
exit 0
"#,
        dir = sh_quote(dir)
    );
    let path = dir.join(format!("{tag}.hook"));
    fs::write(&path, text).unwrap();
    let mut perm = fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    fs::set_permissions(&path, perm).unwrap();
    sh_quote(&path)
}

/// The events `C/TAG.events` holds.
fn events(c: &Container, tag: &str) -> Vec<Event> {
    let text = fs::read_to_string(c.dir.join(format!("{tag}.events"))).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 5, "bad event line {l:?}");
            Event {
                kind: f[0].into(),
                ip: f[1].into(),
                mask: f[2].into(),
                router: f[3].into(),
                dns: f[4].into(),
            }
        })
        .collect()
}

/// The events of `C/TAG.events` whose kind is one of `kinds`.
fn leases(c: &Container, tag: &str, kinds: &[&str]) -> Vec<Event> {
    events(c, tag)
        .into_iter()
        .filter(|e| kinds.contains(&e.kind.as_str()))
        .collect()
}

/// The subnet rnetd gave the container's link.
fn subnet(c: &Container) -> Ipv4Network {
    c.machine["subnet"].as_str().unwrap().parse().unwrap()
}

/// The client id rnetd records for the container, which clients sending none get: 0x01 + MAC.
fn mac_client_id(c: &Container) -> String {
    format!("01:{}", c.machine["container_mac"].as_str().unwrap())
}

/// The container's address as rnetd reports it: the one its DHCP server hands the container.
fn container_address(c: &Container) -> String {
    c.machine["container_address"].as_str().unwrap().to_owned()
}

/// Asserts `e` told the client `ip`, the link's mask, the host side as router and as DNS
/// server (its forwarder).
fn assert_told(c: &Container, e: &Event, ip: &str) {
    let want = Event {
        kind: e.kind.clone(),
        ip: ip.into(),
        mask: subnet(c).mask().to_string(),
        router: c.machine["host_address"].as_str().unwrap().into(),
        dns: c.machine["host_address"].as_str().unwrap().into(),
    };
    assert_eq!(*e, want, "what the client was told");
}

/// Asserts that in snapshot `name` host0's IPv4 addresses are exactly `ip` with the link's
/// prefix, and the one default route goes via the host side on host0.
fn assert_configured(c: &Container, name: &str, ip: &str) {
    let read = |what: &str| -> Value {
        let path = c.dir.join(format!("{name}.{what}.json"));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}: {text}"))
    };
    let addrs: Vec<String> = read("addr")[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(
        addrs,
        [format!("{ip}/{}", subnet(c).prefix())],
        "host0 at {name}"
    );
    let routes = read("route");
    let default: Vec<&Value> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["dst"] == "default")
        .collect();
    assert_eq!(default.len(), 1, "one default route at {name}: {routes}");
    assert_eq!(default[0]["gateway"], c.machine["host_address"], "{routes}");
    assert_eq!(default[0]["dev"], "host0", "{routes}");
}

/// Asserts the resolv.conf client `tag` would have written names the link's gateway only (its
/// DNS forwarder), not the upstream [`DNS`].
fn assert_resolv(c: &Container, tag: &str) {
    let text = fs::read_to_string(c.dir.join(format!("{tag}.resolv.conf"))).unwrap_or_default();
    let gateway = c.machine["host_address"].as_str().unwrap();
    assert_ne!(gateway, DNS);
    assert_eq!(
        text,
        format!("nameserver {gateway}\n"),
        "resolv.conf of {tag}"
    );
}

/// For client id `01:02:00:00:00:00:NN`: udhcpc's `-x` argument and the id as lease files
/// spell it.
fn udhcpc_id(n: u8) -> (String, String) {
    (
        format!("0x3d:010200000000{n:02x}"),
        format!("01:02:00:00:00:00:{n:02x}"),
    )
}

/// The script part that runs dhcpcd once in the container's private mount namespace: its run
/// and db directories on tmpfs and /etc/resolv.conf covered (nothing of this machine's is
/// written), our hook instead of its hooks, no config file but the DNS option, IPv4 only, no
/// IPv4LL, exit once bound. ARP probing stays on (dhcpcd's default).
fn dhcpcd_body(hook: &str, timeout: u32) -> String {
    format!(
        r#"
if [ -e /etc/resolv.conf ]; then
  : > "$C/etc-resolv.conf"; mount --bind "$C/etc-resolv.conf" /etc/resolv.conf || exit 20
fi
mount -t tmpfs tmpfs /run || exit 21
mount -t tmpfs tmpfs /var/lib/dhcpcd || exit 22
dhcpcd -f /dev/null -o domain_name_servers -4 -B -1 -t {timeout} --noipv4ll -c {hook} host0 \
  || exit 10
snapshot bound
"#
    )
}

#[test]
fn dhclient_gets_the_container_address_reboots_onto_it_and_releases_it() {
    let test = "dhclient_gets_the_container_address_reboots_onto_it_and_releases_it";
    let Some(mut w) = World::new(test) else {
        return;
    };
    let dir = w.prepare("dhcl");
    let hook = hook(&dir, "dhclient", Client::Isc, true);
    let conf = dir.join("dhclient.conf");
    fs::write(
        &conf,
        "request subnet-mask, broadcast-address, routers, domain-name-servers, domain-name;\n",
    )
    .unwrap();
    let body = format!(
        r#"
dhc() {{
  dhclient -4 -v -cf {conf} -sf {hook} -lf "$C/dhclient.leases" -pf "$C/dhclient.pid" "$@" host0
}}
dhc -1 || exit 10
snapshot bound
# A second run with the same lease file: INIT-REBOOT, the address is confirmed.
dhc -1 || exit 11
snapshot rebooted
mark rebooted
await release
dhc -r || exit 12
mark released
await end
"#,
        conf = sh_quote(&conf)
    );
    let c = w.container("dhcl", false, &body);
    w.go(&c, "start");
    w.reached(&c, "rebooted");

    // The second run confirms its lease (INIT-REBOOT). Saved under the id the server derives
    // from chaddr (dhclient sends none).
    twice_then_release(
        &mut w,
        &c,
        "dhclient",
        &["BOUND", "REBOOT", "RENEW", "REBIND"],
        ["BOUND", "REBOOT"],
        ["bound", "rebooted"],
    );
}

/// Checks a client was told (and configured) the container's address twice — `kinds` are the
/// two event names, `snapshots` the two configuration snapshots — and that the lease is saved;
/// then has it release the lease and checks the saved lease is gone.
fn twice_then_release(
    w: &mut World,
    c: &Container,
    tag: &str,
    events: &[&str],
    kinds: [&str; 2],
    snapshots: [&str; 2],
) {
    let want = container_address(c);
    let got = leases(c, tag, events);
    assert_eq!(got.len(), 2, "{got:?}{}", w.show(c));
    for (e, kind) in got.iter().zip(kinds) {
        assert_eq!(e.kind, kind);
        assert_told(c, e, &want);
    }
    for snap in snapshots {
        assert_configured(c, snap, &want);
    }
    assert_resolv(c, tag);
    w.await_saved(c, &mac_client_id(c), Some(&want));

    w.go(c, "release");
    w.reached(c, "released");
    w.await_saved(c, &mac_client_id(c), None);
    w.go(c, "end");
    w.finish(c);
}

#[test]
fn udhcpc_gets_the_container_address_renews_it_and_releases_it() {
    let test = "udhcpc_gets_the_container_address_renews_it_and_releases_it";
    let Some(mut w) = World::new(test) else {
        return;
    };
    let dir = w.prepare("udh");
    let hook = hook(&dir, "udhcpc", Client::Udhcpc, true);
    let body = format!(
        r#"
udhcpc -i host0 -f -R -t 3 -T 1 -s {hook} & U=$!
wait_event "$C/udhcpc.events" bound
snapshot bound
kill -USR1 $U
wait_event "$C/udhcpc.events" renew
snapshot renewed
mark renewed
await release
# -R: release on SIGTERM.
kill -TERM $U
wait $U || exit 12
mark released
await end
"#
    );
    let c = w.container("udh", false, &body);
    w.go(&c, "start");
    w.reached(&c, "renewed");

    twice_then_release(
        &mut w,
        &c,
        "udhcpc",
        &["bound", "renew"],
        ["bound", "renew"],
        ["bound", "renewed"],
    );
}

#[test]
fn dhcpcd_gets_the_container_address() {
    let Some(mut w) = World::new("dhcpcd_gets_the_container_address") else {
        return;
    };
    let dir = w.prepare("dcd");
    let hook = hook(&dir, "dhcpcd", Client::Isc, false);
    let c = w.container("dcd", true, &dhcpcd_body(&hook, 20));
    w.go(&c, "start");
    w.finish(&c);

    let want = container_address(&c);
    let got = leases(&c, "dhcpcd", &["BOUND", "RENEW", "REBIND", "REBOOT"]);
    assert_eq!(got.len(), 1, "{got:?}{}", w.show(&c));
    assert_told(&c, &got[0], &want);
    // dhcpcd configures host0 itself.
    assert_configured(&c, "bound", &want);
    assert_resolv(&c, "dhcpcd");
}

/// dhcpcd with `--duid=ll` sends a DUID-based client id (type 255, IAID, DUID-LL), as networkd
/// does: it is still the container, known by its hardware address, and gets the address rnetd
/// configured, under the container's own lease (the address cannot change because of the
/// container's DHCP client).
#[test]
fn dhcpcd_with_a_duid_gets_the_container_address() {
    let Some(mut w) = World::new("dhcpcd_with_a_duid_gets_the_container_address") else {
        return;
    };
    let dir = w.prepare("duid");
    let hook = hook(&dir, "dhcpcd", Client::Isc, false);
    let body = dhcpcd_body(&hook, 20)
        .replace("dhcpcd -f /dev/null", "dhcpcd --duid=ll -f /dev/null")
        + "cp /var/lib/dhcpcd/duid \"$C/duid\" || exit 23\nmark bound\nawait checked\n";
    let c = w.container("duid", true, &body);
    w.go(&c, "start");
    w.reached(&c, "bound");
    // One lease on the link, the container's, on its address.
    let want = container_address(&c);
    w.await_saved(&c, &mac_client_id(&c), Some(&want));
    let ifname = c.machine["host_ifname"].as_str().unwrap();
    let saved = w.rig.saved_leases(ifname).unwrap();
    assert_eq!(saved.len(), 1, "{saved:?}");
    w.go(&c, "checked");
    w.finish(&c);

    let duid = fs::read_to_string(c.dir.join("duid")).unwrap_or_default();
    assert!(!duid.trim().is_empty(), "dhcpcd made no DUID{}", w.show(&c));
    let got = leases(&c, "dhcpcd", &["BOUND", "RENEW", "REBIND", "REBOOT"]);
    assert_eq!(got.len(), 1, "{got:?}{}", w.show(&c));
    assert_told(&c, &got[0], &want);
    assert_configured(&c, "bound", &want);
}

#[test]
fn a_declined_address_is_quarantined_and_the_client_gets_another() {
    let test = "a_declined_address_is_quarantined_and_the_client_gets_another";
    let Some(mut w) = World::new(test) else {
        return;
    };
    let dir = w.prepare("decl");
    let hook_d = hook(&dir, "dhcpcd", Client::Isc, false);
    let hook_o = hook(&dir, "other", Client::Udhcpc, false);
    let (other_opt, _) = udhcpc_id(1);
    let body = format!(
        r#"{dhcpcd}
mark bound
await other
# Another client asking for the declined address must get a different one.
udhcpc -i host0 -n -q -f -t 3 -T 1 -x {other_opt} -r "$(cat "$C/declined")" -s {hook_o} \
  || exit 11
"#,
        dhcpcd = dhcpcd_body(&hook_d, 30)
    );
    let c = w.container("decl", true, &body);
    // The host side takes the address the server will offer: dhcpcd's ARP probe finds it in
    // use and DECLINEs it.
    let taken = container_address(&c);
    let ifname = c.machine["host_ifname"].as_str().unwrap().to_owned();
    fs::write(c.dir.join("declined"), &taken).unwrap();
    let extra = format!("{taken}/32");
    ok(w.rig
        .in_host("ip")
        .args(["addr", "add", &extra, "dev", &ifname]));
    w.go(&c, "start");
    w.reached(&c, "bound");
    ok(w.rig
        .in_host("ip")
        .args(["addr", "del", &extra, "dev", &ifname]));
    let got = leases(&c, "dhcpcd", &["BOUND", "RENEW", "REBIND", "REBOOT"]);
    assert_eq!(got.len(), 1, "{got:?}{}", w.show(&c));
    let new = got[0].ip.clone();
    assert_ne!(
        new,
        taken,
        "dhcpcd got the address it declined{}",
        w.show(&c)
    );
    assert!(
        subnet(&c).contains(new.parse().unwrap()),
        "{new} outside the subnet"
    );
    assert_told(&c, &got[0], &new);
    assert_configured(&c, "bound", &new);
    let out = fs::read_to_string(c.dir.join("out.log")).unwrap_or_default();
    assert!(
        out.contains("DAD detected"),
        "no conflict was detected:\n{out}"
    );
    w.await_saved(&c, &mac_client_id(&c), Some(&new));

    w.go(&c, "other");
    w.finish(&c);
    let other = leases(&c, "other", &["bound"]);
    assert_eq!(other.len(), 1, "{other:?}{}", w.show(&c));
    assert_ne!(
        other[0].ip, taken,
        "the declined address was handed out again"
    );
    assert_ne!(other[0].ip, new, "a bound address was handed out again");
}

#[test]
fn a_lease_survives_rnetd_being_killed_and_restarted() {
    let Some(mut w) = World::new("a_lease_survives_rnetd_being_killed_and_restarted") else {
        return;
    };
    let dir = w.prepare("rst");
    let hook_a = hook(&dir, "a", Client::Udhcpc, true);
    let hook_b = hook(&dir, "b", Client::Udhcpc, false);
    let (a_opt, a_id) = udhcpc_id(1);
    let (b_opt, _) = udhcpc_id(2);
    let body = format!(
        r#"
udhcpc -i host0 -f -t 3 -T 1 -x {a_opt} -s {hook_a} & U=$!
wait_event "$C/a.events" bound
mark bound
await restarted
A=$(grep '^bound|' "$C/a.events" | head -n1 | cut -d'|' -f2)
# Another client asks for A's address: the reloaded lease must keep it from getting it.
udhcpc -i host0 -n -q -f -t 3 -T 1 -x {b_opt} -r "$A" -s {hook_b} || exit 11
kill -USR1 $U
wait_event "$C/a.events" renew
mark renewed
kill $U
"#
    );
    let c = w.container("rst", false, &body);
    w.go(&c, "start");
    w.reached(&c, "bound");
    let bound = leases(&c, "a", &["bound"]);
    assert_eq!(bound.len(), 1, "{bound:?}");
    let addr = bound[0].ip.clone();
    assert_told(&c, &bound[0], &addr);
    // Once saved, the lease must survive a crash.
    w.await_saved(&c, &a_id, Some(&addr));
    w.rig.stop_rnetd(Signal::SIGKILL);
    w.rig.start_rnetd_with(&["--dns", DNS]);
    let m = w.rig.wait_machine(&c.name);
    assert_eq!(
        m["host_ifname"], c.machine["host_ifname"],
        "adopted as it was"
    );
    w.await_saved(&c, &a_id, Some(&addr));
    w.go(&c, "restarted");
    w.reached(&c, "renewed");
    w.finish(&c);

    let got = leases(&c, "a", &["bound", "renew"]);
    assert_eq!(got.len(), 2, "{got:?}{}", w.show(&c));
    assert_eq!(got[1].kind, "renew");
    assert_told(&c, &got[1], &addr);
    let other = leases(&c, "b", &["bound"]);
    assert_eq!(other.len(), 1, "{other:?}{}", w.show(&c));
    assert_ne!(
        other[0].ip, addr,
        "the restarted server gave a bound address away"
    );
}

#[test]
fn a_28_serves_13_clients_and_no_14th() {
    let Some(mut w) = World::new("a_28_serves_13_clients_and_no_14th") else {
        return;
    };
    let dir = w.prepare("full");
    let hook_pool = hook(&dir, "pool", Client::Udhcpc, false);
    let hook_last = hook(&dir, "last", Client::Udhcpc, false);
    // The first client sends udhcpc's default id, 0x01 + MAC (the container's own lease); the
    // twelve others ids of their own.
    let ids: Vec<String> = (1..=12).map(|n| udhcpc_id(n).0).collect();
    let (last_opt, last_id) = udhcpc_id(14);
    let body = format!(
        r#"
udhcpc -i host0 -n -q -f -t 3 -T 1 -s {hook_pool} || exit 10
for id in {ids}; do
  udhcpc -i host0 -n -q -f -t 3 -T 1 -x "$id" -s {hook_pool} || exit 11
done
mark bound
if udhcpc -i host0 -n -q -f -t 3 -T 1 -x {last_opt} -s {hook_last}; then exit 12; fi
mark refused
await end
"#,
        ids = ids.join(" ")
    );
    let c = w.container("full", false, &body);
    w.go(&c, "start");
    w.reached(&c, "refused");

    let net = subnet(&c);
    let host: Ipv4Addr = c.machine["host_address"].as_str().unwrap().parse().unwrap();
    let bound = leases(&c, "pool", &["bound"]);
    assert_eq!(bound.len(), 13, "{bound:?}{}", w.show(&c));
    assert_eq!(
        bound[0].ip,
        container_address(&c),
        "0x01+MAC: the container's"
    );
    let mut addrs: Vec<Ipv4Addr> = Vec::new();
    for e in &bound {
        assert_told(&c, e, &e.ip);
        let a: Ipv4Addr = e.ip.parse().unwrap();
        assert!(net.contains(a) && a != net.network() && a != net.broadcast() && a != host);
        addrs.push(a);
    }
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 13, "13 distinct addresses: {bound:?}");
    let last = events(&c, "last");
    assert!(
        last.iter().all(|e| e.kind != "bound") && last.iter().any(|e| e.kind == "leasefail"),
        "the 14th client: {last:?}"
    );
    // The lease file holds the 13, not the 14th.
    let ifname = c.machine["host_ifname"].as_str().unwrap();
    let mut saved = Vec::new();
    let all = wait_until(Duration::from_secs(5), || {
        saved = w.rig.saved_leases(ifname).unwrap_or_default();
        saved.len() == 13
    });
    assert!(all, "13 leases saved: {saved:?}");
    assert!(saved.iter().all(|l| l["client_id"] != last_id.as_str()));
    // rnetd is alive and well.
    w.rig.assert_no_panic();
    let listed = w.rig.machines();
    assert_eq!(listed.len(), 1, "{listed:?}");
    w.go(&c, "end");
    w.finish(&c);
}
