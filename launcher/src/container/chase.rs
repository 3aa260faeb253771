//! Paths inside a container's tree, resolved as the container will see them.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Resolves `path` inside `root` as if `root` were `/`: symlinks (absolute ones from `root`) and
/// `..` never leave `root` (systemd's `chase()` with `CHASE_PREFIX_ROOT`). What does not exist
/// is appended as it is.
pub fn chase(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, path);
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            done.pop();
            continue;
        }
        let here: PathBuf = std::iter::once(root.as_os_str().to_owned())
            .chain(done.iter().cloned())
            .chain(std::iter::once(name.clone()))
            .collect();
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(format!(
                        "{}: too many levels of symbolic links",
                        path.display()
                    ));
                }
                let target = std::fs::read_link(&here)
                    .map_err(|e| format!("reading the link {}: {e}", here.display()))?;
                if target.is_absolute() {
                    done.clear();
                }
                push_components(&mut todo, &target);
            }
            _ => done.push(name),
        }
    }
    Ok(std::iter::once(root.as_os_str().to_owned())
        .chain(done)
        .collect())
}

/// Pushes `p`'s components on the stack so that the first is popped first.
fn push_components(todo: &mut Vec<OsString>, p: &Path) {
    let comps: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    todo.extend(comps.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chase_stays_in_the_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", r.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", r.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("../run/x/resolv.conf", r.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(chase(r, Path::new("/lib/a")).unwrap(), r.join("usr/lib/a"));
        assert_eq!(
            chase(r, Path::new("/etc/up")).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(chase(r, Path::new("/../../x")).unwrap(), r.join("x"));
        assert_eq!(
            chase(r, Path::new("/etc/resolv.conf")).unwrap(),
            r.join("run/x/resolv.conf")
        );
        assert!(
            chase(r, Path::new("/loop"))
                .unwrap_err()
                .contains("too many levels")
        );
    }
}
