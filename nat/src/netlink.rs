//! Element changes straight to the kernel: the [`Step`]s of [`crate::render_changes`], sent as
//! one nf_tables netlink batch (`NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM` between
//! `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END`), as `nft` itself sends them.
//!
//! Why not through `nft`: before every command, `nft` reads the kernel's tables, chains and sets
//! back, and the elements of every interval set (ours: `masq4`, `masq6`, one element per
//! container), so a container's change cost grew with the number of containers (4.5 to 16 ms at
//! 400). A batch here is one `sendmsg` and its acknowledgements, whatever the number of
//! containers. The table, its rules and every listing stay with `nft` ([`crate::NftCli`]): only
//! the per-container element changes, whose encoding is small and fixed, come here.
//!
//! The kernel applies the batch atomically in the `sendmsg` call: all of it, or on the first
//! refused message nothing. Values are laid out as nft lays them out (its `--debug=netlink`
//! shows them): an interface name is 16 bytes padded with zeros, addresses, protocol numbers and
//! ports are in network byte order, and each field of a concatenation is padded to 4 bytes. A
//! subnet in an interval set is two elements, its first address and, flagged as an interval end,
//! the address after its last; an `add` also sends nft's interval end at address zero, so the
//! kernel's set is the same as `nft` would make it. Tests compare the result with `nft`'s own
//! on the real kernel (`tests/nft_netns.rs`).

use std::io;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::apply::summarize;
use crate::elements::{Elem, Part, Step, family_of, render_changes, steps};
use crate::error::{Error, Result};
use crate::model::{Change, Proto};
use crate::names::TABLE;
use nftables::types::NfFamily;

/// What errors name as the program that refused.
pub const PROGRAM: &str = "nf_tables netlink";

// linux/netlink.h
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 1 << 15;
// linux/netfilter/nfnetlink.h
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
// linux/netfilter/nf_tables.h
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
// linux/netfilter.h
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;
/// How long to wait for the kernel's answers before the batch counts as failed.
const REPLY_TIMEOUT_SECS: i64 = 5;
/// `IFNAMSIZ`: an `ifname` value is this long, padded with zeros.
const IFNAMSIZ: usize = 16;

/// One element as the kernel takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Raw {
    key: Vec<u8>,
    data: Option<Vec<u8>>,
    interval_end: bool,
}

/// The bytes of one value. `field` pads it to 4 bytes, as a field of a concatenation is.
fn part_bytes(part: &Part, field: bool, out: &mut Vec<u8>) {
    let start = out.len();
    match part {
        Part::Net(net) => out.extend(ip_bytes(net.network())),
        Part::Name(name) => {
            let bytes = name.as_str().as_bytes();
            out.extend(bytes);
            out.resize(start + IFNAMSIZ.max(bytes.len() + 1), 0);
        }
        Part::Mac(mac) => out.extend(mac.0),
        Part::Addr(a) => out.extend(ip_bytes(*a)),
        Part::Proto(p) => out.push(proto_number(*p)),
        Part::Port(p) => out.extend(p.to_be_bytes()),
    }
    if field {
        out.resize(start + (out.len() - start).next_multiple_of(4), 0);
    }
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The IANA protocol number (`/etc/protocols`).
fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    }
}

/// The address after the last of `net`, `None` past the top of the address space.
fn after_last(net: IpNetwork) -> Option<Vec<u8>> {
    match net {
        IpNetwork::V4(n) => u32::from(n.broadcast())
            .checked_add(1)
            .map(|a| a.to_be_bytes().to_vec()),
        IpNetwork::V6(n) => {
            let size = 1u128.checked_shl(128 - u32::from(n.prefix())).unwrap_or(0);
            u128::from(n.network())
                .checked_add(size.wrapping_sub(1))
                .and_then(|last| last.checked_add(1))
                .map(|a| a.to_be_bytes().to_vec())
        }
    }
}

/// The kernel's elements of one of ours: a subnet is an interval, start and end.
fn raw_elems(elem: &Elem, add: bool, out: &mut Vec<Raw>) {
    if let [Part::Net(net)] = elem.key.as_slice() {
        if add {
            // nft keeps an interval end at address zero in front of the first interval.
            let zero = vec![0; if net.is_ipv4() { 4 } else { 16 }];
            out.push(Raw {
                key: zero,
                data: None,
                interval_end: true,
            });
        }
        let mut start = Vec::new();
        part_bytes(&elem.key[0], false, &mut start);
        out.push(Raw {
            key: start,
            data: None,
            interval_end: false,
        });
        if let Some(end) = after_last(*net) {
            out.push(Raw {
                key: end,
                data: None,
                interval_end: true,
            });
        }
        return;
    }
    let field = elem.key.len() > 1;
    let mut key = Vec::new();
    for part in &elem.key {
        part_bytes(part, field, &mut key);
    }
    let data = elem.data.as_ref().map(|d| {
        let mut bytes = Vec::new();
        part_bytes(d, false, &mut bytes);
        bytes
    });
    out.push(Raw {
        key,
        data,
        interval_end: false,
    });
}

/// Appends netlink attributes to a message buffer.
struct Attrs<'a>(&'a mut Vec<u8>);

impl Attrs<'_> {
    fn put(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend((len as u16).to_ne_bytes());
        self.0.extend(kind.to_ne_bytes());
        self.0.extend(value);
        self.pad();
    }

    fn put_str(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes);
    }

    /// A nested attribute: `fill` writes its content.
    fn nest(&mut self, kind: u16, fill: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.0.len();
        self.0.extend([0; 4]);
        fill(&mut Attrs(self.0));
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn pad(&mut self) {
        let len = self.0.len().next_multiple_of(4);
        self.0.resize(len, 0);
    }
}

/// Appends one netlink message: header, `nfgenmsg` (family, version 0, `res_id`), attributes.
fn message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    fill: impl FnOnce(&mut Attrs<'_>),
) {
    let start = out.len();
    out.extend([0; 16]);
    out.extend([family, 0]);
    out.extend(res_id.to_be_bytes());
    fill(&mut Attrs(out));
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    out[start + 4..start + 6].copy_from_slice(&kind.to_ne_bytes());
    out[start + 6..start + 8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    out[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
}

fn nfproto(set: &str) -> u8 {
    match family_of(set) {
        NfFamily::Bridge => NFPROTO_BRIDGE,
        _ => NFPROTO_INET,
    }
}

/// One step as a `NEWSETELEM` or `DELSETELEM` message with sequence number `seq`.
fn step_message(out: &mut Vec<u8>, step: &Step, seq: u32) {
    let mut raws = Vec::new();
    for elem in &step.elems {
        raw_elems(elem, !step.delete, &mut raws);
    }
    let (kind, flags) = if step.delete {
        (NFT_MSG_DELSETELEM, NLM_F_ACK)
    } else {
        (NFT_MSG_NEWSETELEM, NLM_F_ACK | NLM_F_CREATE)
    };
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
    message(out, kind, flags, seq, nfproto(step.set), 0, |a| {
        a.put_str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
        a.put_str(NFTA_SET_ELEM_LIST_SET, step.set);
        a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |a| {
            for raw in &raws {
                a.nest(NFTA_LIST_ELEM, |a| {
                    a.nest(NFTA_SET_ELEM_KEY, |a| a.put(NFTA_DATA_VALUE, &raw.key));
                    if let Some(data) = &raw.data {
                        a.nest(NFTA_SET_ELEM_DATA, |a| a.put(NFTA_DATA_VALUE, data));
                    }
                    if raw.interval_end {
                        a.put(
                            NFTA_SET_ELEM_FLAGS,
                            &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
                        );
                    }
                });
            }
        });
    });
}

/// The batch of `steps`, sequence numbers from `seq`: the bytes and the sequence numbers of its
/// element messages (each acknowledged).
fn batch(steps: &[Step], seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::with_capacity(256 * (steps.len() + 2));
    let res_id = NFNL_SUBSYS_NFTABLES;
    message(&mut out, NFNL_MSG_BATCH_BEGIN, 0, seq, 0, res_id, |_| {});
    let mut acked = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let n = seq.wrapping_add(1 + i as u32);
        step_message(&mut out, step, n);
        acked.push(n);
    }
    let end = seq.wrapping_add(1 + steps.len() as u32);
    message(&mut out, NFNL_MSG_BATCH_END, 0, end, 0, res_id, |_| {});
    (out, acked)
}

/// What a batch of `changes` does, for errors (`applying add element masq4 x1, ...`), in the
/// words of the nft path ([`summarize`]); built only when there is an error to tell.
fn applying(changes: &[Change]) -> String {
    format!("applying {}", summarize(&render_changes(changes)))
}

/// The acknowledgements and errors of a batch: `(sequence number, errno)`, 0 for success.
fn replies(buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
        if kind == NLMSG_ERROR && len >= 20 {
            let code = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
            out.push((seq, -code));
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    out
}

/// The generation id in the `NFT_MSG_NEWGEN` answer to request `seq`, if `buf` holds it.
fn generation_in(buf: &[u8], seq: u32) -> Option<u32> {
    let mut rest = buf;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > rest.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        let answer = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN && answer == seq {
            // After the header and nfgenmsg: attributes (length, type, value, padded to 4).
            let mut attrs = rest.get(20..len)?;
            while attrs.len() >= 4 {
                let alen = u16::from_ne_bytes(attrs[0..2].try_into().expect("2 bytes")) as usize;
                let atype = u16::from_ne_bytes(attrs[2..4].try_into().expect("2 bytes"));
                if alen < 4 || alen > attrs.len() {
                    return None;
                }
                if atype & !NLA_F_NESTED == NFTA_GEN_ID && alen == 8 {
                    return Some(u32::from_be_bytes(attrs[4..8].try_into().expect("4 bytes")));
                }
                attrs = &attrs[alen.next_multiple_of(4).min(attrs.len())..];
            }
            return None;
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    None
}

/// A netlink socket to nf_tables, in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct NfNetlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NfNetlink {
    /// Opens the socket, in the calling thread's network namespace (for good: later calls from
    /// other threads still work there).
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Acknowledgements without a copy of the request.
        socket.set_cap_ack(true)?;
        // The kernel answers within sendmsg; a bound keeps a bug from hanging the caller.
        let timeout = nix::sys::time::TimeVal::new(REPLY_TIMEOUT_SECS, 0);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(io::Error::from)?;
        Ok(Self {
            socket,
            seq: 1,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Applies `changes` as one atomic batch: all of them, or none and an error.
    /// [`Error::Refused`] when the kernel refused an element (e.g. `File exists`: a host port
    /// mapped to another container; `No such file or directory`: our table is gone),
    /// [`Error::Run`] when the socket failed.
    pub fn apply(&mut self, changes: &[Change]) -> Result<()> {
        let steps = steps(changes);
        if steps.is_empty() {
            return Ok(());
        }
        let (bytes, acked) = batch(&steps, self.seq);
        self.seq = self.seq.wrapping_add(acked.len() as u32 + 2);
        let run_error = |source| Error::Run {
            program: PROGRAM.to_owned(),
            step: applying(changes),
            source,
        };
        self.socket.send(&bytes, 0).map_err(run_error)?;
        // The kernel handled the whole batch inside sendmsg; its answers are queued already, one
        // per acknowledged message (an error replaces the acknowledgement), so reading waits for
        // nothing but a slow scheduler.
        let mut answered = 0;
        let mut refused = Vec::new();
        while answered < acked.len() {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(run_error)?;
            for (seq, errno) in replies(&self.buf[..n]) {
                let Some(i) = acked.iter().position(|s| *s == seq) else {
                    continue; // an answer to an earlier batch that we gave up on
                };
                answered += 1;
                if errno != 0 {
                    refused.push(format!(
                        "{} in {} element {}",
                        io::Error::from_raw_os_error(errno),
                        if steps[i].delete { "delete" } else { "add" },
                        steps[i].set
                    ));
                }
            }
            if !refused.is_empty() {
                break;
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            self.drain();
            Err(Error::Refused {
                program: PROGRAM.to_owned(),
                step: applying(changes),
                stderr: refused.join("; "),
            })
        }
    }

    /// The ruleset's generation: a number the kernel changes with every change of any table
    /// (`NFT_MSG_GETGEN`, what `nft monitor` prints as "new generation"). Equal numbers mean
    /// nothing changed between the two reads.
    pub fn generation(&mut self) -> io::Result<u32> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut request = Vec::new();
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
        message(&mut request, kind, 0, seq, 0, 0, |_| {});
        self.socket.send(&request, 0)?;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            if let Some(id) = generation_in(&self.buf[..n], seq) {
                return Ok(id);
            }
        }
    }

    /// Reads what is left of a refused batch's answers, so the next batch starts clean.
    fn drain(&mut self) {
        let _ = self.socket.set_non_blocking(true);
        while self.socket.recv(&mut &mut self.buf[..], 0).is_ok() {}
        let _ = self.socket.set_non_blocking(false);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{GuardedPort, IfName, Mac, PortMapping, PortRange};

    fn raws(change: Change) -> Vec<(bool, &'static str, Vec<Raw>)> {
        steps(&[change])
            .iter()
            .map(|s| {
                let mut out = Vec::new();
                for e in &s.elems {
                    raw_elems(e, !s.delete, &mut out);
                }
                (s.delete, s.set, out)
            })
            .collect()
    }

    fn key(bytes: &[u8]) -> Raw {
        Raw {
            key: bytes.to_vec(),
            data: None,
            interval_end: false,
        }
    }

    fn end(bytes: &[u8]) -> Raw {
        Raw {
            interval_end: true,
            ..key(bytes)
        }
    }

    fn name(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.resize(16, 0);
        v
    }

    /// The layouts below are what `nft --debug=netlink add element ...` prints (nft 1.0.6).
    #[test]
    fn subnets_are_intervals_with_nfts_zero_end() {
        let net: IpNetwork = "10.9.0.5/24".parse().unwrap();
        assert_eq!(
            raws(Change::AddSubnet(net)),
            [(
                false,
                "masq4",
                vec![end(&[0; 4]), key(&[10, 9, 0, 0]), end(&[10, 9, 1, 0])]
            )]
        );
        let net: IpNetwork = "fd00:1::/48".parse().unwrap();
        let start: [u8; 16] = "fd00:1::".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let after: [u8; 16] = "fd00:1:1::".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let del = raws(Change::DelSubnet(net));
        assert_eq!(del[1], (true, "masq6", vec![key(&start), end(&after)]));
        // The top of the address space has no end.
        let top: IpNetwork = "255.255.255.240/28".parse().unwrap();
        assert_eq!(after_last(top), None);
        let top6: IpNetwork = "ffff::/16".parse().unwrap();
        assert_eq!(after_last(top6), None);
        let all6: IpNetwork = "::/0".parse().unwrap();
        assert_eq!(after_last(all6), None);
    }

    #[test]
    fn a_28_or_a_64_is_one_plain_key_its_network_address() {
        let net: IpNetwork = "10.9.0.21/28".parse().unwrap();
        assert_eq!(
            raws(Change::AddSubnet(net)),
            [(false, "masq4_28", vec![key(&[10, 9, 0, 16])])]
        );
        let net: IpNetwork = "fd00:1:0:7::5/64".parse().unwrap();
        let start: [u8; 16] = "fd00:1:0:7::"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let del = raws(Change::DelSubnet(net));
        assert_eq!(del[1], (true, "masq6_64", vec![key(&start)]));
    }

    #[test]
    fn names_and_pairs_are_sixteen_bytes_each() {
        let ve = IfName::new("ve-a").unwrap();
        let out = raws(Change::AddIface(ve));
        assert_eq!(out[0], (false, "ifaces", vec![key(&name("ve-a"))]));
        let pair = [name("ve-a"), name("ve-a")].concat();
        assert_eq!(out[1], (false, "allowed_pairs", vec![key(&pair)]));
    }

    #[test]
    fn ports_are_padded_fields_with_unpadded_values() {
        let m = PortMapping::new(
            Proto::Tcp,
            None,
            PortRange::single(8080).unwrap(),
            "10.0.0.2".parse().unwrap(),
            80,
        )
        .unwrap();
        let out = raws(Change::AddPort(m));
        let k = [6, 0, 0, 0, 0x1f, 0x90, 0, 0];
        assert_eq!(
            out[0].2,
            [Raw {
                data: Some(vec![10, 0, 0, 2]),
                ..key(&k)
            }]
        );
        assert_eq!(
            out[1].2,
            [Raw {
                data: Some(vec![0, 80]),
                ..key(&k)
            }]
        );
        let bound = PortMapping::new(
            Proto::Udp,
            Some("2001:db8::1".parse().unwrap()),
            PortRange::single(53).unwrap(),
            "fd00::2".parse().unwrap(),
            53,
        )
        .unwrap();
        let out = raws(Change::DelPort(bound));
        let mut k = "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        k.extend([17, 0, 0, 0, 0, 53, 0, 0]);
        assert_eq!(out[1], (true, "bound6_addr", vec![key(&k)]));
    }

    #[test]
    fn a_guarded_port_pads_its_mac() {
        let port = GuardedPort {
            ifname: IfName::new("vb-a").unwrap(),
            mac: Mac([2, 0, 0, 0, 0, 1]),
            addr: Some(Ipv4Addr::new(10, 1, 0, 2)),
        };
        let out = raws(Change::GuardPort(port));
        let macs = [name("vb-a"), vec![2, 0, 0, 0, 0, 1, 0, 0]].concat();
        assert_eq!(out[1], (false, "port_macs", vec![key(&macs)]));
        let addrs = [name("vb-a"), vec![10, 1, 0, 2]].concat();
        assert_eq!(out[3], (false, "port_addrs", vec![key(&addrs)]));
        assert_eq!(nfproto(out[3].1), NFPROTO_BRIDGE);
    }

    #[test]
    fn a_batch_is_framed_and_its_replies_are_read() {
        let ve = IfName::new("ve-a").unwrap();
        let steps = steps(&[Change::AddIface(ve)]);
        let (bytes, acked) = batch(&steps, 7);
        assert_eq!(acked, [8, 9]);
        // Begin, two element messages, end: each length-prefixed and 4-byte aligned.
        let mut rest = &bytes[..];
        let mut kinds = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0);
            kinds.push(u16::from_ne_bytes(rest[4..6].try_into().unwrap()));
            rest = &rest[len..];
        }
        assert_eq!(kinds, [0x10, 0x0a0c, 0x0a0c, 0x11]);
        // An acknowledgement (error 0) and a refusal (-EEXIST), as the kernel frames them.
        let mut answer = Vec::new();
        for (seq, code) in [(8u32, 0i32), (9, -17)] {
            answer.extend(36u32.to_ne_bytes());
            answer.extend(NLMSG_ERROR.to_ne_bytes());
            answer.extend([0; 2]);
            answer.extend(seq.to_ne_bytes());
            answer.extend([0; 4]);
            answer.extend(code.to_ne_bytes());
            answer.extend([0; 16]);
        }
        assert_eq!(replies(&answer), [(8, 0), (9, 17)]);
        // A cut message is not read.
        assert_eq!(replies(&answer[..40]), [(8, 0)]);
    }

    #[test]
    fn the_generation_is_read_from_the_answer_to_our_request() {
        let mut answer = Vec::new();
        let newgen = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN;
        for (seq, id) in [(4u32, 7u32), (5, 0x0102_0304)] {
            message(&mut answer, newgen, 0, seq, 0, 0, |a| {
                a.put(NFTA_GEN_ID, &id.to_be_bytes());
                a.put_str(3, "nft");
            });
        }
        assert_eq!(generation_in(&answer, 5), Some(0x0102_0304));
        assert_eq!(generation_in(&answer, 4), Some(7));
        // Not ours, or cut short: nothing.
        assert_eq!(generation_in(&answer, 6), None);
        assert_eq!(generation_in(&answer[..30], 4), None);
    }
}
