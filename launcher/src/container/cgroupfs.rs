//! `/sys/fs/cgroup` for a booted systemd (`-b`), as systemd-nspawn gives one to a container on
//! a host with cgroup v1 controllers (`src/nspawn/nspawn-cgroup.c`: `mount_cgroups()`,
//! `mount_legacy_cgns_supported()`; `src/shared/mount-setup.c`), see
//! `docs/architecture.md#a-booted-systemd`.
//!
//! The launcher puts the container's first process in a cgroup `rnet-NAME` of its own in the
//! `name=systemd` hierarchy and in the cgroup v2 one (the hierarchies systemd manages; the
//! resource controllers' `rnet-NAME` is `crate::cgroup`'s). The child then unshares a cgroup
//! namespace, so each hierarchy's root is its own cgroup, and mounts a tmpfs on
//! `/sys/fs/cgroup` with every hierarchy the host has: the controllers read-only, `systemd`
//! and `unified` writable (systemd creates its units' cgroups there), the tmpfs read-only.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

/// A hierarchy of the host: its mount point and this process's cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    /// `name=systemd`, a v1 controller list (`cpu,cpuacct`), or empty for cgroup v2.
    controllers: String,
    /// Where the host mounts it.
    mount: PathBuf,
    /// This process's cgroup in it (`/proc/self/cgroup`).
    path: String,
}

/// The hierarchies mounted on the host, from `/proc/self/mountinfo` and `/proc/self/cgroup`.
fn hierarchies(mountinfo: &str, proc_cgroup: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let mount = mountinfo.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let opts = post.nth(1)?;
            let point = pre.split(' ').nth(4)?;
            let ok = if controllers.is_empty() {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && {
                    let want: Vec<&str> = controllers.split(',').collect();
                    let have: Vec<&str> = opts
                        .split(',')
                        .filter(|o| *o != "rw" && *o != "ro" && !o.starts_with("release_agent"))
                        .collect();
                    want.iter().all(|w| have.contains(w))
                        && have
                            .iter()
                            .all(|h| want.contains(h) || *h == "xattr" || *h == "none")
                }
            };
            ok.then(|| PathBuf::from(point))
        });
        if let Some(mount) = mount {
            out.push(Hierarchy {
                controllers: controllers.to_owned(),
                mount,
                path: path.to_owned(),
            });
        }
    }
    out
}

fn read_hierarchies() -> Vec<Hierarchy> {
    hierarchies(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
    )
}

/// The hierarchies systemd manages: `name=systemd` and v2.
fn managed(h: &Hierarchy) -> bool {
    h.controllers == "name=systemd" || h.controllers.is_empty()
}

/// The container's cgroups in the hierarchies systemd manages, removed (with what systemd made
/// below them) when dropped.
#[derive(Debug, Default)]
pub struct SystemdCgroups {
    dirs: Vec<PathBuf>,
}

impl SystemdCgroups {
    /// Creates `rnet-MACHINE` below the launcher's cgroup in each managed hierarchy and moves
    /// `pid` into it; with a user namespace, its root (host UID `owner`) owns the cgroups.
    pub fn create(machine: &str, pid: i32, owner: Option<u32>) -> Result<Self, String> {
        let mut made = Self::default();
        for h in read_hierarchies().iter().filter(|h| managed(h)) {
            let dir = h
                .mount
                .join(h.path.trim_start_matches('/'))
                .join(format!("rnet-{machine}"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating the cgroup {}: {e}", dir.display()))?;
            made.dirs.push(dir.clone());
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .map_err(|e| format!("moving the container into {}: {e}", dir.display()))?;
            if let Some(uid) = owner {
                // Delegation (cgroup-v2.rst, "Delegation Containment"): the directory and its
                // files, as systemd chowns a delegated unit's cgroup.
                let files = std::fs::read_dir(&dir)
                    .map_err(|e| format!("reading {}: {e}", dir.display()))?;
                for p in std::iter::once(dir.clone()).chain(files.flatten().map(|e| e.path())) {
                    std::os::unix::fs::chown(&p, Some(uid), Some(uid))
                        .map_err(|e| format!("chown {}: {e}", p.display()))?;
                }
            }
        }
        if made.dirs.is_empty() {
            return Err("no name=systemd or cgroup v2 hierarchy is mounted on this host".into());
        }
        Ok(made)
    }
}

/// Removes `dir` and the cgroups below it, deepest first.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    // The last processes may still be exiting: a few tries.
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Drop for SystemdCgroups {
    fn drop(&mut self) {
        for d in &self.dirs {
            remove_tree(d);
        }
    }
}

/// In the child, after the launcher placed it: a cgroup namespace whose roots are its cgroups.
pub fn unshare_cgroupns() -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("creating the container's cgroup namespace: {e}"))
}

/// Mounts `/sys/fs/cgroup` in the new root `new` (whose `/sys` is mounted, read-only).
pub fn mount_all(sys_fs_cgroup: &Path) -> Result<(), String> {
    let m = |src: &str, target: &Path, fstype: &str, flags: MsFlags, data: Option<&str>| {
        mount(Some(src), target, Some(fstype), flags, data).map_err(|e| {
            format!(
                "mounting {fstype} ({}) on {}: {}",
                data.unwrap_or(""),
                target.display(),
                e.desc()
            )
        })
    };
    let nsn = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    m("tmpfs", sys_fs_cgroup, "tmpfs", nsn, Some("mode=0755"))?;
    for h in read_hierarchies() {
        let (name, fstype, data) = match h.controllers.as_str() {
            "" => ("unified".to_owned(), "cgroup2", None),
            "name=systemd" => (
                "systemd".to_owned(),
                "cgroup",
                Some("none,name=systemd".to_owned()),
            ),
            c => (c.to_owned(), "cgroup", Some(c.to_owned())),
        };
        let dir = sys_fs_cgroup.join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut flags = nsn;
        if !managed(&h) {
            flags |= MsFlags::MS_RDONLY;
        }
        m("cgroup", &dir, fstype, flags, data.as_deref())?;
        // cpu,cpuacct is also reached as cpu and cpuacct (mount-setup.c's symlinks).
        if h.controllers.contains(',') && !h.controllers.starts_with("name=") {
            for c in h.controllers.split(',') {
                let _ = std::os::unix::fs::symlink(&name, sys_fs_cgroup.join(c));
            }
        }
    }
    mount(
        None::<&str>,
        sys_fs_cgroup,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nsn,
        Some("mode=0755"),
    )
    .map_err(|e| format!("making /sys/fs/cgroup read-only: {}", e.desc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_from_mountinfo_and_proc_cgroup() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let cgroup = "9:name=systemd:/\n4:memory:/a/b\n1:cpu,cpuacct:/\n3:cpuset:/\n0::/x\n";
        let h = hierarchies(mountinfo, cgroup);
        let names: Vec<(&str, &str, &str)> = h
            .iter()
            .map(|h| {
                (
                    h.controllers.as_str(),
                    h.mount.to_str().unwrap(),
                    h.path.as_str(),
                )
            })
            .collect();
        // cpuset is not mounted: left out.
        assert_eq!(
            names,
            [
                ("name=systemd", "/sys/fs/cgroup/systemd", "/"),
                ("memory", "/sys/fs/cgroup/memory", "/a/b"),
                ("cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct", "/"),
                ("", "/sys/fs/cgroup/unified", "/x"),
            ]
        );
        assert_eq!(h.iter().filter(|h| managed(h)).count(), 2);
    }
}
