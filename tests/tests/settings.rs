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
