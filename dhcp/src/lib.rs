//! DHCPv4 server engine for rnet.
//!
//! Pure: no sockets and no clock. The daemon pumps packets and the current time in and sends what
//! comes out (`docs/architecture.md#crates`, `docs/architecture.md#dhcp`). [`Server`] is the
//! engine, [`LeaseTable`] its per-link state, [`LeaseStore`] the one file-touching part (atomic
//! JSON lease files), and [`wire`] the hardened `dhcproto` decoding that both the engine and the
//! fuzz targets use.

mod config;
mod counters;
mod lease;
pub mod pick;
mod reply;
mod request;
mod server;
mod store;
pub mod wire;

pub use config::{ConfigError, LinkConfig, StaticLease};
pub use counters::{Counters, DropReason};
pub use lease::{ClientId, Lease, LeaseError, LeaseTable, ParseClientIdError};
pub use pick::{client_id_from_mac, client_id_hash, pick_address, pick_address_in};
pub use server::{Destination, Handled, Inbound, LeaseChange, LinkId, Outbound, Server};
pub use store::{JournalEntry, LeaseStore, Saved, StoreError};
