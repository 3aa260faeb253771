//! `rnetd`, the daemon that owns the host side of rnet container networking, as a library:
//! naming, pools, links, state, the firewall, DHCP and the server.
//!
//! The vocabulary it shares with the launcher and `nat` (wire types, names, ports, MACs, atomic
//! writes) lives in crate `rnet-api`, re-exported here as [`api`]; the blocking rtnetlink helper
//! it shares with the launcher lives in crate `rnet-netlink-sync`, re-exported as
//! [`netlink_sync`].

pub use api;
pub use netlink_sync;

pub mod dhcp_glue;
pub mod distributed;
pub mod dns;
pub mod firewall;
pub mod forward6;
pub mod hostid;
pub mod inuse;
pub mod ipv6;
pub mod machines;
pub mod naming;
pub mod netns;
pub mod pool;
pub mod procfs;
pub mod ra;
pub mod relay6;
pub mod rtnl;
pub mod server;
pub mod state;
pub mod sysctl;
pub mod timing;
pub mod trim;
