//! `.nspawn` settings files with `rnet run -D`: a file beside the tree is untrusted (its binds
//! and network are ignored with a warning, the rest applies), `--settings=trusted` applies all of
//! it, `--settings=no` none, the command line wins unless `--settings=override`, and under
//! `override` the file's network replaces the command line's whole (a zone from the file and a
//! veth from the command line are never mixed). Bad files are one line naming `file:line`. The
//! one trusted file a test needs goes to /run/systemd/nspawn under a name unique to the test
//! (removed on drop); nothing is written under /etc.

use std::path::PathBuf;
use std::process::Output;

use rig::tree::{Tree, static_busybox};
use rig::{Rig, output, privileged};

/// The settings file beside `tree` (`PARENT/NAME.nspawn`), removed on drop.
struct SettingsFile(PathBuf);

impl SettingsFile {
    fn new(tree: &Tree, text: &str) -> Self {
        let p = tree.path().with_extension("nspawn");
        std::fs::write(&p, text).unwrap();
        SettingsFile(p)
    }
}

impl Drop for SettingsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(rig: &Rig, tree: &Tree, args: &[&str], script: &str) -> (Output, String, String) {
    let out = output(
        rig.rnet()
            .args(["run", "-D", &tree.arg()])
            .args(args)
            .args(["--", "/bin/sh", "-c", script]),
    );
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    (out, o, e)
}

/// Prints the file's variable, whether the bind is there, and the number of links seen.
const PROBE: &str =
    "echo env=$FROM_FILE; [ -e /hostetc/hostname ] && echo bound; echo links=$(ip -o link | wc -l)";

#[test]
fn trust_decides_what_a_file_beside_the_tree_may_set() {
    let Some(bb) = static_busybox("trust_decides_what_a_file_beside_the_tree_may_set") else {
        return;
    };
    if !privileged("trust_decides_what_a_file_beside_the_tree_may_set") {
        return;
    }
    let rig = Rig::new();
    let tree = Tree::new(&bb);
    std::fs::create_dir_all(tree.path().join("hostetc")).unwrap();
    let file = SettingsFile::new(
        &tree,
        "[Exec]\nEnvironment=FROM_FILE=1\nFrobnicate=yes\n[Files]\nBindReadOnly=/etc:/hostetc\n[Network]\nPrivate=yes\n",
    );
    let name = file.0.display().to_string();

    // Untrusted (beside the image): the environment applies; binds and network do not.
    let (out, o, e) = run(&rig, &tree, &[], PROBE);
    assert!(out.status.success(), "{e}");
    assert!(o.contains("env=1"), "{o}");
    assert!(!o.contains("bound"), "{o}");
    assert!(!o.contains("links=1\n"), "the host network stays: {o}");
    assert!(
        e.contains(&format!("{name}:3: unknown setting Frobnicate= in [Exec]")),
        "{e}"
    );
    assert!(e.contains("ignoring Bind=, BindReadOnly="), "{e}");
    assert!(e.contains("ignoring network settings"), "{e}");

    // Trusted: all of it.
    let (out, o, e) = run(&rig, &tree, &["--settings=trusted"], PROBE);
    assert!(out.status.success(), "{e}");
    assert!(
        o.contains("env=1") && o.contains("bound") && o.contains("links=1\n"),
        "{o}"
    );
    assert!(!e.contains("ignoring network"), "{e}");

    // The command line wins over the file...
    let (_, o, _) = run(
        &rig,
        &tree,
        &["--settings=trusted", "-E", "FROM_FILE=cli"],
        PROBE,
    );
    assert!(o.contains("env=cli"), "{o}");
    // ...unless the file overrides it.
    let (_, o, _) = run(
        &rig,
        &tree,
        &["--settings=override", "-E", "FROM_FILE=cli"],
        PROBE,
    );
    assert!(o.contains("env=1"), "{o}");

    // No settings at all.
    let (_, o, e) = run(&rig, &tree, &["--settings=no"], PROBE);
    assert!(o.contains("env=\n") && !e.contains("warning"), "{o} {e}");
}

#[test]
fn override_takes_the_files_network_whole() {
    let Some(bb) = static_busybox("override_takes_the_files_network_whole") else {
        return;
    };
    if !privileged("override_takes_the_files_network_whole") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let tree = Tree::new(&bb);
    // The command line: a veth and an extra veth pair.
    let extra = format!("--network-veth-extra={}e:vx0", rig.prefix);
    let mut network_of = |mode: &str, name: &str| -> (rig::Value, usize) {
        let pid = rig.spawn(rig.rnet().args([
            "run",
            "-D",
            &tree.arg(),
            "-M",
            name,
            "-n",
            &extra,
            mode,
            "--",
            "/bin/sleep",
            "60",
        ]));
        let m = rig.wait_machine(name);
        rig.signal(pid, nix::sys::signal::Signal::SIGTERM);
        rig.wait(pid);
        let links = m["links"].as_array().map_or(0, Vec::len);
        (m["network"].clone(), links)
    };
    // The file's name is the tree's; -M names another machine, so point -M at the tree's name.
    let machine = tree
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    // `override` does not trust a file beside the image: the file goes where trusted ones live,
    // /run/systemd/nspawn (runtime, under a name unique to this test; removed on drop).
    std::fs::create_dir_all("/run/systemd/nspawn").unwrap();
    let _file = SettingsFile(PathBuf::from(format!(
        "/run/systemd/nspawn/{machine}.nspawn"
    )));
    std::fs::write(&_file.0, "[Network]\nZone=sz\n").unwrap();
    // The command line's -n wins with trust alone.
    assert_eq!(network_of("--settings=yes", &machine), ("veth".into(), 1));
    // Under override the file's zone replaces all of the command line's network: a zone member
    // without the extra veth, not a mix of both.
    let (net, links) = network_of("--settings=override", &machine);
    assert_eq!(net, serde_json::json!({"zone": "sz"}), "{net}");
    assert_eq!(
        links, 0,
        "the command line's extra veth must not be mixed in"
    );
}

#[test]
fn a_bad_file_is_one_line_with_its_place_and_starts_nothing() {
    let Some(bb) = static_busybox("a_bad_file_is_one_line_with_its_place_and_starts_nothing")
    else {
        return;
    };
    if !privileged("a_bad_file_is_one_line_with_its_place_and_starts_nothing") {
        return;
    }
    let rig = Rig::new();
    let tree = Tree::new(&bb);
    let file = SettingsFile::new(&tree, "[Exec]\nBoot=perhaps\n");
    let (out, o, e) = run(&rig, &tree, &[], "echo started");
    assert!(!out.status.success());
    assert!(!o.contains("started"));
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains(&format!(
            "{}:2: invalid Boot=\"perhaps\": expected a boolean",
            file.0.display()
        )),
        "{e}"
    );
}

/// A host root for `RNET_HOST_ROOT`: the host's resolv.conf, systemd's static file,
/// systemd-resolved's uplink and stub files (absent on this machine), and a zone `Test/Zone`
/// that `/etc/localtime` links to (absolutely, as on a host), each marked by its name.
fn host_root(rig: &Rig, with_resolved: bool) -> PathBuf {
    let root = rig
        .runtime_dir()
        .with_file_name(if with_resolved { "host" } else { "bare" });
    for (file, text) in [
        ("etc/resolv.conf", "nameserver 192.0.2.1 # host\n"),
        (
            "usr/lib/systemd/resolv.conf",
            "nameserver 127.0.0.53 # static\n",
        ),
        ("usr/share/zoneinfo/Test/Zone", "HOST-ZONE\n"),
    ]
    .into_iter()
    .chain(
        with_resolved
            .then_some([
                (
                    "run/systemd/resolve/resolv.conf",
                    "nameserver 192.0.2.2 # uplink\n",
                ),
                (
                    "run/systemd/resolve/stub-resolv.conf",
                    "nameserver 127.0.0.53 # stub\n",
                ),
            ])
            .into_iter()
            .flatten(),
    ) {
        let p = root.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let _ = std::os::unix::fs::symlink("/usr/share/zoneinfo/Test/Zone", root.join("etc/localtime"));
    root
}

/// `rnet run -D TREE ARGS -- sh -c SCRIPT` with the host's files below `root`.
fn run_in(
    rig: &Rig,
    root: &std::path::Path,
    tree: &Tree,
    args: &[&str],
    script: &str,
) -> (Output, String, String) {
    let out = output(
        rig.rnet()
            .env("RNET_HOST_ROOT", root)
            .args(["run", "-D", &tree.arg()])
            .args(args)
            .args(["--", "/bin/sh", "-c", script]),
    );
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    (out, o, e)
}

/// What the container sees of FILE: `link` if a symlink, its first line (or `missing`),
/// `mounted` if a mount point, and if it exists `writable` or `readonly` (an append of
/// nothing).
fn look(file: &str) -> String {
    format!(
        "[ -L {file} ] && echo link; head -n1 {file} 2>/dev/null || echo missing; \
         grep -q ' {file} ' /proc/self/mountinfo && echo mounted; \
         if [ -e {file} ]; then ( : >> {file} ) 2>/dev/null && echo writable || echo readonly; fi"
    )
}

const TREE_RESOLV: &str = "nameserver 198.51.100.1 # tree\n";
const STUB_LINK: &str = "../run/systemd/resolve/stub-resolv.conf";

/// The tree's /etc/resolv.conf: `Some(text)` a file, `None` a link into /run (resolved's).
fn tree_resolv(tree: &Tree, file: Option<&str>) {
    let p = tree.path().join("etc/resolv.conf");
    let _ = std::fs::remove_file(&p);
    match file {
        Some(text) => tree.write("/etc/resolv.conf", text, 0o644),
        None => std::os::unix::fs::symlink(STUB_LINK, &p).unwrap(),
    }
}

/// The tree's /etc/resolv.conf on disk: `link` or its first line, `missing`.
fn on_disk(tree: &Tree, file: &str) -> String {
    let p = tree.path().join(file.trim_start_matches('/'));
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.is_symlink() => "link".into(),
        Ok(_) => std::fs::read_to_string(&p)
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .to_owned(),
        Err(_) => "missing".into(),
    }
}

#[test]
fn every_resolv_conf_family_as_nspawn() {
    let Some(bb) = static_busybox("every_resolv_conf_family_as_nspawn") else {
        return;
    };
    if !privileged("every_resolv_conf_family_as_nspawn") {
        return;
    }
    let rig = Rig::new();
    let root = host_root(&rig, true);
    let tree = Tree::new(&bb);
    let probe = look("/etc/resolv.conf");
    for (source, mark) in [
        ("host", "nameserver 192.0.2.1 # host"),
        ("static", "nameserver 127.0.0.53 # static"),
        ("uplink", "nameserver 192.0.2.2 # uplink"),
        ("stub", "nameserver 127.0.0.53 # stub"),
    ] {
        // copy: over a file, into the tree, writable; a link is left alone.
        tree_resolv(&tree, Some(TREE_RESOLV));
        let mode = format!("--resolv-conf=copy-{source}");
        let (out, o, e) = run_in(&rig, &root, &tree, &[&mode], &probe);
        assert!(out.status.success(), "{mode}: {e}");
        assert_eq!(o, format!("{mark}\nwritable\n"), "{mode}");
        assert_eq!(on_disk(&tree, "/etc/resolv.conf"), mark, "{mode}");
        tree_resolv(&tree, None);
        let (_, o, e) = run_in(&rig, &root, &tree, &[&mode], &probe);
        assert_eq!(o, "link\nmissing\n", "{mode} over a link: {e}");
        assert_eq!(on_disk(&tree, "/etc/resolv.conf"), "link", "{mode}");
        // replace: even over a link.
        let mode = format!("--resolv-conf=replace-{source}");
        let (_, o, e) = run_in(&rig, &root, &tree, &[&mode], &probe);
        assert_eq!(o, format!("{mark}\nwritable\n"), "{mode}: {e}");
        assert_eq!(on_disk(&tree, "/etc/resolv.conf"), mark, "{mode}");
        // bind: read-only over the file, over a link too; the tree is not written.
        tree_resolv(&tree, None);
        let mode = format!("--resolv-conf=bind-{source}");
        let (_, o, e) = run_in(&rig, &root, &tree, &[&mode], &probe);
        assert_eq!(o, format!("{mark}\nmounted\nreadonly\n"), "{mode}: {e}");
        assert_eq!(on_disk(&tree, "/etc/resolv.conf"), "link", "{mode}");
        tree_resolv(&tree, Some(TREE_RESOLV));
        let (_, o, _) = run_in(&rig, &root, &tree, &[&mode], &probe);
        assert_eq!(o, format!("{mark}\nmounted\nreadonly\n"), "{mode}");
        assert_eq!(on_disk(&tree, "/etc/resolv.conf"), TREE_RESOLV.trim_end());
    }
    // -x: the copy lands in the overlay, gone at exit; the tree keeps its link.
    tree_resolv(&tree, None);
    let (_, o, e) = run_in(
        &rig,
        &root,
        &tree,
        &["-x", "--resolv-conf=replace-host"],
        &probe,
    );
    assert_eq!(o, "nameserver 192.0.2.1 # host\nwritable\n", "-x: {e}");
    assert_eq!(on_disk(&tree, "/etc/resolv.conf"), "link", "-x");
    tree_resolv(&tree, Some(TREE_RESOLV));
    // off: untouched; delete: gone, in the tree too.
    let (_, o, _) = run_in(&rig, &root, &tree, &["--resolv-conf=off"], &probe);
    assert_eq!(o, format!("{}writable\n", TREE_RESOLV), "off");
    let (_, o, _) = run_in(&rig, &root, &tree, &["--resolv-conf=delete"], &probe);
    assert_eq!(o, "missing\n", "delete");
    assert_eq!(on_disk(&tree, "/etc/resolv.conf"), "missing");
    // resolved's files absent (as on this machine): a warning, the container's file left
    // as it is, the container runs.
    let bare = host_root(&rig, false);
    tree_resolv(&tree, Some(TREE_RESOLV));
    for mode in ["copy-uplink", "replace-stub", "bind-uplink"] {
        let (out, o, e) = run_in(
            &rig,
            &bare,
            &tree,
            &[&format!("--resolv-conf={mode}")],
            &probe,
        );
        assert!(out.status.success(), "{mode}: {e}");
        assert_eq!(o, format!("{}writable\n", TREE_RESOLV), "{mode}");
        assert_eq!(e.lines().count(), 1, "{mode}: {e}");
        assert!(
            e.contains("resolv.conf: No such file or directory (os error 2); the container's file is left as it is"),
            "{mode}: {e}"
        );
        assert_eq!(on_disk(&tree, "/etc/resolv.conf"), TREE_RESOLV.trim_end());
    }
    // A bad mode: one line, nothing started.
    let (out, o, e) = run_in(&rig, &root, &tree, &["--resolv-conf=bind"], "echo started");
    assert!(!out.status.success() && !o.contains("started"));
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("rnet: invalid --resolv-conf=\"bind\": use off, delete, auto"),
        "{e}"
    );
    // Without -D it is refused (the resolv.conf of a network-only container is rnet's own).
    let out = output(
        rig.rnet()
            .args(["run", "--resolv-conf=off", "-n", "--", "true"]),
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("--directory"), "{e}");
}

#[test]
fn resolv_conf_auto_picks_by_network_and_resolved() {
    let Some(bb) = static_busybox("resolv_conf_auto_picks_by_network_and_resolved") else {
        return;
    };
    if !privileged("resolv_conf_auto_picks_by_network_and_resolved") {
        return;
    }
    let mut rig = Rig::new();
    rig.start_rnetd();
    let root = host_root(&rig, true);
    let tree = Tree::new(&bb);
    let probe = look("/etc/resolv.conf");
    tree_resolv(&tree, Some(TREE_RESOLV));
    // The host's network, resolved's stub not listening: the host's file, copied.
    let (out, o, e) = run_in(&rig, &root, &tree, &[], &probe);
    assert!(out.status.success(), "{e}");
    assert_eq!(o, "nameserver 192.0.2.1 # host\nwritable\n");
    // Read-only: bound instead.
    tree_resolv(&tree, Some(TREE_RESOLV));
    let (_, o, _) = run_in(&rig, &root, &tree, &["--read-only"], &probe);
    assert_eq!(o, "nameserver 192.0.2.1 # host\nmounted\nreadonly\n");
    assert_eq!(on_disk(&tree, "/etc/resolv.conf"), TREE_RESOLV.trim_end());
    // With something on 127.0.0.53:53 (resolved's stub) in the launcher's namespace: the stub
    // file.
    let stub = rig.spawn_ready(
        rig.in_host(rig::netprobe())
            .args(["serve", "udp:127.0.0.53:53"]),
    );
    let (_, o, _) = run_in(&rig, &root, &tree, &[], &probe);
    assert_eq!(o, "nameserver 127.0.0.53 # stub\nwritable\n");
    rig.signal(stub, nix::sys::signal::Signal::SIGKILL);
    rig.wait(stub);
    // A private network rnet configured: a file naming the gateway (the lease's DNS server),
    // read-only; the tree's own file is not written.
    tree_resolv(&tree, Some(TREE_RESOLV));
    let script = format!(
        "{probe}; ip route show default | sed -n 's/.*via \\([0-9.]*\\).*/gw \\1/p'; \
         cat /etc/resolv.conf"
    );
    let (out, o, e) = run_in(&rig, &root, &tree, &["-n"], &script);
    assert!(out.status.success(), "{e}");
    let gw = o
        .lines()
        .find_map(|l| l.strip_prefix("gw "))
        .expect("a gateway");
    assert_eq!(
        o,
        format!(
            "# Generated by rnet for this container\nmounted\nreadonly\ngw {gw}\n\
             # Generated by rnet for this container\nnameserver {gw}\n"
        )
    );
    assert_eq!(on_disk(&tree, "/etc/resolv.conf"), TREE_RESOLV.trim_end());
    // A private network rnet does not configure: left alone, as nspawn.
    let (_, o, _) = run_in(&rig, &root, &tree, &["--private-network"], &probe);
    assert_eq!(o, format!("{}writable\n", TREE_RESOLV));
}

#[test]
fn every_timezone_mode_as_nspawn() {
    let Some(bb) = static_busybox("every_timezone_mode_as_nspawn") else {
        return;
    };
    if !privileged("every_timezone_mode_as_nspawn") {
        return;
    }
    let rig = Rig::new();
    let root = host_root(&rig, false);
    let tree = Tree::new(&bb);
    let probe = look("/etc/localtime");
    let args = |m: &str| vec![format!("--timezone={m}"), "--resolv-conf=off".into()];
    let go = |m: &str, probe: &str| {
        let a = args(m);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (out, o, e) = run_in(&rig, &root, &tree, &a, probe);
        assert!(out.status.success(), "{m}: {e}");
        (o, e)
    };
    // The tree lacks the zone: auto (and symlink) bind the host's file read-only.
    assert_eq!(go("auto", &probe).0, "HOST-ZONE\nmounted\nreadonly\n");
    assert_eq!(on_disk(&tree, "/etc/localtime"), "", "an empty mount point");
    assert_eq!(go("symlink", &probe).0, "HOST-ZONE\nmounted\nreadonly\n");
    // The tree has it: a link into its own zoneinfo, in the tree.
    tree.write("/etc/localtime", "TREE-OLD\n", 0o644);
    std::fs::create_dir_all(tree.path().join("usr/share/zoneinfo/Test")).unwrap();
    tree.write("/usr/share/zoneinfo/Test/Zone", "TREE-ZONE\n", 0o644);
    let (o, _) = go("auto", &format!("readlink /etc/localtime; {probe}"));
    assert_eq!(
        o,
        "../usr/share/zoneinfo/Test/Zone\nlink\nTREE-ZONE\nwritable\n"
    );
    assert_eq!(on_disk(&tree, "/etc/localtime"), "link");
    // copy replaces the link with the host's file; bind covers it; delete removes it.
    assert_eq!(go("copy", &probe).0, "HOST-ZONE\nwritable\n");
    assert_eq!(on_disk(&tree, "/etc/localtime"), "HOST-ZONE");
    assert_eq!(go("bind", &probe).0, "HOST-ZONE\nmounted\nreadonly\n");
    assert_eq!(on_disk(&tree, "/etc/localtime"), "HOST-ZONE");
    tree.write("/etc/localtime", "TREE-OLD\n", 0o644);
    assert_eq!(go("off", &probe).0, "TREE-OLD\nwritable\n");
    assert_eq!(go("delete", &probe).0, "missing\n");
    assert_eq!(on_disk(&tree, "/etc/localtime"), "missing");
    // A bad mode: one line.
    let (out, _, e) = run_in(&rig, &root, &tree, &["--timezone=utc"], "true");
    assert!(!out.status.success());
    assert_eq!(
        e,
        "rnet: invalid --timezone=\"utc\": use off, copy, bind, symlink, delete or auto\n"
    );
}

#[test]
fn a_files_resolv_conf_timezone_and_private_users_apply_by_trust() {
    let Some(bb) = static_busybox("a_files_resolv_conf_timezone_and_private_users_apply_by_trust")
    else {
        return;
    };
    if !privileged("a_files_resolv_conf_timezone_and_private_users_apply_by_trust") {
        return;
    }
    let rig = Rig::new();
    let root = host_root(&rig, true);
    let tree = Tree::new(&bb);
    tree_resolv(&tree, Some(TREE_RESOLV));
    let text = "[Exec]\nResolvConf=bind-uplink\nTimezone=off\nPrivateUsers=pick\n";
    let probe = "head -n1 /etc/resolv.conf; [ -e /etc/localtime ] || echo no-localtime; \
                 echo map $(cat /proc/self/uid_map)";
    // Beside the tree (untrusted): ResolvConf= and Timezone= apply (nspawn does not count them
    // as privileged), PrivateUsers= is ignored with the warning.
    let file = SettingsFile::new(&tree, text);
    let (out, o, e) = run_in(&rig, &root, &tree, &[], probe);
    assert!(out.status.success(), "{e}");
    assert_eq!(
        o,
        "nameserver 192.0.2.2 # uplink\nno-localtime\nmap 0 0 4294967295\n"
    );
    assert!(
        e.contains(&format!(
            "{}:4: ignoring PrivateUsers= and PrivateUsersOwnership= settings, file {} is not trusted",
            file.0.display(),
            file.0.display()
        )),
        "{e}"
    );
    // The command line wins.
    let (_, o, _) = run_in(&rig, &root, &tree, &["--resolv-conf=copy-static"], probe);
    assert!(o.starts_with("nameserver 127.0.0.53 # static\n"), "{o}");
    drop(file);
    // Trusted (/run/systemd/nspawn): PrivateUsers=pick applies, with nspawn's ownership for a
    // file's pick, chown.
    let machine = tree
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    std::fs::create_dir_all("/run/systemd/nspawn").unwrap();
    let trusted = SettingsFile(PathBuf::from(format!(
        "/run/systemd/nspawn/{machine}.nspawn"
    )));
    std::fs::write(&trusted.0, text).unwrap();
    let (out, o, e) = run_in(&rig, &root, &tree, &["--private-network"], probe);
    assert!(out.status.success(), "{e}");
    let map: Vec<&str> = o
        .lines()
        .find_map(|l| l.strip_prefix("map "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(map[0], "0");
    assert_ne!(map[1], "0", "a user namespace: {o}");
    assert_eq!(map[2], "65536");
    assert!(
        e.contains("the tree's owners are shifted (chowned now)"),
        "{e}"
    );
    assert!(!e.contains("ignoring PrivateUsers"), "{e}");
    // The command line's --private-users=no wins over the trusted file.
    let (_, o, _) = run_in(&rig, &root, &tree, &["--private-users=no"], probe);
    assert!(o.contains("map 0 0 4294967295"), "{o}");
}
