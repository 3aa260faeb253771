//! The cgroups that launchers killed with SIGKILL leave behind (`rnet-NAME`, empty) are removed
//! by a later run, off its start's path and at most once a minute: the look reads every
//! machine's cgroup, which at 1000 machines took half a second per run when every run did it.
//! Its own file, so that no other test's rig sweeps the planted cgroups meanwhile.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use rig::{Rig, ok, privileged, wait_until};

/// `rnet-NAME` below this process's own cgroup in the memory hierarchy (where the launcher it
/// starts makes its machines'), or `None` without a v1 memory hierarchy.
fn memory_cgroup(name: &str) -> Option<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.trim_start_matches('/').to_owned())
    })?;
    let base = PathBuf::from("/sys/fs/cgroup/memory").join(rel);
    base.is_dir().then(|| base.join(format!("rnet-{name}")))
}

/// An empty cgroup whose directory looks `age` old, as a killed launcher leaves it.
fn plant(dir: &PathBuf, age: &str) {
    fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    ok(std::process::Command::new("touch")
        .args(["-d", age])
        .arg(dir));
}

/// Removes what is left of the planted cgroups, also when the test fails.
struct Planted(Vec<PathBuf>);

impl Drop for Planted {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = fs::remove_dir(d);
        }
    }
}

#[test]
fn a_killed_launchers_cgroup_is_swept_by_a_later_run_at_most_once_a_minute() {
    if !privileged("a_killed_launchers_cgroup_is_swept_by_a_later_run_at_most_once_a_minute") {
        return;
    }
    let rig = Rig::new();
    let Some(old) = memory_cgroup(&format!("{}old", rig.prefix)) else {
        eprintln!("SKIP: no cgroup v1 memory hierarchy here");
        return;
    };
    let young = memory_cgroup(&format!("{}young", rig.prefix)).expect("same hierarchy");
    let later = memory_cgroup(&format!("{}later", rig.prefix)).expect("same hierarchy");
    let _planted = Planted(vec![old.clone(), young.clone(), later.clone()]);
    plant(&old, "3 minutes ago");
    plant(&young, "now");
    let run = |name: &str| {
        ok(rig.rnet().args([
            "run",
            "--private-network",
            "-M",
            &format!("{}{name}", rig.prefix),
            "--",
            "sleep",
            "1",
        ]))
    };
    run("a");
    assert!(
        wait_until(Duration::from_secs(5), || !old.exists()),
        "the old empty cgroup {} was not swept",
        old.display()
    );
    assert!(
        young.exists(),
        "a young cgroup (a launch in progress) was swept"
    );
    // The next run within the minute does not look again.
    plant(&later, "3 minutes ago");
    run("b");
    assert!(
        later.exists(),
        "a second sweep within the minute: {} is gone",
        later.display()
    );
}
