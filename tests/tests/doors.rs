//! End-to-end tests of the doors for other runtimes, with the real runtimes: named namespaces
//! driven by systemd-nspawn, the OCI hook driven by crun (and runc), the CNI plugin driven by
//! Podman. Traffic is checked at the far end (the uplink namespace), and everything is gone
//! afterwards.

use std::fs;
use std::path::Path;
use std::process::Command;

use nix::sys::signal::Signal;
use rig::{HOST_ADDR, Rig, UPLINK_ADDR, netprobe, ok, output, privileged};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The peer address a netprobe answer reports (without the port).
fn from_addr(answer: &str) -> String {
    let peer = answer
        .trim()
        .strip_prefix("FROM ")
        .unwrap_or_else(|| panic!("bad answer {answer:?}"));
    peer.rsplit_once(':').unwrap().0.to_owned()
}

/// Whether `program` is installed; a test without it skips visibly (a failure under CI's
/// `RNET_REQUIRE_PRIVILEGED=1`, which installs `scripts/packages.txt`).
fn have(test: &str, program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()));
    if !found {
        if std::env::var("RNET_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{test}: needs {program} (scripts/packages.txt), and RNET_REQUIRE_PRIVILEGED=1");
        }
        eprintln!("SKIP {test}: needs {program}");
    }
    found
}

/// Copies `bin` and the shared libraries it loads into `root` at the same paths.
fn copy_with_libs(bin: &Path, root: &Path, to: &str) {
    let dest = root.join(to.trim_start_matches('/'));
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::copy(bin, &dest).unwrap();
    let ldd = output(Command::new("ldd").arg(bin));
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let d = root.join(p.trim_start_matches('/'));
            fs::create_dir_all(d.parent().unwrap()).unwrap();
            if !d.exists() {
                fs::copy(p, &d).unwrap();
            }
        }
    }
}

/// A minimal OS tree: busybox (with `sh`) and netprobe with their libraries, `/usr` and an
/// os-release (systemd-nspawn checks both), mount points for the runtimes.
fn os_tree(root: &Path) {
    for d in ["usr/bin", "etc", "proc", "sys", "dev", "run", "tmp", "var"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = fs::canonicalize("/bin/busybox").expect("busybox");
    copy_with_libs(&busybox, root, "/bin/busybox");
    copy_with_libs(&netprobe(), root, "/bin/netprobe");
    for applet in ["sh", "ip", "cat", "sleep", "wget"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(root.join("etc/os-release"), "ID=rnettest\nNAME=rnettest\n").unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
}

/// Removes a named namespace left by a failed test (`ip netns del`: unmount and remove).
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if Path::new("/run/netns").join(&self.0).exists() {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
}

/// Removes what systemd-nspawn leaves in `/run` for machine `name` (this machine's `/run` is
/// not a tmpfs that a reboot would clear).
struct NspawnGuard(String);

impl Drop for NspawnGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&self.0));
        let _ = fs::remove_file(Path::new("/run/systemd/nspawn/unix-export").join(&self.0));
    }
}

/// `systemd-nspawn` running `args` in `tree` inside the named namespace `netns`: as this
/// machine needs it (no machined: `--register=no`; no unit of its own: `--keep-unit`).
fn nspawn(rig: &Rig, machine: &str, tree: &Path, netns: &str) -> Command {
    let mut c = rig.in_host("systemd-nspawn");
    c.args([
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--pipe",
        "-M",
        machine,
    ])
    .arg(format!("--network-namespace-path=/run/netns/{netns}"))
    .arg("-D")
    .arg(tree);
    c
}

#[test]
fn a_named_namespace_serves_systemd_nspawn_and_survives_an_rnetd_restart() {
    let test = "a_named_namespace_serves_systemd_nspawn_and_survives_an_rnetd_restart";
    if !privileged(test) || !have(test, "systemd-nspawn") {
        return;
    }
    let mut rig = Rig::new();
    let name = format!("{}n1", rig.prefix);
    let _ns_guard = NetnsGuard(name.clone());
    let machine = format!("{}m1", rig.prefix);
    let _nspawn_guard = NspawnGuard(machine.clone());
    let tree = tempfile::tempdir().unwrap();
    os_tree(tree.path());
    rig.start_rnetd();
    rig.spawn_ready(rig.in_uplink(netprobe()).args(["serve", "tcp:7000"]));

    let out = ok(rig.rnet().args(["netns", "create", &name, "-p", "8080:80"]));
    assert!(out.contains(&format!("/run/netns/{name}")), "{out}");
    // Seen by `ip netns`, listed by rnet, held (pid 0, the path kept).
    let listed = ok(Command::new("ip").args(["netns", "list"]));
    assert!(listed.lines().any(|l| l.starts_with(&name)), "{listed}");
    let held: Vec<serde_json::Value> =
        serde_json::from_str(&ok(rig.rnet().args(["netns", "list", "--json"]))).unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["pid"], 0);
    assert_eq!(held[0]["held"]["netns"], format!("/run/netns/{name}"));
    // A second create of the same name is refused and changes nothing.
    let again = output(rig.rnet().args(["netns", "create", &name]));
    assert!(!again.status.success());
    assert_eq!(
        stderr(&again).trim(),
        format!("rnet: /run/netns/{name} already exists")
    );

    // The real systemd-nspawn in that namespace reaches the uplink, masqueraded.
    let reach = |rig: &Rig| {
        let out = output(nspawn(rig, &machine, tree.path(), &name).args([
            "/bin/netprobe",
            "connect",
            "tcp",
            UPLINK_ADDR,
            "7000",
        ]));
        assert!(
            out.status.success(),
            "nspawn: {}\n{}",
            stderr(&out),
            rig.log()
        );
        assert_eq!(from_addr(&String::from_utf8_lossy(&out.stdout)), HOST_ADDR);
    };
    reach(&rig);

    // rnetd restarts: the namespace is adopted, not torn down.
    rig.stop_rnetd(Signal::SIGTERM);
    rig.start_rnetd();
    assert_eq!(rig.machines().len(), 1, "{}", rig.log());
    reach(&rig);

    // Reached on the published port from the uplink.
    let srv = rig.spawn_ready(nspawn(&rig, &machine, tree.path(), &name).args([
        "/bin/netprobe",
        "serve",
        "tcp:80",
    ]));
    let a = ok(rig
        .in_uplink(netprobe())
        .args(["connect", "tcp", HOST_ADDR, "8080"]));
    assert_eq!(from_addr(&a), UPLINK_ADDR);
    // SIGTERM: nspawn kills the container's PID 1 (SIGKILL would orphan it, holding the pipe).
    rig.signal(srv, Signal::SIGTERM);
    let _ = rig.wait(srv);

    // Deleted: the attachment, the bind mount and the file go.
    ok(rig.rnet().args(["netns", "delete", &name]));
    assert!(!Path::new("/run/netns").join(&name).exists());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&name), "a bind mount is left");
    rig.assert_all_gone();
    let again = output(rig.rnet().args(["netns", "delete", &name]));
    assert!(!again.status.success());
    assert!(stderr(&again).contains(&format!("no named namespace {name} is held")));
}

#[test]
fn a_held_namespace_whose_path_went_is_removed_at_restart() {
    let test = "a_held_namespace_whose_path_went_is_removed_at_restart";
    if !privileged(test) {
        return;
    }
    let mut rig = Rig::new();
    let name = format!("{}n2", rig.prefix);
    let _ns_guard = NetnsGuard(name.clone());
    rig.start_rnetd();
    ok(rig.rnet().args(["netns", "create", &name]));
    assert_eq!(rig.machines().len(), 1);
    rig.stop_rnetd(Signal::SIGTERM);
    // Removed behind rnetd's back (the veth goes with the namespace).
    ok(Command::new("ip").args(["netns", "del", &name]));
    rig.start_rnetd();
    rig.assert_all_gone();
}
