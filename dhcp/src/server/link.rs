//! One served link: its configuration, its lease table, and the per-message decisions
//! (RFC 2131 §4.3 with the choices of `dhcp_server_handle_message()` in systemd's
//! `src/libsystemd-network/sd-dhcp-server.c`).

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use crate::reply::Answer;
use crate::request::Request;
use crate::{ClientId, DropReason, Lease, LeaseChange, LeaseError, LeaseTable, LinkConfig};

/// What a message handler decided.
pub(super) enum Action {
    /// Send `Answer`; the lease change it made, if any.
    Reply(Answer, Option<LeaseChange>),
    /// Send a NAK, refused for the reason.
    Nak(DropReason),
    /// No reply, but a lease change (RELEASE, DECLINE).
    Done(LeaseChange),
    /// No reply, nothing changed.
    Drop(DropReason),
}

/// One served link.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub(super) config: LinkConfig,
    pub(super) table: LeaseTable,
}

impl Link {
    /// Binds a lease made outside the protocol (daemon, lease file), after the address checks.
    pub(super) fn record(&mut self, lease: Lease, now: SystemTime) -> Result<(), LeaseError> {
        let address = lease.address;
        if !self.config.subnet.contains(address) {
            return Err(LeaseError::OutsideSubnet { address });
        }
        if self.config.is_reserved(address) {
            return Err(LeaseError::Reserved { address });
        }
        if let Some(owner) = self.table.static_owner(address)
            && *owner != lease.client_id
        {
            return Err(LeaseError::StaticAddress {
                address,
                owner: owner.clone(),
            });
        }
        self.table.bind(lease, now)?;
        Ok(())
    }

    /// A DHCP client in a container the daemon configured may send a client id of its own
    /// (dhcpcd's or networkd's DUID-based one, type 255): it is still the container, known by
    /// its hardware address, and gets the container's lease, so its address does not change.
    /// Only a client id that names no hardware address and holds nothing is taken over: a
    /// type-1 id names an Ethernet address and is a client of its own, whatever `chaddr` says.
    pub(super) fn resolve(&self, req: &mut Request, now: SystemTime) {
        let Some(mac) = req.mac else { return };
        let own = ClientId::from_mac(mac);
        if req.client_id == own
            || req.client_id.as_bytes().first() == Some(&1)
            || self.table.lease(&req.client_id, now).is_some()
            || self.table.static_address(&req.client_id).is_some()
        {
            return;
        }
        if self.table.lease(&own, now).is_some_and(|l| l.container) {
            req.client_id = own;
        }
    }

    /// Whether `client` is new and the clients the daemon did not record already hold their
    /// share of the pool. A client holding a lease or a static address is never refused.
    fn over_limit(&self, client: &ClientId, now: SystemTime) -> bool {
        self.table.static_address(client).is_none()
            && self.table.lease(client, now).is_none()
            && self.table.foreign_len() >= self.config.foreign_lease_limit() as usize
    }

    /// Whether `client` may be given `address` now (RFC 2131 §4.3.2 checks, systemd's rules).
    fn check(
        &self,
        client: &ClientId,
        address: Ipv4Addr,
        now: SystemTime,
    ) -> Result<(), DropReason> {
        let cfg = &self.config;
        if !cfg.subnet.contains(address) {
            return Err(DropReason::OutsideSubnet);
        }
        if cfg.is_reserved(address) {
            return Err(DropReason::AddressUnavailable);
        }
        if let Some(own) = self.table.static_address(client) {
            if own != address {
                return Err(DropReason::AddressUnavailable);
            }
            return match self.table.holder(own, now) {
                Some(holder) if holder != client => Err(DropReason::StaticConflict),
                _ => Ok(()),
            };
        }
        if self.table.static_owner(address).is_some() {
            return Err(DropReason::AddressUnavailable);
        }
        // The daemon chose a container's address (and filters on it): its DHCP client
        // cannot move it.
        if let Some(own) = self.table.lease(client, now)
            && own.container
            && own.address != address
        {
            return Err(DropReason::AddressUnavailable);
        }
        match self.table.holder(address, now) {
            Some(holder) if holder == client => return Ok(()),
            Some(_) => return Err(DropReason::AddressUnavailable),
            None => {}
        }
        if self.table.is_quarantined(address, now) || !cfg.in_pool(address) {
            return Err(DropReason::AddressUnavailable);
        }
        if self.over_limit(client, now) {
            return Err(DropReason::LeaseLimit);
        }
        Ok(())
    }

    /// Address choice for a DISCOVER: static lease, current lease, requested address, hash.
    fn choose(&self, req: &Request, now: SystemTime) -> Result<Ipv4Addr, DropReason> {
        let client = &req.client_id;
        if let Some(address) = self.table.static_address(client) {
            return self.check(client, address, now).map(|()| address);
        }
        let current = self.table.lease(client, now).map(|l| l.address);
        for candidate in current.into_iter().chain(req.requested_ip) {
            if self.check(client, candidate, now).is_ok() {
                return Ok(candidate);
            }
        }
        let cfg = &self.config;
        let (offset, size) = cfg.pool();
        let address = crate::pick_address_in(cfg.subnet, offset, size, client.as_bytes(), |a| {
            !cfg.is_reserved(a)
                && self.table.static_owner(a).is_none()
                && self.table.holder(a, now).is_none()
                && !self.table.is_quarantined(a, now)
        })
        .ok_or(DropReason::PoolExhausted)?;
        if self.over_limit(client, now) {
            return Err(DropReason::LeaseLimit);
        }
        Ok(address)
    }

    fn lease_secs(&self, req: &Request) -> u32 {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let max = secs(self.config.max_lease_time).max(1);
        match req.lease_time {
            Some(t) => t.clamp(1, max),
            None => secs(self.config.default_lease_time).clamp(1, max),
        }
    }

    fn bind(
        &mut self,
        req: &Request,
        address: Ipv4Addr,
        secs: u32,
        now: SystemTime,
    ) -> Result<Lease, DropReason> {
        let container = self
            .table
            .lease(&req.client_id, now)
            .is_some_and(|l| l.container);
        let lease = Lease {
            container,
            client_id: req.client_id.clone(),
            address,
            hwaddr: req.mac,
            hostname: req.hostname.clone().filter(|h| h.len() <= 255),
            expires: now
                .checked_add(Duration::from_secs(u64::from(secs)))
                .unwrap_or(now),
        };
        self.table
            .bind(lease.clone(), now)
            .map_err(|_| DropReason::AddressUnavailable)?;
        Ok(lease)
    }

    fn ack(&mut self, req: &Request, address: Ipv4Addr, now: SystemTime, rapid: bool) -> Action {
        let lease_secs = self.lease_secs(req);
        match self.bind(req, address, lease_secs, now) {
            Ok(lease) => Action::Reply(
                Answer::Ack {
                    address,
                    lease_secs,
                    rapid,
                },
                Some(LeaseChange::Bound(lease)),
            ),
            Err(reason) => Action::Drop(reason),
        }
    }

    pub(super) fn discover(&mut self, req: &Request, now: SystemTime) -> Action {
        let address = match self.choose(req, now) {
            Ok(a) => a,
            Err(reason) => return Action::Drop(reason),
        };
        if self.config.rapid_commit && req.rapid_commit {
            return self.ack(req, address, now, true);
        }
        let lease_secs = self.lease_secs(req);
        Action::Reply(
            Answer::Offer {
                address,
                lease_secs,
            },
            None,
        )
    }

    pub(super) fn request(&mut self, req: &Request, now: SystemTime) -> Action {
        let ours = self.config.server_address;
        match (req.server_id, req.requested_ip, req.ciaddr()) {
            // SELECTING: the client chose a server; silence if it was not us.
            (Some(sid), _, _) if sid != ours => Action::Drop(DropReason::OtherServer),
            (Some(_), Some(address), None) => match self.check(&req.client_id, address, now) {
                Ok(()) => self.ack(req, address, now, false),
                Err(reason) => Action::Nak(reason),
            },
            (Some(_), _, _) => Action::Drop(DropReason::BadRequest),
            // RENEWING (unicast) or REBINDING (broadcast): refusals are silent.
            (None, _, Some(address)) => match self.check(&req.client_id, address, now) {
                Ok(()) => self.ack(req, address, now, false),
                Err(reason) => Action::Drop(reason),
            },
            // INIT-REBOOT: NAK an address that is wrong for this client or this network.
            (None, Some(address), None) => match self.check(&req.client_id, address, now) {
                Ok(()) => self.ack(req, address, now, false),
                Err(reason) => Action::Nak(reason),
            },
            (None, None, None) => Action::Drop(DropReason::BadRequest),
        }
    }

    pub(super) fn release(&mut self, req: &Request, now: SystemTime) -> Action {
        if req
            .server_id
            .is_some_and(|s| s != self.config.server_address)
        {
            return Action::Drop(DropReason::OtherServer);
        }
        let Some(address) = req.ciaddr() else {
            return Action::Drop(DropReason::BadRequest);
        };
        match self.table.lease(&req.client_id, now) {
            Some(l) if l.address == address => match self.table.remove(&req.client_id) {
                Some(lease) => Action::Done(LeaseChange::Released(lease)),
                None => Action::Drop(DropReason::NoLease),
            },
            _ => Action::Drop(DropReason::NoLease),
        }
    }

    pub(super) fn decline(&mut self, req: &Request, now: SystemTime) -> Action {
        if req
            .server_id
            .is_some_and(|s| s != self.config.server_address)
        {
            return Action::Drop(DropReason::OtherServer);
        }
        let Some(address) = req.requested_ip else {
            return Action::Drop(DropReason::BadRequest);
        };
        if !self.config.subnet.contains(address) {
            return Action::Drop(DropReason::OutsideSubnet);
        }
        // Only pool addresses are ever offered, so only they can be declined: the quarantine
        // limit is spent on nothing else.
        if self.config.is_reserved(address) || !self.config.in_pool(address) {
            return Action::Drop(DropReason::AddressUnavailable);
        }
        // A client may not evict another client's lease by declining its address.
        let lease = match self.table.holder(address, now) {
            Some(holder) if *holder != req.client_id => {
                return Action::Drop(DropReason::AddressUnavailable);
            }
            Some(_) => self.table.remove(&req.client_id),
            None => None,
        };
        let until = now
            .checked_add(self.config.decline_quarantine)
            .unwrap_or(now);
        let limit = self.config.quarantine_limit() as usize;
        let released = self.table.quarantine(address, until, limit);
        Action::Done(LeaseChange::Declined {
            address,
            until,
            lease,
            released,
        })
    }

    pub(super) fn inform(&self, req: &Request) -> Action {
        match req.ciaddr() {
            None => Action::Drop(DropReason::BadRequest),
            Some(a) if !self.config.subnet.contains(a) => Action::Drop(DropReason::OutsideSubnet),
            Some(_) => Action::Reply(Answer::InformAck, None),
        }
    }
}
