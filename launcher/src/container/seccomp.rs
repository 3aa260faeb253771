//! The container's seccomp filter, systemd-nspawn's default (`src/nspawn/nspawn-seccomp.c`):
//! an allow list, by syscall group of `src/shared/seccomp-util.c`, with the groups and calls
//! that need a capability allowed only when the container keeps it; everything else fails with
//! `EPERM`. Built with libseccomp, for the native architecture and its compat ones. Plus
//! nspawn's second filter: `socket(AF_NETLINK, *, NETLINK_AUDIT)` fails with `EAFNOSUPPORT`.
//!
//! One rnet addition: nspawn keeps `CAP_MKNOD` and relies on the devices cgroup of its scope to
//! refuse device nodes; rnet runs in no cgroup of its own, so `mknod`/`mknodat` are allowed
//! only for regular files, FIFOs and sockets (a character or block device gets `EPERM`).

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

use crate::container::isolate::cap;

/// systemd's syscall groups that nspawn allows (seccomp-util.c `syscall_filter_sets`), with the
/// calls newer systemd releases added to them.
#[rustfmt::skip]
const GROUPS: &[(&str, &[&str])] = &[
    ("@aio", &["io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup"]),
    ("@basic-io", &["_llseek", "close", "close_range", "dup", "dup2", "dup3", "lseek", "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readv", "write", "writev"]),
    ("@chown", &["chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32"]),
    ("@default", &["arch_prctl", "brk", "cacheflush", "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "execve", "exit", "exit_group", "futex", "futex_time64", "futex_waitv", "get_robust_list", "get_thread_area", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getpgid", "getpgrp", "getpid", "getppid", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "getsid", "gettid", "gettimeofday", "getuid", "getuid32", "map_shadow_stack", "membarrier", "mmap", "mmap2", "munmap", "nanosleep", "pause", "prlimit64", "restart_syscall", "riscv_flush_icache", "riscv_hwprobe", "rseq", "rt_sigreturn", "sched_getaffinity", "sched_yield", "set_robust_list", "set_thread_area", "set_tid_address", "set_tls", "sigreturn", "time", "ugetrlimit", "uretprobe"]),
    ("@file-system", &["access", "chdir", "chmod", "close", "creat", "faccessat", "faccessat2", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fcntl", "fcntl64", "fgetxattr", "flistxattr", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "ftruncate", "ftruncate64", "futimesat", "getcwd", "getdents", "getdents64", "getxattr", "getxattrat", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "lgetxattr", "link", "linkat", "listxattr", "listxattrat", "llistxattr", "lremovexattr", "lsetxattr", "lstat", "lstat64", "mkdir", "mkdirat", "mmap", "mmap2", "munmap", "newfstatat", "oldfstat", "oldlstat", "oldstat", "open", "openat", "openat2", "readlink", "readlinkat", "removexattr", "removexattrat", "rename", "renameat", "renameat2", "rmdir", "setxattr", "setxattrat", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "truncate", "truncate64", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes"]),
    ("@io-event", &["_newselect", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64", "select"]),
    ("@ipc", &["ipc", "memfd_create", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd", "pipe", "pipe2", "process_madvise", "process_vm_readv", "process_vm_writev", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget"]),
    ("@mount", &["chroot", "fsconfig", "fsmount", "fsopen", "fspick", "listmount", "mount", "mount_setattr", "move_mount", "open_tree", "open_tree_attr", "pivot_root", "statmount", "umount", "umount2"]),
    ("@network-io", &["accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socket", "socketcall", "socketpair"]),
    ("@process", &["capget", "clone", "clone3", "execveat", "fork", "getrusage", "kill", "pidfd_getfd", "pidfd_open", "pidfd_send_signal", "prctl", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "setns", "swapcontext", "tgkill", "times", "tkill", "unshare", "vfork", "wait4", "waitid", "waitpid"]),
    ("@resources", &["ioprio_set", "mbind", "migrate_pages", "move_pages", "nice", "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "set_mempolicy", "set_mempolicy_home_node", "setpriority", "setrlimit"]),
    ("@setuid", &["setgid", "setgid32", "setgroups", "setgroups32", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32"]),
    ("@signal", &["rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "sigaction", "sigaltstack", "signal", "signalfd", "signalfd4", "sigpending", "sigprocmask", "sigsuspend"]),
    ("@sync", &["fdatasync", "fsync", "msync", "sync", "sync_file_range", "sync_file_range2", "syncfs"]),
    ("@timer", &["alarm", "getitimer", "setitimer", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times"]),
];

/// Groups allowed only with a capability (nspawn's "optionally enabled" sets).
#[rustfmt::skip]
const CAP_GROUPS: &[(u32, &str, &[&str])] = &[
    (cap::SYS_TIME, "@clock", &["adjtimex", "clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64", "settimeofday", "stime"]),
    (cap::SYS_MODULE, "@module", &["delete_module", "finit_module", "init_module"]),
    (cap::SYS_RAWIO, "@raw-io", &["ioperm", "iopl", "pciconfig_iobase", "pciconfig_read", "pciconfig_write", "s390_pci_mmio_read", "s390_pci_mmio_write"]),
    (cap::IPC_LOCK, "@memlock", &["mlock", "mlock2", "mlockall", "munlock", "munlockall"]),
];

/// Single calls nspawn adds to the groups.
#[rustfmt::skip]
const EXTRA: &[&str] = &[
    "brk", "capget", "capset", "copy_file_range", "fadvise64", "fadvise64_64", "flock",
    "get_mempolicy", "getcpu", "getpriority", "getrandom", "ioctl", "ioprio_get", "kcmp", "madvise",
    "mincore", "mprotect", "mremap", "name_to_handle_at", "oldolduname", "olduname", "personality",
    "readahead", "readdir", "remap_file_pages", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_yield", "seccomp", "sendfile",
    "sendfile64", "setdomainname", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32",
    "sethostname", "setpgid", "setsid", "splice", "sysinfo", "tee", "umask", "uname", "userfaultfd",
    "vmsplice",
];

/// Single calls allowed only with a capability.
#[rustfmt::skip]
const CAP_EXTRA: &[(u32, &str)] = &[
    (cap::SYS_PACCT, "acct"),
    (cap::SYS_PTRACE, "process_vm_readv"),
    (cap::SYS_PTRACE, "process_vm_writev"),
    (cap::SYS_PTRACE, "ptrace"),
    (cap::SYS_BOOT, "reboot"),
    (cap::SYSLOG, "syslog"),
    (cap::SYS_TTY_CONFIG, "vhangup"),
];

/// The names the allow list holds for a container keeping `retain` (mknod aside).
pub fn allowed(retain: u64) -> Vec<&'static str> {
    let has = |c: u32| retain & (1u64 << c) != 0;
    let mut names: Vec<&'static str> = GROUPS.iter().flat_map(|(_, l)| l.iter().copied()).collect();
    names.extend(
        CAP_GROUPS
            .iter()
            .filter(|(c, _, _)| has(*c))
            .flat_map(|(_, _, l)| l.iter().copied()),
    );
    names.extend(EXTRA.iter().copied());
    names.extend(CAP_EXTRA.iter().filter(|(c, _)| has(*c)).map(|(_, n)| *n));
    names.sort_unstable();
    names.dedup();
    names
}

fn ctx_error(what: &str, e: impl std::fmt::Display) -> String {
    format!("seccomp: {what}: {e}")
}

/// The architectures a filter covers: the native one and those it runs binaries of.
fn archs(ctx: &mut ScmpFilterContext) -> Result<(), String> {
    let extra: &[ScmpArch] = match ScmpArch::native() {
        ScmpArch::X8664 => &[ScmpArch::X86, ScmpArch::X32],
        ScmpArch::Aarch64 => &[ScmpArch::Arm],
        _ => &[],
    };
    for a in extra {
        ctx.add_arch(*a)
            .map_err(|e| ctx_error("adding an architecture", e))?;
    }
    Ok(())
}

/// Loads the filters into the calling process (inherited by its children and kept across
/// `execve`). `no_new_privs` is left to the caller ([`crate::container::isolate::apply`]).
pub fn install(retain: u64) -> Result<(), String> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Errno(libc::EPERM))
        .map_err(|e| ctx_error("creating the filter", e))?;
    ctx.set_ctl_nnp(false)
        .map_err(|e| ctx_error("attributes", e))?;
    archs(&mut ctx)?;
    for name in allowed(retain) {
        // A call this architecture does not have is skipped, as systemd does.
        if let Ok(sc) = ScmpSyscall::from_name(name) {
            let _ = ctx.add_rule(ScmpAction::Allow, sc);
        }
    }
    // mknod(path, mode, dev) and mknodat(dirfd, path, mode, dev): not for devices.
    for (name, arg) in [("mknod", 1), ("mknodat", 2)] {
        let Ok(sc) = ScmpSyscall::from_name(name) else {
            continue;
        };
        for kind in [0, libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK] {
            let cmp = ScmpArgCompare::new(
                arg,
                ScmpCompareOp::MaskedEqual(u64::from(libc::S_IFMT)),
                u64::from(kind),
            );
            let _ = ctx.add_rule_conditional(ScmpAction::Allow, sc, &[cmp]);
        }
    }
    ctx.load().map_err(|e| ctx_error("loading the filter", e))?;

    let mut audit = ScmpFilterContext::new(ScmpAction::Allow)
        .map_err(|e| ctx_error("creating the audit filter", e))?;
    audit
        .set_ctl_nnp(false)
        .map_err(|e| ctx_error("attributes", e))?;
    archs(&mut audit)?;
    let socket = ScmpSyscall::from_name("socket").map_err(|e| ctx_error("socket", e))?;
    let _ = audit.add_rule_conditional(
        ScmpAction::Errno(libc::EAFNOSUPPORT),
        socket,
        &[
            ScmpArgCompare::new(0, ScmpCompareOp::Equal, libc::AF_NETLINK as u64),
            ScmpArgCompare::new(2, ScmpCompareOp::Equal, libc::NETLINK_AUDIT as u64),
        ],
    );
    audit
        .load()
        .map_err(|e| ctx_error("loading the audit filter", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::isolate::retained;

    #[test]
    fn module_clock_and_rawio_calls_need_capabilities_the_container_lacks() {
        let a = allowed(retained(true, false));
        for denied in [
            "finit_module",
            "init_module",
            "settimeofday",
            "clock_settime",
            "iopl",
            "kexec_load",
            "bpf",
            "perf_event_open",
            "open_by_handle_at",
            "add_key",
            "swapon",
            "syslog",
            "mknod",
        ] {
            assert!(!a.contains(&denied), "{denied} is allowed");
        }
        for ok in [
            "reboot", "mount", "ptrace", "clone3", "setuid", "openat", "execve",
        ] {
            assert!(a.contains(&ok), "{ok} is not allowed");
        }
        let all_caps = allowed(u64::MAX);
        assert!(all_caps.contains(&"finit_module") && all_caps.contains(&"syslog"));
    }

    #[test]
    fn the_filter_builds_for_this_machine() {
        // Rules are added and exported, not loaded: the test process keeps its privileges.
        let mut ctx = ScmpFilterContext::new(ScmpAction::Errno(libc::EPERM)).unwrap();
        archs(&mut ctx).unwrap();
        let mut added = 0;
        for name in allowed(retained(true, false)) {
            if let Ok(sc) = ScmpSyscall::from_name(name)
                && ctx.add_rule(ScmpAction::Allow, sc).is_ok()
            {
                added += 1;
            }
        }
        assert!(added > 250, "only {added} calls allowed");
        let out = tempfile::tempfile().unwrap();
        ctx.export_bpf(&out).unwrap();
        assert!(out.metadata().unwrap().len() > 0);
    }
}
