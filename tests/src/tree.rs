//! OS trees for container tests: a static busybox (Debian's busybox-static, or
//! `RNET_BUSYBOX_STATIC`) with its applets, os-release and a user database, in a temp dir that
//! must have no mount left when it drops.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::output;

/// Whether the ELF file at `p` is statically linked (has no `PT_INTERP` program header).
pub fn is_static_elf(p: &Path) -> bool {
    let Ok(b) = std::fs::read(p) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        b.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != 3)
    })
}

/// A static busybox: `$RNET_BUSYBOX_STATIC`, or the system's when it is busybox-static's.
pub fn static_busybox(test: &str) -> Option<PathBuf> {
    let candidates = std::env::var_os("RNET_BUSYBOX_STATIC")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/bin/busybox", "/usr/bin/busybox"].map(PathBuf::from));
    for c in candidates {
        if is_static_elf(&c) {
            return Some(c);
        }
    }
    let reason = "needs a static busybox (Debian's busybox-static, or RNET_BUSYBOX_STATIC)";
    if std::env::var("RNET_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: {reason}, and RNET_REQUIRE_PRIVILEGED=1");
    }
    eprintln!("SKIP {test}: {reason}");
    None
}

/// A minimal OS tree: busybox and its applets, os-release, a user database with `web`.
pub struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    pub fn new(busybox: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rnet-tree-")
            .tempdir()
            .unwrap();
        let r = dir.path();
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "home/web", "srv",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(busybox, r.join("bin/busybox")).unwrap();
        let list = output(Command::new(busybox).arg("--list"));
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("/bin/busybox", r.join("bin").join(applet));
            }
        }
        std::os::unix::fs::symlink("/bin/busybox", r.join("sbin/init")).unwrap();
        std::fs::write(
            r.join("etc/os-release"),
            "ID=rnet-test\nNAME=\"rnet test tree\"\n",
        )
        .unwrap();
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/home/web:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            r.join("etc/group"),
            "root:x:0:\nwheel:x:10:web\nweb:x:1000:\n",
        )
        .unwrap();
        std::os::unix::fs::chown(r.join("home/web"), Some(1000), Some(1000)).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn arg(&self) -> String {
        self.path().display().to_string()
    }

    pub fn write(&self, file: &str, text: &str, mode: u32) {
        let p = self.path().join(file.trim_start_matches('/'));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // The test's own check: nothing of the container is mounted on the host.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let here = self.arg();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&here)).collect();
        if !std::thread::panicking() {
            assert!(left.is_empty(), "mounts left behind: {left:?}");
        }
    }
}
