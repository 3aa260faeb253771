//! DHCPv4 server engine for rnet.
//!
//! Pure: no sockets and no clock. The daemon pumps packets and the current time in and sends what
//! comes out (STYLE.md principle 1).

pub mod pick;

pub use pick::{client_id_from_mac, client_id_hash, pick_address};
