//! Facts about processes and namespaces read from `/proc`, and pidfds.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`): with the
/// pid it identifies a process across pid reuse.
pub fn pid_start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat"),
        )
    })
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3; field 22 is the 20th from there.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `pidfd_open(pid, 0)`: a handle that becomes readable when the process exits.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(fd, sig, NULL, 0)`.
pub fn pidfd_send_signal(fd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, a null siginfo and no flags; no memory is shared.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process of a pidfd has exited (the pidfd is readable, or hung up once reaped),
/// without waiting.
pub fn has_exited(fd: impl AsFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that lives across the call; a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0
}

/// Device and inode of a namespace file: equal for the same namespace.
pub fn ns_id(fd: impl AsFd) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd.as_fd())?;
    Ok((st.st_dev, st.st_ino))
}

/// Why a passed fd cannot be taken as a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsFdError {
    /// It is some other kind of file, or a namespace of another type.
    #[error("the passed fd is not a network namespace (it is {kind})")]
    NotNetns {
        /// What it is instead, e.g. "a regular file" or "a mount namespace".
        kind: &'static str,
    },
    /// It could not even be examined.
    #[error("cannot inspect the passed fd: {0}")]
    Inspect(#[from] io::Error),
}

/// Checks that `fd` is a network namespace (an `nsfs` file whose `NS_GET_NSTYPE` is
/// `CLONE_NEWNET`), and otherwise says what it is. The ioctl is only issued on `nsfs` files, so a
/// device passed by a hostile client never sees it.
pub fn check_netns(fd: impl AsFd) -> Result<(), NetnsFdError> {
    let fd = fd.as_fd();
    let fs = nix::sys::statfs::fstatfs(fd).map_err(io::Error::from)?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
        return Err(NetnsFdError::NotNetns {
            kind: file_kind(st.st_mode),
        });
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns a number; `fd` is a live nsfs
    // fd borrowed for the call.
    let ty = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if ty < 0 {
        return Err(io::Error::last_os_error().into());
    }
    if ty == libc::CLONE_NEWNET {
        return Ok(());
    }
    Err(NetnsFdError::NotNetns {
        kind: namespace_kind(ty),
    })
}

/// "a regular file", "a socket", ... for a `st_mode`.
fn file_kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFSOCK => "a socket",
        libc::S_IFIFO => "a pipe",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFLNK => "a symbolic link",
        _ => "a special file",
    }
}

/// `CLONE_NEWTIME` (Linux 5.6), which the libc crate does not define.
const CLONE_NEWTIME: libc::c_int = 0x80;

/// "a mount namespace", ... for a `CLONE_NEW*` namespace type.
fn namespace_kind(ty: libc::c_int) -> &'static str {
    match ty {
        libc::CLONE_NEWNS => "a mount namespace",
        libc::CLONE_NEWUTS => "a UTS namespace",
        libc::CLONE_NEWIPC => "an IPC namespace",
        libc::CLONE_NEWUSER => "a user namespace",
        libc::CLONE_NEWPID => "a PID namespace",
        libc::CLONE_NEWCGROUP => "a cgroup namespace",
        CLONE_NEWTIME => "a time namespace",
        _ => "a namespace of another type",
    }
}

/// Device and inode of the network namespace of `pid`.
pub fn pid_netns_id(pid: u32) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::stat(format!("/proc/{pid}/ns/net").as_str())?;
    Ok((st.st_dev, st.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_parsing_survives_odd_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_start_time(stat), Some(123_456));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        assert!(pid_start_time(me).unwrap() > 0);
        let fd = pidfd_open(me).unwrap();
        drop(fd);
        let own = fs::File::open("/proc/self/ns/net").unwrap();
        assert_eq!(ns_id(&own).unwrap(), pid_netns_id(me).unwrap());
    }

    #[test]
    fn only_a_network_namespace_passes() {
        let net = fs::File::open("/proc/self/ns/net").unwrap();
        assert!(check_netns(&net).is_ok());
        let e = |fd: &dyn AsFd| check_netns(fd).unwrap_err().to_string();
        let file = tempfile::tempfile().unwrap();
        assert_eq!(
            e(&file),
            "the passed fd is not a network namespace (it is a regular file)"
        );
        let dir = fs::File::open("/proc/self").unwrap();
        assert_eq!(
            e(&dir),
            "the passed fd is not a network namespace (it is a directory)"
        );
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(
            e(&a),
            "the passed fd is not a network namespace (it is a socket)"
        );
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert_eq!(
            e(&r),
            "the passed fd is not a network namespace (it is a pipe)"
        );
        let null = fs::File::open("/dev/null").unwrap();
        assert_eq!(
            e(&null),
            "the passed fd is not a network namespace (it is a character device)"
        );
        let mnt = fs::File::open("/proc/self/ns/mnt").unwrap();
        assert_eq!(
            e(&mnt),
            "the passed fd is not a network namespace (it is a mount namespace)"
        );
        let uts = fs::File::open("/proc/self/ns/uts").unwrap();
        assert_eq!(
            e(&uts),
            "the passed fd is not a network namespace (it is a UTS namespace)"
        );
    }
}
