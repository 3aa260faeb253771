//! Capabilities and `no_new_privs` (`docs/architecture.md#the-containers-filesystem-and-isolation`).
//! The bounding set is systemd-nspawn's default retain list (`arg_caps_retain` in
//! `src/nspawn/nspawn.c`), plus `CAP_NET_ADMIN` with a private network only, so a container on
//! the host's network cannot change the host's interfaces.

/// Capability numbers (linux/capability.h).
pub mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const DAC_READ_SEARCH: u32 = 2;
    pub const FOWNER: u32 = 3;
    pub const FSETID: u32 = 4;
    pub const KILL: u32 = 5;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const SETPCAP: u32 = 8;
    pub const LINUX_IMMUTABLE: u32 = 9;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_BROADCAST: u32 = 11;
    pub const NET_ADMIN: u32 = 12;
    pub const NET_RAW: u32 = 13;
    pub const IPC_LOCK: u32 = 14;
    pub const IPC_OWNER: u32 = 15;
    pub const SYS_MODULE: u32 = 16;
    pub const SYS_RAWIO: u32 = 17;
    pub const SYS_CHROOT: u32 = 18;
    pub const SYS_PTRACE: u32 = 19;
    pub const SYS_PACCT: u32 = 20;
    pub const SYS_ADMIN: u32 = 21;
    pub const SYS_BOOT: u32 = 22;
    pub const SYS_NICE: u32 = 23;
    pub const SYS_RESOURCE: u32 = 24;
    pub const SYS_TIME: u32 = 25;
    pub const SYS_TTY_CONFIG: u32 = 26;
    pub const MKNOD: u32 = 27;
    pub const LEASE: u32 = 28;
    pub const AUDIT_WRITE: u32 = 29;
    pub const AUDIT_CONTROL: u32 = 30;
    pub const SETFCAP: u32 = 31;
    pub const SYSLOG: u32 = 34;
}

/// systemd-nspawn's default `arg_caps_retain`.
const NSPAWN_RETAIN: [u32; 26] = [
    cap::AUDIT_CONTROL,
    cap::AUDIT_WRITE,
    cap::CHOWN,
    cap::DAC_OVERRIDE,
    cap::DAC_READ_SEARCH,
    cap::FOWNER,
    cap::FSETID,
    cap::IPC_OWNER,
    cap::KILL,
    cap::LEASE,
    cap::LINUX_IMMUTABLE,
    cap::MKNOD,
    cap::NET_BIND_SERVICE,
    cap::NET_BROADCAST,
    cap::NET_RAW,
    cap::SETFCAP,
    cap::SETGID,
    cap::SETPCAP,
    cap::SETUID,
    cap::SYS_ADMIN,
    cap::SYS_BOOT,
    cap::SYS_CHROOT,
    cap::SYS_NICE,
    cap::SYS_PTRACE,
    cap::SYS_RESOURCE,
    cap::SYS_TTY_CONFIG,
];

/// The launcher's own bounding set: a new user namespace starts with every capability in its
/// bounding set, so a container in one is limited to this explicitly (as one without is by
/// inheritance).
pub fn bounding_set() -> u64 {
    (0..64u32)
        .filter(|&c| {
            // SAFETY: PR_CAPBSET_READ with a capability number; no pointers.
            unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(c), 0, 0, 0) == 1 }
        })
        .fold(0u64, |m, c| m | (1 << c))
}

/// The capabilities a container keeps, as a mask. In a user namespace on the host's network,
/// `CAP_NET_BIND_SERVICE` goes too (nspawn, systemd#11889): the namespace's root would bind
/// the host's privileged ports.
pub fn retained(private_network: bool, userns: bool) -> u64 {
    let mut mask = NSPAWN_RETAIN.iter().fold(0u64, |m, c| m | (1 << c));
    if private_network {
        mask |= 1 << cap::NET_ADMIN;
    } else if userns {
        mask &= !(1 << cap::NET_BIND_SERVICE);
    }
    mask
}

/// The highest capability this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Drops every capability outside `retain` from the bounding, ambient, effective, permitted
/// and inheritable sets, then sets `no_new_privs` if asked. The process keeps running as root
/// with the retained capabilities; an `execve` as root gets exactly the bounding set.
pub fn apply(retain: u64, no_new_privs: bool) -> Result<(), String> {
    for c in 0..=last_cap() {
        if retain & (1u64 << c) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(c), 0, 0, 0) };
        if r < 0 {
            return Err(format!(
                "dropping capability {c} from the bounding set: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data structs as the v3 ABI wants; the kernel fills data.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } < 0 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    for (i, d) in data.iter_mut().enumerate() {
        let keep = u32::try_from((retain >> (32 * i)) & 0xffff_ffff).unwrap_or(0);
        d.effective &= keep;
        d.permitted &= keep;
        d.inheritable &= keep;
    }
    // SAFETY: as for capget; the kernel only reads data.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } < 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    if no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("setting no_new_privs: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_admin_only_with_a_private_network() {
        assert_eq!(retained(false, false) & (1 << cap::NET_ADMIN), 0);
        assert_ne!(retained(true, false) & (1 << cap::NET_ADMIN), 0);
        // nspawn's default set, as /proc/PID/status shows it (CapBnd).
        assert_eq!(retained(false, false), 0x0000_0000_fdec_afff);
        assert_eq!(retained(true, false), 0x0000_0000_fdec_bfff);
        // A user namespace on the host's network loses CAP_NET_BIND_SERVICE (systemd#11889).
        assert_eq!(retained(false, true), 0x0000_0000_fdec_abff);
        assert_eq!(retained(true, true), retained(true, false));
        for c in [
            cap::SYS_MODULE,
            cap::SYS_TIME,
            cap::SYS_RAWIO,
            cap::SYSLOG,
            cap::IPC_LOCK,
        ] {
            assert_eq!(retained(true, false) & (1 << c), 0, "capability {c}");
        }
    }
}
