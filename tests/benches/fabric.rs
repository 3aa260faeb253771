//! The fabric benchmark: what starting and stopping networked containers costs in rnet, against
//! the same machine's `systemd-nspawn --network-veth` and the CNI reference chain (bridge +
//! host-local + portmap, driven as libcni drives it), alternating sample by sample in one run.
//!
//! `cargo bench -p rnet-tests --bench fabric` (as root; `scripts/bench.sh` runs it with the
//! DHCP and DNS benchmarks). Everything happens in the rig's namespaces (`tests/src/lib.rs`):
//! rnetd, nspawn's links and CNI's bridge live in the rig's "host" netns, iperf3's server in its
//! "uplink" netns. For each N of live containers (`RNET_BENCH_N`, default `1,10,100,1000`) it
//! grows N background containers of each kind (rnet: `rnet run -n -p PORT -- sleep`, one
//! published port each; nspawn: `systemd-nspawn --network-veth -D TREE sleep`; CNI: an ADDed
//! netns each; peers only up to `RNET_BENCH_PEER_MAX`, default 100), then measures, `RUNS`
//! times each (`RNET_BENCH_RUNS`, default 15):
//!
//! - `run`: a whole `rnet run -n -- true` (fork, namespaces, attach, configure, exec, detach),
//!   and `run -p5` with five published ports; `run -D` with a busybox tree when the launcher
//!   has `--directory`; `run -k` and `run -D -k` the same with `--keep-unit` (no cgroup of the
//!   machine's own, as the nspawn peer runs);
//! - `attach`/`detach`: one Attach and one Detach request to rnetd over its socket (a namespace
//!   held by a sleeping process), without and with five ports;
//! - `nspawn`: `systemd-nspawn -q --register=no --keep-unit --network-veth -D TREE /bin/true`;
//! - `cni add`/`cni del`: the chain's ADD and DEL for one more namespace (3 plugin execs each);
//! - `zone first`: `rnet run --network-zone=NEW -- true` (the zone is made and removed with its
//!   only member) and `zone next`: a run in a zone that has a member;
//! - `teardown`: every background container of the level SIGTERMed at once, until rnetd lists
//!   none (rnet) or every nspawn exited / every DEL returned (peers);
//! - rnetd's RSS before the first container and at each N;
//! - at the end, the data path: iperf3 from a container to the uplink through masquerade, from a
//!   bare veth pair, and (when N reached 1000) with 1000 published ports present.
//!
//! Every sample starts 100 ms after the previous one ended (`SETTLE`), so that none pays for
//! what the one before left running.
//!
//! Prints a table (p50, p99) with the peers' ratios, then one JSON line (`{"bench":"fabric",...}`).
//! A figure printer, not a timed test: the goals are printed beside the figures, never asserted.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netd::api::{AttachRequest, Client, MachineName, NetworkSpec, PortSpec, Request};
use rig::{Rig, UPLINK_ADDR, Value, output, percentile, privileged, wait_until};

/// One measured quantity at one N.
struct Row {
    what: &'static str,
    n: usize,
    samples: Vec<Duration>,
}

impl Row {
    fn p(&self, p: usize) -> f64 {
        let mut v = self.samples.clone();
        percentile(&mut v, p).as_secs_f64() * 1e3
    }
}

/// A figure that is not a latency distribution (RSS, throughput, teardown totals).
struct Figure {
    what: String,
    n: usize,
    value: f64,
    unit: &'static str,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    figures: Vec<Figure>,
}

impl Report {
    fn add(&mut self, what: &'static str, n: usize, samples: Vec<Duration>) {
        if !samples.is_empty() {
            self.rows.push(Row { what, n, samples });
        }
    }

    fn figure(&mut self, what: impl Into<String>, n: usize, value: f64, unit: &'static str) {
        let what = what.into();
        println!("  {what} at N={n}: {value:.2} {unit}");
        self.figures.push(Figure {
            what,
            n,
            value,
            unit,
        });
    }

    fn p50(&self, what: &str, n: usize) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.what == what && r.n == n)
            .map(|r| r.p(50))
    }
}

/// Settings from the environment.
struct Opts {
    levels: Vec<usize>,
    runs: usize,
    peer_max: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Opts {
    fn from_env() -> Self {
        let levels = std::env::var("RNET_BENCH_N")
            .unwrap_or_else(|_| "1,10,100,1000".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        Opts {
            levels,
            runs: env_or("RNET_BENCH_RUNS", 15),
            peer_max: env_or("RNET_BENCH_PEER_MAX", 100),
        }
    }
}

/// `program` run in the network namespace open as `ns`: setns in the forked child, so the
/// figures carry no `nsenter` exec.
fn in_ns(ns: &File, program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::fd::AsRawFd;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(program);
    // SAFETY: between fork and exec the closure only makes the setns system call on an fd the
    // parent keeps open; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs `cmd` to completion, quietly; returns how long it took, or why it failed.
/// How long every sample waits before it starts: what the previous one left running (rnetd
/// deleting its links and a zone's bridge, which holds the kernel's RTNL lock across RCU grace
/// periods; a cgroup move's RCU sync, which a move soon after another skips) is over, so a
/// sample costs what it costs on a quiet host and not what its place in the order gives it.
/// Without it `zone next`, right after `zone first`'s bridge deletion, took 37–58 ms against
/// 23–29 ms alone, and `run -p5`, right after `run`'s cgroup move, 8.6–9.8 ms against 17–21.
const SETTLE: Duration = Duration::from_millis(100);

/// Sleeps [`SETTLE`].
fn settle() {
    std::thread::sleep(SETTLE);
}

fn timed(cmd: &mut Command) -> Result<Duration, String> {
    settle();
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(took)
}

/// The world of the benchmark: the rig, rnetd, and the peers' background containers.
struct Bench {
    rig: Rig,
    host: File,
    client: Client,
    rnetd: u32,
    /// The OS tree nspawn and `rnet run -D` run in (a static busybox).
    tree: rig::tree::Tree,
    launcher_has_directory: bool,
    nspawn: Option<PathBuf>,
    cni: Option<Cni>,
    /// Background rnet launchers of the current level.
    bg: Vec<Child>,
    /// Background nspawn containers of the current level.
    bg_nspawn: Vec<Child>,
    /// Background CNI attachments of the current level (their netns names).
    bg_cni: Vec<String>,
    seq: usize,
}

impl Bench {
    fn new() -> Self {
        let mut rig = Rig::new();
        let host = File::open(format!("/run/netns/{}", rig.host_ns)).expect("host netns");
        // rnetd as in production: default log level, not the tests' debug.
        let mut cmd = in_ns(&host, rig::bin("rnetd"));
        cmd.arg("--runtime-dir")
            .arg(rig.runtime_dir())
            .arg("--state-dir")
            .arg(rig.state_dir())
            .args(["--pool", "10.0.0.0/8", "--log", "warn"]);
        let rnetd = rig.spawn(&mut cmd);
        let client = Client::new(&rig.runtime_dir());
        assert!(
            wait_until(Duration::from_secs(10), || client
                .call(&Request::List, None)
                .is_ok()),
            "rnetd did not come up"
        );
        let busybox = rig::tree::static_busybox("bench fabric")
            .expect("a static busybox (Debian busybox-static) for the OS tree");
        let tree = rig::tree::Tree::new(&busybox);
        // nspawn runs many containers on one tree only read-only, and then needs its mount
        // points to exist.
        for d in ["tmp", "run", "proc", "sys", "dev", "var/tmp", "var/log"] {
            fs::create_dir_all(tree.path().join(d)).expect("tree mount points");
        }
        fs::write(tree.path().join("etc/localtime"), "").expect("tree localtime");
        let help = output(Command::new(rig::bin("rnet")).args(["run", "--help"]));
        let launcher_has_directory = String::from_utf8_lossy(&help.stdout).contains("--directory");
        let nspawn = which("systemd-nspawn");
        if nspawn.is_none() {
            println!("  (no systemd-nspawn: install systemd-container for the nspawn column)");
        }
        let cni = Cni::new(&rig);
        if cni.is_none() {
            println!(
                "  (no CNI plugins in /usr/lib/cni: install containernetworking-plugins for the CNI column)"
            );
        }
        Bench {
            rig,
            host,
            client,
            rnetd,
            tree,
            launcher_has_directory,
            nspawn,
            cni,
            bg: Vec::new(),
            bg_nspawn: Vec::new(),
            bg_cni: Vec::new(),
            seq: 0,
        }
    }

    fn next(&mut self) -> usize {
        self.seq += 1;
        self.seq
    }

    fn rnet(&self) -> Command {
        let mut c = in_ns(&self.host, rig::bin("rnet"));
        c.arg("--runtime-dir").arg(self.rig.runtime_dir());
        c
    }

    fn live(&self) -> usize {
        match self.client.call(&Request::List, None) {
            Ok(netd::api::Response::Machines(m)) => m.len(),
            _ => 0,
        }
    }

    /// rnetd's RSS once settled: after a pause in requests long enough for one more periodic
    /// firewall check (which lists our table once after the burst's changes) and then the
    /// pause after which rnetd hands freed memory back (`netd::trim::QUIET`), so the figure is
    /// what N containers keep, not what the burst or that check left. (Read 2 s after the
    /// burst, the same tree gave 28.5 and 36.4 MiB at N=1000 in two runs; `scripts/bench-rss.sh`,
    /// which reads at 3 s and then for a minute, 25.5–25.6.)
    fn rss_mib(&self) -> f64 {
        std::thread::sleep(netd::machines::FIREWALL_CHECK + netd::trim::QUIET * 2);
        rig::proc_status_kib(self.rnetd, "VmRSS").unwrap_or(0) as f64 / 1024.0
    }

    /// With `RNET_BENCH_HOLD` set, waits at a grown level until the file it names is removed,
    /// so the level can be looked at (strace, perf) from another shell.
    fn hold(&self, n: usize) {
        let Ok(file) = std::env::var("RNET_BENCH_HOLD") else {
            return;
        };
        if fs::write(&file, "").is_err() {
            println!("  RNET_BENCH_HOLD: cannot create {file}; not holding");
            return;
        }
        println!(
            "N = {n}: holding until {file} is removed: host netns /run/netns/{}, rnetd pid {}, \
             `rnet --runtime-dir {}`",
            self.rig.host_ns,
            self.rnetd,
            self.rig.runtime_dir().display()
        );
        while Path::new(&file).exists() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Grows the background to `n` containers of each kind.
    fn grow(&mut self, n: usize, peers: bool) {
        let start = self.bg.len();
        for i in start..n {
            let name = format!("bg{i}");
            let port = format!("{}:80", 10000 + i);
            let child = self
                .rnet()
                .args([
                    "run", "-n", "-M", &name, "-p", &port, "--", "sleep", "100000",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawning a background container");
            self.bg.push(child);
            // A few at a time: the launchers wait on rnetd, which serialises attaches anyway.
            if i % 8 == 7 {
                let want = i + 1;
                wait_until(Duration::from_secs(60), || self.live() >= want);
            }
        }
        assert!(
            wait_until(Duration::from_secs(300), || self.live() >= n),
            "only {} of {n} background containers came up",
            self.live()
        );
        if !peers {
            return;
        }
        if let Some(nspawn) = self.nspawn.clone() {
            for i in self.bg_nspawn.len()..n {
                let child = self
                    .nspawn_cmd(&nspawn, &format!("nbg{i}"))
                    .args(["/bin/sleep", "100000"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawning systemd-nspawn");
                self.bg_nspawn.push(child);
            }
            let want = n;
            let host = self.rig.host_ns.clone();
            let up = wait_until(Duration::from_secs(300), || {
                count_links(&host, "ve-nbg") >= want
            });
            if !up {
                println!(
                    "  (only {} nspawn containers came up)",
                    count_links(&host, "ve-nbg")
                );
            }
        }
        if self.cni.is_some() {
            for _ in self.bg_cni.len()..n {
                let k = self.next();
                let id = format!("{}cbg{k}", self.rig.prefix);
                let cni = self.cni.as_ref().expect("checked");
                if let Err(e) = cni.add(&self.host, &id, 0) {
                    println!("  CNI ADD failed: {e}");
                    break;
                }
                self.bg_cni.push(id);
            }
        }
    }

    fn nspawn_cmd(&self, nspawn: &Path, name: &str) -> Command {
        let mut c = in_ns(&self.host, nspawn);
        c.args([
            "-q",
            "--register=no",
            "--keep-unit",
            "--read-only",
            "--network-veth",
            "-M",
            name,
            "-D",
        ])
        .arg(self.tree.path());
        c
    }

    /// Stops every background container at once; returns how long each kind took.
    fn teardown(&mut self, report: &mut Report, n: usize) {
        let t = Instant::now();
        for c in &self.bg {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let gone = wait_until(Duration::from_secs(600), || self.live() == 0);
        let took = t.elapsed();
        for mut c in self.bg.drain(..) {
            let _ = c.wait();
        }
        if gone {
            report.figure("teardown rnet", n, took.as_secs_f64() * 1e3, "ms");
        } else {
            println!("  rnet teardown of {n} did not finish in 600 s");
        }
        if !self.bg_nspawn.is_empty() {
            let t = Instant::now();
            for c in &self.bg_nspawn {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            for mut c in self.bg_nspawn.drain(..) {
                let _ = c.wait();
            }
            report.figure("teardown nspawn", n, t.elapsed().as_secs_f64() * 1e3, "ms");
            forget_nspawn_leftovers();
        }
        if let Some(cni) = &self.cni
            && !self.bg_cni.is_empty()
        {
            let t = Instant::now();
            for id in self.bg_cni.drain(..) {
                if let Err(e) = cni.del(&self.host, &id) {
                    println!("  CNI DEL failed: {e}");
                }
            }
            report.figure("teardown cni", n, t.elapsed().as_secs_f64() * 1e3, "ms");
        }
    }

    /// One Attach and one Detach of a fresh namespace with `ports` published ports.
    fn attach_detach(&mut self, ports: usize) -> Result<(Duration, Duration), String> {
        let mut holder = Command::new("unshare")
            .args(["--net", "sleep", "60"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let pid = holder.id();
        wait_until(Duration::from_secs(5), || {
            fs::read_link(format!("/proc/{pid}/ns/net")).ok()
                != fs::read_link("/proc/self/ns/net").ok()
        });
        let ns = File::open(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
        let k = self.next();
        let name = MachineName::new(&format!("a{k}")).map_err(|e| e.to_string())?;
        let specs: Vec<PortSpec> = (0..ports)
            .map(|i| format!("{}:80", 40000 + i).parse().expect("port spec"))
            .collect();
        let req = Request::Attach(AttachRequest {
            machine: name.clone(),
            pid,
            network: NetworkSpec::Veth,
            ports: specs,
            links: vec![],
            held: None,
            init: Default::default(),
            ipv6: true,
        });
        settle();
        let t = Instant::now();
        let attached = self.client.call(&req, Some(ns.as_fd()));
        let attach = t.elapsed();
        let t = Instant::now();
        let detached = self.client.call(&Request::Detach { machine: name }, None);
        let detach = t.elapsed();
        let _ = holder.kill();
        let _ = holder.wait();
        attached.map_err(|e| e.to_string())?;
        detached.map_err(|e| e.to_string())?;
        Ok((attach, detach))
    }

    /// The samples of one level, alternating between the kinds sample by sample.
    fn measure(&mut self, report: &mut Report, n: usize, runs: usize, peers: bool) {
        let mut s: Vec<(&'static str, Vec<Duration>)> = [
            "run",
            "run -p5",
            "run -D",
            "run -k",
            "run -D -k",
            "attach",
            "detach",
            "attach -p5",
            "detach -p5",
            "zone first",
            "zone next",
            "nspawn",
            "cni add",
            "cni del",
        ]
        .into_iter()
        .map(|w| (w, Vec::new()))
        .collect();
        // A zone member that stays, so `zone next` runs join a zone that exists.
        let zone_keeper = self
            .rnet()
            .args([
                "run",
                "--network-zone=benchz",
                "-M",
                "zkeep",
                "--",
                "sleep",
                "100000",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let zone_up = wait_until(Duration::from_secs(30), || self.live() > n);
        let mut push = |what: &str, r: Result<Duration, String>| match r {
            Ok(d) => s
                .iter_mut()
                .find(|(w, _)| *w == what)
                .expect("known")
                .1
                .push(d),
            Err(e) => println!("  {what}: {e}"),
        };
        for _ in 0..runs {
            push("run", timed(self.rnet().args(["run", "-n", "--", "true"])));
            let mut cmd = self.rnet();
            cmd.args(["run", "-n"]);
            for i in 0..5 {
                cmd.args(["-p", &format!("{}:80", 30000 + i)]);
            }
            push("run -p5", timed(cmd.args(["--", "true"])));
            if self.launcher_has_directory {
                let mut cmd = self.rnet();
                cmd.args(["run", "-n", "-D"]).arg(self.tree.path());
                push("run -D", timed(cmd.args(["--", "/bin/true"])));
            }
            push(
                "run -k",
                timed(self.rnet().args(["run", "-n", "--keep-unit", "--", "true"])),
            );
            if self.launcher_has_directory {
                let mut cmd = self.rnet();
                cmd.args(["run", "-n", "--keep-unit", "-D"])
                    .arg(self.tree.path());
                push("run -D -k", timed(cmd.args(["--", "/bin/true"])));
            }
            for ports in [0, 5] {
                match self.attach_detach(ports) {
                    Ok((a, d)) => {
                        let (wa, wd) = if ports == 0 {
                            ("attach", "detach")
                        } else {
                            ("attach -p5", "detach -p5")
                        };
                        push(wa, Ok(a));
                        push(wd, Ok(d));
                    }
                    Err(e) => println!("  attach/detach: {e}"),
                }
            }
            let zone = format!("--network-zone=bz{}", self.next());
            push(
                "zone first",
                timed(self.rnet().args(["run", &zone, "--", "true"])),
            );
            if zone_up {
                push(
                    "zone next",
                    timed(
                        self.rnet()
                            .args(["run", "--network-zone=benchz", "--", "true"]),
                    ),
                );
            }
            if !peers {
                continue;
            }
            if let Some(nspawn) = self.nspawn.clone() {
                let name = format!("nm{}", self.next());
                push(
                    "nspawn",
                    timed(self.nspawn_cmd(&nspawn, &name).arg("/bin/true")),
                );
                forget_nspawn_leftovers();
            }
            if self.cni.is_some() {
                let k = self.next();
                let id = format!("{}cm{k}", self.rig.prefix);
                let cni = self.cni.as_ref().expect("checked");
                let added = cni.add(&self.host, &id, 0);
                let ok = added.is_ok();
                push("cni add", added);
                if ok {
                    push("cni del", cni.del(&self.host, &id));
                }
            }
        }
        if let Ok(mut keeper) = zone_keeper {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(keeper.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = keeper.wait();
        }
        for (what, samples) in s {
            report.add(what, n, samples);
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Links in netns `ns` whose names start with `prefix`.
fn count_links(ns: &str, prefix: &str) -> usize {
    let out = output(Command::new("ip").args(["-n", ns, "-o", "link", "show"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split(": ")
                .nth(1)
                .is_some_and(|name| name.starts_with(prefix))
        })
        .count()
}

/// nspawn leaves `/run/systemd/nspawn/propagate/NAME` when `/run` is not a tmpfs (as here);
/// the benchmark's machines' directories go.
fn forget_nspawn_leftovers() {
    let dir = Path::new("/run/systemd/nspawn/propagate");
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("nm") || name.starts_with("nbg") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The CNI reference chain: bridge (with host-local IPAM, gateway and masquerade) + portmap,
/// driven as libcni drives a conflist: each plugin exec'd with `CNI_*` in its environment and
/// its config on stdin (name, cniVersion, runtimeConfig for its capabilities, the previous
/// plugin's result as `prevResult`); the last result cached for DEL, which runs the plugins in
/// reverse order with it.
struct Cni {
    dir: PathBuf,
    plugins: Vec<Value>,
}

const CNI_PATH: &str = "/usr/lib/cni";

impl Cni {
    fn new(rig: &Rig) -> Option<Self> {
        if !Path::new(CNI_PATH).join("bridge").exists() {
            return None;
        }
        let dir = rig.runtime_dir().with_file_name("cni");
        fs::create_dir_all(dir.join("results")).ok()?;
        let plugins = vec![
            serde_json::json!({
                "type": "bridge",
                "bridge": "cnibr0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "172.30.0.0/16"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.join("ipam"),
                },
            }),
            serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        ];
        Some(Cni { dir, plugins })
    }

    fn exec(
        &self,
        host: &File,
        command: &str,
        id: &str,
        plugin: &Value,
        prev: Option<&Value>,
        ports: usize,
    ) -> Result<Value, String> {
        let mut conf = plugin.clone();
        conf["name"] = "rnbcni".into();
        conf["cniVersion"] = "1.0.0".into();
        if plugin["capabilities"]["portMappings"] == true {
            let maps: Vec<Value> = (0..ports)
                .map(|i| {
                    serde_json::json!({"hostPort": 31000 + i, "containerPort": 80, "protocol": "tcp"})
                })
                .collect();
            conf["runtimeConfig"] = serde_json::json!({ "portMappings": maps });
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let program = Path::new(CNI_PATH).join(plugin["type"].as_str().unwrap_or_default());
        let mut child = in_ns(host, program)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", format!("/run/netns/{id}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("exec {}: {e}", plugin["type"]))?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped");
            stdin
                .write_all(conf.to_string().as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{command} {}: {}{}",
                plugin["type"],
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if out.stdout.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad result: {e}"))
    }

    /// Makes netns `id` (not timed: a runtime has it already) and ADDs it; the ADD's time.
    fn add(&self, host: &File, id: &str, ports: usize) -> Result<Duration, String> {
        let made = output(Command::new("ip").args(["netns", "add", id]));
        if !made.status.success() {
            return Err(String::from_utf8_lossy(&made.stderr).into_owned());
        }
        settle();
        let t = Instant::now();
        let mut prev: Option<Value> = None;
        for plugin in &self.plugins {
            prev = Some(self.exec(host, "ADD", id, plugin, prev.as_ref(), ports)?);
        }
        let took = t.elapsed();
        let result = prev.unwrap_or(Value::Null);
        fs::write(self.dir.join("results").join(id), result.to_string())
            .map_err(|e| e.to_string())?;
        Ok(took)
    }

    /// DELs `id` with its cached result, then removes its netns (not timed); the DEL's time.
    fn del(&self, host: &File, id: &str) -> Result<Duration, String> {
        let cached = fs::read_to_string(self.dir.join("results").join(id))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok());
        settle();
        let t = Instant::now();
        let mut failed = None;
        for plugin in self.plugins.iter().rev() {
            if let Err(e) = self.exec(host, "DEL", id, plugin, cached.as_ref(), 0) {
                failed = Some(e);
            }
        }
        let took = t.elapsed();
        let _ = fs::remove_file(self.dir.join("results").join(id));
        let _ = Command::new("ip").args(["netns", "del", id]).status();
        match failed {
            Some(e) => Err(e),
            None => Ok(took),
        }
    }
}

/// iperf3 from a command's netns to the uplink for 3 s: Gbit/s received.
fn iperf(client: &mut Command) -> Result<f64, String> {
    let out = client
        .args(["-c", UPLINK_ADDR, "-t", "3", "-J"])
        .output()
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "iperf3 gave no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| format!("iperf3: {}", v["error"]))
}

/// The data path: a container through masquerade against a bare veth pair to the uplink.
fn datapath(b: &mut Bench, report: &mut Report, n: usize) {
    if which("iperf3").is_none() {
        println!("  (no iperf3: install iperf3 for the data path figures)");
        return;
    }
    let uplink = File::open(format!("/run/netns/{}", b.rig.uplink_ns)).expect("uplink netns");
    let mut server = in_ns(&uplink, "iperf3")
        .args(["-s", "-B", UPLINK_ADDR])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    // A bare veth pair: a netns straight on the uplink, one hop, no firewall.
    let bare = format!("{}bare", b.rig.prefix);
    let ip = |args: &[&str]| {
        let _ = output(Command::new("ip").args(args));
    };
    ip(&["netns", "add", &bare]);
    let (a, z) = (format!("{}ba", b.rig.prefix), format!("{}bz", b.rig.prefix));
    ip(&[
        "link",
        "add",
        &a,
        "netns",
        &bare,
        "type",
        "veth",
        "peer",
        "name",
        &z,
        "netns",
        &b.rig.uplink_ns,
    ]);
    ip(&["-n", &bare, "addr", "add", "198.51.100.2/24", "dev", &a]);
    ip(&["-n", &bare, "link", "set", &a, "up"]);
    ip(&[
        "-n",
        &b.rig.uplink_ns,
        "addr",
        "add",
        "198.51.100.1/24",
        "dev",
        &z,
    ]);
    ip(&["-n", &b.rig.uplink_ns, "link", "set", &z, "up"]);
    ip(&[
        "-n",
        &bare,
        "route",
        "add",
        "default",
        "via",
        "198.51.100.1",
    ]);
    let bare_ns = File::open(format!("/run/netns/{bare}")).expect("bare netns");
    match iperf(&mut in_ns(&bare_ns, "iperf3")) {
        Ok(g) => report.figure("iperf3 bare veth", n, g, "Gbit/s"),
        Err(e) => println!("  iperf3 bare veth: {e}"),
    }
    let mut cmd = b.rnet();
    cmd.args(["run", "-n", "--", "iperf3"]);
    match iperf(&mut cmd) {
        Ok(g) => report.figure(format!("iperf3 rnet nat ({} ports)", n), n, g, "Gbit/s"),
        Err(e) => println!("  iperf3 through rnet: {e}"),
    }
    ip(&["netns", "del", &bare]);
    let _ = server.kill();
    let _ = server.wait();
}

fn main() {
    if !privileged("bench fabric") {
        return;
    }
    let opts = Opts::from_env();
    let mut b = Bench::new();
    let mut report = Report::default();
    println!(
        "fabric benchmark: N = {:?}, {} runs per figure, peers up to N = {}",
        opts.levels, opts.runs, opts.peer_max
    );
    report.figure("rnetd RSS", 0, b.rss_mib(), "MiB");
    for &n in &opts.levels {
        let peers = n <= opts.peer_max;
        println!("N = {n}: growing the background...");
        b.grow(n, peers);
        report.figure("rnetd RSS", n, b.rss_mib(), "MiB");
        b.hold(n);
        println!("N = {n}: measuring...");
        b.measure(&mut report, n, opts.runs, peers);
        let (lo, hi) = (opts.levels.iter().min(), opts.levels.iter().max());
        if Some(&n) == lo || Some(&n) == hi {
            datapath(&mut b, &mut report, n);
        }
        b.teardown(&mut report, n);
    }
    print_report(&report, &opts);
}

/// The goals beside what this run measured (printed, never asserted: figures on a
/// shared machine are noisy). A goal whose figure this run did not measure says so.
fn print_goals(r: &Report, opts: &Opts) {
    let (Some(&lo), Some(&hi)) = (opts.levels.iter().min(), opts.levels.iter().max()) else {
        return;
    };
    let figure = |what: &str, n: usize| {
        r.figures
            .iter()
            .find(|f| f.what == what && f.n == n)
            .map(|f| f.value)
    };
    let mut goals: Vec<(String, Option<(String, bool)>)> = Vec::new();
    let ms = |v: f64| format!("{v:.2} ms");
    for n in [lo, hi] {
        goals.push((
            format!("rnet run -n -- true p50 <= 10 ms (N={n})"),
            r.p50("run", n).map(|v| (ms(v), v <= 10.0)),
        ));
        goals.push((
            format!("  the same with --keep-unit, as nspawn runs here (N={n})"),
            r.p50("run -k", n).map(|v| (ms(v), v <= 10.0)),
        ));
    }
    for what in ["attach", "detach"] {
        goals.push((
            format!("{what} p50 <= 2 ms (N={hi})"),
            r.p50(what, hi).map(|v| (ms(v), v <= 2.0)),
        ));
        goals.push((
            format!("{what} p50 at N={hi} within 1.5x of N={lo}"),
            r.p50(what, hi)
                .zip(r.p50(what, lo))
                .map(|(h, l)| (format!("{:.2}x", h / l), h <= 1.5 * l)),
        ));
    }
    goals.push((
        "teardown of 1000 <= 5 s".into(),
        figure("teardown rnet", 1000).map(|v| (ms(v), v <= 5000.0)),
    ));
    goals.push((
        format!("zone first member p50 <= 10 ms (N={lo})"),
        r.p50("zone first", lo).map(|v| (ms(v), v <= 10.0)),
    ));
    let per_container = |n: usize| {
        let rnet = r.p50("attach", n)? + r.p50("detach", n)?;
        let cni = r.p50("cni add", n)? + r.p50("cni del", n)?;
        Some(cni / rnet)
    };
    goals.push((
        "CNI ADD+DEL over rnet attach+detach >= 30x (N=100)".into(),
        per_container(100).map(|x| (format!("{x:.1}x"), x >= 30.0)),
    ));
    goals.push((
        "rnetd RSS <= 30 MiB (N=1000)".into(),
        figure("rnetd RSS", 1000).map(|v| (format!("{v:.1} MiB"), v <= 30.0)),
    ));
    println!();
    println!("goals (issue 15; printed, not asserted):");
    for (goal, got) in goals {
        match got {
            Some((value, met)) => {
                println!("  {:<4} {goal}: {value}", if met { "met" } else { "NOT" })
            }
            None => println!("  -    {goal}: not measured in this run"),
        }
    }
}

fn print_report(r: &Report, opts: &Opts) {
    println!();
    println!(
        "{:<12} {:>6} {:>10} {:>10}   {:<}",
        "figure", "N", "p50 ms", "p99 ms", "vs peers (peer p50 / rnet p50)"
    );
    for row in &r.rows {
        let mut vs = String::new();
        let peer = match row.what {
            "run" | "run -D" | "run -k" | "run -D -k" => Some("nspawn"),
            "attach" => Some("cni add"),
            "detach" => Some("cni del"),
            _ => None,
        };
        if let Some(peer) = peer
            && let Some(p) = r.p50(peer, row.n)
        {
            let _ = write!(vs, "{peer} {:.1}x", p / row.p(50));
        }
        println!(
            "{:<12} {:>6} {:>10.2} {:>10.2}   {vs}",
            row.what,
            row.n,
            row.p(50),
            row.p(99)
        );
    }
    for f in &r.figures {
        println!("{:<34} N={:<5} {:>10.2} {}", f.what, f.n, f.value, f.unit);
    }
    print_goals(r, opts);
    let rows: Vec<Value> = r
        .rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "what": row.what, "n": row.n, "p50_ms": row.p(50), "p99_ms": row.p(99),
                "samples": row.samples.len(),
            })
        })
        .collect();
    let figures: Vec<Value> = r
        .figures
        .iter()
        .map(|f| serde_json::json!({"what": f.what, "n": f.n, "value": f.value, "unit": f.unit}))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "bench": "fabric", "levels": opts.levels, "runs": opts.runs,
            "rows": rows, "figures": figures,
        })
    );
}
