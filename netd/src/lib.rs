//! `rnetd`, the daemon that owns the host side of rnet container networking, as a library.
//!
//! With only the `client` feature this is the wire API and a blocking client (what the launcher
//! links). The `daemon` feature adds everything else: naming, pools, links, state, the server.

pub mod api;
pub mod netlink_sync;

#[cfg(feature = "daemon")]
pub mod dhcp_glue;
#[cfg(feature = "daemon")]
pub mod firewall;
#[cfg(feature = "daemon")]
pub mod hostid;
#[cfg(feature = "daemon")]
pub mod machines;
#[cfg(feature = "daemon")]
pub mod naming;
#[cfg(feature = "daemon")]
pub mod netns;
#[cfg(feature = "daemon")]
pub mod pool;
#[cfg(feature = "daemon")]
pub mod procfs;
#[cfg(feature = "daemon")]
pub mod rtnl;
#[cfg(feature = "daemon")]
pub mod server;
#[cfg(feature = "daemon")]
pub mod state;
#[cfg(feature = "daemon")]
pub mod sysctl;
