//! Machine images through the CLI: `rnet pull-tar` from an HTTP server in the rig's uplink
//! namespace (busybox httpd) with a good, a bad and a missing checksum; `import-tar` from
//! standard input; `export-tar` then `import-tar` round trips; `clone`, `rename`, `remove`; and
//! refusals (an unknown image, a taken name, the image of a running machine) that change
//! nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rig::{Rig, UPLINK_ADDR, output, privileged, wait_until};

/// A small OS tree: os-release, a setuid file, a symlink, a fifo.
fn tree(root: &Path) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(root.join("etc/os-release"), "ID=rnettest\n").unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    Command::new("chmod")
        .args(["4755"])
        .arg(root.join("usr/bin/tool"))
        .status()
        .unwrap();
    Command::new("chown")
        .args(["1234:5678"])
        .arg(root.join("etc/os-release"))
        .status()
        .unwrap();
    symlink("usr/bin", root.join("bin")).unwrap();
    nix::unistd::mkfifo(
        &root.join("etc/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
}

/// `ls -lnR`-like listing: path, type+mode, owner, link target.
fn listing(root: &Path) -> Vec<String> {
    let out = output(
        Command::new("find")
            .arg(".")
            .args(["-printf", "%p %M %U:%G %l\n"])
            .current_dir(root),
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

struct World {
    rig: Rig,
    machines: PathBuf,
    www: PathBuf,
}

impl World {
    fn new(test: &str) -> Option<Self> {
        if !privileged(test) {
            return None;
        }
        let rig = Rig::new();
        let base = rig.runtime_dir().with_file_name("img");
        let machines = base.join("machines");
        let www = base.join("www");
        fs::create_dir_all(&www).unwrap();
        Some(World { rig, machines, www })
    }

    fn rnet(&self) -> Command {
        let mut c = self.rig.rnet();
        c.arg("--machines-dir").arg(&self.machines);
        c
    }

    /// Runs `rnet ARGS`; (success, stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = output(self.rnet().args(args));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn images(&self) -> Vec<String> {
        let out = output(self.rnet().args(["images", "--json"]));
        assert!(out.status.success());
        let v: Vec<rig::Value> = serde_json::from_slice(&out.stdout).unwrap();
        v.iter()
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Serves `www` on the uplink at port 8080.
    fn serve(&mut self) {
        let www = self.www.to_str().unwrap().to_owned();
        let addr = format!("{UPLINK_ADDR}:8080");
        self.rig.spawn(
            self.rig
                .in_uplink("busybox")
                .args(["httpd", "-f", "-p", &addr, "-h", &www]),
        );
        let up = wait_until(Duration::from_secs(5), || {
            !output(
                self.rig
                    .in_uplink("ss")
                    .args(["-Hltn", "sport", "=", ":8080"]),
            )
            .stdout
            .is_empty()
        });
        assert!(up, "busybox httpd did not start");
    }
}

#[test]
fn export_import_round_trips_in_every_compression_and_stdin() {
    let Some(w) = World::new("export_import_round_trips_in_every_compression_and_stdin") else {
        return;
    };
    let src = w.machines.join("orig");
    fs::create_dir_all(&src).unwrap();
    tree(&src);
    let want = listing(&src);
    for suffix in ["tar", "tar.gz", "tar.xz", "tar.zst"] {
        let file = w.www.join(format!("orig.{suffix}"));
        let (ok, err) = w.run(&["export-tar", "orig", file.to_str().unwrap()]);
        assert!(ok, "export-tar {suffix}: {err}");
        let name = format!("x-{}", suffix.replace('.', "-"));
        let (ok, err) = w.run(&["import-tar", file.to_str().unwrap(), &name]);
        assert!(ok, "import-tar {suffix}: {err}");
        assert_eq!(listing(&w.machines.join(&name)), want, "{suffix}");
    }
    // From standard input.
    let mut child = w
        .rnet()
        .args(["import-tar", "-", "piped"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fs::read(w.www.join("orig.tar.xz")).unwrap())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(listing(&w.machines.join("piped")), want);

    // clone, rename, remove, with the settings file.
    fs::write(w.machines.join("orig.nspawn"), "[Exec]\nBoot=yes\n").unwrap();
    assert!(w.run(&["clone", "orig", "copy"]).0);
    assert_eq!(listing(&w.machines.join("copy")), want);
    assert!(w.machines.join("copy.nspawn").exists());
    assert!(w.run(&["rename", "copy", "moved"]).0);
    assert!(w.machines.join("moved.nspawn").exists());
    assert!(!w.machines.join("copy").exists());
    assert!(w.run(&["remove", "moved", "piped"]).0);
    assert_eq!(
        w.images(),
        ["orig", "x-tar", "x-tar-gz", "x-tar-xz", "x-tar-zst"]
    );
}

#[test]
fn pull_tar_checks_the_checksum() {
    let Some(mut w) = World::new("pull_tar_checks_the_checksum") else {
        return;
    };
    let src = w.www.join("src");
    fs::create_dir_all(&src).unwrap();
    tree(&src);
    let want = listing(&src);
    fs::create_dir_all(&w.machines).unwrap();
    fs::rename(&src, w.machines.join("seed")).unwrap();
    let archive = w.www.join("good.tar.gz");
    assert!(w.run(&["export-tar", "seed", archive.to_str().unwrap()]).0);
    assert!(w.run(&["remove", "seed"]).0);
    fs::copy(&archive, w.www.join("bad.tar.gz")).unwrap();
    let sum = |p: &Path| {
        let out = output(Command::new("sha256sum").arg(p));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    fs::write(
        w.www.join("SHA256SUMS"),
        format!(
            "{}  good.tar.gz\n{}  bad.tar.gz\n",
            sum(&archive),
            "0".repeat(64)
        ),
    )
    .unwrap();
    fs::create_dir_all(w.www.join("nosums")).unwrap();
    fs::copy(&archive, w.www.join("nosums/lone.tar.gz")).unwrap();
    w.serve();
    let url = |f: &str| format!("http://{UPLINK_ADDR}:8080/{f}");

    let (ok, err) = w.run(&["pull-tar", &url("good.tar.gz")]);
    assert!(ok, "pull-tar good: {err}");
    assert_eq!(listing(&w.machines.join("good")), want);

    let (ok, err) = w.run(&["pull-tar", &url("bad.tar.gz"), "bad"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("does not match"), "{err}");

    let (ok, err) = w.run(&["pull-tar", &url("nosums/lone.tar.gz")]);
    assert!(!ok);
    assert!(err.contains("--verify=no"), "{err}");
    let (ok, err) = w.run(&["pull-tar", "--verify=no", &url("nosums/lone.tar.gz")]);
    assert!(ok, "{err}");

    let (ok, err) = w.run(&["pull-tar", &url("missing.tar.gz")]);
    assert!(!ok && err.lines().count() == 1, "{err}");

    assert_eq!(w.images(), ["good", "lone"]);
    let hidden: Vec<_> = fs::read_dir(&w.machines)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "temp files left: {hidden:?}");
}

#[test]
fn refusals_are_one_line_and_change_nothing() {
    let Some(mut w) = World::new("refusals_are_one_line_and_change_nothing") else {
        return;
    };
    let img = w.machines.join("busy");
    fs::create_dir_all(&img).unwrap();
    tree(&img);
    let before = listing(&w.machines);
    for args in [
        &["remove", "nothere"][..],
        &["export-tar", "nothere", "/tmp/never.tar"],
        &["clone", "busy", "busy"],
        &["rename", "nothere", "x"],
        &["import-tar", "/nonexistent.tar", "new"],
        &["import-tar", "/etc/hostname", "new"],
        &["clone", "busy", "bad_name!"],
    ] {
        let (ok, err) = w.run(args);
        assert!(!ok, "{args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    assert_eq!(listing(&w.machines), before);
    // The image of a running machine stays.
    w.rig.start_rnetd();
    let pid = w.rig.spawn(
        w.rig
            .rnet()
            .args(["run", "-n", "-M", "busy", "--", "sleep", "60"]),
    );
    w.rig.wait_machine("busy");
    let (ok, err) = w.run(&["remove", "busy"]);
    assert!(!ok && err.contains("running"), "{err}");
    assert!(img.exists());
    w.rig.signal(pid, nix::sys::signal::Signal::SIGTERM);
    w.rig.wait(pid);
}
