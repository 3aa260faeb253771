//! `rnet enable|disable NAME`: the machine started at boot by `rnet@NAME.service`
//! (`examples/rnet@.service`, modelled on systemd's `systemd-nspawn@.service`), as
//! `machinectl enable` links `systemd-nspawn@NAME.service` into `machines.target.wants/`.

use std::path::{Path, PathBuf};

/// The template unit shipped in `examples/`.
pub const TEMPLATE: &str = include_str!("../../../examples/rnet@.service");
/// The binary the shipped template names.
const SHIPPED_BINARY: &str = "/usr/local/bin/rnet";
/// Where units are installed, below the root.
const UNIT_DIR: &str = "etc/systemd/system";

/// The template with `ExecStart=` naming `binary`.
pub fn template_for(binary: &Path) -> String {
    TEMPLATE.replace(
        &format!("ExecStart={SHIPPED_BINARY} "),
        &format!("ExecStart={} ", binary.display()),
    )
}

fn unit_dir(root: &Path) -> PathBuf {
    root.join(UNIT_DIR)
}

/// The link of `name` in `machines.target.wants/`.
pub fn wants_link(root: &Path, name: &str) -> PathBuf {
    unit_dir(root)
        .join("machines.target.wants")
        .join(format!("rnet@{name}.service"))
}

/// Whether systemd manages this machine (as `sd_booted()`), so a reload makes sense.
fn systemd_runs(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").is_dir()
}

fn reload(root: &Path) -> Result<(), String> {
    if !systemd_runs(root) {
        return Ok(());
    }
    let status = std::process::Command::new("systemctl")
        .arg("daemon-reload")
        .status()
        .map_err(|e| format!("running systemctl daemon-reload: {e}"))?;
    if !status.success() {
        return Err(format!("systemctl daemon-reload failed ({status})"));
    }
    Ok(())
}

/// Installs the template (if it is not there) and links `name` into `machines.target.wants/`.
pub fn enable(root: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = unit_dir(root);
    let template = dir.join("rnet@.service");
    let wants = dir.join("machines.target.wants");
    std::fs::create_dir_all(&wants).map_err(|e| format!("creating {}: {e}", wants.display()))?;
    if !template.exists() {
        let binary =
            std::env::current_exe().map_err(|e| format!("finding rnet's own binary: {e}"))?;
        api::fsutil::write_atomic(&template, template_for(&binary).as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let link = wants_link(root, name);
    // The link names the unit as systemd sees it (below the root), as `systemctl --root` makes.
    let target = Path::new("/").join(UNIT_DIR).join("rnet@.service");
    match std::fs::read_link(&link) {
        Ok(t) if t == target => {}
        _ => {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)
                .map_err(|e| format!("linking {}: {e}", link.display()))?;
        }
    }
    reload(root)?;
    Ok(link)
}

/// Removes the link of `name`; whether there was one.
pub fn disable(root: &Path, name: &str) -> Result<bool, String> {
    let link = wants_link(root, name);
    match std::fs::remove_file(&link) {
        Ok(()) => {
            reload(root)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("removing {}: {e}", link.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_nspawns_and_names_the_binary() {
        for line in [
            "KillMode=mixed",
            "RestartForceExitStatus=133",
            "Delegate=yes",
            "Slice=machine.slice",
            "WantedBy=machines.target",
        ] {
            assert!(TEMPLATE.lines().any(|l| l == line), "{line}");
        }
        let t = template_for(Path::new("/opt/rnet/bin/rnet"));
        assert!(
            t.lines()
                .any(|l| l == "ExecStart=/opt/rnet/bin/rnet start --foreground %i"),
            "{t}"
        );
    }

    #[test]
    fn enable_links_and_disable_unlinks_below_the_root() {
        let root = tempfile::tempdir().unwrap();
        let link = enable(root.path(), "box").unwrap();
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("/etc/systemd/system/rnet@.service")
        );
        assert!(
            root.path()
                .join("etc/systemd/system/rnet@.service")
                .is_file()
        );
        // Twice is fine.
        enable(root.path(), "box").unwrap();
        assert!(disable(root.path(), "box").unwrap());
        assert!(!disable(root.path(), "box").unwrap());
        assert!(!link.exists());
    }
}
