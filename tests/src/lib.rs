//! The namespace test rig (`docs/architecture.md#the-test-rig`). Every test builds its own
//! topology and never touches the real host network:
//!
//! ```text
//!   [uplink netns]  203.0.113.1/24, 2001:db8::1/64   ("the internet")
//!         |  veth
//!   [host netns]    203.0.113.2/24, 2001:db8::2/64, default routes via the uplink; rnetd
//!                   runs here (IPv6 /64s from --pool6 fd52:6e65:7400::/48 unless a test says)
//!         |  ve-/vz-/vb- links created by rnetd
//!   [container netns ...]  created by `rnet run`
//! ```
//!
//! Names carry a prefix unique to the test process and test (`rnt<pid>x<n>`); everything is
//! removed on drop (also when the test panics), and [`sweep`] removes what dead test processes
//! left behind.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use serde_json::Value;

pub mod multihost;
pub mod tree;

/// The uplink's address ("the internet").
pub const UPLINK_ADDR: &str = "203.0.113.1";
/// The host's address on the uplink.
pub const HOST_ADDR: &str = "203.0.113.2";
/// The uplink's IPv6 address (documentation prefix, RFC 3849).
pub const UPLINK_ADDR6: &str = "2001:db8::1";
/// The host's IPv6 address on the uplink.
pub const HOST_ADDR6: &str = "2001:db8::2";
/// The prefix the rig's rnetd cuts IPv6 /64s from (independent of this machine's id).
pub const POOL6: &str = "fd52:6e65:7400::/48";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether privileged tests can run here; when they cannot, prints a visible SKIP line, or fails
/// when `RNET_REQUIRE_PRIVILEGED=1` (CI sets it, so a skip can never pass for a success there).
pub fn privileged(test: &str) -> bool {
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("needs root")
    } else if !Path::new("/usr/sbin/ip").exists() && !Path::new("/sbin/ip").exists() {
        Some("needs iproute2")
    } else {
        None
    };
    match missing {
        None => true,
        Some(reason) => {
            if std::env::var("RNET_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
                panic!("{test}: {reason}, and RNET_REQUIRE_PRIVILEGED=1");
            }
            eprintln!("SKIP {test}: {reason}");
            false
        }
    }
}

/// Directory holding the workspace's binaries, built once per test process so tests never run
/// stale binaries.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test-binary>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_owned();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "rnet-netd",
            "-p",
            "rnet-launcher",
            "-p",
            "rnet-cni",
            "--bins",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building rnetd and rnet failed");
        dir
    })
}

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Runs `cmd`, returning its output; panics with the command line if it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and panics (showing stderr) unless it succeeds; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held. A
/// deadline for robustness, not a timing assertion.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One test's world: a host netns with rnetd, an uplink netns, temp dirs.
pub struct Rig {
    /// Unique prefix of everything this rig creates.
    pub prefix: String,
    /// The "host" netns, where rnetd runs.
    pub host_ns: String,
    /// The "uplink" netns.
    pub uplink_ns: String,
    tmp: tempfile::TempDir,
    rnetd: Option<Child>,
    children: Vec<Child>,
    /// Stdout of servers started with [`Rig::spawn_ready`], kept open so they never get SIGPIPE.
    readers: Vec<std::io::BufReader<std::process::ChildStdout>>,
}

impl Rig {
    /// Builds the topology (no daemon yet). Sweeps leftovers of dead test processes first.
    pub fn new() -> Self {
        sweep();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("rnt{}x{n}", std::process::id());
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .expect("tempdir");
        // Unprivileged test clients must reach the socket.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let rig = Self {
            host_ns: format!("{prefix}h"),
            uplink_ns: format!("{prefix}u"),
            prefix,
            tmp,
            rnetd: None,
            children: Vec::new(),
            readers: Vec::new(),
        };
        let ip = |args: &[&str]| ok(Command::new("ip").args(args));
        ip(&["netns", "add", &rig.host_ns]);
        ip(&["netns", "add", &rig.uplink_ns]);
        let (h, u) = (format!("{}up", rig.prefix), format!("{}dn", rig.prefix));
        ip(&[
            "link",
            "add",
            &h,
            "netns",
            &rig.host_ns,
            "type",
            "veth",
            "peer",
            "name",
            &u,
            "netns",
            &rig.uplink_ns,
        ]);
        for (ns, dev, addr) in [
            (&rig.host_ns, &h, HOST_ADDR),
            (&rig.uplink_ns, &u, UPLINK_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for (ns, dev, addr) in [
            (&rig.host_ns, &h, HOST_ADDR6),
            (&rig.uplink_ns, &u, UPLINK_ADDR6),
        ] {
            let net = format!("{addr}/64");
            ip(&["-n", ns, "addr", "add", &net, "dev", dev, "nodad"]);
        }
        ip(&[
            "-n",
            &rig.host_ns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            UPLINK_ADDR6,
        ]);
        ip(&[
            "-n",
            &rig.host_ns,
            "route",
            "add",
            "default",
            "via",
            UPLINK_ADDR,
        ]);
        rig
    }

    /// The host end of the uplink veth.
    pub fn uplink_ifname(&self) -> String {
        format!("{}up", self.prefix)
    }

    /// rnetd's runtime directory.
    pub fn runtime_dir(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    /// rnetd's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// rnetd's log file.
    pub fn log_path(&self) -> PathBuf {
        self.tmp.path().join("rnetd.log")
    }

    /// rnetd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A command run inside the host netns (`nsenter --net`, which keeps /sys as it is).
    pub fn in_host(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_netns(&format!("/run/netns/{}", self.host_ns), program)
    }

    /// A command run inside the uplink netns.
    pub fn in_uplink(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_netns(&format!("/run/netns/{}", self.uplink_ns), program)
    }

    /// Starts rnetd in the host netns and waits for its socket.
    pub fn start_rnetd(&mut self) {
        self.start_rnetd_with(&[]);
    }

    /// Stops rnetd with `signal` and waits for it.
    pub fn stop_rnetd(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut child) = self.rnetd.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
            let _ = child.wait();
        }
    }

    /// The pid of the running rnetd.
    pub fn rnetd_pid(&self) -> u32 {
        self.rnetd.as_ref().expect("rnetd not running").id()
    }

    /// An `rnet` command in the host netns, pointed at this rig's rnetd.
    pub fn rnet(&self) -> Command {
        let mut c = self.in_host(bin("rnet"));
        c.arg("--runtime-dir").arg(self.runtime_dir());
        c
    }

    /// Spawns `cmd`; it is killed when the rig drops.
    pub fn spawn(&mut self, cmd: &mut Command) -> u32 {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Spawns a server (e.g. `netprobe serve`) and waits for it to print `READY`.
    pub fn spawn_ready(&mut self, cmd: &mut Command) -> u32 {
        use std::io::BufRead;
        let pid = self.spawn(cmd);
        let child = self.children.last_mut().expect("just spawned");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        while line.trim() != "READY" {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                let err = child.stderr.take().map(|mut e| {
                    let mut s = String::new();
                    let _ = std::io::Read::read_to_string(&mut e, &mut s);
                    s
                });
                panic!(
                    "{cmd:?} exited before READY: {err:?}; rnetd log:\n{}",
                    self.log()
                );
            }
        }
        self.readers.push(out);
        pid
    }

    /// Sends `signal` to a spawned process.
    pub fn signal(&self, pid: u32, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
    }

    /// `nft -j list table inet rnet` in the host netns, or `None` if there is no such table.
    pub fn nft_table(&self) -> Option<Value> {
        self.settle();
        let out = output(
            self.in_host("nft")
                .args(["-j", "list", "table", "inet", "rnet"]),
        );
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits for a spawned process and returns its output (after [`Rig::settle`]).
    pub fn wait(&mut self, pid: u32) -> Output {
        let i = self
            .children
            .iter()
            .position(|c| c.id() == pid)
            .expect("not a child of this rig");
        let out = self.children.remove(i).wait_with_output().expect("wait");
        self.settle();
        out
    }

    /// rnetd's attachments in `rnet list --json` (the entries with rnetd's fields), once rnetd
    /// has caught up with the processes that ended ([`Rig::settle`]). The list also shows
    /// machines only the launcher's registry knows (host mode, `--private-network`, and a
    /// networked run between its registration and its attach): those are left out.
    pub fn machines(&self) -> Vec<Value> {
        self.settle();
        self.list()
    }

    /// `rnet list --json`, as it is now.
    fn list(&self) -> Vec<Value> {
        let out = ok(self.rnet().args(["list", "--json"]));
        serde_json::from_str::<Vec<Value>>(&out)
            .expect("list --json")
            .into_iter()
            .filter(|m| m.get("network").is_some())
            .collect()
    }

    /// Waits (at most 10 s) until rnetd lists no machine whose process has ended (unless its
    /// teardown failed, which keeps it listed). `rnet run` exits with its payload's code without
    /// waiting for the teardown, which rnetd's pidfd watch does right after: what a test checks
    /// after a launcher ended is the state once that teardown is done. A wait, not an assertion.
    pub fn settle(&self) {
        let ended = |m: &Value| {
            let pid = m["pid"].as_u64().unwrap_or(0);
            let failed = m["teardown_errors"]
                .as_array()
                .is_some_and(|e| !e.is_empty());
            if pid == 0 || failed {
                return false; // held by a path, not a process; or kept for its failure
            }
            // Gone, or a zombie: its pidfd is readable, the watch is due.
            fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            })
        };
        // Without a running rnetd there is nothing to wait for.
        let listed = || {
            let out = output(self.rnet().args(["list", "--json"]));
            serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default()
        };
        wait_until(Duration::from_secs(10), || !listed().iter().any(ended));
    }

    /// The attached machine called `name`, waiting for it to appear and, for a launcher's
    /// machine, to run: its registry entry (written before the attach) says `ready` once the
    /// launcher has configured `host0` and the payload runs.
    pub fn wait_machine(&self, name: &str) -> Value {
        let entry = self.runtime_dir().join("machines").join(name);
        let ready = || match std::fs::read(&entry) {
            Ok(body) => serde_json::from_slice::<Value>(&body).is_ok_and(|e| e["ready"] == true),
            // No entry: another runtime's attachment (CNI, OCI hook, a named netns).
            Err(_) => true,
        };
        let mut found = None;
        let ok = wait_until(Duration::from_secs(10), || {
            found = self.machines().into_iter().find(|m| m["machine"] == name);
            found.is_some() && ready()
        });
        assert!(
            ok,
            "machine {name} never attached; rnetd log:\n{}",
            self.log()
        );
        found.unwrap()
    }

    /// `ip -j ARGS` in the host netns.
    pub fn host_ip(&self, args: &[&str]) -> Value {
        ip_json(self.in_host("ip").arg("-j").args(args))
    }

    /// Whether a link called `name` exists in the host netns.
    pub fn host_has_link(&self, name: &str) -> bool {
        self.settle();
        let exists = || {
            output(self.in_host("ip").args(["link", "show", "dev", name]))
                .status
                .success()
        };
        if !exists() {
            return false;
        }
        if self.owned_link(name) {
            return true;
        }
        // rnetd deletes the links of a machine that exited or was detached after its answer
        // (the kernel's deletion waits for RCU grace periods): a link that no listed machine
        // or zone owns any more is given the time to go.
        wait_until(Duration::from_secs(10), || !exists());
        exists()
    }

    /// Whether a listed machine (its host link) or zone (its bridge) owns link `name`.
    fn owned_link(&self, name: &str) -> bool {
        // Without a running rnetd nothing is deleted behind: every link counts as owned.
        let listed = |args: &[&str]| {
            let out = output(self.rnet().args(args));
            out.status
                .success()
                .then(|| serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default())
        };
        let (Some(machines), Some(zones)) = (
            listed(&["list", "--json"]),
            listed(&["zone", "list", "--json"]),
        ) else {
            return true;
        };
        machines.iter().any(|m| {
            m["host_ifname"].as_str() == Some(name) || m["host_altname"].as_str() == Some(name)
        }) || zones.iter().any(|z| z["bridge"].as_str() == Some(name))
    }
}

/// Number of rules in an `nft -j` listing.
pub fn nft_rules(listing: &Value) -> usize {
    listing["nftables"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|o| o.get("rule").is_some()).count())
}

/// Number of elements of set or map `name` in an `nft -j` listing.
pub fn nft_elements(listing: &Value, name: &str) -> usize {
    nft_element_list(listing, name).len()
}

/// The elements of set or map `name` in an `nft -j` listing.
pub fn nft_element_list(listing: &Value, name: &str) -> Vec<Value> {
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("set").or_else(|| o.get("map")))
        .find(|s| s["name"] == name)
        .and_then(|s| s["elem"].as_array())
        .cloned()
        .unwrap_or_default()
}

/// Path of the test probe binary.
pub fn netprobe() -> PathBuf {
    bin("netprobe")
}

/// A command run in the network namespace at `path`.
pub fn in_netns(path: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={path}")).arg("--").arg(program);
    c
}

/// A command run in the network namespace of process `pid`.
pub fn in_pid_netns(pid: u64, program: impl AsRef<std::ffi::OsStr>) -> Command {
    in_netns(&format!("/proc/{pid}/ns/net"), program)
}

/// Runs an `ip -j` command and parses its output.
pub fn ip_json(cmd: &mut Command) -> Value {
    let out = ok(cmd);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{cmd:?} gave bad JSON ({e}): {out}"))
}

impl Default for Rig {
    fn default() -> Self {
        Self::new()
    }
}

/// Removes the empty `rnet-*` cgroups (of any hierarchy) that launchers killed by a test left.
/// One younger than a second is looked at again once it is a second old: a live launcher moves
/// its child into the cgroup it made at once, so an empty one of that age is a leftover.
pub fn sweep_cgroups() {
    let find = || -> Vec<PathBuf> {
        let out = Command::new("find")
            .args([
                "/sys/fs/cgroup",
                "-maxdepth",
                "6",
                "-type",
                "d",
                "-name",
                "rnet-*",
            ])
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
    };
    let empty = |d: &Path| {
        fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
            && fs::read_dir(d).is_ok_and(|mut e| !e.any(|c| c.is_ok_and(|c| c.path().is_dir())))
    };
    let age = |d: &Path| {
        fs::metadata(d)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default()
    };
    let candidates: Vec<PathBuf> = find().into_iter().filter(|d| empty(d)).collect();
    if candidates.iter().any(|d| age(d) < Duration::from_secs(1)) {
        std::thread::sleep(Duration::from_secs(1));
    }
    for d in candidates {
        if age(&d) >= Duration::from_secs(1) && empty(&d) {
            let _ = fs::remove_dir(&d);
        }
    }
}

/// Every process below `roots` in the process tree (children, grandchildren, ...).
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // `pid (comm) state ppid ...`: comm may hold spaces, so split after its ')'.
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found: Vec<u32> = Vec::new();
    let mut frontier = roots.to_vec();
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

impl Drop for Rig {
    fn drop(&mut self) {
        // A payload's own children (a shell's background job) would outlive a killed launcher
        // and keep its namespace: everything below the rig's processes goes first.
        let roots: Vec<u32> = self.children.iter().map(Child::id).collect();
        for pid in descendants(&roots) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        sweep_cgroups();
        self.stop_rnetd(nix::sys::signal::Signal::SIGKILL);
        for ns in [&self.host_ns, &self.uplink_ns] {
            kill_netns_processes(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Kills every process whose network namespace is the named netns.
pub(crate) fn kill_netns_processes(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Removes what test processes that are no longer alive left behind: their netns (and the
/// processes inside them) and their rnetd processes.
pub fn sweep() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix("rnt") else {
            return false;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            return false;
        };
        pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if dead(name) {
                kill_netns_processes(name);
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    // rnetd processes whose runtime dir belongs to a dead test process.
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.first().is_some_and(|a| a.ends_with("/rnetd")) {
                continue;
            }
            let owner_dead = args.iter().any(|a| {
                Path::new(a).components().any(|c| {
                    c.as_os_str().to_str().is_some_and(|s| {
                        s.starts_with("rnt") && dead(s.split('-').next().unwrap_or(""))
                    })
                })
            });
            if owner_dead {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

// Helpers added for the DHCP tests (tests/tests/dhcp.rs) and benchmarks.

impl Rig {
    /// Like [`Rig::start_rnetd`], with `extra` arguments for rnetd (e.g. `["--dns",
    /// "192.0.2.53"]`). After a [`Rig::stop_rnetd`], pass them again to restart alike.
    pub fn start_rnetd_with(&mut self, extra: &[&str]) {
        assert!(self.rnetd.is_none(), "rnetd already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = self
            .in_host(bin("rnetd"))
            // Never the machine's own system bus: a firewalld there would get our links. It is
            // the private bus of `Rig::start_firewalld` when a test made one.
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .arg("--runtime-dir")
            .arg(self.runtime_dir())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--log", "netd=debug,info"])
            .args(
                if extra
                    .iter()
                    .any(|a| a.starts_with("--pool6") || a.starts_with("--ipv6"))
                {
                    &[][..]
                } else {
                    &["--pool6", POOL6][..]
                },
            )
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning rnetd");
        self.rnetd = Some(child);
        // Up means answering: the socket is bound before the state is restored.
        let client = netd::api::Client::new(&self.runtime_dir());
        let up = wait_until(Duration::from_secs(10), || {
            client.call(&netd::api::Request::List, None).is_ok()
        });
        assert!(up, "rnetd did not come up; log:\n{}", self.log());
    }

    /// The DHCP leases rnetd has on disk for link `ifname` (snapshot plus journal under
    /// `RUNTIME_DIR/leases/`, read with the store rnetd uses), as JSON objects with
    /// `client_id` and `address`; `None` while they cannot be read.
    pub fn saved_leases(&self, ifname: &str) -> Option<Vec<Value>> {
        let store = dhcp::LeaseStore::new(self.runtime_dir().join("leases"));
        let leases = store.load(ifname, std::time::SystemTime::now()).ok()?;
        Some(
            leases
                .into_iter()
                .map(|l| {
                    serde_json::json!({
                        "client_id": l.client_id.to_string(),
                        "address": l.address.to_string(),
                    })
                })
                .collect(),
        )
    }

    /// Panics, showing the log, if rnetd's log reports a panic.
    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "rnetd panicked; log:\n{log}");
    }
}

// Helpers for the reliability tests (tests/tests/stress.rs, tests/tests/crash.rs).

/// The thread stacks of process `pid`: user-space backtraces from gdb when it is installed,
/// and always each thread's name, state, kernel wait channel and kernel stack. Printed when a
/// test sees the daemon stall, so the failure shows where it hangs.
pub fn dump_stacks(pid: u32) -> String {
    let mut out = format!("--- threads of pid {pid} ---\n");
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let p = t.path();
            let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
            let state = read("status")
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or("")
                .to_owned();
            out += &format!(
                "tid {} ({}) {} wchan={}\n{}",
                t.file_name().to_string_lossy(),
                read("comm").trim(),
                state,
                read("wchan"),
                read("stack")
            );
        }
    }
    match Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .output()
    {
        Ok(o) => out += &String::from_utf8_lossy(&o.stdout),
        Err(e) => out += &format!("(no gdb backtraces: {e})\n"),
    }
    out
}

/// A field of `/proc/PID/status` in KiB (e.g. `VmHWM`, the peak RSS).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The names of the links in a netns (`ip -j link` run through `cmd`) that rnet owns:
/// `ve-`, `vb-`, `vz-` prefixes.
pub fn our_links(links: &Value) -> Vec<String> {
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| ["ve-", "vb-", "vz-"].iter().any(|p| n.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// Percentile `p` (0..=100) of `values` (sorted in place); zero for none.
pub fn percentile(values: &mut [Duration], p: usize) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    values[(values.len() - 1) * p / 100]
}

impl Rig {
    /// A client of this rig's rnetd (as the launcher uses), called from the test process.
    pub fn client(&self) -> netd::api::Client {
        netd::api::Client::new(&self.runtime_dir())
    }

    /// The rnet links (`ve-`, `vb-`, `vz-`) in the host netns.
    pub fn host_links(&self) -> Vec<String> {
        our_links(&self.host_ip(&["link", "show"]))
    }

    /// Waits until rnetd has no machine, no link and no table left; panics with what remains.
    pub fn assert_all_gone(&self) {
        let bridge_table = || {
            output(
                self.in_host("nft")
                    .args(["list", "table", "bridge", "rnet"]),
            )
            .status
            .success()
        };
        let gone = wait_until(Duration::from_secs(20), || {
            self.machines().is_empty()
                && self.host_links().is_empty()
                && self.nft_table().is_none()
                && !bridge_table()
        });
        assert!(
            gone,
            "left behind: machines {:?}, links {:?}, inet table {}, bridge table {}; rnetd log tail:\n{}",
            self.machines()
                .iter()
                .map(|m| m["machine"].to_string())
                .collect::<Vec<_>>(),
            self.host_links(),
            self.nft_table().is_some(),
            bridge_table(),
            tail(&self.log(), 60)
        );
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Kills every process in the network namespace of process `pid` (a container ending as a
/// whole: its payload and whatever it started), and waits until none is left.
pub fn kill_container(pid: u64) {
    let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/net")) else {
        return;
    };
    let members = || -> Vec<i32> {
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| fs::read_link(format!("/proc/{p}/ns/net")).ok().as_ref() == Some(&ns))
            .collect()
    };
    wait_until(Duration::from_secs(5), || {
        let left = members();
        for p in &left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        left.is_empty()
    });
}

// Helpers for the DHCP flood tests (tests/tests/dhcp_flood.rs).

impl Rig {
    /// The addresses rnetd has saved as quarantined (DECLINEd) for link `ifname`, read with the
    /// store rnetd uses; `None` while they cannot be read.
    pub fn saved_quarantines(&self, ifname: &str) -> Option<Vec<String>> {
        let store = dhcp::LeaseStore::new(self.runtime_dir().join("leases"));
        let saved = store
            .load_saved(ifname, std::time::SystemTime::now())
            .ok()?;
        Some(
            saved
                .quarantined
                .into_iter()
                .map(|(a, _)| a.to_string())
                .collect(),
        )
    }
}

/// The flood tool (`tests/src/bin/dhcpflood.rs`).
pub fn dhcpflood() -> PathBuf {
    bin("dhcpflood")
}

/// Path of the hostile-container tool (`hostile sniff IFACE FILE`, `hostile udp SRC DST PORT`).
pub fn hostile() -> PathBuf {
    bin("hostile")
}

// Helpers for the host-firewall tests (tests/tests/hostfw.rs).

/// A network namespace of a test's own (with a veth to the rig's host netns), deleted on drop.
pub struct ExtraNetns {
    /// Its name (`ip netns`), starting with the rig's prefix so the sweeper knows it.
    pub name: String,
}

impl ExtraNetns {
    /// A command run inside it.
    pub fn run(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_netns(&format!("/run/netns/{}", self.name), program)
    }
}

impl Drop for ExtraNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

impl Rig {
    /// `nft -j list ruleset` in the host netns.
    pub fn nft_ruleset(&self) -> Value {
        let out = ok(self.in_host("nft").args(["-j", "list", "ruleset"]));
        serde_json::from_str(&out).expect("nft -j list ruleset")
    }

    /// The rules of ours in other tables than ours (comment starting with `rnet: `), as
    /// `family table chain: comment`. Those in the tables iptables manages are read from
    /// `iptables-save`/`ip6tables-save` (rnetd adds them with iptables, whose `-m comment`
    /// `nft -j` does not show), the others from `nft -j list ruleset`.
    pub fn our_foreign_rules(&self) -> Vec<String> {
        const XT_TABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];
        let mut saved = Vec::new();
        let mut read_by_save = Vec::new();
        for (family, program) in [("ip", "iptables-nft-save"), ("ip6", "ip6tables-nft-save")] {
            let Ok(out) = self.in_host(program).output() else {
                continue;
            };
            if !out.status.success() {
                continue;
            }
            read_by_save.push(family);
            let mut table = String::new();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = line.strip_prefix('*') {
                    name.clone_into(&mut table);
                    continue;
                }
                let Some(rest) = line.strip_prefix("-A ") else {
                    continue;
                };
                let chain = rest.split_whitespace().next().unwrap_or_default();
                if let Some((_, after)) = rest.split_once("--comment \"rnet: ")
                    && let Some((comment, _)) = after.split_once('"')
                {
                    saved.push(format!("{family} {table} {chain}: rnet: {comment}"));
                }
            }
        }
        let listing = self.nft_ruleset();
        let mut out: Vec<String> = listing["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("rule"))
            .filter(|r| !(r["family"] == "inet" && r["table"] == "rnet"))
            .filter(|r| {
                let family = r["family"].as_str().unwrap_or_default();
                let table = r["table"].as_str().unwrap_or_default();
                !(read_by_save.contains(&family) && XT_TABLES.contains(&table))
            })
            .filter_map(|r| {
                let comment = r["comment"].as_str()?;
                comment.starts_with("rnet: ").then(|| {
                    format!(
                        "{} {} {}: {comment}",
                        r["family"].as_str().unwrap_or_default(),
                        r["table"].as_str().unwrap_or_default(),
                        r["chain"].as_str().unwrap_or_default()
                    )
                })
            })
            .collect();
        out.extend(saved);
        out
    }

    /// Runs a shell script in the host netns (`iptables`, `nft` set-ups of a test); panics with
    /// its output when it fails.
    pub fn host_sh(&self, script: &str) -> String {
        ok(self.in_host("sh").args(["-c", script]))
    }

    /// A namespace of the test's own routed through the host, not by rnetd: `10.99.0.2/24` in
    /// it, `10.99.0.1/24` on the host end `PREFIXxa`, routes both ways (the uplink routes
    /// 10.99.0.0/24 back through the host). Forwarded traffic from it is no traffic of ours: the
    /// control showing another firewall's drop policy really drops.
    pub fn routed_netns(&self) -> ExtraNetns {
        let ns = ExtraNetns {
            name: format!("{}c", self.prefix),
        };
        let host_end = format!("{}xa", self.prefix);
        let ip = |args: &[&str]| ok(Command::new("ip").args(args));
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "-n",
            &self.host_ns,
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        ip(&[
            "-n",
            &self.host_ns,
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            &host_end,
        ]);
        ip(&["-n", &self.host_ns, "link", "set", &host_end, "up"]);
        ip(&["-n", &ns.name, "addr", "add", "10.99.0.2/24", "dev", "eth0"]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns.name,
            "route",
            "add",
            "default",
            "via",
            "10.99.0.1",
        ]);
        ip(&[
            "-n",
            &self.uplink_ns,
            "route",
            "add",
            "10.99.0.0/24",
            "via",
            HOST_ADDR,
        ]);
        ok(self
            .in_host("sysctl")
            .args(["-q", "-w", "net.ipv4.ip_forward=1"]));
        ns
    }
}

// Helpers for the DNS tests (tests/tests/dns.rs).

/// The address the uplink's DNS server gives the test zone's name (`www.example.test`).
pub const WWW_ADDR: &str = "203.0.113.80";

impl Rig {
    /// Starts the uplink's DNS server: dnsmasq on [`UPLINK_ADDR`]:53 in the uplink netns,
    /// answering `www.example.test` with [`WWW_ADDR`], NXDOMAIN for the rest of `example.test`
    /// and REFUSED for other names (no upstream, no hosts file, no DHCP); waits until it
    /// answers. Killed when the rig drops.
    pub fn start_uplink_dns(&mut self) {
        let pid_file = self.tmp.path().join("uplink-dnsmasq.pid");
        self.spawn(
            self.in_uplink("dnsmasq")
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--port=53",
                ])
                .arg(format!("--listen-address={UPLINK_ADDR}"))
                // Authoritative for example.test: other names there are NXDOMAIN, and
                // www.example.test has no AAAA (NODATA, where --address would answer REFUSED).
                .arg("--local=/example.test/")
                .arg(format!("--host-record=www.example.test,{WWW_ADDR}"))
                .arg(format!("--pid-file={}", pid_file.display())),
        );
        let up = wait_until(Duration::from_secs(5), || {
            output(
                self.in_uplink("busybox")
                    .args(["nslookup", "www.example.test", UPLINK_ADDR]),
            )
            .status
            .success()
        });
        assert!(up, "the uplink's dnsmasq does not answer");
    }

    /// Starts rnetd as on a host running systemd-resolved: its `--resolv-conf` names only the
    /// stub (127.0.0.53), its `--resolved-conf` the uplink's server. Both are files in the rig's
    /// directory: the real host's resolv.conf is never read.
    pub fn start_rnetd_resolved(&mut self) {
        let resolv = self.tmp.path().join("resolv.conf");
        let resolved = self.tmp.path().join("resolved.conf");
        fs::write(
            &resolv,
            "# systemd-resolved stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\n",
        )
        .unwrap();
        fs::write(&resolved, format!("nameserver {UPLINK_ADDR}\n")).unwrap();
        let (resolv, resolved) = (resolv.display().to_string(), resolved.display().to_string());
        self.start_rnetd_with(&["--resolv-conf", &resolv, "--resolved-conf", &resolved]);
    }
}

/// One DHCP exchange by udhcpc on `host0` in the network namespace of process `pid`, with
/// `hook` as its script (`/bin/true` to configure nothing): `udhcpc -i host0 -n -q -f -t 3 -T 1`.
pub fn udhcpc_once(pid: u64, hook: &str) -> Output {
    output(in_pid_netns(pid, "udhcpc").args([
        "-i", "host0", "-n", "-q", "-f", "-t", "3", "-T", "1", "-s", hook,
    ]))
}

// firewalld with a private system bus in the host netns (tests/tests/firewalld.rs).

/// firewalld's own program and the tools the firewalld test needs.
const FIREWALLD_TOOLS: [&str; 4] = ["firewalld", "firewall-cmd", "dbus-daemon", "dbus-send"];

/// A private `dbus-daemon` (system bus type, its own socket in the rig's temp dir, root only)
/// and a `firewalld --nofork --nopid` on it, both in the rig's host netns (as netavark's tests
/// run firewalld): firewalld rewrites the ruleset of the namespace it runs in, so it is started
/// only through `nsenter --net=/run/netns/HOST` after checking that this is not the machine's
/// own namespace. Both are stopped on drop (and killed with the host netns's processes when the
/// rig drops, also on panic).
pub struct PrivateFirewalld {
    /// `DBUS_SYSTEM_BUS_ADDRESS` of the private bus.
    pub address: String,
    log: PathBuf,
    bus: Child,
    firewalld: Option<Child>,
    host_netns: String,
}

impl Rig {
    /// The system bus address rnetd gets: the private bus when [`Rig::start_firewalld`] made
    /// one, else a socket that does not exist.
    fn bus_address(&self) -> String {
        format!(
            "unix:path={}",
            self.tmp.path().join("system_bus_socket").display()
        )
    }

    /// Starts a private system bus and firewalld (default zone public) in the host netns, and
    /// waits until firewalld answers `firewall-cmd --state`. `Err` says why it cannot run here
    /// (not installed, or it did not start: its log).
    pub fn start_firewalld(&self) -> Result<PrivateFirewalld, String> {
        for tool in FIREWALLD_TOOLS {
            let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(tool).exists());
            if !found {
                return Err(format!(
                    "{tool} is not installed (Debian packages firewalld, dbus-daemon, dbus-bin)"
                ));
            }
        }
        let netns = format!("/run/netns/{}", self.host_ns);
        let ino = |p: &str| fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_ne!(
            ino(&netns).expect("the host netns exists"),
            ino("/proc/self/ns/net").expect("/proc/self/ns/net"),
            "the rig's host netns is the test's own: firewalld must never run there"
        );
        let socket = self.tmp.path().join("system_bus_socket");
        let config = self.tmp.path().join("system-bus.conf");
        fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy user="root">
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let log = self.tmp.path().join("firewalld.log");
        let log_file = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap()
        };
        let bus = self
            .in_host("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file())
            .spawn()
            .map_err(|e| format!("cannot run dbus-daemon: {e}"))?;
        let address = self.bus_address();
        let mut fw = PrivateFirewalld {
            address,
            log: log.clone(),
            bus,
            firewalld: None,
            host_netns: self.host_ns.clone(),
        };
        if !wait_until(Duration::from_secs(10), || socket.exists()) {
            return Err(format!(
                "the private dbus-daemon did not start: {}",
                fw.log()
            ));
        }
        fw.start()?;
        Ok(fw)
    }
}

impl PrivateFirewalld {
    /// Starts firewalld on the bus and waits until it answers `firewall-cmd --state`.
    fn start(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = in_netns(&format!("/run/netns/{}", self.host_netns), "firewalld")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .args(["--nofork", "--nopid"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run firewalld: {e}"))?;
        self.firewalld = Some(child);
        let mut state = String::new();
        let up = wait_until(Duration::from_secs(60), || {
            state = self.cmd(&["--state"]);
            state.trim() == "running"
        });
        if !up {
            return Err(format!(
                "firewalld did not start within 60 s (firewall-cmd --state: {:?}); its log: {}",
                state.trim(),
                self.log()
            ));
        }
        Ok(())
    }

    /// Stops firewalld (SIGTERM) and starts it again.
    pub fn restart(&mut self) -> Result<(), String> {
        if let Some(mut child) = self.firewalld.take() {
            stop_child(&mut child);
        }
        self.start()
    }

    /// `firewall-cmd ARGS` on the private bus (it talks D-Bus only: it runs anywhere), its
    /// stdout and stderr.
    pub fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("firewall-cmd")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .args(args)
            .output()
            .expect("running firewall-cmd");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The zone firewalld has `interface` in at runtime (`""`: none), asked with `dbus-send`
    /// (`zone.getZoneOfInterface`): a C client, quick enough to poll, unlike `firewall-cmd`
    /// (a Python program that takes a few hundred milliseconds to start).
    pub fn zone_of_interface(&self, interface: &str) -> String {
        let out = Command::new("dbus-send")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .args([
                "--system",
                "--print-reply=literal",
                "--dest=org.fedoraproject.FirewallD1",
                "/org/fedoraproject/FirewallD1",
                "org.fedoraproject.FirewallD1.zone.getZoneOfInterface",
            ])
            .arg(format!("string:{interface}"))
            .output()
            .expect("running dbus-send");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// firewalld's and the bus's output so far.
    pub fn log(&self) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), 30)
    }

    /// The processes of the host netns whose command line names `what`.
    fn running(&self, what: &str) -> bool {
        let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.host_netns])
            .output()
        else {
            return false;
        };
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(what))
            })
    }

    /// Stops firewalld (SIGTERM: it removes its table) and the bus; returns whether any of
    /// them is still running afterwards.
    pub fn stop(&mut self) -> bool {
        if let Some(mut child) = self.firewalld.take() {
            stop_child(&mut child);
        }
        stop_child(&mut self.bus);
        self.running("firewalld") || self.running("dbus-daemon")
    }
}

/// SIGTERM, at most 10 s to exit, then SIGKILL.
fn stop_child(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let gone = wait_until(Duration::from_secs(10), || {
        child.try_wait().is_ok_and(|s| s.is_some())
    });
    if !gone {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PrivateFirewalld {
    fn drop(&mut self) {
        self.stop();
    }
}
