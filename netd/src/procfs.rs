//! Facts about processes and namespaces read from `/proc`, and pidfds.

use std::fs;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

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
    use std::os::fd::AsRawFd;
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

/// Device and inode of a namespace file: equal for the same namespace.
pub fn ns_id(fd: impl AsFd) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd.as_fd())?;
    Ok((st.st_dev, st.st_ino))
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
}
