//! Address choice by client identifier, exactly as systemd's
//! `src/libsystemd-network/sd-dhcp-server.c` does it for a DISCOVER: SipHash-2-4 (its `HASH_KEY`)
//! of the client id as `client_id_hash_func()` feeds it, then linear probing over the pool from
//! `pool_offset + hash % pool_size`, so a client keeps its address in a given subnet even without
//! a lease file.

use std::hash::Hasher;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use siphasher::sip::SipHasher24;

/// `HASH_KEY` of `sd-dhcp-server.c`.
const HASH_KEY: [u8; 16] = [
    0x0d, 0x1d, 0xfe, 0xbd, 0xf1, 0x24, 0xbd, 0xb3, 0x47, 0xf1, 0xdd, 0x6e, 0x73, 0x21, 0x93, 0x30,
];

/// The client identifier systemd synthesises when a client sends none: type `0x01` (Ethernet)
/// followed by the hardware address.
pub fn client_id_from_mac(mac: [u8; 6]) -> Vec<u8> {
    let mut id = Vec::with_capacity(7);
    id.push(0x01);
    id.extend_from_slice(&mac);
    id
}

/// `client_id_hash_func()`: the length as a native `size_t`, then the raw id (type byte included).
pub fn client_id_hash(client_id: &[u8]) -> u64 {
    let mut h = SipHasher24::new_with_key(&HASH_KEY);
    h.write(&(client_id.len() as u64).to_ne_bytes());
    h.write(client_id);
    h.finish()
}

/// Picks the address for `client_id` in the default pool of `subnet` as systemd does: the pool is
/// every host address of the subnet (network and broadcast excluded, offsets `1..=size-2`);
/// probing starts at `1 + hash % pool_size` and takes the first address for which `available` is
/// true. The caller's `available` must refuse the server's own address and bound or static
/// addresses.
///
/// Returns `None` when no address is free (or the subnet has no host addresses).
pub fn pick_address(
    subnet: Ipv4Network,
    client_id: &[u8],
    available: impl FnMut(Ipv4Addr) -> bool,
) -> Option<Ipv4Addr> {
    let size = subnet.size();
    if size < 4 {
        return None;
    }
    pick_address_in(subnet, 1, size - 2, client_id, available)
}

/// [`pick_address`] over a pool of `pool_size` addresses starting at host offset `pool_offset`
/// (networkd's `PoolOffset=`/`PoolSize=`): probing starts at `pool_offset + hash % pool_size`.
///
/// Returns `None` when no address is free or the pool is empty or does not fit in the subnet.
pub fn pick_address_in(
    subnet: Ipv4Network,
    pool_offset: u32,
    pool_size: u32,
    client_id: &[u8],
    mut available: impl FnMut(Ipv4Addr) -> bool,
) -> Option<Ipv4Addr> {
    let end = u64::from(pool_offset) + u64::from(pool_size);
    if pool_size == 0 || end > u64::from(subnet.size()) {
        return None;
    }
    let pool_size = u64::from(pool_size);
    let base = u32::from(subnet.network());
    let hash = client_id_hash(client_id);
    (0..pool_size)
        .filter_map(|i| {
            let offset = u64::from(pool_offset) + (hash.wrapping_add(i) % pool_size);
            // `offset < end <= size`, so the address stays inside the subnet.
            u32::try_from(offset).ok().map(|o| Ipv4Addr::from(base + o))
        })
        .find(|&addr| available(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_systemd_example() {
        // Client-id 01:02:aa:bb:cc:dd:ee hashes to 0xb433458d6b67c292, whose first candidate in a
        // /28 is offset 7: worked out from sd-dhcp-server.c's algorithm (SipHash-2-4 with its
        // HASH_KEY over what client_id_hash_func() feeds it).
        let id = [0x01, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        assert_eq!(client_id_hash(&id), 0xb433_458d_6b67_c292);
        let subnet: Ipv4Network = "192.168.10.16/28".parse().unwrap();
        assert_eq!(
            pick_address(subnet, &id, |_| true),
            Some(Ipv4Addr::new(192, 168, 10, 23))
        );
    }

    #[test]
    fn client_id_from_mac_prefixes_ethernet_type() {
        assert_eq!(
            client_id_from_mac([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]),
            vec![0x01, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]
        );
    }

    #[test]
    fn probing_skips_taken_addresses_and_wraps() {
        let id = [0x01, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        let subnet: Ipv4Network = "10.0.0.0/28".parse().unwrap();
        // Offsets 7..=14 taken: probing wraps to offset 1.
        let got = pick_address(subnet, &id, |a| a.octets()[3] < 7);
        assert_eq!(got, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(pick_address(subnet, &id, |_| false), None);
    }

    #[test]
    fn never_network_or_broadcast() {
        let subnet: Ipv4Network = "10.0.0.0/28".parse().unwrap();
        for n in 0u8..=255 {
            let id = [0x01, n, 1, 2, 3, 4, 5];
            let a = pick_address(subnet, &id, |_| true).unwrap();
            assert!(a != subnet.network() && a != subnet.broadcast() && subnet.contains(a));
        }
    }

    #[test]
    fn custom_pool_probes_inside_the_pool_only() {
        let id = [0x01, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        let subnet: Ipv4Network = "10.0.0.0/24".parse().unwrap();
        // Pool 10.0.0.100..=10.0.0.109: the hash picks offset 100 + hash % 10.
        let first = 100 + u32::try_from(client_id_hash(&id) % 10).unwrap();
        let got = pick_address_in(subnet, 100, 10, &id, |_| true).unwrap();
        assert_eq!(got, Ipv4Addr::from(u32::from(subnet.network()) + first));
        let mut seen = Vec::new();
        assert_eq!(
            pick_address_in(subnet, 100, 10, &id, |a| {
                seen.push(a);
                false
            }),
            None
        );
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 10);
        assert!(seen.iter().all(|a| (100..110).contains(&a.octets()[3])));
        // A pool that does not fit is empty rather than a panic.
        assert_eq!(pick_address_in(subnet, 250, 10, &id, |_| true), None);
        assert_eq!(pick_address_in(subnet, 1, 0, &id, |_| true), None);
    }

    #[test]
    fn tiny_subnets_have_no_pool() {
        let subnet: Ipv4Network = "10.0.0.0/31".parse().unwrap();
        assert_eq!(pick_address(subnet, &[1], |_| true), None);
    }
}
