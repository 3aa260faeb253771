//! Hardened decoding and encoding of DHCPv4 messages on top of `dhcproto`.
//!
//! `dhcproto` parses the fixed header and individual option values, but it does not check the op
//! code, `hlen` or the magic cookie, stops silently at the first option it cannot parse, and has
//! `debug_assert!`s and unchecked subtractions on some option lengths. [`decode`] therefore walks
//! the option area itself first (bounds, concatenation of split options per RFC 3396, option
//! overload per RFC 2132 §9.3), and hands `dhcproto` one option at a time, only with lengths it
//! handles, keeping a value only if re-encoding it gives back the client's bytes. Options that do
//! not decode faithfully are skipped and reported in [`Decoded::rejected_options`]; the server
//! drops the packet if it needed one of them.

use std::collections::BTreeMap;

use dhcproto::v4::{DhcpOption, DhcpOptions, MAGIC, Message, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use crate::DropReason;

/// Largest payload accepted. Real clients send at most a few hundred bytes (576-byte IP datagrams
/// unless option 57 says more); anything this large is garbage or an attack.
pub const MAX_PACKET_SIZE: usize = 4096;

/// Length of the fixed BOOTP header (op .. file), before the magic cookie.
pub const HEADER_LEN: usize = 236;

/// Replies are padded to this size: the BOOTP minimum (RFC 1542 §2.1) that some relays and old
/// clients insist on.
pub const MIN_REPLY_SIZE: usize = 300;

/// Offsets of the `sname` and `file` fields, which option overload (52) turns into option space.
const SNAME: std::ops::Range<usize> = 44..108;
const FILE: std::ops::Range<usize> = 108..236;

/// A message that passed [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Header fields and every option that `dhcproto` could decode.
    pub message: Message,
    /// Codes of options that were present but could not be decoded faithfully (wrong length,
    /// bad UTF-8, values `dhcproto` would alter), in ascending order.
    pub rejected_options: Vec<u8>,
}

/// Decodes a BOOTREQUEST. Never panics; errors name why the packet must be dropped.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DropReason> {
    if bytes.len() > MAX_PACKET_SIZE {
        return Err(DropReason::TooLarge);
    }
    let fixed = bytes.get(..HEADER_LEN + 4).ok_or(DropReason::Truncated)?;
    if fixed.first() != Some(&1) {
        return Err(DropReason::NotRequest);
    }
    if fixed.get(2).is_none_or(|&hlen| hlen > 16) {
        return Err(DropReason::BadHardwareLength);
    }
    if fixed.get(HEADER_LEN..) != Some(&MAGIC[..]) {
        return Err(DropReason::BadCookie);
    }

    // Raw options, split parts concatenated in order of appearance (RFC 3396 §5): the options
    // field, then `file`, then `sname` when overloaded.
    let mut raw: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let options = bytes.get(HEADER_LEN + 4..).unwrap_or_default();
    walk(options, &mut raw)?;
    let overload = match raw.remove(&52).as_deref() {
        None => 0,
        Some(&[value @ 1..=3]) => value,
        Some(_) => return Err(DropReason::BadOptions),
    };
    if overload & 1 != 0 {
        walk(bytes.get(FILE).unwrap_or_default(), &mut raw)?;
    }
    if overload & 2 != 0 {
        walk(bytes.get(SNAME).unwrap_or_default(), &mut raw)?;
    }
    // An overload option inside an overloaded field would make the fields loop: ignore it.
    raw.remove(&52);

    // The header alone: `dhcproto` decodes no options from an empty remainder.
    let mut message =
        Message::decode(&mut Decoder::new(fixed)).map_err(|_| DropReason::Truncated)?;
    if overload & 1 != 0 {
        message.clear_fname();
    }
    if overload & 2 != 0 {
        message.clear_sname();
    }

    let mut opts = DhcpOptions::new();
    let mut rejected_options = Vec::new();
    for (code, data) in raw {
        match decode_option(code, &data) {
            Some(opt) => {
                opts.insert(opt);
            }
            None => rejected_options.push(code),
        }
    }
    message.set_opts(opts);
    Ok(Decoded {
        message,
        rejected_options,
    })
}

/// Walks one option area: Pad and End are single bytes, everything else is code, length, value.
/// Parts of an option split over several entries are concatenated.
fn walk(area: &[u8], raw: &mut BTreeMap<u8, Vec<u8>>) -> Result<(), DropReason> {
    let mut rest = area;
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            0 => rest = tail,
            255 => return Ok(()),
            _ => {
                let (&len, tail) = tail.split_first().ok_or(DropReason::Truncated)?;
                let len = usize::from(len);
                let value = tail.get(..len).ok_or(DropReason::Truncated)?;
                raw.entry(code).or_default().extend_from_slice(value);
                rest = tail.get(len..).unwrap_or_default();
            }
        }
    }
    // No End option: tolerated, as most servers do.
    Ok(())
}

/// Lengths `dhcproto` would mis-handle (assert, underflow, drop or silently read part of), and
/// lengths RFC 2132 fixes for the options the server relies on.
fn length_ok(code: u8, len: usize) -> bool {
    match code {
        // Message type, max message size, lease time and T1/T2: fixed sizes.
        53 => len == 1,
        57 => len == 2,
        51 | 58 | 59 => len == 4,
        // Rapid commit carries no value (`dhcproto` asserts it).
        80 => len == 0,
        // Client network interface (asserts 3), client FQDN (subtracts 3).
        94 => len == 3,
        81 => len >= 3,
        // Bulk lease query status code (subtracts 1; re-encoding adds 1 to a u8).
        151 => (1..=255).contains(&len),
        // Bulk lease query times (assert 4).
        152..=155 => len == 4,
        // Every other option carries data (RFC 2132); `dhcproto` would encode an empty one as
        // nothing at all.
        _ => len > 0,
    }
}

/// Decodes one (reassembled) option with `dhcproto`, or `None` if it is malformed.
fn decode_option(code: u8, data: &[u8]) -> Option<DhcpOption> {
    if !length_ok(code, data.len()) {
        return None;
    }
    // Re-split into <= 255-byte parts; `dhcproto` concatenates adjacent parts of one code.
    let mut buf = Vec::with_capacity(data.len() + 2 * (data.len() / 255 + 1) + 1);
    if data.is_empty() {
        buf.extend_from_slice(&[code, 0]);
    }
    for chunk in data.chunks(255) {
        buf.push(code);
        buf.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
        buf.extend_from_slice(chunk);
    }
    buf.push(255);
    let opt = DhcpOption::decode(&mut Decoder::new(&buf)).ok()?;
    // `dhcproto` maps a few codes onto others (37 decodes as 23): keep only faithful decodes.
    if u8::from(OptionCode::from(&opt)) != code {
        return None;
    }
    // Keep only values that `dhcproto` represents faithfully: encoding must give back the bytes
    // the client sent. Garbage that decodes to nothing (an empty domain or route list), partial
    // decodes and lossy ones (an ASCII client FQDN) are rejected. Relay agent information is
    // echoed, not interpreted, so normalising its sub-options is harmless: it only has to
    // survive.
    let mut encoded = Vec::new();
    opt.encode(&mut Encoder::new(&mut encoded)).ok()?;
    let mut back = BTreeMap::new();
    walk(&encoded, &mut back).ok()?;
    let faithful = if code == 82 {
        back.contains_key(&code)
    } else {
        back.get(&code).map(Vec::as_slice) == Some(data)
    };
    (faithful && back.len() == 1).then_some(opt)
}

/// Encodes `message` and pads it with zeros to [`MIN_REPLY_SIZE`].
pub fn encode(message: &Message) -> Result<Vec<u8>, DropReason> {
    let mut buf = Vec::with_capacity(MIN_REPLY_SIZE);
    message
        .encode(&mut Encoder::new(&mut buf))
        .map_err(|_| DropReason::EncodeFailed)?;
    if buf.len() < MIN_REPLY_SIZE {
        buf.resize(MIN_REPLY_SIZE, 0);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use dhcproto::v4::MessageType;

    use super::*;

    fn discover() -> Message {
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        m
    }

    fn raw(m: &Message) -> Vec<u8> {
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }

    /// Replaces the options area (after the cookie) of `m` by `opts`.
    fn with_options(opts: &[u8]) -> Vec<u8> {
        let mut b = raw(&discover());
        b.truncate(HEADER_LEN + 4);
        b.extend_from_slice(opts);
        b
    }

    #[test]
    fn round_trip_of_a_plain_message() {
        let m = discover();
        let d = decode(&raw(&m)).unwrap();
        assert_eq!(d.message, m);
        assert!(d.rejected_options.is_empty());
        assert_eq!(encode(&d.message).unwrap().len(), MIN_REPLY_SIZE);
    }

    #[test]
    fn header_checks() {
        let good = raw(&discover());
        assert_eq!(decode(&good[..239]), Err(DropReason::Truncated));
        assert_eq!(decode(&[]), Err(DropReason::Truncated));
        let mut b = good.clone();
        b[0] = 2;
        assert_eq!(decode(&b), Err(DropReason::NotRequest));
        let mut b = good.clone();
        b[2] = 17;
        assert_eq!(decode(&b), Err(DropReason::BadHardwareLength));
        let mut b = good.clone();
        b[HEADER_LEN + 3] ^= 1;
        assert_eq!(decode(&b), Err(DropReason::BadCookie));
        let mut b = good;
        b.resize(MAX_PACKET_SIZE + 1, 0);
        assert_eq!(decode(&b), Err(DropReason::TooLarge));
    }

    #[test]
    fn option_running_past_the_end_is_truncated() {
        assert_eq!(
            decode(&with_options(&[53, 1, 1, 61, 10, 1, 2])),
            Err(DropReason::Truncated)
        );
        assert_eq!(
            decode(&with_options(&[53, 1, 1, 61])),
            Err(DropReason::Truncated)
        );
    }

    #[test]
    fn split_options_are_concatenated() {
        let d = decode(&with_options(&[
            53, 1, 1, 61, 2, 1, 2, 0, 0, 12, 1, b'h', 61, 3, 3, 4, 5, 255,
        ]))
        .unwrap();
        assert_eq!(
            d.message.opts().get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![1, 2, 3, 4, 5]))
        );
        // A part longer than 255 bytes once reassembled still decodes.
        let mut opts = vec![53, 1, 1];
        for _ in 0..3 {
            opts.push(12);
            opts.push(200);
            opts.extend(std::iter::repeat_n(b'a', 200));
        }
        let d = decode(&with_options(&opts)).unwrap();
        assert_eq!(
            d.message.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("a".repeat(600)))
        );
    }

    #[test]
    fn undecodable_options_are_skipped_and_reported() {
        // Rapid commit with a value, lease time of 3 bytes, hostname not UTF-8, FQDN too short,
        // an empty parameter request list, a route list that decodes to no route, a boolean
        // that is neither 0 nor 1, an ASCII client FQDN.
        let d = decode(&with_options(&[
            53, 1, 1, 80, 1, 0, 51, 3, 0, 0, 1, 12, 2, 0xff, 0xfe, 81, 1, 0, 55, 0, 121, 1, 33, 19,
            1, 2, 81, 5, 0, 0, 0, b'a', b'.', 255,
        ]))
        .unwrap();
        assert_eq!(d.rejected_options, vec![12, 19, 51, 55, 80, 81, 121]);
        assert_eq!(d.message.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(d.message.opts().len(), 1);
    }

    #[test]
    fn overload_reads_file_then_sname_and_never_loops() {
        let mut b = with_options(&[53, 1, 3, 52, 1, 3, 255]);
        // file: client id, and an overload option that must be ignored.
        b[FILE.start..FILE.start + 9].copy_from_slice(&[61, 3, 1, 2, 3, 52, 1, 3, 255]);
        // sname: more client id, split across fields.
        b[SNAME.start..SNAME.start + 5].copy_from_slice(&[61, 2, 4, 5, 255]);
        let d = decode(&b).unwrap();
        assert_eq!(
            d.message.opts().get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![1, 2, 3, 4, 5]))
        );
        assert!(!d.message.opts().contains(OptionCode::OptionOverload));
        assert_eq!(d.message.fname(), None);
        assert_eq!(d.message.sname(), None);

        assert_eq!(
            decode(&with_options(&[53, 1, 3, 52, 1, 9, 255])),
            Err(DropReason::BadOptions)
        );
    }

    #[test]
    fn missing_end_and_trailing_pad_are_tolerated() {
        assert!(decode(&with_options(&[53, 1, 1])).is_ok());
        assert!(decode(&with_options(&[53, 1, 1, 255, 0, 0, 0, 7, 7])).is_ok());
    }
}
