//! The sans-IO DHCPv4 server: packets and the current time in, replies and lease changes out
//! (sans-IO like quinn-proto's `Endpoint::handle` and smoltcp's `socket/dhcpv4.rs`; see
//! `docs/architecture.md#dhcp`).
//!
//! The daemon owns the sockets and the clock. Per packet it calls [`Server::handle`] and sends
//! each [`Outbound`]; it sleeps until [`Server::poll_timeout`] and then calls [`Server::expire`].
//! Persistence is the daemon's too: it journals the [`LeaseChange`]s a call reports (and the
//! leases [`Server::assign`] makes and [`Server::expire`] ends), holding a reply that binds or
//! frees a lease until its change is on disk, and snapshots [`Server::leases`] and
//! [`Server::quarantined`] when it compacts a journal.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::SystemTime;

use dhcproto::v4::MessageType;

use crate::reply::{self, Answer};
use crate::request::Request;
use crate::{
    ClientId, ConfigError, Counters, DropReason, Lease, LeaseError, LeaseTable, LinkConfig,
};
use link::{Action, Link};

/// The daemon's name for a link (its ifindex, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u32);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A UDP datagram received on port 67.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// The UDP payload.
    pub payload: &'a [u8],
    /// Source address and port (informational: replies are addressed from the message itself).
    pub source: SocketAddrV4,
}

/// Where to send a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `255.255.255.255:68` on the link.
    Broadcast,
    /// `ip:68` through the normal IP stack (the client has that address configured).
    Unicast(Ipv4Addr),
    /// `ip:68` in a frame to `mac`, without ARP: the client has no address yet (raw socket).
    Hardware {
        /// Destination MAC (the client's `chaddr`).
        mac: [u8; 6],
        /// Destination IP (`yiaddr`).
        ip: Ipv4Addr,
    },
    /// `giaddr:67`: the relay agent that forwarded the request.
    Relay(Ipv4Addr),
}

impl Destination {
    /// The destination UDP port: 67 for a relay, 68 for a client.
    pub fn port(&self) -> u16 {
        match self {
            Destination::Relay(_) => 67,
            _ => 68,
        }
    }
}

/// A reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The encoded DHCP message (UDP payload).
    pub payload: Vec<u8>,
    /// Where it goes.
    pub destination: Destination,
}

/// A change to a link's bound leases, for the caller's log and persistence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    /// A lease was created or extended (ACK).
    Bound(Lease),
    /// The client released its lease.
    Released(Lease),
    /// The client declined `address`, now quarantined; its lease on it, if any, is dropped.
    Declined {
        /// The quarantined address.
        address: Ipv4Addr,
        /// When its quarantine ends.
        until: SystemTime,
        /// The client's lease that was dropped.
        lease: Option<Lease>,
        /// The quarantine released early to stay within the link's limit, if any.
        released: Option<Ipv4Addr>,
    },
    /// A lease ran out.
    Expired(Lease),
}

/// The outcome of one [`Server::handle`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handled {
    /// Zero or one reply (a `Vec` so that callers need not care).
    pub replies: Vec<Outbound>,
    /// Lease changes, expiries found on the way included.
    pub changes: Vec<LeaseChange>,
    /// Why the packet was dropped or NAKed, if it was.
    pub dropped: Option<DropReason>,
}

/// A DHCPv4 server for any number of links. Pure: no sockets, no clock.
#[derive(Debug, Clone, Default)]
pub struct Server {
    links: BTreeMap<LinkId, Link>,
    counters: Counters,
}

impl Server {
    /// A server with no links.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `link` with `config`. If the link was served already, its configuration is
    /// replaced and the leases still valid under the new one are kept.
    pub fn add_link(&mut self, link: LinkId, mut config: LinkConfig) -> Result<(), ConfigError> {
        config.validate()?;
        config.subnet = config.network();
        let mut table = LeaseTable::new();
        for s in &config.static_leases {
            table.add_static(s.client_id.clone(), s.address);
        }
        let mut new = Link { config, table };
        if let Some(old) = self.links.remove(&link) {
            for lease in old.table.iter() {
                // A lease the new configuration cannot hold is dropped.
                let _ = new.record(lease.clone(), SystemTime::UNIX_EPOCH);
            }
            let limit = new.config.quarantine_limit() as usize;
            for (address, until) in old.table.quarantined() {
                if new.config.in_pool(address) && !new.config.is_reserved(address) {
                    new.table.quarantine(address, until, limit);
                }
            }
        }
        self.links.insert(link, new);
        Ok(())
    }

    /// Stops serving `link`; returns whether it was served.
    pub fn remove_link(&mut self, link: LinkId) -> bool {
        self.links.remove(&link).is_some()
    }

    /// The configuration of `link`, as validated and normalised.
    pub fn config(&self, link: LinkId) -> Option<&LinkConfig> {
        self.links.get(&link).map(|l| &l.config)
    }

    /// Records a lease the daemon made itself for a container (e.g. the address it configured
    /// in it, `Lease::new(ClientId::from_mac(mac), address, expires)`), marked
    /// [`container`](Lease::container): it counts against no limit. The address may lie
    /// outside the pool but must be a free host address of the subnet.
    pub fn record_lease(
        &mut self,
        link: LinkId,
        mut lease: Lease,
        now: SystemTime,
    ) -> Result<(), LeaseError> {
        lease.container = true;
        self.restore_lease(link, lease, now)
    }

    /// The address of the container with `mac` on `link`: the lease of client id `0x01` + MAC
    /// if it has one (`None` in the second field), else a free address picked by the hash of
    /// that client id over the subnet (not quarantined, nobody's lease or static address),
    /// recorded as a container lease until `now` plus the maximum lease time (returned to be
    /// saved). `None` for an unknown link or a full subnet. The DHCP clients the daemon did not
    /// record leave at least the link's reserve free, so this succeeds after any flood while
    /// the containers fit in the reserve.
    pub fn assign(
        &mut self,
        link: LinkId,
        mac: [u8; 6],
        now: SystemTime,
    ) -> Option<(Ipv4Addr, Option<Lease>)> {
        let client = ClientId::from_mac(mac);
        let (address, held) = self.pick(link, mac, now)?;
        if held {
            return Some((address, None));
        }
        let l = self.links.get_mut(&link)?;
        let cfg = &l.config;
        let expires = now.checked_add(cfg.max_lease_time).unwrap_or(now);
        let mut lease = Lease::new(client, address, expires);
        lease.container = true;
        l.record(lease.clone(), now).ok()?;
        Some((address, Some(lease)))
    }

    /// What [`assign`](Self::assign) would give the container with `mac`, without recording
    /// it: its lease (`true`: it holds it already) or the free address systemd's hash picks,
    /// skipping reserved, leased, static and quarantined addresses.
    pub fn pick(&self, link: LinkId, mac: [u8; 6], now: SystemTime) -> Option<(Ipv4Addr, bool)> {
        let l = self.links.get(&link)?;
        let client = ClientId::from_mac(mac);
        if let Some(lease) = l.table.lease(&client, now) {
            return Some((lease.address, true));
        }
        let cfg = &l.config;
        let address = crate::pick_address(cfg.subnet, client.as_bytes(), |a| {
            !cfg.is_reserved(a)
                && l.table.holder(a, now).is_none()
                && l.table.static_owner(a).is_none()
                && !l.table.is_quarantined(a, now)
        })?;
        Some((address, false))
    }

    /// Records a lease loaded from the store, as it was saved (container or not).
    pub fn restore_lease(
        &mut self,
        link: LinkId,
        lease: Lease,
        now: SystemTime,
    ) -> Result<(), LeaseError> {
        self.links
            .get_mut(&link)
            .ok_or(LeaseError::UnknownLink(link))?
            .record(lease, now)
    }

    /// Quarantines `address` on `link` until `until` (loaded from the store), within the
    /// link's limit; false for an unknown link or an address that is not in the pool.
    pub fn restore_quarantine(
        &mut self,
        link: LinkId,
        address: Ipv4Addr,
        until: SystemTime,
    ) -> bool {
        let Some(l) = self.links.get_mut(&link) else {
            return false;
        };
        if l.config.is_reserved(address) || !l.config.in_pool(address) {
            return false;
        }
        let limit = l.config.quarantine_limit() as usize;
        l.table.quarantine(address, until, limit);
        true
    }

    /// The addresses of `link` quarantined at `now` and when each quarantine ends, by address.
    pub fn quarantined(&self, link: LinkId, now: SystemTime) -> Vec<(Ipv4Addr, SystemTime)> {
        self.links
            .get(&link)
            .map(|l| {
                l.table
                    .quarantined()
                    .filter(|&(_, until)| until > now)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops the lease of `client` on `link` (the daemon removed the client's container);
    /// returns it.
    pub fn release_lease(&mut self, link: LinkId, client: &ClientId) -> Option<Lease> {
        self.links.get_mut(&link)?.table.remove(client)
    }

    /// Handles one datagram received on `link` at `now`.
    pub fn handle(&mut self, now: SystemTime, link: LinkId, inbound: &Inbound<'_>) -> Handled {
        self.counters.received = self.counters.received.saturating_add(1);
        let mut out = Handled::default();
        let Some(l) = self.links.get_mut(&link) else {
            self.counters.count(DropReason::UnknownLink);
            out.dropped = Some(DropReason::UnknownLink);
            return out;
        };
        for lease in l.table.expire(now) {
            self.counters.expired = self.counters.expired.saturating_add(1);
            out.changes.push(LeaseChange::Expired(lease));
        }
        let mut req = match Request::parse(inbound.payload) {
            Ok(req) => req,
            Err(reason) => {
                self.counters.count(reason);
                out.dropped = Some(reason);
                return out;
            }
        };
        l.resolve(&mut req, now);
        let action = match req.kind {
            MessageType::Discover => l.discover(&req, now),
            MessageType::Request => l.request(&req, now),
            MessageType::Release => l.release(&req, now),
            MessageType::Decline => l.decline(&req, now),
            MessageType::Inform => l.inform(&req),
            _ => Action::Drop(DropReason::UnsupportedMessageType),
        };
        let answer = match action {
            Action::Reply(answer, change) => {
                out.changes.extend(change);
                answer
            }
            Action::Nak(reason) => {
                self.counters.count(reason);
                out.dropped = Some(reason);
                Answer::Nak
            }
            Action::Done(change) => {
                match change {
                    LeaseChange::Released(_) => self.counters.releases += 1,
                    LeaseChange::Declined { .. } => self.counters.declines += 1,
                    _ => {}
                }
                out.changes.push(change);
                return out;
            }
            Action::Drop(reason) => {
                self.counters.count(reason);
                out.dropped = Some(reason);
                return out;
            }
        };
        let payload = match reply::build(&req, &l.config, answer) {
            Ok(p) => p,
            Err(reason) => {
                self.counters.count(reason);
                out.dropped = Some(reason);
                return out;
            }
        };
        let yiaddr = match answer {
            Answer::Offer { address, .. } | Answer::Ack { address, .. } => address,
            Answer::InformAck | Answer::Nak => Ipv4Addr::UNSPECIFIED,
        };
        match answer {
            Answer::Offer { .. } => self.counters.offers += 1,
            Answer::Ack { .. } | Answer::InformAck => self.counters.acks += 1,
            Answer::Nak => self.counters.naks += 1,
        }
        out.replies.push(Outbound {
            payload,
            destination: reply::destination(&req, answer, yiaddr),
        });
        out
    }

    /// When [`expire`](Self::expire) next has work: the earliest lease expiry or quarantine end.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        self.links
            .values()
            .filter_map(|l| l.table.next_expiry())
            .min()
    }

    /// Removes leases and quarantines that ended at or before `now`; returns the leases.
    pub fn expire(&mut self, now: SystemTime) -> Vec<(LinkId, Lease)> {
        let mut gone = Vec::new();
        for (&id, l) in &mut self.links {
            gone.extend(l.table.expire(now).into_iter().map(|lease| (id, lease)));
        }
        self.counters.expired = self
            .counters
            .expired
            .saturating_add(u64::try_from(gone.len()).unwrap_or(u64::MAX));
        gone
    }

    /// The unexpired leases of `link`, by address (empty for an unknown link).
    pub fn leases(&self, link: LinkId, now: SystemTime) -> Vec<Lease> {
        self.links
            .get(&link)
            .map(|l| {
                l.table
                    .iter()
                    .filter(|x| !x.is_expired(now))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Number of leases stored for `link` (expired ones not yet removed included): O(1).
    pub fn lease_count(&self, link: LinkId) -> usize {
        self.links.get(&link).map_or(0, |l| l.table.len())
    }

    /// Packet counters since creation.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

mod link;
#[cfg(test)]
mod tests;
