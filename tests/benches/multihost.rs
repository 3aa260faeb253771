//! The benchmark of zones across hosts (issue 16, item 4), on the multi-host rig
//! (`tests/src/multihost.rs`: three hosts on an underlay bridge, a three-member etcd cluster):
//!
//! - `member start`: a whole `rnet run --network-zone=Z -- true` on host 0, Z distributed
//!   (joined by all three hosts) vs Z local, `RNET_BENCH_RUNS` times each (default 15),
//!   alternating;
//! - `iperf3`: one TCP stream for 3 s between members of the zone on hosts 0 and 1 (VXLAN,
//!   routed through both hosts) vs between the two hosts' own underlay addresses (the plain veth
//!   underlay);
//! - `converge`: 50 simulated hosts' keys written to etcd, then host 2 joins: the time from its
//!   `zone create` until its `vx-` device has a route for all 52 other hosts.
//!
//! `cargo bench -p rnet-tests --bench multihost` (as root, with etcd and iperf3 installed).
//! Prints the figures, then one JSON line (`{"bench":"multihost",...}`); asserts nothing.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rig::multihost::{MultiHost, available};
use rig::{in_pid_netns, ok, output, percentile, wait_until};

fn runs() -> usize {
    std::env::var("RNET_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// Gbit/s of one iperf3 client run (JSON), from `client` to `server_addr`.
fn iperf(client: &mut Command, server_addr: &str) -> f64 {
    let out: Output = output(client.args(["-c", server_addr, "-t", "3", "-J"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 gave no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

fn main() {
    if !available("bench multihost") {
        return;
    }
    if Command::new("iperf3").arg("--version").output().is_err() {
        eprintln!("SKIP bench multihost: needs iperf3");
        return;
    }
    let mut mh = MultiHost::new(3, 3);
    for i in 0..3 {
        mh.start_rnetd(i, 10);
    }
    for h in &mh.hosts {
        ok(h.rnet().args([
            "zone",
            "create",
            "web",
            "--distributed",
            "--subnet",
            "10.77.0.0/16",
        ]));
    }
    ok(mh.hosts[0].rnet().args(["zone", "create", "loc"]));

    // Member start, alternating distributed and local.
    let (mut dist, mut local) = (Vec::new(), Vec::new());
    for n in 0..runs() {
        for (zone, out) in [("web", &mut dist), ("loc", &mut local)] {
            out.push(timed(mh.hosts[0].rnet().args([
                "run",
                &format!("--network-zone={zone}"),
                "-M",
                &format!("b{zone}{n}"),
                "--",
                "true",
            ])));
        }
    }

    // iperf3: members on hosts 0 and 1, then the hosts over the plain underlay.
    let mut sleeper = |host: usize, name: &str| -> (u64, String) {
        let h = &mut mh.hosts[host];
        h.spawn_ready(
            h.rnet()
                .args(["run", "--network-zone=web", "-M", name, "--"])
                .args(["sh", "-c", "echo READY && exec sleep 3600"]),
        );
        let m = h.wait_machine(name);
        (
            m["pid"].as_u64().unwrap(),
            m["container_address"].as_str().unwrap().to_owned(),
        )
    };
    let (srv_pid, srv_addr) = sleeper(1, "srv");
    let (client_pid, _) = sleeper(0, "cli");
    let mut server = in_pid_netns(srv_pid, "iperf3")
        .args(["-s", "-1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let vxlan = iperf(&mut in_pid_netns(client_pid, "iperf3"), &srv_addr);
    let _ = server.kill();
    let _ = server.wait();
    let mut plain_server = mh.hosts[1]
        .in_host("iperf3")
        .args(["-s", "-1", "-B", &MultiHost::host_addr(1)])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let plain = iperf(&mut mh.hosts[0].in_host("iperf3"), &MultiHost::host_addr(1));
    let _ = plain_server.kill();
    let _ = plain_server.wait();

    // Convergence: 50 simulated hosts in etcd, then host 2 joins zone "big".
    ok(mh.hosts[0].rnet().args([
        "zone",
        "create",
        "big",
        "--distributed",
        "--subnet",
        "10.88.0.0/16",
    ]));
    for n in 0..50u32 {
        let record = format!(
            r#"{{"underlay":"198.51.100.{}","vtep_mac":"02:00:00:00:01:{:02x}","slice":"10.88.{}.0/24"}}"#,
            100 + n,
            n,
            100 + n
        );
        ok(mh
            .etcdctl()
            .args(["put", &format!("/rnet/zones/big/hosts/sim{n}"), &record]));
    }
    let t = Instant::now();
    ok(mh.hosts[2]
        .rnet()
        .args(["zone", "create", "big", "--distributed"]));
    let joined = t.elapsed();
    let host2 = &mh.hosts[2];
    let converged = wait_until(Duration::from_secs(60), || {
        ok(host2.in_host("ip").args(["route", "show", "dev", "vx-big"]))
            .lines()
            .count()
            >= 51
    });
    let converge = t.elapsed();
    assert!(converged, "host 2 never had 51 routes on vx-big");

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (d50, d90) = (percentile(&mut dist, 50), percentile(&mut dist, 90));
    let (l50, l90) = (percentile(&mut local, 50), percentile(&mut local, 90));
    println!(
        "zones across hosts, 3 hosts, 3 etcd members, {} runs",
        runs()
    );
    println!(
        "member start (rnet run -- true)  distributed p50 {:.1} ms p90 {:.1} ms | local p50 {:.1} ms p90 {:.1} ms",
        ms(d50),
        ms(d90),
        ms(l50),
        ms(l90)
    );
    println!(
        "iperf3 one TCP stream            members over VXLAN {vxlan:.2} Gbit/s | plain underlay {plain:.2} Gbit/s"
    );
    println!(
        "join with 50 other hosts in etcd zone create {:.1} ms, all 51 routes after {:.1} ms",
        ms(joined),
        ms(converge)
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "multihost",
            "runs": runs(),
            "member_start_ms": {"distributed": {"p50": ms(d50), "p90": ms(d90)},
                                "local": {"p50": ms(l50), "p90": ms(l90)}},
            "iperf3_gbit": {"vxlan": vxlan, "underlay": plain},
            "join_50_ms": {"create": ms(joined), "converged": ms(converge)},
        })
    );
}
