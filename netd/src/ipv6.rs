//! IPv6 addressing: the ULA `/48` of this host, the `/64`s cut from it (one per `ve-` link and
//! per zone), the gateway and the container's address in a `/64`. Pure.
//!
//! - The `/48` is RFC 4193's `fd00::/8` plus a 40-bit global ID. RFC 4193 section 3.2.2
//!   suggests a hash of a time stamp and an EUI-64; like systemd's
//!   `sd_id128_get_machine_app_specific()` we hash the machine id with an application id
//!   instead, so the prefix is random-looking, never shows the machine id, and is the same after
//!   every restart and reboot (`rnetd --pool6` chooses another).
//! - The gateway of a `/64` is `PREFIX::1` (as the IPv4 gateway is the subnet's first address).
//! - The container's address is the `/64` plus the modified EUI-64 interface identifier of its
//!   MAC (RFC 4291 appendix A): exactly what the kernel's SLAAC (`addr_gen_mode` 0, the default)
//!   forms from our router advertisements, so the launcher's static address and a booted
//!   container's own configuration agree, as the IPv4 address agrees with our DHCP server.

use std::collections::BTreeSet;
use std::hash::Hasher;
use std::net::Ipv6Addr;

use ipnetwork::Ipv6Network;
use siphasher::sip::SipHasher24;

use crate::naming::MachineId;

/// Prefix length of the host's ULA prefix.
pub const ULA_PREFIX: u8 = 48;

/// Prefix length of a link's or zone's IPv6 subnet (SLAAC needs a `/64`).
pub const LINK_PREFIX: u8 = 64;

/// The application id hashed with the machine id (any fixed 16 bytes; these spell the use).
const APP_ID: [u8; 16] = *b"rnet ula prefix\0";

/// This host's ULA `/48`: `fd` and 40 bits of SipHash-2-4 keyed with the machine id over
/// [`APP_ID`].
pub fn ula_prefix(machine_id: MachineId) -> Ipv6Network {
    let mut h = SipHasher24::new_with_key(&machine_id.0);
    h.write(&APP_ID);
    let hash = h.finish().to_be_bytes();
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&hash[..5]);
    Ipv6Network::new(Ipv6Addr::from(octets), ULA_PREFIX).unwrap_or_else(|_| unreachable!())
}

/// Checks a `--pool6` prefix: `/48` to `/63`, so that it holds `/64`s, and unicast space that
/// is neither loopback, link-local nor multicast.
pub fn check_pool6(net: Ipv6Network) -> Result<Ipv6Network, String> {
    if net.prefix() < 16 || net.prefix() >= LINK_PREFIX {
        return Err(format!(
            "--pool6 {net}: the prefix must be /16 to /63 (it is cut into /64s)"
        ));
    }
    let first = net.network();
    if !crate::api::usable_unicast6(first) {
        return Err(format!(
            "--pool6 {net}: multicast, loopback and link-local prefixes cannot be used"
        ));
    }
    Ipv6Network::new(first, net.prefix()).map_err(|e| e.to_string())
}

/// The gateway (host side) of a `/64`: `PREFIX::1`.
pub fn gateway6(subnet: Ipv6Network) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) | 1)
}

/// The address SLAAC forms in `subnet` for `mac`: the modified EUI-64 interface identifier
/// (`ff:fe` in the middle, the universal/local bit flipped).
pub fn eui64(subnet: Ipv6Network, mac: [u8; 6]) -> Ipv6Addr {
    let iid = [
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ];
    let prefix = u128::from(subnet.network()) & !u128::from(u64::MAX);
    Ipv6Addr::from(prefix | u128::from(u64::from_be_bytes(iid)))
}

/// The `/64`s of a prefix, handed out next-fit (a freed `/64` is not reused at once, so a
/// neighbour cache or a connection still naming an old container's address does not reach a
/// new one). What is taken is passed in (the registry's machines and zones), so there is
/// nothing to keep in step on adoption.
#[derive(Debug, Clone)]
pub struct Pool6 {
    base: Ipv6Network,
    /// The index of the `/64` after the last one handed out.
    next: u64,
}

impl Pool6 {
    /// `/64`s of `base` (checked with [`check_pool6`]).
    pub fn new(base: Ipv6Network) -> Self {
        Self { base, next: 1 }
    }

    /// The prefix the `/64`s are cut from.
    pub fn base(&self) -> Ipv6Network {
        self.base
    }

    fn count(&self) -> u64 {
        1u64 << (LINK_PREFIX - self.base.prefix()).min(63)
    }

    fn nth(&self, i: u64) -> Ipv6Network {
        let shift = 128 - u32::from(LINK_PREFIX);
        let addr = u128::from(self.base.network()) | (u128::from(i) << shift);
        Ipv6Network::new(Ipv6Addr::from(addr), LINK_PREFIX).unwrap_or_else(|_| unreachable!())
    }

    /// The next free `/64` (index 0, `PREFIX::/64` itself, is skipped: it reads like the whole
    /// prefix), or `None` when all are taken.
    pub fn propose(&self, taken: &BTreeSet<Ipv6Network>) -> Option<Ipv6Network> {
        let count = self.count();
        (0..count)
            .map(|k| (self.next + k) % count)
            .filter(|&i| i != 0)
            .map(|i| self.nth(i))
            .find(|n| !taken.contains(n))
    }

    /// Moves past `net` (just handed out).
    pub fn advance(&mut self, net: Ipv6Network) {
        if !self.base.contains(net.network()) {
            return;
        }
        let shift = 128 - u32::from(LINK_PREFIX);
        let offset = (u128::from(net.network()) - u128::from(self.base.network())) >> shift;
        self.next = u64::try_from(offset).unwrap_or(0).wrapping_add(1) % self.count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ula_prefix_is_stable_and_specific_to_the_machine() {
        let a = MachineId([1; 16]);
        let b = MachineId([2; 16]);
        assert_eq!(ula_prefix(a), ula_prefix(a));
        assert_ne!(ula_prefix(a), ula_prefix(b));
        let p = ula_prefix(a);
        assert_eq!(p.prefix(), 48);
        assert_eq!(p.network().octets()[0], 0xfd);
        assert_eq!(p.network().octets()[6..], [0; 10]);
        // A fixed vector, so the derivation never changes silently (it would renumber every
        // host's containers).
        assert_eq!(
            ula_prefix(MachineId([0; 16])).to_string(),
            "fd3c:112c:f3e5::/48"
        );
    }

    #[test]
    fn eui64_matches_the_kernel() {
        // host0 02:1c:42:aa:bb:cc forms ...:1c:42ff:feaa:bbcc (the U/L bit flipped).
        let net: Ipv6Network = "fd12:3456:789a:1::/64".parse().unwrap();
        assert_eq!(
            eui64(net, [0x02, 0x1c, 0x42, 0xaa, 0xbb, 0xcc]).to_string(),
            "fd12:3456:789a:1:1c:42ff:feaa:bbcc"
        );
        assert_eq!(
            eui64(net, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]).to_string(),
            "fd12:3456:789a:1:5054:ff:fe12:3456"
        );
        assert_eq!(gateway6(net).to_string(), "fd12:3456:789a:1::1");
    }

    #[test]
    fn pool_hands_out_64s_next_fit() {
        let mut pool = Pool6::new("fd00:1:2::/48".parse().unwrap());
        let mut taken = BTreeSet::new();
        let a = pool.propose(&taken).unwrap();
        assert_eq!(a.to_string(), "fd00:1:2:1::/64");
        taken.insert(a);
        pool.advance(a);
        let b = pool.propose(&taken).unwrap();
        assert_eq!(b.to_string(), "fd00:1:2:2::/64");
        taken.insert(b);
        pool.advance(b);
        // a is freed: not reused at once.
        taken.remove(&a);
        assert_eq!(pool.propose(&taken).unwrap().to_string(), "fd00:1:2:3::/64");
    }

    #[test]
    fn a_small_pool_runs_out() {
        let pool = Pool6::new("fd00:1:2:4::/62".parse().unwrap());
        let mut taken = BTreeSet::new();
        for _ in 0..3 {
            let n = pool.propose(&taken).unwrap();
            assert!(pool.base().contains(n.network()));
            taken.insert(n);
        }
        assert_eq!(taken.len(), 3);
        assert_eq!(pool.propose(&taken), None);
    }

    #[test]
    fn pool6_is_checked() {
        assert!(check_pool6("fd00::/48".parse().unwrap()).is_ok());
        assert_eq!(
            check_pool6("fd00:1:2:3:4::/60".parse().unwrap())
                .unwrap()
                .to_string(),
            "fd00:1:2::/60"
        );
        for bad in ["fd00::/64", "fd00::/8", "fe80::/48", "ff02::/48", "::1/127"] {
            assert!(check_pool6(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
