//! `-U`, `--private-users=`, `--private-users-ownership=`: the container's user namespace, as
//! systemd-nspawn makes one (`src/nspawn/nspawn.c`: `determine_uid_shift()`,
//! `uid_shift_pick()`; `src/shared/userns-util.c`; `src/nspawn/nspawn-patch-uid.c`;
//! `src/shared/mount-util.c`: `remount_idmap()`), see
//! `docs/architecture.md#user-namespaces`.
//!
//! The launcher decides everything before the fork: the range (the tree's root owner, the
//! option, or a pick), its lock file, and how the tree's ownership is shifted. After the fork
//! it writes the child's `uid_map`/`gid_map`, shifts the tree (`chown`) or makes an idmapped
//! mount of it (`map`) that the child attaches as its root.

use std::fs::File;
use std::hash::Hasher;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::os::unix::net::UnixStream;

use nix::fcntl::{Flock, FlockArg};

use crate::container::fdpass;

/// nspawn's `CONTAINER_UID_BASE_MIN`/`MAX`: where `pick` looks for a range.
pub const BASE_MIN: u32 = 0x0008_0000;
pub const BASE_MAX: u32 = 0x6FFF_0000;
/// The size of a picked range (and the default of `N[:M]`): 16 bits of UIDs.
pub const RANGE: u32 = 0x10000;
/// nspawn's limit on picking before it gives up.
const TRIES: u32 = 100;

/// `--private-users=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `no`: no user namespace.
    Off,
    /// `yes`: the range the tree's root directory's owner tells, 65536 UIDs.
    FromTree,
    /// `pick`: the tree's range if it is shifted, else a free one.
    Pick,
    /// `identity`: UIDs 0..65535 map to themselves (only the capabilities are the namespace's).
    Identity,
    /// `N[:M]`: UIDs 0..M-1 map to N..N+M-1.
    Fixed { shift: u32, range: u32 },
}

impl Mode {
    /// Parses `--private-users=` (systemd-nspawn(1)).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid --private-users={s:?}: use no, yes, pick, identity or UID[:RANGE]");
        Ok(match s {
            "no" | "false" | "0" => Self::Off,
            "yes" | "true" | "1" => Self::FromTree,
            "pick" => Self::Pick,
            "identity" => Self::Identity,
            _ => {
                let (a, b) = s.split_once(':').unwrap_or((s, ""));
                let shift: u32 = a.parse().map_err(|_| bad())?;
                let range: u32 = if b.is_empty() {
                    RANGE
                } else {
                    b.parse().map_err(|_| bad())?
                };
                if range == 0 {
                    return Err(format!("invalid --private-users={s:?}: the range is empty"));
                }
                if shift.checked_add(range).is_none() {
                    return Err(format!(
                        "invalid --private-users={s:?}: UID base too high for UID range"
                    ));
                }
                Self::Fixed { shift, range }
            }
        })
    }
}

/// `--private-users-ownership=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Leave the tree as it is.
    Off,
    /// Rewrite the owners of every file of the tree to the range.
    Chown,
    /// An idmapped mount of the tree: the files stay as they are on disk.
    Map,
    /// `map` where the kernel and the tree's filesystem allow it, else `chown`.
    Auto,
}

impl Ownership {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "off" => Self::Off,
            "chown" => Self::Chown,
            "map" => Self::Map,
            "auto" => Self::Auto,
            _ => {
                return Err(format!(
                    "invalid --private-users-ownership={s:?}: use off, chown, map or auto"
                ));
            }
        })
    }
}

/// A user namespace decided before the fork.
#[derive(Debug)]
pub struct Plan {
    /// The host UID (and GID) of the container's UID 0.
    pub shift: u32,
    /// How many UIDs are mapped.
    pub range: u32,
    /// `Off`, `Chown` or `Map` (`Auto` resolved when the tree is shifted already; else kept and
    /// resolved by trying the idmapped mount after the fork).
    pub ownership: Ownership,
    /// The lock on the range (picked ranges and fixed ones), held while the container runs.
    pub _lock: Option<RangeLock>,
}

/// The lock file of a range, `RUNTIME_DIR/uid/SHIFT` (nspawn: `/run/systemd/nspawn-uid/`),
/// `flock`ed while the container runs and removed when it ends.
#[derive(Debug)]
pub struct RangeLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for RangeLock {
    fn drop(&mut self) {
        // Removed while still locked, so a launcher waiting for it sees a new file.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes the lock of the range starting at `shift`; `None` when another container holds it.
fn lock_range(dir: &Path, shift: u32) -> Result<Option<RangeLock>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(shift.to_string());
    loop {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(format!("locking {}: {}", path.display(), e.desc())),
        };
        // The holder may have removed the file between our open and our lock: retry on the
        // new one.
        let same = std::fs::metadata(&path)
            .ok()
            .zip(lock.metadata().ok())
            .is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev());
        if same {
            return Ok(Some(RangeLock { path, _lock: lock }));
        }
    }
}

/// The range the tree was shifted to: its root directory's owner with the low 16 bits cleared
/// (nspawn's `determine_uid_shift()`).
pub fn tree_shift(root: &Path) -> Result<u32, String> {
    let m = std::fs::metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let (u, g) = (m.uid() & 0xFFFF_0000, m.gid() & 0xFFFF_0000);
    if u != g {
        return Err(format!(
            "UID and GID base of {} don't match ({u} and {g})",
            root.display()
        ));
    }
    Ok(u)
}

/// The first candidate of `pick` for a machine: a SipHash-2-4 of its name in nspawn's range, so
/// the same machine gets the same range while it is free.
pub fn first_candidate(machine: &str) -> u32 {
    let mut h =
        siphasher::sip::SipHasher24::new_with_keys(0x1cb2_57b5_19f9_c4c3, 0xa2ee_9c03_2714_cfe6);
    h.write(machine.as_bytes());
    candidate(h.finish())
}

/// A random-looking number turned into a range start: in `[BASE_MIN, BASE_MAX]`, 64K aligned.
fn candidate(x: u64) -> u32 {
    let span = u64::from(BASE_MAX - BASE_MIN);
    let c = u32::try_from(x % span).unwrap_or(0) + BASE_MIN;
    c & 0xFFFF_0000
}

/// Whether the host's user or group database names the first or last UID of the range (nspawn's
/// "superficial check").
fn known_to_host(shift: u32, passwd: &str, group: &str) -> bool {
    let ids = [shift, shift + 0xFFFE];
    let has = |db: &str| {
        db.lines().any(|l| {
            l.split(':')
                .nth(2)
                .and_then(|f| f.parse::<u32>().ok())
                .is_some_and(|id| ids.contains(&id))
        })
    };
    has(passwd) || has(group)
}

/// Decides the user namespace of a container in `root`; takes the range's lock. Nothing is
/// created but the lock file.
pub fn plan(
    mode: Mode,
    ownership: Ownership,
    root: &Path,
    machine: &str,
    lock_dir: &Path,
) -> Result<Option<Plan>, String> {
    let in_use = |shift: u32| {
        format!(
            "UID range {shift}-{} is in use by a running container (lock {}/{shift})",
            u64::from(shift) + u64::from(RANGE) - 1,
            lock_dir.display()
        )
    };
    let (shift, range, ownership, lock) = match mode {
        Mode::Off => return Ok(None),
        Mode::Identity => (0, RANGE, Ownership::Off, None),
        Mode::FromTree | Mode::Fixed { .. } => {
            let (shift, range) = match mode {
                Mode::Fixed { shift, range } => (shift, range),
                _ => (tree_shift(root)?, RANGE),
            };
            let lock = if shift == 0 {
                None
            } else {
                Some(lock_range(lock_dir, shift)?.ok_or_else(|| in_use(shift))?)
            };
            (shift, range, ownership, lock)
        }
        Mode::Pick => {
            let current = tree_shift(root)?;
            if current != 0 {
                // Shifted already: that range, or nothing (re-shifting a tree a running
                // container uses would pull it from under it).
                let lock = lock_range(lock_dir, current)?.ok_or_else(|| in_use(current))?;
                let ownership = match ownership {
                    Ownership::Map => {
                        return Err(format!(
                            "--private-users-ownership=map cannot be used with {}, which is shifted already (its root is owned by UID {current})",
                            root.display()
                        ));
                    }
                    Ownership::Auto => Ownership::Chown,
                    o => o,
                };
                (current, RANGE, ownership, Some(lock))
            } else {
                let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
                let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
                let mut c = first_candidate(machine);
                let mut found = None;
                for i in 0..TRIES {
                    if !known_to_host(c, &passwd, &group)
                        && let Some(l) = lock_range(lock_dir, c)?
                    {
                        found = Some((c, l));
                        break;
                    }
                    let mut h =
                        siphasher::sip::SipHasher24::new_with_keys(u64::from(c), u64::from(i));
                    h.write(machine.as_bytes());
                    c = candidate(h.finish());
                }
                let (c, l) = found.ok_or("no free UID range found for --private-users=pick")?;
                (c, RANGE, ownership, Some(l))
            }
        }
    };
    if matches!(ownership, Ownership::Chown) && range != RANGE {
        return Err(format!(
            "--private-users-ownership=chown needs a range of {RANGE} UIDs, not {range}"
        ));
    }
    if matches!(ownership, Ownership::Chown) && shift & 0xFFFF != 0 {
        return Err(format!(
            "--private-users-ownership=chown needs a UID base that is a multiple of 65536, not {shift}"
        ));
    }
    Ok(Some(Plan {
        shift,
        range,
        ownership,
        _lock: lock,
    }))
}

/// Writes the child's `uid_map`, `gid_map` (as root of the parent namespace, so neither
/// `newuidmap` nor `setgroups=deny` is needed).
pub fn write_maps(pid: i32, shift: u32, range: u32) -> Result<(), String> {
    let line = format!("0 {shift} {range}\n");
    for f in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{f}"), &line)
            .map_err(|e| format!("writing the container's {f}: {e}"))?;
    }
    Ok(())
}

/// Shifts every file of the tree (not crossing into other filesystems) into the range, as
/// nspawn's `path_patch_uid()`: `shift | (uid & 0xFFFF)`, modes restored after `chown` (which
/// clears set-user-ID bits). The root directory is done last: its owner records that the whole
/// tree is done, so a second run does nothing. Returns whether anything changed.
pub fn chown_tree(root: &Path, shift: u32) -> Result<bool, String> {
    if tree_shift(root)? == shift {
        return Ok(false);
    }
    let dev = std::fs::metadata(root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .dev();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
            let path = entry.path();
            let m =
                std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if m.is_dir() && m.dev() == dev {
                todo.push(path.clone());
            }
            if m.dev() == dev {
                patch(&path, &m, shift)?;
            }
        }
    }
    let m = std::fs::metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
    patch(root, &m, shift)?;
    Ok(true)
}

fn patch(path: &Path, m: &std::fs::Metadata, shift: u32) -> Result<(), String> {
    let (uid, gid) = (shift | (m.uid() & 0xFFFF), shift | (m.gid() & 0xFFFF));
    if m.uid() == uid && m.gid() == gid {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    if !m.file_type().is_symlink() {
        std::fs::set_permissions(
            path,
            std::os::unix::fs::PermissionsExt::from_mode(m.mode() & 0o7777),
        )
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    Ok(())
}

// The new mount API (linux/mount.h), by number: glibc has no wrappers for it.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached, idmapped copy of the mount tree at `root` (recursive), mapped through the user
/// namespace `userns` (nspawn's `remount_idmap()`): the container attaches it as its root with
/// [`attach`]. Fails with the kernel's word where the filesystem cannot be idmapped.
pub fn idmapped_tree(root: &Path, userns: &File) -> Result<OwnedFd, String> {
    let c = std::ffi::CString::new(root.as_os_str().as_bytes())
        .map_err(|_| format!("{}: contains a NUL byte", root.display()))?;
    // SAFETY: a valid C string and plain flags.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(format!(
            "open_tree {}: {}",
            root.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel just returned this descriptor.
    let tree = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap_or(-1)) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).unwrap_or(0),
    };
    // SAFETY: valid descriptor, empty path, and a mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(format!(
            "idmapping {}: {}",
            root.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(tree)
}

/// Attaches a detached mount tree (from [`idmapped_tree`]) on `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> Result<(), String> {
    let t = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| format!("{}: contains a NUL byte", target.display()))?;
    // SAFETY: valid descriptor and C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(format!(
            "attaching the idmapped tree on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The launcher's part after the fork: the child's maps, then the tree's ownership; returns the
/// idmapped tree the child attaches as its root (`map`). Says on stderr what it chose, as
/// nspawn does ("Selected user namespace base ...").
pub fn prepare(p: &Plan, root: &Path, child: nix::unistd::Pid) -> Result<Option<OwnedFd>, String> {
    write_maps(child.as_raw(), p.shift, p.range)?;
    let mapped = |tree| {
        eprintln!(
            "rnet: user namespace: UIDs 0-{} are host UIDs {}-{}; the tree is idmapped (unchanged on disk)",
            p.range - 1,
            p.shift,
            u64::from(p.shift) + u64::from(p.range) - 1
        );
        Ok(Some(tree))
    };
    let chowned = || -> Result<Option<OwnedFd>, String> {
        let changed = chown_tree(root, p.shift)?;
        eprintln!(
            "rnet: user namespace: UIDs 0-{} are host UIDs {}-{}; the tree's owners are shifted ({})",
            p.range - 1,
            p.shift,
            u64::from(p.shift) + u64::from(p.range) - 1,
            if changed { "chowned now" } else { "already" }
        );
        Ok(None)
    };
    let userns = || {
        File::open(format!("/proc/{child}/ns/user"))
            .map_err(|e| format!("opening the container's user namespace: {e}"))
    };
    match p.ownership {
        Ownership::Off => {
            eprintln!(
                "rnet: user namespace: UIDs 0-{} are host UIDs {}-{}; the tree's ownership is left as it is",
                p.range - 1,
                p.shift,
                u64::from(p.shift) + u64::from(p.range) - 1
            );
            Ok(None)
        }
        Ownership::Chown => chowned(),
        Ownership::Map => idmapped_tree(root, &userns()?)
            .map_err(|e| format!("--private-users-ownership=map: {e}"))
            .and_then(mapped),
        Ownership::Auto => match idmapped_tree(root, &userns()?) {
            Ok(tree) => mapped(tree),
            Err(_) => chowned(),
        },
    }
}

/// The launcher tells the child its maps are written, passing the idmapped tree if there is one.
pub fn send_tree(sock: &UnixStream, tree: Option<&OwnedFd>) -> Result<(), String> {
    fdpass::send(sock, b'U', tree)
        .map_err(|e| format!("passing the user namespace's tree: {}", e.desc()))
}

/// The child's side of [`send_tree`]: one byte (never more: the configuration follows on the
/// same stream) and the descriptor, if any.
pub fn recv_tree(sock: &UnixStream) -> Result<Option<OwnedFd>, String> {
    let mut buf = [0u8; 1];
    let (n, fd) = fdpass::recv(sock, &mut buf)
        .map_err(|e| format!("waiting for the user namespace's maps: {}", e.desc()))?;
    if n != 1 {
        return Err("the launcher ended during setup".into());
    }
    Ok(fd)
}

/// In the child, once its maps are written: become the namespace's root (its credentials are
/// still the host's root, which the namespace does not map), keep the parent-death signal and
/// `/proc/self` owned by it (both reset by a change of credentials).
pub fn become_root() -> Result<(), String> {
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups in the user namespace: {e}"))?;
    let root_g = nix::unistd::Gid::from_raw(0);
    let root_u = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_g, root_g, root_g)
        .map_err(|e| format!("setresgid in the user namespace: {e}"))?;
    nix::unistd::setresuid(root_u, root_u, root_u)
        .map_err(|e| format!("setresuid in the user namespace: {e}"))?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("prctl: {e}"))?;
    nix::sys::prctl::set_dumpable(true).map_err(|e| format!("prctl: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_nspawn_documents_them() {
        assert_eq!(Mode::parse("no").unwrap(), Mode::Off);
        assert_eq!(Mode::parse("yes").unwrap(), Mode::FromTree);
        assert_eq!(Mode::parse("pick").unwrap(), Mode::Pick);
        assert_eq!(Mode::parse("identity").unwrap(), Mode::Identity);
        assert_eq!(
            Mode::parse("1879048192").unwrap(),
            Mode::Fixed {
                shift: 1_879_048_192,
                range: RANGE
            }
        );
        assert_eq!(
            Mode::parse("100000:1000").unwrap(),
            Mode::Fixed {
                shift: 100_000,
                range: 1000
            }
        );
        assert!(
            Mode::parse("4294967295:2")
                .unwrap_err()
                .contains("too high")
        );
        assert!(Mode::parse("5:0").unwrap_err().contains("empty"));
        assert!(Mode::parse("maybe").unwrap_err().contains("use no, yes"));
        assert_eq!(Ownership::parse("map").unwrap(), Ownership::Map);
        assert!(Ownership::parse("copy").is_err());
    }

    #[test]
    fn candidates_are_aligned_in_nspawns_range_and_stable() {
        for name in ["a", "web", "a-much-longer-machine-name"] {
            let c = first_candidate(name);
            assert_eq!(c & 0xFFFF, 0);
            assert!((BASE_MIN..=BASE_MAX).contains(&c), "{c:#x}");
            assert_eq!(c, first_candidate(name));
        }
        assert_ne!(first_candidate("a"), first_candidate("b"));
        assert_eq!(candidate(0), BASE_MIN);
        assert!(candidate(u64::MAX) <= BASE_MAX);
    }

    #[test]
    fn the_host_database_rules_a_candidate_out() {
        let passwd = "root:x:0:0::/root:/bin/sh\nsvc:x:524288:524288::/:/bin/false\n";
        assert!(known_to_host(0x80000, passwd, ""));
        assert!(known_to_host(0x90000, "", "g:x:655358:\n"));
        assert!(!known_to_host(0xA0000, passwd, "g:x:655358:\n"));
    }

    #[test]
    fn a_held_range_is_refused_and_freed_with_its_lock() {
        let d = tempfile::tempdir().unwrap();
        let tree = tempfile::tempdir().unwrap();
        let held = plan(
            Mode::Fixed {
                shift: 0x100000,
                range: RANGE,
            },
            Ownership::Off,
            tree.path(),
            "m",
            d.path(),
        )
        .unwrap()
        .unwrap();
        assert!(d.path().join("1048576").exists());
        let again = plan(
            Mode::Fixed {
                shift: 0x100000,
                range: RANGE,
            },
            Ownership::Off,
            tree.path(),
            "m",
            d.path(),
        )
        .unwrap_err();
        assert_eq!(
            again,
            format!(
                "UID range 1048576-1114111 is in use by a running container (lock {}/1048576)",
                d.path().display()
            )
        );
        // pick skips the machine's first candidate while another container holds it.
        let first = lock_range(d.path(), first_candidate("m")).unwrap().unwrap();
        let picked = plan(Mode::Pick, Ownership::Auto, tree.path(), "m", d.path())
            .unwrap()
            .unwrap();
        assert_ne!(picked.shift, first_candidate("m"));
        assert_eq!(picked.shift & 0xFFFF, 0);
        drop((held, first, picked));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn chown_shifts_once_and_keeps_modes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/su"), "x").unwrap();
        std::fs::set_permissions(
            r.join("usr/bin/su"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4755),
        )
        .unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        std::os::unix::fs::lchown(r.join("usr/bin/su"), Some(5), Some(7)).unwrap();
        // (chown cleared the bit just set: set it again.)
        std::fs::set_permissions(
            r.join("usr/bin/su"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4755),
        )
        .unwrap();
        let shift = 0x7_0000;
        assert!(chown_tree(r, shift).unwrap());
        let su = std::fs::metadata(r.join("usr/bin/su")).unwrap();
        assert_eq!(
            (su.uid(), su.gid(), su.mode() & 0o7777),
            (shift + 5, shift + 7, 0o4755)
        );
        assert_eq!(
            std::fs::symlink_metadata(r.join("bin")).unwrap().uid(),
            shift
        );
        assert_eq!(tree_shift(r).unwrap(), shift);
        let ctime = su.ctime_nsec() + su.ctime() * 1_000_000_000;
        assert!(!chown_tree(r, shift).unwrap());
        let su = std::fs::metadata(r.join("usr/bin/su")).unwrap();
        assert_eq!(su.ctime_nsec() + su.ctime() * 1_000_000_000, ctime);
        // Back to 0 (the tree was shifted to another range).
        assert!(chown_tree(r, 0).unwrap());
        assert_eq!(std::fs::metadata(r.join("usr/bin/su")).unwrap().uid(), 5);
    }
}
