//! Privileged tests: the rendered batches applied with the real `nft`, each test in a private
//! network namespace of its own (see `common`). Run as root; otherwise each test prints
//! `SKIP <test>: <reason>` and passes, unless RNET_REQUIRE_PRIVILEGED=1.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::{enter_private_netns, nft_program, sh, thread_netns};
use nat::{
    AsyncNft, Change, Error, GuardedPort, IfName, Mac, NfNetlink, Nft, NftCli, PortMapping,
    PortRange, Proto, Ruleset, observe, plan, render_change, render_changes, render_delete_table,
    render_table, rule_count,
};

/// Loads `script` (nft's own syntax) with `nft -f -` in the calling thread's namespace.
fn nft_load(script: &str) {
    let mut load = std::process::Command::new(nft_program())
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut load.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(load.wait().unwrap().success());
}

fn nft() -> NftCli {
    NftCli::with_program(nft_program())
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Everything container `n` (0-based) adds: its /28, its `ve-` link, tcp port 8000+n to 80, a
/// guarded bridge port `vb-cN` (with an address for even `n`, as a zone member), and for every
/// third one a udp range, a port bound to 127.0.0.1 and an IPv6 port.
fn container(n: u8) -> Vec<Change> {
    // A /28 goes to the hash set `masq4_28`; an odd container's /27 to the interval set `masq4`.
    let len = if n % 2 == 1 { 27 } else { 28 };
    let subnet = format!("10.0.{n}.0/{len}").parse().unwrap();
    let addr = v4(10, 0, n, 2);
    let port = 8000 + u16::from(n);
    let mut changes = vec![
        Change::AddSubnet(subnet),
        Change::AddIface(IfName::new(format!("ve-c{n}")).unwrap()),
        Change::AddPort(
            PortMapping::new(Proto::Tcp, None, PortRange::single(port).unwrap(), addr, 80).unwrap(),
        ),
        Change::GuardPort(GuardedPort {
            ifname: IfName::new(format!("vb-c{n}")).unwrap(),
            mac: Mac([2, 0, 0, 0, 0, n]),
            addr: n.is_multiple_of(2).then(|| Ipv4Addr::new(10, 1, 0, 2 + n)),
        }),
    ];
    if n.is_multiple_of(3) {
        let range = PortRange::new(9000 + u16::from(n) * 10, 9002 + u16::from(n) * 10).unwrap();
        let v6: IpAddr = format!("fd00:0:0:{n}::2").parse().unwrap();
        changes.extend([
            Change::AddPort(PortMapping::new(Proto::Udp, None, range, addr, 5000).unwrap()),
            Change::AddPort(
                PortMapping::new(
                    Proto::Tcp,
                    Some(v4(127, 0, 0, 1)),
                    PortRange::single(port).unwrap(),
                    addr,
                    8080,
                )
                .unwrap(),
            ),
            Change::AddSubnet(format!("fd00:0:0:{n}::/64").parse().unwrap()),
            Change::AddPort(
                PortMapping::new(Proto::Tcp, None, PortRange::single(port).unwrap(), v6, 80)
                    .unwrap(),
            ),
        ]);
    }
    changes
}

/// Container `n`'s host port (tcp 8000+n) mapped to another address: refused while `n` has it.
fn port_elsewhere(n: u8) -> PortMapping {
    let port = PortRange::single(8000 + u16::from(n)).unwrap();
    PortMapping::new(Proto::Tcp, None, port, v4(10, 0, 9, 2), 80).unwrap()
}

fn ruleset_of(containers: impl IntoIterator<Item = u8>) -> Ruleset {
    let mut rs = Ruleset::new();
    for n in containers {
        for c in container(n) {
            rs.apply(&c);
        }
    }
    rs
}

/// Runs `f` to its end on a current-thread runtime on this thread, so that the `nft` processes
/// and sockets it starts are in this test's namespace.
fn on_this_thread<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn listed(nft: &mut NftCli) -> nat::Observed {
    let listing = nft.list_table().unwrap().expect("table inet rnet exists");
    observe(&listing).unwrap()
}

/// Expected read-back of a ruleset: port ranges come back one port at a time.
fn split(rs: &Ruleset) -> Ruleset {
    let mut out = Ruleset::new();
    for c in Ruleset::new().changes_to(rs) {
        match c {
            Change::AddPort(m) => m.split().for_each(|s| {
                out.apply(&Change::AddPort(s));
            }),
            other => {
                out.apply(&other);
            }
        }
    }
    out
}

#[test]
fn nft_runs_in_the_test_threads_namespace() {
    let process_netns = thread_netns();
    if !enter_private_netns("nft_runs_in_the_test_threads_namespace") {
        return;
    }
    let mine = thread_netns();
    assert_ne!(mine, process_netns);
    let child = sh("readlink /proc/self/ns/net");
    assert_eq!(
        child.trim(),
        mine,
        "a spawned process inherits the thread's netns"
    );
    // A fresh namespace has no ruleset at all.
    assert_eq!(sh("nft list ruleset").trim(), "");
    assert!(nft().list_table().unwrap().is_none());
}

#[test]
fn table_with_three_containers_lists_back() {
    if !enter_private_netns("table_with_three_containers_lists_back") {
        return;
    }
    let mut nft = nft();
    let rs = ruleset_of(0..3)
        .with(Change::AddIface(IfName::new("vz-web").unwrap()))
        .with(Change::AllowPair(
            IfName::new("vz-web").unwrap(),
            IfName::new("ve-c1").unwrap(),
        ));
    nft.apply(&render_table(&rs)).unwrap();

    let text = sh("nft list table inet rnet; nft list table bridge rnet");
    println!("nft list table inet rnet; nft list table bridge rnet, 3 containers:\n{text}");
    // nft wraps long element lists: compare with whitespace collapsed.
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for line in [
        "set masq4 { type ipv4_addr flags interval elements = { 10.0.1.0/27 }",
        "set masq4_28 { type ipv4_addr elements = { 10.0.0.0, 10.0.2.0 }",
        "elements = { \"ve-c0\", \"ve-c1\", \"ve-c2\", \"vz-web\" }",
        "\"vz-web\" . \"ve-c1\"",
        "tcp . 8000 : 10.0.0.2",
        "tcp . 8000 : 80",
        "127.0.0.1 . tcp . 8000 : 8080",
        "udp . 9000 : 5000, udp . 9001 : 5001, udp . 9002 : 5002",
        "tcp . 8000 : fd00::2",
        "fib daddr type local dnat ip to meta l4proto . th dport map @ports4_addr:meta l4proto . th dport map @ports4_port",
        "ip saddr & 255.255.255.240 == @masq4_28 ip daddr & 255.255.255.240 != @masq4_28 ip daddr != @masq4 masquerade",
        "ip saddr @masq4 ip daddr & 255.255.255.240 != @masq4_28 ip daddr != @masq4 masquerade",
        "ip saddr 127.0.0.0/8 oifname @ifaces masquerade",
        "ip saddr & 255.255.255.240 == @masq4_28 oifname @ifaces ct status dnat masquerade",
        "ip saddr @masq4 oifname @ifaces ct status dnat masquerade",
        "ip6 saddr & ffff:ffff:ffff:ffff:: == @masq6_64 ip6 daddr & ffff:ffff:ffff:ffff:: != @masq6_64 ip6 daddr != @masq6 masquerade",
        "iifname . oifname @allowed_pairs accept",
        "iifname @ifaces oifname @ifaces drop",
        "iifname @ifaces udp dport 67 accept",
        "ip6 daddr != ::1 fib daddr type local dnat ip6 to meta l4proto . th dport map @ports6_addr",
    ] {
        assert!(flat.contains(line), "missing {line:?} in\n{text}");
    }

    let observed = listed(&mut nft);
    assert!(observed.intact, "a fresh table reads back intact");
    assert_eq!(observed.rules, rule_count());
    assert_eq!(observed.ruleset, split(&rs));
    assert!(plan(Some(&observed), &rs).is_none(), "nothing to do");
}

#[test]
fn ten_containers_change_elements_not_rules() {
    if !enter_private_netns("ten_containers_change_elements_not_rules") {
        return;
    }
    let mut nft = nft();
    nft.apply(&render_table(&Ruleset::new())).unwrap();
    let empty = listed(&mut nft);
    assert!(empty.intact);
    assert_eq!(empty.rules, rule_count());

    for n in 0..10 {
        nft.apply(&render_changes(&container(n))).unwrap();
    }
    let full = listed(&mut nft);
    assert!(full.intact);
    assert_eq!(full.rules, empty.rules, "rule count grew with containers");
    assert_eq!(full.ruleset, split(&ruleset_of(0..10)));

    // Re-applying everything changes nothing and fails nothing (adds are idempotent).
    for n in 0..10 {
        nft.apply(&render_changes(&container(n))).unwrap();
    }
    assert_eq!(listed(&mut nft), full);

    // Detach every other container: element deletes only.
    let mut rs = ruleset_of(0..10);
    for n in (0..10).step_by(2) {
        let down: Vec<Change> = Ruleset::new()
            .changes_to(&ruleset_of([n]))
            .into_iter()
            .map(|c| match c {
                Change::AddSubnet(x) => Change::DelSubnet(x),
                Change::AddIface(x) => Change::DelIface(x),
                Change::AddPort(x) => Change::DelPort(x),
                Change::GuardPort(x) => Change::UnguardPort(x),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        for c in &down {
            rs.apply(c);
        }
        nft.apply(&render_changes(&down)).unwrap();
        // Detaching twice is not an error (teardown is idempotent).
        nft.apply(&render_changes(&down)).unwrap();
    }
    let half = listed(&mut nft);
    assert!(half.intact);
    assert_eq!(half.rules, empty.rules);
    assert_eq!(half.ruleset, split(&rs));

    // A whole-table render of the same state converges to the same listing.
    nft.apply(&render_table(&rs)).unwrap();
    assert_eq!(listed(&mut nft), half);
}

#[test]
fn deleting_another_containers_port_is_refused() {
    if !enter_private_netns("deleting_another_containers_port_is_refused") {
        return;
    }
    let mut nft = nft();
    let port = PortRange::single(8080).unwrap();
    let mine = PortMapping::new(Proto::Tcp, None, port, v4(10, 0, 0, 2), 80).unwrap();
    let theirs = PortMapping::new(Proto::Tcp, None, port, v4(10, 0, 0, 3), 80).unwrap();
    let rs = Ruleset::new().with(Change::AddPort(mine.clone()));
    nft.apply(&render_table(&rs)).unwrap();

    let err = nft
        .apply(&render_change(&Change::DelPort(theirs.clone())))
        .unwrap_err();
    let Error::Refused { ref stderr, .. } = err else {
        panic!("expected a refusal, got {err:?}");
    };
    assert!(stderr.contains("File exists"), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "{} refused applying add element ports4_addr x1, delete element ports4_addr x1",
            nft_program()
        )),
        "{err}"
    );
    let err = nft
        .apply(&render_change(&Change::AddPort(theirs)))
        .unwrap_err();
    assert!(err.to_string().contains("File exists"), "{err}");
    assert_eq!(listed(&mut nft).ruleset, rs, "nothing was applied");

    nft.apply(&render_change(&Change::DelPort(mine))).unwrap();
    assert_eq!(listed(&mut nft).ruleset, Ruleset::new());
}

#[test]
fn delete_table_is_idempotent() {
    if !enter_private_netns("delete_table_is_idempotent") {
        return;
    }
    let mut nft = nft();
    nft.apply(&render_delete_table()).unwrap(); // no table yet: not an error
    nft.apply(&render_table(&ruleset_of(0..3))).unwrap();
    nft.apply(&render_table(&ruleset_of(0..3))).unwrap(); // re-create over itself
    assert!(nft.list_table().unwrap().is_some());
    nft.apply(&render_delete_table()).unwrap();
    assert!(nft.list_table().unwrap().is_none());
    assert_eq!(sh("nft list ruleset").trim(), "");
    nft.apply(&render_delete_table()).unwrap();
}

#[test]
fn reconcile_repairs_a_flushed_or_damaged_table() {
    if !enter_private_netns("reconcile_repairs_a_flushed_or_damaged_table") {
        return;
    }
    let mut nft = nft();
    let rs = ruleset_of(0..4);
    nft.apply(&render_table(&rs)).unwrap();

    // Someone flushes the ruleset: plan re-creates the table.
    sh("nft flush ruleset");
    assert!(nft.list_table().unwrap().is_none());
    nft.apply(&plan(None, &rs).unwrap()).unwrap();
    assert!(listed(&mut nft).intact);

    // Someone flushes one chain: the layout is damaged, plan re-creates the table.
    sh("nft flush chain inet rnet forward");
    let damaged = listed(&mut nft);
    assert!(!damaged.intact);
    nft.apply(&plan(Some(&damaged), &rs).unwrap()).unwrap();
    assert!(listed(&mut nft).intact);

    // Someone deletes an element: plan puts back just that element.
    sh("nft delete element inet rnet ifaces '{ \"ve-c1\" }'");
    let drifted = listed(&mut nft);
    assert!(
        !drifted.intact,
        "ve-c1 is still paired with itself but not in ifaces"
    );
    sh("nft delete element inet rnet allowed_pairs '{ \"ve-c1\" . \"ve-c1\" }'");
    let drifted = listed(&mut nft);
    assert!(drifted.intact);
    let fix = plan(Some(&drifted), &rs).unwrap();
    assert_eq!(
        nat::apply::summarize(&fix),
        "add element ifaces x1, add element allowed_pairs x1"
    );
    nft.apply(&fix).unwrap();
    assert_eq!(listed(&mut nft).ruleset, split(&rs));

    // Someone deletes the bridge table only: the tables are re-created together.
    sh("nft delete table bridge rnet");
    let damaged = listed(&mut nft);
    assert!(!damaged.intact);
    nft.apply(&plan(Some(&damaged), &rs).unwrap()).unwrap();
    assert!(listed(&mut nft).intact);

    // Someone deletes a guarded port's MAC: the sets disagree, the tables are re-created.
    sh("nft delete element bridge rnet port_macs '{ \"vb-c0\" . 02:00:00:00:00:00 }'");
    let damaged = listed(&mut nft);
    assert!(!damaged.intact);
    nft.apply(&plan(Some(&damaged), &rs).unwrap()).unwrap();
    let repaired = listed(&mut nft);
    assert!(repaired.intact);
    assert_eq!(repaired.ruleset, split(&rs));
}

#[test]
fn async_apply_and_list() {
    if !enter_private_netns("async_apply_and_list") {
        return;
    }
    on_this_thread(async {
        let mut nft = nft();
        assert!(nft.list_table_async().await.unwrap().is_none());
        nft.apply_async(&render_table(&ruleset_of(0..2)))
            .await
            .unwrap();
        let listing = nft.list_table_async().await.unwrap().unwrap();
        assert!(observe(&listing).unwrap().intact);
        let err = nft
            .apply_async(&render_change(&Change::AddSubnet(
                "10.0.1.0/24".parse().unwrap(),
            )))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("add element masq4 x1"), "{err}");
    });
}

#[test]
fn a_session_applies_batches_reports_refusals_and_goes_on() {
    if !enter_private_netns("a_session_applies_batches_reports_refusals_and_goes_on") {
        return;
    }
    on_this_thread(async {
        let mut nft = nft().with_session();
        nft.apply_async(&render_table(&ruleset_of(0..2)))
            .await
            .unwrap();
        let mut rs = ruleset_of(0..2);
        for n in 2..6 {
            let changes = container(n);
            nft.apply_async(&render_changes(&changes)).await.unwrap();
            changes.iter().for_each(|c| {
                rs.apply(c);
            });
        }
        assert_eq!(listed(&mut nft).ruleset, split(&rs));

        // A refused batch: nft's own words, nothing applied, and the session goes on.
        let err = nft
            .apply_async(&render_change(&Change::AddSubnet(
                "10.0.1.0/24".parse().unwrap(),
            )))
            .await
            .unwrap_err();
        let Error::Refused { ref stderr, .. } = err else {
            panic!("expected a refusal, got {err:?}");
        };
        assert!(!stderr.is_empty(), "{err}");
        assert!(!stderr.contains("rnet-sync"), "the marker leaked: {err}");
        assert!(err.to_string().contains("add element masq4 x1"), "{err}");
        assert_eq!(listed(&mut nft).ruleset, split(&rs), "nothing was applied");

        // Back to two containers, in one batch of deletions.
        let back = rs.changes_to(&ruleset_of(0..2));
        nft.apply_async(&render_changes(&back)).await.unwrap();
        assert_eq!(listed(&mut nft).ruleset, split(&ruleset_of(0..2)));
        nft.apply_async(&render_delete_table()).await.unwrap();
        assert!(nft.list_table_async().await.unwrap().is_none());
    });
}

/// Every set's elements as `nft -j list ruleset` gives them, each set's sorted (a hash set lists
/// in no fixed order): what two ways of applying the same changes must both leave.
fn elements() -> Vec<(String, String, Vec<String>)> {
    let json: serde_json::Value = serde_json::from_str(&sh("nft -j list ruleset")).unwrap();
    let mut out = Vec::new();
    for object in json["nftables"].as_array().unwrap() {
        let Some(set) = object.get("set").or_else(|| object.get("map")) else {
            continue;
        };
        let mut elems: Vec<String> = set["elem"]
            .as_array()
            .map(|a| a.iter().map(|e| e.to_string()).collect())
            .unwrap_or_default();
        elems.sort();
        out.push((
            set["family"].as_str().unwrap().to_owned(),
            set["name"].as_str().unwrap().to_owned(),
            elems,
        ));
    }
    out.sort();
    out
}

/// The opposite of an addition (and of a removal).
fn undo(c: &Change) -> Change {
    match c.clone() {
        Change::AddSubnet(x) => Change::DelSubnet(x),
        Change::DelSubnet(x) => Change::AddSubnet(x),
        Change::AddIface(x) => Change::DelIface(x),
        Change::DelIface(x) => Change::AddIface(x),
        Change::AllowPair(a, b) => Change::DelPair(a, b),
        Change::DelPair(a, b) => Change::AllowPair(a, b),
        Change::AddPort(x) => Change::DelPort(x),
        Change::DelPort(x) => Change::AddPort(x),
        Change::GuardPort(x) => Change::UnguardPort(x),
        Change::UnguardPort(x) => Change::GuardPort(x),
    }
}

/// Batches that touch every kind of element: containers come (every third with a port range,
/// a bound port, an IPv6 subnet and port), zones pair up, every other one goes, some twice,
/// some come back; ends with none.
fn workload() -> Vec<Vec<Change>> {
    let name = |s: &str| IfName::new(s).unwrap();
    let mut batches: Vec<Vec<Change>> = (0..7).map(container).collect();
    batches.push(vec![
        Change::AddIface(name("vz-a")),
        Change::AddIface(name("vz-b")),
        Change::AllowPair(name("vz-a"), name("vz-b")),
    ]);
    for n in (0..7).step_by(2) {
        let down: Vec<Change> = container(n).iter().rev().map(undo).collect();
        batches.push(down.clone());
        batches.push(down); // teardown is idempotent
    }
    batches.push(container(2));
    batches.push(vec![Change::DelPair(name("vz-a"), name("vz-b"))]);
    let mut rest: Vec<Change> = Vec::new();
    for n in [1, 2, 3, 5] {
        rest.extend(container(n).iter().rev().map(undo));
    }
    rest.extend([
        Change::DelIface(name("vz-a")),
        Change::DelIface(name("vz-b")),
    ]);
    batches.push(rest);
    batches
}

#[test]
fn netlink_batches_leave_what_nft_leaves() {
    if !enter_private_netns("netlink_batches_leave_what_nft_leaves") {
        return;
    }
    let mut nft = nft();
    let mut netlink = NfNetlink::open().unwrap();
    let batches = workload();

    nft.apply(&render_table(&Ruleset::new())).unwrap();
    let mut by_nft = Vec::new();
    for batch in &batches {
        nft.apply(&render_changes(batch)).unwrap();
        by_nft.push(elements());
    }
    nft.apply(&render_delete_table()).unwrap();

    nft.apply(&render_table(&Ruleset::new())).unwrap();
    let mut rs = Ruleset::new();
    for (i, batch) in batches.iter().enumerate() {
        netlink
            .apply(batch)
            .unwrap_or_else(|e| panic!("batch {i}: {e}"));
        assert_eq!(elements(), by_nft[i], "after batch {i}: {batch:?}");
        batch.iter().for_each(|c| {
            rs.apply(c);
        });
        let observed = listed(&mut nft);
        assert!(observed.intact, "after batch {i}");
        assert_eq!(observed.ruleset, split(&rs), "after batch {i}");
    }
    assert_eq!(rs, Ruleset::new());
}

#[test]
fn netlink_refusals_apply_nothing_and_say_why() {
    if !enter_private_netns("netlink_refusals_apply_nothing_and_say_why") {
        return;
    }
    let mut netlink = NfNetlink::open().unwrap();
    // No table: nothing to change, and the kernel's word for it.
    let err = netlink.apply(&container(0)).unwrap_err();
    let Error::Refused { ref stderr, .. } = err else {
        panic!("expected a refusal, got {err:?}");
    };
    assert!(stderr.contains("No such file or directory"), "{err}");
    assert!(err.to_string().contains("add element masq4_28 x1"), "{err}");

    let mut nft = nft();
    let rs = ruleset_of(0..2);
    nft.apply(&render_table(&rs)).unwrap();
    let before = elements();
    // Another container's port, in a batch with changes that alone would pass.
    let theirs = port_elsewhere(0);
    let mut batch = container(5);
    batch.push(Change::DelPort(theirs.clone()));
    let err = netlink.apply(&batch).unwrap_err();
    assert!(err.to_string().contains("File exists"), "{err}");
    assert_eq!(elements(), before, "nothing of the batch was applied");
    let err = netlink.apply(&[Change::AddPort(theirs)]).unwrap_err();
    assert!(err.to_string().contains("File exists"), "{err}");
    // A subnet overlapping another.
    let err = netlink
        .apply(&[Change::AddSubnet("10.0.1.0/24".parse().unwrap())])
        .unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    assert_eq!(elements(), before);

    // The socket goes on after refusals.
    netlink.apply(&container(5)).unwrap();
    assert_eq!(listed(&mut nft).ruleset, split(&ruleset_of([0, 1, 5])));
}

#[test]
fn a_cli_with_netlink_applies_changes_and_keeps_nfts_words_for_refusals() {
    if !enter_private_netns("a_cli_with_netlink_applies_changes_and_keeps_nfts_words_for_refusals")
    {
        return;
    }
    on_this_thread(async {
        let mut nft = nft().with_session().with_netlink().unwrap();
        nft.apply_async(&render_table(&ruleset_of(0..2)))
            .await
            .unwrap();
        for n in 2..5 {
            nft.apply_changes_async(&container(n)).await.unwrap();
        }
        assert_eq!(listed(&mut nft).ruleset, split(&ruleset_of(0..5)));
        let theirs = port_elsewhere(1);
        let err = nft
            .apply_changes_async(&[Change::DelPort(theirs)])
            .await
            .unwrap_err();
        let Error::Refused {
            ref program,
            ref stderr,
            ..
        } = err
        else {
            panic!("expected a refusal, got {err:?}");
        };
        assert_eq!(program, nft_program(), "{err}");
        assert!(stderr.contains("File exists"), "{err}");
        let back = ruleset_of(0..5).changes_to(&Ruleset::new());
        nft.apply_changes_async(&back).await.unwrap();
        assert_eq!(listed(&mut nft).ruleset, Ruleset::new());
    });
}

#[test]
fn missing_nft_is_a_clear_error() {
    let mut nft = NftCli::with_program("/nonexistent/nft");
    let err = nft.apply(&render_delete_table()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not run /nonexistent/nft for applying the deletion of tables inet rnet, bridge rnet"
    );
    let err = nft.list_table().unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not run /nonexistent/nft for listing table inet rnet"
    );
}

#[test]
fn other_firewalls_are_found_by_their_chains_and_their_tables_listed_alone() {
    if !enter_private_netns(
        "other_firewalls_are_found_by_their_chains_and_their_tables_listed_alone",
    ) {
        return;
    }
    on_this_thread(async {
        let mut nft = nft().with_netlink().unwrap();
        let first = AsyncNft::generation(&mut nft).expect("netlink reads the generation");
        assert_eq!(AsyncNft::generation(&mut nft), Some(first));
        // Docker's filter table, a nat table with a chain per container (CNI's, never listed),
        // a hardened inet input chain, and our own table.
        let mut script = String::from(
            "table ip filter {\n chain FORWARD { type filter hook forward priority 0; policy drop; jump DOCKER-USER; }\n chain DOCKER-USER { return; }\n}\n\
             table inet hard {\n chain in { type filter hook input priority 0; policy drop; }\n}\n\
             table ip nat {\n chain POSTROUTING { type nat hook postrouting priority 100; }\n",
        );
        for i in 0..50 {
            script.push_str(&format!(
                " chain CNI-{i} {{ ip daddr 10.88.0.0/16 accept; masquerade; }}\n"
            ));
        }
        script.push_str("}\n");
        nft_load(&script);
        nft.apply_async(&render_table(&ruleset_of(0..2)))
            .await
            .unwrap();
        let changed = AsyncNft::generation(&mut nft).unwrap();
        assert_ne!(changed, first, "changes move the generation");

        let chains = nft.list_chains_async().await.unwrap();
        let tables = nat::hooked_tables(&chains).unwrap();
        let expected: Vec<nat::TableRef> = [("ip", "filter"), ("inet", "hard")]
            .iter()
            .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
            .collect();
        assert_eq!(tables, expected);
        let mut objects = Vec::new();
        for (family, name) in &tables {
            let listing = nft.list_any_table_async(family, name).await.unwrap();
            objects.extend(listing.unwrap()["nftables"].as_array().unwrap().clone());
        }
        let alone = nat::detect(&serde_json::json!({ "nftables": objects }));
        let whole = nat::detect(&nft.list_ruleset_async().await.unwrap());
        assert_eq!(alone, whole);
        assert_eq!(alone.chains.len(), 2, "{alone:?}");
        assert_eq!(nft.list_any_table_async("ip", "gone").await.unwrap(), None);
        assert_eq!(
            AsyncNft::generation(&mut nft),
            Some(changed),
            "listings change nothing"
        );
    });
}

#[test]
fn a_session_lists_what_nft_lists_between_its_batches() {
    if !enter_private_netns("a_session_lists_what_nft_lists_between_its_batches") {
        return;
    }
    on_this_thread(async {
        let mut session = nft().with_session();
        let mut plain = nft();
        assert!(session.list_table_async().await.unwrap().is_none());
        assert!(
            session
                .list_any_table_async("ip", "filter")
                .await
                .unwrap()
                .is_none()
        );
        sh(&format!(
            "{} add table ip filter && {} 'add chain ip filter FORWARD {{ type filter hook forward priority 0; policy drop; }}'",
            nft_program(),
            nft_program()
        ));
        // A peer's chains: `list chains` is then larger than a pipe holds (64 KiB), so the
        // session must read the listing while it waits for nft's answer.
        let mut script = String::from("table ip nat {\n");
        for i in 0..1500 {
            script.push_str(&format!(" chain CNI-{i:024x} {{ }}\n"));
        }
        script.push_str("}\n");
        nft_load(&script);
        assert!(plain.list_chains_async().await.unwrap().len() > 128 * 1024);
        for n in 0..3u8 {
            // A batch, then every listing, through the session and through nft each time.
            session
                .apply_async(&render_table(&ruleset_of(0..=n)))
                .await
                .unwrap();
            let ours = session.list_table_async().await.unwrap().unwrap();
            let theirs = plain.list_table_async().await.unwrap().unwrap();
            assert_eq!(observe(&ours).unwrap(), observe(&theirs).unwrap());
            assert_eq!(
                nat::hooked_tables(&session.list_chains_async().await.unwrap()).unwrap(),
                nat::hooked_tables(&plain.list_chains_async().await.unwrap()).unwrap()
            );
            let filter = session.list_any_table_async("ip", "filter").await.unwrap();
            assert_eq!(
                filter,
                plain.list_any_table_async("ip", "filter").await.unwrap()
            );
            assert!(filter.is_some());
            // A refused batch in between (container 0's port to another address) leaves the
            // session in step.
            let taken = port_elsewhere(0);
            assert!(
                session
                    .apply_async(&render_change(&Change::AddPort(taken)))
                    .await
                    .is_err()
            );
        }
        assert_eq!(
            session.session_drops(),
            0,
            "the session never fell back to nft"
        );
    });
}

/// `iptables-nft-save -t filter` in the calling thread's namespace (what rnetd runs to read
/// back the comments of rules iptables wrote).
fn iptables_save() -> String {
    let out = std::process::Command::new("iptables-nft-save")
        .args(["-t", "filter"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// What rnetd sees of the other firewalls: the ruleset, and the save of `ip filter` where a
/// rule with iptables' comment is not in `known` (as rnetd: `nat::restored_tables`); also says
/// whether it took the save.
async fn host_view(nft: &mut NftCli, known: &[nat::OurRule]) -> (nat::HostView, bool) {
    let listing = nft.list_ruleset_async().await.unwrap();
    if nat::restored_tables(&listing, known).is_empty() {
        return (nat::detect_with_saves(&listing, &[], known), false);
    }
    let save = iptables_save();
    let view = nat::detect_with_saves(&listing, &[("ip", &save)], known);
    (view, true)
}

#[test]
fn group_rules_go_into_iptables_tables_with_iptables_and_iptables_still_reads_them() {
    const TEST: &str =
        "group_rules_go_into_iptables_tables_with_iptables_and_iptables_still_reads_them";
    if !enter_private_netns(TEST) {
        return;
    }
    if std::process::Command::new("iptables-nft")
        .arg("-V")
        .output()
        .is_err()
    {
        println!("SKIP {TEST}: iptables-nft is not installed (Debian package iptables)");
        return;
    }
    on_this_thread(async {
        let mut nft = nft();
        // Docker's layout, and a hardened nft input chain beside it.
        sh(
            "iptables-nft -P FORWARD DROP && iptables-nft -N DOCKER-USER \
            && iptables-nft -A FORWARD -j DOCKER-USER \
            && iptables-nft -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT \
            && iptables-nft -A DOCKER-USER -j RETURN",
        );
        nft_load(
            "table inet hard {\n chain in { type filter hook input priority 0; policy drop; }\n}\n",
        );
        let group = Some(0x726e_6574);
        let plan = nat::plan_host(&host_view(&mut nft, &[]).await.0, group).unwrap();
        assert_eq!(plan.iptables.len(), 2, "{plan:?}");
        if let Some(batch) = &plan.batch {
            nft.apply_async(batch).await.unwrap();
        }
        for rule in &plan.iptables {
            nat::insert_with_iptables(rule).await.unwrap();
        }
        // iptables reads the chain, ours first, Docker's return after.
        let out = std::process::Command::new("iptables-nft")
            .args(["-S", "DOCKER-USER"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let rules = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            rules.lines().collect::<Vec<_>>(),
            [
                "-N DOCKER-USER",
                "-A DOCKER-USER -m devgroup --src-group 0x726e6574 -m comment --comment \"rnet: from our links\" -j ACCEPT",
                "-A DOCKER-USER -m devgroup --dst-group 0x726e6574 -m comment --comment \"rnet: to our links\" -j ACCEPT",
                "-A DOCKER-USER -j RETURN",
            ]
        );
        // The nft input chain natively, in the same order nft lists it.
        let hard = nft
            .list_any_table_async("inet", "hard")
            .await
            .unwrap()
            .unwrap();
        let comments: Vec<&str> = hard["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["rule"]["comment"].as_str())
            .collect();
        assert_eq!(
            comments,
            [
                "rnet: DHCP udp from our links",
                "rnet: DNS udp from our links",
                "rnet: DNS tcp from our links",
                "rnet: ICMPv6 from our links"
            ]
        );
        // Read back (the iptables ones through the save, once): nothing more to do.
        let (view, saved) = host_view(&mut nft, &[]).await;
        assert!(saved);
        assert_eq!(view.ours.len(), 6, "{view:?}");
        assert_eq!(nat::plan_host(&view, group), None);
        // The next look knows them by their handles: no save, the same view.
        let (again, saved) = host_view(&mut nft, &view.read_comments).await;
        assert!(!saved, "a save at every look");
        assert_eq!(again, view);
        // Restored (new handles, the same comments): a save again, and still no duplicate.
        sh("iptables-nft-save | iptables-nft-restore");
        let (restored, saved) = host_view(&mut nft, &view.read_comments).await;
        assert!(saved);
        assert_eq!(restored.ours.len(), 6, "{restored:?}");
        assert_eq!(nat::plan_host(&restored, group), None);
        let view = restored;
        // Without links, all six go and Docker's rules stay.
        let plan = nat::plan_host(&view, None).unwrap();
        assert!(plan.iptables.is_empty());
        nft.apply_async(plan.batch.as_ref().unwrap()).await.unwrap();
        assert!(
            host_view(&mut nft, &view.read_comments)
                .await
                .0
                .ours
                .is_empty()
        );
        assert!(iptables_save().contains("-A DOCKER-USER -j RETURN"));

        // A refusal carries iptables' own words (rnetd then adds the rule's native form).
        let plan = nat::plan_host(&host_view(&mut nft, &[]).await.0, group).unwrap();
        let mut missing = plan.iptables[0].clone();
        missing.chain = "NO-SUCH-CHAIN".to_owned();
        let refused = nat::insert_with_iptables(&missing).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("iptables-nft refused inserting")
                && refused.to_string().contains("NO-SUCH-CHAIN"),
            "{refused}"
        );
        println!("{refused}");
        nft.apply_async(&plan.iptables[0].native).await.unwrap();
    });
}
