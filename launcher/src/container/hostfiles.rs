//! `--resolv-conf=` and `--timezone=` of a `-D` container: the container's `/etc/resolv.conf`
//! and `/etc/localtime` from the host's, as systemd-nspawn(1) sets them up
//! (`src/nspawn/nspawn.c`: `setup_resolv_conf()`, `setup_timezone()`), see
//! `docs/architecture.md#the-containers-filesystem-and-isolation`.
//!
//! The mode is parsed before the fork, the host observed (which files exist, whether
//! systemd-resolved's stub listens, where `/etc/localtime` points), and a pure decision turns
//! mode and observations into an action; the container's first process performs it on the tree
//! it assembles, before its `--bind`s (as nspawn, whose custom mounts come after), so a bind
//! over either file wins. `copy`, `replace`, `delete` and `symlink` write the tree itself (with
//! `-x`, its overlay), as nspawn does; `bind` writes nothing but a missing mount point.
//!
//! The host's files are read below `/`, or below `RNET_HOST_ROOT` when set: a testing hook, so
//! tests can offer a systemd-resolved's files or a zone without touching the machine's own.

use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::container::chase::chase;

/// systemd's private copies of resolved's files (`PRIVATE_STATIC_RESOLV_CONF`,
/// `PRIVATE_UPLINK_RESOLV_CONF`, `PRIVATE_STUB_RESOLV_CONF`) and the host's own file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `/etc/resolv.conf`.
    Host,
    /// `/usr/lib/systemd/resolv.conf`: the stub 127.0.0.53 without search domains.
    Static,
    /// `/run/systemd/resolve/resolv.conf`: resolved's upstream servers and domains.
    Uplink,
    /// `/run/systemd/resolve/stub-resolv.conf`: the stub 127.0.0.53 and the search domains.
    Stub,
}

impl Source {
    /// The file on the host (below `/`).
    pub fn path(self) -> &'static str {
        match self {
            Source::Host => "/etc/resolv.conf",
            Source::Static => "/usr/lib/systemd/resolv.conf",
            Source::Uplink => "/run/systemd/resolve/resolv.conf",
            Source::Stub => "/run/systemd/resolve/stub-resolv.conf",
        }
    }
}

/// `--resolv-conf=MODE` (nspawn's `resolv_conf_mode_table`; a boolean is `auto` or `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvConf {
    Off,
    Delete,
    Auto,
    /// Copied over the file, unless it is a symlink (then left alone).
    Copy(Source),
    /// Copied over the file, replacing even a symlink.
    Replace(Source),
    /// Bound read-only over the file (over a symlink too, without following it).
    Bind(Source),
}

/// The modes, for the refusal's text.
const RESOLV_MODES: &str = "off, delete, auto, copy-host, copy-static, copy-uplink, copy-stub, \
     replace-host, replace-static, replace-uplink, replace-stub, bind-host, bind-static, \
     bind-uplink, bind-stub";

impl ResolvConf {
    pub fn parse(s: &str) -> Result<Self, String> {
        let source = |name: &str| match name {
            "host" => Some(Source::Host),
            "static" => Some(Source::Static),
            "uplink" => Some(Source::Uplink),
            "stub" => Some(Source::Stub),
            _ => None,
        };
        let mode = match s {
            "off" | "no" | "false" | "0" | "n" | "f" => Some(Self::Off),
            "auto" | "yes" | "true" | "1" | "y" | "t" | "on" => Some(Self::Auto),
            "delete" => Some(Self::Delete),
            _ => s.split_once('-').and_then(|(how, from)| {
                let from = source(from)?;
                match how {
                    "copy" => Some(Self::Copy(from)),
                    "replace" => Some(Self::Replace(from)),
                    "bind" => Some(Self::Bind(from)),
                    _ => None,
                }
            }),
        };
        mode.ok_or_else(|| format!("invalid --resolv-conf={s:?}: use {RESOLV_MODES}"))
    }
}

/// `--timezone=MODE` (nspawn's `timezone_mode_table`; a boolean is `auto` or `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timezone {
    Off,
    Copy,
    Bind,
    Symlink,
    Delete,
    Auto,
}

impl Timezone {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "off" | "no" | "false" | "0" | "n" | "f" => Self::Off,
            "auto" | "yes" | "true" | "1" | "y" | "t" | "on" => Self::Auto,
            "copy" => Self::Copy,
            "bind" => Self::Bind,
            "symlink" => Self::Symlink,
            "delete" => Self::Delete,
            _ => {
                return Err(format!(
                    "invalid --timezone={s:?}: use off, copy, bind, symlink, delete or auto"
                ));
            }
        })
    }
}

/// The host's `/etc/localtime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Localtime {
    Missing,
    /// A regular file (not a link).
    File,
    /// A link, with its target.
    Link(PathBuf),
    /// Unreadable otherwise: the error.
    Error(String),
}

/// What the host offers, observed before the fork.
#[derive(Debug, Clone)]
pub struct Host {
    /// `/`, or `RNET_HOST_ROOT`.
    pub root: PathBuf,
    /// The stub file exists and a socket is bound to 127.0.0.53:53 (nspawn asks resolved over
    /// D-Bus whether its stub listener is on; rnet's launcher has no D-Bus and looks for the
    /// listener itself, in the launcher's network namespace).
    pub stub_listening: bool,
    /// The host's `/etc/resolv.conf` exists.
    pub resolv_conf: bool,
    pub localtime: Localtime,
}

impl Host {
    /// Looks at the host's files (below `RNET_HOST_ROOT` if set) and its UDP sockets.
    pub fn observe() -> Self {
        let root = std::env::var_os("RNET_HOST_ROOT")
            .filter(|r| !r.is_empty())
            .map_or_else(|| PathBuf::from("/"), PathBuf::from);
        let exists = |p: &str| root.join(p.trim_start_matches('/')).exists();
        let localtime = match std::fs::read_link(root.join("etc/localtime")) {
            Ok(target) => Localtime::Link(target),
            Err(e) if e.kind() == ErrorKind::NotFound => Localtime::Missing,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Localtime::File,
            Err(e) => Localtime::Error(e.to_string()),
        };
        let udp = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
        Host {
            stub_listening: exists(Source::Stub.path()) && stub_in(&udp),
            resolv_conf: exists(Source::Host.path()),
            localtime,
            root,
        }
    }

    /// `path` (absolute, as on a host) below the observed root, its links followed inside it
    /// (so a test's root may hold absolute links, as the host's `/etc/localtime` is).
    pub fn path(&self, path: &str) -> PathBuf {
        chase(&self.root, Path::new(path))
            .unwrap_or_else(|_| self.root.join(path.trim_start_matches('/')))
    }
}

/// Whether `/proc/net/udp`'s text lists a socket bound to 127.0.0.53:53 (`3500007F:0035`: the
/// address as the kernel prints a native-endian `u32` of network-order bytes).
fn stub_in(proc_net_udp: &str) -> bool {
    proc_net_udp.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|local| local.eq_ignore_ascii_case("3500007F:0035"))
    })
}

/// What happens to the container's `/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvAction {
    Off,
    Delete,
    Copy(PathBuf),
    Replace(PathBuf),
    Bind(PathBuf),
    /// rnet's file naming the DNS servers of the container's lease, bound read-only (written
    /// in `/run` when the tree's file is a link there).
    Generated(String),
}

/// `setup_resolv_conf()`'s choice. `generated` is rnet's file for a private network whose
/// `host0` rnet configured (its gateway's forwarder): `auto` gives it that file, where nspawn
/// would leave the file alone (it cannot know the network's DNS server); any other private
/// network gets `off` from `auto`, as in nspawn. `etc_writable`: not `--read-only`.
pub fn resolv_action(
    mode: ResolvConf,
    host: &Host,
    private_network: bool,
    generated: Option<String>,
    etc_writable: bool,
) -> ResolvAction {
    let pick = |copy: bool, s: Source| {
        let p = host.path(s.path());
        if copy {
            ResolvAction::Copy(p)
        } else {
            ResolvAction::Bind(p)
        }
    };
    match mode {
        ResolvConf::Off => ResolvAction::Off,
        ResolvConf::Delete => ResolvAction::Delete,
        ResolvConf::Copy(s) => ResolvAction::Copy(host.path(s.path())),
        ResolvConf::Replace(s) => ResolvAction::Replace(host.path(s.path())),
        ResolvConf::Bind(s) => ResolvAction::Bind(host.path(s.path())),
        ResolvConf::Auto if private_network => {
            generated.map_or(ResolvAction::Off, ResolvAction::Generated)
        }
        ResolvConf::Auto if host.stub_listening => pick(etc_writable, Source::Stub),
        ResolvConf::Auto if host.resolv_conf => pick(etc_writable, Source::Host),
        ResolvConf::Auto if etc_writable => ResolvAction::Delete,
        ResolvConf::Auto => ResolvAction::Off,
    }
}

/// What happens to the container's `/etc/localtime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimezoneAction {
    Off,
    Delete,
    /// A link `../usr/share/zoneinfo/ZONE` when the tree has the zone, else as `Bind`.
    Symlink(String),
    /// The host's file bound read-only (copied if the bind fails).
    Bind(PathBuf),
    /// The host's file copied over the container's (replacing a link).
    Copy(PathBuf),
    /// Nothing, with this warning.
    Warn(String),
}

/// The zone of a link into the zone database (nspawn's `timezone_from_path()`).
fn zone_of(link: &Path) -> Option<String> {
    let s = link.to_str()?;
    ["../usr/share/zoneinfo/", "/usr/share/zoneinfo/"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .filter(|z| !z.is_empty())
        .map(str::to_owned)
}

/// `setup_timezone()`'s choice.
pub fn timezone_action(mode: Timezone, host: &Host, etc_writable: bool) -> TimezoneAction {
    let file = host.path("/etc/localtime");
    let m = match (mode, &host.localtime) {
        (Timezone::Auto, Localtime::Missing) if etc_writable => Timezone::Delete,
        (Timezone::Auto, Localtime::Missing) => Timezone::Off,
        (Timezone::Auto, Localtime::File) if etc_writable => Timezone::Copy,
        (Timezone::Auto, Localtime::File) => Timezone::Bind,
        (Timezone::Auto | Timezone::Symlink, Localtime::Link(_)) if etc_writable => {
            Timezone::Symlink
        }
        (Timezone::Auto, Localtime::Link(_)) => Timezone::Bind,
        (Timezone::Symlink, Localtime::Link(_)) => Timezone::Symlink,
        (Timezone::Auto | Timezone::Symlink, other) => {
            let why = match other {
                Localtime::Missing => "it does not exist".to_owned(),
                Localtime::File => "it is not a symlink".to_owned(),
                Localtime::Error(e) => e.clone(),
                Localtime::Link(_) => unreachable!("handled above"),
            };
            return TimezoneAction::Warn(format!(
                "cannot read the host's /etc/localtime link ({why}); the container's timezone is left as it is"
            ));
        }
        (m, _) => m,
    };
    match m {
        Timezone::Off => TimezoneAction::Off,
        Timezone::Delete => TimezoneAction::Delete,
        Timezone::Copy => TimezoneAction::Copy(file),
        Timezone::Bind => TimezoneAction::Bind(file),
        Timezone::Symlink => {
            let Localtime::Link(link) = &host.localtime else {
                unreachable!("symlink is chosen only for a link")
            };
            match zone_of(link) {
                Some(z) => TimezoneAction::Symlink(z),
                None => TimezoneAction::Warn(
                    "the host's /etc/localtime does not point into /usr/share/zoneinfo/; the container's timezone is left as it is".into(),
                ),
            }
        }
        Timezone::Auto => unreachable!("auto is resolved above"),
    }
}

fn warn(text: impl std::fmt::Display) {
    eprintln!("rnet: warning: {text}");
}

/// Whether an error is the tree refusing the write (read-only, not ours): nspawn stays quiet.
fn refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EROFS | libc::EACCES | libc::EPERM | libc::ELOOP)
    )
}

/// An `O_PATH` handle on the host file an action reads, opened before the scratch tmpfs on the
/// host's `/tmp` can hide it (a test's host root may live there), or the error to report when
/// the file is needed: the container's file is then left as it is.
pub fn open_source(path: Option<&Path>) -> Option<Result<OwnedFd, String>> {
    let path = path?;
    Some(
        File::options()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)
            .map(OwnedFd::from)
            .map_err(|e| {
                format!(
                    "{}: {e}; the container's file is left as it is",
                    path.display()
                )
            }),
    )
}

/// The source's handle, or a warning and `None` when it could not be opened.
fn needed(src: Option<&Result<OwnedFd, String>>) -> Option<&OwnedFd> {
    match src? {
        Ok(fd) => Some(fd),
        Err(e) => {
            warn(e);
            None
        }
    }
}

impl ResolvAction {
    /// The host file this action reads.
    pub fn source(&self) -> Option<&Path> {
        match self {
            ResolvAction::Copy(p) | ResolvAction::Replace(p) | ResolvAction::Bind(p) => Some(p),
            _ => None,
        }
    }
}

impl TimezoneAction {
    /// The host file this action may read (`Symlink` falls back to a bind).
    pub fn source(&self, host_localtime: &Path) -> Option<PathBuf> {
        match self {
            TimezoneAction::Bind(p) | TimezoneAction::Copy(p) => Some(p.clone()),
            TimezoneAction::Symlink(_) => Some(host_localtime.to_owned()),
            _ => None,
        }
    }
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn read_source(src: &OwnedFd) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(fd_path(src))?.read_to_end(&mut buf)?;
    Ok(buf)
}

/// nspawn's `copy_file(..., O_TRUNC|O_NOFOLLOW, 0644)`: over the file, never through a link.
fn copy_over(src: &OwnedFd, target: &Path) -> std::io::Result<()> {
    let text = read_source(src)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)?
        .write_all(&text)
}

/// nspawn's `copy_file_atomic(..., COPY_REPLACE)`: a new file renamed over whatever is there.
fn replace(src: &OwnedFd, target: &Path) -> std::io::Result<()> {
    let text = read_source(src)?;
    let mut name = OsString::from(".#");
    name.push(target.file_name().unwrap_or_default());
    name.push(".rnet");
    let tmp = target.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text))
        .and_then(|()| std::fs::rename(&tmp, target));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Binds `src` read-only (nosuid, nodev) on `target` without following `target` if it is a
/// link (nspawn's `mount_nofollow()`): a link is covered, not followed.
fn bind_over(src: &OwnedFd, target: &Path) -> Result<(), String> {
    let t = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(target)
        .map_err(|e| format!("opening {}: {e}", target.display()))?;
    let t = OwnedFd::from(t);
    nix::mount::mount(
        Some(fd_path(src).as_str()),
        fd_path(&t).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("binding over {}: {}", target.display(), e.desc()))?;
    // The path now leads to what was mounted (mounts are crossed before links are followed).
    crate::container::fs::remount_ro(target, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
}

/// Creates an empty file where a bind needs a mount point; false when it cannot.
fn touch(p: &Path, etc_writable: bool) -> bool {
    if std::fs::symlink_metadata(p).is_ok() {
        return true;
    }
    etc_writable
        && std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(p)
            .is_ok()
}

/// The tree's `/etc` (links followed inside the tree), created if missing and allowed.
fn etc_of(new: &Path) -> Result<PathBuf, String> {
    chase(new, Path::new("/etc"))
}

/// Performs `action` on the tree assembled at `new`. `src` is [`open_source`]'s handle. Only a
/// failed mount is an error; what nspawn only logs is a warning here (or nothing where nspawn is
/// quiet: a read-only tree, a copy refused by a link).
pub fn apply_resolv(
    new: &Path,
    action: &ResolvAction,
    src: Option<&Result<OwnedFd, String>>,
    etc_writable: bool,
) -> Result<(), String> {
    let where_ = etc_of(new)?.join("resolv.conf");
    match action {
        ResolvAction::Off => Ok(()),
        ResolvAction::Generated(text) => generated(new, text, etc_writable),
        ResolvAction::Delete => {
            if !etc_writable {
                warn("--read-only: the container's /etc/resolv.conf is not deleted");
                return Ok(());
            }
            match std::fs::remove_file(&where_) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    warn(format_args!(
                        "removing the container's /etc/resolv.conf: {e}"
                    ));
                }
                _ => {}
            }
            Ok(())
        }
        ResolvAction::Bind(_) | ResolvAction::Copy(_) | ResolvAction::Replace(_) => {
            let Some(src) = needed(src) else {
                return Ok(());
            };
            if let ResolvAction::Bind(_) = action {
                if !touch(&where_, etc_writable) {
                    return Ok(());
                }
                match bind_over(src, &where_) {
                    Ok(()) => return Ok(()),
                    // nspawn copies when the bind fails.
                    Err(e) => warn(format_args!("{e}; copying instead")),
                }
            }
            if !etc_writable {
                return Ok(());
            }
            let done = if let ResolvAction::Replace(_) = action {
                replace(src, &where_)
            } else {
                copy_over(src, &where_)
            };
            match done {
                Err(e) if !refused(&e) => {
                    warn(format_args!(
                        "copying to the container's /etc/resolv.conf: {e}"
                    ));
                }
                _ => {}
            }
            Ok(())
        }
    }
}

/// rnet's generated file (the DNS servers of the container's lease), read-only over the tree's
/// file; when that is a link into `/run` (systemd-resolved's stub file), the file is written
/// there instead, on the container's own tmpfs. The tree is written only to create a missing
/// mount point.
fn generated(new: &Path, text: &str, etc_writable: bool) -> Result<(), String> {
    let target = chase(new, Path::new("/etc/resolv.conf"))?;
    let run = chase(new, Path::new("/run"))?;
    if target.starts_with(&run) {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        return std::fs::write(&target, text)
            .map_err(|e| format!("writing the container's resolv.conf: {e}"));
    }
    if !touch(&target, etc_writable) {
        // Nowhere to put it.
        return Ok(());
    }
    let src = run.join("rnet-resolv.conf");
    std::fs::write(&src, text).map_err(|e| format!("writing the container's resolv.conf: {e}"))?;
    let fd = File::options()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&src)
        .map(OwnedFd::from)
        .map_err(|e| format!("opening {}: {e}", src.display()))?;
    bind_over(&fd, &target)?;
    let _ = std::fs::remove_file(&src);
    Ok(())
}

/// Performs a timezone `action` on the tree at `new`; `src` is [`open_source`]'s handle on the
/// host's `/etc/localtime`.
pub fn apply_timezone(
    new: &Path,
    action: &TimezoneAction,
    src: Option<&Result<OwnedFd, String>>,
    etc_writable: bool,
) -> Result<(), String> {
    let where_ = etc_of(new)?.join("localtime");
    let mut action = action.clone();
    if let TimezoneAction::Symlink(zone) = &action {
        let current = std::fs::read_link(&where_).ok();
        if current.as_deref().and_then(zone_of).as_deref() == Some(zone.as_str()) {
            return Ok(());
        }
        let zone_file = chase(new, &Path::new("/usr/share/zoneinfo").join(zone))?;
        if zone_file.exists() {
            if !etc_writable {
                return Ok(());
            }
            let made = match std::fs::remove_file(&where_) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
                _ => std::os::unix::fs::symlink(
                    Path::new("../usr/share/zoneinfo").join(zone),
                    &where_,
                ),
            };
            match made {
                Err(e) if !refused(&e) => {
                    warn(format_args!("linking the container's /etc/localtime: {e}"));
                }
                _ => {}
            }
            return Ok(());
        }
        // The tree lacks the zone: the host's file instead (nspawn falls through to bind).
        action = TimezoneAction::Bind(PathBuf::new());
    }
    match action {
        TimezoneAction::Off | TimezoneAction::Symlink(_) => Ok(()),
        TimezoneAction::Warn(w) => {
            warn(w);
            Ok(())
        }
        TimezoneAction::Delete => {
            if etc_writable {
                match std::fs::remove_file(&where_) {
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        warn(format_args!("removing the container's /etc/localtime: {e}"));
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        TimezoneAction::Bind(_) | TimezoneAction::Copy(_) => {
            let Some(src) = needed(src) else {
                return Ok(());
            };
            if let TimezoneAction::Bind(_) = action {
                // Unlike resolv.conf, a link here is followed inside the tree (nspawn's chase()
                // without CHASE_NOFOLLOW): the zone file it names is covered.
                let target = chase(new, Path::new("/etc/localtime"))?;
                if !touch(&target, etc_writable) {
                    return Ok(());
                }
                match bind_over(src, &target) {
                    Ok(()) => return Ok(()),
                    Err(e) => warn(format_args!("{e}; copying instead")),
                }
            }
            if !etc_writable {
                return Ok(());
            }
            match replace(src, &where_) {
                Err(e) if !refused(&e) => {
                    warn(format_args!(
                        "copying to the container's /etc/localtime: {e}"
                    ));
                }
                _ => {}
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(stub: bool, resolv: bool, localtime: Localtime) -> Host {
        Host {
            root: PathBuf::from("/h"),
            stub_listening: stub,
            resolv_conf: resolv,
            localtime,
        }
    }

    #[test]
    fn every_nspawn_mode_parses_and_others_are_refused() {
        for (text, want) in [
            ("off", ResolvConf::Off),
            ("no", ResolvConf::Off),
            ("yes", ResolvConf::Auto),
            ("auto", ResolvConf::Auto),
            ("delete", ResolvConf::Delete),
            ("copy-host", ResolvConf::Copy(Source::Host)),
            ("copy-static", ResolvConf::Copy(Source::Static)),
            ("copy-uplink", ResolvConf::Copy(Source::Uplink)),
            ("copy-stub", ResolvConf::Copy(Source::Stub)),
            ("replace-host", ResolvConf::Replace(Source::Host)),
            ("replace-static", ResolvConf::Replace(Source::Static)),
            ("replace-uplink", ResolvConf::Replace(Source::Uplink)),
            ("replace-stub", ResolvConf::Replace(Source::Stub)),
            ("bind-host", ResolvConf::Bind(Source::Host)),
            ("bind-static", ResolvConf::Bind(Source::Static)),
            ("bind-uplink", ResolvConf::Bind(Source::Uplink)),
            ("bind-stub", ResolvConf::Bind(Source::Stub)),
        ] {
            assert_eq!(ResolvConf::parse(text), Ok(want), "{text}");
        }
        for bad in ["bind", "copy-", "copy-elsewhere", "sometimes", ""] {
            let e = ResolvConf::parse(bad).unwrap_err();
            assert!(e.starts_with("invalid --resolv-conf="), "{e}");
        }
        for (text, want) in [
            ("off", Timezone::Off),
            ("no", Timezone::Off),
            ("yes", Timezone::Auto),
            ("copy", Timezone::Copy),
            ("bind", Timezone::Bind),
            ("symlink", Timezone::Symlink),
            ("delete", Timezone::Delete),
            ("auto", Timezone::Auto),
        ] {
            assert_eq!(Timezone::parse(text), Ok(want), "{text}");
        }
        assert_eq!(
            Timezone::parse("utc").unwrap_err(),
            "invalid --timezone=\"utc\": use off, copy, bind, symlink, delete or auto"
        );
    }

    #[test]
    fn auto_picks_as_nspawn_with_rnets_file_for_a_configured_private_network() {
        let p = PathBuf::from;
        let h = host(true, true, Localtime::Missing);
        let generated = Some("nameserver 10.0.0.1\n".to_owned());
        // A private network: rnet's file when it configured host0, else nothing.
        assert_eq!(
            resolv_action(ResolvConf::Auto, &h, true, generated.clone(), true),
            ResolvAction::Generated("nameserver 10.0.0.1\n".into())
        );
        assert_eq!(
            resolv_action(ResolvConf::Auto, &h, true, None, true),
            ResolvAction::Off
        );
        // The host's network: resolved's stub when it listens, else the host's file, else none.
        assert_eq!(
            resolv_action(ResolvConf::Auto, &h, false, None, true),
            ResolvAction::Copy(p("/h/run/systemd/resolve/stub-resolv.conf"))
        );
        assert_eq!(
            resolv_action(ResolvConf::Auto, &h, false, None, false),
            ResolvAction::Bind(p("/h/run/systemd/resolve/stub-resolv.conf"))
        );
        let h = host(false, true, Localtime::Missing);
        assert_eq!(
            resolv_action(ResolvConf::Auto, &h, false, None, true),
            ResolvAction::Copy(p("/h/etc/resolv.conf"))
        );
        assert_eq!(
            resolv_action(ResolvConf::Auto, &h, false, None, false),
            ResolvAction::Bind(p("/h/etc/resolv.conf"))
        );
        let h = host(false, false, Localtime::Missing);
        assert_eq!(
            resolv_action(ResolvConf::Auto, &h, false, None, true),
            ResolvAction::Delete
        );
        assert_eq!(
            resolv_action(ResolvConf::Auto, &h, false, None, false),
            ResolvAction::Off
        );
        // An explicit mode is taken as it is, private network or not.
        assert_eq!(
            resolv_action(
                ResolvConf::Replace(Source::Uplink),
                &h,
                true,
                generated,
                true
            ),
            ResolvAction::Replace(p("/h/run/systemd/resolve/resolv.conf"))
        );
    }

    #[test]
    fn timezone_auto_follows_the_hosts_localtime() {
        let lt = PathBuf::from("/h/etc/localtime");
        let link = |t: &str| host(false, false, Localtime::Link(PathBuf::from(t)));
        let h = link("/usr/share/zoneinfo/Europe/Berlin");
        assert_eq!(
            timezone_action(Timezone::Auto, &h, true),
            TimezoneAction::Symlink("Europe/Berlin".into())
        );
        assert_eq!(
            timezone_action(Timezone::Auto, &h, false),
            TimezoneAction::Bind(lt.clone())
        );
        assert_eq!(
            timezone_action(
                Timezone::Symlink,
                &link("../usr/share/zoneinfo/Etc/UTC"),
                true
            ),
            TimezoneAction::Symlink("Etc/UTC".into())
        );
        assert!(matches!(
            timezone_action(Timezone::Auto, &link("/opt/zones/x"), true),
            TimezoneAction::Warn(w) if w.contains("does not point into /usr/share/zoneinfo/")
        ));
        let file = host(false, false, Localtime::File);
        assert_eq!(
            timezone_action(Timezone::Auto, &file, true),
            TimezoneAction::Copy(lt.clone())
        );
        assert_eq!(
            timezone_action(Timezone::Auto, &file, false),
            TimezoneAction::Bind(lt.clone())
        );
        assert!(matches!(
            timezone_action(Timezone::Symlink, &file, true),
            TimezoneAction::Warn(w) if w.contains("not a symlink")
        ));
        let none = host(false, false, Localtime::Missing);
        assert_eq!(
            timezone_action(Timezone::Auto, &none, true),
            TimezoneAction::Delete
        );
        assert_eq!(
            timezone_action(Timezone::Auto, &none, false),
            TimezoneAction::Off
        );
        assert_eq!(
            timezone_action(Timezone::Copy, &none, true),
            TimezoneAction::Copy(lt)
        );
    }

    #[test]
    fn the_stub_listener_is_found_in_proc_net_udp() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n";
        let stub = "  12: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   991        0 1234 2 0000000000000000 0\n";
        let other = "  13: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1235 2 0000000000000000 0\n";
        assert!(stub_in(&format!("{header}{other}{stub}")));
        assert!(!stub_in(&format!("{header}{other}")));
        assert!(!stub_in(""));
    }

    /// A tree at `new` and a host file, for the actions that write (no mount needed).
    fn tree_and_source(text: &str) -> (tempfile::TempDir, PathBuf, Result<OwnedFd, String>) {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("root");
        std::fs::create_dir_all(new.join("etc")).unwrap();
        std::fs::create_dir_all(new.join("usr/share/zoneinfo/Test")).unwrap();
        std::fs::write(new.join("usr/share/zoneinfo/Test/Zone"), "TREE\n").unwrap();
        std::fs::write(dir.path().join("src"), text).unwrap();
        let src = open_source(Some(&dir.path().join("src"))).unwrap();
        (dir, new, src)
    }

    #[test]
    fn timezone_actions_on_a_tree() {
        let (_d, new, src) = tree_and_source("HOST\n");
        let lt = new.join("etc/localtime");
        apply_timezone(
            &new,
            &TimezoneAction::Symlink("Test/Zone".into()),
            Some(&src),
            true,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(&lt).unwrap(),
            Path::new("../usr/share/zoneinfo/Test/Zone")
        );
        assert_eq!(std::fs::read_to_string(&lt).unwrap(), "TREE\n");
        // Read-only: nothing is written.
        apply_timezone(
            &new,
            &TimezoneAction::Copy(PathBuf::new()),
            Some(&src),
            false,
        )
        .unwrap();
        assert!(std::fs::symlink_metadata(&lt).unwrap().is_symlink());
        apply_timezone(
            &new,
            &TimezoneAction::Copy(PathBuf::new()),
            Some(&src),
            true,
        )
        .unwrap();
        assert!(!std::fs::symlink_metadata(&lt).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&lt).unwrap(), "HOST\n");
        apply_timezone(&new, &TimezoneAction::Delete, None, true).unwrap();
        assert!(std::fs::symlink_metadata(&lt).is_err());
        apply_timezone(&new, &TimezoneAction::Delete, None, true).unwrap();
    }

    #[test]
    fn resolv_conf_actions_on_a_tree() {
        let (_d, new, src) = tree_and_source("nameserver 192.0.2.9\n");
        let rc = new.join("etc/resolv.conf");
        std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", &rc).unwrap();
        apply_resolv(&new, &ResolvAction::Copy(PathBuf::new()), Some(&src), true).unwrap();
        assert!(
            std::fs::symlink_metadata(&rc).unwrap().is_symlink(),
            "copy leaves a link"
        );
        apply_resolv(
            &new,
            &ResolvAction::Replace(PathBuf::new()),
            Some(&src),
            false,
        )
        .unwrap();
        assert!(
            std::fs::symlink_metadata(&rc).unwrap().is_symlink(),
            "read-only"
        );
        apply_resolv(
            &new,
            &ResolvAction::Replace(PathBuf::new()),
            Some(&src),
            true,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&rc).unwrap(),
            "nameserver 192.0.2.9\n"
        );
        apply_resolv(&new, &ResolvAction::Delete, None, true).unwrap();
        assert!(std::fs::symlink_metadata(&rc).is_err());
        // A missing source: the file is left as it is.
        let missing = open_source(Some(Path::new("/nonexistent/rnet/resolv.conf")));
        assert!(missing.as_ref().unwrap().is_err());
        apply_resolv(
            &new,
            &ResolvAction::Copy(PathBuf::new()),
            missing.as_ref(),
            true,
        )
        .unwrap();
        assert!(std::fs::symlink_metadata(&rc).is_err());
    }

    #[test]
    fn copy_leaves_a_link_replace_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("src"), "nameserver 192.0.2.1\n").unwrap();
        let src: OwnedFd = File::open(d.join("src")).unwrap().into();
        std::os::unix::fs::symlink("../run/elsewhere", d.join("link")).unwrap();
        let e = copy_over(&src, &d.join("link")).unwrap_err();
        assert!(refused(&e), "{e}");
        assert!(
            std::fs::symlink_metadata(d.join("link"))
                .unwrap()
                .is_symlink()
        );
        replace(&src, &d.join("link")).unwrap();
        assert!(
            !std::fs::symlink_metadata(d.join("link"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(d.join("link")).unwrap(),
            "nameserver 192.0.2.1\n"
        );
        std::fs::write(d.join("file"), "old and longer\n").unwrap();
        copy_over(&src, &d.join("file")).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("file")).unwrap(),
            "nameserver 192.0.2.1\n"
        );
        assert_eq!(
            std::fs::read_dir(d).unwrap().count(),
            3,
            "no temp file left"
        );
    }
}
