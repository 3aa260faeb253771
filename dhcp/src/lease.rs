//! The lease table of one link (pure): bound leases by client id and by address, static leases,
//! and addresses quarantined after a DECLINE.
//!
//! As in systemd's `sd-dhcp-server.c` (a DISCOVER is answered without creating a lease), an
//! OFFER is not a reservation: only ACKed leases are here, so a flood of DISCOVERs takes no
//! address. Expired leases are ignored by every lookup and removed by [`LeaseTable::expire`]. The
//! table counts the leases the daemon recorded for its containers ([`Lease::container`]) apart
//! from the others, and keeps quarantines ordered by their end, so that the per-link bounds cost
//! O(log n) per packet.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::SystemTime;

use crate::LinkId;

/// A DHCP client identifier (option 61, type byte included), or the one synthesised from the
/// hardware address: `0x01` followed by the MAC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Vec<u8>);

impl ClientId {
    /// Wraps raw option-61 bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        ClientId(bytes.into())
    }

    /// `0x01` + `mac`: what a client without option 61 is known by, and what networkd's
    /// `[DHCPServerStaticLease] MACAddress=` is converted to.
    pub fn from_mac(mac: [u8; 6]) -> Self {
        ClientId(crate::client_id_from_mac(mac))
    }

    /// The raw bytes, type byte first.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The MAC address if this is an Ethernet (type 1) identifier.
    pub fn mac(&self) -> Option<[u8; 6]> {
        match self.0.as_slice() {
            [1, mac @ ..] => mac.try_into().ok(),
            _ => None,
        }
    }
}

/// Colon-separated lowercase hex, as `ip link` prints MACs: `01:02:aa:bb:cc:dd:ee`.
impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The error of parsing a [`ClientId`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid client id {0:?}: expected colon-separated hex bytes")]
pub struct ParseClientIdError(pub String);

impl FromStr for ClientId {
    type Err = ParseClientIdError;

    /// Parses the [`Display`](fmt::Display) form; the empty id is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseClientIdError(s.to_owned());
        if s.is_empty() {
            return Err(err());
        }
        s.split(':')
            .map(|b| {
                if b.len() == 2 {
                    u8::from_str_radix(b, 16).map_err(|_| err())
                } else {
                    Err(err())
                }
            })
            .collect::<Result<Vec<u8>, _>>()
            .map(ClientId)
    }
}

/// A bound lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it.
    pub client_id: ClientId,
    /// The leased address.
    pub address: Ipv4Addr,
    /// The client's Ethernet address, when known.
    pub hwaddr: Option<[u8; 6]>,
    /// The host name the client sent (option 12), if any.
    pub hostname: Option<String>,
    /// When the lease ends; it is expired at and after this instant.
    pub expires: SystemTime,
    /// Recorded by the daemon for a container it configured, not obtained over DHCP by a
    /// client it does not know. Such leases count against no limit, keep the flag when their
    /// client renews them, and a DHCP client sending another (non-Ethernet) client id from the
    /// same hardware address is given this lease.
    pub container: bool,
}

impl Lease {
    /// A lease with no host name, the hardware address taken from a type-1 client id.
    pub fn new(client_id: ClientId, address: Ipv4Addr, expires: SystemTime) -> Self {
        Lease {
            hwaddr: client_id.mac(),
            client_id,
            address,
            hostname: None,
            expires,
            container: false,
        }
    }

    /// Whether the lease has ended at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires <= now
    }
}

/// Why a lease cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The server has no such link.
    #[error("link {0} is not served by the DHCP server")]
    UnknownLink(LinkId),
    /// The address is not in the link's subnet.
    #[error("address {address} is outside the link's subnet")]
    OutsideSubnet {
        /// The refused address.
        address: Ipv4Addr,
    },
    /// The address is the subnet's network or broadcast address, or the server's own.
    #[error("address {address} is reserved (network, broadcast or server address)")]
    Reserved {
        /// The refused address.
        address: Ipv4Addr,
    },
    /// Another client holds the address.
    #[error("address {address} is bound to client {holder}")]
    InUse {
        /// The refused address.
        address: Ipv4Addr,
        /// The client holding it.
        holder: ClientId,
    },
    /// The address is another client's static lease.
    #[error("address {address} is the static lease of client {owner}")]
    StaticAddress {
        /// The refused address.
        address: Ipv4Addr,
        /// The client it is reserved for.
        owner: ClientId,
    },
}

/// Leases, static leases and quarantined addresses of one link.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    by_client: BTreeMap<ClientId, Lease>,
    by_address: BTreeMap<Ipv4Addr, ClientId>,
    static_by_client: BTreeMap<ClientId, Ipv4Addr>,
    static_by_address: BTreeMap<Ipv4Addr, ClientId>,
    quarantine: BTreeMap<Ipv4Addr, SystemTime>,
    /// The quarantines again, by end: the one to release first when the limit is reached.
    quarantine_by_end: BTreeSet<(SystemTime, Ipv4Addr)>,
    /// Stored leases with [`Lease::container`] set.
    containers: usize,
    /// No lease or quarantine stored ends before this: a lower bound of the earliest end, so
    /// that [`expire`](Self::expire), called for every packet, costs nothing until something
    /// can have ended (instead of a walk over every lease).
    earliest_end: Option<SystemTime>,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves `address` for `client_id`. A client has at most one static address and an
    /// address at most one owner: a later entry replaces an earlier one.
    pub fn add_static(&mut self, client_id: ClientId, address: Ipv4Addr) {
        if let Some(old) = self.static_by_client.remove(&client_id) {
            self.static_by_address.remove(&old);
        }
        if let Some(old) = self.static_by_address.remove(&address) {
            self.static_by_client.remove(&old);
        }
        self.static_by_client.insert(client_id.clone(), address);
        self.static_by_address.insert(address, client_id);
    }

    /// The static address of `client_id`.
    pub fn static_address(&self, client_id: &ClientId) -> Option<Ipv4Addr> {
        self.static_by_client.get(client_id).copied()
    }

    /// The client `address` is statically reserved for.
    pub fn static_owner(&self, address: Ipv4Addr) -> Option<&ClientId> {
        self.static_by_address.get(&address)
    }

    /// The unexpired lease of `client_id`.
    pub fn lease(&self, client_id: &ClientId, now: SystemTime) -> Option<&Lease> {
        self.by_client.get(client_id).filter(|l| !l.is_expired(now))
    }

    /// The client holding an unexpired lease on `address`.
    pub fn holder(&self, address: Ipv4Addr, now: SystemTime) -> Option<&ClientId> {
        let id = self.by_address.get(&address)?;
        self.lease(id, now).map(|l| &l.client_id)
    }

    /// Whether `address` is quarantined at `now`.
    pub fn is_quarantined(&self, address: Ipv4Addr, now: SystemTime) -> bool {
        self.quarantine
            .get(&address)
            .is_some_and(|&until| until > now)
    }

    /// Binds `lease`, replacing the client's previous lease (returned) and any expired lease on
    /// the address. Fails if another client holds the address at `now`.
    pub fn bind(&mut self, lease: Lease, now: SystemTime) -> Result<Option<Lease>, LeaseError> {
        if let Some(holder) = self.holder(lease.address, now)
            && *holder != lease.client_id
        {
            return Err(LeaseError::InUse {
                address: lease.address,
                holder: holder.clone(),
            });
        }
        // An expired lease of someone else on the address goes away.
        if let Some(stale) = self.by_address.get(&lease.address).cloned()
            && stale != lease.client_id
        {
            self.remove(&stale);
        }
        let previous = self.remove(&lease.client_id);
        self.note_end(lease.expires);
        self.containers += usize::from(lease.container);
        self.by_address
            .insert(lease.address, lease.client_id.clone());
        self.by_client.insert(lease.client_id.clone(), lease);
        Ok(previous)
    }

    /// Drops the lease of `client_id`, expired or not.
    pub fn remove(&mut self, client_id: &ClientId) -> Option<Lease> {
        let lease = self.by_client.remove(client_id)?;
        if self.by_address.get(&lease.address) == Some(client_id) {
            self.by_address.remove(&lease.address);
        }
        self.containers -= usize::from(lease.container);
        Some(lease)
    }

    /// Keeps `address` from being handed out until `until`, with at most `limit` addresses
    /// quarantined (at least one): beyond it the quarantine that ends first is released and
    /// returned.
    pub fn quarantine(
        &mut self,
        address: Ipv4Addr,
        until: SystemTime,
        limit: usize,
    ) -> Option<Ipv4Addr> {
        if let Some(old) = self.quarantine.insert(address, until) {
            self.quarantine_by_end.remove(&(old, address));
        }
        self.quarantine_by_end.insert((until, address));
        self.note_end(until);
        if self.quarantine.len() <= limit.max(1) {
            return None;
        }
        let (_, first) = self.quarantine_by_end.pop_first()?;
        self.quarantine.remove(&first);
        Some(first)
    }

    /// The quarantined addresses and when each quarantine ends (ended ones not yet removed
    /// included), by address.
    pub fn quarantined(&self) -> impl Iterator<Item = (Ipv4Addr, SystemTime)> + '_ {
        self.quarantine.iter().map(|(&a, &t)| (a, t))
    }

    /// Number of quarantined addresses (ended ones not yet removed included).
    pub fn quarantine_len(&self) -> usize {
        self.quarantine.len()
    }

    /// Number of stored leases the daemon did not record for a container.
    pub fn foreign_len(&self) -> usize {
        self.by_client.len() - self.containers
    }

    fn note_end(&mut self, end: SystemTime) {
        self.earliest_end = Some(self.earliest_end.map_or(end, |e| e.min(end)));
    }

    /// Removes expired leases (returned, by address) and ended quarantines.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Lease> {
        if self.earliest_end.is_none_or(|e| e > now) {
            return Vec::new();
        }
        while let Some(&(until, address)) = self.quarantine_by_end.first()
            && until <= now
        {
            self.quarantine_by_end.pop_first();
            self.quarantine.remove(&address);
        }
        let ended: Vec<ClientId> = self
            .by_client
            .values()
            .filter(|l| l.is_expired(now))
            .map(|l| l.client_id.clone())
            .collect();
        let mut gone: Vec<Lease> = ended.iter().filter_map(|id| self.remove(id)).collect();
        gone.sort_by_key(|l| l.address);
        self.earliest_end = self.next_expiry();
        gone
    }

    /// The earliest lease expiry or quarantine end, if any.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        let leases = self.by_client.values().map(|l| l.expires);
        leases.chain(self.quarantine.values().copied()).min()
    }

    /// Every stored lease (including expired ones not yet removed), by address.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_address
            .values()
            .filter_map(|id| self.by_client.get(id))
    }

    /// Number of stored leases.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether no lease is stored.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn lease(id: u8, addr: u8, expires: u64) -> Lease {
        Lease {
            client_id: ClientId::from_mac([2, 0, 0, 0, 0, id]),
            address: Ipv4Addr::new(10, 0, 0, addr),
            hwaddr: Some([2, 0, 0, 0, 0, id]),
            hostname: None,
            expires: t(expires),
            container: false,
        }
    }

    #[test]
    fn client_id_text_round_trip() {
        let id = ClientId::from_mac([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
        assert_eq!(id.to_string(), "01:02:aa:bb:cc:dd:ee");
        assert_eq!("01:02:aa:bb:cc:dd:ee".parse::<ClientId>().unwrap(), id);
        assert_eq!(id.mac(), Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]));
        assert_eq!(ClientId::new(vec![0xff, 1, 2]).mac(), None);
        for bad in ["", "1", "01:", "zz", "01:002"] {
            assert!(bad.parse::<ClientId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bind_lookup_and_rebind_moves_the_client() {
        let mut table = LeaseTable::new();
        assert_eq!(table.bind(lease(1, 5, 100), t(0)), Ok(None));
        let a = lease(1, 5, 100);
        assert_eq!(table.lease(&a.client_id, t(50)), Some(&a));
        assert_eq!(table.holder(a.address, t(50)), Some(&a.client_id));
        // Same client, new address: the old address is free again.
        assert_eq!(table.bind(lease(1, 6, 100), t(0)), Ok(Some(a.clone())));
        assert_eq!(table.holder(a.address, t(0)), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn another_clients_address_is_refused_until_expired() {
        let mut table = LeaseTable::new();
        table.bind(lease(1, 5, 100), t(0)).unwrap();
        let err = table.bind(lease(2, 5, 200), t(99)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "address 10.0.0.5 is bound to client 01:02:00:00:00:00:01"
        );
        // Expired: ignored on lookup, replaced on bind.
        assert_eq!(table.holder(Ipv4Addr::new(10, 0, 0, 5), t(100)), None);
        table.bind(lease(2, 5, 200), t(100)).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table.iter().count(), 1);
    }

    #[test]
    fn expire_removes_ended_leases_and_quarantines() {
        let mut table = LeaseTable::new();
        table.bind(lease(1, 5, 100), t(0)).unwrap();
        table.bind(lease(2, 6, 300), t(0)).unwrap();
        table.quarantine(Ipv4Addr::new(10, 0, 0, 7), t(200), 10);
        assert_eq!(table.next_expiry(), Some(t(100)));
        assert!(table.is_quarantined(Ipv4Addr::new(10, 0, 0, 7), t(199)));
        assert_eq!(table.expire(t(100)), vec![lease(1, 5, 100)]);
        assert_eq!(table.next_expiry(), Some(t(200)));
        assert!(table.expire(t(200)).is_empty());
        assert!(!table.is_quarantined(Ipv4Addr::new(10, 0, 0, 7), t(200)));
        assert_eq!(table.next_expiry(), Some(t(300)));
        assert_eq!(table.expire(t(300)).len(), 1);
        assert!(table.is_empty());
        assert_eq!(table.next_expiry(), None);
    }

    #[test]
    fn quarantines_are_bounded_and_the_first_to_end_goes_first() {
        let mut table = LeaseTable::new();
        let a = |x| Ipv4Addr::new(10, 0, 0, x);
        assert_eq!(table.quarantine(a(1), t(300), 2), None);
        assert_eq!(table.quarantine(a(2), t(100), 2), None);
        // Re-quarantining an address moves its end, it does not count twice.
        assert_eq!(table.quarantine(a(2), t(200), 2), None);
        assert_eq!(table.quarantine_len(), 2);
        assert_eq!(table.quarantine(a(3), t(400), 2), Some(a(2)));
        assert_eq!(
            table.quarantined().collect::<Vec<_>>(),
            vec![(a(1), t(300)), (a(3), t(400))]
        );
        assert!(!table.is_quarantined(a(2), t(0)));
        // Expiry releases by end, and keeps both indexes in step.
        table.expire(t(300));
        assert_eq!(
            table.quarantined().collect::<Vec<_>>(),
            vec![(a(3), t(400))]
        );
        assert_eq!(table.quarantine(a(4), t(500), 2), None);
        assert_eq!(table.quarantine_len(), 2);
    }

    #[test]
    fn container_leases_are_counted_apart() {
        let mut table = LeaseTable::new();
        let mut c = lease(1, 5, 100);
        c.container = true;
        table.bind(c.clone(), t(0)).unwrap();
        table.bind(lease(2, 6, 100), t(0)).unwrap();
        assert_eq!((table.len(), table.foreign_len()), (2, 1));
        // Rebinding the container's lease without the flag makes it foreign.
        table.bind(lease(1, 5, 100), t(0)).unwrap();
        assert_eq!(table.foreign_len(), 2);
        table.bind(c, t(0)).unwrap();
        assert_eq!(table.foreign_len(), 1);
        assert_eq!(table.expire(t(100)).len(), 2);
        assert_eq!((table.len(), table.foreign_len()), (0, 0));
    }

    #[test]
    fn static_leases_are_one_to_one() {
        let mut table = LeaseTable::new();
        let a = ClientId::from_mac([2, 0, 0, 0, 0, 1]);
        let b = ClientId::from_mac([2, 0, 0, 0, 0, 2]);
        table.add_static(a.clone(), Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(table.static_address(&a), Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(table.static_owner(Ipv4Addr::new(10, 0, 0, 9)), Some(&a));
        table.add_static(b.clone(), Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(table.static_address(&a), None);
        assert_eq!(table.static_owner(Ipv4Addr::new(10, 0, 0, 9)), Some(&b));
    }
}
