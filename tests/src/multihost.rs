//! The multi-host rig (zones across hosts, `docs/architecture.md`): several rigs' host
//! namespaces joined by an underlay bridge, and an etcd cluster on the underlay.
//!
//! ```text
//!   [underlay netns]  bridge br0; etcd members on 198.51.100.1..N (:2379 clients, :2380 peers)
//!      |  veth ul0 in each host netns: 198.51.100.11, .12, ...
//!   [host netns 0..H] each with its own rnetd, runtime/state dirs, uplink netns (the Rig)
//! ```
//!
//! Everything is named with the test process's prefix; etcd processes are killed and their
//! data dirs removed on drop (also on panic), and the rig's sweeper removes the underlay netns
//! (with the processes in it) of dead test processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Rig, in_netns, ok, wait_until};

/// The underlay's prefix length and the first address of the hosts and of etcd.
const UNDERLAY_NET: &str = "198.51.100";

/// The etcd binary (Debian `etcd-server`), if installed.
pub fn etcd_binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Whether the multi-host tests can run: privileged, and etcd installed. Prints a visible
/// SKIP line otherwise, or fails under `RNET_REQUIRE_PRIVILEGED=1`.
pub fn available(test: &str) -> bool {
    if !crate::privileged(test) {
        return false;
    }
    if etcd_binary().is_none() {
        let reason = "needs etcd (Debian package etcd-server)";
        if std::env::var("RNET_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{test}: {reason}, and RNET_REQUIRE_PRIVILEGED=1");
        }
        eprintln!("SKIP {test}: {reason}");
        return false;
    }
    true
}

/// Hosts on an underlay, with an etcd cluster.
pub struct MultiHost {
    /// The hosts (each a full rig: host and uplink netns, its own rnetd).
    pub hosts: Vec<Rig>,
    /// The underlay netns (bridge `br0`, etcd members).
    pub underlay_ns: String,
    etcd: Vec<Option<Child>>,
    tmp: tempfile::TempDir,
}

impl MultiHost {
    /// `hosts` hosts on an underlay bridge and an etcd cluster of `members` members, started
    /// and healthy. Host `i` has underlay address `198.51.100.(11+i)` on `ul0`.
    pub fn new(hosts: usize, members: usize) -> Self {
        // Rig::new sweeps dead test processes' namespaces (and the etcd members in them).
        let hosts: Vec<Rig> = (0..hosts).map(|_| Rig::new()).collect();
        sweep_etcd_dirs();
        let underlay_ns = format!("{}w", hosts[0].prefix);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{}-etcd-", hosts[0].prefix))
            .tempdir()
            .expect("tempdir");
        let mut me = Self {
            hosts,
            underlay_ns,
            etcd: Vec::new(),
            tmp,
        };
        let ip = |args: &[&str]| ok(Command::new("ip").args(args));
        ip(&["netns", "add", &me.underlay_ns]);
        let ul = me.underlay_ns.clone();
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &ul, "link", "set", "br0", "up"]);
        ip(&["-n", &ul, "link", "set", "lo", "up"]);
        for m in 0..members {
            ip(&[
                "-n",
                &ul,
                "addr",
                "add",
                &format!("{}/24", Self::etcd_addr(m)),
                "dev",
                "br0",
            ]);
        }
        for (i, h) in me.hosts.iter().enumerate() {
            let port = format!("{}p", h.prefix);
            ip(&[
                "link", "add", "ul0", "netns", &h.host_ns, "type", "veth", "peer", "name", &port,
                "netns", &ul,
            ]);
            ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &h.host_ns,
                "addr",
                "add",
                &format!("{}/24", Self::host_addr(i)),
                "dev",
                "ul0",
            ]);
            ip(&["-n", &h.host_ns, "link", "set", "ul0", "up"]);
        }
        for m in 0..members {
            let child = me.spawn_etcd(m, members);
            me.etcd.push(Some(child));
        }
        let healthy = wait_until(Duration::from_secs(30), || me.etcd_healthy());
        assert!(healthy, "etcd did not become healthy:\n{}", me.etcd_logs());
        me
    }

    /// The underlay address of host `i`.
    pub fn host_addr(i: usize) -> String {
        format!("{UNDERLAY_NET}.{}", 11 + i)
    }

    /// The address of etcd member `m`.
    pub fn etcd_addr(m: usize) -> String {
        format!("{UNDERLAY_NET}.{}", 1 + m)
    }

    /// The client URLs of every member, comma-separated (rnetd's `--etcd`).
    pub fn endpoints(&self) -> String {
        (0..self.etcd.len())
            .map(|m| format!("http://{}:2379", Self::etcd_addr(m)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn data_dir(&self, m: usize) -> PathBuf {
        self.tmp.path().join(format!("e{m}"))
    }

    fn log_path(&self, m: usize) -> PathBuf {
        self.tmp.path().join(format!("e{m}.log"))
    }

    fn spawn_etcd(&self, m: usize, members: usize) -> Child {
        let cluster: Vec<String> = (0..members)
            .map(|i| format!("e{i}=http://{}:2380", Self::etcd_addr(i)))
            .collect();
        let addr = Self::etcd_addr(m);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(m))
            .unwrap();
        self.in_underlay(etcd_binary().expect("etcd"))
            .args(["--name", &format!("e{m}")])
            .arg("--data-dir")
            .arg(self.data_dir(m))
            .args(["--listen-client-urls", &format!("http://{addr}:2379")])
            .args(["--advertise-client-urls", &format!("http://{addr}:2379")])
            .args(["--listen-peer-urls", &format!("http://{addr}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{addr}:2380"),
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.underlay_ns])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning etcd")
    }

    /// A command in the underlay netns.
    pub fn in_underlay(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_netns(&format!("/run/netns/{}", self.underlay_ns), program)
    }

    /// `etcdctl` against the cluster (in the underlay netns).
    pub fn etcdctl(&self) -> Command {
        let mut c = self.in_underlay("etcdctl");
        c.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints()])
            .args(["--command-timeout", "3s"]);
        c
    }

    /// Whether every running member answers healthy.
    pub fn etcd_healthy(&self) -> bool {
        let running: Vec<String> = self
            .etcd
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(m, _)| format!("http://{}:2379", Self::etcd_addr(m)))
            .collect();
        self.in_underlay("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &running.join(",")])
            .args(["endpoint", "health", "--command-timeout", "2s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Kills etcd member `m` (SIGKILL).
    pub fn stop_etcd(&mut self, m: usize) {
        if let Some(mut c) = self.etcd[m].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd member `m` again with its data dir.
    pub fn start_etcd(&mut self, m: usize) {
        assert!(self.etcd[m].is_none(), "etcd member {m} is running");
        let members = self.etcd.len();
        let c = self.spawn_etcd(m, members);
        self.etcd[m] = Some(c);
    }

    /// The etcd members' logs (for failure messages).
    pub fn etcd_logs(&self) -> String {
        (0..self.etcd.len())
            .map(|m| {
                let text = std::fs::read_to_string(self.log_path(m)).unwrap_or_default();
                format!("--- etcd e{m}:\n{}", crate::tail(&text, 15))
            })
            .collect()
    }

    /// Starts rnetd on host `i` as node `h<i>` on the cluster, with lease TTL `ttl` seconds.
    pub fn start_rnetd(&mut self, i: usize, ttl: u64) {
        self.start_rnetd_with(i, ttl, &[]);
    }

    /// [`MultiHost::start_rnetd`] with `extra` options (e.g. `--underlay-filter`).
    pub fn start_rnetd_with(&mut self, i: usize, ttl: u64, extra: &[&str]) {
        let endpoints = self.endpoints();
        let node = format!("h{i}");
        let underlay = Self::host_addr(i);
        let ttl = ttl.to_string();
        let mut args = vec![
            "--etcd",
            &endpoints,
            "--node-name",
            &node,
            "--underlay",
            &underlay,
            "--etcd-ttl",
            &ttl,
        ];
        args.extend_from_slice(extra);
        self.hosts[i].start_rnetd_with(&args);
    }

    /// The temp dir of the cluster (data dirs and logs).
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
}

/// Removes the etcd data dirs of test processes that died without dropping their
/// [`MultiHost`] (`TMPDIR/rnt<pid>x<n>-etcd-*`).
pub fn sweep_etcd_dirs() {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("rnt") else {
            continue;
        };
        if !name.contains("-etcd-") {
            continue;
        }
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for MultiHost {
    fn drop(&mut self) {
        for c in self.etcd.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        crate::kill_netns_processes(&self.underlay_ns);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.underlay_ns])
            .status();
        // The hosts (rigs) drop after this: their rnetd, containers and namespaces.
    }
}
