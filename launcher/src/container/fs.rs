//! The container's filesystem (`docs/architecture.md#the-containers-filesystem-and-isolation`):
//! DIR (or an overlay of it) as root, the API filesystems as systemd-nspawn mounts them
//! (`src/nspawn/nspawn-mount.c`: `mount_all()`), the user's binds and tmpfs, then
//! `pivot_root`. Runs in the container's first process, in its new mount namespace, before
//! any isolation is applied.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::container::chase::chase;
use crate::container::hostfiles::{self, ResolvAction, TimezoneAction};
use crate::container::spec::{Bind, Tmpfs};

/// What the filesystem setup needs besides the tree.
pub struct Layout<'a> {
    pub root: &'a Path,
    pub ephemeral: bool,
    pub read_only: bool,
    pub private_network: bool,
    pub binds: &'a [Bind],
    pub tmpfs: &'a [Tmpfs],
    /// Files written to `/run/host/` (name, content), read-only inside.
    pub run_host: Vec<(&'static str, String)>,
    /// What becomes of the container's `/etc/resolv.conf` (`--resolv-conf=`).
    pub resolv_conf: ResolvAction,
    /// What becomes of the container's `/etc/localtime` (`--timezone=`).
    pub timezone: TimezoneAction,
    /// The host's `/etc/localtime` (below `RNET_HOST_ROOT`, if set).
    pub host_localtime: &'a Path,
    /// `/dev/console` is a pty (every `--console` mode but `pipe`).
    pub console_pty: bool,
    /// In a user namespace (`-U`): device nodes are bound from the host's `/dev` (mknod is the
    /// initial namespace's), `/sys` is the host's, bound read-only, without a network namespace
    /// of the container's own (sysfs is mounted only by the owner of the network namespace).
    pub userns: bool,
    /// The idmapped tree (`--private-users-ownership=map`), attached instead of a bind of
    /// `root`.
    pub tree: Option<&'a OwnedFd>,
    /// `/sys/fs/cgroup` for a booted systemd (`cgroupfs::mount_all`).
    pub cgroups: bool,
}

/// Where the new root is assembled: a tmpfs mounted on the host's `/tmp` in the container's
/// mount namespace only (never seen by the host), detached by `pivot_root`.
const SCRATCH: &str = "/tmp";

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(src, target, fstype, flags, data).map_err(|e| {
        format!(
            "mounting {} on {}: {}",
            fstype.or(src).unwrap_or("?"),
            target.display(),
            e.desc()
        )
    })
}

/// Remounts the mount at `target` read-only, with `extra` flags and the ones it has (a mount
/// from a more privileged mount namespace has them locked: a remount dropping them fails in a
/// user namespace).
pub fn remount_ro(target: &Path, extra: MsFlags) -> Result<(), String> {
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | extra;
    if let Ok(st) = nix::sys::statvfs::statvfs(target) {
        use nix::sys::statvfs::FsFlags;
        for (f, m) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if st.flags().contains(f) {
                flags |= m;
            }
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(|e| format!("making {} read-only: {}", target.display(), e.desc()))
}

fn bind_self(target: &Path) -> Result<(), String> {
    mnt(
        Some(&target.to_string_lossy()),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
}

fn mkdir_p(p: &Path, mode: u32) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
        .map_err(|e| format!("creating the mount point {}: {e}", p.display()))
}

/// Creates a file mount point (and its directory) when missing.
fn touch(p: &Path) -> Result<(), String> {
    if let Some(parent) = p.parent() {
        mkdir_p(parent, 0o755)?;
    }
    if std::fs::symlink_metadata(p).is_err() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(p)
            .map_err(|e| format!("creating the mount point {}: {e}", p.display()))?;
    }
    Ok(())
}

/// An `O_PATH` handle on a host path, opened before the scratch tmpfs can hide it.
fn open_path(p: &Path) -> Result<OwnedFd, String> {
    File::options()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(p)
        .map(OwnedFd::from)
        .map_err(|e| format!("opening {}: {e}", p.display()))
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Builds the container's filesystem and pivots into it; the cwd is then the new `/`. Returns
/// the console pty's master when one was asked for.
pub fn setup(l: &Layout) -> Result<Option<OwnedFd>, String> {
    // Mounts of the host still reach us, ours never reach the host (nspawn: MS_SLAVE).
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None,
    )?;
    let root_fd = open_path(l.root)?;
    let bind_fds = l
        .binds
        .iter()
        .map(|b| open_path(&b.src))
        .collect::<Result<Vec<_>, _>>()?;
    let resolv_src = hostfiles::open_source(l.resolv_conf.source());
    let timezone_src = hostfiles::open_source(l.timezone.source(l.host_localtime).as_deref());
    let scratch = Path::new(SCRATCH);
    mnt(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    )?;
    let new = scratch.join("root");
    mkdir_p(&new, 0o755)?;
    if l.ephemeral {
        // -x: an overlay whose upper layer lives in the scratch tmpfs, gone with the namespace.
        for d in ["lower", "upper", "work"] {
            mkdir_p(&scratch.join(d), 0o755)?;
        }
        let lower = scratch.join("lower");
        attach_root(&root_fd, l.tree, &lower)?;
        let opts = format!(
            "lowerdir={},upperdir={SCRATCH}/upper,workdir={SCRATCH}/work",
            lower.display()
        );
        mnt(
            Some("overlay"),
            &new,
            Some("overlay"),
            MsFlags::empty(),
            Some(&opts),
        )?;
    } else {
        attach_root(&root_fd, l.tree, &new)?;
    }
    drop(root_fd);
    let master = api_filesystems(&new, l)?;
    // Before the binds, as nspawn (its custom mounts come after): a bind over either file wins.
    hostfiles::apply_timezone(&new, &l.timezone, timezone_src.as_ref(), !l.read_only)?;
    hostfiles::apply_resolv(&new, &l.resolv_conf, resolv_src.as_ref(), !l.read_only)?;
    drop((timezone_src, resolv_src));
    for (b, fd) in l.binds.iter().zip(&bind_fds) {
        bind(&new, b, fd)?;
    }
    drop(bind_fds);
    for t in l.tmpfs {
        let target = chase(&new, &t.path)?;
        mkdir_p(&target, 0o755)?;
        mnt(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(&t.options),
        )?;
    }
    if l.read_only {
        remount_ro(&new, MsFlags::empty())?;
    }
    pivot(&new)?;
    Ok(master)
}

/// The tree on `target`: the idmapped tree if there is one, else a recursive bind of the tree.
fn attach_root(root: &OwnedFd, tree: Option<&OwnedFd>, target: &Path) -> Result<(), String> {
    match tree {
        Some(t) => crate::container::userns::attach(t, target),
        None => mnt(
            Some(&fd_path(root)),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
    }
}

/// `/proc`, `/sys`, `/dev`, `/run`, `/tmp` (nspawn-mount.c's table, in its order).
fn api_filesystems(new: &Path, l: &Layout) -> Result<Option<OwnedFd>, String> {
    let nsn = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let proc_ = chase(new, Path::new("/proc"))?;
    mkdir_p(&proc_, 0o755)?;
    mnt(Some("proc"), &proc_, Some("proc"), nsn, None)?;
    // /proc/sys read-only; with a private network its net/ stays writable (nspawn's
    // PROC_SYS_NET), the container's own namespace's knobs.
    let sys = proc_.join("sys");
    bind_self(&sys)?;
    remount_ro(&sys, nsn)?;
    if l.private_network {
        let net = sys.join("net");
        bind_self(&net)?;
        mount(
            None::<&str>,
            &net,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | nsn,
            None::<&str>,
        )
        .map_err(|e| err("making /proc/sys/net writable", e.desc()))?;
    }
    // Read-only where the host's hardware is reachable; masked where kernel memory or keys are.
    for p in [
        "sysrq-trigger",
        "irq",
        "bus",
        "fs",
        "acpi",
        "asound",
        "scsi",
    ] {
        let path = proc_.join(p);
        if path.exists() {
            bind_self(&path)?;
            remount_ro(&path, nsn)?;
        }
    }
    for p in ["kcore", "keys", "timer_list", "kallsyms"] {
        let path = proc_.join(p);
        if path.exists() {
            mnt(Some("/dev/null"), &path, None, MsFlags::MS_BIND, None)?;
        }
    }
    let sysfs = chase(new, Path::new("/sys"))?;
    mkdir_p(&sysfs, 0o755)?;
    if l.userns && !l.private_network {
        mnt(
            Some("/sys"),
            &sysfs,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        remount_ro(&sysfs, nsn)?;
    } else {
        mnt(
            Some("sysfs"),
            &sysfs,
            Some("sysfs"),
            nsn | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    if l.cgroups {
        crate::container::cgroupfs::mount_all(&sysfs.join("fs/cgroup"))?;
    }
    let master = dev(new, l.console_pty, l.userns)?;
    let run = chase(new, Path::new("/run"))?;
    mkdir_p(&run, 0o755)?;
    mnt(
        Some("tmpfs"),
        &run,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=0755,size=20%"),
    )?;
    run_host(&run.join("host"), &l.run_host)?;
    let tmp = chase(new, Path::new("/tmp"))?;
    mkdir_p(&tmp, 0o1777)?;
    mnt(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=1777"),
    )?;
    Ok(master)
}

/// A minimal `/dev` (nspawn's `copy_devnodes()`, `setup_pts()`, `setup_dev_console()`):
/// `/dev/console` is a pty's peer when `console_pty`, else `/dev/null`.
fn dev(new: &Path, console_pty: bool, userns: bool) -> Result<Option<OwnedFd>, String> {
    let dev = chase(new, Path::new("/dev"))?;
    mkdir_p(&dev, 0o755)?;
    mnt(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=0755,size=4m"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        if userns {
            // nspawn's copy_devnodes() in a user namespace: a bind of the host's node.
            touch(&p)?;
            mnt(
                Some(&format!("/dev/{name}")),
                &p,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
            continue;
        }
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| format!("creating {}: {}", p.display(), e.desc()))?;
        // mknod honours the umask; the nodes are 0666 as on the host.
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .map_err(|e| err(&format!("chmod {}", p.display()), e))?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts, 0o755)?;
    mnt(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620,gid=5"),
    )?;
    let shm = dev.join("shm");
    mkdir_p(&shm, 0o1777)?;
    mnt(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=1777"),
    )?;
    let mq = dev.join("mqueue");
    mkdir_p(&mq, 0o755)?;
    mnt(
        Some("mqueue"),
        &mq,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| err(&format!("creating /dev/{link}"), e))?;
    }
    let console = dev.join("console");
    touch(&console)?;
    if console_pty {
        let (master, peer) = crate::container::console::open_pty(&pts)?;
        mnt(
            Some(&peer.to_string_lossy()),
            &console,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
        Ok(Some(master))
    } else {
        mnt(
            Some(&dev.join("null").to_string_lossy()),
            &console,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
        Ok(None)
    }
}

/// `/run/host/` as systemd-nspawn provides it (os-release, container-uuid,
/// container-manager), read-only.
fn run_host(dir: &Path, files: &[(&'static str, String)]) -> Result<(), String> {
    mkdir_p(dir, 0o755)?;
    for (name, text) in files {
        std::fs::write(dir.join(name), text)
            .map_err(|e| err(&format!("writing /run/host/{name}"), e))?;
    }
    bind_self(dir)?;
    remount_ro(
        dir,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
}

fn bind(new: &Path, b: &Bind, fd: &OwnedFd) -> Result<(), String> {
    let target = chase(new, &b.dst)?;
    let is_dir = std::fs::metadata(fd_path(fd))
        .map(|m| m.is_dir())
        .unwrap_or(false);
    if is_dir {
        mkdir_p(&target, 0o755)?;
    } else {
        touch(&target)?;
    }
    let mut flags = MsFlags::MS_BIND;
    if b.recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(
        Some(fd_path(fd).as_str()),
        &target,
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "binding {} on {}: {}",
            b.src.display(),
            b.dst.display(),
            e.desc()
        )
    })?;
    if b.read_only {
        remount_ro(&target, MsFlags::empty())?;
    }
    Ok(())
}

/// `pivot_root` into `new`; the old root (with the scratch tmpfs) is detached.
fn pivot(new: &Path) -> Result<(), String> {
    std::env::set_current_dir(new).map_err(|e| err("entering the new root", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| err("pivot_root", e.desc()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| err("detaching the old root", e.desc()))?;
    std::env::set_current_dir("/").map_err(|e| err("entering /", e))
}
