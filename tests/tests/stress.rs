//! Reliability under real use: DHCP traffic while containers come and go, and many launches at
//! once. These are the tests that would have caught rnetd's deadlock (DHCP packets and an
//! attach taking the DHCP locks in opposite orders): a watchdog fails the test, with rnetd's
//! thread stacks, when any request stays unanswered for more than a second.
//!
//! The deadlines here are hang detectors, not speed targets (those live in the benchmarks).

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netd::api::Request;
use rig::{
    HOST_ADDR, Rig, UPLINK_ADDR, dump_stacks, in_pid_netns, netprobe, ok, percentile, privileged,
    proc_status_kib, tail, wait_until,
};

/// The tests of this file each load both cores; they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A request to rnetd must be answered within this, or the daemon is taken to hang.
const ANSWER_LIMIT: Duration = Duration::from_secs(1);

/// A whole `rnet run` (two requests, process start, a short payload) must end within this.
const LAUNCH_LIMIT: Duration = Duration::from_secs(5);

/// Operations in flight, watched by a thread that dumps rnetd's stacks and marks the run
/// failed when one outlives its limit.
struct Watchdog {
    inflight: Mutex<BTreeMap<u64, (String, Instant, Duration)>>,
    next: AtomicU64,
    stalls: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Watchdog {
    fn start(rnetd: u32) -> Arc<Self> {
        let w = Arc::new(Self {
            inflight: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            stalls: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let me = Arc::clone(&w);
        std::thread::spawn(move || {
            while !me.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                let late: Vec<String> = me
                    .inflight
                    .lock()
                    .unwrap()
                    .values()
                    .filter(|(_, t, limit)| t.elapsed() > *limit)
                    .map(|(what, t, _)| format!("{what} unanswered after {:?}", t.elapsed()))
                    .collect();
                if !late.is_empty() {
                    let mut stalls = me.stalls.lock().unwrap();
                    if stalls.is_empty() {
                        stalls.push(format!("{}\n{}", late.join("\n"), dump_stacks(rnetd)));
                    }
                }
            }
        });
        w
    }

    /// Runs `f` as a watched operation; returns its result and how long it took.
    fn watch<T>(&self, what: &str, limit: Duration, f: impl FnOnce() -> T) -> (T, Duration) {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        self.inflight
            .lock()
            .unwrap()
            .insert(id, (what.to_owned(), start, limit));
        let out = f();
        self.inflight.lock().unwrap().remove(&id);
        (out, start.elapsed())
    }

    fn stalled(&self) -> Option<String> {
        self.stalls.lock().unwrap().first().cloned()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Waits for `child` up to `limit`; kills it and returns `None` when it takes longer.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::Output> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = std::process::Output {
        status: child.wait().ok()?,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    if let Some(mut s) = child.stdout.take() {
        let _ = std::io::Read::read_to_end(&mut s, &mut out.stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = std::io::Read::read_to_end(&mut s, &mut out.stderr);
    }
    Some(out)
}

/// (sent, received) for one exchange kind in a perfdhcp report.
fn perfdhcp_counts(report: &str, kind: &str) -> (u64, u64) {
    let mut in_section = false;
    let (mut sent, mut received) = (0, 0);
    for line in report.lines() {
        if line.starts_with("***Statistics for:") {
            in_section = line.contains(kind);
        } else if in_section {
            let num = |l: &str| l.split_whitespace().nth(2).and_then(|n| n.parse().ok());
            if line.starts_with("sent packets:") {
                sent = num(line).unwrap_or(0);
            } else if line.starts_with("received packets:") {
                received = num(line).unwrap_or(0);
            }
        }
    }
    (sent, received)
}

/// Ten client MACs for perfdhcp (`-M`): the /28 of a `ve-` link holds them all, so every
/// exchange ends in an ACK and a journal write.
fn mac_file(dir: &std::path::Path) -> String {
    let path = dir.join("macs");
    let macs: Vec<String> = (0..10).map(|i| format!("02:00:5e:10:00:{i:02x}")).collect();
    std::fs::write(&path, macs.join("\n") + "\n").unwrap();
    path.display().to_string()
}

#[test]
fn dhcp_load_while_containers_come_and_go() {
    if !privileged("dhcp_load_while_containers_come_and_go") {
        return;
    }
    if Command::new("perfdhcp").arg("-v").output().is_err() {
        panic!("perfdhcp is missing: install kea-admin (scripts/packages.txt lists it)");
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let secs: u64 = std::env::var("RNET_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut rig = Rig::new();
    rig.start_rnetd();
    let tmp = tempfile::tempdir().unwrap();
    let probe = netprobe();
    rig.spawn_ready(rig.in_uplink(&probe).args(["serve", "tcp:7000"]));
    rig.spawn(
        rig.rnet()
            .args(["run", "-n", "-M", "load", "--", "sleep", "600"]),
    );
    let load_pid = rig.wait_machine("load")["pid"].as_u64().unwrap();
    let macs = mac_file(tmp.path());
    let dog = Watchdog::start(rig.rnetd_pid());
    let stop = Arc::new(AtomicBool::new(false));

    // DHCP load: perfdhcp in the load container, 50 exchanges/s, in 3 s rounds; every round
    // must get ACKs (the server keeps answering throughout).
    let dhcp = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut rounds = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let out = in_pid_netns(load_pid, "perfdhcp")
                    .args(["-4", "-l", "host0", "-r", "50", "-M", &macs, "-p", "3"])
                    .output()
                    .expect("perfdhcp");
                let report = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                rounds.push((
                    perfdhcp_counts(&report, "DISCOVER-OFFER"),
                    perfdhcp_counts(&report, "REQUEST-ACK"),
                    report,
                ));
            }
            rounds
        })
    };

    // API prober: `list` every 50 ms.
    let prober = {
        let stop = Arc::clone(&stop);
        let dog = Arc::clone(&dog);
        let client = rig.client();
        std::thread::spawn(move || {
            let mut times = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (r, t) = dog.watch("list", ANSWER_LIMIT, || client.call(&Request::List, None));
                r.expect("list failed");
                times.push(t);
                std::thread::sleep(Duration::from_millis(50));
            }
            times
        })
    };

    // Containers come and go: -n, a zone, each with and without a published port; each one
    // reaches the uplink.
    let script = format!("{} connect tcp {UPLINK_ADDR} 7000", probe.display());
    let end = Instant::now() + Duration::from_secs(secs);
    let mut launches: Vec<Duration> = Vec::new();
    // Every attach as the launcher timed it (RNET_TIMINGS), then every teardown as rnetd did.
    let mut requests: Vec<Duration> = Vec::new();
    let mut i = 0u32;
    while Instant::now() < end && dog.stalled().is_none() {
        let name = format!("c{i}");
        let port = format!("{}:80", 20000 + i);
        let mut args = vec!["run", "-M", &name];
        match i % 4 {
            0 => args.push("-n"),
            1 => args.push("--network-zone=churn"),
            2 => args.extend(["-n", "-p", &port]),
            _ => args.extend(["--network-zone=churn", "-p", &port]),
        }
        args.extend(["--", "sh", "-c", &script]);
        let (out, took) = dog.watch(&format!("rnet run {name}"), LAUNCH_LIMIT, || {
            let mut child = rig
                .rnet()
                .env("RNET_TIMINGS", "1")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            wait_bounded(&mut child, LAUNCH_LIMIT + Duration::from_secs(5))
        });
        let out = out.unwrap_or_else(|| {
            panic!(
                "rnet run {name} hung\n{}",
                dog.stalled().unwrap_or_default()
            )
        });
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(HOST_ADDR),
            "launch {name} ({args:?}) failed: {}{}\nrnetd log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&rig.log(), 40)
        );
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            let Some(rest) = line.strip_prefix("rnet: timing: ") else {
                continue;
            };
            let ms: f64 = rest
                .rsplit(' ')
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::MAX);
            let t = Duration::from_secs_f64(ms / 1e3);
            assert!(
                t < ANSWER_LIMIT,
                "{rest}: over {ANSWER_LIMIT:?}\nrnetd log:\n{}",
                tail(&rig.log(), 40)
            );
            requests.push(t);
        }
        launches.push(took);
        i += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let mut probes = prober.join().expect("prober");
    let rounds = dhcp.join().expect("dhcp load");
    if let Some(stall) = dog.stalled() {
        panic!(
            "rnetd stalled:\n{stall}\nrnetd log:\n{}",
            tail(&rig.log(), 60)
        );
    }
    let (mut offers, mut acks, mut sent) = (0, 0, 0);
    for (n, ((d_sent, d_recv), (r_sent, r_recv), report)) in rounds.iter().enumerate() {
        assert!(
            *r_recv > 0,
            "DHCP round {n} got no ACK ({d_sent} DISCOVERs, {d_recv} OFFERs, {r_sent} REQUESTs):\n{report}\nrnetd log:\n{}",
            tail(&rig.log(), 40)
        );
        offers += d_recv;
        acks += r_recv;
        sent += d_sent;
    }
    let max_probe = probes.iter().max().copied().unwrap_or_default();
    let p50 = percentile(&mut launches, 50);
    let p99 = percentile(&mut launches, 99);
    eprintln!(
        "stress: {secs} s, {} launches (p50 {p50:?}, p99 {p99:?}, max {:?}), {} list requests \
         (p50 {:?}, max {max_probe:?}), DHCP: {sent} DISCOVERs, {offers} OFFERs, {acks} ACKs \
         in {} rounds",
        launches.len(),
        launches.last().copied().unwrap_or_default(),
        probes.len(),
        percentile(&mut probes, 50),
        rounds.len()
    );
    assert!(i >= 20, "only {i} launches in {secs} s");
    // The launcher does not wait for the teardown: rnetd does it when it sees the container's
    // process end, and logs how long each took (`netd::timing`, on with the rig's debug logs),
    // from the moment it saw the exit, the registry's lock included.
    let _ = rig.machines(); // every launch's teardown done
    for line in rig.log().lines() {
        let Some(rest) = line
            .split_once("netd::timing: exit c")
            .map(|(_, rest)| rest)
        else {
            continue;
        };
        let ms: f64 = rest
            .split(": ")
            .nth(1)
            .and_then(|t| t.split(" ms").next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::MAX);
        let t = Duration::from_secs_f64(ms / 1e3);
        assert!(
            t < ANSWER_LIMIT,
            "teardown {line}: over {ANSWER_LIMIT:?}\nrnetd log:\n{}",
            tail(&rig.log(), 40)
        );
        requests.push(t);
    }
    assert!(
        requests.len() >= 2 * launches.len(),
        "{} attach/detach timings for {} launches",
        requests.len(),
        launches.len()
    );
    eprintln!(
        "stress: {} attaches and teardowns done in p50 {:?}, p99 {:?}, max {:?}",
        requests.len(),
        percentile(&mut requests, 50),
        percentile(&mut requests, 99),
        requests.last().copied().unwrap_or_default()
    );
    rig.assert_no_panic();
    drop(dog);
    rig.signal(
        rig.wait_machine("load")["pid"].as_u64().unwrap() as u32,
        nix::sys::signal::Signal::SIGKILL,
    );
    rig.assert_all_gone();
}

#[test]
fn a_hundred_into_one_zone_and_fifty_on_veth_at_once() {
    if !privileged("a_hundred_into_one_zone_and_fifty_on_veth_at_once") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (zoned, veth) = (100, 50);
    let mut rig = Rig::new();
    rig.start_rnetd();
    let tmp = tempfile::tempdir().unwrap();
    let probe = netprobe();
    rig.spawn_ready(rig.in_uplink(&probe).args(["serve", "tcp:7000"]));
    // Each payload reports whether it reached the uplink, then stays up. The report is
    // written aside and renamed: a report that exists is whole (a shell's `>` creates the file
    // before `echo` writes it, and a reader in between saw it empty).
    let mut launchers = Vec::new();
    for i in 0..zoned + veth {
        let name = format!("p{i}");
        let report = tmp.path().join(&name);
        let script = format!(
            "{} connect tcp {UPLINK_ADDR} 7000 >/dev/null; echo $? > {report}.part; \
             mv {report}.part {report}; exec sleep 600",
            probe.display(),
            report = report.display()
        );
        let net = if i < zoned {
            "--network-zone=big"
        } else {
            "-n"
        };
        let child = rig
            .rnet()
            .args(["run", net, "-M", &name, "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        launchers.push((name, report, child));
    }
    let all = wait_until(Duration::from_secs(120), || {
        launchers.iter().all(|(_, r, _)| r.exists())
            || launchers
                .iter_mut()
                .any(|(_, _, c)| matches!(c.try_wait(), Ok(Some(_))))
    });
    let rss_peak = proc_status_kib(rig.rnetd_pid(), "VmHWM");
    for (name, report, child) in &mut launchers {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut s, &mut err);
            }
            panic!(
                "launcher {name} ended early ({status}): {err}\nrnetd log:\n{}",
                tail(&rig.log(), 40)
            );
        }
        assert!(
            all,
            "{name} never reported; rnetd log:\n{}",
            tail(&rig.log(), 40)
        );
        let code = std::fs::read_to_string(&*report).unwrap();
        assert_eq!(code.trim(), "0", "{name} could not reach the uplink");
    }
    let machines = rig.machines();
    assert_eq!(machines.len(), zoned + veth);
    let addrs: HashSet<&str> = machines
        .iter()
        .map(|m| m["container_address"].as_str().unwrap())
        .collect();
    assert_eq!(addrs.len(), zoned + veth, "addresses are not unique");
    let zone: Vec<rig::Value> =
        serde_json::from_str(&ok(rig.rnet().args(["zone", "list", "--json"]))).unwrap();
    assert_eq!(zone[0]["members"].as_array().unwrap().len(), zoned);
    eprintln!(
        "parallel: {zoned} zone members + {veth} veth containers, unique addresses, all reached \
         the uplink; rnetd peak RSS {} KiB",
        rss_peak.unwrap_or(0)
    );
    for (_, _, child) in &mut launchers {
        rig.signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    }
    for (_, _, child) in &mut launchers {
        let _ = child.wait();
    }
    rig.assert_all_gone();
    rig.assert_no_panic();
}
