//! Per-link DHCP server configuration, with networkd's defaults (`[DHCPServer]` in
//! systemd.network(5); `src/network/networkd-dhcp-server.c`, and lease times of 1 h default and
//! 12 h maximum from `src/libsystemd-network/sd-dhcp-server.c`).

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnetwork::Ipv4Network;

use crate::ClientId;

/// A reserved address for one client (networkd's `[DHCPServerStaticLease]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticLease {
    /// The client, by identifier; see [`StaticLease::mac`] for `MACAddress=`.
    pub client_id: ClientId,
    /// Its address, inside the subnet and not the server's.
    pub address: Ipv4Addr,
}

impl StaticLease {
    /// A static lease keyed by MAC address, converted to client id `0x01` + MAC as networkd does.
    pub fn mac(mac: [u8; 6], address: Ipv4Addr) -> Self {
        StaticLease {
            client_id: ClientId::from_mac(mac),
            address,
        }
    }
}

/// What the server hands out on one link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// The link's subnet; host bits are ignored.
    pub subnet: Ipv4Network,
    /// The server's own address on the link: option 54, never leased.
    pub server_address: Ipv4Addr,
    /// First pool address as an offset from the network address; 0 means 1 (networkd's
    /// `PoolOffset=`).
    pub pool_offset: u32,
    /// Number of pool addresses; 0 means up to the last address before broadcast
    /// (`PoolSize=`). The server's own address is skipped even if inside the pool.
    pub pool_size: u32,
    /// Reserved addresses (they may lie outside the pool).
    pub static_leases: Vec<StaticLease>,
    /// Option 3; `None` means the server address.
    pub router: Option<Ipv4Addr>,
    /// Whether to send option 3 at all (`EmitRouter=`).
    pub emit_router: bool,
    /// Option 6, sent if non-empty and requested.
    pub dns: Vec<Ipv4Addr>,
    /// Option 15, sent if set and requested.
    pub domain: Option<String>,
    /// Lease time when the client asks for none.
    pub default_lease_time: Duration,
    /// Upper bound on the lease time a client may ask for.
    pub max_lease_time: Duration,
    /// T1 (option 58) as thousandths of the lease time.
    pub t1_permille: u32,
    /// T2 (option 59) as thousandths of the lease time.
    pub t2_permille: u32,
    /// Option 121 routes (destination, gateway), sent when non-empty and requested. Clients that
    /// get option 121 ignore option 3 (RFC 3442), so a default route via the router is appended
    /// unless one is listed or the router is not emitted.
    pub classless_routes: Vec<(Ipv4Network, Ipv4Addr)>,
    /// How long a DECLINEd address stays out of the pool.
    pub decline_quarantine: Duration,
    /// Answer a DISCOVER carrying option 80 with an ACK directly (`RapidCommit=`).
    pub rapid_commit: bool,
    /// Share of the pool, in thousandths, kept for the leases the daemon records for its
    /// containers ([`Server::record_lease`](crate::Server::record_lease)): the clients it did
    /// not record (anything that just speaks DHCP) may together hold at most the rest, so that
    /// a flood of DORA exchanges from random hardware addresses cannot take the addresses of
    /// containers attached later. A non-zero share keeps at least one address; 0 turns the
    /// bound off. Default 500 (half): a zone's members are containers the daemon records, so
    /// the other half is plenty for real DHCP-only clients, and a flood takes at most half. A
    /// link with a single container, recorded before any DHCP traffic, needs only a sliver
    /// (the daemon uses 1‰: one address on a /28, 65 on a /16, so the throughput benchmark's
    /// 50000 clients on a /16 all fit).
    pub container_reserve_permille: u32,
    /// Most addresses quarantined by DECLINE at once, in thousandths of the pool (at least
    /// one). A DECLINE beyond it releases the quarantine that ends first. Default 250 (a
    /// quarter): a flood of DECLINEs cannot take more than a quarter of the pool, and real
    /// conflicts (a handful) are far below it.
    pub quarantine_limit_permille: u32,
}

impl LinkConfig {
    /// networkd's defaults: whole-subnet pool, router = server, 1 h / 12 h leases, T1/T2 at
    /// 0.5/0.875, 10 min decline quarantine, rapid commit on.
    pub fn new(subnet: Ipv4Network, server_address: Ipv4Addr) -> Self {
        LinkConfig {
            subnet,
            server_address,
            pool_offset: 0,
            pool_size: 0,
            static_leases: Vec::new(),
            router: None,
            emit_router: true,
            dns: Vec::new(),
            domain: None,
            default_lease_time: Duration::from_secs(3600),
            max_lease_time: Duration::from_secs(12 * 3600),
            t1_permille: 500,
            t2_permille: 875,
            classless_routes: Vec::new(),
            decline_quarantine: Duration::from_secs(600),
            rapid_commit: true,
            container_reserve_permille: 500,
            quarantine_limit_permille: 250,
        }
    }

    /// Addresses the pool can lease: its size less the server's own address if inside it.
    pub fn usable(&self) -> u32 {
        let (_, size) = self.pool();
        size.saturating_sub(u32::from(self.in_pool(self.server_address)))
    }

    /// `permille` thousandths of the usable pool, rounded down.
    fn share(&self, permille: u32) -> u32 {
        let part = u64::from(self.usable()) * u64::from(permille.min(1000)) / 1000;
        u32::try_from(part).unwrap_or(u32::MAX)
    }

    /// Most leases the clients the daemon did not record may hold together (see
    /// [`container_reserve_permille`](Self::container_reserve_permille)).
    pub fn foreign_lease_limit(&self) -> u32 {
        let reserve = match self.container_reserve_permille {
            0 => 0,
            p => self.share(p).max(1),
        };
        self.usable().saturating_sub(reserve)
    }

    /// Most addresses quarantined at once (see
    /// [`quarantine_limit_permille`](Self::quarantine_limit_permille)).
    pub fn quarantine_limit(&self) -> u32 {
        self.share(self.quarantine_limit_permille).max(1)
    }

    /// The subnet with host bits cleared.
    pub fn network(&self) -> Ipv4Network {
        Ipv4Network::new(self.subnet.network(), self.subnet.prefix()).unwrap_or(self.subnet)
    }

    /// The effective pool as (offset, size), networkd's defaults applied. Valid after
    /// [`validate`](Self::validate).
    pub fn pool(&self) -> (u32, u32) {
        let offset = self.pool_offset.max(1);
        // Addresses from `offset` up to, not including, broadcast.
        let max = self.subnet.size().saturating_sub(offset).saturating_sub(1);
        let size = if self.pool_size == 0 {
            max
        } else {
            self.pool_size.min(max)
        };
        (offset, size)
    }

    /// Whether `address` is in the pool (the server address included: callers check that).
    pub fn in_pool(&self, address: Ipv4Addr) -> bool {
        if !self.subnet.contains(address) {
            return false;
        }
        let offset = u32::from(address).wrapping_sub(u32::from(self.subnet.network()));
        let (start, size) = self.pool();
        offset >= start && u64::from(offset) < u64::from(start) + u64::from(size)
    }

    /// Whether `address` is the network, broadcast or server address.
    pub fn is_reserved(&self, address: Ipv4Addr) -> bool {
        address == self.subnet.network()
            || address == self.subnet.broadcast()
            || address == self.server_address
    }

    /// The router sent as option 3.
    pub fn router(&self) -> Option<Ipv4Addr> {
        self.emit_router
            .then(|| self.router.unwrap_or(self.server_address))
    }

    /// Checks the configuration as `sd_dhcp_server_configure_pool()` does.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.subnet.prefix() > 30 {
            return Err(ConfigError::SubnetTooSmall {
                subnet: self.subnet,
            });
        }
        if !self.subnet.contains(self.server_address)
            || self.server_address == self.subnet.network()
            || self.server_address == self.subnet.broadcast()
        {
            return Err(ConfigError::ServerAddress {
                address: self.server_address,
                subnet: self.subnet,
            });
        }
        let offset = self.pool_offset.max(1);
        let max = self.subnet.size().saturating_sub(offset).saturating_sub(1);
        if offset >= self.subnet.size().saturating_sub(1) || self.pool_size > max {
            return Err(ConfigError::Pool {
                offset: self.pool_offset,
                size: self.pool_size,
                subnet: self.subnet,
            });
        }
        for (i, s) in self.static_leases.iter().enumerate() {
            let duplicate = self
                .static_leases
                .iter()
                .take(i)
                .any(|o| o.address == s.address || o.client_id == s.client_id);
            if duplicate || !self.subnet.contains(s.address) || self.is_reserved(s.address) {
                return Err(ConfigError::StaticLease {
                    client_id: s.client_id.clone(),
                    address: s.address,
                });
            }
        }
        if self.default_lease_time < Duration::from_secs(1)
            || self.max_lease_time < self.default_lease_time
        {
            return Err(ConfigError::LeaseTime {
                default: self.default_lease_time,
                max: self.max_lease_time,
            });
        }
        if self.container_reserve_permille > 1000 || self.quarantine_limit_permille > 1000 {
            return Err(ConfigError::Share {
                reserve: self.container_reserve_permille,
                quarantine: self.quarantine_limit_permille,
            });
        }
        if !(self.t1_permille < self.t2_permille && self.t2_permille < 1000) {
            return Err(ConfigError::Timers {
                t1: self.t1_permille,
                t2: self.t2_permille,
            });
        }
        Ok(())
    }
}

/// Why a [`LinkConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// /31 and /32 have no room for a server and a client.
    #[error("subnet {subnet} is too small for a DHCP server (at most /30)")]
    SubnetTooSmall {
        /// The refused subnet.
        subnet: Ipv4Network,
    },
    /// The server address must be a host address of the subnet.
    #[error("server address {address} is not a host address of {subnet}")]
    ServerAddress {
        /// The refused address.
        address: Ipv4Addr,
        /// The link's subnet.
        subnet: Ipv4Network,
    },
    /// The pool must hold at least one address between network and broadcast.
    #[error("pool offset {offset} size {size} does not fit in {subnet}")]
    Pool {
        /// Configured offset.
        offset: u32,
        /// Configured size.
        size: u32,
        /// The link's subnet.
        subnet: Ipv4Network,
    },
    /// A static lease outside the subnet, on a reserved address, or repeating the address or
    /// the client of an earlier one.
    #[error(
        "static lease {address} for client {client_id} is not a free host address of the subnet"
    )]
    StaticLease {
        /// The client.
        client_id: ClientId,
        /// Its refused address.
        address: Ipv4Addr,
    },
    /// Lease times must be at least 1 s and default <= max.
    #[error("lease times default {default:?} max {max:?} are invalid")]
    LeaseTime {
        /// Configured default.
        default: Duration,
        /// Configured maximum.
        max: Duration,
    },
    /// The container reserve and the quarantine limit are shares of the pool: at most 1000‰.
    #[error(
        "container reserve {reserve}\u{2030} and quarantine limit {quarantine}\u{2030} must be at \
         most 1000\u{2030}"
    )]
    Share {
        /// Configured container reserve.
        reserve: u32,
        /// Configured quarantine limit.
        quarantine: u32,
    },
    /// T1 < T2 < lease time.
    #[error("T1 {t1}\u{2030} and T2 {t2}\u{2030} must satisfy T1 < T2 < 1000\u{2030}")]
    Timers {
        /// Configured T1.
        t1: u32,
        /// Configured T2.
        t2: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(subnet: &str, server: [u8; 4]) -> LinkConfig {
        LinkConfig::new(subnet.parse().unwrap(), server.into())
    }

    #[test]
    fn default_pool_is_networkds() {
        let c = cfg("10.0.0.16/28", [10, 0, 0, 17]);
        c.validate().unwrap();
        assert_eq!(c.pool(), (1, 14));
        assert!(!c.in_pool(Ipv4Addr::new(10, 0, 0, 16)));
        assert!(c.in_pool(Ipv4Addr::new(10, 0, 0, 17)));
        assert!(c.in_pool(Ipv4Addr::new(10, 0, 0, 30)));
        assert!(!c.in_pool(Ipv4Addr::new(10, 0, 0, 31)));
        assert!(!c.in_pool(Ipv4Addr::new(10, 0, 0, 32)));
        assert!(c.is_reserved(Ipv4Addr::new(10, 0, 0, 17)));
        assert_eq!(c.router(), Some(Ipv4Addr::new(10, 0, 0, 17)));
    }

    #[test]
    fn shares_of_the_pool() {
        // /24, server inside the pool: 253 usable addresses.
        let mut c = cfg("10.0.0.0/24", [10, 0, 0, 1]);
        assert_eq!(c.usable(), 253);
        assert_eq!(c.foreign_lease_limit(), 253 - 126);
        assert_eq!(c.quarantine_limit(), 63);
        // A sliver keeps at least one address, 0 none; a zero quarantine limit still allows one.
        c.container_reserve_permille = 1;
        c.quarantine_limit_permille = 0;
        assert_eq!(c.foreign_lease_limit(), 252);
        assert_eq!(c.quarantine_limit(), 1);
        c.container_reserve_permille = 0;
        assert_eq!(c.foreign_lease_limit(), 253);
        let mut c = cfg("10.0.0.0/16", [10, 0, 0, 1]);
        c.container_reserve_permille = 1;
        assert_eq!(c.foreign_lease_limit(), 65533 - 65);
        // /30: one usable address, all of it kept.
        let c = cfg("10.0.0.0/30", [10, 0, 0, 1]);
        assert_eq!((c.usable(), c.foreign_lease_limit()), (1, 0));
        // Server outside a custom pool.
        let mut c = cfg("10.0.0.0/24", [10, 0, 0, 1]);
        c.pool_offset = 100;
        c.pool_size = 10;
        assert_eq!((c.usable(), c.foreign_lease_limit()), (10, 5));
    }

    #[test]
    fn custom_pool() {
        let mut c = cfg("10.0.0.0/24", [10, 0, 0, 1]);
        c.pool_offset = 100;
        c.pool_size = 10;
        c.validate().unwrap();
        assert!(c.in_pool(Ipv4Addr::new(10, 0, 0, 100)));
        assert!(c.in_pool(Ipv4Addr::new(10, 0, 0, 109)));
        assert!(!c.in_pool(Ipv4Addr::new(10, 0, 0, 110)));
        assert!(!c.in_pool(Ipv4Addr::new(10, 0, 0, 99)));
        c.pool_size = 200;
        assert!(matches!(c.validate(), Err(ConfigError::Pool { .. })));
    }

    #[test]
    fn invalid_configs_are_refused_with_a_message() {
        let c = cfg("10.0.0.0/31", [10, 0, 0, 1]);
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "subnet 10.0.0.0/31 is too small for a DHCP server (at most /30)"
        );
        let c = cfg("10.0.0.0/28", [10, 0, 0, 15]);
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "server address 10.0.0.15 is not a host address of 10.0.0.0/28"
        );
        let mut c = cfg("10.0.0.0/28", [10, 0, 0, 1]);
        c.static_leases
            .push(StaticLease::mac([2, 0, 0, 0, 0, 1], [10, 0, 0, 1].into()));
        assert!(matches!(c.validate(), Err(ConfigError::StaticLease { .. })));
        let mut c = cfg("10.0.0.0/28", [10, 0, 0, 1]);
        c.max_lease_time = Duration::from_secs(60);
        assert!(matches!(c.validate(), Err(ConfigError::LeaseTime { .. })));
        let mut c = cfg("10.0.0.0/28", [10, 0, 0, 1]);
        c.static_leases = vec![
            StaticLease::mac([2, 0, 0, 0, 0, 1], [10, 0, 0, 5].into()),
            StaticLease::mac([2, 0, 0, 0, 0, 2], [10, 0, 0, 5].into()),
        ];
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "static lease 10.0.0.5 for client 01:02:00:00:00:00:02 is not a free host address of \
             the subnet"
        );
        let mut c = cfg("10.0.0.0/28", [10, 0, 0, 1]);
        c.quarantine_limit_permille = 1001;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "container reserve 500\u{2030} and quarantine limit 1001\u{2030} must be at most \
             1000\u{2030}"
        );
        let mut c = cfg("10.0.0.0/28", [10, 0, 0, 1]);
        c.t1_permille = 900;
        assert!(matches!(c.validate(), Err(ConfigError::Timers { .. })));
    }
}
