//! The container options of `rnet run -D`, checked before anything happens: the tree is an OS
//! tree, bind sources exist, the user is in the tree's user database, the boot init is there.
//! Pure parsing lives here and is unit-tested; the only side effects are reads of the host's
//! files and the tree's.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::container::chase::chase;

/// How the payload starts (systemd-nspawn's `--as-pid2`, `--as-pid1`, `--boot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// rnet's minimal init is PID 1, the payload PID 2 (the default).
    Pid2,
    /// The payload is PID 1.
    Pid1,
    /// The tree's init is PID 1.
    Boot,
}

/// `--console=MODE` (systemd-nspawn(1)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// A pty relayed to the launcher's terminal.
    Interactive,
    /// A pty whose output is relayed; input is not.
    ReadOnly,
    /// A pty connected nowhere.
    Passive,
    /// The launcher's own stdio.
    Pipe,
}

impl Console {
    /// Parses a `--console` value; `on_tty` picks the default.
    pub fn parse(value: Option<&str>, on_tty: bool) -> Result<Self, String> {
        Ok(match value {
            None if on_tty => Self::Interactive,
            None => Self::Pipe,
            Some("interactive") => Self::Interactive,
            Some("read-only") => Self::ReadOnly,
            Some("passive") => Self::Passive,
            Some("pipe") => Self::Pipe,
            Some(other) => {
                return Err(format!(
                    "invalid --console mode {other:?}: use interactive, read-only, passive or pipe"
                ));
            }
        })
    }
}

/// A `--bind`/`--bind-ro`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host's path.
    pub src: PathBuf,
    /// The path in the container.
    pub dst: PathBuf,
    /// `--bind-ro`.
    pub read_only: bool,
    /// `rbind` (the default): the submounts of `src` come along.
    pub recursive: bool,
}

impl Bind {
    /// Parses `SRC[:DST[:OPTS]]` as systemd-nspawn(1) does (`\:` is a colon in a path).
    pub fn parse(spec: &str, read_only: bool) -> Result<Self, String> {
        let opt = if read_only { "--bind-ro" } else { "--bind" };
        let parts = split_escaped(spec);
        if parts.is_empty() || parts.len() > 3 || parts[0].is_empty() {
            return Err(format!("invalid {opt} {spec:?}: expected SRC[:DST[:OPTS]]"));
        }
        let src = PathBuf::from(&parts[0]);
        if !src.is_absolute() {
            return Err(format!(
                "invalid {opt} {spec:?}: the source must be an absolute path"
            ));
        }
        let dst = match parts.get(1).filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => src.clone(),
        };
        container_path(&dst).map_err(|e| format!("invalid {opt} {spec:?}: {e}"))?;
        let mut recursive = true;
        for o in parts.get(2).map(|o| o.split(',')).into_iter().flatten() {
            match o {
                "rbind" => recursive = true,
                "norbind" => recursive = false,
                "" | "noidmap" => {}
                "idmap" | "rootidmap" => {
                    return Err(format!(
                        "invalid {opt} {spec:?}: {o} is not supported yet (idmapped mounts \
                         apply to the tree only, --private-users-ownership=map)"
                    ));
                }
                other => {
                    return Err(format!(
                        "invalid {opt} {spec:?}: unknown option {other:?} (use rbind or norbind)"
                    ));
                }
            }
        }
        Ok(Self {
            src,
            dst,
            read_only,
            recursive,
        })
    }
}

/// A `--tmpfs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    /// The path in the container.
    pub path: PathBuf,
    /// Mount options (`mode=0755` unless given).
    pub options: String,
}

impl Tmpfs {
    /// Parses `PATH[:OPTS]`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (path, options) = match spec.split_once(':') {
            Some((p, o)) => (p, o.to_owned()),
            None => (spec, "mode=0755".to_owned()),
        };
        let path = PathBuf::from(path);
        container_path(&path).map_err(|e| format!("invalid --tmpfs {spec:?}: {e}"))?;
        if options.contains('\0') {
            return Err(format!(
                "invalid --tmpfs {spec:?}: options contain a NUL byte"
            ));
        }
        Ok(Self { path, options })
    }
}

/// A user of the tree's user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// UID.
    pub uid: u32,
    /// Primary GID.
    pub gid: u32,
    /// Supplementary groups (from the tree's /etc/group).
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

impl User {
    /// Finds `who` (a name or a UID) in `passwd` and its groups in `group` (the files' text).
    pub fn find(who: &str, passwd: &str, group: &str) -> Option<Self> {
        let numeric = who.parse::<u32>().ok();
        let user = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            let uid = f[2].parse::<u32>().ok()?;
            let gid = f[3].parse::<u32>().ok()?;
            (f[0] == who || numeric == Some(uid)).then(|| Self {
                name: f[0].to_owned(),
                uid,
                gid,
                groups: Vec::new(),
                home: f[5].to_owned(),
                shell: f[6].to_owned(),
            })
        })?;
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() < 4 || !f[3].split(',').any(|m| m == user.name) {
                    return None;
                }
                f[2].parse::<u32>().ok()
            })
            .filter(|g| *g != user.gid)
            .collect();
        Some(Self { groups, ..user })
    }
}

/// Splits at unescaped colons; `\:` and `\\` are a colon and a backslash.
fn split_escaped(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(p)) = (chars.next(), parts.last_mut()) {
                    p.push(n);
                }
            }
            ':' => parts.push(String::new()),
            c => {
                if let Some(p) = parts.last_mut() {
                    p.push(c);
                }
            }
        }
    }
    parts
}

/// A path in the container: absolute, without `..`, not `/` itself.
fn container_path(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("{} is not an absolute path", p.display()));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{} contains \"..\"", p.display()));
    }
    if p.components().all(|c| c == Component::RootDir) {
        return Err("the container's root cannot be mounted over".into());
    }
    if p.as_os_str().as_encoded_bytes().contains(&0) {
        return Err("the path contains a NUL byte".into());
    }
    Ok(())
}

/// A `--setenv` entry as `NAME=VALUE`; a bare `NAME` takes the launcher's value.
pub fn parse_setenv(spec: &str, host: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, value) = match spec.split_once('=') {
        Some((n, v)) => (n, Some(v.to_owned())),
        None => (spec, None),
    };
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "invalid --setenv {spec:?}: the name must be letters, digits and '_'"
        ));
    }
    let value = match value.or_else(|| host(name)) {
        Some(v) => v,
        None => return Err(format!("invalid --setenv {spec:?}: {name} is not set here")),
    };
    if value.contains('\0') {
        return Err(format!(
            "invalid --setenv {spec:?}: the value contains a NUL byte"
        ));
    }
    Ok(format!("{name}={value}"))
}

/// `yes`/`no` and their synonyms (systemd's `parse_boolean()`).
pub fn parse_bool(opt: &str, v: &str) -> Result<bool, String> {
    match v {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => Err(format!("invalid {opt} {v:?}: use yes or no")),
    }
}

/// The inits `--boot` looks for, in this order (systemd-nspawn's `inner_child()`).
pub const INITS: [&str; 3] = [
    "/usr/lib/systemd/systemd",
    "/lib/systemd/systemd",
    "/sbin/init",
];

/// The first of [`INITS`] that is an executable file in the tree.
pub fn find_init(root: &Path) -> Option<&'static str> {
    INITS.into_iter().find(|init| {
        chase(root, Path::new(init))
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Refuses a directory that is not an OS tree, with systemd-nspawn's messages
/// (`src/nspawn/nspawn.c`: `/usr/` for a command, an os-release file for `--boot`).
pub fn check_tree(root: &Path, boot: bool) -> Result<(), String> {
    let shown = root.display();
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("Directory {shown} is not a directory.")),
        Err(e) => {
            return Err(format!(
                "Directory {shown} cannot be used: {}",
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc()
            ));
        }
    }
    if root == Path::new("/") {
        return Err("Spawning container on root directory is not supported. Refusing.".into());
    }
    if boot {
        let found = ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .any(|f| chase(root, Path::new(f)).ok().is_some_and(|p| p.is_file()));
        if !found {
            return Err(format!(
                "Directory {shown} doesn't look like an OS root directory (os-release file is missing). Refusing."
            ));
        }
    } else if std::fs::symlink_metadata(root.join("usr")).is_err() {
        return Err(format!(
            "Directory {shown} doesn't look like it has an OS tree (/usr/ directory is missing). Refusing."
        ));
    }
    Ok(())
}

/// The payload's environment: a fresh one, as systemd-nspawn builds it (`inner_child()`), with
/// `container=rnet`, then the `--setenv` entries (later ones win).
pub fn environment(
    uuid: &str,
    user: Option<&User>,
    term: Option<&str>,
    setenv: &[String],
) -> Vec<CString> {
    let (name, home, shell) = match user {
        Some(u) => (u.name.as_str(), u.home.as_str(), Some(u.shell.as_str())),
        None => ("root", "/root", None),
    };
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        "container=rnet".to_owned(),
        format!("container_uuid={uuid}"),
        format!("HOME={home}"),
        format!("USER={name}"),
        format!("LOGNAME={name}"),
    ];
    if let Some(shell) = shell {
        env.push(format!("SHELL={shell}"));
    }
    if let Some(term) = term {
        env.push(format!("TERM={term}"));
    }
    for e in setenv {
        let key = e.split('=').next().unwrap_or_default();
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    env.into_iter()
        .filter_map(|e| CString::new(e).ok())
        .collect()
}

/// A random (version 4) UUID, as `container_uuid` and `/run/host/container-uuid` carry it.
pub fn random_uuid() -> Result<String, String> {
    let mut b = [0u8; 16];
    api::fsutil::random_bytes(&mut b).map_err(|e| e.to_string())?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse_as_nspawn_does() {
        assert_eq!(
            Bind::parse("/srv/a", false).unwrap(),
            Bind {
                src: "/srv/a".into(),
                dst: "/srv/a".into(),
                read_only: false,
                recursive: true
            }
        );
        let b = Bind::parse("/srv/a\\:b:/mnt/x:norbind", true).unwrap();
        assert_eq!(b.src, PathBuf::from("/srv/a:b"));
        assert_eq!(b.dst, PathBuf::from("/mnt/x"));
        assert!(b.read_only && !b.recursive);
        assert_eq!(
            Bind::parse("rel:/x", false).unwrap_err(),
            "invalid --bind \"rel:/x\": the source must be an absolute path"
        );
        assert_eq!(
            Bind::parse("/a:/b/../c", false).unwrap_err(),
            "invalid --bind \"/a:/b/../c\": /b/../c contains \"..\""
        );
        assert!(
            Bind::parse("/a:/b:idmap", false)
                .unwrap_err()
                .contains("not supported yet")
        );
        assert!(
            Bind::parse("/a:/b:bogus", false)
                .unwrap_err()
                .contains("unknown option")
        );
        assert!(Bind::parse("/a:/", false).is_err());
    }

    #[test]
    fn tmpfs_defaults_to_mode_0755() {
        assert_eq!(
            Tmpfs::parse("/scratch").unwrap(),
            Tmpfs {
                path: "/scratch".into(),
                options: "mode=0755".into()
            }
        );
        assert_eq!(
            Tmpfs::parse("/s:size=1m,mode=0700").unwrap().options,
            "size=1m,mode=0700"
        );
        assert!(Tmpfs::parse("s").is_err());
    }

    #[test]
    fn setenv_takes_a_value_or_the_launchers() {
        let host = |n: &str| (n == "TERM").then(|| "xterm".to_owned());
        assert_eq!(parse_setenv("A=b=c", host).unwrap(), "A=b=c");
        assert_eq!(parse_setenv("TERM", host).unwrap(), "TERM=xterm");
        assert!(parse_setenv("NOPE", host).unwrap_err().contains("not set"));
        assert!(parse_setenv("1A=x", host).is_err());
        assert!(parse_setenv("=x", host).is_err());
    }

    #[test]
    fn users_come_from_the_trees_database() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/home/web:/bin/ash\n";
        let group = "root:x:0:\nweb:x:1000:\nwheel:x:10:web,other\naudio:x:29:other\n";
        let u = User::find("web", passwd, group).unwrap();
        assert_eq!((u.uid, u.gid, u.groups.clone()), (1000, 1000, vec![10]));
        assert_eq!(User::find("1000", passwd, group), Some(u));
        assert_eq!(User::find("0", passwd, group).unwrap().name, "root");
        assert_eq!(User::find("nobody", passwd, group), None);
    }

    #[test]
    fn the_environment_is_fresh_and_setenv_wins() {
        let env = environment(
            "u-1",
            None,
            Some("xterm"),
            &["HOME=/srv".into(), "X=1".into()],
        );
        let env: Vec<String> = env.iter().map(|e| e.to_string_lossy().into()).collect();
        assert!(env.contains(&"container=rnet".into()));
        assert!(env.contains(&"container_uuid=u-1".into()));
        assert!(env.contains(&"TERM=xterm".into()));
        assert!(env.contains(&"HOME=/srv".into()));
        assert!(!env.contains(&"HOME=/root".into()));
        assert_eq!(env.last().unwrap(), "X=1");
    }

    #[test]
    fn console_modes() {
        assert_eq!(Console::parse(None, true), Ok(Console::Interactive));
        assert_eq!(Console::parse(None, false), Ok(Console::Pipe));
        assert_eq!(Console::parse(Some("passive"), true), Ok(Console::Passive));
        assert!(Console::parse(Some("tty"), true).is_err());
    }

    #[test]
    fn uuids_are_version_4() {
        let u = random_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, random_uuid().unwrap());
    }

    #[test]
    fn trees_are_checked_with_nspawns_messages() {
        let d = tempfile::tempdir().unwrap();
        let shown = d.path().display().to_string();
        assert_eq!(
            check_tree(d.path(), false).unwrap_err(),
            format!(
                "Directory {shown} doesn't look like it has an OS tree (/usr/ directory is missing). Refusing."
            )
        );
        std::fs::create_dir_all(d.path().join("usr/lib")).unwrap();
        check_tree(d.path(), false).unwrap();
        assert!(
            check_tree(d.path(), true)
                .unwrap_err()
                .contains("os-release file is missing")
        );
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", d.path().join("etc/os-release"))
            .unwrap();
        std::fs::write(d.path().join("usr/lib/os-release"), "ID=test\n").unwrap();
        check_tree(d.path(), true).unwrap();
        assert!(
            check_tree(&d.path().join("nope"), false)
                .unwrap_err()
                .ends_with("cannot be used: No such file or directory")
        );
        assert!(
            check_tree(Path::new("/"), false)
                .unwrap_err()
                .starts_with("Spawning")
        );
    }

    #[test]
    fn the_boot_init_is_found_through_symlinks_in_the_tree() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(find_init(d.path()), None);
        std::fs::create_dir_all(d.path().join("bin")).unwrap();
        std::fs::create_dir_all(d.path().join("sbin")).unwrap();
        let bb = d.path().join("bin/busybox");
        std::fs::write(&bb, "").unwrap();
        std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o755)).unwrap();
        // An absolute link is resolved in the tree, not on the host.
        std::os::unix::fs::symlink("/bin/busybox", d.path().join("sbin/init")).unwrap();
        assert_eq!(find_init(d.path()), Some("/sbin/init"));
    }
}
