//! `rnetd`, the daemon that owns the host side of rnet container networking, as a library.
//!
//! With only the `client` feature this is the wire API and a blocking client (what the launcher
//! links). The `daemon` feature adds everything else: naming, pools, links, state, the server.

pub mod api;

#[cfg(feature = "daemon")]
pub mod naming;
#[cfg(feature = "daemon")]
pub mod pool;
