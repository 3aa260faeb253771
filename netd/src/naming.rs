//! Interface names and MAC addresses, derived exactly as systemd-nspawn derives them
//! (`net_shorten_ifname()` and `net_generate_mac()` in systemd's `netif-util.c`, under
//! `src/shared`, called from `setup_veth()` in `src/nspawn/nspawn-network.c`; design in
//! `docs/architecture.md#naming-and-macs`), so a machine keeps the names and MACs it would have
//! under nspawn + networkd.

use std::fmt;
use std::hash::Hasher;

use siphasher::sip::SipHasher24;

use crate::api::Mac;

/// `IFNAMSIZ`: names must be shorter than this (15 characters at most).
pub const IFNAMSIZ: usize = 16;

/// Longest altname the kernel accepts (`ALTIFNAMSIZ - 1`).
pub const MAX_ALTNAME: usize = 127;

/// `SHORTEN_IFNAME_HASH_KEY` of systemd's `netif-util.c` (in `src/shared`).
const SHORTEN_KEY: [u8; 16] = [
    0xe1, 0x90, 0xa4, 0x04, 0xa8, 0xef, 0x4b, 0x51, 0x8c, 0xcc, 0xc3, 0x3a, 0x9f, 0x11, 0xfc, 0xa2,
];

/// RFC 4648 §5 "base64url", as `urlsafe_base64char()`.
const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Shortens an interface name as `net_shorten_ifname()` does: names of 16 characters or more
/// become their first 11 characters plus 4 base64url characters of the low 24 bits of the
/// SipHash-2-4 of the full name. Shorter names are returned unchanged.
pub fn shorten_ifname(name: &str) -> String {
    if name.len() < IFNAMSIZ {
        return name.to_owned();
    }
    let mut h = SipHasher24::new_with_key(&SHORTEN_KEY);
    h.write(name.as_bytes());
    let hash = h.finish();
    // Machine names are ASCII (validated), so byte 11 is a character boundary.
    let mut out: String = name.chars().take(IFNAMSIZ - 5).collect();
    for shift in [18u32, 12, 6, 0] {
        out.push(char::from(BASE64URL[((hash >> shift) & 63) as usize]));
    }
    out
}

/// The host-side names of a link: the kernel name and, when it had to be shortened, the full
/// name to set as altname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkName {
    /// The name the link gets (at most 15 characters).
    pub ifname: String,
    /// The full name, when `ifname` is shortened and the full name fits in an altname.
    pub altname: Option<String>,
}

impl LinkName {
    /// `prefix` + `machine`, shortened if needed.
    pub fn new(prefix: &str, machine: &str) -> Self {
        let full = format!("{prefix}{machine}");
        let ifname = shorten_ifname(&full);
        let altname = (ifname != full && full.len() <= MAX_ALTNAME).then_some(full);
        Self { ifname, altname }
    }
}

/// A 128-bit machine id (`/etc/machine-id`), the input that makes MACs stable per host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineId(pub [u8; 16]);

impl MachineId {
    /// Parses the 32 hex digits of `/etc/machine-id` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(id))
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Which end of which link a MAC is for: each has its own hash key (the `*_HASH_KEY`s of
/// `src/nspawn/nspawn-network.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacKey {
    /// Host side of `ve-`/`vb-` (`HOST_HASH_KEY`).
    Host,
    /// `host0` (`CONTAINER_HASH_KEY`).
    Container,
    /// Host side of an extra veth (`VETH_EXTRA_HOST_HASH_KEY`).
    VethExtraHost,
    /// Container side of an extra veth (`VETH_EXTRA_CONTAINER_HASH_KEY`).
    VethExtraContainer,
    /// A macvlan (`MACVLAN_HASH_KEY`).
    Macvlan,
}

impl MacKey {
    fn bytes(self) -> [u8; 16] {
        match self {
            MacKey::Host => [
                0x1a, 0x37, 0x6f, 0xc7, 0x46, 0xec, 0x45, 0x0b, 0xad, 0xa3, 0xd5, 0x31, 0x06, 0x60,
                0x5d, 0xb1,
            ],
            MacKey::Container => [
                0xc3, 0xc4, 0xf9, 0x19, 0xb5, 0x57, 0xb2, 0x1c, 0xe6, 0xcf, 0x14, 0x27, 0x03, 0x9c,
                0xee, 0xa2,
            ],
            MacKey::VethExtraHost => [
                0x48, 0xc7, 0xf6, 0xb7, 0xea, 0x9d, 0x4c, 0x9e, 0xb7, 0x28, 0xd4, 0xde, 0x91, 0xd5,
                0xbf, 0x66,
            ],
            MacKey::VethExtraContainer => [
                0xaf, 0x50, 0x17, 0x61, 0xce, 0xf9, 0x4d, 0x35, 0x84, 0x0d, 0x2b, 0x20, 0x54, 0xbe,
                0xce, 0x59,
            ],
            MacKey::Macvlan => [
                0x00, 0x13, 0x6d, 0xbc, 0x66, 0x83, 0x44, 0x81, 0xbb, 0x0c, 0xf9, 0x51, 0x1f, 0x24,
                0xa6, 0x6f,
            ],
        }
    }
}

/// `net_generate_mac()`: SipHash-2-4 over machine id ‖ machine name ‖ (index as little-endian
/// u64, only when > 0), the first 6 bytes of the little-endian hash, marked unicast and locally
/// administered.
pub fn generate_mac(machine_id: MachineId, machine: &str, key: MacKey, index: u64) -> Mac {
    let mut h = SipHasher24::new_with_key(&key.bytes());
    h.write(&machine_id.0);
    h.write(machine.as_bytes());
    if index > 0 {
        h.write(&index.to_le_bytes());
    }
    let bytes = h.finish().to_le_bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Mac(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names as `net_shorten_ifname()` shortens them. systemd has no unit test for it: these
    /// vectors were computed with SipHash-2-4 and cross-checked against the `siphash24()` and
    /// `urlsafe_base64char()` of libsystemd-shared 252 (Debian 12).
    #[test]
    fn shortening_matches_systemd_vectors() {
        let vectors = [
            ("ve-long-container-name", "ve-long-conJZbp"),
            ("ve-long-container", "ve-long-conUaku"),
            ("vb-long-container", "vb-long-conQ8PA"),
            ("ve-mycontainer12", "ve-mycontailIdD"),
            ("vb-mycontainer12", "vb-mycontai8S4u"),
            ("ve-abcdefghijklmnop", "ve-abcdefghqWWP"),
            ("ve-debian-bookworm", "ve-debian-bCau7"),
            ("ve-fedora-rawhide-test", "ve-fedora-rkfEJ"),
            ("mv-enp0s31f6-extra", "mv-enp0s31fx2_y"),
            ("vt-my-long-vm-name", "vt-my-long-PqWt"),
        ];
        for (full, short) in vectors {
            assert_eq!(shorten_ifname(full), short, "{full}");
            assert_eq!(shorten_ifname(full).len(), 15);
        }
    }

    #[test]
    fn short_names_are_kept() {
        assert_eq!(shorten_ifname("ve-mycontainer1"), "ve-mycontainer1");
        assert_eq!(
            LinkName::new("ve-", "web"),
            LinkName {
                ifname: "ve-web".into(),
                altname: None
            }
        );
        assert_eq!(
            LinkName::new("ve-", "long-container-name"),
            LinkName {
                ifname: "ve-long-conJZbp".into(),
                altname: Some("ve-long-container-name".into())
            }
        );
    }

    #[test]
    fn mac_matches_systemd_example() {
        // Machine-id 0123456789abcdef0123456789abcdef, machine "foo": computed with
        // net_generate_mac()'s algorithm (HOST_HASH_KEY, CONTAINER_HASH_KEY of nspawn-network.c)
        // and the SipHash-2-4 checked against libsystemd-shared; illustrative, not an upstream
        // test.
        let id = MachineId::parse("0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            generate_mac(id, "foo", MacKey::Host, 0).to_string(),
            "8a:68:08:2a:1a:13"
        );
        assert_eq!(
            generate_mac(id, "foo", MacKey::Container, 0).to_string(),
            "b2:6d:7c:0e:dc:94"
        );
    }

    #[test]
    fn macs_are_local_unicast_and_index_matters() {
        let id = MachineId([7; 16]);
        for name in ["a", "b", "web-1"] {
            let m = generate_mac(id, name, MacKey::Macvlan, 0);
            assert_eq!(m.0[0] & 0x03, 0x02, "{m}");
            assert_ne!(m, generate_mac(id, name, MacKey::Macvlan, 1));
        }
    }

    #[test]
    fn machine_id_parse() {
        assert!(MachineId::parse("xyz").is_none());
        assert!(MachineId::parse(&"g".repeat(32)).is_none());
        let id = MachineId::parse("3d1219c7c4c5404aaa1f6d2a48adfda4").unwrap();
        assert_eq!(id.to_string(), "3d1219c7c4c5404aaa1f6d2a48adfda4");
    }
}
