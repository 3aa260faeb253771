//! Packet counters: what came in, what went out, and why a packet got no positive answer.
//!
//! Malformed or unwanted packets are dropped and counted here, never propagated as errors
//! (as smoltcp's `socket/dhcpv4.rs` does; logging policy in `docs/architecture.md#conventions`):
//! the daemon exports these numbers and logs at `trace!` at most.

use std::fmt;

/// Why a packet was dropped, or why a REQUEST was answered with a NAK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The packet arrived on a link the server does not serve.
    UnknownLink,
    /// Shorter than the fixed BOOTP header plus the magic cookie, or an option runs past the end.
    Truncated,
    /// Longer than [`MAX_PACKET_SIZE`](crate::wire::MAX_PACKET_SIZE).
    TooLarge,
    /// Op code is not BOOTREQUEST (a BOOTREPLY or garbage).
    NotRequest,
    /// `hlen` larger than the 16-byte `chaddr` field.
    BadHardwareLength,
    /// The four bytes after the header are not the DHCP magic cookie.
    BadCookie,
    /// An option that the server needs cannot be decoded (wrong length, bad overload value).
    BadOptions,
    /// No DHCP message type option (a plain BOOTP request): not served.
    NoMessageType,
    /// A message type a server does not act on (OFFER, ACK, NAK, lease queries, ...).
    UnsupportedMessageType,
    /// Neither a client identifier option nor a usable `chaddr`.
    NoClientId,
    /// A REQUEST, RELEASE or DECLINE naming another server: not for us.
    OtherServer,
    /// A message whose fields contradict its type (e.g. SELECTING with `ciaddr` set, INFORM
    /// without `ciaddr`, DECLINE without a requested address).
    BadRequest,
    /// The address asked for lies outside the link's subnet.
    OutsideSubnet,
    /// The address asked for is reserved, bound to another client, quarantined or outside the
    /// pool.
    AddressUnavailable,
    /// The client's static address is bound to another client.
    StaticConflict,
    /// No free address in the pool.
    PoolExhausted,
    /// A new client the daemon did not record, while such clients hold their whole share of
    /// the pool ([`LinkConfig::foreign_lease_limit`](crate::LinkConfig::foreign_lease_limit)).
    LeaseLimit,
    /// A RELEASE for an address the client does not hold.
    NoLease,
    /// The reply could not be encoded (should not happen).
    EncodeFailed,
}

impl DropReason {
    /// Every reason, in declaration order (the index used by [`Counters`]).
    pub const ALL: [DropReason; 19] = [
        DropReason::UnknownLink,
        DropReason::Truncated,
        DropReason::TooLarge,
        DropReason::NotRequest,
        DropReason::BadHardwareLength,
        DropReason::BadCookie,
        DropReason::BadOptions,
        DropReason::NoMessageType,
        DropReason::UnsupportedMessageType,
        DropReason::NoClientId,
        DropReason::OtherServer,
        DropReason::BadRequest,
        DropReason::OutsideSubnet,
        DropReason::AddressUnavailable,
        DropReason::StaticConflict,
        DropReason::PoolExhausted,
        DropReason::LeaseLimit,
        DropReason::NoLease,
        DropReason::EncodeFailed,
    ];

    /// A stable snake_case name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownLink => "unknown_link",
            DropReason::Truncated => "truncated",
            DropReason::TooLarge => "too_large",
            DropReason::NotRequest => "not_request",
            DropReason::BadHardwareLength => "bad_hardware_length",
            DropReason::BadCookie => "bad_cookie",
            DropReason::BadOptions => "bad_options",
            DropReason::NoMessageType => "no_message_type",
            DropReason::UnsupportedMessageType => "unsupported_message_type",
            DropReason::NoClientId => "no_client_id",
            DropReason::OtherServer => "other_server",
            DropReason::BadRequest => "bad_request",
            DropReason::OutsideSubnet => "outside_subnet",
            DropReason::AddressUnavailable => "address_unavailable",
            DropReason::StaticConflict => "static_conflict",
            DropReason::PoolExhausted => "pool_exhausted",
            DropReason::LeaseLimit => "lease_limit",
            DropReason::NoLease => "no_lease",
            DropReason::EncodeFailed => "encode_failed",
        }
    }

    fn index(self) -> usize {
        // `ALL` lists the variants in declaration order.
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Running totals for one [`Server`](crate::Server), across all links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets passed to `handle`.
    pub received: u64,
    /// DHCPOFFERs sent.
    pub offers: u64,
    /// DHCPACKs sent (including rapid-commit and INFORM answers).
    pub acks: u64,
    /// DHCPNAKs sent.
    pub naks: u64,
    /// Leases dropped by RELEASE.
    pub releases: u64,
    /// Addresses quarantined by DECLINE.
    pub declines: u64,
    /// Leases removed because they expired.
    pub expired: u64,
    by_reason: [u64; DropReason::ALL.len()],
}

impl Counters {
    /// How many packets were dropped or NAKed for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.by_reason.get(reason.index()).copied().unwrap_or(0)
    }

    /// Every reason with its count, zeros included (for metric export).
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.dropped(r)))
    }

    /// Total over all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.by_reason.iter().sum()
    }

    pub(crate) fn count(&mut self, reason: DropReason) {
        if let Some(c) = self.by_reason.get_mut(reason.index()) {
            *c = c.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_variant_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r}");
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }

    #[test]
    fn counts_per_reason() {
        let mut c = Counters::default();
        c.count(DropReason::BadCookie);
        c.count(DropReason::BadCookie);
        c.count(DropReason::Truncated);
        assert_eq!(c.dropped(DropReason::BadCookie), 2);
        assert_eq!(c.dropped(DropReason::Truncated), 1);
        assert_eq!(c.dropped(DropReason::NoLease), 0);
        assert_eq!(c.dropped_total(), 3);
        assert_eq!(c.drops().count(), DropReason::ALL.len());
    }
}
