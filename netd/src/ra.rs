//! Router advertisements (RFC 4861 section 6) on every link rnetd serves (`ve-` links, `vz-`
//! zone bridges), so a container's own SLAAC (the kernel's `accept_ra`, systemd-networkd,
//! dhcpcd) configures its address, default route, MTU and DNS server.
//!
//! Each advertisement carries: the link's `/64` as a prefix information option (on-link and
//! autonomous), the RDNSS option (RFC 8106) naming the gateway (`PREFIX::1`, where rnetd's DNS
//! forwarder answers), the link's MTU, and the source link-layer address. They are sent
//! periodically (every `MaxRtrAdvInterval`, jittered down to 3/4 of it as RFC 4861 section
//! 6.2.4 asks; the first three at most 16 s apart) and in answer to router solicitations
//! (rate-limited to one multicast advertisement per 3 s, `MIN_DELAY_BETWEEN_RAS`).
//!
//! The encoder and the solicitation parser are pure ([`encode_ra`], [`parse_rs`]) and the
//! parser never panics on any input (fuzzed: `fuzz/fuzz_targets/rs.rs`). The sockets: one raw
//! ICMPv6 socket per link, bound to it (`SO_BINDTODEVICE`), receiving only type 133
//! (`ICMP6_FILTER`); and one packet socket for all links that sends each advertisement as a
//! whole IPv6 packet ([`ra_packet`]: from the link's link-local address to `ff02::1`, hop limit
//! 255, our checksum) to the link's all-nodes MAC. A send through the IPv6 stack looks up a
//! route for `ff02::1` on the link, and every link of ours has its own `ff00::/8` route in one
//! node of the kernel's table, so that lookup walks them all: with 1000 links it was 18 % of
//! rnetd's CPU while the links' first advertisements went out (`docs/benchmarks.md`, item 24).

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use ipnetwork::Ipv6Network;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, trace, warn};

/// ICMPv6 type of a router solicitation.
pub const ROUTER_SOLICIT: u8 = 133;
/// ICMPv6 type of a router advertisement.
pub const ROUTER_ADVERT: u8 = 134;

/// Default `MaxRtrAdvInterval` (RFC 4861 section 6.2.1: 600 s).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);

/// `MAX_INITIAL_RTR_ADVERT_INTERVAL` (RFC 4861 section 10).
const MAX_INITIAL_INTERVAL: Duration = Duration::from_secs(16);
/// `MAX_INITIAL_RTR_ADVERTISEMENTS`.
const INITIAL_ADVERTS: u32 = 3;
/// `MIN_DELAY_BETWEEN_RAS`.
const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);

/// Prefix lifetimes: RFC 4861 section 6.2.1's defaults (30 days valid, 7 days preferred).
const VALID_LIFETIME: u32 = 2_592_000;
const PREFERRED_LIFETIME: u32 = 604_800;

/// What one link's advertisements say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// The on-link, autonomous prefix (a `/64`).
    pub prefix: Ipv6Network,
    /// Router lifetime in seconds (3 × `MaxRtrAdvInterval`, at most 9000).
    pub router_lifetime: u16,
    /// The link's MTU, if known.
    pub mtu: Option<u32>,
    /// Recursive DNS servers (RFC 8106).
    pub dns: Vec<Ipv6Addr>,
    /// Their lifetime in seconds.
    pub dns_lifetime: u32,
    /// Our link-layer address (source link-layer address option).
    pub mac: Option<[u8; 6]>,
}

impl Advert {
    /// The advertisement of a link with `prefix` and DNS servers `dns`, sent every `interval`.
    pub fn new(prefix: Ipv6Network, dns: Vec<Ipv6Addr>, interval: Duration) -> Self {
        let life = interval.as_secs().saturating_mul(3).clamp(4, 9000);
        Self {
            prefix,
            router_lifetime: u16::try_from(life).unwrap_or(9000),
            mtu: None,
            dns,
            dns_lifetime: u32::try_from(life).unwrap_or(9000),
            mac: None,
        }
    }
}

/// `ff02::1`, all nodes on the link.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Its MAC (RFC 2464 section 7: `33:33` and the address's last 32 bits).
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// `ETH_P_IPV6`.
const ETH_P_IPV6: u16 = 0x86dd;
/// ICMPv6's IPv6 next header number.
const NEXT_HEADER_ICMPV6: u8 = 58;

/// The IPv6 packet carrying ICMPv6 message `icmp` (its checksum field zero) from `source` to
/// all nodes, hop limit 255 (RFC 4861 section 6.1.2 drops an advertisement with any other),
/// with the ICMPv6 checksum over the pseudo-header filled in (RFC 8200 section 8.1).
pub fn ra_packet(source: Ipv6Addr, icmp: &[u8]) -> Vec<u8> {
    let len = u16::try_from(icmp.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(40 + icmp.len());
    out.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, flow label 0
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[NEXT_HEADER_ICMPV6, 255]);
    out.extend_from_slice(&source.octets());
    out.extend_from_slice(&ALL_NODES.octets());
    let start = out.len();
    out.extend_from_slice(icmp);
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).map_or(0, |b| u32::from(*b));
        }
    };
    add(&source.octets());
    add(&ALL_NODES.octets());
    add(&u32::from(len).to_be_bytes());
    add(&[0, 0, 0, NEXT_HEADER_ICMPV6]);
    add(&out[start..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !u16::try_from(sum).unwrap_or(0xffff);
    if let Some(field) = out.get_mut(start + 2..start + 4) {
        field.copy_from_slice(&checksum.to_be_bytes());
    }
    out
}

/// Encodes a router advertisement (the ICMPv6 message, checksum 0: [`ra_packet`] fills it).
pub fn encode_ra(ra: &Advert) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(&[ROUTER_ADVERT, 0, 0, 0]);
    out.push(64); // Cur Hop Limit (the kernel's default)
    out.push(0); // M and O clear: no DHCPv6
    out.extend_from_slice(&ra.router_lifetime.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes()); // Reachable Time: unspecified
    out.extend_from_slice(&0u32.to_be_bytes()); // Retrans Timer: unspecified
    if let Some(mac) = ra.mac {
        out.extend_from_slice(&[1, 1]);
        out.extend_from_slice(&mac);
    }
    if let Some(mtu) = ra.mtu {
        out.extend_from_slice(&[5, 1, 0, 0]);
        out.extend_from_slice(&mtu.to_be_bytes());
    }
    // Prefix information: 4 units of 8 octets.
    out.extend_from_slice(&[3, 4, ra.prefix.prefix(), 0xc0]); // L (on-link), A (autonomous)
    out.extend_from_slice(&VALID_LIFETIME.to_be_bytes());
    out.extend_from_slice(&PREFERRED_LIFETIME.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&ra.prefix.network().octets());
    if !ra.dns.is_empty() {
        // 1 unit of header and lifetime, 2 per address; at most 127 addresses fit the length.
        let dns = &ra.dns[..ra.dns.len().min(127)];
        let units = 1 + 2 * dns.len();
        out.extend_from_slice(&[25, u8::try_from(units).unwrap_or(u8::MAX), 0, 0]);
        out.extend_from_slice(&ra.dns_lifetime.to_be_bytes());
        for a in dns {
            out.extend_from_slice(&a.octets());
        }
    }
    out
}

/// A valid router solicitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solicit {
    /// Its source link-layer address option, if any.
    pub source_mac: Option<Vec<u8>>,
}

/// Why a message is not a valid router solicitation (RFC 4861 section 6.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RsError {
    /// Shorter than 8 octets.
    #[error("shorter than a router solicitation")]
    Short,
    /// Another ICMPv6 type or a code other than 0.
    #[error("not a router solicitation")]
    NotSolicit,
    /// Hop limit other than 255: it was routed, not sent on this link.
    #[error("hop limit is not 255")]
    HopLimit,
    /// An option of length 0 or running past the end.
    #[error("malformed option")]
    BadOption,
    /// A source link-layer address option from the unspecified address.
    #[error("link-layer address from the unspecified address")]
    UnspecifiedWithAddress,
}

/// Checks a received ICMPv6 message as a router solicitation from `source` with IPv6 hop limit
/// `hop_limit` (as the kernel reported it; `None` when it did not).
pub fn parse_rs(source: Ipv6Addr, hop_limit: Option<i32>, msg: &[u8]) -> Result<Solicit, RsError> {
    if msg.len() < 8 {
        return Err(RsError::Short);
    }
    if msg[0] != ROUTER_SOLICIT || msg[1] != 0 {
        return Err(RsError::NotSolicit);
    }
    if hop_limit != Some(255) {
        return Err(RsError::HopLimit);
    }
    let mut source_mac = None;
    let mut rest = &msg[8..];
    while !rest.is_empty() {
        let [kind, len, ..] = *rest else {
            return Err(RsError::BadOption);
        };
        let bytes = usize::from(len) * 8;
        if bytes == 0 || bytes > rest.len() {
            return Err(RsError::BadOption);
        }
        if kind == 1 {
            source_mac = Some(rest[2..bytes].to_vec());
        }
        rest = &rest[bytes..];
    }
    if source.is_unspecified() && source_mac.is_some() {
        return Err(RsError::UnspecifiedWithAddress);
    }
    Ok(Solicit { source_mac })
}

/// When the next periodic advertisement is due: the first [`INITIAL_ADVERTS`] at most
/// [`MAX_INITIAL_INTERVAL`] apart, then every `interval`, jittered in `[3/4, 1]` of it with
/// `jitter` in `[0, 1)`.
pub fn next_delay(sent: u32, interval: Duration, jitter: f64) -> Duration {
    let base = if sent < INITIAL_ADVERTS {
        interval.min(MAX_INITIAL_INTERVAL)
    } else {
        interval
    };
    base.mul_f64(0.75 + 0.25 * jitter.clamp(0.0, 1.0))
}

/// One served link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaLink {
    /// The link.
    pub ifname: String,
    /// Its ifindex.
    pub index: u32,
    /// Its `/64`.
    pub prefix: Ipv6Network,
    /// DNS servers to announce.
    pub dns: Vec<Ipv6Addr>,
}

/// The advertisers of all served links.
pub struct RaService {
    interval: Duration,
    tasks: StdMutex<HashMap<String, AbortHandle>>,
    /// The packet socket advertisements go out through, made with the first link.
    sender: StdMutex<Option<Arc<Socket>>>,
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RaService {
    /// Advertisers sending every `interval` (`MaxRtrAdvInterval`).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            tasks: StdMutex::new(HashMap::new()),
            sender: StdMutex::new(None),
        }
    }

    /// The packet socket of all advertisements: one that receives nothing (protocol 0), so
    /// the kernel never queues a copy of the host's traffic on it.
    fn sender(&self) -> io::Result<Arc<Socket>> {
        let mut slot = lock(&self.sender);
        if let Some(s) = slot.as_ref() {
            return Ok(Arc::clone(s));
        }
        let s = Arc::new(Socket::new(Domain::PACKET, Type::DGRAM, None)?);
        *slot = Some(Arc::clone(&s));
        Ok(s)
    }

    /// Starts advertising on a link (replacing an advertiser of the same name).
    pub fn start(&self, link: RaLink) -> io::Result<()> {
        let sender = self.sender()?;
        let socket = open(&link)?;
        let ifname = link.ifname.clone();
        let task = tokio::spawn(advertise(link, socket, sender, self.interval)).abort_handle();
        if let Some(old) = lock(&self.tasks).insert(ifname.clone(), task) {
            old.abort();
        }
        debug!(%ifname, "router advertisements started");
        Ok(())
    }

    /// Stops advertising on a link.
    pub fn stop(&self, ifname: &str) {
        if let Some(t) = lock(&self.tasks).remove(ifname) {
            t.abort();
        }
    }
}

impl Drop for RaService {
    fn drop(&mut self) {
        lock(&self.tasks).values().for_each(AbortHandle::abort);
    }
}

const IPPROTO_ICMPV6: libc::c_int = 58;
const ICMP6_FILTER: libc::c_int = 1;

/// The raw ICMPv6 socket of a link: bound to it, only router solicitations in, a member of
/// all-routers (`ff02::2`). Advertisements go out through the packet socket.
fn open(link: &RaLink) -> io::Result<AsyncFd<Socket>> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.bind_device(Some(link.ifname.as_bytes()))?;
    // Every type blocked but 133 (a set bit blocks, as in ICMP6_FILTER_SETBLOCKALL).
    let mut filter = [u32::MAX; 8];
    filter[usize::from(ROUTER_SOLICIT >> 5)] &= !(1u32 << (ROUTER_SOLICIT & 31));
    // SAFETY: `filter` is a live `struct icmp6_filter` (8 × u32) of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel joins ff02::2 on forwarding links itself; joining here also works without.
    if let Err(e) = s.join_multicast_v6(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), link.index) {
        debug!(ifname = %link.ifname, error = %e, "joining ff02::2 failed");
    }
    setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).map_err(io::Error::from)?;
    s.set_nonblocking(true)?;
    // SAFETY: the socket is moved into the AsyncFd, which owns it until dropped, so its fd
    // stays open and the same for the AsyncFd's whole life.
    unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1)
}

/// The link's usable link-local address and MAC, and its IPv6 MTU, as they are now: asked of
/// the one link (not `getifaddrs`, a dump of every link and address whose cost grows with the
/// host's links times its namespaces: with 3000 links it kept rnetd at 70 % of a CPU and the
/// kernel's RTNL lock busy while idle).
fn link_facts(link: &RaLink) -> (Option<Ipv6Addr>, Option<[u8; 6]>, Option<u32>) {
    let (mac, ll) = netlink_sync::BlockingRtnl::open()
        .and_then(|mut rtnl| rtnl.link_local6(link.index))
        .unwrap_or_else(|e| {
            debug!(ifname = %link.ifname, error = %e, "asking for the link's addresses failed");
            (None, None)
        });
    let mtu = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{}/mtu", link.ifname))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    (ll, mac, mtu)
}

/// Sends one advertisement to all nodes (`ff02::1`) from the link's link-local address, as a
/// whole IPv6 packet through the packet socket `sender` (no route lookup).
fn send(sender: &Socket, link: &RaLink, interval: Duration) -> io::Result<()> {
    let (ll, mac, mtu) = link_facts(link);
    let Some(source) = ll else {
        return Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "no link-local address yet",
        ));
    };
    let mut ra = Advert::new(link.prefix, link.dns.clone(), interval);
    ra.mac = mac;
    ra.mtu = mtu;
    let packet = ra_packet(source, &encode_ra(&ra));
    // SAFETY: an all-zero `sockaddr_ll` is valid; the fields set below are plain integers.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as libc::c_ushort;
    to.sll_protocol = ETH_P_IPV6.to_be();
    to.sll_ifindex = libc::c_int::try_from(link.index).unwrap_or(0);
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&ALL_NODES_MAC);
    // SAFETY: `packet` and `to` are live for the call, and the lengths passed are theirs.
    let sent = unsafe {
        libc::sendto(
            sender.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            libc::MSG_DONTWAIT,
            std::ptr::addr_of!(to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message: `Some(true)` for a valid solicitation, `Some(false)` for anything
/// else, `None` when nothing is waiting.
fn receive(socket: &Socket, ifname: &str) -> io::Result<bool> {
    let mut buf = [0u8; 1500];
    let mut cmsg = nix::cmsg_space!(libc::c_int);
    let (n, hop, from) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<SockaddrIn6>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let hop = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|m| match m {
                ControlMessageOwned::Ipv6HopLimit(h) => Some(h),
                _ => None,
            })
        });
        (msg.bytes, hop, msg.address.map(|a| a.ip()))
    };
    let source = from.unwrap_or(Ipv6Addr::UNSPECIFIED);
    match parse_rs(source, hop, &buf[..n]) {
        Ok(_) => {
            trace!(%ifname, %source, "router solicitation");
            Ok(true)
        }
        Err(e) => {
            debug!(%ifname, %source, reason = %e, "ignored an invalid router solicitation");
            Ok(false)
        }
    }
}

fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = crate::api::fsutil::random_bytes(&mut b);
    f64::from(u16::from_le_bytes(b)) / 65536.0
}

/// The advertiser of one link: periodic advertisements and answers to solicitations.
async fn advertise(link: RaLink, socket: AsyncFd<Socket>, sender: Arc<Socket>, interval: Duration) {
    let min_gap = MIN_DELAY_BETWEEN_RAS.min(interval);
    let mut sent = 0u32;
    let mut last: Option<Instant> = None;
    let mut next = Instant::now();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                match send(&sender, &link, interval) {
                    Ok(()) => {
                        sent = sent.saturating_add(1);
                        last = Some(Instant::now());
                        failures = 0;
                        next = Instant::now() + next_delay(sent, interval, jitter());
                    }
                    Err(e) => {
                        // No link-local address yet (a bridge without ports has no carrier),
                        // or the link is going: try again soon.
                        failures = failures.saturating_add(1);
                        if failures.is_power_of_two() {
                            debug!(ifname = %link.ifname, error = %e, failures, "router advertisement not sent");
                        }
                        next = Instant::now() + Duration::from_millis(500).min(interval);
                    }
                }
            }
            ready = socket.readable() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        warn!(ifname = %link.ifname, error = %e, "router solicitation socket failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                match guard.try_io(|s| receive(s.get_ref(), &link.ifname)) {
                    Ok(Ok(true)) => {
                        // Answer at once, or as soon as the rate limit allows.
                        let earliest = last.map_or_else(Instant::now, |l| l + min_gap);
                        next = next.min(earliest.max(Instant::now()));
                    }
                    Ok(Ok(false)) | Err(_) => {}
                    Ok(Err(e)) => {
                        debug!(ifname = %link.ifname, error = %e, "receiving a router solicitation failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert() -> Advert {
        Advert {
            prefix: "fd12:3456:789a:1::/64".parse().unwrap(),
            router_lifetime: 1800,
            mtu: Some(1500),
            dns: vec!["fd12:3456:789a:1::1".parse().unwrap()],
            dns_lifetime: 1800,
            mac: Some([0x02, 0, 0, 0, 0, 0x01]),
        }
    }

    #[test]
    fn advertisement_is_encoded_as_rfc_4861_says() {
        let b = encode_ra(&advert());
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // type, code, checksum, hop limit, flags, router lifetime 1800
            &[134, 0, 0, 0, 64, 0, 0x07, 0x08][..],
            // reachable time, retrans timer
            &[0, 0, 0, 0, 0, 0, 0, 0],
            // source link-layer address
            &[1, 1, 0x02, 0, 0, 0, 0, 0x01],
            // MTU 1500
            &[5, 1, 0, 0, 0, 0, 0x05, 0xdc],
            // prefix information: /64, L and A, valid 2592000, preferred 604800
            &[3, 4, 64, 0xc0, 0x00, 0x27, 0x8d, 0x00, 0x00, 0x09, 0x3a, 0x80, 0, 0, 0, 0],
            &[0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            // RDNSS: length 3, lifetime 1800, one server
            &[25, 3, 0, 0, 0, 0, 0x07, 0x08],
            &[0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
        ]
        .concat();
        assert_eq!(b, expected);
        // Every option is a whole number of 8 octets, as its length says.
        let mut rest = &b[16..];
        while !rest.is_empty() {
            let len = usize::from(rest[1]) * 8;
            assert!(len > 0 && len <= rest.len());
            rest = &rest[len..];
        }
    }

    /// The one's complement sum over the pseudo-header and the message, checksum included.
    fn verify(packet: &[u8]) -> u16 {
        let (header, icmp) = packet.split_at(40);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&header[8..40]);
        pseudo.extend_from_slice(&u32::try_from(icmp.len()).unwrap().to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(icmp);
        let mut sum: u32 = pseudo
            .chunks(2)
            .map(|c| (u32::from(c[0]) << 8) | u32::from(*c.get(1).unwrap_or(&0)))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        u16::try_from(sum).unwrap()
    }

    #[test]
    fn the_packet_is_ipv6_to_all_nodes_with_hop_limit_255_and_a_valid_checksum() {
        let source: Ipv6Addr = "fe80::1c2d:3eff:fe4f:5a6b".parse().unwrap();
        let icmp = encode_ra(&advert());
        let p = ra_packet(source, &icmp);
        assert_eq!(p.len(), 40 + icmp.len());
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), icmp.len());
        assert_eq!((p[6], p[7]), (58, 255));
        assert_eq!(&p[8..24], &source.octets());
        assert_eq!(&p[24..40], &ALL_NODES.octets());
        assert_eq!(verify(&p), 0xffff, "checksum");
        // Only the checksum differs from the message given.
        assert_eq!(&p[40..42], &icmp[..2]);
        assert_eq!(&p[44..], &icmp[4..]);
        assert_ne!(&p[42..44], &[0, 0]);
        // An odd length is padded with a zero octet for the sum.
        let odd = ra_packet(source, &[ROUTER_ADVERT, 0, 0, 0, 7]);
        assert_eq!(verify(&odd), 0xffff);
    }

    #[test]
    fn minimal_advertisement_has_the_prefix_only() {
        let ra = Advert {
            mtu: None,
            dns: vec![],
            mac: None,
            ..advert()
        };
        assert_eq!(encode_ra(&ra).len(), 16 + 32);
    }

    #[test]
    fn lifetimes_follow_the_interval() {
        let a = Advert::new("fd00:1::/64".parse().unwrap(), vec![], DEFAULT_INTERVAL);
        assert_eq!(a.router_lifetime, 1800);
        let a = Advert::new(
            "fd00:1::/64".parse().unwrap(),
            vec![],
            Duration::from_secs(1),
        );
        assert_eq!(a.router_lifetime, 4);
        let a = Advert::new(
            "fd00:1::/64".parse().unwrap(),
            vec![],
            Duration::from_secs(9999),
        );
        assert_eq!(a.router_lifetime, 9000);
    }

    #[test]
    fn solicitations_are_validated() {
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let rs = [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 9];
        assert_eq!(
            parse_rs(ll, Some(255), &rs),
            Ok(Solicit {
                source_mac: Some(vec![2, 0, 0, 0, 0, 9])
            })
        );
        assert_eq!(
            parse_rs(ll, Some(255), &rs[..8]),
            Ok(Solicit { source_mac: None })
        );
        assert_eq!(parse_rs(ll, Some(64), &rs), Err(RsError::HopLimit));
        assert_eq!(parse_rs(ll, None, &rs), Err(RsError::HopLimit));
        assert_eq!(parse_rs(ll, Some(255), &rs[..7]), Err(RsError::Short));
        assert_eq!(
            parse_rs(ll, Some(255), &[134, 0, 0, 0, 0, 0, 0, 0]),
            Err(RsError::NotSolicit)
        );
        assert_eq!(
            parse_rs(ll, Some(255), &[133, 1, 0, 0, 0, 0, 0, 0]),
            Err(RsError::NotSolicit)
        );
        // Zero-length option, option past the end, a lone option byte.
        let mut bad = rs;
        bad[9] = 0;
        assert_eq!(parse_rs(ll, Some(255), &bad), Err(RsError::BadOption));
        bad[9] = 2;
        assert_eq!(parse_rs(ll, Some(255), &bad), Err(RsError::BadOption));
        assert_eq!(parse_rs(ll, Some(255), &rs[..9]), Err(RsError::BadOption));
        assert_eq!(
            parse_rs(Ipv6Addr::UNSPECIFIED, Some(255), &rs),
            Err(RsError::UnspecifiedWithAddress)
        );
        assert!(parse_rs(Ipv6Addr::UNSPECIFIED, Some(255), &rs[..8]).is_ok());
    }

    #[test]
    fn parser_never_panics() {
        // Every prefix of a few messages and every single-byte change of one.
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let base = [
            133u8, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 9, 7, 1, 0, 0, 0, 0, 0, 0,
        ];
        for n in 0..=base.len() {
            let _ = parse_rs(ll, Some(255), &base[..n]);
        }
        for i in 0..base.len() {
            for v in [0u8, 1, 2, 3, 0x7f, 0xff] {
                let mut m = base;
                m[i] = v;
                let _ = parse_rs(ll, Some(255), &m);
            }
        }
    }

    #[test]
    fn periodic_delays() {
        let i = Duration::from_secs(600);
        assert_eq!(next_delay(0, i, 1.0), Duration::from_secs(16));
        assert_eq!(next_delay(2, i, 0.0), Duration::from_secs(12));
        assert_eq!(next_delay(3, i, 1.0), i);
        assert_eq!(next_delay(3, i, 0.0), Duration::from_secs(450));
        let short = Duration::from_secs(2);
        assert_eq!(next_delay(0, short, 1.0), short);
    }
}
