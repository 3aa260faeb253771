//! Building OFFER, ACK and NAK messages and choosing where they go
//! (`server_send_offer_or_ack()` and `dhcp_server_send_packet()` in sd-dhcp-server).

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use ipnetwork::Ipv4Network;

use crate::request::Request;
use crate::{Destination, DropReason, LinkConfig, wire};

/// IP (20) and UDP (8) headers: option 57 counts them, the payload does not.
const IP_UDP_HEADERS: usize = 28;

/// The smallest datagram every client must accept (RFC 2131 §2): 576 bytes, i.e. a 548-byte
/// DHCP message with 312 bytes of options.
const MIN_DATAGRAM: usize = 576;

/// What the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// DHCPOFFER of `address` for `lease_secs`.
    Offer { address: Ipv4Addr, lease_secs: u32 },
    /// DHCPACK binding `address` for `lease_secs`; `rapid` echoes option 80.
    Ack {
        address: Ipv4Addr,
        lease_secs: u32,
        rapid: bool,
    },
    /// DHCPACK to a DHCPINFORM: configuration only, no address, no lease time.
    InformAck,
    /// DHCPNAK.
    Nak,
}

/// Encodes the reply to `req`. Optional options are dropped, least important first, until the
/// message fits the client's maximum message size.
pub(crate) fn build(
    req: &Request,
    cfg: &LinkConfig,
    answer: Answer,
) -> Result<Vec<u8>, DropReason> {
    let (kind, yiaddr, ciaddr, lease) = match answer {
        Answer::Offer {
            address,
            lease_secs,
        } => (MessageType::Offer, address, None, Some(lease_secs)),
        Answer::Ack {
            address,
            lease_secs,
            ..
        } => (MessageType::Ack, address, req.ciaddr(), Some(lease_secs)),
        Answer::InformAck => (MessageType::Ack, Ipv4Addr::UNSPECIFIED, req.ciaddr(), None),
        Answer::Nak => (MessageType::Nak, Ipv4Addr::UNSPECIFIED, None, None),
    };
    let mut msg = Message::new_with_id(
        req.msg.xid(),
        ciaddr.unwrap_or(Ipv4Addr::UNSPECIFIED),
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        req.msg.giaddr(),
        req.msg.chaddr(),
    );
    msg.set_opcode(Opcode::BootReply)
        .set_htype(req.msg.htype())
        .set_flags(req.msg.flags());
    if answer == Answer::Nak && req.giaddr().is_some() {
        // A relay cannot unicast to a client that has no address (RFC 2131 §4.3.2).
        msg.set_flags(req.msg.flags().set_broadcast());
    }

    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(cfg.server_address));
    if answer != Answer::Nak {
        opts.insert(DhcpOption::SubnetMask(cfg.subnet.mask()));
        if let Some(router) = cfg.router() {
            opts.insert(DhcpOption::Router(vec![router]));
        }
    }
    if let Some(secs) = lease {
        opts.insert(DhcpOption::AddressLeaseTime(secs));
        opts.insert(DhcpOption::Renewal(fraction(secs, cfg.t1_permille)));
        opts.insert(DhcpOption::Rebinding(fraction(secs, cfg.t2_permille)));
    }
    if let Answer::Ack { rapid: true, .. } = answer {
        opts.insert(DhcpOption::RapidCommit);
    }
    // RFC 3046 §2.2: the relay agent information is echoed, NAKs included.
    if let Some(relay) = req.msg.opts().get(OptionCode::RelayAgentInformation) {
        opts.insert(relay.clone());
    }

    // Optional options, most important first, each only if the client wants it.
    let mut optional: Vec<DhcpOption> = Vec::new();
    if answer != Answer::Nak {
        if !cfg.dns.is_empty() && req.wants(OptionCode::DomainNameServer) {
            optional.push(DhcpOption::DomainNameServer(cfg.dns.clone()));
        }
        if let Some(domain) = cfg.domain.as_ref().filter(|d| !d.is_empty())
            && req.wants(OptionCode::DomainName)
        {
            optional.push(DhcpOption::DomainName(domain.clone()));
        }
        if !cfg.classless_routes.is_empty() && req.wants(OptionCode::ClasslessStaticRoute) {
            optional.push(DhcpOption::ClasslessStaticRoute(routes(cfg)));
        }
        if let Some(name) = req.hostname.as_ref().filter(|h| h.len() <= 255)
            && req.wants(OptionCode::Hostname)
        {
            optional.push(DhcpOption::Hostname(name.clone()));
        }
    }

    let limit = usize::from(req.max_size.unwrap_or(0)).max(MIN_DATAGRAM) - IP_UDP_HEADERS;
    loop {
        let mut candidate = msg.clone();
        for opt in &optional {
            candidate.opts_mut().insert(opt.clone());
        }
        let bytes = wire::encode(&candidate)?;
        if bytes.len() <= limit || optional.pop().is_none() {
            return Ok(bytes);
        }
    }
}

/// `lease * permille / 1000`, computed without overflow.
fn fraction(lease_secs: u32, permille: u32) -> u32 {
    let v = u64::from(lease_secs) * u64::from(permille) / 1000;
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The configured option-121 routes, plus a default route via the router when none is listed
/// (RFC 3442 §3: clients that accept option 121 ignore option 3).
fn routes(cfg: &LinkConfig) -> Vec<(ipnet::Ipv4Net, Ipv4Addr)> {
    let mut out: Vec<(ipnet::Ipv4Net, Ipv4Addr)> = cfg
        .classless_routes
        .iter()
        .filter_map(|(dst, gw)| {
            let net = Ipv4Network::new(dst.network(), dst.prefix()).ok()?;
            ipnet::Ipv4Net::new(net.ip(), net.prefix())
                .ok()
                .map(|n| (n, *gw))
        })
        .collect();
    if let Some(router) = cfg.router()
        && !out.iter().any(|(dst, _)| dst.prefix_len() == 0)
    {
        out.push((ipnet::Ipv4Net::default(), router));
    }
    out
}

/// Where a reply goes (RFC 2131 §4.1 and §4.3.5; apart from INFORM, which systemd does not
/// answer, as `dhcp_server_send_packet()` in systemd's `sd-dhcp-server.c` chooses): an INFORM
/// answer to `ciaddr`; to the relay if relayed; else to `ciaddr` (not for a NAK); else broadcast
/// if the client asked for it or it is a NAK; else link-layer unicast to `chaddr` and `yiaddr`. A
/// client whose hardware address is not Ethernet gets a broadcast.
pub(crate) fn destination(req: &Request, answer: Answer, yiaddr: Ipv4Addr) -> Destination {
    // RFC 2131 §4.3.5: the answer to an INFORM goes to `ciaddr`, even through a relay.
    if answer == Answer::InformAck
        && let Some(ciaddr) = req.ciaddr()
    {
        return Destination::Unicast(ciaddr);
    }
    if let Some(relay) = req.giaddr() {
        return Destination::Relay(relay);
    }
    if answer != Answer::Nak
        && let Some(ciaddr) = req.ciaddr()
    {
        return Destination::Unicast(ciaddr);
    }
    if answer == Answer::Nak || req.msg.flags().broadcast() || yiaddr.is_unspecified() {
        return Destination::Broadcast;
    }
    match req.mac {
        Some(mac) => Destination::Hardware { mac, ip: yiaddr },
        None => Destination::Broadcast,
    }
}
