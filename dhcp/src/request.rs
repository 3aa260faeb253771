//! A decoded client message with the fields the server acts on, checked once
//! (`ensure_sane_request()` in sd-dhcp-server).

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, OptionCode};

use crate::{ClientId, DropReason, wire};

/// Options whose loss makes the message meaningless: if present but undecodable, drop.
const REQUIRED_IF_PRESENT: [u8; 5] = [50, 51, 53, 54, 57];

/// What a client asked for.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The full message (header and options), for building the reply.
    pub msg: Message,
    /// Option 53.
    pub kind: MessageType,
    /// Option 61 if it has 2..=255 bytes, else `0x01` + `chaddr`.
    pub client_id: ClientId,
    /// Where an L2 unicast reply goes: Ethernet `chaddr`, else the MAC inside a type-1 client id.
    pub mac: Option<[u8; 6]>,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 51, in seconds.
    pub lease_time: Option<u32>,
    /// Option 57: the largest DHCP message (IP and UDP headers included) the client accepts.
    pub max_size: Option<u16>,
    /// Option 55, as raw codes.
    pub prl: Option<Vec<u8>>,
    /// Option 12, trailing NULs removed, if non-empty.
    pub hostname: Option<String>,
    /// Option 80.
    pub rapid_commit: bool,
}

impl Request {
    /// Decodes and checks `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Request, DropReason> {
        let decoded = wire::decode(bytes)?;
        if decoded
            .rejected_options
            .iter()
            .any(|c| REQUIRED_IF_PRESENT.contains(c))
        {
            return Err(DropReason::BadOptions);
        }
        let msg = decoded.message;
        let opts = msg.opts();
        let kind = match opts.get(OptionCode::MessageType) {
            Some(DhcpOption::MessageType(k)) => *k,
            _ => return Err(DropReason::NoMessageType),
        };

        let chaddr = msg.chaddr();
        let chaddr_usable = chaddr.iter().any(|&b| b != 0);
        let client_id = match opts.get(OptionCode::ClientIdentifier) {
            Some(DhcpOption::ClientIdentifier(id)) if (2..=255).contains(&id.len()) => {
                ClientId::new(id.clone())
            }
            _ if chaddr_usable => ClientId::new([&[1u8][..], chaddr].concat()),
            _ => return Err(DropReason::NoClientId),
        };
        let mac = match <[u8; 6]>::try_from(chaddr) {
            Ok(mac) if msg.htype() == HType::Eth && chaddr_usable => Some(mac),
            _ => client_id.mac(),
        };

        let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
            _ => None,
        };
        let server_id = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
            _ => None,
        };
        let lease_time = match opts.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(t)) => Some(*t),
            _ => None,
        };
        let max_size = match opts.get(OptionCode::MaxMessageSize) {
            Some(DhcpOption::MaxMessageSize(s)) => Some(*s),
            _ => None,
        };
        let prl = match opts.get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(codes)) => {
                Some(codes.iter().map(|&c| u8::from(c)).collect())
            }
            _ => None,
        };
        let hostname = match opts.get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => {
                Some(h.trim_end_matches('\0').to_owned()).filter(|h| !h.is_empty())
            }
            _ => None,
        };
        let rapid_commit = opts.contains(OptionCode::RapidCommit);
        Ok(Request {
            msg,
            kind,
            client_id,
            mac,
            requested_ip,
            server_id,
            lease_time,
            max_size,
            prl,
            hostname,
            rapid_commit,
        })
    }

    /// `ciaddr`, if set.
    pub fn ciaddr(&self) -> Option<Ipv4Addr> {
        Some(self.msg.ciaddr()).filter(|a| !a.is_unspecified())
    }

    /// `giaddr`, if set (the message came through a relay).
    pub fn giaddr(&self) -> Option<Ipv4Addr> {
        Some(self.msg.giaddr()).filter(|a| !a.is_unspecified())
    }

    /// Whether the client listed `code` in option 55, or sent no option 55 at all.
    pub fn wants(&self, code: OptionCode) -> bool {
        self.prl
            .as_ref()
            .is_none_or(|prl| prl.contains(&u8::from(code)))
    }
}
