//! Resource control (`--property=`, `rnet set-property`, `rnet top`) on the machine's own
//! cgroup: a memory limit really stops a process that allocates past it, a limit changed while
//! the machine runs applies, a limit set without `--runtime` is kept beside the image and
//! applies to its next run (and `--runtime` keeps nothing), and the cgroup goes with the
//! machine. The machine here has cgroup
//! v1 controllers (and an empty v2 mount), so the v1 path runs; the test prints which.

use std::fs;
use std::path::Path;
use std::time::Duration;

use rig::{Rig, output, privileged, wait_until};

/// A shell payload that allocates about 200 MB (a shell variable), then says so.
const ALLOCATE: &str = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}";

/// The cgroup interface this machine offers, as the launcher chooses it.
fn version() -> &'static str {
    let offered = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .or_else(|_| fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers"))
        .unwrap_or_default();
    if offered.contains("memory") {
        "v2"
    } else {
        "v1"
    }
}

/// Directories named `rnet-NAME` anywhere in the memory hierarchy.
fn leftover_cgroups(name: &str) -> Vec<String> {
    let out = output(std::process::Command::new("find").args([
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/unified",
        "-maxdepth",
        "6",
        "-type",
        "d",
        "-name",
        &format!("rnet-{name}"),
    ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The cgroup path `proc_cgroup` (the text of a `/proc/PID/cgroup`) gives in the hierarchy
/// holding `controller` (`""`: the v2 one).
fn cgroup_path<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, c, path) = (p.next()?, p.next()?, p.next()?);
        c.split(',').any(|c| c == controller).then_some(path)
    })
}

/// The v1 memory limit (`memory.limit_in_bytes`) of the cgroup named in `proc_cgroup`, the text
/// of a `/proc/PID/cgroup`; `None` without a memory hierarchy or its file.
fn v1_memory_limit(proc_cgroup: &str) -> Option<String> {
    let rel = cgroup_path(proc_cgroup, "memory")?;
    fs::read_to_string(
        Path::new("/sys/fs/cgroup/memory")
            .join(rel.trim_start_matches('/'))
            .join("memory.limit_in_bytes"),
    )
    .ok()
}

#[test]
fn a_memory_limit_stops_an_allocation_and_the_control_survives() {
    if !privileged("a_memory_limit_stops_an_allocation_and_the_control_survives") {
        return;
    }
    eprintln!("cgroup interface here: {}", version());
    let rig = Rig::new();
    let name = format!("{}mem", rig.prefix);
    let out = output(rig.rnet().args([
        "run",
        "--private-network",
        "-M",
        &name,
        "--property=MemoryMax=32M",
        "--",
        "sh",
        "-c",
        ALLOCATE,
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(137),
        "the allocation should be killed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("survived"));
    // The control: the same without a limit.
    let out = output(rig.rnet().args([
        "run",
        "--private-network",
        "-M",
        &name,
        "--",
        "sh",
        "-c",
        ALLOCATE,
    ]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("survived 200000000"),
        "{out:?}"
    );
    assert!(leftover_cgroups(&name).is_empty());
}

/// The payload is in `rnet-NAME` in every hierarchy the launcher writes, from its first
/// instruction: on v1 the child enters them itself (`tasks`), before it execs.
#[test]
fn the_payload_starts_in_its_own_cgroup_in_every_hierarchy() {
    if !privileged("the_payload_starts_in_its_own_cgroup_in_every_hierarchy") {
        return;
    }
    let rig = Rig::new();
    let name = format!("{}cg", rig.prefix);
    let out = output(rig.rnet().args([
        "run",
        "--private-network",
        "-M",
        &name,
        "--property=TasksMax=50",
        "--",
        "cat",
        "/proc/self/cgroup",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let leaf = format!("/rnet-{name}");
    let wanted: &[&str] = if version() == "v1" {
        &["memory", "cpu", "pids"]
    } else {
        &[""]
    };
    for controller in wanted {
        let path = cgroup_path(&text, controller);
        assert!(
            path.is_some_and(|p| p.ends_with(&leaf)),
            "{controller}: {path:?} should end in {leaf}:\n{text}"
        );
    }
    assert!(leftover_cgroups(&name).is_empty());
}

#[test]
fn a_limit_changed_at_run_time_applies_and_top_shows_the_machine() {
    if !privileged("a_limit_changed_at_run_time_applies_and_top_shows_the_machine") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let name = format!("{}rt", rig.prefix);
    let flag = rig.runtime_dir().with_file_name("go");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; {ALLOCATE}",
        flag.display()
    );
    let pid = rig.spawn(rig.rnet().args([
        "run",
        "-n",
        "-M",
        &name,
        "--property=MemoryMax=1G",
        "--property=TasksMax=64",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    let m = rig.wait_machine(&name);
    let leader = m["pid"].as_u64().unwrap();
    let limit_file =
        || v1_memory_limit(&fs::read_to_string(format!("/proc/{leader}/cgroup")).ok()?);
    if version() == "v1" {
        assert_eq!(limit_file().as_deref().map(str::trim), Some("1073741824"));
    }
    let top = output(rig.rnet().args(["top", "--once"]));
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.lines().any(|l| l.starts_with(name.as_str())),
        "rnet top should list {name}:\n{top}"
    );
    // Without --runtime a machine without an image changes too, with a note that nothing is
    // kept; a machines directory of this test's own, empty.
    let machines = rig.runtime_dir().with_file_name("machines");
    let o = output(rig.rnet().arg("--machines-dir").arg(&machines).args([
        "set-property",
        &name,
        "MemoryMax=48M",
    ]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("the change applies to the running machine only"),
        "{err}"
    );
    assert!(!machines.exists(), "nothing written");
    if version() == "v1" {
        assert_eq!(limit_file().as_deref().map(str::trim), Some("50331648"));
    }
    let o = output(
        rig.rnet()
            .args(["set-property", "--runtime", &name, "MemoryMax=32M"]),
    );
    assert!(o.status.success(), "{o:?}");
    if version() == "v1" {
        assert_eq!(limit_file().as_deref().map(str::trim), Some("33554432"));
    }
    fs::write(&flag, "").unwrap();
    let out = rig.wait(pid);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert!(wait_until(Duration::from_secs(5), || leftover_cgroups(
        &name
    )
    .is_empty()));
}

#[test]
fn keep_unit_leaves_the_machine_in_its_callers_cgroup_which_set_property_does_not_touch() {
    if !privileged(
        "keep_unit_leaves_the_machine_in_its_callers_cgroup_which_set_property_does_not_touch",
    ) {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let name = format!("{}ku", rig.prefix);
    let flag = rig.runtime_dir().with_file_name("go-ku");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; echo done",
        flag.display()
    );
    let pid = rig.spawn(rig.rnet().args([
        "run",
        "-n",
        "--keep-unit",
        "-M",
        &name,
        "--",
        "sh",
        "-c",
        &script,
    ]));
    let m = rig.wait_machine(&name);
    let leader = m["pid"].as_u64().unwrap();
    // In every hierarchy the machine is where its caller (this test) is; no rnet-NAME exists.
    let ours = fs::read_to_string("/proc/self/cgroup").unwrap();
    let its = fs::read_to_string(format!("/proc/{leader}/cgroup")).unwrap();
    assert_eq!(its, ours);
    assert!(leftover_cgroups(&name).is_empty());
    // set-property refuses it, in one line, rather than change the caller's cgroup.
    let before = v1_memory_limit(&ours);
    let o = output(
        rig.rnet()
            .args(["set-property", "--runtime", &name, "MemoryMax=32M"]),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("runs in its caller's cgroup (--keep-unit)"),
        "{err}"
    );
    assert_eq!(
        v1_memory_limit(&ours),
        before,
        "the caller's cgroup was changed"
    );
    // top shows no figures for it (they would be its caller's).
    let top = output(rig.rnet().args(["top", "--once"]));
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(!top.lines().any(|l| l.starts_with(name.as_str())), "{top}");
    fs::write(&flag, "").unwrap();
    let out = rig.wait(pid);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    // With a property it is refused before anything runs.
    let o = output(rig.rnet().args([
        "run",
        "-n",
        "--keep-unit",
        "--property=MemoryMax=1G",
        "--",
        "true",
    ]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("--keep-unit"), "{err}");
}

#[test]
fn bad_properties_are_refused_in_one_line() {
    if !privileged("bad_properties_are_refused_in_one_line") {
        return;
    }
    let rig = Rig::new();
    for (args, want) in [
        (
            &[
                "run",
                "--private-network",
                "--property=MemoryMax=lots",
                "--",
                "true",
            ][..],
            "invalid property \"MemoryMax=lots\"",
        ),
        (
            &[
                "run",
                "--private-network",
                "--property=Nice=3",
                "--",
                "true",
            ],
            "unknown property \"Nice\"",
        ),
        (
            &["run", "--property=MemoryMax=1G", "--", "true"],
            "--property needs a container process",
        ),
        (
            &["set-property", "--runtime", "nosuchmachine", "MemoryMax=1G"],
            "no running machine",
        ),
    ] {
        let out = output(rig.rnet().args(args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// `rnet --machines-dir DIR ARGS`: stdout, stderr, success.
fn rnet_in(rig: &Rig, machines: &Path, args: &[&str]) -> (bool, String, String) {
    let o = output(rig.rnet().arg("--machines-dir").arg(machines).args(args));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_limit_set_without_runtime_is_kept_for_the_images_next_run() {
    let test = "a_limit_set_without_runtime_is_kept_for_the_images_next_run";
    let Some(bb) = rig::tree::static_busybox(test) else {
        return;
    };
    if !privileged(test) {
        return;
    }
    eprintln!("cgroup interface here: {}", version());
    let mut rig = Rig::new();
    let machines = rig.runtime_dir().with_file_name("machines");
    fs::create_dir_all(&machines).unwrap();
    let name = format!("{}img", rig.prefix);
    let image = machines.join(&name);
    let tree = rig::tree::Tree::new(&bb);
    output(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(tree.path())
            .arg(&image),
    );
    let kept = machines.join(format!("{name}.rnet-properties"));
    let image_arg = image.display().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "-D", &image_arg, "--private-network"];
        args.extend(extra);
        args.extend(["--", "/bin/sh", "-c", ALLOCATE]);
        output(rig.rnet().args(&args))
    };
    // The control: no limit kept, the allocation survives.
    let out = run(&[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("survived 200000000"),
        "{out:?}"
    );
    // Not running, an image: kept beside it.
    let (ok, _, err) = rnet_in(&rig, &machines, &["set-property", &name, "MemoryMax=32M"]);
    assert!(ok, "{err}");
    assert_eq!(
        fs::read_to_string(&kept).unwrap(),
        "# Resource properties of this image, kept by `rnet set-property`\nMemoryMax=33554432\n"
    );
    // The next run of the image is limited...
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
    // ...unless the command line says otherwise for that key.
    let out = run(&["--property=MemoryMax=1G"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("survived 200000000"),
        "{out:?}"
    );
    // --runtime on the running machine changes it and keeps nothing.
    let pid = rig.spawn(rig.rnet().args([
        "run",
        "-D",
        &image_arg,
        "--private-network",
        "--",
        "/bin/sleep",
        "60",
    ]));
    let mut changed = (false, String::new());
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (ok, _, err) = rnet_in(
                &rig,
                &machines,
                &["set-property", "--runtime", &name, "TasksMax=50"],
            );
            changed = (ok, err);
            ok
        }),
        "{changed:?}"
    );
    let (ok, _, err) = rnet_in(&rig, &machines, &["set-property", &name, "CPUWeight=50"]);
    assert!(ok, "{err}");
    rig.signal(pid, nix::sys::signal::Signal::SIGTERM);
    rig.wait(pid);
    assert_eq!(
        fs::read_to_string(&kept).unwrap(),
        "# Resource properties of this image, kept by `rnet set-property`\nMemoryMax=33554432\nCPUWeight=50\n",
        "--runtime keeps nothing; a running image's change is kept"
    );
    // Bad input: one line, nothing written.
    let before = fs::read_to_string(&kept).unwrap();
    for (args, want) in [
        (
            vec!["set-property", &name, "MemoryMax=lots"],
            "invalid property \"MemoryMax=lots\"",
        ),
        (
            vec!["set-property", "nosuchmachine", "MemoryMax=1G"],
            "no running machine nosuchmachine and no image nosuchmachine in",
        ),
    ] {
        let (ok, _, err) = rnet_in(&rig, &machines, &args);
        assert!(!ok, "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(fs::read_to_string(&kept).unwrap(), before);
    assert!(!machines.join("nosuchmachine.rnet-properties").exists());
    // The kept properties follow the image.
    let moved = format!("{name}2");
    let (ok, _, err) = rnet_in(&rig, &machines, &["rename", &name, &moved]);
    assert!(ok, "{err}");
    assert!(!kept.exists());
    assert!(machines.join(format!("{moved}.rnet-properties")).exists());
    let (ok, _, err) = rnet_in(&rig, &machines, &["remove", &moved]);
    assert!(ok, "{err}");
    assert_eq!(fs::read_dir(&machines).unwrap().count(), 0);
    assert!(leftover_cgroups(&name).is_empty());
}
