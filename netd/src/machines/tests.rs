//! The machine logic on the fakes: every rollback path, EEXIST, port conflicts, zone
//! lifecycles, teardown failures, adoption and the pidfd watch. No root, no kernel.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::Ipv4Network;

use crate::api::{
    AttachRequest, ErrorKind, MachineName, NetworkSpec, PortSpec, ZoneConfig, ZoneName,
};
use crate::naming::MachineId;
use crate::sysctl::Sysctl;

use super::fake::{Fake, FakeIpv6, FakeLeases, FakeLinks, FakeProcs, SharedNft};
use super::plan::{AttachObserved, Step};
use super::restore::{RestartObserved, plan_restart};
use super::system::Leases;
use super::{Machines, Settings};

struct World {
    dir: tempfile::TempDir,
    links: FakeLinks,
    procs: FakeProcs,
    leases: FakeLeases,
    nft: SharedNft,
    ipv6: FakeIpv6,
    m: Arc<Machines<Fake>>,
}

fn settings(dir: &std::path::Path) -> Settings {
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    Settings {
        runtime_dir: dir.join("run"),
        state_dir: dir.join("state"),
        machine_id: MachineId([7; 16]),
        pool_ranges: vec!["192.168.0.0/16".parse().unwrap()],
        veth_prefix: 28,
        dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
        host_firewall: Default::default(),
        // IPv6 on when the test made the sysctl files of it (`world6`).
        pool6: dir
            .join("sys/net/ipv6/conf/all/forwarding")
            .exists()
            .then(|| "fd00:7:7::/48".parse().unwrap()),
    }
}

fn sysctl_root(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("sys");
    std::fs::create_dir_all(root.join("net/ipv4/conf")).unwrap();
    if !root.join("net/ipv4/ip_forward").exists() {
        std::fs::write(root.join("net/ipv4/ip_forward"), "0").unwrap();
    }
    root
}

async fn world() -> World {
    world_in(tempfile::tempdir().unwrap()).await
}

/// A world whose rnetd gives IPv6 (`--pool6 fd00:7:7::/48`), with the host's IPv6 knobs.
async fn world6() -> World {
    let dir = tempfile::tempdir().unwrap();
    for (link, ra) in [("all", "1"), ("eth0", "1")] {
        let d = dir.path().join("sys/net/ipv6/conf").join(link);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("forwarding"), "0").unwrap();
        std::fs::write(d.join("accept_ra"), ra).unwrap();
    }
    world_in(dir).await
}

async fn world_in(dir: tempfile::TempDir) -> World {
    let root = sysctl_root(dir.path());
    let links = FakeLinks::new(root);
    let (procs, leases, nft) = (
        FakeProcs::default(),
        FakeLeases::default(),
        SharedNft::default(),
    );
    let ipv6 = FakeIpv6::default();
    let m = start(&dir, &links, &procs, &leases, &ipv6, &nft).await;
    World {
        dir,
        links,
        procs,
        leases,
        nft,
        ipv6,
        m,
    }
}

async fn start(
    dir: &tempfile::TempDir,
    links: &FakeLinks,
    procs: &FakeProcs,
    leases: &FakeLeases,
    ipv6: &FakeIpv6,
    nft: &SharedNft,
) -> Arc<Machines<Fake>> {
    Machines::<Fake>::start_with(
        settings(dir.path()),
        links.clone(),
        procs.clone(),
        leases.clone(),
        ipv6.clone(),
        nft.clone(),
        Sysctl::new(sysctl_root(dir.path())),
    )
    .await
    .unwrap()
}

impl World {
    /// rnetd restarts (its processes and the host's links stay).
    async fn restart(&mut self) {
        self.m = start(
            &self.dir,
            &self.links,
            &self.procs,
            &self.leases,
            &self.ipv6,
            &self.nft,
        )
        .await;
    }

    async fn attach(
        &self,
        name: &str,
        pid: u32,
        network: NetworkSpec,
        ports: &[&str],
    ) -> Result<crate::api::Machine, crate::api::ApiError> {
        let netns = self.procs.spawn(pid, u64::from(pid) * 10);
        self.m.attach(req(name, pid, network, ports), netns).await
    }

    fn forwarding(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sys/net/ipv4/ip_forward")).unwrap()
    }
}

fn req(name: &str, pid: u32, network: NetworkSpec, ports: &[&str]) -> AttachRequest {
    AttachRequest {
        machine: MachineName::new(name).unwrap(),
        pid,
        network,
        ports: ports
            .iter()
            .map(|p| PortSpec::from_str(p).unwrap())
            .collect(),
        links: Vec::new(),
        held: None,
        init: crate::api::InitKind::Other,
        ipv6: true,
    }
}

fn zone(name: &str) -> NetworkSpec {
    NetworkSpec::Zone(ZoneName::new(name).unwrap())
}

#[tokio::test]
async fn a_veth_attach_builds_link_address_rules_and_dhcp_in_that_order() {
    let w = world().await;
    let m = w
        .attach("web", 100, NetworkSpec::Veth, &["8080:80"])
        .await
        .unwrap();
    assert_eq!(m.host_ifname.as_deref(), Some("ve-web"));
    assert_eq!(m.subnet, Some("192.168.0.0/28".parse().unwrap()));
    assert_eq!(m.host_address, Some(Ipv4Addr::new(192, 168, 0, 1)));
    let link = w.links.link("ve-web").unwrap();
    assert!(link.up && link.marked);
    assert_eq!(
        link.addrs,
        vec!["192.168.0.1/28".parse::<Ipv4Network>().unwrap()]
    );
    let calls: Vec<String> = w
        .links
        .calls()
        .into_iter()
        .filter(|c| {
            !c.starts_with("lookup") && !c.starts_with("ipv4_in_use") && !c.starts_with("marked")
        })
        .collect();
    assert_eq!(
        calls,
        ["add_veth ve-web", "add_address 192.168.0.1/28", "set_up 1"]
    );
    assert_eq!(w.leases.served(), ["ve-web"]);
    assert!(w.nft.get().table_exists());
    assert_eq!(w.forwarding(), "1");
    assert_eq!(w.m.list().await.len(), 1);
}

#[tokio::test]
async fn planning_is_pure_and_puts_the_guard_before_the_port_joins() {
    let w = world().await;
    let registry = w.m.registry.lock().await;
    let r = req("db", 1, zone("lab"), &[]);
    let seen = AttachObserved::default();
    let a = registry.plan_attach(&w.m.settings, &r, &seen).unwrap();
    let b = registry.plan_attach(&w.m.settings, &r, &seen).unwrap();
    assert_eq!(a, b, "the same inputs give the same plan");
    assert!(
        w.links
            .calls()
            .iter()
            .all(|c| c.starts_with("marked") || c.starts_with("lookup")),
        "planning touched the kernel: {:?}",
        w.links.calls()
    );
    let zone = a
        .new_zone
        .as_ref()
        .expect("the zone is created with its first member");
    assert!(matches!(zone.steps[0], Step::AddBridge { .. }));
    let rules = a
        .steps
        .iter()
        .position(|s| matches!(s, Step::AddRules(_)))
        .unwrap();
    let join = a
        .steps
        .iter()
        .position(|s| matches!(s, Step::JoinBridge { .. }))
        .unwrap();
    assert!(rules < join, "{:?}", a.steps);
    assert!(a.machine.container_address.is_some());
}

/// Every failing step of a veth attach leaves nothing: no link, no server, no table, the
/// subnet free again.
#[tokio::test]
async fn every_failed_step_of_an_attach_is_undone() {
    for op in ["add_veth", "add_altname", "add_address", "set_up"] {
        let w = world().await;
        w.links.fail_next(op, libc::EIO);
        // A 16+ character name is shortened, so the altname step runs too.
        let err = w
            .attach("averyveryverylongname", 5, NetworkSpec::Veth, &["8080:80"])
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal, "{op}: {err:?}");
        // Named by the link's name, never by an ifindex.
        let ifname = crate::naming::LinkName::new("ve-", "averyveryverylongname").ifname;
        assert!(
            err.message.contains(&format!(" {ifname}: ")),
            "{op}: {}",
            err.message
        );
        assert!(
            w.links.names().is_empty(),
            "{op}: left {:?}",
            w.links.names()
        );
        assert!(w.leases.served().is_empty(), "{op}");
        assert!(!w.nft.get().table_exists(), "{op}");
        assert!(w.m.list().await.is_empty(), "{op}");
        // The subnet went back to the pool.
        assert!(
            w.m.registry.lock().await.pool.allocated().is_empty(),
            "{op}"
        );
        w.attach("next", 6, NetworkSpec::Veth, &[]).await.unwrap();
    }
}

#[tokio::test]
async fn a_refused_dhcp_server_or_firewall_batch_is_undone() {
    let w = world().await;
    w.leases.fail_next_serve();
    assert!(w.attach("a", 1, NetworkSpec::Veth, &[]).await.is_err());
    assert!(w.links.names().is_empty());
    assert!(
        !w.nft.get().table_exists(),
        "the rules added before the server must go"
    );
    w.nft
        .get()
        .refuse_next("Error: Could not process rule: No buffer space available");
    w.nft.get().refuse_next("Error: again");
    assert!(w.attach("b", 2, NetworkSpec::Veth, &[]).await.is_err());
    assert!(w.links.names().is_empty());
    assert!(w.leases.served().is_empty());
    assert_eq!(
        w.forwarding(),
        "0",
        "forwarding restored after the only link's undo"
    );
}

#[tokio::test]
async fn a_firewall_check_lists_nothing_while_the_ruleset_and_our_machines_stay_the_same() {
    let w = world().await;
    w.attach("a", 1, NetworkSpec::Veth, &["8080:80"])
        .await
        .unwrap();
    let lists = || {
        let nft = w.nft.get();
        (nft.table_lists(), nft.ruleset_lists())
    };
    // The first check looks (our tables, the other firewalls'), and finds all in order.
    let before = lists();
    w.m.check_firewall().await;
    let looked = lists();
    assert!(
        looked.0 > before.0 && looked.1 > before.1,
        "{before:?} {looked:?}"
    );
    // Nothing changed since: the next check has nothing to list.
    w.m.check_firewall().await;
    assert_eq!(lists(), looked);
    // A change of ours, or of the ruleset from outside, and the check looks again.
    w.attach("b", 2, NetworkSpec::Veth, &[]).await.unwrap();
    let changed = lists();
    w.m.check_firewall().await;
    assert!(lists().0 > changed.0);
    w.m.check_firewall().await;
    let quiet = lists();
    w.nft
        .get()
        .add_foreign_chain("ip", "filter", "FORWARD", Some("forward"), "drop");
    w.m.check_firewall().await;
    assert!(lists().0 > quiet.0);
    assert_eq!(
        w.nft
            .get()
            .foreign_comments("ip", "filter", "FORWARD")
            .len(),
        2,
        "the new firewall's chain has our two rules, for our links' group"
    );
}

#[tokio::test]
async fn an_existing_interface_is_named_and_left_alone() {
    let w = world().await;
    w.links.put("ve-web", false, false);
    let err = w
        .attach("web", 1, NetworkSpec::Veth, &[])
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
    assert_eq!(
        err.message,
        "interface ve-web already exists on the host; is another container using this name?"
    );
    assert!(
        w.links.link("ve-web").is_some(),
        "someone else's link was deleted"
    );
}

#[tokio::test]
async fn a_taken_port_is_refused_before_anything_is_built() {
    let w = world().await;
    w.attach("a", 1, NetworkSpec::Veth, &["8080:80"])
        .await
        .unwrap();
    let before = w.links.calls().len();
    let err = w.attach("b", 2, zone("z"), &["8080:81"]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
    assert!(
        err.message.contains("already published by machine a"),
        "{}",
        err.message
    );
    let built: Vec<String> = w.links.calls()[before..]
        .iter()
        .filter(|c| c.starts_with("add"))
        .cloned()
        .collect();
    assert!(built.is_empty(), "{built:?}");
    let dup = w
        .attach("c", 3, NetworkSpec::Veth, &["9000:80", "9000:81"])
        .await
        .unwrap_err();
    assert_eq!(dup.kind, ErrorKind::BadRequest);
}

#[tokio::test]
async fn a_zone_comes_with_its_first_member_and_goes_with_its_last() {
    let w = world().await;
    let a = w.attach("a", 1, zone("lab"), &[]).await.unwrap();
    let b = w.attach("b", 2, zone("lab"), &[]).await.unwrap();
    assert_ne!(a.container_address, b.container_address);
    let bridge = w.links.link("vz-lab").unwrap();
    assert!(bridge.bridge && bridge.up);
    assert_eq!(w.links.link("vb-a").unwrap().master, Some(bridge.index));
    assert_eq!(w.leases.lease_count(bridge.index), 2);
    w.m.detach(&MachineName::new("a").unwrap()).await.unwrap();
    assert!(w.links.link("vz-lab").is_some(), "the zone still has b");
    assert_eq!(w.leases.lease_count(bridge.index), 1, "a's lease released");
    w.m.detach(&MachineName::new("b").unwrap()).await.unwrap();
    // The links go in the background, after the answer.
    w.m.deleted("vb-b").await;
    w.m.deleted("vz-lab").await;
    assert!(w.links.link("vz-lab").is_none());
    assert!(w.leases.served().is_empty());
    assert!(!w.nft.get().table_exists());
    assert!(w.m.zone_list().await.is_empty());
    // An explicit zone stays without members.
    let cfg = ZoneConfig::implicit(ZoneName::new("keep").unwrap());
    w.m.zone_create(cfg).await.unwrap();
    w.attach("c", 3, zone("keep"), &[]).await.unwrap();
    w.m.detach(&MachineName::new("c").unwrap()).await.unwrap();
    assert!(w.links.link("vz-keep").is_some());
    let refused =
        w.m.zone_create(ZoneConfig::implicit(ZoneName::new("keep").unwrap()))
            .await;
    assert_eq!(refused.unwrap_err().kind, ErrorKind::AlreadyExists);
}

#[tokio::test]
async fn a_first_member_that_fails_takes_its_new_zone_with_it() {
    let w = world().await;
    w.links.fail_next("set_master_up", libc::EIO);
    assert!(w.attach("a", 1, zone("lab"), &[]).await.is_err());
    assert!(w.links.names().is_empty(), "left {:?}", w.links.names());
    assert!(w.leases.served().is_empty());
    assert!(w.m.zone_list().await.is_empty());
    assert!(!w.nft.get().table_exists());
    // The zone's subnet went back to the pool.
    assert!(w.m.registry.lock().await.zones.subnets().is_empty());
    w.attach("b", 2, zone("lab"), &[]).await.unwrap();
}

#[tokio::test]
async fn an_address_leased_meanwhile_fails_the_attach_cleanly() {
    let w = world().await;
    w.attach("a", 1, zone("lab"), &[]).await.unwrap();
    // A DHCP client takes the address planned for b between the look and the lease.
    w.leases.steal_next_record();
    let err = w.attach("b", 2, zone("lab"), &[]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::PoolExhausted);
    assert!(
        err.message
            .contains("was leased to another client meanwhile"),
        "{}",
        err.message
    );
    assert!(w.links.link("vb-b").is_none(), "b's port was left");
    assert!(
        w.links.link("vz-lab").is_some(),
        "a's zone went with b's failure"
    );
    assert_eq!(w.m.list().await.len(), 1);
    // Trying again works.
    w.attach("b", 2, zone("lab"), &[]).await.unwrap();
}

#[tokio::test]
async fn a_link_whose_deletion_failed_is_deleted_again_by_the_next_attach_of_its_name() {
    let w = world().await;
    w.attach("a", 1, NetworkSpec::Veth, &["8080:80"])
        .await
        .unwrap();
    w.links.fail_next("del_link", libc::EBUSY);
    let name = MachineName::new("a").unwrap();
    // The answer comes before the link's deletion, which fails afterwards.
    w.m.detach(&name).await.unwrap();
    assert!(w.m.list().await.is_empty());
    while w.m.deleting.lock().unwrap().contains_key("ve-a") {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert!(
        w.links.link("ve-a").is_some(),
        "the failed deletion left it"
    );
    assert!(w.m.undeleted.lock().unwrap().contains("ve-a"));
    assert!(
        w.nft.get().elements("ports4_port").is_empty(),
        "its port went before the answer"
    );
    // The next attach of the name deletes it first, then makes it anew.
    let before = w.links.link("ve-a").unwrap().index;
    w.attach("a", 2, NetworkSpec::Veth, &[]).await.unwrap();
    assert_ne!(w.links.link("ve-a").unwrap().index, before);
    let name_again = MachineName::new("a").unwrap();
    w.m.detach(&name_again).await.unwrap();
    w.m.deleted("ve-a").await;
    assert!(w.links.names().is_empty());
}

#[tokio::test]
async fn a_container_that_exits_is_cleaned_up_by_its_pidfd() {
    let w = world().await;
    w.attach("a", 1, NetworkSpec::Veth, &[]).await.unwrap();
    w.procs.exit(1);
    for _ in 0..200 {
        if w.m.list().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(w.m.list().await.is_empty());
    assert!(w.links.names().is_empty());
}

#[tokio::test]
async fn a_run_right_after_an_exit_takes_the_name_and_ports_before_the_watch_runs() {
    // The launcher does not wait for the teardown: the next run of the same name (or one
    // publishing the same port) may come before the pidfd watch has had the registry's lock.
    let w = world().await;
    w.attach("a", 1, NetworkSpec::Veth, &["8080:80"])
        .await
        .unwrap();
    w.attach("b", 2, NetworkSpec::Veth, &["9090:90"])
        .await
        .unwrap();
    w.procs.exit(1);
    w.procs.exit(2);
    let again = w
        .attach("a", 3, NetworkSpec::Veth, &["8080:80"])
        .await
        .unwrap();
    assert_eq!(again.pid, 3);
    let c = w
        .attach("c", 4, NetworkSpec::Veth, &["9090:90"])
        .await
        .unwrap();
    assert_eq!(c.ports.len(), 1);
    let mut names: Vec<String> =
        w.m.list()
            .await
            .iter()
            .map(|m| m.machine.to_string())
            .collect();
    names.sort();
    assert_eq!(names, ["a", "c"]);
    // The old watches were aborted with their machines: the new ones stay.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(w.m.list().await.len(), 2);
    assert!(w.links.link("ve-a").is_some() && w.links.link("ve-b").is_none());

    // A machine whose process still runs keeps its name and ports.
    let err = w.attach("a", 5, NetworkSpec::Veth, &[]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
    let err = w
        .attach("d", 6, NetworkSpec::Veth, &["8080:80"])
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
}

#[tokio::test]
async fn stop_signals_the_process_through_its_pidfd() {
    let w = world().await;
    w.attach("a", 41, NetworkSpec::Veth, &[]).await.unwrap();
    w.m.stop(&MachineName::new("a").unwrap()).await.unwrap();
    assert_eq!(w.procs.signals(), [(41, libc::SIGTERM)]);
    // A systemd init is asked with SIGRTMIN+3 (SIGTERM would make it re-execute); whatever
    // has not ended after the timeout gets SIGKILL.
    let mut r = req("sd", 42, NetworkSpec::Veth, &[]);
    r.init = crate::api::InitKind::Systemd;
    let netns = w.procs.spawn(42, 420);
    w.m.attach(r, netns).await.unwrap();
    let sd = MachineName::new("sd").unwrap();
    w.m.stop_within(&sd, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(w.procs.signals()[1..], [(42, libc::SIGRTMIN() + 3)]);
    for _ in 0..400 {
        if w.procs.signals().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        w.procs.signals()[1..],
        [(42, libc::SIGRTMIN() + 3), (42, libc::SIGKILL)]
    );
    let err =
        w.m.stop(&MachineName::new("nope").unwrap())
            .await
            .unwrap_err();
    assert_eq!(err.message, "no machine nope is attached");
}

#[tokio::test]
async fn a_restart_adopts_the_living_removes_the_dead_and_what_nothing_explains() {
    let mut w = world().await;
    w.attach("a", 1, NetworkSpec::Veth, &["8080:80"])
        .await
        .unwrap();
    w.attach("b", 2, zone("lab"), &[]).await.unwrap();
    w.attach("c", 3, NetworkSpec::Veth, &[]).await.unwrap();
    let before = w.m.list().await;
    // While rnetd is down: c ends, a bridge of ours appears that nothing explains, and a
    // look-alike that is not ours.
    w.procs.exit(3);
    w.links.put("vz-ghost", true, true);
    w.links.put("ve-nspawn", false, false);
    w.restart().await;
    let after = w.m.list().await;
    assert_eq!(after.len(), 2);
    assert_eq!(after, before[..2].to_vec(), "the same view");
    let names = w.links.names();
    assert_eq!(names, ["vb-b", "ve-a", "ve-nspawn", "vz-lab"]);
    assert!(w.nft.get().table_exists());
    assert_eq!(w.nft.get().elements("ifaces").len(), 2);
    // c's subnet (the second) is free again; a's is not.
    let d = w.attach("d", 4, NetworkSpec::Veth, &[]).await.unwrap();
    assert_eq!(d.subnet, before[2].subnet, "{d:?}");
}

#[tokio::test]
async fn a_restart_after_the_journal_was_compacted_has_the_same_view() {
    let mut w = world().await;
    let mut pid = 0;
    // Eight rounds of ten attaches (two in an implicit zone that comes and goes) and, but in
    // the last round, ten detaches: ~150 journal lines for at most ten machines.
    for round in 0..8 {
        for i in 0..10 {
            pid += 1;
            let network = if i % 5 == 0 {
                zone("lab")
            } else {
                NetworkSpec::Veth
            };
            w.attach(&format!("m{i}"), pid, network, &[]).await.unwrap();
        }
        if round < 7 {
            for i in 0..10 {
                let name = MachineName::new(&format!("m{i}")).unwrap();
                w.m.detach(&name).await.unwrap();
            }
        }
    }
    let before = w.m.list().await;
    let zones = w.m.zone_list().await;
    w.m.shutdown().await; // waits for a compaction in progress
    let run = w.dir.path().join("run");
    let journals: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".journal"))
        .collect();
    assert_eq!(journals.len(), 1, "{journals:?}");
    assert_ne!(journals[0], "state.1.journal", "never compacted");
    w.restart().await;
    assert_eq!(w.m.list().await, before);
    assert_eq!(w.m.zone_list().await, zones);
    assert_eq!(before.len(), 10);
}

#[tokio::test]
async fn a_restart_after_the_last_member_of_a_zone_ended_removes_the_zone_but_keeps_forwarding() {
    let mut w = world().await;
    w.attach("a", 1, NetworkSpec::Veth, &[]).await.unwrap();
    w.attach("b", 2, zone("lab"), &[]).await.unwrap();
    w.procs.exit(2);
    w.restart().await;
    assert!(w.links.link("vz-lab").is_none());
    assert!(w.m.zone_list().await.is_empty());
    assert_eq!(w.forwarding(), "1", "a still needs forwarding");
    assert!(w.nft.get().table_exists());
}

#[test]
fn plan_restart_decides_from_saved_state_and_observations() {
    use crate::state::{SavedMachine, SavedZone, State};
    let machine = |name: &str, network: NetworkSpec, ifname: &str| SavedMachine {
        machine: crate::api::Machine {
            machine: MachineName::new(name).unwrap(),
            pid: 1,
            network,
            host_ifname: Some(ifname.into()),
            host_altname: None,
            container_ifname: Some("host0".into()),
            host_mac: None,
            container_mac: None,
            subnet: None,
            host_address: None,
            container_address: None,
            subnet6: None,
            host_address6: None,
            container_address6: None,
            dns: Vec::new(),
            ports: Vec::new(),
            links: Vec::new(),
            teardown_errors: Vec::new(),
            host_firewall: Vec::new(),
            held: None,
        },
        pid_start_time: 1,
        held_ns: None,
        init: crate::api::InitKind::Other,
    };
    let mut lab = ZoneConfig::implicit(ZoneName::new("lab").unwrap());
    lab.subnet = Some("10.0.0.0/24".parse().unwrap());
    let mut gone = ZoneConfig::implicit(ZoneName::new("gone").unwrap());
    gone.subnet = Some("10.0.1.0/24".parse().unwrap());
    let saved = State {
        machines: vec![
            machine("alive", NetworkSpec::Veth, "ve-alive"),
            machine("dead", NetworkSpec::Veth, "ve-dead"),
            machine("nolink", NetworkSpec::Veth, "ve-nolink"),
            machine("member", zone("lab"), "vb-member"),
            machine("orphan", zone("gone"), "vb-orphan"),
        ],
        zones: vec![
            SavedZone {
                config: lab.clone(),
                explicit: false,
            },
            SavedZone {
                config: gone.clone(),
                explicit: false,
            },
        ],
        ..State::default()
    };
    let mut seen = RestartObserved::default();
    for n in ["alive", "nolink", "member", "orphan"] {
        seen.alive.insert(MachineName::new(n).unwrap(), true);
    }
    seen.alive.insert(MachineName::new("dead").unwrap(), false);
    for (l, i) in [
        ("ve-alive", 1),
        ("ve-dead", 2),
        ("vb-member", 3),
        ("vb-orphan", 4),
        ("vz-lab", 5),
    ] {
        seen.links.insert(l.into(), i);
    }
    let explicit = vec![ZoneConfig::implicit(ZoneName::new("boot").unwrap())];
    let plan = plan_restart(&saved, &explicit, &seen);
    let names = |v: &[crate::state::SavedMachine]| -> Vec<String> {
        v.iter().map(|s| s.machine.machine.to_string()).collect()
    };
    let adopted: Vec<_> = plan
        .adopt
        .iter()
        .map(|(s, i)| (s.machine.machine.to_string(), *i))
        .collect();
    assert_eq!(
        adopted,
        [("alive".to_string(), 1), ("member".to_string(), 3)]
    );
    assert_eq!(names(&plan.stale), ["dead", "nolink", "orphan"]);
    assert_eq!(plan.adopt_zones, [(lab, 5, false)]);
    assert_eq!(plan.rebuild_zones.len(), 1);
    assert_eq!(plan.rebuild_zones[0].name.as_str(), "boot");
}

/// Every failing step of an explicit zone's creation leaves nothing: no bridge, no server, no
/// table, the subnet free, the zone not listed.
#[tokio::test]
async fn every_failed_step_of_a_zone_create_is_undone() {
    for op in ["add_bridge", "add_address", "set_up", "serve", "nft"] {
        let w = world().await;
        match op {
            "serve" => w.leases.fail_next_serve(),
            "nft" => {
                w.nft.get().refuse_next("Error: refused");
                w.nft.get().refuse_next("Error: refused again");
            }
            _ => w.links.fail_next(op, libc::EIO),
        }
        let cfg = ZoneConfig::implicit(ZoneName::new("lab").unwrap());
        let err = w.m.zone_create(cfg).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal, "{op}: {err:?}");
        assert!(
            w.links.names().is_empty(),
            "{op}: left {:?}",
            w.links.names()
        );
        assert!(w.leases.served().is_empty(), "{op}");
        assert!(!w.nft.get().table_exists(), "{op}");
        assert!(w.m.zone_list().await.is_empty(), "{op}");
        assert!(w.m.registry.lock().await.zones.subnets().is_empty(), "{op}");
    }
}

#[tokio::test]
async fn a_bridge_port_that_cannot_join_is_undone_and_a_missing_bridge_is_named() {
    let w = world().await;
    let err = w
        .attach("a", 1, NetworkSpec::Bridge("br0".into()), &[])
        .await
        .unwrap_err();
    assert_eq!(err.message, "bridge br0 does not exist");
    w.links.put("eth9", false, false);
    let err = w
        .attach("a", 1, NetworkSpec::Bridge("eth9".into()), &[])
        .await
        .unwrap_err();
    assert_eq!(err.message, "eth9 is not a bridge");
    w.links.put("br0", true, false);
    w.links.fail_next("set_master_up", libc::EIO);
    assert!(
        w.attach("b", 2, NetworkSpec::Bridge("br0".into()), &[])
            .await
            .is_err()
    );
    assert_eq!(w.links.names(), ["br0", "eth9"], "the port was left");
    assert!(!w.nft.get().bridge_table_exists(), "its MAC guard was left");
    let m = w
        .attach("c", 3, NetworkSpec::Bridge("br0".into()), &[])
        .await
        .unwrap();
    assert_eq!(
        w.links.link("vb-c").unwrap().master,
        w.links.link("br0").map(|l| l.index)
    );
    assert!(
        m.container_address.is_none(),
        "no address from us on an admin's bridge"
    );
}

#[tokio::test]
async fn an_isolated_zone_port_that_cannot_be_isolated_is_undone() {
    let w = world().await;
    let mut cfg = ZoneConfig::implicit(ZoneName::new("iso").unwrap());
    cfg.isolated = true;
    w.m.zone_create(cfg).await.unwrap();
    w.links.fail_next("set_port_isolated", libc::EOPNOTSUPP);
    assert!(w.attach("a", 1, zone("iso"), &[]).await.is_err());
    assert!(w.links.link("vb-a").is_none());
    let index = w.links.link("vz-iso").unwrap().index;
    assert_eq!(w.leases.lease_count(index), 0, "its lease was left");
    w.attach("b", 2, zone("iso"), &[]).await.unwrap();
    assert!(w.links.link("vb-b").unwrap().isolated);
}

/// A held attach of `name` (owner `netns/NAME`) whose namespace is the file `path`.
async fn attach_held(
    w: &World,
    name: &str,
    path: &std::path::Path,
) -> Result<crate::api::Machine, crate::api::ApiError> {
    std::fs::write(path, b"").unwrap();
    let fd = std::fs::File::open(path).unwrap().into();
    let mut r = req(name, 0, NetworkSpec::Veth, &["8080:80"]);
    r.held = Some(crate::api::Holder {
        owner: format!("netns/{name}"),
        netns: path.to_owned(),
    });
    w.m.attach(r, fd).await
}

#[tokio::test]
async fn a_held_attachment_has_no_process_and_lives_until_released() {
    let w = world().await;
    let path = w.dir.path().join("ns-a");
    let m = attach_held(&w, "a", &path).await.unwrap();
    assert_eq!(m.pid, 0);
    assert_eq!(m.held.as_ref().unwrap().owner, "netns/a");
    assert_eq!(w.links.names(), ["ve-a"]);
    // A second attachment for the same owner is refused and changes nothing.
    let path2 = w.dir.path().join("ns-a2");
    std::fs::write(&path2, b"").unwrap();
    let mut r = req("a2", 0, NetworkSpec::Veth, &[]);
    r.held = m.held.clone().map(|mut h| {
        h.netns = path2.clone();
        h
    });
    let err =
        w.m.attach(r, std::fs::File::open(&path2).unwrap().into())
            .await
            .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
    assert_eq!(
        err.message,
        "netns/a is already attached (as machine a); release it first"
    );
    // Stop has no process to signal.
    assert!(w.m.stop(&MachineName::new("a").unwrap()).await.is_err());
    // Release, then again: nothing held is not an error.
    let released = w.m.release("netns/a").await.unwrap();
    assert_eq!(released, [MachineName::new("a").unwrap()]);
    assert!(w.m.release("netns/a").await.unwrap().is_empty());
    assert!(w.links.names().is_empty());
    assert!(!w.nft.get().table_exists());
}

#[tokio::test]
async fn a_held_attach_must_name_its_namespace_and_no_pid() {
    let w = world().await;
    let path = w.dir.path().join("ns");
    std::fs::write(&path, b"").unwrap();
    let other = w.dir.path().join("other");
    std::fs::write(&other, b"").unwrap();
    let holder = crate::api::Holder {
        owner: "cni/n/c1/eth0".into(),
        netns: path.clone(),
    };
    let mut r = req("c1", 7, NetworkSpec::Veth, &[]);
    r.held = Some(holder.clone());
    let err =
        w.m.attach(r.clone(), std::fs::File::open(&path).unwrap().into())
            .await
            .unwrap_err();
    assert_eq!(
        err.message,
        "an attachment held for cni/n/c1/eth0 has no process: pid must be 0, not 7"
    );
    r.pid = 0;
    let err =
        w.m.attach(r.clone(), std::fs::File::open(&other).unwrap().into())
            .await
            .unwrap_err();
    assert_eq!(
        err.message,
        format!(
            "the passed fd is not the network namespace at {}",
            path.display()
        )
    );
    r.held = Some(crate::api::Holder {
        netns: w.dir.path().join("missing"),
        ..holder
    });
    let err =
        w.m.attach(r, std::fs::File::open(&path).unwrap().into())
            .await
            .unwrap_err();
    assert!(
        err.message.starts_with("cannot open network namespace "),
        "{}",
        err.message
    );
    assert!(w.m.list().await.is_empty());
    assert!(w.links.names().is_empty());
}

#[tokio::test]
async fn a_restart_adopts_held_attachments_whose_namespace_is_still_there() {
    let mut w = world().await;
    let (pa, pb) = (w.dir.path().join("ns-a"), w.dir.path().join("ns-b"));
    attach_held(&w, "a", &pa).await.unwrap();
    attach_held(&w, "b", &pb).await.unwrap_err(); // port 8080 is a's
    let mut r = req("b", 0, NetworkSpec::Veth, &[]);
    r.held = Some(crate::api::Holder {
        owner: "netns/b".into(),
        netns: pb.clone(),
    });
    w.m.attach(r, std::fs::File::open(&pb).unwrap().into())
        .await
        .unwrap();
    // While rnetd is down, b's namespace goes.
    std::fs::remove_file(&pb).unwrap();
    w.restart().await;
    let names: Vec<String> =
        w.m.list()
            .await
            .iter()
            .map(|m| m.machine.to_string())
            .collect();
    assert_eq!(names, ["a"]);
    assert_eq!(w.links.names(), ["ve-a"]);
    // GC-like release: everything of the prefix but what is kept.
    assert!(
        w.m.release_except("netns/", &["netns/a".into()])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        w.m.release_except("netns/", &[]).await.unwrap(),
        [MachineName::new("a").unwrap()]
    );
    assert!(w.links.names().is_empty());
}

fn ipv6_knob(w: &World, link: &str, knob: &str) -> String {
    std::fs::read_to_string(w.dir.path().join("sys/net/ipv6/conf").join(link).join(knob)).unwrap()
}

#[tokio::test]
async fn ipv6_veth_gets_a_64_its_eui64_address_adverts_masquerade_and_forwarding() {
    let w = world6().await;
    let m = w
        .attach("web", 100, NetworkSpec::Veth, &["8080:80"])
        .await
        .unwrap();
    let net6 = "fd00:7:7:1::/64";
    assert_eq!(m.subnet6, Some(net6.parse().unwrap()));
    assert_eq!(m.host_address6, Some("fd00:7:7:1::1".parse().unwrap()));
    let mac = super::plan::parse_mac(m.container_mac.as_deref().unwrap()).unwrap();
    assert_eq!(
        m.container_address6,
        Some(crate::ipv6::eui64(net6.parse().unwrap(), mac))
    );
    let link = w.links.link("ve-web").unwrap();
    assert_eq!(link.addrs6, vec!["fd00:7:7:1::1/64".parse().unwrap()]);
    let ads = w.ipv6.adverts();
    assert_eq!(ads.len(), 1);
    assert_eq!(ads[0].ifname, "ve-web");
    assert_eq!(ads[0].prefix, net6.parse().unwrap());
    assert_eq!(
        ads[0].dns,
        vec!["fd00:7:7:1::1".parse::<std::net::Ipv6Addr>().unwrap()]
    );
    // Both families masqueraded and published; ::1 relayed to the IPv6 address.
    let masq6 = format!("{:?}", w.nft.get().elements("masq6_64"));
    assert!(masq6.contains("fd00:7:7:1::"), "{masq6}");
    let ports6 = format!("{:?}", w.nft.get().elements("ports6_addr"));
    assert!(
        ports6.contains(&m.container_address6.unwrap().to_string()),
        "{ports6}"
    );
    assert!(!format!("{:?}", w.nft.get().elements("ports4_addr")).is_empty());
    assert_eq!(
        w.ipv6.relays(),
        vec![(
            PortSpec::from_str("8080:80").unwrap(),
            std::net::IpAddr::V6(m.container_address6.unwrap())
        )]
    );
    assert_eq!(ipv6_knob(&w, "all", "forwarding"), "1");
    assert_eq!(ipv6_knob(&w, "eth0", "accept_ra"), "2");
    // A second machine gets the next /64.
    let m2 = w.attach("db", 101, NetworkSpec::Veth, &[]).await.unwrap();
    assert_eq!(m2.subnet6, Some("fd00:7:7:2::/64".parse().unwrap()));
    // Everything goes with the machines; forwarding and accept_ra come back.
    w.m.detach(&MachineName::new("web").unwrap()).await.unwrap();
    assert!(w.ipv6.relays().is_empty());
    assert_eq!(w.ipv6.adverts().len(), 1);
    w.m.detach(&MachineName::new("db").unwrap()).await.unwrap();
    assert!(w.ipv6.adverts().is_empty());
    assert!(!w.nft.get().table_exists());
    assert_eq!(ipv6_knob(&w, "all", "forwarding"), "0");
    assert_eq!(ipv6_knob(&w, "eth0", "accept_ra"), "1");
}

#[tokio::test]
async fn ipv6_ports_per_family_and_loopback_relay_only() {
    let w = world6().await;
    let m = w
        .attach(
            "web",
            100,
            NetworkSpec::Veth,
            &[
                "[::1]:9000:90",
                "[2001:db8::2]:9001:91",
                "203.0.113.2:9002:92",
            ],
        )
        .await
        .unwrap();
    let a6 = m.container_address6.unwrap().to_string();
    let bound6 = format!("{:?}", w.nft.get().elements("bound6_addr"));
    assert!(
        bound6.contains("2001:db8::2") && bound6.contains(&a6),
        "{bound6}"
    );
    assert!(!bound6.contains("::1\""), "::1 is not DNATed: {bound6}");
    assert!(w.nft.get().elements("ports6_addr").is_empty());
    let relays = w.ipv6.relays();
    assert_eq!(relays.len(), 1);
    assert_eq!(relays[0].0.to_string(), "tcp:[::1]:9000:90");
}

#[tokio::test]
async fn ipv6_off_for_a_machine_or_for_rnetd() {
    let w = world6().await;
    let mut r = req("web", 100, NetworkSpec::Veth, &["8080:80"]);
    r.ipv6 = false;
    let netns = w.procs.spawn(100, 1000);
    let m = w.m.attach(r, netns).await.unwrap();
    assert_eq!((m.subnet6, m.container_address6), (None, None));
    assert!(w.ipv6.adverts().is_empty());
    // ::1 is still relayed, to the IPv4 address.
    assert_eq!(
        w.ipv6.relays()[0].1,
        std::net::IpAddr::V4(m.container_address.unwrap())
    );
    // A port on an IPv6 address needs one.
    let err = w
        .attach("db", 101, NetworkSpec::Veth, &[])
        .await
        .map(|m| m.subnet6.is_some());
    assert_eq!(err, Ok(true));
    let mut r = req("x", 102, NetworkSpec::Veth, &["[2001:db8::2]:80"]);
    r.ipv6 = false;
    let netns = w.procs.spawn(102, 1020);
    let err = w.m.attach(r, netns).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert!(
        err.message.contains("gets no IPv6 address"),
        "{}",
        err.message
    );
    // rnetd without IPv6: nothing of it.
    let w = world().await;
    let m = w.attach("web", 100, NetworkSpec::Veth, &[]).await.unwrap();
    assert_eq!(m.subnet6, None);
    assert!(w.links.link("ve-web").unwrap().addrs6.is_empty());
}

#[tokio::test]
async fn ipv6_zone_and_member_and_restart_keeps_the_64s() {
    let mut w = world6().await;
    let a = w.attach("a", 100, zone("lab"), &[]).await.unwrap();
    let v = w.attach("v", 101, NetworkSpec::Veth, &[]).await.unwrap();
    let z = w.m.zone_list().await;
    let net6 = z[0].subnet6.unwrap();
    assert_eq!(z[0].address6, Some(crate::ipv6::gateway6(net6)));
    assert_eq!(a.subnet6, Some(net6));
    assert_eq!(a.host_address6, z[0].address6);
    let bridge = w.links.link("vz-lab").unwrap();
    assert_eq!(bridge.addrs6.len(), 1);
    let ads: Vec<String> = w.ipv6.adverts().into_iter().map(|l| l.ifname).collect();
    assert_eq!(ads, ["ve-v", "vz-lab"]);
    w.restart().await;
    let listed = w.m.list().await;
    let after: Vec<_> = listed.iter().map(|m| m.subnet6).collect();
    assert_eq!(after, [a.subnet6, v.subnet6]);
    assert_eq!(w.m.zone_list().await[0].subnet6, Some(net6));
    assert_eq!(w.ipv6.adverts().len(), 2);
    // A new link after the restart does not take an adopted /64.
    let n = w.attach("n", 102, NetworkSpec::Veth, &[]).await.unwrap();
    assert!(n.subnet6 != a.subnet6 && n.subnet6 != v.subnet6);
}

#[tokio::test]
async fn a_port_a_host_service_has_on_loopback_is_not_relayed_but_the_attach_goes_on() {
    let w = world6().await;
    w.ipv6.fail_next_relay();
    let m = w
        .attach("web", 100, NetworkSpec::Veth, &["22:22", "8080:80"])
        .await
        .unwrap();
    let relayed: Vec<String> = w.ipv6.relays().iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(relayed, ["tcp:8080:80"]);
    // Still published on every other address, both families.
    assert_eq!(w.nft.get().elements("ports6_addr").len(), 2);
    w.m.detach(&m.machine).await.unwrap();
    assert!(w.ipv6.relays().is_empty());
}
