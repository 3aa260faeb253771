//! A minimal blocking rtnetlink client for work done *inside* a container's namespace: the
//! launcher's child brings links up, adds the address and default route before exec; rnetd,
//! from a thread that entered the namespace, moves interfaces back out. Blocking on purpose:
//! it runs where no async runtime may (a forked child, a thread that called `setns`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

mod container;
pub use container::{ContainerLink, configure_in};

/// A route netlink socket in the calling thread's network namespace.
pub struct BlockingRtnl {
    sock: Socket,
    seq: u32,
}

impl BlockingRtnl {
    /// Opens a socket in the current network namespace.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { sock, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.query(msg, NLM_F_ACK | flags).map(drop)
    }

    /// Sends one request and collects its answers: the one message of a get, every message of
    /// a dump (`NLM_F_DUMP` in `flags`) up to its end, or none up to the acknowledgement
    /// (`NLM_F_ACK`).
    fn query(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        // A get ends with its one answer; a dump and an acknowledged request with their end.
        let single = flags & (NLM_F_DUMP | NLM_F_ACK) == 0;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    match reply.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out),
                                Some(_) => Err(e.to_io()),
                            };
                        }
                        NetlinkPayload::InnerMessage(m) => {
                            out.push(m);
                            if single {
                                return Ok(out);
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Link `index`'s MAC address and its usable IPv6 link-local address (not tentative, not
    /// failed), if it has them: a get of the one link and a dump of that link's IPv6 addresses
    /// only (strict checking makes the kernel filter by index), so the cost does not grow with
    /// the host's links and namespaces as a full dump (`getifaddrs`) does.
    pub fn link_local6(&mut self, index: u32) -> io::Result<(Option<[u8; 6]>, Option<Ipv6Addr>)> {
        self.sock.set_netlink_get_strict_chk(true)?;
        let mut link = LinkMessage::default();
        link.header.index = index;
        let mut mac = None;
        for m in self.query(RouteNetlinkMessage::GetLink(link), 0)? {
            if let RouteNetlinkMessage::NewLink(l) = m {
                mac = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
                    _ => None,
                });
            }
        }
        let mut filter = AddressMessage::default();
        filter.header.family = AddressFamily::Inet6;
        filter.header.index = index;
        let answers = self.query(RouteNetlinkMessage::GetAddress(filter), NLM_F_DUMP)?;
        Ok((mac, usable_link_local(index, &answers)))
    }

    /// `ip link set dev INDEX up`.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// `ip link set dev INDEX netns FD name NAME`: moves a link to another namespace, renamed.
    pub fn move_link(&mut self, index: u32, netns: RawFd, name: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::NetNsFd(netns));
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// `ip link set dev INDEX name NAME` (the link must be down).
    pub fn set_name(&mut self, index: u32, name: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// `ip link del dev INDEX`.
    pub fn del_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), 0)
    }

    /// `ip addr add ADDR/PREFIX dev INDEX`.
    pub fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `ip route add default via GATEWAY dev INDEX`.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let msg = default_route_message(index, AddressFamily::Inet, RouteAddress::Inet(gateway));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `ip -6 addr replace ADDR/PREFIX dev INDEX nodad`: usable at once, no duplicate address
    /// detection (the address is ours by construction: RFC 4862 section 5.4 allows skipping
    /// it). Replace, not add: a router advertisement may have let the kernel's SLAAC form the
    /// same address a moment before; it becomes permanent.
    pub fn replace_address6(&mut self, index: u32, addr: Ipv6Addr, prefix: u8) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewAddress(address6_message(index, addr, prefix)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// `ip -6 route replace default via GATEWAY dev INDEX` (replacing a default route a router
    /// advertisement may have added a moment before).
    pub fn replace_default_route6(&mut self, index: u32, gateway: Ipv6Addr) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(default_route_message(
                index,
                AddressFamily::Inet6,
                RouteAddress::Inet6(gateway),
            )),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }
}

/// The first IPv6 link-local address of link `index` among `answers` that is neither tentative
/// nor failed (the kernel refuses a tentative source, and a router advertisement must come from
/// a link-local one).
fn usable_link_local(index: u32, answers: &[RouteNetlinkMessage]) -> Option<Ipv6Addr> {
    answers.iter().find_map(|m| {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            return None;
        };
        if a.header.index != index || a.header.family != AddressFamily::Inet6 {
            return None;
        }
        let flags = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        });
        let unusable = AddressFlags::Tentative | AddressFlags::Dadfailed;
        if flags.is_some_and(|f| f.intersects(unusable))
            || a.header
                .flags
                .intersects(AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed)
        {
            return None;
        }
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(IpAddr::V6(v6)) if v6.is_unicast_link_local() => Some(*v6),
            _ => None,
        })
    })
}

/// The message of [`BlockingRtnl::replace_address6`].
fn address6_message(index: u32, addr: Ipv6Addr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet6;
    msg.header.prefix_len = prefix;
    msg.header.index = index;
    msg.header.flags = AddressHeaderFlags::Nodad;
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V6(addr)));
    msg.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    msg
}

/// A default route of `family` via `gateway` out of link `index` (main table, `proto boot`).
fn default_route_message(index: u32, family: AddressFamily, gateway: RouteAddress) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    msg.header.table = libc::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes.push(RouteAttribute::Gateway(gateway));
    msg.attributes.push(RouteAttribute::Oif(index));
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_address_is_added_without_dad() {
        let msg = address6_message(7, "fd00:1::1".parse().unwrap(), 64);
        assert_eq!(msg.header.family, AddressFamily::Inet6);
        assert_eq!(msg.header.prefix_len, 64);
        assert_eq!(msg.header.index, 7);
        assert!(msg.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(
            msg.attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );
        assert!(
            msg.attributes
                .contains(&AddressAttribute::Address(IpAddr::V6(
                    "fd00:1::1".parse().unwrap()
                )))
        );
    }

    fn address(index: u32, addr: &str, flags: AddressFlags) -> RouteNetlinkMessage {
        let mut a = AddressMessage::default();
        a.header.family = AddressFamily::Inet6;
        a.header.index = index;
        a.attributes
            .push(AddressAttribute::Address(addr.parse().unwrap()));
        a.attributes.push(AddressAttribute::Flags(flags));
        RouteNetlinkMessage::NewAddress(a)
    }

    #[test]
    fn the_link_local_is_the_usable_one_of_the_link() {
        let answers = [
            address(3, "fd00:1::1", AddressFlags::Nodad),
            address(4, "fe80::4", AddressFlags::Permanent),
            address(3, "fe80::bad", AddressFlags::Tentative),
            address(3, "fe80::dad", AddressFlags::Dadfailed),
            address(3, "fe80::3", AddressFlags::Permanent),
        ];
        assert_eq!(
            usable_link_local(3, &answers),
            Some("fe80::3".parse().unwrap())
        );
        assert_eq!(usable_link_local(3, &answers[..4]), None);
        assert_eq!(usable_link_local(5, &answers), None);
    }

    #[test]
    fn ipv6_default_route_names_gateway_and_link() {
        let msg = default_route_message(
            3,
            AddressFamily::Inet6,
            RouteAddress::Inet6("fd00:1::1".parse().unwrap()),
        );
        assert_eq!(msg.header.address_family, AddressFamily::Inet6);
        assert_eq!(msg.header.destination_prefix_length, 0);
        assert!(msg.attributes.contains(&RouteAttribute::Oif(3)));
        assert!(
            msg.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet6(
                    "fd00:1::1".parse().unwrap()
                )))
        );
    }
}
