//! Attach cost as the number of live containers grows (issue: "it should stay flat").
//!
//! `cargo bench -p rnet-tests --bench attach` (as root). For 1, 10 and 100 live containers
//! (each publishing one port) it measures, with 0, 1 and 20 published ports:
//! - `attach`: one Attach request to rnetd (links, address, firewall elements), from the API;
//! - `run`: a whole `rnet run -n -- true` (fork, namespaces, attach, configure, exec, detach).
//!
//! Prints medians of several runs. A figure printer, not a timed test.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netd::api::{AttachRequest, Client, MachineName, NetworkSpec, PortSpec, Request};
use rig::{Rig, ok, privileged, wait_until};

const RUNS: usize = 9;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ports(n: usize, base: u16) -> Vec<String> {
    (0..n).map(|i| format!("{}:80", base + i as u16)).collect()
}

fn main() {
    if !privileged("bench attach") {
        return;
    }
    println!("attach cost vs live containers (median of {RUNS} runs)");
    println!(
        "{:>6} {:>6} {:>12} {:>12}",
        "live", "ports", "attach", "rnet run"
    );
    for live in [1usize, 10, 100] {
        let mut rig = Rig::new();
        rig.start_rnetd();
        for i in 0..live {
            let name = format!("bg{i}");
            let port = format!("{}:80", 10000 + i);
            rig.spawn(
                rig.rnet()
                    .args(["run", "-n", "-M", &name, "-p", &port, "--", "sleep", "3600"]),
            );
        }
        let up = wait_until(Duration::from_secs(120), || rig.machines().len() == live);
        assert!(
            up,
            "only {} of {live} containers came up",
            rig.machines().len()
        );
        let client = Client::new(&rig.runtime_dir());
        for nports in [0usize, 1, 20] {
            let mut attach = Vec::new();
            let mut run = Vec::new();
            for r in 0..RUNS {
                // API attach of a fresh namespace held by a sleeping process.
                let mut holder = Command::new("unshare")
                    .args(["--net", "sleep", "60"])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap();
                let pid = holder.id();
                assert!(wait_until(Duration::from_secs(5), || {
                    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
                        != std::fs::read_link("/proc/self/ns/net").ok()
                }));
                let ns = File::open(format!("/proc/{pid}/ns/net")).unwrap();
                let name = MachineName::new(&format!("m{nports}x{r}")).unwrap();
                let specs: Vec<PortSpec> = ports(nports, 20000)
                    .iter()
                    .map(|p| p.parse().unwrap())
                    .collect();
                let req = Request::Attach(AttachRequest {
                    machine: name.clone(),
                    pid,
                    network: NetworkSpec::Veth,
                    ports: specs,
                    links: vec![],
                    ipv6: true,
                });
                let t = Instant::now();
                client.call(&req, Some(ns.as_fd())).expect("attach");
                attach.push(t.elapsed());
                client
                    .call(&Request::Detach { machine: name }, None)
                    .expect("detach");
                holder.kill().unwrap();
                holder.wait().unwrap();

                // A whole launcher run.
                let mut cmd = rig.rnet();
                cmd.args(["run", "-n"]);
                for p in ports(nports, 30000) {
                    cmd.args(["-p", &p]);
                }
                cmd.args(["--", "true"]);
                let t = Instant::now();
                ok(&mut cmd);
                run.push(t.elapsed());
            }
            println!(
                "{:>6} {:>6} {:>10.2}ms {:>10.2}ms",
                live,
                nports,
                median(attach).as_secs_f64() * 1e3,
                median(run).as_secs_f64() * 1e3
            );
        }
        drop(rig);
    }
}
