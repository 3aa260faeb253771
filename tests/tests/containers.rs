//! End-to-end tests of `rnet run -D`: containers in an OS tree built by the test from a static
//! busybox (Debian's busybox-static). PID numbering, hostname, environment, read-only paths,
//! what the container may not do (device nodes, modules, the clock, the host's interfaces),
//! capabilities by network mode, reboot and poweroff, binds, tmpfs, users, ephemeral runs,
//! `--boot` with busybox init taking its lease from rnetd, `rnet stop`, exit codes, bad input;
//! and after each: no mount of the tree left on the host.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rig::tree::{Tree, static_busybox};
use rig::{Rig, output, privileged, wait_until};

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `rnet run -D TREE ARGS -- sh -c SCRIPT` in the rig's host namespace.
fn run_sh(rig: &Rig, tree: &Tree, args: &[&str], script: &str) -> Output {
    output(
        rig.rnet()
            .args(["run", "-D", &tree.arg()])
            .args(args)
            .args(["--", "/bin/sh", "-c", script]),
    )
}

fn field<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in:\n{stdout}"))
}

/// The host's capability bounding set (the container's is nspawn's list within it).
fn host_cap_bnd() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// nspawn's default retain set (`arg_caps_retain`), and CAP_NET_ADMIN (12).
const NSPAWN_CAPS: u64 = 0xfdec_afff;
const CAP_NET_ADMIN: u64 = 1 << 12;

#[test]
fn pid_numbering_hostname_and_environment() {
    let t = "pid_numbering_hostname_and_environment";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    let rig = Rig::new();
    let script = "echo pid=$$; echo ppid=$PPID; echo host=$(hostname); \
                  echo init=$(cat /proc/1/comm); echo env=$container/$FOO/$HOME; \
                  echo uuid=$container_uuid; echo manager=$(cat /run/host/container-manager); \
                  echo hostuuid=$(cat /run/host/container-uuid); echo cwd=$(pwd)";
    let out = run_sh(&rig, &tree, &["-M", "box1", "-E", "FOO=bar"], script);
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    // rnet's init is PID 1 (the launcher's code, hence its name), the payload PID 2.
    assert_eq!(field(&so, "pid"), "2");
    assert_eq!(field(&so, "ppid"), "1");
    assert_eq!(field(&so, "init"), "rnet");
    assert_eq!(field(&so, "host"), "box1");
    assert_eq!(field(&so, "env"), "rnet/bar//root");
    assert_eq!(field(&so, "manager"), "rnet");
    assert_eq!(field(&so, "uuid"), field(&so, "hostuuid"));
    assert_eq!(field(&so, "uuid").len(), 36);
    assert_eq!(field(&so, "cwd"), "/root");

    let out = run_sh(
        &rig,
        &tree,
        &["--as-pid1", "--hostname", "other"],
        "echo pid=$$; echo host=$(hostname)",
    );
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert_eq!(field(&so, "pid"), "1");
    assert_eq!(field(&so, "host"), "other");

    // A descriptor the launcher inherited does not reach the payload (nspawn closes them too).
    let rnet = rig.rnet();
    let line: Vec<String> = std::iter::once(rnet.get_program())
        .chain(rnet.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let out = output(Command::new("sh").arg("-c").arg(format!(
        "exec 7</etc/hostname; {} run -D {} -- /bin/sh -c 'echo fds=$(ls /proc/self/fd | tr \"\\n\" ,)'",
        line.join(" "),
        tree.arg()
    )));
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert_eq!(field(&so, "fds"), "0,1,2,3,", "{so}");

    // The payload's exit code is the launcher's; a payload killed by a signal gives 128+N.
    assert_eq!(run_sh(&rig, &tree, &[], "exit 7").status.code(), Some(7));
    assert_eq!(
        run_sh(&rig, &tree, &[], "kill -9 $$").status.code(),
        Some(137)
    );
    // Our init reaps orphans and ends with the payload: a background sleeper does not hold it.
    let out = run_sh(&rig, &tree, &[], "sleep 1000 & exit 3");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn read_only_paths_and_what_a_container_may_not_do() {
    let t = "read_only_paths_and_what_a_container_may_not_do";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    let rig = Rig::new();
    std::fs::write(tree.path().join("srv/x.ko"), vec![0u8; 4096]).unwrap();
    let before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let script = "echo x > /proc/sys/kernel/hostname 2>/dev/null; echo procsys=$?; \
                  echo x > /sys/kernel/uevent_helper 2>/dev/null; echo sys=$?; \
                  mknod /tmp/null c 1 3 2>&1; echo mknod=$?; \
                  mknod /tmp/disk b 8 0 2>&1; echo mknodb=$?; \
                  mknod /tmp/fifo p; echo fifo=$?; \
                  insmod /srv/x.ko 2>&1; echo insmod=$?; \
                  date -s 2001-01-01 2>&1; echo year=$(date +%Y); \
                  grep -E 'CapBnd|CapEff|NoNewPrivs|^Seccomp:' /proc/self/status; \
                  ip link set lo down 2>&1; echo iplink=$?";
    let out = run_sh(&rig, &tree, &[], script);
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert_eq!(field(&so, "procsys"), "1", "{so}");
    assert_eq!(field(&so, "sys"), "1", "{so}");
    assert_eq!(field(&so, "mknod"), "1", "{so}");
    assert_eq!(field(&so, "mknodb"), "1", "{so}");
    assert!(
        so.contains("mknod: /tmp/null: Operation not permitted"),
        "{so}"
    );
    assert_eq!(field(&so, "fifo"), "0", "{so}");
    assert_ne!(field(&so, "insmod"), "0", "{so}");
    assert!(
        so.contains("insmod: can't insert '/srv/x.ko': Operation not permitted"),
        "{so}"
    );
    assert!(
        so.contains("can't set date: Operation not permitted"),
        "{so}"
    );
    assert_ne!(field(&so, "year"), "2001");
    let bnd = host_cap_bnd();
    assert!(
        so.contains(&format!("CapBnd:\t{:016x}", NSPAWN_CAPS & bnd)),
        "{so}"
    );
    assert!(
        so.contains(&format!("CapEff:\t{:016x}", NSPAWN_CAPS & bnd)),
        "{so}"
    );
    assert!(so.contains("NoNewPrivs:\t1"), "{so}");
    assert!(so.contains("Seccomp:\t2"), "{so}");
    // On the host's network (the rig's host namespace here), no CAP_NET_ADMIN.
    assert!(so.contains("SIOCSIFFLAGS: Operation not permitted"), "{so}");
    assert_ne!(field(&so, "iplink"), "0", "{so}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        before
    );

    // With a private network: CAP_NET_ADMIN over its own interfaces, /proc/sys/net writable.
    let out = run_sh(
        &rig,
        &tree,
        &["--private-network", "--no-new-privileges=no"],
        "grep -E 'CapBnd|NoNewPrivs' /proc/self/status; ip link set lo down; echo iplink=$?; \
         echo 0 > /proc/sys/net/ipv4/ip_forward; echo netsys=$?; \
         echo x > /proc/sys/kernel/hostname 2>/dev/null; echo procsys=$?",
    );
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert!(
        so.contains(&format!(
            "CapBnd:\t{:016x}",
            (NSPAWN_CAPS | CAP_NET_ADMIN) & bnd
        )),
        "{so}"
    );
    assert!(so.contains("NoNewPrivs:\t0"), "{so}");
    assert_eq!(field(&so, "iplink"), "0", "{so}{se}");
    assert_eq!(field(&so, "netsys"), "0", "{so}{se}");
    assert_eq!(field(&so, "procsys"), "1", "{so}");
}

#[test]
fn reboot_and_poweroff_end_only_the_container() {
    let t = "reboot_and_poweroff_end_only_the_container";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    let rig = Rig::new();
    // Belt and braces: the script reboots only when it sees a PID namespace other than ours.
    let host_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let guard = format!(
        "[ \"$(readlink /proc/self/ns/pid)\" != '{}' ] || exit 99;",
        host_ns.display()
    );
    // reboot(2) in a PID namespace kills its init with SIGHUP (reboot) or SIGINT (power off):
    // nspawn's codes 133 and 0.
    let out = run_sh(&rig, &tree, &[], &format!("{guard} reboot -f; sleep 10"));
    assert_eq!(out.status.code(), Some(133), "{:?}", text(&out));
    let out = run_sh(
        &rig,
        &tree,
        &["--as-pid1"],
        &format!("{guard} poweroff -f; sleep 10"),
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
}

#[test]
fn binds_tmpfs_user_chdir_and_read_only() {
    let t = "binds_tmpfs_user_chdir_and_read_only";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    let rig = Rig::new();
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(shared.path().join("in"), "from the host\n").unwrap();
    let src = shared.path().display().to_string();
    let script = "echo id=$(id -u):$(id -g):$(id -G | tr ' ' ,); echo cwd=$(pwd); \
                  echo home=$HOME; echo in=$(cat /mnt/rw/in); echo out > /mnt/rw/out; \
                  echo ro=$(cat /mnt/ro/in); touch /mnt/ro/no 2>/dev/null; echo rotouch=$?; \
                  touch /scratch/x && echo scratch=$(stat -c %a /scratch)";
    let out = run_sh(
        &rig,
        &tree,
        &[
            "--bind",
            &format!("{src}:/mnt/rw"),
            "--bind-ro",
            &format!("{src}:/mnt/ro:norbind"),
            "--tmpfs",
            "/scratch:mode=0777",
            "-u",
            "web",
            "--chdir",
            "/mnt",
        ],
        script,
    );
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert_eq!(field(&so, "id"), "1000:1000:1000,10");
    assert_eq!(field(&so, "cwd"), "/mnt");
    assert_eq!(field(&so, "home"), "/home/web");
    assert_eq!(field(&so, "in"), "from the host");
    assert_eq!(field(&so, "ro"), "from the host");
    assert_eq!(field(&so, "rotouch"), "1");
    assert_eq!(field(&so, "scratch"), "777");
    assert_eq!(
        std::fs::read_to_string(shared.path().join("out")).unwrap(),
        "out\n"
    );
    assert!(!shared.path().join("no").exists());

    // --read-only: the tree cannot be written, /tmp and /run still can.
    let out = run_sh(
        &rig,
        &tree,
        &["--read-only"],
        "touch /etc/new 2>/dev/null; echo etc=$?; touch /tmp/a /run/b; echo tmp=$?",
    );
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert_eq!(field(&so, "etc"), "1");
    assert_eq!(field(&so, "tmp"), "0");
    assert!(!tree.path().join("etc/new").exists());
}

#[test]
fn ephemeral_changes_are_gone() {
    let t = "ephemeral_changes_are_gone";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    let rig = Rig::new();
    let out = run_sh(
        &rig,
        &tree,
        &["-x"],
        "echo new > /etc/new && rm /etc/passwd && echo seen=$(cat /etc/new)$(ls /etc/passwd 2>&1 | grep -c 'No such')",
    );
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert_eq!(field(&so, "seen"), "new1");
    assert!(!tree.path().join("etc/new").exists());
    assert!(tree.path().join("etc/passwd").exists());
    // Without -x a change stays.
    let out = run_sh(&rig, &tree, &[], "echo kept > /srv/kept");
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(
        std::fs::read_to_string(tree.path().join("srv/kept")).unwrap(),
        "kept\n"
    );
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    let t = "bad_input_is_one_line_and_leaves_nothing";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    let mut rig = Rig::new();
    let not_os = tempfile::tempdir().unwrap();
    let nd = not_os.path().display().to_string();
    let tr = tree.arg();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["-D".into(), format!("{nd}/missing"), "true".into()],
            format!("rnet: Directory {nd}/missing cannot be used: No such file or directory"),
        ),
        (
            vec!["-D".into(), nd.clone(), "true".into()],
            format!(
                "rnet: Directory {nd} doesn't look like it has an OS tree (/usr/ directory is missing). Refusing."
            ),
        ),
        (
            vec!["-D".into(), nd.clone(), "-b".into()],
            format!(
                "rnet: Directory {nd} doesn't look like an OS root directory (os-release file is missing). Refusing."
            ),
        ),
        (
            vec!["-D".into(), tr.clone(), "--bind".into(), format!("{nd}/nope:/x"), "true".into()],
            format!("rnet: --bind source {nd}/nope: No such file or directory"),
        ),
        (
            vec!["-D".into(), tr.clone(), "--bind".into(), "/srv:/x:idmap".into(), "true".into()],
            "rnet: invalid --bind \"/srv:/x:idmap\": idmap is not supported yet (idmapped mounts apply to the tree only, --private-users-ownership=map)".into(),
        ),
        (
            vec!["-D".into(), tr.clone(), "--private-users=maybe".into(), "true".into()],
            "rnet: invalid --private-users=\"maybe\": use no, yes, pick, identity or UID[:RANGE]".into(),
        ),
        (
            vec!["-D".into(), tr.clone(), "-U".into(), "--private-users-ownership=copy".into(), "true".into()],
            "rnet: invalid --private-users-ownership=\"copy\": use off, chown, map or auto".into(),
        ),
        (
            vec!["-D".into(), tr.clone(), "-u".into(), "nobody".into(), "true".into()],
            format!("rnet: user \"nobody\" is not in {tr}/etc/passwd"),
        ),
        (
            vec!["-D".into(), tr.clone(), "/no/such/program".into()],
            "rnet: cannot execute /no/such/program: No such file or directory".into(),
        ),
        (
            vec!["-D".into(), tr.clone(), "--console=tty".into(), "true".into()],
            "rnet: invalid --console mode \"tty\": use interactive, read-only, passive or pipe"
                .into(),
        ),
        (
            vec!["-b".into(), "true".into()],
            "rnet: the following required arguments were not provided: --directory <DIR>".into(),
        ),
    ];
    for (args, want) in cases {
        let out = output(rig.rnet().arg("run").args(&args));
        let (so, se) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {so}");
        assert_eq!(se.lines().count(), 1, "{args:?}: {se}");
        assert!(
            se.trim_end().starts_with(&want),
            "{args:?}:\n got {se}\nwant {want}"
        );
    }
    // A container that fails after rnetd attached it: one line, and its networking is gone.
    rig.start_rnetd();
    let out = output(
        rig.rnet()
            .args(["run", "-D", &tr, "-n", "-M", "bad", "/no/such/program"]),
    );
    let (so, se) = text(&out);
    assert!(!out.status.success(), "{so}");
    assert_eq!(
        se.trim_end(),
        "rnet: cannot execute /no/such/program: No such file or directory"
    );
    rig.assert_all_gone();
    std::fs::remove_file(tree.path().join("sbin/init")).unwrap();
    let out = output(rig.rnet().args(["run", "-D", &tr, "-b"]));
    assert_eq!(
        text(&out).1.trim_end(),
        format!(
            "rnet: no init found in {tr} (looked for /usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init)"
        )
    );
}

/// The busybox init of `--boot`: its sysinit asks rnetd's DHCP server for a lease on host0,
/// records what it sees in the bound `/out`, waits for the test's go, then powers off.
const INITTAB: &str = "::sysinit:/etc/rc\n::shutdown:/bin/echo shutdown\n";
const RC: &str = "#!/bin/sh
echo started > /out/started
ip link set host0 up
udhcpc -i host0 -n -q -f -t 10 -T 1 -s /etc/udhcpc.sh > /out/udhcpc.log 2>&1
echo $? > /out/udhcpc.rc
tr '\\0' '\\n' < /proc/1/environ > /out/environ
cat /proc/1/comm > /out/comm
cat /run/host/container-manager > /out/manager
i=0; while [ ! -e /out/go ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
poweroff
";
const HOOK: &str = "#!/bin/sh
case \"$1\" in bound|renew)
  ip addr add $ip/$mask dev $interface
  ip route add default via $router
  echo $ip > /out/lease ;;
esac
";

#[test]
fn boot_with_busybox_init_gets_its_lease_from_rnetd() {
    let t = "boot_with_busybox_init_gets_its_lease_from_rnetd";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    tree.write("/etc/inittab", INITTAB, 0o644);
    tree.write("/etc/rc", RC, 0o755);
    tree.write("/etc/udhcpc.sh", HOOK, 0o755);
    let out_dir = tempfile::tempdir().unwrap();
    let od = out_dir.path().to_owned();
    let mut rig = Rig::new();
    rig.start_rnetd();
    let mut cmd = rig.rnet();
    cmd.args(["run", "-D", &tree.arg(), "-b", "-n", "-M", "booted"])
        .args(["--bind", &format!("{}:/out", od.display())]);
    let pid = rig.spawn(&mut cmd);
    // Written, not only created: a shell's `>` makes the file before `echo` fills it.
    let leased = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(od.join("udhcpc.rc")).is_ok_and(|t| t.ends_with('\n'))
    });
    let m = rig.wait_machine("booted");
    let read = |f: &str| std::fs::read_to_string(od.join(f)).unwrap_or_default();
    assert!(
        leased,
        "no DHCP result from the booted container (rc started: {:?}, udhcpc: {:?}); rnetd log:\n{}",
        read("started"),
        read("udhcpc.log"),
        rig::tail(&rig.log(), 40)
    );
    assert_eq!(read("udhcpc.rc").trim(), "0", "{}", read("udhcpc.log"));
    // The address rnetd reserved for the machine is what its own DHCP client got.
    assert_eq!(
        read("lease").trim(),
        m["container_address"].as_str().unwrap(),
        "{m}"
    );
    assert_eq!(read("comm").trim(), "init");
    let env = read("environ");
    assert!(env.lines().any(|l| l == "container=rnet"), "{env}");
    assert!(
        env.lines().any(|l| l.starts_with("container_uuid=")),
        "{env}"
    );
    assert_eq!(read("manager").trim(), "rnet");
    std::fs::write(od.join("go"), "").unwrap();
    // busybox poweroff: init runs its shutdown actions, then reboot(2) ends the container: 0.
    let out = rig.wait(pid);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    rig.assert_all_gone();
}

#[test]
fn rnet_stop_ends_a_container_through_its_init() {
    let t = "rnet_stop_ends_a_container_through_its_init";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    let out_dir = tempfile::tempdir().unwrap();
    let up = out_dir.path().join("up");
    let mut rig = Rig::new();
    rig.start_rnetd();
    let mut cmd = rig.rnet();
    cmd.args(["run", "-D", &tree.arg(), "-n", "-M", "stopme"])
        .args([
            "--bind",
            &format!("{}:/out", out_dir.path().display()),
            "--",
        ])
        .args([
            "/bin/sh",
            "-c",
            "trap 'exit 42' TERM; echo up > /out/up; while :; do sleep 0.1; done",
        ]);
    let pid = rig.spawn(&mut cmd);
    rig.wait_machine("stopme");
    assert!(wait_until(Duration::from_secs(10), || up.exists()));
    // rnetd signals the container's PID 1 (rnet's init), which passes SIGTERM to the payload.
    let out = output(rig.rnet().args(["stop", "stopme"]));
    assert!(out.status.success(), "{:?}", text(&out));
    let out = rig.wait(pid);
    assert_eq!(out.status.code(), Some(42), "{:?}", text(&out));
    rig.assert_all_gone();
}

#[test]
fn console_modes() {
    let t = "console_modes";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    let rig = Rig::new();
    // read-only: a pty as stdio and /dev/console, its output relayed.
    let out = run_sh(
        &rig,
        &tree,
        &["--console=read-only"],
        "echo tty=$(tty); echo console=$(stat -c %t /dev/console); exit 4",
    );
    let (so, se) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{so}{se}");
    assert_eq!(field(&so, "tty").trim(), "/dev/console");
    // 0x88: a pts (major 136), not /dev/null.
    assert_eq!(field(&so, "console").trim(), "88");
    // passive: the pty is connected nowhere.
    let out = run_sh(&rig, &tree, &["--console=passive"], "echo hidden; exit 5");
    assert_eq!(out.status.code(), Some(5));
    assert!(text(&out).0.is_empty(), "{:?}", text(&out));
    // pipe (the default off a terminal): the launcher's own stdio.
    let out = run_sh(
        &rig,
        &tree,
        &[],
        "tty; echo console=$(stat -c %t:%T /dev/console)",
    );
    let (so, _) = text(&out);
    assert!(so.starts_with("not a tty"), "{so}");
    assert_eq!(field(&so, "console"), "1:3");

    // interactive (the default on a terminal), from a terminal `script` provides.
    let rnet = rig.rnet();
    let line: Vec<String> = std::iter::once(rnet.get_program())
        .chain(rnet.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let line = line.join(" ");
    let interactive = |inner: &str, input: &str| -> Output {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "(sleep 1; printf '{input}'; sleep 3) | script -qec \"{line} run -D {} -- {inner}\" /dev/null",
            tree.arg()
        ));
        output(&mut c)
    };
    let out = interactive("/bin/sh", "echo typed-$((6*7))\\nexit 9\\n");
    let (so, se) = text(&out);
    assert_eq!(out.status.code(), Some(9), "{so}{se}");
    assert!(so.contains("typed-42"), "{so}");
    // Ctrl-] three times ends the session: the container is killed.
    let out = interactive("/bin/sleep 60", "\\035\\035\\035");
    assert_eq!(out.status.code(), Some(137), "{:?}", text(&out));
}

/// The range `rnet` reports on stderr ("... are host UIDs B-E; the tree ...") and how the tree's
/// ownership was handled (the rest of that line).
fn userns_note(stderr: &str) -> (u32, String) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("rnet: user namespace: "))
        .unwrap_or_else(|| panic!("no user namespace note in {stderr:?}"));
    let rest = line.split("are host UIDs ").nth(1).unwrap();
    let base = rest.split('-').next().unwrap().parse().unwrap();
    (base, rest.split("; ").nth(1).unwrap_or_default().to_owned())
}

fn owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// What the payload reports of its user namespace: its UID and GID, the owner of a tree file
/// and its map; it creates `/root/made` in the tree and `/out/made` in a bind of the host.
const USERNS_SCRIPT: &str = "echo id=$(id -u):$(id -g); echo owner=$(stat -c %u:%g /bin/busybox); \
     echo webhome=$(stat -c %u /home/web); echo map=$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'); \
     touch /root/made; echo made=$?; touch /out/made; echo out=$?; grep CapBnd /proc/self/status";

#[test]
fn user_namespace_ownership_inside_and_outside() {
    let t = "user_namespace_ownership_inside_and_outside";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let rig = Rig::new();
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let bind = format!("{}:/out", shared.path().display());
    let bnd = host_cap_bnd();
    const CAP_NET_BIND_SERVICE: u64 = 1 << 10;

    // map: the tree is unchanged on disk, yet root's inside; the payload is the range's root.
    let tree = Tree::new(&bb);
    let out = run_sh(
        &rig,
        &tree,
        &[
            "-M",
            "mapped",
            "--private-users=pick",
            "--private-users-ownership=map",
            "--bind",
            &bind,
        ],
        USERNS_SCRIPT,
    );
    let (so, se) = text(&out);
    if se.contains("--private-users-ownership=map: idmapping") {
        // The kernel or the tree's filesystem cannot idmap: say so, and auto must chown.
        eprintln!("NOTE {t}: no idmapped mounts here: {se}");
    } else {
        assert!(out.status.success(), "{so}{se}");
        let (base, how) = userns_note(&se);
        assert_eq!(how, "the tree is idmapped (unchanged on disk)");
        assert_eq!(base & 0xFFFF, 0);
        assert!((0x0008_0000..=0x6FFF_0000).contains(&base), "{base:#x}");
        assert_eq!(field(&so, "id"), "0:0");
        assert_eq!(field(&so, "owner"), "0:0");
        assert_eq!(field(&so, "webhome"), "1000");
        assert_eq!(field(&so, "map"), format!("0 {base} 65536"));
        assert_eq!(field(&so, "made"), "0");
        assert_eq!(field(&so, "out"), "0");
        // Outside: the tree as it was, what the payload made in it owned by 0 on disk; what it
        // made in the host's directory owned by the range.
        assert_eq!(owner(&tree.path().join("bin/busybox")), (0, 0));
        assert_eq!(owner(&tree.path().join("home/web")), (1000, 1000));
        assert_eq!(owner(&tree.path().join("root/made")), (0, 0));
        assert_eq!(owner(&shared.path().join("made")), (base, base));
        // On the host's network the namespace's root may not bind privileged ports.
        assert!(
            so.contains(&format!(
                "CapBnd:\t{:016x}",
                NSPAWN_CAPS & bnd & !CAP_NET_BIND_SERVICE
            )),
            "{so}"
        );
        // The range is stable for the machine, and free again once it ended.
        let again = run_sh(
            &rig,
            &tree,
            &["-M", "mapped", "-U", "--bind", &bind],
            "true",
        );
        assert_eq!(userns_note(&text(&again).1).0, base);
        assert_eq!(
            std::fs::read_dir(rig.runtime_dir().join("uid"))
                .unwrap()
                .count(),
            0
        );
    }

    // chown: the tree's owners shifted on disk once; a second run changes nothing.
    let tree = Tree::new(&bb);
    std::fs::remove_file(shared.path().join("made")).ok();
    let out = run_sh(
        &rig,
        &tree,
        &[
            "-M",
            "chowned",
            "--private-users=pick",
            "--private-users-ownership=chown",
            "--bind",
            &bind,
        ],
        USERNS_SCRIPT,
    );
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    let (base, how) = userns_note(&se);
    assert_eq!(how, "the tree's owners are shifted (chowned now)");
    assert_eq!(field(&so, "id"), "0:0");
    assert_eq!(field(&so, "owner"), "0:0");
    assert_eq!(field(&so, "webhome"), "1000");
    assert_eq!(field(&so, "map"), format!("0 {base} 65536"));
    assert_eq!(field(&so, "made"), "0");
    assert_eq!(owner(&tree.path().join("bin/busybox")), (base, base));
    assert_eq!(owner(tree.path()), (base, base));
    assert_eq!(
        owner(&tree.path().join("home/web")),
        (base + 1000, base + 1000)
    );
    assert_eq!(owner(&tree.path().join("root/made")), (base, base));
    assert_eq!(owner(&shared.path().join("made")), (base, base));
    let ctime = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.ctime(), m.ctime_nsec())
    };
    let before = ctime(&tree.path().join("bin/busybox"));
    // -U on a shifted tree: its range (from the root's owner), nothing chowned again, even
    // under another machine name.
    let out = run_sh(
        &rig,
        &tree,
        &["-M", "other", "-U"],
        "stat -c owner=%u /bin/busybox",
    );
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert_eq!(
        userns_note(&se),
        (base, "the tree's owners are shifted (already)".into())
    );
    assert_eq!(field(&so, "owner"), "0");
    assert_eq!(ctime(&tree.path().join("bin/busybox")), before);

    // identity: UIDs map to themselves.
    let plain = Tree::new(&bb);
    let out = run_sh(
        &rig,
        &plain,
        &["--private-users=identity"],
        "echo map=$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'); id -u",
    );
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert_eq!(field(&so, "map"), "0 0 65536");
}

#[test]
fn an_occupied_uid_range_is_refused() {
    let t = "an_occupied_uid_range_is_refused";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    let other = Tree::new(&bb);
    let mut rig = Rig::new();
    let out_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let up = out_dir.path().join("up");
    let mut cmd = rig.rnet();
    cmd.args(["run", "-D", &tree.arg(), "-M", "holder", "-U"])
        .args(["--private-users-ownership=chown"])
        .args(["--bind", &format!("{}:/out", out_dir.path().display())])
        .args(["--", "/bin/sh", "-c", "echo up > /out/up; sleep 1000"]);
    let pid = rig.spawn(&mut cmd);
    assert!(wait_until(Duration::from_secs(20), || up.exists()));
    let locks = rig.runtime_dir().join("uid");
    let held: Vec<String> = std::fs::read_dir(&locks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    let base: u32 = held[0].parse().unwrap();
    assert_eq!(owner(tree.path()), (base, base));
    let want = format!(
        "rnet: UID range {base}-{} is in use by a running container (lock {}/{base})",
        base + 0xFFFF,
        locks.display()
    );
    let cases: Vec<Vec<String>> = vec![
        // The same tree again: its range is the running container's.
        vec![
            "-D".into(),
            tree.arg(),
            "-M".into(),
            "second".into(),
            "-U".into(),
            "true".into(),
        ],
        // Another tree asking for that range.
        vec![
            "-D".into(),
            other.arg(),
            format!("--private-users={base}"),
            "-n".into(),
            "true".into(),
        ],
    ];
    for args in cases {
        let out = output(rig.rnet().arg("run").args(&args));
        let (so, se) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {so}");
        assert_eq!(se.trim_end(), want, "{args:?}");
    }
    // Nothing half-made: the other tree untouched, no second lock, no cgroup, no link.
    assert_eq!(owner(other.path()), (0, 0));
    assert_eq!(std::fs::read_dir(&locks).unwrap().count(), 1);
    assert!(!rig.host_links().iter().any(|l| l.starts_with("ve-")));
    rig.signal(pid, nix::sys::signal::Signal::SIGTERM);
    let out = rig.wait(pid);
    assert_eq!(out.status.code(), Some(143), "{:?}", text(&out));
    // The lock file goes with the container.
    assert_eq!(std::fs::read_dir(&locks).unwrap().count(), 0);
}

#[test]
fn user_namespace_with_a_private_network() {
    let t = "user_namespace_with_a_private_network";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    let mut rig = Rig::new();
    rig.start_rnetd();
    let out = run_sh(
        &rig,
        &tree,
        &["-U", "-n", "-M", "unet"],
        "echo addr=$(ip -o -4 addr show host0 | awk '{print $4}'); \
         echo gw=$(ip route | awk '/default/ {print $3}'); \
         ping -c 1 -W 5 $(ip route | awk '/default/ {print $3}') >/dev/null; echo ping=$?; \
         grep CapBnd /proc/self/status; echo id=$(id -u); ls /sys/class/net | tr '\\n' ' '",
    );
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    assert!(field(&so, "addr").contains('/'), "{so}");
    assert_eq!(field(&so, "ping"), "0", "{so}{se}");
    assert_eq!(field(&so, "id"), "0");
    // Its own network: CAP_NET_ADMIN and CAP_NET_BIND_SERVICE stay (over its own namespace).
    assert!(
        so.contains(&format!(
            "CapBnd:\t{:016x}",
            (NSPAWN_CAPS | CAP_NET_ADMIN) & host_cap_bnd()
        )),
        "{so}"
    );
    // Its own sysfs, of its network namespace.
    assert!(so.contains("host0"), "{so}");
    rig.assert_all_gone();
}

/// A stand-in for systemd as PID 1 (`-b` finds it at systemd's path): it records the signal
/// that asks it to stop. SIGRTMIN+3 is 37 for glibc and the kernel alike (34 + 3).
const FAKE_SYSTEMD: &str = "#!/bin/sh
trap 'echo rtmin3 > /out/sig; exit 0' 37
trap 'echo term > /out/sig' TERM
echo up > /out/up
while :; do sleep 0.1; done
";

#[test]
fn rnet_stop_asks_systemd_with_sigrtmin3_and_kills_after_the_timeout() {
    let t = "rnet_stop_asks_systemd_with_sigrtmin3_and_kills_after_the_timeout";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    std::fs::create_dir_all(tree.path().join("usr/lib/systemd")).unwrap();
    tree.write("/usr/lib/systemd/systemd", FAKE_SYSTEMD, 0o755);
    let out_dir = tempfile::tempdir().unwrap();
    let od = out_dir.path().to_owned();
    let mut rig = Rig::new();
    rig.start_rnetd();
    let bind = format!("{}:/out", od.display());
    let mut cmd = rig.rnet();
    cmd.args([
        "run",
        "-D",
        &tree.arg(),
        "-b",
        "-n",
        "-M",
        "sd",
        "--bind",
        &bind,
    ]);
    let pid = rig.spawn(&mut cmd);
    rig.wait_machine("sd");
    assert!(wait_until(Duration::from_secs(20), || od
        .join("up")
        .exists()));
    let out = output(rig.rnet().args(["stop", "sd"]));
    assert!(out.status.success(), "{:?}", text(&out));
    let out = rig.wait(pid);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(
        std::fs::read_to_string(od.join("sig")).unwrap_or_default(),
        "rtmin3\n"
    );
    rig.assert_all_gone();

    // Any other PID 1 gets SIGTERM; one that does not end is killed after the timeout.
    std::fs::remove_file(od.join("up")).unwrap();
    let mut cmd = rig.rnet();
    cmd.args([
        "run",
        "-D",
        &tree.arg(),
        "--as-pid1",
        "-n",
        "-M",
        "stubborn",
    ])
    .args(["--bind", &bind, "--", "/bin/sh", "-c"])
    .arg("trap 'echo term > /out/sig' TERM; echo up > /out/up; while :; do sleep 0.1; done");
    let pid = rig.spawn(&mut cmd);
    rig.wait_machine("stubborn");
    assert!(wait_until(Duration::from_secs(20), || od
        .join("up")
        .exists()));
    let out = output(rig.rnet().args(["stop", "stubborn"]));
    assert!(out.status.success(), "{:?}", text(&out));
    let out = rig.wait(pid);
    assert_eq!(out.status.code(), Some(137), "{:?}", text(&out));
    assert_eq!(
        std::fs::read_to_string(od.join("sig")).unwrap_or_default(),
        "term\n"
    );
    assert!(
        rig.log()
            .contains("still running after the stop request: killed")
    );
    rig.assert_all_gone();
}

#[test]
fn auto_ownership_falls_back_to_chown_where_the_tree_cannot_be_idmapped() {
    let t = "auto_ownership_falls_back_to_chown_where_the_tree_cannot_be_idmapped";
    if !privileged(t) {
        return;
    }
    let Some(bb) = static_busybox(t) else { return };
    let tree = Tree::new(&bb);
    let rig = Rig::new();
    // ramfs cannot be idmapped: the tree is copied onto one, in a mount namespace of the
    // test's own (gone with it), where rnet runs.
    let ram = tempfile::tempdir().unwrap();
    let rnet = rig.rnet();
    let line: Vec<String> = std::iter::once(rnet.get_program())
        .chain(rnet.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let line = line.join(" ");
    let (r, src) = (ram.path().display(), tree.arg());
    let script = format!(
        "set -e; mount -t ramfs none {r}; cp -a {src} {r}/t; chown 0:0 {r}/t; \
         {line} run -D {r}/t --private-users=pick --private-users-ownership=map -- /bin/true || echo map=$?; \
         {line} run -D {r}/t -M rammed -U -- /bin/sh -c 'echo owner=$(stat -c %u /bin/busybox)'; \
         echo outside=$(stat -c %u {r}/t/bin/busybox)"
    );
    let out = output(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(&script),
    );
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}{se}");
    // map alone refuses, with the kernel's word, and nothing runs.
    assert_eq!(field(&so, "map"), "1", "{so}{se}");
    assert!(
        se.contains(&format!(
            "rnet: --private-users-ownership=map: idmapping {r}/t: Invalid argument"
        )),
        "{se}"
    );
    // auto shifts the tree instead: root inside, the range outside.
    let (base, how) = userns_note(&se);
    assert_eq!(how, "the tree's owners are shifted (chowned now)");
    assert_eq!(field(&so, "owner"), "0");
    assert_eq!(field(&so, "outside"), base.to_string());
}
