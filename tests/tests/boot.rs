//! End-to-end test of `rnet run -D TREE -b -n` with a real distribution tree: Debian bookworm
//! made by debootstrap (`--variant=minbase`, systemd, systemd-sysv, dbus, iproute2), cached in
//! `/var/cache/rnet-tests/debian-bookworm` between runs (skipped with the reason when the
//! archive cannot be reached or debootstrap is missing). systemd boots as PID 1 to
//! `multi-user.target`, its own systemd-networkd configures `host0` from rnetd's DHCP server
//! with the address rnetd reserved for the machine, and `rnet stop` powers it off cleanly.
//! The tree is booted with `-x`, so the cache stays as debootstrap made it (plus our units).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rig::{Rig, output, privileged, wait_until};

const CACHE: &str = "/var/cache/rnet-tests/debian-bookworm";
/// How long debootstrap may take (CI downloads about 60 MB once).
const DEBOOTSTRAP_LIMIT: &str = "900";
/// Bumped when [`configure`] changes, so a cached tree is configured again.
const CONFIGURED: &str = ".rnet-configured-1";

/// systemd-networkd's configuration of host0 (systemd ships `80-container-host0.network`
/// only with systemd-networkd's own package defaults in newer releases; write ours).
const HOST0_NETWORK: &str = "[Match]\nName=host0\n\n[Network]\nDHCP=yes\n";

/// Reports to the test's `/out` once the system is up (after `multi-user.target` and once
/// networkd says host0 is configured), and again when it stops (at power-off).
const REPORT_UNIT: &str = "[Unit]
Description=Report to the rnet test
After=multi-user.target systemd-networkd.service
ConditionPathIsDirectory=/out

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c '/lib/systemd/systemd-networkd-wait-online -i host0 --timeout=90; echo $? > /out/wait-online; ip -4 -o addr show host0 > /out/addr; ip route > /out/route; systemctl is-active multi-user.target > /out/target; readlink /proc/1/exe > /out/pid1; touch /etc/rnet-was-here; echo up > /out/done'
ExecStop=/bin/sh -c 'echo stopping > /out/stopped'

[Install]
WantedBy=multi-user.target
";

fn skip(test: &str, reason: &str) {
    eprintln!("SKIP {test}: {reason}");
}

/// The cached Debian tree, made (and configured) if needed; `None` with a SKIP line when it
/// cannot be.
fn debian_tree(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(CACHE);
    if !dir.exists() {
        if Command::new("debootstrap")
            .arg("--version")
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            skip(
                test,
                "needs debootstrap (Debian's debootstrap package) to make the Debian tree",
            );
            return None;
        }
        let mirror = std::env::var("RNET_DEBIAN_MIRROR")
            .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
        let partial = PathBuf::from(format!("{CACHE}.partial-{}", std::process::id()));
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        eprintln!("{test}: debootstrap bookworm from {mirror} into {CACHE} (once)");
        let out = output(
            Command::new("timeout")
                .arg(DEBOOTSTRAP_LIMIT)
                .args([
                    "debootstrap",
                    "--variant=minbase",
                    "--include=systemd,systemd-sysv,dbus,iproute2",
                    "bookworm",
                ])
                .arg(&partial)
                .arg(&mirror),
        );
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&partial);
            let log = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            skip(
                test,
                &format!(
                    "debootstrap from {mirror} failed (is the archive reachable?): {}",
                    rig::tail(&log, 5)
                ),
            );
            return None;
        }
        // Another test process may have been quicker: keep its tree.
        if std::fs::rename(&partial, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
    }
    if !dir.join(CONFIGURED).exists() {
        configure(&dir);
    }
    Some(dir)
}

/// networkd enabled with DHCP on host0, the report unit enabled.
fn configure(root: &Path) {
    let etc = root.join("etc/systemd");
    for d in [
        "network",
        "system/multi-user.target.wants",
        "system/sockets.target.wants",
    ] {
        std::fs::create_dir_all(etc.join(d)).unwrap();
    }
    std::fs::write(etc.join("network/80-host0.network"), HOST0_NETWORK).unwrap();
    std::fs::write(etc.join("system/rnet-report.service"), REPORT_UNIT).unwrap();
    for (link, target) in [
        (
            "system/multi-user.target.wants/systemd-networkd.service",
            "/lib/systemd/system/systemd-networkd.service",
        ),
        (
            "system/sockets.target.wants/systemd-networkd.socket",
            "/lib/systemd/system/systemd-networkd.socket",
        ),
        (
            "system/multi-user.target.wants/rnet-report.service",
            "/etc/systemd/system/rnet-report.service",
        ),
    ] {
        let _ = std::fs::remove_file(etc.join(link));
        std::os::unix::fs::symlink(target, etc.join(link)).unwrap();
    }
    std::fs::write(root.join(CONFIGURED), "").unwrap();
}

/// The cgroups of `machine` the launcher made for systemd, if any are left.
fn leftover_cgroups(machine: &str) -> Vec<String> {
    ["systemd", "unified"]
        .iter()
        .filter_map(|h| {
            let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
            let key = if *h == "unified" {
                "0::"
            } else {
                "name=systemd:"
            };
            let path = own
                .lines()
                .find_map(|l| l.split_once(key).map(|(_, p)| p.to_owned()))?;
            let d = Path::new("/sys/fs/cgroup")
                .join(h)
                .join(path.trim_start_matches('/'))
                .join(format!("rnet-{machine}"));
            d.exists().then(|| d.display().to_string())
        })
        .collect()
}

/// Boots the tree as `machine` with `extra` options, checks systemd reached
/// `multi-user.target` with host0 configured by networkd, stops it with `rnet stop`; returns
/// the machine as rnetd listed it and the launcher's stderr. `None`: skipped (said why).
fn boot_and_stop(
    t: &str,
    rig: &mut Rig,
    tree: &Path,
    machine: &str,
    extra: &[&str],
) -> Option<(rig::Value, String, u32)> {
    let out_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let od = out_dir.path().to_owned();
    let mut cmd = rig.rnet();
    cmd.args(["run", "-D", &tree.display().to_string(), "-b", "-x", "-n"])
        .args(["-M", machine, "--console=passive"])
        .args(["--bind", &format!("{}:/out", od.display())])
        .args(extra);
    let pid = rig.spawn(&mut cmd);
    let read = |f: &str| std::fs::read_to_string(od.join(f)).unwrap_or_default();
    let up = wait_until(Duration::from_secs(240), || od.join("done").exists());
    if !up {
        rig.signal(pid, nix::sys::signal::Signal::SIGKILL);
        let out = rig.wait(pid);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if err.contains("no name=systemd or cgroup v2 hierarchy is mounted") {
            skip(
                t,
                &format!("systemd needs a cgroup hierarchy to manage: {err}"),
            );
            return None;
        }
        panic!(
            "{machine}: systemd did not report multi-user.target with host0 configured (launcher: {:?}; wait-online: {:?}); rnetd log:\n{}",
            err,
            read("wait-online"),
            rig::tail(&rig.log(), 40)
        );
    }
    let m = rig.wait_machine(machine);
    eprintln!("{machine}: up; host0: {}", read("addr").trim());
    // The container's PID 1 as the host sees it: its UID (the range's root with -U).
    let pid1 = m["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid1}/status")).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert_eq!(read("target").trim(), "active");
    assert_eq!(read("pid1").trim(), "/usr/lib/systemd/systemd");
    assert_eq!(read("wait-online").trim(), "0", "{}", read("addr"));
    // host0 has the address rnetd reserved for the machine, from systemd-networkd's DHCP
    // client (a DUID-based client identifier, not 0x01+MAC), and the default route.
    let want = m["container_address"].as_str().unwrap().to_owned();
    assert!(
        read("addr").contains(&format!("inet {want}/")),
        "{} (want {want}; {m})",
        read("addr")
    );
    assert!(
        read("route").starts_with("default via"),
        "{}",
        read("route")
    );
    // rnet stop: SIGRTMIN+3 to systemd, which powers off (its units stop): exit code 0.
    let stop = output(rig.rnet().args(["stop", machine]));
    assert!(stop.status.success(), "{stop:?}");
    let out = rig.wait(pid);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(read("stopped").trim(), "stopping");
    rig.assert_all_gone();
    assert_eq!(leftover_cgroups(machine), Vec::<String>::new());
    // -x: the cache is as it was.
    assert!(!tree.join("etc/rnet-was-here").exists());
    Some((m, err, uid))
}

#[test]
fn debian_boots_systemd_networked_by_networkd_and_stops_cleanly() {
    let t = "debian_boots_systemd_networked_by_networkd_and_stops_cleanly";
    if !privileged(t) {
        return;
    }
    let Some(tree) = debian_tree(t) else { return };
    let mut rig = Rig::new();
    rig.start_rnetd();
    let Some((_, _, uid)) = boot_and_stop(t, &mut rig, &tree, "debian", &[]) else {
        return;
    };
    assert_eq!(uid, 0);
    // The same in a user namespace (-U): systemd runs as the picked range's root; the tree is
    // idmapped here (ext4), so the cache stays owned by 0.
    let Some((_, err, uid)) = boot_and_stop(t, &mut rig, &tree, "debian-u", &["-U"]) else {
        return;
    };
    let base: u32 = err
        .split("are host UIDs ")
        .nth(1)
        .and_then(|r| r.split('-').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no user namespace note in {err:?}"));
    assert_eq!(uid, base);
    assert!(base >= 0x0008_0000, "{base}");
    if err.contains("idmapped") {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(tree.join("usr/bin")).unwrap().uid(), 0);
    }
}
